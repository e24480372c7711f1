//! A structural checker for the Matroska / WebM files this crate writes.
//!
//! Unit tests, integration tests and the fuzz target need the same answer to "is this file
//! right, and what is in it?", so the rules live here once, as plain code over a byte slice.
//! It is a second, independent EBML reader (it shares only the element ID table with the
//! writer), strict about the writer's own choices (SimpleBlocks only, no lacing, every Opus
//! block flagged keyframe, a video keyframe opens its cluster) — a checker for our output, not
//! a general demuxer.
//!
//! It reads files while live (Segment and Clusters of unknown size), finished (sizes patched,
//! Cues appended; apply the patches with [`apply_patches`]) and cut anywhere
//! ([`CheckOptions::allow_truncated`]: everything up to the last complete element is reported,
//! the cut itself is not a violation).

use crate::mux::Patch;
use crate::mux::mkv::ebml::id;

/// Limits and leniencies of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Accept a file cut anywhere: an incomplete last element is reported in
    /// [`MkvReport::truncated_at`], not as a violation.
    pub allow_truncated: bool,
    /// Require what `finish` adds: known Segment and Cluster sizes, Duration, Cues and their
    /// SeekHead entry.
    pub require_finished: bool,
    /// A block's offset from its cluster's timestamp must be below this (ms).
    pub max_cluster_span_ms: i64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            allow_truncated: false,
            require_finished: false,
            max_cluster_span_ms: 5_000,
        }
    }
}

/// One track as declared in Tracks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackInfo {
    /// TrackNumber.
    pub number: u64,
    /// TrackType (1 video, 2 audio).
    pub track_type: u64,
    /// CodecID.
    pub codec_id: String,
    /// CodecPrivate.
    pub codec_private: Option<Vec<u8>>,
    /// PixelWidth.
    pub width: Option<u64>,
    /// PixelHeight.
    pub height: Option<u64>,
    /// SamplingFrequency.
    pub sampling_frequency: Option<f64>,
    /// Channels.
    pub channels: Option<u64>,
    /// CodecDelay (ns).
    pub codec_delay: Option<u64>,
    /// SeekPreRoll (ns).
    pub seek_pre_roll: Option<u64>,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Offset of its ID.
    pub offset: usize,
    /// Offset of its data.
    pub data_offset: usize,
    /// Its Timestamp (ms), if read.
    pub timestamp: Option<u64>,
    /// Its size, `None` while unknown.
    pub size: Option<u64>,
    /// Index of its first block in [`MkvReport::blocks`] and the number of its blocks.
    pub blocks: (usize, usize),
}

/// One complete SimpleBlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Offset of the SimpleBlock element.
    pub offset: usize,
    /// Offset just after it.
    pub end: usize,
    /// Index of its cluster in [`MkvReport::clusters`].
    pub cluster: usize,
    /// Track number.
    pub track: u64,
    /// Absolute timestamp (cluster + relative), ms.
    pub timestamp: i64,
    /// Offset from the cluster's timestamp.
    pub relative: i16,
    /// Keyframe flag.
    pub keyframe: bool,
    /// The frame data.
    pub data: Vec<u8>,
}

/// One cue point (one CueTrackPositions each, as the writer makes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CueInfo {
    /// CueTime (ms).
    pub time: u64,
    /// CueTrack.
    pub track: u64,
    /// CueClusterPosition (from the Segment's data).
    pub cluster_position: u64,
    /// CueRelativePosition (from the cluster's data).
    pub relative_position: Option<u64>,
}

/// What a check found and every rule broken.
#[derive(Debug, Clone, Default)]
pub struct MkvReport {
    /// DocType of the EBML header.
    pub doc_type: String,
    /// DocTypeVersion.
    pub doc_type_version: Option<u64>,
    /// DocTypeReadVersion.
    pub doc_type_read_version: Option<u64>,
    /// Offset of the Segment's data.
    pub segment_data: Option<usize>,
    /// The Segment's size, `None` while unknown.
    pub segment_size: Option<u64>,
    /// SeekHead entries: (ID, position from the Segment's data).
    pub seeks: Vec<(u32, u64)>,
    /// TimestampScale (ns).
    pub timestamp_scale: Option<u64>,
    /// Duration (timestamp units).
    pub duration: Option<f64>,
    /// MuxingApp.
    pub muxing_app: Option<String>,
    /// WritingApp.
    pub writing_app: Option<String>,
    /// Tracks in order.
    pub tracks: Vec<TrackInfo>,
    /// Clusters in order.
    pub clusters: Vec<ClusterInfo>,
    /// Complete blocks in file order.
    pub blocks: Vec<BlockInfo>,
    /// Cue points.
    pub cues: Vec<CueInfo>,
    /// Offset of the Cues element, if any.
    pub cues_offset: Option<usize>,
    /// Where an incomplete element starts (the file was cut there).
    pub truncated_at: Option<usize>,
    /// Every rule broken (capped at 200 entries).
    pub violations: Vec<String>,
}

impl MkvReport {
    /// True when no rule was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The track with this number.
    pub fn track(&self, number: u64) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.number == number)
    }

    /// The blocks of one track, in order.
    pub fn blocks_of(&self, track: u64) -> impl Iterator<Item = &BlockInfo> {
        self.blocks.iter().filter(move |b| b.track == track)
    }
}

/// Writes `patches` over `file` (as the recorder's file task does); refuses a patch that
/// would extend the file.
pub fn apply_patches(file: &mut [u8], patches: &[Patch]) -> Result<(), String> {
    for p in patches {
        let start = usize::try_from(p.offset).map_err(|e| e.to_string())?;
        let end = start
            .checked_add(p.bytes.len())
            .filter(|&e| e <= file.len())
            .ok_or_else(|| {
                format!(
                    "patch at {} of {} bytes past the end",
                    p.offset,
                    p.bytes.len()
                )
            })?;
        file[start..end].copy_from_slice(&p.bytes);
    }
    Ok(())
}

/// An element header.
#[derive(Debug, Clone, Copy)]
struct Header {
    id: u32,
    /// `None`: unknown size.
    size: Option<u64>,
    len: usize,
}

/// Outcome of reading something at a position.
enum Read<T> {
    Ok(T),
    /// The data ends inside it.
    Incomplete,
    /// It is malformed.
    Bad(String),
}

fn read_id(data: &[u8], pos: usize) -> Read<(u32, usize)> {
    let Some(&first) = data.get(pos) else {
        return Read::Incomplete;
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Read::Bad(format!("invalid element ID byte {first:#04x} at {pos}"));
    }
    let Some(bytes) = data.get(pos..pos + len) else {
        return Read::Incomplete;
    };
    Read::Ok((bytes.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)), len))
}

/// A vint: (value, `None` for the all-ones "unknown"), length.
fn read_vint(data: &[u8], pos: usize) -> Read<(Option<u64>, usize)> {
    let Some(&first) = data.get(pos) else {
        return Read::Incomplete;
    };
    if first == 0 {
        return Read::Bad(format!("invalid vint at {pos}"));
    }
    let len = first.leading_zeros() as usize + 1;
    let Some(bytes) = data.get(pos..pos + len) else {
        return Read::Incomplete;
    };
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let value = bytes[1..]
        .iter()
        .fold(u64::from(first & mask), |a, &b| a << 8 | u64::from(b));
    let all_ones = (1u64 << (7 * len)) - 1;
    Read::Ok(((value != all_ones).then_some(value), len))
}

fn read_header(data: &[u8], pos: usize) -> Read<Header> {
    let (id, id_len) = match read_id(data, pos) {
        Read::Ok(v) => v,
        Read::Incomplete => return Read::Incomplete,
        Read::Bad(e) => return Read::Bad(e),
    };
    match read_vint(data, pos + id_len) {
        Read::Ok((size, size_len)) => Read::Ok(Header {
            id,
            size,
            len: id_len + size_len,
        }),
        Read::Incomplete => Read::Incomplete,
        Read::Bad(e) => Read::Bad(e),
    }
}

fn read_uint(data: &[u8]) -> Option<u64> {
    (data.len() <= 8).then(|| data.iter().fold(0u64, |a, &b| a << 8 | u64::from(b)))
}

fn read_float(data: &[u8]) -> Option<f64> {
    match data.len() {
        4 => Some(f64::from(f32::from_be_bytes(data.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(data.try_into().ok()?)),
        _ => None,
    }
}

/// IDs that may appear directly in a Segment.
const TOP_LEVEL: [u32; 10] = [
    id::SEEK_HEAD,
    id::INFO,
    id::TRACKS,
    id::CLUSTER,
    id::CUES,
    id::TAGS,
    id::CHAPTERS,
    id::ATTACHMENTS,
    id::VOID,
    id::CRC32,
];

/// IDs that may appear in a Cluster (an unknown-size cluster ends at any other).
const CLUSTER_CHILDREN: [u32; 7] = [
    id::TIMESTAMP,
    id::SIMPLE_BLOCK,
    id::BLOCK_GROUP,
    id::VOID,
    id::CRC32,
    id::POSITION,
    id::PREV_SIZE,
];

struct Checker<'a> {
    data: &'a [u8],
    opts: &'a CheckOptions,
    r: MkvReport,
    /// Last absolute timestamp per track number.
    last_ts: Vec<(u64, i64)>,
    /// Track numbers that already had a block.
    started: Vec<u64>,
}

/// Checks a file (or a prefix of one, with `allow_truncated`).
pub fn check(data: &[u8], opts: &CheckOptions) -> MkvReport {
    let mut c = Checker {
        data,
        opts,
        r: MkvReport::default(),
        last_ts: Vec::new(),
        started: Vec::new(),
    };
    c.run();
    c.r
}

impl Checker<'_> {
    fn violation(&mut self, msg: String) {
        if self.r.violations.len() < 200 {
            self.r.violations.push(msg);
        }
    }

    /// The data ends inside the element at `at`.
    fn truncated(&mut self, at: usize) {
        if self.r.truncated_at.is_none() {
            self.r.truncated_at = Some(at);
            if !self.opts.allow_truncated {
                self.violation(format!("file ends inside the element at {at}"));
            }
        }
    }

    /// Reads a header; reports a cut or a malformed one (then `None`).
    fn header_at(&mut self, pos: usize) -> Option<Header> {
        match read_header(self.data, pos) {
            Read::Ok(h) => Some(h),
            Read::Incomplete => {
                self.truncated(pos);
                None
            }
            Read::Bad(e) => {
                self.violation(e);
                None
            }
        }
    }

    /// The children of a complete known-size master: (id, data start, data end).
    fn children(&mut self, start: usize, end: usize) -> Vec<(u32, usize, usize)> {
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            let h = match read_header(&self.data[..end], pos) {
                Read::Ok(h) => h,
                Read::Incomplete => {
                    self.violation(format!("element at {pos} runs past its parent's end {end}"));
                    break;
                }
                Read::Bad(e) => {
                    self.violation(e);
                    break;
                }
            };
            let Some(size) = h.size else {
                self.violation(format!("unknown-size element {:#x} at {pos}", h.id));
                break;
            };
            let data_start = pos + h.len;
            let Some(data_end) = usize::try_from(size)
                .ok()
                .and_then(|s| data_start.checked_add(s))
                .filter(|&e| e <= end)
            else {
                self.violation(format!("element {:#x} at {pos} runs past its parent", h.id));
                break;
            };
            out.push((h.id, data_start, data_end));
            pos = data_end;
        }
        out
    }

    fn run(&mut self) {
        if self.data.is_empty() {
            if !self.opts.allow_truncated {
                self.violation("empty file".into());
            }
            return;
        }
        let Some(h) = self.header_at(0) else {
            return;
        };
        if h.id != id::EBML {
            self.violation(format!("file starts with {:#x}, not the EBML header", h.id));
            return;
        }
        let Some(end) = self.known_end(0, h) else {
            return;
        };
        self.ebml_header(h.len, end);
        let Some(sh) = self.header_at(end) else {
            return;
        };
        if sh.id != id::SEGMENT {
            self.violation(format!("{:#x} at {end} where the Segment should be", sh.id));
            return;
        }
        let data_start = end + sh.len;
        self.r.segment_data = Some(data_start);
        self.r.segment_size = sh.size;
        let seg_end = match sh.size {
            None => self.data.len(),
            Some(size) => {
                let e = usize::try_from(size)
                    .ok()
                    .and_then(|s| data_start.checked_add(s))
                    .unwrap_or(usize::MAX);
                if e > self.data.len() {
                    // A known size past the end: the file was cut after `finish` patched it.
                    self.truncated(self.data.len());
                    self.data.len()
                } else {
                    if e < self.data.len() {
                        self.violation(format!(
                            "{} bytes after the Segment's end",
                            self.data.len() - e
                        ));
                    }
                    e
                }
            }
        };
        self.segment(data_start, seg_end);
        self.final_checks(data_start);
    }

    /// The data end of a known-size element at `pos` that must be complete; reports a cut.
    fn known_end(&mut self, pos: usize, h: Header) -> Option<usize> {
        let Some(size) = h.size else {
            self.violation(format!("element {:#x} at {pos} has an unknown size", h.id));
            return None;
        };
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| (pos + h.len).checked_add(s));
        match end {
            Some(e) if e <= self.data.len() => Some(e),
            _ => {
                self.truncated(pos);
                None
            }
        }
    }

    fn ebml_header(&mut self, start: usize, end: usize) {
        for (el, s, e) in self.children(start, end) {
            let v = &self.data[s..e];
            match el {
                id::DOC_TYPE => self.r.doc_type = String::from_utf8_lossy(v).into_owned(),
                id::DOC_TYPE_VERSION => self.r.doc_type_version = read_uint(v),
                id::DOC_TYPE_READ_VERSION => self.r.doc_type_read_version = read_uint(v),
                id::EBML_MAX_SIZE_LENGTH if read_uint(v) != Some(8) => {
                    self.violation("EBMLMaxSizeLength is not 8".into());
                }
                id::EBML_MAX_ID_LENGTH if read_uint(v) != Some(4) => {
                    self.violation("EBMLMaxIDLength is not 4".into());
                }
                _ => {}
            }
        }
        if self.r.doc_type != "webm" && self.r.doc_type != "matroska" {
            self.violation(format!("DocType {:?}", self.r.doc_type));
        }
    }

    fn segment(&mut self, start: usize, end: usize) {
        let mut pos = start;
        while pos < end {
            let Some(h) = self.header_at(pos) else {
                return;
            };
            if h.id == id::CLUSTER {
                match self.cluster(pos, h, end) {
                    Some(next) => {
                        pos = next;
                        continue;
                    }
                    None => return,
                }
            }
            if !TOP_LEVEL.contains(&h.id) {
                self.violation(format!(
                    "unexpected element {:#x} at {pos} in the Segment",
                    h.id
                ));
            }
            let Some(data_end) = self.known_end(pos, h) else {
                return;
            };
            let data_start = pos + h.len;
            match h.id {
                id::SEEK_HEAD => self.seek_head(data_start, data_end),
                id::INFO => self.info(data_start, data_end),
                id::TRACKS => self.tracks(data_start, data_end),
                id::CUES => {
                    self.r.cues_offset = Some(pos);
                    self.cues(data_start, data_end);
                }
                _ => {}
            }
            pos = data_end;
        }
    }

    fn seek_head(&mut self, start: usize, end: usize) {
        for (el, s, e) in self.children(start, end) {
            if el != id::SEEK {
                continue;
            }
            let (mut target, mut position) = (None, None);
            for (c, cs, ce) in self.children(s, e) {
                match c {
                    id::SEEK_ID => target = read_uint(&self.data[cs..ce]).map(|v| v as u32),
                    id::SEEK_POSITION => position = read_uint(&self.data[cs..ce]),
                    _ => {}
                }
            }
            match (target, position) {
                (Some(t), Some(p)) => self.r.seeks.push((t, p)),
                _ => self.violation(format!("Seek at {s} without SeekID or SeekPosition")),
            }
        }
    }

    fn info(&mut self, start: usize, end: usize) {
        for (el, s, e) in self.children(start, end) {
            let v = &self.data[s..e];
            match el {
                id::TIMESTAMP_SCALE => self.r.timestamp_scale = read_uint(v),
                id::DURATION => {
                    self.r.duration = read_float(v);
                    if self.r.duration.is_none_or(|d| d.is_nan() || d <= 0.0) {
                        self.violation(format!("Duration {:?} is not > 0", self.r.duration));
                    }
                }
                id::MUXING_APP => self.r.muxing_app = Some(String::from_utf8_lossy(v).into()),
                id::WRITING_APP => self.r.writing_app = Some(String::from_utf8_lossy(v).into()),
                _ => {}
            }
        }
        if self.r.timestamp_scale.is_none() {
            self.violation("Info has no TimestampScale".into());
        }
    }

    fn tracks(&mut self, start: usize, end: usize) {
        for (el, s, e) in self.children(start, end) {
            if el != id::TRACK_ENTRY {
                continue;
            }
            let mut t = TrackInfo::default();
            for (c, cs, ce) in self.children(s, e) {
                let v = &self.data[cs..ce];
                match c {
                    id::TRACK_NUMBER => t.number = read_uint(v).unwrap_or(0),
                    id::TRACK_TYPE => t.track_type = read_uint(v).unwrap_or(0),
                    id::CODEC_ID => t.codec_id = String::from_utf8_lossy(v).into(),
                    id::CODEC_PRIVATE => t.codec_private = Some(v.to_vec()),
                    id::CODEC_DELAY => t.codec_delay = read_uint(v),
                    id::SEEK_PRE_ROLL => t.seek_pre_roll = read_uint(v),
                    id::VIDEO | id::AUDIO => {
                        for (g, gs, ge) in self.children(cs, ce) {
                            let w = &self.data[gs..ge];
                            match g {
                                id::PIXEL_WIDTH => t.width = read_uint(w),
                                id::PIXEL_HEIGHT => t.height = read_uint(w),
                                id::SAMPLING_FREQUENCY => t.sampling_frequency = read_float(w),
                                id::CHANNELS => t.channels = read_uint(w),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.track_rules(&t);
            self.r.tracks.push(t);
        }
    }

    fn track_rules(&mut self, t: &TrackInfo) {
        let n = t.number;
        if n == 0 || self.r.tracks.iter().any(|o| o.number == n) {
            self.violation(format!("track number {n} is 0 or repeated"));
        }
        let cp = t.codec_private.as_deref().unwrap_or_default();
        match t.codec_id.as_str() {
            "A_OPUS" => {
                if cp.len() < 19 || &cp[..8] != b"OpusHead" || cp[8] != 1 {
                    self.violation(format!("track {n}: CodecPrivate is not an OpusHead"));
                }
                if t.sampling_frequency != Some(48_000.0) || t.track_type != 2 {
                    self.violation(format!("track {n}: Opus must be audio at 48 kHz"));
                }
            }
            "V_MPEG4/ISO/AVC" => {
                if cp.len() < 7 || cp[0] != 1 || cp[4] & 3 != 3 {
                    self.violation(format!("track {n}: CodecPrivate is not a 4-byte-NAL avcC"));
                }
                if self.r.doc_type == "webm" {
                    self.violation("H.264 in a WebM file".into());
                }
            }
            "V_AV1" => {
                if cp.len() < 4 || cp[0] != 0x81 {
                    self.violation(format!("track {n}: CodecPrivate is not an av1C"));
                }
            }
            "V_VP8" | "V_VP9" => {}
            other => self.violation(format!("track {n}: unexpected CodecID {other:?}")),
        }
        if t.codec_id.starts_with("V_") && t.track_type != 1 {
            self.violation(format!("track {n}: video CodecID on a non-video track"));
        }
    }

    fn cues(&mut self, start: usize, end: usize) {
        for (el, s, e) in self.children(start, end) {
            if el != id::CUE_POINT {
                continue;
            }
            let mut time = None;
            let mut positions = Vec::new();
            for (c, cs, ce) in self.children(s, e) {
                match c {
                    id::CUE_TIME => time = read_uint(&self.data[cs..ce]),
                    id::CUE_TRACK_POSITIONS => positions.push((cs, ce)),
                    _ => {}
                }
            }
            for (ps, pe) in positions {
                let (mut track, mut cluster, mut rel) = (None, None, None);
                for (c, cs, ce) in self.children(ps, pe) {
                    let v = read_uint(&self.data[cs..ce]);
                    match c {
                        id::CUE_TRACK => track = v,
                        id::CUE_CLUSTER_POSITION => cluster = v,
                        id::CUE_RELATIVE_POSITION => rel = v,
                        _ => {}
                    }
                }
                match (time, track, cluster) {
                    (Some(time), Some(track), Some(cluster_position)) => {
                        self.r.cues.push(CueInfo {
                            time,
                            track,
                            cluster_position,
                            relative_position: rel,
                        })
                    }
                    _ => self.violation(format!("incomplete CuePoint at {s}")),
                }
            }
        }
    }

    /// Reads a cluster starting at `pos`; returns where the next top-level element starts, or
    /// `None` when the file ends or breaks inside it.
    fn cluster(&mut self, pos: usize, h: Header, parent_end: usize) -> Option<usize> {
        let data_start = pos + h.len;
        let (end, known) = match h.size {
            None => (parent_end, false),
            Some(size) => {
                let e = usize::try_from(size)
                    .ok()
                    .and_then(|s| data_start.checked_add(s))
                    .unwrap_or(usize::MAX);
                if e > parent_end && parent_end < self.data.len() {
                    self.violation(format!("cluster at {pos} runs past the Segment"));
                }
                (e, true)
            }
        };
        let index = self.r.clusters.len();
        let first_block = self.r.blocks.len();
        self.r.clusters.push(ClusterInfo {
            offset: pos,
            data_offset: data_start,
            timestamp: None,
            size: h.size,
            blocks: (first_block, 0),
        });
        let limit = end.min(self.data.len());
        let mut at = data_start;
        let mut first_child = true;
        let mut next = None;
        while at < limit {
            let ch = self.header_at(at)?;
            if !CLUSTER_CHILDREN.contains(&ch.id) {
                if known {
                    self.violation(format!(
                        "unexpected element {:#x} at {at} in a cluster",
                        ch.id
                    ));
                } else {
                    next = Some(at);
                    break;
                }
            }
            let ch_end = self.known_end(at, ch)?;
            if ch_end > end {
                self.violation(format!("element at {at} runs past its cluster"));
            }
            let v = &self.data[at + ch.len..ch_end];
            match ch.id {
                id::TIMESTAMP => {
                    if !first_child {
                        self.violation(format!("cluster at {pos}: Timestamp is not first"));
                    }
                    self.r.clusters[index].timestamp = read_uint(v);
                }
                id::SIMPLE_BLOCK => self.block(index, at, ch_end, v),
                id::BLOCK_GROUP => self.violation(format!("BlockGroup at {at}: never written")),
                _ => {}
            }
            first_child = false;
            at = ch_end;
        }
        let blocks = self.r.blocks.len() - first_block;
        self.r.clusters[index].blocks.1 = blocks;
        let complete = next.is_some() || known && end <= self.data.len();
        if self.r.clusters[index].timestamp.is_none() && complete {
            self.violation(format!("cluster at {pos} has no Timestamp"));
        }
        if let Some(n) = next {
            return Some(n);
        }
        if known && end > self.data.len() {
            self.truncated(pos);
            return None;
        }
        Some(if known { end } else { at })
    }

    fn block(&mut self, cluster: usize, offset: usize, end: usize, v: &[u8]) {
        let Read::Ok((Some(track), tlen)) = read_vint(v, 0) else {
            self.violation(format!("block at {offset}: bad track number"));
            return;
        };
        let Some(head) = v.get(tlen..tlen + 3) else {
            self.violation(format!("block at {offset}: shorter than its header"));
            return;
        };
        let relative = i16::from_be_bytes([head[0], head[1]]);
        let flags = head[2];
        let payload = &v[tlen + 3..];
        let keyframe = flags & 0x80 != 0;
        let Some(cluster_ts) = self.r.clusters[cluster].timestamp else {
            self.violation(format!("block at {offset} before its cluster's Timestamp"));
            return;
        };
        let timestamp = cluster_ts as i64 + i64::from(relative);
        if flags & 0x06 != 0 {
            self.violation(format!("block at {offset} uses lacing"));
        }
        if payload.is_empty() {
            self.violation(format!("block at {offset} is empty"));
        }
        if i64::from(relative) >= self.opts.max_cluster_span_ms {
            self.violation(format!(
                "block at {offset} is {relative} ms after its cluster's start"
            ));
        }
        let info = self.r.track(track).cloned();
        match &info {
            None => self.violation(format!("block at {offset} for undeclared track {track}")),
            Some(t) if t.track_type == 2 && !keyframe => {
                self.violation(format!("audio block at {offset} without the keyframe flag"));
            }
            Some(t) if t.track_type == 1 => {
                if !self.started.contains(&track) && !keyframe {
                    self.violation(format!("video starts with a non-keyframe at {offset}"));
                }
                let first_in_cluster = self.r.blocks.len() == self.r.clusters[cluster].blocks.0;
                if keyframe && !first_in_cluster {
                    self.violation(format!(
                        "video keyframe at {offset} does not open its cluster"
                    ));
                }
                if t.codec_id == "V_MPEG4/ISO/AVC" && !length_prefixed_ok(payload) {
                    self.violation(format!("H.264 block at {offset}: bad NAL unit lengths"));
                }
            }
            Some(_) => {}
        }
        if !self.started.contains(&track) {
            self.started.push(track);
        }
        let last = match self.last_ts.iter_mut().find(|(t, _)| *t == track) {
            Some((_, last)) => Some(std::mem::replace(last, timestamp)),
            None => {
                self.last_ts.push((track, timestamp));
                None
            }
        };
        if let Some(last) = last.filter(|&l| timestamp < l) {
            self.violation(format!(
                "track {track}: block at {offset} goes back from {last} to {timestamp} ms"
            ));
        }
        if timestamp < 0 {
            self.violation(format!("block at {offset} has a negative time {timestamp}"));
        }
        self.r.blocks.push(BlockInfo {
            offset,
            end,
            cluster,
            track,
            timestamp,
            relative,
            keyframe,
            data: payload.to_vec(),
        });
    }

    fn final_checks(&mut self, segment_data: usize) {
        for (target, p) in self.r.seeks.clone() {
            let at = usize::try_from(p)
                .ok()
                .and_then(|p| segment_data.checked_add(p));
            match at.map(|a| read_id(self.data, a)) {
                Some(Read::Ok((found, _))) if found == target => {}
                // The target lies past a cut (which may fall between two elements).
                Some(Read::Incomplete)
                    if self.r.truncated_at.is_some() || self.opts.allow_truncated => {}
                _ => self.violation(format!("SeekHead entry {target:#x} → {p} is wrong")),
            }
        }
        for cue in self.r.cues.clone() {
            let at = usize::try_from(cue.cluster_position)
                .ok()
                .and_then(|p| segment_data.checked_add(p));
            let Some(ci) = at.and_then(|a| self.r.clusters.iter().position(|c| c.offset == a))
            else {
                self.violation(format!("cue {cue:?} points at no cluster"));
                continue;
            };
            let c = self.r.clusters[ci].clone();
            let block = self.r.blocks[c.blocks.0..c.blocks.0 + c.blocks.1]
                .iter()
                .find(|b| b.track == cue.track);
            let ok = block.is_some_and(|b| {
                b.keyframe
                    && b.timestamp == cue.time as i64
                    && cue
                        .relative_position
                        .is_none_or(|r| c.data_offset as u64 + r == b.offset as u64)
            });
            if !ok {
                self.violation(format!("cue {cue:?} does not point at a keyframe block"));
            }
        }
        if let Some(d) = self.r.duration {
            let last = self.r.blocks.iter().map(|b| b.timestamp).max().unwrap_or(0);
            if d + 0.5 < last as f64 {
                self.violation(format!(
                    "Duration {d} ends before the last block ({last} ms)"
                ));
            }
        }
        if !self.r.blocks.is_empty() && self.r.tracks.is_empty() {
            self.violation("blocks without Tracks".into());
        }
        if self.opts.require_finished && self.r.truncated_at.is_none() {
            if self.r.segment_size.is_none() {
                self.violation("Segment size still unknown".into());
            }
            if let Some(c) = self.r.clusters.iter().find(|c| c.size.is_none()) {
                self.violation(format!("cluster at {} has no size", c.offset));
            }
            if self.r.duration.is_none() {
                self.violation("no Duration".into());
            }
            if !self.r.clusters.is_empty() && self.r.cues.is_empty() {
                self.violation("no Cues".into());
            }
            if self.r.cues_offset.is_some() && !self.r.seeks.iter().any(|s| s.0 == id::CUES) {
                self.violation("Cues not in the SeekHead".into());
            }
        }
    }
}

/// Turns arbitrary bytes into a sequence of writer calls and checks every promise of
/// [`MkvWriter`]: it never panics, refuses bad units without writing, and what it wrote —
/// live, cut at a few points, and finished with its patches applied — passes [`check`] with
/// exactly the blocks it accepted. Shared by the `mkv_writer` fuzz target and a randomized
/// unit test. Returns the number of (video, audio) blocks written, or the first broken
/// promise.
///
/// Input: `[config]` then records `[op][args…]`:
/// - config: bits 0–1 codec (VP8, VP9, AV1, H.264), bit 2 no video, bit 3 audio, bit 4 WebM,
///   bits 5–7 start PTS (×2^31 ticks, so 2^33 wraps are crossed);
/// - op % 4 = 0, 1: video `[flags][len]`: flag bit 0 keyframe, bit 1 no format, bit 2 no
///   config, bits 3–5 PTS step (+3000, +1, 0, −3000, +6 s, +40 s, +1500, −1), bit 6 not
///   Annex B (H.264), bit 7 in-band SPS/PPS (H.264); `len` × 16 bytes of data;
/// - op % 4 = 2: audio `[flags][len]`: bits 0–2 PTS step (+1800, 0, −1800, +7 s, +45, +35 s,
///   +960, −1); `len` bytes, the first being the TOC;
/// - op % 4 = 3: `tick`, or with bit 2 set an early `finish` (later units must be refused).
pub fn exercise_writer(data: &[u8]) -> Result<(u64, u64), String> {
    use crate::media::{Frame, VideoCodec, VideoFormat};
    use crate::mux::Tracks;
    use crate::mux::mkv::{AUDIO_TRACK, MkvError, MkvWriter, VIDEO_TRACK};

    const SPS_PPS: [u8; 17] = [
        0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0, 0, 0, 1, 0x68,
    ];
    const AV1C: [u8; 6] = [0x81, 0x00, 0x0C, 0x00, 0x0A, 0x00];
    let Some((&config, mut rest)) = data.split_first() else {
        return Ok((0, 0));
    };
    let codec = [
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::Av1,
        VideoCodec::H264,
    ][usize::from(config & 3)];
    let tracks = Tracks {
        video: (config & 4 == 0).then_some(codec),
        audio: config & 8 != 0,
    };
    let webm = config & 16 != 0;
    let mut w = match MkvWriter::new(tracks, webm) {
        Ok(w) => w,
        Err(MkvError::NoTracks) if tracks.video.is_none() && !tracks.audio => return Ok((0, 0)),
        Err(MkvError::NotInWebM(VideoCodec::H264)) if webm => {
            MkvWriter::new(tracks, false).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(format!("new: {e}")),
    };
    let base = u64::from(config >> 5) << 31;
    let (mut vpts, mut apts) = (base, base);
    let mut file: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut accepted_video: Vec<u64> = Vec::new();
    let mut accepted_audio = 0u64;
    let mut finished = false;
    let mut fill = 0u8;
    let step = |pts: u64, d: i64| pts.checked_add_signed(d).unwrap_or(pts);
    while let [op, args @ ..] = rest {
        rest = args;
        match op % 4 {
            0 | 1 => {
                let [flags, len, tail @ ..] = rest else { break };
                rest = tail;
                let d =
                    [3000, 1, 0, -3000, 540_000, 3_600_000, 1500, -1][usize::from(flags >> 3 & 7)];
                vpts = step(vpts, d);
                let keyframe = flags & 1 != 0;
                let mut body = Vec::new();
                if codec == VideoCodec::H264 && flags & 0x40 == 0 {
                    if flags & 0x80 != 0 {
                        body.extend_from_slice(&SPS_PPS);
                        body.extend_from_slice(&[0xCB, 0x83]);
                    }
                    body.extend_from_slice(&[0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
                }
                let n = usize::from(*len) * 16;
                fill = fill.wrapping_add(1);
                body.extend((0..n).map(|i| fill.wrapping_add(i as u8) | 1));
                let format = (keyframe && flags & 2 == 0).then(|| VideoFormat {
                    width: 64 + u32::from(*len),
                    height: 48,
                    may_reorder: false,
                    config: (flags & 4 == 0).then(|| match codec {
                        VideoCodec::Av1 => AV1C.to_vec().into(),
                        _ => SPS_PPS.iter().chain(&[0xCB, 0x83]).copied().collect(),
                    }),
                });
                let frame = Frame {
                    codec,
                    rtp_timestamp: 0,
                    arrival: std::time::Instant::now(),
                    keyframe,
                    data: body,
                    format,
                };
                let before = out.len();
                match w.write_video(vpts, &frame, &mut out) {
                    Ok(()) => accepted_video.push(vpts),
                    Err(e) => {
                        if out.len() != before {
                            return Err(format!("refused video ({e}) but wrote bytes"));
                        }
                        if finished && e != MkvError::Finished {
                            return Err(format!("after finish: {e}"));
                        }
                    }
                }
            }
            2 => {
                let [flags, len, tail @ ..] = rest else { break };
                rest = tail;
                let d = [1800, 0, -1800, 630_000, 45, 3_150_000, 960, -1][usize::from(flags & 7)];
                apts = step(apts, d);
                let packet: Vec<u8> = (0..usize::from(*len))
                    .map(|i| if i == 0 { *flags } else { i as u8 })
                    .collect();
                let before = out.len();
                match w.write_audio(apts, &packet, &mut out) {
                    Ok(()) => accepted_audio += 1,
                    Err(e) if out.len() != before => {
                        return Err(format!("refused audio ({e}) but wrote bytes"));
                    }
                    Err(_) => {}
                }
            }
            _ => {
                let Some((&arg, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                if arg & 4 != 0 && !finished {
                    file.append(&mut out);
                    if let Err(e) = finish_and_check(&mut w, &mut file, &mut out) {
                        return Err(format!("early finish: {e}"));
                    }
                    finished = true;
                } else {
                    let before = out.len();
                    crate::mux::Container::tick(&mut w, vpts.max(apts), &mut out);
                    if out.len() != before {
                        return Err("tick wrote bytes".into());
                    }
                }
            }
        }
        if !finished {
            file.append(&mut out);
        }
    }
    if !finished {
        let live = check(&file, &CheckOptions::default());
        if !file.is_empty() && !live.is_ok() {
            return Err(format!("live file: {:?}", live.violations));
        }
        // A few cuts of the live file read up to their last complete block.
        for cut in [
            file.len() / 3,
            (file.len() / 2 + 1).min(file.len()),
            file.len().saturating_sub(5),
        ] {
            let r = check(
                &file[..cut],
                &CheckOptions {
                    allow_truncated: true,
                    ..CheckOptions::default()
                },
            );
            let want = live.blocks.iter().take_while(|b| b.end <= cut).count();
            if !r.is_ok() || r.blocks.len() != want {
                return Err(format!(
                    "cut at {cut}: {:?}, {} blocks",
                    r.violations,
                    r.blocks.len()
                ));
            }
        }
        finish_and_check(&mut w, &mut file, &mut out)?;
    }
    if !w.finish(&mut out).is_empty() || !out.is_empty() {
        return Err("a second finish did something".into());
    }
    let r = check(&file, &CheckOptions::default());
    let stats = w.stats();
    let video = r.blocks_of(VIDEO_TRACK).count() as u64;
    let audio = r.blocks_of(AUDIO_TRACK).count() as u64;
    if video != accepted_video.len() as u64 || video != stats.video_blocks {
        return Err(format!(
            "{video} video blocks for {} accepted",
            accepted_video.len()
        ));
    }
    if audio + stats.audio_dropped != accepted_audio || audio != stats.audio_blocks {
        return Err(format!(
            "{audio} audio blocks + {} dropped for {accepted_audio} accepted",
            stats.audio_dropped
        ));
    }
    if let Some(start) = w.start_pts() {
        for (b, &pts) in r.blocks_of(VIDEO_TRACK).zip(&accepted_video) {
            let ticks = pts - start;
            let ms = (ticks / 90 + u64::from(ticks % 90 >= 45)) as i64;
            if b.timestamp != ms {
                return Err(format!("video block at {} ms for PTS {pts}", b.timestamp));
            }
        }
    }
    Ok((video, audio))
}

/// Finishes `w`, appends what it adds to `file`, applies the patches and checks the result.
fn finish_and_check(
    w: &mut crate::mux::mkv::MkvWriter,
    file: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let patches = w.finish(out);
    file.append(out);
    apply_patches(file, &patches)?;
    if file.is_empty() {
        return if patches.is_empty() {
            Ok(())
        } else {
            Err("patches for an empty file".into())
        };
    }
    let r = check(
        file,
        &CheckOptions {
            require_finished: true,
            ..CheckOptions::default()
        },
    );
    if !r.is_ok() {
        return Err(format!("finished file: {:?}", r.violations));
    }
    Ok(())
}

/// True if `data` is a sequence of non-empty NAL units each preceded by a 4-byte length,
/// covering it exactly.
fn length_prefixed_ok(data: &[u8]) -> bool {
    let mut rest = data;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            return false;
        }
        rest = &tail[len..];
    }
    !data.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vints_and_ids_parse() {
        assert!(matches!(read_vint(&[0x81], 0), Read::Ok((Some(1), 1))));
        assert!(matches!(read_vint(&[0xFF], 0), Read::Ok((None, 1))));
        assert!(matches!(
            read_vint(&[0x40, 0x7F], 0),
            Read::Ok((Some(127), 2))
        ));
        assert!(matches!(
            read_vint(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 0),
            Read::Ok((None, 8))
        ));
        assert!(matches!(
            read_vint(&[1, 0, 0, 0, 0, 0, 1, 2], 0),
            Read::Ok((Some(258), 8))
        ));
        assert!(matches!(read_vint(&[0x40], 0), Read::Incomplete));
        assert!(matches!(read_vint(&[0], 0), Read::Bad(_)));
        assert!(matches!(
            read_id(&[0x1A, 0x45, 0xDF, 0xA3], 0),
            Read::Ok((id::EBML, 4))
        ));
        assert!(matches!(read_id(&[0x08], 0), Read::Bad(_)));
    }

    #[test]
    fn garbage_is_reported_not_a_panic() {
        for data in [
            &b""[..],
            b"\x1a\x45\xdf",
            b"not matroska",
            &[0xFF; 64],
            &[0x01; 9],
        ] {
            let r = check(data, &CheckOptions::default());
            assert!(!r.is_ok(), "{data:?}");
        }
        assert!(length_prefixed_ok(&[0, 0, 0, 1, 9]));
        assert!(!length_prefixed_ok(&[0, 0, 0, 2, 9]));
        assert!(!length_prefixed_ok(&[0, 0, 0, 0]));
        let mut f = vec![0u8; 4];
        assert!(
            apply_patches(
                &mut f,
                &[Patch {
                    offset: 2,
                    bytes: vec![1, 2, 3]
                }]
            )
            .is_err()
        );
        apply_patches(
            &mut f,
            &[Patch {
                offset: 1,
                bytes: vec![1, 2, 3],
            }],
        )
        .unwrap();
        assert_eq!(f, [0, 1, 2, 3]);
    }
}
