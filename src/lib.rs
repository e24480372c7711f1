//! ninjarec: record every publisher of a VDO.Ninja room to its own in-sync H.264 + Opus
//! MPEG-TS file.
//!
//! Data flows one way: [`signaling`] (room state, who publishes) → one [`peer`] session per
//! publisher → one task per track → [`mux`] (reorder, depacketize, one A/V clock, TS) →
//! [`record`] (the file). [`testsrc`] is the other end: a VDO.Ninja publisher of the built-in
//! clip for self-tests, end-to-end tests and the load benchmark.
pub mod app;
pub mod cli;
pub mod clip;
pub mod mux;
pub mod peer;
pub mod record;
pub mod selftest;
pub mod signaling;
pub mod testsrc;
