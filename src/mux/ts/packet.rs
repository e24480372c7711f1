//! Transport packet headers, adaptation fields and the PCR.
//!
//! Every packet the writer emits goes through [`write_packet`], so the rules about adaptation
//! field lengths, stuffing and continuity counters live in one place.

use super::PACKET_SIZE;

/// Adaptation field flag: `discontinuity_indicator` (a deliberate time base break).
pub const AF_DISCONTINUITY: u8 = 0x80;
/// Adaptation field flag: `random_access_indicator` (decoding can start here).
pub const AF_RANDOM_ACCESS: u8 = 0x40;
/// Adaptation field flag: `PCR_flag`.
pub const AF_PCR: u8 = 0x10;

/// The six PCR bytes for a 33-bit base (90 kHz) and extension 0, with the six reserved bits
/// set to 1 as H.222.0 requires (FFmpeg writes the same `0x7E`).
pub fn pcr_bytes(base: u64) -> [u8; 6] {
    let base = base & super::PTS_MASK;
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        (((base & 1) as u8) << 7) | 0x7E,
        0,
    ]
}

/// Reads the PCR base (90 kHz part) back from six PCR bytes.
pub fn parse_pcr_base(b: &[u8; 6]) -> u64 {
    (u64::from(b[0]) << 25)
        | (u64::from(b[1]) << 17)
        | (u64::from(b[2]) << 9)
        | (u64::from(b[3]) << 1)
        | u64::from(b[4] >> 7)
}

/// What goes into the adaptation field of one packet (besides stuffing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adaptation {
    /// Flag bits (`AF_*`), without `AF_PCR` (set from `pcr`).
    pub flags: u8,
    /// PCR base in 90 kHz units, if this packet carries a PCR.
    pub pcr: Option<u64>,
}

impl Adaptation {
    /// No adaptation field content: the packet only gets one if it needs stuffing.
    pub const NONE: Adaptation = Adaptation {
        flags: 0,
        pcr: None,
    };

    /// Bytes of the adaptation field after its length byte (flags + PCR), 0 if none needed.
    fn body_len(&self) -> usize {
        if self.flags == 0 && self.pcr.is_none() {
            0
        } else if self.pcr.is_some() {
            7
        } else {
            1
        }
    }

    /// Payload bytes a packet with this adaptation field can carry.
    pub fn payload_room(&self) -> usize {
        match self.body_len() {
            0 => 184,
            n => 183 - n,
        }
    }
}

/// Appends one 188-byte packet carrying `payload` (at most [`Adaptation::payload_room`] bytes;
/// the rest of the packet is adaptation-field stuffing).
///
/// `cc` is the continuity counter to write (the caller increments it only for packets with
/// payload). An empty `payload` makes an adaptation-only packet (adaptation_field_control
/// `10`, e.g. a PCR-only packet).
pub fn write_packet(
    out: &mut Vec<u8>,
    pid: u16,
    pusi: bool,
    cc: u8,
    af: Adaptation,
    payload: &[u8],
) {
    debug_assert!(payload.len() <= af.payload_room());
    let start = out.len();
    let body = af.body_len();
    let has_payload = !payload.is_empty();
    // Bytes left for the adaptation field (length byte included) once the payload is placed.
    let af_total = 184 - payload.len();
    let afc: u8 = match (af_total > 0, has_payload) {
        (false, _) => 0x10,
        (true, true) => 0x30,
        (true, false) => 0x20,
    };
    out.extend_from_slice(&[
        0x47,
        (u8::from(pusi) << 6) | ((pid >> 8) as u8 & 0x1F),
        pid as u8,
        afc | (cc & 0x0F),
    ]);
    if af_total > 0 {
        let af_len = af_total - 1;
        out.push(af_len as u8);
        if af_len > 0 {
            let flags = af.flags | if af.pcr.is_some() { AF_PCR } else { 0 };
            out.push(flags);
            if let Some(pcr) = af.pcr {
                out.extend_from_slice(&pcr_bytes(pcr));
            }
            let stuffing = af_len - body.max(1);
            out.resize(out.len() + stuffing, 0xFF);
        }
    }
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len() - start, PACKET_SIZE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_matches_ffmpeg_reference_bytes() {
        // ts-muxing.md §2: PCR base 63585 → `00 00 7C 30 FE 00` (reserved bits 111111).
        assert_eq!(pcr_bytes(63585), [0x00, 0x00, 0x7C, 0x30, 0xFE, 0x00]);
        assert_eq!(pcr_bytes(0)[4] & 0x7E, 0x7E);
        assert_eq!(parse_pcr_base(&pcr_bytes(63585)), 63585);
        let top = (1u64 << 33) - 1;
        assert_eq!(parse_pcr_base(&pcr_bytes(top)), top);
        // Bits above 33 are masked away.
        assert_eq!(parse_pcr_base(&pcr_bytes((1 << 33) + 5)), 5);
    }

    #[test]
    fn first_video_packet_layout_matches_reference() {
        // ts-muxing.md §2: `47 41 00 30 07 50 00 00 7C 30 FE 00 …` (RAI + PCR, AF length 7).
        let mut out = Vec::new();
        let af = Adaptation {
            flags: AF_RANDOM_ACCESS,
            pcr: Some(63585),
        };
        let payload = vec![0xAB; af.payload_room()];
        write_packet(&mut out, 0x100, true, 0, af, &payload);
        assert_eq!(
            &out[..12],
            &[
                0x47, 0x41, 0x00, 0x30, 0x07, 0x50, 0x00, 0x00, 0x7C, 0x30, 0xFE, 0x00
            ]
        );
        assert_eq!(out.len(), 188);
    }

    #[test]
    fn stuffing_of_one_two_and_many_bytes() {
        for (len, expect_af) in [
            (183usize, vec![0x00]),
            (182, vec![0x01, 0x00]),
            (180, vec![0x03, 0x00, 0xFF, 0xFF]),
        ] {
            let mut out = Vec::new();
            write_packet(&mut out, 0x101, false, 7, Adaptation::NONE, &vec![1; len]);
            assert_eq!(out.len(), 188);
            assert_eq!(out[3], 0x37);
            assert_eq!(&out[4..4 + expect_af.len()], &expect_af[..], "len {len}");
            assert!(out[4 + expect_af.len()..].iter().all(|&b| b == 1));
        }
        let mut out = Vec::new();
        write_packet(&mut out, 0x101, false, 2, Adaptation::NONE, &[9; 184]);
        assert_eq!(out[3], 0x12);
    }

    #[test]
    fn pcr_only_packet_is_adaptation_only() {
        let mut out = Vec::new();
        let af = Adaptation {
            flags: 0,
            pcr: Some(90_000),
        };
        write_packet(&mut out, 0x100, false, 5, af, &[]);
        assert_eq!(&out[..6], &[0x47, 0x01, 0x00, 0x25, 183, 0x10]);
        assert!(out[12..].iter().all(|&b| b == 0xFF));
    }
}
