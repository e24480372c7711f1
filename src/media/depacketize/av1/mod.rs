//! AV1 RTP depacketizer (the AV1 RTP payload format, aomediacodec.github.io/av1-rtp-spec).
//!
//! # The format
//!
//! AV1 is a sequence of OBUs (open bitstream units: a 1-byte header, an optional extension
//! byte with temporal / spatial layer ids, an optional LEB128 size, a payload). All OBUs of one
//! picture time form a temporal unit (TU); in RTP a TU is every packet with one timestamp, and
//! the marker bit ends it. Each payload starts with an aggregation header `Z Y W W N - - -`
//! followed by OBU elements:
//!
//! * `W` = 0: every element is preceded by its LEB128 length; `W` = 1..=3: there are exactly
//!   `W` elements and the last one has no length (it runs to the end of the packet);
//! * `Z`: the first element continues the last OBU of the previous packet;
//! * `Y`: the last element continues in the next packet;
//! * `N`: the packet starts a coded video sequence (informative only here; `N` with `Z` is
//!   malformed).
//!
//! Senders strip temporal delimiters and usually clear `obu_has_size_field` (the element length
//! frames the OBU). Matroska and MP4 want the low-overhead format instead, so every OBU is
//! rewritten with `obu_has_size_field = 1` and its size, the extension byte kept; temporal
//! delimiters, tile lists and padding are dropped (AV1-ISOBMFF §2.4). One [`Frame`] is output
//! per TU.
//!
//! # Keyframes and the sequence header
//!
//! A TU is a keyframe when its first frame header (an `OBU_FRAME` or `OBU_FRAME_HEADER`) is a
//! shown `KEY_FRAME` that is not `show_existing_frame` (the first 4 bits of the uncompressed
//! header; every frame is one under `reduced_still_picture_header`): what AV1 calls a random
//! access point and AV1-ISOBMFF a sync sample. A hidden key frame shown later ("delayed random
//! access point") is not one: decoding from it needs the TU that shows it. The header byte is
//! trusted rather than the `N` bit, which senders set from the presence of a sequence header.
//!
//! A keyframe also needs a sequence header: its own (ahead of that frame header), or else the
//! last one seen, which is then prepended (a key frame does not have to repeat it, and
//! containers want it in sync samples). A keyframe with neither is dropped
//! ([`KeyframeReason::MissingParameterSets`]). After a [`Ordered::Resync`] the old one is
//! forgotten: a restarted publisher may have changed everything. The sequence header can only
//! change on a key frame that carries it, and encoders (libaom, SVT-AV1) repeat it on every key
//! frame, so reusing it after a plain loss is safe in practice; in theory a lost key frame
//! could have brought a new one that a later key frame does not repeat. Keyframes carry a
//! [`VideoFormat`] whose `config` is the `av1C` record built from the sequence header
//! ([`seq_header`]). A non-key TU bringing a *different* sequence header starts a new sequence
//! without its key frame (decoders reject it): treated as damage.
//!
//! # Policy
//!
//! The same as every depacketizer here ([`super`]): a TU with a lost or malformed packet is
//! never handed on, and after damage nothing is until the next keyframe, with one
//! [`VideoOutput::KeyframeNeeded`] per wait. Damage is: a reported gap or resync, a malformed
//! aggregation header or LEB128 length, a `Z` packet with no open fragment (or an open
//! fragment continued by a packet without `Z`), an OBU that does not parse (forbidden bit,
//! missing extension byte, size field disagreeing with the element), a tile group before any
//! frame header, a TU whose marker packet leaves a fragment open or whose marker never came
//! (the timestamp changed), and a TU over [`DepacketizerLimits`] (bytes, OBUs or packets, or a
//! sequence header over `max_config_bytes`). After a gap the next TU is only trusted when its
//! first packet does not start with a fragment (`Z` = 0): the loss may have eaten its start.

pub mod seq_header;
#[cfg(test)]
mod tests;

use std::time::Instant;

use bytes::Bytes;

use self::seq_header::{SequenceHeader, parse_sequence_header};
use super::{
    DepacketizerLimits, DepacketizerStats, KeyframeGate, KeyframeReason, VideoDepacketizer,
    VideoOutput,
};
use crate::media::reorder::Ordered;
use crate::media::{Frame, VideoCodec, VideoFormat};

/// OBU types (AV1 §6.2.2).
const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_TILE_GROUP: u8 = 4;
const OBU_FRAME: u8 = 6;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;
/// OBU header bits.
const OBU_FORBIDDEN_BIT: u8 = 0x80;
const OBU_EXTENSION_FLAG: u8 = 0x04;
const OBU_HAS_SIZE_FIELD: u8 = 0x02;
/// Aggregation header bits.
const AGG_Z: u8 = 0x80;
const AGG_Y: u8 = 0x40;
const AGG_N: u8 = 0x08;
/// A LEB128 value in AV1 takes at most 8 bytes (AV1 §4.10.5).
const MAX_LEB128_BYTES: usize = 8;
/// Largest buffer reserved up front for a TU (bigger ones grow as usual).
const MAX_SIZE_HINT: usize = 1 << 20;

/// The temporal unit being assembled.
#[derive(Debug)]
struct Builder {
    timestamp: u32,
    /// Arrival of the TU's first packet.
    arrival: Instant,
    /// The OBUs so far, each with its size field (temporal delimiters etc. already dropped).
    data: Vec<u8>,
    /// The bytes so far (as sent) of the OBU continued in the next packet.
    fragment: Vec<u8>,
    /// True while the last packet ended with `Y` = 1.
    fragment_open: bool,
    packets: usize,
    /// Of those, packets already counted as ignored (nothing after the aggregation header).
    bare_packets: usize,
    obus: usize,
    /// `data[start..end]` of the sequence header ahead of the first frame header, if any.
    sequence_header: Option<(usize, usize)>,
    /// First byte of the first frame header's payload (the uncompressed header), once one was
    /// seen.
    first_frame: Option<u8>,
    /// The TU began right after a reported loss: trouble in it may be the loss's doing.
    after_gap: bool,
    damaged: bool,
}

impl Builder {
    /// A builder whose buffer starts at `capacity` bytes (the size of the previous TU), so a
    /// frame is assembled without reallocating as it grows.
    fn new(timestamp: u32, arrival: Instant, capacity: usize, after_gap: bool) -> Self {
        Self {
            timestamp,
            arrival,
            data: Vec::with_capacity(capacity),
            fragment: Vec::new(),
            fragment_open: false,
            packets: 0,
            bare_packets: 0,
            obus: 0,
            sequence_header: None,
            first_frame: None,
            after_gap,
            damaged: false,
        }
    }
}

/// The sequence header in force, kept for key frames that do not repeat it.
#[derive(Debug)]
struct KnownSequenceHeader {
    /// The OBU as written in frames (size field included).
    obu: Vec<u8>,
    header: SequenceHeader,
    /// What keyframes carry: resolution and `av1C`.
    format: VideoFormat,
}

impl KnownSequenceHeader {
    fn new(obu: Vec<u8>, header: SequenceHeader) -> Self {
        let format = VideoFormat {
            width: header.max_frame_width,
            height: header.max_frame_height,
            // Every TU shows exactly one frame, in order: decode order is output order.
            may_reorder: false,
            config: Some(Bytes::from(header.av1c(&obu))),
        };
        Self {
            obu,
            header,
            format,
        }
    }
}

/// Turns ordered RTP packets of one AV1 track into [`Frame`]s holding one temporal unit each
/// as a low-overhead OBU stream. See the module docs for the format and the policy.
#[derive(Debug)]
pub struct Av1Depacketizer {
    limits: DepacketizerLimits,
    current: Option<Builder>,
    sequence_header: Option<KnownSequenceHeader>,
    /// The keyframe-wait policy and the counters.
    gate: KeyframeGate,
    /// Capacity for the next TU's buffer: a little more than the last one's size.
    size_hint: usize,
}

impl Default for Av1Depacketizer {
    fn default() -> Self {
        Self::new(DepacketizerLimits::default())
    }
}

impl Av1Depacketizer {
    /// A depacketizer waiting for its first keyframe.
    pub fn new(limits: DepacketizerLimits) -> Self {
        Self {
            limits,
            current: None,
            sequence_header: None,
            gate: KeyframeGate::new(),
            size_hint: 0,
        }
    }

    /// What the sequence header in force says, if one was seen (for logs).
    pub fn sequence_header(&self) -> Option<&SequenceHeader> {
        self.sequence_header.as_ref().map(|k| &k.header)
    }

    /// A loss the reorder buffer reported (`lost` packets, 0 for a resync); reported as
    /// `Start` while nothing was output yet.
    fn loss(&mut self, lost: u64, out: &mut dyn FnMut(VideoOutput)) {
        self.gate.lost(lost);
        self.damage(self.gate.wait_reason(), out);
    }

    /// Marks the open TU (if any) as damaged and stops output until the next keyframe.
    fn damage(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        if let Some(b) = &mut self.current {
            b.damaged = true;
            b.data = Vec::new();
            b.fragment = Vec::new();
            b.fragment_open = false;
        }
        self.gate.stop(reason, out);
    }

    fn malformed(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        self.gate.stats.malformed_packets += 1;
        self.damage(KeyframeReason::Malformed, out);
    }

    /// Damage that may be a consequence of a loss just before the TU (its first packets
    /// missing) rather than a sender's fault: not counted as malformed then.
    fn broken_start(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        if self.current.as_ref().is_some_and(|b| b.after_gap) {
            self.damage(self.gate.wait_reason(), out);
        } else {
            self.malformed(out);
        }
    }

    fn damaged(&self) -> bool {
        self.current.as_ref().is_none_or(|b| b.damaged)
    }

    fn packet(
        &mut self,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        arrival: Instant,
        out: &mut dyn FnMut(VideoOutput),
    ) {
        let Some((&aggregation, elements)) = payload.split_first() else {
            self.gate.stats.ignored_packets += 1;
            return;
        };
        if self
            .current
            .as_ref()
            .is_some_and(|b| b.timestamp != timestamp)
        {
            // The previous TU never saw its marker: its tail is missing.
            self.damage(KeyframeReason::Malformed, out);
            self.close(out);
        }
        // Cleared either way: when the TU goes on after the loss, the loss was inside it, not
        // before the next one.
        let after_gap = self.gate.take_after_gap();
        if self.current.is_none() {
            self.current = Some(Builder::new(timestamp, arrival, self.size_hint, after_gap));
        }
        let too_many = self.current.as_mut().is_some_and(|b| {
            b.packets += 1;
            b.packets > self.limits.max_parts_per_frame
        });
        if too_many && !self.damaged() {
            self.damage(KeyframeReason::Oversized, out);
        }
        if !self.damaged() {
            self.aggregate(aggregation, elements, out);
        }
        if marker {
            if self.current.as_ref().is_some_and(|b| b.fragment_open) {
                // The TU cannot end inside a fragmented OBU.
                self.malformed(out);
            }
            self.close(out);
        }
    }

    /// Splits one payload (after the aggregation header) into OBU elements.
    fn aggregate(&mut self, header: u8, mut rest: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        let z = header & AGG_Z != 0;
        let y = header & AGG_Y != 0;
        let w = usize::from((header >> 4) & 0x03);
        let open = self.current.as_ref().is_some_and(|b| b.fragment_open);
        if z && header & AGG_N != 0 {
            // A coded video sequence cannot start inside an OBU.
            return self.malformed(out);
        }
        if z != open {
            if z && self.current.as_ref().is_some_and(|b| b.packets == 1) {
                // The TU starts inside an OBU: its first packet is missing.
                return self.broken_start(out);
            }
            // A continuation of nothing, or a fragment whose end never came.
            return self.malformed(out);
        }
        if rest.is_empty() && w == 0 {
            if z || y {
                return self.malformed(out);
            }
            // An aggregation header and nothing else (keep-alive / padding).
            self.gate.stats.ignored_packets += 1;
            if let Some(b) = &mut self.current {
                b.bare_packets += 1;
            }
            return;
        }
        let mut index = 0;
        loop {
            index += 1;
            let counted_last = w != 0 && index == w;
            let element = if counted_last {
                std::mem::take(&mut rest)
            } else {
                let Some((len, used)) = read_leb128(rest) else {
                    return self.malformed(out);
                };
                let Some((element, tail)) = rest.get(used..).and_then(|r| split_at(r, len)) else {
                    return self.malformed(out);
                };
                rest = tail;
                element
            };
            let last = counted_last || (w == 0 && rest.is_empty());
            self.element(element, index == 1 && z, last && y, out);
            if last || self.damaged() {
                return;
            }
        }
    }

    /// Adds one OBU element: a whole OBU, or a fragment of one.
    fn element(
        &mut self,
        bytes: &[u8],
        continues_previous: bool,
        continues_next: bool,
        out: &mut dyn FnMut(VideoOutput),
    ) {
        if !continues_previous && bytes.is_empty() {
            // An OBU has at least its header byte.
            return self.malformed(out);
        }
        if !continues_previous && !continues_next {
            return self.obu(bytes, out);
        }
        if !self.fits(bytes.len(), 0, out) {
            return;
        }
        let Some(b) = &mut self.current else { return };
        if !continues_previous {
            b.fragment.clear();
        }
        b.fragment.extend_from_slice(bytes);
        b.fragment_open = continues_next;
        if !continues_next {
            let whole = std::mem::take(&mut b.fragment);
            self.obu(&whole, out);
            if let Some(b) = &mut self.current
                && !b.damaged
            {
                // Keep the allocation for the next fragmented OBU.
                b.fragment = whole;
                b.fragment.clear();
            }
        }
    }

    /// Checks that `extra` more bytes and `new_obus` more OBUs keep the TU within bounds;
    /// damages it if not.
    fn fits(&mut self, extra: usize, new_obus: usize, out: &mut dyn FnMut(VideoOutput)) -> bool {
        let Some(b) = &self.current else { return false };
        let bytes = b
            .data
            .len()
            .saturating_add(b.fragment.len())
            .saturating_add(extra);
        if bytes > self.limits.max_frame_bytes
            || b.obus.saturating_add(new_obus) > self.limits.max_parts_per_frame
        {
            self.damage(KeyframeReason::Oversized, out);
            return false;
        }
        true
    }

    /// Appends one whole OBU (as sent: `obu_has_size_field` 0 or 1) to the open TU, with its
    /// size field.
    fn obu(&mut self, raw: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        let Some(obu) = Obu::parse(raw) else {
            return self.malformed(out);
        };
        if matches!(
            obu.obu_type,
            OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING
        ) {
            return;
        }
        let size = obu.written_len();
        if obu.obu_type == OBU_SEQUENCE_HEADER && size > self.limits.max_config_bytes {
            return self.damage(KeyframeReason::Oversized, out);
        }
        let no_frame_yet = self
            .current
            .as_ref()
            .is_some_and(|b| b.first_frame.is_none());
        if no_frame_yet && obu.obu_type == OBU_TILE_GROUP {
            // Tiles of a frame whose header is missing.
            return self.broken_start(out);
        }
        if matches!(obu.obu_type, OBU_FRAME_HEADER | OBU_FRAME) && obu.payload.is_empty() {
            return self.malformed(out);
        }
        if !self.fits(size, 1, out) {
            return;
        }
        let Some(b) = &mut self.current else { return };
        let start = b.data.len();
        obu.write(&mut b.data);
        b.obus += 1;
        match obu.obu_type {
            OBU_SEQUENCE_HEADER if b.first_frame.is_none() && b.sequence_header.is_none() => {
                b.sequence_header = Some((start, b.data.len()));
            }
            OBU_FRAME_HEADER | OBU_FRAME if b.first_frame.is_none() => {
                b.first_frame = obu.payload.first().copied();
            }
            _ => {}
        }
    }

    /// Ends the open TU: hands it on if it is complete and decodable.
    fn close(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        let Some(b) = self.current.take() else { return };
        self.size_hint = (b.data.len() + b.data.len() / 4 + 64).min(MAX_SIZE_HINT);
        if b.damaged || b.fragment_open {
            return self.gate.dropped();
        }
        let Some(first_frame) = b.first_frame else {
            // Sequence headers, metadata or padding without a picture: nothing to record.
            self.gate.stats.ignored_packets += (b.packets - b.bare_packets) as u64;
            return;
        };
        let own = b.sequence_header.and_then(|(s, e)| b.data.get(s..e));
        // The TU's own sequence header, parsed unless it is the one in force.
        let mut new_header = None;
        if let Some(obu) = own
            && self.sequence_header.as_ref().is_none_or(|k| k.obu != obu)
        {
            match Obu::parse(obu).map(|o| parse_sequence_header(o.payload)) {
                Some(Ok(h)) => new_header = Some(h),
                _ => {
                    self.gate.stats.unparsed_config += 1;
                    return self.gate.reject(KeyframeReason::Malformed, out);
                }
            }
        }
        let reduced = new_header
            .as_ref()
            .or(self.sequence_header.as_ref().map(|k| &k.header))
            .is_some_and(|h| h.reduced_still_picture_header);
        // show_existing_frame = 0, frame_type = KEY_FRAME (0), show_frame = 1.
        let keyframe = reduced || first_frame & 0xF0 == 0x10;
        if !keyframe {
            if new_header.is_some() && !self.gate.waiting() {
                // A new sequence must start with a key frame: decoders reject this one.
                return self.gate.reject(KeyframeReason::Malformed, out);
            }
            if !self.gate.admits(false, out) {
                return;
            }
            return self.output(b.timestamp, b.arrival, false, b.data, None, out);
        }
        let has_own = own.is_some();
        if let Some(h) = new_header
            && let Some(obu) = own
        {
            self.sequence_header = Some(KnownSequenceHeader::new(obu.to_vec(), h));
        }
        let Some(known) = &self.sequence_header else {
            return self.gate.reject(KeyframeReason::MissingParameterSets, out);
        };
        let format = Some(known.format.clone());
        let data = if has_own {
            b.data
        } else {
            let mut data = Vec::with_capacity(known.obu.len() + b.data.len());
            data.extend_from_slice(&known.obu);
            data.extend_from_slice(&b.data);
            data
        };
        self.output(b.timestamp, b.arrival, true, data, format, out);
    }

    fn output(
        &mut self,
        rtp_timestamp: u32,
        arrival: Instant,
        keyframe: bool,
        data: Vec<u8>,
        format: Option<VideoFormat>,
        out: &mut dyn FnMut(VideoOutput),
    ) {
        self.gate.output(keyframe);
        out(VideoOutput::Frame(Frame {
            codec: VideoCodec::Av1,
            rtp_timestamp,
            arrival,
            keyframe,
            data,
            format,
        }));
    }
}

impl VideoDepacketizer for Av1Depacketizer {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Av1
    }

    fn push(&mut self, item: Ordered, out: &mut dyn FnMut(VideoOutput)) {
        match item {
            Ordered::Packet(pkt, arrival) => {
                self.packet(pkt.timestamp, pkt.marker, &pkt.payload, arrival, out)
            }
            Ordered::Gap { lost } => self.loss(lost, out),
            Ordered::Resync => {
                // A restarted publisher may send another sequence.
                self.sequence_header = None;
                self.loss(0, out);
            }
        }
    }

    /// Drops a partly received TU (no marker yet) at the end of the stream; counted as
    /// unfinished, not as dropped (the recording ended inside it).
    fn flush(&mut self) {
        if let Some(b) = self.current.take()
            && (!b.data.is_empty() || b.fragment_open || b.damaged)
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

/// One whole OBU as received, split into its parts.
#[derive(Debug, Clone, Copy)]
struct Obu<'a> {
    /// The header byte as sent (its size flag is set when written).
    header: u8,
    obu_type: u8,
    extension: Option<u8>,
    payload: &'a [u8],
}

impl<'a> Obu<'a> {
    /// Splits an OBU with or without its size field; `None` if the forbidden bit is set, the
    /// extension byte is missing, or a size field is malformed or disagrees with the length.
    fn parse(raw: &'a [u8]) -> Option<Self> {
        let (&header, rest) = raw.split_first()?;
        if header & OBU_FORBIDDEN_BIT != 0 {
            return None;
        }
        let (extension, rest) = if header & OBU_EXTENSION_FLAG != 0 {
            let (&e, rest) = rest.split_first()?;
            (Some(e), rest)
        } else {
            (None, rest)
        };
        let payload = if header & OBU_HAS_SIZE_FIELD != 0 {
            let (size, used) = read_leb128(rest)?;
            let payload = rest.get(used..)?;
            if payload.len() != size {
                return None;
            }
            payload
        } else {
            rest
        };
        Some(Self {
            header,
            obu_type: (header >> 3) & 0x0F,
            extension,
            payload,
        })
    }

    /// Bytes [`Obu::write`] appends.
    fn written_len(&self) -> usize {
        1 + usize::from(self.extension.is_some())
            + leb128_len(self.payload.len())
            + self.payload.len()
    }

    /// Appends the OBU in low-overhead form: header with `obu_has_size_field` set, extension
    /// byte, LEB128 size, payload.
    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.header | OBU_HAS_SIZE_FIELD);
        out.extend(self.extension);
        write_leb128(self.payload.len(), out);
        out.extend_from_slice(self.payload);
    }
}

/// Reads a LEB128 value (at most 8 bytes, AV1 §4.10.5) and the bytes it took; `None` if it
/// runs past the end, takes more than 8 bytes, or exceeds what follows it.
fn read_leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().take(MAX_LEB128_BYTES).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let used = i + 1;
            let value = usize::try_from(value).ok()?;
            return (value <= bytes.len() - used).then_some((value, used));
        }
    }
    None
}

/// `split_at` that fails instead of panicking when `mid` is past the end.
fn split_at(bytes: &[u8], mid: usize) -> Option<(&[u8], &[u8])> {
    (mid <= bytes.len()).then(|| bytes.split_at(mid))
}

/// Bytes of the shortest LEB128 encoding of `value`.
fn leb128_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// Appends the shortest LEB128 encoding of `value`.
fn write_leb128(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7F) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}
