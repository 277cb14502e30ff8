#!/usr/bin/env bash
# Provision one host of lab/Vagrantfile on the machine it runs on (as
# root, with the repository at /vagrant). ROLE: client | gateway | server.
#
# The per-host set-up is lab/host.sh's, the same functions the namespace
# lab runs inside `ip netns exec`: the lab's addresses (Vagrant gives the
# private networks their IPv4 ones; host.sh adds the IPv6 ones), routes to
# the other side through the gateway ("lab" routes: the VMs keep Vagrant's
# NAT interface and default route for packages), and on the gateway
# `ftpgate rules --routing` and the strict nft rule set.
#
# Then what lab/scenario's machines mode needs: the gateway gets a key
# pair and /etc/ftpgate-lab/{ssh_config,machines.env}, so that
# `sudo /vagrant/lab/scenario NAME` there reaches root on the client and
# the server with ssh; the client and the server accept that key, from the
# gateway's lab addresses only. The gateway is provisioned first
# (Vagrantfile order) and leaves its public key in SHARED.
#
# Environment (defaults for the VMs; tests/machines.rs points them into
# its own directory and skips the packages):
#   PACKAGES=1            install packages (and on the gateway, build)
#   LAB_ETC=/etc/ftpgate-lab              the gateway's machines.env etc.
#   SHARED=/vagrant/lab/.machines         the gateway's public key
#   AUTHORIZED_KEYS=/root/.ssh/authorized_keys   (client, server)
#   HOST_RUN=/var/tmp/ftpgate-lab         scenarios' work dirs (client, server)
#   SERVER_DIR=/srv/ftpgate-lab           the server's ftproot for use by
#                                         hand (host.sh vsftpd SERVER_DIR)
#   FTPGATE_LAB_CACHE=/var/cache/ftpgate-lab   vsftpd, unpacked (server)
#   FTPGATE_BIN, FTPGATE_LADDER           the gateway's binaries (else
#                                         built with cargo, PACKAGES=1)
#
# Not run on VMs here: the machine this was written on has no hypervisor.
# tests/machines.rs runs it (PACKAGES=0) in three namespaces with sshd.
set -euo pipefail
role=${1:?client|gateway|server}
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lab/lib.sh
. "$LAB/lib.sh"
need_root
export DEBIAN_FRONTEND=noninteractive
PACKAGES=${PACKAGES:-1}
LAB_ETC=${LAB_ETC:-/etc/ftpgate-lab}
SHARED=${SHARED:-$LAB/.machines}
AUTHORIZED_KEYS=${AUTHORIZED_KEYS:-/root/.ssh/authorized_keys}
HOST_RUN=${HOST_RUN:-/var/tmp/ftpgate-lab}
SERVER_DIR=${SERVER_DIR:-/srv/ftpgate-lab}
export FTPGATE_LAB_CACHE=${FTPGATE_LAB_CACHE:-/var/cache/ftpgate-lab}

host() { bash "$LAB/host.sh" "$@"; }

# packages PKG...: install the missing ones (PACKAGES=1)
packages() {
    [ "$PACKAGES" = 1 ] || return 0
    local p missing=()
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    apt-get -q update
    apt-get -q install -y --no-install-recommends "${missing[@]}"
}

# trust_gateway: the gateway's lab key may log in as root, from the
# gateway's lab addresses only
trust_gateway() {
    local pub=$SHARED/gateway.pub from
    [ -s "$pub" ] || die "no $pub: provision the gateway first (vagrant up gateway)"
    from="from=\"$GW_CLIENT_IP,$GW_SERVER_IP,$GW_CLIENT_IP6,$GW_SERVER_IP6\""
    mkdir -p "$(dirname "$AUTHORIZED_KEYS")"
    chmod 700 "$(dirname "$AUTHORIZED_KEYS")" 2>/dev/null || true
    touch "$AUTHORIZED_KEYS"
    # one line for the lab key: replaced, never duplicated
    grep -v ' ftpgate-lab$' "$AUTHORIZED_KEYS" >"$AUTHORIZED_KEYS.new" || true
    echo "$from $(cut -d' ' -f1,2 "$pub") ftpgate-lab" >>"$AUTHORIZED_KEYS.new"
    chmod 600 "$AUTHORIZED_KEYS.new"
    mv -f "$AUTHORIZED_KEYS.new" "$AUTHORIZED_KEYS"
}

case "$role" in
client)
    packages curl lftp python3 tcpdump
    host client "$(host if-of "$CLIENT_IP")" lab
    trust_gateway
    ;;
server)
    packages python3 tcpdump
    # vsftpd is unpacked, never installed (a scenario starts its own)
    bash "$LAB/netns.sh" fetch-vsftpd >/dev/null
    mkdir -p "$HOST_RUN"
    host server "$(host if-of "$SERVER_IP")" lab "$SERVER_DIR"
    trust_gateway
    ;;
gateway)
    if [ "$PACKAGES" = 1 ]; then
        bash "$LAB/deps.sh"
        use_cargo_home
        # build outside the shared folder (faster; the host's target/ stays the host's)
        export CARGO_TARGET_DIR=/var/tmp/ftpgate-target
        (cd "$LAB/.." && cargo build --release -p ftpgate -p ftpgate-ladder)
        FTPGATE_BIN=${FTPGATE_BIN:-$CARGO_TARGET_DIR/release/ftpgate}
        FTPGATE_LADDER=${FTPGATE_LADDER:-$CARGO_TARGET_DIR/release/ftpgate-ladder}
    fi
    : "${FTPGATE_BIN:?FTPGATE_BIN (PACKAGES=0)}" "${FTPGATE_LADDER:?FTPGATE_LADDER (PACKAGES=0)}"
    export FTPGATE_BIN
    mkdir -p "$LAB_ETC/run"
    chmod 700 "$LAB_ETC"
    # routing, sysctls and the strict nft rule set: nothing passes between
    # the sides until ftpgate runs (lab/scenario starts it)
    host gateway "$(host if-of "$GW_CLIENT_IP")" "$(host if-of "$GW_SERVER_IP")" "$LAB_ETC/run" nft
    # the lab key: the gateway reaches root on the client and the server
    [ -f "$LAB_ETC/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C ftpgate-lab -f "$LAB_ETC/id_ed25519"
    mkdir -p "$SHARED"
    cp "$LAB_ETC/id_ed25519.pub" "$SHARED/gateway.pub"
    # accept-new: the client's and server's host keys are learnt at the
    # first connection (they do not exist yet when the gateway comes up),
    # and any change afterwards is refused
    cat >"$LAB_ETC/ssh_config" <<EOF
# lab/vagrant/provision.sh: how lab/scenario (machines mode) reaches the hosts
Host client
    HostName $CLIENT_IP
Host server
    HostName $SERVER_IP
Host *
    User root
    Port 22
    IdentityFile $LAB_ETC/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $LAB_ETC/known_hosts
    StrictHostKeyChecking accept-new
    BatchMode yes
    ConnectTimeout 5
    ServerAliveInterval 5
    ServerAliveCountMax 3
    LogLevel ERROR
EOF
    cat >"$LAB_ETC/machines.env" <<EOF
# lab/vagrant/provision.sh: lab/scenario runs in machines mode while this
# file exists (lab/scenario --hosts ns for the namespace lab)
SSH_CONFIG=$LAB_ETC/ssh_config
HOST_RUN=$HOST_RUN
HOST_CACHE=$FTPGATE_LAB_CACHE
: "\${FTPGATE_BIN:=$FTPGATE_BIN}"
: "\${FTPGATE_LADDER:=$FTPGATE_LADDER}"
EOF
    ;;
*) die "ROLE must be client, gateway or server" ;;
esac
log "provisioned as $role"
