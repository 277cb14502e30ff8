//! The gateway in front of other FTP servers than vsftpd (lab/servers.sh:
//! proftpd and pure-ftpd, unpacked from Debian's packages): their replies
//! differ (227/229 wording, multi-line replies, FEAT), their transfer logs
//! must still show only the real client, and active-mode data must still
//! come from the server's port 20 as the client sees it. Each mode moves
//! its own files (sizes differ by mode), and ftpgate's record of every
//! transfer is checked.
mod common;
use common::{
    curl_get, curl_put, ftplib_session, pairs, Lab, Mode, RoundTrip, Rules, Server, TransferMode, SERVER_IP,
};

fn scenario(tag: &str, rules: Rules, server: Server) {
    let mut lab = Lab::with_server(tag, rules, server);
    lab.start_gateway(&[]);
    // passive: downloads with EPSV, uploads with PASV
    let passive = RoundTrip::prepare(&lab, &format!("{tag}p"), TransferMode::Passive);
    for (r, l) in passive.gets(&lab) {
        curl_get(&lab, Mode::Epsv, &r, &l);
    }
    for (l, r) in passive.puts(&lab) {
        curl_put(&lab, Mode::Pasv, &l, &r);
    }
    passive.verify(&lab);
    // active: downloads with PORT (curl), uploads with python ftplib, which
    // reports who connected to it
    let active = RoundTrip::prepare(&lab, &format!("{tag}a"), TransferMode::Active);
    for (r, l) in active.gets(&lab) {
        curl_get(&lab, Mode::Port, &r, &l);
    }
    let puts = active.puts(&lab);
    let report = ftplib_session(&lab, false, &[], &pairs(&puts));
    active.verify(&lab);
    // every data connection comes from the server's address; and from port
    // 20 where the server itself uses port 20 (proftpd, as configured here,
    // connects from an ephemeral port even without the gateway)
    let want = match server {
        Server::Proftpd => format!("\"peer\": [\"{SERVER_IP}\", "),
        _ => format!("\"peer\": [\"{SERVER_IP}\", 20]"),
    };
    assert_eq!(
        report.matches(&want).count(),
        puts.len(),
        "{server:?}: active data not from the server ({want}): {report}"
    );
    lab.assert_transfers_from_client(passive.files.len() * 2 + active.files.len() * 2);
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
