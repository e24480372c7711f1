//! Fuzzes one publisher's whole recording core (`StreamMuxer`): RTP packets of both tracks
//! with fuzzed headers and payloads (or real packets of the built-in clip with fuzzed
//! headers), Sender Reports, polls with advancing time, keyframe requests, new files asked for,
//! segment limits and an early finish. Checks that the output is always whole 188-byte packets
//! and that every file (segment) passes the transport stream conformance checker on its own,
//! and that the files hold every unit written, once.
//!
//! Input: `[segment]` (0: no segments; else a file ends at the first keyframe `segment` × 50 ms
//! past its start), then records `[op][args…]`:
//! - op % 8 = 0: video packet `[flags][len][payload…]`
//! - 1: audio packet `[flags][len][payload…]`
//! - 2: real clip packet `[flags][index hi][index lo]` (video or audio by its index)
//! - 3: Sender Report `[kind][ntp delta: 4][rtp delta: 4]`
//! - 4: poll after `[ms]` × 4 ms
//! - 5: raw RTP datagram `[kind][len][bytes…]` through `RtpPacket::parse`
//! - 6: take a keyframe request (and with an odd argument `[x]`, ask for a new file)
//! - 7: finish (then keep feeding: the muxer must stay sound)
//!
//! `flags` choose the marker bit, the sequence step (+1, +2, 0, −1, +5000, −3000, +1, +1), a
//! timestamp step (none, one frame, a large jump) and whether the arrival time advances by
//! 20 ms.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ninjarec::media::segment::SegmentPolicy;
use ninjarec::media::stream::{StreamConfig, StreamMuxer};
use ninjarec::media::{RtpPacket, TrackKind, VideoCodec};
use ninjarec::testkit::clip::Clip;
use ninjarec::testkit::ts_check::{CheckOptions, check};
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;

/// The built-in clip's RTP packets: (kind, payload, timestamp offset, marker).
fn clip_packets() -> &'static [(TrackKind, Bytes, u32, bool)] {
    static PACKETS: OnceLock<Vec<(TrackKind, Bytes, u32, bool)>> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let clip = Clip::builtin();
        let mut out = Vec::new();
        let mut payloader = H264Payloader::default();
        for f in &clip.video {
            let mut au = Vec::new();
            for nal in &f.nals {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(nal);
            }
            let payloads = payloader.payload(1200, &Bytes::from(au)).unwrap();
            let n = payloads.len();
            for (i, p) in payloads.into_iter().enumerate() {
                out.push((TrackKind::Video, p, f.pts_90k as u32, i + 1 == n));
            }
        }
        for a in &clip.audio {
            out.push((
                TrackKind::Audio,
                a.data.clone(),
                (a.pts_90k * 8 / 15) as u32,
                false,
            ));
        }
        out
    })
}

/// Per-track header state the records advance.
struct Track {
    seq: u16,
    ts: u32,
    frame: u32,
}

impl Track {
    fn step(&mut self, flags: u8) {
        let seq_step: i32 = [1, 2, 0, -1, 5000, -3000, 1, 1][usize::from(flags >> 1 & 7)];
        self.seq = self.seq.wrapping_add(seq_step as u16);
        match flags >> 4 & 3 {
            1 => self.ts = self.ts.wrapping_add(self.frame),
            2 => self.ts = self.ts.wrapping_add(0x3456_789B),
            _ => {}
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    u32::from_be_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let [segment, data @ ..] = data else { return };
    let config = StreamConfig {
        segment: SegmentPolicy {
            max_duration_90k: (*segment > 0).then(|| u64::from(*segment) * 4_500),
            max_bytes: None,
        },
        ..StreamConfig::default()
    };
    let Some(mut m) = StreamMuxer::new(config, Some(VideoCodec::H264), true) else {
        return;
    };
    let start = Instant::now();
    let mut now = start;
    let mut tracks = [
        Track {
            seq: 65_500,
            ts: u32::MAX - 20_000,
            frame: 3000,
        },
        Track {
            seq: 100,
            ts: 0x7FFF_FF00,
            frame: 960,
        },
    ];
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut file = Vec::new();
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 8 {
            k @ (0 | 1) => {
                let [flags, len, tail @ ..] = rest else { break };
                let len = usize::from(*len).min(tail.len());
                let (payload, next) = tail.split_at(len);
                rest = next;
                let t = &mut tracks[usize::from(k)];
                t.step(*flags);
                if flags & 0x40 != 0 {
                    now += Duration::from_millis(20);
                }
                let kind = if k == 0 {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                let packet = RtpPacket {
                    sequence: t.seq,
                    timestamp: t.ts,
                    marker: flags & 1 != 0,
                    ssrc: ssrc_of(kind),
                    payload_type: 96,
                    payload: Bytes::copy_from_slice(payload),
                };
                m.push_rtp(kind, packet, now);
            }
            2 => {
                let [flags, hi, lo, tail @ ..] = rest else {
                    break;
                };
                rest = tail;
                let packets = clip_packets();
                let (kind, payload, ts, marker) =
                    &packets[usize::from(u16::from_be_bytes([*hi, *lo])) % packets.len()];
                let t = &mut tracks[usize::from(*kind == TrackKind::Audio)];
                t.step(*flags);
                if flags & 0x40 != 0 {
                    now += Duration::from_millis(20);
                }
                let packet = RtpPacket {
                    sequence: t.seq,
                    timestamp: t.ts.wrapping_add(*ts),
                    marker: *marker != (flags & 1 != 0),
                    ssrc: ssrc_of(*kind),
                    payload_type: 96,
                    payload: payload.clone(),
                };
                m.push_rtp(*kind, packet, now);
            }
            3 => {
                if rest.len() < 9 {
                    break;
                }
                let kind = if rest[0] & 1 == 0 {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                let ntp = (3_900_000_000u64 << 32) + (u64::from(be32(&rest[1..5])) << 8);
                let t = &tracks[usize::from(kind == TrackKind::Audio)];
                m.sender_report(ssrc_of(kind), ntp, t.ts.wrapping_add(be32(&rest[5..9])));
                rest = &rest[9..];
            }
            4 => {
                let [ms, tail @ ..] = rest else { break };
                rest = tail;
                now += Duration::from_millis(u64::from(*ms) * 4);
                m.poll(now);
            }
            5 => {
                let [kind, len, tail @ ..] = rest else { break };
                let len = usize::from(*len).min(tail.len());
                let (bytes, next) = tail.split_at(len);
                rest = next;
                if let Ok(p) = RtpPacket::parse(bytes) {
                    let kind = if kind & 1 == 0 {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    };
                    m.push_rtp(kind, p, now);
                }
            }
            6 => {
                m.take_keyframe_request(now);
                if let [x, tail @ ..] = rest {
                    rest = tail;
                    if x & 1 == 1 {
                        m.start_new_file();
                    }
                }
            }
            _ => m.finish(now),
        }
        for end in m.take_ended() {
            file.extend_from_slice(&end.tail);
            assert!(end.patches.is_empty());
            assert_eq!(
                end.span.bytes as usize,
                file.len(),
                "a file's span counts its bytes"
            );
            files.push(std::mem::take(&mut file));
        }
        let out = m.output();
        assert_eq!(out.len() % 188, 0, "output is not whole TS packets");
        file.extend_from_slice(out);
        out.clear();
        // Nothing waits longer than the longest wait of the core: the sync hold
        // (`StreamConfig::sync_wait`, 6 s) once the keyframe request is taken.
        assert!(
            m.next_deadline()
                .is_none_or(|d| d <= now + Duration::from_secs(6))
        );
    }
    m.finish(now);
    // What finish hands on may still cross a segment limit.
    for end in m.take_ended() {
        file.extend_from_slice(&end.tail);
        files.push(std::mem::take(&mut file));
    }
    file.extend_from_slice(m.output());
    files.push(file);
    let s = m.stats();
    let (mut video, mut audio) = (0, 0);
    for (i, file) in files.iter().enumerate() {
        assert_eq!(file.len() % 188, 0);
        if file.is_empty() {
            continue;
        }
        let opts = CheckOptions {
            // A file may start with audio when no keyframe came within `idr_wait`.
            max_audio_lead_90k: None,
            ..CheckOptions::default()
        };
        let r = check(file, &opts);
        // Video offered but no keyframe ever came: after `idr_wait` the file is audio under a
        // PMT that lists video, which is what the recorder wants (the PMT is fixed when the
        // file opens). Everything else the checker reports is a bug.
        let violations: Vec<&String> = r
            .violations
            .iter()
            .filter(|v| {
                !(r.video.is_empty() && v.as_str() == "PMT lists video but there is no video PES")
            })
            .collect();
        assert!(violations.is_empty(), "file {i}: {violations:#?}");
        if i > 0 {
            assert!(
                r.video.first().is_some_and(|v| v.keyframe),
                "file {i} starts at a keyframe"
            );
        }
        video += r.video.len() as u64;
        audio += r.audio.len() as u64;
    }
    assert_eq!(video, s.frames_written);
    assert_eq!(audio, s.audio_written);
});

/// Each track's SSRC (Sender Reports are matched to tracks by it).
fn ssrc_of(kind: TrackKind) -> u32 {
    match kind {
        TrackKind::Video => 1,
        TrackKind::Audio => 0xFFFF_FFFF,
    }
}
