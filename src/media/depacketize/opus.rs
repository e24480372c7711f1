//! Opus RTP depacketizer (RFC 7587).
//!
//! Each RTP payload is exactly one Opus packet (§4.2), so depacketizing is mostly validation:
//! the duration comes from the TOC byte, empty or malformed payloads are dropped and counted so
//! the TS writer never sees them. Discontinuous transmission (DTX) shows up as a timestamp jump
//! while sequence numbers stay continuous (§3.1.3); the jump is kept as a gap in time and never
//! filled, because each TS PES carries its own PTS.

use super::opus_toc;
use crate::media::OpusPacket;
use crate::media::reorder::Ordered;
use crate::media::unwrap::TimestampUnwrapper;

/// Counters of an [`OpusDepacketizer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusStats {
    /// Opus packets handed on.
    pub packets_out: u64,
    /// Empty payloads (padding-only RTP packets) dropped.
    pub empty: u64,
    /// Payloads whose TOC byte does not describe a valid packet, dropped.
    pub malformed: u64,
    /// Packets reported lost by the reorder buffer.
    pub lost: u64,
    /// Times the timestamp jumped forward with continuous sequence numbers (DTX silence).
    pub dtx_gaps: u64,
}

/// Turns ordered RTP packets of an Opus track into [`OpusPacket`]s.
#[derive(Debug, Default)]
pub struct OpusDepacketizer {
    timestamps: TimestampUnwrapper,
    /// Extended timestamp where the previous packet ended, if it was directly before.
    expected_next: Option<i64>,
    stats: OpusStats,
}

impl OpusDepacketizer {
    /// A fresh depacketizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters so far.
    pub fn stats(&self) -> OpusStats {
        self.stats
    }

    /// Takes one item from the reorder buffer; hands on the Opus packet it carries, if valid.
    pub fn push(&mut self, item: Ordered, out: &mut impl FnMut(OpusPacket)) {
        let (pkt, arrival) = match item {
            Ordered::Packet(pkt, arrival) => (pkt, arrival),
            Ordered::Gap { lost } => {
                self.stats.lost += lost;
                self.expected_next = None;
                return;
            }
            Ordered::Resync => {
                self.timestamps = TimestampUnwrapper::new();
                self.expected_next = None;
                return;
            }
        };
        if pkt.payload.is_empty() {
            self.stats.empty += 1;
            return;
        }
        let Some(samples) = opus_toc::packet_samples(&pkt.payload) else {
            self.stats.malformed += 1;
            self.expected_next = None;
            return;
        };
        let ts = self.timestamps.unwrap(pkt.timestamp);
        if self.expected_next.is_some_and(|expected| ts > expected) {
            self.stats.dtx_gaps += 1;
        }
        self.expected_next = Some(ts + i64::from(samples));
        self.stats.packets_out += 1;
        out(OpusPacket {
            rtp_timestamp: pkt.timestamp,
            arrival,
            data: pkt.payload,
            samples,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::RtpPacket;
    use bytes::Bytes;

    fn pkt(seq: u16, ts: u32, payload: &[u8]) -> Ordered {
        Ordered::Packet(
            RtpPacket {
                sequence: seq,
                timestamp: ts,
                marker: false,
                ssrc: u32::MAX,
                payload_type: 111,
                payload: Bytes::copy_from_slice(payload),
            },
            std::time::Instant::now(),
        )
    }

    fn run(items: Vec<Ordered>) -> (Vec<OpusPacket>, OpusStats) {
        let mut d = OpusDepacketizer::new();
        let mut out = Vec::new();
        for item in items {
            d.push(item, &mut |p| out.push(p));
        }
        (out, d.stats())
    }

    #[test]
    fn one_packet_per_payload_with_duration() {
        let (out, stats) = run(vec![
            pkt(1, 1000, &[0xF8, 0xAA]),
            pkt(2, 1960, &[0xFC, 0xBB]),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].rtp_timestamp, 1000);
        assert_eq!(out[0].samples, 960);
        assert_eq!(&out[1].data[..], &[0xFC, 0xBB]);
        assert_eq!(stats.packets_out, 2);
        assert_eq!(stats.dtx_gaps, 0);
    }

    #[test]
    fn empty_and_malformed_payloads_are_dropped_and_counted() {
        let (out, stats) = run(vec![
            pkt(1, 0, &[]),
            // Code 3 without its frame count byte.
            pkt(2, 0, &[0xFB]),
            // Code 3 claiming 3 × 60 ms (over the 120 ms limit).
            pkt(3, 0, &[(3 << 3) | 3, 3]),
            pkt(4, 0, &[0xF8]),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!((stats.empty, stats.malformed), (1, 2));
    }

    #[test]
    fn dtx_gaps_stay_gaps() {
        // Continuous sequence numbers, timestamps jump by 400 ms during silence.
        let (out, stats) = run(vec![
            pkt(10, 0, &[0xF8]),
            pkt(11, 960, &[0xF8]),
            pkt(12, 960 + 19_200, &[0xF8]),
            pkt(13, 960 + 19_200 + 960, &[0xF8]),
        ]);
        let ts: Vec<u32> = out.iter().map(|p| p.rtp_timestamp).collect();
        // Nothing is invented to fill the silence.
        assert_eq!(ts, [0, 960, 20_160, 21_120]);
        assert_eq!(stats.dtx_gaps, 1);
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn loss_is_not_counted_as_dtx_and_timestamps_wrap() {
        let (out, stats) = run(vec![
            pkt(1, u32::MAX - 959, &[0xF8]),
            Ordered::Gap { lost: 2 },
            pkt(4, 1920, &[0xF8]),
            pkt(5, 2880, &[0xF8]),
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!((stats.lost, stats.dtx_gaps), (2, 0));
    }
}
