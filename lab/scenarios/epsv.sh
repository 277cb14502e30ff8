#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: EPSV download and upload through ftpgate with curl: the 229 reply names only a port
# curl asks EPSV first (RFC 2428). The 229 reply carries no address: the
# client connects to the control connection's server address, where
# ftpgate's foreign listener waits.
scenario_main() {
    need_cmds tcpdump curl
    round_trip_up
    step "client: curl EPSV RETR, then EPSV STOR"
    local res=0
    on client curl -sS --max-time 30 -o "$C_DIR/got.bin" "ftp://$SERVER_IP/pub/scen.bin" || res=$?
    on client curl -sS --max-time 30 -T "$C_DIR/got.bin" "ftp://$SERVER_IP/upload/back.bin" || res=$?
    round_trip_collect
    ladder_std "epsv: EPSV through ftpgate (curl)" \
        --caption "229 names only a port: the client uses the control connection's server address, where ftpgate listens."
    step "what happened"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    round_trip_checks curl "$res" "$CLIENT_IP"
    check "the sessions asked EPSV and got 229" grep -q '"#[0-9]* 229 ' "$OUT/ladder.json"
    check "control: TPROXY redirect (2 sessions)" at_least "$(conns_with tproxy-redirect)" 2
    check "data: foreign listeners (2 transfers)" at_least "$(conns_with foreign-listener)" 2
    check "ftpgate logged 2 passive transfers, ok" equals "$(gw_records transfer mode=passive result=ok)" 2
}
