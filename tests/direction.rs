//! `--enforce-data-direction` (ATTACKS.md 34), through the real daemon and
//! vsftpd: a client that sends bytes into a RETR's data connection gets
//! the connection reset and 426, and the gateway logs a `data-direction`
//! refusal and a failed transfer; normal downloads and uploads, passive
//! and active, still work with the flag on.

mod common;

use std::path::Path;

use common::{assert_same_file, Lab, Mode, Rules, TransferMode, SERVER_IP};

/// The string value of `key` in the client's one-line JSON report.
fn json_of(report: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(report.trim()).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// A client in the lab's client namespace: PASV, RETR of `name`, then one
/// byte written into the data connection before reading it. Prints one
/// JSON object: how the data connection ended, the final reply, and what
/// a NOOP got afterwards (the session must go on).
const HOSTILE_RETR: &str = r#"
import ftplib, json, socket, sys
host, name = sys.argv[1], sys.argv[2]
out = {}
f = ftplib.FTP()
f.connect(host, 21, timeout=20)
f.login()
f.voidcmd("TYPE I")
data = f.transfercmd("RETR /pub/" + name)
data.settimeout(20)
data.sendall(b"X")
got, end = 0, "fin"
try:
    while True:
        b = data.recv(65536)
        if not b:
            break
        got += len(b)
except ConnectionResetError:
    end = "reset"
except OSError as e:
    end = "error: %s" % e
data.close()
out["data_end"] = end
out["bytes"] = got
try:
    out["final"] = f.voidresp()
except ftplib.Error as e:
    out["final"] = str(e)
out["noop_after"] = f.sendcmd("NOOP")
f.quit()
print(json.dumps(out))
"#;

#[test]
fn client_bytes_into_a_retr_reset_it_with_426_and_a_record() {
    let mut lab = Lab::new("direction", Rules::Nft);
    lab.start_gateway(&["--enforce-data-direction"]);
    // Big enough that the server is still sending when the byte arrives.
    lab.server_file("retr-target.bin", 32 * 1024 * 1024 + 7);
    let out = lab.client_ok(60, &["python3", "-c", HOSTILE_RETR, SERVER_IP, "retr-target.bin"]);
    let report = common::text(&out.stdout);
    eprintln!("hostile RETR: {report}");
    assert_eq!(json_of(&report, "data_end").as_deref(), Some("reset"), "{report}\n{}", lab.diagnostics());
    assert!(
        json_of(&report, "final").is_some_and(|f| f.starts_with("426")),
        "the client must get 426, not the server's 226: {report}"
    );
    assert!(json_of(&report, "noop_after").is_some_and(|f| f.starts_with("200")), "{report}");
    let record = lab.assert_transfer_result(TransferMode::Passive, "RETR", "retr-target.bin", "failed", None);
    assert_eq!(record.get("why"), Some("data sent the wrong way"), "{record}");
    assert_eq!(record.get("leg"), Some("client"), "{record}");
    assert_eq!(record.reply, "426", "{record}");
    let log = lab.gateway_log();
    let refusal: Vec<&str> = log.lines().filter(|l| l.contains("WARN refused,")).collect();
    assert!(
        refusal.len() == 1
            && ["rule: data-direction", "attack: 34", "side: client", "what: RETR"]
                .iter()
                .all(|kv| refusal[0].contains(kv)),
        "one data-direction refusal wanted: {refusal:#?}\n{log}"
    );
}

#[test]
fn downloads_and_uploads_still_work_with_the_flag_on() {
    let mut lab = Lab::new("directionok", Rules::Nft);
    lab.start_gateway(&["--enforce-data-direction"]);
    for (mode, tm) in [(Mode::Epsv, TransferMode::Passive), (Mode::Port, TransferMode::Active)] {
        let name = format!("ok-{}.bin", tm.as_str());
        let src = lab.server_file(&name, 3_000_017);
        let got = lab.client_path(&format!("dl-{name}"));
        common::curl_get(&lab, mode, &name, &got);
        assert_same_file("download with --enforce-data-direction", &src, Path::new(&got));
        lab.assert_transfer(tm, "RETR", &name, 3_000_017);

        let up = format!("up-{}.bin", tm.as_str());
        let local = lab.client_path(&format!("src-{up}"));
        std::fs::write(&local, common::pattern(2_000_003, 7)).unwrap();
        common::curl_put(&lab, mode, &local, &up);
        assert_same_file(
            "upload with --enforce-data-direction",
            Path::new(&local),
            &lab.upload_dir().join(&up),
        );
        lab.assert_transfer(tm, "STOR", &up, 2_000_003);
    }
    assert!(!lab.gateway_log().contains("data-direction"), "{}", lab.gateway_log());
}
