#!/usr/bin/env bash
# Provision one VM of lab/Vagrantfile (runs as root inside the VM, with
# the repository at /vagrant). ROLE: client | gateway | server.
#
# The VMs keep Vagrant's NAT interface (eth0) and default route for
# packages; the lab's traffic takes routes of its own over the internal
# networks: the client reaches 198.51.100.0/24, and the server
# 192.0.2.0/24, only through the gateway.
#
# Written to the namespace lab's conventions but not run: the machine it
# was written on had no hypervisor (docs/scenarios.md says so).
set -euo pipefail
role=${1:?client|gateway|server}
REPO=/vagrant
export DEBIAN_FRONTEND=noninteractive

# if_of ADDR: the interface that holds ADDR
if_of() { ip -br -4 addr show | awk -v a="$1" 'index($0, " " a "/") {print $1; exit}'; }

# v6 IPV4_ADDR IPV6_ADDR/64: the lab's IPv6 address beside its IPv4 one
# (the private networks are given their IPv4 addresses by Vagrant; the
# IPv6 ones, as in the namespace lab, without duplicate address detection)
v6() {
    local dev
    dev=$(if_of "$1")
    [ -n "$dev" ] || { echo "no interface with $1" >&2; exit 1; }
    ip -6 addr replace "$2" dev "$dev" nodad
}

case "$role" in
client)
    apt-get -q update
    apt-get -q install -y --no-install-recommends curl lftp python3 tcpdump
    v6 192.0.2.10 2001:db8:1::10/64
    ip route replace 198.51.100.0/24 via 192.0.2.1
    ip -6 route replace 2001:db8:2::/64 via 2001:db8:1::1
    ;;
server)
    apt-get -q update
    apt-get -q install -y --no-install-recommends vsftpd tcpdump
    run=/srv/ftpgate-lab
    mkdir -p "$run/empty" "$run/ftproot/pub" "$run/ftproot/upload"
    chown ftp "$run/ftproot/upload"
    echo "hello from the ftpgate lab server" >"$run/ftproot/pub/hello.txt"
    # the namespace lab's configuration, for this host (dual-stack: one
    # [::]:21 socket; it logs an IPv4 client as ::ffff:192.0.2.10)
    sed -e "s#@RUN@#$run#g" -e "s#@SERVER_IP@#198.51.100.10#g" \
        "$REPO/lab/vsftpd.conf.in" >/etc/vsftpd.conf
    v6 198.51.100.10 2001:db8:2::10/64
    ip route replace 192.0.2.0/24 via 198.51.100.1
    ip -6 route replace 2001:db8:1::/64 via 2001:db8:2::1
    systemctl restart vsftpd
    ;;
gateway)
    bash "$REPO/lab/deps.sh"
    apt-get -q install -y --no-install-recommends tcpdump keepalived
    # shellcheck source=lab/lib.sh
    . "$REPO/lab/lib.sh"
    use_cargo_home
    cif=$(if_of 192.0.2.1)
    sif=$(if_of 198.51.100.1)
    if [ -z "$cif" ] || [ -z "$sif" ]; then
        echo "no interface with 192.0.2.1 / 198.51.100.1" >&2
        exit 1
    fi
    v6 192.0.2.1 2001:db8:1::1/64
    v6 198.51.100.1 2001:db8:2::1/64
    # build outside the shared folder (faster, and the host's target/ stays the host's)
    export CARGO_TARGET_DIR=/var/tmp/ftpgate-target
    (cd "$REPO" && cargo build --release -p ftpgate -p ftpgate-ladder)
    bin=$CARGO_TARGET_DIR/release/ftpgate
    # the set-up the namespace lab installs, from `ftpgate rules` (README,
    # "Deploying on a router"): policy routing and sysctls, then the strict
    # rule set with this VM's client-side interface; both families
    listen=(--listen 0.0.0.0:2121 --listen "[::]:2121")
    "$bin" "${listen[@]}" rules --routing --client-interface "$cif" | sh
    "$bin" "${listen[@]}" rules --profile strict --client-interface "$cif" | nft -f -
    systemctl stop ftpgate-lab 2>/dev/null || true
    systemd-run --unit ftpgate-lab "$bin" "${listen[@]}" --log-level info --log-format json
    ;;
*) echo "ROLE must be client, gateway or server" >&2; exit 2 ;;
esac
