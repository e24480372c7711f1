//! ninjarec: record every publisher of a VDO.Ninja room to its own in-sync file (H.264 + Opus
//! in MPEG-TS; VP8, VP9 or AV1 + Opus in WebM/Matroska).
//!
//! Data flows one way: [`signaling`] (room state, who publishes) → one [`peer`] session per
//! publisher → one recorder task per publisher → [`media`] (reorder, one depacketizer per
//! codec, one A/V clock) → [`mux`] (one container writer per file format) → [`record`] (the
//! file). [`testsrc`] is the other end: a VDO.Ninja publisher of the built-in clip for
//! self-tests, end-to-end tests and the load benchmark; [`testkit`] holds what tests share.
pub mod app;
pub mod cli;
pub mod media;
pub mod mux;
pub mod peer;
pub mod record;
pub mod selftest;
pub mod signaling;
pub mod status;
pub mod testkit;
pub mod testsrc;
pub mod upload;
