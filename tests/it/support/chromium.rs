//! A real browser as a VDO.Ninja publisher: headless Chromium running our page
//! `tests/publishers/browser/publisher.html`.
//!
//! Why: our webrtc-rs test source sends what *we* think a publisher sends. Chromium sends what
//! users' browsers send (OpenH264 / libwebrtc packetisation, SPS rewriting, RTX bandwidth
//! probes, TWCC-driven resolution changes, data-channel renegotiation), and that is where
//! interop bugs hide (issue 9). We do not have the VDO.Ninja web app, so the page imitates its
//! publisher on the wire (see the page's header comment); this module launches it and reads
//! its progress.
//!
//! How it talks to us:
//! * Progress: the page prints `NINJAREC <json>` with `console.log`; Chromium copies console
//!   messages to stderr (`--enable-logging=stderr`) as
//!   `[pid:tid:date:INFO:CONSOLE:line] "NINJAREC {...}", source: file:///... (line)`, which a
//!   reader thread parses into [`BrowserEvent`]s and the latest [`BrowserStats`].
//! * Control: the Chrome DevTools protocol over `--remote-debugging-pipe` (file descriptors 3
//!   and 4, no TCP port) — only used by [`BrowserPublisher::stop`] to call the page's
//!   `ninjarecStop()` (final stats, `{"bye":true}` to every viewer).
//!
//! Network: the machine has only loopback. Chromium runs with every background-networking
//! switch off, with `--allow-loopback-in-peer-connection` (otherwise it gathers no 127.0.0.1
//! candidate at all and cannot reach a recorder bound to 127.0.0.1), and the page trickles
//! only 127.0.0.0/8 candidates (`ice=loopback`), so the recorder never sends to another
//! address. Chromium may still *send from* its socket on another local interface to the
//! recorder's 127.0.0.1 candidate (the selected pair is then e.g. `192.0.2.2 -> 127.0.0.1`,
//! and the recorder answers the host's own 192.0.2.2); that traffic never leaves the host.
//! Measured with strace and the eth0 counters: no DNS query, nothing sent off the host (libwebrtc
//! only `connect()`s unsent UDP sockets to 8.8.8.8 / 2001:4860:4860::8888 to learn its default
//! route).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ninjarec::signaling::Dialect;
use serde_json::{Value, json};

/// Where Debian's `chromium` package puts the browser.
const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";
/// Lines of Chromium's own (non-`NINJAREC`) log kept for failure messages.
const LOG_TAIL_LINES: usize = 200;
/// Marker of the page's progress lines.
const MARKER: &str = "NINJAREC ";

/// The Chromium binary. Panics with one line naming the package when it is missing: a test
/// that needs a browser must fail loudly, never pass without having run.
///
/// `NINJAREC_CHROMIUM` overrides the path (another build, a wrapper script).
pub fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NINJAREC_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NINJAREC_CHROMIUM={} does not exist",
            p.display()
        );
        return p;
    }
    let default = PathBuf::from(DEBIAN_CHROMIUM);
    if default.is_file() {
        return default;
    }
    // Other distributions name it differently; look in PATH before giving up.
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is not installed: apt-get install chromium");
}

/// The page, as shipped in the repository.
pub fn publisher_page() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/publishers/browser/publisher.html")
}

/// What the browser publisher does; see [`BrowserPublisherConfig::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct BrowserPublisherConfig {
    /// Handshake server, `ws://127.0.0.1:PORT`.
    pub server: String,
    /// Raw (unhashed) stream id to publish.
    pub stream_id: String,
    /// Raw room name, if publishing inside a room.
    pub room: Option<String>,
    /// `None` = VDO.Ninja's default password (hashing and encryption on, like the web app
    /// without `&password`); `Some("false")` = hashing and encryption off; `Some(p)` = custom.
    pub password: Option<String>,
    /// Salt; `None` = `vdo.ninja`.
    pub salt: Option<String>,
    /// Server dialect the page speaks.
    pub dialect: Dialect,
    /// A `.y4m` clip for `--use-file-for-fake-video-capture` (default: Chromium's animated
    /// test pattern).
    pub video_file: Option<PathBuf>,
    /// A `.wav` file for `--use-file-for-fake-audio-capture` (default: Chromium's beeps).
    pub audio_file: Option<PathBuf>,
    /// Extra Chromium switches (field trials, verbose WebRTC logging while debugging).
    pub extra_args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`), e.g. behind an impaired link.
    pub netns: Option<String>,
}

impl BrowserPublisherConfig {
    /// Publishes `stream_id` through `server`: no room, default password, official dialect,
    /// Chromium's built-in fake camera and microphone.
    pub fn new(server: impl Into<String>, stream_id: impl Into<String>) -> Self {
        BrowserPublisherConfig {
            server: server.into(),
            stream_id: stream_id.into(),
            room: None,
            password: None,
            salt: None,
            dialect: Dialect::Official,
            video_file: None,
            audio_file: None,
            extra_args: Vec::new(),
            netns: None,
        }
    }

    /// The page URL with this configuration in its query string.
    pub fn page_url(&self) -> String {
        let page = publisher_page();
        let page = page.canonicalize().unwrap_or(page);
        let mut q = vec![
            ("server", self.server.clone()),
            ("streamid", self.stream_id.clone()),
            (
                "dialect",
                match self.dialect {
                    Dialect::Official => "official",
                    Dialect::Relay => "relay",
                }
                .to_owned(),
            ),
            // Tests must not send anything beyond loopback (see the module docs).
            ("ice", "loopback".to_owned()),
        ];
        if let Some(r) = &self.room {
            q.push(("room", r.clone()));
        }
        if let Some(p) = &self.password {
            q.push(("password", p.clone()));
        }
        if let Some(s) = &self.salt {
            q.push(("salt", s.clone()));
        }
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!("file://{}?{}", page.display(), query.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (no `url` crate here).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `NINJAREC` line of the page.
#[derive(Debug, Clone)]
pub struct BrowserEvent {
    /// The `event` field (`ready`, `viewer`, `media-start`, `stats`, `error`, ...).
    pub name: String,
    /// The whole JSON object.
    pub json: Value,
    /// When the reader thread saw it.
    pub seen: Instant,
}

/// Outbound video counters of one peer connection, from the page's `getStats()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserVideoStats {
    /// Frames the encoder produced.
    pub frames_encoded: u64,
    /// Of those, keyframes (IDR for H.264).
    pub key_frames_encoded: u64,
    /// RTP packets sent (without retransmissions).
    pub packets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// RTX retransmissions (including bandwidth probes sent as retransmissions).
    pub retransmitted_packets_sent: u64,
    /// NACKs received.
    pub nack_count: u64,
    /// PLIs received.
    pub pli_count: u64,
    /// Negotiated codec, e.g. `video/H264`.
    pub mime_type: String,
    /// Its fmtp line (profile-level-id, packetization-mode).
    pub sdp_fmtp_line: String,
    /// Current encoded width.
    pub frame_width: u32,
    /// Current encoded height.
    pub frame_height: u32,
    /// `OpenH264`, `libvpx`, ...
    pub encoder_implementation: String,
}

/// Outbound audio counters of one peer connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserAudioStats {
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Negotiated codec, e.g. `audio/opus`.
    pub mime_type: String,
}

/// One stats line of the page (every second per viewer once media flows, and a last one,
/// `is_final`, when a peer ends).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrowserStats {
    /// The viewer the peer serves.
    pub uuid: String,
    /// Page clock (ms since the Unix epoch) when the stats were taken.
    pub t_ms: u64,
    /// Video sender counters, once a video track was added.
    pub video: Option<BrowserVideoStats>,
    /// Audio sender counters, once an audio track was added.
    pub audio: Option<BrowserAudioStats>,
    /// Selected ICE pair, `local:port -> remote:port`.
    pub pair: Option<String>,
    /// True for the line written when the peer ended (viewer bye, stop, failure).
    pub is_final: bool,
    /// Why the peer ended (final lines only).
    pub reason: Option<String>,
}

impl BrowserStats {
    /// Parses the page's stats object.
    pub fn from_json(v: &Value) -> BrowserStats {
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let video = v
            .get("video")
            .filter(|x| x.is_object())
            .map(|x| BrowserVideoStats {
                frames_encoded: u(x, "framesEncoded"),
                key_frames_encoded: u(x, "keyFramesEncoded"),
                packets_sent: u(x, "packetsSent"),
                bytes_sent: u(x, "bytesSent"),
                retransmitted_packets_sent: u(x, "retransmittedPacketsSent"),
                nack_count: u(x, "nackCount"),
                pli_count: u(x, "pliCount"),
                mime_type: s(x, "mimeType"),
                sdp_fmtp_line: s(x, "sdpFmtpLine"),
                frame_width: u(x, "frameWidth") as u32,
                frame_height: u(x, "frameHeight") as u32,
                encoder_implementation: s(x, "encoderImplementation"),
            });
        let audio = v
            .get("audio")
            .filter(|x| x.is_object())
            .map(|x| BrowserAudioStats {
                packets_sent: u(x, "packetsSent"),
                mime_type: s(x, "mimeType"),
            });
        BrowserStats {
            uuid: s(v, "uuid"),
            t_ms: u(v, "t"),
            video,
            audio,
            pair: v.get("pair").and_then(Value::as_str).map(str::to_owned),
            is_final: v.get("final").and_then(Value::as_bool).unwrap_or(false),
            reason: v.get("reason").and_then(Value::as_str).map(str::to_owned),
        }
    }
}

/// What the stderr reader collected.
#[derive(Default)]
struct Shared {
    events: Vec<BrowserEvent>,
    /// Latest stats line, and per viewer.
    latest: Option<BrowserStats>,
    by_viewer: HashMap<String, BrowserStats>,
    log_tail: VecDeque<String>,
    /// Chromium closed its stderr (exited).
    ended: bool,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

/// Extracts the JSON of a `NINJAREC` console line from one line of Chromium's stderr.
///
/// Chromium writes `... "NINJAREC {json}", source: file:///...publisher.js (123)`; the
/// message is not escaped, so the JSON runs to the last `", source: `.
pub fn parse_console_line(line: &str) -> Option<Value> {
    let start = line.find(&format!("\"{MARKER}"))? + 1 + MARKER.len();
    let end = line
        .rfind("\", source: ")
        .filter(|&e| e >= start)
        .unwrap_or_else(|| line.trim_end().trim_end_matches('"').len());
    serde_json::from_str(line.get(start..end)?).ok()
}

fn read_stderr(stderr: impl Read, state: SharedState) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let (lock, cv) = &*state;
        let mut s = lock.lock().unwrap();
        match parse_console_line(&line) {
            Some(json) => {
                let name = json
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if name == "stats" {
                    let st = BrowserStats::from_json(&json);
                    s.by_viewer.insert(st.uuid.clone(), st.clone());
                    s.latest = Some(st);
                }
                s.events.push(BrowserEvent {
                    name,
                    json,
                    seen: Instant::now(),
                });
            }
            None => {
                if s.log_tail.len() == LOG_TAIL_LINES {
                    s.log_tail.pop_front();
                }
                s.log_tail.push_back(line);
            }
        }
        cv.notify_all();
    }
    let (lock, cv) = &*state;
    lock.lock().unwrap().ended = true;
    cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Process plumbing (libc calls declared here: the test crate has no `libc` dependency)
// ---------------------------------------------------------------------------------------------

unsafe extern "C" {
    fn dup2(oldfd: i32, newfd: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

const F_DUPFD_CLOEXEC: i32 = 1030;
const SIGKILL: i32 = 9;

/// The DevTools protocol over the pipe pair Chromium opens with `--remote-debugging-pipe`:
/// it reads NUL-terminated JSON commands on fd 3 and writes replies/events on fd 4.
struct Cdp {
    to_browser: std::io::PipeWriter,
    replies: mpsc::Receiver<Value>,
    next_id: AtomicU64,
}

impl Cdp {
    /// Sends one command and waits for its reply (events in between are discarded).
    fn call(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .map_err(|e| format!("{method}: write to the DevTools pipe: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .map_err(|_| format!("{method}: no DevTools reply within {timeout:?}"))?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }
}

fn read_cdp(from_browser: std::io::PipeReader, replies: mpsc::Sender<Value>) {
    let mut reader = BufReader::new(from_browser);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                // Only replies (with `id`) are wanted; events are dropped here.
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && v.get("id").is_some()
                    && replies.send(v).is_err()
                {
                    break;
                }
            }
        }
    }
}

/// A running headless Chromium publishing through [`publisher_page`]. Dropping it kills
/// Chromium's whole process tree and removes its profile.
pub struct BrowserPublisher {
    child: Child,
    profile: PathBuf,
    state: SharedState,
    cdp: Mutex<Cdp>,
    config: BrowserPublisherConfig,
}

impl BrowserPublisher {
    /// Launches Chromium on the page. Returns at once; wait for the `ready` event (stream
    /// announced) with [`BrowserPublisher::wait_for`] before expecting viewers to find it.
    pub fn start(config: BrowserPublisherConfig) -> BrowserPublisher {
        let chromium = chromium_path();
        static N: AtomicU64 = AtomicU64::new(0);
        // A fresh profile: no state from earlier runs (permissions, caches, crash dumps).
        let profile = std::env::temp_dir().join(format!(
            "ninjarec-chromium-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the Chromium profile dir");

        let mut args: Vec<String> = [
            "--headless=new",
            // Chromium refuses to run as root with its sandbox (containers, CI).
            "--no-sandbox",
            // Fake camera/microphone, permission granted without a prompt; the grant also
            // makes Chromium expose host addresses instead of mDNS names.
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            // Nothing may leave loopback: no update checks, metrics, sync, QUIC, LAN
            // discovery (MediaRouter does SSDP/mDNS), translation or safe-browsing fetches.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=MediaRouter,DialMediaRouteProvider,OptimizationHints,Translate,WebRtcHideLocalIpsWithMdns",
            // Even with all of the above Chromium still looks up accounts.google.com and
            // clients2.google.com (measured: 42 packets to the DNS server in 15 s). With this
            // rule every name fails locally and no DNS query is sent; the page only needs
            // IP literals.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            // Without it Chromium gathers no 127.0.0.1 candidate and cannot reach a recorder
            // bound to loopback.
            "--allow-loopback-in-peer-connection",
            // Console messages (our NINJAREC lines) go to stderr.
            "--enable-logging=stderr",
            "--v=0",
            // DevTools on fds 3/4 for `stop()`, instead of a TCP port.
            "--remote-debugging-pipe",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        if let Some(v) = &config.video_file {
            args.push(format!("--use-file-for-fake-video-capture={}", v.display()));
        }
        if let Some(a) = &config.audio_file {
            args.push(format!("--use-file-for-fake-audio-capture={}", a.display()));
        }
        args.extend(config.extra_args.iter().cloned());
        args.push(config.page_url());

        let (cdp_in_read, cdp_in_write) = std::io::pipe().expect("pipe");
        let (cdp_out_read, cdp_out_write) = std::io::pipe().expect("pipe");
        let child_in: RawFd = cdp_in_read.as_raw_fd();
        let child_out: RawFd = cdp_out_write.as_raw_fd();
        let mut cmd = match &config.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&chromium);
                c
            }
            None => Command::new(&chromium),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so Drop can kill the browser and every helper process
            // (zygote, renderer, GPU, network, audio) at once.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The fds
        // are first moved to >= 10 so that placing them on 3 and 4 cannot clobber each other.
        unsafe {
            cmd.pre_exec(move || {
                let a = fcntl(child_in, F_DUPFD_CLOEXEC, 10);
                let b = fcntl(child_out, F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || dup2(a, 3) < 0 || dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        // The child's ends stay open only in the child, so EOF means Chromium is gone.
        drop(cdp_in_read);
        drop(cdp_out_write);

        let state: SharedState = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let st = state.clone();
        std::thread::Builder::new()
            .name("chromium-stderr".into())
            .spawn(move || read_stderr(stderr, st))
            .expect("spawn the stderr reader");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("chromium-cdp".into())
            .spawn(move || read_cdp(cdp_out_read, tx))
            .expect("spawn the DevTools reader");

        BrowserPublisher {
            child,
            profile,
            state,
            cdp: Mutex::new(Cdp {
                to_browser: cdp_in_write,
                replies: rx,
                next_id: AtomicU64::new(1),
            }),
            config,
        }
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &BrowserPublisherConfig {
        &self.config
    }

    /// Every `NINJAREC` event so far, in order.
    pub fn events(&self) -> Vec<BrowserEvent> {
        self.state.0.lock().unwrap().events.clone()
    }

    /// The first event called `name` so far, if any.
    pub fn event(&self, name: &str) -> Option<BrowserEvent> {
        let s = self.state.0.lock().unwrap();
        s.events.iter().find(|e| e.name == name).cloned()
    }

    /// Blocks until an event called `name` has been seen (returns the first one), Chromium
    /// exits, or `timeout` passes. Blocking: from async code use
    /// [`BrowserPublisher::wait_for_async`].
    pub fn wait_for(&self, name: &str, timeout: Duration) -> Option<BrowserEvent> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(e) = s.events.iter().find(|e| e.name == name) {
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.ended || left.is_zero() {
                return None;
            }
            s = cv.wait_timeout(s, left).unwrap().0;
        }
    }

    /// [`BrowserPublisher::wait_for`] without blocking a runtime thread (polls every 50 ms).
    pub async fn wait_for_async(&self, name: &str, timeout: Duration) -> Option<BrowserEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.event(name) {
                return Some(e);
            }
            if self.state.0.lock().unwrap().ended || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`BrowserPublisher::wait_for_async`], but panics with Chromium's log tail and the
    /// page's events when the event does not come.
    pub async fn expect_event(&self, name: &str, timeout: Duration) -> BrowserEvent {
        match self.wait_for_async(name, timeout).await {
            Some(e) => e,
            None => panic!(
                "browser publisher: no `{name}` event within {timeout:?}\npage events:\n{}\nchromium log tail:\n{}",
                self.events_text(),
                self.log_tail()
            ),
        }
    }

    /// Page time (ms since the Unix epoch) when the camera/microphone tracks were first added
    /// to a peer, i.e. when media starts flowing to a viewer.
    pub fn media_start(&self) -> Option<u64> {
        self.event("media-start")
            .and_then(|e| e.json.get("t").and_then(Value::as_u64))
    }

    /// The latest stats line (any viewer).
    pub fn stats(&self) -> Option<BrowserStats> {
        self.state.0.lock().unwrap().latest.clone()
    }

    /// The latest stats line of one viewer.
    pub fn stats_for(&self, viewer: &str) -> Option<BrowserStats> {
        self.state.0.lock().unwrap().by_viewer.get(viewer).cloned()
    }

    /// The last stats line of each peer that ended (`final: true`), in order.
    pub fn final_stats(&self) -> Vec<BrowserStats> {
        let s = self.state.0.lock().unwrap();
        s.events
            .iter()
            .filter(|e| e.name == "stats" && e.json.get("final") == Some(&Value::Bool(true)))
            .map(|e| BrowserStats::from_json(&e.json))
            .collect()
    }

    /// The page's `error` events (exceptions in its signalling or media code).
    pub fn errors(&self) -> Vec<Value> {
        let s = self.state.0.lock().unwrap();
        s.events
            .iter()
            .filter(|e| e.name == "error")
            .map(|e| e.json.clone())
            .collect()
    }

    /// The page's events except stats, one JSON per line (for failure messages).
    pub fn events_text(&self) -> String {
        let s = self.state.0.lock().unwrap();
        s.events
            .iter()
            .filter(|e| e.name != "stats")
            .map(|e| e.json.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last lines of Chromium's own log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = self.state.0.lock().unwrap();
        s.log_tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Evaluates a JavaScript expression in the page over DevTools and returns its value
    /// (promises are awaited).
    pub fn evaluate(&self, expression: &str, timeout: Duration) -> Result<Value, String> {
        let mut cdp = self.cdp.lock().unwrap();
        let targets = cdp.call("Target.getTargets", json!({}), None, timeout)?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|list| {
                list.iter().find(|t| {
                    t["type"] == "page"
                        && t["url"]
                            .as_str()
                            .is_some_and(|u| u.contains("publisher.html"))
                })
            })
            .and_then(|t| t["targetId"].as_str())
            .ok_or("the publisher page is not open")?
            .to_owned();
        let attached = cdp.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
            None,
            timeout,
        )?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or("no DevTools session")?
            .to_owned();
        let r = cdp.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            Some(&session),
            timeout,
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Stops publishing: the page writes a final stats line per viewer, says `{"bye":true}`
    /// to each and closes its WebSocket. Returns the final stats (one per viewer still
    /// connected). Blocking (DevTools round trips): from async code wrap it in
    /// `tokio::task::block_in_place` or call it after the recorder has finished.
    pub fn stop(&self, timeout: Duration) -> Result<Vec<BrowserStats>, String> {
        let v = self.evaluate("window.ninjarecStop()", timeout)?;
        Ok(v.as_array()
            .map(|a| a.iter().map(BrowserStats::from_json).collect())
            .unwrap_or_default())
    }

    /// Chromium's process id (= its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BrowserPublisher {
    fn drop(&mut self) {
        // The whole group: the browser's helpers would otherwise outlive a failed test.
        let pgid = self.child.id() as i32;
        // SAFETY: plain syscall; a negative pid addresses the process group we created.
        unsafe {
            kill(-pgid, SIGKILL);
        }
        let _ = self.child.wait();
        // SIGKILL is delivered asynchronously: wait (bounded) until no helper of the group is
        // still running, so none writes into the profile while it is removed. (Killed helpers
        // linger as zombies until PID 1 reaps them; they hold no files.)
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_running(pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True while a process of group `pgid` is alive and not a zombie (from `/proc/<pid>/stat`:
/// `pid (comm) state ppid pgrp ...`; `comm` may contain spaces, so parse after the last `)`).
pub fn group_running(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let _ppid = f.next();
            let pgrp = f.next().and_then(|g| g.parse::<i32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        })
}

/// True when `path` looks like a Chromium profile made by [`BrowserPublisher::start`]
/// (for tests that check cleanup).
pub fn is_profile_dir(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ninjarec-chromium-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_parsed() {
        let line = r#"[9362:9362:1202/064936.810274:INFO:CONSOLE:2] "NINJAREC {"event":"ready","q":"a\", source: b"}", source: file:///x/publisher.js?a=1 (2)"#;
        let v = parse_console_line(line).unwrap();
        assert_eq!(v["event"], "ready");
        assert_eq!(v["q"], "a\", source: b");
        assert!(parse_console_line("[1:2:3:INFO:CONSOLE:2] \"hello\", source: x (1)").is_none());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            percent_encode("ws://127.0.0.1:9/x y&z"),
            "ws%3A%2F%2F127.0.0.1%3A9%2Fx%20y%26z"
        );
        let mut c = BrowserPublisherConfig::new("ws://127.0.0.1:1", "cam");
        c.password = Some("p@ss word".into());
        let url = c.page_url();
        assert!(url.starts_with("file:///"), "{url}");
        assert!(url.contains("password=p%40ss%20word"), "{url}");
        assert!(url.contains("dialect=official"), "{url}");
    }
}
