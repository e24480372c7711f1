#!/usr/bin/python3
"""A GStreamer VDO.Ninja publisher that imitates Raspberry Ninja, for ninjarec's end-to-end tests.

Why it exists: ninjarec must record real GStreamer/webrtcbin publishers (Raspberry Ninja, "RN"),
whose wire behaviour differs from our webrtc-rs test source (`src/testsrc/`): media and a data
channel in the first offer, `"session": null`, Opus with SSRC 0xFFFFFFFF, two H.264 slices per
frame, a pipeline built per viewer, ping over the data channel every 3 s. This script speaks the
same protocol (vdoninja-protocol.md §2-§4, both dialects like `src/testsrc/state.rs`) and sends
media it generates itself, timestamped from one schedule so audio and video are in sync by
construction: optional white-frame flashes that start exactly with 1 kHz beeps.

Runs with Debian's /usr/bin/python3 and Debian packages only (see DEBIAN_PACKAGES). Several
publishers run in one process (--streams a,b,c), each with its own WebSocket; every viewer gets
its own pipeline (sources, encoders, webrtcbin), like RN without --multiviewer.

For load tests (scripts/loadbench.sh) two options make a stream cheap while its wire stays
webrtcbin's: --pre-encoded (x264 and Opus encoded once per process, looped by every pipeline;
see EncodedLoop) and --light-counters (no Python code per packet; see Peer.poll_stats).

Reports go to stdout, one JSON object per line prefixed `NINJAREC `:
  ready       {"event":"ready","stream","wire_stream"}            the stream is announced
  viewer      {"event":"viewer","stream","viewer","state",...}    requested/offer/answer/connected/closed
  media-start {"event":"media-start","stream","viewer","t","media_epoch_ms"}
              t = unix ms when the viewer's first RTP packet went to the network (handed to
              nicesink); media_epoch_ms = unix ms of media time 0 (PTS 0) of that viewer's pipeline
  stats       {"event":"stats","stream","final",...counters...,"per_viewer":{...}}
              payloader counters (RTP handed to webrtcbin): video_packets, audio_packets,
              video_frames (marker bits), keyframes (frames with an IDR slice), video_slices;
              wire counters (SRTP/SRTCP handed to nicesink): wire_video_packets,
              wire_audio_packets, wire_other_rtp (RTX, RED...), wire_rtcp; audio_ssrc/video_ssrc.
              With --light-counters only wire_video_packets and wire_audio_packets are counted
              (RTP packets webrtcbin's RTP session sent, as of the previous report); the other
              counters are null
  sr          (--report-sr) {"event":"sr","stream","viewer","kind","ssrc","ntp_unix_ms","rtp",
              "packets","t","pts_ms","implied_epoch_ms"}: each Sender Report webrtcbin sends (t =
              unix ms when it reached SRTP encryption), with the media time its RTP timestamp
              stands for and the wall time of PTS 0 it implies
  exit        {"event":"exit","code"}
Errors: one line on stderr and a non-zero exit status.
"""

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.parse

DEFAULT_PASSWORD = "someEncryptionKey123"
DEFAULT_SALT = "vdo.ninja"
DEBIAN_PACKAGES = (
    "python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly "
    "gstreamer1.0-nice python3-websockets python3-cryptography"
)
# Elements the pipelines need, with the Debian package that ships each.
NEEDED_ELEMENTS = {
    "appsrc": "gstreamer1.0-plugins-base",
    "clocksync": "gstreamer1.0 (core)",
    "queue": "gstreamer1.0 (core)",
    "opusenc": "gstreamer1.0-plugins-base",
    "rtpopuspay": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "webrtcbin": "gstreamer1.0-plugins-bad",
    "dtlssrtpenc": "gstreamer1.0-plugins-bad",
    "srtpenc": "gstreamer1.0-plugins-bad",
    "sctpenc": "gstreamer1.0-plugins-bad",
    "nicesink": "gstreamer1.0-nice",
}
PING_INTERVAL = 3.0  # RN pings every 3 s ...
MAX_UNANSWERED_PINGS = 10  # ... and drops the viewer after 10 unanswered pings.
ANSWER_TIMEOUT = 30.0  # an offer not answered within this is dropped (frees its pipeline)
MAX_VIEWERS = 16
VIDEO_PT = 96
AUDIO_PT = 100
AUDIO_RATE = 48000
AUDIO_CHUNK = 960  # 20 ms at 48 kHz
FLASH_SECONDS = 0.1
BEEP_HZ = 1000
BEEP_AMPLITUDE = 0.7 * 32767  # -3 dBFS, like tests/it/support/sync.rs write_wav

Gst = GstWebRTC = GstSdp = None  # imported by load_gi()
LOOP = None  # the asyncio loop; GStreamer threads hand work to it with call_soon_threadsafe
_out_lock = threading.Lock()
# Python wrappers of webrtcbin's ICE agents. PyGObject takes over the agent's floating reference
# when the property is read; if the wrapper were collected the agent would be freed under
# webrtcbin. Keeping the wrappers for the process lifetime avoids that (a few bytes per viewer).
_KEEP_ALIVE = []


def report(obj):
    """Writes one `NINJAREC {json}` line to stdout (from any thread)."""
    line = "NINJAREC " + json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def warn(msg):
    with _out_lock:
        sys.stderr.write(f"gst_publisher: {msg}\n")
        sys.stderr.flush()


def die(msg, code=1):
    """One line on stderr, then exit at once (also from GStreamer threads)."""
    warn(msg)
    os._exit(code)


def unix_ms():
    return int(time.time() * 1000)


def load_gi():
    """Imports GStreamer's Python bindings; returns an error text or None."""
    global Gst, GstWebRTC, GstSdp
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import Gst as _Gst, GstSdp as _GstSdp, GstWebRTC as _GstWebRTC
    except (ImportError, ValueError) as e:
        return f"cannot import GStreamer bindings ({e})"
    Gst, GstWebRTC, GstSdp = _Gst, _GstWebRTC, _GstSdp
    Gst.init(None)
    return None


# ------------------------------------------------------------------------------------------
# Hashing and encryption (vdoninja-protocol.md §3)
# ------------------------------------------------------------------------------------------


def generate_hash(text, n):
    """Lowercase hex of the first n/2 bytes of SHA-256(text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


class Security:
    """Stream-id suffix, room hash and AES-256-CBC of one password+salt (None = disabled)."""

    def __init__(self, password, salt):
        if password is None:
            password = DEFAULT_PASSWORD
        password = password.strip()
        self.enabled = password.lower() not in ("false", "0", "off", "")
        # The web app (and ninjarec) URI-encode the password; RN does not. They agree for
        # passwords of [A-Za-z0-9-_.!~*'()] only.
        self.password = urllib.parse.quote(password, safe="-_.!~*'()")
        self.salt = salt
        if self.enabled:
            self.key = hashlib.sha256((self.password + salt).encode("utf-8")).digest()
            self.suffix = generate_hash(self.password + salt, 6)

    def stream(self, stream_id):
        return stream_id[:44] + self.suffix if self.enabled else stream_id

    def room(self, room):
        return generate_hash(room + self.password + self.salt, 16) if self.enabled else room

    def encrypt(self, text, iv=None):
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        iv = iv if iv is not None else os.urandom(16)
        padder = padding.PKCS7(128).padder()
        data = padder.update(text.encode("utf-8")) + padder.finalize()
        enc = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        return (enc.update(data) + enc.finalize()).hex(), iv.hex()

    def decrypt(self, hex_text, hex_iv):
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        dec = Cipher(algorithms.AES(self.key), modes.CBC(bytes.fromhex(hex_iv))).decryptor()
        data = dec.update(bytes.fromhex(hex_text)) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(data) + unpadder.finalize()).decode("utf-8")

    def seal(self, value):
        """(field value, vector or None): JSON.stringify + encrypt when enabled."""
        if not self.enabled:
            return value, None
        return self.encrypt(json.dumps(value, separators=(",", ":")))

    def open(self, value, vector):
        """Decrypts a field if it came with a vector; plaintext objects pass through."""
        if vector is None or not isinstance(value, str):
            return value
        if not self.enabled:
            raise ValueError("encrypted payload but the password is off")
        return json.loads(self.decrypt(value, vector))


def crypto_self_test():
    """The worked example of vdoninja-protocol.md §3; returns an error text or None."""
    s = Security(None, DEFAULT_SALT)
    checks = [
        (s.key.hex(), "808d646f7eb92052344e1e668e340c852f8d675754acfae11d8cc49233c36eba"),
        (s.stream("mystream"), "mystream808d64"),
        (s.room("myroom"), "2f1a0139acdd5bdc"),
        (
            s.encrypt('{"type":"answer","sdp":"v=0\\r\\n"}', bytes(range(16)))[0],
            "e3cbc3ad10ee89125690f59776c972d770723acec02df276fe7c02a800d34f83"
            "bfa792e1450b421fd51f9f101d21c8d0",
        ),
    ]
    p = Security("p@ss word", DEFAULT_SALT)
    checks += [(p.stream(""), "b37e9f"), (p.room("myroom"), "9279bbae949c54ba")]
    for got, want in checks:
        if got != want:
            return f"crypto self-test failed: {got} != {want}"
    return None


# ------------------------------------------------------------------------------------------
# Media: one schedule for video frames and audio samples
# ------------------------------------------------------------------------------------------


class Schedule:
    """Which video frames are white and which audio samples beep.

    A flash at t starts on the frame boundary nearest to t; its beep starts on exactly the same
    instant (48000/fps samples per frame), so A/V sync is by construction. With a period, the
    flash list repeats every period seconds; otherwise the times are absolute (media time, i.e.
    seconds since the viewer's pipeline started).
    """

    def __init__(self, fps, flashes, period):
        if AUDIO_RATE % fps:
            raise ValueError(f"--fps {fps} must divide {AUDIO_RATE}")
        self.fps = fps
        self.samples_per_frame = AUDIO_RATE // fps
        self.flash_frames = max(1, round(FLASH_SECONDS * fps))
        self.beep_samples = round(FLASH_SECONDS * AUDIO_RATE)
        self.starts = sorted({round(t * fps) for t in flashes if t >= 0})
        self.period_frames = None
        if period:
            pf = period * fps
            if abs(pf - round(pf)) > 1e-6 or round(pf) <= 0:
                raise ValueError("--period must be a whole number of frames")
            self.period_frames = round(pf)
            self.starts = [s for s in self.starts if s < self.period_frames]

    def video_white(self, n):
        if not self.starts:
            return False
        m = n % self.period_frames if self.period_frames else n
        return any(s <= m < s + self.flash_frames for s in self.starts)

    def beep_offsets(self, first_sample, count):
        """For samples [first, first+count): list of (index in chunk, offset into its beep)."""
        if not self.starts:
            return []
        out = []
        period = self.period_frames * self.samples_per_frame if self.period_frames else None
        for i in range(count):
            s = first_sample + i
            m = s % period if period else s
            for f in self.starts:
                b = f * self.samples_per_frame
                if b <= m < b + self.beep_samples:
                    out.append((i, m - b))
                    break
        return out

    def chunk_has_beep(self, first_sample, count):
        if not self.starts:
            return False
        period = self.period_frames * self.samples_per_frame if self.period_frames else None
        for f in self.starts:
            b = f * self.samples_per_frame
            e = b + self.beep_samples
            lo, hi = first_sample, first_sample + count
            if period:
                # Check the occurrences of this beep that could overlap the chunk.
                k = (lo - e) // period + 1
                while k * period + b < hi:
                    if k * period + e > lo:
                        return True
                    k += 1
            elif b < hi and e > lo:
                return True
        return False


_FRAME_CACHE = {}


def frames_for(width, height, pattern):
    """Raw I420 frames as GstBuffers shared (read-only) by all pipelines of the process:
    (list of normal frames, white frame)."""
    key = (width, height, pattern)
    if key not in _FRAME_CACHE:
        y_size = width * height
        c_size = (width // 2) * (height // 2)
        chroma = bytes([128]) * (2 * c_size)
        white = bytes([235]) * y_size + chroma
        if pattern == "black":
            normal = [bytes([16]) * y_size + chroma]
        else:
            # Luma noise in 16..143 (never near white): every frame differs from the previous one,
            # so the encoder spends its bitrate and packet rates look like a camera's.
            table = bytes(16 + (b & 0x7F) for b in range(256))
            normal = [os.urandom(y_size).translate(table) + chroma for _ in range(8)]
        _FRAME_CACHE[key] = (
            [Gst.Buffer.new_wrapped(f) for f in normal],
            Gst.Buffer.new_wrapped(white),
        )
    return _FRAME_CACHE[key]


_SILENCE = bytes(AUDIO_CHUNK * 4)


def audio_chunk(schedule, k):
    """Chunk k (20 ms, S16LE stereo) of the audio: silence, or the 1 kHz beep where scheduled."""
    first = k * AUDIO_CHUNK
    if not schedule.chunk_has_beep(first, AUDIO_CHUNK):
        return _SILENCE
    buf = bytearray(_SILENCE)
    for i, off in schedule.beep_offsets(first, AUDIO_CHUNK):
        v = round(BEEP_AMPLITUDE * math.sin(2 * math.pi * BEEP_HZ * off / AUDIO_RATE))
        b = v.to_bytes(2, "little", signed=True)
        buf[4 * i : 4 * i + 2] = b
        buf[4 * i + 2 : 4 * i + 4] = b
    return bytes(buf)


# ------------------------------------------------------------------------------------------
# --pre-encoded: the media encoded once per process
# ------------------------------------------------------------------------------------------

KEY_INT_MAX = 60  # x264enc key-int-max: an IDR every 2 s at 30 fps
PRE_ENCODED_SECONDS = 10  # length of the loop: five GOPs at 30 fps


def x264_desc(a):
    """x264enc and its caps as Raspberry Ninja sets them; the live pipelines and --pre-encoded
    share this text so both send the same kind of stream."""
    return (
        f"x264enc tune=zerolatency speed-preset=ultrafast bitrate={a.bitrate} "
        f'key-int-max={KEY_INT_MAX} threads={a.x264_threads} option-string="slices=2" '
        "! video/x-h264,profile=constrained-baseline,stream-format=byte-stream"
    )


def opus_desc(a):
    """opusenc as the live pipelines set it (shared with --pre-encoded, like x264_desc)."""
    return (
        "opusenc audio-type=restricted-lowdelay frame-size=20 "
        f"bitrate={a.audio_bitrate} bitrate-type=cbr inband-fec=false"
    )


def nal_types(data):
    """NAL unit types of an H.264 byte-stream access unit (Annex B start codes)."""
    out = []
    i = data.find(b"\x00\x00\x01")
    while 0 <= i and i + 3 < len(data):
        out.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return out


def _encode(desc, caps, buffers):
    """Runs `appsrc caps=... ! desc ! appsink` as fast as it goes over `buffers`; returns the
    encoded buffers and their caps."""
    pipe = Gst.parse_launch(f"appsrc name=src format=time ! {desc} ! appsink name=sink sync=false")
    src = pipe.get_by_name("src")
    sink = pipe.get_by_name("sink")
    src.set_property("caps", Gst.Caps.from_string(caps))
    if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        die("--pre-encoded: the encoding pipeline did not start")
    for b in buffers:
        src.emit("push-buffer", b)
    src.emit("end-of-stream")
    out, out_caps = [], None
    bus = pipe.get_bus()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        sample = sink.emit("try-pull-sample", Gst.SECOND)
        if sample is not None:
            out_caps = out_caps or sample.get_caps()
            out.append(sample.get_buffer())
            continue
        if sink.get_property("eos"):
            break
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            die(f"--pre-encoded: encoding failed: {msg.parse_error()[0].message}")
    else:
        die("--pre-encoded: the encoder did not finish within 300 s")
    pipe.set_state(Gst.State.NULL)
    return out, out_caps


class EncodedLoop:
    """--pre-encoded: PRE_ENCODED_SECONDS of video and audio, encoded once per process, that every
    viewer's pipeline sends in a loop with fresh timestamps.

    Why: encoding x264 live for every viewer (as Raspberry Ninja does) costs ~15 % of a core
    per 720p stream, so a 2-core machine saturates at 6-8 publishers; a load test of the
    recorder at N = 32 needs the wire of N publishers, not N encoders. What goes out is still
    x264's stream (same settings, same noise frames) payloaded by rtph264pay and sent by
    webrtcbin, at the same packet rates. The encoder runs one GOP longer than the loop and the
    first GOP is dropped: the loop then starts on an IDR with the rate control settled, and
    ends right before the next IDR (key-int-max divides the loop; scenecut is off in the
    ultrafast preset), so every wrap lands on an IDR. Checked at startup. The audio is Opus of
    silence (no beeps in this mode), looped the same way: no opusenc per viewer either."""

    def __init__(self, a):
        # Copying an encoded buffer for a pipeline takes its flags (x264enc's DELTA_UNIT and
        # MARKER) and shares its memory.
        self.copy = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.MEMORY
        vbufs, _white = frames_for(a.width, a.height, a.pattern)
        frames = a.fps * PRE_ENCODED_SECONDS  # a multiple of KEY_INT_MAX (parse_args)
        raw = []
        for n in range(KEY_INT_MAX + frames):
            base = vbufs[n % len(vbufs)]
            b = base.copy_region(Gst.BufferCopyFlags.MEMORY, 0, base.get_size())
            b.pts = n * Gst.SECOND // a.fps
            b.duration = (n + 1) * Gst.SECOND // a.fps - b.pts
            raw.append(b)
        v_caps = f"video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1"
        video, self.video_caps = _encode(x264_desc(a), v_caps, raw)
        if len(video) != len(raw):
            die(f"--pre-encoded: x264enc gave {len(video)} frames for {len(raw)}")
        self.video = video[KEY_INT_MAX:]
        types = [nal_types(b.extract_dup(0, b.get_size())) for b in self.video]
        keys = [i for i, t in enumerate(types) if 5 in t]
        if keys != list(range(0, frames, KEY_INT_MAX)):
            die(f"--pre-encoded: IDR frames at {keys}, wanted every {KEY_INT_MAX} from 0")
        if 7 not in types[0] or 8 not in types[0]:
            die(f"--pre-encoded: the first IDR has no SPS/PPS (NAL types {types[0]})")

        chunks = AUDIO_RATE * PRE_ENCODED_SECONDS // AUDIO_CHUNK
        skip = AUDIO_RATE // AUDIO_CHUNK  # one second: the encoder's start
        silence = []
        for k in range(skip + chunks):
            b = Gst.Buffer.new_wrapped(_SILENCE)
            b.pts = k * AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
            b.duration = AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
            silence.append(b)
        a_caps = f"audio/x-raw,format=S16LE,layout=interleaved,rate={AUDIO_RATE},channels=2"
        audio, self.audio_caps = _encode(opus_desc(a), a_caps, silence)
        if len(audio) < skip + chunks:
            die(f"--pre-encoded: opusenc gave {len(audio)} packets for {skip + chunks} chunks")
        self.audio = audio[skip : skip + chunks]


# ------------------------------------------------------------------------------------------
# RTP counting (pad probes)
# ------------------------------------------------------------------------------------------


class Counters:
    """Counters of one viewer's pipeline. Each field is written by one streaming thread only,
    except the wire counters, which several threads feed (hence the lock)."""

    def __init__(self, light=False):
        self.light = light  # --light-counters: only LIGHT_FIELDS are counted
        self.video_packets = 0
        self.audio_packets = 0
        self.video_frames = 0
        self.keyframes = 0
        self.video_slices = 0
        self._frame_idr = False
        self.wire_lock = threading.Lock()
        self.wire_video_packets = 0
        self.wire_audio_packets = 0
        self.wire_other_rtp = 0
        self.wire_rtcp = 0
        self.audio_ssrc = None
        self.video_ssrc = None
        self.first_wire_rtp_ms = None
        self.audio_rtp_base = None
        self.video_rtp_base = None

    FIELDS = (
        "video_packets",
        "audio_packets",
        "video_frames",
        "keyframes",
        "video_slices",
        "wire_video_packets",
        "wire_audio_packets",
        "wire_other_rtp",
        "wire_rtcp",
    )

    # What --light-counters still counts (from webrtcbin's statistics, see Peer.poll_stats).
    LIGHT_FIELDS = ("wire_video_packets", "wire_audio_packets")

    @classmethod
    def counted(cls, light):
        return cls.LIGHT_FIELDS if light else cls.FIELDS

    def snapshot(self):
        counted = self.counted(self.light)
        d = {f: getattr(self, f) if f in counted else None for f in self.FIELDS}
        d["audio_ssrc"] = None if self.audio_ssrc is None else f"{self.audio_ssrc:08x}"
        d["video_ssrc"] = None if self.video_ssrc is None else f"{self.video_ssrc:08x}"
        d["media_start"] = self.first_wire_rtp_ms
        return d


def _buffers(info):
    if info.type & Gst.PadProbeType.BUFFER_LIST:
        lst = info.get_buffer_list()
        return [lst.get(i) for i in range(lst.length())]
    buf = info.get_buffer()
    return [buf] if buf is not None else []


def _payload_offset(hdr):
    cc = hdr[0] & 0x0F
    off = 12 + 4 * cc
    if hdr[0] & 0x10:
        if len(hdr) < off + 4:
            return None
        off += 4 + 4 * ((hdr[off + 2] << 8) | hdr[off + 3])
    return off


def _rtp_base(pad, buf, hdr, rate):
    """RTP timestamp of media time 0: the payloader's timestamp minus the buffer's running time
    in RTP units (running time, not PTS: x264enc shifts its PTS and segment by 1000 hours)."""
    ts = int.from_bytes(hdr[4:8], "big")
    ev = pad.get_sticky_event(Gst.EventType.SEGMENT, 0)
    if buf.pts == Gst.CLOCK_TIME_NONE or ev is None:
        return None
    running = ev.parse_segment().to_running_time(Gst.Format.TIME, buf.pts)
    if running == Gst.CLOCK_TIME_NONE or running < 0:
        return None
    return (ts - running * rate // Gst.SECOND) & 0xFFFFFFFF


def _count_h264(pad, c, buf):
    size = buf.get_size()
    hdr = buf.extract_dup(0, min(size, 64))
    if len(hdr) < 13:
        return
    c.video_packets += 1
    if c.video_rtp_base is None:
        c.video_rtp_base = _rtp_base(pad, buf, hdr, 90000)
    off = _payload_offset(hdr)
    if off is None or off >= size:
        return
    if off + 2 > len(hdr):
        hdr = buf.extract_dup(0, min(size, off + 2))
    nal = hdr[off] & 0x1F
    if nal in (1, 5):
        c.video_slices += 1
        c._frame_idr |= nal == 5
    elif nal == 28 and off + 1 < len(hdr):  # FU-A: count slice starts
        fu = hdr[off + 1]
        if fu & 0x80 and (fu & 0x1F) in (1, 5):
            c.video_slices += 1
            c._frame_idr |= (fu & 0x1F) == 5
    elif nal == 24:  # STAP-A: look at every aggregated NAL unit
        data = buf.extract_dup(off, size - off)
        i = 1
        while i + 2 < len(data):
            n = (data[i] << 8) | data[i + 1]
            if n == 0 or i + 2 >= len(data):
                break
            t = data[i + 2] & 0x1F
            if t in (1, 5):
                c.video_slices += 1
                c._frame_idr |= t == 5
            i += 2 + n
    if hdr[1] & 0x80:  # marker: last packet of the frame
        c.video_frames += 1
        if c._frame_idr:
            c.keyframes += 1
        c._frame_idr = False


def video_pay_probe(pad, info, c):
    for b in _buffers(info):
        _count_h264(pad, c, b)
    return Gst.PadProbeReturn.OK


def audio_pay_probe(pad, info, c):
    for b in _buffers(info):
        c.audio_packets += 1
        if c.audio_rtp_base is None:
            c.audio_rtp_base = _rtp_base(pad, b, b.extract_dup(0, 12), AUDIO_RATE)
    return Gst.PadProbeReturn.OK


def wire_probe(pad, info, peer):
    """SRTP/SRTCP/DTLS handed to nicesink: the header of SRTP is in the clear (RFC 3711)."""
    c = peer.counters
    for b in _buffers(info):
        hdr = b.extract_dup(0, min(b.get_size(), 12))
        if len(hdr) < 12 or not 128 <= hdr[0] <= 191:
            continue  # DTLS (20..63), STUN (0..3)
        with c.wire_lock:
            if 192 <= hdr[1] <= 223:
                c.wire_rtcp += 1
                continue
            pt = hdr[1] & 0x7F
            ssrc = int.from_bytes(hdr[8:12], "big")
            if pt == VIDEO_PT:
                c.wire_video_packets += 1
                c.video_ssrc = ssrc
            elif pt == AUDIO_PT:
                c.wire_audio_packets += 1
                c.audio_ssrc = ssrc
            else:
                c.wire_other_rtp += 1
            first = c.first_wire_rtp_ms is None
            if first:
                c.first_wire_rtp_ms = unix_ms()
        if first:
            LOOP.call_soon_threadsafe(peer.on_media_start)
    return Gst.PadProbeReturn.OK


def wire_start_probe(pad, info, peer):
    """--light-counters: only the time of the first SRTP packet handed to nicesink (for the
    media-start report); the probe then removes itself."""
    for b in _buffers(info):
        hdr = b.extract_dup(0, min(b.get_size(), 2))
        if len(hdr) == 2 and 128 <= hdr[0] <= 191 and not 192 <= hdr[1] <= 223:
            peer.counters.first_wire_rtp_ms = unix_ms()
            LOOP.call_soon_threadsafe(peer.on_media_start)
            return Gst.PadProbeReturn.REMOVE
    return Gst.PadProbeReturn.OK


# ------------------------------------------------------------------------------------------
# One viewer: its own pipeline and webrtcbin
# ------------------------------------------------------------------------------------------


class Peer:
    """A viewer's peer connection: sources, encoders and webrtcbin in one pipeline (RN builds
    the whole pipeline per viewer unless --multiviewer). Lives on the asyncio thread; GStreamer
    callbacks hand their work over with call_soon_threadsafe."""

    def __init__(self, pub, viewer):
        self.pub = pub
        self.args = pub.args
        self.viewer = viewer
        self.key = viewer
        self.session = None  # RN: null until the viewer sends one
        self.started = time.monotonic()
        self.offer_sent = False
        self.answered = False
        self.connected = False
        self.closed = False
        self.queued_local = []
        self.queued_remote = []
        self.channels = []  # open data channels (RN opens two)
        self.send_channel = None  # the last one opened: pings go there
        self.all_channels = []
        self.unanswered_pings = 0
        # Data-channel diagnostics, reported per viewer in `stats`: channels opened, pings
        # sent, pongs received (a viewer dropped for "no heartbeat" shows which side failed).
        self.dc_opened = 0
        self.pings_sent = 0
        self.pongs = 0
        self.counters = Counters(light=self.args.light_counters)
        self.media_epoch_ms = None
        self.ping_task = None
        self.offer_made = False
        self.teardown_thread = None
        self._build()

    # -- pipeline --------------------------------------------------------------------------

    def _build(self):
        a = self.args
        v_caps = f"video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1"
        a_caps = f"audio/x-raw,format=S16LE,layout=interleaved,rate={AUDIO_RATE},channels=2"
        encoded = self.pub.encoded
        if encoded is None:
            video = (
                f'appsrc name=vsrc is-live=true format=time min-latency=0 caps="{v_caps}" '
                f"! clocksync ! queue max-size-buffers=1 ! {x264_desc(a)} "
            )
            audio = (
                f'appsrc name=asrc is-live=true format=time min-latency=0 caps="{a_caps}" '
                f"! clocksync ! {opus_desc(a)} "
            )
        else:
            # --pre-encoded: the encoders' output, caps set below (the encoders' own caps).
            video = "appsrc name=vsrc is-live=true format=time min-latency=0 ! clocksync "
            audio = "appsrc name=asrc is-live=true format=time min-latency=0 ! clocksync "
        desc = (
            "webrtcbin name=webrtc bundle-policy=max-bundle async-handling=true "
            f"{video}"
            "! rtph264pay name=vpay config-interval=-1 aggregate-mode=zero-latency "
            f"pt={VIDEO_PT} "
            f"! application/x-rtp,media=video,encoding-name=H264,payload={VIDEO_PT} "
            "! queue ! webrtc. "
            f"{audio}"
            f"! rtpopuspay name=apay pt={AUDIO_PT} ssrc=-1 "
            f"! application/x-rtp,media=audio,encoding-name=OPUS,payload={AUDIO_PT} "
            "! queue ! webrtc."
        )
        self.pipe = Gst.parse_launch(desc)
        self.webrtc = self.pipe.get_by_name("webrtc")
        local_ip_only(self.webrtc, a.local_ip, a.ice_tcp)

        self.vbufs, self.wbuf = frames_for(a.width, a.height, a.pattern)
        self.vn = 0
        self.ak = 0
        self.vsrc = self.pipe.get_by_name("vsrc")
        self.asrc = self.pipe.get_by_name("asrc")
        if encoded is None:
            self.vsrc.connect("need-data", self._video_need_data)
            self.asrc.connect("need-data", self._audio_need_data)
        else:
            self.vsrc.set_property("caps", encoded.video_caps)
            self.asrc.set_property("caps", encoded.audio_caps)
            self.vsrc.connect("need-data", self._encoded_video_need_data, encoded)
            self.asrc.connect("need-data", self._encoded_audio_need_data, encoded)

        c = self.counters
        if not a.light_counters:
            self.pipe.get_by_name("vpay").get_static_pad("src").add_probe(
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, video_pay_probe, c
            )
            self.pipe.get_by_name("apay").get_static_pad("src").add_probe(
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, audio_pay_probe, c
            )
        self._probed = set()
        self.pipe.connect("deep-element-added", self._on_element_added)

        w = self.webrtc
        w.connect("on-negotiation-needed", self._on_negotiation_needed)
        w.connect("on-ice-candidate", self._on_ice_candidate)
        w.connect("notify::connection-state", self._on_connection_state)
        w.connect("on-data-channel", lambda _w, ch: self._setup_channel(ch))
        # RN enables RED/ULPFEC and NACK on the video transceiver.
        trans = w.emit("get-transceiver", 0)
        if trans is not None:
            trans.set_property("fec-type", GstWebRTC.WebRTCFECType.ULP_RED)
            trans.set_property("do-nack", True)

        bus = self.pipe.get_bus()
        bus.set_sync_handler(self._on_bus_message)

        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError("pipeline did not start")

    def _on_bus_message(self, bus, msg):
        # Runs in the posting thread; every message is dropped here (nobody pops the bus).
        if msg.type == Gst.MessageType.ERROR and not self.closed:
            err, _dbg = msg.parse_error()
            src = msg.src.get_name() if msg.src else "?"
            # Inside webrtcbin (ICE, DTLS, SCTP) an error means the connection is gone, e.g.
            # the viewer closed it right after its bye: that ends this viewer only. Anywhere
            # else (sources, encoders, payloaders) it is a bug of this script: fail loudly.
            transport = isinstance(msg.src, Gst.Object) and msg.src.has_as_ancestor(self.webrtc)
            LOOP.call_soon_threadsafe(
                self.on_pipeline_error, f"{src}: {err.message}", transport
            )
        return Gst.BusSyncReply.DROP

    def _on_element_added(self, _bin, _sub, element):
        # Bins built before being added (webrtcbin's transport bins) only announce themselves:
        # look inside them too.
        found = [element]
        if isinstance(element, Gst.Bin):
            it = element.iterate_recurse()
            while True:
                res, child = it.next()
                if res == Gst.IteratorResult.OK:
                    found.append(child)
                elif res == Gst.IteratorResult.RESYNC:
                    it.resync()
                else:
                    break
        for el in found:
            f = el.get_factory()
            name = f.get_name() if f is not None else None
            if name not in ("nicesink", "srtpenc") or el.get_name() in self._probed:
                continue
            self._probed.add(el.get_name())
            if name == "nicesink":
                probe = wire_start_probe if self.args.light_counters else wire_probe
                el.get_static_pad("sink").add_probe(
                    Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, probe, self
                )
            elif self.args.report_sr:
                el.connect("pad-added", self._on_srtpenc_pad)
                for pad in el.sinkpads:
                    self._on_srtpenc_pad(el, pad)

    def _on_srtpenc_pad(self, _element, pad):
        if pad.get_direction() == Gst.PadDirection.SINK and pad.get_name().startswith("rtcp"):
            pad.add_probe(
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, self._sr_probe, None
            )

    def _sr_probe(self, _pad, info, _data):
        """--report-sr: the Sender Reports webrtcbin sends (plain RTCP, before SRTP)."""
        for b in _buffers(info):
            data = b.extract_dup(0, b.get_size())
            i = 0
            while i + 4 <= len(data):
                pt = data[i + 1]
                length = 4 * (((data[i + 2] << 8) | data[i + 3]) + 1)
                if pt == 200 and i + 28 <= len(data):
                    ssrc = int.from_bytes(data[i + 4 : i + 8], "big")
                    ntp_s = int.from_bytes(data[i + 8 : i + 12], "big")
                    ntp_f = int.from_bytes(data[i + 12 : i + 16], "big")
                    rtp = int.from_bytes(data[i + 16 : i + 20], "big")
                    count = int.from_bytes(data[i + 20 : i + 24], "big")
                    ntp_ms = (ntp_s - 2208988800) * 1000 + (ntp_f * 1000 >> 32)
                    LOOP.call_soon_threadsafe(
                        self.on_sender_report, ssrc, ntp_ms, rtp, count, unix_ms()
                    )
                i += length
        return Gst.PadProbeReturn.OK

    def on_sender_report(self, ssrc, ntp_ms, rtp, count, seen_ms):
        c = self.counters
        kind, base, rate = "?", None, None
        if ssrc == c.audio_ssrc:
            kind, base, rate = "audio", c.audio_rtp_base, AUDIO_RATE
        elif ssrc == c.video_ssrc:
            kind, base, rate = "video", c.video_rtp_base, 90000
        ev = {
            "event": "sr",
            "stream": self.pub.stream,
            "viewer": self.key,
            "kind": kind,
            "ssrc": f"{ssrc:08x}",
            "ntp_unix_ms": ntp_ms,
            "rtp": rtp,
            "packets": count,
            "t": seen_ms,
        }
        if base is not None:
            # The media time (PTS) this RTP timestamp stands for, and the wall time of PTS 0 that
            # the report implies: equal for audio and video iff the reports are in sync.
            pts_ms = ((rtp - base) & 0xFFFFFFFF) * 1000 / rate
            ev["pts_ms"] = round(pts_ms, 2)
            ev["implied_epoch_ms"] = round(ntp_ms - pts_ms, 2)
        report(ev)

    def _video_need_data(self, src, _length):
        n = self.vn
        self.vn += 1
        base = self.wbuf if self.pub.schedule.video_white(n) else self.vbufs[n % len(self.vbufs)]
        # A new buffer sharing the frame's memory, with its own timestamps. (Not `copy()`: in
        # PyGObject that returns the same GstBuffer, so queued frames had their PTS rewritten
        # and consecutive identical frames went out with one RTP timestamp.)
        buf = base.copy_region(Gst.BufferCopyFlags.MEMORY, 0, base.get_size())
        fps = self.args.fps
        buf.pts = n * Gst.SECOND // fps
        buf.duration = (n + 1) * Gst.SECOND // fps - buf.pts
        src.emit("push-buffer", buf)

    def _audio_need_data(self, src, _length):
        k = self.ak
        self.ak += 1
        buf = Gst.Buffer.new_wrapped(audio_chunk(self.pub.schedule, k))
        buf.pts = k * AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
        buf.duration = AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
        src.emit("push-buffer", buf)

    def _encoded_video_need_data(self, src, _length, encoded):
        """--pre-encoded: the next access unit of the loop (no B-frames: DTS = PTS). PTS n/fps
        as in _video_need_data, but rounded up to the nanosecond instead of down: rtph264pay
        rounds down to 90 kHz, so n/fps rounded down gives frame steps of 2999/3000/3001 ticks.
        In a recording whose video starts half a frame off its audio (the loop's exact 20 ms
        and 1/fps grids make that common: 1 file of the first 5) `ffmpeg -f null` then put
        two frames on one 1/fps tick and reported non-monotonic timestamps. Rounded up, every
        step is 3000 ticks."""
        n = self.vn
        self.vn += 1
        au = encoded.video[n % len(encoded.video)]
        buf = au.copy_region(encoded.copy, 0, au.get_size())
        fps = self.args.fps
        buf.pts = buf.dts = -(-n * Gst.SECOND // fps)
        buf.duration = -(-(n + 1) * Gst.SECOND // fps) - buf.pts
        src.emit("push-buffer", buf)

    def _encoded_audio_need_data(self, src, _length, encoded):
        """--pre-encoded: the next Opus packet of the loop (20 ms each)."""
        k = self.ak
        self.ak += 1
        pkt = encoded.audio[k % len(encoded.audio)]
        buf = pkt.copy_region(encoded.copy, 0, pkt.get_size())
        buf.pts = buf.dts = k * AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
        buf.duration = AUDIO_CHUNK * Gst.SECOND // AUDIO_RATE
        src.emit("push-buffer", buf)

    def poll_stats(self, wait=False):
        """--light-counters: asks webrtcbin for its statistics; the RTP packets its RTP session
        sent for the video and audio SSRCs of the offer become wire_video_packets and
        wire_audio_packets. Without `wait` the answer lands in the counters when it comes (the
        periodic report shows the previous one): the asyncio thread never blocks on webrtcbin."""
        if not self.offer_sent:
            return
        if wait:
            promise = Gst.Promise.new()
            self.webrtc.emit("get-stats", None, promise)
            promise.wait()
            self._take_stats(promise)
        else:
            promise = Gst.Promise.new_with_change_func(lambda p, _d: self._take_stats(p), None)
            self.webrtc.emit("get-stats", None, promise)

    def _take_stats(self, promise):
        if promise.wait() != Gst.PromiseResult.REPLIED:
            return
        reply = promise.get_reply()
        if reply is None:
            return
        c = self.counters
        found = {}

        def each(_field, value, _data):
            if isinstance(value, Gst.Structure) and value.get_name() == "outbound-rtp":
                found[value.get_value("ssrc")] = value.get_value("packets-sent")
            return True

        reply.foreach(each, None)
        with c.wire_lock:
            if c.video_ssrc in found:
                c.wire_video_packets = found[c.video_ssrc]
            if c.audio_ssrc in found:
                c.wire_audio_packets = found[c.audio_ssrc]

    def media_epoch(self):
        """Unix ms of running time 0 (= PTS 0 of both appsrcs)."""
        clock = self.pipe.get_clock()
        if clock is None:
            return None
        running = clock.get_time() - self.pipe.get_base_time()
        return unix_ms() - running // 1_000_000

    # -- webrtcbin callbacks (GStreamer threads) -------------------------------------------

    def _on_negotiation_needed(self, element):
        if self.offer_made or self.closed:
            return  # one offer per viewer (the data channel below triggers another request)
        self.offer_made = True
        # RN creates `sendChannel` right after the pipeline starts, so it is in the first offer.
        ch = element.emit("create-data-channel", "sendChannel", None)
        if ch is not None:
            self._setup_channel(ch)
        promise = Gst.Promise.new_with_change_func(self._on_offer_created, element, None)
        element.emit("create-offer", None, promise)

    def _on_offer_created(self, promise, element, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            LOOP.call_soon_threadsafe(self.on_pipeline_error, "create-offer failed", False)
            return
        text = offer.sdp.as_text()
        # As RN (and GStreamer's webrtc demos) do: set-local-description is queued on
        # webrtcbin first, then the offer goes out. The other way round a fast answer could
        # reach webrtcbin before its own offer was applied, and be refused ("Not in the
        # correct state (stable) for setting remote answer description"): ICE then never
        # completes. Candidates gathered meanwhile wait in `queued_local` until the offer.
        element.emit("set-local-description", offer, Gst.Promise.new())
        LOOP.call_soon_threadsafe(self.on_local_offer, text)

    def _on_ice_candidate(self, _element, mline, candidate):
        if " TCP " in candidate or " tcp " in candidate:
            return  # RN drops TCP candidates
        LOOP.call_soon_threadsafe(self.on_local_candidate, mline, candidate)

    def _on_connection_state(self, element, _pspec):
        state = element.get_property("connection-state")
        LOOP.call_soon_threadsafe(self.on_connection_state, state)

    def _setup_channel(self, ch):
        self.all_channels.append(ch)
        ch.connect("on-open", lambda c: LOOP.call_soon_threadsafe(self.on_channel_open, c))
        ch.connect("on-close", lambda c: LOOP.call_soon_threadsafe(self.on_channel_close, c))
        ch.connect(
            "on-message-string",
            lambda c, text: LOOP.call_soon_threadsafe(self.on_channel_message, c, text),
        )
        if ch.get_property("ready-state") == GstWebRTC.WebRTCDataChannelState.OPEN:
            LOOP.call_soon_threadsafe(self.on_channel_open, ch)

    # -- asyncio thread ----------------------------------------------------------------------

    def on_pipeline_error(self, text, transport=False):
        if self.closed:
            return
        if transport:
            self.pub.drop(self, f"transport error: {text}", bye=False)
            return
        die(f"pipeline error for viewer {self.viewer} of {self.pub.stream}: {text}")

    def on_local_offer(self, sdp):
        if self.closed:
            return
        desc, vector = self.pub.sec.seal({"type": "offer", "sdp": sdp})
        msg = {
            "UUID": self.viewer,
            "streamID": self.pub.wire_stream,
            "session": self.session,
            "description": desc,
        }
        if vector:
            msg["vector"] = vector
        self.pub.send(msg)
        self.offer_sent = True
        # The msid track ids GStreamer put in the offer ("webrtctransceiverN", N counted over
        # the whole process): webrtc-rs names tracks (and its routing errors) after them.
        tracks = {}
        ssrcs = {}
        kind = None
        for line in sdp.splitlines():
            if line.startswith("m="):
                kind = line[2:].split(" ", 1)[0]
            elif line.startswith("a=ssrc:") and " msid:" in line and kind:
                tracks.setdefault(kind, line.rsplit(" ", 1)[-1])
                ssrcs.setdefault(kind, int(line[7:].split(" ", 1)[0]))
        if self.counters.light:
            # The wire probe learns them from the packets; webrtcbin's statistics need them.
            self.counters.video_ssrc = ssrcs.get("video")
            self.counters.audio_ssrc = ssrcs.get("audio")
        self.pub.viewer_event(self, "offer", tracks=tracks)
        for mline, cand in self.queued_local:
            self.send_candidate(mline, cand)
        self.queued_local = []

    def on_local_candidate(self, mline, candidate):
        if self.closed:
            return
        if not self.offer_sent:
            self.queued_local.append((mline, candidate))
            return
        self.send_candidate(mline, candidate)

    def send_candidate(self, mline, candidate):
        # RN: one candidate per message, type "local", no sdpMid.
        cands, vector = self.pub.sec.seal([{"candidate": candidate, "sdpMLineIndex": mline}])
        msg = {"UUID": self.viewer, "type": "local", "session": self.session, "candidates": cands}
        if vector:
            msg["vector"] = vector
        self.pub.send(msg)

    def adopt_session(self, session):
        """RN keeps the first session a viewer sends and carries on if a later one differs."""
        if session is not None and self.session is None:
            self.session = session

    def on_answer(self, sdp):
        if self.closed or self.answered or not self.offer_sent:
            return
        self.answered = True
        res, msg = GstSdp.SDPMessage.new()
        GstSdp.sdp_message_parse_buffer(sdp.encode("utf-8"), msg)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        viewer = self.viewer

        def applied(promise, _element, _data):
            # RN does not look; we say it, so a failed answer is not a silent ICE timeout.
            reply = promise.get_reply()
            error = reply.get_value("error") if reply is not None and reply.has_field("error") else None
            if error is not None:
                warn(f"viewer {viewer}: the answer was not applied: {error}")

        done = Gst.Promise.new_with_change_func(applied, self.webrtc, None)
        self.webrtc.emit("set-remote-description", answer, done)
        self.pub.viewer_event(self, "answer")
        for mline, cand in self.queued_remote:
            self.webrtc.emit("add-ice-candidate", mline, cand)
        self.queued_remote = []

    def on_remote_candidates(self, cands):
        for c in cands:
            if not isinstance(c, dict):
                continue
            cand = c.get("candidate")
            if not isinstance(cand, str) or not cand:
                continue
            mline = c.get("sdpMLineIndex")
            mline = mline if isinstance(mline, int) else 0
            if self.answered:
                self.webrtc.emit("add-ice-candidate", mline, cand)
            else:
                self.queued_remote.append((mline, cand))

    def on_connection_state(self, state):
        if self.closed:
            return
        S = GstWebRTC.WebRTCPeerConnectionState
        if state == S.CONNECTED and not self.connected:
            self.connected = True
            self.pub.viewer_event(self, "connected")
            # RN opens a second `sendChannel` once connected unless one is already open.
            if self.send_channel is None:
                ch = self.webrtc.emit("create-data-channel", "sendChannel", None)
                if ch is not None:
                    self._setup_channel(ch)
            if self.ping_task is None:
                self.ping_task = asyncio.ensure_future(self.ping_loop())
        elif state in (S.FAILED, S.CLOSED):
            self.close(f"connection {state.value_nick}", bye=False)

    def on_media_start(self):
        self.media_epoch_ms = self.media_epoch()
        report(
            {
                "event": "media-start",
                "stream": self.pub.stream,
                "viewer": self.key,
                "t": self.counters.first_wire_rtp_ms,
                "media_epoch_ms": self.media_epoch_ms,
            }
        )

    def on_channel_open(self, ch):
        if ch not in self.channels:
            self.channels.append(ch)
            self.dc_opened += 1
        self.send_channel = ch

    def on_channel_close(self, ch):
        if ch in self.channels:
            self.channels.remove(ch)
        if self.send_channel is ch:
            self.send_channel = self.channels[-1] if self.channels else None

    def on_channel_message(self, ch, text):
        if self.closed:
            return
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("bye"):
            self.pub.viewer_byes += 1
            self.close("viewer bye", bye=False)
        elif "pong" in msg:
            self.unanswered_pings = 0
            self.pongs += 1
        elif "ping" in msg:
            self._send_on(ch, {"pong": msg["ping"]})
        elif "candidates" in msg or "candidate" in msg:
            try:
                field = "candidates" if "candidates" in msg else "candidate"
                value = self.pub.sec.open(msg[field], msg.get("vector"))
            except (ValueError, KeyError):
                return
            self.on_remote_candidates(value if isinstance(value, list) else [value])
        # The viewer's settings object ({"audio":true,...}), info, stats requests: nothing to do.

    def _send_on(self, ch, obj):
        try:
            ch.emit("send-string", json.dumps(obj, separators=(",", ":")))
            return True
        except Exception:  # noqa: BLE001 - a closing channel may refuse
            return False

    async def ping_loop(self):
        while not self.closed:
            await asyncio.sleep(PING_INTERVAL)
            if self.closed:
                return
            if self.send_channel is None:
                continue  # RN: "data channel not setup yet"
            if self.unanswered_pings >= MAX_UNANSWERED_PINGS:
                self.close("no heartbeat", bye=False)
                return
            self.unanswered_pings += 1
            if self._send_on(self.send_channel, {"ping": unix_ms()}):
                self.pings_sent += 1

    def close(self, reason, bye=True):
        """Says bye on every open data channel (if asked), then tears the pipeline down in a
        helper thread (set_state(NULL) may block briefly)."""
        if self.closed:
            return
        if bye:
            for ch in list(self.channels):
                self._send_on(ch, {"bye": True})
        self.closed = True
        if self.ping_task is not None:
            self.ping_task.cancel()
        self.pub.viewer_event(self, "closed", reason=reason)

        def teardown():
            time.sleep(0.3 if bye else 0.0)  # let the bye leave
            if self.counters.light:
                self.poll_stats(wait=True)  # the last counts, while webrtcbin is up
            self.pipe.set_state(Gst.State.NULL)

        self.teardown_thread = threading.Thread(target=teardown, daemon=True)
        self.teardown_thread.start()


# ------------------------------------------------------------------------------------------
# One publisher: its WebSocket and viewers
# ------------------------------------------------------------------------------------------


def random_id():
    # RN: `str(random.randint(10000000, 99999999999))`
    return str(random.randint(10_000_000, 99_999_999_999))


class Publisher:
    """One stream: announces itself, answers viewer requests with offers (state.rs semantics)."""

    def __init__(self, args, stream, schedule, encoded=None):
        self.args = args
        self.stream = stream
        self.schedule = schedule
        self.encoded = encoded  # EncodedLoop with --pre-encoded
        self.sec = Security(args.password, args.salt)
        self.wire_stream = self.sec.stream(stream)
        self.relay = args.dialect == "relay"
        self.self_id = random_id()
        self.peers = {}  # viewer id -> live Peer
        self.history = []  # every Peer ever (their counters make the totals)
        self.outbox = None
        self.connected_once = False
        self.await_listing = False
        self.viewer_byes = 0
        self.ignored = 0
        self.stopping = False
        self.ws = None

    # -- WebSocket ---------------------------------------------------------------------------

    def send(self, msg):
        if self.relay:
            msg = dict(msg)
            msg["from"] = self.self_id
        if self.outbox is not None:
            self.outbox.put_nowait(json.dumps(msg, separators=(",", ":")))

    async def run(self, stopping):
        import websockets

        backoff = 0.25
        deadline = time.monotonic() + self.args.connect_timeout
        while not stopping.is_set():
            try:
                async with websockets.connect(
                    self.args.server, ping_interval=None, max_size=4 * 1024 * 1024, open_timeout=10
                ) as ws:
                    self.ws = ws
                    self.outbox = asyncio.Queue()
                    writer = asyncio.ensure_future(self._writer(ws, self.outbox))
                    self.connected_once = True
                    backoff = 0.25
                    self.on_connected()
                    try:
                        async for text in ws:
                            if isinstance(text, str):
                                self.on_message(text)
                    finally:
                        writer.cancel()
                        self.outbox = None
                        self.ws = None
            except (OSError, asyncio.TimeoutError, Exception) as e:  # noqa: BLE001
                if stopping.is_set():
                    return
                if not self.connected_once and time.monotonic() > deadline:
                    die(f"{self.stream}: cannot connect to {self.args.server}: {e}")
                if self.connected_once:
                    warn(f"{self.stream}: WebSocket closed ({e}); reconnecting")
            if stopping.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _writer(self, ws, q):
        while True:
            text = await q.get()
            await ws.send(text)

    def on_connected(self):
        room = self.sec.room(self.args.room) if self.args.room else None
        if room is not None and not self.relay:
            # Web-app order on the official server: join, wait for the listing, then seed.
            self.send({"request": "joinroom", "roomid": room})
            self.await_listing = True
            return
        if room is not None:
            self.send({"request": "joinroom", "roomid": room, "streamID": self.wire_stream})
        else:
            self.send({"request": "seed", "streamID": self.wire_stream})
        self.announced()

    def announced(self):
        self.await_listing = False
        report({"event": "ready", "stream": self.stream, "wire_stream": self.wire_stream})

    # -- inbound -----------------------------------------------------------------------------

    def on_message(self, text):
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        sender = msg.get("from") if self.relay else (msg.get("UUID") or msg.get("from"))
        sender = None if sender is None else str(sender)
        if self.relay:
            if sender == self.self_id:
                return  # our own announcement echoed
            target = msg.get("UUID")
            if target is not None and str(target) != self.self_id:
                return  # addressed to someone else
        if msg.get("type") in ("disconnect", "leave") and msg.get("uuid") is not None:
            p = self.peers.get(str(msg["uuid"]))
            if p is not None and not p.answered:
                self.drop(p, "viewer left", bye=False)
            return
        request = msg.get("request")
        if msg.get("bye") is True or request == "cleanup":
            p = self.peers.get(sender) if sender else None
            if p is not None:
                self.drop(p, "viewer bye (websocket)", bye=False)
            return
        if "description" in msg:
            self.on_description(sender, msg)
        elif "candidates" in msg or "candidate" in msg:
            self.on_candidates(sender, msg)
        elif request in ("listing", "transferred"):
            if self.await_listing:
                self.send({"request": "seed", "streamID": self.wire_stream})
                self.announced()
        elif request == "offerSDP":
            self.request(sender)
        elif request == "play":
            if msg.get("streamID") == self.wire_stream:
                self.request(sender)
        elif request == "joinroom":
            # Relay: a newcomer without a stream is a viewer: offer to it (like the web app).
            if self.relay and msg.get("streamID") is None:
                self.request(sender)
        elif request in ("alert", "error") or "error" in msg:
            warn(f"{self.stream}: server says: {msg.get('message') or msg.get('error')}")
        else:
            self.ignored += 1

    def request(self, viewer):
        if self.stopping:
            return  # shutting down: a viewer re-asking after our bye gets nothing new
        if viewer is None:
            self.ignored += 1
            return
        old = self.peers.get(viewer)
        if old is not None:
            if not old.answered:
                return  # our offer is on its way (a joinroom and a play crossed)
            self.drop(old, "viewer asked again")
        if len(self.peers) >= MAX_VIEWERS:
            warn(f"{self.stream}: refusing viewer {viewer}: {MAX_VIEWERS} viewers served")
            return
        try:
            p = Peer(self, viewer)
        except Exception as e:  # noqa: BLE001
            die(f"{self.stream}: cannot build the pipeline: {e}")
        n = sum(1 for h in self.history if h.viewer == viewer)
        if n:
            p.key = f"{viewer}#{n + 1}"
        self.peers[viewer] = p
        self.history.append(p)
        self.viewer_event(p, "requested")

    def on_description(self, sender, msg):
        p = self.peers.get(sender) if sender else None
        if p is None:
            self.ignored += 1
            return
        try:
            desc = self.sec.open(msg["description"], msg.get("vector"))
        except (ValueError, KeyError) as e:
            warn(f"{self.stream}: cannot decrypt the answer of {sender} ({e}): check --password")
            return
        if not isinstance(desc, dict) or desc.get("type") != "answer":
            self.ignored += 1
            return
        p.adopt_session(msg.get("session"))
        if isinstance(desc.get("sdp"), str):
            p.on_answer(desc["sdp"])

    def on_candidates(self, sender, msg):
        p = self.peers.get(sender) if sender else None
        if p is None:
            self.ignored += 1
            return
        field = "candidates" if "candidates" in msg else "candidate"
        try:
            value = self.sec.open(msg[field], msg.get("vector"))
        except (ValueError, KeyError):
            return
        p.adopt_session(msg.get("session"))
        p.on_remote_candidates(value if isinstance(value, list) else [value])

    def drop(self, p, reason, bye=True):
        p.close(reason, bye=bye)
        if self.peers.get(p.viewer) is p:
            del self.peers[p.viewer]

    def tick(self):
        now = time.monotonic()
        for p in list(self.peers.values()):
            if p.closed:
                del self.peers[p.viewer]
            elif not p.answered and now - p.started > ANSWER_TIMEOUT:
                self.drop(p, "no answer", bye=False)

    # -- reports -----------------------------------------------------------------------------

    def viewer_event(self, p, state, **extra):
        ev = {"event": "viewer", "stream": self.stream, "viewer": p.key, "state": state}
        ev.update(extra)
        report(ev)

    def stats(self, final=False):
        counted = Counters.counted(self.args.light_counters)
        total = {f: 0 if f in counted else None for f in Counters.FIELDS}
        per_viewer = {}
        audio_ssrc = video_ssrc = None
        for p in self.history:
            snap = p.counters.snapshot()
            if self.args.light_counters and not p.closed:
                p.poll_stats()  # for the next report (so each report is one interval behind)
            for f in counted:
                total[f] += snap[f]
            audio_ssrc = snap["audio_ssrc"] or audio_ssrc
            video_ssrc = snap["video_ssrc"] or video_ssrc
            snap["closed"] = p.closed
            snap["dc_opened"] = p.dc_opened
            snap["pings_sent"] = p.pings_sent
            snap["pongs"] = p.pongs
            per_viewer[p.key] = snap
        ev = {"event": "stats", "stream": self.stream, "final": final}
        ev["viewers"] = sum(1 for p in self.peers.values() if not p.closed)
        ev.update(total)
        ev["audio_ssrc"] = audio_ssrc
        ev["video_ssrc"] = video_ssrc
        ev["viewer_byes"] = self.viewer_byes
        ev["per_viewer"] = per_viewer
        report(ev)


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        die(f"{message} (see --help)", 2)  # one line, like every other error


def parse_args(argv):
    ap = _Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 0 if every dependency is there")
    ap.add_argument("--server", help="handshake server, ws://127.0.0.1:PORT")
    ap.add_argument("--room", help="room to publish in")
    ap.add_argument("--streams", help="comma-separated stream ids, one publisher each")
    ap.add_argument("--password", help="password, or false to disable (default: VDO.Ninja's)")
    ap.add_argument("--salt", default=DEFAULT_SALT)
    ap.add_argument("--dialect", choices=("official", "relay"), default="relay")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds, 0 = until SIGTERM")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=2000, help="video kbps")
    ap.add_argument("--audio-bitrate", type=int, default=32000, help="Opus bit/s")
    ap.add_argument("--flashes", default="", help='flash+beep times in seconds, "t1,t2,..."')
    ap.add_argument("--period", type=float, default=0.0, help="repeat the flashes every S s")
    ap.add_argument("--pattern", choices=("noise", "black"), default="noise")
    ap.add_argument("--x264-threads", type=int, default=1)
    ap.add_argument("--stats-interval", type=float, default=1.0)
    ap.add_argument("--report-sr", action="store_true", help="report every Sender Report sent")
    ap.add_argument("--local-ip", default="127.0.0.1", help="the one address ICE uses")
    ap.add_argument(
        "--ice-tcp",
        action="store_true",
        help="keep libnice's ICE-TCP on (its default; off otherwise, as with --local-ip)",
    )
    ap.add_argument("--connect-timeout", type=float, default=15.0)
    ap.add_argument(
        "--pre-encoded",
        action="store_true",
        help=(
            "load mode: encode the video (x264, same settings and noise frames) and the audio "
            f"(Opus, silence) once per process at startup, {PRE_ENCODED_SECONDS} s starting and "
            "looping on an IDR, and have every viewer's pipeline send that loop with fresh "
            "timestamps through rtph264pay/rtpopuspay and webrtcbin, instead of encoding live "
            "per viewer. No flashes or beeps (--flashes is refused). Keyframe requests (PLI/FIR) "
            f"are not honoured: the loop has an IDR every {KEY_INT_MAX} frames"
        ),
    )
    ap.add_argument(
        "--light-counters",
        action="store_true",
        help=(
            "load mode: no Python pad probe on every RTP/SRTP packet: the stats report counts "
            "only wire_video_packets and wire_audio_packets, taken from webrtcbin's statistics"
        ),
    )
    args = ap.parse_args(argv)
    if args.check:
        return args
    if not args.server or not args.streams:
        ap.error("--server and --streams are required")
    streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    if not streams or len(set(streams)) != len(streams):
        ap.error("--streams needs distinct, non-empty ids")
    args.stream_list = streams
    try:
        args.flash_list = [float(t) for t in args.flashes.split(",") if t.strip()]
    except ValueError:
        ap.error("--flashes takes seconds separated by commas")
    if args.width % 2 or args.height % 2 or args.width <= 0 or args.height <= 0:
        ap.error("--width/--height must be positive and even")
    if args.fps <= 0 or AUDIO_RATE % args.fps:
        ap.error(f"--fps must divide {AUDIO_RATE}")
    if args.pre_encoded and args.flash_list:
        ap.error("--pre-encoded sends no flashes or beeps: drop --flashes")
    if args.pre_encoded and (args.fps * PRE_ENCODED_SECONDS) % KEY_INT_MAX:
        ap.error(f"--pre-encoded needs --fps * {PRE_ENCODED_SECONDS} to be a multiple of 60")
    return args


def local_ip_only(webrtc, address="127.0.0.1", ice_tcp=False):
    """ICE on `address` only (--local-ip; loopback by default): no other interfaces, no TCP
    candidates unless `ice_tcp` (--ice-tcp: libnice's default, connecting to a recorder's
    passive TCP candidate when UDP fails), no STUN (none is set), and no UPnP (libnice would
    look for an Internet gateway by SSDP multicast)."""
    ice = webrtc.get_property("ice-agent")
    _KEEP_ALIVE.append(ice)
    ice.emit("add-local-ip-address", address)
    ice.set_property("ice-tcp", ice_tcp)
    agent = ice.get_property("agent")
    if agent is not None:
        agent.set_property("upnp", False)


def warm_up():
    """Loads every plugin a viewer's pipeline uses before any runs: webrtcbin creates its
    transport, DTLS/SRTP and SCTP elements (and looks up RTP header extensions in the registry)
    on its own threads, and many pipelines doing that at once while plugins are still being
    loaded made GLib report a hash table changed during iteration."""
    pipe = Gst.parse_launch(
        "webrtcbin name=w bundle-policy=max-bundle "
        "videotestsrc num-buffers=1 ! x264enc ! rtph264pay ! "
        "application/x-rtp,media=video,encoding-name=H264,payload=96 ! queue ! w. "
        "audiotestsrc num-buffers=1 ! opusenc ! rtpopuspay ! "
        "application/x-rtp,media=audio,encoding-name=OPUS,payload=100 ! queue ! w. "
        "appsrc ! clocksync ! fakesink"
    )
    w = pipe.get_by_name("w")
    local_ip_only(w)
    pipe.set_state(Gst.State.READY)
    w.emit("create-data-channel", "warmup", None)
    promise = Gst.Promise.new()
    w.emit("create-offer", None, promise)
    promise.wait()
    reply = promise.get_reply()
    offer = reply.get_value("offer") if reply is not None else None
    if offer is not None:
        done = Gst.Promise.new()
        w.emit("set-local-description", offer, done)
        done.wait()
    pipe.set_state(Gst.State.NULL)
    _KEEP_ALIVE.append(pipe)


def check():
    """--check: bindings, plugins and the crypto test vector; one line on failure."""
    missing = []
    err = load_gi()
    if err:
        die(f"{err}; install: apt-get install {DEBIAN_PACKAGES}", 2)
    for name, pkg in NEEDED_ELEMENTS.items():
        if Gst.ElementFactory.find(name) is None:
            missing.append(f"{name} ({pkg})")
    for mod in ("websockets", "cryptography"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"python module {mod} (python3-{mod})")
    if missing:
        die(f"missing: {', '.join(missing)}; install: apt-get install {DEBIAN_PACKAGES}", 2)
    err = crypto_self_test()
    if err:
        die(err, 2)
    print(f"ok: GStreamer {Gst.version_string()}")
    sys.exit(0)


async def amain(args, encoded):
    global LOOP
    LOOP = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        LOOP.add_signal_handler(sig, stopping.set)
    schedule = Schedule(args.fps, args.flash_list, args.period)
    pubs = [Publisher(args, s, schedule, encoded) for s in args.stream_list]
    tasks = [asyncio.ensure_future(p.run(stopping)) for p in pubs]
    started = time.monotonic()
    next_stats = started + args.stats_interval
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), timeout=0.25)
        except asyncio.TimeoutError:
            pass
        for p in pubs:
            p.tick()
        now = time.monotonic()
        if args.stats_interval > 0 and now >= next_stats:
            next_stats = now + args.stats_interval
            for p in pubs:
                p.stats()
        if args.duration > 0 and now - started >= args.duration:
            stopping.set()

    # Shutdown: bye on every data channel, pipelines down, final counts, WebSockets closed.
    for p in pubs:
        p.stopping = True
        for peer in list(p.peers.values()):
            p.drop(peer, "publisher stopping", bye=True)
    threads = [peer.teardown_thread for p in pubs for peer in p.history if peer.teardown_thread]
    deadline = time.monotonic() + 10
    for t in threads:
        await LOOP.run_in_executor(None, t.join, max(0.0, deadline - time.monotonic()))
    for p in pubs:
        p.stats(final=True)
    if any(t.is_alive() for t in threads):
        warn("some pipelines did not stop within 10 s")
    for p in pubs:
        if p.ws is not None:
            try:
                await asyncio.wait_for(p.ws.close(), timeout=2)
            except Exception:  # noqa: BLE001
                pass
    for t in tasks:
        t.cancel()
    report({"event": "exit", "code": 0})


def main():
    args = parse_args(sys.argv[1:])
    if args.check:
        check()
    err = load_gi()
    if err:
        die(f"{err}; install: apt-get install {DEBIAN_PACKAGES}", 2)
    try:
        import websockets  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError as e:
        die(f"{e}; install: apt-get install {DEBIAN_PACKAGES}", 2)
    for name, pkg in NEEDED_ELEMENTS.items():
        if Gst.ElementFactory.find(name) is None:
            die(f"GStreamer element {name} missing; install {pkg}", 2)
    warm_up()
    try:
        encoded = EncodedLoop(args) if args.pre_encoded else None
        asyncio.run(amain(args, encoded))
    except ValueError as e:
        die(str(e))
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: GObject wrappers collected after their pipelines are gone
    # only produce GLib criticals.
    os._exit(0)


if __name__ == "__main__":
    main()
