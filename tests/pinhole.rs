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
