//! Launches the GStreamer test publisher (`tests/publishers/gst_publisher.py`) and reads its
//! reports.
//!
//! Why: the recorder must cope with real GStreamer/webrtcbin publishers such as Raspberry Ninja
//! (media and a data channel in the first offer, `"session": null`, Opus on SSRC 0xFFFFFFFF, two
//! H.264 slices per frame, a pipeline per viewer, Sender Reports as GStreamer computes them).
//! Our webrtc-rs test source does none of that, so end-to-end tests also run this publisher.
//!
//! The script runs under Debian's `/usr/bin/python3` with Debian packages only; it prints one
//! `NINJAREC {json}` line per event on stdout (format documented at the top of the script).
//! [`GstPublisher`] parses them on a reader thread and keeps the latest state per stream.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ninjarec::signaling::Dialect;
use serde_json::Value;

/// The interpreter the script is written for: Debian's, which sees the `python3-gi` bindings
/// (a virtualenv or another Python on `PATH` would not).
pub const PYTHON: &str = "/usr/bin/python3";

/// Debian packages the publisher needs; named in every "not installed" message so the fix is
/// one copy-paste away.
pub const DEBIAN_PACKAGES: &str = "python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 \
     gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
     gstreamer1.0-plugins-ugly gstreamer1.0-nice python3-websockets python3-cryptography";

/// Prefix of the script's report lines; anything else on stdout is ignored.
const REPORT_PREFIX: &str = "NINJAREC ";

/// How long [`GstPublisher::stop`] waits for the script to close its peers and exit after
/// SIGTERM before it is killed (the script itself bounds its teardown at 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the publisher script, from the crate root so tests work from any directory.
pub fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/publishers/gst_publisher.py")
}

/// Panics with one line naming the Debian packages to install unless the GStreamer publisher
/// can run here.
///
/// Why: a test that needs GStreamer should fail with an actionable message, not with a Python
/// traceback or a timeout. It runs the script's `--check` (bindings, webrtcbin, x264enc,
/// opusenc, libnice, the Python modules, and the §3 crypto test vector).
pub fn require_gstreamer() {
    let out = Command::new(PYTHON)
        .arg(script_path())
        .arg("--check")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            panic!(
                "GStreamer publisher unavailable ({}): apt-get install {DEBIAN_PACKAGES}",
                line.trim()
            );
        }
        Err(e) => panic!(
            "GStreamer publisher unavailable ({PYTHON}: {e}): apt-get install python3 {DEBIAN_PACKAGES}"
        ),
    }
}

/// Settings of one publisher process; one entry in `streams` per publisher.
///
/// Why a struct: tests vary a few knobs (room, password, dialect, flashes, size) and keep the
/// rest at Raspberry-Ninja-like defaults.
#[derive(Debug, Clone)]
pub struct GstPublisherConfig {
    /// Handshake server URL, e.g. `ws://127.0.0.1:PORT`.
    pub server: String,
    /// Room to publish in (`None`: `seed` outside rooms).
    pub room: Option<String>,
    /// Stream ids; each gets its own WebSocket and, per viewer, its own pipeline.
    pub streams: Vec<String>,
    /// `None` = VDO.Ninja's default password (hashing and encryption on); `Some("false")` = off.
    pub password: Option<String>,
    /// Salt (`None` = `vdo.ninja`).
    pub salt: Option<String>,
    /// Server dialect the publisher speaks (relay: `from` on every message).
    pub dialect: Dialect,
    /// Media times (s) of white-frame flashes, each starting with a 100 ms 1 kHz beep.
    pub flashes: Vec<f64>,
    /// Repeat `flashes` every this many seconds (`None`: the times are absolute).
    pub period: Option<f64>,
    /// Video width in pixels (even).
    pub width: u32,
    /// Video height in pixels (even).
    pub height: u32,
    /// Frames per second (must divide 48000).
    pub fps: u32,
    /// x264 target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Stop by itself after this long (`None`: until [`GstPublisher::stop`]).
    pub duration: Option<Duration>,
    /// Interval of the periodic `stats` reports.
    pub stats_interval: Duration,
    /// Report every RTCP Sender Report sent (`sr` events), to check what the recorder gets.
    pub report_sender_reports: bool,
    /// `noise` (default: encoder works like with a camera) or `black` frames between flashes.
    pub pattern: String,
    /// Run inside this network namespace (`ip netns exec`), e.g. behind an impaired link.
    pub netns: Option<String>,
    /// The one address ICE gathers on (`None`: 127.0.0.1).
    pub local_ip: Option<String>,
    /// Keep libnice's ICE-TCP on (`--ice-tcp`), for a recorder reached only by TCP.
    pub ice_tcp: bool,
}

impl GstPublisherConfig {
    /// Raspberry-Ninja-like defaults: 1280x720 at 30 fps, 2000 kbit/s, default password, relay
    /// dialect, no room, no flashes, stats every second.
    pub fn new(server: &str, streams: &[&str]) -> Self {
        GstPublisherConfig {
            server: server.to_owned(),
            room: None,
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            password: None,
            salt: None,
            dialect: Dialect::Relay,
            flashes: Vec::new(),
            period: None,
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: 2000,
            duration: None,
            stats_interval: Duration::from_secs(1),
            report_sender_reports: false,
            pattern: "noise".to_owned(),
            netns: None,
            local_ip: None,
            ice_tcp: false,
        }
    }

    /// The script's command line for this configuration.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--server".into(),
            self.server.clone(),
            "--streams".into(),
            self.streams.join(","),
            "--dialect".into(),
            match self.dialect {
                Dialect::Official => "official",
                Dialect::Relay => "relay",
            }
            .into(),
            "--width".into(),
            self.width.to_string(),
            "--height".into(),
            self.height.to_string(),
            "--fps".into(),
            self.fps.to_string(),
            "--bitrate".into(),
            self.bitrate_kbps.to_string(),
            "--stats-interval".into(),
            format!("{}", self.stats_interval.as_secs_f64()),
            "--pattern".into(),
            self.pattern.clone(),
        ];
        if let Some(ip) = &self.local_ip {
            a.extend(["--local-ip".into(), ip.clone()]);
        }
        if self.ice_tcp {
            a.push("--ice-tcp".into());
        }
        if let Some(r) = &self.room {
            a.extend(["--room".into(), r.clone()]);
        }
        if let Some(p) = &self.password {
            a.extend(["--password".into(), p.clone()]);
        }
        if let Some(s) = &self.salt {
            a.extend(["--salt".into(), s.clone()]);
        }
        if !self.flashes.is_empty() {
            let list: Vec<String> = self.flashes.iter().map(|t| format!("{t}")).collect();
            a.extend(["--flashes".into(), list.join(",")]);
        }
        if let Some(p) = self.period {
            a.extend(["--period".into(), format!("{p}")]);
        }
        if let Some(d) = self.duration {
            a.extend(["--duration".into(), format!("{}", d.as_secs_f64())]);
        }
        if self.report_sender_reports {
            a.push("--report-sr".into());
        }
        a
    }
}

/// Packet counters of one viewer's pipeline (or their sum over a stream's viewers).
///
/// Why two sets: `video_packets`/`audio_packets` count what the payloaders handed to webrtcbin
/// (also before the connection was up); the `wire_*` counters count SRTP packets handed to
/// libnice, i.e. what actually went to the recorder. Compare recordings with the latter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// H.264 RTP packets out of the payloader.
    pub video_packets: u64,
    /// Opus RTP packets out of the payloader.
    pub audio_packets: u64,
    /// H.264 frames (marker bits) out of the payloader.
    pub video_frames: u64,
    /// Frames with an IDR slice.
    pub keyframes: u64,
    /// Slices (NAL types 1 and 5); two per frame like Raspberry Ninja's encoder.
    pub video_slices: u64,
    /// H.264 packets sent on the network (SRTP, PT 96).
    pub wire_video_packets: u64,
    /// Opus packets sent on the network (SRTP, PT 100).
    pub wire_audio_packets: u64,
    /// Other RTP sent (RTX, RED).
    pub wire_other_rtp: u64,
    /// RTCP compound packets sent.
    pub wire_rtcp: u64,
    /// SSRC of the Opus stream on the wire (Raspberry Ninja: 0xFFFFFFFF).
    pub audio_ssrc: Option<u32>,
    /// SSRC of the H.264 stream on the wire.
    pub video_ssrc: Option<u32>,
    /// Unix ms of the first RTP packet on the wire.
    pub media_start_ms: Option<u64>,
}

impl Counts {
    fn from_json(v: &Value) -> Self {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let ssrc = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
        };
        Counts {
            video_packets: n("video_packets"),
            audio_packets: n("audio_packets"),
            video_frames: n("video_frames"),
            keyframes: n("keyframes"),
            video_slices: n("video_slices"),
            wire_video_packets: n("wire_video_packets"),
            wire_audio_packets: n("wire_audio_packets"),
            wire_other_rtp: n("wire_other_rtp"),
            wire_rtcp: n("wire_rtcp"),
            audio_ssrc: ssrc("audio_ssrc"),
            video_ssrc: ssrc("video_ssrc"),
            media_start_ms: v.get("media_start").and_then(Value::as_u64),
        }
    }
}

/// One `stats` report of a stream: totals over every viewer it served, and per viewer.
///
/// Why per viewer: a recorder that reconnects gets a second pipeline (key `id#2`); each of its
/// files must be compared with what that viewer was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Stream id (unhashed).
    pub stream: String,
    /// True for the report written on exit.
    pub final_report: bool,
    /// Viewers connected at the time of the report.
    pub viewers: u64,
    /// Sum over every viewer served so far.
    pub total: Counts,
    /// Per viewer (by the viewer's id, `id#n` for its n-th connection).
    pub per_viewer: BTreeMap<String, Counts>,
    /// Viewers that said `{"bye":true}` on the data channel.
    pub viewer_byes: u64,
}

impl StreamStats {
    fn from_json(v: &Value) -> Self {
        let per_viewer = v
            .get("per_viewer")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, c)| (k.clone(), Counts::from_json(c)))
                    .collect()
            })
            .unwrap_or_default();
        StreamStats {
            stream: v["stream"].as_str().unwrap_or_default().to_owned(),
            final_report: v.get("final").and_then(Value::as_bool).unwrap_or(false),
            viewers: v.get("viewers").and_then(Value::as_u64).unwrap_or(0),
            total: Counts::from_json(v),
            per_viewer,
            viewer_byes: v.get("viewer_byes").and_then(Value::as_u64).unwrap_or(0),
        }
    }
}

/// A `media-start` report: when a viewer's first RTP packet left, and where media time 0 is.
///
/// Why: tests compare the recording's timeline with the sender's (flash times are media times;
/// `media_epoch_ms + t*1000` is when the flash at `t` was captured, in unix ms).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaStart {
    /// The viewer (recorder) the media went to.
    pub viewer: String,
    /// Unix ms of the first RTP packet handed to the network.
    pub unix_ms: u64,
    /// Unix ms of media time 0 (PTS 0 of both audio and video) of that viewer's pipeline.
    pub media_epoch_ms: Option<i64>,
}

#[derive(Default)]
struct Shared {
    ready: BTreeMap<String, String>,
    stats: BTreeMap<String, StreamStats>,
    final_stats: BTreeMap<String, StreamStats>,
    media_start: BTreeMap<String, Vec<MediaStart>>,
    events: Vec<Value>,
    exited_cleanly: bool,
    stdout_closed: bool,
}

/// A running publisher process (one or several streams).
///
/// Why a process and not a library: the publisher is Python + GStreamer (like Raspberry Ninja);
/// it runs in its own process group so [`Drop`] can kill it with everything it started, and a
/// failing test never leaves it streaming.
pub struct GstPublisher {
    child: Option<Child>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    streams: Vec<String>,
}

impl GstPublisher {
    /// Starts the script with `cfg`.
    ///
    /// Panics (one line) if the interpreter cannot be started; call [`require_gstreamer`] first
    /// for a message naming the missing packages.
    pub fn start(cfg: &GstPublisherConfig) -> Self {
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, PYTHON]);
                c
            }
            None => Command::new(PYTHON),
        };
        cmd.arg("-u")
            .arg(script_path())
            .args(cfg.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("GST_DEBUG_NO_COLOR", "1")
            // Its own process group: Drop can signal the whole group.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PYTHON} {:?}: {e}", script_path()));
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut readers = Vec::new();

        let out = child.stdout.take().expect("stdout piped");
        let sh = shared.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some(json) = line.strip_prefix(REPORT_PREFIX) else {
                    continue;
                };
                let Ok(mut v) = serde_json::from_str::<Value>(json) else {
                    continue;
                };
                // When the test saw it (unix ms), for timing events that carry no time.
                if let Some(o) = v.as_object_mut() {
                    o.insert("rx_ms".into(), unix_ms().into());
                }
                let (lock, cv) = &*sh;
                let mut s = lock.lock().unwrap();
                Self::absorb(&mut s, v);
                cv.notify_all();
            }
            let (lock, cv) = &*sh;
            lock.lock().unwrap().stdout_closed = true;
            cv.notify_all();
        }));

        let err = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        }));

        GstPublisher {
            child: Some(child),
            shared,
            stderr,
            readers,
            streams: cfg.streams.clone(),
        }
    }

    fn absorb(s: &mut Shared, v: Value) {
        let stream = v
            .get("stream")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match v.get("event").and_then(Value::as_str) {
            Some("ready") => {
                let wire = v["wire_stream"].as_str().unwrap_or_default().to_owned();
                s.ready.insert(stream, wire);
            }
            Some("stats") => {
                let st = StreamStats::from_json(&v);
                if st.final_report {
                    s.final_stats.insert(stream.clone(), st.clone());
                }
                s.stats.insert(stream, st);
            }
            Some("media-start") => {
                s.media_start.entry(stream).or_default().push(MediaStart {
                    viewer: v["viewer"].as_str().unwrap_or_default().to_owned(),
                    unix_ms: v["t"].as_u64().unwrap_or(0),
                    media_epoch_ms: v.get("media_epoch_ms").and_then(Value::as_i64),
                });
            }
            Some("exit") => s.exited_cleanly = true,
            _ => {}
        }
        s.events.push(v);
    }

    /// Waits until every stream has announced itself on the server (`ready`).
    ///
    /// Why: a recorder started before the publishers announce takes a different signalling
    /// path; tests that want "publishers first" wait here. Panics with the script's stderr on
    /// timeout or if the script exits.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap();
        loop {
            if self.streams.iter().all(|x| s.ready.contains_key(x)) {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline && !s.stdout_closed,
                "GStreamer publisher not ready within {within:?} (ready: {:?}); stderr:\n{}",
                s.ready.keys().collect::<Vec<_>>(),
                self.stderr_text()
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Waits until `stream` has sent media to a viewer; returns when its first RTP left.
    ///
    /// Why: lets a test start its clock when media really flows, not when it asked.
    pub fn wait_media_start(&self, stream: &str, within: Duration) -> MediaStart {
        let deadline = Instant::now() + within;
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(m) = s.media_start.get(stream).and_then(|v| v.first()) {
                return m.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline && !s.stdout_closed,
                "{stream}: no media sent within {within:?}; stderr:\n{}",
                self.stderr_text()
            );
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// The latest `stats` report of `stream` (None before the first one).
    ///
    /// Why: load tests watch packet rates while running; end-of-test checks use [`Self::stop`].
    pub fn stats(&self, stream: &str) -> Option<StreamStats> {
        self.shared.0.lock().unwrap().stats.get(stream).cloned()
    }

    /// The latest `stats` report of every stream that has one.
    pub fn all_stats(&self) -> BTreeMap<String, StreamStats> {
        self.shared.0.lock().unwrap().stats.clone()
    }

    /// Every `media-start` of `stream` so far (one per viewer connection), oldest first.
    ///
    /// Why: the first packet's time tells a test how the recording's start relates to what
    /// was sent, and a second entry reveals a reconnect.
    pub fn media_starts(&self, stream: &str) -> Vec<MediaStart> {
        self.shared
            .0
            .lock()
            .unwrap()
            .media_start
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// The stream id as announced on the wire (hash suffix included), once `ready`.
    pub fn wire_stream_id(&self, stream: &str) -> Option<String> {
        self.shared.0.lock().unwrap().ready.get(stream).cloned()
    }

    /// Every report line so far, as JSON (for diagnostics: `viewer` transitions, `sr`, ...).
    pub fn events(&self) -> Vec<Value> {
        self.shared.0.lock().unwrap().events.clone()
    }

    /// What the script wrote to stderr so far (its one-line errors and warnings).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the publisher like a user would (SIGTERM: bye on every data channel, pipelines
    /// down) and returns each stream's final stats.
    ///
    /// Why SIGTERM and not a kill: the final report is written on the way out, and the recorder
    /// should see a publisher leave the normal way. Panics with stderr if the script exits with
    /// an error or writes no final report; a script that hangs is killed after 20 s.
    pub fn stop(mut self) -> BTreeMap<String, StreamStats> {
        let mut child = self.child.take().expect("running");
        if matches!(child.try_wait(), Ok(None)) {
            signal(child.id(), "-TERM", false);
        }
        let status = wait_bounded(&mut child, STOP_TIMEOUT);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let s = self.shared.0.lock().unwrap();
        let status = status.unwrap_or_else(|| {
            panic!(
                "GStreamer publisher did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            )
        });
        assert!(
            status.success() && s.exited_cleanly,
            "GStreamer publisher exited with {status}; stderr:\n{}",
            self.stderr_text()
        );
        for stream in &self.streams {
            assert!(
                s.final_stats.contains_key(stream),
                "no final stats for {stream}; stderr:\n{}",
                self.stderr_text()
            );
        }
        s.final_stats.clone()
    }
}

impl Drop for GstPublisher {
    /// Kills the process group if the publisher is still running (a failed test), so no
    /// pipeline keeps streaming into the next test.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "-KILL", true);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to `pid` (or to its process group) with `kill(1)`; the test crate has no libc.
fn signal(pid: u32, sig: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args([sig, "--", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_bounded(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            signal(child.id(), "-KILL", true);
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Now as Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
