//! One UDP port for every peer connection (`--udp-port`).
//!
//! webrtc-rs binds a socket per peer connection, so a recorder would need a port range
//! opened in its firewall. Here one socket receives for all of them: a task reads it and
//! hands each datagram to its connection ([`route::Routes`]: by the ICE ufrag of the first
//! check from an address, then by address), and each connection sends through the same
//! socket. webrtc-rs lets us plug this in where it wraps its sockets (its `Runtime`): a
//! connection gets a [`MuxSocket`] instead of its own, keeps its private address as its
//! host candidate internally, and the publisher is told the shared port instead
//! ([`announce`]).
//!
//! ```text
//!  publishers ──UDP──► shared socket ──► mux task (Routes) ──bounded queue──► MuxSocket ─► driver of pc 1
//!                          ▲                                 └────────────► MuxSocket ─► driver of pc 2
//!                          └──────────── send_to from every MuxSocket ◄──── drivers
//! ```
//!
//! A queue that is full drops the datagram (counted): a stalled connection never holds up
//! the others. A connection's socket, when dropped, unregisters it.
//!
//! The port is read on the grid of [`super::grid`], not as datagrams arrive, and the
//! connections' timers end on it: one wake of the runtime every 10 ms handles every
//! connection's datagrams and timers.

pub mod announce;
pub mod route;

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Runtime, Transmit};

use super::grid;

use route::{Routes, SlotId};

/// Datagrams queued per connection before new ones are dropped (~0.5 s of a 2 Mb/s stream).
const QUEUE: usize = 256;
/// Receive buffer asked of the kernel (it caps it at `net.core.rmem_max`): at 32 publishers
/// of ~280 packets/s, 10 ms are ~90 datagrams, ~200 KiB of kernel memory; 4 MiB leaves room
/// for a stalled runtime.
const RECV_BUFFER: usize = 4 << 20;
/// Most datagrams read in one tick (~0.9 s of 32 publishers): the rest waits a tick.
const MAX_PER_TICK: usize = 8192;
/// Largest datagram read (WebRTC keeps under the 1500-byte MTU; bigger is cut and dropped).
const MAX_DATAGRAM: usize = 2048;
/// Destinations a connection's socket reports as its own (bounded like its addresses).
const MAX_LEARNED: usize = route::MAX_ADDRS_PER_SLOT;

/// Counters of the shared port, for logs, the status page and tests.
#[derive(Debug, Default)]
pub struct MuxCounters {
    /// Datagrams received on the shared port.
    pub received: AtomicU64,
    /// Of those, from no known connection (and not a check naming one), or for one that has
    /// just closed: dropped.
    pub unknown: AtomicU64,
    /// Dropped because the connection's queue was full.
    pub queue_full: AtomicU64,
    /// Datagrams our side sent that were dropped because the shared socket's send buffer was
    /// full (UDP may drop; waiting would stall the connection: see `MuxSocket::poll_send`).
    pub send_dropped: AtomicU64,
}

enum Control {
    Register {
        slot: SlotId,
        ufrag: Vec<u8>,
        tx: mpsc::Sender<(SocketAddr, Bytes)>,
    },
    SentTo {
        slot: SlotId,
        addr: SocketAddr,
    },
    Unregister(SlotId),
}

/// The shared port: cheap to clone, one per recorder. Its task ends when every clone and
/// every connection's socket are gone.
#[derive(Clone)]
pub struct UdpMux {
    socket: Arc<std::net::UdpSocket>,
    control: mpsc::UnboundedSender<Control>,
    next_slot: Arc<AtomicU64>,
    counters: Arc<MuxCounters>,
    announce: Arc<[SocketAddr]>,
}

impl fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpMux")
            .field("local", &self.socket.local_addr().ok())
            .field("announce", &self.announce)
            .finish()
    }
}

impl UdpMux {
    /// Binds `bind` and starts the task that reads it. `announce`: the addresses publishers
    /// are told (the shared port at this machine's or the NAT's public address).
    pub async fn bind(bind: SocketAddr, announce: Vec<SocketAddr>) -> io::Result<UdpMux> {
        let raw = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Best effort: a smaller buffer still works, with less slack for a stalled runtime.
        let _ = raw.set_recv_buffer_size(RECV_BUFFER);
        raw.bind(&bind.into())?;
        raw.set_nonblocking(true)?;
        let recv_buffer = raw.recv_buffer_size().unwrap_or(0);
        // Not a tokio socket: read on the grid, it never wakes the runtime (see `grid`).
        let socket = Arc::new(std::net::UdpSocket::from(raw));
        let (control, control_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(MuxCounters::default());
        info!(
            local = %socket.local_addr()?,
            announce = ?announce,
            recv_buffer_kib = recv_buffer / 1024,
            "media for every publisher on one UDP port"
        );
        tokio::spawn(read_loop(socket.clone(), control_rx, counters.clone()));
        Ok(UdpMux {
            socket,
            control,
            next_slot: Arc::new(AtomicU64::new(1)),
            counters,
            announce: announce.into(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The addresses publishers are told (see [`announce`]).
    pub fn announce(&self) -> &[SocketAddr] {
        &self.announce
    }

    /// The port's counters.
    pub fn counters(&self) -> &MuxCounters {
        &self.counters
    }

    /// The webrtc-rs runtime for one peer connection whose ICE ufrag is `ufrag`: tokio's,
    /// except that its UDP socket is a share of this port.
    pub fn runtime_for(&self, ufrag: &str) -> Arc<dyn Runtime> {
        Arc::new(MuxRuntime {
            inner: webrtc::runtime::default_runtime().expect("built with the tokio runtime"),
            mux: self.clone(),
            ufrag: ufrag.as_bytes().to_vec(),
        })
    }
}

/// Reads the shared socket and hands each datagram to its connection; applies the
/// connections' registrations first, so a connection is known before its first datagram.
async fn read_loop(
    socket: Arc<std::net::UdpSocket>,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<MuxCounters>,
) {
    let mut routes = Routes::new();
    let mut queues: std::collections::HashMap<SlotId, mpsc::Sender<(SocketAddr, Bytes)>> =
        std::collections::HashMap::new();
    // Per connection: datagrams handed on and dropped (queue full), said when it goes.
    let mut delivered: std::collections::HashMap<SlotId, (u64, u64)> =
        std::collections::HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tick = tokio::time::interval_at(grid::on_grid(tokio::time::Instant::now()), grid::STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Register { slot, ufrag, tx }) => {
                    debug!(slot, ufrag = %String::from_utf8_lossy(&ufrag), "udp mux: connection registered");
                    routes.register(slot, &ufrag);
                    queues.insert(slot, tx);
                }
                Some(Control::SentTo { slot, addr }) => routes.sent_to(slot, addr),
                Some(Control::Unregister(slot)) => {
                    let (handed, full) = delivered.remove(&slot).unwrap_or_default();
                    debug!(slot, handed, full, "udp mux: connection gone");
                    routes.remove(slot);
                    queues.remove(&slot);
                }
                // Every handle is gone: nobody can register again.
                None if queues.is_empty() => break,
                None => {}
            },
            _ = tick.tick() => {
                // Everything queued now (bounded, so a flood cannot hold the task), then wait
                // for the next tick.
                for _ in 0..MAX_PER_TICK {
                    let (n, from) = match socket.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors of earlier sends and the like: per datagram.
                        Err(_) => continue,
                    };
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    let datagram = &buf[..n];
                    let Some(slot) = routes.route(from, datagram) else {
                        let n = counters.unknown.fetch_add(1, Ordering::Relaxed);
                        if n < 20 || n.is_power_of_two() {
                            debug!(
                                %from,
                                ufrag = ?route::binding_request_ufrag(datagram).map(String::from_utf8_lossy),
                                first_byte = datagram.first().copied().unwrap_or(0),
                                unknown = n + 1,
                                "udp mux: datagram for no connection"
                            );
                        }
                        continue;
                    };
                    let Some(tx) = queues.get(&slot) else {
                        counters.unknown.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let count = delivered.entry(slot).or_default();
                    match tx.try_send((from, Bytes::copy_from_slice(datagram))) {
                        Ok(()) => count.0 += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            count.1 += 1;
                            counters.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            // The connection has just closed: its datagram is for no one.
                            counters.unknown.fetch_add(1, Ordering::Relaxed);
                            routes.remove(slot);
                            queues.remove(&slot);
                            delivered.remove(&slot);
                        }
                    }
                }
            }
        }
    }
}

/// tokio's webrtc-rs runtime with the UDP sockets of one connection taken from the shared
/// port.
struct MuxRuntime {
    inner: Arc<dyn Runtime>,
    mux: UdpMux,
    ufrag: Vec<u8>,
}

impl fmt::Debug for MuxRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxRuntime").finish_non_exhaustive()
    }
}

impl Runtime for MuxRuntime {
    fn spawn(
        &self,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn webrtc::runtime::AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<
        Box<dyn Future<Output = io::Result<Arc<dyn webrtc::runtime::AsyncTcpStream>>> + Send + 'a>,
    > {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    /// Ends on the grid (see the module doc).
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        grid::sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn webrtc::runtime::AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    /// The connection's own socket is only a placeholder (its address names the connection
    /// inside webrtc-rs): it is closed and replaced by a share of the port.
    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local = socket.local_addr()?;
        if local.ip().is_unspecified() || local.ip().is_multicast() {
            // Not the placeholder (mDNS, which the recorder turns off with one port).
            return self.inner.wrap_udp_socket(socket);
        }
        drop(socket);
        let slot = self.mux.next_slot.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        self.mux
            .control
            .send(Control::Register {
                slot,
                ufrag: self.ufrag.clone(),
                tx,
            })
            .map_err(|_| io::Error::other("the shared UDP port is closed"))?;
        Ok(Arc::new(MuxSocket {
            slot,
            local,
            rx: Mutex::new(rx),
            socket: self.mux.socket.clone(),
            control: self.mux.control.clone(),
            learned: Mutex::new(Vec::new()),
            counters: self.mux.counters.clone(),
        }))
    }

    fn name(&self) -> &'static str {
        "tokio+udp-mux"
    }
}

/// One connection's share of the port: receives what the mux task routed to it, sends
/// through the shared socket.
struct MuxSocket {
    slot: SlotId,
    /// The placeholder's address: the connection's name for this socket.
    local: SocketAddr,
    /// Only the connection's driver polls it; the lock is for `&self`, never contended.
    rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    socket: Arc<std::net::UdpSocket>,
    control: mpsc::UnboundedSender<Control>,
    /// Destinations already reported to the mux task.
    learned: Mutex<Vec<SocketAddr>>,
    /// The port's counters (this socket adds to [`MuxCounters::send_dropped`]).
    counters: Arc<MuxCounters>,
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket")
            .field("slot", &self.slot)
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for MuxSocket {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Unregister(self.slot));
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let to = transmit.destination;
        if let Ok(mut learned) = self.learned.lock()
            && learned.len() < MAX_LEARNED
            && !learned.contains(&to)
        {
            learned.push(to);
            let _ = self.control.send(Control::SentTo {
                slot: self.slot,
                addr: to,
            });
        }
        // One datagram per call: `max_gso_segments` is 1, so no segment size is asked for.
        // A datagram that finds the shared buffer full is dropped and counted, as the network
        // may drop it anyway (ICE, DTLS and RTCP all resend): waiting for room would hold every
        // connection behind the busiest one.
        match self.socket.send_to(transmit.contents, to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.counters.send_dropped.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Ok(transmit.contents.len()))
            }
            other => Poll::Ready(other),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut rx) = self.rx.lock() else {
            return Poll::Ready(Err(io::Error::other("receive queue poisoned")));
        };
        let n = bufs.len().min(meta.len());
        let mut filled = 0;
        while filled < n {
            let next = if filled == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    // The port is gone: no more datagrams, ever.
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::other("the shared UDP port closed")));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let (from, data) = next;
            let len = data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&data[..len]);
            let mut m = RecvMeta::default();
            m.addr = from;
            m.len = len;
            m.stride = len.max(1);
            meta[filled] = m;
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connections behind one port: each gets exactly its publisher's datagrams, by the
    /// ufrag of the first check and then by address, and sends from the shared port.
    #[tokio::test]
    async fn datagrams_reach_their_connection_and_replies_leave_from_the_shared_port() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
        let port = mux.local_addr().unwrap();
        let placeholder = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = mux
            .runtime_for("ufraga")
            .wrap_udp_socket(placeholder())
            .unwrap();
        let b = mux
            .runtime_for("ufragb")
            .wrap_udp_socket(placeholder())
            .unwrap();
        let pub_a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pub_b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();

        let check = route::binding;
        pub_b.send_to(&[0x80; 40], port).await.unwrap(); // unknown yet: dropped
        pub_b.send_to(&check("ufragb:x"), port).await.unwrap();
        pub_a.send_to(&check("ufraga:y"), port).await.unwrap();
        pub_b.send_to(&[0x80; 41], port).await.unwrap();
        pub_a.send_to(&[0x80; 42], port).await.unwrap();

        let recv = |s: Arc<dyn AsyncUdpSocket>| async move {
            let mut lens = Vec::new();
            for _ in 0..2 {
                let mut buf = [0u8; 1500];
                let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
                    .await
                    .expect("a datagram")
                    .unwrap();
                lens.push((n, from));
            }
            lens
        };
        let got_a = recv(a.clone()).await;
        let got_b = recv(b.clone()).await;
        let a_addr = pub_a.local_addr().unwrap();
        let b_addr = pub_b.local_addr().unwrap();
        assert_eq!(got_a[1], (42, a_addr));
        assert_eq!(got_b[1], (41, b_addr));
        assert_eq!(got_a[0].1, a_addr);
        assert_eq!(got_b[0].1, b_addr);
        assert_eq!(mux.counters().unknown.load(Ordering::Relaxed), 1);

        // Replies come from the shared port.
        a.send_to(b"reply", a_addr).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = pub_a.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"reply"[..], port));

        // A dropped connection is forgotten: its publisher's datagrams are unknown again.
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pub_b.send_to(&[0x80; 43], port).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(mux.counters().unknown.load(Ordering::Relaxed), 2);
    }
}
