#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: no: it adds a fourth host behind the client and rewrites the gateway's divert rule
# summary: a client behind a narrow link (1280 bytes): the router's ICMP error about ftpgate's segments reaches ftpgate's socket and downloads complete; without the ICMP divert they stall (a path MTU black hole)
# A client behind a narrower link than the rest of the path (a PPPoE or
# VPN uplink) announces a full MSS; only path MTU discovery finds the
# limit. Its router answers each full-size segment with an ICMP
# "fragmentation needed" (IPv6: "packet too big") addressed to the
# segment's source, the server's address, so the error is routed to the
# gateway. But the segments of a relayed download are ftpgate's own: the
# divert rule takes ICMP errors about its flows to the socket that sent
# them (`meta l4proto { tcp, icmp, ipv6-icmp } socket transparent 1`),
# which lowers its segment size and resends. The scenario then rewrites
# that rule to take TCP only, as before 3f7a033, and shows the black hole:
# the error goes on toward the server, and the download gets nothing.
# Namespaces only: it adds a namespace and rewrites the gateway's rules.

NARROW_MTU=1280

# icmp_capture: the ICMP errors arriving on the gateway's client side
icmp_capture() {
    ip netns exec "$G_NS" bash "$LAB_DIR/host.sh" capture "$RUN" "$OUT/pcap" "$GW_CLIENT_IF" "$1" "icmp or icmp6"
}

# narrow_get NAME URL [CURL ARGS...]: a download from the narrow host into
# OUT/NAME, bounded to 10 s (a black hole stalls it); curl's figures and
# exit code in OUT/NAME.curl
narrow_get() {
    local name=$1 url=$2 rc=0
    shift 2
    timeout -k 5 20 ip netns exec "$LAB-n" curl -g -sS -m 10 "$@" -o "$OUT/$name" \
        -w '%{http_code} %{size_download} %{time_total}\n' "$url" >"$OUT/$name.curl" 2>&1 || rc=$?
    echo "exit $rc" >>"$OUT/$name.curl"
    say "  $name: $(tr '\n' ' ' <"$OUT/$name.curl")"
}

# flush_pmtu: forget what the gateway learned of the path
flush_pmtu() {
    on gateway ip -4 route flush cache
    on gateway ip -6 route flush cache
}

# tcp_only_divert: the divert rule as it was before ICMP errors were taken
tcp_only_divert() {
    if [ "$FORM" = nft ]; then
        local handle
        handle=$(on gateway nft -a list chain inet ftpgate divert | sed -n 's/.*socket transparent 1.*# handle \([0-9]*\)$/\1/p' | head -n 1)
        [ -n "$handle" ] || die "no socket divert rule in the gateway's nft rule set"
        on gateway nft replace rule inet ftpgate divert handle "$handle" \
            meta l4proto tcp socket transparent 1 meta mark set 0x1 ct mark set ct mark or 0x1 accept
    else
        local cmd rule
        for cmd in iptables ip6tables; do
            rule=$(on gateway "$cmd" -t mangle -S | grep -E -- '-p (icmp|ipv6-icmp) .*-m socket' | head -n 1)
            [ -n "$rule" ] || die "no ICMP divert rule in the gateway's $cmd rule set"
            # shellcheck disable=SC2086  # the rule's words, as iptables -S printed them
            on gateway "$cmd" -t mangle ${rule/-A /-D }
        done
    fi
}

scenario_main() {
    need_cmds curl tcpdump
    step "lab up ($FORM rules), vsftpd, ftpgate (both families)"
    std_up
    std_ipv6_settled
    std_gateway
    pub_file big.bin 4096
    step "a client host behind the client namespace, over a ${NARROW_MTU}-byte link (lab/netns.sh narrow)"
    bash "$LAB_DIR/netns.sh" narrow "$LAB" "$NARROW_MTU" >/dev/null
    echo "$LAB-n" >>"$RUN/namespaces"
    say "  $NARROW_IP and $NARROW_IP6 in $LAB-n; $C_NS routes for it over narrow0 (MTU $NARROW_MTU), its own eth0 has 1500"
    icmp_capture gw-c-icmp

    step "downloads from the narrow host through ftpgate: passive and active, IPv4 and IPv6"
    flush_pmtu
    narrow_get v4-passive.bin "ftp://$SERVER_IP/pub/big.bin"
    flush_pmtu
    narrow_get v4-active.bin "ftp://$SERVER_IP/pub/big.bin" -P -
    on gateway ip -4 route show cache "$NARROW_IP" >"$OUT/route-cache-v4.txt"
    flush_pmtu
    narrow_get v6-passive.bin "ftp://[$SERVER_IP6]/pub/big.bin"
    flush_pmtu
    narrow_get v6-active.bin "ftp://[$SERVER_IP6]/pub/big.bin" -P -
    on gateway ip -6 route show cache "$NARROW_IP6" >"$OUT/route-cache-v6.txt"
    say "  what the gateway learned: $(tr -s ' \n' ' ' <"$OUT/route-cache-v4.txt")/ $(tr -s ' \n' ' ' <"$OUT/route-cache-v6.txt")"

    step "the same with the divert rule taking TCP only (as before 3f7a033): the errors go on to the server"
    tcp_only_divert
    flush_pmtu
    narrow_get blackhole.bin "ftp://$SERVER_IP/pub/big.bin"
    step "the rule set put back; the download works again"
    gw_rules_std del
    gw_rules_std add
    flush_pmtu
    narrow_get again.bin "ftp://$SERVER_IP/pub/big.bin"
    capture_stop

    collect_std
    tcpdump -nr "$OUT/pcap/gw-c-icmp.pcap" 2>/dev/null >"$OUT/icmp.txt" || true
    step "what happened"
    say "  ICMP errors on the gateway's client side: $(grep -c 'need to frag' "$OUT/icmp.txt") fragmentation needed, $(grep -c 'packet too big' "$OUT/icmp.txt") packet too big ($OUT/icmp.txt)"
    local name
    for name in v4-passive v4-active v6-passive v6-active again; do
        check "$name download from the narrow host intact (sha256)" equals "$(sha "$OUT/$name.bin")" "$(sha "$(pub_src big.bin)")"
    done
    check "the gateway learned the path MTU (IPv4)" grep -q "mtu $NARROW_MTU" "$OUT/route-cache-v4.txt"
    check "the gateway learned the path MTU (IPv6)" grep -q "mtu $NARROW_MTU" "$OUT/route-cache-v6.txt"
    check "the narrow link's router sent fragmentation-needed errors" grep -q "need to frag (mtu $NARROW_MTU)" "$OUT/icmp.txt"
    check "and packet-too-big errors" grep -q "packet too big, mtu $NARROW_MTU" "$OUT/icmp.txt"
    check "with a TCP-only divert the download got nothing within 10 s (curl exit 28)" grep -q "^exit 28" "$OUT/blackhole.bin.curl"
    check "the server saw only the narrow host's addresses" equals "$(server_saw | tr '\n' ' ')" "$NARROW_IP $NARROW_IP6 "
    check "ftpgate logged 5 transfers, ok" test "$(grep -c '"msg":"transfer".*"result":"ok"' "$OUT/ftpgate.json")" = 5
}
