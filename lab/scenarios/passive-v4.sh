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
    step "lab up ($FORM rules), vsftpd, ftpgate"
    std_up
    std_gateway
    pub_file scen.bin 512
    capture_std
    step "client: PASV, RETR pub/scen.bin, STOR upload/back.bin"
    local res=0
    on client python3 "$LAB_DIR/ftpclient.py" --host "$SERVER_IP" --mode passive \
        --get pub/scen.bin "$C_DIR/got.bin" --put "$C_DIR/got.bin" upload/back.bin \
        >"$OUT/client.json" || res=$?
    capture_stop
    collect_std
    fetch client "$C_DIR/got.bin" "$OUT/got.bin" 2>/dev/null || true
    uploaded back.bin "$OUT/server-got.bin"
    ladder_std "passive-v4: PASV through ftpgate" \
        --caption "ftpgate terminates both legs; its server-side sockets wear the client's address, so the server logs $CLIENT_IP."
    step "what happened"
    say "  client: $(cat "$OUT/client.json")"
    say "  server saw clients: $(server_saw | tr '\n' ' ')"
    check "client finished (exit 0)" equals "$res" 0
    check "download intact (sha256)" equals "$(sha "$OUT/got.bin")" "$(sha "$(pub_src scen.bin)")"
    check "upload intact (sha256)" equals "$(sha "$OUT/server-got.bin")" "$(sha "$(pub_src scen.bin)")"
    check "the server saw only the client's address $CLIENT_IP" equals "$(server_saw)" "$CLIENT_IP"
    check "control: TPROXY redirect on the client side" at_least "$(conns_with tproxy-redirect)" 1
    check "data: foreign listener (socket-match divert), 2 transfers" at_least "$(conns_with foreign-listener)" 2
    check "server side: foreign connects from the client's address (control + 2 data)" at_least "$(conns_with foreign-connect)" 3
    check "ftpgate logged 2 passive transfers, ok" equals "$(gw_records transfer mode=passive result=ok)" 2
}
