//! The feedback interceptors of a connection on the shared UDP port (`--udp-port`).
//!
//! There the port makes a connection's NACKs, receiver reports and TWCC feedback from every
//! RTP packet that arrives over UDP ([`super::udp_mux::media_path`]), including the ones it
//! decrypts itself, which webrtc-rs never sees. So in webrtc-rs's chain the same interceptors
//! sit behind this gate: once the port has had a datagram of the connection (its flag,
//! [`PortFeeds`]), RTP passes them by (the port has counted it); a connection the port never
//! hears from (one on the shared TCP port) has its RTP go through them as before. Every
//! stream so gets exactly one of each report, whichever way its packets come.
//!
//! The gate also tells the port what only webrtc-rs knows: which streams it binds (SSRC,
//! RTX SSRC, clock rate, negotiated feedback and header extensions) and the Sender Reports it
//! decrypts (the receiver reports' round-trip fields need them).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rtc::interceptor::{AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::udp_mux::UdpMux;

/// Set by the shared port once it has had a datagram of the connection: from then on it makes
/// the connection's feedback. One flag per connection, written once by the port's task and
/// read per packet here.
pub(crate) type PortFeeds = Arc<AtomicBool>;

/// See the module docs.
pub(crate) struct FeedbackGate {
    inner: Box<dyn Interceptor>,
    mux: UdpMux,
    ufrag: String,
    port_feeds: PortFeeds,
    read_queue: VecDeque<TaggedPacket>,
}

impl FeedbackGate {
    /// A gate in front of `inner` (the feedback chain) for the connection known to `mux` by
    /// `ufrag`, whose port sets `port_feeds`.
    pub(crate) fn new(
        inner: Box<dyn Interceptor>,
        mux: UdpMux,
        ufrag: String,
        port_feeds: PortFeeds,
    ) -> FeedbackGate {
        FeedbackGate {
            inner,
            mux,
            ufrag,
            port_feeds,
            read_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackGate {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(_) if self.port_feeds.load(Ordering::Relaxed) => {
                self.read_queue.push_back(msg)
            }
            Packet::Rtcp(packets) => {
                // The inner chain would end the packet (RTCP stops at a chain's end unless
                // marked for the application, which the Sender-Report tap after us does), so
                // whichever makes this connection's feedback gets copies of the Sender
                // Reports, all it reads; the packet itself goes on.
                let reports: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                    .map(|sr| Box::new(sr.clone()) as Box<dyn rtc::rtcp::Packet>)
                    .collect();
                if !reports.is_empty() {
                    if self.port_feeds.load(Ordering::Relaxed) {
                        self.mux.sender_reports(&self.ufrag, msg.now, reports);
                    } else {
                        let copy = TaggedPacket {
                            now: msg.now,
                            transport: msg.transport,
                            message: AttributedPacket::new(Packet::Rtcp(reports)),
                        };
                        self.inner.handle_read(copy)?;
                        while self.inner.poll_read().is_some() {}
                    }
                }
                self.read_queue.push_back(msg);
            }
            _ => {
                self.inner.handle_read(msg)?;
                while let Some(m) = self.inner.poll_read() {
                    self.read_queue.push_back(m);
                }
            }
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner.handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.inner.poll_write()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.inner.handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close()
    }
}

impl Interceptor for FeedbackGate {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_local_stream(info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_local_stream(info);
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_remote_stream(info);
        self.mux.bind_stream(&self.ufrag, info, true);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_remote_stream(info);
        self.mux.bind_stream(&self.ufrag, info, false);
    }
}
