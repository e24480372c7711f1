//! `--upload s3://bucket/prefix`: where finished files go, and the object key of each.
//!
//! Many recorders may share one bucket (one per room, on many machines), so the prefix may name
//! the machine and the room: `{host}` and `{room}` in it are replaced by this machine's host name
//! and the recorded room (or stream), each cleaned to `[A-Za-z0-9._-]`. A file's key is the
//! prefix, a `/`, and the file's own name: the layout in the bucket is the layout on disk.

use thiserror::Error;

/// Why an `--upload` address was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not `s3://...`.
    #[error("--upload must look like s3://bucket/prefix (got {0:?})")]
    Scheme(String),
    /// The bucket name breaks S3's rules.
    #[error(
        "--upload: bucket name {0:?} is not valid (3-63 characters: lower-case letters, digits, '.', '-')"
    )]
    Bucket(String),
    /// The prefix has an empty, `.` or `..` part, or a character S3 tools choke on.
    #[error(
        "--upload: prefix {0:?} is not valid (parts must be non-empty, not . or .., printable)"
    )]
    Prefix(String),
}

/// What `{host}` and `{room}` stand for in the prefix.
#[derive(Debug, Clone, Default)]
pub struct PrefixVars {
    /// This machine's host name.
    pub host: String,
    /// The room (or `--record` stream) recorded.
    pub room: String,
}

/// A parsed `--upload` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// The bucket.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl UploadTarget {
    /// Parses `s3://bucket[/prefix]`, expanding `{host}` and `{room}`.
    pub fn parse(url: &str, vars: &PrefixVars) -> Result<UploadTarget, TargetError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return Err(TargetError::Bucket(bucket.to_owned()));
        }
        let expanded = prefix
            .replace("{host}", &clean(&vars.host))
            .replace("{room}", &clean(&vars.room));
        let trimmed = expanded.trim_matches('/');
        let prefix_ok = trimmed.is_empty()
            || trimmed.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part.chars().all(|c| !c.is_control() && c != '\\')
            });
        if !prefix_ok || trimmed.len() > 512 {
            return Err(TargetError::Prefix(prefix.to_owned()));
        }
        Ok(UploadTarget {
            bucket: bucket.to_owned(),
            prefix: trimmed.to_owned(),
        })
    }

    /// The object key of a file in the output folder (its name only, never a path).
    pub fn key(&self, file_name: &str) -> String {
        if self.prefix.is_empty() {
            file_name.to_owned()
        } else {
            format!("{}/{}", self.prefix, file_name)
        }
    }

    /// `s3://bucket/prefix/`, for messages and the status page.
    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/", self.bucket)
        } else {
            format!("s3://{}/{}/", self.bucket, self.prefix)
        }
    }
}

/// A value made safe as one key part: `[A-Za-z0-9._-]`, others `_`, never empty, `.` or `..`.
fn clean(v: &str) -> String {
    let s: String = v
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> PrefixVars {
        PrefixVars {
            host: "pi-4.local".into(),
            room: "My Room/../x".into(),
        }
    }

    #[test]
    fn bucket_and_prefix_are_split_and_keys_keep_the_file_name() {
        let t = UploadTarget::parse("s3://rec/a/b/", &vars()).unwrap();
        assert_eq!(t.bucket, "rec");
        assert_eq!(t.prefix, "a/b");
        assert_eq!(t.key("r_s1_1700000000.ts"), "a/b/r_s1_1700000000.ts");
        assert_eq!(t.display(), "s3://rec/a/b/");
        let t = UploadTarget::parse("s3://rec", &vars()).unwrap();
        assert_eq!(t.prefix, "");
        assert_eq!(t.key("f.ts"), "f.ts");
        assert_eq!(t.display(), "s3://rec/");
    }

    #[test]
    fn host_and_room_are_expanded_and_cannot_climb_out() {
        let t = UploadTarget::parse("s3://rec/{host}/{room}", &vars()).unwrap();
        assert_eq!(t.prefix, "pi-4.local/My_Room_.._x");
        let v = PrefixVars {
            host: "..".into(),
            room: String::new(),
        };
        let t = UploadTarget::parse("s3://rec/{host}/{room}", &v).unwrap();
        assert_eq!(t.prefix, "_/_");
    }

    #[test]
    fn bad_addresses_are_refused() {
        let v = vars();
        assert!(matches!(
            UploadTarget::parse("https://x/y", &v),
            Err(TargetError::Scheme(_))
        ));
        for b in ["s3://", "s3://ab", "s3://Upper", "s3://-rec", "s3://re_c/x"] {
            assert!(
                matches!(UploadTarget::parse(b, &v), Err(TargetError::Bucket(_))),
                "{b}"
            );
        }
        for p in [
            "s3://rec/a//b",
            "s3://rec/../x",
            "s3://rec/a/./b",
            "s3://rec/a\u{7}",
        ] {
            assert!(
                matches!(UploadTarget::parse(p, &v), Err(TargetError::Prefix(_))),
                "{p}"
            );
        }
    }
}
