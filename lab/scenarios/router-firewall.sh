#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: ftpgate beside a router rule set that drops ct state invalid in every hook: passive and active transfers, nothing dropped, every leg a conntrack entry of its own
# Most routers drop what conntrack finds INVALID, so ftpgate must never make
# a packet of its own look INVALID. Here every hook of the gateway drops
# INVALID and counts it, and passive and active sessions download and
# upload through ftpgate. Each leg ftpgate opens is a flow of its own: in
# active mode the server is told a port of ftpgate's on the client's
# address (the PORT is rewritten), and ftpgate connects on to the port the
# client announced. server:20 -> client:r and server:20 -> client:q are two
# conntrack entries. Had ftpgate passed the client's own port on, both legs
# would have had one tuple and shared one entry, whose window tracking
# marks the second leg's segments INVALID: earlier builds lost about half
# of their active transfers this way.

# router_rules: the router's own firewall, beside ftpgate's rules (removed
# at teardown)
router_rules() {
    local hook prio table chain table_chain
    if [ "$FORM" = nft ]; then
        {
            echo "table inet routerfw {"
            for hook in prerouting input forward output; do
                prio=0
                [ "$hook" = prerouting ] && prio=-150
                echo "    chain c_$hook {"
                echo "        type filter hook $hook priority $prio; policy accept;"
                echo "        ct state invalid counter drop"
                echo "    }"
            done
            echo "}"
        } >"$RUN/routerfw.nft"
        on gateway nft -f "$RUN/routerfw.nft"
        undo_later gateway nft delete table inet routerfw
    else
        for table_chain in mangle:PREROUTING filter:INPUT filter:FORWARD filter:OUTPUT; do
            table=${table_chain%%:*} chain=${table_chain#*:}
            on gateway iptables -w 5 -t "$table" -I "$chain" 1 -m conntrack --ctstate INVALID -j DROP
            undo_later gateway iptables -w 5 -t "$table" -D "$chain" -m conntrack --ctstate INVALID -j DROP
        done
    fi
}

# invalid_dropped: packets the router's INVALID rules dropped so far
invalid_dropped() {
    if [ "$FORM" = nft ]; then
        on gateway nft list table inet routerfw | awk '/packets/ { for (i = 1; i < NF; i++) if ($i == "packets") n += $(i + 1) } END { print n + 0 }'
    else
        { on gateway iptables -w 5 -t mangle -L -v -x -n; on gateway iptables -w 5 -t filter -L -v -x -n; } \
            | awk '/INVALID/ { n += $1 } END { print n + 0 }'
    fi
}

# legs_apart LADDER_JSON: prints the active data connections, both legs,
# and fails if a server-side one has the tuple of a client-side one
# (each channel's two legs, paired by session and data id: the kernel may
# give a later channel's listener the port an earlier channel's client used,
# a tuple whose conntrack entry is over; only one channel's own legs must
# differ)
legs_apart() { python3 - "$1" <<'PY'
import json, sys
conns = json.load(open(sys.argv[1]))["connections"]
active = [c for c in conns if c["initiator"].endswith(":20")]
legs = {}
for c in active:
    legs.setdefault((c.get("session"), c.get("data")), {})[c["leg"]] = (c["initiator"], c["responder"])
ok = len(legs) == 2
for key, pair in sorted(legs.items(), key=lambda kv: str(kv[0])):
    server, client = pair.get("server side"), pair.get("client side")
    for leg, t in (("server's connection to ftpgate", server), ("ftpgate's connection to the client", client)):
        if t:
            print(f"  {leg}: {t[0]} -> {t[1]}")
    ok = ok and server is not None and client is not None and server != client
sys.exit(0 if ok else 1)
PY
}

scenario_main() {
    need_cmds tcpdump python3
    round_trip_up
    step "the router's own firewall: drop ct state invalid in every hook ($FORM)"
    router_rules
    local mode res=0
    for mode in passive active; do
        step "client: $mode, RETR pub/scen.bin, STOR upload/$mode.bin"
        on client python3 "$LAB_DIR/ftpclient.py" --host "$SERVER_IP" --mode "$mode" \
            --get pub/scen.bin "$C_DIR/$mode.bin" --put "$C_DIR/$mode.bin" "upload/$mode.bin" \
            >"$OUT/$mode.json" || res=1
        fetch client "$C_DIR/$mode.bin" "$OUT/$mode.bin" 2>/dev/null || true
        uploaded "$mode.bin" "$OUT/server-$mode.bin"
    done
    local dropped
    dropped=$(invalid_dropped)
    round_trip_collect
    ladder_std "router-firewall: ftpgate beside ct state invalid drop" \
        --caption "Every hook of the gateway drops what conntrack finds INVALID; ftpgate's legs are flows of their own:" \
        --caption "in active mode the server connects to a port of ftpgate's on the client's address, ftpgate on to the client's own port."
    step "what happened"
    say "  INVALID packets dropped by the router's rules: $dropped"
    local legs line
    legs=$(legs_apart "$OUT/ladder.json" || true)
    while IFS= read -r line; do say "$line"; done <<<"$legs"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    check "both sessions finished (exit 0)" equals "$res" 0
    for mode in passive active; do
        check "$mode download intact (sha256)" equals "$(sha "$OUT/$mode.bin")" "$(sha "$(pub_src scen.bin)")"
        check "$mode upload intact (sha256)" equals "$(sha "$OUT/server-$mode.bin")" "$(sha "$(pub_src scen.bin)")"
    done
    check "the router's rules dropped no packet as INVALID" equals "$dropped" 0
    check "active mode: the two legs of each data channel have tuples of their own" legs_apart "$OUT/ladder.json"
    check "the server saw only the client's address $CLIENT_IP" equals "$(server_saw)" "$CLIENT_IP"
    check "ftpgate logged 4 transfers, ok" equals "$(gw_records transfer result=ok)" 4
}
