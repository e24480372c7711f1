//! Bit-exact through the whole core for VP8 and VP9 (issue 10): a clip encoded here by libvpx
//! is packetized the way webrtc-rs sends it (`rtc`'s payloaders, MTU 1200), with RTP sequence
//! numbers and timestamps that wrap during the clip, fed through [`StreamMuxer`] and written
//! as WebM. Without loss every frame comes out byte for byte; with 5 % loss and reordering
//! only whole frames are missing (every frame in the file is one that was sent, and the file
//! decodes without a message), never damaged ones.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ninjarec::media::stream::{StreamConfig, StreamMuxer};
use ninjarec::media::{RtpPacket, TrackKind, VideoCodec};
use ninjarec::mux::ContainerKind;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::codec::vp9::Vp9Payloader;
use rtc::rtp::packetizer::Payloader;

use crate::support::ffmpeg::{decode_errors, probe, run, video_frame_hashes};
use crate::support::fixtures::{TestDir, heavy_blocking};
use crate::support::ivf::{self, Encoder, Ivf, encode, read_ivf};
use crate::support::sim::Rng;

/// Frames per second of the clip (`support::ivf::encode`).
const FPS: u64 = 30;

/// The clip as RTP packets: sequence numbers start 40 before the 16-bit wrap and the RTP
/// timestamps 1.5 s before the 32-bit wrap, so both wrap inside the clip.
fn packetize(codec: VideoCodec, ivf: &Ivf) -> Vec<(u64, RtpPacket)> {
    let mut vp8 = Vp8Payloader::default();
    vp8.enable_picture_id = true;
    let mut vp9 = Vp9Payloader::default();
    let ts0 = u32::MAX - 135_000;
    let mut seq = u16::MAX - 40;
    let mut out = Vec::new();
    for f in &ivf.frames {
        let data = Bytes::copy_from_slice(&f.data);
        let payloads = match codec {
            VideoCodec::Vp8 => vp8.payload(1200, &data).unwrap(),
            VideoCodec::Vp9 => vp9.payload(1200, &data).unwrap(),
            other => panic!("no payloader for {other}"),
        };
        let n = payloads.len();
        let pts_90k = ivf.pts_90k(f);
        let send_ms = pts_90k / 90;
        for (i, payload) in payloads.into_iter().enumerate() {
            out.push((
                send_ms,
                RtpPacket {
                    sequence: seq,
                    timestamp: ts0.wrapping_add(pts_90k as u32),
                    marker: i + 1 == n,
                    ssrc: 0x5EED,
                    payload_type: 96,
                    payload,
                },
            ));
            seq = seq.wrapping_add(1);
        }
    }
    out
}

/// Feeds packets through a video-only [`StreamMuxer`] (arrival = send time + 20 ms, polling
/// after each), finishes it and writes the file with its end patches applied.
fn record(codec: VideoCodec, packets: &[(u64, RtpPacket)], path: &Path) -> StreamMuxer {
    let mut m = StreamMuxer::new(StreamConfig::default(), Some(codec), false).unwrap();
    assert_eq!(m.container(), ContainerKind::WebM);
    let t0 = Instant::now();
    let mut file = Vec::new();
    let mut last = t0;
    for (ms, p) in packets {
        last = t0 + Duration::from_millis(ms + 20);
        m.push_rtp(TrackKind::Video, p.clone(), last);
        m.poll(last);
        m.take_keyframe_request(last);
        file.append(m.output());
    }
    m.finish(last + Duration::from_millis(200));
    file.append(m.output());
    for patch in m.take_patches() {
        let at = patch.offset as usize;
        file[at..at + patch.bytes.len()].copy_from_slice(&patch.bytes);
    }
    std::fs::write(path, file).unwrap();
    m
}

/// `size md5` of every compressed video packet of a file, as the demuxer hands them on.
fn packet_hashes(path: &Path) -> Vec<String> {
    let (out, _) = run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-map",
            "0:v",
            "-c",
            "copy",
            "-f",
            "framemd5",
            "-",
        ],
    );
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split(',').map(str::trim).collect();
            format!("{} {}", cols[4], cols[5])
        })
        .collect()
}

fn bit_exact(codec: VideoCodec, encoder: Encoder) {
    let _heavy = heavy_blocking();
    let dir = TestDir::new(&format!("codec-clip-{}", codec.name()));
    let (ivf, _) = encode(encoder, 4, &format!("clip-{}", codec.name()));
    let clip = read_ivf(&ivf);
    let frames = &clip.frames;
    assert_eq!(frames.len(), 4 * FPS as usize);
    let packets = packetize(codec, &clip);
    let webm = dir.join("clip.webm");
    let m = record(codec, &packets, &webm);
    let s = m.stats();
    assert_eq!(s.frames_written as usize, frames.len(), "{s:?}");
    assert_eq!((s.frames_dropped, s.units_refused), (0, 0), "{s:?}");
    let streams = probe(&webm);
    assert_eq!(streams, [format!("{},{}", codec.name(), frames.len())]);
    assert!(decode_errors(&webm).is_empty(), "{}", decode_errors(&webm));
    // Compressed frames byte for byte, and the decoded pictures too.
    assert_eq!(packet_hashes(&webm), packet_hashes(&ivf));
    assert_eq!(video_frame_hashes(&webm), video_frame_hashes(&ivf));
}

fn lossy(codec: VideoCodec, encoder: Encoder) {
    let _heavy = heavy_blocking();
    let dir = TestDir::new(&format!("codec-loss-{}", codec.name()));
    let (ivf, _) = encode(encoder, 6, &format!("loss-{}", codec.name()));
    let clip = read_ivf(&ivf);
    let frames = &clip.frames;
    let sent = packetize(codec, &clip);
    // 5 % of the packets lost, a third of neighbours swapped (arriving 1 ms apart).
    let mut rng = Rng::new(0x10_55 + codec as u64);
    let mut packets: Vec<(u64, RtpPacket)> =
        sent.into_iter().filter(|_| !rng.chance(0.05)).collect();
    for i in 1..packets.len() {
        if rng.chance(0.33) {
            let ms = packets[i - 1].0;
            packets.swap(i - 1, i);
            packets[i - 1].0 = ms;
        }
    }
    let webm = dir.join("loss.webm");
    let m = record(codec, &packets, &webm);
    let s = m.stats();
    assert!(s.frames_dropped > 0 && s.packets_lost > 0, "{s:?}");
    assert!(s.frames_written > 0, "{s:?}");
    assert!(decode_errors(&webm).is_empty(), "{}", decode_errors(&webm));
    // Every frame in the file is a frame that was sent, in order: whole frames are missing,
    // none is damaged.
    let sent_hashes = packet_hashes(&ivf);
    let got = packet_hashes(&webm);
    assert_eq!(got.len() as u64, s.frames_written);
    let mut at = 0;
    for h in &got {
        let found = sent_hashes[at..].iter().position(|x| x == h);
        let Some(i) = found else {
            panic!("frame {h} of the file was never sent (or is out of order)");
        };
        at += i + 1;
    }
    eprintln!(
        "{codec} with 5 % loss: {} of {} frames written, {} dropped, {} keyframe requests",
        s.frames_written,
        frames.len(),
        s.frames_dropped,
        s.keyframe_requests
    );
}

#[test]
fn vp8_clip_comes_out_bit_exact_across_wraps() {
    bit_exact(VideoCodec::Vp8, ivf::VP8);
}

#[test]
fn vp9_clip_comes_out_bit_exact_across_wraps() {
    bit_exact(VideoCodec::Vp9, ivf::VP9);
}

#[test]
fn vp8_with_loss_and_reordering_loses_only_whole_frames() {
    lossy(VideoCodec::Vp8, ivf::VP8);
}

#[test]
fn vp9_with_loss_and_reordering_loses_only_whole_frames() {
    lossy(VideoCodec::Vp9, ivf::VP9);
}
