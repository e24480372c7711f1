//! The sync media and its checker, proven on files with known A/V offsets: the flash/beep
//! schedule, the Y4M/WAV writers, and `measure` on H.264+Opus MPEG-TS and VP8+Opus WebM files
//! that ffmpeg encodes with audio early, on time and late (and with a hole in the audio).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::sync::{GRID_FPS, Schedule, SyncReport, align, measure, write_wav, write_y4m};

/// A scratch directory removed on drop (also when the test panics).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ninjarec-sync-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs ffmpeg, failing the test with its stderr.
fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test media: one 10 s loop, 320x180 at 30 fps, 48 kHz stereo.
fn media(dir: &Scratch, seed: u64) -> (Schedule, PathBuf, PathBuf) {
    let schedule = Schedule::irregular(seed, 10.0);
    let (y4m, wav) = (dir.path("in.y4m"), dir.path("in.wav"));
    write_y4m(&y4m, &schedule, 320, 180, GRID_FPS).expect("write y4m");
    write_wav(&wav, &schedule, 48_000, 2).expect("write wav");
    (schedule, y4m, wav)
}

#[derive(Clone, Copy, Debug)]
enum Container {
    /// H.264 + Opus in MPEG-TS, as ninjarec records.
    Ts,
    /// VP8 + Opus in WebM (Matroska), as ninjarec will record. ffmpeg up to lavf 59.30 (Debian's
    /// 5.1) writes these with audio 6.5 ms early: it shifts every track by the Opus pre-skip
    /// instead of letting `CodecDelay` do it, and the reader subtracts `CodecDelay` again; the
    /// checker measures that (−6.4 ms), within the tolerance.
    Webm,
}

/// Encodes the test media with the audio `offset_ms` late (negative: early) and checks that
/// `measure` finds every onset, pairs them all and measures that offset.
fn check(container: Container, offset_ms: i32, audio_filter: Option<&str>) -> SyncReport {
    let name = format!(
        "{container:?}{offset_ms}{}",
        audio_filter.map_or("", |_| "gap")
    );
    let dir = Scratch::new(&name);
    let (schedule, y4m, wav) = media(&dir, 0x5eed + offset_ms.unsigned_abs() as u64);
    // Shift the audio input: ffmpeg would round a video shift to whole frames (50 ms at 30 fps
    // becomes 66.7 ms); negative audio times are shifted away by the muxer with everything else.
    let shift = format!("{:.3}", f64::from(offset_ms) / 1000.0);
    // A name the lavfi `movie` filter would misparse unless escaped.
    let out = dir.path(match container {
        Container::Ts => "out it's [a],b;c:d=e\\.ts",
        Container::Webm => "out it's [a],b;c:d=e\\.webm",
    });
    let mut args = vec!["-i", y4m.to_str().unwrap()];
    args.extend(["-itsoffset", &shift, "-i", wav.to_str().unwrap()]);
    args.extend(["-map", "0:v", "-map", "1:a"]);
    if let Some(f) = audio_filter {
        args.extend(["-af", f]);
    }
    match container {
        Container::Ts => args.extend([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
            "-f",
            "mpegts",
        ]),
        Container::Webm => args.extend([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
            "-f",
            "webm",
        ]),
    }
    args.push(out.to_str().unwrap());
    ffmpeg(&args);

    let report = measure(&out);
    eprintln!("{name}:\n{report}");
    let truth = f64::from(offset_ms);
    assert_eq!(
        report.flashes.len(),
        schedule.flashes.len(),
        "{name}: every flash of the loop found\n{report}"
    );
    assert!(
        report.unpaired_flashes.is_empty() && report.unpaired_beeps.is_empty(),
        "{name}: every flash paired, no stray beep\n{report}"
    );
    let median = report.median_ms().expect("pairs");
    assert!(
        (median - truth).abs() <= 10.0,
        "{name}: median {median:.1} ms, truth {truth} ms\n{report}"
    );
    for o in &report.offsets_ms {
        assert!(
            (o - truth).abs() <= 10.0,
            "{name}: offset {o:.1} ms, truth {truth} ms\n{report}"
        );
    }

    // Both sequences fit the schedule with nothing missing or doubled, and the loops start where
    // the media does: video time 0 is the first frame; the two origins differ by the offset.
    let v = align(&report.flashes, &schedule, 0.067).expect("flashes align");
    let a = align(&report.beeps, &schedule, 0.067).expect("beeps align");
    for (what, al, n) in [
        ("flashes", &v, report.flashes.len()),
        ("beeps", &a, report.beeps.len()),
    ] {
        assert!(
            al.matched == n
                && al.missing.is_empty()
                && al.duplicates.is_empty()
                && al.extra.is_empty(),
            "{name}: {what} fit the schedule: {al:?}\n{report}"
        );
    }
    assert!(
        (v.origin - report.video_start).abs() < 0.002,
        "{name}: flash schedule starts at the first frame: {v:?}\n{report}"
    );
    let origins_ms = (a.origin - v.origin) * 1000.0;
    assert!(
        (origins_ms - truth).abs() <= 10.0,
        "{name}: schedule origins {origins_ms:.1} ms apart, truth {truth}\n{report}"
    );
    eprintln!(
        "{name}: beep schedule origin - first audio sample = {:.2} ms (decoder delay left in file)",
        (a.origin - report.audio_start) * 1000.0
    );
    report
}

#[test]
fn schedule_is_irregular_on_the_frame_grid_and_deterministic() {
    for period in [2.1, 10.0, 13.8, 15.0, 20.0, 60.0] {
        for seed in 0..20 {
            let s = Schedule::irregular(seed, period);
            assert_eq!(s, Schedule::irregular(seed, period), "deterministic");
            assert_eq!(s.period, period);
            assert!(s.flashes.len() >= 3, "{s:?}");
            let iv = s.intervals();
            let total: f64 = iv.iter().sum();
            assert!(
                (total - period).abs() < 1e-9,
                "intervals fill the loop: {s:?}"
            );
            for (i, a) in iv.iter().enumerate() {
                assert!(*a >= 0.6 - 1e-9, "interval {a} too short: {s:?}");
                for b in &iv[i + 1..] {
                    assert!(
                        (a - b).abs() >= 0.1 - 1e-9,
                        "intervals {a} and {b} alike: {s:?}"
                    );
                }
            }
            for f in &s.flashes {
                let frames = f * f64::from(GRID_FPS);
                assert!(
                    (frames - frames.round()).abs() < 1e-9,
                    "{f} off the frame grid"
                );
                let samples = f * 48_000.0;
                assert!(
                    (samples - samples.round()).abs() < 1e-6,
                    "{f} off the sample grid"
                );
                assert!(
                    *f >= 0.0 && f + s.flash_len <= period,
                    "{f} outside the loop"
                );
            }
            let parsed: Vec<f64> = s.as_arg().split(',').map(|x| x.parse().unwrap()).collect();
            assert_eq!(parsed, s.flashes, "as_arg round-trips");
        }
    }
    assert_ne!(
        Schedule::irregular(1, 10.0),
        Schedule::irregular(2, 10.0),
        "the seed matters"
    );
}

#[test]
fn writers_put_onsets_on_the_exact_frame_and_sample() {
    let dir = Scratch::new("writers");
    let (schedule, y4m, wav) = media(&dir, 7);

    let bytes = fs::read(&y4m).unwrap();
    let header = b"YUV4MPEG2 W320 H180 F30:1 Ip A1:1 C420jpeg\n";
    assert!(bytes.starts_with(header));
    let frame = 6 + 320 * 180 * 3 / 2;
    assert_eq!(
        bytes.len(),
        header.len() + 300 * frame,
        "exactly one 10 s loop"
    );
    let lit: Vec<usize> = (0..300)
        .filter(|i| bytes[header.len() + i * frame + 6] > 128)
        .collect();
    let want: Vec<usize> = schedule
        .flashes
        .iter()
        .flat_map(|f| {
            let first = (f * 30.0).round() as usize;
            first..first + 3
        })
        .collect();
    assert_eq!(lit, want, "three white frames from each onset");

    let bytes = fs::read(&wav).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(
        bytes.len(),
        44 + 480_000 * 4,
        "exactly one 10 s loop, stereo s16"
    );
    let sample = |i: usize| i16::from_le_bytes([bytes[44 + i * 4], bytes[45 + i * 4]]);
    for f in &schedule.flashes {
        let first = (f * 48_000.0).round() as usize;
        assert_eq!(sample(first - 1), 0, "silence before the beep at {f}");
        assert_eq!(sample(first), 0, "sine starts at phase 0 at {f}");
        assert!(
            sample(first + 12) > 22_000,
            "peak a quarter period in at {f}"
        );
        assert!(
            sample(first + 4799) != 0 && sample(first + 4800) == 0,
            "0.1 s beep at {f}"
        );
    }
}

#[test]
fn ts_in_sync() {
    check(Container::Ts, 0, None);
}

#[test]
fn ts_audio_80ms_late() {
    check(Container::Ts, 80, None);
}

#[test]
fn ts_audio_50ms_early() {
    check(Container::Ts, -50, None);
}

#[test]
fn webm_in_sync() {
    check(Container::Webm, 0, None);
}

#[test]
fn webm_audio_80ms_late() {
    check(Container::Webm, 80, None);
}

#[test]
fn webm_audio_50ms_early() {
    check(Container::Webm, -50, None);
}

/// A hole in the audio (frames dropped with their timestamps kept, as after packet loss) must not
/// shift the beeps after it: samples are timed by their own frames.
#[test]
fn ts_audio_gap_keeps_later_beeps_in_place() {
    // The schedule of `check`'s seed for offset 0; the hole goes between two beeps.
    let schedule = Schedule::irregular(0x5eed, 10.0);
    let (i, _) = schedule
        .intervals()
        .iter()
        .enumerate()
        .take(schedule.flashes.len() - 1)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    let (from, to) = (schedule.flashes[i] + 0.2, schedule.flashes[i + 1] - 0.1);
    let filter = format!("aselect='not(between(t,{from},{to}))'");
    let report = check(Container::Ts, 0, Some(&filter));
    let hole: f64 = report.audio_gaps.iter().map(|g| g.1).sum();
    assert!(
        report.audio_gaps.len() == 1 && (hole - (to - from)).abs() < 0.05,
        "one hole of about {:.0} ms\n{report}",
        (to - from) * 1000.0
    );
}

#[test]
fn align_reports_missing_duplicate_extra_and_drift() {
    let s = Schedule::irregular(3, 10.0);
    let origin = 1.4;
    // Three loops, drifting 1 ms per onset (Chromium's capture falling behind, say).
    let mut onsets: Vec<f64> = (0..3)
        .flat_map(|l| {
            s.flashes
                .iter()
                .map(move |f| origin + f64::from(l) * 10.0 + f)
        })
        .enumerate()
        .map(|(i, t)| t + i as f64 * 0.001)
        .collect();
    let n = onsets.len();
    let clean = align(&onsets, &s, 0.067).unwrap();
    assert_eq!(clean.matched, n);
    assert!(clean.missing.is_empty() && clean.duplicates.is_empty() && clean.extra.is_empty());
    assert!((clean.origin - origin).abs() < 0.002, "{clean:?}");
    assert!((clean.drift_ms - (n - 1) as f64).abs() < 1.5, "{clean:?}");
    assert!(clean.worst_residual_ms < 1.5, "{clean:?}");

    // Starting mid-loop: the origin is that of the loop the first onset belongs to.
    let late = align(&onsets[2..], &s, 0.067).unwrap();
    assert!((late.origin - origin).abs() < 0.005, "{late:?}");

    let missing = onsets.remove(n / 2);
    let dup = onsets[3] + 0.01;
    onsets.insert(4, dup);
    let extra = onsets[6] + 0.3;
    onsets.insert(7, extra);
    let a = align(&onsets, &s, 0.067).unwrap();
    assert_eq!(a.matched, n - 1, "{a:?}");
    assert_eq!(a.duplicates, vec![dup], "{a:?}");
    assert_eq!(a.extra, vec![extra], "{a:?}");
    assert_eq!(a.missing.len(), 1, "{a:?}");
    assert!((a.missing[0] - missing).abs() < 0.05, "{a:?} vs {missing}");

    // A whole-loop shift is invisible to pairing but not to the origin.
    let shifted: Vec<f64> = onsets.iter().map(|t| t + 10.0).collect();
    let b = align(&shifted, &s, 0.067).unwrap();
    assert!((b.origin - a.origin - 10.0).abs() < 0.002, "{b:?}");
    assert!(align(&[], &s, 0.067).is_none());
}

#[test]
fn measure_reports_unmeasurable_files_clearly() {
    let dir = Scratch::new("odd");
    let junk = dir.path("junk.ts");
    fs::write(&junk, b"not a media file").unwrap();
    let err = crate::support::sync::try_measure(&junk).unwrap_err();
    assert!(!format!("{err:#}").is_empty());
    // Video only: no audio stream to measure against.
    let v = dir.path("video only.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x90:rate=30:d=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        v.to_str().unwrap(),
    ]);
    let err = crate::support::sync::try_measure(&v).unwrap_err();
    assert!(format!("{err:#}").contains("no audio stream"), "{err:#}");
    let missing = crate::support::sync::try_measure(Path::new("/nonexistent/x.ts"));
    assert!(missing.is_err());
}
