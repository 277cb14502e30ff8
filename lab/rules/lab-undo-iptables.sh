#!/bin/sh
# ftpgate rules --iptables --undo: removes the chains `ftpgate rules --iptables` added

# IPv4
iptables -w 5 -t filter -D FORWARD -j FTPGATE_FORWARD 2>/dev/null || true
iptables -w 5 -t filter -F FTPGATE_FORWARD 2>/dev/null || true
iptables -w 5 -t filter -X FTPGATE_FORWARD 2>/dev/null || true
iptables -w 5 -t mangle -D PREROUTING -j FTPGATE_PREROUTING 2>/dev/null || true
iptables -w 5 -t mangle -F FTPGATE_PREROUTING 2>/dev/null || true
iptables -w 5 -t mangle -X FTPGATE_PREROUTING 2>/dev/null || true
iptables -w 5 -t mangle -F FTPGATE_DIVERT 2>/dev/null || true
iptables -w 5 -t mangle -X FTPGATE_DIVERT 2>/dev/null || true
iptables -w 5 -t raw -D PREROUTING -j FTPGATE_RAW 2>/dev/null || true
iptables -w 5 -t raw -F FTPGATE_RAW 2>/dev/null || true
iptables -w 5 -t raw -X FTPGATE_RAW 2>/dev/null || true

# IPv6
ip6tables -w 5 -t filter -D FORWARD -j FTPGATE_FORWARD 2>/dev/null || true
ip6tables -w 5 -t filter -F FTPGATE_FORWARD 2>/dev/null || true
ip6tables -w 5 -t filter -X FTPGATE_FORWARD 2>/dev/null || true
ip6tables -w 5 -t mangle -D PREROUTING -j FTPGATE_PREROUTING 2>/dev/null || true
ip6tables -w 5 -t mangle -F FTPGATE_PREROUTING 2>/dev/null || true
ip6tables -w 5 -t mangle -X FTPGATE_PREROUTING 2>/dev/null || true
ip6tables -w 5 -t mangle -F FTPGATE_DIVERT 2>/dev/null || true
ip6tables -w 5 -t mangle -X FTPGATE_DIVERT 2>/dev/null || true
ip6tables -w 5 -t raw -D PREROUTING -j FTPGATE_RAW 2>/dev/null || true
ip6tables -w 5 -t raw -F FTPGATE_RAW 2>/dev/null || true
ip6tables -w 5 -t raw -X FTPGATE_RAW 2>/dev/null || true
