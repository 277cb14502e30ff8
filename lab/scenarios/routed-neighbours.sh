#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: no: it swaps the gateway's rule profile and pins its ephemeral ports; the namespaces are its own
# summary: a router that forwards everything but FTP: routed connections on the ports of ftpgate's listeners pass untouched, and a server's ICMP refusal reaches the client at once
# On a router (`ftpgate rules --profile port21`, the default) the client's
# other traffic is forwarded beside ftpgate. ftpgate's sockets must take
# nothing of it:
#  - in active mode ftpgate listens on the client's address at a port its
#    kernel picks; here the gateway's ephemeral ports are pinned to four,
#    and the client holds a routed connection from each of them. The
#    forward chain puts the forward mark (0x2) on every routed connection
#    and the divert lets such packets go, so the listeners, sitting on
#    those very ports, never see their segments;
#  - the control listener is bound to the wildcard address, so it would
#    match a new connection to any address at its port (2121): the nft
#    divert lets a SYN whose socket is a wildcard one pass;
#  - an ICMP error about one of ftpgate's own connections is addressed to
#    the client's address: the divert hands it to ftpgate's socket, so a
#    server that refuses FTP with an ICMP port unreachable (a firewall's
#    REJECT) refuses the client at once, as over a router.
# Namespaces only: it changes the gateway's sysctls and rules freely.

# router_profile: the port21 profile in place of the lab's strict rules
router_profile() {
    local file=$OUT/rules-g-port21-$FORM.txt args=()
    [ "$FORM" = iptables ] && args=(--iptables)
    "$BIN" "${GW_LISTEN[@]}" rules --profile port21 --client-interface "$GW_CLIENT_IF" "${args[@]}" >"$file" \
        || die "ftpgate rules --profile port21 failed"
    if [ "$FORM" = nft ]; then on gateway nft -f "$file"; else on gateway sh "$file" >/dev/null; fi
}

# conntrack_marks: the gateway's conntrack entries of this scenario's TCP
# flows (the echo ports and FTP), with their marks
conntrack_marks() {
    on gateway cat /proc/net/nf_conntrack \
        | awk '/tcp/ && /(dport=9999|dport=2121|dport=21 |sport=20 )/' >"$OUT/conntrack.txt" || true
}

scenario_main() {
    need_cmds python3
    step "lab up ($FORM rules), vsftpd; the router profile (port21): everything but FTP is routed"
    std_up
    router_profile
    say "  $(grep -c . "$OUT/rules-g-port21-$FORM.txt") lines of rules: $OUT/rules-g-port21-$FORM.txt"
    on gateway sysctl -qw net.ipv4.ip_local_port_range="40000 40003"
    say "  the gateway's ephemeral ports: 40000-40003 (so ftpgate's active listeners land on them)"
    std_gateway
    pub_file scen.bin 256
    step "server: an echo service on $SERVER_IP:9999 and on $SERVER_IP:2121 (ftpgate's own port)"
    host_sh server spawn "$S_DIR" echo9999 python3 "$LAB_DIR/routed_flows.py" echo --listen "$SERVER_IP:9999" --lifetime 60
    host_sh server spawn "$S_DIR" echo2121 python3 "$LAB_DIR/routed_flows.py" echo --listen "$SERVER_IP:2121" --lifetime 60
    host_sh server wait-listen 9999 "$SERVER_IP" 100 || die "echo on 9999 did not listen"
    host_sh server wait-listen 2121 "$SERVER_IP" 100 || die "echo on 2121 did not listen"

    step "client: routed connections from ports 40000-40003 to the echo, kept busy; meanwhile 4 active downloads"
    on client python3 "$LAB_DIR/routed_flows.py" flows --server "$SERVER_IP:9999" --source "$CLIENT_IP" \
        --ports 40000,40001,40002,40003 --seconds 8 >"$OUT/flows.json" 2>"$OUT/flows.err" &
    local flows_pid=$! i res=0 waited=0
    while ! grep -q up "$OUT/flows.err" 2>/dev/null && [ "$waited" -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
    for i in 1 2 3 4; do
        on client python3 "$LAB_DIR/ftpclient.py" --host "$SERVER_IP" --mode active \
            --get pub/scen.bin "$C_DIR/active$i.bin" >"$OUT/active$i.json" || res=1
    done
    wait "$flows_pid" || res=1

    step "client: a routed connection to $SERVER_IP:2121, ftpgate's own port number"
    on client python3 "$LAB_DIR/routed_flows.py" flows --server "$SERVER_IP:2121" --source "$CLIENT_IP" \
        --ports 41000 --seconds 2 >"$OUT/flows2121.json" 2>"$OUT/flows2121.err" || true

    step "server: 198.51.100.12 refuses FTP with an ICMP port unreachable; the client connects through ftpgate"
    on server ip addr add 198.51.100.12/24 dev "$S_IF"
    on server nft add table inet refuse
    on server nft add chain inet refuse input '{ type filter hook input priority 0 ; }'
    on server nft add rule inet refuse input ip daddr 198.51.100.12 tcp dport 21 reject
    on client python3 "$LAB_DIR/hostile_client.py" greeting 198.51.100.12 >"$OUT/refused.json" || true

    conntrack_marks
    collect_std
    step "what happened"
    say "  routed flows on the listeners' ports: $(cat "$OUT/flows.json")"
    say "  ftpgate's active listeners (server_data_local): $(python3 -c '
import json, sys
print(" ".join(r["server_data_local"] for r in map(json.loads, filter(str.strip, open(sys.argv[1])))
               if r.get("msg") == "transfer"))' "$OUT/ftpgate.json")"
    say "  routed flow to port 2121: $(cat "$OUT/flows2121.json")"
    say "  a connect refused by ICMP: $(cat "$OUT/refused.json")"
    say "  conntrack marks (0x2: routed, 0x1: ftpgate's), from $OUT/conntrack.txt:"
    say "$(awk '{ t = ""; for (i = 1; i <= NF; i++) { split($i, kv, "=")
            if (kv[1] ~ /^(src|dst|sport|dport)$/ && !(kv[1] in seen)) { seen[kv[1]] = 1; t = t " " $i }
            if (kv[1] == "mark") m = $i }
        delete seen; print "   " t " " m }' "$OUT/conntrack.txt" | sort -u | head -14)"
    check "the 4 active downloads finished (exit 0)" equals "$res" 0
    for i in 1 2 3 4; do
        fetch client "$C_DIR/active$i.bin" "$OUT/active$i.bin" 2>/dev/null || true
        check "active download $i intact (sha256)" equals "$(sha "$OUT/active$i.bin")" "$(sha "$(pub_src scen.bin)")"
    done
    check "every active listener sat on a routed flow's port (40000-40003)" python3 -c '
import json, sys
ports = [r["server_data_local"].rsplit(":", 1)[1] for r in map(json.loads, filter(str.strip, open(sys.argv[1])))
         if r.get("msg") == "transfer"]
sys.exit(0 if len(ports) == 4 and all(p in ("40000", "40001", "40002", "40003") for p in ports) else 1)' "$OUT/ftpgate.json"
    check "no routed flow on those ports was cut" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["broken"] == {} and r["rounds"] > 100 else 1)' "$OUT/flows.json"
    check "the routed connection to port 2121 reached the server's echo" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["broken"] == {} and r["rounds"] > 10 else 1)' "$OUT/flows2121.json"
    check "the refused connect reached the client as a reset, within 3 s" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r.get("reset") and "greeting" not in r and r["seconds"] < 3 else 1)' "$OUT/refused.json"
    check "routed flows carry the forward mark in conntrack" grep -q "dport=9999 .*mark=2 " "$OUT/conntrack.txt"
    check "the server saw only the client's address $CLIENT_IP" equals "$(server_saw)" "$CLIENT_IP"
}
