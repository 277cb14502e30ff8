#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash disable=SC2034  # sourced by lab/scenario
# Helpers for the scenario scripts (lab/scenarios/NAME.sh). Sourced by
# lab/scenario after lab/lib.sh, with these set:
#   SCENARIO   the scenario's name        LAB   the lab's name (namespaces LAB-*)
#   OUT        the artefact directory     RUN   the lab's run directory
#   BIN        ftpgate                    LADDER ftpgate-ladder
#   FORM       nft|iptables (the TPROXY rule set)
#
# Every process a scenario starts has a pidfile in RUN (lib.sh's format), so
# teardown stops exactly those; every namespace it creates is listed in
# RUN/namespaces, so teardown removes exactly those.

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

# -- the standard three-namespace lab (lab/netns.sh) -------------------------
std_up() {
    local form=${1:-$FORM}
    FTPGATE_LAB_OWNER=$$ bash "$LAB_DIR/netns.sh" up "$LAB" "$form" >/dev/null
    echo "$C_NS $G_NS $S_NS" >>"$RUN/namespaces"
    bash "$LAB_DIR/netns.sh" vsftpd "$LAB" 2>/dev/null
}

# std_ipv6_settled: wait (at most 3 s) until no IPv6 address of the
# standard lab is tentative. The lab's own addresses skip duplicate address
# detection (nodad), but each interface's link-local address still runs it
# for about a second, and a router cannot send neighbour solicitations
# before it has one: the first connection of an IPv6 scenario would show
# a second's wait that is no part of the story.
std_ipv6_settled() {
    local i ns busy
    for ((i = 0; i < 30; i++)); do
        busy=""
        for ns in "$C_NS" "$G_NS" "$S_NS"; do
            [ -z "$(ip -n "$ns" -6 addr show tentative)" ] || busy=$ns
        done
        [ -n "$busy" ] || return 0
        sleep 0.1
    done
    say "  (IPv6 addresses in $busy still tentative after 3 s; going on)"
}

# std_gateway [ARGS...]: ftpgate in LAB-g with the JSON audit trail
std_gateway() {
    bash "$LAB_DIR/netns.sh" gateway "$LAB" "$BIN" "${GW_ARGS[@]}" "$@" 2>/dev/null
}

# a random file of KiB kibibytes in the server's pub/
pub_file() {
    local name=$1 kib=$2
    head -c $((kib * 1024 + 321)) /dev/urandom >"$RUN/ftproot/pub/$name"
    chmod 644 "$RUN/ftproot/pub/$name"
    # the source's sum stays with the artefacts (the tests compare with it)
    sha "$RUN/ftproot/pub/$name" >"$OUT/$name.sha256"
}

# -- packet captures -----------------------------------------------------------
# capture NS IF NAME: tcpdump on one interface of NS into OUT/pcap/NAME.pcap,
# in the background, bounded (count, and 120 s at most), its PID recorded.
# Waits (bounded) until tcpdump listens.
capture() {
    local ns=$1 ifname=$2 name=$3 pid i
    mkdir -p "$OUT/pcap"
    ip netns exec "$ns" timeout 120 tcpdump -i "$ifname" -s 512 -c 50000 -U -n -Z root --immediate-mode \
        -w "$OUT/pcap/$name.pcap" "tcp or vrrp" 2>"$OUT/pcap/$name.err" &
    pid=$!
    pidfile_write "$RUN/capture-$name.pid" "$pid" "$(command -v timeout)"
    for ((i = 0; i < 50; i++)); do
        grep -q "listening on" "$OUT/pcap/$name.err" 2>/dev/null && return 0
        sleep 0.1
    done
    die "tcpdump on $ns/$ifname did not start: $(cat "$OUT/pcap/$name.err")"
}

# capture_stop: stop every capture (SIGTERM: tcpdump writes out and exits)
capture_stop() {
    local f
    sleep 0.3   # the last FIN/ACKs
    for f in "$RUN"/capture-*.pid; do [ -e "$f" ] && stop_pidfile "$f" 30; done
    return 0
}

# capture_std: every namespace of the standard lab
# (PFX: a prefix for the file names, when a scenario captures twice)
PFX=""
capture_std() {
    capture "$C_NS" eth0 "${PFX}client-eth0"
    capture "$G_NS" "$GW_CLIENT_IF" "${PFX}gw-c"
    capture "$G_NS" "$GW_SERVER_IF" "${PFX}gw-s"
    capture "$S_NS" eth0 "${PFX}server-eth0"
}

mac_of() { ip -n "$1" -br link show "$2" | awk '{print $3}'; }

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
        --gateway "${GATEWAY_LABEL:-gateway (ftpgate)},$OUT/pcap/${PFX}gw-c.pcap,$(mac_of "$G_NS" "$GW_CLIENT_IF"),$OUT/pcap/${PFX}gw-s.pcap,$(mac_of "$G_NS" "$GW_SERVER_IF")$log" \
        --svg "$base.svg" --text "$base.txt" --json "$base.json"
}

# collect_std: the logs of the standard lab into OUT (before teardown)
collect_std() {
    local f
    for f in ftpgate.log vsftpd.log xferlog; do
        [ -f "$RUN/$f" ] || continue
        case "$f" in ftpgate.log) cp "$RUN/$f" "$OUT/ftpgate.json" ;; *) cp "$RUN/$f" "$OUT/$f" ;; esac
    done
}

# server_saw [LOG]: the client addresses vsftpd logged (CONNECT lines), one
# per line, unique. vsftpd listens dual-stack (one [::]:21 socket), so it
# logs an IPv4 client in the mapped form ::ffff:192.0.2.10: that is the
# IPv4 client, and is shown as such; every other address stays as logged.
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
