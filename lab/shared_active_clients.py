#!/usr/bin/env python3
"""Several active-mode FTP sessions from one client address, each to its own
server, that all announce the same data port (PORT SRC,P) before any of
them sends RETR: each server connects to the port ftpgate told it, and
ftpgate connects to SRC:P for every one of them, from that server's
address. Python 3 stdlib only; runs in the lab's client namespace.

  shared_active_clients.py --src SRC --port P SERVER:REMOTE:LOCAL ...

One socket listens on SRC:P; every data connection that reaches it goes to
the session of its peer's address (the server, which the gateway connects
from transparently). Each session logs in (anonymous), sets TYPE I, sends
PORT; once every session has its 200, all send RETR at once.

Prints one JSON object per session, in the order given: {"server",
"port_reply", "bytes", "final", "error"}. Bounded: every socket has a
timeout, every wait a deadline.
"""
import argparse
import json
import queue
import socket
import threading

# The same control-connection reader as the passive shared-port client.
from shared_port_clients import Control

TIMEOUT = 30.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("sessions", nargs="+", metavar="SERVER:REMOTE:LOCAL")
    return p.parse_args()


def session(args, spec, out, ported, arrivals):
    server, remote, local = spec.split(":", 2)
    out.update(server=server, port_reply=None, bytes=0, final=None, error=None)
    try:
        c = Control(args.src, server, 21)
        c.reply()  # greeting
        c.cmd("USER anonymous")
        c.cmd("PASS guest@")
        c.cmd("TYPE I")
        h = args.src.replace(".", ",")
        out["port_reply"] = c.cmd("PORT %s,%d,%d" % (h, args.port >> 8, args.port & 255))
        ported.wait()
        preliminary = c.cmd("RETR %s" % remote)
        if not preliminary.startswith("1"):
            out["final"] = preliminary
            raise OSError("RETR refused: %s" % preliminary)
        d = arrivals.get(timeout=TIMEOUT)
        d.settimeout(TIMEOUT)
        n = 0
        with open(local, "wb") as f:
            while True:
                chunk = d.recv(64 * 1024)
                if not chunk:
                    break
                f.write(chunk)
                n += len(chunk)
        d.close()
        out["bytes"] = n
        out["final"] = c.reply()
        c.cmd("QUIT")
    except (OSError, queue.Empty, threading.BrokenBarrierError) as e:
        out["error"] = str(e) or type(e).__name__


def main():
    args = parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.src, args.port))
    listener.listen(8)
    listener.settimeout(TIMEOUT)
    servers = [s.split(":", 1)[0] for s in args.sessions]
    arrivals = {server: queue.Queue() for server in servers}
    ported = threading.Barrier(len(args.sessions), timeout=TIMEOUT)
    outs = [{} for _ in args.sessions]
    threads = [threading.Thread(target=session, args=(args, spec, out, ported, arrivals[spec.split(":", 1)[0]]))
               for spec, out in zip(args.sessions, outs)]
    for t in threads:
        t.start()
    strays = []
    for _ in args.sessions:
        try:
            d, peer = listener.accept()
        except OSError:
            break
        if peer[0] in arrivals:
            arrivals[peer[0]].put(d)
        else:
            strays.append(peer[0])
            d.close()
    for t in threads:
        t.join(TIMEOUT * 3)
    listener.close()
    for out in outs:
        if strays:
            out.setdefault("strays", strays)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
