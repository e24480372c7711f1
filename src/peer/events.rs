//! What a session reports, read in the consumer's own task.
//!
//! The session task sends its control events (answer, candidates, state, tracks, `Closed`) over
//! a bounded channel, but not the media: each remote track's RTP and RTCP are read by
//! [`SessionEvents`] straight from webrtc-rs's per-track queue, inside the task that calls
//! [`SessionEvents::recv`]. A packet thus goes from the connection's driver to the recorder with
//! one queue and one task wake, not two of each (a reader task per track used to forward every
//! packet into the event channel: ~8 % of the recorder's CPU at 32 publishers, issue 11).
//!
//! While its consumer is busy elsewhere (a file write on a slow disk), [`SessionEvents::hold`]
//! keeps reading into a bounded backlog; media beyond it are dropped and counted, as the
//! event channel's capacity did before, so the driver's own queue (which drops with a log line
//! per packet) never overflows.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rtc::rtcp::sender_report::SenderReport;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::session::{CloseReason, MediaEvent, SessionEvent, SessionStats};
use crate::media::{RtpPacket, TrackKind};

/// What the session task sends its consumer: an event, or a track whose media the consumer
/// reads itself.
pub(crate) enum Wire {
    /// A control event, delivered as is.
    Event(SessionEvent),
    /// A remote track started (after its [`SessionEvent::TrackStarted`]).
    Track(TrackFeed),
}

/// A remote track handed to the consumer.
pub(crate) struct TrackFeed {
    /// The track.
    pub track: Arc<dyn TrackRemote>,
    /// Audio or video.
    pub kind: TrackKind,
    /// Whether its RTP is recorded (its RTCP is read either way: a compound packet may carry
    /// the other track's Sender Report).
    pub forward: bool,
}

type NextEvent = Pin<Box<dyn Future<Output = Option<TrackRemoteEvent>> + Send>>;

/// One track being read: its next event's future lives here between polls, so reading is
/// cancel-safe inside `select!`.
struct Reading {
    feed: TrackFeed,
    next: NextEvent,
}

impl Reading {
    fn new(feed: TrackFeed) -> Self {
        let next = next_event(feed.track.clone());
        Self { feed, next }
    }
}

fn next_event(track: Arc<dyn TrackRemote>) -> NextEvent {
    Box::pin(async move { track.poll().await })
}

/// Longest wait, once the session has closed its connection, for its tracks' last packets
/// before [`SessionEvent::Closed`] is handed on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Media counters, kept where the media are read.
#[derive(Debug, Default)]
struct Counters {
    video_packets: u64,
    audio_packets: u64,
    sender_reports: u64,
    media_dropped: u64,
}

/// The receiving end of a session: control events and media, in one `recv`. Dropping it
/// leaves the session's events unread (the session ends when its handle goes).
pub struct SessionEvents {
    control: mpsc::Receiver<Wire>,
    control_done: bool,
    /// `Closed` came: handed on once the tracks have ended, or at the deadline.
    closing: Option<(CloseReason, SessionStats, Pin<Box<tokio::time::Sleep>>)>,
    tracks: Vec<Reading>,
    /// Round-robin start among `tracks`.
    turn: usize,
    /// Events read during a hold, not yet received.
    ready: VecDeque<SessionEvent>,
    /// The further Sender Reports of an RTCP packet whose first one was returned.
    reports: VecDeque<SessionEvent>,
    /// Media events in `ready`.
    ready_media: usize,
    /// Most media events kept in `ready` (`SessionConfig::event_capacity`, 1024 by default:
    /// ~4 s of a 2 Mb/s stream's packets).
    backlog: usize,
    counters: Counters,
}

impl SessionEvents {
    pub(crate) fn new(control: mpsc::Receiver<Wire>, backlog: usize) -> Self {
        Self {
            control,
            control_done: false,
            closing: None,
            tracks: Vec::new(),
            turn: 0,
            ready: VecDeque::new(),
            reports: VecDeque::new(),
            ready_media: 0,
            backlog,
            counters: Counters::default(),
        }
    }

    /// Media events dropped so far because the consumer was held up past its backlog (live,
    /// for the status page; the final count comes with [`SessionEvent::Closed`]).
    pub fn media_dropped(&self) -> u64 {
        self.counters.media_dropped
    }

    /// The next event; `None` once the session has ended and everything was read (the last
    /// event is always [`SessionEvent::Closed`]). Cancel-safe.
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<SessionEvent> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_recv(&mut cx) {
            Poll::Ready(ev) => ev,
            Poll::Pending => None,
        }
    }

    /// Runs `work` (the consumer's own wait, e.g. a file write) while reading on: what arrives
    /// meanwhile is kept for [`Self::recv`], media beyond the backlog dropped and counted.
    pub async fn hold<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            while let Poll::Ready(Some(ev)) = self.poll_fresh(cx) {
                if matches!(ev, SessionEvent::Media(_)) {
                    if self.ready_media >= self.backlog {
                        self.counters.media_dropped += 1;
                        continue;
                    }
                    self.ready_media += 1;
                }
                self.ready.push_back(ev);
            }
            Poll::Pending
        })
        .await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<SessionEvent>> {
        if let Some(ev) = self.ready.pop_front() {
            if matches!(ev, SessionEvent::Media(_)) {
                self.ready_media -= 1;
            }
            return Poll::Ready(Some(ev));
        }
        self.poll_fresh(cx)
    }

    /// The next event not yet read: control first (rare), then the tracks in turn.
    fn poll_fresh(&mut self, cx: &mut Context<'_>) -> Poll<Option<SessionEvent>> {
        if let Some(ev) = self.reports.pop_front() {
            return Poll::Ready(Some(ev));
        }
        while !self.control_done && self.closing.is_none() {
            match self.control.poll_recv(cx) {
                Poll::Ready(Some(Wire::Event(SessionEvent::Closed { reason, stats }))) => {
                    let deadline = Box::pin(tokio::time::sleep(DRAIN_TIMEOUT));
                    self.closing = Some((reason, stats, deadline));
                }
                Poll::Ready(Some(Wire::Event(ev))) => return Poll::Ready(Some(ev)),
                Poll::Ready(Some(Wire::Track(feed))) => self.tracks.push(Reading::new(feed)),
                Poll::Ready(None) => self.control_done = true,
                Poll::Pending => break,
            }
        }
        let drained = match &mut self.closing {
            Some((_, _, deadline)) => {
                self.tracks.is_empty() || deadline.as_mut().poll(cx).is_ready()
            }
            None => false,
        };
        if drained && let Some((reason, mut stats, _)) = self.closing.take() {
            // The connection is closed and its tracks have said all (or were given their
            // time): nothing follows `Closed`.
            self.tracks.clear();
            self.control_done = true;
            stats.video_packets = self.counters.video_packets;
            stats.audio_packets = self.counters.audio_packets;
            stats.sender_reports = self.counters.sender_reports;
            stats.media_dropped = self.counters.media_dropped;
            return Poll::Ready(Some(SessionEvent::Closed { reason, stats }));
        }
        if self.control_done && self.closing.is_none() {
            return Poll::Ready(None);
        }
        let n = self.tracks.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            loop {
                let r = &mut self.tracks[i];
                let Poll::Ready(ev) = r.next.as_mut().poll(cx) else {
                    break;
                };
                let Some(ev) = ev else {
                    self.tracks.swap_remove(i);
                    // Its slot now holds another track (or none): poll again next time.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                r.next = next_event(r.feed.track.clone());
                let kind = r.feed.kind;
                let forward = r.feed.forward;
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        if !forward || p.payload.is_empty() {
                            continue;
                        }
                        match kind {
                            TrackKind::Video => self.counters.video_packets += 1,
                            TrackKind::Audio => self.counters.audio_packets += 1,
                        }
                        self.turn = i + 1;
                        return Poll::Ready(Some(SessionEvent::Media(MediaEvent::Rtp {
                            kind,
                            packet: RtpPacket {
                                sequence: p.header.sequence_number,
                                timestamp: p.header.timestamp,
                                marker: p.header.marker,
                                ssrc: p.header.ssrc,
                                payload_type: p.header.payload_type,
                                payload: p.payload,
                            },
                            arrival: Instant::now(),
                        })));
                    }
                    TrackRemoteEvent::OnRtcpPacket(packets) => {
                        let arrival = Instant::now();
                        for p in packets {
                            if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                self.counters.sender_reports += 1;
                                self.reports.push_back(SessionEvent::Media(
                                    MediaEvent::SenderReport {
                                        ssrc: sr.ssrc,
                                        ntp: sr.ntp_time,
                                        rtp_timestamp: sr.rtp_time,
                                        arrival,
                                    },
                                ));
                            }
                        }
                        if let Some(ev) = self.reports.pop_front() {
                            self.turn = i + 1;
                            return Poll::Ready(Some(ev));
                        }
                    }
                    TrackRemoteEvent::OnEnded => {
                        self.tracks.swap_remove(i);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    _ => {}
                }
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ConnectionState;

    #[tokio::test]
    async fn what_comes_during_a_hold_is_received_after_it_in_order() {
        let (tx, rx) = mpsc::channel(16);
        let mut events = SessionEvents::new(rx, 1024);
        let sender = tx.clone();
        let work = async move {
            for state in [ConnectionState::Connecting, ConnectionState::Connected] {
                sender
                    .send(Wire::Event(SessionEvent::State(state)))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            7
        };
        assert_eq!(events.hold(work).await, 7);
        tx.send(Wire::Event(SessionEvent::Renegotiated))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(format!("{:?}", events.recv().await.unwrap()));
        }
        assert_eq!(
            got,
            ["State(Connecting)", "State(Connected)", "Renegotiated"],
            "held events first, in order, then the fresh one"
        );
        assert!(events.try_recv().is_none(), "nothing more is ready");
    }

    #[tokio::test]
    async fn closed_is_last_and_carries_the_media_counters() {
        let (tx, rx) = mpsc::channel(16);
        let mut events = SessionEvents::new(rx, 1024);
        tx.send(Wire::Event(SessionEvent::Closed {
            reason: CloseReason::Bye,
            stats: SessionStats {
                plis_sent: 3,
                ..SessionStats::default()
            },
        }))
        .await
        .unwrap();
        drop(tx);
        match events.recv().await {
            Some(SessionEvent::Closed { reason, stats }) => {
                assert_eq!(reason, CloseReason::Bye);
                assert_eq!(stats.plis_sent, 3, "the session's own counters are kept");
                assert_eq!(stats.video_packets, 0);
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(events.recv().await.is_none(), "nothing follows Closed");
    }
}
