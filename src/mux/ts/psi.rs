//! Program specific information: the PAT and PMT a player needs before anything else.
//!
//! Both tables are fixed for the life of a file (the tracks are decided when the file is
//! opened), so they are built once as whole packets and only the continuity counter changes.

use super::{AUDIO_PID, PACKET_SIZE, PMT_PID, STREAM_TYPE_H264, STREAM_TYPE_OPUS, VIDEO_PID};

/// CRC-32/MPEG-2 lookup table (polynomial 0x04C11DB7, MSB first).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32/MPEG-2 (init 0xFFFFFFFF, no reflection, no final xor), the checksum of every PSI
/// section. A section followed by its CRC has a CRC of 0, which is how readers check it.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize]
    })
}

/// The PMT elementary stream entry of Opus (ts-muxing.md §1.1): registration descriptor "Opus"
/// and the DVB extension descriptor 0x80 with channel_config_code 2 (stereo).
pub const OPUS_ES_INFO: [u8; 10] = [0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, 0x02];

/// The PAT section (table_id to CRC) announcing program 1 with its PMT on [`PMT_PID`].
pub fn pat_section() -> Vec<u8> {
    let mut s = vec![
        0x00, // table_id: program_association_section
        0xB0,
        0x0D, // section_syntax 1, '0', reserved 11, section_length 13
        0x00,
        0x01, // transport_stream_id 1
        0xC1, // reserved 11, version 0, current_next 1
        0x00,
        0x00, // section_number, last_section_number
        0x00,
        0x01, // program_number 1
        0xE0 | (PMT_PID >> 8) as u8,
        PMT_PID as u8,
    ];
    finish_section(&mut s);
    s
}

/// The PMT section for the tracks present. The PCR travels on the video PID when there is
/// video, else on the audio PID.
pub fn pmt_section(video: bool, audio: bool) -> Vec<u8> {
    let pcr_pid = if video { VIDEO_PID } else { AUDIO_PID };
    let mut s = vec![
        0x02, // table_id: TS_program_map_section
        0xB0,
        0x00, // section_length, patched below
        0x00,
        0x01, // program_number 1
        0xC1,
        0x00,
        0x00,
        0xE0 | (pcr_pid >> 8) as u8,
        pcr_pid as u8,
        0xF0,
        0x00, // program_info_length 0
    ];
    if video {
        s.extend_from_slice(&[
            STREAM_TYPE_H264,
            0xE0 | (VIDEO_PID >> 8) as u8,
            VIDEO_PID as u8,
            0xF0,
            0x00,
        ]);
    }
    if audio {
        s.extend_from_slice(&[
            STREAM_TYPE_OPUS,
            0xE0 | (AUDIO_PID >> 8) as u8,
            AUDIO_PID as u8,
            0xF0,
            OPUS_ES_INFO.len() as u8,
        ]);
        s.extend_from_slice(&OPUS_ES_INFO);
    }
    finish_section(&mut s);
    s
}

/// Patches section_length (bytes after the length field, CRC included) and appends the CRC.
fn finish_section(s: &mut Vec<u8>) {
    let len = s.len() - 3 + 4;
    s[1] = 0xB0 | ((len >> 8) as u8 & 0x0F);
    s[2] = len as u8;
    let crc = crc32_mpeg2(s);
    s.extend_from_slice(&crc.to_be_bytes());
}

/// A whole TS packet carrying one section (pointer_field 0, then 0xFF fill as FFmpeg does);
/// the continuity counter nibble (low 4 bits of byte 3) is 0 and is set when written.
pub fn section_packet(pid: u16, section: &[u8]) -> [u8; PACKET_SIZE] {
    let mut p = [0xFF; PACKET_SIZE];
    p[0] = 0x47;
    p[1] = 0x40 | (pid >> 8) as u8 & 0x1F;
    p[2] = pid as u8;
    p[3] = 0x10;
    p[4] = 0x00;
    p[5..5 + section.len()].copy_from_slice(section);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        // The standard check value of CRC-32/MPEG-2.
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn pat_matches_ffmpeg_bytes() {
        // assets/clip.ts (ffmpeg 5.1), second packet.
        assert_eq!(
            pat_section(),
            [
                0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
                0x04, 0xB2
            ]
        );
    }

    #[test]
    fn pmt_matches_ffmpeg_bytes() {
        // assets/clip.ts (ffmpeg 5.1), third packet; CRC `AE A9 63 ED` as in ts-muxing.md §4.
        let expected = [
            0x02, 0xB0, 0x21, 0x00, 0x01, 0xC1, 0x00, 0x00, 0xE1, 0x00, 0xF0, 0x00, 0x1B, 0xE1,
            0x00, 0xF0, 0x00, 0x06, 0xE1, 0x01, 0xF0, 0x0A, 0x05, 0x04, 0x4F, 0x70, 0x75, 0x73,
            0x7F, 0x02, 0x80, 0x02, 0xAE, 0xA9, 0x63, 0xED,
        ];
        assert_eq!(pmt_section(true, true), expected);
    }

    #[test]
    fn single_track_pmts_are_valid() {
        let audio_only = pmt_section(false, true);
        // PCR on the audio PID, one ES entry.
        assert_eq!(&audio_only[8..10], &[0xE1, 0x01]);
        assert_eq!(audio_only[12], STREAM_TYPE_OPUS);
        assert_eq!(crc32_mpeg2(&audio_only), 0);
        let video_only = pmt_section(true, false);
        assert_eq!(&video_only[8..10], &[0xE1, 0x00]);
        assert_eq!(video_only.len(), 12 + 5 + 4);
        assert_eq!(crc32_mpeg2(&video_only), 0);
    }

    #[test]
    fn section_packet_layout() {
        let p = section_packet(0, &pat_section());
        assert_eq!(&p[..5], &[0x47, 0x40, 0x00, 0x10, 0x00]);
        assert!(p[5 + 16..].iter().all(|&b| b == 0xFF));
    }
}
