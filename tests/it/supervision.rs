//! A recorder task that panics (issue 14): noticed by its supervisor, its entry removed, its
//! publisher asked again into a new file, and the other recordings untouched. The panic is a
//! debug-build trigger (`NINJAREC_TEST_PANIC_STREAM`), fired once per process.

use std::time::Duration;

use crate::record_e2e::{Process, Publisher, files_with, source_config, video_span};
use crate::support::ffmpeg::decode_errors;
use crate::support::fixtures::{TestDir, TestServer, recorder_args};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_that_panics_is_replaced_and_the_others_keep_recording() {
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("panic");
    // --max-streams 2: if the crashed entry stayed, p1's return would be refused.
    let rec = Process::start_with_env(
        &recorder_args(
            &url,
            dir.path(),
            &[
                "--room",
                "proom",
                "--record-room",
                "--max-streams",
                "2",
                "--duration",
                "20",
            ],
        ),
        &[("NINJAREC_TEST_PANIC_STREAM", "p1")],
    );
    let p1 = Publisher::start(source_config(&url, "p1", Some("proom")));
    let p2 = Publisher::start(source_config(&url, "p2", Some("proom")));
    let (status, _, log) = rec.wait(Duration::from_secs(60)).await;
    p1.stop().await;
    p2.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("recorder crashed (test panic").count(),
        1,
        "one crash, said once\n{log}"
    );
    let files = files_with(dir.path(), "ts");
    let of = |id: &str| -> Vec<String> {
        files
            .keys()
            .filter(|n| n.starts_with(&format!("proom_{id}_")))
            .cloned()
            .collect()
    };
    let (p1_files, p2_files) = (of("p1"), of("p2"));
    assert_eq!(
        p1_files.len(),
        2,
        "crashed file + the new recording: {files:?}\n{log}"
    );
    assert_eq!(p2_files.len(), 1, "{files:?}");
    // The crashed file plays up to its last write; the new one and p2's are whole.
    for name in p1_files.iter().chain(&p2_files) {
        let path = dir.path().join(name);
        let errors = decode_errors(&path);
        assert!(errors.is_empty(), "{name}: {errors}");
    }
    let span = |name: &String| {
        let (a, b, _) = video_span(&dir.path().join(name));
        b - a
    };
    let crashed = span(&p1_files[0]);
    let again = span(&p1_files[1]);
    let other = span(&p2_files[0]);
    assert!(
        crashed > 1.0,
        "crashed file holds what was written: {crashed:.1} s"
    );
    // Asked again at once (a failure backs off ~1 s), so the new file holds most of the rest.
    assert!(
        crashed + again > 13.0,
        "p1: {crashed:.1} s + {again:.1} s in a 20 s run\n{log}"
    );
    assert!(other > 16.0, "p2 recorded throughout: {other:.1} s\n{log}");
}
