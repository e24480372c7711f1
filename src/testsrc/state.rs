//! The publisher's signalling state as a pure state machine: events in, actions out, no I/O.
//!
//! Mirrors [`crate::signaling::room`] for the other side of the handshake: it decides when to
//! announce the stream (joinroom / seed, per dialect), which viewer gets a peer connection and
//! with which `session`, and where the viewer's answer and candidates go. Keeping it
//! synchronous (the caller passes `Instant`s and a seed) makes every scenario unit-testable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::signaling::crypto::Security;
use crate::signaling::message::{
    IceCandidate, Inbound, Kind, Outbound, Sealed, candidates_from_value,
};
use crate::signaling::room::{Dialect, PeerId};

/// Local candidates kept per viewer while its offer has not been sent yet.
const MAX_QUEUED_LOCAL: usize = 64;
/// Characters of a generated `session` (the web app uses 10).
const SESSION_CHARS: usize = 10;

/// Static configuration of the publisher state machine.
#[derive(Debug, Clone)]
pub struct SourceStateConfig {
    /// Server dialect.
    pub dialect: Dialect,
    /// Our `from` id in the relay dialect.
    pub self_id: String,
    /// Raw (unhashed) stream id we publish.
    pub stream_id: String,
    /// Raw room name to publish in, if any.
    pub room: Option<String>,
    /// Password-derived hashes and cipher.
    pub security: Security,
    /// Most viewers served at once; more requests are refused (bounds hostile rooms).
    pub max_viewers: usize,
    /// A viewer that has not answered our offer this long is dropped.
    pub answer_timeout: Duration,
    /// Seed of the `session` generator (random in production, fixed in tests).
    pub session_seed: u64,
}

/// Inputs of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The WebSocket is (re)connected: announce the stream.
    Connected,
    /// The WebSocket dropped; running peer connections continue.
    Disconnected,
    /// A parsed server message.
    Message(Inbound),
    /// Periodic clock tick (drives the answer timeout).
    Tick,
    /// The peer for `viewer`/`session` produced its offer.
    LocalOffer {
        /// Viewer the peer serves.
        viewer: PeerId,
        /// Session of that peer.
        session: String,
        /// Offer SDP.
        sdp: String,
    },
    /// The peer for `viewer`/`session` has local ICE candidates.
    LocalCandidates {
        /// Viewer the peer serves.
        viewer: PeerId,
        /// Session of that peer.
        session: String,
        /// The candidates.
        candidates: Vec<IceCandidate>,
    },
    /// The peer for `viewer`/`session` ended (viewer bye, failure, local close).
    PeerClosed {
        /// Viewer the peer served.
        viewer: PeerId,
        /// Session of that peer.
        session: String,
    },
    /// We are shutting down: close every peer (they say bye on their data channels).
    Shutdown,
}

/// Outputs of the state machine, executed by the source task.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceAction {
    /// Send this message on the WebSocket (already dialect-decorated).
    Send(Outbound),
    /// Create a publisher peer connection for `viewer`; its offer comes back as
    /// [`SourceEvent::LocalOffer`].
    StartPeer {
        /// The viewer.
        viewer: PeerId,
        /// `session` of the new peer connection.
        session: String,
    },
    /// Close the peer for `viewer`/`session` (saying bye).
    ClosePeer {
        /// The viewer.
        viewer: PeerId,
        /// Session of the peer to close.
        session: String,
    },
    /// Apply the viewer's answer.
    RemoteAnswer {
        /// The viewer.
        viewer: PeerId,
        /// Session it belongs to.
        session: String,
        /// Answer SDP.
        sdp: String,
    },
    /// Add the viewer's candidates.
    RemoteCandidates {
        /// The viewer.
        viewer: PeerId,
        /// Session they belong to.
        session: String,
        /// The candidates.
        candidates: Vec<IceCandidate>,
    },
    /// A one-line problem worth showing (server alert, stream id in use, undecryptable answer).
    UserError(String),
}

/// Counters of what the state machine saw, for logs, tests and the load benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Viewer requests (`offerSDP`, `play`, relay `joinroom`) received.
    pub requests: u64,
    /// Peer connections started.
    pub peers_started: u64,
    /// Requests from a viewer whose offer is still unanswered (ignored).
    pub duplicate_requests: u64,
    /// Requests refused because [`SourceStateConfig::max_viewers`] were being served.
    pub refused_viewers: u64,
    /// Answers applied.
    pub answers: u64,
    /// Viewers dropped for not answering within the timeout.
    pub answer_timeouts: u64,
    /// Valid messages that were irrelevant, stale or unattributable.
    pub ignored: u64,
    /// Answers/candidates that could not be decrypted or were malformed.
    pub undecryptable: u64,
    /// Candidate bundles dropped (unknown viewer, wrong session, queue full).
    pub dropped_candidates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// Not connected.
    Offline,
    /// `joinroom` sent (official dialect), waiting for the listing before `seed`.
    AwaitListing,
    /// The stream is announced.
    Announced,
}

#[derive(Debug, Clone)]
struct ViewerPeer {
    session: String,
    started: Instant,
    offer_sent: bool,
    answered: bool,
    queued_local: Vec<IceCandidate>,
}

/// The publisher's signalling state machine. Create with [`SourceState::new`], feed with
/// [`SourceState::handle`].
#[derive(Debug)]
pub struct SourceState {
    cfg: SourceStateConfig,
    wire_stream: String,
    announce: Announce,
    viewers: HashMap<PeerId, ViewerPeer>,
    rng: u64,
    stats: SourceStats,
}

impl SourceState {
    /// A fresh, disconnected publisher.
    pub fn new(cfg: SourceStateConfig) -> Self {
        let wire_stream = cfg.security.hash_stream_id(&cfg.stream_id);
        let rng = cfg.session_seed;
        SourceState {
            cfg,
            wire_stream,
            announce: Announce::Offline,
            viewers: HashMap::new(),
            rng,
            stats: SourceStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// The stream id as announced on the wire.
    pub fn wire_stream_id(&self) -> &str {
        &self.wire_stream
    }

    /// Viewers with a live peer connection (sorted, for tests and logs).
    pub fn viewers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.viewers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the stream has been announced on the current connection.
    pub fn announced(&self) -> bool {
        self.announce == Announce::Announced
    }

    /// Feeds one event; returns the actions to execute in order.
    pub fn handle(&mut self, now: Instant, event: SourceEvent) -> Vec<SourceAction> {
        let mut out = Vec::new();
        match event {
            SourceEvent::Connected => self.on_connected(&mut out),
            SourceEvent::Disconnected => self.announce = Announce::Offline,
            SourceEvent::Message(m) => self.on_message(now, m, &mut out),
            SourceEvent::Tick => self.on_tick(now, &mut out),
            SourceEvent::LocalOffer {
                viewer,
                session,
                sdp,
            } => self.on_local_offer(viewer, session, sdp, &mut out),
            SourceEvent::LocalCandidates {
                viewer,
                session,
                candidates,
            } => self.on_local_candidates(viewer, session, candidates, &mut out),
            SourceEvent::PeerClosed { viewer, session } => {
                if self
                    .viewers
                    .get(&viewer)
                    .is_some_and(|v| v.session == session)
                {
                    self.viewers.remove(&viewer);
                }
            }
            SourceEvent::Shutdown => {
                let mut all: Vec<(PeerId, ViewerPeer)> = self.viewers.drain().collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                for (viewer, v) in all {
                    out.push(SourceAction::ClosePeer {
                        viewer,
                        session: v.session,
                    });
                }
            }
        }
        out
    }

    fn send(&self, msg: Outbound) -> SourceAction {
        match self.cfg.dialect {
            Dialect::Official => SourceAction::Send(msg),
            Dialect::Relay => SourceAction::Send(msg.with_from(&self.cfg.self_id)),
        }
    }

    fn on_connected(&mut self, out: &mut Vec<SourceAction>) {
        let room = self
            .cfg
            .room
            .as_ref()
            .map(|r| self.cfg.security.room_hash(r));
        match (self.cfg.dialect, room) {
            // Web-app order on the official server: join, wait for the listing, then seed.
            (Dialect::Official, Some(room)) => {
                out.push(self.send(Outbound::join_room(&room)));
                self.announce = Announce::AwaitListing;
            }
            (Dialect::Relay, Some(room)) => {
                out.push(self.send(Outbound::join_room_publishing(&room, &self.wire_stream)));
                self.announce = Announce::Announced;
            }
            (_, None) => {
                out.push(self.send(Outbound::seed(&self.wire_stream)));
                self.announce = Announce::Announced;
            }
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<SourceAction>) {
        let timeout = self.cfg.answer_timeout;
        let mut stale: Vec<PeerId> = self
            .viewers
            .iter()
            .filter(|(_, v)| !v.answered && now.saturating_duration_since(v.started) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        stale.sort();
        for viewer in stale {
            if let Some(v) = self.viewers.remove(&viewer) {
                self.stats.answer_timeouts += 1;
                out.push(SourceAction::ClosePeer {
                    viewer,
                    session: v.session,
                });
            }
        }
    }

    /// The sender of `m`, never ourselves (a relay may echo our own announcements).
    fn sender(&self, m: &Inbound) -> Option<PeerId> {
        self.cfg
            .dialect
            .sender(m)
            .filter(|id| id.0 != self.cfg.self_id)
    }

    fn on_message(&mut self, now: Instant, mut m: Inbound, out: &mut Vec<SourceAction>) {
        if let Kind::Departed = m.kind {
            // A relay viewer left: a peer it never answered will not be answered any more.
            if let Some(u) = &m.uuid {
                let viewer = PeerId(u.clone());
                if let Some(v) = self.viewers.get(&viewer)
                    && !v.answered
                {
                    let session = v.session.clone();
                    self.viewers.remove(&viewer);
                    out.push(SourceAction::ClosePeer { viewer, session });
                }
            }
            return;
        }
        if self.cfg.dialect.addressed_elsewhere(&m, &self.cfg.self_id) {
            self.stats.ignored += 1;
            return;
        }
        let sender = self.sender(&m);
        let kind = std::mem::replace(&mut m.kind, Kind::Ping);
        match kind {
            Kind::Listing { .. } if self.announce == Announce::AwaitListing => {
                out.push(self.send(Outbound::seed(&self.wire_stream)));
                self.announce = Announce::Announced;
            }
            Kind::OfferRequest => match sender {
                Some(v) => self.request(now, v, out),
                None => self.stats.ignored += 1,
            },
            Kind::Play => match (sender, &m.stream_id) {
                (Some(v), Some(s)) if *s == self.wire_stream => self.request(now, v, out),
                _ => self.stats.ignored += 1,
            },
            // Relay discovery: a newcomer without a stream is a viewer, offer to it (the web
            // app offers to every newcomer; other publishers are not served, so a room of N
            // test sources does not build N² idle connections).
            Kind::JoinRoom if self.cfg.dialect == Dialect::Relay && m.stream_id.is_none() => {
                match sender {
                    Some(v) => self.request(now, v, out),
                    None => self.stats.ignored += 1,
                }
            }
            Kind::Description(sealed) => self.on_answer(sender, &m, &sealed, out),
            Kind::Candidates(sealed) => self.on_remote_candidates(sender, &m, &sealed, out),
            Kind::Bye | Kind::Cleanup => {
                if let Some(viewer) = sender
                    && let Some(v) = self.viewers.remove(&viewer)
                {
                    out.push(SourceAction::ClosePeer {
                        viewer,
                        session: v.session,
                    });
                } else {
                    self.stats.ignored += 1;
                }
            }
            Kind::Alert(text) | Kind::Error(text) => {
                out.push(SourceAction::UserError(format!("server says: {text}")));
            }
            _ => self.stats.ignored += 1,
        }
    }

    /// A viewer asks for our stream.
    fn request(&mut self, now: Instant, viewer: PeerId, out: &mut Vec<SourceAction>) {
        self.stats.requests += 1;
        if let Some(old) = self.viewers.get(&viewer) {
            if !old.answered {
                // Our offer is on its way (e.g. a relay joinroom and a play crossed).
                self.stats.duplicate_requests += 1;
                return;
            }
            // The viewer asks again after its connection ended: replace ours.
            let session = old.session.clone();
            self.viewers.remove(&viewer);
            out.push(SourceAction::ClosePeer {
                viewer: viewer.clone(),
                session,
            });
        }
        if self.viewers.len() >= self.cfg.max_viewers {
            self.stats.refused_viewers += 1;
            return;
        }
        let session = self.next_session();
        self.viewers.insert(
            viewer.clone(),
            ViewerPeer {
                session: session.clone(),
                started: now,
                offer_sent: false,
                answered: false,
                queued_local: Vec::new(),
            },
        );
        self.stats.peers_started += 1;
        out.push(SourceAction::StartPeer { viewer, session });
    }

    /// The peer for `viewer` if `session` (as received) belongs to it; an absent session is
    /// accepted (not every viewer echoes it), a different one is not.
    fn matching(&self, viewer: &PeerId, session: Option<&Value>) -> Option<&ViewerPeer> {
        let v = self.viewers.get(viewer)?;
        match session {
            None | Some(Value::Null) => Some(v),
            Some(Value::String(s)) if *s == v.session => Some(v),
            Some(_) => None,
        }
    }

    fn on_answer(
        &mut self,
        sender: Option<PeerId>,
        m: &Inbound,
        sealed: &Sealed,
        out: &mut Vec<SourceAction>,
    ) {
        let Some(viewer) = sender else {
            self.stats.ignored += 1;
            return;
        };
        let Some(session) = self
            .matching(&viewer, m.session.as_ref())
            .filter(|v| v.offer_sent && !v.answered)
            .map(|v| v.session.clone())
        else {
            self.stats.ignored += 1;
            return;
        };
        let desc = match sealed.open(m.vector.as_deref(), self.cfg.security.cipher()) {
            Ok(d) => d,
            Err(e) => {
                self.stats.undecryptable += 1;
                out.push(SourceAction::UserError(format!(
                    "could not decrypt the answer of viewer {viewer} ({e}): check --password/--salt"
                )));
                return;
            }
        };
        let (Some("answer"), Some(sdp)) = (
            desc.get("type").and_then(Value::as_str),
            desc.get("sdp").and_then(Value::as_str),
        ) else {
            self.stats.ignored += 1;
            return;
        };
        if let Some(v) = self.viewers.get_mut(&viewer) {
            v.answered = true;
        }
        self.stats.answers += 1;
        out.push(SourceAction::RemoteAnswer {
            viewer,
            session,
            sdp: sdp.to_string(),
        });
    }

    fn on_remote_candidates(
        &mut self,
        sender: Option<PeerId>,
        m: &Inbound,
        sealed: &Sealed,
        out: &mut Vec<SourceAction>,
    ) {
        let Some(viewer) = sender else {
            self.stats.ignored += 1;
            return;
        };
        let Some(session) = self
            .matching(&viewer, m.session.as_ref())
            .map(|v| v.session.clone())
        else {
            self.stats.dropped_candidates += 1;
            return;
        };
        let value = match sealed.open(m.vector.as_deref(), self.cfg.security.cipher()) {
            Ok(v) => v,
            Err(_) => {
                self.stats.undecryptable += 1;
                return;
            }
        };
        let candidates = candidates_from_value(&value);
        if candidates.is_empty() {
            return;
        }
        out.push(SourceAction::RemoteCandidates {
            viewer,
            session,
            candidates,
        });
    }

    fn on_local_offer(
        &mut self,
        viewer: PeerId,
        session: String,
        sdp: String,
        out: &mut Vec<SourceAction>,
    ) {
        let Some(v) = self
            .viewers
            .get_mut(&viewer)
            .filter(|v| v.session == session)
        else {
            self.stats.ignored += 1;
            return;
        };
        v.offer_sent = true;
        let queued = std::mem::take(&mut v.queued_local);
        let desc = json!({"type": "offer", "sdp": sdp});
        let (sealed, vector) = Sealed::seal(&desc, self.cfg.security.cipher());
        let session_value = Value::String(session.clone());
        out.push(self.send(Outbound::offer(
            &viewer.0,
            &session_value,
            sealed,
            vector,
            &self.wire_stream,
        )));
        if !queued.is_empty() {
            out.push(self.candidates_msg(&viewer, &session_value, &queued));
        }
    }

    fn on_local_candidates(
        &mut self,
        viewer: PeerId,
        session: String,
        candidates: Vec<IceCandidate>,
        out: &mut Vec<SourceAction>,
    ) {
        if candidates.is_empty() {
            return;
        }
        let Some(v) = self
            .viewers
            .get_mut(&viewer)
            .filter(|v| v.session == session)
        else {
            self.stats.ignored += 1;
            return;
        };
        if !v.offer_sent {
            let room = MAX_QUEUED_LOCAL.saturating_sub(v.queued_local.len());
            if candidates.len() > room {
                self.stats.dropped_candidates += 1;
            }
            v.queued_local.extend(candidates.into_iter().take(room));
            return;
        }
        out.push(self.candidates_msg(&viewer, &Value::String(session), &candidates));
    }

    fn candidates_msg(
        &self,
        viewer: &PeerId,
        session: &Value,
        candidates: &[IceCandidate],
    ) -> SourceAction {
        let value = serde_json::to_value(candidates).unwrap_or(Value::Null);
        let (sealed, vector) = Sealed::seal(&value, self.cfg.security.cipher());
        self.send(Outbound::local_candidates(
            &viewer.0,
            Some(session),
            sealed,
            vector,
        ))
    }

    /// A fresh alphanumeric `session` (splitmix64 over the seed: deterministic in tests).
    fn next_session(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::with_capacity(SESSION_CHARS);
        for _ in 0..SESSION_CHARS {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            s.push(ALPHABET[(z % ALPHABET.len() as u64) as usize] as char);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::crypto::{DEFAULT_SALT, Password};
    use crate::signaling::message::parse_inbound;

    fn state(dialect: Dialect, room: Option<&str>, password: Password) -> SourceState {
        SourceState::new(SourceStateConfig {
            dialect,
            self_id: "me".into(),
            stream_id: "cam".into(),
            room: room.map(str::to_string),
            security: Security::new(&password, DEFAULT_SALT),
            max_viewers: 2,
            answer_timeout: Duration::from_secs(30),
            session_seed: 7,
        })
    }

    fn msg(v: Value) -> SourceEvent {
        SourceEvent::Message(parse_inbound(&v.to_string()).expect("test message parses"))
    }

    fn sends(actions: &[SourceAction]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                SourceAction::Send(o) => Some(Value::Object(o.0.clone())),
                _ => None,
            })
            .collect()
    }

    fn started(actions: &[SourceAction]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                SourceAction::StartPeer { viewer, session } => {
                    Some((viewer.0.clone(), session.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn cand(n: u8) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 500{n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        }
    }

    fn decrypt(s: &SourceState, v: &Value, field: &str) -> Value {
        let c = s.cfg.security.cipher().expect("password on");
        let text = c
            .decrypt(v[field].as_str().unwrap(), v["vector"].as_str().unwrap())
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn official_room_joins_then_seeds_after_listing_and_serves_a_viewer() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Official, Some("myroom"), Password::Default);
        assert_eq!(s.wire_stream_id(), "cam808d64");
        let a = s.handle(t0, SourceEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"joinroom","roomid":"2f1a0139acdd5bdc"})]
        );
        assert!(!s.announced());
        let a = s.handle(t0, msg(json!({"request":"listing","list":[{"UUID":"x"}]})));
        assert_eq!(
            sends(&a),
            vec![json!({"request":"seed","streamID":"cam808d64"})]
        );
        assert!(s.announced());
        // A second listing (director transfer) does not re-seed.
        assert!(sends(&s.handle(t0, msg(json!({"request":"listing","list":[]})))).is_empty());

        let a = s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v1"})));
        let st = started(&a);
        assert_eq!(st.len(), 1);
        let (viewer, session) = st[0].clone();
        assert_eq!(viewer, "v1");
        assert_eq!(session.len(), SESSION_CHARS);
        assert!(session.chars().all(|c| c.is_ascii_alphanumeric()));

        // Candidates before the offer are held back, then follow it.
        let a = s.handle(
            t0,
            SourceEvent::LocalCandidates {
                viewer: PeerId("v1".into()),
                session: session.clone(),
                candidates: vec![cand(1)],
            },
        );
        assert!(a.is_empty());
        let a = s.handle(
            t0,
            SourceEvent::LocalOffer {
                viewer: PeerId("v1".into()),
                session: session.clone(),
                sdp: "v=0 offer".into(),
            },
        );
        let out = sends(&a);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["UUID"], "v1");
        assert_eq!(out[0]["streamID"], "cam808d64");
        assert_eq!(out[0]["session"], json!(session));
        assert!(out[0].get("from").is_none());
        assert_eq!(
            decrypt(&s, &out[0], "description"),
            json!({"type":"offer","sdp":"v=0 offer"})
        );
        assert_eq!(out[1]["type"], "local");
        assert_eq!(out[1]["session"], json!(session));
        let c: Vec<IceCandidate> =
            serde_json::from_value(decrypt(&s, &out[1], "candidates")).unwrap();
        assert_eq!(c, vec![cand(1)]);

        // The viewer's encrypted answer and candidates reach the peer.
        let cipher = s.cfg.security.cipher().unwrap().clone();
        let (hex, iv) = cipher.encrypt(&json!({"type":"answer","sdp":"v=0 ans"}).to_string());
        let a = s.handle(
            t0,
            msg(json!({"UUID":"v1","session":session,"description":hex,"vector":iv})),
        );
        assert_eq!(
            a,
            vec![SourceAction::RemoteAnswer {
                viewer: PeerId("v1".into()),
                session: session.clone(),
                sdp: "v=0 ans".into()
            }]
        );
        let (hex, iv) = cipher.encrypt(&serde_json::to_string(&vec![cand(2)]).unwrap());
        let a = s.handle(
            t0,
            msg(
                json!({"UUID":"v1","session":session,"type":"remote","candidates":hex,"vector":iv}),
            ),
        );
        assert_eq!(
            a,
            vec![SourceAction::RemoteCandidates {
                viewer: PeerId("v1".into()),
                session: session.clone(),
                candidates: vec![cand(2)]
            }]
        );
        // Wrong session: dropped.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"v1","session":"other","candidates":[cand(3)]})),
        );
        assert!(a.is_empty());
        assert_eq!(s.stats().dropped_candidates, 1);
        // A repeated answer is ignored.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"v1","session":session,"description":{"type":"answer","sdp":"x"}})),
        );
        assert!(a.is_empty());
        assert_eq!(s.stats().answers, 1);
    }

    #[test]
    fn official_without_room_seeds_at_once_and_reseeds_after_reconnect() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Official, None, Password::Disabled);
        let a = s.handle(t0, SourceEvent::Connected);
        assert_eq!(sends(&a), vec![json!({"request":"seed","streamID":"cam"})]);
        s.handle(t0, SourceEvent::Disconnected);
        assert!(!s.announced());
        let a = s.handle(t0, SourceEvent::Connected);
        assert_eq!(sends(&a), vec![json!({"request":"seed","streamID":"cam"})]);
    }

    #[test]
    fn relay_room_announces_with_from_and_answers_play_and_newcomers() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Relay, Some("myroom"), Password::Disabled);
        let a = s.handle(t0, SourceEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"joinroom","roomid":"myroom","streamID":"cam","from":"me"})]
        );
        // A viewer joining the room gets an unsolicited offer.
        let a = s.handle(
            t0,
            msg(json!({"request":"joinroom","roomid":"myroom","from":"v1"})),
        );
        assert_eq!(started(&a).len(), 1);
        // Its play crossing our offer is a duplicate.
        let a = s.handle(
            t0,
            msg(json!({"request":"play","streamID":"cam","UUID":"me","from":"v1"})),
        );
        assert!(started(&a).is_empty());
        assert_eq!(s.stats().duplicate_requests, 1);
        // Another publisher joining is not served; a play for another stream is ignored.
        let a = s.handle(
            t0,
            msg(json!({"request":"joinroom","roomid":"myroom","streamID":"other","from":"p2"})),
        );
        assert!(a.is_empty());
        let a = s.handle(
            t0,
            msg(json!({"request":"play","streamID":"other","from":"v2"})),
        );
        assert!(a.is_empty());
        // A play from a second viewer.
        let a = s.handle(
            t0,
            msg(json!({"request":"play","streamID":"cam","UUID":"me","from":"v2"})),
        );
        let st = started(&a);
        assert_eq!(st.len(), 1);
        let session = st[0].1.clone();
        let a = s.handle(
            t0,
            SourceEvent::LocalOffer {
                viewer: PeerId("v2".into()),
                session: session.clone(),
                sdp: "v=0".into(),
            },
        );
        let out = sends(&a);
        assert_eq!(out[0]["from"], "me");
        assert_eq!(out[0]["UUID"], "v2");
        assert_eq!(out[0]["description"], json!({"type":"offer","sdp":"v=0"}));
        assert!(out[0].get("vector").is_none());
        // Traffic for someone else, or our own echo, is ignored.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"p2","from":"v2","session":session,"description":{"type":"answer","sdp":"x"}})),
        );
        assert!(a.is_empty());
        let a = s.handle(
            t0,
            msg(json!({"request":"joinroom","roomid":"myroom","from":"me"})),
        );
        assert!(a.is_empty());
        // The plain answer is routed by `from`.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"me","from":"v2","session":session,"description":{"type":"answer","sdp":"ans"}})),
        );
        assert!(
            matches!(&a[..], [SourceAction::RemoteAnswer { viewer, sdp, .. }] if viewer.0 == "v2" && sdp == "ans")
        );
        assert_eq!(s.viewers(), vec![PeerId("v1".into()), PeerId("v2".into())]);
    }

    #[test]
    fn relay_without_room_seeds() {
        let mut s = state(Dialect::Relay, None, Password::Default);
        let a = s.handle(Instant::now(), SourceEvent::Connected);
        assert_eq!(
            sends(&a),
            vec![json!({"request":"seed","streamID":"cam808d64","from":"me"})]
        );
    }

    #[test]
    fn rerequest_after_answer_replaces_the_peer_and_limits_hold() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Official, None, Password::Disabled);
        s.handle(t0, SourceEvent::Connected);
        let st = started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v1"}))));
        let s1 = st[0].1.clone();
        s.handle(
            t0,
            SourceEvent::LocalOffer {
                viewer: PeerId("v1".into()),
                session: s1.clone(),
                sdp: "o".into(),
            },
        );
        s.handle(
            t0,
            msg(json!({"UUID":"v1","session":s1,"description":{"type":"answer","sdp":"a"}})),
        );
        let a = s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v1"})));
        assert_eq!(
            a[0],
            SourceAction::ClosePeer {
                viewer: PeerId("v1".into()),
                session: s1.clone()
            }
        );
        let s2 = started(&a)[0].1.clone();
        assert_ne!(s1, s2);
        // The old peer's late close does not remove the new one.
        s.handle(
            t0,
            SourceEvent::PeerClosed {
                viewer: PeerId("v1".into()),
                session: s1,
            },
        );
        assert_eq!(s.viewers().len(), 1);
        // max_viewers = 2.
        assert_eq!(
            started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v2"})))).len(),
            1
        );
        assert!(started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v3"})))).is_empty());
        assert_eq!(s.stats().refused_viewers, 1);
        // The right close frees a slot.
        s.handle(
            t0,
            SourceEvent::PeerClosed {
                viewer: PeerId("v1".into()),
                session: s2,
            },
        );
        assert_eq!(
            started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v3"})))).len(),
            1
        );
    }

    #[test]
    fn unanswered_offers_time_out_and_bye_and_shutdown_close_peers() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Official, None, Password::Disabled);
        s.handle(t0, SourceEvent::Connected);
        let v1 = started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v1"}))))[0]
            .1
            .clone();
        let later = t0 + Duration::from_secs(10);
        let v2 = started(&s.handle(later, msg(json!({"request":"offerSDP","UUID":"v2"}))))[0]
            .1
            .clone();
        let a = s.handle(t0 + Duration::from_secs(31), SourceEvent::Tick);
        assert_eq!(
            a,
            vec![SourceAction::ClosePeer {
                viewer: PeerId("v1".into()),
                session: v1
            }]
        );
        assert_eq!(s.stats().answer_timeouts, 1);
        // WebSocket bye from v2.
        let a = s.handle(later, msg(json!({"UUID":"v2","bye":true})));
        assert_eq!(
            a,
            vec![SourceAction::ClosePeer {
                viewer: PeerId("v2".into()),
                session: v2
            }]
        );
        let v3 = started(&s.handle(later, msg(json!({"request":"offerSDP","UUID":"v3"}))))[0]
            .1
            .clone();
        let a = s.handle(later, SourceEvent::Shutdown);
        assert_eq!(
            a,
            vec![SourceAction::ClosePeer {
                viewer: PeerId("v3".into()),
                session: v3
            }]
        );
        assert!(s.viewers().is_empty());
    }

    #[test]
    fn hostile_or_broken_answers_are_counted_not_acted_on() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Official, None, Password::Default);
        s.handle(t0, SourceEvent::Connected);
        // Answer from a stranger, candidates from a stranger.
        assert!(
            s.handle(
                t0,
                msg(json!({"UUID":"x","description":{"type":"answer","sdp":"a"}}))
            )
            .is_empty()
        );
        assert!(
            s.handle(t0, msg(json!({"UUID":"x","candidates":[cand(1)]})))
                .is_empty()
        );
        let sess = started(&s.handle(t0, msg(json!({"request":"offerSDP","UUID":"v"}))))[0]
            .1
            .clone();
        s.handle(
            t0,
            SourceEvent::LocalOffer {
                viewer: PeerId("v".into()),
                session: sess.clone(),
                sdp: "o".into(),
            },
        );
        // Garbage ciphertext: a user error, no answer applied.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"v","session":sess,"description":"00ff","vector":"00"})),
        );
        assert!(matches!(&a[..], [SourceAction::UserError(_)]));
        assert_eq!(s.stats().undecryptable, 1);
        // An offer instead of an answer is ignored.
        let a = s.handle(
            t0,
            msg(json!({"UUID":"v","session":sess,"description":{"type":"offer","sdp":"o"}})),
        );
        assert!(a.is_empty());
        // Server alerts surface.
        let a = s.handle(
            t0,
            msg(json!({"request":"alert","message":"Stream ID is already in use."})),
        );
        assert!(matches!(&a[..], [SourceAction::UserError(t)] if t.contains("already in use")));
        // Events for unknown peers are ignored.
        let a = s.handle(
            t0,
            SourceEvent::LocalOffer {
                viewer: PeerId("nobody".into()),
                session: "s".into(),
                sdp: "o".into(),
            },
        );
        assert!(a.is_empty());
    }

    #[test]
    fn relay_departure_closes_unanswered_peer_only() {
        let t0 = Instant::now();
        let mut s = state(Dialect::Relay, Some("r"), Password::Disabled);
        s.handle(t0, SourceEvent::Connected);
        let a = s.handle(
            t0,
            msg(json!({"request":"joinroom","roomid":"r","from":"v1"})),
        );
        let sess = started(&a)[0].1.clone();
        let a = s.handle(t0, msg(json!({"type":"disconnect","uuid":"v1"})));
        assert_eq!(
            a,
            vec![SourceAction::ClosePeer {
                viewer: PeerId("v1".into()),
                session: sess
            }]
        );
        assert!(
            s.handle(t0, msg(json!({"type":"leave","uuid":"v9"})))
                .is_empty()
        );
    }
}
