#!/usr/bin/env bash
# ftpgate lab: more FTP servers for the server namespace, besides vsftpd.
# Debian's FTP servers conflict with each other and their maintainer scripts
# start system-wide daemons, so each is fetched with `apt-get download`
# (with the libraries the base system lacks) and unpacked with `dpkg -x`
# into lab/.cache/SERVER/root; never installed. One server per lab at a
# time, on 198.51.100.10:21 and [2001:db8:2::10]:21, with the lab's ftproot (pub/, upload/),
# anonymous login, passive ports 30000-30100, active from port 20.
# Needs root and a lab made by `netns.sh up NAME`.
#
# Usage:
#   servers.sh fetch SERVER          fetch + unpack SERVER into lab/.cache
#   servers.sh start NAME SERVER     start SERVER in NAME-s (foreground
#                                    process, PID in RUN/SERVER.pid, so
#                                    `netns.sh down` stops it too)
#   servers.sh stop NAME SERVER      stop it (only the PID it recorded)
#   servers.sh version SERVER        the Debian package version used
# SERVER: vsftpd (delegates to netns.sh) | proftpd | pure-ftpd; each runs
# as lab/host.sh runs it on a server machine, inside NAME-s
#
# Run directory files: proftpd.conf, proftpd.log (system log),
# proftpd.cmdlog (commands and replies with the client address),
# proftpd.xferlog; pure-ftpd.out, pure-ftpd.xferlog.
set -Eeuo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# the server's own packages; the libraries they need come from the
# release's package lists (missing_libs)
server_pkgs() {
    case "$1" in
    proftpd) echo "proftpd-core" ;;
    pure-ftpd) echo "pure-ftpd pure-ftpd-common" ;;
    *) die "unknown server '$1' (proftpd|pure-ftpd)" ;;
    esac
}

# missing_libs PKG...: the shared-library packages (lib*) that PKG... depend
# on, directly or through each other, under the names this release's
# package lists give them (libssl3 or libssl3t64, libhiredis0.14 or
# libhiredis1.1.0, ...), less those installed. At most 100 packages looked at.
missing_libs() {
    local queue=("$@") seen=" " p d n=0
    while [ ${#queue[@]} -gt 0 ] && [ "$n" -lt 100 ]; do
        p=${queue[0]}; queue=("${queue[@]:1}"); n=$((n + 1))
        for d in $(apt-cache depends --no-recommends --no-suggests --no-conflicts \
                --no-breaks --no-replaces --no-enhances "$p" 2>/dev/null \
                | sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \(lib[^ <>:]*\)$/\2/p'); do
            case "$seen" in *" $d "*) continue ;; esac
            seen="$seen$d "
            pkg_installed "$d" && continue
            echo "$d"
            queue+=("$d")
        done
    done
}

fetch() {
    local server=$1 bin dir root
    [ "$server" = vsftpd ] && { "$LAB_DIR/netns.sh" fetch-vsftpd >/dev/null; return 0; }
    bin=$(server_bin "$server"); dir=$LAB_CACHE/$server; root=$(server_root "$server")
    [ -n "$bin" ] || die "unknown server '$server'"
    if [ -x "$bin" ] && [ -f "$dir/.complete" ]; then return 0; fi
    command -v apt-get >/dev/null || die "apt-get missing: cannot fetch $server"
    mkdir -p "$dir"
    (
        flock -w 300 9 || die "timeout waiting for the $server fetch lock"
        [ -f "$dir/.complete" ] && exit 0
        local dl=$dir/debs pkgs=() deb missing
        rm -rf "$dl" "$root"; mkdir -p "$dl" "$root"
        read -ra pkgs <<<"$(server_pkgs "$server")"
        if ! apt_knows "${pkgs[0]}"; then
            log "apt does not know ${pkgs[0]}; running apt-get update once"
            apt-get -q update >&2
        fi
        # the server's own packages, and the libraries it needs that the
        # machine lacks
        mapfile -t -O "${#pkgs[@]}" pkgs < <(missing_libs "${pkgs[@]}")
        log "fetching ${pkgs[*]} (unpacked into $root, not installed)"
        if ! (cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}" >&2); then
            log "apt-get download failed; running apt-get update once"
            apt-get -q update >&2
            (cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "${pkgs[@]}" >&2)
        fi
        for deb in "$dl"/*.deb; do dpkg -x "$deb" "$root"; done
        [ -x "$bin" ] || die "$server binary not found after unpacking"
        missing=$(LD_LIBRARY_PATH=$(server_libpath "$server") ldd "$bin" | grep 'not found' || true)
        [ -z "$missing" ] || die "$server still lacks libraries: $missing"
        touch "$dir/.complete"
    ) 9>"$LAB_CACHE/$server.lock"
}

version() {
    local server=$1 deb
    fetch "$server"
    case "$server" in
    vsftpd) deb=$(ls "$LAB_CACHE"/vsftpd/debs/vsftpd_*.deb) ;;
    proftpd) deb=$(ls "$LAB_CACHE"/proftpd/debs/proftpd-core_*.deb) ;;
    pure-ftpd) deb=$(ls "$LAB_CACHE"/pure-ftpd/debs/pure-ftpd_*.deb) ;;
    *) die "unknown server '$server'" ;;
    esac
    echo "$server $(dpkg-deb -f "$deb" Version)"
}

# proftpd and pure-ftpd run as the server host's daemons (lab/host.sh), in
# NAME-s: the same functions a real server machine would run
start_proftpd() {
    ip netns exec "$(ns_s "$1")" bash "$LAB_DIR/host.sh" proftpd "$(run_dir "$1")"
}

start_pure_ftpd() {
    ip netns exec "$(ns_s "$1")" bash "$LAB_DIR/host.sh" pure-ftpd "$(run_dir "$1")"
}

start() {
    local name=$1 server=$2 run s f
    run=$(run_dir "$name"); s=$(ns_s "$name")
    ns_exists "$s" || die "lab '$name' is not up"
    for f in vsftpd proftpd pure-ftpd; do
        if pidfile_pid "$run/$f.pid" >/dev/null; then
            die "$f already runs in lab '$name' (servers.sh stop $name $f)"
        fi
    done
    if [ "$server" = vsftpd ]; then "$LAB_DIR/netns.sh" vsftpd "$name"; return; fi
    fetch "$server"
    getent passwd ftp >/dev/null || die "no user 'ftp' (netns.sh up creates it)"
    case "$server" in
    proftpd) start_proftpd "$name" ;;
    pure-ftpd) start_pure_ftpd "$name" ;;
    *) die "unknown server '$server'" ;;
    esac
    # proftpd binds each address, pure-ftpd the wildcard of each family
    if ! wait_tcp_listen "$s" 21 "" 100; then
        cat "$run/$server.out" >&2 || true
        [ "$server" = proftpd ] && cat "$run/proftpd.log" >&2
        die "$server did not listen on port 21 within 10 s"
    fi
    log "$server listening on $SERVER_IP:21 (pid $(cut -d' ' -f1 "$run/$server.pid"))"
}

stop() {
    local name=$1 server=$2 run s i
    run=$(run_dir "$name"); s=$(ns_s "$name")
    case "$server" in vsftpd | proftpd | pure-ftpd) ;; *) die "unknown server '$server'" ;; esac
    stop_pidfile "$run/$server.pid" 50 || true
    # bounded wait until port 21 is free for the next server
    for ((i = 0; i < 50; i++)); do
        ns_exists "$s" || return 0
        ip netns exec "$s" ss -Hltn "sport = :21" 2>/dev/null | grep -q ":21" || return 0
        sleep 0.1
    done
    die "port 21 still in use in $s after stopping $server"
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,23p' "$0" >&2; exit 2; }
shift
case "$cmd" in
fetch)   need_root; fetch "${1:?SERVER}" ;;
start)   need_root; check_name "${1:?NAME}"; start "$1" "${2:?SERVER}" ;;
stop)    need_root; check_name "${1:?NAME}"; stop "$1" "${2:?SERVER}" ;;
version) need_root; version "${1:?SERVER}" ;;
*) die "unknown command '$cmd' (fetch|start|stop|version)" ;;
esac
