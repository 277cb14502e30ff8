#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: EPSV download and upload through ftpgate over IPv6: TPROXY on port 21, a foreign listener on the server's IPv6 address
# The client (python's ftplib, which asks EPSV on an IPv6 connection)
# connects to 2001:db8:2::10, downloads a file and uploads it back. The
# same three TPROXY parts as over IPv4, with the ip6 forms of the rules:
# the `tproxy ip6` rule hands the control connection to ftpgate's [::]:2121
# listener, the 229 reply's port meets a listener bound to the server's
# IPv6 address (socket-match divert, the IPv6 policy route), and
# ftpgate's connections to the server leave from 2001:db8:1::10.
# shellcheck disable=SC2034  # the lifelines' names (ladder_std)
CLIENT_LABEL="client $CLIENT_IP6"
# shellcheck disable=SC2034
SERVER_LABEL="server $SERVER_IP6"
scenario_main() {
    need_cmds tcpdump python3
    round_trip_up v6
    step "client: [$SERVER_IP6]:21, EPSV, RETR pub/scen.bin, EPSV, STOR upload/back.bin"
    local res=0
    ftplib_round_trip "$SERVER_IP6" passive || res=$?
    round_trip_collect
    ladder_std "passive-v6: EPSV through ftpgate over IPv6" \
        --caption "The same path as over IPv4 with the ip6 rules: ftpgate's server-side sockets wear $CLIENT_IP6, so the server logs it."
    step "what happened"
    say "  client: $(cat "$OUT/client.json")"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    round_trip_checks client "$res" "$CLIENT_IP6"
    check "every captured connection is IPv6" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["connections"]
sys.exit(0 if c and all(x["initiator"].startswith("[") and x["responder"].startswith("[") for x in c) else 1)' "$OUT/ladder.json"
    check "the sessions asked EPSV and got 229" grep -q '"#[0-9]* 229 ' "$OUT/ladder.json"
    check "control: TPROXY redirect on the client side" equals "$(conns_with tproxy-redirect)" 1
    check "data: foreign listeners on [$SERVER_IP6] (2 transfers)" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["connections"]
ls = [x for x in c if x["socket"] == "foreign-listener"]
sys.exit(0 if len(ls) == 2 and all(x["leg"] == "client side" and x["responder"].startswith("[2001:db8:2::10]:") for x in ls) else 1)' "$OUT/ladder.json"
    check "server side: foreign connects from [$CLIENT_IP6] (control + 2 data)" python3 -c '
import json, sys
c = [x for x in json.load(open(sys.argv[1]))["connections"] if x["leg"] == "server side"]
sys.exit(0 if len(c) == 3 and all(x["socket"] == "foreign-connect" and x["initiator"].startswith("[2001:db8:1::10]:") for x in c) else 1)' "$OUT/ladder.json"
    check "ftpgate logged 2 passive transfers, ok" equals "$(gw_records transfer mode=passive result=ok)" 2
}
