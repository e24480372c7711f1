//! End-to-end tests of the recorder (issue 4), all on loopback.
//!
//! Every test starts its own built-in handshake server on 127.0.0.1:0, real webrtc-rs test
//! publishers (`ninjarec::testsrc`) streaming the built-in clip, and the recorder — in-process
//! (`orchestrator::run` with a `RunConfig` built from real command-line flags) or, where a
//! process is needed (SIGKILL, SIGTERM, a publisher vanishing), the real `ninjarec` binary.
//! Every file is checked twice: bit-exact against the clip with `record::verify`, and with
//! ffmpeg/ffprobe (decodes without a message, H.264 + Opus 48 kHz stereo).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ninjarec::peer::publisher::PublisherMode;
use ninjarec::record::naming::{MAX_COMPONENT, sanitize_component};
use ninjarec::record::stream::StreamSummary;
use ninjarec::signaling::crypto::MAX_STREAM_ID_CHARS;
use ninjarec::signaling::{Dialect, Password};
use ninjarec::testkit::clip::{Clip, split_annex_b};
use ninjarec::testkit::ts_check::{CheckOptions, check};
use ninjarec::testkit::verify::{Verified, verify_file};
use ninjarec::testsrc::{self, TestSource, TestSourceConfig, TestSourceError};
use tokio::sync::watch;

use crate::support::ffmpeg::{decode_errors, probe};
use crate::support::fixtures::{InProcess, TestDir, TestServer, recorder_args};

/// Seconds of media each recording should hold at least (after the first keyframe).
const MIN_SECONDS: f64 = 2.5;
/// How long a test waits for its files to appear (connection set-up on a loaded machine).
const APPEAR_WITHIN: Duration = Duration::from_secs(30);
/// The file's A/V alignment at its start may differ from what was sent by at most this.
const MAX_AV_START_MS: f64 = 20.0;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A test publisher's settings: the built-in clip over loopback, quick reconnects.
pub(crate) fn source_config(url: &str, stream: &str, room: Option<&str>) -> TestSourceConfig {
    let mut c = TestSourceConfig::new(url, stream);
    c.room = room.map(str::to_owned);
    c.backoff_initial = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c
}

/// A running publisher and the switch that stops it (with bye).
pub(crate) struct Publisher {
    source: TestSource,
    stop: watch::Sender<bool>,
}

impl Publisher {
    pub(crate) fn start(cfg: TestSourceConfig) -> Self {
        let (stop, rx) = watch::channel(false);
        let source = testsrc::spawn(cfg, rx).expect("valid test source config");
        Publisher { source, stop }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.source.join()).await;
    }
}

/// The recorder binary, its stderr collected line by line.
pub(crate) struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    out: Arc<Mutex<String>>,
    stdout_done: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    pub(crate) fn start(args: &[String]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Process::start`] with extra environment variables for the child. `NINJAREC_BIN`
    /// names another build of the recorder (a release build, when a test is run by hand as
    /// a benchmark); the default is the one cargo built for the tests.
    pub(crate) fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Self {
        let bin = std::env::var_os("NINJAREC_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ninjarec").into());
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("recorder binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        // Stdout is drained as it comes too: a recorder that prints more than a pipe holds
        // (a summary per recording: 618 of them after the churn soak) would otherwise block
        // on its last write and never exit.
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let out_sink = out.clone();
        let stdout_done = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
            out_sink.lock().unwrap().push_str(&text);
        });
        Process {
            child,
            log,
            out,
            stdout_done: Some(stdout_done),
        }
    }

    fn log_contains(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.log.lock().unwrap().iter().any(|l| pred(l))
    }

    /// The recorder's process id (for /proc measurements).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its status and stdout.
    pub(crate) async fn wait(
        mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(done) = self.stdout_done.take() {
                    let _ = tokio::task::spawn_blocking(move || done.join()).await;
                }
                let out = std::mem::take(&mut *self.out.lock().unwrap());
                // Let the stderr thread take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return (status, out, self.log_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "recorder did not exit within {within:?}\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failing test must not leave a recorder running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `.ts` files in `dir`, by name, with their sizes (none while the recorder has not
/// created the folder yet).
pub(crate) fn ts_files(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.ends_with(".ts")
                .then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .collect()
}

/// Waits until `dir` holds at least `n` files of at least 20 kB (media is flowing into each).
pub(crate) async fn wait_for_files(dir: &Path, n: usize) {
    let deadline = Instant::now() + APPEAR_WITHIN;
    loop {
        let files = ts_files(dir);
        if files.values().filter(|&&len| len >= 20_000).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} growing recordings expected in {} within {APPEAR_WITHIN:?}, found {files:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the file named by `pred` exists and has grown past 20 kB; returns its name.
async fn wait_for_file(dir: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + APPEAR_WITHIN;
    loop {
        if let Some((name, _)) = ts_files(dir)
            .into_iter()
            .find(|(name, len)| pred(name) && *len >= 20_000)
        {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "no matching recording in {} within {APPEAR_WITHIN:?}: {:?}",
            dir.display(),
            ts_files(dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Checks of one file
// ---------------------------------------------------------------------------------------------

/// The slice NAL units (types 1 and 5) of an Annex B access unit: what identifies a frame of
/// the clip (parameter sets and AUDs may be placed differently in the file).
fn slices<'a>(nals: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    nals.filter(|n| matches!(n.first().map(|b| b & 0x1F), Some(1 | 5)))
        .collect()
}

/// How far the file's A/V alignment at its start is from what the publisher sent, in ms.
///
/// The file's first video frame and first Opus packet are found in the clip (they are
/// bit-exact copies, checked by `verify_file`); the clip says how far apart they were sent
/// (modulo its loop), the file's PTS say how far apart they play. The difference is the sync
/// error a viewer would see.
fn av_start_error_ms(path: &Path, clip: &Clip, truncated: bool) -> f64 {
    av_error_ms(path, clip, truncated, false)
}

/// Like [`av_start_error_ms`], for the file's last video frame and last Opus packet.
fn av_end_error_ms(path: &Path, clip: &Clip, truncated: bool) -> f64 {
    av_error_ms(path, clip, truncated, true)
}

fn av_error_ms(path: &Path, clip: &Clip, truncated: bool, at_end: bool) -> f64 {
    let data = std::fs::read(path).unwrap();
    let opts = CheckOptions {
        allow_truncated: truncated,
        ..CheckOptions::default()
    };
    let report = check(&data, &opts);
    let (v, a) = if at_end {
        (report.video.last().unwrap(), report.audio.last().unwrap())
    } else {
        (&report.video[0], &report.audio[0])
    };
    let v_slices = slices(split_annex_b(&v.data));
    let loop_90k = clip.duration_90k as i64;
    let file_90k = a.pts as i64 - v.pts as i64;
    let mut best: Option<i64> = None;
    for cv in clip
        .video
        .iter()
        .filter(|f| slices(f.nals.iter().map(|n| n.as_ref())) == v_slices)
    {
        for ca in clip
            .audio
            .iter()
            .filter(|p| p.data.as_ref() == a.data.as_slice())
        {
            // What was sent, wrapped into (-loop/2, loop/2] around the file's offset.
            let sent = ca.pts_90k as i64 - cv.pts_90k as i64;
            let err = (file_90k - sent + loop_90k / 2).rem_euclid(loop_90k) - loop_90k / 2;
            if best.is_none_or(|b| err.abs() < b.abs()) {
                best = Some(err);
            }
        }
    }
    let err = best.unwrap_or_else(|| panic!("{}: first frames not in the clip", path.display()));
    err as f64 / 90.0
}

/// Checks one recording of the clip: bit-exact frames and audio, at least `min_seconds` of
/// video, audio starting with video, and ffmpeg/ffprobe agreeing it is clean H.264 + Opus 48 kHz
/// stereo. `truncated` accepts a file cut by SIGKILL: then ffmpeg may only complain about the
/// last, partial access unit (the H.264 decoder concealing it), as `tests/ts_writer.rs` defines.
pub(crate) fn check_recording(
    path: &Path,
    clip: &Clip,
    truncated: bool,
    min_seconds: f64,
) -> Verified {
    let v = verify_file(path, clip, truncated)
        .unwrap_or_else(|e| panic!("{}: not a faithful recording: {e}", path.display()));
    assert!(
        v.video_seconds >= min_seconds,
        "{}: only {:.2} s of video ({v:?})",
        path.display(),
        v.video_seconds
    );
    assert!(
        v.audio_packets as f64 >= min_seconds * 45.0,
        "{}: only {} audio packets ({v:?})",
        path.display(),
        v.audio_packets
    );
    let offset = v.av_start_offset_ms.expect("file has both audio and video");
    let error = av_start_error_ms(path, clip, truncated);
    let end_error = av_end_error_ms(path, clip, truncated);
    assert!(
        end_error.abs() <= MAX_AV_START_MS,
        "{}: at the end of the file audio is {end_error:+.1} ms off what was sent",
        path.display()
    );
    eprintln!(
        "{}: {} frames, {} audio packets, A/V start {offset:+.1} ms ({error:+.1} ms off what was sent, end {end_error:+.1} ms)",
        path.file_name().unwrap().to_string_lossy(),
        v.frames,
        v.audio_packets
    );
    assert!(
        error.abs() <= MAX_AV_START_MS,
        "{}: audio starts {offset:+.1} ms from video, {error:+.1} ms off what was sent",
        path.display()
    );
    let errors = decode_errors(path);
    if truncated {
        for line in errors.lines() {
            assert!(
                line.starts_with("[h264 @"),
                "{}: unexpected ffmpeg message for a cut file: {line}",
                path.display()
            );
        }
    } else {
        assert!(
            errors.is_empty(),
            "{}: ffmpeg reports:\n{errors}",
            path.display()
        );
    }
    let streams = probe(path);
    assert!(
        streams.iter().any(|s| s.starts_with("h264,")),
        "{}: no H.264 stream in {streams:?}",
        path.display()
    );
    assert!(
        streams.iter().any(|s| s.starts_with("opus,48000,2,")),
        "{}: no Opus 48 kHz stereo stream in {streams:?}",
        path.display()
    );
    v
}

/// The summary of `stream_id` with a file, or a panic listing what there is.
fn summary_of<'a>(summaries: &'a [StreamSummary], stream_id: &str) -> &'a StreamSummary {
    summaries
        .iter()
        .find(|s| s.stream_id == stream_id && s.path.is_some())
        .unwrap_or_else(|| panic!("no recording of {stream_id:?} in {summaries:#?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. --record STREAMID: both publisher behaviours, default password and --password false
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_one_stream_both_publisher_modes_with_and_without_password() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("single");
    let cases = [
        ("rpi_pw", PublisherMode::MediaInFirstOffer, true),
        ("web_pw", PublisherMode::DataChannelFirst, true),
        ("rpi_nopw", PublisherMode::MediaInFirstOffer, false),
        ("web_nopw", PublisherMode::DataChannelFirst, false),
    ];
    let mut publishers = Vec::new();
    let mut recorders = Vec::new();
    for (id, mode, password) in cases {
        let mut cfg = source_config(&url, id, None);
        cfg.mode = mode;
        if !password {
            cfg.password = Password::Disabled;
        }
        publishers.push(Publisher::start(cfg));
        let mut extra = vec!["--record", id];
        if !password {
            extra.extend(["--password", "false"]);
        }
        recorders.push(InProcess::start(&recorder_args(&url, &dir, &extra)));
    }
    wait_for_files(&dir, cases.len()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut summaries = Vec::new();
    for r in recorders {
        summaries.extend(r.stop().await);
    }
    for p in publishers {
        p.stop().await;
    }
    for (id, ..) in cases {
        let s = summary_of(&summaries, id);
        let path = s.path.as_ref().unwrap();
        // --record STREAMID: the prefix is the stream ID.
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("{id}_{id}_")), "{name}");
        check_recording(path, &clip, false, MIN_SECONDS);
        assert_eq!(s.core.packets_lost, 0, "{s}");
        assert_eq!(s.core.frames_dropped, 0, "no frame lost on loopback: {s}");
    }
    assert_eq!(ts_files(&dir).len(), cases.len(), "one file per stream");
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 2. --room R --record-room: publishers there before, joining after, leaving and coming back;
//    --record-streams a,b records only those
// ---------------------------------------------------------------------------------------------

/// `PREFIX_<id>_<unix>.ts` → `(id, unix)`.
fn parse_name<'a>(name: &'a str, prefix: &str) -> Option<(&'a str, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('_')?;
    let rest = rest.strip_suffix(".ts")?;
    let (id, unix) = rest.rsplit_once('_')?;
    Some((id, unix.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_room_follows_publishers_joining_leaving_and_returning() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("room");
    let filtered_dir = TestDir::new("room-filtered");
    let started = unix_now();
    let room = Some("room2");
    let a = Publisher::start(source_config(&url, "a", room));
    let c = Publisher::start(source_config(&url, "c", room));
    let all = InProcess::start(&recorder_args(
        &url,
        &dir,
        &["--room", "room2", "--record-room"],
    ));
    let only_ab = InProcess::start(&recorder_args(
        &url,
        &filtered_dir,
        &[
            "--room",
            "room2",
            "--record-room",
            "--record",
            "ab",
            "--record-streams",
            "a,b",
        ],
    ));
    wait_for_files(&dir, 2).await;
    // b joins after the recorder.
    let mut b_cfg = source_config(&url, "b", room);
    b_cfg.mode = PublisherMode::DataChannelFirst;
    let b = Publisher::start(b_cfg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // c leaves (bye) and comes back as a new session: a new file.
    c.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = Publisher::start(source_config(&url, "c", room));
    let deadline = Instant::now() + APPEAR_WITHIN;
    while ts_files(&dir).len() < 4 || ts_files(&dir).values().any(|&len| len < 20_000) {
        assert!(
            Instant::now() < deadline,
            "expected four growing files: {:?}",
            ts_files(&dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summaries = all.stop().await;
    let filtered = only_ab.stop().await;
    for p in [a, b, c] {
        p.stop().await;
    }
    let now = unix_now();

    let files = ts_files(&dir);
    assert_eq!(files.len(), 4, "a, b, c and c again: {files:?}");
    let mut ids: Vec<&str> = Vec::new();
    for name in files.keys() {
        let (id, unix) = parse_name(name, "room2").unwrap_or_else(|| panic!("name {name}"));
        assert!((started..=now).contains(&unix), "{name}: time {unix}");
        ids.push(id);
        check_recording(&dir.join(name), &clip, false, 2.0);
    }
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b", "c", "c"]);
    assert_eq!(
        summaries.iter().filter(|s| s.path.is_some()).count(),
        4,
        "{summaries:#?}"
    );

    let files = ts_files(&filtered_dir);
    let mut ids: Vec<&str> = files
        .keys()
        .map(|n| parse_name(n, "ab").unwrap_or_else(|| panic!("name {n}")).0)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b"], "--record-streams a,b: {files:?}");
    for name in files.keys() {
        check_recording(&filtered_dir.join(name), &clip, false, 2.0);
    }
    assert!(filtered.iter().all(|s| s.stream_id != "c"), "{filtered:#?}");

    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 3. Both server dialects
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_server_dialects_record() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let mut publishers = Vec::new();
    let mut recorders = Vec::new();
    let mut dirs = Vec::new();
    for (dialect, flag) in [(Dialect::Official, "official"), (Dialect::Relay, "relay")] {
        let dir = TestDir::new(&format!("dialect-{flag}"));
        let room = format!("room-{flag}");
        let mut cfg = source_config(&url, &format!("cam_{flag}"), Some(&room));
        cfg.dialect = Some(dialect);
        publishers.push(Publisher::start(cfg));
        recorders.push(InProcess::start(&recorder_args(
            &url,
            &dir,
            &["--dialect", flag, "--room", &room, "--record-room"],
        )));
        dirs.push((flag, dir));
    }
    for (_, dir) in &dirs {
        wait_for_files(dir, 1).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut summaries = Vec::new();
    for r in recorders {
        summaries.extend(r.stop().await);
    }
    for p in publishers {
        p.stop().await;
    }
    for (flag, dir) in dirs {
        let s = summary_of(&summaries, &format!("cam_{flag}"));
        let path = s.path.as_ref().unwrap();
        assert_eq!(path.parent(), Some(dir.path()));
        check_recording(path, &clip, false, MIN_SECONDS);
        assert_eq!(ts_files(&dir).len(), 1, "{flag}");
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 4. SIGKILL mid-recording: every file plays up to the kill
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_playable_files() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("sigkill");
    let room = Some("killroom");
    let publishers = [
        Publisher::start(source_config(&url, "k1", room)),
        Publisher::start(source_config(&url, "k2", room)),
    ];
    let mut recorder = Process::start(&recorder_args(
        &url,
        &dir,
        &["--room", "killroom", "--record-room"],
    ));
    wait_for_files(&dir, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    recorder.child.kill().expect("SIGKILL");
    let status = recorder.child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    for p in publishers {
        p.stop().await;
    }
    let files = ts_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}\n{}", recorder.log_text());
    for name in files.keys() {
        check_recording(&dir.join(name), &clip, true, 2.0);
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM: exit 0, one summary line per stream, complete files
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_every_file_and_prints_summaries() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("sigterm");
    let room = Some("termroom");
    let mut web = source_config(&url, "t2", room);
    web.mode = PublisherMode::DataChannelFirst;
    let publishers = [
        Publisher::start(source_config(&url, "t1", room)),
        Publisher::start(web),
    ];
    let recorder = Process::start(&recorder_args(
        &url,
        &dir,
        &["--room", "termroom", "--record-room"],
    ));
    wait_for_files(&dir, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    recorder.signal("-TERM");
    let (status, stdout, log) = recorder.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}\n{log}");
    for p in publishers {
        p.stop().await;
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one summary line per stream:\n{stdout}");
    let files = ts_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for id in ["t1", "t2"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id}: ")))
            .unwrap_or_else(|| panic!("no summary line for {id}:\n{stdout}"));
        let name = files
            .keys()
            .find(|n| parse_name(n, "termroom").is_some_and(|(i, _)| i == id))
            .unwrap_or_else(|| panic!("no file for {id}: {files:?}"));
        assert!(line.contains(name.as_str()), "{line}");
        assert!(line.contains(" frames ("), "{line}");
        check_recording(&dir.join(name), &clip, false, MIN_SECONDS);
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 6. A publisher that vanishes without bye
// ---------------------------------------------------------------------------------------------

/// A test publisher on its own runtime (own threads), so it can be made to vanish: shutting the
/// runtime down drops every task of it at once — no bye, no close, no more packets.
pub(crate) struct Vanishing {
    runtime: tokio::runtime::Runtime,
    _stop: watch::Sender<bool>,
    _source: TestSource,
}

impl Vanishing {
    pub(crate) fn start(cfg: TestSourceConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, rx) = watch::channel(false);
        let source = {
            let _guard = runtime.enter();
            testsrc::spawn(cfg, rx).expect("valid config")
        };
        Vanishing {
            runtime,
            _stop: stop,
            _source: source,
        }
    }

    pub(crate) fn vanish(self) {
        self.runtime.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_publisher_is_noticed_and_the_others_keep_recording() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("vanish");
    let room = Some("vanishroom");
    let stays = Publisher::start(source_config(&url, "stays", room));
    let gone = Vanishing::start(source_config(&url, "gone", room));
    let recorder = Process::start(&recorder_args(
        &url,
        &dir,
        &["--room", "vanishroom", "--record-room"],
    ));
    wait_for_files(&dir, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vanished_at = Instant::now();
    gone.vanish();
    let finished = |l: &str| l.contains("recording finished") && l.contains("gone: ");
    while !recorder.log_contains(finished) {
        assert!(
            vanished_at.elapsed() < Duration::from_secs(30),
            "the recorder did not notice the vanished publisher within 30 s:\n{}",
            recorder.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let noticed = vanished_at.elapsed();
    eprintln!("vanished publisher noticed after {noticed:?}");
    // The other recording goes on.
    let stays_name = wait_for_file(&dir, |n| n.contains("_stays_")).await;
    let before = ts_files(&dir)[&stays_name];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ts_files(&dir)[&stays_name];
    assert!(
        after > before + 20_000,
        "the remaining recording stalled: {before} → {after} bytes"
    );
    recorder.signal("-TERM");
    let (status, stdout, log) = recorder.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{log}");
    stays.stop().await;
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let files = ts_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for name in files.keys() {
        check_recording(&dir.join(name), &clip, false, MIN_SECONDS);
    }
    drop(server);
}

/// Without a room in the official dialect the server tells no one that a publisher's socket
/// closed, so only the peer connection can notice (ICE consent fails, then the recorder's
/// vanish grace): the bound must hold on that path too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_single_stream_is_noticed_by_its_peer_connection() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("vanish-single");
    let mut cfg = source_config(&url, "solo", None);
    cfg.dialect = Some(Dialect::Official);
    let gone = Vanishing::start(cfg);
    let recorder = Process::start(&recorder_args(
        &url,
        &dir,
        &["--dialect", "official", "--record", "solo"],
    ));
    wait_for_files(&dir, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vanished_at = Instant::now();
    gone.vanish();
    let finished = |l: &str| l.contains("recording finished") && l.contains("solo: ");
    while !recorder.log_contains(finished) {
        assert!(
            vanished_at.elapsed() < Duration::from_secs(30),
            "the recorder did not notice the vanished publisher within 30 s:\n{}",
            recorder.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "vanished single stream noticed after {:?}",
        vanished_at.elapsed()
    );
    recorder.signal("-TERM");
    let (status, stdout, log) = recorder.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{log}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let files = ts_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    for name in files.keys() {
        check_recording(&dir.join(name), &clip, false, MIN_SECONDS);
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 7. Hostile stream IDs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stream_ids_become_safe_names_inside_the_folder() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let parent = TestDir::new("hostile");
    let dir = parent.join("out");
    let room = Some("hostile");
    // The signalling layer carries at most MAX_ID_CHARS (128) characters per id: a 300-character
    // stream ID is refused before anything is sent (and dropped by the recorder's parser if
    // some other client sends it); the longest that gets through is tested instead. Like the
    // web app, a publisher cuts its stream ID to 44 characters (MAX_STREAM_ID_CHARS) before
    // adding the hash suffix, with or without a password; the file name keeps those 44
    // (sanitized names are cut at MAX_COMPONENT = 64, see record::naming's tests).
    let long = "L".repeat(300);
    assert!(matches!(
        testsrc::spawn(source_config(&url, &long, room), watch::channel(false).1),
        Err(TestSourceError::BadStreamId(_))
    ));
    let longest = "L".repeat(ninjarec::signaling::message::MAX_ID_CHARS - 8);
    let ids = ["../../x", "a/b", "nul\0id", longest.as_str()];
    let mut publishers: Vec<Publisher> = ids
        .iter()
        .map(|id| Publisher::start(source_config(&url, id, room)))
        .collect();
    let unhashed = "U".repeat(ninjarec::signaling::message::MAX_ID_CHARS);
    let mut cfg = source_config(&url, &unhashed, Some("hostile-nopw"));
    cfg.password = Password::Disabled;
    publishers.push(Publisher::start(cfg));
    let recorders = [
        InProcess::start(&recorder_args(
            &url,
            &dir,
            &["--room", "hostile", "--record-room"],
        )),
        InProcess::start(&recorder_args(
            &url,
            &dir,
            &[
                "--room",
                "hostile-nopw",
                "--record-room",
                "--password",
                "false",
            ],
        )),
    ];
    wait_for_files(&dir, ids.len() + 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut summaries = Vec::new();
    for r in recorders {
        summaries.extend(r.stop().await);
    }
    for p in publishers {
        p.stop().await;
    }
    // Nothing was created outside the output folder…
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["out"], "files beside the output folder");
    // …and inside it only plain, safe names, one per publisher.
    let listing: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(
                e.file_type().unwrap().is_file(),
                "{e:?} is not a plain file"
            );
            e.file_name().into_string().unwrap()
        })
        .collect();
    // One recording per publisher (the hostile IDs and the unhashed one), and each of the
    // two recorders' room timeline.
    assert_eq!(listing.len(), ids.len() + 3, "{listing:?}");
    for name in &listing {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "{name:?}"
        );
        assert!(!name.starts_with('.') && name.len() < 255, "{name:?}");
        if !name.ends_with(".timeline.jsonl") {
            check_recording(&dir.join(name), &clip, false, 1.5);
        }
    }
    assert_eq!(
        listing
            .iter()
            .filter(|n| n.ends_with(".timeline.jsonl"))
            .count(),
        2,
        "{listing:?}"
    );
    let cut = |id: &str| -> String { id.chars().take(MAX_STREAM_ID_CHARS).collect() };
    for id in ["../../x", "a/b", "nul\0id", &cut(&longest), &cut(&unhashed)] {
        let s = summary_of(&summaries, id);
        let path = s.path.as_ref().unwrap();
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().unwrap().to_str().unwrap();
        let expected = format!("_{}_", sanitize_component(id));
        assert!(name.contains(&expected), "{name} for {id:?}");
    }
    const { assert!(MAX_STREAM_ID_CHARS <= MAX_COMPONENT) };
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// 8. ninjarec selftest
// ---------------------------------------------------------------------------------------------

#[test]
fn selftest_process_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ninjarec"))
        .args(["selftest", "--seconds", "3"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("ninjarec runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "selftest failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("PASS"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// 8. Matroska (issue 10): `kill -9` ten times, and a clean close
// ---------------------------------------------------------------------------------------------

/// The files in `dir` with extension `ext`, by name, with their sizes.
pub(crate) fn files_with(dir: &Path, ext: &str) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            name.ends_with(&format!(".{ext}"))
                .then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .collect()
}

/// Times (s) of the first and last video packets ffprobe reads from a file.
pub(crate) fn video_span(path: &Path) -> (f64, f64, usize) {
    let (out, _) = crate::support::ffmpeg::run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    // Packets with side data print a trailing comma (and a blank line): keep their time too.
    let times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (first, last, times.len())
}

/// `kill -9` at a random moment of a Matroska recording (the H.264 clip with `--container
/// mkv`), ten times: each file plays up to within one cluster of the kill. The recorded time
/// is measured from the moment the file appeared (its first keyframe) to the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_matroska_recordings_leaves_playable_files_ten_times() {
    let _heavy = crate::support::fixtures::heavy().await;
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("mkv-kill");
    let publisher = Publisher::start(source_config(&url, "mk", Some("mkvroom")));
    let mut rng = crate::support::sim::Rng::new(0x0009_4111);
    let mut shortfalls = Vec::new();
    for round in 0..10 {
        let sub = dir.join(format!("round{round}"));
        let recorder = Process::start(&recorder_args(
            &url,
            &sub,
            &["--room", "mkvroom", "--record-room", "--container", "mkv"],
        ));
        let deadline = Instant::now() + APPEAR_WITHIN;
        let appeared = loop {
            if files_with(&sub, "mkv").values().any(|&len| len > 0) {
                break Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no .mkv file\n{}",
                recorder.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(1500 + rng.below(2500))).await;
        let mut recorder = recorder;
        recorder.child.kill().expect("SIGKILL");
        let recorded = appeared.elapsed().as_secs_f64();
        recorder.child.wait().unwrap();
        let files = files_with(&sub, "mkv");
        assert_eq!(files.len(), 1, "round {round}: {files:?}");
        let path = sub.join(files.keys().next().unwrap());
        let (first, last, frames) = video_span(&path);
        let held = last - first;
        let streams = probe(&path);
        assert!(
            streams.iter().any(|s| s.starts_with("h264,"))
                && streams.iter().any(|s| s.starts_with("opus,48000,2,")),
            "round {round}: {streams:?}"
        );
        // A cut inside a block may leave ffmpeg a complaint about that last block only.
        let errors = decode_errors(&path);
        assert!(
            errors.lines().count() <= 3,
            "round {round}: ffmpeg reports:\n{errors}"
        );
        eprintln!(
            "round {round}: killed after {recorded:.2} s of file, it plays {held:.2} s \
             ({frames} frames)"
        );
        shortfalls.push(recorded - held);
    }
    publisher.stop().await;
    // The clip's keyframes (so clusters) come every second; the recorder writes at least
    // every 300 ms (on its 100 ms tick). A file holds all but the last cluster: short by at
    // most 1.4 s.
    for (round, short) in shortfalls.iter().enumerate() {
        assert!(
            *short <= 1.4,
            "round {round}: the file is {short:.2} s shorter than what was recorded"
        );
    }
    drop(server);
}

/// A clean stop (SIGTERM) of a Matroska recording: sizes, duration and cues are filled in,
/// ffmpeg decodes it without a message, and its frames are the clip's, bit for bit, like the
/// `.ts` recording of the same publisher made at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matroska_clean_close_has_duration_and_the_clips_frames() {
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("mkv-clean");
    let publisher = Publisher::start(source_config(&url, "mc", Some("mkvclean")));
    let mkv_dir = dir.join("mkv");
    let mkv = Process::start(&recorder_args(
        &url,
        &mkv_dir,
        &["--room", "mkvclean", "--record-room", "--container", "mkv"],
    ));
    let deadline = Instant::now() + APPEAR_WITHIN;
    while files_with(&mkv_dir, "mkv")
        .values()
        .all(|&len| len < 20_000)
    {
        assert!(Instant::now() < deadline, "no .mkv\n{}", mkv.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    mkv.signal("-TERM");
    let (status, _, log) = mkv.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "{log}");
    publisher.stop().await;
    let files = files_with(&mkv_dir, "mkv");
    assert_eq!(files.len(), 1, "{files:?}");
    let path = mkv_dir.join(files.keys().next().unwrap());
    let errors = decode_errors(&path);
    assert!(errors.is_empty(), "ffmpeg reports:\n{errors}");
    // The Duration element was patched in: ffprobe reads it without scanning.
    let duration = crate::support::ffmpeg::format_duration(&path);
    let (first, last, frames) = video_span(&path);
    // The file starts with the audio held while the first keyframe was awaited.
    let audio = crate::support::ffmpeg::packet_times(&path, "a");
    let start = audio.first().map_or(first, |&a| a.min(first));
    assert!(
        duration >= 4.0 && (duration - (last - start)).abs() < 0.2,
        "duration {duration} for audio from {start}, video {first}..{last}"
    );
    // Every frame is one of the clip's, in the clip's order (the clip loops).
    let clip = Clip::builtin();
    let clip_hashes =
        crate::support::ffmpeg::video_frame_hashes(&crate::support::ffmpeg::clip_path());
    let got = crate::support::ffmpeg::video_frame_hashes(&path);
    assert_eq!(got.len(), frames);
    let start = clip_hashes
        .iter()
        .position(|h| *h == got[0])
        .expect("the first frame is one of the clip's");
    for (i, h) in got.iter().enumerate() {
        assert_eq!(
            *h,
            clip_hashes[(start + i) % clip.video.len()],
            "frame {i} differs from the clip"
        );
    }
    drop(server);
}
