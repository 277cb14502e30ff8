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
#    side are handed to the gateway's listener on LISTEN_PORT.
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
    ;;
del)
    ipt -t mangle -D PREROUTING -i "$cif" -p tcp --dport 21 \
        -j TPROXY --tproxy-mark 0x1/0x1 --on-port "$port" 2>/dev/null || true
    ipt -t mangle -D PREROUTING -p tcp -m socket --transparent -j DIVERT 2>/dev/null || true
    ipt -t mangle -F DIVERT 2>/dev/null || true
    ipt -t mangle -X DIVERT 2>/dev/null || true
    ;;
*) echo "usage: $0 add|del CLIENT_IF [PORT]" >&2; exit 2 ;;
esac
