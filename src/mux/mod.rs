//! Containers: timed frames and Opus packets in, file bytes out.
//!
//! One folder per container, each behind [`Container`], so the recording core
//! ([`crate::media::stream::StreamMuxer`]) never knows which file format it writes:
//!
//! * [`ts`]: MPEG-TS, for H.264 + Opus (plays everywhere, survives any cut);
//! * [`mkv`]: Matroska / WebM, for VP8, VP9 and AV1 (+ Opus), and for everything when the
//!   user asks for `.mkv`.
//!
//! A container appends bytes to the caller's buffer and never reads them back, so the file
//! task can write them out at once and a file cut at any point (`kill -9`) plays up to its
//! last complete frame (TS) or cluster (Matroska). What can only be known at the end
//! (Matroska sizes, duration, cues) comes from [`Container::finish`] as [`Patch`]es the file
//! task applies to bytes already written, plus bytes to append.
//!
//! Adding a container: a folder here implementing [`Container`], a [`ContainerKind`] variant
//! and one arm in [`new_container`].

pub mod mkv;
pub mod ts;

use crate::media::{Frame, VideoCodec};

/// The tracks a file has, decided when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracks {
    /// The video track's codec, if the file has video.
    pub video: Option<VideoCodec>,
    /// True if the file has an Opus track.
    pub audio: bool,
}

/// A file format the recorder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    /// MPEG-TS (`.ts`): H.264 and/or Opus.
    Ts,
    /// WebM (`.webm`): Matroska restricted to VP8/VP9/AV1 + Opus, DocType `webm`.
    WebM,
    /// Matroska (`.mkv`): any codec the recorder knows.
    Matroska,
}

/// What the user asked for with `--container`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerChoice {
    /// The container that suits the codec: `.ts` for H.264 (and audio only), `.webm` for VP8
    /// and VP9, `.mkv` for AV1.
    #[default]
    Auto,
    /// Matroska for everything.
    Matroska,
}

impl ContainerKind {
    /// The container for a file with `tracks`, given what the user chose.
    pub fn for_tracks(tracks: Tracks, choice: ContainerChoice) -> ContainerKind {
        match (choice, tracks.video) {
            (ContainerChoice::Matroska, _) => ContainerKind::Matroska,
            (ContainerChoice::Auto, None | Some(VideoCodec::H264)) => ContainerKind::Ts,
            (ContainerChoice::Auto, Some(VideoCodec::Vp8 | VideoCodec::Vp9)) => ContainerKind::WebM,
            (ContainerChoice::Auto, Some(VideoCodec::Av1)) => ContainerKind::Matroska,
        }
    }

    /// The file name extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            ContainerKind::Ts => "ts",
            ContainerKind::WebM => "webm",
            ContainerKind::Matroska => "mkv",
        }
    }
}

/// Bytes to write over ones already written, at `offset` from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Where the bytes go, counted from the file's first byte.
    pub offset: u64,
    /// The bytes (never extending past what was written).
    pub bytes: Vec<u8>,
}

/// Why a container refused a unit or could not be made. Nothing is written for a refused
/// unit, so the file stays valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The MPEG-TS writer refused.
    #[error(transparent)]
    Ts(#[from] ts::TsError),
    /// The Matroska writer refused.
    #[error(transparent)]
    Matroska(#[from] mkv::MkvError),
    /// The container cannot hold this codec (MPEG-TS holds H.264 only).
    #[error("{0} cannot hold {1} video")]
    UnsupportedCodec(&'static str, VideoCodec),
}

/// A file format writer: see the module doc.
pub trait Container: Send + std::fmt::Debug {
    /// Which format this writes.
    fn kind(&self) -> ContainerKind;
    /// Writes one video frame presented at `pts_90k` (unwrapped 90 kHz). The first video
    /// frame must be a keyframe; PTS must increase.
    fn write_video(
        &mut self,
        pts_90k: u64,
        frame: &Frame,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError>;
    /// Writes one Opus packet presented at `pts_90k`; PTS must not decrease.
    fn write_audio(
        &mut self,
        pts_90k: u64,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError>;
    /// Lets media time pass while no unit comes (TS keeps its PCR going); `now_pts_90k` is
    /// where the media clock is.
    fn tick(&mut self, now_pts_90k: u64, out: &mut Vec<u8>);
    /// The earliest PTS a unit may still have (TS: not behind the PCR already written), so
    /// that audio placed late can be moved up to it instead of being refused. `None`: no
    /// such bound.
    fn earliest_pts(&self) -> Option<u64> {
        None
    }
    /// Ends the file: appends what belongs at its end to `out` and returns the patches for
    /// bytes written earlier. Calling it again returns nothing.
    fn finish(&mut self, out: &mut Vec<u8>) -> Vec<Patch>;
}

/// A writer of `kind` for `tracks`: the one place a container is registered.
pub fn new_container(kind: ContainerKind, tracks: Tracks) -> Result<Box<dyn Container>, MuxError> {
    match kind {
        ContainerKind::Ts => Ok(Box::new(ts::TsWriter::for_tracks(tracks)?)),
        ContainerKind::WebM | ContainerKind::Matroska => Ok(Box::new(mkv::MkvWriter::new(
            tracks,
            kind == ContainerKind::WebM,
        )?)),
    }
}
