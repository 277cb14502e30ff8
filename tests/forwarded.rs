//! Routed traffic is never ftpgate's, even on the ports of its listeners.
//!
//! On a router (`--profile port21`, the default) everything but FTP is
//! forwarded. In active mode ftpgate listens on the client's address at a
//! port the kernel picks, which can be the source port of one of the
//! client's routed connections. The divert rule finds a transparent
//! socket for that connection's returning segments (the listener), so
//! before the forward mark (`ftpgate rules --forward-mark`) they went to
//! the listener, whose TCP answered them with a reset: a connection that
//! had nothing to do with FTP was cut by the gateway.
//!
//! Here the gateway namespace's ephemeral ports are pinned to four, the
//! client holds a routed connection from each of them to an echo service
//! on the server and keeps them busy, and active downloads run meanwhile.
//! Every transfer's listener is then on the port of a live routed flow
//! (checked from the transfer records), and every flow must survive.
//!
//! The control listener is bound to the wildcard address, so the socket
//! lookup finds it for a new connection to *any* address at its port. The
//! xt socket match ignores wildcard sockets by itself; nft's did not, and
//! ftpgate took every routed connection to port 2121 (an alternate FTP
//! port) and answered it with a 421. Routed connections to an echo
//! service on the server's port 2121 must reach it.
mod common;
use common::*;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PORTS: [u16; 4] = [40000, 40001, 40002, 40003];
const ECHO_PORT: u16 = 9999;

/// Loads `ftpgate rules --profile port21` in `rules`' form in place of the
/// lab's strict set: non-FTP traffic is routed, as on a real router.
fn load_router_profile(lab: &Lab, rules: Rules) {
    let bin = gateway_bin();
    let iptables = if rules == Rules::Iptables { " --iptables" } else { "" };
    let load = if rules == Rules::Iptables { "sh" } else { "nft -f -" };
    let cmd = format!(
        "{} --listen 0.0.0.0:{GW_PORT} --listen '[::]:{GW_PORT}' rules --profile port21 --client-interface gw-c{iptables} | {load}",
        bin.display()
    );
    let out = lab.exec(Ns::Gateway, 30, &["sh", "-c", &cmd]);
    assert!(out.status.success(), "loading the port21 profile: {}{}", text(&out.stdout), text(&out.stderr));
}

fn spawn_in(lab: &Lab, ns: Ns, args: &[&str], stdout: Stdio, err_name: &str) -> Child {
    let stderr = fs::File::create(lab.run.join(err_name)).unwrap();
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(ns), "python3"])
        .arg(repo_root().join("lab/routed_flows.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn lab/routed_flows.py")
}

/// The echo service on `server_ip`:`port` in the server namespace, for
/// `lifetime` seconds; returns it once it listens, and its address.
fn start_echo(lab: &Lab, server_ip: &str, port: u16, lifetime: &str) -> (Child, String) {
    let listen = format!("{}:{port}", url_host(server_ip));
    let echo = spawn_in(
        lab,
        Ns::Server,
        &["echo", "--listen", &listen, "--lifetime", lifetime],
        Stdio::null(),
        "echo.err",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&lab.exec(Ns::Server, 5, &["ss", "-Hltn"]).stdout).contains(&format!(":{port}")) {
        assert!(Instant::now() < deadline, "echo service did not listen on {listen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (echo, listen)
}

/// Waits (bounded) until `file` holds `what`.
fn wait_for_text(file: &std::path::Path, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !fs::read_to_string(file).unwrap_or_default().contains(what) {
        assert!(Instant::now() < deadline, "{} did not say {what:?} within {secs} s", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn routed_flows_survive_active_listeners(tag: &str, rules: Rules, v6: bool) {
    let (client_ip, server_ip, mode) =
        if v6 { (CLIENT_IP6, SERVER_IP6, Mode::Eprt) } else { (CLIENT_IP, SERVER_IP, Mode::Port) };
    let mut lab = Lab::new(tag, rules);
    load_router_profile(&lab, rules);
    // One range for both families (net.ipv4.ip_local_port_range).
    let range = format!("net.ipv4.ip_local_port_range={} {}", PORTS[0], PORTS[PORTS.len() - 1]);
    let out = lab.exec(Ns::Gateway, 10, &["sysctl", "-qw", &range]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &[]);

    let (echo, listen) = start_echo(&lab, server_ip, ECHO_PORT, "60");
    let ports = PORTS.map(|p| p.to_string()).join(",");
    let flows = spawn_in(
        &lab,
        Ns::Client,
        &["flows", "--server", &listen, "--source", client_ip, "--ports", &ports, "--seconds", "12"],
        Stdio::piped(),
        "flows.err",
    );
    wait_for_text(&lab.run.join("flows.err"), "up", 10);

    let files: Vec<(String, std::path::PathBuf)> = (0..6)
        .map(|i| {
            let name = format!("{tag}{i}.bin");
            let path = lab.server_file(&name, 256 * 1024 + i);
            (name, path)
        })
        .collect();
    for (name, _) in &files {
        curl_get_at(&lab, server_ip, mode, name, &lab.client_path(name));
    }

    let out = flows.wait_with_output().expect("flows");
    stop_child(echo);
    let report = text(&out.stdout);
    assert!(report.contains("\"broken\": {}"), "a routed flow was cut: {report}\n{}", lab.diagnostics());
    let rounds: u64 = json_raw(&report, "rounds").and_then(|r| r.parse().ok()).unwrap_or(0);
    assert!(rounds > 100, "the routed flows hardly ran: {report}");

    for (name, src) in &files {
        assert_same_file(name, src, &lab.client_dir().join(name));
        lab.assert_transfer(TransferMode::Active, "RETR", name, fs::metadata(src).unwrap().len());
    }
    // The test proves something only if the listeners sat on the ports of
    // the live flows: each transfer's server-side leg came to one.
    let records = lab.transfer_records();
    assert_eq!(records.len(), files.len(), "{}", lab.gateway_log());
    for r in &records {
        let local = r.get("server_data_local").unwrap_or("-");
        let port: u16 = local.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!(PORTS.contains(&port), "listener at {local}, not on a routed flow's port");
        assert!(local.contains(client_ip), "listener at {local}, not on the client's address");
    }
    let seen = lab.server_seen_clients();
    assert!(seen.len() >= files.len() && seen.iter().all(|a| a == client_ip), "vsftpd saw {seen:?}");
    lab.stop_gateway();
}

#[test]
fn routed_flows_survive_active_listeners_on_their_ports_nft() {
    routed_flows_survive_active_listeners("fwdnft", Rules::Nft, false);
}

#[test]
fn routed_flows_survive_active_listeners_on_their_ports_iptables() {
    routed_flows_survive_active_listeners("fwdipt", Rules::Iptables, false);
}

#[test]
fn routed_flows_survive_active_listeners_on_their_ports_ipv6() {
    routed_flows_survive_active_listeners("fwdv6", Rules::Nft, true);
}

/// Routed connections to the server's port `GW_PORT` reach the server.
fn routed_flows_to_the_control_port_pass(tag: &str, rules: Rules, v6: bool) {
    let (client_ip, server_ip) = if v6 { (CLIENT_IP6, SERVER_IP6) } else { (CLIENT_IP, SERVER_IP) };
    let mut lab = Lab::new(tag, rules);
    load_router_profile(&lab, rules);
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &[]);
    let (echo, listen) = start_echo(&lab, server_ip, GW_PORT, "30");
    let out = lab.exec(
        Ns::Client,
        30,
        &[
            "python3",
            repo_root().join("lab/routed_flows.py").to_str().unwrap(),
            "flows",
            "--server",
            &listen,
            "--source",
            client_ip,
            "--ports",
            "41000,41001",
            "--seconds",
            "2",
        ],
    );
    stop_child(echo);
    let report = text(&out.stdout);
    assert!(
        out.status.success() && report.contains("\"broken\": {}"),
        "a routed connection to port {GW_PORT} did not reach the server: {report}{}\n{}",
        text(&out.stderr),
        lab.diagnostics()
    );
    assert!(
        !lab.gateway_log().contains("not redirected by TPROXY"),
        "ftpgate took it:\n{}",
        lab.gateway_log()
    );
    lab.stop_gateway();
}

#[test]
fn routed_flows_to_the_control_port_pass_nft() {
    routed_flows_to_the_control_port_pass("fwcnft", Rules::Nft, false);
}

#[test]
fn routed_flows_to_the_control_port_pass_iptables() {
    routed_flows_to_the_control_port_pass("fwcipt", Rules::Iptables, false);
}

#[test]
fn routed_flows_to_the_control_port_pass_ipv6() {
    routed_flows_to_the_control_port_pass("fwcv6", Rules::Nft, true);
}
