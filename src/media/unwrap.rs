//! Wrap-safe extension of RTP counters.
//!
//! RTP sequence numbers (16 bit) and timestamps (32 bit) start at random values and wrap. Every
//! stage that compares or subtracts them works on extended 64-bit values instead, so the
//! comparison is done once, here, and tested once.

/// Extends a counter of `BITS` bits (16 for sequence numbers, 32 for timestamps) to an `i64`.
///
/// Each value is placed in the cycle that puts it nearest to the previous extended value, so a
/// step forward or backward of less than half the range is read as such, across any number of
/// wraps. The first value is returned unchanged.
#[derive(Debug, Clone, Default)]
pub struct Unwrapper<const BITS: u32> {
    last: Option<i64>,
}

/// Extends 16-bit RTP sequence numbers.
pub type SequenceUnwrapper = Unwrapper<16>;
/// Extends 32-bit RTP timestamps.
pub type TimestampUnwrapper = Unwrapper<32>;

impl<const BITS: u32> Unwrapper<BITS> {
    const RANGE: i64 = 1 << BITS;
    const HALF: i64 = 1 << (BITS - 1);

    /// A fresh unwrapper with no reference yet.
    pub fn new() -> Self {
        Self { last: None }
    }

    /// The extended value of `value` (only its low `BITS` bits are used), which becomes the new
    /// reference.
    pub fn unwrap(&mut self, value: u32) -> i64 {
        let extended = self.peek(value);
        self.last = Some(extended);
        extended
    }

    /// The extended value of `value` without moving the reference: for looking at a packet
    /// that may be discarded.
    pub fn peek(&self, value: u32) -> i64 {
        let value = i64::from(value) & (Self::RANGE - 1);
        match self.last {
            None => value,
            Some(last) => {
                let delta = (value - last).rem_euclid(Self::RANGE);
                if delta >= Self::HALF {
                    last + delta - Self::RANGE
                } else {
                    last + delta
                }
            }
        }
    }

    /// The last extended value returned by [`Self::unwrap`], if any.
    pub fn last(&self) -> Option<i64> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_cross_the_wrap_both_ways() {
        let mut u = SequenceUnwrapper::new();
        assert_eq!(u.unwrap(65534), 65534);
        assert_eq!(u.unwrap(65535), 65535);
        assert_eq!(u.unwrap(0), 65536);
        assert_eq!(u.unwrap(1), 65537);
        // A late packet from before the wrap stays before it.
        assert_eq!(u.unwrap(65535), 65535);
        assert_eq!(u.unwrap(2), 65538);
    }

    #[test]
    fn sequence_numbers_go_below_the_first_value() {
        let mut u = SequenceUnwrapper::new();
        assert_eq!(u.unwrap(0), 0);
        assert_eq!(u.unwrap(65535), -1);
    }

    #[test]
    fn timestamps_wrap_many_times() {
        let mut u = TimestampUnwrapper::new();
        let mut raw: u32 = 0xFFFF_0000;
        let start = u.unwrap(raw);
        for i in 1..=100_000i64 {
            raw = raw.wrapping_add(3000 * 200);
            assert_eq!(u.unwrap(raw), start + i * 3000 * 200);
        }
    }

    #[test]
    fn peek_does_not_move_the_reference() {
        let mut u = TimestampUnwrapper::new();
        u.unwrap(10);
        assert_eq!(u.peek(5), 5);
        assert_eq!(u.last(), Some(10));
        assert_eq!(u.peek(u32::MAX), -1);
    }
}
