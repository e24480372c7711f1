//! Encoded test media made by ffmpeg at test time, read back into units the writers take:
//! IVF (VP8 / VP9 / AV1 frames), Ogg (Opus packets), and the AV1 `av1C` record.
//!
//! IVF is the simplest container ffmpeg writes for these codecs: a 32-byte header, then per
//! frame a 12-byte header (size, timestamp) and the frame. Keyframe flags come from ffprobe,
//! so no codec header is parsed here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ffmpeg::run;

/// One frame of an IVF file.
#[derive(Debug, Clone)]
pub struct IvfFrame {
    /// Timestamp in the file's time base.
    pub pts: u64,
    /// The frame (a temporal unit for AV1).
    pub data: Vec<u8>,
    /// ffprobe's keyframe flag.
    pub keyframe: bool,
}

/// An IVF file read whole.
#[derive(Debug, Clone)]
pub struct Ivf {
    /// `VP80`, `VP90` or `AV01`.
    pub fourcc: [u8; 4],
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Time base numerator / denominator (seconds per tick = num / den).
    pub time_base: (u64, u64),
    /// The frames in order.
    pub frames: Vec<IvfFrame>,
}

impl Ivf {
    /// A frame's timestamp in 90 kHz ticks.
    pub fn pts_90k(&self, f: &IvfFrame) -> u64 {
        f.pts * 90_000 * self.time_base.0 / self.time_base.1
    }
}

/// Reads an IVF file; keyframe flags from `ffprobe -show_packets`.
pub fn read_ivf(path: &Path) -> Ivf {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() >= 32 && &bytes[..4] == b"DKIF",
        "{path:?} is not IVF"
    );
    let u16_at = |p: usize| u32::from(u16::from_le_bytes([bytes[p], bytes[p + 1]]));
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
    let header_len = u16_at(6) as usize;
    let mut ivf = Ivf {
        fourcc: bytes[8..12].try_into().unwrap(),
        width: u16_at(12),
        height: u16_at(14),
        time_base: (u64::from(u32_at(20)), u64::from(u32_at(16))),
        frames: Vec::new(),
    };
    let mut pos = header_len;
    while pos + 12 <= bytes.len() {
        let size = u32_at(pos) as usize;
        let pts = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into().unwrap());
        let data = bytes[pos + 12..pos + 12 + size].to_vec();
        ivf.frames.push(IvfFrame {
            pts,
            data,
            keyframe: false,
        });
        pos += 12 + size;
    }
    assert_eq!(pos, bytes.len(), "{path:?}: trailing bytes");
    let (flags, _) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_packets",
            "-show_entries",
            "packet=flags",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    );
    let flags: Vec<&str> = flags.lines().collect();
    assert_eq!(
        flags.len(),
        ivf.frames.len(),
        "ffprobe sees another frame count"
    );
    for (f, flag) in ivf.frames.iter_mut().zip(flags) {
        f.keyframe = flag.starts_with('K');
    }
    ivf
}

/// The Opus packets of an Ogg Opus file (RFC 7845), without the two header packets.
pub fn read_ogg_opus(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut packets = Vec::new();
    let mut partial = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        assert_eq!(&bytes[pos..pos + 4], b"OggS", "{path:?}: no page at {pos}");
        let segments = usize::from(bytes[pos + 26]);
        let table = &bytes[pos + 27..pos + 27 + segments];
        let mut body = pos + 27 + segments;
        for &lace in table {
            partial.extend_from_slice(&bytes[body..body + usize::from(lace)]);
            body += usize::from(lace);
            if lace < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        pos = body;
    }
    assert!(packets.len() > 2 && packets[0].starts_with(b"OpusHead"));
    assert!(packets[1].starts_with(b"OpusTags"));
    packets.split_off(2)
}

/// An AV1 temporal unit without its temporal delimiter OBUs: the form the recorder's AV1
/// frames have (low-overhead OBUs, each with its size field).
pub fn strip_temporal_delimiters(tu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tu.len());
    let mut pos = 0;
    while pos < tu.len() {
        let header = tu[pos];
        let obu_type = (header >> 3) & 0x0F;
        let ext = usize::from(header & 0x04 != 0);
        assert!(header & 0x02 != 0, "OBU without a size field");
        let (mut size, mut len_bytes) = (0usize, 0);
        loop {
            let b = tu[pos + 1 + ext + len_bytes];
            size |= usize::from(b & 0x7F) << (7 * len_bytes);
            len_bytes += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = pos + 1 + ext + len_bytes + size;
        if obu_type != 2 {
            out.extend_from_slice(&tu[pos..end]);
        }
        pos = end;
    }
    out
}

/// The `av1C` record of an AV1 IVF, as ffmpeg's MP4 muxer builds it (a remux, then the box
/// is cut out of the file).
pub fn av1c_of(ivf: &Path) -> Vec<u8> {
    let mp4 = ivf.with_extension("mp4");
    run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            ivf.to_str().unwrap(),
            "-c",
            "copy",
            mp4.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&mp4).unwrap();
    std::fs::remove_file(&mp4).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"av1C")
        .expect("no av1C box");
    let size = u32::from_be_bytes(bytes[at - 4..at].try_into().unwrap()) as usize;
    bytes[at + 4..at - 4 + size].to_vec()
}

/// A video encoder ffmpeg has, with the options that make it fast.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    /// ffmpeg's encoder name.
    pub name: &'static str,
    /// Its options.
    pub args: &'static [&'static str],
}

/// The VP8 encoder.
pub const VP8: Encoder = Encoder {
    name: "libvpx",
    args: &["-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"],
};
/// The VP9 encoder.
pub const VP9: Encoder = Encoder {
    name: "libvpx-vp9",
    args: &["-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"],
};
/// AV1 encoders in order of preference (speed).
pub const AV1: [Encoder; 3] = [
    Encoder {
        name: "libsvtav1",
        args: &["-preset", "12"],
    },
    Encoder {
        name: "libaom-av1",
        args: &["-cpu-used", "8", "-row-mt", "1"],
    },
    Encoder {
        name: "librav1e",
        args: &["-speed", "10"],
    },
];

/// The names of ffmpeg's encoders.
pub fn encoders() -> Vec<String> {
    let (out, _) = run("ffmpeg", &["-hide_banner", "-encoders"]);
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// The first of `candidates` this ffmpeg has; panics with a clear message if none.
pub fn pick(candidates: &[Encoder]) -> Encoder {
    let have = encoders();
    *candidates
        .iter()
        .find(|e| have.iter().any(|h| h == e.name))
        .unwrap_or_else(|| {
            panic!(
                "this ffmpeg has none of the encoders {:?}: install an ffmpeg built with them",
                candidates.iter().map(|e| e.name).collect::<Vec<_>>()
            )
        })
}

/// Encodes `seconds` of a 320x240 30 fps test picture (keyframe every 30 frames) to IVF and a
/// 440 Hz tone to Ogg Opus (20 ms packets), both into the temp dir; returns their paths.
pub fn encode(encoder: Encoder, seconds: u32, tag: &str) -> (PathBuf, PathBuf) {
    pick(&[encoder]);
    pick(&[Encoder {
        name: "libopus",
        args: &[],
    }]);
    let dir = std::env::temp_dir();
    let stem = format!("ninjarec-test-{}-{tag}", std::process::id());
    let ivf = dir.join(format!("{stem}.ivf"));
    let ogg = dir.join(format!("{stem}.ogg"));
    let t = seconds.to_string();
    let mut args: Vec<&str> = vec![
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-t",
        &t,
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-t",
        &t,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-map",
        "0:v",
        "-c:v",
        encoder.name,
        "-g",
        "30",
    ];
    args.extend_from_slice(encoder.args);
    args.extend_from_slice(&["-f", "ivf", ivf.to_str().unwrap()]);
    args.extend_from_slice(&[
        "-map",
        "1:a",
        "-c:a",
        "libopus",
        "-b:a",
        "64k",
        "-frame_duration",
        "20",
        "-f",
        "ogg",
        ogg.to_str().unwrap(),
    ]);
    let status = Command::new("ffmpeg")
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("ffmpeg cannot run ({e}): apt-get install ffmpeg"));
    assert!(status.success(), "ffmpeg {args:?} failed");
    (ivf, ogg)
}
