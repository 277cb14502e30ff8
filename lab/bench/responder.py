#!/usr/bin/env python3
"""A minimal FTP control responder for lab/bench/run's idle-session
workload: thousands of sessions in one process, where vsftpd would fork a
process per session (and the lab's vsftpd allows 50). It answers the
banner, USER, PASS, NOOP and QUIT; everything else gets 502. No data
channels. Runs in the server namespace on [::]:21 (both families) while
vsftpd is stopped.

  responder.py [--port 21]
"""
import argparse
import resource
import selectors
import socket

REPLIES = {
    b"USER": b"331 Any password.\r\n",
    b"PASS": b"230 Logged in.\r\n",
    b"NOOP": b"200 NOOP ok.\r\n",
    b"QUIT": b"221 Goodbye.\r\n",
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=21)
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lst.bind(("::", args.port))
    lst.listen(4096)
    lst.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ, None)
    bufs = {}

    def close(c):
        sel.unregister(c)
        bufs.pop(c, None)
        c.close()

    while True:
        for key, _ in sel.select():
            if key.data is None:
                for _ in range(256):
                    try:
                        c, _ = lst.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    try:
                        c.send(b"220 bench responder.\r\n")
                    except OSError:
                        c.close()
                        continue
                    bufs[c] = b""
                    sel.register(c, selectors.EVENT_READ, True)
                continue
            c = key.fileobj
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if not data:
                close(c)
                continue
            buf = bufs[c] + data
            quit_ = False
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                verb = line.strip().split(b" ", 1)[0].upper()
                try:
                    c.send(REPLIES.get(verb, b"502 Not here.\r\n"))
                except OSError:
                    quit_ = True
                    break
                if verb == b"QUIT":
                    quit_ = True
                    break
            if quit_ or len(buf) > 4096:
                close(c)
            else:
                bufs[c] = buf


if __name__ == "__main__":
    main()
