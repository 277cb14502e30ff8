#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: no: needs two gateways, an active/standby keepalived pair; lab/Vagrantfile has one gateway
# summary: active/standby ftpgate pair with keepalived (VRRP); the active one fails mid-transfer: new sessions go through the standby, the running one is lost
# g1 and g2 each run ftpgate behind the lab's TPROXY rules and keepalived
# (VRRP, its own config and pidfiles, never a system service) for two
# virtual addresses: 192.0.2.1 on the client LAN and 198.51.100.1 on the
# server LAN, the default routes of client and server. g1 has the higher
# priority and is master. A slow download runs through g1; then g1 fails
# (both its cables are pulled: the bridge ports go down). g2 stops hearing
# g1's adverts, takes both addresses and announces them (gratuitous ARP).
#
# What happens: new sessions work through g2 within a few seconds. The
# running session is lost: its sockets were in g1's ftpgate, g2 has none
# for it (its control packets are answered with a reset by g2's TPROXY
# listener, its data packets dropped). That is so for every userspace ALG:
# the TCP connections end in the gateway's process, and no kernel state
# sync (conntrackd) carries them over.

keepalived_conf() {
    local name=$1 prio=$2
    cat <<CONF
global_defs {
    router_id ftpgate-lab-$name
    vrrp_garp_master_repeat 3
}
vrrp_sync_group lab {
    group {
        client_lan
        server_lan
    }
}
vrrp_instance client_lan {
    state BACKUP
    interface $GW_CLIENT_IF
    virtual_router_id 51
    priority $prio
    advert_int 1
    virtual_ipaddress {
        192.0.2.1/24 dev $GW_CLIENT_IF
    }
}
vrrp_instance server_lan {
    state BACKUP
    interface $GW_SERVER_IF
    virtual_router_id 52
    priority $prio
    advert_int 1
    virtual_ipaddress {
        198.51.100.1/24 dev $GW_SERVER_IF
    }
}
CONF
}

# keepalived_start NS NAME PRIORITY
keepalived_start() {
    local ns=$1 name=$2 prio=$3 bin pid
    bin=$(command -v keepalived)
    keepalived_conf "$name" "$prio" >"$RUN/keepalived-$name.conf"
    ip netns exec "$ns" "$bin" --dont-fork --log-console --log-detail --no-syslog --vrrp \
        --use-file "$RUN/keepalived-$name.conf" --pid "$RUN/keepalived-$name.main" \
        --vrrp_pid "$RUN/keepalived-$name.vrrp" </dev/null >>"$OUT/keepalived-$name.log" 2>&1 &
    pid=$!
    pidfile_write "$RUN/keepalived-$name.pid" "$pid" "$bin"
}

# has_vip NS: the namespace holds the client LAN's virtual address
has_vip() { ip -n "$1" -br addr show dev "$GW_CLIENT_IF" | grep -q ' 192.0.2.1/24'; }

scenario_main() {
    need_cmds tcpdump curl python3 keepalived
    step "two gateways on shared LANs, ftpgate in each, keepalived (VRRP) for 192.0.2.1 and 198.51.100.1"
    topo2 192.0.2.2 198.51.100.2 192.0.2.3 198.51.100.3
    ip -n "$C_NS" route add default via 192.0.2.1
    ip -n "$S_NS" route add default via 198.51.100.1
    gw_start "$G1_NS" g1
    gw_start "$G2_NS" g2
    keepalived_start "$G1_NS" g1 150
    keepalived_start "$G2_NS" g2 100
    local i
    for ((i = 0; i < 100; i++)); do has_vip "$G1_NS" && break; sleep 0.1; done
    has_vip "$G1_NS" || die "g1 did not become VRRP master within 10 s (see $OUT/keepalived-g1.log)"
    sleep 1   # the first gratuitous ARPs
    pub_file small.bin 64
    pub_file slow.bin 32768
    capture2 ""

    step "a slow download through g1 (the master), then g1 fails mid-transfer"
    ip netns exec "$C_NS" timeout 40 curl -sS --limit-rate 1M --speed-limit 1 --speed-time 5 --max-time 30 \
        -o "$OUT/running.bin" "ftp://$SERVER_IP/pub/slow.bin" 2>"$OUT/running.err" &
    local running=$!
    sleep 2
    local cut t_cut t_ok="" tries=0 res_running=0
    t_cut=$(date +%s.%N)
    ip -n "$LAB-lc" link set p-g1 down
    ip -n "$LAB-ls" link set p-g1 down
    say "  $(date +%T) g1's cables pulled (bridge ports down) while $(stat -c %s "$OUT/running.bin" 2>/dev/null || echo 0) bytes of slow.bin had arrived"

    step "new sessions, one a second, until one works (at most 20)"
    for ((i = 0; i < 20; i++)); do
        tries=$((i + 1))
        if ip netns exec "$C_NS" curl -sS --connect-timeout 1 --max-time 3 -o "$OUT/after.bin" \
            "ftp://$SERVER_IP/pub/small.bin" 2>>"$OUT/after.err"; then
            t_ok=$(date +%s.%N)
            break
        fi
        sleep 1
    done
    wait "$running" || res_running=$?
    capture_stop
    cp "$RUN/vsftpd.log" "$OUT/vsftpd.log"
    ladder2 "" ladder "failover: g1 fails mid-transfer, g2 takes over (VRRP)" \
        --caption "The running session's sockets were in g1's ftpgate: after the switch its packets reach g2, which holds nothing for them." \
        --caption "A new session after the switch is intercepted by g2 and works: the server still sees the client's address."
    cut=$(awk -v a="$t_cut" -v b="${t_ok:-$t_cut}" 'BEGIN{printf "%.1f", b - a}')

    step "what happened"
    say "  g2 holds the virtual addresses now: $(has_vip "$G2_NS" && echo yes || echo no)"
    say "  the running download: curl exit $res_running after $(stat -c %s "$OUT/running.bin" 2>/dev/null || echo 0) of $(stat -c %s "$RUN/ftproot/pub/slow.bin") bytes ($(tr '\n' ' ' <"$OUT/running.err"))"
    say "  the first new session that worked: attempt $tries, ${cut}s after the cut"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    printf '%s\n' "$cut" >"$OUT/failover-seconds.txt"
    check "g2 became master (holds 192.0.2.1)" has_vip "$G2_NS"
    check "the running session was lost (curl failed, file incomplete)" bash -c \
        "[ '$res_running' != 0 ] && [ \"\$(stat -c %s '$OUT/running.bin' 2>/dev/null || echo 0)\" -lt \"\$(stat -c %s '$RUN/ftproot/pub/slow.bin')\" ]"
    check "a new session worked through the standby" test -n "$t_ok"
    check "within 10 s of the failure" awk -v s="$cut" -v ok="${t_ok:+1}" 'BEGIN{exit !(ok && s <= 10)}'
    check "the new session's download intact (sha256)" equals "$(sha "$OUT/after.bin")" "$(sha "$RUN/ftproot/pub/small.bin")"
    check "g2's ftpgate carried that transfer" at_least "$(grep -c '"msg":"transfer".*"result":"ok"' "$OUT/ftpgate-g2.json" || true)" 1
    check "the server saw only the client's address $CLIENT_IP" equals "$(server_saw)" "$CLIENT_IP"
    check "the ladder shows the lost session's packets reaching g2 without a socket" python3 -c '
import json, sys
conns = json.load(open(sys.argv[1]))["connections"]
sys.exit(0 if any(c["gateway"].startswith("g2") and c["socket"] in ("stray", "no-socket", "unknown") for c in conns) else 1)' "$OUT/ladder.json"
}
