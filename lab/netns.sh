#!/usr/bin/env bash
# ftpgate lab: three network namespaces (client, gateway, server) with
# documentation addresses only, IPv4 and IPv6, vsftpd in the server
# namespace, and the TPROXY rule set `ftpgate rules` prints in the gateway
# namespace. Never touches the root namespace's routes or firewall. Needs
# root, and a built ftpgate ($FTPGATE_BIN, default target/debug/ftpgate).
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
#   netns.sh exec NAME c|g|s CMD...        run CMD in one of the namespaces
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

vsftpd_libpath() {
    local d out=""
    for d in "$VSFTPD_ROOT"/lib/x86_64-linux-gnu "$VSFTPD_ROOT"/usr/lib/x86_64-linux-gnu \
             "$VSFTPD_ROOT"/lib/*-linux-gnu* "$VSFTPD_ROOT"/usr/lib/*-linux-gnu* "$VSFTPD_ROOT"/lib; do
        [ -d "$d" ] && out="$out${out:+:}$d"
    done
    echo "$out"
}

ensure_ftp_user() {
    local home
    # vsftpd changes into the ftp user's home before going to anon_root
    home=$(getent passwd ftp | cut -d: -f6 || true)
    if [ -n "$home" ]; then
        [ -d "$home" ] || { mkdir -p "$home"; chmod 755 "$home"; }
        return 0
    fi
    (
        flock -w 60 9 || true
        getent passwd ftp >/dev/null && exit 0
        log "creating system user 'ftp' (vsftpd anonymous user)"
        useradd --system --home-dir /srv/ftp --no-create-home \
            --shell /usr/sbin/nologin ftp 2>/dev/null \
            || useradd -r -d /srv/ftp -M -s /bin/false ftp
        [ -d /srv/ftp ] || { mkdir -p /srv/ftp; chmod 755 /srv/ftp; }
    ) 9>/tmp/.ftpgate-lab-useradd.lock
}

# -- rules -------------------------------------------------------------------
# The lab installs what `ftpgate rules` prints (src/rules.rs), so the tests
# run what users paste: both families' listeners, the strict profile with
# the client-facing interface. lab/rules/lab-*.{nft,sh} are those outputs,
# kept as references (a unit test checks they are current).
# FTPGATE_LAB_DATA_PATH=pinhole (tests/pinhole.rs): the rules for the kernel
# data path, whose forward chain admits RELATED connections first.
rules_args() {
    [ -x "$FTPGATE_BIN" ] || die "no ftpgate binary at $FTPGATE_BIN (cargo build first, or set FTPGATE_BIN)"
    local data_path=${FTPGATE_LAB_DATA_PATH:-relay}
    case "$data_path" in relay | pinhole) ;; *) die "FTPGATE_LAB_DATA_PATH must be relay or pinhole (got '$data_path')" ;; esac
    echo "--listen 0.0.0.0:$GW_PORT --listen [::]:$GW_PORT rules --profile strict --client-interface $GW_CLIENT_IF --data-path $data_path"
}

# gen_rules NAME FILE [ARG...]: `ftpgate rules ARG...` for the lab, into
# the run directory's FILE (kept for diagnostics); prints its path
gen_rules() {
    local name=$1 file=$2 args out
    shift 2
    read -ra args <<<"$(rules_args)"
    out=$(run_dir "$name")/$file
    "$FTPGATE_BIN" "${args[@]}" "$@" >"$out" || die "ftpgate rules ${args[*]} $* failed"
    echo "$out"
}

rules() {
    local name=$1 op=$2 form=$3 g undo=()
    g=$(ns_g "$name")
    case "$op" in add) ;; del) undo=(--undo) ;; *) die "rules: add or del (got '$op')" ;; esac
    case "$form" in
    nft)
        command -v nft >/dev/null || die "nft not installed (apt-get install nftables)"
        ip netns exec "$g" nft -f "$(gen_rules "$name" "rules-$op.nft" "${undo[@]}")"
        ;;
    iptables)
        command -v iptables >/dev/null || die "iptables not installed (apt-get install iptables)"
        ip netns exec "$g" sh "$(gen_rules "$name" "rules-$op-iptables.sh" --iptables "${undo[@]}")"
        ;;
    none) ;;
    *) die "rule form must be nft, iptables or none (got '$form')" ;;
    esac
}

# routing NAME: the policy routing and sysctls, from `ftpgate rules --routing`
routing() {
    local name=$1
    ip netns exec "$(ns_g "$name")" sh "$(gen_rules "$name" routing.sh --routing)"
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

    # IPv6 addresses without duplicate address detection (nodad): usable
    # at once, no test waits for DAD
    ip -n "$c" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$c" addr add "$CLIENT_IP6/64" dev eth0 nodad
    ip -n "$c" link set eth0 up
    ip -n "$c" route add default via "$GW_CLIENT_IP"
    ip -n "$c" -6 route add default via "$GW_CLIENT_IP6"

    ip -n "$s" addr add "$SERVER_IP/24" dev eth0
    ip -n "$s" addr add "$SERVER_IP6/64" dev eth0 nodad
    ip -n "$s" link set eth0 up
    ip -n "$s" route add default via "$GW_SERVER_IP"
    ip -n "$s" -6 route add default via "$GW_SERVER_IP6"

    ip -n "$g" addr add "$GW_CLIENT_IP/24" dev "$GW_CLIENT_IF"
    ip -n "$g" addr add "$GW_CLIENT_IP6/64" dev "$GW_CLIENT_IF" nodad
    ip -n "$g" addr add "$GW_SERVER_IP/24" dev "$GW_SERVER_IF"
    ip -n "$g" addr add "$GW_SERVER_IP6/64" dev "$GW_SERVER_IF" nodad
    ip -n "$g" link set "$GW_CLIENT_IF" up
    ip -n "$g" link set "$GW_SERVER_IF" up
    # forwarding, rp_filter, and the TPROXY policy routing (marked packets
    # are delivered locally), both families: `ftpgate rules --routing`.
    # Plain routing (rules none) needs it too: forwarding.
    routing "$name"

    rules "$name" add "$form"

    # server files
    mkdir -p "$run/empty" "$run/ftproot/pub" "$run/ftproot/upload"
    chmod 755 "$run/empty" "$run/ftproot" "$run/ftproot/pub"
    ensure_ftp_user
    chown ftp "$run/ftproot/upload"; chmod 755 "$run/ftproot/upload"
    echo "hello from the ftpgate lab server" >"$run/ftproot/pub/hello.txt"
    chmod 644 "$run/ftproot/pub/hello.txt"
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
    for ns in "$(ns_c "$name")" "$(ns_g "$name")" "$(ns_s "$name")"; do
        if ns_exists "$ns"; then ip netns del "$ns" || log "could not delete netns $ns"; fi
    done
    if [ -d "$run" ] && [ "${FTPGATE_LAB_KEEP:-0}" != 1 ]; then rm -rf "$run"; fi
    return 0
}

# -- daemons -----------------------------------------------------------------
start_vsftpd() {
    local name=$1 run s pid setting
    shift
    run=$(run_dir "$name"); s=$(ns_s "$name")
    ns_exists "$s" || die "lab '$name' is not up"
    fetch_vsftpd
    ensure_ftp_user
    sed -e "s#@RUN@#$run#g" -e "s#@SERVER_IP@#$SERVER_IP#g" \
        "$LAB_DIR/vsftpd.conf.in" >"$run/vsftpd.conf"
    # KEY=VALUE arguments replace the template's settings (port_enable=NO)
    for setting in "$@"; do
        [[ $setting =~ ^([a-z_]+)=([A-Za-z0-9_./-]*)$ ]] || die "vsftpd setting '$setting' is not KEY=VALUE"
        grep -q "^${BASH_REMATCH[1]}=" "$run/vsftpd.conf" || die "vsftpd.conf.in has no '${BASH_REMATCH[1]}'"
        sed -i -e "s#^${BASH_REMATCH[1]}=.*#$setting#" "$run/vsftpd.conf"
    done
    chmod 600 "$run/vsftpd.conf"   # vsftpd wants its config owned by root
    : >"$run/vsftpd.log"; : >"$run/xferlog"
    LD_LIBRARY_PATH=$(vsftpd_libpath) \
        ip netns exec "$s" "$VSFTPD_BIN" "$run/vsftpd.conf" \
        </dev/null >>"$run/vsftpd.out" 2>&1 &
    pid=$!
    pidfile_write "$run/vsftpd.pid" "$pid" "$VSFTPD_BIN"
    # dual-stack: ss shows the one socket as *:21
    if ! wait_tcp_listen "$s" 21 "" 100; then
        cat "$run/vsftpd.out" >&2 || true
        die "vsftpd did not listen on [::]:21 within 10 s"
    fi
    log "vsftpd listening on [::]:21, both families (pid $pid)"
}

start_gateway() {
    local name=$1 bin=$2 run g pid
    shift 2
    run=$(run_dir "$name"); g=$(ns_g "$name")
    ns_exists "$g" || die "lab '$name' is not up"
    [ -x "$bin" ] || die "gateway binary '$bin' not found/executable"
    [ $# -gt 0 ] || set -- --listen "0.0.0.0:$GW_PORT" --log-level info
    ip netns exec "$g" "$bin" "$@" </dev/null >>"$run/ftpgate.out" 2>>"$run/ftpgate.log" &
    pid=$!
    pidfile_write "$run/ftpgate.pid" "$pid" "$bin"
    if ! wait_tcp_listen "$g" "$GW_PORT" "" 100; then
        log "gateway log:"; cat "$run/ftpgate.log" >&2 || true
        pid_alive "$pid" || die "gateway exited at start"
        die "gateway did not listen on :$GW_PORT within 10 s"
    fi
    log "ftpgate listening on :$GW_PORT in $g (pid $pid)"
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

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,34p' "$0" >&2; exit 2; }
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
exec)
    need_root; check_name "${1:?NAME}"
    name=$1; which=${2:?c|g|s}; shift 2
    case "$which" in c|g|s) ;; *) die "namespace must be c, g or s" ;; esac
    exec ip netns exec "$name-$which" "$@"
    ;;
rundir)  check_name "${1:?NAME}"; run_dir "$1" ;;
gc)      need_root; gc ;;
list)    ls -1 "$LAB_RUN_BASE" 2>/dev/null || true ;;
*) die "unknown command '$cmd' (up|down|rules|vsftpd|gateway|stop-gateway|record-pid|fetch-vsftpd|exec|rundir|list|gc)" ;;
esac
