//! Lining up the files of a room afterwards: from the room timeline, the offset of each file's
//! start against the earliest file, for `ffmpeg -itsoffset` (or any editor's track offset).
//!
//! Each closed file's line says where its first unit sits on the publisher's wall clock (from
//! its RTCP Sender Reports) and on ours (from arrival times). When every file has the
//! publisher's clock, those are used: they are what the publishers captured at, whatever the
//! network did. Otherwise all use our clock (never a mix: two clocks can differ by seconds),
//! which is right to within each publisher's network and encoder delay.

use serde::Serialize;

use super::manifest::{ManifestEvent, ManifestLine};

/// Which clock the offsets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockSource {
    /// The publishers' own clocks (Sender Reports).
    Sender,
    /// The recorder's clock (arrival times).
    Local,
}

/// One file's place on the room's time line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileOffset {
    /// The file.
    pub path: String,
    /// Stream ID.
    pub stream_id: String,
    /// Seconds from the earliest file's start to this file's start.
    pub offset_s: f64,
    /// Its start, Unix ms on the chosen clock.
    pub start_unix_ms: f64,
    /// Its media length, seconds.
    pub duration_s: f64,
}

/// The offsets of every closed file of a timeline, in start order, and the clock used.
/// Files without a start time on the chosen clock (no unit written) are left out.
pub fn offsets(lines: &[ManifestLine]) -> (Vec<FileOffset>, ClockSource) {
    let files: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.event {
            ManifestEvent::FileClosed { file } => Some(file),
            _ => None,
        })
        .collect();
    let source = if !files.is_empty() && files.iter().all(|f| f.sender_unix_ms.is_some()) {
        ClockSource::Sender
    } else {
        ClockSource::Local
    };
    let mut out: Vec<FileOffset> = files
        .iter()
        .filter_map(|f| {
            let start = match source {
                ClockSource::Sender => f.sender_unix_ms,
                ClockSource::Local => f.local_unix_ms,
            }?;
            Some(FileOffset {
                path: f.path.clone(),
                stream_id: f.stream_id.clone(),
                offset_s: 0.0,
                start_unix_ms: start,
                duration_s: f.duration_s,
            })
        })
        .collect();
    out.sort_by(|a, b| a.start_unix_ms.total_cmp(&b.start_unix_ms));
    if let Some(first) = out.first().map(|f| f.start_unix_ms) {
        for f in &mut out {
            f.offset_s = ((f.start_unix_ms - first) / 1000.0 * 1000.0).round() / 1000.0;
        }
    }
    (out, source)
}

/// The offsets as text: one `-itsoffset S -i PATH` per file (ready for an ffmpeg command
/// line), with a comment saying the clock.
pub fn render(offsets: &[FileOffset], source: ClockSource) -> String {
    let mut s = format!(
        "# {} file(s); offsets from the {} clock\n",
        offsets.len(),
        match source {
            ClockSource::Sender => "publishers' (Sender Reports)",
            ClockSource::Local => "recorder's (arrival times)",
        }
    );
    for f in offsets {
        s.push_str(&format!(
            "-itsoffset {:.3} -i {}\n",
            f.offset_s,
            shell_quote(&f.path)
        ));
    }
    s
}

/// Quotes a path for a POSIX shell when it needs it (stream IDs are sanitized, folders may
/// hold anything).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::manifest::ClosedFileLine;

    fn closed(path: &str, sender: Option<f64>, local: f64) -> ManifestLine {
        ManifestLine {
            unix_ms: 0,
            dropped_before: 0,
            event: ManifestEvent::FileClosed {
                file: ClosedFileLine {
                    stream_id: "s".into(),
                    path: path.into(),
                    segment: 0,
                    container: "ts".into(),
                    codec: None,
                    first_pts_90k: 90_000,
                    last_pts_90k: 180_000,
                    duration_s: 1.0,
                    frames: 30,
                    audio_packets: 50,
                    bytes: 1000,
                    cause: "end".into(),
                    local_unix_ms: Some(local),
                    sender_unix_ms: sender,
                },
            },
        }
    }

    #[test]
    fn sender_clocks_are_used_when_every_file_has_one() {
        let lines = [
            closed("b.ts", Some(10_500.0), 10_560.0),
            closed("a.ts", Some(10_000.0), 10_040.0),
            ManifestLine {
                unix_ms: 0,
                dropped_before: 0,
                event: ManifestEvent::SignalingConnected,
            },
        ];
        let (o, src) = offsets(&lines);
        assert_eq!(src, ClockSource::Sender);
        assert_eq!(o[0].path, "a.ts");
        assert_eq!(o[0].offset_s, 0.0);
        assert_eq!(o[1].offset_s, 0.5);
        assert_eq!(
            render(&o, src),
            "# 2 file(s); offsets from the publishers' (Sender Reports) clock\n\
             -itsoffset 0.000 -i a.ts\n-itsoffset 0.500 -i b.ts\n"
        );
    }

    #[test]
    fn one_file_without_a_sender_clock_makes_all_local() {
        let lines = [
            closed("a b.ts", Some(10_000.0), 10_040.0),
            closed("c.ts", None, 12_040.0),
        ];
        let (o, src) = offsets(&lines);
        assert_eq!(src, ClockSource::Local);
        assert_eq!(o[1].offset_s, 2.0);
        assert!(render(&o, src).contains("-i 'a b.ts'"));
    }
}
