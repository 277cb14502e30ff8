#!/usr/bin/env python3
"""A server for the lab's server namespace that greets and holds: every
connection gets "220 greeter ready" and is then kept open, its input read
and dropped, until the peer closes it. One thread, one selector, so it
holds tens of thousands of connections (vsftpd stops at max_clients).

Bounded: the process exits by itself after --lifetime seconds, and it
holds at most --max connections (beyond that, new ones are closed at once).
"""
import argparse
import resource
import selectors
import socket
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="198.51.100.10:21", help="ADDR:PORT")
    p.add_argument("--lifetime", type=float, default=300.0, help="exit after this many seconds")
    p.add_argument("--max", type=int, default=20000, help="connections held at once")
    args = p.parse_args()
    nofile = raise_nofile()
    host, _, port = args.listen.rpartition(":")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    print("listening on %s (nofile %d)" % (args.listen, nofile), file=sys.stderr, flush=True)
    held = 0
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is ls:
                for _ in range(256):
                    try:
                        conn, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:  # EMFILE: say so, try again later
                        print("accept: %s" % e, file=sys.stderr, flush=True)
                        break
                    if held >= args.max:
                        conn.close()
                        continue
                    try:
                        conn.send(b"220 greeter ready\r\n")
                    except OSError:
                        conn.close()
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    held += 1
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    held -= 1
                elif data.upper().startswith(b"QUIT"):
                    try:
                        conn.send(b"221 bye\r\n")
                    except OSError:
                        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
