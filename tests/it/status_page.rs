//! The `--http` status surfaces (issue 12) through a real socket, a real Prometheus text parser
//! and a real browser: `/metrics` must parse as the Prometheus text format with a series for
//! every stream, `/status.json` must list the streams, and the page, run by headless Chromium,
//! must fetch `status.json` and fill its table (so its script works, not just its markup).
//!
//! Here the snapshots are made up (one stream ID is hostile: quotes, markup, a backslash); the
//! end-to-end test with live recordings calls [`check_status_page`] on the recorder's own
//! `--http` address.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ninjarec::status::http::{bind, serve};
use ninjarec::status::page::STATUS_PAGE;
use ninjarec::status::snapshot::{ProcessStats, Snapshot, StreamStatus};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::support::chromium::chromium_path;
use crate::support::fixtures::{TestDir, heavy};

/// A stream ID as hostile as a publisher can make it: quotes, markup, an ampersand, a
/// backslash, non-ASCII.
const HOSTILE_ID: &str = "guest \"<b>x</b>\" & \\ 🎥";

/// The page's "unreachable" banner after a successful fetch (its class cleared).
const BANNER_HIDDEN: &str = "<div id=\"banner\" role=\"alert\" class=\"\"></div>";

/// Per-stream families every recording has (the A/V correction is absent until known).
const STREAM_FAMILIES: [&str; 6] = [
    "ninjarec_stream_bitrate_bits_per_second",
    "ninjarec_stream_video_frames_written_total",
    "ninjarec_stream_audio_packets_written_total",
    "ninjarec_stream_rtp_packets_lost_total",
    "ninjarec_stream_file_bytes",
    "ninjarec_stream_state",
];

/// Families that are always there, streams or not.
const PROCESS_FAMILIES: [&str; 6] = [
    "ninjarec_process_cpu_seconds_total",
    "ninjarec_process_resident_memory_bytes",
    "ninjarec_disk_min_free_bytes",
    "ninjarec_recordings_active",
    "ninjarec_recordings_finished_total",
    "ninjarec_signaling_connected",
];

/// One HTTP response: status code, headers (names lower-cased), body.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET base_url + path` over a plain TCP socket with `Connection: close` (the server sends a
/// Content-Length, so the body is everything up to EOF).
pub async fn http_get(base_url: &str, path: &str) -> HttpResponse {
    let host = base_url
        .strip_prefix("http://")
        .unwrap_or(base_url)
        .trim_end_matches('/');
    let mut c = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .unwrap_or_else(|_| panic!("connect to {host}: timeout"))
        .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    c.write_all(request.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no complete response in 10 s"))
        .expect("read response");
    let raw = String::from_utf8(raw).unwrap_or_else(|e| panic!("GET {path}: not UTF-8: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of head in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let r = HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    };
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, r.body.len().to_string(), "GET {path}: body length");
    }
    r
}

/// Text as the DOM serializer writes it inside an element.
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

/// Runs headless Chromium once on `url` with `extra` switches (`--dump-dom`,
/// `--screenshot=...`), killed after 60 s. Returns its stdout. Only loopback is reached: every
/// host name but 127.0.0.1 fails to resolve and background networking is off.
fn chromium(url: &str, profile: &Path, extra: &[String]) -> String {
    let chromium = chromium_path();
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--disable-features=MediaRouter,OptimizationHints,Translate",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--window-size=1200,700",
        // The page polls every 2 s: 5 s of virtual time runs the first fetches.
        "--virtual-time-budget=5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra.iter().cloned());
    args.push(url.to_owned());

    let mut child = Command::new(&chromium)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(stdout));
    let err = read(Box::new(stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!("chromium {extra:?} {url} failed ({s}):\n{err}"),
        None => panic!("chromium {extra:?} {url}: still running after 60 s:\n{err}"),
    }
}

/// Renders `url` twice in headless Chromium: a screenshot to `shot`, then the DOM (returned).
async fn screenshot_and_dom(url: &str, profile: &Path, shot: &Path) -> String {
    chromium_async(
        url,
        profile,
        vec![format!("--screenshot={}", shot.display())],
    )
    .await;
    chromium_async(url, profile, vec!["--dump-dom".into()]).await
}

/// [`chromium`] from async code, under the lock for tests that load the cores.
async fn chromium_async(url: &str, profile: &Path, extra: Vec<String>) -> String {
    let _heavy = heavy().await;
    let (url, profile) = (url.to_owned(), profile.to_owned());
    tokio::task::spawn_blocking(move || chromium(&url, &profile, &extra))
        .await
        .expect("chromium thread")
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| Some(u32::from_be_bytes(b.try_into().ok()?));
    Some((be(png.get(16..20)?)?, be(png.get(20..24)?)?))
}

/// Checks a running `--http` server at `base_url` (`http://127.0.0.1:PORT`) end to end:
/// `/metrics` parses as the Prometheus text format and has the per-stream series of every ID in
/// `expect_streams` and the process series; `/status.json` lists every ID; headless Chromium
/// renders `/` with a table row for every ID and no "unreachable" banner; and its screenshot
/// (1200×700) is written to `shot`.
pub async fn check_status_page(base_url: &str, expect_streams: &[&str], shot: &Path) {
    // /metrics, through a real parser of the format.
    let metrics = http_get(base_url, "/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let exposition = parse_prometheus(&metrics.body)
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e:?}\n{}", metrics.body));
    for name in PROCESS_FAMILIES {
        let family = exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", metrics.body));
        assert_eq!(family.iter_samples().count(), 1, "{name}");
    }
    let cpu = &exposition.families["ninjarec_process_cpu_seconds_total"];
    assert_eq!(cpu.family_type, PrometheusType::Counter);
    for name in STREAM_FAMILIES {
        let family = exposition
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", metrics.body));
        for id in expect_streams {
            let found = family.iter_samples().any(|s| {
                s.get_labelset()
                    .ok()
                    .and_then(|l| l.get_label_value("stream").map(|v| v == *id))
                    .unwrap_or(false)
                    && match &s.value {
                        PrometheusValue::Gauge(v) => v.as_f64().is_finite(),
                        PrometheusValue::Counter(c) => c.value.as_f64() >= 0.0,
                        _ => false,
                    }
            });
            assert!(
                found,
                "no {name}{{stream={id:?}}} in /metrics:\n{}",
                metrics.body
            );
        }
    }

    // /status.json.
    let json = http_get(base_url, "/status.json").await;
    assert_eq!(json.status, 200);
    assert_eq!(json.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&json.body)
        .unwrap_or_else(|e| panic!("/status.json: {e}\n{}", json.body));
    let ids: Vec<&str> = v["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["stream_id"].as_str()).collect())
        .unwrap_or_default();
    for id in expect_streams {
        assert!(ids.contains(id), "{id:?} not in /status.json: {ids:?}");
    }

    // The page, in a browser.
    let page = http_get(base_url, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.header("content-security-policy").is_some());
    let profile = shot.with_extension("chromium-profile");
    let url = format!("{}/", base_url.trim_end_matches('/'));
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).expect("screenshot folder");
    }
    let _ = std::fs::remove_file(shot);
    let dom = screenshot_and_dom(&url, &profile, shot).await;
    let _ = std::fs::remove_dir_all(&profile);
    check_rendered_rows(&dom, expect_streams);
    assert!(
        dom.contains(BANNER_HIDDEN),
        "the page could not fetch status.json:\n{dom}"
    );
    let png = std::fs::read(shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert_eq!(png_size(&png), Some((1200, 700)), "{}", shot.display());
    // A blank 1200×700 PNG compresses to a few hundred bytes; text and a table do not.
    assert!(
        png.len() > 10_000,
        "{}: {} bytes",
        shot.display(),
        png.len()
    );
}

/// The DOM dump has a filled table: one stream cell per ID (as text, never as markup), and
/// no placeholder row left.
fn check_rendered_rows(dom: &str, expect_streams: &[&str]) {
    assert!(dom.contains("id=\"rows\""), "not the status page:\n{dom}");
    assert!(
        !dom.contains("loading…</td>"),
        "the page's script did not fill the table:\n{dom}"
    );
    for id in expect_streams {
        let cell = format!(">{}</td>", html_text(id));
        assert!(dom.contains(&cell), "no row for {id:?} ({cell}):\n{dom}");
    }
    let rows = dom.matches("<tr data-stream=").count();
    assert!(rows >= expect_streams.len(), "{rows} rows:\n{dom}");
}

fn fabricated_snapshot() -> Snapshot {
    let now_ms = 1_764_000_000_000;
    Snapshot {
        taken_unix_ms: now_ms,
        started_unix_ms: now_ms - 3_725_000,
        target: "weekly-show".into(),
        signaling_connected: true,
        output_dir: "/srv/recordings".into(),
        disk_free_bytes: Some(41_200_000_000),
        min_free_bytes: 1_000_000_000,
        process: ProcessStats {
            cpu_seconds: 95.5,
            rss_bytes: 61_400_000,
            open_fds: 42,
        },
        streams: vec![
            StreamStatus {
                stream_id: "cam-1".into(),
                state: "recording".into(),
                codec: Some("H.264".into()),
                path: Some("/srv/recordings/show_cam-1_1764000000.ts".into()),
                segment: 0,
                age_seconds: 3_700.2,
                duration_seconds: 3_698.4,
                bytes_total: 1_160_000_000,
                file_bytes: 1_160_000_000,
                bitrate_bps: 2_510_000.0,
                frames_written: 110_952,
                frames_dropped: 0,
                audio_written: 184_920,
                audio_dropped: 0,
                packets_lost: 3,
                keyframe_requests: 1,
                av_correction_ms: Some(-18.0),
                implausible_reports: 0,
                media_dropped: 0,
                disk_error: None,
            },
            StreamStatus {
                stream_id: HOSTILE_ID.into(),
                state: "connecting".into(),
                codec: Some("VP9".into()),
                path: Some("/srv/recordings/show_guest_1764003500.webm".into()),
                segment: 2,
                age_seconds: 125.0,
                duration_seconds: 64.0,
                bytes_total: 48_000_000,
                file_bytes: 12_800_000,
                bitrate_bps: 1_200_000.0,
                frames_written: 1_920,
                frames_dropped: 14,
                audio_written: 3_200,
                audio_dropped: 2,
                packets_lost: 61,
                keyframe_requests: 4,
                av_correction_ms: None,
                implausible_reports: 2,
                media_dropped: 7,
                disk_error: Some("write failed: No space left on device (os error 28)".into()),
            },
        ],
        finished: 5,
        refused_low_disk: 0,
        upload: None,
        udp_port: None,
        tcp_port: None,
    }
}

/// Serves `snapshot` on 127.0.0.1 with a free port; returns the base URL, the sender that
/// keeps the server running (drop or send `true` to stop it) and the server task.
async fn start_server(
    snapshot: Snapshot,
) -> (
    String,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    watch::Sender<Arc<Snapshot>>,
) {
    let listener = bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, snap_rx, stop_rx));
    (base, stop_tx, task, snap_tx)
}

async fn stop_server(
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stops within 5 s")
        .expect("server task")
        .expect("server result");
}

fn shot_path(dir: &TestDir, name: &str) -> PathBuf {
    // NINJAREC_KEEP_SHOTS=folder keeps the screenshots for a look.
    match std::env::var_os("NINJAREC_KEEP_SHOTS") {
        Some(keep) => PathBuf::from(keep).join(name),
        None => dir.path().join(name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_serves_metrics_json_and_a_live_table() {
    let dir = TestDir::new("status-page");
    let (base, stop, task, _snapshots) = start_server(fabricated_snapshot()).await;

    check_status_page(
        &base,
        &["cam-1", HOSTILE_ID],
        &shot_path(&dir, "status.png"),
    )
    .await;

    // The hostile ID reached the page as text: the DOM has no <b> element from it.
    let dom = chromium_async(
        &format!("{base}/"),
        &dir.path().join("profile"),
        vec!["--dump-dom".into()],
    )
    .await;
    assert!(!dom.contains("<b>x</b>"), "markup from a stream ID:\n{dom}");
    assert!(dom.contains("No space left on device"), "{dom}");
    assert!(dom.contains(">1 of 2<"), "health summary:\n{dom}");

    // Not found, wrong method.
    assert_eq!(http_get(&base, "/nope").await.status, 404);
    stop_server(stop, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_says_when_empty_and_when_unreachable() {
    let dir = TestDir::new("status-page-empty");

    // No publishers yet: the placeholder row, and a low-disk warning on the disk card.
    let mut empty = fabricated_snapshot();
    empty.streams.clear();
    empty.disk_free_bytes = Some(200_000_000);
    empty.signaling_connected = false;
    let (base, stop, task, _snapshots) = start_server(empty).await;
    let shot = shot_path(&dir, "status-empty.png");
    let profile = dir.path().join("profile");
    chromium_async(
        &format!("{base}/"),
        &profile,
        vec![format!("--screenshot={}", shot.display())],
    )
    .await;
    let dom = chromium_async(&format!("{base}/"), &profile, vec!["--dump-dom".into()]).await;
    assert!(
        dom.contains(">no recordings yet — waiting for publishers</td>"),
        "{dom}"
    );
    assert!(dom.contains("below min 1.0 GB"), "{dom}");
    assert!(dom.contains(">disconnected<"), "{dom}");
    assert!(dom.contains(BANNER_HIDDEN), "{dom}");
    stop_server(stop, task).await;

    // A page whose status.json cannot be fetched says so (here: opened from a file, where
    // fetch is refused; the same branch runs when the recorder is gone).
    let file = dir.path().join("status.html");
    std::fs::write(&file, STATUS_PAGE).expect("write page");
    let shot = shot_path(&dir, "status-unreachable.png");
    let url = format!("file://{}", file.display());
    let dom = screenshot_and_dom(&url, &profile, &shot).await;
    assert!(
        dom.contains(
            "<div id=\"banner\" role=\"alert\" class=\"show\">Recorder unreachable since "
        ),
        "no banner:\n{dom}"
    );
    assert!(
        dom.contains(">no data: the recorder does not answer</td>"),
        "{dom}"
    );
}
