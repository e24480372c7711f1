//! The live table on a terminal: one health line, a header and one row per publisher.
//!
//! Why: someone who starts ninjarec by hand (or looks at its `tmux` window) wants to see at a
//! glance that every publisher is recorded and nothing is dropped, without a browser. The table
//! is plain text; the caller redraws it in place with ANSI cursor moves.
//!
//! Stream IDs come from the network: control characters (an ESC could drive the terminal) are
//! replaced before anything is printed.

use std::fmt::Write as _;

use super::snapshot::{Snapshot, StreamStatus};

/// Longest stream ID shown in full; longer ones end in `…`.
const MAX_STREAM_WIDTH: usize = 24;

/// Renders `s` as lines of at most `width` characters, each ending in `\n`: the health line
/// (recording N of M, free disk, signaling, CPU, memory), the column header, then one row per
/// stream (stream, state, duration, bitrate, frames, dropped, file size), or a placeholder row
/// when there is none.
///
/// Why a String and a width: the caller owns the terminal (size, cursor, colours) and redraws
/// about once a second; cutting here keeps a narrow terminal from wrapping and scrolling.
pub fn render_table(s: &Snapshot, width: usize) -> String {
    let ids: Vec<String> = s.streams.iter().map(|x| shown_id(&x.stream_id)).collect();
    let id_width = ids
        .iter()
        .map(|id| id.chars().count())
        .max()
        .unwrap_or(0)
        .clamp("STREAM".len(), MAX_STREAM_WIDTH);

    let mut lines = vec![health_line(s)];
    lines.push(format!(
        "{:<id_width$}  {:<16}  {:>8}  {:>10}  {:>8}  {:>7}  {:>9}",
        "STREAM", "STATE", "DURATION", "BITRATE", "FRAMES", "DROPPED", "SIZE"
    ));
    for (x, id) in s.streams.iter().zip(&ids) {
        lines.push(row(x, id, id_width));
    }
    if s.streams.is_empty() {
        lines.push("(no recordings yet: waiting for publishers)".to_owned());
    }

    let mut out = String::new();
    for line in lines {
        out.extend(line.trim_end().chars().take(width));
        out.push('\n');
    }
    out
}

fn health_line(s: &Snapshot) -> String {
    let recording = s.streams.iter().filter(|x| x.state == "recording").count();
    let mut line = format!("recording {recording} of {}", s.streams.len());
    let _ = write!(line, " | {} finished", s.finished);
    match s.disk_free_bytes {
        Some(free) if free < s.min_free_bytes => {
            let _ = write!(
                line,
                " | LOW DISK {} free < {} min",
                bytes(free),
                bytes(s.min_free_bytes)
            );
        }
        Some(free) => {
            let _ = write!(line, " | disk {} free", bytes(free));
        }
        None => line.push_str(" | disk free unknown"),
    }
    if s.refused_low_disk > 0 {
        let _ = write!(line, " ({} refused)", s.refused_low_disk);
    }
    line.push_str(if s.signaling_connected {
        " | signaling up"
    } else {
        " | SIGNALING DOWN"
    });
    if let Some(u) = &s.upload {
        if u.failing {
            let _ = write!(
                line,
                " | UPLOAD FAILING, {} waiting ({})",
                u.pending_files,
                bytes(u.pending_bytes)
            );
        } else {
            let _ = write!(
                line,
                " | upload {} done, {} waiting",
                u.uploaded_files, u.pending_files
            );
        }
    }
    let _ = write!(
        line,
        " | cpu {:.1} s | rss {}",
        s.process.cpu_seconds,
        bytes(s.process.rss_bytes)
    );
    line
}

fn row(x: &StreamStatus, id: &str, id_width: usize) -> String {
    let state = if x.disk_error.is_some() {
        format!("{} (DISK ERR)", shown_id(&x.state))
    } else {
        shown_id(&x.state)
    };
    format!(
        "{:<id_width$}  {:<16}  {:>8}  {:>10}  {:>8}  {:>7}  {:>9}",
        id,
        state,
        duration(x.duration_seconds),
        bitrate(x.bitrate_bps),
        x.frames_written,
        x.frames_dropped,
        bytes(x.file_bytes),
    )
}

/// A stream ID (or state) safe for a terminal and at most [`MAX_STREAM_WIDTH`] characters.
fn shown_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if clean.chars().count() <= MAX_STREAM_WIDTH {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_STREAM_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// `H:MM:SS` (hours grow past 9 as needed); `-` for a value that is not a duration.
fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let total = seconds as u64;
    format!(
        "{}:{:02}:{:02}",
        total / 3600,
        (total / 60) % 60,
        total % 60
    )
}

/// Bits per second with an SI prefix (`2.5 Mb/s`).
fn bitrate(bps: f64) -> String {
    if !bps.is_finite() || bps < 0.0 {
        return "-".to_owned();
    }
    if bps >= 1e6 {
        format!("{:.1} Mb/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.0} kb/s", bps / 1e3)
    } else {
        format!("{bps:.0} b/s")
    }
}

/// Bytes with an SI prefix (`230.1 MB`), as disk tools print sizes.
fn bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e12 {
        format!("{:.1} TB", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::snapshot::ProcessStats;

    fn snapshot() -> Snapshot {
        Snapshot {
            signaling_connected: true,
            disk_free_bytes: Some(12_345_000_000),
            min_free_bytes: 500_000_000,
            process: ProcessStats {
                cpu_seconds: 42.25,
                rss_bytes: 48_200_000,
                open_fds: 20,
            },
            finished: 2,
            streams: vec![
                StreamStatus {
                    stream_id: "cam1".into(),
                    state: "recording".into(),
                    duration_seconds: 3723.9,
                    bitrate_bps: 2_512_000.0,
                    frames_written: 111_690,
                    frames_dropped: 3,
                    file_bytes: 1_170_000_000,
                    ..StreamStatus::default()
                },
                StreamStatus {
                    stream_id: "guest-with-a-very-long-stream-id".into(),
                    state: "connecting".into(),
                    ..StreamStatus::default()
                },
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn health_header_and_rows() {
        let t = render_table(&snapshot(), 200);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(
            lines[0],
            "recording 1 of 2 | 2 finished | disk 12.3 GB free | signaling up | cpu 42.2 s | rss 48.2 MB"
        );
        assert_eq!(
            lines[1],
            "STREAM                    STATE             DURATION     BITRATE    FRAMES  DROPPED       SIZE"
        );
        assert_eq!(
            lines[2],
            "cam1                      recording          1:02:03    2.5 Mb/s    111690        3     1.2 GB"
        );
        assert_eq!(
            lines[3],
            "guest-with-a-very-long-…  connecting         0:00:00       0 b/s         0        0        0 B"
        );
    }

    #[test]
    fn lines_are_cut_to_the_width() {
        for width in [0, 1, 10, 40, 79] {
            let t = render_table(&snapshot(), width);
            assert_eq!(t.lines().count(), 4);
            for line in t.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
        }
        assert!(render_table(&snapshot(), 10).starts_with("recording \n"));
    }

    #[test]
    fn warnings_are_spelled_out() {
        let mut s = snapshot();
        s.disk_free_bytes = Some(100_000_000);
        s.refused_low_disk = 4;
        s.signaling_connected = false;
        s.streams[0].disk_error = Some("No space left on device".into());
        let t = render_table(&s, 300);
        assert!(
            t.contains("LOW DISK 100.0 MB free < 500.0 MB min (4 refused)"),
            "{t}"
        );
        assert!(t.contains("SIGNALING DOWN"), "{t}");
        assert!(!t.contains("upload"), "no --upload, no word of it: {t}");
        s.upload = Some(crate::upload::UploadStatus {
            pending_files: 3,
            pending_bytes: 2_000_000,
            retry_in_seconds: Some(8.0),
            failing: true,
            ..Default::default()
        });
        let t = render_table(&s, 300);
        assert!(t.contains("UPLOAD FAILING, 3 waiting (2.0 MB)"), "{t}");
        assert!(t.contains("recording (DISK ERR)"), "{t}");
        s.disk_free_bytes = None;
        assert!(render_table(&s, 300).contains("disk free unknown"));
    }

    #[test]
    fn empty_and_hostile_snapshots() {
        let t = render_table(&Snapshot::default(), 120);
        assert!(t.starts_with("recording 0 of 0"), "{t}");
        assert!(t.contains("STREAM  STATE"), "{t}");
        assert!(
            t.ends_with("(no recordings yet: waiting for publishers)\n"),
            "{t}"
        );

        let mut s = snapshot();
        s.streams[0].stream_id = "\u{1b}[2J\u{1b}]0;pwned\u{7}".into();
        s.streams[0].state = "rec\rording".into();
        s.streams[0].duration_seconds = f64::NAN;
        s.streams[0].bitrate_bps = -1.0;
        let t = render_table(&s, 300);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("\u{FFFD}[2J"), "{t}");
        let row = t.lines().nth(2).unwrap_or_default();
        assert!(row.contains("  -  ") && row.ends_with("1.2 GB"), "{row}");
    }

    #[test]
    fn units() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(2_000_000_000_000), "2.0 TB");
        assert_eq!(bitrate(64_000.0), "64 kb/s");
        assert_eq!(bitrate(f64::INFINITY), "-");
        assert_eq!(duration(59.99), "0:00:59");
        assert_eq!(duration(36_000.0 * 3.0), "30:00:00");
        assert_eq!(duration(-1.0), "-");
    }
}
