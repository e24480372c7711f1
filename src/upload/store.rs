//! The S3 side: building the client, the check made before recording starts, and one file's
//! upload with its confirmation.
//!
//! The client is `object_store`'s S3 store (Apache Arrow's, used by DataFusion, Delta Lake and
//! others): SigV4, multipart, retries, and credentials the usual AWS ways (environment, web
//! identity for Kubernetes, container and instance metadata). It runs on reqwest + rustls with
//! the `ring` provider this program already carries; no C TLS library is added.
//!
//! A file counts as uploaded only when a `HEAD` of its object shows the file's size and an ETag
//! equal to the MD5 we computed while reading it (S3's rule: the body's MD5 for a single `PUT`,
//! the MD5 of the parts' MD5s and `-N` for a multipart upload). Stores whose ETags are not MD5s
//! (SSE-KMS on AWS) are checked by size alone, and the journal says so.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as KeyPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use thiserror::Error;
use tokio::io::AsyncReadExt;

use super::target::UploadTarget;

/// Files up to this size go in one `PUT`; larger ones in parts of this size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Where and how to reach the store (beyond what the AWS environment variables say).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `--upload`.
    pub target: UploadTarget,
    /// `--upload-endpoint` (or `AWS_ENDPOINT_URL`): a self-hosted server, addressed path-style.
    pub endpoint: Option<String>,
    /// `--upload-region` (or `AWS_REGION`); `us-east-1` when neither says.
    pub region: Option<String>,
    /// Access key ID and secret, instead of what the environment says (for embedding; the
    /// command line takes credentials from the environment only, never from flags).
    pub credentials: Option<(String, String)>,
}

/// Why the store could not be used (one line each, for the log and the status page).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The client could not be built from the settings.
    #[error("S3 settings: {0}")]
    Config(String),
    /// The bucket does not exist.
    #[error("bucket {0:?} does not exist")]
    NoBucket(String),
    /// The store refused our credentials.
    #[error(
        "the store refused the credentials ({0}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    )]
    Credentials(String),
    /// The store could not be reached or failed.
    #[error("{0}")]
    Unreachable(String),
    /// The local file could not be read.
    #[error("reading {0}")]
    Local(String),
    /// The local file is gone.
    #[error("file is gone")]
    Missing,
    /// The object in the bucket is not the file.
    #[error("uploaded object does not match the file: {0}")]
    Mismatch(String),
}

impl StoreError {
    /// A failure of the store (retried later, with backoff for every file), as opposed to one
    /// of this file.
    pub fn is_store_wide(&self) -> bool {
        matches!(
            self,
            StoreError::NoBucket(_) | StoreError::Credentials(_) | StoreError::Unreachable(_)
        )
    }
}

/// Builds the S3 client.
pub fn build(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    // reqwest's TLS needs a process-wide provider; ring is the one this program uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = cfg
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    let region = cfg
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_owned());
    let options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
    // Short retries inside a request; the uploader's own backoff covers long outages.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
    };
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.target.bucket)
        .with_region(region)
        .with_client_options(options)
        .with_retry(retry)
        .with_virtual_hosted_style_request(false);
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    if let Some((id, secret)) = &cfg.credentials {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    b.build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| StoreError::Config(one_line(&e)))
}

/// Lists one page under the prefix: says whether the bucket exists and the credentials work,
/// before recording starts.
pub async fn check(store: &dyn ObjectStore, target: &UploadTarget) -> Result<(), StoreError> {
    let prefix = (!target.prefix.is_empty()).then(|| KeyPath::from(target.prefix.as_str()));
    store
        .list_with_delimiter(prefix.as_ref())
        .await
        .map(|_| ())
        .map_err(|e| classify(&e, &target.bucket))
}

/// What an upload confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Object size (equal to the file's).
    pub bytes: u64,
    /// The store's ETag.
    pub etag: String,
    /// True when the ETag was checked against our MD5 (false: size only).
    pub etag_checked: bool,
}

/// Uploads one file to `key` and confirms it. Reads at most [`PART_SIZE`] at a time.
pub async fn upload(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    path: &FsPath,
) -> Result<Confirmed, StoreError> {
    let local = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::Missing
        } else {
            StoreError::Local(e.to_string())
        }
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let size = file.metadata().await.map_err(local)?.len();
    let location = KeyPath::from(key);
    let expected = if size <= PART_SIZE as u64 {
        let buf = read_chunk(&mut file, size).await?;
        let md5 = hex::encode(Md5::digest(&buf));
        store
            .put(&location, PutPayload::from(Bytes::from(buf)))
            .await
            .map_err(|e| classify(&e, bucket))?;
        md5
    } else {
        let mut upload = store
            .put_multipart(&location)
            .await
            .map_err(|e| classify(&e, bucket))?;
        let mut part_md5s = Vec::new();
        let mut left = size;
        let result: Result<(), StoreError> = async {
            while left > 0 {
                let n = left.min(PART_SIZE as u64);
                let buf = read_chunk(&mut file, n).await?;
                left -= n;
                part_md5s.extend_from_slice(&Md5::digest(&buf));
                upload
                    .put_part(PutPayload::from(Bytes::from(buf)))
                    .await
                    .map_err(|e| classify(&e, bucket))?;
            }
            upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e, bucket))
        }
        .await;
        if let Err(e) = result {
            let _ = upload.abort().await;
            return Err(e);
        }
        format!(
            "{}-{}",
            hex::encode(Md5::digest(&part_md5s)),
            part_md5s.len() / 16
        )
    };
    let meta = store
        .head(&location)
        .await
        .map_err(|e| classify(&e, bucket))?;
    if meta.size != size {
        return Err(StoreError::Mismatch(format!(
            "{} bytes in the bucket, {size} on disk",
            meta.size
        )));
    }
    let etag = meta
        .e_tag
        .unwrap_or_default()
        .trim_matches('"')
        .to_ascii_lowercase();
    let md5_like = etag.len() >= 32 && etag[..32].bytes().all(|b| b.is_ascii_hexdigit());
    if md5_like && etag != expected {
        return Err(StoreError::Mismatch(format!(
            "ETag {etag}, expected {expected}"
        )));
    }
    Ok(Confirmed {
        bytes: size,
        etag,
        etag_checked: md5_like,
    })
}

/// The next `n` bytes of the file, all of them (a closed file does not shrink; if it did, the
/// upload fails rather than send less than the journal promised).
async fn read_chunk(file: &mut tokio::fs::File, n: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(n as usize);
    file.take(n)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StoreError::Local(e.to_string()))?;
    if buf.len() as u64 != n {
        return Err(StoreError::Local("file shrank while uploading".into()));
    }
    Ok(buf)
}

/// Sorts an `object_store` error into what the user must do about it.
fn classify(e: &object_store::Error, bucket: &str) -> StoreError {
    let text = one_line(e);
    let has = |s: &str| text.contains(s);
    match e {
        _ if has("NoSuchBucket") => StoreError::NoBucket(bucket.to_owned()),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            StoreError::Credentials(short_reason(&text))
        }
        _ if has("InvalidAccessKeyId")
            || has("SignatureDoesNotMatch")
            || has("AccessDenied")
            || has("Missing credentials") =>
        {
            StoreError::Credentials(short_reason(&text))
        }
        // object_store says where and how often before the cause: the cause is what helps.
        _ => StoreError::Unreachable(match text.rsplit_once(" - ") {
            Some((_, cause)) if cause.len() > 10 => cause.to_owned(),
            _ => text,
        }),
    }
}

/// The S3 error code in a message (`<Code>X</Code>` or a known name), else the message.
fn short_reason(text: &str) -> String {
    for code in [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "Missing credentials",
    ] {
        if text.contains(code) {
            return code.to_owned();
        }
    }
    text.chars().take(160).collect()
}

/// An error and its sources on one line, at most 400 characters.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 400 {
        let mut t: String = s.chars().take(399).collect();
        t.push('…');
        t
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_and_bucket_errors_are_told_apart() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        };
        assert_eq!(
            classify(&generic("... <Code>NoSuchBucket</Code> ..."), "b"),
            StoreError::NoBucket("b".into())
        );
        assert_eq!(
            classify(&generic("<Code>InvalidAccessKeyId</Code>"), "b"),
            StoreError::Credentials("InvalidAccessKeyId".into())
        );
        let e = classify(&generic("error sending request: connection refused"), "b");
        assert!(matches!(e, StoreError::Unreachable(_)));
        assert!(e.is_store_wide());
        assert!(!StoreError::Missing.is_store_wide());
    }

    #[test]
    fn long_errors_become_one_short_line() {
        let e = std::io::Error::other(format!("a\n  b {}", "x".repeat(1000)));
        let s = one_line(&e);
        assert!(!s.contains('\n'));
        assert_eq!(s.chars().count(), 400);
        assert!(s.starts_with("a b x"));
    }
}
