//! Publishes the built-in clip as one or more VDO.Ninja streams, like the web app or Raspberry
//! Ninja would, so the recorder can be exercised (and load-tested) without a browser:
//!
//! ```text
//! cargo run --example testsrc -- --server ws://127.0.0.1:8443 --room R --streams a,b,c \
//!     [--password false] [--mode dc-first] [--duration 60] [--clip big.ts]
//! ```
//!
//! Runs until Ctrl-C (or `--duration`), then closes every viewer connection with a bye and
//! prints one summary line per stream. The load benchmark starts it as a separate process so
//! publishers and recorder do not share a runtime.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ninjarec::peer::IceServer;
use ninjarec::peer::publisher::PublisherMode;
use ninjarec::signaling::{Dialect, Password};
use ninjarec::testsrc::{TestSourceConfig, run_many};
use tokio::sync::watch;

/// Which publisher to imitate.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Raspberry Ninja: media in the first offer.
    MediaFirst,
    /// The web app: data channel first, media by renegotiation over it.
    DcFirst,
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Publish the built-in test clip to a VDO.Ninja handshake server")]
struct Args {
    /// Handshake server (ws:// or wss://).
    #[arg(long)]
    server: String,
    /// Room to publish in (none = publish outside rooms).
    #[arg(long)]
    room: Option<String>,
    /// Comma-separated stream ids, one source each.
    #[arg(long, value_delimiter = ',', required = true)]
    streams: Vec<String>,
    /// Password; `false`/`0`/`off` disables hashing and encryption. Default: VDO.Ninja's.
    #[arg(long)]
    password: Option<String>,
    /// Salt (default vdo.ninja).
    #[arg(long, default_value = ninjarec::signaling::crypto::DEFAULT_SALT)]
    salt: String,
    /// Publisher behaviour.
    #[arg(long, value_enum, default_value = "media-first")]
    mode: Mode,
    /// Server dialect (`official` or `relay`); default: detected from the URL.
    #[arg(long)]
    dialect: Option<Dialect>,
    /// Accept any TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// Local UDP address for the peers (repeatable). Default 127.0.0.1:0 (same machine);
    /// use 0.0.0.0:0 for viewers elsewhere.
    #[arg(long = "udp", default_value = "127.0.0.1:0")]
    udp: Vec<String>,
    /// Use Google's public STUN server (for viewers behind NAT).
    #[arg(long)]
    stun: bool,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    duration: Option<u64>,
    /// Publish this MPEG-TS clip (H.264 + Opus, as `assets/README.md` describes) instead of the
    /// built-in 320x240 one; the load benchmark uses a 2 Mb/s 720p clip.
    #[arg(long)]
    clip: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mode = match args.mode {
        Mode::MediaFirst => PublisherMode::MediaInFirstOffer,
        Mode::DcFirst => PublisherMode::DataChannelFirst,
    };
    let clip = match &args.clip {
        None => ninjarec::testkit::clip::Clip::builtin(),
        Some(path) => {
            let read = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    ninjarec::testkit::clip::Clip::from_ts(&b).map_err(|e| e.to_string())
                });
            match read {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cannot use clip {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let clip = std::sync::Arc::new(clip);
    let configs: Vec<TestSourceConfig> = args
        .streams
        .iter()
        .map(|s| {
            let mut c = TestSourceConfig::new(args.server.clone(), s.trim());
            c.room = args.room.clone();
            c.password = Password::parse(args.password.as_deref());
            c.salt = args.salt.clone();
            c.dialect = args.dialect;
            c.insecure = args.insecure;
            c.mode = mode;
            c.clip = clip.clone();
            c.udp_addrs = args.udp.clone();
            if args.stun {
                c.ice_servers = vec![IceServer::default_stun()];
            }
            c
        })
        .collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let duration = args.duration.map(Duration::from_secs);
    tokio::spawn(async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        stop_tx.send_replace(true);
    });

    let results = run_many(configs, stop_rx).await;
    let mut failed = false;
    for (stream, r) in args.streams.iter().zip(results) {
        match r {
            Ok(s) => println!(
                "stream={stream} ws_connects={} viewers={} connected={} media_started={} viewer_byes={} failed={} server_errors={:?}",
                s.ws_connects,
                s.signaling.peers_started,
                s.peers_connected,
                s.media_started,
                s.viewer_byes,
                s.peers_failed,
                s.server_errors
            ),
            Err(e) => {
                failed = true;
                eprintln!("stream={stream} error: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
