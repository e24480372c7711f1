//! The journal on disk: one journal per running recorder, next to the files, and the adoption
//! of the journals of recorders that died.
//!
//! Each run writes `.ninjarec-upload-<id>.journal` and holds an exclusive lock on
//! `.ninjarec-upload-<id>.lock` for as long as it lives. The kernel drops the lock when the
//! process ends, however it ends, so at start a run takes over every journal whose lock it can
//! take: the recorder that wrote it is gone (crash, `kill -9`, clean stop with uploads still
//! owed). Several recorders may share one folder; a live one's journal is never touched. The
//! adopted state is written and synced into the new journal before the old one is removed, so
//! a crash during adoption leaves the state in one or both (merging is idempotent).
//!
//! Blocking code: call it from `spawn_blocking` or a thread of its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::journal::{FileState, Journal, JournalLine};

const STEM: &str = ".ninjarec-upload-";

/// What adoption found at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Journals of dead recorders taken over.
    pub journals: usize,
    /// Journal lines that could not be read (torn by a crash, or foreign).
    pub skipped_lines: usize,
}

/// The running recorder's journal.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    lock_path: PathBuf,
    journal_path: PathBuf,
    /// Held (locked) for the life of the spool.
    _lock: File,
    journal: File,
    state: Journal,
    lines_written: usize,
    keep_uploaded: bool,
}

impl Spool {
    /// Creates this run's journal in `dir` and adopts the journals of dead recorders.
    /// `keep_uploaded`: uploaded files still owe a local deletion (`--upload-delete-local`).
    pub fn open(dir: &Path, keep_uploaded: bool) -> io::Result<(Spool, Adopted)> {
        // Unique per open: time, process, and a counter (two opens in one millisecond).
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "{}-{}-{}",
            crate::record::manifest::unix_ms(),
            std::process::id(),
            OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let lock_path = dir.join(format!("{STEM}{id}.lock"));
        let journal_path = dir.join(format!("{STEM}{id}.journal"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::Error(e) => e,
            fs::TryLockError::WouldBlock => io::Error::other("upload journal lock taken"),
        })?;
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&journal_path)?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            lock_path,
            journal_path,
            _lock: lock,
            journal,
            state: Journal::default(),
            lines_written: 0,
            keep_uploaded,
        };
        let adopted = spool.adopt()?;
        Ok((spool, adopted))
    }

    /// Takes over every journal whose owner is gone.
    fn adopt(&mut self) -> io::Result<Adopted> {
        let mut adopted = Adopted::default();
        let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name.strip_prefix(STEM) else {
                continue;
            };
            let id = id
                .strip_suffix(".lock")
                .or_else(|| id.strip_suffix(".journal"));
            let Some(id) = id else { continue };
            let lock = self.dir.join(format!("{STEM}{id}.lock"));
            let journal = self.dir.join(format!("{STEM}{id}.journal"));
            if lock == self.lock_path || found.iter().any(|(l, _)| *l == lock) {
                continue;
            }
            found.push((lock, journal));
        }
        found.sort();
        let mut merged = Journal::default();
        let mut taken = Vec::new();
        for (lock_path, journal_path) in found {
            // A lock file we can lock belongs to nobody; a missing one (removed by a crash
            // between the two deletions) too.
            let held = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(f) => match f.try_lock() {
                    Ok(()) => Some(f),
                    Err(fs::TryLockError::WouldBlock) => continue,
                    Err(fs::TryLockError::Error(e)) => return Err(e),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let text = match fs::read_to_string(&journal_path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            let (mut dead, skipped) = Journal::replay(&text);
            // Whatever the dead recorder was writing is finished now.
            for name in dead.to_upload(true) {
                if dead.state(&name) == Some(FileState::Opened) {
                    let bytes = fs::metadata(self.dir.join(&name)).map_or(0, |m| m.len());
                    dead.apply(&JournalLine::Closed { file: name, bytes });
                }
            }
            if !self.keep_uploaded {
                dead.drop_uploaded();
            }
            merged.merge(&dead);
            adopted.journals += 1;
            adopted.skipped_lines += skipped;
            taken.push((lock_path, journal_path, held));
        }
        if adopted.journals == 0 {
            return Ok(adopted);
        }
        for line in merged.lines(self.keep_uploaded) {
            self.write_line(&line)?;
        }
        self.journal.sync_data()?;
        sync_dir(&self.dir);
        for (lock_path, journal_path, held) in taken {
            let _ = fs::remove_file(&journal_path);
            let _ = fs::remove_file(&lock_path);
            drop(held);
        }
        sync_dir(&self.dir);
        Ok(adopted)
    }

    /// Records one step durably (written and synced before it returns).
    pub fn append(&mut self, line: &JournalLine) -> io::Result<()> {
        self.write_line(line)?;
        self.journal.sync_data()?;
        if self.lines_written > 2_000 && self.lines_written > 4 * (self.state.len() + 1) {
            self.compact()?;
        }
        Ok(())
    }

    fn write_line(&mut self, line: &JournalLine) -> io::Result<()> {
        self.state.apply(line);
        if !self.keep_uploaded {
            self.state.drop_uploaded();
        }
        self.journal.write_all(line.encode().as_bytes())?;
        self.lines_written += 1;
        Ok(())
    }

    /// Rewrites the journal with only what is still owed (temp file, sync, rename).
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.journal_path.with_extension("journal.tmp");
        let mut f = File::create(&tmp)?;
        let lines = self.state.lines(self.keep_uploaded);
        let text: String = lines.iter().map(JournalLine::encode).collect();
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.journal_path)?;
        sync_dir(&self.dir);
        self.journal = OpenOptions::new().append(true).open(&self.journal_path)?;
        self.lines_written = lines.len();
        Ok(())
    }

    /// What is owed now.
    pub fn state(&self) -> &Journal {
        &self.state
    }

    /// The journal's path (for messages).
    pub fn path(&self) -> &Path {
        &self.journal_path
    }

    /// Ends the run: with nothing owed the journal and its lock go; otherwise they stay for the
    /// next start, which adopts them.
    pub fn close(self) -> bool {
        let empty = self.state.is_empty();
        if empty {
            let _ = fs::remove_file(&self.journal_path);
            let _ = fs::remove_file(&self.lock_path);
            sync_dir(&self.dir);
        }
        empty
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ninjarec-spool-{name}-{}-{}",
            std::process::id(),
            crate::record::manifest::unix_ms()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_dead_recorders_journal_is_adopted_and_a_live_one_is_left_alone() {
        let dir = tmpdir("adopt");
        fs::write(dir.join("a.ts"), b"12345").unwrap();
        let (mut live, adopted) = Spool::open(&dir, false).unwrap();
        assert_eq!(adopted, Adopted::default());
        live.append(&JournalLine::Opened {
            file: "live.ts".into(),
        })
        .unwrap();
        // A dead recorder: its lock file exists but nobody holds it; its journal was torn.
        fs::write(dir.join(format!("{STEM}1-1.lock")), b"").unwrap();
        let mut dead = String::new();
        dead.push_str(
            &JournalLine::Opened {
                file: "a.ts".into(),
            }
            .encode(),
        );
        dead.push_str(
            &JournalLine::Closed {
                file: "b.ts".into(),
                bytes: 3,
            }
            .encode(),
        );
        dead.push_str("{\"op\":\"clo");
        fs::write(dir.join(format!("{STEM}1-1.journal")), dead).unwrap();
        // A journal whose lock file is already gone.
        fs::write(
            dir.join(format!("{STEM}2-2.journal")),
            JournalLine::Closed {
                file: "c.ts".into(),
                bytes: 1,
            }
            .encode(),
        )
        .unwrap();

        let (next, adopted) = Spool::open(&dir, false).unwrap();
        assert_eq!(adopted.journals, 2);
        assert_eq!(adopted.skipped_lines, 1);
        assert_eq!(next.state().state("a.ts"), Some(FileState::Closed(5)));
        assert_eq!(next.state().to_upload(false), ["a.ts", "b.ts", "c.ts"]);
        assert_eq!(
            next.state().state("live.ts"),
            None,
            "the live journal is not taken"
        );
        assert!(!dir.join(format!("{STEM}1-1.journal")).exists());
        assert!(!dir.join(format!("{STEM}1-1.lock")).exists());
        assert!(live.path().exists());
        // The live recorder ends with something owed: its journal stays for the next start.
        assert!(!live.close());
        assert!(!next.close());
        let (third, adopted) = Spool::open(&dir, false).unwrap();
        assert_eq!(adopted.journals, 2);
        assert_eq!(
            third.state().to_upload(false),
            ["a.ts", "b.ts", "c.ts", "live.ts"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_keeps_only_what_is_owed_and_an_empty_journal_is_removed() {
        let dir = tmpdir("compact");
        let (mut s, _) = Spool::open(&dir, false).unwrap();
        for i in 0..1_500 {
            let file = format!("f{i:05}.ts");
            s.append(&JournalLine::Opened { file: file.clone() })
                .unwrap();
            s.append(&JournalLine::Closed {
                file: file.clone(),
                bytes: 1,
            })
            .unwrap();
            if i != 7 {
                s.append(&JournalLine::Uploaded {
                    file,
                    key: String::new(),
                    bytes: 1,
                    etag: String::new(),
                })
                .unwrap();
            }
        }
        let text = fs::read_to_string(s.path()).unwrap();
        assert!(text.lines().count() < 2_100, "{}", text.lines().count());
        let (mut j, skipped) = Journal::replay(&text);
        assert_eq!(skipped, 0);
        // Lines since the last compaction still name uploaded files; without
        // --upload-delete-local nothing is owed for them.
        j.drop_uploaded();
        assert_eq!(j, *s.state());
        assert_eq!(j.to_upload(false), ["f00007.ts"]);
        s.append(&JournalLine::Forgotten {
            file: "f00007.ts".into(),
            why: "test".into(),
        })
        .unwrap();
        let path = s.path().to_owned();
        assert!(s.close());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
