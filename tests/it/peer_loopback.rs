//! Loopback tests of `ninjarec::peer`: a real webrtc-rs test publisher and a real receiving session
//! on 127.0.0.1, wired together directly (no signalling server).

use std::collections::HashSet;
use std::time::Duration;

use ninjarec::media::TrackKind;
use ninjarec::peer::ConnectionState;
use ninjarec::peer::publisher::{
    self, PublisherCloseReason, PublisherConfig, PublisherEvent, PublisherHandle, PublisherMode,
};
use ninjarec::peer::session::{
    self, CloseReason, MediaEvent, SessionConfig, SessionEvent, SessionHandle, SessionStats,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

fn session_config() -> SessionConfig {
    SessionConfig {
        ice_servers: Vec::new(),
        udp_addrs: vec!["127.0.0.1:0".to_owned()],
        ice_connect_timeout: Duration::from_secs(10),
        vanish_timeout: Duration::from_secs(1),
        ice_timeouts: Some((Duration::from_secs(1), Duration::from_secs(3))),
        label: "loopback".to_owned(),
        ..SessionConfig::default()
    }
}

/// Moves signalling between the two sides and passes every other event on to the test.
fn wire(
    publisher: PublisherHandle,
    mut pub_rx: mpsc::Receiver<PublisherEvent>,
    session: SessionHandle,
    mut sess_rx: mpsc::Receiver<SessionEvent>,
) -> (
    mpsc::UnboundedReceiver<PublisherEvent>,
    mpsc::UnboundedReceiver<SessionEvent>,
) {
    let (pub_tx, pub_out) = mpsc::unbounded_channel();
    let (sess_tx, sess_out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut pub_open, mut sess_open) = (true, true);
        while pub_open || sess_open {
            tokio::select! {
                ev = pub_rx.recv(), if pub_open => match ev {
                    Some(PublisherEvent::LocalOffer { sdp }) => {
                        let _ = session.remote_offer(sdp).await;
                    }
                    Some(PublisherEvent::LocalCandidate(c)) => {
                        let _ = session.remote_candidate(c).await;
                    }
                    Some(other) => { let _ = pub_tx.send(other); }
                    None => pub_open = false,
                },
                ev = sess_rx.recv(), if sess_open => match ev {
                    Some(SessionEvent::LocalAnswer { sdp }) => {
                        let _ = publisher.remote_answer(sdp).await;
                    }
                    Some(SessionEvent::LocalCandidate(c)) => {
                        assert!(c.sdp_mid.is_some(), "candidate without sdpMid");
                        let _ = publisher.remote_candidate(c).await;
                    }
                    Some(other) => { let _ = sess_tx.send(other); }
                    None => sess_open = false,
                },
            }
        }
    });
    (pub_out, sess_out)
}

/// What the receiver saw while media flowed.
#[derive(Default, Debug)]
struct Seen {
    tracks: Vec<(TrackKind, String, bool)>,
    video: u64,
    video_markers: u64,
    audio: u64,
    /// SSRCs of the Sender Reports received (a report names its stream by SSRC only).
    sr_ssrcs: Vec<u32>,
    video_ssrcs: HashSet<u32>,
    audio_ssrcs: HashSet<u32>,
    channels_open: usize,
    renegotiated: bool,
    ssrcs: HashSet<u32>,
}

/// Collects receiver events for `run_for`; panics if the session closes meanwhile.
async fn observe(rx: &mut mpsc::UnboundedReceiver<SessionEvent>, run_for: Duration) -> Seen {
    let mut seen = Seen::default();
    let end = Instant::now() + run_for;
    while let Ok(Some(ev)) = timeout(end.saturating_duration_since(Instant::now()), rx.recv()).await
    {
        match ev {
            SessionEvent::TrackStarted {
                kind,
                mime,
                supported,
                ..
            } => seen.tracks.push((kind, mime, supported)),
            SessionEvent::DataChannelOpen { .. } => seen.channels_open += 1,
            SessionEvent::Renegotiated => seen.renegotiated = true,
            SessionEvent::Media(MediaEvent::Rtp { kind, packet, .. }) => {
                seen.ssrcs.insert(packet.ssrc);
                match kind {
                    TrackKind::Video => {
                        seen.video_ssrcs.insert(packet.ssrc);
                        seen.video += 1;
                        seen.video_markers += u64::from(packet.marker);
                    }
                    TrackKind::Audio => {
                        seen.audio_ssrcs.insert(packet.ssrc);
                        seen.audio += 1;
                    }
                }
            }
            SessionEvent::Media(MediaEvent::SenderReport { ssrc, ntp, .. }) => {
                assert_ne!(ntp, 0);
                seen.sr_ssrcs.push(ssrc);
            }
            SessionEvent::Closed { reason, .. } => panic!("session closed early: {reason:?}"),
            _ => {}
        }
    }
    seen
}

fn assert_media(seen: &Seen, secs: f64) {
    let mut kinds: Vec<_> = seen.tracks.iter().map(|t| t.0).collect();
    kinds.sort_by_key(|k| *k == TrackKind::Audio);
    assert_eq!(kinds, [TrackKind::Video, TrackKind::Audio], "{seen:?}");
    assert!(
        seen.tracks.iter().all(|t| t.2),
        "unsupported track: {seen:?}"
    );
    // 30 fps, 2 slices per frame; Opus at 50 packets/s. Allow for ICE/DTLS set-up time.
    let frames = seen.video_markers as f64;
    assert!(
        frames > 15.0 * secs && frames < 40.0 * secs,
        "video frames {frames} in {secs}s: {seen:?}"
    );
    assert!(seen.video >= seen.video_markers);
    let audio = seen.audio as f64;
    assert!(
        audio > 25.0 * secs && audio < 60.0 * secs,
        "audio packets {audio} in {secs}s: {seen:?}"
    );
    let reports = |ssrcs: &HashSet<u32>| seen.sr_ssrcs.iter().filter(|s| ssrcs.contains(s)).count();
    assert!(
        reports(&seen.video_ssrcs) >= 1 && reports(&seen.audio_ssrcs) >= 1,
        "SRs: {seen:?}"
    );
}

async fn wait_session_closed(
    rx: &mut mpsc::UnboundedReceiver<SessionEvent>,
    within: Duration,
) -> (CloseReason, SessionStats) {
    let end = Instant::now() + within;
    loop {
        match timeout(end.saturating_duration_since(Instant::now()), rx.recv()).await {
            Ok(Some(SessionEvent::Closed { reason, stats })) => return (reason, stats),
            Ok(Some(_)) => {}
            Ok(None) => panic!("session ended without Closed"),
            Err(_) => panic!("session did not close within {within:?}"),
        }
    }
}

async fn wait_publisher(
    rx: &mut mpsc::UnboundedReceiver<PublisherEvent>,
    within: Duration,
    mut pred: impl FnMut(&PublisherEvent) -> bool,
) -> PublisherEvent {
    let end = Instant::now() + within;
    loop {
        match timeout(end.saturating_duration_since(Instant::now()), rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("publisher ended"),
            Err(_) => panic!("publisher event not seen within {within:?}"),
        }
    }
}

/// Raspberry Ninja style: media in the first offer, two data channels, pings; the viewer's
/// `close()` says bye and the publisher stops with `Bye`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_in_first_offer_records_and_viewer_bye_closes_publisher() {
    crate::support::fixtures::init_test_logging();
    let mut pcfg = PublisherConfig::new(PublisherMode::MediaInFirstOffer);
    pcfg.ping_interval = Some(Duration::from_millis(700));
    let (ph, prx) = publisher::spawn(pcfg);
    let (sh, srx) = session::spawn(session_config());
    let (mut pub_ev, mut sess_ev) = wire(ph.clone(), prx, sh.clone(), srx);

    let seen = observe(&mut sess_ev, Duration::from_secs(3)).await;
    assert_media(&seen, 3.0);
    assert_eq!(seen.channels_open, 2, "RN opens two sendChannels: {seen:?}");
    assert!(!seen.renegotiated);
    assert!(sh.request_keyframe().is_ok());

    // Pings were answered (publisher saw a pong with its own value).
    let pong = wait_publisher(&mut pub_ev, Duration::from_secs(2), |e| {
        matches!(e, PublisherEvent::Pong(_))
    })
    .await;
    assert!(matches!(pong, PublisherEvent::Pong(v) if v.as_u64().is_some()));

    sh.close().await.unwrap();
    let (reason, stats) = wait_session_closed(&mut sess_ev, Duration::from_secs(5)).await;
    assert_eq!(reason, CloseReason::LocalClose);
    assert!(stats.pings_answered >= 1, "{stats:?}");
    assert!(stats.plis_sent >= 1, "{stats:?}");
    assert_eq!(stats.dc_dropped, 0);
    let closed = wait_publisher(&mut pub_ev, Duration::from_secs(5), |e| {
        matches!(e, PublisherEvent::Closed { .. })
    })
    .await;
    assert!(
        matches!(
            closed,
            PublisherEvent::Closed {
                reason: PublisherCloseReason::Bye
            }
        ),
        "{closed:?}"
    );
    assert!(sh.close().await.is_err(), "session task should be gone");
}

/// Web-app style: data channel first, tracks after the viewer request by a renegotiation over the
/// data channel; the publisher's bye closes the session with `Bye`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_first_renegotiates_and_publisher_bye_closes_session() {
    let (ph, prx) = publisher::spawn(PublisherConfig::new(PublisherMode::DataChannelFirst));
    let (sh, srx) = session::spawn(session_config());
    let (mut pub_ev, mut sess_ev) = wire(ph.clone(), prx, sh.clone(), srx);

    let req = wait_publisher(&mut pub_ev, Duration::from_secs(5), |e| {
        matches!(e, PublisherEvent::ViewerRequest { .. })
    })
    .await;
    assert!(matches!(
        req,
        PublisherEvent::ViewerRequest { audio: true, video: true, prefer_video_codec: Some(ref c) } if c == "h264"
    ));
    let seen = observe(&mut sess_ev, Duration::from_secs(3)).await;
    assert!(seen.renegotiated, "{seen:?}");
    assert_eq!(seen.channels_open, 1);
    assert_media(&seen, 3.0);

    ph.close().await.unwrap();
    let (reason, stats) = wait_session_closed(&mut sess_ev, Duration::from_secs(5)).await;
    assert_eq!(reason, CloseReason::Bye);
    assert_eq!(stats.renegotiations, 1);
}

/// Nothing in a data-channel-first set-up waits for a timer. Once DTLS is up, four SCTP packets
/// and the DCEP OPEN/ACK pair (a few milliseconds on loopback) stand between the publisher and
/// the viewer request. No media flows before the channel is open, so a packet that handling an
/// event queued (the SCTP INIT once DTLS completes, the DCEP OPEN once the association is up)
/// and left for the next tick or packet waits a timer out: the SCTP INIT retransmission after
/// 1 s at the least, and the ICE agents here tick only every 2 s. 800 ms is far above the
/// first and below that floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_first_set_up_does_not_wait_for_a_timer() {
    // Keepalives at most every 30 s: the agents tick at their 2 s ceiling and send nothing.
    let quiet = (Duration::from_secs(90), Duration::from_secs(120));
    let mut cfg = PublisherConfig::new(PublisherMode::DataChannelFirst);
    cfg.ice_timeouts = Some(quiet);
    cfg.ice_keepalive = Some(Duration::from_secs(30));
    let (ph, prx) = publisher::spawn(cfg);
    let mut scfg = session_config();
    scfg.ice_timeouts = Some(quiet);
    scfg.ice_keepalive = Some(Duration::from_secs(30));
    let (sh, srx) = session::spawn(scfg);
    let (mut pub_ev, mut sess_ev) = wire(ph.clone(), prx, sh.clone(), srx);

    wait_publisher(&mut pub_ev, Duration::from_secs(10), |e| {
        matches!(e, PublisherEvent::State(ConnectionState::Connected))
    })
    .await;
    let connected = Instant::now();
    let req = wait_publisher(&mut pub_ev, Duration::from_secs(10), |e| {
        matches!(e, PublisherEvent::ViewerRequest { .. })
    })
    .await;
    let took = connected.elapsed();
    assert!(
        matches!(req, PublisherEvent::ViewerRequest { video: true, .. }),
        "{req:?}"
    );
    assert!(
        took < Duration::from_millis(800),
        "the viewer request came {took:?} after DTLS was up"
    );
    let seen = observe(&mut sess_ev, Duration::from_secs(2)).await;
    assert!(seen.renegotiated, "{seen:?}");
    assert_media(&seen, 2.0);
    ph.close().await.unwrap();
}

/// The publisher's process dies (its runtime is shut down: no bye, no SCTP abort, sockets gone):
/// the session notices through ICE and closes with `PublisherVanished` in bounded time.
#[test]
fn vanished_publisher_closes_session() {
    let viewer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let publisher_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ph, prx) = {
        let _g = publisher_rt.enter();
        publisher::spawn(PublisherConfig::new(PublisherMode::MediaInFirstOffer))
    };
    viewer_rt.block_on(async move {
        let (sh, srx) = session::spawn(session_config());
        let (_pub_ev, mut sess_ev) = wire(ph, prx, sh.clone(), srx);
        let seen = observe(&mut sess_ev, Duration::from_millis(1500)).await;
        assert!(seen.video > 0 && seen.audio > 0, "{seen:?}");

        publisher_rt.shutdown_background();
        let killed = Instant::now();
        let (reason, _) = wait_session_closed(&mut sess_ev, Duration::from_secs(10)).await;
        assert_eq!(reason, CloseReason::PublisherVanished);
        // ICE disconnected after 1 s of silence + 1 s grace, with slack for a slow debug build.
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "{:?}",
            killed.elapsed()
        );
    });
}

/// An offer whose candidates never arrive: the session gives up with `IceTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_that_never_connects_times_out() {
    let (ph, mut prx) = publisher::spawn(PublisherConfig::new(PublisherMode::MediaInFirstOffer));
    let mut cfg = session_config();
    cfg.ice_connect_timeout = Duration::from_secs(1);
    let (sh, mut srx) = session::spawn(cfg);
    let offer = loop {
        match timeout(Duration::from_secs(5), prx.recv()).await {
            Ok(Some(PublisherEvent::LocalOffer { sdp })) => break sdp,
            Ok(Some(_)) => {}
            other => panic!("no offer: {other:?}"),
        }
    };
    sh.remote_offer(offer).await.unwrap();
    let started = Instant::now();
    let reason = loop {
        match timeout(Duration::from_secs(5), srx.recv()).await {
            Ok(Some(SessionEvent::Closed { reason, .. })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("no Closed: {other:?}"),
        }
    };
    assert_eq!(reason, CloseReason::IceTimeout);
    assert!(started.elapsed() < Duration::from_secs(3));
    ph.close_without_bye().await.unwrap();
}
