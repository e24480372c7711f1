//! Wire messages of the VDO.Ninja handshake, as seen by a viewer, in both server dialects.
//!
//! Inbound text is parsed leniently into [`Inbound`]: unknown fields are ignored, an
//! unrecognised message is a [`ParseError`] the caller counts and drops, and every string and
//! list is size-limited so hostile input cannot grow memory. Outbound messages are built by the
//! [`Outbound`] constructors so field names and the `session` echo are in one place.

use serde_json::{Map, Value};

use super::crypto::{Cipher, CryptoError};

/// Largest text frame we parse; real offers with candidates are a few tens of KiB (hex doubles).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Longest UUID / stream id / room id we accept; real ones are < 80 characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest stream id parsed at all: longer ones up to this are passed on so the room can say
/// once that it skips them (the limit itself stays [`MAX_ID_CHARS`]).
pub const MAX_PARSED_STREAM_ID_CHARS: usize = 1024;
/// Most members we take from one `listing`; the official server caps rooms near 80.
pub const MAX_LISTING: usize = 512;
/// Most ICE candidates we take from one bundle.
pub const MAX_CANDIDATES: usize = 64;
/// Longest `session` string echoed back.
pub const MAX_SESSION_CHARS: usize = 128;

/// Why a text frame was not turned into an [`Inbound`]; the client counts these and moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Frame larger than [`MAX_MESSAGE_BYTES`].
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    /// Not JSON at all.
    #[error("message is not JSON")]
    NotJson,
    /// JSON but not an object.
    #[error("message is not a JSON object")]
    NotObject,
    /// A known message with a missing or malformed required field.
    #[error("malformed `{0}` field")]
    BadField(&'static str),
    /// A message kind we do not understand (or do not care about as a viewer).
    #[error("unknown message kind")]
    Unknown,
}

/// Why a sealed payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The payload is encrypted but the message carries no `vector`.
    #[error("encrypted payload without `vector`")]
    NoVector,
    /// The payload is encrypted but our password is disabled.
    #[error("encrypted payload but the password is disabled")]
    NoCipher,
    /// Decryption failed (wrong password/salt or garbage).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Decrypted text is not JSON.
    #[error("decrypted payload is not JSON")]
    NotJson,
}

/// A `description` / `candidate(s)` field: either the plain JSON value or hex ciphertext whose
/// IV is the message's top-level `vector`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sealed {
    /// Sent in the clear (password disabled, or a peer that does not encrypt).
    Plain(Value),
    /// `JSON.stringify(value)` encrypted with AES-CBC, hex encoded.
    Encrypted(String),
}

impl Sealed {
    /// Whether the payload was encrypted, so replies can mirror the peer.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Sealed::Encrypted(_))
    }

    /// Returns the plain JSON value, decrypting with `cipher` if needed.
    pub fn open(&self, vector: Option<&str>, cipher: Option<&Cipher>) -> Result<Value, OpenError> {
        match self {
            Sealed::Plain(v) => Ok(v.clone()),
            Sealed::Encrypted(hex) => {
                let vector = vector.ok_or(OpenError::NoVector)?;
                let cipher = cipher.ok_or(OpenError::NoCipher)?;
                let text = cipher.decrypt(hex, vector)?;
                serde_json::from_str(&text).map_err(|_| OpenError::NotJson)
            }
        }
    }

    /// Seals `value`: encrypts when a cipher is given, returning the field value and `vector`.
    pub fn seal(value: &Value, cipher: Option<&Cipher>) -> (Sealed, Option<String>) {
        match cipher {
            Some(c) => {
                let (hex, iv) = c.encrypt(&value.to_string());
                (Sealed::Encrypted(hex), Some(iv))
            }
            None => (Sealed::Plain(value.clone()), None),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Sealed::Plain(v) => v,
            Sealed::Encrypted(h) => Value::String(h),
        }
    }
}

/// One entry of a `listing` / `transferred` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's server-assigned UUID.
    pub uuid: String,
    /// Its (hashed) stream id when it publishes.
    pub stream_id: Option<String>,
}

/// What an inbound message means for a viewer.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `listing` (reply to joinroom) or `transferred` (moved by the director): the room members.
    Listing {
        /// Members, publishers have a stream id.
        members: Vec<Member>,
    },
    /// `videoaddedtoroom`: `uuid` started publishing `stream_id`.
    VideoAdded,
    /// `someonejoined`: a new member, maybe already with a stream.
    SomeoneJoined,
    /// Relay dialect: another client's `joinroom` announcement.
    JoinRoom,
    /// A `seed` broadcast (relay dialect, outside rooms).
    Seed,
    /// Someone asks for a stream (we publish nothing, so this is informational).
    Play,
    /// The server asks us for an offer (only publishers act on it).
    OfferRequest,
    /// An SDP description (offer, or an answer for a publisher); type is known only once opened.
    Description(Sealed),
    /// ICE: a `candidates` array or a single `candidate` object, maybe encrypted.
    Candidates(Sealed),
    /// `{"bye":true}`: the sender closes its connection with us.
    Bye,
    /// `{"request":"cleanup"}`: the sender resets its connections.
    Cleanup,
    /// `videoremovedfromroom`: a member stopped publishing.
    VideoRemoved,
    /// Relay servers with presence (offline_deployment): `{type:"disconnect"|"leave",uuid}`.
    Departed,
    /// `alert` from the server (e.g. "Room is full").
    Alert(String),
    /// `error` from the server (e.g. "uuid already in use").
    Error(String),
    /// `{"id":uuid}`: the server tells us our UUID (some stateful servers).
    AssignedId(String),
    /// `{"request":"ping"}` or a pong: nothing to do.
    Ping,
}

/// A parsed inbound message with the routing fields every kind may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// What it means.
    pub kind: Kind,
    /// `UUID`: the sender (official dialect) or the target (relay); for [`Kind::Departed`] the
    /// departed client.
    pub uuid: Option<String>,
    /// `from`: the sender's self-chosen id (relay dialect).
    pub from: Option<String>,
    /// `session` exactly as received: `None` = absent, `Some(Null)` = null.
    pub session: Option<Value>,
    /// `streamID` (hashed, as on the wire).
    pub stream_id: Option<String>,
    /// `vector`: the IV of encrypted fields.
    pub vector: Option<String>,
}

fn id_field(obj: &Map<String, Value>, key: &'static str) -> Result<Option<String>, ParseError> {
    let max = if key == "streamID" {
        MAX_PARSED_STREAM_ID_CHARS
    } else {
        MAX_ID_CHARS
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ParseError::BadField(key)),
    }
}

fn sealed_field(v: &Value, key: &'static str) -> Result<Sealed, ParseError> {
    match v {
        Value::String(s) => Ok(Sealed::Encrypted(s.clone())),
        Value::Object(_) => Ok(Sealed::Plain(v.clone())),
        Value::Array(a) if a.len() <= MAX_CANDIDATES => Ok(Sealed::Plain(v.clone())),
        _ => Err(ParseError::BadField(key)),
    }
}

fn parse_members(v: Option<&Value>) -> Result<Vec<Member>, ParseError> {
    let arr = match v {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(ParseError::BadField("list")),
    };
    let mut out = Vec::new();
    for m in arr.iter().take(MAX_LISTING) {
        let Value::Object(o) = m else { continue };
        let Ok(Some(uuid)) = id_field(o, "UUID") else {
            continue;
        };
        let stream_id = id_field(o, "streamID").ok().flatten();
        out.push(Member { uuid, stream_id });
    }
    Ok(out)
}

/// Parses one text frame. Lenient: unknown fields are ignored and wrong-typed optional fields
/// dropped, but anything that cannot be acted on is an error for the caller to count.
pub fn parse_inbound(text: &str) -> Result<Inbound, ParseError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge(text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|_| ParseError::NotJson)?;
    let Value::Object(obj) = value else {
        return Err(ParseError::NotObject);
    };
    let mut session = obj.get("session").cloned();
    if let Some(Value::String(s)) = &session
        && s.chars().count() > MAX_SESSION_CHARS
    {
        session = None;
    }
    let uuid = id_field(&obj, "UUID")?;
    let stream_id = id_field(&obj, "streamID")?;
    let from = id_field(&obj, "from")?;
    let vector = match obj.get("vector") {
        Some(Value::String(s)) if s.len() <= 64 => Some(s.clone()),
        _ => None,
    };
    let request = obj.get("request").and_then(Value::as_str);

    let kind = if obj.get("bye").is_some_and(|b| b.as_bool() == Some(true)) {
        Kind::Bye
    } else if let Some(d) = obj.get("description") {
        Kind::Description(sealed_field(d, "description")?)
    } else if let Some(c) = obj.get("candidates") {
        Kind::Candidates(sealed_field(c, "candidates")?)
    } else if let Some(c) = obj.get("candidate") {
        Kind::Candidates(sealed_field(c, "candidate")?)
    } else if let Some(r) = request {
        match r {
            "listing" | "transferred" => Kind::Listing {
                members: parse_members(obj.get("list"))?,
            },
            "videoaddedtoroom" => Kind::VideoAdded,
            "someonejoined" => Kind::SomeoneJoined,
            "joinroom" => Kind::JoinRoom,
            "seed" => Kind::Seed,
            "play" => Kind::Play,
            "offerSDP" => Kind::OfferRequest,
            "cleanup" => Kind::Cleanup,
            "videoremovedfromroom" => Kind::VideoRemoved,
            "ping" | "pong" => Kind::Ping,
            "alert" => Kind::Alert(short_text(obj.get("message"))),
            "error" => Kind::Error(short_text(obj.get("message"))),
            _ => return Err(ParseError::Unknown),
        }
    } else if let Some(e) = obj.get("error") {
        Kind::Error(short_text(Some(e)))
    } else if matches!(
        obj.get("type").and_then(Value::as_str),
        Some("disconnect" | "leave")
    ) {
        let departed = id_field(&obj, "uuid")?.ok_or(ParseError::BadField("uuid"))?;
        return Ok(Inbound {
            kind: Kind::Departed,
            uuid: Some(departed),
            from,
            session,
            stream_id,
            vector,
        });
    } else if let Some(id) = id_field(&obj, "id")? {
        Kind::AssignedId(id)
    } else if obj.contains_key("ping") || obj.contains_key("pong") {
        Kind::Ping
    } else {
        return Err(ParseError::Unknown);
    };
    Ok(Inbound {
        kind,
        uuid,
        from,
        session,
        stream_id,
        vector,
    })
}

fn short_text(v: Option<&Value>) -> String {
    let s = match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    s.chars().take(200).collect()
}

/// One ICE candidate as VDO.Ninja serialises `RTCIceCandidate`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceCandidate {
    /// The `candidate:...` line.
    pub candidate: String,
    /// Media id the candidate belongs to.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Media line index the candidate belongs to.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

/// Extracts candidates from an opened `candidates` array or single `candidate` object,
/// skipping malformed entries (and end-of-candidates markers with an empty line).
pub fn candidates_from_value(v: &Value) -> Vec<IceCandidate> {
    let one = |v: &Value| -> Option<IceCandidate> {
        let c: IceCandidate = serde_json::from_value(v.clone()).ok()?;
        (!c.candidate.is_empty() && c.candidate.len() <= 1024).then_some(c)
    };
    match v {
        Value::Array(a) => a.iter().take(MAX_CANDIDATES).filter_map(one).collect(),
        Value::Object(_) => one(v).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// An outbound message under construction; serialises to the exact JSON object sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound(pub Map<String, Value>);

impl Outbound {
    fn new() -> Self {
        Outbound(Map::new())
    }

    fn with(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), v.into());
        self
    }

    fn with_opt(self, key: &str, v: Option<&str>) -> Self {
        match v {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    fn with_session(mut self, session: Option<&Value>) -> Self {
        if let Some(s) = session {
            self.0.insert("session".into(), s.clone());
        }
        self
    }

    /// `{"request":"play","streamID":s[,"UUID":u]}`: ask for a stream (optionally of one peer).
    pub fn play(wire_stream_id: &str, uuid: Option<&str>) -> Self {
        Outbound::new()
            .with("request", "play")
            .with("streamID", wire_stream_id)
            .with_opt("UUID", uuid)
    }

    /// `{"request":"joinroom","roomid":r}`: a pure viewer joins without a stream id.
    pub fn join_room(wire_room: &str) -> Self {
        Outbound::new()
            .with("request", "joinroom")
            .with("roomid", wire_room)
    }

    /// The SDP answer to `uuid`, echoing its `session` and stream id.
    pub fn answer(
        uuid: &str,
        session: Option<&Value>,
        description: Sealed,
        vector: Option<String>,
        wire_stream_id: Option<&str>,
    ) -> Self {
        let mut m = Outbound::new()
            .with("UUID", uuid)
            .with("description", description.into_value())
            .with_session(session)
            .with_opt("streamID", wire_stream_id);
        if let Some(v) = vector {
            m = m.with("vector", v);
        }
        m
    }

    /// A bundle of our ICE candidates to `uuid`; a viewer marks them `"type":"remote"`.
    pub fn candidates(
        uuid: &str,
        session: Option<&Value>,
        candidates: Sealed,
        vector: Option<String>,
    ) -> Self {
        Self::candidate_bundle("remote", uuid, session, candidates, vector)
    }

    /// A publisher's bundle of ICE candidates to viewer `uuid`: the direction marker is
    /// `"type":"local"` (publisher → viewer), the mirror of [`Outbound::candidates`].
    pub fn local_candidates(
        uuid: &str,
        session: Option<&Value>,
        candidates: Sealed,
        vector: Option<String>,
    ) -> Self {
        Self::candidate_bundle("local", uuid, session, candidates, vector)
    }

    fn candidate_bundle(
        direction: &str,
        uuid: &str,
        session: Option<&Value>,
        candidates: Sealed,
        vector: Option<String>,
    ) -> Self {
        let mut m = Outbound::new()
            .with("UUID", uuid)
            .with("type", direction)
            .with("candidates", candidates.into_value())
            .with_session(session);
        if let Some(v) = vector {
            m = m.with("vector", v);
        }
        m
    }

    /// `{"request":"seed","streamID":s}`: a publisher announces its (hashed) stream id. The web
    /// app sends it after the room `listing` arrives; outside rooms it is the only announcement.
    pub fn seed(wire_stream_id: &str) -> Self {
        Outbound::new()
            .with("request", "seed")
            .with("streamID", wire_stream_id)
    }

    /// `{"request":"joinroom","roomid":r,"streamID":s}`: a publisher joins a room and announces
    /// its stream in one message, as the web app does on relay ("customWSS") servers.
    pub fn join_room_publishing(wire_room: &str, wire_stream_id: &str) -> Self {
        Self::join_room(wire_room).with("streamID", wire_stream_id)
    }

    /// A publisher's SDP offer to viewer `uuid`: its stream id, a fresh `session` for this peer
    /// connection, and the (maybe encrypted) description.
    pub fn offer(
        uuid: &str,
        session: &Value,
        description: Sealed,
        vector: Option<String>,
        wire_stream_id: &str,
    ) -> Self {
        let mut m = Outbound::new()
            .with("UUID", uuid)
            .with("streamID", wire_stream_id)
            .with("description", description.into_value())
            .with_session(Some(session));
        if let Some(v) = vector {
            m = m.with("vector", v);
        }
        m
    }

    /// `{"UUID":u,"bye":true}`: tell one peer we are done.
    pub fn bye(uuid: &str) -> Self {
        Outbound::new().with("UUID", uuid).with("bye", true)
    }

    /// Adds `from` (relay dialect: every message carries the sender's id).
    pub fn with_from(self, from: &str) -> Self {
        self.with("from", from)
    }

    /// Field access for tests and logging.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The JSON text to put in a WebSocket frame.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::crypto::{Cipher, DEFAULT_PASSWORD, DEFAULT_SALT};
    use serde_json::json;

    fn p(v: Value) -> Inbound {
        parse_inbound(&v.to_string()).unwrap()
    }

    #[test]
    fn official_listing_and_room_events() {
        let m = p(
            json!({"request":"listing","list":[{"UUID":"a","streamID":"s1808d64"},{"UUID":"b"},{"bogus":1},7],"director":"a","extra":true}),
        );
        assert_eq!(
            m.kind,
            Kind::Listing {
                members: vec![
                    Member {
                        uuid: "a".into(),
                        stream_id: Some("s1808d64".into())
                    },
                    Member {
                        uuid: "b".into(),
                        stream_id: None
                    },
                ]
            }
        );
        let t = p(json!({"request":"transferred","list":[{"UUID":"c","streamID":"x"}]}));
        assert!(matches!(t.kind, Kind::Listing { ref members } if members.len() == 1));
        let v = p(json!({"request":"videoaddedtoroom","UUID":"u1","streamID":"s2"}));
        assert_eq!(
            (v.kind, v.uuid.as_deref(), v.stream_id.as_deref()),
            (Kind::VideoAdded, Some("u1"), Some("s2"))
        );
        let s = p(json!({"request":"someonejoined","UUID":"u2"}));
        assert_eq!((s.kind, s.stream_id), (Kind::SomeoneJoined, None));
        let r = p(json!({"request":"videoremovedfromroom","UUID":"u1","streamID":"s2"}));
        assert_eq!(r.kind, Kind::VideoRemoved);
        assert_eq!(
            p(json!({"request":"alert","message":"Room is full"})).kind,
            Kind::Alert("Room is full".into())
        );
        assert_eq!(
            p(json!({"request":"error","message":"x","code":3})).kind,
            Kind::Error("x".into())
        );
        assert_eq!(
            p(json!({"request":"cleanup","UUID":"u"})).kind,
            Kind::Cleanup
        );
        assert_eq!(p(json!({"bye":true,"UUID":"u"})).kind, Kind::Bye);
        assert_eq!(
            p(json!({"bye":true,"videoMuted":true,"description":{}})).kind,
            Kind::Bye
        );
        assert_eq!(p(json!({"id":"me"})).kind, Kind::AssignedId("me".into()));
        assert_eq!(
            p(json!({"request":"offerSDP","UUID":"v"})).kind,
            Kind::OfferRequest
        );
        assert_eq!(p(json!({"request":"ping"})).kind, Kind::Ping);
    }

    #[test]
    fn relay_dialect_messages() {
        let j = p(json!({"request":"joinroom","roomid":"r","streamID":"s","from":"pub1"}));
        assert_eq!(
            (j.kind, j.from.as_deref(), j.stream_id.as_deref()),
            (Kind::JoinRoom, Some("pub1"), Some("s"))
        );
        let s = p(json!({"request":"seed","streamID":"s","from":123456}));
        assert_eq!((s.kind, s.from.as_deref()), (Kind::Seed, Some("123456")));
        let o = p(
            json!({"UUID":"me","from":"pub1","streamID":"s","session":"abc","description":{"type":"offer","sdp":"v=0"}}),
        );
        assert!(matches!(o.kind, Kind::Description(Sealed::Plain(_))));
        assert_eq!(o.session, Some(json!("abc")));
        let d = p(json!({"type":"disconnect","uuid":"pub1"}));
        assert_eq!((d.kind, d.uuid.as_deref()), (Kind::Departed, Some("pub1")));
        assert_eq!(
            p(json!({"error":"uuid already in use"})).kind,
            Kind::Error("uuid already in use".into())
        );
        assert_eq!(
            p(json!({"request":"play","streamID":"x","from":"v"})).kind,
            Kind::Play
        );
    }

    #[test]
    fn session_is_kept_exactly() {
        assert_eq!(
            p(json!({"description":{"type":"offer","sdp":""},"session":null})).session,
            Some(Value::Null)
        );
        assert_eq!(
            p(json!({"description":{"type":"offer","sdp":""}})).session,
            None
        );
        assert_eq!(
            p(json!({"description":{"type":"offer","sdp":""},"session":"x1"})).session,
            Some(json!("x1"))
        );
    }

    #[test]
    fn encrypted_description_and_candidates_open() {
        let c = Cipher::new(DEFAULT_PASSWORD, DEFAULT_SALT);
        let desc = json!({"type":"offer","sdp":"v=0\r\n"});
        let (sealed, iv) = Sealed::seal(&desc, Some(&c));
        let msg = Outbound::answer("u", Some(&json!("s")), sealed, iv, None);
        let back = parse_inbound(&msg.to_json()).unwrap();
        let Kind::Description(s) = &back.kind else {
            panic!("not a description")
        };
        assert!(s.is_encrypted());
        assert_eq!(s.open(back.vector.as_deref(), Some(&c)).unwrap(), desc);
        assert_eq!(s.open(None, Some(&c)), Err(OpenError::NoVector));
        assert_eq!(
            s.open(back.vector.as_deref(), None),
            Err(OpenError::NoCipher)
        );
        let wrong = Cipher::new("nope", DEFAULT_SALT);
        assert!(matches!(
            s.open(back.vector.as_deref(), Some(&wrong)),
            Err(OpenError::Crypto(_))
        ));

        let cands = json!([{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0,"sdpMid":"0"}]);
        let (sealed, iv) = Sealed::seal(&cands, Some(&c));
        let msg = Outbound::candidates("u", None, sealed, iv);
        assert_eq!(msg.get("type"), Some(&json!("remote")));
        assert!(msg.get("session").is_none());
        let back = parse_inbound(&msg.to_json()).unwrap();
        let Kind::Candidates(s) = &back.kind else {
            panic!("not candidates")
        };
        let list = candidates_from_value(&s.open(back.vector.as_deref(), Some(&c)).unwrap());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(list[0].sdp_mline_index, Some(0));
    }

    #[test]
    fn single_candidate_object_is_accepted() {
        let m = p(
            json!({"UUID":"u","type":"local","candidate":{"candidate":"candidate:x","sdpMLineIndex":1},"session":"s"}),
        );
        let Kind::Candidates(Sealed::Plain(v)) = &m.kind else {
            panic!()
        };
        let list = candidates_from_value(v);
        assert_eq!(
            list,
            vec![IceCandidate {
                candidate: "candidate:x".into(),
                sdp_mid: None,
                sdp_mline_index: Some(1)
            }]
        );
        assert!(candidates_from_value(&json!([{"candidate":""}, 5, {"x":1}])).is_empty());
    }

    #[test]
    fn malformed_and_unknown_input_is_rejected() {
        assert_eq!(parse_inbound("not json"), Err(ParseError::NotJson));
        assert_eq!(parse_inbound("[1,2]"), Err(ParseError::NotObject));
        assert_eq!(parse_inbound("{}"), Err(ParseError::Unknown));
        assert_eq!(
            parse_inbound(r#"{"request":"whatever"}"#),
            Err(ParseError::Unknown)
        );
        assert_eq!(
            parse_inbound(r#"{"request":"play","UUID":{"a":1}}"#),
            Err(ParseError::BadField("UUID"))
        );
        assert_eq!(
            parse_inbound(r#"{"description":5}"#),
            Err(ParseError::BadField("description"))
        );
        assert_eq!(
            parse_inbound(r#"{"request":"listing","list":"x"}"#),
            Err(ParseError::BadField("list"))
        );
        let long_id = "x".repeat(MAX_PARSED_STREAM_ID_CHARS + 1);
        assert_eq!(
            parse_inbound(&json!({"request":"seed","streamID":long_id}).to_string()),
            Err(ParseError::BadField("streamID"))
        );
        let long_uuid = "x".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            parse_inbound(&json!({"request":"seed","UUID":long_uuid}).to_string()),
            Err(ParseError::BadField("UUID"))
        );
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
        assert!(matches!(parse_inbound(&big), Err(ParseError::TooLarge(_))));
        let many: Vec<Value> = (0..MAX_CANDIDATES + 1)
            .map(|_| json!({"candidate":"c"}))
            .collect();
        assert_eq!(
            parse_inbound(&json!({"candidates": many}).to_string()),
            Err(ParseError::BadField("candidates"))
        );
    }

    #[test]
    fn outbound_shapes() {
        assert_eq!(
            Outbound::play("s808d64", None).to_json(),
            r#"{"request":"play","streamID":"s808d64"}"#
        );
        let p = Outbound::play("s", Some("u")).with_from("me");
        assert_eq!(p.get("UUID"), Some(&json!("u")));
        assert_eq!(p.get("from"), Some(&json!("me")));
        let j = Outbound::join_room("2f1a0139acdd5bdc");
        assert_eq!(j.get("roomid"), Some(&json!("2f1a0139acdd5bdc")));
        assert!(j.get("streamID").is_none());
        let a = Outbound::answer(
            "u",
            Some(&Value::Null),
            Sealed::Plain(json!({"type":"answer","sdp":"x"})),
            None,
            Some("s"),
        );
        assert_eq!(a.get("session"), Some(&Value::Null));
        assert_eq!(a.get("streamID"), Some(&json!("s")));
        assert!(a.get("vector").is_none());
        assert_eq!(Outbound::bye("u").get("bye"), Some(&json!(true)));
    }

    #[test]
    fn publisher_outbound_shapes_round_trip() {
        assert_eq!(
            Outbound::seed("cam808d64").to_json(),
            r#"{"request":"seed","streamID":"cam808d64"}"#
        );
        let j = Outbound::join_room_publishing("2f1a0139acdd5bdc", "cam808d64").with_from("p1");
        let back = parse_inbound(&j.to_json()).unwrap();
        assert_eq!(
            (back.kind, back.stream_id.as_deref(), back.from.as_deref()),
            (Kind::JoinRoom, Some("cam808d64"), Some("p1"))
        );
        assert_eq!(j.get("roomid"), Some(&json!("2f1a0139acdd5bdc")));

        // An encrypted offer parses on the viewer side with streamID and session intact.
        let c = Cipher::new(DEFAULT_PASSWORD, DEFAULT_SALT);
        let desc = json!({"type":"offer","sdp":"v=0\r\n"});
        let (sealed, iv) = Sealed::seal(&desc, Some(&c));
        let o = Outbound::offer("viewer", &json!("abcdefghij"), sealed, iv, "cam808d64");
        let back = parse_inbound(&o.to_json()).unwrap();
        assert_eq!(back.uuid.as_deref(), Some("viewer"));
        assert_eq!(back.stream_id.as_deref(), Some("cam808d64"));
        assert_eq!(back.session, Some(json!("abcdefghij")));
        let Kind::Description(s) = &back.kind else {
            panic!("not a description")
        };
        assert_eq!(s.open(back.vector.as_deref(), Some(&c)).unwrap(), desc);

        // Plain offer: no vector.
        let o = Outbound::offer("v", &json!("s"), Sealed::Plain(desc.clone()), None, "cam");
        assert!(o.get("vector").is_none());
        assert_eq!(o.get("description"), Some(&desc));

        let cands =
            json!([{"candidate":"candidate:1 1 udp 1 127.0.0.1 5 typ host","sdpMLineIndex":0}]);
        let l = Outbound::local_candidates("v", Some(&json!("s")), Sealed::Plain(cands), None);
        assert_eq!(l.get("type"), Some(&json!("local")));
        let back = parse_inbound(&l.to_json()).unwrap();
        let Kind::Candidates(Sealed::Plain(v)) = &back.kind else {
            panic!("not candidates")
        };
        assert_eq!(candidates_from_value(v).len(), 1);
        assert_eq!(back.session, Some(json!("s")));
    }
}
