//! The access rules and command profiles through the real daemon, vsftpd
//! and real clients (the configuration file's `[policy]`):
//! - a client in a denied network gets 421 from the gateway and vsftpd
//!   never sees a connection;
//! - a denied user gets 530 from the gateway, vsftpd never sees the name,
//!   and the same session logs in as another user;
//! - `read-only`: downloads work, an upload gets 550 and nothing is written
//!   on the server;
//! - `server-data = "passive"` toward a vsftpd that refuses PORT
//!   (`port_enable=NO`), with curl and lftp in active mode: checksums
//!   compared, and vsftpd still sees only the client's address;
//! - `server-data = "active"` toward a vsftpd that refuses PASV
//!   (`pasv_enable=NO`), with curl and lftp in passive mode: likewise, and
//!   the transfer records name both legs (the server's from vsftpd to the
//!   client's address, the client's to the server's).
mod common;
use std::path::{Path, PathBuf};

use common::{
    assert_same_file, curl_get, curl_put, lftp_session, start_with_policy, text, Lab, Mode, Ns, Rules,
    CLIENT_IP6, SERVER_IP, SERVER_IP6,
};

/// The gateway's `denied by policy` records.
fn denials(lab: &Lab) -> Vec<String> {
    lab.gateway_log().lines().filter(|l| l.contains("denied by policy")).map(str::to_string).collect()
}

#[test]
fn denied_client_network_421_and_server_never_contacted() {
    let mut lab = Lab::new("pdenynet", Rules::Nft);
    start_with_policy(
        &mut lab,
        "[[policy.rule]]\nname = \"no-test-net\"\nclient = [\"192.0.2.0/24\"]\naction = \"deny\"\n",
    );
    let url = format!("ftp://{SERVER_IP}/pub/");
    let out = lab.exec(Ns::Client, 30, &["curl", "-sS", "-v", "--max-time", "10", &url]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "curl got through a denied network:\n{stderr}");
    assert!(stderr.contains("421 ftpgate: connection denied by policy."), "no 421:\n{stderr}");
    let server_log = lab.vsftpd_log();
    assert!(!server_log.contains("CONNECT"), "vsftpd saw a connection:\n{server_log}");
    let d = denials(&lab);
    assert_eq!(d.len(), 1, "one record per denied connection: {d:#?}");
    assert!(d[0].contains("stage: connection") && d[0].contains("rule: no-test-net"), "{}", d[0]);
}

#[test]
fn denied_user_530_session_goes_on_with_another_user() {
    let mut lab = Lab::new("pdenyusr", Rules::Iptables);
    lab.server_file("hello.txt", 1000);
    start_with_policy(&mut lab, "[[policy.rule]]\nname = \"not-ftp\"\nuser = [\"ftp\"]\naction = \"deny\"\n");
    // One session: USER ftp refused, then USER anonymous logs in and lists.
    let script = format!(
        "import ftplib\n\
         f = ftplib.FTP()\n\
         f.connect('{SERVER_IP}', 21, timeout=20)\n\
         try:\n    f.login('ftp', 'x')\n    print('LOGGED-IN-AS-FTP')\n\
         except ftplib.error_perm as e:\n    print('DENIED', e)\n\
         f.login('anonymous', 'lab@example.org')\n\
         print('LIST', f.nlst('/pub'))\n\
         f.quit()\n"
    );
    let out = lab.client_ok(60, &["python3", "-c", &script]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DENIED 530 ftpgate: user denied by policy."), "{stdout}");
    assert!(stdout.contains("hello.txt"), "the session did not go on:\n{stdout}");
    let server_log = lab.vsftpd_log();
    assert!(!server_log.contains("USER ftp"), "vsftpd heard the denied name:\n{server_log}");
    assert!(server_log.contains("USER anonymous"), "{server_log}");
    assert_eq!(server_log.matches("CONNECT").count(), 1, "one session:\n{server_log}");
    let d = denials(&lab);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].contains("stage: user") && d[0].contains("rule: not-ftp") && d[0].contains("user: ftp"),
        "{}",
        d[0]
    );
}

#[test]
fn read_only_download_works_upload_550_nothing_written() {
    let mut lab = Lab::new("preadonly", Rules::Nft);
    start_with_policy(
        &mut lab,
        "[[policy.rule]]\nname = \"anon-ro\"\nuser = [\"anonymous\"]\naction = \"allow\"\nprofile = \"read-only\"\n",
    );
    let src = lab.server_file("fetch.bin", 200_000);
    let got = lab.client_path("fetch.bin");
    curl_get(&lab, Mode::Epsv, "fetch.bin", &got);
    assert_same_file("read-only download", &src, &PathBuf::from(&got));
    let local = lab.client_path("up.bin");
    std::fs::write(&local, vec![7u8; 5000]).unwrap();
    let url = format!("ftp://{SERVER_IP}/upload/up.bin");
    let out = lab.exec(Ns::Client, 30, &["curl", "-sS", "-v", "--max-time", "10", "-T", &local, &url]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "upload succeeded under read-only:\n{stderr}");
    assert!(stderr.contains("550 ftpgate: STOR denied by policy."), "{stderr}");
    assert!(!lab.upload_dir().join("up.bin").exists(), "a file appeared on the server");
    assert!(!lab.vsftpd_log().contains("STOR"), "STOR reached vsftpd");
    let d = denials(&lab);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].contains("verb: STOR") && d[0].contains("profile: read-only"), "{}", d[0]);
    // The gateway's own rules still apply, and the session's records are whole.
    lab.assert_server_saw_only_client(2);
}

#[test]
fn server_data_passive_active_clients_reach_a_vsftpd_without_port() {
    let mut lab = Lab::with_vsftpd_settings("pconvert", Rules::Nft, &["port_enable=NO"]);
    let src = lab.server_file("down.bin", 1_500_000);
    let up = lab.client_path("up.bin");
    std::fs::write(&up, common::pattern(700_000, 42)).unwrap();
    // Without conversion, this vsftpd refuses an active-mode client.
    lab.start_gateway(&[]);
    let url = format!("ftp://{SERVER_IP}/pub/down.bin");
    let local = lab.client_path("refused.bin");
    let out = lab.exec(
        Ns::Client,
        30,
        &["curl", "-sS", "--max-time", "10", "-P", common::CLIENT_IP, "--disable-eprt", "-o", &local, &url],
    );
    assert!(!out.status.success(), "vsftpd with port_enable=NO took PORT");
    lab.stop_gateway();
    start_with_policy(
        &mut lab,
        "[[policy.rule]]\nname = \"to-passive\"\naction = \"allow\"\nserver-data = \"passive\"\n",
    );
    up_and_down_in(&lab, [Mode::Port, Mode::Eprt], &src, &up);
    let server_log = lab.vsftpd_log();
    assert!(server_log.contains("\"PASV\"") && server_log.contains("\"EPSV\""), "{server_log}");
    // Every session and every transfer came from the client's own address.
    lab.assert_server_saw_only_client(4);
    lab.assert_transfers_from_client(6);
    let records = lab.transfer_records();
    assert!(records.len() >= 6 && records.iter().all(|r| r.result == "ok"), "{records:#?}");
    lab.assert_no_data_listeners();
    // The opposite conversion against this server: its refusal of the
    // gateway's PORT reaches the client as 425 and the log as one record.
    lab.stop_gateway();
    start_with_policy(
        &mut lab,
        "[[policy.rule]]\nname = \"to-active\"\naction = \"allow\"\nserver-data = \"active\"\n",
    );
    let out =
        lab.exec(Ns::Client, 30, &["curl", "-sS", "--max-time", "10", "--disable-epsv", "-o", &local, &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("425"), "{stderr}");
    let log = lab.gateway_log();
    let refused: Vec<&str> =
        log.lines().filter(|l| l.contains("data conversion refused by server")).collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("sent: PORT") && refused[0].contains("reply: 425"), "{}", refused[0]);
    // vsftpd with port_enable=NO answers "550 Permission denied.".
    assert!(refused[0].contains("server_reply: 550"), "{}", refused[0]);
}

#[test]
fn server_data_active_passive_clients_reach_a_vsftpd_without_pasv() {
    let mut lab = Lab::with_vsftpd_settings("pconvact", Rules::Nft, &["pasv_enable=NO"]);
    let src = lab.server_file("down.bin", 1_500_000);
    let up = lab.client_path("up.bin");
    std::fs::write(&up, common::pattern(700_000, 43)).unwrap();
    // Without conversion, this vsftpd refuses a passive-mode client.
    lab.start_gateway(&[]);
    let url = format!("ftp://{SERVER_IP}/pub/down.bin");
    let local = lab.client_path("refused.bin");
    let out =
        lab.exec(Ns::Client, 30, &["curl", "-sS", "--max-time", "10", "--disable-epsv", "-o", &local, &url]);
    assert!(!out.status.success(), "vsftpd with pasv_enable=NO took PASV");
    lab.stop_gateway();
    let before = lab.vsftpd_log().len();
    start_with_policy(
        &mut lab,
        "[[policy.rule]]\nname = \"to-active\"\naction = \"allow\"\nserver-data = \"active\"\n",
    );
    up_and_down_in(&lab, [Mode::Pasv, Mode::Epsv], &src, &up);
    let server_log = lab.vsftpd_log().split_off(before);
    assert!(server_log.contains("\"PORT ") && server_log.contains("\"EPRT "), "{server_log}");
    assert!(!server_log.contains("\"PASV\"") && !server_log.contains("\"EPSV"), "{server_log}");
    // Every session and every transfer came from the client's own address.
    lab.assert_server_saw_only_client(4);
    lab.assert_transfers_from_client(6);
    for (verb, file, bytes) in [
        ("RETR", "down.bin", 1_500_000u64),
        ("STOR", "up-0.bin", 700_000),
        ("RETR", "down.bin", 1_500_000),
        ("STOR", "up-1.bin", 700_000),
        ("RETR", "down.bin", 1_500_000),
        ("STOR", "up-lftp.bin", 700_000),
    ] {
        let r = lab.assert_transfer(common::TransferMode::Passive, verb, file, bytes);
        // The client's leg ends at the server's address, the server's at the client's.
        let get = |k| r.get(k).unwrap_or("-");
        assert!(get("client_data").starts_with(&format!("{}:", common::CLIENT_IP)), "{r}");
        assert!(get("client_data_local").starts_with(&format!("{SERVER_IP}:")), "{r}");
        assert!(get("server_data").starts_with(&format!("{SERVER_IP}:")), "{r}");
        assert!(get("server_data_local").starts_with(&format!("{}:", common::CLIENT_IP)), "{r}");
    }
    lab.assert_no_data_listeners();
}

/// The same over IPv6: an EPSV client (curl, lftp) gets 229, vsftpd gets
/// EPRT naming the client's IPv6 address and connects to it.
#[test]
fn server_data_active_ipv6_epsv_clients_reach_a_vsftpd_without_pasv() {
    let mut lab = Lab::with_vsftpd_settings("pconvact6", Rules::Nft, &["pasv_enable=NO"]);
    let src = lab.server_file("down6.bin", 900_001);
    let up = lab.client_path("up6.bin");
    std::fs::write(&up, common::pattern(300_007, 44)).unwrap();
    let path = lab.run.join("ftpgate.toml");
    std::fs::write(&path, "[[policy.rule]]\naction = \"allow\"\nserver-data = \"active\"\n").unwrap();
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &["--config", path.to_str().unwrap()]);
    let got = lab.client_path("down6-curl.bin");
    common::curl_get_at(&lab, SERVER_IP6, Mode::Epsv, "down6.bin", &got);
    assert_same_file("curl EPSV download over IPv6", &src, &PathBuf::from(&got));
    common::curl_put_at(&lab, SERVER_IP6, Mode::Epsv, &up, "up6-curl.bin");
    assert_same_file(
        "curl EPSV upload over IPv6",
        &PathBuf::from(&up),
        &lab.upload_dir().join("up6-curl.bin"),
    );
    let got = lab.client_path("down6-lftp.bin");
    common::lftp_session_at(
        &lab,
        SERVER_IP6,
        true,
        &[("down6.bin", got.as_str())],
        &[(up.as_str(), "up6-lftp.bin")],
    );
    assert_same_file("lftp EPSV download over IPv6", &src, &PathBuf::from(&got));
    assert_same_file(
        "lftp EPSV upload over IPv6",
        &PathBuf::from(&up),
        &lab.upload_dir().join("up6-lftp.bin"),
    );
    let server_log = lab.vsftpd_log();
    let eprt = format!("\"EPRT |2|{CLIENT_IP6}|");
    assert_eq!(server_log.matches(&eprt).count(), 4, "{server_log}");
    assert!(!server_log.contains("\"EPSV") && !server_log.contains("\"PASV\""), "{server_log}");
    let seen = lab.server_seen_clients();
    assert!(!seen.is_empty() && seen.iter().all(|a| a == CLIENT_IP6), "vsftpd saw {seen:?}");
    let xfer = lab.server_transfer_clients();
    assert!(xfer.len() == 4 && xfer.iter().all(|a| a == CLIENT_IP6), "vsftpd transfers from {xfer:?}");
    for (verb, file, bytes) in [
        ("RETR", "down6.bin", 900_001u64),
        ("STOR", "up6-curl.bin", 300_007),
        ("RETR", "down6.bin", 900_001),
        ("STOR", "up6-lftp.bin", 300_007),
    ] {
        let r = lab.assert_transfer(common::TransferMode::Passive, verb, file, bytes);
        let get = |k| r.get(k).unwrap_or("-");
        assert!(get("client_data").starts_with(&format!("[{CLIENT_IP6}]:")), "{r}");
        assert!(get("client_data_local").starts_with(&format!("[{SERVER_IP6}]:")), "{r}");
        assert!(get("server_data").starts_with(&format!("[{SERVER_IP6}]:")), "{r}");
        assert!(get("server_data_local").starts_with(&format!("[{CLIENT_IP6}]:")), "{r}");
    }
    lab.assert_no_data_listeners();
}

/// A download of pub/down.bin (`src` on the server) and an upload of `up`
/// with curl in each of `modes`, then both with lftp in the same data mode
/// as the first; every copy compared.
fn up_and_down_in(lab: &Lab, modes: [Mode; 2], src: &Path, up: &str) {
    for (i, mode) in modes.into_iter().enumerate() {
        let got = lab.client_path(&format!("down-{i}.bin"));
        curl_get(lab, mode, "down.bin", &got);
        assert_same_file(&format!("{mode:?} download"), src, &PathBuf::from(&got));
        curl_put(lab, mode, up, &format!("up-{i}.bin"));
        assert_same_file(
            &format!("{mode:?} upload"),
            &PathBuf::from(up),
            &lab.upload_dir().join(format!("up-{i}.bin")),
        );
    }
    let passive = matches!(modes[0], Mode::Pasv | Mode::Epsv);
    let got = lab.client_path("down-lftp.bin");
    lftp_session(lab, passive, &[("down.bin", got.as_str())], &[(up, "up-lftp.bin")]);
    assert_same_file("lftp download", src, &PathBuf::from(&got));
    assert_same_file("lftp upload", &PathBuf::from(up), &lab.upload_dir().join("up-lftp.bin"));
}
