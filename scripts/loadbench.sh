#!/usr/bin/env bash
# Load benchmark of the recorder (issue 6; results and method in docs/loadbench.md).
#
#   scripts/loadbench.sh [N ...]          # default: 1 8 32 64 100
#
# For each N, on loopback: starts `ninjarec serve`, then N test publishers of a 2 Mb/s 720p30 clip
# in ONE separate process (examples/testsrc.rs; the GStreamer publisher, see PUBLISHER, in
# GST_PROCS processes), then `ninjarec` recording the room as its own process. Only the recorder
# is measured: /proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS, VmHWM) once a second.
# CPU and steady RSS are taken over the window after WARMUP seconds (connection setup excluded);
# peak RSS is VmHWM at the end. The publishers' CPU is sampled too (summed over their processes):
# when they use more than SATURATION % of the machine the run says so and larger N are skipped,
# because starved publishers, not the recorder, would then set the numbers.
#
# Environment:
#   DURATION=60     measured seconds (after WARMUP)
#   WARMUP=10       seconds from recorder start before measuring
#   OUT=target/loadbench   scratch folder (recordings, samples, logs; wiped per N)
#   CLIP=assets/loadbench-720p.ts
#   SATURATION=85   % of all cores the publishers may use before the run counts as saturated
#   SKIP_BUILD=1    use the binaries in target/release as they are
#   BASE_PORT=21000 handshake server port is BASE_PORT + N
#   REC_BIN=path    recorder binary to measure (default: the freshly built one), e.g. a saved
#                   copy of an older build, to compare two builds in the same session
#   PUBLISHER=testsrc  who publishes: `testsrc` (our webrtc-rs clip publisher, N in one process)
#                   or `gst` (the test suite's GStreamer publisher, Raspberry Ninja's pipeline:
#                   x264 720p30 2 Mb/s + Opus, encoded live per stream; tests/publishers/
#                   gst_publisher.py). Live x264 takes ~15-18 % of a core per stream, so 2 cores
#                   saturate at 6-8 streams: see GST_PRE_ENCODED. The recorder starts once every
#                   stream has said it is ready (waits at most 60 s)
#   GST_VIDEO="--width 1280 --height 720 --bitrate 2000"   the GStreamer publisher's picture
#                   size and video kb/s (the default is Raspberry Ninja's 720p at 2 Mb/s)
#   GST_PRE_ENCODED=1  the GStreamer publisher encodes 10 s of x264 (same settings) and Opus once
#                   per process, every stream sends that loop through rtph264pay/rtpopuspay and
#                   webrtcbin (--pre-encoded), and packets are counted from webrtcbin's statistics
#                   instead of by Python code per packet (--light-counters): the same wire (same
#                   packet rates) for ~2 % of a core per stream, so N = 32 fits on 2 cores.
#                   No flashes/beeps; keyframes every 2 s, not on request (PLI/FIR)
#   GST_PROCS=1     split the N GStreamer streams over this many publisher processes: one
#                   process runs all its streams' Python callbacks under one GIL (fine for 32
#                   pre-encoded streams; live encoding or larger N may need 2-4)
#   UDP_PORT=1      record with `--udp-port` (all media on one port) instead of a port per stream
#   FLOOR=1         after each N, measure the floor at the same packet rate: examples/floor.rs
#                   receives SRTP packets from a paced sender and only decrypts them
#                   (FLOOR_VIDEO_PPS, FLOOR_AUDIO_PPS, FLOOR_VIDEO_SIZE per stream; defaults: the
#                   publisher kind's measured rates; FLOOR_PROFILE=gcm|cm, default gcm;
#                   FLOOR_READ=grid|arrival, default grid: examples/floor.rs)
#   PERF=1          also sample the recorder with `perf record` (no call graphs, 1999 Hz) over
#                   the measured window and say how many of its samples were SRTP decryption:
#                   samples per SRTP sample is the recorder's work in units of its own SRTP
#                   work, the same per packet in every build, so a ratio the machine's speed
#                   (which drifts by 10-50 % on a shared VM) does not move; also the share
#                   spent copying file writes into the page cache (a VM's fresh memory can make
#                   it the largest item). perf's sampling is charged to the recorder's CPU
#                   column too: compare PERF=1 runs with each other
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-10}
OUT=${OUT:-target/loadbench}
CLIP=${CLIP:-assets/loadbench-720p.ts}
SATURATION=${SATURATION:-85}
BASE_PORT=${BASE_PORT:-21000}
PUBLISHER=${PUBLISHER:-testsrc}
UDP_PORT=${UDP_PORT:-}
FLOOR=${FLOOR:-}
PERF=${PERF:-}
GST_VIDEO=${GST_VIDEO:---width 1280 --height 720 --bitrate 2000}
GST_PRE_ENCODED=${GST_PRE_ENCODED:-}
GST_PROCS=${GST_PROCS:-1}
gst_mode=()
[ -n "$GST_PRE_ENCODED" ] && gst_mode=(--pre-encoded --light-counters)
case "$PUBLISHER" in
    # Packets per second per stream on the wire, measured: the clip sends ~190 video + 50 audio;
    # the GStreamer publisher ~225 video + 50 audio (issue 11).
    testsrc) FLOOR_VIDEO_PPS=${FLOOR_VIDEO_PPS:-190} ;;
    gst) FLOOR_VIDEO_PPS=${FLOOR_VIDEO_PPS:-225} ;;
    *) echo "PUBLISHER must be testsrc or gst" >&2; exit 2 ;;
esac
FLOOR_AUDIO_PPS=${FLOOR_AUDIO_PPS:-50}
FLOOR_VIDEO_SIZE=${FLOOR_VIDEO_SIZE:-1150}
# The cheaper SRTP profile (the floor is then the lowest, the ratio the least flattering).
FLOOR_PROFILE=${FLOOR_PROFILE:-gcm}
# How the floor reads: on the recorder's 20 ms grid (the default), or woken per datagram
# (`arrival`, how it read before the sixth session of issue 11: see examples/floor.rs).
FLOOR_READ=${FLOOR_READ:-grid}
NS=("$@")
[ ${#NS[@]} -eq 0 ] && NS=(1 8 32 64 100)

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --locked --bin ninjarec --example testsrc --example floor
fi
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/ninjarec
PUB=$TARGET/release/examples/testsrc
FLOOR_BIN=$TARGET/release/examples/floor
REC=${REC_BIN:-$BIN}
CLK_TCK=$(getconf CLK_TCK)
CORES=$(nproc)

# Total CPU ticks (utime + stime, all threads) of a process; empty once it is gone.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || true; }
# The sum over the publisher processes; empty once one of them is gone.
pub_ticks() {
    local sum=0 t p
    for p in "${pub_pids[@]}"; do
        t=$(ticks "$p")
        [ -z "$t" ] && return 0
        sum=$((sum + t))
    done
    echo "$sum"
}
# VmRSS and VmHWM in KiB.
mem() { awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r+0, h+0}' "/proc/$1/status" 2>/dev/null || echo "0 0"; }
rcvbuf_errors() { awk '/^Udp:/{ if (!h) { for (i=1;i<=NF;i++) if ($i=="RcvbufErrors") c=i; h=1 } else print $c }' /proc/net/snmp; }

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -srm), $CORES cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
gst_desc=
[ "$PUBLISHER" = gst ] && gst_desc=" (${GST_PRE_ENCODED:+pre-encoded, }$GST_PROCS process(es))"
echo "# recorder $REC, publisher $PUBLISHER$gst_desc, ${UDP_PORT:+one UDP port, }warmup ${WARMUP}s, measured ${DURATION}s"
echo "| N | recorder CPU % of a core per stream | floor CPU % per stream (ratio) | publishers CPU % of a core | peak RSS MiB/stream (total) | steady RSS MiB/stream (total) | RSS drift over window MiB | MB written | frames written / received | packets lost | dropped by recorder | UDP RcvbufErrors | UDP sockets | files ffmpeg-clean |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

for N in "${NS[@]}"; do
    dir=$OUT/n$N
    rm -rf "$dir"
    mkdir -p "$dir/rec"
    port=$((BASE_PORT + N))
    streams=$(seq -s, -f 's%g' 1 "$N")

    "$BIN" serve -q --listen "127.0.0.1:$port" --max-clients-per-ip $((N + 8)) --max-room-members $((N + 8)) >"$dir/serve.log" 2>&1 &
    serve_pid=$!
    wait_port "$port"
    pub_pids=()
    if [ "$PUBLISHER" = gst ]; then
        # Streams s1..sN in GST_PROCS contiguous slices, one process each (pub.out, or pub-K.out).
        procs=$((GST_PROCS < N ? GST_PROCS : N))
        for k in $(seq 1 "$procs"); do
            first=$(((k - 1) * N / procs + 1))
            last=$((k * N / procs))
            name=pub
            [ "$procs" -gt 1 ] && name=pub-$k
            /usr/bin/python3 tests/publishers/gst_publisher.py --server "ws://127.0.0.1:$port" --dialect official \
                --room bench --streams "$(seq -s, -f 's%g' "$first" "$last")" --password false $GST_VIDEO --fps 30 \
                --local-ip 127.0.0.1 --stats-interval 5 "${gst_mode[@]}" \
                --duration $((WARMUP + DURATION + 120)) >"$dir/$name.out" 2>"$dir/$name.err" &
            pub_pids+=($!)
        done
    else
        "$PUB" --server "ws://127.0.0.1:$port" --dialect official --room bench --streams "$streams" \
            --clip "$CLIP" --password false --mode media-first --udp 127.0.0.1:0 \
            --duration $((WARMUP + DURATION + 120)) >"$dir/pub.out" 2>"$dir/pub.err" &
        pub_pids+=($!)
    fi
    sleep $((2 + N / 20))
    if [ "$PUBLISHER" = gst ]; then
        # Every stream announced (with GST_PRE_ENCODED: after its process encoded the loop).
        ready=0
        for _ in $(seq 600); do
            ready=$(cat "$dir"/pub*.out | grep -c '"event":"ready"' || true)
            [ "$ready" -ge "$N" ] && break
            sleep 0.1
        done
        [ "$ready" -ge "$N" ] || echo "# N=$N: only $ready of $N streams ready after 60 s; recording anyway" >&2
    fi
    rcv0=$(rcvbuf_errors)

    port_args=()
    [ -n "$UDP_PORT" ] && port_args=(--udp-port $((port + 1000)))
    "$REC" -q --room bench --record-room --server "ws://127.0.0.1:$port" --dialect official \
        --password false --udp-bind 127.0.0.1:0 "${port_args[@]}" --stun none --output-dir "$dir/rec" \
        --max-streams "$N" --duration $((WARMUP + DURATION)) >"$dir/rec.out" 2>"$dir/rec.err" &
    rec_pid=$!
    sockets=
    perf_pid=
    t0=$(date +%s.%N)
    # t, recorder ticks, VmRSS KiB, VmHWM KiB, publisher ticks
    while kill -0 "$rec_pid" 2>/dev/null; do
        r=$(ticks "$rec_pid")
        [ -z "$r" ] && break
        now=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
        echo "$now $r $(mem "$rec_pid") $(pub_ticks)" >>"$dir/samples"
        if [ -z "$sockets" ] && awk -v t="$now" -v w="$WARMUP" 'BEGIN{exit !(t >= w)}'; then
            sockets=$(ss -uanp 2>/dev/null | grep -c "pid=$rec_pid," || true)
            if [ -n "$PERF" ]; then
                perf record -q -F 1999 -p "$rec_pid" -o "$dir/perf.data" -- sleep "$DURATION" \
                    >"$dir/perf.log" 2>&1 &
                perf_pid=$!
            fi
        fi
        sleep 1
    done
    wait "$rec_pid" || echo "recorder exited with $?" >&2
    rcv1=$(rcvbuf_errors)
    kill -INT "${pub_pids[@]}" 2>/dev/null || true
    for p in "${pub_pids[@]}"; do wait "$p" || true; done
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" || true

    # Steady window: samples between WARMUP and WARMUP+DURATION.
    read -r cpu pubcpu rss drift hwm < <(awk -v w0="$WARMUP" -v w1=$((WARMUP + DURATION)) -v hz="$CLK_TCK" '
        $5 != "" { if ($1 >= w0 && $1 <= w1) { if (!n) { t0=$1; c0=$2; p0=$5; r0=$3 } t1=$1; c1=$2; p1=$5; r1=$3; rs+=$3; n++ } }
        { if ($4 > h) h=$4 }
        END { if (n < 2) { print "nan nan nan nan", h/1024; exit }
              printf "%.3f %.1f %.2f %.2f %.2f\n", (c1-c0)/hz/(t1-t0)*100, (p1-p0)/hz/(t1-t0)*100, rs/n/1024, (r1-r0)/1024, h/1024 }' "$dir/samples")
    # Summary lines: "sN: file, X s, W frames (K keyframes) of R received, A audio packets,
    # D frames dropped to loss, L packets lost[, M packets dropped (recorder behind)]"
    read -r written received lost behind nsum < <(awk '
        / frames \(/ { for (i=1;i<=NF;i++) { if ($(i)=="frames" && $(i+1)~/^\(/) w+=$(i-1); if ($(i)=="received,") r+=$(i-1);
                       if ($(i)=="packets" && $(i+1)~/^lost/) l+=$(i-1); if ($(i)=="packets" && $(i+1)=="dropped") b+=$(i-1) } n++ }
        END { print w+0, r+0, l+0, b+0, n+0 }' "$dir/rec.out")
    bytes=$(find "$dir/rec" -name '*.ts' -printf '%s\n' | awk '{s+=$1} END{printf "%.1f", s/1e6}')
    files=0
    clean=0
    for f in "$dir"/rec/*.ts; do
        [ -e "$f" ] || continue
        files=$((files + 1))
        if [ -z "$(ffmpeg -nostdin -v error -i "$f" -f null - 2>&1)" ]; then clean=$((clean + 1)); fi
    done
    per() { awk -v a="$1" -v n="$N" 'BEGIN{ if (a=="nan") print "nan"; else printf "%.2f", a/n }'; }
    floor="-"
    if [ -n "$FLOOR" ]; then
        fport=$((port + 2000))
        "$FLOOR_BIN" recv --listen "127.0.0.1:$fport" --seconds "$DURATION" --profile "$FLOOR_PROFILE" \
            --read "$FLOOR_READ" >"$dir/floor.out" 2>"$dir/floor.err" &
        floor_pid=$!
        sleep 0.5
        "$FLOOR_BIN" send --to "127.0.0.1:$fport" --streams "$N" --seconds $((DURATION + 2)) \
            --video-pps "$FLOOR_VIDEO_PPS" --audio-pps "$FLOOR_AUDIO_PPS" --video-size "$FLOOR_VIDEO_SIZE" --profile "$FLOOR_PROFILE" \
            >"$dir/floor-send.out" 2>&1 || true
        wait "$floor_pid" || true
        floor=$(python3 -c 'import json,sys
f=json.load(open(sys.argv[1])); n=int(sys.argv[2]); rec=sys.argv[3]
pct=f["cpu_seconds"]/f["seconds"]*100/n
ratio="" if rec=="nan" else " (%.1f x)" % (float(rec)/n/pct)
print("%.3f%s" % (pct, ratio))' "$dir/floor.out" "$N" "$cpu" 2>/dev/null || echo "?")
    fi
    echo "| $N | $(per "$cpu") | $floor | $pubcpu | $(per "$hwm") ($hwm) | $(per "$rss") ($rss) | $drift | $bytes | $written / $received | $lost | $behind | $((rcv1 - rcv0)) | ${sockets:-?} | $clean / $files of $N (summaries: $nsum) |"
    if [ -n "$PERF" ]; then
        [ -n "$perf_pid" ] && { wait "$perf_pid" || true; }
        # Leaf symbols of SRTP decryption: webrtc-rs's SRTP and crypto crates, AES-CTR/GCM and
        # HMAC-SHA1 (DTLS's share of them is its handshake and the data channel: negligible).
        perf script -i "$dir/perf.data" -F ip,sym 2>/dev/null | awk -v n="$N" -v plog="$dir/perf.log" '
            NF { total++; if ($0 ~ /rtc_srtp|rtc_crypto|sha1|aes|ctr::|hmac|ghash|polyval|generate_counter/) srtp++
                 if ($0 ~ /copy_folio_from_iter/) pagecache++ }
            END { if (srtp) printf "# N=%s perf: %d samples of the recorder, %d (%.1f %%) SRTP decryption: %.2f samples per SRTP sample; %.1f %% copying file writes into the page cache\n", n, total, srtp, 100*srtp/total, total/srtp, 100*pagecache/total
                  else print "# N=" n " perf: no samples (is perf installed and allowed? see " plog ")" }'
    fi
    if awk -v p="$pubcpu" -v c="$CORES" -v s="$SATURATION" 'BEGIN{exit !(p != "nan" && p > c*s)}'; then
        echo "# N=$N: the publishers used $pubcpu % of one core (> $SATURATION % of $CORES cores): machine saturated, stopping here"
        break
    fi
done
