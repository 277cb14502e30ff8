#!/usr/bin/env python3
"""A bare transparent TCP relay: the userspace floor for lab/bench/run.

Every TCP connection the TPROXY rules divert to --port is accepted; the
relay connects to the connection's original destination *from the
original source* (IP_TRANSPARENT + bind to the foreign address), as the
kernel's tproxy example does, and moves the bytes both ways with splice(2)
through a pipe: two splices per chunk, no copy through userspace. It knows
nothing of FTP: the data connections reach it because the rules divert
every TCP port, in both directions (client side and server side), so
passive and active FTP both work.

One blocking thread per direction: the GIL is released inside os.splice,
so the Python per-chunk cost is a few bytecodes. EOF on one side becomes
shutdown(SHUT_WR) on the other; an error resets both (SO_LINGER 0).

  splice_relay.py [--port 2121] [--pipe-size 1048576]
"""
import argparse
import os
import socket
import struct
import threading

IP_TRANSPARENT = 19  # linux/in.h
F_SETPIPE_SZ = 1031  # linux/fcntl.h


def pump(src, dst, pipe_size, done):
    r, w = os.pipe()
    try:
        try:
            import fcntl

            fcntl.fcntl(w, F_SETPIPE_SZ, pipe_size)
        except OSError:
            pass  # the default 64 KiB pipe still works
        s, d = src.fileno(), dst.fileno()
        while True:
            n = os.splice(s, w, pipe_size, flags=os.SPLICE_F_MOVE)
            if n == 0:
                dst.shutdown(socket.SHUT_WR)
                break
            while n:
                n -= os.splice(r, d, n, flags=os.SPLICE_F_MOVE)
    except OSError:
        for sock in (src, dst):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        os.close(r)
        os.close(w)
        if done.acquire(blocking=False) is False:
            # the other direction finished first: this one closes both
            src.close()
            dst.close()


def relay(client, pipe_size):
    try:
        peer = client.getpeername()
        orig = client.getsockname()  # TPROXY keeps the original destination
        up = socket.socket(client.family, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        up.bind(peer)
        # no Nagle on either side: a relay that holds back small segments
        # adds a delayed-ACK wait to every FTP reply
        for sock in (client, up):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.settimeout(10)
        up.connect(orig)
        up.settimeout(None)
    except OSError:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        return
    done = threading.Semaphore(1)
    threading.Thread(target=pump, args=(client, up, pipe_size, done), daemon=True).start()
    pump(up, client, pipe_size, done)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=2121)
    p.add_argument("--pipe-size", type=int, default=1 << 20)
    args = p.parse_args()
    threading.stack_size(256 * 1024)
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    lst.bind(("0.0.0.0", args.port))
    lst.listen(4096)
    while True:
        conn, _ = lst.accept()
        threading.Thread(target=relay, args=(conn, args.pipe_size), daemon=True).start()


if __name__ == "__main__":
    main()
