//! `--on-file-done CMD`: a user command run for every finished file (upload it, transcode it,
//! notify someone), without ever slowing down or failing a recording.
//!
//! Each finished file becomes one run of `sh -c "$CMD" ninjarec-hook PATH`, so in `CMD`, `$1`
//! is the file's path. The command also gets these environment variables:
//!
//! | variable                 | value                                                          |
//! |--------------------------|----------------------------------------------------------------|
//! | `NINJAREC_PATH`          | the file's path (same as `$1`)                                 |
//! | `NINJAREC_STREAM_ID`     | the publisher's stream ID                                      |
//! | `NINJAREC_SEGMENT`       | segment number within the recording, 0 for the first file      |
//! | `NINJAREC_CONTAINER`     | `ts`, `webm` or `mkv`                                          |
//! | `NINJAREC_CODEC`         | `H.264`, `VP8`, `VP9`, `AV1`; empty for an audio-only file     |
//! | `NINJAREC_DURATION`      | media seconds, 3 decimals (`12.345`)                           |
//! | `NINJAREC_BYTES`         | file size in bytes                                             |
//! | `NINJAREC_FRAMES`        | video frames in the file                                       |
//! | `NINJAREC_AUDIO_PACKETS` | Opus packets in the file                                       |
//! | `NINJAREC_CAUSE`         | why it was closed: `segment`, `end`, `codec-change`, `disk-error` |
//! | `NINJAREC_START_UNIX_MS` | wall clock (Unix ms) at the first unit: the publisher's clock when known, else ours; empty if neither |
//!
//! (NUL characters, which an environment cannot hold, are removed from values.)
//!
//! How they run, and why:
//! - [`HookSender::file_done`] never blocks and never fails: a recorder must not wait for a
//!   user's script. Files wait in a bounded queue ([`HookConfig::queue`]); when it is full the
//!   file's hook is dropped, counted, and a warning is logged (at most once a minute).
//! - At most [`HookConfig::max_concurrent`] hooks run at once, so a burst of segments does
//!   not fork a crowd of uploaders on a small board.
//! - Each hook gets [`HookConfig::timeout`]; then it is killed. The hook runs in its own process
//!   group, and the whole group gets `SIGKILL` (so `sh` and what it started, including
//!   background jobs still in that group; a program that moves itself to another group or
//!   session escapes, as with any supervisor). If our task is dropped while the hook runs
//!   (shutdown past its grace), the same happens, and `kill_on_drop` covers `sh` itself.
//!   Being in its own group, a hook does not get the terminal's Ctrl-C: shutdown lets it
//!   finish (see below) instead of interrupting an upload halfway.
//! - stdin is `/dev/null`; the first 2 KiB of stdout and stderr are kept and logged (stdout at
//!   debug; stderr at debug on success, in the warning on failure), the rest is read and
//!   discarded so a chatty hook never blocks on a full pipe.
//! - Success is one info line (`hook for PATH exited 0 in 0.3 s`); a non-zero exit, a signal,
//!   a timeout or a failure to start is one warning with the stderr excerpt.
//! - [`HookHandle::finish`] at shutdown stops accepting files, then waits (bounded by a grace
//!   period) for the queued and running hooks, so the hook of the last file still runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::closed::ClosedFile;

/// Default [`HookConfig::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT: usize = 2;
/// Default [`HookConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`HookConfig::queue`].
pub const DEFAULT_QUEUE: usize = 256;
/// Bytes of a hook's stdout and of its stderr kept for the log.
pub const OUTPUT_EXCERPT: usize = 2048;
/// At most one "queue full" warning per this long (every drop is still counted).
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// How long to wait for a hook's output pipes to close once the hook itself has exited (a
/// background job may keep them open).
const OUTPUT_LINGER: Duration = Duration::from_secs(1);
/// The `$0` of the hook's shell, so `ps` and error messages say what it is.
const ARG0: &str = "ninjarec-hook";

/// How `--on-file-done` hooks run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// The shell command (`sh -c`), with the file's path as `$1`.
    pub command: String,
    /// Hooks running at once, at least 1.
    pub max_concurrent: usize,
    /// How long one hook may run before it is killed.
    pub timeout: Duration,
    /// Files waiting for a hook, at least 1; more are dropped (and counted).
    pub queue: usize,
}

impl HookConfig {
    /// `command` with the default limits (2 at once, 60 s each, 256 waiting).
    pub fn new(command: impl Into<String>) -> HookConfig {
        HookConfig {
            command: command.into(),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            timeout: DEFAULT_TIMEOUT,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// What the hooks did, for the shutdown log and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HookStats {
    /// Hooks started (spawn attempted).
    pub run: u64,
    /// Hooks that exited with status 0.
    pub succeeded: u64,
    /// Hooks that exited non-zero, were killed by a signal, or could not be started.
    pub failed: u64,
    /// Hooks killed after [`HookConfig::timeout`].
    pub timed_out: u64,
    /// Files whose hook never ran because the queue was full (or the runner had finished).
    pub dropped: u64,
    /// Files queued or hooks running when [`HookHandle::finish`]'s grace ran out (the running
    /// ones were killed).
    pub abandoned: u64,
}

/// Counters shared by the senders, the dispatcher and the hook tasks.
#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    run: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    abandoned: AtomicU64,
    last_drop_warning: Mutex<Option<Instant>>,
}

impl Shared {
    fn stats(&self) -> HookStats {
        HookStats {
            run: self.run.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }

    fn completed(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.timed_out.load(Ordering::Relaxed)
    }

    fn note_drop(&self, path: &Path, why: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_drop_warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|t| t.elapsed() >= DROP_WARN_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                "--on-file-done not run for {}: {why} ({dropped} dropped so far; this warning \
                 repeats at most once a minute)",
                path.display()
            );
        }
    }
}

/// One file waiting for its hook.
#[derive(Debug)]
struct HookJob {
    path: PathBuf,
    env: Vec<(&'static str, OsString)>,
}

/// The environment a hook gets for `file` (see the module doc), in a fixed order. Public so the
/// documentation, the status page or a dry run can show exactly what a hook will see.
pub fn hook_env(file: &ClosedFile) -> Vec<(&'static str, OsString)> {
    fn text(s: &str) -> OsString {
        OsString::from(s.replace('\0', ""))
    }
    let start_ms = file
        .start_sender_unix_ms
        .or(file.start_local_unix_ms)
        .filter(|ms| ms.is_finite())
        .map(|ms| format!("{ms:.0}"))
        .unwrap_or_default();
    vec![
        ("NINJAREC_PATH", file.path.clone().into_os_string()),
        ("NINJAREC_STREAM_ID", text(&file.stream_id)),
        ("NINJAREC_SEGMENT", file.segment.to_string().into()),
        ("NINJAREC_CONTAINER", text(file.container)),
        ("NINJAREC_CODEC", text(file.codec.as_deref().unwrap_or(""))),
        (
            "NINJAREC_DURATION",
            format!("{:.3}", file.duration_seconds()).into(),
        ),
        ("NINJAREC_BYTES", file.bytes.to_string().into()),
        ("NINJAREC_FRAMES", file.frames.to_string().into()),
        (
            "NINJAREC_AUDIO_PACKETS",
            file.audio_packets.to_string().into(),
        ),
        ("NINJAREC_CAUSE", file.cause.as_str().into()),
        ("NINJAREC_START_UNIX_MS", start_ms.into()),
    ]
}

/// A cheap, clonable way to hand finished files to the hook runner, for the tasks that close
/// files. Never blocks, never fails.
#[derive(Clone)]
pub struct HookSender {
    tx: mpsc::Sender<HookJob>,
    shared: Arc<Shared>,
}

impl HookSender {
    /// Queues the hook for `file`. If the queue is full (or the runner has finished), the hook
    /// is dropped and counted instead: the caller is a recorder and must not wait.
    pub fn file_done(&self, file: &ClosedFile) {
        let job = HookJob {
            path: file.path.clone(),
            env: hook_env(file),
        };
        // Counted before sending so a hook can never complete before it was accepted.
        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(job) {
            self.shared.accepted.fetch_sub(1, Ordering::Relaxed);
            let (job, why) = match e {
                mpsc::error::TrySendError::Full(job) => (job, "the hook queue is full"),
                mpsc::error::TrySendError::Closed(job) => (job, "the hook runner has finished"),
            };
            self.shared.note_drop(&job.path, why);
        }
    }
}

/// What [`HookHandle::finish`] asks of the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Accept nothing new; run what is queued; end when all hooks are done.
    Draining,
    /// Kill the running hooks, forget the queued ones, end now.
    Abort,
}

/// The running hook runner: hand it files with [`HookHandle::file_done`] (or clones of
/// [`HookHandle::sender`]), and [`HookHandle::finish`] it at shutdown. Dropping it without
/// `finish` lets the queued hooks run on in the background until the senders are gone.
pub struct HookHandle {
    sender: HookSender,
    control: watch::Sender<Phase>,
    task: JoinHandle<()>,
}

/// Starts the hook runner (on the current tokio runtime: call it from within one).
pub fn spawn(cfg: HookConfig) -> HookHandle {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let (control, control_rx) = watch::channel(Phase::Running);
    let shared = Arc::new(Shared::default());
    let task = tokio::spawn(dispatch(cfg, rx, control_rx, shared.clone()));
    HookHandle {
        sender: HookSender { tx, shared },
        control,
        task,
    }
}

impl HookHandle {
    /// See [`HookSender::file_done`].
    pub fn file_done(&self, file: &ClosedFile) {
        self.sender.file_done(file);
    }

    /// A sender for another task. Files it sends after [`HookHandle::finish`] are dropped
    /// (and counted).
    pub fn sender(&self) -> HookSender {
        self.sender.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> HookStats {
        self.sender.shared.stats()
    }

    /// Stops accepting files and waits for the queued and running hooks, at most `grace`; then
    /// kills what still runs (counted in [`HookStats::abandoned`]). Returns the final counters.
    pub async fn finish(self, grace: Duration) -> HookStats {
        let HookHandle {
            sender,
            control,
            mut task,
        } = self;
        let _ = control.send(Phase::Draining);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            let _ = control.send(Phase::Abort);
            // Bounded: the dispatcher aborts its hook tasks and returns.
            let _ = (&mut task).await;
        }
        let stats = sender.shared.stats();
        if stats.abandoned > 0 {
            tracing::warn!(
                "{} --on-file-done hook(s) not finished within {:.1} s of shutdown: killed",
                stats.abandoned,
                grace.as_secs_f64()
            );
        }
        stats
    }
}

/// Takes files from the queue and runs their hooks, at most `max_concurrent` at once.
async fn dispatch(
    cfg: HookConfig,
    mut rx: mpsc::Receiver<HookJob>,
    mut control: watch::Receiver<Phase>,
    shared: Arc<Shared>,
) {
    let max = cfg.max_concurrent.max(1);
    let command: Arc<str> = cfg.command.into();
    let timeout = cfg.timeout;
    let mut hooks = JoinSet::new();
    let mut control_open = true;
    let mut queue_done = false;
    loop {
        if queue_done && hooks.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            changed = control.changed(), if control_open => {
                if changed.is_err() {
                    // The handle was dropped without `finish`: run on until the senders go.
                    control_open = false;
                    continue;
                }
                let phase = *control.borrow_and_update();
                match phase {
                    Phase::Running => {}
                    Phase::Draining => rx.close(),
                    Phase::Abort => {
                        rx.close();
                        hooks.shutdown().await;
                        // Everything accepted and not completed: queued or killed.
                        let left = shared
                            .accepted
                            .load(Ordering::Relaxed)
                            .saturating_sub(shared.completed());
                        shared.abandoned.store(left, Ordering::Relaxed);
                        return;
                    }
                }
            }
            joined = hooks.join_next(), if !hooks.is_empty() => {
                if let Some(Err(e)) = joined {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("an --on-file-done hook task failed: {e}");
                }
            }
            job = rx.recv(), if !queue_done && hooks.len() < max => match job {
                Some(job) => {
                    hooks.spawn(run_hook(command.clone(), job, timeout, shared.clone()));
                }
                None => queue_done = true,
            },
        }
    }
}

/// How one hook ended.
enum Outcome {
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(std::io::Error),
    WaitFailed(std::io::Error),
}

/// Runs one hook, logs how it ended and counts it.
async fn run_hook(command: Arc<str>, job: HookJob, timeout: Duration, shared: Arc<Shared>) {
    shared.run.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let (outcome, stdout, stderr) = execute(&command, &job, timeout).await;
    let secs = started.elapsed().as_secs_f64();
    let path = job.path.display();
    if !stdout.is_empty() {
        tracing::debug!("hook for {path} stdout: {stdout}");
    }
    match outcome {
        Outcome::Exited(status) if status.success() => {
            shared.succeeded.fetch_add(1, Ordering::Relaxed);
            tracing::info!("hook for {path} exited 0 in {secs:.1} s");
            if !stderr.is_empty() {
                tracing::debug!("hook for {path} stderr: {stderr}");
            }
        }
        Outcome::Exited(status) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "hook for {path} failed ({}) after {secs:.1} s{}",
                describe(status),
                excerpt_suffix(&stderr)
            );
        }
        Outcome::TimedOut => {
            shared.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "hook for {path} killed after its {:.1} s timeout{}",
                timeout.as_secs_f64(),
                excerpt_suffix(&stderr)
            );
        }
        Outcome::SpawnFailed(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("hook for {path} could not start `sh`: {e}");
        }
        Outcome::WaitFailed(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("hook for {path}: lost track of the process: {e}");
        }
    }
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}

fn excerpt_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// Spawns the hook's shell and waits for it (at most `timeout`); returns how it ended and the
/// excerpts of its stdout and stderr.
async fn execute(command: &str, job: &HookJob, timeout: Duration) -> (Outcome, String, String) {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .arg(ARG0)
        .arg(&job.path)
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (Outcome::SpawnFailed(e), String::new(), String::new()),
    };
    // Declared after `child`, so dropped (killing the group) before it.
    let mut group = KillGroupOnDrop(child.id());
    let stdout = child
        .stdout
        .take()
        .map(|r| AbortOnDrop(tokio::spawn(excerpt(r))));
    let stderr = child
        .stderr
        .take()
        .map(|r| AbortOnDrop(tokio::spawn(excerpt(r))));
    let outcome = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            group.disarm();
            Outcome::Exited(status)
        }
        Ok(Err(e)) => Outcome::WaitFailed(e),
        Err(_) => {
            group.kill();
            let _ = child.start_kill();
            if let Ok(Ok(_)) = tokio::time::timeout(OUTPUT_LINGER, child.wait()).await {
                group.disarm();
            }
            Outcome::TimedOut
        }
    };
    let stdout = collect(stdout).await;
    let stderr = collect(stderr).await;
    (outcome, stdout, stderr)
}

/// The excerpt a reader task produced, if it finishes within [`OUTPUT_LINGER`].
async fn collect(reader: Option<AbortOnDrop<String>>) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    match tokio::time::timeout(OUTPUT_LINGER, &mut reader.0).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_EXCERPT`] bytes as trimmed, lossy UTF-8
/// (with `…` when cut).
async fn excerpt<R: AsyncRead + Unpin>(mut r: R) -> String {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_EXCERPT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).trim().to_string();
    if cut {
        text.push('…');
    }
    text
}

/// Aborts a task when dropped (a reader stuck on a pipe held open by a hook's background job).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `SIGKILL`s a hook's process group when dropped, unless disarmed once the hook was reaped.
/// While the hook's shell is not reaped its pid (the group's id) cannot be reused, so the
/// signal never reaches an unrelated process.
struct KillGroupOnDrop(Option<u32>);

impl KillGroupOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }

    fn kill(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: `kill(2)` has no memory-safety preconditions; a negative pid names the
            // process group the hook's shell leads (`process_group(0)`).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::record::closed::CloseCause;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ninjarec-hooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `'…'` for `sh`.
    fn quote(p: &Path) -> String {
        format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
    }

    fn closed(path: PathBuf) -> ClosedFile {
        ClosedFile {
            path,
            stream_id: "cam 1".into(),
            segment: 3,
            codec: Some("VP9".into()),
            container: "webm",
            first_pts_90k: 90_000,
            last_pts_90k: 90_000 + 1_111_111,
            frames: 370,
            audio_packets: 617,
            bytes: 123_456,
            cause: CloseCause::Segment,
            start_sender_unix_ms: Some(1_700_000_000_123.4),
            start_local_unix_ms: Some(1_700_000_000_999.0),
        }
    }

    fn config(command: String) -> HookConfig {
        HookConfig {
            timeout: Duration::from_secs(20),
            ..HookConfig::new(command)
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn environment_of_a_file() {
        let mut file = closed(PathBuf::from("/out/room_cam_1.webm"));
        let env: HashMap<_, _> = hook_env(&file).into_iter().collect();
        assert_eq!(env.len(), 11);
        assert_eq!(env["NINJAREC_PATH"], "/out/room_cam_1.webm");
        assert_eq!(env["NINJAREC_STREAM_ID"], "cam 1");
        assert_eq!(env["NINJAREC_SEGMENT"], "3");
        assert_eq!(env["NINJAREC_CONTAINER"], "webm");
        assert_eq!(env["NINJAREC_CODEC"], "VP9");
        assert_eq!(env["NINJAREC_DURATION"], "12.346");
        assert_eq!(env["NINJAREC_BYTES"], "123456");
        assert_eq!(env["NINJAREC_FRAMES"], "370");
        assert_eq!(env["NINJAREC_AUDIO_PACKETS"], "617");
        assert_eq!(env["NINJAREC_CAUSE"], "segment");
        assert_eq!(env["NINJAREC_START_UNIX_MS"], "1700000000123");

        file.codec = None;
        file.stream_id = "a\0b".into();
        file.start_sender_unix_ms = None;
        let env: HashMap<_, _> = hook_env(&file).into_iter().collect();
        assert_eq!(env["NINJAREC_CODEC"], "", "audio only");
        assert_eq!(env["NINJAREC_STREAM_ID"], "ab");
        assert_eq!(
            env["NINJAREC_START_UNIX_MS"], "1700000000999",
            "local clock"
        );
        file.start_local_unix_ms = None;
        let env: HashMap<_, _> = hook_env(&file).into_iter().collect();
        assert_eq!(env["NINJAREC_START_UNIX_MS"], "");
    }

    #[tokio::test]
    async fn excerpts_are_bounded() {
        let long = vec![b'x'; 10_000];
        let text = excerpt(&long[..]).await;
        assert_eq!(text.len(), OUTPUT_EXCERPT + '…'.len_utf8());
        assert!(text.ends_with('…'));
        assert_eq!(excerpt(&b"  ok\n"[..]).await, "ok");
        assert_eq!(excerpt(&b"\xff\n"[..]).await, "\u{fffd}");
    }

    #[tokio::test]
    async fn hooks_get_their_environment_and_path() {
        let dir = temp_dir("env");
        let out = dir.join("env.txt");
        let cmd = format!(
            "{{ echo \"ARG1=$1\"; echo \"ARG0=$0\"; env; }} > {}",
            quote(&out)
        );
        let hooks = spawn(config(cmd));
        let file = closed(dir.join("room_cam_1700000000.webm"));
        hooks.file_done(&file);
        let stats = hooks.finish(Duration::from_secs(20)).await;
        assert_eq!(stats.succeeded, 1, "{stats:?}");
        let got: HashMap<String, String> = lines(&out)
            .into_iter()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let path = file.path.to_str().unwrap();
        assert_eq!(got["ARG1"], path);
        assert_eq!(got["ARG0"], ARG0);
        for (key, value) in hook_env(&file) {
            assert_eq!(got.get(key).map(String::as_str), value.to_str(), "{key}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn concurrency_is_capped() {
        let dir = temp_dir("cap");
        let log = dir.join("log");
        let cmd = format!(
            "echo start >> {log}; sleep 0.4; echo end >> {log}",
            log = quote(&log)
        );
        let hooks = spawn(HookConfig {
            max_concurrent: 2,
            ..config(cmd)
        });
        for i in 0..6 {
            hooks.file_done(&closed(dir.join(format!("f{i}.ts"))));
        }
        let stats = hooks.finish(Duration::from_secs(30)).await;
        assert_eq!(stats.succeeded, 6, "{stats:?}");
        let (mut running, mut peak) = (0i32, 0i32);
        for line in lines(&log) {
            running += if line == "start" { 1 } else { -1 };
            peak = peak.max(running);
        }
        assert_eq!(running, 0);
        assert_eq!(peak, 2, "two hooks at a time, never more");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = temp_dir("timeout");
        let late = dir.join("late");
        // A background job in the hook's group that would outlive `sh` if only `sh` died.
        let cmd = format!(
            "(sleep 1; touch {late}) & sleep 30; touch {late}",
            late = quote(&late)
        );
        let hooks = spawn(HookConfig {
            timeout: Duration::from_millis(300),
            ..config(cmd)
        });
        hooks.file_done(&closed(dir.join("f.ts")));
        let stats = tokio::time::timeout(
            Duration::from_secs(20),
            hooks.finish(Duration::from_secs(20)),
        )
        .await
        .expect("finish is bounded by the hook timeout, not the hook");
        assert_eq!(
            stats,
            HookStats {
                run: 1,
                timed_out: 1,
                ..HookStats::default()
            }
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!late.exists(), "the whole process group was killed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn failures_are_counted() {
        let hooks = spawn(config("echo oops >&2; exit 3".into()));
        hooks.file_done(&closed(PathBuf::from("/out/a.ts")));
        let stats = hooks.finish(Duration::from_secs(20)).await;
        assert_eq!(
            stats,
            HookStats {
                run: 1,
                failed: 1,
                ..HookStats::default()
            }
        );
    }

    #[tokio::test]
    async fn finish_waits_for_queued_hooks() {
        let dir = temp_dir("finish");
        let log = dir.join("log");
        let cmd = format!("sleep 0.1; echo \"$1\" >> {}", quote(&log));
        let hooks = spawn(HookConfig {
            max_concurrent: 1,
            ..config(cmd)
        });
        let sender = hooks.sender();
        for i in 0..5 {
            sender.file_done(&closed(dir.join(format!("f{i}.ts"))));
        }
        let stats = hooks.finish(Duration::from_secs(30)).await;
        assert_eq!(stats.run, 5, "{stats:?}");
        assert_eq!(stats.succeeded, 5, "{stats:?}");
        let expected: Vec<String> = (0..5)
            .map(|i| dir.join(format!("f{i}.ts")).display().to_string())
            .collect();
        assert_eq!(lines(&log), expected, "all ran, in order (one at a time)");
        // After finish, a straggler's file is dropped, not queued.
        sender.file_done(&closed(dir.join("late.ts")));
        assert_eq!(sender.shared.stats().dropped, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let dir = temp_dir("full");
        let log = dir.join("log");
        let cmd = format!("sleep 0.3; echo \"$1\" >> {}", quote(&log));
        let hooks = spawn(HookConfig {
            max_concurrent: 1,
            queue: 1,
            ..config(cmd)
        });
        // The single-threaded test runtime does not run the dispatcher between these calls,
        // so the first file fills the queue and the other nine are dropped at once.
        for i in 0..10 {
            hooks.file_done(&closed(dir.join(format!("f{i}.ts"))));
        }
        assert_eq!(hooks.stats().dropped, 9);
        let stats = hooks.finish(Duration::from_secs(30)).await;
        assert_eq!(
            stats,
            HookStats {
                run: 1,
                succeeded: 1,
                dropped: 9,
                ..HookStats::default()
            }
        );
        assert_eq!(lines(&log).len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn finish_gives_up_after_its_grace() {
        let dir = temp_dir("grace");
        let late = dir.join("late");
        let cmd = format!("sleep 2; touch {}", quote(&late));
        let hooks = spawn(HookConfig {
            max_concurrent: 1,
            ..config(cmd)
        });
        for i in 0..3 {
            hooks.file_done(&closed(dir.join(format!("f{i}.ts"))));
        }
        // Let the first hook start.
        while hooks.stats().run == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = hooks.finish(Duration::from_millis(200)).await;
        assert_eq!(
            stats,
            HookStats {
                run: 1,
                abandoned: 3,
                ..HookStats::default()
            }
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!late.exists(), "the running hook was killed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
