# shellcheck shell=bash disable=SC2034  # variables for the scripts that source this
# Common definitions for the ftpgate lab scripts. Sourced, not run.
#
# Topology of lab NAME (three network namespaces, documentation addresses):
#
#   NAME-c  eth0 192.0.2.10/24  (default via 192.0.2.1)
#     |
#   NAME-g  gw-c 192.0.2.1/24   gw-s 198.51.100.1/24   (router + ftpgate)
#     |
#   NAME-s  eth0 198.51.100.10/24 (default via 198.51.100.1)  vsftpd :21

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${FTPGATE_LAB_CACHE:-$LAB_DIR/.cache}
LAB_RUN_BASE=${FTPGATE_LAB_RUN:-/tmp/ftpgate-lab}

CLIENT_IP=192.0.2.10
GW_CLIENT_IP=192.0.2.1
GW_SERVER_IP=198.51.100.1
SERVER_IP=198.51.100.10
GW_PORT=2121
GW_CLIENT_IF=gw-c
GW_SERVER_IF=gw-s

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

ns_exists() { [ -e "/run/netns/$1" ]; }

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

# pid_alive PID: true when PID is running
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# stop_pidfile FILE [TIMEOUT_TENTHS]: TERM the PID recorded in FILE (only
# that one, a process this lab started), wait a bounded time, then KILL.
stop_pidfile() {
    local f=$1 tenths=${2:-50} pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < tenths; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "pid $pid ($f) ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
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
