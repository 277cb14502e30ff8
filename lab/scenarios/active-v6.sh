#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: EPRT download and upload through ftpgate over IPv6: the server's data connection from [2001:db8:2::10]:20 meets a listener wearing the client's IPv6 address
# The client (python's ftplib, which sends EPRT |2|...| on an IPv6
# connection) downloads and uploads in active mode. ftpgate listens with
# the client's IPv6 address at a port of its own (a foreign listener,
# reached through the ip6 socket-match divert) and tells the server that
# port in the EPRT; the server connects back there from port 20, and
# ftpgate connects on to the client's own port from the server's address
# and port 20.
# shellcheck disable=SC2034  # the lifelines' names (ladder_std)
CLIENT_LABEL="client $CLIENT_IP6"
# shellcheck disable=SC2034
SERVER_LABEL="server $SERVER_IP6"
scenario_main() {
    need_cmds tcpdump python3
    round_trip_up v6
    step "client: [$SERVER_IP6]:21, EPRT, RETR pub/scen.bin, EPRT, STOR upload/back.bin"
    local res=0
    ftplib_round_trip "$SERVER_IP6" active || res=$?
    round_trip_collect
    ladder_std "active-v6: EPRT through ftpgate over IPv6" \
        --caption "The server connects to the EPRT it was told: ftpgate's foreign listener, wearing $CLIENT_IP6 at a port of ftpgate's;" \
        --caption "ftpgate's connection on to the client's own port leaves from [$SERVER_IP6]:20."
    step "what happened"
    say "  client: $(cat "$OUT/client.json")"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    round_trip_checks client "$res" "$CLIENT_IP6"
    check "the client's data connections came from [$SERVER_IP6]:20" python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["transfers"]
sys.exit(0 if len(t) == 2 and all(x["peer"] == ["2001:db8:2::10", 20] for x in t) else 1)' "$OUT/client.json"
    check "every captured connection is IPv6" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["connections"]
sys.exit(0 if c and all(x["initiator"].startswith("[") and x["responder"].startswith("[") for x in c) else 1)' "$OUT/ladder.json"
    check "the client sent EPRT |2|$CLIENT_IP6|" grep -q "\"#[0-9]* EPRT |2|$CLIENT_IP6|" "$OUT/ladder.json"
    check "control: TPROXY redirect on the client side" equals "$(conns_with tproxy-redirect)" 1
    check "data: the server's connections from [$SERVER_IP6]:20 met foreign listeners on [$CLIENT_IP6] (2 transfers)" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["connections"]
ls = [x for x in c if x["socket"] == "foreign-listener"]
sys.exit(0 if len(ls) == 2 and all(x["leg"] == "server side" and x["initiator"] == "[2001:db8:2::10]:20"
                                   and x["responder"].startswith("[2001:db8:1::10]:") for x in ls) else 1)' "$OUT/ladder.json"
    check "foreign connects: control to the server, 2 data to the client from [$SERVER_IP6]:20" python3 -c '
import json, sys
c = [x for x in json.load(open(sys.argv[1]))["connections"] if x["socket"] == "foreign-connect"]
to_client = [x for x in c if x["leg"] == "client side"]
sys.exit(0 if len(c) == 3 and len(to_client) == 2 and all(x["initiator"] == "[2001:db8:2::10]:20" for x in to_client) else 1)' "$OUT/ladder.json"
    check "ftpgate logged 2 active transfers, ok" equals "$(gw_records transfer mode=active result=ok)" 2
}
