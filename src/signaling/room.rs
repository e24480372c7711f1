//! The viewer's room state as a pure state machine: events in, actions out, no I/O.
//!
//! Keeping this synchronous and clock-free (the caller passes `Instant`s) lets every
//! scenario — join, listing, later joins, departures, reconnects, retries, bad passwords — be
//! unit-tested deterministically, while [`super::client`] only moves bytes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::crypto::Security;
use super::message::IceCandidate;
use super::message::{Inbound, Kind, Outbound, Sealed, candidates_from_value};

/// Host names of the official stateful handshake servers (no `from` needed there).
pub const OFFICIAL_HOSTS: [&str; 2] = ["wss.vdo.ninja", "apibackup.vdo.ninja"];
/// Most streams/peers tracked at once; more than any real room, bounds hostile listings.
pub const MAX_TRACKED: usize = 256;
/// Most queued candidate bundles per peer before its offer arrives.
pub const MAX_QUEUED_BUNDLES: usize = 32;
/// Most distinct user errors remembered for de-duplication.
const MAX_REPORTED: usize = 1024;

/// Identifies a remote peer: the server-assigned UUID (official) or its `from` id (relay).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub String);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which server semantics to speak; the two differ in discovery and in how senders are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Stateful server (listing, UUID rewriting); clients never send `from`.
    Official,
    /// Fan-out relay; every message carries `from`, receivers learn the sender from it.
    Relay,
}

impl Dialect {
    /// Who sent an inbound message: an official server puts the sender's id in `UUID` (it
    /// rewrites targeted messages), a relay leaves `UUID` as the target and the sender in `from`.
    pub fn sender(self, m: &Inbound) -> Option<PeerId> {
        let id = match self {
            Dialect::Official => m.uuid.clone().or_else(|| m.from.clone()),
            Dialect::Relay => m.from.clone(),
        };
        id.map(PeerId)
    }

    /// True for relay traffic meant for another client: a relay fans messages out, and `UUID`
    /// names the target. (An official server only delivers what is ours.)
    pub fn addressed_elsewhere(self, m: &Inbound, self_id: &str) -> bool {
        self == Dialect::Relay && m.uuid.as_deref().is_some_and(|target| target != self_id)
    }

    /// Picks the dialect from the server URL: the official host names are stateful, anything
    /// else is assumed to be a relay (like Raspberry Ninja does).
    pub fn detect(server_url: &str) -> Dialect {
        let rest = server_url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(server_url);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(authority);
        let host = if host.starts_with('[') {
            host
        } else {
            host.split(':').next().unwrap_or(host)
        };
        if OFFICIAL_HOSTS.iter().any(|h| host.eq_ignore_ascii_case(h)) {
            Dialect::Official
        } else {
            Dialect::Relay
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "official" | "stateful" => Ok(Dialect::Official),
            "relay" | "custom" | "customwss" => Ok(Dialect::Relay),
            other => Err(format!("unknown dialect `{other}` (official|relay)")),
        }
    }
}

/// What the viewer is asked to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `--record STREAMID`: one stream, optionally inside a room (joined first).
    Single {
        /// Raw (unhashed) stream id.
        stream: String,
        /// Raw room name, when the stream is published inside a room.
        room: Option<String>,
    },
    /// `--room R --record-room`: every publisher in the room, optionally filtered.
    Room {
        /// Raw room name.
        room: String,
        /// `--record-streams`: raw stream ids to keep; empty = all.
        filter: Vec<String>,
    },
}

/// Static configuration of the state machine.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// What to record.
    pub mode: Mode,
    /// Server dialect (with `auto_dialect`, the first guess).
    pub dialect: Dialect,
    /// The dialect was guessed from the host name (`--dialect auto`): a relay guess turns
    /// official when the server behaves like one (see [`Room::handle`]).
    pub auto_dialect: bool,
    /// Our own id, put in `from` in the relay dialect.
    pub self_id: String,
    /// Password-derived hashes and cipher.
    pub security: Security,
    /// Delays between repeated `play` requests while no offer arrives; the last repeats.
    pub replay_schedule: Vec<Duration>,
    /// After this long without an offer for a requested stream, or (room mode) without any
    /// publisher in the room, report a user error once: a wrong password looks like this.
    pub no_offer_timeout: Duration,
}

impl RoomConfig {
    /// Configuration with the Raspberry Ninja retry schedule (15 s, 45 s, then every 180 s)
    /// and an 8 s no-offer warning.
    pub fn new(mode: Mode, dialect: Dialect, self_id: String, security: Security) -> Self {
        RoomConfig {
            mode,
            dialect,
            auto_dialect: false,
            self_id,
            security,
            replay_schedule: vec![
                Duration::from_secs(15),
                Duration::from_secs(45),
                Duration::from_secs(180),
            ],
            // Said within 10 s of joining, the 1 s tick included.
            no_offer_timeout: Duration::from_secs(8),
        }
    }
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    /// The WebSocket is (re)connected.
    Connected,
    /// The WebSocket dropped; running recordings continue.
    Disconnected,
    /// A parsed server message.
    Message(Inbound),
    /// Periodic clock tick (drives re-plays and timeouts).
    Tick,
    /// The peer layer answers an offer.
    SendAnswer {
        /// Publisher the answer goes to.
        peer: PeerId,
        /// `session` of the offer, echoed.
        session: Option<Value>,
        /// Answer SDP.
        sdp: String,
        /// Encrypt (mirror the offer).
        encrypt: bool,
    },
    /// The peer layer has local ICE candidates for a publisher.
    SendCandidates {
        /// Publisher the candidates go to.
        peer: PeerId,
        /// `session` of the peer connection.
        session: Option<Value>,
        /// Candidates to send.
        candidates: Vec<IceCandidate>,
    },
    /// The peer layer closed or lost the connection with `peer`; request the stream again.
    StreamClosed {
        /// The publisher whose connection ended.
        peer: PeerId,
        /// Media was recorded: the end is the publisher leaving (or dying), not a failure.
        recorded: bool,
    },
}

/// Outputs of the state machine, executed by the client task.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this message on the WebSocket (already dialect-decorated).
    Send(Outbound),
    /// Start (or restart) recording: an offer from `peer` for `stream_id`.
    Offer {
        /// The publisher.
        peer: PeerId,
        /// Stream id without the hash suffix (for file names).
        stream_id: String,
        /// Stream id as on the wire.
        wire_stream_id: String,
        /// `session` to echo on the answer and candidates.
        session: Option<Value>,
        /// Offer SDP.
        sdp: String,
        /// The offer was encrypted (encrypt the answer too).
        encrypted: bool,
    },
    /// ICE candidates from the publisher for its current session.
    RemoteCandidates {
        /// The publisher.
        peer: PeerId,
        /// `session` they belong to.
        session: Option<Value>,
        /// The candidates.
        candidates: Vec<IceCandidate>,
    },
    /// Stop recording the stream of `peer` (it left or restarted).
    StreamEnded {
        /// The publisher.
        peer: PeerId,
        /// Stream id without the hash suffix.
        stream_id: String,
    },
    /// A one-line problem the user should see (wrong password, room full...).
    UserError(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// `play` sent (or due), no offer yet.
    Waiting {
        since: Instant,
        next_play: Instant,
        attempt: usize,
        warned: bool,
    },
    /// An offer was accepted from this peer.
    Active(PeerId),
}

#[derive(Debug, Clone)]
struct StreamState {
    peer: Option<PeerId>,
    phase: Phase,
    /// Recordings of this stream in a row that ended within [`SHORT_SESSION`] without any
    /// media (a publisher whose offers cannot be answered, or that drops at once): each
    /// doubles the wait. A recording with media that ends is the publisher leaving.
    failures: u32,
    /// When the current recording was accepted.
    active_since: Option<Instant>,
    /// No `play`, and no unasked offer accepted, before this (the backoff after failures).
    hold_until: Option<Instant>,
}

impl StreamState {
    fn new(peer: Option<PeerId>, now: Instant) -> StreamState {
        StreamState {
            peer,
            phase: waiting(now, now),
            failures: 0,
            active_since: None,
            hold_until: None,
        }
    }

    fn held(&self, now: Instant) -> bool {
        self.hold_until.is_some_and(|t| now < t)
    }
}

/// A recording that ends sooner than this after its offer counts as a failure.
pub const SHORT_SESSION: Duration = Duration::from_secs(20);
/// After this many failures in a row the stream is said to be set aside (retried at most
/// every [`MAX_FAILURE_BACKOFF`]).
pub const SET_ASIDE_AFTER: u32 = 5;
/// The longest wait between tries of a failing stream.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after `failures` failures in a row: none after the first (a publisher that
/// vanished is best asked again at once), then 1 s doubling up to 60 s, minus up to a quarter
/// (spread by the stream's name, so streams failing together do not retry together; the state
/// machine stays deterministic).
fn failure_backoff(failures: u32, wire: &str) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << (failures - 2).min(16))
        .min(MAX_FAILURE_BACKOFF);
    let mut h: u32 = 2_166_136_261;
    for b in wire.bytes().chain(failures.to_le_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    step - step / 4 * (h % 1000) / 1000
}

/// Candidates received before the offer: (session, candidates).
type QueuedBundle = (Option<Value>, Vec<IceCandidate>);

#[derive(Debug, Clone)]
struct PeerState {
    wire_stream: String,
    session: Option<Value>,
    encrypted: bool,
}

/// Counters for dropped or ignored input, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// Messages that were valid but irrelevant or unattributable.
    pub ignored: u64,
    /// Offers/candidates that could not be decrypted or were malformed.
    pub undecryptable: u64,
    /// Candidate bundles dropped because a queue was full or stale.
    pub dropped_candidates: u64,
}

/// The viewer's state machine. Create with [`Room::new`], feed with [`Room::handle`].
#[derive(Debug)]
pub struct Room {
    cfg: RoomConfig,
    connected: bool,
    streams: HashMap<String, StreamState>,
    peers: HashMap<PeerId, PeerState>,
    queued: HashMap<PeerId, VecDeque<QueuedBundle>>,
    reported: std::collections::HashSet<String>,
    /// Room mode: when the room was first joined, until a publisher is heard of (then
    /// `None`), for the wrong-password hint.
    room_quiet_since: Option<Instant>,
    /// Distinct over-long stream IDs reported so far (bounded by [`MAX_LONG_ID_REPORTS`]).
    long_ids_reported: usize,
    stats: RoomStats,
}

/// Stream IDs longer than this (characters) are skipped: VDO.Ninja's are at most 50.
pub const MAX_ACCEPTED_STREAM_ID_CHARS: usize = super::message::MAX_ID_CHARS;
/// Distinct over-long stream IDs named in a line; more are only counted (a hostile client
/// could send endless distinct ones).
const MAX_LONG_ID_REPORTS: usize = 8;

impl Room {
    /// A fresh, disconnected room.
    pub fn new(cfg: RoomConfig) -> Self {
        Room {
            cfg,
            connected: false,
            streams: HashMap::new(),
            peers: HashMap::new(),
            queued: HashMap::new(),
            reported: Default::default(),
            room_quiet_since: None,
            long_ids_reported: 0,
            stats: RoomStats::default(),
        }
    }

    /// Counters of ignored input.
    pub fn stats(&self) -> RoomStats {
        self.stats
    }

    /// The configuration (the client needs the security settings and dialect).
    pub fn config(&self) -> &RoomConfig {
        &self.cfg
    }

    /// Peers with an accepted offer, i.e. running recordings.
    pub fn active_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.peers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Feeds one event; returns the actions to execute in order.
    pub fn handle(&mut self, now: Instant, event: RoomEvent) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            RoomEvent::Connected => self.on_connected(now, &mut out),
            RoomEvent::Disconnected => self.connected = false,
            RoomEvent::Tick => self.on_tick(now, &mut out),
            RoomEvent::Message(m) => self.on_message(now, m, &mut out),
            RoomEvent::SendAnswer {
                peer,
                session,
                sdp,
                encrypt,
            } => {
                let desc = json!({"type": "answer", "sdp": sdp});
                let cipher = if encrypt {
                    self.cfg.security.cipher()
                } else {
                    None
                };
                let (sealed, vector) = Sealed::seal(&desc, cipher);
                let wire = self.peers.get(&peer).map(|p| p.wire_stream.clone());
                let msg =
                    Outbound::answer(&peer.0, session.as_ref(), sealed, vector, wire.as_deref());
                out.push(self.send(msg));
            }
            RoomEvent::SendCandidates {
                peer,
                session,
                candidates,
            } => {
                if candidates.is_empty() {
                    return out;
                }
                let encrypted = self.peers.get(&peer).is_some_and(|p| p.encrypted);
                let cipher = if encrypted {
                    self.cfg.security.cipher()
                } else {
                    None
                };
                let value = serde_json::to_value(&candidates).unwrap_or(Value::Null);
                let (sealed, vector) = Sealed::seal(&value, cipher);
                out.push(self.send(Outbound::candidates(
                    &peer.0,
                    session.as_ref(),
                    sealed,
                    vector,
                )));
            }
            RoomEvent::StreamClosed { peer, recorded } => {
                if let Some(p) = self.peers.remove(&peer) {
                    self.queued.remove(&peer);
                    let short = self.streams.get(&p.wire_stream).is_some_and(|s| {
                        s.active_since
                            .is_none_or(|t| now.duration_since(t) < SHORT_SESSION)
                    });
                    self.recording_ended(now, &p.wire_stream, short && !recorded, &mut out);
                    self.on_tick(now, &mut out);
                }
            }
        }
        out
    }

    /// A recording of `wire` ended; `failed`: it was short and had no media, or a new offer
    /// replaced it at once. Failures in a row back the stream off (see [`failure_backoff`])
    /// and the fifth is said once; anything else resets them.
    fn recording_ended(&mut self, now: Instant, wire: &str, failed: bool, out: &mut Vec<Action>) {
        let Some(s) = self.streams.get_mut(wire) else {
            return;
        };
        s.failures = if failed {
            s.failures.saturating_add(1)
        } else {
            0
        };
        s.active_since = None;
        let delay = failure_backoff(s.failures, wire);
        s.hold_until = (!delay.is_zero()).then(|| now + delay);
        s.phase = waiting(now, now + delay);
        if s.failures == SET_ASIDE_AFTER {
            let n = s.failures;
            let raw = self.cfg.security.desalt_stream_id(wire);
            let wait = MAX_FAILURE_BACKOFF.as_secs();
            self.report(
                format!("failing:{wire}"),
                format!(
                    "stream '{raw}' failed {n} times in a row (each recording ended within {} s with no media, or was replaced by a new offer); set aside: asked again at most every {wait} s",
                    SHORT_SESSION.as_secs()
                ),
                out,
            );
        }
    }

    fn send(&self, msg: Outbound) -> Action {
        match self.cfg.dialect {
            Dialect::Official => Action::Send(msg),
            Dialect::Relay => Action::Send(msg.with_from(&self.cfg.self_id)),
        }
    }

    fn report(&mut self, key: String, text: String, out: &mut Vec<Action>) {
        if self.reported.len() < MAX_REPORTED && self.reported.insert(key) {
            out.push(Action::UserError(text));
        }
    }

    fn room_name(&self) -> Option<&str> {
        match &self.cfg.mode {
            Mode::Single { room, .. } => room.as_deref(),
            Mode::Room { room, .. } => Some(room),
        }
    }

    fn wanted(&self, wire: &str) -> bool {
        match &self.cfg.mode {
            Mode::Single { stream, .. } => self.cfg.security.hash_stream_id(stream) == wire,
            Mode::Room { filter, .. } => {
                filter.is_empty() || {
                    let raw = self.cfg.security.desalt_stream_id(wire);
                    filter.iter().any(|f| *f == raw || f == wire)
                }
            }
        }
    }

    fn on_connected(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connected = true;
        if let Some(room) = self.room_name() {
            let wire_room = self.cfg.security.room_hash(room);
            out.push(self.send(Outbound::join_room(&wire_room)));
        }
        match &self.cfg.mode {
            Mode::Single { stream, .. } => {
                let wire = self.cfg.security.hash_stream_id(stream);
                let st = self
                    .streams
                    .entry(wire)
                    .or_insert_with(|| StreamState::new(None, now));
                let at = st.hold_until.unwrap_or(now).max(now);
                if let Phase::Waiting { next_play, .. } = &mut st.phase {
                    *next_play = at;
                }
            }
            Mode::Room { .. } => {
                // Publishers are rediscovered from the new listing / announcements; keep only
                // the streams being recorded.
                self.streams
                    .retain(|_, s| matches!(s.phase, Phase::Active(_)));
                if !self.reported.contains("quiet-room") && self.streams.is_empty() {
                    self.room_quiet_since.get_or_insert(now);
                }
            }
        }
        self.on_tick(now, out);
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.connected {
            return;
        }
        if let Some(since) = self.room_quiet_since
            && now.duration_since(since) >= self.cfg.no_offer_timeout
        {
            self.room_quiet_since = None;
            let room = self.room_name().unwrap_or_default().to_string();
            let secs = self.cfg.no_offer_timeout.as_secs();
            let password = if self.cfg.security.enabled() {
                "a password"
            } else {
                "no password (--password false)"
            };
            self.report(
                "quiet-room".into(),
                format!(
                    "no publisher in room '{room}' {secs}s after joining; if they are there, check --password/--salt: we use {password}, and another password is another room on the server"
                ),
                out,
            );
        }
        let schedule = &self.cfg.replay_schedule;
        let mut sends = Vec::new();
        let mut warn = Vec::new();
        let mut keys: Vec<&String> = self.streams.keys().collect();
        keys.sort();
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        for wire in keys {
            let Some(st) = self.streams.get_mut(&wire) else {
                continue;
            };
            if let Phase::Waiting {
                since,
                next_play,
                attempt,
                warned,
            } = &mut st.phase
            {
                if now >= *next_play {
                    sends.push(Outbound::play(
                        &wire,
                        st.peer.as_ref().map(|p| p.0.as_str()),
                    ));
                    let delay = schedule
                        .get((*attempt).min(schedule.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(Duration::from_secs(60));
                    *attempt += 1;
                    *next_play = now + delay;
                }
                // A stream whose recordings fail was said to fail; no-offer is for silence.
                if !*warned && now.duration_since(*since) >= self.cfg.no_offer_timeout {
                    *warned = true;
                    if st.failures == 0 {
                        warn.push(wire.clone());
                    }
                }
            }
        }
        for m in sends {
            out.push(self.send(m));
        }
        for wire in warn {
            let raw = self.cfg.security.desalt_stream_id(&wire);
            let secs = self.cfg.no_offer_timeout.as_secs();
            let hint = match self.cfg.security.stream_suffix() {
                Some(s) => format!("our hash suffix is {s}"),
                None => "password disabled".to_string(),
            };
            self.report(
                format!("no-offer:{wire}"),
                format!(
                    "no offer for stream '{raw}' after {secs}s: is it publishing, and do --password/--salt match the publisher ({hint})?"
                ),
                out,
            );
        }
    }

    /// A publisher `peer` (maybe unknown) publishes `wire`: request it unless already handled.
    fn discovered(
        &mut self,
        now: Instant,
        peer: Option<PeerId>,
        wire: &str,
        out: &mut Vec<Action>,
    ) {
        self.room_quiet_since = None;
        if self.too_long(wire, out) {
            return;
        }
        if !self.wanted(wire) {
            self.stats.ignored += 1;
            self.other_password(wire, out);
            return;
        }
        if !self.cfg.security.has_our_suffix(wire) {
            let raw = wire.to_string();
            self.report(
                format!("suffix:{raw}"),
                format!("stream '{raw}' does not carry our password hash: check --password/--salt"),
                out,
            );
        }
        if !self.streams.contains_key(wire) && self.streams.len() >= MAX_TRACKED {
            self.stats.ignored += 1;
            return;
        }
        let st = self
            .streams
            .entry(wire.to_string())
            .or_insert_with(|| StreamState::new(None, now));
        let replaced = match (&st.phase, &peer) {
            (Phase::Active(old), Some(new)) if old != new => Some(old.clone()),
            (Phase::Active(_), _) => return,
            _ => None,
        };
        if let Some(p) = &peer
            && st.peer.as_ref() != Some(p)
        {
            // Another publisher instance (a restart, with a new id): its predecessor's
            // failures are not its own.
            st.failures = 0;
            st.hold_until = None;
        }
        if peer.is_some() {
            st.peer = peer;
        }
        if let Some(old) = replaced {
            // The publisher restarted (or another one took the stream ID) while the old
            // connection has not noticed yet: that recording ends and the new one is asked.
            st.phase = waiting(now, now);
            st.active_since = None;
            let raw = self.cfg.security.desalt_stream_id(wire);
            tracing::info!(stream = %raw, "publisher announced again under a new id; recording it anew");
            self.queued.remove(&old);
            if self.peers.remove(&old).is_some() {
                out.push(Action::StreamEnded {
                    peer: old,
                    stream_id: raw,
                });
            }
        }
        let Some(st) = self.streams.get_mut(wire) else {
            return;
        };
        // Ask right away (a new announcement is the best moment), then keep the schedule;
        // a stream that keeps failing waits out its backoff however often it is announced.
        let at = st.hold_until.unwrap_or(now).max(now);
        if let Phase::Waiting { next_play, .. } = &mut st.phase {
            *next_play = at;
        }
        self.on_tick(now, out);
    }

    /// True (and said once per ID, for the first few) when a stream ID is longer than any
    /// VDO.Ninja publisher sends: it is skipped.
    fn too_long(&mut self, wire: &str, out: &mut Vec<Action>) -> bool {
        let n = wire.chars().count();
        if n <= MAX_ACCEPTED_STREAM_ID_CHARS {
            return false;
        }
        self.stats.ignored += 1;
        if self.long_ids_reported < MAX_LONG_ID_REPORTS {
            let head: String = wire.chars().take(40).collect();
            let key = format!("long:{head}:{n}");
            if !self.reported.contains(&key) {
                self.long_ids_reported += 1;
                self.report(
                    key,
                    format!(
                        "skipping stream ID '{head}…' ({n} characters; at most {MAX_ACCEPTED_STREAM_ID_CHARS} are accepted)"
                    ),
                    out,
                );
            }
        }
        true
    }

    /// Single mode: an announced stream that is ours under another password's hash suffix
    /// (or none) says the passwords differ, sooner than the no-offer timeout can.
    fn other_password(&mut self, wire: &str, out: &mut Vec<Action>) {
        let Mode::Single { stream, .. } = &self.cfg.mode else {
            return;
        };
        let ours = self.cfg.security.hash_stream_id(stream);
        let base_len = ours.chars().count()
            - self
                .cfg
                .security
                .stream_suffix()
                .map_or(0, |s| s.chars().count());
        let base: String = ours.chars().take(base_len).collect();
        let Some(rest) = wire.strip_prefix(base.as_str()) else {
            return;
        };
        let suffix_like = rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_hexdigit());
        if !(rest.is_empty() || suffix_like) {
            return;
        }
        let theirs = if rest.is_empty() {
            "no password".to_string()
        } else {
            format!("hash suffix {rest}")
        };
        let mine = match self.cfg.security.stream_suffix() {
            Some(s) => format!("ours is {s}"),
            None => "our password is disabled".to_string(),
        };
        self.report(
            format!("other-password:{wire}"),
            format!(
                "stream '{stream}' is published with another password ({theirs}; {mine}): check --password/--salt"
            ),
            out,
        );
    }

    /// With `auto_dialect`, a relay guess is corrected by what the server does: only an
    /// official (stateful) server answers `joinroom` with a `listing`, and only it names the
    /// sender of a targeted message in `UUID` without a `from` (a relay leaves `UUID` as the
    /// target and the sender in `from`). Self-hosted or mapped official servers have host
    /// names the guess cannot know.
    fn learn_dialect(&mut self, m: &Inbound) {
        if !self.cfg.auto_dialect || self.cfg.dialect != Dialect::Relay {
            return;
        }
        let listing = matches!(m.kind, Kind::Listing { .. });
        let official_sender = m.from.is_none()
            && matches!(m.kind, Kind::Description(_) | Kind::Candidates(_))
            && m.uuid.as_deref().is_some_and(|u| u != self.cfg.self_id);
        if listing || official_sender {
            tracing::info!(
                "the handshake server behaves like an official (stateful) one: using the official dialect"
            );
            self.cfg.dialect = Dialect::Official;
        }
    }

    fn on_message(&mut self, now: Instant, mut m: Inbound, out: &mut Vec<Action>) {
        self.learn_dialect(&m);
        if let Kind::Departed = m.kind {
            if let Some(u) = &m.uuid {
                self.peer_left(now, &PeerId(u.clone()), out);
            }
            return;
        }
        if self.cfg.dialect.addressed_elsewhere(&m, &self.cfg.self_id) {
            self.stats.ignored += 1;
            return;
        }
        let sender = self.cfg.dialect.sender(&m);
        let kind = std::mem::replace(&mut m.kind, Kind::Ping);
        match kind {
            Kind::Listing { members } => {
                for mem in members {
                    if let Some(s) = &mem.stream_id {
                        self.discovered(now, Some(PeerId(mem.uuid.clone())), s, out);
                    }
                }
            }
            Kind::VideoAdded | Kind::SomeoneJoined | Kind::JoinRoom | Kind::Seed => {
                match &m.stream_id {
                    Some(s) => self.discovered(now, sender, s, out),
                    None => self.stats.ignored += 1,
                }
            }
            Kind::Description(sealed) => {
                self.on_description(now, sender, &m, &sealed, out);
            }
            Kind::Candidates(sealed) => {
                let Some(peer) = sender else {
                    self.stats.ignored += 1;
                    return;
                };
                let value = match sealed.open(m.vector.as_deref(), self.cfg.security.cipher()) {
                    Ok(v) => v,
                    Err(_) => {
                        self.stats.undecryptable += 1;
                        return;
                    }
                };
                let cands = candidates_from_value(&value);
                if cands.is_empty() {
                    return;
                }
                match self.peers.get(&peer) {
                    Some(p) => {
                        if m.session.is_some() && p.session.is_some() && m.session != p.session {
                            self.stats.dropped_candidates += 1;
                            return;
                        }
                        out.push(Action::RemoteCandidates {
                            peer,
                            session: m.session.clone(),
                            candidates: cands,
                        });
                    }
                    None => {
                        if !self.queued.contains_key(&peer) && self.queued.len() >= MAX_TRACKED {
                            self.stats.dropped_candidates += 1;
                            return;
                        }
                        let q = self.queued.entry(peer).or_default();
                        if q.len() >= MAX_QUEUED_BUNDLES {
                            q.pop_front();
                            self.stats.dropped_candidates += 1;
                        }
                        q.push_back((m.session.clone(), cands));
                    }
                }
            }
            Kind::Bye | Kind::Cleanup | Kind::VideoRemoved => match sender {
                Some(p) => self.peer_left(now, &p, out),
                None => self.stats.ignored += 1,
            },
            Kind::Alert(text) | Kind::Error(text) => {
                self.report(
                    format!("server:{text}"),
                    format!("server says: {text}"),
                    out,
                );
            }
            Kind::AssignedId(_) | Kind::Ping | Kind::Play | Kind::OfferRequest => {
                self.stats.ignored += 1;
            }
            Kind::Departed => {}
        }
    }

    fn on_description(
        &mut self,
        now: Instant,
        sender: Option<PeerId>,
        m: &Inbound,
        sealed: &Sealed,
        out: &mut Vec<Action>,
    ) {
        let Some(peer) = sender else {
            self.stats.ignored += 1;
            return;
        };
        // Which stream is this? The offer's streamID, else what we know about the peer, else
        // (single mode) the one stream we asked for.
        let wire = m
            .stream_id
            .clone()
            .or_else(|| self.peers.get(&peer).map(|p| p.wire_stream.clone()))
            .or_else(|| {
                self.streams
                    .iter()
                    .find(|(_, s)| s.peer.as_ref() == Some(&peer))
                    .map(|(k, _)| k.clone())
            })
            .or_else(|| match &self.cfg.mode {
                Mode::Single { stream, .. } => Some(self.cfg.security.hash_stream_id(stream)),
                Mode::Room { .. } => None,
            });
        let Some(wire) = wire else {
            self.stats.ignored += 1;
            return;
        };
        if self.too_long(&wire, out) {
            return;
        }
        if !self.wanted(&wire) {
            self.stats.ignored += 1;
            return;
        }
        let raw = self.cfg.security.desalt_stream_id(&wire);
        let desc = match sealed.open(m.vector.as_deref(), self.cfg.security.cipher()) {
            Ok(v) => v,
            Err(e) => {
                self.stats.undecryptable += 1;
                self.report(
                    format!("decrypt:{wire}"),
                    format!(
                        "could not decrypt the offer for stream '{raw}' ({e}): check --password/--salt"
                    ),
                    out,
                );
                return;
            }
        };
        let kind = desc.get("type").and_then(Value::as_str);
        let sdp = desc.get("sdp").and_then(Value::as_str);
        let (Some("offer"), Some(sdp)) = (kind, sdp) else {
            self.stats.ignored += 1;
            return;
        };
        if !self.streams.contains_key(&wire) && self.streams.len() >= MAX_TRACKED {
            self.stats.ignored += 1;
            return;
        }
        // A stream backing off after failures takes no offer before its time (a publisher
        // sending offers we cannot answer would otherwise start a recorder per offer).
        if self
            .streams
            .get(&wire)
            .is_some_and(|s| s.held(now) && !matches!(s.phase, Phase::Active(_)))
        {
            self.stats.ignored += 1;
            return;
        }
        // A new session from a peer we already record, or another peer now serving the
        // stream: the old recording ends first (for a new session of the same stream, the
        // offer itself tells the recorder to replace it).
        if let Some(old) = self.peers.get(&peer)
            && (old.session != m.session || old.wire_stream != wire)
        {
            let old_raw = self.cfg.security.desalt_stream_id(&old.wire_stream);
            let old_wire = old.wire_stream.clone();
            self.peers.remove(&peer);
            if old_wire != wire {
                out.push(Action::StreamEnded {
                    peer: peer.clone(),
                    stream_id: old_raw,
                });
                self.streams.remove(&old_wire);
            } else {
                // A new offer right after the last one (a publisher whose offers cannot be
                // answered sends them in a stream): the churn is backed off like failures.
                let short = self.streams.get(&wire).is_some_and(|s| {
                    s.active_since
                        .is_some_and(|t| now.duration_since(t) < SHORT_SESSION)
                });
                self.recording_ended(now, &wire, short, out);
                if self.streams.get(&wire).is_some_and(|s| s.held(now)) {
                    self.stats.ignored += 1;
                    out.push(Action::StreamEnded {
                        peer: peer.clone(),
                        stream_id: old_raw,
                    });
                    return;
                }
            }
        }
        if let Some(StreamState {
            phase: Phase::Active(other),
            ..
        }) = self.streams.get(&wire)
            && *other != peer
        {
            let other = other.clone();
            self.peers.remove(&other);
            self.queued.remove(&other);
            out.push(Action::StreamEnded {
                peer: other,
                stream_id: raw.clone(),
            });
        }
        let failures = self.streams.get(&wire).map_or(0, |s| s.failures);
        self.streams.insert(
            wire.clone(),
            StreamState {
                peer: Some(peer.clone()),
                phase: Phase::Active(peer.clone()),
                failures,
                active_since: Some(now),
                hold_until: None,
            },
        );
        self.peers.insert(
            peer.clone(),
            PeerState {
                wire_stream: wire.clone(),
                session: m.session.clone(),
                encrypted: sealed.is_encrypted(),
            },
        );
        out.push(Action::Offer {
            peer: peer.clone(),
            stream_id: raw,
            wire_stream_id: wire,
            session: m.session.clone(),
            sdp: sdp.to_string(),
            encrypted: sealed.is_encrypted(),
        });
        if let Some(q) = self.queued.remove(&peer) {
            for (session, candidates) in q {
                if session.is_some() && m.session.is_some() && session != m.session {
                    self.stats.dropped_candidates += 1;
                    continue;
                }
                out.push(Action::RemoteCandidates {
                    peer: peer.clone(),
                    session: m.session.clone(),
                    candidates,
                });
            }
        }
    }

    fn peer_left(&mut self, now: Instant, peer: &PeerId, out: &mut Vec<Action>) {
        self.queued.remove(peer);
        if let Some(p) = self.peers.remove(peer) {
            out.push(Action::StreamEnded {
                peer: peer.clone(),
                stream_id: self.cfg.security.desalt_stream_id(&p.wire_stream),
            });
        }
        match &self.cfg.mode {
            Mode::Room { .. } => self.streams.retain(|_, s| s.peer.as_ref() != Some(peer)),
            Mode::Single { .. } => {
                for s in self.streams.values_mut() {
                    if s.peer.as_ref() == Some(peer) {
                        s.peer = None;
                        // Keep asking: the publisher may come back.
                        let since = now;
                        s.phase = waiting(
                            since,
                            now + self
                                .cfg
                                .replay_schedule
                                .first()
                                .copied()
                                .unwrap_or(Duration::from_secs(15)),
                        );
                    }
                }
            }
        }
    }
}

fn waiting(since: Instant, next_play: Instant) -> Phase {
    Phase::Waiting {
        since,
        next_play,
        attempt: 0,
        warned: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::crypto::{DEFAULT_SALT, Password};
    use crate::signaling::message::parse_inbound;

    fn sec() -> Security {
        Security::new(&Password::Default, DEFAULT_SALT)
    }

    fn room_mode(filter: &[&str], dialect: Dialect) -> Room {
        let mode = Mode::Room {
            room: "myroom".into(),
            filter: filter.iter().map(|s| s.to_string()).collect(),
        };
        Room::new(RoomConfig::new(mode, dialect, "me".into(), sec()))
    }

    fn single(dialect: Dialect) -> Room {
        let mode = Mode::Single {
            stream: "cam".into(),
            room: None,
        };
        Room::new(RoomConfig::new(mode, dialect, "me".into(), sec()))
    }

    fn msg(v: Value) -> RoomEvent {
        RoomEvent::Message(parse_inbound(&v.to_string()).expect("test message parses"))
    }

    fn sends(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(o) => Some(Value::Object(o.0.clone())),
                _ => None,
            })
            .collect()
    }

    fn offer_json(uuid: &str, stream: &str, session: &str) -> Value {
        json!({"UUID": uuid, "streamID": stream, "session": session,
               "description": {"type": "offer", "sdp": format!("v=0 {uuid}")}})
    }

    fn encrypted_offer(uuid: &str, stream: &str, session: &str) -> Value {
        let c = sec().cipher().unwrap().clone();
        let (hex, iv) = c.encrypt(&json!({"type":"offer","sdp":"v=0 enc"}).to_string());
        json!({"UUID": uuid, "streamID": stream, "session": session, "description": hex, "vector": iv})
    }

    #[test]
    fn dialect_detection() {
        assert_eq!(
            Dialect::detect("wss://wss.vdo.ninja:443"),
            Dialect::Official
        );
        assert_eq!(
            Dialect::detect("wss://apibackup.vdo.ninja"),
            Dialect::Official
        );
        assert_eq!(
            Dialect::detect("WSS://WSS.VDO.NINJA/path"),
            Dialect::Official
        );
        assert_eq!(Dialect::detect("ws://127.0.0.1:8443"), Dialect::Relay);
        assert_eq!(Dialect::detect("wss://example.com"), Dialect::Relay);
        assert_eq!(
            Dialect::detect("wss://evil.wss.vdo.ninja.example"),
            Dialect::Relay
        );
        assert_eq!("official".parse::<Dialect>(), Ok(Dialect::Official));
        assert_eq!("relay".parse::<Dialect>(), Ok(Dialect::Relay));
        assert!("x".parse::<Dialect>().is_err());
    }

    #[test]
    fn official_room_join_listing_later_join_leave_rejoin() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Official);
        let a = r.handle(t0, RoomEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc"})]
        );
        let a = r.handle(
            t0,
            msg(json!({"request":"listing","list":[
                {"UUID":"p1","streamID":"alice808d64"},{"UUID":"v2"},{"UUID":"p3","streamID":"bob808d64"}]})),
        );
        assert_eq!(
            sends(&a),
            vec![
                json!({"request":"play","streamID":"alice808d64","UUID":"p1"}),
                json!({"request":"play","streamID":"bob808d64","UUID":"p3"}),
            ]
        );
        let a = r.handle(t0, msg(offer_json("p1", "alice808d64", "s1")));
        assert_eq!(
            a,
            vec![Action::Offer {
                peer: PeerId("p1".into()),
                stream_id: "alice".into(),
                wire_stream_id: "alice808d64".into(),
                session: Some(json!("s1")),
                sdp: "v=0 p1".into(),
                encrypted: false,
            }]
        );
        // Later join.
        let a = r.handle(
            t0,
            msg(json!({"request":"videoaddedtoroom","UUID":"p4","streamID":"carol808d64"})),
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"carol808d64","UUID":"p4"})]
        );
        let a = r.handle(
            t0,
            msg(json!({"request":"someonejoined","UUID":"p5","streamID":"dave808d64"})),
        );
        assert_eq!(sends(&a).len(), 1);
        let a = r.handle(t0, msg(json!({"request":"someonejoined","UUID":"v6"})));
        assert!(a.is_empty());
        // Leave via bye.
        let a = r.handle(t0, msg(json!({"bye":true,"UUID":"p1"})));
        assert_eq!(
            a,
            vec![Action::StreamEnded {
                peer: PeerId("p1".into()),
                stream_id: "alice".into()
            }]
        );
        assert!(r.active_peers().is_empty());
        // Comes back: new announcement, new play, new recording.
        let a = r.handle(
            t0,
            msg(json!({"request":"videoaddedtoroom","UUID":"p7","streamID":"alice808d64"})),
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"alice808d64","UUID":"p7"})]
        );
        let a = r.handle(t0, msg(offer_json("p7", "alice808d64", "s9")));
        assert!(
            matches!(&a[..], [Action::Offer { peer, stream_id, .. }] if peer.0 == "p7" && stream_id == "alice")
        );
    }

    #[test]
    fn cleanup_and_videoremoved_end_recordings() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(offer_json("p1", "a808d64", "s")));
        r.handle(t0, msg(offer_json("p2", "b808d64", "s")));
        assert_eq!(r.active_peers().len(), 2);
        let a = r.handle(t0, msg(json!({"request":"cleanup","UUID":"p1"})));
        assert!(matches!(&a[..], [Action::StreamEnded { stream_id, .. }] if stream_id == "a"));
        let a = r.handle(
            t0,
            msg(json!({"request":"videoremovedfromroom","UUID":"p2","streamID":"b808d64"})),
        );
        assert!(matches!(&a[..], [Action::StreamEnded { stream_id, .. }] if stream_id == "b"));
        // Unknown peer leaving is harmless.
        assert!(
            r.handle(t0, msg(json!({"bye":true,"UUID":"zz"})))
                .is_empty()
        );
    }

    #[test]
    fn record_streams_filter() {
        let t0 = Instant::now();
        let mut r = room_mode(&["alice"], Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let a = r.handle(
            t0,
            msg(json!({"request":"listing","list":[{"UUID":"p1","streamID":"alice808d64"},{"UUID":"p2","streamID":"bob808d64"}]})),
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"alice808d64","UUID":"p1"})]
        );
        // An unsolicited offer for a filtered-out stream is ignored.
        assert!(
            r.handle(t0, msg(offer_json("p2", "bob808d64", "s")))
                .is_empty()
        );
        assert!(r.stats().ignored >= 2);
    }

    #[test]
    fn reconnect_rejoins_and_keeps_recordings() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(
            t0,
            msg(json!({"request":"listing","list":[{"UUID":"p1","streamID":"a808d64"},{"UUID":"p2","streamID":"b808d64"}]})),
        );
        r.handle(t0, msg(offer_json("p1", "a808d64", "s")));
        let a = r.handle(t0, RoomEvent::Disconnected);
        assert!(a.is_empty(), "recordings keep running: {a:?}");
        // No sends while disconnected, even when retries are due.
        assert!(
            r.handle(t0 + Duration::from_secs(20), RoomEvent::Tick)
                .is_empty()
        );
        let t1 = t0 + Duration::from_secs(21);
        let a = r.handle(t1, RoomEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc"})]
        );
        let a = r.handle(
            t1,
            msg(json!({"request":"listing","list":[{"UUID":"p1","streamID":"a808d64"},{"UUID":"p2","streamID":"b808d64"}]})),
        );
        // Only the stream not being recorded is requested again.
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"b808d64","UUID":"p2"})]
        );
        assert_eq!(r.active_peers(), vec![PeerId("p1".into())]);
    }

    #[test]
    fn single_stream_replays_on_schedule_and_warns_once() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        let a = r.handle(t0, RoomEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"cam808d64"})]
        );
        assert!(
            r.handle(t0 + Duration::from_secs(7), RoomEvent::Tick)
                .is_empty()
        );
        let a = r.handle(t0 + Duration::from_secs(8), RoomEvent::Tick);
        assert_eq!(a.len(), 1);
        assert!(
            matches!(&a[0], Action::UserError(e) if e.contains("'cam'") && e.contains("--password"))
        );
        assert!(
            r.handle(t0 + Duration::from_secs(14), RoomEvent::Tick)
                .is_empty()
        );
        let a = r.handle(t0 + Duration::from_secs(15), RoomEvent::Tick);
        assert_eq!(sends(&a).len(), 1);
        assert_eq!(a.len(), 1, "warned once");
        assert!(
            r.handle(t0 + Duration::from_secs(59), RoomEvent::Tick)
                .is_empty()
        );
        let a = r.handle(t0 + Duration::from_secs(60), RoomEvent::Tick);
        assert_eq!(sends(&a).len(), 1, "second retry 45 s after the first");
        assert!(
            r.handle(t0 + Duration::from_secs(200), RoomEvent::Tick)
                .is_empty()
        );
        assert_eq!(
            sends(&r.handle(t0 + Duration::from_secs(240), RoomEvent::Tick)).len(),
            1
        );
        assert_eq!(
            sends(&r.handle(t0 + Duration::from_secs(420), RoomEvent::Tick)).len(),
            1
        );
        // An offer stops the retries.
        let a = r.handle(
            t0 + Duration::from_secs(421),
            msg(offer_json("pub", "cam808d64", "s")),
        );
        assert!(matches!(&a[..], [Action::Offer { .. }]));
        assert!(
            r.handle(t0 + Duration::from_secs(2000), RoomEvent::Tick)
                .is_empty()
        );
    }

    #[test]
    fn single_stream_publisher_leaves_and_returns() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(offer_json("pub", "cam808d64", "s")));
        let a = r.handle(t0, msg(json!({"bye":true,"UUID":"pub"})));
        assert!(matches!(&a[..], [Action::StreamEnded { stream_id, .. }] if stream_id == "cam"));
        let a = r.handle(t0 + Duration::from_secs(15), RoomEvent::Tick);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"cam808d64"})]
        );
        let a = r.handle(
            t0 + Duration::from_secs(16),
            msg(offer_json("pub2", "cam808d64", "t")),
        );
        assert!(matches!(&a[..], [Action::Offer { peer, .. }] if peer.0 == "pub2"));
    }

    #[test]
    fn stream_closed_by_peer_layer_replays_immediately() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(offer_json("pub", "cam808d64", "s")));
        let a = r.handle(
            t0,
            RoomEvent::StreamClosed {
                peer: PeerId("pub".into()),
                recorded: true,
            },
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"cam808d64","UUID":"pub"})]
        );
    }

    #[test]
    fn a_stream_whose_recordings_keep_failing_backs_off_and_is_set_aside_once() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let pubr = || PeerId("pub".into());
        let mut t = t0;
        let mut waits = Vec::new();
        let mut errors = Vec::new();
        for i in 0..9 {
            let a = r.handle(t, msg(offer_json("pub", "cam808d64", &format!("s{i}"))));
            assert!(
                a.iter().any(|x| matches!(x, Action::Offer { .. })),
                "offer {i} taken: {a:?}"
            );
            // The recording fails at once (an offer that cannot be answered).
            let a = r.handle(
                t,
                RoomEvent::StreamClosed {
                    peer: pubr(),
                    recorded: false,
                },
            );
            errors.extend(a.iter().filter_map(|x| match x {
                Action::UserError(e) => Some(e.clone()),
                _ => None,
            }));
            if i == 0 {
                // The first failure is asked again at once.
                assert_eq!(sends(&a).len(), 1, "{a:?}");
                waits.push(0.0);
                continue;
            }
            assert!(
                sends(&a).is_empty(),
                "no play at once after a failure: {a:?}"
            );
            // Offers nobody asked for wait out the backoff too.
            let a = r.handle(t, msg(offer_json("pub", "cam808d64", "unasked")));
            assert!(
                !a.iter().any(|x| matches!(x, Action::Offer { .. })),
                "{a:?}"
            );
            let mut u = t;
            loop {
                u += Duration::from_millis(50);
                assert!(u - t <= MAX_FAILURE_BACKOFF, "no play within the cap");
                if !sends(&r.handle(u, RoomEvent::Tick)).is_empty() {
                    break;
                }
            }
            waits.push((u - t).as_secs_f64());
            t = u;
        }
        // At once, then 1 s doubling (less up to a quarter for spread), capped at a minute.
        for (i, w) in waits.iter().enumerate().skip(1) {
            let step = 2f64.powi(i as i32 - 1).min(60.0);
            assert!(
                *w >= step * 0.75 - 0.06 && *w <= step + 0.06,
                "wait {i}: {w} s for a step of {step} s ({waits:?})"
            );
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("set aside"), "{errors:?}");
        // A recording that lasts resets the count: the next end is answered with a play at once.
        r.handle(t, msg(offer_json("pub", "cam808d64", "good")));
        let a = r.handle(
            t + SHORT_SESSION,
            RoomEvent::StreamClosed {
                peer: pubr(),
                recorded: false,
            },
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"cam808d64","UUID":"pub"})]
        );
    }

    #[test]
    fn new_session_from_same_peer_restarts_recording() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(offer_json("pub", "cam808d64", "s1")));
        // The new offer itself replaces the recording (the recorder stops the old one).
        let a = r.handle(t0, msg(offer_json("pub", "cam808d64", "s2")));
        assert!(matches!(&a[..], [Action::Offer { session, .. }] if *session == Some(json!("s2"))));
        // Another peer taking over the stream ends the first.
        let a = r.handle(t0, msg(offer_json("pub9", "cam808d64", "s3")));
        assert!(
            matches!(&a[..], [Action::StreamEnded { peer, .. }, Action::Offer { .. }] if peer.0 == "pub")
        );
        assert_eq!(r.active_peers(), vec![PeerId("pub9".into())]);
    }

    #[test]
    fn candidates_are_queued_until_the_offer() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let cand = json!({"UUID":"pub","session":"s","type":"local",
            "candidates":[{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMLineIndex":0}]});
        assert!(r.handle(t0, msg(cand.clone())).is_empty());
        let stale = json!({"UUID":"pub","session":"old","candidate":{"candidate":"candidate:2","sdpMLineIndex":0}});
        assert!(r.handle(t0, msg(stale)).is_empty());
        let a = r.handle(t0, msg(offer_json("pub", "cam808d64", "s")));
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(
            matches!(&a[1], Action::RemoteCandidates { candidates, session, .. }
            if candidates.len() == 1 && *session == Some(json!("s")))
        );
        assert_eq!(r.stats().dropped_candidates, 1);
        // After the offer: forwarded directly.
        let a = r.handle(t0, msg(cand));
        assert!(matches!(&a[..], [Action::RemoteCandidates { .. }]));
        // Queues are bounded.
        for i in 0..(MAX_QUEUED_BUNDLES + 5) {
            r.handle(
                t0,
                msg(json!({"UUID":"other","candidate":{"candidate":format!("candidate:{i}")}})),
            );
        }
        assert_eq!(
            r.queued.get(&PeerId("other".into())).map(|q| q.len()),
            Some(MAX_QUEUED_BUNDLES)
        );
    }

    #[test]
    fn encrypted_offer_and_mirrored_answer() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let a = r.handle(t0, msg(encrypted_offer("pub", "cam808d64", "s")));
        assert!(matches!(&a[..], [Action::Offer { encrypted: true, sdp, .. }] if sdp == "v=0 enc"));
        let a = r.handle(
            t0,
            RoomEvent::SendAnswer {
                peer: PeerId("pub".into()),
                session: Some(json!("s")),
                sdp: "v=0 answer".into(),
                encrypt: true,
            },
        );
        let m = &sends(&a)[0];
        assert_eq!(m["UUID"], json!("pub"));
        assert_eq!(m["session"], json!("s"));
        assert_eq!(m["streamID"], json!("cam808d64"));
        let plain = sec()
            .cipher()
            .unwrap()
            .decrypt(
                m["description"].as_str().unwrap(),
                m["vector"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&plain).unwrap(),
            json!({"type":"answer","sdp":"v=0 answer"})
        );
        // Candidates mirror the offer's encryption and say "remote".
        let a = r.handle(
            t0,
            RoomEvent::SendCandidates {
                peer: PeerId("pub".into()),
                session: Some(json!("s")),
                candidates: vec![IceCandidate {
                    candidate: "candidate:x".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                }],
            },
        );
        let m = &sends(&a)[0];
        assert_eq!(m["type"], json!("remote"));
        assert!(m["candidates"].is_string() && m["vector"].is_string());
    }

    #[test]
    fn plain_offer_gets_plain_answer() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(json!({"UUID":"pub","streamID":"cam808d64","session":null,"description":{"type":"offer","sdp":"v=0"}})));
        let a = r.handle(
            t0,
            RoomEvent::SendAnswer {
                peer: PeerId("pub".into()),
                session: Some(Value::Null),
                sdp: "a".into(),
                encrypt: false,
            },
        );
        let m = &sends(&a)[0];
        assert_eq!(m["description"], json!({"type":"answer","sdp":"a"}));
        assert_eq!(m.get("session"), Some(&Value::Null));
        let a = r.handle(
            t0,
            RoomEvent::SendCandidates {
                peer: PeerId("pub".into()),
                session: None,
                candidates: vec![IceCandidate {
                    candidate: "candidate:y".into(),
                    sdp_mid: None,
                    sdp_mline_index: Some(0),
                }],
            },
        );
        let m = &sends(&a)[0];
        assert!(m["candidates"].is_array());
        assert!(m.get("session").is_none());
    }

    #[test]
    fn undecryptable_offer_reports_password_hint_once() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let wrong = crate::signaling::crypto::Cipher::new("wrong", DEFAULT_SALT);
        let (hex, iv) = wrong.encrypt(&json!({"type":"offer","sdp":"v=0"}).to_string());
        let bad = json!({"UUID":"pub","streamID":"cam808d64","session":"s","description":hex,"vector":iv});
        let a = r.handle(t0, msg(bad.clone()));
        assert!(
            matches!(&a[..], [Action::UserError(e)] if e.contains("decrypt") && e.contains("--password"))
        );
        assert!(r.handle(t0, msg(bad)).is_empty());
        assert!(r.active_peers().is_empty());
        assert_eq!(r.stats().undecryptable, 2);
    }

    #[test]
    fn relay_dialect_room() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Relay);
        let a = r.handle(t0, RoomEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc","from":"me"})]
        );
        // Unsolicited offer from an existing publisher, mapped by `from` and streamID.
        let a = r.handle(
            t0,
            msg(json!({"UUID":"me","from":"pubA","streamID":"a808d64","session":"x","description":{"type":"offer","sdp":"v=0"}})),
        );
        assert!(
            matches!(&a[..], [Action::Offer { peer, stream_id, .. }] if peer.0 == "pubA" && stream_id == "a")
        );
        // Traffic for someone else is ignored.
        assert!(r.handle(t0, msg(json!({"UUID":"other","from":"pubB","streamID":"b808d64","description":{"type":"offer","sdp":"v=0"}}))).is_empty());
        // Late publisher announces itself with joinroom.
        let a = r.handle(
            t0,
            msg(json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc","streamID":"b808d64","from":"pubB"})),
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"b808d64","UUID":"pubB","from":"me"})]
        );
        // Seed broadcast.
        let a = r.handle(
            t0,
            msg(json!({"request":"seed","streamID":"c808d64","from":"pubC"})),
        );
        assert_eq!(sends(&a)[0]["UUID"], json!("pubC"));
        // Answer carries from.
        let a = r.handle(
            t0,
            RoomEvent::SendAnswer {
                peer: PeerId("pubA".into()),
                session: Some(json!("x")),
                sdp: "a".into(),
                encrypt: false,
            },
        );
        assert_eq!(sends(&a)[0]["from"], json!("me"));
        // Presence departure.
        let a = r.handle(t0, msg(json!({"type":"disconnect","uuid":"pubA"})));
        assert!(matches!(&a[..], [Action::StreamEnded { peer, .. }] if peer.0 == "pubA"));
        // A relay bye carries UUID = us and from = sender.
        r.handle(t0, msg(json!({"UUID":"me","from":"pubB","streamID":"b808d64","session":"y","description":{"type":"offer","sdp":"v=0"}})));
        let a = r.handle(t0, msg(json!({"UUID":"me","from":"pubB","bye":true})));
        assert!(matches!(&a[..], [Action::StreamEnded { peer, .. }] if peer.0 == "pubB"));
    }

    /// `--dialect auto` on a host name that is not VDO.Ninja's guesses relay; an official
    /// server's `listing` (or, with no room, an offer that names its sender in `UUID` without
    /// a `from`) turns it official, so the publishers' offers are no longer taken for other
    /// clients' traffic.
    #[test]
    fn auto_dialect_turns_official_when_the_server_behaves_officially() {
        let t0 = Instant::now();
        let auto = |mut r: Room| {
            r.cfg.auto_dialect = true;
            r
        };
        let mut r = auto(room_mode(&[], Dialect::Relay));
        let a = r.handle(t0, RoomEvent::Connected);
        assert_eq!(sends(&a)[0]["from"], json!("me"));
        let a = r.handle(
            t0,
            msg(json!({"request":"listing","list":[{"UUID":"p1","streamID":"alice808d64"}]})),
        );
        assert_eq!(r.config().dialect, Dialect::Official);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"alice808d64","UUID":"p1"})]
        );
        let a = r.handle(t0, msg(offer_json("p1", "alice808d64", "s1")));
        assert!(matches!(&a[..], [Action::Offer { peer, .. }] if peer.0 == "p1"));

        let mut r = auto(single(Dialect::Relay));
        r.handle(t0, RoomEvent::Connected);
        let a = r.handle(t0, msg(offer_json("p9", "cam808d64", "s2")));
        assert!(matches!(&a[..], [Action::Offer { peer, .. }] if peer.0 == "p9"));
        assert_eq!(r.config().dialect, Dialect::Official);

        // Relay traffic keeps a relay guess, and a chosen dialect is never changed.
        let mut r = auto(room_mode(&[], Dialect::Relay));
        r.handle(t0, RoomEvent::Connected);
        r.handle(
            t0,
            msg(json!({"UUID":"me","from":"pubA","streamID":"a808d64","session":"x","description":{"type":"offer","sdp":"v=0"}})),
        );
        assert_eq!(r.config().dialect, Dialect::Relay);
        let mut r = room_mode(&[], Dialect::Relay);
        r.handle(t0, RoomEvent::Connected);
        r.handle(t0, msg(json!({"request":"listing","list":[]})));
        assert_eq!(r.config().dialect, Dialect::Relay);
        assert!(
            r.handle(t0, msg(offer_json("p1", "alice808d64", "s1")))
                .is_empty()
        );
    }

    #[test]
    fn single_stream_in_room_joins_then_plays() {
        let t0 = Instant::now();
        let mode = Mode::Single {
            stream: "cam".into(),
            room: Some("myroom".into()),
        };
        let mut r = Room::new(RoomConfig::new(mode, Dialect::Official, "me".into(), sec()));
        let a = r.handle(t0, RoomEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![
                json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc"}),
                json!({"request":"play","streamID":"cam808d64"}),
            ]
        );
        // Other streams in the room are not requested.
        let a = r.handle(
            t0,
            msg(json!({"request":"listing","list":[{"UUID":"p1","streamID":"x808d64"}]})),
        );
        assert!(sends(&a).is_empty());
        // Our stream appearing later is requested at once, from that peer.
        let a = r.handle(
            t0,
            msg(json!({"request":"videoaddedtoroom","UUID":"p2","streamID":"cam808d64"})),
        );
        assert_eq!(
            sends(&a),
            vec![json!({"request":"play","streamID":"cam808d64","UUID":"p2"})]
        );
    }

    #[test]
    fn foreign_suffix_and_server_alerts_are_reported() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let a = r.handle(
            t0,
            msg(json!({"request":"videoaddedtoroom","UUID":"p","streamID":"zzzb37e9f"})),
        );
        assert!(matches!(&a[0], Action::UserError(e) if e.contains("password")));
        let a = r.handle(t0, msg(json!({"request":"alert","message":"Room is full"})));
        assert_eq!(
            a,
            vec![Action::UserError("server says: Room is full".into())]
        );
    }

    #[test]
    fn hostile_listing_is_bounded() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Official);
        r.handle(t0, RoomEvent::Connected);
        let list: Vec<Value> = (0..500)
            .map(|i| json!({"UUID":format!("u{i}"),"streamID":format!("s{i}808d64")}))
            .collect();
        let a = r.handle(t0, msg(json!({"request":"listing","list":list})));
        assert_eq!(sends(&a).len(), MAX_TRACKED);
        assert!(r.streams.len() <= MAX_TRACKED);
    }

    /// A publisher killed and started again announces itself under a new id while our
    /// connection to the old one has not noticed: the old recording ends and the new
    /// instance is asked at once, however many short sessions came before.
    #[test]
    fn a_restarted_publisher_is_asked_again_under_its_new_id() {
        let t0 = Instant::now();
        let mut r = single(Dialect::Relay);
        r.handle(t0, RoomEvent::Connected);
        let seed = |from: &str| msg(json!({"request":"seed","streamID":"cam808d64","from":from}));
        let offer = |from: &str| {
            msg(
                json!({"UUID":"me","from":from,"streamID":"cam808d64","session":from,"description":{"type":"offer","sdp":"v=0"}}),
            )
        };
        let mut t = t0;
        for k in 0..5 {
            let (old, new) = (format!("pub{k}"), format!("pub{}", k + 1));
            if k == 0 {
                r.handle(t, seed(&old));
                r.handle(t, offer(&old));
            }
            assert_eq!(r.active_peers(), vec![PeerId(old.clone())]);
            t += Duration::from_secs(5);
            // The same instance announcing again changes nothing.
            assert!(r.handle(t, seed(&old)).is_empty());
            let a = r.handle(t, seed(&new));
            assert!(
                matches!(&a[0], Action::StreamEnded { peer, stream_id } if peer.0 == old && stream_id == "cam"),
                "{a:?}"
            );
            assert_eq!(
                sends(&a),
                vec![json!({"request":"play","streamID":"cam808d64","UUID":new,"from":"me"})]
            );
            // The old connection's end, noticed later, costs the new instance nothing.
            assert!(
                sends(&r.handle(
                    t,
                    RoomEvent::StreamClosed {
                        peer: PeerId(old),
                        recorded: true
                    }
                ))
                .is_empty()
            );
            let a = r.handle(t, offer(&new));
            assert!(
                matches!(&a[..], [Action::Offer { peer, .. }] if peer.0 == new),
                "{a:?}"
            );
        }
    }

    /// A wrong password shows within the no-offer timeout (10 s): in a room nobody is heard
    /// of (another password is another room), and in single mode an announcement of our
    /// stream under another hash suffix says it at once.
    #[test]
    fn a_wrong_password_is_said_once_and_soon() {
        let t0 = Instant::now();
        for dialect in [Dialect::Official, Dialect::Relay] {
            let mut r = room_mode(&[], dialect);
            r.handle(t0, RoomEvent::Connected);
            assert!(
                r.handle(t0 + Duration::from_secs(7), RoomEvent::Tick)
                    .is_empty()
            );
            let a = r.handle(t0 + Duration::from_secs(8), RoomEvent::Tick);
            assert!(
                matches!(&a[..], [Action::UserError(e)] if e.contains("no publisher in room 'myroom' 8s") && e.contains("--password")),
                "{a:?}"
            );
            assert!(
                r.handle(t0 + Duration::from_secs(30), RoomEvent::Tick)
                    .is_empty()
            );
            r.handle(t0 + Duration::from_secs(31), RoomEvent::Disconnected);
            assert!(
                r.handle(t0 + Duration::from_secs(32), RoomEvent::Connected)
                    .iter()
                    .all(|a| !matches!(a, Action::UserError(_)))
            );
            assert!(
                r.handle(t0 + Duration::from_secs(60), RoomEvent::Tick)
                    .is_empty()
            );
            // A room with a publisher says nothing.
            let mut r = room_mode(&[], dialect);
            r.handle(t0, RoomEvent::Connected);
            let seed = match dialect {
                Dialect::Official => json!({"request":"seed","streamID":"a808d64","UUID":"p"}),
                Dialect::Relay => json!({"request":"seed","streamID":"a808d64","from":"p"}),
            };
            r.handle(t0, msg(seed));
            assert!(
                r.handle(t0 + Duration::from_secs(9), RoomEvent::Tick)
                    .iter()
                    .all(|a| !matches!(a, Action::UserError(e) if e.contains("no publisher")))
            );
        }
        let mut r = single(Dialect::Relay);
        r.handle(t0, RoomEvent::Connected);
        for wire in ["camabc123", "cam"] {
            let a = r.handle(
                t0,
                msg(json!({"request":"seed","streamID":wire,"from":"p"})),
            );
            assert!(
                matches!(&a[..], [Action::UserError(e)] if e.contains("'cam' is published with another password") && e.contains("ours is 808d64")),
                "{wire}: {a:?}"
            );
            assert!(
                r.handle(
                    t0,
                    msg(json!({"request":"seed","streamID":wire,"from":"p"}))
                )
                .is_empty()
            );
        }
        // Other streams are not ours: no line.
        assert!(
            r.handle(
                t0,
                msg(json!({"request":"seed","streamID":"camera808d64","from":"q"}))
            )
            .is_empty()
        );
    }

    /// A stream ID longer than 128 characters is skipped with one line per ID (for the
    /// first few IDs; a flood of distinct ones is only counted).
    #[test]
    fn over_long_stream_ids_are_skipped_with_one_line_each() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Relay);
        r.handle(t0, RoomEvent::Connected);
        let long = format!("{}808d64", "L".repeat(200));
        let a = r.handle(
            t0,
            msg(json!({"request":"seed","streamID":long,"from":"p"})),
        );
        assert!(
            matches!(&a[..], [Action::UserError(e)] if e.contains("skipping stream ID 'LLLL") && e.contains("206 characters")),
            "{a:?}"
        );
        assert!(
            r.handle(
                t0,
                msg(json!({"request":"seed","streamID":long,"from":"p"}))
            )
            .is_empty()
        );
        let offer = json!({"UUID":"me","from":"p","streamID":long,"session":"s","description":{"type":"offer","sdp":"v=0"}});
        assert!(r.handle(t0, msg(offer)).is_empty());
        let mut lines = 1;
        for k in 0..100 {
            let id = format!("{k:03}{}", "x".repeat(200));
            lines += r
                .handle(t0, msg(json!({"request":"seed","streamID":id,"from":"p"})))
                .len();
        }
        assert_eq!(lines, MAX_LONG_ID_REPORTS);
        assert!(r.active_peers().is_empty());
    }

    /// A publisher whose offers come faster than they fail (garbage SDP, a new session each
    /// time) is backed off by the offers themselves: a handful of recordings in 60 s of a
    /// flood of 50 offers a second, and one "set aside" line.
    #[test]
    fn a_flood_of_new_offers_is_backed_off() {
        let t0 = Instant::now();
        let mut r = room_mode(&[], Dialect::Relay);
        r.handle(t0, RoomEvent::Connected);
        let mut offers = 0;
        let mut errors = Vec::new();
        for k in 0..3000u64 {
            let t = t0 + Duration::from_millis(20 * k);
            let m = json!({"from":"junk","streamID":"junk808d64","session":format!("s{k}"),
                "description":{"type":"offer","sdp":"garbage"}});
            for a in r.handle(t, msg(m)) {
                match a {
                    Action::Offer { .. } => offers += 1,
                    Action::UserError(e) => errors.push(e),
                    _ => {}
                }
            }
        }
        assert!((5..=12).contains(&offers), "{offers} recordings started");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("set aside"), "{errors:?}");
    }
}
