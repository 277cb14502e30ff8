#!/usr/bin/env bash
# Install what the lab needs on a fresh Debian/Ubuntu machine (run as root).
# Fast on a warm machine: only missing commands/libraries are installed,
# and `apt-get update` runs only when something is missing.
# vsftpd, proftpd and pure-ftpd are NOT installed (netns.sh and servers.sh
# unpack them into lab/.cache); the shared libraries they link are.
#
#   lab/deps.sh [--lint]
#
# A Rust toolchain at least as new as Cargo.toml's `rust-version` is
# required. When cargo/rustc are missing or older, this installs one and
# says so: with the machine's rustup if it has one, else with Debian's
# `rustup` package where the release has it (apt then removes Debian's
# cargo and rustc packages, which conflict with it), else with the official
# installer (https://sh.rustup.rs, into ~/.cargo and ~/.rustup, shell
# profiles untouched). The toolchain is the current stable one.
#
# --lint (.ci/run) also installs the lint tools: shellcheck (apt), rustfmt
# and clippy (`rustup component add` when rustup manages the toolchain,
# Debian's rustfmt and rust-clippy packages otherwise).
set -euo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

lint=0
case "${1:-}" in
--lint) lint=1 ;;
"") ;;
*) die "usage: lab/deps.sh [--lint]" ;;
esac
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_update_once() {
    [ "$apt_updated" = 0 ] || return 0
    apt-get -q update
    apt_updated=1
}
# apt_offers PKG: as apt_knows, updating the lists once if they lack PKG
apt_offers() { apt_knows "$1" || { apt_update_once && apt_knows "$1"; }; }

missing=()
want_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
want_pkg() { pkg_installed "$1" || missing+=("$1"); }
# want_lib NAME...: one shared-library package under the name this release
# gives it (libssl3 is libssl3t64 from Debian 13 and Ubuntu 24.04 on):
# nothing when one of the names is installed, else the first name apt offers
want_lib() {
    local p
    for p in "$@"; do pkg_installed "$p" && return 0; done
    for p in "$@"; do apt_knows "$p" && { missing+=("$p"); return 0; }; done
    apt_update_once
    for p in "$@"; do apt_knows "$p" && { missing+=("$p"); return 0; }; done
    die "this release offers none of the packages $* (a library the lab's FTP servers link)"
}

want_cmd ip iproute2
want_cmd ss iproute2
want_cmd iptables iptables
want_cmd nft nftables
want_cmd lftp lftp
want_cmd curl curl
want_cmd python3 python3
want_cmd flock util-linux
want_cmd setpriv util-linux   # tests/privilege.rs: ambient capabilities
want_cmd setcap libcap2-bin   # tests/privilege.rs: file capabilities
want_cmd useradd passwd
want_cmd sha256sum coreutils
want_cmd dpkg-deb dpkg
want_cmd cc gcc          # rustc links through cc
want_pkg libc6-dev       # gcc without it cannot link
want_pkg ca-certificates
# shared libraries the unpacked vsftpd and pure-ftpd link against (vsftpd's
# libwrap0 is unpacked next to it by netns.sh; proftpd's libraries are
# resolved from its package by servers.sh)
want_lib libpam0g
want_lib libssl3t64 libssl3
want_lib libcap2
want_lib libsodium23     # absent from a minimal Debian
want_cmd tcpdump tcpdump        # lab/scenario: captures for the ladder diagrams
want_cmd keepalived keepalived  # lab/scenario failover (VRRP between the gateway namespaces)
# tests/machines.rs: lab/scenario's machines mode against three namespaces
# that each run sshd (bound to the lab's addresses only), and `ruby -c` on
# lab/Vagrantfile
want_cmd ssh openssh-client
want_cmd ssh-keygen openssh-client
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
want_cmd ruby ruby
[ "$lint" = 0 ] || want_cmd shellcheck shellcheck

if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing Debian packages: ${missing[*]}"
    apt_update_once
    # keepalived's package would start a system-wide VRRP daemon; the lab runs
    # its own, in namespaces. A policy-rc.d that forbids starts (only when
    # the host has none) keeps the host as it was.
    guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
    fi
    apt-get -q install -y --no-install-recommends "${missing[@]}" || { [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
    # openssh-server's package enables a system-wide sshd for the next boot;
    # the lab only runs its own, in namespaces (tests/machines.rs). When this
    # run installed it, the host's boot stays as it was too.
    case " ${missing[*]} " in
    *" openssh-server "*)
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
        fi
        log "openssh-server installed for tests/machines.rs; its system-wide sshd is not started nor enabled at boot"
        ;;
    esac
fi
# iptables on Debian defaults to the nf_tables backend (iptables-nft);
# both forms of the rule set then program nf_tables in the lab's namespace.

# -- Rust toolchain ----------------------------------------------------------
need_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$LAB_DIR/../Cargo.toml" | head -n 1)
[ -n "$need_rust" ] || die "no rust-version in $LAB_DIR/../Cargo.toml"

# rustc_version: "1.88.0", or nothing when there is no working rustc
rustc_version() {
    local v
    v=$(rustc --version 2>/dev/null) || return 0
    sed -n 's/^rustc \([0-9][0-9.]*\).*/\1/p' <<<"$v"
}
rust_ok() {
    local v
    v=$(rustc_version)
    [ -n "$v" ] && command -v cargo >/dev/null 2>&1 && dpkg --compare-versions "$v" ge "$need_rust"
}
# rustup_managed: `cargo` is a rustup proxy (rustup's installer hard-links
# the proxies to rustup, Debian's rustup package symlinks them)
rustup_managed() {
    command -v rustup >/dev/null 2>&1 && [ "$(command -v cargo)" -ef "$(command -v rustup)" ]
}

install_rust() {
    local why=$1
    if command -v rustup >/dev/null 2>&1; then
        log "$why: installing the stable Rust toolchain with rustup ($(command -v rustup)) and making it rustup's default"
        rustup toolchain install stable --profile minimal
        rustup default stable
    elif apt_offers rustup; then
        log "$why: installing Debian's rustup package (it replaces Debian's cargo and rustc packages, if installed), then the stable Rust toolchain into ~/.rustup"
        apt-get -q install -y --no-install-recommends rustup
        rustup toolchain install stable --profile minimal
        rustup default stable
    else
        log "$why; this release has no rustup package: installing rustup and the stable Rust toolchain with the official installer (https://sh.rustup.rs) into ${CARGO_HOME:-$HOME/.cargo} and ${RUSTUP_HOME:-$HOME/.rustup}"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
            | sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable \
            || die "the official Rust installer failed (see above); install Rust >= $need_rust by hand (https://rustup.rs) and run again"
    fi
}

use_cargo_home
if ! rust_ok; then
    have=$(rustc_version)
    if [ -n "$have" ]; then
        install_rust "rustc $have ($(command -v rustc)) is older than the crate's rust-version $need_rust"
    else
        install_rust "no Rust toolchain (cargo, rustc) found"
    fi
    use_cargo_home
    rust_ok || die "still no Rust >= $need_rust after installing one (rustc: $(rustc_version)); see the messages above"
    log "Rust toolchain installed: $(rustc --version) at $(command -v cargo)"
    log "it is used by lab/test and lab/demo; in your own shell, put ${CARGO_HOME:-$HOME/.cargo}/bin first in PATH if cargo is not found there"
fi

if [ "$lint" = 1 ]; then
    lint_missing=()
    cargo fmt --version >/dev/null 2>&1 || lint_missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || lint_missing+=(clippy)
    if [ ${#lint_missing[@]} -gt 0 ]; then
        if rustup_managed; then
            log "installing rustup components: ${lint_missing[*]}"
            rustup component add "${lint_missing[@]}"
        else
            debs=("${lint_missing[@]/clippy/rust-clippy}")
            log "installing Debian packages: ${debs[*]}"
            apt_update_once
            apt-get -q install -y --no-install-recommends "${debs[@]}"
        fi
    fi
fi
