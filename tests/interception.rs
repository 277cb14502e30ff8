//! Interception itself, and the lab as a strict firewall: the lab without
//! rules routes FTP and any other TCP plainly (baseline); with the TPROXY
//! rules but no ftpgate running, the control connection must not reach the
//! server (it is diverted to the gateway's port, where nobody listens), and
//! neither does a connection to a data port, in either direction: nothing is
//! forwarded. Once ftpgate runs, the FTP request succeeds through it, and a
//! data port it did not open is still closed. Both rule sets.
mod common;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{text, Lab, Ns, Rules, CLIENT_IP, SERVER_IP};

const HELLO: &str = "hello from the ftpgate lab server\n";

fn fetch_hello(lab: &Lab) -> std::process::Output {
    let url = format!("ftp://{SERVER_IP}/pub/hello.txt");
    lab.exec(Ns::Client, 30, &["curl", "-sS", "--connect-timeout", "3", "--max-time", "15", &url])
}

/// Listens on ADDR:PORT for WINDOW seconds, prints "listening" once bound
/// and "accepted IP:PORT" for the first connection, then exits.
const LISTENER: &str = r#"
import socket, sys, time
ip, port, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(8)
print("listening", flush=True)
end = time.monotonic() + window
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        c, peer = s.accept()
    except socket.timeout:
        break
    print("accepted %s:%d" % peer, flush=True)
    c.close()
    break
"#;

const CONNECT: &str = r#"
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
print("connected")
"#;

/// What a plain TCP connection from namespace `from` to a listener on
/// `ip:port` in namespace `to` did: (the connecting side succeeded, what the
/// listening side reported). The listener is bounded (its window, and
/// timeout(1) around it).
fn tcp_probe(lab: &Lab, from: Ns, to: Ns, ip: &str, port: u16) -> (bool, String) {
    let mut listener = Command::new("timeout")
        .args(["-k", "2", "15", "ip", "netns", "exec", &lab.ns(to), "python3", "-c", LISTENER, ip])
        .arg(port.to_string())
        .arg("5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the probe listener");
    let mut out = BufReader::new(listener.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "listening", "probe listener on {ip}:{port} did not start");
    let client = lab.exec(from, 10, &["python3", "-c", CONNECT, ip, &port.to_string()]);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = listener.wait().unwrap();
    assert!(status.success(), "probe listener on {ip}:{port}: {status}");
    (client.status.success(), rest)
}

/// Data ports in both directions: a passive-style connection from the
/// client to the server, an active-style one from the server to the client.
/// Neither is an FTP control connection, so only plain forwarding could
/// carry it.
fn data_ports_forwarded(lab: &Lab) -> [(String, bool, String); 2] {
    let (c2s, saw_c2s) = tcp_probe(lab, Ns::Client, Ns::Server, SERVER_IP, 40000);
    let (s2c, saw_s2c) = tcp_probe(lab, Ns::Server, Ns::Client, CLIENT_IP, 40001);
    [
        (format!("client -> {SERVER_IP}:40000"), c2s, saw_c2s),
        (format!("server -> {CLIENT_IP}:40001"), s2c, saw_s2c),
    ]
}

#[test]
fn plain_routing_baseline() {
    let lab = Lab::new("base", Rules::None);
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "plain routing through the lab failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), HELLO);
    lab.assert_server_saw_only_client(1);
    // the probe itself works: without rules, both data ports are reachable
    for (what, connected, saw) in data_ports_forwarded(&lab) {
        assert!(connected, "plain routing: {what} did not connect");
        assert!(saw.starts_with("accepted "), "plain routing: {what}: the listener saw {saw:?}");
    }
}

fn assert_nothing_forwarded(lab: &Lab, when: &str) {
    for (what, connected, saw) in data_ports_forwarded(lab) {
        assert!(
            !connected && saw.trim().is_empty(),
            "{:?} rules, {when}: {what} was forwarded (connected: {connected}, listener saw {saw:?})",
            lab.rules
        );
    }
}

fn intercepted_only_with_gateway(tag: &str, rules: Rules) {
    let mut lab = Lab::new(tag, rules);
    let out = fetch_hello(&lab);
    assert!(
        !out.status.success(),
        "with {rules:?} rules and no ftpgate the download must fail, got: {}",
        text(&out.stdout)
    );
    assert!(
        !lab.vsftpd_log().contains("CONNECT"),
        "the server was reached without the gateway:\n{}",
        lab.vsftpd_log()
    );
    assert_nothing_forwarded(&lab, "no ftpgate");
    lab.start_gateway(&[]);
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "via ftpgate: {}\n{}", text(&out.stderr), lab.diagnostics());
    assert_eq!(text(&out.stdout), HELLO);
    lab.assert_server_saw_only_client(1);
    lab.assert_transfer(common::TransferMode::Passive, "RETR", "hello.txt", HELLO.len() as u64);
    assert_nothing_forwarded(&lab, "ftpgate running");
}

#[test]
fn no_gateway_no_server_contact_nft() {
    intercepted_only_with_gateway("inft", Rules::Nft);
}

#[test]
fn no_gateway_no_server_contact_iptables() {
    intercepted_only_with_gateway("iipt", Rules::Iptables);
}

/// `rules del` leaves a clean namespace: plain routing again, and the
/// iptables form puts the FORWARD policy back to ACCEPT. (That `add` closes
/// the path is what the tests above show.)
#[test]
fn rules_del_restores_plain_routing() {
    let lab = Lab::new("rdel", Rules::Nft);
    lab.rules("del", Rules::Nft);
    let out = lab.exec(Ns::Gateway, 10, &["nft", "list", "tables"]);
    assert!(!text(&out.stdout).contains("ftpgate"), "nft table left: {}", text(&out.stdout));
    for (what, connected, saw) in data_ports_forwarded(&lab) {
        assert!(connected && saw.starts_with("accepted "), "after nft del: {what} not routed ({saw:?})");
    }
    lab.rules("add", Rules::Iptables);
    lab.rules("del", Rules::Iptables);
    for table in ["filter", "mangle"] {
        let out = lab.exec(Ns::Gateway, 10, &["iptables", "-t", table, "-S"]);
        let rules = text(&out.stdout);
        let left: Vec<&str> =
            rules.lines().filter(|l| !l.starts_with("-P ") || l.ends_with(" DROP")).collect();
        assert!(out.status.success() && left.is_empty(), "iptables -t {table} after del: {rules}");
    }
    for (what, connected, saw) in data_ports_forwarded(&lab) {
        assert!(connected && saw.starts_with("accepted "), "after iptables del: {what} not routed ({saw:?})");
    }
}

/// A control connection to a server that does not answer: the client gets a
/// bounded failure and the gateway keeps serving others.
#[test]
fn unreachable_server_fails_bounded() {
    let mut lab = Lab::new("unrch", Rules::Nft);
    lab.start_gateway(&["--connect-timeout", "2"]);
    // 198.51.100.99: on the server's link, but no host answers ARP
    let t0 = std::time::Instant::now();
    let out = lab.exec(
        Ns::Client,
        40,
        &["curl", "-sS", "--connect-timeout", "20", "--max-time", "30", "ftp://198.51.100.99/pub/hello.txt"],
    );
    assert!(!out.status.success(), "download from a missing host succeeded?");
    assert!(t0.elapsed().as_secs() < 35, "failure took {:?}", t0.elapsed());
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.gateway_log());
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "gateway no longer serves: {}\n{}", text(&out.stderr), lab.diagnostics());
    assert_eq!(text(&out.stdout), HELLO);
    lab.assert_transfer(common::TransferMode::Passive, "RETR", "hello.txt", HELLO.len() as u64);
}

/// Two control sessions from one source port, the second as soon as the
/// first is closed (as a client behind a NAT may): prints per session
/// "connect MS retransmits N replies 220/221". The server closes first
/// after QUIT, so ftpgate holds its client leg in TIME_WAIT.
const REUSE: &str = r#"
import socket, struct, sys, time
client, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(2):
    for attempt in range(200):  # until the first session's socket is gone
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((client, port))
        s.settimeout(10)
        t0 = time.monotonic()
        try:
            s.connect((server, 21))
            break
        except OSError as e:
            s.close()
            if e.errno != 99 or attempt == 199:
                raise
            time.sleep(0.005)
    ms = (time.monotonic() - t0) * 1e3
    # struct tcp_info: tcpi_total_retrans at offset 100 (SYNs included)
    retrans = struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 100)[0]
    f = s.makefile("rb")
    banner = f.readline()
    s.sendall(b"QUIT\r\n")
    bye = f.readline()
    f.read()
    f.close()
    s.close()
    print("session %d connect %.1f retransmits %d replies %s/%s"
          % (i, ms, retrans, banner[:3].decode(), bye[:3].decode()), flush=True)
"#;

/// The TPROXY rule comes before the divert rule: a SYN that reuses the
/// 4-tuple of a connection ftpgate holds in TIME_WAIT goes to the listener.
/// With the divert rule first the TIME_WAIT socket answered it with an ACK,
/// and every such reuse cost the client a SYN retransmission (10 ms here).
fn source_port_reused_at_once(tag: &str, rules: Rules, port: &str) {
    let mut lab = Lab::new(tag, rules);
    lab.start_gateway(&[]);
    let out = lab.exec(Ns::Client, 30, &["python3", "-c", REUSE, CLIENT_IP, SERVER_IP, port]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}\n{}", text(&out.stderr), lab.diagnostics());
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "{report}");
    for line in lines {
        assert!(line.ends_with("retransmits 0 replies 220/221"), "with {rules:?} rules: {line}");
    }
    let gw = lab.exec(Ns::Gateway, 10, &["ss", "-tan", "state", "time-wait", "sport", "=", ":21"]);
    assert!(
        text(&gw.stdout).contains(&format!("{CLIENT_IP}:{port}")),
        "ftpgate should hold the first session's client leg in TIME_WAIT (else this proves nothing): {}",
        text(&gw.stdout)
    );
    lab.assert_server_saw_only_client(2);
}

#[test]
fn source_port_reused_at_once_nft() {
    source_port_reused_at_once("reusen", Rules::Nft, "41234");
}

#[test]
fn source_port_reused_at_once_iptables() {
    source_port_reused_at_once("reusei", Rules::Iptables, "41236");
}
