# shellcheck shell=bash disable=SC2034  # variables for the scripts that source this
# Common definitions for the ftpgate lab scripts. Sourced, not run.
#
# Topology of lab NAME (three network namespaces, documentation addresses,
# dual-stack):
#
#   NAME-n  eth0 192.0.2.77/32    2001:db8:1::77/128 (only after `netns.sh
#     |     narrow`: a client behind NAME-c over a narrow link, narrow0)
#   NAME-c  eth0 192.0.2.10/24    2001:db8:1::10/64  (default via .1 / ::1)
#     |
#   NAME-g  gw-c 192.0.2.1/24     2001:db8:1::1/64   (router + ftpgate)
#           gw-s 198.51.100.1/24  2001:db8:2::1/64
#     |
#   NAME-s  eth0 198.51.100.10/24 2001:db8:2::10/64  (default via .1 / ::1)
#           FTP server :21, both families

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${FTPGATE_LAB_CACHE:-$LAB_DIR/.cache}
LAB_RUN_BASE=${FTPGATE_LAB_RUN:-/tmp/ftpgate-lab}

CLIENT_IP=192.0.2.10
GW_CLIENT_IP=192.0.2.1
GW_SERVER_IP=198.51.100.1
SERVER_IP=198.51.100.10
CLIENT_IP6=2001:db8:1::10
GW_CLIENT_IP6=2001:db8:1::1
GW_SERVER_IP6=2001:db8:2::1
SERVER_IP6=2001:db8:2::10
CLIENT_NET=192.0.2.0/24
SERVER_NET=198.51.100.0/24
CLIENT_NET6=2001:db8:1::/64
# `netns.sh narrow`: a host in NAME-n, behind the client namespace acting
# as a router whose link to it is narrower than the rest of the path
NARROW_IP=192.0.2.77
NARROW_IP6=2001:db8:1::77
SERVER_NET6=2001:db8:2::/64
GW_PORT=2121
GW_CLIENT_IF=gw-c
GW_SERVER_IF=gw-s

# Where the FTP servers other than vsftpd are unpacked (servers.sh fetches
# them, host.sh runs them)
server_root() { echo "$LAB_CACHE/$1/root"; }
server_bin() {
    case "$1" in
    proftpd) echo "$(server_root proftpd)/usr/sbin/proftpd" ;;
    pure-ftpd) echo "$(server_root pure-ftpd)/usr/sbin/pure-ftpd" ;;
    esac
}

server_libpath() {
    local root d out=""
    root=$(server_root "$1")
    for d in "$root"/lib/x86_64-linux-gnu "$root"/usr/lib/x86_64-linux-gnu \
             "$root"/lib/*-linux-gnu* "$root"/usr/lib/*-linux-gnu*; do
        [ -d "$d" ] && out="$out${out:+:}$d"
    done
    echo "$out"
}

# The ftpgate binary whose `rules` output the lab installs (lab/test and
# the test harness build it first; the harness passes its own path).
FTPGATE_BIN=${FTPGATE_BIN:-$LAB_DIR/../target/debug/ftpgate}

die() { echo "lab: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root: run as root or via lab/test"
}

# check_name NAME: namespace-safe lab name (also used in paths).
check_name() {
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$ ]] || die "bad lab name '$1'"
}

run_dir() { echo "$LAB_RUN_BASE/$1"; }
ns_c() { echo "$1-c"; }
ns_g() { echo "$1-g"; }
ns_s() { echo "$1-s"; }
ns_n() { echo "$1-n"; }

ns_exists() { [ -e "/run/netns/$1" ]; }

# stop_ns_procs NS [TENTHS]: ends what still runs inside namespace NS
# before it is deleted: the daemons' pidfiles cover the daemons, not what
# they forked (a vsftpd session whose client vanished with a failed
# gateway waits out its 300 s timeouts, and outlives the namespace).
# Everything in a lab namespace is the lab's, and so is what it forked,
# even in a namespace of its own (vsftpd's isolate_network): SIGTERM by
# PID, then SIGKILL after TENTHS tenths of a second (default 20).
stop_ns_procs() {
    local ns=$1 tenths=${2:-20} pids i
    ns_exists "$ns" || return 0
    read -ra pids <<<"$(ns_procs "$ns")"
    [ "${#pids[@]}" -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < tenths; i++)); do
        read -ra pids <<<"$(alive "${pids[@]}")"
        [ "${#pids[@]}" -gt 0 ] || return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null
    return 0
}

# ns_procs NS: the PIDs in namespace NS and all their descendants, on one
# line
ns_procs() {
    ip netns pids "$1" 2>/dev/null | awk -v table="$(ps -e -o pid=,ppid= 2>/dev/null)" '
        BEGIN { n = split(table, f, " "); for (i = 1; i < n; i += 2) kids[f[i + 1]] = kids[f[i + 1]] " " f[i] }
        { todo[$1] = 1 }
        END {
            while (length(todo) > 0) {
                for (p in todo) { delete todo[p]; if (p in seen) continue; seen[p] = 1
                    m = split(kids[p], c, " "); for (j = 1; j <= m; j++) todo[c[j]] = 1 }
            }
            for (p in seen) printf "%s ", p
        }'
}

# alive PID...: those of the PIDs that still run (not zombies), on one line
alive() {
    local p st
    for p in "$@"; do
        st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || continue
        [ -n "$st" ] && [ "$st" != Z ] && printf '%s ' "$p"
    done
}

# write a /proc/sys value inside a namespace (no dependency on sysctl(8))
ns_sysctl() {
    local ns=$1 key=$2 val=$3
    ip netns exec "$ns" sh -c "echo $val > /proc/sys/${key//.//}"
}

# use_cargo_home: put $CARGO_HOME/bin (default ~/.cargo/bin, where rustup's
# installer puts the toolchain proxies) first in PATH when it holds cargo,
# so a toolchain lab/deps.sh installed there wins over an older one of the
# distribution in /usr/bin, also when the caller's PATH lacks it.
use_cargo_home() {
    local bin=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
    [ -x "$bin/cargo" ] || return 0
    case "$PATH" in "$bin" | "$bin":*) ;; *) PATH=$bin:$PATH ;; esac
    export PATH
}

# pkg_installed PKG: the Debian package PKG is installed.
# (not `dpkg -s | grep -q`: grep's early exit can kill dpkg with SIGPIPE,
# which pipefail turns into "not installed")
pkg_installed() {
    case "$(dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null)" in
    *"install ok installed"*) return 0 ;;
    *) return 1 ;;
    esac
}

# apt_knows PKG: the package lists offer PKG (a real package, not only a
# name that other packages provide)
apt_knows() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# pid_alive PID: true when PID is running (any process: for a PID the lab
# recorded, use pidfile_pid)
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# -- pidfiles ------------------------------------------------------------------
# Every process the lab starts has a pidfile in the run directory, written
# by pidfile_write and read by pidfile_pid. One line:
#
#   PID START BOOT_ID CMD
#
#   START    field 22 of /proc/PID/stat: when the process started, in clock
#            ticks after boot (kept across exec)
#   BOOT_ID  /proc/sys/kernel/random/boot_id when the file was written
#   CMD      absolute path of the program the lab started, or "-" (only
#            START and BOOT_ID are checked; for an owner, which may be a
#            rebuilt test binary); rest of the line, may hold spaces
#
# A PID is signalled only while START, BOOT_ID and CMD all still match, so
# a PID reused by another process, after a reboot or not, is never
# signalled. A file holding a bare PID (the format before) cannot be
# verified: stop_pidfile removes it without signalling and says so.

boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null || true; }

# proc_start PID: field 22 of /proc/PID/stat; nothing when PID is gone
proc_start() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # field 2, the command name in parentheses, may hold spaces and ')'
    read -ra fields <<<"${stat##*) }"
    echo "${fields[19]:-}"   # fields[0] is field 3
}

# proc_runs PID CMD: PID executes the file CMD, or has CMD as an argument
# (an interpreted program: python3 /path/ftpalg.py). A zombie runs nothing.
proc_runs() {
    local pid=$1 want=$2 arg
    [ "$want" = - ] && return 0
    [ "/proc/$pid/exe" -ef "$want" ] && return 0
    [ -r "/proc/$pid/cmdline" ] || return 1
    while IFS= read -r -d '' arg; do
        [ "$arg" = "$want" ] && return 0
    done 2>/dev/null <"/proc/$pid/cmdline"
    return 1
}

# pidfile_write FILE PID [CMD]: record PID, the process that runs CMD
# (default "-", see above). Nothing is written when PID has exited already.
pidfile_write() {
    local f=$1 pid=$2 cmd=${3:--} start
    [[ "$pid" =~ ^[0-9]+$ ]] || die "pidfile_write $f: '$pid' is no PID"
    if [ "$cmd" != - ]; then
        [ -e "$cmd" ] || die "pidfile_write $f: no program '$cmd'"
        cmd=$(readlink -f "$cmd")
    fi
    start=$(proc_start "$pid")
    if [ -z "$start" ]; then
        log "pid $pid ($cmd) exited before its pidfile $f was written"
        return 0
    fi
    printf '%s %s %s %s\n' "$pid" "$start" "$(boot_id)" "$cmd" >"$f.tmp"
    mv -f "$f.tmp" "$f"
}

# pidfile_pid FILE: print the PID in FILE if that process still runs, i.e.
# PID, START, BOOT_ID and CMD all match (status 0). Status 1: no FILE, or
# its process is gone (exited, or the PID is another process now). Status
# 2: FILE cannot be verified (a bare PID from before, or garbage).
pidfile_pid() {
    local f=$1 pid="" start="" boot="" cmd=""
    [ -f "$f" ] || return 1
    read -r pid start boot cmd <"$f" || [ -n "$pid" ] || return 2
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$start" =~ ^[0-9]+$ ]] && [ -n "$boot" ] && [ -n "$cmd" ] || return 2
    [ "$boot" = "$(boot_id)" ] || return 1
    [ "$(proc_start "$pid")" = "$start" ] || return 1
    proc_runs "$pid" "$cmd" || return 1
    echo "$pid"
}

# stop_pidfile FILE [TIMEOUT_TENTHS]: SIGTERM the process FILE records if
# it is still the one the lab started (pidfile_pid), wait a bounded time,
# then SIGKILL it; remove FILE. Status 1 when SIGKILL was needed.
stop_pidfile() {
    local f=$1 tenths=${2:-50} pid st=0 i
    [ -e "$f" ] || return 0
    pid=$(pidfile_pid "$f") || st=$?
    case $st in
    0)
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < tenths; i++)); do
            pidfile_pid "$f" >/dev/null || break
            sleep 0.1
        done
        if pidfile_pid "$f" >/dev/null; then
            log "pid $pid ($f) ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do pidfile_pid "$f" >/dev/null || break; sleep 0.1; done
            st=1
        fi
        ;;
    1) st=0 ;;   # gone already
    *)
        log "$f holds no start time ('$(head -c 60 "$f" | tr -d '\n')'): cannot tell whether that PID is still the process the lab started, so it is not signalled; removing the file"
        st=0
        ;;
    esac
    rm -f "$f"
    return "$st"
}

# wait_tcp_listen NS PORT [ADDR] [TENTHS]: bounded wait for a TCP listener.
wait_tcp_listen() {
    local ns=$1 port=$2 addr=${3:-} tenths=${4:-100} i
    for ((i = 0; i < tenths; i++)); do
        if ip netns exec "$ns" ss -Hltn "sport = :$port" 2>/dev/null | grep -q "${addr}:$port"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
