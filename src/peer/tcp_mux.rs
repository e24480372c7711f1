//! One TCP port for every peer connection (`--tcp-port`): ICE-TCP (RFC 6544), for publishers
//! that cannot reach the recorder by UDP at all (a guest network that lets only TCP out).
//!
//! webrtc-rs 0.21.1 gathers a passive TCP host candidate per peer connection by binding a
//! listener of its own, and frames ICE, DTLS and SRTP on each accepted stream with a 2-byte
//! length (RFC 4571). As with [`super::udp_mux`], we plug in where it wraps that listener
//! (its `Runtime`): the connection's listener is only a loopback placeholder that names it
//! inside webrtc-rs; one real listener accepts for all connections, reads each stream's first
//! framed message (a connectivity check whose USERNAME starts with the connection's ufrag)
//! and hands the stream, that message first, to its connection.
//!
//! ```text
//!  publisher ──TCP──► shared listener ──► first message (≤ 10 s) ──ufrag──► MuxListener of pc 1
//!                                                                └──────► MuxListener of pc 2
//!  MuxStream: reads the first message again, then the socket; writes whole frames through
//!             a bounded queue to a writer task (a full queue drops the frame, counted)
//! ```
//!
//! The recorder never connects out over TCP: it only listens. A stream that names no
//! connection, says nothing in time or opens while [`MAX_HANDSHAKES`] others are still
//! silent is closed and counted, so a port open to the internet cannot be used to exhaust
//! it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};
use webrtc::runtime::{AsyncTcpListener, AsyncTcpStream};

use super::udp_mux::route::{self, SlotId};

/// Longest a new stream may take to send its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// New streams waiting for their first message at once; more are closed at once.
pub const MAX_HANDSHAKES: usize = 64;
/// Largest first message (a connectivity check is ~100 bytes).
const MAX_FIRST_MESSAGE: usize = 1500;
/// Streams routed to a connection and not yet taken by it.
const ACCEPT_QUEUE: usize = 4;
/// Frames queued for sending per stream (~0.5 s of a 2 Mb/s stream's feedback and more);
/// past it a frame is dropped, as UDP would, so a stalled publisher never stalls its driver.
const SEND_QUEUE: usize = 256;

/// Counters of the shared TCP port, for the status page and tests.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Streams accepted.
    pub accepted: AtomicU64,
    /// Of those, handed to their connection.
    pub routed: AtomicU64,
    /// Of those, closed: no first message in time, not a check, naming no connection, or
    /// too many waiting.
    pub refused: AtomicU64,
    /// Frames of ours dropped because their stream's send queue was full.
    pub frames_dropped: AtomicU64,
}

/// A stream whose first message named a connection.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The first message as read, its 2-byte length included: read again by the connection.
    first: Bytes,
}

enum Control {
    Register {
        slot: SlotId,
        ufrag: Vec<u8>,
        tx: mpsc::Sender<Accepted>,
    },
    Unregister(SlotId),
}

/// The shared TCP port: cheap to clone, one per recorder. Its task ends when every clone
/// and every connection's listener are gone.
#[derive(Clone)]
pub struct TcpMux {
    local: SocketAddr,
    control: mpsc::UnboundedSender<Control>,
    next_slot: Arc<AtomicU64>,
    counters: Arc<TcpCounters>,
    announce: Arc<[SocketAddr]>,
}

impl fmt::Debug for TcpMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpMux")
            .field("local", &self.local)
            .field("announce", &self.announce)
            .finish()
    }
}

impl TcpMux {
    /// Listens on `bind` and starts the task that accepts. `announce`: the addresses
    /// publishers are told (the shared port at this machine's or the NAT's public address).
    pub async fn bind(bind: SocketAddr, announce: Vec<SocketAddr>) -> io::Result<TcpMux> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let local = listener.local_addr()?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(TcpCounters::default());
        info!(%local, announce = ?announce, "ICE-TCP for every publisher on one TCP port");
        tokio::spawn(accept_loop(listener, control_rx, counters.clone()));
        Ok(TcpMux {
            local,
            control,
            next_slot: Arc::new(AtomicU64::new(1)),
            counters,
            announce: announce.into(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses publishers are told.
    pub fn announce(&self) -> &[SocketAddr] {
        &self.announce
    }

    /// The port's counters.
    pub fn counters(&self) -> &TcpCounters {
        &self.counters
    }

    /// The listener of the connection whose ICE ufrag is `ufrag`, in place of `placeholder`
    /// (the one webrtc-rs bound: its address names the connection inside webrtc-rs and is
    /// kept as the local address of every stream, so its ICE agent finds its candidate).
    pub fn listener_for(
        &self,
        placeholder: std::net::TcpListener,
        ufrag: &[u8],
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let local = placeholder.local_addr()?;
        drop(placeholder);
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        self.control
            .send(Control::Register {
                slot,
                ufrag: ufrag.to_vec(),
                tx,
            })
            .map_err(|_| io::Error::other("the shared TCP port is closed"))?;
        Ok(Arc::new(MuxListener {
            slot,
            local,
            rx: tokio::sync::Mutex::new(rx),
            control: self.control.clone(),
            counters: self.counters.clone(),
        }))
    }
}

/// Accepts every stream, waits for each one's first message beside the others, and hands
/// it to the connection it names.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<TcpCounters>,
) {
    let mut slots: HashMap<SlotId, mpsc::Sender<Accepted>> = HashMap::new();
    let mut by_ufrag: HashMap<Vec<u8>, SlotId> = HashMap::new();
    let mut handshakes: JoinSet<Option<(Vec<u8>, Accepted)>> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Register { slot, ufrag, tx }) => {
                    by_ufrag.insert(ufrag, slot);
                    slots.insert(slot, tx);
                }
                Some(Control::Unregister(slot)) => {
                    slots.remove(&slot);
                    by_ufrag.retain(|_, s| *s != slot);
                }
                // Every handle is gone: nobody can register again.
                None if slots.is_empty() => break,
                None => {}
            },
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                let routed = done.ok().flatten().and_then(|(ufrag, accepted)| {
                    let slot = by_ufrag.get(&ufrag)?;
                    slots.get(slot)?.try_send(accepted).ok()
                });
                let counter = if routed.is_some() { &counters.routed } else { &counters.refused };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    if handshakes.len() >= MAX_HANDSHAKES {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    handshakes.spawn(first_message(stream, peer));
                }
                Err(e) => {
                    // Out of descriptors and the like: try again a little later, not in a
                    // tight loop.
                    debug!("tcp mux: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The first framed message of a new stream, if it comes in time and is a connectivity
/// check: its ufrag and the stream with the message kept.
async fn first_message(mut stream: TcpStream, peer: SocketAddr) -> Option<(Vec<u8>, Accepted)> {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        let len = usize::from(u16::from_be_bytes(head));
        if !(20..=MAX_FIRST_MESSAGE).contains(&len) {
            return None;
        }
        let mut message = vec![0u8; 2 + len];
        message[..2].copy_from_slice(&head);
        stream.read_exact(&mut message[2..]).await.ok()?;
        let ufrag = route::binding_request_ufrag(&message[2..])?.to_vec();
        Some((ufrag, message))
    };
    let (ufrag, message) = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, read)
        .await
        .ok()??;
    Some((
        ufrag,
        Accepted {
            stream,
            peer,
            first: Bytes::from(message),
        },
    ))
}

/// One connection's share of the port: the streams that named it.
struct MuxListener {
    slot: SlotId,
    /// The placeholder's address (see [`TcpMux::listener_for`]).
    local: SocketAddr,
    /// Only the connection's driver accepts; the lock is for `&self`, never contended.
    rx: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    control: mpsc::UnboundedSender<Control>,
    counters: Arc<TcpCounters>,
}

impl fmt::Debug for MuxListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxListener")
            .field("slot", &self.slot)
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for MuxListener {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Unregister(self.slot));
    }
}

impl AsyncTcpListener for MuxListener {
    fn accept<'a>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>> + Send + 'a>>
    {
        Box::pin(async move {
            let next = self.rx.lock().await.recv().await;
            let Some(accepted) = next else {
                // The port is gone. webrtc-rs accepts again at once after an error, so
                // this never returns rather than spin.
                return std::future::pending().await;
            };
            let peer = accepted.peer;
            let stream = MuxStream::start(accepted, self.local, self.counters.clone());
            Ok((stream as Arc<dyn AsyncTcpStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A stream handed to its connection: its first message is read again, then the socket;
/// frames go out through a writer task.
struct MuxStream {
    local: SocketAddr,
    peer: SocketAddr,
    first: Mutex<Option<Bytes>>,
    /// Only the connection's driver reads; the lock is for `&self`, never contended.
    read: tokio::sync::Mutex<OwnedReadHalf>,
    out: mpsc::Sender<Bytes>,
    counters: Arc<TcpCounters>,
}

impl fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

impl MuxStream {
    fn start(accepted: Accepted, local: SocketAddr, counters: Arc<TcpCounters>) -> Arc<MuxStream> {
        let (read, mut write) = accepted.stream.into_split();
        let (out, mut queue) = mpsc::channel::<Bytes>(SEND_QUEUE);
        // Ends when the stream is dropped (the queue closes) or the socket fails; the
        // socket closes when both halves are gone.
        tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        Arc::new(MuxStream {
            local,
            peer: accepted.peer,
            first: Mutex::new(Some(accepted.first)),
            read: tokio::sync::Mutex::new(read),
            out,
            counters,
        })
    }

    /// What is left of the first message, up to `buf.len()` bytes of it.
    fn take_first(&self, buf: &mut [u8]) -> Option<usize> {
        let mut first = self.first.lock().ok()?;
        let pending = first.as_mut()?;
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        let rest = pending.split_off(n);
        *first = (!rest.is_empty()).then_some(rest);
        Some(n)
    }
}

impl AsyncTcpStream for MuxStream {
    fn read<'a, 'b>(
        &'a self,
        buf: &'b mut [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            if let Some(n) = self.take_first(buf) {
                return Ok(n);
            }
            self.read.lock().await.read(buf).await
        })
    }

    /// Queues one whole frame (webrtc-rs writes each framed packet in one call): never waits,
    /// never writes part of a frame.
    fn write_all<'a, 'b>(
        &'a self,
        buf: &'b [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        let sent = match self.out.try_send(Bytes::copy_from_slice(buf)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the publisher's TCP stream closed",
            )),
        };
        Box::pin(std::future::ready(sent))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = (message.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(message);
        out
    }

    async fn read_all(stream: &Arc<dyn AsyncTcpStream>, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("data in time")
                .unwrap();
            assert!(n > 0, "stream ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Two connections behind one port: each gets the stream whose first check names it,
    /// that check first and then what follows; replies leave framed; a stream naming no
    /// connection, or sending no check, is closed.
    #[tokio::test]
    async fn streams_reach_the_connection_their_first_check_names() {
        let mux = TcpMux::bind("127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
        let port = mux.local_addr();
        let placeholder = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (placeholder(), placeholder());
        let (local_a, local_b) = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
        let a = mux.listener_for(pa, b"ufraga").unwrap();
        let b = mux.listener_for(pb, b"ufragb").unwrap();

        let check_b = framed(&route::binding("ufragb:x"));
        let mut client_b = TcpStream::connect(port).await.unwrap();
        client_b.write_all(&check_b).await.unwrap();
        client_b
            .write_all(&framed(b"after the check"))
            .await
            .unwrap();
        let check_a = framed(&route::binding("ufraga:y"));
        let mut client_a = TcpStream::connect(port).await.unwrap();
        client_a.write_all(&check_a).await.unwrap();

        let (stream_b, peer_b) = tokio::time::timeout(Duration::from_secs(5), b.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer_b, client_b.local_addr().unwrap());
        assert_eq!(
            stream_b.local_addr().unwrap(),
            local_b,
            "the placeholder names it"
        );
        let mut want = check_b.clone();
        want.extend(framed(b"after the check"));
        assert_eq!(read_all(&stream_b, want.len()).await, want);

        let (stream_a, _) = a.accept().await.unwrap();
        assert_eq!(stream_a.local_addr().unwrap(), local_a);
        assert_eq!(read_all(&stream_a, check_a.len()).await, check_a);

        // Replies reach the publisher whole.
        stream_a.write_all(&framed(b"reply")).await.unwrap();
        let mut buf = vec![0u8; 7];
        client_a.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, framed(b"reply"));

        // Naming no connection, or not a check: closed, counted.
        for first in [framed(&route::binding("nobody:z")), framed(&[0x80; 40])] {
            let mut stray = TcpStream::connect(port).await.unwrap();
            stray.write_all(&first).await.unwrap();
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), stray.read(&mut buf))
                .await
                .expect("closed in time")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        assert_eq!(mux.counters().routed.load(Ordering::Relaxed), 2);
        assert_eq!(mux.counters().refused.load(Ordering::Relaxed), 2);

        // A dropped connection is forgotten: its ufrag names no one any more.
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut late = TcpStream::connect(port).await.unwrap();
        late.write_all(&check_a).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), late.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(mux.counters().refused.load(Ordering::Relaxed), 3);
    }

    /// The first message is handed on in pieces when the reader's buffer is small.
    #[tokio::test]
    async fn the_first_message_is_read_again_in_pieces() {
        let mux = TcpMux::bind("127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
        let l = mux
            .listener_for(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), b"u")
            .unwrap();
        let check = framed(&route::binding("u:v"));
        let mut client = TcpStream::connect(mux.local_addr()).await.unwrap();
        client.write_all(&check).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        while got.len() < check.len() {
            let mut buf = [0u8; 7];
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, check);
    }
}
