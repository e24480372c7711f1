//! Status surfaces for a recorder that runs unattended (issue 12).
//!
//! Why: whoever runs ninjarec on a box in a corner (a Raspberry Pi beside the mixing desk, a
//! server recording a weekly show) is not watching its log. They need to see at a glance, and
//! their monitoring needs to alert on, whether every publisher is being recorded, whether frames
//! are being lost, and whether the disk is about to fill up.
//!
//! Everything here reads one plain value, [`snapshot::Snapshot`], which the orchestrator makes
//! about once a second and hands out through a `watch` channel, so no surface ever touches a
//! recorder's state or slows it down:
//! - [`metrics`]: the Prometheus text format (`GET /metrics`), for alerting and graphs;
//! - [`page`]: one self-contained HTML page (`GET /`) that polls `GET /status.json`;
//! - [`http`]: the small HTTP server behind `--http` that serves the three;
//! - [`table`]: the compact live table for a terminal, drawn by [`terminal`];
//! - [`process`]: CPU, memory and file descriptors, read from the kernel (free disk space is
//!   [`crate::record::disk::free_bytes`]).
pub mod http;
pub mod metrics;
pub mod page;
pub mod process;
pub mod snapshot;
pub mod table;
pub mod terminal;
