//! The few facts the recorder needs from an H.264 sequence parameter set.
//!
//! The recorder logs the resolution of each publisher, and it must know whether the stream may
//! reorder frames: the TS writer sets DTS = PTS, which is only right when decode order equals
//! output order. WebRTC encoders never use B-frames, but a publisher could; this check makes
//! that visible instead of silently writing wrong timestamps. Parsing is delegated to
//! `h264-reader`, which also reads the VUI (`max_num_reorder_frames`).

use h264_reader::nal::sps::{PicOrderCntType, SeqParameterSet};
use h264_reader::rbsp::{BitReader, decode_nal};

/// What an SPS says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpsInfo {
    /// Width in pixels, after cropping.
    pub width: u32,
    /// Height in pixels, after cropping.
    pub height: u32,
    /// `profile_idc` (66 baseline, 77 main, 100 high, ...).
    pub profile_idc: u8,
    /// `level_idc` (e.g. 31 for level 3.1).
    pub level_idc: u8,
    /// `pic_order_cnt_type` (0, 1 or 2; 2 means output order is decode order).
    pub pic_order_cnt_type: u8,
    /// `max_num_reorder_frames` from the VUI bitstream restriction, when present.
    pub max_num_reorder_frames: Option<u32>,
    /// True when frames may be output in a different order than decoded (B-frames possible):
    /// POC type is not 2 and the VUI does not promise `max_num_reorder_frames == 0`.
    pub may_reorder: bool,
}

/// Why an SPS NAL unit could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpsError {
    /// The NAL unit is empty or not of type 7.
    #[error("not an SPS NAL unit")]
    NotSps,
    /// Emulation prevention bytes could not be removed.
    #[error("SPS has an invalid RBSP: {0}")]
    Rbsp(String),
    /// The syntax could not be parsed.
    #[error("SPS cannot be parsed: {0}")]
    Syntax(String),
}

/// Parses an SPS NAL unit (header byte included, no start code).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, SpsError> {
    if nal.first().is_none_or(|&h| h & 0x1F != 7) {
        return Err(SpsError::NotSps);
    }
    let rbsp = decode_nal(nal).map_err(|e| SpsError::Rbsp(e.to_string()))?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..]))
        .map_err(|e| SpsError::Syntax(format!("{e:?}")))?;
    let (width, height) = sps
        .pixel_dimensions()
        .map_err(|e| SpsError::Syntax(format!("{e:?}")))?;
    let pic_order_cnt_type = match sps.pic_order_cnt {
        PicOrderCntType::TypeZero { .. } => 0,
        PicOrderCntType::TypeOne { .. } => 1,
        PicOrderCntType::TypeTwo => 2,
    };
    let max_num_reorder_frames = sps
        .vui_parameters
        .as_ref()
        .and_then(|vui| vui.bitstream_restrictions.as_ref())
        .map(|r| r.max_num_reorder_frames);
    Ok(SpsInfo {
        width,
        height,
        profile_idc: sps.profile_idc.into(),
        level_idc: sps.level_idc,
        pic_order_cnt_type,
        max_num_reorder_frames,
        may_reorder: pic_order_cnt_type != 2 && max_num_reorder_frames != Some(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::clip::Clip;

    #[test]
    fn the_clip_sps_is_320x240_without_reordering() {
        let clip = Clip::builtin();
        let sps = clip.video[0]
            .nals
            .iter()
            .find(|n| n[0] & 0x1F == 7)
            .expect("first frame carries an SPS");
        let info = parse_sps(sps).unwrap();
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!(info.profile_idc, 66);
        assert!(!info.may_reorder, "{info:?}");
    }

    #[test]
    fn poc_type_zero_without_vui_may_reorder() {
        // Main profile 64x64, POC type 0, no VUI (hand-assembled bits):
        // profile 77, flags 0, level 30, then ue(sps_id=0)=1, ue(log2_max_frame_num-4=0)=1,
        // ue(poc_type=0)=1, ue(log2_max_poc_lsb-4=0)=1, ue(max_num_ref_frames=1)=010,
        // gaps=0, ue(width_mbs-1=3)=00100, ue(height_mbs-1=3)=00100, frame_mbs_only=1,
        // direct_8x8=1, cropping=0, vui=0, then the stop bit.
        // Bits: 1111 010 0 00100 00100 1 1 0 0 1 → padded.
        let bits = "11110100001000010011001";
        let mut bytes = vec![0x67, 77, 0, 30];
        let mut padded = bits.to_string();
        while !padded.len().is_multiple_of(8) {
            padded.push('0');
        }
        for chunk in padded.as_bytes().chunks(8) {
            bytes.push(u8::from_str_radix(std::str::from_utf8(chunk).unwrap(), 2).unwrap());
        }
        let info = parse_sps(&bytes).unwrap();
        assert_eq!((info.width, info.height), (64, 64));
        assert_eq!(info.pic_order_cnt_type, 0);
        assert_eq!(info.max_num_reorder_frames, None);
        assert!(info.may_reorder);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse_sps(&[]), Err(SpsError::NotSps));
        assert_eq!(parse_sps(&[0x68, 1, 2]), Err(SpsError::NotSps));
        assert!(parse_sps(&[0x67]).is_err());
        assert!(parse_sps(&[0x67, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
