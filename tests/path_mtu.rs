//! Path MTU discovery through the gateway: a download to a client behind
//! a link narrower than the rest of the path completes.
//!
//! The client (`Lab::add_narrow_host`) announces a full MSS, its router
//! (the client namespace) can forward only 1280-byte packets toward it.
//! Full-size segments from the server's address therefore draw an ICMP
//! "fragmentation needed" (IPv4) or "packet too big" (IPv6), addressed to
//! the server and routed through the gateway.
//! - In relay mode those segments are ftpgate's own (the transparent
//!   socket that stands in for the server), so the error must reach that
//!   socket: the divert rule takes ICMP errors about its flows
//!   (`meta l4proto { tcp, icmp, ipv6-icmp } socket transparent 1`,
//!   iptables `-p icmp` / `-p ipv6-icmp`). Routed on to the real server
//!   instead, the error is lost and the download stalls with its first
//!   full-size segment (a PMTU black hole): with a TCP-only divert rule,
//!   curl received 0 of 4 MB in 10 s.
//! - With `--data-path pinhole` the kernel forwards the data, and the error
//!   is RELATED to the pinhole's connection: the server must learn the
//!   path MTU.
//!
//! Each download runs after the PMTU cache is flushed, and each checks
//! that the sender learned 1280 bytes, so every one of them was carried
//! by path MTU discovery and not by a cached value.
mod common;

use common::*;

const MTU: u16 = 1280;
const LEN: usize = 4_000_000;
const BOTH_FAMILIES: [&str; 2] = ["0.0.0.0:2121", "[::]:2121"];

/// Where the sender of the data keeps what it learned of the path.
#[derive(Clone, Copy)]
enum Sender {
    /// relay mode: ftpgate's sockets, in the gateway namespace
    Gateway,
    /// pinholes: the server itself
    Server,
}

impl Sender {
    fn ns(self) -> Ns {
        match self {
            Self::Gateway => Ns::Gateway,
            Self::Server => Ns::Server,
        }
    }
}

fn ip_family(v6: bool) -> &'static str {
    if v6 {
        "-6"
    } else {
        "-4"
    }
}

fn flush_pmtu(lab: &Lab, sender: Sender, v6: bool) {
    let out = lab.exec(sender.ns(), 10, &["ip", ip_family(v6), "route", "flush", "cache"]);
    assert!(out.status.success(), "ip route flush cache: {}", text(&out.stderr));
}

/// The sender's cached route to the narrow host, e.g.
/// `192.0.2.77 via 192.0.2.10 dev gw-c cache expires 599sec mtu 1280`.
fn learned_route(lab: &Lab, sender: Sender, v6: bool) -> String {
    let host = if v6 { NARROW_IP6 } else { NARROW_IP };
    let out = lab.exec(sender.ns(), 10, &["ip", ip_family(v6), "route", "show", "cache", host]);
    text(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn download(lab: &Lab, sender: Sender, v6: bool, active: bool, file: &std::path::Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let server = if v6 { format!("[{SERVER_IP6}]") } else { SERVER_IP.to_string() };
    let url = format!("ftp://{server}/pub/{name}");
    let local = lab.client_path(&format!("{}-{}-{name}", ip_family(v6), active));
    flush_pmtu(lab, sender, v6);
    // -m: a black hole stalls the transfer; it must not hang the test
    let mut argv = vec!["curl", "-g", "-sS", "-m", "20", "-o", &local];
    if active {
        argv.extend(["-P", "-"]);
    }
    argv.push(&url);
    let out = lab.exec(Ns::Narrow, 30, &argv);
    let what = format!(
        "{} {} download to the narrow host",
        ip_family(v6),
        if active { "active" } else { "passive" }
    );
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}\n{}",
        text(&out.stderr),
        lab.gateway_log(),
        lab.diagnostics()
    );
    assert_same_file(&what, file, std::path::Path::new(&local));
    let route = learned_route(lab, sender, v6);
    assert!(
        route.contains(&format!("mtu {MTU}")),
        "{what}: the sender did not learn the path MTU; its cached route: {route:?}"
    );
    let mode = TransferMode::of(!active);
    match sender {
        Sender::Gateway => {
            lab.assert_transfer(mode, "RETR", name, LEN as u64);
        }
        // the kernel's counts are IP bytes, headers and all
        Sender::Server => {
            let r = lab.assert_transfer_result(mode, "RETR", name, "ok", None);
            let moved = r.to_client.unwrap_or(0);
            assert!(moved >= LEN as u64, "{what}: {moved} IP bytes for {LEN}: {r}");
        }
    }
}

fn narrow_path(tag: &str, rules: Rules, pinhole: bool) {
    if pinhole {
        std::env::set_var("FTPGATE_LAB_DATA_PATH", "pinhole");
    }
    let mut lab = Lab::new(tag, rules);
    let extra: &[&str] = if pinhole { &["--data-path", "pinhole"] } else { &[] };
    lab.start_gateway_on(&BOTH_FAMILIES, extra);
    lab.add_narrow_host(MTU);
    let file = lab.server_file("narrow.bin", LEN);
    let sender = if pinhole { Sender::Server } else { Sender::Gateway };
    for v6 in [false, true] {
        for active in [false, true] {
            download(&lab, sender, v6, active, &file);
        }
    }
}

#[test]
fn relay_downloads_find_the_path_mtu_nft() {
    narrow_path("pmtunft", Rules::Nft, false);
}

#[test]
fn relay_downloads_find_the_path_mtu_iptables() {
    narrow_path("pmtuipt", Rules::Iptables, false);
}

#[test]
fn pinhole_downloads_find_the_path_mtu() {
    narrow_path("pmtupin", Rules::Nft, true);
}
