//! The gateway as a process: log records for sessions and transfers,
//! concurrent sessions, no leftover data listeners, SIGTERM → exit 0; and
//! the harness's own checks of every test (the transfer record parser, the
//! clean-run check when a lab is dropped) fail when they should.
mod common;
use std::io::Write;

use common::{big_size, curl_get, Lab, Mode, Ns, Rules, TransferMode, TransferRecord, CLIENT_IP, GW_PORT};

#[test]
fn logs_sessions_and_exits_zero_on_sigterm() {
    let mut lab = Lab::with_gateway("life", Rules::Nft);
    let src = lab.server_file("life.bin", 100_000);
    let local = lab.client_path("life.bin");
    curl_get(&lab, Mode::Pasv, "life.bin", &local);
    common::assert_same_file("download", &src, std::path::Path::new(&local));
    let src2 = lab.server_file("life2.bin", 100_001);
    let local2 = lab.client_path("life2.bin");
    curl_get(&lab, Mode::Port, "life2.bin", &local2);
    common::assert_same_file("download", &src2, std::path::Path::new(&local2));
    lab.assert_no_data_listeners();
    // give the gateway a moment to write the session-end records
    let log = lab.wait_for_log("session end", 2, 5);
    assert!(log.matches("session start").count() >= 2, "no 'session start' records:\n{log}");
    assert!(log.matches("session end").count() >= 2, "no 'session end' records:\n{log}");
    assert!(log.contains("transfer"), "no 'transfer' record:\n{log}");
    // byte accounting (README: to_client: N)
    let rec = lab.assert_transfer(TransferMode::Passive, "RETR", "life.bin", 100_000);
    assert_eq!(rec.reply, "226", "{rec}");
    assert_eq!(rec.get("user"), Some("anonymous"), "{rec}");
    lab.assert_transfer(TransferMode::Active, "RETR", "life2.bin", 100_001);
    assert!(log.contains(CLIENT_IP), "log does not name the client:\n{log}");
    let st = lab.stop_gateway();
    assert!(st.success(), "ftpgate exit on SIGTERM: {st}\n{log}");
    assert!(
        !lab.listeners().iter().any(|l| l.ends_with(&format!(":{GW_PORT}"))),
        "control listener still there after exit"
    );
}

#[test]
fn concurrent_sessions() {
    let lab = Lab::with_gateway("conc", Rules::Iptables);
    let file = |mode: Mode| format!("conc-{}.bin", mode.transfer_mode().as_str());
    for mode in [Mode::Pasv, Mode::Port] {
        lab.server_file(&file(mode), big_size(mode.transfer_mode()));
    }
    let modes = [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port];
    std::thread::scope(|s| {
        for (i, m) in modes.iter().enumerate() {
            let lab = &lab;
            let file = &file;
            s.spawn(move || {
                let local = lab.client_path(&format!("conc-{i}.bin"));
                curl_get(lab, *m, &file(*m), &local);
                let src = lab.pub_dir().join(file(*m));
                common::assert_same_file(&format!("{m:?} download"), &src, std::path::Path::new(&local));
            });
        }
    });
    for m in modes {
        lab.assert_transfer(m.transfer_mode(), "RETR", &file(m), big_size(m.transfer_mode()) as u64);
    }
    lab.assert_server_saw_only_client(modes.len());
    lab.assert_no_data_listeners();
}

// -- the harness's own checks: they must be able to fail ----------------------

/// Drop `lab` and return the message it failed the test with, if any; the
/// lab's namespaces must be gone either way.
fn drop_verdict(lab: Lab) -> Option<String> {
    let ns = lab.ns(Ns::Gateway);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(lab)));
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists(), "lab {ns} not torn down");
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap()
    })
}

fn append_log(lab: &Lab, line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(lab.run.join("ftpgate.log")).unwrap();
    writeln!(f, "{line}").unwrap();
}

#[test]
fn lab_drop_gateway_error_record_fails_unless_expected() {
    let erro = "Nov 27 14:30:44.015 ERRO relay failed, error: injected by the test, session: 1";
    let lab = Lab::with_gateway("verr", Rules::Nft);
    append_log(&lab, erro);
    let why = drop_verdict(lab).expect("an unexpected ERRO record must fail the test");
    assert!(why.contains("unexpected error record") && why.contains("injected by the test"), "{why}");

    let lab = Lab::with_gateway("vok", Rules::Nft);
    lab.expect_log_errors(&["injected by the test"]);
    append_log(&lab, erro);
    assert_eq!(drop_verdict(lab), None, "an expected ERRO record must not fail the test");
}

#[test]
fn lab_drop_gateway_panic_or_kill_fails() {
    let lab = Lab::with_gateway("vpanic", Rules::Nft);
    lab.expect_log_errors(&["panicked"]);
    append_log(&lab, "thread 'main' (1) panicked at src/relay.rs:1:1:");
    let why = drop_verdict(lab).expect("a panic in the log must fail the test, expected or not");
    assert!(why.contains("panic in the gateway log"), "{why}");

    let lab = Lab::with_gateway("vkill", Rules::Nft);
    // lab/lib.sh's pidfile format: "PID START BOOT_ID PROGRAM"
    let pidfile = std::fs::read_to_string(lab.run.join("ftpgate.pid")).unwrap();
    let pid = pidfile.split_whitespace().next().unwrap_or_default().to_string();
    let out = common::run_bounded(5, &["kill", "-KILL", &pid]);
    assert!(out.status.success(), "kill -KILL {pid}: {}", common::text(&out.stderr));
    let why = drop_verdict(lab).expect("a gateway that did not exit 0 must fail the test");
    assert!(why.contains("did not exit 0"), "{why}");
}

#[test]
fn transfer_record_parses_known_and_unknown_keys() {
    let line = "Nov 27 14:27:42.739 WARN transfer, why: server reset the data connection, \
                result: failed, reply: 426, ms: 8, to_server: 0, to_client: 524288, \
                command: RETR a, b.bin (REST 10), user: anonymous, mode: passive, data: 0, \
                server: 198.51.100.10:21, client: 192.0.2.10:44146, session: 2";
    let r = TransferRecord::parse(4, line).expect("a transfer record");
    assert_eq!((r.line, r.level.as_str(), r.mode.as_str()), (4, "WARN", "passive"));
    assert_eq!((r.result.as_str(), r.reply.as_str()), ("failed", "426"));
    assert_eq!((r.to_client, r.to_server), (Some(524_288), Some(0)));
    assert_eq!(r.command, "RETR a, b.bin (REST 10)");
    assert_eq!(r.verb_and_arg(), ("RETR".to_string(), "a, b.bin"));
    assert_eq!(r.restart_offset(), Some(10));
    assert_eq!(r.get("why"), Some("server reset the data connection"));
    assert_eq!(r.get("session"), Some("2"));
    // a comma inside `why`, keys in another order, the split command/path form
    let line = "Nov 27 14:34:43.760 INFO transfer, why: data connection reset, then more, result: failed, \
                server_reply: 226, reply: 426, to_client: 524288, rest: -, path: /pub/cut.bin, \
                command: RETR, mode: passive, session: 1";
    let r = TransferRecord::parse(0, line).expect("a transfer record");
    assert_eq!(r.get("why"), Some("data connection reset, then more"));
    assert_eq!((r.result.as_str(), r.reply.as_str()), ("failed", "426"));
    assert_eq!(r.get("server_reply"), Some("226"));
    assert_eq!((r.to_client, r.to_server), (Some(524_288), None));
    assert_eq!(r.verb_and_arg(), ("RETR".to_string(), "/pub/cut.bin"));
    assert_eq!(r.restart_offset(), None);
    for other in [
        "Nov 27 14:27:42.740 INFO session end, reason: server closed, session: 2",
        "Nov 27 14:27:42.740 INFO transferred, bytes: 3",
        "thread 'main' panicked at transfer, x: 1",
    ] {
        assert!(TransferRecord::parse(0, other).is_none(), "{other}");
    }
}
