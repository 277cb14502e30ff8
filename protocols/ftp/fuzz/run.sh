#!/usr/bin/env bash
# Build the ftpgate-proto fuzz targets and run each for SECONDS (default 60).
#
#   protocols/ftp/fuzz/run.sh [SECONDS] [TARGET...]     (targets: command reply session)
#
# Installs what is missing (cargo-fuzz, a C++ compiler for libFuzzer), builds
# with AddressSanitizer on the stable toolchain (RUSTC_BOOTSTRAP=1; falls back
# to --sanitizer none if the ASan build fails, or when FUZZ_SANITIZER=none),
# runs each target one after the other on a scratch corpus seeded from
# seeds/<target>/, and fails on the first crash (the input is left in
# artifacts/<target>/). Logs: logs/<target>.log. Everything is time-bounded.
set -euo pipefail

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(command reply session)
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export PATH="$HOME/.cargo/bin:$PATH"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v c++ >/dev/null 2>&1; then
    echo "run.sh: installing g++ (libFuzzer is C++)" >&2
    as_root timeout 600 apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    timeout 900 cargo install --locked cargo-fuzz
fi

# libFuzzer instrumentation needs nightly-only rustc flags; this is the
# stable toolchain, so unlock them.
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
# -a: keep the crate's debug_assert! checks (hold consistency) on.
build() { timeout 1200 cargo fuzz build --sanitizer "$sanitizer" -a; }
if ! build; then
    if [ "$sanitizer" = address ]; then
        echo "run.sh: ASan build failed, falling back to --sanitizer none" >&2
        sanitizer=none
        build
    else
        exit 1
    fi
fi

mkdir -p logs
status=0
for t in "${targets[@]}"; do
    corpus=corpus/$t
    mkdir -p "$corpus"
    cp -n seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    echo "== $t: ${secs}s, sanitizer $sanitizer, corpus $(ls "$corpus" | wc -l) files" >&2
    set +e
    timeout $((secs + 300)) cargo fuzz run --sanitizer "$sanitizer" -a "$t" "$corpus" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -dict=ftp.dict \
        >"logs/$t.log" 2>&1
    rc=$?
    set -e
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb' "logs/$t.log" >&2 || true
    echo "   corpus now $(ls "$corpus" | wc -l) files" >&2
    if [ $rc -ne 0 ]; then
        echo "run.sh: $t FAILED (exit $rc); see logs/$t.log and artifacts/$t/" >&2
        grep -E -m5 -A20 "panicked|ERROR: libFuzzer|SUMMARY" "logs/$t.log" >&2 || tail -40 "logs/$t.log" >&2
        status=1
        break
    fi
done
exit $status
