//! `--udp-port`: every publisher's media through one UDP socket, including publishers behind
//! a 1:1 NAT that reach the recorder only through a forwarded port and `--public-ip`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use crate::record_e2e::{
    Process, Publisher, check_recording, files_with, source_config, wait_for_files,
};
use crate::support::chromium::{BrowserPublisher, BrowserPublisherConfig};
use crate::support::ffmpeg::{decode_errors, packet_times};
use crate::support::fixtures::{InProcess, TestDir, TestServer, heavy, recorder_args};
use crate::support::gst::{GstPublisher, GstPublisherConfig, require_gstreamer};
use crate::support::impair::{ImpairedNet, Impairment};
use ninjarec::signaling::server::ServerConfig;
use ninjarec::testkit::clip::Clip;

/// The public address of the NAT in front of the recorder (TEST-NET-2: routed nowhere real).
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A UDP port free on this machine now.
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.local_addr().unwrap().port()
}

/// The recorder's flags for `room` with media on `port` of every interface (so both loopback
/// and the bridge reach it), announced at `public_ips`.
fn one_port_args(url: &str, dir: &TestDir, room: &str, port: u16, public_ips: &str) -> Vec<String> {
    let port = port.to_string();
    let extra = [
        "--room",
        room,
        "--record-room",
        "--udp-port",
        &port,
        "--public-ip",
        public_ips,
    ];
    let mut args = recorder_args(url, dir, &extra);
    let at = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[at] = "0.0.0.0:0".to_owned();
    args
}

/// The UDP sockets process `pid` has open, as `ss -uanp` lists them (local addresses).
fn udp_sockets_of(pid: u32) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-uanp"])
        .output()
        .expect("the one-port test needs ss (iproute2)");
    let tag = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
        .collect()
}

/// GStreamer publishers (Raspberry Ninja's pipeline, 640x360 at 800 kb/s: a debug build
/// records several in real time) of `streams` in `room`, inside `net`'s namespace.
fn gst_in(net: &ImpairedNet, url: &str, room: &str, streams: &[&str]) -> GstPublisherConfig {
    let mut cfg = GstPublisherConfig::new(url, streams);
    cfg.room = Some(room.into());
    cfg.width = 640;
    cfg.height = 360;
    cfg.bitrate_kbps = 800;
    cfg.netns = Some(net.ns.clone());
    cfg.local_ip = Some(net.peer_ip.to_string());
    cfg
}

/// Four webrtc-rs publishers on this machine and two GStreamer publishers (Raspberry Ninja's
/// pipeline) in a namespace behind a NAT that forwards only the recorder's port: all six are
/// recorded, and the recorder has exactly one UDP socket, the `--udp-port` one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publisher_through_one_udp_port_and_a_forwarded_one() {
    require_gstreamer();
    let _heavy = heavy().await;
    let net = ImpairedNet::new(Impairment::NONE, Impairment::NONE);
    let port = free_udp_port();
    net.forward_udp(PUBLIC, port);
    let dir = TestDir::new("one-port");
    let server = TestServer::start_with(ServerConfig::new(net.host_addr())).await;
    let room = "oneport";
    // The NAT's address for the guests outside, this machine's for those on it.
    let mut args = one_port_args(
        &server.url,
        &dir,
        room,
        port,
        &format!("{PUBLIC},127.0.0.1"),
    );
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    args.extend(["--http".to_owned(), http.to_string()]);
    let recorder = Process::start(&args);

    let local: Vec<Publisher> = (0..4)
        .map(|k| Publisher::start(source_config(&server.url, &format!("local{k}"), Some(room))))
        .collect();
    let gst = GstPublisher::start(&gst_in(&net, &server.url, room, &["natted0", "natted1"]));

    wait_for_files(&dir, 6).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sockets = udp_sockets_of(recorder.pid());
    // The port's counters are on /metrics: everything received, nothing dropped.
    let metrics = crate::status_page::http_get(&format!("http://{http}"), "/metrics")
        .await
        .body;
    let datagrams = |result: &str| {
        let series =
            format!("ninjarec_udp_port_datagrams_total{{port=\"{port}\",result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    recorder.signal("-TERM");
    let (status, stdout, log) = recorder.wait(Duration::from_secs(20)).await;
    for p in local {
        p.stop().await;
    }
    let sent = tokio::task::block_in_place(|| gst.stop());
    let [up, down] = net.stats();
    eprintln!("recorder UDP sockets: {sockets:?}\nbridge up {up:?} down {down:?}\n{stdout}");
    assert!(status.success(), "{log}");
    let received = datagrams("received").unwrap_or(0.0);
    // Six streams of ~250 packets a second for a few seconds (the snapshot is taken each second).
    assert!(received > 1_000.0, "{received} datagrams\n{metrics}");
    assert_eq!(datagrams("dropped_queue_full"), Some(0.0), "{metrics}");
    assert!(datagrams("dropped_unknown").is_some(), "{metrics}");
    assert_eq!(
        sockets,
        vec![format!("0.0.0.0:{port}")],
        "one UDP socket for all media"
    );

    let files = files_with(&dir, "ts");
    let clip = Clip::builtin();
    for k in 0..4 {
        let name = files
            .keys()
            .find(|n| n.starts_with(&format!("{room}_local{k}_")))
            .unwrap_or_else(|| panic!("no file for local{k}: {files:?}"));
        check_recording(&dir.join(name), &clip, false, 2.5);
    }
    for stream in ["natted0", "natted1"] {
        let name = files
            .keys()
            .find(|n| n.starts_with(&format!("{room}_{stream}_")))
            .unwrap_or_else(|| panic!("no file for {stream}: {files:?}\n{log}"));
        let path = dir.join(name);
        let frames = packet_times(&path, "v").len();
        let audio = packet_times(&path, "a").len();
        let wire = &sent[stream].total;
        eprintln!(
            "{stream}: {frames} frames, {audio} audio packets (sent {} frames)",
            wire.video_frames
        );
        assert!(frames >= 150, "{stream}: {frames} frames");
        assert!(audio >= 250, "{stream}: {audio} audio packets");
        let errors = decode_errors(&path);
        assert!(errors.is_empty(), "{stream}: {errors}");
    }
    assert!(
        up.passed > 1000 && down.passed > 10,
        "the NAT carried the media"
    );
}

/// The VDO.Ninja web app's side, real Chromium, in a namespace behind the NAT that forwards
/// only the recorder's `--udp-port`: it connects through the forwarded port and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_through_a_forwarded_udp_port() {
    let _heavy = heavy().await;
    let net = ImpairedNet::new(Impairment::NONE, Impairment::NONE);
    let port = free_udp_port();
    net.forward_udp(PUBLIC, port);
    let dir = TestDir::new("one-port-chromium");
    let mut server_cfg = ServerConfig::new(net.host_addr());
    server_cfg.official_only = true;
    let server = TestServer::start_with(server_cfg).await;
    let room = "oneportweb";
    let args = one_port_args(&server.url, &dir, room, port, &PUBLIC.to_string());
    let recorder = InProcess::start(&args);
    let (summaries, context) = chromium_in(&net, &server.url, room, "webnat", recorder).await;
    let _ = check_recorded(&summaries, "webnat", 100, 200, &context);
}

/// Real Chromium publishing `stream` to `room` from inside `net`'s namespace (its host
/// names resolve nowhere but the bridge), recorded by `recorder` for 15 s once its page is
/// up: the summaries, and the bridge's counters and the page's events to explain a failure.
async fn chromium_in(
    net: &ImpairedNet,
    url: &str,
    room: &str,
    stream: &str,
    recorder: InProcess,
) -> (Vec<ninjarec::record::stream::StreamSummary>, String) {
    let mut cfg = BrowserPublisherConfig::new(url, stream.to_owned());
    cfg.room = Some(room.into());
    cfg.netns = Some(net.ns.clone());
    cfg.extra_args.push(format!(
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE {}",
        net.host_ip
    ));
    let browser = BrowserPublisher::start(cfg);
    // Chromium's start is not what is measured: on a loaded machine its page once took more
    // than the whole 15 s to come up (no page event at all, so no publisher joined).
    browser.expect_event("ready", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let summaries = recorder.stop().await;
    let events = browser.events_text();
    drop(browser);
    let [up, down] = net.stats();
    (
        summaries,
        format!("bridge up {up:?} down {down:?}\n{events}"),
    )
}

/// A TCP port free on this machine now.
fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    s.local_addr().unwrap().port()
}

/// The recorder's flags for a guest network that lets no UDP through: `--udp-port` and
/// `--tcp-port`, both told at the bridge address `at`.
fn tcp_only_args(url: &str, dir: &TestDir, room: &str, at: Ipv4Addr) -> Vec<String> {
    let mut args = one_port_args(url, dir, room, free_udp_port(), &at.to_string());
    args.extend(["--tcp-port".to_owned(), free_tcp_port().to_string()]);
    args
}

/// Checks the recording of `stream` in `summaries`: present, with `min_frames` frames and
/// `min_audio` audio packets, decoding cleanly.
fn check_recorded(
    summaries: &[ninjarec::record::stream::StreamSummary],
    stream: &str,
    min_frames: usize,
    min_audio: usize,
    context: &str,
) -> std::path::PathBuf {
    let summary = summaries
        .iter()
        .find(|s| s.stream_id == stream && s.path.is_some())
        .unwrap_or_else(|| panic!("no recording of {stream}: {summaries:#?}\n{context}"));
    let path = summary.path.clone().unwrap();
    let frames = packet_times(&path, "v").len();
    let audio = packet_times(&path, "a").len();
    eprintln!("{summary}");
    assert!(frames >= min_frames, "{frames} frames\n{context}");
    assert!(audio >= min_audio, "{audio} audio packets\n{context}");
    let errors = decode_errors(&path);
    assert!(errors.is_empty(), "{errors}");
    path
}

/// A GStreamer publisher (Raspberry Ninja's pipeline, libnice with its default ICE-TCP) on
/// a network that drops every UDP packet: it reaches the recorder's `--tcp-port` and is
/// recorded whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_through_the_tcp_port_when_no_udp_passes() {
    require_gstreamer();
    let _heavy = heavy().await;
    let net = ImpairedNet::new(Impairment::NONE, Impairment::NONE);
    net.block_udp(true);
    let dir = TestDir::new("tcp-port-gst");
    let server = TestServer::start_with(ServerConfig::new(net.host_addr())).await;
    let room = "tcpport";
    let recorder = InProcess::start(&tcp_only_args(&server.url, &dir, room, net.host_ip));
    let mut cfg = gst_in(&net, &server.url, room, &["tcpgst"]);
    cfg.ice_tcp = true;
    // Flash+beep pairs. When the first keyframe comes seconds after the first audio (2 of 3
    // runs over TCP here), audio is placed before the Sender Reports are reliable; once they
    // are, it is set to their placement at once (`timeline::SETTLE_MIN`), so the file is in
    // sync from there on. The pairs before that may still be off (issue 14's start-up case).
    let schedule = crate::support::sync::Schedule::irregular(7, 6.0);
    cfg.flashes = schedule.flashes.clone();
    cfg.period = Some(schedule.period);
    let gst = GstPublisher::start(&cfg);
    wait_for_files(&dir, 1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let summaries = recorder.stop().await;
    let sent = tokio::task::block_in_place(|| gst.stop());
    let [up, down] = net.stats();
    let context = format!("bridge up {up:?} down {down:?}");
    eprintln!("{context}");
    let wire = &sent["tcpgst"].total;
    let context = format!("{context}\nsent {wire:?}");
    // 10 s and more at 30 fps, every frame written that was sent after the connection.
    let path = check_recorded(&summaries, "tcpgst", 250, 450, &context);
    // Everything the publisher sent over TCP is in the file.
    let (frames, audio) = (
        packet_times(&path, "v").len() as u64,
        packet_times(&path, "a").len() as u64,
    );
    assert!(
        frames * 100 >= wire.video_frames * 98 && audio * 100 >= wire.wire_audio_packets * 98,
        "{frames} frames, {audio} audio packets\n{context}"
    );
    let sync = crate::support::sync::measure(&path);
    eprintln!("{sync}");
    let last: Vec<f64> = sync.offsets_ms.iter().rev().take(3).copied().collect();
    assert!(
        sync.pairs.len() >= 5 && last.iter().all(|o| o.abs() <= 40.0),
        "the end of the file is out of sync: {sync}\n{context}"
    );
    assert!(up.blocked > 0, "the publisher tried UDP: {context}");
}

/// The VDO.Ninja web app's side, real Chromium, on a network that drops every UDP packet:
/// it reaches the recorder's `--tcp-port` and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_through_the_tcp_port_when_no_udp_passes() {
    let _heavy = heavy().await;
    let net = ImpairedNet::new(Impairment::NONE, Impairment::NONE);
    net.block_udp(true);
    let dir = TestDir::new("tcp-port-chromium");
    let mut server_cfg = ServerConfig::new(net.host_addr());
    server_cfg.official_only = true;
    let server = TestServer::start_with(server_cfg).await;
    let room = "tcpportweb";
    let recorder = InProcess::start(&tcp_only_args(&server.url, &dir, room, net.host_ip));
    let (summaries, context) = chromium_in(&net, &server.url, room, "webtcp", recorder).await;
    let _ = check_recorded(&summaries, "webtcp", 100, 200, &context);
    let [up, _] = net.stats();
    assert!(up.blocked > 0, "the browser tried UDP: {context}");
}
