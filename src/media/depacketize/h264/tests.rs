//! Depacketizer tests: every RTP packet kind, loss, malformed input, and the IDR policy.

use bytes::Bytes;

use super::*;
use crate::testkit::clip::Clip;
use std::time::Instant;

use crate::media::depacketize::{
    DepacketizerLimits as H264Config, KeyframeReason, VideoDepacketizer, VideoOutput,
};
use crate::media::reorder::Ordered;
use crate::media::{Frame as AccessUnit, RtpPacket, VideoFormat};

/// The real SPS and PPS of the test clip, so SPS parsing sees a valid stream.
fn params() -> (Vec<u8>, Vec<u8>) {
    let clip = Clip::builtin();
    let find = |t: u8| {
        clip.video[0]
            .nals
            .iter()
            .find(|n| n[0] & 0x1F == t)
            .unwrap()
            .to_vec()
    };
    (find(7), find(8))
}

/// A slice NAL unit; `first` sets `first_mb_in_slice == 0` (the first slice of a picture).
fn slice(idr: bool, first: bool, len: usize, fill: u8) -> Vec<u8> {
    let mut nal = vec![
        if idr { 0x65 } else { 0x41 },
        if first { 0x88 } else { 0x40 },
    ];
    nal.resize(len, fill);
    nal
}

fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
    nals.iter()
        .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
        .collect()
}

fn stap_a(nals: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![0x78];
    for n in nals {
        out.extend_from_slice(&(n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
    }
    out
}

/// Splits a NAL unit into FU-A payloads of at most `chunk` fragment bytes.
fn fu_a(nal: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let body = &nal[1..];
    let parts: Vec<&[u8]> = body.chunks(chunk).collect();
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut fu = vec![(nal[0] & 0xE0) | 28, nal[0] & 0x1F];
            if i == 0 {
                fu[1] |= 0x80;
            }
            if i == n - 1 {
                fu[1] |= 0x40;
            }
            fu.extend_from_slice(part);
            fu
        })
        .collect()
}

/// Feeds payloads straight into a depacketizer (sequence order, no reorder buffer).
struct Feed {
    d: H264Depacketizer,
    seq: u16,
    aus: Vec<AccessUnit>,
    requests: Vec<KeyframeReason>,
    infos: Vec<VideoFormat>,
}

impl Feed {
    fn new() -> Self {
        Self::with(H264Config::default())
    }
    fn with(config: H264Config) -> Self {
        Self {
            d: H264Depacketizer::new(config),
            seq: 0,
            aus: Vec::new(),
            requests: Vec::new(),
            infos: Vec::new(),
        }
    }
    fn item(&mut self, item: Ordered) {
        let (aus, requests, infos) = (&mut self.aus, &mut self.requests, &mut self.infos);
        self.d.push(item, &mut |o| match o {
            VideoOutput::Frame(au) => {
                if let Some(format) = &au.format
                    && infos.last() != Some(format)
                {
                    infos.push(format.clone());
                }
                aus.push(au)
            }
            VideoOutput::KeyframeNeeded(r) => requests.push(r),
        });
    }
    fn send(&mut self, ts: u32, marker: bool, payload: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        self.item(Ordered::Packet(
            RtpPacket {
                sequence: self.seq,
                timestamp: ts,
                marker,
                ssrc: u32::MAX,
                payload_type: 102,
                payload: Bytes::copy_from_slice(payload),
            },
            Instant::now(),
        ));
    }
    /// Sends payloads of one access unit, the marker on the last.
    fn frame(&mut self, ts: u32, payloads: &[Vec<u8>]) {
        for (i, p) in payloads.iter().enumerate() {
            self.send(ts, i + 1 == payloads.len(), p);
        }
    }
    fn gap(&mut self, lost: u64) {
        self.seq = self.seq.wrapping_add(lost as u16);
        self.item(Ordered::Gap { lost });
    }
    /// An IDR access unit as WebRTC senders send it: STAP-A(SPS, PPS), slices (first one as
    /// FU-A), marker on the last.
    fn idr(&mut self, ts: u32) -> Vec<u8> {
        let (sps, pps) = params();
        let s1 = slice(true, true, 300, 0x11);
        let s2 = slice(true, false, 40, 0x22);
        let mut payloads = vec![stap_a(&[&sps, &pps])];
        payloads.extend(fu_a(&s1, 100));
        payloads.push(s2.clone());
        self.frame(ts, &payloads);
        annex_b(&[&sps, &pps, &s1, &s2])
    }
    /// A two-slice P frame of single NAL packets.
    fn p(&mut self, ts: u32) -> Vec<u8> {
        let s1 = slice(false, true, 30, ts as u8);
        let s2 = slice(false, false, 20, ts as u8);
        self.frame(ts, &[s1.clone(), s2.clone()]);
        annex_b(&[&s1, &s2])
    }
    fn datas(&self) -> Vec<&[u8]> {
        self.aus.iter().map(|a| &a.data[..]).collect()
    }
}

#[test]
fn single_nal_stap_a_and_fu_a_make_one_access_unit_each_frame() {
    let mut f = Feed::new();
    let idr = f.idr(1000);
    let p1 = f.p(4000);
    let p2 = f.p(7000);
    assert_eq!(f.datas(), [&idr[..], &p1[..], &p2[..]]);
    assert_eq!(
        f.aus
            .iter()
            .map(|a| (a.rtp_timestamp, a.keyframe))
            .collect::<Vec<_>>(),
        [(1000, true), (4000, false), (7000, false)]
    );
    assert!(f.requests.is_empty());
    assert_eq!(f.infos.len(), 1);
    assert_eq!((f.infos[0].width, f.infos[0].height), (320, 240));
    let s = f.d.stats();
    assert_eq!((s.frames_out, s.keyframes_out, s.frames_dropped), (3, 1, 0));
    assert!(!f.d.waiting_for_keyframe());
}

#[test]
fn fu_a_single_fragment_and_empty_middle_fragments_reassemble() {
    let mut f = Feed::new();
    f.idr(0);
    let nal = slice(false, true, 10, 0x33);
    // Start, an empty middle fragment (allowed by RFC 6184 §5.8), end.
    let payloads = vec![
        [&[0x5C, 0x81][..], &nal[1..5]].concat(),
        vec![0x5C, 0x01],
        [&[0x5C, 0x41][..], &nal[5..]].concat(),
    ];
    f.frame(3000, &payloads);
    assert_eq!(f.datas()[1], annex_b(&[&nal]));
}

#[test]
fn loss_inside_fu_a_drops_until_the_next_idr() {
    let mut f = Feed::new();
    f.idr(0);
    let (sps, pps) = params();
    let s1 = slice(true, true, 300, 0x11);
    let frags = fu_a(&s1, 100);
    // The second fragment of a new IDR is lost.
    f.send(3000, false, &stap_a(&[&sps, &pps]));
    f.send(3000, false, &frags[0]);
    f.gap(1);
    f.send(3000, true, &frags[2]);
    // Following P frames reference the broken picture: dropped.
    f.p(6000);
    f.p(9000);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    assert!(f.d.waiting_for_keyframe());
    let idr = f.idr(12000);
    let p = f.p(15000);
    assert_eq!(f.aus.len(), 3);
    assert_eq!(f.datas()[1..], [&idr[..], &p[..]]);
    let s = f.d.stats();
    assert_eq!((s.frames_dropped, s.lost_packets), (3, 1));
}

#[test]
fn stream_starting_without_idr_waits_for_one() {
    let mut f = Feed::new();
    f.p(100);
    f.p(200);
    assert!(f.aus.is_empty());
    assert_eq!(f.requests, [KeyframeReason::Start]);
    let idr = f.idr(300);
    assert_eq!(f.datas(), [&idr[..]]);
    assert_eq!(f.d.stats().frames_dropped, 2);
}

#[test]
fn stream_joined_in_the_middle_of_a_frame_drops_it() {
    let mut f = Feed::new();
    // First packet is the second slice of an IDR: its start was never seen.
    f.send(0, true, &slice(true, false, 30, 1));
    assert!(f.aus.is_empty());
    assert_eq!(f.requests, [KeyframeReason::Start]);
    let idr = f.idr(3000);
    assert_eq!(f.datas(), [&idr[..]]);
}

#[test]
fn sps_pps_only_in_a_stap_a_of_their_own_are_inserted_before_idrs() {
    let (sps, pps) = params();
    let mut f = Feed::new();
    // Parameter sets in their own access unit, then IDRs carrying only slices.
    f.frame(0, &[stap_a(&[&sps, &pps])]);
    let s1 = slice(true, true, 50, 1);
    let s2 = slice(true, false, 50, 2);
    f.frame(3000, &[s1.clone(), s2.clone()]);
    f.p(6000);
    f.frame(9000, &[s1.clone(), s2.clone()]);
    let expected_idr = annex_b(&[&sps, &pps, &s1, &s2]);
    assert_eq!(f.aus.len(), 3);
    assert_eq!(f.aus[0].data, expected_idr);
    assert!(f.aus[0].keyframe);
    assert_eq!(f.aus[2].data, expected_idr);
    assert!(f.requests.is_empty());
}

#[test]
fn parameter_sets_are_moved_first_in_an_idr() {
    let (sps, pps) = params();
    let sei = vec![0x06, 0x05, 0x01, 0xAA, 0x80];
    let s1 = slice(true, true, 50, 1);
    let mut f = Feed::new();
    // Raspberry Ninja style: AUD, SEI, SPS, PPS, slice, all in one STAP-A.
    f.frame(0, &[stap_a(&[&[0x09, 0xF0], &sei, &sps, &pps, &s1])]);
    assert_eq!(f.datas(), [&annex_b(&[&sps, &pps, &sei, &s1])[..]]);
}

#[test]
fn idr_without_known_parameter_sets_is_dropped() {
    let mut f = Feed::new();
    f.frame(0, &[slice(true, true, 50, 1)]);
    assert!(f.aus.is_empty());
    assert_eq!(f.requests, [KeyframeReason::MissingParameterSets]);
    let idr = f.idr(3000);
    assert_eq!(f.datas(), [&idr[..]]);
}

#[test]
fn access_unit_delimiters_are_stripped() {
    let mut f = Feed::new();
    let idr = f.idr(0);
    let s = slice(false, true, 20, 5);
    f.frame(3000, &[vec![0x09, 0x30], s.clone()]);
    assert_eq!(f.datas(), [&idr[..], &annex_b(&[&s])[..]]);
}

#[test]
fn malformed_stap_a_is_dropped_not_a_panic() {
    let (sps, pps) = params();
    let bad: Vec<Vec<u8>> = vec![
        // One trailing byte after a valid NAL (panics rtc 0.21.1's depacketizer).
        [stap_a(&[&sps]), vec![0x00]].concat(),
        // Length runs past the end.
        vec![0x78, 0x00, 0x10, 0x67, 0x42],
        // Zero length.
        vec![0x78, 0x00, 0x00, 0x00, 0x01, 0x67],
        // Header only.
        vec![0x78],
        // A nested aggregation packet inside.
        stap_a(&[&[0x78, 0x00]]),
    ];
    for payload in bad {
        let mut f = Feed::new();
        f.idr(0);
        f.frame(
            3000,
            &[
                stap_a(&[&sps, &pps]),
                payload.clone(),
                slice(true, true, 9, 1),
            ],
        );
        f.p(6000);
        assert_eq!(f.aus.len(), 1, "{payload:02x?}");
        assert_eq!(f.requests, [KeyframeReason::Malformed]);
        assert_eq!(f.d.stats().malformed_packets, 1);
    }
}

#[test]
fn fu_a_after_a_lost_start_is_dropped() {
    let s1 = slice(false, true, 300, 7);
    let frags = fu_a(&s1, 100);
    // Without a reported gap (e.g. the stream began mid-NAL) and with one.
    for with_gap in [false, true] {
        let mut f = Feed::new();
        f.idr(0);
        if with_gap {
            f.gap(1);
        }
        f.frame(3000, &frags[1..]);
        f.p(6000);
        assert_eq!(f.aus.len(), 1);
        assert_eq!(f.d.stats().frames_dropped, 2);
        assert_eq!(f.requests.len(), 1);
    }
}

#[test]
fn broken_fu_a_sequences_are_malformed() {
    let s1 = slice(false, true, 300, 7);
    let frags = fu_a(&s1, 100);
    let cases: Vec<Vec<Vec<u8>>> = vec![
        // A second start while the first NAL is open (its end was lost).
        vec![
            frags[0].clone(),
            frags[0].clone(),
            frags[1].clone(),
            frags[2].clone(),
        ],
        // Start and end bits both set.
        vec![vec![0x5C, 0xC1, 1, 2]],
        // FU-A carrying a reserved / aggregate type.
        vec![vec![0x5C, 0x98, 1, 2]],
        // Too short for an FU header.
        vec![vec![0x5C]],
        // Marker on a fragment that is not the end.
        vec![frags[0].clone(), frags[1].clone()],
        // A single NAL unit while a fragmented one is open.
        vec![
            frags[0].clone(),
            slice(false, false, 5, 9),
            frags[2].clone(),
        ],
    ];
    for payloads in cases {
        let mut f = Feed::new();
        f.idr(0);
        f.frame(3000, &payloads);
        assert_eq!(f.aus.len(), 1, "{payloads:02x?}");
        assert_eq!(f.requests, [KeyframeReason::Malformed], "{payloads:02x?}");
        assert!(f.d.stats().malformed_packets >= 1);
    }
}

#[test]
fn timestamp_change_without_marker_drops_the_previous_frame() {
    let mut f = Feed::new();
    f.idr(0);
    f.send(3000, false, &slice(false, true, 10, 1));
    // The marker packet of 3000 never came; 6000 starts.
    f.p(6000);
    assert_eq!(f.aus.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
    assert_eq!(f.d.stats().frames_dropped, 2);
}

#[test]
fn interleaved_mode_packets_are_unsupported_and_reserved_types_ignored() {
    for t in [25u8, 26, 27, 29] {
        let mut f = Feed::new();
        f.idr(0);
        f.frame(3000, &[vec![t, 0, 0, 0, 0]]);
        f.p(6000);
        assert_eq!(f.aus.len(), 1);
        assert_eq!(f.d.stats().unsupported_packets, 1);
    }
    let mut f = Feed::new();
    f.idr(0);
    for t in [0u8, 30, 31] {
        f.send(3000, false, &[t, 1, 2]);
    }
    // Padding-only packet: empty payload.
    f.send(3000, false, &[]);
    let p = f.p(3000);
    assert_eq!(f.datas()[1], &p[..]);
    assert_eq!(f.d.stats().ignored_packets, 4);
    assert!(f.requests.is_empty());
}

#[test]
fn forbidden_bit_marks_the_frame_damaged() {
    let mut f = Feed::new();
    f.idr(0);
    f.frame(3000, &[vec![0xC1, 0x88, 1, 2]]);
    assert_eq!(f.aus.len(), 1);
    assert_eq!(f.d.stats().malformed_packets, 1);
}

#[test]
fn oversized_access_units_are_dropped() {
    let mut f = Feed::with(H264Config {
        max_frame_bytes: 1000,
        ..H264Config::default()
    });
    f.idr(0);
    let big = slice(false, true, 600, 1);
    f.frame(3000, &[big.clone(), big]);
    f.p(6000);
    assert_eq!(f.aus.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Oversized]);
    // NAL count bound.
    let mut f = Feed::with(H264Config {
        max_parts_per_frame: 8,
        ..H264Config::default()
    });
    f.idr(0);
    let nals: Vec<Vec<u8>> = (0..9).map(|i| slice(false, i == 0, 5, 3)).collect();
    f.frame(3000, &nals);
    assert_eq!(f.aus.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Oversized]);
    // Oversized parameter set.
    let mut f = Feed::new();
    let mut sps = params().0;
    sps.resize(2000, 0x55);
    f.frame(0, &[sps]);
    assert_eq!(f.requests, [KeyframeReason::Malformed]);
}

#[test]
fn rtp_timestamp_wrap_is_just_another_timestamp() {
    let mut f = Feed::new();
    f.idr(u32::MAX - 2999);
    f.p(u32::MAX);
    f.p(2999);
    let ts: Vec<u32> = f.aus.iter().map(|a| a.rtp_timestamp).collect();
    assert_eq!(ts, [u32::MAX - 2999, u32::MAX, 2999]);
}

#[test]
fn gap_between_frames_waits_for_idr_and_accepts_an_idr_that_starts_cleanly() {
    let mut f = Feed::new();
    f.idr(0);
    f.p(3000);
    f.gap(3);
    f.p(9000);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    let idr = f.idr(12000);
    assert_eq!(f.aus.len(), 3);
    assert_eq!(f.aus[2].data, idr);
}

#[test]
fn resync_counts_as_loss() {
    let mut f = Feed::new();
    f.idr(0);
    f.item(Ordered::Resync);
    f.p(3000);
    assert_eq!(f.aus.len(), 1);
    assert_eq!(f.requests, [KeyframeReason::Loss]);
    f.idr(500_000);
    assert_eq!(f.aus.len(), 2);
}

#[test]
fn keyframe_request_is_reported_again_after_recovery() {
    let mut f = Feed::new();
    f.idr(0);
    f.gap(1);
    f.p(3000);
    f.idr(6000);
    f.gap(1);
    f.p(9000);
    assert_eq!(f.requests, [KeyframeReason::Loss, KeyframeReason::Loss]);
    assert_eq!(f.d.stats().keyframe_requests, 2);
}

#[test]
fn flush_drops_an_unfinished_frame_without_calling_it_loss() {
    let mut f = Feed::new();
    f.idr(0);
    f.send(3000, false, &slice(false, true, 10, 1));
    f.d.flush();
    assert_eq!(f.d.stats().frames_unfinished, 1);
    assert_eq!(f.d.stats().frames_dropped, 0);
    assert_eq!(f.aus.len(), 1);
}

#[test]
fn nal_units_that_would_forge_start_codes_are_malformed() {
    for bad in [
        vec![0x41, 0x88, 0x00, 0x00, 0x01, 0x65, 0x88],
        vec![0x41, 0x88, 0x00, 0x00, 0x00, 0x07],
        vec![0x41, 0x88, 0x00, 0x00, 0x02, 0x07],
    ] {
        let mut f = Feed::new();
        f.idr(0);
        f.frame(3000, std::slice::from_ref(&bad));
        // As an FU-A too: checked on the reassembled NAL unit.
        f.idr(6000);
        f.frame(9000, &fu_a(&bad, 2));
        assert_eq!(f.aus.len(), 2, "{bad:02x?}");
        assert_eq!(f.d.stats().malformed_packets, 2);
    }
    // Emulation prevention (00 00 03) is fine.
    let mut f = Feed::new();
    f.idr(0);
    let ok = vec![0x41, 0x88, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x01, 0x07];
    f.frame(3000, std::slice::from_ref(&ok));
    assert_eq!(f.datas()[1], annex_b(&[&ok]));
}

/// Zero bytes after a NAL unit's last 1 bit are padding (Annex B trailing_zero_8bits, which
/// OpenH264 in Chrome leaves in its RTP payloads): stripped, not taken for damage.
#[test]
fn trailing_zero_bytes_are_stripped_not_malformed() {
    let padded = vec![0x41, 0x88, 0x07, 0x00, 0x00];
    let stripped = vec![0x41, 0x88, 0x07];
    let mut f = Feed::new();
    f.idr(0);
    f.frame(3000, std::slice::from_ref(&padded));
    f.frame(6000, &fu_a(&padded, 2));
    assert_eq!(f.d.stats().malformed_packets, 0);
    assert_eq!(f.datas()[1], annex_b(&[&stripped]));
    assert_eq!(f.datas()[2], annex_b(&[&stripped]));
}

/// Chrome's keyframe STAP-A as captured from Chromium 156 (OpenH264, 320x180): libwebrtc's SPS
/// VUI rewriter pads the rewritten SPS with a whole zero byte after its stop bit. Taking that
/// for damage threw away every keyframe at such resolutions (issue 9: 161 of 718 frames
/// written, "keyframe needed reason=Malformed").
#[test]
fn chromes_rewritten_sps_with_a_trailing_zero_byte_starts_the_stream() {
    let sps: Vec<u8> = vec![
        0x67, 0x42, 0xc0, 0x15, 0x8c, 0x8d, 0x40, 0xa0, 0xcb, 0xcf, 0x35, 0x06, 0x06, 0x06, 0x07,
        0x84, 0x42, 0x35, 0x00,
    ];
    let pps: Vec<u8> = vec![0x68, 0xce, 0x3c, 0x80];
    let idr = slice(true, true, 200, 0x33);
    let mut f = Feed::new();
    f.frame(0, &[stap_a(&[&sps, &pps]), idr.clone()]);
    assert_eq!(f.d.stats().malformed_packets, 0);
    assert_eq!(f.aus.len(), 1);
    assert!(f.aus[0].keyframe);
    assert_eq!(f.datas()[0], annex_b(&[&sps[..18], &pps, &idr]));
}

#[test]
fn a_buffer_given_back_holds_the_next_frame_unless_it_is_much_larger() {
    let mut f = Feed::new();
    f.idr(0);
    let p1 = f.p(3000);
    // A written frame's buffer, given back: the next frame is assembled in it, intact.
    let mut given = f.aus.pop().unwrap().data;
    given.reserve(64);
    let at = given.as_ptr();
    f.d.recycle(given);
    let p2 = f.p(6000);
    assert_eq!(f.aus.last().unwrap().data, p2);
    assert_eq!(f.aus.last().unwrap().data.as_ptr(), at);
    assert_ne!(p1, p2);
    // One far larger than the frames now (a keyframe's, say) is not kept.
    f.d.recycle(Vec::with_capacity(1 << 20));
    f.p(9000);
    assert!(f.aus.last().unwrap().data.capacity() < 1 << 16);
    assert_eq!(f.d.stats().frames_out, 4);
}
