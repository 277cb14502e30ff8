#!/usr/bin/env python3
"""Small FTP client for the ftpgate lab (python's ftplib, stdlib only).

Runs inside the client namespace. Does downloads/uploads in passive or active
mode and records, for every data connection, the peer and local address of
the data socket as the client saw it. In active mode the peer of the
accepted data connection must be the server (198.51.100.10, port 20), not
the gateway: that is what a transparent gateway promises.

  ftpclient.py --host 198.51.100.10 --mode active|passive \
      [--get REMOTE LOCAL]... [--put LOCAL REMOTE]...

Prints one JSON object: {"ok": true, "transfers": [{"op", "remote", "local",
"bytes", "peer": [ip, port], "sockname": [ip, port], "reply"}...],
"welcome": ...}. Exits 1 (with "ok": false, "error") on failure.
"""
import argparse
import ftplib
import json
import os
import sys


class RecordingFTP(ftplib.FTP):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.data_conns = []

    def ntransfercmd(self, cmd, rest=None):
        conn, size = super().ntransfercmd(cmd, rest)
        self.data_conns.append((conn.getpeername()[:2], conn.getsockname()[:2]))
        return conn, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--mode", choices=["passive", "active"], required=True)
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="lab@example.org")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--get", nargs=2, action="append", default=[], metavar=("REMOTE", "LOCAL"))
    ap.add_argument("--put", nargs=2, action="append", default=[], metavar=("LOCAL", "REMOTE"))
    args = ap.parse_args()

    out = {"ok": False, "mode": args.mode, "transfers": []}
    try:
        ftp = RecordingFTP(timeout=args.timeout)
        out["welcome"] = ftp.connect(args.host, args.port)
        ftp.login(args.user, args.password)
        ftp.set_pasv(args.mode == "passive")
        for remote, local in args.get:
            with open(local, "wb") as f:
                reply = ftp.retrbinary("RETR " + remote, f.write)
            peer, sockname = ftp.data_conns[-1]
            out["transfers"].append({"op": "get", "remote": remote, "local": local,
                                     "bytes": os.path.getsize(local), "peer": peer,
                                     "sockname": sockname, "reply": reply})
        for local, remote in args.put:
            with open(local, "rb") as f:
                reply = ftp.storbinary("STOR " + remote, f)
            peer, sockname = ftp.data_conns[-1]
            out["transfers"].append({"op": "put", "remote": remote, "local": local,
                                     "bytes": os.path.getsize(local), "peer": peer,
                                     "sockname": sockname, "reply": reply})
        out["goodbye"] = ftp.quit()
        out["ok"] = True
    except Exception as e:  # report, don't trace
        out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
