//! The recorder's own resource use and the free space of its output folder, read from the
//! kernel (`/proc/self`, and `statvfs` through [`crate::record::disk`]).
//!
//! Why: an unattended recorder fails slowly — a leak grows the resident set, a lost file handle
//! per stream exhausts descriptors, the disk fills up — and these numbers show it coming. They
//! are read at most once a second for a [`Snapshot`](super::snapshot::Snapshot), so plain file
//! reads are cheap enough, and nothing here may fail the recorder: every reader returns zero
//! (or `None`) when the kernel does not tell.

use super::snapshot::ProcessStats;

/// CPU seconds, resident set size and open descriptors of this process, from `/proc/self`
/// (zero for whatever cannot be read, e.g. on a system without procfs; never panics).
///
/// Why one call: the snapshot maker takes all three together once a second.
pub fn process_stats() -> ProcessStats {
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks_from_stat(&s))
        .map_or(0.0, |ticks| {
            ticks_to_seconds(ticks, clock_ticks_per_second())
        });
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| resident_pages_from_statm(&s))
        .map_or(0, |pages| pages.saturating_mul(page_size()));
    ProcessStats {
        cpu_seconds,
        rss_bytes,
        open_fds: open_fds(),
    }
}

/// `utime + stime` (clock ticks) from the text of `/proc/<pid>/stat`.
///
/// The second field, the command name, is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted after the *last* `)`: there `state` is the first field,
/// `utime` the 12th and `stime` the 13th (fields 14 and 15 of proc(5)).
fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Resident pages (the second field) from the text of `/proc/<pid>/statm`.
fn resident_pages_from_statm(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn ticks_to_seconds(ticks: u64, per_second: u64) -> f64 {
    if per_second == 0 {
        return 0.0;
    }
    ticks as f64 / per_second as f64
}

/// `sysconf(_SC_CLK_TCK)` (100 on every Linux in practice), 0 if the kernel does not say.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).unwrap_or(0)
}

/// `sysconf(_SC_PAGESIZE)`, 0 if the kernel does not say.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(0)
}

/// Entries of `/proc/self/fd`, less the one descriptor the listing itself holds open.
fn open_fds() -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => (dir.count() as u64).saturating_sub(1),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and a ')' in it, as a hostile or odd binary name can be.
        let stat = "4242 (my) prog (x)) S 1 4242 4242 0 -1 4194560 1234 0 5 0 150 37 0 0 20 0 9 0 \
                    123456 99999999 2500 18446744073709551615 1 1 0 0 0 0 0 4096 17926 0 0 0 17 1 0 0";
        assert_eq!(cpu_ticks_from_stat(stat), Some(187));
        assert_eq!(cpu_ticks_from_stat("garbage"), None);
        assert_eq!(cpu_ticks_from_stat("1 (x) S 1 2"), None);
        assert_eq!(
            cpu_ticks_from_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 notanumber 3"),
            None
        );
        assert_eq!(ticks_to_seconds(187, 100), 1.87);
        assert_eq!(ticks_to_seconds(187, 0), 0.0);
    }

    #[test]
    fn statm_gives_resident_pages() {
        assert_eq!(
            resident_pages_from_statm("5000 1200 300 10 0 800 0\n"),
            Some(1200)
        );
        assert_eq!(resident_pages_from_statm("5000"), None);
        assert_eq!(resident_pages_from_statm(""), None);
    }

    #[test]
    fn this_process_is_measured() {
        // Burn a little CPU so the tick counter has moved (100 Hz: 10 ms per tick).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let p = process_stats();
        assert!(p.cpu_seconds > 0.0, "{p:?}");
        assert!(p.rss_bytes > 1_000_000, "{p:?}");
        // stdin, stdout, stderr at least; the listing's own descriptor is not counted.
        assert!(p.open_fds >= 3, "{p:?}");
    }
}
