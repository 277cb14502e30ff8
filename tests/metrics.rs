//! `--metrics`: the Prometheus endpoint of the real daemon, scraped with
//! curl from the client namespace (the gateway's own address: INPUT, not
//! forwarded) before, during and after a rate-limited download through
//! the gateway. The values must move: a session and a data channel are
//! open during the transfer and closed after it, the byte counter grows
//! while the transfer runs and by at least the file's size in all, the
//! transfer is counted ok, and the descriptors are counted. A second lab
//! holds the endpoint with a scraper that stalls mid-request, shows that
//! FTP goes on meanwhile and the next scrape is answered after the
//! stalled one's deadline, provokes a bounce refusal and a not-redirected
//! connection and finds them counted by rule, and checks the 404.
mod common;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{text, Lab, Ns, Rules, TransferMode, GW_CLIENT_IP, GW_PORT, SERVER_IP};

const METRICS_PORT: u16 = 9121;
/// Larger than every buffer between the server and curl (socket buffers
/// at their autotuned maximum, the relay's pipes), so that at the rate
/// below the relay runs for seconds.
const SIZE: usize = 24 * 1024 * 1024 + 4_321;
/// curl's download rate: SIZE takes about 6 s.
const RATE: &str = "4M";

fn metrics_addr() -> String {
    format!("{GW_CLIENT_IP}:{METRICS_PORT}")
}

/// One scrape from the client namespace.
fn scrape(lab: &Lab) -> String {
    scrape_within(lab, 5)
}

/// One scrape that may take up to `secs` seconds.
fn scrape_within(lab: &Lab, secs: u64) -> String {
    common::scrape_metrics(lab, &metrics_addr(), secs)
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    common::metric_value(scrape, series)
}

/// Like `value`, for a series that must be there.
fn get(scrape: &str, series: &str) -> f64 {
    value(scrape, series).unwrap_or_else(|| panic!("no {series} in the scrape:\n{scrape}"))
}

const SESSIONS_OPEN: &str = "ftpgate_sessions_open";
const SESSIONS: &str = "ftpgate_sessions_total";
const LOGINS: &str = "ftpgate_logins_total";
const TO_CLIENT: &str = r#"ftpgate_data_bytes_total{direction="to_client"}"#;
const TO_SERVER: &str = r#"ftpgate_data_bytes_total{direction="to_server"}"#;
const PASSIVE_OPEN: &str = r#"ftpgate_data_channels_open{mode="passive",family="ipv4"}"#;
const PASSIVE_TOTAL: &str = r#"ftpgate_data_channels_total{mode="passive",family="ipv4"}"#;
const CONTROL_LISTENERS: &str = r#"ftpgate_listeners_open{kind="control"}"#;
const DATA_LISTENERS: &str = r#"ftpgate_listeners_open{kind="data"}"#;
const TRANSFERS_OK: &str = r#"ftpgate_transfers_total{result="ok"}"#;
const TRANSFERS_FAILED: &str = r#"ftpgate_transfers_total{result="failed"}"#;
const OPEN_FDS: &str = "process_open_fds";
const MAX_FDS: &str = "process_max_fds";

#[test]
fn metrics_move_during_and_after_a_transfer() {
    let mut lab = Lab::new("metrics", Rules::Nft);
    lab.start_gateway(&["--metrics", &metrics_addr()]);
    let src = lab.server_file("slow.bin", SIZE);

    let before = scrape(&lab);
    assert_eq!(get(&before, SESSIONS_OPEN), 0.0, "{before}");
    assert_eq!(get(&before, CONTROL_LISTENERS), 1.0, "{before}");
    assert_eq!(get(&before, DATA_LISTENERS), 0.0, "{before}");
    assert_eq!(get(&before, PASSIVE_OPEN), 0.0, "{before}");
    let fds_before = get(&before, OPEN_FDS);
    assert!(fds_before > 0.0 && fds_before <= get(&before, MAX_FDS), "{before}");

    // The download, in the background and bounded twice: curl's own
    // --max-time and timeout(1) around it.
    let local = lab.client_path("slow.bin");
    let url = format!("ftp://{SERVER_IP}/pub/slow.bin");
    let client_ns = lab.ns(Ns::Client);
    let mut curl = Command::new("timeout")
        .args(["-k", "5", "60", "ip", "netns", "exec", &client_ns])
        .args(["curl", "-sS", "--max-time", "50", "--limit-rate", RATE, "-o", &local, &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");

    // Scrape until the transfer shows: a session and a passive channel
    // open, and bytes already counted toward the client.
    let deadline = Instant::now() + Duration::from_secs(20);
    let during = loop {
        let now = scrape(&lab);
        if get(&now, SESSIONS_OPEN) >= 1.0
            && get(&now, PASSIVE_OPEN) >= 1.0
            && get(&now, TO_CLIENT) > get(&before, TO_CLIENT)
        {
            break now;
        }
        if Instant::now() > deadline || curl.try_wait().unwrap().is_some() {
            let _ = curl.kill();
            let _ = curl.wait();
            panic!("no scrape showed the transfer running; last:\n{now}\n{}", lab.diagnostics());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(get(&during, OPEN_FDS) > fds_before, "a session holds descriptors:\n{during}");
    assert_eq!(get(&during, PASSIVE_TOTAL), get(&before, PASSIVE_TOTAL) + 1.0, "{during}");

    let out = curl.wait_with_output().expect("wait for curl");
    assert!(
        out.status.success(),
        "curl failed ({}): {}\n{}",
        out.status,
        text(&out.stderr),
        lab.diagnostics()
    );
    common::assert_same_file("download of slow.bin", &src, std::path::Path::new(&local));
    lab.assert_transfer(TransferMode::Passive, "RETR", "slow.bin", SIZE as u64);

    // The session ends once both ends have closed: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = scrape(&lab);
        if get(&now, SESSIONS_OPEN) == 0.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "the session stayed open:\n{now}\n{}", lab.diagnostics());
        std::thread::sleep(Duration::from_millis(100));
    };
    let grew = |series: &str| get(&after, series) - get(&before, series);
    assert!(grew(TO_CLIENT) >= SIZE as f64, "{TO_CLIENT} grew by {} only:\n{after}", grew(TO_CLIENT));
    assert!(get(&after, TO_CLIENT) >= get(&during, TO_CLIENT), "a counter went back:\n{after}");
    assert_eq!(grew(TO_SERVER), 0.0, "{after}");
    assert_eq!(grew(TRANSFERS_OK), 1.0, "{after}");
    assert_eq!(grew(TRANSFERS_FAILED), 0.0, "{after}");
    assert_eq!(grew(SESSIONS), 1.0, "{after}");
    assert_eq!(grew(LOGINS), 1.0, "{after}");
    assert_eq!(grew(PASSIVE_TOTAL), 1.0, "{after}");
    assert_eq!(get(&after, PASSIVE_OPEN), 0.0, "{after}");
    assert_eq!(get(&after, DATA_LISTENERS), 0.0, "{after}");
    assert_eq!(get(&after, CONTROL_LISTENERS), 1.0, "{after}");
    assert!(get(&after, OPEN_FDS) > 0.0, "{after}");
    // Ended, whichever side closed first.
    let ended: f64 = ["client closed", "server closed"]
        .iter()
        .filter_map(|r| value(&after, &format!(r#"ftpgate_sessions_ended_total{{reason="{r}"}}"#)))
        .sum();
    assert_eq!(ended, 1.0, "{after}");
    let _ = fs::remove_file(&local);
}

/// A bounce attempt after login (ATTACKS.md 1), then the server's reply
/// code to it, in one ftplib session.
const BOUNCE: &str = r#"
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], 21, timeout=20)
ftp.login("anonymous", "lab@example.org")
try:
    ftp.sendcmd("PORT 203,0,113,5,0,80")
    print("accepted")
except ftplib.error_perm as e:
    print(str(e)[:3])
ftp.quit()
"#;

/// A scraper that sends half a request line and then nothing for 15 s.
const STALLED_SCRAPER: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET /metr")
print("connected", flush=True)
time.sleep(15)
"#;

#[test]
fn metrics_count_refusals_by_rule_and_endpoint_answers_404_elsewhere() {
    let mut lab = Lab::new("metref", Rules::Nft);
    lab.start_gateway(&["--metrics", &metrics_addr()]);
    let before = scrape(&lab);

    // A stalled scraper holds the endpoint: the gateway must go on
    // serving FTP meanwhile, and the next scrape gets its answer once the
    // stalled one's deadline (5 s) has passed.
    let port = METRICS_PORT.to_string();
    let mut stalled = Command::new("timeout")
        .args(["-k", "5", "30", "ip", "netns", "exec", &lab.ns(Ns::Client)])
        .args(["python3", "-c", STALLED_SCRAPER, GW_CLIENT_IP, &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the stalled scraper");
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stalled.stdout.take().expect("stdout")),
        &mut line,
    );
    assert_eq!(line.trim(), "connected", "the stalled scraper did not connect");
    let stalled_at = Instant::now();

    let out = lab.client_ok(30, &["python3", "-c", BOUNCE, SERVER_IP]);
    assert_eq!(text(&out.stdout).trim(), "501", "the bounce was not refused");
    // Straight to the TPROXY port: not redirected, turned away with a 421.
    let direct = format!("ftp://{GW_CLIENT_IP}:{GW_PORT}/");
    let out = lab.exec(Ns::Client, 20, &["curl", "-sS", "--max-time", "5", &direct]);
    assert!(!out.status.success(), "a direct connection was served: {}", text(&out.stdout));

    // FTP went on while the endpoint was held.
    assert!(stalled_at.elapsed() < Duration::from_secs(5), "FTP was slow: {:?}", stalled_at.elapsed());
    let waited = Instant::now();
    // Waits for the stalled scraper's deadline at most: far less than its
    // 15 s of silence.
    let first = scrape_within(&lab, 10);
    assert!(waited.elapsed() < Duration::from_secs(8), "scrape waited {:?}", waited.elapsed());
    common::stop_child(stalled);
    assert!(first.contains("ftpgate_sessions_total"), "{first}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = scrape(&lab);
        if get(&now, SESSIONS_OPEN) == 0.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "the session stayed open:\n{now}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(get(&after, r#"ftpgate_refusals_total{side="client",rule="bounce"}"#), 1.0, "{after}");
    assert_eq!(get(&after, r#"ftpgate_sessions_refused_total{rule="not-redirected"}"#), 1.0, "{after}");
    // The refused connection never became a session.
    assert_eq!(get(&after, SESSIONS) - get(&before, SESSIONS), 1.0, "{after}");

    // Only /metrics is served, with the text format's content type.
    let url = format!("http://{}/", metrics_addr());
    let out =
        lab.client_ok(15, &["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(text(&out.stdout), "404");
    let url = format!("http://{}/metrics", metrics_addr());
    let out = lab
        .client_ok(15, &["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{content_type}", &url]);
    assert_eq!(text(&out.stdout), "text/plain; version=0.0.4; charset=utf-8");
}
