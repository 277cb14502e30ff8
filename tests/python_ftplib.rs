//! python ftplib through the gateway (lab/ftpclient.py), passive (PASV) and
//! active (PORT). The client records the peer of every data socket: in
//! active mode the accepted data connection must come from the server's own
//! address and port 20 (the gateway connects from a foreign address), in
//! passive mode the client is connected to the server's address.
mod common;
use common::{ftplib_session, pairs, Lab, RoundTrip, Rules, TransferMode, CLIENT_IP, SERVER_IP};

fn peers(report: &str) -> Vec<(String, u16)> {
    // tiny extraction of "peer": ["a.b.c.d", port] from the JSON report
    let mut v = Vec::new();
    let mut rest = report;
    while let Some(i) = rest.find("\"peer\": [\"") {
        rest = &rest[i + 10..];
        let j = rest.find('"').unwrap();
        let ip = rest[..j].to_string();
        rest = &rest[j + 3..];
        let k = rest.find(']').unwrap();
        let port: u16 = rest[..k].trim().parse().unwrap();
        v.push((ip, port));
    }
    v
}

fn ftplib_scenario(tag: &str, rules: Rules, passive: bool) {
    let lab = Lab::with_gateway(tag, rules);
    let rt = RoundTrip::prepare(&lab, tag, TransferMode::of(passive));
    let (gets, puts) = (rt.gets(&lab), rt.puts(&lab));
    let report = ftplib_session(&lab, passive, &pairs(&gets), &pairs(&puts));
    assert!(report.contains("\"ok\": true"), "ftplib failed: {report}\n{}", lab.diagnostics());
    rt.verify(&lab);
    let p = peers(&report);
    assert_eq!(p.len(), gets.len() + puts.len(), "data connections in {report}");
    for (ip, port) in &p {
        assert_eq!(ip, SERVER_IP, "client's data peer must be the server, not the gateway: {report}");
        if passive {
            assert!(
                (30000..=30100).contains(port),
                "passive data port {port} outside vsftpd's range: {report}"
            );
        } else {
            assert_eq!(*port, 20, "active data must come from the server's port 20: {report}");
        }
    }
    assert!(report.contains(&format!("\"sockname\": [\"{CLIENT_IP}\"")), "{report}");
    lab.assert_server_saw_only_client(1);
    lab.assert_no_data_listeners();
}

#[test]
fn ftplib_passive_iptables() {
    ftplib_scenario("ppasv", Rules::Iptables, true);
}

#[test]
fn ftplib_active_nft() {
    ftplib_scenario("pactv", Rules::Nft, false);
}
