//! End to end through the RTP half of the core: the built-in clip is packetized the way a
//! WebRTC sender does it (`rtc`'s H.264 payloader, MTU 1200), neighbouring packets are swapped
//! and some duplicated, and the reorder buffer plus depacketizers must give back every access
//! unit and Opus packet byte for byte.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ninjarec::media::depacketize::h264::H264Depacketizer;
use ninjarec::media::depacketize::opus::OpusDepacketizer;
use ninjarec::media::depacketize::{VideoDepacketizer, VideoOutput};
use ninjarec::media::reorder::{Ordered, ReorderBuffer};
use ninjarec::media::{Frame, OpusPacket, RtpPacket};
use ninjarec::testkit::clip::Clip;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;

use crate::support::sim::{Rng, annex_b};

/// Swaps about a third of neighbouring packets and duplicates about one in twenty, then
/// serializes and parses each packet, as if it came off the wire.
fn disturb(packets: Vec<RtpPacket>, seed: u64) -> Vec<RtpPacket> {
    let mut rng = Rng::new(seed);
    let mut packets = packets;
    let mut i = 0;
    while i + 1 < packets.len() {
        if rng.next().is_multiple_of(3) {
            packets.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(packets.len() * 21 / 20);
    for p in packets {
        let wire = p.to_bytes();
        if rng.next().is_multiple_of(20) {
            out.push(RtpPacket::parse(&wire).unwrap());
        }
        out.push(RtpPacket::parse(&wire).unwrap());
    }
    out
}

#[test]
fn the_whole_clip_survives_packetization_and_reordering() {
    let clip = Clip::builtin();
    let ts_base: u32 = u32::MAX - 100_000; // the RTP timestamp wraps during the clip
    let mut seq: u16 = 65_000; // and so does the sequence number

    let mut payloader = H264Payloader::default();
    let mut packets = Vec::new();
    for frame in &clip.video {
        let payloads = payloader
            .payload(1200, &Bytes::from(annex_b(&frame.nals)))
            .unwrap();
        assert!(!payloads.is_empty());
        let n = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            assert!(payload.len() <= 1200);
            packets.push(RtpPacket {
                sequence: seq,
                timestamp: ts_base.wrapping_add(frame.pts_90k as u32),
                marker: i + 1 == n,
                ssrc: 0xFFFF_FFFF,
                payload_type: 102,
                payload,
            });
            seq = seq.wrapping_add(1);
        }
    }
    let sent = packets.len();
    // FU-A, STAP-A and single NAL packets are all exercised.
    let kinds = |t: u8| packets.iter().filter(|p| p.payload[0] & 0x1F == t).count();
    assert!(
        kinds(28) > 0 && kinds(24) > 0 && kinds(1) > 0,
        "{sent} packets"
    );

    let mut reorder = ReorderBuffer::default();
    let mut depack = H264Depacketizer::default();
    let mut aus: Vec<Frame> = Vec::new();
    let mut other = Vec::new();
    let t0 = Instant::now();
    let mut sink = |item: Ordered, depack: &mut H264Depacketizer| {
        depack.push(item, &mut |o| match o {
            VideoOutput::Frame(au) => aus.push(au),
            o => other.push(o),
        });
    };
    for (i, p) in disturb(packets, 0x5EED).into_iter().enumerate() {
        let now = t0 + Duration::from_micros(i as u64 * 300);
        let mut items = Vec::new();
        reorder.push(p, now, &mut |o| items.push(o));
        for item in items {
            sink(item, &mut depack);
        }
    }
    let mut items = Vec::new();
    reorder.flush(&mut |o| items.push(o));
    for item in items {
        sink(item, &mut depack);
    }

    let stats = reorder.stats();
    assert_eq!(stats.released as usize, sent);
    assert!(stats.duplicates > 0 && stats.reordered > 0, "{stats:?}");
    assert_eq!((stats.lost, stats.late), (0, 0));

    // No keyframe request; every keyframe says what the (one) SPS says.
    assert!(other.is_empty(), "{other:?}");
    for au in aus.iter().filter(|a| a.keyframe) {
        let f = au.format.as_ref().expect("keyframes carry their format");
        assert!(f.width == 320 && f.height == 240 && !f.may_reorder, "{f:?}");
    }
    assert_eq!(aus.len(), clip.video.len());
    for (au, frame) in aus.iter().zip(&clip.video) {
        assert_eq!(au.keyframe, frame.keyframe);
        assert_eq!(au.rtp_timestamp, ts_base.wrapping_add(frame.pts_90k as u32));
        let expected = if frame.keyframe {
            // SPS and PPS first, everything else in the order sent.
            let is_ps = |n: &&Bytes| matches!(n[0] & 0x1F, 7 | 8);
            let sps = frame.nals.iter().filter(|n| n[0] & 0x1F == 7);
            let pps = frame.nals.iter().filter(|n| n[0] & 0x1F == 8);
            annex_b(
                sps.chain(pps)
                    .chain(frame.nals.iter().filter(|n| !is_ps(n))),
            )
        } else {
            annex_b(&frame.nals)
        };
        assert_eq!(au.data, expected, "frame at {}", frame.pts_90k);
    }
    let s = depack.stats();
    assert_eq!(s.frames_out as usize, clip.video.len());
    assert_eq!(
        s.keyframes_out as usize,
        clip.video.iter().filter(|f| f.keyframe).count()
    );
    assert_eq!((s.frames_dropped, s.malformed_packets), (0, 0));
}

#[test]
fn the_clip_audio_survives_reordering() {
    let clip = Clip::builtin();
    let ts_base: u32 = u32::MAX - 48_000;
    let packets: Vec<RtpPacket> = clip
        .audio
        .iter()
        .enumerate()
        .map(|(i, a)| RtpPacket {
            sequence: (65_500 + i as u32) as u16,
            timestamp: ts_base.wrapping_add((a.pts_90k * 48 / 90) as u32),
            marker: i == 0,
            ssrc: 0xFFFF_FFFF,
            payload_type: 111,
            payload: a.data.clone(),
        })
        .collect();
    let mut reorder = ReorderBuffer::default();
    let mut depack = OpusDepacketizer::new();
    let mut out: Vec<OpusPacket> = Vec::new();
    let t0 = Instant::now();
    for (i, p) in disturb(packets, 42).into_iter().enumerate() {
        let mut items = Vec::new();
        reorder.push(p, t0 + Duration::from_millis(i as u64 * 20), &mut |o| {
            items.push(o)
        });
        for item in items {
            depack.push(item, &mut |p| out.push(p));
        }
    }
    let mut items = Vec::new();
    reorder.flush(&mut |o| items.push(o));
    for item in items {
        depack.push(item, &mut |p| out.push(p));
    }
    assert_eq!(out.len(), clip.audio.len());
    for (p, a) in out.iter().zip(&clip.audio) {
        assert_eq!(p.data, a.data);
        assert_eq!(p.samples, a.samples);
    }
    let s = depack.stats();
    assert_eq!((s.lost, s.malformed, s.empty), (0, 0, 0));
}
