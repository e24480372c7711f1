//! The binary's edge: turns parsed flags into library configs, installs logging and signal
//! handling, and reports errors as one line each. `main.rs` only dispatches here.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::{DialectArg, RecordArgs, ServeArgs};
use crate::peer::IceServer;
use crate::record::orchestrator::{self, RunConfig};
use crate::record::stream::RecorderSettings;
use crate::signaling::room::Dialect;
use crate::signaling::server::{ServerConfig, TlsFiles};
use crate::signaling::{Password, SignalingConfig};
use crate::status::terminal::LiveTable;

/// Installs the `tracing` subscriber: `-v`/`-q` pick the level, `RUST_LOG` overrides it. The
/// WebRTC stack's known-benign warnings are kept out of the default output. With `live_table`
/// (recording, stderr a terminal, not `-q`) log lines scroll above a live table of the
/// recordings, which is returned for [`record`] to draw.
pub fn init_logging(verbose: u8, quiet: u8, live_table: bool) -> Option<LiveTable> {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let default = format!(
        "{level},rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc=error,webrtc=error,webrtc_ice=error,object_store=warn,reqwest=warn,hyper_util=warn"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(tty)
        .with_target(false);
    if live_table && tty && quiet == 0 {
        let table = LiveTable::new();
        builder.with_writer(table.clone()).init();
        Some(table)
    } else {
        builder.with_writer(std::io::stderr).init();
        None
    }
}

/// A watch that turns true on the first SIGINT/SIGTERM; a second signal exits the process at
/// once (every file is whole TS packets on disk, so still playable).
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                warn!(
                    "stopping: saying bye and finishing every file (signal again to exit at once)"
                );
                let _ = tx.send(true);
            } else {
                error!("second signal: exiting now; files are playable up to their last frame");
                std::process::exit(130);
            }
        }
    });
    rx
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Builds the run configuration from the recording flags, or says in one line what is wrong.
pub fn run_config(args: &RecordArgs) -> anyhow::Result<RunConfig> {
    let mut sig = SignalingConfig::new(args.server.clone());
    sig.password = Password::parse(args.password.as_deref());
    if let Some(salt) = &args.salt {
        sig.salt = salt.clone();
    }
    sig.dialect = match args.dialect {
        DialectArg::Auto => None,
        DialectArg::Official => Some(Dialect::Official),
        DialectArg::Relay => Some(Dialect::Relay),
    };
    sig.insecure = args.insecure_signaling;
    sig.room = args.room.clone();
    let prefix = if args.record_room {
        let Some(room) = &args.room else {
            bail!("--record-room needs --room ROOM");
        };
        sig.record_room = true;
        sig.streams = args.record_streams.clone();
        args.record.clone().unwrap_or_else(|| room.clone())
    } else {
        let Some(stream) = &args.record else {
            bail!("nothing to record: give --record STREAMID, or --room ROOM --record-room");
        };
        if !args.record_streams.is_empty() {
            bail!("--record-streams filters --record-room; it needs --room and --record-room");
        }
        sig.streams = vec![stream.clone()];
        stream.clone()
    };
    if args.noaudio && args.novideo {
        bail!("--noaudio and --novideo together leave nothing to record");
    }
    let mut rec = RecorderSettings::new(args.output_dir.clone(), prefix);
    rec.stream.audio = !args.noaudio;
    rec.stream.video = !args.novideo;
    rec.session.want_audio = !args.noaudio;
    rec.session.want_video = !args.novideo;
    rec.session.prefer_video_codec = args.codec.preferred();
    rec.stream.container = match args.container {
        crate::cli::ContainerArg::Auto => crate::mux::ContainerChoice::Auto,
        crate::cli::ContainerArg::Mkv => crate::mux::ContainerChoice::Matroska,
    };
    rec.session.ice_connect_timeout = Duration::from_secs(args.ice_timeout.max(1));
    rec.session.keyframe_interval = args.keyframe_interval();
    rec.session.udp_addrs = args.udp_bind.clone();
    rec.session.udp_port = udp_port_spec(args)?;
    rec.session.ice_servers = ice_servers(args)?;
    if args.max_streams == 0 {
        bail!("--max-streams must be at least 1");
    }
    rec.stream.segment = crate::media::segment::SegmentPolicy {
        max_duration_90k: (args.segment_seconds > 0).then(|| args.segment_seconds * 90_000),
        max_bytes: (args.segment_mb > 0).then(|| args.segment_mb * 1_000_000),
    };
    rec.min_free_bytes = args.min_free_mb.saturating_mul(crate::record::disk::MB);
    if args.delete_after == Some(0) {
        bail!("--delete-after must be at least 1 day");
    }
    let target = args
        .room
        .clone()
        .or_else(|| args.record.clone())
        .unwrap_or_default();
    let mut config = RunConfig::new(sig, rec, target);
    config.max_streams = args.max_streams;
    config.http = args.http.clone();
    config.retention =
        crate::record::retention::RetentionPolicy::from_flags(args.delete_after, args.keep_mb);
    if let Some(cmd) = &args.on_file_done {
        let mut hooks = crate::record::hooks::HookConfig::new(cmd.clone());
        hooks.timeout = Duration::from_secs(args.hook_timeout.max(1));
        config.hooks = Some(hooks);
    }
    config.upload = upload_config(args, &config.target)?;
    Ok(config)
}

/// `--udp-port` and `--public-ip`: the shared port's bind address (the `--udp-bind` IP when
/// it names exactly one, else every interface) and the addresses publishers are told.
fn udp_port_spec(args: &RecordArgs) -> anyhow::Result<Option<crate::peer::session::UdpPortSpec>> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let Some(port) = args.udp_port else {
        return Ok(None);
    };
    if port == 0 {
        bail!("--udp-port must name a port (1-65535)");
    }
    if args.tcp_port == Some(0) {
        bail!("--tcp-port must name a port (1-65535)");
    }
    let named: Vec<IpAddr> = args
        .udp_bind
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let bind_ip = match named[..] {
        [ip] => ip,
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let announce_ips = if !args.public_ip.is_empty() {
        args.public_ip.clone()
    } else if !bind_ip.is_unspecified() {
        vec![bind_ip]
    } else {
        vec![primary_ip().ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell this machine's address for --udp-port: give --public-ip ADDR"
            )
        })?]
    };
    Ok(Some(crate::peer::session::UdpPortSpec {
        bind: SocketAddr::new(bind_ip, port),
        announce: announce_ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        tcp_port: args.tcp_port,
    }))
}

/// The address this machine sends from to the internet (the route's source address; no
/// packet is sent), or `None` offline.
fn primary_ip() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// `--upload` and its companions, or `None` without `--upload`.
fn upload_config(
    args: &RecordArgs,
    room: &str,
) -> anyhow::Result<Option<crate::upload::UploadConfig>> {
    let Some(url) = &args.upload else {
        if args.upload_delete_local {
            bail!("--upload-delete-local needs --upload s3://bucket/prefix");
        }
        return Ok(None);
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let vars = crate::upload::PrefixVars {
        host,
        room: room.to_owned(),
    };
    let target = crate::upload::UploadTarget::parse(url, &vars)?;
    if args.upload_concurrency == 0 || args.upload_concurrency > 16 {
        bail!("--upload-concurrency must be 1 to 16");
    }
    Ok(Some(crate::upload::UploadConfig {
        store: crate::upload::StoreConfig {
            target,
            endpoint: args.upload_endpoint.clone(),
            region: args.upload_region.clone(),
            credentials: None,
        },
        dir: args.output_dir.clone(),
        delete_local: args.upload_delete_local,
        concurrency: args.upload_concurrency,
    }))
}

fn ice_servers(args: &RecordArgs) -> anyhow::Result<Vec<IceServer>> {
    let mut servers = Vec::new();
    if !args.stun.eq_ignore_ascii_case("none") {
        if !args.stun.starts_with("stun:") {
            bail!(
                "--stun must look like stun:host:port (or be `none`), not {:?}",
                args.stun
            );
        }
        servers.push(IceServer {
            urls: vec![args.stun.clone()],
            username: String::new(),
            credential: String::new(),
        });
    }
    if let Some(turn) = &args.turn {
        if !turn.starts_with("turn:") {
            bail!("--turn must look like turn:host:port (TURN over UDP), not {turn:?}");
        }
        servers.push(IceServer {
            urls: vec![turn.clone()],
            username: args.turn_user.clone().unwrap_or_default(),
            credential: args.turn_pass.clone().unwrap_or_default(),
        });
    }
    Ok(servers)
}

/// Resolves each STUN/TURN host once at start. One that does not resolve (a machine without
/// DNS or internet, the common case for a LAN recorder) is dropped with one warning, instead
/// of webrtc-rs logging an error for every publisher; recording then offers host candidates,
/// which is all a LAN needs.
async fn drop_unresolvable_ice_servers(servers: &mut Vec<IceServer>) {
    let mut kept = Vec::with_capacity(servers.len());
    for server in servers.drain(..) {
        let Some(hostport) = server
            .urls
            .first()
            .and_then(|u| u.split_once(':'))
            .map(|(_, rest)| rest.split('?').next().unwrap_or(rest).to_owned())
        else {
            kept.push(server);
            continue;
        };
        let lookup = tokio::net::lookup_host(hostport.clone());
        let resolved = match tokio::time::timeout(Duration::from_secs(3), lookup).await {
            Ok(Ok(mut addrs)) => addrs.next().is_some(),
            _ => false,
        };
        if resolved {
            kept.push(server);
        } else {
            warn!(
                "ICE server {hostport} cannot be resolved (offline?): not used; publishers \
                 outside this network may not reach the recorder"
            );
        }
    }
    *servers = kept;
}

/// `ninjarec` (record): runs until a signal or `--duration`, then prints one summary line per
/// recording.
pub async fn record(args: RecordArgs, table: Option<LiveTable>) -> anyhow::Result<()> {
    let mut config = run_config(&args)?;
    if let Some(table) = table {
        let (tx, rx) = watch::channel(std::sync::Arc::default());
        config.snapshots = Some(tx);
        config.status_lines = false;
        tokio::spawn(table.run(rx));
    }
    drop_unresolvable_ice_servers(&mut config.recorder.session.ice_servers).await;
    let mut shutdown = shutdown_on_signals();
    if args.duration > 0 {
        let (tx, rx) = watch::channel(false);
        let limit = Duration::from_secs(args.duration);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(limit) => info!("--duration reached; stopping"),
                _ = shutdown.wait_for(|s| *s) => {}
            }
            let _ = tx.send(true);
        });
        shutdown = rx;
    }
    info!(
        server = %config.signaling.server,
        output = %config.recorder.output_dir.display(),
        "ninjarec {} starting", env!("CARGO_PKG_VERSION")
    );
    let summaries = orchestrator::run(config, shutdown).await?;
    if summaries.is_empty() {
        info!("no recordings were made");
    }
    for s in &summaries {
        println!("{s}");
    }
    Ok(())
}

/// `ninjarec offsets`: each file's offset from a room timeline, for lining participants up.
pub fn offsets(args: &crate::cli::OffsetsArgs) -> anyhow::Result<()> {
    use crate::record::{manifest, offsets};
    let text = std::fs::read_to_string(&args.timeline)
        .with_context(|| format!("cannot read {}", args.timeline.display()))?;
    let lines = manifest::parse(&text)?;
    let (files, source) = offsets::offsets(&lines);
    if files.is_empty() {
        bail!(
            "{} lists no closed file with a start time",
            args.timeline.display()
        );
    }
    if args.json {
        for f in &files {
            println!("{}", serde_json::to_string(f)?);
        }
    } else {
        print!("{}", offsets::render(&files, source));
    }
    Ok(())
}

/// `ninjarec serve`: the built-in handshake server until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(args.listen);
    config.max_clients_per_ip = args.max_clients_per_ip.max(1);
    config.max_room_members = args.max_room_members.max(2);
    config.official_only = args.official_only;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsFiles { cert, key });
    }
    let tls = config.tls.is_some();
    let shutdown = shutdown_on_signals();
    let server = crate::signaling::server::Server::bind(config, shutdown)
        .await
        .context("cannot start the handshake server")?;
    info!(
        "handshake server listening on {}://{}",
        if tls { "wss" } else { "ws" },
        server.local_addr()
    );
    server.wait().await.context("handshake server failed")?;
    info!("handshake server stopped");
    Ok(())
}
