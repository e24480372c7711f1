//! A network namespace joined to this one only through an impairment bridge of ours: loss,
//! delay, jitter (and with it reordering) and outages, set per direction and changeable while
//! packets flow.
//!
//! Why: the recorder must keep every frame it can on the networks real guests have, and this
//! kernel (like many CI kernels) has no `netem`. Two TUN devices carry the traffic: one in this
//! namespace (`host_ip`), one moved into a fresh namespace (`peer_ip`); a thread of the test
//! process reads every IP packet from each and writes it to the other after the impairment
//! says so. Publishers run inside the namespace (`ip netns exec`, see [`ImpairedNet::exec`]),
//! the handshake server and the recorder here, so signaling and media both cross the bridge,
//! like a guest's Wi-Fi. The devices vanish with the test process (their file descriptors are
//! its own), the namespace is deleted on drop.
//!
//! Needs root (CI runs as root) and `/dev/net/tun`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one direction of the link does to packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Share of packets dropped at random (0.0 ..= 1.0).
    pub loss: f64,
    /// Mean one-way delay.
    pub delay: Duration,
    /// Each packet's delay is `delay` ± up to this much, uniformly (so packets reorder).
    pub jitter: Duration,
    /// Everything dropped (an outage).
    pub down: bool,
}

impl Impairment {
    /// A clean link.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        down: false,
    };

    /// `loss` (share), `delay_ms` one way, ± `jitter_ms`.
    pub fn new(loss: f64, delay_ms: u64, jitter_ms: u64) -> Impairment {
        Impairment {
            loss,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            down: false,
        }
    }
}

/// Packets seen in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Delivered to the other side.
    pub passed: u64,
    /// Dropped by `loss`.
    pub lost: u64,
    /// Dropped while the link was down (or the queue full).
    pub blocked: u64,
}

/// Directions: 0 = from the namespace to the host ("up": publisher → recorder), 1 = down.
struct Shared {
    stop: AtomicBool,
    params: Mutex<[Impairment; 2]>,
    stats: Mutex<[DirStats; 2]>,
    /// A forwarded port (see [`ImpairedNet::forward_udp`]).
    forward: Mutex<Option<Forward>>,
    /// Every UDP packet dropped (see [`ImpairedNet::block_udp`]).
    udp_blocked: AtomicBool,
}

/// A 1:1 NAT in front of the host side, for one UDP port: the namespace reaches
/// `public:port`, which is `host_ip:port` here; what `host_ip:port` sends comes from
/// `public:port`.
#[derive(Debug, Clone, Copy)]
struct Forward {
    public: Ipv4Addr,
    host: Ipv4Addr,
    port: u16,
}

/// The namespace, its two devices and the bridge thread. See the module doc.
pub struct ImpairedNet {
    /// Name of the namespace (`ip netns exec <ns> …`).
    pub ns: String,
    /// Address of this namespace's side (bind the server and the recorder's media here).
    pub host_ip: Ipv4Addr,
    /// Address of the namespace's side.
    pub peer_ip: Ipv4Addr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Packets waiting in the bridge at most (a full queue drops, like a router's).
const QUEUE_LIMIT: usize = 20_000;

impl ImpairedNet {
    /// A fresh namespace behind `up` (namespace → host) and `down` (host → namespace).
    ///
    /// Panics with one line when it cannot be built (not root, no TUN device).
    pub fn new(up: Impairment, down: Impairment) -> ImpairedNet {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{k}", pid % 100_000);
        let ns = format!("ninjarec-imp-{tag}");
        let (host_dev, peer_dev) = (format!("nri{tag}h"), format!("nri{tag}p"));
        // 10.231.X.Y/30 pairs, distinct per test of this process (and likely across processes).
        let block = (pid.wrapping_mul(7).wrapping_add(k * 4)) % (250 * 64);
        let (third, fourth) = ((block / 64) as u8, ((block % 64) * 4) as u8);
        let host_ip = Ipv4Addr::new(10, 231, third, fourth + 1);
        let peer_ip = Ipv4Addr::new(10, 231, third, fourth + 2);

        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let host = open_tun(&host_dev);
        let peer = open_tun(&peer_dev);
        ip(&["link", "set", &peer_dev, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_dev]);
        ip(&["link", "set", &host_dev, "up"]);
        ipn(&ns, &["link", "set", "lo", "up"]);
        ipn(
            &ns,
            &["addr", "add", &format!("{peer_ip}/30"), "dev", &peer_dev],
        );
        ipn(&ns, &["link", "set", &peer_dev, "up"]);
        ipn(
            &ns,
            &["route", "add", "default", "via", &host_ip.to_string()],
        );

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            params: Mutex::new([up, down]),
            stats: Mutex::new([DirStats::default(); 2]),
            forward: Mutex::new(None),
            udp_blocked: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let seed = u64::from(pid) << 8 | u64::from(k);
        let thread = std::thread::Builder::new()
            .name(format!("impair-{tag}"))
            .spawn(move || bridge(peer, host, sh, seed))
            .expect("bridge thread");
        ImpairedNet {
            ns,
            host_ip,
            peer_ip,
            shared,
            thread: Some(thread),
        }
    }

    /// Changes both directions at once (packets already queued keep their release times).
    pub fn set(&self, up: Impairment, down: Impairment) {
        *self.shared.params.lock().unwrap() = [up, down];
    }

    /// Takes the link down in both directions (`true`) or back up, keeping the impairment.
    pub fn outage(&self, down: bool) {
        for p in self.shared.params.lock().unwrap().iter_mut() {
            p.down = down;
        }
    }

    /// Puts a 1:1 NAT with one forwarded UDP port in front of this side, as a cloud VM or a
    /// home router has: the namespace sends to `public:port` and it arrives at
    /// `host_ip:port`; replies from `host_ip:port` leave as `public:port`. The namespace
    /// knows no other way to `public` (its default route is the bridge), and this side
    /// never sees `public`.
    pub fn forward_udp(&self, public: Ipv4Addr, port: u16) {
        *self.shared.forward.lock().unwrap() = Some(Forward {
            public,
            host: self.host_ip,
            port,
        });
    }

    /// Drops every UDP packet both ways (`true`), as a guest network that lets only TCP out
    /// does; counted as blocked.
    pub fn block_udp(&self, on: bool) {
        self.shared.udp_blocked.store(on, Ordering::Relaxed);
    }

    /// Packets seen so far: `[up, down]`.
    pub fn stats(&self) -> [DirStats; 2] {
        *self.shared.stats.lock().unwrap()
    }

    /// A `ws://host_ip:0`-style address for a server this side.
    pub fn host_addr(&self) -> std::net::SocketAddr {
        (self.host_ip, 0).into()
    }

    /// Moves the calling thread into the namespace (sockets it opens afterwards live there).
    ///
    /// Why: the webrtc-rs test publisher runs in this process; a thread of its own, moved
    /// here before it builds its runtime, puts the publisher behind the bridge.
    pub fn enter_from_this_thread(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.ns)).expect("netns file");
        // SAFETY: setns on a valid namespace fd affects only the calling thread's network
        // namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for ImpairedNet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the impairment tests need iproute2 (`ip`): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {} (the impairment tests need root, as in CI)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn ipn(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all);
}

/// A non-blocking TUN device (IP packets, no packet-info header) named `name`.
fn open_tun(name: &str) -> File {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| panic!("/dev/net/tun: {e} (the impairment tests need root)"));
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct at the pointer.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    f
}

/// Applies the forward to one IPv4 packet going `dir` (0: up, from the namespace). Only UDP
/// to or from the forwarded port is touched: its address is rewritten, the IP header
/// checksum recomputed and the UDP checksum cleared (optional in IPv4).
fn translate(p: &mut [u8], dir: usize, f: Forward) {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if p.len() < ihl + 8 {
        return;
    }
    let port_at = |off: usize| u16::from_be_bytes([p[ihl + off], p[ihl + off + 1]]);
    let (addr_off, port, matches) = if dir == 0 {
        (16, port_at(2), f.public.octets())
    } else {
        (12, port_at(0), f.host.octets())
    };
    if port != f.port || p[addr_off..addr_off + 4] != matches {
        return;
    }
    let new = if dir == 0 { f.host } else { f.public };
    p[addr_off..addr_off + 4].copy_from_slice(&new.octets());
    p[ihl + 6] = 0;
    p[ihl + 7] = 0;
    p[10] = 0;
    p[11] = 0;
    let mut sum: u32 = p[..ihl]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
}

/// splitmix64: a reproducible stream of random numbers per link.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The bridge: `peer` (namespace side) ⇄ `host`; direction 0 reads `peer`, writes `host`.
fn bridge(mut peer: File, mut host: File, shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng(seed);
    // (release time, sequence) → (direction, packet); the sequence keeps equal times in order.
    let mut queue: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut packets: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(Reverse((at, s, dir))) = queue.peek().copied() {
            if at > now {
                break;
            }
            queue.pop();
            let p = packets.remove(&s).expect("queued packet");
            let out = if dir == 0 { &mut host } else { &mut peer };
            // A full device queue drops, like a router.
            let _ = out.write(&p);
        }
        let wait_ms = queue
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now).as_millis() as i32)
            .unwrap_or(20)
            .clamp(0, 20);
        let mut fds = [
            libc::pollfd {
                fd: peer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: host.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if n <= 0 {
            continue;
        }
        for (dir, fd) in fds.iter().enumerate() {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            for _ in 0..256 {
                let src = if dir == 0 { &mut peer } else { &mut host };
                let len = match src.read(&mut buf) {
                    Ok(len) if len > 0 => len,
                    _ => break,
                };
                let arrived = Instant::now();
                let p = shared.params.lock().unwrap()[dir];
                let mut stats = shared.stats.lock().unwrap();
                let udp = len > 9 && buf[0] >> 4 == 4 && buf[9] == 17;
                if p.down
                    || queue.len() >= QUEUE_LIMIT
                    || (udp && shared.udp_blocked.load(Ordering::Relaxed))
                {
                    stats[dir].blocked += 1;
                    continue;
                }
                if p.loss > 0.0 && rng.unit() < p.loss {
                    stats[dir].lost += 1;
                    continue;
                }
                stats[dir].passed += 1;
                if let Some(f) = *shared.forward.lock().unwrap() {
                    translate(&mut buf[..len], dir, f);
                }
                let jitter = p.jitter.as_secs_f64() * (2.0 * rng.unit() - 1.0);
                let delay = (p.delay.as_secs_f64() + jitter).max(0.0);
                seq += 1;
                packets.insert(seq, buf[..len].to_vec());
                queue.push(Reverse((
                    arrived + Duration::from_secs_f64(delay),
                    seq,
                    dir,
                )));
            }
        }
    }
}
