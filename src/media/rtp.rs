//! RTP fixed header parsing (RFC 3550 §5.1) for raw bytes.
//!
//! In the running recorder the WebRTC stack hands us parsed packets, but fuzzers, benchmarks,
//! capture replays and tests work on raw datagrams. This parser turns those bytes into the
//! core's [`RtpPacket`] and rejects every malformed case with a typed [`RtpError`] instead of
//! panicking, so hostile input can be fed straight in.

use bytes::Bytes;

use super::RtpPacket;

/// Size of the fixed RTP header (RFC 3550 §5.1).
const FIXED_HEADER: usize = 12;

/// Why a byte buffer is not a valid RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet of {len} bytes is shorter than the 12-byte fixed header")]
    TooShort {
        /// Length of the buffer.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    /// The CSRC list announced by the CC field runs past the end of the buffer.
    #[error("RTP CSRC list of {count} entries runs past the end of a {len}-byte packet")]
    CsrcTruncated {
        /// CSRC count from the header.
        count: u8,
        /// Length of the buffer.
        len: usize,
    },
    /// The X bit is set but the extension header or its announced body is missing.
    #[error("RTP header extension runs past the end of a {len}-byte packet")]
    ExtensionTruncated {
        /// Length of the buffer.
        len: usize,
    },
    /// The P bit is set but the padding count is zero or larger than what follows the header.
    #[error("RTP padding count {count} is invalid for {available} bytes after the header")]
    BadPadding {
        /// The padding count (last byte of the packet).
        count: u8,
        /// Bytes after the header (payload plus padding).
        available: usize,
    },
}

impl RtpPacket {
    /// Parses one RTP packet, copying the payload out of `buf`.
    ///
    /// Header extensions and CSRCs are skipped (the core needs neither), padding is removed.
    /// A packet that is only padding yields an empty payload, which is valid RTP.
    pub fn parse(buf: &[u8]) -> Result<RtpPacket, RtpError> {
        let (header, range) = parse_header(buf)?;
        Ok(header.with_payload(Bytes::copy_from_slice(&buf[range])))
    }

    /// Like [`RtpPacket::parse`], but the payload shares `buf`'s allocation (no copy), for
    /// replaying captures and benchmarks.
    pub fn parse_bytes(buf: &Bytes) -> Result<RtpPacket, RtpError> {
        let (header, range) = parse_header(buf)?;
        Ok(header.with_payload(buf.slice(range)))
    }

    /// Serializes the packet as a minimal RTP datagram (version 2, no CSRC, no extension, no
    /// padding): the inverse of [`RtpPacket::parse`], used by tests, fuzzers and the built-in
    /// test publisher's tooling.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The header fields of a packet before its payload is attached.
struct Header {
    sequence: u16,
    timestamp: u32,
    marker: bool,
    ssrc: u32,
    payload_type: u8,
}

impl Header {
    fn with_payload(self, payload: Bytes) -> RtpPacket {
        RtpPacket {
            sequence: self.sequence,
            timestamp: self.timestamp,
            marker: self.marker,
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            payload,
        }
    }
}

/// Validates the header and returns its fields plus the payload's byte range within `buf`.
fn parse_header(buf: &[u8]) -> Result<(Header, std::ops::Range<usize>), RtpError> {
    let len = buf.len();
    if len < FIXED_HEADER {
        return Err(RtpError::TooShort { len });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = buf[0] & 0x20 != 0;
    let has_extension = buf[0] & 0x10 != 0;
    let csrc_count = buf[0] & 0x0F;
    let header = Header {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    };
    let mut start = FIXED_HEADER + 4 * usize::from(csrc_count);
    if start > len {
        return Err(RtpError::CsrcTruncated {
            count: csrc_count,
            len,
        });
    }
    if has_extension {
        // 16-bit profile-defined id, 16-bit length in 32-bit words, then the body.
        let ext = buf
            .get(start..start + 4)
            .ok_or(RtpError::ExtensionTruncated { len })?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        start += 4 + 4 * words;
        if start > len {
            return Err(RtpError::ExtensionTruncated { len });
        }
    }
    let mut end = len;
    if has_padding {
        let available = len - start;
        let count = buf[len - 1];
        if count == 0 || usize::from(count) > available {
            return Err(RtpError::BadPadding { count, available });
        }
        end -= usize::from(count);
    }
    Ok((header, start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(first: u8) -> Vec<u8> {
        vec![
            first, 0xE0, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]
    }

    #[test]
    fn parses_the_fixed_header() {
        let mut buf = header(0x80);
        buf.extend_from_slice(&[1, 2, 3]);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.sequence, 0x1234);
        assert_eq!(p.timestamp, 0xDEAD_BEEF);
        assert!(p.marker);
        assert_eq!(p.payload_type, 0x60);
        // SSRC 0xFFFFFFFF is a real SSRC (Raspberry Ninja's Opus payloader uses it).
        assert_eq!(p.ssrc, u32::MAX);
        assert_eq!(&p.payload[..], &[1, 2, 3]);
        assert_eq!(RtpPacket::parse(&p.to_bytes()).unwrap(), p);
        assert_eq!(RtpPacket::parse_bytes(&Bytes::from(buf)).unwrap(), p);
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        // CC = 2, X = 1, P = 1.
        let mut buf = header(0x80 | 0x20 | 0x10 | 2);
        buf.extend_from_slice(&[0; 8]); // two CSRCs
        buf.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 0x10, 0xAA, 0x00, 0x00]); // one word
        buf.extend_from_slice(&[9, 8, 7]); // payload
        buf.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(&p.payload[..], &[9, 8, 7]);
    }

    #[test]
    fn padding_only_packet_has_an_empty_payload() {
        let mut buf = header(0xA0);
        buf.extend_from_slice(&[0, 0, 0, 4]);
        assert!(RtpPacket::parse(&buf).unwrap().payload.is_empty());
    }

    #[test]
    fn every_malformed_case_is_a_typed_error() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]),
            Err(RtpError::TooShort { len: 11 })
        );
        assert_eq!(
            RtpPacket::parse(&header(0x40)),
            Err(RtpError::BadVersion(1))
        );
        assert_eq!(
            RtpPacket::parse(&header(0x83)),
            Err(RtpError::CsrcTruncated { count: 3, len: 12 })
        );
        // Extension header missing, then extension body longer than the packet.
        assert_eq!(
            RtpPacket::parse(&header(0x90)),
            Err(RtpError::ExtensionTruncated { len: 12 })
        );
        let mut buf = header(0x90);
        buf.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x02, 0, 0, 0, 0]);
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::ExtensionTruncated { len: 20 })
        );
        // Padding count of zero, and larger than the bytes after the header.
        let mut buf = header(0xA0);
        buf.extend_from_slice(&[1, 0]);
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::BadPadding {
                count: 0,
                available: 2
            })
        );
        let mut buf = header(0xA0);
        buf.extend_from_slice(&[1, 3]);
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::BadPadding {
                count: 3,
                available: 2
            })
        );
        // P bit set with nothing after the header at all.
        let buf = header(0xA0);
        assert!(matches!(
            RtpPacket::parse(&buf),
            Err(RtpError::BadPadding { available: 0, .. })
        ));
    }
}
