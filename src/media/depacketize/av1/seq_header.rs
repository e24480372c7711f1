//! The AV1 sequence header OBU: the facts the recorder needs from it, and the
//! `AV1CodecConfigurationRecord` (`av1C`) the containers store.
//!
//! A file needs three things from the sequence header: the largest picture size (the track's
//! resolution), the profile / level / tier / bit depth / chroma format (the first four bytes of
//! `av1C`, which players read before decoding anything), and the header itself (the rest of
//! `av1C`). All of them sit behind variable-length parts (timing info, decoder model, up to 32
//! operating points), so the syntax is walked in full (AV1 specification §5.5), every read
//! checked against the end of the payload: the bytes come from the network.

/// `seq_profile` values above this are reserved (AV1 §6.4.1).
const MAX_PROFILE: u8 = 2;
/// `color_primaries` BT.709, `transfer_characteristics` sRGB, `matrix_coefficients`
/// identity: the one color description that implies 4:4:4 without coding subsampling bits.
const CP_BT_709: u8 = 1;
const TC_SRGB: u8 = 13;
const MC_IDENTITY: u8 = 0;
/// `color_primaries` etc. when no color description is coded.
const UNSPECIFIED: u8 = 2;
/// First byte of `av1C`: `marker` = 1, `version` = 1 (AV1-ISOBMFF §2.3.3).
pub const AV1C_MARKER_VERSION: u8 = 0x81;

/// What an AV1 sequence header says about the stream (the fields the containers and the logs
/// need; AV1 §6.4 names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceHeader {
    /// `seq_profile`: 0 Main (4:2:0 / mono, 8-10 bit), 1 High (4:4:4), 2 Professional.
    pub seq_profile: u8,
    /// `still_picture`: the sequence is a single picture.
    pub still_picture: bool,
    /// `reduced_still_picture_header`: every frame header is abbreviated and every frame is
    /// a key frame.
    pub reduced_still_picture_header: bool,
    /// Number of operating points (`operating_points_cnt_minus_1 + 1`), 1..=32.
    pub operating_points: u8,
    /// `seq_level_idx[0]`: level of the first operating point (`av1C` carries it).
    pub seq_level_idx_0: u8,
    /// `seq_tier[0]` (only coded for levels above 3.3).
    pub seq_tier_0: bool,
    /// `max_frame_width_minus_1 + 1`: the largest picture width in the sequence.
    pub max_frame_width: u32,
    /// `max_frame_height_minus_1 + 1`.
    pub max_frame_height: u32,
    /// `frame_id_numbers_present_flag`.
    pub frame_id_numbers_present: bool,
    /// `OrderHintBits` (0 when order hints are off).
    pub order_hint_bits: u8,
    /// `color_config()`.
    pub color: ColorConfig,
    /// `film_grain_params_present`.
    pub film_grain_params_present: bool,
}

/// `color_config()` of a sequence header (AV1 §5.5.2, §6.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColorConfig {
    /// `BitDepth`: 8, 10 or 12.
    pub bit_depth: u8,
    /// `high_bitdepth` as coded (`av1C` carries it).
    pub high_bitdepth: bool,
    /// `twelve_bit` (0 when not coded).
    pub twelve_bit: bool,
    /// `mono_chrome`.
    pub mono_chrome: bool,
    /// `color_primaries` (2 = unspecified when not coded).
    pub color_primaries: u8,
    /// `transfer_characteristics` (2 = unspecified when not coded).
    pub transfer_characteristics: u8,
    /// `matrix_coefficients` (2 = unspecified when not coded).
    pub matrix_coefficients: u8,
    /// `color_range`: full range when true.
    pub color_range: bool,
    /// `subsampling_x`.
    pub subsampling_x: bool,
    /// `subsampling_y`.
    pub subsampling_y: bool,
    /// `chroma_sample_position` (0 unknown, 1 vertical, 2 colocated).
    pub chroma_sample_position: u8,
    /// `separate_uv_delta_q`.
    pub separate_uv_delta_q: bool,
}

/// Why a sequence header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceHeaderError {
    /// The syntax runs past the end of the payload.
    #[error("AV1 sequence header is truncated")]
    Truncated,
    /// `seq_profile` is one of the reserved values 3..=7.
    #[error("AV1 sequence header has reserved seq_profile {0}")]
    ReservedProfile(u8),
    /// `reduced_still_picture_header` without `still_picture` (forbidden by AV1 §6.4).
    #[error("AV1 sequence header has reduced_still_picture_header without still_picture")]
    ReducedWithoutStill,
}

/// Reads bits most significant first, every read checked against the end.
struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<bool, SequenceHeaderError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(SequenceHeaderError::Truncated)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1 == 1;
        self.pos += 1;
        Ok(bit)
    }

    /// `f(n)` for `n <= 32`.
    fn bits(&mut self, n: u32) -> Result<u32, SequenceHeaderError> {
        debug_assert!(n <= 32);
        let mut value: u64 = 0;
        for _ in 0..n.min(32) {
            value = (value << 1) | u64::from(self.bit()?);
        }
        // At most 32 bits were shifted in.
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    }

    /// `f(n)` for `n <= 8`, as a byte.
    fn byte_bits(&mut self, n: u32) -> Result<u8, SequenceHeaderError> {
        Ok(u8::try_from(self.bits(n.min(8))?).unwrap_or(u8::MAX))
    }

    /// `uvlc()` (AV1 §4.10.3); only skipped here, so the value is not computed.
    fn skip_uvlc(&mut self) -> Result<(), SequenceHeaderError> {
        let mut leading_zeros = 0u32;
        while !self.bit()? {
            leading_zeros += 1;
        }
        if leading_zeros < 32 {
            self.bits(leading_zeros)?;
        }
        Ok(())
    }
}

/// Parses the payload of a sequence header OBU (after the OBU header and size field).
pub fn parse_sequence_header(payload: &[u8]) -> Result<SequenceHeader, SequenceHeaderError> {
    let mut r = BitReader::new(payload);
    let seq_profile = r.byte_bits(3)?;
    if seq_profile > MAX_PROFILE {
        return Err(SequenceHeaderError::ReservedProfile(seq_profile));
    }
    let still_picture = r.bit()?;
    let reduced_still_picture_header = r.bit()?;
    if reduced_still_picture_header && !still_picture {
        return Err(SequenceHeaderError::ReducedWithoutStill);
    }
    let operating_points;
    let seq_level_idx_0;
    let mut seq_tier_0 = false;
    if reduced_still_picture_header {
        operating_points = 1;
        seq_level_idx_0 = r.byte_bits(5)?;
    } else {
        let timing_info_present = r.bit()?;
        let mut decoder_model_info_present = false;
        let mut buffer_delay_length = 0;
        if timing_info_present {
            // timing_info(): num_units_in_display_tick, time_scale, equal_picture_interval.
            r.bits(32)?;
            r.bits(32)?;
            if r.bit()? {
                r.skip_uvlc()?;
            }
            decoder_model_info_present = r.bit()?;
            if decoder_model_info_present {
                // decoder_model_info(): buffer_delay_length_minus_1,
                // num_units_in_decoding_tick, buffer_removal_time_length_minus_1,
                // frame_presentation_time_length_minus_1.
                buffer_delay_length = r.bits(5)? + 1;
                r.bits(32)?;
                r.bits(5)?;
                r.bits(5)?;
            }
        }
        let initial_display_delay_present = r.bit()?;
        operating_points = r.byte_bits(5)? + 1;
        let mut level_0 = 0;
        for i in 0..operating_points {
            let _operating_point_idc = r.bits(12)?;
            let level = r.byte_bits(5)?;
            let tier = level > 7 && r.bit()?;
            if i == 0 {
                level_0 = level;
                seq_tier_0 = tier;
            }
            if decoder_model_info_present && r.bit()? {
                // operating_parameters_info(): decoder_buffer_delay, encoder_buffer_delay,
                // low_delay_mode_flag.
                r.bits(buffer_delay_length)?;
                r.bits(buffer_delay_length)?;
                r.bit()?;
            }
            if initial_display_delay_present && r.bit()? {
                r.bits(4)?;
            }
        }
        seq_level_idx_0 = level_0;
    }
    let frame_width_bits = r.bits(4)? + 1;
    let frame_height_bits = r.bits(4)? + 1;
    // At most 16 bits each, so the + 1 cannot overflow.
    let max_frame_width = r.bits(frame_width_bits)? + 1;
    let max_frame_height = r.bits(frame_height_bits)? + 1;
    let frame_id_numbers_present = !reduced_still_picture_header && r.bit()?;
    if frame_id_numbers_present {
        // delta_frame_id_length_minus_2, additional_frame_id_length_minus_1.
        r.bits(4)?;
        r.bits(3)?;
    }
    // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter.
    r.bits(3)?;
    let mut order_hint_bits = 0;
    if !reduced_still_picture_header {
        // enable_interintra_compound, enable_masked_compound, enable_warped_motion,
        // enable_dual_filter.
        r.bits(4)?;
        let enable_order_hint = r.bit()?;
        if enable_order_hint {
            // enable_jnt_comp, enable_ref_frame_mvs.
            r.bits(2)?;
        }
        let seq_choose_screen_content_tools = r.bit()?;
        // SELECT_SCREEN_CONTENT_TOOLS (2) when chosen per frame, else the coded bit.
        let seq_force_screen_content_tools = seq_choose_screen_content_tools || r.bit()?;
        if seq_force_screen_content_tools {
            let seq_choose_integer_mv = r.bit()?;
            if !seq_choose_integer_mv {
                // seq_force_integer_mv.
                r.bit()?;
            }
        }
        if enable_order_hint {
            order_hint_bits = r.byte_bits(3)? + 1;
        }
    }
    // enable_superres, enable_cdef, enable_restoration.
    r.bits(3)?;
    let color = color_config(&mut r, seq_profile)?;
    let film_grain_params_present = r.bit()?;
    Ok(SequenceHeader {
        seq_profile,
        still_picture,
        reduced_still_picture_header,
        operating_points,
        seq_level_idx_0,
        seq_tier_0,
        max_frame_width,
        max_frame_height,
        frame_id_numbers_present,
        order_hint_bits,
        color,
        film_grain_params_present,
    })
}

/// `color_config()` (AV1 §5.5.2); `seq_profile` is at most 2.
fn color_config(r: &mut BitReader, seq_profile: u8) -> Result<ColorConfig, SequenceHeaderError> {
    let high_bitdepth = r.bit()?;
    let twelve_bit = seq_profile == 2 && high_bitdepth && r.bit()?;
    let bit_depth = match (twelve_bit, high_bitdepth) {
        (true, _) => 12,
        (false, true) => 10,
        (false, false) => 8,
    };
    let mono_chrome = seq_profile != 1 && r.bit()?;
    let (color_primaries, transfer_characteristics, matrix_coefficients) = if r.bit()? {
        (r.byte_bits(8)?, r.byte_bits(8)?, r.byte_bits(8)?)
    } else {
        (UNSPECIFIED, UNSPECIFIED, UNSPECIFIED)
    };
    let mut c = ColorConfig {
        bit_depth,
        high_bitdepth,
        twelve_bit,
        mono_chrome,
        color_primaries,
        transfer_characteristics,
        matrix_coefficients,
        color_range: false,
        subsampling_x: true,
        subsampling_y: true,
        chroma_sample_position: 0,
        separate_uv_delta_q: false,
    };
    if mono_chrome {
        c.color_range = r.bit()?;
        return Ok(c);
    }
    if color_primaries == CP_BT_709
        && transfer_characteristics == TC_SRGB
        && matrix_coefficients == MC_IDENTITY
    {
        c.color_range = true;
        c.subsampling_x = false;
        c.subsampling_y = false;
    } else {
        c.color_range = r.bit()?;
        match seq_profile {
            0 => {}
            1 => {
                c.subsampling_x = false;
                c.subsampling_y = false;
            }
            _ if bit_depth == 12 => {
                c.subsampling_x = r.bit()?;
                c.subsampling_y = c.subsampling_x && r.bit()?;
            }
            _ => c.subsampling_y = false,
        }
        if c.subsampling_x && c.subsampling_y {
            c.chroma_sample_position = r.byte_bits(2)?;
        }
    }
    c.separate_uv_delta_q = r.bit()?;
    Ok(c)
}

impl SequenceHeader {
    /// The `AV1CodecConfigurationRecord` (AV1-ISOBMFF §2.3.3, also Matroska's `CodecPrivate`
    /// for `V_AV1`) for this header; `obu` is the whole sequence header OBU with its size
    /// field, stored as `configOBUs` so a player can set up its decoder from the container.
    /// No initial presentation delay is declared (WebRTC streams are low delay).
    pub fn av1c(&self, obu: &[u8]) -> Vec<u8> {
        let c = &self.color;
        let mut record = Vec::with_capacity(4 + obu.len());
        record.push(AV1C_MARKER_VERSION);
        record.push((self.seq_profile << 5) | (self.seq_level_idx_0 & 0x1F));
        record.push(
            (u8::from(self.seq_tier_0) << 7)
                | (u8::from(c.high_bitdepth) << 6)
                | (u8::from(c.twelve_bit) << 5)
                | (u8::from(c.mono_chrome) << 4)
                | (u8::from(c.subsampling_x) << 3)
                | (u8::from(c.subsampling_y) << 2)
                | (c.chroma_sample_position & 0x03),
        );
        // reserved (3 bits), initial_presentation_delay_present = 0, reserved (4 bits).
        record.push(0);
        record.extend_from_slice(obu);
        record
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes bits most significant first, to hand-encode sequence headers.
    #[derive(Default)]
    pub(crate) struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        pub(crate) fn put(&mut self, n: u32, value: u64) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                if (value >> i) & 1 == 1 {
                    let last = self.bytes.len() - 1;
                    self.bytes[last] |= 0x80 >> (self.bits % 8);
                }
                self.bits += 1;
            }
            self
        }
        pub(crate) fn flag(&mut self, b: bool) -> &mut Self {
            self.put(1, u64::from(b))
        }
        /// `trailing_bits()`: a one, then zeros to the byte boundary.
        pub(crate) fn finish(&mut self) -> Vec<u8> {
            self.put(1, 1);
            std::mem::take(&mut self.bytes)
        }
    }

    /// The sequence header a WebRTC AV1 encoder sends for 1280x720 (profile 0, level 3.1,
    /// no timing info, one operating point, 8-bit 4:2:0, BT.709 color description).
    pub(crate) fn webrtc_720p() -> Vec<u8> {
        let mut w = BitWriter::default();
        w.put(3, 0).flag(false).flag(false); // seq_profile, still_picture, reduced
        w.flag(false); // timing_info_present_flag
        w.flag(false); // initial_display_delay_present_flag
        w.put(5, 0); // operating_points_cnt_minus_1
        w.put(12, 0).put(5, 5); // operating_point_idc, seq_level_idx (3.1: no tier bit)
        w.put(4, 10).put(4, 9); // frame_width_bits_minus_1, frame_height_bits_minus_1
        w.put(11, 1279).put(10, 719);
        w.flag(false); // frame_id_numbers_present_flag
        w.put(3, 0b010); // 128x128 superblocks off, filter intra on, intra edge off
        w.put(4, 0); // interintra, masked, warped, dual filter
        w.flag(true).put(2, 0b11); // enable_order_hint, jnt_comp, ref_frame_mvs
        w.flag(true); // seq_choose_screen_content_tools
        w.flag(true); // seq_choose_integer_mv
        w.put(3, 6); // order_hint_bits_minus_1
        w.put(3, 0b011); // superres off, cdef, restoration
        // color_config: 8 bit, not mono, BT.709 description, limited range, colocated.
        w.flag(false)
            .flag(false)
            .flag(true)
            .put(8, 1)
            .put(8, 1)
            .put(8, 1);
        w.flag(false).put(2, 2).flag(false);
        w.flag(false); // film_grain_params_present
        w.finish()
    }

    #[test]
    fn hand_encoded_720p_header_parses_every_field() {
        let h = parse_sequence_header(&webrtc_720p()).unwrap();
        assert_eq!(
            h,
            SequenceHeader {
                seq_profile: 0,
                still_picture: false,
                reduced_still_picture_header: false,
                operating_points: 1,
                seq_level_idx_0: 5,
                seq_tier_0: false,
                max_frame_width: 1280,
                max_frame_height: 720,
                frame_id_numbers_present: false,
                order_hint_bits: 7,
                color: ColorConfig {
                    bit_depth: 8,
                    high_bitdepth: false,
                    twelve_bit: false,
                    mono_chrome: false,
                    color_primaries: 1,
                    transfer_characteristics: 1,
                    matrix_coefficients: 1,
                    color_range: false,
                    subsampling_x: true,
                    subsampling_y: true,
                    chroma_sample_position: 2,
                    separate_uv_delta_q: false,
                },
                film_grain_params_present: false,
            }
        );
    }

    #[test]
    fn av1c_packs_the_fields_then_the_obu() {
        let payload = webrtc_720p();
        let h = parse_sequence_header(&payload).unwrap();
        let mut obu = vec![0x0A, payload.len() as u8];
        obu.extend_from_slice(&payload);
        let record = h.av1c(&obu);
        // 0x81; profile 0 << 5 | level 5; tier 0, 8 bit, 4:2:0 (x = y = 1), position 2;
        // no initial presentation delay.
        assert_eq!(record[..4], [0x81, 0x05, 0b0000_1110, 0x00]);
        assert_eq!(record[4..], obu[..]);
    }

    #[test]
    fn timing_decoder_model_and_many_operating_points_are_walked() {
        // Profile 2, 12 bit 4:2:2 with timing info, a decoder model, display delays and three
        // operating points (the first at level 5.1, high tier), 16-bit width field.
        let mut w = BitWriter::default();
        w.put(3, 2).flag(false).flag(false);
        w.flag(true); // timing_info_present_flag
        w.put(32, 1).put(32, 90_000).flag(true); // ticks, time_scale, equal_picture_interval
        w.put(3, 0b001).put(2, 0b11); // uvlc: two leading zeros, the one, 2 bits of value
        w.flag(true); // decoder_model_info_present_flag
        w.put(5, 9).put(32, 1).put(5, 4).put(5, 4); // buffer_delay_length_minus_1 = 9 ...
        w.flag(true); // initial_display_delay_present_flag
        w.put(5, 2); // three operating points
        for (i, level) in [13u64, 8, 3].into_iter().enumerate() {
            w.put(12, 0x103).put(5, level);
            if level > 7 {
                w.flag(i == 0); // seq_tier: high for the first
            }
            w.flag(true).put(10, 5).put(10, 6).flag(false); // operating_parameters_info
            w.flag(true).put(4, 3); // initial_display_delay_minus_1
        }
        w.put(4, 15).put(4, 15).put(16, 3839).put(16, 2159);
        w.flag(true).put(4, 5).put(3, 2); // frame id numbers
        w.put(3, 0).put(4, 0).flag(false); // no order hint
        w.flag(false).flag(true); // screen content forced on, integer mv chosen
        w.flag(true); // seq_choose_integer_mv
        w.put(3, 0);
        // color_config: high_bitdepth, twelve_bit, mono off, no description, full range,
        // subsampling_x = 1, subsampling_y = 0 (4:2:2), separate_uv_delta_q.
        w.flag(true).flag(true).flag(false).flag(false).flag(true);
        w.flag(true).flag(false).flag(true);
        w.flag(true); // film grain
        let h = parse_sequence_header(&w.finish()).unwrap();
        assert_eq!((h.seq_profile, h.operating_points), (2, 3));
        assert_eq!((h.seq_level_idx_0, h.seq_tier_0), (13, true));
        assert_eq!((h.max_frame_width, h.max_frame_height), (3840, 2160));
        assert!(h.frame_id_numbers_present && h.film_grain_params_present);
        assert_eq!(h.order_hint_bits, 0);
        let c = h.color;
        assert_eq!(
            (c.bit_depth, c.high_bitdepth, c.twelve_bit),
            (12, true, true)
        );
        assert_eq!(
            (c.subsampling_x, c.subsampling_y, c.chroma_sample_position),
            (true, false, 0)
        );
        assert_eq!(
            (c.color_primaries, c.color_range, c.separate_uv_delta_q),
            (2, true, true)
        );
        let record = h.av1c(&[]);
        assert_eq!(record, [0x81, (2 << 5) | 13, 0b1110_1000, 0]);
    }

    #[test]
    fn reduced_still_picture_header_and_monochrome() {
        let mut w = BitWriter::default();
        w.put(3, 0).flag(true).flag(true).put(5, 1); // still, reduced, seq_level_idx 1
        w.put(4, 7).put(4, 7).put(8, 99).put(8, 49); // 100x50
        w.put(3, 0); // no frame id flag in reduced headers; superblock / intra tools
        w.put(3, 0); // superres, cdef, restoration
        w.flag(true).flag(true).flag(false).flag(true); // 10 bit, mono, no description, full
        w.flag(false); // film grain
        let h = parse_sequence_header(&w.finish()).unwrap();
        assert!(h.reduced_still_picture_header && h.still_picture);
        assert_eq!(
            (h.max_frame_width, h.max_frame_height, h.seq_level_idx_0),
            (100, 50, 1)
        );
        let c = h.color;
        assert_eq!(
            (c.bit_depth, c.mono_chrome, c.color_range),
            (10, true, true)
        );
        assert_eq!(h.av1c(&[])[..3], [0x81, 0x01, 0b0101_1100]);
    }

    #[test]
    fn srgb_identity_is_444_without_coded_bits() {
        let mut w = BitWriter::default();
        w.put(3, 1)
            .flag(false)
            .flag(false)
            .flag(false)
            .flag(false)
            .put(5, 0);
        w.put(12, 0).put(5, 0);
        w.put(4, 3).put(4, 3).put(4, 15).put(4, 15).flag(false);
        w.put(3, 0)
            .put(4, 0)
            .flag(false)
            .flag(true)
            .flag(true)
            .put(3, 0);
        // Profile 1: no mono bit. BT.709 / sRGB / identity: no range, no subsampling bits.
        w.flag(false).flag(true).put(8, 1).put(8, 13).put(8, 0);
        w.flag(false).flag(false);
        let h = parse_sequence_header(&w.finish()).unwrap();
        let c = h.color;
        assert!(c.color_range && !c.subsampling_x && !c.subsampling_y && !c.mono_chrome);
        assert_eq!((h.max_frame_width, h.max_frame_height), (16, 16));
    }

    #[test]
    fn truncation_and_reserved_values_are_errors_never_panics() {
        let full = webrtc_720p();
        for len in 0..full.len() - 1 {
            assert_eq!(
                parse_sequence_header(&full[..len]),
                Err(SequenceHeaderError::Truncated),
                "{len}"
            );
        }
        assert_eq!(
            parse_sequence_header(&[0xE0, 0, 0, 0]),
            Err(SequenceHeaderError::ReservedProfile(7))
        );
        assert_eq!(
            parse_sequence_header(&[0x08, 0, 0, 0]),
            Err(SequenceHeaderError::ReducedWithoutStill)
        );
        // A uvlc of 40 leading zeros (the value is clamped, not read) then nothing.
        let mut w = BitWriter::default();
        w.put(3, 0)
            .put(2, 0)
            .flag(true)
            .put(32, 1)
            .put(32, 1)
            .flag(true)
            .put(40, 0);
        w.flag(true);
        assert_eq!(
            parse_sequence_header(&w.finish()),
            Err(SequenceHeaderError::Truncated)
        );
        // Every short input: no panic.
        for a in 0..=255u8 {
            for b in [0x00, 0x5A, 0xFF] {
                let _ = parse_sequence_header(&[a, b, b, a, b]);
            }
        }
    }
}
