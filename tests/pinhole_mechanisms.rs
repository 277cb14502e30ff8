//! Issue 14's nft-set pinhole prototype stays honest: lab/bench/pinhole_mechanisms.py
//! (its own namespaces) with a few cycles must report every one-shot outcome
//! it checks, figures for the three ways it times, and leave no namespace
//! behind. The figures themselves are README's, from a full run; here they
//! only have to exist.
mod common;
use common::{repo_root, require_root};
use std::process::Command;

#[test]
fn nft_set_prototype_is_one_shot_and_both_mechanisms_are_timed() {
    require_root();
    let script = repo_root().join("lab/bench/pinhole_mechanisms.py");
    // timeout(1) bounds it: the script itself takes about 10 s.
    let out = Command::new("timeout")
        .args(["120"])
        .arg(&script)
        .args(["--cycles", "20", "--json-only"])
        .output()
        .expect("run lab/bench/pinhole_mechanisms.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script:?} failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).expect("a JSON line at the end");

    for check in [
        "unexpected_dropped",
        "first_use_passes",
        "second_use_dropped",
        "expired_dropped",
        "netlink_element_once",
        "retransmitted_syn_passes",
        "admin_must_cooperate",
    ] {
        assert_eq!(report["functional"][check], serde_json::Value::Bool(true), "{check}: {last}");
    }
    assert_eq!(report["cycles"], 20, "{last}");
    for way in ["nft_set_netlink", "nft_set_libnftables", "expectation"] {
        for figure in ["median_us", "p99_us"] {
            let us = report["cost"][way][figure].as_f64().unwrap_or(0.0);
            assert!(us > 0.0, "{way} {figure}: {last}");
        }
    }

    let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains("pmech-"), "namespaces left behind:\n{left}");
}
