//! End-to-end tests of `ninjarec::testsrc`: the built-in handshake server on 127.0.0.1:0, a test
//! source publishing the built-in clip, and as the viewer the real signalling client
//! (`signaling::client::spawn`, room mode) wired to real receiving sessions
//! (`peer::session::spawn`) — the same wiring the recorder's orchestrator does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ninjarec::media::TrackKind;
use ninjarec::peer::publisher::PublisherMode;
use ninjarec::peer::session::{self, CloseReason, MediaEvent, SessionConfig, SessionEvent};
use ninjarec::signaling::client::{SignalingConfig, SignalingEvent};
use ninjarec::signaling::crypto::Password;
use ninjarec::signaling::server::Server;
use ninjarec::signaling::{Dialect, PeerId};
use ninjarec::testsrc::{self, TestSource, TestSourceConfig, TestSourceError, TestSourceStats};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::support::fixtures::TestServer;

/// Packets that prove media flows: one second of the clip (30 fps x 2 slices; 50 Opus
/// frames/s).
const VIDEO_PACKETS: u64 = 60;
const AUDIO_PACKETS: u64 = 50;
const MEDIA_WITHIN: Duration = Duration::from_secs(10);

fn source_config(
    server: &Server,
    stream: &str,
    dialect: Dialect,
    password: Password,
    mode: PublisherMode,
) -> TestSourceConfig {
    let mut c = TestSourceConfig::new(format!("ws://{}", server.local_addr()), stream);
    c.room = Some("myroom".into());
    c.dialect = Some(dialect);
    c.password = password;
    c.mode = mode;
    c.backoff_initial = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(400);
    c
}

fn start_source(cfg: TestSourceConfig) -> (TestSource, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (testsrc::spawn(cfg, rx).expect("valid config"), tx)
}

/// What one viewer saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    offers: u32,
    streams: HashSet<String>,
    h264: bool,
    opus: bool,
    video: u64,
    audio: u64,
    closed: Vec<CloseReason>,
}

impl Seen {
    fn has_media(&self) -> bool {
        self.h264 && self.opus && self.video >= VIDEO_PACKETS && self.audio >= AUDIO_PACKETS
    }
}

/// A recorder without the recording: signalling client + one receiving session per offer.
struct Viewer {
    seen: watch::Receiver<Seen>,
    sessions: Arc<Mutex<HashMap<PeerId, session::SessionHandle>>>,
    _stop: watch::Sender<bool>,
}

fn to_signaling(c: ninjarec::peer::IceCandidate) -> ninjarec::signaling::IceCandidate {
    ninjarec::signaling::IceCandidate {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
    }
}

fn to_peer(c: ninjarec::signaling::IceCandidate) -> ninjarec::peer::IceCandidate {
    ninjarec::peer::IceCandidate {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
    }
}

fn start_viewer(server: &Server, dialect: Dialect, password: Password) -> Viewer {
    let mut cfg = SignalingConfig::new(format!("ws://{}", server.local_addr()));
    cfg.room = Some("myroom".into());
    cfg.record_room = true;
    cfg.dialect = Some(dialect);
    cfg.password = password;
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(400);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (handle, mut events) = ninjarec::signaling::spawn(cfg, stop_rx).expect("viewer config");
    // The handle is not Clone; every per-session task needs it.
    let handle = Arc::new(handle);
    let (seen_tx, seen_rx) = watch::channel(Seen::default());
    let seen_tx = Arc::new(seen_tx);
    let sessions: Arc<Mutex<HashMap<PeerId, session::SessionHandle>>> = Arc::default();
    let map = sessions.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                SignalingEvent::Offer {
                    peer,
                    stream_id,
                    session,
                    sdp,
                    encrypted,
                } => {
                    let (sh, mut srx) = session::spawn(SessionConfig {
                        ice_servers: Vec::new(),
                        udp_addrs: vec!["127.0.0.1:0".to_owned()],
                        ice_connect_timeout: Duration::from_secs(10),
                        label: "testsrc-viewer".to_owned(),
                        ..SessionConfig::default()
                    });
                    let old = map.lock().unwrap().insert(peer.clone(), sh.clone());
                    if let Some(old) = old {
                        let _ = old.close().await;
                    }
                    let _ = sh.remote_offer(sdp).await;
                    seen_tx.send_modify(|s| {
                        s.offers += 1;
                        s.streams.insert(stream_id);
                    });
                    let (h, st) = (handle.clone(), seen_tx.clone());
                    tokio::spawn(async move {
                        while let Some(ev) = srx.recv().await {
                            match ev {
                                SessionEvent::LocalAnswer { sdp } => {
                                    let _ = h
                                        .send_answer(peer.clone(), session.clone(), sdp, encrypted)
                                        .await;
                                }
                                SessionEvent::LocalCandidate(c) => {
                                    let _ = h
                                        .send_candidates(
                                            peer.clone(),
                                            session.clone(),
                                            vec![to_signaling(c)],
                                        )
                                        .await;
                                }
                                SessionEvent::TrackStarted {
                                    mime, supported, ..
                                } => st.send_modify(|s| {
                                    let m = mime.to_ascii_lowercase();
                                    s.h264 |= supported && m == "video/h264";
                                    s.opus |= supported && m == "audio/opus";
                                }),
                                SessionEvent::Media(MediaEvent::Rtp { kind, .. }) => st
                                    .send_modify(|s| match kind {
                                        TrackKind::Video => s.video += 1,
                                        TrackKind::Audio => s.audio += 1,
                                    }),
                                SessionEvent::Closed { reason, .. } => {
                                    st.send_modify(|s| s.closed.push(reason));
                                    let _ = h.stream_closed(peer.clone(), true).await;
                                }
                                _ => {}
                            }
                        }
                    });
                }
                SignalingEvent::RemoteCandidates {
                    peer, candidates, ..
                } => {
                    let sh = map.lock().unwrap().get(&peer).cloned();
                    if let Some(sh) = sh {
                        for c in candidates {
                            let _ = sh.remote_candidate(to_peer(c)).await;
                        }
                    }
                }
                SignalingEvent::StreamEnded { peer, .. } => {
                    let sh = map.lock().unwrap().remove(&peer);
                    if let Some(sh) = sh {
                        let _ = sh.close().await;
                    }
                }
                SignalingEvent::UserError(e) => panic!("viewer reports a problem: {e}"),
                SignalingEvent::Status(_) => {}
            }
        }
    });
    Viewer {
        seen: seen_rx,
        sessions,
        _stop: stop_tx,
    }
}

async fn wait_seen(v: &mut Viewer, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
    let got = match timeout(MEDIA_WITHIN, v.seen.wait_for(|s| pred(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("viewer did not see {what} in time: {:?}", *v.seen.borrow()))
}

async fn wait_stats(
    source: &TestSource,
    what: &str,
    pred: impl Fn(&TestSourceStats) -> bool,
) -> TestSourceStats {
    let mut w = source.watch_stats();
    let got = match timeout(MEDIA_WITHIN, w.wait_for(|s| pred(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("source did not reach {what} in time: {:?}", source.stats()))
}

/// One source, one viewer: media arrives; stopping the source says bye to the viewer.
async fn one_viewer(dialect: Dialect, password: Password, mode: PublisherMode, viewer_first: bool) {
    let test_server = TestServer::start().await;
    let server = &test_server.server;
    let cfg = source_config(server, "cam", dialect, password.clone(), mode);
    let (mut viewer, source, stop) = if viewer_first {
        let v = start_viewer(server, dialect, password);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (s, stop) = start_source(cfg);
        (v, s, stop)
    } else {
        let (s, stop) = start_source(cfg);
        wait_stats(&s, "connection", |s| s.ws_connects == 1).await;
        (start_viewer(server, dialect, password), s, stop)
    };
    let seen = wait_seen(&mut viewer, "H.264 and Opus", Seen::has_media).await;
    assert_eq!(seen.offers, 1, "{seen:?}");
    assert_eq!(
        seen.streams,
        HashSet::from(["cam".to_string()]),
        "desalted stream id"
    );
    let stats = source.stats();
    assert_eq!(stats.signaling.peers_started, 1, "{stats:?}");
    assert_eq!(stats.signaling.answers, 1, "{stats:?}");
    assert!(
        stats.peers_connected >= 1 && stats.media_started == 1,
        "{stats:?}"
    );
    assert!(stats.server_errors.is_empty(), "{stats:?}");

    stop.send_replace(true);
    let stats = source.join().await.expect("source stops cleanly");
    assert_eq!(stats.peers_closed, 1, "{stats:?}");
    assert_eq!(stats.peers_failed, 0, "{stats:?}");
    let seen = wait_seen(&mut viewer, "the source's bye", |s| !s.closed.is_empty()).await;
    assert_eq!(seen.closed, vec![CloseReason::Bye]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_dialect_default_password_media_in_first_offer() {
    one_viewer(
        Dialect::Official,
        Password::Default,
        PublisherMode::MediaInFirstOffer,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_dialect_no_password_data_channel_first_viewer_first() {
    one_viewer(
        Dialect::Official,
        Password::Disabled,
        PublisherMode::DataChannelFirst,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dialect_default_password_data_channel_first() {
    one_viewer(
        Dialect::Relay,
        Password::Default,
        PublisherMode::DataChannelFirst,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dialect_no_password_media_in_first_offer_viewer_first() {
    one_viewer(
        Dialect::Relay,
        Password::Disabled,
        PublisherMode::MediaInFirstOffer,
        true,
    )
    .await;
}

/// Two viewers watch one source at once over separate peer connections; one leaving with a
/// data-channel bye ends only its own peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_watch_one_source_and_a_bye_ends_only_that_peer() {
    let test_server = TestServer::start().await;
    let server = &test_server.server;
    let cfg = source_config(
        server,
        "cam",
        Dialect::Official,
        Password::Default,
        PublisherMode::MediaInFirstOffer,
    );
    let (source, stop) = start_source(cfg);
    let mut a = start_viewer(server, Dialect::Official, Password::Default);
    let mut b = start_viewer(server, Dialect::Official, Password::Default);
    wait_seen(&mut a, "media (viewer A)", Seen::has_media).await;
    let before_b = wait_seen(&mut b, "media (viewer B)", Seen::has_media).await;
    let stats = wait_stats(&source, "two connected peers", |s| s.peers_connected >= 2).await;
    assert_eq!(stats.signaling.peers_started, 2, "{stats:?}");

    // Viewer A leaves: its session says bye on the data channel.
    let sessions: Vec<_> = a.sessions.lock().unwrap().values().cloned().collect();
    assert_eq!(sessions.len(), 1);
    sessions[0].close().await.expect("session alive");
    let stats = wait_stats(&source, "the viewer's bye", |s| s.viewer_byes == 1).await;
    assert_eq!(stats.peers_failed, 0, "{stats:?}");
    // B keeps receiving.
    let more = before_b.video + VIDEO_PACKETS;
    let after_b = wait_seen(&mut b, "more media (viewer B)", |s| s.video >= more).await;
    assert!(after_b.closed.is_empty(), "{after_b:?}");

    stop.send_replace(true);
    let stats = source.join().await.expect("source stops cleanly");
    assert_eq!(stats.peers_failed, 0, "{stats:?}");
}

/// `run_many` serves several streams at once; bad configs fail alone and early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_many_publishes_several_streams() {
    let test_server = TestServer::start().await;
    let server = &test_server.server;
    let configs: Vec<TestSourceConfig> = ["a", "b"]
        .iter()
        .map(|s| {
            source_config(
                server,
                s,
                Dialect::Relay,
                Password::Default,
                PublisherMode::MediaInFirstOffer,
            )
        })
        .chain(std::iter::once(TestSourceConfig::new("http://x", "c")))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let all = tokio::spawn(testsrc::run_many(configs, stop_rx));
    let mut viewer = start_viewer(server, Dialect::Relay, Password::Default);
    let seen = wait_seen(&mut viewer, "both streams", |s| {
        s.streams.len() == 2 && s.video >= 2 * VIDEO_PACKETS && s.audio >= 2 * AUDIO_PACKETS
    })
    .await;
    assert_eq!(
        seen.streams,
        HashSet::from(["a".to_string(), "b".to_string()])
    );
    stop_tx.send_replace(true);
    let results = all.await.unwrap();
    assert_eq!(results.len(), 3);
    for r in &results[..2] {
        let stats = r.as_ref().expect("source ran");
        assert_eq!(stats.signaling.peers_started, 1, "{stats:?}");
        assert_eq!(stats.media_started, 1, "{stats:?}");
    }
    assert_eq!(
        results[2],
        Err(TestSourceError::BadUrl("http://x".to_string()))
    );
}

/// Nothing listening: the source gives up after the configured attempts with a clear error.
#[tokio::test]
async fn unreachable_server_gives_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = TestSourceConfig::new(format!("ws://{addr}"), "cam");
    cfg.give_up_after = Some(2);
    cfg.backoff_initial = Duration::from_millis(50);
    let (_tx, rx) = watch::channel(false);
    match testsrc::run(cfg, rx).await {
        Err(TestSourceError::Connect { attempts, .. }) => assert_eq!(attempts, 2),
        other => panic!("expected a connect error, got {other:?}"),
    }
    let (_tx, rx) = watch::channel(false);
    assert!(matches!(
        testsrc::run(TestSourceConfig::new("ws://127.0.0.1:1", ""), rx).await,
        Err(TestSourceError::BadStreamId(_))
    ));
}
