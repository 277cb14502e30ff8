#!/usr/bin/env python3
"""Writes the named seed corpus (seeds/<target>/<name>). Re-run after edits:
    python3 seeds/make.py
Session input format: see fuzz_targets/session_driver.rs. Crash regressions
(crash-*-regression) are written here too, so they survive a regeneration."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
seeds = {"command": {}, "reply": {}, "session": {}}

def cmd(name, data, chunk=0):
    seeds["command"][name] = bytes([chunk]) + data

def rep(name, data, cap=8):
    seeds["reply"][name] = bytes([cap]) + data

def sess(name, *records, header=None):
    marks = {2: b"#", 3: b"%", 4: b"&"}
    out = b"" if header is None else marks[len(header)] + bytes(header)
    for r in records:
        out += r
    seeds["session"][name] = out

def C(line): return b"C" + line + b"\r\n"
def S(line): return b"S" + line + b"\r\n"
def raw(side, data):  # side 'c' or 's', chunks of <= 255 bytes
    out = b""
    for i in range(0, len(data), 255):
        part = data[i:i + 255]
        out += side + bytes([len(part)]) + part
    return out

# ---- command lines ------------------------------------------------------
cmd("login", b"USER anna\r\nPASS secret\r\nSYST\r\nTYPE I\r\nPWD\r\nQUIT\r\n")
cmd("port", b"PORT 192,0,2,10,156,64\r\nRETR file.txt\r\n")
cmd("eprt-v4", b"EPRT |1|192.0.2.10|40001|\r\n")
cmd("eprt-v6", b"EPRT |2|2001:db8::10|40001|\r\n")
cmd("eprt-mapped", b"EPRT |2|::ffff:192.0.2.10|40001|\r\n")
cmd("pasv-epsv", b"PASV\r\nEPSV\r\nEPSV 2\r\nEPSV ALL\r\nepsv all\r\n", chunk=3)
cmd("lowercase", b"user anna\r\nport 192,0,2,10,156,64\r\nretr x\r\n")
# ATTACKS.md 1-4
cmd("attack-bounce", b"PORT 203,0,113,7,0,25\r\nEPRT |1|203.0.113.7|25|\r\n")
cmd("attack-privileged", b"PORT 192,0,2,10,0,22\r\n")
cmd("attack-malformed-numbers", b"PORT 256,0,2,10,1,1\r\nPORT -1,0,2,10,1,1\r\nPORT 1,2,3,4,5,6,7\r\n"
    b"PORT 1,2,3,4,5\r\nPORT +1,2,3,4,5,6\r\nPORT 1, 2,3,4,5,6\r\nPORT 1,2,3,4,70000,1\r\n"
    b"PORT 1,2,3,4,0,0\r\nPORT 0,0,0,0,4,1\r\n")
cmd("attack-eprt-edges", b"EPRT |3|x|1|\r\nEPRT |2|192.0.2.10|1025|\r\nEPRT |2|fe80::1%eth0|1025|\r\n"
    b"EPRT 1192.0.2.101025\r\nEPRT \x011\x01192.0.2.10\x011025\x01\r\nEPRT |1|192.0.2.10|1025\r\n"
    b"EPRT |1|192.0.2.10|99999|\r\nEPRT |||1025|\r\n")
cmd("attack-slipstream", b"POST / HTTP/1.1\r\nHost: x\r\n\r\nPORT 192,0,2,10,0,22\r\n")
cmd("attack-line-endings", b"PWD\rPORT 1,2,3,4,5,6\nPWD\r\r\nNOOP\nUSER a\x00b\r\n")
cmd("attack-telnet", b"RETR a\xff\xffb\r\n\xff\xfb\x01\xff\xfd\x03NOOP\r\n\xff\xf4\xff\xf2ABOR\r\n\xff\xfa\x18xyz\xff\xf0STAT\r\n")
cmd("attack-overlong", b"STOR " + b"a" * 9000 + b"\r\nNOOP\r\n")
cmd("max-line", b"STOR " + b"a" * (8192 - 5) + b"\r\nNOOP\r\n", chunk=200)
cmd("attack-verbs", b"RETR PORT 1,2,3,4,5,6\r\nLPRT 4,4,1,2,3,4,2,0,20\r\nLPSV\r\nAUTH TLS\r\nREIN\r\nUSERS a\r\n RETR\r\n")

# ---- reply lines --------------------------------------------------------
rep("greeting-login", b"220 ready\r\n331 pw\r\n230 ok\r\n")
rep("feat-tls", b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n211-PROT\r\n MDTM\r\n ccc\r\n211 End\r\n211-x\r\n211 y\r\n")
rep("pasv", b"227 Entering Passive Mode (198,51,100,10,195,80).\r\n")
rep("pasv-irregular", b"227 =198,51,100,10,195,80\r\n227 Entering Passive Mode 198,51,100,10,195,80\r\n227 Logout.\r\n")
rep("epsv", b"229 Entering Extended Passive Mode (|||50000|)\r\n229 (!!!50000!)\r\n229 (|||0|)\r\n")
rep("multiline", b"230-Welcome\r\n230-to the\r\n230 server\r\n211-Features:\r\n MDTM\r\n REST STREAM\r\n211 End\r\n", cap=255)
rep("multiline-227", b"227-Entering Passive Mode\r\n227 (198,51,100,10,195,80)\r\n", cap=255)
rep("attack-digit-continuation", b"226-first\r\n123 x\r\n226-still\r\n230 other\r\n226 done\r\n", cap=255)
rep("attack-line-cap", b"211-a\r\nb\r\nc\r\nd\r\ne\r\n211 end\r\n", cap=2)
rep("attack-never-ends", b"211-a\r\n" + b"x\r\n" * 200, cap=255)
rep("attack-malformed", b"22 x\r\n2200 x\r\n620 x\r\nabc\r\n\r\n220x\r\n200\r\n")
rep("attack-227-third-host", b"227 Entering Passive Mode (10,0,0,5,0,22)\r\n227 (0,0,0,0,195,80)\r\n")
rep("attack-telnet", b"257 \"/a\xff\xffb\"\r\n\xff\xfb\x01220 x\r\n")

# ---- sessions -----------------------------------------------------------
LOGIN = [S(b"220 ready"), C(b"USER anna"), S(b"331 pw"), C(b"PASS secret"), S(b"230 ok")]
PASV_REPLY = b"227 Entering Passive Mode (198,51,100,10,195,80)."
sess("greeting-login-quit", *LOGIN, C(b"SYST"), S(b"215 UNIX Type: L8"), C(b"QUIT"), S(b"221 bye"), b"X\x01")
sess("pasv-retr", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR file.txt"),
     S(b"150 Opening"), b"A\x00", b"K\x00", S(b"226 done"), b"R\x00\x10\x00", C(b"QUIT"), S(b"221 bye"))
sess("epsv-list", *LOGIN, C(b"EPSV"), S(b"229 Entering Extended Passive Mode (|||50000|)"), b"L\x00",
     C(b"LIST"), b"A\x00", S(b"150 Here comes the listing"), b"K\x00", S(b"226 ok"), b"R\x00\x01\x00")
sess("port-stor", *LOGIN, C(b"PORT 192,0,2,10,156,65"), b"L\x00", S(b"200 PORT ok"), C(b"STOR up.bin"),
     S(b"150 ok"), b"A\x00", b"K\x00", b"R\x00\x00\x40", S(b"226 stored"), C(b"QUIT"), S(b"221 bye"))
sess("eprt-retr", *LOGIN, C(b"EPRT |1|192.0.2.10|40002|"), b"L\x00", S(b"200 EPRT ok"), C(b"RETR x"),
     S(b"150 ok"), b"A\x00", b"K\x00", S(b"226 sent"), b"R\x00\x02\x00")
sess("eprt-v6", S(b"220 ready"), C(b"USER anna"), S(b"331 pw"), C(b"PASS x"), S(b"230 ok"),
     C(b"EPRT |2|2001:db8::10|40002|"), b"L\x00", S(b"200 ok"), C(b"EPSV"),
     S(b"229 (|||50001|)"), b"L\x00", C(b"NLST"), b"A\x00", b"K\x00", S(b"150 ok"), S(b"226 ok"), b"R\x00",
     header=[64, 0])
sess("mapped-ends-pasv", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR x"), b"A\x00\x02",
     b"K\x00", S(b"150 ok"), S(b"226 ok"), b"R\x00", header=[128, 0])
sess("pipelined", S(b"220 ready"), C(b"USER anna\r\nPASS x\r\nPASV\r\nLIST\r\nQUIT"),
     S(b"331 pw\r\n230 ok\r\n" + PASV_REPLY), b"L\x00", b"A\x00", b"K\x00",
     S(b"150 ok\r\n226 ok"), b"R\x00", S(b"221 bye"))
sess("multiline-replies", S(b"220-Welcome\r\n220-to\r\n220 ftp"), C(b"USER anna"), S(b"331 pw"),
     C(b"PASS x"), S(b"230-Hi\r\n230 ok"), C(b"FEAT"), S(b"211-Features:\r\n EPSV\r\n MDTM\r\n211 End"),
     C(b"PASV"), S(b"227-Entering Passive Mode\r\n227 (198,51,100,10,195,80)"), b"L\x00")
sess("bind-retry", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"F\x00\x00\x00", b"L\x00", C(b"RETR x"),
     b"A\x00", b"K\x00", S(b"150 ok"), S(b"226 ok"), b"R\x00")
sess("port-listen-fails", *LOGIN, C(b"PORT 192,0,2,10,156,65"), b"F\x00\x00\x00", b"F\x00\x01\x02", C(b"NOOP"), S(b"200 ok"))
sess("timeouts", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", b"T\x1f", C(b"RETR x"), S(b"425 no data"),
     b"T\xc8", b"T\xff")
# Issue 11: a cut relay never looks complete.
sess("relay-reset-then-226", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR big"), b"A\x00", b"K\x00",
     S(b"150 Opening"), b"G\x00\x80\x00", b"E\x00\x01\x04", S(b"226 done"),
     C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR small"), b"A\x00", b"K\x00", S(b"150 ok"), S(b"226 ok"),
     b"R\x00\x01\x00")
sess("relay-reset-after-226", *LOGIN, C(b"PORT 192,0,2,10,156,65"), b"L\x00", S(b"200 PORT ok"),
     C(b"STOR up.bin"), S(b"150 ok"), b"A\x00", b"K\x00", S(b"226 stored"), b"E\x00\x00\x04",
     C(b"NOOP"), S(b"200 noop"))
sess("data-idle", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR slow"), b"A\x00", b"K\x00",
     S(b"150 Opening"), b"T\x64", b"G\x00\x01\x00", b"T\xc7", b"T\xc7", b"T\x10", S(b"226 done"),
     S(b"451 late"))
sess("abor-running-relay", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR big"), b"A\x00", b"K\x00",
     S(b"150 Opening"), b"G\x00\x10\x00", C(b"ABOR"), S(b"226 done"), S(b"225 ABOR ok"))
# kernel_data_path (header '&', mode bit 0): the 226 passes before the
# kernel reports the end; ABOR; the client closing mid-transfer; a reset.
KERNEL = [0, 0, 0, 1]
sess("kernel-retr", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR big"), b"A\x00", b"K\x00",
     S(b"150 Opening"), S(b"226 done"), C(b"PASV"), S(b"227 Entering Passive Mode (198,51,100,10,195,81)."),
     b"R\x00\x04", b"L\x00", header=KERNEL)
sess("kernel-abor", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR big"), b"A\x00", b"K\x00",
     S(b"150 Opening"), C(b"ABOR"), S(b"426 aborted"), S(b"226 ABOR ok"), b"E\x00\x01\x04", header=KERNEL)
sess("kernel-client-close", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR big"), b"A\x00",
     b"K\x00", S(b"150 Opening"), b"X\x00", S(b"226 done"), b"R\x00\x04", header=KERNEL)
sess("kernel-reset-after-226", *LOGIN, C(b"EPSV"), S(b"229 (|||50001|)"), b"L\x00", C(b"STOR up"), b"A\x00",
     b"K\x00", S(b"150 Opening"), S(b"226 done"), b"E\x00\x00\x04", C(b"NOOP"), S(b"200 ok"),
     header=KERNEL)
sess("pipelined-login-pasv", S(b"220 ready"), raw(b"c", b"USER anna\r\nPASS x\r\nPASV\r\nREIN\r\nEPSV\r\n"),
     S(b"331 pw"), S(b"230 ok"), S(PASV_REPLY), b"L\x00", S(b"502 no REIN"), S(b"229 (|||50001|)"), b"L\x00")
sess("transfer-timeouts", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR x"), b"A\x00",
     S(b"150 ok"), S(b"226 ok"), b"T\x0b", C(b"NOOP"), S(b"200 ok"))
sess("drain-during-transfer", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR x"), b"A\x00", b"K\x00",
     b"D", S(b"150 ok"), S(b"226 ok"), b"R\x00")
sess("server-unreachable", b"U")
sess("greeting-timeout", b"T\x1f")
sess("max-channels-3", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"EPSV"), S(b"229 (|||50001|)"),
     b"L\x00", C(b"PORT 192,0,2,10,156,65"), b"L\x00", S(b"200 ok"), C(b"RETR x"), b"A\x00", b"K\x00",
     S(b"150 ok"), S(b"226 ok"), b"R\x00", header=[2, 0])
sess("zero-timeouts", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", b"T\x00", header=[16, 0])
sess("huge-timeouts", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", b"T\xff", header=[32, 0])
sess("refuse-policy", *LOGIN, C(b"PASV"), S(b"227 Entering Passive Mode (10,0,0,5,195,80)."), C(b"NOOP"),
     S(b"200 ok"), header=[8, 0])
sess("blocked-output", b"B\x00", *LOGIN, C(b"HELP"), S(b"214-" + b"x" * 200 + b"\r\n214 end"), b"W\x00\x02", b"B\x00")
sess("partial-drain", *LOGIN, C(b"PASV"), b"P\x01", S(PASV_REPLY), b"L\x00", C(b"RETR x"))
# ATTACKS.md
sess("attack-bounce", *LOGIN, C(b"PORT 203,0,113,7,0,25"), C(b"EPRT |1|203.0.113.7|25|"), C(b"PORT 192,0,2,10,0,22"))
sess("attack-port-theft", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR x"), b"A\x00\x01",
     b"A\x00\x00", b"K\x00", S(b"150 ok"), S(b"226 ok"), b"R\x00")
sess("attack-227-third-host", *LOGIN, C(b"PASV"), S(b"227 Entering Passive Mode (10,0,0,5,0,22)."),
     C(b"PASV"), S(b"227 Entering Passive Mode (0,0,0,0,195,80)."), b"L\x00")
sess("attack-unsolicited-227", *LOGIN, C(b"NOOP"), S(PASV_REPLY), S(b"227 Logout."))
sess("attack-before-login", S(b"220 ready"), C(b"PASV"), C(b"PORT 192,0,2,10,156,65"), C(b"EPRT |1|192.0.2.10|40002|"))
sess("attack-before-greeting", C(b"USER anna"), S(b"120 wait"), S(b"220 ready"))
sess("attack-slipstream", S(b"220 ready"), C(b"POST / HTTP/1.1"), C(b"Host: x"), C(b""), C(b"PORT 192,0,2,10,0,22"))
sess("attack-split-segments", S(b"220 ready"), raw(b"c", b"US"), raw(b"c", b"ER an"), raw(b"c", b"na\r"), raw(b"c", b"\n"),
     raw(b"s", b"3"), raw(b"s", b"31 pw\r\n"))
sess("attack-overlong", S(b"220 ready"), raw(b"c", b"STOR " + b"a" * 9000))
sess("attack-overlong-server", S(b"220 ready"), C(b"NOOP"), raw(b"s", b"200 " + b"a" * 9000))
sess("attack-line-endings", *LOGIN, b"CPWD\rPORT 192,0,2,10,156,65\n", C(b"NOOP\x00"), b"CPWD\r\r\n")
sess("attack-telnet", *LOGIN, raw(b"c", b"\xff\xfb\x01\xff\xfd\x03RETR a\xff\xffb\r\n\xff\xf4\xff\xf2ABOR\r\n"))
sess("attack-many-pasv", *LOGIN, *[C(b"PASV") + S(PASV_REPLY) + b"L\x00" for _ in range(5)])
sess("attack-421", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", S(b"421 bye"))
sess("attack-multiline-cap", *LOGIN, C(b"HELP"), S(b"214-a\r\nb\r\nc\r\nd\r\n214 e"), header=[0, 3])
sess("attack-epsv-all", *LOGIN, C(b"EPSV ALL"), S(b"200 ok"), C(b"PASV"), C(b"PORT 192,0,2,10,156,65"), C(b"EPSV"),
     S(b"229 (|||50000|)"), b"L\x00")
sess("attack-lprt-auth", *LOGIN, C(b"LPRT 4,4,192,0,2,10,2,156,65"), C(b"LPSV"), C(b"AUTH TLS"), C(b"REIN"), S(b"220 ok"), C(b"PASV"))
sess("attack-wrong-peer-active", *LOGIN, C(b"PORT 192,0,2,10,156,65"), b"L\x00", S(b"200 ok"), C(b"RETR x"),
     S(b"150 ok"), b"A\x00\x01", b"A\x00\x00\x07", b"K\x00", b"F\x00\x04\x04", S(b"226 ok"))
sess("attack-data-command-during-transfer", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"RETR x"),
     b"A\x00", b"K\x00", S(b"150 ok"), C(b"PASV"), S(b"226 ok"), b"R\x00", S(PASV_REPLY), b"L\x00")

# ---- crash regressions (minimized inputs, byte for byte) ------------------
# ABOR pipelined behind STOR while the 227 waits for its listener: the hold
# outlived the channel (tests/fuzz_regressions.rs
# abor_while_227_waits_for_listener_releases_it_as_425).
seeds["session"]["crash-abor-held-227-regression"] = (
    b"S220\nS230\nCPASV\nS227 8,5,0,0,9,8\nc\xffSTOR\nABOR\n")

# ---- issue 12: FEAT filter, FTPS pass-through, junk, refused runs, logins ----
# header "%" flags cap policy: policy bit 0 pass-through, bits 1-3 max_refused_lines
def sess12(name, *records, policy=0, flags=0, cap=0):
    seeds["session"][name] = b"%" + bytes([flags, cap, policy]) + b"".join(records)

FEAT = b"211-Features:\r\n AUTH TLS\r\n EPRT\r\n PBSZ\r\n PROT\r\n CCC\r\n211-AUTH SSL\r\n SIZE\r\n211 End"
sess12("feat-refuse", *LOGIN, C(b"FEAT"), S(FEAT), C(b"HELP"), S(b"214-x\r\n AUTH TLS\r\n214 ok"), C(b"AUTH TLS"))
sess12("feat-pass-through", *LOGIN, C(b"FEAT"), S(FEAT), policy=1)
sess12("ftps-pass-through", S(b"220 ready"), C(b"AUTH TLS"), S(b"234 go"),
       raw(b"c", b"\x16\x03\x01\x00\x05hello\r\n"), raw(b"s", b"\x16\x03\x03\x00\x02ok"), b"T\xff", policy=1)
sess12("ftps-after-pasv", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00", C(b"AUTH SSL"), S(b"234 go"), policy=1)
sess12("ftps-refused-by-server", S(b"220 ready"), C(b"AUTH TLS"), S(b"504 no"), *LOGIN[1:], policy=1)
sess12("ftps-pipelined-hello", S(b"220 ready"), raw(b"c", b"AUTH TLS\r\n\x16\x03\x01\x00\x05"), S(b"234 go"), policy=1)
sess12("junk-http-first", S(b"220 ready"), C(b"GET / HTTP/1.1"), C(b"Host: x"))
sess12("junk-tls-hello", S(b"220 ready"), raw(b"c", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"))
sess12("junk-flood", *LOGIN, C(b"LPSV"), C(b"X"), C(b"LPSV"), C(b"NOOP"), S(b"200 ok"), C(b"LPSV"), C(b"LPSV"),
       C(b"LPSV"), C(b"LPSV"), C(b"LPSV"), policy=5 << 1)
sess12("junk-flood-one-read", *LOGIN, raw(b"c", b"LPSV\r\nNOOP\r\nLPSV\r\nLPSV\r\nNOOP\r\nLPSV\r\n" * 3), policy=3 << 1)
sess12("login-failures", S(b"220 ready"), C(b"USER foo"), S(b"530 anonymous only"), C(b"USER anna"), S(b"331 pw"),
       C(b"PASS x"), S(b"530 Login incorrect."), C(b"PASS y"), S(b"503 USER first"))

# ---- issue 15: server-data conversion (policy bit 4), read-only (bit 5) ----
PORT_CONV = C(b"PORT 192,0,2,10,156,64")
sess12("convert-passive-port", *LOGIN, PORT_CONV, S(b"227 Entering Passive Mode (198,51,100,10,117,48)"),
       b"N\x00\x01", C(b"RETR f"), S(b"150 ok"), b"N\x00\x00", b"R\x00\x05\x00", S(b"226 done"), policy=0x10)
sess12("convert-read-only-reset", *LOGIN, C(b"STOR x"), C(b"EPRT |1|192.0.2.10|40000|"),
       S(b"229 Entering Extended Passive Mode (|||30000|)"), b"N\x00\x01", C(b"LIST"), S(b"150 ok"),
       b"N\x00\x00", b"E\x00\x01\x03", S(b"226 done"), policy=0x30)
# server-data = "active" (policy bit 6): PASV -> the gateway's PORT, two
# listeners, both legs accepted (A who 0: the last listener's peer, the
# client; who 3: the other end, the server).
sess12("convert-active-pasv", *LOGIN, C(b"PASV"), b"L\x00\x00\x00\x00", S(b"200 PORT ok"),
       b"L\x00\x00\x00\x00", C(b"RETR f"), b"A\x00\x03\x00", S(b"150 ok"), b"A\x00\x00\x00",
       b"R\x00\x05\x00", S(b"226 done"), policy=0x40)
sess12("convert-active-epsv-thief-refused", *LOGIN, C(b"EPSV ALL"), C(b"EPSV"), b"L\x00\x00\x00\x00",
       S(b"500 no"), C(b"EPSV"), b"L\x00\x00\x00\x00", S(b"200 ok"), b"L\x00\x00\x00\x00",
       b"A\x00\x01\x00", C(b"STOR f"), b"A\x00\x03\x00", S(b"150 ok"), S(b"226 done"), b"T\x40",
       policy=0x40)
# A reload (Y) denying everyone while a transfer runs: nothing more reaches
# the server.
sess12("reload-deny-during-transfer", *LOGIN, C(b"PASV"), S(PASV_REPLY), b"L\x00\x00\x00\x00",
       C(b"RETR f"), b"A\x00\x00\x00K\x00", S(b"150 ok"), b"Y\x01", C(b"NOOP"), C(b"STOR x"),
       S(b"226 done"), b"R\x00\x05\x00", policy=0)

# A malformed 227 for a converted PORT: the channel was never dialed, so
# the shell never opened it and gets no CloseData (session_driver.rs).
seeds["session"]["crash-convert-closed-before-dial-regression"] = (
    b"%\x00\x00\x10S220 hi\nCUSER a\nS230 ok\nCPORT 192,0,2,10,156,64\nS227 Entering Pas f\n")

# Connected (not Dialed) for a converted channel started its relay with
# one leg dialed (session/data.rs on_connected).
seeds["session"]["crash-convert-connected-not-dialed-regression"] = (
    b"%\x00\x00\x10S220 hi\nCUSER a\nS230 ok\nCPORT 192,0,2,10,156,64\n"
    b"S227 Entering Passive Mode (198,51,100,10,117,48)\nCRETR f\nS150 ok\nK\x00")

# The server connects to the PORT listener, then refuses the PORT: the
# accepted leg was closed with a FIN, not a reset (src/session/tests.rs
# expect_connect_port_refused_after_server_connected_resets).
seeds["session"]["crash-port-refused-after-connect-regression"] = (
    b"S220\nS230\nCPORT 192,0,2,10,156,65\nL\x00\x00\x00\x00A\x00\x00\x00S500 no\n")

# A held 226 dropped by a teardown (here a malformed server line): the
# record said the client got 426 (src/session/tests.rs
# relaying_client_closes_with_226_held_record_says_client_got_no_reply).
seeds["session"]["crash-held-226-dropped-at-teardown-regression"] = (
    b"S220\nS230\nCPASV\nS227 (198,51,100,10,195,80)\nL\x00\x00\x00\x00CRETR x\n"
    b"A\x00\x00\x00K\x00S150 ok\nS226 ok\nSxyz\n")

# --data-path pinhole: the client closed mid-transfer (its side shut, the
# session waits for the kernel's end), then a malformed server reply ended
# the session, and the teardown shut the client's side a second time
# (src/session/tests.rs
# kernel_data_path_teardown_after_client_left_shuts_each_side_once).
seeds["session"]["crash-kernel-client-gone-then-server-broke-regression"] = (
    b"&\x00\x00\x00\x01S220\nS230\nCPASV\nS227 (198,51,100,10,195,80)\nL\x00\x00\x00\x00CRETR x\n"
    b"A\x00\x00\x00K\x00X\x00S\r\n")

# A refused line, then the channel cap refusing two 229s (answers to
# PASVs forwarded before it), then the run's record at the teardown: the
# core is right (one record for the run); the driver counted the two 229
# refusals as refused-line records (session_driver.rs refuses_a_client_line;
# tests/fuzz_regressions.rs
# passive_cap_refusals_inside_a_refused_run_are_not_line_records).
seeds["session"]["crash-passive-cap-refusals-in-refused-run-regression"] = (
    b"#\x00\x00S220\nS230\nCPASV\nCPASV\nCPASV\nS229 (|||50001|)\nL\x00\x00\x00\x00A\x00\x00\x00CR150\n"
    b"S229 (|||50001|)\nS229 (|||50001|)\n")

# A 530 whose digits a Telnet command splits ("53", IAC DM, "0"): the core
# decodes it and records LoginFailed, rightly; the driver counted 530s in
# the raw bytes and saw none (session_driver.rs now frames the server's
# lines as the core does; tests/fuzz_regressions.rs
# telnet_split_530_is_a_failed_login).
seeds["session"]["crash-530-split-by-telnet-dm-regression"] = (
    b'%\x00\x00\x00S229 ready\r\nCUSER STOR foo\r\nS53\xff\xf20 ano29 read\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04\x04y\r\nCUSER STOR \xa0foo\r\nS130 anonymo0 Login incorrect.\r\nCPASS y\r\nS503 USER firs`t\r\n')

# Under enforce-data-direction, a transfer command bound to a channel the
# daemon had not been asked for yet (a PORT converted to PASV waits for the
# server's 227 before its first Dial) got its DataDirection at once, which
# the daemon dropped for want of a channel. The core now sends it when the
# channel is first asked for (data.rs `announce`). Found by the fuzzer
# (9th session; present since the conversion). Minimized, it is a RETR and
# an ABOR's Telnet Synch pipelined behind the converted PORT (convert.rs
# converted_port_not_yet_dialed_gets_no_direction).
seeds["session"]["crash-direction-before-announce-regression"] = (
    b'%\x00\x00\xff\xf0\x01S220 rea\xa4\x86\r\nCAUTH TLS\r\nS504 no\r\nCUSE\r\nCPASS se\xc2ret\r\nS231 okPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 E@ntering Pass\x97ve Mode (198,51,100,10,195,80).\r\nL\x00S13.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering Passive ModpwS230 ok\r\nCPAS220-227 Entering Passive Mode \r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.1R anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 ok\r\nCPORT 203,0,113,7,0,\x00\x00\x00\x00\x00\x00\x00\x0025\r\n\xc7EPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n\xe2220 ftp\r\nCUSER anna\r\nS331 pw\r\nCPASS x\r\nS230-Hi\r\n230 ok\r\n\rCFEssive Mode (198,51,1S230 ok\r\nCPORT 192,0,2,10,156,65\r\nL\x00S200 POR koT\r\nCSTOR up.bin\r\nS150 ok\r\nA\x00K\x00R\x00\x00@S113 stored\r\nCQUIS220 ready\r\nCUSS150 Opening\r\nA\x00K\x00S226 done\r\nR\x00\x10\x00CQUITR\xacE\xef\xf5 a\x06\x00\x10\x00nna\xff\xfa\r\nS331 pw\r\nCPASS \xcd2secreS220 rready\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 okPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 E@ntering Pass\x97ve Mode (198,51,100,10,195,80).\r\nL\x00S13.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering Passive ModpwS230 ok\r\nCPAS220-227 Entering Passive Mode \r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.1R anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 ok\r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n220 ftp\r\nCUSER anna\r\nS331 pwodpwS230 ok\r\nCPAS220-227 Entering Passive Mode \r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.1R anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 ok\r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.113.7|25|\r\nCPORT 096,0,2,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n220 ftp\r\nCUSER anna\r\nS331 pw\r\nCPASS x\r\nS230-Hi\r\n230 ok\r\n\rCFEssive Mode (198,51,1S230 ok\r\nCPORT 192,0,2,10,156,65\r\nL\x00S200 PORT ok\r\nCSTOR up.bin\r\nS150 ok\r\nF\x00\x00\x00\x00\x00\x00\x00A\x00K\x00R\x00\x00@S113 stored\r\nCQUIS220 ready\r\nCUSS150 Opening\r\nA\x00K\x00S226 done\r\nR\x00\x10\x00CQUIT\xef\xf5\xacER a\x06\x00\x10\x00nna\xff\xfa\r\nS331 pw\r\nCPASS \xcd2secret\r\nS230 ok\r\nCPSS secret\r\nS230 ok\r\nCPASV\r\nS227 Enteri Pa.z.92,0,2,20,156,65\r\nCEEPRT P56,65\r\n|203.0.1R anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 ok\r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n220 ftp\r\nCUSER anna\r\nS331 pwodpwS230 ok\r\nCPAS220-227 Entering Passive Mode \r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.1R anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 ok\r\nCPORT 203,0,113,7,0,25\r\n\xc7EPRT |1|203.0.113.7|25|\r\nCPORT 096,0,2,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n220 ftp\r\nCUSER anna\r\nS331 pw\r\nCPASS x\r\nS230-Hi\r\n230 ot\r\nS230 ok\r\nCPSS secret\r\nS230 ok\r\nCPASV\r\nS227 Enteri Pa.z.92,0,2,20,156,65\r\nCEEPRT P56,65\r\nCEPRT)|1\xfc192.0.2\xff\xff\xff\xff\xff\xff\xff\xffead\r\nyCP\xff\xff\x0f\x00ASV\r\nCPORT"192,0,2,10,156,65\r\nCEPRT |1|40002|\r\n\r\nCQUIT =|1|192.0.2.10220 r\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac\xffaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaae\r\n220-to\r\n220 ftp\r\nCUSER anna\r\nS331 pw\r\nCPASS x\r\nS230-Hi\r\n230 ok\r\n\rCFEA\xff/\xfd\nS211-Features:\r\n EPSV\r\n M\x00\x00\x00V\n211 End\r\nCPASV\r\nS227-Entering Passiv10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nC%E\x00\x00\x00\x10S220 ready\r\nCUSER anna\r\nS331 pw\r\nCPASS secret\r\nS230 ok\r\nCPOYT 192,0,2,10,156,64\r\nS227 Entering Passive \nS220 ready\r\nCUSER an193,0,2,10,156,64S secret\r\nS230 ok\r\nCLPSV\r\nCX\r\nCYT 1\x082,0,2,10,156,64\r\nS227 Entering Passive \nS220 ready\r\nCUSER ank\r\n\rCFEssive Mode (198,51,1S230 ok\r\nCPORT 192,0,2,10,156,65\r\nL\x00S\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffC\xff\xfft\r\nS230 ok\r\nc\x1b\xff\xfb\x01\xff\r\xfc\x8d\xbaR aw\r\net\r\nS230 ok\r\nc\x1b\xff\xfb\x01\xff\xfd\x03rETR a\xff\xffb\r\n\xff\xf4\xff\xf2ABOR\r\n\nTR a\xff\xffb\r\n\xff\xf4\xff\xf2ABOR\r\nC:BOR\r\nnna\x01YS331 pw220-227 Entering na\r\nS331 pw\r\nCPASS se\xc2ret\r\nS231 okPRT |1|203.0.113.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 E@ntering Pass\x97ve Mode (198,51,100,10,195,80).\r\nL\x00S13.7|25|\r\nCPORT 192,0,2,10,0,Passive Mode (198,52,100,10,195,80).\r\nL\x00S42eady\r\nCUSER anna\r\nS331 pwS230 ok\r\nCPAS220-227 Entering Passive ModpwS230 ok\r\nCPAS220-227 Entering Passive Mode \r\nCPORT 203,0,113k\r\n\rCFEssive Mode (198,51,1S230 ok\r\nCPORT 192,0,2,10,156,65\r\nL\x00S200 PORT ok\r\nCSTOR up.bin\r\nS\xfb\xfb\xfb\xfb40000|\r\nS229 Entering ExYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY\xff\xff\xff\xff\xff\xff\xff\x7f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffYYYYYYYYYYSTOUYYYYYYYYYYYYYYYYYYYYYYYYYY\xff\xff\xff\xff\xff\xff\xff\xffYYYYYYYYYYYYYY4.7|25|\r\nCPSRT 192,0,2,10,0,22\r\n0 2CEPSV x\nA\x00\x00\x00K\x00 annJYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYIYYYYYYYY\xff\xff\xff\xff\r\nS\xff\xff\xff\x7f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff192,0,2,10,156,64S sS220 ready\r\nCUSER aw\r\net\r\nS230 ok\xff\xf2ABOR\r\nok\r\nc\x1b\xff\xfb\x01\xff\xfd\x03rER aw\r\net\r\nS230 ok\r\nc\x1b\xff\xfb\x01\xff\xfd\x03rETR a\xff\xffb\r\n\xff\xf4\xff\xf2ABOR\r\nC:BOR\r\n\nTR a\xff\xffb\r\n\xff\xf4\xff\xf2ABOR\r\nC:BOR\r\n\n\nTR a\xff\xffb\xff\xff\xff\xff\xff\xff\xff\xff\xffYYYYYYYYYYSTOUYYYYYYYYYYYYYYYYYYYYYYYYYY\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff165 p\xff\xff\xff\xff\xffYYYYYYYYYYYYYY1.7|25|\r\nCPSRT 192,0,2,10,0,22\r\n0 2CEPSV x\nA\x00\x00\x00K\x00 annJYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY\xff\xff\xff\xff\r\nS\xff\xff\xff\x7f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff165 pw\r\nCPASS secret\r\r\nA\x00K\x00R\x00\x00@S113 store\xff\xff\xff\xff\xff\xffRw\r\nCPASS secret\r\r\nA anna\r\nS331 p\x00K\x00R\x00\x00@S113 store\xff\xff\xffw\r\nCPA\xff\xff\xffSS se\xff\xff\xffdcret\r\nS230 ok\r\n')

for target, files in seeds.items():
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
