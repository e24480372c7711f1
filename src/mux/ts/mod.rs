//! MPEG-TS output: the bytes a player reads.
//!
//! The recorder writes one transport stream per publisher. This module hand-writes every byte
//! (TS packets, adaptation fields, PCR, PAT/PMT with CRC-32/MPEG-2, PES headers, the Opus
//! control header) because the layout is small, fixed and must follow the choices in
//! `ts-muxing.md` exactly; a general serializer would add allocations and two known nits (PCR
//! reserved bits, PSI padding). [`TsWriter`] is the muxer; `crate::testkit::ts_check` is the conformance
//! checker the tests use to prove the output is well formed.

pub mod packet;
pub mod pes;
pub mod psi;
pub mod writer;

pub use writer::{TsConfig, TsError, TsStats, TsWriter};

use super::{Container, ContainerKind, MuxError, Patch, Tracks};
use crate::media::{Frame, VideoCodec};

impl TsWriter {
    /// A writer for `tracks`; refuses video that is not H.264 (the only video codec the
    /// recorder puts in MPEG-TS).
    pub fn for_tracks(tracks: Tracks) -> Result<TsWriter, MuxError> {
        if let Some(codec) = tracks.video.filter(|&c| c != VideoCodec::H264) {
            return Err(MuxError::UnsupportedCodec("MPEG-TS", codec));
        }
        Ok(TsWriter::new(TsConfig {
            video: tracks.video.is_some(),
            audio: tracks.audio,
        })?)
    }
}

impl Container for TsWriter {
    fn kind(&self) -> ContainerKind {
        ContainerKind::Ts
    }

    fn write_video(
        &mut self,
        pts_90k: u64,
        frame: &Frame,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        if frame.codec != VideoCodec::H264 {
            return Err(MuxError::UnsupportedCodec("MPEG-TS", frame.codec));
        }
        Ok(TsWriter::write_video(
            self,
            pts_90k,
            &frame.data,
            frame.keyframe,
            out,
        )?)
    }

    fn write_audio(
        &mut self,
        pts_90k: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        Ok(TsWriter::write_audio(self, pts_90k, packet, out)?)
    }

    fn tick(&mut self, now_pts_90k: u64, out: &mut Vec<u8>) {
        TsWriter::tick(self, now_pts_90k, out);
    }

    fn earliest_pts(&self) -> Option<u64> {
        self.last_pcr()
    }

    /// MPEG-TS needs nothing at its end: every packet is final when written.
    fn finish(&mut self, _out: &mut Vec<u8>) -> Vec<Patch> {
        Vec::new()
    }
}

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
