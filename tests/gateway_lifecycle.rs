//! The gateway as a process: log records for sessions and transfers,
//! concurrent sessions, no leftover data listeners, SIGTERM → exit 0.
mod common;
use common::{curl_get, Lab, Mode, Rules, BIG, CLIENT_IP, GW_PORT};

#[test]
fn logs_sessions_and_exits_zero_on_sigterm() {
    let mut lab = Lab::with_gateway("life", Rules::Nft);
    let src = lab.server_file("life.bin", 100_000);
    let local = lab.client_path("life.bin");
    curl_get(&lab, Mode::Pasv, "life.bin", &local);
    common::assert_same_file("download", &src, std::path::Path::new(&local));
    let local2 = lab.client_path("life2.bin");
    curl_get(&lab, Mode::Port, "life.bin", &local2);
    lab.assert_no_data_listeners();
    // give the gateway a moment to write the session-end records
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lab.gateway_log().matches("session end").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = lab.gateway_log();
    assert!(log.matches("session start").count() >= 2, "no 'session start' records:\n{log}");
    assert!(log.matches("session end").count() >= 2, "no 'session end' records:\n{log}");
    assert!(log.contains("transfer"), "no 'transfer' record:\n{log}");
    // byte accounting of the passive download (README: to_client: N)
    assert!(
        log.lines()
            .any(|l| l.contains("transfer") && l.contains("result: ok") && l.contains("to_client: 100000")),
        "no 'transfer, result: ok' record with to_client: 100000:\n{log}"
    );
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
    let src = lab.server_file("conc.bin", BIG);
    let modes = [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port];
    std::thread::scope(|s| {
        for (i, m) in modes.iter().enumerate() {
            let lab = &lab;
            let src = &src;
            s.spawn(move || {
                let local = lab.client_path(&format!("conc-{i}.bin"));
                curl_get(lab, *m, "conc.bin", &local);
                common::assert_same_file(&format!("{m:?} download"), src, std::path::Path::new(&local));
            });
        }
    });
    lab.assert_server_saw_only_client(modes.len());
    lab.assert_no_data_listeners();
}
