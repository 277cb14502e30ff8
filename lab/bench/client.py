#!/usr/bin/env python3
"""The client side of lab/bench/run: one workload per call, run in the
lab's client namespace, one JSON object on stdout. Python stdlib only, the
same for every system measured, so the client's own cost cancels out in
the ratios.

  client.py bulk --dir get|put --mode pasv|port --path P [--source F] --max-seconds S
  client.py parallel --count 8 --path P --max-seconds S
  client.py small --count 1000 --prefix /pub/small/f --max-seconds S
  client.py sessions --seconds S --max N
  client.py idle --count N --max-seconds S     (talks to the driver on stdin/stdout)
  client.py noop --path P --interval-ms 2 --max-seconds S

Every loop is bounded by a count and a deadline; every socket has a
timeout. Passive data connections go to the address the 227 names (a
non-transparent proxy names its own); active ones listen on the client's
address, on an ephemeral port from the namespace's ip_local_port_range.
"""
import argparse
import json
import resource
import selectors
import socket
import struct
import sys
import threading
import time

SERVER = "198.51.100.10"
CLIENT = "192.0.2.10"
BUF = 1 << 20


class Ftp:
    """A control connection: just enough FTP for the workloads."""

    def __init__(self, timeout=30):
        self.sock = socket.create_connection((SERVER, 21), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def reply(self):
        first = self.f.readline(8192).decode("latin-1")
        if len(first) >= 4 and first[3] == "-":
            for _ in range(1000):
                last = self.f.readline(8192).decode("latin-1")
                if not last or last.startswith(first[:3] + " "):
                    return last
        return first

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def expect(self, text, code):
        r = self.cmd(text)
        if not r.startswith(code):
            raise RuntimeError("%s -> %r (wanted %s)" % (text.split(" ")[0], r.strip(), code))
        return r

    def login(self):
        r = self.reply()
        if not r.startswith("220"):
            raise RuntimeError("banner %r" % r.strip())
        r = self.cmd("USER anonymous")
        if r.startswith("331"):
            r = self.cmd("PASS bench@example.org")
        if not r.startswith("230"):
            raise RuntimeError("login %r" % r.strip())
        self.expect("TYPE I", "200")

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.sock.close()

    def passive(self):
        r = self.expect("PASV", "227")
        nums = [int(x) for x in r[r.index("(") + 1 : r.index(")")].split(",")]
        addr = ".".join(str(n) for n in nums[:4])
        return socket.create_connection((addr, nums[4] * 256 + nums[5]), timeout=30)

    def transfer(self, verb, path, mode):
        """Sends VERB PATH over a fresh data connection; returns it once open."""
        if mode == "pasv":
            d = self.passive()
            self.expect("%s %s" % (verb, path), "150")
            return d
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind((CLIENT, 0))
        lst.listen(1)
        lst.settimeout(30)
        port = lst.getsockname()[1]
        self.expect("PORT %s,%d,%d" % (CLIENT.replace(".", ","), port >> 8, port & 255), "200")
        self.expect("%s %s" % (verb, path), "150")
        d, _ = lst.accept()
        lst.close()
        d.settimeout(30)
        return d


def drain(d, deadline):
    buf = bytearray(BUF)
    n = 0
    while time.monotonic() < deadline:
        k = d.recv_into(buf)
        if k == 0:
            break
        n += k
    d.close()
    return n


def bulk(a):
    deadline = time.monotonic() + a.max_seconds
    ftp = Ftp()
    ftp.login()
    t0 = time.monotonic()
    if a.dir == "get":
        d = ftp.transfer("RETR", a.path, a.mode)
        n = drain(d, deadline)
    else:
        d = ftp.transfer("STOR", a.path, a.mode)
        with open(a.source, "rb") as f:
            n = d.sendfile(f)
        d.close()
    final = ftp.reply().strip()
    secs = time.monotonic() - t0
    ftp.close()
    return {"bytes": n, "seconds": secs, "final": final[:3]}


def parallel(a):
    deadline = time.monotonic() + a.max_seconds
    results = [None] * a.count
    ready = threading.Barrier(a.count + 1, timeout=60)

    def one(i):
        try:
            ftp = Ftp()
            ftp.login()
            ready.wait()
            d = ftp.transfer("RETR", a.path, "pasv")
            n = drain(d, deadline)
            results[i] = {"bytes": n, "final": ftp.reply().strip()[:3], "end": time.monotonic()}
            ftp.close()
        except (OSError, RuntimeError, threading.BrokenBarrierError) as e:
            results[i] = {"bytes": 0, "final": "error: %s" % e, "end": time.monotonic()}
            ready.abort()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.count)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    done = [r for r in results if r]
    end = max([r["end"] for r in done] or [time.monotonic()])
    finals = sorted({r["final"] for r in done})
    return {"bytes": sum(r["bytes"] for r in done), "seconds": end - t0, "final": ",".join(finals),
            "transfers": len(done)}


def small(a):
    deadline = time.monotonic() + a.max_seconds
    ftp = Ftp()
    ftp.login()
    finals = {}
    n = 0
    moved = 0
    t0 = time.monotonic()
    for i in range(a.count):
        if time.monotonic() > deadline:
            break
        d = ftp.transfer("RETR", "%s%04d" % (a.prefix, i), "pasv")
        moved += drain(d, deadline)
        f = ftp.reply().strip()[:3]
        finals[f] = finals.get(f, 0) + 1
        n += 1
    secs = time.monotonic() - t0
    ftp.close()
    return {"files": n, "bytes": moved, "seconds": secs, "final": ",".join(sorted(finals))}


def sessions(a):
    deadline = time.monotonic() + a.seconds
    n = 0
    bad = {}
    t0 = time.monotonic()
    while n < a.max and time.monotonic() < deadline:
        try:
            s = socket.create_connection((SERVER, 21), timeout=10)
            f = s.makefile("rb")
            logged_in = False
            for send, code in ((None, b"220"), (b"USER anonymous\r\n", b"331"),
                               (b"PASS bench@example.org\r\n", b"230"), (b"QUIT\r\n", b"221")):
                if code == b"230" and logged_in:
                    continue  # the server asked no password
                if send:
                    s.sendall(send)
                line = f.readline(8192)
                while line[3:4] == b"-":
                    line = f.readline(8192)
                if code == b"331" and line.startswith(b"230"):
                    logged_in = True
                    continue
                if not line.startswith(code):
                    raise RuntimeError(line[:40].decode("latin-1").strip() or "closed")
            # the server closes first after 221: its side keeps TIME_WAIT,
            # the client's ephemeral port is free at once
            f.read(1)
            s.close()
            n += 1
        except (OSError, RuntimeError) as e:
            k = str(e)[:60]
            bad[k] = bad.get(k, 0) + 1
            if sum(bad.values()) > 20:
                break
    return {"sessions": n, "seconds": time.monotonic() - t0, "errors": bad}


# The idle workload gives up when no reply came for this long: 10,000
# sessions take a few seconds where they work at all.
IDLE_STALL_SECONDS = 10


def idle(a):
    """Opens --count logged-in sessions at once, tells the driver (stdout
    'held N'), waits for its 'go' on stdin, then NOOPs every session and
    counts the 200s. Connections end with a reset: no TIME_WAIT left to
    collide with the next round's ports."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deadline = time.monotonic() + a.max_seconds
    sel = selectors.DefaultSelector()
    conns = {}  # sock -> [state, buf]; state counts the replies read
    script = [b"USER anonymous\r\n", b"PASS bench@example.org\r\n"]
    want = [b"220", b"331", b"230"]
    opened = 0
    failed = {}

    def fail(s, why):
        failed[why] = failed.get(why, 0) + 1
        sel.unregister(s)
        conns.pop(s, None)
        s.close()

    stall = {"since": None}

    def pump(until_state, t_end):
        """Reads replies until every session reached until_state, t_end,
        or nothing moved for IDLE_STALL_SECONDS (then `stall` says so and
        no more sessions are opened: a system that has stopped answering
        gets no more of them, and the run does not wait out its bound)."""
        last = time.monotonic()
        while time.monotonic() < t_end:
            pending = [s for s, st in conns.items() if st[0] < until_state]
            if not pending:
                return
            if time.monotonic() - last > IDLE_STALL_SECONDS:
                stall["since"] = last
                return
            for key, _ in sel.select(0.2):
                last = time.monotonic()
                s = key.fileobj
                st = conns.get(s)
                if st is None:
                    continue
                try:
                    data = s.recv(4096)
                except OSError as e:
                    fail(s, "recv: %s" % e.strerror)
                    continue
                if not data:
                    fail(s, "closed")
                    continue
                st[1] += data
                while b"\n" in st[1] and st[0] < until_state:
                    line, st[1] = st[1].split(b"\n", 1)
                    if line[3:4] == b"-":
                        continue
                    code = line[:3]
                    if st[0] == len(want) and code != b"200":
                        fail(s, "NOOP reply %s" % code.decode("latin-1"))
                        break
                    if st[0] < len(want) and code != want[st[0]]:
                        if not (st[0] == 1 and code == b"230"):
                            fail(s, "reply %s" % code.decode("latin-1"))
                            break
                        st[0] += 1  # no password asked
                    st[0] += 1
                    if st[0] < len(want):
                        s.send(script[st[0] - 1])

    for i in range(a.count):
        if time.monotonic() > deadline or stall["since"] is not None:
            break
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((SERVER, 21))
        except OSError as e:
            failed["socket: %s" % e.strerror] = failed.get("socket: %s" % e.strerror, 0) + 1
            break
        conns[s] = [0, b""]
        sel.register(s, selectors.EVENT_READ)
        opened += 1
        if opened % a.batch == 0:
            pump(3, min(deadline, time.monotonic() + 30))
    pump(3, deadline)
    held = sum(1 for st in conns.values() if st[0] >= 3)
    print(json.dumps({"held": held}), flush=True)
    sys.stdin.readline()  # the driver has sampled the gateway
    t0 = time.monotonic()
    for s, st in list(conns.items()):
        if st[0] >= 3:
            try:
                s.send(b"NOOP\r\n")
            except OSError:
                fail(s, "send NOOP")
    pump(4, min(deadline + 30, time.monotonic() + 60))
    answered = sum(1 for st in conns.values() if st[0] >= 4)
    noop_secs = time.monotonic() - t0
    for s in list(conns):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    if stall["since"] is not None and opened < a.count:
        failed["not opened: no reply for %d s" % IDLE_STALL_SECONDS] = a.count - opened
    return {"opened": opened, "held": held, "noop_ok": answered, "noop_seconds": noop_secs,
            "failed": failed}


def percentile(xs, p):
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def noop(a):
    """NOOP round trips of an idle session while one large download runs
    in another session (lab/bench/noop-latency's method)."""
    deadline = time.monotonic() + a.max_seconds
    idle_s = Ftp(10)
    idle_s.login()
    result = {}

    def download():
        # the same file again until --min-seconds have passed, so that a
        # small file still gives enough samples
        try:
            t_end = time.monotonic() + a.min_seconds
            for _ in range(1000):
                result.update(bulk(argparse.Namespace(dir="get", mode="pasv", path=a.path,
                                                      max_seconds=a.max_seconds)))
                if result["final"] != "226" or time.monotonic() > min(t_end, deadline):
                    break
        except (OSError, RuntimeError) as e:
            result["final"] = "error: %s" % e

    th = threading.Thread(target=download, daemon=True)
    th.start()
    samples = []
    pause = a.interval_ms / 1000
    while th.is_alive() and len(samples) < 1_000_000 and time.monotonic() < deadline:
        t = time.perf_counter()
        r = idle_s.cmd("NOOP")
        samples.append((time.perf_counter() - t) * 1000)
        if not r.startswith("200"):
            raise RuntimeError("NOOP -> %r" % r.strip())
        time.sleep(pause)
    th.join(max(0.0, deadline - time.monotonic()) + 5)
    idle_s.close()
    return {"n": len(samples), "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples) if samples else float("nan"), "final": result.get("final", "none")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bulk")
    b.add_argument("--dir", choices=("get", "put"), required=True)
    b.add_argument("--mode", choices=("pasv", "port"), required=True)
    b.add_argument("--path", required=True)
    b.add_argument("--source")
    b.add_argument("--max-seconds", type=float, default=120)
    b = sub.add_parser("parallel")
    b.add_argument("--count", type=int, default=8)
    b.add_argument("--path", required=True)
    b.add_argument("--max-seconds", type=float, default=120)
    b = sub.add_parser("small")
    b.add_argument("--count", type=int, default=1000)
    b.add_argument("--prefix", default="/pub/small/f")
    b.add_argument("--max-seconds", type=float, default=120)
    b = sub.add_parser("sessions")
    b.add_argument("--seconds", type=float, default=2)
    b.add_argument("--max", type=int, default=5000)
    b = sub.add_parser("idle")
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--batch", type=int, default=200)
    b.add_argument("--max-seconds", type=float, default=120)
    b = sub.add_parser("noop")
    b.add_argument("--path", required=True)
    b.add_argument("--interval-ms", type=float, default=2.0)
    b.add_argument("--min-seconds", type=float, default=3.0)
    b.add_argument("--max-seconds", type=float, default=120)
    a = p.parse_args()
    fn = {"bulk": bulk, "parallel": parallel, "small": small, "sessions": sessions, "idle": idle,
          "noop": noop}[a.what]
    try:
        out = fn(a)
    except (OSError, RuntimeError) as e:
        out = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
