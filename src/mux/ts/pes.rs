//! PES headers, the Opus control header, and splitting a PES into transport packets.

use super::PTS_MASK;
use super::packet::{Adaptation, write_packet};

/// Length of the PES headers this writer emits: start code, stream id, length, two flag bytes,
/// header_data_length and a 5-byte PTS.
pub const PES_HEADER_LEN: usize = 14;

/// The five PTS bytes with prefix `0010` (PTS only) and marker bits; `pts` is masked to 33 bits.
pub fn pts_bytes(pts: u64) -> [u8; 5] {
    let pts = pts & PTS_MASK;
    [
        0x20 | (((pts >> 29) as u8) & 0x0E) | 1,
        (pts >> 22) as u8,
        (((pts >> 14) as u8) & 0xFE) | 1,
        (pts >> 7) as u8,
        ((pts << 1) as u8) | 1,
    ]
}

/// Reads a PTS written by [`pts_bytes`] (or any PTS/DTS field) back, ignoring the prefix.
pub fn parse_pts(b: &[u8; 5]) -> u64 {
    (u64::from(b[0] & 0x0E) << 29)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

/// A PES header with a PTS. `pes_packet_length` is 0 for video (unbounded, H.222.0 §2.4.3.7)
/// and exact for audio. The data_alignment_indicator is set: every PES starts an access unit.
pub fn pes_header(stream_id: u8, pes_packet_length: u16, pts: u64) -> [u8; PES_HEADER_LEN] {
    let len = pes_packet_length.to_be_bytes();
    let p = pts_bytes(pts);
    [
        0x00, 0x00, 0x01, stream_id, len[0], len[1], 0x84, 0x80, 0x05, p[0], p[1], p[2], p[3], p[4],
    ]
}

/// Longest Opus control header [`opus_control_header`] can produce (for a 65535-byte packet).
pub const MAX_OPUS_HEADER: usize = 2 + 65535 / 255 + 1;

/// Writes `7F E0` and `au_size` (0xFF per full 255, then the rest) for an Opus packet of
/// `au_size` bytes into `buf`; returns the header length. No trims, no extension: a WebRTC
/// recorder joins mid-stream and has no encoder pre-skip to signal.
pub fn opus_control_header(au_size: usize, buf: &mut [u8; MAX_OPUS_HEADER]) -> usize {
    debug_assert!(au_size <= 65535);
    buf[0] = 0x7F;
    buf[1] = 0xE0;
    let mut n = 2;
    let mut size = au_size;
    while size >= 255 {
        buf[n] = 0xFF;
        n += 1;
        size -= 255;
    }
    buf[n] = size as u8;
    n + 1
}

/// Splits the concatenation of `parts` (the PES: header, prefix, body) into packets on `pid`.
///
/// The first packet gets PUSI and `first_af` (RAI / PCR); the last one is padded with
/// adaptation-field stuffing. `cc` is advanced once per packet (every packet carries payload).
pub fn packetize(out: &mut Vec<u8>, pid: u16, cc: &mut u8, first_af: Adaptation, parts: &[&[u8]]) {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let first_room = first_af.payload_room();
    let packets = if total <= first_room {
        1
    } else {
        1 + (total - first_room).div_ceil(184)
    };
    out.reserve(packets * super::PACKET_SIZE);

    let mut part = 0;
    let mut offset = 0;
    let mut remaining = total;
    let mut first = true;
    // One packet's payload is gathered here when it spans a part boundary.
    let mut scratch = [0u8; 184];
    while remaining > 0 {
        let af = if first { first_af } else { Adaptation::NONE };
        let take = remaining.min(af.payload_room());
        while parts[part].len() == offset {
            part += 1;
            offset = 0;
        }
        let payload: &[u8] = if parts[part].len() - offset >= take {
            let s = &parts[part][offset..offset + take];
            offset += take;
            s
        } else {
            let mut filled = 0;
            while filled < take {
                while parts[part].len() == offset {
                    part += 1;
                    offset = 0;
                }
                let n = (take - filled).min(parts[part].len() - offset);
                scratch[filled..filled + n].copy_from_slice(&parts[part][offset..offset + n]);
                filled += n;
                offset += n;
            }
            &scratch[..take]
        };
        write_packet(out, pid, first, *cc, af, payload);
        *cc = (*cc + 1) & 0x0F;
        remaining -= take;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_matches_reference_bytes() {
        // ts-muxing.md §1.4: PTS 126000 → `21 00 07 D8 61`; §2: 126585 → `21 00 07 DC F3`.
        assert_eq!(pts_bytes(126_000), [0x21, 0x00, 0x07, 0xD8, 0x61]);
        assert_eq!(pts_bytes(126_585), [0x21, 0x00, 0x07, 0xDC, 0xF3]);
        for pts in [0, 1, 126_000, PTS_MASK, (1 << 32) + 12345] {
            assert_eq!(parse_pts(&pts_bytes(pts)), pts);
        }
        assert_eq!(parse_pts(&pts_bytes((1 << 33) + 7)), 7);
    }

    #[test]
    fn audio_pes_header_matches_reference() {
        // ts-muxing.md §1.4, one-AU PES: `00 00 01 BD 01 35 84 80 05 21 00 07 D8 61`.
        assert_eq!(
            pes_header(0xBD, 0x135, 126_000),
            [
                0x00, 0x00, 0x01, 0xBD, 0x01, 0x35, 0x84, 0x80, 0x05, 0x21, 0x00, 0x07, 0xD8, 0x61
            ]
        );
    }

    #[test]
    fn au_size_encodings() {
        let mut buf = [0; MAX_OPUS_HEADER];
        for (size, expect) in [
            (0usize, &[0x00][..]),
            (254, &[0xFE]),
            (255, &[0xFF, 0x00]),
            (297, &[0xFF, 0x2A]),
            (510, &[0xFF, 0xFF, 0x00]),
            (1275, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]),
        ] {
            let n = opus_control_header(size, &mut buf);
            assert_eq!(&buf[..2], &[0x7F, 0xE0]);
            assert_eq!(&buf[2..n], expect, "au_size {size}");
        }
        assert_eq!(opus_control_header(65535, &mut buf), MAX_OPUS_HEADER);
    }

    #[test]
    fn packetize_spans_parts_and_stuffs_the_tail() {
        let header = [1u8; 14];
        let prefix = [2u8; 6];
        let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut cc = 15;
        packetize(
            &mut out,
            0x100,
            &mut cc,
            Adaptation::NONE,
            &[&header, &prefix, &body],
        );
        let total: usize = 14 + 6 + 1000;
        assert_eq!(out.len(), 188 * total.div_ceil(184));
        assert_eq!(cc, (15 + total.div_ceil(184) as u8) & 0x0F);
        // Reassemble the payloads and compare.
        let mut payload = Vec::new();
        for p in out.chunks(188) {
            let start = if p[3] & 0x20 != 0 {
                5 + usize::from(p[4])
            } else {
                4
            };
            payload.extend_from_slice(&p[start..]);
        }
        let mut expect = header.to_vec();
        expect.extend_from_slice(&prefix);
        expect.extend_from_slice(&body);
        assert_eq!(payload, expect);
        assert_eq!(out[1] & 0x40, 0x40);
        assert_eq!(out[188 + 1] & 0x40, 0);
    }

    #[test]
    fn packetize_exact_fit_needs_no_stuffing() {
        let body = [7u8; 184 * 2];
        let mut out = Vec::new();
        let mut cc = 0;
        packetize(&mut out, 0x101, &mut cc, Adaptation::NONE, &[&body]);
        assert_eq!(out.len(), 376);
        assert_eq!(out[3] & 0x30, 0x10);
        assert_eq!(out[188 + 3] & 0x30, 0x10);
    }
}
