#!/usr/bin/env bash
# ftpgate lab: three network namespaces (client, gateway, server) with
# documentation addresses only, IPv4 and IPv6, vsftpd in the server
# namespace, and the TPROXY rule set `ftpgate rules` prints in the gateway
# namespace. Never touches the root namespace's routes or firewall. Needs
# root, and a built ftpgate ($FTPGATE_BIN, default target/debug/ftpgate).
# Each host's set-up and daemons are lab/host.sh's, run inside
# `ip netns exec` (the Vagrant VMs run the same script).
#
# Usage:
#   netns.sh up NAME [nft|iptables|none]   create lab NAME (default: nft rules)
#   netns.sh down NAME                     stop what the lab started, remove it
#   netns.sh rules NAME add|del nft|iptables   (from `$FTPGATE_BIN rules`;
#                                          default target/debug/ftpgate)
#   netns.sh vsftpd NAME [KEY=VALUE]...    start vsftpd in NAME-s (foreground
#                                          process, PID in the run dir)
#   netns.sh gateway NAME BIN [ARGS...]    start BIN in NAME-g, stderr to
#                                          RUN/ftpgate.log (default args:
#                                          --listen 0.0.0.0:2121 --log-level info)
#   netns.sh stop-gateway NAME             SIGTERM the gateway, wait (10 s),
#                                          then SIGKILL it and fail
#   netns.sh record-pid NAME WHAT PID CMD  write RUN/WHAT.pid for PID, which
#                                          runs the program CMD (lib.sh)
#   netns.sh fetch-vsftpd                  fetch + unpack vsftpd into lab/.cache
#   netns.sh narrow NAME [MTU]             add NAME-n: a client host (192.0.2.77,
#                                          2001:db8:1::77) behind NAME-c, which
#                                          routes for it over a link of MTU
#                                          bytes (default 1280) on its own side:
#                                          the host announces a full MSS, so
#                                          only path MTU discovery (ICMP) can
#                                          find the limit
#   netns.sh exec NAME c|g|s|n CMD...      run CMD in one of the namespaces
#   netns.sh rundir NAME                   print the lab's run directory
#   netns.sh list                          labs with a run directory
#   netns.sh gc                            tear down labs whose owner process
#                                          (FTPGATE_LAB_OWNER at `up`; labs
#                                          made without it are left alone)
#                                          has exited
#
# Run directory (RUN = /tmp/ftpgate-lab/NAME, or $FTPGATE_LAB_RUN/NAME):
#   *.pid (format: lab/lib.sh, "pidfiles"; `down` signals a PID only while
#   it is still the process the lab started), owner, vsftpd.conf,
#   vsftpd.log, xferlog, ftpgate.log, ftproot/pub (downloads), ftproot/upload (uploads, owned by 'ftp'),
#   routing.sh and rules-add.nft (or rules-*-iptables.sh): what was installed.
set -Eeuo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VSFTPD_ROOT=$LAB_CACHE/vsftpd/root
VSFTPD_BIN=$VSFTPD_ROOT/usr/sbin/vsftpd

# -- vsftpd from Debian's package, unpacked (never installed: its maintainer
#    scripts would start a system-wide daemon) --------------------------------
fetch_vsftpd() {
    if [ -x "$VSFTPD_BIN" ] && [ -f "$LAB_CACHE/vsftpd/.complete" ]; then return 0; fi
    command -v apt-get >/dev/null || die "apt-get missing: cannot fetch vsftpd"
    mkdir -p "$LAB_CACHE/vsftpd"
    (
        flock -w 300 9 || die "timeout waiting for vsftpd fetch lock"
        [ -f "$LAB_CACHE/vsftpd/.complete" ] && exit 0
        local dl=$LAB_CACHE/vsftpd/debs
        rm -rf "$dl" "$VSFTPD_ROOT"; mkdir -p "$dl" "$VSFTPD_ROOT"
        # libwrap0 is a dependency the base system usually lacks; unpack it too
        local pkgs=(vsftpd libwrap0)
        if ! (cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}" >&2); then
            log "apt-get download failed; running apt-get update once"
            apt-get -q update >&2
            (cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}" >&2)
        fi
        local deb
        for deb in "$dl"/*.deb; do dpkg -x "$deb" "$VSFTPD_ROOT"; done
        [ -x "$VSFTPD_BIN" ] || die "vsftpd binary not found after unpacking"
        touch "$LAB_CACHE/vsftpd/.complete"
    ) 9>"$LAB_CACHE/vsftpd.lock"
}

# host NS ROLE|CMD ARGS...: lab/host.sh inside namespace NS: the per-host
# set-up and daemons are the same functions a real machine runs
# (lab/Vagrantfile, lab/scenario in machines mode)
host() {
    local ns=$1
    shift
    ip netns exec "$ns" bash "$LAB_DIR/host.sh" "$@"
}

# -- rules -------------------------------------------------------------------
# What `ftpgate rules` prints (host.sh), installed in NAME-g; the generated
# files stay in the run directory (rules-add.nft, routing.sh, ...)
rules() {
    local name=$1 op=$2 form=$3
    case "$op" in add | del) ;; *) die "rules: add or del (got '$op')" ;; esac
    host "$(ns_g "$name")" rules "$op" "$form" "$GW_CLIENT_IF" "$(run_dir "$name")"
}

# -- up / down ---------------------------------------------------------------
up() {
    local name=$1 form=${2:-nft} c g s run
    c=$(ns_c "$name"); g=$(ns_g "$name"); s=$(ns_s "$name"); run=$(run_dir "$name")
    case "$form" in nft | iptables | none) ;; *) die "bad rule form '$form'" ;; esac
    if ns_exists "$c" || ns_exists "$g" || ns_exists "$s"; then
        die "lab '$name' already exists (run: $0 down $name)"
    fi
    mkdir -p "$LAB_RUN_BASE"; chmod 755 "$LAB_RUN_BASE"
    rm -rf "$run"; mkdir -p "$run"; chmod 755 "$run"
    echo "$form" >"$run/form"
    # owner: the process that holds the lab (tests: the test binary, demo:
    # its shell); `gc` removes labs whose owner is gone (a killed test run).
    # Labs made by hand (no FTPGATE_LAB_OWNER) are never collected.
    # The owner file is a pidfile without a command (lib.sh): a rebuilt test
    # binary still owns its lab.
    if [ -n "${FTPGATE_LAB_OWNER:-}" ]; then pidfile_write "$run/owner" "$FTPGATE_LAB_OWNER"; fi
    # from here on, a failure tears down what was built
    trap 'log "up failed; tearing down $name"; down "$name"' ERR

    ip netns add "$c"; ip netns add "$g"; ip netns add "$s"
    local ns
    for ns in "$c" "$g" "$s"; do ip -n "$ns" link set lo up; done
    # veth pairs created directly inside the namespaces
    ip -n "$c" link add eth0 type veth peer name "$GW_CLIENT_IF" netns "$g"
    ip -n "$s" link add eth0 type veth peer name "$GW_SERVER_IF" netns "$g"

    # each host's addresses, routes and (gateway) `ftpgate rules` output,
    # (server) files: lab/host.sh, as on real machines
    host "$c" client eth0 default
    host "$s" server eth0 default "$run"
    host "$g" gateway "$GW_CLIENT_IF" "$GW_SERVER_IF" "$run" "$form"
    trap - ERR
    log "lab '$name' up (rules: $form, run dir: $run)"
}

down() {
    local name=$1 run ns f
    run=$(run_dir "$name")
    if [ -d "$run" ]; then
        # every process this lab started has a pidfile here
        for f in "$run"/*.pid; do
            if [ -e "$f" ]; then stop_pidfile "$f" 50 || true; fi
        done
    fi
    for ns in "$(ns_n "$name")" "$(ns_c "$name")" "$(ns_g "$name")" "$(ns_s "$name")"; do
        stop_ns_procs "$ns"
        if ns_exists "$ns"; then ip netns del "$ns" || log "could not delete netns $ns"; fi
    done
    if [ -d "$run" ] && [ "${FTPGATE_LAB_KEEP:-0}" != 1 ]; then rm -rf "$run"; fi
    return 0
}

# -- daemons -----------------------------------------------------------------
start_vsftpd() {
    local name=$1 s
    shift
    s=$(ns_s "$name")
    ns_exists "$s" || die "lab '$name' is not up"
    fetch_vsftpd
    host "$s" vsftpd "$(run_dir "$name")" "$@"
}

start_gateway() {
    local name=$1 bin=$2 g
    shift 2
    g=$(ns_g "$name")
    ns_exists "$g" || die "lab '$name' is not up"
    host "$g" ftpgate "$(run_dir "$name")" "$bin" "$@"
}

stop_gateway() {
    local name=$1 run
    run=$(run_dir "$name")
    [ -f "$run/ftpgate.pid" ] || { log "no gateway running"; return 0; }
    # the gateway is a child of a previous shell: wait(1) can't reap it or
    # tell its exit status; stop_pidfile polls until it is gone
    stop_pidfile "$run/ftpgate.pid" 100 && return 0
    log "gateway still ran 10 s after SIGTERM: killed"
    return 1
}

# record_pid NAME WHAT PID CMD: write RUN/WHAT.pid for a process that
# another program started in the lab (the test harness's gateway), so that
# `down` and `gc` stop it the same way
record_pid() {
    local name=$1 what=$2 pid=$3 cmd=$4
    [[ "$what" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad pidfile name '$what'"
    [ -d "$(run_dir "$name")" ] || die "lab '$name' is not up"
    pidfile_write "$(run_dir "$name")/$what.pid" "$pid" "$cmd"
}

# gc: tear down labs whose owner process no longer exists
gc() {
    local d name owner st
    [ -d "$LAB_RUN_BASE" ] || return 0
    for d in "$LAB_RUN_BASE"/*/; do
        [ -d "$d" ] || continue
        name=$(basename "$d")
        [ -f "$d/owner" ] || continue
        st=0; pidfile_pid "$d/owner" >/dev/null || st=$?
        if [ "$st" = 2 ]; then
            # a bare PID (written before pidfiles had a start time): a dead
            # PID is surely gone; a live one may be reused, keep the lab
            owner=$(head -c 20 "$d/owner")
            pid_alive "$owner" && continue
            st=1
        fi
        if [ "$st" = 1 ]; then
            log "removing stale lab '$name' (owner $(cut -d' ' -f1 "$d/owner") gone)"
            down "$name"
            rm -rf "$d"
        fi
    done
}

# narrow NAME MTU: a client host behind a narrow link (see the usage). Its
# router is the client namespace, which forwards for it and sends the
# ICMP "fragmentation needed" / "packet too big" errors toward the server's
# address, that is through the gateway: the error is about a flow that
# ftpgate terminates (relay) or a pinhole the kernel forwards.
narrow() {
    local name=$1 mtu=$2 c g n
    c=$(ns_c "$name"); g=$(ns_g "$name"); n=$(ns_n "$name")
    ns_exists "$c" || die "lab '$name' is not up"
    ! ns_exists "$n" || die "lab '$name' already has its narrow host"
    ip netns add "$n"
    ip -n "$c" link add narrow0 type veth peer name eth0 netns "$n"
    ip -n "$c" link set narrow0 mtu "$mtu" up
    ip -n "$c" addr add fe80::1/64 dev narrow0 nodad
    ip -n "$c" route add "$NARROW_IP/32" dev narrow0
    ip -n "$c" -6 route add "$NARROW_IP6/128" dev narrow0
    ip netns exec "$c" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
    ip -n "$n" addr add "$NARROW_IP/32" dev eth0
    ip -n "$n" addr add "$NARROW_IP6/128" dev eth0 nodad
    ip -n "$n" route add "$CLIENT_IP" dev eth0
    ip -n "$n" route add default via "$CLIENT_IP" dev eth0
    ip -n "$n" -6 route add default via fe80::1 dev eth0
    ip -n "$g" route add "$NARROW_IP/32" via "$CLIENT_IP"
    ip -n "$g" -6 route add "$NARROW_IP6/128" via "$CLIENT_IP6"
    log "lab '$name': host $NARROW_IP, $NARROW_IP6 in $n, behind $c over a ${mtu}-byte link"
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,39p' "$0" >&2; exit 2; }
shift
case "$cmd" in
up)      need_root; check_name "${1:?NAME}"; up "$1" "${2:-nft}" ;;
down)    need_root; check_name "${1:?NAME}"; down "$1" ;;
rules)   need_root; check_name "${1:?NAME}"; rules "$1" "${2:?add|del}" "${3:?nft|iptables}" ;;
vsftpd)  need_root; check_name "${1:?NAME}"; start_vsftpd "$@" ;;
gateway) need_root; check_name "${1:?NAME}"; start_gateway "$@" ;;
stop-gateway) need_root; check_name "${1:?NAME}"; stop_gateway "$1" ;;
record-pid) need_root; check_name "${1:?NAME}"; record_pid "$1" "${2:?WHAT}" "${3:?PID}" "${4:?CMD}" ;;
fetch-vsftpd) need_root; fetch_vsftpd; echo "$VSFTPD_BIN" ;;
narrow)  need_root; check_name "${1:?NAME}"; narrow "$1" "${2:-1280}" ;;
exec)
    need_root; check_name "${1:?NAME}"
    name=$1; which=${2:?c|g|s|n}; shift 2
    case "$which" in c|g|s|n) ;; *) die "namespace must be c, g, s or n" ;; esac
    exec ip netns exec "$name-$which" "$@"
    ;;
rundir)  check_name "${1:?NAME}"; run_dir "$1" ;;
gc)      need_root; gc ;;
list)    ls -1 "$LAB_RUN_BASE" 2>/dev/null || true ;;
*) die "unknown command '$cmd' (up|down|rules|vsftpd|gateway|stop-gateway|record-pid|fetch-vsftpd|narrow|exec|rundir|list|gc)" ;;
esac
