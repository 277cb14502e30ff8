//! ftpgate beside the router's own firewall. Most rule sets drop what
//! conntrack finds INVALID, in every hook; here every hook of the gateway
//! does (`add_invalid_drop`) and counts it.
//!
//! - Passive mode: a full round trip of downloads and uploads works, and
//!   nothing is dropped (nft and iptables).
//! - Active mode needs `net.netfilter.nf_conntrack_tcp_be_liberal=1` in the
//!   router's namespace (README, "Deploying on a router"). ftpgate's
//!   connection to the client from the server's port 20 has the very
//!   conntrack tuple of the server's own connection to ftpgate, so the two
//!   share one conntrack entry, whose window tracking then finds the
//!   second one's segments out of window: without the sysctl, about half
//!   of active transfers stalled on INVALID drops in the output hook.
//!   With it the round trip works and nothing is dropped. `ftpgate
//!   doctor` asks for it, and its fix is what sets it here.
mod common;
use common::*;

const DOCTOR_CHECK: &str = "active mode beside ct state invalid drop";

/// `ftpgate doctor`'s line for `DOCTOR_CHECK`, with the lab's plan.
fn doctor_line(lab: &Lab) -> String {
    let out = lab_doctor(lab, &[]);
    let report = text(&out.stdout);
    report
        .lines()
        .find(|l| l.contains(&format!("{DOCTOR_CHECK}:")))
        .unwrap_or_else(|| panic!("no {DOCTOR_CHECK} line:\n{report}"))
        .to_string()
}

fn round_trips_beside_invalid_drop(tag: &str, rules: Rules, modes: &[Mode], be_liberal: bool) {
    let lab = Lab::with_gateway(tag, rules);
    add_invalid_drop(&lab, rules);
    if be_liberal {
        let line = doctor_line(&lab);
        let fix = line.strip_prefix(&format!("WRONG  {DOCTOR_CHECK}:")).and_then(|l| l.split_once("  fix: "));
        let Some((_, fix)) = fix else { panic!("doctor did not ask for the sysctl: {line}") };
        let out = lab.exec(Ns::Gateway, 10, &["sh", "-c", fix]);
        assert!(out.status.success(), "{fix}: {}", text(&out.stderr));
        let line = doctor_line(&lab);
        assert!(line.starts_with(&format!("ok     {DOCTOR_CHECK}:")), "after {fix}: {line}");
    }
    let mut files = 0;
    for (i, &mode) in modes.iter().enumerate() {
        let rt = RoundTrip::prepare(&lab, &format!("{tag}{i}"), mode.transfer_mode());
        for (r, l) in rt.gets(&lab) {
            curl_get(&lab, mode, &r, &l);
        }
        for (l, r) in rt.puts(&lab) {
            curl_put(&lab, mode, &l, &r);
        }
        rt.verify(&lab);
        files += rt.files.len();
    }
    lab.assert_server_saw_only_client(files * 2);
    lab.assert_transfers_from_client(files * 2);
    assert_eq!(
        invalid_dropped(&lab, rules),
        0,
        "conntrack found ftpgate's packets INVALID\n{}",
        lab.diagnostics()
    );
}

#[test]
fn invalid_drop_everywhere_nft_passive() {
    round_trips_beside_invalid_drop("invnft", Rules::Nft, &[Mode::Epsv, Mode::Pasv], false);
}

#[test]
fn invalid_drop_everywhere_iptables_passive() {
    round_trips_beside_invalid_drop("invipt", Rules::Iptables, &[Mode::Pasv], false);
}

#[test]
fn invalid_drop_everywhere_active_with_be_liberal() {
    round_trips_beside_invalid_drop("invact", Rules::Nft, &[Mode::Port, Mode::Eprt], true);
}
