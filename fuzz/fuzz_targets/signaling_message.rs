//! Feeds arbitrary bytes to everything that parses untrusted signalling input: message
//! parsing, payload decryption, the viewer room state machine and the server routing state.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ninjarec::signaling::crypto::{DEFAULT_SALT, Password, Security};
use ninjarec::signaling::message::{Kind, candidates_from_value, parse_inbound};
use ninjarec::signaling::room::{Dialect, Mode, Room, RoomConfig, RoomEvent};
use ninjarec::signaling::server::state::{Limits, ServerState};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let security = Security::new(&Password::Default, DEFAULT_SALT);
    let t0 = Instant::now();

    if let Ok(msg) = parse_inbound(text) {
        match &msg.kind {
            Kind::Description(s) | Kind::Candidates(s) => {
                if let Ok(v) = s.open(msg.vector.as_deref(), security.cipher()) {
                    let _ = candidates_from_value(&v);
                }
            }
            _ => {}
        }
        for (dialect, mode) in [
            (
                Dialect::Official,
                Mode::Room {
                    room: "r".into(),
                    filter: Vec::new(),
                },
            ),
            (
                Dialect::Relay,
                Mode::Single {
                    stream: "cam".into(),
                    room: None,
                },
            ),
        ] {
            let cfg = RoomConfig::new(mode, dialect, "me".into(), security.clone());
            let mut room = Room::new(cfg);
            room.handle(t0, RoomEvent::Connected);
            room.handle(t0, RoomEvent::Message(msg.clone()));
            room.handle(t0 + Duration::from_secs(31), RoomEvent::Tick);
            room.handle(t0, RoomEvent::Disconnected);
            room.handle(t0, RoomEvent::Connected);
        }
    }
    if let Some(cipher) = security.cipher() {
        // Split at a character boundary (found by this target: halving a multi-byte
        // character panicked in the harness itself, not in the recorder).
        let mid = (0..=text.len() / 2)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let (a, b) = text.split_at(mid);
        let _ = cipher.decrypt(a, b);
    }

    let mut server = ServerState::new(Limits::default());
    server.connect(1, "a".into());
    server.connect(2, "b".into());
    for line in text.lines().take(16) {
        let _ = server.handle(1, line);
        let _ = server.handle(2, line);
    }
    let _ = server.disconnect(1);
});
