//! ninjarec patch: hands the DTLS-SRTP keying material of each completed handshake to an
//! observer the application installs, so that it can decrypt SRTP itself (issue 11).
//!
//! The connection is named by the peer's hello random (the 32 bytes of its ClientHello or
//! ServerHello, sent in the clear), which the application can read off the wire for the
//! address it came from.

use std::sync::OnceLock;

use crate::extension::extension_use_srtp::SrtpProtectionProfile;

/// The label RFC 5764 uses to export SRTP keys.
pub const LABEL_DTLS_SRTP: &str = "EXTRACTOR-dtls_srtp";

/// What one handshake exported for SRTP.
pub struct ExportedSrtpKeys {
    /// The peer's hello random, as on the wire.
    pub remote_random: [u8; 32],
    /// Whether our side was the DTLS client (decides which half of the material is whose).
    pub is_client: bool,
    /// The negotiated SRTP protection profile.
    pub profile: SrtpProtectionProfile,
    /// The exported keying material (RFC 5764 section 4.2).
    pub keying_material: Vec<u8>,
}

static OBSERVER: OnceLock<fn(ExportedSrtpKeys)> = OnceLock::new();

/// Installs the observer; false if one was already installed (the first one stays).
pub fn set_srtp_key_observer(observer: fn(ExportedSrtpKeys)) -> bool {
    OBSERVER.set(observer).is_ok()
}

pub(crate) fn observe(keys: impl FnOnce() -> ExportedSrtpKeys) {
    if let Some(observer) = OBSERVER.get() {
        observer(keys());
    }
}
