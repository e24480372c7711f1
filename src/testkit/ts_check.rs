//! A conformance checker for the transport streams this crate writes.
//!
//! Unit tests, integration tests, end-to-end tests and `selftest`-style tools all need the same
//! answer to "is this file right?", so the rules of the checklist in `ts-muxing.md` §6 live
//! here once, as plain code over a byte slice (no I/O). It is strict about our own choices
//! (PIDs, descriptors, one Opus packet per PES, no DTS) — it is a checker for our output, not
//! a general demuxer.

use std::collections::HashMap;

use crate::mux::ts::packet::parse_pcr_base;
use crate::mux::ts::pes::parse_pts;
use crate::mux::ts::psi::{OPUS_ES_INFO, crc32_mpeg2};
use crate::mux::ts::{
    AUD, AUDIO_STREAM_ID, PACKET_SIZE, PTS_MASK, STREAM_TYPE_H264, STREAM_TYPE_OPUS,
    VIDEO_STREAM_ID,
};
use crate::testkit::clip::split_annex_b;

/// Limits and leniencies of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Accept a file cut anywhere: a partial last packet and an unfinished last PES are not
    /// violations (they are reported in [`CheckReport::truncated_tail`]).
    pub allow_truncated: bool,
    /// Largest allowed distance between two PCRs, 90 kHz units (TR 101 290: 40 ms).
    pub max_pcr_interval_90k: u64,
    /// Largest allowed PCR advance between two PAT+PMT pairs (100 ms).
    pub max_psi_interval_90k: u64,
    /// How far (90 kHz) the first audio PTS may come before the first video PTS, when both
    /// tracks are present; `None`: any lead. A recording starts with the audio held while
    /// its first keyframe was awaited (up to 2.5 s), so more means audio from somewhere else.
    pub max_audio_lead_90k: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            allow_truncated: false,
            max_pcr_interval_90k: 3_600,
            max_psi_interval_90k: 9_000,
            max_audio_lead_90k: Some(3 * 90_000),
        }
    }
}

/// One PES found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PesInfo {
    /// Byte offset of its first transport packet.
    pub offset: usize,
    /// PTS as written (33 bits).
    pub pts: u64,
    /// Video: holds an IDR slice. Audio: always true.
    pub keyframe: bool,
    /// Elementary stream bytes: the Annex B access unit (AUD included) or the bare Opus packet.
    pub data: Vec<u8>,
}

/// What a check found: the media units, timing facts and every rule broken.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Complete transport packets.
    pub packets: usize,
    /// Complete video PES in order.
    pub video: Vec<PesInfo>,
    /// Complete audio PES (one Opus packet each) in order.
    pub audio: Vec<PesInfo>,
    /// Packets carrying a PCR.
    pub pcrs: usize,
    /// Adaptation-only packets carrying a PCR.
    pub pcr_only: usize,
    /// PAT sections seen.
    pub pats: usize,
    /// Largest PCR step seen (excluding marked discontinuities), 90 kHz units.
    pub max_pcr_interval_90k: u64,
    /// Largest PCR advance between PAT+PMT pairs, 90 kHz units.
    pub max_psi_interval_90k: u64,
    /// PCR jumps marked with discontinuity_indicator.
    pub discontinuities: usize,
    /// The PMT says there is a video / an audio stream.
    pub has_video: bool,
    /// See `has_video`.
    pub has_audio: bool,
    /// Bytes after the last complete packet, plus whether a PES was left unfinished.
    pub truncated_tail: Option<(usize, bool)>,
    /// Every rule broken, in file order (capped at 200 entries).
    pub violations: Vec<String>,
}

impl CheckReport {
    /// True when no rule was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// `b − a` in the 33-bit timestamp space, as a signed distance.
fn delta33(a: u64, b: u64) -> i64 {
    let d = b.wrapping_sub(a) & PTS_MASK;
    if d >= 1 << 32 {
        d as i64 - (1i64 << 33)
    } else {
        d as i64
    }
}

#[derive(Debug)]
struct OpenPes {
    offset: usize,
    rai: bool,
    pcr: bool,
    psi_before: bool,
    /// The PCR in force when the PES started (its PTS must not be before it).
    pcr_at_start: Option<u64>,
    bytes: Vec<u8>,
}

struct Checker<'a> {
    opts: &'a CheckOptions,
    r: CheckReport,
    pmt_pid: Option<u16>,
    pmt_section: Option<Vec<u8>>,
    pcr_pid: Option<u16>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    cc: HashMap<u16, u8>,
    last_pcr: Option<u64>,
    psi_ref: Option<u64>,
    pat_since_video: bool,
    pmt_since_video: bool,
    open: HashMap<u16, OpenPes>,
}

/// Checks a whole file (or a prefix of one with `allow_truncated`).
pub fn check(data: &[u8], opts: &CheckOptions) -> CheckReport {
    let mut c = Checker {
        opts,
        r: CheckReport::default(),
        pmt_pid: None,
        pmt_section: None,
        pcr_pid: None,
        video_pid: None,
        audio_pid: None,
        cc: HashMap::new(),
        last_pcr: None,
        psi_ref: None,
        pat_since_video: false,
        pmt_since_video: false,
        open: HashMap::new(),
    };
    let mut chunks = data.chunks_exact(PACKET_SIZE);
    for (i, p) in chunks.by_ref().enumerate() {
        c.packet(i * PACKET_SIZE, p);
    }
    let tail = chunks.remainder().len();
    let mut unfinished = false;
    let open: Vec<(u16, OpenPes)> = c.open.drain().collect();
    for (pid, pes) in open {
        if Some(pid) == c.video_pid && !pes.bytes.is_empty() {
            // Video PES have no length: the last one ends with the file; when the file was
            // cut it may be incomplete, so only check it when the file is whole.
            if tail == 0 && !opts.allow_truncated {
                c.finish(pid, pes);
            } else {
                unfinished = true;
            }
        } else {
            unfinished = true;
            if !opts.allow_truncated {
                c.violation(format!(
                    "PID {pid:#x}: PES at {} unfinished at end of file",
                    pes.offset
                ));
            }
        }
    }
    if tail != 0 && !opts.allow_truncated {
        c.violation(format!(
            "file length {} is not a multiple of 188",
            data.len()
        ));
    }
    if tail != 0 || unfinished {
        c.r.truncated_tail = Some((tail, unfinished));
    }
    if c.r.packets == 0 {
        c.violation("no complete packet".into());
    }
    if c.r.has_video && c.r.video.is_empty() && !opts.allow_truncated {
        c.violation("PMT lists video but there is no video PES".into());
    }
    if let Some(lead) = opts.max_audio_lead_90k
        && let (Some(v), Some(a)) = (c.r.video.first(), c.r.audio.first())
        && delta33(v.pts, a.pts) < -(lead as i64)
    {
        let msg = format!(
            "first audio PTS {} is more than {lead} before first video PTS {}",
            a.pts, v.pts
        );
        c.violation(msg);
    }
    c.r
}

impl Checker<'_> {
    fn violation(&mut self, msg: String) {
        if self.r.violations.len() < 200 {
            self.r.violations.push(msg);
        }
    }

    fn packet(&mut self, at: usize, p: &[u8]) {
        self.r.packets += 1;
        if p[0] != 0x47 {
            self.violation(format!("@{at}: sync byte {:#04x}", p[0]));
            return;
        }
        if p[1] & 0x80 != 0 {
            self.violation(format!("@{at}: transport_error_indicator set"));
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        if p[3] & 0xC0 != 0 {
            self.violation(format!("@{at}: scrambled"));
        }
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0F;
        if afc == 0 {
            self.violation(format!("@{at}: adaptation_field_control 00"));
            return;
        }
        let index = at / PACKET_SIZE;
        if index == 0 && pid != 0 {
            self.violation("first packet is not the PAT".into());
        }
        if index == 1 && Some(pid) != self.pmt_pid {
            self.violation("second packet is not the PMT".into());
        }

        // Continuity counter: +1 on payload packets, unchanged on adaptation-only ones.
        let has_payload = afc & 1 != 0;
        if let Some(&prev) = self.cc.get(&pid) {
            let expect = if has_payload { (prev + 1) & 0x0F } else { prev };
            if cc != expect {
                self.violation(format!("@{at}: PID {pid:#x} CC {cc}, expected {expect}"));
            }
        }
        self.cc.insert(pid, cc);

        // Adaptation field.
        let mut payload_start = 4;
        let mut rai = false;
        let mut pcr = None;
        let mut discontinuity = false;
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            payload_start = 5 + len;
            if (afc == 2 && len != 183) || (afc == 3 && len > 182) {
                self.violation(format!(
                    "@{at}: adaptation_field_length {len} with afc {afc}"
                ));
                return;
            }
            if len > 0 {
                let flags = p[5];
                discontinuity = flags & 0x80 != 0;
                rai = flags & 0x40 != 0;
                let mut pos = 6;
                if flags & 0x10 != 0 {
                    if len < 7 {
                        self.violation(format!("@{at}: PCR flag in a short adaptation field"));
                        return;
                    }
                    let bytes: [u8; 6] = p[6..12].try_into().expect("six bytes");
                    if bytes[4] & 0x7E != 0x7E {
                        self.violation(format!("@{at}: PCR reserved bits not all 1"));
                    }
                    pcr = Some(parse_pcr_base(&bytes));
                    pos = 12;
                }
                if flags & 0x2F != 0 {
                    self.violation(format!("@{at}: unexpected adaptation flags {flags:#04x}"));
                }
                if p[pos..5 + len].iter().any(|&b| b != 0xFF) {
                    self.violation(format!("@{at}: adaptation stuffing is not 0xFF"));
                }
            }
        }
        if let Some(pcr) = pcr {
            self.pcr(at, pid, pcr, discontinuity, !has_payload);
        }
        if !has_payload {
            if pusi {
                self.violation(format!("@{at}: PUSI on a packet without payload"));
            }
            return;
        }
        let payload = &p[payload_start..];
        if pid == 0 {
            self.pat(at, pusi, payload);
        } else if Some(pid) == self.pmt_pid {
            self.pmt(at, pusi, payload);
        } else if Some(pid) == self.video_pid || Some(pid) == self.audio_pid {
            self.es(at, pid, pusi, rai, pcr.is_some(), payload);
        } else {
            self.violation(format!("@{at}: packet on unknown PID {pid:#x}"));
        }
    }

    fn pcr(&mut self, at: usize, pid: u16, pcr: u64, discontinuity: bool, only: bool) {
        self.r.pcrs += 1;
        if only {
            self.r.pcr_only += 1;
        }
        if Some(pid) != self.pcr_pid {
            self.violation(format!(
                "@{at}: PCR on PID {pid:#x}, PMT says {:?}",
                self.pcr_pid
            ));
        }
        if let Some(last) = self.last_pcr {
            let d = delta33(last, pcr);
            if discontinuity {
                self.r.discontinuities += 1;
                self.psi_ref = Some(pcr);
            } else if d < 0 {
                self.violation(format!("@{at}: PCR went back from {last} to {pcr}"));
            } else {
                let d = d as u64;
                self.r.max_pcr_interval_90k = self.r.max_pcr_interval_90k.max(d);
                if d > self.opts.max_pcr_interval_90k {
                    self.violation(format!("@{at}: PCR interval {d} ({last} → {pcr})"));
                }
            }
        }
        match self.psi_ref {
            None => self.psi_ref = Some(pcr),
            Some(r) => {
                let d = delta33(r, pcr).max(0) as u64;
                self.r.max_psi_interval_90k = self.r.max_psi_interval_90k.max(d);
                if d > self.opts.max_psi_interval_90k {
                    self.violation(format!("@{at}: PCR {pcr} is {d} past the last PAT/PMT"));
                }
            }
        }
        self.last_pcr = Some(pcr);
    }

    /// Checks the common PSI section framing; returns the section (CRC included).
    fn section<'p>(
        &mut self,
        at: usize,
        pusi: bool,
        payload: &'p [u8],
        table: u8,
    ) -> Option<&'p [u8]> {
        if !pusi || payload.first() != Some(&0) {
            self.violation(format!("@{at}: PSI without PUSI or with pointer_field ≠ 0"));
            return None;
        }
        let s = &payload[1..];
        if s.len() < 3 || s[0] != table || s[1] & 0xF0 != 0xB0 {
            self.violation(format!("@{at}: bad PSI header for table {table}"));
            return None;
        }
        let len = (usize::from(s[1] & 0x0F) << 8) | usize::from(s[2]);
        if len < 9 || 3 + len > s.len() {
            self.violation(format!("@{at}: PSI section_length {len}"));
            return None;
        }
        let section = &s[..3 + len];
        if section[5] != 0xC1 || section[6] != 0 || section[7] != 0 {
            self.violation(format!("@{at}: PSI version/section bytes"));
        }
        if crc32_mpeg2(section) != 0 {
            self.violation(format!("@{at}: PSI CRC mismatch"));
        }
        if s[3 + len..].iter().any(|&b| b != 0xFF) {
            self.violation(format!("@{at}: PSI fill is not 0xFF"));
        }
        Some(section)
    }

    fn pat(&mut self, at: usize, pusi: bool, payload: &[u8]) {
        let Some(s) = self.section(at, pusi, payload, 0x00) else {
            return;
        };
        self.r.pats += 1;
        self.pat_since_video = true;
        self.psi_ref = self.last_pcr;
        let programs = &s[8..s.len() - 4];
        if programs.len() != 4 || programs[0..2] != [0, 1] {
            self.violation(format!("@{at}: PAT must list exactly program 1"));
            return;
        }
        let pmt = (u16::from(programs[2] & 0x1F) << 8) | u16::from(programs[3]);
        if self.pmt_pid.is_some_and(|p| p != pmt) {
            self.violation(format!("@{at}: PAT changed the PMT PID"));
        }
        self.pmt_pid = Some(pmt);
    }

    fn pmt(&mut self, at: usize, pusi: bool, payload: &[u8]) {
        let Some(s) = self.section(at, pusi, payload, 0x02) else {
            return;
        };
        self.pmt_since_video = true;
        if let Some(first) = &self.pmt_section {
            if first.as_slice() != s {
                self.violation(format!("@{at}: PMT changed"));
            }
            return;
        }
        self.pmt_section = Some(s.to_vec());
        let pcr_pid = (u16::from(s[8] & 0x1F) << 8) | u16::from(s[9]);
        self.pcr_pid = Some(pcr_pid);
        let info_len = (usize::from(s[10] & 0x0F) << 8) | usize::from(s[11]);
        let mut pos = 12 + info_len;
        let end = s.len() - 4;
        while pos + 5 <= end {
            let st = s[pos];
            let pid = (u16::from(s[pos + 1] & 0x1F) << 8) | u16::from(s[pos + 2]);
            let es_len = (usize::from(s[pos + 3] & 0x0F) << 8) | usize::from(s[pos + 4]);
            let Some(info) = s.get(pos + 5..pos + 5 + es_len) else {
                self.violation(format!("@{at}: PMT ES_info overruns the section"));
                return;
            };
            match st {
                STREAM_TYPE_H264 if self.video_pid.is_none() => {
                    if !info.is_empty() {
                        self.violation(format!("@{at}: video ES_info not empty"));
                    }
                    self.video_pid = Some(pid);
                    self.r.has_video = true;
                }
                STREAM_TYPE_OPUS if self.audio_pid.is_none() => {
                    if info != OPUS_ES_INFO {
                        self.violation(format!("@{at}: Opus descriptors {info:02X?}"));
                    }
                    self.audio_pid = Some(pid);
                    self.r.has_audio = true;
                }
                _ => self.violation(format!("@{at}: unexpected PMT entry type {st:#04x}")),
            }
            pos += 5 + es_len;
        }
        if pos != end {
            self.violation(format!("@{at}: PMT ES loop does not fill the section"));
        }
        let expect_pcr = self.video_pid.or(self.audio_pid);
        if Some(pcr_pid) != expect_pcr {
            self.violation(format!(
                "@{at}: PCR PID {pcr_pid:#x}, expected {expect_pcr:?}"
            ));
        }
    }

    fn es(&mut self, at: usize, pid: u16, pusi: bool, rai: bool, pcr: bool, payload: &[u8]) {
        let is_video = Some(pid) == self.video_pid;
        if pusi {
            if let Some(prev) = self.open.remove(&pid) {
                if is_video {
                    self.finish(pid, prev);
                } else {
                    self.violation(format!("@{at}: audio PES at {} cut short", prev.offset));
                }
            }
            let psi_before = self.pat_since_video && self.pmt_since_video;
            if is_video {
                self.pat_since_video = false;
                self.pmt_since_video = false;
            }
            self.open.insert(
                pid,
                OpenPes {
                    offset: at,
                    rai,
                    pcr,
                    psi_before,
                    pcr_at_start: self.last_pcr,
                    bytes: payload.to_vec(),
                },
            );
        } else {
            if rai {
                self.violation(format!("@{at}: RAI on a packet that does not start a PES"));
            }
            let Some(open) = self.open.get_mut(&pid) else {
                self.violation(format!(
                    "@{at}: PID {pid:#x} continuation without a PES start"
                ));
                return;
            };
            open.bytes.extend_from_slice(payload);
        }
        // An audio PES is complete when its declared length is reached.
        if !is_video
            && let Some(open) = self.open.get(&pid)
            && open.bytes.len() >= 6
        {
            let declared = 6 + usize::from(u16::from_be_bytes([open.bytes[4], open.bytes[5]]));
            if open.bytes.len() >= declared {
                let pes = self.open.remove(&pid).expect("present");
                self.finish(pid, pes);
            }
        }
    }

    /// Checks one complete PES and records it.
    fn finish(&mut self, pid: u16, pes: OpenPes) {
        let at = pes.offset;
        let b = &pes.bytes;
        let is_video = Some(pid) == self.video_pid;
        if b.len() < 14 || b[0..3] != [0, 0, 1] {
            self.violation(format!("@{at}: PES does not start with 00 00 01"));
            return;
        }
        let expect_id = if is_video {
            VIDEO_STREAM_ID
        } else {
            AUDIO_STREAM_ID
        };
        if b[3] != expect_id {
            self.violation(format!("@{at}: stream_id {:#04x}", b[3]));
        }
        let declared = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if is_video && declared != 0 {
            self.violation(format!(
                "@{at}: video PES_packet_length {declared}, expected 0"
            ));
        }
        if !is_video && declared + 6 != b.len() {
            self.violation(format!(
                "@{at}: audio PES_packet_length {declared} for {} bytes",
                b.len() - 6
            ));
        }
        if b[6] & 0xC0 != 0x80 || b[7] >> 6 != 0b10 || b[7] & 0x3F != 0 {
            self.violation(format!(
                "@{at}: PES flags {:02X} {:02X} (want PTS only)",
                b[6], b[7]
            ));
        }
        let hdl = usize::from(b[8]);
        if hdl < 5 || 9 + hdl > b.len() {
            self.violation(format!("@{at}: PES_header_data_length {hdl}"));
            return;
        }
        let pts_b: [u8; 5] = b[9..14].try_into().expect("five bytes");
        if pts_b[0] >> 4 != 0b0010 || pts_b[0] & 1 == 0 || pts_b[2] & 1 == 0 || pts_b[4] & 1 == 0 {
            self.violation(format!("@{at}: PTS prefix or marker bits {pts_b:02X?}"));
        }
        let pts = parse_pts(&pts_b);
        if let Some(pcr) = pes.pcr_at_start
            && delta33(pcr, pts) < 0
        {
            self.violation(format!("@{at}: PTS {pts} is before the PCR {pcr}"));
        }
        let es = &b[9 + hdl..];
        if is_video {
            self.video_pes(at, &pes, pts, es);
        } else {
            self.audio_pes(at, &pes, pts, es);
        }
    }

    fn video_pes(&mut self, at: usize, pes: &OpenPes, pts: u64, es: &[u8]) {
        if !es.starts_with(&AUD) {
            self.violation(format!(
                "@{at}: access unit does not start with 00 00 00 01 09 F0"
            ));
        }
        let types: Vec<u8> = split_annex_b(es).map(|n| n[0] & 0x1F).collect();
        let idr = types.iter().position(|&t| t == 5);
        let keyframe = idr.is_some();
        if let Some(idr) = idr {
            let before = &types[..idr];
            if !before.contains(&7) || !before.contains(&8) {
                self.violation(format!(
                    "@{at}: IDR without SPS and PPS before it ({types:?})"
                ));
            }
            if !pes.psi_before {
                self.violation(format!("@{at}: IDR not preceded by PAT+PMT"));
            }
            if self.pcr_pid == self.video_pid && !pes.pcr {
                self.violation(format!("@{at}: IDR PES without PCR"));
            }
        }
        if pes.rai != keyframe {
            self.violation(format!(
                "@{at}: RAI {} on a PES with keyframe {keyframe}",
                pes.rai
            ));
        }
        if self.r.video.is_empty() && !keyframe {
            self.violation(format!("@{at}: first video PES is not an IDR"));
        }
        if let Some(last) = self.r.video.last()
            && delta33(last.pts, pts) <= 0
        {
            let msg = format!("@{at}: video PTS {pts} not after {}", last.pts);
            self.violation(msg);
        }
        self.r.video.push(PesInfo {
            offset: at,
            pts,
            keyframe,
            data: es.to_vec(),
        });
    }

    fn audio_pes(&mut self, at: usize, pes: &OpenPes, pts: u64, es: &[u8]) {
        if !pes.rai {
            self.violation(format!("@{at}: audio PES without RAI"));
        }
        if es.len() < 3 || es[0] != 0x7F || es[1] != 0xE0 {
            self.violation(format!("@{at}: Opus control header missing"));
            return;
        }
        let mut pos = 2;
        let mut size = 0usize;
        loop {
            let Some(&byte) = es.get(pos) else {
                self.violation(format!("@{at}: au_size runs off the PES"));
                return;
            };
            pos += 1;
            size += usize::from(byte);
            if byte != 0xFF {
                break;
            }
        }
        if es.len() - pos != size {
            self.violation(format!(
                "@{at}: au_size {size} but {} bytes follow (one Opus packet per PES)",
                es.len() - pos
            ));
        }
        if let Some(last) = self.r.audio.last()
            && delta33(last.pts, pts) < 0
        {
            let msg = format!("@{at}: audio PTS {pts} before {}", last.pts);
            self.violation(msg);
        }
        self.r.audio.push(PesInfo {
            offset: at,
            pts,
            keyframe: true,
            data: es[pos..].to_vec(),
        });
    }
}
