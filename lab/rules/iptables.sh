#!/usr/bin/env bash
# TPROXY rule set, iptables form (see shared/reference/kernel-tproxy-nft.txt).
# Runs INSIDE the gateway namespace (netns.sh calls it with `ip netns exec`).
# Usage: iptables.sh add|del CLIENT_IF [LISTEN_PORT]
#
#  * DIVERT: any TCP packet that belongs to a local *transparent* socket
#    (an accepted intercepted connection, a foreign-address data listener,
#    or a connection the gateway opened from a foreign source address) is
#    marked 1 so that the policy route "fwmark 1 -> table 100 -> local"
#    delivers it to this host instead of forwarding it. On all interfaces:
#    active-mode data connections arrive from the server side.
#  * TPROXY: new control connections to port 21 arriving from the client
#    side are handed to the gateway's listener on LISTEN_PORT. When nothing
#    listens there, the TPROXY target drops the packet (unlike nft's tproxy,
#    see ruleset.nft), so it never reaches the forward chain.
#  * FORWARD: a strict firewall. With ftpgate in the path nothing needs to be
#    forwarded: the control connection arrives through TPROXY, and every data
#    connection either arrives through DIVERT or is opened by ftpgate itself
#    from a foreign address. So the policy is DROP: a data connection that
#    ftpgate never touched cannot reach the other side, and the end-to-end
#    tests prove that ftpgate carried every byte. Port 21 from the client
#    side is rejected with a reset (same rule as the nft form), in the
#    FTPGATE_FWD chain so that `del` removes exactly what `add` made.
#    `del` puts the namespace's FORWARD policy back to ACCEPT (its default).
set -euo pipefail
op=${1:?add|del}; cif=${2:?client-facing interface}; port=${3:-2121}
ipt() { iptables -w 5 "$@"; }
case "$op" in
add)
    ipt -t mangle -N DIVERT
    ipt -t mangle -A DIVERT -j MARK --set-mark 1
    ipt -t mangle -A DIVERT -j ACCEPT
    ipt -t mangle -A PREROUTING -p tcp -m socket --transparent -j DIVERT
    ipt -t mangle -A PREROUTING -i "$cif" -p tcp --dport 21 \
        -j TPROXY --tproxy-mark 0x1/0x1 --on-port "$port"
    ipt -t filter -N FTPGATE_FWD
    ipt -t filter -A FTPGATE_FWD -i "$cif" -p tcp --dport 21 -j REJECT --reject-with tcp-reset
    ipt -t filter -A FORWARD -j FTPGATE_FWD
    ipt -t filter -P FORWARD DROP
    ;;
del)
    ipt -t filter -P FORWARD ACCEPT
    ipt -t filter -D FORWARD -j FTPGATE_FWD 2>/dev/null || true
    ipt -t filter -F FTPGATE_FWD 2>/dev/null || true
    ipt -t filter -X FTPGATE_FWD 2>/dev/null || true
    ipt -t mangle -D PREROUTING -i "$cif" -p tcp --dport 21 \
        -j TPROXY --tproxy-mark 0x1/0x1 --on-port "$port" 2>/dev/null || true
    ipt -t mangle -D PREROUTING -p tcp -m socket --transparent -j DIVERT 2>/dev/null || true
    ipt -t mangle -F DIVERT 2>/dev/null || true
    ipt -t mangle -X DIVERT 2>/dev/null || true
    ;;
*) echo "usage: $0 add|del CLIENT_IF [PORT]" >&2; exit 2 ;;
esac
