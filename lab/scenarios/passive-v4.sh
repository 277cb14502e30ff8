#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: PASV download and upload through ftpgate (IPv4): TPROXY on port 21, a foreign listener for the data
# The client (python's ftplib) logs in, downloads a file and uploads it back
# in passive mode. ftpgate terminates every connection: the control
# connection through the TPROXY rule, the data connection at a listener
# bound to the server's address (reached through the socket-match divert),
# and its own connections to the server leave from the client's address.
scenario_main() {
    need_cmds tcpdump python3
    round_trip_up
    step "client: PASV, RETR pub/scen.bin, STOR upload/back.bin"
    local res=0
    ftplib_round_trip "$SERVER_IP" passive || res=$?
    round_trip_collect
    ladder_std "passive-v4: PASV through ftpgate" \
        --caption "ftpgate terminates both legs; its server-side sockets wear the client's address, so the server logs $CLIENT_IP."
    step "what happened"
    say "  client: $(cat "$OUT/client.json")"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    round_trip_checks client "$res" "$CLIENT_IP"
    check "control: TPROXY redirect on the client side" at_least "$(conns_with tproxy-redirect)" 1
    check "data: foreign listener (socket-match divert), 2 transfers" at_least "$(conns_with foreign-listener)" 2
    check "server side: foreign connects from the client's address (control + 2 data)" at_least "$(conns_with foreign-connect)" 3
    check "ftpgate logged 2 passive transfers, ok" equals "$(gw_records transfer mode=passive result=ok)" 2
}
