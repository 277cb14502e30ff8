#!/usr/bin/env bash
# The lab's vsftpd restarted with room for the chaos tests (tests/chaos.rs):
# lab/vsftpd.conf.in caps it at 50 sessions and 101 passive ports, which
# suits every other test; 200 concurrent sessions need more of both.
#
# Usage: chaos_vsftpd.sh NAME MAX_SESSIONS [MAX_RATE]
#
# MAX_RATE: bytes per second each session's data moves at most
# (anon_max_rate), so that a transfer lasts however fast the gateway is.
#
# Stops the vsftpd that `netns.sh vsftpd` started (by its pidfile), writes
# RUN/vsftpd-chaos.conf (RUN/vsftpd.conf with max_clients and max_per_ip
# set to MAX_SESSIONS and the passive range 30000-31000; same logs), starts
# vsftpd on it and records its PID in RUN/vsftpd.pid, so that
# `netns.sh down` and `servers.sh stop` stop it like the usual one.
set -Eeuo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 2 ] || [ $# -eq 3 ] || die "usage: $0 NAME MAX_SESSIONS [MAX_RATE]"
name=$1 max=$2 rate=${3:-0}
case "$max" in '' | *[!0-9]*) die "MAX_SESSIONS must be a number (got '$max')" ;; esac
case "$rate" in '' | *[!0-9]*) die "MAX_RATE must be a number (got '$rate')" ;; esac
run=$(run_dir "$name"); s=$(ns_s "$name")
ns_exists "$s" || die "lab '$name' is not up"
[ -f "$run/vsftpd.conf" ] || die "no $run/vsftpd.conf: start the lab's vsftpd first (netns.sh vsftpd $name)"
bin=$LAB_CACHE/vsftpd/root/usr/sbin/vsftpd
[ -x "$bin" ] || die "vsftpd not unpacked at $bin (netns.sh fetch-vsftpd)"

"$LAB_DIR/servers.sh" stop "$name" vsftpd

# IPv4 on the server's address only, not the lab's dual-stack [::]:21: a
# wildcard listener would keep lab/hostile_server.py from binding
# 198.51.100.11:21 beside it.
sed -e "s/^max_clients=.*/max_clients=$max/" \
    -e "s/^listen=NO$/listen=YES\nlisten_address=$SERVER_IP/" \
    -e "s/^listen_ipv6=YES$/listen_ipv6=NO/" \
    -e "s/^max_per_ip=.*/max_per_ip=$max/" \
    -e "s/^pasv_min_port=.*/pasv_min_port=30000/" \
    -e "s/^pasv_max_port=.*/pasv_max_port=31000/" \
    "$run/vsftpd.conf" >"$run/vsftpd-chaos.conf"
[ "$rate" -eq 0 ] || printf 'anon_max_rate=%s\nlocal_max_rate=%s\n' "$rate" "$rate" >>"$run/vsftpd-chaos.conf"
chmod 600 "$run/vsftpd-chaos.conf"

# the libraries unpacked beside it (as netns.sh's vsftpd_libpath)
root=$LAB_CACHE/vsftpd/root libpath=""
for d in "$root"/lib/x86_64-linux-gnu "$root"/usr/lib/x86_64-linux-gnu \
         "$root"/lib/*-linux-gnu* "$root"/usr/lib/*-linux-gnu* "$root"/lib; do
    [ -d "$d" ] && libpath="$libpath${libpath:+:}$d"
done
LD_LIBRARY_PATH=$libpath ip netns exec "$s" "$bin" "$run/vsftpd-chaos.conf" \
    </dev/null >>"$run/vsftpd.out" 2>&1 &
pid=$!
pidfile_write "$run/vsftpd.pid" "$pid" "$bin"
wait_tcp_listen "$s" 21 "$SERVER_IP" 100 || die "vsftpd did not listen on $SERVER_IP:21 within 10 s"
log "vsftpd (max $max sessions) listening on $SERVER_IP:21 (pid $pid)"
