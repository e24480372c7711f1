//! Fixtures that clean up after themselves: a handshake server on loopback, the recorder in
//! this process (from real command-line flags) and a scratch folder. Dropping them stops the server and removes the folder, so a failing test leaves
//! nothing running (a kept folder is named on stderr, for inspection).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ninjarec::cli::Cli;
use ninjarec::record::orchestrator::{self, RunError};
use ninjarec::record::stream::StreamSummary;
use ninjarec::signaling::server::{Server, ServerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Our handshake server (`ninjarec serve`) on 127.0.0.1 with a free port.
pub struct TestServer {
    /// The server (its address, its `wait`).
    pub server: Server,
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    stop: watch::Sender<bool>,
}

impl TestServer {
    /// Both dialects, default limits.
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerConfig::new("127.0.0.1:0".parse().unwrap())).await
    }

    /// A server with these settings (e.g. `official_only`, limits).
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let (stop, rx) = watch::channel(false);
        let server = Server::bind(config, rx).await.expect("server binds");
        let url = format!("ws://{}", server.local_addr());
        TestServer { server, url, stop }
    }

    /// Stops the server now (dropping it does the same).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh, empty folder for one test under the system temp folder; removed on drop unless
/// the test is failing (then kept, and its path printed).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// `ninjarec-it-<pid>-<name>`, emptied first.
    pub fn new(name: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("ninjarec-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp folder");
        TestDir { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The recorder's common flags: this server, loopback only, no STUN, into `dir`.
pub fn recorder_args(url: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--server",
        url,
        "--udp-bind",
        "127.0.0.1:0",
        "--stun",
        "none",
        "--ice-timeout",
        "15",
        "--output-dir",
        dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The recorder in this process, configured from real command-line flags.
pub struct InProcess {
    task: JoinHandle<Result<Vec<StreamSummary>, RunError>>,
    stop: watch::Sender<bool>,
}

impl InProcess {
    pub fn start(args: &[String]) -> Self {
        init_test_logging();
        let cli =
            Cli::parse_from(std::iter::once("ninjarec".to_owned()).chain(args.iter().cloned()));
        assert!(
            cli.command.is_none(),
            "recording flags parse as the default action"
        );
        let config = ninjarec::app::run_config(&cli.record).expect("flags make a run config");
        let (stop, rx) = watch::channel(false);
        InProcess {
            task: tokio::spawn(orchestrator::run(config, rx)),
            stop,
        }
    }

    /// Stops the recorder like SIGTERM would and returns its summaries.
    pub async fn stop(self) -> Vec<StreamSummary> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("recorder stops within 20 s")
            .expect("recorder task did not panic")
            .expect("recorder ran")
    }
}

/// The lock behind [`heavy`] and [`heavy_blocking`].
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serializes the tests that load the machine's cores with encoders: real publishers
/// (Chromium, GStreamer), ffmpeg encoding test clips, ten recorder processes in a row. Two at
/// once on a small machine would test the machine, not the recorder (four GStreamer
/// publishers next to an SVT-AV1 encode started their files with audio 100-260 ms off).
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// [`heavy`] for tests that are not async.
pub fn heavy_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// With `NINJAREC_TEST_LOG` set (a `RUST_LOG`-style filter, e.g. `ninjarec=debug`), the
/// in-process recorder's log goes to stderr, for debugging a failing test.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("NINJAREC_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}
