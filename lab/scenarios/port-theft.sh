#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: attack: a third host connects to the announced passive port first; ftpgate closes it, the real client still gets the file
# ATTACKS.md 5. After the 227, a thief at 192.0.2.20 connects to the
# announced address before the client does. ftpgate's listener accepts
# only the control connection's client address: it closes the thief's
# connection, keeps listening, and relays the real client's transfer.
scenario_main() {
    need_cmds tcpdump python3
    step "lab up ($FORM rules), vsftpd, ftpgate; the thief's address 192.0.2.20 on the client side"
    std_up
    on client ip addr add 192.0.2.20/24 dev "$C_IF"
    undo_later client ip addr del 192.0.2.20/24 dev "$C_IF"
    std_gateway
    pub_file scen.bin 256
    capture_std
    step "client: PASV; thief connects first; client connects, RETR"
    local res=0
    on client python3 "$LAB_DIR/hostile_client.py" theft pub/scen.bin >"$OUT/client.json" || res=$?
    capture_stop
    collect_std
    ladder_std "port-theft: a thief at the passive port, closed by ftpgate" \
        --caption "ftpgate's listener wears the server's address but accepts only the control connection's client."
    step "what happened"
    say "  client got: $(cat "$OUT/client.json")"
    check "client finished (exit 0)" equals "$res" 0
    check "the thief's connection was closed, it got no byte" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["thief_closed"] and not r.get("thief_got") else 1)' "$OUT/client.json"
    check "the real client got the whole file and 226" python3 -c '
import json, os, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["bytes"] == os.path.getsize(sys.argv[2]) and r["retr_final"].startswith("226") else 1)' \
        "$OUT/client.json" "$(pub_src scen.bin)"
    # the refusal: who connected, whom the listener expected, and the rule
    # that refused it (docs/audit.md: port-theft, ATTACKS.md case 5)
    check "ftpgate logged the theft once (data peer refused: peer 192.0.2.20, expected $CLIENT_IP)" python3 -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    if r.get("msg") == "data peer refused":
        n += 1
        ok = (r.get("peer", "").startswith("192.0.2.20:") and r.get("expected") == sys.argv[2]
              and r.get("rule") == "port-theft" and r.get("attack") == "5")
sys.exit(0 if n == 1 and ok else 1)' "$OUT/ftpgate.json" "$CLIENT_IP"
    check "the ladder shows the thief's connection at ftpgate's foreign listener" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["connections"]
sys.exit(0 if any(x["initiator"].startswith("192.0.2.20:") and x["socket"] == "foreign-listener"
                  and any("port theft" in n for n in x["notes"]) for x in c) else 1)' "$OUT/ladder.json"
    check "the server saw only the client's address $CLIENT_IP" equals "$(server_saw)" "$CLIENT_IP"
}
