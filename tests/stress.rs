//! Many short data channels at once: empty-file downloads (the data channel
//! opens and closes at once, the racy case for the relay) in every mode,
//! from several concurrent clients. Each must succeed; afterwards no data
//! listener is left and the server saw only the client. ftpgate recorded
//! every transfer: passive and active ones move small files of different
//! sizes, and each record serves one transfer.
mod common;
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
