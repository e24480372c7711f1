//! Free disk space, and the decision not to start a recording when there is too little.
//!
//! Run unattended for weeks, a recorder eventually meets a full disk. Starting a file that will
//! fail a few seconds later helps nobody and can starve the files already running, so a new
//! recording only starts while the output folder's file system has at least `--min-free-mb`
//! free ([`DiskGuard`]); when it has not, the caller retries later with a [`Backoff`] and
//! resumes once space comes back (retention, a user, a hook freed some).
//!
//! The decision is pure (free bytes in, verdict out); only [`free_bytes`] touches the system.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// One megabyte as the `--…-mb` flags count it: 1 000 000 bytes (as `df -H` and disk vendors
/// count), so "412 MB free" reads the same here and on the drive's label.
pub const MB: u64 = 1_000_000;

/// Bytes an unprivileged process may still write on the file system holding `dir`
/// (`f_bavail * f_frsize` of `statvfs(3)`): the space a recording can really use, not counting
/// the blocks reserved for root.
#[cfg(unix)]
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::ffi::CString;
    use std::mem::MaybeUninit;
    use std::os::unix::ffi::OsStrExt;

    let c_path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `stat`
    // points to writable memory the size of `struct statvfs`, which the call fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `statvfs` returned 0, so it initialized the whole struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (32 or 64 bits); both widen losslessly.
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// Free space is only measured on Unix; elsewhere the answer is an `Unsupported` error, which
/// [`DiskGuard::check`] treats as "unknown, do not block".
#[cfg(not(unix))]
pub fn free_bytes(_dir: &Path) -> io::Result<u64> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "free space is only measured on Unix",
    ))
}

/// Why a recording was not started: the one line a user sees in the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "not starting a recording: {} MB free on {}, below --min-free-mb {}",
    free_bytes / MB,
    dir.display(),
    min_free_bytes / MB
)]
pub struct LowDisk {
    /// The output folder whose file system is too full.
    pub dir: PathBuf,
    /// Free bytes measured there.
    pub free_bytes: u64,
    /// The `--min-free-mb` threshold, in bytes.
    pub min_free_bytes: u64,
}

/// Decides whether a new recording may start, given the free space of the output folder.
/// Pure apart from [`DiskGuard::check`], so the rule is tested without filling a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
}

impl DiskGuard {
    /// A guard for recordings written to `dir` that refuses to start one below `min_free_mb`
    /// megabytes ([`MB`]) free; 0 disables the guard.
    pub fn new(dir: impl Into<PathBuf>, min_free_mb: u64) -> DiskGuard {
        DiskGuard {
            dir: dir.into(),
            min_free: min_free_mb.saturating_mul(MB),
        }
    }

    /// The threshold in bytes, for the status page.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free
    }

    /// The folder the guard measures.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `Ok` when a recording may start with `free` bytes free, else the reason (one line).
    /// Exactly the threshold is enough.
    pub fn may_start(&self, free: u64) -> Result<(), LowDisk> {
        if free >= self.min_free {
            Ok(())
        } else {
            Err(LowDisk {
                dir: self.dir.clone(),
                free_bytes: free,
                min_free_bytes: self.min_free,
            })
        }
    }

    /// Measures the folder now and decides. When the free space cannot be measured (folder
    /// missing, unsupported system) the recording is allowed: failing to measure must not stop
    /// a recorder, and creating the file will report a real problem clearly. A disabled guard
    /// (threshold 0) does not measure at all.
    pub fn check(&self) -> Result<(), LowDisk> {
        if self.min_free == 0 {
            return Ok(());
        }
        match free_bytes(&self.dir) {
            Ok(free) => self.may_start(free),
            Err(e) => {
                tracing::warn!(
                    "cannot measure free space on {} ({e}); starting the recording anyway",
                    self.dir.display()
                );
                Ok(())
            }
        }
    }
}

/// Delays between retries of something that fails until the world changes (here: a recording
/// waiting for disk space to come back): exponential, so a full disk is not polled in a tight
/// loop for weeks, capped, so recording resumes soon after space returns, and jittered, so
/// several waiting publishers do not all retry in the same instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 1 s, doubling, capped at 30 s.
    fn default() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `base` and doubles per attempt up to `cap` (a `cap` below `base` is raised to
    /// `base`).
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next retry, and one step further: a random point in the upper half
    /// of the current step, `[step/2, step]`, where `step = min(cap, base * 2^attempts)`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random_range(0.0..=1.0))
    }

    /// [`Backoff::next_delay`] with the random draw given (`unit` in `[0, 1]`, clamped), so the
    /// sequence can be tested exactly.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let step = self.current_step();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = step / 2;
        // Through f64 seconds, which cannot overflow or panic however large the step is.
        let jitter =
            Duration::try_from_secs_f64(half.as_secs_f64() * unit).map_or(half, |j| j.min(half));
        half.saturating_add(jitter)
    }

    /// Back to the first step: call it once the retried thing succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries so far since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn current_step(&self) -> Duration {
        // 2^31 times any base overflows or passes any sensible cap.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_of_a_real_folder() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_ok(), "statvfs on {}", dir.display());
    }

    #[test]
    fn free_bytes_errors_are_io_errors() {
        let err = free_bytes(Path::new("/nonexistent/ninjarec-disk")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = free_bytes(Path::new("a\0b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn guard_refuses_below_the_threshold_only() {
        let guard = DiskGuard::new("/out", 1000);
        assert_eq!(guard.min_free_bytes(), 1_000_000_000);
        assert_eq!(guard.may_start(1_000_000_000), Ok(()));
        assert_eq!(guard.may_start(u64::MAX), Ok(()));
        let err = guard.may_start(412_345_678).unwrap_err();
        assert_eq!(err.free_bytes, 412_345_678);
        assert_eq!(
            err.to_string(),
            "not starting a recording: 412 MB free on /out, below --min-free-mb 1000"
        );
        assert!(guard.may_start(999_999_999).is_err());
    }

    #[test]
    fn a_zero_threshold_disables_the_guard() {
        let guard = DiskGuard::new("/nonexistent/ninjarec-disk", 0);
        assert_eq!(guard.may_start(0), Ok(()));
        assert_eq!(guard.check(), Ok(()));
    }

    #[test]
    fn check_measures_and_allows_when_unmeasurable() {
        let missing = DiskGuard::new("/nonexistent/ninjarec-disk", 1);
        assert_eq!(missing.check(), Ok(()), "unknown free space never blocks");
        let impossible = DiskGuard::new(std::env::temp_dir(), u64::MAX / MB);
        let err = impossible.check().unwrap_err();
        assert_eq!(err.dir, std::env::temp_dir());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::default();
        let highs: Vec<u64> = (0..8)
            .map(|_| b.next_delay_with(1.0).as_millis() as u64)
            .collect();
        assert_eq!(highs, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        let lows: Vec<u64> = (0..7)
            .map(|_| b.next_delay_with(0.0).as_millis() as u64)
            .collect();
        assert_eq!(lows, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay_with(0.5), Duration::from_millis(750));
        assert_eq!(b.next_delay_with(f64::NAN), Duration::from_millis(1000));
        assert_eq!(b.next_delay_with(7.0), Duration::from_millis(4000));
    }

    #[test]
    fn random_delays_stay_within_their_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..50u32 {
            let step = Duration::from_millis(100)
                .saturating_mul(1u32 << attempt.min(20))
                .min(Duration::from_secs(2));
            let d = b.next_delay();
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            assert!(b.next_delay_with(1.0) <= Duration::MAX);
        }
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            b.next_delay_with(1.0),
            Duration::from_secs(5),
            "cap raised to base"
        );
        for _ in 0..u8::MAX {
            b.next_delay_with(0.0);
        }
        assert_eq!(b.attempts(), 256);
    }
}
