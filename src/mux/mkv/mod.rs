//! Matroska / WebM output: VP8, VP9, AV1 (and, in `.mkv`, H.264) video with Opus audio.
//!
//! A Matroska file is a tree of EBML elements (`ID | size | data`, see [`ebml`]). The writer
//! emits it front to back, never reading back, in this layout:
//!
//! ```text
//! offset 0
//! ├─ EBML header          DocType "webm" | "matroska", DocTypeVersion 4, DocTypeReadVersion 2
//! └─ Segment              size 01 FF FF FF FF FF FF FF (unknown) ──────────── patched at finish
//!    ├─ SeekHead          Seek → Info, Seek → Tracks, Void(21) ───── becomes Seek → Cues
//!    ├─ Info              TimestampScale 1 ms, MuxingApp/WritingApp "ninjarec x.y.z",
//!    │                    Void(11) ────────────────────────────────────── becomes Duration
//!    ├─ Tracks            1: video (CodecID, CodecPrivate, PixelWidth/Height)
//!    │                    2: A_OPUS (OpusHead, CodecDelay 0, SeekPreRoll 80 ms, 48 kHz, 2 ch)
//!    ├─ Cluster           size unknown ───────────────────────────────── patched at finish
//!    │  ├─ Timestamp      ms from the file start
//!    │  ├─ SimpleBlock    track 1, +0 ms, keyframe      ← a video keyframe opens a cluster
//!    │  ├─ SimpleBlock    track 2, +3 ms, keyframe      (every Opus block is "keyframe")
//!    │  └─ …              ≤ 5 s of blocks (1 s for audio-only files)
//!    ├─ Cluster …
//!    └─ Cues              appended at finish: a CuePoint per keyframe cluster
//! ```
//!
//! **Why unknown sizes.** While recording, the Segment and every Cluster say "size unknown";
//! a reader then takes an element as ending where the next top-level element (or the file)
//! starts. So a file cut at any byte by `kill -9` or a full disk plays up to its last complete
//! block in FFmpeg, mpv and browsers, with no repair step. On a clean close,
//! [`MkvWriter::finish`] appends the Cues and returns [`crate::mux::Patch`]es that write the
//! real sizes over the unknown ones (same 8-byte length), plus Duration and the Cues entry of
//! the SeekHead into space reserved by Void elements — so a patch never moves a byte, and the
//! finished file is seekable and has its duration like any other.
//!
//! **Why the header waits for the first keyframe.** The video track's entry needs the
//! resolution and, for AV1 and H.264, the codec configuration, which arrive with the first
//! keyframe; until then audio is held (bounded: [`writer::MAX_HELD_AUDIO_PACKETS`],
//! 3 s, 1 MiB; the oldest is dropped and counted). The dimensions are never omitted: the
//! header is always complete and valid.
//!
//! **Time.** Timestamps are unwrapped 90 kHz PTS in; the file's time 0 is the first unit
//! written, and blocks carry milliseconds (TimestampScale 1 ms, what WebM recommends and
//! every muxer writes: block offsets are 16-bit, so 1 ms units allow ±32 s around a cluster
//! start while 90 kHz PTS round by at most 0.5 ms — far below A/V sync tolerance).
//!
//! The parts: [`ebml`] encodes elements, [`codec`] knows each codec's CodecID, CodecPrivate
//! and block form, [`layout`] builds the bytes of each part of the file, and [`writer`] is the
//! state machine. `crate::testkit::mkv_check` is the structural checker the tests use.

pub mod codec;
pub mod ebml;
pub mod layout;
pub mod writer;

#[cfg(test)]
mod tests;

pub use writer::{MkvError, MkvStats, MkvWriter};

use super::{Container, ContainerKind, MuxError, Patch};
use crate::media::Frame;

/// Nanoseconds per timestamp unit (1 ms).
pub const TIMESTAMP_SCALE_NS: u64 = 1_000_000;
/// Track number (and UID) of the video track.
pub const VIDEO_TRACK: u64 = 1;
/// Track number (and UID) of the Opus track, 2 even in audio-only files so a number always
/// means the same track.
pub const AUDIO_TRACK: u64 = 2;

impl Container for MkvWriter {
    fn kind(&self) -> ContainerKind {
        if self.is_webm() {
            ContainerKind::WebM
        } else {
            ContainerKind::Matroska
        }
    }

    fn write_video(
        &mut self,
        pts_90k: u64,
        frame: &Frame,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        Ok(MkvWriter::write_video(self, pts_90k, frame, out)?)
    }

    fn write_audio(
        &mut self,
        pts_90k: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        Ok(MkvWriter::write_audio(self, pts_90k, packet, out)?)
    }

    /// Nothing to do: Matroska has no clock to keep running (unlike the TS PCR). A stall is
    /// just a later block timestamp; a unit 5 s or more after the open cluster's start opens
    /// a new cluster, so any gap fits the 16-bit block offsets.
    fn tick(&mut self, _now_pts_90k: u64, _out: &mut Vec<u8>) {}

    fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Patch> {
        MkvWriter::finish(self, out)
    }
}
