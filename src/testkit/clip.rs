//! A short H.264 + Opus clip, read from MPEG-TS into frames.
//!
//! The built-in test publisher, `ninjarec selftest`, the integration tests and the benchmarks all
//! need real encoded media with known content. One small ffmpeg-made clip (`assets/clip.ts`, see
//! `assets/README.md`) is shipped inside the binary, and this module turns it into the units a
//! WebRTC sender sends: H.264 access units as NAL lists and single Opus packets, each with its
//! presentation time.

use bytes::Bytes;
use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
use mpeg2ts::ts::TsPacketReader;

use crate::media::depacketize::opus_toc;

/// The clip shipped in the binary.
static BUILTIN: &[u8] = include_bytes!("../../assets/clip.ts");

/// Why a clip could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The MPEG-TS layer could not be parsed.
    #[error("clip is not readable MPEG-TS: {0}")]
    Ts(String),
    /// A PES packet had no PTS, so its frame cannot be timed.
    #[error("clip has a PES packet without PTS")]
    MissingPts,
    /// An Opus PES did not follow the `opus_control_header` layout.
    #[error("clip has a malformed Opus control header at byte {0}")]
    OpusHeader(usize),
    /// The clip holds no H.264 keyframe or no Opus packet.
    #[error("clip lacks {0}")]
    Missing(&'static str),
}

/// One H.264 access unit of the clip.
#[derive(Debug, Clone)]
pub struct ClipVideoFrame {
    /// Presentation time in 90 kHz units, relative to the clip's first unit.
    pub pts_90k: u64,
    /// The NAL units, without start codes and without access unit delimiters.
    pub nals: Vec<Bytes>,
    /// True when the access unit holds an IDR slice.
    pub keyframe: bool,
}

/// One Opus packet of the clip.
#[derive(Debug, Clone)]
pub struct ClipAudioFrame {
    /// Presentation time in 90 kHz units, relative to the clip's first unit.
    pub pts_90k: u64,
    /// One Opus packet (TOC byte first).
    pub data: Bytes,
    /// Duration in 48 kHz samples.
    pub samples: u32,
}

/// A decoded-from-container clip: every video and audio unit, in order.
#[derive(Debug, Clone)]
pub struct Clip {
    /// H.264 access units in decode (= presentation) order.
    pub video: Vec<ClipVideoFrame>,
    /// Opus packets in order.
    pub audio: Vec<ClipAudioFrame>,
    /// Length of the clip in 90 kHz units, for looping it without a gap or overlap.
    pub duration_90k: u64,
}

impl Clip {
    /// The clip shipped inside the binary (`assets/clip.ts`).
    pub fn builtin() -> Clip {
        // The asset is fixed at compile time and covered by a unit test.
        Clip::from_ts(BUILTIN).expect("built-in clip is valid")
    }

    /// Reads a clip from MPEG-TS bytes with one H.264 stream (stream id 0xE0) and one Opus
    /// stream (private stream 1, 0xBD, with control headers as ffmpeg writes them).
    pub fn from_ts(bytes: &[u8]) -> Result<Clip, ClipError> {
        let mut reader = PesPacketReader::new(TsPacketReader::new(bytes));
        let mut video = Vec::new();
        let mut audio = Vec::new();
        while let Some(pes) = reader
            .read_pes_packet()
            .map_err(|e| ClipError::Ts(e.to_string()))?
        {
            let pts = pes.header.pts.ok_or(ClipError::MissingPts)?.as_u64();
            match pes.header.stream_id.as_u8() {
                0xE0 => video.push(video_frame(pts, &pes.data)),
                0xBD => split_opus_pes(pts, &pes.data, &mut audio)?,
                _ => {}
            }
        }
        if !video.iter().any(|f| f.keyframe) && !video.is_empty() {
            return Err(ClipError::Missing("an H.264 keyframe"));
        }
        if video.is_empty() && audio.is_empty() {
            return Err(ClipError::Missing("any media"));
        }
        let start = video
            .iter()
            .map(|f| f.pts_90k)
            .chain(audio.iter().map(|f| f.pts_90k))
            .min()
            .unwrap_or(0);
        for f in &mut video {
            f.pts_90k -= start;
        }
        for f in &mut audio {
            f.pts_90k -= start;
        }
        let video_end = match video.as_slice() {
            [.., a, b] => b.pts_90k + (b.pts_90k - a.pts_90k),
            [a] => a.pts_90k + 3000,
            [] => 0,
        };
        let audio_end = audio
            .last()
            .map_or(0, |f| f.pts_90k + u64::from(f.samples) * 15 / 8);
        Ok(Clip {
            video,
            audio,
            duration_90k: video_end.max(audio_end),
        })
    }
}

/// Builds one access unit from an Annex B PES payload, dropping access unit delimiters.
fn video_frame(pts_90k: u64, annex_b: &[u8]) -> ClipVideoFrame {
    let nals: Vec<Bytes> = split_annex_b(annex_b)
        .filter(|nal| nal[0] & 0x1F != 9)
        .map(Bytes::copy_from_slice)
        .collect();
    let keyframe = nals.iter().any(|nal| nal[0] & 0x1F == 5);
    ClipVideoFrame {
        pts_90k,
        nals,
        keyframe,
    }
}

/// Splits an Annex B byte stream into its NAL units (without start codes or trailing zeros).
pub fn split_annex_b(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| {
        let mut nal = &data[s..e];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        (!nal.is_empty()).then_some(nal)
    })
}

/// Splits one Opus PES payload (one or more `opus_control_header` + packet) into packets.
fn split_opus_pes(pts: u64, data: &[u8], out: &mut Vec<ClipAudioFrame>) -> Result<(), ClipError> {
    let mut pos = 0;
    let mut pts = pts;
    while pos < data.len() {
        let bad = ClipError::OpusHeader(pos);
        if data.len() < pos + 2 || data[pos] != 0x7F || data[pos + 1] & 0xE0 != 0xE0 {
            return Err(bad);
        }
        let flags = data[pos + 1];
        pos += 2;
        let mut size = 0usize;
        loop {
            let b = *data.get(pos).ok_or(ClipError::OpusHeader(pos))?;
            pos += 1;
            size += usize::from(b);
            if b != 0xFF {
                break;
            }
        }
        if flags & 0x10 != 0 {
            pos += 2;
        }
        if flags & 0x08 != 0 {
            pos += 2;
        }
        if flags & 0x04 != 0 {
            let len = *data.get(pos).ok_or(ClipError::OpusHeader(pos))?;
            pos += 1 + usize::from(len);
        }
        let packet = data
            .get(pos..pos + size)
            .ok_or(ClipError::OpusHeader(pos))?;
        pos += size;
        let samples = opus_toc::packet_samples(packet).ok_or(ClipError::OpusHeader(pos))?;
        out.push(ClipAudioFrame {
            pts_90k: pts,
            data: Bytes::copy_from_slice(packet),
            samples,
        });
        pts += u64::from(samples) * 15 / 8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_clip_has_the_documented_shape() {
        let clip = Clip::builtin();
        // 4 s at 30 fps, IDR every 30 frames, two slices per frame.
        assert_eq!(clip.video.len(), 120);
        assert_eq!(clip.video.iter().filter(|f| f.keyframe).count(), 4);
        assert!(clip.video[0].keyframe);
        let first_types: Vec<u8> = clip.video[0].nals.iter().map(|n| n[0] & 0x1F).collect();
        assert!(first_types.starts_with(&[7, 8]), "{first_types:?}");
        assert_eq!(first_types.iter().filter(|&&t| t == 5).count(), 2);
        assert!(clip.video[1].nals.iter().all(|n| n[0] & 0x1F != 9));
        // Frames are 3000 ticks apart (30 fps).
        assert_eq!(clip.video[1].pts_90k - clip.video[0].pts_90k, 3000);
        // 20 ms Opus packets, contiguous.
        assert!(clip.audio.len() >= 199, "{}", clip.audio.len());
        assert!(clip.audio.iter().all(|a| a.samples == 960));
        assert!(
            clip.audio
                .windows(2)
                .all(|w| w[1].pts_90k - w[0].pts_90k == 1800)
        );
        assert!(
            (359_000..=363_000).contains(&clip.duration_90k),
            "{}",
            clip.duration_90k
        );
    }

    #[test]
    fn annex_b_split_handles_both_start_code_lengths() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals: Vec<&[u8]> = split_annex_b(&data).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4]]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Clip::from_ts(&[0x47; 188 * 3]).is_err());
        assert!(Clip::from_ts(b"not a transport stream").is_err());
    }
}
