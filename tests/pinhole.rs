//! `--data-path pinhole`: the kernel forwards each approved data
//! connection once, through a conntrack expectation (src/pinhole.rs). The
//! lab's strict forward chain gets one rule for it, `ct state
//! established,related accept`, and nothing else is forwarded.
//! Downloads and uploads in passive and active mode (contents compared,
//! vsftpd's log shows the client's own address, ftpgate's transfer record
//! counts the IP bytes the kernel forwarded); a second connection to a
//! used pinhole and a connection nobody expected are dropped.
mod common;
use common::*;

/// A lab in pinhole mode: the strict nft rule set plus the one forward
/// rule this mode needs.
fn pinhole_lab(tag: &str) -> Lab {
    let mut lab = Lab::new(tag, Rules::Nft);
    let rule = [
        "nft",
        "insert",
        "rule",
        "inet",
        "ftpgate",
        "forward",
        "ct",
        "state",
        "established,related",
        "accept",
    ];
    let out = lab.exec(Ns::Gateway, 10, &rule);
    assert!(out.status.success(), "adding the related rule: {}", text(&out.stderr));
    lab.start_gateway(&["--data-path", "pinhole"]);
    lab
}

/// The record of a transfer of `len` bytes: IP bytes, headers included,
/// so at least the file and at most a few percent more.
fn assert_kernel_transfer(lab: &Lab, mode: Mode, verb: &str, name: &str, len: u64) {
    let r = lab.assert_transfer_result(mode.transfer_mode(), verb, name, "ok", None);
    let moved = if verb == "STOR" { r.to_server } else { r.to_client }.unwrap_or(0);
    assert!(moved >= len && moved <= len + len / 20 + 4096, "{name}: {moved} IP bytes for {len} bytes: {r}");
}

fn matrix(tag: &str, mode: Mode) {
    let lab = pinhole_lab(tag);
    let rt = RoundTrip::prepare(&lab, tag, mode.transfer_mode());
    for (r, l) in rt.gets(&lab) {
        curl_get(&lab, mode, &r, &l);
    }
    for (l, r) in rt.puts(&lab) {
        curl_put(&lab, mode, &l, &r);
    }
    for (n, src) in &rt.files {
        assert_same_file(&format!("download of {n}"), src, &lab.client_dir().join(format!("dl-{n}")));
        assert_same_file(&format!("upload of {n}"), src, &lab.upload_dir().join(format!("up-{n}")));
        let len = std::fs::metadata(src).unwrap().len();
        assert_kernel_transfer(&lab, mode, "RETR", n, len);
        assert_kernel_transfer(&lab, mode, "STOR", &format!("up-{n}"), len);
    }
    let n = rt.files.len() * 2;
    lab.assert_server_saw_only_client(n);
    lab.assert_transfers_from_client(n);
    lab.assert_no_data_listeners();
}

#[test]
fn pinhole_passive_epsv_nft() {
    matrix("phepsv", Mode::Epsv);
}

#[test]
fn pinhole_active_port_nft() {
    matrix("phport", Mode::Port);
}

/// In the client namespace: EPSV, one connection to the announced port
/// (the pinhole), RETR over it; then a second connection to the same
/// port, and one to a port nobody announced. Prints one line per try:
/// `first N`, `second refused|timeout|connected`, `unexpected ...`.
const ONE_SHOT: &str = r#"
import ftplib, socket, sys
server = sys.argv[1]
def attempt(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((server, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    finally:
        s.close()
f = ftplib.FTP()
f.connect(server, 21, timeout=20)
f.login()
f.voidcmd("TYPE I")
port = int(f.sendcmd("EPSV").split("|")[3])
d = socket.create_connection((server, port), timeout=10)
f.sendcmd("RETR pub/" + sys.argv[2])
n = 0
while True:
    b = d.recv(65536)
    if not b:
        break
    n += len(b)
d.close()
f.voidresp()
print("first", n)
print("second", attempt(port))
print("unexpected", attempt(port + 1 if port < 65000 else port - 1))
f.quit()
"#;

#[test]
fn pinhole_is_one_shot_and_nothing_unexpected_is_forwarded() {
    let lab = pinhole_lab("phshot");
    let src = lab.server_file("phshot.bin", 100_000);
    let out = lab.exec(Ns::Client, 60, &["python3", "-c", ONE_SHOT, SERVER_IP, "phshot.bin"]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "client failed: {report}{}\n{}", text(&out.stderr), lab.diagnostics());
    assert!(report.contains("first 100000"), "the pinhole carried the file: {report}");
    // Forwarded, the server would refuse it (its passive listener took
    // its one connection); dropped by the strict forward chain, it times out.
    assert!(report.contains("second timeout"), "a second connection to a used pinhole: {report}");
    assert!(report.contains("unexpected timeout"), "a connection nobody expected: {report}");
    let len = std::fs::metadata(&src).unwrap().len();
    assert_kernel_transfer(&lab, Mode::Epsv, "RETR", "phshot.bin", len);
}

/// Under the iptables rule set the mode works as well when the forward
/// chain admits RELATED connections: expectations are conntrack's, not
/// nft's. Without that rule, nothing is forwarded and the transfer fails
/// cleanly (no 2xx for data that never came).
#[test]
fn pinhole_iptables_related_rule_needed_and_enough() {
    let mut lab = Lab::new("phipt", Rules::Iptables);
    lab.start_gateway(&["--data-path", "pinhole", "--data-timeout", "3"]);
    let src = lab.server_file("phipt.bin", 50_000);
    let dl = lab.client_path("dl-phipt.bin");
    let url = format!("ftp://{SERVER_IP}/pub/phipt.bin");
    let out =
        lab.exec(Ns::Client, 30, &["curl", "-sS", "--connect-timeout", "5", "-m", "15", "-o", &dl, &url]);
    assert!(!out.status.success(), "without a RELATED rule nothing may be forwarded");
    let rule =
        ["iptables", "-I", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"];
    let out = lab.exec(Ns::Gateway, 10, &rule);
    assert!(out.status.success(), "adding the related rule: {}", text(&out.stderr));
    curl_get(&lab, Mode::Pasv, "phipt.bin", &dl);
    assert_same_file("download", &src, std::path::Path::new(&dl));
    let len = std::fs::metadata(&src).unwrap().len();
    assert_kernel_transfer(&lab, Mode::Pasv, "RETR", "phipt.bin", len);
}

#[test]
fn pinhole_refuses_what_it_cannot_do() {
    let lab = Lab::new("phno", Rules::Nft);
    let bin = gateway_bin();
    let argv = [
        bin.to_str().unwrap(),
        "--listen",
        "0.0.0.0:2199",
        "--data-path",
        "pinhole",
        "--enforce-data-direction",
    ];
    let out = lab.exec(Ns::Gateway, 10, &argv);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot enforce the data direction"), "{}", text(&out.stderr));
    let config = lab.run.join("convert.toml");
    std::fs::write(
        &config,
        "[[policy.rule]]\nname = \"to-passive\"\naction = \"allow\"\nserver-data = \"passive\"\n",
    )
    .unwrap();
    let argv = [
        bin.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "0.0.0.0:2199",
        "--data-path",
        "pinhole",
    ];
    let out = lab.exec(Ns::Gateway, 10, &argv);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot convert data modes"), "{}", text(&out.stderr));
}
