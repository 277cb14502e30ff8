//! ftpgate beside the router's own firewall. Most rule sets drop what
//! conntrack finds INVALID, in every hook; here every hook of the gateway
//! does (`add_invalid_drop`) and counts it.
//!
//! - Passive mode: a full round trip of downloads and uploads works, and
//!   nothing is dropped (nft and iptables).
//! - Active mode likewise. ftpgate tells the server a port of its own on
//!   the client's address, so the server's connection to ftpgate and
//!   ftpgate's to the client (from the server's port 20) are two conntrack
//!   entries. When it passed the client's own port on, both had one tuple
//!   and shared one entry, whose window tracking then found the second
//!   connection's segments out of window: about half of active transfers
//!   stalled on INVALID drops in the output hook.
mod common;
use common::*;

fn round_trips_beside_invalid_drop(tag: &str, rules: Rules, modes: &[Mode]) {
    let lab = Lab::with_gateway(tag, rules);
    add_invalid_drop(&lab, rules);
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
    round_trips_beside_invalid_drop("invnft", Rules::Nft, &[Mode::Epsv, Mode::Pasv]);
}

#[test]
fn invalid_drop_everywhere_iptables_passive() {
    round_trips_beside_invalid_drop("invipt", Rules::Iptables, &[Mode::Pasv]);
}

#[test]
fn invalid_drop_everywhere_nft_active() {
    round_trips_beside_invalid_drop("invact", Rules::Nft, &[Mode::Port, Mode::Eprt]);
}

#[test]
fn invalid_drop_everywhere_iptables_active() {
    round_trips_beside_invalid_drop("invipa", Rules::Iptables, &[Mode::Port]);
}
