#!/usr/bin/env python3
"""Routed (non-FTP) TCP flows through the lab's gateway, and whether they
survive: tests/forwarded.rs runs the echo side in the server namespace and
the flows in the client namespace, while active FTP transfers make
ftpgate listen on the client's address.

  routed_flows.py echo --listen ADDR:PORT --lifetime S
      echoes every connection's bytes back, one thread per connection;
      exits after S seconds
  routed_flows.py flows --server ADDR:PORT --source ADDR --ports P,P,... --seconds S
      one connection from each source port, then ping-pong (10 bytes out,
      the echo back) on each in turn for S seconds; prints one JSON line:
      {"rounds": N, "broken": {"PORT": "why", ...}}

Bounded: every socket has a timeout, the flows stop after S seconds or
1,000,000 rounds, the echo side exits after its lifetime.
"""
import argparse
import json
import socket
import sys
import threading
import time


def split(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def echo(args):
    host, port = split(args.listen)
    ls = socket.socket(family(host))
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(64)
    ls.settimeout(0.5)
    deadline = time.monotonic() + args.lifetime

    def serve(c):
        c.settimeout(max(deadline - time.monotonic(), 0.1))
        with c:
            try:
                while time.monotonic() < deadline:
                    d = c.recv(4096)
                    if not d:
                        return
                    c.sendall(d)
            except OSError:
                return

    print("echo listening on %s" % args.listen, file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def flows(args):
    host, port = split(args.server)
    ports = [int(p) for p in args.ports.split(",")]
    socks = []
    for p in ports:
        s = socket.socket(family(host))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.source, p))
        s.settimeout(3)
        s.connect((host, port))
        socks.append((p, s))
    # Tell the caller the flows are up before the measured part starts.
    print("up", file=sys.stderr, flush=True)
    broken = {}
    rounds = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds and rounds < 1_000_000 and len(broken) < len(socks):
        rounds += 1
        for p, s in socks:
            if p in broken:
                continue
            try:
                s.sendall(b"0123456789")
                got = b""
                while len(got) < 10:
                    d = s.recv(10 - len(got))
                    if not d:
                        raise ConnectionError("closed by the peer")
                    got += d
                if got != b"0123456789":
                    # something else answered: not the echo service
                    broken[str(p)] = "not an echo: %r" % got
            except OSError as e:
                broken[str(p)] = repr(e)
    for _, s in socks:
        s.close()
    print(json.dumps({"rounds": rounds, "broken": broken}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--listen", required=True)
    e.add_argument("--lifetime", type=float, default=60.0)
    f = sub.add_parser("flows")
    f.add_argument("--server", required=True)
    f.add_argument("--source", required=True)
    f.add_argument("--ports", required=True)
    f.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    {"echo": echo, "flows": flows}[args.cmd](args)


if __name__ == "__main__":
    main()
