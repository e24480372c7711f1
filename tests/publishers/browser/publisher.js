// ninjarec's browser test publisher.
//
// Why: the recorder must work with what real browsers send (OpenH264/libwebrtc packetisation,
// RTX bandwidth probes, TWCC, renegotiation over the data channel). We do not ship the
// VDO.Ninja web app, so this page imitates its publisher side on the wire, using Chromium's
// own RTCPeerConnection and its fake camera/microphone:
//
//  * signalling per /work/shared/reference/vdoninja-protocol.md §2–§3 and the rules of our
//    own Rust test publisher (src/testsrc/state.rs), both server dialects;
//  * the first offer carries only the data channel `sendChannel`; the camera and microphone
//    are added when the viewer's request arrives on it and offered over the data channel (§4);
//  * stream id / room hashing and AES-256-CBC of description/candidates with WebCrypto.
//
// Query parameters:
//   server    ws://127.0.0.1:PORT (required)
//   streamid  raw stream id (required)
//   room      raw room name (optional)
//   password  absent = VDO.Ninja default password (hashing + encryption on);
//             false|0|off = hashing and encryption off; anything else = custom password
//   salt      default vdo.ninja
//   dialect   official (default) | relay
//   ice       all (default, like the web app) | loopback (trickle only 127.0.0.0/8 candidates,
//             so nothing is ever sent to a non-loopback address in tests)
//   stopafter seconds until the page stops by itself (final stats, bye); 0/absent = never
//
// Progress goes to the console as one line `NINJAREC <json>` per event; the Rust side reads
// Chromium's stderr (`--enable-logging=stderr`). `window.ninjarecStop()` stops publishing
// (final stats line, `{"bye":true}` to every viewer) and resolves with the final stats.
"use strict";

(function () {
  const DEFAULT_PASSWORD = "someEncryptionKey123";
  const DEFAULT_SALT = "vdo.ninja";
  const SESSION_CHARS = 10;
  const MAX_VIEWERS = 16;

  // ---------------------------------------------------------------------------------------
  // Logging
  // ---------------------------------------------------------------------------------------

  /** One progress line for the Rust side: `NINJAREC {"event":...}` (single line JSON). */
  function emit(obj) {
    console.log("NINJAREC " + JSON.stringify(obj));
  }

  function fail(where, err) {
    emit({ event: "error", where: where, message: String((err && err.message) || err) });
  }

  // ---------------------------------------------------------------------------------------
  // Parameters
  // ---------------------------------------------------------------------------------------

  const q = new URLSearchParams(location.search);
  const cfg = {
    server: q.get("server"),
    streamId: q.get("streamid"),
    room: q.get("room") || null,
    dialect: (q.get("dialect") || "official").toLowerCase(),
    salt: q.has("salt") ? q.get("salt") : DEFAULT_SALT,
    iceFilter: (q.get("ice") || "all").toLowerCase(),
    stopAfter: Number(q.get("stopafter") || 0),
    password: null, // null = hashing and encryption off
  };
  {
    // Web app: decodeURIComponent (URLSearchParams did it), trim, encodeURIComponent.
    const raw = q.has("password") ? q.get("password") : DEFAULT_PASSWORD;
    const t = raw.trim();
    if (["false", "0", "off"].includes(t.toLowerCase())) {
      cfg.password = null;
    } else {
      cfg.password = encodeURIComponent(t === "" ? DEFAULT_PASSWORD : t);
    }
  }
  const selfId = randomString(16); // our `from` in the relay dialect
  const relay = cfg.dialect === "relay";

  // ---------------------------------------------------------------------------------------
  // Crypto (§3): generateHash, AES-256-CBC with key = SHA-256(password + salt)
  // ---------------------------------------------------------------------------------------

  const enc = new TextEncoder();
  const dec = new TextDecoder();

  function toHex(bytes) {
    return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function fromHex(hex) {
    if (typeof hex !== "string" || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
      throw new Error("bad hex");
    }
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  async function sha256(s) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(s)));
  }

  /** Lowercase hex of the first n/2 bytes of SHA-256(s) (web `generateHash`). */
  async function generateHash(s, n) {
    return toHex(await sha256(s)).slice(0, n);
  }

  async function importKey(raw) {
    return crypto.subtle.importKey("raw", raw, { name: "AES-CBC" }, false, ["encrypt", "decrypt"]);
  }

  /** JSON.stringify(value) → {hex, vector} (random 16-byte IV), PKCS#7 padded. */
  async function encryptWith(key, value, iv) {
    iv = iv || crypto.getRandomValues(new Uint8Array(16));
    const ct = await crypto.subtle.encrypt({ name: "AES-CBC", iv: iv }, key, enc.encode(JSON.stringify(value)));
    return { hex: toHex(ct), vector: toHex(iv) };
  }

  async function decryptWith(key, hex, vector) {
    const pt = await crypto.subtle.decrypt({ name: "AES-CBC", iv: fromHex(vector) }, key, fromHex(hex));
    return JSON.parse(dec.decode(pt));
  }

  /** The vector of vdoninja-protocol.md §3; logged so a test sees WebCrypto agrees. */
  async function selfTest() {
    const digest = toHex(await sha256(DEFAULT_PASSWORD + DEFAULT_SALT));
    const key = await importKey(fromHex(digest));
    const iv = new Uint8Array(16).map((_, i) => i);
    const got = await encryptWith(key, { type: "answer", sdp: "v=0\r\n" }, iv);
    const want =
      "e3cbc3ad10ee89125690f59776c972d770723acec02df276fe7c02a800d34f83bfa792e1450b421fd51f9f101d21c8d0";
    const room = await generateHash("myroom" + DEFAULT_PASSWORD + DEFAULT_SALT, 16);
    const pw2 = await generateHash(encodeURIComponent("p@ss word") + DEFAULT_SALT, 6);
    const ok =
      digest === "808d646f7eb92052344e1e668e340c852f8d675754acfae11d8cc49233c36eba" &&
      got.hex === want &&
      room === "2f1a0139acdd5bdc" &&
      pw2 === "b37e9f" &&
      JSON.stringify(await decryptWith(key, want, got.vector)) === JSON.stringify({ type: "answer", sdp: "v=0\r\n" });
    emit({ event: "selftest", ok: ok, secure: window.isSecureContext });
    return ok;
  }

  let cipherKey = null; // CryptoKey when the password is on
  let wireStream = cfg.streamId;
  let wireRoom = cfg.room;

  /** Seals `value` for field `field` of `msg` (in place): hex + `vector` when encrypting. */
  async function seal(msg, field, value) {
    if (cipherKey) {
      const s = await encryptWith(cipherKey, value);
      msg[field] = s.hex;
      msg.vector = s.vector;
    } else {
      msg[field] = value;
    }
    return msg;
  }

  /** Opens `msg[field]`: decrypts hex + `vector`, passes plain JSON through. */
  async function open(msg, field) {
    const v = msg[field];
    if (typeof v === "string" && msg.vector) {
      if (!cipherKey) throw new Error("encrypted " + field + " but the password is off");
      return decryptWith(cipherKey, v, msg.vector);
    }
    return v;
  }

  function randomString(n) {
    const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const r = crypto.getRandomValues(new Uint8Array(n));
    return Array.from(r, (b) => chars[b % chars.length]).join("");
  }

  // ---------------------------------------------------------------------------------------
  // Media
  // ---------------------------------------------------------------------------------------

  let media = null; // MediaStream from the fake devices

  /**
   * getUserMedia before any peer connection, like the web app with &webcam&autostart: the
   * granted permission also makes Chromium expose host candidates instead of mDNS names.
   */
  async function startMedia() {
    media = await navigator.mediaDevices.getUserMedia({
      // No voice processing: the sync check needs the beeps as they are.
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
    });
    const v = media.getVideoTracks()[0];
    const settings = v ? v.getSettings() : {};
    const preview = document.getElementById("preview");
    if (preview) preview.srcObject = media;
    emit({
      event: "media",
      tracks: media.getTracks().map((t) => t.kind + ":" + t.label),
      width: settings.width,
      height: settings.height,
      frameRate: settings.frameRate,
    });
  }

  // ---------------------------------------------------------------------------------------
  // The browser's own recording of its local stream: the reference for A/V sync checks
  // (Chromium's file-backed fake camera and microphone are not on one clock).
  // ---------------------------------------------------------------------------------------

  let localRecorder = null;
  const localChunks = [];

  function startLocalRecording() {
    if (!media || typeof MediaRecorder === "undefined") return;
    try {
      localRecorder = new MediaRecorder(media, {
        mimeType: "video/webm;codecs=vp8,opus",
        videoBitsPerSecond: 300000,
      });
      localRecorder.ondataavailable = (e) => {
        if (e.data && e.data.size) localChunks.push(e.data);
      };
      localRecorder.start(1000);
    } catch (e) {
      emit({ event: "error", what: "local recording", message: String(e) });
    }
  }

  /**
   * Stops the local recording and returns it as hex (WebM, VP8 + Opus), for the test to
   * measure with the same checker as the recorder's files.
   */
  window.ninjarecLocalRecording = async function () {
    if (!localRecorder) return null;
    if (localRecorder.state !== "inactive") {
      await new Promise((resolve) => {
        localRecorder.onstop = resolve;
        localRecorder.stop();
      });
    }
    const bytes = new Uint8Array(await new Blob(localChunks).arrayBuffer());
    const hex = new Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) hex[i] = (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return hex.join("");
  };

  // ---------------------------------------------------------------------------------------
  // WebSocket signalling
  // ---------------------------------------------------------------------------------------

  let ws = null;
  let announce = "offline"; // offline | await-listing | announced
  let stopped = false;

  /** Sends one message, dialect-decorated (relay: `from` and, in a room, `roomid`). */
  function send(msg) {
    if (relay) {
      msg.from = selfId;
      if (wireRoom && msg.roomid === undefined) msg.roomid = wireRoom;
    }
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  function connect() {
    if (stopped) return;
    ws = new WebSocket(cfg.server);
    ws.onopen = () => {
      emit({ event: "ws-open" });
      if (relay) {
        if (wireRoom) send({ request: "joinroom", roomid: wireRoom, streamID: wireStream });
        else send({ request: "seed", streamID: wireStream });
        announce = "announced";
        emit({ event: "ready" });
      } else if (wireRoom) {
        // Web-app order on the official server: join, wait for the listing, then seed.
        send({ request: "joinroom", roomid: wireRoom });
        announce = "await-listing";
      } else {
        send({ request: "seed", streamID: wireStream });
        announce = "announced";
        emit({ event: "ready" });
      }
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (msg === null || typeof msg !== "object") return;
      onServerMessage(msg).catch((e) => fail("ws-message", e));
    };
    ws.onclose = () => {
      announce = "offline";
      emit({ event: "ws-closed" });
      if (!stopped) setTimeout(connect, 1000);
    };
    ws.onerror = () => {};
  }

  /** Sender of a server message (official: `UUID` rewritten by the server; relay: `from`). */
  function senderOf(msg) {
    const id = relay ? msg.from : msg.UUID || msg.from;
    if (id === undefined || id === null) return null;
    const s = String(id);
    return s === selfId ? null : s;
  }

  async function onServerMessage(msg) {
    if (msg.type === "disconnect" || msg.type === "leave") {
      // A relay viewer left: a peer it never answered will not be answered any more.
      const p = peers.get(String(msg.uuid));
      if (p && !p.answered) closePeer(p, "departed", false);
      return;
    }
    // A relay fans out: `UUID` names the target.
    if (relay && msg.UUID !== undefined && String(msg.UUID) !== selfId) return;
    const sender = senderOf(msg);
    if (msg.bye === true) {
      const p = sender && peers.get(sender);
      if (p) closePeer(p, "ws-bye", false);
      return;
    }
    if (msg.description !== undefined) return onAnswer(sender, msg);
    if (msg.candidates !== undefined || msg.candidate !== undefined) return onRemoteCandidates(sender, msg);
    switch (msg.request) {
      case "listing":
      case "transferred":
        if (announce === "await-listing") {
          send({ request: "seed", streamID: wireStream });
          announce = "announced";
          emit({ event: "ready" });
        }
        return;
      case "offerSDP":
        if (sender) await request(sender);
        return;
      case "play":
        if (sender && msg.streamID === wireStream) await request(sender);
        return;
      case "joinroom":
        // Relay discovery: a newcomer without a stream is a viewer, offer to it. (The web app
        // offers to every newcomer; like src/testsrc we do not serve other publishers.)
        if (relay && sender && msg.streamID === undefined) await request(sender);
        return;
      case "cleanup": {
        const p = sender && peers.get(sender);
        if (p) closePeer(p, "cleanup", false);
        return;
      }
      case "alert":
      case "error":
        emit({ event: "server-says", message: String(msg.message) });
        return;
      default:
        if (msg.error !== undefined) emit({ event: "server-says", message: String(msg.error) });
    }
  }

  // ---------------------------------------------------------------------------------------
  // Peers (one RTCPeerConnection per viewer)
  // ---------------------------------------------------------------------------------------

  const peers = new Map(); // viewer id → peer

  function isLoopbackCandidate(c) {
    // "candidate:<foundation> <component> <proto> <priority> <address> <port> typ ..."
    const parts = String(c.candidate || "").split(" ");
    return parts.length > 5 && /^127\./.test(parts[4]);
  }

  /** The peer of `viewer` if `session` matches (an absent session is accepted). */
  function matching(viewer, session) {
    const p = viewer && peers.get(viewer);
    if (!p) return null;
    if (session === undefined || session === null || session === p.session) return p;
    return null;
  }

  async function request(viewer) {
    const old = peers.get(viewer);
    if (old) {
      if (!old.answered) return; // our offer is on its way (a joinroom and a play crossed)
      closePeer(old, "replaced", true); // the viewer asks again after its session ended
    }
    if (peers.size >= MAX_VIEWERS) {
      emit({ event: "refused", uuid: viewer });
      return;
    }
    const p = {
      viewer: viewer,
      session: randomString(SESSION_CHARS),
      pc: new RTCPeerConnection({ iceServers: [] }),
      dc: null,
      offerSent: false,
      answered: false,
      localQueue: [], // our candidates waiting for the offer / the bundle timer
      bundleTimer: null,
      bundles: 0,
      remoteQueue: [], // viewer candidates waiting for the remote description
      remoteSet: false,
      tracksAdded: false,
      renegotiating: false,
      preferVideoCodec: null,
      statsTimer: null,
      closed: false,
    };
    peers.set(viewer, p);
    emit({ event: "viewer", uuid: viewer, session: p.session });

    p.pc.onicecandidate = (e) => {
      if (!e.candidate || !e.candidate.candidate) return;
      const c = e.candidate.toJSON();
      if (cfg.iceFilter === "loopback" && !isLoopbackCandidate(c)) return;
      p.localQueue.push(c);
      scheduleBundle(p);
    };
    p.pc.onconnectionstatechange = () => {
      emit({ event: "pc-state", uuid: viewer, state: p.pc.connectionState });
      if (p.pc.connectionState === "failed") closePeer(p, "failed", false);
    };
    p.dc = p.pc.createDataChannel("sendChannel");
    p.dc.onopen = () => emit({ event: "dc-open", uuid: viewer });
    p.dc.onclose = () => {
      emit({ event: "dc-closed", uuid: viewer });
      closePeer(p, "dc-closed", false);
    };
    p.dc.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      if (msg === null || typeof msg !== "object") return;
      onDcMessage(p, msg).catch((err) => fail("dc-message", err));
    };

    // First offer: data channel only (web app).
    const offer = await p.pc.createOffer();
    await p.pc.setLocalDescription(offer);
    const out = { UUID: viewer, streamID: wireStream, session: p.session };
    await seal(out, "description", { type: offer.type, sdp: offer.sdp });
    if (p.closed) return;
    send(out);
    p.offerSent = true;
    emit({ event: "offer-sent", uuid: viewer, encrypted: !!cipherKey });
    if (p.localQueue.length) scheduleBundle(p);
  }

  /** Web app bundles local candidates with a short timer: ~10 ms first, then ~1 s. */
  function scheduleBundle(p) {
    if (p.bundleTimer || !p.offerSent || p.closed) return;
    const delay = p.bundles === 0 ? 10 : 1000;
    p.bundleTimer = setTimeout(() => {
      p.bundleTimer = null;
      flushCandidates(p).catch((e) => fail("candidates", e));
    }, delay);
  }

  async function flushCandidates(p) {
    if (!p.localQueue.length || p.closed) return;
    const list = p.localQueue.splice(0);
    p.bundles++;
    const out = { UUID: p.viewer, type: "local", session: p.session };
    await seal(out, "candidates", list);
    send(out);
    emit({ event: "candidates-sent", uuid: p.viewer, n: list.length });
    if (p.localQueue.length) scheduleBundle(p);
  }

  async function onAnswer(sender, msg) {
    const p = matching(sender, msg.session);
    if (!p || !p.offerSent || p.answered) return;
    let desc;
    try {
      desc = await open(msg, "description");
    } catch (e) {
      emit({ event: "undecryptable", uuid: sender, what: "answer" });
      return;
    }
    if (!desc || desc.type !== "answer" || typeof desc.sdp !== "string") return;
    p.answered = true;
    await p.pc.setRemoteDescription(desc);
    emit({ event: "answer", uuid: sender, encrypted: typeof msg.description === "string" });
    await remoteDescriptionSet(p);
  }

  async function remoteDescriptionSet(p) {
    if (p.remoteSet) return;
    p.remoteSet = true;
    for (const c of p.remoteQueue.splice(0)) await addRemoteCandidate(p, c);
  }

  function candidateList(v) {
    if (Array.isArray(v)) return v;
    if (v && typeof v === "object") return [v];
    return [];
  }

  async function onRemoteCandidates(sender, msg) {
    const p = matching(sender, msg.session);
    if (!p) return;
    let v;
    try {
      v = await open(msg, msg.candidates !== undefined ? "candidates" : "candidate");
    } catch (e) {
      emit({ event: "undecryptable", uuid: sender, what: "candidates" });
      return;
    }
    for (const c of candidateList(v)) {
      if (!c || !c.candidate) continue;
      if (!p.remoteSet) p.remoteQueue.push(c);
      else await addRemoteCandidate(p, c);
    }
  }

  async function addRemoteCandidate(p, c) {
    try {
      await p.pc.addIceCandidate(c);
    } catch (e) {
      emit({ event: "candidate-rejected", uuid: p.viewer, candidate: c.candidate, message: String(e) });
    }
  }

  // ---------------------------------------------------------------------------------------
  // Data channel (§4)
  // ---------------------------------------------------------------------------------------

  function dcSend(p, obj) {
    if (p.dc && p.dc.readyState === "open") p.dc.send(JSON.stringify(obj));
  }

  async function onDcMessage(p, msg) {
    if (msg.bye) {
      emit({ event: "bye", uuid: p.viewer });
      closePeer(p, "bye", false);
      return;
    }
    if (msg.ping !== undefined) {
      dcSend(p, { pong: msg.ping });
      return;
    }
    if (msg.pong !== undefined) return;
    if (msg.description !== undefined) {
      let desc;
      try {
        desc = await open(msg, "description");
      } catch (e) {
        emit({ event: "undecryptable", uuid: p.viewer, what: "dc-description" });
        return;
      }
      if (desc && desc.type === "answer" && p.pc.signalingState === "have-local-offer") {
        await p.pc.setRemoteDescription(desc);
        p.renegotiating = false;
        emit({ event: "renegotiated", uuid: p.viewer, encrypted: typeof msg.description === "string" });
        await remoteDescriptionSet(p);
      }
      return;
    }
    if (msg.candidates !== undefined || msg.candidate !== undefined) {
      let v;
      try {
        v = await open(msg, msg.candidates !== undefined ? "candidates" : "candidate");
      } catch (e) {
        return;
      }
      for (const c of candidateList(v)) {
        if (c && c.candidate) {
          if (!p.remoteSet) p.remoteQueue.push(c);
          else await addRemoteCandidate(p, c);
        }
      }
      return;
    }
    if (msg.keyframe) emit({ event: "keyframe-request", uuid: p.viewer });
    if (msg.audio !== undefined || msg.video !== undefined) {
      emit({
        event: "request",
        uuid: p.viewer,
        audio: !!msg.audio,
        video: !!msg.video,
        preferVideoCodec: msg.preferVideoCodec || null,
      });
      await addTracksAndRenegotiate(p, !!msg.audio, !!msg.video, msg.preferVideoCodec);
    }
  }

  /** Puts the preferred codec family first on the video transceiver. */
  function preferCodec(transceiver, family) {
    const mime = { h264: "video/H264", vp8: "video/VP8", vp9: "video/VP9", av1: "video/AV1" }[
      String(family).toLowerCase()
    ];
    if (!mime || !transceiver.setCodecPreferences) return false;
    for (const caps of [RTCRtpReceiver.getCapabilities("video"), RTCRtpSender.getCapabilities("video")]) {
      if (!caps) continue;
      const first = caps.codecs.filter((c) => c.mimeType.toLowerCase() === mime.toLowerCase());
      if (!first.length) continue;
      const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== mime.toLowerCase());
      try {
        transceiver.setCodecPreferences(first.concat(rest));
        return true;
      } catch (e) {
        fail("setCodecPreferences", e);
      }
    }
    return false;
  }

  /** Web-app behaviour: add the wanted tracks, then offer them over the data channel. */
  async function addTracksAndRenegotiate(p, audio, video, preferVideoCodec) {
    if (p.tracksAdded || p.closed || !media) return;
    p.tracksAdded = true;
    for (const t of media.getTracks()) {
      if ((t.kind === "audio" && audio) || (t.kind === "video" && video)) p.pc.addTrack(t, media);
    }
    let preferred = false;
    if (preferVideoCodec) {
      for (const tr of p.pc.getTransceivers()) {
        if (tr.sender.track && tr.sender.track.kind === "video") preferred = preferCodec(tr, preferVideoCodec);
      }
    }
    emit({ event: "media-start", uuid: p.viewer, t: Date.now(), preferVideoCodec: preferVideoCodec || null, applied: preferred });
    if (p.pc.signalingState !== "stable") {
      // The first answer has not arrived yet (cannot happen with an open data channel).
      await waitStable(p);
    }
    p.renegotiating = true;
    const offer = await p.pc.createOffer();
    await p.pc.setLocalDescription(offer);
    const out = { session: p.session };
    await seal(out, "description", { type: offer.type, sdp: offer.sdp });
    dcSend(p, out);
    emit({ event: "renegotiation-offer", uuid: p.viewer, encrypted: !!cipherKey });
    startStats(p);
  }

  function waitStable(p) {
    return new Promise((resolve) => {
      const check = () => {
        if (p.pc.signalingState === "stable" || p.closed) {
          p.pc.removeEventListener("signalingstatechange", check);
          resolve();
        }
      };
      p.pc.addEventListener("signalingstatechange", check);
      check();
    });
  }

  // ---------------------------------------------------------------------------------------
  // Stats
  // ---------------------------------------------------------------------------------------

  /** Outbound RTP counters of one peer (what the Rust side compares the recording with). */
  async function collectStats(p) {
    const report = await p.pc.getStats();
    const out = { event: "stats", uuid: p.viewer, t: Date.now(), video: null, audio: null };
    const codecs = new Map();
    report.forEach((s) => {
      if (s.type === "codec") codecs.set(s.id, s);
    });
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        const c = codecs.get(s.codecId);
        out.video = {
          ssrc: s.ssrc,
          framesEncoded: s.framesEncoded || 0,
          keyFramesEncoded: s.keyFramesEncoded || 0,
          framesSent: s.framesSent || 0,
          packetsSent: s.packetsSent || 0,
          bytesSent: s.bytesSent || 0,
          retransmittedPacketsSent: s.retransmittedPacketsSent || 0,
          nackCount: s.nackCount || 0,
          pliCount: s.pliCount || 0,
          firCount: s.firCount || 0,
          frameWidth: s.frameWidth || 0,
          frameHeight: s.frameHeight || 0,
          framesPerSecond: s.framesPerSecond || 0,
          mimeType: c ? c.mimeType : null,
          sdpFmtpLine: c ? c.sdpFmtpLine || null : null,
          payloadType: c ? c.payloadType : null,
          encoderImplementation: s.encoderImplementation || null,
          qualityLimitationReason: s.qualityLimitationReason || null,
        };
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        const c = codecs.get(s.codecId);
        out.audio = {
          ssrc: s.ssrc,
          packetsSent: s.packetsSent || 0,
          bytesSent: s.bytesSent || 0,
          mimeType: c ? c.mimeType : null,
        };
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        const l = report.get(s.localCandidateId);
        const r = report.get(s.remoteCandidateId);
        out.pair = (l ? l.address + ":" + l.port : "?") + " -> " + (r ? r.address + ":" + r.port : "?");
      }
    });
    return out;
  }

  function startStats(p) {
    if (p.statsTimer) return;
    p.statsTimer = setInterval(() => {
      if (p.closed) return;
      collectStats(p)
        .then((s) => emit(s))
        .catch((e) => fail("stats", e));
    }, 1000);
  }

  /**
   * Ends one viewer's peer: a last stats line (`final: true`, with the reason) while the
   * connection still exists, so tests can compare what was sent with what was recorded even
   * when the viewer ended the session; then `{"bye":true}` if we end it, and close.
   * Resolves with that last stats object (null if no media was ever added).
   */
  function closePeer(p, reason, sayBye) {
    if (p.closed) return Promise.resolve(null);
    p.closed = true;
    if (p.statsTimer) clearInterval(p.statsTimer);
    if (p.bundleTimer) clearTimeout(p.bundleTimer);
    if (peers.get(p.viewer) === p) peers.delete(p.viewer);
    const finish = () => {
      if (sayBye) {
        try {
          dcSend(p, { bye: true });
        } catch (_) {}
      }
      try {
        p.pc.close();
      } catch (_) {}
      emit({ event: "peer-closed", uuid: p.viewer, reason: reason });
    };
    if (!p.tracksAdded) {
      finish();
      return Promise.resolve(null);
    }
    return collectStats(p)
      .then((s) => {
        s.final = true;
        s.reason = reason;
        emit(s);
        return s;
      })
      .catch((e) => {
        fail("final-stats", e);
        return null;
      })
      .finally(finish);
  }

  /**
   * Stops publishing: closes every peer (final stats line each, `{"bye":true}` on its data
   * channel), then the WebSocket. Resolves with the final stats objects.
   */
  async function stop() {
    if (stopped) return [];
    stopped = true;
    const finals = [];
    for (const p of Array.from(peers.values())) {
      const s = await closePeer(p, "stop", true);
      if (s) finals.push(s);
    }
    if (ws) ws.close();
    emit({ event: "stopped" });
    return finals;
  }
  window.ninjarecStop = stop;

  // ---------------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------------

  async function main() {
    emit({ event: "loaded", dialect: relay ? "relay" : "official", secure: window.isSecureContext });
    if (!cfg.server || !cfg.streamId) throw new Error("server and streamid are required");
    if (cfg.dialect !== "official" && cfg.dialect !== "relay") throw new Error("dialect must be official or relay");
    if (!window.isSecureContext || !crypto.subtle) throw new Error("not a secure context: no WebCrypto");
    await selfTest();
    if (cfg.password !== null) {
      const digest = await sha256(cfg.password + cfg.salt);
      cipherKey = await importKey(digest);
      wireStream = cfg.streamId.slice(0, 44) + (await generateHash(cfg.password + cfg.salt, 6));
      if (cfg.room) wireRoom = await generateHash(cfg.room + cfg.password + cfg.salt, 16);
    } else {
      wireStream = cfg.streamId.slice(0, 44);
    }
    emit({ event: "config", streamID: wireStream, roomid: wireRoom, encrypted: !!cipherKey, from: relay ? selfId : null });
    await startMedia();
    startLocalRecording();
    connect();
    if (cfg.stopAfter > 0) setTimeout(() => stop().catch((e) => fail("stop", e)), cfg.stopAfter * 1000);
  }

  main().catch((e) => fail("main", e));
})();
