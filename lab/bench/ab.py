#!/usr/bin/env python3
"""lab/bench/ab.py: an interleaved A/B of ftpgate builds or options, in one
lab, on the relay-mode figures that issue 14 tunes.

  lab/bench/ab.py --variant A=/path/to/ftpgate --variant B=/path/to/other [--variant 'C=/path --workers 1']
                  [--variant R=routing] [--rounds 5] [--size MiB] [--small N] [--what get,small,noop,sessions]
                  [--get-mode pasv|port]

Each round restarts the gateway once per variant (the order rotates every
round) and runs, through it: one large passive download (MiB/s, and the
gateway's CPU seconds per GiB from perf stat's task-clock, with its
splice and epoll_wait counts), --small files of 4 KiB in one session
(files/s), the NOOP round trip during a download (p50, p99) and, when
asked for, new control sessions for 3 s (sessions/s, gateway CPU per
session). The variant `routing` removes the lab's rules for its turn
instead: plain forwarding, the baseline. With FTPGATE_LAB_DATA_PATH=pinhole
the lab gets the pinhole rule set (`--data-path pinhole` variants). Prints
one line per measurement and the median (min-max) per variant at the
end. Needs root and perf; one lab (lab/netns.sh, documentation
addresses), removed on exit; every step bounded.
"""
import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NETNS = os.path.join(REPO, "lab", "netns.sh")
LIB = os.path.join(REPO, "lab", "lib.sh")
CLIENT = os.path.join(HERE, "client.py")
PY = os.path.realpath(sys.executable)
EVENTS = "task-clock,syscalls:sys_enter_splice,syscalls:sys_enter_epoll_wait"
GW_ARGS = ["--listen", "0.0.0.0:2121", "--session-rate-per-client", "0"]


def env():
    return dict(os.environ, FTPGATE_LAB_OWNER=str(os.getpid()), FTPGATE_LAB_RUN="/dev/shm/ftpgate-ab",
                FTPGATE_LAB_CACHE=os.environ.get("FTPGATE_LAB_CACHE") or os.path.join(REPO, "lab", ".cache"),
                FTPGATE_BIN=os.path.join(REPO, "target", "release", "ftpgate"))


def sh(argv, secs=120, check=True):
    r = subprocess.run(["timeout", "-k", "5", str(secs)] + argv, env=env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv[:3]), r.stderr.strip()[-300:]))
    return r.stdout


def client(lab, argv, secs=200):
    import json
    out = sh([NETNS, "exec", lab, "c", PY, CLIENT] + argv, secs, check=False).strip().splitlines()
    return json.loads(out[-1]) if out else {"error": "no output"}


def perf_stat(pid, fn):
    """Runs fn() with perf stat counting the gateway's threads; returns
    (fn's result, {event: count})."""
    out = "/dev/shm/ftpgate-ab/perf.%d" % os.getpid()
    p = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", EVENTS, "-p", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        r = fn()
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
    counts = {}
    for ln in open(out):
        f = ln.strip().split(",")
        if len(f) > 2 and f[0][:1].isdigit():
            counts[f[2].split("sys_enter_")[-1]] = float(f[0])
    return r, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=BINARY [ARGS...]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024, help="MiB")
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--what", default="get,small,noop")
    ap.add_argument("--get-mode", choices=("pasv", "port"), default="pasv", help="the large download's data mode")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("ab.py: needs root")
    variants = []
    for v in a.variant:
        name, cmd = v.split("=", 1)
        argv = shlex.split(cmd)
        variants.append((name, argv[0], argv[1:]))
    what = a.what.split(",")
    lab = "ab-%d" % os.getpid()
    results = {name: {} for name, _, _ in variants}
    try:
        sh([NETNS, "up", lab, "nft"], 180)
        run = sh([NETNS, "rundir", lab]).strip()
        sh([NETNS, "vsftpd", lab], 300)
        pub = os.path.join(run, "ftproot", "pub")
        with open(os.path.join(pub, "big.bin"), "wb") as f:
            f.truncate(a.size << 20)
        os.makedirs(os.path.join(pub, "small"))
        block = os.urandom(4096)
        for i in range(a.small):
            with open(os.path.join(pub, "small", "f%04d" % i), "wb") as f:
                f.write(block)
        subprocess.run(["chmod", "-R", "a+rX", pub], check=True)
        for rnd in range(a.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for name, binary, extra in order:
                sh([NETNS, "stop-gateway", lab], 30, check=False)
                routing = binary == "routing"
                # TIME_WAIT entries of the gateway's transparent sockets
                # would blackhole a routed flow on the same 4-tuple
                # (lab/bench/run): routing gets client ports of its own.
                ports = "20000 29999" if routing else "30000 60999"
                sh([NETNS, "exec", lab, "c", "sh", "-c", "echo %s > /proc/sys/net/ipv4/ip_local_port_range" % ports])
                if routing:
                    sh([NETNS, "rules", lab, "del", "nft"], 60)
                    pid = None
                else:
                    sh([NETNS, "gateway", lab, binary] + GW_ARGS + extra, 60)
                    time.sleep(0.3)
                    pid = int(sh(["bash", "-c", '. "$1"; pidfile_pid "$2"', "_", LIB,
                                  os.path.join(run, "ftpgate.pid")]).strip())
                try:
                    measure(lab, a, what, pid, results[name])
                finally:
                    if routing:
                        sh([NETNS, "rules", lab, "add", "nft"], 60)
                last = "  ".join("%s %.3g" % (k, v[-1]) for k, v in results[name].items())
                print("round %d %s: %s" % (rnd, name, last), flush=True)
    finally:
        sh([NETNS, "down", lab], 120, check=False)
    print("\nmedian (min-max) of %d rounds, interleaved" % a.rounds)
    for name, rec in results.items():
        print("%-10s " % name + "  ".join("%s %.3g (%.3g-%.3g)" % (k, statistics.median(v), min(v), max(v))
                                           for k, v in rec.items()))


def measure(lab, a, what, pid, rec):
    """One round of one variant into rec; pid is the gateway's (None: routing)."""
    def counted(fn):
        return (fn(), None) if pid is None else perf_stat(pid, fn)

    if "get" in what:
        get = ["bulk", "--dir", "get", "--mode", a.get_mode, "--path", "/pub/big.bin", "--max-seconds", "120"]
        client(lab, get)  # warm-up
        r, c = counted(lambda: client(lab, get))
        if r.get("final") == "226":
            gib = r["bytes"] / 2**30
            rec.setdefault("MiB/s", []).append(r["bytes"] / r["seconds"] / 2**20)
            if c:
                rec.setdefault("cpu s/GiB", []).append(c["task-clock"] / 1000 / gib)
                rec.setdefault("splice/GiB", []).append(c["splice"] / gib)
                rec.setdefault("epoll_wait/GiB", []).append(c["epoll_wait"] / gib)
    if "small" in what:
        r, c = counted(lambda: client(lab, ["small", "--count", str(a.small), "--max-seconds", "30"]))
        if r.get("final") == "226":
            rec.setdefault("files/s", []).append(r["files"] / r["seconds"])
            if c:
                rec.setdefault("cpu ms/file", []).append(c["task-clock"] / r["files"])
    if "noop" in what:
        r = client(lab, ["noop", "--path", "/pub/big.bin", "--interval-ms", "2", "--min-seconds", "3",
                         "--max-seconds", "120"])
        if r.get("final") == "226":
            rec.setdefault("noop p50 ms", []).append(r["p50_ms"])
            rec.setdefault("noop p99 ms", []).append(r["p99_ms"])
    if "sessions" in what:
        r, c = counted(lambda: client(lab, ["sessions", "--seconds", "3", "--max", "5000"]))
        if r.get("sessions") and not r.get("errors"):
            rec.setdefault("sessions/s", []).append(r["sessions"] / r["seconds"])
            if c:
                rec.setdefault("cpu ms/session", []).append(c["task-clock"] / r["sessions"])


if __name__ == "__main__":
    main()
