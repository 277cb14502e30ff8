#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: attack: PORT/EPRT naming a third host or a privileged port; ftpgate answers 501/522 itself, the server never sees it
# ATTACKS.md 1 (FTP bounce), 2 (PORT to the client's own port 22), 4 (EPRT
# with an unknown family) and 29 (LPRT): the client sends them after login.
# ftpgate answers each itself, opens nothing, keeps the session; the server
# sees none of them.
scenario_main() {
    need_cmds tcpdump python3
    step "lab up ($FORM rules), vsftpd, ftpgate"
    std_up
    std_gateway
    capture_std
    step "client: PORT 203,0,113,5,200,10 / EPRT to 203.0.113.5 / PORT to :22 / EPRT |3| / LPRT / NOOP"
    local res=0
    on client python3 "$LAB_DIR/hostile_client.py" bounce >"$OUT/client.json" || res=$?
    capture_stop
    collect_std
    ladder_std "bounce: PORT/EPRT to a third host, refused by ftpgate" \
        --caption "The refused commands end at the gateway: no arrow carries them on to the server, and no data connection opens."
    step "what happened"
    say "  client got: $(cat "$OUT/client.json")"
    check "client finished (exit 0)" equals "$res" 0
    check "PORT to a third host: 501, EPRT: 5xx, PORT to :22: 501, session goes on (NOOP 200)" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
ok = r["port_third_host"].startswith("501") and r["eprt_third_host"][:1] == "5" \
    and r["port_privileged"].startswith("501") and r["noop_after"].startswith("200")
sys.exit(0 if ok else 1)' "$OUT/client.json"
    # Five refused lines in a row, then the NOOP that passes: one record
    # for the run, named by its first line's rule (docs/audit.md).
    check "ftpgate logged the run once (refused lines, count 5, rule bounce, attack 1)" \
        equals "$(gw_records 'refused lines' rule=bounce attack=1 count=5)" 1
    check "and no record per line" equals "$(gw_records refused)" 0
    check "the server never saw PORT/EPRT/LPRT" bash -c "! grep -Eq '\"(PORT|EPRT|LPRT)' '$OUT/vsftpd.log'"
    check "no data connection anywhere" equals "$(python3 -c '
import json, sys
print(sum(1 for c in json.load(open(sys.argv[1]))["connections"] if c["role"] == "data"))' "$OUT/ladder.json")" 0
}
