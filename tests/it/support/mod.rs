//! Support code shared by the integration tests.
// Each test module uses a different subset of these helpers.
#![allow(dead_code)]

pub mod chromium;
pub mod ffmpeg;
pub mod fixtures;
pub mod gst;
pub mod impair;
pub mod ivf;
pub mod sim;
pub mod sync;
