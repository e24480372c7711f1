//! File names for recordings.
//!
//! A stream ID comes from a remote peer and becomes part of a file name, so it is untrusted:
//! whatever it holds (`../../x`, `/`, NUL, 300 characters, nothing at all), the name built here
//! is a single plain component that stays inside the output folder.

use std::path::{Path, PathBuf};

/// Longest sanitized component, in bytes: keeps `PREFIX_ID_TIMESTAMP.ts` well under the 255-byte
/// file name limit of common file systems.
pub const MAX_COMPONENT: usize = 64;

/// Turns untrusted text into a safe file name component: ASCII letters, digits, `-`, `_` and `.`
/// are kept, every other character becomes `_`, a leading `.` becomes `_` (no hidden files, no
/// `..`), the result is cut to [`MAX_COMPONENT`] bytes, and an empty result becomes `stream`.
pub fn sanitize_component(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_COMPONENT)
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push_str("stream");
    }
    out
}

/// What varies between the files of one run, besides the stream: when the file was opened,
/// which segment of its recording it is, and the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName<'a> {
    /// Unix seconds when the file was opened.
    pub unix_seconds: u64,
    /// With `--segment-*`: the segment's number within the recording (0 first).
    pub segment: Option<u64>,
    /// The container's extension: `ts`, `webm`, `mkv`.
    pub extension: &'a str,
}

/// The path of a new recording: `DIR/PREFIX_STREAMID_UNIXSECONDS.EXT`, or with segments
/// `DIR/PREFIX_STREAMID_UNIXSECONDS_SEQ.EXT` (SEQ five digits, so names sort in order), with
/// both prefix and stream ID sanitized. `attempt` > 0 adds `_N` before the extension, for
/// when a publisher comes back (or changes codec) within the same second and the first name
/// is taken.
pub fn recording_path(
    dir: &Path,
    prefix: &str,
    stream_id: &str,
    name: FileName<'_>,
    attempt: u32,
) -> PathBuf {
    let prefix = sanitize_component(prefix);
    let id = sanitize_component(stream_id);
    let mut file = format!("{prefix}_{id}_{}", name.unix_seconds);
    if let Some(seq) = name.segment {
        file.push_str(&format!("_{seq:05}"));
    }
    if attempt > 0 {
        file.push_str(&format!("_{attempt}"));
    }
    file.push('.');
    file.push_str(name.extension);
    dir.join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(segment: Option<u64>, extension: &str) -> FileName<'_> {
        FileName {
            unix_seconds: 1_700_000_000,
            segment,
            extension,
        }
    }

    fn assert_inside(dir: &Path, path: &Path) {
        assert_eq!(path.parent(), Some(dir), "{path:?} escapes {dir:?}");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(!name.starts_with('.'), "{name}");
        assert!(name.len() < 255);
    }

    #[test]
    fn hostile_stream_ids_stay_inside_the_folder() {
        let dir = Path::new("/rec");
        let long = "a".repeat(300);
        for id in [
            "../../x",
            "/etc/passwd",
            "a/b",
            "nul\0byte",
            "..",
            ".",
            "",
            &long,
            "é漢字",
            "a\\b",
        ] {
            let p = recording_path(dir, "room", id, name(None, "ts"), 0);
            assert_inside(dir, &p);
        }
    }

    #[test]
    fn names_follow_the_raspberry_ninja_pattern() {
        let out = Path::new("out");
        let p = recording_path(out, "myroom", "cam1", name(None, "ts"), 0);
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000.ts"));
        let p = recording_path(out, "myroom", "cam1", name(None, "webm"), 2);
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000_2.webm"));
        let p = recording_path(out, "myroom", "cam1", name(Some(12), "ts"), 0);
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000_00012.ts"));
        let p = recording_path(out, "myroom", "cam1", name(Some(3), "mkv"), 1);
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000_00003_1.mkv"));
    }

    #[test]
    fn sanitizing_is_explicit() {
        assert_eq!(sanitize_component("../../x"), "_._.._x");
        assert_eq!(sanitize_component("a b/c"), "a_b_c");
        assert_eq!(sanitize_component(""), "stream");
        assert_eq!(sanitize_component(&"z".repeat(300)).len(), MAX_COMPONENT);
        assert_eq!(sanitize_component("nul\0"), "nul_");
    }
}
