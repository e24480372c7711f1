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
//! connections' timers end on it: one wake of the runtime every 20 ms handles every
//! connection's datagrams and timers. That needs a receive buffer that holds 20 ms of
//! arrivals and their bursts ([`GRID_MIN_BUFFER`]); the kernel caps the one asked for at
//! `net.core.rmem_max` unless the process may force it, and with less the port is read as
//! datagrams arrive instead ([`ReadMode`]). Either way the kernel's own drop count for the
//! socket is taken every second, shown and said.

pub mod announce;
pub mod media_path;
pub mod route;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Runtime, Transmit};

use super::grid;

use route::{Routes, SlotId};

/// Datagrams queued per connection before new ones are dropped (~0.5 s of a 2 Mb/s stream).
const QUEUE: usize = 256;
/// Receive buffer asked of the kernel (it caps it at `net.core.rmem_max` unless forced): at
/// 32 publishers of ~280 packets/s, 20 ms are ~180 datagrams, ~400 KiB of kernel memory;
/// 4 MiB leaves room for keyframe bursts and a stalled runtime.
const RECV_BUFFER: usize = 4 << 20;
/// Most datagrams read in one tick (~0.9 s of 32 publishers): the rest waits a tick.
const MAX_PER_TICK: usize = 8192;
/// Largest datagram read (WebRTC keeps under the 1500-byte MTU; bigger is cut and dropped).
const MAX_DATAGRAM: usize = 2048;
/// Datagrams a connection's queue may hold as slices of a read's buffer ([`Demux::drain`]);
/// past that, the ones queued get buffers of their own. A queue is emptied at each grid step,
/// and a 720p keyframe is ~40-60 datagrams, so only a connection that falls behind reaches the
/// limit. Such a connection pins at most `PIN_LIMIT` reads' buffers, each at most
/// [`PIN_MAX_READ`]: 4 MiB, where its whole queue of copies would hold ~0.5 MiB.
const PIN_LIMIT: usize = 64;
/// A read larger than this (only kernel-coalesced bursts are: 32 datagrams of at most
/// [`MAX_DATAGRAM`] are 64 KiB) is handed on as copies: its buffer is not kept alive by slices.
const PIN_MAX_READ: usize = 64 * 1024;
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
    /// Datagrams the kernel dropped before we read them, its receive buffer full (media
    /// lost: the publisher repairs some with NACKs, if asked in time).
    pub kernel_dropped: AtomicU64,
    /// True once the port is read as datagrams arrive (see [`ReadMode`]).
    pub on_arrival: std::sync::atomic::AtomicBool,
    /// What the media path counts ([`media_path`]).
    pub media: media_path::MediaPathCounters,
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
    /// A session's queues, for what the media path takes of its connection's packets.
    Attach {
        ufrag: Vec<u8>,
        sink: media_path::Sink,
    },
    /// A track whose RTP the media path takes from now on.
    Route {
        ufrag: Vec<u8>,
        ssrc: u32,
        kind: crate::media::TrackKind,
    },
    /// A stream webrtc-rs bound (`bound`) or unbound, for the feedback chain.
    Bind {
        ufrag: Vec<u8>,
        info: Box<rtc::interceptor::StreamInfo>,
        bound: bool,
    },
    /// Sender Reports webrtc-rs decrypted.
    SenderReports {
        ufrag: Vec<u8>,
        now: std::time::Instant,
        reports: media_path::Rtcp,
    },
    /// The session is ending: nothing more goes to its queues; said done on `done`.
    Detach {
        ufrag: Vec<u8>,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// The shared port: cheap to clone, one per recorder. Its task ends when every clone and
/// every connection's socket are gone.
#[derive(Clone)]
pub struct UdpMux {
    socket: Arc<std::net::UdpSocket>,
    mode: ReadMode,
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
        media_path::observe_srtp_keys();
        UdpMux::bind_with(bind, announce, RECV_BUFFER, None).await
    }

    /// [`UdpMux::bind`] asking for `recv_buffer` bytes of receive buffer, read in `mode` if
    /// given (else as that buffer allows).
    async fn bind_with(
        bind: SocketAddr,
        announce: Vec<SocketAddr>,
        recv_buffer: usize,
        mode: Option<ReadMode>,
    ) -> io::Result<UdpMux> {
        let raw = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        grow_recv_buffer(&raw, recv_buffer);
        raw.bind(&bind.into())?;
        raw.set_nonblocking(true)?;
        let recv_buffer = raw.recv_buffer_size().unwrap_or(0);
        let mode = mode.unwrap_or(ReadMode::for_buffer(recv_buffer));
        // Not a tokio socket: read on the grid, it never wakes the runtime (see `grid`),
        // unless its buffer is too small for that.
        let socket = Arc::new(std::net::UdpSocket::from(raw));
        let (control, control_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(MuxCounters::default());
        info!(
            local = %socket.local_addr()?,
            announce = ?announce,
            recv_buffer_kib = recv_buffer / 1024,
            read = ?mode,
            "media for every publisher on one UDP port"
        );
        let reader = BatchReader::new(&socket);
        tokio::spawn(read_loop(
            socket.clone(),
            reader,
            mode,
            control_rx,
            counters.clone(),
        ));
        Ok(UdpMux {
            socket,
            mode,
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

    /// How the port is read now (see [`ReadMode`]).
    pub fn read_mode(&self) -> ReadMode {
        if self.counters.on_arrival.load(Ordering::Relaxed) {
            ReadMode::OnArrival
        } else {
            self.mode
        }
    }

    /// The addresses publishers are told (see [`announce`]).
    pub fn announce(&self) -> &[SocketAddr] {
        &self.announce
    }

    /// Hands the media path of the connection known by `ufrag` its session's queues
    /// ([`media_path`]): once its tracks are routed, their packets go there.
    pub(crate) fn attach(&self, ufrag: &str, sink: media_path::Sink) {
        let _ = self.control.send(Control::Attach {
            ufrag: ufrag.as_bytes().to_vec(),
            sink,
        });
    }

    /// From now on, RTP of `ssrc` on the connection known by `ufrag` is decrypted in the
    /// port's loop and handed to its session as `kind`.
    pub(crate) fn route(&self, ufrag: &str, ssrc: u32, kind: crate::media::TrackKind) {
        let _ = self.control.send(Control::Route {
            ufrag: ufrag.as_bytes().to_vec(),
            ssrc,
            kind,
        });
    }

    /// A stream webrtc-rs bound (`bound`) or unbound on the connection known by `ufrag`.
    pub(crate) fn bind_stream(
        &self,
        ufrag: &str,
        info: &rtc::interceptor::StreamInfo,
        bound: bool,
    ) {
        let _ = self.control.send(Control::Bind {
            ufrag: ufrag.as_bytes().to_vec(),
            info: Box::new(info.clone()),
            bound,
        });
    }

    /// Sender Reports webrtc-rs decrypted on the connection known by `ufrag`.
    pub(crate) fn sender_reports(
        &self,
        ufrag: &str,
        now: std::time::Instant,
        reports: media_path::Rtcp,
    ) {
        let _ = self.control.send(Control::SenderReports {
            ufrag: ufrag.as_bytes().to_vec(),
            now,
            reports,
        });
    }

    /// The session of the connection known by `ufrag` is ending: once this returns, the port
    /// sends nothing more to its queues, so what it sent is ahead of the session's last event.
    pub(crate) async fn detach(&self, ufrag: &str) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let sent = self.control.send(Control::Detach {
            ufrag: ufrag.as_bytes().to_vec(),
            done,
        });
        if sent.is_ok() {
            // The port's task answers within a grid step; it is gone if it never does.
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }

    /// The port's counters.
    pub fn counters(&self) -> &MuxCounters {
        &self.counters
    }

    /// The webrtc-rs runtime for one peer connection whose ICE ufrag is `ufrag`: tokio's,
    /// except that its UDP socket is a share of this port, and its TCP listener one of
    /// `tcp`'s if given (see [`super::tcp_mux`]).
    pub fn runtime_for(
        &self,
        ufrag: &str,
        tcp: Option<&super::tcp_mux::TcpMux>,
    ) -> Arc<dyn Runtime> {
        Arc::new(MuxRuntime {
            inner: webrtc::runtime::default_runtime().expect("built with the tokio runtime"),
            mux: self.clone(),
            tcp: tcp.cloned(),
            ufrag: ufrag.as_bytes().to_vec(),
        })
    }
}

/// How the shared port is read, chosen from the receive buffer the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Every 20 ms on the grid: never a wake-up per datagram; the buffer holds 20 ms of
    /// arrivals and any unpaced keyframe burst in them.
    Grid,
    /// On the grid while the buffer, too small to be sure of, is found less than half full
    /// at each read; past that (or at the first drop) on arrival from then on.
    GridWatched,
    /// As datagrams arrive (the runtime's epoll): a wake-up per burst, nearly twice the CPU
    /// of grid reads (2.1 → 4.0 % of a core for one 8 Mb/s publisher), nothing waits 20 ms.
    OnArrival,
}

impl ReadMode {
    /// Grid reads, watched unless the buffer holds [`GRID_MIN_BUFFER`]; `granted` is what
    /// the kernel reports (twice the size it accepted, the way it accounts memory).
    pub fn for_buffer(granted: usize) -> ReadMode {
        if granted >= GRID_MIN_BUFFER {
            ReadMode::Grid
        } else {
            ReadMode::GridWatched
        }
    }
}

/// The receive buffer (as the kernel reports it) that grid reads need: 4 MiB of accounted
/// memory is ~1800 full-size datagrams, ten times 20 ms of 32 publishers with room for a
/// 1080p keyframe sent unpaced. A stock `net.core.rmem_max` (208 KiB) grants 416 KiB: with
/// one 1080p 8 Mb/s publisher a 10 ms read of the shared port found it 80 % full, and
/// per-connection sockets read the same way overflowed (365 drops in 40 s).
pub const GRID_MIN_BUFFER: usize = 4 << 20;

/// Asks for `size` bytes of receive buffer, past `net.core.rmem_max` where the process may
/// (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN: root, or a service granted it).
fn grow_recv_buffer(socket: &socket2::Socket, size: usize) {
    // Best effort: a smaller buffer still works (see ReadMode).
    let _ = socket.set_recv_buffer_size(size);
    #[cfg(target_os = "linux")]
    if socket.recv_buffer_size().unwrap_or(0) < 2 * size {
        let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value);
    }
}

/// Sets an integer socket option, best effort (Linux; elsewhere nothing).
fn set_int_option(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a valid socket descriptor and a c_int option of its stated size.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, level, name, value);
}

/// The kernel's memory counters of a socket (`SO_MEMINFO`): what its receive queue holds,
/// its limit and its drops.
#[derive(Debug, Clone, Copy)]
struct MemInfo {
    /// Bytes of kernel memory the queued datagrams take (SK_MEMINFO_RMEM_ALLOC).
    queued: u64,
    /// The receive buffer's limit in the same units (SK_MEMINFO_RCVBUF).
    limit: u64,
    /// Datagrams dropped since the socket opened, most for a full buffer (SK_MEMINFO_DROPS;
    /// the "drops" column of /proc/net/udp).
    drops: u64,
}

/// `None` where the kernel cannot say.
fn meminfo(socket: &std::net::UdpSocket) -> Option<MemInfo> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // Indices in include/uapi/linux/sock_diag.h.
        const RMEM_ALLOC: usize = 0;
        const RCVBUF: usize = 1;
        const DROPS: usize = 8;
        let mut info = [0u32; DROPS + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: a valid descriptor; the kernel writes at most `len` bytes into `info`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 && len as usize >= std::mem::size_of_val(&info) {
            return Some(MemInfo {
                queued: u64::from(info[RMEM_ALLOC]),
                limit: u64::from(info[RCVBUF]),
                drops: u64::from(info[DROPS]),
            });
        }
        None
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// Registers the port with the runtime's epoll, for reading only (sends never wait: see
/// `MuxSocket::poll_send`); `None` (said) if it cannot be.
fn watch_arrivals(
    socket: &Arc<std::net::UdpSocket>,
) -> Option<tokio::io::unix::AsyncFd<Arc<std::net::UdpSocket>>> {
    // SAFETY: the AsyncFd owns a clone of the Arc, so the socket's descriptor stays open,
    // and names the same socket, for as long as the AsyncFd lives.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            socket.clone(),
            tokio::io::Interest::READABLE,
        )
    };
    match registered {
        Ok(fd) => Some(fd),
        Err(e) => {
            let e = e.into_parts().1;
            warn!(
                "udp mux: cannot watch the shared port ({e}), reading it every {} ms",
                grid::STEP.as_millis()
            );
            None
        }
    }
}

/// The read task's state: which connection each datagram goes to.
#[derive(Default)]
struct Demux {
    routes: Routes,
    queues: HashMap<SlotId, mpsc::Sender<(SocketAddr, Bytes)>>,
    /// Per connection: datagrams handed on and dropped (queue full), said when it goes.
    delivered: HashMap<SlotId, (u64, u64)>,
    /// Each registered connection's slot, by its ufrag (for the sessions' messages).
    slots_by_ufrag: HashMap<Vec<u8>, SlotId>,
    /// Each registered connection's media path.
    paths: HashMap<SlotId, media_path::MediaPath>,
    /// Media paths of sessions whose connection has not registered yet.
    pending: HashMap<Vec<u8>, media_path::MediaPath>,
    /// Where each datagram of the read in progress goes the long way, if it does (kept
    /// between reads for its allocation).
    routed: Vec<Option<SlotId>>,
    /// The connections whose media paths took packets of the read in progress.
    took: Vec<SlotId>,
}

impl Demux {
    /// Applies a connection's registration or departure; false once nobody can register
    /// again and no connection is left.
    fn control(&mut self, c: Option<Control>) -> bool {
        match c {
            Some(Control::Register { slot, ufrag, tx }) => {
                debug!(slot, ufrag = %String::from_utf8_lossy(&ufrag), "udp mux: connection registered");
                self.routes.register(slot, &ufrag);
                let path = self.pending.remove(&ufrag).unwrap_or_default();
                self.paths.insert(slot, path);
                self.slots_by_ufrag.insert(ufrag, slot);
                self.queues.insert(slot, tx);
            }
            Some(Control::SentTo { slot, addr }) => self.routes.sent_to(slot, addr),
            Some(Control::Attach { ufrag, sink }) => self.path(ufrag).attach(sink),
            Some(Control::Route { ufrag, ssrc, kind }) => self.path(ufrag).route(ssrc, kind),
            Some(Control::Bind { ufrag, info, bound }) => {
                if bound {
                    self.path(ufrag).bind(&info, true);
                } else if let Some(path) = self.existing_path(&ufrag) {
                    path.bind(&info, false);
                }
            }
            Some(Control::SenderReports {
                ufrag,
                now,
                reports,
            }) => {
                if let Some(path) = self.existing_path(&ufrag) {
                    path.sender_reports(now, reports);
                }
            }
            Some(Control::Detach { ufrag, done }) => {
                self.pending.remove(&ufrag);
                if let Some(path) = self.existing_path(&ufrag) {
                    path.detach();
                }
                let _ = done.send(());
            }
            Some(Control::Unregister(slot)) => {
                let (handed, full) = self.delivered.remove(&slot).unwrap_or_default();
                debug!(slot, handed, full, "udp mux: connection gone");
                self.forget(slot);
            }
            // Every handle is gone: nobody can register again.
            None => return !self.queues.is_empty(),
        }
        true
    }

    fn forget(&mut self, slot: SlotId) {
        self.routes.remove(slot);
        self.queues.remove(&slot);
        self.delivered.remove(&slot);
        self.paths.remove(&slot);
        self.slots_by_ufrag.retain(|_, s| *s != slot);
    }

    /// The media path of the connection known by `ufrag`, registered or not yet. Only
    /// sessions of this process name one, so the pending ones are bounded by their number.
    fn path(&mut self, ufrag: Vec<u8>) -> &mut media_path::MediaPath {
        match self.slots_by_ufrag.get(&ufrag) {
            Some(slot) => self.paths.entry(*slot).or_default(),
            None => self.pending.entry(ufrag).or_default(),
        }
    }

    /// The media path of the connection known by `ufrag`, if it has one: what comes after a
    /// session has ended (a stream unbound as its connection closes) creates none.
    fn existing_path(&mut self, ufrag: &[u8]) -> Option<&mut media_path::MediaPath> {
        match self.slots_by_ufrag.get(ufrag) {
            Some(slot) => self.paths.get_mut(slot),
            None => self.pending.get_mut(ufrag),
        }
    }

    /// The feedback chains' timers (every grid step).
    fn tick(&mut self, now: std::time::Instant, counters: &MuxCounters) {
        for path in self.paths.values_mut() {
            path.tick(now, &counters.media);
        }
    }

    /// Reads what the socket holds now (bounded, so a flood cannot hold the task) and hands
    /// each datagram on; true if the socket was emptied.
    ///
    /// A datagram the media path takes is decrypted straight out of the read buffer. The
    /// others of one read are copied into one buffer and handed on as slices of it: one
    /// allocation per read instead of one per datagram. Datagrams of full size are over
    /// glibc's per-thread cache limit (1032 bytes), so each of their allocations took
    /// malloc's slow path; that was ~3 % of the recorder's CPU at 32 publishers (issue 11).
    /// A slice keeps its whole buffer alive, so a connection whose queue is backing up gets
    /// copies instead (see [`PIN_LIMIT`]), and so does every datagram of a read too large to
    /// pin ([`PIN_MAX_READ`]).
    fn drain(
        &mut self,
        socket: &std::net::UdpSocket,
        reader: &mut BatchReader,
        counters: &MuxCounters,
    ) -> bool {
        let mut left = MAX_PER_TICK;
        while left > 0 {
            let batch = match reader.recv(socket) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // ICMP errors of earlier sends and the like: per datagram.
                Err(_) => {
                    left -= 1;
                    continue;
                }
            };
            let now = std::time::Instant::now();
            // Every datagram counts, empty ones too (`datagrams` yields them), so nothing a
            // sender floods the port with can hold the task past the bound. Where each went is
            // kept in a list the task reuses, not one allocated per read.
            let mut routed = std::mem::take(&mut self.routed);
            routed.clear();
            let mut total = 0;
            for (from, datagram) in batch.datagrams() {
                left = left.saturating_sub(1);
                let slot = self.route(from, datagram, now, counters);
                if slot.is_some() {
                    total += datagram.len();
                }
                routed.push(slot);
            }
            self.hand_over_taken();
            // The rest goes the long way.
            let long_way = || {
                batch
                    .datagrams()
                    .zip(&routed)
                    .filter_map(|((from, datagram), slot)| Some((from, (*slot)?, datagram)))
            };
            if total > PIN_MAX_READ {
                for (from, slot, datagram) in long_way() {
                    self.deliver(slot, from, Bytes::copy_from_slice(datagram), counters);
                }
            } else if total > 0 {
                let mut chunk = BytesMut::with_capacity(total);
                for (_, _, datagram) in long_way() {
                    chunk.extend_from_slice(datagram);
                }
                let chunk = chunk.freeze();
                let mut start = 0;
                for (from, slot, datagram) in long_way() {
                    let end = start + datagram.len();
                    self.deliver(slot, from, chunk.slice(start..end), counters);
                    start = end;
                }
            }
            self.routed = routed;
        }
        false
    }

    /// Routes one datagram to its connection and hands it on ([`Demux::route`],
    /// [`Demux::deliver`]).
    #[cfg(test)]
    fn hand_on(&mut self, from: SocketAddr, datagram: Bytes, counters: &MuxCounters) {
        if let Some(slot) = self.route(from, &datagram, std::time::Instant::now(), counters) {
            self.deliver(slot, from, datagram, counters);
        }
        self.hand_over_taken();
    }

    /// What each connection's media path took from the read just done, in one hand-over.
    fn hand_over_taken(&mut self) {
        for slot in self.took.drain(..) {
            if let Some(path) = self.paths.get_mut(&slot) {
                path.send_taken();
            }
        }
    }

    /// Finds one datagram's connection, or counts why none; gives it to the connection's
    /// media path, which may take it. The connection whose queue it must go to otherwise.
    fn route(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: std::time::Instant,
        counters: &MuxCounters,
    ) -> Option<SlotId> {
        counters.received.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.routes.route(from, datagram) else {
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
            return None;
        };
        if let Some(path) = self.paths.get_mut(&slot) {
            if let Some(random) = media_path::hello_random(datagram) {
                path.saw_hello(random);
            }
            if path.datagram(datagram, now, &counters.media) {
                if path.taken() == 1 {
                    // Its first of this read: it hands them over when the read is done.
                    self.took.push(slot);
                }
                return None;
            }
        }
        Some(slot)
    }

    /// Puts a datagram on its connection's queue (webrtc-rs's way), or counts why not.
    fn deliver(&mut self, slot: SlotId, from: SocketAddr, datagram: Bytes, counters: &MuxCounters) {
        let Some(tx) = self.queues.get(&slot) else {
            counters.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let count = self.delivered.entry(slot).or_default();
        // (A full queue drops it below: no copy for that.)
        let datagram = if tx.capacity() > 0 && QUEUE - tx.capacity() >= PIN_LIMIT {
            Bytes::copy_from_slice(&datagram)
        } else {
            datagram
        };
        match tx.try_send((from, datagram)) {
            Ok(()) => count.0 += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                count.1 += 1;
                counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The connection has just closed: its datagram is for no one.
                counters.unknown.fetch_add(1, Ordering::Relaxed);
                self.forget(slot);
            }
        }
    }
}

/// Reads the shared socket many datagrams per system call (`recvmmsg` through quinn-udp,
/// the QUIC stack's UDP layer): a tick's ~20 datagrams of a few publishers cost one call
/// instead of one each. Where the kernel coalesces a burst of same-size datagrams from one
/// sender (UDP GRO, on real network cards), a buffer holds several, `stride` apart.
pub(super) struct BatchReader {
    state: Option<quinn_udp::UdpSocketState>,
    buf: Vec<u8>,
    slice_len: usize,
    meta: [quinn_udp::RecvMeta; BATCH],
}

/// Buffers per call (quinn-udp takes at most its `BATCH_SIZE`).
const BATCH: usize = 32;

impl BatchReader {
    /// Sets the socket up for batched reads; where that fails, one datagram per call.
    fn new(socket: &std::net::UdpSocket) -> BatchReader {
        let state = quinn_udp::UdpSocketState::new(socket.into())
            .inspect_err(|e| {
                warn!("udp mux: batched reads unavailable ({e}), one datagram per read")
            })
            .ok();
        // quinn-udp turns on kernel receive timestamps, which we never read (and which make
        // the kernel timestamp every packet of the machine); and if it failed half-way, GRO
        // may be on without the control messages that say where a coalesced buffer splits.
        set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
        // Nor the destination address or ECN bits it asks for: each is a control message the
        // kernel builds per datagram (~1 % of the recorder's CPU at 32 publishers, issue 11)
        // for nothing here (the port replies from where it is bound, and sends no ECN).
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 0);
        set_int_option(socket, libc::IPPROTO_IP, libc::IP_RECVTOS, 0);
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 0);
        set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0);
        if state.is_none() {
            set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 0);
        }
        let segments = state.as_ref().map_or(1, |s| s.gro_segments().max(1));
        let slices = if state.is_some() {
            BATCH.min(quinn_udp::BATCH_SIZE)
        } else {
            1
        };
        let slice_len = MAX_DATAGRAM * segments;
        BatchReader {
            state,
            // Zeroed pages are mapped only once written: a coalesced buffer's tail costs no
            // memory until a burst fills it.
            buf: vec![0u8; slice_len * slices],
            slice_len,
            meta: [quinn_udp::RecvMeta::default(); BATCH],
        }
    }

    /// One read: the datagrams it returned, or the socket's error (`WouldBlock` when empty).
    fn recv(&mut self, socket: &std::net::UdpSocket) -> io::Result<Batch<'_>> {
        let n = match &self.state {
            Some(state) => {
                // `buf` holds at most BATCH slices.
                let mut slices: Vec<io::IoSliceMut<'_>> = self
                    .buf
                    .chunks_mut(self.slice_len)
                    .map(io::IoSliceMut::new)
                    .collect();
                state.recv(socket.into(), &mut slices, &mut self.meta)?
            }
            None => {
                let (len, from) = socket.recv_from(&mut self.buf[..MAX_DATAGRAM])?;
                self.meta[0].addr = from;
                self.meta[0].len = len;
                self.meta[0].stride = len;
                1
            }
        };
        Ok(Batch { reader: self, n })
    }
}

/// What one [`BatchReader::recv`] returned.
pub(super) struct Batch<'a> {
    reader: &'a BatchReader,
    n: usize,
}

impl Batch<'_> {
    /// Each datagram with its sender, coalesced buffers split at their stride (an empty
    /// datagram is one too: it is counted, then dropped as for no connection).
    fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        let r = self.reader;
        r.meta[..self.n].iter().enumerate().flat_map(move |(i, m)| {
            let start = i * r.slice_len;
            let filled = &r.buf[start..start + m.len.min(r.slice_len)];
            let stride = if m.stride == 0 {
                filled.len().max(1)
            } else {
                m.stride
            };
            let empty = filled.is_empty().then_some((m.addr, filled));
            empty
                .into_iter()
                .chain(filled.chunks(stride).map(move |d| (m.addr, d)))
        })
    }
}

/// Reads the shared socket and hands each datagram to its connection; applies the
/// connections' registrations first, so a connection is known before its first datagram.
/// Once a second it takes the kernel's count of datagrams dropped for a full receive buffer.
async fn read_loop(
    socket: Arc<std::net::UdpSocket>,
    mut reader: BatchReader,
    mut mode: ReadMode,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<MuxCounters>,
) {
    let mut demux = Demux::default();
    let now = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(grid::on_grid(now), grid::STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drops_check = tokio::time::interval_at(grid::on_grid(now), Duration::from_secs(1));
    drops_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drops = DropReport::default();
    let mut arrivals = None;
    loop {
        if mode == ReadMode::OnArrival && arrivals.is_none() {
            arrivals = watch_arrivals(&socket);
            if arrivals.is_none() {
                mode = ReadMode::Grid;
            }
            counters
                .on_arrival
                .store(arrivals.is_some(), Ordering::Relaxed);
        }
        tokio::select! {
            biased;
            c = control.recv() => if !demux.control(c) {
                break;
            },
            ready = async { arrivals.as_ref()?.readable().await.ok() }, if arrivals.is_some() => {
                if let Some(mut ready) = ready
                    && demux.drain(&socket, &mut reader, &counters)
                {
                    ready.clear_ready();
                }
            }
            _ = tick.tick() => {
                demux.tick(std::time::Instant::now(), &counters);
                if arrivals.is_some() {
                    continue;
                }
                if mode == ReadMode::GridWatched
                    && let Some(m) = meminfo(&socket)
                    && m.queued * 2 > m.limit
                {
                    warn!(
                        queued_kib = m.queued / 1024,
                        buffer_kib = m.limit / 1024,
                        "udp mux: {step} ms of datagrams filled half the port's receive buffer; \
                         reading it as they arrive from now on (more CPU). Raise \
                         net.core.rmem_max to {RECV_BUFFER} to keep reading every {step} ms.",
                        step = grid::STEP.as_millis(),
                    );
                    mode = ReadMode::OnArrival;
                }
                demux.drain(&socket, &mut reader, &counters);
            }
            _ = drops_check.tick() => {
                if let Some(total) = meminfo(&socket).map(|m| m.drops) {
                    counters.kernel_dropped.store(total, Ordering::Relaxed);
                    if let Some(new) = drops.check(total, std::time::Instant::now()) {
                        warn!(
                            dropped = new,
                            since_start = total,
                            "udp mux: the kernel dropped datagrams of the shared port (its receive buffer was full); raise net.core.rmem_max"
                        );
                        if mode == ReadMode::GridWatched {
                            mode = ReadMode::OnArrival;
                        }
                    }
                }
            }
        }
    }
}

/// Says when the kernel has dropped datagrams of the port (a new socket: its count starts
/// at 0), at most one line per window.
#[derive(Default)]
struct DropReport {
    /// The count already said.
    said: u64,
    last_line: Option<std::time::Instant>,
}

impl DropReport {
    /// The kernel's count is `total` now: `Some(new drops)` when that is worth a line.
    fn check(&mut self, total: u64, now: std::time::Instant) -> Option<u64> {
        if total <= self.said
            || self
                .last_line
                .is_some_and(|t| now.saturating_duration_since(t) < crate::record::quiet::WINDOW)
        {
            return None;
        }
        let new = total - self.said;
        self.said = total;
        self.last_line = Some(now);
        Some(new)
    }
}

/// tokio's webrtc-rs runtime with the UDP sockets of one connection taken from the shared
/// port.
struct MuxRuntime {
    inner: Arc<dyn Runtime>,
    mux: UdpMux,
    tcp: Option<super::tcp_mux::TcpMux>,
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
        match &self.tcp {
            Some(tcp) => tcp.listener_for(listener, &self.ufrag),
            None => self.inner.wrap_tcp_listener(listener),
        }
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<
        Box<dyn Future<Output = io::Result<Arc<dyn webrtc::runtime::AsyncTcpStream>>> + Send + 'a>,
    > {
        if self.tcp.is_some() {
            // Behind the shared TCP port the recorder only listens (the session does not
            // pass on candidates that would make webrtc-rs connect out).
            return Box::pin(std::future::ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the recorder does not connect out over TCP",
            ))));
        }
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
        for mode in [ReadMode::Grid, ReadMode::OnArrival] {
            route_and_reply(loopback_mux(mode).await).await;
        }
    }

    /// A shared port on loopback with the full buffer, read in `mode`.
    async fn loopback_mux(mode: ReadMode) -> UdpMux {
        UdpMux::bind_with(
            "127.0.0.1:0".parse().unwrap(),
            Vec::new(),
            RECV_BUFFER,
            Some(mode),
        )
        .await
        .unwrap()
    }

    async fn route_and_reply(mux: UdpMux) {
        let port = mux.local_addr().unwrap();
        let placeholder = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = mux
            .runtime_for("ufraga", None)
            .wrap_udp_socket(placeholder())
            .unwrap();
        let b = mux
            .runtime_for("ufragb", None)
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

    /// A burst is read many datagrams per call, and one the kernel hands over coalesced
    /// (sent with UDP GSO here; on loopback it arrives whole, as GRO coalesces on a network
    /// card) is split back at its stride: every datagram reaches its connection, in order.
    #[tokio::test]
    async fn a_coalesced_burst_reaches_its_connection_datagram_by_datagram() {
        let mux = loopback_mux(ReadMode::Grid).await;
        let port = mux.local_addr().unwrap();
        let placeholder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let conn = mux
            .runtime_for("ufraga", None)
            .wrap_udp_socket(placeholder)
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(&route::binding("ufraga:y"), port).unwrap();
        let state = quinn_udp::UdpSocketState::new((&sender).into()).unwrap();
        const COUNT: usize = 40;
        const SIZE: usize = 1000;
        let mut burst = Vec::new();
        for i in 0..COUNT {
            burst.extend(std::iter::repeat_n(0x80 | i as u8, SIZE));
        }
        burst.extend([0x80; 300]); // a shorter last one, as GSO allows
        let per_send = state.max_gso_segments().clamp(1, COUNT + 1);
        for chunk in burst.chunks(per_send * SIZE) {
            let transmit = quinn_udp::Transmit {
                destination: port,
                ecn: None,
                contents: chunk,
                segment_size: (per_send > 1).then_some(SIZE),
                src_ip: None,
            };
            state.try_send((&sender).into(), &transmit).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..COUNT + 2 {
            let mut buf = [0u8; 1500];
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), conn.recv_from(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            assert_eq!(from, sender.local_addr().unwrap());
            got.push((n, buf[0]));
        }
        let want: Vec<(usize, u8)> = (0..COUNT)
            .map(|i| (SIZE, 0x80 | i as u8))
            .chain([(300, 0x80)])
            .collect();
        assert_eq!(&got[1..], &want[..], "sent {per_send} per send");
        assert_eq!(
            mux.counters().received.load(Ordering::Relaxed),
            COUNT as u64 + 2
        );
    }

    /// A session's media path lives from its first message to its connection's end, and
    /// what comes after its end (a stream unbound as the connection closes, a late Sender
    /// Report) leaves nothing behind: a recorder that sees publishers come and go for days
    /// keeps no state of the gone ones.
    #[test]
    fn a_gone_session_leaves_no_media_path() {
        let mut demux = Demux::default();
        let info = Box::new(rtc::interceptor::StreamInfo {
            ssrc: 5,
            ..Default::default()
        });
        let (events, _events_rx) = mpsc::channel(4);
        let (rtcp, _rtcp_rx) = mpsc::channel(4);
        let sink = || media_path::Sink {
            events: events.clone(),
            counters: Default::default(),
            batch_limit: 4,
            rtcp: rtcp.clone(),
            port_feeds: Default::default(),
        };
        // Before its connection registers: pending, then moved to the slot.
        assert!(demux.control(Some(Control::Attach {
            ufrag: b"gone".to_vec(),
            sink: sink(),
        })));
        assert_eq!(demux.pending.len(), 1);
        let (tx, _rx) = mpsc::channel(QUEUE);
        demux.control(Some(Control::Register {
            slot: 3,
            ufrag: b"gone".to_vec(),
            tx,
        }));
        assert!(demux.pending.is_empty() && demux.paths.contains_key(&3));
        demux.control(Some(Control::Bind {
            ufrag: b"gone".to_vec(),
            info: info.clone(),
            bound: true,
        }));
        // The connection closes, then its streams are unbound, a report comes, it detaches.
        demux.control(Some(Control::Unregister(3)));
        demux.control(Some(Control::Bind {
            ufrag: b"gone".to_vec(),
            info,
            bound: false,
        }));
        demux.control(Some(Control::SenderReports {
            ufrag: b"gone".to_vec(),
            now: std::time::Instant::now(),
            reports: Vec::new(),
        }));
        let (done, mut said) = tokio::sync::oneshot::channel();
        demux.control(Some(Control::Detach {
            ufrag: b"gone".to_vec(),
            done,
        }));
        assert!(said.try_recv().is_ok(), "detach is answered");
        assert!(demux.paths.is_empty() && demux.pending.is_empty());
        assert!(demux.slots_by_ufrag.is_empty());
        // A session whose connection never registered goes on detach too.
        demux.control(Some(Control::Attach {
            ufrag: b"never".to_vec(),
            sink: sink(),
        }));
        let (done, _said) = tokio::sync::oneshot::channel();
        demux.control(Some(Control::Detach {
            ufrag: b"never".to_vec(),
            done,
        }));
        assert!(demux.pending.is_empty());
    }

    /// Datagrams go on as slices of their read's buffer while their connection keeps up; once
    /// its queue holds PIN_LIMIT, the ones queued get buffers of their own, so a connection
    /// that falls behind cannot keep many reads' buffers alive.
    #[test]
    fn slices_pin_a_read_buffer_only_while_the_queue_is_short() {
        let mut demux = Demux::default();
        let (tx, mut rx) = mpsc::channel(QUEUE);
        assert!(demux.control(Some(Control::Register {
            slot: 7,
            ufrag: b"ufraga".to_vec(),
            tx,
        })));
        let counters = MuxCounters::default();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut read = BytesMut::new();
        read.extend_from_slice(&route::binding("ufraga:y"));
        let first = read.len();
        for i in 0..100u8 {
            read.extend_from_slice(&[0x80, i, 0, 0]);
        }
        let read = read.freeze();
        demux.hand_on(from, read.slice(..first), &counters);
        for i in 0..100 {
            let at = first + 4 * i;
            demux.hand_on(from, read.slice(at..at + 4), &counters);
        }
        let inside = |b: &Bytes| read.as_ptr_range().contains(&b.as_ptr());
        let mut queued = Vec::new();
        while let Ok((_, d)) = rx.try_recv() {
            queued.push(d);
        }
        assert_eq!(queued.len(), 101);
        for (i, d) in queued.iter().enumerate() {
            if i > 0 {
                assert_eq!(&d[..2], &[0x80, (i - 1) as u8]);
            }
            assert_eq!(inside(d), i < PIN_LIMIT, "datagram {i}");
        }
    }

    /// An empty datagram is read, counted and dropped like any datagram for no connection
    /// (each counts toward the per-tick bound, so a flood of them cannot hold the task).
    #[tokio::test]
    async fn empty_datagrams_are_counted_and_dropped() {
        let mux = loopback_mux(ReadMode::Grid).await;
        let port = mux.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            sender.send_to(&[], port).unwrap();
        }
        let counters = mux.counters();
        for _ in 0..100 {
            if counters.unknown.load(Ordering::Relaxed) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.received.load(Ordering::Relaxed), 3);
        assert_eq!(counters.unknown.load(Ordering::Relaxed), 3);
    }

    /// A buffer too small to be sure of is read on the grid until a read finds it half
    /// full, then on arrival; the kernel's drop count for a socket is read back, and grows
    /// when a burst overflows its buffer.
    #[tokio::test]
    async fn a_small_buffer_found_half_full_is_read_on_arrival_and_drops_are_counted() {
        assert_eq!(ReadMode::for_buffer(GRID_MIN_BUFFER), ReadMode::Grid);
        assert_eq!(
            ReadMode::for_buffer(GRID_MIN_BUFFER - 1),
            ReadMode::GridWatched
        );
        let mux = UdpMux::bind_with("127.0.0.1:0".parse().unwrap(), Vec::new(), 64 << 10, None)
            .await
            .unwrap();
        assert_eq!(mux.read_mode(), ReadMode::GridWatched);
        // A burst of more than half the buffer between two reads.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = mux.local_addr().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..60 {
            sender.send_to(&[0x80; 1200], port).unwrap();
        }
        let t0 = std::time::Instant::now();
        while mux.read_mode() != ReadMode::OnArrival {
            assert!(t0.elapsed() < Duration::from_secs(5), "still on the grid");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // And on arrival it still reads everything.
        for _ in 0..40 {
            sender.send_to(&[0x80; 1200], port).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = mux.counters();
        let (received, dropped) = (
            c.received.load(Ordering::Relaxed),
            meminfo(&mux.socket).unwrap().drops,
        );
        assert_eq!(
            received + dropped,
            100,
            "{received} read, {dropped} dropped"
        );
        assert!(received >= 40, "{received} read");

        // A socket nobody reads, with the smallest buffer: a burst overflows it.
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        raw.set_recv_buffer_size(1).unwrap();
        raw.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let quiet = std::net::UdpSocket::from(raw);
        assert_eq!(meminfo(&quiet).unwrap().drops, 0);
        for _ in 0..200 {
            sender
                .send_to(&[0u8; 1200], quiet.local_addr().unwrap())
                .unwrap();
        }
        let m = meminfo(&quiet).unwrap();
        assert!(m.drops > 100, "{} dropped of 200", m.drops);
        assert!(m.queued > 0 && m.limit > 0, "{m:?}");
    }

    /// Drops are said at once, then at most once per window, each line with what is new.
    #[test]
    fn kernel_drops_are_said_once_per_window() {
        let t0 = std::time::Instant::now();
        let mut report = DropReport::default();
        assert_eq!(report.check(0, t0), None, "none yet");
        assert_eq!(report.check(3, t0), Some(3));
        let w = crate::record::quiet::WINDOW;
        assert_eq!(report.check(20, t0 + w / 2), None);
        assert_eq!(report.check(21, t0 + w), Some(18));
        assert_eq!(report.check(21, t0 + 3 * w), None, "nothing new");
    }
}
