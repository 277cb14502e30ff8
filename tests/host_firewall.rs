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
//! - IPv6 (EPRT, EPSV) likewise.
//! - The `server-data` conversions likewise: each of their legs is a
//!   connection of its own too.
mod common;
use common::*;

fn round_trips_beside_invalid_drop(tag: &str, rules: Rules, modes: &[Mode]) {
    round_trips_beside_invalid_drop_with(tag, rules, modes, None);
}

/// With `policy`, the gateway runs with that `[policy]` section.
fn round_trips_beside_invalid_drop_with(
    tag: &str,
    rules: Rules,
    modes: &[Mode],
    policy: Option<&str>,
) -> Lab {
    let mut lab = Lab::new(tag, rules);
    match policy {
        Some(policy) => start_with_policy(&mut lab, policy),
        None => lab.start_gateway(&[]),
    }
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
    assert_no_invalid_drops(&lab, rules);
    lab
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

#[test]
fn invalid_drop_everywhere_server_data_conversions() {
    let to = |mode: &str| {
        format!("[[policy.rule]]\nname = \"to-{mode}\"\naction = \"allow\"\nserver-data = \"{mode}\"\n")
    };
    // Active clients, passive toward the server; then the reverse.
    let lab = round_trips_beside_invalid_drop_with("invcvp", Rules::Nft, &[Mode::Port], Some(&to("passive")));
    let log = lab.vsftpd_log();
    assert!(log.contains("\"PASV\"") && !log.contains("\"PORT "), "not converted:\n{log}");
    drop(lab);
    let lab = round_trips_beside_invalid_drop_with("invcva", Rules::Nft, &[Mode::Pasv], Some(&to("active")));
    let log = lab.vsftpd_log();
    assert!(log.contains("\"PORT ") && !log.contains("\"PASV\""), "not converted:\n{log}");
}

/// IPv6: EPRT and EPSV beside the same rules (the nft table is `inet`, the
/// iptables form has an ip6tables twin).
fn ipv6_beside_invalid_drop(tag: &str, rules: Rules) {
    let mut lab = Lab::new(tag, rules);
    lab.start_gateway_on(&["0.0.0.0:2121", "[::]:2121"], &[]);
    add_invalid_drop(&lab, rules);
    for (i, mode) in [Mode::Eprt, Mode::Epsv].into_iter().enumerate() {
        let name = format!("v6-{i}.bin");
        let src = lab.server_file(&name, 1_500_000 + i * 7_919);
        let local = lab.client_path(&name);
        let up = format!("up-{name}");
        curl_get_at(&lab, SERVER_IP6, mode, &name, &local);
        curl_put_at(&lab, SERVER_IP6, mode, &local, &up);
        assert_same_file(&format!("download of {name}"), &src, std::path::Path::new(&local));
        assert_same_file(&format!("upload of {name}"), &src, &lab.upload_dir().join(&up));
    }
    let seen = lab.server_transfer_clients();
    assert!(seen.len() == 4 && seen.iter().all(|a| a == CLIENT_IP6), "server saw {seen:?}");
    assert_no_invalid_drops(&lab, rules);
}

#[test]
fn invalid_drop_everywhere_ipv6_nft() {
    ipv6_beside_invalid_drop("invv6n", Rules::Nft);
}

#[test]
fn invalid_drop_everywhere_ipv6_iptables() {
    ipv6_beside_invalid_drop("invv6i", Rules::Iptables);
}
