//! `--upload s3://bucket/prefix`: every finished file (each segment as soon as it is closed,
//! and the room timeline when the run ends) is copied to S3-compatible object storage, and
//! none is ever lost on the way.
//!
//! ```text
//! orchestrator ──opened/closed──▶ uploader task ──▶ journal (.ninjarec-upload-*.journal, synced)
//!                                      │
//!                                      ├─▶ up to N uploads at once (PUT or multipart)
//!                                      │     └─▶ HEAD: size and ETag = our MD5 ⇒ confirmed
//!                                      ├─▶ journal "uploaded" ⇒ delete locally (only with
//!                                      │   --upload-delete-local) ⇒ journal "deleted"
//!                                      └─▶ status (pending files/bytes, last error) ⇒ /metrics
//! ```
//!
//! - The output folder is the spool: a file is uploaded from where it was recorded and deleted
//!   locally only after its upload is confirmed, and only with `--upload-delete-local`.
//! - The journal ([`journal`], [`spool`]) is appended and synced at every step; the next start
//!   takes over the journals of recorders that died and uploads what they owed, including the
//!   files they were writing when they died.
//! - An unreachable store never slows recording: files wait on disk (the disk guard still
//!   applies, and retention never deletes a file not yet uploaded), retried with jittered
//!   backoff up to a minute; one warning when uploads start failing, one a minute while they
//!   fail, one when they work again.
//! - The store is checked before recording starts (bucket, credentials): one line if it fails,
//!   and recording goes on locally.

pub mod journal;
pub mod spool;
pub mod store;
pub mod target;
pub mod worker;

pub use store::StoreConfig;
pub use target::{PrefixVars, UploadTarget};
pub use worker::{UploadConfig, UploadHandle, UploadStatus};
