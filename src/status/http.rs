//! `--http ADDR`: a small HTTP/1.1 server for the status surfaces.
//!
//! | path           | what                                                     |
//! |----------------|----------------------------------------------------------|
//! | `/metrics`     | [`render_metrics`] (Prometheus text format 0.0.4)        |
//! | `/status.json` | the [`Snapshot`] as JSON                                 |
//! | `/`            | the status page ([`STATUS_PAGE`])                        |
//!
//! Anything else is 404; methods other than GET and HEAD are 405. Request bodies are never
//! read. The server is bounded: at most [`MAX_CONNECTIONS`] connections at once (further
//! clients wait in the listen backlog), request heads at most 16 KiB and read within
//! [`HEADER_READ_TIMEOUT`], and a connection lives at most [`MAX_CONNECTION_AGE`] (then it is
//! closed after its current response), so idle keep-alive clients cannot hold every slot.
//!
//! Why hyper 1 (with hyper-util's Tokio glue) and not axum: three fixed routes need no router
//! or extractors, and hyper alone adds six small crates to a tree that already has tokio and
//! `http` 1.x, where axum would add tower, matchit and axum-core on top of the same hyper.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, render_metrics};
use super::page::STATUS_PAGE;
use super::snapshot::Snapshot;

/// Connections served at once.
///
/// Why so few: the clients are a scraper and a browser tab or two; a limit keeps a
/// misbehaving client from costing the recorder memory or descriptors.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send a request head.
///
/// Why: a client that opens a connection and sends nothing must not hold a slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After this, a connection is closed once its current response is sent (clients reconnect).
///
/// Why: keep-alive connections are fine for a scraper, but an idle one must not hold one of the
/// [`MAX_CONNECTIONS`] slots forever.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// How long [`serve`] waits for responses in flight once asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Largest request head accepted (hyper's minimum buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The page's Content-Security-Policy: its own inline style and script, requests to its own
/// origin, nothing else (no frames, no forms, no external anything).
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                        connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why `--http` could not start.
///
/// Why an error type: the binary's edge prints it as one line and exits non-zero, instead of
/// recording without the status surfaces the operator asked for.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The address could not be bound (in use, no permission, not an address).
    #[error("cannot listen on {addr} for --http: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// What the operating system (or the address parser) said.
        source: std::io::Error,
    },
}

/// Binds the `--http` address (`127.0.0.1:9100`, `[::]:9100`, `localhost:9100`).
///
/// Why separate from [`serve`]: the binary binds before it starts recording, so a port in use
/// is reported at once; tests bind `127.0.0.1:0` and read the port from the listener.
pub async fn bind(addr: &str) -> Result<TcpListener, StatusError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StatusError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves the status surfaces on `listener` until `shutdown` turns true (or its sender is
/// dropped), then stops accepting, lets responses in flight finish (at most 2 s) and returns.
///
/// Every request reads the latest value of `snapshots` (an `Arc` clone, no lock held while
/// rendering), so the recorder is never slowed by a client. Errors of single connections
/// (resets, timeouts, malformed requests) are logged at debug level and end only that
/// connection; a failing `accept` (e.g. out of descriptors) is logged and retried after a
/// pause. The `Result` is there for the caller's `?`: no error ends the server today.
pub async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed; nothing sensible to serve without slots
            },
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("--http: accept failed: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        () = stopped(&mut shutdown) => break,
                    }
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let snapshots = snapshots.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let snapshot = snapshots.borrow().clone();
                async move { Ok::<_, Infallible>(respond(&req, &snapshot)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stopped(&mut stop) => None,
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => None,
            };
            // Asked to stop, or too old: close after the current response (at once if idle).
            let result = match result {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!("--http: connection ended: {e}");
            }
        });
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone (then nobody could ever stop us).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The response to one request (HEAD gets GET's headers; hyper leaves out the body).
fn respond<B>(req: &Request<B>, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => with_type(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            render_metrics(snapshot).into(),
        ),
        "/status.json" => match serde_json::to_vec(snapshot) {
            Ok(json) => with_type(StatusCode::OK, "application/json", json.into()),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode the status: {e}\n"),
            ),
        },
        "/" | "/index.html" => {
            let mut r = with_type(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(STATUS_PAGE.as_bytes()),
            );
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics or /status.json\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::snapshot::StreamStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn req(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap_or_default()
    }

    fn body_of(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let fut = r.into_body().collect();
        // Full resolves at once.
        let collected = futures_util::FutureExt::now_or_never(fut)
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&collected).into_owned()
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            target: "room".into(),
            streams: vec![StreamStatus {
                stream_id: "cam\"1".into(),
                state: "recording".into(),
                ..StreamStatus::default()
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn routes() {
        let s = snapshot();
        let r = respond(&req(Method::GET, "/metrics?x=1"), &s);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(body_of(r).contains(r#"stream="cam\"1""#));

        let r = respond(&req(Method::GET, "/status.json"), &s);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body_of(r)).unwrap_or_default();
        assert_eq!(v["streams"][0]["stream_id"], "cam\"1");

        let r = respond(&req(Method::HEAD, "/"), &s);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(body_of(r), STATUS_PAGE);

        let r = respond(&req(Method::GET, "/etc/passwd"), &s);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = respond(&req(Method::POST, "/metrics"), &s);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    }

    async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("response in time")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_and_stops() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, snap_rx, stop_rx));

        let r = raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("ninjarec_streams 1\n"), "{r}");

        // The latest snapshot is served.
        snap_tx.send_replace(Arc::new(Snapshot::default()));
        let r = raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.contains("ninjarec_streams 0\n"), "{r}");

        // HEAD: headers with GET's length, no body.
        let r = raw(
            addr,
            "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains(&format!("content-length: {}\r\n", STATUS_PAGE.len())),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"), "{r}");

        // A body is not read, and the server still answers.
        let r = raw(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");

        // Garbage gets a 400, not a crash.
        let r = raw(addr, "\x16\x03\x01garbage\r\n\r\n").await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");

        // An idle keep-alive connection does not delay the shutdown.
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

        let t = std::time::Instant::now();
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("ok");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let e = bind(&addr).await.err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.starts_with(&format!("cannot listen on {addr} for --http: ")),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = bind("not an address").await.err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.starts_with("cannot listen on not an address for --http: ")),);
    }
}
