//! The recording core: RTP packets of one publisher in, MPEG-TS bytes out.
//!
//! Everything here is plain synchronous code with no I/O, so it can be unit-tested,
//! fuzzed and benchmarked without a network. The data flows one way:
//!
//! ```text
//! RtpPacket ─► ReorderBuffer ─► H264Depacketizer ─► AccessUnit ─┐
//!                            └► OpusDepacketizer ─► OpusPacket ─┴► sync hold ─┐
//!        Sender Reports (by SSRC) ─► Timeline (one clock) ◄──────────────────┘
//!                                        └► interleaver (PTS order) ─► TsWriter ─► bytes
//! ```
//!
//! Shared vocabulary lives in this file; each stage lives in its own module.

pub mod h264;
pub mod opus;
pub mod opus_toc;
pub mod reorder;
pub mod rtp;
pub mod stream;
pub mod timeline;
pub mod ts;
pub mod unwrap;

use bytes::Bytes;

/// Which of the (at most two) tracks of a publisher a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// H.264 video, RTP clock 90 kHz.
    Video,
    /// Opus audio, RTP clock 48 kHz.
    Audio,
}

impl TrackKind {
    /// The RTP clock rate of the track's codec (H.264: 90 kHz, Opus: 48 kHz, RFC 6184 / RFC 7587).
    pub fn clock_rate(self) -> u32 {
        match self {
            TrackKind::Video => 90_000,
            TrackKind::Audio => 48_000,
        }
    }
}

/// One RTP packet as the core sees it: only the fields the core needs, independent of the
/// WebRTC stack so the core can be fed from tests, fuzzers and files alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// RTP sequence number (wraps at 65536).
    pub sequence: u16,
    /// RTP timestamp in the codec clock (wraps at 2^32, starts at a random value).
    pub timestamp: u32,
    /// Marker bit: for H.264 it ends an access unit (RFC 6184 §5.1).
    pub marker: bool,
    /// Synchronisation source. Any value is valid, `0xFFFF_FFFF` included.
    pub ssrc: u32,
    /// RTP payload type.
    pub payload_type: u8,
    /// The payload, without RTP header, extensions or padding.
    pub payload: Bytes,
}

/// One H.264 access unit (one picture, possibly several slices), ready for the TS writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// RTP timestamp shared by every packet of the access unit.
    pub rtp_timestamp: u32,
    /// Annex B byte stream: each NAL unit preceded by `00 00 00 01`. No access unit
    /// delimiter (the TS writer adds one); SPS and PPS come first in every IDR access unit.
    pub data: Vec<u8>,
    /// True when the access unit holds an IDR slice (decoding can start here).
    pub keyframe: bool,
}

/// One Opus packet (RFC 7587: exactly one per RTP packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    /// RTP timestamp (48 kHz) of the packet's first sample.
    pub rtp_timestamp: u32,
    /// The Opus packet as sent (TOC byte first).
    pub data: Bytes,
    /// Duration in 48 kHz samples, from the TOC byte (RFC 6716 §3.1); 0 if unknown.
    pub samples: u32,
}
