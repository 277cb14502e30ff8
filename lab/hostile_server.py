#!/usr/bin/env python3
"""A hostile FTP server for the lab's server namespace (python3 stdlib only):
its passive reply names a third host, the listener-hijack and bounce lure
of ATTACKS.md 6 and 7 (tests/chaos.rs).

  hostile_server.py --listen 198.51.100.11:21 --pasv-host 203.0.113.5

USER/PASS log anyone in (230), PASV answers
"227 Entering Passive Mode (203,0,113,5,p1,p2)." with --pasv-port (no
listener behind it anywhere), EPSV is refused (502) so that a client falls
back to PASV, NOOP/TYPE/SYST/PWD answer as usual, QUIT says 221. Every
command line received goes to --report (one JSON object per line), so a
test can tell what reached the server.

Bounded: the process exits by itself after --lifetime seconds, every
session has a timeout and a line count.
"""
import argparse
import json
import os
import socket
import sys
import threading

ARGS = None
LOCK = threading.Lock()


def record(entry):
    if not ARGS.report:
        return
    with LOCK:
        with open(ARGS.report, "a") as f:
            f.write(json.dumps(entry) + "\n")


def serve(conn, peer):
    conn.settimeout(ARGS.lifetime)
    f = conn.makefile("rb")

    def send(text):
        conn.sendall(text.encode("latin-1") + b"\r\n")

    try:
        send("220 hostile server ready")
        for _ in range(1000):
            raw = f.readline(4096)
            if not raw:
                break
            line = raw.decode("latin-1").rstrip("\r\n")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            record({"peer": peer[0], "verb": verb, "arg": arg if verb != "PASS" else "***"})
            if verb == "USER":
                send("331 Please specify the password.")
            elif verb == "PASS":
                send("230 Login successful.")
            elif verb == "PASV":
                h = ARGS.pasv_host.replace(".", ",")
                p = ARGS.pasv_port
                send("227 Entering Passive Mode (%s,%d,%d)." % (h, p >> 8, p & 255))
            elif verb in ("NOOP", "TYPE", "MODE", "STRU"):
                send("200 Ok.")
            elif verb == "SYST":
                send("215 UNIX Type: L8")
            elif verb == "PWD":
                send('257 "/" is the current directory')
            elif verb == "QUIT":
                send("221 Goodbye.")
                break
            else:
                send("502 Command not implemented.")
    except OSError as e:
        record({"peer": peer[0], "error": str(e)})
    finally:
        conn.close()


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="198.51.100.11:21", help="control address (ADDR:PORT)")
    p.add_argument("--pasv-host", default="203.0.113.5", help="the third host the 227 names")
    p.add_argument("--pasv-port", type=int, default=40001)
    p.add_argument("--report", help="JSON-lines file, one line per command received")
    p.add_argument("--lifetime", type=float, default=180.0, help="exit after this many seconds")
    ARGS = p.parse_args()
    threading.Timer(ARGS.lifetime, lambda: os._exit(0)).start()
    host, _, port = ARGS.listen.rpartition(":")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(16)
    print("listening on %s" % ARGS.listen, file=sys.stderr, flush=True)
    for _ in range(1000):
        conn, peer = ls.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
