//! VP9 RTP depacketizer (RFC 9628): ordered packets of one track in, whole VP9 pictures out.
//!
//! Every packet starts with a payload descriptor (RFC 9628 §4.2: the I/P/L/F/B/E/V/Z byte,
//! then optionally a 7- or 15-bit PictureID, the layer indices TID/U/SID/D with TL0PICIDX in
//! non-flexible mode, up to three P_DIFF reference indices in flexible mode, and the
//! scalability structure SS). It is parsed with bounds checks and stripped; what follows is a
//! piece of a *layer frame* (one VP9 frame of one spatial layer), which begins at B=1 and ends
//! at E=1. A *picture* is every layer frame of one RTP timestamp, and the marker bit ends it.
//!
//! The whole spatial stack that was sent is recorded: a picture of one layer frame is output
//! as is; a picture of several is output as one VP9 superframe (the frames concatenated, then
//! a superframe index, VP9 bitstream spec Annex B), which libvpx and FFmpeg decode. A layer
//! frame that already is a superframe is unpacked into its frames first, since superframes do
//! not nest. Every frame, as a decoder will split the picture, must start with a valid
//! uncompressed header, and a superframe index whose sizes do not add up is malformed (a
//! decoder would take it for an index too). A picture is a key frame when its base layer
//! frame has P=0 and its uncompressed header says `KEY_FRAME`; the resolution declared is the
//! highest spatial layer's, from the SS when the picture carries one, else from the frame
//! headers.
//!
//! Policy, the same as for H.264 (see [`super`]): a picture that lost a packet (in any
//! layer: keeping a picture without its top layer would be possible but is not worth the
//! risk), or whose packets or frame headers do not parse, is never handed on. After any
//! damage (a gap or restart reported by the reorder buffer, a malformed packet, an oversized
//! picture, a picture or layer frame whose start or end is missing) nothing is handed on until
//! the next key frame, and [`VideoOutput::KeyframeNeeded`] says so once per wait. Memory is
//! bounded by [`DepacketizerLimits::max_frame_bytes`] (superframe index included) and
//! [`DepacketizerLimits::max_parts_per_frame`] (packets per picture), and every dropped packet
//! or picture is counted.
//!
//! Written here rather than taken from `rtc`'s `Vp9Packet`, which only parses the descriptor
//! (no picture assembly, no loss handling, and it reads the SS `G` flag from the wrong bits).

use std::time::Instant;

use crate::media::depacketize::{
    DepacketizerLimits, DepacketizerStats, KeyframeGate, KeyframeReason, VideoDepacketizer,
    VideoOutput,
};
use crate::media::reorder::Ordered;
use crate::media::{Frame, VideoCodec, VideoFormat};

/// Most frames one superframe can hold (a 3-bit count, Annex B), hence most layer frames one
/// picture may have (SID is 3 bits too).
const MAX_SUPERFRAME_FRAMES: usize = 8;
/// Most P_DIFF reference indices in a flexible-mode descriptor (RFC 9628 §4.2).
const MAX_P_DIFFS: usize = 3;
/// `frame_sync_code` of key and intra-only frame headers (VP9 spec §6.2).
const SYNC_CODE: u32 = 0x49_83_42;
/// `color_space` value of RGB, which has no `color_range` bit (VP9 spec §7.2).
const CS_RGB: u32 = 7;
/// Largest buffer reserved up front for a picture (bigger ones grow as usual).
const MAX_SIZE_HINT: usize = 1 << 20;

/// Why a packet or a picture was refused; logged at debug level so a
/// `KeyframeNeeded(Malformed)` in the field can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Malformed {
    #[error("payload descriptor runs past the end of the packet")]
    TruncatedDescriptor,
    #[error("more than {MAX_P_DIFFS} P_DIFF reference indices")]
    TooManyReferences,
    #[error("no VP9 data after the payload descriptor")]
    NoData,
    #[error("the first packet of a picture does not begin a layer frame (B=0)")]
    NoPictureStart,
    #[error("a packet continues a layer frame that never began")]
    NoLayerFrameStart,
    #[error("a layer frame begins before the previous one ended (E missing)")]
    LayerFrameUnfinished,
    #[error("the marker packet does not end its layer frame (E=0)")]
    MarkerInsideLayerFrame,
    #[error("more than {MAX_SUPERFRAME_FRAMES} frames in one picture")]
    TooManyFrames,
    #[error("spatial layer IDs of a picture do not increase")]
    SpatialLayerOrder,
    #[error("spatial layer ID changed inside a layer frame")]
    SpatialLayerChanged,
    #[error("PictureID changed inside a picture")]
    PictureIdChanged,
    #[error("frame header runs past the end of the frame")]
    TruncatedHeader,
    #[error("frame_marker is not 2")]
    BadFrameMarker,
    #[error("reserved bit set in the frame header")]
    ReservedBit,
    #[error("frame_sync_code is not 49 83 42")]
    BadSyncCode,
    #[error("superframe index sizes do not add up to the frame")]
    BadSuperframeIndex,
}

/// The spatial layer sizes of a scalability structure with Y=1, at most one per possible
/// spatial layer; `Copy` so a descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LayerSizes {
    sizes: [(u16, u16); MAX_SUPERFRAME_FRAMES],
    count: usize,
}

impl LayerSizes {
    /// The (width, height) of spatial layer `sid`, or of the highest layer described when
    /// `sid` is beyond it.
    fn get(&self, sid: usize) -> Option<(u16, u16)> {
        let sizes = self.sizes.get(..self.count)?;
        sizes.get(sid).or(sizes.last()).copied()
    }
}

/// The payload descriptor fields the depacketizer acts on (RFC 9628 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptor {
    /// P: the layer frame is predicted from an earlier picture (not a key frame).
    inter: bool,
    /// B: the packet begins a layer frame.
    begin: bool,
    /// E: the packet ends a layer frame.
    end: bool,
    /// PictureID (7 or 15 bits) when I is set: the same for every packet of a picture.
    picture_id: Option<u16>,
    /// SID when the layer indices are present (L=1).
    spatial_id: Option<u8>,
    /// Spatial layer sizes, when the packet carries an SS with Y=1.
    layer_sizes: Option<LayerSizes>,
    /// Length of the descriptor: the VP9 data starts here.
    len: usize,
}

/// Takes the next byte of a descriptor.
fn take(rest: &mut &[u8]) -> Result<u8, Malformed> {
    let (&b, tail) = rest.split_first().ok_or(Malformed::TruncatedDescriptor)?;
    *rest = tail;
    Ok(b)
}

/// Takes the next big-endian 16-bit field of a descriptor.
fn take_u16(rest: &mut &[u8]) -> Result<u16, Malformed> {
    Ok(u16::from_be_bytes([take(rest)?, take(rest)?]))
}

/// Parses the payload descriptor at the start of `payload`.
fn parse_descriptor(payload: &[u8]) -> Result<Descriptor, Malformed> {
    let mut rest = payload;
    let first = take(&mut rest)?;
    let inter = first & 0x40 != 0;
    let flexible = first & 0x10 != 0;
    let mut picture_id = None;
    if first & 0x80 != 0 {
        // I: |M| PICTURE ID |, 15 bits when M is set.
        let b = take(&mut rest)?;
        picture_id = Some(if b & 0x80 != 0 {
            (u16::from(b & 0x7F) << 8) | u16::from(take(&mut rest)?)
        } else {
            u16::from(b)
        });
    }
    let mut spatial_id = None;
    if first & 0x20 != 0 {
        // L: | TID |U| SID |D|, then TL0PICIDX in non-flexible mode.
        let b = take(&mut rest)?;
        spatial_id = Some((b >> 1) & 0x07);
        if !flexible {
            take(&mut rest)?;
        }
    }
    if flexible && inter {
        // | P_DIFF |N|, N set when another follows; at least one, at most three.
        let mut count = 0;
        loop {
            if count == MAX_P_DIFFS {
                return Err(Malformed::TooManyReferences);
            }
            count += 1;
            if take(&mut rest)? & 1 == 0 {
                break;
            }
        }
    }
    let mut layer_sizes = None;
    if first & 0x02 != 0 {
        layer_sizes = parse_scalability_structure(&mut rest)?;
    }
    Ok(Descriptor {
        inter,
        begin: first & 0x08 != 0,
        end: first & 0x04 != 0,
        picture_id,
        spatial_id,
        layer_sizes,
        len: payload.len().saturating_sub(rest.len()),
    })
}

/// Parses (and skips) a scalability structure; returns the layer sizes when Y=1.
fn parse_scalability_structure(rest: &mut &[u8]) -> Result<Option<LayerSizes>, Malformed> {
    // | N_S |Y|G|-|-|-|
    let b = take(rest)?;
    let layers = usize::from(b >> 5) + 1;
    let mut sizes = None;
    if b & 0x10 != 0 {
        let mut s = LayerSizes {
            count: layers,
            ..LayerSizes::default()
        };
        for slot in s.sizes.iter_mut().take(layers) {
            *slot = (take_u16(rest)?, take_u16(rest)?);
        }
        sizes = Some(s);
    }
    if b & 0x08 != 0 {
        // N_G, then per picture of the group | TID |U| R |-|-| and R P_DIFF bytes.
        let pictures = take(rest)?;
        for _ in 0..pictures {
            let refs = (take(rest)? >> 2) & 0x03;
            for _ in 0..refs {
                take(rest)?;
            }
        }
    }
    Ok(sizes)
}

/// Reads a VP9 uncompressed header bit by bit, most significant first.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, n: u32) -> Result<u32, Malformed> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = self
                .data
                .get(self.pos / 8)
                .ok_or(Malformed::TruncatedHeader)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn bit(&mut self) -> Result<bool, Malformed> {
        Ok(self.bits(1)? == 1)
    }
}

/// The kind of a VP9 frame, from its uncompressed header (VP9 spec §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    /// `frame_type == KEY_FRAME`: decodable on its own, resets every reference.
    Key,
    /// Intra-only: coded without references but does not reset them.
    IntraOnly,
    /// Predicted from reference frames.
    Inter,
    /// `show_existing_frame`: shows an already decoded frame, no data of its own.
    ShowExisting,
}

/// What the start of a VP9 frame's uncompressed header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    kind: FrameKind,
    /// (width, height) when the header carries it explicitly (key and intra-only frames).
    size: Option<(u32, u32)>,
}

/// Parses a VP9 uncompressed header up to the frame size (VP9 spec §6.2).
fn parse_frame_header(frame: &[u8]) -> Result<FrameHeader, Malformed> {
    let mut r = BitReader {
        data: frame,
        pos: 0,
    };
    if r.bits(2)? != 2 {
        return Err(Malformed::BadFrameMarker);
    }
    let low = r.bits(1)?;
    let high = r.bits(1)?;
    let profile = (high << 1) | low;
    if profile == 3 && r.bit()? {
        // libvpx reads this bit as part of the profile: set, it means an unknown profile 4.
        return Err(Malformed::ReservedBit);
    }
    if r.bit()? {
        // show_existing_frame, then frame_to_show_map_idx.
        r.bits(3)?;
        return Ok(FrameHeader {
            kind: FrameKind::ShowExisting,
            size: None,
        });
    }
    let non_key = r.bit()?;
    let show_frame = r.bit()?;
    let error_resilient = r.bit()?;
    if !non_key {
        sync_code(&mut r)?;
        color_config(&mut r, profile)?;
        return Ok(FrameHeader {
            kind: FrameKind::Key,
            size: Some(frame_size(&mut r)?),
        });
    }
    let intra_only = !show_frame && r.bit()?;
    if !error_resilient {
        // reset_frame_context
        r.bits(2)?;
    }
    if !intra_only {
        return Ok(FrameHeader {
            kind: FrameKind::Inter,
            size: None,
        });
    }
    sync_code(&mut r)?;
    if profile > 0 {
        color_config(&mut r, profile)?;
    }
    // refresh_frame_flags
    r.bits(8)?;
    Ok(FrameHeader {
        kind: FrameKind::IntraOnly,
        size: Some(frame_size(&mut r)?),
    })
}

fn sync_code(r: &mut BitReader<'_>) -> Result<(), Malformed> {
    if r.bits(24)? != SYNC_CODE {
        return Err(Malformed::BadSyncCode);
    }
    Ok(())
}

/// Skips `color_config()` (VP9 spec §6.2.2): bit depth, color space, range, subsampling.
fn color_config(r: &mut BitReader<'_>, profile: u32) -> Result<(), Malformed> {
    if profile >= 2 {
        // ten_or_twelve_bit
        r.bits(1)?;
    }
    let color_space = r.bits(3)?;
    let full_chroma_profile = profile == 1 || profile == 3;
    if color_space != CS_RGB {
        // color_range
        r.bits(1)?;
        if full_chroma_profile {
            // subsampling_x, subsampling_y
            r.bits(2)?;
            if r.bit()? {
                return Err(Malformed::ReservedBit);
            }
        }
    } else if full_chroma_profile && r.bit()? {
        return Err(Malformed::ReservedBit);
    }
    Ok(())
}

/// `frame_width_minus_1` and `frame_height_minus_1`, 16 bits each.
fn frame_size(r: &mut BitReader<'_>) -> Result<(u32, u32), Malformed> {
    Ok((r.bits(16)? + 1, r.bits(16)? + 1))
}

/// The frames of a superframe (Annex B), or `frame` alone when it does not end in a
/// superframe index. An index whose sizes do not add up to the data before it is malformed:
/// libvpx would take it for an index too and decode garbage.
fn superframe_frames(frame: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let Some(&marker) = frame.last() else {
        return Ok(vec![frame]);
    };
    if marker & 0xE0 != 0xC0 {
        return Ok(vec![frame]);
    }
    let size_bytes = usize::from((marker >> 3) & 0x03) + 1;
    let count = usize::from(marker & 0x07) + 1;
    let index_len = 2 + size_bytes * count;
    let Some(index_start) = frame.len().checked_sub(index_len) else {
        return Ok(vec![frame]);
    };
    if frame.get(index_start) != Some(&marker) {
        return Ok(vec![frame]);
    }
    let sizes = frame
        .get(index_start + 1..frame.len() - 1)
        .unwrap_or_default();
    let mut frames = Vec::with_capacity(count);
    let mut rest = frame.get(..index_start).unwrap_or_default();
    for size in sizes.chunks_exact(size_bytes) {
        let mut le = [0u8; 4];
        le.get_mut(..size_bytes)
            .ok_or(Malformed::BadSuperframeIndex)?
            .copy_from_slice(size);
        let size = usize::try_from(u32::from_le_bytes(le)).unwrap_or(usize::MAX);
        if size == 0 || size > rest.len() {
            return Err(Malformed::BadSuperframeIndex);
        }
        let (one, tail) = rest.split_at(size);
        frames.push(one);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Malformed::BadSuperframeIndex);
    }
    Ok(frames)
}

/// Why a superframe could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SuperframeError {
    TooManyFrames,
    TooLarge,
}

/// Writes `frames` as one superframe: the frames, then the index (marker `0b110_mm_fff`,
/// each size little-endian in `mm + 1` bytes, the marker again), using the fewest size bytes
/// that fit the largest frame, as libvpx does. At most `max_bytes` in all.
fn write_superframe(frames: &[&[u8]], max_bytes: usize) -> Result<Vec<u8>, SuperframeError> {
    if frames.is_empty() || frames.len() > MAX_SUPERFRAME_FRAMES {
        return Err(SuperframeError::TooManyFrames);
    }
    let largest = frames.iter().map(|f| f.len()).max().unwrap_or(0);
    let largest = u32::try_from(largest).map_err(|_| SuperframeError::TooLarge)?;
    let size_bytes = match largest {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 3,
        _ => 4,
    };
    let index_len = 2 + size_bytes * frames.len();
    let total = frames
        .iter()
        .try_fold(index_len, |sum, f| sum.checked_add(f.len()))
        .filter(|&t| t <= max_bytes)
        .ok_or(SuperframeError::TooLarge)?;
    // Both fields fit: size_bytes is 1..=4 and the count 1..=8.
    let marker = 0xC0 | (((size_bytes - 1) as u8) << 3) | ((frames.len() - 1) as u8);
    let mut out = Vec::with_capacity(total);
    for f in frames {
        out.extend_from_slice(f);
    }
    out.push(marker);
    for f in frames {
        // Each length was checked to fit in u32 above.
        let size = (f.len() as u32).to_le_bytes();
        out.extend_from_slice(size.get(..size_bytes).unwrap_or_default());
    }
    out.push(marker);
    Ok(out)
}

/// One layer frame of the picture being assembled.
#[derive(Debug, Clone, Copy)]
struct Layer {
    /// Where the layer frame starts in the picture's data.
    start: usize,
    /// SID, when the descriptor had layer indices.
    spatial_id: Option<u8>,
    /// P bit of its descriptor.
    inter: bool,
}

/// The picture being assembled.
#[derive(Debug)]
struct Picture {
    timestamp: u32,
    /// Arrival of the picture's first packet.
    arrival: Instant,
    /// The layer frames back to back (descriptors stripped).
    data: Vec<u8>,
    layers: Vec<Layer>,
    /// True while the last layer frame has begun and not ended.
    open: bool,
    /// Packets appended so far.
    packets: usize,
    /// PictureID, once a packet carried one.
    picture_id: Option<u16>,
    /// Spatial layer sizes from an SS in this picture.
    layer_sizes: Option<LayerSizes>,
    damaged: bool,
}

impl Picture {
    /// A picture whose buffer starts at `capacity` bytes (about the previous picture's
    /// size), so it is assembled without reallocating as it grows.
    fn new(timestamp: u32, arrival: Instant, capacity: usize) -> Self {
        Self {
            timestamp,
            arrival,
            data: Vec::with_capacity(capacity),
            layers: Vec::with_capacity(1),
            open: false,
            packets: 0,
            picture_id: None,
            layer_sizes: None,
            damaged: false,
        }
    }

    /// Checks that a packet fits the layer frame structure of the picture so far.
    fn check(&self, d: &Descriptor, body: &[u8]) -> Result<(), Malformed> {
        if body.is_empty() {
            return Err(Malformed::NoData);
        }
        if self
            .picture_id
            .zip(d.picture_id)
            .is_some_and(|(a, b)| a != b)
        {
            return Err(Malformed::PictureIdChanged);
        }
        if d.begin {
            if self.open {
                return Err(Malformed::LayerFrameUnfinished);
            }
            if self.layers.len() >= MAX_SUPERFRAME_FRAMES {
                return Err(Malformed::TooManyFrames);
            }
            if let Some(prev) = self.layers.last().and_then(|l| l.spatial_id)
                && d.spatial_id.is_some_and(|sid| sid <= prev)
            {
                return Err(Malformed::SpatialLayerOrder);
            }
        } else {
            if !self.open {
                return Err(Malformed::NoLayerFrameStart);
            }
            if self.layers.last().map(|l| l.spatial_id) != Some(d.spatial_id) {
                return Err(Malformed::SpatialLayerChanged);
            }
        }
        Ok(())
    }

    /// The bytes of each layer frame, in order.
    fn layer_frames(&self) -> impl Iterator<Item = &[u8]> {
        let ends = self
            .layers
            .iter()
            .skip(1)
            .map(|l| l.start)
            .chain([self.data.len()]);
        self.layers
            .iter()
            .zip(ends)
            .map(|(l, end)| self.data.get(l.start..end).unwrap_or_default())
    }

    /// The spatial layer the picture reaches: the last layer frame's SID, or its position
    /// when the descriptors had no layer indices.
    fn top_layer(&self) -> usize {
        self.layers
            .last()
            .and_then(|l| l.spatial_id)
            .map_or(self.layers.len().saturating_sub(1), usize::from)
    }
}

/// Turns ordered RTP packets of one VP9 track into whole pictures (superframes when several
/// spatial layers were sent). See the module docs for the policy.
#[derive(Debug)]
pub struct Vp9Depacketizer {
    limits: DepacketizerLimits,
    current: Option<Picture>,
    /// The keyframe-wait policy and the counters.
    gate: KeyframeGate,
    /// Capacity for the next picture's buffer: a little more than the last one's size.
    size_hint: usize,
}

impl Default for Vp9Depacketizer {
    fn default() -> Self {
        Self::new(DepacketizerLimits::default())
    }
}

impl Vp9Depacketizer {
    /// A depacketizer waiting for its first key frame, bounded by `limits`
    /// (`max_config_bytes` is unused: VP9 has no out-of-band configuration).
    pub fn new(limits: DepacketizerLimits) -> Self {
        Self {
            limits,
            current: None,
            gate: KeyframeGate::new(),
            size_hint: 0,
        }
    }

    /// A loss the reorder buffer reported (`lost` packets, 0 for a resync).
    fn loss(&mut self, lost: u64, out: &mut dyn FnMut(VideoOutput)) {
        self.gate.lost(lost);
        self.damage(KeyframeReason::Loss, out);
    }

    /// Marks the open picture (if any) as damaged and stops output until the next key frame.
    fn damage(&mut self, reason: KeyframeReason, out: &mut dyn FnMut(VideoOutput)) {
        if let Some(p) = &mut self.current {
            p.damaged = true;
            p.data = Vec::new();
            p.layers = Vec::new();
        }
        self.gate.stop(reason, out);
    }

    fn malformed(&mut self, error: Malformed, out: &mut dyn FnMut(VideoOutput)) {
        tracing::debug!(%error, "malformed VP9 packet");
        self.gate.stats.malformed_packets += 1;
        self.damage(KeyframeReason::Malformed, out);
    }

    /// Drops a complete picture whose content is malformed ([`KeyframeGate::reject`]);
    /// counted as one malformed packet (the one holding the bad header).
    fn reject_malformed(&mut self, error: Malformed, out: &mut dyn FnMut(VideoOutput)) {
        tracing::debug!(%error, "malformed VP9 picture");
        self.gate.stats.malformed_packets += 1;
        self.gate.reject(KeyframeReason::Malformed, out);
    }

    fn packet(
        &mut self,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        arrival: Instant,
        out: &mut dyn FnMut(VideoOutput),
    ) {
        if payload.is_empty() {
            // Padding only (bandwidth probes): no descriptor, nothing to add.
            self.gate.stats.ignored_packets += 1;
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.timestamp != timestamp)
        {
            // The previous picture never saw its marker: its tail is missing.
            self.damage(KeyframeReason::Malformed, out);
            self.close(out);
        }
        let descriptor = parse_descriptor(payload);
        if self.current.is_none() {
            self.current = Some(Picture::new(timestamp, arrival, self.size_hint));
            let after_gap = self.gate.take_after_gap();
            if let Ok(d) = &descriptor
                && !d.begin
            {
                if after_gap {
                    // Its first packets were lost (or sent before we joined).
                    self.damage(self.gate.wait_reason(), out);
                } else {
                    self.malformed(Malformed::NoPictureStart, out);
                }
            }
        }
        match descriptor {
            Ok(d) => self.append(&d, payload.get(d.len..).unwrap_or_default(), out),
            Err(e) => self.malformed(e, out),
        }
        if marker {
            if self.current.as_ref().is_some_and(|p| !p.damaged && p.open) {
                self.malformed(Malformed::MarkerInsideLayerFrame, out);
            }
            self.close(out);
        }
    }

    /// Checks one packet against the open picture and appends its VP9 bytes.
    fn append(&mut self, d: &Descriptor, body: &[u8], out: &mut dyn FnMut(VideoOutput)) {
        let Some(p) = &mut self.current else { return };
        if p.damaged {
            return;
        }
        if let Err(e) = p.check(d, body) {
            return self.malformed(e, out);
        }
        if p.data.len().saturating_add(body.len()) > self.limits.max_frame_bytes
            || p.packets >= self.limits.max_parts_per_frame
        {
            return self.damage(KeyframeReason::Oversized, out);
        }
        if d.begin {
            p.layers.push(Layer {
                start: p.data.len(),
                spatial_id: d.spatial_id,
                inter: d.inter,
            });
        }
        p.open = !d.end;
        p.packets += 1;
        p.picture_id = p.picture_id.or(d.picture_id);
        if d.layer_sizes.is_some() {
            p.layer_sizes = d.layer_sizes;
        }
        p.data.extend_from_slice(body);
    }

    /// Ends the open picture: hands it on if it is complete and decodable.
    fn close(&mut self, out: &mut dyn FnMut(VideoOutput)) {
        let Some(p) = self.current.take() else { return };
        self.size_hint = p
            .data
            .len()
            .saturating_add(p.data.len() / 4 + 64)
            .min(MAX_SIZE_HINT);
        if p.damaged {
            return self.gate.dropped();
        }
        if p.open || p.layers.is_empty() {
            // Unreachable through `packet` (an open layer frame at the marker is malformed
            // there), kept so a picture without its end can never slip through.
            return self.reject_malformed(Malformed::MarkerInsideLayerFrame, out);
        }
        // Every frame as a decoder splits the picture: the layer frames, and the frames of a
        // layer frame that is itself a superframe. Each must start with a valid header.
        let mut frames = Vec::with_capacity(p.layers.len());
        let mut headers = Vec::with_capacity(p.layers.len());
        for bytes in p.layer_frames() {
            let inner = match superframe_frames(bytes) {
                Ok(f) => f,
                Err(e) => return self.reject_malformed(e, out),
            };
            for frame in inner {
                match parse_frame_header(frame) {
                    Ok(h) => headers.push(h),
                    Err(e) => return self.reject_malformed(e, out),
                }
                frames.push(frame);
            }
        }
        // The base layer's (first) frame decides.
        let keyframe = p
            .layers
            .first()
            .is_some_and(|base| !base.inter && base.spatial_id.unwrap_or(0) == 0)
            && headers.first().is_some_and(|h| h.kind == FrameKind::Key);
        if !self.gate.admits(keyframe, out) {
            return;
        }
        let data = if p.layers.len() == 1 {
            // Output as sent, a superframe or not.
            None
        } else {
            match write_superframe(&frames, self.limits.max_frame_bytes) {
                Ok(d) => Some(d),
                Err(SuperframeError::TooManyFrames) => {
                    return self.reject_malformed(Malformed::TooManyFrames, out);
                }
                Err(SuperframeError::TooLarge) => {
                    return self.gate.reject(KeyframeReason::Oversized, out);
                }
            }
        };
        let format = keyframe.then(|| {
            let (width, height) = p
                .layer_sizes
                .and_then(|s| s.get(p.top_layer()))
                .filter(|&(w, h)| w > 0 && h > 0)
                .map(|(w, h)| (u32::from(w), u32::from(h)))
                .or_else(|| headers.iter().rev().find_map(|h| h.size))
                .unwrap_or_default();
            VideoFormat {
                width,
                height,
                may_reorder: false,
                config: None,
            }
        });
        self.gate.output(keyframe);
        out(VideoOutput::Frame(Frame {
            codec: VideoCodec::Vp9,
            rtp_timestamp: p.timestamp,
            arrival: p.arrival,
            keyframe,
            data: data.unwrap_or(p.data),
            format,
        }));
    }
}

impl VideoDepacketizer for Vp9Depacketizer {
    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp9
    }

    fn push(&mut self, item: Ordered, out: &mut dyn FnMut(VideoOutput)) {
        match item {
            Ordered::Packet(pkt, arrival) => {
                self.packet(pkt.timestamp, pkt.marker, &pkt.payload, arrival, out)
            }
            Ordered::Gap { lost } => self.loss(lost, out),
            Ordered::Resync => self.loss(0, out),
        }
    }

    /// Drops a partly received picture (no marker yet) at the end of the stream; counted as
    /// unfinished, not as dropped (the recording ended inside it).
    fn flush(&mut self) {
        if let Some(p) = self.current.take()
            && (!p.data.is_empty() || p.damaged)
        {
            self.gate.unfinished();
        }
    }

    fn waiting_for_keyframe(&self) -> bool {
        self.gate.waiting()
    }

    fn stats(&self) -> DepacketizerStats {
        self.gate.stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use rtc::rtp::codec::vp9::Vp9Payloader;
    use rtc::rtp::packetizer::Payloader;

    use super::*;
    use crate::media::RtpPacket;

    /// Writes header fields most significant bit first, as the VP9 spec reads them.
    #[derive(Default)]
    struct Bits {
        out: Vec<u8>,
        n: usize,
    }

    impl Bits {
        fn put(&mut self, value: u32, bits: u32) -> &mut Self {
            for i in (0..bits).rev() {
                if self.n.is_multiple_of(8) {
                    self.out.push(0);
                }
                if (value >> i) & 1 == 1 {
                    *self.out.last_mut().unwrap() |= 0x80 >> (self.n % 8);
                }
                self.n += 1;
            }
            self
        }
    }

    /// The start of a key frame header: frame marker, profile, frame type, sync code, color
    /// config (BT.709, 10 bit for profiles 2 and 3, 4:4:0 for profiles 1 and 3), size.
    fn key_header(profile: u32, width: u32, height: u32) -> Vec<u8> {
        let mut b = Bits::default();
        b.put(2, 2).put(profile & 1, 1).put(profile >> 1, 1);
        if profile == 3 {
            b.put(0, 1);
        }
        // show_existing_frame, frame_type = KEY_FRAME, show_frame, error_resilient_mode.
        b.put(0, 1).put(0, 1).put(1, 1).put(0, 1);
        b.put(SYNC_CODE, 24);
        if profile >= 2 {
            b.put(0, 1);
        }
        b.put(2, 3).put(0, 1);
        if profile == 1 || profile == 3 {
            b.put(0, 1).put(1, 1).put(0, 1);
        }
        b.put(width - 1, 16).put(height - 1, 16);
        // render_and_frame_size_different
        b.put(0, 1);
        b.out
    }

    /// The start of an intra-only frame header (not shown, not error resilient).
    fn intra_only_header(profile: u32, width: u32, height: u32) -> Vec<u8> {
        let mut b = Bits::default();
        b.put(2, 2).put(profile & 1, 1).put(profile >> 1, 1);
        if profile == 3 {
            b.put(0, 1);
        }
        // show_existing_frame, frame_type = NON_KEY, show_frame = 0, error_resilient_mode,
        // intra_only, reset_frame_context.
        b.put(0, 1)
            .put(1, 1)
            .put(0, 1)
            .put(0, 1)
            .put(1, 1)
            .put(0, 2);
        b.put(SYNC_CODE, 24);
        if profile > 0 {
            if profile >= 2 {
                b.put(1, 1);
            }
            b.put(1, 3).put(1, 1);
            if profile == 1 || profile == 3 {
                b.put(1, 1).put(1, 1).put(0, 1);
            }
        }
        b.put(0xFF, 8).put(width - 1, 16).put(height - 1, 16);
        b.out
    }

    /// Frame bytes after a header: never ending like a superframe index.
    fn body(mut frame: Vec<u8>, len: usize, fill: u8) -> Vec<u8> {
        frame.resize(frame.len() + len, fill & 0x7F);
        frame
    }

    fn keyframe(width: u32, height: u32, len: usize, fill: u8) -> Vec<u8> {
        body(key_header(0, width, height), len, fill)
    }

    /// An inter frame: frame marker, profile 0, NON_KEY, shown, then compressed bytes.
    fn interframe(len: usize, fill: u8) -> Vec<u8> {
        body(vec![0x86], len, fill)
    }

    /// Splits a layer frame into packets of at most `chunk` bytes behind
    /// `descriptor(begin, end)`.
    fn packets(
        frame: &[u8],
        chunk: usize,
        descriptor: impl Fn(bool, bool) -> Vec<u8>,
    ) -> Vec<Vec<u8>> {
        let n = frame.chunks(chunk).count();
        frame
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| [descriptor(i == 0, i + 1 == n), c.to_vec()].concat())
            .collect()
    }

    /// B and E bits.
    fn be(begin: bool, end: bool) -> u8 {
        (if begin { 0x08 } else { 0 }) | (if end { 0x04 } else { 0 })
    }

    /// The minimal descriptor of a key frame: B/E only.
    fn plain(begin: bool, end: bool) -> Vec<u8> {
        vec![be(begin, end)]
    }

    /// The minimal descriptor of an inter frame: P and B/E.
    fn plain_inter(begin: bool, end: bool) -> Vec<u8> {
        vec![0x40 | be(begin, end)]
    }

    /// Feeds payloads straight into a depacketizer (sequence order, no reorder buffer).
    struct Feed {
        d: Vp9Depacketizer,
        seq: u16,
        t0: Instant,
        frames: Vec<Frame>,
        requests: Vec<KeyframeReason>,
    }

    impl Feed {
        fn new() -> Self {
            Self::with(DepacketizerLimits::default())
        }
        fn with(limits: DepacketizerLimits) -> Self {
            Self {
                d: Vp9Depacketizer::new(limits),
                seq: 0,
                t0: Instant::now(),
                frames: Vec::new(),
                requests: Vec::new(),
            }
        }
        fn item(&mut self, item: Ordered) {
            let (frames, requests) = (&mut self.frames, &mut self.requests);
            self.d.push(item, &mut |o| match o {
                VideoOutput::Frame(f) => frames.push(f),
                VideoOutput::KeyframeNeeded(r) => requests.push(r),
            });
        }
        fn send(&mut self, ts: u32, marker: bool, payload: &[u8]) {
            self.seq = self.seq.wrapping_add(1);
            let arrival = self.t0 + Duration::from_millis(u64::from(self.seq));
            self.item(Ordered::Packet(
                RtpPacket {
                    sequence: self.seq,
                    timestamp: ts,
                    marker,
                    ssrc: u32::MAX,
                    payload_type: 98,
                    payload: Bytes::copy_from_slice(payload),
                },
                arrival,
            ));
        }
        /// Sends the payloads of one picture, the marker on the last.
        fn picture(&mut self, ts: u32, payloads: &[Vec<u8>]) {
            for (i, p) in payloads.iter().enumerate() {
                self.send(ts, i + 1 == payloads.len(), p);
            }
        }
        fn gap(&mut self, lost: u64) {
            self.seq = self.seq.wrapping_add(lost as u16);
            self.item(Ordered::Gap { lost });
        }
        /// A 320x240 single-layer key frame in three packets.
        fn key(&mut self, ts: u32) -> Vec<u8> {
            let f = keyframe(320, 240, 250, ts as u8);
            self.picture(ts, &packets(&f, 100, plain));
            f
        }
        /// A single-layer inter frame in two packets.
        fn inter(&mut self, ts: u32) -> Vec<u8> {
            let f = interframe(150, ts as u8);
            self.picture(ts, &packets(&f, 100, plain_inter));
            f
        }
        fn datas(&self) -> Vec<&[u8]> {
            self.frames.iter().map(|f| &f.data[..]).collect()
        }
    }

    #[test]
    fn pictures_from_rtcs_payloader_come_back_whole() {
        // Start near the 15-bit wrap of the PictureID.
        let mut payloader = Vp9Payloader::default();
        payloader.initial_picture_id_fn = Some(Arc::new(|| 0x7FF0));
        let mut f = Feed::new();
        let mut sent = Vec::new();
        for i in 0..60u32 {
            let frame = if i % 25 == 0 {
                keyframe(640, 360, 900 + i as usize, i as u8)
            } else {
                interframe(300 + i as usize, i as u8)
            };
            let payloads = payloader.payload(200, &Bytes::from(frame.clone())).unwrap();
            assert!(payloads.len() > 1);
            let payloads: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
            f.picture(i * 3000, &payloads);
            sent.push(frame);
        }
        assert_eq!(f.frames.len(), sent.len());
        for (i, (got, want)) in f.frames.iter().zip(&sent).enumerate() {
            assert_eq!(got.data, *want, "frame {i}");
            assert_eq!(got.codec, VideoCodec::Vp9);
            assert_eq!(got.rtp_timestamp, i as u32 * 3000);
            // The payloader never sets P: the frame header decides.
            assert_eq!(got.keyframe, i % 25 == 0);
            let format = got.keyframe.then(|| VideoFormat {
                width: 640,
                height: 360,
                may_reorder: false,
                config: None,
            });
            assert_eq!(got.format, format);
        }
        assert_eq!(f.frames[0].arrival, f.t0 + Duration::from_millis(1));
        assert!(f.requests.is_empty());
        let s = f.d.stats();
        assert_eq!(
            (s.frames_out, s.keyframes_out, s.frames_dropped),
            (60, 3, 0)
        );
        assert_eq!(s.malformed_packets, 0);
        assert!(!f.d.waiting_for_keyframe());
    }

    #[test]
    fn descriptor_layouts_are_parsed_and_stripped() {
        let d = |inter, begin, end, picture_id, spatial_id, len| Descriptor {
            inter,
            begin,
            end,
            picture_id,
            spatial_id,
            layer_sizes: None,
            len,
        };
        let cases: [(&[u8], Descriptor); 8] = [
            (&[0x0C], d(false, true, true, None, None, 1)),
            (&[0x84, 0x05], d(false, false, true, Some(5), None, 2)),
            (
                &[0x88, 0xFF, 0xFF],
                d(false, true, false, Some(0x7FFF), None, 3),
            ),
            // Non-flexible: layer indices (TID 2, U, SID 1, D) and TL0PICIDX.
            (
                &[0xAC, 0x05, 0x53, 0x07],
                d(false, true, true, Some(5), Some(1), 4),
            ),
            // Flexible: layer indices alone.
            (
                &[0xBC, 0x05, 0x53],
                d(false, true, true, Some(5), Some(1), 3),
            ),
            // Flexible, predicted: one, then three reference indices.
            (&[0xDC, 0x05, 0x02], d(true, true, true, Some(5), None, 3)),
            (
                &[0xFC, 0x05, 0x4E, 0x03, 0x05, 0x06],
                d(true, true, true, Some(5), Some(7), 6),
            ),
            // Non-flexible predicted frames carry no reference indices.
            (&[0x4C], d(true, true, true, None, None, 1)),
        ];
        for (desc, want) in cases {
            let payload = [desc, &[0x86, 0x00]].concat();
            assert_eq!(parse_descriptor(&payload), Ok(want), "{desc:02x?}");
        }
        // A scalability structure: two layers with sizes (Y) and a picture group (G) of two
        // pictures, the first with one reference index.
        let ss: &[u8] = &[
            0x8E, 0x01, 0x38, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x02, 0x04, 0x01,
            0x30,
        ];
        let got = parse_descriptor(&[ss, &[0x82]].concat()).unwrap();
        assert_eq!(got.len, ss.len());
        let sizes = got.layer_sizes.unwrap();
        assert_eq!(sizes.count, 2);
        assert_eq!(
            (sizes.get(0), sizes.get(1)),
            (Some((320, 180)), Some((640, 360)))
        );
        assert_eq!(sizes.get(5), Some((640, 360)));
        // Without Y or G the SS is one byte and says nothing about sizes.
        let got = parse_descriptor(&[0x0E, 0x40, 0x82]).unwrap();
        assert_eq!((got.len, got.layer_sizes), (2, None));
    }

    #[test]
    fn truncated_descriptors_are_malformed() {
        let truncated: [&[u8]; 14] = [
            &[0x80],
            &[0x80, 0x80],
            &[0x20],
            &[0x20, 0x00],
            &[0x30],
            &[0x50],
            &[0x50, 0x01],
            &[0x50, 0x01, 0x01],
            &[0x02],
            &[0x02, 0x10, 0x01, 0x40, 0x00],
            &[0x02, 0x30, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01],
            &[0x02, 0x08],
            &[0x02, 0x08, 0x01],
            &[0x02, 0x08, 0x01, 0x08, 0x01],
        ];
        for bad in truncated {
            assert_eq!(
                parse_descriptor(bad),
                Err(Malformed::TruncatedDescriptor),
                "{bad:02x?}"
            );
        }
        let too_many: &[u8] = &[0x5C, 0x03, 0x05, 0x07, 0x09, 0x86];
        assert_eq!(
            parse_descriptor(too_many),
            Err(Malformed::TooManyReferences)
        );
        // A whole descriptor and no VP9 byte after it.
        let empty: [&[u8]; 2] = [&[0x0C], &[0xAC, 0x05, 0x00, 0x00]];
        for bad in empty {
            assert_eq!(parse_descriptor(bad).map(|d| d.len), Ok(bad.len()));
        }
        for bad in truncated.into_iter().chain([too_many]).chain(empty) {
            let mut f = Feed::new();
            f.key(0);
            // As the only packet of a picture, and as the middle packet of a key frame.
            f.send(3000, true, bad);
            let key = keyframe(320, 240, 30, 3);
            f.picture(
                6000,
                &[
                    [&[0x08][..], &key[..20]].concat(),
                    bad.to_vec(),
                    [&[0x04][..], &key[20..]].concat(),
                ],
            );
            f.inter(9000);
            assert_eq!(f.frames.len(), 1, "{bad:02x?}");
            assert_eq!(f.requests, [KeyframeReason::Malformed], "{bad:02x?}");
            let s = f.d.stats();
            assert_eq!(
                (s.malformed_packets, s.frames_dropped),
                (2, 3),
                "{bad:02x?}"
            );
            f.key(12000);
            assert_eq!(f.frames.len(), 2);
        }
    }

    /// Non-flexible mode descriptor with layer indices for spatial layer `sid`, PictureID
    /// `pid`, and (first packet of the picture only) a scalability structure.
    fn layered(pid: u8, sid: u8, inter: bool, ss: bool) -> impl Fn(bool, bool) -> Vec<u8> {
        move |begin, end| {
            let first = begin && sid == 0;
            let mut d = vec![
                0xA0 | if inter { 0x40 } else { 0 }
                    | be(begin, end)
                    | if ss && first { 0x02 } else { 0 },
                pid & 0x7F,
                (sid << 1) | u8::from(sid > 0),
                0x11,
            ];
            if ss && first {
                // Two layers, 320x180 and 640x360, no picture group.
                d.extend_from_slice(&[0x30, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68]);
            }
            d
        }
    }

    #[test]
    fn two_spatial_layers_make_a_superframe() {
        let mut f = Feed::new();
        // Key picture: base key frame in two packets, upper layer (predicted from the base
        // only, so P=0) of 300 bytes in three: sizes need two bytes each.
        let base = keyframe(320, 180, 100, 1);
        let upper = interframe(299, 2);
        let mut payloads = packets(&base, 60, layered(7, 0, false, true));
        payloads.extend(packets(&upper, 120, layered(7, 1, false, true)));
        f.picture(0, &payloads);
        let mut want = [&base[..], &upper[..]].concat();
        want.push(0xC9);
        want.extend_from_slice(&(base.len() as u16).to_le_bytes());
        want.extend_from_slice(&300u16.to_le_bytes());
        want.push(0xC9);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.frames[0].data, want);
        assert!(f.frames[0].keyframe);
        // The top layer's size, from the SS.
        assert_eq!(
            f.frames[0].format,
            Some(VideoFormat {
                width: 640,
                height: 360,
                may_reorder: false,
                config: None
            })
        );
        assert_eq!(superframe_frames(&want), Ok(vec![&base[..], &upper[..]]));
        // An inter picture of small layer frames: one size byte each.
        let base = interframe(40, 3);
        let upper = interframe(90, 4);
        let mut payloads = packets(&base, 100, layered(8, 0, true, false));
        payloads.extend(packets(&upper, 100, layered(8, 1, true, false)));
        f.picture(3000, &payloads);
        let want = [&base[..], &upper[..], &[0xC1, 41, 91, 0xC1]].concat();
        assert_eq!(f.datas()[1], &want[..]);
        assert!(!f.frames[1].keyframe && f.frames[1].format.is_none());
        // A picture where only the base layer was sent is output as is.
        let base = interframe(40, 5);
        f.picture(6000, &packets(&base, 100, layered(9, 0, true, false)));
        assert_eq!(f.datas()[2], &base[..]);
        assert_eq!(f.d.stats().malformed_packets, 0);
    }

    #[test]
    fn without_an_ss_the_size_comes_from_the_highest_layer_with_one() {
        let base = keyframe(320, 180, 50, 1);
        // Upper layer intra-only: its header carries its size.
        let upper = body(intra_only_header(0, 640, 360), 50, 2);
        let mut f = Feed::new();
        let mut payloads = packets(&base, 100, layered(1, 0, false, false));
        payloads.extend(packets(&upper, 100, layered(1, 1, false, false)));
        f.picture(0, &payloads);
        let size = f.frames[0].format.as_ref().map(|v| (v.width, v.height));
        assert_eq!(size, Some((640, 360)));
        // Upper layer predicted from the base (no size of its own): the base's.
        let upper = interframe(50, 2);
        let mut f = Feed::new();
        let mut payloads = packets(&base, 100, layered(1, 0, false, false));
        payloads.extend(packets(&upper, 100, layered(1, 1, false, false)));
        f.picture(0, &payloads);
        let size = f.frames[0].format.as_ref().map(|v| (v.width, v.height));
        assert_eq!(size, Some((320, 180)));
    }

    #[test]
    fn layer_frames_that_already_are_superframes_are_unpacked() {
        let a = interframe(50, 1);
        let b = interframe(60, 2);
        let c = interframe(70, 3);
        let inner = write_superframe(&[&a, &b], usize::MAX).unwrap();
        let mut f = Feed::new();
        f.key(0);
        let mut payloads = packets(&inner, 100, layered(2, 0, true, false));
        payloads.extend(packets(&c, 100, layered(2, 1, true, false)));
        f.picture(3000, &payloads);
        let want = [&a[..], &b, &c, &[0xC2, 51, 61, 71, 0xC2]].concat();
        assert_eq!(f.datas()[1], &want[..]);
        // A lone layer frame is passed on untouched, superframe or not.
        f.picture(6000, &packets(&inner, 100, layered(3, 0, true, false)));
        assert_eq!(f.datas()[2], &inner[..]);
        // A lone layer frame whose index does not add up is malformed.
        let mut bad = inner.clone();
        let at = bad.len() - 3;
        bad[at] += 1;
        let mut f2 = Feed::new();
        f2.key(0);
        f2.picture(3000, &packets(&bad, 100, layered(3, 0, true, false)));
        assert_eq!(f2.frames.len(), 1);
        assert_eq!(f2.d.stats().malformed_packets, 1);
        // So is a frame inside a superframe that does not start with a frame header.
        let no_header = write_superframe(&[&a, &[0x06, 0x00]], usize::MAX).unwrap();
        let mut f2 = Feed::new();
        f2.key(0);
        f2.picture(3000, &packets(&no_header, 100, layered(3, 0, true, false)));
        assert_eq!(f2.frames.len(), 1);
        assert_eq!(f2.d.stats().malformed_packets, 1);
        // As part of a picture of several layers too.
        let mut bad = inner.clone();
        let at = bad.len() - 3;
        bad[at] += 1;
        let mut payloads = packets(&bad, 100, layered(4, 0, true, false));
        payloads.extend(packets(&c, 100, layered(4, 1, true, false)));
        f.picture(9000, &payloads);
        assert_eq!(f.frames.len(), 3);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        assert_eq!(f.d.stats().malformed_packets, 1);
    }

    #[test]
    fn superframe_index_uses_the_fewest_size_bytes() {
        for (len, size_bytes) in [
            (1usize, 1usize),
            (255, 1),
            (256, 2),
            (65_535, 2),
            (65_536, 3),
        ] {
            let big = vec![0x11; len];
            let small = vec![0x22; 3];
            let sf = write_superframe(&[&small, &big], usize::MAX).unwrap();
            let marker = 0xC0 | ((size_bytes as u8 - 1) << 3) | 1;
            assert_eq!(sf.len(), len + 3 + 2 + 2 * size_bytes);
            assert_eq!((sf[len + 3], sf[sf.len() - 1]), (marker, marker));
            assert_eq!(superframe_frames(&sf), Ok(vec![&small[..], &big[..]]));
        }
        let one: &[u8] = &[0x86];
        assert_eq!(
            write_superframe(&[one; 9], usize::MAX),
            Err(SuperframeError::TooManyFrames)
        );
        // 8 one-byte frames: 8 + 2 + 8 bytes.
        assert!(write_superframe(&[one; 8], 18).is_ok());
        assert_eq!(
            write_superframe(&[one; 8], 17),
            Err(SuperframeError::TooLarge)
        );
        // Bytes that only look like an index at one end are a plain frame.
        assert_eq!(
            superframe_frames(&[0x86, 0xC0]),
            Ok(vec![&[0x86, 0xC0][..]])
        );
        assert_eq!(superframe_frames(&[]), Ok(vec![&[][..]]));
    }

    #[test]
    fn a_loss_in_the_upper_layer_alone_damages_the_picture() {
        let mut f = Feed::new();
        let base = keyframe(320, 180, 100, 1);
        let upper = interframe(299, 2);
        let mut payloads = packets(&base, 60, layered(1, 0, false, true));
        payloads.extend(packets(&upper, 120, layered(1, 1, false, true)));
        f.picture(0, &payloads);
        // The next picture: base layer whole, the middle packet of the upper layer lost.
        for p in packets(&interframe(100, 3), 60, layered(2, 0, true, false)) {
            f.send(3000, false, &p);
        }
        let upper = packets(&interframe(299, 4), 120, layered(2, 1, true, false));
        f.send(3000, false, &upper[0]);
        f.gap(1);
        f.send(3000, true, &upper[2]);
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        let s = f.d.stats();
        assert_eq!(
            (s.frames_dropped, s.lost_packets, s.malformed_packets),
            (2, 1, 0)
        );
    }

    #[test]
    fn broken_layer_frame_structure_is_malformed() {
        let a = interframe(150, 1);
        let b = interframe(150, 2);
        let pa = packets(&a, 100, plain_inter);
        let desc = |pid: u8, sid: u8, flags: u8| vec![0xE0 | flags, pid, sid << 1, 0];
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            // The first layer frame never ends before the next begins.
            (
                "unfinished",
                vec![pa[0].clone(), [&[0x4C][..], &b].concat()],
            ),
            // A continuation after the layer frame ended.
            (
                "no start",
                vec![[&[0x4C][..], &a].concat(), [&[0x44][..], &b].concat()],
            ),
            // The marker packet does not end its layer frame.
            ("marker inside", vec![pa[0].clone()]),
            // Spatial layers out of order, or changing inside a layer frame.
            (
                "order",
                vec![
                    [desc(1, 1, 0x0C), a.clone()].concat(),
                    [desc(1, 0, 0x0C), b.clone()].concat(),
                ],
            ),
            (
                "changed",
                vec![
                    [desc(1, 0, 0x08), a.clone()].concat(),
                    [desc(1, 1, 0x04), b.clone()].concat(),
                ],
            ),
            // The PictureID changes between layer frames.
            (
                "picture id",
                vec![
                    [desc(1, 0, 0x0C), a.clone()].concat(),
                    [desc(2, 1, 0x0C), b.clone()].concat(),
                ],
            ),
            // Nine layer frames: more than a superframe holds.
            ("nine", vec![[&[0x4C][..], &a].concat(); 9]),
        ];
        for (name, payloads) in cases {
            let mut f = Feed::new();
            f.key(0);
            f.picture(3000, &payloads);
            f.inter(6000);
            assert_eq!(f.frames.len(), 1, "{name}");
            assert_eq!(f.requests, [KeyframeReason::Malformed], "{name}");
            let s = f.d.stats();
            assert_eq!((s.malformed_packets, s.frames_dropped), (1, 2), "{name}");
            f.key(9000);
            assert_eq!(f.frames.len(), 2, "{name}");
        }
        // Eight layer frames are fine.
        let mut f = Feed::new();
        f.key(0);
        f.picture(3000, &vec![[&[0x4C][..], &a].concat(); 8]);
        assert_eq!(f.frames.len(), 2);
        assert_eq!(f.frames[1].data.last(), Some(&0xC7));
    }

    #[test]
    fn a_picture_whose_start_is_missing_is_dropped() {
        // After a gap: a loss, not malformed.
        let mut f = Feed::new();
        f.key(0);
        f.gap(1);
        let key = keyframe(320, 240, 250, 5);
        let p = packets(&key, 100, plain);
        f.picture(3000, &p[1..]);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        assert_eq!(f.d.stats().malformed_packets, 0);
        f.key(6000);
        assert_eq!(f.frames.len(), 2);
        // Without a gap: malformed.
        let mut f = Feed::new();
        f.key(0);
        f.picture(3000, &p[1..]);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        assert_eq!(f.d.stats().malformed_packets, 1);
        // Joined in the middle: waiting for the start.
        let mut f = Feed::new();
        f.picture(0, &p[1..]);
        assert_eq!(f.requests, [KeyframeReason::Start]);
        f.key(3000);
        assert_eq!(f.frames.len(), 1);
    }

    #[test]
    fn a_missing_marker_damages_the_picture_it_belonged_to() {
        let mut f = Feed::new();
        f.key(0);
        let p = packets(&interframe(150, 1), 100, plain_inter);
        f.send(3000, false, &p[0]);
        f.send(3000, false, &p[1]);
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        let key = f.key(9000);
        assert_eq!(f.datas()[1], &key[..]);
        let s = f.d.stats();
        assert_eq!((s.frames_dropped, s.frames_out), (2, 2));
    }

    #[test]
    fn only_a_key_frame_header_on_a_non_predicted_base_layer_is_a_key_frame() {
        let key = keyframe(320, 240, 50, 1);
        let intra = body(intra_only_header(0, 320, 240), 50, 1);
        let not_key: [(Vec<u8>, Vec<u8>); 4] = [
            // P=1 with a key frame header.
            ([&[0x4C][..], &key].concat(), key.clone()),
            // Base layer with SID 1.
            ([&[0x2C, 0x02, 0x00][..], &key].concat(), key.clone()),
            // P=0, but intra-only or inter.
            ([&[0x0C][..], &intra].concat(), intra.clone()),
            (
                [&[0x0C][..], &interframe(10, 1)].concat(),
                interframe(10, 1),
            ),
        ];
        for (payload, _) in &not_key {
            let mut f = Feed::new();
            f.picture(0, std::slice::from_ref(payload));
            assert!(f.frames.is_empty(), "{payload:02x?}");
            assert_eq!(f.requests, [KeyframeReason::Start]);
            assert_eq!(f.d.stats().malformed_packets, 0);
        }
        // After a key frame they are ordinary frames, passed on.
        let mut f = Feed::new();
        f.key(0);
        for (i, (payload, data)) in not_key.iter().enumerate() {
            f.picture(3000 * (i as u32 + 1), std::slice::from_ref(payload));
            assert_eq!(
                f.frames.last().map(|x| (&x.data, x.keyframe)),
                Some((data, false))
            );
        }
    }

    #[test]
    fn frame_headers_of_every_profile_are_parsed() {
        for profile in 0..4 {
            let key = FrameHeader {
                kind: FrameKind::Key,
                size: Some((1920, 1080)),
            };
            assert_eq!(
                parse_frame_header(&key_header(profile, 1920, 1080)),
                Ok(key)
            );
            let intra = FrameHeader {
                kind: FrameKind::IntraOnly,
                size: Some((65_536, 1)),
            };
            assert_eq!(
                parse_frame_header(&intra_only_header(profile, 65_536, 1)),
                Ok(intra)
            );
        }
        let inter = FrameHeader {
            kind: FrameKind::Inter,
            size: None,
        };
        assert_eq!(parse_frame_header(&[0x86, 0x00]), Ok(inter));
        // Profile 3 inter frame: the reserved bit shifts the fields by one.
        assert_eq!(parse_frame_header(&[0xB3, 0x00]), Ok(inter));
        let existing = FrameHeader {
            kind: FrameKind::ShowExisting,
            size: None,
        };
        // show_existing_frame, frame_to_show_map_idx = 5.
        assert_eq!(parse_frame_header(&[0x8D, 0x00]), Ok(existing));
        let mut bad_sync = key_header(0, 320, 240);
        bad_sync[2] ^= 0x10;
        let mut reserved = key_header(1, 320, 240);
        // Profile 1, RGB (color space 7): no color range, the reserved bit right after.
        reserved.truncate(5);
        reserved[4] = 0xF0;
        for (frame, error) in [
            (vec![0x46], Malformed::BadFrameMarker),
            (vec![0xB8], Malformed::ReservedBit),
            (bad_sync, Malformed::BadSyncCode),
            (
                key_header(0, 320, 240)[..6].to_vec(),
                Malformed::TruncatedHeader,
            ),
            (vec![], Malformed::TruncatedHeader),
            (vec![0x86], Malformed::TruncatedHeader),
            (reserved, Malformed::ReservedBit),
        ] {
            assert_eq!(parse_frame_header(&frame), Err(error), "{frame:02x?}");
        }
        // A malformed header in a picture is refused.
        let mut f = Feed::new();
        f.key(0);
        f.picture(3000, &[vec![0x4C, 0x46, 0x00]]);
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        assert_eq!(f.d.stats().malformed_packets, 1);
    }

    #[test]
    fn oversized_pictures_are_dropped() {
        let limits = DepacketizerLimits {
            max_frame_bytes: 500,
            max_parts_per_frame: 4,
            ..DepacketizerLimits::default()
        };
        // Too many bytes.
        let mut f = Feed::with(limits);
        f.key(0);
        f.picture(3000, &packets(&interframe(600, 1), 200, plain_inter));
        f.inter(6000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Oversized]);
        // Exactly the limit is fine.
        let mut f = Feed::with(limits);
        let key = keyframe(320, 240, 500 - key_header(0, 320, 240).len(), 1);
        f.picture(0, &packets(&key, 125, plain));
        assert_eq!(f.datas(), [&key[..]]);
        // Two layers exactly at the limit: the superframe index pushes them over it.
        let base = keyframe(320, 180, 200, 1);
        let upper = interframe(500 - base.len() - 1, 2);
        let mut payloads = packets(&base, 300, layered(1, 0, false, false));
        payloads.extend(packets(&upper, 300, layered(1, 1, false, false)));
        let mut f = Feed::with(limits);
        f.picture(0, &payloads);
        assert!(f.frames.is_empty());
        assert_eq!(f.requests, [KeyframeReason::Oversized]);
        assert_eq!(f.d.stats().frames_dropped, 1);
        // Too many packets.
        let mut f = Feed::with(limits);
        f.key(0);
        f.picture(3000, &packets(&interframe(100, 1), 20, plain_inter));
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Oversized]);
        assert_eq!(f.d.stats().frames_dropped, 1);
    }

    #[test]
    fn resync_counts_as_loss_and_padding_is_ignored() {
        let mut f = Feed::new();
        f.key(0);
        f.send(0, false, &[]);
        f.item(Ordered::Resync);
        f.inter(3000);
        assert_eq!(f.frames.len(), 1);
        assert_eq!(f.requests, [KeyframeReason::Loss]);
        f.key(500_000);
        f.gap(2);
        f.inter(503_000);
        assert_eq!(f.frames.len(), 2);
        assert_eq!(f.requests, [KeyframeReason::Loss, KeyframeReason::Loss]);
        let s = f.d.stats();
        assert_eq!(
            (s.ignored_packets, s.lost_packets, s.keyframe_requests),
            (1, 2, 2)
        );
    }

    #[test]
    fn flush_drops_an_unfinished_picture_without_calling_it_loss() {
        let mut f = Feed::new();
        f.key(0);
        let p = packets(&interframe(150, 1), 100, plain_inter);
        f.send(3000, false, &p[0]);
        f.d.flush();
        let s = f.d.stats();
        assert_eq!(
            (s.frames_unfinished, s.frames_dropped, s.frames_out),
            (1, 0, 1)
        );
        f.d.flush();
        assert_eq!(f.d.stats().frames_unfinished, 1);
    }

    /// Random packets (a fixed-seed generator, so failures reproduce) never panic and never
    /// break the output invariants; the fuzz target does the same at scale.
    #[test]
    fn random_input_keeps_the_invariants() {
        let mut state = 0x0fed_cba9_8765_4321u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = DepacketizerLimits {
            max_frame_bytes: 2000,
            max_parts_per_frame: 8,
            ..DepacketizerLimits::default()
        };
        let mut f = Feed::with(limits);
        let mut ts = 0u32;
        for _ in 0..20_000 {
            let r = next();
            match r % 16 {
                0 => f.gap(1 + (r >> 8) % 3),
                1 => f.item(Ordered::Resync),
                2 | 3 => {
                    ts = ts.wrapping_add(3000);
                    let layers = 1 + (r >> 8) as u8 % 3;
                    let mut payloads = Vec::new();
                    for sid in 0..layers {
                        let frame = if sid == 0 && r & 0x1000 != 0 {
                            keyframe(64, 48, (r >> 16) as usize % 300, r as u8)
                        } else {
                            interframe((r >> 24) as usize % 300, r as u8)
                        };
                        let chunk = 1 + (r >> 32) as usize % 200;
                        payloads.extend(packets(&frame, chunk, layered(1, sid, false, true)));
                    }
                    f.picture(ts, &payloads);
                }
                _ => {
                    if r & 0x100 != 0 {
                        ts = ts.wrapping_add(3000);
                    }
                    let len = (r >> 12) as usize % 40;
                    let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    f.send(ts, r & 0x200 != 0, &payload);
                }
            }
        }
        f.d.flush();
        let s = f.d.stats();
        assert_eq!(s.frames_out, f.frames.len() as u64);
        assert_eq!(
            s.keyframes_out,
            f.frames.iter().filter(|x| x.keyframe).count() as u64
        );
        assert_eq!(s.keyframe_requests, f.requests.len() as u64);
        assert!(s.keyframes_out > 10 && s.frames_out > s.keyframes_out);
        for frame in &f.frames {
            assert!(frame.data.len() <= limits.max_frame_bytes);
            assert_eq!(frame.keyframe, frame.format.is_some());
            let frames = superframe_frames(&frame.data).unwrap();
            for one in frames {
                assert!(parse_frame_header(one).is_ok());
            }
        }
    }
}
