//! The signalling task: owns the WebSocket, reconnects with capped exponential backoff, and
//! drives the pure [`Room`] state machine.
//!
//! API: [`spawn`] returns a [`SignalingHandle`] (commands from the peer layer: answers, local
//! candidates, closed streams) and a receiver of [`SignalingEvent`]s (offers, remote
//! candidates, ended streams, status, user errors). All socket writes happen in one place
//! (`execute`) inside the task. The task ends when the shutdown watch turns `true`, or when the
//! event receiver is dropped.
//!
//! Back-pressure: both channels are bounded. Consume events promptly (e.g. hand each offer to
//! a per-peer task) and call the handle from those tasks, so the two never wait on each other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::crypto::{Cipher, Password, Security};
use super::message::{IceCandidate, MAX_MESSAGE_BYTES, parse_inbound};
use super::room::{Action, Dialect, Mode, PeerId, Room, RoomConfig, RoomEvent};

/// Default handshake server (the official one).
pub const DEFAULT_SERVER: &str = "wss://wss.vdo.ninja:443";
const EVENT_CAPACITY: usize = 256;
const COMMAND_CAPACITY: usize = 64;

/// Everything the signalling task needs; built by the CLI from its flags.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// `--server`: `ws://` or `wss://` URL (a bare host gets `wss://`).
    pub server: String,
    /// `--room`: raw room name.
    pub room: Option<String>,
    /// `--record STREAMID` (exactly one, single-stream mode) or `--record-streams` (filter in
    /// room mode).
    pub streams: Vec<String>,
    /// `--record-room`: record every publisher of `room`.
    pub record_room: bool,
    /// `--password`.
    pub password: Password,
    /// `--salt` (default `vdo.ninja`).
    pub salt: String,
    /// Forced dialect; `None` = detect from the host name.
    pub dialect: Option<Dialect>,
    /// `--insecure-signaling`: accept any TLS certificate (self-signed local servers).
    pub insecure: bool,
    /// Our `from` id in the relay dialect (`None` = random).
    pub self_id: Option<String>,
    /// Re-`play` delays while no offer arrives.
    pub replay_schedule: Vec<Duration>,
    /// When to tell the user that a requested stream never answered.
    pub no_offer_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// TCP+TLS+WebSocket handshake timeout.
    pub connect_timeout: Duration,
}

impl SignalingConfig {
    /// Defaults matching the web app and Raspberry Ninja for `server`.
    pub fn new(server: impl Into<String>) -> Self {
        SignalingConfig {
            server: server.into(),
            room: None,
            streams: Vec::new(),
            record_room: false,
            password: Password::Default,
            salt: super::crypto::DEFAULT_SALT.to_string(),
            dialect: None,
            insecure: false,
            self_id: None,
            replay_schedule: vec![
                Duration::from_secs(15),
                Duration::from_secs(45),
                Duration::from_secs(180),
            ],
            no_offer_timeout: Duration::from_secs(8),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The normalised server URL (`wss://` added to a bare host).
    pub fn server_url(&self) -> Result<String, ConfigError> {
        let s = self.server.trim();
        let url = if s.contains("://") {
            s.to_string()
        } else {
            format!("wss://{s}")
        };
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
            return Err(ConfigError::BadUrl(url));
        }
        Ok(url)
    }

    /// What to record, checked for consistency.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        if self.record_room {
            let room = self
                .room
                .clone()
                .ok_or(ConfigError::RecordRoomWithoutRoom)?;
            return Ok(Mode::Room {
                room,
                filter: self.streams.clone(),
            });
        }
        match self.streams.as_slice() {
            [] => Err(ConfigError::NothingToRecord),
            [one] => Ok(Mode::Single {
                stream: one.clone(),
                room: self.room.clone(),
            }),
            _ => Err(ConfigError::SeveralStreams),
        }
    }
}

/// Flag combinations that cannot work; reported before anything connects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither a stream nor `--record-room` given.
    #[error("nothing to record: give a stream id, or --room with --record-room")]
    NothingToRecord,
    /// Several streams without `--record-room`.
    #[error("several streams need --room and --record-room (use --record-streams as filter)")]
    SeveralStreams,
    /// `--record-room` without `--room`.
    #[error("--record-room needs --room")]
    RecordRoomWithoutRoom,
    /// The server URL is not ws:// or wss://.
    #[error("server URL must start with ws:// or wss://: {0}")]
    BadUrl(String),
}

/// Connection state reports, for logs and the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalingStatus {
    /// Connecting (attempt number, 1-based).
    Connecting {
        /// Attempt number since start.
        attempt: u32,
    },
    /// The WebSocket is up and the room/play requests were sent.
    Connected,
    /// The WebSocket is down; next attempt after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// What the signalling task tells the peer layer.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    /// A publisher offers its stream: create a peer connection and answer.
    Offer {
        /// The publisher.
        peer: PeerId,
        /// Stream id without the hash suffix (for file names).
        stream_id: String,
        /// `session` to echo on everything for this peer connection.
        session: Option<Value>,
        /// Offer SDP.
        sdp: String,
        /// Whether the offer was encrypted (encrypt the answer too).
        encrypted: bool,
    },
    /// Remote ICE candidates for the peer's current session.
    RemoteCandidates {
        /// The publisher.
        peer: PeerId,
        /// Session they belong to.
        session: Option<Value>,
        /// Candidates.
        candidates: Vec<IceCandidate>,
    },
    /// The publisher left or restarted: finish that recording.
    StreamEnded {
        /// The publisher.
        peer: PeerId,
        /// Stream id without the hash suffix.
        stream_id: String,
    },
    /// Connection status change.
    Status(SignalingStatus),
    /// A one-line problem to show the user (wrong password, room full...).
    UserError(String),
}

/// The signalling task is gone (shut down or crashed); commands can no longer be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signalling task has stopped")]
pub struct SignalingClosed;

/// Commands into the running task, plus the password material the peer layer needs for
/// encrypted data-channel payloads.
#[derive(Debug)]
pub struct SignalingHandle {
    commands: mpsc::Sender<RoomEvent>,
    security: Security,
    task: tokio::task::JoinHandle<()>,
}

impl SignalingHandle {
    /// Sends our SDP answer to `peer` (WebSocket path, first negotiation). `encrypt` should
    /// mirror the offer's `encrypted` flag.
    pub async fn send_answer(
        &self,
        peer: PeerId,
        session: Option<Value>,
        sdp: String,
        encrypt: bool,
    ) -> Result<(), SignalingClosed> {
        self.command(RoomEvent::SendAnswer {
            peer,
            session,
            sdp,
            encrypt,
        })
        .await
    }

    /// Sends our local ICE candidates to `peer` (`"type":"remote"`, encrypted like its offer).
    pub async fn send_candidates(
        &self,
        peer: PeerId,
        session: Option<Value>,
        candidates: Vec<IceCandidate>,
    ) -> Result<(), SignalingClosed> {
        self.command(RoomEvent::SendCandidates {
            peer,
            session,
            candidates,
        })
        .await
    }

    /// Tells the room the connection with `peer` ended, so its stream is requested again.
    pub async fn stream_closed(&self, peer: PeerId, recorded: bool) -> Result<(), SignalingClosed> {
        self.command(RoomEvent::StreamClosed { peer, recorded })
            .await
    }

    /// The cipher for encrypted data-channel payloads (`None` with `--password false`).
    pub fn cipher(&self) -> Option<&Cipher> {
        self.security.cipher()
    }

    /// Password-derived values (hash suffix, room hash).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Waits until the task has finished (after shutdown).
    pub async fn join(self) {
        drop(self.commands);
        let _ = self.task.await;
    }

    async fn command(&self, ev: RoomEvent) -> Result<(), SignalingClosed> {
        self.commands.send(ev).await.map_err(|_| SignalingClosed)
    }
}

/// Starts the signalling task on the current tokio runtime.
pub fn spawn(
    config: SignalingConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(SignalingHandle, mpsc::Receiver<SignalingEvent>), ConfigError> {
    let url = config.server_url()?;
    let mode = config.mode()?;
    let dialect = config.dialect.unwrap_or_else(|| Dialect::detect(&url));
    let security = Security::new(&config.password, &config.salt);
    let self_id = config
        .self_id
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let mut room_cfg = RoomConfig::new(mode, dialect, self_id, security.clone());
    room_cfg.auto_dialect = config.dialect.is_none();
    room_cfg.replay_schedule = config.replay_schedule.clone();
    room_cfg.no_offer_timeout = config.no_offer_timeout;
    let room = Room::new(room_cfg);
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CAPACITY);
    let task = Task {
        url,
        config,
        room,
        commands: cmd_rx,
        commands_open: true,
        events: ev_tx,
        shutdown,
        parse_errors: 0,
    };
    let task = tokio::spawn(task.run());
    Ok((
        SignalingHandle {
            commands: cmd_tx,
            security,
            task,
        },
        ev_rx,
    ))
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connected session ended.
enum End {
    Shutdown,
    Lost(String),
}

struct Task {
    url: String,
    config: SignalingConfig,
    room: Room,
    commands: mpsc::Receiver<RoomEvent>,
    commands_open: bool,
    events: mpsc::Sender<SignalingEvent>,
    shutdown: watch::Receiver<bool>,
    parse_errors: u64,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_initial;
        let mut attempt: u32 = 0;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            attempt = attempt.saturating_add(1);
            if !self
                .emit(SignalingEvent::Status(SignalingStatus::Connecting {
                    attempt,
                }))
                .await
            {
                break;
            }
            let connect = tokio::time::timeout(
                self.config.connect_timeout,
                connect(&self.url, self.config.insecure),
            );
            let result = tokio::select! {
                r = connect => r,
                _ = wait_true(&mut self.shutdown) => break,
            };
            let reason = match result {
                Ok(Ok(ws)) => {
                    backoff = self.config.backoff_initial;
                    tracing::info!(server = %self.url, "signalling connected");
                    match self.session(ws).await {
                        End::Shutdown => break,
                        End::Lost(r) => r,
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => "connect timeout".to_string(),
            };
            self.room.handle(Instant::now(), RoomEvent::Disconnected);
            tracing::warn!(server = %self.url, %reason, retry_in = ?backoff, "signalling disconnected");
            if !self
                .emit(SignalingEvent::Status(SignalingStatus::Disconnected {
                    reason,
                    retry_in: backoff,
                }))
                .await
            {
                break;
            }
            if !self.wait_offline(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        tracing::debug!(parse_errors = self.parse_errors, stats = ?self.room.stats(), "signalling task ends");
    }

    /// Sleeps `delay` while still feeding commands to the room (their sends are dropped:
    /// there is no socket). Returns false on shutdown.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = wait_true(&mut self.shutdown) => return false,
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(ev) => {
                        let actions = self.room.handle(Instant::now(), ev);
                        if self.execute(actions, None).await.is_err() {
                            return false;
                        }
                    }
                    None => self.commands_open = false,
                },
            }
        }
    }

    async fn session(&mut self, ws: Ws) -> End {
        let (mut sink, mut stream) = ws.split();
        let _ = self
            .emit(SignalingEvent::Status(SignalingStatus::Connected))
            .await;
        let actions = self.room.handle(Instant::now(), RoomEvent::Connected);
        if let Err(e) = self.execute(actions, Some(&mut sink)).await {
            return e;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = wait_true(&mut self.shutdown) => {
                    let _ = sink.send(Message::Close(None)).await;
                    return End::Shutdown;
                }
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(t))) => self.parse(t.as_str()),
                    Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                        Ok(t) => self.parse(t),
                        Err(_) => { self.parse_errors += 1; None }
                    },
                    Some(Ok(Message::Close(_))) | None => return End::Lost("closed by server".into()),
                    Some(Ok(_)) => None,
                    Some(Err(e)) => return End::Lost(e.to_string()),
                },
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(ev) => Some(ev),
                    None => { self.commands_open = false; None }
                },
                _ = tick.tick() => Some(RoomEvent::Tick),
            };
            if let Some(ev) = event {
                let actions = self.room.handle(Instant::now(), ev);
                if let Err(e) = self.execute(actions, Some(&mut sink)).await {
                    return e;
                }
            }
        }
    }

    fn parse(&mut self, text: &str) -> Option<RoomEvent> {
        match parse_inbound(text) {
            Ok(m) => Some(RoomEvent::Message(m)),
            Err(e) => {
                self.parse_errors += 1;
                tracing::debug!(error = %e, "dropping signalling message");
                None
            }
        }
    }

    /// The one place that sends: socket writes and events to the peer layer.
    async fn execute(
        &mut self,
        actions: Vec<Action>,
        mut sink: Option<&mut futures_util::stream::SplitSink<Ws, Message>>,
    ) -> Result<(), End> {
        for a in actions {
            let ev = match a {
                Action::Send(msg) => {
                    match sink.as_deref_mut() {
                        Some(s) => {
                            let text = msg.to_json();
                            tracing::trace!(%text, "signalling send");
                            s.send(Message::Text(text.into()))
                                .await
                                .map_err(|e| End::Lost(e.to_string()))?;
                        }
                        None => tracing::debug!("not connected, dropping outgoing message"),
                    }
                    continue;
                }
                Action::Offer {
                    peer,
                    stream_id,
                    session,
                    sdp,
                    encrypted,
                    ..
                } => SignalingEvent::Offer {
                    peer,
                    stream_id,
                    session,
                    sdp,
                    encrypted,
                },
                Action::RemoteCandidates {
                    peer,
                    session,
                    candidates,
                } => SignalingEvent::RemoteCandidates {
                    peer,
                    session,
                    candidates,
                },
                Action::StreamEnded { peer, stream_id } => {
                    SignalingEvent::StreamEnded { peer, stream_id }
                }
                // Said once, by whoever consumes the event (the recorder logs it as an error).
                Action::UserError(e) => SignalingEvent::UserError(e),
            };
            if !self.emit(ev).await {
                return Err(End::Shutdown);
            }
        }
        Ok(())
    }

    /// Delivers an event; false when nobody listens any more (then the task stops).
    async fn emit(&self, ev: SignalingEvent) -> bool {
        self.events.send(ev).await.is_ok()
    }
}

/// Resolves when the watch value is (or becomes) `true`, or its sender is gone.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Opens the WebSocket (TLS via rustls/ring for wss://), with the message size limits every
/// signalling client in the crate uses (the viewer task and the test publisher).
pub(crate) async fn connect(url: &str, insecure: bool) -> Result<Ws, String> {
    let tls = client_tls_config(insecure).map_err(|e| e.to_string())?;
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let (ws, _resp) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(ws_cfg),
        true,
        Some(Connector::Rustls(tls)),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// rustls client config with the ring provider: webpki roots, or (insecure) any certificate.
pub fn client_tls_config(insecure: bool) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// `--insecure-signaling`: accepts any server certificate (self-signed local servers) but
/// still checks handshake signatures, like Raspberry Ninja's option.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_flags() {
        let mut c = SignalingConfig::new("ws://127.0.0.1:1");
        assert_eq!(c.mode(), Err(ConfigError::NothingToRecord));
        c.streams = vec!["a".into()];
        assert_eq!(
            c.mode(),
            Ok(Mode::Single {
                stream: "a".into(),
                room: None
            })
        );
        c.streams.push("b".into());
        assert_eq!(c.mode(), Err(ConfigError::SeveralStreams));
        c.record_room = true;
        assert_eq!(c.mode(), Err(ConfigError::RecordRoomWithoutRoom));
        c.room = Some("r".into());
        assert_eq!(
            c.mode(),
            Ok(Mode::Room {
                room: "r".into(),
                filter: vec!["a".into(), "b".into()]
            })
        );
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            SignalingConfig::new("wss.vdo.ninja").server_url(),
            Ok("wss://wss.vdo.ninja".into())
        );
        assert_eq!(
            SignalingConfig::new("ws://h:1/x").server_url(),
            Ok("ws://h:1/x".into())
        );
        assert!(matches!(
            SignalingConfig::new("http://h").server_url(),
            Err(ConfigError::BadUrl(_))
        ));
    }

    #[test]
    fn tls_configs_build() {
        assert!(client_tls_config(false).is_ok());
        assert!(client_tls_config(true).is_ok());
    }
}
