//! The JSON audit trail (`--log-format json`), through the real daemon and
//! vsftpd: one session logs in, has a PORT bounce refused (ATTACKS.md 1),
//! downloads one file passive and another active from a REST offset, and
//! quits. Every line of the log is one JSON object; the session's start,
//! refusal, transfer and end records carry every key docs/audit.md lists,
//! with the values the session really had (addresses of both data legs,
//! byte counts, replies), and the password appears nowhere.
mod common;
use std::time::{Duration, Instant};

use common::{text, Lab, Rules, CLIENT_IP, SERVER_IP};
use serde_json::{Map, Value};

const PASSIVE_SIZE: usize = 123_457;
const ACTIVE_SIZE: usize = 345_679;
const REST: usize = 1000;
const PASSWORD: &str = "s3cret-lab-pw@";

/// One ftplib session in the client namespace; prints a JSON report.
const CLIENT: &str = r#"
import ftplib, json, sys
host, password, rest = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
ftp = ftplib.FTP()
ftp.connect(host, 21, timeout=20)
ftp.login("anonymous", password)
try:
    ftp.sendcmd("PORT 203,0,113,5,0,80")
    out["bounce"] = "accepted"
except ftplib.error_perm as e:
    out["bounce"] = str(e)[:3]
def fetch(cmd, rest=None):
    got = [0]
    reply = ftp.retrbinary(cmd, lambda b: got.__setitem__(0, got[0] + len(b)), rest=rest)
    return [got[0], reply[:3]]
ftp.set_pasv(True)
out["passive"] = fetch("RETR /pub/pas.bin")
ftp.set_pasv(False)
out["active"] = fetch("RETR /pub/act.bin", rest)
out["quit"] = ftp.quit()[:3]
print(json.dumps(out))
"#;

/// Every line of ftpgate.log as a JSON object; a line that is not one
/// fails the test.
fn json_records(lab: &Lab) -> Vec<Map<String, Value>> {
    lab.gateway_log()
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object ({other:?}): {l}\n--- ftpgate.log ---\n{}", lab.gateway_log()),
        })
        .collect()
}

fn s<'a>(r: &'a Map<String, Value>, key: &str) -> &'a str {
    r.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{key}: no string in {r:?}"))
}

fn n(r: &Map<String, Value>, key: &str) -> u64 {
    r.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("{key}: no number in {r:?}"))
}

/// `ADDR:PORT` with the given address and a port that is not 0.
fn assert_addr(r: &Map<String, Value>, key: &str, ip: &str) -> u16 {
    let v = s(r, key);
    let (a, p) = v.rsplit_once(':').unwrap_or_else(|| panic!("{key}: {v} is no address in {r:?}"));
    let port: u16 = p.parse().unwrap_or_else(|_| panic!("{key}: bad port in {v}"));
    assert_eq!(a, ip, "{key} in {r:?}");
    assert_ne!(port, 0, "{key} in {r:?}");
    port
}

/// Exactly these keys, besides the ones every record has.
fn assert_keys(r: &Map<String, Value>, keys: &[&str]) {
    let mut want: Vec<&str> = ["ts", "level", "msg", "worker", "session", "client", "server"].to_vec();
    want.extend_from_slice(keys);
    want.sort_unstable();
    let mut got: Vec<&str> = r.keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, want, "keys of {r:?}");
}

#[test]
fn json_log_of_a_session_has_every_field() {
    let mut lab = Lab::new("ajson", Rules::Nft);
    lab.start_gateway(&["--log-format", "json"]);
    lab.server_file("pas.bin", PASSIVE_SIZE);
    lab.server_file("act.bin", ACTIVE_SIZE);
    let rest = REST.to_string();
    let out = lab.client_ok(60, &["python3", "-c", CLIENT, SERVER_IP, PASSWORD, &rest]);
    let report: Value = serde_json::from_str(text(&out.stdout).trim()).expect("client report");
    assert_eq!(report["bounce"], "501", "{report}");
    assert_eq!(report["passive"], serde_json::json!([PASSIVE_SIZE, "226"]), "{report}");
    assert_eq!(report["active"], serde_json::json!([ACTIVE_SIZE - REST, "226"]), "{report}");
    assert_eq!(report["quit"], "221", "{report}");

    // The end record comes when the server has closed too: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !json_records(&lab).iter().any(|r| r.get("msg") == Some(&Value::from("session end"))) {
        assert!(Instant::now() < deadline, "no session end record:\n{}", lab.gateway_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.stop_gateway();
    let log = lab.gateway_log();
    assert!(!log.contains(PASSWORD), "the password reached the log:\n{log}");
    let records = json_records(&lab);

    for r in &records {
        let level = s(r, "level");
        assert!(matches!(level, "DEBG" | "INFO" | "WARN"), "{level} record: {r:?}");
        let ts = s(r, "ts");
        assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "ts {ts}");
    }
    // The session: the only one, from the client to the server's port 21.
    let starts: Vec<_> = records.iter().filter(|r| s(r, "msg") == "session start").collect();
    assert_eq!(starts.len(), 1, "{log}");
    let start = starts[0];
    assert_keys(start, &[]);
    assert_eq!(s(start, "level"), "INFO");
    let session = n(start, "session");
    assert_addr(start, "client", CLIENT_IP);
    assert_eq!(s(start, "server"), format!("{SERVER_IP}:21"));
    let ours: Vec<&Map<String, Value>> =
        records.iter().filter(|r| r.get("session").and_then(Value::as_u64) == Some(session)).collect();
    for r in &ours {
        assert_eq!((s(r, "client"), s(r, "server")), (s(start, "client"), s(start, "server")), "{r:?}");
    }
    let of = |msg: &str| -> Vec<&Map<String, Value>> {
        ours.iter().copied().filter(|r| s(r, "msg") == msg).collect()
    };

    // The bounce.
    let refused = of("refused");
    assert_eq!(refused.len(), 1, "{log}");
    let r = refused[0];
    assert_keys(r, &["side", "rule", "attack", "reason", "what"]);
    assert_eq!(
        (s(r, "level"), s(r, "side"), s(r, "rule"), s(r, "attack"), s(r, "what")),
        ("WARN", "client", "bounce", "1", "PORT 203,0,113,5,0,80")
    );
    assert_eq!(s(r, "reason"), "data address is not the client's");

    // The two transfers.
    let transfers = of("transfer");
    assert_eq!(transfers.len(), 2, "{log}");
    let transfer_keys = [
        "data",
        "mode",
        "user",
        "command",
        "path",
        "rest",
        "client_data",
        "client_data_local",
        "server_data",
        "server_data_local",
        "to_client",
        "to_server",
        "ms",
        "reply",
        "server_reply",
        "result",
        "why",
        "leg",
        "step",
        "error",
    ];
    for t in &transfers {
        assert_keys(t, &transfer_keys);
        assert_eq!(s(t, "level"), "INFO");
        assert_eq!((s(t, "user"), s(t, "command")), ("anonymous", "RETR"));
        assert_eq!((s(t, "reply"), s(t, "server_reply"), s(t, "result")), ("226", "226", "ok"));
        for k in ["why", "leg", "step", "error"] {
            assert_eq!(s(t, k), "-", "{k} of an ok transfer: {t:?}");
        }
        assert_eq!(n(t, "to_server"), 0);
        assert!(n(t, "ms") < 30_000, "{t:?}");
    }
    let (pasv, act) = (transfers[0], transfers[1]);
    assert!(n(pasv, "data") < n(act, "data"), "data ids grow: {log}");

    // Passive: the client connected to the server's announced address,
    // where the gateway listened; the gateway connected to that address
    // from the client's.
    assert_eq!((s(pasv, "mode"), s(pasv, "path"), s(pasv, "rest")), ("passive", "/pub/pas.bin", "-"));
    assert_eq!(n(pasv, "to_client"), PASSIVE_SIZE as u64);
    assert_addr(pasv, "client_data", CLIENT_IP);
    let listened = assert_addr(pasv, "client_data_local", SERVER_IP);
    let announced = assert_addr(pasv, "server_data", SERVER_IP);
    assert_eq!(listened, announced, "the 227 passed unchanged: {pasv:?}");
    assert!((30_000..=30_100).contains(&announced), "vsftpd's passive range: {pasv:?}");
    assert_addr(pasv, "server_data_local", CLIENT_IP);

    // Active from the REST offset: the server connected from its port 20 to
    // the address the gateway told it, the client's with a port of the
    // gateway's; the gateway connected to the client's own port from the
    // server's very address and port.
    assert_eq!((s(act, "mode"), s(act, "path"), s(act, "rest")), ("active", "/pub/act.bin", rest.as_str()));
    assert_eq!(n(act, "to_client"), (ACTIVE_SIZE - REST) as u64);
    let client_port = assert_addr(act, "client_data", CLIENT_IP);
    assert_eq!(s(act, "server_data"), format!("{SERVER_IP}:20"), "{act:?}");
    assert_eq!(s(act, "client_data_local"), s(act, "server_data"), "{act:?}");
    assert_ne!(
        assert_addr(act, "server_data_local", CLIENT_IP),
        client_port,
        "two legs, two tuples: {act:?}"
    );

    // The end: one record, with the sums of the transfers.
    let ends = of("session end");
    assert_eq!(ends.len(), 1, "{log}");
    let e = ends[0];
    assert_keys(e, &["reason", "user", "ms", "transfers", "to_client", "to_server"]);
    assert_eq!((s(e, "level"), s(e, "user")), ("INFO", "anonymous"));
    assert!(matches!(s(e, "reason"), "server closed" | "client closed"), "{e:?}");
    assert_eq!(n(e, "transfers"), 2);
    assert_eq!(n(e, "to_client"), (PASSIVE_SIZE + ACTIVE_SIZE - REST) as u64);
    assert_eq!(n(e, "to_server"), 0);
    assert!(n(e, "ms") >= n(pasv, "ms") + n(act, "ms"), "{e:?}");

    // And in order: start, refusal, transfers, end.
    let pos = |r: &Map<String, Value>| ours.iter().position(|x| std::ptr::eq(*x, r)).unwrap();
    assert!(pos(start) < pos(r) && pos(r) < pos(pasv) && pos(pasv) < pos(act) && pos(act) < pos(e), "{log}");
}

/// The text harness reads the split transfer record (command, path, rest)
/// as it read the older one-key form.
#[test]
fn transfer_record_reader_takes_split_command_path_and_rest() {
    let line = "Nov 27 14:27:42.739 INFO transfer, error: -, step: -, leg: -, why: -, result: ok, \
                server_reply: 226, reply: 226, ms: 8, to_server: 0, to_client: 344679, \
                server_data_local: 192.0.2.10:40002, server_data: 198.51.100.10:20, \
                client_data_local: 198.51.100.10:20, client_data: 192.0.2.10:40002, rest: 1000, \
                path: /pub/a, b.bin, command: RETR, user: anonymous, mode: active, data: 1, \
                server: 198.51.100.10:21, client: 192.0.2.10:44146, session: 2";
    let r = common::TransferRecord::parse(0, line).expect("a transfer record");
    assert_eq!(r.verb_and_arg(), ("RETR".to_string(), "/pub/a, b.bin"));
    assert_eq!(r.restart_offset(), Some(1000));
    assert_eq!((r.to_client, r.to_server, r.reply.as_str()), (Some(344_679), Some(0), "226"));
    let none = line.replace("rest: 1000", "rest: -").replace("path: /pub/a, b.bin", "path: -");
    let r = common::TransferRecord::parse(0, &none).unwrap();
    assert_eq!(r.verb_and_arg(), ("RETR".to_string(), ""));
    assert_eq!(r.restart_offset(), None);
}
