//! `ninjarec selftest`: the whole product on loopback, no internet, no ffmpeg.
//!
//! What a user runs first on a new Raspberry Pi, and what CI runs on each static binary: the
//! built-in handshake server on 127.0.0.1, two built-in test publishers (one behaving like
//! Raspberry Ninja — media in the first offer — and one like the VDO.Ninja web app — data
//! channel first, media by renegotiation) in one room with the default password, and the real
//! recorder recording that room. Each file is then verified without a decoder
//! ([`crate::testkit::verify`]): a conformant transport stream whose every frame and audio packet
//! is bit-exact with what was sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use tracing::info;

use crate::cli::SelftestArgs;
use crate::peer::publisher::PublisherMode;
use crate::record::orchestrator::{self, RunConfig};
use crate::record::stream::RecorderSettings;
use crate::signaling::server::{Server, ServerConfig};
use crate::signaling::{Password, SignalingConfig};
use crate::testkit::clip::Clip;
use crate::testkit::verify::verify_file;
use crate::testsrc::{self, TestSourceConfig};

/// Room the self-test publishes and records in.
const ROOM: &str = "selftest";

/// Runs the self-test and prints `PASS` or `FAIL: reason`; the error carries the reason too,
/// so the process exits non-zero on failure.
pub async fn run(args: SelftestArgs) -> anyhow::Result<()> {
    match run_inner(&args).await {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("PASS");
            Ok(())
        }
        Err(e) => {
            println!("FAIL: {e:#}");
            Err(e.context("selftest failed"))
        }
    }
}

async fn run_inner(args: &SelftestArgs) -> anyhow::Result<Vec<String>> {
    let seconds = args.seconds.clamp(2, 600);
    let (dir, temporary) = match &args.keep {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("ninjarec-selftest-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse()?), stop_rx.clone())
        .await
        .context("cannot start the built-in handshake server on 127.0.0.1")?;
    let url = format!("ws://{}", server.local_addr());
    info!("selftest: handshake server at {url}");

    let clip = Arc::new(Clip::builtin());
    let mut sources = Vec::new();
    for (stream, mode) in [
        ("rpi", PublisherMode::MediaInFirstOffer),
        ("webapp", PublisherMode::DataChannelFirst),
    ] {
        let mut cfg = TestSourceConfig::new(url.clone(), stream);
        cfg.room = Some(ROOM.into());
        cfg.mode = mode;
        cfg.clip = clip.clone();
        sources
            .push(testsrc::spawn(cfg, stop_rx.clone()).context("cannot start a test publisher")?);
    }

    let mut sig = SignalingConfig::new(url.clone());
    sig.room = Some(ROOM.into());
    sig.record_room = true;
    sig.password = Password::Default;
    let mut rec = RecorderSettings::new(dir.clone(), ROOM.into());
    rec.session.udp_addrs = vec!["127.0.0.1:0".into()];
    rec.session.ice_servers = Vec::new();
    rec.session.ice_connect_timeout = Duration::from_secs(10);
    let mut config = RunConfig::new(sig, rec, ROOM.into());
    config.max_streams = 8;
    let (rec_stop_tx, rec_stop_rx) = watch::channel(false);
    let recorder = tokio::spawn(orchestrator::run(config, rec_stop_rx));
    info!("selftest: recording for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let _ = rec_stop_tx.send(true);
    let summaries = recorder
        .await
        .context("recorder task failed")?
        .context("recorder could not run")?;
    let _ = stop_tx.send(true);
    for s in sources {
        let _ = s.join().await;
    }
    let _ = server.wait().await;

    let mut lines = Vec::new();
    for name in ["rpi", "webapp"] {
        let Some(summary) = summaries.iter().find(|s| s.stream_id == name) else {
            bail!("stream {name:?} was not recorded (no offer reached the recorder)");
        };
        let Some(path) = &summary.path else {
            bail!("stream {name:?} produced no file ({summary})");
        };
        let v = verify_file(path, &clip, false)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // The first keyframe may take a PLI round trip; everything after it must be there.
        let min_frames = ((seconds as f64 - 2.0) * 20.0).max(10.0) as usize;
        if v.frames < min_frames {
            bail!(
                "{name}: only {} video frames in {seconds} s (expected ≥ {min_frames})",
                v.frames
            );
        }
        let min_audio = ((seconds as f64 - 2.0) * 35.0).max(10.0) as usize;
        if v.audio_packets < min_audio {
            bail!(
                "{name}: only {} audio packets in {seconds} s (expected ≥ {min_audio})",
                v.audio_packets
            );
        }
        // Audio may start before video: the file begins with the audio held while the first
        // keyframe was awaited (at most 2.5 s). Audio starting after video lost its start.
        if let Some(off) = v.av_start_offset_ms
            && !(-2600.0..=100.0).contains(&off)
        {
            bail!(
                "{name}: audio starts {off:+.0} ms from video (expected from 2.6 s before to                  100 ms after)"
            );
        }
        lines.push(format!(
            "{name}: {} — {} frames ({} keyframes, all bit-exact), {} audio packets, {:.1} s",
            path.display(),
            v.frames,
            v.keyframes,
            v.audio_packets,
            v.video_seconds
        ));
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        lines.push(format!(
            "recordings kept in {}",
            PathBuf::from(&dir).display()
        ));
    }
    Ok(lines)
}
