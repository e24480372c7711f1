//! Which peer connection a datagram on the shared UDP port belongs to (sans-IO).
//!
//! One socket receives every publisher's ICE, DTLS, SRTP and SRTCP. A peer connection is
//! known by the ICE username fragment we gave it: a publisher's connectivity checks (STUN
//! Binding requests) carry `USERNAME = <our ufrag>:<its ufrag>` (RFC 8445 §7.2.2), so the
//! first check from an address ties that address to its connection; everything else from the
//! address follows it. Addresses our side sends to are tied too (so the answers to our own
//! checks find their way before the publisher's checks arrive), but never taken from another
//! connection: only a check naming a connection's ufrag moves an address, so a hostile
//! publisher cannot steal another one's packets by announcing its address as a candidate.
//! Everything is bounded: addresses per connection, connections by the caller.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Identifies one registered connection (one socket of one peer connection).
pub type SlotId = u64;

/// Most addresses tied to one connection (a publisher has a few candidates; more is noise).
pub const MAX_ADDRS_PER_SLOT: usize = 16;

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN Binding request message type.
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// STUN USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// Our ufrag from a STUN Binding request's USERNAME (`<our ufrag>:<theirs>`), or `None` for
/// anything that is not a well-formed Binding request with a USERNAME.
pub fn binding_request_ufrag(datagram: &[u8]) -> Option<&[u8]> {
    if datagram.len() < 20 || datagram[0..2] != BINDING_REQUEST || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let attrs = datagram.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let kind = u16::from_be_bytes([attrs[at], attrs[at + 1]]);
        let size = usize::from(u16::from_be_bytes([attrs[at + 2], attrs[at + 3]]));
        let value = attrs.get(at + 4..at + 4 + size)?;
        if kind == ATTR_USERNAME {
            let colon = value.iter().position(|&b| b == b':')?;
            return Some(&value[..colon]);
        }
        at += 4 + size.div_ceil(4) * 4;
    }
    None
}

/// Counters of the routing, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteStats {
    /// Datagrams from an address tied to no connection, and not a check naming one.
    pub unknown: u64,
    /// Addresses not tied because their connection had [`MAX_ADDRS_PER_SLOT`] already.
    pub addrs_refused: u64,
}

/// The routing table: ufrags and addresses to connections.
#[derive(Debug, Default)]
pub struct Routes {
    ufrags: HashMap<Vec<u8>, SlotId>,
    addrs: HashMap<SocketAddr, SlotId>,
    /// Addresses tied to each connection (to bound them and to forget them with it).
    by_slot: HashMap<SlotId, Vec<SocketAddr>>,
    stats: RouteStats,
}

impl Routes {
    /// An empty table.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Counters so far.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// Connections registered.
    pub fn slots(&self) -> usize {
        self.by_slot.len()
    }

    /// Addresses tied to connections: at most [`MAX_ADDRS_PER_SLOT`] per connection, however
    /// many addresses send to the port.
    pub fn addrs(&self) -> usize {
        self.addrs.len()
    }

    /// Registers a connection under its ufrag. A ufrag registered again (a rebind of the
    /// same connection) moves to the new slot.
    pub fn register(&mut self, slot: SlotId, ufrag: &[u8]) {
        self.ufrags.insert(ufrag.to_vec(), slot);
        self.by_slot.entry(slot).or_default();
    }

    /// Forgets a connection, its ufrag and its addresses.
    pub fn remove(&mut self, slot: SlotId) {
        self.ufrags.retain(|_, s| *s != slot);
        for addr in self.by_slot.remove(&slot).unwrap_or_default() {
            if self.addrs.get(&addr) == Some(&slot) {
                self.addrs.remove(&addr);
            }
        }
    }

    /// Our side of `slot` sends to `addr`: tie the address to it unless it belongs to
    /// another connection.
    pub fn sent_to(&mut self, slot: SlotId, addr: SocketAddr) {
        if !self.addrs.contains_key(&addr) {
            self.tie(slot, addr);
        }
    }

    /// The connection a datagram from `from` belongs to.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<SlotId> {
        // Only a check naming a connection's ufrag may move an address (a publisher that
        // restarted on the same address, or one whose address was tied by another's send).
        if let Some(ufrag) = binding_request_ufrag(datagram)
            && let Some(&slot) = self.ufrags.get(ufrag)
        {
            if self.addrs.get(&from) != Some(&slot) {
                self.tie(slot, from);
            }
            return Some(slot);
        }
        match self.addrs.get(&from) {
            Some(&slot) => Some(slot),
            None => {
                self.stats.unknown += 1;
                None
            }
        }
    }

    fn tie(&mut self, slot: SlotId, addr: SocketAddr) {
        let Some(list) = self.by_slot.get_mut(&slot) else {
            return;
        };
        if list.len() >= MAX_ADDRS_PER_SLOT {
            self.stats.addrs_refused += 1;
            return;
        }
        if let Some(old) = self.addrs.insert(addr, slot)
            && let Some(l) = self.by_slot.get_mut(&old)
        {
            l.retain(|a| *a != addr);
        }
        if let Some(list) = self.by_slot.get_mut(&slot) {
            list.push(addr);
        }
    }
}

/// A STUN Binding request with `USERNAME = user` (and a PRIORITY attribute before it), for
/// the tests of the routing and of the port.
#[cfg(test)]
pub(crate) fn binding(user: &str) -> Vec<u8> {
    let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
    attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attrs.extend_from_slice(user.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attrs);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn the_ufrag_is_read_from_a_binding_request_only() {
        assert_eq!(
            binding_request_ufrag(&binding("ours:theirs")),
            Some(&b"ours"[..])
        );
        // A Binding success response (0x0101) carries no routing ufrag.
        let mut response = binding("ours:theirs");
        response[0..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(binding_request_ufrag(&response), None);
        // No colon, wrong cookie, truncated, media.
        assert_eq!(binding_request_ufrag(&binding("nocolon")), None);
        let mut bad = binding("a:b");
        bad[4] = 0;
        assert_eq!(binding_request_ufrag(&bad), None);
        let full = binding("ours:theirs");
        for cut in 0..full.len() {
            assert_eq!(binding_request_ufrag(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(binding_request_ufrag(&[0x80; 200]), None);
    }

    #[test]
    fn a_check_ties_its_address_and_media_follows() {
        let mut r = Routes::new();
        r.register(1, b"aaaa");
        r.register(2, b"bbbb");
        assert_eq!(
            r.route(addr(5000), &[0x80; 100]),
            None,
            "unknown before any check"
        );
        assert_eq!(r.route(addr(5000), &binding("bbbb:x")), Some(2));
        assert_eq!(r.route(addr(5000), &[0x80; 100]), Some(2));
        assert_eq!(
            r.route(addr(6000), &binding("zzzz:x")),
            None,
            "unknown ufrag"
        );
        assert_eq!(r.stats().unknown, 2);
    }

    #[test]
    fn a_send_ties_an_address_but_never_takes_one_from_another_connection() {
        let mut r = Routes::new();
        r.register(1, b"aaaa");
        r.register(2, b"bbbb");
        r.sent_to(1, addr(5000));
        assert_eq!(r.route(addr(5000), &[0x16; 50]), Some(1));
        // Connection 2's publisher announced connection 1's publisher's address.
        r.sent_to(2, addr(5000));
        assert_eq!(r.route(addr(5000), &[0x16; 50]), Some(1));
        // A check naming connection 2 does move it (a publisher restarted on that address).
        assert_eq!(r.route(addr(5000), &binding("bbbb:y")), Some(2));
        assert_eq!(r.route(addr(5000), &[0x16; 50]), Some(2));
        r.remove(2);
        assert_eq!(r.route(addr(5000), &[0x16; 50]), None);
        assert_eq!(
            r.route(addr(5000), &binding("bbbb:y")),
            None,
            "ufrag gone too"
        );
        assert_eq!(r.slots(), 1);
    }

    #[test]
    fn addresses_per_connection_are_bounded() {
        let mut r = Routes::new();
        r.register(1, b"aaaa");
        for port in 0..100 {
            r.sent_to(1, addr(port));
            r.route(addr(1000 + port), &binding("aaaa:x"));
        }
        assert_eq!(r.by_slot[&1].len(), MAX_ADDRS_PER_SLOT);
        assert_eq!(r.addrs.len(), MAX_ADDRS_PER_SLOT);
        assert_eq!(r.stats().addrs_refused, 200 - MAX_ADDRS_PER_SLOT as u64);
        r.remove(1);
        assert!(r.addrs.is_empty() && r.ufrags.is_empty());
    }
}
