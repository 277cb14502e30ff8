#!/usr/bin/env bash
# (sourced by lab/scenario, not run; the #! line lets .ci/run shellcheck it)
# shellcheck shell=bash
# machines: yes
# summary: the same transfers through ftpgate and through the kernel's nf_conntrack_ftp helper, side by side
# Phase 1: ftpgate behind the TPROXY rules. Phase 2: ftpgate stopped, the
# TPROXY rules removed, and the gateway namespace a plain router whose
# forward chain lets FTP through with the conntrack helper attached
# (nft `ct helper`, or iptables `-j CT --helper ftp` with --iptables): data
# connections pass as RELATED to the helper's expectations. The same
# passive and active transfers run in both phases. Both deliver the file and
# both let the server see the client's address, but ftpgate terminates every
# connection (two per transfer, fresh ISNs) while the kernel forwards each
# one untouched (same ISN on both interfaces) and never parses more than
# the PORT/227 numbers it needs.

# the helper rule set, in the form the scenario runs with
helper_rules() {
    local op=$1
    if [ "$FORM" = nft ]; then
        if [ "$op" = add ]; then
            cat >"$RUN/kernelftp.nft" <<NFT
table ip kernelftp {
    ct helper ftp-std { type "ftp" protocol tcp; }
    chain pre {
        type filter hook prerouting priority filter; policy accept;
        iifname "$GW_CLIENT_IF" tcp dport 21 ct helper set "ftp-std"
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "$GW_CLIENT_IF" tcp dport 21 ct state new accept
    }
}
NFT
            on gateway nft -f "$RUN/kernelftp.nft"
            undo_later gateway nft delete table ip kernelftp
        else
            on gateway nft delete table ip kernelftp
        fi
    else
        local a=-A
        [ "$op" = add ] || a=-D
        on gateway iptables -w 5 -t raw "$a" PREROUTING -i "$GW_CLIENT_IF" -p tcp --dport 21 -j CT --helper ftp
        on gateway iptables -w 5 "$a" FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        on gateway iptables -w 5 "$a" FORWARD -i "$GW_CLIENT_IF" -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT
        if [ "$op" = add ]; then
            on gateway iptables -w 5 -P FORWARD DROP
            undo_later gateway iptables -w 5 -P FORWARD ACCEPT
            undo_later gateway iptables -w 5 -t raw -D PREROUTING -i "$GW_CLIENT_IF" -p tcp --dport 21 -j CT --helper ftp
            undo_later gateway iptables -w 5 -D FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
            undo_later gateway iptables -w 5 -D FORWARD -i "$GW_CLIENT_IF" -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT
        else
            on gateway iptables -w 5 -P FORWARD ACCEPT
        fi
    fi
}

# transfers PHASE: one passive and one active session, download + upload
transfers() {
    local phase=$1 mode res=0
    for mode in passive active; do
        on client python3 "$LAB_DIR/ftpclient.py" --host "$SERVER_IP" --mode "$mode" \
            --get pub/scen.bin "$C_DIR/$phase-$mode.bin" --put "$C_DIR/$phase-$mode.bin" "upload/$phase-$mode.bin" \
            >"$OUT/$phase-$mode.json" || res=1
        fetch client "$C_DIR/$phase-$mode.bin" "$OUT/$phase-$mode.bin" 2>/dev/null || true
    done
    return "$res"
}

# facts PHASE LADDER_JSON: one line of the comparison per fact
facts() { python3 - "$@" <<'PY'
import json, sys
phase, path, seen = sys.argv[1], sys.argv[2], sys.argv[3]
conns = json.load(open(path))["connections"]
term = [c for c in conns if c["socket"] in ("tproxy-redirect", "foreign-listener", "foreign-connect")]
fwd = [c for c in conns if c["socket"] == "kernel-forwarded"]
srv = [c for c in conns if c["leg"] in ("server side", "forwarded")]
print(f"{phase}|{seen}|{len(term)}|{len(fwd)}|{len(srv)}|{len(conns)}")
PY
}

scenario_main() {
    need_cmds tcpdump python3
    step "lab up (no rules yet), vsftpd"
    std_up none
    pub_file scen.bin 256
    local res_g=0 res_k=0 before seen_g seen_k p m

    step "phase 1: ftpgate behind the TPROXY rules ($FORM)"
    gw_rules_std add
    std_gateway
    PFX=ftpgate- capture_std
    before=$(server_log_lines)
    transfers ftpgate || res_g=$?
    capture_stop
    server_log_since "$before" >"$OUT/vsftpd-ftpgate.log"
    seen_g=$(server_saw "$OUT/vsftpd-ftpgate.log" | tr '\n' ' ')
    std_gateway_stop
    cp "$RUN/ftpgate.log" "$OUT/ftpgate.json"
    gw_rules_std del

    step "phase 2: the kernel's FTP helper (conntrack), ftpgate stopped"
    helper_rules add
    PFX=kernel- capture_std
    before=$(server_log_lines)
    transfers kernel || res_k=$?
    capture_stop
    server_log_since "$before" >"$OUT/vsftpd-kernel.log"
    seen_k=$(server_saw "$OUT/vsftpd-kernel.log" | tr '\n' ' ')
    on gateway cat /proc/net/nf_conntrack_expect >"$OUT/nf_conntrack_expect.txt" 2>/dev/null || true
    helper_rules del
    collect_std
    for p in ftpgate kernel; do
        for m in passive active; do uploaded "$p-$m.bin" "$OUT/uploaded-$p-$m.bin"; done
    done
    rm -f "$OUT/ftpgate.log"

    PFX=ftpgate- LADDER_BASE=ladder-ftpgate ladder_std "kernel-helper, phase 1: through ftpgate" \
        --caption "Every connection ends at ftpgate: each transfer is two TCP connections with their own ISNs."
    mv "$OUT/ftpgate.json" "$OUT/ftpgate.json.keep"
    PFX=kernel- GATEWAY_LABEL="gateway (kernel: nf_conntrack_ftp)" ladder_std "kernel-helper, phase 2: through the kernel's FTP helper" \
        --caption "No socket at the gateway: each connection is forwarded (same ISN on both sides); data passes as RELATED."
    mv "$OUT/ftpgate.json.keep" "$OUT/ftpgate.json"

    step "side by side"
    local g k
    g=$(facts ftpgate "$OUT/ladder-ftpgate.json" "$seen_g")
    k=$(facts kernel "$OUT/ladder.json" "$seen_k")
    {
        printf '%-44s %-28s %s\n' "" "ftpgate (TPROXY)" "kernel (nf_conntrack_ftp)"
        printf '%-44s %-28s %s\n' "the server saw the client as" "$(cut -d'|' -f2 <<<"$g")" "$(cut -d'|' -f2 <<<"$k")"
        printf '%-44s %-28s %s\n' "TCP connections the gateway terminated" "$(cut -d'|' -f3 <<<"$g") of $(cut -d'|' -f6 <<<"$g")" "$(cut -d'|' -f3 <<<"$k") of $(cut -d'|' -f6 <<<"$k")"
        printf '%-44s %-28s %s\n' "TCP connections forwarded untouched" "$(cut -d'|' -f4 <<<"$g")" "$(cut -d'|' -f4 <<<"$k")"
        printf '%-44s %-28s %s\n' "connections the server had" "$(cut -d'|' -f5 <<<"$g")" "$(cut -d'|' -f5 <<<"$k")"
        printf '%-44s %-28s %s\n' "who parses the control channel" "ftpgate, every line" "the helper: PORT/EPRT/227/229 only"
        printf '%-44s %-28s %s\n' "data connection admitted by" "ftpgate's listener (one peer)" "a conntrack expectation"
    } | tee "$OUT/comparison.txt" | tee -a "$OUT/summary.txt"

    step "what happened"
    check "phase 1 (ftpgate): both sessions finished" equals "$res_g" 0
    check "phase 2 (kernel): both sessions finished" equals "$res_k" 0
    for p in ftpgate kernel; do
        for m in passive active; do
            check "$p $m: download intact (sha256)" equals "$(sha "$OUT/$p-$m.bin")" "$(sha "$(pub_src scen.bin)")"
            check "$p $m: upload intact (sha256)" equals "$(sha "$OUT/uploaded-$p-$m.bin")" "$(sha "$(pub_src scen.bin)")"
        done
    done
    check "both: the server saw only $CLIENT_IP" equals "$seen_g|$seen_k" "$CLIENT_IP |$CLIENT_IP "
    check "ftpgate terminated every connection (none forwarded)" equals "$(conns_with kernel-forwarded "$OUT/ladder-ftpgate.json")" 0
    check "ftpgate: 2 TPROXY redirects, 4 foreign listeners" equals "$(conns_with tproxy-redirect "$OUT/ladder-ftpgate.json"),$(conns_with foreign-listener "$OUT/ladder-ftpgate.json")" "2,4"
    check "kernel: 2 control + 4 data connections forwarded, none terminated" equals \
        "$(conns_with kernel-forwarded),$(conns_with tproxy-redirect),$(conns_with foreign-listener),$(conns_with foreign-connect)" "6,0,0,0"
}
