//! One clock for every wake-up of the peer connections: a 20 ms grid.
//!
//! A recorder needs no low latency, and waking the runtime is most of what receiving costs
//! (a GStreamer publisher's ~280 packets/s each woke a runtime thread: about one context switch
//! per packet, measured). So the shared port (`--udp-port`) does not wait on the kernel for a
//! datagram. Its socket is a plain non-blocking socket, never registered with the runtime's epoll (a registered socket wakes a
//! parked runtime thread on every arrival and every freed send buffer, even while nobody waits
//! for it), and they are read when the grid ticks: the kernel holds what arrives meanwhile, and
//! each connection gets its datagrams in one batch, which its driver, track readers and
//! recorder each handle in one wake. The connections' protocol timers (ICE consent, DTLS and
//! SCTP retransmits, RTCP reports, NACKs) end on the same grid, so all connections, their
//! timers and their reads share one wake of the runtime (a millisecond-exact timer buys a
//! recorder nothing).
//!
//! Only the shared port ([`super::udp_mux`]) works this way. A connection with a
//! socket of its own keeps tokio's socket, read as datagrams arrive: polled every 10 ms, a
//! socket with the stock 208 KiB receive buffer (`net.core.rmem_max`) overflowed on an
//! unpaced GStreamer publisher's 1080p 8 Mb/s keyframes (365 datagrams dropped in 40 s,
//! measured), which tokio's read-on-arrival never did.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

/// The grid's step: 20 ms, under a video frame at 30 fps. Each step costs every connection one
/// round of its driver (locks, timer, a sweep of its protocol stack) whatever it carries, so a
/// longer step is cheaper: 10 -> 20 ms took the recorder from 0.97 to 0.84 % of a core per
/// GStreamer publisher (issue 11, `docs/loadbench.md`). Nothing a recorder does needs it
/// shorter: NACKs and TWCC feedback go every 100 ms, a keyframe request waits up to 20 ms.
pub const STEP: Duration = Duration::from_millis(20);

/// `at` rounded up to the process-wide grid.
pub fn on_grid(at: Instant) -> Instant {
    on_grid_every(at, STEP)
}

/// The process-wide grid's origin.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` rounded up to a multiple of `period` on the process-wide grid (a multiple of
/// [`STEP`] stays on the grid). Tasks whose timers have the same period and start there tick
/// together: the recorders' ticks, and so their file writes, share one wake.
pub fn on_grid_every(at: Instant, period: Duration) -> Instant {
    let epoch = epoch();
    let step = period.as_nanos().max(1);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(step);
    epoch + Duration::from_nanos((steps * step) as u64)
}

/// Which `period` of the process-wide grid `at` is in, counted from its origin: the same
/// number for every instant from one multiple of `period` ([`on_grid_every`]) to the next.
pub fn period_of(at: Instant, period: Duration) -> u64 {
    let since = at.saturating_duration_since(epoch()).as_nanos();
    (since / period.as_nanos().max(1)) as u64
}

/// A sleep that ends on the grid, for webrtc-rs's `Runtime::sleep`.
pub fn sleep(duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    Box::pin(tokio::time::sleep_until(on_grid(Instant::now() + duration)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_are_step_apart_and_never_behind() {
        let now = Instant::now();
        let a = on_grid(now);
        assert!(a >= now && a - now <= STEP);
        assert_eq!(on_grid(a), a);
        assert_eq!(on_grid(a + Duration::from_nanos(1)), a + STEP);
    }

    #[test]
    fn a_period_starts_on_its_multiple_and_lasts_until_the_next() {
        let period = STEP * 5;
        let start = on_grid_every(Instant::now(), period);
        assert_eq!(on_grid(start), start);
        assert_eq!(on_grid_every(start, period), start);
        let n = period_of(start, period);
        assert_eq!(
            period_of(start + period - Duration::from_nanos(1), period),
            n
        );
        assert_eq!(period_of(start + period, period), n + 1);
        assert_eq!(
            on_grid_every(start + Duration::from_nanos(1), period),
            start + period
        );
    }
}
