#!/bin/sh
# ftpgate rules --routing --undo: removes the policy rule and the local route
# `ftpgate rules --routing` added. The sysctls (forwarding, rp_filter) stay as they are.

# IPv4
ip -4 rule del fwmark 0x1 lookup 100 2>/dev/null || true
ip -4 route del local 0.0.0.0/0 dev lo table 100 2>/dev/null || true

# IPv6
ip -6 rule del fwmark 0x1 lookup 100 2>/dev/null || true
ip -6 route del local ::/0 dev lo table 100 2>/dev/null || true
