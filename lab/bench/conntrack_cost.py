#!/usr/bin/env python3
"""lab/bench/conntrack_cost.py: what ftpgate's pinhole mode costs the other
connections of the router: the CPU per connection of a stream of plain TCP
connections made in the gateway's network namespace, with no gateway
running and with each variant, in interleaved rounds.

  lab/bench/conntrack_cost.py --variant 'A=/path/to/ftpgate --data-path pinhole' [--variant ...]
                              [--rounds 4] [--conns 20000]

A process that joins conntrack event groups makes the kernel build an event
message for each connection (or each of its state steps) in the namespace,
FTP or not, before any socket filter drops it: that cost falls on whoever
sends the packet, here the connection stream. The stream is loopback TCP
(connect, accept, close) inside the gateway's namespace, whose pinhole rule
set turns conntrack on; its CPU time per connection (user and system of
the process making them: the kernel builds the events in its context) is
what it prints: the median (min-max) per variant, and its extra over
`none` (no gateway) in the same round.
Needs root; one lab (lab/netns.sh, documentation addresses), removed on
exit; every step bounded.
"""
import argparse
import os
import shlex
import statistics
import sys
import time

# The lab helpers of the A/B script: the same lab, the same bounded steps.
from ab import GW_ARGS, NETNS, PY, sh


def churn(count, max_seconds):
    """Runs in the namespace: `count` loopback connections; prints the CPU
    microseconds per connection (user + system of this process)."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    addr = listener.getsockname()
    deadline = time.monotonic() + max_seconds
    before = os.times()
    done = 0
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        c = socket.create_connection(addr, timeout=5)
        a, _ = listener.accept()
        c.close()
        a.close()
        done += 1
    after = os.times()
    cpu = (after.user + after.system) - (before.user + before.system)
    print("%d %.2f" % (done, cpu / max(done, 1) * 1e6))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "churn":
        return churn(int(sys.argv[2]), float(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=BINARY [ARGS...]")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--conns", type=int, default=20000)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("conntrack_cost.py: needs root")
    # The pinhole rule set: its conntrack is what the connections meet.
    os.environ["FTPGATE_LAB_DATA_PATH"] = "pinhole"
    variants = [("none", None, [])]
    for v in a.variant:
        name, cmd = v.split("=", 1)
        argv = shlex.split(cmd)
        variants.append((name, argv[0], argv[1:]))
    lab = "ct-%d" % os.getpid()
    results = {name: [] for name, _, _ in variants}
    try:
        sh([NETNS, "up", lab, "nft"], 180)
        # Each connection leaves a conntrack entry in TIME_WAIT: a short
        # timeout there (this lab's namespace only) keeps the table from
        # filling up over the rounds.
        sh([NETNS, "exec", lab, "g", "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])
        for rnd in range(a.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for name, binary, extra in order:
                sh([NETNS, "stop-gateway", lab], 30, check=False)
                if binary:
                    sh([NETNS, "gateway", lab, binary] + GW_ARGS + extra, 60)
                    time.sleep(0.3)
                out = sh([NETNS, "exec", lab, "g", PY, os.path.abspath(__file__), "churn", str(a.conns), "60"],
                         90).split()
                done, us = int(out[0]), float(out[1])
                results[name].append(us)
                print("round %d %-8s %d connections, %.1f µs CPU each" % (rnd, name, done, us), flush=True)
    finally:
        sh([NETNS, "down", lab], 120, check=False)
    # The host's speed drifts between rounds: each variant is compared
    # with `none` of its own round.
    print("\nCPU µs per loopback connection in the gateway namespace, median (min-max) of %d rounds;" % a.rounds)
    print("the extra: each round's figure minus none's in the same round, median (min-max)")
    for name, v in results.items():
        extra = [x - n for x, n in zip(v, results["none"])]
        print("%-10s %.1f (%.1f-%.1f)  extra %+.1f (%+.1f to %+.1f)" % (
            name, statistics.median(v), min(v), max(v), statistics.median(extra), min(extra), max(extra)))

if __name__ == "__main__":
    main()
