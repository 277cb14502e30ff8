//! `--workers N` (issue 14): N event loops, each with its own TPROXY
//! listener on the same address (SO_REUSEPORT), the kernel spreading the
//! sessions. Each session and its data channels stay on one loop; the
//! table of foreign data listeners is the process's, so a data connection
//! accepted by one loop reaches a session of the other.
//!
//! Which loop gets a session is the kernel's choice (a hash of the
//! connection's addresses and ports), so the tests open sessions until
//! the case they need has happened, a bounded number of times: with two
//! loops each round has an even chance.
mod common;
use common::{
    curl_get, curl_put, json_raw, repo_root, text, Lab, Mode, Ns, Rules, ScriptedServer, CLIENT_IP, SERVER_IP,
};
use std::collections::BTreeSet;
use std::fs;

/// The one passive port the scripted server announces to every session.
const SHARED_PORT: u16 = 40123;
/// A second client host on the client's network.
const CLIENT_B_IP: &str = "192.0.2.20";
/// Sizes no buffer divides, different per session.
const SIZE_A: usize = 2 * 1024 * 1024 + 4_321;
const SIZE_B: usize = 3 * 1024 * 1024 + 777;
/// Rounds of two sessions until they land on different loops: each round
/// misses with probability 1/2, all of them with 1/4096.
const ROUNDS: usize = 12;

/// `key: value` of a text log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}: "))? + key.len() + 3;
    line[at..].split(',').next().map(str::trim)
}

/// (client address, session, worker) of every `session start` in `lines`.
fn session_starts(lines: &[&str]) -> Vec<(String, u64, u64)> {
    session_starts_by(lines, "client")
}

/// Like `session_starts`, with the address of the `side` key (client or
/// server).
fn session_starts_by(lines: &[&str], side: &str) -> Vec<(String, u64, u64)> {
    lines
        .iter()
        .filter(|l| l.contains("INFO session start"))
        .map(|l| {
            let addr = field(l, side).expect("address key");
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip).to_string();
            let session = field(l, "session").and_then(|s| s.parse().ok()).expect("session key");
            let worker =
                field(l, "worker").and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no worker: {l}"));
            (ip, session, worker)
        })
        .collect()
}

fn add_client_address(lab: &Lab, ip: &str) {
    let out = lab.exec(Ns::Client, 10, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    assert!(out.status.success(), "add {ip}: {}", text(&out.stderr));
}

fn gateway_threads(lab: &Lab) -> usize {
    let pidfile = fs::read_to_string(lab.run.join("ftpgate.pid")).unwrap();
    let pid = pidfile.split_whitespace().next().unwrap();
    fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// Two sessions (client A, client B) against a server that announces
/// SHARED_PORT to both, each downloading its file through the one shared
/// data listener. Returns the gateway log lines the round added.
fn shared_port_round(lab: &Lab) -> Vec<String> {
    let before = lab.gateway_log().lines().count();
    let script = repo_root().join("lab/shared_port_clients.py");
    let specs = [
        format!("{CLIENT_IP}:pub/a.bin:{}", lab.client_path("a.bin")),
        format!("{CLIENT_B_IP}:pub/b.bin:{}", lab.client_path("b.bin")),
    ];
    let out = lab.client_ok(150, &["python3", script.to_str().unwrap(), &specs[0], &specs[1]]);
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "one report per session: {report}\n{}", lab.diagnostics());
    for (line, (name, size)) in lines.iter().zip([("a.bin", SIZE_A), ("b.bin", SIZE_B)]) {
        assert_eq!(json_raw(line, "error").as_deref(), Some("null"), "{name}: {line}\n{}", lab.diagnostics());
        assert!(json_raw(line, "final").is_some_and(|f| f.starts_with("226")), "{name}: {line}");
        assert_eq!(json_raw(line, "bytes").and_then(|b| b.parse().ok()), Some(size), "{name}: {line}");
        common::assert_same_file(name, &lab.pub_dir().join(name), &lab.client_dir().join(name));
    }
    lab.assert_no_data_listeners();
    lab.gateway_log().lines().skip(before).map(str::to_string).collect()
}

/// The transfer record of `path` in `lines`: ok, `bytes` to the client,
/// logged by `worker`.
fn assert_ok_record(lines: &[&str], path: &str, bytes: usize, worker: u64) {
    let record = lines
        .iter()
        .find(|l| l.contains("INFO transfer") && l.contains(&format!("path: {path},")))
        .unwrap_or_else(|| panic!("no transfer record of {path}:\n{}", lines.join("\n")));
    assert_eq!(field(record, "result"), Some("ok"), "{record}");
    assert_eq!(field(record, "to_client"), Some(bytes.to_string().as_str()), "{record}");
    assert_eq!(field(record, "worker"), Some(worker.to_string().as_str()), "{record}");
}

#[test]
fn two_workers_shared_passive_port_hands_the_connection_to_the_other_loop() {
    let mut lab = Lab::new("wkshare", Rules::Nft);
    add_client_address(&lab, CLIENT_B_IP);
    lab.start_gateway(&["--workers", "2"]);
    let _server = ScriptedServer::start(&lab, &["--pasv-port", &SHARED_PORT.to_string()]);
    lab.server_file("a.bin", SIZE_A);
    lab.server_file("b.bin", SIZE_B);
    let mut rounds_on_one_loop = 0;
    for _ in 0..ROUNDS {
        let lines = shared_port_round(&lab);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let starts = session_starts(&lines);
        assert_eq!(starts.len(), 2, "{starts:?}");
        let worker_of = |ip: &str| {
            starts.iter().find(|s| s.0 == ip).map(|s| s.2).unwrap_or_else(|| panic!("no session of {ip}"))
        };
        let (wa, wb) = (worker_of(CLIENT_IP), worker_of(CLIENT_B_IP));
        assert_ok_record(&lines, "pub/a.bin", SIZE_A, wa);
        assert_ok_record(&lines, "pub/b.bin", SIZE_B, wb);
        assert!(
            lines.iter().any(|l| l.contains("data listener shared") && l.contains("sessions: 2")),
            "the two sessions did not share one listener:\n{}",
            lines.join("\n")
        );
        assert!(!lines.iter().any(|l| l.contains("data address rewritten")), "{}", lines.join("\n"));
        let shared = lines.iter().find(|l| l.contains("data listener shared")).unwrap();
        if !crossed_loops(&lines, shared, wa, wb) {
            rounds_on_one_loop += 1;
            continue;
        }
        return;
    }
    panic!("in {ROUNDS} rounds the two sessions were always on one loop ({rounds_on_one_loop})");
}

/// A second FTP server, in the server namespace.
const SERVER_B_IP: &str = "198.51.100.11";

/// Two active-mode sessions from the client address, one to each server,
/// both announcing the same client port: each gets a data listener of its
/// own on the client's address, at a port of the gateway's (never a shared
/// one), and its server is told that port.
fn same_active_port_round(lab: &Lab, port: u16) -> Vec<String> {
    let before = lab.gateway_log().lines().count();
    let script = repo_root().join("lab/shared_active_clients.py");
    let specs = [
        format!("{SERVER_IP}:pub/a.bin:{}", lab.client_path("a.bin")),
        format!("{SERVER_B_IP}:pub/b.bin:{}", lab.client_path("b.bin")),
    ];
    let port = port.to_string();
    let argv =
        ["python3", script.to_str().unwrap(), "--src", CLIENT_IP, "--port", &port, &specs[0], &specs[1]];
    let out = lab.client_ok(150, &argv);
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "one report per session: {report}\n{}", lab.diagnostics());
    for (line, (name, size)) in lines.iter().zip([("a.bin", SIZE_A), ("b.bin", SIZE_B)]) {
        assert_eq!(json_raw(line, "error").as_deref(), Some("null"), "{name}: {line}\n{}", lab.diagnostics());
        assert!(json_raw(line, "port_reply").is_some_and(|f| f.starts_with("200")), "{name}: {line}");
        assert!(json_raw(line, "final").is_some_and(|f| f.starts_with("226")), "{name}: {line}");
        assert_eq!(json_raw(line, "bytes").and_then(|b| b.parse().ok()), Some(size), "{name}: {line}");
        common::assert_same_file(name, &lab.pub_dir().join(name), &lab.client_dir().join(name));
    }
    lab.assert_no_data_listeners();
    lab.gateway_log().lines().skip(before).map(str::to_string).collect()
}

#[test]
fn two_workers_same_active_port_each_session_its_own_listener_on_its_own_loop() {
    let mut lab = Lab::new("wkactive", Rules::Nft);
    let out = lab.exec(Ns::Server, 10, &["ip", "addr", "add", &format!("{SERVER_B_IP}/24"), "dev", "eth0"]);
    assert!(out.status.success(), "add {SERVER_B_IP}: {}", text(&out.stderr));
    lab.start_gateway(&["--workers", "2"]);
    let _server_a = ScriptedServer::start(&lab, &[]);
    let _server_b = ScriptedServer::start_at(&lab, SERVER_B_IP, &[]);
    lab.server_file("a.bin", SIZE_A);
    lab.server_file("b.bin", SIZE_B);
    let mut rounds_on_one_loop = 0;
    for round in 0..ROUNDS as u16 {
        // A port per round: no 4-tuple of an earlier round's data
        // connections (and their TIME_WAIT) comes back.
        let lines = same_active_port_round(&lab, 40200 + round);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let starts = session_starts_by(&lines, "server");
        assert_eq!(starts.len(), 2, "{starts:?}");
        let worker_of = |ip: &str| starts.iter().find(|s| s.0 == ip).map(|s| s.2).unwrap();
        let (wa, wb) = (worker_of(SERVER_IP), worker_of(SERVER_B_IP));
        assert_ok_record(&lines, "pub/a.bin", SIZE_A, wa);
        assert_ok_record(&lines, "pub/b.bin", SIZE_B, wb);
        for never in [
            "data listener shared",
            "data connection passed to its session's event loop",
            "data address rewritten",
        ] {
            assert!(!lines.iter().any(|l| l.contains(never)), "{never}:\n{}", lines.join("\n"));
        }
        if wa == wb {
            rounds_on_one_loop += 1;
            continue;
        }
        return;
    }
    panic!("in {ROUNDS} rounds the two sessions were always on one loop ({rounds_on_one_loop})");
}

#[test]
fn two_workers_both_loops_carry_sessions_passive_and_active() {
    let mut lab = Lab::new("wkboth", Rules::Nft);
    lab.start_gateway(&["--workers", "2"]);
    assert_eq!(gateway_threads(&lab), 3, "the main thread and two loops");
    let sizes = [123_457usize, 344_679, 65_536 + 3];
    let modes = [Mode::Pasv, Mode::Port, Mode::Epsv, Mode::Eprt];
    // Sessions until each loop has carried a passive and an active one,
    // bounded: each session goes to either loop with an even chance.
    let mut seen: BTreeSet<(u64, bool)> = BTreeSet::new();
    for i in 0..40 {
        let mode = modes[i % modes.len()];
        let size = sizes[i % sizes.len()];
        let name = format!("f{i}.bin");
        lab.server_file(&name, size);
        let local = lab.client_path(&name);
        let before = lab.gateway_log().lines().count();
        if i % 2 == 0 {
            curl_get(&lab, mode, &name, &local);
            common::assert_same_file(&name, &lab.pub_dir().join(&name), &lab.client_dir().join(&name));
        } else {
            curl_get(&lab, mode, &name, &local);
            curl_put(&lab, mode, &local, &name);
            common::assert_same_file(&name, &lab.client_dir().join(&name), &lab.upload_dir().join(&name));
        }
        let log = lab.gateway_log();
        let lines: Vec<&str> = log.lines().skip(before).collect();
        let starts = session_starts(&lines);
        assert!(!starts.is_empty(), "{}", lines.join("\n"));
        for (_, session, worker) in &starts {
            assert!(*worker < 2, "worker {worker}");
            // Every record of the session names the same loop.
            for l in lines.iter().filter(|l| field(l, "session") == Some(session.to_string().as_str())) {
                assert_eq!(field(l, "worker"), Some(worker.to_string().as_str()), "{l}");
            }
        }
        let transfers: Vec<&&str> = lines.iter().filter(|l| l.contains("INFO transfer")).collect();
        assert_eq!(transfers.len(), if i % 2 == 0 { 1 } else { 2 }, "{}", lines.join("\n"));
        for t in &transfers {
            assert_eq!(field(t, "result"), Some("ok"), "{t}");
            let worker = field(t, "worker").and_then(|w| w.parse().ok()).expect("worker");
            seen.insert((worker, field(t, "mode") == Some("active")));
        }
        if seen.len() == 4 {
            lab.assert_no_data_listeners();
            return;
        }
    }
    panic!("after 40 sessions, not every loop carried both modes: {seen:?}");
}

#[test]
fn one_worker_is_one_loop_and_shares_a_port_within_it() {
    let mut lab = Lab::new("wkone", Rules::Nft);
    add_client_address(&lab, CLIENT_B_IP);
    lab.start_gateway(&["--workers", "1"]);
    assert_eq!(gateway_threads(&lab), 2, "the main thread and one loop");
    let log = lab.gateway_log();
    assert!(log.lines().any(|l| l.contains("INFO limits") && field(l, "workers") == Some("1")), "{log}");
    let listeners = lab.listeners();
    assert_eq!(listeners.iter().filter(|l| l.ends_with(":2121")).count(), 1, "{listeners:?}");
    lab.server_file("a.bin", SIZE_A);
    lab.server_file("b.bin", SIZE_B);
    // vsftpd first, in active mode; then the scripted server takes its place.
    curl_get(&lab, Mode::Port, "a.bin", &lab.client_path("a2.bin"));
    common::assert_same_file("a.bin", &lab.pub_dir().join("a.bin"), &lab.client_dir().join("a2.bin"));
    let _server = ScriptedServer::start(&lab, &["--pasv-port", &SHARED_PORT.to_string()]);
    let lines = shared_port_round(&lab);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let starts = session_starts(&lines);
    assert_eq!(starts.iter().map(|s| s.2).collect::<Vec<_>>(), [0, 0], "{starts:?}");
    assert_ok_record(&lines, "pub/a.bin", SIZE_A, 0);
    assert_ok_record(&lines, "pub/b.bin", SIZE_B, 0);
    assert!(lines.iter().any(|l| l.contains("data listener shared") && l.contains("sessions: 2")));
    assert!(!lines.iter().any(|l| l.contains("passed to its session's event loop")), "{}", lines.join("\n"));
}

#[test]
fn two_workers_listen_twice_on_each_address() {
    let mut lab = Lab::new("wklisten", Rules::Nft);
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &["--workers", "2"]);
    let listeners = lab.listeners();
    for addr in ["0.0.0.0:2121", "[::]:2121"] {
        assert_eq!(listeners.iter().filter(|l| *l == addr).count(), 2, "{addr}: {listeners:?}");
    }
    let log = lab.gateway_log();
    assert_eq!(log.matches("INFO listening").count(), 2, "one record per address\n{log}");
    let name = "v.bin";
    lab.server_file(name, 77_777);
    curl_get(&lab, Mode::Epsv, name, &lab.client_path(name));
    common::assert_same_file(name, &lab.pub_dir().join(name), &lab.client_dir().join(name));
}

/// Two sessions (on loops `wa` and `wb`) that shared the data listener of
/// the record `shared`. On one loop nothing may cross (false). On two, the
/// listener is on the loop of the first to expect a connection, which
/// accepted both connections and passed the other session's to its loop:
/// exactly one crossing, from the accepting loop (true).
fn crossed_loops(lines: &[&str], shared: &str, wa: u64, wb: u64) -> bool {
    let passed: Vec<&&str> =
        lines.iter().filter(|l| l.contains("data connection passed to its session's event loop")).collect();
    if wa == wb {
        assert!(passed.is_empty(), "{passed:?}");
        return false;
    }
    assert_eq!(passed.len(), 1, "one connection crossed loops:\n{}", lines.join("\n"));
    let to = field(passed[0], "to_worker").and_then(|w| w.parse::<u64>().ok()).expect("to_worker");
    let from = field(passed[0], "worker").and_then(|w| w.parse::<u64>().ok()).expect("worker");
    assert_ne!(to, from, "{}", passed[0]);
    assert!([wa, wb].contains(&to) && [wa, wb].contains(&from), "{}", passed[0]);
    assert_eq!(field(shared, "accepting_worker"), Some(from.to_string().as_str()), "{shared}");
    true
}
