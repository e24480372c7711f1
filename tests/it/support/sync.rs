//! Flash/beep A/V sync media, and the checker that measures A/V sync in a recorded file.
//!
//! A publisher sends black video that turns white for [`Schedule::flash_len`] at each onset of a
//! [`Schedule`], and silent audio with a 1 kHz beep starting at the same instants. [`measure`]
//! finds the flash and beep onsets in a recording (MPEG-TS or Matroska/WebM, whatever ffmpeg
//! decodes) and pairs them: each pair's "audio minus video" offset is the A/V sync error a player
//! shows, end to end (capture, publisher encoders, network, our recorder, the container).
//!
//! The onsets are irregular ([`Schedule::irregular`]), so an error of a whole interval cannot pair
//! a flash with a neighbouring beep. An error of a whole loop period pairs perfectly and can only
//! be caught by comparing where the schedule starts in the file ([`align`]) with where the media
//! is known to start; that is why the loop is long (10–20 s).

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Frame rate the onsets are aligned to. Every onset is a whole number of 1/30 s, which is also a
/// whole number of 48 kHz samples (1600), so the video and audio writers agree exactly.
pub const GRID_FPS: u32 = 30;

/// Media time of the first onset of a loop, in tenths of a second: late enough that a publisher
/// that starts mid-loop or a recorder that drops the first frames still sees a clean onset.
const FIRST_ONSET_TENTHS: u32 = 5;

/// Shortest interval between onsets, in tenths of a second: longer than a flash plus the 200 ms of
/// silence [`measure`] wants before a beep, and longer than the ±0.5 s pairing window's half.
const MIN_INTERVAL_TENTHS: u32 = 6;

/// Peak amplitude of the beep (−3 dBFS): loud, without clipping after a lossy codec's overshoot.
const BEEP_AMPLITUDE: f64 = 0.7 * 32767.0;

/// Beep frequency (Hz): well inside every codec's passband, 1 ms period.
const BEEP_HZ: f64 = 1000.0;

/// Luma of the dark and bright frames (studio range, so no encoder clips them).
const DARK_Y: u8 = 16;
/// See [`DARK_Y`].
const BRIGHT_Y: u8 = 235;

/// Flashes and beeps pair when they are this close (seconds).
pub const PAIR_WINDOW: f64 = 0.5;

/// When the flash/beep onsets happen, in media time of one loop of the test media.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Onsets in seconds from the start of a loop, increasing, each on the 1/30 s grid.
    pub flashes: Vec<f64>,
    /// How long each flash (and beep) lasts, seconds (0.1 s: three frames at 30 fps).
    pub flash_len: f64,
    /// Length of one loop, seconds: the media repeats every `period` seconds (Chromium loops its
    /// fake-capture files; a GStreamer publisher must loop the same way), and so do the onsets.
    pub period: f64,
}

impl Schedule {
    /// Onsets at irregular intervals, deterministic from `seed`, looping every `period_s` seconds.
    ///
    /// The intervals (the wrap-around one from the last onset to the next loop's first included)
    /// are distinct multiples of 0.1 s from 0.6 s up (to 1.7 s for periods up to 13.8 s, longer
    /// ones use longer intervals), so no two differ by less than 100 ms and a shift by any whole
    /// interval makes every flash miss its beep. Every onset is on the 30 fps frame grid and on
    /// an exact 48 kHz sample. `period_s` must be a multiple of 0.1 s from 2.1 s to 60 s.
    pub fn irregular(seed: u64, period_s: f64) -> Schedule {
        let tenths = (period_s * 10.0).round();
        assert!(
            (period_s * 10.0 - tenths).abs() < 1e-6 && (21.0..=600.0).contains(&tenths),
            "Schedule::irregular: period {period_s} s must be a multiple of 0.1 s in 2.1..=60 s"
        );
        let target = tenths as u32;
        // The ladder of allowed intervals: 0.6 s, 0.7 s, ... up to 1.7 s or as far as needed.
        let mut max = 17;
        while (MIN_INTERVAL_TENTHS..=max).sum::<u32>() < target {
            max += 1;
        }
        let mut rng = XorShift::new(seed);
        for _ in 0..100_000 {
            let mut order: Vec<u32> = (MIN_INTERVAL_TENTHS..=max).collect();
            rng.shuffle(&mut order);
            // Greedy in random order, then close the remainder by lengthening one interval.
            let mut chosen = Vec::new();
            let mut sum = 0;
            for v in order {
                if sum + v <= target {
                    chosen.push(v);
                    sum += v;
                }
            }
            let rest = target - sum;
            if rest > 0 {
                let fix = (0..chosen.len())
                    .find(|&i| chosen[i] + rest <= max && !chosen.contains(&(chosen[i] + rest)));
                match fix {
                    Some(i) => chosen[i] += rest,
                    None => continue,
                }
            }
            if chosen.len() < 3 {
                continue;
            }
            let mut at = FIRST_ONSET_TENTHS;
            let mut flashes = Vec::with_capacity(chosen.len());
            for v in &chosen {
                flashes.push(f64::from(at) / 10.0);
                at += v;
            }
            return Schedule {
                flashes,
                flash_len: 0.1,
                period: f64::from(target) / 10.0,
            };
        }
        panic!("Schedule::irregular: no schedule found for seed {seed}, period {period_s} s");
    }

    /// The onsets as comma-separated seconds (`0.500000,1.700000,...`), for a publisher script
    /// (GStreamer) that must generate exactly the same media as [`write_y4m`]/[`write_wav`].
    pub fn as_arg(&self) -> String {
        let parts: Vec<String> = self.flashes.iter().map(|f| format!("{f:.6}")).collect();
        parts.join(",")
    }

    /// The intervals between consecutive onsets, the wrap-around one (last onset to the next
    /// loop's first) last: what makes the schedule irregular.
    pub fn intervals(&self) -> Vec<f64> {
        let n = self.flashes.len();
        (0..n)
            .map(|i| match self.flashes.get(i + 1) {
                Some(next) => next - self.flashes[i],
                None => self.period - self.flashes[i] + self.flashes[0],
            })
            .collect()
    }

    /// Whether unit `index` of a stream of `rate` units per second (frames or samples) falls in
    /// a flash, and if so how many units into it. A unit is lit when its start time is in
    /// `[onset, onset + flash_len)`; the small epsilon keeps grid-exact onsets on their unit.
    fn lit(&self, index: u64, rate: u32) -> Option<u64> {
        let unit = |t: f64| (t * f64::from(rate) - 1e-6).ceil().max(0.0) as u64;
        self.flashes.iter().find_map(|&f| {
            let (start, end) = (unit(f), unit(f + self.flash_len));
            (start..end).contains(&index).then(|| index - start)
        })
    }
}

/// Units (frames or samples) in one loop; the period must be a whole number of them.
fn units_per_loop(period: f64, rate: u32, what: &str) -> u64 {
    let n = period * f64::from(rate);
    assert!(
        rate > 0 && (n - n.round()).abs() < 1e-6,
        "{what}: a period of {period} s is not a whole number of units at {rate}/s"
    );
    n.round() as u64
}

/// Writes the video of `schedule` as a YUV4MPEG2 file for Chromium's
/// `--use-file-for-fake-video-capture` (or ffmpeg/GStreamer): exactly one loop (`period`
/// seconds, Chromium loops the file), black frames except white ones during each flash.
///
/// The header is `YUV4MPEG2 W.. H.. F<fps>:1 Ip A1:1 C420jpeg`, each frame `FRAME\n` plus planar
/// I420: Chromium's Y4M reader accepts only 4:2:0 (`C420`, `C420jpeg`, `C420mpeg2`,
/// `C420paldv`), an integer frame rate and no per-frame parameters, and reads fixed-size frames.
/// Keep it small (320x180 or 640x360, 10–20 s): Chromium reads it from disk every frame.
pub fn write_y4m(
    path: &Path,
    schedule: &Schedule,
    width: u32,
    height: u32,
    fps: u32,
) -> io::Result<()> {
    assert!(
        width > 0 && height > 0 && width.is_multiple_of(2) && height.is_multiple_of(2),
        "write_y4m: {width}x{height} must be even for 4:2:0"
    );
    let frames = units_per_loop(schedule.period, fps, "write_y4m");
    let luma = width as usize * height as usize;
    let frame = |y: u8| {
        let mut f = vec![y; luma];
        f.resize(luma + luma / 2, 128);
        f
    };
    let (dark, bright) = (frame(DARK_Y), frame(BRIGHT_Y));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    writeln!(
        out,
        "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg"
    )?;
    for i in 0..frames {
        out.write_all(b"FRAME\n")?;
        let lit = schedule.lit(i, fps).is_some();
        out.write_all(if lit { &bright } else { &dark })?;
    }
    out.flush()
}

/// Writes the audio of `schedule` as a 16-bit PCM WAV file for Chromium's
/// `--use-file-for-fake-audio-capture`: exactly one loop, silence except a 1 kHz sine at −3 dBFS
/// during each beep, starting (at phase 0) on the exact sample of the flash, same on every
/// channel. Chromium loops the file and resamples it to its capture rate if needed.
pub fn write_wav(
    path: &Path,
    schedule: &Schedule,
    sample_rate: u32,
    channels: u16,
) -> io::Result<()> {
    assert!(channels > 0, "write_wav: no channels");
    let samples = units_per_loop(schedule.period, sample_rate, "write_wav");
    let block = u32::from(channels) * 2;
    let data_len = u32::try_from(samples * u64::from(block))
        .ok()
        .filter(|n| *n < u32::MAX - 36)
        .expect("write_wav: too long for a WAV file");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    out.write_all(b"RIFF")?;
    out.write_all(&(36 + data_len).to_le_bytes())?;
    out.write_all(b"WAVEfmt ")?;
    out.write_all(&16u32.to_le_bytes())?;
    out.write_all(&1u16.to_le_bytes())?; // PCM
    out.write_all(&channels.to_le_bytes())?;
    out.write_all(&sample_rate.to_le_bytes())?;
    out.write_all(&(sample_rate * block).to_le_bytes())?;
    out.write_all(&(block as u16).to_le_bytes())?;
    out.write_all(&16u16.to_le_bytes())?;
    out.write_all(b"data")?;
    out.write_all(&data_len.to_le_bytes())?;
    for i in 0..samples {
        let v = match schedule.lit(i, sample_rate) {
            Some(n) => {
                let phase = std::f64::consts::TAU * BEEP_HZ * n as f64 / f64::from(sample_rate);
                (BEEP_AMPLITUDE * phase.sin()).round() as i16
            }
            None => 0,
        };
        for _ in 0..channels {
            out.write_all(&v.to_le_bytes())?;
        }
    }
    out.flush()
}

/// What [`measure`] found in a recording. All times are seconds in the file's own timeline (the
/// container timestamps ffmpeg reports, e.g. starting near 1.4 s in an MPEG-TS file).
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Flash onsets: the time of the first bright frame of each dark→bright transition.
    pub flashes: Vec<f64>,
    /// Per flash, seconds from the last dark frame to the first bright one: the flash began
    /// somewhere in that window, so a flash onset is late by up to this much (one frame interval,
    /// more where frames were dropped). Offsets are therefore accurate to about one frame.
    pub flash_uncertainty: Vec<f64>,
    /// Beep onsets: the first sample reaching 30% of the beep's peak after ≥ 200 ms of silence.
    pub beeps: Vec<f64>,
    /// Paired onsets `(flash, beep)`, in flash order: each flash with the nearest free beep
    /// within ±[`PAIR_WINDOW`].
    pub pairs: Vec<(f64, f64)>,
    /// Per pair, audio minus video in milliseconds: positive when the sound comes late.
    pub offsets_ms: Vec<f64>,
    /// Flashes with no beep within the window.
    pub unpaired_flashes: Vec<f64>,
    /// Beeps with no flash within the window.
    pub unpaired_beeps: Vec<f64>,
    /// Time of the first decoded video frame.
    pub video_start: f64,
    /// End of the last video frame (its time plus the median frame interval).
    pub video_end: f64,
    /// Time of the first decoded audio sample.
    pub audio_start: f64,
    /// End of the last decoded audio frame.
    pub audio_end: f64,
    /// From the earlier start to the later end, seconds.
    pub duration: f64,
    /// `(time, length)` of each hole in the video: consecutive frames more than 2.5 median frame
    /// intervals apart (`time` is the frame before the hole).
    pub video_gaps: Vec<(f64, f64)>,
    /// `(time, length)` of each hole in the audio: a frame starting more than 2 ms after the
    /// previous one ended (the decoded samples jump in time there).
    pub audio_gaps: Vec<(f64, f64)>,
    /// Anything odd the checker noticed (overlapping audio frames, onsets skipped because they
    /// follow a gap, too little contrast...): read these when an assertion fails.
    pub warnings: Vec<String>,
}

impl SyncReport {
    /// The median audio-minus-video offset (ms), or `None` without pairs: the A/V sync a viewer
    /// perceives, robust to one odd pair.
    pub fn median_ms(&self) -> Option<f64> {
        median(&self.offsets_ms)
    }

    /// The largest offset (ms) by absolute value, sign kept, or `None` without pairs: whether sync
    /// holds everywhere, not just on average.
    pub fn worst_ms(&self) -> Option<f64> {
        self.offsets_ms
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
    }

    /// The report restricted to onsets at or after `t` (file time; a pair goes by its flash):
    /// to judge sync after a warm-up, a reconnect or a publisher change.
    pub fn since(&self, t: f64) -> SyncReport {
        let keep = |v: &[f64]| v.iter().copied().filter(|x| *x >= t).collect::<Vec<_>>();
        let (flashes, flash_uncertainty) = self
            .flashes
            .iter()
            .zip(&self.flash_uncertainty)
            .filter(|(f, _)| **f >= t)
            .map(|(f, u)| (*f, *u))
            .unzip();
        let (pairs, offsets_ms) = self
            .pairs
            .iter()
            .zip(&self.offsets_ms)
            .filter(|(p, _)| p.0 >= t)
            .map(|(p, o)| (*p, *o))
            .unzip();
        SyncReport {
            flashes,
            flash_uncertainty,
            beeps: keep(&self.beeps),
            pairs,
            offsets_ms,
            unpaired_flashes: keep(&self.unpaired_flashes),
            unpaired_beeps: keep(&self.unpaired_beeps),
            ..self.clone()
        }
    }

    /// The unpaired onsets that point at a real problem: `(flashes, beeps)` lying at least
    /// [`PAIR_WINDOW`] inside the other stream's span. Onsets near the file's ends may simply have
    /// lost their partner to a stream starting or stopping first.
    pub fn strays(&self) -> (Vec<f64>, Vec<f64>) {
        let inside =
            |t: f64, start: f64, end: f64| t >= start + PAIR_WINDOW && t <= end - PAIR_WINDOW;
        (
            self.unpaired_flashes
                .iter()
                .copied()
                .filter(|&t| inside(t, self.audio_start, self.audio_end))
                .collect(),
            self.unpaired_beeps
                .iter()
                .copied()
                .filter(|&t| inside(t, self.video_start, self.video_end))
                .collect(),
        )
    }
}

impl fmt::Display for SyncReport {
    /// A compact multi-line summary for assertion messages and test logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:+.1} ms"));
        let list = |v: &[f64]| {
            let s: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
            s.join(" ")
        };
        writeln!(
            f,
            "video {:.4}..{:.4} s, audio {:.4}..{:.4} s; {} flashes, {} beeps, {} pairs; \
             median {}, worst {}",
            self.video_start,
            self.video_end,
            self.audio_start,
            self.audio_end,
            self.flashes.len(),
            self.beeps.len(),
            self.pairs.len(),
            ms(self.median_ms()),
            ms(self.worst_ms())
        )?;
        let offsets: Vec<String> = self.offsets_ms.iter().map(|o| format!("{o:+.1}")).collect();
        writeln!(f, "  offsets ms: {}", offsets.join(" "))?;
        if !self.unpaired_flashes.is_empty() || !self.unpaired_beeps.is_empty() {
            writeln!(
                f,
                "  unpaired flashes: [{}], beeps: [{}]",
                list(&self.unpaired_flashes),
                list(&self.unpaired_beeps)
            )?;
        }
        for (what, gaps) in [("video", &self.video_gaps), ("audio", &self.audio_gaps)] {
            if !gaps.is_empty() {
                let g: Vec<String> = gaps
                    .iter()
                    .map(|(t, len)| format!("{:.0} ms at {t:.3}", len * 1000.0))
                    .collect();
                writeln!(f, "  {what} gaps: {}", g.join(", "))?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// The median of `v` (mean of the middle two for an even count), `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Measures A/V sync in the recording at `path`; panics with ffmpeg's message when the file
/// cannot be measured (no video or audio stream, undecodable). See [`try_measure`].
pub fn measure(path: &Path) -> SyncReport {
    try_measure(path).unwrap_or_else(|e| panic!("sync::measure({}): {e:#}", path.display()))
}

/// Measures A/V sync in the recording at `path` (any container ffmpeg reads: MPEG-TS, Matroska,
/// WebM, MP4) from its first video and first audio stream.
///
/// Video: `ffprobe -f lavfi movie=…,scale,signalstats` gives each decoded frame's timestamp and
/// mean luma in one pass (frames and values cannot get out of step); a flash onset is the first
/// frame at or above the midpoint between the darkest and brightest frame after one below it.
///
/// Audio: the timing of every sample comes from its own decoded frame's timestamp
/// (`ffprobe -show_frames`: time, sample count, rate), and the samples from one ffmpeg decode to
/// mono s16 of the same stream, in the same order (the totals must match). So a hole in the
/// audio, as a recorder leaves after packet loss or a publisher's pause, moves the following
/// samples to their true time, and is reported in [`SyncReport::audio_gaps`]. Counting samples
/// from the start would shift every later beep by the hole's length; `aresample=async=1` would
/// fill the hole but only for gaps above its `min_hard_comp` threshold (smaller ones it absorbs by
/// stretching, a timing error of its own), so exact per-frame timestamps are used instead. Decoder
/// delay is whatever ffmpeg applies: Matroska's `CodecDelay`/Opus pre-skip is trimmed (the first
/// frame is shorter, its time moved on), MPEG-TS Opus carries no pre-skip, so the encoder's
/// priming samples decode at the timestamps the writer gave them.
///
/// A beep onset needs 200 ms without a loud sample before it and 20 ms of gap-free audio (else a
/// beep could have begun in the hole); it is refined to the first sample reaching 30% of the
/// beep's peak, past any codec pre-echo. Flashes are paired with beeps by nearest distance.
pub fn try_measure(path: &Path) -> Result<SyncReport> {
    let url = input_url(path)?;
    let streams = ffprobe_json(&["-show_entries", "stream=index,codec_type", &url])?;
    let kinds: Vec<&str> = streams["streams"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["codec_type"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        kinds.contains(&"video"),
        "no video stream (streams: {kinds:?})"
    );
    ensure!(
        kinds.contains(&"audio"),
        "no audio stream (streams: {kinds:?})"
    );

    let mut report = SyncReport::default();
    let luma = video_luma(&url)?;
    ensure!(!luma.is_empty(), "no decodable video frame");
    let audio = audio_track(&url, &mut report.warnings)?;
    ensure!(!audio.frames.is_empty(), "no decodable audio frame");

    let spacing: Vec<f64> = luma.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let frame_interval = median(&spacing).unwrap_or(0.0);
    report.video_start = luma[0].0;
    report.video_end = luma[luma.len() - 1].0 + frame_interval;
    for w in luma.windows(2) {
        if w[1].0 - w[0].0 > 2.5 * frame_interval {
            report.video_gaps.push((w[0].0, w[1].0 - w[0].0));
        }
    }
    report.audio_start = audio.frames[0].t;
    report.audio_end = audio
        .frames
        .iter()
        .map(AudioFrame::end)
        .fold(f64::MIN, f64::max);
    report.audio_gaps = audio.gaps();
    report.duration =
        report.video_end.max(report.audio_end) - report.video_start.min(report.audio_start);

    let flashes = detect_flashes(&luma, &mut report.warnings);
    report.flashes = flashes.iter().map(|f| f.0).collect();
    report.flash_uncertainty = flashes.iter().map(|f| f.1).collect();
    report.beeps = detect_beeps(&audio, &mut report.warnings);

    let (pairs, unpaired_flashes, unpaired_beeps) = pair(&report.flashes, &report.beeps);
    report.offsets_ms = pairs.iter().map(|(f, b)| (b - f) * 1000.0).collect();
    report.pairs = pairs;
    report.unpaired_flashes = unpaired_flashes;
    report.unpaired_beeps = unpaired_beeps;
    Ok(report)
}

/// An input URL for ffmpeg that no path can subvert: absolute, behind the `file:` protocol (a
/// `:` in a name is not a protocol; a leading `-` is not an option).
fn input_url(path: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let s = abs
        .to_str()
        .with_context(|| format!("{}: not UTF-8", abs.display()))?;
    Ok(format!("file:{s}"))
}

/// `url` as the file argument of a `movie` filter inside a filtergraph: quoted for the option
/// parser (level 1), then its quotes and the graph's special characters escaped (level 2).
fn movie_arg(url: &str) -> String {
    let quoted = format!("'{}'", url.replace('\'', r"'\''"));
    let mut out = String::with_capacity(quoted.len() + 8);
    for c in quoted.chars() {
        if matches!(c, '\\' | '\'' | '[' | ']' | ',' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs `cmd` and returns its stdout, or an error with its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `ffprobe -v error <args> -of json`, parsed.
fn ffprobe_json(args: &[&str]) -> Result<Value> {
    let mut all = vec!["-v", "error"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-of", "json"]);
    let out = run("ffprobe", &all)?;
    serde_json::from_slice(&out).context("ffprobe output is not JSON")
}

/// A frame's time in seconds: its pts, else ffmpeg's best guess, else its packet's dts.
fn frame_time(frame: &Value) -> Option<f64> {
    ["pts_time", "best_effort_timestamp_time", "pkt_dts_time"]
        .iter()
        .find_map(|k| frame[*k].as_str()?.parse::<f64>().ok())
}

/// `(time, mean luma)` of every decoded frame of the first video stream, in time order.
fn video_luma(url: &str) -> Result<Vec<(f64, f64)>> {
    // Scaled down first: the mean is the same and signalstats stays cheap at 1080p.
    let graph = format!("movie={},scale=160:90,signalstats", movie_arg(url));
    let v = ffprobe_json(&[
        "-f",
        "lavfi",
        "-i",
        &graph,
        "-show_entries",
        "frame=pts_time,best_effort_timestamp_time,pkt_dts_time:frame_tags=lavfi.signalstats.YAVG",
    ])?;
    let mut out: Vec<(f64, f64)> = v["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| {
                    let y = f["tags"]["lavfi.signalstats.YAVG"].as_str()?.parse().ok()?;
                    Some((frame_time(f)?, y))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// One decoded audio frame: its time, rate, and where its samples are in [`Audio::samples`].
#[derive(Debug, Clone, Copy)]
struct AudioFrame {
    t: f64,
    rate: f64,
    first: usize,
    len: usize,
}

impl AudioFrame {
    /// When the frame's last sample ends.
    fn end(&self) -> f64 {
        self.t + self.len as f64 / self.rate
    }
}

/// The first audio stream decoded to mono, each sample timed by its frame.
struct Audio {
    frames: Vec<AudioFrame>,
    samples: Vec<i16>,
}

/// A frame starting this much after the previous one ended is a hole (seconds); less is jitter
/// (Matroska rounds times to 1 ms).
const AUDIO_GAP: f64 = 0.002;

impl Audio {
    /// `(time, length)` of every hole between consecutive frames.
    fn gaps(&self) -> Vec<(f64, f64)> {
        self.frames
            .windows(2)
            .filter(|w| w[1].t - w[0].end() > AUDIO_GAP)
            .map(|w| (w[0].end(), w[1].t - w[0].end()))
            .collect()
    }

    /// `(time, |amplitude|)` of the samples from frame `fi`, sample `k` on, while before `until`.
    fn from(&self, fi: usize, k: usize, until: f64) -> impl Iterator<Item = (f64, u16)> + '_ {
        self.frames[fi..]
            .iter()
            .enumerate()
            .flat_map(move |(n, fr)| {
                let skip = if n == 0 { k } else { 0 };
                (skip..fr.len).map(move |i| {
                    let t = fr.t + i as f64 / fr.rate;
                    (t, self.samples[fr.first + i].unsigned_abs())
                })
            })
            .take_while(move |(t, _)| *t < until)
    }
}

/// Decodes the first audio stream: frame timing from ffprobe, samples from ffmpeg.
fn audio_track(url: &str, warnings: &mut Vec<String>) -> Result<Audio> {
    let v = ffprobe_json(&[
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=sample_rate:frame=pts_time,best_effort_timestamp_time,pkt_dts_time,nb_samples,\
         sample_rate",
        url,
    ])?;
    // ffprobe 5 gives the rate per stream only; later ones per frame too (it may change).
    let rate_of = |v: &Value| {
        v["sample_rate"]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
    };
    let stream_rate = rate_of(&v["streams"][0]).unwrap_or(0.0);
    let mut frames = Vec::new();
    let mut first = 0;
    let mut untimed = 0;
    for f in v["frames"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let len: usize = f["nb_samples"].as_u64().unwrap_or(0) as usize;
        let rate = rate_of(f).unwrap_or(stream_rate);
        match frame_time(f) {
            Some(t) if rate > 0.0 => frames.push(AudioFrame {
                t,
                rate,
                first,
                len,
            }),
            _ => untimed += 1,
        }
        // Untimed frames' samples are still in ffmpeg's output: skip over them.
        first += len;
    }
    if untimed > 0 {
        warnings.push(format!("{untimed} audio frames without a time ignored"));
    }
    let pcm = run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            url,
            "-map",
            "0:a:0",
            "-vn",
            "-ac",
            "1",
            "-c:a",
            "pcm_s16le",
            "-f",
            "s16le",
            "-",
        ],
    )?;
    ensure!(
        pcm.len() == first * 2,
        "ffmpeg decoded {} audio samples but ffprobe's frames hold {first}: cannot time them",
        pcm.len() / 2
    );
    let samples = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    for w in frames.windows(2) {
        if w[0].end() - w[1].t > AUDIO_GAP {
            warnings.push(format!(
                "audio frame at {:.4} s overlaps the previous one by {:.1} ms",
                w[1].t,
                (w[0].end() - w[1].t) * 1000.0
            ));
        }
    }
    Ok(Audio { frames, samples })
}

/// Flash onsets `(time of the first bright frame, time since the last dark frame)`.
fn detect_flashes(luma: &[(f64, f64)], warnings: &mut Vec<String>) -> Vec<(f64, f64)> {
    let lo = luma.iter().map(|l| l.1).fold(f64::MAX, f64::min);
    let hi = luma.iter().map(|l| l.1).fold(f64::MIN, f64::max);
    if hi - lo < 30.0 {
        warnings.push(format!(
            "video luma only spans {lo:.0}..{hi:.0}: no flashes found"
        ));
        return Vec::new();
    }
    let threshold = (lo + hi) / 2.0;
    let mut out = Vec::new();
    for w in luma.windows(2) {
        let ((t0, y0), (t1, y1)) = (w[0], w[1]);
        if y0 < threshold && y1 >= threshold {
            // A flash is 0.1 s: after a longer hole its start is unknowable.
            if t1 - t0 > 0.25 {
                warnings.push(format!(
                    "flash at {t1:.3} s follows a {:.0} ms video gap: skipped",
                    (t1 - t0) * 1000.0
                ));
            } else {
                out.push((t1, t1 - t0));
            }
        }
    }
    out
}

/// Beep onsets (see [`try_measure`]).
fn detect_beeps(audio: &Audio, warnings: &mut Vec<String>) -> Vec<f64> {
    let peak = audio
        .samples
        .iter()
        .map(|s| s.unsigned_abs())
        .max()
        .unwrap_or(0);
    if peak < 1000 {
        warnings.push(format!("audio peak only {peak}: no beeps found"));
        return Vec::new();
    }
    let loud = (f64::from(peak) * 0.1).max(300.0);
    let mut out = Vec::new();
    let mut last_loud: Option<f64> = None;
    let mut contiguous_since = f64::MIN;
    let mut prev_end: Option<f64> = None;
    for (fi, fr) in audio.frames.iter().enumerate() {
        if prev_end.is_none_or(|e| (fr.t - e).abs() > AUDIO_GAP) {
            contiguous_since = fr.t;
        }
        for k in 0..fr.len {
            if f64::from(audio.samples[fr.first + k].unsigned_abs()) < loud {
                continue;
            }
            let t = fr.t + k as f64 / fr.rate;
            if last_loud.is_none_or(|l| t - l >= 0.2) {
                if t - contiguous_since >= 0.02 {
                    let local_peak = audio.from(fi, k, t + 0.1).map(|s| s.1).max().unwrap_or(0);
                    let onset = audio
                        .from(fi, k, t + 0.1)
                        .find(|s| f64::from(s.1) >= 0.3 * f64::from(local_peak))
                        .map_or(t, |s| s.0);
                    out.push(onset);
                } else {
                    warnings.push(format!(
                        "beep at {t:.3} s follows an audio gap or the start: skipped"
                    ));
                }
            }
            last_loud = Some(t);
        }
        prev_end = Some(fr.end());
    }
    out
}

/// Pairs flashes with beeps within ±[`PAIR_WINDOW`], closest pairs first, each onset at most
/// once: `(pairs in flash order, unpaired flashes, unpaired beeps)`.
fn pair(flashes: &[f64], beeps: &[f64]) -> (Vec<(f64, f64)>, Vec<f64>, Vec<f64>) {
    let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
    for (i, f) in flashes.iter().enumerate() {
        for (j, b) in beeps.iter().enumerate() {
            if (b - f).abs() <= PAIR_WINDOW {
                candidates.push(((b - f).abs(), i, j));
            }
        }
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut flash_used = vec![false; flashes.len()];
    let mut beep_used = vec![false; beeps.len()];
    let mut pairs = Vec::new();
    for (_, i, j) in candidates {
        if !flash_used[i] && !beep_used[j] {
            flash_used[i] = true;
            beep_used[j] = true;
            pairs.push((flashes[i], beeps[j]));
        }
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let unused = |v: &[f64], used: &[bool]| {
        v.iter()
            .zip(used)
            .filter(|(_, u)| !**u)
            .map(|(x, _)| *x)
            .collect()
    };
    (
        pairs,
        unused(flashes, &flash_used),
        unused(beeps, &beep_used),
    )
}

/// How a sequence of detected onsets (flashes or beeps) fits a [`Schedule`]: proof that none is
/// missing, duplicated or spurious, and where the schedule's loops start in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Alignment {
    /// File time of schedule time 0 of the loop holding the first matched onset. For media that
    /// starts at the start of a loop, compare it with the stream's start in the file: a
    /// difference of a whole period is a loop-sized sync error no pairing can see.
    pub origin: f64,
    /// Onsets that matched a scheduled onset.
    pub matched: usize,
    /// Expected times of scheduled onsets between the first and last match that no onset matched.
    pub missing: Vec<f64>,
    /// Onsets that matched a scheduled onset already matched.
    pub duplicates: Vec<f64>,
    /// Onsets farther than the tolerance from any scheduled onset.
    pub extra: Vec<f64>,
    /// Largest difference (ms) between a matched onset and its expected time, the expectation
    /// following slow drift (see `drift_ms`).
    pub worst_residual_ms: f64,
    /// How far (ms) the schedule's position moved from the first to the last match: a clock
    /// running fast or slow, or a publisher's capture falling behind.
    pub drift_ms: f64,
}

/// Fits `onsets` (file times, increasing) to `schedule`, repeating every period, matching within
/// `tolerance` seconds (two frames, 0.067 s, suits flashes).
///
/// The start is the best fit over the first two periods (the candidate origin matching the most
/// onsets); then each onset is matched to the nearest scheduled one, and the expectation follows
/// each match, so slow drift over a long recording is tracked while a jump beyond `tolerance`
/// shows up as extra and missing onsets. `None` without onsets or scheduled flashes.
pub fn align(onsets: &[f64], schedule: &Schedule, tolerance: f64) -> Option<Alignment> {
    let sched = &schedule.flashes;
    let period = schedule.period;
    if onsets.is_empty() || sched.is_empty() || period <= 0.0 {
        return None;
    }
    let n = sched.len() as i64;
    // Nearest scheduled onset to `t` for an origin: (event number, residual).
    let nearest = |origin: f64, t: f64| -> (i64, f64) {
        let loop_no = ((t - origin) / period).floor() as i64;
        let mut best = (0, f64::MAX);
        for l in loop_no - 1..=loop_no + 1 {
            for (j, s) in sched.iter().enumerate() {
                let r = t - (origin + l as f64 * period + s);
                if r.abs() < best.1.abs() {
                    best = (l * n + j as i64, r);
                }
            }
        }
        best
    };
    let start: Vec<f64> = onsets
        .iter()
        .copied()
        .take_while(|t| *t < onsets[0] + 2.0 * period)
        .collect();
    let mut best: Option<(usize, f64, f64)> = None; // (matches, sum |residual|, origin)
    for o in &start {
        for s in sched {
            let origin = o - s;
            let residuals: Vec<f64> = start
                .iter()
                .map(|t| nearest(origin, *t).1)
                .filter(|r| r.abs() <= tolerance)
                .collect();
            let sum: f64 = residuals.iter().map(|r| r.abs()).sum();
            let better = best
                .is_none_or(|(m, bs, _)| residuals.len() > m || (residuals.len() == m && sum < bs));
            if better {
                let mean = residuals.iter().sum::<f64>() / residuals.len().max(1) as f64;
                best = Some((residuals.len(), sum, origin + mean));
            }
        }
    }
    let (_, _, origin0) = best?;

    let mut origin = origin0;
    // The expectation as fitted at the first match: where `origin` and `drift_ms` are measured.
    let mut at_first: Option<f64> = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut a = Alignment {
        origin: origin0,
        matched: 0,
        missing: Vec::new(),
        duplicates: Vec::new(),
        extra: Vec::new(),
        worst_residual_ms: 0.0,
        drift_ms: 0.0,
    };
    for &t in onsets {
        let (event, r) = nearest(origin, t);
        if r.abs() > tolerance {
            a.extra.push(t);
            continue;
        }
        if !seen.insert(event) {
            a.duplicates.push(t);
            continue;
        }
        a.matched += 1;
        origin += r;
        match at_first {
            // The first match only sets the expectation; the fit at the start can be off by the
            // drift within its two periods.
            None => at_first = Some(origin),
            Some(_) => a.worst_residual_ms = a.worst_residual_ms.max(r.abs() * 1000.0),
        }
    }
    let start = at_first.unwrap_or(origin0);
    a.drift_ms = (origin - start) * 1000.0;
    let expected =
        |e: i64| start + e.div_euclid(n) as f64 * period + sched[e.rem_euclid(n) as usize];
    if let (Some(&first), Some(&last)) = (seen.first(), seen.last()) {
        a.missing = (first..=last)
            .filter(|e| !seen.contains(e))
            .map(expected)
            .collect();
        a.origin = start + first.div_euclid(n) as f64 * period;
    }
    Some(a)
}

/// Small deterministic generator (xorshift64) for [`Schedule::irregular`].
struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (scrambled so that 0 works).
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher–Yates shuffle.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
