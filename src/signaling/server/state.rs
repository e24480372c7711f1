//! Routing logic of the built-in handshake server as a pure state machine.
//!
//! The socket tasks only feed text frames and connect/disconnect notices in and write the
//! returned [`Delivery`]s out, so every routing rule of both dialects is unit-testable without
//! sockets. Official/stateful clients (no `from`) get server UUIDs, listings, room events,
//! `play` → `offerSDP` and UUID rewriting; relay clients (every message has `from`) get the
//! fan-out forwarding rule of `websocket_server/vdoninja.js`. The two populations are kept
//! apart: a message is only ever routed to clients of the sender's dialect.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};

/// Identifies one socket inside the server process.
pub type ClientId = u64;

/// Longest id (UUID, stream id, room id) accepted from clients.
const MAX_ID: usize = 128;

/// Resource limits enforced by the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted text frame.
    pub max_message_bytes: usize,
    /// Most rooms existing at once.
    pub max_rooms: usize,
    /// Most members per room.
    pub max_room_members: usize,
    /// Most viewers waiting for a not-yet-published stream, per stream id.
    pub max_pending_plays: usize,
    /// Most stream ids waited for at once.
    pub max_pending_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 256 * 1024,
            max_rooms: 1000,
            max_room_members: 80,
            max_pending_plays: 32,
            max_pending_streams: 1000,
        }
    }
}

/// A text frame to write to one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Recipient.
    pub to: ClientId,
    /// JSON text.
    pub text: String,
}

/// Counters for dropped input, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Frames over the size limit.
    pub oversized: u64,
    /// Frames that were not JSON objects or lacked required fields.
    pub malformed: u64,
    /// Targeted messages whose target does not exist.
    pub unroutable: u64,
    /// Frames routed to at least one client.
    pub routed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientDialect {
    Official,
    Relay,
}

#[derive(Debug)]
struct Client {
    server_uuid: String,
    relay_uuid: Option<String>,
    dialect: Option<ClientDialect>,
    room: Option<String>,
    stream: Option<String>,
}

/// All clients, rooms and streams of the server.
#[derive(Debug, Default)]
pub struct ServerState {
    limits: Limits,
    clients: HashMap<ClientId, Client>,
    official_uuids: HashMap<String, ClientId>,
    relay_uuids: HashMap<String, ClientId>,
    streams: HashMap<String, ClientId>,
    rooms: HashMap<String, BTreeSet<ClientId>>,
    pending: HashMap<String, Vec<ClientId>>,
    stats: ServerStats,
    /// Every client is official, `from` or not (see `ServerConfig::official_only`).
    official_only: bool,
}

fn id_of(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn to(to: ClientId, v: Value) -> Delivery {
    Delivery {
        to,
        text: v.to_string(),
    }
}

impl ServerState {
    /// Empty state with the given limits.
    pub fn new(limits: Limits) -> Self {
        ServerState {
            limits,
            ..Default::default()
        }
    }

    /// Drop counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Number of rooms with members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The server UUID assigned to a client (official dialect).
    pub fn uuid_of(&self, id: ClientId) -> Option<&str> {
        self.clients.get(&id).map(|c| c.server_uuid.as_str())
    }

    /// Registers a new socket with its server-assigned UUID (random, chosen by the caller).
    pub fn connect(&mut self, id: ClientId, server_uuid: String) {
        self.official_uuids.insert(server_uuid.clone(), id);
        self.clients.insert(
            id,
            Client {
                server_uuid,
                relay_uuid: None,
                dialect: None,
                room: None,
                stream: None,
            },
        );
    }

    /// Removes a socket; tells the others that its stream is gone.
    pub fn disconnect(&mut self, id: ClientId) -> Vec<Delivery> {
        let Some(c) = self.clients.remove(&id) else {
            return Vec::new();
        };
        self.official_uuids.remove(&c.server_uuid);
        if let Some(u) = &c.relay_uuid {
            self.relay_uuids.remove(u);
        }
        if let Some(s) = &c.stream {
            self.streams.remove(s);
        }
        self.pending.retain(|_, v| {
            v.retain(|x| *x != id);
            !v.is_empty()
        });
        let mut out = Vec::new();
        match c.dialect {
            Some(ClientDialect::Official) => {
                if let (Some(room), Some(stream)) = (&c.room, &c.stream) {
                    for m in self.room_members(room, id) {
                        out.push(to(
                            m,
                            json!({"request":"videoremovedfromroom","UUID":c.server_uuid,"streamID":stream}),
                        ));
                    }
                }
            }
            Some(ClientDialect::Relay) => {
                if let Some(u) = &c.relay_uuid {
                    let text = json!({"type":"disconnect","uuid":u});
                    for t in self.relay_targets(id, c.room.as_deref()) {
                        out.push(to(t, text.clone()));
                    }
                }
            }
            None => {}
        }
        if let Some(room) = &c.room {
            self.leave_room(room, id);
        }
        out
    }

    /// Treats every client as official, like wss.vdo.ninja (which ignores `from`).
    pub fn official_only(mut self, yes: bool) -> Self {
        self.official_only = yes;
        self
    }

    /// Routes one text frame from `id`; returns what to write to whom.
    pub fn handle(&mut self, id: ClientId, text: &str) -> Vec<Delivery> {
        if text.len() > self.limits.max_message_bytes {
            self.stats.oversized += 1;
            return Vec::new();
        }
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            self.stats.malformed += 1;
            return Vec::new();
        };
        let Some(client) = self.clients.get_mut(&id) else {
            return Vec::new();
        };
        let has_from = !self.official_only && id_of(msg.get("from")).is_some();
        let dialect = *client.dialect.get_or_insert(if has_from {
            ClientDialect::Relay
        } else {
            ClientDialect::Official
        });
        let out = match dialect {
            ClientDialect::Official => self.official(id, msg),
            ClientDialect::Relay => self.relay(id, msg, text),
        };
        if !out.is_empty() {
            self.stats.routed += 1;
        }
        out
    }

    fn room_members(&self, room: &str, except: ClientId) -> Vec<ClientId> {
        self.rooms
            .get(room)
            .map(|m| m.iter().copied().filter(|x| *x != except).collect())
            .unwrap_or_default()
    }

    fn leave_room(&mut self, room: &str, id: ClientId) {
        if let Some(m) = self.rooms.get_mut(room) {
            m.remove(&id);
            if m.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Puts `id` into `room` if limits allow; `Err` carries the alert text.
    fn join_room(&mut self, id: ClientId, room: &str) -> Result<(), &'static str> {
        let current = self.clients.get(&id).and_then(|c| c.room.clone());
        if current.as_deref() == Some(room) {
            return Ok(());
        }
        match self.rooms.get(room) {
            None if self.rooms.len() >= self.limits.max_rooms => return Err("Room limit reached"),
            Some(m) if m.len() >= self.limits.max_room_members => return Err("Room is full"),
            _ => {}
        }
        if let Some(old) = current {
            self.leave_room(&old, id);
        }
        self.rooms.entry(room.to_string()).or_default().insert(id);
        if let Some(c) = self.clients.get_mut(&id) {
            c.room = Some(room.to_string());
        }
        Ok(())
    }

    /// Binds a stream id to `id`; `Err` carries the error text of the relay server.
    fn bind_stream(&mut self, id: ClientId, sid: &str) -> Result<(), &'static str> {
        match self.streams.get(sid) {
            Some(owner) if *owner != id => return Err("sid already in use"),
            Some(_) => return Ok(()),
            None => {}
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return Err("unknown client");
        };
        if c.stream.is_some() {
            return Err("can't change sid");
        }
        c.stream = Some(sid.to_string());
        self.streams.insert(sid.to_string(), id);
        Ok(())
    }

    fn offer_request(&self, publisher: ClientId, viewer: ClientId) -> Option<Delivery> {
        let v = self.clients.get(&viewer)?;
        Some(to(
            publisher,
            json!({"request":"offerSDP","UUID":v.server_uuid}),
        ))
    }

    /// Viewers that asked for `sid` before it existed now get their offers.
    fn flush_pending(&mut self, sid: &str, publisher: ClientId, out: &mut Vec<Delivery>) {
        if let Some(waiting) = self.pending.remove(sid) {
            for v in waiting {
                if self.may_view(v, publisher)
                    && let Some(d) = self.offer_request(publisher, v)
                {
                    out.push(d);
                }
            }
        }
    }

    /// A stream published inside a room is only served to members of that room.
    fn may_view(&self, viewer: ClientId, publisher: ClientId) -> bool {
        let pr = self.clients.get(&publisher).and_then(|c| c.room.as_deref());
        let vr = self.clients.get(&viewer).and_then(|c| c.room.as_deref());
        pr.is_none() || pr == vr
    }

    fn official(&mut self, id: ClientId, mut msg: Map<String, Value>) -> Vec<Delivery> {
        let mut out = Vec::new();
        let me = match self.clients.get(&id) {
            Some(c) => c.server_uuid.clone(),
            None => return out,
        };
        let request = msg
            .get("request")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let sid = id_of(msg.get("streamID"));
        match request.as_deref() {
            Some("joinroom") => {
                let Some(room) = id_of(msg.get("roomid")) else {
                    self.stats.malformed += 1;
                    return out;
                };
                if let Err(e) = self.join_room(id, &room) {
                    out.push(to(id, json!({"request":"alert","message":e})));
                    return out;
                }
                if let Some(s) = &sid
                    && self.bind_stream(id, s).is_err()
                {
                    out.push(to(
                        id,
                        json!({"request":"alert","message":"Stream ID is already in use."}),
                    ));
                }
                let stream = self.clients.get(&id).and_then(|c| c.stream.clone());
                let others = self.room_members(&room, id);
                let list: Vec<Value> = others
                    .iter()
                    .filter_map(|o| self.clients.get(o))
                    .map(|c| match &c.stream {
                        Some(s) => json!({"UUID": c.server_uuid, "streamID": s}),
                        None => json!({"UUID": c.server_uuid}),
                    })
                    .collect();
                out.push(to(id, json!({"request":"listing","list":list})));
                let mut joined = json!({"request":"someonejoined","UUID":me});
                if let Some(s) = &stream {
                    joined["streamID"] = json!(s);
                }
                for o in others {
                    out.push(to(o, joined.clone()));
                }
                if let Some(s) = stream {
                    self.flush_pending(&s, id, &mut out);
                }
            }
            Some("seed") => {
                let Some(s) = sid else {
                    self.stats.malformed += 1;
                    return out;
                };
                if self.bind_stream(id, &s).is_err() {
                    out.push(to(
                        id,
                        json!({"request":"alert","message":"Stream ID is already in use."}),
                    ));
                    return out;
                }
                if let Some(room) = self.clients.get(&id).and_then(|c| c.room.clone()) {
                    for o in self.room_members(&room, id) {
                        out.push(to(
                            o,
                            json!({"request":"videoaddedtoroom","UUID":me,"streamID":s}),
                        ));
                    }
                }
                self.flush_pending(&s, id, &mut out);
            }
            Some("play") => {
                let Some(s) = sid else {
                    self.stats.malformed += 1;
                    return out;
                };
                match self.streams.get(&s).copied() {
                    Some(owner) if owner == id => {}
                    Some(owner) => {
                        if self.may_view(id, owner) {
                            out.extend(self.offer_request(owner, id));
                        } else {
                            self.stats.unroutable += 1;
                        }
                    }
                    None => {
                        if !self.pending.contains_key(&s)
                            && self.pending.len() >= self.limits.max_pending_streams
                        {
                            self.stats.unroutable += 1;
                            return out;
                        }
                        let q = self.pending.entry(s).or_default();
                        if !q.contains(&id) && q.len() < self.limits.max_pending_plays {
                            q.push(id);
                        }
                    }
                }
            }
            _ => {
                // Targeted message: deliver to UUID, which becomes the sender's UUID.
                let Some(target) = id_of(msg.get("UUID")) else {
                    self.stats.malformed += 1;
                    return out;
                };
                match self.official_uuids.get(&target).copied() {
                    Some(t) if t != id => {
                        msg.insert("UUID".into(), Value::String(me));
                        out.push(to(t, Value::Object(msg)));
                    }
                    _ => self.stats.unroutable += 1,
                }
            }
        }
        out
    }

    /// Relay clients other than `id` that a message from a sender in `room` may reach.
    fn relay_targets(&self, id: ClientId, room: Option<&str>) -> Vec<ClientId> {
        let mut v: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(cid, c)| {
                **cid != id && c.dialect == Some(ClientDialect::Relay) && c.room.as_deref() == room
            })
            .map(|(cid, _)| *cid)
            .collect();
        v.sort_unstable();
        v
    }

    fn relay(&mut self, id: ClientId, msg: Map<String, Value>, text: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        let Some(from) = id_of(msg.get("from")) else {
            self.stats.malformed += 1;
            return out;
        };
        let bound = self.clients.get(&id).and_then(|c| c.relay_uuid.clone());
        if bound.is_none() {
            if self.relay_uuids.contains_key(&from) {
                out.push(to(id, json!({"error":"uuid already in use"})));
                return out;
            }
            self.relay_uuids.insert(from.clone(), id);
            if let Some(c) = self.clients.get_mut(&id) {
                c.relay_uuid = Some(from.clone());
            }
        }
        let request = msg.get("request").and_then(Value::as_str);
        let sid = id_of(msg.get("streamID"));
        if matches!(request, Some("seed") | Some("joinroom"))
            && let Some(s) = &sid
            && let Err(e) = self.bind_stream(id, s)
        {
            out.push(to(id, json!({"error": e})));
            return out;
        }
        if request == Some("joinroom") {
            match id_of(msg.get("roomid")) {
                Some(room) => {
                    if let Err(e) = self.join_room(id, &room) {
                        out.push(to(id, json!({"error": e})));
                        return out;
                    }
                }
                None => {
                    self.stats.malformed += 1;
                    return out;
                }
            }
        }
        let room = self.clients.get(&id).and_then(|c| c.room.clone());
        let target = id_of(msg.get("UUID"));
        let play_sid = if request == Some("play") { sid } else { None };
        for t in self.relay_targets(id, room.as_deref()) {
            let Some(c) = self.clients.get(&t) else {
                continue;
            };
            if let Some(u) = &target
                && c.relay_uuid.as_ref() != Some(u)
            {
                continue;
            }
            if let Some(s) = &play_sid
                && c.stream.as_ref() != Some(s)
            {
                continue;
            }
            out.push(Delivery {
                to: t,
                text: text.to_string(),
            });
        }
        if out.is_empty() && target.is_some() {
            self.stats.unroutable += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ServerState {
        ServerState::new(Limits::default())
    }

    fn parsed(d: &[Delivery]) -> Vec<(ClientId, Value)> {
        d.iter()
            .map(|d| (d.to, serde_json::from_str(&d.text).unwrap()))
            .collect()
    }

    #[test]
    fn official_room_flow() {
        let mut s = state();
        s.connect(1, "pub".into());
        s.connect(2, "view".into());
        s.connect(3, "pub2".into());
        // Publisher joins with a stream, viewer joins without.
        let d = s.handle(1, r#"{"request":"joinroom","roomid":"R","streamID":"a1"}"#);
        assert_eq!(
            parsed(&d),
            vec![(1, json!({"request":"listing","list":[]}))]
        );
        let d = s.handle(2, r#"{"request":"joinroom","roomid":"R"}"#);
        assert_eq!(
            parsed(&d),
            vec![
                (
                    2,
                    json!({"request":"listing","list":[{"UUID":"pub","streamID":"a1"}]})
                ),
                (1, json!({"request":"someonejoined","UUID":"view"})),
            ]
        );
        // Viewer plays: the publisher is asked for an offer addressed to the viewer.
        let d = s.handle(2, r#"{"request":"play","streamID":"a1","UUID":"pub"}"#);
        assert_eq!(
            parsed(&d),
            vec![(1, json!({"request":"offerSDP","UUID":"view"}))]
        );
        // Offer: UUID rewritten to the sender.
        let d = s.handle(
            1,
            r#"{"UUID":"view","description":"abc","vector":"00","session":"s"}"#,
        );
        assert_eq!(
            parsed(&d),
            vec![(
                2,
                json!({"UUID":"pub","description":"abc","vector":"00","session":"s"})
            )]
        );
        let d = s.handle(
            2,
            r#"{"UUID":"pub","candidates":[],"type":"remote","session":"s"}"#,
        );
        assert_eq!(parsed(&d)[0].1["UUID"], json!("view"));
        // A later publisher joins then seeds.
        let d = s.handle(3, r#"{"request":"joinroom","roomid":"R"}"#);
        assert_eq!(d.len(), 3);
        let d = s.handle(3, r#"{"request":"seed","streamID":"b2"}"#);
        let p = parsed(&d);
        assert!(p.contains(&(
            2,
            json!({"request":"videoaddedtoroom","UUID":"pub2","streamID":"b2"})
        )));
        assert!(p.contains(&(
            1,
            json!({"request":"videoaddedtoroom","UUID":"pub2","streamID":"b2"})
        )));
        // Publisher leaves: room members learn it.
        let d = s.disconnect(1);
        assert_eq!(
            parsed(&d),
            vec![
                (
                    2,
                    json!({"request":"videoremovedfromroom","UUID":"pub","streamID":"a1"})
                ),
                (
                    3,
                    json!({"request":"videoremovedfromroom","UUID":"pub","streamID":"a1"})
                ),
            ]
        );
        assert_eq!(s.client_count(), 2);
    }

    #[test]
    fn official_stream_conflicts_pending_plays_and_room_privacy() {
        let mut s = state();
        s.connect(1, "a".into());
        s.connect(2, "b".into());
        s.connect(3, "c".into());
        // Play before seed is queued and served on seed.
        assert!(
            s.handle(2, r#"{"request":"play","streamID":"x"}"#)
                .is_empty()
        );
        let d = s.handle(1, r#"{"request":"seed","streamID":"x"}"#);
        assert_eq!(
            parsed(&d),
            vec![(1, json!({"request":"offerSDP","UUID":"b"}))]
        );
        // Same sid from someone else.
        let d = s.handle(3, r#"{"request":"seed","streamID":"x"}"#);
        assert_eq!(
            parsed(&d),
            vec![(
                3,
                json!({"request":"alert","message":"Stream ID is already in use."})
            )]
        );
        // A stream in a room is not served to non-members.
        s.handle(3, r#"{"request":"joinroom","roomid":"R","streamID":"y"}"#);
        assert!(
            s.handle(2, r#"{"request":"play","streamID":"y"}"#)
                .is_empty()
        );
        assert_eq!(s.stats().unroutable, 1);
        // Targeted to nobody.
        assert!(s.handle(2, r#"{"UUID":"ghost","bye":true}"#).is_empty());
        assert_eq!(s.stats().unroutable, 2);
    }

    #[test]
    fn room_limits() {
        let mut s = ServerState::new(Limits {
            max_rooms: 1,
            max_room_members: 1,
            ..Limits::default()
        });
        s.connect(1, "a".into());
        s.connect(2, "b".into());
        s.handle(1, r#"{"request":"joinroom","roomid":"R"}"#);
        let d = s.handle(2, r#"{"request":"joinroom","roomid":"R"}"#);
        assert_eq!(
            parsed(&d),
            vec![(2, json!({"request":"alert","message":"Room is full"}))]
        );
        let d = s.handle(2, r#"{"request":"joinroom","roomid":"Q"}"#);
        assert_eq!(
            parsed(&d),
            vec![(2, json!({"request":"alert","message":"Room limit reached"}))]
        );
        assert_eq!(s.room_count(), 1);
    }

    #[test]
    fn relay_forwarding_rule() {
        let mut s = state();
        for (i, u) in [(1, "p"), (2, "v"), (3, "w"), (4, "out")] {
            s.connect(i, format!("srv{i}"));
            let _ = u;
        }
        // Bind from ids; outside rooms everything fans out.
        s.handle(4, r#"{"from":"out","request":"ping"}"#);
        s.handle(
            1,
            r#"{"from":"p","request":"joinroom","roomid":"R","streamID":"sp"}"#,
        );
        let d = s.handle(2, r#"{"from":"v","request":"joinroom","roomid":"R"}"#);
        // The publisher (same room) hears the viewer's joinroom; the outsider does not.
        assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![1]);
        s.handle(3, r#"{"from":"w","request":"joinroom","roomid":"R"}"#);
        // Targeted by UUID.
        let d = s.handle(
            1,
            r#"{"from":"p","UUID":"v","description":{"type":"offer","sdp":"x"}}"#,
        );
        assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![2]);
        assert!(
            d[0].text.contains("\"from\":\"p\""),
            "no rewriting in relay mode"
        );
        // play goes only to the sid owner.
        let d = s.handle(2, r#"{"from":"v","request":"play","streamID":"sp"}"#);
        assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![1]);
        // Untargeted in room: everyone else in the room.
        let d = s.handle(1, r#"{"from":"p","request":"hello"}"#);
        assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![2, 3]);
        // Outside the room: only other room-less relay clients (none).
        assert!(s.handle(4, r#"{"from":"out","x":1}"#).is_empty());
        // Departure is announced to the room.
        let d = s.disconnect(1);
        assert_eq!(
            parsed(&d),
            vec![
                (2, json!({"type":"disconnect","uuid":"p"})),
                (3, json!({"type":"disconnect","uuid":"p"})),
            ]
        );
    }

    #[test]
    fn relay_uuid_and_sid_conflicts() {
        let mut s = state();
        s.connect(1, "a".into());
        s.connect(2, "b".into());
        s.handle(1, r#"{"from":"same","request":"seed","streamID":"s1"}"#);
        let d = s.handle(2, r#"{"from":"same","request":"ping"}"#);
        assert_eq!(
            parsed(&d),
            vec![(2, json!({"error":"uuid already in use"}))]
        );
        let d = s.handle(2, r#"{"from":"other","request":"seed","streamID":"s1"}"#);
        assert_eq!(parsed(&d), vec![(2, json!({"error":"sid already in use"}))]);
        let d = s.handle(1, r#"{"from":"same","request":"seed","streamID":"s2"}"#);
        assert_eq!(parsed(&d), vec![(1, json!({"error":"can't change sid"}))]);
    }

    #[test]
    fn dialects_do_not_mix() {
        let mut s = state();
        s.connect(1, "off".into());
        s.connect(2, "rel".into());
        s.handle(1, r#"{"request":"joinroom","roomid":"R"}"#);
        let d = s.handle(2, r#"{"from":"r","request":"joinroom","roomid":"R"}"#);
        assert!(d.is_empty());
        assert!(
            s.handle(2, r#"{"from":"r","UUID":"off","bye":true}"#)
                .is_empty()
        );
    }

    #[test]
    fn malformed_input_is_counted_and_dropped() {
        let mut s = ServerState::new(Limits {
            max_message_bytes: 100,
            ..Limits::default()
        });
        s.connect(1, "a".into());
        assert!(s.handle(1, "nope").is_empty());
        assert!(s.handle(1, "[1]").is_empty());
        assert!(s.handle(1, &"x".repeat(101)).is_empty());
        assert!(s.handle(1, r#"{"request":"joinroom"}"#).is_empty());
        assert!(
            s.handle(1, r#"{"request":"seed","streamID":{"x":1}}"#)
                .is_empty()
        );
        assert!(
            s.handle(99, r#"{"request":"seed","streamID":"s"}"#)
                .is_empty()
        );
        let st = s.stats();
        assert_eq!((st.oversized, st.malformed), (1, 4));
        assert!(s.disconnect(99).is_empty());
    }
}
