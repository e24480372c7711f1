//! `--delete-after DAYS` and `--keep-mb M`: old recordings are deleted so an unattended
//! recorder does not fill its disk over weeks.
//!
//! Deleting is the one irreversible thing this program does, so the rules are narrow and the
//! decision is a pure function ([`plan`]) tested on its own:
//! - only files this recorder names ([`is_recording_name`]: `PREFIX_<streamID>_<unix>[_N][_<seq>]`
//!   with a `.ts`, `.webm` or `.mkv` extension) are ever considered; room timelines
//!   (`PREFIX_<unix>.timeline.jsonl`), partial or unknown files and anything else in the folder
//!   are never touched;
//! - a file being written (`in_use`) is never deleted, nor one modified very recently
//!   ([`RetentionPolicy::protect_recent`]), in case it was opened after `in_use` was taken;
//! - first files older than `--delete-after` go, then, oldest first, finished files until their
//!   total is at most `--keep-mb`.
//!
//! [`scan`] and [`apply`] are the thin, blocking shell around it (call them from
//! `tokio::task::spawn_blocking`); only regular files are looked at, symbolic links are neither
//! followed nor deleted.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use super::disk::MB;
use super::naming::{MAX_COMPONENT, sanitize_component};

/// Extensions of the files the recorder writes (see `ContainerKind`).
const RECORDING_EXTENSIONS: [&str; 3] = ["ts", "webm", "mkv"];

/// What may be deleted, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// `--delete-after`: recordings last modified longer ago than this are deleted.
    pub max_age: Option<Duration>,
    /// `--keep-mb` in bytes: the oldest finished recordings are deleted until the rest fit.
    pub keep_bytes: Option<u64>,
    /// Recordings modified less than this long ago are never deleted, whatever the limits: a
    /// safety margin for a file opened just after the caller listed the files in use.
    pub protect_recent: Duration,
}

/// Default [`RetentionPolicy::protect_recent`]: a file being written is modified far more
/// often than this.
pub const DEFAULT_PROTECT_RECENT: Duration = Duration::from_secs(5 * 60);

impl RetentionPolicy {
    /// The policy of `--delete-after DAYS` and `--keep-mb M` (each optional; `None` for both
    /// deletes nothing).
    pub fn from_flags(delete_after_days: Option<u64>, keep_mb: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            max_age: delete_after_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
            keep_bytes: keep_mb.map(|m| m.saturating_mul(MB)),
            protect_recent: DEFAULT_PROTECT_RECENT,
        }
    }

    /// Whether the policy can delete anything at all (if not, there is no need to scan).
    pub fn is_active(&self) -> bool {
        self.max_age.is_some() || self.keep_bytes.is_some()
    }
}

/// One file of the output folder, as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// Whether `name` (a bare file name) is a recording this recorder made with `prefix` (as given
/// on the command line; it is sanitized the way file names are): `PREFIX_ID_D[_D][_D].EXT`,
/// where `ID` is a sanitized stream ID, each `D` is a decimal number (the Unix time, then the
/// optional `_N` for a taken name and `_<seq>` for a segment) and `EXT` is `ts`, `webm` or
/// `mkv`. Another program's file that happens to follow the same pattern cannot be told apart:
/// give the recorder a folder of its own.
pub fn is_recording_name(name: &str, prefix: &str) -> bool {
    let prefix = sanitize_component(prefix);
    let Some(rest) = name
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_prefix('_'))
    else {
        return false;
    };
    let Some((stem, ext)) = rest.rsplit_once('.') else {
        return false;
    };
    if !RECORDING_EXTENSIONS.contains(&ext) {
        return false;
    }
    // Up to three numbers at the end; the stream ID before them may itself hold `_` and digits.
    let mut id = stem;
    for _ in 0..3 {
        let Some((head, number)) = id.rsplit_once('_') else {
            return false;
        };
        if !is_number(number) {
            return false;
        }
        if is_sanitized_id(head) {
            return true;
        }
        id = head;
    }
    false
}

fn is_number(s: &str) -> bool {
    (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// What `sanitize_component` can produce (except that it never produces an empty string).
fn is_sanitized_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_COMPONENT
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a file is deleted, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Age,
    Size,
}

/// The recordings to delete under `policy`, in the order to delete them (oldest first within
/// each rule): see the module doc for the rules. Files not named like this recorder's
/// recordings with `prefix`, files in `in_use` (matched by path or by file name, so `out/x.ts`
/// and `./out/x.ts` agree; all recordings live in one folder) and files modified within
/// `policy.protect_recent` of `now` are never returned. Files in use do not count towards
/// `keep_bytes`; recent ones do (they are finished, just protected). A modification time in
/// the future counts as age zero.
pub fn plan(
    files: &[FileInfo],
    prefix: &str,
    in_use: &HashSet<PathBuf>,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Vec<PathBuf> {
    plan_with_reasons(files, prefix, in_use, policy, now)
        .into_iter()
        .map(|(i, _)| files[i].path.clone())
        .collect()
}

/// [`plan`] as indices into `files`, with the rule that chose each.
fn plan_with_reasons(
    files: &[FileInfo],
    prefix: &str,
    in_use: &HashSet<PathBuf>,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> Vec<(usize, Reason)> {
    if !policy.is_active() {
        return Vec::new();
    }
    let names_in_use: HashSet<&OsStr> = in_use.iter().filter_map(|p| p.file_name()).collect();
    let mut finished: Vec<usize> = (0..files.len())
        .filter(|&i| {
            let path = &files[i].path;
            let Some(name) = path.file_name() else {
                return false;
            };
            name.to_str().is_some_and(|n| is_recording_name(n, prefix))
                && !in_use.contains(path)
                && !names_in_use.contains(name)
        })
        .collect();
    finished.sort_by(|&a, &b| {
        (files[a].modified, &files[a].path).cmp(&(files[b].modified, &files[b].path))
    });
    let age = |i: usize| now.duration_since(files[i].modified).unwrap_or_default();
    let deletable = |i: usize| age(i) >= policy.protect_recent;

    let mut out = Vec::new();
    let mut kept = Vec::with_capacity(finished.len());
    for i in finished {
        match policy.max_age {
            Some(max) if age(i) > max && deletable(i) => out.push((i, Reason::Age)),
            _ => kept.push(i),
        }
    }
    if let Some(keep) = policy.keep_bytes {
        let mut total: u64 = kept.iter().map(|&i| files[i].bytes).sum();
        for i in kept {
            if total <= keep {
                break;
            }
            if deletable(i) {
                out.push((i, Reason::Size));
                total -= files[i].bytes;
            }
        }
    }
    out
}

/// Lists the regular files directly in `dir` named like recordings made with `prefix`
/// (symbolic links and everything else are skipped, never followed). Entries that vanish or
/// cannot be read while listing are skipped: another process may be tidying the folder too.
pub fn scan(dir: &Path, prefix: &str) -> io::Result<Vec<FileInfo>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        // `DirEntry::file_type` and `DirEntry::metadata` do not traverse symbolic links.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| is_recording_name(n, prefix)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        files.push(FileInfo {
            path: entry.path(),
            bytes: meta.len(),
            modified,
        });
    }
    Ok(files)
}

/// A retention pass that could not do everything it meant to.
#[derive(Debug, Error)]
pub enum RetentionError {
    /// The output folder could not be listed: nothing was deleted.
    #[error("cannot list {} for retention: {source}", dir.display())]
    Scan {
        /// The output folder.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// One file could not be deleted; the others still were.
    #[error("cannot delete old recording {}: {source}", path.display())]
    Delete {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// What one retention pass did, for the log and the status page.
#[derive(Debug, Default)]
pub struct RetentionReport {
    /// The files deleted, with their sizes.
    pub deleted: Vec<(PathBuf, u64)>,
    /// What went wrong (each already logged as a warning).
    pub errors: Vec<RetentionError>,
}

impl RetentionReport {
    /// Bytes freed by the pass.
    pub fn freed_bytes(&self) -> u64 {
        self.deleted.iter().map(|(_, b)| b).sum()
    }
}

/// One retention pass over `dir`: [`scan`], [`plan`], delete, one info line per deleted file
/// and one warning per failure. Blocking; a file already gone when deleted is not an error.
pub fn apply(
    dir: &Path,
    prefix: &str,
    in_use: &HashSet<PathBuf>,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> RetentionReport {
    let mut report = RetentionReport::default();
    if !policy.is_active() {
        return report;
    }
    let files = match scan(dir, prefix) {
        Ok(files) => files,
        Err(source) => {
            let err = RetentionError::Scan {
                dir: dir.to_path_buf(),
                source,
            };
            tracing::warn!("{err}");
            report.errors.push(err);
            return report;
        }
    };
    for (i, reason) in plan_with_reasons(&files, prefix, in_use, policy, now) {
        let file = &files[i];
        match std::fs::remove_file(&file.path) {
            Ok(()) => {
                let days = now
                    .duration_since(file.modified)
                    .unwrap_or_default()
                    .as_secs_f64()
                    / 86_400.0;
                let why = match reason {
                    Reason::Age => "older than --delete-after",
                    Reason::Size => "over --keep-mb",
                };
                tracing::info!(
                    "deleted {} ({:.1} MB, {days:.1} days old): {why}",
                    file.path.display(),
                    file.bytes as f64 / MB as f64
                );
                report.deleted.push((file.path.clone(), file.bytes));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!("{} was already gone", file.path.display());
            }
            Err(source) => {
                let err = RetentionError::Delete {
                    path: file.path.clone(),
                    source,
                };
                tracing::warn!("{err}");
                report.errors.push(err);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn file(name: &str, bytes: u64, age: Duration) -> FileInfo {
        FileInfo {
            path: Path::new("/out").join(name),
            bytes,
            modified: now() - age,
        }
    }

    fn policy(max_age: Option<Duration>, keep_bytes: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            max_age,
            keep_bytes,
            protect_recent: Duration::from_secs(60),
        }
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn recording_names_are_recognized() {
        for name in [
            "room_cam1_1700000000.ts",
            "room_cam1_1700000000.webm",
            "room_cam1_1700000000.mkv",
            "room_cam1_1700000000_2.ts",
            "room_cam1_1700000000_2_17.ts",
            // Stream IDs may hold `_` and digits themselves: this is ID `cam1_1700000000_1_2`.
            "room_cam1_1700000000_1_2_3.ts",
            "room_cam_1_1700000000.ts",
            "room_a.b-c_1700000000.mkv",
            "room__._.._x_1700000000.ts",
            "room_stream_0.ts",
        ] {
            assert!(is_recording_name(name, "room"), "{name}");
        }
        let long_id = "z".repeat(MAX_COMPONENT);
        assert!(is_recording_name(
            &format!("room_{long_id}_1700000000_3.ts"),
            "room"
        ));
        // The prefix is sanitized like the recorder does.
        assert!(is_recording_name("my_room_cam_1700000000.ts", "my room"));
    }

    #[test]
    fn other_names_are_not_recordings() {
        for name in [
            "room_1700000000.timeline.jsonl",
            "room_cam1_1700000000.ts.part",
            "room_cam1_1700000000.txt",
            "room_cam1_1700000000",
            "room_cam1.ts",
            "room_cam1_x1700000000.ts",
            "room_1700000000.ts",
            "other_cam1_1700000000.ts",
            "roomcam1_1700000000.ts",
            "room_.hidden_1700000000.ts",
            "room_cam 1_1700000000.ts",
            "room_cam1__1700000000.ts.",
            "room_cam1_123456789012345678901.ts",
            "",
        ] {
            assert!(!is_recording_name(name, "room"), "{name}");
        }
        let too_long = "z".repeat(MAX_COMPONENT + 1);
        assert!(!is_recording_name(&format!("room_{too_long}_1.ts"), "room"));
    }

    #[test]
    fn age_deletes_only_older_files() {
        let files = [
            file("room_a_1.ts", 10, 10 * DAY),
            file("room_b_2.ts", 10, 2 * DAY),
            file("room_c_3_1.webm", 10, 8 * DAY),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(Some(7 * DAY), None),
            now(),
        );
        assert_eq!(names(&out), ["room_a_1.ts", "room_c_3_1.webm"]);
    }

    #[test]
    fn size_deletes_oldest_first_until_the_rest_fit() {
        let files = [
            file("room_new_5.ts", 300, Duration::from_secs(3600)),
            file("room_old_1.ts", 300, 3 * DAY),
            file("room_mid_3.mkv", 300, 2 * DAY),
            file("room_older_2_1.ts", 300, 2 * DAY + Duration::from_secs(1)),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(None, Some(600)),
            now(),
        );
        assert_eq!(names(&out), ["room_old_1.ts", "room_older_2_1.ts"]);
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(None, Some(1200)),
            now(),
        );
        assert!(out.is_empty(), "exactly at the limit keeps everything");
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(None, Some(0)),
            now(),
        );
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn age_then_size() {
        let files = [
            file("room_a_1.ts", 500, 9 * DAY),
            file("room_b_2.ts", 500, 5 * DAY),
            file("room_c_3.ts", 500, 4 * DAY),
            file("room_d_4.ts", 500, DAY),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(Some(7 * DAY), Some(1000)),
            now(),
        );
        assert_eq!(names(&out), ["room_a_1.ts", "room_b_2.ts"]);
    }

    #[test]
    fn files_in_use_are_never_deleted_nor_counted() {
        let files = [
            file("room_live_1.ts", 5000, 30 * DAY),
            file("room_old_2.ts", 100, 20 * DAY),
            file("room_new_3.ts", 100, DAY),
        ];
        // In use by path, and by name under another spelling of the folder.
        for live in [
            PathBuf::from("/out/room_live_1.ts"),
            PathBuf::from("/out/./room_live_1.ts"),
            PathBuf::from("out/room_live_1.ts"),
        ] {
            let in_use = HashSet::from([live]);
            let out = plan(
                &files,
                "room",
                &in_use,
                &policy(Some(10 * DAY), Some(100)),
                now(),
            );
            assert_eq!(names(&out), ["room_old_2.ts"]);
            let out = plan(&files, "room", &in_use, &policy(None, Some(200)), now());
            assert!(
                out.is_empty(),
                "the live file does not count towards --keep-mb"
            );
        }
    }

    #[test]
    fn recent_files_are_protected_but_counted() {
        let files = [
            file("room_a_1.ts", 100, Duration::from_secs(59)),
            file("room_b_2.ts", 100, Duration::from_secs(10)),
            file("room_c_3.ts", 100, Duration::from_secs(61)),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(None, Some(50)),
            now(),
        );
        assert_eq!(names(&out), ["room_c_3.ts"]);
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(Some(Duration::ZERO), None),
            now(),
        );
        assert_eq!(names(&out), ["room_c_3.ts"]);
        // A clock set back: modified "in the future" is age zero, so protected.
        let future = [FileInfo {
            modified: now() + DAY,
            ..file("room_f_1.ts", 100, Duration::ZERO)
        }];
        let out = plan(
            &future,
            "room",
            &HashSet::new(),
            &policy(Some(Duration::ZERO), Some(0)),
            now(),
        );
        assert!(out.is_empty());
    }

    #[test]
    fn foreign_and_timeline_files_are_untouched() {
        let files = [
            file("room_1700000000.timeline.jsonl", 10_000, 100 * DAY),
            file("notes.txt", 10_000, 100 * DAY),
            file("other_cam_1700000000.ts", 10_000, 100 * DAY),
            file("room_cam_1700000000.ts.part", 10_000, 100 * DAY),
            file("room_cam_1700000000_1.ts", 10, 100 * DAY),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(Some(DAY), Some(0)),
            now(),
        );
        assert_eq!(names(&out), ["room_cam_1700000000_1.ts"]);
    }

    #[test]
    fn no_policy_deletes_nothing() {
        let files = [file("room_a_1.ts", u64::MAX, 1000 * DAY)];
        let p = RetentionPolicy::from_flags(None, None);
        assert!(!p.is_active());
        assert!(plan(&files, "room", &HashSet::new(), &p, now()).is_empty());
        let p = RetentionPolicy::from_flags(Some(7), Some(1000));
        assert_eq!(p.max_age, Some(7 * DAY));
        assert_eq!(p.keep_bytes, Some(1_000_000_000));
        assert_eq!(p.protect_recent, DEFAULT_PROTECT_RECENT);
    }

    #[test]
    fn equal_times_are_ordered_by_path() {
        let files = [
            file("room_b_1.ts", 100, 2 * DAY),
            file("room_a_1.ts", 100, 2 * DAY),
        ];
        let out = plan(
            &files,
            "room",
            &HashSet::new(),
            &policy(None, Some(100)),
            now(),
        );
        assert_eq!(names(&out), ["room_a_1.ts"]);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ninjarec-retention-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_aged(dir: &Path, name: &str, bytes: usize, age: Duration) -> PathBuf {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(bytes as u64).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn apply_deletes_on_a_real_folder() {
        let dir = temp_dir("apply");
        let old = write_aged(&dir, "room_cam_1700000000.ts", 1000, 10 * DAY);
        let big = write_aged(&dir, "room_cam_1700000100_1.webm", 3000, 3 * DAY);
        let new = write_aged(&dir, "room_cam_1700000200.mkv", 1000, DAY);
        let live = write_aged(&dir, "room_cam_1700000300.ts", 5000, 20 * DAY);
        let timeline = write_aged(&dir, "room_1700000000.timeline.jsonl", 9000, 30 * DAY);
        let foreign = write_aged(&dir, "holiday.mkv", 9000, 30 * DAY);
        std::fs::create_dir(dir.join("room_sub_1700000000.ts")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&new, dir.join("room_link_1700000000.ts")).unwrap();

        let files = scan(&dir, "room").unwrap();
        let mut scanned: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        scanned.sort();
        assert_eq!(
            scanned,
            [old.clone(), big.clone(), new.clone(), live.clone()]
        );

        let in_use = HashSet::from([live.clone()]);
        let report = apply(
            &dir,
            "room",
            &in_use,
            &RetentionPolicy {
                keep_bytes: Some(2000),
                ..RetentionPolicy::from_flags(Some(7), None)
            },
            SystemTime::now(),
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.deleted, [(old.clone(), 1000), (big.clone(), 3000)]);
        assert_eq!(report.freed_bytes(), 4000);
        for gone in [&old, &big] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        for kept in [&new, &live, &timeline, &foreign] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(dir.join("room_sub_1700000000.ts").is_dir());
        #[cfg(unix)]
        assert!(
            dir.join("room_link_1700000000.ts")
                .symlink_metadata()
                .is_ok()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn apply_reports_a_missing_folder() {
        let report = apply(
            Path::new("/nonexistent/ninjarec-retention"),
            "room",
            &HashSet::new(),
            &RetentionPolicy::from_flags(Some(1), None),
            SystemTime::now(),
        );
        assert!(report.deleted.is_empty());
        assert!(matches!(
            report.errors.as_slice(),
            [RetentionError::Scan { .. }]
        ));
    }
}
