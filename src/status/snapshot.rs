//! What the status surfaces (the `/metrics`, `/status.json` and `/` pages of `--http`, and the
//! live table on a terminal) show: one plain value, made by the orchestrator about once a second
//! and handed out through a `watch` channel, so readers never touch a recorder's state.

use serde::Serialize;

/// The whole recorder at one instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When the snapshot was taken (Unix ms).
    pub taken_unix_ms: u64,
    /// When the process started recording (Unix ms).
    pub started_unix_ms: u64,
    /// The room (or `--record` stream) recorded, as the user gave it.
    pub target: String,
    /// Connected to the handshake server.
    pub signaling_connected: bool,
    /// The output folder.
    pub output_dir: String,
    /// Free bytes on the output folder's file system (`None` when it cannot be read).
    pub disk_free_bytes: Option<u64>,
    /// `--min-free-mb` in bytes: below it no new recording starts.
    pub min_free_bytes: u64,
    /// The process itself.
    pub process: ProcessStats,
    /// One entry per publisher being recorded (or connecting), sorted by stream ID.
    pub streams: Vec<StreamStatus>,
    /// Recordings finished since start.
    pub finished: u64,
    /// Publishers not recorded because the disk was below `--min-free-mb`.
    pub refused_low_disk: u64,
    /// `--upload`: what is still to go to the bucket, and the last error.
    pub upload: Option<crate::upload::UploadStatus>,
    /// `--udp-port`: what the one media port received and had to drop.
    pub udp_port: Option<UdpPortStatus>,
    /// `--tcp-port`: the streams the one ICE-TCP port accepted and refused.
    pub tcp_port: Option<TcpPortStatus>,
}

/// The shared media port's counters (`--udp-port`): datagrams it could not hand to any
/// connection are otherwise invisible, and a firewall or NAT that sends the wrong traffic
/// there shows up here first.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UdpPortStatus {
    /// The local port.
    pub port: u16,
    /// Datagrams received on it.
    pub received: u64,
    /// Dropped: from no known publisher (and not a connectivity check naming one of ours), or
    /// for a connection that has just closed.
    pub unknown: u64,
    /// Dropped: the connection they belong to was not keeping up (its queue was full).
    pub queue_full: u64,
    /// Datagrams of ours not sent: the port's send buffer was full.
    pub send_dropped: u64,
    /// Dropped by the kernel before we read them: the port's receive buffer was full.
    pub kernel_dropped: u64,
    /// RTP packets of recorded tracks decrypted where the port is read (its media path).
    pub decrypted_here: u64,
    /// Packets of recorded tracks that did not decrypt there (no keys yet, or they failed
    /// authentication): handed to webrtc-rs instead, which tries them.
    pub not_decrypted_here: u64,
    /// RTCP feedback (NACKs, receiver reports, TWCC) the port made that a session had no
    /// room to queue.
    pub feedback_dropped: u64,
}

/// `--tcp-port`: what became of the streams publishers opened to the shared TCP port.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TcpPortStatus {
    /// The local port.
    pub port: u16,
    /// Streams accepted.
    pub accepted: u64,
    /// Handed to the connection their first check named.
    pub routed: u64,
    /// Closed: no check in time, naming no connection, or too many waiting.
    pub refused: u64,
    /// Frames of ours dropped: a stream's send queue was full.
    pub frames_dropped: u64,
}

/// CPU and memory of the process (from `/proc/self`; zero where unavailable).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessStats {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// One recording, live.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    /// Stream ID (desalted).
    pub stream_id: String,
    /// `connecting`, `recording`, `waiting-for-disk` or `stopping`.
    pub state: String,
    /// Video codec name (`H.264`, `VP8`, ...), `None` for audio only or not yet known.
    pub codec: Option<String>,
    /// The file being written, if any.
    pub path: Option<String>,
    /// Segment number of that file (0 without `--segment-*`).
    pub segment: u64,
    /// Seconds since this recording started (wall clock).
    pub age_seconds: f64,
    /// Media seconds written to the current file.
    pub duration_seconds: f64,
    /// Bytes written by this recording (all its files).
    pub bytes_total: u64,
    /// Bytes of the current file.
    pub file_bytes: u64,
    /// Incoming media bit rate, bits per second, over the last few seconds.
    pub bitrate_bps: f64,
    /// Video frames written.
    pub frames_written: u64,
    /// Video frames dropped (loss, refused).
    pub frames_dropped: u64,
    /// Opus packets written.
    pub audio_written: u64,
    /// Opus packets dropped.
    pub audio_dropped: u64,
    /// RTP packets lost (never arrived, after repair).
    pub packets_lost: u64,
    /// Keyframe requests sent to the publisher.
    pub keyframe_requests: u64,
    /// The A/V correction the Sender Reports asked for, ms (`None` until known).
    pub av_correction_ms: Option<f64>,
    /// Sender Reports ignored because they placed the tracks seconds apart (a publisher's
    /// broken clock; the tracks are then placed by arrival).
    pub implausible_reports: u64,
    /// Media events dropped because the recorder fell behind.
    pub media_dropped: u64,
    /// The last disk error of this recording, if any.
    pub disk_error: Option<String>,
}
