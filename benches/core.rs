//! Throughput of the recording core alone: pre-packetized RTP of the built-in clip (looped,
//! timestamps advancing, about 10k packets) in, TS bytes out, through `StreamMuxer` exactly as
//! the recorder drives it (push every packet, poll and take keyframe requests every few
//! packets, write out and clear the output). Reported per byte of RTP payload and per packet.
//!
//! Run: `CARGO_TARGET_DIR=/work/target nice -n 10 cargo bench --bench core`.

#[path = "../tests/it/support/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ninjarec::media::stream::{StreamConfig, StreamMuxer};
use ninjarec::media::{RtpPacket, TrackKind, VideoCodec};
use ninjarec::testkit::clip::Clip;
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

/// One recording of the whole input; returns the TS bytes written (so nothing is optimized
/// away).
fn record(events: Vec<(Instant, Event)>) -> usize {
    let mut m =
        StreamMuxer::new(StreamConfig::default(), Some(VideoCodec::H264), true).expect("tracks");
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
