//! A test publisher: a webrtc-rs peer that streams a [`Clip`] (H.264 + Opus) in real time, looped,
//! behaving like one of the two VDO.Ninja publishers.
//!
//! Used by `ninjarec selftest`, the end-to-end tests and the load benchmark, so the receiver can be
//! exercised without a browser or Raspberry Ninja. Same shape as the receiving session: [`spawn`]
//! returns a handle (remote answer, remote candidates, close) and an event receiver (local offer,
//! local candidates, states, what the viewer asked for).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::Sample;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder, RTCPeerConnectionState,
    RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use super::Internal;
use super::dc::{self, DcMessage};
use super::session::SIGNALLING_LABEL;
use super::{
    ConnectionState, IceCandidate, IceServer, OPUS_PAYLOAD_TYPE, first_bundle_mid, media_setup,
    rtc_ice_servers,
};
use crate::testkit::clip::Clip;

/// Which VDO.Ninja publisher to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherMode {
    /// Raspberry Ninja: media and the data channel in the first offer, a second `sendChannel`
    /// once connected, pings every [`PublisherConfig::ping_interval`].
    MediaInFirstOffer,
    /// The web app: the first offer carries only the data channel; tracks are added and offered
    /// over the data channel once the viewer's request arrives.
    DataChannelFirst,
}

/// Test publisher settings.
#[derive(Clone)]
pub struct PublisherConfig {
    /// Publisher behaviour.
    pub mode: PublisherMode,
    /// What to stream (looped).
    pub clip: Arc<Clip>,
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP sockets (`"127.0.0.1:0"` in tests).
    pub udp_addrs: Vec<String>,
    /// Data-channel ping period; `None` sends none (the web app does not ping viewers).
    pub ping_interval: Option<Duration>,
    /// The `session` value echoed on data-channel descriptions.
    pub session: Value,
    /// ICE consent timeouts (disconnected, failed); `None` = webrtc-rs defaults.
    pub ice_timeouts: Option<(Duration, Duration)>,
    /// ICE keepalive interval, the period of a connected agent's timer; `None` = a third of
    /// the disconnected timeout, at most 2 s. A long one lets a test see that nothing in
    /// connection set-up waits for that timer.
    pub ice_keepalive: Option<Duration>,
    /// Align the clip's loops to the Unix clock: each loop starts at a whole multiple of the
    /// clip's length (Unix time), so publishers started at different times send the same
    /// frame at the same wall-clock instant (media starts mid-loop, at the next frame due).
    /// Lets a test check that files of different publishers line up.
    pub wall_aligned: bool,
    /// A display name sent to each viewer in an `info` message, like the web app's `&label=`.
    pub label: Option<String>,
}

impl PublisherConfig {
    /// Defaults for `mode` with the built-in clip, on loopback, pinging like the real publisher.
    pub fn new(mode: PublisherMode) -> PublisherConfig {
        PublisherConfig {
            mode,
            clip: Arc::new(Clip::builtin()),
            ice_servers: Vec::new(),
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            ping_interval: match mode {
                PublisherMode::MediaInFirstOffer => Some(Duration::from_secs(3)),
                PublisherMode::DataChannelFirst => None,
            },
            session: Value::String("testsessn0".to_owned()),
            ice_timeouts: None,
            ice_keepalive: None,
            wall_aligned: false,
            label: None,
        }
    }
}

/// Why a test publisher stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherCloseReason {
    /// The viewer said `{"bye":true}`.
    Bye,
    /// [`PublisherHandle::close`] or all handles dropped.
    LocalClose,
    /// Every data channel closed.
    DataChannelClosed,
    /// The connection failed.
    Failed,
    /// An SDP could not be applied.
    Negotiation(String),
    /// The peer connection could not be created.
    Setup(String),
}

/// What a test publisher reports.
#[derive(Debug, Clone)]
pub enum PublisherEvent {
    /// The first offer, for signalling.
    LocalOffer {
        /// Offer SDP.
        sdp: String,
    },
    /// A local candidate for signalling.
    LocalCandidate(IceCandidate),
    /// Connection state changed.
    State(ConnectionState),
    /// The viewer's request arrived on the data channel.
    ViewerRequest {
        /// Wants audio.
        audio: bool,
        /// Wants video.
        video: bool,
        /// `preferVideoCodec`.
        prefer_video_codec: Option<String>,
    },
    /// The viewer answered our data-channel renegotiation offer.
    Renegotiated,
    /// Media tasks started (after the negotiation that carries the tracks).
    MediaStarted,
    /// The viewer answered one of our pings.
    Pong(Value),
    /// Stopped; nothing follows.
    Closed {
        /// Why.
        reason: PublisherCloseReason,
    },
}

enum Command {
    Answer(String),
    Candidate(IceCandidate),
    Close { say_bye: bool },
}

/// Inputs of a test publisher.
#[derive(Clone, Debug)]
pub struct PublisherHandle {
    tx: mpsc::Sender<Command>,
}

/// The publisher task is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("test publisher has ended")]
pub struct PublisherGone;

impl PublisherHandle {
    /// Apply the viewer's answer (from signalling).
    pub async fn remote_answer(&self, sdp: String) -> Result<(), PublisherGone> {
        self.tx
            .send(Command::Answer(sdp))
            .await
            .map_err(|_| PublisherGone)
    }

    /// Add a viewer candidate; queued until the answer is applied.
    pub async fn remote_candidate(&self, c: IceCandidate) -> Result<(), PublisherGone> {
        self.tx
            .send(Command::Candidate(c))
            .await
            .map_err(|_| PublisherGone)
    }

    /// Say `{"bye":true}` and close.
    pub async fn close(&self) -> Result<(), PublisherGone> {
        self.tx
            .send(Command::Close { say_bye: true })
            .await
            .map_err(|_| PublisherGone)
    }

    /// Close the connection without saying bye (the viewer sees the data channel close).
    pub async fn close_without_bye(&self) -> Result<(), PublisherGone> {
        self.tx
            .send(Command::Close { say_bye: false })
            .await
            .map_err(|_| PublisherGone)
    }
}

/// Starts a test publisher task on the current tokio runtime.
pub fn spawn(config: PublisherConfig) -> (PublisherHandle, mpsc::Receiver<PublisherEvent>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    tokio::spawn(run(config, cmd_rx, ev_tx));
    (PublisherHandle { tx: cmd_tx }, ev_rx)
}

struct OutTrack {
    kind: RtpCodecKind,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

struct Publisher {
    config: PublisherConfig,
    pc: Arc<dyn PeerConnection>,
    events: mpsc::Sender<PublisherEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    channels: Vec<(Arc<dyn DataChannel>, bool)>,
    tracks: Vec<OutTrack>,
    remote_set: bool,
    pending: Vec<IceCandidate>,
    mid: Option<String>,
    media: Vec<JoinHandle<()>>,
    second_channel_opened: bool,
    ping_seq: u64,
}

async fn build_pc(
    config: &PublisherConfig,
    handler: Arc<super::Forwarder>,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let (media_engine, registry) = media_setup(super::MediaDirection::Send)?;
    let loopback = config.udp_addrs.iter().any(|a| a.starts_with("127."));
    let mut se = SettingEngineBuilder::new().with_include_loopback_candidate(loopback);
    se = super::with_ice_timeouts(se, config.ice_timeouts, config.ice_keepalive);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(rtc_ice_servers(&config.ice_servers))
                .build(),
        )
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(se.build())
        .with_handler(handler)
        .with_udp_addrs(config.udp_addrs.clone())
        .build()
        .await?;
    Ok(Arc::new(pc))
}

async fn run(
    config: PublisherConfig,
    mut cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<PublisherEvent>,
) {
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let handler = Arc::new(super::Forwarder {
        tx: internal_tx.clone(),
    });
    let pc = match build_pc(&config, handler).await {
        Ok(pc) => pc,
        Err(e) => {
            let reason = PublisherCloseReason::Setup(e.to_string());
            let _ = events.send(PublisherEvent::Closed { reason }).await;
            return;
        }
    };
    let mut p = Publisher {
        config,
        pc,
        events,
        internal_tx,
        channels: Vec::new(),
        tracks: Vec::new(),
        remote_set: false,
        pending: Vec::new(),
        mid: None,
        media: Vec::new(),
        second_channel_opened: false,
        ping_seq: 0,
    };
    if let Err(e) = p.first_offer().await {
        p.shutdown(PublisherCloseReason::Negotiation(e.to_string()), false)
            .await;
        return;
    }
    let ping_period = p.config.ping_interval;
    let mut next_ping = ping_period.map(|d| tokio::time::Instant::now() + d);
    let (reason, say_bye) = loop {
        let ping_at =
            next_ping.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                None => break (PublisherCloseReason::LocalClose, true),
                Some(Command::Close { say_bye }) => break (PublisherCloseReason::LocalClose, say_bye),
                Some(Command::Answer(sdp)) => {
                    if let Err(e) = p.apply_answer(sdp).await {
                        break (PublisherCloseReason::Negotiation(e.to_string()), false);
                    }
                }
                Some(Command::Candidate(c)) => p.remote_candidate(c).await,
            },
            Some(ev) = internal_rx.recv() => {
                if let Some(reason) = p.internal(ev).await {
                    break (reason, false);
                }
            }
            _ = tokio::time::sleep_until(ping_at) => {
                p.ping().await;
                next_ping = ping_period.map(|d| tokio::time::Instant::now() + d);
            }
        }
    };
    p.shutdown(reason, say_bye).await;
}

fn annex_b(nals: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(nals.iter().map(|n| n.len() + 4).sum());
    for n in nals {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    }
    Bytes::from(out)
}

fn dur_90k(ticks: u64) -> Duration {
    Duration::from_micros(ticks.saturating_mul(1000) / 90)
}

/// A sample's duration for webrtc-rs, which turns it into RTP ticks as
/// `(duration.as_secs_f64() * clock_rate) as u32` — a truncation, so 33.333… ms at 90 kHz gives
/// 2999 and 20 ms at 48 kHz can give 959. Rounding the duration up by a nanosecond makes every
/// frame advance the RTP clock by exactly its length; otherwise each track's RTP clock runs slow
/// against real time (0.03–0.1 %), and the Sender Reports show audio and video drifting apart.
fn sample_duration(ticks_90k: u64) -> Duration {
    Duration::from_nanos(ticks_90k.saturating_mul(1_000_000_000).div_ceil(90_000) + 1)
}

/// Streams the clip's video (or audio) frames in real time, looping, until aborted.
async fn stream(
    clip: Arc<Clip>,
    kind: RtpCodecKind,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
    start: tokio::time::Instant,
) {
    let base = clip
        .video
        .first()
        .map(|f| f.pts_90k)
        .into_iter()
        .chain(clip.audio.first().map(|f| f.pts_90k))
        .min()
        .unwrap_or(0);
    let loop_len = clip.duration_90k.max(1);
    // (pts, data, duration) for one loop
    let frames: Vec<(u64, Bytes, Duration)> = if kind == RtpCodecKind::Video {
        clip.video
            .iter()
            .enumerate()
            .map(|(i, f)| {
                // The last frame lasts until the first frame of the next loop, so the RTP clock
                // advances by exactly one loop length per loop, like the wall-clock schedule.
                // That may be well over one frame when the clip's audio runs longer.
                let next = clip
                    .video
                    .get(i + 1)
                    .map_or(clip.video[0].pts_90k + loop_len, |n| n.pts_90k);
                let d = next.saturating_sub(f.pts_90k).clamp(1, 90_000);
                (f.pts_90k - base, annex_b(&f.nals), sample_duration(d))
            })
            .collect()
    } else {
        // Like video, each packet lasts until the next one and the last until the next loop's
        // first packet, so both tracks' RTP clocks advance by exactly one loop length per loop. (Summing the
        // packets' own durations would let audio fall behind wall time by the clip's A/V length
        // difference on every loop, and the Sender Reports would drift with it.)
        clip.audio
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let next = clip
                    .audio
                    .get(i + 1)
                    .map_or(clip.audio[0].pts_90k + loop_len, |n| n.pts_90k);
                let d = next.saturating_sub(f.pts_90k).clamp(1, 90_000);
                (f.pts_90k - base, f.data.clone(), sample_duration(d))
            })
            .collect()
    };
    if frames.is_empty() {
        return;
    }
    // Frames due before the start (a wall-aligned loop that began earlier) are skipped.
    let first_due = tokio::time::Instant::now();
    for round in 0u64.. {
        for (offset, data, duration) in &frames {
            let due = start + dur_90k(round * loop_len + offset);
            if due < first_due {
                continue;
            }
            tokio::time::sleep_until(due).await;
            let sample = Sample {
                data: data.clone(),
                duration: *duration,
                ..Sample::new(Instant::now())
            };
            if let Err(e) = track
                .sample_writer(ssrc, payload_type)
                .write_sample(&sample)
                .await
            {
                debug!("test publisher: write_sample: {e}");
            }
        }
    }
}

impl Publisher {
    async fn emit(&self, ev: PublisherEvent) {
        let _ = self.events.send(ev).await;
    }

    async fn open_channel(&mut self) -> Result<(), webrtc::error::Error> {
        let dc = self.pc.create_data_channel(SIGNALLING_LABEL, None).await?;
        let index = self.channels.len();
        self.channels.push((dc.clone(), false));
        let tx = self.internal_tx.clone();
        super::pump_data_channel(dc.clone(), index, tx);
        Ok(())
    }

    async fn add_tracks(&mut self, audio: bool, video: bool) -> Result<(), webrtc::error::Error> {
        let mut kinds = Vec::new();
        if video && !self.config.clip.video.is_empty() {
            kinds.push(RtpCodecKind::Video);
        }
        if audio && !self.config.clip.audio.is_empty() {
            kinds.push(RtpCodecKind::Audio);
        }
        for kind in kinds {
            let codec = if kind == RtpCodecKind::Video {
                RTCRtpCodec {
                    mime_type: MIME_TYPE_H264.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line:
                        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                            .to_owned(),
                    rtcp_feedback: vec![],
                }
            } else {
                RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                }
            };
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    "ninjarec-test".to_owned(),
                    format!("ninjarec-test-{kind}"),
                    format!("ninjarec-test-{kind}"),
                    kind,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec,
                        ..Default::default()
                    }],
                ),
            )?);
            let sender = self
                .pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            self.tracks.push(OutTrack {
                kind,
                track,
                sender,
                ssrc,
            });
        }
        Ok(())
    }

    async fn first_offer(&mut self) -> Result<(), webrtc::error::Error> {
        self.open_channel().await?;
        if self.config.mode == PublisherMode::MediaInFirstOffer {
            self.add_tracks(true, true).await?;
        }
        let offer = self.pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        self.mid = first_bundle_mid(&sdp);
        self.pc.set_local_description(offer).await?;
        self.emit(PublisherEvent::LocalOffer { sdp }).await;
        Ok(())
    }

    async fn apply_answer(&mut self, sdp: String) -> Result<(), webrtc::error::Error> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        if !self.remote_set {
            self.remote_set = true;
            for c in std::mem::take(&mut self.pending) {
                if let Err(e) = self.pc.add_ice_candidate(super::candidate_init(&c)).await {
                    debug!("test publisher: candidate rejected: {e}");
                }
            }
        }
        self.start_media().await;
        Ok(())
    }

    async fn start_media(&mut self) {
        if !self.media.is_empty() || self.tracks.is_empty() {
            return;
        }
        let mut start = tokio::time::Instant::now();
        if self.config.wall_aligned {
            // Back to the start of the loop the Unix clock is in.
            let clip = &self.config.clip;
            let loop_us = (clip.duration_90k.max(1) * 1000 / 90) as u128;
            let unix_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let into = Duration::from_micros((unix_us % loop_us) as u64);
            start = start.checked_sub(into).unwrap_or(start);
        }
        for t in &self.tracks {
            let pt = match t.sender.get_parameters().await {
                Ok(p) => p.rtp_parameters.codecs.first().map(|c| c.payload_type),
                Err(_) => None,
            };
            let pt = pt.unwrap_or(if t.kind == RtpCodecKind::Video {
                super::H264_PROFILES[0].1
            } else {
                OPUS_PAYLOAD_TYPE
            });
            self.media.push(tokio::spawn(stream(
                self.config.clip.clone(),
                t.kind,
                t.track.clone(),
                t.ssrc,
                pt,
                start,
            )));
        }
        self.emit(PublisherEvent::MediaStarted).await;
    }

    async fn remote_candidate(&mut self, c: IceCandidate) {
        if !self.remote_set {
            if self.pending.len() < 256 {
                self.pending.push(c);
            }
            return;
        }
        if let Err(e) = self.pc.add_ice_candidate(super::candidate_init(&c)).await {
            debug!("test publisher: candidate rejected: {e}");
        }
    }

    async fn send_all(&self, text: &str) {
        for (dc, open) in &self.channels {
            if *open && let Err(e) = dc.send_text(text).await {
                debug!("test publisher: dc send: {e}");
            }
        }
    }

    async fn ping(&mut self) {
        self.ping_seq += 1;
        let v = Value::from(self.ping_seq);
        self.send_all(&dc::ping(&v)).await;
    }

    async fn internal(&mut self, ev: Internal) -> Option<PublisherCloseReason> {
        match ev {
            Internal::Candidate(ev) => {
                if let Ok(init) = ev.candidate.to_json() {
                    let c = IceCandidate {
                        candidate: init.candidate,
                        sdp_mline_index: Some(0),
                        sdp_mid: self.mid.clone(),
                    };
                    self.emit(PublisherEvent::LocalCandidate(c)).await;
                }
            }
            Internal::State(state) => {
                self.emit(PublisherEvent::State(state.into())).await;
                if state == RTCPeerConnectionState::Failed {
                    return Some(PublisherCloseReason::Failed);
                }
            }
            Internal::DcOpen(i) => {
                if let Some(ch) = self.channels.get_mut(i) {
                    ch.1 = true;
                }
                if self.config.mode == PublisherMode::MediaInFirstOffer
                    && !self.second_channel_opened
                {
                    // Raspberry Ninja opens a second `sendChannel` once connected. Opened when
                    // the first one is, so the SCTP association is up (at "connected" it may
                    // not be yet, and webrtc-rs then drops the channel's open message).
                    self.second_channel_opened = true;
                    if let Err(e) = self.open_channel().await {
                        warn!("test publisher: second data channel: {e}");
                    }
                }
            }
            Internal::DcClosed(i) => {
                if let Some(ch) = self.channels.get_mut(i) {
                    ch.1 = false;
                }
                if self.channels.iter().all(|(_, open)| !open) {
                    return Some(PublisherCloseReason::DataChannelClosed);
                }
            }
            Internal::DcMessage(i, data) => return self.dc_message(i, &data).await,
            // The publisher opens its own channels and sends, never receives, media.
            Internal::Track(_) | Internal::DataChannel(_) => {}
        }
        None
    }

    async fn dc_message(&mut self, index: usize, data: &[u8]) -> Option<PublisherCloseReason> {
        let msg = match dc::parse(data, None) {
            Ok(m) => m,
            Err(e) => {
                debug!("test publisher: dropped dc message: {e}");
                return None;
            }
        };
        match msg {
            DcMessage::Bye => return Some(PublisherCloseReason::Bye),
            DcMessage::Ping(v) => {
                if let Some((dc, _)) = self.channels.get(index) {
                    let _ = dc.send_text(&dc::pong(&v)).await;
                }
            }
            DcMessage::Pong(v) => self.emit(PublisherEvent::Pong(v)).await,
            DcMessage::ViewerRequest {
                audio,
                video,
                prefer_video_codec,
            } => {
                self.emit(PublisherEvent::ViewerRequest {
                    audio,
                    video,
                    prefer_video_codec,
                })
                .await;
                // The web app tells a viewer who it is (`&label=`) in an `info` object.
                if let (Some(label), Some((dc, _))) = (&self.config.label, self.channels.get(index))
                {
                    let info = serde_json::json!({ "info": { "label": label } });
                    let _ = dc.send_text(&info.to_string()).await;
                }
                if self.config.mode == PublisherMode::DataChannelFirst
                    && self.tracks.is_empty()
                    && let Err(e) = self.renegotiate(index, audio, video).await
                {
                    return Some(PublisherCloseReason::Negotiation(e.to_string()));
                }
            }
            DcMessage::Description { description, .. } => {
                if description.sdp_type == "answer" {
                    if let Err(e) = self.apply_answer(description.sdp).await {
                        return Some(PublisherCloseReason::Negotiation(e.to_string()));
                    }
                    self.emit(PublisherEvent::Renegotiated).await;
                }
            }
            DcMessage::Candidates(list) => {
                for c in list {
                    self.remote_candidate(c).await;
                }
            }
            DcMessage::Info { .. } | DcMessage::Other => {}
        }
        None
    }

    /// Web-app behaviour: add the requested tracks and offer them over the data channel.
    async fn renegotiate(
        &mut self,
        index: usize,
        audio: bool,
        video: bool,
    ) -> Result<(), webrtc::error::Error> {
        self.add_tracks(audio, video).await?;
        if self.tracks.is_empty() {
            return Ok(());
        }
        let offer = self.pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        self.pc.set_local_description(offer).await?;
        let text = dc::description("offer", &sdp, &self.config.session, None);
        if let Some((dc, _)) = self.channels.get(index) {
            dc.send_text(&text).await?;
        }
        info!("test publisher: renegotiation offer sent over the data channel");
        Ok(())
    }

    async fn shutdown(mut self, reason: PublisherCloseReason, say_bye: bool) {
        for m in self.media.drain(..) {
            m.abort();
        }
        if say_bye {
            let open: Vec<_> = self
                .channels
                .iter()
                .filter(|(_, open)| *open)
                .map(|(dc, _)| dc.clone())
                .collect();
            super::say_bye(&open).await;
        }
        if let Err(e) = self.pc.close().await {
            debug!("test publisher: close: {e}");
        }
        self.emit(PublisherEvent::Closed { reason }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::sample_duration;

    /// webrtc-rs's conversion, as in `TrackLocalStaticSample::write_sample`.
    fn rtp_ticks(d: std::time::Duration, clock_rate: f64) -> u32 {
        (d.as_secs_f64() * clock_rate) as u32
    }

    #[test]
    fn sample_durations_advance_the_rtp_clock_exactly() {
        for ticks in [1u64, 1800, 2999, 3000, 3003, 3600, 45_000, 90_000] {
            assert_eq!(
                u64::from(rtp_ticks(sample_duration(ticks), 90_000.0)),
                ticks
            );
        }
        // Opus: 20 ms = 1800 ticks at 90 kHz = 960 samples at 48 kHz, every size 2.5–120 ms.
        for samples in [120u64, 240, 480, 960, 1920, 2880, 5760] {
            let ticks = samples * 15 / 8;
            assert_eq!(
                u64::from(rtp_ticks(sample_duration(ticks), 48_000.0)),
                samples
            );
        }
    }
}
