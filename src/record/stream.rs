//! The recorder task of one publisher: its peer session in, its file out.
//!
//! The task owns everything of one recording — the [`peer::session`](crate::peer::session)
//! handle, the pure [`StreamMuxer`] and the [`RecordingFile`] — so nothing is shared and a
//! failure (disk full, a bug, a hostile peer) ends this recording only. It talks to the
//! orchestrator over channels: commands in (remote candidates, stop), [`StreamReport`]s out
//! (answers and candidates for signaling, live counters, the final summary).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, warn};

use super::closed::{CloseCause, ClosedFile};
use super::disk::{self, Backoff};
use super::file::{FileError, RecordingFile};
use super::manifest::ManifestEvent;
use crate::media::segment::{FileEnd, FileSpan};
use crate::media::stream::{StreamConfig, StreamMuxer, StreamStats};
use crate::media::{TrackKind, VideoCodec};
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
    /// Pending file bytes are written at the first recorder tick ([`TICK`], 100 ms) of each
    /// period this long on the process's grid (every recording in the same tick), so a killed
    /// recorder loses at most about this much of what it had made ready. Writes are batched
    /// because each costs a hop to the writer thread and the kernel's per-call work: 100 ms
    /// batches (~25 KiB of a 2 Mb/s stream) made file writes ~7 % of the recorder's CPU
    /// (issue 11, `docs/loadbench.md`).
    pub flush_interval: Duration,
    /// Pending file bytes are written as soon as there are this many: for a high-bitrate
    /// stream, writes of this size instead of every tick's worth (a write of 64 KiB or more
    /// costs the kernel about half as much per byte as a 25 KiB one, measured).
    pub flush_bytes: usize,
    /// After a write error, recording resumes (in a new file) once this many bytes are free
    /// on the output folder's file system (`--min-free-mb`; at least 1 MiB).
    pub min_free_bytes: u64,
}

impl RecorderSettings {
    /// Defaults for recording into `output_dir` with file prefix `prefix`.
    pub fn new(output_dir: PathBuf, prefix: String) -> Self {
        Self {
            output_dir,
            prefix,
            stream: StreamConfig::default(),
            session: SessionConfig::default(),
            flush_interval: Duration::from_millis(300),
            flush_bytes: 128 * 1024,
            min_free_bytes: 0,
        }
    }
}

/// Empties the file buffer after a write for the next one. Its capacity is the most ever
/// pending at once: at 2 Mb/s a write's worth and one large keyframe grow it to 4 x
/// `flush_bytes` every few seconds, which is kept so steady recording does not reallocate it;
/// a larger burst (the sync hold releasing the start's seconds at once: up to 2 MiB per stream
/// at N = 32, issue 11) would otherwise stay allocated for the whole recording, so it is cut
/// back to 2 x. (`flush_bytes` counts as at least 32 KiB, so a tiny setting cannot make every
/// write reallocate.)
fn recycle_buffer(bytes: &mut Vec<u8>, flush_bytes: usize) {
    bytes.clear();
    let flush = flush_bytes.max(32 * 1024);
    if bytes.capacity() > flush.saturating_mul(4) {
        bytes.shrink_to(flush.saturating_mul(2));
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

/// Live counters of a recording, for the status line, the status page and metrics.
#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    /// The file being written, once it exists.
    pub path: Option<PathBuf>,
    /// Bytes written to it.
    pub file_bytes: u64,
    /// Bytes written by this recording, all its files.
    pub bytes: u64,
    /// Its segment number (0 first).
    pub segment: u64,
    /// Media seconds in the current file.
    pub file_duration_90k: u64,
    /// The video codec recorded.
    pub codec: Option<VideoCodec>,
    /// The core's counters.
    pub core: StreamStats,
    /// The peer connection is up.
    pub connected: bool,
    /// A write failed and the recording waits for disk space.
    pub waiting_for_disk: bool,
    /// The last disk error.
    pub disk_error: Option<String>,
    /// Media events dropped because this recorder fell behind.
    pub media_dropped: u64,
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
    /// The last disk error (the recording went on in a new file when space returned).
    pub disk_error: Option<String>,
    /// Files written (more than one with segments, codec changes or disk errors).
    pub files: u64,
    /// Set when the recorder task panicked: what it said. The file stays playable up to its
    /// last write; the counters are the last ones published.
    pub crashed: Option<String>,
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
        if c.audio_dropped > 0 {
            write!(
                f,
                ", {} of {} audio packets dropped",
                c.audio_dropped, c.audio_received
            )?;
        }
        if c.audio_advanced_ms > 0 {
            write!(
                f,
                ", audio moved {} ms later (it had fallen behind the file)",
                c.audio_advanced_ms
            )?;
        }
        if c.audio_settled_ms > 0 {
            write!(
                f,
                ", audio set {} ms later once the Sender Reports agreed",
                c.audio_settled_ms
            )?;
        }
        if c.units_refused > 0 {
            write!(f, ", {} units refused by the writer", c.units_refused)?;
        }
        if let Some(ms) = c.av_offset_ms {
            write!(f, ", A/V correction from Sender Reports {ms:+.0} ms")?;
        }
        if c.implausible_reports > 0 {
            write!(
                f,
                ", {} implausible Sender Reports ignored",
                c.implausible_reports
            )?;
        }
        if self.media_dropped > 0 {
            write!(
                f,
                ", {} packets dropped (recorder behind)",
                self.media_dropped
            )?;
        }
        if self.files > 1 {
            write!(f, ", {} files", self.files)?;
        }
        if let Some(e) = &self.disk_error {
            write!(f, ", DISK ERROR: {e}")?;
        }
        if let Some(e) = &self.crashed {
            write!(f, ", RECORDER CRASHED: {e}")?;
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
    /// The publisher's recording ended; `true` when it recorded media (then its end is
    /// the publisher leaving, not a failure to back off from).
    StreamClosed(PeerId, bool),
}

/// What a recorder task tells the orchestrator.
#[derive(Debug)]
pub enum StreamReport {
    /// A message for the publisher, to go out over signaling.
    Signal(SignalOut),
    /// Something for the room timeline.
    Timeline(ManifestEvent),
    /// A file (or segment) was closed and synced: for the timeline and `--on-file-done`.
    FileClosed(Box<ClosedFile>),
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
/// watch of its live counters. With `wait_for_disk` (the disk is below `--min-free-mb`) the
/// publisher is connected but nothing is written until space is freed: then the recording
/// starts at the next keyframe, without asking the publisher again.
pub fn spawn(
    settings: Arc<RecorderSettings>,
    identity: StreamIdentity,
    offer_sdp: String,
    reports: mpsc::Sender<StreamReport>,
    wait_for_disk: bool,
) -> (mpsc::Sender<StreamCommand>, watch::Receiver<LiveStats>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (live_tx, live_rx) = watch::channel(LiveStats::default());
    let watched = Watched {
        peer: identity.peer.clone(),
        generation: identity.generation,
        stream_id: identity.stream_id.clone(),
        live: live_rx.clone(),
        reports: reports.clone(),
    };
    // Every line the recording logs (the timeline's, the writer's) names its stream.
    let span = tracing::info_span!("recording", stream = %identity.stream_id);
    let task = tokio::spawn(
        run(
            settings,
            identity,
            offer_sdp,
            cmd_rx,
            reports,
            live_tx,
            wait_for_disk,
        )
        .instrument(span),
    );
    tokio::spawn(supervise(task, watched));
    (cmd_tx, live_rx)
}

/// What the supervisor of a recorder task needs to report its end if the task cannot.
struct Watched {
    peer: PeerId,
    generation: u64,
    stream_id: String,
    live: watch::Receiver<LiveStats>,
    reports: mpsc::Sender<StreamReport>,
}

/// Waits for a recorder task; if it panicked, reports its end in its place (the mini-redis
/// way: the end of a task is always noticed), so the orchestrator removes its entry and asks
/// the publisher again, and the other recordings never notice.
async fn supervise(task: tokio::task::JoinHandle<()>, w: Watched) {
    let Err(e) = task.await else { return };
    let why = if e.is_panic() {
        let payload = e.into_panic();
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned())
    } else {
        "cancelled".to_owned()
    };
    let live = w.live.borrow().clone();
    error!(
        stream = %w.stream_id,
        "recorder crashed ({why}); its file stays playable up to its last write, and the publisher is asked again"
    );
    let summary = StreamSummary {
        stream_id: w.stream_id,
        files: live.segment + u64::from(live.path.is_some()),
        path: live.path,
        bytes: live.bytes,
        core: live.core,
        close_reason: None,
        media_dropped: live.media_dropped,
        disk_error: live.disk_error,
        crashed: Some(why),
    };
    let _ = w
        .reports
        .send(StreamReport::Finished {
            peer: w.peer,
            generation: w.generation,
            summary: Box::new(summary),
        })
        .await;
}

struct Recorder {
    settings: Arc<RecorderSettings>,
    id: StreamIdentity,
    muxer: Option<StreamMuxer>,
    file: RecordingFile,
    /// Segment number of `file`.
    segment: u64,
    /// Files closed so far.
    files_closed: u64,
    /// Bytes of the files closed so far.
    bytes_closed: u64,
    /// Whether the current file's publisher wall clock was put in the timeline.
    clock_reported: bool,
    /// The path of the file closed last (gaps found late may belong to it).
    previous_path: Option<PathBuf>,
    disk: DiskState,
    /// The last disk error, for the summary.
    disk_error: Option<String>,
    /// Bytes the core produced while no file could be written.
    bytes_discarded: u64,
    live: watch::Sender<LiveStats>,
    connected: bool,
    /// When the file's tracks were fixed, and whether a silent track was reported (once).
    tracks_since: Option<Instant>,
    silence_reported: bool,
    /// The publisher's label, once it said one.
    label: Option<String>,
    /// The session's count of media events dropped (recorder behind), as last read.
    media_dropped: u64,
    /// Reports for the orchestrator, sent from the task's loop (never lost, never awaited
    /// inside the core's calls).
    outbox: Vec<StreamReport>,
    /// The grid period ([`RecorderSettings::flush_interval`] long) of the last write (or of
    /// the recorder's start).
    flushed_period: u64,
}

/// Whether the recording can write.
#[derive(Debug)]
enum DiskState {
    /// Writing.
    Ok,
    /// A write failed: output is discarded; free space is checked at `next_check`.
    Failed {
        next_check: Instant,
        backoff: Backoff,
    },
    /// Space is back: output is discarded until the core ends its current file at a
    /// keyframe; the next file starts there.
    Resuming,
}

impl DiskState {
    /// Waiting for space, first check soon (checks back off to every 30 s).
    fn failed() -> DiskState {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        DiskState::Failed {
            next_check: Instant::now() + backoff.next_delay(),
            backoff,
        }
    }
}

/// How often the recorder polls its core (reorder deadlines, the interleaver, keyframe
/// requests), checks the disk and publishes its live counters. Every recorder ticks at the
/// same instants (multiples of this on the process's grid), and files are written on the
/// first tick of each [`RecorderSettings::flush_interval`] of the grid: all recordings' writes
/// of a period go to the writer thread together, one wake for them all.
const TICK: Duration = Duration::from_millis(100);

/// The grid period of length [`RecorderSettings::flush_interval`] that `at` is in.
fn flush_period(settings: &RecorderSettings, at: Instant) -> u64 {
    let at = tokio::time::Instant::from_std(at);
    crate::peer::grid::period_of(at, settings.flush_interval)
}

/// Most session events taken from the queue in one turn of the recorder's loop.
const EVENT_BATCH: usize = 64;

/// A track of the file that has delivered nothing for this long is reported (once): a muted
/// or blocked track would otherwise just be missing from the file without a word.
const SILENT_TRACK_AFTER: Duration = Duration::from_secs(10);

/// Least free space to resume after a write error, whatever `--min-free-mb` says.
const MIN_RESUME_BYTES: u64 = 1 << 20;

async fn run(
    settings: Arc<RecorderSettings>,
    id: StreamIdentity,
    offer_sdp: String,
    mut commands: mpsc::Receiver<StreamCommand>,
    reports: mpsc::Sender<StreamReport>,
    live: watch::Sender<LiveStats>,
    wait_for_disk: bool,
) {
    let mut session_cfg = settings.session.clone();
    session_cfg.label = id.stream_id.clone();
    session_cfg.dtls_server = offers_media(&offer_sdp);
    let (session, mut events) = session::spawn(session_cfg);
    let flushed_period = flush_period(&settings, Instant::now());
    let mut rec = Recorder {
        file: new_file(&settings, &id.stream_id, 0),
        settings,
        id,
        muxer: None,
        segment: 0,
        files_closed: 0,
        bytes_closed: 0,
        clock_reported: false,
        previous_path: None,
        disk: if wait_for_disk {
            DiskState::failed()
        } else {
            DiskState::Ok
        },
        disk_error: None,
        bytes_discarded: 0,
        live,
        connected: false,
        tracks_since: None,
        silence_reported: false,
        label: None,
        media_dropped: 0,
        outbox: Vec::new(),
        flushed_period,
    };
    if session.remote_offer(offer_sdp).await.is_err() {
        warn!(stream = %rec.id.stream_id, "peer session ended before the offer was applied");
    }
    // On the connections' grid: the runtime wakes once for this tick, every other
    // recorder's and the connections' timers.
    let first = crate::peer::grid::on_grid_every(tokio::time::Instant::now(), TICK);
    let mut tick = tokio::time::interval_at(first, TICK);
    // A late tick is not made up for, and the next one stays on the shared grid (`Delay`
    // would shift every later tick off it, and this recorder's writes out of the others').
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    // Media comes in bursts (the shared port hands over a grid step's packets at once): a
    // burst is taken in one go, one turn of this loop, not one per packet.
    let mut batch = Vec::with_capacity(EVENT_BATCH);
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
            n = events.recv_many(&mut batch, EVENT_BATCH) => {
                if n == 0 {
                    break;
                }
                let mut end = None;
                for ev in batch.drain(..) {
                    if let Some(closed) = rec.event(ev, &session).await {
                        // `Closed` is the session's last event.
                        end = Some(closed);
                        break;
                    }
                }
                if let Some((reason, dropped)) = end {
                    close_reason = Some(reason);
                    media_dropped = dropped;
                    break;
                }
            }
            at = tick.tick() => {
                let now = Instant::now();
                if let Some(m) = rec.muxer.as_mut() {
                    m.poll(now);
                    if m.take_keyframe_request(now) {
                        let _ = session.request_keyframe();
                    }
                }
                rec.check_disk(now);
                if rec.flush_due(at.into_std()) {
                    rec.flush().await;
                }
                rec.report_timeline();
                rec.media_dropped = session.media_dropped();
                rec.publish_live();
                rec.report_silent_tracks(now);
                #[cfg(debug_assertions)]
                test_panic(&rec);
            }
        }
        for report in rec.outbox.drain(..) {
            let _ = reports.send(report).await;
        }
    }
    rec.finish_file(CloseCause::End).await;
    rec.publish_live();
    // Its end is said by the orchestrator (see `explain_end`), within a per-publisher log
    // budget.
    let summary = rec.summary(close_reason, media_dropped);
    rec.outbox.push(StreamReport::Finished {
        peer: rec.id.peer.clone(),
        generation: rec.id.generation,
        summary: Box::new(summary),
    });
    for report in rec.outbox.drain(..) {
        let _ = reports.send(report).await;
    }
}

/// A test-only trigger (debug builds): the recorder of the stream named by
/// `NINJAREC_TEST_PANIC_STREAM` panics once per process, after ~150 kB are written, so tests
/// can check that a crashed recorder is noticed, cleaned up and replaced.
#[cfg(debug_assertions)]
fn test_panic(rec: &Recorder) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if rec.bytes_closed + rec.file.bytes_written() < 150_000 || DONE.load(Ordering::Relaxed) {
        return;
    }
    if std::env::var("NINJAREC_TEST_PANIC_STREAM").is_ok_and(|s| s == rec.id.stream_id)
        && !DONE.swap(true, Ordering::Relaxed)
    {
        panic!("test panic (NINJAREC_TEST_PANIC_STREAM)");
    }
}

/// Runs `f` on the recording's file on tokio's blocking pool and waits for it: a slow or
/// stalled disk (a full SD card, a hung network mount) then holds up this recording only,
/// never a runtime thread that the other recordings and the peer connections run on. The
/// recorder waits meanwhile, so what it writes stays in order and its errors stay its own;
/// its session's media queue (bounded) absorbs the wait. A panic inside is this recorder's
/// panic (its supervisor sees it). For the slow calls (a file's end and sync); appends go to
/// [`on_writer`].
async fn on_disk<R: Send + 'static>(
    file: &mut RecordingFile,
    f: impl FnOnce(&mut RecordingFile) -> R + Send + 'static,
) -> R {
    with_file(file, f, false).await
}

/// [`on_disk`] on the writer thread, in turn with the other recordings' appends
/// ([`super::writer`]): one thread wake per grid tick's writes, not two per write.
async fn on_writer<R: Send + 'static>(
    file: &mut RecordingFile,
    f: impl FnOnce(&mut RecordingFile) -> R + Send + 'static,
) -> R {
    with_file(file, f, true).await
}

/// `f` on the file, moved to the writer thread (`on_writer`) or the blocking pool and back.
async fn with_file<R: Send + 'static>(
    file: &mut RecordingFile,
    f: impl FnOnce(&mut RecordingFile) -> R + Send + 'static,
    on_writer: bool,
) -> R {
    let mut taken = std::mem::replace(file, RecordingFile::new(Path::new(""), "", ""));
    let job = move || {
        let r = f(&mut taken);
        (taken, r)
    };
    let (back, r) = if on_writer {
        super::writer::run(job).await
    } else {
        super::writer::blocking(job).await
    };
    *file = back;
    r
}

/// The file for segment `segment` of a recording (named with its number when segments are on).
fn new_file(settings: &RecorderSettings, stream_id: &str, segment: u64) -> RecordingFile {
    let file = RecordingFile::new(&settings.output_dir, &settings.prefix, stream_id);
    let segmented = settings.stream.segment.max_duration_90k.is_some()
        || settings.stream.segment.max_bytes.is_some();
    if segmented {
        file.with_segment(segment)
    } else {
        file
    }
}

/// Our wall clock (Unix ms) at `at`.
fn unix_ms_at(at: Instant) -> f64 {
    let now_ms = super::manifest::unix_ms() as f64;
    let now = Instant::now();
    if at <= now {
        now_ms - now.duration_since(at).as_secs_f64() * 1000.0
    } else {
        now_ms + at.duration_since(now).as_secs_f64() * 1000.0
    }
}

impl Recorder {
    /// Handles one event of the session; at its end (`Closed`), why and how many media
    /// events it dropped.
    async fn event(
        &mut self,
        ev: SessionEvent,
        session: &session::SessionHandle,
    ) -> Option<(CloseReason, u64)> {
        match ev {
            SessionEvent::Media(m) => self.media_in([m], session).await,
            SessionEvent::MediaBatch(mut batch) => self.media_in(batch.take(), session).await,
            SessionEvent::LocalAnswer { sdp } => {
                self.outbox.push(StreamReport::Signal(SignalOut::Answer {
                    peer: self.id.peer.clone(),
                    session: self.id.session.clone(),
                    sdp,
                    encrypt: self.id.encrypted,
                }));
            }
            SessionEvent::LocalCandidate(c) => {
                self.outbox
                    .push(StreamReport::Signal(SignalOut::Candidates {
                        peer: self.id.peer.clone(),
                        session: self.id.session.clone(),
                        candidates: vec![c],
                    }));
            }
            SessionEvent::MediaOffered { video, audio } => self.media_offered(video, audio),
            SessionEvent::TrackStarted {
                codec: Some(codec), ..
            } => {
                self.video_codec(codec).await;
            }
            SessionEvent::State(state) => {
                debug!(stream = %self.id.stream_id, ?state, "connection state");
                self.connected = matches!(state, crate::peer::ConnectionState::Connected);
            }
            SessionEvent::Closed { reason, stats } => {
                return Some((reason, stats.media_dropped));
            }
            SessionEvent::PublisherLabel(label) => self.label(label),
            SessionEvent::TrackStarted { codec: None, .. }
            | SessionEvent::DataChannelOpen { .. }
            | SessionEvent::Renegotiated => {}
        }
        None
    }

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

    /// The publisher said its label: into the timeline (once per label; publishers repeat
    /// their `info`).
    fn label(&mut self, label: String) {
        if self.label.as_ref() == Some(&label) {
            return;
        }
        info!(stream = %self.id.stream_id, %label, "publisher label");
        self.outbox
            .push(StreamReport::Timeline(ManifestEvent::PublisherLabel {
                stream_id: self.id.stream_id.clone(),
                label: label.clone(),
            }));
        self.label = Some(label);
    }

    /// The summary of the recording so far.
    fn summary(&self, close_reason: Option<CloseReason>, media_dropped: u64) -> StreamSummary {
        StreamSummary {
            stream_id: self.id.stream_id.clone(),
            path: self
                .file
                .path()
                .or(self.previous_path.as_deref())
                .map(|p| p.to_path_buf()),
            bytes: self.bytes_closed + self.file.bytes_written(),
            core: self.muxer.as_ref().map(|m| m.stats()).unwrap_or_default(),
            close_reason,
            media_dropped,
            disk_error: self.disk_error.clone(),
            files: self.files_closed + u64::from(self.file.path().is_some()),
            crashed: None,
        }
    }

    /// A video track started and says which codec the publisher really sends. If the file has
    /// started in another codec (or without video), it is finished and a new one begins: a
    /// codec cannot change inside a file.
    async fn video_codec(&mut self, codec: VideoCodec) {
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
        self.finish_file(CloseCause::CodecChange).await;
        self.muxer = StreamMuxer::new(self.settings.stream.clone(), Some(codec), audio);
    }

    /// Ends the recording's current file: the core hands on what it holds, the rest is
    /// written, the container's end patches are applied, the file is synced and reported,
    /// and the next file (if any comes) gets the next segment number.
    async fn finish_file(&mut self, cause: CloseCause) {
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        m.finish(Instant::now());
        self.flush().await;
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        let end = FileEnd {
            tail: Vec::new(),
            patches: m.take_patches(),
            span: m.span(),
        };
        if matches!(self.disk, DiskState::Ok) {
            self.close_file(end, cause).await;
        }
    }

    /// Completes a file the core finished (its tail and patches), syncs it, reports it and
    /// makes the next one.
    async fn close_file(&mut self, end: FileEnd, cause: CloseCause) {
        let mut cause = cause;
        let (tail, patches, span) = (end.tail, end.patches, end.span);
        let written = on_disk(&mut self.file, move |file| {
            file.append(&tail)
                .and_then(|()| file.patch(&patches))
                .and_then(|()| file.sync())
        })
        .await;
        if let Err(e) = written {
            self.disk_failed(e, Some(span)).await;
            cause = CloseCause::DiskError;
        }
        if cause != CloseCause::DiskError {
            self.report_closed(span, cause);
        }
    }

    /// Reports the current file as closed (if it exists) and starts the next segment's.
    fn report_closed(&mut self, span: FileSpan, cause: CloseCause) {
        let Some(path) = self.file.path().map(|p| p.to_path_buf()) else {
            return;
        };
        let first = span.first_pts.unwrap_or(span.last_pts);
        let clock = self.muxer.as_ref().and_then(|m| m.wall_clock(first));
        let tracks = self.muxer.as_ref().map(|m| m.tracks());
        let closed = ClosedFile {
            path: path.clone(),
            stream_id: self.id.stream_id.clone(),
            segment: self.segment,
            codec: tracks.and_then(|t| t.video).map(|c| c.to_string()),
            container: self.file.extension(),
            first_pts_90k: first,
            last_pts_90k: span.last_pts,
            frames: span.frames,
            audio_packets: span.audio,
            bytes: self.file.bytes_written(),
            cause,
            start_sender_unix_ms: clock.and_then(|c| c.sender_unix_ms),
            start_local_unix_ms: clock.map(|c| unix_ms_at(c.local)),
        };
        info!(
            stream = %self.id.stream_id,
            "file closed ({}): {}, {:.1} s, {} frames, {} audio packets, {:.1} MB",
            cause.as_str(),
            path.display(),
            closed.duration_seconds(),
            closed.frames,
            closed.audio_packets,
            closed.bytes as f64 / 1e6
        );
        self.files_closed += 1;
        self.bytes_closed += closed.bytes;
        self.outbox.push(StreamReport::FileClosed(Box::new(closed)));
        self.previous_path = Some(path);
        self.segment += 1;
        self.file = new_file(&self.settings, &self.id.stream_id, self.segment);
        self.clock_reported = false;
    }

    /// Feeds media events (one from the long way, a read's from the shared port): asks for
    /// a keyframe once if any of them wants one, and writes if enough output is pending.
    async fn media_in(
        &mut self,
        events: impl IntoIterator<Item = MediaEvent>,
        session: &session::SessionHandle,
    ) {
        let mut keyframe = false;
        for m in events {
            keyframe |= self.media(m);
        }
        if keyframe {
            let _ = session.request_keyframe();
        }
        if self.pending() >= self.settings.flush_bytes {
            self.flush().await;
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

    /// Whether a tick at `now` should write: a file the core ended is closed at once, and the
    /// first bytes of a file are written at once (that names the file, which the timeline's
    /// gap events point to); the rest waits for [`RecorderSettings::flush_interval`] (the
    /// media path writes earlier once there are [`RecorderSettings::flush_bytes`]), that is
    /// for the first tick of the next period of that length on the grid, which every
    /// recording shares. `tick` is the tick's scheduled instant.
    fn flush_due(&mut self, tick: Instant) -> bool {
        let opening = self.file.path().is_none();
        let next_period = flush_period(&self.settings, tick) != self.flushed_period;
        let Some(m) = self.muxer.as_mut() else {
            return false;
        };
        m.has_ended() || (!m.output().is_empty() && (opening || next_period))
    }

    /// Writes what the core produced: first the files it ended (segments), then the bytes
    /// of the current one. While the disk is failed the bytes are dropped (counted): memory
    /// must not grow, and the file to come starts at a keyframe anyway.
    async fn flush(&mut self) {
        self.flushed_period = flush_period(&self.settings, Instant::now());
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        for end in m.take_ended() {
            match self.disk {
                DiskState::Ok => self.close_file(end, CloseCause::Segment).await,
                DiskState::Failed { .. } => self.bytes_discarded += end.tail.len() as u64,
                DiskState::Resuming => {
                    self.bytes_discarded += end.tail.len() as u64;
                    self.disk = DiskState::Ok;
                    info!(stream = %self.id.stream_id, "recording resumes in a new file");
                }
            }
        }
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        self.file.set_extension(m.container().extension());
        let out = m.output();
        if out.is_empty() {
            return;
        }
        if !matches!(self.disk, DiskState::Ok) {
            self.bytes_discarded += out.len() as u64;
            out.clear();
            return;
        }
        let opening = self.file.path().is_none();
        // The buffer goes to the writer thread and comes back emptied, capacity kept.
        let bytes = std::mem::take(out);
        let (result, mut bytes) = on_writer(&mut self.file, move |file| {
            let result = file.append(&bytes);
            (result, bytes)
        })
        .await;
        recycle_buffer(&mut bytes, self.settings.flush_bytes);
        if let Some(m) = self.muxer.as_mut() {
            *m.output() = bytes;
        }
        match result {
            Ok(()) if opening => self.file_opened(),
            Ok(()) => {}
            Err(e) => self.disk_failed(e, None).await,
        }
    }

    /// The current file got its first bytes: into the timeline.
    fn file_opened(&mut self) {
        let (Some(m), Some(path)) = (self.muxer.as_ref(), self.file.path()) else {
            return;
        };
        let span = m.span();
        let first = span.first_pts.unwrap_or(span.last_pts);
        let clock = m.wall_clock(first);
        self.clock_reported = clock.is_some_and(|c| c.sender_unix_ms.is_some());
        self.outbox
            .push(StreamReport::Timeline(ManifestEvent::FileOpened {
                stream_id: self.id.stream_id.clone(),
                path: path.display().to_string(),
                segment: self.segment,
                container: self.file.extension().to_owned(),
                codec: m.tracks().video.map(|c| c.to_string()),
                first_pts_90k: first,
                local_unix_ms: clock.map(|c| unix_ms_at(c.local)),
                sender_unix_ms: clock.and_then(|c| c.sender_unix_ms),
            }));
    }

    /// Gaps the core found, and the publisher's wall clock of the current file once known.
    fn report_timeline(&mut self) {
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        let gaps = m.take_gaps();
        let span = m.span();
        let current = self.file.path().map(|p| p.display().to_string());
        let previous = self.previous_path.as_ref().map(|p| p.display().to_string());
        for g in gaps {
            let in_current = span.first_pts.is_some_and(|f| g.to_pts >= f);
            let Some(path) = (if in_current {
                current.clone()
            } else {
                previous.clone()
            }) else {
                continue;
            };
            self.outbox.push(StreamReport::Timeline(ManifestEvent::Gap {
                stream_id: self.id.stream_id.clone(),
                path,
                track: match g.track {
                    TrackKind::Video => "video".to_owned(),
                    TrackKind::Audio => "audio".to_owned(),
                },
                from_pts_90k: g.from_pts,
                to_pts_90k: g.to_pts,
                duration_ms: (g.to_pts - g.from_pts) as f64 / 90.0,
                cause: g.cause.as_str().to_owned(),
            }));
        }
        if self.clock_reported {
            return;
        }
        let (Some(path), Some(first)) = (current, span.first_pts) else {
            return;
        };
        if let Some(clock) = m.wall_clock(first)
            && let Some(sender) = clock.sender_unix_ms
        {
            self.clock_reported = true;
            self.outbox
                .push(StreamReport::Timeline(ManifestEvent::Clock {
                    stream_id: self.id.stream_id.clone(),
                    path,
                    pts_90k: first,
                    local_unix_ms: Some(unix_ms_at(clock.local)),
                    sender_unix_ms: Some(sender),
                }));
        }
    }

    /// A write failed: the file is closed where its last whole batch ended (a complete
    /// frame), the error is said once, and the recording waits for space (see
    /// [`Self::check_disk`]); the session and the core go on.
    async fn disk_failed(&mut self, e: FileError, span: Option<FileSpan>) {
        let path = self.file.path().map(|p| p.display().to_string());
        error!(
            stream = %self.id.stream_id,
            "recording paused: {e}; the file ends at its last complete frame, and recording \
             resumes in a new file when space returns"
        );
        self.disk_error = Some(e.to_string());
        self.outbox
            .push(StreamReport::Timeline(ManifestEvent::DiskError {
                stream_id: self.id.stream_id.clone(),
                path: path.unwrap_or_default(),
                error: e.to_string(),
            }));
        let span = span
            .or_else(|| self.muxer.as_ref().map(|m| m.span()))
            .unwrap_or_default();
        let _ = on_disk(&mut self.file, |file| file.sync()).await;
        self.report_closed(span, CloseCause::DiskError);
        self.disk = DiskState::failed();
    }

    /// While the disk is failed: at each check, resume (in a new file, from the next
    /// keyframe) if there is space again, else check later (backing off).
    fn check_disk(&mut self, now: Instant) {
        let DiskState::Failed {
            next_check,
            backoff,
        } = &mut self.disk
        else {
            return;
        };
        if now < *next_check {
            return;
        }
        let need = self.settings.min_free_bytes.max(MIN_RESUME_BYTES);
        match disk::free_bytes(&self.settings.output_dir) {
            Ok(free) if free >= need => {
                info!(
                    stream = %self.id.stream_id,
                    "disk space is back ({} MB free)", free / 1_000_000
                );
                self.outbox
                    .push(StreamReport::Timeline(ManifestEvent::DiskRecovered {
                        stream_id: self.id.stream_id.clone(),
                        free_bytes: free,
                    }));
                let cut_coming = self.muxer.as_mut().is_some_and(|m| m.start_new_file());
                self.disk = if cut_coming {
                    DiskState::Resuming
                } else {
                    DiskState::Ok
                };
            }
            _ => *next_check = now + backoff.next_delay(),
        }
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
        let span = self.muxer.as_ref().map(|m| m.span()).unwrap_or_default();
        self.live.send_replace(LiveStats {
            path: self.file.path().map(|p| p.to_path_buf()),
            file_bytes: self.file.bytes_written(),
            bytes: self.bytes_closed + self.file.bytes_written(),
            segment: self.segment,
            file_duration_90k: span
                .first_pts
                .map_or(0, |f| span.last_pts.saturating_sub(f)),
            codec: self.muxer.as_ref().and_then(|m| m.tracks().video),
            core,
            connected: self.connected,
            waiting_for_disk: !matches!(self.disk, DiskState::Ok),
            disk_error: self.disk_error.clone(),
            media_dropped: self.media_dropped,
        });
    }
}

/// The lines that end a recording: why its connection closed (one line a user can act on
/// when it ended badly; normal ends stay at info level) and its summary. A recording that
/// failed before any media gets the first line only. `left_out`: ends like this one not said
/// since the last line (a publisher failing again and again, see `record::quiet`).
pub fn explain_end(summary: &StreamSummary, left_out: u64) {
    let more = if left_out > 0 {
        format!(" ({left_out} more like it since the last line)")
    } else {
        String::new()
    };
    let id = summary.stream_id.as_str();
    let nothing = summary.core.frames_written + summary.core.audio_written == 0;
    let failed = match &summary.close_reason {
        Some(CloseReason::IceTimeout) => {
            error!(
                stream = %id,
                "could not connect to the publisher: ICE did not connect in time \
                 (check that UDP can flow between you; behind strict NAT use --turn; see --ice-timeout){more}"
            );
            true
        }
        Some(CloseReason::IceFailed) => {
            error!(
                stream = %id,
                "connection to the publisher failed (ICE): check UDP reachability, --stun, --turn{more}"
            );
            true
        }
        Some(CloseReason::Negotiation(e)) => {
            error!(stream = %id, "the publisher's offer could not be answered: {e}{more}");
            true
        }
        Some(CloseReason::Setup(e)) => {
            error!(stream = %id, "could not create a WebRTC connection: {e}{more}");
            true
        }
        Some(CloseReason::PublisherVanished) => {
            warn!(
                stream = %id,
                "the publisher stopped responding (gone without saying bye); file closed"
            );
            false
        }
        Some(
            reason @ (CloseReason::Bye | CloseReason::DataChannelClosed | CloseReason::LocalClose),
        ) => {
            info!(stream = %id, ?reason, "connection closed");
            false
        }
        None => false,
    };
    if !(failed && nothing) {
        info!(stream = %id, "recording finished: {summary}{more}");
    }
}

/// True when an offer carries audio or video (Raspberry Ninja, GStreamer), not only a data
/// channel (the web app, which adds media by renegotiation).
fn offers_media(sdp: &str) -> bool {
    sdp.lines()
        .any(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
}

#[cfg(test)]
mod tests {
    use super::recycle_buffer;

    #[test]
    fn a_burst_is_given_back_and_a_keyframe_s_growth_kept() {
        const FLUSH: usize = 128 * 1024;
        // The start's burst: cut back to 2 x flush_bytes, emptied.
        let mut burst = vec![7u8; 2 << 20];
        recycle_buffer(&mut burst, FLUSH);
        assert!(burst.is_empty());
        assert!(burst.capacity() >= 2 * FLUSH && burst.capacity() < 4 * FLUSH);
        // A write's worth plus a keyframe (512 KiB): kept as it is, no reallocation.
        let mut steady = Vec::with_capacity(4 * FLUSH);
        steady.extend_from_slice(&[1u8; 300 * 1024]);
        let (ptr, cap) = (steady.as_ptr(), steady.capacity());
        recycle_buffer(&mut steady, FLUSH);
        assert!(steady.is_empty());
        assert_eq!((steady.as_ptr(), steady.capacity()), (ptr, cap));
        // A tiny setting counts as 32 KiB: a 100 KiB buffer is not cut on every write.
        let mut small = Vec::with_capacity(100 * 1024);
        recycle_buffer(&mut small, 1);
        assert_eq!(small.capacity(), 100 * 1024);
    }
}
