//! Depacketizers: ordered RTP packets of one track in, whole frames (or Opus packets) out.
//!
//! One file per codec, all behind [`VideoDepacketizer`], so the rest of the core never knows
//! which video codec it records. Every video depacketizer keeps the same promises, because
//! the file must only ever hold decodable pictures:
//!
//! * a frame that lost a packet, or whose packets do not parse, is never handed on;
//! * after any damage nothing is handed on until the next keyframe, and
//!   [`VideoOutput::KeyframeNeeded`] says so once (the caller sends a PLI, rate-limited);
//! * memory is bounded by [`DepacketizerLimits`] whatever the publisher sends;
//! * every drop is counted in [`DepacketizerStats`].
//!
//! Adding a codec: a file here implementing [`VideoDepacketizer`], one arm in
//! [`video_depacketizer`], and a [`crate::media::VideoCodec`] variant.

pub mod av1;
pub mod h264;
pub mod opus;
pub mod opus_toc;
pub mod vp8;
pub mod vp9;

use super::reorder::Ordered;
use super::{Frame, VideoCodec};

/// Limits every video depacketizer applies; untrusted input must not grow memory without
/// bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepacketizerLimits {
    /// Largest frame in bytes; a larger one is dropped (and a keyframe asked for).
    pub max_frame_bytes: usize,
    /// Most RTP packets (or NAL units / OBUs) in one frame; more drop it.
    pub max_parts_per_frame: usize,
    /// Largest codec configuration (SPS, PPS, AV1 sequence header) kept.
    pub max_config_bytes: usize,
}

impl Default for DepacketizerLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 8 << 20,
            max_parts_per_frame: 1024,
            max_config_bytes: 1024,
        }
    }
}

/// Why decoding cannot continue until the next keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// The stream did not start with a usable keyframe.
    Start,
    /// Packets were lost (or the sequence restarted).
    Loss,
    /// A packet could not be parsed, or the frame's end was missing.
    Malformed,
    /// A frame exceeded the size or part count bound.
    Oversized,
    /// A keyframe arrived without the configuration it needs (H.264 SPS/PPS, AV1 sequence
    /// header).
    MissingParameterSets,
}

/// What a video depacketizer hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoOutput {
    /// A complete, decodable frame.
    Frame(Frame),
    /// Output stopped until the next keyframe: the caller should send a PLI (and rate-limit
    /// it). Reported once each time output stops, not for every dropped frame.
    KeyframeNeeded(KeyframeReason),
}

/// Counters every video depacketizer keeps, for the summary and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DepacketizerStats {
    /// Frames handed on.
    pub frames_out: u64,
    /// Of those, keyframes.
    pub keyframes_out: u64,
    /// Frames dropped because they were damaged or waited for a keyframe.
    pub frames_dropped: u64,
    /// A frame still incomplete when the stream ended (`flush`): cut by the end of the
    /// recording, not lost.
    pub frames_unfinished: u64,
    /// Packets that were malformed (bad headers, fragments out of order, ...).
    pub malformed_packets: u64,
    /// Packets of a mode WebRTC does not use (H.264 interleaved mode, ...).
    pub unsupported_packets: u64,
    /// Packets without content (padding only) or of reserved types.
    pub ignored_packets: u64,
    /// Packets the reorder buffer reported lost.
    pub lost_packets: u64,
    /// Times a keyframe became needed.
    pub keyframe_requests: u64,
    /// Configuration units (H.264 SPS) that could not be parsed (still passed on).
    pub unparsed_config: u64,
}

/// Turns the ordered RTP packets of one video track into whole [`Frame`]s. See the module
/// doc for the promises every implementation keeps.
pub trait VideoDepacketizer: Send + std::fmt::Debug {
    /// The codec this depacketizer reads.
    fn codec(&self) -> VideoCodec;
    /// Takes one item from the reorder buffer, handing on what it completes.
    fn push(&mut self, item: Ordered, out: &mut dyn FnMut(VideoOutput));
    /// Ends the stream: drops a frame whose last packet never came (counted as unfinished).
    fn flush(&mut self);
    /// True while output is stopped until the next keyframe.
    fn waiting_for_keyframe(&self) -> bool;
    /// The counters so far.
    fn stats(&self) -> DepacketizerStats;
}

/// The depacketizer for `codec`: the one place a codec is registered.
pub fn video_depacketizer(
    codec: VideoCodec,
    limits: DepacketizerLimits,
) -> Box<dyn VideoDepacketizer> {
    match codec {
        VideoCodec::H264 => Box::new(h264::H264Depacketizer::new(limits)),
        VideoCodec::Vp8 => Box::new(vp8::Vp8Depacketizer::new(limits)),
        VideoCodec::Vp9 => Box::new(vp9::Vp9Depacketizer::new(limits)),
        VideoCodec::Av1 => Box::new(av1::Av1Depacketizer::new(limits)),
    }
}
