//! The firewall half of ftpgate, through the real daemon and vsftpd
//! (lab/hostile_client.py plays the hostile client):
//! - a PORT/EPRT naming a third host or a privileged port of the client, an
//!   unknown EPRT family and LPRT are answered by the gateway itself and never
//!   reach the server, and the session goes on (ATTACKS.md 1, 2, 4, 29);
//! - a connection to a passive data port from another address is refused
//!   while the real client's transfer still works (ATTACKS.md 5);
//! - a data listener nobody connects to closes after --data-timeout while
//!   its session stays open (ATTACKS.md 23);
//! - ABOR sent as urgent data mid-RETR: the transfer's 426, then the ABOR's
//!   own reply, in order, and the session goes on (passive and active);
//! - an unreachable server, or the gateway's own address, gets the client a
//!   clean 421 (ATTACKS.md 32); a server that refuses the connection (a
//!   reset) gets the client a reset and no reply in the server's name.
mod common;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, text, Lab, Ns, Rules, ScriptedServer, TransferMode, SERVER_IP};

fn hostile(lab: &Lab, args: &[&str]) -> String {
    common::hostile_client(lab, 60, args)
}

#[test]
fn bounce_and_protocol_abuse_refused_by_the_gateway() {
    let lab = Lab::with_gateway("bounce", Rules::Nft);
    let report = hostile(&lab, &["bounce"]);
    for (key, code) in [
        ("port_third_host", "501"),
        ("eprt_third_host", "501"),
        ("port_privileged", "501"),
        ("eprt_family_3", "522"),
        ("lprt", "502"),
        ("noop_after", "200"),
    ] {
        let needle = format!("\"{key}\": \"{code}");
        assert!(report.contains(&needle), "{key} should get {code}: {report}\n{}", lab.diagnostics());
    }
    let server_log = lab.vsftpd_log();
    for verb in ["PORT", "EPRT", "LPRT"] {
        assert!(!server_log.contains(&format!("\"{verb} ")), "{verb} reached the server:\n{server_log}");
    }
    let log = lab.gateway_log();
    assert!(log.contains("refused"), "no refusal logged:\n{log}");
}

#[test]
fn passive_port_thief_refused_transfer_still_works() {
    let lab = Lab::with_gateway("theft", Rules::Iptables);
    lab.server_file("loot.bin", 300_000);
    // a second host on the client's network
    let out = lab.exec(Ns::Client, 10, &["ip", "addr", "add", "192.0.2.20/24", "dev", "eth0"]);
    assert!(out.status.success(), "add thief address: {}", text(&out.stderr));
    let report = hostile(&lab, &["theft", "pub/loot.bin"]);
    assert!(report.contains("\"thief_closed\": true"), "thief got a connection: {report}");
    assert!(
        report.contains("\"retr_final\": \"226"),
        "real transfer failed: {report}\n{}",
        lab.diagnostics()
    );
    assert!(report.contains("\"bytes\": 300000"), "wrong byte count: {report}");
    lab.assert_transfer(TransferMode::Passive, "RETR", "loot.bin", 300_000);
    let log = lab.gateway_log();
    assert!(log.contains("data peer refused") && log.contains("192.0.2.20"), "theft not logged:\n{log}");
    assert!(
        lab.server_transfer_clients().iter().all(|c| c == common::CLIENT_IP),
        "server saw another client: {:?}",
        lab.server_transfer_clients()
    );
}

#[test]
fn unused_data_listener_closes_after_data_timeout() {
    let mut lab = Lab::new("linger", Rules::Nft);
    lab.start_gateway(&["--data-timeout", "2"]);
    let script = repo_root().join("lab/hostile_client.py");
    let mut child = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &lab.ns(Ns::Client), "python3"])
        .arg(&script)
        .args(["linger", "6"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hostile client");
    let mut first = String::new();
    // Kept until the client exits: closing the pipe would fail its last print.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let port = first
        .split("\"port\": ")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches('}').parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no PASV port in {first:?}"));
    let data_listener = format!("{SERVER_IP}:{port}");
    assert!(
        lab.listeners().contains(&data_listener),
        "listener {data_listener} not up: {:?}",
        lab.listeners()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.listeners().contains(&data_listener) {
        assert!(Instant::now() < deadline, "listener {data_listener} outlived --data-timeout");
        std::thread::sleep(Duration::from_millis(200));
    }
    // the session itself is still open: the client is still sleeping
    assert!(child.try_wait().unwrap().is_none(), "client session ended early");
    let status = child.wait().unwrap();
    drop(stdout);
    assert!(status.success(), "hostile client failed: {status}");
    lab.assert_no_data_listeners();
}

fn abort_scenario(tag: &str, active: bool) {
    let lab = Lab::with_gateway(tag, Rules::Nft);
    lab.server_file("big.bin", 40_000_000);
    let report = hostile(&lab, &["abort", "pub/big.bin", if active { "active" } else { "passive" }]);
    assert!(report.contains("\"transfer_reply\": \"426"), "no 426 first: {report}\n{}", lab.diagnostics());
    assert!(
        report.contains("\"abor_reply\": \"225") || report.contains("\"abor_reply\": \"226"),
        "no ABOR reply after the 426: {report}"
    );
    assert!(report.contains("\"noop\": \"200"), "session did not go on: {report}");
    assert!(lab.vsftpd_log().contains("ABOR"), "the server never saw ABOR");
    lab.assert_transfer_result(TransferMode::of(!active), "RETR", "big.bin", "aborted", None);
    lab.assert_no_data_listeners();
}

#[test]
fn abor_mid_retr_passive_426_then_abor_reply() {
    abort_scenario("aborpas", false);
}

#[test]
fn abor_mid_retr_active_426_then_abor_reply() {
    abort_scenario("aboract", true);
}

#[test]
fn unreachable_server_and_gateway_itself_get_421() {
    let mut lab = Lab::new("c421", Rules::Nft);
    lab.start_gateway(&["--connect-timeout", "2"]);
    let report = hostile(&lab, &["greeting", "198.51.100.99"]);
    assert!(report.contains("\"greeting\": \"421"), "no 421 for an unreachable server: {report}");
    let report = hostile(&lab, &["greeting", common::GW_SERVER_IP]);
    assert!(report.contains("\"greeting\": \"421"), "no 421 for the gateway itself: {report}");
    assert!(lab.gateway_log().contains("the destination is the gateway itself"));
}

/// Routers beside keepalived often set `ip_nonlocal_bind`, with which a
/// bind to any address succeeds. ftpgate once told its own addresses by
/// such a bind, and then refused every session as "the gateway itself".
/// It now asks the routing table: the real server is served, the gateway's
/// own addresses (and 127/8's) are still refused, in both families.
#[test]
fn gateway_itself_found_with_ip_nonlocal_bind() {
    let mut lab = Lab::new("nonlocal", Rules::Nft);
    for key in ["net.ipv4.ip_nonlocal_bind=1", "net.ipv6.ip_nonlocal_bind=1"] {
        let out = lab.exec(Ns::Gateway, 10, &["sysctl", "-qw", key]);
        assert!(out.status.success(), "sysctl {key}: {}", text(&out.stderr));
    }
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &[]);
    for server in [SERVER_IP, common::SERVER_IP6] {
        let report = hostile(&lab, &["greeting", server]);
        assert!(report.contains("\"greeting\": \"220"), "the real server {server}: {report}");
    }
    for own in [common::GW_SERVER_IP, common::GW_CLIENT_IP, common::GW_SERVER_IP6] {
        let report = hostile(&lab, &["greeting", own]);
        assert!(report.contains("\"greeting\": \"421"), "the gateway's own {own}: {report}");
    }
    let log = lab.gateway_log();
    assert_eq!(log.matches("the destination is the gateway itself").count(), 3, "{log}");
}

/// A 227 the gateway once could not read went to the client as written,
/// unchecked: "(203, 0, 113, 5, p1, p2)" names a third host to a client
/// that reads blanks (sscanf does). Now the gateway reads it as leniently,
/// finds the address is not the server's and rewrites it to the plain
/// form; a 227 with no address in it gets 425 and a record.
fn passive_reply_through_the_gateway(tag: &str, pasv_text: &str) -> (Lab, String) {
    let mut lab = Lab::new(tag, Rules::Nft);
    let server = ScriptedServer::start(&lab, &["--pasv-text", pasv_text]);
    lab.start_gateway(&[]);
    let script = repo_root().join("lab/scripted_client.py");
    let argv = ["python3", script.to_str().unwrap(), "control", "half-close", "--lines", "PASV,QUIT"];
    let report = text(&lab.client_ok(60, &argv).stdout);
    drop(server);
    (lab, report)
}

#[test]
fn passive_reply_with_blanks_naming_a_third_host_is_read_and_rewritten() {
    let (lab, report) =
        passive_reply_through_the_gateway("pasvblank", "227 Entering Passive Mode (203, 0, 113, 5, PORT).");
    assert!(
        report.contains("227 Entering Passive Mode (198,51,100,10,"),
        "the third host's 227 was not rewritten to the server's address: {report}\n{}",
        lab.diagnostics()
    );
    assert!(!report.contains("203"), "{report}");
}

#[test]
fn passive_reply_without_an_address_gets_425() {
    let (lab, report) = passive_reply_through_the_gateway("pasvnone", "227 Logout.");
    assert!(report.contains("425 ftpgate: passive reply refused"), "{report}\n{}", lab.diagnostics());
    assert!(lab.gateway_log().contains("malformed reply"), "{}", lab.gateway_log());
}

/// Over a router a client whose server refuses port 21 gets a reset. The
/// gateway has already accepted the client's connection, so it passes the
/// server's reset on as one, and says nothing in the server's name.
#[test]
fn refused_server_connection_client_gets_a_reset() {
    let lab = Lab::with_gateway("refuse", Rules::Nft);
    // A second server address whose host refuses FTP with a reset (vsftpd
    // listens on every address, so the server's own firewall refuses).
    let refusing = "198.51.100.12";
    for argv in [
        &["ip", "addr", "add", "198.51.100.12/24", "dev", "eth0"][..],
        &["nft", "add table inet refuse"],
        &["nft", "add chain inet refuse input { type filter hook input priority 0 ; }"],
        &["nft", "add rule inet refuse input ip daddr 198.51.100.12 tcp dport 21 reject with tcp reset"],
    ] {
        let out = lab.exec(Ns::Server, 10, argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
    }
    let report = hostile(&lab, &["greeting", refusing]);
    assert!(report.contains("\"reset\": true"), "no reset for a refused connection: {report}");
    assert!(!report.contains("\"greeting\""), "a reply the server never sent: {report}");
    let log = lab.gateway_log();
    assert!(log.contains("server refused the connection"), "no record of the refusal:\n{log}");
    // The gateway still serves the real server.
    let report = hostile(&lab, &["greeting", SERVER_IP]);
    assert!(report.contains("\"greeting\": \"220"), "then: {report}");
}

/// The same refusal as an ICMP port unreachable, what a firewall's REJECT
/// sends by default. The ICMP error is addressed to the client's address,
/// about ftpgate's connect from it: the divert must hand it to ftpgate's
/// socket (the socket match looks up the quoted header), whose connect
/// then fails at once, as the client's own would over a router. Before the
/// rule sets diverted ICMP, it was routed on (or dropped by the strict
/// profile), ftpgate waited out its 10 s connect timeout and the client
/// got a 421.
fn refused_by_icmp(tag: &str, rules: Rules, refusing: &str, prefix: &str, family: &str) {
    let mut lab = Lab::new(tag, rules);
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &[]);
    let rule = format!("add rule inet refuse input {family} daddr {refusing} tcp dport 21 reject");
    let addr = format!("{refusing}/{prefix}");
    for argv in [
        &["ip", "addr", "add", &addr, "dev", "eth0", "nodad"][..],
        &["nft", "add table inet refuse"],
        &["nft", "add chain inet refuse input { type filter hook input priority 0 ; }"],
        &["nft", &rule],
    ] {
        let argv: Vec<&str> = if argv[0] == "ip" && family == "ip" {
            argv.iter().copied().filter(|a| *a != "nodad").collect()
        } else {
            argv.to_vec()
        };
        let out = lab.exec(Ns::Server, 10, &argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
    }
    let report = hostile(&lab, &["greeting", refusing]);
    assert!(
        report.contains("\"reset\": true"),
        "no reset for a refused connection: {report}\n{}",
        lab.diagnostics()
    );
    assert!(!report.contains("\"greeting\""), "a reply the server never sent: {report}");
    let log = lab.gateway_log();
    assert!(log.contains("server refused the connection"), "no record of the refusal:\n{log}");
}

#[test]
fn refused_by_icmp_port_unreachable_client_gets_a_reset() {
    refused_by_icmp("icmp4", Rules::Nft, "198.51.100.12", "24", "ip");
    refused_by_icmp("icmp4x", Rules::Iptables, "198.51.100.12", "24", "ip");
}

#[test]
fn refused_by_icmpv6_port_unreachable_client_gets_a_reset() {
    refused_by_icmp("icmp6", Rules::Nft, "2001:db8:2::12", "64", "ip6");
    refused_by_icmp("icmp6x", Rules::Iptables, "2001:db8:2::12", "64", "ip6");
}
