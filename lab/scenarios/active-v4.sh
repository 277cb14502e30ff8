#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: PORT download and upload through ftpgate (IPv4): the server's data connection meets a listener wearing the client's address
# The client (python's ftplib) downloads and uploads in active mode.
# ftpgate listens on the client's address at a port of its own (a foreign
# listener, reached through the socket-match divert) and tells the server
# that port in the PORT; the server connects back there, and ftpgate
# connects on to the client's own port from the server's port 20. Two
# ports, so the two legs are two conntrack entries.
scenario_main() {
    need_cmds tcpdump python3
    round_trip_up
    step "client: PORT, RETR pub/scen.bin, STOR upload/back.bin"
    local res=0
    ftplib_round_trip "$SERVER_IP" active || res=$?
    round_trip_collect
    ladder_std "active-v4: PORT through ftpgate" \
        --caption "The server connects to the PORT it was told: ftpgate's foreign listener, with the client's address and a port of ftpgate's;" \
        --caption "ftpgate's connection on to the client's own port leaves from the server's address and port 20."
    step "what happened"
    say "  client: $(cat "$OUT/client.json")"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    round_trip_checks client "$res" "$CLIENT_IP"
    check "the client's data connections came from $SERVER_IP:20" python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["transfers"]
sys.exit(0 if len(t) == 2 and all(x["peer"] == ["198.51.100.10", 20] for x in t) else 1)' "$OUT/client.json"
    check "control: TPROXY redirect on the client side" at_least "$(conns_with tproxy-redirect)" 1
    check "data: the server met foreign listeners (2 transfers)" at_least "$(conns_with foreign-listener)" 2
    check "foreign connects: control to the server, 2 data to the client" at_least "$(conns_with foreign-connect)" 3
    check "ftpgate logged 2 active transfers, ok" equals "$(gw_records transfer mode=active result=ok)" 2
}
