//! The bytes of each part of the file, as pure functions: the header (EBML header to Tracks),
//! cluster and block headers, the Cues, and what the end-of-file patches write.
//!
//! Everything that is patched later is reserved with the exact length of its final form, so a
//! patch never moves a byte: the Segment and Cluster sizes are 8-byte vints, Duration is an
//! 11-byte Void (RFC 9559 gives Duration the range "> 0", so a placeholder 0.0 would be an
//! invalid value in every file cut before the end; a Void is valid and FFmpeg reserves Duration
//! the same way), and the Cues entry of the SeekHead is a 21-byte Void inside the SeekHead.

use super::codec::{OPUS_SEEK_PRE_ROLL_NS, opus_head, video_codec_id};
use super::ebml::{
    UNKNOWN_SIZE_8, id, put_bytes, put_float, put_header, put_id, put_master, put_size, put_str,
    put_uint, put_uint_8, put_void,
};
use super::{AUDIO_TRACK, TIMESTAMP_SCALE_NS, VIDEO_TRACK};
use crate::media::VideoCodec;

/// Length of the Duration element (ID 2 + size 1 + 8-byte float) and of its Void placeholder.
pub const DURATION_LEN: usize = 11;
/// Length of one Seek entry with a 4-byte ID and an 8-byte position, and of the Void that
/// holds the place of the Cues entry.
pub const SEEK_ENTRY_LEN: usize = 21;
/// Length of a Cluster's header up to its data: ID (4) + 8-byte size.
pub const CLUSTER_HEADER_LEN: usize = 12;

/// The video track as declared in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoTrack {
    /// The codec.
    pub codec: VideoCodec,
    /// PixelWidth (omitted when 0: unknown).
    pub width: u32,
    /// PixelHeight (omitted when 0).
    pub height: u32,
    /// CodecPrivate, if the codec has one.
    pub codec_private: Option<Vec<u8>>,
}

/// Where the patchable parts of the header are, counted from the header's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLayout {
    /// The Segment's 8-byte size (unknown until patched).
    pub segment_size_at: usize,
    /// The Segment's first data byte: SeekPosition and CueClusterPosition count from here.
    pub segment_data_at: usize,
    /// The Void that becomes Duration.
    pub duration_at: usize,
    /// The Void in the SeekHead that becomes the Cues entry.
    pub cues_seek_at: usize,
}

/// The EBML header, the Segment start (unknown size), the SeekHead, Info and Tracks.
///
/// ```text
/// EBML { version 1, read 1, max ID 4, max size 8, DocType, DocTypeVersion 4, read 2 }
/// Segment (01 FF FF FF FF FF FF FF) {
///   SeekHead { Seek(Info), Seek(Tracks), Void(21) ← Seek(Cues) at finish }
///   Info { TimestampScale 1 ms, MuxingApp, WritingApp, Void(11) ← Duration at finish }
///   Tracks { TrackEntry 1 (video), TrackEntry 2 (Opus) }
///   …clusters follow
/// ```
pub fn header(webm: bool, video: Option<&VideoTrack>, audio: bool) -> (Vec<u8>, HeaderLayout) {
    let mut out = Vec::with_capacity(512);
    let mut ebml = Vec::new();
    put_uint(&mut ebml, id::EBML_VERSION, 1);
    put_uint(&mut ebml, id::EBML_READ_VERSION, 1);
    put_uint(&mut ebml, id::EBML_MAX_ID_LENGTH, 4);
    put_uint(&mut ebml, id::EBML_MAX_SIZE_LENGTH, 8);
    put_str(
        &mut ebml,
        id::DOC_TYPE,
        if webm { "webm" } else { "matroska" },
    );
    put_uint(&mut ebml, id::DOC_TYPE_VERSION, 4);
    put_uint(&mut ebml, id::DOC_TYPE_READ_VERSION, 2);
    put_master(&mut out, id::EBML, &ebml);

    put_id(&mut out, id::SEGMENT);
    let segment_size_at = out.len();
    out.extend_from_slice(&UNKNOWN_SIZE_8);
    let segment_data_at = out.len();

    let app = concat!("ninjarec ", env!("CARGO_PKG_VERSION"));
    let mut info = Vec::new();
    put_uint(&mut info, id::TIMESTAMP_SCALE, TIMESTAMP_SCALE_NS);
    put_str(&mut info, id::MUXING_APP, app);
    put_str(&mut info, id::WRITING_APP, app);
    let duration_in_info = info.len();
    put_void(&mut info, DURATION_LEN);

    let mut tracks = Vec::new();
    if let Some(v) = video {
        put_master(&mut tracks, id::TRACK_ENTRY, &video_entry(v));
    }
    if audio {
        put_master(&mut tracks, id::TRACK_ENTRY, &audio_entry());
    }

    // The SeekHead's length does not depend on the positions (8-byte SeekPositions), so it
    // is built once with zeros to measure it, then for real.
    let seek_head = |info_pos: u64, tracks_pos: u64| {
        let mut body = Vec::new();
        body.extend_from_slice(&seek_entry(id::INFO, info_pos));
        body.extend_from_slice(&seek_entry(id::TRACKS, tracks_pos));
        let void_in_body = body.len();
        put_void(&mut body, SEEK_ENTRY_LEN);
        let mut sh = Vec::new();
        put_master(&mut sh, id::SEEK_HEAD, &body);
        let void_in_sh = sh.len() - body.len() + void_in_body;
        (sh, void_in_sh)
    };
    let sh_len = seek_head(0, 0).0.len();
    let mut info_el = Vec::new();
    put_master(&mut info_el, id::INFO, &info);
    let info_pos = sh_len as u64;
    let tracks_pos = info_pos + info_el.len() as u64;
    let (sh, void_in_sh) = seek_head(info_pos, tracks_pos);

    let cues_seek_at = out.len() + void_in_sh;
    out.extend_from_slice(&sh);
    let duration_at = out.len() + (info_el.len() - info.len()) + duration_in_info;
    out.extend_from_slice(&info_el);
    put_master(&mut out, id::TRACKS, &tracks);
    (
        out,
        HeaderLayout {
            segment_size_at,
            segment_data_at,
            duration_at,
            cues_seek_at,
        },
    )
}

/// The video TrackEntry's children.
fn video_entry(v: &VideoTrack) -> Vec<u8> {
    let mut e = Vec::new();
    put_uint(&mut e, id::TRACK_NUMBER, VIDEO_TRACK);
    put_uint(&mut e, id::TRACK_UID, VIDEO_TRACK);
    put_uint(&mut e, id::TRACK_TYPE, 1);
    put_uint(&mut e, id::FLAG_LACING, 0);
    put_str(&mut e, id::LANGUAGE, "und");
    put_str(&mut e, id::CODEC_ID, video_codec_id(v.codec));
    if let Some(p) = &v.codec_private {
        put_bytes(&mut e, id::CODEC_PRIVATE, p);
    }
    let mut video = Vec::new();
    if v.width > 0 && v.height > 0 {
        put_uint(&mut video, id::PIXEL_WIDTH, u64::from(v.width));
        put_uint(&mut video, id::PIXEL_HEIGHT, u64::from(v.height));
    }
    put_master(&mut e, id::VIDEO, &video);
    e
}

/// The Opus TrackEntry's children (see [`opus_head`] for the pre-skip / CodecDelay choice).
fn audio_entry() -> Vec<u8> {
    let mut e = Vec::new();
    put_uint(&mut e, id::TRACK_NUMBER, AUDIO_TRACK);
    put_uint(&mut e, id::TRACK_UID, AUDIO_TRACK);
    put_uint(&mut e, id::TRACK_TYPE, 2);
    put_uint(&mut e, id::FLAG_LACING, 0);
    put_str(&mut e, id::LANGUAGE, "und");
    put_str(&mut e, id::CODEC_ID, "A_OPUS");
    put_uint(&mut e, id::CODEC_DELAY, 0);
    put_uint(&mut e, id::SEEK_PRE_ROLL, OPUS_SEEK_PRE_ROLL_NS);
    put_bytes(&mut e, id::CODEC_PRIVATE, &opus_head());
    let mut audio = Vec::new();
    put_float(&mut audio, id::SAMPLING_FREQUENCY, 48_000.0);
    put_uint(&mut audio, id::CHANNELS, 2);
    put_master(&mut e, id::AUDIO, &audio);
    e
}

/// One Seek entry: `target` (a 4-byte top-level ID) at `pos` from the Segment's data; always
/// [`SEEK_ENTRY_LEN`] bytes.
pub fn seek_entry(target: u32, pos: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(18);
    put_bytes(&mut body, id::SEEK_ID, &target.to_be_bytes());
    put_uint_8(&mut body, id::SEEK_POSITION, pos);
    let mut e = Vec::with_capacity(SEEK_ENTRY_LEN);
    put_master(&mut e, id::SEEK, &body);
    e
}

/// The Duration element (`duration` in timestamp units); always [`DURATION_LEN`] bytes.
pub fn duration(duration: f64) -> Vec<u8> {
    let mut e = Vec::with_capacity(DURATION_LEN);
    put_float(&mut e, id::DURATION, duration);
    e
}

/// A Cluster's start: ID, unknown 8-byte size, Timestamp.
pub fn cluster_start(out: &mut Vec<u8>, timestamp: u64) {
    put_id(out, id::CLUSTER);
    out.extend_from_slice(&UNKNOWN_SIZE_8);
    put_uint(out, id::TIMESTAMP, timestamp);
}

/// A SimpleBlock's header (element header, track number, relative timestamp, flags) for
/// `data_len` bytes of frame data; the caller appends the data. Track numbers are below 127,
/// so the track vint is one byte.
pub fn simple_block_header(
    out: &mut Vec<u8>,
    track: u64,
    relative: i16,
    keyframe: bool,
    data_len: usize,
) {
    put_header(out, id::SIMPLE_BLOCK, 4 + data_len as u64);
    put_size(out, track);
    out.extend_from_slice(&relative.to_be_bytes());
    out.push(if keyframe { 0x80 } else { 0 });
}

/// One cue: a cluster that starts with a keyframe of `track` (or with audio, for audio-only
/// files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cue {
    /// Its time, in timestamp units.
    pub time: u64,
    /// The track.
    pub track: u64,
    /// The cluster's position from the Segment's data.
    pub cluster_pos: u64,
    /// The block's position from the cluster's data.
    pub relative_pos: u64,
}

/// The Cues element for `cues`.
pub fn cues(cues: &[Cue]) -> Vec<u8> {
    let mut body = Vec::with_capacity(cues.len() * 24);
    let mut point = Vec::with_capacity(32);
    let mut positions = Vec::with_capacity(24);
    for c in cues {
        positions.clear();
        put_uint(&mut positions, id::CUE_TRACK, c.track);
        put_uint(&mut positions, id::CUE_CLUSTER_POSITION, c.cluster_pos);
        put_uint(&mut positions, id::CUE_RELATIVE_POSITION, c.relative_pos);
        point.clear();
        put_uint(&mut point, id::CUE_TIME, c.time);
        put_master(&mut point, id::CUE_TRACK_POSITIONS, &positions);
        put_master(&mut body, id::CUE_POINT, &point);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    put_master(&mut out, id::CUES, &body);
    out
}
