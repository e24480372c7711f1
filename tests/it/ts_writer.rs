//! The TS writer against real tools: the built-in clip written through `TsWriter` must pass the
//! conformance checker, read back with the `mpeg2ts` crate, and play in ffmpeg/ffprobe exactly
//! like the ffmpeg-made original.

use std::path::PathBuf;

use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
use mpeg2ts::ts::TsPacketReader;
use ninjarec::mux::ts::{AUD, TsConfig, TsWriter};
use ninjarec::testkit::clip::Clip;
use ninjarec::testkit::ts_check::{CheckOptions, check};

use crate::support::ffmpeg::{decode_errors, probe, temp_file, video_frame_hashes};

/// One unit of the clip in file order.
enum Unit<'a> {
    Video(u64, Vec<u8>, bool),
    Audio(u64, &'a [u8]),
}

/// The clip's units with PTS + `offset`, interleaved by PTS (video first on ties), access units
/// as Annex B with start codes.
fn units(clip: &Clip, offset: u64, video: bool, audio: bool) -> Vec<Unit<'_>> {
    let mut v: Vec<Unit> = Vec::new();
    if video {
        for f in &clip.video {
            let mut au = Vec::new();
            for nal in &f.nals {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(nal);
            }
            v.push(Unit::Video(f.pts_90k + offset, au, f.keyframe));
        }
    }
    if audio {
        for a in &clip.audio {
            v.push(Unit::Audio(a.pts_90k + offset, &a.data));
        }
    }
    v.sort_by_key(|u| match u {
        Unit::Video(p, ..) => (*p, 0),
        Unit::Audio(p, _) => (*p, 1),
    });
    v
}

/// The clip written through `TsWriter`.
fn write_clip(clip: &Clip, offset: u64, video: bool, audio: bool) -> Vec<u8> {
    let mut w = TsWriter::new(TsConfig { video, audio }).unwrap();
    let mut out = Vec::new();
    for u in units(clip, offset, video, audio) {
        match u {
            Unit::Video(pts, au, key) => w.write_video(pts, &au, key, &mut out).unwrap(),
            Unit::Audio(pts, data) => w.write_audio(pts, data, &mut out).unwrap(),
        }
    }
    out
}

#[test]
fn clip_passes_the_checker_and_reads_back_unchanged() {
    let clip = Clip::builtin();
    let out = write_clip(&clip, 90_000, true, true);
    let r = check(&out, &CheckOptions::default());
    assert!(r.is_ok(), "{:#?}", r.violations);
    assert_eq!(r.video.len(), clip.video.len());
    assert_eq!(r.audio.len(), clip.audio.len());
    for (pes, f) in r.video.iter().zip(&clip.video) {
        assert_eq!(pes.pts, f.pts_90k + 90_000);
        assert_eq!(pes.keyframe, f.keyframe);
        assert!(pes.data.starts_with(&AUD));
    }
    for (pes, a) in r.audio.iter().zip(&clip.audio) {
        assert_eq!(pes.pts, a.pts_90k + 90_000);
        assert_eq!(pes.data, a.data);
    }
    assert!(r.max_pcr_interval_90k <= 3_600);
    assert!(r.max_psi_interval_90k <= 9_000);

    // The mpeg2ts crate reads every PES back.
    let mut reader = PesPacketReader::new(TsPacketReader::new(&out[..]));
    let (mut v, mut a) = (0, 0);
    while let Some(pes) = reader.read_pes_packet().unwrap() {
        match pes.header.stream_id.as_u8() {
            0xE0 => v += 1,
            0xBD => a += 1,
            other => panic!("stream id {other:#x}"),
        }
    }
    assert_eq!((v, a), (clip.video.len(), clip.audio.len()));
    // And the crate's own clip reader gets the same clip back.
    let again = Clip::from_ts(&out).unwrap();
    assert_eq!(again.video.len(), clip.video.len());
    assert!(
        again
            .audio
            .iter()
            .zip(&clip.audio)
            .all(|(x, y)| x.data == y.data)
    );
}

#[test]
fn ffmpeg_plays_the_clip_like_the_original() {
    let clip = Clip::builtin();
    let path = temp_file("av", &write_clip(&clip, 90_000, true, true));
    assert_eq!(decode_errors(&path), "");
    let streams = probe(&path);
    assert_eq!(
        streams,
        vec![
            format!("h264,{}", clip.video.len()),
            format!("opus,48000,2,{}", clip.audio.len()),
        ]
    );
    let original = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/clip.ts");
    let ours = video_frame_hashes(&path);
    assert_eq!(ours.len(), clip.video.len());
    assert_eq!(ours, video_frame_hashes(&original));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn single_track_files_play() {
    let clip = Clip::builtin();
    let video = temp_file("v", &write_clip(&clip, 90_000, true, false));
    assert_eq!(decode_errors(&video), "");
    assert_eq!(probe(&video), vec![format!("h264,{}", clip.video.len())]);
    let audio = temp_file("a", &write_clip(&clip, 90_000, false, true));
    assert_eq!(decode_errors(&audio), "");
    assert_eq!(
        probe(&audio),
        vec![format!("opus,48000,2,{}", clip.audio.len())]
    );
    let r = check(&std::fs::read(&audio).unwrap(), &CheckOptions::default());
    assert!(r.is_ok(), "{:#?}", r.violations);
    std::fs::remove_file(video).unwrap();
    std::fs::remove_file(audio).unwrap();
}

#[test]
fn timeline_crossing_2_pow_33_plays() {
    let clip = Clip::builtin();
    // The 33-bit PTS wraps 1.5 s into the clip.
    let offset = (1u64 << 33) - 135_000;
    let bytes = write_clip(&clip, offset, true, true);
    let r = check(&bytes, &CheckOptions::default());
    assert!(r.is_ok(), "{:#?}", r.violations);
    assert!(r.video.first().unwrap().pts > r.video.last().unwrap().pts);
    let path = temp_file("wrap", &bytes);
    assert_eq!(decode_errors(&path), "");
    assert_eq!(video_frame_hashes(&path).len(), clip.video.len());
    std::fs::remove_file(path).unwrap();
}

/// A file cut at any byte (the recorder killed mid-write) plays up to the cut.
///
/// What is accepted: every access unit complete before the cut decodes to exactly the frame
/// the uncut file gives (framemd5 equal, frame for frame), every Opus packet complete before
/// the cut is demuxed, and `ffmpeg -v error` prints nothing except messages of the H.264
/// decoder about the last, partial access unit (a video PES has no length, so the demuxer
/// hands the cut frame to the decoder, which conceals its missing macroblocks). Nothing from
/// the demuxer or the Opus decoder is accepted.
#[test]
fn truncated_file_plays_up_to_the_cut() {
    let clip = Clip::builtin();
    let bytes = write_clip(&clip, 90_000, true, true);
    let full = temp_file("full", &bytes);
    let full_hashes = video_frame_hashes(&full);
    std::fs::remove_file(full).unwrap();
    let opts = CheckOptions {
        allow_truncated: true,
        ..Default::default()
    };
    for cut in [
        20_001,
        70_001,
        100_000,
        111_937,
        188 * 700,
        bytes.len() - 1000,
    ] {
        let r = check(&bytes[..cut], &opts);
        assert!(r.is_ok(), "cut {cut}: {:#?}", r.violations);
        let complete = r.video.len();
        let path = temp_file(&format!("cut{cut}"), &bytes[..cut]);
        let errors = decode_errors(&path);
        for line in errors.lines() {
            assert!(
                line.starts_with("[h264 @"),
                "cut {cut}: unexpected error {line}"
            );
        }
        let hashes = video_frame_hashes(&path);
        assert!(
            hashes.len() == complete || hashes.len() == complete + 1,
            "cut {cut}: {} frames for {complete} complete access units",
            hashes.len()
        );
        assert_eq!(hashes[..complete], full_hashes[..complete], "cut {cut}");
        if complete > 0 {
            let audio_packets: usize = probe(&path)
                .iter()
                .find(|l| l.starts_with("opus"))
                .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
                .unwrap_or(0);
            assert!(audio_packets >= r.audio.len(), "cut {cut}");
        }
        std::fs::remove_file(path).unwrap();
    }
}

/// Throughput of the writer alone (the core must sustain ≥ 1 GB/s of TS output). Only
/// meaningful optimized, so it is ignored by default; run it with
/// `CARGO_PROFILE_DEV_OPT_LEVEL=3 CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false cargo test --test ts_writer throughput -- --ignored --nocapture`.
#[test]
#[ignore = "measures speed; run optimized"]
fn throughput() {
    let clip = Clip::builtin();
    let units = units(&clip, 0, true, true);
    let mut w = TsWriter::new(TsConfig {
        video: true,
        audio: true,
    })
    .unwrap();
    let mut out = Vec::with_capacity(1 << 20);
    let mut written = 0usize;
    let started = std::time::Instant::now();
    let mut offset = 90_000;
    while started.elapsed().as_secs_f64() < 2.0 {
        for u in &units {
            match u {
                Unit::Video(pts, au, key) => {
                    w.write_video(pts + offset, au, *key, &mut out).unwrap()
                }
                Unit::Audio(pts, data) => w.write_audio(pts + offset, data, &mut out).unwrap(),
            }
        }
        offset += clip.duration_90k;
        written += out.len();
        out.clear();
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    eprintln!("TsWriter: {:.2} GB/s", rate / 1e9);
    assert!(rate >= 1e9, "{rate} bytes/s");
}

/// Timeline and writer together: the clip sent as if over RTP (unrelated random clock starts,
/// audio arriving 50 ms before video, PCR kept alive by `tick`) makes a conforming file that
/// ffmpeg decodes cleanly.
#[test]
fn timeline_feeds_the_writer_into_a_conforming_file() {
    use ninjarec::media::timeline::{Timeline, TimelineConfig};
    use std::time::{Duration, Instant};

    let clip = Clip::builtin();
    let (v0, a0) = (0xFFF0_0000u32, 0x7FFF_FF00u32);
    let start = Instant::now();
    // (arrival ms, is_video, index)
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, f) in clip.video.iter().enumerate() {
        events.push((f.pts_90k / 90 + 80, true, i));
    }
    for (i, a) in clip.audio.iter().enumerate() {
        events.push((a.pts_90k / 90 + 30, false, i));
    }
    events.sort();
    let mut tl: Timeline<usize> = Timeline::new(TimelineConfig::new(true, true));
    let mut w = TsWriter::new(TsConfig {
        video: true,
        audio: true,
    })
    .unwrap();
    let mut out = Vec::new();
    for (ms, is_video, i) in events {
        let arrival = start + Duration::from_millis(ms);
        if let Some(now) = tl.now_pts(arrival) {
            w.tick(now, &mut out);
        }
        if is_video {
            let f = &clip.video[i];
            let ts = v0.wrapping_add(f.pts_90k as u32);
            if let Some(pts) = tl.video_pts(ts, arrival, f.keyframe) {
                let mut au = Vec::new();
                for nal in &f.nals {
                    au.extend_from_slice(&[0, 0, 0, 1]);
                    au.extend_from_slice(nal);
                }
                w.write_video(pts, &au, f.keyframe, &mut out).unwrap();
            }
        } else {
            let a = &clip.audio[i];
            let ts = a0.wrapping_add((a.pts_90k * 8 / 15) as u32);
            tl.push_audio(ts, arrival, i);
        }
        while let Some((pts, i)) = tl.pop_audio() {
            w.write_audio(pts, &clip.audio[i].data, &mut out).unwrap();
        }
    }
    let r = check(&out, &CheckOptions::default());
    assert!(r.is_ok(), "{:#?}", r.violations);
    assert_eq!(r.video.len(), clip.video.len());
    // The audio held while the first keyframe was awaited starts the file, all of it kept.
    // Without Sender Reports the 50 ms earlier arrival of audio maps it 50 ms early, so the
    // keyframe (captured with the first audio) comes 50 ms after it.
    assert_eq!(r.audio[0].pts, 90_000);
    assert_eq!(r.audio.len(), clip.audio.len());
    let key = r.video[0].pts as i64 - 90_000;
    assert!(
        (key - 4500).abs() <= 900,
        "keyframe {key} ticks after the first audio"
    );
    let path = temp_file("timeline", &out);
    assert_eq!(decode_errors(&path), "");
    std::fs::remove_file(path).unwrap();
}
