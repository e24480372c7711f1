#!/usr/bin/env bash
# Load benchmark of the recorder (issue 6; results and method in docs/loadbench.md).
#
#   scripts/loadbench.sh [N ...]          # default: 1 8 32 64 100
#
# For each N, on loopback: starts `ninjarec serve`, then N test publishers of a 2 Mb/s 720p30 clip
# in ONE separate process (examples/testsrc.rs), then `ninjarec` recording the room as its own
# process. Only the recorder is measured: /proc/PID/stat (utime+stime) and /proc/PID/status
# (VmRSS, VmHWM) once a second. CPU and steady RSS are taken over the window after WARMUP seconds
# (connection setup excluded); peak RSS is VmHWM at the end. The publishers' CPU is sampled too:
# when they use more than SATURATION % of the machine the run says so and larger N are skipped,
# because a starved publisher process, not the recorder, would then set the numbers.
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
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-10}
OUT=${OUT:-target/loadbench}
CLIP=${CLIP:-assets/loadbench-720p.ts}
SATURATION=${SATURATION:-85}
BASE_PORT=${BASE_PORT:-21000}
NS=("$@")
[ ${#NS[@]} -eq 0 ] && NS=(1 8 32 64 100)

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --locked --bin ninjarec --example testsrc
fi
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/ninjarec
PUB=$TARGET/release/examples/testsrc
REC=${REC_BIN:-$BIN}
CLK_TCK=$(getconf CLK_TCK)
CORES=$(nproc)

# Total CPU ticks (utime + stime, all threads) of a process; empty once it is gone.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || true; }
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
echo "# recorder $REC, clip $CLIP, warmup ${WARMUP}s, measured ${DURATION}s"
echo "| N | recorder CPU % of a core per stream | publishers CPU % of a core | peak RSS MiB/stream (total) | steady RSS MiB/stream (total) | RSS drift over window MiB | MB written | frames written / received | packets lost | dropped by recorder | UDP RcvbufErrors | files ffmpeg-clean |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"

for N in "${NS[@]}"; do
    dir=$OUT/n$N
    rm -rf "$dir"
    mkdir -p "$dir/rec"
    port=$((BASE_PORT + N))
    streams=$(seq -s, -f 's%g' 1 "$N")

    "$BIN" serve -q --listen "127.0.0.1:$port" --max-clients-per-ip $((N + 8)) --max-room-members $((N + 8)) >"$dir/serve.log" 2>&1 &
    serve_pid=$!
    wait_port "$port"
    "$PUB" --server "ws://127.0.0.1:$port" --dialect official --room bench --streams "$streams" \
        --clip "$CLIP" --password false --mode media-first --udp 127.0.0.1:0 \
        --duration $((WARMUP + DURATION + 120)) >"$dir/pub.out" 2>"$dir/pub.err" &
    pub_pid=$!
    sleep $((2 + N / 20))
    rcv0=$(rcvbuf_errors)

    "$REC" -q --room bench --record-room --server "ws://127.0.0.1:$port" --dialect official \
        --password false --udp-bind 127.0.0.1:0 --stun none --output-dir "$dir/rec" \
        --max-streams "$N" --duration $((WARMUP + DURATION)) >"$dir/rec.out" 2>"$dir/rec.err" &
    rec_pid=$!
    t0=$(date +%s.%N)
    # t, recorder ticks, VmRSS KiB, VmHWM KiB, publisher ticks
    while kill -0 "$rec_pid" 2>/dev/null; do
        r=$(ticks "$rec_pid")
        [ -z "$r" ] && break
        echo "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') $r $(mem "$rec_pid") $(ticks "$pub_pid")" >>"$dir/samples"
        sleep 1
    done
    wait "$rec_pid" || echo "recorder exited with $?" >&2
    rcv1=$(rcvbuf_errors)
    kill -INT "$pub_pid" 2>/dev/null || true
    wait "$pub_pid" || true
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" || true

    # Steady window: samples between WARMUP and WARMUP+DURATION.
    read -r cpu pubcpu rss drift hwm < <(awk -v w0="$WARMUP" -v w1=$((WARMUP + DURATION)) -v hz="$CLK_TCK" '
        $5 != "" { if ($1 >= w0 && $1 <= w1) { if (!n) { t0=$1; c0=$2; p0=$5; r0=$3 } t1=$1; c1=$2; p1=$5; r1=$3; rs+=$3; n++ } }
        { h=$4 }
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
    echo "| $N | $(per "$cpu") | $pubcpu | $(per "$hwm") ($hwm) | $(per "$rss") ($rss) | $drift | $bytes | $written / $received | $lost | $behind | $((rcv1 - rcv0)) | $clean / $files of $N (summaries: $nsum) |"
    if awk -v p="$pubcpu" -v c="$CORES" -v s="$SATURATION" 'BEGIN{exit !(p != "nan" && p > c*s)}'; then
        echo "# N=$N: the publishers used $pubcpu % of one core (> $SATURATION % of $CORES cores): machine saturated, stopping here"
        break
    fi
done
