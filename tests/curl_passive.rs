//! curl in passive mode through the gateway: EPSV (curl's default) with the
//! nft rule set, PASV (`--disable-epsv`) with the iptables rule set.
//! Download and upload of an empty and a multi-MiB file, contents compared;
//! vsftpd (pasv_promiscuous=NO) logs only the real client address.
mod common;
use common::{curl_scenario, Mode, Rules};

#[test]
fn curl_epsv_nft() {
    curl_scenario("cepsv", Rules::Nft, Mode::Epsv);
}

#[test]
fn curl_pasv_iptables() {
    curl_scenario("cpasv", Rules::Iptables, Mode::Pasv);
}
