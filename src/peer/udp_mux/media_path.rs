//! The shared port's media path: a recorded track's SRTP decrypted where the port is read,
//! and the feedback a publisher needs (NACKs, receiver reports, transport-wide congestion
//! control) made from every RTP packet's header on the way (issue 11).
//!
//! Through webrtc-rs, a media packet crosses its connection's driver task, its handler
//! pipeline (DTLS/SRTP demux, SRTP, interceptors, RTX unwrap, track lookup), a per-track
//! channel and one of our reader tasks before it reaches the recorder. At 32 real
//! publishers that path was ~45 % of the recorder's CPU and nothing of it is needed to
//! record (`docs/loadbench.md`). Here, once a track is recorded ([`MediaPath::route`]), its
//! packets are decrypted with the connection's own SRTP keys in the port's loop and handed to
//! the session's event queue as [`MediaEvent::Rtp`], the same event the long way produces, all
//! a read of the port took for the connection in one [`MediaBatch`].
//!
//! **Keys.** webrtc-rs keeps the SRTP keys it derives inside its DTLS handler. The vendored
//! `rtc-dtls` hands each handshake's exported keying material to an observer, named by the
//! peer's hello random ([`rtc::dtls::srtp_key_export`]); the port reads the same random off
//! the peer's ClientHello or ServerHello, which cross it in the clear ([`hello_random`]), and
//! so knows whose keys they are. The keys wait in a small bounded store until the port takes
//! them ([`KeyStore`]).
//!
//! **What still takes the long way:** a track's packets until the session has said
//! `TrackStarted` and routed it (so the recorder knows the track first), retransmissions
//! (RTX, unwrapped by webrtc-rs), every track not recorded, every packet that does not
//! decrypt here (counted; webrtc-rs then tries it), RTCP, and every connection over TCP.
//!
//! **Feedback.** NACKs, receiver reports and TWCC feedback come from webrtc-rs's own
//! interceptors (`rtc-interceptor`), run here as a chain of their own per connection
//! ([`Feedback`]) and fed the header of every RTP packet of the connection that arrives on the
//! port, taken or not, plus the Sender Reports webrtc-rs decrypts
//! ([`crate::peer::feedback_gate`] forwards them, and the streams it binds). The RTCP they
//! make goes to the session, which sends it through webrtc-rs (one SRTCP context per
//! direction: never two). webrtc-rs's own copies of these interceptors then see RTP only of
//! connections the port never hears from (TCP: [`Sink::port_feeds`]), so every stream gets
//! exactly one of each report.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::dtls::srtp_key_export::{self, ExportedSrtpKeys};
use rtc::interceptor::{
    AttributedPacket, Interceptor, NackGeneratorInterceptor, Packet, ReceiverReportInterceptor,
    StreamInfo, TaggedPacket, TwccReceiverInterceptor,
};
use rtc::shared::TransportContext;
use rtc::shared::marshal::Unmarshal;
use rtc::srtp::protection_profile::ProtectionProfile;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::media::{RtpPacket, TrackKind};
use crate::peer::session::{Counters, MediaBatch, MediaEvent, SessionEvent};

/// RTCP the feedback chain made, for the session to send.
pub(crate) type Rtcp = Vec<Box<dyn rtc::rtcp::Packet>>;

/// Handshakes whose keys may wait at once for their connection's first routed packet. A
/// recorder starts connections a few at a time; 256 is far more than ever wait together.
const MAX_WAITING_KEYS: usize = 256;
/// Tracks one connection may route (a publisher has one audio and one video track;
/// renegotiations may add a few). A route past it replaces the oldest.
const MAX_ROUTES: usize = 8;
/// Streams one connection's feedback chain may hold (media and RTX, audio and video, with
/// room for renegotiations).
const MAX_STREAMS: usize = 16;
/// SRTP replay window, in packets (webrtc-rs's default for remote streams).
const REPLAY_WINDOW: usize = 64;

/// Bytes of a connection's decryption arena: ~13 full-size packets share one allocation.
/// Full-size packets are over glibc's per-thread cache limit (1032 bytes), so an allocation
/// each took malloc's slow path (~4 % of the recorder's CPU at 32 publishers, issue 11), and
/// the static musl builds' allocator is slower still. A packet the recorder still holds keeps
/// its arena alive: at most this much per held packet, all of it the same connection's.
/// Video packets are held for a frame (their payload is copied into the frame then).
const ARENA: usize = 16 * 1024;

/// Packets up to this size (audio) are decrypted in an arena of their own ([`SMALL_ARENA`]):
/// audio is held until the interleaver writes it (up to a second behind video), and in the
/// 16 KiB arena of video packets each held audio packet kept one alive (+0.2 MiB of RSS per
/// stream at 32 publishers, measured).
const SMALL_PACKET: usize = 1024;

/// Bytes of the arena small packets are decrypted in: ~20 Opus packets (~0.4 s) share one
/// allocation, so the held audio keeps at most a few of them alive. A copy of each payload
/// into an allocation of its own had cost ~2 % of the recorder's CPU at 32 publishers
/// (issue 11: malloc, and the scratch copy before it).
const SMALL_ARENA: usize = 4 * 1024;

/// The keys exported by handshakes that no port has taken yet, oldest first.
///
/// The one lock of this module: the observer runs inside webrtc-rs's DTLS handler, on
/// whatever thread drives that connection, and cannot reach the port's task otherwise. It is
/// held for a push or a lookup in at most [`MAX_WAITING_KEYS`] entries.
struct KeyStore;

static WAITING_KEYS: Mutex<VecDeque<ExportedSrtpKeys>> = Mutex::new(VecDeque::new());

impl KeyStore {
    /// The observer given to `rtc-dtls`: keeps the newest keys of each peer random.
    fn observe(keys: ExportedSrtpKeys) {
        if let Ok(mut waiting) = WAITING_KEYS.lock() {
            waiting.retain(|k| k.remote_random != keys.remote_random);
            if waiting.len() >= MAX_WAITING_KEYS {
                waiting.pop_front();
            }
            waiting.push_back(keys);
        }
    }

    /// The keys of the handshake whose peer sent `random`, taken out of the store.
    fn take(random: &[u8; 32]) -> Option<ExportedSrtpKeys> {
        let mut waiting = WAITING_KEYS.lock().ok()?;
        let i = waiting.iter().position(|k| &k.remote_random == random)?;
        waiting.remove(i)
    }
}

/// Asks `rtc-dtls` for every handshake's SRTP keys (once per process; later calls do nothing).
pub(crate) fn observe_srtp_keys() {
    srtp_key_export::set_srtp_key_observer(KeyStore::observe);
}

/// The hello random of a DTLS ClientHello or ServerHello that starts `datagram` (a record of
/// epoch 0, its handshake message unfragmented at offset 0), as the peer's handshake will
/// name its keys. Any other datagram: `None`.
pub(crate) fn hello_random(datagram: &[u8]) -> Option<[u8; 32]> {
    // Record header: type 22 (handshake), version, epoch (0), sequence, length: 13 bytes.
    // Handshake header: type, length, message sequence, fragment offset, fragment length: 12.
    // Then the hello's version (2 bytes) and its random (32).
    const RANDOM: std::ops::Range<usize> = 27..59;
    let d = datagram;
    let hello = d.len() >= RANDOM.end
        && d[0] == 22
        && d[3..5] == [0, 0]
        && matches!(d[13], 1 | 2)
        && d[19..22] == [0, 0, 0];
    hello.then(|| d[RANDOM].try_into().expect("32 bytes"))
}

/// True for an RTP packet (not RTCP) by RFC 7983's first byte and RFC 5761's payload types.
pub(crate) fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && (128..192).contains(&datagram[0]) && !(192..224).contains(&datagram[1])
}

/// Where a connection's taken packets and its feedback go: the session's queues.
pub(crate) struct Sink {
    /// The session's event queue (shared with its track readers).
    pub(crate) events: mpsc::Sender<SessionEvent>,
    /// The session's counters, which count what arrives here as what arrives the long way.
    pub(crate) counters: Arc<Counters>,
    /// Packets the session's queue may hold in batches ([`MediaBatch`]): its capacity.
    pub(crate) batch_limit: usize,
    /// RTCP for the session to send to the publisher.
    pub(crate) rtcp: mpsc::Sender<Rtcp>,
    /// Set at the connection's first datagram here: webrtc-rs's feedback interceptors then
    /// leave its RTP to the port ([`crate::peer::feedback_gate`]).
    pub(crate) port_feeds: crate::peer::feedback_gate::PortFeeds,
}

/// What the media path counts over all connections of the port.
#[derive(Debug, Default)]
pub struct MediaPathCounters {
    /// RTP packets decrypted in the port's loop and handed to a recorder.
    pub taken: AtomicU64,
    /// Packets of a routed track that did not decrypt here (handed on the long way instead).
    pub not_decrypted: AtomicU64,
    /// RTCP packets the feedback chains made that were not sent: no room in the session's
    /// queue, or (counted by the session) no track to send them on, or webrtc-rs refused them.
    pub feedback_dropped: AtomicU64,
}

/// One connection's media path: its SRTP keys, its routed tracks and its feedback chain.
#[derive(Default)]
pub(crate) struct MediaPath {
    /// The peer's hello random, once seen.
    random: Option<[u8; 32]>,
    srtp: Option<rtc::srtp::context::Context>,
    /// Tracks taken here: media SSRC and kind.
    routes: Vec<(u32, TrackKind)>,
    sink: Option<Sink>,
    feedback: Option<Feedback>,
    /// The recorder's queue has closed: nothing is taken any more.
    gone: bool,
    /// Packets taken from the read in progress, for the session ([`MediaPath::send_taken`]).
    pending: Vec<MediaEvent>,
    /// Where taken packets are decrypted, one after the other ([`ARENA`]).
    arena: Arena<ARENA>,
    /// Where small ones are ([`SMALL_PACKET`], [`SMALL_ARENA`]).
    small: Arena<SMALL_ARENA>,
}

/// A connection's decryption arena of `SIZE` bytes, and the one filled before it.
///
/// A full arena is replaced; the one it replaces is used again once the recorder has let go
/// of every packet in it (`BytesMut::try_reclaim`: the buffer is ours alone again), which
/// for video is a frame later. Each arena had been a new allocation over glibc's per-thread
/// cache, so malloc's slow path, and a new shared header on its first split: malloc and free
/// fell from 5.8 % to 3.0 % of the recorder's perf samples at 32 publishers (issue 11).
/// Costs one idle arena per kind per connection.
#[derive(Default)]
struct Arena<const SIZE: usize> {
    filling: BytesMut,
    before: BytesMut,
}

impl<const SIZE: usize> Arena<SIZE> {
    /// The arena to copy a datagram of `len` bytes into: the one filling if it has room,
    /// else the one before if it is free again, else a fresh one.
    fn with_room(&mut self, len: usize) -> &mut BytesMut {
        if self.filling.capacity() < len {
            let size = SIZE.max(len);
            if self.before.try_reclaim(size) {
                std::mem::swap(&mut self.filling, &mut self.before);
            } else {
                let fresh = BytesMut::with_capacity(size);
                self.before = std::mem::replace(&mut self.filling, fresh);
            }
        }
        &mut self.filling
    }
}

impl MediaPath {
    /// A DTLS hello from the peer: its random names the keys of this connection.
    pub(crate) fn saw_hello(&mut self, random: [u8; 32]) {
        if self.random != Some(random) {
            // A new handshake (an ICE restart may bring one): new keys too.
            self.random = Some(random);
            self.srtp = None;
        }
    }

    /// The session's queues, given once when it starts.
    pub(crate) fn attach(&mut self, sink: Sink) {
        self.sink = Some(sink);
        self.gone = false;
    }

    /// The session is ending: its queues are let go and its tracks take the long way.
    pub(crate) fn detach(&mut self) {
        self.sink = None;
        self.routes.clear();
        self.pending.clear();
    }

    /// From now on, RTP of `ssrc` that decrypts here goes to the session as `kind`.
    pub(crate) fn route(&mut self, ssrc: u32, kind: TrackKind) {
        self.routes.retain(|r| r.0 != ssrc);
        if self.routes.len() >= MAX_ROUTES {
            self.routes.remove(0);
        }
        self.routes.push((ssrc, kind));
    }

    /// A stream webrtc-rs bound (or unbound) on this connection: its feedback chain follows.
    pub(crate) fn bind(&mut self, info: &StreamInfo, bound: bool) {
        let feedback = self.feedback.get_or_insert_with(Feedback::new);
        if bound {
            feedback.bind(info);
        } else {
            feedback.unbind(info);
        }
    }

    /// Sender Reports webrtc-rs decrypted, for the receiver reports' round-trip fields.
    pub(crate) fn sender_reports(&mut self, now: Instant, reports: Rtcp) {
        if let Some(feedback) = &mut self.feedback {
            feedback.read(now, Packet::Rtcp(reports));
        }
    }

    /// One datagram from this connection's peer, still in the port's read buffer: true if it
    /// was taken (an RTP packet of a routed track that decrypts), else it goes the long way.
    /// Borrowed: a taken packet is copied once, into this connection's arena, and decrypted
    /// there.
    pub(crate) fn datagram(
        &mut self,
        datagram: &[u8],
        now: Instant,
        counters: &MediaPathCounters,
    ) -> bool {
        if let Some(sink) = &self.sink
            && !sink.port_feeds.load(Ordering::Relaxed)
        {
            // The connection is on this port (its ICE checks come first): its feedback is
            // made here from now on, not also in webrtc-rs.
            sink.port_feeds.store(true, Ordering::Relaxed);
        }
        if !is_rtp(datagram) {
            return false;
        }
        let mut rest = datagram;
        let Ok(header) = rtc::rtp::Header::unmarshal(&mut rest) else {
            return false;
        };
        let payload_start = datagram.len() - rest.len();
        let route = self.routes.iter().find(|r| r.0 == header.ssrc).map(|r| r.1);
        let taken = match route {
            Some(kind) if !self.gone => self.take(kind, datagram, &header, payload_start, now),
            _ => false,
        };
        if !taken && route.is_some() {
            counters.not_decrypted.fetch_add(1, Ordering::Relaxed);
        } else if taken {
            counters.taken.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(feedback) = &mut self.feedback {
            // The header is all the feedback interceptors read (sequence number, timestamp,
            // transport-wide sequence extension); the payload stays where it is.
            feedback.read_rtp(now, &header);
        }
        taken
    }

    /// Decrypts one packet of a routed track and hands it to the session; false if it did
    /// not decrypt (no keys yet, or it fails authentication).
    fn take(
        &mut self,
        kind: TrackKind,
        datagram: &[u8],
        header: &rtc::rtp::Header,
        payload_start: usize,
        now: Instant,
    ) -> bool {
        if self.srtp.is_none() {
            let Some(keys) = self.random.as_ref().and_then(KeyStore::take) else {
                return false;
            };
            self.srtp = remote_context(&keys);
            if self.srtp.is_none() {
                return false;
            }
        }
        let (Some(srtp), Some(sink)) = (&mut self.srtp, &self.sink) else {
            return false;
        };
        // Decrypted in place (`rtc-srtp`, our patch), in this connection's arena for its size.
        let arena = if datagram.len() <= SMALL_PACKET {
            self.small.with_room(datagram.len())
        } else {
            self.arena.with_room(datagram.len())
        };
        let decrypted = decrypt_in(arena, srtp, datagram, header, payload_start);
        let payload = match decrypted {
            Ok(Some(payload)) => payload,
            // Padding-only packets (bandwidth probes) carry nothing to record: taken, not sent.
            Ok(None) => return true,
            Err(e) => {
                debug!(
                    ssrc = header.ssrc,
                    seq = header.sequence_number,
                    "udp mux: not decrypted here: {e}"
                );
                return false;
            }
        };
        let counter = match kind {
            TrackKind::Video => &sink.counters.video_packets,
            TrackKind::Audio => &sink.counters.audio_packets,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.pending.push(MediaEvent::Rtp {
            kind,
            packet: RtpPacket {
                sequence: header.sequence_number,
                timestamp: header.timestamp,
                marker: header.marker,
                ssrc: header.ssrc,
                payload_type: header.payload_type,
                payload,
            },
            arrival: now,
        });
        true
    }

    /// Packets taken since the last [`MediaPath::send_taken`].
    pub(crate) fn taken(&self) -> usize {
        self.pending.len()
    }

    /// Hands the packets taken since the last call to the session, in one batch: called
    /// after each read of the port.
    pub(crate) fn send_taken(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(sink) = &self.sink else {
            self.pending.clear();
            return;
        };
        let n = self.pending.len();
        // An allocation of just this size (a few hundred bytes: the allocator's fast path);
        // `pending` keeps its capacity for the next read.
        let events: Vec<MediaEvent> = self.pending.drain(..).collect();
        if sink.counters.batched.load(Ordering::Relaxed) + n > sink.batch_limit {
            // The recorder is behind: dropped and counted, as the long way does.
            sink.counters
                .media_dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let batch = MediaBatch::new(events, sink.counters.clone());
        match sink.events.try_send(SessionEvent::MediaBatch(batch)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                sink.counters
                    .media_dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.gone = true,
        }
    }

    /// Runs the feedback chain's timers and hands what it made to the session.
    pub(crate) fn tick(&mut self, now: Instant, counters: &MediaPathCounters) {
        let (Some(feedback), Some(sink)) = (&mut self.feedback, &self.sink) else {
            return;
        };
        // A tick's RTCP in as few compounds as fit a datagram: one wake of the session and of
        // webrtc-rs's driver per tick where there were one per packet.
        for rtcp in compounds(feedback.timeout(now)) {
            if sink.rtcp.try_send(rtcp).is_err() {
                counters.feedback_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `datagram` copied to the end of `arena` (which has room for it: [`Arena::with_room`]) and
/// decrypted there: its payload, `None` if it has none (padding only).
fn decrypt_in(
    arena: &mut BytesMut,
    srtp: &mut rtc::srtp::context::Context,
    datagram: &[u8],
    header: &rtc::rtp::Header,
    payload_start: usize,
) -> Result<Option<Bytes>, rtc::shared::error::Error> {
    let len = datagram.len();
    arena.extend_from_slice(datagram);
    let mut plain = arena.split_to(len);
    let n = srtp.decrypt_rtp_in_place_with_header(&mut plain, header)?;
    // Cut before it is frozen: a frozen buffer sliced afterwards would allocate a shared
    // header per packet.
    Ok(payload_range(&plain[..n], header, payload_start).map(|r| {
        plain.truncate(r.end);
        plain.advance(r.start);
        plain.freeze()
    }))
}

/// Where the payload of a decrypted RTP packet (`plain`, header first) lies, padding cut off;
/// `None` if it has none (padding only).
fn payload_range(
    plain: &[u8],
    header: &rtc::rtp::Header,
    payload_start: usize,
) -> Option<std::ops::Range<usize>> {
    let mut end = plain.len();
    if header.padding {
        end = end.saturating_sub(usize::from(plain.last().copied().unwrap_or(0)));
    }
    (end > payload_start).then_some(payload_start..end)
}

/// Largest compound RTCP packet made of several feedback packets: with SRTCP's 14-18 bytes,
/// IPv6 and UDP headers it stays well inside a 1280-byte path MTU. A single packet larger than
/// this goes alone.
const MAX_COMPOUND: usize = 1100;

/// `packets` grouped, in order, into compounds of at most [`MAX_COMPOUND`] bytes.
fn compounds(packets: Rtcp) -> Vec<Rtcp> {
    let mut out: Vec<Rtcp> = Vec::new();
    let mut size = 0;
    for p in packets {
        let len = p.marshal_size();
        match out.last_mut() {
            Some(last) if size + len <= MAX_COMPOUND => last.push(p),
            _ => {
                out.push(vec![p]);
                size = 0;
            }
        }
        size += len;
    }
    out
}

/// The SRTP context that decrypts what the peer sends, from its handshake's keys.
fn remote_context(keys: &ExportedSrtpKeys) -> Option<rtc::srtp::context::Context> {
    let profile = match keys.profile {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => {
            ProtectionProfile::Aes128CmHmacSha1_32
        }
        other => {
            warn!(
                "udp mux: SRTP profile {other:?} unknown here; this connection's media takes the long way"
            );
            return None;
        }
    };
    let mut config = rtc::srtp::config::Config {
        profile,
        ..Default::default()
    };
    let provider = rtc::crypto::default_provider()
        .inspect_err(|e| warn!("udp mux: no crypto provider ({e}); media takes the long way"))
        .ok()?;
    let built = config
        .set_session_keys_from_keying_material(&keys.keying_material, keys.is_client)
        .and_then(|()| {
            rtc::srtp::context::Context::new(
                &config.keys.remote_master_key,
                &config.keys.remote_master_salt,
                profile,
                Some(rtc::srtp::option::srtp_replay_protection(REPLAY_WINDOW)),
                None,
                provider.crypto(),
            )
        });
    built
        .inspect(|_| {
            debug!(
                ?profile,
                "udp mux: SRTP keys taken; media decrypted at the port"
            )
        })
        .inspect_err(|e| {
            warn!("udp mux: no SRTP context ({e}); this connection's media takes the long way")
        })
        .ok()
}

/// One connection's feedback interceptors (webrtc-rs's NACK generator, receiver reports and
/// TWCC receiver, as [`crate::peer::feedback_interceptors`] builds them), driven by the port.
///
/// Called one after the other, not through an `rtc-interceptor` chain: a chain's walk puts
/// every packet on a queue of its own (an allocation per packet) and moves it through a no-op
/// end as well. RTP headers go to each directly ([`Feedback::read_rtp`]); RTCP (Sender
/// Reports) through each one's read queue, which hands it to the next as it came.
pub(crate) struct Feedback {
    nack: NackGeneratorInterceptor,
    rr: ReceiverReportInterceptor,
    twcc: TwccReceiverInterceptor,
    streams: Vec<u32>,
}

impl Feedback {
    fn new() -> Feedback {
        let (nack, rr, twcc) = crate::peer::feedback_interceptors();
        Feedback {
            nack,
            rr,
            twcc,
            streams: Vec::new(),
        }
    }

    fn bind(&mut self, info: &StreamInfo) {
        if self.streams.contains(&info.ssrc) || self.streams.len() >= MAX_STREAMS {
            return;
        }
        self.streams.push(info.ssrc);
        self.nack.bind_remote_stream(info);
        self.rr.bind_remote_stream(info);
        self.twcc.bind_remote_stream(info);
    }

    fn unbind(&mut self, info: &StreamInfo) {
        if let Some(i) = self.streams.iter().position(|s| *s == info.ssrc) {
            self.streams.remove(i);
            self.nack.unbind_remote_stream(info);
            self.rr.unbind_remote_stream(info);
            self.twcc.unbind_remote_stream(info);
        }
    }

    /// One RTP packet's header, to each interceptor directly (`rtc-interceptor`, our patch):
    /// moving a packet through their read queues copied a ~250-byte message six times per
    /// packet, ~5 % of the recorder's CPU at 32 publishers (issue 11).
    fn read_rtp(&mut self, now: Instant, header: &rtc::rtp::Header) {
        self.nack.read_rtp_header(now, header);
        self.rr.read_rtp_header(now, header);
        self.twcc.read_rtp_header(now, header);
    }

    /// RTCP (Sender Reports) through the interceptors, which read it from their queues.
    fn read(&mut self, now: Instant, packet: Packet) {
        let msg = TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        };
        // Each passes what it read on (its read queue holds just that packet); what passes
        // the last has no one to go to: the packet itself goes elsewhere.
        let Some(msg) = pass(&mut self.nack, msg) else {
            return;
        };
        let Some(msg) = pass(&mut self.rr, msg) else {
            return;
        };
        let _ = pass(&mut self.twcc, msg);
    }

    /// The interceptors' timers, if due; the RTCP they have to send.
    fn timeout(&mut self, now: Instant) -> Rtcp {
        let mut out = Vec::new();
        let interceptors: [&mut dyn Interceptor; 3] =
            [&mut self.nack, &mut self.rr, &mut self.twcc];
        for interceptor in interceptors {
            if interceptor.poll_timeout().is_some_and(|t| t <= now) {
                let _ = interceptor.handle_timeout(now);
            }
            while let Some(msg) = interceptor.poll_write() {
                if let Packet::Rtcp(packets) = msg.message.packet {
                    out.extend(packets);
                }
            }
        }
        out
    }
}

/// `msg` through one interceptor: what it passes on (all of it, for these three).
fn pass(interceptor: &mut dyn Interceptor, msg: TaggedPacket) -> Option<TaggedPacket> {
    interceptor.handle_read(msg).ok()?;
    let out = interceptor.poll_read();
    // Nothing else is queued behind it; drained all the same, so nothing piles up if one
    // ever queues more.
    while interceptor.poll_read().is_some() {}
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::RTCPFeedback;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    use rtc::shared::marshal::Marshal;
    use std::time::Duration;

    const SSRC: u32 = 0x1234_5678;

    /// A DTLS record holding a hello of `kind` (1 ClientHello, 2 ServerHello) with `random`.
    fn hello(kind: u8, random: [u8; 32]) -> Vec<u8> {
        let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 80];
        d.extend_from_slice(&[kind, 0, 0, 70, 0, 0, 0, 0, 0, 0, 0, 70, 0xfe, 0xfd]);
        d.extend_from_slice(&random);
        d.extend_from_slice(&[0; 36]);
        d
    }

    #[test]
    fn the_peer_hello_random_is_read_and_nothing_else_is() {
        let random = [7u8; 32];
        assert_eq!(hello_random(&hello(1, random)), Some(random));
        assert_eq!(hello_random(&hello(2, random)), Some(random));
        // A Certificate, a record of epoch 1, a fragment not at offset 0, and short input.
        assert_eq!(hello_random(&hello(11, random)), None);
        let mut epoch1 = hello(1, random);
        epoch1[4] = 1;
        assert_eq!(hello_random(&epoch1), None);
        let mut fragment = hello(1, random);
        fragment[21] = 5;
        assert_eq!(hello_random(&fragment), None);
        assert_eq!(hello_random(&hello(1, random)[..40]), None);
        assert_eq!(hello_random(&[]), None);
    }

    /// Keys as a handshake with a peer of hello `random` would export them (our side the DTLS
    /// server), left in the store; and the peer's own context, which encrypts what it sends.
    fn handshake(random: [u8; 32]) -> rtc::srtp::context::Context {
        handshake_with(
            random,
            ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        )
    }

    /// A handshake that agreed on `profile` (`negotiated`, as DTLS names it): the port gets
    /// the keys; the peer's sending context is returned.
    fn handshake_with(
        random: [u8; 32],
        profile: ProtectionProfile,
        negotiated: SrtpProtectionProfile,
    ) -> rtc::srtp::context::Context {
        let len = 2 * (profile.key_len() + profile.salt_len());
        let material: Vec<u8> = (0..len as u8)
            .map(|i| i.wrapping_mul(37) ^ random[0])
            .collect();
        KeyStore::observe(ExportedSrtpKeys {
            remote_random: random,
            is_client: false,
            profile: negotiated,
            keying_material: material.clone(),
        });
        let mut peer = rtc::srtp::config::Config {
            profile,
            ..Default::default()
        };
        peer.set_session_keys_from_keying_material(&material, true)
            .unwrap();
        let provider = rtc::crypto::default_provider().unwrap();
        rtc::srtp::context::Context::new(
            &peer.keys.local_master_key,
            &peer.keys.local_master_salt,
            profile,
            None,
            None,
            provider.crypto(),
        )
        .unwrap()
    }

    fn rtp(peer: &mut rtc::srtp::context::Context, ssrc: u32, seq: u16, payload: &[u8]) -> Bytes {
        rtp_padded(peer, ssrc, seq, payload, false)
    }

    /// [`rtp`], with padding to a multiple of 4 bytes (at least 1) if `padding`.
    fn rtp_padded(
        peer: &mut rtc::srtp::context::Context,
        ssrc: u32,
        seq: u16,
        payload: &[u8],
        padding: bool,
    ) -> Bytes {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                padding,
                payload_type: 102,
                sequence_number: seq,
                timestamp: 3000 * u32::from(seq),
                ssrc,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        peer.encrypt_rtp(&packet.marshal().unwrap())
            .unwrap()
            .freeze()
    }

    struct Session {
        events: mpsc::Receiver<SessionEvent>,
        rtcp: mpsc::Receiver<Rtcp>,
        counters: Arc<Counters>,
        port_feeds: crate::peer::feedback_gate::PortFeeds,
    }

    fn attached(path: &mut MediaPath) -> Session {
        let (events, events_rx) = mpsc::channel(16);
        let (rtcp, rtcp_rx) = mpsc::channel(16);
        let counters = Arc::new(Counters::default());
        let port_feeds = crate::peer::feedback_gate::PortFeeds::default();
        path.attach(Sink {
            events,
            counters: counters.clone(),
            batch_limit: 16,
            rtcp,
            port_feeds: port_feeds.clone(),
        });
        Session {
            events: events_rx,
            rtcp: rtcp_rx,
            counters,
            port_feeds,
        }
    }

    /// What the path took since the last read, as the session receives it: the packets of
    /// the one batch sent (none if nothing was sent).
    fn sent(path: &mut MediaPath, session: &mut Session) -> Vec<(TrackKind, RtpPacket)> {
        path.send_taken();
        let Ok(event) = session.events.try_recv() else {
            return Vec::new();
        };
        let SessionEvent::MediaBatch(mut batch) = event else {
            panic!("not a batch: {event:?}");
        };
        assert!(session.events.try_recv().is_err(), "one batch per read");
        batch
            .take()
            .into_iter()
            .map(|m| match m {
                MediaEvent::Rtp { kind, packet, .. } => (kind, packet),
                other => panic!("not RTP: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_routed_track_is_decrypted_here_and_the_rest_takes_the_long_way() {
        let random = [0xa1; 32];
        let mut peer = handshake(random);
        let mut path = MediaPath::default();
        let mut session = attached(&mut path);
        let counters = MediaPathCounters::default();
        let now = Instant::now();

        // Before the route, and before the hello: handed back, not decrypted; but from the
        // first datagram on, the port makes the connection's feedback.
        assert!(!session.port_feeds.load(Ordering::Relaxed));
        let first = rtp(&mut peer, SSRC, 1, b"first");
        assert!(!path.datagram(&first, now, &counters));
        assert!(session.port_feeds.load(Ordering::Relaxed));
        path.route(SSRC, TrackKind::Video);
        let second = rtp(&mut peer, SSRC, 2, b"second");
        assert!(!path.datagram(&second, now, &counters));
        assert_eq!(counters.not_decrypted.load(Ordering::Relaxed), 1);

        path.saw_hello(random);
        assert!(path.datagram(&rtp(&mut peer, SSRC, 3, b"third"), now, &counters));
        let Some((kind, packet)) = sent(&mut path, &mut session).pop() else {
            panic!("no packet for the session");
        };
        assert_eq!(kind, TrackKind::Video);
        assert_eq!(
            (packet.sequence, packet.ssrc, packet.marker),
            (3, SSRC, true)
        );
        assert_eq!(&packet.payload[..], b"third");
        assert_eq!(session.counters.video_packets.load(Ordering::Relaxed), 1);
        // Padding is cut off the payload.
        let padded = rtp_padded(&mut peer, SSRC, 4, b"padded", true);
        assert!(path.datagram(&padded, now, &counters));
        let Some((_, packet)) = sent(&mut path, &mut session).pop() else {
            panic!("no padded packet for the session");
        };
        assert_eq!(&packet.payload[..], b"padded");

        // Another SSRC (RTX, an unrecorded track), RTCP and a forged packet: handed back.
        let other = rtp(&mut peer, SSRC + 1, 5, b"rtx");
        assert!(!path.datagram(&other, now, &counters));
        let mut forged = rtp(&mut peer, SSRC, 6, b"forged").to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forged = Bytes::from(forged);
        assert!(!path.datagram(&forged, now, &counters));
        let rtcp = Bytes::from_static(&[0x80, 200, 0, 6, 1, 2, 3, 4, 0, 0, 0, 0]);
        assert!(!path.datagram(&rtcp, now, &counters));
        assert!(sent(&mut path, &mut session).is_empty());
        assert_eq!(counters.taken.load(Ordering::Relaxed), 2);
        assert_eq!(counters.not_decrypted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn feedback_goes_in_compounds_that_fit_a_datagram() {
        use rtc::rtcp::receiver_report::ReceiverReport;
        let rr = |n: usize| -> Box<dyn rtc::rtcp::Packet> {
            Box::new(ReceiverReport {
                ssrc: n as u32,
                reports: vec![Default::default(); n],
                ..Default::default()
            })
        };
        // 8 + 24 n bytes each: 32, 488, 560, 488, 32.
        let sizes = |c: &Vec<Rtcp>| -> Vec<Vec<usize>> {
            c.iter()
                .map(|v| v.iter().map(|p| p.marshal_size()).collect())
                .collect()
        };
        let grouped = compounds(vec![rr(1), rr(20), rr(23), rr(20), rr(1)]);
        assert_eq!(sizes(&grouped), vec![vec![32, 488, 560], vec![488, 32]]);
        // Order kept, nothing lost, and one too large for any compound goes alone.
        let grouped = compounds(vec![rr(1), rr(31), rr(60), rr(1)]);
        assert_eq!(sizes(&grouped), vec![vec![32, 752], vec![1448], vec![32]]);
        assert!(compounds(Vec::new()).is_empty());
    }

    /// A full arena is used again once the packets in it are let go, and never while one of
    /// them is still held.
    #[test]
    fn a_full_arena_is_used_again_once_its_packets_are_let_go() {
        // 16-byte packets: four fill an arena.
        fn put(arena: &mut Arena<64>, byte: u8) -> Bytes {
            let a = arena.with_room(16);
            a.extend_from_slice(&[byte; 16]);
            a.split_to(16).freeze()
        }
        let mut arena = Arena::<64>::default();
        let first: Vec<Bytes> = (0..4).map(|i| put(&mut arena, i)).collect();
        // The first arena is full and held: a second one.
        let mut second = vec![put(&mut arena, 4)];
        let start = second[0].as_ptr();
        second.extend((5..8).map(|i| put(&mut arena, i)));
        // Both full and both held: a third.
        let mut third = vec![put(&mut arena, 8)];
        third.extend((9..12).map(|i| put(&mut arena, i)));
        assert!(
            first
                .iter()
                .chain(&second)
                .all(|p| p.as_ptr() != third[0].as_ptr())
        );
        // The second's packets let go: when the third is full, the second takes the next one
        // from its start.
        drop(second);
        let next = put(&mut arena, 12);
        assert_eq!(next.as_ptr(), start);
        // Nothing held was overwritten.
        for (i, p) in first.iter().chain(&third).enumerate() {
            let byte = if i < 4 { i } else { i + 4 };
            assert_eq!(&p[..], &[byte as u8; 16]);
        }
        assert_eq!(&next[..], &[12; 16]);
    }

    /// Every SRTP profile a peer may negotiate decrypts in place (the patched `rtc-srtp`):
    /// the same payload comes out, and a packet whose tag does not match is refused.
    #[test]
    fn every_profile_decrypts_in_place() {
        let profiles = [
            (
                ProtectionProfile::Aes128CmHmacSha1_80,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ),
            (
                ProtectionProfile::Aes128CmHmacSha1_32,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
            ),
            (
                ProtectionProfile::AeadAes128Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            ),
            (
                ProtectionProfile::AeadAes256Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            ),
        ];
        for (i, (profile, negotiated)) in profiles.into_iter().enumerate() {
            let random = [0xb0 + i as u8; 32];
            let mut peer = handshake_with(random, profile, negotiated);
            let mut path = MediaPath::default();
            let mut session = attached(&mut path);
            let counters = MediaPathCounters::default();
            let now = Instant::now();
            path.saw_hello(random);
            path.route(SSRC, TrackKind::Audio);
            // Enough packets to fill each arena and start the next: full-size ones (the
            // 16 KiB arena) and small ones (the 4 KiB one), interleaved as video and audio
            // come. The first 40 are all kept until then: no packet overwrites another's
            // bytes. Then they are let go and the arenas used again ([`Arena`]): each of the
            // next 40 still comes out whole.
            let big = vec![0x5a; 1100];
            let small = vec![0xa5; 200];
            let mut kept = Vec::new();
            for seq in 1..=80u16 {
                let first = seq <= 40;
                let payload = if seq % 2 == 0 || (!first && seq % 3 != 0) {
                    &big
                } else {
                    &small
                };
                let packet = rtp_padded(&mut peer, SSRC, seq, payload, seq % 7 == 0);
                assert!(path.datagram(&packet, now, &counters), "{profile:?} {seq}");
                let Some((_, packet)) = sent(&mut path, &mut session).pop() else {
                    panic!("{profile:?}: no packet {seq}");
                };
                assert_eq!(packet.sequence, seq);
                kept.push((seq, payload, packet.payload));
                if !first || seq == 40 {
                    for (seq, sent, got) in kept.drain(..) {
                        assert_eq!(&got[..], &sent[..], "{profile:?} {seq}");
                    }
                }
            }
            let mut forged = rtp(&mut peer, SSRC, 81, b"forged").to_vec();
            let last = forged.len() - 1;
            forged[last] ^= 1;
            assert!(!path.datagram(&forged, now, &counters), "{profile:?}");
            assert_eq!(counters.taken.load(Ordering::Relaxed), 80);
        }
    }

    #[test]
    fn a_closed_session_takes_nothing_more() {
        let random = [0xa2; 32];
        let mut peer = handshake(random);
        let mut path = MediaPath::default();
        let session = attached(&mut path);
        let counters = MediaPathCounters::default();
        path.saw_hello(random);
        path.route(SSRC, TrackKind::Audio);
        drop(session);
        let now = Instant::now();
        // The first read's hand-over finds the queue closed; the next goes the long way.
        assert!(path.datagram(&rtp(&mut peer, SSRC, 1, b"a"), now, &counters));
        path.send_taken();
        let next = rtp(&mut peer, SSRC, 2, b"b");
        assert!(!path.datagram(&next, now, &counters));
    }

    /// A path with the keys of the handshake named by `random` and `SSRC` routed as `kind`,
    /// its session, and the port's counters.
    fn keyed(
        random: [u8; 32],
        kind: TrackKind,
    ) -> (
        rtc::srtp::context::Context,
        MediaPath,
        Session,
        MediaPathCounters,
    ) {
        let peer = handshake(random);
        let mut path = MediaPath::default();
        let session = attached(&mut path);
        path.saw_hello(random);
        path.route(SSRC, kind);
        (peer, path, session, MediaPathCounters::default())
    }

    #[test]
    fn a_read_is_handed_over_in_one_batch_and_batches_count_against_the_queue() {
        let (mut peer, mut path, mut session, counters) = keyed([0xa4; 32], TrackKind::Video);
        path.route(SSRC + 1, TrackKind::Audio);
        let now = Instant::now();
        for seq in 1..=3 {
            assert!(path.datagram(&rtp(&mut peer, SSRC, seq, b"v"), now, &counters));
        }
        assert!(path.datagram(&rtp(&mut peer, SSRC + 1, 1, b"a"), now, &counters));
        // Nothing is sent before the read is over; then one batch, in the order read.
        assert!(session.events.try_recv().is_err());
        path.send_taken();
        let Ok(SessionEvent::MediaBatch(mut held)) = session.events.try_recv() else {
            panic!("no batch");
        };
        assert_eq!(session.counters.batched.load(Ordering::Relaxed), 4);
        let order: Vec<_> = held
            .take()
            .into_iter()
            .map(|m| match m {
                MediaEvent::Rtp { kind, packet, .. } => (kind, packet.sequence),
                other => panic!("{other:?}"),
            })
            .collect();
        use TrackKind::{Audio, Video};
        assert_eq!(order, [(Video, 1), (Video, 2), (Video, 3), (Audio, 1)]);

        // The queue holds 16 packets (its capacity, `attached`): while the first batch is
        // held, a read of 13 more does not fit and is dropped, counted; 12 would have.
        for seq in 4..=16 {
            assert!(path.datagram(&rtp(&mut peer, SSRC, seq, b"v"), now, &counters));
        }
        path.send_taken();
        assert!(session.events.try_recv().is_err());
        assert_eq!(session.counters.media_dropped.load(Ordering::Relaxed), 13);
        // Once the consumer lets go of the batch, there is room again.
        drop(held);
        assert_eq!(session.counters.batched.load(Ordering::Relaxed), 0);
        for seq in 17..=32 {
            assert!(path.datagram(&rtp(&mut peer, SSRC, seq, b"v"), now, &counters));
        }
        assert_eq!(sent(&mut path, &mut session).len(), 16);
        assert_eq!(session.counters.batched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_gap_in_a_bound_stream_is_asked_for_again() {
        let (mut peer, mut path, mut session, counters) = keyed([0xa3; 32], TrackKind::Video);
        path.bind(
            &StreamInfo {
                ssrc: SSRC,
                clock_rate: 90_000,
                mime_type: "video/H264".into(),
                rtcp_feedback: vec![RTCPFeedback {
                    typ: "nack".into(),
                    parameter: String::new(),
                }],
                ..Default::default()
            },
            true,
        );
        let start = Instant::now();
        for seq in [10u16, 11, 12, 14, 15] {
            // Taken or not, every packet's header reaches the feedback chain.
            path.datagram(&rtp(&mut peer, SSRC, seq, b"x"), start, &counters);
        }
        let mut nacked = Vec::new();
        for step in 1..=20u64 {
            path.tick(start + Duration::from_millis(20 * step), &counters);
            while let Ok(packets) = session.rtcp.try_recv() {
                for p in packets {
                    if let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() {
                        assert_eq!(nack.media_ssrc, SSRC);
                        nacked.extend(nack.nacks.iter().flat_map(|n| n.packet_list()));
                    }
                }
            }
        }
        assert!(nacked.contains(&13), "NACKs asked for {nacked:?}");
        assert!(!nacked.iter().any(|s| [10, 11, 12, 14, 15].contains(s)));
        assert_eq!(counters.feedback_dropped.load(Ordering::Relaxed), 0);
    }
}
