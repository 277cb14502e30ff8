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
"""
import argparse
import re
import signal
import socket
import sys
import threading

IP_TRANSPARENT = 19


def tsock():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def pump(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            s.shutdown(how)
        except OSError:
            pass


def relay(a, b):
    t1 = threading.Thread(target=pump, args=(a, b), daemon=True)
    t2 = threading.Thread(target=pump, args=(b, a), daemon=True)
    t1.start(); t2.start(); t1.join(60); t2.join(60)
    a.close(); b.close()


def data_listener(bind, peer_ok, connect_to, connect_from):
    """listen on `bind` (foreign address), accept one connection from
    peer_ok's IP, connect to connect_to from connect_from, relay."""
    ls = tsock()
    ls.bind(bind)
    ls.listen(1)
    ls.settimeout(30)

    def run():
        try:
            c, peer = ls.accept()
        except OSError:
            ls.close(); return
        ls.close()
        if peer[0] != peer_ok:
            c.close(); return
        o = tsock()
        o.bind(connect_from)
        o.settimeout(10)
        o.connect(connect_to)
        o.settimeout(None); c.settimeout(None)
        relay(c, o)

    threading.Thread(target=run, daemon=True).start()
    return ls.getsockname()


def session(c, caddr):
    sip, sport = c.getsockname()
    print("session start client=%s:%d server=%s:%d" % (caddr[0], caddr[1], sip, sport), file=sys.stderr, flush=True)
    s = tsock()
    s.bind((caddr[0], 0))
    s.settimeout(10)
    s.connect((sip, sport))
    s.settimeout(None)
    cf, sf = c.makefile("rb"), s.makefile("rb")

    def server_to_client():
        for line in sf:
            m = re.match(rb"227 .*?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", line)
            m2 = re.match(rb"229 .*\(\|\|\|(\d+)\|\)", line)
            if m:
                ip = ".".join(x.decode() for x in m.groups()[:4])
                port = int(m.group(5)) * 256 + int(m.group(6))
                data_listener((ip, port), caddr[0], (ip, port), (caddr[0], 0))
            elif m2:
                port = int(m2.group(1))
                data_listener((sip, port), caddr[0], (sip, port), (caddr[0], 0))
            c.sendall(line)
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=server_to_client, daemon=True)
    t.start()
    for line in cf:
        up = line.upper()
        if up.startswith(b"PORT "):
            f = line[5:].strip().split(b",")
            cip, cport = ".".join(x.decode() for x in f[:4]), int(f[4]) * 256 + int(f[5])
            lip, lport = data_listener((caddr[0], 0), sip, (cip, cport), (sip, 20))
            line = ("PORT %s,%d,%d\r\n" % (lip.replace(".", ","), lport >> 8, lport & 255)).encode()
        elif up.startswith(b"EPRT "):
            f = line[5:].strip().decode().split("|")
            cip, cport = f[2], int(f[3])
            lip, lport = data_listener((caddr[0], 0), sip, (cip, cport), (sip, 20))
            line = ("EPRT |1|%s|%d|\r\n" % (lip, lport)).encode()
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
