//! The upload journal: what is owed to the bucket, in a form that survives `kill -9`.
//!
//! The output folder is the spool and the source of truth; the journal only says, per file
//! name, how far it got: **opened** (being written), **closed** (finished, to upload),
//! **uploaded** (confirmed in the bucket: size and ETag checked), **deleted** (removed locally
//! after confirmation, with `--upload-delete-local`) or **forgotten** (gone from the folder
//! before it could be uploaded, said once). It is JSON Lines, one line appended and synced per
//! step, so a crash loses at most the line being written; a torn last line is skipped on replay.
//!
//! After a crash, a file left **opened** is as finished as it will ever be (every file on disk
//! is playable up to its last complete frame), so replay treats it like **closed**. This module
//! is the pure state machine; [`super::spool`] does the file work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum JournalLine {
    /// The recorder started writing this file.
    Opened {
        /// File name in the output folder.
        file: String,
    },
    /// The file is finished: upload it.
    Closed {
        /// File name in the output folder.
        file: String,
        /// Its size when closed.
        bytes: u64,
    },
    /// The object is in the bucket and was checked against the file.
    Uploaded {
        /// File name in the output folder.
        file: String,
        /// Object key.
        key: String,
        /// Size checked.
        bytes: u64,
        /// The store's ETag (checked against our MD5 where the store uses MD5 ETags).
        etag: String,
    },
    /// Removed locally after its upload was confirmed.
    Deleted {
        /// File name in the output folder.
        file: String,
    },
    /// Gone from the folder before it was uploaded; not tried again.
    Forgotten {
        /// File name in the output folder.
        file: String,
        /// Why.
        why: String,
    },
}

impl JournalLine {
    /// The file the line is about.
    pub fn file(&self) -> &str {
        match self {
            JournalLine::Opened { file }
            | JournalLine::Closed { file, .. }
            | JournalLine::Uploaded { file, .. }
            | JournalLine::Deleted { file }
            | JournalLine::Forgotten { file, .. } => file,
        }
    }

    /// The line as written: compact JSON and a newline.
    pub fn encode(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// How far one file got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Being written (or, after a crash, finished by the crash).
    Opened,
    /// Finished, waiting for upload; size when closed.
    Closed(u64),
    /// Confirmed in the bucket, still on disk.
    Uploaded,
}

/// The state of every file the journal still owes something for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    files: BTreeMap<String, FileState>,
}

/// A file name the journal accepts: one plain name in the output folder, never a path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

impl Journal {
    /// Rebuilds the state from a journal's text; returns it with the number of lines skipped
    /// (torn, unknown or naming something outside the folder).
    pub fn replay(text: &str) -> (Journal, usize) {
        let mut j = Journal::default();
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<JournalLine>(line) {
                Ok(l) if valid_name(l.file()) => j.apply(&l),
                _ => skipped += 1,
            }
        }
        (j, skipped)
    }

    /// One step. Steps never go back: a late `opened` or `closed` for an uploaded file (a
    /// journal merged twice) changes nothing.
    pub fn apply(&mut self, line: &JournalLine) {
        let name = line.file().to_owned();
        let now = self.files.get(&name).copied();
        match line {
            JournalLine::Opened { .. } => {
                if now.is_none() {
                    self.files.insert(name, FileState::Opened);
                }
            }
            JournalLine::Closed { bytes, .. } => {
                if matches!(
                    now,
                    None | Some(FileState::Opened) | Some(FileState::Closed(_))
                ) {
                    self.files.insert(name, FileState::Closed(*bytes));
                }
            }
            JournalLine::Uploaded { .. } => {
                self.files.insert(name, FileState::Uploaded);
            }
            JournalLine::Deleted { .. } | JournalLine::Forgotten { .. } => {
                self.files.remove(&name);
            }
        }
    }

    /// Merges another journal (a dead recorder's): each file takes the further state.
    pub fn merge(&mut self, other: &Journal) {
        for line in other.lines(true) {
            self.apply(&line);
        }
    }

    /// Where one file stands, if the journal still holds it.
    pub fn state(&self, name: &str) -> Option<FileState> {
        self.files.get(name).copied()
    }

    /// Files to upload, oldest name first (names carry their Unix second, so this is roughly
    /// the order they were recorded): closed ones, and opened ones if `crashed` (their writer
    /// is gone).
    pub fn to_upload(&self, crashed: bool) -> Vec<String> {
        self.files
            .iter()
            .filter(|(_, s)| match s {
                FileState::Closed(_) => true,
                FileState::Opened => crashed,
                FileState::Uploaded => false,
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Files confirmed in the bucket but not yet deleted locally.
    pub fn uploaded(&self) -> Vec<String> {
        self.files
            .iter()
            .filter(|(_, s)| **s == FileState::Uploaded)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Number of files held.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Forgets uploaded files (when they are kept locally nothing more is owed for them).
    pub fn drop_uploaded(&mut self) {
        self.files.retain(|_, s| *s != FileState::Uploaded);
    }

    /// The state as journal lines, for a compacted journal. Uploaded files appear only when
    /// `keep_uploaded` (their local deletion is still owed).
    pub fn lines(&self, keep_uploaded: bool) -> Vec<JournalLine> {
        let mut out = Vec::with_capacity(self.files.len());
        for (name, s) in &self.files {
            let file = name.clone();
            match s {
                FileState::Opened => out.push(JournalLine::Opened { file }),
                FileState::Closed(bytes) => out.push(JournalLine::Closed {
                    file,
                    bytes: *bytes,
                }),
                FileState::Uploaded if keep_uploaded => out.push(JournalLine::Uploaded {
                    file,
                    key: String::new(),
                    bytes: 0,
                    etag: String::new(),
                }),
                FileState::Uploaded => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(f: &str) -> JournalLine {
        JournalLine::Opened { file: f.into() }
    }
    fn closed(f: &str, bytes: u64) -> JournalLine {
        JournalLine::Closed {
            file: f.into(),
            bytes,
        }
    }
    fn uploaded(f: &str) -> JournalLine {
        JournalLine::Uploaded {
            file: f.into(),
            key: format!("p/{f}"),
            bytes: 1,
            etag: "e".into(),
        }
    }

    #[test]
    fn a_file_walks_opened_closed_uploaded_deleted() {
        let mut j = Journal::default();
        j.apply(&opened("a.ts"));
        assert_eq!(j.state("a.ts"), Some(FileState::Opened));
        assert!(j.to_upload(false).is_empty());
        assert_eq!(j.to_upload(true), ["a.ts"]);
        j.apply(&closed("a.ts", 10));
        assert_eq!(j.to_upload(false), ["a.ts"]);
        j.apply(&uploaded("a.ts"));
        assert!(j.to_upload(true).is_empty());
        assert_eq!(j.uploaded(), ["a.ts"]);
        j.apply(&JournalLine::Deleted {
            file: "a.ts".into(),
        });
        assert!(j.is_empty());
    }

    #[test]
    fn replay_skips_torn_and_hostile_lines_and_steps_never_go_back() {
        let mut text = String::new();
        for l in [
            opened("a.ts"),
            closed("a.ts", 5),
            uploaded("a.ts"),
            opened("a.ts"),
            closed("a.ts", 5),
            opened("b.ts"),
            opened("../etc/passwd"),
            opened("c.ts"),
            JournalLine::Forgotten {
                file: "c.ts".into(),
                why: "gone".into(),
            },
        ] {
            text.push_str(&l.encode());
        }
        text.push_str("{\"op\":\"closed\",\"file\":\"b.t"); // torn by a crash
        let (j, skipped) = Journal::replay(&text);
        assert_eq!(skipped, 2);
        assert_eq!(j.state("a.ts"), Some(FileState::Uploaded));
        assert_eq!(j.state("b.ts"), Some(FileState::Opened));
        assert_eq!(j.len(), 2);
    }

    #[test]
    fn compacted_lines_replay_to_the_same_state_and_merges_are_idempotent() {
        let mut j = Journal::default();
        for l in [
            opened("a"),
            opened("b"),
            closed("b", 3),
            opened("c"),
            uploaded("c"),
        ] {
            j.apply(&l);
        }
        let text: String = j.lines(true).iter().map(JournalLine::encode).collect();
        assert_eq!(Journal::replay(&text), (j.clone(), 0));
        let mut m = j.clone();
        m.merge(&j);
        assert_eq!(m, j);
        let without: String = j.lines(false).iter().map(JournalLine::encode).collect();
        let (k, _) = Journal::replay(&without);
        assert_eq!(k.state("c"), None);
        let mut d = j.clone();
        d.drop_uploaded();
        assert_eq!(d, k);
    }

    #[test]
    fn names_must_stay_in_the_folder() {
        for bad in ["", ".", "..", "a/b", "..\\x", "a\0b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("room_s1_1700000000_00001.ts"));
        assert!(valid_name(".hidden"));
    }
}
