//! Fuzzes the shared UDP port's routing (`--udp-port`): datagrams from anyone on the
//! internet, checks naming ufrags, connections coming and going. Never a panic; a datagram
//! goes only to a registered connection; addresses per connection stay bounded.
#![no_main]

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ninjarec::peer::udp_mux::route::{MAX_ADDRS_PER_SLOT, Routes, binding_request_ufrag};

/// A small address space so addresses repeat and collide.
fn addr(b: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, b % 8), 5000 + u16::from(b >> 3)))
}

fuzz_target!(|data: &[u8]| {
    let mut routes = Routes::new();
    let mut registered: HashSet<u64> = HashSet::new();
    let mut at = 0;
    while at + 2 <= data.len() {
        let (op, arg) = (data[at], data[at + 1]);
        at += 2;
        let slot = u64::from(arg % 4);
        match op % 5 {
            0 => {
                // A ufrag of one or two letters, so checks can name it.
                let ufrag: &[u8] = if arg & 0x80 != 0 {
                    b"ab"
                } else {
                    &[b'a' + arg % 3]
                };
                routes.register(slot, ufrag);
                registered.insert(slot);
            }
            1 => {
                routes.remove(slot);
                registered.remove(&slot);
            }
            2 => routes.sent_to(slot, addr(arg)),
            _ => {
                // A datagram: the next `len` bytes, optionally behind a Binding request header.
                let len = usize::from(data.get(at).copied().unwrap_or(0));
                at += 1;
                let body = &data[at.min(data.len())..(at + len).min(data.len())];
                at += len;
                let mut datagram = Vec::new();
                if op % 5 == 4 {
                    datagram.extend_from_slice(&[0x00, 0x01]);
                    datagram.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    datagram.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                    datagram.extend_from_slice(&[0u8; 12]);
                }
                datagram.extend_from_slice(body);
                let _ = binding_request_ufrag(&datagram);
                if let Some(to) = routes.route(addr(arg), &datagram) {
                    assert!(registered.contains(&to), "routed to unregistered slot {to}");
                }
            }
        }
        assert!(routes.slots() <= 4);
        assert!(routes.addrs() <= routes.slots() * MAX_ADDRS_PER_SLOT);
    }
});
