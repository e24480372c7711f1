//! Command-line interface.
//!
//! Flag names follow Raspberry Ninja's `publish.py` where the meaning is the same (`--room`,
//! `--record`, `--record-room`, `--record-streams`, `--password`, `--salt`, `--server`,
//! `--noaudio`, `--novideo`, `--insecure-signaling`), so a user of that tool can switch without
//! relearning; everything new is named for what it does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// The official VDO.Ninja handshake server.
pub const DEFAULT_SERVER: &str = "wss://wss.vdo.ninja:443";
/// A public STUN server, so publishers behind NAT can reach a recorder behind NAT.
pub const DEFAULT_STUN: &str = "stun:stun.l.google.com:19302";

/// Record VDO.Ninja publishers to MPEG-TS files, one file per publisher, H.264 + Opus in sync.
#[derive(Debug, Parser)]
#[command(
    name = "ninjarec",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; without a subcommand, record.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Recording options (the default action).
    #[command(flatten)]
    pub record: RecordArgs,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Threads that run the connections and recordings (file writes have their own). One is
    /// the cheapest (no thread wakes another for each batch of packets: ~10 % less CPU than
    /// one per core, measured with 4 GStreamer publishers) and carries dozens of streams;
    /// give more on a small board recording many streams, or 0 for one per core.
    #[arg(long, value_name = "N", default_value_t = 1, global = true)]
    pub threads: usize,
}

/// Subcommands besides recording.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a VDO.Ninja handshake server (official and relay dialects on one port), for offline and
    /// intranet use.
    Serve(ServeArgs),
    /// Check this machine end to end on loopback, without internet: built-in server, test
    /// publisher and recorder; prints PASS or FAIL.
    Selftest(SelftestArgs),
    /// Print, from a room timeline (`PREFIX_<unix>.timeline.jsonl`), each file's offset from
    /// the earliest one, as `-itsoffset S -i FILE` for ffmpeg, to line up participants.
    Offsets(OffsetsArgs),
}

/// Options for `ninjarec offsets`.
#[derive(Debug, Args)]
pub struct OffsetsArgs {
    /// The room timeline file.
    pub timeline: PathBuf,
    /// Print JSON (one object per file) instead of ffmpeg arguments.
    #[arg(long)]
    pub json: bool,
}

/// Which signaling dialect a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DialectArg {
    /// Decide from the server's host name (official hosts: wss.vdo.ninja, apibackup.vdo.ninja).
    Auto,
    /// Stateful server: server-assigned UUIDs, room listings.
    Official,
    /// Relay server: every message carries `from`, publishers offer unasked.
    Relay,
}

/// `--codec`: the video codec asked of publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    /// H.264, recorded into MPEG-TS (`.ts`).
    H264,
    /// VP8, recorded into WebM.
    Vp8,
    /// VP9, recorded into WebM.
    Vp9,
    /// AV1, recorded into Matroska (`.mkv`).
    Av1,
    /// Ask for nothing: take what the publisher offers first.
    Any,
}

impl CodecArg {
    /// The codec to put in `preferVideoCodec`, if any.
    pub fn preferred(self) -> Option<crate::media::VideoCodec> {
        use crate::media::VideoCodec;
        match self {
            CodecArg::H264 => Some(VideoCodec::H264),
            CodecArg::Vp8 => Some(VideoCodec::Vp8),
            CodecArg::Vp9 => Some(VideoCodec::Vp9),
            CodecArg::Av1 => Some(VideoCodec::Av1),
            CodecArg::Any => None,
        }
    }
}

/// `--container`: the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainerArg {
    /// `.ts` for H.264 (and audio only), `.webm` for VP8/VP9, `.mkv` for AV1.
    Auto,
    /// Matroska (`.mkv`) for every codec.
    Mkv,
}

/// Options for recording (the default action).
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Stream ID to record; with --record-room, the file name prefix instead.
    #[arg(long, value_name = "STREAMID|PREFIX")]
    pub record: Option<String>,
    /// Room to join.
    #[arg(long)]
    pub room: Option<String>,
    /// Record every publisher in --room, each to its own file.
    #[arg(long)]
    pub record_room: bool,
    /// With --record-room, record only these stream IDs (comma separated).
    #[arg(long, value_delimiter = ',', value_name = "ID,ID")]
    pub record_streams: Vec<String>,
    /// Password for stream-ID hashing and signaling encryption; `false`, `0` or `off` turns both
    /// off. Without the flag the VDO.Ninja default password is used.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub password: Option<String>,
    /// Salt for hashing and encryption (default `vdo.ninja`, as the web app on vdo.ninja).
    #[arg(long)]
    pub salt: Option<String>,
    /// Handshake server URL (`wss://` or `ws://`).
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Server dialect; `auto` decides from the host name.
    #[arg(long, value_enum, default_value_t = DialectArg::Auto)]
    pub dialect: DialectArg,
    /// Accept a self-signed or otherwise invalid TLS certificate from the handshake server.
    #[arg(long)]
    pub insecure_signaling: bool,
    /// Video codec to ask publishers for; whatever they really send is recorded.
    #[arg(long, value_enum, default_value_t = CodecArg::H264)]
    pub codec: CodecArg,
    /// File format: `auto` picks by codec (.ts for H.264, .webm for VP8/VP9, .mkv for AV1).
    #[arg(long, value_enum, default_value_t = ContainerArg::Auto)]
    pub container: ContainerArg,
    /// Do not record audio.
    #[arg(long)]
    pub noaudio: bool,
    /// Do not record video.
    #[arg(long)]
    pub novideo: bool,
    /// Folder for the recordings.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// At most this many recordings at once; more publishers wait until one ends.
    #[arg(long, default_value_t = 64)]
    pub max_streams: usize,
    /// STUN server (`stun:host:port`); `none` for no STUN.
    #[arg(long, default_value = DEFAULT_STUN)]
    pub stun: String,
    /// TURN server over UDP (`turn:host:port`).
    #[arg(long)]
    pub turn: Option<String>,
    /// TURN user name.
    #[arg(long, requires = "turn")]
    pub turn_user: Option<String>,
    /// TURN password.
    #[arg(long, requires = "turn")]
    pub turn_pass: Option<String>,
    /// Ask publishers for a keyframe this often (seconds), so files are seekable; 0 = only when
    /// needed.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub keyframe_interval: u64,
    /// Give up on a publisher whose connection does not come up within this many seconds.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub ice_timeout: u64,
    /// Local UDP address(es) for WebRTC media; `0.0.0.0:0` binds every non-loopback interface,
    /// `127.0.0.1:0` records from publishers on this machine only.
    #[arg(
        long,
        default_value = "0.0.0.0:0",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub udp_bind: Vec<String>,
    /// Take every publisher's media on this one UDP port (open or forward just it in the
    /// firewall) instead of a port per publisher. STUN and TURN are not used then: publishers
    /// must reach this port directly.
    #[arg(long, value_name = "PORT")]
    pub udp_port: Option<u16>,
    /// With `--udp-port`: the address(es) publishers are told to send to, for a recorder
    /// behind 1:1 NAT (a cloud VM's public IP) or a forwarded port; default: this machine's
    /// address (the `--udp-bind` IP when it names one).
    #[arg(long, value_delimiter = ',', value_name = "IP", requires = "udp_port")]
    pub public_ip: Vec<std::net::IpAddr>,
    /// With `--udp-port`: also take ICE over TCP (RFC 6544) on this one TCP port, for
    /// publishers whose network lets no UDP through (told at the same address(es) as the UDP
    /// port; browsers use it only when UDP fails, and refuse ports below 1024 but 443).
    #[arg(long, value_name = "PORT", requires = "udp_port")]
    pub tcp_port: Option<u16>,
    /// Stop by itself after this many seconds (0 = run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub duration: u64,
    /// Cut each recording into files of about this many seconds (at the first keyframe past
    /// it); named `PREFIX_ID_UNIX_SEQ.EXT`. 0 = one file per recording.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub segment_seconds: u64,
    /// Cut each recording into files of about this many megabytes (at the first keyframe
    /// past it). 0 = no size limit.
    #[arg(long, default_value_t = 0, value_name = "MB")]
    pub segment_mb: u64,
    /// Run this shell command after each file (or segment) is closed: `$1` is its path,
    /// `NINJAREC_*` variables describe it (see README).
    #[arg(long, value_name = "CMD")]
    pub on_file_done: Option<String>,
    /// Kill an `--on-file-done` command that runs longer than this.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub hook_timeout: u64,
    /// Serve `/metrics` (Prometheus), `/status.json` and a status page on this address
    /// (e.g. `127.0.0.1:8080`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Do not start a recording while the output folder has less than this many MB free;
    /// after a write error, resume once this much is free again.
    #[arg(long, default_value_t = 500, value_name = "MB")]
    pub min_free_mb: u64,
    /// Delete this recorder's finished files older than this many days.
    #[arg(long, value_name = "DAYS")]
    pub delete_after: Option<u64>,
    /// Delete this recorder's oldest finished files while they total more than this many MB.
    #[arg(long, value_name = "MB")]
    pub keep_mb: Option<u64>,
    /// Upload every finished file (and segment) and the timeline to S3-compatible storage;
    /// `{host}` and `{room}` in the prefix are replaced. Credentials: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY (and the other usual AWS variables).
    #[arg(long, value_name = "s3://BUCKET/PREFIX", env = "NINJAREC_UPLOAD")]
    pub upload: Option<String>,
    /// S3 endpoint of a self-hosted store (MinIO, Garage, Ceph...), e.g. `http://10.0.0.5:9000`;
    /// requests are path-style. AWS_ENDPOINT_URL is used when this is not given.
    #[arg(long, value_name = "URL", requires = "upload")]
    pub upload_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION", requires = "upload")]
    pub upload_region: Option<String>,
    /// Delete a file locally once its upload is confirmed (size and checksum).
    #[arg(long)]
    pub upload_delete_local: bool,
    /// Uploads at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub upload_concurrency: usize,
}

impl RecordArgs {
    /// `--keyframe-interval` as an optional duration.
    pub fn keyframe_interval(&self) -> Option<Duration> {
        (self.keyframe_interval > 0).then(|| Duration::from_secs(self.keyframe_interval))
    }
}

/// Options for `ninjarec serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM); with --tls-key the server speaks wss://.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most concurrent connections from one IP address (many publishers behind one NAT, or a
    /// load test on loopback, need more than the default).
    #[arg(long, default_value_t = 64)]
    pub max_clients_per_ip: usize,
    /// Most members (publishers and viewers) in one room.
    #[arg(long, default_value_t = 80)]
    pub max_room_members: usize,
    /// Speak only the official dialect, like wss.vdo.ninja (a `from` field does not make a
    /// client a relay client); for testing clients against an official server.
    #[arg(long)]
    pub official_only: bool,
}

/// Options for `ninjarec selftest`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// Seconds to record.
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Keep the recording in this folder instead of a temporary one.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn raspberry_ninja_style_invocations_parse() {
        let cli = Cli::parse_from([
            "ninjarec",
            "--room",
            "r",
            "--record",
            "p",
            "--record-room",
            "--record-streams",
            "a,b",
            "--password",
            "false",
        ]);
        assert!(cli.command.is_none());
        assert_eq!(cli.record.record_streams, ["a", "b"]);
        assert_eq!(cli.record.password.as_deref(), Some("false"));
        let cli = Cli::parse_from(["ninjarec", "--record", "s", "--password"]);
        assert_eq!(cli.record.password.as_deref(), Some(""));
        let cli = Cli::parse_from(["ninjarec", "--record", "s", "--codec", "vp9"]);
        assert_eq!(
            cli.record.codec.preferred(),
            Some(crate::media::VideoCodec::Vp9)
        );
        assert_eq!(cli.record.container, ContainerArg::Auto);
        let cli = Cli::parse_from([
            "ninjarec",
            "--record",
            "s",
            "--codec",
            "any",
            "--container",
            "mkv",
        ]);
        assert_eq!(cli.record.codec.preferred(), None);
        assert_eq!(cli.record.container, ContainerArg::Mkv);
        let cli = Cli::parse_from(["ninjarec", "--record", "s"]);
        assert_eq!(
            cli.record.codec,
            CodecArg::H264,
            "H.264 (.ts) stays the default"
        );
        let cli = Cli::parse_from(["ninjarec", "serve", "--listen", "127.0.0.1:9000"]);
        assert!(matches!(cli.command, Some(Command::Serve(_))));
    }
}
