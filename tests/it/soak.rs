//! The churn soak of issue 14, a benchmark run by hand (ignored in the suite): 8 publishers
//! join a room and leave again, each staying 30-90 s and away 2-10 s at random; each join has
//! a 5 % chance of being our webrtc-rs publisher behind 2 % loss (both ways, through the
//! impairment bridge) instead of on this machine. The recorder's RSS, open file descriptors
//! and threads are sampled every 10 s; at the end the slopes are reported, the counts with
//! everyone gone are compared with the start, and every file must decode cleanly.
//!
//! ```sh
//! cargo build --release --bin ninjarec && cargo build --example testsrc
//! NINJAREC_BIN=target/release/ninjarec NINJAREC_SOAK_MINUTES=480 \
//!     cargo test --test it soak -- --ignored --nocapture
//! ```
//!
//! The samples are written to `ninjarec-soak-<pid>.csv` in the temp folder. `NINJAREC_SOAK_LOSSY`
//! sets the share of joins behind loss (default 0.05).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ninjarec::signaling::server::ServerConfig;

use crate::impaired::{impaired_recorder_args, testsrc_example};
use crate::record_e2e::{Process, Publisher, source_config, ts_files};
use crate::support::ffmpeg::decode_errors;
use crate::support::fixtures::{TestDir, TestServer, heavy};
use crate::support::impair::{ImpairedNet, Impairment};

const SLOTS: usize = 8;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// A small xorshift generator: the soak needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..=hi` seconds.
    fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_secs(lo + self.next() % (hi - lo + 1))
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

/// One sample of the recorder process: (seconds since start, RSS KiB, fds, threads).
type Sample = (f64, u64, u64, u64);

fn sample(pid: u32, t: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((t, field("VmRSS:")?, fds, field("Threads:")?))
}

/// Least-squares slope of `y` over `t`, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (t, y)| {
        (num + (t - mt) * (y - my), den + (t - mt) * (t - mt))
    });
    if den == 0.0 { 0.0 } else { num / den * 3600.0 }
}

/// One slot: a publisher joining and leaving until `until`; returns (joins, joins behind loss).
async fn churn(
    slot: usize,
    url: String,
    room: String,
    net: Arc<ImpairedNet>,
    until: Instant,
    lossy_share: f64,
) -> (u64, u64) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng::new(seed);
    let stream = format!("soak{slot}");
    let (mut joins, mut lossy) = (0, 0);
    // Spread the first joins over the first 10 s.
    tokio::time::sleep(rng.secs(0, 10)).await;
    while Instant::now() < until {
        let live = rng.secs(30, 90);
        joins += 1;
        if rng.chance(lossy_share) {
            lossy += 1;
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &net.ns])
                .arg(testsrc_example())
                .args(["--server", &url, "--room", &room, "--streams", &stream])
                .arg("--udp")
                .arg(format!("{}:0", net.peer_ip))
                .args(["--duration", &live.as_secs().to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("ip netns exec testsrc");
            tokio::time::sleep(live + Duration::from_secs(2)).await;
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        } else {
            let publisher = Publisher::start(source_config(&url, &stream, Some(&room)));
            tokio::time::sleep(live).await;
            publisher.stop().await;
        }
        tokio::time::sleep(rng.secs(2, 10)).await;
    }
    (joins, lossy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark of hours: run by hand (see the module doc)"]
async fn churn_soak() {
    let minutes: u64 = std::env::var("NINJAREC_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(480);
    let lossy_share: f64 = std::env::var("NINJAREC_SOAK_LOSSY")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0.05);
    // The publisher behind loss is the example program: it must exist before hours go by.
    testsrc_example();
    let _heavy = heavy().await;
    let path = Impairment::new(0.02, 0, 0);
    let net = Arc::new(ImpairedNet::new(path, path));
    let dir = TestDir::new("soak");
    let server = TestServer::start_with(ServerConfig::new(net.host_addr())).await;
    let room = "soakroom";
    let args = impaired_recorder_args(&net, &server.url, &dir, &["--room", room, "--record-room"]);
    let recorder = Process::start(&args);
    let pid = recorder.pid();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = sample(pid, 0.0).expect("the recorder runs");

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                match sample(pid, start.elapsed().as_secs_f64()) {
                    Some(s) => samples.lock().unwrap().push(s),
                    None => break,
                }
            }
        })
    };
    let until = start + Duration::from_secs(minutes * 60);
    let slots: Vec<_> = (0..SLOTS)
        .map(|k| {
            tokio::spawn(churn(
                k,
                server.url.clone(),
                room.to_owned(),
                net.clone(),
                until,
                lossy_share,
            ))
        })
        .collect();
    let (mut joins, mut lossy) = (0, 0);
    for s in slots {
        let (j, l) = s.await.expect("a churn slot");
        joins += j;
        lossy += l;
    }
    // Everyone has left: the recorder should be back where it started.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let end = sample(pid, start.elapsed().as_secs_f64()).expect("the recorder still runs");
    sampler.abort();
    recorder.signal("-TERM");
    let (status, _stdout, log) = recorder.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", tail(&log));

    let samples = samples.lock().unwrap().clone();
    let csv: String = std::iter::once("seconds,rss_kib,fds,threads\n".to_owned())
        .chain(
            samples
                .iter()
                .map(|(t, r, f, th)| format!("{t:.0},{r},{f},{th}\n")),
        )
        .collect();
    // Beside the test folder, not in it: the folder goes when the test passes.
    let samples_path =
        std::env::temp_dir().join(format!("ninjarec-soak-{}.csv", std::process::id()));
    std::fs::write(&samples_path, csv).unwrap();
    // Slopes after the first tenth of the run (allocator and caches warming up).
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.0 >= minutes as f64 * 6.0)
        .collect();
    let slope = |f: fn(&Sample) -> u64| {
        slope_per_hour(&warm.iter().map(|s| (s.0, f(s) as f64)).collect::<Vec<_>>())
    };
    let (rss_slope, fd_slope, thread_slope) = (slope(|s| s.1), slope(|s| s.2), slope(|s| s.3));
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);

    let files = ts_files(&dir);
    let mut bad = Vec::new();
    for name in files.keys() {
        let errors = decode_errors(&dir.join(name));
        if !errors.is_empty() {
            bad.push(format!("{name}: {errors}"));
        }
    }
    let [up, down] = net.stats();
    eprintln!(
        "soak {minutes} min: {joins} joins ({lossy} behind 2 % loss), {} files, {} failing the decode check\n  \
         RSS {} KiB at the start, peak {peak} KiB, {} KiB with everyone gone; slope {rss_slope:+.0} KiB/h\n  \
         fds {} -> {} (slope {fd_slope:+.2}/h), threads {} -> {} (slope {thread_slope:+.2}/h)\n  \
         bridge up {up:?} down {down:?}\n  samples: {}",
        files.len(),
        bad.len(),
        baseline.1,
        end.1,
        baseline.2,
        end.2,
        baseline.3,
        end.3,
        samples_path.display()
    );
    // Whether growth slows (allocator settling) or keeps its pace (state kept per join).
    let third = minutes as f64 * 60.0 / 3.0;
    let thirds: Vec<String> = (0..3)
        .map(|k| {
            let (from, to) = (k as f64 * third, (k + 1) as f64 * third);
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.0 >= from && s.0 < to)
                .map(|s| (s.0, s.1 as f64))
                .collect();
            format!("{:+.0}", slope_per_hour(&points))
        })
        .collect();
    eprintln!("  RSS slope by thirds: {} KiB/h", thirds.join(", "));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(
        files.len() as u64 >= joins / 2,
        "{} files for {joins} joins",
        files.len()
    );
    // With everyone gone nothing per publisher may be left: sockets, files, tasks' threads.
    assert!(end.2 <= baseline.2 + 2, "fds {} -> {}", baseline.2, end.2);
    assert!(
        end.3 <= baseline.3 + 2,
        "threads {} -> {}",
        baseline.3,
        end.3
    );
    // An hour is the shortest run whose RSS slope means something (shorter: reported only).
    if minutes >= 60 {
        assert!(rss_slope < 1024.0, "RSS grows {rss_slope:.0} KiB per hour");
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn the_slope_of_a_line_is_its_rise_per_hour() {
    let points: Vec<(f64, f64)> = (0..100)
        .map(|k| (k as f64 * 36.0, 5.0 + k as f64))
        .collect();
    assert!((slope_per_hour(&points) - 100.0).abs() < 1e-9);
    assert_eq!(slope_per_hour(&[(1.0, 2.0)]), 0.0);
}
