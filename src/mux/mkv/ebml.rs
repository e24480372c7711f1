//! EBML encoding: element IDs, variable-length sizes and the few element types we write.
//!
//! EBML (RFC 8794) is a binary XML: every element is `ID | size | data`. The ID is written as
//! its 1–4 bytes with the length marker included (`0x1A45DFA3`); the size is a *vint*: the
//! number of leading zero bits of the first byte, plus one, is the length in bytes, and the
//! remaining bits hold the value.
//!
//! ```text
//!   1xxx xxxx                                  7-bit value   (0 ..= 126)
//!   01xx xxxx  xxxx xxxx                      14-bit value
//!   ...
//!   0000 0001  xxxx xxxx × 7                  56-bit value   (8 bytes)
//!   0000 0001  1111 1111 × 7                  "unknown size" (all value bits set)
//! ```
//!
//! The value with all bits set is reserved for "unknown size", so a 1-byte size holds at most
//! 126. The writer uses the minimal length for elements whose size it knows, and a fixed
//! 8-byte vint for the Segment and Clusters, whose size is only known at the end: unknown
//! while live, then patched in place with an 8-byte known size of the same length.
//!
//! This is all the EBML the recorder needs (a general crate was evaluated and did not fit:
//! it must be sans-IO and report byte offsets for the patches), so it is written here with
//! exact-byte tests.

/// Element IDs the writer and the checker use (RFC 9559 §5 and RFC 8794 §11), with their
/// length markers, as written in the file.
pub mod id {
    /// EBML header (top level, the file's first element).
    pub const EBML: u32 = 0x1A45_DFA3;
    /// EBML version of the writer (1).
    pub const EBML_VERSION: u32 = 0x4286;
    /// Minimum EBML version a reader needs (1).
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    /// Longest ID in the file, in bytes (4).
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    /// Longest size vint in the file, in bytes (8).
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    /// `webm` or `matroska`.
    pub const DOC_TYPE: u32 = 0x4282;
    /// Version of the DocType the writer follows.
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    /// Minimum DocType version a reader needs.
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    /// Filler, allowed anywhere; reserves bytes that a patch fills later.
    pub const VOID: u32 = 0xEC;
    /// CRC-32 of the parent (never written; the checker skips it).
    pub const CRC32: u32 = 0xBF;

    /// Segment: everything after the EBML header.
    pub const SEGMENT: u32 = 0x1853_8067;
    /// Index of the top-level elements.
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    /// One index entry.
    pub const SEEK: u32 = 0x4DBB;
    /// The indexed element's ID (binary).
    pub const SEEK_ID: u32 = 0x53AB;
    /// The indexed element's position, relative to the Segment's data.
    pub const SEEK_POSITION: u32 = 0x53AC;

    /// Segment information.
    pub const INFO: u32 = 0x1549_A966;
    /// Nanoseconds per timestamp unit.
    pub const TIMESTAMP_SCALE: u32 = 0x2AD7B1;
    /// Duration in timestamp units (float).
    pub const DURATION: u32 = 0x4489;
    /// Library that muxed the file.
    pub const MUXING_APP: u32 = 0x4D80;
    /// Application that wrote the file.
    pub const WRITING_APP: u32 = 0x5741;

    /// Track list.
    pub const TRACKS: u32 = 0x1654_AE6B;
    /// One track.
    pub const TRACK_ENTRY: u32 = 0xAE;
    /// Number blocks refer to.
    pub const TRACK_NUMBER: u32 = 0xD7;
    /// Unique ID of the track.
    pub const TRACK_UID: u32 = 0x73C5;
    /// 1 video, 2 audio.
    pub const TRACK_TYPE: u32 = 0x83;
    /// Whether blocks may use lacing (never: one frame per block).
    pub const FLAG_LACING: u32 = 0x9C;
    /// Track language (`und`).
    pub const LANGUAGE: u32 = 0x22B59C;
    /// Codec ID string.
    pub const CODEC_ID: u32 = 0x86;
    /// Codec initialisation data.
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    /// Decoder delay in ns (Opus pre-skip).
    pub const CODEC_DELAY: u32 = 0x56AA;
    /// Ns of audio to decode and discard after a seek.
    pub const SEEK_PRE_ROLL: u32 = 0x56BB;
    /// Video settings.
    pub const VIDEO: u32 = 0xE0;
    /// Width of the coded picture.
    pub const PIXEL_WIDTH: u32 = 0xB0;
    /// Height of the coded picture.
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    /// Audio settings.
    pub const AUDIO: u32 = 0xE1;
    /// Sampling rate in Hz (float).
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    /// Channel count.
    pub const CHANNELS: u32 = 0x9F;

    /// A group of blocks sharing one timestamp base.
    pub const CLUSTER: u32 = 0x1F43_B675;
    /// Cluster timestamp, in timestamp units.
    pub const TIMESTAMP: u32 = 0xE7;
    /// A block with its flags (keyframe, ...) in the block header.
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    /// A block with extra elements (never written).
    pub const BLOCK_GROUP: u32 = 0xA0;
    /// Cluster position hint (never written).
    pub const POSITION: u32 = 0xA7;
    /// Size of the previous cluster (never written).
    pub const PREV_SIZE: u32 = 0xAB;

    /// Seek index.
    pub const CUES: u32 = 0x1C53_BB6B;
    /// One index entry.
    pub const CUE_POINT: u32 = 0xBB;
    /// Its time, in timestamp units.
    pub const CUE_TIME: u32 = 0xB3;
    /// Where that time is in one track.
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    /// The track.
    pub const CUE_TRACK: u32 = 0xF7;
    /// The cluster's position, relative to the Segment's data.
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
    /// The block's position, relative to the cluster's data.
    pub const CUE_RELATIVE_POSITION: u32 = 0xF0;

    /// Tags (never written; skipped by the checker).
    pub const TAGS: u32 = 0x1254_C367;
    /// Chapters (never written; skipped by the checker).
    pub const CHAPTERS: u32 = 0x1043_A770;
    /// Attachments (never written; skipped by the checker).
    pub const ATTACHMENTS: u32 = 0x1941_A469;
}

/// Largest value a size vint can hold (56 bits, minus the reserved all-ones value).
pub const MAX_SIZE: u64 = (1 << 56) - 2;

/// An 8-byte "unknown size": what the Segment and a live Cluster carry until patched.
pub const UNKNOWN_SIZE_8: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Appends an element ID (its bytes as written, length marker included).
pub fn put_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = (id.leading_zeros() / 8).min(3) as usize;
    out.extend_from_slice(&bytes[skip..]);
}

/// The number of bytes of an ID as written.
pub fn id_len(id: u32) -> usize {
    4 - (id.leading_zeros() / 8).min(3) as usize
}

/// The minimal vint length for `size` (1..=8); values above [`MAX_SIZE`] are clamped to 8.
pub fn size_len(size: u64) -> usize {
    (1..8).find(|&n| size < (1u64 << (7 * n)) - 1).unwrap_or(8)
}

/// Appends `size` as a vint of exactly `len` bytes (1..=8). The caller makes sure it fits:
/// `size < 2^(7·len) − 1`; a value that does not fit is written as [`MAX_SIZE`] in 8 bytes
/// rather than corrupting its neighbours (never reached by the writer).
pub fn put_size_len(out: &mut Vec<u8>, size: u64, len: usize) {
    let len = len.clamp(1, 8);
    let (size, len) = if size < (1u64 << (7 * len)) - 1 {
        (size, len)
    } else {
        (size.min(MAX_SIZE), 8)
    };
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Appends `size` as a minimal-length vint.
pub fn put_size(out: &mut Vec<u8>, size: u64) {
    put_size_len(out, size, size_len(size));
}

/// `size` as an 8-byte vint: the bytes a patch writes over [`UNKNOWN_SIZE_8`].
pub fn size_8(size: u64) -> [u8; 8] {
    let mut v = Vec::with_capacity(8);
    put_size_len(&mut v, size.min(MAX_SIZE), 8);
    let mut out = [0u8; 8];
    out.copy_from_slice(&v);
    out
}

/// Appends an element header: ID and minimal size.
pub fn put_header(out: &mut Vec<u8>, id: u32, size: u64) {
    put_id(out, id);
    put_size(out, size);
}

/// Appends a binary element.
pub fn put_bytes(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    put_header(out, id, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends a string element (ASCII / UTF-8, no terminator).
pub fn put_str(out: &mut Vec<u8>, id: u32, s: &str) {
    put_bytes(out, id, s.as_bytes());
}

/// Appends an unsigned integer element in its minimal big-endian length (one byte for 0).
pub fn put_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let len = (8 - (value.leading_zeros() / 8) as usize).max(1);
    put_header(out, id, len as u64);
    out.extend_from_slice(&value.to_be_bytes()[8 - len..]);
}

/// Appends an unsigned integer element that always takes 8 bytes of data, so it can be
/// patched to any value later.
pub fn put_uint_8(out: &mut Vec<u8>, id: u32, value: u64) {
    put_header(out, id, 8);
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends an 8-byte (double precision) float element.
pub fn put_float(out: &mut Vec<u8>, id: u32, value: f64) {
    put_header(out, id, 8);
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a master element whose children are already encoded in `body`.
pub fn put_master(out: &mut Vec<u8>, id: u32, body: &[u8]) {
    put_bytes(out, id, body);
}

/// Appends a Void element that takes exactly `total` bytes (header included), so the bytes it
/// reserves can later be overwritten by an element of the same total length. `total` must be
/// at least 2; smaller values write nothing.
pub fn put_void(out: &mut Vec<u8>, total: usize) {
    if total < 2 {
        return;
    }
    // One ID byte; pick the size length so that 1 + len + data == total.
    let len = (1..=8)
        .find(|&len| {
            total
                .checked_sub(1 + len)
                .is_some_and(|data| size_len(data as u64) <= len)
        })
        .unwrap_or(8);
    let data = total.saturating_sub(1 + len);
    put_id(out, id::VOID);
    put_size_len(out, data as u64, len);
    out.resize(out.len() + data, 0);
}

/// The total length (header + data) of an element with this ID and data length.
pub fn element_len(id: u32, data_len: u64) -> u64 {
    id_len(id) as u64 + size_len(data_len) as u64 + data_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn vint_sizes_use_the_minimal_length_and_avoid_the_reserved_value() {
        assert_eq!(bytes(|v| put_size(v, 0)), [0x80]);
        assert_eq!(bytes(|v| put_size(v, 1)), [0x81]);
        assert_eq!(bytes(|v| put_size(v, 126)), [0xFE]);
        // 127 would be 0xFF, the 1-byte "unknown": it takes two bytes.
        assert_eq!(bytes(|v| put_size(v, 127)), [0x40, 0x7F]);
        assert_eq!(bytes(|v| put_size(v, 16_382)), [0x7F, 0xFE]);
        assert_eq!(bytes(|v| put_size(v, 16_383)), [0x20, 0x3F, 0xFF]);
        assert_eq!(
            bytes(|v| put_size(v, MAX_SIZE)),
            [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]
        );
        assert_eq!(size_8(0), [0x01, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(size_8(0x1234), [0x01, 0, 0, 0, 0, 0, 0x12, 0x34]);
        assert_ne!(size_8(u64::MAX), UNKNOWN_SIZE_8);
        assert_eq!(bytes(|v| put_size_len(v, 5, 4)), [0x10, 0, 0, 5]);
        // A value too large for the asked length falls back to 8 bytes, never overflows.
        assert_eq!(
            bytes(|v| put_size_len(v, 200, 1)),
            [0x01, 0, 0, 0, 0, 0, 0, 200]
        );
        for n in [0u64, 1, 126, 127, 1000, 1 << 20, 1 << 40, MAX_SIZE] {
            assert_eq!(bytes(|v| put_size(v, n)).len(), size_len(n), "{n}");
        }
    }

    #[test]
    fn ids_keep_their_marker_bits() {
        assert_eq!(bytes(|v| put_id(v, id::EBML)), [0x1A, 0x45, 0xDF, 0xA3]);
        assert_eq!(
            bytes(|v| put_id(v, id::TIMESTAMP_SCALE)),
            [0x2A, 0xD7, 0xB1]
        );
        assert_eq!(bytes(|v| put_id(v, id::SEEK)), [0x4D, 0xBB]);
        assert_eq!(bytes(|v| put_id(v, id::SIMPLE_BLOCK)), [0xA3]);
        assert_eq!(id_len(id::CLUSTER), 4);
        assert_eq!(id_len(id::LANGUAGE), 3);
        assert_eq!(id_len(id::VOID), 1);
    }

    #[test]
    fn element_types() {
        assert_eq!(bytes(|v| put_uint(v, id::TRACK_NUMBER, 0)), [0xD7, 0x81, 0]);
        assert_eq!(bytes(|v| put_uint(v, id::TRACK_NUMBER, 2)), [0xD7, 0x81, 2]);
        assert_eq!(
            bytes(|v| put_uint(v, id::TIMESTAMP_SCALE, 1_000_000)),
            [0x2A, 0xD7, 0xB1, 0x83, 0x0F, 0x42, 0x40]
        );
        assert_eq!(
            bytes(|v| put_uint_8(v, id::SEEK_POSITION, 0x10)),
            [0x53, 0xAC, 0x88, 0, 0, 0, 0, 0, 0, 0, 0x10]
        );
        assert_eq!(
            bytes(|v| put_float(v, id::SAMPLING_FREQUENCY, 48_000.0)),
            [0xB5, 0x88, 0x40, 0xE7, 0x70, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(|v| put_str(v, id::CODEC_ID, "V_VP8")),
            [0x86, 0x85, b'V', b'_', b'V', b'P', b'8']
        );
        assert_eq!(
            bytes(|v| put_master(v, id::VIDEO, &[0xB0, 0x81, 1])),
            [0xE0, 0x83, 0xB0, 0x81, 1]
        );
        assert_eq!(element_len(id::SIMPLE_BLOCK, 200), 1 + 2 + 200);
    }

    #[test]
    fn voids_take_exactly_the_asked_length() {
        assert_eq!(bytes(|v| put_void(v, 2)), [0xEC, 0x80]);
        assert_eq!(
            bytes(|v| put_void(v, 11)),
            [0xEC, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        for total in 2..600 {
            let v = bytes(|v| put_void(v, total));
            assert_eq!(v.len(), total, "{total}");
            assert_eq!(v[0], 0xEC);
        }
        assert!(bytes(|v| put_void(v, 1)).is_empty());
        // 128: one size byte holds 126. 129: 127 would be the reserved 1-byte value, so two
        // size bytes and 126 data bytes.
        assert_eq!(&bytes(|v| put_void(v, 128))[..2], &[0xEC, 0xFE]);
        assert_eq!(&bytes(|v| put_void(v, 129))[..3], &[0xEC, 0x40, 126]);
    }
}
