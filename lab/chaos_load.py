#!/usr/bin/env python3
"""Many FTP sessions at once from the lab's client namespace, with real
clients: python ftplib (one thread per session) and curl (one process per
session). tests/chaos.rs writes the jobs and judges the report.

  chaos_load.py --jobs JOBS.json [--server 198.51.100.10] [--timeout 120]

JOBS.json is a list of objects:
  id       a name for the report
  client   "ftplib" or "curl"
  op       "get" (RETR remote -> local) or "put" (STOR local -> remote)
  mode     curl: "epsv", "pasv", "eprt" or "port"; ftplib: "pasv" or "port"
           (ftplib speaks PASV/PORT over IPv4)
  remote   path on the server, e.g. /pub/f.bin or /upload/f.bin
  local    path of the client's file
  source   the client address the session comes from
  rate     optional: bytes per second to move at most (a slow transfer,
           so that a test can break it in the middle)

How the sessions overlap: every ftplib session connects and logs in first;
when all are in (or --ready-timeout passes), the ftplib transfers and the
curl processes start at once, and each ftplib session stays open (NOOP
every 2 s, within any idle deadline) until every job has ended. So all
sessions are open together, and the report says how many were at most.

The report on stdout, one JSON object per line: first {"peak": sessions
open at once, "ready": ftplib sessions logged in before the start,
"seconds": ...}, then one line per job, in the order of JOBS.json:
{"id", "ok", "bytes", "sha256", "data_end", "final", "error", "seconds"}.
For ftplib, data_end is how the data connection ended ("eof", "reset",
"timeout", "error: ...") and final the transfer's reply
("226 ...", "426 ...", "closed" when the control connection ended
instead); for curl, final is "exit N" and error its stderr. ok means: a
2xx final reply after a clean end of the data connection (curl: exit 0);
the test compares the files themselves.

Bounded: every socket has a timeout, every curl a --max-time, every wait a
deadline (--timeout for the whole run).
"""
import argparse
import ftplib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time

CHUNK = 64 * 1024


class Live:
    """Sessions open now, and the most at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def up(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def down(self):
        with self.lock:
            self.now -= 1


ARGS = None
LIVE = Live()
GO = threading.Event()
ALL_DONE = threading.Event()
READY = threading.Semaphore(0)
REMAINING = None
REMAINING_LOCK = threading.Lock()


def job_ended():
    global REMAINING
    with REMAINING_LOCK:
        REMAINING -= 1
        if REMAINING == 0:
            ALL_DONE.set()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pace(rate, moved, t0):
    """Sleep so that `moved` bytes took at least moved/rate seconds."""
    if rate:
        ahead = moved / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(min(ahead, 1.0))


def wait_with_noop(ftp, event, deadline):
    """Keep the control connection busy (NOOP every 2 s) until `event`."""
    while not event.wait(2.0) and time.monotonic() < deadline:
        ftp.voidcmd("NOOP")


def final_reply(ftp):
    try:
        return ftp.getresp()
    except ftplib.Error as e:
        return str(e)
    except EOFError:
        return "closed"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "closed: %s" % e


def ftplib_transfer(ftp, job, out):
    rate = job.get("rate")
    ftp.voidcmd("TYPE I")
    n = 0
    t0 = time.monotonic()
    if job["op"] == "get":
        conn = ftp.transfercmd("RETR " + job["remote"])
        conn.settimeout(30)
        h = hashlib.sha256()
        with open(job["local"], "wb") as f:
            while True:
                try:
                    chunk = conn.recv(CHUNK if not rate else min(CHUNK, max(1024, rate // 10)))
                except ConnectionResetError:
                    out["data_end"] = "reset"
                    break
                except socket.timeout:
                    out["data_end"] = "timeout"
                    break
                except OSError as e:
                    out["data_end"] = "error: %s" % e
                    break
                if not chunk:
                    out["data_end"] = "eof"
                    break
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
                pace(rate, n, t0)
        out["sha256"] = h.hexdigest()
    else:
        conn = ftp.transfercmd("STOR " + job["remote"])
        conn.settimeout(30)
        out["data_end"] = "eof"
        with open(job["local"], "rb") as f:
            step = CHUNK if not rate else min(CHUNK, max(1024, rate // 10))
            for chunk in iter(lambda: f.read(step), b""):
                try:
                    conn.sendall(chunk)
                except (ConnectionResetError, BrokenPipeError):
                    out["data_end"] = "reset"
                    break
                except OSError as e:
                    out["data_end"] = "error: %s" % e
                    break
                n += len(chunk)
                pace(rate, n, t0)
        if out["data_end"] == "eof":
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError as e:
                out["data_end"] = "error: %s" % e
    conn.close()
    out["bytes"] = n
    out["final"] = final_reply(ftp)
    out["ok"] = out["final"][:1] == "2" and out["data_end"] == "eof"


def run_ftplib(job, out):
    deadline = time.monotonic() + ARGS.timeout
    ftp = None
    counted = False
    try:
        ftp = ftplib.FTP(timeout=30, source_address=(job["source"], 0))
        ftp.connect(ARGS.server, 21)
        LIVE.up()
        counted = True
        ftp.login("anonymous", "lab@example.org")
        ftp.set_pasv(job["mode"] == "pasv")
        READY.release()
        wait_with_noop(ftp, GO, deadline)
        t0 = time.monotonic()
        try:
            ftplib_transfer(ftp, job, out)
        finally:
            out["seconds"] = round(time.monotonic() - t0, 2)
            job_ended()
        if out.get("final", "")[:1] in ("1", "2", "3", "4", "5"):
            wait_with_noop(ftp, ALL_DONE, deadline)
            ftp.quit()
    except Exception as e:  # the report says what went wrong, per job
        out.setdefault("error", "%s: %s" % (type(e).__name__, e))
        if "seconds" not in out:
            READY.release()
            job_ended()
    finally:
        if ftp is not None:
            ftp.close()
        if counted:
            LIVE.down()


def curl_argv(job):
    argv = ["curl", "-sS", "--max-time", str(int(ARGS.timeout)), "--connect-timeout", "10"]
    argv += ["--interface", job["source"]]
    argv += {
        "epsv": [],
        "pasv": ["--disable-epsv"],
        "eprt": ["-P", job["source"]],
        "port": ["-P", job["source"], "--disable-eprt"],
    }[job["mode"]]
    if job.get("rate"):
        argv += ["--limit-rate", str(job["rate"])]
    url = "ftp://%s%s" % (ARGS.server, job["remote"])
    if job["op"] == "get":
        argv += ["-o", job["local"], url]
    else:
        argv += ["-T", job["local"], url]
    return argv


def run_curl(job, out):
    t0 = time.monotonic()
    LIVE.up()
    try:
        p = subprocess.run(curl_argv(job), stdin=subprocess.DEVNULL, capture_output=True, timeout=ARGS.timeout + 10)
        out["final"] = "exit %d" % p.returncode
        out["error"] = p.stderr.decode("latin-1").strip()
        out["ok"] = p.returncode == 0
        if job["op"] == "get":
            try:
                out["sha256"] = sha256_file(job["local"])
            except FileNotFoundError:
                out["sha256"] = None
    except subprocess.TimeoutExpired:
        out["final"] = "timeout"
    finally:
        LIVE.down()
        out["seconds"] = round(time.monotonic() - t0, 2)
        job_ended()


def main():
    global ARGS, REMAINING
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", required=True)
    p.add_argument("--server", default="198.51.100.10")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--stagger", type=float, default=0.01, help="seconds between two ftplib connects")
    ARGS = p.parse_args()
    with open(ARGS.jobs) as f:
        jobs = json.load(f)
    REMAINING = len(jobs)
    started = time.monotonic()
    results = [{"id": j["id"], "ok": False} for j in jobs]
    threads = []
    ftplib_jobs = [(j, r) for j, r in zip(jobs, results) if j["client"] == "ftplib"]
    curl_jobs = [(j, r) for j, r in zip(jobs, results) if j["client"] == "curl"]
    for j, r in ftplib_jobs:
        t = threading.Thread(target=run_ftplib, args=(j, r), daemon=True)
        t.start()
        threads.append(t)
        # vsftpd listens with a backlog of 32: a burst of 100+ SYNs in the
        # same millisecond overflows it, and a connection whose final ACK
        # the server dropped waits for a greeting that never comes.
        time.sleep(ARGS.stagger)
    ready = 0
    ready_deadline = time.monotonic() + ARGS.ready_timeout
    while ready < len(ftplib_jobs) and READY.acquire(timeout=max(0.01, ready_deadline - time.monotonic())):
        ready += 1
    GO.set()
    for j, r in curl_jobs:
        t = threading.Thread(target=run_curl, args=(j, r), daemon=True)
        t.start()
        threads.append(t)
    print(json.dumps({"started": len(jobs), "ready": ready}), file=sys.stderr, flush=True)
    end = started + ARGS.timeout + 15
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    for r in results:
        r.setdefault("final", "unfinished")
    summary = {"peak": LIVE.peak, "ready": ready, "seconds": round(time.monotonic() - started, 2)}
    print(json.dumps(summary), flush=True)
    for r in results:
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
