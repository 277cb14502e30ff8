#!/usr/bin/env python3
"""hostile-227 scenario: a server that lies in its 227 replies, and the
client that asks it (python3 stdlib only; bounded: socket timeouts, a
lifetime, one session).

  hostile227.py server ADDR ROOT_FILE LIFETIME
      one anonymous session on ADDR:21. The first PASV is answered with
      "227 (203,0,113,5,0,22)": a foreign address and a privileged port
      (ATTACKS.md 6, a listener hijack: a gateway that obeyed would bind
      203.0.113.5:22). Every later PASV names 203.0.113.5 with a high port
      (ATTACKS.md 7, a NAT'd server's wrong address) while the server really
      listens on that port of its own address. RETR sends ROOT_FILE.
  hostile227.py client SERVER
      login, PASV twice, RETR over the second; prints one JSON report.
"""
import json
import re
import socket
import sys
import time

LIAR = "203,0,113,5"


def serve(addr, path, lifetime):
    deadline = time.time() + lifetime
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, 21))
    ls.listen(1)
    ls.settimeout(lifetime)
    c, _ = ls.accept()
    c.settimeout(10)
    f = c.makefile("rb")
    send = lambda text: c.sendall(text.encode() + b"\r\n")
    send("220 hostile-227 lab server")
    pasv_count = 0
    data_ls = None
    while time.time() < deadline:
        line = f.readline().decode("latin-1").strip()
        if not line:
            break
        verb = line.split(" ")[0].upper()
        if verb == "USER":
            send("331 any password")
        elif verb == "PASS":
            send("230 logged in")
        elif verb == "TYPE":
            send("200 ok")
        elif verb == "PASV":
            pasv_count += 1
            if pasv_count == 1:
                send("227 Entering Passive Mode (%s,0,22)." % LIAR)
                continue
            if data_ls:
                data_ls.close()
            data_ls = socket.socket()
            data_ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            data_ls.bind((addr, 0))
            data_ls.listen(1)
            data_ls.settimeout(10)
            port = data_ls.getsockname()[1]
            send("227 Entering Passive Mode (%s,%d,%d)." % (LIAR, port >> 8, port & 255))
        elif verb == "RETR" and data_ls:
            send("150 here it comes")
            d, _ = data_ls.accept()
            with open(path, "rb") as src:
                d.sendall(src.read())
            d.close()
            send("226 done")
        elif verb == "QUIT":
            send("221 bye")
            break
        else:
            send("502 not here")
    c.close()


def client(server):
    s = socket.create_connection((server, 21), timeout=10)
    f = s.makefile("rb")
    rd = lambda: f.readline().decode("latin-1").rstrip("\r\n")

    def cmd(text):
        s.sendall(text.encode() + b"\r\n")
        return rd()

    out = {"greeting": rd(), "user": cmd("USER anonymous"), "pass": cmd("PASS lab@")}
    out["type"] = cmd("TYPE I")
    out["pasv_hijack"] = cmd("PASV")
    out["pasv_foreign"] = cmd("PASV")
    m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", out["pasv_foreign"])
    if m:
        n = [int(x) for x in m.groups()]
        out["told_address"] = "%d.%d.%d.%d:%d" % (n[0], n[1], n[2], n[3], n[4] * 256 + n[5])
        d = socket.create_connection(("%d.%d.%d.%d" % tuple(n[:4]), n[4] * 256 + n[5]), timeout=10)
        out["retr"] = cmd("RETR file")
        data = b""
        for _ in range(100000):
            chunk = d.recv(65536)
            if not chunk:
                break
            data += chunk
        d.close()
        out["bytes"] = len(data)
        out["retr_final"] = rd()
    out["quit"] = cmd("QUIT")
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        client(sys.argv[2])
