//! Fuzzes RTP parsing, the reorder buffer and the AV1 depacketizer together and checks the
//! output invariants the Matroska / MP4 writers rely on: every frame a clean low-overhead OBU
//! stream, keyframes declaring their `av1C`, the counters agreeing with what came out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::media::depacketize::av1::Av1Depacketizer;
use ninjarec::media::depacketize::{DepacketizerLimits, VideoDepacketizer, VideoOutput};

mod common;

/// Reads a LEB128 value of at most 8 bytes: `(value, bytes used)`.
fn leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(8).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Splits a frame into `(obu_type, payload)`, asserting the low-overhead form.
fn obus(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&header, rest)) = data.split_first() {
        assert_eq!(header & 0x80, 0, "forbidden bit");
        assert_ne!(header & 0x02, 0, "OBU without size field");
        let rest = if header & 0x04 != 0 {
            rest.get(1..).expect("extension byte")
        } else {
            rest
        };
        let (size, used) = leb128(rest).expect("size field");
        let payload = rest.get(used..used + size).expect("size past the end");
        out.push(((header >> 3) & 0x0F, payload));
        data = &rest[used + size..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let limits = DepacketizerLimits {
        max_frame_bytes: 64 * 1024,
        max_parts_per_frame: 64,
        max_config_bytes: 128,
    };
    let mut depack = Av1Depacketizer::new(limits);
    let (mut frames, mut keyframes, mut requests) = (0u64, 0u64, 0u64);
    common::drive(data, 3000, |item| {
        depack.push(item, &mut |o| match o {
            VideoOutput::KeyframeNeeded(_) => requests += 1,
            VideoOutput::Frame(f) => {
                frames += 1;
                assert!(f.data.len() <= limits.max_frame_bytes + limits.max_config_bytes);
                let list = obus(&f.data);
                assert!(!list.is_empty(), "empty frame");
                assert!(
                    list.iter().all(|(t, _)| ![2, 8, 15].contains(t)),
                    "temporal delimiter, tile list or padding passed through"
                );
                let first_frame = list.iter().position(|(t, _)| matches!(t, 3 | 6));
                let first_frame = first_frame.expect("no frame header");
                if f.keyframe {
                    keyframes += 1;
                    let format = f.format.expect("keyframe without format");
                    let config = format.config.expect("keyframe without av1C");
                    assert_eq!(config.first(), Some(&0x81), "av1C marker / version");
                    assert!(config.len() > 4);
                    assert_eq!(
                        obus(&config[4..])[0].0,
                        1,
                        "configOBUs not a sequence header"
                    );
                    assert!(format.width >= 1 && format.height >= 1);
                    assert!(
                        list[..first_frame].iter().any(|(t, _)| *t == 1),
                        "keyframe without a sequence header ahead of its frame"
                    );
                } else {
                    assert!(f.format.is_none());
                }
            }
        });
    });
    depack.flush();
    let s = depack.stats();
    assert_eq!(s.frames_out, frames);
    assert_eq!(s.keyframes_out, keyframes);
    assert_eq!(s.keyframe_requests, requests);
    assert!(s.keyframes_out <= s.frames_out);
});
