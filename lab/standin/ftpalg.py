#!/usr/bin/env python3
"""Stand-in transparent FTP gateway, for developing and checking the LAB
(rules, routing, vsftpd, test harness) independently of ftpgate itself.
Not a product: no policy, little validation, one thread per connection.

  ip netns exec NAME-g python3 lab/standin/ftpalg.py [--listen-port 2121]

Uses the three tproxy capabilities like ftpgate does: accepts TPROXY'd
control connections (original destination = getsockname()), connects to the
server from the client's address, listens on the server's passive address /
on the client's address for active mode, and connects to the client from
the server's address and port 20. SIGTERM exits 0.

Writes ftpgate's transfer record (same message, keys and slog-term layout)
to stderr after each transfer's final reply, so that the tests' record
checks run against the stand-in too: `... INFO transfer, result: ok, reply:
226, ms: 4, to_server: 0, to_client: 123, command: RETR x, user: anonymous,
mode: passive, data: 0`.
"""
import argparse
import re
import signal
import socket
import struct
import sys
import threading
import time

IP_TRANSPARENT = 19


def tsock():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def log(msg, **kv):
    now = time.time()
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now)) + ".%03d" % (now % 1 * 1000)
    fields = "".join(", %s: %s" % (k, v) for k, v in kv.items())
    print("%s INFO %s%s" % (stamp, msg, fields), file=sys.stderr, flush=True)


class DataChannel:
    """Byte counts of one relayed data connection, and whether it ran."""

    def __init__(self):
        self.to_client = 0
        self.to_server = 0
        self.failed = False
        self.started = threading.Event()
        self.done = threading.Event()


def pump(src, dst, count=None):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
            if count:
                count(len(b))
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass


def relay(a, b, count_ab=None, count_ba=None):
    t1 = threading.Thread(target=pump, args=(a, b, count_ab), daemon=True)
    t2 = threading.Thread(target=pump, args=(b, a, count_ba), daemon=True)
    t1.start(); t2.start(); t1.join(60); t2.join(60)
    a.close(); b.close()


def data_listener(bind, peer_ok, connect_to, connect_from, channel, accepts_client):
    """listen on `bind` (foreign address), accept one connection from
    peer_ok's IP, connect to connect_to from connect_from, relay, counting
    bytes into `channel` (`accepts_client`: the accepted side is the
    client's, passive mode)."""
    ls = tsock()
    ls.bind(bind)
    ls.listen(1)
    ls.settimeout(30)

    def to_client(n):
        channel.to_client += n

    def to_server(n):
        channel.to_server += n

    def run():
        try:
            c, peer = ls.accept()
        except OSError:
            ls.close(); return
        ls.close()
        if peer[0] != peer_ok:
            c.close(); return
        channel.started.set()
        try:
            o = tsock()
            o.bind(connect_from)
            o.settimeout(10)
            o.connect(connect_to)
        except OSError:
            channel.failed = True
            c.close(); channel.done.set(); return
        o.settimeout(None); c.settimeout(None)
        if accepts_client:
            relay(c, o, to_server, to_client)
        else:
            relay(c, o, to_client, to_server)
        channel.done.set()

    threading.Thread(target=run, daemon=True).start()
    return ls.getsockname()


TRANSFER_VERBS = (b"RETR", b"STOR", b"APPE", b"STOU", b"LIST", b"NLST", b"MLSD")


def session(c, caddr):
    sip, sport = c.getsockname()
    print("session start client=%s:%d server=%s:%d" % (caddr[0], caddr[1], sip, sport), file=sys.stderr, flush=True)
    s = tsock()
    try:
        s.bind((caddr[0], 0))
        s.settimeout(10)
        s.connect((sip, sport))
    except OSError as e:
        # like ftpgate: a refusal passes on as a reset; otherwise the
        # client gets a clean 421; the log says why
        refused = isinstance(e, ConnectionRefusedError)
        log("server refused the connection" if refused else "server unreachable",
            error=e, server="%s:%d" % (sip, sport))
        try:
            if refused:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                c.sendall(b"421 Service not available.\r\n")
        except OSError:
            pass
        c.close(); s.close()
        return
    s.settimeout(None)
    cf, sf = c.makefile("rb"), s.makefile("rb")
    # what the transfer record needs: the last data setup, the pending
    # transfer command, the user, a REST offset
    st = {"mode": None, "channel": None, "command": None, "user": "-", "rest": None,
          "started": 0.0, "data": -1}

    def new_channel(mode):
        st["mode"], st["channel"] = mode, DataChannel()
        st["data"] += 1
        return st["channel"]

    def transfer_record(reply):
        ch, cmd = st["channel"], st["command"]
        st["command"] = None
        if ch is None:
            return
        # a 2xx means the server had its data connection; in active mode
        # our accept of it may still be on its way
        if reply.startswith(b"2"):
            ch.started.wait(5)
        if ch.started.is_set():
            ch.done.wait(30)
        ok = reply.startswith(b"2") and ch.done.is_set() and not ch.failed
        log("transfer", result="ok" if ok else "failed", reply=reply[:3].decode(),
            ms=int((time.monotonic() - st["started"]) * 1000),
            to_server=ch.to_server, to_client=ch.to_client, command=cmd,
            user=st["user"], mode=st["mode"], data=st["data"])

    def server_to_client():
        for line in sf:
            m = re.match(rb"227 .*?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", line)
            m2 = re.match(rb"229 .*\(\|\|\|(\d+)\|\)", line)
            if m:
                ip = ".".join(x.decode() for x in m.groups()[:4])
                port = int(m.group(5)) * 256 + int(m.group(6))
                data_listener((ip, port), caddr[0], (ip, port), (caddr[0], 0), new_channel("passive"), True)
            elif m2:
                port = int(m2.group(1))
                data_listener((sip, port), caddr[0], (sip, port), (caddr[0], 0), new_channel("passive"), True)
            elif st["command"] and re.match(rb"[2-5]\d\d ", line):
                transfer_record(line)
            c.sendall(line)
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=server_to_client, daemon=True)
    t.start()
    for line in cf:
        up = line.upper()
        verb = up.split(b" ", 1)[0].strip()
        if up.startswith(b"PORT "):
            f = line[5:].strip().split(b",")
            cip, cport = ".".join(x.decode() for x in f[:4]), int(f[4]) * 256 + int(f[5])
            lip, lport = data_listener((caddr[0], 0), sip, (cip, cport), (sip, 20), new_channel("active"), False)
            line = ("PORT %s,%d,%d\r\n" % (lip.replace(".", ","), lport >> 8, lport & 255)).encode()
        elif up.startswith(b"EPRT "):
            f = line[5:].strip().decode().split("|")
            cip, cport = f[2], int(f[3])
            lip, lport = data_listener((caddr[0], 0), sip, (cip, cport), (sip, 20), new_channel("active"), False)
            line = ("EPRT |1|%s|%d|\r\n" % (lip, lport)).encode()
        elif verb == b"USER":
            st["user"] = line[5:].strip().decode(errors="replace")
        elif verb == b"REST":
            st["rest"] = line[5:].strip().decode(errors="replace")
        elif verb in TRANSFER_VERBS:
            cmd = line.strip().decode(errors="replace")
            if st["rest"] and verb == b"RETR":
                cmd += " (REST %s)" % st["rest"]
            st["rest"], st["command"], st["started"] = None, cmd, time.monotonic()
        s.sendall(line)
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    t.join(60)
    c.close(); s.close()
    print("session end client=%s:%d" % caddr, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--listen-port", type=int, default=2121)
    args, _ = ap.parse_known_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ls = tsock()
    ls.bind(("0.0.0.0", args.listen_port))
    ls.listen(64)
    while True:
        c, a = ls.accept()
        threading.Thread(target=session, args=(c, a), daemon=True).start()


if __name__ == "__main__":
    main()
