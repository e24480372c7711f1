//! The physical floor of receiving WebRTC media: one receive syscall plus one SRTP decrypt per
//! packet, and nothing else.
//!
//! `docs/loadbench.md` reports the recorder's CPU per stream; on its own that number says little
//! about how much of it is overhead. This tool measures the least any receiver of the same packets
//! must spend: a process that reads each datagram from a UDP socket with one `recv_from` and
//! SRTP-decrypts it with the same `rtc-srtp` context type and the same crypto provider as the
//! recorder, reading on the recorder's 20 ms grid ([`ReadMode`]). It leaves out, on purpose,
//! everything else the recorder does: no ICE (no STUN checks or consent freshness), no DTLS
//! (the SRTP keys are fixed constants), no RTCP, no jitter buffer, no depacketizing, no muxing,
//! no disk writes, no async runtime.
//!
//! ```text
//! floor recv --listen 127.0.0.1:PORT --seconds S [--profile cm|gcm] [--read grid|arrival]
//! floor send --to 127.0.0.1:PORT --streams N --seconds S [--video-pps 225] [--audio-pps 50]
//!            [--video-size 1150] [--audio-size 110] [--profile cm|gcm]
//! ```
//!
//! `scripts/loadbench.sh` starts `floor recv` first (its clock starts at the first packet), then
//! `floor send` with the same number of streams and packet rate as the recorder run, and reports
//! the recorder's CPU per packet as a ratio to the `cpu_us_per_packet` that `recv` prints. Each
//! subcommand prints one line of JSON to stdout when it finishes.
//!
//! Crypto provider: the recorder's peer connections set none, so `rtc` builds each one with
//! `rtc::crypto::default_provider()`, which with the `crypto-ring` feature (the default of the
//! `webrtc` crate, and the only one enabled in this build) is `RingProvider`. That provider is
//! composite: AES-128-GCM comes from `ring`, while AES-CTR and HMAC-SHA1 (the AES-CM profile) come
//! from RustCrypto's `aes`/`ctr` and `hmac`/`sha1` crates. Both subcommands call the same function,
//! so the floor runs exactly the recorder's AES and HMAC code.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use rtc::crypto::RTCCryptoProvider;
use rtc::shared::marshal::Unmarshal;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;
use serde_json::json;

/// SRTP master key shared by `send` and `recv`. Hard-coded on purpose: this is a benchmark
/// tool on loopback, where the key exchange (DTLS) is exactly what the floor leaves out.
const MASTER_KEY: [u8; 16] = [
    0x0d, 0xcd, 0x21, 0x3e, 0x4c, 0xbc, 0xf2, 0x8f, 0x01, 0x7f, 0x6d, 0x5e, 0x2c, 0x1a, 0x7b, 0x8e,
];

/// SRTP master salt (14 bytes for AES-CM; GCM uses the first 12). Hard-coded like the key.
const MASTER_SALT: [u8; 14] = [
    0x62, 0x77, 0x60, 0x38, 0xc0, 0x6d, 0xc9, 0x41, 0x9f, 0x27, 0xdd, 0x2e, 0x4a, 0x51,
];

/// Replay window of the recorder's receiving SRTP context (rtc's
/// `DEFAULT_SESSION_SRTP_REPLAY_PROTECTION_WINDOW`), so the floor does the same checks.
const REPLAY_WINDOW: usize = 64;

/// How long `recv` blocks in one `recv_from` before checking whether its time is up.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// How long `recv` waits for the first packet before giving up.
const FIRST_PACKET_WAIT: Duration = Duration::from_secs(60);

/// Receive buffer: the largest UDP payload, so no datagram is ever truncated.
const RECV_BUF_LEN: usize = 65_535;

/// Pacing tick of `send`: every tick it sends the packets that have come due for every stream.
const TICK: Duration = Duration::from_millis(5);

/// Largest RTP payload `send` accepts, leaving room for the header and the SRTP tag in a datagram.
const MAX_PAYLOAD: usize = 65_000;

/// RTP payload type of the video SSRCs (the recorder's usual H.264 type).
const VIDEO_PT: u8 = 102;
/// RTP payload type of the audio SSRCs (Opus).
const AUDIO_PT: u8 = 111;
/// RTP clock rate of video.
const VIDEO_CLOCK: u64 = 90_000;
/// RTP clock rate of Opus audio.
const AUDIO_CLOCK: u64 = 48_000;

const USAGE: &str = "\
usage: floor recv --listen ADDR:PORT --seconds S [--profile cm|gcm] [--read grid|arrival]
       floor send --to ADDR:PORT --streams N --seconds S [--video-pps 225] [--audio-pps 50]
                  [--video-size 1150] [--audio-size 110] [--profile cm|gcm]";

/// Options of `floor recv`.
#[derive(Debug)]
struct RecvArgs {
    listen: SocketAddr,
    seconds: f64,
    profile: ProtectionProfile,
    read: ReadMode,
}

/// When `floor recv` reads its socket.
///
/// `grid` (the default): every [`GRID_STEP`], it reads what the socket holds, one `recv_from`
/// per datagram, until it is empty, then sleeps to the next step; the recorder's shared port
/// reads on the same grid. `arrival`: it blocks in `recv_from`, so it sleeps and is woken for
/// nearly every datagram. That wake-up is no part of the floor (one receive and one decrypt
/// per packet), and its cost is the host's: on an AMD EPYC VM, 32 streams (8800 packets/s)
/// cost 3.9-4.1 µs a packet read on arrival, the scheduler's context switch the largest item
/// of the profile, and 2.7 µs read on the grid (`docs/loadbench.md`, sixth session).
/// `arrival` is how the floor read before that session, kept to compare with earlier
/// figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    Grid,
    Arrival,
}

/// The grid step of `--read grid`: the recorder's (`ninjarec::peer::grid::STEP`).
const GRID_STEP: Duration = Duration::from_millis(20);

/// Receive buffer `--read grid` asks for: a step of 32 streams' datagrams is ~200 KiB, more
/// than Linux's default buffer holds. Forced past `net.core.rmem_max` where allowed (root), as
/// the recorder does.
const GRID_RECV_BUFFER: libc::c_int = 4 << 20;

/// Options of `floor send`.
#[derive(Debug)]
struct SendArgs {
    to: SocketAddr,
    streams: u32,
    seconds: f64,
    video_pps: u32,
    audio_pps: u32,
    video_size: usize,
    audio_size: usize,
    profile: ProtectionProfile,
}

/// A parsed command line.
#[derive(Debug)]
enum Command {
    Recv(RecvArgs),
    Send(SendArgs),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_command(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Recv(args) => run_recv(&args),
        Command::Send(args) => run_send(&args),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the subcommand and its `--flag value` pairs.
fn parse_command(args: &[String]) -> Result<Command> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| anyhow!("missing subcommand"))?;
    let flags = parse_flags(rest)?;
    match sub.as_str() {
        "recv" => {
            flags.only(&["--listen", "--seconds", "--profile", "--read"])?;
            Ok(Command::Recv(RecvArgs {
                listen: flags.required("--listen")?,
                seconds: positive_seconds(flags.required("--seconds")?)?,
                profile: parse_profile(flags.get("--profile").unwrap_or("cm"))?,
                read: match flags.get("--read").unwrap_or("grid") {
                    "grid" => ReadMode::Grid,
                    "arrival" => ReadMode::Arrival,
                    other => bail!("invalid --read {other:?} (grid or arrival)"),
                },
            }))
        }
        "send" => {
            flags.only(&[
                "--to",
                "--streams",
                "--seconds",
                "--video-pps",
                "--audio-pps",
                "--video-size",
                "--audio-size",
                "--profile",
            ])?;
            let streams: u32 = flags.required("--streams")?;
            if streams == 0 {
                bail!("--streams must be at least 1");
            }
            Ok(Command::Send(SendArgs {
                to: flags.required("--to")?,
                streams,
                seconds: positive_seconds(flags.required("--seconds")?)?,
                video_pps: flags.optional("--video-pps", 225)?,
                audio_pps: flags.optional("--audio-pps", 50)?,
                video_size: payload_size(flags.optional("--video-size", 1150)?)?,
                audio_size: payload_size(flags.optional("--audio-size", 110)?)?,
                profile: parse_profile(flags.get("--profile").unwrap_or("cm"))?,
            }))
        }
        other => bail!("unknown subcommand {other:?}"),
    }
}

/// `--flag value` pairs in command-line order.
struct Flags(Vec<(String, String)>);

impl Flags {
    /// The raw value of `name`, if given (the last one wins).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `name` parsed as `T`; an error if it is missing or does not parse.
    fn required<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        let raw = self.get(name).ok_or_else(|| anyhow!("missing {name}"))?;
        raw.parse()
            .map_err(|_| anyhow!("invalid value {raw:?} for {name}"))
    }

    /// The value of `name` parsed as `T`, or `default` when it is not given.
    fn optional<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            Some(_) => self.required(name),
            None => Ok(default),
        }
    }

    /// An error naming the first flag that is not in `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<()> {
        match self
            .0
            .iter()
            .find(|(flag, _)| !allowed.contains(&flag.as_str()))
        {
            Some((flag, _)) => bail!("unknown flag {flag}"),
            None => Ok(()),
        }
    }
}

/// Splits `args` into `--flag value` pairs.
fn parse_flags(args: &[String]) -> Result<Flags> {
    let mut pairs = Vec::new();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        if !flag.starts_with("--") {
            bail!("unexpected argument {flag:?}");
        }
        let value = iter
            .next()
            .ok_or_else(|| anyhow!("missing value for {flag}"))?;
        pairs.push((flag.clone(), value.clone()));
    }
    Ok(Flags(pairs))
}

/// `cm` (AES-128-CM with HMAC-SHA1-80, what browsers offer first) or `gcm` (AEAD AES-128-GCM).
fn parse_profile(name: &str) -> Result<ProtectionProfile> {
    match name {
        "cm" => Ok(ProtectionProfile::Aes128CmHmacSha1_80),
        "gcm" => Ok(ProtectionProfile::AeadAes128Gcm),
        other => bail!("invalid --profile {other:?} (cm or gcm)"),
    }
}

/// Checks that a duration in seconds is finite and positive.
fn positive_seconds(seconds: f64) -> Result<f64> {
    if seconds.is_finite() && seconds > 0.0 {
        Ok(seconds)
    } else {
        bail!("--seconds must be a positive number")
    }
}

/// Checks that an RTP payload size fits in one UDP datagram with header and tag.
fn payload_size(size: usize) -> Result<usize> {
    if size <= MAX_PAYLOAD {
        Ok(size)
    } else {
        bail!("payload size {size} is larger than {MAX_PAYLOAD}")
    }
}

/// The crypto provider the recorder's peer connections use (see the module doc).
fn crypto_provider() -> Result<std::sync::Arc<dyn RTCCryptoProvider>> {
    rtc::crypto::default_provider().map_err(|e| anyhow!("no default crypto provider: {e}"))
}

/// An SRTP context keyed with the fixed test key for `profile`. `replay` turns on the replay
/// window the recorder's receiving context uses.
fn srtp_context(
    profile: ProtectionProfile,
    provider: &dyn RTCCryptoProvider,
    replay: bool,
) -> Result<Context> {
    let rtp_options = replay.then(|| srtp_replay_protection(REPLAY_WINDOW));
    Context::new(
        &MASTER_KEY[..profile.key_len()],
        &MASTER_SALT[..profile.salt_len()],
        profile,
        rtp_options,
        None,
        provider.crypto(),
    )
    .map_err(|e| anyhow!("cannot create SRTP context: {e}"))
}

/// User plus system CPU time of this process so far, in seconds.
fn process_cpu_seconds() -> Result<f64> {
    // SAFETY: `getrusage` only writes into the zero-initialised struct we pass, which is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            bail!("getrusage failed: {}", std::io::Error::last_os_error());
        }
        usage
    };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Rounds to `digits` decimal places, to keep the JSON readable.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Counters of `floor recv`.
#[derive(Debug, Default)]
struct RecvStats {
    packets: u64,
    bytes: u64,
    failures: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// `floor recv`: reads and decrypts datagrams for `seconds` from the first one, then reports.
fn run_recv(args: &RecvArgs) -> Result<String> {
    let provider = crypto_provider()?;
    let mut context = srtp_context(args.profile, provider.as_ref(), true)?;
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    match args.read {
        ReadMode::Arrival => socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .context("cannot set the read timeout")?,
        ReadMode::Grid => {
            socket
                .set_nonblocking(true)
                .context("cannot make the socket non-blocking")?;
            grow_recv_buffer(&socket);
        }
    }

    let window = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut stats = RecvStats::default();
    loop {
        match socket.recv_from(&mut buf) {
            Ok((len, _from)) => {
                let now = Instant::now();
                let first = *stats.first.get_or_insert(now);
                if now.duration_since(first) >= window {
                    break;
                }
                stats.last = Some(now);
                stats.packets += 1;
                stats.bytes += len as u64;
                // Where it lies, as the recorder's shared port decrypts: no allocation.
                let packet = &mut buf[..len];
                let decrypted = rtc::rtp::Header::unmarshal(&mut &packet[..])
                    .map(|header| context.decrypt_rtp_in_place_with_header(packet, &header));
                if !matches!(decrypted, Ok(Ok(_))) {
                    stats.failures += 1;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                match stats.first {
                    Some(first) if first.elapsed() >= window => break,
                    None if started.elapsed() >= FIRST_PACKET_WAIT => {
                        bail!("no packet within {} s", FIRST_PACKET_WAIT.as_secs())
                    }
                    _ => {}
                }
                if args.read == ReadMode::Grid {
                    // Emptied: sleep to the next step of the grid (counted from the start).
                    let steps = started.elapsed().as_nanos() / GRID_STEP.as_nanos() + 1;
                    let next = started + GRID_STEP * steps as u32;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            Err(e) => return Err(e).context("recv_from failed"),
        }
    }
    let cpu_seconds = process_cpu_seconds()?;
    Ok(recv_report(&stats, cpu_seconds, provider.name()).to_string())
}

/// Asks for [`GRID_RECV_BUFFER`] (forced where the process may), so a grid step's datagrams
/// fit; a smaller buffer shows as fewer packets received than sent.
fn grow_recv_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = GRID_RECV_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket descriptor and a c_int option of its stated size.
        let done = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done == 0 {
            return;
        }
    }
}

/// The JSON line `floor recv` prints.
fn recv_report(stats: &RecvStats, cpu_seconds: f64, provider: &str) -> serde_json::Value {
    let seconds = match (stats.first, stats.last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let pps = if seconds > 0.0 {
        stats.packets as f64 / seconds
    } else {
        0.0
    };
    let cpu_us_per_packet = if stats.packets > 0 {
        cpu_seconds * 1e6 / stats.packets as f64
    } else {
        0.0
    };
    json!({
        "packets": stats.packets,
        "bytes": stats.bytes,
        "failures": stats.failures,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "pps": round(pps, 1),
        "cpu_us_per_packet": round(cpu_us_per_packet, 3),
        "crypto": provider,
    })
}

/// One RTP stream of `floor send`: an SSRC with its own sequence numbers and clock.
struct Track {
    ssrc: u32,
    payload_type: u8,
    /// RTP clock rate in Hz.
    clock: u64,
    /// Packets per second.
    pps: u32,
    /// Where in its packet interval this track starts, in [0, 1), so the streams' packets are
    /// spread over the ticks instead of all falling due in the same one.
    phase: f64,
    first_seq: u16,
    first_ts: u32,
    /// Packets sent so far.
    sent: u64,
    payload: Vec<u8>,
}

impl Track {
    /// A track with a random starting sequence number and timestamp, as real senders use.
    fn new(ssrc: u32, payload_type: u8, clock: u64, pps: u32, phase: f64, size: usize) -> Track {
        let mut payload = vec![0u8; size];
        rand::fill(&mut payload[..]);
        Track {
            ssrc,
            payload_type,
            clock,
            pps,
            phase,
            first_seq: rand::random(),
            first_ts: rand::random(),
            sent: 0,
            payload,
        }
    }

    /// How many packets this track should have sent `elapsed` seconds after the start.
    fn due(&self, elapsed: f64) -> u64 {
        (f64::from(self.pps) * elapsed + self.phase).floor() as u64
    }

    /// Writes the plaintext RTP packet number `self.sent` (12-byte header, then payload) into `out`.
    fn write_packet(&self, out: &mut Vec<u8>) {
        let seq = self.first_seq.wrapping_add(self.sent as u16);
        // Packet n is sampled n/pps seconds in: the timestamp advances at the track's clock rate.
        let ts = self
            .first_ts
            .wrapping_add((self.sent * self.clock / u64::from(self.pps)) as u32);
        out.clear();
        out.push(0x80); // version 2, no padding, no extension, no CSRC
        out.push(self.payload_type); // marker bit clear
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// Totals of `floor send`.
#[derive(Debug, Default)]
struct SendStats {
    video_packets: u64,
    audio_packets: u64,
    bytes: u64,
    send_errors: u64,
}

/// The tracks of `args.streams` streams: one video and one audio SSRC each.
fn build_tracks(args: &SendArgs) -> Vec<Track> {
    let mut tracks = Vec::new();
    for i in 0..args.streams {
        let phase = f64::from(i) / f64::from(args.streams);
        let video_ssrc = 0x1000_0000 + 2 * i;
        if args.video_pps > 0 {
            tracks.push(Track::new(
                video_ssrc,
                VIDEO_PT,
                VIDEO_CLOCK,
                args.video_pps,
                phase,
                args.video_size,
            ));
        }
        if args.audio_pps > 0 {
            tracks.push(Track::new(
                video_ssrc + 1,
                AUDIO_PT,
                AUDIO_CLOCK,
                args.audio_pps,
                phase,
                args.audio_size,
            ));
        }
    }
    tracks
}

/// `floor send`: paces SRTP packets of every stream to `args.to` for `args.seconds`.
///
/// Deadline-based: tick k wakes at `start + k * TICK` and sends, per track, however many packets
/// are due by then minus those already sent, so neither a late wake-up nor slow sending makes
/// the rate drift.
fn run_send(args: &SendArgs) -> Result<String> {
    let provider = crypto_provider()?;
    let mut context = srtp_context(args.profile, provider.as_ref(), false)?;
    let local: SocketAddr = match args.to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).context("cannot bind the sending socket")?;
    let mut tracks = build_tracks(args);
    let mut stats = SendStats::default();
    let mut packet = Vec::with_capacity(RECV_BUF_LEN);

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut tick: u32 = 0;
    loop {
        let deadline = (start + TICK * tick).min(end);
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let elapsed = deadline.duration_since(start).as_secs_f64();
        for track in &mut tracks {
            while track.sent < track.due(elapsed) {
                track.write_packet(&mut packet);
                let protected = context
                    .encrypt_rtp(&packet)
                    .map_err(|e| anyhow!("SRTP encrypt failed: {e}"))?;
                match socket.send_to(&protected, args.to) {
                    Ok(len) => stats.bytes += len as u64,
                    Err(_) => stats.send_errors += 1,
                }
                if track.payload_type == VIDEO_PT {
                    stats.video_packets += 1;
                } else {
                    stats.audio_packets += 1;
                }
                track.sent += 1;
            }
        }
        if deadline >= end {
            break;
        }
        tick += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(send_report(args, &stats, seconds, provider.name()).to_string())
}

/// The JSON line `floor send` prints.
fn send_report(
    args: &SendArgs,
    stats: &SendStats,
    seconds: f64,
    provider: &str,
) -> serde_json::Value {
    let packets = stats.video_packets + stats.audio_packets;
    json!({
        "streams": args.streams,
        "packets": packets,
        "video_packets": stats.video_packets,
        "audio_packets": stats.audio_packets,
        "bytes": stats.bytes,
        "send_errors": stats.send_errors,
        "seconds": round(seconds, 3),
        "pps": round(packets as f64 / seconds, 1),
        "crypto": provider,
    })
}
