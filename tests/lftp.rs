//! lftp through the gateway, passive (nft) and active (iptables): one
//! control session per test carrying every download and upload.
mod common;
use common::{lftp_session, pairs, Lab, RoundTrip, Rules, TransferMode};

fn lftp_scenario(tag: &str, rules: Rules, passive: bool) {
    let lab = Lab::with_gateway(tag, rules);
    let rt = RoundTrip::prepare(&lab, tag, TransferMode::of(passive));
    let (gets, puts) = (rt.gets(&lab), rt.puts(&lab));
    lftp_session(&lab, passive, &pairs(&gets), &pairs(&puts));
    rt.verify(&lab);
    lab.assert_server_saw_only_client(1);
    lab.assert_no_data_listeners();
}

#[test]
fn lftp_passive_nft() {
    lftp_scenario("lpasv", Rules::Nft, true);
}

#[test]
fn lftp_active_iptables() {
    lftp_scenario("lactv", Rules::Iptables, false);
}
