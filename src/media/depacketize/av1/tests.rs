//! Depacketizer tests: the aggregation header in all its forms, the `rtc` payloader round
//! trip, loss, malformed input, limits and the keyframe / sequence header policy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtp::codec::av1::Av1Payloader;
use rtc::rtp::packetizer::Payloader;

use super::seq_header::tests::webrtc_720p;
use super::*;
use crate::media::RtpPacket;

const KEY: u8 = 0x10; // show_existing_frame 0, KEY_FRAME, show_frame 1
const INTER: u8 = 0x30; // show_existing_frame 0, INTER_FRAME, show_frame 1

/// An OBU as RTP senders send it: no size field.
fn obu(obu_type: u8, extension: Option<u8>, payload: &[u8]) -> Vec<u8> {
    let mut o = vec![(obu_type << 3) | if extension.is_some() { 0x04 } else { 0 }];
    o.extend(extension);
    o.extend_from_slice(payload);
    o
}

/// The same OBU in the low-overhead form the depacketizer writes.
fn sized(obu_type: u8, extension: Option<u8>, payload: &[u8]) -> Vec<u8> {
    let mut o = vec![(obu_type << 3) | 0x02 | if extension.is_some() { 0x04 } else { 0 }];
    o.extend(extension);
    write_leb128(payload.len(), &mut o);
    o.extend_from_slice(payload);
    o
}

/// A frame payload whose uncompressed header starts with `first`, `len` bytes long.
fn frame_payload(first: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![first];
    p.resize(len, fill);
    p
}

fn seq_payload() -> Vec<u8> {
    webrtc_720p()
}

/// A payload: aggregation header then the elements, each with a length except the last when
/// `w` is not 0.
fn packet(z: bool, y: bool, w: u8, n: bool, elements: &[&[u8]]) -> Vec<u8> {
    let mut p = vec![(u8::from(z) << 7) | (u8::from(y) << 6) | (w << 4) | (u8::from(n) << 3)];
    for (i, e) in elements.iter().enumerate() {
        if w == 0 || i + 1 < usize::from(w) {
            write_leb128(e.len(), &mut p);
        }
        p.extend_from_slice(e);
    }
    p
}

/// Feeds payloads straight into a depacketizer (sequence order, no reorder buffer).
struct Feed {
    d: Av1Depacketizer,
    seq: u16,
    t0: Instant,
    packets: u64,
    frames: Vec<Frame>,
    requests: Vec<KeyframeReason>,
}

impl Feed {
    fn new() -> Self {
        Self::with(DepacketizerLimits::default())
    }
    fn with(limits: DepacketizerLimits) -> Self {
        Self {
            d: Av1Depacketizer::new(limits),
            seq: 0,
            t0: Instant::now(),
            packets: 0,
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
        self.packets += 1;
        let arrival = self.t0 + Duration::from_millis(self.packets);
        self.item(Ordered::Packet(
            RtpPacket {
                sequence: self.seq,
                timestamp: ts,
                marker,
                ssrc: u32::MAX,
                payload_type: 45,
                payload: Bytes::copy_from_slice(payload),
            },
            arrival,
        ));
    }
    /// Sends the payloads of one TU, the marker on the last.
    fn tu(&mut self, ts: u32, payloads: &[Vec<u8>]) {
        for (i, p) in payloads.iter().enumerate() {
            self.send(ts, i + 1 == payloads.len(), p);
        }
    }
    fn gap(&mut self, lost: u64) {
        self.seq = self.seq.wrapping_add(lost as u16);
        self.item(Ordered::Gap { lost });
    }
    /// A keyframe TU in one packet (W = 2: sequence header, frame); returns its output.
    fn key(&mut self, ts: u32) -> Vec<u8> {
        let seq = seq_payload();
        let frame = frame_payload(KEY, 200, ts as u8);
        let p = packet(
            false,
            false,
            2,
            true,
            &[&obu(1, None, &seq), &obu(6, None, &frame)],
        );
        self.tu(ts, &[p]);
        [sized(1, None, &seq), sized(6, None, &frame)].concat()
    }
    /// A delta TU in one packet (W = 1); returns its output.
    fn delta(&mut self, ts: u32) -> Vec<u8> {
        let frame = frame_payload(INTER, 60, ts as u8);
        self.tu(
            ts,
            &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
        );
        sized(6, None, &frame)
    }
    fn datas(&self) -> Vec<&[u8]> {
        self.frames.iter().map(|f| &f.data[..]).collect()
    }
    fn keys(&self) -> Vec<bool> {
        self.frames.iter().map(|f| f.keyframe).collect()
    }
}

/// Splits a low-overhead OBU stream into `(type, has_extension, payload)`; panics unless every
/// OBU has its size field and the sizes add up exactly.
fn walk(mut data: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
    let mut obus = Vec::new();
    while let Some((&h, rest)) = data.split_first() {
        assert_eq!(h & 0x82, 0x02, "forbidden bit or no size field: {h:02X}");
        let ext = h & 0x04 != 0;
        let rest = if ext { &rest[1..] } else { rest };
        let (size, used) = read_leb128(rest).expect("size field");
        obus.push(((h >> 3) & 0x0F, ext, rest[used..used + size].to_vec()));
        data = &rest[used + size..];
    }
    obus
}

fn expected_av1c() -> Vec<u8> {
    let seq = seq_payload();
    let header = parse_sequence_header(&seq).unwrap();
    header.av1c(&sized(1, None, &seq))
}

#[test]
fn w_from_0_to_3_all_frame_the_same_obus() {
    let mut f = Feed::new();
    f.key(0);
    let meta = obu(5, None, &[1, 2, 3]);
    let fh = obu(3, None, &frame_payload(INTER, 20, 7));
    let tg = obu(4, None, &[9; 30]);
    let expected = [
        sized(5, None, &[1, 2, 3]),
        sized(3, None, &frame_payload(INTER, 20, 7)),
        sized(4, None, &[9; 30]),
    ]
    .concat();
    // W = 0: every element with its length.
    f.tu(3000, &[packet(false, false, 0, false, &[&meta, &fh, &tg])]);
    // W = 3: three elements, the last without length.
    f.tu(6000, &[packet(false, false, 3, false, &[&meta, &fh, &tg])]);
    // W = 1: one element per packet.
    f.tu(
        9000,
        &[
            packet(false, false, 1, false, &[&meta]),
            packet(false, false, 1, false, &[&fh]),
            packet(false, false, 1, false, &[&tg]),
        ],
    );
    // W = 2 then W = 1.
    f.tu(
        12_000,
        &[
            packet(false, false, 2, false, &[&meta, &fh]),
            packet(false, false, 1, false, &[&tg]),
        ],
    );
    assert_eq!(f.frames.len(), 5);
    for frame in &f.frames[1..] {
        assert_eq!(frame.data, expected);
        assert!(!frame.keyframe && frame.format.is_none());
    }
    assert!(f.requests.is_empty());
}

#[test]
fn w_counts_elements_and_the_last_runs_to_the_end() {
    // W = 3 with only two length-prefixed... the third (unprefixed) element is the rest.
    let mut f = Feed::new();
    f.key(0);
    let a = obu(5, None, &[1]);
    let b = obu(5, None, &[2, 2]);
    let c = obu(6, None, &frame_payload(INTER, 10, 3));
    let p = packet(false, false, 3, false, &[&a, &b, &c]);
    // The last element has no length: its bytes are just the rest of the packet.
    assert_eq!(p[1..], [&[2u8][..], &a, &[3], &b, &c].concat()[..]);
    f.tu(3000, &[p]);
    assert_eq!(
        f.datas()[1],
        [
            sized(5, None, &[1]),
            sized(5, None, &[2, 2]),
            sized(6, None, &frame_payload(INTER, 10, 3))
        ]
        .concat()
    );
}

#[test]
fn fragments_across_three_packets_reassemble() {
    let mut f = Feed::new();
    f.key(0);
    let frame = frame_payload(INTER, 900, 0x5A);
    let whole = obu(6, Some(0x28), &frame); // temporal_id 1, spatial_id 1
    let meta = obu(5, None, &[4, 4]);
    // Packet 1: metadata, then the first byte (just the OBU header) of the frame.
    // Packet 2: a middle fragment (the extension byte and part of the payload).
    // Packet 3: the end of the frame, then a padding OBU.
    let p1 = packet(false, true, 2, false, &[&meta, &whole[..1]]);
    let p2 = packet(true, true, 1, false, &[&whole[1..400]]);
    let p3 = packet(
        true,
        false,
        0,
        false,
        &[&whole[400..], &obu(15, None, &[0; 5])],
    );
    f.tu(3000, &[p1, p2, p3]);
    assert_eq!(
        f.datas()[1],
        [sized(5, None, &[4, 4]), sized(6, Some(0x28), &frame)].concat()
    );
    let obus = walk(f.datas()[1]);
    assert_eq!(obus[1].0, 6);
    assert!(obus[1].1, "extension byte kept");
}

#[test]
fn size_fields_are_rewritten_and_existing_ones_checked() {
    let mut f = Feed::new();
    f.key(0);
    // An OBU that already has its size field (allowed) and one large enough for a 2-byte size.
    let big = frame_payload(INTER, 300, 1);
    let with_size = sized(3, Some(0x08), &big);
    f.tu(3000, &[packet(false, false, 1, false, &[&with_size])]);
    assert_eq!(f.datas()[1], with_size);
    assert_eq!(f.datas()[1][2..4], [0xAC, 0x02], "300 as LEB128");
    // A size field that disagrees with the element is malformed.
    let mut bad = sized(6, None, &frame_payload(INTER, 10, 1));
    bad[1] = 9;
    f.tu(6000, &[packet(false, false, 1, false, &[&bad])]);
    assert_eq!(f.frames.len(), 2);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
    assert_eq!(f.d.stats().malformed_packets, 1);
}

#[test]
fn temporal_delimiters_tile_lists_and_padding_are_dropped() {
    let mut f = Feed::new();
    f.key(0);
    let frame = frame_payload(INTER, 10, 2);
    f.tu(
        3000,
        &[packet(
            false,
            false,
            0,
            false,
            &[
                &obu(2, None, &[]),
                &obu(8, None, &[1, 2]),
                &obu(6, None, &frame),
                &obu(15, None, &[0, 0, 0]),
            ],
        )],
    );
    assert_eq!(f.datas()[1], sized(6, None, &frame));
    // A TU with no frame at all is nothing to record (its packets are counted as ignored).
    f.tu(
        6000,
        &[packet(false, false, 1, false, &[&obu(2, None, &[])])],
    );
    assert_eq!(f.frames.len(), 2);
    assert_eq!(f.d.stats().ignored_packets, 1);
    assert!(f.requests.is_empty());
}

#[test]
fn keyframe_carries_format_and_av1c() {
    let mut f = Feed::new();
    let key = f.key(90_000);
    let d1 = f.delta(93_000);
    assert_eq!(f.datas(), [&key[..], &d1[..]]);
    assert_eq!(f.keys(), [true, false]);
    let format = f.frames[0].format.clone().unwrap();
    assert_eq!(
        (format.width, format.height, format.may_reorder),
        (1280, 720, false)
    );
    let config = format.config.unwrap();
    assert_eq!(config[..], expected_av1c()[..]);
    assert_eq!(config[0], 0x81);
    assert_eq!(f.frames[0].rtp_timestamp, 90_000);
    assert_eq!(f.frames[0].arrival, f.t0 + Duration::from_millis(1));
    assert_eq!(f.d.sequence_header().map(|h| h.max_frame_width), Some(1280));
    let s = f.d.stats();
    assert_eq!((s.frames_out, s.keyframes_out, s.frames_dropped), (2, 1, 0));
    assert!(!f.d.waiting_for_keyframe());
}

#[test]
fn arrival_is_the_first_packets() {
    let mut f = Feed::new();
    f.key(0);
    let frame = obu(6, None, &frame_payload(INTER, 100, 1));
    f.tu(
        3000,
        &[
            packet(false, true, 1, false, &[&frame[..50]]),
            packet(true, false, 1, false, &[&frame[50..]]),
        ],
    );
    assert_eq!(f.frames[1].arrival, f.t0 + Duration::from_millis(2));
}

#[test]
fn keyframe_without_sequence_header_gets_the_known_one() {
    let mut f = Feed::new();
    f.key(0);
    let frame = frame_payload(KEY, 50, 1);
    f.tu(
        3000,
        &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
    );
    let seq = sized(1, None, &seq_payload());
    assert_eq!(f.datas()[1], [&seq[..], &sized(6, None, &frame)].concat());
    assert!(f.frames[1].keyframe);
    assert_eq!(
        f.frames[1].format.as_ref().unwrap().config.as_deref(),
        Some(&expected_av1c()[..])
    );
    // Also after a loss (the sequence header cannot have changed without a new one sent).
    f.gap(3);
    f.tu(
        6000,
        &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
    );
    assert_eq!(f.keys(), [true, true, true]);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
}

#[test]
fn keyframe_without_any_sequence_header_is_missing_parameter_sets() {
    let mut f = Feed::new();
    let frame = frame_payload(KEY, 50, 1);
    f.tu(
        0,
        &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
    );
    assert!(f.frames.is_empty());
    assert_eq!(f.requests, [KeyframeReason::MissingParameterSets]);
    assert_eq!(f.d.stats().frames_dropped, 1);
    let key = f.key(3000);
    assert_eq!(f.datas(), [&key[..]]);
}

#[test]
fn delta_frames_before_the_first_keyframe_are_dropped_with_start() {
    let mut f = Feed::new();
    f.delta(0);
    f.delta(3000);
    assert_eq!(f.requests, [KeyframeReason::Start]);
    assert!(f.d.waiting_for_keyframe());
    let key = f.key(6000);
    let d = f.delta(9000);
    assert_eq!(f.datas(), [&key[..], &d[..]]);
    let s = f.d.stats();
    assert_eq!((s.frames_dropped, s.keyframe_requests), (2, 1));
    // A loss before anything was output is still "Start".
    let mut g = Feed::new();
    g.gap(5);
    assert_eq!(g.requests, [KeyframeReason::Start]);
    assert_eq!(g.d.stats().lost_packets, 5);
}

#[test]
fn show_existing_hidden_and_intra_frames_are_not_keyframes() {
    for first in [0x80, 0x00, 0x50, 0x70] {
        // show_existing_frame; hidden KEY_FRAME; INTRA_ONLY; SWITCH.
        let mut f = Feed::new();
        f.tu(
            0,
            &[packet(
                false,
                false,
                2,
                true,
                &[&obu(1, None, &seq_payload()), &obu(3, None, &[first, 0])],
            )],
        );
        assert!(f.frames.is_empty(), "{first:02X}");
        assert_eq!(f.requests, [KeyframeReason::Start]);
    }
    // A frame header as the first frame is enough (tile groups follow).
    let mut f = Feed::new();
    f.tu(
        0,
        &[packet(
            false,
            false,
            3,
            true,
            &[
                &obu(1, None, &seq_payload()),
                &obu(3, None, &[KEY, 0]),
                &obu(4, None, &[1; 9]),
            ],
        )],
    );
    assert_eq!(f.keys(), [true]);
}

#[test]
fn reduced_still_picture_header_makes_every_frame_key() {
    use super::seq_header::tests::BitWriter;
    let mut w = BitWriter::default();
    w.put(3, 0).flag(true).flag(true).put(5, 1);
    w.put(4, 7).put(4, 7).put(8, 63).put(8, 47);
    w.put(3, 0).put(3, 0);
    w.flag(false)
        .flag(false)
        .flag(false)
        .flag(false)
        .put(2, 0)
        .flag(false);
    w.flag(false);
    let seq = w.finish();
    let mut f = Feed::new();
    // The frame header of a reduced still picture does not start with the key frame bits.
    let frame = frame_payload(0xFF, 20, 0);
    f.tu(
        0,
        &[packet(
            false,
            false,
            2,
            true,
            &[&obu(1, None, &seq), &obu(6, None, &frame)],
        )],
    );
    assert_eq!(f.keys(), [true]);
    let format = f.frames[0].format.clone().unwrap();
    assert_eq!((format.width, format.height), (64, 48));
}

#[test]
fn loss_in_mid_tu_drops_until_the_next_keyframe() {
    let mut f = Feed::new();
    f.key(0);
    let frame = obu(6, None, &frame_payload(INTER, 3000, 9));
    f.send(
        3000,
        false,
        &packet(false, true, 1, false, &[&frame[..1000]]),
    );
    f.gap(1);
    f.send(
        3000,
        true,
        &packet(true, false, 1, false, &[&frame[2000..]]),
    );
    f.delta(6000);
    f.delta(9000);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    assert!(f.d.waiting_for_keyframe());
    let key = f.key(12_000);
    let d = f.delta(15_000);
    assert_eq!(f.frames.len(), 3);
    assert_eq!(f.datas()[1..], [&key[..], &d[..]]);
    let s = f.d.stats();
    assert_eq!(
        (s.frames_dropped, s.lost_packets, s.malformed_packets),
        (3, 1, 0)
    );
    assert_eq!(s.keyframe_requests, 1);
    // The next wait is reported again.
    f.gap(1);
    assert_eq!(f.requests, [KeyframeReason::Loss, KeyframeReason::Loss]);
}

#[test]
fn gap_before_a_tu_starting_with_a_fragment_damages_it() {
    let mut f = Feed::new();
    f.key(0);
    // The TU's first packet is lost: the next one continues an OBU it never saw. It would be
    // a keyframe (its frame header bits say so) if its start had arrived.
    f.gap(1);
    let frame = obu(6, None, &frame_payload(KEY, 100, 1));
    f.send(3000, true, &packet(true, false, 1, false, &[&frame[50..]]));
    assert_eq!(f.frames.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    let s = f.d.stats();
    assert_eq!((s.malformed_packets, s.frames_dropped), (0, 1));
    // Without a gap the same packet is malformed.
    let mut g = Feed::new();
    g.key(0);
    g.send(3000, true, &packet(true, false, 1, false, &[&frame[50..]]));
    assert_eq!(g.requests, [KeyframeReason::Malformed]);
    assert_eq!(g.d.stats().malformed_packets, 1);
}

#[test]
fn gap_before_a_tu_whose_frame_header_is_lost_damages_it() {
    let mut f = Feed::new();
    f.key(0);
    f.gap(1);
    // The packet with the frame header was lost; tile groups remain.
    f.send(
        3000,
        true,
        &packet(false, false, 1, false, &[&obu(4, None, &[1; 20])]),
    );
    assert_eq!(f.frames.len(), 1);
    assert_eq!(f.d.stats().malformed_packets, 0);
    assert_eq!(f.d.stats().frames_dropped, 1);
}

#[test]
fn missing_marker_drops_the_tu() {
    let mut f = Feed::new();
    f.key(0);
    f.send(
        3000,
        false,
        &packet(false, false, 1, false, &[&obu(6, None, &[INTER, 1])]),
    );
    let d = f.delta(6000);
    assert_eq!(f.frames.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
    assert_eq!(
        f.d.stats().frames_dropped,
        2,
        "the unfinished TU and the one after"
    );
    let key = f.key(9000);
    assert_eq!(f.datas()[1], key);
    assert_ne!(f.datas()[1], d);
}

#[test]
fn malformed_aggregation_and_leb128_are_rejected() {
    let frame = obu(6, None, &[INTER, 1, 2]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "length past the end",
            [vec![0x00, 10], frame.clone()].concat(),
        ),
        (
            "LEB128 longer than 8 bytes",
            [vec![0x00], vec![0x80; 8], vec![0x01]].concat(),
        ),
        ("LEB128 runs off the end", vec![0x00, 0x80, 0x80]),
        (
            "W = 3 but one element",
            [vec![0x30, frame.len() as u8], frame.clone()].concat(),
        ),
        ("empty element", vec![0x00, 0x00]),
        (
            "empty last element",
            [vec![0x20, frame.len() as u8], frame.clone()].concat(),
        ),
        (
            "Z without an open fragment",
            packet(true, false, 1, false, &[&frame]),
        ),
        ("N with Z", packet(true, false, 1, true, &[&frame])),
        ("Z with nothing after it", vec![0x80]),
        (
            "forbidden bit",
            packet(false, false, 1, false, &[&[0x80 | 0x30, 1]]),
        ),
        (
            "missing extension byte",
            packet(false, false, 1, false, &[&[0x34]]),
        ),
        (
            "empty frame header",
            packet(false, false, 1, false, &[&[0x30]]),
        ),
        (
            "bad size field",
            packet(false, false, 1, false, &[&[0x32, 0x80]]),
        ),
        (
            "Y on the marker packet",
            packet(false, true, 1, false, &[&frame]),
        ),
    ];
    for (what, payload) in cases {
        let mut f = Feed::new();
        f.key(0);
        f.send(3000, true, &payload);
        f.delta(6000);
        assert_eq!(f.frames.len(), 1, "{what}");
        assert_eq!(f.requests, [KeyframeReason::Malformed], "{what}");
        let s = f.d.stats();
        assert_eq!(s.malformed_packets, 1, "{what}");
        assert_eq!(s.frames_dropped, 2, "{what}");
        assert!(f.d.waiting_for_keyframe(), "{what}");
    }
}

#[test]
fn open_fragment_continued_without_z_is_malformed() {
    let mut f = Feed::new();
    f.key(0);
    let frame = obu(6, None, &frame_payload(INTER, 100, 1));
    f.send(3000, false, &packet(false, true, 1, false, &[&frame[..50]]));
    f.send(3000, true, &packet(false, false, 1, false, &[&frame[50..]]));
    assert_eq!(f.frames.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
    assert_eq!(f.d.stats().malformed_packets, 1);
}

#[test]
fn empty_payloads_and_bare_headers_are_ignored() {
    let mut f = Feed::new();
    f.key(0);
    f.send(3000, false, &[]);
    f.send(3000, false, &[0x00]);
    let frame = frame_payload(INTER, 5, 1);
    f.send(
        3000,
        true,
        &packet(false, false, 1, false, &[&obu(6, None, &frame)]),
    );
    assert_eq!(f.datas()[1], sized(6, None, &frame));
    assert_eq!(f.d.stats().ignored_packets, 2);
    // An empty continuation element is fine.
    let whole = obu(6, None, &frame);
    f.tu(
        6000,
        &[
            packet(false, true, 1, false, &[&whole[..3]]),
            packet(true, true, 1, false, &[&[]]),
            packet(true, false, 1, false, &[&whole[3..]]),
        ],
    );
    assert_eq!(f.datas()[2], sized(6, None, &frame));
}

#[test]
fn oversized_tus_are_dropped() {
    let limits = DepacketizerLimits {
        max_frame_bytes: 1000,
        max_parts_per_frame: 4,
        max_config_bytes: 64,
    };
    let frame = obu(6, None, &frame_payload(INTER, 700, 1));
    let small = obu(5, None, &[1]);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "bytes in fragments",
            vec![
                packet(false, true, 1, false, &[&frame]),
                packet(true, false, 1, false, &[&frame[1..]]),
            ],
        ),
        (
            "bytes in whole OBUs",
            vec![packet(false, false, 2, false, &[&frame, &frame])],
        ),
        (
            "OBUs",
            vec![packet(
                false,
                false,
                0,
                false,
                &[&small, &small, &small, &small, &frame[..20]],
            )],
        ),
        (
            "packets",
            (0..5)
                .map(|_| packet(false, false, 1, false, &[&small]))
                .collect(),
        ),
        (
            "sequence header",
            vec![packet(
                false,
                false,
                2,
                false,
                &[&obu(1, None, &[0; 70]), &frame],
            )],
        ),
    ];
    for (what, payloads) in cases {
        let mut f = Feed::with(limits);
        f.key(0);
        f.tu(3000, &payloads);
        f.delta(6000);
        assert_eq!(f.frames.len(), 1, "{what}");
        assert_eq!(f.requests, [KeyframeReason::Oversized], "{what}");
        assert_eq!(f.d.stats().frames_dropped, 2, "{what}");
        let key = f.key(9000);
        assert_eq!(f.datas()[1], key, "{what}");
    }
}

#[test]
fn resync_forgets_the_sequence_header() {
    let mut f = Feed::new();
    f.key(0);
    f.item(Ordered::Resync);
    let frame = frame_payload(KEY, 50, 1);
    f.tu(
        3000,
        &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
    );
    assert_eq!(f.frames.len(), 1);
    // Reported once: the wait that began with the resync goes on.
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    assert_eq!(f.d.stats().frames_dropped, 1);
    let key = f.key(6000);
    assert_eq!(f.datas()[1], key);
}

#[test]
fn new_sequence_header_on_a_keyframe_changes_the_format() {
    use super::seq_header::tests::BitWriter;
    let mut f = Feed::new();
    f.key(0);
    f.delta(3000);
    // 640x360, otherwise like the first.
    let mut w = BitWriter::default();
    w.put(3, 0)
        .put(2, 0)
        .put(2, 0)
        .put(5, 0)
        .put(12, 0)
        .put(5, 4);
    w.put(4, 9).put(4, 8).put(10, 639).put(9, 359).flag(false);
    w.put(3, 0)
        .put(4, 0)
        .flag(false)
        .flag(true)
        .flag(true)
        .put(3, 0);
    w.flag(false)
        .flag(false)
        .flag(false)
        .flag(false)
        .put(2, 0)
        .flag(false);
    w.flag(false);
    let seq = w.finish();
    let frame = frame_payload(KEY, 30, 1);
    f.tu(
        6000,
        &[packet(
            false,
            false,
            2,
            true,
            &[&obu(1, None, &seq), &obu(6, None, &frame)],
        )],
    );
    let format = f.frames[2].format.clone().unwrap();
    assert_eq!((format.width, format.height), (640, 360));
    assert_eq!(format.config.unwrap()[1], 4, "seq_level_idx");
    assert!(f.requests.is_empty());
    // A key frame without a sequence header now gets the new one.
    f.tu(
        9000,
        &[packet(false, false, 1, false, &[&obu(6, None, &frame)])],
    );
    assert_eq!(walk(f.datas()[3])[0], (1, false, seq));
}

#[test]
fn changed_sequence_header_on_a_delta_frame_is_damage() {
    let mut f = Feed::new();
    f.key(0);
    let mut seq = seq_payload();
    seq[2] ^= 0x01; // another operating_point_idc
    let frame = frame_payload(INTER, 30, 1);
    f.tu(
        3000,
        &[packet(
            false,
            false,
            2,
            false,
            &[&obu(1, None, &seq), &obu(6, None, &frame)],
        )],
    );
    f.delta(6000);
    assert_eq!(f.frames.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
    // The same sequence header repeated on a delta frame is fine.
    let mut g = Feed::new();
    g.key(0);
    g.tu(
        3000,
        &[packet(
            false,
            false,
            2,
            false,
            &[&obu(1, None, &seq_payload()), &obu(6, None, &frame)],
        )],
    );
    assert_eq!(g.keys(), [true, false]);
}

#[test]
fn unparsable_sequence_header_is_counted_and_dropped() {
    let mut f = Feed::new();
    let frame = frame_payload(KEY, 30, 1);
    f.tu(
        0,
        &[packet(
            false,
            false,
            2,
            true,
            &[&obu(1, None, &[0xE0]), &obu(6, None, &frame)],
        )],
    );
    assert!(f.frames.is_empty());
    let s = f.d.stats();
    assert_eq!((s.unparsed_config, s.frames_dropped), (1, 1));
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
}

#[test]
fn flush_counts_an_unfinished_tu() {
    let mut f = Feed::new();
    f.key(0);
    let frame = obu(6, None, &frame_payload(INTER, 100, 1));
    f.send(3000, false, &packet(false, true, 1, false, &[&frame[..50]]));
    f.d.flush();
    let s = f.d.stats();
    assert_eq!((s.frames_unfinished, s.frames_dropped), (1, 0));
    f.d.flush();
    assert_eq!(f.d.stats().frames_unfinished, 1);
}

/// Low-overhead TUs as an encoder writes them (temporal delimiter first), for the payloader.
fn encoder_tus() -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    let td = sized(2, None, &[]);
    let seq = sized(1, None, &seq_payload());
    let mut tus = Vec::new();
    // Keyframe: big enough for many fragments.
    let key = sized(6, None, &frame_payload(KEY, 5000, 0x11));
    tus.push((
        [&td[..], &seq, &key].concat(),
        [&seq[..], &key].concat(),
        true,
    ));
    // Small delta frames, aggregated with metadata.
    for i in 0..3u8 {
        let meta = sized(5, None, &[i; 7]);
        let frame = sized(6, None, &frame_payload(INTER, 40 + usize::from(i) * 500, i));
        tus.push((
            [&td[..], &meta, &frame].concat(),
            [&meta[..], &frame].concat(),
            false,
        ));
    }
    // A frame header with tile groups, two of them at exactly the MTU boundary region.
    let fh = sized(3, None, &frame_payload(INTER, 12, 0x22));
    let tiles: Vec<u8> = (0..5)
        .flat_map(|i| sized(4, None, &vec![i as u8; 1190 + i * 3]))
        .collect();
    tus.push((
        [&td[..], &fh, &tiles].concat(),
        [&fh[..], &tiles].concat(),
        false,
    ));
    // Two layers with extension headers (temporal_id / spatial_id), many tiny OBUs (W = 0).
    let l0 = sized(6, Some(0x00), &frame_payload(INTER, 300, 0x33));
    let l1 = sized(6, Some(0x08), &frame_payload(INTER, 2500, 0x44));
    let metas: Vec<u8> = (0..6).flat_map(|i| sized(5, None, &[i; 3])).collect();
    tus.push((
        [&td[..], &metas, &l0, &l1].concat(),
        [&metas[..], &l0, &l1].concat(),
        false,
    ));
    tus
}

#[test]
fn rtc_payloader_round_trip_at_mtu_1200() {
    let mut payloader = Av1Payloader::default();
    let mut f = Feed::new();
    let mut expected = Vec::new();
    let mut ws = [0usize; 4];
    let mut fragments = 0;
    for round in 0..3u32 {
        for (i, (input, output, key)) in encoder_tus().into_iter().enumerate() {
            let ts = (round * 10 + i as u32) * 3000;
            let payloads = payloader.payload(1200, &Bytes::from(input)).unwrap();
            for p in &payloads {
                assert!(p.len() <= 1200);
                ws[usize::from((p[0] >> 4) & 3)] += 1;
                fragments += usize::from(p[0] & 0x80 != 0);
            }
            let payloads: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
            f.tu(ts, &payloads);
            expected.push((output, key, ts));
        }
    }
    assert!(f.requests.is_empty(), "{:?}", f.requests);
    assert_eq!(f.frames.len(), expected.len());
    for (frame, (data, key, ts)) in f.frames.iter().zip(&expected) {
        assert_eq!(frame.data, *data, "ts {ts}");
        assert_eq!((frame.keyframe, frame.rtp_timestamp), (*key, *ts));
        assert_eq!(frame.format.is_some(), *key);
    }
    // The payloader used length-prefixed and counted elements, and fragments.
    assert!(ws[0] > 0 && ws[1] > 0 && ws[2] > 0, "{ws:?}");
    assert!(fragments > 10);
    let s = f.d.stats();
    assert_eq!((s.frames_out, s.keyframes_out), (expected.len() as u64, 3));
    assert_eq!(
        (s.frames_dropped, s.malformed_packets, s.ignored_packets),
        (0, 0, 0)
    );
}

/// A tiny deterministic generator for the mutation test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_streams_never_panic_and_output_only_valid_tus() {
    let limits = DepacketizerLimits {
        max_frame_bytes: 16 * 1024,
        max_parts_per_frame: 64,
        max_config_bytes: 256,
    };
    let mut payloader = Av1Payloader::default();
    // (timestamp, payload, marker) of a clean stream.
    let mut clean = Vec::new();
    for (i, (input, _, _)) in encoder_tus().into_iter().enumerate() {
        let payloads = payloader.payload(1200, &Bytes::from(input)).unwrap();
        let n = payloads.len();
        for (j, p) in payloads.into_iter().enumerate() {
            clean.push((i as u32 * 3000, p.to_vec(), j + 1 == n));
        }
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut keys, mut deltas) = (0, 0);
    for _ in 0..400 {
        let mut f = Feed::with(limits);
        for round in 0..3u32 {
            for (ts, payload, marker) in &clean {
                let mut p = payload.clone();
                let mut ts = ts + round * 100_000;
                let mut marker = *marker;
                match rng.below(48) {
                    0 => {
                        let i = rng.below(p.len());
                        p[i] = rng.next() as u8;
                    }
                    1 => p.truncate(rng.below(p.len() + 1)),
                    2 => {
                        f.gap(1);
                        continue;
                    }
                    3 => p[0] ^= 1 << rng.below(8),
                    4 => ts = ts.wrapping_add(1),
                    5 => p.extend((0..rng.below(20)).map(|_| rng.next() as u8)),
                    6 => marker = !marker,
                    7 => f.item(Ordered::Resync),
                    _ => {}
                }
                f.send(ts, marker, &p);
            }
        }
        f.d.flush();
        for frame in &f.frames {
            let obus = walk(&frame.data);
            assert!(obus.iter().all(|o| ![2, 8, 15].contains(&o.0)));
            assert!(frame.data.len() <= limits.max_frame_bytes + limits.max_config_bytes);
            if frame.keyframe {
                keys += 1;
                let config = frame.format.as_ref().unwrap().config.clone().unwrap();
                assert_eq!(config[0], 0x81);
                assert!(obus.iter().any(|o| o.0 == 1));
            } else {
                deltas += 1;
                assert!(frame.format.is_none());
            }
        }
        let s = f.d.stats();
        assert_eq!(s.frames_out, f.frames.len() as u64);
        assert_eq!(s.keyframe_requests, f.requests.len() as u64);
    }
    // Not vacuous: damage is local, so most of the stream still comes out.
    assert!(
        keys > 200 && deltas > 1000,
        "{keys} keyframes, {deltas} others"
    );
}
