//! One publisher's whole recording core: RTP packets and Sender Reports in, TS bytes out.
//!
//! [`StreamMuxer`] strings the stages together — per track a [`ReorderBuffer`] and a
//! depacketizer, then the shared [`Timeline`] and the [`TsWriter`] — and keeps the bookkeeping
//! that sits between them: which tracks the file has, when a keyframe must be asked for, and
//! the counters a user sees in the summary. It is synchronous and does no I/O: the recorder task
//! feeds it events and writes out whatever [`StreamMuxer::output`] holds.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::h264::{H264Config, H264Depacketizer, H264Output, SpsInfo};
use super::opus::OpusDepacketizer;
use super::reorder::{Ordered, ReorderBuffer, ReorderConfig};
use super::timeline::{AvSync, Timeline, TimelineConfig};
use super::ts::{TsConfig, TsWriter};
use super::{RtpPacket, TrackKind};

/// Settings of a [`StreamMuxer`].
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Record video if the publisher sends it (`--novideo` turns this off).
    pub video: bool,
    /// Record audio if the publisher sends it (`--noaudio` turns this off).
    pub audio: bool,
    /// Reorder buffer limits (both tracks).
    pub reorder: ReorderConfig,
    /// H.264 depacketizer limits.
    pub h264: H264Config,
    /// Shortest time between two keyframe requests: a PLI storm helps no one.
    pub keyframe_request_interval: Duration,
    /// While no keyframe has been written, ask again this often (a PLI can be lost).
    pub keyframe_retry: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            video: true,
            audio: true,
            reorder: ReorderConfig::default(),
            h264: H264Config::default(),
            keyframe_request_interval: Duration::from_secs(1),
            keyframe_retry: Duration::from_secs(2),
        }
    }
}

/// Counters for the per-stream summary and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStats {
    /// Video frames (access units) written to the file.
    pub frames_written: u64,
    /// Of those, keyframes.
    pub keyframes_written: u64,
    /// Frames the depacketizer completed or dropped, i.e. frames the publisher sent that
    /// reached us (written + dropped + skipped before the first keyframe).
    pub frames_received: u64,
    /// Frames lost to packet loss or damage after the file started (each loss also drops the
    /// frames up to the next keyframe).
    pub frames_dropped: u64,
    /// Frames skipped before the first keyframe: a publisher that starts sending before the
    /// connection is up (Raspberry Ninja, media in the first offer) is joined mid-GOP, and
    /// a file can only start at a keyframe. Not loss, so counted apart from
    /// [`Self::frames_dropped`].
    pub frames_before_keyframe: u64,
    /// Opus packets written to the file.
    pub audio_written: u64,
    /// Opus packets dropped (before the file start, malformed, refused by the timeline).
    pub audio_dropped: u64,
    /// RTP packets given up as lost by the reorder buffers.
    pub packets_lost: u64,
    /// Duplicate RTP packets discarded (retransmissions, RTX probes).
    pub packets_duplicate: u64,
    /// Keyframe requests (PLIs) asked for.
    pub keyframe_requests: u64,
    /// Units the TS writer refused (non-monotonic time, oversize); nothing was written for them.
    pub units_refused: u64,
    /// Media time covered by the file so far, in 90 kHz units.
    pub duration_90k: u64,
    /// The A/V alignment measured from Sender Reports, in ms (audio later is positive).
    pub av_offset_ms: Option<f64>,
}

/// The recording core of one publisher.
pub struct StreamMuxer {
    config: StreamConfig,
    /// Tracks the file has (offered by the publisher and wanted by the user).
    tracks: TsConfig,
    video_in: ReorderBuffer,
    audio_in: ReorderBuffer,
    h264: H264Depacketizer,
    opus: OpusDepacketizer,
    timeline: Timeline<Bytes>,
    writer: Option<TsWriter>,
    out: Vec<u8>,
    first_pts: Option<u64>,
    last_pts: u64,
    stream_info: Option<SpsInfo>,
    /// A keyframe is needed (loss, start) and not yet asked for.
    want_keyframe: bool,
    last_keyframe_request: Option<Instant>,
    /// Video frames dropped (depacketizer + timeline) when the first keyframe was written.
    dropped_before_start: Option<u64>,
    /// Scratch list of reorder output, kept to avoid an allocation per packet.
    items: Vec<Ordered>,
    stats: StreamStats,
}

impl StreamMuxer {
    /// A muxer for a publisher that sends `video`/`audio` (what its offer said), of which the
    /// config's flags choose what is recorded. Returns `None` when nothing would be recorded.
    pub fn new(config: StreamConfig, offered_video: bool, offered_audio: bool) -> Option<Self> {
        let tracks = TsConfig {
            video: config.video && offered_video,
            audio: config.audio && offered_audio,
        };
        if !tracks.video && !tracks.audio {
            return None;
        }
        Some(Self {
            video_in: ReorderBuffer::new(config.reorder),
            audio_in: ReorderBuffer::new(config.reorder),
            h264: H264Depacketizer::new(config.h264),
            opus: OpusDepacketizer::new(),
            timeline: Timeline::new(TimelineConfig::new(tracks.video, tracks.audio)),
            writer: None,
            out: Vec::with_capacity(64 * 1024),
            first_pts: None,
            last_pts: 0,
            stream_info: None,
            want_keyframe: tracks.video,
            last_keyframe_request: None,
            dropped_before_start: None,
            items: Vec::with_capacity(16),
            stats: StreamStats::default(),
            tracks,
            config,
        })
    }

    /// The tracks this file has.
    pub fn tracks(&self) -> TsConfig {
        self.tracks
    }

    /// What the last SPS said (resolution, frame reordering), once one was seen.
    pub fn stream_info(&self) -> Option<&SpsInfo> {
        self.stream_info.as_ref()
    }

    /// Feeds one RTP packet of `kind` that arrived at `now`.
    pub fn push_rtp(&mut self, kind: TrackKind, packet: RtpPacket, now: Instant) {
        let tracks = self.tracks();
        match kind {
            TrackKind::Video if tracks.video => {
                let mut items = std::mem::take(&mut self.items);
                self.video_in.push(packet, now, &mut |o| items.push(o));
                self.video_items(&mut items, now);
                self.items = items;
            }
            TrackKind::Audio if tracks.audio => {
                let mut items = std::mem::take(&mut self.items);
                self.audio_in.push(packet, now, &mut |o| items.push(o));
                self.audio_items(&mut items, now);
                self.items = items;
            }
            _ => {}
        }
    }

    /// Feeds an RTCP Sender Report (NTP 32.32 ↔ RTP timestamp) of `kind`.
    pub fn sender_report(&mut self, kind: TrackKind, ntp: u64, rtp_timestamp: u32) {
        self.timeline.sender_report(kind, ntp, rtp_timestamp);
    }

    /// Lets time pass: releases packets whose holes were given up, keeps the PCR going while
    /// media stalls, and re-arms the keyframe request while no keyframe has come. Call it at
    /// [`Self::next_deadline`] or at least every 100 ms.
    pub fn poll(&mut self, now: Instant) {
        let mut items = std::mem::take(&mut self.items);
        self.video_in.poll_timeout(now, &mut |o| items.push(o));
        self.video_items(&mut items, now);
        self.audio_in.poll_timeout(now, &mut |o| items.push(o));
        self.audio_items(&mut items, now);
        self.items = items;
        if let (Some(writer), Some(pts)) = (self.writer.as_mut(), self.timeline.now_pts(now)) {
            writer.tick(pts, &mut self.out);
        }
        if self.tracks().video
            && self.stats.keyframes_written == 0
            && self
                .last_keyframe_request
                .is_none_or(|t| now.duration_since(t) >= self.config.keyframe_retry)
        {
            self.want_keyframe = true;
        }
    }

    /// The earliest time [`Self::poll`] has work to do (a reorder hole's deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.video_in.next_deadline(), self.audio_in.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True (once) when a keyframe should be requested from the publisher now; rate-limited
    /// to one per [`StreamConfig::keyframe_request_interval`].
    pub fn take_keyframe_request(&mut self, now: Instant) -> bool {
        if !self.want_keyframe {
            return false;
        }
        if self
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < self.config.keyframe_request_interval)
        {
            return false;
        }
        self.want_keyframe = false;
        self.last_keyframe_request = Some(now);
        self.stats.keyframe_requests += 1;
        true
    }

    /// TS bytes (whole 188-byte packets) ready for the file. The caller writes them and clears
    /// the buffer; what stays in it is written later, never lost.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Ends the stream: hands on what the reorder buffers still hold. Held audio that never
    /// got a file start is counted as dropped.
    pub fn finish(&mut self, now: Instant) {
        let mut items = std::mem::take(&mut self.items);
        self.video_in.flush(&mut |o| items.push(o));
        self.video_items(&mut items, now);
        self.h264.flush();
        self.audio_in.flush(&mut |o| items.push(o));
        self.audio_items(&mut items, now);
        self.items = items;
    }

    /// Counters so far.
    pub fn stats(&self) -> StreamStats {
        let h = self.h264.stats();
        let t = self.timeline.stats();
        let v = self.video_in.stats();
        let a = self.audio_in.stats();
        let o = self.opus.stats();
        let mut s = self.stats;
        let dropped = h.frames_dropped + t.dropped_video;
        let before = self.dropped_before_start.unwrap_or(dropped).min(dropped);
        s.frames_before_keyframe = before;
        s.frames_dropped = dropped - before;
        s.frames_received = s.frames_written + dropped;
        s.audio_dropped = o.empty + o.malformed + t.dropped_audio;
        s.packets_lost = v.lost + a.lost;
        s.packets_duplicate = v.duplicates + a.duplicates;
        s.duration_90k = self
            .first_pts
            .map_or(0, |f| self.last_pts.saturating_sub(f));
        s.av_offset_ms = self.av_sync().sr_correction_ms;
        s
    }

    /// The A/V alignment as the timeline measured it.
    pub fn av_sync(&self) -> AvSync {
        self.timeline.av_sync()
    }

    /// Runs ordered video items through the depacketizer and writes what it completes; leaves
    /// `items` empty (its capacity is reused for the next packet).
    fn video_items(&mut self, items: &mut Vec<Ordered>, now: Instant) {
        for item in items.drain(..) {
            let Self {
                h264,
                timeline,
                writer,
                out,
                tracks,
                stats,
                want_keyframe,
                stream_info,
                first_pts,
                last_pts,
                ..
            } = self;
            h264.push(item, &mut |o| match o {
                H264Output::AccessUnit(au) => {
                    let Some(pts) = timeline.video_pts(au.rtp_timestamp, now, au.keyframe) else {
                        return;
                    };
                    let w = writer.get_or_insert_with(|| new_writer(*tracks));
                    match w.write_video(pts, &au.data, au.keyframe, out) {
                        Ok(()) => {
                            stats.frames_written += 1;
                            stats.keyframes_written += u64::from(au.keyframe);
                            first_pts.get_or_insert(pts);
                            *last_pts = (*last_pts).max(pts);
                        }
                        Err(e) => {
                            stats.units_refused += 1;
                            tracing::debug!("video unit refused: {e}");
                        }
                    }
                }
                H264Output::KeyframeNeeded(reason) => {
                    tracing::debug!(?reason, "keyframe needed");
                    *want_keyframe = true;
                }
                H264Output::StreamInfo(info) => {
                    if info.may_reorder {
                        tracing::warn!(
                            "the publisher's H.264 stream may reorder frames (B-frames); \
                             timestamps in the file assume it does not"
                        );
                    }
                    *stream_info = Some(info);
                }
            });
            if self.dropped_before_start.is_none() && self.stats.keyframes_written > 0 {
                // The file just started: what was dropped until now was skipped waiting for
                // the first keyframe (a drop in the same packet's processing precedes the
                // keyframe it made way for).
                self.dropped_before_start =
                    Some(self.h264.stats().frames_dropped + self.timeline.stats().dropped_video);
            }
        }
        self.drain_audio();
    }

    /// Runs ordered audio items through the depacketizer into the timeline and writes what it
    /// has timed; leaves `items` empty.
    fn audio_items(&mut self, items: &mut Vec<Ordered>, now: Instant) {
        for item in items.drain(..) {
            let Self { opus, timeline, .. } = self;
            opus.push(item, &mut |p| {
                timeline.push_audio(p.rtp_timestamp, now, p.data)
            });
        }
        self.drain_audio();
    }

    /// Writes the audio the timeline has timed.
    fn drain_audio(&mut self) {
        while let Some((pts, data)) = self.timeline.pop_audio() {
            let tracks = self.tracks();
            let w = self.writer.get_or_insert_with(|| new_writer(tracks));
            match w.write_audio(pts, &data, &mut self.out) {
                Ok(()) => {
                    self.stats.audio_written += 1;
                    self.first_pts.get_or_insert(pts);
                    self.last_pts = self.last_pts.max(pts);
                }
                Err(e) => {
                    self.stats.units_refused += 1;
                    tracing::debug!("audio unit refused: {e}");
                }
            }
        }
    }
}

/// A TS writer for the file's tracks. The tracks are never both off (checked in
/// [`StreamMuxer::new`]), which is all `TsWriter::new` can refuse.
fn new_writer(tracks: TsConfig) -> TsWriter {
    TsWriter::new(tracks).expect("a muxer always has at least one track")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::Clip;
    use rtc::rtp::codec::h264::H264Payloader;
    use rtc::rtp::packetizer::Payloader;

    /// Video RTP packets of the clip's frames `from..to`, as a WebRTC sender makes them.
    fn video_packets(clip: &Clip, from: usize, to: usize) -> Vec<RtpPacket> {
        let mut payloader = H264Payloader::default();
        let mut out = Vec::new();
        let mut seq = 1000u16;
        for f in &clip.video[from..to] {
            let mut au = Vec::new();
            for n in &f.nals {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(n);
            }
            let payloads = payloader.payload(1200, &Bytes::from(au)).unwrap();
            let n = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                out.push(RtpPacket {
                    sequence: seq,
                    timestamp: 5000 + f.pts_90k as u32,
                    marker: i + 1 == n,
                    ssrc: 1,
                    payload_type: 102,
                    payload,
                });
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    fn feed(m: &mut StreamMuxer, packets: Vec<RtpPacket>, t0: Instant) {
        for (i, p) in packets.into_iter().enumerate() {
            m.push_rtp(
                TrackKind::Video,
                p,
                t0 + Duration::from_micros(i as u64 * 500),
            );
        }
    }

    /// Joining a publisher mid-GOP skips the frames up to the first keyframe; that is not loss
    /// and the summary must not call it so. A real loss later still counts as dropped.
    #[test]
    fn frames_before_the_first_keyframe_are_not_counted_as_loss() {
        let clip = Clip::builtin();
        let first_key_after_6 = (6..clip.video.len())
            .find(|&i| clip.video[i].keyframe)
            .expect("the clip has a keyframe after frame 6");
        let mut m = StreamMuxer::new(StreamConfig::default(), true, false).unwrap();
        let t0 = Instant::now();
        feed(&mut m, video_packets(&clip, 6, first_key_after_6 + 10), t0);
        let s = m.stats();
        assert_eq!(s.frames_before_keyframe, (first_key_after_6 - 6) as u64);
        assert_eq!(s.frames_dropped, 0);
        assert_eq!(s.frames_written, 10);
        assert_eq!(s.packets_lost, 0);
        assert_eq!(s.frames_received, (first_key_after_6 + 10 - 6) as u64);

        // Before any keyframe, everything is "before the keyframe".
        let mut m = StreamMuxer::new(StreamConfig::default(), true, false).unwrap();
        feed(&mut m, video_packets(&clip, 6, 12), t0);
        let s = m.stats();
        assert_eq!((s.frames_before_keyframe, s.frames_dropped), (6, 0));

        // A packet lost after the start: the damaged frame and those up to the next keyframe
        // are dropped to loss; the start's count stays.
        let k = first_key_after_6;
        let mut packets = video_packets(&clip, 6, k + 5);
        let lost_at = packets.len() - 3;
        packets.remove(lost_at);
        let mut m = StreamMuxer::new(StreamConfig::default(), true, false).unwrap();
        feed(&mut m, packets, t0);
        m.poll(t0 + Duration::from_secs(5));
        m.finish(t0 + Duration::from_secs(5));
        let s = m.stats();
        assert_eq!(s.frames_before_keyframe, (k - 6) as u64);
        assert!(s.frames_dropped >= 1, "{s:?}");
        assert_eq!(s.packets_lost, 1);
    }
}
