//! Turns fuzzer bytes into a stream of RTP packets with plausible header sequences, so the
//! fuzzer spends its time in the depacketizers instead of guessing sequence numbers.
//!
//! Input: repeated records `[control][len][len bytes]`. Control bits:
//! - bit 0: marker bit
//! - bits 1..=3: sequence step: +1, +2, +3, 0 (duplicate), -1, -2, +40000 (jump), +700
//! - bit 4: advance the RTP timestamp by one frame
//! - bit 5: advance arrival time by 100 ms (lets holes time out)
//! - bit 6: the record is a whole raw RTP datagram, parsed with `RtpPacket::parse`
//! - bit 7: advance the RTP timestamp by a large odd amount (DTX / wrap)

use std::time::{Duration, Instant};

use ninjarec::media::RtpPacket;
use ninjarec::media::reorder::{Ordered, ReorderBuffer, ReorderConfig};

/// Feeds every packet described by `data` through a small reorder buffer into `sink`.
pub fn drive(data: &[u8], frame_ticks: u32, mut sink: impl FnMut(Ordered)) {
    let mut reorder = ReorderBuffer::new(ReorderConfig {
        capacity: 64,
        ..ReorderConfig::default()
    });
    let t0 = Instant::now();
    let mut now = t0;
    let mut seq: u16 = 65_530;
    let mut ts: u32 = u32::MAX - 10 * frame_ticks;
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let step: i32 = [1, 2, 3, 0, -1, -2, 40_000, 700][usize::from((control >> 1) & 7)];
        seq = seq.wrapping_add(step as u16);
        if control & 0x10 != 0 {
            ts = ts.wrapping_add(frame_ticks);
        }
        if control & 0x80 != 0 {
            ts = ts.wrapping_add(0x1234_5679);
        }
        if control & 0x20 != 0 {
            now += Duration::from_millis(100);
        }
        let pkt = if control & 0x40 != 0 {
            match RtpPacket::parse(body) {
                Ok(p) => p,
                Err(_) => continue,
            }
        } else {
            RtpPacket {
                sequence: seq,
                timestamp: ts,
                marker: control & 1 != 0,
                ssrc: u32::MAX,
                payload_type: 96,
                payload: body.to_vec().into(),
            }
        };
        reorder.push(pkt, now, &mut sink);
        assert!(reorder.held() <= 64);
        reorder.poll_timeout(now, &mut sink);
    }
    reorder.flush(&mut sink);
    let s = reorder.stats();
    assert!(s.released <= s.received);
}
