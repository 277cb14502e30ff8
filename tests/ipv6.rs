//! IPv6 end to end, through the dual-stack lab (lab/lib.sh: client
//! 2001:db8:1::10, server 2001:db8:2::10) and the rules `ftpgate rules`
//! prints (both families, strict profile).
//!
//! The matrix: vsftpd, proftpd and pure-ftpd, each under the nft and the
//! iptables rule set, the gateway listening with one socket per family
//! (`--listen 0.0.0.0:2121 --listen [::]:2121`). In each lab, one session
//! per client: python ftplib active (its data peer is recorded), curl EPSV
//! and EPRT (a download and an upload each), lftp passive and active (a
//! download and an upload in one session). Every transfer is checked on
//! both ends, in ftpgate's record (and that the record names the client's
//! IPv6 address) and in the server's transfer log (the client's IPv6
//! address, never the gateway's). An active data connection reaches the
//! client from the server's IPv6 address, port 20 for the servers that use
//! it (vsftpd, pure-ftpd; proftpd picks an unprivileged port).
//!
//! Besides: a single dual-stack listener (`--listen [::]:2121`) serves
//! IPv4 clients as IPv4 (records, data sockets) and IPv6 clients; PORT,
//! an IPv4 EPRT and PASV are refused on an IPv6 control connection.
mod common;
use std::path::PathBuf;

use common::{
    assert_same_file, curl_get_at, curl_put_at, ftplib_peers, ftplib_session_at, lftp_session_at, text, Lab,
    Mode, Ns, Rules, Server, TransferMode, CLIENT_IP, CLIENT_IP6, GW_CLIENT_IP6, GW_SERVER_IP6, SERVER_IP,
    SERVER_IP6,
};

/// One socket per family; the IPv6 one IPV6_V6ONLY.
const BOTH_FAMILIES: [&str; 2] = ["0.0.0.0:2121", "[::]:2121"];

/// A file on the server, its download on the client and its upload back.
struct File {
    name: String,
    src: PathBuf,
    mode: TransferMode,
}

impl File {
    /// Sizes differ per file, so that no record stands in for another.
    fn new(lab: &Lab, name: &str, index: usize, mode: TransferMode) -> Self {
        let src = lab.server_file(name, 300_000 + index * 7_919);
        Self { name: name.to_string(), src, mode }
    }

    fn local(&self, lab: &Lab) -> String {
        lab.client_path(&format!("dl-{}", self.name))
    }

    fn upload_name(&self) -> String {
        format!("up-{}", self.name)
    }

    /// Contents, and ftpgate's record naming the client's IPv6 address.
    fn verify(&self, lab: &Lab, uploaded: bool) {
        let len = std::fs::metadata(&self.src).unwrap().len();
        assert_same_file(&format!("download of {}", self.name), &self.src, &PathBuf::from(self.local(lab)));
        let mut records = vec![lab.assert_transfer(self.mode, "RETR", &self.name, len)];
        if uploaded {
            let up = lab.upload_dir().join(self.upload_name());
            assert_same_file(&format!("upload of {}", self.name), &self.src, &up);
            records.push(lab.assert_transfer(self.mode, "STOR", &self.upload_name(), len));
        }
        for r in records {
            let client = r.get("client").unwrap_or_default();
            assert!(client.starts_with(&format!("[{CLIENT_IP6}]:")), "record's client {client:?}: {r}");
        }
    }
}

fn ipv6_matrix(tag: &str, rules: Rules, server: Server) {
    let mut lab = Lab::with_server(tag, rules, server);
    lab.start_gateway_on(&BOTH_FAMILIES, &[]);

    // ftplib active first, while the server's port 20 is not in TIME_WAIT
    // (pure-ftpd moves to other ports then).
    let first = File::new(&lab, "ftplib-active.bin", 0, TransferMode::Active);
    let local = first.local(&lab);
    let report = ftplib_session_at(&lab, SERVER_IP6, false, &[(first.name.as_str(), local.as_str())], &[]);
    assert!(report.contains("\"ok\": true"), "ftplib over IPv6 failed: {report}\n{}", lab.diagnostics());
    let peers = ftplib_peers(&report);
    assert_eq!(peers.len(), 1, "data connections in {report}");
    let (peer_ip, peer_port) = &peers[0];
    assert_eq!(peer_ip, SERVER_IP6, "the active data connection must come from the server: {report}");
    if server != Server::Proftpd {
        assert_eq!(*peer_port, 20, "{server:?}'s active data must come from its port 20: {report}");
    }
    first.verify(&lab, false);

    let cases = [
        ("curl-epsv", Mode::Epsv),
        ("curl-eprt", Mode::Eprt),
        ("lftp-passive", Mode::Epsv),
        ("lftp-active", Mode::Eprt),
    ];
    let mut files = Vec::new();
    for (i, (label, mode)) in cases.into_iter().enumerate() {
        let file = File::new(&lab, &format!("{label}.bin"), i + 1, mode.transfer_mode());
        let (local, up) = (file.local(&lab), file.upload_name());
        if label.starts_with("curl") {
            curl_get_at(&lab, SERVER_IP6, mode, &file.name, &local);
            curl_put_at(&lab, SERVER_IP6, mode, &local, &up);
        } else {
            let passive = !mode.is_active();
            lftp_session_at(&lab, SERVER_IP6, passive, &[(&file.name, &local)], &[(&local, &up)]);
        }
        files.push(file);
    }
    for file in &files {
        file.verify(&lab, true);
    }

    // The server saw the client's IPv6 address, never the gateway's.
    let seen = lab.server_transfer_clients();
    assert!(
        seen.len() >= 9 && seen.iter().all(|a| a == CLIENT_IP6),
        "{server:?} transfer log: want >= 9 transfers all from {CLIENT_IP6}, got {seen:?}\n{}",
        lab.diagnostics()
    );
    if server == Server::Vsftpd {
        let log = lab.vsftpd_log();
        assert!(log.contains(&format!("CONNECT: Client \"{CLIENT_IP6}\"")), "{log}");
        for gw in [GW_CLIENT_IP6, GW_SERVER_IP6] {
            assert!(!log.contains(&format!("\"{gw}\"")), "vsftpd saw the gateway's {gw}:\n{log}");
        }
    }
    lab.assert_no_data_listeners();
}

#[test]
fn ipv6_vsftpd_nft() {
    ipv6_matrix("v6vn", Rules::Nft, Server::Vsftpd);
}

#[test]
fn ipv6_vsftpd_iptables() {
    ipv6_matrix("v6vi", Rules::Iptables, Server::Vsftpd);
}

#[test]
fn ipv6_proftpd_nft() {
    ipv6_matrix("v6pn", Rules::Nft, Server::Proftpd);
}

#[test]
fn ipv6_proftpd_iptables() {
    ipv6_matrix("v6pi", Rules::Iptables, Server::Proftpd);
}

#[test]
fn ipv6_pureftpd_nft() {
    ipv6_matrix("v6un", Rules::Nft, Server::PureFtpd);
}

#[test]
fn ipv6_pureftpd_iptables() {
    ipv6_matrix("v6ui", Rules::Iptables, Server::PureFtpd);
}

/// Sends each command on a logged-in IPv6 control connection and prints
/// the replies as `COMMAND => REPLY` lines.
const REFUSALS: &str = r#"
import ftplib, sys
f = ftplib.FTP(timeout=10)
f.connect(sys.argv[1], 21)
f.login("anonymous", "lab@example.org")
for cmd in sys.argv[2:]:
    try:
        reply = f.sendcmd(cmd)
    except ftplib.all_errors as e:
        reply = str(e)
    print("%s => %s" % (cmd, reply.splitlines()[0]), flush=True)
f.quit()
"#;

#[test]
fn dual_stack_listener_serves_ipv4_as_ipv4_and_refuses_v4_data_commands_on_ipv6() {
    let mut lab = Lab::new("v6dual", Rules::Nft);
    lab.start_gateway_on(&["[::]:2121"], &[]);
    assert!(
        lab.gateway_log().contains("family: ipv4+ipv6"),
        "a lone [::] listener must be dual-stack:\n{}",
        lab.gateway_log()
    );
    let v4_passive = File::new(&lab, "v4-passive.bin", 1, TransferMode::Passive);
    let v4_active = File::new(&lab, "v4-active.bin", 2, TransferMode::Active);
    let v6_active = File::new(&lab, "v6-active.bin", 3, TransferMode::Active);
    curl_get_at(&lab, SERVER_IP, Mode::Pasv, &v4_passive.name, &v4_passive.local(&lab));
    curl_get_at(&lab, SERVER_IP, Mode::Port, &v4_active.name, &v4_active.local(&lab));
    curl_get_at(&lab, SERVER_IP6, Mode::Eprt, &v6_active.name, &v6_active.local(&lab));
    // IPv4 clients as IPv4: no ::ffff: in ftpgate's records or anywhere in
    // its log (a mapped client would share one per-client rate bucket, and
    // PASV/PORT would be refused as IPv6).
    for file in [&v4_passive, &v4_active] {
        let len = std::fs::metadata(&file.src).unwrap().len();
        assert_same_file(&file.name, &file.src, &PathBuf::from(file.local(&lab)));
        let r = lab.assert_transfer(file.mode, "RETR", &file.name, len);
        let client = r.get("client").unwrap_or_default();
        assert!(client.starts_with(&format!("{CLIENT_IP}:")), "record's client {client:?}: {r}");
    }
    v6_active.verify(&lab, false);
    assert!(
        !lab.gateway_log().contains("::ffff:"),
        "a v4-mapped address in ftpgate's log:\n{}",
        lab.gateway_log()
    );

    let out = lab.exec(
        Ns::Client,
        30,
        &[
            "python3",
            "-c",
            REFUSALS,
            SERVER_IP6,
            "PORT 192,0,2,10,156,64",
            "EPRT |1|192.0.2.10|40001|",
            "PASV",
            "EPSV",
        ],
    );
    let replies = text(&out.stdout);
    assert!(out.status.success(), "refusal script: {replies}{}\n{}", text(&out.stderr), lab.diagnostics());
    let reply = |cmd: &str| {
        replies
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{cmd} => ")))
            .unwrap_or_else(|| panic!("no reply to {cmd}: {replies}"))
            .to_string()
    };
    for cmd in ["PORT 192,0,2,10,156,64", "EPRT |1|192.0.2.10|40001|", "PASV"] {
        let r = reply(cmd);
        assert!(r.starts_with('4') || r.starts_with('5'), "{cmd} on IPv6 control must be refused, got {r}");
    }
    assert!(reply("EPSV").starts_with("229"), "EPSV on IPv6 must work: {replies}");
    lab.assert_no_data_listeners();
}

/// A plain download of hello.txt from the server's IPv6 address, bounded.
fn fetch_hello6(lab: &Lab) -> std::process::Output {
    let url = format!("ftp://[{SERVER_IP6}]/pub/hello.txt");
    lab.exec(Ns::Client, 30, &["curl", "-sS", "--connect-timeout", "3", "--max-time", "10", &url])
}

/// IPv6 fails closed like IPv4 (tests/interception.rs): with the rules and
/// no ftpgate, IPv6 FTP does not reach the server; `--undo` of either form
/// leaves the IPv6 side clean too (no ip6tables chain, no nft table), and
/// plain IPv6 routing works again.
#[test]
fn ipv6_fails_closed_without_gateway_and_undo_restores_plain_routing() {
    let lab = Lab::new("v6undo", Rules::Nft);
    for form in [Rules::Nft, Rules::Iptables] {
        if form == Rules::Iptables {
            lab.rules("add", form);
        }
        let connects = || lab.vsftpd_log().matches("CONNECT").count();
        let before = connects();
        let out = fetch_hello6(&lab);
        assert!(
            !out.status.success(),
            "{form:?} rules, no ftpgate: IPv6 FTP got through: {}",
            text(&out.stdout)
        );
        assert_eq!(connects(), before, "{form:?} rules: the server was reached:\n{}", lab.vsftpd_log());
        lab.rules("del", form);
        let out = lab.exec(Ns::Gateway, 10, &["nft", "list", "tables"]);
        assert!(
            !text(&out.stdout).contains("ftpgate"),
            "nft table left after {form:?} del: {}",
            text(&out.stdout)
        );
        for table in ["filter", "mangle"] {
            let out = lab.exec(Ns::Gateway, 10, &["ip6tables", "-t", table, "-S"]);
            let rules = text(&out.stdout);
            let left: Vec<&str> =
                rules.lines().filter(|l| !l.starts_with("-P ") || l.ends_with(" DROP")).collect();
            assert!(
                out.status.success() && left.is_empty(),
                "ip6tables -t {table} after {form:?} del: {rules}"
            );
        }
        let out = fetch_hello6(&lab);
        assert!(out.status.success(), "plain IPv6 routing after {form:?} del: {}", text(&out.stderr));
    }
}
