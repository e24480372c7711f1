//! The recording core, media side: RTP packets of one publisher in, timed frames out.
//!
//! Everything here is plain synchronous code with no I/O, so it can be unit-tested, fuzzed
//! and benchmarked without a network. The data flows one way:
//!
//! ```text
//! RtpPacket ─► ReorderBuffer ─► depacketize::{h264,vp8,vp9,av1} ─► Frame ──────┐
//!   (arrival kept)           └► depacketize::opus ───────────────► OpusPacket ─┴► sync hold ─┐
//!        Sender Reports (by SSRC) ─► Timeline (one clock) ◄──────────────────────────────────┘
//!                                        └► interleaver (PTS order) ─► crate::mux::Container ─► bytes
//! ```
//!
//! [`stream::StreamMuxer`] strings the stages together. The shared vocabulary (what a packet,
//! a frame and a codec are) lives in this file; each stage lives in its own module, and each
//! codec in its own file under [`depacketize`].

pub mod depacketize;
pub mod reorder;
pub mod rtp;
pub mod segment;
pub mod stream;
pub mod timeline;
pub mod unwrap;

use std::time::Instant;

use bytes::Bytes;

/// Which of the (at most two) tracks of a publisher a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Video, RTP clock 90 kHz (every video codec WebRTC uses).
    Video,
    /// Opus audio, RTP clock 48 kHz.
    Audio,
}

impl TrackKind {
    /// The RTP clock rate of the track (video: 90 kHz for H.264, VP8, VP9 and AV1; Opus:
    /// 48 kHz, RFC 7587).
    pub fn clock_rate(self) -> u32 {
        match self {
            TrackKind::Video => 90_000,
            TrackKind::Audio => 48_000,
        }
    }
}

/// A video codec the recorder can record. Adding one means a depacketizer file under
/// [`depacketize`] and one line in [`depacketize::video_depacketizer`] (and, for the file,
/// its codec ID in the containers that can hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// H.264 (RFC 6184); frames are Annex B access units.
    H264,
    /// VP8 (RFC 7741); frames are whole VP8 frames.
    Vp8,
    /// VP9 (RFC 9628); frames are whole VP9 frames (a superframe when several spatial layers
    /// of one picture were sent).
    Vp9,
    /// AV1 (the AV1 RTP payload format); frames are temporal units as a low-overhead OBU
    /// stream (every OBU with its size field, no temporal delimiter).
    Av1,
}

impl VideoCodec {
    /// Every codec, in the order the recorder prefers them when asked for `any`.
    pub const ALL: [VideoCodec; 4] = [
        VideoCodec::H264,
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::Av1,
    ];

    /// The short lower-case name users type (`--codec`) and logs show.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "vp8",
            VideoCodec::Vp9 => "vp9",
            VideoCodec::Av1 => "av1",
        }
    }

    /// The codec of an SDP / WebRTC MIME type (`video/VP8`, case-insensitive), if recorded.
    pub fn from_mime(mime: &str) -> Option<VideoCodec> {
        let sub = mime.rsplit('/').next().unwrap_or(mime);
        VideoCodec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(sub))
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::Vp8 => "VP8",
            VideoCodec::Vp9 => "VP9",
            VideoCodec::Av1 => "AV1",
        })
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
    /// Marker bit: for video it ends a frame (RFC 6184 §5.1, RFC 7741 §4.1, ...).
    pub marker: bool,
    /// Synchronisation source. Any value is valid, `0xFFFF_FFFF` included.
    pub ssrc: u32,
    /// RTP payload type.
    pub payload_type: u8,
    /// The payload, without RTP header, extensions or padding.
    pub payload: Bytes,
}

/// What a video track's frame needs to be declared in a file: resolution and, for codecs
/// whose container entry needs it, the codec's configuration record. Carried by keyframes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VideoFormat {
    /// Width in pixels (0 when the codec's headers did not say).
    pub width: u32,
    /// Height in pixels (0 when unknown).
    pub height: u32,
    /// True when frames may be output in another order than decoded (H.264 B-frames): the
    /// containers write DTS = PTS, which is only right without reordering.
    pub may_reorder: bool,
    /// The codec's configuration, when it has one: for H.264 the SPS and PPS (Annex B, as
    /// they precede the IDR); for AV1 the `AV1CodecConfigurationRecord` (`av1C`: 4 bytes of
    /// profile/level/tier/bit depth/subsampling, then the sequence header OBU with its size
    /// field), which Matroska and MP4 store as is. VP8 and VP9 have none.
    pub config: Option<Bytes>,
}

/// One whole video frame (a picture, all of its slices / partitions / layers), decodable
/// given the frames before it since the last keyframe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The codec the bytes are in.
    pub codec: VideoCodec,
    /// RTP timestamp shared by every packet of the frame.
    pub rtp_timestamp: u32,
    /// When the frame's first packet arrived (the timeline anchors on it).
    pub arrival: Instant,
    /// True when decoding can start here (IDR, VP8/VP9 key frame, AV1 key frame with its
    /// sequence header).
    pub keyframe: bool,
    /// The frame in the codec's storage form (see [`VideoCodec`]).
    pub data: Vec<u8>,
    /// On keyframes: what the stream looks like from here on.
    pub format: Option<VideoFormat>,
}

/// One Opus packet (RFC 7587: exactly one per RTP packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    /// RTP timestamp (48 kHz) of the packet's first sample.
    pub rtp_timestamp: u32,
    /// When the packet arrived.
    pub arrival: Instant,
    /// The Opus packet as sent (TOC byte first).
    pub data: Bytes,
    /// Duration in 48 kHz samples, from the TOC byte (RFC 6716 §3.1); 0 if unknown.
    pub samples: u32,
}
