//! `GET /`: the status page, one self-contained HTML document.
//!
//! Why one static page: the recorder often runs where nothing but its own port is reachable
//! (no internet for a CDN, no second service for a dashboard). The page holds no data; its
//! script polls `status.json` every 2 s and builds the DOM with `textContent` only, so stream
//! IDs and error texts from the network are never parsed as HTML. It is served with a
//! Content-Security-Policy that allows nothing but itself and requests to its own origin.

/// The page: inline CSS and JS, no external resources.
///
/// Why a `const`: it never changes at run time, so it is compiled in and served as is.
pub const STATUS_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ninjarec status</title>
<style>
:root {
  --fg: #1d2430; --muted: #6a7383; --bg: #f5f6f8; --card: #fff; --line: #e3e6eb;
  --ok: #1a7f37; --warn: #b35900; --bad: #c62828; --accent: #2f5bd3;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 12px; padding: 12px 20px;
         background: #1d2430; color: #fff; }
header h1 { margin: 0; font-size: 18px; font-weight: 600; }
header .target { color: #c9d1dd; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
header .updated { margin-left: auto; color: #c9d1dd; font-size: 12px; white-space: nowrap; }
main { padding: 16px 20px; }
#banner { display: none; margin: 0 0 12px; padding: 8px 12px; border-radius: 6px;
          background: #fde8e8; color: var(--bad); border: 1px solid #f3b5b5; font-weight: 600; }
#banner.show { display: block; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
           gap: 10px; margin-bottom: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
               letter-spacing: .04em; }
.card .value { font-size: 20px; font-weight: 600; margin-top: 2px; white-space: nowrap;
               overflow: hidden; text-overflow: ellipsis; }
.card .sub { color: var(--muted); font-size: 12px; white-space: nowrap; overflow: hidden;
             text-overflow: ellipsis; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
.card.bad { border-color: #f3b5b5; background: #fff6f6; }
.tablewrap { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
             overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 8px; text-align: left; white-space: nowrap; border-bottom: 1px solid var(--line); }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; }
td.num, th.num { text-align: right; }
tbody tr:last-child td { border-bottom: none; }
td.stream { font-weight: 600; max-width: 180px; overflow: hidden; text-overflow: ellipsis; }
td.file { max-width: 170px; overflow: hidden; text-overflow: ellipsis; color: var(--muted); }
td.err { color: var(--bad); min-width: 140px; max-width: 240px; white-space: normal;
          overflow-wrap: anywhere; font-size: 12px; }
td.empty { text-align: center; color: var(--muted); padding: 18px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; background: #eceff3; color: var(--muted); }
.badge.recording { background: #e3f4e8; color: var(--ok); }
.badge.connecting { background: #fff1dc; color: var(--warn); }
.badge.waiting-for-disk { background: #fde8e8; color: var(--bad); }
.stale { opacity: .55; }
footer { color: var(--muted); font-size: 12px; padding: 0 20px 16px; }
</style>
</head>
<body>
<header>
  <h1>ninjarec</h1>
  <span class="target" id="target"></span>
  <span class="updated" id="updated">loading…</span>
</header>
<main>
  <div id="banner" role="alert"></div>
  <section class="summary" id="summary">
    <div class="card" id="c-rec"><div class="label">Recording</div><div class="value" id="v-rec">–</div><div class="sub" id="s-rec"></div></div>
    <div class="card" id="c-disk"><div class="label">Disk free</div><div class="value" id="v-disk">–</div><div class="sub" id="s-disk"></div></div>
    <div class="card" id="c-sig"><div class="label">Signaling</div><div class="value" id="v-sig">–</div><div class="sub" id="s-sig"></div></div>
    <div class="card" id="c-cpu"><div class="label">CPU</div><div class="value" id="v-cpu">–</div><div class="sub" id="s-cpu"></div></div>
    <div class="card" id="c-mem"><div class="label">Memory (RSS)</div><div class="value" id="v-mem">–</div><div class="sub" id="s-mem"></div></div>
    <div class="card" id="c-up" hidden><div class="label">Upload</div><div class="value" id="v-up">–</div><div class="sub" id="s-up"></div></div>
  </section>
  <div class="tablewrap">
    <table>
      <thead><tr>
        <th>Stream</th><th>State</th><th>Codec</th><th class="num">Duration</th>
        <th class="num">Bitrate</th><th class="num">Frames</th><th class="num">Dropped</th>
        <th class="num">Audio</th><th class="num">Lost</th><th>File</th>
        <th class="num">Size</th><th>Errors</th>
      </tr></thead>
      <tbody id="rows"><tr><td class="empty" colspan="12">loading…</td></tr></tbody>
    </table>
  </div>
</main>
<footer>Refreshes every 2 s · machine-readable: <a href="status.json">status.json</a>, <a href="metrics">metrics</a></footer>
<script>
"use strict";
// Everything from the recorder is inserted with textContent: never as HTML.
const POLL_MS = 2000;
let prev = null;        // previous snapshot, for the CPU rate
let failedSince = null; // when fetches started failing

const $ = (id) => document.getElementById(id);
function el(tag, cls, text, title) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (title) e.title = String(title);
  return e;
}
function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
function bytes(b) {
  b = num(b); if (b === null) return "–";
  const u = [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["kB", 1e3]];
  for (const [n, f] of u) if (b >= f) return (b / f).toFixed(1) + " " + n;
  return b + " B";
}
function bitrate(b) {
  b = num(b); if (b === null || b < 0) return "–";
  if (b >= 1e6) return (b / 1e6).toFixed(2) + " Mb/s";
  if (b >= 1e3) return (b / 1e3).toFixed(0) + " kb/s";
  return b.toFixed(0) + " b/s";
}
function duration(s) {
  s = num(s); if (s === null || s < 0) return "–";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60;
  return h + ":" + String(m).padStart(2, "0") + ":" + String(x).padStart(2, "0");
}
function count(n) { n = num(n); return n === null ? "–" : n.toLocaleString("en-US"); }
function basename(p) { return typeof p === "string" ? p.split("/").pop() : ""; }
function setCard(id, value, sub, level) {
  $("v-" + id).textContent = value;
  $("s-" + id).textContent = sub || "";
  $("v-" + id).className = "value" + (level ? " " + level : "");
  $("c-" + id).className = "card" + (level === "bad" ? " bad" : "");
}

function renderSummary(s) {
  const streams = Array.isArray(s.streams) ? s.streams : [];
  const rec = streams.filter((x) => x.state === "recording").length;
  setCard("rec", rec + " of " + streams.length,
          count(s.finished) + " finished" + (s.refused_low_disk ? " · " + count(s.refused_low_disk) + " refused (low disk)" : ""),
          streams.length && rec < streams.length ? "warn" : (rec ? "ok" : ""));
  const free = num(s.disk_free_bytes), min = num(s.min_free_bytes);
  if (free === null) setCard("disk", "unknown", "min " + bytes(min), "warn");
  else setCard("disk", bytes(free), (free < min ? "below min " : "min ") + bytes(min),
               free < min ? "bad" : (free < 2 * min ? "warn" : "ok"));
  setCard("sig", s.signaling_connected ? "connected" : "disconnected", "", s.signaling_connected ? "ok" : "bad");
  const p = s.process || {};
  let cpu = "–";
  if (prev && prev.process && num(s.taken_unix_ms) !== null && s.taken_unix_ms > prev.taken_unix_ms) {
    const d = (p.cpu_seconds - prev.process.cpu_seconds) / ((s.taken_unix_ms - prev.taken_unix_ms) / 1000);
    if (isFinite(d) && d >= 0) cpu = (d * 100).toFixed(0) + " %";
  }
  let cpuSub = (num(p.cpu_seconds) === null ? "–" : p.cpu_seconds.toFixed(1)) + " s in total";
  if (cpu === "–" && num(p.cpu_seconds) !== null && s.taken_unix_ms > s.started_unix_ms) {
    // No earlier snapshot yet: the average since the start.
    cpu = (100 * p.cpu_seconds / ((s.taken_unix_ms - s.started_unix_ms) / 1000)).toFixed(0) + " %";
    cpuSub += " · average";
  }
  setCard("cpu", cpu, cpuSub, "");
  setCard("mem", bytes(p.rss_bytes), count(p.open_fds) + " open files", "");
  $("target").textContent = (s.target || "") + (s.output_dir ? " → " + s.output_dir : "");
  const u = s.upload;
  $("c-up").hidden = !u;
  if (u) {
    const pending = num(u.pending_files) || 0;
    let sub = count(u.uploaded_files) + " uploaded · " + bytes(u.pending_bytes) + " waiting";
    if (u.last_error && u.failing) sub += " · " + u.last_error;
    setCard("up", count(pending) + " pending", sub,
            u.failing ? "bad" : (pending > 10 ? "warn" : "ok"));
  }
}

function renderRows(s) {
  const tbody = $("rows");
  const rows = [];
  const streams = Array.isArray(s.streams) ? s.streams : [];
  for (const x of streams) {
    const tr = el("tr");
    tr.dataset.stream = String(x.stream_id);
    tr.append(el("td", "stream", x.stream_id, x.stream_id));
    const st = el("td");
    st.append(el("span", "badge " + (/^[a-z-]+$/.test(x.state) ? x.state : ""), x.state));
    tr.append(st);
    tr.append(el("td", "", x.codec || "audio only"));
    tr.append(el("td", "num", duration(x.duration_seconds), "recording for " + duration(x.age_seconds)));
    tr.append(el("td", "num", bitrate(x.bitrate_bps)));
    tr.append(el("td", "num", count(x.frames_written)));
    tr.append(el("td", "num" + (x.frames_dropped ? " warn" : ""), count(x.frames_dropped)));
    tr.append(el("td", "num" + (x.audio_dropped ? " warn" : ""), count(x.audio_written) + (x.audio_dropped ? " (−" + count(x.audio_dropped) + ")" : ""),
                 count(x.audio_dropped) + " audio packets dropped"));
    tr.append(el("td", "num" + (x.packets_lost ? " warn" : ""), count(x.packets_lost), count(x.keyframe_requests) + " keyframe requests"));
    tr.append(el("td", "file", x.path ? basename(x.path) + (x.segment ? " #" + x.segment : "") : "–", x.path));
    tr.append(el("td", "num", bytes(x.file_bytes), bytes(x.bytes_total) + " in all files"));
    const errs = [];
    if (x.disk_error) errs.push(x.disk_error);
    if (x.media_dropped) errs.push(count(x.media_dropped) + " media events dropped");
    tr.append(el("td", "err", errs.length ? errs.join(" · ") : "", errs.join("\n")));
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "empty", "no recordings yet — waiting for publishers"));
    tr.firstChild.colSpan = 12;
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

async function poll() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), POLL_MS * 2);
  try {
    const r = await fetch("status.json", { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    renderSummary(s);
    renderRows(s);
    prev = s;
    failedSince = null;
    $("banner").className = "";
    for (const e of document.querySelectorAll(".stale")) e.classList.remove("stale");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (failedSince === null) failedSince = new Date();
    const b = $("banner");
    b.textContent = "Recorder unreachable since " + failedSince.toLocaleTimeString() +
      " (" + (e && e.message ? e.message : e) + ")" + (prev ? ": showing the last values" : "");
    b.className = "show";
    document.querySelector(".summary").classList.toggle("stale", prev !== null);
    document.querySelector(".tablewrap").classList.toggle("stale", prev !== null);
    $("updated").textContent = "unreachable";
    if (prev === null) {
      const tr = el("tr");
      tr.append(el("td", "empty", "no data: the recorder does not answer"));
      tr.firstChild.colSpan = 12;
      $("rows").replaceChildren(tr);
    }
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}
poll();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_contained() {
        // Nothing loaded from elsewhere: no absolute URLs, no external scripts or styles.
        for bad in [
            "http://",
            "https://",
            "//cdn",
            "<script src",
            "<link",
            "@import",
        ] {
            assert!(!STATUS_PAGE.contains(bad), "page contains {bad:?}");
        }
        // Data goes in as text only.
        assert!(!STATUS_PAGE.contains("innerHTML"));
        assert!(!STATUS_PAGE.contains("insertAdjacentHTML"));
        assert!(!STATUS_PAGE.contains("document.write"));
        assert!(STATUS_PAGE.contains("fetch(\"status.json\""));
        assert!(STATUS_PAGE.contains("no recordings yet — waiting for publishers"));
        assert!(STATUS_PAGE.contains("unreachable"));
        assert_eq!(STATUS_PAGE.matches("<script>").count(), 1);
        assert!(STATUS_PAGE.trim_end().ends_with("</html>"));
    }
}
