//! VP8 RTP depacketizer (RFC 7741): ordered packets of one track in, whole VP8 frames out.
//!
//! Every packet starts with a payload descriptor (RFC 7741 §4.2: the X/N/S/PID byte, then
//! optionally the I/L/T/K extension byte, a 7- or 15-bit PictureID, TL0PICIDX and the
//! TID/Y/KEYIDX byte). The descriptor is parsed with bounds checks and stripped; what follows
//! is a piece of the VP8 frame, and the pieces of one frame are simply concatenated (the
//! partitions follow each other in the frame, so nothing has to be reordered). A frame is
//! the packets of one RTP timestamp; it must visibly begin (S=1 and PID=0 on its first
//! packet, which RFC 7741 makes mandatory) and it ends at the marker bit. A key frame is one
//! whose frame tag has the inverse key frame bit P clear (RFC 6386 §9.1); its resolution
//! comes from the key frame header after the start code `9d 01 2a`, which is checked.
//!
//! Policy, the same as for H.264 (see [`super`]): a frame that lost a packet, or whose
//! packets or header do not parse, is never handed on. After any damage (a gap or restart
//! reported by the reorder buffer, a malformed packet, an oversized frame, a frame whose end
//! or start is missing) nothing is handed on until the next key frame, and
//! [`VideoOutput::KeyframeNeeded`] says so once per wait. Memory is bounded by
//! [`DepacketizerLimits::max_frame_bytes`] and [`DepacketizerLimits::max_parts_per_frame`]
//! (packets per frame), and every dropped packet or frame is counted.
//!
//! Written here rather than taken from `rtc`'s `Vp8Packet`, which only parses the descriptor
//! (no frame assembly, no loss handling) and refuses packets shorter than four bytes.

use std::time::Instant;

use crate::media::depacketize::{
    DepacketizerLimits, DepacketizerStats, KeyframeGate, KeyframeReason, VideoDepacketizer,
    VideoOutput,
};
use crate::media::reorder::Ordered;
use crate::media::{Frame, VideoCodec, VideoFormat};

/// The start code every VP8 key frame header carries after its frame tag (RFC 6386 §9.1).
const KEYFRAME_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
/// Largest buffer reserved up front for a frame (bigger ones grow as usual).
const MAX_SIZE_HINT: usize = 1 << 20;

/// Why a packet or a frame was refused; logged at debug level so a
/// `KeyframeNeeded(Malformed)` in the field can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Malformed {
    #[error("payload descriptor runs past the end of the packet")]
    TruncatedDescriptor,
    #[error("no VP8 data after the payload descriptor")]
    NoData,
    #[error("the first packet of a frame does not have S=1, PID=0")]
    NoFrameStart,
    #[error("S=1, PID=0 again inside a frame")]
    SecondFrameStart,
    #[error("partition index went back inside a frame")]
    PartitionBack,
    #[error("PictureID changed inside a frame")]
    PictureIdChanged,
    #[error("frame shorter than its frame tag or key frame header")]
    TruncatedFrame,
    #[error("key frame without the start code 9d 01 2a")]
    BadStartCode,
    #[error("key frame of zero width or height")]
    ZeroSize,
    #[error("first partition runs past the end of the frame")]
    PartitionTooLong,
}

/// The payload descriptor fields the depacketizer acts on (RFC 7741 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    /// S: the packet's first VP8 byte begins a partition.
    start: bool,
    /// PID: the partition the packet's first VP8 byte belongs to.
    partition: u8,
    /// PictureID (7 or 15 bits) when the I bit is set: must not change inside a frame.
    picture_id: Option<u16>,
    /// Length of the descriptor: the VP8 data starts here.
    len: usize,
}

impl Descriptor {
    /// True when the packet begins a frame: S=1 on partition 0 (RFC 7741 §4.2 requires both
    /// on a frame's first packet).
    fn begins_frame(&self) -> bool {
        self.start && self.partition == 0
    }
}

/// Takes the next byte of a descriptor.
fn take(rest: &mut &[u8]) -> Result<u8, Malformed> {
    let (&b, tail) = rest.split_first().ok_or(Malformed::TruncatedDescriptor)?;
    *rest = tail;
    Ok(b)
}

/// Parses the payload descriptor at the start of `payload`.
fn parse_descriptor(payload: &[u8]) -> Result<Descriptor, Malformed> {
    let mut rest = payload;
    let first = take(&mut rest)?;
    let mut picture_id = None;
    if first & 0x80 != 0 {
        // X: the extension byte |I|L|T|K| RSV | follows.
        let ext = take(&mut rest)?;
        if ext & 0x80 != 0 {
            // I: |M| PictureID |, 15 bits when M is set.
            let b = take(&mut rest)?;
            picture_id = Some(if b & 0x80 != 0 {
                (u16::from(b & 0x7F) << 8) | u16::from(take(&mut rest)?)
            } else {
                u16::from(b)
            });
        }
        if ext & 0x40 != 0 {
            // L: TL0PICIDX.
            take(&mut rest)?;
        }
        if ext & 0x30 != 0 {
            // T or K: |TID|Y| KEYIDX |, one byte shared by both.
            take(&mut rest)?;
        }
    }
    Ok(Descriptor {
        start: first & 0x10 != 0,
        partition: first & 0x07,
        picture_id,
        len: payload.len().saturating_sub(rest.len()),
    })
}

/// What a VP8 frame's header says (RFC 6386 §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    keyframe: bool,
    /// Key frames only: width and height in pixels (the 2-bit scale fields dropped).
    width: u16,
    height: u16,
}

/// Parses the frame tag and, on a key frame, the key frame header; checks what a decoder
/// would refuse (no start code, zero size, a first partition longer than the frame).
fn parse_frame_header(frame: &[u8]) -> Result<FrameHeader, Malformed> {
    let [t0, t1, t2, rest @ ..] = frame else {
        return Err(Malformed::TruncatedFrame);
    };
    let tag = u32::from(*t0) | (u32::from(*t1) << 8) | (u32::from(*t2) << 16);
    let keyframe = tag & 1 == 0;
    // 19 bits: always fits.
    let first_partition = (tag >> 5) as usize;
    if !keyframe {
        if first_partition > rest.len() {
            return Err(Malformed::PartitionTooLong);
        }
        return Ok(FrameHeader {
            keyframe,
            width: 0,
            height: 0,
        });
    }
    let [s0, s1, s2, w0, w1, h0, h1, body @ ..] = rest else {
        return Err(Malformed::TruncatedFrame);
    };
    if [*s0, *s1, *s2] != KEYFRAME_START_CODE {
        return Err(Malformed::BadStartCode);
    }
    let width = u16::from_le_bytes([*w0, *w1]) & 0x3FFF;
    let height = u16::from_le_bytes([*h0, *h1]) & 0x3FFF;
    if width == 0 || height == 0 {
        return Err(Malformed::ZeroSize);
    }
    if first_partition > body.len() {
        return Err(Malformed::PartitionTooLong);
    }
    Ok(FrameHeader {
        keyframe,
        width,
        height,
    })
}

/// The frame being assembled.
#[derive(Debug)]
struct Builder {
    timestamp: u32,
    /// Arrival of the frame's first packet.
    arrival: Instant,
    /// The VP8 bytes so far (descriptors stripped).
    data: Vec<u8>,
    /// Packets appended so far.
    packets: usize,
    /// Partition index of the last packet.
    partition: u8,
    /// PictureID of the frame, once a packet carried one.
    picture_id: Option<u16>,
    damaged: bool,
}

impl Builder {
    /// A builder whose buffer starts at `capacity` bytes (about the previous frame's size),
    /// so a frame is assembled without reallocating as it grows.
    fn new(timestamp: u32, arrival: Instant, capacity: usize) -> Self {
        Self {
            timestamp,
            arrival,
            data: Vec::with_capacity(capacity),
            packets: 0,
            partition: 0,
            picture_id: None,
            damaged: false,
        }
    }
}

/// Turns ordered RTP packets of one VP8 track into whole VP8 frames. See the module docs for
/// the policy.
#[derive(Debug)]
pub struct Vp8Depacketizer {
    limits: DepacketizerLimits,
    current: Option<Builder>,
    /// The keyframe-wait policy and the counters.
    gate: KeyframeGate,
    /// Capacity for the next frame's buffer: a little more than the last one's size.
    size_hint: usize,
}

impl Default for Vp8Depacketizer {
    fn default() -> Self {
        Self::new(DepacketizerLimits::default())
    }
}

impl Vp8Depacketizer {
    /// A depacketizer waiting for its first key frame, bounded by `limits`
    /// (`max_config_bytes` is unused: VP8 has no out-of-band configuration).
    pub fn new(limits: DepacketizerLimits) -> Self {
        Self {
            limits,
            current: None,
            gate: KeyframeGate::new(),
            size_hint: 0,
        }
    }

    /// A loss the reorder buffer reported (`lost` packets, 0 for a resync).
    fn loss(&mut self, lost: u64, out: &mut dyn FnMut(VideoOutput)) {
        self.gate.lost(lost);
        self.damage(KeyframeReason::Loss, out);
    }

    /// Marks the open frame (if any) as damaged and stops output until the next key frame.
    fn damage(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        if let Some(b) = &mut self.current {
            b.damaged = true;
            b.data = Vec::new();
        }
        self.gate.stop(reason, out);
    }

    fn malformed(&mut self, error: Malformed, out: &mut dyn FnMut(VideoOutput)) {
        tracing::debug!(%error, "malformed VP8 packet");
        self.gate.stats.malformed_packets += 1;
        self.damage(KeyframeReason::Malformed, out);
    }

    fn packet(
        &mut self,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        arrival: Instant,
        out: &mut dyn FnMut(VideoOutput),
    ) {
        if payload.is_empty() {
            // Padding only (bandwidth probes): no descriptor, nothing to add.
            self.gate.stats.ignored_packets += 1;
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|b| b.timestamp != timestamp)
        {
            // The previous frame never saw its marker: its tail is missing.
            self.damage(KeyframeReason::Malformed, out);
            self.close(out);
        }
        let descriptor = parse_descriptor(payload);
        if self.current.is_none() {
            self.current = Some(Builder::new(timestamp, arrival, self.size_hint));
            let after_gap = self.gate.take_after_gap();
            if let Ok(d) = &descriptor
                && !d.begins_frame()
            {
                if after_gap {
                    // Its first packets were lost (or sent before we joined).
                    self.damage(self.gate.wait_reason(), out);
                } else {
                    self.malformed(Malformed::NoFrameStart, out);
                }
            }
        }
        match descriptor {
            Ok(d) => self.append(&d, payload.get(d.len..).unwrap_or_default(), out),
            Err(e) => self.malformed(e, out),
        }
        if marker {
            self.close(out);
        }
    }

    /// Checks one packet against the open frame and appends its VP8 bytes.
    fn append(&mut self, d: &Descriptor, body: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        let Some(b) = &mut self.current else { return };
        if b.damaged {
            return;
        }
        let problem = if body.is_empty() {
            Some(Malformed::NoData)
        } else if b.packets > 0 && d.begins_frame() {
            Some(Malformed::SecondFrameStart)
        } else if d.partition < b.partition {
            Some(Malformed::PartitionBack)
        } else if b.picture_id.zip(d.picture_id).is_some_and(|(a, c)| a != c) {
            Some(Malformed::PictureIdChanged)
        } else {
            None
        };
        if let Some(e) = problem {
            return self.malformed(e, out);
        }
        if b.data.len().saturating_add(body.len()) > self.limits.max_frame_bytes
            || b.packets >= self.limits.max_parts_per_frame
        {
            return self.damage(KeyframeReason::Oversized, out);
        }
        b.picture_id = b.picture_id.or(d.picture_id);
        b.partition = d.partition;
        b.packets += 1;
        b.data.extend_from_slice(body);
    }

    /// Ends the open frame: hands it on if it is complete and decodable.
    fn close(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        let Some(b) = self.current.take() else { return };
        self.size_hint = b
            .data
            .len()
            .saturating_add(b.data.len() / 4 + 64)
            .min(MAX_SIZE_HINT);
        if b.damaged {
            return self.gate.dropped();
        }
        let header = match parse_frame_header(&b.data) {
            Ok(h) => h,
            Err(error) => {
                // Counted as one malformed packet: the frame's first, which holds the header.
                tracing::debug!(%error, "malformed VP8 frame");
                self.gate.stats.malformed_packets += 1;
                return self.gate.reject(KeyframeReason::Malformed, out);
            }
        };
        if !self.gate.admits(header.keyframe, out) {
            return;
        }
        let format = header.keyframe.then(|| VideoFormat {
            width: u32::from(header.width),
            height: u32::from(header.height),
            may_reorder: false,
            config: None,
        });
        self.gate.output(header.keyframe);
        out(VideoOutput::Frame(Frame {
            codec: VideoCodec::Vp8,
            rtp_timestamp: b.timestamp,
            arrival: b.arrival,
            keyframe: header.keyframe,
            data: b.data,
            format,
        }));
    }
}

impl VideoDepacketizer for Vp8Depacketizer {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }

    fn push(&mut self, item: Ordered, out: &mut dyn FnMut(VideoOutput)) {
        match item {
            Ordered::Packet(pkt, arrival) => {
                self.packet(pkt.timestamp, pkt.marker, &pkt.payload, arrival, out)
            }
            Ordered::Gap { lost } => self.loss(lost, out),
            Ordered::Resync => self.loss(0, out),
        }
    }

    /// Drops a partly received frame (no marker yet) at the end of the stream; counted as
    /// unfinished, not as dropped (the recording ended inside it).
    fn flush(&mut self) {
        if let Some(b) = self.current.take()
            && (!b.data.is_empty() || b.damaged)
        {
            self.gate.unfinished();
        }
    }

    fn waiting_for_keyframe(&self) -> bool {
        self.gate.waiting()
    }

    fn stats(&self) -> DepacketizerStats {
        self.gate.stats
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rtc::rtp::codec::vp8::Vp8Payloader;
    use rtc::rtp::packetizer::Payloader;

    use super::*;
    use crate::media::RtpPacket;

    /// A key frame: frame tag (P=0, version 0, shown, first partition = the whole body),
    /// start code, 14-bit width and height (with scale bits set, which must be dropped), then
    /// `body` bytes of `fill`.
    fn keyframe(width: u16, height: u16, body: usize, fill: u8) -> Vec<u8> {
        let tag = ((body as u32) << 5) | 0x10;
        let mut f = tag.to_le_bytes()[..3].to_vec();
        f.extend_from_slice(&KEYFRAME_START_CODE);
        f.extend_from_slice(&(width | 0x4000).to_le_bytes());
        f.extend_from_slice(&(height | 0x8000).to_le_bytes());
        f.resize(10 + body, fill);
        f
    }

    /// An inter frame (P=1) of `body` bytes after the tag.
    fn interframe(body: usize, fill: u8) -> Vec<u8> {
        let tag = ((body as u32) << 5) | 0x11;
        let mut f = tag.to_le_bytes()[..3].to_vec();
        f.resize(3 + body, fill);
        f
    }

    /// Splits a frame into packets of at most `chunk` VP8 bytes behind `descriptor(first)`.
    fn packets(frame: &[u8], chunk: usize, descriptor: impl Fn(bool) -> Vec<u8>) -> Vec<Vec<u8>> {
        frame
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| [descriptor(i == 0), c.to_vec()].concat())
            .collect()
    }

    /// The minimal descriptor: S on the first packet, PID 0.
    fn plain(first: bool) -> Vec<u8> {
        vec![if first { 0x10 } else { 0x00 }]
    }

    /// Feeds payloads straight into a depacketizer (sequence order, no reorder buffer).
    struct Feed {
        d: Vp8Depacketizer,
        seq: u16,
        t0: Instant,
        frames: Vec<Frame>,
        requests: Vec<KeyframeReason>,
    }

    impl Feed {
        fn new() -> Self {
            Self::with(DepacketizerLimits::default())
        }
        fn with(limits: DepacketizerLimits) -> Self {
            Self {
                d: Vp8Depacketizer::new(limits),
                seq: 0,
                t0: Instant::now(),
                frames: Vec::new(),
                requests: Vec::new(),
            }
        }
        fn item(&mut self, item: Ordered) {
            let (frames, requests) = (&mut self.frames, &mut self.requests);
            self.d.push(item, &mut |o| match o {
                VideoOutput::Frame(f) => frames.push(f),
                VideoOutput::KeyframeNeeded(r) => requests.push(r),
            });
        }
        fn send(&mut self, ts: u32, marker: bool, payload: &[u8]) {
            self.seq = self.seq.wrapping_add(1);
            let arrival = self.t0 + Duration::from_millis(u64::from(self.seq));
            self.item(Ordered::Packet(
                RtpPacket {
                    sequence: self.seq,
                    timestamp: ts,
                    marker,
                    ssrc: u32::MAX,
                    payload_type: 96,
                    payload: Bytes::copy_from_slice(payload),
                },
                arrival,
            ));
        }
        /// Sends the payloads of one frame, the marker on the last.
        fn frame(&mut self, ts: u32, payloads: &[Vec<u8>]) {
            for (i, p) in payloads.iter().enumerate() {
                self.send(ts, i + 1 == payloads.len(), p);
            }
        }
        fn gap(&mut self, lost: u64) {
            self.seq = self.seq.wrapping_add(lost as u16);
            self.item(Ordered::Gap { lost });
        }
        /// A 320x240 key frame in three plain packets.
        fn key(&mut self, ts: u32) -> Vec<u8> {
            let f = keyframe(320, 240, 250, ts as u8);
            self.frame(ts, &packets(&f, 100, plain));
            f
        }
        /// An inter frame in two plain packets.
        fn inter(&mut self, ts: u32) -> Vec<u8> {
            let f = interframe(150, ts as u8);
            self.frame(ts, &packets(&f, 100, plain));
            f
        }
        fn datas(&self) -> Vec<&[u8]> {
            self.frames.iter().map(|f| &f.data[..]).collect()
        }
    }

    #[test]
    fn frames_from_rtcs_payloader_come_back_whole() {
        for enable_picture_id in [false, true] {
            let mut payloader = Vp8Payloader::default();
            payloader.enable_picture_id = enable_picture_id;
            let mut f = Feed::new();
            let mut sent = Vec::new();
            // Past 128 frames the payloader switches to 15-bit PictureIDs.
            for i in 0..140u32 {
                let frame = if i % 50 == 0 {
                    keyframe(640, 360, 900 + i as usize, i as u8)
                } else {
                    interframe(300 + i as usize, i as u8)
                };
                let payloads = payloader.payload(200, &Bytes::from(frame.clone())).unwrap();
                assert!(payloads.len() > 1);
                let payloads: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
                f.frame(i * 3000, &payloads);
                sent.push(frame);
            }
            assert_eq!(f.frames.len(), sent.len());
            for (i, (got, want)) in f.frames.iter().zip(&sent).enumerate() {
                assert_eq!(got.data, *want, "frame {i}");
                assert_eq!(got.codec, VideoCodec::Vp8);
                assert_eq!(got.rtp_timestamp, i as u32 * 3000);
                assert_eq!(got.keyframe, i % 50 == 0);
                let format = got.keyframe.then(|| VideoFormat {
                    width: 640,
                    height: 360,
                    may_reorder: false,
                    config: None,
                });
                assert_eq!(got.format, format);
            }
            assert!(f.requests.is_empty());
            let s = f.d.stats();
            assert_eq!(
                (s.frames_out, s.keyframes_out, s.frames_dropped),
                (140, 3, 0)
            );
            assert_eq!(s.malformed_packets, 0);
            assert!(!f.d.waiting_for_keyframe());
        }
    }

    #[test]
    fn arrival_is_the_first_packets() {
        let mut f = Feed::new();
        f.key(0);
        // Packets 1..=3 of the key frame arrived at t0 + 1..3 ms.
        assert_eq!(f.frames[0].arrival, f.t0 + Duration::from_millis(1));
    }

    #[test]
    fn every_descriptor_layout_is_parsed_and_stripped() {
        // (descriptor, start, partition, picture id)
        let cases: [(&[u8], bool, u8, Option<u16>); 9] = [
            (&[0x10], true, 0, None),
            (&[0x03], false, 3, None),
            (&[0x90, 0x00], true, 0, None),
            (&[0x90, 0x80, 0x7F], true, 0, Some(0x7F)),
            (&[0x90, 0x80, 0x81, 0x23], true, 0, Some(0x0123)),
            (&[0x90, 0x40, 0x05], true, 0, None),
            (&[0x90, 0x20, 0xE5], true, 0, None),
            (&[0x90, 0x10, 0x1F], true, 0, None),
            (&[0xB4, 0xF0, 0xFF, 0xFF, 0x07, 0x40], true, 4, Some(0x7FFF)),
        ];
        for (desc, start, partition, picture_id) in cases {
            let mut payload = desc.to_vec();
            payload.extend_from_slice(&[0xAA, 0xBB]);
            let d = parse_descriptor(&payload).unwrap();
            assert_eq!(
                d,
                Descriptor {
                    start,
                    partition,
                    picture_id,
                    len: desc.len()
                },
                "{desc:02x?}"
            );
        }
        // Every layout in a real stream: a key frame then an inter frame, all with extension
        // bytes (picture IDs 15-bit, TL0PICIDX, TID/KEYIDX).
        let mut f = Feed::new();
        let key = keyframe(176, 144, 60, 1);
        let ext = |pid: u16| {
            move |first: bool| {
                let [hi, lo] = pid.to_be_bytes();
                vec![
                    if first { 0x90 } else { 0x80 },
                    0xF0,
                    0x80 | hi,
                    lo,
                    7,
                    0x60,
                ]
            }
        };
        f.frame(0, &packets(&key, 25, ext(300)));
        let inter = interframe(40, 2);
        f.frame(3000, &packets(&inter, 25, ext(301)));
        assert_eq!(f.datas(), [&key[..], &inter[..]]);
        assert_eq!(
            f.frames[0].format.as_ref().map(|v| (v.width, v.height)),
            Some((176, 144))
        );
    }

    #[test]
    fn truncated_descriptors_are_malformed() {
        let truncated: [&[u8]; 7] = [
            &[0x90],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x80],
            &[0x90, 0x40],
            &[0x90, 0x20],
            &[0x90, 0x10],
            &[0x90, 0xF0, 0x80, 0x01, 0x02],
        ];
        for bad in truncated {
            assert_eq!(parse_descriptor(bad), Err(Malformed::TruncatedDescriptor));
        }
        // A whole descriptor and no VP8 byte after it.
        let empty: [&[u8]; 2] = [&[0x10], &[0x90, 0x80, 0x05]];
        for bad in empty {
            assert_eq!(parse_descriptor(bad).map(|d| d.len), Ok(bad.len()));
        }
        for bad in truncated.into_iter().chain(empty) {
            let mut f = Feed::new();
            f.key(0);
            // As the only packet of a frame, and as the middle packet of a key frame.
            f.send(3000, true, bad);
            let key = keyframe(320, 240, 30, 3);
            f.frame(
                6000,
                &[
                    [&[0x10][..], &key[..10]].concat(),
                    bad.to_vec(),
                    [&[0x00][..], &key[10..]].concat(),
                ],
            );
            f.inter(9000);
            assert_eq!(f.frames.len(), 1, "{bad:02x?}");
            assert_eq!(f.requests, [KeyframeReason::Malformed], "{bad:02x?}");
            let s = f.d.stats();
            assert_eq!(
                (s.malformed_packets, s.frames_dropped),
                (2, 3),
                "{bad:02x?}"
            );
            f.key(12000);
            assert_eq!(f.frames.len(), 2);
        }
    }

    #[test]
    fn loss_inside_a_frame_drops_everything_until_a_key_frame() {
        let mut f = Feed::new();
        f.key(0);
        let inter = interframe(250, 9);
        let p = packets(&inter, 100, plain);
        f.send(3000, false, &p[0]);
        f.gap(1);
        f.send(3000, true, &p[2]);
        // Following inter frames reference the broken one: dropped.
        f.inter(6000);
        f.inter(9000);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        assert!(f.d.waiting_for_keyframe());
        let key = f.key(12000);
        let next = f.inter(15000);
        assert_eq!(f.frames.len(), 3);
        assert_eq!(f.datas()[1..], [&key[..], &next[..]]);
        let s = f.d.stats();
        assert_eq!(
            (s.frames_dropped, s.lost_packets, s.keyframe_requests),
            (3, 1, 1)
        );
        assert!(!f.d.waiting_for_keyframe());
    }

    #[test]
    fn after_a_gap_a_frame_whose_start_was_lost_is_dropped() {
        let mut f = Feed::new();
        f.key(0);
        f.gap(1);
        // The key frame's first packet (S=1) was the lost one.
        let key = keyframe(320, 240, 250, 5);
        let p = packets(&key, 100, plain);
        f.send(3000, false, &p[1]);
        f.send(3000, true, &p[2]);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        // Not malformed: the reorder buffer said packets were missing.
        assert_eq!(f.d.stats().malformed_packets, 0);
        assert_eq!(f.d.stats().frames_dropped, 1);
        f.key(6000);
        assert_eq!(f.frames.len(), 2);
    }

    #[test]
    fn a_frame_that_does_not_begin_without_a_gap_is_malformed() {
        let mut f = Feed::new();
        f.key(0);
        let inter = interframe(250, 9);
        let p = packets(&inter, 100, plain);
        f.frame(3000, &p[1..]);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        assert_eq!(f.d.stats().malformed_packets, 1);
        // A partition start other than 0 does not begin a frame either.
        let mut f = Feed::new();
        f.key(0);
        f.frame(3000, &[[&[0x11][..], &inter].concat()]);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.d.stats().malformed_packets, 1);
    }

    #[test]
    fn partitions_must_not_go_back_or_restart_inside_a_frame() {
        let inter = interframe(250, 9);
        let chunks: Vec<&[u8]> = inter.chunks(100).collect();
        // Partitioned mode: PID 0, then S=1 PID=1 and a continuation of partition 1: fine.
        let mut f = Feed::new();
        f.key(0);
        f.frame(
            3000,
            &[
                [&[0x10][..], chunks[0]].concat(),
                [&[0x11][..], chunks[1]].concat(),
                [&[0x01][..], chunks[2]].concat(),
            ],
        );
        assert_eq!(f.datas()[1], &inter[..]);
        for (second, third) in [(0x12u8, 0x01u8), (0x00, 0x10)] {
            let mut f = Feed::new();
            f.key(0);
            f.frame(
                3000,
                &[
                    [&[0x10][..], chunks[0]].concat(),
                    [&[second][..], chunks[1]].concat(),
                    [&[third][..], chunks[2]].concat(),
                ],
            );
            assert_eq!(f.frames.len(), 1, "{second:02x} {third:02x}");
            assert_eq!(f.requests, [KeyframeReason::Malformed]);
            assert_eq!(f.d.stats().malformed_packets, 1);
        }
        // The PictureID must stay the same inside a frame.
        let mut f = Feed::new();
        f.key(0);
        f.frame(
            3000,
            &[
                [&[0x90, 0x80, 0x05][..], chunks[0]].concat(),
                [&[0x80, 0x80, 0x06][..], chunks[1]].concat(),
            ],
        );
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.d.stats().malformed_packets, 1);
    }

    #[test]
    fn a_missing_marker_damages_the_frame_it_belonged_to() {
        let mut f = Feed::new();
        f.key(0);
        let inter = interframe(150, 1);
        let p = packets(&inter, 100, plain);
        // The marker packet never comes; the next timestamp starts.
        f.send(3000, false, &p[0]);
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        let key = f.key(9000);
        assert_eq!(f.datas()[1], &key[..]);
        let s = f.d.stats();
        assert_eq!((s.frames_dropped, s.frames_out), (2, 2));
    }

    #[test]
    fn stream_starting_without_a_key_frame_waits_for_one() {
        let mut f = Feed::new();
        assert!(f.d.waiting_for_keyframe());
        f.inter(100);
        f.inter(200);
        assert!(f.frames.is_empty());
        assert_eq!(f.requests, [KeyframeReason::Start]);
        let key = f.key(300);
        assert_eq!(f.datas(), [&key[..]]);
        assert_eq!(f.d.stats().frames_dropped, 2);
    }

    #[test]
    fn stream_joined_in_the_middle_of_a_frame_drops_it() {
        let mut f = Feed::new();
        let key = keyframe(320, 240, 250, 5);
        let p = packets(&key, 100, plain);
        f.frame(0, &p[1..]);
        assert!(f.frames.is_empty());
        assert_eq!(f.requests, [KeyframeReason::Start]);
        assert_eq!(f.d.stats().malformed_packets, 0);
        f.key(3000);
        assert_eq!(f.frames.len(), 1);
    }

    #[test]
    fn key_frame_headers_are_checked() {
        assert_eq!(
            parse_frame_header(&keyframe(0x3FFF, 1, 0, 0)),
            Ok(FrameHeader {
                keyframe: true,
                width: 0x3FFF,
                height: 1
            })
        );
        let mut no_start_code = keyframe(320, 240, 20, 0);
        no_start_code[4] = 0x02;
        let mut long_partition = keyframe(320, 240, 20, 0);
        long_partition[0] |= 0x20;
        let bad_inter = {
            let mut f = interframe(20, 0);
            f[0] |= 0x20;
            f
        };
        for (frame, error) in [
            (no_start_code, Malformed::BadStartCode),
            (keyframe(0, 240, 20, 0), Malformed::ZeroSize),
            (
                keyframe(320, 240, 20, 0)[..9].to_vec(),
                Malformed::TruncatedFrame,
            ),
            (vec![0x11, 0x00], Malformed::TruncatedFrame),
            (long_partition, Malformed::PartitionTooLong),
            (bad_inter, Malformed::PartitionTooLong),
        ] {
            assert_eq!(parse_frame_header(&frame), Err(error));
            let mut f = Feed::new();
            f.key(0);
            f.frame(3000, &packets(&frame, 100, plain));
            f.inter(6000);
            assert_eq!(f.frames.len(), 1, "{error}");
            assert_eq!(f.requests, [KeyframeReason::Malformed]);
            let s = f.d.stats();
            assert_eq!((s.malformed_packets, s.frames_dropped), (1, 2));
        }
    }

    #[test]
    fn oversized_frames_are_dropped() {
        let limits = DepacketizerLimits {
            max_frame_bytes: 500,
            max_parts_per_frame: 4,
            ..DepacketizerLimits::default()
        };
        // Too many bytes.
        let mut f = Feed::with(limits);
        f.key(0);
        f.frame(3000, &packets(&interframe(600, 1), 100, plain));
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Oversized]);
        // Exactly the limit is fine.
        let mut f = Feed::with(limits);
        let key = keyframe(320, 240, 490, 1);
        f.frame(0, &packets(&key, 125, plain));
        assert_eq!(f.datas(), [&key[..]]);
        // Too many packets.
        let mut f = Feed::with(limits);
        f.key(0);
        f.frame(3000, &packets(&interframe(100, 1), 20, plain));
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Oversized]);
        assert_eq!(f.d.stats().frames_dropped, 1);
    }

    #[test]
    fn resync_counts_as_loss_and_padding_is_ignored() {
        let mut f = Feed::new();
        f.key(0);
        f.send(0, false, &[]);
        f.item(Ordered::Resync);
        f.inter(3000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        f.key(500_000);
        assert_eq!(f.frames.len(), 2);
        let s = f.d.stats();
        assert_eq!(
            (s.ignored_packets, s.lost_packets, s.malformed_packets),
            (1, 0, 0)
        );
    }

    #[test]
    fn keyframe_request_is_reported_once_per_wait() {
        let mut f = Feed::new();
        f.key(0);
        f.gap(1);
        f.inter(3000);
        f.gap(2);
        f.inter(6000);
        f.key(9000);
        f.gap(1);
        f.inter(12000);
        assert_eq!(f.requests, [KeyframeReason::Loss, KeyframeReason::Loss]);
        let s = f.d.stats();
        assert_eq!((s.keyframe_requests, s.lost_packets), (2, 4));
    }

    #[test]
    fn rtp_timestamp_wrap_is_just_another_timestamp() {
        let mut f = Feed::new();
        f.key(u32::MAX - 2999);
        f.inter(u32::MAX);
        f.inter(2999);
        let ts: Vec<u32> = f.frames.iter().map(|a| a.rtp_timestamp).collect();
        assert_eq!(ts, [u32::MAX - 2999, u32::MAX, 2999]);
    }

    #[test]
    fn flush_drops_an_unfinished_frame_without_calling_it_loss() {
        let mut f = Feed::new();
        f.key(0);
        let p = packets(&interframe(150, 1), 100, plain);
        f.send(3000, false, &p[0]);
        f.d.flush();
        let s = f.d.stats();
        assert_eq!(
            (s.frames_unfinished, s.frames_dropped, s.frames_out),
            (1, 0, 1)
        );
        // Nothing open: nothing counted.
        f.d.flush();
        assert_eq!(f.d.stats().frames_unfinished, 1);
    }

    /// Random packets (a fixed-seed generator, so failures reproduce) never panic and never
    /// break the output invariants; the fuzz target does the same at scale.
    #[test]
    fn random_input_keeps_the_invariants() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = DepacketizerLimits {
            max_frame_bytes: 2000,
            max_parts_per_frame: 8,
            ..DepacketizerLimits::default()
        };
        let mut f = Feed::with(limits);
        let mut ts = 0u32;
        for _ in 0..20_000 {
            let r = next();
            match r % 16 {
                0 => f.gap(1 + (r >> 8) % 3),
                1 => f.item(Ordered::Resync),
                2 | 3 => {
                    ts = ts.wrapping_add(3000);
                    let len = (r >> 8) as usize % 300;
                    let frame = if r & 1 == 0 {
                        keyframe(64, 48, len, r as u8)
                    } else {
                        interframe(len, r as u8)
                    };
                    f.frame(ts, &packets(&frame, 1 + (r >> 20) as usize % 200, plain));
                }
                _ => {
                    if r & 0x100 != 0 {
                        ts = ts.wrapping_add(3000);
                    }
                    let len = (r >> 12) as usize % 40;
                    let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    f.send(ts, r & 0x200 != 0, &payload);
                }
            }
        }
        f.d.flush();
        let s = f.d.stats();
        assert_eq!(s.frames_out, f.frames.len() as u64);
        assert_eq!(
            s.keyframes_out,
            f.frames.iter().filter(|x| x.keyframe).count() as u64
        );
        assert_eq!(s.keyframe_requests, f.requests.len() as u64);
        assert!(s.keyframes_out > 10 && s.frames_out > s.keyframes_out);
        for frame in &f.frames {
            assert!(frame.data.len() <= limits.max_frame_bytes);
            assert_eq!(frame.keyframe, frame.format.is_some());
            assert!(parse_frame_header(&frame.data).is_ok());
        }
    }
}
