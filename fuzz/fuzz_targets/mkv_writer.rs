//! Fuzzes the Matroska / WebM writer: the input becomes a sequence of calls (video frames of
//! the file's codec with fuzzed keyframe flags, formats, sizes and PTS steps, backwards ones
//! included; Opus packets; ticks; an early finish), and every promise of `MkvWriter` is
//! checked by `testkit::mkv_check::exercise_writer` — no panic, refused units write nothing,
//! the live file, cuts of it and the finished file with its patches applied pass the
//! structural checker with exactly the accepted blocks. The input layout is documented there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ninjarec::testkit::mkv_check::exercise_writer;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = exercise_writer(data) {
        panic!("{e}");
    }
});
