#!/usr/bin/env python3
"""Hostile and odd client behaviour against a server behind ftpgate, run in
the lab's client namespace. Prints one JSON report; the Rust test judges it.

  bounce    PORT/EPRT naming a third host and a privileged port on the client
            itself: the gateway must answer 501/522 itself and keep the session
  theft     PASV, then a connection to the announced port from another client
            address (192.0.2.20) before the real client's: the thief is closed,
            the real client's RETR still works
  linger    PASV and never connect: the listener must close by itself
  greeting  connect to HOST:21 and print the first reply (a 421 from the
            gateway when the server is unreachable or is the gateway itself),
            or "refused" (the connect) or "reset" (the read)
  abort     ftplib's ABOR (sent as TCP urgent data) in the middle of a RETR,
            passive or active: the transfer's 426 and the ABOR's own reply
            must both arrive, in that order, and the session goes on
  junk KIND a first line that is not FTP (KIND http: "GET / HTTP/1.1" and
            headers; tls: the start of a TLS ClientHello, no line end):
            the reply and whether the gateway then closed the connection
  flood N [mixed]  log in, then N lines the gateway refuses itself (LPSV;
            with mixed, LPSV and a line that is no command by turns): every
            reply, and whether the connection was closed at the end
  abort-wait PATH passive|active  ABOR (urgent) mid-RETR while the server
            is blocked on a full data connection; how the data connection
            ended, the replies, and a NOOP's reply
  close-mid PATH passive|active  close the control connection mid-RETR,
            then read the data connection to its end
  feat      log in, FEAT (every line of the reply), then AUTH TLS's reply
  badlogin N USER [SERVER [SOURCES]]
            N sessions that each try USER (a name the server refuses with
            530), then one more connection: its first reply. SOURCES: a
            comma-separated list of client addresses, taken in turn for
            each connection (one client rotating its IPv6 addresses)
  ftps      AUTH TLS; after a 234, binary bytes (TLS-like records with
            CR/LF, 0xFF and FTP-looking text inside) must come back
            byte for byte from the scripted server's echo: the control
            connection is relayed blind
"""
import json
import re
import socket
import sys
import time

SERVER = "198.51.100.10"
THIEF_IP = "192.0.2.20"


def line(f):
    return f.readline().decode("latin-1").rstrip("\r\n")


def reply(f):
    """One whole (possibly multi-line) reply: its last line."""
    first = line(f)
    if len(first) >= 4 and first[3] == "-":
        code = first[:3]
        last = first
        for _ in range(1000):
            last = line(f)
            if last.startswith(code + " "):
                break
        return last
    return first


def session():
    s = socket.create_connection((SERVER, 21), timeout=10)
    f = s.makefile("rb")
    greeting = reply(f)
    assert greeting.startswith("220"), greeting

    def cmd(text):
        s.sendall(text.encode("latin-1") + b"\r\n")
        return reply(f)

    assert cmd("USER anonymous").startswith(("230", "331"))
    r = cmd("PASS lab@")
    assert r.startswith(("230", "202")), r
    return s, f, cmd


def bounce():
    s, f, cmd = session()
    out = {
        "port_third_host": cmd("PORT 203,0,113,5,200,10"),
        "eprt_third_host": cmd("EPRT |1|203.0.113.5|51210|"),
        "port_privileged": cmd("PORT 192,0,2,10,0,22"),
        "eprt_family_3": cmd("EPRT |3|x|1|"),
        "lprt": cmd("LPRT 4,4,203,0,113,5,2,200,10"),
        "noop_after": cmd("NOOP"),
    }
    cmd("QUIT")
    return out


def pasv_port(r):
    m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", r)
    nums = [int(x) for x in m.groups()]
    return ".".join(map(str, nums[:4])), nums[4] * 256 + nums[5]


def steal(thief_ip, host, port):
    """A connection from thief_ip to host:port before the real client's:
    thief_closed (and thief_got or thief_error) say how it was turned away."""
    out = {}
    thief = socket.socket()
    thief.bind((thief_ip, 0))
    thief.settimeout(5)
    try:
        thief.connect((host, port))
        thief.sendall(b"x")
        got = thief.recv(100)
        out["thief_got"] = len(got)
        out["thief_closed"] = got == b""
    except OSError as e:
        out["thief_closed"] = True
        out["thief_error"] = str(e)
    finally:
        thief.close()
    return out


def theft(path):
    s, f, cmd = session()
    cmd("TYPE I")
    r = cmd("PASV")
    host, port = pasv_port(r)
    out = {"pasv": r}
    out.update(steal(THIEF_IP, SERVER, port))
    d = socket.create_connection((SERVER, port), timeout=10)
    out["retr_preliminary"] = cmd("RETR " + path)
    data = b""
    deadline = time.time() + 20
    while time.time() < deadline:
        chunk = d.recv(65536)
        if not chunk:
            break
        data += chunk
    d.close()
    out["retr_final"] = reply(f)
    out["bytes"] = len(data)
    cmd("QUIT")
    return out


def linger():
    s, f, cmd = session()
    r = cmd("PASV")
    host, port = pasv_port(r)
    print(json.dumps({"pasv": r, "port": port}), flush=True)
    # keep the session open while the test watches the gateway's listeners
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 5)
    cmd("QUIT")
    return {"done": True}


def abort(path, active):
    import ftplib
    f = ftplib.FTP(SERVER, timeout=10)
    f.login()
    f.set_pasv(not active)
    conn = f.transfercmd("RETR " + path)
    first = conn.recv(65536)
    # ftplib.abort(): "ABOR\r\n" with MSG_OOB, then reads one reply; 426/226
    # for the transfer comes first, then the ABOR's own 225/226.
    transfer_reply = f.abort()
    abor_reply = f.getresp() if transfer_reply.startswith("426") else ""
    conn.close()
    noop = f.voidcmd("NOOP")
    f.quit()
    return {"got": len(first), "transfer_reply": transfer_reply, "abor_reply": abor_reply, "noop": noop}


def read_data_to_end(conn, seconds):
    """Read a data connection until its end, bounded: (bytes read, how it
    ended: "closed", "reset" or "timeout", the end never came)."""
    conn.settimeout(seconds)
    got = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            chunk = conn.recv(1 << 20)
        except ConnectionResetError:
            return got, "reset"
        except socket.timeout:
            break
        if not chunk:
            return got, "closed"
        got += len(chunk)
    return got, "timeout"


def abort_wait(path, active):
    """ABOR (urgent, as ftplib sends it) mid-download while the server is
    blocked on a full data connection, then read the data connection until
    its end, bounded: data_end is "closed", "reset" or "timeout" (the end
    never came); total is every data byte read."""
    import ftplib
    f = ftplib.FTP(SERVER, timeout=10)
    f.login()
    f.set_pasv(not active)
    conn = f.transfercmd("RETR " + path)
    total = len(conn.recv(65536))
    time.sleep(1)
    f.sock.sendall(b"ABOR\r\n", socket.MSG_OOB)
    got, end = read_data_to_end(conn, 8)
    total += got
    # The transfer's 426 (or 226) and the ABOR's 225/226 (a server may send
    # only one), read raw: a timed-out ftplib file is unusable.
    def raw(until, seconds):
        got = b""
        f.sock.settimeout(0.5)
        deadline = time.time() + seconds
        while time.time() < deadline and not until(got):
            try:
                chunk = f.sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            got += chunk
        return got.decode("latin-1")

    replies = raw(lambda b: b.count(b"\r\n") >= 2, 5).splitlines()
    f.sock.sendall(b"NOOP\r\n")
    noop = raw(lambda b: b"\r\n" in b, 10).strip()
    return {"total": total, "data_end": end, "replies": replies, "noop": noop}


def close_mid(path, active):
    """Close the control connection mid-download, then read the data
    connection until its end, bounded: data_end is "closed", "reset" or
    "timeout"; total is every data byte read."""
    import ftplib
    f = ftplib.FTP(SERVER, timeout=10)
    f.login()
    f.set_pasv(not active)
    conn = f.transfercmd("RETR " + path)
    total = len(conn.recv(65536))
    # ftplib's reply reader holds the socket too: close both, or the FIN
    # waits for the process to exit (after the download, not in its middle).
    f.file.close()
    f.sock.close()
    got, end = read_data_to_end(conn, 15)
    total += got
    conn.close()
    return {"total": total, "data_end": end}


def read_until_closed(s, seconds):
    """Everything the peer sends until it closes (bounded); closed: bool."""
    s.settimeout(seconds)
    got = b""
    closed = False
    deadline = time.time() + seconds
    while time.time() < deadline and len(got) < 65536:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    return got, closed


def junk(kind):
    s = socket.create_connection((SERVER, 21), timeout=10)
    f = s.makefile("rb")
    greeting = reply(f)
    if kind == "http":
        s.sendall(b"GET / HTTP/1.1\r\nHost: 198.51.100.10:21\r\nUser-Agent: lab\r\n\r\n")
    else:
        # record header (handshake, TLS 1.0), then a ClientHello's start
        s.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)))
    got, closed = read_until_closed(s, 10)
    return {"greeting": greeting, "reply": got.decode("latin-1"), "closed": closed}


def flood(n, mixed=False):
    """n refused lines in a row: LPSV, or with mixed LPSV and a line that
    is no FTP command, by turns (two rules in one run)."""
    s, f, cmd = session()
    replies = []
    for i in range(n):
        try:
            s.sendall(b"X\r\n" if mixed and i % 2 else b"LPSV\r\n")
            r = reply(f)
        except OSError as e:
            r = "error: %s" % e
        replies.append(r)
        if not r or r.startswith("421"):
            break
    got, closed = read_until_closed(s, 5)
    return {"replies": replies, "closed": closed, "after": got.decode("latin-1")}


def feat():
    s, f, cmd = session()
    s.sendall(b"FEAT\r\n")
    lines = [line(f)]
    if lines[0][3:4] == "-":
        for _ in range(1000):
            lines.append(line(f))
            if lines[-1].startswith(lines[0][:3] + " "):
                break
    auth = cmd("AUTH TLS")
    noop = cmd("NOOP")
    return {"feat": lines, "auth": auth, "noop": noop}


def badlogin(n, user, server=SERVER, sources=()):
    def connect(i):
        source = (sources[i % len(sources)], 0) if sources else None
        return socket.create_connection((server, 21), timeout=10, source_address=source)

    replies = []
    for i in range(n):
        s = connect(i)
        f = s.makefile("rb")
        greeting = reply(f)
        if not greeting.startswith("220"):
            replies.append(greeting)
            break
        s.sendall(("USER %s\r\n" % user).encode())
        r = reply(f)
        if r.startswith("331"):
            s.sendall(b"PASS wrong\r\n")
            r = reply(f)
        replies.append(r)
        s.close()
    s = connect(n)
    after = reply(s.makefile("rb"))
    return {"replies": replies, "after": after}


def ftps():
    s = socket.create_connection((SERVER, 21), timeout=10)
    f = s.makefile("rb")
    greeting = reply(f)
    s.sendall(b"AUTH TLS\r\n")
    auth = reply(f)
    out = {"greeting": greeting, "auth": auth}
    if not auth.startswith("234"):
        return out
    payload = (b"\x16\x03\x01\x00\x05\x01\x02\xff\xff\xfe\r\nPORT 203,0,113,5,0,25\r\n"
               b"227 Entering Passive Mode (203,0,113,5,0,25)\r\n\x00\xf4\xf2" + bytes(range(256)) * 40)
    s.sendall(payload)
    s.settimeout(10)
    echoed = b""
    deadline = time.time() + 10
    while len(echoed) < len(payload) and time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        echoed += chunk
    s.shutdown(socket.SHUT_WR)
    tail, closed = read_until_closed(s, 10)
    out.update({"sent": len(payload), "echoed": len(echoed), "same": echoed == payload,
                "closed_after_fin": closed, "tail": len(tail)})
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "bounce":
        print(json.dumps(bounce()))
    elif what == "theft":
        print(json.dumps(theft(sys.argv[2])))
    elif what == "greeting":
        t0 = time.time()
        out = {}
        try:
            s = socket.create_connection((sys.argv[2], 21), timeout=30)
            out["greeting"] = reply(s.makefile("rb"))
        except ConnectionRefusedError:
            out["refused"] = True
        except ConnectionResetError:
            out["reset"] = True
        out["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(out))
    elif what == "abort":
        print(json.dumps(abort(sys.argv[2], sys.argv[3] == "active")))
    elif what == "close-mid":
        print(json.dumps(close_mid(sys.argv[2], sys.argv[3] == "active")))
    elif what == "abort-wait":
        print(json.dumps(abort_wait(sys.argv[2], sys.argv[3] == "active")))
    elif what == "linger":
        print(json.dumps(linger()))
    elif what == "junk":
        print(json.dumps(junk(sys.argv[2])))
    elif what == "flood":
        print(json.dumps(flood(int(sys.argv[2]), sys.argv[3:4] == ["mixed"])))
    elif what == "feat":
        print(json.dumps(feat()))
    elif what == "badlogin":
        server = sys.argv[4] if len(sys.argv) > 4 else SERVER
        sources = sys.argv[5].split(",") if len(sys.argv) > 5 else ()
        print(json.dumps(badlogin(int(sys.argv[2]), sys.argv[3], server, sources)))
    elif what == "ftps":
        print(json.dumps(ftps()))
