//! `ninjarec serve`: a small VDO.Ninja handshake server speaking both dialects on one port.
//!
//! Lets users record without the official server (LAN, offline, tests). Routing lives in the
//! pure [`state::ServerState`]; this module only accepts sockets (optionally TLS from PEM
//! files), enforces per-IP and total client limits, and shuttles text frames.
//!
//! ```no_run
//! # async fn f() -> Result<(), ninjarec::signaling::server::ServerError> {
//! use ninjarec::signaling::server::{Server, ServerConfig};
//! let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap()), stop_rx).await?;
//! println!("listening on {}", server.local_addr());
//! server.wait().await
//! # }
//! ```

pub mod state;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use state::{ClientId, Delivery, Limits, ServerState, ServerStats};

/// PEM files for `wss://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8/PKCS#1/SEC1).
    pub key: PathBuf,
}

/// Server settings; `ninjarec serve` flags map onto these.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0 = any, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Serve TLS (`wss://`) with these files; `None` = plain `ws://`.
    pub tls: Option<TlsFiles>,
    /// Largest accepted WebSocket message.
    pub max_message_bytes: usize,
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Most members per room.
    pub max_room_members: usize,
    /// Most connected clients in total.
    pub max_clients: usize,
    /// Most concurrent connections from one IP address.
    pub max_clients_per_ip: usize,
    /// Outgoing frames buffered per client before further frames to it are dropped.
    pub client_queue: usize,
    /// Time allowed for the TLS + WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Speak only the official dialect, like wss.vdo.ninja: a `from` on a client's messages
    /// is ignored instead of making it a relay client. For testing clients against an
    /// official server on any host name.
    pub official_only: bool,
}

impl ServerConfig {
    /// Defaults suitable for a LAN server.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            tls: None,
            max_message_bytes: 256 * 1024,
            max_rooms: 1000,
            max_room_members: 80,
            max_clients: 2000,
            max_clients_per_ip: 64,
            client_queue: 256,
            handshake_timeout: Duration::from_secs(10),
            official_only: false,
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Socket errors (bind, accept).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Certificate/key loading or TLS configuration.
    #[error("tls: {0}")]
    Tls(String),
}

struct Shared {
    state: ServerState,
    senders: HashMap<ClientId, mpsc::Sender<String>>,
    per_ip: HashMap<IpAddr, usize>,
    next_id: ClientId,
    dropped_slow: u64,
}

impl Shared {
    fn dispatch(&mut self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            if let Some(tx) = self.senders.get(&d.to)
                && tx.try_send(d.text).is_err()
            {
                self.dropped_slow += 1;
            }
        }
    }
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Binds the listener (and loads TLS files) and starts accepting in the background. The
    /// server stops when `shutdown` becomes `true` (or its sender is dropped).
    pub async fn bind(
        config: ServerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Server, ServerError> {
        let acceptor = match &config.tls {
            Some(files) => Some(load_tls(files)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let limits = Limits {
            max_message_bytes: config.max_message_bytes,
            max_rooms: config.max_rooms,
            max_room_members: config.max_room_members,
            ..Limits::default()
        };
        let shared = Arc::new(Mutex::new(Shared {
            state: ServerState::new(limits).official_only(config.official_only),
            senders: HashMap::new(),
            per_ip: HashMap::new(),
            next_id: 1,
            dropped_slow: 0,
        }));
        tracing::info!(%local_addr, tls = acceptor.is_some(), "handshake server listening");
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            config,
            shared.clone(),
            shutdown,
        ));
        Ok(Server {
            local_addr,
            shared,
            task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Routing counters (dropped/malformed input).
    pub fn stats(&self) -> ServerStats {
        lock(&self.shared).state.stats()
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        lock(&self.shared).state.client_count()
    }

    /// Waits until the server has shut down and all connections are closed.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Binds and runs until `shutdown` becomes `true`.
pub async fn run(config: ServerConfig, shutdown: watch::Receiver<bool>) -> Result<(), ServerError> {
    Server::bind(config, shutdown).await?.wait().await
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn load_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate found",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    config: ServerConfig,
    shared: Arc<Mutex<Shared>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Transient (e.g. EMFILE): back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                {
                    let mut sh = lock(&shared);
                    let total: usize = sh.per_ip.values().sum();
                    let n = sh.per_ip.get(&addr.ip()).copied().unwrap_or(0);
                    if total >= config.max_clients || n >= config.max_clients_per_ip {
                        tracing::debug!(%addr, "connection limit reached, refusing");
                        continue;
                    }
                    *sh.per_ip.entry(addr.ip()).or_default() += 1;
                }
                let _ = tcp.set_nodelay(true);
                conns.spawn(connection(
                    tcp,
                    addr,
                    acceptor.clone(),
                    config.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    drop(listener);
    // Connections see the same shutdown signal and close; give them a moment.
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    config: ServerConfig,
    shared: Arc<Mutex<Shared>>,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = config.handshake_timeout;
    match acceptor {
        Some(acc) => match tokio::time::timeout(timeout, acc.accept(tcp)).await {
            Ok(Ok(tls)) => websocket(tls, &config, &shared, shutdown).await,
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "tls handshake failed"),
            Err(_) => tracing::debug!(%addr, "tls handshake timeout"),
        },
        None => websocket(tcp, &config, &shared, shutdown).await,
    }
    let mut sh = lock(&shared);
    if let Some(n) = sh.per_ip.get_mut(&addr.ip()) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            sh.per_ip.remove(&addr.ip());
        }
    }
}

async fn websocket<S>(
    io: S,
    config: &ServerConfig,
    shared: &Arc<Mutex<Shared>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let ws = match tokio::time::timeout(
        config.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(io, Some(ws_cfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    let (tx, mut rx) = mpsc::channel::<String>(config.client_queue.max(1));
    let id = {
        let mut sh = lock(shared);
        let id = sh.next_id;
        sh.next_id += 1;
        let uuid = new_uuid();
        sh.state.connect(id, uuid);
        sh.senders.insert(id, tx);
        id
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            out = rx.recv() => match out {
                Some(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(t) => t,
                        Err(_) => continue,
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let mut sh = lock(shared);
                let deliveries = sh.state.handle(id, &text);
                sh.dispatch(deliveries);
            }
        }
    }
    let mut sh = lock(shared);
    sh.senders.remove(&id);
    let deliveries = sh.state.disconnect(id);
    sh.dispatch(deliveries);
}

/// Resolves when the shutdown flag is (or becomes) true, or its sender is dropped.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// A random RFC 4122 version-4 UUID string, like the official server assigns.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_v4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }

    #[tokio::test]
    async fn missing_tls_files_are_an_error() {
        let (_tx, rx) = watch::channel(false);
        let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        cfg.tls = Some(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        });
        assert!(matches!(
            Server::bind(cfg, rx).await,
            Err(ServerError::Tls(_))
        ));
    }
}
