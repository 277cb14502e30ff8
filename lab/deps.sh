#!/usr/bin/env bash
# Install what the lab needs on a fresh Debian machine (run as root).
# Fast on a warm machine: only missing commands/libraries are installed,
# and `apt-get update` runs only when something is missing.
# vsftpd itself is NOT installed (netns.sh unpacks it into lab/.cache).
#
#   lab/deps.sh [--lint]
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

missing=()
want_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
want_pkg() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$1"); }

want_cmd ip iproute2
want_cmd ss iproute2
want_cmd iptables iptables
want_cmd nft nftables
want_cmd lftp lftp
want_cmd curl curl
want_cmd python3 python3
want_cmd flock util-linux
want_cmd useradd passwd
want_cmd sha256sum coreutils
want_cmd dpkg-deb dpkg
want_cmd cc gcc          # rust crates may build C (libc, nix: no, but be safe)
# shared libraries the unpacked vsftpd binary links against
# (libwrap0 is unpacked next to vsftpd by netns.sh)
want_pkg libc6-dev       # gcc without it cannot link (rust uses cc as linker)
want_pkg libpam0g
want_pkg libssl3
want_pkg libcap2
want_pkg ca-certificates
# pure-ftpd (lab/servers.sh, unpacked) links libsodium, absent from a
# minimal Debian
want_pkg libsodium23
[ "$lint" = 0 ] || want_cmd shellcheck shellcheck

if [ ${#missing[@]} -gt 0 ]; then
    # de-duplicate
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update
    apt-get -q install -y --no-install-recommends "${missing[@]}"
fi
use_cargo_home
command -v cargo >/dev/null || die "cargo not found (the machine's Rust toolchain is required)"

# rustup_managed: true when `cargo` is a rustup proxy (rustup's installer
# hard-links the proxies, Debian's rustup package symlinks them)
rustup_managed() {
    command -v rustup >/dev/null 2>&1 && [ "$(command -v cargo)" -ef "$(command -v rustup)" ]
}

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
            export DEBIAN_FRONTEND=noninteractive
            apt-get -q install -y --no-install-recommends "${debs[@]}"
        fi
    fi
fi
# iptables on Debian defaults to the nf_tables backend (iptables-nft);
# both forms of the rule set then program nf_tables in the lab's namespace.
