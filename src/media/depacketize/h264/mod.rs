//! H.264 over RTP: the depacketizer that turns ordered packets into access units, and the SPS
//! facts the recorder logs.

mod depacketizer;
pub mod sps;

pub use depacketizer::H264Depacketizer;
pub use sps::{SpsError, SpsInfo, parse_sps};

#[cfg(test)]
mod tests;
