//! The integration tests: one crate (one link, one binary) with shared support code.
//!
//! `support/` holds what several tests need: real publishers (Chromium, GStreamer, our webrtc-rs
//! test source), the flash/beep sync media and its checker, and fixtures that clean up on drop.

mod browser;
mod codec_clip;
mod core_clip;
mod gst;
mod hooks_retention;
mod hostile_peer;
mod impaired;
mod mkv_writer;
mod one_port;
mod peer_loopback;
mod record_e2e;
mod restart;
mod rtp_clip;
mod signaling;
mod soak;
mod status_page;
mod supervision;
mod support;
mod sync_media;
mod testsrc;
mod ts_writer;
mod unattended;
mod upload;
