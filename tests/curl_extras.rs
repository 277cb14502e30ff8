//! Data channels other than plain RETR/STOR, through the gateway with curl:
//! directory listings (LIST in passive and active mode, NLST) and a resumed
//! download (REST), each checked against what the server has and against
//! ftpgate's transfer record. Every mode's listing is longer than the one
//! before (a file is added first), and the two resumed downloads start at
//! different offsets, so no record can stand in for another.
mod common;
use common::{text, Lab, Mode, Rules, CLIENT_IP, SERVER_IP};

fn curl(lab: &Lab, mode: Mode, extra: &[&str], url: &str) -> String {
    let mut argv = vec!["curl", "-sS", "--max-time", "30", "--connect-timeout", "10"];
    match mode {
        Mode::Epsv => {}
        Mode::Pasv => argv.push("--disable-epsv"),
        Mode::Eprt => argv.extend(["-P", CLIENT_IP]),
        Mode::Port => argv.extend(["-P", CLIENT_IP, "--disable-eprt"]),
    }
    argv.extend_from_slice(extra);
    argv.push(url);
    text(&lab.client_ok(60, &argv).stdout)
}

/// Bytes of a listing on the wire: the server ends its lines with CRLF in
/// ASCII mode, curl hands them to us with LF.
fn wire_len(listing: &str) -> u64 {
    let lf_only = listing.matches('\n').count() - listing.matches("\r\n").count();
    (listing.len() + lf_only) as u64
}

#[test]
fn listings_all_modes() {
    let lab = Lab::with_gateway("list", Rules::Nft);
    let names: Vec<String> = (0..40).map(|i| format!("listing-file-{i:03}.txt")).collect();
    for n in &names {
        lab.server_file(n, 10);
    }
    let url = format!("ftp://{SERVER_IP}/pub/");
    for mode in [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port] {
        lab.server_file(&format!("listed-in-{mode:?}.txt"), 1);
        let long = curl(&lab, mode, &[], &url); // LIST
        let short = curl(&lab, mode, &["--list-only"], &url); // NLST
        for n in &names {
            assert!(long.contains(n.as_str()), "{mode:?} LIST lacks {n}:\n{long}");
            assert!(short.lines().any(|l| l.trim() == n), "{mode:?} NLST lacks {n}:\n{short}");
        }
        lab.assert_transfer(mode.transfer_mode(), "LIST", "", wire_len(&long));
        lab.assert_transfer(mode.transfer_mode(), "NLST", "", wire_len(&short));
    }
    lab.assert_server_saw_only_client(8);
    lab.assert_no_data_listeners();
}

#[test]
fn resumed_download_rest() {
    let lab = Lab::with_gateway("rest", Rules::Iptables);
    let src = lab.server_file("resume.bin", 1_000_000);
    let full = std::fs::read(&src).unwrap();
    for (i, (mode, offset)) in [(Mode::Pasv, 300_000), (Mode::Port, 400_000)].into_iter().enumerate() {
        // a partial local copy of the first `offset` bytes; `-C -` resumes it
        let local = lab.client_path(&format!("resume-{i}.bin"));
        std::fs::write(&local, &full[..offset]).unwrap();
        let url = format!("ftp://{SERVER_IP}/pub/resume.bin");
        curl(&lab, mode, &["-C", "-", "-o", &local], &url);
        let got = std::fs::read(&local).unwrap();
        assert!(got == full, "{mode:?}: resumed file differs ({} bytes, want {})", got.len(), full.len());
        assert!(
            lab.vsftpd_log().contains(&format!("REST {offset}")),
            "curl did not resume with REST {offset}"
        );
        let rec =
            lab.assert_transfer(mode.transfer_mode(), "RETR", "resume.bin", (full.len() - offset) as u64);
        assert_eq!(rec.restart_offset(), Some(offset as u64), "{rec}");
    }
    lab.assert_server_saw_only_client(2);
    lab.assert_no_data_listeners();
}
