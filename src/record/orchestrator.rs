//! The orchestrator: signaling events in, one recorder task per publisher out.
//!
//! It is the only place that knows about all recordings at once: it starts a
//! [`stream`](super::stream) task for each offer (within `--max-streams`), routes remote
//! candidates to it, stops it when the publisher leaves, relays its answers and candidates to
//! signaling, prints a status line now and then, and on shutdown stops every recording and
//! collects their summaries. It holds no media; the recorder tasks do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::disk::{self, DiskGuard};
use super::hooks::{self, HookConfig, HookHandle};
use super::manifest::{ClosedFileLine, Manifest, ManifestError, ManifestEvent, unix_ms};
use super::retention::{self, RetentionPolicy};
use super::stream::{
    self, LiveStats, RecorderSettings, SignalOut, StreamCommand, StreamIdentity, StreamReport,
    StreamSummary,
};
use crate::peer::{CipherError, PayloadCipher};
use crate::signaling::client::{SignalingEvent, SignalingHandle, SignalingStatus};
use crate::signaling::{self, Cipher, PeerId, SignalingConfig};
use crate::status::snapshot::{Snapshot, StreamStatus};
use crate::upload::{UploadConfig, UploadHandle};

/// How long shutdown waits for recorders to say bye and finish their files.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for `--on-file-done` hooks still running or queued.
const HOOK_GRACE: Duration = Duration::from_secs(30);
/// How often the status of running recordings is logged (without the live table).
const STATUS_LOG_EVERY: u32 = 10;
/// How often the status snapshot is made (and the live table redrawn).
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// How often retention runs (in snapshot ticks).
const RETENTION_EVERY: u32 = 60;
/// How long shutdown keeps uploading (`--upload`) before leaving the rest to the next start.
const UPLOAD_GRACE: Duration = Duration::from_secs(60);

/// The signaling cipher serves the data channel too: the web app may encrypt a renegotiation
/// offer it sends there.
impl PayloadCipher for Cipher {
    fn encrypt(&self, plaintext: &str) -> (String, String) {
        Cipher::encrypt(self, plaintext)
    }

    fn decrypt(&self, hex: &str, vector: &str) -> Result<String, CipherError> {
        Cipher::decrypt(self, hex, vector).map_err(|e| CipherError(e.to_string()))
    }
}

/// Settings of a recording run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where and how to connect, what to record.
    pub signaling: SignalingConfig,
    /// How to record.
    pub recorder: RecorderSettings,
    /// At most this many recordings at once.
    pub max_streams: usize,
    /// What is recorded, as the user named it (room or stream), for the timeline and status.
    pub target: String,
    /// `--on-file-done`: a command run for every closed file.
    pub hooks: Option<HookConfig>,
    /// `--delete-after` / `--keep-mb`.
    pub retention: RetentionPolicy,
    /// Where to publish status snapshots (the `--http` server, the live table); the
    /// orchestrator sends one about every second.
    pub snapshots: Option<watch::Sender<Arc<Snapshot>>>,
    /// Log a status line per recording every 10 s (off when a live table shows it).
    pub status_lines: bool,
    /// `--http ADDR`: serve `/metrics`, `/status.json` and the status page there.
    pub http: Option<String>,
    /// `--upload s3://...`: copy every finished file to object storage.
    pub upload: Option<UploadConfig>,
}

impl RunConfig {
    /// A run with the given parts and no extras (no hooks, no retention, status lines on).
    pub fn new(signaling: SignalingConfig, recorder: RecorderSettings, target: String) -> Self {
        RunConfig {
            signaling,
            recorder,
            max_streams: 64,
            target,
            hooks: None,
            retention: RetentionPolicy::from_flags(None, None),
            snapshots: None,
            status_lines: true,
            http: None,
            upload: None,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The flags do not describe something to record.
    #[error(transparent)]
    Config(#[from] signaling::client::ConfigError),
    /// The output folder is unusable.
    #[error("output folder {path}: {source}")]
    OutputDir {
        /// The folder.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The room timeline could not be created.
    #[error(transparent)]
    Timeline(#[from] ManifestError),
    /// `--http` could not listen.
    #[error(transparent)]
    Status(#[from] crate::status::http::StatusError),
    /// `--upload` settings are wrong or its journal cannot be written.
    #[error(transparent)]
    Upload(#[from] crate::upload::worker::StartError),
    /// `--udp-port` could not be bound.
    #[error("--udp-port: cannot bind {addr}: {source}")]
    UdpPort {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `--tcp-port` could not be bound.
    #[error("--tcp-port: cannot listen on {addr}: {source}")]
    TcpPort {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

struct Entry {
    generation: u64,
    stream_id: String,
    session: Option<Value>,
    /// The ICE ufrag of the offer being recorded: with the session, what tells a repeated
    /// offer from a new peer connection of the publisher.
    ufrag: Option<String>,
    commands: mpsc::Sender<StreamCommand>,
    live: watch::Receiver<LiveStats>,
    stopping: bool,
    started: Instant,
    /// Bytes and time at the last snapshot, for the bit rate.
    last_bytes: (u64, Instant),
    bitrate_bps: f64,
}

/// What the orchestrator owns besides the recorder entries.
struct Run {
    settings: Arc<RecorderSettings>,
    manifest: Manifest,
    hooks: Option<HookHandle>,
    upload: Option<UploadHandle>,
    guard: DiskGuard,
    /// Publishers whose recording waited for disk space when they came.
    refused_low_disk: u64,
    finished: u64,
    signaling_connected: bool,
    started_unix_ms: u64,
    target: String,
    /// Lines about publishers whose recordings keep failing, one per 10 s each.
    quiet: super::quiet::LogBudget,
}

/// How many summaries of finished recordings [`run`] keeps for its caller: a recorder that
/// runs for months must not keep one per recording (a 2-hour churn soak of 867 recordings
/// kept ~0.4 MB of them). Each recording is also logged when its file closes.
pub const KEPT_SUMMARIES: usize = 1000;

/// Records until `shutdown` turns true (or the signaling task ends), then stops every
/// recording, flushes every file and returns one summary per recording, in the order they
/// finished: the last [`KEPT_SUMMARIES`] of them.
pub async fn run(
    mut config: RunConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Vec<StreamSummary>, RunError> {
    if let Some(spec) = config.recorder.session.udp_port.clone() {
        let mux = crate::peer::udp_mux::UdpMux::bind(spec.bind, spec.announce.clone())
            .await
            .map_err(|source| RunError::UdpPort {
                addr: spec.bind,
                source,
            })?;
        config.recorder.session.udp_mux = Some(mux);
        if let Some((bind, announce)) = spec.tcp() {
            let mux = crate::peer::tcp_mux::TcpMux::bind(bind, announce)
                .await
                .map_err(|source| RunError::TcpPort { addr: bind, source })?;
            config.recorder.session.tcp_mux = Some(mux);
        }
    }
    let output_dir = config.recorder.output_dir.clone();
    std::fs::create_dir_all(&output_dir).map_err(|source| RunError::OutputDir {
        path: output_dir.display().to_string(),
        source,
    })?;
    let (status_stop, status_task) = match &config.http {
        Some(addr) => {
            let listener = crate::status::http::bind(addr).await?;
            if let Ok(a) = listener.local_addr() {
                info!("status page on http://{a}/ (metrics on /metrics)");
            }
            let snapshots = config
                .snapshots
                .get_or_insert_with(|| watch::channel(Arc::new(Snapshot::default())).0)
                .subscribe();
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(crate::status::http::serve(listener, snapshots, stop_rx));
            (Some(stop_tx), Some(task))
        }
        None => (None, None),
    };
    // Before anything is recorded: the store is checked (one line if it fails) and what earlier
    // runs left unuploaded is queued.
    let upload = match config.upload.take() {
        Some(u) => Some(crate::upload::worker::start(u).await?),
        None => None,
    };
    let (manifest, manifest_task) = Manifest::create(&output_dir, &config.recorder.prefix)?;
    let timeline_path = manifest.path().to_owned();
    if let Some(u) = &upload {
        u.opened(&timeline_path);
    }
    manifest.emit(ManifestEvent::RecorderStarted {
        target: config.target.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        output_dir: output_dir.display().to_string(),
    });
    let (sig_shutdown_tx, sig_shutdown_rx) = watch::channel(false);
    let (handle, mut sig_events) =
        signaling::client::spawn(config.signaling.clone(), sig_shutdown_rx)?;
    if let Some(cipher) = handle.cipher() {
        config.recorder.session.cipher = Some(Arc::new(cipher.clone()));
    }
    let min_free_mb = config.recorder.min_free_bytes / disk::MB;
    let settings = Arc::new(config.recorder);
    let mut run = Run {
        guard: DiskGuard::new(output_dir.clone(), min_free_mb),
        settings: settings.clone(),
        manifest,
        hooks: config.hooks.take().map(hooks::spawn),
        upload,
        refused_low_disk: 0,
        finished: 0,
        signaling_connected: false,
        started_unix_ms: unix_ms(),
        target: config.target.clone(),
        quiet: Default::default(),
    };
    let (out_tx, out_rx) = mpsc::channel::<SignalOut>(1024);
    let sender = tokio::spawn(send_outgoing(handle, out_rx));
    let (report_tx, mut reports) = mpsc::channel::<StreamReport>(1024);

    let mut entries: HashMap<PeerId, Entry> = HashMap::new();
    let mut summaries = VecDeque::new();
    let mut generation = 0u64;
    let mut ticks = tokio::time::interval(SNAPSHOT_INTERVAL);
    ticks.tick().await;
    let mut tick_count = 0u32;
    let mut signaling_open = true;

    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            ev = sig_events.recv(), if signaling_open => {
                let Some(ev) = ev else {
                    warn!("signaling stopped");
                    signaling_open = false;
                    if entries.is_empty() { break; }
                    continue;
                };
                match ev {
                    SignalingEvent::Offer { peer, stream_id, session, sdp, encrypted } => {
                        let mut replaced = false;
                        let ufrag = crate::peer::offer_ice_ufrag(&sdp).map(str::to_owned);
                        if let Some(e) = entries.get_mut(&peer) {
                            // A publisher that replaced its peer connection (it was asked
                            // again) offers a new ufrag under the same, often null, session:
                            // ignoring that offer left its new peer unanswered and ours
                            // talking to a closed one (one datagram, then 20 s of silence).
                            if e.session == session && e.ufrag == ufrag && !e.stopping {
                                debug!(%stream_id, "repeated offer for a running session ignored");
                                continue;
                            }
                            // The publisher restarted its connection: the old recording ends,
                            // the new one gets its own file.
                            if run.quiet.failing(&stream_id) {
                                debug!(%stream_id, "publisher sent a new session; starting a new recording");
                            } else {
                                info!(%stream_id, "publisher sent a new session; starting a new recording");
                            }
                            replaced = true;
                            e.stopping = true;
                            let _ = e.commands.try_send(StreamCommand::Stop);
                            // Its summary still arrives as a report and is collected then.
                            entries.remove(&peer);
                        }
                        let active = entries.values().filter(|e| !e.stopping).count();
                        if active >= config.max_streams {
                            warn!(%stream_id, max = config.max_streams, "not recording: --max-streams reached");
                            run.manifest.emit(ManifestEvent::PublisherRefused {
                                stream_id,
                                reason: format!("--max-streams {} reached", config.max_streams),
                            });
                            let _ = out_tx.try_send(SignalOut::StreamClosed(peer, false));
                            continue;
                        }
                        let wait_for_disk = match run.guard.check() {
                            Ok(()) => false,
                            Err(low) => {
                                run.low_disk(&stream_id, &low);
                                true
                            }
                        };
                        generation += 1;
                        if replaced || run.quiet.failing(&stream_id) {
                            debug!(%stream_id, "publisher offered its stream again; recording");
                        } else {
                            info!(%stream_id, "publisher offered its stream; recording");
                        }
                        run.manifest.emit(ManifestEvent::PublisherJoined {
                            stream_id: stream_id.clone(),
                        });
                        let identity = StreamIdentity {
                            peer: peer.clone(),
                            stream_id: stream_id.clone(),
                            session: session.clone(),
                            encrypted,
                            generation,
                        };
                        let (commands, live) = stream::spawn(settings.clone(), identity, sdp, report_tx.clone(), wait_for_disk);
                        let now = Instant::now();
                        entries.insert(peer, Entry {
                            generation, stream_id, session, ufrag, commands, live, stopping: false,
                            started: now, last_bytes: (0, now), bitrate_bps: 0.0,
                        });
                    }
                    SignalingEvent::RemoteCandidates { peer, session, candidates } => {
                        match entries.get(&peer) {
                            Some(e) if e.session == session => {
                                if e.commands.try_send(StreamCommand::RemoteCandidates(candidates)).is_err() {
                                    debug!(stream = %e.stream_id, "candidates dropped: recorder busy or gone");
                                }
                            }
                            _ => debug!("candidates for an unknown session dropped"),
                        }
                    }
                    SignalingEvent::StreamEnded { peer, stream_id } => {
                        if let Some(e) = entries.get_mut(&peer) && !e.stopping {
                            if run.quiet.failing(&stream_id) {
                                debug!(%stream_id, "publisher left");
                            } else {
                                info!(%stream_id, "publisher left");
                            }
                            e.stopping = true;
                            let _ = e.commands.try_send(StreamCommand::Stop);
                        }
                    }
                    SignalingEvent::Status(s) => match s {
                        SignalingStatus::Connecting { attempt } if attempt > 1 => info!(attempt, "reconnecting to the handshake server"),
                        SignalingStatus::Connecting { .. } => debug!("connecting to the handshake server"),
                        SignalingStatus::Connected => {
                            info!("connected to the handshake server");
                            run.signaling_connected = true;
                            run.manifest.emit(ManifestEvent::SignalingConnected);
                        }
                        SignalingStatus::Disconnected { reason, retry_in } => {
                            warn!("handshake server connection lost ({reason}); retrying in {:.1} s (recordings continue)", retry_in.as_secs_f64());
                            if run.signaling_connected {
                                run.manifest.emit(ManifestEvent::SignalingLost { reason });
                            }
                            run.signaling_connected = false;
                        }
                    },
                    SignalingEvent::UserError(msg) => error!("{msg}"),
                }
            }
            report = reports.recv() => {
                let Some(report) = report else { continue };
                match report {
                    StreamReport::Signal(msg) => {
                        if out_tx.try_send(msg).is_err() {
                            warn!("signaling queue full; a message to a publisher was dropped");
                        }
                    }
                    StreamReport::Finished { peer, generation, summary } => {
                        let recorded = summary.core.frames_written + summary.core.audio_written > 0;
                        let line = if recorded || summary.crashed.is_some() {
                            run.quiet.recorded(&summary.stream_id);
                            Some(0)
                        } else {
                            run.quiet.failed(&summary.stream_id, Instant::now())
                        };
                        if let Some(left_out) = line {
                            stream::explain_end(&summary, left_out);
                        }
                        if entries.get(&peer).is_some_and(|e| e.generation == generation) {
                            entries.remove(&peer);
                            let _ = out_tx.try_send(SignalOut::StreamClosed(peer, recorded));
                        }
                        run.finished(&summary);
                        keep_summary(&mut summaries, *summary);
                        if !signaling_open && entries.is_empty() {
                            break;
                        }
                    }
                    other => run.file_report(other),
                }
            }
            _ = ticks.tick() => {
                tick_count = tick_count.wrapping_add(1);
                if let Some(tx) = &config.snapshots {
                    tx.send_replace(Arc::new(run.snapshot(&mut entries)));
                }
                if config.status_lines && tick_count.is_multiple_of(STATUS_LOG_EVERY) {
                    log_status(&entries);
                }
                if config.retention.is_active() && tick_count.is_multiple_of(RETENTION_EVERY) {
                    run.retention(&entries, &config.retention).await;
                }
            }
        }
    }

    // Shutdown: stop every recording, wait (bounded) for their files to be finished.
    let pending: Vec<(PeerId, u64)> = entries
        .iter()
        .map(|(p, e)| (p.clone(), e.generation))
        .collect();
    for e in entries.values_mut() {
        e.stopping = true;
        let _ = e.commands.try_send(StreamCommand::Stop);
    }
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let mut left = pending.len();
    while left > 0 {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(StreamReport::Finished {
                peer,
                generation,
                summary,
            })) => {
                if pending.contains(&(peer, generation)) {
                    left -= 1;
                }
                run.finished(&summary);
                keep_summary(&mut summaries, *summary);
            }
            Ok(Some(other)) => run.file_report(other),
            Ok(None) | Err(_) => {
                warn!(
                    left,
                    "some recordings did not finish in time; their files are still playable"
                );
                break;
            }
        }
    }
    let _ = sig_shutdown_tx.send(true);
    drop(out_tx);
    let _ = sender.await;
    if let Some(hooks) = run.hooks.take() {
        let stats = hooks.finish(HOOK_GRACE).await;
        if stats.run > 0 {
            info!(
                "--on-file-done: {} run, {} succeeded, {} failed, {} timed out",
                stats.run, stats.succeeded, stats.failed, stats.timed_out
            );
        }
    }
    let finished = run.finished;
    run.manifest.emit(ManifestEvent::RecorderStopped {
        recordings: finished,
    });
    let upload = run.upload.take();
    drop(run);
    let _ = manifest_task.await;
    if let Some(u) = upload {
        // The timeline is complete now: it goes last.
        let bytes = std::fs::metadata(&timeline_path).map_or(0, |m| m.len());
        u.closed(&timeline_path, bytes);
        let status = u.finish(UPLOAD_GRACE).await;
        debug!(
            pending = status.pending_files,
            uploaded = status.uploaded_files,
            "uploader finished"
        );
    }
    if let (Some(stop), Some(task)) = (status_stop, status_task) {
        let _ = stop.send(true);
        let _ = task.await;
    }
    if summaries.len() < finished as usize {
        info!(
            "{finished} recordings in all; the last {} are listed",
            summaries.len()
        );
    }
    Ok(summaries.into())
}

/// Adds a finished recording's summary, forgetting the oldest past [`KEPT_SUMMARIES`].
fn keep_summary(summaries: &mut VecDeque<StreamSummary>, summary: StreamSummary) {
    if summaries.len() == KEPT_SUMMARIES {
        summaries.pop_front();
    }
    summaries.push_back(summary);
}

impl Run {
    /// A recorder's file or timeline report: into the timeline, and closed files to the hooks.
    fn file_report(&mut self, report: StreamReport) {
        match report {
            StreamReport::Timeline(event) => {
                if let (Some(u), ManifestEvent::FileOpened { path, .. }) = (&self.upload, &event) {
                    u.opened(std::path::Path::new(path));
                }
                self.manifest.emit(event)
            }
            StreamReport::FileClosed(file) => {
                if let Some(u) = &self.upload {
                    u.closed(&file.path, file.bytes);
                }
                self.manifest.emit(ManifestEvent::FileClosed {
                    file: ClosedFileLine::from(file.as_ref()),
                });
                if let Some(h) = &self.hooks {
                    h.file_done(&file);
                }
            }
            StreamReport::Signal(_) | StreamReport::Finished { .. } => {}
        }
    }

    /// A recording ended.
    fn finished(&mut self, summary: &StreamSummary) {
        self.finished += 1;
        let reason = if summary.crashed.is_some() {
            // Its last file was never reported closed: it is as finished as it will be.
            if let (Some(u), Some(path)) = (&self.upload, &summary.path) {
                u.closed(path, std::fs::metadata(path).map_or(0, |m| m.len()));
            }
            "crashed".to_owned()
        } else {
            summary.close_reason.as_ref().map_or_else(
                || "shutdown".to_owned(),
                |r| format!("{r:?}").to_lowercase(),
            )
        };
        self.manifest.emit(ManifestEvent::PublisherLeft {
            stream_id: summary.stream_id.clone(),
            reason,
        });
    }

    /// A publisher came while the disk is low: it is connected, and recorded once space is
    /// freed (the recorder checks); said in one line with what is free.
    fn low_disk(&mut self, stream_id: &str, low: &disk::LowDisk) {
        self.refused_low_disk += 1;
        warn!(
            stream = %stream_id,
            "{low}; connected, recording starts when space is freed"
        );
        self.manifest.emit(ManifestEvent::DiskLow {
            stream_id: stream_id.to_owned(),
            free_bytes: low.free_bytes,
            min_free_bytes: low.min_free_bytes,
        });
    }

    /// One retention pass (off the runtime threads), never touching a file in use.
    async fn retention(&self, entries: &HashMap<PeerId, Entry>, policy: &RetentionPolicy) {
        let dir = self.settings.output_dir.clone();
        let mut in_use: HashSet<PathBuf> = entries
            .values()
            .filter_map(|e| e.live.borrow().path.clone())
            .collect();
        // A file not yet in the bucket is never deleted.
        if let Some(u) = &self.upload {
            in_use.extend(u.status().pending_names.iter().map(|n| dir.join(n)));
        }
        let prefix = self.settings.prefix.clone();
        let policy = policy.clone();
        let report = tokio::task::spawn_blocking(move || {
            retention::apply(
                &dir,
                &prefix,
                &in_use,
                &policy,
                std::time::SystemTime::now(),
            )
        })
        .await;
        if let Ok(r) = report
            && !r.deleted.is_empty()
        {
            info!(
                "retention: {} file(s) deleted, {:.1} MB freed",
                r.deleted.len(),
                r.freed_bytes() as f64 / 1e6
            );
        }
    }

    /// The status of everything now, for the status page and the live table.
    fn snapshot(&self, entries: &mut HashMap<PeerId, Entry>) -> Snapshot {
        let now = Instant::now();
        let mut streams: Vec<StreamStatus> = entries
            .values_mut()
            .map(|e| {
                let live = e.live.borrow().clone();
                let (bytes, at) = e.last_bytes;
                let dt = now.saturating_duration_since(at).as_secs_f64();
                if dt >= 0.5 {
                    e.bitrate_bps = live.bytes.saturating_sub(bytes) as f64 * 8.0 / dt;
                    e.last_bytes = (live.bytes, now);
                }
                let state = if e.stopping {
                    "stopping"
                } else if live.waiting_for_disk {
                    "waiting-for-disk"
                } else if live.connected {
                    "recording"
                } else {
                    "connecting"
                };
                let c = &live.core;
                StreamStatus {
                    stream_id: e.stream_id.clone(),
                    state: state.to_owned(),
                    codec: live.codec.map(|c| c.to_string()),
                    path: live.path.as_ref().map(|p| p.display().to_string()),
                    segment: live.segment,
                    age_seconds: now.saturating_duration_since(e.started).as_secs_f64(),
                    duration_seconds: live.file_duration_90k as f64 / 90_000.0,
                    bytes_total: live.bytes,
                    file_bytes: live.file_bytes,
                    bitrate_bps: e.bitrate_bps,
                    frames_written: c.frames_written,
                    frames_dropped: c.frames_dropped,
                    audio_written: c.audio_written,
                    audio_dropped: c.audio_dropped,
                    packets_lost: c.packets_lost,
                    keyframe_requests: c.keyframe_requests,
                    av_correction_ms: c.av_offset_ms,
                    implausible_reports: c.implausible_reports,
                    media_dropped: live.media_dropped,
                    disk_error: live.disk_error.clone(),
                }
            })
            .collect();
        streams.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        Snapshot {
            taken_unix_ms: unix_ms(),
            started_unix_ms: self.started_unix_ms,
            target: self.target.clone(),
            signaling_connected: self.signaling_connected,
            output_dir: self.settings.output_dir.display().to_string(),
            disk_free_bytes: disk::free_bytes(&self.settings.output_dir).ok(),
            min_free_bytes: self.guard.min_free_bytes(),
            process: crate::status::process::process_stats(),
            streams,
            finished: self.finished,
            refused_low_disk: self.refused_low_disk,
            upload: self.upload.as_ref().map(UploadHandle::status),
            udp_port: self.settings.session.udp_mux.as_ref().map(|mux| {
                let c = mux.counters();
                crate::status::snapshot::UdpPortStatus {
                    port: mux.local_addr().map(|a| a.port()).unwrap_or(0),
                    received: c.received.load(Ordering::Relaxed),
                    unknown: c.unknown.load(Ordering::Relaxed),
                    queue_full: c.queue_full.load(Ordering::Relaxed),
                    send_dropped: c.send_dropped.load(Ordering::Relaxed),
                    kernel_dropped: c.kernel_dropped.load(Ordering::Relaxed),
                    decrypted_here: c.media.taken.load(Ordering::Relaxed),
                    not_decrypted_here: c.media.not_decrypted.load(Ordering::Relaxed),
                    feedback_dropped: c.media.feedback_dropped.load(Ordering::Relaxed),
                }
            }),
            tcp_port: self.settings.session.tcp_mux.as_ref().map(|mux| {
                let c = mux.counters();
                crate::status::snapshot::TcpPortStatus {
                    port: mux.local_addr().port(),
                    accepted: c.accepted.load(Ordering::Relaxed),
                    routed: c.routed.load(Ordering::Relaxed),
                    refused: c.refused.load(Ordering::Relaxed),
                    frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
                }
            }),
        }
    }
}

/// Sends signaling messages in order from one task, so the orchestrator never waits on the
/// signaling task (which may itself be waiting to hand the orchestrator an event).
async fn send_outgoing(handle: SignalingHandle, mut rx: mpsc::Receiver<SignalOut>) {
    while let Some(msg) = rx.recv().await {
        let sent = match msg {
            SignalOut::Answer {
                peer,
                session,
                sdp,
                encrypt,
            } => handle.send_answer(peer, session, sdp, encrypt).await,
            SignalOut::Candidates {
                peer,
                session,
                candidates,
            } => handle.send_candidates(peer, session, candidates).await,
            SignalOut::StreamClosed(peer, recorded) => handle.stream_closed(peer, recorded).await,
        };
        if sent.is_err() {
            break;
        }
    }
    handle.join().await;
}

fn log_status(entries: &HashMap<PeerId, Entry>) {
    if entries.is_empty() {
        info!("waiting for publishers");
        return;
    }
    for e in entries.values() {
        let live = e.live.borrow();
        let c = &live.core;
        info!(
            stream = %e.stream_id,
            "{} {:.0} s, {} frames, {} audio packets, {:.1} MB{}",
            if live.connected { "recording" } else { "connecting" },
            c.duration_90k as f64 / 90_000.0,
            c.frames_written,
            c.audio_written,
            live.bytes as f64 / 1e6,
            if c.frames_dropped > 0 { format!(", {} frames dropped", c.frames_dropped) } else { String::new() },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder that runs for months keeps the newest summaries only, in order.
    #[test]
    fn only_the_newest_summaries_are_kept() {
        let summary = |k: usize| StreamSummary {
            stream_id: format!("s{k}"),
            path: None,
            bytes: 0,
            core: Default::default(),
            close_reason: None,
            media_dropped: 0,
            disk_error: None,
            files: 0,
            crashed: None,
        };
        let mut kept = VecDeque::new();
        for k in 0..KEPT_SUMMARIES + 5 {
            keep_summary(&mut kept, summary(k));
        }
        assert_eq!(kept.len(), KEPT_SUMMARIES);
        assert_eq!(kept.front().map(|s| s.stream_id.as_str()), Some("s5"));
        let newest = format!("s{}", KEPT_SUMMARIES + 4);
        assert_eq!(kept.back().map(|s| &s.stream_id), Some(&newest));
    }
}
