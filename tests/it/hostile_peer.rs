//! A hostile publisher (issue 14): a client in the room that sends offers the recorder cannot
//! answer (garbage SDP, a new session each time), hundreds a second for 60 s, beside a real
//! publisher. Before the backoff and the log budget this made 62 798 log lines in 21 s, grew
//! RSS by 24 MB and cost the real stream its audio. Now: the garbage publisher is backed off
//! (1 s doubling to 60 s, set aside after five failures), gets at most one line per 10 s, and
//! the real stream's file is whole. RSS and CPU are reported, not asserted; on a release build
//! (`NINJAREC_BIN=…/release/ninjarec`, 2026-12-03): 27 600 offers in 60 s, 6 log lines about
//! them, recorder CPU 1.70 % of a core before the flood and 2.47 % during it (+0.77 %), RSS
//! 14 340 KiB before, 15 180 KiB at its end and 5 s after it left (+840 KiB).

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use ninjarec::signaling::Security;
use ninjarec::signaling::crypto::{DEFAULT_SALT, Password};
use ninjarec::testkit::clip::Clip;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::record_e2e::{Process, Publisher, check_recording, source_config, ts_files};
use crate::support::fixtures::{TestDir, TestServer, recorder_args};

const FLOOD: Duration = Duration::from_secs(60);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process has used so far, from `/proc/<pid>/stat`.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_sending_garbage_offers_is_backed_off_quiet_and_harms_no_one() {
    let clip = Clip::builtin();
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("garbage");
    let room = "floodroom";
    let good = Publisher::start(source_config(&url, "good", Some(room)));
    let recorder = Process::start(&recorder_args(
        &url,
        &dir,
        &["--room", room, "--record-room", "--dialect", "relay"],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ts_files(&dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no recording of the real publisher"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The recorder's CPU with the real publisher alone, over a window, to subtract from the
    // flood's (reported, not asserted: run it on a release build with NINJAREC_BIN).
    let quiet_window = Duration::from_secs(10);
    let (cpu_q0, t_q0) = (cpu_s(recorder.pid()), Instant::now());
    tokio::time::sleep(quiet_window).await;
    let quiet_pct = (cpu_s(recorder.pid()) - cpu_q0) / t_q0.elapsed().as_secs_f64() * 100.0;
    let rss_before = rss_kib(recorder.pid());
    let cpu_f0 = cpu_s(recorder.pid());

    // The garbage publisher: joins the room with a stream ID of ours, then floods offers.
    let sec = Security::new(&Password::Default, DEFAULT_SALT);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("garbage client connects");
    let junk = sec.hash_stream_id("junk");
    let join =
        json!({"request":"joinroom","roomid":sec.room_hash(room),"streamID":junk,"from":"junk1"});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < FLOOD {
        for _ in 0..10 {
            sent += 1;
            let offer = json!({"from":"junk1","streamID":junk,"session":format!("s{sent}"),
                "description":{"type":"offer","sdp":"v=0\r\nthis is not SDP\r\n"}});
            if ws
                .send(Message::Text(offer.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_pct = (cpu_s(recorder.pid()) - cpu_f0) / started.elapsed().as_secs_f64() * 100.0;
    let rss_flood = rss_kib(recorder.pid());
    let _ = ws.close(None).await;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib(recorder.pid());

    recorder.signal("-TERM");
    let (status, _stdout, log) = recorder.wait(Duration::from_secs(20)).await;
    good.stop().await;
    assert!(status.success(), "{status:?}\n{log}");
    let junk_lines: Vec<&str> = log.lines().filter(|l| l.contains("junk")).collect();
    eprintln!(
        "{sent} garbage offers in {FLOOD:?}: {} log lines about them; RSS {rss_before} KiB before, {rss_flood} KiB at the end of the flood, {rss_after} KiB 5 s after it left; recorder CPU {quiet_pct:.2} % of a core before the flood, {flood_pct:.2} % during it",
        junk_lines.len()
    );
    for l in &junk_lines {
        eprintln!("  {l}");
    }
    // One line per 10 s of flood (6), the "set aside" line, and the first recording's start
    // (before it is known to fail).
    assert!(
        junk_lines.len() <= 9,
        "{} lines about the garbage publisher:\n{}",
        junk_lines.len(),
        junk_lines.join("\n")
    );
    assert!(
        log.contains("set aside"),
        "the failing publisher is said to be set aside:\n{log}"
    );
    // The real publisher's recording is whole: one file, clean, bit-exact, as long as the run.
    let files = ts_files(&dir);
    let good_files: Vec<&String> = files.keys().filter(|n| n.contains("good")).collect();
    assert_eq!(good_files.len(), 1, "{files:?}");
    let v = check_recording(&dir.join(good_files[0]), &clip, false, FLOOD.as_secs_f64());
    eprintln!("real publisher: {v:?}");
    assert!(
        files.keys().all(|n| !n.contains("junk")),
        "no file for garbage: {files:?}"
    );
    drop(server);
}
