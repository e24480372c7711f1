//! Fuzzes RTP parsing, the reorder buffer and the VP8 depacketizer together and checks the
//! output invariants the containers rely on: bounded frames that start with a frame tag,
//! key frames with their start code and a format, nothing but a key frame after a keyframe
//! request, and counters that agree with what was seen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::media::VideoCodec;
use ninjarec::media::depacketize::vp8::Vp8Depacketizer;
use ninjarec::media::depacketize::{DepacketizerLimits, VideoDepacketizer, VideoOutput};
use ninjarec::media::reorder::Ordered;

mod common;

fuzz_target!(|data: &[u8]| {
    let limits = DepacketizerLimits {
        max_frame_bytes: 16 * 1024,
        max_parts_per_frame: 64,
        ..DepacketizerLimits::default()
    };
    let mut depack = Vp8Depacketizer::new(limits);
    let (mut frames, mut keyframes, mut requests, mut lost) = (0u64, 0u64, 0u64, 0u64);
    // True from the start and after each keyframe request until a key frame is output.
    let mut need_key = true;
    common::drive(data, 3000, |item| {
        if let Ordered::Gap { lost: n } = item {
            lost += n;
        }
        depack.push(item, &mut |o| match o {
            VideoOutput::Frame(f) => {
                frames += 1;
                assert_eq!(f.codec, VideoCodec::Vp8);
                assert!(
                    f.data.len() <= limits.max_frame_bytes,
                    "frame over the limit"
                );
                assert!(f.data.len() >= 3, "frame shorter than its frame tag");
                assert_eq!(f.keyframe, f.data[0] & 1 == 0, "key frame flag disagrees");
                if f.keyframe {
                    keyframes += 1;
                    assert_eq!(f.data[3..6], [0x9d, 0x01, 0x2a], "key frame start code");
                    let format = f.format.as_ref().expect("key frame without format");
                    assert!((1..1 << 14).contains(&format.width));
                    assert!((1..1 << 14).contains(&format.height));
                    assert!(!format.may_reorder && format.config.is_none());
                } else {
                    assert!(f.format.is_none(), "format on an inter frame");
                    assert!(!need_key, "inter frame while waiting for a key frame");
                }
                need_key = false;
            }
            VideoOutput::KeyframeNeeded(_) => {
                requests += 1;
                need_key = true;
            }
        });
        assert_eq!(depack.waiting_for_keyframe(), need_key);
    });
    depack.flush();
    let s = depack.stats();
    assert_eq!(s.frames_out, frames);
    assert_eq!(s.keyframes_out, keyframes);
    assert_eq!(s.keyframe_requests, requests);
    assert_eq!(s.lost_packets, lost);
    assert!(s.keyframes_out <= s.frames_out);
});
