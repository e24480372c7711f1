//! The orchestrator: signaling events in, one recorder task per publisher out.
//!
//! It is the only place that knows about all recordings at once: it starts a
//! [`stream`](super::stream) task for each offer (within `--max-streams`), routes remote
//! candidates to it, stops it when the publisher leaves, relays its answers and candidates to
//! signaling, prints a status line now and then, and on shutdown stops every recording and
//! collects their summaries. It holds no media; the recorder tasks do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::stream::{
    self, LiveStats, RecorderSettings, SignalOut, StreamCommand, StreamIdentity, StreamReport,
    StreamSummary,
};
use crate::peer::{CipherError, PayloadCipher};
use crate::signaling::client::{SignalingEvent, SignalingHandle, SignalingStatus};
use crate::signaling::{self, Cipher, PeerId, SignalingConfig};

/// How long shutdown waits for recorders to say bye and finish their files.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the status of running recordings is logged.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

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
}

struct Entry {
    generation: u64,
    stream_id: String,
    session: Option<Value>,
    commands: mpsc::Sender<StreamCommand>,
    live: watch::Receiver<LiveStats>,
    stopping: bool,
}

/// Records until `shutdown` turns true (or the signaling task ends), then stops every
/// recording, flushes every file and returns one summary per recording, in the order they
/// finished.
pub async fn run(
    mut config: RunConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Vec<StreamSummary>, RunError> {
    std::fs::create_dir_all(&config.recorder.output_dir).map_err(|source| RunError::OutputDir {
        path: config.recorder.output_dir.display().to_string(),
        source,
    })?;
    let (sig_shutdown_tx, sig_shutdown_rx) = watch::channel(false);
    let (handle, mut sig_events) =
        signaling::client::spawn(config.signaling.clone(), sig_shutdown_rx)?;
    if let Some(cipher) = handle.cipher() {
        config.recorder.session.cipher = Some(Arc::new(cipher.clone()));
    }
    let settings = Arc::new(config.recorder);
    let (out_tx, out_rx) = mpsc::channel::<SignalOut>(1024);
    let sender = tokio::spawn(send_outgoing(handle, out_rx));
    let (report_tx, mut reports) = mpsc::channel::<StreamReport>(1024);

    let mut entries: HashMap<PeerId, Entry> = HashMap::new();
    let mut summaries = Vec::new();
    let mut generation = 0u64;
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    status.tick().await;
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
                        if let Some(e) = entries.get_mut(&peer) {
                            if e.session == session && !e.stopping {
                                debug!(%stream_id, "repeated offer for a running session ignored");
                                continue;
                            }
                            // The publisher restarted its connection: the old recording ends,
                            // the new one gets its own file.
                            info!(%stream_id, "publisher sent a new session; starting a new recording");
                            e.stopping = true;
                            let _ = e.commands.try_send(StreamCommand::Stop);
                            // Its summary still arrives as a report and is collected then.
                            entries.remove(&peer);
                        }
                        let active = entries.values().filter(|e| !e.stopping).count();
                        if active >= config.max_streams {
                            warn!(%stream_id, max = config.max_streams, "not recording: --max-streams reached");
                            let _ = out_tx.try_send(SignalOut::StreamClosed(peer));
                            continue;
                        }
                        generation += 1;
                        info!(%stream_id, "publisher offered its stream; recording");
                        let identity = StreamIdentity {
                            peer: peer.clone(),
                            stream_id: stream_id.clone(),
                            session: session.clone(),
                            encrypted,
                            generation,
                        };
                        let (commands, live) = stream::spawn(settings.clone(), identity, sdp, report_tx.clone());
                        entries.insert(peer, Entry { generation, stream_id, session, commands, live, stopping: false });
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
                            info!(%stream_id, "publisher left");
                            e.stopping = true;
                            let _ = e.commands.try_send(StreamCommand::Stop);
                        }
                    }
                    SignalingEvent::Status(s) => match s {
                        SignalingStatus::Connecting { attempt } if attempt > 1 => info!(attempt, "reconnecting to the handshake server"),
                        SignalingStatus::Connecting { .. } => debug!("connecting to the handshake server"),
                        SignalingStatus::Connected => info!("connected to the handshake server"),
                        SignalingStatus::Disconnected { reason, retry_in } => {
                            warn!("handshake server connection lost ({reason}); retrying in {:.1} s (recordings continue)", retry_in.as_secs_f64());
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
                        if entries.get(&peer).is_some_and(|e| e.generation == generation) {
                            entries.remove(&peer);
                            let _ = out_tx.try_send(SignalOut::StreamClosed(peer));
                        }
                        summaries.push(*summary);
                        if !signaling_open && entries.is_empty() {
                            break;
                        }
                    }
                }
            }
            _ = status.tick() => log_status(&entries),
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
                summaries.push(*summary);
            }
            Ok(Some(_)) => {}
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
    Ok(summaries)
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
            SignalOut::StreamClosed(peer) => handle.stream_closed(peer).await,
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
