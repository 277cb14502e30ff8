#!/usr/bin/env bash
# ftpgate lab: one host of the lab (client, gateway or server), set up on
# the machine this runs on. The namespace lab (netns.sh) runs it inside
# `ip netns exec NAME-c|g|s`; lab/Vagrantfile's provisioning runs it on
# each VM; lab/scenario runs it on the client and server VMs over ssh
# (machines mode). So every form of the lab is set up by these functions.
# Needs root; touches only the interfaces it is given and, on the gateway,
# what `ftpgate rules` prints (sysctls, policy routing, the rule set).
#
# Usage (IF: this host's interface towards the other hosts):
#   host.sh client IF [default|lab]     192.0.2.10/24, 2001:db8:1::10/64 on
#                                       IF; routes via the gateway (below)
#   host.sh server IF [default|lab] DIR 198.51.100.10/24, 2001:db8:2::10/64;
#                                       routes; DIR/ftproot (pub, upload)
#   host.sh gateway CIF SIF DIR FORM    192.0.2.1 + 2001:db8:1::1 on CIF,
#                                       198.51.100.1 + 2001:db8:2::1 on SIF;
#                                       `ftpgate rules --routing`, then the
#                                       FORM (nft|iptables|none) rule set
#   host.sh rules add|del FORM CIF DIR  the TPROXY rule set only
#   host.sh vsftpd DIR [KEY=VALUE]...   vsftpd with run dir DIR (its files
#                                       in DIR/ftproot), in the background
#   host.sh proftpd DIR | pure-ftpd DIR instead of vsftpd (servers.sh
#                                       unpacks them), in the background
#   host.sh ftpgate DIR BIN [ARGS...]   BIN in the background, stderr to
#                                       DIR/ftpgate.log
#   host.sh spawn DIR WHAT CMD...       CMD in the background, DIR/WHAT.pid
#   host.sh capture DIR PCAPDIR IF NAME [FILTER]
#                                       tcpdump on IF into PCAPDIR/NAME.pcap
#                                       (bounded), DIR/capture-NAME.pid
#   host.sh capture-stop DIR            stop this host's captures
#   host.sh stop DIR                    stop every process DIR has a
#                                       pidfile for (lib.sh's pidfiles)
#   host.sh wait-listen PORT [ADDR] [TENTHS]
#                                       bounded wait for a TCP listener
#   host.sh if-of ADDR                  the interface holding ADDR
#   host.sh v6-settled                  wait (3 s at most) until no IPv6
#                                       address is tentative; status 1 if
#                                       one still is
#
# Routes: "default" (the namespace lab) routes everything via the gateway;
# "lab" (machines, which keep their own default route, Vagrant's NAT) only
# the other side's documentation prefixes. Every background process gets
# a pidfile (lib.sh's format) in DIR, so `host.sh stop DIR` and
# `netns.sh down` stop exactly those.
set -Eeuo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VSFTPD_ROOT=$LAB_CACHE/vsftpd/root
VSFTPD_BIN=$VSFTPD_ROOT/usr/sbin/vsftpd

# -- addresses and routes ------------------------------------------------------
# addr4_6 IF V4/LEN V6/LEN: both families on IF. IPv6 without duplicate
# address detection (nodad): usable at once, no scenario waits for DAD.
# `replace`: provisioning a VM a second time changes nothing.
addr4_6() {
    local ifname=$1
    ip link show "$ifname" >/dev/null 2>&1 || die "no interface '$ifname' on this host"
    ip addr replace "$2" dev "$ifname"
    ip addr replace "$3" dev "$ifname" nodad
    ip link set "$ifname" up
}

# routes_via MODE V4_GW V6_GW OTHER_V4_NET OTHER_V6_NET
routes_via() {
    case "$1" in
    default)
        ip route replace default via "$2"
        ip -6 route replace default via "$3"
        ;;
    lab)
        ip route replace "$4" via "$2"
        ip -6 route replace "$5" via "$3"
        ;;
    *) die "routes must be 'default' or 'lab' (got '$1')" ;;
    esac
}

host_client() {
    local ifname=$1 routes=${2:-default}
    addr4_6 "$ifname" "$CLIENT_IP/24" "$CLIENT_IP6/64"
    routes_via "$routes" "$GW_CLIENT_IP" "$GW_CLIENT_IP6" "$SERVER_NET" "$SERVER_NET6"
}

host_server() {
    local ifname=$1 routes=${2:-default} dir=${3:?DIR}
    addr4_6 "$ifname" "$SERVER_IP/24" "$SERVER_IP6/64"
    routes_via "$routes" "$GW_SERVER_IP" "$GW_SERVER_IP6" "$CLIENT_NET" "$CLIENT_NET6"
    server_files "$dir"
}

# server_files DIR: the FTP server's tree: DIR/ftproot/pub (downloads),
# DIR/ftproot/upload (uploads, owned by 'ftp'), DIR/empty (vsftpd's
# secure_chroot_dir)
server_files() {
    local dir=$1
    mkdir -p "$dir/empty" "$dir/ftproot/pub" "$dir/ftproot/upload"
    chmod 755 "$dir" "$dir/empty" "$dir/ftproot" "$dir/ftproot/pub"
    ensure_ftp_user
    chown ftp "$dir/ftproot/upload"; chmod 755 "$dir/ftproot/upload"
    echo "hello from the ftpgate lab server" >"$dir/ftproot/pub/hello.txt"
    chmod 644 "$dir/ftproot/pub/hello.txt"
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

host_gateway() {
    local cif=$1 sif=$2 dir=$3 form=$4
    case "$form" in nft | iptables | none) ;; *) die "bad rule form '$form'" ;; esac
    addr4_6 "$cif" "$GW_CLIENT_IP/24" "$GW_CLIENT_IP6/64"
    addr4_6 "$sif" "$GW_SERVER_IP/24" "$GW_SERVER_IP6/64"
    # forwarding, rp_filter, and the TPROXY policy routing (marked packets
    # are delivered locally), both families: `ftpgate rules --routing`.
    # Plain routing (rules none) needs it too: forwarding.
    sh "$(gen_rules "$cif" "$dir" routing.sh --routing)"
    host_rules add "$form" "$cif" "$dir"
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
    echo "--listen 0.0.0.0:$GW_PORT --listen [::]:$GW_PORT rules --profile strict --client-interface $1 --data-path $data_path"
}

# gen_rules CIF DIR FILE [ARG...]: `ftpgate rules ARG...` for the lab, into
# DIR/FILE (kept for diagnostics); prints its path
gen_rules() {
    local cif=$1 dir=$2 file=$3 args out
    shift 3
    read -ra args <<<"$(rules_args "$cif")"
    out=$dir/$file
    "$FTPGATE_BIN" "${args[@]}" "$@" >"$out" || die "ftpgate rules ${args[*]} $* failed"
    echo "$out"
}

host_rules() {
    local op=$1 form=$2 cif=$3 dir=$4 undo=()
    case "$op" in add) ;; del) undo=(--undo) ;; *) die "rules: add or del (got '$op')" ;; esac
    case "$form" in
    nft)
        command -v nft >/dev/null || die "nft not installed (apt-get install nftables)"
        nft -f "$(gen_rules "$cif" "$dir" "rules-$op.nft" "${undo[@]}")"
        ;;
    iptables)
        command -v iptables >/dev/null || die "iptables not installed (apt-get install iptables)"
        sh "$(gen_rules "$cif" "$dir" "rules-$op-iptables.sh" --iptables "${undo[@]}")"
        ;;
    none) ;;
    *) die "rule form must be nft, iptables or none (got '$form')" ;;
    esac
}

# -- daemons -----------------------------------------------------------------
# vsftpd comes from Debian's package, unpacked into LAB_CACHE by
# `netns.sh fetch-vsftpd` (never installed: its maintainer scripts would
# start a system-wide daemon)
vsftpd_libpath() {
    local d out=""
    for d in "$VSFTPD_ROOT"/lib/x86_64-linux-gnu "$VSFTPD_ROOT"/usr/lib/x86_64-linux-gnu \
             "$VSFTPD_ROOT"/lib/*-linux-gnu* "$VSFTPD_ROOT"/usr/lib/*-linux-gnu* "$VSFTPD_ROOT"/lib; do
        [ -d "$d" ] && out="$out${out:+:}$d"
    done
    echo "$out"
}

host_vsftpd() {
    local dir=$1 pid setting
    shift
    [ -x "$VSFTPD_BIN" ] || die "vsftpd not unpacked at $VSFTPD_BIN (netns.sh fetch-vsftpd)"
    [ -d "$dir/ftproot" ] || die "no $dir/ftproot (host.sh server makes it)"
    ensure_ftp_user
    sed -e "s#@RUN@#$dir#g" -e "s#@SERVER_IP@#$SERVER_IP#g" \
        "$LAB_DIR/vsftpd.conf.in" >"$dir/vsftpd.conf"
    # KEY=VALUE arguments replace the template's settings (port_enable=NO)
    for setting in "$@"; do
        [[ $setting =~ ^([a-z_]+)=([A-Za-z0-9_./-]*)$ ]] || die "vsftpd setting '$setting' is not KEY=VALUE"
        grep -q "^${BASH_REMATCH[1]}=" "$dir/vsftpd.conf" || die "vsftpd.conf.in has no '${BASH_REMATCH[1]}'"
        sed -i -e "s#^${BASH_REMATCH[1]}=.*#$setting#" "$dir/vsftpd.conf"
    done
    chmod 600 "$dir/vsftpd.conf"   # vsftpd wants its config owned by root
    : >"$dir/vsftpd.log"; : >"$dir/xferlog"
    LD_LIBRARY_PATH=$(vsftpd_libpath) "$VSFTPD_BIN" "$dir/vsftpd.conf" \
        </dev/null >>"$dir/vsftpd.out" 2>&1 &
    pid=$!
    pidfile_write "$dir/vsftpd.pid" "$pid" "$VSFTPD_BIN"
    # dual-stack: ss shows the one socket as *:21
    if ! wait_listen_here 21 "" 100; then
        cat "$dir/vsftpd.out" >&2 || true
        die "vsftpd did not listen on [::]:21 within 10 s"
    fi
    log "vsftpd listening on [::]:21, both families (pid $pid)"
}

host_proftpd() {
    local run=$1 bin pid group
    bin=$(server_bin proftpd)
    [ -x "$bin" ] || die "proftpd not unpacked at $bin (servers.sh fetch proftpd)"
    [ -d "$run/ftproot" ] || die "no $run/ftproot (host.sh server makes it)"
    group=$(id -gn ftp)
    sed -e "s#@RUN@#$run#g" -e "s#@SERVER_IP@#$SERVER_IP#g" -e "s#@SERVER_IP6@#$SERVER_IP6#g" \
        -e "s#@MODULES@#$(server_root proftpd)/usr/lib/proftpd#g" \
        -e "s#@FTP_GROUP@#$group#g" \
        "$LAB_DIR/proftpd.conf.in" >"$run/proftpd.conf"
    chmod 600 "$run/proftpd.conf"
    : >"$run/proftpd.log"; : >"$run/proftpd.cmdlog"; : >"$run/proftpd.xferlog"
    LD_LIBRARY_PATH=$(server_libpath proftpd) \
        "$bin" --nodaemon --config "$run/proftpd.conf" \
        </dev/null >>"$run/proftpd.out" 2>&1 &
    pid=$!
    pidfile_write "$run/proftpd.pid" "$pid" "$bin"
}

host_pure_ftpd() {
    local run=$1 bin pid home
    bin=$(server_bin pure-ftpd)
    [ -x "$bin" ] || die "pure-ftpd not unpacked at $bin (servers.sh fetch pure-ftpd)"
    [ -d "$run/ftproot" ] || die "no $run/ftproot (host.sh server makes it)"
    # pure-ftpd's anonymous root is the 'ftp' user's home: bind the lab's
    # ftproot over it, in a mount namespace of the server's own (private
    # propagation: the host's mount table never changes); a tmpfs on /run
    # there too, for the /run/pure-ftpd it creates
    home=$(getent passwd ftp | cut -d: -f6)
    [ -d "$home" ] || die "home of user 'ftp' ($home) missing"
    : >"$run/pure-ftpd.xferlog"
    # shellcheck disable=SC2016  # $1.. expand in the inner sh
    LD_LIBRARY_PATH=$(server_libpath pure-ftpd) \
        unshare --mount --propagation private \
        sh -c 'mount --bind "$1" "$2" && mount -t tmpfs -o size=1m,mode=755 lab-run /run && shift 2 && exec "$@"' sh "$run/ftproot" "$home" \
        "$bin" --bind ",21" --anonymousonly --chrooteveryone \
        --dontresolve --passiveportrange 30000:30100 --maxclientsnumber 50 \
        --maxclientsperip 50 --maxidletime 2 --syslogfacility none \
        --altlog "clf:$run/pure-ftpd.xferlog" --pidfile "$run/pure-ftpd.pidfile" \
        </dev/null >>"$run/pure-ftpd.out" 2>&1 &
    pid=$!
    pidfile_write "$run/pure-ftpd.pid" "$pid" "$bin"
}

host_ftpgate() {
    local dir=$1 bin=$2 pid
    shift 2
    [ -x "$bin" ] || die "gateway binary '$bin' not found/executable"
    [ $# -gt 0 ] || set -- --listen "0.0.0.0:$GW_PORT" --log-level info
    "$bin" "$@" </dev/null >>"$dir/ftpgate.out" 2>>"$dir/ftpgate.log" &
    pid=$!
    pidfile_write "$dir/ftpgate.pid" "$pid" "$bin"
    if ! wait_listen_here "$GW_PORT" "" 100 "$pid"; then
        log "gateway log:"; cat "$dir/ftpgate.log" >&2 || true
        pid_alive "$pid" || die "gateway exited at start"
        die "gateway did not listen on :$GW_PORT within 10 s"
    fi
    log "ftpgate listening on :$GW_PORT (pid $pid)"
}

# host_spawn DIR WHAT CMD...: CMD in the background (output to
# DIR/WHAT.out), its pidfile DIR/WHAT.pid names CMD's program: the first
# word, or for an interpreter (python3 X.py) the script
host_spawn() {
    local dir=$1 what=$2 prog pid
    shift 2
    [[ "$what" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || die "bad process name '$what'"
    prog=$(command -v "$1") || die "no program '$1'"
    case "$(basename "$1")" in python3 | bash | sh) prog=$2 ;; esac
    "$@" </dev/null >>"$dir/$what.out" 2>&1 &
    pid=$!
    pidfile_write "$dir/$what.pid" "$pid" "$prog"
}

# host_capture DIR PCAPDIR IF NAME [FILTER]: tcpdump on IF into
# PCAPDIR/NAME.pcap, in the background, bounded (count, and 120 s at most),
# its PID in DIR/capture-NAME.pid. Waits (bounded) until tcpdump listens.
host_capture() {
    local dir=$1 pcaps=$2 ifname=$3 name=$4 filter=${5:-tcp or vrrp} pid i
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,60}$ ]] || die "bad capture name '$name'"
    mkdir -p "$pcaps"
    timeout 120 tcpdump -i "$ifname" -s 512 -c 50000 -U -n -Z root --immediate-mode \
        -w "$pcaps/$name.pcap" "$filter" </dev/null >/dev/null 2>"$pcaps/$name.err" &
    pid=$!
    pidfile_write "$dir/capture-$name.pid" "$pid" "$(command -v timeout)"
    for ((i = 0; i < 50; i++)); do
        grep -q "listening on" "$pcaps/$name.err" 2>/dev/null && return 0
        sleep 0.1
    done
    die "tcpdump on $ifname did not start: $(cat "$pcaps/$name.err")"
}

# host_capture_stop DIR: stop every capture (SIGTERM: tcpdump writes out
# and exits)
host_capture_stop() {
    local f
    for f in "$1"/capture-*.pid; do [ -e "$f" ] && stop_pidfile "$f" 30; done
    return 0
}

host_stop() {
    local f
    [ -d "$1" ] || return 0
    for f in "$1"/*.pid; do [ -e "$f" ] && { stop_pidfile "$f" 50 || true; }; done
    return 0
}

# wait_listen_here PORT [ADDR] [TENTHS] [PID]: bounded wait for a TCP listener on
# this host, PID's when given (lib.sh's wait_tcp_listen looks into a namespace)
wait_listen_here() {
    local port=$1 addr=${2:-} tenths=${3:-100} pid=${4:-} i
    for ((i = 0; i < tenths; i++)); do
        if [ -z "$pid" ]; then
            ss -Hltn "sport = :$port" 2>/dev/null | grep -q "${addr}:$port" && return 0
        else
            # the listener must be PID's own: another program on the port
            # would pass for a daemon that started, and one that exited
            # (port taken, bad option) is not waited for
            ss -Hltnp "sport = :$port" 2>/dev/null | grep "${addr}:$port" | grep -q "pid=$pid," && return 0
            pid_alive "$pid" || return 1
        fi
        sleep 0.1
    done
    return 1
}

if_of() {
    local dev
    dev=$(ip -br addr show | awk -v a="$1" '{ for (i = 3; i <= NF; i++) if ($i ~ "^" a "/") { print $1; exit } }')
    [ -n "$dev" ] || die "no interface holds $1 on this host"
    echo "${dev%@*}"
}

# v6_settled: the lab's own addresses skip duplicate address detection
# (nodad), but each interface's link-local address still runs it for about
# a second, and a router cannot send neighbour solicitations before it has
# one: the first IPv6 connection would show a second's wait that is no
# part of the story.
v6_settled() {
    local i
    for ((i = 0; i < 30; i++)); do
        [ -n "$(ip -6 addr show tentative)" ] || return 0
        sleep 0.1
    done
    return 1
}

# check_dir DIR: an absolute path, not / and without "..": a remote caller
# (lab/scenario, machines mode) hands these directories over
check_dir() {
    if ! [[ "$1" =~ ^/[A-Za-z0-9_./-]+$ ]] || [[ "$1" == *..* ]] || [ "$1" = / ]; then
        die "directory '$1' must be an absolute path (not /, no '..')"
    fi
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,40p' "$0" >&2; exit 2; }
shift
need_root
case "$cmd" in
client)  host_client "${1:?IF}" "${2:-default}" ;;
server)  check_dir "${3:?DIR}"; host_server "${1:?IF}" "${2:?default|lab}" "$3" ;;
gateway) check_dir "${3:?DIR}"; host_gateway "${1:?CLIENT_IF}" "${2:?SERVER_IF}" "$3" "${4:?nft|iptables|none}" ;;
rules)   check_dir "${4:?DIR}"; host_rules "${1:?add|del}" "${2:?nft|iptables|none}" "${3:?CLIENT_IF}" "$4" ;;
vsftpd)  check_dir "${1:?DIR}"; host_vsftpd "$@" ;;
proftpd) check_dir "${1:?DIR}"; host_proftpd "$1" ;;
pure-ftpd) check_dir "${1:?DIR}"; host_pure_ftpd "$1" ;;
ftpgate) check_dir "${1:?DIR}"; host_ftpgate "$@" ;;
spawn)   check_dir "${1:?DIR}"; [ $# -ge 3 ] || die "spawn DIR WHAT CMD..."; host_spawn "$@" ;;
capture) check_dir "${1:?DIR}"; check_dir "${2:?PCAPDIR}"; host_capture "$1" "$2" "${3:?IF}" "${4:?NAME}" "${5:-tcp or vrrp}" ;;
capture-stop) check_dir "${1:?DIR}"; host_capture_stop "$1" ;;
stop)    check_dir "${1:?DIR}"; host_stop "$1" ;;
if-of)   if_of "${1:?ADDR}" ;;
wait-listen) wait_listen_here "${1:?PORT}" "${2:-}" "${3:-100}" ;;
v6-settled) v6_settled ;;
*) die "unknown command '$cmd' (client|server|gateway|rules|vsftpd|proftpd|pure-ftpd|ftpgate|spawn|capture|capture-stop|stop|wait-listen|if-of|v6-settled)" ;;
esac
