//! `--upload s3://...` (issue 13) against a real S3 server process on loopback: `s3s-fs`, an
//! S3 server that keeps objects as plain files under a root folder (SigV4 checked, multipart,
//! MD5 ETags like AWS), installed by `.ci/run` with `cargo install s3s-fs`. Its objects are read
//! back from its folder, so every check is against what the server really stored.
//!
//! Chosen over moto's server: moto keeps objects in memory, so the "store stopped and started
//! again" test would lose what was uploaded before the stop; s3s-fs persists like a production
//! server. (One leniency: it accepts `PUT` into a bucket that does not exist; the start check
//! still reports the missing bucket, which is what the user sees.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ninjarec::upload::store::{self, StoreConfig};
use ninjarec::upload::{PrefixVars, UploadTarget};

use crate::record_e2e::{Process, Publisher, source_config, ts_files};
use crate::status_page::http_get;
use crate::support::fixtures::{TestDir, TestServer, recorder_args};
use crate::unattended::free_port;

const ACCESS_KEY: &str = "ninjarec-test";
const SECRET_KEY: &str = "ninjarec-test-secret";

/// An `s3s-fs` process serving `root` on a loopback port; killed on drop.
struct S3Server {
    child: Option<Child>,
    root: PathBuf,
    port: u16,
}

impl S3Server {
    fn binary() -> String {
        std::env::var("NINJAREC_S3S_FS").unwrap_or_else(|_| "s3s-fs".to_owned())
    }

    /// Starts a server with an empty bucket `rec`.
    async fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join("rec")).unwrap();
        let port = free_port();
        let mut s = S3Server {
            child: None,
            root: root.to_owned(),
            port,
        };
        s.resume().await;
        s
    }

    /// (Re)starts the process on the same port and folder.
    async fn resume(&mut self) {
        let child = Command::new(Self::binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the S3 test server `{}` did not start ({e}); install it with \
                     `cargo install s3s-fs --version 0.14.1 --features binary --locked` (README)",
                    Self::binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (the store is gone; its folder stays).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes or thaws the process: requests hang, as on a dead link.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every object in bucket `rec`, key → bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let base = self.root.join("rec");
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let key = p.strip_prefix(&base).unwrap().to_str().unwrap().to_owned();
                    out.insert(key, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// The recorder's flags for uploading to `server` under `prefix`.
fn upload_flags(server: &S3Server, prefix: &str) -> Vec<String> {
    vec![
        "--upload".into(),
        format!("s3://rec/{prefix}"),
        "--upload-endpoint".into(),
        server.endpoint(),
        "--min-free-mb".into(),
        "1".into(),
    ]
}

/// Starts the recorder binary with credentials in its environment.
fn recorder(args: Vec<String>, secret: &str) -> Process {
    // Set for the child only, as an operator's environment would.
    Process::start_with_env(
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    )
}

/// Files in `dir` (not hidden), name → bytes.
fn local_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_str().unwrap().to_owned();
            (!name.starts_with('.') && e.path().is_file())
                .then(|| (name, std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_str().unwrap().to_owned();
            name.starts_with('.').then_some(name)
        })
        .collect()
}

/// Asserts the bucket holds exactly `files` under `prefix/`, byte for byte.
fn assert_bucket_is(server: &S3Server, prefix: &str, files: &BTreeMap<String, Vec<u8>>) {
    let objects = server.objects();
    let expected: BTreeMap<String, &Vec<u8>> = files
        .iter()
        .map(|(n, b)| (format!("{prefix}/{n}"), b))
        .collect();
    let got: Vec<&String> = objects.keys().collect();
    let want: Vec<&String> = expected.keys().collect();
    assert_eq!(got, want, "objects in the bucket vs files");
    for (k, b) in &expected {
        assert!(objects[k] == **b, "{k}: object differs from the file");
    }
}

/// The timeline's `file-closed` lines per stream: (first, last) PTS in 90 kHz.
fn closed_spans(dir: &Path) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (name, bytes) in local_files(dir) {
        if !name.ends_with(".timeline.jsonl") {
            continue;
        }
        for line in String::from_utf8(bytes).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["event"] == "file-closed" {
                let f = &v;
                out.entry(f["stream_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push((
                        f["first_pts_90k"].as_u64().unwrap(),
                        f["last_pts_90k"].as_u64().unwrap(),
                    ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_three_in_segments_lands_in_the_bucket_through_a_30_s_outage() {
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("upload-room");
    let s3dir = TestDir::new("upload-room-s3");
    let mut s3 = S3Server::start(s3dir.path()).await;
    let status_port = free_port();
    let mut args = recorder_args(
        &url,
        dir.path(),
        &[
            "--room",
            "uproom",
            "--record-room",
            "--segment-seconds",
            "10",
            "--duration",
            "62",
            "--http",
            &format!("127.0.0.1:{status_port}"),
        ],
    );
    args.extend(upload_flags(&s3, "{room}"));
    let rec = recorder(args, SECRET_KEY);
    let pubs: Vec<Publisher> = ["u1", "u2", "u3"]
        .iter()
        .map(|s| Publisher::start(source_config(&url, s, Some("uproom"))))
        .collect();
    let started = Instant::now();

    // 20 s in: the store goes away for 30 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before_outage = s3.objects().len();
    assert!(
        before_outage >= 3,
        "first segments uploaded before the outage: {before_outage}\n{}",
        rec.log_text()
    );
    s3.stop();
    let outage = Instant::now();
    // While it is away the status shows files waiting and the store failing.
    let base = format!("http://127.0.0.1:{status_port}");
    let mut seen_failing = false;
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = http_get(&base, "/metrics").await.body;
        let value = |name: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        if value("ninjarec_upload_failing") == Some(1.0)
            && value("ninjarec_upload_pending_files").unwrap_or(0.0) >= 1.0
        {
            let j: serde_json::Value =
                serde_json::from_str(&http_get(&base, "/status.json").await.body).unwrap();
            assert!(
                j["upload"]["last_error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{j}"
            );
            seen_failing = true;
        }
    }
    assert!(seen_failing, "the outage never showed in /metrics");
    s3.resume().await;

    let (status, _, log) = rec.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{log}");
    let total = started.elapsed();
    for p in pubs {
        p.stop().await;
    }

    // Every segment and the timeline are in the bucket, byte for byte, and nothing else.
    let files = local_files(dir.path());
    let segments = files.keys().filter(|n| n.ends_with(".ts")).count();
    assert!(segments >= 3 * 6, "{segments} segments\n{log}");
    assert_bucket_is(&s3, "uproom", &files);
    assert!(
        hidden_files(dir.path()).is_empty(),
        "journal left behind: {:?}",
        hidden_files(dir.path())
    );
    // Recording never paused: per stream, each segment starts where the last one ended.
    let spans = closed_spans(dir.path());
    assert_eq!(spans.len(), 3, "{spans:?}");
    for (stream, s) in &spans {
        let covered: u64 = s.iter().map(|(a, b)| b - a).sum();
        assert!(
            covered as f64 / 90_000.0 > 50.0,
            "{stream}: {:.1} s recorded in {:.1} s",
            covered as f64 / 90_000.0,
            total.as_secs_f64()
        );
        for w in s.windows(2) {
            let gap = w[1].0 as i64 - w[0].1 as i64;
            assert!(
                (0..=9_000).contains(&gap),
                "{stream}: {gap} ticks between segments {w:?}"
            );
        }
    }
    // The outage was said, not shouted: a warning when it began, at most one a minute after,
    // and one line when the store answered again.
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("upload:"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} upload warnings\n{log}"
    );
    eprintln!(
        "upload outage: {segments} segments + timeline, {} objects ({before_outage} before the \
         outage), {warnings} warning line(s); upload lines:\n{}",
        s3.objects().len(),
        log.lines()
            .filter(|l| l.contains("upload:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(log.contains("answers again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_pending_at_kill_9_are_resumed_at_the_next_start_and_deleted_only_when_confirmed() {
    let server = TestServer::start().await;
    let url = server.url.clone();
    let dir = TestDir::new("upload-kill");
    let s3dir = TestDir::new("upload-kill-s3");
    let mut s3 = S3Server::start(s3dir.path()).await;
    // Frozen: connections are accepted and never answered, so uploads hang mid-flight.
    s3.signal("-STOP");
    let mut args = recorder_args(
        &url,
        dir.path(),
        &[
            "--room",
            "kroom",
            "--record-room",
            "--segment-seconds",
            "3",
            "--upload-delete-local",
        ],
    );
    args.extend(upload_flags(&s3, "kill"));
    let rec = recorder(args.clone(), SECRET_KEY);
    let p = Publisher::start(source_config(&url, "k1", Some("kroom")));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ts_files(dir.path()).len() < 4 {
        assert!(Instant::now() < deadline, "{}", rec.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rec.signal("-KILL");
    let _ = rec.wait(Duration::from_secs(10)).await;
    p.stop().await;
    // Nothing was confirmed, so nothing was deleted; the journal is there.
    let before = local_files(dir.path());
    let recorded = before.keys().filter(|n| n.ends_with(".ts")).count();
    assert!(recorded >= 4, "{before:?}");
    assert!(
        hidden_files(dir.path())
            .iter()
            .any(|n| n.ends_with(".journal"))
    );
    assert!(s3.objects().is_empty());

    // The store is back (the frozen one is replaced); a new run resumes everything.
    s3.signal("-CONT");
    s3.stop();
    s3.resume().await;
    let mut args2 = args.clone();
    args2.extend(["--duration".to_owned(), "8".to_owned()]);
    let rec2 = recorder(args2, SECRET_KEY);
    let (status, _, log) = rec2.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("resuming"), "{log}");

    // Every file of the killed run — the one it was writing included — is in the bucket as it
    // was on disk, and deleted locally; so is the second run's own timeline.
    let objects = s3.objects();
    for (name, bytes) in &before {
        let key = format!("kill/{name}");
        assert!(
            objects.get(&key).is_some_and(|o| o == bytes),
            "{key} missing or different\n{log}"
        );
    }
    assert_eq!(objects.len(), before.len() + 1, "{:?}", objects.keys());
    assert!(
        local_files(dir.path()).is_empty(),
        "{:?}",
        local_files(dir.path()).keys()
    );
    assert!(
        hidden_files(dir.path()).is_empty(),
        "{:?}",
        hidden_files(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_or_a_missing_bucket_are_one_line_at_start_and_recording_goes_on() {
    let server = TestServer::start().await;
    let url = server.url.clone();
    let s3dir = TestDir::new("upload-bad-s3");
    let s3 = S3Server::start(s3dir.path()).await;
    let p = Publisher::start(source_config(&url, "b1", Some("broom")));
    for (case, bucket, secret, expect) in [
        ("creds", "rec", "not-the-secret", "refused the credentials"),
        (
            "bucket",
            "nosuchbucket",
            SECRET_KEY,
            "bucket \"nosuchbucket\" does not exist",
        ),
    ] {
        let dir = TestDir::new(&format!("upload-bad-{case}"));
        let mut args = recorder_args(
            &url,
            dir.path(),
            &["--room", "broom", "--record-room", "--duration", "6"],
        );
        args.extend([
            "--upload".to_owned(),
            format!("s3://{bucket}/x"),
            "--upload-endpoint".to_owned(),
            s3.endpoint(),
        ]);
        let (status, _, log) = recorder(args, secret).wait(Duration::from_secs(60)).await;
        assert!(status.success(), "{log}");
        let lines: Vec<&str> = log.lines().collect();
        let said = lines.iter().position(|l| l.contains(expect));
        let recording = lines
            .iter()
            .position(|l| l.contains("publisher offered its stream"));
        let said = said.unwrap_or_else(|| panic!("{case}: no {expect:?}\n{log}"));
        assert!(
            recording.is_some_and(|r| said < r),
            "{case}: said after recording started\n{log}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains(expect)).count(),
            1,
            "{case}: said once\n{log}"
        );
        // Recorded locally all the same.
        let ts = ts_files(dir.path());
        assert!(ts.values().any(|&b| b > 50_000), "{case}: {ts:?}\n{log}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_goes_in_parts_and_is_confirmed_by_its_multipart_etag() {
    let s3dir = TestDir::new("upload-multipart-s3");
    let s3 = S3Server::start(s3dir.path()).await;
    let dir = TestDir::new("upload-multipart");
    // 2.5 parts of pseudo-random bytes.
    let mut data = vec![0u8; store::PART_SIZE * 5 / 2];
    let mut x = 0x9e37_79b9u32;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let file = dir.path().join("big.ts");
    std::fs::write(&file, &data).unwrap();
    let target = UploadTarget::parse("s3://rec/mp", &PrefixVars::default()).unwrap();
    let client = store::build(&StoreConfig {
        target: target.clone(),
        endpoint: Some(s3.endpoint()),
        region: None,
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    })
    .unwrap();
    store::check(client.as_ref(), &target).await.unwrap();
    let c = store::upload(client.as_ref(), "rec", &target.key("big.ts"), &file)
        .await
        .unwrap();
    assert_eq!(c.bytes, data.len() as u64);
    assert!(c.etag_checked, "{c:?}");
    assert!(c.etag.ends_with("-3"), "three parts: {}", c.etag);
    assert!(s3.objects()["mp/big.ts"] == data);
    // A small file goes in one PUT, its ETag the plain MD5.
    let small = dir.path().join("small.ts");
    std::fs::write(&small, b"hello").unwrap();
    let c = store::upload(client.as_ref(), "rec", &target.key("small.ts"), &small)
        .await
        .unwrap();
    assert_eq!(c.etag, "5d41402abc4b2a76b9719d911017c592");
    // A file gone before its upload is said to be gone, not retried forever.
    let gone = store::upload(
        client.as_ref(),
        "rec",
        &target.key("gone.ts"),
        &dir.path().join("gone.ts"),
    )
    .await;
    assert_eq!(gone, Err(store::StoreError::Missing));
}

#[test]
fn the_systemd_template_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/ninjarec@.service"),
    )
    .unwrap();
    // The unit names the installed binary; here it is the one just built.
    let unit = unit.replace("/usr/local/bin/ninjarec", env!("CARGO_BIN_EXE_ninjarec"));
    let dir = TestDir::new("systemd-unit");
    let path = dir.path().join("ninjarec@test.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("ninjarec@")).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
