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
in_ns() { local ns=$1; shift; timeout -k 5 60 ip netns exec "$ns" "$@"; }

# -- the standard three-namespace lab (lab/netns.sh) -------------------------
std_up() {
    local form=${1:-$FORM}
    FTPGATE_LAB_OWNER=$$ bash "$LAB_DIR/netns.sh" up "$LAB" "$form" >/dev/null
    echo "$C_NS $G_NS $S_NS" >>"$RUN/namespaces"
    bash "$LAB_DIR/netns.sh" vsftpd "$LAB" 2>/dev/null
}

# std_gateway [ARGS...]: ftpgate in LAB-g with the JSON audit trail
std_gateway() {
    bash "$LAB_DIR/netns.sh" gateway "$LAB" "$BIN" --listen "0.0.0.0:$GW_PORT" \
        --log-level info --log-format json "$@" 2>/dev/null
}

# a random file of KiB kibibytes in the server's pub/
pub_file() {
    local name=$1 kib=$2
    head -c $((kib * 1024 + 321)) /dev/urandom >"$RUN/ftproot/pub/$name"
    chmod 644 "$RUN/ftproot/pub/$name"
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
# OUT/ladder.{svg,txt,json}, or OUT/$LADDER_BASE.*
LADDER_BASE=ladder
ladder_std() {
    local title=$1; shift
    local log="" base=$OUT/$LADDER_BASE
    [ -s "$OUT/ftpgate.json" ] && log=",$OUT/ftpgate.json"
    "$LADDER" --title "$title" "$@" \
        --client-label "client $CLIENT_IP" --server-label "server $SERVER_IP" \
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

# the client addresses vsftpd logged (CONNECT lines), one per line, unique
server_saw() { sed -n 's/.*CONNECT: Client "\([^"]*\)".*/\1/p' "$OUT/vsftpd.log" | sort -u; }

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
