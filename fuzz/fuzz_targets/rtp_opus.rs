//! Fuzzes RTP parsing, the reorder buffer and the Opus depacketizer together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::media::depacketize::opus::OpusDepacketizer;
use ninjarec::media::depacketize::opus_toc::packet_samples;

mod common;

fuzz_target!(|data: &[u8]| {
    let mut depack = OpusDepacketizer::new();
    let mut out = 0u64;
    common::drive(data, 960, |item| {
        depack.push(item, &mut |p| {
            out += 1;
            assert!(!p.data.is_empty());
            assert_eq!(Some(p.samples), packet_samples(&p.data));
            assert!(p.samples > 0 && p.samples <= 5760);
        });
    });
    assert_eq!(depack.stats().packets_out, out);
});
