//! The receiving side: one webrtc-rs peer connection per publisher, driven by one tokio task.
//!
//! [`spawn`] returns a [`SessionHandle`] (inputs from signalling and the record layer) and a
//! receiver of [`SessionEvent`]s (answer and candidates for signalling, RTP and Sender Reports for
//! the record layer, and finally exactly one [`SessionEvent::Closed`]). webrtc-rs callbacks only
//! forward into channels; every `PeerConnection` call (negotiation, candidates, PLI, close) is made
//! by the session task, so negotiations never interleave.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};

use super::Internal;
use super::dc::{self, DcMessage};
use super::{
    ConnectionState, IceCandidate, IceServer, SharedCipher, first_bundle_mid, media_setup,
    rtc_ice_servers,
};
use crate::media::{RtpPacket, TrackKind, VideoCodec};

/// Remote candidates kept while no remote description is set; more are dropped and counted.
const MAX_PENDING_CANDIDATES: usize = 256;
/// Data channels tracked per connection (Raspberry Ninja opens two); more are ignored.
const MAX_DATA_CHANNELS: usize = 8;
/// Compound RTCP packets the shared port's feedback may queue for the session (it makes at
/// most a few per 20 ms grid step: over a second of TWCC feedback, NACKs and receiver
/// reports); past it they are dropped and counted.
const FEEDBACK_QUEUE: usize = 64;
/// Longest wait for webrtc-rs to take one feedback compound ([`Session::send_feedback`]).
const FEEDBACK_SEND_WAIT: Duration = Duration::from_millis(50);
/// Longest wait for the track readers to drain after `close()`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The label VDO.Ninja publishers use for their signalling data channel.
pub const SIGNALLING_LABEL: &str = "sendChannel";

/// What a receiving session needs to know. `Default` gives STUN only, both tracks, 20 s ICE
/// timeout and 10 s grace for a vanished publisher.
#[derive(Clone)]
pub struct SessionConfig {
    /// STUN/TURN servers (TURN over UDP only).
    pub ice_servers: Vec<IceServer>,
    /// Ask the publisher for audio.
    pub want_audio: bool,
    /// Ask the publisher for video.
    pub want_video: bool,
    /// Close with [`CloseReason::IceTimeout`] if not connected this long after our first answer.
    pub ice_connect_timeout: Duration,
    /// Close with [`CloseReason::PublisherVanished`] after this long in Disconnected.
    pub vanish_timeout: Duration,
    /// ICE consent timeouts handed to webrtc-rs: (disconnected, failed); `None` = its defaults
    /// (5 s, 25 s). The recorder's default is (3 s, 25 s), see [`Self::vanish_timeout`].
    pub ice_timeouts: Option<(Duration, Duration)>,
    /// ICE keepalive interval, the period of a connected agent's timer; `None` = a third of
    /// the disconnected timeout, at most 2 s (1 s for the recorder). A long one lets a test see
    /// that nothing in connection set-up waits for that timer.
    pub ice_keepalive: Option<Duration>,
    /// Send a PLI this often, on top of explicit [`SessionHandle::request_keyframe`] calls.
    pub keyframe_interval: Option<Duration>,
    /// Our label, sent in the viewer request and used in logs.
    pub label: String,
    /// The video codec the viewer request asks the publisher for (`preferVideoCodec`);
    /// `None` asks for nothing and takes what the publisher offers first (`--codec any`).
    pub prefer_video_codec: Option<VideoCodec>,
    /// Local UDP sockets to bind (`"0.0.0.0:0"` = one per non-loopback interface; tests use
    /// `"127.0.0.1:0"`, which also enables loopback candidates).
    pub udp_addrs: Vec<String>,
    /// Decrypts/encrypts data-channel signalling payloads.
    pub cipher: SharedCipher,
    /// Capacity of the event channel (media events included).
    pub event_capacity: usize,
    /// Answer as DTLS server instead of client. For publishers whose first offer carries
    /// media (Raspberry Ninja, GStreamer): they send what they queued during the handshake
    /// the instant it completes on their side, and as the client we complete after them, so
    /// webrtc-rs dropped those first packets ("remote_srtp_context is not set yet"): the
    /// first keyframe of 1 in 4 GStreamer recordings. As the server our SRTP keys exist
    /// before the publisher can send. Publishers that offer a data channel first (the web
    /// app) add media only later and keep the default.
    pub dtls_server: bool,
    /// `--udp-port`: where the shared port is to be bound and what publishers are told; the
    /// recorder binds it at start into [`Self::udp_mux`].
    pub udp_port: Option<UdpPortSpec>,
    /// The shared UDP port every connection uses instead of sockets of its own (see
    /// [`super::udp_mux`]); `None`: a socket per connection on [`Self::udp_addrs`].
    pub udp_mux: Option<super::udp_mux::UdpMux>,
    /// With [`Self::udp_mux`], the shared TCP port for publishers that reach us only by TCP
    /// (`--tcp-port`, see [`super::tcp_mux`]).
    pub tcp_mux: Option<super::tcp_mux::TcpMux>,
}

/// `--udp-port` and `--public-ip` as the recorder binds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPortSpec {
    /// The address the shared socket binds.
    pub bind: std::net::SocketAddr,
    /// The addresses publishers are told (the shared port at each).
    pub announce: Vec<std::net::SocketAddr>,
    /// `--tcp-port`: the shared TCP port, bound at the same address and told at the same
    /// addresses.
    pub tcp_port: Option<u16>,
}

impl UdpPortSpec {
    /// Where the shared TCP port binds and what publishers are told of it, with `--tcp-port`.
    pub fn tcp(&self) -> Option<(std::net::SocketAddr, Vec<std::net::SocketAddr>)> {
        let port = self.tcp_port?;
        let at = |a: &std::net::SocketAddr| std::net::SocketAddr::new(a.ip(), port);
        Some((at(&self.bind), self.announce.iter().map(at).collect()))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ice_servers: vec![IceServer::default_stun()],
            want_audio: true,
            want_video: true,
            ice_connect_timeout: Duration::from_secs(20),
            // A publisher that died (killed, unplugged) is noticed ~5 s after its last packet
            // (3 s to Disconnected, 2 s more): in single-stream mode on the official server
            // nothing else says it is gone, and its restart is recorded only after this.
            // Outages shorter than that keep the recording in its file.
            vanish_timeout: Duration::from_secs(2),
            ice_timeouts: Some((Duration::from_secs(3), Duration::from_secs(25))),
            ice_keepalive: None,
            keyframe_interval: None,
            label: "ninjarec".to_owned(),
            prefer_video_codec: Some(VideoCodec::H264),
            udp_addrs: vec!["0.0.0.0:0".to_owned()],
            cipher: None,
            event_capacity: 1024,
            dtls_server: false,
            udp_port: None,
            udp_mux: None,
            tcp_mux: None,
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("ice_servers", &self.ice_servers.len())
            .field("want_audio", &self.want_audio)
            .field("want_video", &self.want_video)
            .field("label", &self.label)
            .field("udp_addrs", &self.udp_addrs)
            .field("cipher", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

/// Media for the record layer.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// One RTP packet (RTX already unwrapped by webrtc-rs; may be duplicated or out of order).
    Rtp {
        /// Which track.
        kind: TrackKind,
        /// The packet.
        packet: RtpPacket,
        /// When the session task received it.
        arrival: Instant,
    },
    /// An RTCP Sender Report: maps one stream's RTP clock to the sender's NTP wall clock. The
    /// stream is named by SSRC only: webrtc-rs routes a compound RTCP packet to the track of
    /// its first report, so the track that delivered it says nothing.
    SenderReport {
        /// Sender SSRC.
        ssrc: u32,
        /// 64-bit NTP timestamp.
        ntp: u64,
        /// The RTP timestamp corresponding to `ntp`.
        rtp_timestamp: u32,
        /// When the session task received it.
        arrival: Instant,
    },
}

/// RTP packets of one connection handed over at once: what one read of the shared port held
/// for it (`--udp-port`, [`crate::peer::udp_mux`]). One queue slot and one wake of the recorder
/// per burst instead of per packet: the hand-over had been ~5 % of the recorder's CPU at 32
/// publishers (issue 11).
///
/// The queue stays bounded in packets, not only in events: the packets batches hold count
/// against the queue's capacity until the batch is dropped ([`MediaBatch::take`] empties it,
/// the count is released when it goes).
#[derive(Debug)]
pub struct MediaBatch {
    events: Vec<MediaEvent>,
    held: usize,
    counters: Arc<Counters>,
}

impl MediaBatch {
    /// A batch of `events`, counted as held until it is dropped.
    pub(crate) fn new(events: Vec<MediaEvent>, counters: Arc<Counters>) -> MediaBatch {
        let held = events.len();
        counters.batched.fetch_add(held, Ordering::Relaxed);
        MediaBatch {
            events,
            held,
            counters,
        }
    }

    /// The packets, in the order they were read.
    pub fn take(&mut self) -> Vec<MediaEvent> {
        std::mem::take(&mut self.events)
    }
}

impl Clone for MediaBatch {
    fn clone(&self) -> MediaBatch {
        MediaBatch::new(self.events.clone(), self.counters.clone())
    }
}

impl Drop for MediaBatch {
    fn drop(&mut self) {
        self.counters
            .batched
            .fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Why a session ended. Exactly one `Closed` event is sent, always last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The publisher sent `{"bye":true}`.
    Bye,
    /// ICE failed before ever connecting.
    IceFailed,
    /// Not connected within [`SessionConfig::ice_connect_timeout`].
    IceTimeout,
    /// Connection Disconnected/Failed for longer than [`SessionConfig::vanish_timeout`].
    PublisherVanished,
    /// Every signalling data channel closed.
    DataChannelClosed,
    /// [`SessionHandle::close`] was called or the handle was dropped.
    LocalClose,
    /// The initial offer could not be applied.
    Negotiation(String),
    /// The peer connection could not be created.
    Setup(String),
}

/// Counters a session keeps; reported with [`SessionEvent::Closed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// RTP packets forwarded, video.
    pub video_packets: u64,
    /// RTP packets forwarded, audio.
    pub audio_packets: u64,
    /// Sender Reports forwarded.
    pub sender_reports: u64,
    /// PLIs sent.
    pub plis_sent: u64,
    /// Pings answered.
    pub pings_answered: u64,
    /// Renegotiations answered over the data channel.
    pub renegotiations: u64,
    /// Data-channel messages dropped as malformed, oversized or undecryptable.
    pub dc_dropped: u64,
    /// Remote candidates dropped (queue full or rejected).
    pub candidates_dropped: u64,
    /// Media events (RTP, Sender Reports) dropped because the consumer's queue was full (a
    /// slow disk): the queue stays bounded, the loss is counted here and shows up as a gap.
    pub media_dropped: u64,
}

/// Everything a session reports.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Our answer to a WebSocket offer: send it to the publisher over signalling.
    LocalAnswer {
        /// Answer SDP.
        sdp: String,
    },
    /// A local ICE candidate (with `sdpMid` = first BUNDLE mid of the offer) for signalling.
    LocalCandidate(IceCandidate),
    /// A remote track started. `supported` is false for video in a codec the recorder does not
    /// know and for non-Opus audio, whose packets are then not forwarded.
    TrackStarted {
        /// Which track.
        kind: TrackKind,
        /// Codec MIME type, e.g. `video/H264`.
        mime: String,
        /// For video, the codec (when it is one the recorder records).
        codec: Option<VideoCodec>,
        /// Media SSRC.
        ssrc: u32,
        /// Whether its packets will be forwarded.
        supported: bool,
    },
    /// A signalling data channel opened (the viewer request has been sent on it).
    DataChannelOpen {
        /// Channel label.
        label: String,
    },
    /// A renegotiation offer from the data channel was answered there.
    Renegotiated,
    /// The publisher said its label (display name) over the data channel.
    PublisherLabel(String),
    /// A remote offer was applied and answered; it sends these media (see
    /// [`super::offered_media`]). Comes before any packet of the offered tracks, so the
    /// recorder knows which tracks to expect.
    MediaOffered {
        /// The offer sends video, in this codec as far as the answer tells
        /// ([`super::answer_video_codec`]); `None` also when the codec is not one we record.
        video: Option<VideoCodec>,
        /// The offer sends audio.
        audio: bool,
    },
    /// Connection state changed.
    State(ConnectionState),
    /// Media.
    Media(MediaEvent),
    /// RTP packets read together from the shared port.
    MediaBatch(MediaBatch),
    /// The session is over; nothing follows.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Final counters.
        stats: SessionStats,
    },
}

/// The session task is gone (it sent `Closed` already).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer session has ended")]
pub struct SessionGone;

enum Command {
    Offer(String),
    Candidate(IceCandidate),
    Keyframe,
    Close,
}

/// Inputs of a session. Cloneable; dropping every clone closes the session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    tx: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

impl SessionHandle {
    /// Media events dropped so far because the receiver of the events fell behind (live,
    /// for the status page; the final count comes with [`SessionEvent::Closed`]).
    pub fn media_dropped(&self) -> u64 {
        self.counters.media_dropped.load(Ordering::Relaxed)
    }

    /// Apply a remote offer received over the WebSocket; the answer comes back as
    /// [`SessionEvent::LocalAnswer`].
    pub async fn remote_offer(&self, sdp: String) -> Result<(), SessionGone> {
        self.tx
            .send(Command::Offer(sdp))
            .await
            .map_err(|_| SessionGone)
    }

    /// Add a remote candidate; queued until the remote description is set.
    pub async fn remote_candidate(&self, candidate: IceCandidate) -> Result<(), SessionGone> {
        self.tx
            .send(Command::Candidate(candidate))
            .await
            .map_err(|_| SessionGone)
    }

    /// Ask for a keyframe (PLI) now; the caller rate-limits (the core does). Never blocks; a request that
    /// finds the queue full is dropped (one is already pending).
    pub fn request_keyframe(&self) -> Result<(), SessionGone> {
        match self.tx.try_send(Command::Keyframe) {
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SessionGone),
            _ => Ok(()),
        }
    }

    /// Say `{"bye":true}` on the data channel(s) and close the connection. The session then
    /// emits `Closed { reason: LocalClose }`.
    pub async fn close(&self) -> Result<(), SessionGone> {
        self.tx.send(Command::Close).await.map_err(|_| SessionGone)
    }
}

/// Starts a receiving session task on the current tokio runtime.
pub fn spawn(config: SessionConfig) -> (SessionHandle, mpsc::Receiver<SessionEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(16));
    let counters = Arc::new(Counters::default());
    tokio::spawn(run(config, cmd_rx, ev_tx, counters.clone()));
    (
        SessionHandle {
            tx: cmd_tx,
            counters,
        },
        ev_rx,
    )
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) video_packets: AtomicU64,
    pub(crate) audio_packets: AtomicU64,
    pub(crate) sender_reports: AtomicU64,
    pub(crate) media_dropped: AtomicU64,
    /// Packets in [`MediaBatch`]es sent and not yet dropped by the consumer.
    pub(crate) batched: AtomicUsize,
}

struct Channel {
    dc: Arc<dyn DataChannel>,
    signalling: bool,
    request_sent: bool,
    closed: bool,
}

/// Where the answer to an offer goes.
enum Reply {
    WebSocket,
    DataChannel {
        index: usize,
        session: Value,
        encrypted: bool,
    },
}

struct Session {
    config: SessionConfig,
    pc: Arc<dyn PeerConnection>,
    events: mpsc::Sender<SessionEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    counters: Arc<Counters>,
    stats: SessionStats,
    remote_set: bool,
    pending: Vec<IceCandidate>,
    bundle_mid: Option<String>,
    channels: Vec<Channel>,
    video: Option<(Arc<dyn TrackRemote>, u32)>,
    /// On the shared port: this connection's ICE ufrag, which names it to the port.
    ufrag: Option<String>,
    /// The track the shared port's feedback is sent on (the first one).
    feedback_track: Option<Arc<dyn TrackRemote>>,
    readers: Vec<JoinHandle<()>>,
    connected_once: bool,
    ice_deadline: Option<tokio::time::Instant>,
    vanish_deadline: Option<tokio::time::Instant>,
}

async fn build_pc(
    config: &SessionConfig,
    handler: Arc<super::Forwarder>,
    ufrag_out: &mut Option<String>,
    port_feeds: &super::feedback_gate::PortFeeds,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let (media_engine, mut registry) = media_setup(super::MediaDirection::Receive)?;
    let loopback = config.udp_addrs.iter().any(|a| a.starts_with("127."));
    let mut se = SettingEngineBuilder::new().with_include_loopback_candidate(loopback);
    let mut builder = PeerConnectionBuilder::new();
    let mut udp_addrs = config.udp_addrs.clone();
    let mut ice_servers = rtc_ice_servers(&config.ice_servers);
    if let Some(mux) = &config.udp_mux {
        // The connection's own socket is a loopback placeholder that names it inside
        // webrtc-rs; its packets go through the shared port, known by this ufrag. No mDNS
        // socket, no STUN/TURN: publishers reach the shared port directly.
        let (ufrag, pwd) = ice_credentials();
        *ufrag_out = Some(ufrag.clone());
        registry = super::shared_port_chain(mux, &ufrag, port_feeds.clone());
        builder = builder.with_runtime(mux.runtime_for(&ufrag, config.tcp_mux.as_ref()));
        if config.tcp_mux.is_some() {
            // Also a placeholder: the shared TCP port hands this connection its streams.
            builder = builder.with_tcp_addrs(vec!["127.0.0.1:0".to_owned()]);
        }
        se = se
            .with_include_loopback_candidate(true)
            .with_ice_credentials(ufrag, pwd)
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
        udp_addrs = vec!["127.0.0.1:0".to_owned()];
        ice_servers.clear();
    }
    if config.dtls_server {
        // See `SessionConfig::dtls_server`.
        se = se.with_answering_dtls_role(RTCDtlsRole::Server);
    }
    se = super::with_ice_timeouts(se, config.ice_timeouts, config.ice_keepalive);
    let rtc_config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .build();
    let pc = builder
        .with_configuration(rtc_config)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(se.build())
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// A random ICE username fragment (16 characters, it routes the shared port's datagrams)
/// and password (24, RFC 8445 asks 22 or more).
fn ice_credentials() -> (String, String) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
            .collect()
    };
    (pick(16), pick(24))
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

async fn run(
    config: SessionConfig,
    mut cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<SessionEvent>,
    counters: Arc<Counters>,
) {
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let handler = Arc::new(super::Forwarder {
        tx: internal_tx.clone(),
    });
    let mut ufrag = None;
    let port_feeds = super::feedback_gate::PortFeeds::default();
    let pc = match build_pc(&config, handler, &mut ufrag, &port_feeds).await {
        Ok(pc) => pc,
        Err(e) => {
            warn!(label = %config.label, "cannot create peer connection: {e}");
            let _ = events
                .send(SessionEvent::Closed {
                    reason: CloseReason::Setup(e.to_string()),
                    stats: SessionStats::default(),
                })
                .await;
            return;
        }
    };
    // On the shared port, the port takes the recorded tracks' packets and makes the feedback
    // (see `udp_mux::media_path`); the feedback comes back here to be sent.
    let mut feedback_rx = None;
    if let (Some(mux), Some(ufrag)) = (&config.udp_mux, &ufrag) {
        let (rtcp, rx) = mpsc::channel(FEEDBACK_QUEUE);
        mux.attach(
            ufrag,
            super::udp_mux::media_path::Sink {
                events: events.clone(),
                counters: counters.clone(),
                batch_limit: config.event_capacity.max(16),
                rtcp,
                port_feeds,
            },
        );
        feedback_rx = Some(rx);
    }
    let mut s = Session {
        config,
        pc,
        events,
        internal_tx,
        counters,
        stats: SessionStats::default(),
        remote_set: false,
        pending: Vec::new(),
        bundle_mid: None,
        channels: Vec::new(),
        video: None,
        ufrag,
        feedback_track: None,
        readers: Vec::new(),
        connected_once: false,
        ice_deadline: None,
        vanish_deadline: None,
    };
    let mut next_pli = s
        .config
        .keyframe_interval
        .map(|d| tokio::time::Instant::now() + d);

    let reason = loop {
        let ice_deadline = s.ice_deadline.unwrap_or_else(far_future);
        let vanish_deadline = s.vanish_deadline.unwrap_or_else(far_future);
        let pli_deadline = next_pli.unwrap_or_else(far_future);
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                None | Some(Command::Close) => break CloseReason::LocalClose,
                Some(Command::Offer(sdp)) => {
                    if let Err(e) = s.negotiate(sdp, Reply::WebSocket).await {
                        // The error can quote the publisher's SDP: one short line.
                        let e = super::printable(&e.to_string(), 200);
                        if !s.remote_set {
                            // Said by the recorder, within its per-publisher log budget.
                            debug!(label = %s.config.label, "offer rejected: {e}");
                            break CloseReason::Negotiation(e);
                        }
                        warn!(label = %s.config.label, "offer rejected: {e}");
                    }
                }
                Some(Command::Candidate(c)) => s.remote_candidate(c).await,
                Some(Command::Keyframe) => s.send_pli().await,
            },
            Some(rtcp) = async { feedback_rx.as_mut()?.recv().await } => s.send_feedback(rtcp).await,
            Some(ev) = internal_rx.recv() => {
                if let Some(reason) = s.internal(ev).await {
                    break reason;
                }
            }
            _ = tokio::time::sleep_until(ice_deadline) => {
                warn!(label = %s.config.label, "ICE did not connect in time");
                break CloseReason::IceTimeout;
            }
            _ = tokio::time::sleep_until(vanish_deadline) => {
                // What the data channel did says which side stopped (a publisher drops a
                // viewer whose pings go unanswered).
                warn!(
                    label = %s.config.label,
                    channels = s.channels.len(),
                    pings_answered = s.stats.pings_answered,
                    "publisher vanished (connection lost)"
                );
                break CloseReason::PublisherVanished;
            }
            _ = tokio::time::sleep_until(pli_deadline) => {
                s.send_pli().await;
                next_pli = s.config.keyframe_interval.map(|d| tokio::time::Instant::now() + d);
            }
        }
        if s.events.is_closed() {
            break CloseReason::LocalClose;
        }
    };
    s.shutdown(reason).await;
}

impl Session {
    async fn emit(&self, ev: SessionEvent) {
        let _ = self.events.send(ev).await;
    }

    async fn negotiate(&mut self, sdp: String, reply: Reply) -> Result<(), webrtc::error::Error> {
        if let Some(mid) = first_bundle_mid(&sdp) {
            self.bundle_mid = Some(mid);
        }
        let (video, audio) = super::offered_media(&sdp);
        let offer = RTCSessionDescription::offer(sdp)?;
        self.pc.set_remote_description(offer).await?;
        if !self.remote_set {
            self.remote_set = true;
            for c in std::mem::take(&mut self.pending) {
                if let Err(e) = self.pc.add_ice_candidate(super::candidate_init(&c)).await {
                    debug!("queued candidate rejected: {e}");
                    self.stats.candidates_dropped += 1;
                }
            }
        }
        let answer = self.pc.create_answer(None).await?;
        let answer_sdp = match &self.config.udp_mux {
            Some(mux) => super::udp_mux::announce::rewrite_sdp(&answer.sdp, self.announce(mux)),
            None => answer.sdp.clone(),
        };
        let video = if video {
            let codec = super::answer_video_codec(&answer_sdp);
            if codec.is_none() {
                warn!(
                    label = %self.config.label,
                    "the publisher offers video in no codec we record (H.264, VP8, VP9, AV1): \
                     its video is NOT recorded"
                );
            }
            codec
        } else {
            None
        };
        self.emit(SessionEvent::MediaOffered { video, audio }).await;
        self.pc.set_local_description(answer).await?;
        match reply {
            Reply::WebSocket => {
                if self.ice_deadline.is_none() && !self.connected_once {
                    self.ice_deadline =
                        Some(tokio::time::Instant::now() + self.config.ice_connect_timeout);
                }
                self.emit(SessionEvent::LocalAnswer { sdp: answer_sdp })
                    .await;
            }
            Reply::DataChannel {
                index,
                session,
                encrypted,
            } => {
                let cipher = if encrypted {
                    self.config.cipher.as_deref()
                } else {
                    None
                };
                let text = dc::description("answer", &answer_sdp, &session, cipher);
                self.send_dc(index, &text).await;
                self.stats.renegotiations += 1;
                self.emit(SessionEvent::Renegotiated).await;
            }
        }
        Ok(())
    }

    /// What publishers are told of the shared ports.
    fn announce<'a>(
        &'a self,
        udp: &'a super::udp_mux::UdpMux,
    ) -> super::udp_mux::announce::Announce<'a> {
        super::udp_mux::announce::Announce {
            udp: udp.announce(),
            tcp: self.config.tcp_mux.as_ref().map_or(&[], |t| t.announce()),
        }
    }

    async fn remote_candidate(&mut self, c: IceCandidate) {
        if self.config.tcp_mux.is_some() && super::udp_mux::announce::is_passive_tcp(&c.candidate) {
            // webrtc-rs would connect out to it; behind the shared TCP port we only listen
            // (the publisher connects to ours).
            debug!(candidate = %c.candidate, "passive TCP candidate of the publisher not used");
            return;
        }
        if !self.remote_set {
            if self.pending.len() < MAX_PENDING_CANDIDATES {
                self.pending.push(c);
            } else {
                self.stats.candidates_dropped += 1;
            }
            return;
        }
        if let Err(e) = self.pc.add_ice_candidate(super::candidate_init(&c)).await {
            debug!("remote candidate rejected: {e}");
            self.stats.candidates_dropped += 1;
        }
    }

    /// Sends RTCP the shared port's feedback chain made, through webrtc-rs (which encrypts
    /// it with the connection's SRTCP context), on any track of the connection: RTCP is per
    /// connection. Before the first track it is dropped (the first feedback is due 100 ms
    /// after the first packet, and a track starts with its first packet). Never waits long:
    /// the session also answers the publisher's pings, so feedback that webrtc-rs cannot take
    /// at once (its queue full) is dropped, as the network may drop it. Either drop is counted
    /// with the port's own (`ninjarec_udp_port_feedback_dropped_total`).
    async fn send_feedback(&mut self, rtcp: super::udp_mux::media_path::Rtcp) {
        let sent = match &self.feedback_track {
            None => false,
            Some(track) => {
                match tokio::time::timeout(FEEDBACK_SEND_WAIT, track.write_rtcp(rtcp)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        debug!("feedback not sent: {e}");
                        false
                    }
                    Err(_) => {
                        debug!("feedback not sent: webrtc-rs's queue stayed full");
                        false
                    }
                }
            }
        };
        if !sent && let Some(mux) = &self.config.udp_mux {
            let dropped = &mux.counters().media.feedback_dropped;
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a PLI for the video track now. Not rate-limited here: the one limiter is the
    /// recording core's (`StreamMuxer::take_keyframe_request`), and `--keyframe-interval`
    /// is periodic by itself.
    async fn send_pli(&mut self) {
        let Some((track, ssrc)) = &self.video else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: *ssrc,
        };
        match track.write_rtcp(vec![Box::new(pli)]).await {
            Ok(()) => {
                self.stats.plis_sent += 1;
                debug!(label = %self.config.label, n = self.stats.plis_sent, "PLI sent");
            }
            Err(e) => debug!("PLI not sent: {e}"),
        }
    }

    async fn send_dc(&self, index: usize, text: &str) {
        if let Some(ch) = self.channels.get(index)
            && let Err(e) = ch.dc.send_text(text).await
        {
            debug!("data-channel send failed: {e}");
        }
    }

    /// Handles one internal event; `Some(reason)` ends the session.
    async fn internal(&mut self, ev: Internal) -> Option<CloseReason> {
        match ev {
            Internal::Candidate(ev) => match ev.candidate.to_json() {
                Ok(init) => {
                    let candidates = match &self.config.udp_mux {
                        Some(mux) => super::udp_mux::announce::rewrite_candidate(
                            &init.candidate,
                            self.announce(mux),
                        ),
                        None => vec![init.candidate],
                    };
                    for candidate in candidates {
                        let c = IceCandidate {
                            candidate,
                            sdp_mline_index: Some(0),
                            sdp_mid: self.bundle_mid.clone().or(init.sdp_mid.clone()),
                        };
                        self.emit(SessionEvent::LocalCandidate(c)).await;
                    }
                }
                Err(e) => debug!("local candidate not serialisable: {e}"),
            },
            Internal::State(state) => return self.state(state).await,
            Internal::Track(track) => self.track(track).await,
            Internal::DataChannel(dc) => self.data_channel(dc).await,
            Internal::DcOpen(i) => self.dc_open(i).await,
            Internal::DcMessage(i, data) => return self.dc_message(i, &data).await,
            Internal::DcClosed(i) => {
                if let Some(ch) = self.channels.get_mut(i) {
                    ch.closed = true;
                }
                let signalling: Vec<_> = self.channels.iter().filter(|c| c.signalling).collect();
                if !signalling.is_empty() && signalling.iter().all(|c| c.closed) {
                    info!(label = %self.config.label, "data channel closed by publisher");
                    return Some(CloseReason::DataChannelClosed);
                }
            }
        }
        None
    }

    async fn state(&mut self, state: RTCPeerConnectionState) -> Option<CloseReason> {
        debug!(label = %self.config.label, "connection state {state}");
        self.emit(SessionEvent::State(state.into())).await;
        match state {
            RTCPeerConnectionState::Connected => {
                self.connected_once = true;
                self.ice_deadline = None;
                self.vanish_deadline = None;
            }
            // Only a publisher that was connected can vanish: before that the connect timeout
            // rules, and a handshake slowed by loss (nothing flows but its retransmissions)
            // lets ICE report Disconnected between them without anyone being gone.
            RTCPeerConnectionState::Disconnected
                if self.connected_once && self.vanish_deadline.is_none() =>
            {
                self.vanish_deadline =
                    Some(tokio::time::Instant::now() + self.config.vanish_timeout);
            }
            // ICE is back (its path works again): whatever comes next, nobody vanished.
            RTCPeerConnectionState::Connecting => self.vanish_deadline = None,
            RTCPeerConnectionState::Failed => {
                return Some(if self.connected_once {
                    CloseReason::PublisherVanished
                } else {
                    CloseReason::IceFailed
                });
            }
            RTCPeerConnectionState::Closed => return Some(CloseReason::LocalClose),
            _ => {}
        }
        None
    }

    async fn track(&mut self, track: Arc<dyn TrackRemote>) {
        let kind = match track.kind().await {
            RtpCodecKind::Video => TrackKind::Video,
            RtpCodecKind::Audio => TrackKind::Audio,
            other => {
                warn!("ignoring track of kind {other}");
                return;
            }
        };
        let ssrc = track.ssrcs().await.first().copied();
        let mime = match ssrc {
            Some(ssrc) => track
                .codec(ssrc)
                .await
                .map(|c| c.mime_type)
                .unwrap_or_default(),
            None => String::new(),
        };
        let codec = match kind {
            TrackKind::Video => VideoCodec::from_mime(&mime),
            TrackKind::Audio => None,
        };
        let supported = match kind {
            TrackKind::Video => codec.is_some(),
            TrackKind::Audio => mime.eq_ignore_ascii_case(MIME_TYPE_OPUS),
        };
        if !supported {
            warn!(
                label = %self.config.label,
                "publisher sends {kind:?} as {mime:?}, not {}: this track is NOT recorded",
                if kind == TrackKind::Video { "H.264, VP8, VP9 or AV1" } else { "Opus" }
            );
        } else {
            info!(label = %self.config.label, "{kind:?} track started: {mime}");
        }
        self.emit(SessionEvent::TrackStarted {
            kind,
            mime,
            codec,
            ssrc: ssrc.unwrap_or_default(),
            supported,
        })
        .await;
        if self.feedback_track.is_none() {
            self.feedback_track = Some(track.clone());
        }
        if supported
            && let Some(ssrc) = ssrc
            && let (Some(mux), Some(ufrag)) = (&self.config.udp_mux, &self.ufrag)
        {
            mux.route(ufrag, ssrc, kind);
        }
        let reader = tokio::spawn(read_track(
            track.clone(),
            kind,
            supported,
            self.events.clone(),
            self.counters.clone(),
        ));
        self.readers.push(reader);
        if kind == TrackKind::Video
            && supported
            && let Some(ssrc) = ssrc
        {
            self.video = Some((track, ssrc));
            self.send_pli().await;
        }
    }

    async fn data_channel(&mut self, dc: Arc<dyn DataChannel>) {
        if self.channels.len() >= MAX_DATA_CHANNELS {
            warn!("too many data channels; ignoring one");
            return;
        }
        let label = dc.label().await.unwrap_or_default();
        let index = self.channels.len();
        self.channels.push(Channel {
            dc: dc.clone(),
            signalling: label == SIGNALLING_LABEL,
            request_sent: false,
            closed: false,
        });
        let tx = self.internal_tx.clone();
        super::pump_data_channel(dc.clone(), index, tx);
        if matches!(
            self.channels[index].dc.ready_state().await,
            Ok(webrtc::data_channel::RTCDataChannelState::Open)
        ) {
            self.dc_open(index).await;
        }
    }

    async fn dc_open(&mut self, index: usize) {
        let Some(ch) = self.channels.get_mut(index) else {
            return;
        };
        if !ch.signalling || ch.request_sent {
            return;
        }
        ch.request_sent = true;
        let label = ch.dc.label().await.unwrap_or_default();
        let req = dc::viewer_request(
            self.config.want_audio,
            self.config.want_video,
            self.config.prefer_video_codec,
            &self.config.label,
        );
        self.send_dc(index, &req).await;
        self.emit(SessionEvent::DataChannelOpen { label }).await;
    }

    async fn dc_message(&mut self, index: usize, data: &[u8]) -> Option<CloseReason> {
        if !self.channels.get(index).is_some_and(|c| c.signalling) {
            return None;
        }
        let msg = match dc::parse(data, self.config.cipher.as_deref()) {
            Ok(m) => m,
            Err(e) => {
                debug!(label = %self.config.label, "data-channel message dropped: {e}");
                self.stats.dc_dropped += 1;
                return None;
            }
        };
        match msg {
            DcMessage::Bye => {
                info!(label = %self.config.label, "publisher said bye");
                return Some(CloseReason::Bye);
            }
            DcMessage::Ping(v) => {
                self.send_dc(index, &dc::pong(&v)).await;
                self.stats.pings_answered += 1;
            }
            DcMessage::Description {
                description,
                session,
            } => {
                if description.sdp_type != "offer" {
                    self.stats.dc_dropped += 1;
                    return None;
                }
                let reply = Reply::DataChannel {
                    index,
                    session,
                    encrypted: description.encrypted,
                };
                if let Err(e) = self.negotiate(description.sdp, reply).await {
                    let e = super::printable(&e.to_string(), 200);
                    self.stats.dc_dropped += 1;
                    // Once per session at warn: a publisher can send these as fast as it likes.
                    if self.stats.dc_dropped == 1 {
                        warn!(label = %self.config.label, "renegotiation failed: {e}");
                    } else {
                        debug!(label = %self.config.label, "renegotiation failed: {e}");
                    }
                }
            }
            DcMessage::Candidates(list) => {
                for c in list {
                    self.remote_candidate(c).await;
                }
            }
            DcMessage::Info { label: Some(label) } => {
                self.emit(SessionEvent::PublisherLabel(label)).await;
            }
            DcMessage::Pong(_)
            | DcMessage::ViewerRequest { .. }
            | DcMessage::Info { label: None }
            | DcMessage::Other => {}
        }
        None
    }

    async fn shutdown(mut self, reason: CloseReason) {
        if reason == CloseReason::LocalClose {
            let open: Vec<_> = self
                .channels
                .iter()
                .filter(|c| c.signalling && !c.closed)
                .map(|c| c.dc.clone())
                .collect();
            super::say_bye(&open).await;
        }
        if let Err(e) = self.pc.close().await {
            debug!("close: {e}");
        }
        for r in std::mem::take(&mut self.readers) {
            let abort = r.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, r).await.is_err() {
                abort.abort();
            }
        }
        // Like the readers: what the shared port took is queued before `Closed`.
        if let (Some(mux), Some(ufrag)) = (&self.config.udp_mux, &self.ufrag) {
            mux.detach(ufrag).await;
        }
        self.stats.video_packets = self.counters.video_packets.load(Ordering::Relaxed);
        self.stats.audio_packets = self.counters.audio_packets.load(Ordering::Relaxed);
        self.stats.sender_reports = self.counters.sender_reports.load(Ordering::Relaxed);
        self.stats.media_dropped = self.counters.media_dropped.load(Ordering::Relaxed);
        // The recorder says why in one line (within its per-publisher log budget); the
        // session's own view is detail.
        debug!(label = %self.config.label, ?reason, stats = ?self.stats, "peer session closed");
        let stats = self.stats.clone();
        self.emit(SessionEvent::Closed { reason, stats }).await;
    }
}

/// Drains one remote track until it ends, forwarding RTP and Sender Reports.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    kind: TrackKind,
    forward: bool,
    events: mpsc::Sender<SessionEvent>,
    counters: Arc<Counters>,
) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                if !forward || p.payload.is_empty() {
                    continue;
                }
                let counter = match kind {
                    TrackKind::Video => &counters.video_packets,
                    TrackKind::Audio => &counters.audio_packets,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let packet = RtpPacket {
                    sequence: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    marker: p.header.marker,
                    ssrc: p.header.ssrc,
                    payload_type: p.header.payload_type,
                    payload: p.payload,
                };
                let ev = MediaEvent::Rtp {
                    kind,
                    packet,
                    arrival: Instant::now(),
                };
                if !forward_media(&events, &counters, ev) {
                    return;
                }
            }
            TrackRemoteEvent::OnRtcpPacket(packets) => {
                // Forwarded even from a track that is not recorded: the compound packet may
                // carry the other track's report.
                for p in packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        counters.sender_reports.fetch_add(1, Ordering::Relaxed);
                        let ev = MediaEvent::SenderReport {
                            ssrc: sr.ssrc,
                            ntp: sr.ntp_time,
                            rtp_timestamp: sr.rtp_time,
                            arrival: Instant::now(),
                        };
                        if !forward_media(&events, &counters, ev) {
                            return;
                        }
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// Hands one media event to the consumer without waiting: a full queue (the recorder is behind,
/// e.g. on a slow disk) drops the event and counts it, so memory stays bounded and the track
/// reader never stalls the connection. Returns false when the consumer is gone.
fn forward_media(events: &mpsc::Sender<SessionEvent>, counters: &Counters, ev: MediaEvent) -> bool {
    match events.try_send(SessionEvent::Media(ev)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            counters.media_dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
