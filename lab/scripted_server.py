#!/usr/bin/env python3
"""A scripted FTP server for the lab's server namespace (python3 stdlib only).

It speaks just enough FTP for the lab's clients (anonymous login, TYPE,
PASV/EPSV, PORT/EPRT, RETR, STOR, SIZE, NOOP, QUIT) and misbehaves on
purpose where a test asks it to, so that a test can see what the *other*
end of a data connection saw through ftpgate:

  --retr-reset-after N  RETR of a file longer than N bytes: send N bytes,
                        wait (bounded) until the peer has acknowledged them,
                        end the data connection with a reset (SO_LINGER 0),
                        then answer "226 Transfer complete." anyway: the lie
                        a broken path produces. Shorter files go whole.
  --retr-stall          RETR: send --stall-after bytes, then go silent on the
                        data connection (control stays open) until the data
                        connection ends or --stall-seconds pass; then the
                        same "226" lie.
  --retr-urgent-after N RETR of a file longer than N bytes: send N bytes,
                        then the next byte as TCP urgent data (MSG_OOB),
                        then the rest, then the FIN and "226". Over a
                        router the client gets every byte (the urgent one
                        inline or out of band, as it chooses).
  --pasv-text TEXT      PASV is answered with this line (after opening its
                        listener as usual); "PORT" in it becomes that
                        listener's port as "p1, p2" (tests/security.rs).
  --ftps-echo           FEAT also lists AUTH TLS, PBSZ and PROT; AUTH TLS is
                        answered "234" and from then on every byte read is
                        sent back as it came (a stand-in for a TLS peer: no
                        line is parsed), until EOF; then close.
  STOR (always)         read the data connection until a clean end (EOF) or
                        an error, and answer 226 whatever happened; the
                        report says which it was ("eof" or "reset").
  --pasv-port N         a server that reuses passive ports: every PASV/EPSV
                        of every session announces port N, and one listening
                        socket there accepts every passive data connection.
                        A session takes the first connection that came from
                        its own control peer's address (so two sessions from
                        one address must not wait for data at the same
                        time). Each PASV/EPSV reply sent is reported as
                        {"cmd": "PASV"|"EPSV", "reply", "peer"}.

  --reset-control-on VERB
                        answer VERB by ending the control connection with
                        a reset (SO_LINGER 0), no reply.

Every control connection appends {"cmd": "control", "end", "peer"} when it
ends: end is "quit" (221 sent, then closed), "eof" (the client closed),
"reset" (ConnectionResetError), "reset_sent" (--reset-control-on), or
"error: ...".

Every transfer appends one JSON line to --report: {"cmd", "path", "mode",
"bytes", "end", "data_peer"} where end is "eof" (clean end of data), "reset"
(ConnectionResetError), "timeout", "sent" (RETR sent everything and closed
with a FIN), "reset_sent" (we reset it), or "error: ...". Active-mode data
connections come from port 20 when it can be bound (we run as root in the
lab), otherwise from any port.

Bounded: the process exits by itself after --lifetime seconds, every socket
has a timeout, and every loop a count or a deadline.
"""
import argparse
import fcntl
import json
import os
import re
import socket
import struct
import sys
import termios
import threading
import time

CHUNK = 64 * 1024


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="198.51.100.10:21", help="control address (ADDR:PORT)")
    p.add_argument("--root", required=True, help="directory RETR reads from and STOR writes to")
    p.add_argument("--report", required=True, help="JSON-lines file, one line per transfer")
    p.add_argument("--pidfile", help="write our PID here (netns.sh down stops *.pid of the run dir)")
    p.add_argument("--lifetime", type=float, default=180.0, help="exit after this many seconds")
    p.add_argument("--retr-reset-after", type=int, metavar="N")
    p.add_argument("--retr-urgent-after", type=int, metavar="N")
    p.add_argument("--pasv-text", metavar="TEXT", help="PASV's reply line (PORT: the real port as 'p1, p2')")
    p.add_argument("--retr-stall", action="store_true")
    p.add_argument("--stall-after", type=int, default=64 * 1024, metavar="BYTES")
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--ftps-echo", action="store_true")
    p.add_argument("--pasv-port", type=int, metavar="N", help="announce port N for every PASV/EPSV")
    p.add_argument("--reset-control-on", metavar="VERB", help="reset the control connection on VERB")
    return p.parse_args()


ARGS = None
REPORT_LOCK = threading.Lock()
SHARED = None  # SharedPassive, with --pasv-port


def report(entry):
    with REPORT_LOCK:
        with open(ARGS.report, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


def unacked(sock):
    """Bytes in the send queue not yet acknowledged by the peer (TIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def wait_acked(sock, seconds):
    """Bounded wait until everything sent was acknowledged, so a reset that
    follows cannot discard bytes still queued here."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if unacked(sock) == 0:
            return True
        time.sleep(0.01)
    return False


def reset_close(sock):
    """Close with SO_LINGER {on, 0}: the kernel sends RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def peer_ip(sock):
    """The peer's address, or None once the connection is gone (a reset
    can come before we ask)."""
    try:
        return sock.getpeername()[0]
    except OSError:
        return None


def read_to_end(sock, deadline):
    """Read until EOF or error; (bytes, end, data)."""
    n = 0
    parts = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return n, "timeout", b"".join(parts)
        sock.settimeout(left)
        try:
            chunk = sock.recv(CHUNK)
        except ConnectionResetError:
            return n, "reset", b"".join(parts)
        except socket.timeout:
            return n, "timeout", b"".join(parts)
        except OSError as e:
            return n, "error: %s" % e, b"".join(parts)
        if not chunk:
            return n, "eof", b"".join(parts)
        n += len(chunk)
        parts.append(chunk)


class SharedPassive:
    """One listening socket for every passive data connection (--pasv-port),
    its accepted connections queued by peer address until a session takes
    one."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.cond = threading.Condition()
        self.queued = {}  # peer address -> [socket]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        for _ in range(10_000):
            conn, peer = self.sock.accept()
            with self.cond:
                self.queued.setdefault(peer[0], []).append(conn)
                self.cond.notify_all()

    def take(self, peer_ip, seconds):
        """The first connection from peer_ip, waiting at most `seconds`."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.queued.get(peer_ip), timeout=seconds):
                raise OSError("no data connection from %s on the shared port" % peer_ip)
            return self.queued[peer_ip].pop(0)


class Session:
    def __init__(self, conn, peer):
        self.conn = conn
        self.peer = peer
        self.rfile = conn.makefile("rb")
        self.pasv = None  # listening socket
        self.port_addr = None  # (host, port) from PORT/EPRT
        self.mode = None
        self.server_ip = conn.getsockname()[0]

    def send(self, text):
        self.conn.sendall(text.encode("latin-1") + b"\r\n")

    def send_passive(self, cmd, reply):
        self.send(reply)
        if SHARED is not None:
            report({"cmd": cmd, "reply": reply, "peer": self.peer[0]})

    def close_data_setup(self):
        if self.pasv is not None and self.pasv is not SHARED:
            self.pasv.close()
        self.pasv = None
        self.port_addr = None

    def open_data(self):
        """The data connection of this transfer, or None (reply already sent)."""
        try:
            if SHARED is not None and self.pasv is SHARED:
                d = SHARED.take(self.peer[0], 15)
            elif self.pasv is not None:
                self.pasv.settimeout(15)
                d, _ = self.pasv.accept()
            elif self.port_addr is not None:
                d = socket.socket()
                d.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    d.bind((self.server_ip, 20))
                except OSError:
                    d.bind((self.server_ip, 0))
                d.settimeout(15)
                d.connect(self.port_addr)
            else:
                self.send("425 Use PORT or PASV first.")
                return None
        except OSError as e:
            self.send("425 Can't open data connection.")
            report({"cmd": "data", "mode": self.mode, "end": "error: %s" % e, "bytes": 0})
            return None
        finally:
            self.close_data_setup()
        return d

    def path(self, arg):
        rel = arg.lstrip("/")
        full = os.path.realpath(os.path.join(ARGS.root, rel))
        root = os.path.realpath(ARGS.root)
        if not (full == root or full.startswith(root + os.sep)):
            return None
        return full

    def retr(self, arg):
        full = self.path(arg)
        if full is None or not os.path.isfile(full):
            self.close_data_setup()
            self.send("550 Failed to open file.")
            return
        with open(full, "rb") as f:
            content = f.read()
        d = self.open_data()
        if d is None:
            return
        self.send("150 Opening BINARY mode data connection for %s (%d bytes)." % (arg, len(content)))
        entry = {"cmd": "RETR", "path": arg, "mode": self.mode, "size": len(content), "data_peer": peer_ip(d)}
        d.settimeout(30)
        try:
            if ARGS.retr_reset_after is not None and len(content) > ARGS.retr_reset_after:
                d.sendall(content[: ARGS.retr_reset_after])
                entry["acked"] = wait_acked(d, 10)
                reset_close(d)
                entry.update(bytes=ARGS.retr_reset_after, end="reset_sent")
            elif ARGS.retr_urgent_after is not None and len(content) > ARGS.retr_urgent_after:
                n = ARGS.retr_urgent_after
                d.sendall(content[:n])
                d.send(content[n : n + 1], socket.MSG_OOB)
                d.sendall(content[n + 1 :])
                d.shutdown(socket.SHUT_WR)
                _, end, _ = read_to_end(d, time.monotonic() + 10)
                d.close()
                entry.update(bytes=len(content), end="sent_with_urgent", peer_end=end)
            elif ARGS.retr_stall:
                head = content[: ARGS.stall_after]
                d.sendall(head)
                entry["acked"] = wait_acked(d, 10)
                # silent now; watch for the connection to end (the gateway's
                # idle deadline should reset it), bounded by --stall-seconds
                t0 = time.monotonic()
                _, end, _ = read_to_end(d, t0 + ARGS.stall_seconds)
                entry.update(
                    bytes=len(head), end="stalled_then_" + end, stalled_s=round(time.monotonic() - t0, 2)
                )
                if end == "timeout":
                    reset_close(d)
                else:
                    d.close()
            else:
                d.sendall(content)
                d.shutdown(socket.SHUT_WR)
                # wait for the peer's FIN, bounded, so the close is orderly
                read_to_end(d, time.monotonic() + 10)
                d.close()
                entry.update(bytes=len(content), end="sent")
        except OSError as e:
            entry.update(end="error: %s" % e)
            d.close()
        report(entry)
        self.send("226 Transfer complete.")

    def stor(self, arg):
        full = self.path(arg)
        if full is None or not os.path.isdir(os.path.dirname(full)):
            self.close_data_setup()
            self.send("553 Could not create file.")
            return
        d = self.open_data()
        if d is None:
            return
        data_peer = peer_ip(d)
        self.send("150 Ok to send data.")
        n, end, data = read_to_end(d, time.monotonic() + 60)
        d.close()
        with open(full, "wb") as f:
            f.write(data)
        report({"cmd": "STOR", "path": arg, "mode": self.mode, "bytes": n, "end": end, "data_peer": data_peer})
        # the lie: a server that does not check how its data connection ended
        self.send("226 Transfer complete.")

    def pasv_listen(self):
        self.close_data_setup()
        if SHARED is not None:
            self.pasv = SHARED
            return ARGS.pasv_port
        s = socket.socket()
        s.bind((self.server_ip, 0))
        s.listen(1)
        self.pasv = s
        return s.getsockname()[1]

    def handle(self, verb, arg):
        if ARGS.reset_control_on and verb == ARGS.reset_control_on.upper():
            return "reset"
        if verb == "USER":
            self.send("331 Please specify the password.")
        elif verb == "PASS":
            self.send("230 Login successful.")
        elif verb == "SYST":
            self.send("215 UNIX Type: L8")
        elif verb == "FEAT":
            tls = " AUTH TLS\r\n PBSZ\r\n PROT\r\n" if ARGS.ftps_echo else ""
            self.send("211-Features:\r\n EPSV\r\n EPRT\r\n" + tls + " PASV\r\n SIZE\r\n211 End")
        elif verb == "AUTH" and ARGS.ftps_echo and arg.upper() == "TLS":
            self.send("234 Proceed with negotiation.")
            return "echo"
        elif verb == "TYPE":
            self.send("200 Switching to Binary mode." if arg.upper().startswith("I") else "200 Type set.")
        elif verb in ("MODE", "STRU"):
            self.send("200 Ok.")
        elif verb == "PWD":
            self.send('257 "/" is the current directory')
        elif verb == "CWD":
            self.send("250 Directory successfully changed.")
        elif verb == "NOOP":
            self.send("200 NOOP ok.")
        elif verb == "SIZE":
            full = self.path(arg)
            if full and os.path.isfile(full):
                self.send("213 %d" % os.path.getsize(full))
            else:
                self.send("550 Could not get file size.")
        elif verb == "PASV":
            port = self.pasv_listen()
            self.mode = "passive"
            h = self.server_ip.replace(".", ",")
            text = "227 Entering Passive Mode (%s,%d,%d)." % (h, port >> 8, port & 255)
            if ARGS.pasv_text is not None:
                # PORT: the real listener's port, so a rewrite can name it
                text = ARGS.pasv_text.replace("PORT", "%d, %d" % (port >> 8, port & 255))
            self.send_passive("PASV", text)
        elif verb == "EPSV":
            port = self.pasv_listen()
            self.mode = "passive"
            self.send_passive("EPSV", "229 Entering Extended Passive Mode (|||%d|)" % port)
        elif verb == "PORT":
            nums = [int(x) for x in re.findall(r"\d+", arg)]
            if len(nums) != 6:
                self.send("501 Illegal PORT command.")
                return
            self.close_data_setup()
            self.port_addr = (".".join(map(str, nums[:4])), nums[4] * 256 + nums[5])
            self.mode = "active"
            self.send("200 PORT command successful.")
        elif verb == "EPRT":
            parts = arg.split(arg[:1]) if arg else []
            if len(parts) < 4 or parts[1] != "1":
                self.send("522 Network protocol not supported, use (1)")
                return
            self.close_data_setup()
            self.port_addr = (parts[2], int(parts[3]))
            self.mode = "active"
            self.send("200 EPRT command successful.")
        elif verb == "RETR":
            self.retr(arg)
        elif verb == "STOR":
            self.stor(arg)
        elif verb == "ABOR":
            self.close_data_setup()
            self.send("225 No transfer to ABOR.")
        elif verb == "QUIT":
            self.send("221 Goodbye.")
            return "quit"
        else:
            self.send("502 Command not implemented.")
        return None

    def echo(self):
        """After 234: send back every byte as it came, until EOF (bounded)."""
        moved = 0
        for _ in range(100_000):
            chunk = self.conn.recv(65536)
            if not chunk:
                break
            self.conn.sendall(chunk)
            moved += len(chunk)
        report({"cmd": "AUTH", "end": "eof", "bytes": moved, "peer": self.peer[0]})

    def run(self):
        self.conn.settimeout(ARGS.lifetime)
        self.send("220 scripted server ready")
        end = "eof"
        try:
            for _ in range(10_000):
                raw = self.rfile.readline(8192)
                if not raw:
                    break
                line = raw.decode("latin-1").rstrip("\r\n")
                verb, _, arg = line.partition(" ")
                what = self.handle(verb.upper(), arg)
                if what in ("quit", "reset"):
                    end = what if what == "quit" else "reset_sent"
                    break
                if what == "echo":
                    self.echo()
                    break
        except ConnectionResetError:
            end = "reset"
        except OSError as e:
            end = "error: %s" % e
        self.close_data_setup()
        self.rfile.close()  # it holds a reference: the socket closes with the last one
        if end == "reset_sent":
            reset_close(self.conn)
        else:
            self.conn.close()
        report({"cmd": "control", "end": end, "peer": self.peer[0]})


def serve_one(conn, peer):
    try:
        Session(conn, peer).run()
    except OSError as e:
        report({"cmd": "session", "end": "error: %s" % e, "peer": peer[0]})


def main():
    global ARGS, SHARED
    ARGS = parse_args()
    if ARGS.pidfile:
        with open(ARGS.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    # bounded lifetime, whatever the sessions do
    threading.Timer(ARGS.lifetime, lambda: os._exit(0)).start()
    host, _, port = ARGS.listen.rpartition(":")
    if ARGS.pasv_port is not None:
        SHARED = SharedPassive(host, ARGS.pasv_port)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(16)
    print("listening on %s" % ARGS.listen, file=sys.stderr, flush=True)
    for _ in range(1000):
        conn, peer = ls.accept()
        threading.Thread(target=serve_one, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
