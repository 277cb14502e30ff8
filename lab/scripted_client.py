#!/usr/bin/env python3
"""A scripted FTP client for the lab's client namespace (python3 stdlib only,
raw sockets so that every detail of a data connection's end is visible).
Prints one JSON report on stdout; the Rust test judges it.

  get PATH   download PATH; report how the data connection ended ("eof": a
             clean end, "reset": ConnectionResetError, "timeout", or
             "error: ..."), the bytes received and the final reply. Then a
             NOOP, and with --then-get P2 a second download in the same
             session (does the session go on after a failed transfer?).
             --rcvbuf N sets the data socket's SO_RCVBUF, --read-pause S
             waits S seconds before the first read: the client's window
             closes while the server sends; --read-every S waits S seconds
             before every later read too, so that the window is closed
             whenever data is on its way. --half-close closes the control
             connection's sending side (a FIN) right after the 150, then
             reads the data, the final reply and the control connection to
             its end ("control_end"); no NOOP or QUIT follows.
  put PATH   upload --size bytes to PATH; with --reset-after N, send N bytes,
             wait (bounded) until the peer acknowledged them, then end the
             data connection with a reset (SO_LINGER 0) instead of a FIN;
             report the final reply, then a NOOP.

  control reset
             log in, NOOP, then end the control connection with a reset
             (SO_LINGER 0); report {"noop", "sent": "reset"}.
  control half-close --lines A,B
             log in, send the commands A, B, ... in one write, then close
             the sending side (shutdown SHUT_WR, a FIN) and read until the
             end: {"replies": [...], "end": "eof" | "reset" | ...}. Over a
             router the server answers every command sent before the FIN.
  control VERB
             log in, send VERB and report how the control connection
             answered: {"end": "reset" | "eof" | "timeout" | "error: ...",
             "reply"} (a reply line, if one came before the end).

--mode passive|active (PASV/PORT, or EPSV/EPRT with --extended). Every wait
has a deadline; the process gives up after --lifetime seconds.
"""
import argparse
import fcntl
import json
import re
import signal
import socket
import struct
import sys
import termios
import time

CHUNK = 64 * 1024


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["get", "put", "control"])
    p.add_argument("path")
    p.add_argument("--host", default="198.51.100.10")
    p.add_argument("--mode", choices=["passive", "active"], default="passive")
    p.add_argument("--extended", action="store_true", help="EPSV/EPRT instead of PASV/PORT")
    p.add_argument("--then-get", metavar="PATH", help="get: a second download afterwards")
    p.add_argument("--size", type=int, default=1024 * 1024, help="put: bytes to upload")
    p.add_argument("--reset-after", type=int, metavar="N", help="put: reset the data connection after N bytes")
    p.add_argument("--rcvbuf", type=int, metavar="N", help="get: SO_RCVBUF of the data socket")
    p.add_argument("--read-pause", type=float, default=0.0, metavar="S", help="get: seconds before the first read")
    p.add_argument("--read-every", type=float, default=0.0, metavar="S", help="get: seconds before each later read")
    p.add_argument("--data-deadline", type=float, default=30.0, help="seconds a data connection may last")
    p.add_argument("--reply-timeout", type=float, default=30.0, help="seconds to wait for a reply")
    p.add_argument("--half-close", action="store_true", help="get: FIN on the control connection after the 150")
    p.add_argument("--lines", default="", help="control half-close: commands, comma-separated")
    p.add_argument("--lifetime", type=float, default=120.0)
    return p.parse_args()


def unacked(sock):
    """Bytes sent but not yet acknowledged by the peer (TIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def wait_acked(sock, seconds):
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


def pattern(n):
    """Deterministic, not compressible by accident, cheap."""
    block = bytes((i * 131 + 7) & 0xFF for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


class Control:
    def __init__(self, args):
        self.args = args
        self.sock = socket.create_connection((args.host, 21), timeout=args.reply_timeout)
        self.f = self.sock.makefile("rb")

    def line(self):
        return self.f.readline(8192).decode("latin-1").rstrip("\r\n")

    def reply(self):
        """One whole reply (its last line), or "timeout" / "closed"."""
        try:
            first = self.line()
            if not first:
                return "closed"
            if len(first) >= 4 and first[3] == "-":
                code = first[:3]
                for _ in range(1000):
                    last = self.line()
                    if not last or last.startswith(code + " "):
                        return last or "closed"
            return first
        except socket.timeout:
            return "timeout"
        except OSError as e:
            return "error: %s" % e

    def cmd(self, text):
        self.sock.sendall(text.encode("latin-1") + b"\r\n")
        return self.reply()

    def login(self):
        greeting = self.reply()
        assert greeting.startswith("220"), greeting
        r = self.cmd("USER anonymous")
        if r.startswith("331"):
            r = self.cmd("PASS lab@example.org")
        assert r.startswith("230"), r
        r = self.cmd("TYPE I")
        assert r.startswith("200"), r

    def transfer(self, command):
        """Set up the data connection and send `command`: (data socket or
        None, preliminary reply)."""
        a = self.args
        if a.mode == "passive":
            r = self.cmd("EPSV" if a.extended else "PASV")
            if a.extended:
                m = re.search(r"\|\|\|(\d+)\|", r)
                addr = (a.host, int(m.group(1))) if m else None
            else:
                m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", r)
                addr = (a.host, int(m.group(5)) * 256 + int(m.group(6))) if m else None
            if addr is None:
                return None, r
            d = socket.socket()
            if a.rcvbuf:
                d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
            d.settimeout(15)
            d.connect(addr)
            return d, self.cmd(command)
        me = self.sock.getsockname()[0]
        ls = socket.socket()
        if a.rcvbuf:
            # an accepted socket inherits the listener's buffer size
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
        ls.bind((me, 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        if a.extended:
            r = self.cmd("EPRT |1|%s|%d|" % (me, port))
        else:
            r = self.cmd("PORT %s,%d,%d" % (me.replace(".", ","), port >> 8, port & 255))
        if not r.startswith("200"):
            ls.close()
            return None, r
        self.sock.sendall(command.encode("latin-1") + b"\r\n")
        ls.settimeout(15)
        try:
            d, _ = ls.accept()
        except socket.timeout:
            ls.close()
            return None, self.reply()
        ls.close()
        return d, self.reply()


def read_to_end(d, seconds, every=0.0):
    """(bytes, end) of a download's data connection; `every` seconds pass
    between reads."""
    n = 0
    deadline = time.monotonic() + seconds
    while True:
        if n and every:
            time.sleep(every)
        left = deadline - time.monotonic()
        if left <= 0:
            return n, "timeout"
        d.settimeout(left)
        try:
            chunk = d.recv(CHUNK)
        except ConnectionResetError:
            return n, "reset"
        except socket.timeout:
            return n, "timeout"
        except OSError as e:
            return n, "error: %s" % e
        if not chunk:
            return n, "eof"
        n += len(chunk)


def get(ctl, path, args):
    t0 = time.monotonic()
    d, pre = ctl.transfer("RETR " + path)
    out = {"pre": pre}
    if d is None or not pre.startswith(("125", "150")):
        out.update(bytes=0, end="no data connection", final=pre)
        if d is not None:
            d.close()
        return out
    if args.half_close:
        ctl.sock.shutdown(socket.SHUT_WR)
    time.sleep(args.read_pause)
    n, end = read_to_end(d, args.data_deadline, args.read_every)
    d.close()
    out.update(bytes=n, end=end, data_s=round(time.monotonic() - t0, 2))
    out["final"] = ctl.reply()
    out["seconds"] = round(time.monotonic() - t0, 2)
    if args.half_close:
        rest = ctl.reply()
        out["control_end"] = "eof" if rest == "closed" else rest
    return out


def put(ctl, path, args):
    t0 = time.monotonic()
    d, pre = ctl.transfer("STOR " + path)
    out = {"pre": pre}
    if d is None or not pre.startswith(("125", "150")):
        out.update(sent=0, final=pre)
        if d is not None:
            d.close()
        return out
    n = args.size if args.reset_after is None else min(args.size, args.reset_after)
    d.settimeout(args.data_deadline)
    try:
        d.sendall(pattern(n))
        if args.reset_after is None:
            d.shutdown(socket.SHUT_WR)
            d.close()
            out["end"] = "fin_sent"
        else:
            out["acked"] = wait_acked(d, 10)
            reset_close(d)
            out["end"] = "reset_sent"
    except OSError as e:
        out["end"] = "error: %s" % e
        d.close()
    out["sent"] = n
    out["final"] = ctl.reply()
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def control_end(ctl, verb):
    """How the control connection ends after `verb` (or after our reset)."""
    if verb == "reset":
        out = {"noop": ctl.cmd("NOOP")}
        ctl.f.close()  # it holds a reference: the socket closes with the last one
        reset_close(ctl.sock)
        out["sent"] = "reset"
        return out
    if verb == "half-close":
        lines = [x for x in ctl.args.lines.split(",") if x]
        ctl.sock.sendall("".join(x + "\r\n" for x in lines).encode("latin-1"))
        ctl.sock.shutdown(socket.SHUT_WR)
        replies, end = read_control_to_end(ctl)
        return {"replies": replies, "end": end}
    ctl.sock.sendall(verb.encode("latin-1") + b"\r\n")
    replies, end = read_control_to_end(ctl)
    return {"reply": replies[-1] if replies else None, "end": end}


def read_control_to_end(ctl):
    """(lines read, how the control connection ended): "eof", "reset",
    "timeout", "error: ..." or, after 100 lines, "still open"."""
    replies = []
    for _ in range(100):
        try:
            raw = ctl.f.readline(8192)
        except ConnectionResetError:
            return replies, "reset"
        except socket.timeout:
            return replies, "timeout"
        except OSError as e:
            return replies, "error: %s" % e
        if not raw:
            return replies, "eof"
        replies.append(raw.decode("latin-1").rstrip("\r\n"))
    return replies, "still open"


def cmd_or_end(ctl, text):
    """ctl.cmd, or how the control connection had ended (the gateway may
    be gone: tests/integrity.rs drain_deadline_*)."""
    try:
        return ctl.cmd(text)
    except OSError as e:
        return "error: %s" % e


def main():
    args = parse_args()
    signal.alarm(int(args.lifetime))  # default action ends the process
    ctl = Control(args)
    ctl.login()
    if args.what == "control":
        print(json.dumps(control_end(ctl, args.path)), flush=True)
        return
    if args.what == "get":
        out = get(ctl, args.path, args)
    else:
        out = put(ctl, args.path, args)
    if args.half_close:
        print(json.dumps(out), flush=True)
        return
    out["noop"] = cmd_or_end(ctl, "NOOP")
    if args.then_get:
        out["then"] = get(ctl, args.then_get, args)
    out["quit"] = cmd_or_end(ctl, "QUIT")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
