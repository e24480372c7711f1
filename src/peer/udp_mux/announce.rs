//! The candidates a publisher is told when every connection shares one UDP port (sans-IO).
//!
//! Behind the shared port each peer connection has a private socket address of its own
//! (what webrtc-rs gathers as its host candidate); publishers must instead be told the
//! address they can reach: the shared port at the machine's address, or at the public
//! address of a 1:1 NAT (`--public-ip`; webrtc-rs 0.21.1's `with_nat_1to1_ips` is accepted
//! but never applied). So every UDP host candidate we send is replaced by one candidate per
//! announced address, and so is every passive TCP host candidate when there is a shared TCP
//! port too (`--tcp-port`); all others (active TCP, server-reflexive, relay) are left out:
//! with one port the recorder is reached directly or not at all, and it never connects out.

use std::net::SocketAddr;

/// Where publishers reach the shared ports: the addresses told for UDP and for ICE-TCP
/// (empty: no TCP candidate is told).
#[derive(Debug, Clone, Copy)]
pub struct Announce<'a> {
    /// The shared UDP port at each address publishers are told.
    pub udp: &'a [SocketAddr],
    /// The shared TCP port at each of them, or nothing without `--tcp-port`.
    pub tcp: &'a [SocketAddr],
}

/// True for a `tcptype passive` TCP candidate: one a peer listens on (ours told at the TCP
/// port; a publisher's one we would have to connect out to).
pub fn is_passive_tcp(candidate: &str) -> bool {
    let fields: Vec<&str> = candidate.split_ascii_whitespace().collect();
    fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("tcp"))
        && fields
            .windows(2)
            .any(|w| w[0] == "tcptype" && w[1] == "passive")
}

/// `candidate:...` (a trickled candidate or an SDP `a=candidate:` value without `a=`)
/// rewritten to the announced addresses; empty when it is neither a UDP host candidate nor
/// (with a TCP port) a passive TCP host candidate.
pub fn rewrite_candidate(candidate: &str, announce: Announce<'_>) -> Vec<String> {
    let fields: Vec<&str> = candidate.split_ascii_whitespace().collect();
    // candidate:<foundation> <component> <transport> <priority> <ip> <port> typ <type> ...
    if fields.len() < 8
        || !fields[0].starts_with("candidate:")
        || fields[6] != "typ"
        || fields[7] != "host"
    {
        return Vec::new();
    }
    let to = if fields[2].eq_ignore_ascii_case("udp") {
        announce.udp
    } else if is_passive_tcp(candidate) {
        announce.tcp
    } else {
        return Vec::new();
    };
    to.iter()
        .enumerate()
        .map(|(i, a)| {
            let mut out = vec![
                format!("{}{i}", fields[0]),
                fields[1].to_owned(),
                fields[2].to_owned(),
                // Later addresses a little less preferred, in the order given.
                fields[3].parse::<u32>().map_or_else(
                    |_| fields[3].to_owned(),
                    |p| p.saturating_sub(i as u32).to_string(),
                ),
                a.ip().to_string(),
                a.port().to_string(),
            ];
            out.extend(fields[6..].iter().map(|f| (*f).to_owned()));
            out.join(" ")
        })
        .collect()
}

/// An SDP with each `a=candidate:` line rewritten by [`rewrite_candidate`] (line endings
/// kept).
pub fn rewrite_sdp(sdp: &str, announce: Announce<'_>) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let Some(candidate) = body.strip_prefix("a=") else {
            out.push_str(line);
            continue;
        };
        if !candidate.starts_with("candidate:") {
            out.push_str(line);
            continue;
        }
        let ending = &line[body.len()..];
        for c in rewrite_candidate(candidate, announce) {
            out.push_str("a=");
            out.push_str(&c);
            out.push_str(ending);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "203.0.113.9:8189".parse().unwrap(),
            "10.1.2.3:8189".parse().unwrap(),
        ]
    }

    fn udp_only(udp: &[SocketAddr]) -> Announce<'_> {
        Announce { udp, tcp: &[] }
    }

    #[test]
    fn a_host_candidate_becomes_one_per_announced_address() {
        let c = "candidate:1234 1 udp 2130706431 127.0.0.1 41234 typ host generation 0";
        assert_eq!(
            rewrite_candidate(c, udp_only(&addrs())),
            vec![
                "candidate:12340 1 udp 2130706431 203.0.113.9 8189 typ host generation 0",
                "candidate:12341 1 udp 2130706430 10.1.2.3 8189 typ host generation 0",
            ]
        );
    }

    #[test]
    fn other_candidates_and_garbage_are_left_out() {
        for c in [
            "candidate:1 1 tcp 1518280447 127.0.0.1 9 typ host tcptype passive",
            "candidate:2 1 udp 1694498815 198.51.100.1 50000 typ srflx raddr 0.0.0.0 rport 0",
            "candidate:3 1 udp 16777215 198.51.100.2 3478 typ relay",
            "candidate:4 1 udp",
            "",
            "not a candidate at all x y z w",
        ] {
            assert!(rewrite_candidate(c, udp_only(&addrs())).is_empty(), "{c}");
        }
    }

    #[test]
    fn sdp_candidate_lines_are_rewritten_in_place() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=candidate:9 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
                   a=candidate:8 1 udp 1694498815 198.51.100.1 5 typ srflx\r\n\
                   a=end-of-candidates\r\n";
        let out = rewrite_sdp(sdp, udp_only(&addrs()[..1]));
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:90 1 udp 2130706431 203.0.113.9 8189 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        assert_eq!(
            rewrite_sdp("v=0\nno candidates\n", udp_only(&addrs())),
            "v=0\nno candidates\n"
        );
    }

    /// With a TCP port, a passive TCP host candidate is told at it; active ones (we never
    /// connect out) and UDP ones keep their rules.
    #[test]
    fn passive_tcp_candidates_are_told_at_the_tcp_port() {
        let tcp: Vec<SocketAddr> = vec!["203.0.113.9:8443".parse().unwrap()];
        let udp = addrs();
        let both = Announce {
            udp: &udp,
            tcp: &tcp,
        };
        assert_eq!(
            rewrite_candidate(
                "candidate:77 1 tcp 2124414975 127.0.0.1 45000 typ host tcptype passive",
                both
            ),
            vec!["candidate:770 1 tcp 2124414975 203.0.113.9 8443 typ host tcptype passive"]
        );
        assert!(
            rewrite_candidate(
                "candidate:78 1 tcp 2128609279 127.0.0.1 9 typ host tcptype active",
                both
            )
            .is_empty()
        );
        assert_eq!(
            rewrite_candidate("candidate:1 1 udp 1 127.0.0.1 4 typ host", both).len(),
            2
        );
    }
}
