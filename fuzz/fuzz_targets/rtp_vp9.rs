//! Fuzzes RTP parsing, the reorder buffer and the VP9 depacketizer together and checks the
//! output invariants the containers rely on: bounded pictures, a consistent superframe index
//! whenever one is present, every frame starting with a VP9 frame marker, key frames with a
//! format, nothing but a key frame after a keyframe request, and counters that agree with
//! what was seen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::media::VideoCodec;
use ninjarec::media::depacketize::vp9::Vp9Depacketizer;
use ninjarec::media::depacketize::{DepacketizerLimits, VideoDepacketizer, VideoOutput};
use ninjarec::media::reorder::Ordered;

mod common;

/// The frames of `data`: split at its superframe index (VP9 Annex B) when it ends in one
/// whose marker bytes match, else `data` whole. Panics on an index whose sizes do not add
/// up, which the depacketizer must never write.
fn frames(data: &[u8]) -> Vec<&[u8]> {
    let marker = *data.last().expect("empty picture");
    if marker & 0xE0 != 0xC0 {
        return vec![data];
    }
    let size_bytes = usize::from((marker >> 3) & 3) + 1;
    let count = usize::from(marker & 7) + 1;
    let index_len = 2 + size_bytes * count;
    if data.len() < index_len || data[data.len() - index_len] != marker {
        return vec![data];
    }
    let index = &data[data.len() - index_len + 1..data.len() - 1];
    let mut rest = &data[..data.len() - index_len];
    let mut out = Vec::new();
    for size in index.chunks(size_bytes) {
        let size = size
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        assert!(
            size > 0 && size <= rest.len(),
            "superframe size out of range"
        );
        let (one, tail) = rest.split_at(size);
        out.push(one);
        rest = tail;
    }
    assert!(rest.is_empty(), "superframe sizes do not add up");
    out
}

fuzz_target!(|data: &[u8]| {
    let limits = DepacketizerLimits {
        max_frame_bytes: 16 * 1024,
        max_parts_per_frame: 64,
        ..DepacketizerLimits::default()
    };
    let mut depack = Vp9Depacketizer::new(limits);
    let (mut pictures, mut keyframes, mut requests, mut lost) = (0u64, 0u64, 0u64, 0u64);
    // True from the start and after each keyframe request until a key frame is output.
    let mut need_key = true;
    common::drive(data, 3000, |item| {
        if let Ordered::Gap { lost: n } = item {
            lost += n;
        }
        depack.push(item, &mut |o| match o {
            VideoOutput::Frame(f) => {
                pictures += 1;
                assert_eq!(f.codec, VideoCodec::Vp9);
                assert!(
                    f.data.len() <= limits.max_frame_bytes,
                    "picture over the limit"
                );
                let parts = frames(&f.data);
                for part in &parts {
                    assert_eq!(part[0] >> 6, 2, "frame without frame_marker");
                }
                if f.keyframe {
                    keyframes += 1;
                    let first = parts[0][0];
                    if first & 0x30 != 0x30 {
                        // Profiles 0-2: show_existing_frame = 0, frame_type = KEY_FRAME.
                        assert_eq!(first & 0x0C, 0, "key frame header is not a key frame");
                    }
                    let format = f.format.as_ref().expect("key frame without format");
                    assert!(format.width > 0 && format.height > 0);
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
    assert_eq!(s.frames_out, pictures);
    assert_eq!(s.keyframes_out, keyframes);
    assert_eq!(s.keyframe_requests, requests);
    assert_eq!(s.lost_packets, lost);
    assert!(s.keyframes_out <= s.frames_out);
});
