//! H.264 RTP depacketizer (RFC 6184, packetization modes 0 and 1).
//!
//! Written here instead of using `rtc`'s `H264Packet`, which appends FU-A fragments without
//! checking the start bit and panics on a STAP-A with a trailing byte (`webrtc-stack.md` §1.3).
//! Packets come in sequence order from the reorder buffer, which also reports losses. Access
//! units are grouped by RTP timestamp and closed by the marker bit. Anything damaged (loss,
//! malformed packet, missing marker, oversized frame) drops the access unit and everything up
//! to the next IDR, and reports that a keyframe is needed, so the TS file only ever holds
//! decodable pictures.

use std::time::Instant;

use bytes::Bytes;

use super::sps::{SpsInfo, parse_sps};
use crate::media::depacketize::{
    DepacketizerLimits, DepacketizerStats, KeyframeGate, KeyframeReason, VideoDepacketizer,
    VideoOutput,
};
use crate::media::reorder::Ordered;
use crate::media::{Frame, VideoCodec, VideoFormat};

/// The Annex B start code written before every NAL unit.
const START_CODE: [u8; 4] = [0, 0, 0, 1];

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const STAP_A: u8 = 24;
/// Largest buffer reserved up front for an access unit (bigger ones grow as usual).
const MAX_SIZE_HINT: usize = 1 << 20;
const FU_A: u8 = 28;

/// The access unit being assembled.
#[derive(Debug)]
struct Builder {
    timestamp: u32,
    /// Arrival of the access unit's first packet.
    arrival: Instant,
    /// Annex B bytes of the NAL units so far (AUDs already removed).
    data: Vec<u8>,
    /// `(start, end, type)` of each complete NAL unit in `data`, start after the start code.
    nals: Vec<(usize, usize, u8)>,
    /// Start (after the start code) of the FU-A NAL unit being reassembled.
    fu_start: Option<usize>,
    has_idr: bool,
    has_vcl: bool,
    damaged: bool,
}

impl Builder {
    /// A builder assembling into `data`: empty, with room for about the previous access
    /// unit's size, so a frame is assembled without reallocating as it grows.
    fn new(timestamp: u32, arrival: Instant, data: Vec<u8>) -> Self {
        Self {
            timestamp,
            arrival,
            data,
            nals: Vec::with_capacity(8),
            fu_start: None,
            has_idr: false,
            has_vcl: false,
            damaged: false,
        }
    }
}

/// Turns ordered RTP packets of one H.264 track into Annex B [`AccessUnit`]s. See the module
/// docs for the policy.
#[derive(Debug)]
pub struct H264Depacketizer {
    limits: DepacketizerLimits,
    current: Option<Builder>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    info: Option<SpsInfo>,
    /// The keyframe (IDR) wait policy and the counters. After a gap the next access unit is
    /// only trusted if its first packet visibly starts a picture.
    gate: KeyframeGate,
    /// Capacity for the next access unit's buffer: a little more than the last one's size.
    size_hint: usize,
    /// An empty buffer to assemble the next access unit in (a written frame's, given back).
    spare: Vec<u8>,
}

impl Default for H264Depacketizer {
    fn default() -> Self {
        Self::new(DepacketizerLimits::default())
    }
}

impl H264Depacketizer {
    /// A depacketizer waiting for its first IDR.
    pub fn new(limits: DepacketizerLimits) -> Self {
        Self {
            limits,
            current: None,
            sps: None,
            pps: None,
            info: None,
            gate: KeyframeGate::new(),
            size_hint: 0,
            spare: Vec::new(),
        }
    }

    /// What the last parsed SPS says, if any.
    pub fn stream_info(&self) -> Option<&SpsInfo> {
        self.info.as_ref()
    }

    /// A loss the reorder buffer reported (`lost` packets, 0 for a resync).
    fn loss(&mut self, lost: u64, out: &mut dyn FnMut(VideoOutput)) {
        self.gate.lost(lost);
        self.damage(KeyframeReason::Loss, out);
    }

    /// Marks the open access unit (if any) as damaged and stops output until the next IDR.
    fn damage(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        if let Some(b) = &mut self.current {
            b.damaged = true;
            b.data = Vec::new();
            b.nals = Vec::new();
            b.fu_start = None;
        }
        self.gate.stop(reason, out);
    }

    fn malformed(&mut self, out: &mut dyn FnMut(VideoOutput)) {
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
        let Some(&header) = payload.first() else {
            self.gate.stats.ignored_packets += 1;
            return;
        };
        if self
            .current
            .as_ref()
            .is_some_and(|b| b.timestamp != timestamp)
        {
            // The previous access unit never saw its marker: its tail is missing.
            self.damage(KeyframeReason::Malformed, out);
            self.close(out);
        }
        if self.current.is_none() {
            let data = if self.spare.capacity() >= self.size_hint {
                std::mem::take(&mut self.spare)
            } else {
                Vec::with_capacity(self.size_hint)
            };
            self.current = Some(Builder::new(timestamp, arrival, data));
            if self.gate.take_after_gap() && !starts_picture(payload) {
                // Its first packets were lost (or sent before we joined).
                self.damage(self.gate.wait_reason(), out);
            }
        }
        if !self.current.as_ref().is_some_and(|b| b.damaged) {
            self.payload(header, payload, out);
        }
        if marker {
            if self.current.as_ref().is_some_and(|b| b.fu_start.is_some()) {
                // The marker packet cannot end inside a fragmented NAL unit.
                self.malformed(out);
            }
            self.close(out);
        }
    }

    /// Parses one RTP payload into NAL units of the open access unit.
    fn payload(&mut self, header: u8, payload: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        if header & 0x80 != 0 {
            // forbidden_zero_bit: the payload is known to be corrupt (RFC 6184 §5.3).
            return self.malformed(out);
        }
        match header & 0x1F {
            1..=23 => {
                if self.fu_open() {
                    return self.malformed(out);
                }
                self.add_nal(payload, out);
            }
            STAP_A => {
                if self.fu_open() {
                    return self.malformed(out);
                }
                let Some(nals) = split_stap_a(&payload[1..]) else {
                    return self.malformed(out);
                };
                for nal in nals {
                    self.add_nal(nal, out);
                }
            }
            FU_A => self.fu_a(header, &payload[1..], out),
            25..=27 | 29 => {
                self.gate.stats.unsupported_packets += 1;
                self.damage(KeyframeReason::Malformed, out);
            }
            _ => self.gate.stats.ignored_packets += 1,
        }
    }

    fn fu_open(&self) -> bool {
        self.current.as_ref().is_some_and(|b| b.fu_start.is_some())
    }

    fn fu_a(&mut self, indicator: u8, rest: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        let Some((&fu_header, fragment)) = rest.split_first() else {
            return self.malformed(out);
        };
        let start = fu_header & 0x80 != 0;
        let end = fu_header & 0x40 != 0;
        let nal_type = fu_header & 0x1F;
        if (start && end) || !(1..=23).contains(&nal_type) || start == self.fu_open() {
            // Both bits set (forbidden), a reserved or aggregate type, a start while another
            // NAL is open (its end was lost), or a continuation without a start.
            return self.malformed(out);
        }
        if !self.fits(fragment.len() + if start { 5 } else { 0 }, out) {
            return;
        }
        let Some(b) = &mut self.current else { return };
        if start {
            b.data.extend_from_slice(&START_CODE);
            b.fu_start = Some(b.data.len());
            b.data.push((indicator & 0xE0) | nal_type);
        }
        b.data.extend_from_slice(fragment);
        if end && let Some(nal_start) = b.fu_start.take() {
            self.finish_nal(nal_start, out);
        }
    }

    /// Checks that `extra` more bytes keep the access unit within bounds; damages it if not.
    fn fits(&mut self, extra: usize, out: &mut dyn FnMut(VideoOutput)) -> bool {
        let Some(b) = &self.current else { return false };
        if b.data.len() + extra > self.limits.max_frame_bytes
            || b.nals.len() >= self.limits.max_parts_per_frame
        {
            self.damage(KeyframeReason::Oversized, out);
            return false;
        }
        true
    }

    /// Appends one complete NAL unit (header byte first) to the open access unit.
    fn add_nal(&mut self, nal: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        if self.current.as_ref().is_none_or(|b| b.damaged) {
            return;
        }
        let Some(&header) = nal.first() else {
            return self.malformed(out);
        };
        if header & 0x80 != 0 || !(1..=23).contains(&(header & 0x1F)) {
            return self.malformed(out);
        }
        if !self.fits(nal.len() + START_CODE.len(), out) {
            return;
        }
        let Some(b) = &mut self.current else { return };
        b.data.extend_from_slice(&START_CODE);
        let start = b.data.len();
        b.data.extend_from_slice(nal);
        self.finish_nal(start, out);
    }

    /// Records the NAL unit that runs from `start` to the end of the open access unit's data.
    fn finish_nal(&mut self, start: usize, out: &mut dyn FnMut(VideoOutput)) {
        if let Some(b) = &mut self.current {
            // Zero bytes at the end of a NAL unit are not part of it (Annex B calls them
            // trailing_zero_8bits; RBSP data always ends in a 1 bit). Encoders pad with them
            // (OpenH264 in Chrome does); left in, they would merge into the next start code.
            let content = b.data[start..]
                .iter()
                .rposition(|&x| x != 0)
                .map_or(1, |i| i + 1);
            b.data.truncate(start + content);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|b| breaks_annex_b(&b.data[start..]))
        {
            return self.malformed(out);
        }
        let Some(b) = &mut self.current else { return };
        let end = b.data.len();
        let nal_type = b.data[start] & 0x1F;
        match nal_type {
            NAL_AUD => {
                // The TS writer writes its own delimiter.
                b.data.truncate(start - START_CODE.len());
                return;
            }
            1..=5 => {
                b.has_vcl = true;
                b.has_idr |= nal_type == NAL_IDR;
            }
            _ => {}
        }
        b.nals.push((start, end, nal_type));
        if nal_type == NAL_SPS || nal_type == NAL_PPS {
            let nal = b.data[start..end].to_vec();
            self.parameter_set(nal_type, nal, out);
        }
    }

    /// Keeps the latest SPS / PPS for IDRs that arrive without them.
    fn parameter_set(&mut self, nal_type: u8, nal: Vec<u8>, out: &mut dyn FnMut(VideoOutput)) {
        if nal.len() > self.limits.max_config_bytes {
            return self.malformed(out);
        }
        if nal_type == NAL_PPS {
            self.pps = Some(nal);
            return;
        }
        if self.sps.as_deref() == Some(&nal[..]) {
            return;
        }
        match parse_sps(&nal) {
            Ok(info) => {
                self.info = Some(info);
            }
            Err(e) => {
                self.gate.stats.unparsed_config += 1;
                tracing::debug!(error = %e, "cannot parse H.264 SPS");
            }
        }
        self.sps = Some(nal);
    }

    /// Ends the open access unit: hands it on if it is complete and decodable.
    fn close(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        let Some(b) = self.current.take() else { return };
        self.size_hint = (b.data.len() + b.data.len() / 4 + 64).min(MAX_SIZE_HINT);
        if b.damaged || b.fu_start.is_some() {
            return self.gate.dropped();
        }
        if !b.has_vcl {
            // Parameter sets or SEI on their own: kept (parameter sets) or dropped, no picture.
            return;
        }
        if !self.gate.admits(b.has_idr, out) {
            return;
        }
        let mut format = None;
        let data = if b.has_idr {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                return self.gate.reject(KeyframeReason::MissingParameterSets, out);
            };
            let mut data = Vec::with_capacity(b.data.len() + sps.len() + pps.len() + 8);
            for ps in [sps, pps] {
                data.extend_from_slice(&START_CODE);
                data.extend_from_slice(ps);
            }
            let info = self.info.as_ref();
            format = Some(VideoFormat {
                width: info.map_or(0, |i| i.width),
                height: info.map_or(0, |i| i.height),
                may_reorder: info.is_some_and(|i| i.may_reorder),
                config: Some(Bytes::copy_from_slice(&data)),
            });
            for &(start, end, nal_type) in &b.nals {
                if nal_type != NAL_SPS && nal_type != NAL_PPS {
                    data.extend_from_slice(&START_CODE);
                    data.extend_from_slice(&b.data[start..end]);
                }
            }
            self.recycle(b.data);
            data
        } else {
            b.data
        };
        self.gate.output(b.has_idr);
        out(VideoOutput::Frame(Frame {
            codec: VideoCodec::H264,
            rtp_timestamp: b.timestamp,
            arrival: b.arrival,
            keyframe: b.has_idr,
            data,
            format,
        }));
    }
}

impl VideoDepacketizer for H264Depacketizer {
    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }

    fn recycle(&mut self, mut buffer: Vec<u8>) {
        // The larger one is kept, unless it is much larger than the frames are now (a
        // keyframe's): that would hold memory for nothing.
        let capacity = buffer.capacity();
        if capacity > self.spare.capacity() && capacity <= 2 * self.size_hint + 4096 {
            buffer.clear();
            self.spare = buffer;
        }
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

    /// Drops a partly received access unit (no marker yet) at the end of the stream; counted
    /// as unfinished, not as dropped (the recording ended inside it).
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

/// True when a NAL unit cannot be framed in Annex B: it contains `00 00 00`, `00 00 01` or
/// `00 00 02` (which emulation prevention rules out, H.264 §7.4.1) or ends in a zero byte (a
/// valid NAL ends with the RBSP stop bit). Passing such bytes on would let a peer forge NAL
/// boundaries in the recording.
fn breaks_annex_b(nal: &[u8]) -> bool {
    if nal.last() == Some(&0) {
        return true;
    }
    // Every NAL byte passes through here, so the scan is vectorized: look for `00 00` and
    // check the byte after it. Matches do not overlap, but a pattern missed that way starts
    // inside a match (`00 00 0x`) and is caught by the check of that match.
    memchr::memmem::find_iter(nal, &[0, 0]).any(|i| nal.get(i + 2).is_some_and(|&b| b <= 2))
}

/// Splits a STAP-A body (after its header byte) into NAL units; `None` if any size is zero or
/// runs past the end, or a byte is left over (the case that panics `rtc`'s depacketizer).
fn split_stap_a(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut nals = Vec::new();
    while !body.is_empty() {
        let [hi, lo, rest @ ..] = body else {
            return None;
        };
        let size = usize::from(u16::from_be_bytes([*hi, *lo]));
        if size == 0 || size > rest.len() {
            return None;
        }
        let (nal, tail) = rest.split_at(size);
        nals.push(nal);
        body = tail;
    }
    (!nals.is_empty()).then_some(nals)
}

/// True when an RTP payload visibly begins a picture: an aggregation packet, a parameter
/// set / SEI / AUD, or the first slice of a picture (`first_mb_in_slice == 0`, whose ue(v)
/// code is the single bit `1` right after the NAL header). Used after a loss to tell whether
/// the first packets of the next access unit could be missing.
fn starts_picture(payload: &[u8]) -> bool {
    let nal_starts = |nal_type: u8, first_body_byte: Option<&u8>| match nal_type {
        1 | NAL_IDR => first_body_byte.is_some_and(|b| b & 0x80 != 0),
        6..=9 => true,
        _ => false,
    };
    match payload.first().map(|h| h & 0x1F) {
        Some(STAP_A) => true,
        Some(FU_A) => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && nal_starts(fu & 0x1F, payload.get(2))),
        Some(t @ 1..=23) => nal_starts(t, payload.get(1)),
        _ => false,
    }
}

#[cfg(test)]
mod scan_tests {
    use super::breaks_annex_b;

    /// The byte-at-a-time definition the vectorized scan must agree with.
    fn reference(nal: &[u8]) -> bool {
        if nal.last() == Some(&0) {
            return true;
        }
        nal.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2)
    }

    #[test]
    fn vectorized_scan_agrees_with_the_definition_on_every_short_string() {
        // Every string of up to 7 bytes over {00, 01, 02, 03, FF}, then placed at both ends
        // of a long clean run (the vectorized path).
        let alphabet = [0u8, 1, 2, 3, 0xFF];
        for len in 0..=7u32 {
            for mut code in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                for _ in 0..len {
                    s.push(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                assert_eq!(breaks_annex_b(&s), reference(&s), "{s:02X?}");
                let mut long = vec![0x55; 100];
                long.extend_from_slice(&s);
                long.extend_from_slice(&[0x55; 40]);
                long.extend_from_slice(&s);
                assert_eq!(breaks_annex_b(&long), reference(&long), "{s:02X?}");
            }
        }
    }
}
