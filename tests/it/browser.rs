//! End to end with a real browser (issues 9 and 10): headless Chromium publishes flash/beep
//! media from files (a white frame flashes exactly when a beep starts, at irregular intervals)
//! as H.264, VP8, VP9 or AV1 (what the recorder's `--codec` asks for) and Opus into a room through our handshake server, speaking the official dialect with the
//! default password (hashing and encryption on); the first offer carries only the data
//! channel and the media is renegotiated over it, like the VDO.Ninja web app. The server
//! speaks only the official dialect (like wss.vdo.ninja), on 127.0.0.1: the recorder runs with
//! `--dialect auto` and must find that out from the server's replies.
//!
//! What is checked, from the browser's own `getStats()` and the decoded file: every frame
//! received after the first keyframe is written (nothing dropped, nothing refused), the file
//! starts within 1 s of the browser's media start, audio starts no later than 50 ms after
//! video, ffmpeg decodes it without a message, and every flash/beep pair in the file keeps the
//! A/V relation of the same pair in the browser's own recording of its local stream
//! (Chromium's fake devices drift by themselves, so that recording is the reference; when the
//! browser's capture stalls on a loaded machine, the pairs after the stall may shift by the
//! stall's length, which its own recording shows as gaps; a flash its own recording has without
//! the beep is no reference, and the file's pair there is not compared).
//!
//! `NINJAREC_BROWSER_SECONDS` sets the H.264 recording length (default 60; the other codecs
//! record 30 s) and
//! `NINJAREC_BROWSER_PERIOD` the media's loop (default 12 s). Chromium's fake devices restart
//! their files out of step at every loop (audio moves about 25 ms against video each time, in
//! the browser's own recording too), so the 10-minute run of the issue uses a 60 s loop to keep
//! the offsets within the checker's pairing window: `NINJAREC_BROWSER_SECONDS=600
//! NINJAREC_BROWSER_PERIOD=60`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ninjarec::signaling::Dialect;
use ninjarec::signaling::server::ServerConfig;

use crate::support::chromium::{BrowserPublisher, BrowserPublisherConfig, BrowserStats};
use crate::support::ffmpeg::{decode_errors, probe, start_times};
use crate::support::fixtures::{InProcess, TestDir, TestServer, heavy, recorder_args};
use crate::support::sync::{Schedule, SyncReport, measure, median, write_wav, write_y4m};

/// How long the recorder runs.
fn seconds() -> u64 {
    std::env::var("NINJAREC_BROWSER_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_h264_is_recorded_whole_and_in_sync() {
    record_from_chromium(Codec::H264, seconds()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_vp8_is_recorded_whole_and_in_sync() {
    record_from_chromium(Codec::Vp8, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_vp9_is_recorded_whole_and_in_sync() {
    record_from_chromium(Codec::Vp9, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_av1_is_recorded_whole_and_in_sync() {
    record_from_chromium(Codec::Av1, 30).await;
}

/// A video codec the browser is asked for, and how each side names it.
#[derive(Debug, Clone, Copy)]
enum Codec {
    H264,
    Vp8,
    Vp9,
    Av1,
}

impl Codec {
    /// `--codec` value (and `preferVideoCodec`).
    fn flag(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Vp8 => "vp8",
            Codec::Vp9 => "vp9",
            Codec::Av1 => "av1",
        }
    }
    /// The browser's `getStats()` MIME type.
    fn mime(self) -> &'static str {
        match self {
            Codec::H264 => "video/H264",
            Codec::Vp8 => "video/VP8",
            Codec::Vp9 => "video/VP9",
            Codec::Av1 => "video/AV1",
        }
    }
    /// The file's extension with `--container auto`.
    fn extension(self) -> &'static str {
        match self {
            Codec::H264 => "ts",
            Codec::Vp8 | Codec::Vp9 => "webm",
            Codec::Av1 => "mkv",
        }
    }
}

/// Chromium publishes `codec` + Opus for `secs` seconds; the recording is checked as the
/// module doc says.
async fn record_from_chromium(codec: Codec, secs: u64) {
    let _heavy = heavy().await;
    let dir = TestDir::new(&format!("browser-{}", codec.flag()));
    let mut server_cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    server_cfg.official_only = true;
    let server = TestServer::start_with(server_cfg).await;
    let (room, stream) = ("browserroom", "chromecam");

    let period = std::env::var("NINJAREC_BROWSER_PERIOD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12.0);
    let schedule = Schedule::irregular(9, period);
    let (y4m, wav) = (dir.join("media.y4m"), dir.join("media.wav"));
    write_y4m(&y4m, &schedule, 320, 180, 30).unwrap();
    write_wav(&wav, &schedule, 48_000, 2).unwrap();
    let mut cfg = BrowserPublisherConfig::new(&server.url, stream);
    cfg.room = Some(room.to_owned());
    cfg.password = None; // the VDO.Ninja default password: hashed ids, encrypted SDP/ICE
    cfg.dialect = Dialect::Official;
    cfg.video_file = Some(y4m);
    cfg.audio_file = Some(wav);
    let browser = BrowserPublisher::start(cfg);
    let selftest = browser
        .expect_event("selftest", Duration::from_secs(60))
        .await;
    assert_eq!(
        selftest.json["ok"], true,
        "WebCrypto vs §3: {}",
        selftest.json
    );
    browser.expect_event("ready", Duration::from_secs(30)).await;

    // The recorder from real flags, `--dialect auto` (the default) on a 127.0.0.1 server.
    let recorder = InProcess::start(&recorder_args(
        &server.url,
        &dir,
        &["--room", room, "--record-room", "--codec", codec.flag()],
    ));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let stopped_at_ms = unix_ms();
    let summaries = recorder.stop().await;

    // The recorder said bye: the page writes the peer's last stats line before closing it.
    let mut finals: Vec<BrowserStats> = Vec::new();
    for _ in 0..150 {
        finals = browser.final_stats();
        if !finals.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let context = format!(
        "summaries: {summaries:#?}\npage events:\n{}",
        browser.events_text()
    );
    assert!(browser.errors().is_empty(), "page errors\n{context}");
    assert_eq!(
        finals.len(),
        1,
        "one viewer, one final stats line\n{context}"
    );
    let video = finals[0].video.clone().expect("video was sent");
    let audio = finals[0].audio.clone().expect("audio was sent");
    assert_eq!(
        video.mime_type,
        codec.mime(),
        "preferVideoCodec {}\n{context}",
        codec.flag()
    );
    assert_eq!(audio.mime_type, "audio/opus");
    for event in [
        "offer-sent",
        "answer",
        "renegotiation-offer",
        "renegotiated",
    ] {
        let e = browser
            .event(event)
            .unwrap_or_else(|| panic!("no `{event}` event\n{context}"));
        assert_eq!(
            e.json["encrypted"], true,
            "{event} not encrypted\n{context}"
        );
    }
    let media_start_ms = browser.media_start().expect("media-start event");

    let recorded: Vec<_> = summaries.iter().filter(|s| s.path.is_some()).collect();
    assert_eq!(recorded.len(), 1, "{context}");
    let summary = recorded[0];
    assert_eq!(summary.stream_id, stream);
    let core = &summary.core;
    let path = summary.path.clone().unwrap();
    assert_eq!(
        path.extension().and_then(|e| e.to_str()),
        Some(codec.extension()),
        "{}",
        path.display()
    );
    eprintln!(
        "chromium {}: {} frames encoded ({} keyframes, {}x{} {}), {} video packets, {} PLIs, {} \
         audio packets; recorder: {summary}",
        codec.flag(),
        video.frames_encoded,
        video.key_frames_encoded,
        video.frame_width,
        video.frame_height,
        video.encoder_implementation,
        video.packets_sent,
        video.pli_count,
        audio.packets_sent,
    );

    // The file: the codec + Opus 48 kHz stereo, one packet per frame written, decodes clean.
    let streams = probe(&path);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        streams[0].starts_with(&format!("{},", codec.flag())),
        "{streams:?}"
    );
    assert_eq!(
        streams[0]
            .rsplit(',')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        core.frames_written,
        "{streams:?}"
    );
    assert!(streams[1].starts_with("opus,48000,2,"), "{streams:?}");
    let errors = decode_errors(&path);
    assert!(errors.is_empty(), "ffmpeg decode errors:\n{errors}");

    // Every frame received after the first keyframe is written; nothing refused anywhere.
    assert_eq!(core.packets_lost, 0, "{summary}");
    assert_eq!(core.frames_dropped, 0, "frames dropped: {summary}");
    assert_eq!(core.units_refused, 0, "units refused: {summary}");
    assert_eq!(
        core.frames_written,
        core.frames_received - core.frames_before_keyframe,
        "{summary}"
    );
    assert!(
        core.frames_written * 100 >= video.frames_encoded * 98,
        "recorded {} of {} frames the browser encoded: {summary}",
        core.frames_written,
        video.frames_encoded
    );
    assert!(
        core.audio_written * 100 >= audio.packets_sent * 97,
        "recorded {} of {} audio packets: {summary}",
        core.audio_written,
        audio.packets_sent
    );

    // The start: the file covers the publisher's media from at most 1 s after it started
    // (what is missing at the start shows as a shorter file), and audio starts with video.
    let (v0, a0) = start_times(&path);
    let (v0, a0) = (v0.expect("video start"), a0.expect("audio start"));
    let late_audio_ms = (a0 - v0) * 1000.0;
    assert!(
        late_audio_ms <= 50.0,
        "audio starts {late_audio_ms:.1} ms after video"
    );
    let sent_s = stopped_at_ms.saturating_sub(media_start_ms) as f64 / 1000.0;
    let file_s = core.duration_90k as f64 / 90_000.0;
    assert!(
        file_s >= sent_s - 1.0,
        "the file holds {file_s:.2} s of the {sent_s:.2} s the browser sent: its start is \
         missing"
    );

    // Sync: the file's flash/beep offsets against the browser's own.
    let sync = measure(&path);
    eprintln!("file sync: {sync}");
    eprintln!(
        "file pairs (flash s, offset ms): {:?}",
        sync.pairs
            .iter()
            .zip(&sync.offsets_ms)
            .map(|(p, o)| (p.0, *o))
            .collect::<Vec<_>>()
    );
    let (stray_flashes, stray_beeps) = sync.strays();
    assert!(
        stray_flashes.is_empty() && stray_beeps.is_empty(),
        "unpaired flashes {stray_flashes:?} / beeps {stray_beeps:?}: {sync}"
    );
    let expected_pairs = (file_s / schedule.period * schedule.flashes.len() as f64) as usize;
    assert!(
        sync.offsets_ms.len() + 2 >= expected_pairs,
        "{} flash/beep pairs in {file_s:.1} s, expected about {expected_pairs}: {sync}",
        sync.offsets_ms.len()
    );
    let (local, stalled_ms) = local_sync(&browser, &dir).await;
    let matched = match_pairs(&sync, &local);
    // A flash the browser's own recording has without its beep (its capture stalled or its
    // audio lost the beep: seen under heavy load, with dozens of holes in its audio) is no
    // reference for the file's pair at that flash; each such flash may leave one pair
    // unmatched, but at least half of the file's pairs must be matched.
    let (local_lone_flashes, _) = local.strays();
    if !local_lone_flashes.is_empty() {
        eprintln!(
            "the browser's own recording has {} flashes without their beep: {:?}",
            local_lone_flashes.len(),
            local_lone_flashes
        );
    }
    assert!(
        matched.len() + 2 + local_lone_flashes.len() >= sync.offsets_ms.len()
            && matched.len() * 2 >= sync.offsets_ms.len(),
        "only {} of the file's {} pairs found in the browser's recording (which has {} flashes \
         without their beep)",
        matched.len(),
        sync.offsets_ms.len(),
        local_lone_flashes.len()
    );
    let diffs: Vec<f64> = matched.iter().map(|(f, l)| f - l).collect();
    let med = median(&diffs).unwrap();
    let spread = diffs.iter().fold(0.0f64, |w, d| w.max((d - med).abs()));
    eprintln!(
        "file vs the browser's own recording, pair by pair: median {med:+.1} ms, every pair \
         within {spread:.1} ms of it ({} pairs)",
        diffs.len()
    );
    // The recording keeps the browser's A/V relation pair for pair: its fake devices' drift
    // (25 ms steps at every loop of the media) shows identically in both, so every pair's
    // difference is the same constant. Except across a capture stall of the browser (a loaded
    // machine): its own recording then has a gap in both tracks, while the audio it sends
    // stays a gapless sample count, so what it sends after the stall is shifted by up to the
    // stall's length, and no receiver can tell. Only that much is allowed on top (a 10 ms
    // hole in its audio was seen to move the pairs after it by 10 ms).
    if stalled_ms > 0.0 {
        eprintln!(
            "the browser's capture stalled for {stalled_ms:.0} ms in all (gaps in its own \
             recording): pairs after it may shift by that much"
        );
    }
    assert!(
        spread <= 10.0 + stalled_ms,
        "pairs differ by up to {spread:.1} ms from the median: {sync}"
    );
    // That constant is Chromium's, not ours: its MediaRecorder stamps audio later than its
    // RTP sender does (measured: 40 ± 1 ms on Chromium 156). The recorder's own A/V
    // placement is checked against a publisher whose clock is the truth in `gst.rs`.
    assert!(
        (-60.0 - stalled_ms..=stalled_ms).contains(&med),
        "median {med:+.1} ms against the browser's own recording"
    );

    drop(browser);
}

/// The browser's own A/V offsets of its fake capture: its MediaRecorder recording of the local
/// stream (started with the page), measured with the same checker. Chromium's file-backed
/// fake devices run on separate clocks, so this reference is what the recording must
/// reproduce, not zero. Also returns how long its capture stalled in all (ms; see
/// [`capture_stalls_ms`]).
async fn local_sync(browser: &BrowserPublisher, dir: &std::path::Path) -> (SyncReport, f64) {
    let value = tokio::task::block_in_place(|| {
        browser.evaluate("window.ninjarecLocalRecording()", Duration::from_secs(60))
    })
    .expect("the page hands over its local recording");
    let bytes = hex::decode(value.as_str().expect("a hex string")).expect("hex");
    let path = dir.join("browser-local.webm");
    std::fs::write(&path, bytes).unwrap();
    let sync = measure(&path);
    eprintln!("browser's local recording: {sync}");
    let stalled = capture_stalls_ms(&sync);
    (sync, stalled)
}

/// The time the browser's capture stalled, from its own recording (the checker's holes): every
/// hole in its video counts with what exceeds one frame interval, every hole in its audio whole.
fn capture_stalls_ms(local: &SyncReport) -> f64 {
    let video: f64 = local
        .video_gaps
        .iter()
        .map(|(_, len)| (len * 1000.0 - 1000.0 / 30.0).max(0.0))
        .sum();
    let audio: f64 = local.audio_gaps.iter().map(|(_, len)| len * 1000.0).sum();
    video + audio
}

/// The file's flash/beep pairs matched to the same flashes in the browser's recording (which
/// started earlier and runs on the capture clock, which drifts against the RTP clock by a few
/// ms per minute): the time shift that lines up the file's first flashes, then, flash by flash,
/// the local flash within 50 ms of where the last matched pair's shift puts it. Returns (file
/// offset, local offset) in ms.
fn match_pairs(file: &SyncReport, local: &SyncReport) -> Vec<(f64, f64)> {
    let local_pairs: Vec<(f64, f64)> = local
        .pairs
        .iter()
        .zip(&local.offsets_ms)
        .map(|(p, o)| (p.0, *o))
        .collect();
    let near = |t: f64| {
        local_pairs
            .iter()
            .find(|(lt, _)| (lt - t).abs() <= 0.05)
            .copied()
    };
    let file_pairs: Vec<(f64, f64)> = file
        .pairs
        .iter()
        .zip(&file.offsets_ms)
        .map(|(p, o)| (p.0, *o))
        .collect();
    let Some(&(first, _)) = file_pairs.first() else {
        return Vec::new();
    };
    // The flash pattern repeats every loop, so later loops line the first flashes up too, but
    // with fewer pairs (the file would run past the browser's recording): the most wins.
    let lined_up = |shift: f64| {
        file_pairs
            .iter()
            .take(8)
            .filter(|(t, _)| near(t + shift).is_some())
            .count()
    };
    let mut shift = local_pairs
        .iter()
        .map(|(lt, _)| lt - first)
        .max_by_key(|s| (lined_up(*s), -(s * 1000.0) as i64))
        .unwrap_or(0.0);
    let mut out = Vec::new();
    for (t, offset) in file_pairs {
        if let Some((lt, local_offset)) = near(t + shift) {
            shift = lt - t;
            out.push((offset, local_offset));
        }
    }
    out
}
