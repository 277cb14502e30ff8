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

case "$role" in
client)
    apt-get -q update
    apt-get -q install -y --no-install-recommends curl lftp python3 tcpdump
    ip route replace 198.51.100.0/24 via 192.0.2.1
    ;;
server)
    apt-get -q update
    apt-get -q install -y --no-install-recommends vsftpd tcpdump
    run=/srv/ftpgate-lab
    mkdir -p "$run/empty" "$run/ftproot/pub" "$run/ftproot/upload"
    chown ftp "$run/ftproot/upload"
    echo "hello from the ftpgate lab server" >"$run/ftproot/pub/hello.txt"
    # the namespace lab's configuration, for this host
    sed -e "s#@RUN@#$run#g" -e "s#@SERVER_IP@#198.51.100.10#g" \
        "$REPO/lab/vsftpd.conf.in" >/etc/vsftpd.conf
    ip route replace 192.0.2.0/24 via 198.51.100.1
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
    sysctl -q -w net.ipv4.ip_forward=1
    for k in all default "$cif" "$sif"; do sysctl -q -w "net.ipv4.conf.$k.rp_filter=0"; done
    ip rule show | grep -q 'fwmark 0x1 lookup 100' || ip rule add fwmark 1 lookup 100
    ip route replace local 0.0.0.0/0 dev lo table 100
    sed -e "s/@CLIENT_IF@/$cif/g" -e "s/@PORT@/2121/g" "$REPO/lab/rules/ruleset.nft" | nft -f -
    # build outside the shared folder (faster, and the host's target/ stays the host's)
    export CARGO_TARGET_DIR=/var/tmp/ftpgate-target
    (cd "$REPO" && cargo build --release -p ftpgate -p ftpgate-ladder)
    systemctl stop ftpgate-lab 2>/dev/null || true
    systemd-run --unit ftpgate-lab "$CARGO_TARGET_DIR/release/ftpgate" \
        --listen 0.0.0.0:2121 --log-level info --log-format json
    ;;
*) echo "ROLE must be client, gateway or server" >&2; exit 2 ;;
esac
