//! The recorder task of one publisher: its peer session in, its file out.
//!
//! The task owns everything of one recording — the [`peer::session`](crate::peer::session)
//! handle, the pure [`StreamMuxer`] and the [`RecordingFile`] — so nothing is shared and a
//! failure (disk full, a bug, a hostile peer) ends this recording only. It talks to the
//! orchestrator over channels: commands in (remote candidates, stop), [`StreamReport`]s out
//! (answers and candidates for signaling, live counters, the final summary).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::file::{FileError, RecordingFile};
use crate::media::VideoCodec;
use crate::media::stream::{StreamConfig, StreamMuxer, StreamStats};
use crate::peer::IceCandidate;
use crate::peer::session::{self, CloseReason, MediaEvent, SessionConfig, SessionEvent};
use crate::signaling::PeerId;

/// Settings shared by every recording of a run.
#[derive(Debug, Clone)]
pub struct RecorderSettings {
    /// Folder for the files.
    pub output_dir: PathBuf,
    /// File name prefix (`--record` or the room name).
    pub prefix: String,
    /// What to record and the core's limits.
    pub stream: StreamConfig,
    /// Peer connection settings (ICE servers, timeouts, cipher for data-channel payloads).
    pub session: SessionConfig,
    /// Pending TS bytes are written at least this often, so a killed recorder loses at most
    /// this much.
    pub flush_interval: Duration,
    /// Pending TS bytes are written as soon as there are this many.
    pub flush_bytes: usize,
}

impl RecorderSettings {
    /// Defaults for recording into `output_dir` with file prefix `prefix`.
    pub fn new(output_dir: PathBuf, prefix: String) -> Self {
        Self {
            output_dir,
            prefix,
            stream: StreamConfig::default(),
            session: SessionConfig::default(),
            flush_interval: Duration::from_millis(100),
            flush_bytes: 256 * 1024,
        }
    }
}

/// What the orchestrator tells a recorder task.
#[derive(Debug)]
pub enum StreamCommand {
    /// Remote ICE candidates from signaling.
    RemoteCandidates(Vec<IceCandidate>),
    /// Stop: say bye, close the connection, finish the file.
    Stop,
}

/// Live counters of a recording, for the status line.
#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    /// Where the recording goes, once the file exists.
    pub path: Option<PathBuf>,
    /// Bytes written to the file.
    pub bytes: u64,
    /// The core's counters.
    pub core: StreamStats,
    /// The peer connection is up.
    pub connected: bool,
}

/// The end of one recording, printed at shutdown and returned to callers (tests, selftest).
#[derive(Debug, Clone)]
pub struct StreamSummary {
    /// Stream ID, desalted.
    pub stream_id: String,
    /// The file, if any byte was written.
    pub path: Option<PathBuf>,
    /// Bytes written.
    pub bytes: u64,
    /// The core's final counters.
    pub core: StreamStats,
    /// Why the peer connection ended.
    pub close_reason: Option<CloseReason>,
    /// Media events dropped because this recorder fell behind (slow disk).
    pub media_dropped: u64,
    /// A disk error that ended the recording early.
    pub disk_error: Option<String>,
}

impl std::fmt::Display for StreamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.core;
        let file = self
            .path
            .as_ref()
            .map_or_else(|| "(no file)".to_owned(), |p| p.display().to_string());
        write!(
            f,
            "{}: {file}, {:.1} s, {} frames ({} keyframes) of {} received, {} audio packets, {} frames dropped to loss, {} packets lost",
            self.stream_id,
            c.duration_90k as f64 / 90_000.0,
            c.frames_written,
            c.keyframes_written,
            c.frames_received,
            c.audio_written,
            c.frames_dropped,
            c.packets_lost,
        )?;
        if c.frames_before_keyframe > 0 {
            write!(
                f,
                ", {} frames before the first keyframe skipped",
                c.frames_before_keyframe
            )?;
        }
        if let Some(ms) = c.av_offset_ms {
            write!(f, ", A/V correction from Sender Reports {ms:+.0} ms")?;
        }
        if self.media_dropped > 0 {
            write!(
                f,
                ", {} packets dropped (recorder behind)",
                self.media_dropped
            )?;
        }
        if let Some(e) = &self.disk_error {
            write!(f, ", DISK ERROR: {e}")?;
        }
        Ok(())
    }
}

/// A message for a publisher over signaling. Recorder tasks produce answers and candidates; the
/// orchestrator adds `StreamClosed`; one task sends them all, in order.
#[derive(Debug)]
pub enum SignalOut {
    /// Our SDP answer.
    Answer {
        /// The publisher.
        peer: PeerId,
        /// Its session value, echoed.
        session: Option<Value>,
        /// Answer SDP.
        sdp: String,
        /// Encrypt (mirrors the offer).
        encrypt: bool,
    },
    /// Our local ICE candidates.
    Candidates {
        /// The publisher.
        peer: PeerId,
        /// Its session value, echoed.
        session: Option<Value>,
        /// Candidates.
        candidates: Vec<IceCandidate>,
    },
    /// The recording of this publisher ended, so the room may ask for its stream again.
    StreamClosed(PeerId),
}

/// What a recorder task tells the orchestrator.
#[derive(Debug)]
pub enum StreamReport {
    /// A message for the publisher, to go out over signaling.
    Signal(SignalOut),
    /// The recording is over.
    Finished {
        /// The publisher.
        peer: PeerId,
        /// Which task of that publisher (a publisher that comes back gets a new one).
        generation: u64,
        /// Final counters (boxed: far larger than the frequent `Signal` reports).
        summary: Box<StreamSummary>,
    },
}

/// Identity of one recording, as signaling named it.
#[derive(Debug, Clone)]
pub struct StreamIdentity {
    /// The publisher's signaling id.
    pub peer: PeerId,
    /// Stream ID, desalted.
    pub stream_id: String,
    /// The `session` value to echo.
    pub session: Option<Value>,
    /// Whether the offer was encrypted (the answer then is too).
    pub encrypted: bool,
    /// Distinguishes tasks of the same publisher.
    pub generation: u64,
}

/// Starts the recorder task for one publisher's offer. Returns the command sender and a
/// watch of its live counters.
pub fn spawn(
    settings: Arc<RecorderSettings>,
    identity: StreamIdentity,
    offer_sdp: String,
    reports: mpsc::Sender<StreamReport>,
) -> (mpsc::Sender<StreamCommand>, watch::Receiver<LiveStats>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (live_tx, live_rx) = watch::channel(LiveStats::default());
    tokio::spawn(run(settings, identity, offer_sdp, cmd_rx, reports, live_tx));
    (cmd_tx, live_rx)
}

struct Recorder {
    settings: Arc<RecorderSettings>,
    id: StreamIdentity,
    muxer: Option<StreamMuxer>,
    file: RecordingFile,
    disk_error: Option<String>,
    live: watch::Sender<LiveStats>,
    connected: bool,
    /// When the file's tracks were fixed, and whether a silent track was reported (once).
    tracks_since: Option<Instant>,
    silence_reported: bool,
}

/// A track of the file that has delivered nothing for this long is reported (once): a muted
/// or blocked track would otherwise just be missing from the file without a word.
const SILENT_TRACK_AFTER: Duration = Duration::from_secs(10);

async fn run(
    settings: Arc<RecorderSettings>,
    id: StreamIdentity,
    offer_sdp: String,
    mut commands: mpsc::Receiver<StreamCommand>,
    reports: mpsc::Sender<StreamReport>,
    live: watch::Sender<LiveStats>,
) {
    let mut session_cfg = settings.session.clone();
    session_cfg.label = id.stream_id.clone();
    session_cfg.dtls_server = offers_media(&offer_sdp);
    let (session, mut events) = session::spawn(session_cfg);
    let mut rec = Recorder {
        file: RecordingFile::new(&settings.output_dir, &settings.prefix, &id.stream_id),
        settings,
        id,
        muxer: None,
        disk_error: None,
        live,
        connected: false,
        tracks_since: None,
        silence_reported: false,
    };
    if session.remote_offer(offer_sdp).await.is_err() {
        warn!(stream = %rec.id.stream_id, "peer session ended before the offer was applied");
    }
    let mut tick = tokio::time::interval(rec.settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut close_reason = None;
    let mut media_dropped = 0;
    loop {
        tokio::select! {
            cmd = commands.recv(), if !stopping => match cmd {
                Some(StreamCommand::RemoteCandidates(cands)) => {
                    for c in cands {
                        let _ = session.remote_candidate(c).await;
                    }
                }
                Some(StreamCommand::Stop) | None => {
                    stopping = true;
                    let _ = session.close().await;
                }
            },
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    SessionEvent::Media(m) => {
                        if rec.media(m) {
                            let _ = session.request_keyframe();
                        }
                        if rec.pending() >= rec.settings.flush_bytes {
                            rec.flush();
                        }
                    }
                    SessionEvent::LocalAnswer { sdp } => {
                        let _ = reports.send(StreamReport::Signal(SignalOut::Answer {
                            peer: rec.id.peer.clone(),
                            session: rec.id.session.clone(),
                            sdp,
                            encrypt: rec.id.encrypted,
                        })).await;
                    }
                    SessionEvent::LocalCandidate(c) => {
                        let _ = reports.send(StreamReport::Signal(SignalOut::Candidates {
                            peer: rec.id.peer.clone(),
                            session: rec.id.session.clone(),
                            candidates: vec![c],
                        })).await;
                    }
                    SessionEvent::MediaOffered { video, audio } => rec.media_offered(video, audio),
                    SessionEvent::TrackStarted { codec: Some(codec), .. } => rec.video_codec(codec),
                    SessionEvent::State(state) => {
                        debug!(stream = %rec.id.stream_id, ?state, "connection state");
                        rec.connected = matches!(state, crate::peer::ConnectionState::Connected);
                    }
                    SessionEvent::Closed { reason, stats } => {
                        explain_close(&rec.id.stream_id, &reason);
                        close_reason = Some(reason);
                        media_dropped = stats.media_dropped;
                        break;
                    }
                    SessionEvent::TrackStarted { codec: None, .. }
                    | SessionEvent::DataChannelOpen { .. }
                    | SessionEvent::Renegotiated => {}
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(m) = rec.muxer.as_mut() {
                    m.poll(now);
                    if m.take_keyframe_request(now) {
                        let _ = session.request_keyframe();
                    }
                }
                rec.flush();
                rec.publish_live();
                rec.report_silent_tracks(now);
            }
        }
        if rec.disk_error.is_some() && !stopping {
            stopping = true;
            let _ = session.close().await;
        }
    }
    rec.finish_file();
    rec.publish_live();
    let summary = rec.summary(close_reason, media_dropped);
    info!(stream = %summary.stream_id, "recording finished: {summary}");
    let _ = reports
        .send(StreamReport::Finished {
            peer: rec.id.peer.clone(),
            generation: rec.id.generation,
            summary: Box::new(summary),
        })
        .await;
}

impl Recorder {
    /// A (re)negotiation said which media the publisher sends. The file's tracks are fixed by
    /// the first offer that carries media; later offers (renegotiations) keep them.
    fn media_offered(&mut self, video: Option<VideoCodec>, audio: bool) {
        if self.muxer.is_some() {
            return;
        }
        self.muxer = StreamMuxer::new(self.settings.stream.clone(), video, audio);
        self.tracks_since = Some(Instant::now());
        if let Some(m) = &self.muxer {
            let t = m.tracks();
            let video = t.video.map_or_else(|| "none".to_owned(), |c| c.to_string());
            info!(stream = %self.id.stream_id, %video, audio = t.audio, "recording tracks");
        } else if video.is_some() || audio {
            warn!(stream = %self.id.stream_id, "nothing to record: the publisher's media are all turned off by --noaudio/--novideo");
        }
    }

    /// The summary of the current file.
    fn summary(&self, close_reason: Option<CloseReason>, media_dropped: u64) -> StreamSummary {
        StreamSummary {
            stream_id: self.id.stream_id.clone(),
            path: self.file.path().map(|p| p.to_path_buf()),
            bytes: self.file.bytes_written(),
            core: self.muxer.as_ref().map(|m| m.stats()).unwrap_or_default(),
            close_reason,
            media_dropped,
            disk_error: self.disk_error.clone(),
        }
    }

    /// A video track started and says which codec the publisher really sends. If the file has
    /// started in another codec (or without video), it is finished and a new one begins: a
    /// codec cannot change inside a file.
    fn video_codec(&mut self, codec: VideoCodec) {
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        if m.set_video_codec(codec) {
            return;
        }
        let before = m.tracks().video;
        let audio = m.tracks().audio;
        info!(
            stream = %self.id.stream_id,
            "the publisher now sends {codec} video (was {}): starting a new file",
            before.map_or_else(|| "no".to_owned(), |c| c.to_string())
        );
        self.finish_file();
        let done = self.summary(None, 0);
        info!(stream = %done.stream_id, "file finished: {done}");
        self.file = RecordingFile::new(
            &self.settings.output_dir,
            &self.settings.prefix,
            &self.id.stream_id,
        );
        self.muxer = StreamMuxer::new(self.settings.stream.clone(), Some(codec), audio);
    }

    /// Ends the current file: the core hands on what it holds, the rest is written, the
    /// container's end patches are applied, and the file is synced.
    fn finish_file(&mut self) {
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        m.finish(Instant::now());
        self.flush();
        let patches = self
            .muxer
            .as_mut()
            .map(|m| m.take_patches())
            .unwrap_or_default();
        if self.disk_error.is_none()
            && let Err(e) = self.file.patch(&patches)
        {
            self.disk_failed(e);
        }
        if let Err(e) = self.file.sync() {
            self.disk_failed(e);
        }
    }

    /// Feeds one media event; returns true when a keyframe should be requested now.
    fn media(&mut self, m: MediaEvent) -> bool {
        let Some(muxer) = self.muxer.as_mut() else {
            return false;
        };
        match m {
            MediaEvent::Rtp {
                kind,
                packet,
                arrival,
            } => {
                muxer.push_rtp(kind, packet, arrival);
                muxer.take_keyframe_request(arrival)
            }
            MediaEvent::SenderReport {
                ssrc,
                ntp,
                rtp_timestamp,
                ..
            } => {
                muxer.sender_report(ssrc, ntp, rtp_timestamp);
                false
            }
        }
    }

    fn pending(&mut self) -> usize {
        self.muxer.as_mut().map_or(0, |m| m.output().len())
    }

    /// Writes what the core produced. After a disk error the bytes are dropped: the recording
    /// is ending, and memory must not grow.
    fn flush(&mut self) {
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        self.file.set_extension(m.container().extension());
        let out = m.output();
        if out.is_empty() {
            return;
        }
        if self.disk_error.is_none()
            && let Err(e) = self.file.append(out)
        {
            out.clear();
            self.disk_failed(e);
            return;
        }
        out.clear();
    }

    fn disk_failed(&mut self, e: FileError) {
        error!(stream = %self.id.stream_id, "recording stopped: {e}");
        self.disk_error.get_or_insert_with(|| e.to_string());
    }

    /// Says once if a track of the file has delivered nothing for [`SILENT_TRACK_AFTER`].
    fn report_silent_tracks(&mut self, now: Instant) {
        let (Some(m), Some(since)) = (self.muxer.as_ref(), self.tracks_since) else {
            return;
        };
        if self.silence_reported || now.saturating_duration_since(since) < SILENT_TRACK_AFTER {
            return;
        }
        let (tracks, s) = (m.tracks(), m.stats());
        let silent: Vec<&str> = [
            (tracks.video.is_some() && s.frames_received == 0, "video"),
            (tracks.audio && s.audio_received == 0, "audio"),
        ]
        .into_iter()
        .filter_map(|(silent, name)| silent.then_some(name))
        .collect();
        if !silent.is_empty() {
            self.silence_reported = true;
            warn!(
                stream = %self.id.stream_id,
                "the publisher's {} track has sent nothing for {} s (muted, or blocked on the way?)",
                silent.join(" and "),
                SILENT_TRACK_AFTER.as_secs()
            );
        }
    }

    fn publish_live(&self) {
        let core = self.muxer.as_ref().map(|m| m.stats()).unwrap_or_default();
        self.live.send_replace(LiveStats {
            path: self.file.path().map(|p| p.to_path_buf()),
            bytes: self.file.bytes_written(),
            core,
            connected: self.connected,
        });
    }
}

/// One line a user can act on when a connection ends badly; normal ends stay at info level.
fn explain_close(stream_id: &str, reason: &CloseReason) {
    match reason {
        CloseReason::IceTimeout => error!(
            stream = %stream_id,
            "could not connect to the publisher: ICE did not connect in time \
             (check that UDP can flow between you; behind strict NAT use --turn; see --ice-timeout)"
        ),
        CloseReason::IceFailed => error!(
            stream = %stream_id,
            "connection to the publisher failed (ICE): check UDP reachability, --stun, --turn"
        ),
        CloseReason::Negotiation(e) => error!(
            stream = %stream_id,
            "the publisher's offer could not be answered: {e}"
        ),
        CloseReason::Setup(e) => error!(
            stream = %stream_id,
            "could not create a WebRTC connection: {e}"
        ),
        CloseReason::PublisherVanished => warn!(
            stream = %stream_id,
            "the publisher stopped responding (gone without saying bye); file closed"
        ),
        CloseReason::Bye | CloseReason::DataChannelClosed | CloseReason::LocalClose => {
            info!(stream = %stream_id, ?reason, "connection closed")
        }
    }
}

/// True when an offer carries audio or video (Raspberry Ninja, GStreamer), not only a data
/// channel (the web app, which adds media by renegotiation).
fn offers_media(sdp: &str) -> bool {
    sdp.lines()
        .any(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
}
