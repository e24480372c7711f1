//! One clock for every wake-up of the peer connections: a 10 ms grid.
//!
//! A recorder needs no low latency, and waking the runtime is most of what receiving costs
//! (a GStreamer publisher's ~280 packets/s each woke a runtime thread: about one context switch
//! per packet, measured). So nothing here waits on the kernel for a datagram. Sockets are plain
//! non-blocking sockets, never registered with the runtime's epoll (a registered socket wakes a
//! parked runtime thread on every arrival and every freed send buffer, even while nobody waits
//! for it), and they are read when the grid ticks: the kernel holds what arrives meanwhile, and
//! each connection gets its datagrams in one batch, which its driver, track readers and
//! recorder each handle in one wake. The connections' protocol timers (ICE consent, DTLS and
//! SCTP retransmits, RTCP reports, NACKs) end on the same grid, so all connections, their
//! timers and their reads share one wake of the runtime (a millisecond-exact timer buys a
//! recorder nothing).
//!
//! [`GridRuntime`] is the webrtc-rs runtime that does this for a connection with sockets of
//! its own; the shared port ([`super::udp_mux`]) reads its one socket on the same grid.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Runtime, Transmit};

/// The grid's step: 10 ms, a third of a video frame.
pub const STEP: Duration = Duration::from_millis(10);

/// `at` rounded up to the process-wide grid.
pub fn on_grid(at: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let step = STEP.as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(step);
    epoch + Duration::from_nanos((steps * step) as u64)
}

/// The first grid point after now (never now itself, so a wait always waits).
pub fn next_tick() -> Instant {
    on_grid(Instant::now() + Duration::from_nanos(1))
}

/// A sleep that ends on the grid, for webrtc-rs's `Runtime::sleep`.
pub fn sleep(duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
    Box::pin(tokio::time::sleep_until(on_grid(Instant::now() + duration)))
}

/// tokio's webrtc-rs runtime, with the connection's sockets read and its timers ended on the
/// grid (see the module doc). The multicast DNS socket is left to tokio: it carries a few
/// queries, and its address is shared with other processes.
pub struct GridRuntime {
    inner: Arc<dyn Runtime>,
}

impl GridRuntime {
    /// The runtime for one peer connection.
    pub fn shared() -> Arc<dyn Runtime> {
        Arc::new(GridRuntime {
            inner: webrtc::runtime::default_runtime().expect("built with the tokio runtime"),
        })
    }
}

impl fmt::Debug for GridRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GridRuntime").finish_non_exhaustive()
    }
}

/// The parts of a webrtc-rs [`Runtime`] that stay tokio's, for the runtimes that change only
/// how sockets are read and when timers end.
macro_rules! delegate_runtime {
    () => {
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
            Box<
                dyn Future<Output = io::Result<Arc<dyn webrtc::runtime::AsyncTcpStream>>>
                    + Send
                    + 'a,
            >,
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
            $crate::peer::grid::sleep(duration)
        }

        fn interval(&self, period: Duration) -> Box<dyn webrtc::runtime::AsyncInterval> {
            self.inner.interval(period)
        }

        fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
            self.inner.block_on(future)
        }
    };
}
pub(crate) use delegate_runtime;

impl Runtime for GridRuntime {
    delegate_runtime!();

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local = socket.local_addr()?;
        if local.port() == rtc::mdns::MDNS_PORT || local.ip().is_multicast() {
            return self.inner.wrap_udp_socket(socket);
        }
        socket.set_nonblocking(true)?;
        Ok(Arc::new(PolledSocket {
            socket,
            local,
            recv_wait: TickWait::default(),
            send_wait: TickWait::default(),
        }))
    }

    fn name(&self) -> &'static str {
        "tokio+grid"
    }
}

/// A wait for the next grid point, re-armed after each.
#[derive(Default)]
pub struct TickWait(Mutex<Option<Pin<Box<Sleep>>>>);

impl TickWait {
    /// Ready once the next grid point after the first call has passed (and then armed anew
    /// by the next call); registers `cx` meanwhile.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        let Ok(mut slot) = self.0.lock() else {
            return Poll::Ready(());
        };
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next_tick())));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *slot = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A connection's own UDP socket, read on the grid (see the module doc).
struct PolledSocket {
    socket: std::net::UdpSocket,
    local: SocketAddr,
    recv_wait: TickWait,
    send_wait: TickWait,
}

impl fmt::Debug for PolledSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolledSocket")
            .field("local", &self.local)
            .finish()
    }
}

impl AsyncUdpSocket for PolledSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// One datagram per call (`max_gso_segments` is 1). A full send buffer waits for the next
    /// grid point and tries again.
    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        loop {
            match self.socket.send_to(transmit.contents, transmit.destination) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.send_wait.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// Everything the kernel holds, up to `bufs.len()` datagrams; when it holds nothing, waits
    /// for the next grid point.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.len().min(meta.len());
        loop {
            let mut filled = 0;
            while filled < n {
                match self.socket.recv_from(&mut bufs[filled]) {
                    Ok((len, from)) => {
                        let mut m = RecvMeta::default();
                        m.addr = from;
                        m.len = len;
                        m.stride = len.max(1);
                        meta[filled] = m;
                        filled += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An error (an ICMP report of an earlier send, say) is its own result; what
                    // was read before it is handed on first.
                    Err(e) if filled == 0 => return Poll::Ready(Err(e)),
                    Err(_) => break,
                }
            }
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            if self.recv_wait.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_are_step_apart_and_never_behind() {
        let now = Instant::now();
        let a = on_grid(now);
        assert!(a >= now && a - now <= STEP);
        assert_eq!(on_grid(a), a);
        assert_eq!(on_grid(a + Duration::from_nanos(1)), a + STEP);
        assert!(next_tick() > Instant::now());
    }

    /// Datagrams sent while the connection waits arrive together at the next grid point, in
    /// order and from their sender, and replies leave from the connection's own socket.
    #[tokio::test]
    async fn a_polled_socket_receives_on_the_grid_and_sends() {
        let rt = GridRuntime::shared();
        let sock = rt
            .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..3u8 {
            peer.send_to(&[i; 10], addr).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut buf = [0u8; 64];
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            assert_eq!(from, peer.local_addr().unwrap());
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, vec![vec![0; 10], vec![1; 10], vec![2; 10]]);
        sock.send_to(b"reply", peer.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"reply"[..], addr));
    }
}
