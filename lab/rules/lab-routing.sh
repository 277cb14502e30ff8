#!/bin/sh
# ftpgate rules --routing: policy routing and sysctls, generated for
#   listeners: 0.0.0.0:2121 [::]:2121
#   control port: 21, mark: 0x1, forward mark: 0x2, route table: 100, profile: strict
#   client side: interfaces gw-c, networks any; server networks: any
#
# Run: ftpgate rules ... --routing | sh    Remove: ftpgate rules ... --routing --undo | sh
#
# Marked packets look up the route table, whose one route makes every
# address local: they are delivered to ftpgate's sockets instead of being
# forwarded. rp_filter off as the kernel's tproxy documents advise: strict
# mode (1) drops a packet whose source routes back through another interface,
# which on a router with asymmetric routes includes FTP (`ftpgate doctor`
# flags it; with symmetric routes, as in the lab, strict mode works too).
set -e

# IPv4
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
sysctl -qw net/ipv4/conf/gw-c/rp_filter=0
[ -n "$(ip -4 rule show fwmark 0x1 lookup 100)" ] || ip -4 rule add fwmark 0x1 lookup 100
ip -4 route show table 100 type local 2>/dev/null | grep -q '^local default dev lo' \
    || ip -4 route add local 0.0.0.0/0 dev lo table 100 \
    || { echo "ftpgate rules: route table 100 holds a default route already; give ftpgate a table of its own (--table)" >&2; exit 1; }

# IPv6
sysctl -qw net.ipv6.conf.all.forwarding=1
[ -n "$(ip -6 rule show fwmark 0x1 lookup 100)" ] || ip -6 rule add fwmark 0x1 lookup 100
ip -6 route show table 100 type local 2>/dev/null | grep -q '^local default dev lo' \
    || ip -6 route add local ::/0 dev lo table 100 \
    || { echo "ftpgate rules: route table 100 holds a default route already; give ftpgate a table of its own (--table)" >&2; exit 1; }
