//! The file behind one recording.
//!
//! The file is created only when the first TS bytes exist (a publisher that never sends a frame
//! leaves no empty file), never overwrites an existing file, and is appended in batches: the
//! recorder calls [`RecordingFile::append`] with whole 188-byte packets, and what is appended is
//! what a player sees after a crash.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::naming::{FileName, recording_path};

/// How many `_N` suffixes to try when a name is taken (a publisher rejoining in the same second).
const MAX_NAME_ATTEMPTS: u32 = 100;

/// A disk problem for one recording, reported for that stream only.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be created (missing folder, permission, too many names taken).
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path that was tried last.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Writing failed (disk full, I/O error).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The recording's path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// One recording's file: named on first write, appended afterwards.
#[derive(Debug)]
pub struct RecordingFile {
    dir: PathBuf,
    prefix: String,
    stream_id: String,
    /// The file name extension (the container's), used when the file is created.
    extension: &'static str,
    /// With segments: the segment number, in the name.
    segment: Option<u64>,
    file: Option<(File, PathBuf)>,
    bytes_written: u64,
}

impl RecordingFile {
    /// A recording of `stream_id` into `dir`, named `PREFIX_STREAMID_UNIX.EXT` when first
    /// written (`ts` unless [`Self::set_extension`] says otherwise).
    pub fn new(dir: &Path, prefix: &str, stream_id: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            stream_id: stream_id.to_owned(),
            extension: "ts",
            segment: None,
            file: None,
            bytes_written: 0,
        }
    }

    /// Names the file as segment `seq` of its recording (`..._UNIX_SEQ.EXT`).
    pub fn with_segment(mut self, seq: u64) -> Self {
        self.segment = Some(seq);
        self
    }

    /// The file's path, once it exists.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// Bytes appended so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The file name extension (the container's).
    pub fn extension(&self) -> &'static str {
        self.extension
    }

    /// Sets the extension the file gets when it is created (no effect once it exists).
    pub fn set_extension(&mut self, extension: &'static str) {
        if self.file.is_none() {
            self.extension = extension;
        }
    }

    /// Writes each patch over bytes already appended (Matroska sizes and duration at the end
    /// of a recording). Patches that reach past what was written are refused as a write error
    /// (the container and the file disagree), and nothing after them is applied.
    pub fn patch(&mut self, patches: &[crate::mux::Patch]) -> Result<(), FileError> {
        use std::os::unix::fs::FileExt;
        let Some((file, path)) = self.file.as_mut() else {
            return Ok(());
        };
        for p in patches {
            let end = p.offset.saturating_add(p.bytes.len() as u64);
            if end > self.bytes_written {
                return Err(FileError::Write {
                    path: path.clone(),
                    source: std::io::Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "patch at {} past the end ({})",
                            p.offset, self.bytes_written
                        ),
                    ),
                });
            }
            file.write_all_at(&p.bytes, p.offset)
                .map_err(|source| FileError::Write {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Appends `bytes` (whole TS packets), creating the file first if needed. If the write
    /// fails (disk full), what it wrote is cut off again: the file ends at its last complete
    /// batch, so at a complete frame.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(self.create()?);
        }
        let Some((file, path)) = self.file.as_mut() else {
            unreachable!("file was just created")
        };
        if let Err(source) = file.write_all(bytes) {
            // Part of the batch may be on disk: cut it off, so the file ends where the last
            // whole batch did (batches hold whole units: the last complete frame).
            let _ = file.set_len(self.bytes_written);
            return Err(FileError::Write {
                path: path.clone(),
                source,
            });
        }
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Asks the OS to put what was written on disk (used at shutdown, not per packet).
    pub fn sync(&mut self) -> Result<(), FileError> {
        match self.file.as_mut() {
            Some((file, path)) => file.sync_data().map_err(|source| FileError::Write {
                path: path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn create(&self) -> Result<(File, PathBuf), FileError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut last_err = None;
        for attempt in 0..MAX_NAME_ATTEMPTS {
            let name = FileName {
                unix_seconds: now,
                segment: self.segment,
                extension: self.extension,
            };
            let path = recording_path(&self.dir, &self.prefix, &self.stream_id, name, attempt);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, path)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some((path, e)),
                Err(source) => return Err(FileError::Create { path, source }),
            }
        }
        let (path, source) = last_err.expect("at least one attempt was made");
        Err(FileError::Create { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ninjarec-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_appears_on_first_write_and_never_overwrites() {
        let dir = temp_dir("create");
        let mut a = RecordingFile::new(&dir, "room", "cam");
        assert!(a.path().is_none());
        a.append(&[]).unwrap();
        assert!(a.path().is_none(), "no bytes, no file");
        a.append(&[0x47; 188]).unwrap();
        let mut b = RecordingFile::new(&dir, "room", "cam");
        b.append(&[0x47; 188]).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::read(a.path().unwrap()).unwrap().len(), 188);
        assert_eq!(a.bytes_written(), 188);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_a_create_error() {
        let mut f = RecordingFile::new(Path::new("/nonexistent/ninjarec"), "p", "s");
        let err = f.append(&[0x47; 188]).unwrap_err();
        assert!(matches!(err, FileError::Create { .. }), "{err}");
    }
}
