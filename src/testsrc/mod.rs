//! A real VDO.Ninja publisher of the built-in clip, over signalling.
//!
//! `ninjarec selftest`, the recorder's end-to-end tests and the load benchmark need publishers
//! that behave on the wire exactly like the web app or Raspberry Ninja, without a browser. A
//! test source connects to a handshake server as a *publisher* in either dialect, announces one
//! stream, and for every viewer that asks creates one [`crate::peer::publisher`] peer
//! connection streaming the clip. The signalling decisions live in the pure [`state`] machine;
//! this module is the thin tokio task around it (WebSocket, reconnects, peer tasks).
//!
//! ```no_run
//! # async fn f() -> Result<(), ninjarec::testsrc::TestSourceError> {
//! use ninjarec::testsrc::{TestSourceConfig, run};
//! let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let mut cfg = TestSourceConfig::new("ws://127.0.0.1:8443", "cam1");
//! cfg.room = Some("myroom".into());
//! let stats = run(cfg, stop_rx).await?;
//! println!("served {} viewers", stats.signaling.peers_started);
//! # Ok(()) }
//! ```

pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::peer::publisher::{
    self, PublisherCloseReason, PublisherConfig, PublisherEvent, PublisherHandle, PublisherMode,
};
use crate::peer::{ConnectionState, IceServer};
use crate::signaling::client::{SignalingConfig, Ws};
use crate::signaling::crypto::{DEFAULT_SALT, Password, Security};
use crate::signaling::message::{self, MAX_ID_CHARS, parse_inbound};
use crate::signaling::room::{Dialect, PeerId};
use crate::testkit::clip::Clip;
use state::{SourceAction, SourceEvent, SourceState, SourceStateConfig, SourceStats};

/// Most server error texts kept in [`TestSourceStats::server_errors`].
const MAX_KEPT_ERRORS: usize = 16;
/// Longest wait for peers to say bye and close on shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Settings of one test source; the `testsrc` example and the benchmark map flags onto these.
#[derive(Clone)]
pub struct TestSourceConfig {
    /// Handshake server URL (`ws://` or `wss://`; a bare host gets `wss://`).
    pub server: String,
    /// Raw room name to publish in (`None` = publish outside rooms).
    pub room: Option<String>,
    /// Raw stream id to publish (hashed on the wire when the password is on).
    pub stream_id: String,
    /// Password (default on: hashed ids and encrypted SDP/ICE; `Disabled` = `--password false`).
    pub password: Password,
    /// Salt (default `vdo.ninja`).
    pub salt: String,
    /// Forced dialect; `None` = detect from the server URL like the viewer does.
    pub dialect: Option<Dialect>,
    /// Accept any TLS certificate (self-signed local servers).
    pub insecure: bool,
    /// Which publisher to imitate (Raspberry Ninja: media in the first offer; web app: data
    /// channel first, media by renegotiation).
    pub mode: PublisherMode,
    /// What to stream (looped); shared by all sources of a [`run_many`].
    pub clip: Arc<Clip>,
    /// STUN/TURN servers for the peers.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP sockets of each peer (`"127.0.0.1:0"` = loopback candidates, for tests and
    /// benchmarks on one machine; `"0.0.0.0:0"` for real viewers elsewhere).
    pub udp_addrs: Vec<String>,
    /// ICE consent timeouts (disconnected, failed); `None` = webrtc-rs defaults.
    pub ice_timeouts: Option<(Duration, Duration)>,
    /// Our `from` id in the relay dialect (`None` = random).
    pub self_id: Option<String>,
    /// Most viewers served at once.
    pub max_viewers: usize,
    /// Send the clip aligned to the Unix clock (see `PublisherConfig::wall_aligned`).
    pub wall_aligned: bool,
    /// Display name sent to viewers (see `PublisherConfig::label`).
    pub label: Option<String>,
    /// A viewer that does not answer our offer within this is dropped.
    pub answer_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// TCP+TLS+WebSocket handshake timeout.
    pub connect_timeout: Duration,
    /// Give up with [`TestSourceError::Connect`] after this many failed attempts in a row
    /// before the first successful connection (`None` = retry until shutdown).
    pub give_up_after: Option<u32>,
}

impl std::fmt::Debug for TestSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSourceConfig")
            .field("server", &self.server)
            .field("room", &self.room)
            .field("stream_id", &self.stream_id)
            .field("password_enabled", &(self.password != Password::Disabled))
            .field("dialect", &self.dialect)
            .field("mode", &self.mode)
            .field("udp_addrs", &self.udp_addrs)
            .finish_non_exhaustive()
    }
}

impl TestSourceConfig {
    /// Defaults: the built-in clip, default password and salt, Raspberry Ninja behaviour,
    /// loopback UDP without STUN, dialect from the URL, reconnecting forever.
    pub fn new(server: impl Into<String>, stream_id: impl Into<String>) -> Self {
        TestSourceConfig {
            server: server.into(),
            room: None,
            stream_id: stream_id.into(),
            password: Password::Default,
            salt: DEFAULT_SALT.to_string(),
            dialect: None,
            insecure: false,
            mode: PublisherMode::MediaInFirstOffer,
            clip: Arc::new(Clip::builtin()),
            ice_servers: Vec::new(),
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            ice_timeouts: None,
            self_id: None,
            max_viewers: 16,
            wall_aligned: false,
            label: None,
            answer_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// Why a test source could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestSourceError {
    /// The server URL is not `ws://` or `wss://`.
    #[error("server URL must start with ws:// or wss://: {0}")]
    BadUrl(String),
    /// The stream id is empty or longer than the protocol allows.
    #[error("invalid stream id `{0}` (1..={MAX_ID_CHARS} characters)")]
    BadStreamId(String),
    /// [`TestSourceConfig::give_up_after`] attempts failed before any connection.
    #[error("cannot connect to {url} after {attempts} attempts: {last}")]
    Connect {
        /// Server URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        last: String,
    },
    /// The source task panicked or was cancelled.
    #[error("test source task failed: {0}")]
    Task(String),
}

/// What a test source did; returned when it stops and observable while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestSourceStats {
    /// Successful WebSocket connections.
    pub ws_connects: u32,
    /// Signalling decisions (requests, peers started, answers, drops).
    pub signaling: SourceStats,
    /// Peer connections that reached `Connected`.
    pub peers_connected: u64,
    /// Peers whose media started flowing.
    pub media_started: u64,
    /// Peers closed because the viewer said bye on the data channel.
    pub viewer_byes: u64,
    /// Peers that failed (ICE failure, negotiation or setup error).
    pub peers_failed: u64,
    /// Peers that have ended, for any reason.
    pub peers_closed: u64,
    /// Inbound WebSocket frames that did not parse.
    pub parse_errors: u64,
    /// Server alerts/errors and other user-facing problems (first few kept).
    pub server_errors: Vec<String>,
}

/// A running test source: observe it, then wait for it after shutdown.
pub struct TestSource {
    stats: watch::Receiver<TestSourceStats>,
    task: tokio::task::JoinHandle<Result<TestSourceStats, TestSourceError>>,
}

impl TestSource {
    /// The counters as of now (updated as events happen).
    pub fn stats(&self) -> TestSourceStats {
        self.stats.borrow().clone()
    }

    /// A watch of the counters, to wait for a condition (e.g. two viewers connected).
    pub fn watch_stats(&self) -> watch::Receiver<TestSourceStats> {
        self.stats.clone()
    }

    /// Waits until the source has stopped (after shutdown, or a fatal error).
    pub async fn join(self) -> Result<TestSourceStats, TestSourceError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(TestSourceError::Task(e.to_string())),
        }
    }
}

/// Validates `config` and starts the source task on the current tokio runtime. It runs until
/// `shutdown` turns `true` (or its sender is dropped), then closes every peer with bye.
pub fn spawn(
    config: TestSourceConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<TestSource, TestSourceError> {
    let url = SignalingConfig::new(config.server.clone())
        .server_url()
        .map_err(|_| TestSourceError::BadUrl(config.server.clone()))?;
    let n = config.stream_id.chars().count();
    if n == 0 || n > MAX_ID_CHARS {
        return Err(TestSourceError::BadStreamId(config.stream_id.clone()));
    }
    let dialect = config.dialect.unwrap_or_else(|| Dialect::detect(&url));
    let self_id = config
        .self_id
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let state = SourceState::new(SourceStateConfig {
        dialect,
        self_id,
        stream_id: config.stream_id.clone(),
        room: config.room.clone(),
        security: Security::new(&config.password, &config.salt),
        max_viewers: config.max_viewers,
        answer_timeout: config.answer_timeout,
        session_seed: rand::random(),
    });
    let (stats_tx, stats_rx) = watch::channel(TestSourceStats::default());
    let (peer_tx, peer_rx) = mpsc::unbounded_channel();
    let runner = Runner {
        url,
        config,
        state,
        shutdown,
        peers: HashMap::new(),
        forwarders: JoinSet::new(),
        peer_tx,
        peer_rx,
        stats: TestSourceStats::default(),
        stats_tx,
    };
    Ok(TestSource {
        stats: stats_rx,
        task: tokio::spawn(runner.run()),
    })
}

/// Runs one test source until `shutdown` turns `true`; returns what it did.
pub async fn run(
    config: TestSourceConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<TestSourceStats, TestSourceError> {
    spawn(config, shutdown)?.join().await
}

/// Runs several sources at once (the load benchmark's publisher process) until `shutdown`;
/// returns each one's result in the order of `configs`.
pub async fn run_many(
    configs: Vec<TestSourceConfig>,
    shutdown: watch::Receiver<bool>,
) -> Vec<Result<TestSourceStats, TestSourceError>> {
    let mut running = Vec::with_capacity(configs.len());
    for c in configs {
        running.push(spawn(c, shutdown.clone()));
    }
    let mut out = Vec::with_capacity(running.len());
    for r in running {
        out.push(match r {
            Ok(source) => source.join().await,
            Err(e) => Err(e),
        });
    }
    out
}

type Sink = SplitSink<Ws, Message>;

/// How a connected WebSocket session ended.
enum End {
    Shutdown,
    Lost(String),
}

struct PeerEntry {
    session: String,
    handle: PublisherHandle,
}

struct Runner {
    url: String,
    config: TestSourceConfig,
    state: SourceState,
    shutdown: watch::Receiver<bool>,
    peers: HashMap<PeerId, PeerEntry>,
    forwarders: JoinSet<()>,
    peer_tx: mpsc::UnboundedSender<(PeerId, String, PublisherEvent)>,
    peer_rx: mpsc::UnboundedReceiver<(PeerId, String, PublisherEvent)>,
    stats: TestSourceStats,
    stats_tx: watch::Sender<TestSourceStats>,
}

impl Runner {
    async fn run(mut self) -> Result<TestSourceStats, TestSourceError> {
        let mut backoff = self.config.backoff_initial;
        let mut failures: u32 = 0;
        info!(
            server = %self.url,
            stream = %self.state.wire_stream_id(),
            mode = ?self.config.mode,
            "test source starting"
        );
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let url = self.url.clone();
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                crate::signaling::client::connect(&url, self.config.insecure),
            );
            tokio::pin!(attempt);
            // Peers live on while we (re)connect: keep serving their events.
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break Some(r),
                    _ = wait_true(&mut self.shutdown) => break None,
                    Some(ev) = self.peer_rx.recv() => {
                        let _ = self.peer_event(ev, None).await;
                    }
                }
            };
            let reason = match result {
                None => break,
                Some(Ok(Ok(ws))) => {
                    failures = 0;
                    backoff = self.config.backoff_initial;
                    self.stats.ws_connects += 1;
                    self.publish_stats();
                    info!(server = %self.url, "test source connected");
                    match self.session(ws).await {
                        End::Shutdown => break,
                        End::Lost(r) => r,
                    }
                }
                Some(Ok(Err(e))) => e,
                Some(Err(_)) => "connect timeout".to_string(),
            };
            self.state.handle(Instant::now(), SourceEvent::Disconnected);
            if self.stats.ws_connects == 0 {
                failures += 1;
                if self.config.give_up_after.is_some_and(|n| failures >= n) {
                    self.close_all().await;
                    return Err(TestSourceError::Connect {
                        url: self.url.clone(),
                        attempts: failures,
                        last: reason,
                    });
                }
            }
            warn!(server = %self.url, %reason, retry_in = ?backoff, "test source disconnected");
            if !self.wait_offline(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        self.close_all().await;
        info!(stats = ?self.stats, "test source stopped");
        Ok(self.stats)
    }

    /// Sleeps `delay` while serving peer events; false on shutdown.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = wait_true(&mut self.shutdown) => return false,
                Some(ev) = self.peer_rx.recv() => {
                    let _ = self.peer_event(ev, None).await;
                }
            }
        }
    }

    async fn session(&mut self, ws: Ws) -> End {
        let (mut sink, mut stream): (Sink, SplitStream<Ws>) = ws.split();
        let actions = self.state.handle(Instant::now(), SourceEvent::Connected);
        if let Err(e) = self.execute(actions, Some(&mut sink)).await {
            return e;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                _ = wait_true(&mut self.shutdown) => {
                    // Peers say bye on their data channels first, then the socket closes.
                    self.close_all().await;
                    let _ = sink.send(Message::Close(None)).await;
                    return End::Shutdown;
                }
                frame = stream.next() => {
                    let event = match frame {
                        Some(Ok(Message::Text(t))) => self.parse(t.as_str()),
                        Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                            Ok(t) => self.parse(t),
                            Err(_) => { self.stats.parse_errors += 1; None }
                        },
                        Some(Ok(Message::Close(_))) | None => return End::Lost("closed by server".into()),
                        Some(Ok(_)) => None,
                        Some(Err(e)) => return End::Lost(e.to_string()),
                    };
                    match event {
                        Some(ev) => {
                            let actions = self.state.handle(Instant::now(), ev);
                            self.execute(actions, Some(&mut sink)).await
                        }
                        None => Ok(()),
                    }
                }
                Some(ev) = self.peer_rx.recv() => self.peer_event(ev, Some(&mut sink)).await,
                _ = tick.tick() => {
                    let actions = self.state.handle(Instant::now(), SourceEvent::Tick);
                    self.execute(actions, Some(&mut sink)).await
                }
            };
            if let Err(e) = result {
                return e;
            }
        }
    }

    fn parse(&mut self, text: &str) -> Option<SourceEvent> {
        match parse_inbound(text) {
            Ok(m) => Some(SourceEvent::Message(m)),
            Err(e) => {
                self.stats.parse_errors += 1;
                debug!(error = %e, "test source: dropping signalling message");
                None
            }
        }
    }

    /// Turns one peer's event into state-machine input (and counters).
    async fn peer_event(
        &mut self,
        (viewer, session, ev): (PeerId, String, PublisherEvent),
        sink: Option<&mut Sink>,
    ) -> Result<(), End> {
        let input = match ev {
            PublisherEvent::LocalOffer { sdp } => Some(SourceEvent::LocalOffer {
                viewer,
                session,
                sdp,
            }),
            PublisherEvent::LocalCandidate(c) => Some(SourceEvent::LocalCandidates {
                viewer,
                session,
                candidates: vec![message::IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                }],
            }),
            PublisherEvent::State(ConnectionState::Connected) => {
                self.stats.peers_connected += 1;
                None
            }
            PublisherEvent::MediaStarted => {
                self.stats.media_started += 1;
                None
            }
            PublisherEvent::Closed { reason } => {
                self.stats.peers_closed += 1;
                match &reason {
                    PublisherCloseReason::Bye => self.stats.viewer_byes += 1,
                    PublisherCloseReason::Failed
                    | PublisherCloseReason::Negotiation(_)
                    | PublisherCloseReason::Setup(_) => self.stats.peers_failed += 1,
                    PublisherCloseReason::LocalClose | PublisherCloseReason::DataChannelClosed => {}
                }
                info!(%viewer, ?reason, "test source: viewer peer closed");
                if self
                    .peers
                    .get(&viewer)
                    .is_some_and(|p| p.session == session)
                {
                    self.peers.remove(&viewer);
                }
                Some(SourceEvent::PeerClosed { viewer, session })
            }
            _ => None,
        };
        let result = match input {
            Some(ev) => {
                let actions = self.state.handle(Instant::now(), ev);
                self.execute(actions, sink).await
            }
            None => Ok(()),
        };
        self.publish_stats();
        result
    }

    /// The one place that acts: socket writes and peer commands.
    async fn execute(
        &mut self,
        actions: Vec<SourceAction>,
        mut sink: Option<&mut Sink>,
    ) -> Result<(), End> {
        for a in actions {
            match a {
                SourceAction::Send(msg) => match sink.as_deref_mut() {
                    Some(s) => {
                        let text = msg.to_json();
                        tracing::trace!(%text, "test source send");
                        s.send(Message::Text(text.into()))
                            .await
                            .map_err(|e| End::Lost(e.to_string()))?;
                    }
                    None => debug!("test source: not connected, dropping outgoing message"),
                },
                SourceAction::StartPeer { viewer, session } => self.start_peer(viewer, session),
                SourceAction::ClosePeer { viewer, session } => {
                    if let Some(p) = self.peers.get(&viewer)
                        && p.session == session
                    {
                        let p = self.peers.remove(&viewer).expect("entry just seen");
                        let _ = p.handle.close().await;
                    }
                }
                SourceAction::RemoteAnswer {
                    viewer,
                    session,
                    sdp,
                } => {
                    if let Some(p) = self.peer(&viewer, &session) {
                        let _ = p.handle.remote_answer(sdp).await;
                    }
                }
                SourceAction::RemoteCandidates {
                    viewer,
                    session,
                    candidates,
                } => {
                    if let Some(p) = self.peer(&viewer, &session) {
                        for c in candidates {
                            let c = crate::peer::IceCandidate {
                                candidate: c.candidate,
                                sdp_mline_index: c.sdp_mline_index,
                                sdp_mid: c.sdp_mid,
                            };
                            if p.handle.remote_candidate(c).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                SourceAction::UserError(text) => {
                    warn!("test source: {text}");
                    if self.stats.server_errors.len() < MAX_KEPT_ERRORS {
                        self.stats.server_errors.push(text);
                    }
                }
            }
        }
        self.stats.signaling = self.state.stats();
        Ok(())
    }

    fn peer(&self, viewer: &PeerId, session: &str) -> Option<&PeerEntry> {
        self.peers.get(viewer).filter(|p| p.session == session)
    }

    fn start_peer(&mut self, viewer: PeerId, session: String) {
        let mut pc = PublisherConfig::new(self.config.mode);
        pc.clip = self.config.clip.clone();
        pc.ice_servers = self.config.ice_servers.clone();
        pc.udp_addrs = self.config.udp_addrs.clone();
        pc.ice_timeouts = self.config.ice_timeouts;
        pc.wall_aligned = self.config.wall_aligned;
        pc.label = self.config.label.clone();
        pc.session = Value::String(session.clone());
        let (handle, mut events) = publisher::spawn(pc);
        info!(%viewer, %session, "test source: offering to viewer");
        let tx = self.peer_tx.clone();
        let (v, s) = (viewer.clone(), session.clone());
        self.forwarders.spawn(async move {
            while let Some(ev) = events.recv().await {
                if tx.send((v.clone(), s.clone(), ev)).is_err() {
                    break;
                }
            }
        });
        self.peers.insert(viewer, PeerEntry { session, handle });
    }

    /// Closes every peer (bye on their data channels) and waits, bounded, until they are gone.
    async fn close_all(&mut self) {
        let actions = self.state.handle(Instant::now(), SourceEvent::Shutdown);
        let _ = self.execute(actions, None).await;
        // Peers the state machine no longer tracked (none in practice) are closed too.
        for (_, p) in self.peers.drain() {
            let _ = p.handle.close().await;
        }
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        loop {
            tokio::select! {
                joined = self.forwarders.join_next() => {
                    if joined.is_none() {
                        break;
                    }
                }
                Some(ev) = self.peer_rx.recv() => {
                    let _ = self.peer_event(ev, None).await;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    warn!("test source: peers still closing after {CLOSE_GRACE:?}");
                    self.forwarders.abort_all();
                    break;
                }
            }
        }
        while let Ok(ev) = self.peer_rx.try_recv() {
            let _ = self.peer_event(ev, None).await;
        }
        self.publish_stats();
    }

    fn publish_stats(&mut self) {
        self.stats.signaling = self.state.stats();
        let snapshot = self.stats.clone();
        self.stats_tx.send_replace(snapshot);
    }
}

/// Resolves when the watch value is (or becomes) `true`, or its sender is gone.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
