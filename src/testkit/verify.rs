//! Checks a recording of the built-in clip without any decoder.
//!
//! `ninjarec selftest` runs on boards that have no ffmpeg, and the end-to-end tests want a
//! check that is stricter than "it decodes": every recorded frame must be, bit for bit, a frame
//! the test publisher sent. Because the publisher streams the known clip, that is checkable
//! from the TS bytes alone: the file's structure is checked with [`crate::testkit::ts_check`], then
//! every access unit's slices and every Opus packet are looked up among the clip's.

use std::collections::HashSet;
use std::path::Path;

use crate::testkit::clip::{Clip, split_annex_b};
use crate::testkit::ts_check::{CheckOptions, check};

/// What a verified recording holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Video frames in the file.
    pub frames: usize,
    /// Of those, keyframes.
    pub keyframes: usize,
    /// Opus packets in the file.
    pub audio_packets: usize,
    /// Media time the video covers, seconds.
    pub video_seconds: f64,
    /// First audio PTS minus first video PTS, milliseconds (when both exist).
    pub av_start_offset_ms: Option<f64>,
}

/// The slice NAL units (types 1 and 5) of an access unit, concatenated: what a decoder turns
/// into pixels. SPS/PPS/SEI/AUD placement may legitimately differ between sender and file.
pub fn slices<'a>(nals: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in nals {
        if matches!(nal.first().map(|b| b & 0x1F), Some(1 | 5)) {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
    }
    out
}

/// Verifies the recording at `path` against `clip`. `truncated` accepts a file cut anywhere
/// (a recorder killed mid-write). Returns what the file holds, or the first problem found.
pub fn verify_file(path: &Path, clip: &Clip, truncated: bool) -> Result<Verified, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    verify_bytes(&data, clip, truncated)
}

/// [`verify_file`] on bytes in memory.
pub fn verify_bytes(data: &[u8], clip: &Clip, truncated: bool) -> Result<Verified, String> {
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    let opts = CheckOptions {
        allow_truncated: truncated,
        ..CheckOptions::default()
    };
    let report = check(data, &opts);
    if let Some(v) = report.violations.first() {
        return Err(format!(
            "not a conformant transport stream ({} problems), first: {v}",
            report.violations.len()
        ));
    }
    let clip_frames: HashSet<Vec<u8>> = clip
        .video
        .iter()
        .map(|f| slices(f.nals.iter().map(|n| n.as_ref())))
        .collect();
    let clip_audio: HashSet<&[u8]> = clip.audio.iter().map(|a| a.data.as_ref()).collect();
    if let Some(first) = report.video.first()
        && !first.keyframe
    {
        return Err("the first video frame is not a keyframe".into());
    }
    for (i, pes) in report.video.iter().enumerate() {
        if !clip_frames.contains(&slices(split_annex_b(&pes.data))) {
            return Err(format!(
                "video frame {i} (PTS {}) is not bit-exact with any frame that was sent",
                pes.pts
            ));
        }
    }
    for (i, pes) in report.audio.iter().enumerate() {
        if !clip_audio.contains(pes.data.as_slice()) {
            return Err(format!(
                "audio packet {i} (PTS {}) is not bit-exact with any packet that was sent",
                pes.pts
            ));
        }
    }
    let video_seconds = match (report.video.first(), report.video.last()) {
        (Some(a), Some(b)) => {
            ((b.pts.wrapping_sub(a.pts)) & crate::mux::ts::PTS_MASK) as f64 / 90_000.0
        }
        _ => 0.0,
    };
    let av_start_offset_ms = match (report.video.first(), report.audio.first()) {
        (Some(v), Some(a)) => Some((a.pts as f64 - v.pts as f64) / 90.0),
        _ => None,
    };
    Ok(Verified {
        frames: report.video.len(),
        keyframes: report.video.iter().filter(|p| p.keyframe).count(),
        audio_packets: report.audio.len(),
        video_seconds,
        av_start_offset_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::ts::{TsConfig, TsWriter};

    fn write_clip(clip: &Clip, skip_first: usize) -> Vec<u8> {
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: true,
        })
        .unwrap();
        let mut out = Vec::new();
        let mut audio = clip.audio.iter().peekable();
        for f in clip.video.iter().skip(skip_first) {
            while let Some(a) = audio.next_if(|a| a.pts_90k <= f.pts_90k) {
                if a.pts_90k + 3000 >= clip.video[skip_first].pts_90k {
                    w.write_audio(90_000 + a.pts_90k, &a.data, &mut out)
                        .unwrap();
                }
            }
            let mut au = Vec::new();
            for n in &f.nals {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(n);
            }
            w.write_video(90_000 + f.pts_90k, &au, f.keyframe, &mut out)
                .unwrap();
        }
        out
    }

    #[test]
    fn the_clip_written_by_our_muxer_verifies() {
        let clip = Clip::builtin();
        let data = write_clip(&clip, 0);
        let v = verify_bytes(&data, &clip, false).unwrap();
        assert_eq!(v.frames, 120);
        assert_eq!(v.keyframes, 4);
        assert!(v.audio_packets >= 190, "{}", v.audio_packets);
        // A cut file verifies as truncated.
        let cut = &data[..data.len() / 2 + 7];
        let v = verify_bytes(cut, &clip, true).unwrap();
        assert!(v.frames > 40 && v.frames < 80, "{}", v.frames);
    }

    #[test]
    fn a_foreign_frame_is_caught() {
        let clip = Clip::builtin();
        let mut other = clip.clone();
        // Flip one byte of one slice of frame 5 in the reference: the recording no longer
        // matches it.
        let nal = other.video[5]
            .nals
            .iter_mut()
            .find(|n| n[0] & 0x1F == 1)
            .unwrap();
        let mut bytes = nal.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        *nal = bytes.into();
        let data = write_clip(&other, 0);
        let err = verify_bytes(&data, &clip, false).unwrap_err();
        assert!(err.contains("video frame 5"), "{err}");
        assert!(verify_bytes(&[], &clip, false).is_err());
        assert!(verify_bytes(&[0x47; 188 * 2], &clip, false).is_err());
    }
}
