//! MPEG-TS output: the bytes a player reads.
//!
//! The recorder writes one transport stream per publisher. This module hand-writes every byte
//! (TS packets, adaptation fields, PCR, PAT/PMT with CRC-32/MPEG-2, PES headers, the Opus
//! control header) because the layout is small, fixed and must follow the choices in
//! `ts-muxing.md` exactly; a general serializer would add allocations and two known nits (PCR
//! reserved bits, PSI padding). [`TsWriter`] is the muxer; [`check`] is a conformance checker
//! used by the tests (unit, integration and end-to-end) to prove the output is well formed.

pub mod check;
pub mod packet;
pub mod pes;
pub mod psi;
pub mod writer;

pub use writer::{TsConfig, TsError, TsStats, TsWriter};

/// Size of every transport stream packet.
pub const PACKET_SIZE: usize = 188;
/// PID of the program map table (FFmpeg's default, so files look familiar in analyzers).
pub const PMT_PID: u16 = 0x1000;
/// PID of the H.264 elementary stream.
pub const VIDEO_PID: u16 = 0x100;
/// PID of the Opus elementary stream.
pub const AUDIO_PID: u16 = 0x101;
/// PES stream id of H.264 video (first video stream).
pub const VIDEO_STREAM_ID: u8 = 0xE0;
/// PES stream id of Opus (private_stream_1, as FFmpeg and GStreamer write it).
pub const AUDIO_STREAM_ID: u8 = 0xBD;
/// PMT stream_type of H.264.
pub const STREAM_TYPE_H264: u8 = 0x1B;
/// PMT stream_type of Opus (PES private data, identified by its descriptors).
pub const STREAM_TYPE_OPUS: u8 = 0x06;
/// Timestamps and the PCR base are 33-bit counters of a 90 kHz clock.
pub const PTS_MASK: u64 = (1 << 33) - 1;
/// The access unit delimiter every H.264 PES begins with (`primary_pic_type` 7 + stop bit).
pub const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xF0];
