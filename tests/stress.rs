//! Many short data channels at once: empty-file downloads (the data channel
//! opens and closes at once, the racy case for the relay) in every mode,
//! from several concurrent clients. Each must succeed; afterwards no data
//! listener is left and the server saw only the client. ftpgate recorded
//! every transfer: passive and active ones move small files of different
//! sizes, and each record serves one transfer.
//!
//! And bulk transfers at once, each moved onto relay threads: once they
//! are over, the gateway is back to its own threads and descriptors.
mod common;
use std::time::{Duration, Instant};

use common::{curl_get, Lab, Mode, Rules, TransferMode};

fn small_size(mode: TransferMode) -> usize {
    match mode {
        TransferMode::Passive => 1000,
        TransferMode::Active => 1777,
    }
}

fn burst(tag: &str, rules: Rules) {
    let lab = Lab::with_gateway(tag, rules);
    lab.server_file("e.bin", 0);
    let small = |m: TransferMode| format!("s-{}.bin", m.as_str());
    for m in [TransferMode::Passive, TransferMode::Active] {
        lab.server_file(&small(m), small_size(m));
    }
    const ROUNDS: usize = 8;
    let modes = [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port];
    std::thread::scope(|s| {
        for (i, m) in modes.iter().enumerate() {
            let lab = &lab;
            let small = &small;
            s.spawn(move || {
                let name = small(m.transfer_mode());
                let src = lab.pub_dir().join(&name);
                for r in 0..ROUNDS {
                    let local = lab.client_path(&format!("e-{i}-{r}"));
                    curl_get(lab, *m, "e.bin", &local);
                    assert_eq!(std::fs::metadata(&local).unwrap().len(), 0);
                    let local = lab.client_path(&format!("s-{i}-{r}"));
                    curl_get(lab, *m, &name, &local);
                    common::assert_same_file(&format!("{m:?} round {r}"), &src, std::path::Path::new(&local));
                }
            });
        }
    });
    for m in modes {
        let mode = m.transfer_mode();
        for _ in 0..ROUNDS {
            lab.assert_transfer(mode, "RETR", "e.bin", 0);
            lab.assert_transfer(mode, "RETR", &small(mode), small_size(mode) as u64);
        }
    }
    lab.assert_server_saw_only_client(modes.len() * ROUNDS * 2);
    lab.assert_no_data_listeners();
}

#[test]
fn short_transfers_all_modes_nft() {
    burst("brnft", Rules::Nft);
}

#[test]
fn short_transfers_all_modes_iptables() {
    burst("bript", Rules::Iptables);
}

/// Threads and open descriptors of process `pid`.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    (count(format!("/proc/{pid}/task")), common::gateway_fds(pid))
}

#[test]
fn bulk_transfers_on_relay_threads_leave_no_thread_or_descriptor_behind() {
    let mut lab = Lab::new("relthr", Rules::Nft);
    lab.start_gateway(&[]);
    const SIZE: usize = 8 << 20;
    let src = lab.server_file("bulk.bin", SIZE);
    let pid = lab.gateway_pid();
    // The daemon's own threads and descriptors, once it is up.
    std::thread::sleep(Duration::from_millis(300));
    let before = threads_and_fds(pid);
    let modes = [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port];
    for round in 0..2 {
        std::thread::scope(|s| {
            for (i, m) in modes.iter().enumerate() {
                let (lab, src) = (&lab, &src);
                s.spawn(move || {
                    let local = lab.client_path(&format!("bulk-{round}-{i}"));
                    curl_get(lab, *m, "bulk.bin", &local);
                    common::assert_same_file(
                        &format!("{m:?} round {round}"),
                        src,
                        std::path::Path::new(&local),
                    );
                });
            }
        });
    }
    let log = lab.gateway_log();
    assert_eq!(log.matches("relay on threads").count(), 2 * modes.len(), "{log}");
    // Bounded: the last threads end as their connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = threads_and_fds(pid);
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = threads_and_fds(pid);
    }
    eprintln!("relay threads: (threads, descriptors) before {before:?}, after {after:?}");
    assert_eq!(after, before, "(threads, descriptors) before and after\n{}", lab.diagnostics());
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
}
