#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash disable=SC2034  # sourced by lab/scenario
# Helpers for the scenario scripts (lab/scenarios/NAME.sh). Sourced by
# lab/scenario after lab/lib.sh, with these set:
#   SCENARIO   the scenario's name        LAB   the lab's name (namespaces LAB-*)
#   OUT        the artefact directory     RUN   the lab's run directory
#   BIN        ftpgate                    LADDER ftpgate-ladder
#   FORM       nft|iptables (the TPROXY rule set)
#   HOSTS      ns: the hosts are network namespaces of this machine;
#              machines: this machine is the gateway, the client and the
#              server are other machines reached with ssh (lab/Vagrantfile;
#              MACHINES names the file that says how, see "hosts" below)
#
# Every process a scenario starts has a pidfile in RUN (lib.sh's format), or
# in its work directory on a client or server machine, so teardown stops
# exactly those; every namespace it creates is listed in RUN/namespaces,
# so teardown removes exactly those.

C_NS=$LAB-c
G_NS=$LAB-g
S_NS=$LAB-s
CHECKS_FAILED=0
# the listeners ftpgate runs with (std_gateway, gw_start), both families:
# the ones `ftpgate rules` generates for (lab/netns.sh's rules_args, gw_rules)
GW_LISTEN=(--listen "0.0.0.0:$GW_PORT" --listen "[::]:$GW_PORT")
# how every scenario runs ftpgate: the JSON audit trail; and a short drain
# on SIGTERM, within the 5 s teardown gives it (a session whose gateway
# lost its cables, as in failover, never finishes: the default 30 s would
# end in SIGKILL)
GW_ARGS=("${GW_LISTEN[@]}" --log-level info --log-format json --drain-timeout 2)

step() { printf '\n==> %s\n' "$*"; }
# say: a line of "what happened", on the terminal and in OUT/summary.txt
say() { printf '%s\n' "$*" | tee -a "$OUT/summary.txt"; }

# check WHAT CMD...: run CMD; say whether WHAT holds; remember failures
check() {
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then
        say "  ok    $what"
    else
        say "  FAIL  $what"
        CHECKS_FAILED=$((CHECKS_FAILED + 1))
    fi
}

need_cmds() {
    local c missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [ ${#missing[@]} -eq 0 ] || die "scenario '$SCENARIO' needs ${missing[*]}: apt-get install ${missing[*]} (lab/deps.sh installs them)"
}

sha() { if [ -f "$1" ]; then sha256sum <"$1" | cut -d' ' -f1; else echo missing; fi; }

# in NS CMD...: run CMD in namespace NS, bounded to 60 s
# (--foreground: timeout stays in our process group, so a Ctrl-C reaches
# the command at once and the teardown trap runs without waiting for it)
in_ns() { local ns=$1; shift; timeout --foreground -k 5 60 ip netns exec "$ns" "$@"; }

# -- hosts: the client, the gateway and the server ------------------------------
# A scenario that runs on real machines too ("# machines: yes") names hosts,
# never namespaces: `on client CMD...`, `host_sh server ARGS...`, files in
# C_DIR (the client's work directory) and S_DIR (the server's run
# directory, ftproot in it), `fetch`/`push` between a host and here, and
# captures with `capture_on`. In ns mode a host is a namespace of the
# standard lab (C_DIR is OUT, S_DIR is RUN: one file system); in machines
# mode the gateway is this machine and the others are reached with
# `ssh -F SSH_CONFIG client|server` as root. The lab's scripts are at the
# same path on every machine (Vagrant: /vagrant).
#
# MACHINES (machines mode; lab/scenario reads it, lab/Vagrantfile's
# provisioning writes /etc/ftpgate-lab/machines.env) sets:
#   SSH_CONFIG  ssh_config with Host client and Host server
#   HOST_RUN    where client and server keep a scenario's work directories
#   HOST_CACHE  FTPGATE_LAB_CACHE on client and server (vsftpd unpacked)
C_IF=eth0
S_IF=eth0
C_DIR=$OUT
S_DIR=$RUN
# machines mode: captures leave out ssh, the scenario's own remote control
CAPTURE_FILTER="tcp or vrrp"
if [ "$HOSTS" = machines ]; then
    : "${SSH_CONFIG:?MACHINES sets no SSH_CONFIG}" "${HOST_RUN:?MACHINES sets no HOST_RUN}"
    HOST_CACHE=${HOST_CACHE:-$LAB_CACHE}
    C_DIR=$HOST_RUN/$LAB-client
    S_DIR=$HOST_RUN/$LAB-server
    CAPTURE_FILTER="(tcp or vrrp) and not port 22"
fi

ns_of() {
    case "$1" in client) echo "$C_NS" ;; gateway) echo "$G_NS" ;; server) echo "$S_NS" ;; *) die "no host '$1'" ;; esac
}
local_host() { [ "$HOSTS" = ns ] || [ "$1" = gateway ]; }

# on HOST CMD...: CMD on client, gateway or server, bounded to 60 s. Over
# ssh, CMD's words are quoted for the remote shell and stdin is /dev/null.
on() {
    local h=$1
    shift
    if [ "$HOSTS" = ns ]; then
        timeout --foreground -k 5 60 ip netns exec "$(ns_of "$h")" "$@"
    elif [ "$h" = gateway ]; then
        timeout --foreground -k 5 60 "$@"
    else
        ns_of "$h" >/dev/null
        timeout --foreground -k 5 60 ssh -F "$SSH_CONFIG" -n "$h" -- "$(printf '%q ' "$@")"
    fi
}

# host_sh HOST ARGS...: lab/host.sh ARGS on HOST (its set-up, daemons,
# captures: the same script the namespace lab and the VMs' provisioning run)
host_sh() {
    local h=$1
    shift
    if local_host "$h"; then
        on "$h" bash "$LAB_DIR/host.sh" "$@"
    else
        on "$h" env FTPGATE_LAB_CACHE="$HOST_CACHE" bash "$LAB_DIR/host.sh" "$@"
    fi
}

# fetch HOST PATH LOCAL: HOST's file PATH, copied to LOCAL here
fetch() {
    local h=$1 src=$2 dst=$3
    if local_host "$h"; then
        [ "$src" -ef "$dst" ] && return 0
        cp "$src" "$dst"
    elif on "$h" cat "$src" >"$dst.part"; then
        mv "$dst.part" "$dst"
    else
        rm -f "$dst.part"
        return 1
    fi
}

# push LOCAL HOST PATH: this machine's file LOCAL as HOST's PATH
push() {
    local src=$1 h=$2 dst=$3
    if local_host "$h"; then
        cp "$src" "$dst"
    else
        timeout --foreground -k 5 60 ssh -F "$SSH_CONFIG" "$h" -- "cat > $(printf '%q' "$dst")" <"$src"
    fi
}

# undo_later HOST CMD...: run CMD on HOST at teardown (machines mode: what
# the scenario changed on a machine that outlives it)
undo_later() {
    [ "$HOSTS" = machines ] || return 0
    printf '%q ' "$@" >>"$RUN/undo"
    echo >>"$RUN/undo"
}

# machines_up FORM: this machine as the gateway with the FORM rule set (the
# provisioned one removed first), the client and the server set up again
# by lab/host.sh (a rebooted VM has lost its routes and IPv6 addresses),
# the work directories made. Teardown (hosts_teardown) restores the
# provisioned state: the strict nft rule set.
machines_up() {
    local form=$1 h
    for h in client server; do
        on "$h" test -f "$LAB_DIR/host.sh" \
            || die "cannot run $LAB_DIR/host.sh on '$h' over ssh (ssh -F $SSH_CONFIG $h): is it up and provisioned, and are the lab's scripts at the same path there (Vagrant: /vagrant)?"
    done
    echo "client $C_DIR" >>"$RUN/remote"
    echo "server $S_DIR" >>"$RUN/remote"
    on client mkdir -p "$C_DIR/pcap"
    on server mkdir -p "$S_DIR/pcap"
    C_IF=$(host_sh client if-of "$CLIENT_IP")
    S_IF=$(host_sh server if-of "$SERVER_IP")
    # (the addresses are lib.sh's, sourced by lab/scenario)
    # shellcheck disable=SC2153
    GW_CLIENT_IF=$(host_sh gateway if-of "$GW_CLIENT_IP")
    # shellcheck disable=SC2153
    GW_SERVER_IF=$(host_sh gateway if-of "$GW_SERVER_IP")
    host_sh client client "$C_IF" lab >/dev/null
    host_sh server server "$S_IF" lab "$S_DIR" >/dev/null
    host_sh gateway rules del nft "$GW_CLIENT_IF" "$RUN"
    host_sh gateway rules del iptables "$GW_CLIENT_IF" "$RUN"
    echo "$form" >"$RUN/gw-form"
    host_sh gateway gateway "$GW_CLIENT_IF" "$GW_SERVER_IF" "$RUN" "$form"
    say "  machines: client ($C_IF), gateway ($GW_CLIENT_IF, $GW_SERVER_IF: this machine), server ($S_IF)"
}

# hosts_teardown (lab/scenario's teardown, machines mode): stop what the
# scenario started on client and server, remove their work directories,
# undo what it changed, and put the gateway's provisioned rule set back
hosts_teardown() {
    [ "$HOSTS" = machines ] || return 0
    local h d line
    if [ -f "$RUN/undo" ]; then
        while IFS= read -r line; do
            # each word was quoted by printf %q: eval only re-reads them
            eval "on ${line}" >/dev/null 2>&1 || true
        done < <(tac "$RUN/undo")
    fi
    if [ -f "$RUN/remote" ]; then
        while read -r h d; do
            host_sh "$h" stop "$d" >/dev/null 2>&1 || true
            on "$h" rm -rf "$d" >/dev/null 2>&1 || true
        done <"$RUN/remote"
    fi
    if [ -f "$RUN/gw-form" ]; then
        host_sh gateway rules del iptables "$GW_CLIENT_IF" "$RUN" >/dev/null 2>&1 || true
        host_sh gateway rules add nft "$GW_CLIENT_IF" "$RUN" >/dev/null 2>&1 \
            || echo "lab: could not put the gateway's nft rule set back: run lab/host.sh rules add nft $GW_CLIENT_IF DIR" >&2
    fi
}

# -- the standard three-host lab (lab/netns.sh, or the machines) ---------------
# hosts_up [FORM]: client, gateway (FORM rules, default FORM) and server
# hosts, no FTP server yet
hosts_up() {
    local form=${1:-$FORM}
    if [ "$HOSTS" = machines ]; then
        machines_up "$form"
        return 0
    fi
    FTPGATE_LAB_OWNER=$$ bash "$LAB_DIR/netns.sh" up "$LAB" "$form" >/dev/null
    echo "$C_NS $G_NS $S_NS" >>"$RUN/namespaces"
}

# std_vsftpd: vsftpd on the server, run directory S_DIR
std_vsftpd() {
    if [ "$HOSTS" = machines ]; then
        on server env FTPGATE_LAB_CACHE="$HOST_CACHE" bash "$LAB_DIR/netns.sh" fetch-vsftpd >/dev/null
        host_sh server vsftpd "$S_DIR" 2>/dev/null
    else
        bash "$LAB_DIR/netns.sh" vsftpd "$LAB" 2>/dev/null
    fi
}

# shellcheck disable=SC2120  # called with and without arguments
std_up() {
    hosts_up "$@"
    std_vsftpd
}

# server_log_lines: how many lines vsftpd's log has now;
# server_log_since N: its lines after the first N
server_log_lines() { fetch server "$S_DIR/vsftpd.log" "$RUN/vsftpd.now" && wc -l <"$RUN/vsftpd.now"; }
server_log_since() { fetch server "$S_DIR/vsftpd.log" "$RUN/vsftpd.now" && tail -n +"$(($1 + 1))" "$RUN/vsftpd.now"; }

# std_ipv6_settled: wait (at most 3 s a host) until no IPv6 address of the
# standard lab is tentative (host.sh v6-settled says why)
std_ipv6_settled() {
    local h
    for h in client gateway server; do
        host_sh "$h" v6-settled || say "  (IPv6 addresses on $h still tentative after 3 s; going on)"
    done
}

# std_gateway [ARGS...]: ftpgate on the gateway with the JSON audit trail
# shellcheck disable=SC2120  # called with and without arguments
std_gateway() {
    host_sh gateway ftpgate "$RUN" "$BIN" "${GW_ARGS[@]}" "$@" 2>/dev/null
}

# std_gateway_stop: SIGTERM, a bounded wait, SIGKILL (netns.sh stop-gateway)
std_gateway_stop() {
    stop_pidfile "$RUN/ftpgate.pid" 100 || log "gateway still ran 10 s after SIGTERM: killed"
}

# gw_rules_std add|del: the gateway's TPROXY rule set in the form FORM
gw_rules_std() {
    host_sh gateway rules "$1" "$FORM" "$GW_CLIENT_IF" "$RUN"
}

# pub_src NAME: this machine's copy of the server's pub/NAME (pub_file)
pub_src() { echo "$RUN/pub/$1"; }

# pub_file NAME KIB: a random file of KIB kibibytes as the server's pub/NAME
pub_file() {
    local name=$1 kib=$2 src
    mkdir -p "$RUN/pub"
    src=$(pub_src "$name")
    head -c $((kib * 1024 + 321)) /dev/urandom >"$src"
    push "$src" server "$S_DIR/ftproot/pub/$name"
    on server chmod 644 "$S_DIR/ftproot/pub/$name"
    # the source's sum stays with the artefacts (the tests compare with it)
    sha "$src" >"$OUT/$name.sha256"
}

# uploaded NAME LOCAL: the server's upload/NAME, copied to LOCAL (nothing
# when the upload never arrived)
uploaded() { fetch server "$S_DIR/ftproot/upload/$1" "$2" 2>/dev/null || true; }

# -- the round trip of the basic scenarios ------------------------------------
# round_trip_up [v6]: the standard lab (both families settled with v6),
# vsftpd, ftpgate, the server's pub/scen.bin and the captures running
# (std_up, std_gateway and server_saw take optional arguments; none here)
# shellcheck disable=SC2119
round_trip_up() {
    step "lab up ($FORM rules${1:+, both families}), vsftpd, ftpgate"
    std_up
    [ -z "${1:-}" ] || std_ipv6_settled
    std_gateway
    pub_file scen.bin 512
    capture_std
}

# ftplib_round_trip HOST MODE: python's ftplib downloads pub/scen.bin from
# HOST and uploads it back as upload/back.bin in MODE (passive|active);
# its report goes to OUT/client.json; its exit status is returned
ftplib_round_trip() {
    on client python3 "$LAB_DIR/ftpclient.py" --host "$1" --mode "$2" \
        --get pub/scen.bin "$C_DIR/got.bin" --put "$C_DIR/got.bin" upload/back.bin \
        >"$OUT/client.json"
}

# round_trip_collect: stop the captures; the logs, the client's copy
# (OUT/got.bin) and the server's (OUT/server-got.bin) into OUT
round_trip_collect() {
    capture_stop
    collect_std
    fetch client "$C_DIR/got.bin" "$OUT/got.bin" 2>/dev/null || true
    uploaded back.bin "$OUT/server-got.bin"
}

# round_trip_checks WHO STATUS ADDR: WHO (the client program) exited with
# STATUS 0, both copies match the source, and the server saw only ADDR
# shellcheck disable=SC2119
round_trip_checks() {
    check "$1 finished (exit 0)" equals "$2" 0
    check "download intact (sha256)" equals "$(sha "$OUT/got.bin")" "$(sha "$(pub_src scen.bin)")"
    check "upload intact (sha256)" equals "$(sha "$OUT/server-got.bin")" "$(sha "$(pub_src scen.bin)")"
    check "the server saw only the client's address $3" equals "$(server_saw)" "$3"
}

# -- packet captures -----------------------------------------------------------
# capture NS IF NAME: tcpdump on one interface of namespace NS into
# OUT/pcap/NAME.pcap (lab/host.sh capture: bounded, count and 120 s, PID
# in RUN). Waits (bounded) until tcpdump listens.
capture() {
    ip netns exec "$1" bash "$LAB_DIR/host.sh" capture "$RUN" "$OUT/pcap" "$2" "$3" "$CAPTURE_FILTER"
}

# capture_on HOST IF NAME: the same on a host; a client's or server's
# machine keeps the file in its work directory until capture_stop
capture_on() {
    local h=$1 ifname=$2 name=$3
    if [ "$HOSTS" = ns ]; then
        capture "$(ns_of "$h")" "$ifname" "$name"
    elif [ "$h" = gateway ]; then
        host_sh gateway capture "$RUN" "$OUT/pcap" "$ifname" "$name" "$CAPTURE_FILTER"
    else
        local dir=$C_DIR
        [ "$h" = server ] && dir=$S_DIR
        host_sh "$h" capture "$dir" "$dir/pcap" "$ifname" "$name" "$CAPTURE_FILTER"
        echo "$h $dir $name" >>"$RUN/remote-captures"
    fi
}

# capture_stop: stop every capture (SIGTERM: tcpdump writes out and exits),
# and bring the client's and server's pcaps here
capture_stop() {
    local h dir name
    mkdir -p "$OUT/pcap"
    sleep 0.3   # the last FIN/ACKs
    bash "$LAB_DIR/host.sh" capture-stop "$RUN"
    [ -f "$RUN/remote-captures" ] || return 0
    for h in client server; do
        dir=$C_DIR
        [ "$h" = server ] && dir=$S_DIR
        grep -q "^$h " "$RUN/remote-captures" && host_sh "$h" capture-stop "$dir"
    done
    while read -r h dir name; do
        fetch "$h" "$dir/pcap/$name.pcap" "$OUT/pcap/$name.pcap" || say "  (no capture $name.pcap from $h)"
        fetch "$h" "$dir/pcap/$name.err" "$OUT/pcap/$name.err" 2>/dev/null || true
    done <"$RUN/remote-captures"
    rm -f "$RUN/remote-captures"
}

# capture_std: every host of the standard lab
# (PFX: a prefix for the file names, when a scenario captures twice)
PFX=""
capture_std() {
    capture_on client "$C_IF" "${PFX}client-$C_IF"
    capture_on gateway "$GW_CLIENT_IF" "${PFX}gw-c"
    capture_on gateway "$GW_SERVER_IF" "${PFX}gw-s"
    capture_on server "$S_IF" "${PFX}server-$S_IF"
}

mac_of() { ip -n "$1" -br link show "$2" | awk '{print $3}'; }
# gw_mac IF: the MAC address of the gateway's interface IF
gw_mac() { on gateway ip -br link show "$1" | awk '{print $3}'; }

# ladder_std TITLE [--caption TEXT]... : render the standard lab's captures
# (named with PFX) and ftpgate's log (when there is one) into
# OUT/ladder.{svg,txt,json}, or OUT/$LADDER_BASE.*; the end hosts' lifelines
# are named after their IPv4 addresses unless CLIENT_LABEL/SERVER_LABEL say
# otherwise
LADDER_BASE=ladder
ladder_std() {
    local title=$1; shift
    local log="" base=$OUT/$LADDER_BASE
    [ -s "$OUT/ftpgate.json" ] && log=",$OUT/ftpgate.json"
    "$LADDER" --title "$title" "$@" \
        --client-label "${CLIENT_LABEL:-client $CLIENT_IP}" --server-label "${SERVER_LABEL:-server $SERVER_IP}" \
        --gateway "${GATEWAY_LABEL:-gateway (ftpgate)},$OUT/pcap/${PFX}gw-c.pcap,$(gw_mac "$GW_CLIENT_IF"),$OUT/pcap/${PFX}gw-s.pcap,$(gw_mac "$GW_SERVER_IF")$log" \
        --svg "$base.svg" --text "$base.txt" --json "$base.json"
}

# collect_std: the logs of the standard lab into OUT (before teardown):
# ftpgate's from the gateway, vsftpd's from the server
collect_std() {
    local f
    [ -f "$RUN/ftpgate.log" ] && cp "$RUN/ftpgate.log" "$OUT/ftpgate.json"
    for f in vsftpd.log xferlog; do
        fetch server "$S_DIR/$f" "$OUT/$f" 2>/dev/null || true
    done
}

# server_saw [LOG]: the client addresses vsftpd logged (CONNECT lines), one
# per line, unique. vsftpd listens dual-stack (one [::]:21 socket), so it
# logs an IPv4 client in the mapped form ::ffff:192.0.2.10: that is the
# IPv4 client, and is shown as such; every other address stays as logged.
# shellcheck disable=SC2120  # called with and without arguments
server_saw() {
    sed -n 's/.*CONNECT: Client "\([^"]*\)".*/\1/p' "${1:-$OUT/vsftpd.log}" \
        | sed -E 's/^::ffff:([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)$/\1/' | sort -u
}

# conns_with SOCKET: the ladder's connections whose socket kind is SOCKET
conns_with() { python3 -c '
import json, sys
l = json.load(open(sys.argv[1]))
print(sum(1 for c in l["connections"] if c["socket"] == sys.argv[2]))' "${2:-$OUT/ladder.json}" "$1"; }

# gw_records MSG [KEY=VALUE...]: how many records of ftpgate's JSON log have
# message MSG and those keys
gw_records() { python3 -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    if r.get("msg") != sys.argv[2]: continue
    if all(str(r.get(k)) == v for k, v in (a.split("=", 1) for a in sys.argv[3:])): n += 1
print(n)' "$OUT/ftpgate.json" "$@"; }

at_least() { [ "$1" -ge "$2" ]; }
equals() { [ "$1" = "$2" ]; }

# -- two gateways side by side (scale-out, failover) ---------------------------
# topo2 G1_CLIENT_IP G1_SERVER_IP G2_CLIENT_IP G2_SERVER_IP: namespaces
#   LAB-c (client, eth0 CLIENT_IP/24)      LAB-s (server, eth0 SERVER_IP/24)
#   LAB-g1, LAB-g2 (each gw-c on the client LAN, gw-s on the server LAN,
#                   the lab's TPROXY rules and policy routing)
#   LAB-lc, LAB-ls (a bridge each: the client LAN and the server LAN)
# Routes are the scenario's to set. vsftpd runs in LAB-s.
G1_NS=$LAB-g1
G2_NS=$LAB-g2
topo2() {
    local g1c=$1 g1s=$2 g2c=$3 g2s=$4 ns lan
    for ns in "$C_NS" "$G1_NS" "$G2_NS" "$S_NS" "$LAB-lc" "$LAB-ls"; do
        ns_exists "$ns" && die "namespace $ns exists already"
        ip netns add "$ns"
        echo "$ns" >>"$RUN/namespaces"
        ip -n "$ns" link set lo up
    done
    for lan in lc ls; do
        ip -n "$LAB-$lan" link add br0 type bridge
        ip -n "$LAB-$lan" link set br0 up
    done
    # plug NS's interface IF into LAN (port name PORT on the bridge)
    plug() {
        local ns=$1 ifname=$2 lan=$3 port=$4
        ip -n "$ns" link add "$ifname" type veth peer name "$port" netns "$LAB-$lan"
        ip -n "$LAB-$lan" link set "$port" master br0 up
        ip -n "$ns" link set "$ifname" up
    }
    plug "$C_NS" eth0 lc p-c
    plug "$S_NS" eth0 ls p-s
    plug "$G1_NS" "$GW_CLIENT_IF" lc p-g1
    plug "$G1_NS" "$GW_SERVER_IF" ls p-g1
    plug "$G2_NS" "$GW_CLIENT_IF" lc p-g2
    plug "$G2_NS" "$GW_SERVER_IF" ls p-g2
    ip -n "$C_NS" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$S_NS" addr add "$SERVER_IP/24" dev eth0
    gw_router "$G1_NS" "$g1c" "$g1s"
    gw_router "$G2_NS" "$g2c" "$g2s"
    # the server's files, as netns.sh up makes them
    mkdir -p "$RUN/empty" "$RUN/ftproot/pub" "$RUN/ftproot/upload"
    chmod 755 "$RUN" "$RUN/empty" "$RUN/ftproot" "$RUN/ftproot/pub"
    bash "$LAB_DIR/netns.sh" vsftpd "$LAB" 2>/dev/null
    chown ftp "$RUN/ftproot/upload"
}

# gw_router NS CLIENT_SIDE_IP SERVER_SIDE_IP: addresses, and the set-up
# `ftpgate rules` prints for the lab's listeners (both families), as
# netns.sh up installs it in LAB-g: the policy routing and sysctls
# (--routing), and the strict rule set with gw-c as the client side, in
# the form the scenario runs with. Each gateway's scripts stay in OUT.
gw_router() {
    local ns=$1
    ip -n "$ns" addr add "$2/24" dev "$GW_CLIENT_IF"
    ip -n "$ns" addr add "$3/24" dev "$GW_SERVER_IF"
    gw_rules "$ns" routing
    gw_rules "$ns" "$FORM"
}

# gw_rules NS routing|nft|iptables [--undo]: `ftpgate rules` with the
# lab's arguments (the strict profile, gw-c the client side), its output
# kept as OUT/rules-NS-WHAT[-undo].txt and run in NS
gw_rules() {
    local ns=$1 what=$2 undo=${3:-} args=() file
    case "$what" in
    routing) args=(--routing) ;;
    nft) ;;
    iptables) args=(--iptables) ;;
    *) die "gw_rules: routing, nft or iptables (got '$what')" ;;
    esac
    [ -z "$undo" ] || args+=("$undo")
    file=$OUT/rules-${ns#"$LAB"-}-$what${undo:+-undo}.txt
    "$BIN" "${GW_LISTEN[@]}" rules --profile strict --client-interface "$GW_CLIENT_IF" "${args[@]}" >"$file" \
        || die "ftpgate rules ${args[*]} failed"
    case "$what" in
    nft) ip netns exec "$ns" nft -f "$file" ;;
    *) ip netns exec "$ns" sh "$file" >/dev/null ;;
    esac
}

# gw_start NS NAME [ARGS...]: ftpgate in NS, JSON log OUT/ftpgate-NAME.json
gw_start() {
    local ns=$1 name=$2 pid
    shift 2
    ip netns exec "$ns" "$BIN" "${GW_ARGS[@]}" "$@" \
        </dev/null >/dev/null 2>>"$OUT/ftpgate-$name.json" &
    pid=$!
    pidfile_write "$RUN/ftpgate-$name.pid" "$pid" "$BIN"
    wait_tcp_listen "$ns" "$GW_PORT" "" 100 || die "ftpgate in $ns did not listen on :$GW_PORT"
}

# capture2 PREFIX: every namespace of the two-gateway lab
capture2() {
    local p=$1
    capture "$C_NS" eth0 "${p}client-eth0"
    capture "$G1_NS" "$GW_CLIENT_IF" "${p}g1-gw-c"
    capture "$G1_NS" "$GW_SERVER_IF" "${p}g1-gw-s"
    capture "$G2_NS" "$GW_CLIENT_IF" "${p}g2-gw-c"
    capture "$G2_NS" "$GW_SERVER_IF" "${p}g2-gw-s"
    capture "$S_NS" eth0 "${p}server-eth0"
}

# ladder2 PREFIX BASE TITLE [--caption TEXT]...: both gateways' lifelines
ladder2() {
    local p=$1 base=$OUT/$2 title=$3 g spec=()
    shift 3
    for g in g1 g2; do
        local ns=$LAB-$g log=""
        [ -s "$OUT/ftpgate-$g.json" ] && log=",$OUT/ftpgate-$g.json"
        spec+=(--gateway "$g (ftpgate),$OUT/pcap/${p}$g-gw-c.pcap,$(mac_of "$ns" "$GW_CLIENT_IF"),$OUT/pcap/${p}$g-gw-s.pcap,$(mac_of "$ns" "$GW_SERVER_IF")$log")
    done
    "$LADDER" --title "$title" "$@" --client-label "client side" --server-label "server $SERVER_IP" \
        "${spec[@]}" --svg "$base.svg" --text "$base.txt" --json "$base.json"
}
