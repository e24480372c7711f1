//! A log budget per publisher: one whose recordings keep failing (garbage offers, a peer that
//! drops before any media) gets at most one line per window, with the count of the ones left
//! out, so it cannot flood the log (62 798 lines in 21 s were seen before this). A recording
//! with media resets it. Pure: the caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One line per publisher per this long while its recordings fail.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Publishers remembered at once (a hostile room could invent endless stream IDs); past it
/// the one quiet longest is forgotten.
const MAX_TRACKED: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Slot {
    last_line: Option<Instant>,
    left_out: u64,
    seen: Instant,
}

/// See the module doc.
#[derive(Debug)]
pub struct LogBudget {
    window: Duration,
    slots: HashMap<String, Slot>,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget::new(WINDOW)
    }
}

impl LogBudget {
    /// A budget of one line per `window` per failing publisher.
    pub fn new(window: Duration) -> LogBudget {
        LogBudget {
            window,
            slots: HashMap::new(),
        }
    }

    /// True while the publisher's last recording failed: its next start is not worth a line.
    pub fn failing(&self, stream_id: &str) -> bool {
        self.slots.contains_key(stream_id)
    }

    /// A recording of `stream_id` ended without media. `Some(n)`: write its line now (`n`
    /// lines were left out since the last one); `None`: leave it out.
    pub fn failed(&mut self, stream_id: &str, now: Instant) -> Option<u64> {
        if !self.slots.contains_key(stream_id) && self.slots.len() >= MAX_TRACKED {
            let oldest = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.slots.remove(&k);
            }
        }
        let slot = self.slots.entry(stream_id.to_owned()).or_insert(Slot {
            last_line: None,
            left_out: 0,
            seen: now,
        });
        slot.seen = now;
        if slot
            .last_line
            .is_some_and(|t| now.saturating_duration_since(t) < self.window)
        {
            slot.left_out += 1;
            return None;
        }
        slot.last_line = Some(now);
        Some(std::mem::take(&mut slot.left_out))
    }

    /// A recording of `stream_id` had media: its failures are over.
    pub fn recorded(&mut self, stream_id: &str) {
        self.slots.remove(stream_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut b = LogBudget::default();
        assert!(!b.failing("junk"));
        let mut lines = Vec::new();
        // 1000 failures a second for 60 s.
        for ms in 0..60_000u64 {
            if let Some(n) = b.failed("junk", t0 + Duration::from_millis(ms)) {
                lines.push(n);
            }
        }
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], 0);
        assert!(lines[1..].iter().all(|&n| n == 9_999), "{lines:?}");
        assert!(b.failing("junk"));
        // Another publisher has its own budget; a recording with media resets it.
        assert_eq!(b.failed("cam", t0), Some(0));
        b.recorded("cam");
        assert!(!b.failing("cam"));
        assert_eq!(b.failed("cam", t0), Some(0));
    }

    #[test]
    fn endless_stream_ids_stay_bounded() {
        let t0 = Instant::now();
        let mut b = LogBudget::default();
        for k in 0..10 * MAX_TRACKED {
            b.failed(&format!("id{k}"), t0 + Duration::from_millis(k as u64));
        }
        assert_eq!(b.slots.len(), MAX_TRACKED);
        assert!(b.failing(&format!("id{}", 10 * MAX_TRACKED - 1)));
        assert!(!b.failing("id0"));
    }
}
