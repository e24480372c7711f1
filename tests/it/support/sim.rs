//! A simulated publisher, shared by the core tests and the `core` benchmark: a seeded
//! generator, the built-in clip sent as a WebRTC publisher sends it (RTP + Sender Reports with
//! unrelated clocks), a network that delays, reorders, duplicates and loses, and the recorder
//! task's feeding loop. Self-contained (the benchmark includes this file by path).
// The benchmark uses a subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ninjarec::media::stream::StreamMuxer;
use ninjarec::media::{RtpPacket, TrackKind};
use ninjarec::testkit::clip::Clip;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;

/// Small deterministic generator (xorshift64), so a failure can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; scrambled so that 0 works).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A random seed (or `NINJAREC_TEST_SEED`), printed so a failing run can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("NINJAREC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with NINJAREC_TEST_SEED={seed})");
    seed
}

/// Annex B bytes of a list of NAL units.
pub fn annex_b<'a>(nals: impl IntoIterator<Item = &'a Bytes>) -> Vec<u8> {
    nals.into_iter()
        .flat_map(|n| [&[0, 0, 0, 1][..], &n[..]].concat())
        .collect()
}

/// How the simulated publisher numbers and times its two tracks.
#[derive(Debug, Clone)]
pub struct Sender {
    /// First video sequence number, SSRC and RTP timestamp.
    pub video_seq: u16,
    /// See `video_seq`.
    pub video_ssrc: u32,
    /// See `video_seq`.
    pub video_ts: u32,
    /// First audio sequence number, SSRC and RTP timestamp.
    pub audio_seq: u16,
    /// See `audio_seq`.
    pub audio_ssrc: u32,
    /// See `audio_seq`.
    pub audio_ts: u32,
    /// How much later (90 kHz ticks, sender wallclock) the first audio packet is captured
    /// than the first video frame; negative: earlier.
    pub audio_offset_90k: i64,
    /// How many times the clip is sent back to back (timestamps keep advancing).
    pub loops: u64,
    /// Sender Reports for both tracks from this sender time on (ticks), every second.
    pub first_sr_90k: Option<i64>,
}

impl Sender {
    /// Unrelated random numbering and clocks for both tracks.
    pub fn random(rng: &mut Rng) -> Sender {
        Sender {
            video_seq: rng.next() as u16,
            video_ssrc: rng.next() as u32,
            video_ts: rng.next() as u32,
            audio_seq: rng.next() as u16,
            audio_ssrc: rng.next() as u32,
            audio_ts: rng.next() as u32,
            audio_offset_90k: 0,
            loops: 1,
            first_sr_90k: Some(2 * 90_000),
        }
    }

    /// Like [`Sender::random`], but every counter wraps shortly after the start.
    pub fn near_wrap(rng: &mut Rng) -> Sender {
        Sender {
            video_seq: u16::MAX - rng.below(200) as u16,
            video_ts: u32::MAX - rng.below(200_000) as u32,
            audio_seq: u16::MAX - rng.below(100) as u16,
            audio_ts: u32::MAX - rng.below(100_000) as u32,
            ..Sender::random(rng)
        }
    }
}

/// What the publisher sends.
#[derive(Debug, Clone)]
pub enum Event {
    /// An RTP packet of a track.
    Rtp(TrackKind, RtpPacket),
    /// An RTCP Sender Report of the stream with this SSRC: NTP 32.32 and the RTP timestamp of
    /// the same instant.
    Sr(u32, u64, u32),
}

/// One event with its sender wallclock time (90 kHz ticks since the first video frame) and,
/// for media, the index of the clip unit it carries.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Sender wallclock, 90 kHz ticks since the first video frame was captured.
    pub send_90k: i64,
    /// The event.
    pub event: Event,
    /// Index into `clip.video` / `clip.audio` (0 for Sender Reports).
    pub unit: usize,
}

/// Seconds of the NTP timestamp of the sender's first video frame.
const NTP_BASE_SECS: u64 = 3_950_000_000;

/// Sender time between two loops of the clip: its length rounded up to whole video frames, so
/// frame PTS stay on a 3000-tick grid across loops.
pub fn loop_period_90k(clip: &Clip) -> u64 {
    clip.duration_90k.div_ceil(3000) * 3000
}

/// The clip as the publisher sends it: H.264 through `rtc`'s payloader at MTU 1200, one Opus
/// packet per RTP packet, Sender Reports as configured, all in sender-time order.
pub fn send_clip(clip: &Clip, s: &Sender) -> Vec<Sent> {
    let period = loop_period_90k(clip) as i64;
    let v0 = clip.video[0].pts_90k as i64;
    let a0 = clip.audio[0].pts_90k as i64;
    let mut payloader = H264Payloader::default();
    let mut out = Vec::new();
    let (mut vseq, mut aseq) = (s.video_seq, s.audio_seq);
    for l in 0..s.loops as i64 {
        for (unit, f) in clip.video.iter().enumerate() {
            let t = l * period + f.pts_90k as i64 - v0;
            let payloads = payloader
                .payload(1200, &Bytes::from(annex_b(&f.nals)))
                .expect("payloader");
            let n = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                let packet = RtpPacket {
                    sequence: vseq,
                    timestamp: s.video_ts.wrapping_add(t as u32),
                    marker: i + 1 == n,
                    ssrc: s.video_ssrc,
                    payload_type: 102,
                    payload,
                };
                vseq = vseq.wrapping_add(1);
                out.push(Sent {
                    send_90k: t,
                    event: Event::Rtp(TrackKind::Video, packet),
                    unit,
                });
            }
        }
        for (unit, a) in clip.audio.iter().enumerate() {
            let media = l * period + a.pts_90k as i64 - a0;
            let packet = RtpPacket {
                sequence: aseq,
                timestamp: s.audio_ts.wrapping_add((media * 8 / 15) as u32),
                marker: unit == 0 && l == 0,
                ssrc: s.audio_ssrc,
                payload_type: 111,
                payload: a.data.clone(),
            };
            aseq = aseq.wrapping_add(1);
            out.push(Sent {
                send_90k: s.audio_offset_90k + media,
                event: Event::Rtp(TrackKind::Audio, packet),
                unit,
            });
        }
    }
    if let Some(first) = s.first_sr_90k {
        let ntp_at = |t: i64| {
            (NTP_BASE_SECS << 32).wrapping_add_signed((((t as i128) << 32) / 90_000) as i64)
        };
        let end = s.loops as i64 * period;
        let mut t = first;
        while t < end {
            out.push(Sent {
                send_90k: t,
                event: Event::Sr(s.video_ssrc, ntp_at(t), s.video_ts.wrapping_add(t as u32)),
                unit: 0,
            });
            // Each track reports on its own schedule; audio 300 ms after video here.
            let ta = t + 27_000;
            let audio_rtp = s
                .audio_ts
                .wrapping_add(((ta - s.audio_offset_90k) * 8 / 15) as u32);
            out.push(Sent {
                send_90k: ta,
                event: Event::Sr(s.audio_ssrc, ntp_at(ta), audio_rtp),
                unit: 0,
            });
            t += 90_000;
        }
    }
    out.sort_by_key(|e| e.send_90k);
    out
}

/// What the network does to the packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Network {
    /// Largest random extra delay per packet, ms (reorders packets closer than this).
    pub jitter_ms: u64,
    /// Fraction of RTP packets lost.
    pub loss: f64,
    /// Fraction of RTP packets delivered twice.
    pub duplicate: f64,
    /// Sender Reports arrive this much later than sent, ms.
    pub sr_delay_ms: u64,
    /// Video RTP arrives this much later than audio sent at the same time, ms (an encoder's
    /// latency or a longer path: GStreamer publishers' video trails their audio by up to 0.9 s).
    pub video_delay_ms: u64,
}

/// The sent events as they arrive at `base` + send time + network effects, in arrival order.
pub fn arrive(sent: &[Sent], base: Instant, net: Network, rng: &mut Rng) -> Vec<(Instant, Sent)> {
    let mut out = Vec::with_capacity(sent.len() * 21 / 20);
    for s in sent {
        let send = Duration::from_micros((s.send_90k.max(0) as u64) * 100 / 9);
        if let Event::Sr(..) = s.event {
            out.push((
                base + send + Duration::from_millis(net.sr_delay_ms),
                s.clone(),
            ));
            continue;
        }
        if rng.chance(net.loss) {
            continue;
        }
        let copies = if rng.chance(net.duplicate) { 2 } else { 1 };
        let delay = match s.event {
            Event::Rtp(TrackKind::Video, _) => Duration::from_millis(net.video_delay_ms),
            _ => Duration::ZERO,
        };
        for _ in 0..copies {
            let jitter = Duration::from_micros(rng.below(net.jitter_ms * 1000 + 1));
            out.push((base + send + delay + jitter, s.clone()));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// What feeding a muxer produced.
#[derive(Debug, Default)]
pub struct Fed {
    /// All TS bytes it wrote, in order.
    pub ts: Vec<u8>,
    /// Keyframe requests granted.
    pub keyframe_requests: u64,
}

/// Feeds arrived events into `m` the way the recorder task does (push, poll, take requests,
/// write out), then finishes it.
pub fn feed(m: &mut StreamMuxer, events: &[(Instant, Sent)]) -> Fed {
    let mut fed = Fed::default();
    let mut last = None;
    for (now, s) in events {
        match &s.event {
            Event::Rtp(kind, p) => m.push_rtp(*kind, p.clone(), *now),
            Event::Sr(ssrc, ntp, rtp) => m.sender_report(*ssrc, *ntp, *rtp),
        }
        m.poll(*now);
        fed.keyframe_requests += u64::from(m.take_keyframe_request(*now));
        let out = m.output();
        assert_eq!(out.len() % 188, 0, "output must be whole TS packets");
        fed.ts.extend_from_slice(out);
        out.clear();
        last = Some(*now);
    }
    if let Some(now) = last {
        m.finish(now);
        fed.ts.extend_from_slice(m.output());
        m.output().clear();
    }
    fed
}
