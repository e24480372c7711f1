//! Opus packet duration from its TOC byte (RFC 6716 §3.1).
//!
//! The TS writer, the timeline and the clip reader all need to know how long an Opus packet
//! lasts without decoding it; the answer is in the first one or two bytes.

/// Samples per frame at 48 kHz for each of the 32 TOC configurations (RFC 6716 Table 2).
fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK NB/MB/WB: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid SWB/FB: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT NB/WB/SWB/FB: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// The number of 48 kHz samples in an Opus packet, or `None` if the packet is empty, its frame
/// count byte is missing, or it claims more than 120 ms (which RFC 6716 §3.2.5 forbids).
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let per_frame = frame_samples(toc >> 3);
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = per_frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_webrtc_packets() {
        // CELT FB 20 ms, one frame (config 31, code 0): what browsers send.
        assert_eq!(packet_samples(&[0xF8, 1, 2]), Some(960));
        // SILK WB 20 ms (config 9), stereo flag set.
        assert_eq!(packet_samples(&[0x4C]), Some(960));
        // Hybrid FB 10 ms (config 14), two frames (code 1).
        assert_eq!(packet_samples(&[(14 << 3) | 1]), Some(960));
        // SILK 60 ms (config 3).
        assert_eq!(packet_samples(&[3 << 3]), Some(2880));
    }

    #[test]
    fn code_three_reads_the_frame_count() {
        // CELT FB 2.5 ms (config 28) × 6 frames.
        assert_eq!(packet_samples(&[(28 << 3) | 3, 6]), Some(720));
        // Missing count byte, zero frames, and over 120 ms are refused.
        assert_eq!(packet_samples(&[(28 << 3) | 3]), None);
        assert_eq!(packet_samples(&[(28 << 3) | 3, 0]), None);
        assert_eq!(packet_samples(&[(3 << 3) | 3, 3]), None);
        assert_eq!(packet_samples(&[]), None);
    }
}
