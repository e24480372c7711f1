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

/// The path of a new recording: `DIR/PREFIX_STREAMID_UNIXSECONDS.EXT` (`EXT` is the
/// container's: `ts`, `webm`, `mkv`), with both prefix and stream ID sanitized. `attempt` > 0
/// adds `_N` before the extension, for when a publisher comes back (or changes codec) within
/// the same second and the first name is taken.
pub fn recording_path(
    dir: &Path,
    prefix: &str,
    stream_id: &str,
    unix_seconds: u64,
    attempt: u32,
    extension: &str,
) -> PathBuf {
    let prefix = sanitize_component(prefix);
    let id = sanitize_component(stream_id);
    let name = if attempt == 0 {
        format!("{prefix}_{id}_{unix_seconds}.{extension}")
    } else {
        format!("{prefix}_{id}_{unix_seconds}_{attempt}.{extension}")
    };
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let p = recording_path(dir, "room", id, 1_700_000_000, 0, "ts");
            assert_inside(dir, &p);
        }
    }

    #[test]
    fn names_follow_the_raspberry_ninja_pattern() {
        let p = recording_path(Path::new("out"), "myroom", "cam1", 1_700_000_000, 0, "ts");
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000.ts"));
        let p = recording_path(Path::new("out"), "myroom", "cam1", 1_700_000_000, 2, "webm");
        assert_eq!(p, Path::new("out/myroom_cam1_1700000000_2.webm"));
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
