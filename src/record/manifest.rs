//! The room timeline: one JSON Lines file per run (`PREFIX_<unix>.timeline.jsonl`) that says
//! what happened when — the recorder starting and stopping, publishers joining and leaving,
//! each file opened and closed, holes in the media — and where each file's PTS sits on the
//! publishers' wall clocks, so the files of different participants can be lined up afterwards
//! (`ninjarec offsets`, see `docs/timeline.md`).
//!
//! Every line is one complete JSON object written with one `write` to a file opened for
//! appending, so after `kill -9` every line but possibly a cut last one parses (readers skip
//! a last line without its newline). Events reach the file from one task over a bounded
//! channel; a recorder never waits for it (an event that does not fit is counted and the count
//! is written with the next line that does).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::closed::ClosedFile;
use super::naming::sanitize_component;

/// Events queued before the writer task falls behind and events are dropped (counted).
const QUEUE: usize = 4096;

/// One thing that happened, as written on one line (with `unix_ms` and `event` added).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ManifestEvent {
    /// The recorder started.
    RecorderStarted {
        /// What is recorded: the room, or the stream of `--record`.
        target: String,
        /// ninjarec's version.
        version: String,
        /// The output folder.
        output_dir: String,
    },
    /// The recorder stopped (after finishing every file).
    RecorderStopped {
        /// Recordings made during the run.
        recordings: u64,
    },
    /// Connected to the handshake server (again).
    SignalingConnected,
    /// The handshake server connection was lost; recordings continue.
    SignalingLost {
        /// What happened.
        reason: String,
    },
    /// A publisher offered its stream and a recording of it starts.
    PublisherJoined {
        /// Stream ID (desalted). Its label, if it sends one, comes later as
        /// [`ManifestEvent::PublisherLabel`].
        stream_id: String,
    },
    /// A publisher said its label (display name), after joining.
    PublisherLabel {
        /// Stream ID.
        stream_id: String,
        /// The label.
        label: String,
    },
    /// A publisher's recording ended.
    PublisherLeft {
        /// Stream ID.
        stream_id: String,
        /// Why (`bye`, `left the room`, `connection lost`, `shutdown`, ...).
        reason: String,
    },
    /// A publisher was not recorded.
    PublisherRefused {
        /// Stream ID.
        stream_id: String,
        /// Why (low disk, `--max-streams`).
        reason: String,
    },
    /// A file (or segment) got its first bytes.
    FileOpened {
        /// Stream ID.
        stream_id: String,
        /// The file.
        path: String,
        /// Segment number within the recording (0 first).
        segment: u64,
        /// Container extension.
        container: String,
        /// Video codec, `None` for audio only.
        codec: Option<String>,
        /// PTS (90 kHz) of its first unit.
        first_pts_90k: u64,
        /// Our wall clock at that unit (Unix ms).
        local_unix_ms: Option<f64>,
        /// The publisher's wall clock at that unit (Unix ms), when already known.
        sender_unix_ms: Option<f64>,
    },
    /// Where a PTS of a file sits on the wall clocks: written once per file when the
    /// publisher's clock becomes known, and at the file's close.
    Clock {
        /// Stream ID.
        stream_id: String,
        /// The file.
        path: String,
        /// A PTS of the file (90 kHz).
        pts_90k: u64,
        /// Our wall clock at that PTS (Unix ms).
        local_unix_ms: Option<f64>,
        /// The publisher's wall clock at that PTS (Unix ms).
        sender_unix_ms: Option<f64>,
    },
    /// Media missing from a stretch of a file.
    Gap {
        /// Stream ID.
        stream_id: String,
        /// The file.
        path: String,
        /// `video` or `audio`.
        track: String,
        /// PTS of the last unit before it.
        from_pts_90k: u64,
        /// PTS of the first unit after it.
        to_pts_90k: u64,
        /// Its length in ms.
        duration_ms: f64,
        /// `loss` or `no-media`.
        cause: String,
    },
    /// A file (or segment) was closed and synced.
    FileClosed {
        /// The file, with what it holds.
        #[serde(flatten)]
        file: ClosedFileLine,
    },
    /// A write failed; the recording goes on in a new file when space returns.
    DiskError {
        /// Stream ID.
        stream_id: String,
        /// The file.
        path: String,
        /// What the OS said.
        error: String,
    },
    /// A publisher connected while the disk is below `--min-free-mb`: its recording starts
    /// when space is freed.
    DiskLow {
        /// Stream ID.
        stream_id: String,
        /// Free bytes.
        free_bytes: u64,
        /// `--min-free-mb` in bytes.
        min_free_bytes: u64,
    },
    /// Recording resumed after a disk error.
    DiskRecovered {
        /// Stream ID.
        stream_id: String,
        /// Free bytes now.
        free_bytes: u64,
    },
}

/// [`ClosedFile`] as a timeline line: the same facts, plain types, with the duration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClosedFileLine {
    /// Stream ID.
    pub stream_id: String,
    /// The file.
    pub path: String,
    /// Segment number.
    pub segment: u64,
    /// Container extension.
    pub container: String,
    /// Video codec, `None` for audio only.
    pub codec: Option<String>,
    /// PTS (90 kHz) of its first unit.
    pub first_pts_90k: u64,
    /// PTS of its last unit.
    pub last_pts_90k: u64,
    /// Media seconds from first to last unit.
    pub duration_s: f64,
    /// Video frames.
    pub frames: u64,
    /// Opus packets.
    pub audio_packets: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Why it was closed.
    pub cause: String,
    /// Our wall clock at its first unit (Unix ms).
    pub local_unix_ms: Option<f64>,
    /// The publisher's wall clock at its first unit (Unix ms), when known.
    pub sender_unix_ms: Option<f64>,
}

impl From<&ClosedFile> for ClosedFileLine {
    fn from(f: &ClosedFile) -> Self {
        ClosedFileLine {
            stream_id: f.stream_id.clone(),
            path: f.path.display().to_string(),
            segment: f.segment,
            container: f.container.to_owned(),
            codec: f.codec.clone(),
            first_pts_90k: f.first_pts_90k,
            last_pts_90k: f.last_pts_90k,
            duration_s: (f.duration_seconds() * 1000.0).round() / 1000.0,
            frames: f.frames,
            audio_packets: f.audio_packets,
            bytes: f.bytes,
            cause: f.cause.as_str().to_owned(),
            local_unix_ms: f.start_local_unix_ms,
            sender_unix_ms: f.start_sender_unix_ms,
        }
    }
}

/// One line of the file: when, what, and how many events were dropped before it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestLine {
    /// When it was written (Unix ms, our clock).
    pub unix_ms: u64,
    /// Events dropped (queue full) since the previous line.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub dropped_before: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: ManifestEvent,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ManifestLine {
    /// The line as written: compact JSON and a newline.
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            // Only non-string map keys or a failing Serialize impl could do this; neither
            // exists in these types. Keep the file valid anyway.
            format!(
                "{{\"unix_ms\":{},\"event\":\"unwritable\",\"error\":{:?}}}",
                self.unix_ms,
                e.to_string()
            )
        });
        s.push('\n');
        s
    }
}

/// Reads a timeline: every complete line, in order. A last line cut by a crash (no newline,
/// not JSON) is skipped; any other line that does not parse is an error with its number.
pub fn parse(text: &str) -> Result<Vec<ManifestLine>, ManifestError> {
    let mut lines = Vec::new();
    let complete = text.ends_with('\n');
    let all: Vec<&str> = text.lines().collect();
    for (i, line) in all.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(l) => lines.push(l),
            Err(_) if i + 1 == all.len() && !complete => break,
            Err(e) => {
                return Err(ManifestError::Parse {
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(lines)
}

/// Why the timeline could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be created.
    #[error("cannot create the room timeline {path}: {source}")]
    Create {
        /// The path tried.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not a timeline event.
    #[error("timeline line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The path of a run's timeline: `DIR/PREFIX_<unix>.timeline.jsonl` (`_N` added when taken).
pub fn manifest_path(dir: &Path, prefix: &str, unix_seconds: u64, attempt: u32) -> PathBuf {
    let prefix = sanitize_component(prefix);
    if attempt == 0 {
        dir.join(format!("{prefix}_{unix_seconds}.timeline.jsonl"))
    } else {
        dir.join(format!("{prefix}_{unix_seconds}_{attempt}.timeline.jsonl"))
    }
}

/// Where recorders send timeline events; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Manifest {
    tx: mpsc::SyncSender<ManifestEvent>,
    dropped: Arc<AtomicU64>,
    path: Arc<PathBuf>,
}

impl Manifest {
    /// Creates the timeline file of this run and starts its writer task. The task ends (and
    /// the file is synced) when every `Manifest` clone is dropped; await the handle for that.
    pub fn create(dir: &Path, prefix: &str) -> Result<(Manifest, JoinHandle<()>), ManifestError> {
        let now = unix_ms() / 1000;
        let mut attempt = 0;
        let (file, path) = loop {
            let path = manifest_path(dir, prefix, now, attempt);
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(source) => return Err(ManifestError::Create { path, source }),
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        // Its own thread (of tokio's blocking pool), not a runtime thread: a stalled disk
        // stalls the timeline only.
        let writer_path = path.clone();
        let writer_dropped = dropped.clone();
        let task =
            tokio::task::spawn_blocking(move || write_lines(file, writer_path, rx, writer_dropped));
        Ok((
            Manifest {
                tx,
                dropped,
                path: Arc::new(path),
            },
            task,
        ))
    }

    /// The timeline file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an event; if the writer is behind, it is dropped and counted.
    pub fn emit(&self, event: ManifestEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lines kept while the disk refuses them (disk full), retried later; older ones beyond this
/// are dropped and counted.
const MAX_UNWRITTEN: usize = 4096;
/// How often lines the disk refused are retried when no new event comes.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The writer (a blocking thread): one `write` per line, appending. A line the disk refuses (full) is cut off
/// again (so no half line stays) and kept, with the lines after it, until a write succeeds:
/// the timeline goes on when space returns, in order. Said once per failure.
fn write_lines(
    mut file: File,
    path: PathBuf,
    rx: mpsc::Receiver<ManifestEvent>,
    dropped: Arc<AtomicU64>,
) {
    info!(path = %path.display(), "room timeline");
    let mut len = file.metadata().map_or(0, |m| m.len());
    let mut unwritten: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut failing = false;
    let mut closing = false;
    while !closing {
        // Lines the disk refused are retried with the next event, or after `RETRY_EVERY`.
        let event = if unwritten.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY_EVERY)
        };
        match event {
            Ok(event) => {
                let line = ManifestLine {
                    unix_ms: unix_ms(),
                    dropped_before: dropped.swap(0, Ordering::Relaxed),
                    event,
                };
                if unwritten.len() == MAX_UNWRITTEN {
                    unwritten.pop_front();
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                unwritten.push_back(line.to_json_line());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every sender is gone: one last try for what is left, then the end.
            Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
        }
        while let Some(line) = unwritten.front() {
            match file.write_all(line.as_bytes()) {
                Ok(()) => {
                    len += line.len() as u64;
                    unwritten.pop_front();
                    if failing {
                        failing = false;
                        info!(path = %path.display(), "room timeline written again");
                    }
                }
                Err(e) => {
                    let _ = file.set_len(len);
                    if !failing {
                        failing = true;
                        warn!(path = %path.display(), "room timeline cannot be written ({e}); its lines are kept and written when possible");
                    }
                    break;
                }
            }
        }
    }
    let _ = file.sync_data();
}

/// Our wall clock, Unix ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ManifestLine> {
        let closed = ClosedFile {
            path: PathBuf::from("/out/room_cam_1700000000_1.ts"),
            stream_id: "cam".into(),
            segment: 1,
            codec: Some("H.264".into()),
            container: "ts",
            first_pts_90k: 90_000,
            last_pts_90k: 1_890_000,
            frames: 600,
            audio_packets: 1000,
            bytes: 5_000_000,
            cause: super::super::closed::CloseCause::Segment,
            start_sender_unix_ms: Some(1_700_000_000_123.5),
            start_local_unix_ms: Some(1_700_000_000_150.0),
        };
        [
            ManifestEvent::RecorderStarted {
                target: "room".into(),
                version: "0.1.0".into(),
                output_dir: "/out".into(),
            },
            ManifestEvent::PublisherJoined {
                stream_id: "cam\"\n/../x".into(),
            },
            ManifestEvent::FileClosed {
                file: ClosedFileLine::from(&closed),
            },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, event)| ManifestLine {
            unix_ms: 1_700_000_000_000 + i as u64,
            dropped_before: i as u64,
            event,
        })
        .collect()
    }

    #[test]
    fn lines_round_trip_one_per_line() {
        let lines = sample();
        let text: String = lines.iter().map(|l| l.to_json_line()).collect();
        assert_eq!(text.lines().count(), 3, "one event per line: {text}");
        assert!(text.contains(r#""event":"file-closed""#), "{text}");
        assert!(text.contains(r#""duration_s":20.0"#), "{text}");
        assert!(text.contains(r#""cause":"segment""#), "{text}");
        assert_eq!(parse(&text).unwrap(), lines);
    }

    #[test]
    fn a_line_cut_by_a_crash_is_skipped_others_are_errors() {
        let text: String = sample().iter().map(|l| l.to_json_line()).collect();
        let cut = &text[..text.len() - 10];
        assert_eq!(parse(cut).unwrap().len(), 2);
        let broken = text.replacen("{", "x", 1);
        assert!(matches!(
            parse(&broken),
            Err(ManifestError::Parse { line: 1, .. })
        ));
    }

    #[tokio::test]
    async fn the_file_is_written_as_events_come_and_names_never_escape() {
        let dir = std::env::temp_dir().join(format!("ninjarec-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (m, task) = Manifest::create(&dir, "../room").unwrap();
        assert_eq!(m.path().parent(), Some(dir.as_path()));
        let (m2, task2) = Manifest::create(&dir, "../room").unwrap();
        assert_ne!(
            m.path(),
            m2.path(),
            "a second run in the same second gets its own file"
        );
        for l in sample() {
            m.emit(l.event);
        }
        let path = m.path().to_path_buf();
        drop((m, m2));
        task.await.unwrap();
        task2.await.unwrap();
        let lines = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].dropped_before, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
