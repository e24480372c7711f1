//! VDO.Ninja signalling: who publishes in the room, and the SDP/ICE handshake with each.
//!
//! * [`crypto`]: password normalisation, wire hashes, AES-CBC (shared with the peer layer).
//! * [`message`]: typed, size-limited parsing and building of WebSocket messages.
//! * [`room`]: the pure viewer state machine (events in, actions out, no I/O).
//! * [`client`]: the tokio task that owns the WebSocket and drives [`room`].
//! * [`server`]: the built-in handshake server (`ninjarec serve`), both dialects.

pub mod client;
pub mod crypto;
pub mod message;
pub mod room;
pub mod server;

pub use client::{SignalingConfig, SignalingEvent, SignalingHandle, spawn};
pub use crypto::{Cipher, CryptoError, Password, Security};
pub use message::IceCandidate;
pub use room::{Dialect, PeerId};
