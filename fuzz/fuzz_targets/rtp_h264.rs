//! Fuzzes RTP parsing, the reorder buffer and the H.264 depacketizer together and checks the
//! output invariants the TS writer relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::media::depacketize::h264::H264Depacketizer;
use ninjarec::media::depacketize::{DepacketizerLimits, VideoDepacketizer, VideoOutput};

mod common;

fuzz_target!(|data: &[u8]| {
    let config = DepacketizerLimits {
        max_frame_bytes: 64 * 1024,
        ..DepacketizerLimits::default()
    };
    let mut depack = H264Depacketizer::new(config);
    let mut frames = 0u64;
    common::drive(data, 3000, |item| {
        depack.push(item, &mut |o| {
            if let VideoOutput::Frame(au) = o {
                frames += 1;
                assert!(au.data.starts_with(&[0, 0, 0, 1]), "no start code");
                assert!(au.data.len() <= config.max_frame_bytes + 2 * 1024 + 8);
                // Split at start codes; the depacketizer guarantees none is forged inside a NAL.
                let mut types = Vec::new();
                let mut i = 0;
                while let Some(p) = au.data[i..].windows(4).position(|w| w == [0, 0, 0, 1]) {
                    i += p + 4;
                    assert!(i < au.data.len(), "empty NAL");
                    types.push(au.data[i] & 0x1F);
                }
                assert!(!types.contains(&9), "AUD passed through");
                assert!(types.iter().any(|t| (1..=5).contains(t)), "no slice");
                if au.keyframe {
                    assert!(au.format.is_some(), "keyframe without its format");
                    assert_eq!(types[..2], [7, 8], "keyframe without SPS, PPS first");
                    assert!(types.contains(&5));
                }
            }
        });
    });
    depack.flush();
    let s = depack.stats();
    assert_eq!(s.frames_out, frames);
    assert!(s.keyframes_out <= s.frames_out);
});
