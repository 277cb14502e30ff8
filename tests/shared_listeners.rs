//! A server that reuses passive ports (issue 12, "Junk and abuse"): two
//! sessions handed the same server address and port both work, through one
//! data listener of ftpgate's, and the 227/229 reaches each client byte for
//! byte. Only two sessions from the same client address on the same port
//! cannot be told apart: the second reply is rewritten, the last resort.
//!
//! The server is lab/scripted_server.py with `--pasv-port`: every PASV/EPSV
//! of every session announces one port, and one socket there accepts every
//! data connection, each going to the session whose client it came from.
//! The clients are lab/shared_port_clients.py: every session asks for
//! passive mode before any opens its data connection, so both expectations
//! are on ftpgate's listener at once.
mod common;
use common::{json_raw, repo_root, text, Lab, Ns, Rules, ScriptedServer, TransferMode, CLIENT_IP, SERVER_IP};
use std::fs;

/// The one passive port the scripted server announces to everyone.
const SHARED_PORT: u16 = 40123;
/// A second client host on the client's network.
const CLIENT_B_IP: &str = "192.0.2.20";
/// A third host on the client's network, which tries the shared port.
const THIEF_IP: &str = "192.0.2.30";
/// Sizes no buffer divides, different per session, so no record or file can
/// stand in for the other.
const SIZE_A: usize = 3 * 1024 * 1024 + 4_321;
const SIZE_B: usize = 5 * 1024 * 1024 + 777;

// -- the scripted server (a local helper, as in tests/integrity.rs) ----------

impl ScriptedServer {
    /// The server's report lines whose "cmd" is `cmd`.
    fn reported(&self, cmd: &str) -> Vec<String> {
        fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter(|l| json_raw(l, "cmd").as_deref() == Some(cmd))
            .map(str::to_string)
            .collect()
    }
}

// -- the scenario --------------------------------------------------------------

/// One client session: its source address, the file it downloads, its size.
struct Download {
    src: &'static str,
    name: &'static str,
    size: usize,
}

/// What one session of lab/shared_port_clients.py saw.
struct Seen {
    passive_reply: String,
    bytes: usize,
    final_reply: String,
}

/// Runs the sessions through the gateway against a server announcing
/// SHARED_PORT to all; checks that each got its file whole with a 226 and
/// ftpgate's ok record with its byte count, from its own address. Returns
/// what each client saw, and the client script's other report lines (the
/// thief's).
fn download_together(
    lab: &Lab,
    server: &ScriptedServer,
    extra: &[&str],
    downloads: &[Download],
) -> (Vec<Seen>, Vec<String>) {
    for d in downloads {
        lab.server_file(d.name, d.size);
    }
    let script = repo_root().join("lab/shared_port_clients.py");
    let specs: Vec<String> =
        downloads.iter().map(|d| format!("{}:pub/{}:{}", d.src, d.name, lab.client_path(d.name))).collect();
    let mut argv = vec!["python3", script.to_str().unwrap()];
    argv.extend_from_slice(extra);
    argv.extend(specs.iter().map(String::as_str));
    let out = lab.client_ok(150, &argv);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert!(lines.len() >= downloads.len(), "one report per session: {lines:?}\n{}", lab.diagnostics());
    let mut seen = Vec::new();
    for (d, line) in downloads.iter().zip(&lines) {
        assert_eq!(
            json_raw(line, "error").as_deref(),
            Some("null"),
            "{}: {line}\n{}",
            d.name,
            lab.diagnostics()
        );
        let s = Seen {
            passive_reply: json_raw(line, "passive_reply").unwrap_or_default(),
            bytes: json_raw(line, "bytes").and_then(|b| b.parse().ok()).unwrap_or(0),
            final_reply: json_raw(line, "final").unwrap_or_default(),
        };
        assert!(s.final_reply.starts_with("226"), "{}: final reply {:?}", d.name, s.final_reply);
        assert_eq!(s.bytes, d.size, "{}: bytes", d.name);
        common::assert_same_file(d.name, &lab.pub_dir().join(d.name), &lab.client_dir().join(d.name));
        // ftpgate's record: ok, the exact byte count, in the session of
        // this client's address
        let record = lab.assert_transfer(TransferMode::Passive, "RETR", d.name, d.size as u64);
        let client = record.get("client").unwrap_or_default();
        assert!(
            client.starts_with(&format!("{}:", d.src)),
            "{}: record of client {client}: {record}",
            d.name
        );
        // the server got this session's data connection from its client
        let retr = server
            .reported("RETR")
            .into_iter()
            .find(|l| json_raw(l, "path").is_some_and(|p| p.ends_with(d.name)))
            .unwrap_or_else(|| panic!("server never sent {}", d.name));
        assert_eq!(json_raw(&retr, "end").as_deref(), Some("sent"), "{retr}");
        assert_eq!(json_raw(&retr, "data_peer").as_deref(), Some(d.src), "{retr}");
        seen.push(s);
    }
    lab.assert_no_data_listeners();
    (seen, lines[downloads.len()..].to_vec())
}

/// Adds more hosts' addresses in the client namespace.
fn add_client_addresses(lab: &Lab, ips: &[&str]) {
    for ip in ips {
        let out = lab.exec(Ns::Client, 10, &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        assert!(out.status.success(), "add {ip}: {}", text(&out.stderr));
    }
}

#[test]
fn shared_passive_port_two_clients_both_transfer_with_the_reply_unchanged() {
    let lab = Lab::with_gateway("sharedp", Rules::Nft);
    add_client_addresses(&lab, &[CLIENT_B_IP, THIEF_IP]);
    let server = ScriptedServer::start(&lab, &["--pasv-port", &SHARED_PORT.to_string()]);
    // A third host tries the shared port while both sessions expect a
    // connection on it: it gets nothing.
    let (seen, theft) = download_together(
        &lab,
        &server,
        &["--thief", THIEF_IP],
        &[
            Download { src: CLIENT_IP, name: "a.bin", size: SIZE_A },
            Download { src: CLIENT_B_IP, name: "b.bin", size: SIZE_B },
        ],
    );
    // Byte for byte what the server sent each session.
    let sent = server.reported("PASV");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (p1, p2) = (SHARED_PORT >> 8, SHARED_PORT & 255);
    for (s, src) in seen.iter().zip([CLIENT_IP, CLIENT_B_IP]) {
        let to_this_client = sent
            .iter()
            .find(|l| json_raw(l, "peer").as_deref() == Some(src))
            .and_then(|l| json_raw(l, "reply"))
            .unwrap_or_else(|| panic!("the server sent no 227 to {src}: {sent:?}"));
        assert_eq!(s.passive_reply, to_this_client, "{src} got another 227 than the server sent");
        assert!(to_this_client.contains(&format!(",{p1},{p2})")), "{to_this_client}");
    }
    let log = lab.gateway_log();
    assert!(!log.contains("data address rewritten"), "a reply was rewritten:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("data listener shared") && l.contains("sessions: 2")),
        "the two sessions did not share one listener:\n{log}"
    );
    // The thief: closed at once, got no byte, and logged by the listener
    // table with the listener, its address and the sessions waiting there.
    assert_eq!(theft.len(), 1, "{theft:?}");
    assert_eq!(json_raw(&theft[0], "thief_closed").as_deref(), Some("true"), "{}", theft[0]);
    assert_eq!(json_raw(&theft[0], "thief_data").as_deref(), Some("0"), "{}", theft[0]);
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("data peer refused")).collect();
    assert_eq!(refused.len(), 1, "one refusal record:\n{log}");
    for want in [
        format!("peer: {THIEF_IP}:"),
        format!("local: {SERVER_IP}:{SHARED_PORT}"),
        "sessions: 2".to_string(),
        "rule: port-theft".to_string(),
        "attack: 5".to_string(),
    ] {
        assert!(refused[0].contains(&want), "{want:?} missing: {}", refused[0]);
    }
}

#[test]
fn shared_passive_port_same_client_twice_falls_back_to_a_rewritten_reply() {
    let lab = Lab::with_gateway("sharedf", Rules::Nft);
    let server = ScriptedServer::start(&lab, &["--pasv-port", &SHARED_PORT.to_string()]);
    // One by one: the scripted server tells data connections apart only by
    // address, and both come from the same one.
    let (seen, _) = download_together(
        &lab,
        &server,
        &["--epsv", "--one-by-one"],
        &[
            Download { src: CLIENT_IP, name: "a.bin", size: SIZE_A },
            Download { src: CLIENT_IP, name: "b.bin", size: SIZE_B },
        ],
    );
    let sent = server.reported("EPSV");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let announced = format!("229 Entering Extended Passive Mode (|||{SHARED_PORT}|)");
    assert!(sent.iter().all(|l| json_raw(l, "reply").as_deref() == Some(announced.as_str())), "{sent:?}");
    // The first session to ask keeps the server's reply; the second, whose
    // connection could not be told apart on that listener, gets a port of
    // the gateway's own.
    let unchanged: Vec<&Seen> = seen.iter().filter(|s| s.passive_reply == announced).collect();
    assert_eq!(unchanged.len(), 1, "exactly one reply passes unchanged: {:?}", seen_replies(&seen));
    let rewritten = seen.iter().find(|s| s.passive_reply != announced).unwrap();
    assert!(
        rewritten.passive_reply.starts_with("229 ")
            && !rewritten.passive_reply.contains(&format!("|||{SHARED_PORT}|")),
        "{}",
        rewritten.passive_reply
    );
    let log = lab.gateway_log();
    let records: Vec<&str> = log.lines().filter(|l| l.contains("data address rewritten")).collect();
    assert_eq!(records.len(), 1, "one rewrite record:\n{log}");
    assert!(records[0].contains(&format!("announced: {SERVER_IP}:{SHARED_PORT}")), "{}", records[0]);
    assert!(
        log.contains("data listener already expects this peer for another session"),
        "the fallback's cause is not logged:\n{log}"
    );
}

fn seen_replies(seen: &[Seen]) -> Vec<&str> {
    seen.iter().map(|s| s.passive_reply.as_str()).collect()
}
