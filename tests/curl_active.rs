//! curl in active mode through the gateway: EPRT (`-P 192.0.2.10`) with the
//! iptables rule set, PORT (`--disable-eprt`) with the nft rule set.
//! vsftpd (port_promiscuous=NO) accepts the PORT/EPRT only because it names
//! the control connection's client address, and connects from port 20.
mod common;
use common::{curl_scenario, Mode, Rules};

#[test]
fn curl_eprt_iptables() {
    curl_scenario("ceprt", Rules::Iptables, Mode::Eprt);
}

#[test]
fn curl_port_nft() {
    curl_scenario("cport", Rules::Nft, Mode::Port);
}
