//! The firewall policies of issue 12, through the real daemon
//! (lab/hostile_client.py plays the client):
//! - FEAT no longer advertises FTPS while AUTH is refused (ATTACKS.md 27);
//! - `--ftps pass-through`: after the server's 234 the control connection
//!   is relayed blind, byte for byte, and logged (ATTACKS.md 27);
//! - a first line that is not FTP (HTTP, a TLS ClientHello) gets 421 and
//!   never reaches the server; a flood of refused lines is closed at
//!   `--max-refused-lines` with one record (ATTACKS.md 10);
//! - a burst of failed logins puts the client in a cool-down: its next
//!   session gets 421 from the gateway (RFC 2577 §5, ATTACKS.md 33);
//! - in the JSON audit trail and the metrics, each of these is named by
//!   its rule and ATTACKS.md case (docs/audit.md).
mod common;
use std::fs;
use std::time::{Duration, Instant};

use common::{Lab, Ns, Rules, ScriptedServer, GW_CLIENT_IP};
use serde_json::{Map, Value};

fn hostile(lab: &Lab, args: &[&str]) -> String {
    common::hostile_client(lab, 90, args)
}

impl ScriptedServer {
    /// The server's report, waiting (bounded) until it contains `needle`.
    fn report_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = fs::read_to_string(&self.report).unwrap_or_default();
            if r.contains(needle) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn feat_hides_ftps_while_auth_is_refused() {
    let mut lab = Lab::new("feat", Rules::Nft);
    let _server = ScriptedServer::start(&lab, &["--ftps-echo"]);
    lab.start_gateway(&[]);
    let report = hostile(&lab, &["feat"]);
    // the server advertises AUTH TLS, PBSZ, PROT: none reaches the client,
    // the other features and the framing do
    assert!(
        report.contains(r#""feat": ["211-Features:", " EPSV", " EPRT", " PASV", " SIZE", "211 End"]"#),
        "FEAT: {report}\n{}",
        lab.diagnostics()
    );
    assert!(report.contains(r#""auth": "534"#), "AUTH TLS not refused: {report}");
    assert!(report.contains(r#""noop": "200"#), "session did not go on: {report}");
}

#[test]
fn ftps_pass_through_relays_the_control_connection_blind() {
    let mut lab = Lab::new("ftpspt", Rules::Nft);
    let server = ScriptedServer::start(&lab, &["--ftps-echo"]);
    lab.start_gateway(&["--ftps", "pass-through"]);
    let report = hostile(&lab, &["ftps"]);
    assert!(report.contains(r#""auth": "234"#), "no 234: {report}\n{}", lab.diagnostics());
    // CR/LF, 0xFF, NUL, a PORT and a 227 inside: all came back unchanged,
    // so nothing was parsed, escaped or acted on
    assert!(report.contains(r#""same": true"#), "not relayed byte for byte: {report}");
    assert!(report.contains(r#""closed_after_fin": true"#), "FIN not passed on: {report}");
    let echoed = server.report_with(r#""cmd": "AUTH""#);
    assert!(echoed.contains(r#""cmd": "AUTH", "end": "eof""#), "server side: {echoed}");
    let log = lab.gateway_log();
    assert!(log.contains("FTPS pass-through: control connection no longer parsed"), "{log}");
    assert!(log.contains("reason: pass-through ended"), "end of the blind relay not logged:\n{log}");
    assert!(!log.contains("data listen"), "a data listener was opened:\n{log}");
    lab.assert_no_data_listeners();
}

#[test]
fn first_line_not_ftp_gets_421_and_never_reaches_the_server() {
    let lab = Lab::with_gateway("junk", Rules::Nft);
    for kind in ["http", "tls"] {
        let report = hostile(&lab, &["junk", kind]);
        assert!(report.contains(r#""greeting": "220"#), "{kind}: {report}\n{}", lab.diagnostics());
        assert!(
            report.contains(r#""reply": "421 ftpgate: this is an FTP service; closing.\r\n""#),
            "{kind}: no 421: {report}"
        );
        assert!(report.contains(r#""closed": true"#), "{kind}: session not closed: {report}");
    }
    let server_log = lab.vsftpd_log();
    assert!(!server_log.contains("GET"), "the HTTP request reached the server:\n{server_log}");
    assert!(!server_log.contains("Host:"), "an HTTP header reached the server:\n{server_log}");
    let log = lab.gateway_log();
    assert!(log.contains("reason: not FTP: HTTP request"), "{log}");
    assert!(log.contains("reason: not FTP: binary"), "{log}");
}

#[test]
fn refused_line_flood_closed_with_one_record() {
    let mut lab = Lab::new("flood", Rules::Nft);
    lab.start_gateway(&["--max-refused-lines", "5"]);
    let report = hostile(&lab, &["flood", "50"]);
    let lpsv = r#""502 ftpgate: LPRT/LPSV not supported, use EPRT/EPSV.""#;
    assert_eq!(report.matches(lpsv).count(), 4, "four refusals, then the close: {report}");
    assert!(report.contains(r#""421 ftpgate: too many refused commands; closing.""#), "{report}");
    assert!(report.contains(r#""closed": true"#), "session not closed: {report}");
    let log = lab.gateway_log();
    let records: Vec<&str> = log.lines().filter(|l| l.contains("WARN refused lines")).collect();
    assert_eq!(records.len(), 1, "one record for the run:\n{log}");
    assert!(records[0].contains("count: 5") && records[0].contains("what: LPSV"), "{}", records[0]);
    assert!(!log.lines().any(|l| l.contains("refused, side")), "one record per line:\n{log}");
    assert!(records[0].contains("rules: lprt-lpsv:5"), "{}", records[0]);
    assert!(!lab.vsftpd_log().contains("LPSV"), "a refused line reached the server");

    // A run that mixes rules is still one record, and it names each rule
    // with its count, not only the first.
    let report = hostile(&lab, &["flood", "50", "mixed"]);
    assert!(report.contains(r#""500 Syntax error, command unrecognized.""#), "{report}");
    assert!(report.contains(r#""closed": true"#), "session not closed: {report}");
    let log = lab.gateway_log();
    let records: Vec<&str> = log.lines().filter(|l| l.contains("WARN refused lines")).collect();
    assert_eq!(records.len(), 2, "one record per run:\n{log}");
    assert!(records[1].contains("count: 5") && records[1].contains("rule: lprt-lpsv"), "{}", records[1]);
    assert!(records[1].contains("rules: lprt-lpsv:3,command-syntax:2"), "{}", records[1]);
}

#[test]
fn failed_login_burst_puts_the_client_in_a_cooldown() {
    let mut lab = Lab::new("logins", Rules::Nft);
    lab.start_gateway(&["--max-login-failures", "3", "--login-cooldown", "60"]);
    let report = hostile(&lab, &["badlogin", "3", "mallory"]);
    assert_eq!(report.matches(r#""530"#).count(), 3, "three 530 from the server: {report}");
    assert!(
        report.contains(r#""after": "421 ftpgate: too many failed logins from your address"#),
        "no cool-down: {report}\n{}",
        lab.diagnostics()
    );
    // a second refused session: refused again, still one record
    let report = hostile(&lab, &["badlogin", "1", "mallory"]);
    assert!(report.contains(r#""replies": ["421"#), "{report}");
    let log = lab.gateway_log();
    assert_eq!(log.matches("login failed").count(), 3, "{log}");
    assert_eq!(log.matches("failed logins: refusing new sessions").count(), 1, "{log}");
    let server_log = lab.vsftpd_log();
    assert_eq!(server_log.matches("USER mallory").count(), 3, "refused sessions reached the server");
}

/// An IPv6 client that tries each password from a fresh address of its
/// /64 is still one client: its fourth address finds the cool-down that
/// the failures from the first three started. Keyed by address, it never
/// cooled down. With `--ipv6-client-prefix 128` (a router whose clients
/// share a LAN /64) each address counts on its own.
fn failed_logins_across_an_ipv6_prefix(tag: &str, prefix: &str) -> (Lab, String) {
    let mut lab = Lab::new(tag, Rules::Nft);
    let hosts = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13", "2001:db8:1::14"];
    for host in hosts {
        let addr = format!("{host}/64");
        let out = lab.exec(Ns::Client, 10, &["ip", "addr", "add", &addr, "dev", "eth0", "nodad"]);
        assert!(out.status.success(), "ip addr add {addr}: {}", common::text(&out.stderr));
    }
    lab.start_gateway_on(
        &["[::]:2121"],
        &["--max-login-failures", "3", "--login-cooldown", "60", "--ipv6-client-prefix", prefix],
    );
    let sources = hosts.join(",");
    let report = hostile(&lab, &["badlogin", "3", "mallory", common::SERVER_IP6, &sources]);
    assert_eq!(report.matches(r#""530"#).count(), 3, "three 530 from the server: {report}");
    (lab, report)
}

#[test]
fn failed_logins_from_one_ipv6_prefix_share_a_cooldown() {
    let (lab, report) = failed_logins_across_an_ipv6_prefix("logins6", "64");
    assert!(
        report.contains(r#""after": "421 ftpgate: too many failed logins from your address"#),
        "the fourth address of the /64 was not cooling down: {report}\n{}",
        lab.diagnostics()
    );
    let log = lab.gateway_log();
    assert!(log.contains("counted_as: 2001:db8:1::/64"), "{log}");
    let server_log = lab.vsftpd_log();
    assert_eq!(server_log.matches("USER mallory").count(), 3, "refused sessions reached the server");
}

#[test]
fn failed_logins_counted_per_ipv6_address_with_prefix_128() {
    let (lab, report) = failed_logins_across_an_ipv6_prefix("logins128", "128");
    assert!(report.contains(r#""after": "220"#), "a neighbour of the LAN /64 was refused: {report}");
    assert!(!lab.gateway_log().contains("failed logins: refusing"), "{}", lab.gateway_log());
}

const METRICS: &str = "192.0.2.1:9122";

fn scrape(lab: &Lab) -> String {
    common::scrape_metrics(lab, METRICS, 5)
}

/// The value of `series` (labels as the gateway writes them), 0 when absent.
fn metric(scrape: &str, series: &str) -> f64 {
    common::metric_value(scrape, series).unwrap_or(0.0)
}

/// The records of ftpgate.log (JSON) whose `msg` is `msg`.
fn records(lab: &Lab, msg: &str) -> Vec<Map<String, Value>> {
    let log = lab.gateway_log();
    log.lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object ({other:?}): {l}\n{log}"),
        })
        .filter(|r| r.get("msg").and_then(Value::as_str) == Some(msg))
        .collect()
}

fn key<'a>(r: &'a Map<String, Value>, k: &str) -> &'a Value {
    r.get(k).unwrap_or_else(|| panic!("{k} missing in {r:?}"))
}

#[test]
fn junk_flood_and_login_cooldown_named_by_rule_in_json_and_metrics() {
    assert!(METRICS.starts_with(GW_CLIENT_IP));
    let mut lab = Lab::new("fwjson", Rules::Nft);
    lab.start_gateway(&[
        "--log-format",
        "json",
        "--metrics",
        METRICS,
        "--max-refused-lines",
        "5",
        "--max-login-failures",
        "2",
    ]);
    let before = scrape(&lab);
    hostile(&lab, &["junk", "http"]);
    hostile(&lab, &["flood", "50"]);
    let report = hostile(&lab, &["badlogin", "2", "mallory"]);
    assert!(report.contains(r#""after": "421 ftpgate: too many failed logins"#), "{report}");
    let after = scrape(&lab);
    let grew = |series: &str| metric(&after, series) - metric(&before, series);

    let not_ftp = records(&lab, "refused");
    let not_ftp: Vec<_> = not_ftp.iter().filter(|r| key(r, "rule") == "not-ftp").collect();
    assert_eq!(not_ftp.len(), 1, "{}", lab.gateway_log());
    assert_eq!(key(not_ftp[0], "attack"), "10");
    assert_eq!(key(not_ftp[0], "what"), "GET / HTTP/1.1");

    let run = records(&lab, "refused lines");
    assert_eq!(run.len(), 1, "{}", lab.gateway_log());
    assert_eq!(
        (key(&run[0], "rule"), key(&run[0], "attack")),
        (&Value::from("lprt-lpsv"), &Value::from("29"))
    );
    assert_eq!((key(&run[0], "count"), key(&run[0], "side")), (&Value::from(5), &Value::from("client")));

    let failed = records(&lab, "login failed");
    assert_eq!(failed.len(), 2, "{}", lab.gateway_log());
    assert!(failed.iter().all(|r| key(r, "user") == "mallory"), "{failed:?}");
    let cooldown = records(&lab, "failed logins: refusing new sessions from this client");
    assert_eq!(cooldown.len(), 1, "{}", lab.gateway_log());
    assert_eq!(
        (key(&cooldown[0], "rule"), key(&cooldown[0], "attack"), key(&cooldown[0], "failures")),
        (&Value::from("login-cooldown"), &Value::from("33"), &Value::from(2))
    );

    assert_eq!(grew(r#"ftpgate_refusals_total{side="client",rule="not-ftp"}"#), 1.0, "{after}");
    assert_eq!(grew(r#"ftpgate_refusals_total{side="client",rule="lprt-lpsv"}"#), 5.0, "{after}");
    assert_eq!(grew("ftpgate_login_failures_total"), 2.0, "{after}");
    assert_eq!(grew(r#"ftpgate_sessions_refused_total{rule="login-cooldown"}"#), 1.0, "{after}");
    assert_eq!(grew(r#"ftpgate_sessions_ended_total{reason="too many refused lines"}"#), 1.0, "{after}");
    assert_eq!(grew(r#"ftpgate_sessions_ended_total{reason="client is not speaking FTP"}"#), 1.0, "{after}");
}
