//! End-to-end signalling tests: the built-in server on 127.0.0.1:0 with scripted WebSocket
//! publishers, and the real client task (`spawn`) as the viewer, in both dialects.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ninjarec::signaling::client::{SignalingConfig, SignalingEvent, SignalingStatus, spawn};
use ninjarec::signaling::crypto::{Cipher, DEFAULT_PASSWORD, DEFAULT_SALT, Password, Security};
use ninjarec::signaling::server::{Server, ServerConfig};
use ninjarec::signaling::{Dialect, IceCandidate};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const STEP: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn sec() -> Security {
    Security::new(&Password::Default, DEFAULT_SALT)
}

fn cipher() -> Cipher {
    Cipher::new(DEFAULT_PASSWORD, DEFAULT_SALT)
}

async fn start_server(addr: &str) -> (Server, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let mut cfg = ServerConfig::new(addr.parse().unwrap());
    cfg.max_message_bytes = 64 * 1024;
    let server = Server::bind(cfg, rx).await.expect("server binds");
    (server, tx)
}

async fn raw(addr: std::net::SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("raw client connects");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Reads JSON frames until one satisfies `pred`; panics after [`STEP`].
async fn recv_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(STEP, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if pred(&v) {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("expected message in time")
}

/// Next event other than status updates.
async fn next_event(rx: &mut mpsc::Receiver<SignalingEvent>) -> SignalingEvent {
    tokio::time::timeout(STEP, async {
        loop {
            match rx.recv().await.expect("event channel open") {
                SignalingEvent::Status(_) => {}
                ev => return ev,
            }
        }
    })
    .await
    .expect("expected event in time")
}

async fn wait_status(rx: &mut mpsc::Receiver<SignalingEvent>, want: fn(&SignalingStatus) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let SignalingEvent::Status(s) = rx.recv().await.expect("event channel open")
                && want(&s)
            {
                return;
            }
        }
    })
    .await
    .expect("expected status in time")
}

fn encrypted_offer(to: &str, stream: &str, session: &str, sdp: &str) -> Value {
    let (hex, iv) = cipher().encrypt(&json!({"type":"offer","sdp":sdp}).to_string());
    json!({"UUID": to, "streamID": stream, "session": session, "description": hex, "vector": iv})
}

fn decrypt_field(msg: &Value, field: &str) -> Value {
    let plain = cipher()
        .decrypt(
            msg[field].as_str().unwrap(),
            msg["vector"].as_str().unwrap(),
        )
        .expect("decrypts with the default password");
    serde_json::from_str(&plain).unwrap()
}

fn viewer_config(addr: std::net::SocketAddr, dialect: Dialect) -> SignalingConfig {
    let mut c = SignalingConfig::new(format!("ws://{addr}"));
    c.room = Some("myroom".into());
    c.record_room = true;
    c.dialect = Some(dialect);
    c.backoff_initial = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(400);
    c
}

#[tokio::test]
async fn official_dialect_room_recording_handshake() {
    let (server, stop) = start_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let room = sec().room_hash("myroom");
    let stream_a = sec().hash_stream_id("alice");

    // An existing publisher.
    let mut pub_a = raw(addr).await;
    send(&mut pub_a, json!({"request":"joinroom","roomid":room})).await;
    recv_until(&mut pub_a, |v| v["request"] == "listing").await;
    send(&mut pub_a, json!({"request":"seed","streamID":stream_a})).await;

    // The viewer (client task) learns about it from the listing and plays it.
    let (_stop_client_tx, stop_client) = watch::channel(false);
    let (handle, mut events) = spawn(viewer_config(addr, Dialect::Official), stop_client).unwrap();
    let req = recv_until(&mut pub_a, |v| v["request"] == "offerSDP").await;
    let viewer_uuid = req["UUID"].as_str().unwrap().to_string();

    send(
        &mut pub_a,
        encrypted_offer(&viewer_uuid, &stream_a, "sessA", "v=0 alice"),
    )
    .await;
    send(
        &mut pub_a,
        json!({"UUID": viewer_uuid, "session":"sessA", "type":"local",
               "candidates":[{"candidate":"candidate:1 1 udp 1 10.0.0.1 5000 typ host","sdpMLineIndex":0,"sdpMid":"0"}]}),
    )
    .await;
    let ev = next_event(&mut events).await;
    let SignalingEvent::Offer {
        peer,
        stream_id,
        session,
        sdp,
        encrypted,
    } = ev
    else {
        panic!("expected offer, got {ev:?}")
    };
    assert_eq!(
        (stream_id.as_str(), sdp.as_str(), encrypted),
        ("alice", "v=0 alice", true)
    );
    assert_eq!(session, Some(json!("sessA")));
    let ev = next_event(&mut events).await;
    assert!(
        matches!(&ev, SignalingEvent::RemoteCandidates { candidates, .. } if candidates[0].sdp_mid.as_deref() == Some("0")),
        "{ev:?}"
    );

    // Answer and candidates reach the publisher, addressed from the viewer, encrypted.
    handle
        .send_answer(
            peer.clone(),
            session.clone(),
            "v=0 answer".into(),
            encrypted,
        )
        .await
        .unwrap();
    let ans = recv_until(&mut pub_a, |v| v.get("description").is_some()).await;
    assert_eq!(ans["UUID"], json!(viewer_uuid));
    assert_eq!(ans["session"], json!("sessA"));
    assert_eq!(
        decrypt_field(&ans, "description"),
        json!({"type":"answer","sdp":"v=0 answer"})
    );
    handle
        .send_candidates(
            peer.clone(),
            session.clone(),
            vec![IceCandidate {
                candidate: "candidate:2 1 udp 1 10.0.0.2 6000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            }],
        )
        .await
        .unwrap();
    let cands = recv_until(&mut pub_a, |v| v.get("candidates").is_some()).await;
    assert_eq!(cands["type"], json!("remote"));
    assert_eq!(
        decrypt_field(&cands, "candidates")[0]["candidate"],
        json!("candidate:2 1 udp 1 10.0.0.2 6000 typ host")
    );

    // A publisher joining later is discovered and played too.
    let stream_b = sec().hash_stream_id("bob");
    let mut pub_b = raw(addr).await;
    send(
        &mut pub_b,
        json!({"request":"joinroom","roomid":room,"streamID":stream_b}),
    )
    .await;
    let req = recv_until(&mut pub_b, |v| v["request"] == "offerSDP").await;
    assert_eq!(req["UUID"], json!(viewer_uuid));
    send(
        &mut pub_b,
        json!({"UUID": viewer_uuid, "streamID": stream_b, "session": null,
                            "description": {"type":"offer","sdp":"v=0 bob"}}),
    )
    .await;
    let ev = next_event(&mut events).await;
    assert!(
        matches!(&ev, SignalingEvent::Offer { stream_id, encrypted: false, session: Some(Value::Null), .. } if stream_id == "bob"),
        "{ev:?}"
    );

    // Publisher A leaves: its recording ends.
    drop(pub_a);
    let ev = next_event(&mut events).await;
    assert_eq!(
        ev,
        SignalingEvent::StreamEnded {
            peer,
            stream_id: "alice".into()
        }
    );

    stop.send(true).unwrap();
    server.wait().await.unwrap();
    drop(handle);
}

#[tokio::test]
async fn relay_dialect_unsolicited_offers_and_announcements() {
    let (server, stop) = start_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let room = sec().room_hash("myroom");
    let stream_a = sec().hash_stream_id("alice");

    // Web-app style publisher already in the room.
    let mut pub_a = raw(addr).await;
    send(
        &mut pub_a,
        json!({"request":"joinroom","roomid":room,"streamID":stream_a,"from":"pubA"}),
    )
    .await;

    let mut cfg = viewer_config(addr, Dialect::Relay);
    cfg.self_id = Some("viewer1".into());
    let (_t, stop_client) = watch::channel(false);
    let (handle, mut events) = spawn(cfg, stop_client).unwrap();

    // The publisher hears the viewer's joinroom (with `from`, without streamID) and offers.
    let j = recv_until(&mut pub_a, |v| v["request"] == "joinroom").await;
    assert_eq!(j["from"], json!("viewer1"));
    assert!(j.get("streamID").is_none());
    let mut offer = encrypted_offer("viewer1", &stream_a, "s1", "v=0 a");
    offer["from"] = json!("pubA");
    send(&mut pub_a, offer).await;
    let ev = next_event(&mut events).await;
    let SignalingEvent::Offer {
        peer, stream_id, ..
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!((peer.0.as_str(), stream_id.as_str()), ("pubA", "alice"));
    handle
        .send_answer(peer, Some(json!("s1")), "v=0 ans".into(), true)
        .await
        .unwrap();
    let ans = recv_until(&mut pub_a, |v| v.get("description").is_some()).await;
    assert_eq!(
        (ans["from"].clone(), ans["UUID"].clone()),
        (json!("viewer1"), json!("pubA"))
    );
    assert_eq!(decrypt_field(&ans, "description")["type"], json!("answer"));

    // A late publisher announces itself; the viewer's play reaches exactly it.
    let stream_b = sec().hash_stream_id("bob");
    let mut pub_b = raw(addr).await;
    send(
        &mut pub_b,
        json!({"request":"joinroom","roomid":room,"streamID":stream_b,"from":"pubB"}),
    )
    .await;
    let play = recv_until(&mut pub_b, |v| v["request"] == "play").await;
    assert_eq!(play["streamID"], json!(stream_b));
    assert_eq!(play["from"], json!("viewer1"));

    // Leaving is announced by the server's presence message.
    drop(pub_b);
    drop(pub_a);
    let ev = next_event(&mut events).await;
    assert!(
        matches!(&ev, SignalingEvent::StreamEnded { stream_id, .. } if stream_id == "alice"),
        "{ev:?}"
    );

    stop.send(true).unwrap();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn server_survives_malformed_and_oversized_floods() {
    let (server, stop) = start_server("127.0.0.1:0").await;
    let addr = server.local_addr();

    let flood = tokio::spawn(async move {
        for round in 0..3 {
            let mut bad = raw(addr).await;
            for i in 0..200 {
                let junk = match i % 5 {
                    0 => "not json".to_string(),
                    1 => "[1,2,3]".to_string(),
                    2 => json!({"request":"play"}).to_string(),
                    3 => json!({"UUID":{"x":1},"description":5}).to_string(),
                    _ => json!({"request":"joinroom","roomid":[1]}).to_string(),
                };
                if bad.send(Message::Text(junk.into())).await.is_err() {
                    break;
                }
                let _ = bad
                    .send(Message::Binary(vec![0xff, 0xfe, round as u8].into()))
                    .await;
            }
            // Oversized frame: the server closes this socket.
            let _ = bad.send(Message::Text("x".repeat(200 * 1024).into())).await;
        }
    });

    // Meanwhile a well-behaved pair works.
    let mut publisher = raw(addr).await;
    let mut viewer = raw(addr).await;
    send(
        &mut publisher,
        json!({"request":"seed","streamID":"cam808d64"}),
    )
    .await;
    send(
        &mut viewer,
        json!({"request":"play","streamID":"cam808d64"}),
    )
    .await;
    let req = recv_until(&mut publisher, |v| v["request"] == "offerSDP").await;
    let viewer_uuid = req["UUID"].as_str().unwrap().to_string();
    send(
        &mut publisher,
        json!({"UUID":viewer_uuid,"session":"s","description":{"type":"offer","sdp":"v=0"}}),
    )
    .await;
    let offer = recv_until(&mut viewer, |v| v.get("description").is_some()).await;
    let pub_uuid = offer["UUID"].as_str().unwrap().to_string();
    assert_ne!(pub_uuid, viewer_uuid);
    send(
        &mut viewer,
        json!({"UUID":pub_uuid,"session":"s","description":{"type":"answer","sdp":"v=0"}}),
    )
    .await;
    let ans = recv_until(&mut publisher, |v| v.get("description").is_some()).await;
    assert_eq!(ans["UUID"], json!(viewer_uuid));

    flood.await.unwrap();
    // Still serving after the flood.
    let mut late = raw(addr).await;
    send(&mut late, json!({"request":"play","streamID":"cam808d64"})).await;
    recv_until(&mut publisher, |v| v["request"] == "offerSDP").await;
    let stats = server.stats();
    assert!(stats.malformed >= 600, "{stats:?}");

    stop.send(true).unwrap();
    server.wait().await.unwrap();
}

#[tokio::test]
async fn client_rejoins_after_server_restart() {
    let (server, stop) = start_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let room = sec().room_hash("myroom");
    let (_t, stop_client) = watch::channel(false);
    let (handle, mut events) = spawn(viewer_config(addr, Dialect::Official), stop_client).unwrap();
    wait_status(&mut events, |s| *s == SignalingStatus::Connected).await;

    stop.send(true).unwrap();
    server.wait().await.unwrap();
    wait_status(&mut events, |s| {
        matches!(s, SignalingStatus::Disconnected { .. })
    })
    .await;

    // Same port again; the client reconnects, re-joins and plays a publisher found there.
    let (server, stop) = start_server(&addr.to_string()).await;
    let stream = sec().hash_stream_id("alice");
    let mut publisher = raw(addr).await;
    send(
        &mut publisher,
        json!({"request":"joinroom","roomid":room,"streamID":stream}),
    )
    .await;
    wait_status(&mut events, |s| *s == SignalingStatus::Connected).await;
    let req = recv_until(&mut publisher, |v| v["request"] == "offerSDP").await;
    assert!(req["UUID"].is_string());

    stop.send(true).unwrap();
    server.wait().await.unwrap();
    drop(handle);
}

#[tokio::test]
async fn wrong_password_is_reported_to_the_user() {
    let (server, stop) = start_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let stream = sec().hash_stream_id("cam");
    let mut publisher = raw(addr).await;
    send(&mut publisher, json!({"request":"seed","streamID":stream})).await;

    let mut cfg = SignalingConfig::new(format!("ws://{addr}"));
    cfg.streams = vec!["cam".into()];
    cfg.dialect = Some(Dialect::Official);
    let (_t, stop_client) = watch::channel(false);
    let (_handle, mut events) = spawn(cfg, stop_client).unwrap();
    let req = recv_until(&mut publisher, |v| v["request"] == "offerSDP").await;
    let wrong = Cipher::new("not-the-password", DEFAULT_SALT);
    let (hex, iv) = wrong.encrypt(&json!({"type":"offer","sdp":"v=0"}).to_string());
    send(
        &mut publisher,
        json!({"UUID":req["UUID"],"streamID":stream,"session":"s","description":hex,"vector":iv}),
    )
    .await;
    let ev = next_event(&mut events).await;
    assert!(
        matches!(&ev, SignalingEvent::UserError(e) if e.contains("--password")),
        "{ev:?}"
    );

    stop.send(true).unwrap();
    server.wait().await.unwrap();
}

/// `wss://` with a self-signed certificate: the client connects only with `insecure`.
#[tokio::test]
async fn tls_server_with_self_signed_cert_and_insecure_client() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("self-signed certificate");
    let dir = std::env::temp_dir().join(format!("ninjarec-sig-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();

    let (stop, rx) = watch::channel(false);
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.tls = Some(ninjarec::signaling::server::TlsFiles { cert, key });
    let server = Server::bind(cfg, rx).await.expect("tls server binds");
    let addr = server.local_addr();

    let stream = sec().hash_stream_id("cam");
    let mut viewer_cfg = SignalingConfig::new(format!("wss://127.0.0.1:{}", addr.port()));
    viewer_cfg.streams = vec!["cam".into()];
    viewer_cfg.dialect = Some(Dialect::Official);

    // Certificate verification on: never connects.
    let (_t1, stop1) = watch::channel(false);
    let (_h1, mut ev1) = spawn(viewer_cfg.clone(), stop1).unwrap();
    wait_status(&mut ev1, |s| {
        matches!(s, SignalingStatus::Disconnected { .. })
    })
    .await;

    // Insecure: connects and its play reaches the publisher.
    viewer_cfg.insecure = true;
    let (_t2, stop2) = watch::channel(false);
    let (_h2, mut ev2) = spawn(viewer_cfg, stop2).unwrap();
    wait_status(&mut ev2, |s| *s == SignalingStatus::Connected).await;
    let tls = ninjarec::signaling::client::client_tls_config(true).unwrap();
    let (mut publisher, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://127.0.0.1:{}", addr.port()),
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await
    .unwrap();
    send(&mut publisher, json!({"request":"seed","streamID":stream})).await;
    recv_until(&mut publisher, |v| v["request"] == "offerSDP").await;

    stop.send(true).unwrap();
    server.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
