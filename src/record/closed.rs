//! A finished file (or segment), as the recorder tells the rest of the program about it: the
//! room timeline records it, `--on-file-done` hooks get it in their environment, the status
//! page counts it. One plain value, built once when the file is closed and synced.

use std::path::PathBuf;

use serde::Serialize;

/// Why a file was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseCause {
    /// `--segment-seconds` / `--segment-mb` reached: the next segment goes on.
    Segment,
    /// The recording ended (publisher left, connection lost, shutdown).
    End,
    /// The publisher changed video codec: a new file goes on.
    CodecChange,
    /// Writing failed (disk full, I/O error): closed at its last complete frame.
    DiskError,
}

impl CloseCause {
    /// The name used in the timeline and in hook environments.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::Segment => "segment",
            CloseCause::End => "end",
            CloseCause::CodecChange => "codec-change",
            CloseCause::DiskError => "disk-error",
        }
    }
}

/// One closed file, with what a user or a script needs to know of it.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Stream ID (desalted) of the publisher.
    pub stream_id: String,
    /// Segment number within the recording (0 for the first file).
    pub segment: u64,
    /// Video codec name (`H.264`, `VP8`, `VP9`, `AV1`), `None` for audio only.
    pub codec: Option<String>,
    /// Container extension (`ts`, `webm`, `mkv`).
    pub container: &'static str,
    /// PTS (90 kHz, as written in the file) of its first and last unit.
    pub first_pts_90k: u64,
    /// See `first_pts_90k`.
    pub last_pts_90k: u64,
    /// Video frames written to it.
    pub frames: u64,
    /// Opus packets written to it.
    pub audio_packets: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Why it was closed.
    pub cause: CloseCause,
    /// The publisher's wall clock (Unix ms, from its Sender Reports) at the file's first unit,
    /// when known.
    pub start_sender_unix_ms: Option<f64>,
    /// Our wall clock (Unix ms) at the file's first unit, from arrival times.
    pub start_local_unix_ms: Option<f64>,
}

impl ClosedFile {
    /// Media seconds from the first to the last unit.
    pub fn duration_seconds(&self) -> f64 {
        self.last_pts_90k.saturating_sub(self.first_pts_90k) as f64 / 90_000.0
    }
}
