//! The Matroska / WebM writer against ffmpeg: real VP8, VP9 and AV1 streams encoded at test
//! time (and the built-in H.264 clip), with real Opus, written through `MkvWriter` must
//! probe as the right codecs, decode without a single error, decode to the very same
//! pictures as the encoder's own output, present audio exactly where it was given, have the
//! right duration once finished, and still decode up to the cut when cut anywhere.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ninjarec::media::{Frame, VideoCodec, VideoFormat};
use ninjarec::mux::Tracks;
use ninjarec::mux::mkv::MkvWriter;
use ninjarec::testkit::clip::Clip;
use ninjarec::testkit::mkv_check::{CheckOptions, MkvReport, apply_patches, check};

use crate::support::ffmpeg::{
    clip_path, decode_errors, format_duration, probe, run, video_frame_hashes,
};
use crate::support::ivf::{
    self, AV1, VP8, VP9, av1c_of, encode, pick, read_ivf, read_ogg_opus, strip_temporal_delimiters,
};

/// 20 ms of Opus at 90 kHz.
const AUDIO_STEP: u64 = 1_800;

/// What a test feeds the writer.
struct Media {
    codec: VideoCodec,
    /// (PTS from the first frame in 90 kHz, frame data as the recorder has it, keyframe).
    frames: Vec<(u64, Vec<u8>, bool)>,
    width: u32,
    height: u32,
    config: Option<Vec<u8>>,
    /// The stream the frames came from, to compare decoded pictures with.
    reference: PathBuf,
    /// 20 ms Opus packets.
    audio: Vec<Vec<u8>>,
    /// Files to delete at the end.
    temp: Vec<PathBuf>,
}

/// A 3 s clip of `codec` made with `encoder`.
fn encoded(codec: VideoCodec, encoder: ivf::Encoder, tag: &str) -> Media {
    // ffmpeg's encoders load every core: not beside the real-publisher tests.
    let _heavy = crate::support::fixtures::heavy_blocking();
    let (ivf_path, ogg) = encode(encoder, 3, tag);
    let ivf = read_ivf(&ivf_path);
    let config = (codec == VideoCodec::Av1).then(|| av1c_of(&ivf_path));
    let frames = ivf
        .frames
        .iter()
        .map(|f| {
            let data = if codec == VideoCodec::Av1 {
                strip_temporal_delimiters(&f.data)
            } else {
                f.data.clone()
            };
            (
                ivf.pts_90k(f) - ivf.pts_90k(&ivf.frames[0]),
                data,
                f.keyframe,
            )
        })
        .collect();
    Media {
        codec,
        frames,
        width: ivf.width,
        height: ivf.height,
        config,
        reference: ivf_path.clone(),
        audio: read_ogg_opus(&ogg),
        temp: vec![ivf_path, ogg],
    }
}

/// The built-in H.264 + Opus clip.
fn h264_clip() -> Media {
    let clip = Clip::builtin();
    let annex_b = |nals: &[bytes::Bytes]| {
        let mut au = Vec::new();
        for n in nals {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(n);
        }
        au
    };
    let first = clip.video[0].pts_90k;
    let config: Vec<bytes::Bytes> = clip.video[0]
        .nals
        .iter()
        .filter(|n| matches!(n[0] & 0x1F, 7 | 8))
        .cloned()
        .collect();
    let (out, _) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
            clip_path().to_str().unwrap(),
        ],
    );
    // MPEG-TS: ffprobe lists the program's stream, then the stream; both say the same.
    let line = out.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    let dims: Vec<u32> = line.trim().split(',').map(|d| d.parse().unwrap()).collect();
    Media {
        codec: VideoCodec::H264,
        frames: clip
            .video
            .iter()
            .map(|f| (f.pts_90k - first, annex_b(&f.nals), f.keyframe))
            .collect(),
        width: dims[0],
        height: dims[1],
        config: Some(annex_b(&config)),
        reference: clip_path(),
        audio: clip.audio.iter().map(|a| a.data.to_vec()).collect(),
        temp: Vec::new(),
    }
}

/// What was written: the file as it was live (never finished) and the finished, patched file.
struct Written {
    live: Vec<u8>,
    finished: Vec<u8>,
    video_frames: usize,
    audio_packets: usize,
    /// The file's time 0 and the first video / audio PTS given (90 kHz).
    start: u64,
    first_video: u64,
    first_audio: u64,
    /// The end of the last frame / packet (90 kHz).
    end: u64,
}

/// Writes the media with video starting at `v0` and audio at `v0 + audio_offset`, interleaved
/// by PTS as the recorder does; audio stops with the video.
fn write(media: &Media, v0: u64, audio_offset: i64, webm: bool) -> Written {
    let mut w = MkvWriter::new(
        Tracks {
            video: Some(media.codec),
            audio: true,
        },
        webm,
    )
    .unwrap();
    let step = media.frames[1].0 - media.frames[0].0;
    let video_end = v0 + media.frames.last().unwrap().0 + step;
    let a0 = v0.checked_add_signed(audio_offset).unwrap();
    let mut units: Vec<(u64, Option<usize>)> = media
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| (v0 + f.0, Some(i)))
        .collect();
    let audio_packets = media
        .audio
        .len()
        .min(((video_end - a0) / AUDIO_STEP) as usize);
    units.extend((0..audio_packets as u64).map(|j| (a0 + j * AUDIO_STEP, None)));
    units.sort_by_key(|&(pts, v)| (pts, v.is_none()));
    let mut out = Vec::new();
    for (pts, unit) in units {
        match unit {
            Some(i) => {
                let (_, data, keyframe) = &media.frames[i];
                let frame = Frame {
                    codec: media.codec,
                    rtp_timestamp: 0,
                    arrival: Instant::now(),
                    keyframe: *keyframe,
                    data: data.clone(),
                    format: keyframe.then(|| VideoFormat {
                        width: media.width,
                        height: media.height,
                        may_reorder: false,
                        config: media.config.clone().map(Into::into),
                    }),
                };
                w.write_video(pts, &frame, &mut out).unwrap();
            }
            None => {
                let j = ((pts - a0) / AUDIO_STEP) as usize;
                w.write_audio(pts, &media.audio[j], &mut out).unwrap();
            }
        }
    }
    let live = out.clone();
    let patches = w.finish(&mut out);
    apply_patches(&mut out, &patches).unwrap();
    assert_eq!(w.stats().audio_dropped, 0);
    Written {
        live,
        finished: out,
        video_frames: media.frames.len(),
        audio_packets,
        start: v0.min(a0),
        first_video: v0,
        first_audio: a0,
        end: video_end.max(a0 + audio_packets as u64 * AUDIO_STEP),
    }
}

fn save(name: &str, bytes: &[u8], ext: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("ninjarec-test-{}-{name}.{ext}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The first decoded frame's presentation time of stream `sel` (`v` or `a`), and the first
/// packet's.
fn first_times(path: &Path, sel: &str) -> (f64, f64) {
    let one = |what: &str| -> f64 {
        let (out, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                sel,
                "-read_intervals",
                "%+#1",
                what,
                "-show_entries",
                &format!("{}=pts_time", &what[6..what.len() - 1]),
                "-of",
                "csv=p=0",
                path.to_str().unwrap(),
            ],
        );
        let first = out.lines().next().unwrap_or_default();
        // Frames with side data print it after the time: keep the first field.
        let time = first.split(',').next().unwrap_or_default().trim();
        time.parse()
            .unwrap_or_else(|e| panic!("ffprobe {what} of {path:?}: {out:?} ({e})"))
    };
    (one("-show_frames"), one("-show_packets"))
}

fn ok(r: &MkvReport) {
    assert!(r.is_ok(), "{:#?}", r.violations);
}

/// Everything ffmpeg must say about a written file.
fn exercise(media: &Media, name: &str, webm: bool, audio_offset: i64) {
    let v0 = 900_000;
    let w = write(media, v0, audio_offset, webm);
    let ext = if webm { "webm" } else { "mkv" };
    let tag = format!("{name}-{}", audio_offset.signum());

    // Our own checker on both forms.
    ok(&check(&w.live, &CheckOptions::default()));
    let r = check(
        &w.finished,
        &CheckOptions {
            require_finished: true,
            ..CheckOptions::default()
        },
    );
    ok(&r);
    assert_eq!(r.doc_type, if webm { "webm" } else { "matroska" });

    let path = save(&tag, &w.finished, ext);
    assert_eq!(decode_errors(&path), "", "{name}");
    assert_eq!(
        probe(&path),
        vec![
            format!("{name},{}", w.video_frames),
            format!("opus,48000,2,{}", w.audio_packets),
        ]
    );
    // Bit-exact video, frame for frame.
    let reference = video_frame_hashes(&media.reference);
    let ours = video_frame_hashes(&path);
    assert_eq!(ours.len(), w.video_frames, "{name}");
    assert_eq!(ours, reference, "{name}");
    // A/V sync: both tracks start where they were given (ms precision of the file).
    let secs = |pts: u64| (pts - w.start) as f64 / 90_000.0;
    let (vf, vp) = first_times(&path, "v");
    let (af, ap) = first_times(&path, "a");
    assert!(
        (vf - secs(w.first_video)).abs() < 0.001,
        "{name} video {vf}"
    );
    assert!(
        (vp - secs(w.first_video)).abs() < 0.001,
        "{name} video {vp}"
    );
    assert!(
        (af - secs(w.first_audio)).abs() < 0.001,
        "{name}: audio decoded at {af}"
    );
    assert!(
        (ap - secs(w.first_audio)).abs() < 0.001,
        "{name}: audio packet at {ap}"
    );
    // The patched Duration.
    let d = format_duration(&path);
    assert!(
        (d - secs(w.end)).abs() < 0.002,
        "{name}: duration {d} vs {}",
        secs(w.end)
    );
    std::fs::remove_file(&path).unwrap();

    // The live file cut at several points, mid-block included: it decodes up to the cut.
    let live = check(&w.live, &CheckOptions::default());
    let video: Vec<_> = live.blocks_of(1).collect();
    let n = video.len();
    let cuts = [
        video[n / 4].offset + 7,
        video[n / 2].end,
        video[n / 2 + 1].offset + (video[n / 2 + 1].end - video[n / 2 + 1].offset) / 2,
        video[3 * n / 4].offset + 2,
        w.live.len() - 1,
    ];
    let per_cluster = live.clusters.iter().map(|c| c.blocks.1).max().unwrap_or(0);
    for cut in cuts {
        let prefix = &w.live[..cut];
        let r = check(
            prefix,
            &CheckOptions {
                allow_truncated: true,
                ..CheckOptions::default()
            },
        );
        ok(&r);
        let complete = r.blocks_of(1).count();
        let path = save(&format!("{tag}-cut{cut}"), prefix, ext);
        let decoded = video_frame_hashes(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(
            decoded.len() <= complete && decoded.len() + per_cluster >= complete,
            "{name} cut at {cut}: {} frames decoded, {complete} complete",
            decoded.len()
        );
        assert_eq!(
            decoded[..],
            reference[..decoded.len()],
            "{name} cut at {cut}"
        );
    }
    for t in &media.temp {
        let _ = std::fs::remove_file(t);
    }
}

#[test]
fn vp8_webm_plays_bit_exact_and_in_sync() {
    let media = encoded(VideoCodec::Vp8, VP8, "vp8");
    // Audio starts 100 ms after the video.
    exercise(&media, "vp8", true, 9_000);
}

#[test]
fn vp9_webm_plays_bit_exact_and_in_sync_with_audio_first() {
    let media = encoded(VideoCodec::Vp9, VP9, "vp9");
    // Audio starts 200 ms before the video: it is held until the first keyframe.
    exercise(&media, "vp9", true, -18_000);
}

#[test]
fn av1_matroska_plays_bit_exact_and_in_sync() {
    let media = encoded(VideoCodec::Av1, pick(&AV1), "av1-mkv");
    exercise(&media, "av1", false, 4_500);
}

#[test]
fn av1_webm_plays() {
    let media = encoded(VideoCodec::Av1, pick(&AV1), "av1-webm");
    exercise(&media, "av1", true, 0);
}

#[test]
fn h264_matroska_plays_bit_exact_and_in_sync() {
    let media = h264_clip();
    exercise(&media, "h264", false, 2_700);
}
