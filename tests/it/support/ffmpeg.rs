//! ffmpeg and ffprobe as checkers: every end-to-end test judges files with them, never with
//! our own reader alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes bytes to a per-test temporary file.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ninjarec-test-{}-{name}.ts", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs a tool that must succeed; returns its stdout and stderr.
pub fn run(cmd: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} cannot run ({e}): apt-get install ffmpeg"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `ffmpeg -v error -i f -f null -`: the decode errors (empty when the file is clean). Video
/// keeps the file's own timestamps (`-fps_mode passthrough`, encoder time base = the
/// demuxer's): a browser's frames are not evenly spaced (two 11 ms apart after a 56 ms gap
/// were seen), and ffmpeg's default conversion to a constant rate makes the null muxer
/// complain about the rounded timestamps, which says nothing about the file.
pub fn decode_errors(path: &Path) -> String {
    run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-fps_mode",
            "passthrough",
            "-enc_time_base:v",
            "-1",
            "-f",
            "null",
            "-",
        ],
    )
    .1
}

/// Per-stream facts as ffprobe reads them: `codec[,sample_rate,channels],packets`.
pub fn probe(path: &Path) -> Vec<String> {
    let (out, err) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,sample_rate,channels,nb_read_packets",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    assert!(err.is_empty(), "{err}");
    // ffprobe lists the program's streams, a blank line, then the streams: keep the latter.
    let streams = out.rsplit("\n\n").next().unwrap_or_default();
    streams.lines().map(str::to_owned).collect()
}

/// `size md5` of every decoded video frame, in decode order, one per frame decoded (no
/// duplicated or dropped frames, whatever the timestamps).
pub fn video_frame_hashes(path: &Path) -> Vec<String> {
    let (out, _) = run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-map",
            "0:v",
            "-fps_mode",
            "passthrough",
            "-f",
            "framemd5",
            "-",
        ],
    );
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split(',').map(str::trim).collect();
            format!("{} {}", cols[4], cols[5])
        })
        .collect()
}

/// The container's duration as ffprobe reads it (for Matroska: the patched Duration
/// element, without scanning the file).
pub fn format_duration(path: &Path) -> f64 {
    let (out, _) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("ffprobe duration of {}: {out:?} ({e})", path.display()))
}

/// The built-in clip as shipped (`assets/clip.ts`).
pub fn clip_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/clip.ts")
}

/// Start time (seconds) of the first video and the first audio stream, as ffprobe reads them.
pub fn start_times(path: &Path) -> (Option<f64>, Option<f64>) {
    let (out, _) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,start_time",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    let (mut video, mut audio) = (None, None);
    for line in out.lines() {
        let mut fields = line.split(',');
        let (Some(kind), Some(start)) = (fields.next(), fields.next()) else {
            continue;
        };
        let start = start.parse::<f64>().ok();
        match kind {
            "video" if video.is_none() => video = start,
            "audio" if audio.is_none() => audio = start,
            _ => {}
        }
    }
    (video, audio)
}

/// Presentation times (seconds) of every packet of the file's first `kind` stream (`v` or
/// `a`), sorted: what a player would show, for finding holes.
pub fn packet_times(path: &Path, kind: &str) -> Vec<f64> {
    let (out, _) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            &format!("{kind}:0"),
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    // Lines are `1.406500,` (and blank ones for side data).
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The longest gap between consecutive times and where it starts, in seconds (0 for fewer
/// than two times).
pub fn longest_gap(times: &[f64]) -> (f64, f64) {
    times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
}
