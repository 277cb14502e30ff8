#!/usr/bin/env python3
"""Several FTP sessions at once, each from its own source address, that all
ask for passive mode before any of them opens its data connection: with a
server that announces one port to every session (lab/scripted_server.py
--pasv-port), ftpgate must then hold one data listener for all of them.
Python 3 stdlib only; runs in the lab's client namespace.

  shared_port_clients.py [--epsv] [--one-by-one] [--thief SRC] SRC:REMOTE:LOCAL ...

Each SRC:REMOTE:LOCAL is a session: control and data connections from source
address SRC, RETR REMOTE, the bytes written to LOCAL. Every session logs in
(anonymous), sets TYPE I and sends PASV (EPSV with --epsv); once every
session has its reply, all open their data connections and RETR at the same
time, or with --one-by-one each after the previous one's transfer ended (a
server that tells data connections apart only by address needs that when
sessions share an address). With --thief, once every session has its reply
and before any opens its data connection, a connection from SRC to the
first session's data address (port theft) must be closed at once.

Prints one JSON object per session, in the order given: {"src",
"passive_reply" (the reply line as received), "bytes", "final" (the
transfer's final reply), "error"}; with --thief, then {"thief", "thief_closed"
(true: ended by EOF or reset within 5 s), "thief_data" (bytes it got)}.
Bounded: every socket has a timeout, every wait a deadline.
"""
import argparse
import json
import re
import socket
import threading
import time

TIMEOUT = 30.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="198.51.100.10")
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--epsv", action="store_true")
    p.add_argument("--one-by-one", action="store_true")
    p.add_argument("--thief", metavar="SRC")
    p.add_argument("sessions", nargs="+", metavar="SRC:REMOTE:LOCAL")
    return p.parse_args()


class Control:
    def __init__(self, src, server, port):
        self.sock = socket.socket()
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((src, 0))
        self.sock.connect((server, port))
        self.rfile = self.sock.makefile("rb")

    def reply(self):
        """The last line of the next reply (multi-line replies included)."""
        first = self.rfile.readline(8192).decode("latin-1")
        if len(first) < 4:
            raise OSError("control connection ended: %r" % first)
        line = first
        if first[3:4] == "-":
            for _ in range(1000):
                line = self.rfile.readline(8192).decode("latin-1")
                if not line or (line[:3] == first[:3] and line[3:4] == " "):
                    break
        return line.rstrip("\r\n")

    def cmd(self, text):
        self.sock.sendall(text.encode("latin-1") + b"\r\n")
        return self.reply()


def data_address(reply, server):
    if reply.startswith("227"):
        nums = [int(x) for x in re.findall(r"\d+", reply[4:])][-6:]
        return ".".join(map(str, nums[:4])), nums[4] * 256 + nums[5]
    m = re.search(r"\(\|\|\|(\d+)\|\)", reply)
    if reply.startswith("229") and m:
        return server, int(m.group(1))
    raise OSError("no passive address in %r" % reply)


def thief(src, addr):
    """Connects from src to addr and waits (5 s at most) to be thrown out."""
    out = {"thief": src, "thief_closed": False, "thief_data": 0}
    s = socket.socket()
    s.settimeout(5)
    try:
        s.bind((src, 0))
        s.connect(addr)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                out["thief_closed"] = True
                break
            out["thief_data"] += len(chunk)
    except ConnectionResetError:
        out["thief_closed"] = True
    except OSError as e:
        out["thief_error"] = str(e)
    finally:
        s.close()
    return out


def session(args, spec, out, all_passive, thief_done, turn, next_turn):
    src, remote, local = spec.split(":", 2)
    out.update(src=src, passive_reply=None, bytes=0, final=None, error=None)
    try:
        c = Control(src, args.server, args.port)
        c.reply()  # greeting
        c.cmd("USER anonymous")
        c.cmd("PASS guest@")
        c.cmd("TYPE I")
        reply = c.cmd("EPSV" if args.epsv else "PASV")
        out["passive_reply"] = reply
        all_passive.wait(TIMEOUT)
        if not thief_done.wait(TIMEOUT):
            raise OSError("the thief did not finish in time")
        if turn is not None and not turn.wait(TIMEOUT):
            raise OSError("the previous session's transfer did not end in time")
        d = socket.socket()
        d.settimeout(TIMEOUT)
        d.bind((src, 0))
        d.connect(data_address(reply, args.server))
        c.sock.sendall(("RETR %s\r\n" % remote).encode("latin-1"))
        preliminary = c.reply()
        if not preliminary.startswith("1"):
            out["final"] = preliminary
            d.close()
            raise OSError("RETR refused: %s" % preliminary)
        n = 0
        deadline = time.monotonic() + TIMEOUT
        with open(local, "wb") as f:
            while time.monotonic() < deadline:
                chunk = d.recv(64 * 1024)
                if not chunk:
                    break
                f.write(chunk)
                n += len(chunk)
        d.close()
        out["bytes"] = n
        out["final"] = c.reply()
        c.cmd("QUIT")
        c.sock.close()
    except (OSError, threading.BrokenBarrierError) as e:
        out["error"] = str(e) or type(e).__name__
        all_passive.abort()  # the others stop waiting for this one
    finally:
        if next_turn is not None:
            next_turn.set()


def main():
    args = parse_args()
    outs = [{} for _ in args.sessions]
    # with --thief, this thread waits for every passive reply too
    parties = len(args.sessions) + (1 if args.thief else 0)
    all_passive = threading.Barrier(parties, timeout=TIMEOUT)
    thief_done = threading.Event()
    if not args.thief:
        thief_done.set()
    # --one-by-one: session i waits for turns[i], set when session i-1 ends
    turns = [threading.Event() for _ in args.sessions]
    turns[0].set()
    threads = []
    for i, spec in enumerate(args.sessions):
        turn = turns[i] if args.one_by_one else None
        next_turn = turns[i + 1] if args.one_by_one and i + 1 < len(turns) else None
        t = threading.Thread(target=session, args=(args, spec, outs[i], all_passive, thief_done, turn, next_turn))
        t.start()
        threads.append(t)
    theft = None
    if args.thief:
        try:
            all_passive.wait(TIMEOUT)
            theft = thief(args.thief, data_address(outs[0]["passive_reply"], args.server))
        except (OSError, threading.BrokenBarrierError) as e:
            theft = {"thief": args.thief, "thief_closed": False, "thief_error": str(e) or type(e).__name__}
        thief_done.set()
    for t in threads:
        t.join(4 * TIMEOUT)
    for out in outs:
        print(json.dumps(out))
    if theft is not None:
        print(json.dumps(theft))


if __name__ == "__main__":
    main()
