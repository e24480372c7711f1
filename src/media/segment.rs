//! Files of one stream: where the core cuts a recording into segments, what each file holds,
//! and the holes in it.
//!
//! A recording may be cut into several files (`--segment-seconds`, `--segment-mb`, or a new
//! file after a disk error). The cut is made by the core, not by the file task, because only
//! the core knows where a file may start: at a video keyframe (or, for audio only, at any
//! Opus packet), with every unit of an earlier PTS in the file before it and every later one
//! after it. Played back to back, the files are the continuous recording: no unit is missing
//! or written twice at a join. See [`crate::media::stream::StreamMuxer::take_ended`].

use crate::media::TrackKind;
use crate::mux::Patch;

/// When a recording is cut into segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentPolicy {
    /// A file ends at the first keyframe at least this long (90 kHz) after its first unit.
    pub max_duration_90k: Option<u64>,
    /// A file ends at the first keyframe once it holds at least this many bytes.
    pub max_bytes: Option<u64>,
}

impl SegmentPolicy {
    /// True when a file that started at `first_pts`, has reached `pts` and holds `bytes` is
    /// due to end at its next cut point.
    pub fn due(&self, first_pts: u64, pts: u64, bytes: u64) -> bool {
        self.max_duration_90k
            .is_some_and(|max| pts.saturating_sub(first_pts) >= max)
            || self.max_bytes.is_some_and(|max| bytes >= max)
    }
}

/// What one file of the stream holds, counted as units are written to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSpan {
    /// PTS (90 kHz) of its first unit.
    pub first_pts: Option<u64>,
    /// Largest PTS written.
    pub last_pts: u64,
    /// Video frames written.
    pub frames: u64,
    /// Of those, keyframes.
    pub keyframes: u64,
    /// Opus packets written.
    pub audio: u64,
    /// Bytes the container produced for it (end bytes included once finished).
    pub bytes: u64,
}

impl FileSpan {
    /// Counts one unit at `pts` that took `bytes`.
    pub(crate) fn wrote(&mut self, pts: u64, bytes: usize) {
        self.first_pts.get_or_insert(pts);
        self.last_pts = self.last_pts.max(pts);
        self.bytes += bytes as u64;
    }
}

/// A file the core has finished because the next one begins: its last bytes, the patches
/// for bytes already written, and what it holds. The file task appends `tail`, applies
/// `patches`, closes the file and opens the next one before writing anything else.
#[derive(Debug)]
pub struct FileEnd {
    /// Bytes that belong at the end of the finished file (not yet handed out).
    pub tail: Vec<u8>,
    /// Patches for the finished file's earlier bytes (Matroska sizes).
    pub patches: Vec<Patch>,
    /// What it holds.
    pub span: FileSpan,
}

/// Why media is missing from a stretch of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// Packets were lost (or frames dropped waiting for a keyframe) in between.
    Loss,
    /// Nothing was sent (a paused camera, Opus DTX, a publisher that stalled).
    NoMedia,
}

impl GapCause {
    /// The name used in the room timeline.
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Loss => "loss",
            GapCause::NoMedia => "no-media",
        }
    }
}

/// A stretch of one track with no media in the file, in the file's PTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The track.
    pub track: TrackKind,
    /// PTS of the last unit before the hole.
    pub from_pts: u64,
    /// PTS of the first unit after it.
    pub to_pts: u64,
    /// Why.
    pub cause: GapCause,
}

/// Audio further apart than this (100 ms, more than the longest single Opus packet needs
/// with its neighbours' jitter) is a gap.
const AUDIO_GAP_90K: u64 = 9_000;
/// Video frames further apart than this (2 s) with nothing dropped in between are a gap
/// (a slower frame rate is not).
const VIDEO_IDLE_GAP_90K: u64 = 180_000;
/// Gaps kept until taken (a bound for a caller that never takes them).
const MAX_GAPS: usize = 64;

/// Finds gaps from the PTS of units as they are written and a loss counter that says whether
/// anything was lost in between.
#[derive(Debug, Default)]
pub(crate) struct GapWatch {
    last: [Option<(u64, u64)>; 2],
    gaps: Vec<Gap>,
    /// Gaps dropped because the caller did not take them.
    pub(crate) overflow: u64,
}

impl GapWatch {
    /// A unit of `track` written at `pts`, with `losses` the track's loss counter now.
    pub(crate) fn unit(&mut self, track: TrackKind, pts: u64, losses: u64) {
        let slot = &mut self.last[track as usize];
        if let Some((prev, prev_losses)) = *slot {
            let step = pts.saturating_sub(prev);
            let lost = losses > prev_losses;
            let cause = match track {
                TrackKind::Video if lost => Some(GapCause::Loss),
                TrackKind::Video if step > VIDEO_IDLE_GAP_90K => Some(GapCause::NoMedia),
                TrackKind::Audio if step > AUDIO_GAP_90K => Some(if lost {
                    GapCause::Loss
                } else {
                    GapCause::NoMedia
                }),
                _ => None,
            };
            if let Some(cause) = cause {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.remove(0);
                    self.overflow += 1;
                }
                self.gaps.push(Gap {
                    track,
                    from_pts: prev,
                    to_pts: pts,
                    cause,
                });
            }
        }
        *slot = Some((pts, losses));
    }

    /// The gaps found since the last call.
    pub(crate) fn take(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_due_by_duration_or_size() {
        let none = SegmentPolicy::default();
        assert!(!none.due(0, u64::MAX, u64::MAX));
        let p = SegmentPolicy {
            max_duration_90k: Some(90_000),
            max_bytes: None,
        };
        assert!(!p.due(1000, 90_999, 1 << 40));
        assert!(p.due(1000, 91_000, 0));
        let p = SegmentPolicy {
            max_duration_90k: None,
            max_bytes: Some(1000),
        };
        assert!(!p.due(0, 1 << 40, 999));
        assert!(p.due(0, 0, 1000));
    }

    #[test]
    fn gaps_are_losses_or_silences_by_track() {
        let mut w = GapWatch::default();
        // Video at 30 fps, then a frame after a loss, then a 3 s pause without loss.
        w.unit(TrackKind::Video, 0, 0);
        w.unit(TrackKind::Video, 3000, 0);
        w.unit(TrackKind::Video, 30_000, 4);
        w.unit(TrackKind::Video, 33_000, 4);
        w.unit(TrackKind::Video, 303_000, 4);
        // Audio every 20 ms, a 40 ms step (one packet lost: not a gap), a 200 ms hole with
        // loss and a 1 s one without.
        w.unit(TrackKind::Audio, 0, 0);
        w.unit(TrackKind::Audio, 1800, 0);
        w.unit(TrackKind::Audio, 5400, 1);
        w.unit(TrackKind::Audio, 23_400, 9);
        w.unit(TrackKind::Audio, 113_400, 9);
        let gaps = w.take();
        assert_eq!(
            gaps,
            vec![
                Gap {
                    track: TrackKind::Video,
                    from_pts: 3000,
                    to_pts: 30_000,
                    cause: GapCause::Loss
                },
                Gap {
                    track: TrackKind::Video,
                    from_pts: 33_000,
                    to_pts: 303_000,
                    cause: GapCause::NoMedia
                },
                Gap {
                    track: TrackKind::Audio,
                    from_pts: 5400,
                    to_pts: 23_400,
                    cause: GapCause::Loss
                },
                Gap {
                    track: TrackKind::Audio,
                    from_pts: 23_400,
                    to_pts: 113_400,
                    cause: GapCause::NoMedia
                },
            ]
        );
        assert!(w.take().is_empty());
    }

    #[test]
    fn gaps_not_taken_are_bounded() {
        let mut w = GapWatch::default();
        for i in 0..200u64 {
            w.unit(TrackKind::Audio, i * 100_000, 0);
        }
        assert_eq!(w.take().len(), MAX_GAPS);
        assert_eq!(w.overflow, 199 - MAX_GAPS as u64);
    }
}
