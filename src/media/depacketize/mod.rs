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

/// The keyframe-wait policy every video depacketizer shares (see the module doc), kept in
/// one place so the codecs cannot drift apart: whether output is stopped until the next
/// keyframe, whether that stop was already reported, whether packets may be missing before
/// the next one, and the counters. Each codec keeps only its parsing and its frame builder
/// (and clears that builder itself on damage); it calls in here for every policy decision.
#[derive(Debug, Clone)]
pub(crate) struct KeyframeGate {
    /// True until a keyframe is output (at start and after damage).
    waiting: bool,
    /// True once [`VideoOutput::KeyframeNeeded`] was reported for the current wait.
    requested: bool,
    /// True when packets may be missing before the next packet (start, loss): a next frame
    /// that does not visibly begin is then taken for a loss, not for a malformed stream.
    after_gap: bool,
    /// True once any frame was output: a wait before that is [`KeyframeReason::Start`].
    ever_output: bool,
    /// The counters; the codec-specific ones (malformed, ignored, ...) are bumped directly.
    pub(crate) stats: DepacketizerStats,
}

impl KeyframeGate {
    /// A gate waiting for the first keyframe, with a gap assumed before the first packet
    /// (the publisher may have started before we joined).
    pub(crate) fn new() -> Self {
        Self {
            waiting: true,
            requested: false,
            after_gap: true,
            ever_output: false,
            stats: DepacketizerStats::default(),
        }
    }

    /// True while output is stopped until the next keyframe
    /// ([`VideoDepacketizer::waiting_for_keyframe`]).
    pub(crate) fn waiting(&self) -> bool {
        self.waiting
    }

    /// Why output waits when a frame is unusable through no fault of its own: nothing was
    /// output yet (the stream simply has not started), or something before it was lost.
    pub(crate) fn wait_reason(&self) -> KeyframeReason {
        if self.ever_output {
            KeyframeReason::Loss
        } else {
            KeyframeReason::Start
        }
    }

    /// Reports that a keyframe is needed, once per wait, so the caller's PLIs are not
    /// triggered by every dropped frame.
    pub(crate) fn request(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        if !self.requested {
            self.requested = true;
            self.stats.keyframe_requests += 1;
            out(VideoOutput::KeyframeNeeded(reason));
        }
    }

    /// Stops output until the next keyframe and reports it (once): what any damage does,
    /// besides the codec clearing its open frame.
    pub(crate) fn stop(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        self.waiting = true;
        self.request(reason, out);
    }

    /// Drops a complete frame that cannot be output (bad content, oversized, missing
    /// configuration) and stops output until the next keyframe.
    pub(crate) fn reject(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        self.dropped();
        self.stop(reason, out);
    }

    /// Counts a frame dropped because it was damaged (already reported when it was).
    pub(crate) fn dropped(&mut self) {
        self.stats.frames_dropped += 1;
    }

    /// Counts a frame that the end of the stream cut short ([`VideoDepacketizer::flush`]).
    pub(crate) fn unfinished(&mut self) {
        self.stats.frames_unfinished += 1;
    }

    /// Records a loss the reorder buffer reported (`lost` packets; 0 for a resync): packets
    /// may be missing before the next one. The codec then damages its open frame.
    pub(crate) fn lost(&mut self, lost: u64) {
        self.stats.lost_packets = self.stats.lost_packets.saturating_add(lost);
        self.after_gap = true;
    }

    /// Whether packets may be missing right before the packet now being taken, and clears
    /// that: called once per packet that opens (or continues) a frame.
    pub(crate) fn take_after_gap(&mut self) -> bool {
        std::mem::replace(&mut self.after_gap, false)
    }

    /// Whether a complete, sound frame may be output: not while waiting for a keyframe and
    /// this is none. A frame held back is counted and the wait reported (once).
    pub(crate) fn admits(&mut self, keyframe: bool, out: &mut dyn FnMut(VideoOutput)) -> bool {
        if self.waiting && !keyframe {
            self.dropped();
            self.request(self.wait_reason(), out);
            return false;
        }
        true
    }

    /// Books a frame being output: a keyframe ends the wait (and lets the next damage be
    /// reported again).
    pub(crate) fn output(&mut self, keyframe: bool) {
        if keyframe {
            self.waiting = false;
            self.requested = false;
            self.stats.keyframes_out += 1;
        }
        self.ever_output = true;
        self.stats.frames_out += 1;
    }
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
    /// A written frame's buffer, given back to hold a later frame. A frame's buffer is over
    /// malloc's per-thread cache, so allocating one per frame took its slow path (~2 % of the
    /// recorder's CPU at 32 publishers, issue 11). Dropped by depacketizers that do not reuse.
    fn recycle(&mut self, buffer: Vec<u8>) {
        drop(buffer);
    }
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
