//! `GET /metrics`: a [`Snapshot`] in the Prometheus text exposition format 0.0.4.
//!
//! Why this format: it is what Prometheus, VictoriaMetrics, Grafana Agent and most monitoring
//! stacks scrape, so an operator can alert on "a publisher is not being recorded", "frames are
//! being dropped" or "the disk fills up" without any ninjarec-specific tooling.
//!
//! Names are prefixed `ninjarec_`, use base units (bytes, seconds), and counters end in
//! `_total`. Per-stream series carry `stream="<id>"`; stream IDs come from the network, so label
//! values are escaped (`\\`, `\"`, `\n`), other control characters are replaced by U+FFFD, and
//! should two IDs end up with the same label value, the later one gets a ` (2)` suffix so no
//! series is ever written twice.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::snapshot::{Snapshot, StreamStatus};

/// The `Content-Type` of [`render_metrics`]' output, as Prometheus expects it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states a stream can be in (see [`StreamStatus::state`]); each gets a
/// `ninjarec_stream_state` series (1 for the current one, 0 for the others) so that an alert can
/// match a state that is *not* current.
const STATES: [&str; 4] = ["connecting", "recording", "waiting-for-disk", "stopping"];

/// Renders `s` in the Prometheus text format 0.0.4 (one `# HELP` and `# TYPE` line per family,
/// every family once, its samples right after).
///
/// Why a hand-written renderer: the set of series is small and fixed, and the whole value is
/// already in one plain struct, so a metrics registry would only add a second copy of the state.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut w = Writer::default();
    let labels = stream_labels(&s.streams);

    w.family(
        "ninjarec_build_info",
        "gauge",
        "Always 1; the version label says which ninjarec is running.",
    );
    w.sample(
        "ninjarec_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );

    w.gauge(
        "ninjarec_start_time_seconds",
        "When the recorder started (Unix seconds).",
        ms_to_s(s.started_unix_ms),
    );
    w.gauge(
        "ninjarec_status_time_seconds",
        "When these values were taken (Unix seconds); stale values mean a stuck recorder.",
        ms_to_s(s.taken_unix_ms),
    );
    w.gauge(
        "ninjarec_signaling_connected",
        "1 while connected to the handshake server, else 0.",
        bool_value(s.signaling_connected),
    );
    w.gauge(
        "ninjarec_streams",
        "Publishers known to the recorder (recording, connecting, waiting or stopping).",
        s.streams.len() as f64,
    );
    w.gauge(
        "ninjarec_recordings_active",
        "Publishers being recorded right now (state recording).",
        s.streams.iter().filter(|x| x.state == "recording").count() as f64,
    );
    w.counter(
        "ninjarec_recordings_finished_total",
        "Recordings finished since the start.",
        s.finished as f64,
    );
    w.counter(
        "ninjarec_recordings_refused_low_disk_total",
        "Publishers not recorded because free disk space was below --min-free-mb.",
        s.refused_low_disk as f64,
    );
    if let Some(free) = s.disk_free_bytes {
        w.gauge(
            "ninjarec_disk_free_bytes",
            "Free bytes (for unprivileged users) on the output folder's file system.",
            free as f64,
        );
    }
    w.gauge(
        "ninjarec_disk_min_free_bytes",
        "--min-free-mb in bytes: below it no new recording starts.",
        s.min_free_bytes as f64,
    );
    if let Some(u) = &s.udp_port {
        let name = "ninjarec_udp_port_datagrams_total";
        w.family(
            name,
            "counter",
            "--udp-port: datagrams on the shared media port, by what became of them (received: all; dropped_unknown: from no known publisher, or for a connection just closed; dropped_queue_full: their connection was not keeping up; dropped_buffer_full: the kernel's receive buffer for the port was full, so they were never read).",
        );
        let port = u.port.to_string();
        for (result, v) in [
            ("received", u.received),
            ("dropped_unknown", u.unknown),
            ("dropped_queue_full", u.queue_full),
            ("dropped_buffer_full", u.kernel_dropped),
        ] {
            w.sample(name, &[("port", &port), ("result", result)], v as f64);
        }
        let name = "ninjarec_udp_port_sends_dropped_total";
        w.family(
            name,
            "counter",
            "--udp-port: datagrams of ours not sent because the shared port's send buffer was full (waiting would stall the connection; ICE, DTLS and RTCP resend).",
        );
        w.sample(name, &[("port", &port)], u.send_dropped as f64);
        let name = "ninjarec_udp_port_media_packets_total";
        w.family(
            name,
            "counter",
            "--udp-port: RTP packets of recorded tracks, by where they were decrypted (here: where the port is read; not_here: handed to webrtc-rs, no keys yet or failed authentication).",
        );
        for (result, v) in [
            ("decrypted_here", u.decrypted_here),
            ("not_decrypted_here", u.not_decrypted_here),
        ] {
            w.sample(name, &[("port", &port), ("result", result)], v as f64);
        }
        let name = "ninjarec_udp_port_feedback_dropped_total";
        w.family(
            name,
            "counter",
            "--udp-port: RTCP feedback (NACKs, receiver reports, TWCC) the port made that was not sent: no room in a session's queue, no track yet to send it on, or webrtc-rs refused it or had no room for 50 ms.",
        );
        w.sample(name, &[("port", &port)], u.feedback_dropped as f64);
    }
    if let Some(t) = &s.tcp_port {
        let name = "ninjarec_tcp_port_streams_total";
        w.family(
            name,
            "counter",
            "--tcp-port: streams publishers opened to the shared ICE-TCP port, by what became of them (accepted: all; routed: handed to the connection their first check named; refused: closed, no check in time, naming no connection, or too many waiting).",
        );
        let port = t.port.to_string();
        for (result, v) in [
            ("accepted", t.accepted),
            ("routed", t.routed),
            ("refused", t.refused),
        ] {
            w.sample(name, &[("port", &port), ("result", result)], v as f64);
        }
        let name = "ninjarec_tcp_port_frames_dropped_total";
        w.family(
            name,
            "counter",
            "--tcp-port: frames of ours dropped because a publisher's stream was not taking them (its send queue was full; waiting would stall the connection).",
        );
        w.sample(name, &[("port", &port)], t.frames_dropped as f64);
    }
    if let Some(u) = &s.upload {
        w.gauge(
            "ninjarec_upload_pending_files",
            "--upload: finished files not yet confirmed in the bucket (uploading ones included).",
            u.pending_files as f64,
        );
        w.gauge(
            "ninjarec_upload_pending_bytes",
            "--upload: bytes of those files.",
            u.pending_bytes as f64,
        );
        w.gauge(
            "ninjarec_upload_in_progress",
            "--upload: uploads in progress.",
            u.uploading as f64,
        );
        w.counter(
            "ninjarec_upload_files_total",
            "--upload: files confirmed in the bucket (size and checksum) since the start.",
            u.uploaded_files as f64,
        );
        w.counter(
            "ninjarec_upload_bytes_total",
            "--upload: bytes confirmed in the bucket since the start.",
            u.uploaded_bytes as f64,
        );
        w.counter(
            "ninjarec_upload_failures_total",
            "--upload: failed upload attempts since the start (each is retried).",
            u.failed_attempts as f64,
        );
        w.counter(
            "ninjarec_upload_deleted_local_total",
            "--upload-delete-local: files deleted locally after a confirmed upload.",
            u.deleted_local as f64,
        );
        w.gauge(
            "ninjarec_upload_failing",
            "--upload: 1 from a failed try until the store answers again (retries go on), else 0.",
            bool_value(u.failing),
        );
        if let Some(ms) = u.last_success_unix_ms {
            w.gauge(
                "ninjarec_upload_last_success_time_seconds",
                "--upload: when the last upload was confirmed (Unix seconds).",
                ms_to_s(ms),
            );
        }
        if let Some(ms) = u.last_error_unix_ms {
            w.gauge(
                "ninjarec_upload_last_error_time_seconds",
                "--upload: when the last upload failed (Unix seconds); the message is in /status.json.",
                ms_to_s(ms),
            );
        }
    }
    w.counter(
        "ninjarec_process_cpu_seconds_total",
        "User and system CPU time of the process, seconds.",
        s.process.cpu_seconds,
    );
    w.gauge(
        "ninjarec_process_resident_memory_bytes",
        "Resident set size of the process, bytes.",
        s.process.rss_bytes as f64,
    );
    w.gauge(
        "ninjarec_process_open_fds",
        "Open file descriptors of the process.",
        s.process.open_fds as f64,
    );

    // Per stream: one family at a time, every stream's sample in it.
    type Get = fn(&StreamStatus) -> Option<f64>;
    let per_stream: [(&str, &str, &str, Get); 16] = [
        (
            "ninjarec_stream_bitrate_bits_per_second",
            "gauge",
            "Incoming media bit rate over the last few seconds, bits per second.",
            |x| Some(x.bitrate_bps),
        ),
        (
            "ninjarec_stream_age_seconds",
            "gauge",
            "Seconds since this recording started (wall clock).",
            |x| Some(x.age_seconds),
        ),
        (
            "ninjarec_stream_file_duration_seconds",
            "gauge",
            "Media seconds written to the current file.",
            |x| Some(x.duration_seconds),
        ),
        (
            "ninjarec_stream_video_frames_written_total",
            "counter",
            "Video frames written.",
            |x| Some(x.frames_written as f64),
        ),
        (
            "ninjarec_stream_video_frames_dropped_total",
            "counter",
            "Video frames dropped (damaged by loss, or refused).",
            |x| Some(x.frames_dropped as f64),
        ),
        (
            "ninjarec_stream_audio_packets_written_total",
            "counter",
            "Opus packets written.",
            |x| Some(x.audio_written as f64),
        ),
        (
            "ninjarec_stream_audio_packets_dropped_total",
            "counter",
            "Opus packets dropped.",
            |x| Some(x.audio_dropped as f64),
        ),
        (
            "ninjarec_stream_rtp_packets_lost_total",
            "counter",
            "RTP packets that never arrived, after repair.",
            |x| Some(x.packets_lost as f64),
        ),
        (
            "ninjarec_stream_keyframe_requests_total",
            "counter",
            "Keyframe requests (PLI) sent to the publisher.",
            |x| Some(x.keyframe_requests as f64),
        ),
        (
            "ninjarec_stream_media_events_dropped_total",
            "counter",
            "Media events dropped because the recorder fell behind.",
            |x| Some(x.media_dropped as f64),
        ),
        (
            "ninjarec_stream_av_correction_seconds",
            "gauge",
            "A/V correction asked for by the Sender Reports, seconds (absent until known).",
            |x| x.av_correction_ms.map(|ms| ms / 1000.0),
        ),
        (
            "ninjarec_stream_implausible_sender_reports_total",
            "counter",
            "Sender Reports ignored: they placed audio and video seconds apart.",
            |x| Some(x.implausible_reports as f64),
        ),
        (
            "ninjarec_stream_file_bytes",
            "gauge",
            "Bytes of the file being written.",
            |x| Some(x.file_bytes as f64),
        ),
        (
            "ninjarec_stream_written_bytes_total",
            "counter",
            "Bytes written by this recording, all its files.",
            |x| Some(x.bytes_total as f64),
        ),
        (
            "ninjarec_stream_segment",
            "gauge",
            "Segment number of the file being written (0 without --segment-*).",
            |x| Some(x.segment as f64),
        ),
        (
            "ninjarec_stream_disk_error",
            "gauge",
            "1 when the last write of this recording failed, else 0.",
            |x| Some(bool_value(x.disk_error.is_some())),
        ),
    ];
    for (name, kind, help, get) in per_stream {
        let samples: Vec<(&str, f64)> = s
            .streams
            .iter()
            .zip(&labels)
            .filter_map(|(x, label)| get(x).map(|v| (label.as_str(), v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        w.family(name, kind, help);
        for (label, v) in samples {
            w.sample(name, &[("stream", label)], v);
        }
    }

    if !s.streams.is_empty() {
        let name = "ninjarec_stream_state";
        w.family(
            name,
            "gauge",
            "1 for the state the stream is in (connecting, recording, waiting-for-disk, stopping), 0 for the others.",
        );
        for (x, label) in s.streams.iter().zip(&labels) {
            for state in STATES {
                w.sample(
                    name,
                    &[("stream", label), ("state", state)],
                    bool_value(x.state == state),
                );
            }
            if !STATES.contains(&x.state.as_str()) {
                let state = clean_label_text(&x.state);
                w.sample(name, &[("stream", label), ("state", &state)], 1.0);
            }
        }
    }
    w.out
}

/// Text output with the family bookkeeping.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes only backslash and newline; ours are constants without either.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
///
/// Why public: the escaping is the one place where untrusted input (stream IDs) meets the
/// format, so tests and other renderers should use exactly this.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    escape_label_value_into(&mut out, v);
    out
}

fn escape_label_value_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The text of a label value before escaping: control characters other than newline (which the
/// format escapes) become U+FFFD, since some parsers take a bare `\r` for a line end.
fn clean_label_text(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// One label value per stream, in order, all different (see the module docs).
fn stream_labels(streams: &[StreamStatus]) -> Vec<String> {
    let mut seen = HashSet::new();
    streams
        .iter()
        .map(|x| {
            let base = clean_label_text(&x.stream_id);
            let mut label = base.clone();
            let mut n = 2u64;
            while !seen.insert(label.clone()) {
                label = format!("{base} ({n})");
                n += 1;
            }
            label
        })
        .collect()
}

/// A sample value as the format spells it (`NaN`, `+Inf`, `-Inf`, or a decimal number).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::snapshot::ProcessStats;
    use std::collections::HashMap;

    fn stream(id: &str, state: &str) -> StreamStatus {
        StreamStatus {
            stream_id: id.to_owned(),
            state: state.to_owned(),
            codec: Some("H.264".into()),
            path: Some(format!("/rec/x_{id}.ts")),
            bitrate_bps: 2_500_000.5,
            frames_written: 300,
            frames_dropped: 2,
            audio_written: 500,
            packets_lost: 7,
            av_correction_ms: Some(-12.5),
            implausible_reports: 1,
            file_bytes: 1_000_000,
            bytes_total: 3_000_000,
            ..StreamStatus::default()
        }
    }

    fn snapshot(streams: Vec<StreamStatus>) -> Snapshot {
        Snapshot {
            taken_unix_ms: 1_700_000_001_000,
            started_unix_ms: 1_700_000_000_000,
            target: "room".into(),
            signaling_connected: true,
            output_dir: "/rec".into(),
            disk_free_bytes: Some(10_000_000_000),
            min_free_bytes: 500_000_000,
            process: ProcessStats {
                cpu_seconds: 12.25,
                rss_bytes: 50_000_000,
                open_fds: 31,
            },
            streams,
            finished: 3,
            refused_low_disk: 1,
            upload: Some(crate::upload::UploadStatus {
                pending_files: 3,
                pending_bytes: 4_000_000,
                uploaded_files: 11,
                failed_attempts: 2,
                retry_in_seconds: Some(4.0),
                failing: true,
                last_error_unix_ms: Some(1_700_000_100_000),
                ..Default::default()
            }),
            udp_port: Some(crate::status::snapshot::UdpPortStatus {
                port: 5004,
                received: 90_000,
                unknown: 12,
                queue_full: 3,
                send_dropped: 2,
                kernel_dropped: 4,
                decrypted_here: 80_000,
                not_decrypted_here: 5,
                feedback_dropped: 1,
            }),
            tcp_port: Some(crate::status::snapshot::TcpPortStatus {
                port: 5005,
                accepted: 9,
                routed: 7,
                refused: 2,
                frames_dropped: 1,
            }),
        }
    }

    /// A sample line, parsed strictly after the text format's grammar.
    #[derive(Debug)]
    struct Line {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    fn parse_sample(line: &str) -> Result<Line, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line}"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or("label without =")?;
                let key = &rest[..eq];
                if !is_name(key, false) {
                    return Err(format!("bad label name {key:?}"));
                }
                let mut chars = rest[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("label value not quoted".into());
                }
                let mut value = String::new();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        '"' => {
                            end = Some(eq + 1 + i + 1);
                            break;
                        }
                        '\n' | '\r' => return Err("raw line break in label value".into()),
                        c => value.push(c),
                    }
                }
                let end = end.ok_or("unterminated label value")?;
                labels.push((key.to_owned(), value));
                rest = &rest[end..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err(format!("junk after label: {rest:?}"));
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before value: {rest:?}"))?;
        let value = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
        };
        Ok(Line {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    /// Checks the whole exposition: every line a comment or a valid sample, one HELP and one
    /// TYPE per family before its samples, samples of a family together, no series twice.
    fn check(text: &str) -> Vec<Line> {
        assert!(text.ends_with('\n'), "ends with a newline");
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = HashSet::new();
        let mut closed = HashSet::new();
        let mut current: Option<String> = None;
        let mut series = HashSet::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("");
                assert!(helps.insert(name.to_owned()), "HELP twice for {name}");
                assert!(!types.contains_key(name), "HELP after TYPE for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split(' ');
                let (name, kind) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                assert!(
                    ["counter", "gauge"].contains(&kind),
                    "type {kind:?} of {name}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice for {name}"
                );
                if let Some(prev) = current.replace(name.to_owned()) {
                    closed.insert(prev);
                }
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert_eq!(
                current.as_deref(),
                Some(sample.name.as_str()),
                "sample outside its family (no TYPE before it?): {line:?}"
            );
            assert!(!closed.contains(&sample.name), "family split: {line:?}");
            let kind = &types[&sample.name];
            assert!(sample.name.starts_with("ninjarec_"), "{line:?}");
            assert_eq!(
                kind == "counter",
                sample.name.ends_with("_total"),
                "counters and only counters end in _total: {line:?}"
            );
            if kind == "counter" {
                assert!(sample.value >= 0.0, "negative counter {line:?}");
            }
            let mut key = sample.labels.clone();
            key.sort();
            assert!(
                series.insert((sample.name.clone(), key)),
                "series twice: {line:?}"
            );
            out.push(sample);
        }
        out
    }

    fn value(lines: &[Line], name: &str, stream: Option<&str>) -> Option<f64> {
        lines
            .iter()
            .find(|l| {
                l.name == name
                    && stream.is_none_or(|s| {
                        l.labels
                            .iter()
                            .any(|(k, v)| k == "stream" && v.as_str() == s)
                    })
            })
            .map(|l| l.value)
    }

    #[test]
    fn every_line_parses_and_carries_the_values() {
        let s = snapshot(vec![
            stream("cam1", "recording"),
            stream("cam2", "connecting"),
        ]);
        let text = render_metrics(&s);
        let lines = check(&text);
        let v = |n, s| value(&lines, n, s);
        assert_eq!(v("ninjarec_process_cpu_seconds_total", None), Some(12.25));
        assert_eq!(v("ninjarec_process_open_fds", None), Some(31.0));
        assert_eq!(v("ninjarec_disk_free_bytes", None), Some(1e10));
        assert_eq!(v("ninjarec_disk_min_free_bytes", None), Some(5e8));
        assert_eq!(v("ninjarec_recordings_active", None), Some(1.0));
        assert_eq!(v("ninjarec_streams", None), Some(2.0));
        assert_eq!(v("ninjarec_recordings_finished_total", None), Some(3.0));
        assert_eq!(
            v("ninjarec_recordings_refused_low_disk_total", None),
            Some(1.0)
        );
        assert_eq!(v("ninjarec_signaling_connected", None), Some(1.0));
        assert_eq!(v("ninjarec_upload_pending_files", None), Some(3.0));
        assert_eq!(v("ninjarec_upload_pending_bytes", None), Some(4e6));
        assert_eq!(v("ninjarec_upload_files_total", None), Some(11.0));
        assert_eq!(v("ninjarec_upload_failures_total", None), Some(2.0));
        assert_eq!(v("ninjarec_upload_failing", None), Some(1.0));
        assert_eq!(
            v("ninjarec_upload_last_error_time_seconds", None),
            Some(1_700_000_100.0)
        );
        assert_eq!(v("ninjarec_upload_last_success_time_seconds", None), None);
        assert_eq!(
            v("ninjarec_start_time_seconds", None),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            v("ninjarec_stream_bitrate_bits_per_second", Some("cam2")),
            Some(2_500_000.5)
        );
        assert_eq!(
            v("ninjarec_stream_av_correction_seconds", Some("cam1")),
            Some(-0.0125)
        );
        assert_eq!(
            v("ninjarec_stream_rtp_packets_lost_total", Some("cam1")),
            Some(7.0)
        );
        assert_eq!(
            v(
                "ninjarec_stream_implausible_sender_reports_total",
                Some("cam1")
            ),
            Some(1.0)
        );
        assert_eq!(
            v("ninjarec_stream_written_bytes_total", Some("cam1")),
            Some(3e6)
        );
        let state = |stream: &str, state: &str| {
            lines
                .iter()
                .find(|l| {
                    l.name == "ninjarec_stream_state"
                        && l.labels.contains(&("stream".into(), stream.into()))
                        && l.labels.contains(&("state".into(), state.into()))
                })
                .map(|l| l.value)
        };
        assert_eq!(state("cam1", "recording"), Some(1.0));
        assert_eq!(state("cam1", "connecting"), Some(0.0));
        assert_eq!(state("cam2", "connecting"), Some(1.0));
        assert_eq!(state("cam2", "recording"), Some(0.0));
        let port = |result: &str| {
            lines
                .iter()
                .find(|l| {
                    l.name == "ninjarec_udp_port_datagrams_total"
                        && l.labels.contains(&("port".into(), "5004".into()))
                        && l.labels.contains(&("result".into(), result.into()))
                })
                .map(|l| l.value)
        };
        assert_eq!(port("received"), Some(90_000.0));
        assert_eq!(port("dropped_unknown"), Some(12.0));
        assert_eq!(port("dropped_queue_full"), Some(3.0));
        assert_eq!(port("dropped_buffer_full"), Some(4.0));
        let sends = lines
            .iter()
            .find(|l| l.name == "ninjarec_udp_port_sends_dropped_total")
            .map(|l| l.value);
        assert_eq!(sends, Some(2.0));
        let media = |result: &str| {
            lines
                .iter()
                .find(|l| {
                    l.name == "ninjarec_udp_port_media_packets_total"
                        && l.labels.contains(&("result".into(), result.into()))
                })
                .map(|l| l.value)
        };
        assert_eq!(media("decrypted_here"), Some(80_000.0));
        assert_eq!(media("not_decrypted_here"), Some(5.0));
        let feedback = lines
            .iter()
            .find(|l| l.name == "ninjarec_udp_port_feedback_dropped_total")
            .map(|l| l.value);
        assert_eq!(feedback, Some(1.0));
        let tcp = |result: &str| {
            lines
                .iter()
                .find(|l| {
                    l.name == "ninjarec_tcp_port_streams_total"
                        && l.labels.contains(&("port".into(), "5005".into()))
                        && l.labels.contains(&("result".into(), result.into()))
                })
                .map(|l| l.value)
        };
        assert_eq!(
            (tcp("accepted"), tcp("routed"), tcp("refused")),
            (Some(9.0), Some(7.0), Some(2.0))
        );
        let dropped = lines
            .iter()
            .find(|l| l.name == "ninjarec_tcp_port_frames_dropped_total")
            .map(|l| l.value);
        assert_eq!(dropped, Some(1.0));
    }

    #[test]
    fn absent_values_are_omitted_not_zeroed() {
        let mut a = stream("a", "connecting");
        a.av_correction_ms = None;
        let mut s = snapshot(vec![a, stream("b", "recording")]);
        s.disk_free_bytes = None;
        s.udp_port = None;
        let lines = check(&render_metrics(&s));
        assert_eq!(value(&lines, "ninjarec_disk_free_bytes", None), None);
        assert!(
            !lines
                .iter()
                .any(|l| l.name == "ninjarec_udp_port_datagrams_total")
        );
        assert_eq!(
            value(&lines, "ninjarec_stream_av_correction_seconds", Some("a")),
            None
        );
        assert_eq!(
            value(&lines, "ninjarec_stream_av_correction_seconds", Some("b")),
            Some(-0.0125)
        );
        // No stream at all: no per-stream family (a TYPE without samples is legal, but noise).
        let text = render_metrics(&snapshot(Vec::new()));
        check(&text);
        assert!(!text.contains("ninjarec_stream_"), "{text}");
    }

    #[test]
    fn hostile_stream_ids_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), r"x\ny");
        assert_eq!(escape_label_value("plain-id_1"), "plain-id_1");

        let ids = [
            "evil\"} ninjarec_fake 1\n# TYPE x counter",
            "back\\slash\\",
            "new\nline",
            "cr\rhere",
            "émoji 🎥 ok",
            "",
        ];
        let s = snapshot(ids.iter().map(|id| stream(id, "recording")).collect());
        let text = render_metrics(&s);
        let lines = check(&text);
        assert!(!text.contains("\nninjarec_fake"), "{text}");
        assert!(!text.contains('\r'), "{text}");
        for id in ids {
            let expect = clean_label_text(id);
            assert_eq!(
                value(
                    &lines,
                    "ninjarec_stream_video_frames_written_total",
                    Some(&expect)
                ),
                Some(300.0),
                "stream {id:?}"
            );
        }
    }

    #[test]
    fn ids_that_clean_to_the_same_label_stay_distinct() {
        let s = snapshot(vec![
            stream("a\rb", "recording"),
            stream("a\tb", "recording"),
            stream("a\u{FFFD}b", "recording"),
        ]);
        let lines = check(&render_metrics(&s));
        let labels: Vec<&str> = lines
            .iter()
            .filter(|l| l.name == "ninjarec_stream_file_bytes")
            .flat_map(|l| l.labels.iter().map(|(_, v)| v.as_str()))
            .collect();
        assert_eq!(labels, ["a\u{FFFD}b", "a\u{FFFD}b (2)", "a\u{FFFD}b (3)"]);
    }

    #[test]
    fn unknown_states_and_odd_numbers_stay_valid() {
        let mut a = stream("a", "paused\"\n");
        a.bitrate_bps = f64::NAN;
        a.av_correction_ms = Some(f64::INFINITY);
        let mut b = stream("b", "recording");
        b.bitrate_bps = f64::NEG_INFINITY;
        let lines = check(&render_metrics(&snapshot(vec![a, b])));
        let unknown = lines
            .iter()
            .find(|l| l.labels.contains(&("state".into(), "paused\"\n".into())))
            .map(|l| l.value);
        assert_eq!(unknown, Some(1.0));
        assert!(
            value(&lines, "ninjarec_stream_bitrate_bits_per_second", Some("a"))
                .is_some_and(f64::is_nan)
        );
        assert_eq!(
            value(&lines, "ninjarec_stream_av_correction_seconds", Some("a")),
            Some(f64::INFINITY)
        );
        assert_eq!(
            value(&lines, "ninjarec_stream_bitrate_bits_per_second", Some("b")),
            Some(f64::NEG_INFINITY)
        );
    }
}
