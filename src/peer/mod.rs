//! One webrtc-rs peer connection per publisher.
//!
//! [`session`] is the receiving side the recorder uses: it answers a publisher's offer, keeps the
//! VDO.Ninja data-channel conversation going (viewer request, ping/pong, renegotiation, bye) and
//! hands RTP packets and RTCP Sender Reports to the recording core. [`publisher`] is a test
//! publisher that streams the built-in clip the way the two VDO.Ninja publishers do, so the
//! receiver can be exercised end to end without a browser.
//!
//! Signalling is not done here: both sides take and produce plain SDP strings and
//! [`IceCandidate`]s; the signalling layer moves them over the WebSocket.

pub mod dc;
pub(crate) mod feedback_gate;
pub mod grid;
pub mod publisher;
pub mod session;
mod sr_tap;
pub mod tcp_mux;
pub mod udp_mux;

use std::sync::Arc;
use std::time::Duration;

use rtc::interceptor::{
    NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot, TwccReceiverBuilder,
};
use rtc::peer_connection::configuration::interceptor_registry;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9,
    MediaEngine,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind, TYPE_RTCP_FB_NACK,
};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionState, SettingEngineBuilder,
    register_default_interceptors,
};

/// An ICE candidate as VDO.Ninja signalling carries it (`{"candidate","sdpMLineIndex","sdpMid"}`).
/// One type for both layers: signaling parses it, the peer session applies it.
pub use crate::signaling::message::IceCandidate;

/// The webrtc-rs form of a candidate.
/// Text that came from a remote peer (an error quoting its SDP, say) made fit for one log
/// line: control characters (CR/LF would start forged log lines) become spaces, and it is cut
/// at `max_chars`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

pub(crate) fn candidate_init(c: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: None,
        url: None,
    }
}

/// A STUN or TURN server. Kept separate from webrtc-rs's type so the CLI and config layers do
/// not depend on the WebRTC stack. TURN works over UDP only in webrtc-rs 0.21.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port` URLs.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

impl IceServer {
    /// Google's public STUN server, VDO.Ninja's default too.
    pub fn default_stun() -> IceServer {
        IceServer {
            urls: vec!["stun:stun.l.google.com:19302".to_owned()],
            username: String::new(),
            credential: String::new(),
        }
    }

    fn to_rtc(&self) -> RTCIceServer {
        RTCIceServer {
            urls: self.urls.clone(),
            username: self.username.clone(),
            credential: self.credential.clone(),
        }
    }
}

pub(crate) fn rtc_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers.iter().map(IceServer::to_rtc).collect()
}

/// Hands ICE consent timeouts (disconnected, failed) to webrtc-rs; `None` keeps its defaults.
/// The keepalive, also the period of a connected agent's timer, defaults to a third of the
/// disconnected timeout, at most 2 s: keepalives must come well inside the disconnect timeout,
/// or an idle but healthy path is declared disconnected.
pub(crate) fn with_ice_timeouts(
    se: SettingEngineBuilder,
    timeouts: Option<(Duration, Duration)>,
    keepalive: Option<Duration>,
) -> SettingEngineBuilder {
    let Some((disc, failed)) = timeouts else {
        return se;
    };
    let keepalive = keepalive.unwrap_or_else(|| (disc / 3).min(Duration::from_secs(2)));
    se.with_ice_timeouts(Some(disc), Some(failed), Some(keepalive))
}

/// Encrypts and decrypts data-channel signalling payloads (`description`/`candidates` as hex plus
/// `vector`). Implemented by the signalling layer, which owns the password and the AES code; the
/// peer layer only needs to call it.
pub trait PayloadCipher: Send + Sync {
    /// Encrypts `plaintext` (a JSON string); returns `(ciphertext_hex, iv_hex)`.
    fn encrypt(&self, plaintext: &str) -> (String, String);
    /// Decrypts `hex` with the IV `vector`; returns the JSON plaintext.
    fn decrypt(&self, hex: &str, vector: &str) -> Result<String, CipherError>;
}

/// Why an encrypted payload could not be decrypted (wrong password, corrupt hex, bad padding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decrypt payload: {0}")]
pub struct CipherError(pub String);

/// Connection state as the rest of the program sees it (a mirror of the WebRTC states, so callers
/// need not import webrtc-rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Created, nothing happened yet.
    New,
    /// ICE/DTLS in progress.
    Connecting,
    /// Media can flow.
    Connected,
    /// Consent checks are failing; may recover.
    Disconnected,
    /// ICE gave up.
    Failed,
    /// Closed locally.
    Closed,
}

impl From<RTCPeerConnectionState> for ConnectionState {
    fn from(s: RTCPeerConnectionState) -> Self {
        match s {
            RTCPeerConnectionState::Connecting => ConnectionState::Connecting,
            RTCPeerConnectionState::Connected => ConnectionState::Connected,
            RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
            RTCPeerConnectionState::Failed => ConnectionState::Failed,
            RTCPeerConnectionState::Closed => ConnectionState::Closed,
            _ => ConnectionState::New,
        }
    }
}

/// H.264 profile-level-ids registered for exact matching: constrained baseline, baseline, main,
/// high, all level 3.1 (webrtc-stack.md §3). Other profiles still match by MIME fallback.
pub const H264_PROFILES: [(&str, u8); 4] = [
    ("42e01f", 102),
    ("42001f", 104),
    ("4d001f", 106),
    ("64001f", 108),
];

/// Opus payload type we register (the browsers' usual 111).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// The other video codecs registered beside H.264, with the payload types our own offers use
/// (an answer takes the publisher's numbers) and their `a=fmtp` line: VP8, VP9 profile 0 (8-bit
/// 4:2:0, what browsers send; other profiles still match by MIME fallback) and AV1. Each also
/// gets RTX at the next payload type.
pub const OTHER_VIDEO_CODECS: [(&str, &str, u8); 3] = [
    (MIME_TYPE_VP8, "", 96),
    (MIME_TYPE_VP9, "profile-id=0", 98),
    (MIME_TYPE_AV1, "", 41),
];

/// Which way media flows on a connection: it decides which interceptors see its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaDirection {
    /// The recorder: it only receives. Every interceptor in the chain handles every packet
    /// that arrives, so the ones that act only on media we send (the NACK responder's
    /// retransmission buffer, the Sender Report generator) are left out (issue 11).
    Receive,
    /// The test publisher: it sends media, so it keeps webrtc-rs's default chain.
    Send,
}

/// Builds the media engine and interceptor chain: H.264 (pm=1, several profiles), VP8, VP9
/// and AV1, each with RTX, + Opus; for a receiver the NACK generator, receiver reports and
/// TWCC feedback (what a publisher's retransmissions and congestion control need from us),
/// for a sender webrtc-rs's defaults; and the Sender-Report tap that lets SRs reach the
/// application. Which video codec a publisher sends follows its offer's order, which the
/// viewer request's `preferVideoCodec` (`--codec`) asks the web app to set.
pub(crate) fn media_setup(
    direction: MediaDirection,
) -> Result<(MediaEngine, Registry), webrtc::error::Error> {
    let mut me = MediaEngine::default();
    let h264 = H264_PROFILES.map(|(plid, pt)| {
        (
            MIME_TYPE_H264,
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={plid}"),
            pt,
        )
    });
    let others = OTHER_VIDEO_CODECS.map(|(mime, fmtp, pt)| (mime, fmtp.to_owned(), pt));
    for (mime, fmtp, pt) in h264.into_iter().chain(others) {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp,
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )?;
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_RTX.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!("apt={pt}"),
                    rtcp_feedback: vec![],
                },
                payload_type: pt + 1,
            },
            RtpCodecKind::Video,
        )?;
    }
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: OPUS_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    let registry = match direction {
        MediaDirection::Send => register_default_interceptors(Registry::new(), &mut me)?,
        MediaDirection::Receive => receive_interceptors(&mut me)?,
    };
    let registry = registry.with(Slot::from(14_000), sr_tap::SrTap::default());
    Ok((me, registry))
}

/// webrtc-rs's default chain without what only a sender uses: the same feedback is
/// negotiated (`nack`, `nack pli`, `transport-cc`, the simulcast header extensions), and the
/// NACK generator, receiver reports and TWCC feedback run as in the default chain.
fn receive_interceptors(me: &mut MediaEngine) -> Result<Registry, webrtc::error::Error> {
    for parameter in ["", "pli"] {
        me.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_NACK.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    interceptor_registry::configure_simulcast_extension_headers(me)?;
    // Negotiates transport-cc; the interceptor it adds is the one `receive_feedback` has.
    interceptor_registry::configure_twcc_receiver_only(Registry::new(), me)?;
    Ok(receive_feedback())
}

/// A receiving connection's chain on the shared UDP port: the feedback interceptors behind
/// the [`feedback_gate`] (the port runs their twins for what arrives over UDP), then the
/// Sender-Report tap.
pub(crate) fn shared_port_chain(
    mux: &udp_mux::UdpMux,
    ufrag: &str,
    port_feeds: feedback_gate::PortFeeds,
) -> Registry {
    let inner = Box::new(receive_feedback().build());
    let gate = feedback_gate::FeedbackGate::new(inner, mux.clone(), ufrag.to_owned(), port_feeds);
    Registry::new()
        .with(Slot::NackGenerator, gate)
        .with(Slot::from(14_000), sr_tap::SrTap::default())
}

/// A receiver's feedback interceptors: the NACK generator, receiver reports and TWCC
/// feedback. In webrtc-rs's chain, or run by the shared UDP port for its connections
/// ([`udp_mux::media_path`], [`feedback_gate`]).
pub(crate) fn receive_feedback() -> Registry {
    let (nack, rr, twcc) = feedback_interceptors();
    Registry::new()
        .with(Slot::NackGenerator, nack)
        .with(Slot::ReceiverReport, rr)
        .with(Slot::TwccReceiver, twcc)
}

/// The interceptors of [`receive_feedback`], one configuration for both places.
pub(crate) fn feedback_interceptors() -> (
    rtc::interceptor::NackGeneratorInterceptor,
    rtc::interceptor::ReceiverReportInterceptor,
    rtc::interceptor::TwccReceiverInterceptor,
) {
    (
        NackGeneratorBuilder::new().build(),
        ReceiverReportBuilder::new().build(),
        TwccReceiverBuilder::new().build(),
    )
}

/// The ICE username fragment of an offer (its first `a=ice-ufrag:` line). It tells a new
/// peer connection of a publisher from the same one offered again: Raspberry Ninja and
/// GStreamer publishers send every offer with a null session, so the session alone cannot.
pub fn offer_ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// The first mid of the first `a=group:BUNDLE` line of an SDP, used as `sdpMid` on our
/// candidates (`"0"` for the web app, `"video0"` for Raspberry Ninja). `None` without BUNDLE.
pub fn first_bundle_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=group:BUNDLE"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

/// Which media an offer sends to us: `(video, audio)`. A section counts when its direction is
/// `sendrecv` (the default) or `sendonly` and it is not rejected (port 0 counts only with
/// `a=bundle-only`, as Raspberry Ninja's webrtcbin writes it). The recorder decides from this,
/// before any packet arrives, which tracks a file's program map declares.
pub fn offered_media(sdp: &str) -> (bool, bool) {
    let (mut video, mut audio) = (false, false);
    // A leading newline lets an SDP that starts with a media line split like any other.
    let text = format!("\n{sdp}");
    for section in text.split("\nm=").skip(1) {
        let mut fields = section.split_whitespace();
        let kind = fields.next().unwrap_or("");
        let port = fields.next().unwrap_or("0");
        let attr = |name: &str| section.lines().any(|l| l.trim() == name);
        let rejected = port == "0" && !attr("a=bundle-only");
        let sending = !(attr("a=recvonly") || attr("a=inactive"));
        if rejected || !sending {
            continue;
        }
        match kind {
            "video" => video = true,
            "audio" => audio = true,
            _ => {}
        }
    }
    (video, audio)
}

/// The video codec an answer (ours) settles on: the first payload type of its first video
/// section that is not rejected, looked up in the section's `a=rtpmap` lines. Browsers send
/// with the first codec of the answer, so this is what the publisher will send (the track
/// confirms it when it starts). `None` without such a section or for a codec not recorded.
pub fn answer_video_codec(sdp: &str) -> Option<crate::media::VideoCodec> {
    let text = format!("\n{sdp}");
    let section = text.split("\nm=").skip(1).find(|s| {
        let mut f = s.split_whitespace();
        f.next() == Some("video") && f.next().is_some_and(|port| port != "0")
    })?;
    let first_pt = section.lines().next()?.split_whitespace().nth(3)?;
    section.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        if pt != first_pt {
            return None;
        }
        crate::media::VideoCodec::from_mime(codec.split('/').next()?)
    })
}

/// Events from webrtc-rs callbacks and helper tasks to the task that drives a connection (the
/// viewer session or the test publisher). Callbacks only forward; the driving task alone calls
/// PeerConnection methods.
pub(crate) enum Internal {
    Candidate(webrtc::peer_connection::RTCPeerConnectionIceEvent),
    State(RTCPeerConnectionState),
    Track(Arc<dyn webrtc::media_stream::track_remote::TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
    DcOpen(usize),
    DcMessage(usize, bytes::BytesMut),
    DcClosed(usize),
}

/// The webrtc-rs event handler of both sides: forwards every callback into an [`Internal`]
/// channel and never touches the peer connection.
pub(crate) struct Forwarder {
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<Internal>,
}

#[async_trait::async_trait]
impl webrtc::peer_connection::PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: webrtc::peer_connection::RTCPeerConnectionIceEvent) {
        let _ = self.tx.send(Internal::Candidate(event));
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(Internal::State(state));
    }
    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.tx.send(Internal::DataChannel(data_channel));
    }
    async fn on_track(&self, track: Arc<dyn webrtc::media_stream::track_remote::TrackRemote>) {
        let _ = self.tx.send(Internal::Track(track));
    }
}

/// Pumps one data channel's events into the driving task as `DcOpen`/`DcMessage`/`DcClosed`
/// of channel `index`, until the channel closes or the task is gone.
pub(crate) fn pump_data_channel(
    dc: Arc<dyn DataChannel>,
    index: usize,
    tx: tokio::sync::mpsc::UnboundedSender<Internal>,
) {
    use webrtc::data_channel::DataChannelEvent;
    tokio::spawn(async move {
        while let Some(ev) = dc.poll().await {
            let msg = match ev {
                DataChannelEvent::OnOpen => Internal::DcOpen(index),
                DataChannelEvent::OnMessage(m) => Internal::DcMessage(index, m.data),
                DataChannelEvent::OnClose => break,
                _ => continue,
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
        let _ = tx.send(Internal::DcClosed(index));
    });
}

/// A shared cipher, as taken by both sides' configs.
pub type SharedCipher = Option<Arc<dyn PayloadCipher>>;

/// Longest wait for a `{"bye":true}` to be acknowledged before the connection is closed.
const BYE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Sends `{"bye":true}` on each channel and waits (bounded) until SCTP has delivered it:
/// `close()` aborts the association at once, and a bye still in the send queue would be lost,
/// making a clean leave look like a crash to the other side.
pub(crate) async fn say_bye(channels: &[Arc<dyn DataChannel>]) {
    let bye = dc::bye();
    for ch in channels {
        if let Err(e) = ch.send_text(&bye).await {
            tracing::debug!("bye not sent: {e}");
        }
    }
    let deadline = tokio::time::Instant::now() + BYE_FLUSH_TIMEOUT;
    for ch in channels {
        while tokio::time::Instant::now() < deadline {
            match ch.outstanding_bytes().await {
                Ok(n) if n > 0 => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_text_is_one_short_line() {
        assert_eq!(super::printable("v=0\r\nbad\tsdp", 100), "v=0  bad sdp");
        assert_eq!(super::printable("abcdef", 3), "abc…");
    }

    use super::*;
    use crate::media::VideoCodec;

    #[test]
    fn answer_video_codec_is_the_first_payload_type_of_the_video_section() {
        let answer = "v=0\r\ns=-\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 98 99 96 97\r\na=rtpmap:96 VP8/90000\r\n\
a=rtpmap:98 VP9/90000\r\na=rtpmap:99 rtx/90000\r\n";
        assert_eq!(answer_video_codec(answer), Some(VideoCodec::Vp9));
        let h264 = answer
            .replace("98 99 96 97", "102 103")
            .replace("a=rtpmap:96 VP8/90000", "a=rtpmap:102 H264/90000");
        assert_eq!(answer_video_codec(&h264), Some(VideoCodec::H264));
        let av1 = answer
            .replace("98 99 96 97", "45")
            .replace("VP8", "AV1")
            .replace(":96", ":45");
        assert_eq!(answer_video_codec(&av1), Some(VideoCodec::Av1));
        // Rejected video, no video, a codec we do not record.
        assert_eq!(
            answer_video_codec(&answer.replace("m=video 9", "m=video 0")),
            None
        );
        assert_eq!(answer_video_codec("v=0\r\nm=audio 9 RTP/AVP 0\r\n"), None);
        let h265 = answer.replace("VP9/90000", "H265/90000");
        assert_eq!(answer_video_codec(&h265), None);
    }

    #[test]
    fn offered_media_reads_directions_and_bundle_only() {
        let rn = "v=0\r\ns=-\r\na=group:BUNDLE video0 audio1 application2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 100\r\na=bundle-only\r\na=sendrecv\r\n\
m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\na=bundle-only\r\n";
        assert_eq!(offered_media(rn), (true, true));
        let dc_only = "v=0\r\ns=-\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(offered_media(dc_only), (false, false));
        let audio_only = "v=0\r\nm=video 9 RTP 96\r\na=inactive\r\nm=audio 9 RTP 111\r\na=sendonly\r\nm=video 0 RTP 97\r\n";
        assert_eq!(offered_media(audio_only), (false, true));
        assert_eq!(offered_media(""), (false, false));
    }

    #[test]
    fn bundle_mid_is_found() {
        let sdp = "v=0\r\na=group:BUNDLE video0 audio1 application2\r\nm=video 9\r\n";
        assert_eq!(first_bundle_mid(sdp).as_deref(), Some("video0"));
        assert_eq!(first_bundle_mid("v=0\r\na=group:BUNDLE\r\n"), None);
        assert_eq!(first_bundle_mid("v=0\r\n"), None);
    }

    #[test]
    fn an_offers_ice_ufrag_is_read() {
        let sdp = "v=0\r\nm=video 9\r\na=ice-ufrag:Ab+1\r\na=ice-pwd:x\r\nm=audio 9\r\na=ice-ufrag:Ab+1\r\n";
        assert_eq!(offer_ice_ufrag(sdp), Some("Ab+1"));
        assert_eq!(offer_ice_ufrag("v=0\r\na=ice-ufrag:\r\n"), None);
        assert_eq!(offer_ice_ufrag("v=0\r\n"), None);
    }

    #[test]
    fn candidate_json_matches_vdo_ninja() {
        let c: IceCandidate = serde_json::from_str(
            r#"{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0}"#,
        )
        .unwrap();
        assert_eq!(c.sdp_mid, None);
        assert_eq!(c.sdp_mline_index, Some(0));
        let back = serde_json::to_value(IceCandidate {
            sdp_mid: Some("0".into()),
            ..c
        })
        .unwrap();
        assert_eq!(back["sdpMid"], "0");
        assert_eq!(back["sdpMLineIndex"], 0);
    }
}
