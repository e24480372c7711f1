//! Throughput of the recording core alone, through `StreamMuxer` exactly as the recorder
//! drives it (push every packet, poll and take keyframe requests every few packets, write out
//! and clear the output), reported per byte of RTP payload and per packet:
//!
//! * H.264 → TS: pre-packetized RTP of the built-in clip (looped, timestamps advancing, about
//!   10k packets, Sender Reports included);
//! * VP8 → WebM: a VP8 + Opus clip encoded by ffmpeg when the benchmark starts (libvpx, 10 s,
//!   looped to about 10k packets), packetized with `rtc`'s VP8 payloader.
//!
//! Run: `CARGO_TARGET_DIR=/work/target nice -n 10 cargo bench --bench core`.

#[path = "../tests/it/support/sim.rs"]
mod sim;

// The test suite's encoder helpers (ivf.rs calls ffmpeg through ffmpeg.rs).
#[allow(dead_code)]
#[path = "../tests/it/support/ffmpeg.rs"]
mod ffmpeg;
#[allow(dead_code)]
#[path = "../tests/it/support/ivf.rs"]
mod ivf;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ninjarec::media::stream::{StreamConfig, StreamMuxer};
use ninjarec::media::{RtpPacket, TrackKind, VideoCodec};
use ninjarec::testkit::clip::Clip;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use sim::{Event, Network, Rng, Sender, arrive, send_clip};

/// How often (in packets) the simulated recorder polls the muxer.
const POLL_EVERY: usize = 8;

/// The clip looped to about 10k RTP packets, with arrival times, Sender Reports included.
fn input() -> Vec<(Instant, Event)> {
    let clip = Clip::builtin();
    let mut rng = Rng::new(7);
    let one = send_clip(
        &clip,
        &Sender {
            loops: 1,
            ..Sender::random(&mut rng)
        },
    )
    .len();
    let sender = Sender {
        loops: (10_000 / one as u64).max(1),
        ..Sender::random(&mut rng)
    };
    let sent = send_clip(&clip, &sender);
    arrive(&sent, Instant::now(), Network::default(), &mut rng)
        .into_iter()
        .map(|(t, s)| (t, s.event))
        .collect()
}

/// A VP8 + Opus clip as RTP, looped to about 10k packets, with arrival times (no Sender
/// Reports: the recordings start without the sync hold, see [`record_vp8`]).
fn vp8_input() -> Vec<(Instant, Event)> {
    let (ivf_path, ogg_path) = ivf::encode(ivf::VP8, 10, "bench-vp8");
    let clip = ivf::read_ivf(&ivf_path);
    let opus = ivf::read_ogg_opus(&ogg_path);
    let _ = std::fs::remove_file(&ivf_path);
    let _ = std::fs::remove_file(&ogg_path);
    let mut payloader = Vp8Payloader::default();
    payloader.enable_picture_id = true;
    let period_ms = 10_000;
    let mut timed: Vec<(u64, Event)> = Vec::new();
    let (mut vseq, mut aseq) = (1000u16, 5000u16);
    let mut loop_no = 0u64;
    while timed.len() < 10_000 {
        let base_ms = loop_no * period_ms;
        for f in &clip.frames {
            let pts = clip.pts_90k(f) + base_ms * 90;
            let payloads = payloader
                .payload(1200, &Bytes::copy_from_slice(&f.data))
                .expect("VP8 payloads");
            let n = payloads.len();
            for (i, payload) in payloads.into_iter().enumerate() {
                let packet = RtpPacket {
                    sequence: vseq,
                    timestamp: pts as u32,
                    marker: i + 1 == n,
                    ssrc: 1,
                    payload_type: 96,
                    payload,
                };
                vseq = vseq.wrapping_add(1);
                timed.push((pts / 90, Event::Rtp(TrackKind::Video, packet)));
            }
        }
        for (i, p) in opus.iter().enumerate() {
            let ms = base_ms + i as u64 * 20;
            let packet = RtpPacket {
                sequence: aseq,
                timestamp: (ms * 48) as u32,
                marker: false,
                ssrc: 2,
                payload_type: 111,
                payload: Bytes::copy_from_slice(p),
            };
            aseq = aseq.wrapping_add(1);
            timed.push((ms, Event::Rtp(TrackKind::Audio, packet)));
        }
        loop_no += 1;
    }
    timed.sort_by_key(|(ms, _)| *ms);
    let t0 = Instant::now();
    timed
        .into_iter()
        .map(|(ms, e)| (t0 + Duration::from_millis(ms + 20), e))
        .collect()
}

/// One H.264 → TS recording of the whole input; returns the bytes written (so nothing is
/// optimized away).
fn record(events: Vec<(Instant, Event)>) -> usize {
    record_as(VideoCodec::H264, StreamConfig::default(), events)
}

/// One VP8 → WebM recording of the whole input (it has no Sender Reports, so no sync hold).
fn record_vp8(events: Vec<(Instant, Event)>) -> usize {
    let config = StreamConfig {
        sync_wait: Duration::ZERO,
        ..StreamConfig::default()
    };
    record_as(VideoCodec::Vp8, config, events)
}

/// One recording of `events` with video in `codec`; returns the file bytes written.
fn record_as(codec: VideoCodec, config: StreamConfig, events: Vec<(Instant, Event)>) -> usize {
    let mut m = StreamMuxer::new(config, Some(codec), true).expect("tracks");
    let mut written = 0;
    let mut last = None;
    for (i, (now, event)) in events.into_iter().enumerate() {
        match event {
            Event::Rtp(kind, packet) => m.push_rtp(kind, packet, now),
            Event::Sr(ssrc, ntp, rtp) => m.sender_report(ssrc, ntp, rtp),
        }
        if i % POLL_EVERY == 0 {
            m.poll(now);
            m.take_keyframe_request(now);
        }
        let out = m.output();
        written += out.len();
        out.clear();
        last = Some(now);
    }
    if let Some(now) = last {
        m.finish(now);
        written += m.output().len();
    }
    written
}

/// Payload bytes and packets of an input.
fn size_of(events: &[(Instant, Event)]) -> (u64, u64) {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Rtp(_, p) => Some(p.payload.len() as u64),
            Event::Sr(..) => None,
        })
        .fold((0, 0), |(bytes, n), len| (bytes + len, n + 1))
}

fn bench(c: &mut Criterion) {
    let events = input();
    let packets: Vec<&RtpPacket> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Rtp(_, p) => Some(p),
            Event::Sr(..) => None,
        })
        .collect();
    let payload: u64 = packets.iter().map(|p| p.payload.len() as u64).sum();
    let count = packets.len() as u64;
    let video = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Rtp(TrackKind::Video, _)))
        .count();
    let ts_bytes = record(events.clone());
    eprintln!(
        "input: {count} RTP packets ({video} video), {payload} payload bytes; output {ts_bytes} TS bytes"
    );

    let mut group = c.benchmark_group("core");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(payload));
    group.bench_function("rtp_to_ts_payload_bytes", |b| {
        b.iter_batched(|| events.clone(), record, BatchSize::LargeInput)
    });
    group.throughput(Throughput::Elements(count));
    group.bench_function("rtp_to_ts_packets", |b| {
        b.iter_batched(|| events.clone(), record, BatchSize::LargeInput)
    });

    let vp8 = vp8_input();
    let (vp8_payload, vp8_count) = size_of(&vp8);
    let webm_bytes = record_vp8(vp8.clone());
    eprintln!(
        "VP8 input: {vp8_count} RTP packets, {vp8_payload} payload bytes; output {webm_bytes} WebM bytes"
    );
    group.throughput(Throughput::Bytes(vp8_payload));
    group.bench_function("vp8_rtp_to_webm_payload_bytes", |b| {
        b.iter_batched(|| vp8.clone(), record_vp8, BatchSize::LargeInput)
    });
    group.throughput(Throughput::Elements(vp8_count));
    group.bench_function("vp8_rtp_to_webm_packets", |b| {
        b.iter_batched(|| vp8.clone(), record_vp8, BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
