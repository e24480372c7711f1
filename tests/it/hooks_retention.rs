//! `--on-file-done` hooks and `--delete-after` / `--keep-mb` retention through the library, with
//! a real `sh` and a real folder (issue 12). The helpers [`hook_script`] and [`read_hook_log`]
//! are for any test that wants to see what hooks received (the end-to-end recording tests).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ninjarec::record::closed::{CloseCause, ClosedFile};
use ninjarec::record::disk::{DiskGuard, MB, free_bytes};
use ninjarec::record::hooks::{self, HookConfig, HookStats, hook_env};
use ninjarec::record::retention::{self, RetentionPolicy};

use crate::support::fixtures::TestDir;

/// The variables [`hook_script`] records (every one a hook is documented to get).
pub const HOOK_VARS: [&str; 11] = [
    "NINJAREC_PATH",
    "NINJAREC_STREAM_ID",
    "NINJAREC_SEGMENT",
    "NINJAREC_CONTAINER",
    "NINJAREC_CODEC",
    "NINJAREC_DURATION",
    "NINJAREC_BYTES",
    "NINJAREC_FRAMES",
    "NINJAREC_AUDIO_PACKETS",
    "NINJAREC_CAUSE",
    "NINJAREC_START_UNIX_MS",
];

/// `'…'` for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// An `--on-file-done` command that appends one JSON line per call to `DIR/hooks.log`: `ARG1`
/// (the hook's `$1`) and every `NINJAREC_*` variable of [`HOOK_VARS`] that is set (an empty
/// one is recorded as `""`; a missing one is absent). `"` and `\` are escaped; values with
/// control characters are not supported. One `printf` per line, so concurrent hooks do not mix.
pub fn hook_script(dir: &Path) -> String {
    let log = sh_quote(&dir.join("hooks.log").display().to_string());
    let vars = HOOK_VARS.join(" ");
    format!(
        r#"l='{{'; sep=''; for k in ARG1 {vars}; do if [ "$k" = ARG1 ]; then v=$1; else eval "s=\${{$k+x}}"; [ -n "$s" ] || continue; eval "v=\${{$k}}"; fi; v=$(printf '%s' "$v" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'); l="$l$sep\"$k\":\"$v\""; sep=','; done; printf '%s}}\n' "$l" >> {log}"#
    )
}

/// The lines [`hook_script`] wrote in `dir`, in order (none if no hook ran).
pub fn read_hook_log(dir: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("hooks.log")).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("hook log line {line:?}: {e}"))
        })
        .collect()
}

fn closed_file(path: PathBuf, stream_id: &str, segment: u64, codec: Option<&str>) -> ClosedFile {
    ClosedFile {
        path,
        stream_id: stream_id.into(),
        segment,
        codec: codec.map(str::to_string),
        container: if codec.is_some() { "mkv" } else { "ts" },
        first_pts_90k: 0,
        last_pts_90k: 90_000 * (segment + 1) + 90,
        frames: 30 * segment,
        audio_packets: 50 * (segment + 1),
        bytes: 1000 + segment,
        cause: if segment == 2 {
            CloseCause::End
        } else {
            CloseCause::Segment
        },
        start_sender_unix_ms: codec.map(|_| 1_700_000_000_000.0 + segment as f64),
        start_local_unix_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_every_variable_through_a_real_shell() {
    let dir = TestDir::new("hooks-env");
    let files = [
        closed_file(dir.join("room_cam_1700000000.mkv"), "cam", 0, Some("AV1")),
        closed_file(
            dir.join("room_cam_1700000000_1.ts"),
            r#"it's "cam" \1"#,
            1,
            None,
        ),
        closed_file(dir.join("room_cam_1700000000_2.mkv"), "cam", 2, Some("VP8")),
    ];
    let hooks = hooks::spawn(HookConfig::new(hook_script(&dir)));
    for file in &files {
        hooks.file_done(file);
    }
    let stats = hooks.finish(Duration::from_secs(30)).await;
    assert_eq!(
        stats,
        HookStats {
            run: 3,
            succeeded: 3,
            ..HookStats::default()
        }
    );

    let mut log = read_hook_log(&dir);
    log.sort_by(|a, b| a["NINJAREC_SEGMENT"].cmp(&b["NINJAREC_SEGMENT"]));
    assert_eq!(log.len(), 3);
    for (file, got) in files.iter().zip(&log) {
        assert_eq!(got.len(), HOOK_VARS.len() + 1, "{got:?}");
        assert_eq!(got["ARG1"], file.path.display().to_string());
        for (key, value) in hook_env(file) {
            assert_eq!(got.get(key).map(String::as_str), value.to_str(), "{key}");
        }
    }
    assert_eq!(log[1]["NINJAREC_STREAM_ID"], r#"it's "cam" \1"#);
    assert_eq!(log[1]["NINJAREC_CODEC"], "", "audio only");
    assert_eq!(log[1]["NINJAREC_START_UNIX_MS"], "", "no clock known");
    assert_eq!(log[0]["NINJAREC_DURATION"], "1.001");
    assert_eq!(log[2]["NINJAREC_CAUSE"], "end");
}

fn write_aged(dir: &Path, name: &str, bytes: u64, age: Duration) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(bytes).expect("size");
    file.set_modified(SystemTime::now() - age).expect("mtime");
    path
}

#[test]
fn retention_deletes_only_old_finished_recordings() {
    const DAY: Duration = Duration::from_secs(86_400);
    let dir = TestDir::new("retention");
    // Sparse files: sizes in MB without writing them.
    let expired = write_aged(&dir, "room_cam_1700000000.ts", 5 * MB, 9 * DAY);
    let oldest = write_aged(&dir, "room_cam_1700100000_1.mkv", 5 * MB, 5 * DAY);
    let older = write_aged(&dir, "room_mic_1700200000.webm", 5 * MB, 4 * DAY);
    let recent = write_aged(&dir, "room_cam_1700300000.ts", 5 * MB, DAY);
    let live = write_aged(&dir, "room_live_1700000000.ts", 50 * MB, 30 * DAY);
    let timeline = write_aged(&dir, "room_1700000000.timeline.jsonl", MB, 30 * DAY);
    let foreign = write_aged(&dir, "holiday_1700000000.ts", 50 * MB, 30 * DAY);
    let in_use = HashSet::from([live.clone()]);

    let policy = RetentionPolicy::from_flags(Some(7), Some(6));
    let report = retention::apply(&dir, "room", &in_use, &policy, SystemTime::now());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report.deleted,
        [
            (expired.clone(), 5 * MB),
            (oldest.clone(), 5 * MB),
            (older.clone(), 5 * MB)
        ]
    );
    for gone in [&expired, &oldest, &older] {
        assert!(!gone.exists(), "{}", gone.display());
    }
    for kept in [&recent, &live, &timeline, &foreign] {
        assert!(kept.exists(), "{}", kept.display());
    }

    // A second pass has nothing left to do.
    let again = retention::apply(&dir, "room", &in_use, &policy, SystemTime::now());
    assert!(again.deleted.is_empty() && again.errors.is_empty());
}

#[test]
fn the_disk_guard_measures_a_real_folder() {
    let dir = TestDir::new("disk");
    let free = free_bytes(&dir).expect("statvfs");
    assert_eq!(DiskGuard::new(dir.path(), 0).check(), Ok(()));
    let err = DiskGuard::new(dir.path(), free / MB + 1)
        .may_start(free)
        .expect_err("one MB more than free");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
}
