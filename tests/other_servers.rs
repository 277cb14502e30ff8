//! The gateway in front of other FTP servers than vsftpd (lab/servers.sh:
//! proftpd and pure-ftpd, unpacked from Debian's packages): their replies
//! differ (227/229 wording, multi-line replies, FEAT), their transfer logs
//! must still show only the real client, and active-mode data must still
//! come from the server's port 20 as the client sees it.
mod common;
use common::{curl_get, curl_put, ftplib_session, Lab, Mode, RoundTrip, Rules, Server, SERVER_IP};

fn scenario(tag: &str, rules: Rules, server: Server) {
    let mut lab = Lab::with_server(tag, rules, server);
    lab.start_gateway(&[]);
    let rt = RoundTrip::prepare(&lab, tag);
    // downloads passive (EPSV), uploads active (PORT)
    for (r, l) in rt.gets(&lab) {
        curl_get(&lab, Mode::Epsv, &r, &l);
    }
    for (l, r) in rt.puts(&lab) {
        curl_put(&lab, Mode::Port, &l, &r);
    }
    rt.verify(&lab);
    // the other two modes, and who connects in active mode (python ftplib)
    let big = &rt.files[1].0;
    let (l1, l2) = (lab.client_path("pasv.bin"), lab.client_path("actv.bin"));
    curl_get(&lab, Mode::Pasv, big, &l1);
    common::assert_same_file("PASV download", &rt.files[1].1, std::path::Path::new(&l1));
    let report = ftplib_session(&lab, false, &[(big.as_str(), l2.as_str())], &[]);
    // the data connection comes from the server's address; and from port
    // 20 where the server itself uses port 20 (proftpd, as configured here,
    // connects from an ephemeral port even without the gateway)
    let want = match server {
        Server::Proftpd => format!("\"peer\": [\"{SERVER_IP}\", "),
        _ => format!("\"peer\": [\"{SERVER_IP}\", 20]"),
    };
    assert!(report.contains(&want), "{server:?}: active data not from the server ({want}): {report}");
    common::assert_same_file("active download", &rt.files[1].1, std::path::Path::new(&l2));
    lab.assert_transfers_from_client(rt.files.len() * 2 + 2);
    lab.assert_no_data_listeners();
}

#[test]
fn proftpd_nft() {
    scenario("proft", Rules::Nft, Server::Proftpd);
}

#[test]
fn pure_ftpd_iptables() {
    scenario("pure", Rules::Iptables, Server::PureFtpd);
}
