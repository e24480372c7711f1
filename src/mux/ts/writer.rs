//! The muxer: access units and Opus packets in, whole transport packets out.

use super::packet::{AF_DISCONTINUITY, AF_RANDOM_ACCESS, Adaptation, write_packet};
use super::pes::{MAX_OPUS_HEADER, PES_HEADER_LEN, opus_control_header, packetize, pes_header};
use super::psi::{pat_section, pmt_section, section_packet};
use super::{AUD, AUDIO_PID, AUDIO_STREAM_ID, PACKET_SIZE, PMT_PID, VIDEO_PID, VIDEO_STREAM_ID};

/// How far the PCR lags the newest PTS (500 ms): a decoder must receive data before it is due,
/// and audio and video reach the writer in arrival order, not in PTS order.
pub const PCR_DELAY_90K: u64 = 45_000;
/// Largest step between two PCRs the writer emits (30 ms, under the 40 ms of TR 101 290).
pub const PCR_STEP_90K: u64 = 2_700;
/// PAT+PMT are repeated when the PCR has advanced this far (60 ms) since the last pair, so the
/// distance between two pairs stays under 100 ms even with [`PCR_STEP_90K`] added.
pub const PSI_INTERVAL_90K: u64 = 5_400;
/// A PCR gap larger than this (10 s) is not filled with PCR-only packets but marked as a time
/// base discontinuity: filling it would write 25 packets per second of a bogus jump.
pub const MAX_FILLED_GAP_90K: u64 = 900_000;

/// Which tracks a file has. Decided when the file is opened; the PMT never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsConfig {
    /// The file has an H.264 track (PID 0x100, carries the PCR).
    pub video: bool,
    /// The file has an Opus track (PID 0x101, carries the PCR when there is no video).
    pub audio: bool,
}

/// Why a unit was refused. Nothing is written for a refused unit, so the file stays valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    /// The config has neither video nor audio.
    #[error("a transport stream needs at least one track")]
    NoTracks,
    /// A unit was given for a track the config does not have.
    #[error("the file has no {0} track")]
    NoSuchTrack(&'static str),
    /// An empty access unit or Opus packet.
    #[error("empty {0} unit")]
    Empty(&'static str),
    /// The first video access unit of the file was not a keyframe.
    #[error("video must start with a keyframe")]
    NeedKeyframe,
    /// A PTS went backwards (video must strictly increase, audio must not decrease).
    #[error("{track} PTS {pts} after {last}")]
    NonMonotonic {
        /// Which track.
        track: &'static str,
        /// The refused PTS.
        pts: u64,
        /// The previous PTS of that track.
        last: u64,
    },
    /// An Opus packet too large for a PES with an exact length.
    #[error("Opus packet of {0} bytes does not fit one PES")]
    TooLarge(usize),
    /// The unit's PTS is behind the PCR already written: a decoder would get it after its
    /// presentation time. Happens when one track's clock falls far behind the other's.
    #[error("{track} PTS {pts} is behind the PCR {pcr}")]
    BehindPcr {
        /// Which track.
        track: &'static str,
        /// The refused PTS.
        pts: u64,
        /// The last PCR written.
        pcr: u64,
    },
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsStats {
    /// Transport packets written.
    pub packets: u64,
    /// Video PES written.
    pub video_pes: u64,
    /// Audio PES written.
    pub audio_pes: u64,
    /// PCR-only packets written (stalls on the PCR track).
    pub pcr_only: u64,
    /// PAT+PMT pairs written.
    pub psi: u64,
    /// Time base discontinuities marked (PCR jumps over [`MAX_FILLED_GAP_90K`]).
    pub discontinuities: u64,
}

/// A pure MPEG-TS muxer for one H.264 and/or one Opus track.
///
/// It appends complete 188-byte packets to the caller's buffer and keeps no media itself, so
/// the file task can write the buffer out after every call and a file cut at any point plays
/// up to its last complete frame. PTS are unwrapped 64-bit 90 kHz values; they are masked to
/// 33 bits only when written. It takes care of PAT/PMT (byte 0, before every IDR, every
/// ≤ 100 ms), the PCR (≤ 30 ms apart, [`PCR_DELAY_90K`] behind the newest PTS, PCR-only
/// packets when the PCR track stalls), continuity counters, the access unit delimiter, the
/// Opus control header and random access indicators.
#[derive(Debug, Clone)]
pub struct TsWriter {
    config: TsConfig,
    pat: [u8; PACKET_SIZE],
    pmt: [u8; PACKET_SIZE],
    pcr_pid: u16,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    /// The last PCR base written (unwrapped).
    last_pcr: Option<u64>,
    /// The PCR before the last PAT+PMT pair (or the first PCR if none preceded it).
    psi_ref: Option<u64>,
    last_video_pts: Option<u64>,
    last_audio_pts: Option<u64>,
    stats: TsStats,
}

impl TsWriter {
    /// A writer for the given tracks.
    pub fn new(config: TsConfig) -> Result<TsWriter, TsError> {
        if !config.video && !config.audio {
            return Err(TsError::NoTracks);
        }
        Ok(TsWriter {
            config,
            pat: section_packet(0, &pat_section()),
            pmt: section_packet(PMT_PID, &pmt_section(config.video, config.audio)),
            pcr_pid: if config.video { VIDEO_PID } else { AUDIO_PID },
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            cc_audio: 0,
            last_pcr: None,
            psi_ref: None,
            last_video_pts: None,
            last_audio_pts: None,
            stats: TsStats::default(),
        })
    }

    /// The tracks this writer was made for.
    pub fn config(&self) -> TsConfig {
        self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> TsStats {
        self.stats
    }

    /// Writes one H.264 access unit (Annex B; an access unit delimiter is added unless the
    /// unit already starts with one). `keyframe` units get PAT+PMT before them and the random
    /// access indicator + PCR on their first packet. The first video unit must be a keyframe.
    pub fn write_video(
        &mut self,
        pts_90k: u64,
        access_unit: &[u8],
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TsError> {
        if !self.config.video {
            return Err(TsError::NoSuchTrack("video"));
        }
        if access_unit.is_empty() {
            return Err(TsError::Empty("video"));
        }
        match self.last_video_pts {
            None if !keyframe => return Err(TsError::NeedKeyframe),
            Some(last) if pts_90k <= last => {
                return Err(TsError::NonMonotonic {
                    track: "video",
                    pts: pts_90k,
                    last,
                });
            }
            _ => {}
        }
        self.not_behind_pcr("video", pts_90k)?;
        let start = out.len();
        let target = pts_90k.saturating_sub(PCR_DELAY_90K);
        self.fill_pcr_gap(target, out);
        if keyframe {
            self.write_psi(out);
        }
        let pcr = self.next_pcr(target, out);
        let af = Adaptation {
            flags: if keyframe { AF_RANDOM_ACCESS } else { 0 },
            pcr: Some(pcr),
        };
        let header = pes_header(VIDEO_STREAM_ID, 0, pts_90k);
        let has_aud = access_unit.starts_with(&[0, 0, 0, 1, 0x09])
            || access_unit.starts_with(&[0, 0, 1, 0x09]);
        let prefix: &[u8] = if has_aud { &[] } else { &AUD };
        packetize(
            out,
            VIDEO_PID,
            &mut self.cc_video,
            af,
            &[&header, prefix, access_unit],
        );
        self.count(start, out);
        self.stats.video_pes += 1;
        self.last_video_pts = Some(pts_90k);
        Ok(())
    }

    /// Writes one Opus packet as its own PES (control header `7F E0 <au_size>`, exact
    /// PES_packet_length, random access indicator).
    pub fn write_audio(
        &mut self,
        pts_90k: u64,
        opus_packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TsError> {
        if !self.config.audio {
            return Err(TsError::NoSuchTrack("audio"));
        }
        if opus_packet.is_empty() {
            return Err(TsError::Empty("audio"));
        }
        let mut control = [0u8; MAX_OPUS_HEADER];
        let pes_len = 3 + 5 + opus_packet.len() + opus_packet.len() / 255 + 3;
        if pes_len > usize::from(u16::MAX) {
            return Err(TsError::TooLarge(opus_packet.len()));
        }
        if let Some(last) = self.last_audio_pts
            && pts_90k < last
        {
            return Err(TsError::NonMonotonic {
                track: "audio",
                pts: pts_90k,
                last,
            });
        }
        self.not_behind_pcr("audio", pts_90k)?;
        let control_len = opus_control_header(opus_packet.len(), &mut control);
        let start = out.len();
        let target = pts_90k.saturating_sub(PCR_DELAY_90K);
        self.fill_pcr_gap(target, out);
        let pcr = if self.pcr_pid == AUDIO_PID {
            Some(self.next_pcr(target, out))
        } else {
            if self.last_pcr.is_none() {
                // Audio before the first video unit: the file still needs PSI and a PCR first.
                let pcr = self.next_pcr(target, out);
                self.write_pcr_only(pcr, 0, out);
            }
            None
        };
        let pes_len = (PES_HEADER_LEN - 6 + control_len + opus_packet.len()) as u16;
        let header = pes_header(AUDIO_STREAM_ID, pes_len, pts_90k);
        let af = Adaptation {
            flags: AF_RANDOM_ACCESS,
            pcr,
        };
        packetize(
            out,
            AUDIO_PID,
            &mut self.cc_audio,
            af,
            &[&header, &control[..control_len], opus_packet],
        );
        self.count(start, out);
        self.stats.audio_pes += 1;
        self.last_audio_pts = Some(pts_90k);
        Ok(())
    }

    /// Keeps the PCR (and PAT/PMT) going while no media arrives: `now_pts_90k` is the PTS the
    /// caller's clock is at now. PCR-only packets are written so that the PCR reaches
    /// `now − PCR_DELAY` in steps of at most 30 ms. Does nothing before the first unit, so the
    /// file still starts with PAT, PMT and a keyframe. `now` must not run ahead of the PTS of
    /// units still to come by more than [`PCR_DELAY_90K`].
    pub fn tick(&mut self, now_pts_90k: u64, out: &mut Vec<u8>) {
        if self.last_pcr.is_none() {
            return;
        }
        let start = out.len();
        self.fill_pcr_gap(now_pts_90k.saturating_sub(PCR_DELAY_90K), out);
        self.count(start, out);
    }

    /// The last PCR written: a unit with an earlier PTS is refused.
    pub fn last_pcr(&self) -> Option<u64> {
        self.last_pcr
    }

    /// Refuses a unit that would reach the decoder after its presentation time.
    fn not_behind_pcr(&self, track: &'static str, pts: u64) -> Result<(), TsError> {
        match self.last_pcr {
            Some(pcr) if pts < pcr => Err(TsError::BehindPcr { track, pts, pcr }),
            _ => Ok(()),
        }
    }

    /// Writes PCR-only packets until the PCR is within one step of `target`, or marks a
    /// discontinuity when the gap is too large to fill.
    fn fill_pcr_gap(&mut self, target: u64, out: &mut Vec<u8>) {
        let Some(mut last) = self.last_pcr else {
            return;
        };
        if target > last + MAX_FILLED_GAP_90K {
            self.psi_due(target, out);
            self.write_pcr_only(target, AF_DISCONTINUITY, out);
            self.last_pcr = Some(target);
            self.stats.discontinuities += 1;
            return;
        }
        while target > last + PCR_STEP_90K {
            last += PCR_STEP_90K;
            self.psi_due(last, out);
            self.write_pcr_only(last, 0, out);
            self.last_pcr = Some(last);
        }
    }

    /// The PCR for the packet about to be written (monotonic, never behind the last one);
    /// writes PAT+PMT first when they are due.
    fn next_pcr(&mut self, target: u64, out: &mut Vec<u8>) -> u64 {
        let pcr = self.last_pcr.map_or(target, |last| last.max(target));
        self.psi_due(pcr, out);
        self.last_pcr = Some(pcr);
        pcr
    }

    /// Writes PAT+PMT if none was written yet or the PCR about to be written is
    /// [`PSI_INTERVAL_90K`] past the PCR preceding the last pair.
    fn psi_due(&mut self, pcr: u64, out: &mut Vec<u8>) {
        let due = match (self.stats.psi, self.psi_ref) {
            (0, _) => true,
            (_, None) => false,
            (_, Some(r)) => pcr >= r + PSI_INTERVAL_90K,
        };
        if due {
            self.write_psi(out);
        }
        if self.psi_ref.is_none() {
            // No PCR preceded the first pair: measure from the first PCR after it.
            self.psi_ref = Some(pcr);
        }
    }

    /// Writes one PAT and one PMT packet.
    fn write_psi(&mut self, out: &mut Vec<u8>) {
        self.pat[3] = 0x10 | self.cc_pat;
        self.pmt[3] = 0x10 | self.cc_pmt;
        out.extend_from_slice(&self.pat);
        out.extend_from_slice(&self.pmt);
        self.cc_pat = (self.cc_pat + 1) & 0x0F;
        self.cc_pmt = (self.cc_pmt + 1) & 0x0F;
        self.psi_ref = self.last_pcr;
        self.stats.psi += 1;
    }

    /// An adaptation-only packet with a PCR on the PCR PID; its continuity counter is the
    /// current one, unchanged (H.222.0 §2.4.3.3: CC only counts packets with payload).
    fn write_pcr_only(&mut self, pcr: u64, flags: u8, out: &mut Vec<u8>) {
        let cc = if self.pcr_pid == VIDEO_PID {
            self.cc_video.wrapping_sub(1) & 0x0F
        } else {
            self.cc_audio.wrapping_sub(1) & 0x0F
        };
        let af = Adaptation {
            flags,
            pcr: Some(pcr),
        };
        write_packet(out, self.pcr_pid, false, cc, af, &[]);
        self.stats.pcr_only += 1;
    }

    fn count(&mut self, start: usize, out: &[u8]) {
        self.stats.packets += ((out.len() - start) / PACKET_SIZE) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::ts::PTS_MASK;
    use crate::testkit::ts_check::{CheckOptions, check};

    /// A fake IDR access unit: SPS, PPS, IDR slice of `len` bytes.
    fn idr(len: usize) -> Vec<u8> {
        let mut au = vec![
            0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xCE, 0, 0, 0, 1, 0x65,
        ];
        au.resize(au.len() + len, 0x11);
        au
    }

    fn p_frame(len: usize) -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, 0x41];
        au.resize(au.len() + len, 0x22);
        au
    }

    /// Writes `seconds` of 30 fps video (IDR every 30) and 20 ms audio starting at `start`.
    fn av_file(start: u64, frames: u64, video: bool, audio: bool) -> (Vec<u8>, TsWriter) {
        let mut w = TsWriter::new(TsConfig { video, audio }).unwrap();
        let mut out = Vec::new();
        let mut a = 0u64;
        for f in 0..frames {
            let vpts = start + f * 3000;
            if video {
                let au = if f % 30 == 0 {
                    idr(3000 + f as usize)
                } else {
                    p_frame(700)
                };
                w.write_video(vpts, &au, f % 30 == 0, &mut out).unwrap();
            }
            while audio && start + a * 1800 < vpts + 3000 {
                w.write_audio(start + a * 1800, &[0xFC; 97], &mut out)
                    .unwrap();
                a += 1;
            }
        }
        (out, w)
    }

    #[test]
    fn a_unit_behind_the_pcr_is_refused() {
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: true,
        })
        .unwrap();
        let mut out = Vec::new();
        // Video at 10 s puts the PCR at 9.5 s; audio stamped 8 s would be late.
        w.write_video(900_000, &idr(100), true, &mut out).unwrap();
        let len = out.len();
        assert_eq!(
            w.write_audio(720_000, &[0xFC; 10], &mut out),
            Err(TsError::BehindPcr {
                track: "audio",
                pts: 720_000,
                pcr: 855_000
            })
        );
        assert_eq!(out.len(), len);
        // At the PCR is still in time.
        w.write_audio(855_000, &[0xFC; 10], &mut out).unwrap();
        let opts = CheckOptions {
            max_audio_lead_90k: None,
            ..CheckOptions::default()
        };
        let r = check(&out, &opts);
        assert!(r.is_ok(), "{:#?}", r.violations);
    }

    #[test]
    fn audio_and_video_pass_the_checker() {
        let (out, w) = av_file(90_000, 90, true, true);
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert_eq!(r.video.len(), 90);
        assert_eq!(r.video.iter().filter(|v| v.keyframe).count(), 3);
        assert_eq!(r.audio.len() as u64, w.stats().audio_pes);
        assert!(r.audio.iter().all(|a| a.data == [0xFC; 97]));
        assert_eq!(r.packets as u64, w.stats().packets);
        assert_eq!(out.len() % 188, 0);
        // Byte 0 is the PAT, then the PMT, then the IDR with RAI + PCR.
        assert_eq!(&out[..4], &[0x47, 0x40, 0x00, 0x10]);
        assert_eq!(&out[188..192], &[0x47, 0x50, 0x00, 0x10]);
        assert_eq!(&out[376..382], &[0x47, 0x41, 0x00, 0x30, 0x07, 0x50]);
        assert!(r.max_pcr_interval_90k <= 3000, "{}", r.max_pcr_interval_90k);
    }

    #[test]
    fn mpeg2ts_reader_reads_everything_back() {
        use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
        use mpeg2ts::ts::TsPacketReader;
        let (out, w) = av_file(90_000, 60, true, true);
        let mut reader = PesPacketReader::new(TsPacketReader::new(&out[..]));
        let (mut v, mut a) = (0, 0);
        while let Some(pes) = reader.read_pes_packet().unwrap() {
            match pes.header.stream_id.as_u8() {
                0xE0 => {
                    assert!(pes.data.starts_with(&AUD));
                    assert_eq!(pes.header.pts.unwrap().as_u64(), 90_000 + v * 3000);
                    v += 1;
                }
                0xBD => {
                    assert_eq!(&pes.data[..3], &[0x7F, 0xE0, 97]);
                    a += 1;
                }
                other => panic!("stream id {other:#x}"),
            }
        }
        assert_eq!(v, 60);
        assert_eq!(a, w.stats().audio_pes);
    }

    #[test]
    fn single_track_files() {
        let (video_only, _) = av_file(90_000, 45, true, false);
        let r = check(&video_only, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert!(r.has_video && !r.has_audio && r.audio.is_empty());

        let (audio_only, w) = av_file(90_000, 45, false, true);
        let r = check(&audio_only, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert!(!r.has_video && r.has_audio);
        assert_eq!(r.audio.len() as u64, w.stats().audio_pes);
        // The PCR rides on the audio PID: every audio PES carries one.
        assert_eq!(r.pcrs as u64, w.stats().audio_pes + w.stats().pcr_only);
        assert_eq!(&audio_only[376..380], &[0x47, 0x41, 0x01, 0x30]);
        assert_eq!(audio_only[381], 0x50);
    }

    #[test]
    fn video_stall_is_bridged_by_pcr_only_packets() {
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: true,
        })
        .unwrap();
        let mut out = Vec::new();
        w.write_video(90_000, &idr(5000), true, &mut out).unwrap();
        // Two seconds with audio only, then a tick-only second with nothing at all.
        for i in 0..100 {
            w.write_audio(90_000 + i * 1800, &[0xFC; 50], &mut out)
                .unwrap();
        }
        for ms in (0..1000).step_by(10) {
            w.tick(90_000 + 180_000 + ms * 90, &mut out);
        }
        w.write_video(90_000 + 270_000, &p_frame(100), false, &mut out)
            .unwrap();
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert!(r.pcr_only > 50, "{}", r.pcr_only);
        assert_eq!(r.pcr_only as u64, w.stats().pcr_only);
        assert!(r.max_pcr_interval_90k <= PCR_STEP_90K);
        assert!(r.max_psi_interval_90k <= 9_000);
        assert!(r.pats >= 30, "{}", r.pats);
    }

    #[test]
    fn timeline_crossing_2_pow_33() {
        let start = (1u64 << 33) - 2 * 90_000;
        let (out, _) = av_file(start, 150, true, true);
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert_eq!(r.video.len(), 150);
        // PTS as written are masked: they wrap to small values after the crossing.
        assert_eq!(r.video[0].pts, start);
        assert_eq!(r.video[149].pts, (start + 149 * 3000) & PTS_MASK);
        assert!(r.video[149].pts < 90_000 * 3);
    }

    #[test]
    fn huge_gap_is_a_marked_discontinuity_not_a_flood() {
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: false,
        })
        .unwrap();
        let mut out = Vec::new();
        w.write_video(90_000, &idr(100), true, &mut out).unwrap();
        w.write_video(90_000 + 90_000 * 3600, &idr(100), true, &mut out)
            .unwrap();
        assert!(out.len() < 188 * 20, "{}", out.len());
        assert_eq!(w.stats().discontinuities, 1);
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert_eq!(r.discontinuities, 1);
    }

    #[test]
    fn bad_input_is_refused_without_writing() {
        assert_eq!(
            TsWriter::new(TsConfig {
                video: false,
                audio: false
            })
            .unwrap_err(),
            TsError::NoTracks
        );
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: false,
        })
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            w.write_audio(0, &[1], &mut out),
            Err(TsError::NoSuchTrack("audio"))
        );
        assert_eq!(
            w.write_video(0, &p_frame(10), false, &mut out),
            Err(TsError::NeedKeyframe)
        );
        assert_eq!(
            w.write_video(0, &[], true, &mut out),
            Err(TsError::Empty("video"))
        );
        assert!(out.is_empty());
        w.write_video(90_000, &idr(10), true, &mut out).unwrap();
        let len = out.len();
        assert!(matches!(
            w.write_video(90_000, &p_frame(10), false, &mut out),
            Err(TsError::NonMonotonic { .. })
        ));
        assert_eq!(out.len(), len);

        let mut a = TsWriter::new(TsConfig {
            video: false,
            audio: true,
        })
        .unwrap();
        assert_eq!(
            a.write_audio(0, &vec![0; 70_000], &mut out),
            Err(TsError::TooLarge(70_000))
        );
        a.write_audio(90_000, &[0xFC; 3], &mut out).unwrap();
        assert!(matches!(
            a.write_audio(80_000, &[0xFC; 3], &mut out),
            Err(TsError::NonMonotonic { .. })
        ));
    }

    #[test]
    fn large_opus_packets_get_exact_lengths() {
        let mut w = TsWriter::new(TsConfig {
            video: false,
            audio: true,
        })
        .unwrap();
        let mut out = Vec::new();
        for (i, size) in [1usize, 254, 255, 297, 510, 1275, 5000]
            .into_iter()
            .enumerate()
        {
            w.write_audio(90_000 + i as u64 * 1800, &vec![0xAA; size], &mut out)
                .unwrap();
        }
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        let sizes: Vec<usize> = r.audio.iter().map(|a| a.data.len()).collect();
        assert_eq!(sizes, [1, 254, 255, 297, 510, 1275, 5000]);
    }

    #[test]
    fn access_unit_with_its_own_aud_gets_no_second_one() {
        let mut w = TsWriter::new(TsConfig {
            video: true,
            audio: false,
        })
        .unwrap();
        let mut out = Vec::new();
        let mut au = AUD.to_vec();
        au.extend_from_slice(&idr(10));
        w.write_video(90_000, &au, true, &mut out).unwrap();
        let r = check(&out, &CheckOptions::default());
        assert!(r.is_ok(), "{:#?}", r.violations);
        assert_eq!(r.video[0].data, au);
    }
}
