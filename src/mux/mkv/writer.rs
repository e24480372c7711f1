//! The muxer: video frames and Opus packets in, Matroska bytes out, patches at the end.

use std::borrow::Cow;
use std::collections::VecDeque;

use super::codec::{allowed_in_webm, annex_b_to_length_prefixed, video_codec_private};
use super::ebml::{id, size_8};
use super::layout::{
    CLUSTER_HEADER_LEN, Cue, HeaderLayout, VideoTrack, cluster_start, cues, duration, header,
    seek_entry, simple_block_header,
};
use super::{AUDIO_TRACK, VIDEO_TRACK};
use crate::media::depacketize::opus_toc;
use crate::media::{Frame, VideoCodec};
use crate::mux::{Patch, Tracks};

/// A cluster of a file with video is closed when a unit would be this far (5 s) after its
/// start, even without a keyframe: block timestamps are 16-bit offsets from the cluster's,
/// and players seek and recover per cluster.
pub const VIDEO_CLUSTER_SPAN_MS: i64 = 5_000;
/// Clusters of an audio-only file span about this long (1 s), so seeking and a cut file lose
/// little.
pub const AUDIO_CLUSTER_SPAN_MS: i64 = 1_000;
/// At most this many Opus packets are held while a file with video waits for its first
/// keyframe (the header can only be written once the video's format is known).
pub const MAX_HELD_AUDIO_PACKETS: usize = 512;
/// … and they span at most 3 s (90 kHz units); older ones are dropped and counted.
pub const MAX_HELD_AUDIO_90K: u64 = 3 * 90_000;
/// … and take at most 1 MiB.
pub const MAX_HELD_AUDIO_BYTES: usize = 1 << 20;
/// Largest video frame accepted (16 MiB: several times a 4K keyframe).
pub const MAX_VIDEO_FRAME: usize = 16 << 20;
/// Largest Opus packet accepted (RFC 6716 allows 48 frames of 1275 bytes, about 60 KiB).
pub const MAX_OPUS_PACKET: usize = 1 << 16;
/// Clusters whose size is patched and which get a cue: 2^18 (three days of audio-only
/// clusters). Later clusters stay unknown-size and unindexed — still valid and playable —
/// so the memory kept for the end of the file stays bounded (≈ 40 bytes per cluster).
pub const MAX_INDEXED_CLUSTERS: usize = 1 << 18;

/// Why a unit was refused or a writer could not be made. Nothing is written for a refused
/// unit, so the file stays valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MkvError {
    /// The tracks have neither video nor audio.
    #[error("a Matroska file needs at least one track")]
    NoTracks,
    /// WebM holds VP8, VP9 and AV1 video only.
    #[error("WebM cannot hold {0} video")]
    NotInWebM(VideoCodec),
    /// A unit was given for a track the file does not have.
    #[error("the file has no {0} track")]
    NoSuchTrack(&'static str),
    /// A frame of another codec than the file's video track.
    #[error("the video track is {expected}, not {got}")]
    WrongCodec {
        /// The track's codec.
        expected: VideoCodec,
        /// The frame's codec.
        got: VideoCodec,
    },
    /// An empty frame or packet.
    #[error("empty {0} unit")]
    Empty(&'static str),
    /// A unit larger than [`MAX_VIDEO_FRAME`] / [`MAX_OPUS_PACKET`].
    #[error("{track} unit of {size} bytes is too large")]
    TooLarge {
        /// Which track.
        track: &'static str,
        /// Its size.
        size: usize,
    },
    /// The first video frame of the file was not a keyframe.
    #[error("video must start with a keyframe")]
    NeedKeyframe,
    /// The first keyframe carries no [`crate::media::VideoFormat`], so the track cannot be
    /// declared.
    #[error("the first keyframe has no video format")]
    NoFormat,
    /// The codec needs configuration data (AV1 `av1C`, H.264 SPS + PPS) that did not come.
    #[error("{0} video needs its configuration (sequence header / SPS and PPS)")]
    MissingConfig(VideoCodec),
    /// The configuration data is malformed.
    #[error("bad codec configuration: {0}")]
    BadConfig(&'static str),
    /// An H.264 access unit that is not an Annex B byte stream (no start code, no NAL unit).
    #[error("H.264 access unit is not Annex B")]
    NotAnnexB,
    /// A PTS went backwards (video must strictly increase, audio must not decrease).
    #[error("{track} PTS {pts} after {last}")]
    NonMonotonic {
        /// Which track.
        track: &'static str,
        /// The refused PTS.
        pts: u64,
        /// The previous PTS of that track.
        last: u64,
    },
    /// A PTS before the file's time 0 (the first unit written).
    #[error("{track} PTS {pts} is before the file start {start}")]
    BeforeStart {
        /// Which track.
        track: &'static str,
        /// The refused PTS.
        pts: u64,
        /// The file's first PTS.
        start: u64,
    },
    /// A unit more than 32.7 s before the open cluster's start: its block timestamp cannot
    /// be written (one track's clock far behind the other's).
    #[error("{track} PTS {pts} is too far behind the open cluster")]
    TooFarBehind {
        /// Which track.
        track: &'static str,
        /// The refused PTS.
        pts: u64,
    },
    /// The file was finished.
    #[error("the file is finished")]
    Finished,
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MkvStats {
    /// Bytes written (appended to `out`), the end's Cues included.
    pub bytes: u64,
    /// Clusters started.
    pub clusters: u64,
    /// Video blocks written.
    pub video_blocks: u64,
    /// Audio blocks written.
    pub audio_blocks: u64,
    /// Opus packets dropped while waiting for the first keyframe (past the hold bounds, or
    /// still held when the file was finished without video).
    pub audio_dropped: u64,
}

/// The cluster being written.
#[derive(Debug, Clone, Copy)]
struct OpenCluster {
    /// Its timestamp, in ms from the file start.
    timestamp: u64,
    /// Offset of its ID.
    offset: u64,
    /// True if its size is patched and it may get a cue (under [`MAX_INDEXED_CLUSTERS`]).
    indexed: bool,
}

/// Where a block goes.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// A new cluster at the block's time.
    NewCluster,
    /// The open cluster, at this offset from its timestamp.
    Open(i16),
}

/// A pure Matroska / WebM muxer for one video track (VP8, VP9, AV1, H.264) and/or one Opus
/// track; see the module doc of [`super`] for the file layout.
///
/// It appends bytes to the caller's buffer and counts every byte it ever emitted, so it
/// knows the file offsets of what it must patch at the end without reading anything back.
/// PTS are unwrapped 90 kHz values; the file's time 0 is the PTS of the first unit written
/// (the first keyframe, or the oldest audio packet still held when it came; for audio-only
/// files the first packet). Memory: the held audio (bounded), 8 bytes per cluster and one cue
/// per keyframe cluster (both bounded by [`MAX_INDEXED_CLUSTERS`]).
#[derive(Debug)]
pub struct MkvWriter {
    tracks: Tracks,
    webm: bool,
    /// Offset of the next byte to be appended.
    pos: u64,
    /// The header's patchable offsets (absolute), once written.
    layout: Option<HeaderLayout>,
    /// Absolute offset of the Segment's data.
    segment_data: u64,
    /// Absolute offset of the header's first byte (0: the writer's first output).
    header_at: u64,
    start_90k: Option<u64>,
    held: VecDeque<(u64, Vec<u8>)>,
    held_bytes: usize,
    cluster: Option<OpenCluster>,
    cluster_offsets: Vec<u64>,
    first_unindexed: Option<u64>,
    cues: Vec<Cue>,
    index_limit: usize,
    last_video: Option<u64>,
    video_step: u64,
    last_audio: Option<u64>,
    /// Largest end time (90 kHz, absolute) of any block, for Duration.
    end_90k: u64,
    finished: bool,
    stats: MkvStats,
}

/// 90 kHz ticks to the nearest millisecond (the file's timestamp unit).
fn to_ms(ticks: u64) -> u64 {
    ticks / 90 + u64::from(ticks % 90 >= 45)
}

impl MkvWriter {
    /// A writer for `tracks`, writing DocType `webm` if `webm` (then H.264 is refused) or
    /// `matroska`.
    pub fn new(tracks: Tracks, webm: bool) -> Result<MkvWriter, MkvError> {
        if tracks.video.is_none() && !tracks.audio {
            return Err(MkvError::NoTracks);
        }
        if let Some(codec) = tracks.video.filter(|&c| webm && !allowed_in_webm(c)) {
            return Err(MkvError::NotInWebM(codec));
        }
        Ok(MkvWriter {
            tracks,
            webm,
            pos: 0,
            layout: None,
            segment_data: 0,
            header_at: 0,
            start_90k: None,
            held: VecDeque::new(),
            held_bytes: 0,
            cluster: None,
            cluster_offsets: Vec::new(),
            first_unindexed: None,
            cues: Vec::new(),
            index_limit: MAX_INDEXED_CLUSTERS,
            last_video: None,
            video_step: 0,
            last_audio: None,
            end_90k: 0,
            finished: false,
            stats: MkvStats::default(),
        })
    }

    /// True if the file is WebM.
    pub fn is_webm(&self) -> bool {
        self.webm
    }

    /// The tracks this writer was made for.
    pub fn tracks(&self) -> Tracks {
        self.tracks
    }

    /// Counters so far.
    pub fn stats(&self) -> MkvStats {
        MkvStats {
            bytes: self.pos,
            ..self.stats
        }
    }

    /// Opus packets held while waiting for the first keyframe.
    pub fn held_audio(&self) -> usize {
        self.held.len()
    }

    /// The file's time 0 (90 kHz PTS), once known.
    pub fn start_pts(&self) -> Option<u64> {
        self.start_90k
    }

    /// Lowers the number of indexed clusters (tests of the bound).
    #[cfg(test)]
    pub(super) fn set_index_limit(&mut self, limit: usize) {
        self.index_limit = limit;
    }

    /// Writes one video frame presented at `pts_90k`. The first must be a keyframe with its
    /// [`crate::media::VideoFormat`] (it declares the track and lets the header be written,
    /// with the audio held until then); PTS must strictly increase. H.264 access units are
    /// converted from Annex B to length-prefixed NAL units.
    pub fn write_video(
        &mut self,
        pts_90k: u64,
        frame: &Frame,
        out: &mut Vec<u8>,
    ) -> Result<(), MkvError> {
        if self.finished {
            return Err(MkvError::Finished);
        }
        let codec = self.tracks.video.ok_or(MkvError::NoSuchTrack("video"))?;
        if frame.codec != codec {
            return Err(MkvError::WrongCodec {
                expected: codec,
                got: frame.codec,
            });
        }
        if frame.data.is_empty() {
            return Err(MkvError::Empty("video"));
        }
        if frame.data.len() > MAX_VIDEO_FRAME {
            return Err(MkvError::TooLarge {
                track: "video",
                size: frame.data.len(),
            });
        }
        match self.last_video {
            None if !frame.keyframe => return Err(MkvError::NeedKeyframe),
            Some(last) if pts_90k <= last => {
                return Err(MkvError::NonMonotonic {
                    track: "video",
                    pts: pts_90k,
                    last,
                });
            }
            _ => {}
        }
        let data: Cow<[u8]> = if codec == VideoCodec::H264 {
            Cow::Owned(annex_b_to_length_prefixed(&frame.data)?)
        } else {
            Cow::Borrowed(&frame.data)
        };
        if self.layout.is_none() {
            let format = frame.format.as_ref().ok_or(MkvError::NoFormat)?;
            let track = VideoTrack {
                codec,
                width: format.width,
                height: format.height,
                codec_private: video_codec_private(codec, format, &frame.data)?,
            };
            return self.start_with_keyframe(pts_90k, &track, &data, out);
        }
        let (ms, place) = self.place("video", pts_90k, frame.keyframe)?;
        self.put_block(place, VIDEO_TRACK, ms, &data, frame.keyframe, out);
        self.video_written(pts_90k);
        Ok(())
    }

    /// Writes one Opus packet presented at `pts_90k` (its block is flagged keyframe: every
    /// Opus packet can start decoding, and FFmpeg does the same). PTS must not decrease. In a
    /// file with video, packets before the first keyframe are held (bounded).
    pub fn write_audio(
        &mut self,
        pts_90k: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MkvError> {
        if self.finished {
            return Err(MkvError::Finished);
        }
        if !self.tracks.audio {
            return Err(MkvError::NoSuchTrack("audio"));
        }
        if packet.is_empty() {
            return Err(MkvError::Empty("audio"));
        }
        if packet.len() > MAX_OPUS_PACKET {
            return Err(MkvError::TooLarge {
                track: "audio",
                size: packet.len(),
            });
        }
        if let Some(last) = self.last_audio
            && pts_90k < last
        {
            return Err(MkvError::NonMonotonic {
                track: "audio",
                pts: pts_90k,
                last,
            });
        }
        if self.layout.is_none() {
            if self.tracks.video.is_some() {
                self.hold(pts_90k, packet);
                return Ok(());
            }
            self.start_90k = Some(pts_90k);
            self.write_header(None, out);
        }
        let (ms, place) = self.place("audio", pts_90k, false)?;
        self.put_block(place, AUDIO_TRACK, ms, packet, true, out);
        self.audio_written(pts_90k, packet);
        Ok(())
    }

    /// Ends the file: appends the Cues and returns the patches that give every indexed
    /// Cluster and the Segment their real sizes, fill in Duration and the SeekHead's Cues
    /// entry. Calling it again returns nothing; units given afterwards are refused. A file
    /// with video that never got a keyframe has no header and stays empty (its held audio is
    /// dropped and counted).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Patch> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let Some(layout) = self.layout else {
            self.stats.audio_dropped += self.held.len() as u64;
            self.held.clear();
            self.held_bytes = 0;
            return Vec::new();
        };
        let header_at = self.header_at;
        let at = |rel: usize| header_at + rel as u64;
        let clusters_end = self.pos;
        let mut patches = Vec::with_capacity(self.cluster_offsets.len() + 3);
        for (i, &offset) in self.cluster_offsets.iter().enumerate() {
            let end = self
                .cluster_offsets
                .get(i + 1)
                .copied()
                .or(self.first_unindexed)
                .unwrap_or(clusters_end);
            let size = end.saturating_sub(offset + CLUSTER_HEADER_LEN as u64);
            patches.push(Patch {
                offset: offset + 4,
                bytes: size_8(size).to_vec(),
            });
        }
        if !self.cues.is_empty() {
            let cues_pos = self.pos - self.segment_data;
            let bytes = cues(&self.cues);
            self.emit(out, &bytes);
            patches.push(Patch {
                offset: at(layout.cues_seek_at),
                bytes: seek_entry(id::CUES, cues_pos),
            });
        }
        // Duration must be > 0: a file whose units all have no known length (one video
        // frame, Opus packets with a bad TOC) gets one tick.
        let start = self.start_90k.unwrap_or(0);
        let ticks = self.end_90k.saturating_sub(start).max(1);
        patches.push(Patch {
            offset: at(layout.duration_at),
            bytes: duration(ticks as f64 / 90.0),
        });
        patches.push(Patch {
            offset: at(layout.segment_size_at),
            bytes: size_8(self.pos - self.segment_data).to_vec(),
        });
        patches.sort_by_key(|p| p.offset);
        patches
    }

    /// Holds an Opus packet until the first keyframe, dropping the oldest past the bounds.
    fn hold(&mut self, pts_90k: u64, packet: &[u8]) {
        self.held.push_back((pts_90k, packet.to_vec()));
        self.held_bytes += packet.len();
        self.last_audio = Some(pts_90k);
        while let Some(&(front, _)) = self.held.front() {
            let too_long = pts_90k.saturating_sub(front) > MAX_HELD_AUDIO_90K;
            if !too_long
                && self.held.len() <= MAX_HELD_AUDIO_PACKETS
                && self.held_bytes <= MAX_HELD_AUDIO_BYTES
            {
                break;
            }
            if let Some((_, p)) = self.held.pop_front() {
                self.held_bytes -= p.len();
                self.stats.audio_dropped += 1;
            }
        }
    }

    /// The first keyframe of a file with video: the header, the held audio that precedes the
    /// keyframe (its own cluster), the keyframe (a new cluster), then the rest of the held
    /// audio.
    fn start_with_keyframe(
        &mut self,
        pts_90k: u64,
        track: &VideoTrack,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MkvError> {
        let start = self.held.front().map_or(pts_90k, |&(p, _)| p.min(pts_90k));
        self.start_90k = Some(start);
        self.write_header(Some(track), out);
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let mut video_done = false;
        for (pts, packet) in held {
            if !video_done && pts >= pts_90k {
                self.put_video_keyframe(pts_90k, data, out);
                video_done = true;
            }
            // Held packets are in order and within 3 s of each other and of the start, so
            // they always fit; the check only keeps this path panic-free.
            match self.place("audio", pts, false) {
                Ok((ms, place)) => {
                    self.put_block(place, AUDIO_TRACK, ms, &packet, true, out);
                    self.audio_written(pts, &packet);
                }
                Err(_) => self.stats.audio_dropped += 1,
            }
        }
        if !video_done {
            self.put_video_keyframe(pts_90k, data, out);
        }
        Ok(())
    }

    /// Writes the first keyframe (always a new cluster).
    fn put_video_keyframe(&mut self, pts_90k: u64, data: &[u8], out: &mut Vec<u8>) {
        let ms = to_ms(pts_90k - self.start_90k.unwrap_or(pts_90k).min(pts_90k));
        self.put_block(Place::NewCluster, VIDEO_TRACK, ms, data, true, out);
        self.video_written(pts_90k);
    }

    /// Writes the EBML header to Tracks.
    fn write_header(&mut self, video: Option<&VideoTrack>, out: &mut Vec<u8>) {
        let (bytes, layout) = header(self.webm, video, self.tracks.audio);
        self.header_at = self.pos;
        self.segment_data = self.pos + layout.segment_data_at as u64;
        self.layout = Some(layout);
        self.emit(out, &bytes);
    }

    /// The block time (ms from the file start) of a unit and where it goes; refuses units
    /// before the start or too far behind the open cluster. A keyframe always starts a
    /// cluster; so does a unit [`VIDEO_CLUSTER_SPAN_MS`] (audio-only:
    /// [`AUDIO_CLUSTER_SPAN_MS`]) or more after the open cluster's start.
    fn place(
        &self,
        track: &'static str,
        pts_90k: u64,
        keyframe: bool,
    ) -> Result<(u64, Place), MkvError> {
        let start = self.start_90k.unwrap_or(pts_90k);
        if pts_90k < start {
            return Err(MkvError::BeforeStart {
                track,
                pts: pts_90k,
                start,
            });
        }
        let ms = to_ms(pts_90k - start);
        let Some(cluster) = self.cluster else {
            return Ok((ms, Place::NewCluster));
        };
        if keyframe {
            return Ok((ms, Place::NewCluster));
        }
        // Both are below 2^58 (u64 ticks / 90), so the difference fits an i64.
        let rel = ms as i64 - cluster.timestamp as i64;
        let span = if self.tracks.video.is_some() {
            VIDEO_CLUSTER_SPAN_MS
        } else {
            AUDIO_CLUSTER_SPAN_MS
        };
        if rel < i64::from(i16::MIN) {
            return Err(MkvError::TooFarBehind {
                track,
                pts: pts_90k,
            });
        }
        if rel >= span || rel > i64::from(i16::MAX) {
            return Ok((ms, Place::NewCluster));
        }
        Ok((ms, Place::Open(rel as i16)))
    }

    /// Writes one SimpleBlock at `ms`, opening a cluster first if `place` says so; records a
    /// cue for a cluster that starts with a video keyframe (or any cluster of an audio-only
    /// file).
    fn put_block(
        &mut self,
        place: Place,
        track: u64,
        ms: u64,
        data: &[u8],
        keyframe: bool,
        out: &mut Vec<u8>,
    ) {
        let rel = match place {
            Place::Open(rel) => rel,
            Place::NewCluster => {
                self.open_cluster(ms, out);
                let cue = track == AUDIO_TRACK && self.tracks.video.is_none()
                    || track == VIDEO_TRACK && keyframe;
                if let Some(c) = self.cluster.filter(|c| c.indexed && cue) {
                    self.cues.push(Cue {
                        time: ms,
                        track,
                        cluster_pos: c.offset - self.segment_data,
                        relative_pos: self.pos - (c.offset + CLUSTER_HEADER_LEN as u64),
                    });
                }
                0
            }
        };
        let mut head = Vec::with_capacity(16);
        simple_block_header(&mut head, track, rel, keyframe, data.len());
        self.emit(out, &head);
        self.emit(out, data);
        if track == VIDEO_TRACK {
            self.stats.video_blocks += 1;
        } else {
            self.stats.audio_blocks += 1;
        }
    }

    /// Starts a cluster at `ms` (the previous one simply ends where this one begins).
    fn open_cluster(&mut self, ms: u64, out: &mut Vec<u8>) {
        let offset = self.pos;
        let indexed = self.cluster_offsets.len() < self.index_limit;
        if indexed {
            self.cluster_offsets.push(offset);
        } else if self.first_unindexed.is_none() {
            self.first_unindexed = Some(offset);
        }
        self.cluster = Some(OpenCluster {
            timestamp: ms,
            offset,
            indexed,
        });
        let mut head = Vec::with_capacity(24);
        cluster_start(&mut head, ms);
        self.emit(out, &head);
        self.stats.clusters += 1;
    }

    fn video_written(&mut self, pts_90k: u64) {
        if let Some(last) = self.last_video {
            self.video_step = pts_90k - last;
        }
        self.last_video = Some(pts_90k);
        self.end_90k = self.end_90k.max(pts_90k.saturating_add(self.video_step));
    }

    fn audio_written(&mut self, pts_90k: u64, packet: &[u8]) {
        let samples = opus_toc::packet_samples(packet).unwrap_or(0);
        self.last_audio = Some(pts_90k);
        self.end_90k = self
            .end_90k
            .max(pts_90k.saturating_add(u64::from(samples) * 15 / 8));
    }

    /// Appends bytes and advances the file offset.
    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }
}
