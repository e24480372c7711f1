//! VDO.Ninja data-channel messages (vdoninja-protocol.md §4): parsing of what a publisher or
//! viewer may send us, and building of what we send.
//!
//! Pure and synchronous so the untrusted-input handling can be unit-tested: every message is
//! size-capped, parsed as JSON, and classified; nothing here panics on bad input.

use serde_json::{Map, Value, json};

use super::{CipherError, IceCandidate, PayloadCipher};

/// Largest data-channel message we look at. Chrome's renegotiation offer is ~10 KB of SDP, twice
/// that as encrypted hex; anything far beyond is not signalling.
pub const MAX_DC_MESSAGE: usize = 256 * 1024;
/// Most candidates accepted from one message.
pub const MAX_CANDIDATES_PER_MESSAGE: usize = 64;

/// A session description carried on the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcDescription {
    /// `"offer"` or `"answer"`.
    pub sdp_type: String,
    /// The SDP text.
    pub sdp: String,
    /// True when it arrived encrypted (so the reply is encrypted too).
    pub encrypted: bool,
}

/// Longest publisher label kept (characters); it is shown and logged, never a file name.
pub const MAX_LABEL_CHARS: usize = 100;

/// One classified data-channel message.
#[derive(Debug, Clone, PartialEq)]
pub enum DcMessage {
    /// `{"bye":true}`: the other side is leaving (checked before anything else).
    Bye,
    /// `{"ping":x}`: must be answered `{"pong":x}` with the same raw value.
    Ping(Value),
    /// `{"pong":x}`: answer to our ping.
    Pong(Value),
    /// `{"description":...}`: renegotiation offer (or the answer to ours); `session` is echoed.
    Description {
        /// The description.
        description: DcDescription,
        /// The `session` value as received (may be null).
        session: Value,
    },
    /// `{"candidates":[...]}` or `{"candidate":{...}}`.
    Candidates(Vec<IceCandidate>),
    /// A viewer's settings/request object (`{"audio":..,"video":..}`): what the publisher sends.
    ViewerRequest {
        /// Viewer wants audio.
        audio: bool,
        /// Viewer wants video.
        video: bool,
        /// `preferVideoCodec`, if given.
        prefer_video_codec: Option<String>,
    },
    /// `{"info":{"label":...}}`: the publisher's display name (`&label=` in the web app),
    /// cleaned: control characters dropped, at most [`MAX_LABEL_CHARS`] characters.
    Info {
        /// The label, if it sent a non-empty one.
        label: Option<String>,
    },
    /// Valid JSON we have no use for (`miniInfo`, `videoMuted`, ...).
    Other,
}

/// Why a data-channel message was dropped. Counted by the caller; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcError {
    /// Larger than [`MAX_DC_MESSAGE`].
    #[error("data-channel message too large ({0} bytes)")]
    TooLarge(usize),
    /// Not UTF-8 JSON, or not an object (binary previews land here).
    #[error("data-channel message is not a JSON object")]
    NotJson,
    /// A field had the wrong shape.
    #[error("malformed field `{0}`")]
    Malformed(&'static str),
    /// Encrypted payload but no cipher configured.
    #[error("encrypted payload but no cipher configured")]
    NoCipher,
    /// The cipher refused the payload.
    #[error(transparent)]
    Cipher(#[from] CipherError),
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Decrypts `field` if it is a hex string with a top-level `vector`; returns the JSON value.
fn maybe_decrypt(
    obj: &Map<String, Value>,
    field: &'static str,
    cipher: Option<&dyn PayloadCipher>,
) -> Result<(Value, bool), DcError> {
    let v = obj.get(field).ok_or(DcError::Malformed(field))?;
    match v {
        Value::String(hex) => {
            let vector = obj
                .get("vector")
                .and_then(Value::as_str)
                .ok_or(DcError::Malformed("vector"))?;
            let cipher = cipher.ok_or(DcError::NoCipher)?;
            let plain = cipher.decrypt(hex, vector)?;
            let value = serde_json::from_str(&plain).map_err(|_| DcError::Malformed(field))?;
            Ok((value, true))
        }
        other => Ok((other.clone(), false)),
    }
}

fn parse_candidate(v: &Value) -> Option<IceCandidate> {
    serde_json::from_value::<IceCandidate>(v.clone())
        .ok()
        .filter(|c| !c.candidate.is_empty())
}

/// Classifies one incoming data-channel message. `cipher` decrypts `description`/`candidates`
/// that arrive as hex + `vector`.
pub fn parse(data: &[u8], cipher: Option<&dyn PayloadCipher>) -> Result<DcMessage, DcError> {
    if data.len() > MAX_DC_MESSAGE {
        return Err(DcError::TooLarge(data.len()));
    }
    let value: Value = serde_json::from_slice(data).map_err(|_| DcError::NotJson)?;
    let Value::Object(obj) = value else {
        return Err(DcError::NotJson);
    };
    if truthy(obj.get("bye")) {
        return Ok(DcMessage::Bye);
    }
    if let Some(p) = obj.get("ping") {
        return Ok(DcMessage::Ping(p.clone()));
    }
    if let Some(p) = obj.get("pong") {
        return Ok(DcMessage::Pong(p.clone()));
    }
    if obj.contains_key("description") {
        let (desc, encrypted) = maybe_decrypt(&obj, "description", cipher)?;
        let sdp_type = desc
            .get("type")
            .and_then(Value::as_str)
            .ok_or(DcError::Malformed("description.type"))?;
        let sdp = desc
            .get("sdp")
            .and_then(Value::as_str)
            .ok_or(DcError::Malformed("description.sdp"))?;
        return Ok(DcMessage::Description {
            description: DcDescription {
                sdp_type: sdp_type.to_owned(),
                sdp: sdp.to_owned(),
                encrypted,
            },
            session: obj.get("session").cloned().unwrap_or(Value::Null),
        });
    }
    for field in ["candidates", "candidate"] {
        if obj.contains_key(field) {
            let (v, _) = maybe_decrypt(&obj, field, cipher)?;
            let list: Vec<IceCandidate> = match &v {
                Value::Array(items) => items
                    .iter()
                    .take(MAX_CANDIDATES_PER_MESSAGE)
                    .filter_map(parse_candidate)
                    .collect(),
                single => parse_candidate(single).into_iter().collect(),
            };
            return Ok(DcMessage::Candidates(list));
        }
    }
    if obj.contains_key("audio") || obj.contains_key("video") {
        return Ok(DcMessage::ViewerRequest {
            audio: truthy(obj.get("audio")),
            video: truthy(obj.get("video")),
            prefer_video_codec: obj
                .get("preferVideoCodec")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    // A viewer's request carries its own `info` too: only a bare `info` is a publisher's.
    if let Some(info) = obj.get("info").and_then(Value::as_object) {
        let label = info
            .get("label")
            .and_then(Value::as_str)
            .map(|l| {
                l.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_LABEL_CHARS)
                    .collect::<String>()
            })
            .filter(|l| !l.trim().is_empty());
        return Ok(DcMessage::Info { label });
    }
    Ok(DcMessage::Other)
}

/// The viewer request a recorder sends when a data channel opens (§4): ask for the wanted
/// tracks, in the video codec the user chose (`preferVideoCodec`, left out for `--codec
/// any`), and decline every extra (drawing, MIDI, previews, ...).
pub fn viewer_request(
    audio: bool,
    video: bool,
    codec: Option<crate::media::VideoCodec>,
    label: &str,
) -> String {
    let mut req = json!({
        "audio": audio,
        "video": video,
        "downloads": false,
        "allowmidi": false,
        "allowdrawing": false,
        "iframe": false,
        "widget": false,
        "broadcast": false,
        "allowwebp": false,
        "allowscreenaudio": false,
        "allowscreenvideo": false,
        "allowchunked": false,
        "guest": false,
        "scene": false,
        "director": false,
        "info": { "label": label },
    });
    if let Some(codec) = codec {
        req["preferVideoCodec"] = json!(codec.name());
    }
    req.to_string()
}

/// `{"pong":x}` for a received `{"ping":x}`.
pub fn pong(value: &Value) -> String {
    json!({ "pong": value }).to_string()
}

/// `{"ping":x}`.
pub fn ping(value: &Value) -> String {
    json!({ "ping": value }).to_string()
}

/// `{"bye":true}`.
pub fn bye() -> String {
    json!({ "bye": true }).to_string()
}

/// `{"description":{type,sdp},"session":s}`, encrypted (`description` hex + `vector`) when
/// `encrypt_with` is given.
pub fn description(
    sdp_type: &str,
    sdp: &str,
    session: &Value,
    encrypt_with: Option<&dyn PayloadCipher>,
) -> String {
    let desc = json!({ "type": sdp_type, "sdp": sdp });
    match encrypt_with {
        Some(c) => {
            let (hex, vector) = c.encrypt(&desc.to_string());
            json!({ "description": hex, "vector": vector, "session": session }).to_string()
        }
        None => json!({ "description": desc, "session": session }).to_string(),
    }
}

/// `{"candidates":[c]}` for trickling a candidate over the data channel.
pub fn candidates(list: &[IceCandidate]) -> String {
    json!({ "candidates": list }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reversible toy cipher: "ciphertext" is the hex of the plaintext, the IV must be "iv".
    struct HexCipher;
    impl PayloadCipher for HexCipher {
        fn encrypt(&self, plaintext: &str) -> (String, String) {
            (hex::encode(plaintext), "iv".into())
        }
        fn decrypt(&self, h: &str, vector: &str) -> Result<String, CipherError> {
            if vector != "iv" {
                return Err(CipherError("bad iv".into()));
            }
            let bytes = hex::decode(h).map_err(|e| CipherError(e.to_string()))?;
            String::from_utf8(bytes).map_err(|e| CipherError(e.to_string()))
        }
    }

    #[test]
    fn bye_wins_over_other_fields() {
        let m = parse(br#"{"bye":true,"videoMuted":true,"ping":3}"#, None).unwrap();
        assert_eq!(m, DcMessage::Bye);
    }

    #[test]
    fn ping_keeps_raw_value() {
        let m = parse(br#"{"ping":"1700000000"}"#, None).unwrap();
        assert_eq!(m, DcMessage::Ping(Value::String("1700000000".into())));
        if let DcMessage::Ping(v) = m {
            assert_eq!(pong(&v), r#"{"pong":"1700000000"}"#);
        }
    }

    #[test]
    fn plain_and_encrypted_descriptions() {
        let m = parse(
            br#"{"description":{"type":"offer","sdp":"v=0\r\n"},"session":null}"#,
            None,
        )
        .unwrap();
        let DcMessage::Description {
            description,
            session,
        } = m
        else {
            panic!("not a description: {m:?}")
        };
        assert_eq!(description.sdp_type, "offer");
        assert!(!description.encrypted);
        assert_eq!(session, Value::Null);

        let wire = super::description("offer", "v=0\r\n", &json!("abc"), Some(&HexCipher));
        let m = parse(wire.as_bytes(), Some(&HexCipher)).unwrap();
        let DcMessage::Description {
            description,
            session,
        } = m
        else {
            panic!("not a description: {m:?}")
        };
        assert!(description.encrypted);
        assert_eq!(description.sdp, "v=0\r\n");
        assert_eq!(session, json!("abc"));

        assert_eq!(parse(wire.as_bytes(), None).unwrap_err(), DcError::NoCipher);
        let bad = wire.replace("\"vector\":\"iv\"", "\"vector\":\"xx\"");
        assert!(matches!(
            parse(bad.as_bytes(), Some(&HexCipher)),
            Err(DcError::Cipher(_))
        ));
    }

    #[test]
    fn candidates_single_list_and_garbage() {
        let m = parse(
            br#"{"candidates":[{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0},{"x":1},7]}"#,
            None,
        )
        .unwrap();
        assert!(matches!(m, DcMessage::Candidates(ref l) if l.len() == 1));
        let m = parse(
            br#"{"candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}}"#,
            None,
        )
        .unwrap();
        assert!(matches!(m, DcMessage::Candidates(ref l) if l[0].sdp_mid.as_deref() == Some("0")));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(parse(b"\xff\x00", None).unwrap_err(), DcError::NotJson);
        assert_eq!(parse(b"[1,2]", None).unwrap_err(), DcError::NotJson);
        assert_eq!(
            parse(br#"{"description":{"type":1}}"#, None).unwrap_err(),
            DcError::Malformed("description.type")
        );
        assert_eq!(
            parse(br#"{"description":"abcd"}"#, None).unwrap_err(),
            DcError::Malformed("vector")
        );
        let big = vec![b' '; MAX_DC_MESSAGE + 1];
        assert_eq!(
            parse(&big, None).unwrap_err(),
            DcError::TooLarge(MAX_DC_MESSAGE + 1)
        );
        assert_eq!(
            parse(br#"{"miniInfo":{"x":1}}"#, None).unwrap(),
            DcMessage::Other
        );
    }

    #[test]
    fn a_label_is_kept_cleaned_and_bounded() {
        let label = |raw: &str| match parse(raw.as_bytes(), None).unwrap() {
            DcMessage::Info { label } => label,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            label(r#"{"info":{"label":"Alice"}}"#).as_deref(),
            Some("Alice")
        );
        assert_eq!(
            label(r#"{"info":{"label":"A\u001b[2Jb\nc"}}"#).as_deref(),
            Some("A[2Jbc")
        );
        assert_eq!(label(r#"{"info":{"label":"  "}}"#), None);
        assert_eq!(label(r#"{"info":{"muted":true}}"#), None);
        let long = format!(r#"{{"info":{{"label":"{}"}}}}"#, "é".repeat(500));
        assert_eq!(label(&long).unwrap().chars().count(), MAX_LABEL_CHARS);
    }

    #[test]
    fn viewer_request_round_trips() {
        let wire = viewer_request(true, false, Some(crate::media::VideoCodec::H264), "rec");
        let m = parse(wire.as_bytes(), None).unwrap();
        assert_eq!(
            m,
            DcMessage::ViewerRequest {
                audio: true,
                video: false,
                prefer_video_codec: Some("h264".into())
            }
        );
    }
}
