//! Code the tests, the self-test and the test publisher share, kept out of the recording
//! layers: the built-in clip, the MPEG-TS conformance checker and the file verifier.

pub mod clip;
pub mod mkv_check;
pub mod ts_check;
pub mod verify;
