//! Password handling, hashing and AES exactly as the VDO.Ninja web app does it.
//!
//! Everything a peer derives from the shared password lives here so the wire identifiers
//! (stream-id suffix, room hash) and the encrypted SDP/ICE payloads always agree with what
//! browsers and Raspberry Ninja produce (see `vdoninja-protocol.md` §3).

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha2::{Digest, Sha256};

/// Password every VDO.Ninja client uses when the user sets none; needed to interoperate by default.
pub const DEFAULT_PASSWORD: &str = "someEncryptionKey123";
/// Salt the web app uses on `vdo.ninja` and on any IP/localhost origin.
pub const DEFAULT_SALT: &str = "vdo.ninja";
/// Stream ids are cut to this many characters before the hash suffix is appended (web `sendMsg`).
pub const MAX_STREAM_ID_CHARS: usize = 44;
/// Length of the hash suffix appended to stream ids on the wire.
pub const STREAM_SUFFIX_LEN: usize = 6;
/// Length of the hashed room id on the wire.
pub const ROOM_HASH_LEN: usize = 16;
/// Upper bound on ciphertext accepted for decryption (hex characters), so hostile peers cannot
/// make us allocate arbitrarily.
pub const MAX_CIPHERTEXT_HEX: usize = 512 * 1024;

/// Why an encrypted payload could not be opened. Every variant is a normal outcome of
/// untrusted input (or a wrong password), never a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext was not valid hex or not a whole number of AES blocks.
    #[error("ciphertext is not valid hex of whole AES blocks")]
    InvalidCiphertext,
    /// The `vector` field was not 32 hex characters.
    #[error("IV (`vector`) is not 16 bytes of hex")]
    InvalidVector,
    /// PKCS#7 padding did not verify: almost always a wrong password or salt.
    #[error("bad padding (wrong password or salt?)")]
    BadPadding,
    /// Decrypted bytes were not UTF-8: also a wrong key in practice.
    #[error("decrypted payload is not UTF-8 (wrong password or salt?)")]
    NotUtf8,
    /// The ciphertext exceeded [`MAX_CIPHERTEXT_HEX`].
    #[error("ciphertext too large")]
    TooLarge,
}

/// The user's password choice, before normalisation. Kept as an enum so "disabled" cannot be
/// confused with a password that happens to be spelled `false`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Password {
    /// No password given: use [`DEFAULT_PASSWORD`] (encryption on).
    #[default]
    Default,
    /// A user-supplied password (raw, not yet trimmed/encoded).
    Custom(String),
    /// `false`/`0`/`off`: no hash suffix, raw room name, no encryption.
    Disabled,
}

impl Password {
    /// Interprets a `--password` value like Raspberry Ninja and the web app do: absent or empty →
    /// default, `false`/`0`/`off` (any case) → disabled, otherwise a custom password.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Password::Default,
            Some(v)
                if v.eq_ignore_ascii_case("false") || v == "0" || v.eq_ignore_ascii_case("off") =>
            {
                Password::Disabled
            }
            Some(v) => Password::Custom(v.to_string()),
        }
    }

    /// The normalised password (trimmed, then `encodeURIComponent`), or `None` when disabled.
    /// This exact string is what the web app hashes.
    pub fn normalized(&self) -> Option<String> {
        match self {
            Password::Default => Some(DEFAULT_PASSWORD.to_string()),
            Password::Custom(p) => Some(encode_uri_component(p.trim())),
            Password::Disabled => None,
        }
    }
}

/// JavaScript `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`, percent-encodes
/// every other UTF-8 byte in upper-case hex. Needed because the web app hashes the encoded form.
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The web app's `generateHash(s, n)`: lower-case hex of the first `n/2` bytes of SHA-256(s).
/// `n` is clamped to the 64 hex characters a SHA-256 digest has.
pub fn generate_hash(s: &str, hex_len: usize) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut h = hex::encode(digest);
    h.truncate(hex_len.min(64));
    h
}

/// Salt the web app derives from the page's host name (`webrtc.js`): `vdo.ninja` for vdo.ninja,
/// GitHub pages, IP literals and `localhost`; the last two labels for the known public domains;
/// otherwise the full host name. Lets users match a self-hosted web app without guessing.
pub fn salt_for_hostname(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host == "localhost"
        || host == "steveseguin.github.io"
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return DEFAULT_SALT.to_string();
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 2 {
        let last_two = format!("{}.{}", labels[labels.len() - 2], labels[labels.len() - 1]);
        if matches!(
            last_two.as_str(),
            "vdo.ninja" | "rtc.ninja" | "versus.cam" | "socialstream.ninja"
        ) {
            return last_two;
        }
    }
    host.to_string()
}

/// AES-256-CBC with PKCS#7 and hex encoding, keyed like VDO.Ninja (key = SHA-256(password+salt)).
/// Shared by the WebSocket signalling and the peer layer's data-channel payloads.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// Derives the key from an already-normalised password and the salt.
    pub fn new(normalized_password: &str, salt: &str) -> Self {
        let digest = Sha256::digest(format!("{normalized_password}{salt}").as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest);
        Cipher { key }
    }

    /// Encrypts with a fresh random IV; returns `(ciphertext_hex, vector_hex)` ready for the
    /// message field and the top-level `vector`.
    pub fn encrypt(&self, plaintext: &str) -> (String, String) {
        let iv: [u8; 16] = rand::random();
        (self.encrypt_with_iv(plaintext, &iv), hex::encode(iv))
    }

    /// Deterministic encryption with a caller-chosen IV; exists for test vectors and replay tests.
    pub fn encrypt_with_iv(&self, plaintext: &str, iv: &[u8; 16]) -> String {
        let enc = cbc::Encryptor::<Aes256>::new(&self.key.into(), iv.into());
        hex::encode(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes()))
    }

    /// Decrypts a hex ciphertext with its hex `vector`. Wrong keys surface as
    /// [`CryptoError::BadPadding`] or [`CryptoError::NotUtf8`], never as a panic.
    pub fn decrypt(&self, ciphertext_hex: &str, vector_hex: &str) -> Result<String, CryptoError> {
        if ciphertext_hex.len() > MAX_CIPHERTEXT_HEX {
            return Err(CryptoError::TooLarge);
        }
        let iv_bytes = hex::decode(vector_hex.trim()).map_err(|_| CryptoError::InvalidVector)?;
        let iv: [u8; 16] = iv_bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidVector)?;
        let ct = hex::decode(ciphertext_hex.trim()).map_err(|_| CryptoError::InvalidCiphertext)?;
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(CryptoError::InvalidCiphertext);
        }
        let dec = cbc::Decryptor::<Aes256>::new(&self.key.into(), &iv.into());
        let pt = dec
            .decrypt_padded_vec_mut::<Pkcs7>(&ct)
            .map_err(|_| CryptoError::BadPadding)?;
        String::from_utf8(pt).map_err(|_| CryptoError::NotUtf8)
    }
}

/// Everything derived from password + salt: the wire ids and the optional cipher. Built once
/// from the user's flags and shared by the room state machine and the peer layer.
#[derive(Debug, Clone)]
pub struct Security {
    password: Option<String>,
    salt: String,
    suffix: Option<String>,
    cipher: Option<Cipher>,
}

impl Security {
    /// Builds the derived values; an empty salt falls back to [`DEFAULT_SALT`].
    pub fn new(password: &Password, salt: &str) -> Self {
        let salt = if salt.is_empty() { DEFAULT_SALT } else { salt }.to_string();
        let password = password.normalized();
        let suffix = password
            .as_ref()
            .map(|p| generate_hash(&format!("{p}{salt}"), STREAM_SUFFIX_LEN));
        let cipher = password.as_ref().map(|p| Cipher::new(p, &salt));
        Security {
            password,
            salt,
            suffix,
            cipher,
        }
    }

    /// Whether hashing and encryption are on (password not disabled).
    pub fn enabled(&self) -> bool {
        self.password.is_some()
    }

    /// The salt in use.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// The 6-hex-char stream suffix, or `None` when the password is disabled.
    pub fn stream_suffix(&self) -> Option<&str> {
        self.suffix.as_deref()
    }

    /// The cipher for SDP/ICE and data-channel payloads, `None` when the password is disabled.
    pub fn cipher(&self) -> Option<&Cipher> {
        self.cipher.as_ref()
    }

    /// The stream id as sent on the wire: the first 44 characters plus the hash suffix.
    pub fn hash_stream_id(&self, stream_id: &str) -> String {
        let mut out: String = stream_id.chars().take(MAX_STREAM_ID_CHARS).collect();
        if let Some(s) = &self.suffix {
            out.push_str(s);
        }
        out
    }

    /// Removes the hash suffix from a wire stream id (web `desaltStreamID`): the last 6
    /// characters when a password is in use and the id is longer than that.
    pub fn desalt_stream_id(&self, wire_id: &str) -> String {
        if self.suffix.is_none() {
            return wire_id.to_string();
        }
        let n = wire_id.chars().count();
        if n <= STREAM_SUFFIX_LEN {
            return wire_id.to_string();
        }
        wire_id.chars().take(n - STREAM_SUFFIX_LEN).collect()
    }

    /// Whether a wire stream id carries *our* suffix; a mismatch means the publisher uses a
    /// different password or salt.
    pub fn has_our_suffix(&self, wire_id: &str) -> bool {
        match &self.suffix {
            Some(s) => wire_id.len() > s.len() && wire_id.ends_with(s.as_str()),
            None => true,
        }
    }

    /// The room id on the wire: hash16(room + password + salt), or the raw room when disabled.
    pub fn room_hash(&self, room: &str) -> String {
        match &self.password {
            Some(p) => generate_hash(&format!("{room}{p}{}", self.salt), ROOM_HASH_LEN),
            None => room.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_default_password() {
        assert_eq!(
            generate_hash("someEncryptionKey123vdo.ninja", 64),
            "808d646f7eb92052344e1e668e340c852f8d675754acfae11d8cc49233c36eba"
        );
        let sec = Security::new(&Password::Default, DEFAULT_SALT);
        assert_eq!(sec.stream_suffix(), Some("808d64"));
        assert_eq!(sec.hash_stream_id("mystream"), "mystream808d64");
        assert_eq!(sec.hash_stream_id("e2etest2"), "e2etest2808d64");
        assert_eq!(sec.room_hash("myroom"), "2f1a0139acdd5bdc");
        assert_eq!(sec.desalt_stream_id("mystream808d64"), "mystream");
        assert!(sec.has_our_suffix("mystream808d64"));
        assert!(!sec.has_our_suffix("mystreamb37e9f"));
    }

    #[test]
    fn special_character_password_is_uri_encoded() {
        assert_eq!(encode_uri_component("p@ss word"), "p%40ss%20word");
        let p = Password::parse(Some("  p@ss word "));
        assert_eq!(p.normalized().as_deref(), Some("p%40ss%20word"));
        let sec = Security::new(&p, DEFAULT_SALT);
        assert_eq!(sec.stream_suffix(), Some("b37e9f"));
        assert_eq!(sec.room_hash("myroom"), "9279bbae949c54ba");
    }

    #[test]
    fn encode_uri_component_matches_javascript() {
        assert_eq!(encode_uri_component("AZaz09-_.!~*'()"), "AZaz09-_.!~*'()");
        assert_eq!(encode_uri_component("a/b?c=d&e#"), "a%2Fb%3Fc%3Dd%26e%23");
        assert_eq!(encode_uri_component("é"), "%C3%A9");
    }

    #[test]
    fn aes_test_vector() {
        let c = Cipher::new(DEFAULT_PASSWORD, DEFAULT_SALT);
        let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt = "{\"type\":\"answer\",\"sdp\":\"v=0\\r\\n\"}";
        let ct = c.encrypt_with_iv(pt, &iv);
        assert_eq!(
            ct,
            "e3cbc3ad10ee89125690f59776c972d770723acec02df276fe7c02a800d34f83bfa792e1450b421fd51f9f101d21c8d0"
        );
        assert_eq!(
            c.decrypt(&ct, "000102030405060708090a0b0c0d0e0f").unwrap(),
            pt
        );
    }

    #[test]
    fn random_iv_roundtrip() {
        let c = Cipher::new("x", "y");
        let (ct, iv) = c.encrypt("hello world, longer than one block");
        assert_eq!(iv.len(), 32);
        assert_eq!(
            c.decrypt(&ct, &iv).unwrap(),
            "hello world, longer than one block"
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let c = Cipher::new(DEFAULT_PASSWORD, DEFAULT_SALT);
        let (ct, iv) = c.encrypt("{\"a\":1}");
        assert_eq!(c.decrypt("zz", &iv), Err(CryptoError::InvalidCiphertext));
        assert_eq!(c.decrypt("abcd", &iv), Err(CryptoError::InvalidCiphertext));
        assert_eq!(c.decrypt("", &iv), Err(CryptoError::InvalidCiphertext));
        assert_eq!(c.decrypt(&ct, "0011"), Err(CryptoError::InvalidVector));
        assert_eq!(c.decrypt(&ct, "not hex"), Err(CryptoError::InvalidVector));
        let wrong = Cipher::new("other", DEFAULT_SALT);
        assert!(matches!(
            wrong.decrypt(&ct, &iv),
            Err(CryptoError::BadPadding) | Err(CryptoError::NotUtf8)
        ));
        let huge = "a".repeat(MAX_CIPHERTEXT_HEX + 2);
        assert_eq!(c.decrypt(&huge, &iv), Err(CryptoError::TooLarge));
    }

    #[test]
    fn password_parsing_and_disabled_mode() {
        assert_eq!(Password::parse(None), Password::Default);
        assert_eq!(Password::parse(Some("")), Password::Default);
        for v in ["false", "FALSE", "0", "off", " Off "] {
            assert_eq!(Password::parse(Some(v)), Password::Disabled, "{v}");
        }
        let sec = Security::new(&Password::Disabled, DEFAULT_SALT);
        assert!(!sec.enabled());
        assert!(sec.cipher().is_none());
        assert_eq!(sec.hash_stream_id("abc"), "abc");
        assert_eq!(sec.desalt_stream_id("abc808d64"), "abc808d64");
        assert_eq!(sec.room_hash("myroom"), "myroom");
    }

    #[test]
    fn salt_override_changes_everything() {
        let a = Security::new(&Password::Default, "vdo.ninja");
        let b = Security::new(&Password::Default, "example.com");
        assert_ne!(a.stream_suffix(), b.stream_suffix());
        assert_ne!(a.room_hash("r"), b.room_hash("r"));
        assert_eq!(
            b.stream_suffix().unwrap(),
            &generate_hash("someEncryptionKey123example.com", 6)
        );
    }

    #[test]
    fn stream_id_truncation_and_short_ids() {
        let sec = Security::new(&Password::Default, DEFAULT_SALT);
        let long = "x".repeat(60);
        let wire = sec.hash_stream_id(&long);
        assert_eq!(wire.len(), 44 + 6);
        assert_eq!(sec.desalt_stream_id(&wire), "x".repeat(44));
        assert_eq!(sec.desalt_stream_id("abc"), "abc");
        assert_eq!(sec.desalt_stream_id("ééééééé"), "é");
    }

    #[test]
    fn hostname_salt_rules() {
        assert_eq!(salt_for_hostname("vdo.ninja"), "vdo.ninja");
        assert_eq!(salt_for_hostname("backup.vdo.ninja"), "vdo.ninja");
        assert_eq!(salt_for_hostname("x.rtc.ninja"), "rtc.ninja");
        assert_eq!(salt_for_hostname("localhost"), "vdo.ninja");
        assert_eq!(salt_for_hostname("127.0.0.1"), "vdo.ninja");
        assert_eq!(salt_for_hostname("[::1]"), "vdo.ninja");
        assert_eq!(salt_for_hostname("a.b.example"), "a.b.example");
    }
}
