#!/usr/bin/env python3
"""Scripted FTP client that records the control channel byte-exactly.

Runs inside the lab's client namespace (lab/record-transcripts starts it)
and talks to a real FTP server with raw sockets (no ftplib, so every byte
sent is chosen here and every byte received is kept as is). Writes one
transcript per run, the fixture format of protocols/ftp/tests/replay.rs:

    # comment
    E: client=IP:PORT server=IP:PORT      the control connection's ends
    C: <escaped bytes>                    client -> server, in send order
    S: <escaped bytes>                    server -> client, one line each
    D: connect LOCAL -> REMOTE            passive: the client's data socket
    D: accept PEER -> LOCAL               active: the server connected in
    D: done to_client=N to_server=M       data connection over, bytes each way
    EOF: server                           the server closed the control link

Escapes: printable ASCII as is, `\\\\`, `\\r`, `\\n`, `\\t`, `\\xHH` for the rest.
The order of lines is the order the client saw things happen.

    transcript_client.py --server-name vsftpd --version 3.0.3-13+b2 \
        --scenario basic|passive|active --out FILE [--host 198.51.100.10]
"""
import argparse
import datetime
import re
import socket
import sys

TIMEOUT = 15.0
CLIENT_IP = "192.0.2.10"
UPLOAD = b"".join(b"line %02d of an upload through the ftpgate lab\r\n" % i for i in range(12))


def escape(data: bytes) -> str:
    out = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


class Failed(Exception):
    pass


class Recorder:
    def __init__(self, host, port):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(CLIENT_IP, 0))
        self.buf = b""
        self.lines = []
        me = self.sock.getsockname()
        peer = self.sock.getpeername()
        self.lines.append("E: client=%s:%d server=%s:%d" % (me[0], me[1], peer[0], peer[1]))

    def note(self, text):
        self.lines.append(text)

    def send(self, line: bytes):
        data = line + b"\r\n"
        self.sock.sendall(data)
        self.lines.append("C: " + escape(data))

    def _line(self) -> bytes:
        for _ in range(10000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                self.lines.append("S: " + escape(line))
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Failed("server closed the control connection mid-reply")
            self.buf += chunk
        raise Failed("reply line never ended")

    def reply(self):
        """One complete reply: (code, [lines])."""
        first = self._line()
        m = re.match(rb"^(\d{3})([ -])", first)
        if not m:
            raise Failed("bad reply line %r" % first)
        code, lines = m.group(1), [first]
        if m.group(2) == b"-":
            for _ in range(1000):
                line = self._line()
                lines.append(line)
                if line.startswith(code + b" "):
                    break
            else:
                raise Failed("multi-line reply never ended")
        return int(code), lines

    def cmd(self, line: bytes, expect=None):
        self.send(line)
        code, lines = self.reply()
        if expect is not None and code // 100 != expect:
            raise Failed("%r -> %d, expected %dxx" % (line, code, expect))
        return code, lines

    def eof(self):
        """After QUIT: read to EOF (bounded)."""
        for _ in range(100):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        if self.buf:
            self.lines.append("S: " + escape(self.buf))
        self.lines.append("EOF: server")
        self.sock.close()

    # -- data connections ----------------------------------------------------
    def _data_exchange(self, data_sock, upload):
        sent = 0
        if upload is not None:
            data_sock.sendall(upload)
            sent = len(upload)
            data_sock.shutdown(socket.SHUT_WR)
        got = 0
        for _ in range(100000):
            chunk = data_sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        data_sock.close()
        self.note("D: done to_client=%d to_server=%d" % (got, sent))
        return got

    def _transfer(self, line, upload, data_sock_fn):
        """Send the transfer command; on 1xx run the data connection, then
        read the final reply. data_sock_fn() gives the data socket."""
        code, _ = self.cmd(line)
        if code // 100 == 1:
            self._data_exchange(data_sock_fn(), upload)
            code, _ = self.reply()
            return code, True
        return code, False

    def passive(self, verb, line, upload=None, rest=None):
        code, lines = self.cmd(verb, expect=2)
        text = b"".join(lines)
        if verb == b"PASV":
            m = re.search(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
            nums = [int(x) for x in m.groups()]
            addr = ("%d.%d.%d.%d" % tuple(nums[:4]), nums[4] * 256 + nums[5])
        else:
            m = re.search(rb"\(\|\|\|(\d+)\|\)", text)
            addr = (self.host, int(m.group(1)))
        ds = socket.create_connection(addr, timeout=TIMEOUT, source_address=(CLIENT_IP, 0))
        me = ds.getsockname()
        self.note("D: connect %s:%d -> %s:%d" % (me[0], me[1], addr[0], addr[1]))
        if rest is not None:
            self.cmd(b"REST %d" % rest, expect=3)
        code, exchanged = self._transfer(line, upload, lambda: ds)
        if not exchanged:
            # the server refused the transfer: the data connection is over
            try:
                ds.close()
            finally:
                self.note("D: done to_client=0 to_server=0")
        return code

    def active(self, verb, line, upload=None, rest=None):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind((CLIENT_IP, 0))
        ls.listen(1)
        ls.settimeout(TIMEOUT)
        port = ls.getsockname()[1]
        if verb == b"PORT":
            arg = CLIENT_IP.replace(".", ",").encode() + b",%d,%d" % (port >> 8, port & 255)
        else:
            arg = b"|1|%s|%d|" % (CLIENT_IP.encode(), port)
        self.cmd(verb + b" " + arg, expect=2)
        if rest is not None:
            self.cmd(b"REST %d" % rest, expect=3)

        def accept():
            conn, peer = ls.accept()
            conn.settimeout(TIMEOUT)
            self.note("D: accept %s:%d -> %s:%d" % (peer[0], peer[1], CLIENT_IP, port))
            return conn

        try:
            return self._transfer(line, upload, accept)[0]
        finally:
            ls.close()


def login(r):
    r.reply()  # greeting (may be multi-line)
    code, _ = r.cmd(b"USER anonymous")
    if code == 331:  # pure-ftpd logs anonymous in at USER (230)
        r.cmd(b"PASS lab@example.org", expect=2)
    elif code != 230:
        raise Failed("USER anonymous -> %d" % code)


def basic(r, server):
    login(r)
    r.cmd(b"SYST")
    r.cmd(b"FEAT", expect=2)
    r.cmd(b"HELP", expect=2)
    r.cmd(b"PWD", expect=2)
    r.cmd(b"CWD pub", expect=2)
    r.cmd(b"PWD", expect=2)
    r.cmd(b"CWD /no-such-dir", expect=5)
    r.cmd(b"CWD /", expect=2)
    r.cmd(b"TYPE A", expect=2)
    assert r.passive(b"PASV", b"LIST pub") // 100 == 2
    r.cmd(b"TYPE I", expect=2)
    r.cmd(b"SIZE pub/hello.txt", expect=2)
    r.cmd(b"MDTM pub/hello.txt", expect=2)
    assert r.passive(b"PASV", b"RETR pub/hello.txt") // 100 == 2
    r.cmd(b"FOOB", expect=5)  # unknown verb: the server's 500
    r.cmd(b"BOGUS", expect=5)  # 5 letters: the gateway answers this one itself
    assert r.passive(b"PASV", b"RETR pub/no-such-file.txt") // 100 == 5
    r.cmd(b"NOOP", expect=2)
    r.cmd(b"QUIT", expect=2)
    r.eof()


def passive(r, server):
    login(r)
    r.cmd(b"TYPE I", expect=2)
    assert r.passive(b"EPSV", b"RETR pub/hello.txt") // 100 == 2
    assert r.passive(b"EPSV", b"RETR pub/hello.txt", rest=11) // 100 == 2
    assert r.passive(b"PASV", b"STOR upload/%s-passive.txt" % server.encode(), upload=UPLOAD) // 100 == 2
    assert r.passive(b"EPSV", b"NLST upload") // 100 == 2
    r.cmd(b"SIZE upload/%s-passive.txt" % server.encode(), expect=2)
    r.cmd(b"QUIT", expect=2)
    r.eof()


def active(r, server):
    login(r)
    r.cmd(b"TYPE I", expect=2)
    assert r.active(b"PORT", b"RETR pub/hello.txt") // 100 == 2
    assert r.active(b"EPRT", b"NLST pub") // 100 == 2
    assert r.active(b"PORT", b"RETR pub/hello.txt", rest=6) // 100 == 2
    assert r.active(b"EPRT", b"STOR upload/%s-active.txt" % server.encode(), upload=UPLOAD) // 100 == 2
    assert r.active(b"PORT", b"LIST upload") // 100 == 2
    assert r.active(b"PORT", b"RETR pub/no-such-file.txt") // 100 == 5
    r.cmd(b"QUIT", expect=2)
    r.eof()


SCENARIOS = {
    "basic": (basic, "login, SYST, FEAT, HELP, PWD/CWD (and a missing dir), TYPE, PASV+LIST, "
              "SIZE, MDTM, PASV+RETR, unknown verbs, PASV+RETR of a missing file, NOOP, QUIT"),
    "passive": (passive, "EPSV+RETR, EPSV+REST+RETR, PASV+STOR, EPSV+NLST, SIZE, QUIT"),
    "active": (active, "PORT+RETR, EPRT+NLST, PORT+REST+RETR, EPRT+STOR, PORT+LIST, "
               "PORT+RETR of a missing file, QUIT"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-name", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--host", default="198.51.100.10")
    args = ap.parse_args()
    fn, what = SCENARIOS[args.scenario]
    r = Recorder(args.host, 21)
    try:
        fn(r, args.server_name)
    except (Failed, OSError, AssertionError) as e:
        sys.stderr.write("transcript_client: %s %s: %s\n" % (args.server_name, args.scenario, e))
        sys.stderr.write("\n".join(r.lines) + "\n")
        return 1
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# ftpgate control transcript: %s (Debian package %s), scenario '%s'"
        % (args.server_name, args.version, args.scenario),
        "# %s" % what,
        "# recorded %s by lab/record-transcripts in the network-namespace lab:" % now,
        "# lab/transcript_client.py in NAME-c talking to the real server in NAME-s,",
        "# plain routing (no gateway in the path). Replayed by protocols/ftp/tests/replay.rs.",
        "# C: client->server, S: server->client (byte-exact, escaped), D: data",
        "# connection facts seen by the client, EOF: the server closed the control link.",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(header + r.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
