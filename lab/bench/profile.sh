#!/usr/bin/env bash
# lab/bench/profile.sh: where ftpgate's time goes in relay mode (issue 14).
#
# Brings up one lab (lab/netns.sh, documentation addresses, vsftpd, the
# lab's nft rules), then for each --workers value (1 and the default):
#   - syscall and wakeup counts (perf stat on syscall tracepoints, exact,
#     cheap) during one large passive download, during a small-files run,
#     and during the NOOP-while-downloading workload;
#   - a call-graph profile (perf record -g) of one large passive download,
#     printed as the top symbols (kernel and ftpgate, self time).
# Writes the figures to OUT (default /dev/shm/ftpgate-profile/out): *.stat
# (perf stat CSV), *.top (perf report), summary.txt. The raw perf.data
# files stay in OUT too (large; not meant for the repository).
#
# Needs root, a built target/release/ftpgate (it runs cargo build
# --release), perf. Touches only the namespaces it creates; removes them
# (and stops what it started, by PID) on exit. Every step is bounded.
#
#   lab/bench/profile.sh [--size MiB (1024)] [--small N (500)] [--workers "1 0"] [--out DIR]
#   (--workers 0 means the default: one loop per core)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NETNS=$REPO/lab/netns.sh
BIN=$REPO/target/release/ftpgate
PY=$(command -v python3)
SIZE_MIB=1024
SMALL=500
WORKERS="1 0"
OUT=/dev/shm/ftpgate-profile/out
while [ $# -gt 0 ]; do
    case $1 in
    --size) SIZE_MIB=$2; shift 2 ;;
    --small) SMALL=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--size MiB] [--small N] [--workers \"1 0\"] [--out DIR]" >&2; exit 2 ;;
    esac
done
read -ra WORKER_LIST <<<"$WORKERS"
[ "$(id -u)" = 0 ] || { echo "profile.sh: needs root" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile.sh: needs perf" >&2; exit 1; }

export FTPGATE_LAB_OWNER=$$ FTPGATE_BIN=$BIN FTPGATE_LAB_RUN=/dev/shm/ftpgate-profile
export FTPGATE_LAB_CACHE=${FTPGATE_LAB_CACHE:-$REPO/lab/.cache}
LAB=prof-$$
PERF_PID=""

cleanup() {
    # only what this script started: the perf it may still run, then the
    # lab (netns.sh down stops the gateway and vsftpd by their pidfiles)
    if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; fi
    timeout 120 "$NETNS" down "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

(cd "$REPO" && timeout 900 cargo build --release -q)
mkdir -p "$OUT"
timeout 180 "$NETNS" up "$LAB" nft >/dev/null
RUN=$("$NETNS" rundir "$LAB")
timeout 300 "$NETNS" vsftpd "$LAB" >/dev/null
PUB=$RUN/ftproot/pub
truncate -s "${SIZE_MIB}M" "$PUB/big.bin"   # sparse: tmpfs serves zeros
mkdir -p "$PUB/small"
head -c 4096 /dev/urandom >"$RUN/block"
for i in $(seq 0 $((SMALL - 1))); do cp "$RUN/block" "$PUB/small/$(printf 'f%04d' "$i")"; done
chmod -R a+rX "$PUB"

client() { timeout 300 "$NETNS" exec "$LAB" c "$PY" "$HERE/client.py" "$@"; }
gateway_pid() { (. "$REPO/lab/lib.sh"; pidfile_pid "$RUN/ftpgate.pid"); }

EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_splice,syscalls:sys_enter_epoll_wait
EVENTS=$EVENTS,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_setsockopt,syscalls:sys_enter_accept4
EVENTS=$EVENTS,syscalls:sys_enter_socket,syscalls:sys_enter_bind,syscalls:sys_enter_listen
EVENTS=$EVENTS,syscalls:sys_enter_connect,syscalls:sys_enter_close,syscalls:sys_enter_pipe2
EVENTS=$EVENTS,syscalls:sys_enter_fcntl,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto
EVENTS=$EVENTS,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_shutdown
EVENTS=$EVENTS,syscalls:sys_enter_getsockopt,syscalls:sys_enter_getsockname,task-clock,context-switches

# stat NAME CLIENT-ARGS...: the client's JSON line, and perf stat's
# counts for the gateway's threads while it ran, to OUT/NAME.{json,stat}
stat() {
    local name=$1 pid
    shift
    pid=$(gateway_pid)
    perf stat -x, -o "$OUT/$name.stat" -e "$EVENTS" -p "$pid" &
    PERF_PID=$!
    sleep 0.5
    client "$@" | tail -1 >"$OUT/$name.json"
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
}

record() {
    local name=$1 pid
    shift
    pid=$(gateway_pid)
    perf record -q -g -o "$OUT/$name.data" -p "$pid" 2>/dev/null &
    PERF_PID=$!
    sleep 0.5
    client "$@" | tail -1 >"$OUT/$name.json"
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
    perf report -i "$OUT/$name.data" --stdio --no-children --sort sym -g none --percent-limit 1 2>/dev/null \
        | grep -v '^$' | head -60 >"$OUT/$name.top"
    perf report -i "$OUT/$name.data" --stdio --children --sort sym -g none --percent-limit 5 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 >"$OUT/$name.children"
    perf report -i "$OUT/$name.data" --stdio --no-children --sort dso -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -8 >"$OUT/$name.dso"
}

for w in "${WORKER_LIST[@]}"; do
    tag=w$w
    args=(--listen 0.0.0.0:2121 --session-rate-per-client 0)
    [ "$w" = 0 ] && tag=wdefault || args+=(--workers "$w")
    timeout 30 "$NETNS" stop-gateway "$LAB" >/dev/null 2>&1 || true
    timeout 60 "$NETNS" gateway "$LAB" "$BIN" "${args[@]}" >/dev/null
    sleep 0.5
    client bulk --dir get --mode pasv --path /pub/big.bin --max-seconds 120 >/dev/null # warm-up
    stat "$tag-get" bulk --dir get --mode pasv --path /pub/big.bin --max-seconds 120
    record "$tag-get-perf" bulk --dir get --mode pasv --path /pub/big.bin --max-seconds 120
    stat "$tag-small" small --count "$SMALL" --max-seconds 30
    stat "$tag-noop" noop --path /pub/big.bin --interval-ms 2 --min-seconds 3 --max-seconds 120
done

# the summary: per GiB for the downloads, per file for small files
"$PY" - "$OUT" "$SIZE_MIB" "${WORKER_LIST[@]}" >"$OUT/summary.txt" <<'EOF'
import json, os, sys
out, size_mib, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def stat(name):
    d = {}
    for ln in open(os.path.join(out, name + ".stat")):
        f = ln.strip().split(",")
        if len(f) > 2 and f[0] and f[0][0].isdigit():
            # raw_syscalls:sys_enter -> syscalls, syscalls:sys_enter_splice -> splice
            name = f[2].replace("raw_syscalls:sys_enter", "syscalls").split(":")[-1]
            d[name.replace("sys_enter_", "")] = float(f[0])
    return d
for w in workers:
    tag = "w%s" % w if w != "0" else "wdefault"
    print("== --workers %s" % (w if w != "0" else "default"))
    g, gj = stat(tag + "-get"), json.load(open(os.path.join(out, tag + "-get.json")))
    gib = gj["bytes"] / 2**30
    print("download %.0f MiB/s, reply %s" % (gj["bytes"] / gj["seconds"] / 2**20, gj["final"]))
    print("  per GiB: CPU %.3f s, syscalls %.0f, splice %.0f, epoll_wait %.0f, context switches %.0f"
          % (g["task-clock"] / 1000 / gib, g["syscalls"] / gib, g["splice"] / gib, g["epoll_wait"] / gib,
             g["context-switches"] / gib))
    print("  bytes per splice %.0f, per epoll_wait %.0f" % (gj["bytes"] / max(g["splice"], 1),
                                                          gj["bytes"] / max(g["epoll_wait"], 1)))
    s, sj = stat(tag + "-small"), json.load(open(os.path.join(out, tag + "-small.json")))
    n = max(sj["files"], 1)
    print("small files %d in %.2f s = %.0f files/s, reply %s" % (sj["files"], sj["seconds"], sj["files"] / sj["seconds"], sj["final"]))
    print("  per file: CPU %.3f ms, syscalls %.1f" % (s["task-clock"] / n, s["syscalls"] / n))
    print("   " + ", ".join("%s %.2f" % (k, v / n) for k, v in sorted(s.items(), key=lambda kv: -kv[1])
                           if k not in ("task-clock", "syscalls") and v))
    nn, nj = stat(tag + "-noop"), json.load(open(os.path.join(out, tag + "-noop.json")))
    print("noop during download: p50 %.2f ms, p99 %.2f ms, max %.2f ms, n %d; epoll_wait %.0f, splice %.0f"
          % (nj["p50_ms"], nj["p99_ms"], nj["max_ms"], nj["n"], nn["epoll_wait"], nn["splice"]))
    print("top symbols (self, download):")
    for ln in open(os.path.join(out, tag + "-get-perf.top")):
        if not ln.startswith("#"):
            print("  " + ln.rstrip())
    print("inclusive (children, download), >= 5%:")
    for ln in open(os.path.join(out, tag + "-get-perf.children")):
        print("  " + ln.rstrip())
    print("by object:")
    for ln in open(os.path.join(out, tag + "-get-perf.dso")):
        print("  " + ln.rstrip())
    print()
EOF
cat "$OUT/summary.txt"
