#!/usr/bin/env bash
# Install what the lab needs on a fresh Debian machine (run as root).
# Fast on a warm machine: only missing commands/libraries are installed,
# and `apt-get update` runs only when something is missing.
# vsftpd itself is NOT installed (netns.sh unpacks it into lab/.cache).
set -euo pipefail
# shellcheck source=lab/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

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

if [ ${#missing[@]} -gt 0 ]; then
    # de-duplicate
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update
    apt-get -q install -y --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || die "cargo not found (the machine's Rust toolchain is required)"
# iptables on Debian defaults to the nf_tables backend (iptables-nft);
# both forms of the rule set then program nf_tables in the lab's namespace.
