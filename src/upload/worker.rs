//! The uploader task: takes "opened" and "closed" from the orchestrator, journals them, uploads
//! closed files (a few at once, oldest first), confirms, deletes locally if asked, and reports
//! its state. One task owns all of it; journal writes and deletions run on blocking threads.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use super::journal::{JournalLine, valid_name};
use super::spool::Spool;
use super::store::{self, Confirmed, StoreConfig, StoreError};
use super::target::UploadTarget;
use crate::record::disk::Backoff;
use crate::record::manifest::unix_ms;

/// How long the check before recording may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between tries while the store fails: a store that comes back is used
/// again within this.
const RETRY_CAP: Duration = Duration::from_secs(60);
/// At most one "still failing" warning this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Settings of the uploader.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Where to.
    pub store: StoreConfig,
    /// The output folder (the spool).
    pub dir: PathBuf,
    /// `--upload-delete-local`: delete a file once its upload is confirmed.
    pub delete_local: bool,
    /// Uploads at once.
    pub concurrency: usize,
}

/// The uploader's state, for `/metrics`, `/status.json` and the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadStatus {
    /// `s3://bucket/prefix/`.
    pub target: String,
    /// Files finished and not yet confirmed in the bucket (uploading ones included).
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Uploads in progress.
    pub uploading: u64,
    /// Files confirmed in the bucket since start.
    pub uploaded_files: u64,
    /// Their bytes.
    pub uploaded_bytes: u64,
    /// Upload attempts that failed since start.
    pub failed_attempts: u64,
    /// Files deleted locally after confirmation.
    pub deleted_local: u64,
    /// Files that vanished from the folder before they could be uploaded.
    pub forgotten: u64,
    /// The last failure, one line.
    pub last_error: Option<String>,
    /// When it happened (Unix ms).
    pub last_error_unix_ms: Option<u64>,
    /// When the last upload was confirmed (Unix ms).
    pub last_success_unix_ms: Option<u64>,
    /// The store failed the last try and has not answered since (retries go on).
    pub failing: bool,
    /// Seconds until the next try, while waiting after a failure.
    pub retry_in_seconds: Option<f64>,
    /// Names of the pending files: retention must not delete them.
    #[serde(skip)]
    pub pending_names: Arc<BTreeSet<String>>,
}

/// Why the uploader could not start (the recorder does not start either: the flags are wrong
/// or the folder is unusable). A store that is down or refuses us is not one of these.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal could not be created in the output folder.
    #[error("upload journal in {dir}: {source}")]
    Journal {
        /// The folder.
        dir: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

enum Cmd {
    Opened(String),
    Closed(String, u64),
    Finish(Duration),
}

/// The orchestrator's side of the uploader.
#[derive(Debug)]
pub struct UploadHandle {
    // Unbounded on purpose: one message per file opened or closed (a few a second at most),
    // and a "closed" dropped would be a file never uploaded.
    tx: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<UploadStatus>,
    task: JoinHandle<()>,
}

impl UploadHandle {
    /// A file the recorder starts writing (journaled, so a crash still uploads it).
    pub fn opened(&self, path: &Path) {
        if let Some(name) = file_name(path) {
            let _ = self.tx.send(Cmd::Opened(name));
        }
    }

    /// A finished file: upload it.
    pub fn closed(&self, path: &Path, bytes: u64) {
        if let Some(name) = file_name(path) {
            let _ = self.tx.send(Cmd::Closed(name, bytes));
        }
    }

    /// The state now.
    pub fn status(&self) -> UploadStatus {
        self.status.borrow().clone()
    }

    /// Uploads what is queued, for at most `grace` (nothing more while the store is failing);
    /// what is left stays in the journal for the next start. Returns the final state.
    pub async fn finish(self, grace: Duration) -> UploadStatus {
        let _ = self.tx.send(Cmd::Finish(grace));
        if self.task.await.is_err() {
            error!("upload: the uploader stopped unexpectedly; the journal keeps what is owed");
        }
        self.status.borrow().clone()
    }
}

fn file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.to_owned();
    valid_name(&name).then_some(name)
}

/// Builds the client, opens the journal (adopting dead recorders'), checks the store (one
/// line if it fails; recording goes on) and starts the task.
pub async fn start(config: UploadConfig) -> Result<UploadHandle, StartError> {
    let target = config.store.target.clone();
    let client = store::build(&config.store)?;
    let dir = config.dir.clone();
    let keep_uploaded = config.delete_local;
    let opened = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        Spool::open(&dir, keep_uploaded)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    let (spool, adopted) = opened.map_err(|source| StartError::Journal {
        dir: config.dir.display().to_string(),
        source,
    })?;
    let mut status = UploadStatus {
        target: target.display(),
        ..UploadStatus::default()
    };
    let mut last_warn = None;
    match tokio::time::timeout(CHECK_TIMEOUT, store::check(client.as_ref(), &target)).await {
        Ok(Ok(())) => info!("upload: finished files go to {}", target.display()),
        Ok(Err(e)) => {
            warn!(
                "upload: {}: {e}; recording continues locally and uploads are retried",
                target.display()
            );
            status.last_error = Some(e.to_string());
            status.last_error_unix_ms = Some(unix_ms());
            last_warn = Some(Instant::now());
        }
        Err(_) => {
            warn!(
                "upload: {} did not answer within {} s; recording continues locally and uploads are retried",
                target.display(),
                CHECK_TIMEOUT.as_secs()
            );
            status.last_error = Some("no answer from the store".into());
            status.last_error_unix_ms = Some(unix_ms());
            last_warn = Some(Instant::now());
        }
    }
    let (status_tx, status_rx) = watch::channel(status.clone());
    let mut w = Worker {
        client,
        target,
        dir: config.dir,
        delete_local: config.delete_local,
        concurrency: config.concurrency.max(1),
        spool: Some(spool),
        queue: VecDeque::new(),
        sizes: HashMap::new(),
        in_flight: JoinSet::new(),
        attempts: HashMap::new(),
        backoff: Backoff::new(Duration::from_secs(1), RETRY_CAP),
        retry_at: None,
        // A failed check already said it: the next warning waits its minute.
        failing: last_warn.is_some(),
        last_warn,
        status,
        status_tx,
    };
    w.resume(adopted.journals, adopted.skipped_lines).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(w.run(rx));
    Ok(UploadHandle {
        tx,
        status: status_rx,
        task,
    })
}

type Outcome = (String, Result<Confirmed, StoreError>);

struct Worker {
    client: Arc<dyn ObjectStore>,
    target: UploadTarget,
    dir: PathBuf,
    delete_local: bool,
    concurrency: usize,
    /// `None` only while a blocking journal write has it.
    spool: Option<Spool>,
    queue: VecDeque<String>,
    /// Pending files (queued or uploading) and their sizes.
    sizes: HashMap<String, u64>,
    in_flight: JoinSet<Outcome>,
    /// Failed attempts per file since its last success (for the log).
    attempts: HashMap<String, u32>,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    failing: bool,
    last_warn: Option<Instant>,
    status: UploadStatus,
    status_tx: watch::Sender<UploadStatus>,
}

impl Worker {
    /// Queues what earlier runs owed (adopted journals) and deletes what they confirmed.
    async fn resume(&mut self, journals: usize, skipped: usize) {
        let Some(spool) = &self.spool else { return };
        let owed = spool.state().to_upload(false);
        let confirmed = if self.delete_local {
            spool.state().uploaded()
        } else {
            Vec::new()
        };
        if journals > 0 {
            info!(
                "upload: resuming {} file(s) an earlier run had not uploaded{}",
                owed.len(),
                if skipped > 0 {
                    format!(" ({skipped} unreadable journal line(s) skipped)")
                } else {
                    String::new()
                }
            );
        }
        for name in confirmed {
            self.delete(name).await;
        }
        for name in owed {
            let bytes = match spool_bytes(self.spool.as_ref(), &name) {
                Some(b) => b,
                None => std::fs::metadata(self.dir.join(&name)).map_or(0, |m| m.len()),
            };
            self.enqueue(name, bytes);
        }
        self.publish();
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut open = true;
        loop {
            self.start_uploads();
            self.publish();
            if let Some(d) = deadline {
                let store_failing = self.retry_at.is_some() && self.in_flight.is_empty();
                if (self.queue.is_empty() && self.in_flight.is_empty())
                    || store_failing
                    || tokio::time::Instant::now() >= d
                {
                    break;
                }
            }
            let retry_at = self.retry_at;
            tokio::select! {
                cmd = rx.recv(), if open => match cmd {
                    Some(Cmd::Opened(name)) => self.journal(JournalLine::Opened { file: name }).await,
                    Some(Cmd::Closed(name, bytes)) => {
                        self.journal(JournalLine::Closed { file: name.clone(), bytes }).await;
                        self.enqueue(name, bytes);
                    }
                    Some(Cmd::Finish(grace)) => {
                        if !self.sizes.is_empty() {
                            info!(
                                "upload: {} file(s) still to upload; trying for up to {} s (a second Ctrl-C leaves them for the next start)",
                                self.sizes.len(),
                                grace.as_secs()
                            );
                        }
                        deadline = Some(tokio::time::Instant::now() + grace);
                        open = false;
                        // One more try now, even while backing off: the store may be back.
                        self.retry_at = None;
                    }
                    None => {
                        deadline.get_or_insert_with(tokio::time::Instant::now);
                        open = false;
                    }
                },
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => match done {
                    Ok((name, result)) => self.finished(name, result).await,
                    Err(e) => error!("upload: an upload task failed: {e}"),
                },
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {}
            }
        }
        self.in_flight.abort_all();
        let left = self.sizes.len();
        if left > 0 {
            warn!(
                "upload: {left} file(s) not uploaded yet ({:.1} MB); they stay in the journal and are uploaded at the next start",
                self.sizes.values().sum::<u64>() as f64 / 1e6
            );
        }
        if let Some(spool) = self.spool.take() {
            let _ = tokio::task::spawn_blocking(move || spool.close()).await;
        }
        self.publish();
        if self.status.uploaded_files > 0 {
            info!(
                "upload: {} file(s), {:.1} MB confirmed in {}",
                self.status.uploaded_files,
                self.status.uploaded_bytes as f64 / 1e6,
                self.target.display()
            );
        }
    }

    fn enqueue(&mut self, name: String, bytes: u64) {
        if self.sizes.insert(name.clone(), bytes).is_none() {
            self.queue.push_back(name);
        }
    }

    fn start_uploads(&mut self) {
        if self.retry_at.is_some() {
            return;
        }
        while self.in_flight.len() < self.concurrency {
            let Some(name) = self.queue.pop_front() else {
                break;
            };
            let client = self.client.clone();
            let bucket = self.target.bucket.clone();
            let key = self.target.key(&name);
            let path = self.dir.join(&name);
            self.in_flight.spawn(async move {
                let r = store::upload(client.as_ref(), &bucket, &key, &path).await;
                (name, r)
            });
        }
    }

    async fn finished(&mut self, name: String, result: Result<Confirmed, StoreError>) {
        match result {
            Ok(c) => {
                debug!(file = %name, bytes = c.bytes, etag = %c.etag, "upload confirmed");
                self.sizes.remove(&name);
                self.attempts.remove(&name);
                self.backoff.reset();
                self.status.uploaded_files += 1;
                self.status.uploaded_bytes += c.bytes;
                self.status.last_success_unix_ms = Some(unix_ms());
                if self.failing {
                    self.failing = false;
                    info!(
                        "upload: {} answers again; {} file(s) still to upload",
                        self.target.display(),
                        self.sizes.len()
                    );
                }
                let etag = if c.etag_checked {
                    c.etag
                } else {
                    format!("{} (size checked only)", c.etag)
                };
                self.journal(JournalLine::Uploaded {
                    file: name.clone(),
                    key: self.target.key(&name),
                    bytes: c.bytes,
                    etag,
                })
                .await;
                if self.delete_local {
                    self.delete(name).await;
                }
            }
            Err(StoreError::Missing) => {
                warn!(file = %name, "upload: the file is gone from the folder; not uploaded");
                self.sizes.remove(&name);
                self.attempts.remove(&name);
                self.status.forgotten += 1;
                self.journal(JournalLine::Forgotten {
                    file: name,
                    why: "missing from the folder".into(),
                })
                .await;
            }
            Err(e) => {
                self.status.failed_attempts += 1;
                self.status.last_error = Some(format!("{name}: {e}"));
                self.status.last_error_unix_ms = Some(unix_ms());
                let n = self.attempts.entry(name.clone()).or_default();
                *n += 1;
                let n = *n;
                // Back to the front: order is kept, and it is the next one tried.
                self.queue.push_front(name.clone());
                let delay = self.backoff.next_delay();
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                let now = Instant::now();
                let due = self
                    .last_warn
                    .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
                if !self.failing || due {
                    warn!(
                        "upload: {name} failed ({e}){}; {} file(s) waiting, next try in {:.0} s; recording continues",
                        if n > 1 {
                            format!(", attempt {n}")
                        } else {
                            String::new()
                        },
                        self.sizes.len(),
                        delay.as_secs_f64().ceil()
                    );
                    self.last_warn = Some(now);
                }
                self.failing = e.is_store_wide() || self.failing;
            }
        }
    }

    /// Deletes a confirmed file locally, then journals it.
    async fn delete(&mut self, name: String) {
        let path = self.dir.join(&name);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match removed {
            Ok(()) => self.status.deleted_local += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(file = %name, "upload: confirmed but not deleted locally: {e}");
                return;
            }
        }
        self.journal(JournalLine::Deleted { file: name }).await;
    }

    /// Appends one journal line on a blocking thread.
    async fn journal(&mut self, line: JournalLine) {
        let Some(mut spool) = self.spool.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = spool.append(&line);
            (spool, r)
        })
        .await;
        match joined {
            Ok((spool, r)) => {
                if let Err(e) = r {
                    let now = Instant::now();
                    if self
                        .last_warn
                        .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                    {
                        warn!(journal = %spool.path().display(), "upload: journal write failed: {e}");
                        self.last_warn = Some(now);
                    }
                }
                self.spool = Some(spool);
            }
            Err(e) => error!("upload: journal writer failed ({e}); uploads go on unjournaled"),
        }
    }

    fn publish(&mut self) {
        self.status.pending_files = self.sizes.len() as u64;
        self.status.pending_bytes = self.sizes.values().sum();
        self.status.uploading = self.in_flight.len() as u64;
        self.status.failing = self.failing;
        self.status.retry_in_seconds = self.retry_at.map(|t| {
            t.saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64()
        });
        if self.status.pending_names.len() != self.sizes.len()
            || self
                .sizes
                .keys()
                .any(|k| !self.status.pending_names.contains(k))
        {
            self.status.pending_names = Arc::new(self.sizes.keys().cloned().collect());
        }
        self.status_tx.send_replace(self.status.clone());
    }
}

fn spool_bytes(spool: Option<&Spool>, name: &str) -> Option<u64> {
    match spool?.state().state(name)? {
        super::journal::FileState::Closed(b) => Some(b),
        _ => None,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
