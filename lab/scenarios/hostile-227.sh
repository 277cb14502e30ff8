#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: attack: a server's 227 names a foreign host's port 22, then a wrong address; ftpgate refuses, then rewrites
# ATTACKS.md 6 and 7, with a scripted server (lab/scenarios/hostile227.py)
# in place of vsftpd. First PASV: "227 (203,0,113,5,0,22)" would make a
# naive transparent gateway bind 203.0.113.5:22 and swallow everyone's SSH
# to that host through the socket match: ftpgate refuses it. Second PASV:
# the address is wrong (a NAT'd server) but the port is fine: ftpgate
# listens on the control connection's server address and rewrites the 227
# (--passive-address-mismatch rewrite, the default).
scenario_main() {
    need_cmds tcpdump python3
    step "lab up ($FORM rules), the hostile server, ftpgate"
    hosts_up
    head -c 100000 /dev/urandom >"$OUT/file.bin"
    push "$OUT/file.bin" server "$S_DIR/file.bin"
    host_sh server spawn "$S_DIR" hostile-server python3 "$SCEN_DIR/hostile227.py" server "$SERVER_IP" "$S_DIR/file.bin" 30
    host_sh server wait-listen 21 "$SERVER_IP" 50 || die "the hostile server did not listen"
    std_gateway
    capture_std
    step "client: PASV (hijack attempt), PASV (wrong address), RETR"
    local res=0
    on client python3 "$SCEN_DIR/hostile227.py" client "$SERVER_IP" >"$OUT/client.json" || res=$?
    capture_stop
    collect_std
    fetch server "$S_DIR/hostile-server.out" "$OUT/server.out" 2>/dev/null || true
    ladder_std "hostile-227: a server's lying 227 replies" \
        --caption "227 (203,0,113,5,0,22) is refused: ftpgate binds only the control connection's server address, never a port below 1024." \
        --caption "227 naming 203.0.113.5 with a high port is rewritten: ftpgate listens on $SERVER_IP and tells the client so."
    step "what happened"
    say "  client got: $(cat "$OUT/client.json")"
    check "client finished (exit 0)" equals "$res" 0
    check "the hijacking 227 did not reach the client (it got a refusal)" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if not r["pasv_hijack"].startswith("227") and "203,0,113,5" not in r["pasv_hijack"] else 1)' "$OUT/client.json"
    check "the wrong address was rewritten to $SERVER_IP" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["pasv_foreign"].startswith("227") and r["told_address"].startswith("198.51.100.10:") else 1)' "$OUT/client.json"
    check "the file arrived whole (100000 bytes, 226)" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["bytes"] == 100000 and r["retr_final"].startswith("226") else 1)' "$OUT/client.json"
    check "ftpgate logged the refusal (rule privileged-port, attack 6)" equals "$(gw_records refused rule=privileged-port attack=6)" 1
    check "ftpgate logged the rewrite" equals "$(gw_records 'data address rewritten')" 1
    check "no listener ever on 203.0.113.5 (no connection to it in the ladder)" bash -c "! grep -q '\"responder\": \"203.0.113.5' '$OUT/ladder.json'"
}
