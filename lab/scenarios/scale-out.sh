#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: no: needs two gateways side by side and each LAN as a bridge; lab/Vagrantfile has one gateway
# summary: two ftpgate gateways in parallel, each owning half of the client addresses; and what naive ECMP breaks
# A transparent gateway holds its sessions' sockets: every packet of a
# session (control and data, both directions) must reach the gateway that
# holds them, and the server answers to the client's address. The design
# here uses plain kernel routing: g1 owns the clients in 192.0.2.0/25, g2
# those in 192.0.2.128/25. The client side routes by source address (here
# the client host itself, with `ip rule from`; in a real network the
# client LAN's router), the server side routes each half back via its
# gateway. Both directions of every flow of a session then cross the same
# gateway, whatever the ports.
#
# Phase 1 (design): one session from each half, captured: the ladder shows
# each session's connections all on its own gateway.
# Phase 2 (measure): 8 parallel downloads, all through g1, then spread
# over g1 and g2; the aggregate rate of each.
# Phase 3 (naive ECMP): both sides spread flows over g1 and g2 by a per-flow
# hash of addresses and ports. A session's connections hash independently:
# ftpgate's connection to the server is answered through the other gateway,
# or the client's passive data connection lands on the gateway that has no
# listener. Sessions fail; the ladder-ecmp diagram shows where.

LOW=(192.0.2.10 192.0.2.11 192.0.2.12 192.0.2.13)
HIGH=(192.0.2.138 192.0.2.139 192.0.2.140 192.0.2.141)
MIB=${SCALE_OUT_MIB:-64}

# routes MODE: split (each gateway its half), one (everything via g1),
# ecmp (per-flow hash over both, on both sides)
routes() {
    local mode=$1 t
    for t in 101 102; do ip -n "$C_NS" route flush table "$t" 2>/dev/null || true; done
    ip -n "$C_NS" route del default 2>/dev/null || true
    ip -n "$S_NS" route del 192.0.2.0/25 2>/dev/null || true
    ip -n "$S_NS" route del 192.0.2.128/25 2>/dev/null || true
    ip -n "$S_NS" route del 192.0.2.0/24 2>/dev/null || true
    case "$mode" in
    split)
        ip -n "$C_NS" route add default via 192.0.2.1
        ip -n "$C_NS" route add default via 192.0.2.1 table 101
        ip -n "$C_NS" route add default via 192.0.2.129 table 102
        ip -n "$S_NS" route add 192.0.2.0/25 via 198.51.100.1
        ip -n "$S_NS" route add 192.0.2.128/25 via 198.51.100.2
        ;;
    one)
        ip -n "$C_NS" route add default via 192.0.2.1
        ip -n "$C_NS" route add default via 192.0.2.1 table 101
        ip -n "$C_NS" route add default via 192.0.2.1 table 102
        ip -n "$S_NS" route add 192.0.2.0/24 via 198.51.100.1
        ;;
    ecmp)
        ip -n "$C_NS" route add default nexthop via 192.0.2.1 nexthop via 192.0.2.129
        ip -n "$C_NS" route add table 101 default nexthop via 192.0.2.1 nexthop via 192.0.2.129
        ip -n "$C_NS" route add table 102 default nexthop via 192.0.2.1 nexthop via 192.0.2.129
        ip -n "$S_NS" route add 192.0.2.0/24 nexthop via 198.51.100.1 nexthop via 198.51.100.2
        ;;
    esac
    # the routes of both sides changed: old neighbour and route cache
    # entries must not decide the next flows
    ip -n "$C_NS" route flush cache 2>/dev/null || true
    ip -n "$S_NS" route flush cache 2>/dev/null || true
}

# parallel_get OUTBASE MAXTIME FILE ADDR...: one curl per source address,
# all at once; prints "ok failed seconds bytes"
parallel_get() {
    local base=$1 maxtime=$2 file=$3 a pids=() i=0 ok=0 failed=0 t0 t1 bytes=0 n
    shift 3
    t0=$(date +%s.%N)
    for a in "$@"; do
        ip netns exec "$C_NS" curl -sS --interface "$a" --connect-timeout 3 --max-time "$maxtime" \
            -o /dev/null -w '%{size_download}\n' "ftp://$SERVER_IP/pub/$file" >"$base.$i" 2>"$base.$i.err" &
        pids+=($!)
        i=$((i + 1))
    done
    for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
        n=$(head -n 1 "$base.$i" 2>/dev/null || echo 0)
        bytes=$((bytes + ${n:-0}))
    done
    t1=$(date +%s.%N)
    echo "$ok $failed $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}') $bytes"
}

scenario_main() {
    need_cmds tcpdump curl python3
    step "two gateways: client LAN and server LAN bridges, g1 ($FORM rules) and g2"
    topo2 192.0.2.1 198.51.100.1 192.0.2.129 198.51.100.2
    local a
    for a in "${LOW[@]:1}" "${HIGH[@]}"; do ip -n "$C_NS" addr add "$a/24" dev eth0; done
    ip -n "$C_NS" rule add from 192.0.2.0/25 lookup 101
    ip -n "$C_NS" rule add from 192.0.2.128/25 lookup 102
    ns_sysctl "$C_NS" net.ipv4.fib_multipath_hash_policy 1
    ns_sysctl "$S_NS" net.ipv4.fib_multipath_hash_policy 1
    gw_start "$G1_NS" g1
    gw_start "$G2_NS" g2
    pub_file small.bin 256
    head -c $((MIB * 1024 * 1024)) /dev/urandom >"$RUN/ftproot/pub/big.bin"
    chmod 644 "$RUN/ftproot/pub/big.bin"

    step "phase 1 (design): one session from each half of the client addresses"
    routes split
    capture2 ""
    local r1=0 r2=0
    in_ns "$C_NS" curl -sS --interface 192.0.2.10 --max-time 20 -o "$OUT/low.bin" "ftp://$SERVER_IP/pub/small.bin" || r1=$?
    in_ns "$C_NS" curl -sS --interface 192.0.2.138 --max-time 20 -o "$OUT/high.bin" "ftp://$SERVER_IP/pub/small.bin" || r2=$?
    capture_stop
    ladder2 "" ladder "scale-out: each gateway owns half of the client addresses" \
        --caption "g1 holds the sessions of 192.0.2.0/25, g2 those of 192.0.2.128/25: source routing on the client side, two routes on the server." \
        --caption "Every connection of a session, both legs and both directions, meets the gateway that holds its sockets."

    step "phase 2 (measure): 8 parallel downloads of $MIB MiB, through g1 alone, then spread over g1 and g2"
    local one two
    routes one
    one=$(parallel_get "$OUT/one" 60 big.bin "${LOW[@]}" "${HIGH[@]}")
    routes split
    two=$(parallel_get "$OUT/two" 60 big.bin "${LOW[@]}" "${HIGH[@]}")

    step "phase 3 (naive ECMP): 8 sessions, flows hashed over both gateways on both sides"
    routes ecmp
    capture2 ecmp-
    local ecmp
    ecmp=$(parallel_get "$OUT/ecmp" 8 small.bin "${LOW[@]}" "${HIGH[@]}")
    capture_stop
    ladder2 ecmp- ladder-ecmp "scale-out with naive per-flow ECMP: what breaks" \
        --caption "Each flow is hashed on its own: a session's connections land on different gateways," \
        --caption "and a gateway drops what it holds no socket for (no listener, or a reply to another gateway's connection)."
    cp "$RUN/vsftpd.log" "$OUT/vsftpd.log"

    step "what happened"
    local rate1 rate2
    rate1=$(awk -v s="$(cut -d' ' -f3 <<<"$one")" -v b="$(cut -d' ' -f4 <<<"$one")" 'BEGIN{printf "%.0f", b/1048576/s}')
    rate2=$(awk -v s="$(cut -d' ' -f3 <<<"$two")" -v b="$(cut -d' ' -f4 <<<"$two")" 'BEGIN{printf "%.0f", b/1048576/s}')
    {
        echo "  8 parallel downloads of $MIB MiB (ok failed seconds bytes):"
        echo "    one gateway (g1):      $one   -> $rate1 MiB/s aggregate"
        echo "    two gateways (split):  $two   -> $rate2 MiB/s aggregate"
        echo "    (one machine, $(nproc) cores shared by both gateways, client and server: the figures show the design holds under load, not the gain of a second box)"
        echo "  naive ECMP, 8 sessions (ok failed seconds bytes): $ecmp"
    } | tee "$OUT/measurements.txt" | tee -a "$OUT/summary.txt" >/dev/null
    cat "$OUT/measurements.txt"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    check "design: both sessions finished" equals "$r1$r2" 00
    check "design: downloads intact (sha256)" equals "$(sha "$OUT/low.bin")$(sha "$OUT/high.bin")" \
        "$(sha "$RUN/ftproot/pub/small.bin")$(sha "$RUN/ftproot/pub/small.bin")"
    check "design: every connection of 192.0.2.10's session on g1, of 192.0.2.138's on g2, none dropped" python3 -c '
import json, sys
conns = json.load(open(sys.argv[1]))["connections"]
def owner(c):
    return "g1" if c["initiator"].startswith("192.0.2.10:") or c["responder"].startswith("192.0.2.10:") else "g2"
ok = len(conns) == 8 and all(c["gateway"].startswith(owner(c)) for c in conns) \
    and all(c["socket"] in ("tproxy-redirect", "foreign-listener", "foreign-connect") for c in conns)
sys.exit(0 if ok else 1)' "$OUT/ladder.json"
    check "design: the server saw both halves' addresses (192.0.2.10 and 192.0.2.138)" \
        equals "$(server_saw | grep -cxF -e 192.0.2.10 -e 192.0.2.138)" 2
    check "measure: 8 of 8 through one gateway, every byte" equals "$(cut -d' ' -f1,2,4 <<<"$one")" "8 0 $((8 * MIB * 1048576))"
    check "measure: 8 of 8 through two gateways, every byte" equals "$(cut -d' ' -f1,2,4 <<<"$two")" "8 0 $((8 * MIB * 1048576))"
    check "measure: both gateways carried transfers in the split run" bash -c \
        "[ \"\$(grep -c '\"msg\":\"transfer\"' '$OUT/ftpgate-g2.json')\" -ge 4 ]"
    check "naive ECMP: sessions failed" at_least "$(cut -d' ' -f2 <<<"$ecmp")" 1
    check "naive ECMP: the ladder shows connections a gateway held no socket for" python3 -c '
import json, sys
conns = json.load(open(sys.argv[1]))["connections"]
sys.exit(0 if any(c["socket"] in ("no-socket", "stray") for c in conns) else 1)' "$OUT/ladder-ecmp.json"
}
