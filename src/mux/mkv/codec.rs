//! What each codec needs in a Matroska file: its CodecID, its CodecPrivate and the form of its
//! blocks.
//!
//! | codec | CodecID | CodecPrivate | block data |
//! |---|---|---|---|
//! | VP8 | `V_VP8` | none | the frame as is |
//! | VP9 | `V_VP9` | none (optional in the mapping) | the frame / superframe as is |
//! | AV1 | `V_AV1` | `av1C` record (`VideoFormat::config`) | the temporal unit as is (OBUs with sizes, no temporal delimiter) |
//! | H.264 | `V_MPEG4/ISO/AVC` | `avcC` built from the SPS/PPS | Annex B converted to 4-byte length-prefixed NAL units |
//! | Opus | `A_OPUS` | `OpusHead` (RFC 7845 §5.1) | the packet as is |
//!
//! H.264 is Matroska-only: WebM allows VP8, VP9, AV1, Vorbis and Opus.

use h264_reader::nal::sps::{ChromaFormat, SeqParameterSet};
use h264_reader::rbsp::{BitReader, decode_nal};

use super::MkvError;
use crate::media::{VideoCodec, VideoFormat};

/// The Opus pre-skip the recorder declares: 0 samples (see [`opus_head`]).
pub const OPUS_PRE_SKIP: u16 = 0;
/// `SeekPreRoll` of the Opus track: 80 ms in ns, what the Matroska Opus mapping and FFmpeg
/// use (Opus needs 80 ms of decoding after a seek to converge).
pub const OPUS_SEEK_PRE_ROLL_NS: u64 = 80_000_000;

/// The Matroska CodecID of a video codec.
pub fn video_codec_id(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "V_MPEG4/ISO/AVC",
        VideoCodec::Vp8 => "V_VP8",
        VideoCodec::Vp9 => "V_VP9",
        VideoCodec::Av1 => "V_AV1",
    }
}

/// True if WebM may hold the codec (its guidelines allow VP8, VP9 and AV1 video).
pub fn allowed_in_webm(codec: VideoCodec) -> bool {
    codec != VideoCodec::H264
}

/// The CodecPrivate of the video track, from the first keyframe: `av1C` for AV1 (as the
/// depacketizer carries it), `avcC` for H.264 (from the SPS/PPS of the format, else of the
/// keyframe itself), nothing for VP8/VP9.
pub fn video_codec_private(
    codec: VideoCodec,
    format: &VideoFormat,
    keyframe: &[u8],
) -> Result<Option<Vec<u8>>, MkvError> {
    match codec {
        VideoCodec::Vp8 | VideoCodec::Vp9 => Ok(None),
        VideoCodec::Av1 => match &format.config {
            Some(av1c) if av1c.len() >= 4 && av1c[0] == 0x81 => Ok(Some(av1c.to_vec())),
            Some(_) => Err(MkvError::BadConfig("AV1 config is not an av1C record")),
            None => Err(MkvError::MissingConfig(VideoCodec::Av1)),
        },
        VideoCodec::H264 => {
            let from_config = format.config.as_deref().and_then(|c| avcc(c).ok());
            match from_config {
                Some(a) => Ok(Some(a)),
                None => avcc(keyframe).map(Some),
            }
        }
    }
}

/// The `OpusHead` identification header (RFC 7845 §5.1) Matroska stores as CodecPrivate:
/// version 1, 2 channels, pre-skip [`OPUS_PRE_SKIP`], input rate 48 kHz, gain 0, mapping
/// family 0 (mono or stereo, no mapping table).
///
/// Why pre-skip 0 (and CodecDelay 0): an RTP Opus stream carries no pre-skip, and a WebRTC
/// receiver plays the first decoded sample of a packet at the packet's RTP time. FFmpeg's
/// Matroska demuxer moves every Opus timestamp back by CodecDelay and its decoder then drops
/// pre-skip samples and moves the frame forward by as much, so with both 0 a packet given with
/// PTS T is decoded to a frame presented at exactly T, and every sample is kept — the recording
/// plays in the same sync as the receiver heard it, and as the MPEG-TS files do. (A non-zero
/// pre-skip would either cut the first packet's start or move the audio, and its right value
/// depends on the sender's encoder, which the recorder cannot know.)
pub fn opus_head() -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..8].copy_from_slice(b"OpusHead");
    h[8] = 1; // version
    h[9] = 2; // output channel count
    h[10..12].copy_from_slice(&OPUS_PRE_SKIP.to_le_bytes());
    h[12..16].copy_from_slice(&48_000u32.to_le_bytes());
    // h[16..18]: output gain 0 dB; h[18]: channel mapping family 0.
    h
}

/// The NAL units of an Annex B byte stream (start codes removed, trailing zero bytes of each
/// unit dropped, empty units skipped). Bytes before the first start code are ignored.
pub fn annex_b_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = match find_start_code(data) {
        Some((_, after)) => &data[after..],
        None => &data[data.len()..],
    };
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (nal, next) = match find_start_code(rest) {
                Some((at, after)) => (&rest[..at], &rest[after..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            if end > 0 {
                return Some(&nal[..end]);
            }
        }
    })
}

/// The position of the first `00 00 01` in `data` and the position just after it.
fn find_start_code(data: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(p) = memchr::memchr(1, &data[from..]) {
        let at = from + p;
        if at >= 2 && data[at - 1] == 0 && data[at - 2] == 0 {
            return Some((at - 2, at + 1));
        }
        from = at + 1;
    }
    None
}

/// True if `data` begins with a 3- or 4-byte start code.
fn starts_with_start_code(data: &[u8]) -> bool {
    data.starts_with(&[0, 0, 1]) || data.starts_with(&[0, 0, 0, 1])
}

/// An H.264 access unit converted from Annex B to the form Matroska (and MP4) store: each NAL
/// unit preceded by its length as 4 bytes big-endian (`lengthSizeMinusOne` = 3 in the avcC).
/// Every NAL unit is kept, in-band SPS/PPS included (they let decoders follow a resolution
/// change the track header cannot describe).
pub fn annex_b_to_length_prefixed(data: &[u8]) -> Result<Vec<u8>, MkvError> {
    if !starts_with_start_code(data) {
        return Err(MkvError::NotAnnexB);
    }
    let mut out = Vec::with_capacity(data.len() + 16);
    for nal in annex_b_nals(data) {
        let len = u32::try_from(nal.len()).map_err(|_| MkvError::NotAnnexB)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
    if out.is_empty() {
        return Err(MkvError::NotAnnexB);
    }
    Ok(out)
}

/// The `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §5.3.3.1) for the SPS and PPS found
/// in Annex B `data`: version 1, profile/compatibility/level from the first SPS, 4-byte NAL
/// lengths, every distinct SPS and PPS, and for the High profiles the chroma format and bit
/// depths (read from the SPS; left out if it cannot be parsed, as decoders do not need them).
pub fn avcc(data: &[u8]) -> Result<Vec<u8>, MkvError> {
    let mut sps: Vec<&[u8]> = Vec::new();
    let mut pps: Vec<&[u8]> = Vec::new();
    for nal in annex_b_nals(data) {
        let list = match nal[0] & 0x1F {
            7 => &mut sps,
            8 => &mut pps,
            _ => continue,
        };
        if !list.contains(&nal) {
            list.push(nal);
        }
    }
    let first = *sps
        .first()
        .ok_or(MkvError::MissingConfig(VideoCodec::H264))?;
    if pps.is_empty() {
        return Err(MkvError::MissingConfig(VideoCodec::H264));
    }
    if first.len() < 4 {
        return Err(MkvError::BadConfig("H.264 SPS shorter than 4 bytes"));
    }
    if sps.len() > 31 || pps.len() > 255 {
        return Err(MkvError::BadConfig("too many H.264 parameter sets"));
    }
    if sps
        .iter()
        .chain(&pps)
        .any(|p| p.len() > usize::from(u16::MAX))
    {
        return Err(MkvError::BadConfig("H.264 parameter set over 65535 bytes"));
    }
    let mut out = vec![
        1,
        first[1],
        first[2],
        first[3],
        0xFC | 3,
        0xE0 | sps.len() as u8,
    ];
    for p in &sps {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out.push(pps.len() as u8);
    for p in &pps {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    if matches!(first[1], 100 | 110 | 122 | 144)
        && let Some((chroma, luma8, chroma8)) = high_profile_fields(first)
    {
        out.extend_from_slice(&[0xFC | chroma, 0xF8 | luma8, 0xF8 | chroma8, 0]);
    }
    Ok(out)
}

/// `chroma_format_idc`, `bit_depth_luma_minus8` and `bit_depth_chroma_minus8` of an SPS.
fn high_profile_fields(sps: &[u8]) -> Option<(u8, u8, u8)> {
    let rbsp = decode_nal(sps).ok()?;
    let parsed = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
    let info = &parsed.chroma_info;
    let chroma = match info.chroma_format {
        ChromaFormat::Monochrome => 0,
        ChromaFormat::YUV420 => 1,
        ChromaFormat::YUV422 => 2,
        ChromaFormat::YUV444 => 3,
        ChromaFormat::Invalid(_) => return None,
    };
    (info.bit_depth_luma_minus8 <= 7 && info.bit_depth_chroma_minus8 <= 7).then_some((
        chroma,
        info.bit_depth_luma_minus8,
        info.bit_depth_chroma_minus8,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS and PPS of a 320x240 Constrained Baseline stream (level 1.3), as x264 writes them.
    const SPS: [u8; 24] = [
        0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x42, 0xA4, 0x80,
    ];
    const PPS: [u8; 5] = [0x68, 0xCB, 0x83, 0xCB, 0x20];

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn opus_head_bytes() {
        assert_eq!(
            opus_head(),
            [
                b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0, 0, 0x80, 0xBB, 0, 0, 0, 0,
                0
            ]
        );
    }

    #[test]
    fn avcc_from_sps_and_pps() {
        let config = annex_b(&[&SPS, &PPS]);
        let a = avcc(&config).unwrap();
        let mut want = vec![1, 0x42, 0xC0, 0x0D, 0xFF, 0xE1, 0, 24];
        want.extend_from_slice(&SPS);
        want.extend_from_slice(&[1, 0, 5]);
        want.extend_from_slice(&PPS);
        assert_eq!(a, want);
        // Duplicates are kept once; other NAL units are ignored.
        let twice = annex_b(&[&SPS, &PPS, &SPS, &[0x65, 1, 2], &PPS]);
        assert_eq!(avcc(&twice).unwrap(), want);
        assert_eq!(
            avcc(&annex_b(&[&PPS])),
            Err(MkvError::MissingConfig(VideoCodec::H264))
        );
        assert_eq!(
            avcc(&annex_b(&[&SPS])),
            Err(MkvError::MissingConfig(VideoCodec::H264))
        );
        assert!(matches!(
            avcc(&annex_b(&[&[0x67, 0x42], &PPS])),
            Err(MkvError::BadConfig(_))
        ));
    }

    #[test]
    fn avcc_for_high_profile_has_the_extension() {
        // x264's High profile SPS (320x240, 4:2:0, 8 bit).
        let sps = [
            0x67, 0x64, 0x00, 0x0D, 0xAC, 0xD9, 0x41, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03,
            0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x42, 0x99, 0x60,
        ];
        let a = avcc(&annex_b(&[&sps, &PPS])).unwrap();
        assert_eq!(&a[..4], &[1, 0x64, 0x00, 0x0D]);
        assert_eq!(&a[a.len() - 4..], &[0xFD, 0xF8, 0xF8, 0]);
    }

    #[test]
    fn annex_b_becomes_length_prefixed() {
        let au = [
            0, 0, 0, 1, 0x09, 0xF0, // AUD
            0, 0, 1, 0x65, 1, 2, 3, 0, 0, // IDR slice with trailing zeros
            0, 0, 0, 1, 0x65, 4, // second slice
        ];
        assert_eq!(
            annex_b_to_length_prefixed(&au).unwrap(),
            [
                0, 0, 0, 2, 0x09, 0xF0, 0, 0, 0, 4, 0x65, 1, 2, 3, 0, 0, 0, 2, 0x65, 4
            ]
        );
        assert_eq!(
            annex_b_to_length_prefixed(&[0x65, 1]),
            Err(MkvError::NotAnnexB)
        );
        assert_eq!(
            annex_b_to_length_prefixed(&[0, 0, 1, 0, 0, 0, 1]),
            Err(MkvError::NotAnnexB)
        );
        let nals: Vec<&[u8]> = annex_b_nals(&[9, 0, 0, 1, 7, 0, 0, 1, 0, 0, 0, 1, 8]).collect();
        assert_eq!(nals, [&[7][..], &[8]]);
    }

    #[test]
    fn codec_private_per_codec() {
        let f = |config: Option<Vec<u8>>| VideoFormat {
            width: 320,
            height: 240,
            may_reorder: false,
            config: config.map(Into::into),
        };
        assert_eq!(
            video_codec_private(VideoCodec::Vp8, &f(None), &[1]),
            Ok(None)
        );
        assert_eq!(
            video_codec_private(VideoCodec::Vp9, &f(None), &[1]),
            Ok(None)
        );
        let av1c = vec![0x81, 0, 0x0C, 0, 0x0A, 0x0B, 0, 0, 0];
        assert_eq!(
            video_codec_private(VideoCodec::Av1, &f(Some(av1c.clone())), &[1]),
            Ok(Some(av1c))
        );
        assert_eq!(
            video_codec_private(VideoCodec::Av1, &f(None), &[1]),
            Err(MkvError::MissingConfig(VideoCodec::Av1))
        );
        assert!(video_codec_private(VideoCodec::Av1, &f(Some(vec![1, 2])), &[1]).is_err());
        // H.264: from the config, else from the keyframe's own SPS/PPS.
        let config = annex_b(&[&SPS, &PPS]);
        let from_config = video_codec_private(VideoCodec::H264, &f(Some(config.clone())), &[])
            .unwrap()
            .unwrap();
        let mut keyframe = config.clone();
        keyframe.extend_from_slice(&[0, 0, 1, 0x65, 0x88]);
        assert_eq!(
            video_codec_private(VideoCodec::H264, &f(None), &keyframe),
            Ok(Some(from_config))
        );
        assert!(video_codec_private(VideoCodec::H264, &f(None), &[0, 0, 1, 0x65]).is_err());
        assert_eq!(video_codec_id(VideoCodec::H264), "V_MPEG4/ISO/AVC");
        assert!(!allowed_in_webm(VideoCodec::H264) && allowed_in_webm(VideoCodec::Av1));
    }
}
