#!/usr/bin/env python3
"""Open many FTP control connections at once and read each one's first
reply line, from the lab's client namespace (python3 stdlib only).

  many_sessions.py --server 198.51.100.10:21 --sources 192.0.2.10,192.0.2.11
                   --per-source 96 --timeout 60 [--hold]

Connections go out round robin over --sources (each bound as the source
address), --batch at a time while earlier ones are read, non-blocking, in
one selector. Each is counted by
its first line: its reply code ("220", "421", ...), "closed" (EOF before a
line), "error" (connect or read failed) or "timeout". Then one JSON object
goes to stdout: {"opened", "codes": {code: count}, "seconds"}. With
--hold, every connection that got a 220 stays open until stdin reaches
EOF (or --hold-timeout passes), so the caller can look at the gateway
while the sessions are up; then all are closed.

Bounded: every phase has a deadline; RLIMIT_NOFILE is raised to its hard
limit first.
"""
import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="198.51.100.10:21")
    p.add_argument("--sources", required=True, help="comma-separated source addresses")
    p.add_argument("--per-source", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for all first lines")
    p.add_argument("--batch", type=int, default=200, help="connections opened per round")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--hold-timeout", type=float, default=120.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = args.server.rpartition(":")
    server = (host, int(port))
    sources = [s for s in args.sources.split(",") if s]
    total = len(sources) * args.per_source
    if total + 64 > hard:
        print("need %d descriptors, RLIMIT_NOFILE hard is %d" % (total + 64, hard), file=sys.stderr)
        return 2
    sel = selectors.DefaultSelector()
    bufs = {}
    codes = {}
    started = time.monotonic()
    deadline = started + args.timeout

    def count(what, n=1):
        codes[what] = codes.get(what, 0) + n

    held = []
    opened = 0

    def open_one(i):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((sources[i % len(sources)], 0))
            s.connect_ex(server)
        except OSError as e:
            count("error")
            print("connect %d: %s" % (i, e), file=sys.stderr)
            s.close()
            return
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)

    while (bufs or opened < total) and time.monotonic() < deadline:
        # A batch per round, not all at once: the listen backlog of the
        # gateway is finite, and a dropped SYN costs a 1 s retransmit.
        for _ in range(min(args.batch, total - opened)):
            open_one(opened)
            opened += 1
        if not bufs:
            continue
        for key, _ in sel.select(timeout=0.05 if opened < total else 0.5):
            s = key.fileobj
            try:
                data = s.recv(512)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                count("error")
                if e.errno not in (errno.ECONNRESET, errno.ECONNREFUSED):
                    print("read: %s" % e, file=sys.stderr)
                sel.unregister(s)
                del bufs[s]
                s.close()
                continue
            if not data:
                count("closed")
                sel.unregister(s)
                del bufs[s]
                s.close()
                continue
            bufs[s] += data
            if b"\n" in bufs[s]:
                code = bufs[s][:3].decode("ascii", "replace")
                count(code)
                sel.unregister(s)
                del bufs[s]
                if code == "220":
                    held.append(s)
                else:
                    s.close()
    if opened < total:
        count("timeout", total - opened)
    for s in list(bufs):
        count("timeout")
        s.close()
    seconds = round(time.monotonic() - started, 3)
    print(json.dumps({"opened": total, "codes": codes, "seconds": seconds}), flush=True)
    if args.hold:
        # Wait for EOF on stdin: the caller is done looking.
        sel2 = selectors.DefaultSelector()
        sel2.register(sys.stdin, selectors.EVENT_READ)
        end = time.monotonic() + args.hold_timeout
        while time.monotonic() < end:
            if sel2.select(timeout=0.5) and not sys.stdin.buffer.read1(4096):
                break
    for s in held:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
