//! Interception itself: the lab without rules routes FTP plainly (baseline);
//! with the TPROXY rules but no ftpgate running, the control connection must
//! not reach the server (it is diverted to the gateway's port, where nobody
//! listens); once ftpgate runs, the same request succeeds. Both rule sets.
mod common;
use common::{text, Lab, Rules, SERVER_IP};

const HELLO: &str = "hello from the ftpgate lab server\n";

fn fetch_hello(lab: &Lab) -> std::process::Output {
    let url = format!("ftp://{SERVER_IP}/pub/hello.txt");
    lab.exec(common::Ns::Client, 30, &["curl", "-sS", "--connect-timeout", "3", "--max-time", "15", &url])
}

#[test]
fn plain_routing_baseline() {
    let lab = Lab::new("base", Rules::None);
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "plain routing through the lab failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), HELLO);
    lab.assert_server_saw_only_client(1);
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
    lab.start_gateway(&[]);
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "via ftpgate: {}\n{}", text(&out.stderr), lab.diagnostics());
    assert_eq!(text(&out.stdout), HELLO);
    lab.assert_server_saw_only_client(1);
}

#[test]
fn no_gateway_no_server_contact_nft() {
    intercepted_only_with_gateway("inft", Rules::Nft);
}

#[test]
fn no_gateway_no_server_contact_iptables() {
    intercepted_only_with_gateway("iipt", Rules::Iptables);
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
        common::Ns::Client,
        40,
        &["curl", "-sS", "--connect-timeout", "20", "--max-time", "30", "ftp://198.51.100.99/pub/hello.txt"],
    );
    assert!(!out.status.success(), "download from a missing host succeeded?");
    assert!(t0.elapsed().as_secs() < 35, "failure took {:?}", t0.elapsed());
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.gateway_log());
    let out = fetch_hello(&lab);
    assert!(out.status.success(), "gateway no longer serves: {}\n{}", text(&out.stderr), lab.diagnostics());
    assert_eq!(text(&out.stdout), HELLO);
}
