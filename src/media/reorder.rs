//! Per-track reorder buffer: duplicates out, packets in sequence order, holes reported.
//!
//! The WebRTC stack hands packets over in arrival order. NACK/RTX repairs arrive late and under
//! their original sequence numbers, and bandwidth probes show up as duplicates (see
//! `interop-probe.md`, pitfall 2). The depacketizers need packets in order and must know when
//! one is missing for good, so this buffer sits in front of them. It is bounded in packets
//! (a hole is skipped when the window is full) and in time (a hole is given up after a
//! deadline), and it resyncs on a confirmed huge sequence jump (publisher restart) instead of
//! waiting for a hole that will never be filled.
//!
//! The deadline follows the path: every packet that fills a hole (a reordered packet or a
//! NACK repair), and every one that comes after its hole was given up, says how long that
//! hole really took to fill. The deadline is set from the recent ones (the slowest, plus a
//! margin), between [`ReorderConfig::max_delay`] and [`ReorderConfig::max_delay_cap`], so
//! on a long round trip the repairs that arrive are used, and on a short one a hole costs
//! little waiting. A track nobody repairs (Opus) only ever sees reordering and keeps a short
//! deadline.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::RtpPacket;
use super::unwrap::SequenceUnwrapper;

/// What the reorder buffer hands on, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordered {
    /// The next packet in sequence order, with the time it arrived (carried forward so the
    /// timeline anchors on arrival, not on when the packet's turn came).
    Packet(RtpPacket, Instant),
    /// `lost` packets are missing between the previous item and the next one, for good.
    Gap {
        /// Number of sequence numbers that were skipped.
        lost: u64,
    },
    /// The sequence numbering restarted (publisher restart or a huge jump). Everything before
    /// is unrelated to what follows; treat it like a gap of unknown size.
    Resync,
}

/// Limits of a [`ReorderBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReorderConfig {
    /// Most packets held while waiting for a hole to fill.
    pub capacity: usize,
    /// How long (in arrival time) a packet may wait for an earlier hole before the hole is
    /// given up, at least: the deadline never goes below it (it starts at `initial_delay`).
    pub max_delay: Duration,
    /// The deadline while the path is not measured yet (until [`INITIAL_HOLES`] holes, filled
    /// or given up, were seen), within `[max_delay, max_delay_cap]`. A track whose losses are
    /// repaired (video: NACK/RTX) starts at about a long round trip's repair time, so the
    /// holes of its first keyframe — the largest frame, and the one every frame after it
    /// needs — are not given up before their repairs come.
    pub initial_delay: Duration,
    /// The longest the deadline may grow to when holes are measured to take longer to fill
    /// (NACK repairs on a long round trip). Bounds the latency and, with `capacity`, memory.
    pub max_delay_cap: Duration,
    /// A forward jump of more sequence numbers than this is treated as a restart, not loss
    /// (RFC 3550 Appendix A.1 `MAX_DROPOUT`).
    pub max_dropout: u64,
    /// A packet more than this far behind the next expected one is treated as a possible
    /// restart, not as a late packet (RFC 3550 Appendix A.1 `MAX_MISORDER`, widened for RTX).
    pub max_misorder: u64,
    /// Hold the first packets for `max_delay` before handing any on, so packets sent before
    /// the first one to arrive (reordered at the very start) are not discarded as late. Costs
    /// `max_delay` of latency once; without it a reordered start loses the first frame (for
    /// video: the whole first GOP).
    pub hold_start: bool,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        Self {
            capacity: 512,
            max_delay: Duration::from_millis(150),
            initial_delay: Duration::from_millis(150),
            max_delay_cap: Duration::from_millis(750),
            max_dropout: 3000,
            max_misorder: 1000,
            hold_start: false,
        }
    }
}

/// Counters of a [`ReorderBuffer`], for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets handed on.
    pub released: u64,
    /// Packets that arrived out of order but in time, and were put back in order.
    pub reordered: u64,
    /// Copies of a packet that was already buffered or handed on (dropped).
    pub duplicates: u64,
    /// Packets that arrived after their hole had been given up (dropped).
    pub late: u64,
    /// Sequence numbers given up as lost.
    pub lost: u64,
    /// Confirmed restarts of the sequence numbering.
    pub resyncs: u64,
    /// Packets far outside the window that were never confirmed by a successor (dropped).
    pub stray: u64,
    /// The hole deadline now in force (follows the measured fill times).
    pub delay: Duration,
}

/// How many given-up ranges are remembered to tell late packets from duplicates.
const LOST_RANGES_KEPT: usize = 64;

/// How many recent hole fill times set the deadline (~15 s of holes at 2 % loss of a
/// 2 Mb/s stream).
const FILL_SAMPLES_KEPT: usize = 64;

/// Holes (filled or given up) after which the deadline follows the measurements alone.
pub const INITIAL_HOLES: u64 = 4;

/// Margin over the measured fill time: a repair slightly slower than the recent ones is
/// still used. Two steps of the connections' 20 ms grid, on which arrivals are taken and
/// deadlines checked (`peer::grid`), so the rounding of both never eats it.
const FILL_MARGIN: Duration = Duration::from_millis(40);

/// Reorders one track's packets by extended sequence number. See the module docs.
#[derive(Debug)]
pub struct ReorderBuffer {
    config: ReorderConfig,
    unwrapper: SequenceUnwrapper,
    /// Extended sequence number of the next packet to hand on; `None` before the first packet.
    next: Option<i64>,
    /// Held packets with their arrival time, keyed by extended sequence number (all > `next`).
    held: BTreeMap<i64, (RtpPacket, Instant)>,
    /// Earliest arrival time among `held`, cached.
    oldest: Option<Instant>,
    /// Ranges `[start, end)` recently given up, to classify stragglers, with the arrival of
    /// the packet that first waited behind each (to time a late repair).
    lost_ranges: VecDeque<(i64, i64, Instant)>,
    /// How long recent holes took to fill (oldest first).
    fill_times: VecDeque<Duration>,
    /// The deadline now in force, in `[max_delay, max_delay_cap]`.
    delay: Duration,
    /// Holes given up so far (with `fill_times`, ends the initial deadline).
    holes_given_up: u64,
    /// A packet far outside the window, waiting for its successor to confirm a restart.
    probation: Option<(RtpPacket, Instant)>,
    /// Nothing was handed on yet and `hold_start` is set: `next` may still move back.
    starting: bool,
    stats: ReorderStats,
}

impl Default for ReorderBuffer {
    fn default() -> Self {
        Self::new(ReorderConfig::default())
    }
}

impl ReorderBuffer {
    /// An empty buffer with the given limits (a capacity below 1 is raised to 1).
    pub fn new(mut config: ReorderConfig) -> Self {
        config.capacity = config.capacity.max(1);
        let mut buffer = Self {
            config,
            unwrapper: SequenceUnwrapper::new(),
            next: None,
            held: BTreeMap::new(),
            oldest: None,
            lost_ranges: VecDeque::new(),
            fill_times: VecDeque::new(),
            delay: config.max_delay,
            holes_given_up: 0,
            probation: None,
            starting: false,
            stats: ReorderStats::default(),
        };
        buffer.refresh_delay();
        buffer
    }

    /// The counters so far.
    pub fn stats(&self) -> ReorderStats {
        ReorderStats {
            delay: self.delay,
            ..self.stats
        }
    }

    /// Packets currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When [`Self::poll_timeout`] should next be called, if anything is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        // The start hold (nothing handed on yet) only waits for packets reordered at the very
        // start: `max_delay`, not the longer wait for repairs.
        let wait = if self.starting {
            self.config.max_delay.min(self.delay)
        } else {
            self.delay
        };
        self.oldest.map(|t| t + wait)
    }

    /// Takes one packet that arrived at `now`; hands on everything that is now in order.
    pub fn push(&mut self, pkt: RtpPacket, now: Instant, out: &mut impl FnMut(Ordered)) {
        self.stats.received += 1;
        let ext = self.unwrapper.peek(u32::from(pkt.sequence));
        let Some(next) = self.next else {
            self.unwrapper.unwrap(u32::from(pkt.sequence));
            if self.config.hold_start {
                self.starting = true;
                self.next = Some(ext);
                self.oldest = Some(now);
                self.held.insert(ext, (pkt, now));
            } else {
                self.next = Some(ext + 1);
                self.release(pkt, now, out);
            }
            return;
        };
        let ahead = ext - next;
        if self.starting && ahead <= 0 {
            // Nothing handed on yet: an earlier packet moves the start back, if the window
            // still spans all held packets.
            let highest = self.held.keys().next_back().copied().unwrap_or(next);
            if self.held.contains_key(&ext) {
                self.stats.duplicates += 1;
                return;
            }
            if highest - ext < self.config.capacity as i64 {
                self.unwrapper.unwrap(u32::from(pkt.sequence));
                self.next = Some(ext);
                self.oldest = Some(self.oldest.map_or(now, |t| t.min(now)));
                self.held.insert(ext, (pkt, now));
                self.poll_timeout(now, out);
                return;
            }
        }
        let too_far_ahead = ahead > 0 && ahead.unsigned_abs() > self.config.max_dropout;
        let too_far_behind = ahead < 0 && ahead.unsigned_abs() > self.config.max_misorder;
        if too_far_ahead || too_far_behind {
            self.stray_or_restart(pkt, now, out);
            return;
        }
        if self.probation.take().is_some() {
            self.stats.stray += 1;
        }
        if ahead < 0 {
            let given_up = self
                .lost_ranges
                .iter()
                .find(|&&(s, e, _)| (s..e).contains(&ext))
                .map(|&(_, _, since)| since);
            if let Some(since) = given_up {
                self.stats.late += 1;
                self.record_fill(now.saturating_duration_since(since));
            } else {
                self.stats.duplicates += 1;
            }
            return;
        }
        self.unwrapper.unwrap(u32::from(pkt.sequence));
        if ahead == 0 {
            if let Some(waiting) = self.oldest.filter(|_| !self.held.is_empty()) {
                // This packet fills a hole that later packets are waiting behind.
                self.stats.reordered += 1;
                self.record_fill(now.saturating_duration_since(waiting));
            }
            self.next = Some(next + 1);
            self.release(pkt, now, out);
            self.release_in_order(out);
        } else {
            if self.held.contains_key(&ext) {
                self.stats.duplicates += 1;
                return;
            }
            // Make room: a hole that does not fit in the window is given up.
            while ext - self.next.unwrap_or(ext) >= self.config.capacity as i64 {
                self.skip_hole(ext, now, out);
            }
            if ext == self.next.unwrap_or(ext) {
                self.next = Some(ext + 1);
                self.release(pkt, now, out);
                self.release_in_order(out);
            } else {
                // A packet inside a hole further on: it filled (part of) that hole, which the
                // next held packet has been waiting behind since it arrived.
                if let Some((_, &(_, waiting))) = self.held.range(ext + 1..).next() {
                    self.record_fill(now.saturating_duration_since(waiting));
                }
                self.oldest = Some(self.oldest.map_or(now, |t| t.min(now)));
                self.held.insert(ext, (pkt, now));
            }
        }
        self.poll_timeout(now, out);
    }

    /// Gives up holes whose waiting packets have reached their deadline at `now`.
    pub fn poll_timeout(&mut self, now: Instant, out: &mut impl FnMut(Ordered)) {
        while let Some(deadline) = self.next_deadline() {
            if now < deadline {
                break;
            }
            self.skip_hole(i64::MAX, now, out);
        }
    }

    /// Hands on everything held, in order, reporting the holes between (end of stream).
    pub fn flush(&mut self, out: &mut impl FnMut(Ordered)) {
        while let Some((_, &(_, arrival))) = self.held.first_key_value() {
            self.skip_hole(i64::MAX, arrival, out);
        }
        self.probation = None;
    }

    /// Gives up the hole at `next`: jumps to the first held packet (or to `limit` if it comes
    /// first) and hands on the run that follows. `now`: when the hole is given up (the wait
    /// is timed from the first held packet's arrival, or from `now` if none is held).
    fn skip_hole(&mut self, limit: i64, now: Instant, out: &mut impl FnMut(Ordered)) {
        let Some(next) = self.next else { return };
        let first_held = self.held.keys().next().copied().unwrap_or(i64::MAX);
        let target = first_held.min(limit);
        if target > next {
            let lost = (target - next).unsigned_abs();
            self.stats.lost += lost;
            self.holes_given_up += 1;
            self.refresh_delay();
            if self.lost_ranges.len() == LOST_RANGES_KEPT {
                self.lost_ranges.pop_front();
            }
            let since = self.held.first_key_value().map(|(_, &(_, t))| t);
            self.lost_ranges
                .push_back((next, target, since.unwrap_or(now)));
            out(Ordered::Gap { lost });
            self.next = Some(target);
        }
        self.release_in_order(out);
    }

    /// Hands on held packets while they continue the sequence, then refreshes `oldest`.
    fn release_in_order(&mut self, out: &mut impl FnMut(Ordered)) {
        while let Some(entry) = self.held.first_entry() {
            let Some(next) = self.next else { break };
            if *entry.key() != next {
                break;
            }
            let (pkt, arrival) = entry.remove();
            self.next = Some(next + 1);
            self.release(pkt, arrival, out);
        }
        self.oldest = self.held.values().map(|&(_, t)| t).min();
    }

    /// Remembers how long a hole took to fill and sets the deadline from the recent ones.
    /// A fill slower than the cap is not kept: no deadline allowed could have saved its hole
    /// (a repair after an outage, a probe resending an old packet), and as the slowest it
    /// would hold the deadline at the cap for the next [`FILL_SAMPLES_KEPT`] holes.
    fn record_fill(&mut self, took: Duration) {
        if took > self.config.max_delay_cap {
            return;
        }
        if self.fill_times.len() == FILL_SAMPLES_KEPT {
            self.fill_times.pop_front();
        }
        self.fill_times.push_back(took);
        self.refresh_delay();
    }

    /// The deadline: the slowest of the recent fill times plus [`FILL_MARGIN`], at least
    /// `initial_delay` while the path is not measured, within the configured bounds.
    ///
    /// The slowest, not a percentile: the holes that take longest are those whose first
    /// repair was lost too (a NACK or its retransmission; ~10 % of the holes at 5 % loss each
    /// way), filled by the next NACK round a NACK interval later. A 90th percentile sits just
    /// below them and gives them all up, and each given-up video hole costs the frames up to
    /// the next keyframe, while waiting longer only costs latency, bounded by the cap.
    fn refresh_delay(&mut self) {
        let measured = self
            .fill_times
            .iter()
            .max()
            .map_or(Duration::ZERO, |&slowest| slowest + FILL_MARGIN);
        let unmeasured =
            (self.fill_times.len() as u64) < INITIAL_HOLES && self.holes_given_up < INITIAL_HOLES;
        let wanted = if unmeasured {
            measured.max(self.config.initial_delay)
        } else {
            measured
        };
        self.delay = wanted.clamp(
            self.config.max_delay,
            self.config.max_delay_cap.max(self.config.max_delay),
        );
    }

    fn release(&mut self, pkt: RtpPacket, arrival: Instant, out: &mut impl FnMut(Ordered)) {
        self.starting = false;
        self.stats.released += 1;
        out(Ordered::Packet(pkt, arrival));
    }

    /// A packet far outside the window: garbage, or the first packet after a restart. It is
    /// held on probation; when its direct successor arrives next, the stream is resynced.
    fn stray_or_restart(&mut self, pkt: RtpPacket, now: Instant, out: &mut impl FnMut(Ordered)) {
        let confirms = self
            .probation
            .as_ref()
            .is_some_and(|(p, _)| p.sequence.wrapping_add(1) == pkt.sequence);
        if !confirms {
            if self.probation.replace((pkt, now)).is_some() {
                self.stats.stray += 1;
            }
            return;
        }
        let Some((first, first_arrival)) = self.probation.take() else {
            return;
        };
        tracing::debug!(
            from = ?self.next,
            to = first.sequence,
            "RTP sequence numbers jumped; resyncing"
        );
        self.flush(out);
        self.stats.resyncs += 1;
        self.lost_ranges.clear();
        out(Ordered::Resync);
        self.unwrapper = SequenceUnwrapper::new();
        let ext = self.unwrapper.unwrap(u32::from(pkt.sequence));
        self.next = Some(ext + 1);
        self.release(first, first_arrival, out);
        self.release(pkt, now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(seq: u16) -> RtpPacket {
        RtpPacket {
            sequence: seq,
            timestamp: u32::from(seq) * 10,
            marker: false,
            ssrc: u32::MAX,
            payload_type: 96,
            payload: Bytes::from(vec![seq as u8]),
        }
    }

    /// Drives a buffer with millisecond arrival times and renders its output compactly.
    struct Run {
        buf: ReorderBuffer,
        t0: Instant,
        out: Vec<Ordered>,
    }

    impl Run {
        fn new() -> Self {
            Self {
                buf: ReorderBuffer::default(),
                t0: Instant::now(),
                out: Vec::new(),
            }
        }
        fn push(&mut self, seq: u16, ms: u64) {
            let now = self.t0 + Duration::from_millis(ms);
            let out = &mut self.out;
            self.buf.push(pkt(seq), now, &mut |o| out.push(o));
        }
        fn poll(&mut self, ms: u64) {
            let now = self.t0 + Duration::from_millis(ms);
            let out = &mut self.out;
            self.buf.poll_timeout(now, &mut |o| out.push(o));
        }
        fn take(&mut self) -> Vec<String> {
            self.out
                .drain(..)
                .map(|o| match o {
                    Ordered::Packet(p, _) => p.sequence.to_string(),
                    Ordered::Gap { lost } => format!("gap{lost}"),
                    Ordered::Resync => "resync".into(),
                })
                .collect()
        }
    }

    #[test]
    fn in_order_packets_pass_straight_through() {
        let mut r = Run::new();
        for s in 10..15 {
            r.push(s, 0);
        }
        assert_eq!(r.take(), ["10", "11", "12", "13", "14"]);
        assert_eq!(r.buf.held(), 0);
        assert_eq!(r.buf.next_deadline(), None);
    }

    /// Packets `seqs` at 100 per second, every 20th (s % 20 == 10) arriving as a repair
    /// `repair_ms` after the packet behind it; `repairs` carries repairs still on the way.
    fn stream_with_repairs(
        r: &mut Run,
        seqs: std::ops::Range<u16>,
        repair_ms: u64,
        repairs: &mut Vec<(u64, u16)>,
    ) {
        stream_with_repair_times(r, seqs, |_| repair_ms, repairs);
    }

    /// [`stream_with_repairs`] with the repair time of each hole (by its sequence number).
    fn stream_with_repair_times(
        r: &mut Run,
        seqs: std::ops::Range<u16>,
        repair_ms: impl Fn(u16) -> u64,
        repairs: &mut Vec<(u64, u16)>,
    ) {
        for s in seqs {
            let ms = u64::from(s) * 10;
            while let Some(&(at, seq)) = repairs.first() {
                if at > ms {
                    break;
                }
                r.poll(at);
                r.push(seq, at);
                repairs.remove(0);
            }
            if s % 20 == 10 {
                repairs.push((ms + 10 + repair_ms(s), s));
                repairs.sort_unstable();
            } else {
                r.push(s, ms);
            }
            r.poll(ms);
        }
    }

    /// A run whose buffer starts with an initial deadline of `ms`.
    fn with_initial_delay(ms: u64) -> Run {
        let mut r = Run::new();
        r.buf = ReorderBuffer::new(ReorderConfig {
            initial_delay: Duration::from_millis(ms),
            ..ReorderConfig::default()
        });
        r
    }

    /// A repaired track that starts with a longer deadline keeps the repairs of its first
    /// holes (the first keyframe's), where the 150 ms floor would give them up; once holes
    /// are measured the deadline follows them (down to the floor for fast repairs).
    #[test]
    fn the_first_holes_wait_the_initial_deadline() {
        for (initial, lost_first) in [(150, true), (400, false)] {
            let mut r = with_initial_delay(initial);
            assert_eq!(r.buf.stats().delay, Duration::from_millis(initial));
            let mut repairs = Vec::new();
            // The first hole (packet 10) is repaired 250 ms after the packet behind it.
            stream_with_repairs(&mut r, 0..40, 250, &mut repairs);
            let s = r.buf.stats();
            assert_eq!(s.lost > 0, lost_first, "initial {initial} ms: {s:?}");
        }
        // Fast repairs measured four times: back to the floor.
        let mut r = with_initial_delay(400);
        let mut repairs = Vec::new();
        stream_with_repairs(&mut r, 0..100, 30, &mut repairs);
        let s = r.buf.stats();
        assert_eq!((s.lost, s.delay), (0, Duration::from_millis(150)), "{s:?}");
        // Holes never repaired: four are given up at 400 ms, then the floor applies.
        let mut r = with_initial_delay(400);
        let mut never = Vec::new();
        stream_with_repairs(&mut r, 0..200, 100_000, &mut never);
        let s = r.buf.stats();
        assert!(s.lost >= 4, "{s:?}");
        assert_eq!(s.delay, Duration::from_millis(150), "{s:?}");
    }

    #[test]
    fn the_deadline_grows_to_use_slow_repairs_and_shrinks_back() {
        // Every 20th packet is repaired 300 ms after the packet behind it arrived: longer
        // than the 150 ms the buffer starts with.
        let mut r = Run::new();
        let mut repairs = Vec::new();
        stream_with_repairs(&mut r, 0..2000, 300, &mut repairs);
        let s = r.buf.stats();
        // The first holes are given up (their repairs come late and are counted so), then
        // the deadline covers the repairs: almost every hole is filled.
        assert!(s.late >= 1, "{s:?}");
        assert!(s.lost <= 12, "most of 100 holes filled: {s:?}");
        assert!(
            s.delay >= Duration::from_millis(300) && s.delay <= Duration::from_millis(400),
            "{s:?}"
        );

        // Repairs become fast (30 ms): the deadline comes back down to its floor.
        stream_with_repairs(&mut r, 2000..4000, 30, &mut repairs);
        assert_eq!(r.buf.stats().delay, Duration::from_millis(150));
    }

    /// At 5 % loss each way, about one hole in ten loses its NACK or its repair too and is
    /// filled by the next NACK round, 100 ms later. Those are waited for as well: once one
    /// was seen, no hole is given up.
    #[test]
    fn repairs_of_a_second_nack_round_are_waited_for() {
        let mut r = Run::new();
        let mut repairs = Vec::new();
        let slow = |s: u16| if (s / 20) % 10 == 3 { 230 } else { 80 };
        stream_with_repair_times(&mut r, 0..4000, slow, &mut repairs);
        let s = r.buf.stats();
        // 200 holes, 20 of them slow: the first slow one is given up (its repair comes late
        // and is counted so), the rest are filled.
        assert!(s.lost <= 1 && s.late <= 1, "{s:?}");
        assert!(s.delay >= Duration::from_millis(240), "{s:?}");
    }

    #[test]
    fn the_deadline_never_passes_its_cap() {
        // Holes filled 740 ms later: the deadline stops at the cap (750 ms), not at 760.
        let mut r = Run::new();
        for k in 0..100u64 {
            let s = (k * 3) as u16;
            r.push(s, k * 1000);
            r.push(s + 2, k * 1000 + 1);
            r.push(s + 1, k * 1000 + 740);
            r.poll(k * 1000 + 740);
        }
        assert_eq!(r.buf.stats().delay, Duration::from_millis(750));
        // Fills of 5 s could not be saved by any deadline allowed: they leave it alone.
        let mut r = Run::new();
        for k in 0..100u64 {
            let s = (k * 3) as u16;
            r.push(s, k * 1000);
            r.push(s + 2, k * 1000 + 1);
            r.push(s + 1, k * 1000 + 5000);
            r.poll(k * 1000 + 5000);
        }
        let s = r.buf.stats();
        assert_eq!(s.delay, Duration::from_millis(150), "{s:?}");
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let mut r = Run::new();
        r.push(1, 0);
        r.push(3, 1);
        r.push(4, 2);
        assert_eq!(r.take(), ["1"]);
        r.push(2, 3);
        assert_eq!(r.take(), ["2", "3", "4"]);
        let s = r.buf.stats();
        assert_eq!((s.reordered, s.lost, s.released), (1, 0, 4));
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut r = Run::new();
        r.push(1, 0);
        r.push(1, 1); // copy of a released packet
        r.push(3, 2);
        r.push(3, 3); // copy of a held packet
        r.push(2, 4);
        r.push(2, 5);
        assert_eq!(r.take(), ["1", "2", "3"]);
        assert_eq!(r.buf.stats().duplicates, 3);
    }

    #[test]
    fn a_hole_is_given_up_after_the_deadline() {
        let mut r = Run::new();
        r.push(1, 0);
        r.push(3, 10);
        r.push(4, 20);
        r.poll(159);
        assert_eq!(r.take(), ["1"]);
        assert_eq!(
            r.buf.next_deadline(),
            Some(r.t0 + Duration::from_millis(160))
        );
        r.poll(160);
        assert_eq!(r.take(), ["gap1", "3", "4"]);
        // The missing packet turns up after all: it is late, not a duplicate.
        r.push(2, 200);
        assert_eq!(r.take(), Vec::<String>::new());
        let s = r.buf.stats();
        assert_eq!((s.late, s.duplicates, s.lost), (1, 0, 1));
    }

    #[test]
    fn later_holes_get_their_own_deadline() {
        let mut r = Run::new();
        r.push(1, 0);
        r.push(3, 0);
        r.push(6, 100);
        r.poll(150);
        assert_eq!(r.take(), ["1", "gap1", "3"]);
        r.poll(249);
        assert_eq!(r.take(), Vec::<String>::new());
        r.poll(250);
        assert_eq!(r.take(), ["gap2", "6"]);
    }

    #[test]
    fn a_full_window_skips_the_hole() {
        let mut r = Run::new();
        r.buf = ReorderBuffer::new(ReorderConfig {
            capacity: 4,
            ..ReorderConfig::default()
        });
        r.push(0, 0);
        for s in 2..=5 {
            r.push(s, 0);
        }
        // 5 is 4 ahead of the hole at 1: the window is full, so the hole is given up.
        assert_eq!(r.take(), ["0", "gap1", "2", "3", "4", "5"]);
        assert!(r.buf.held() <= 4);
    }

    #[test]
    fn sequence_wrap_is_seamless() {
        let mut r = Run::new();
        r.push(65534, 0);
        r.push(0, 1);
        r.push(65535, 2);
        r.push(1, 3);
        assert_eq!(r.take(), ["65534", "65535", "0", "1"]);
        assert_eq!(r.buf.stats().lost, 0);
    }

    #[test]
    fn a_confirmed_huge_jump_resyncs() {
        let mut r = Run::new();
        r.push(100, 0);
        r.push(102, 1);
        r.push(40000, 2); // garbage or restart: held on probation
        assert_eq!(r.take(), ["100"]);
        r.push(40001, 3); // confirmed
        assert_eq!(r.take(), ["gap1", "102", "resync", "40000", "40001"]);
        r.push(40002, 4);
        assert_eq!(r.take(), ["40002"]);
        assert_eq!(r.buf.stats().resyncs, 1);
    }

    #[test]
    fn a_restart_to_lower_numbers_resyncs() {
        let mut r = Run::new();
        r.push(30000, 0);
        r.push(20000, 1);
        r.push(20001, 2);
        assert_eq!(r.take(), ["30000", "resync", "20000", "20001"]);
    }

    #[test]
    fn unconfirmed_stray_packets_are_dropped() {
        let mut r = Run::new();
        r.push(5, 0);
        r.push(9000, 1);
        r.push(6, 2);
        r.push(20000, 3);
        r.push(30000, 4);
        r.push(7, 5);
        assert_eq!(r.take(), ["5", "6", "7"]);
        let s = r.buf.stats();
        assert_eq!((s.stray, s.resyncs), (3, 0));
    }

    #[test]
    fn flush_releases_everything_with_gaps() {
        let mut r = Run::new();
        r.push(1, 0);
        r.push(4, 0);
        r.push(3, 0);
        r.push(7, 0);
        let out = &mut r.out;
        r.buf.flush(&mut |o| out.push(o));
        assert_eq!(r.take(), ["1", "gap1", "3", "4", "gap2", "7"]);
        assert_eq!(r.buf.held(), 0);
    }

    #[test]
    fn hold_start_puts_a_reordered_start_in_order() {
        let mut r = Run::new();
        r.buf = ReorderBuffer::new(ReorderConfig {
            hold_start: true,
            ..ReorderConfig::default()
        });
        // 65535 arrives first, 65533 and 65534 (sent before it) come later, 0 wraps.
        r.push(65_535, 0);
        r.push(65_533, 5);
        r.push(65_535, 6);
        r.push(0, 8);
        r.push(65_534, 10);
        assert!(r.take().is_empty());
        assert_eq!(
            r.buf.next_deadline(),
            Some(r.t0 + Duration::from_millis(150))
        );
        r.poll(150);
        assert_eq!(r.take(), ["65533", "65534", "65535", "0"]);
        // Started: from now on a packet behind the start is late, and in-order packets pass.
        r.push(65_532, 151);
        r.push(1, 152);
        assert_eq!(r.take(), ["1"]);
        let s = r.buf.stats();
        assert_eq!((s.duplicates, s.released, s.lost), (2, 5, 0));
    }
}
