//! No cut transfer ever looks complete (issue 11, ATTACKS.md 24): through
//! the real daemon, passive and active, both directions, with a scripted
//! server (lab/scripted_server.py) in place of vsftpd and a scripted client
//! (lab/scripted_client.py), so that each test sees what the *other* end of
//! the data connection saw:
//! - the server resets a download after 512 KiB and then lies "226": the
//!   client's data connection ends with a reset, not a clean end, the client
//!   gets 426 instead of the 226, ftpgate's transfer record says `failed`,
//!   and the session goes on (NOOP, then a whole second download);
//! - the client resets an upload after 256 KiB: the server's data connection
//!   ends with a reset, not a clean end (so it cannot keep a truncated file
//!   as whole), the client gets 426 instead of the server's 226, and the
//!   record says `failed`;
//! - a download whose server goes silent is ended after
//!   `--data-idle-timeout`: a reset both ways within a bounded time, 426,
//!   and a `failed` record whose reason names the idle deadline.
//!
//! Each runs twice: cut before the relay's first MiB (the event loop
//! relays it) and after (it runs on relay threads, src/relay_threads.rs).
//!
//! The control connection keeps the same rules:
//! - a reset from either end reaches the other as a reset, and the
//!   gateway keeps no socket of it in TIME_WAIT;
//! - a client's FIN is a half-close: commands sent before it are answered,
//!   a download it started runs to its end with its 226, then the close
//!   passes on.
mod common;
use std::fs;
use std::time::{Duration, Instant};

use common::{
    add_invalid_drop, invalid_dropped, json_raw, repo_root, text, Lab, Ns, Rules, ScriptedServer,
    TransferMode, TransferRecord,
};

const KIB: usize = 1024;
/// Where the scripted server cuts a download.
const RETR_RESET_AFTER: usize = 512 * KIB;
/// Where the scripted client cuts an upload.
const STOR_RESET_AFTER: usize = 256 * KIB;
/// A cut past the relay's first MiB: by then it runs on relay threads.
const ON_THREADS_AFTER: usize = 1536 * KIB;
/// Files of sizes no buffer divides, different per use, so no record can
/// stand in for another.
const BIG_FILE: usize = 3 * 1024 * KIB + 4_321;
const SMALL_FILE: usize = 70_001;
const UPLOAD: usize = 2 * 1024 * KIB + 999;

// -- the scripted server (local helper; a harness version may replace it) --

impl ScriptedServer {
    /// The server's record of every transfer with `cmd` (one JSON object per
    /// line), waiting a bounded time for at least `min` of them: a stalled
    /// RETR is recorded only when its data connection ends.
    fn transfers(&self, cmd: &str, min: usize, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let found: Vec<String> = fs::read_to_string(&self.report)
                .unwrap_or_default()
                .lines()
                .filter(|l| json_raw(l, "cmd").as_deref() == Some(cmd))
                .map(str::to_string)
                .collect();
            if found.len() >= min || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// -- the scripted client ------------------------------------------------------

/// Run lab/scripted_client.py in the client namespace; its JSON report.
fn scripted_client(lab: &Lab, args: &[&str]) -> String {
    let script = repo_root().join("lab/scripted_client.py");
    let mut argv = vec!["python3", script.to_str().unwrap()];
    argv.extend_from_slice(args);
    let out = lab.client_ok(150, &argv);
    text(&out.stdout)
}

/// The scripted server (with `server_flags`, in vsftpd's place) serves
/// pub/`first` and then, in the same session, pub/after.bin
/// (SMALL_FILE bytes) through the gateway; the client's report and the
/// server.
fn get_then_after(lab: &mut Lab, server_flags: &[&str], first: &str, mode: Mode) -> (String, ScriptedServer) {
    lab.server_file("after.bin", SMALL_FILE);
    let server = ScriptedServer::start(lab, server_flags);
    lab.start_gateway(&[]);
    let first = format!("/pub/{first}");
    let mut args = vec!["get", first.as_str(), "--then-get", "/pub/after.bin"];
    args.extend_from_slice(mode.client_args());
    (scripted_client(lab, &args), server)
}

/// What a failed assertion shows: the client's report, the server's
/// records of `verb` and the lab's diagnostics.
fn context(report: &str, server: &ScriptedServer, verb: &str, lab: &Lab) -> String {
    format!("client report: {report}\nserver: {:?}\n{}", server.transfers(verb, 0, 0), lab.diagnostics())
}

// -- small JSON and log readers (local helpers; the harness may grow its own)

fn json_num(obj: &str, key: &str) -> Option<usize> {
    json_raw(obj, key)?.parse().ok()
}

/// The client's report of the first transfer, and of `--then-get`'s.
fn split_then(report: &str) -> (&str, &str) {
    match report.find("\"then\": ") {
        Some(i) => (&report[..i], &report[i..]),
        None => (report, ""),
    }
}

/// ftpgate's one record of `verb path` (waits a bounded time: the record
/// is written when the transfer's reply is released), with the `result`
/// and the `reply` the client got.
fn assert_record(lab: &Lab, mode: Mode, verb: &str, path: &str, result: &str, reply: &str) -> TransferRecord {
    let record = lab.assert_transfer_result(mode.transfer_mode(), verb, path, result, None);
    assert_eq!(record.reply, reply, "reply in {record}\n{}", lab.diagnostics());
    record
}

// -- scenarios -----------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Mode {
    Pasv,
    Epsv,
    Port,
    Eprt,
}

impl Mode {
    fn client_args(self) -> &'static [&'static str] {
        match self {
            Self::Pasv => &["--mode", "passive"],
            Self::Epsv => &["--mode", "passive", "--extended"],
            Self::Port => &["--mode", "active"],
            Self::Eprt => &["--mode", "active", "--extended"],
        }
    }

    fn transfer_mode(self) -> TransferMode {
        match self {
            Self::Pasv | Self::Epsv => TransferMode::Passive,
            Self::Port | Self::Eprt => TransferMode::Active,
        }
    }
}

/// Whether the relay of the cut transfer ran on threads, as the gateway's
/// debug log says; it must match where the test cut it.
fn assert_relay_place(lab: &Lab, cut_after: usize) {
    let on_threads = lab.gateway_log().contains("relay on threads");
    assert_eq!(on_threads, cut_after >= ON_THREADS_AFTER, "cut after {cut_after}:\n{}", lab.gateway_log());
}

/// The server resets a download after `cut_after` bytes and then says 226.
fn server_resets_download(tag: &str, rules: Rules, mode: Mode, cut_after: usize) {
    server_resets_download_beside(tag, rules, mode, cut_after, false)
}

/// The same, and with `invalid_drop` every hook of the gateway drops what
/// conntrack finds INVALID (`add_invalid_drop`), as most routers' rule sets
/// do: the reset must still get through, and nothing may be dropped.
fn server_resets_download_beside(tag: &str, rules: Rules, mode: Mode, cut_after: usize, invalid_drop: bool) {
    let mut lab = Lab::new(tag, rules);
    if invalid_drop {
        add_invalid_drop(&lab, rules);
    }
    lab.server_file("cut.bin", BIG_FILE);
    let (report, server) =
        get_then_after(&mut lab, &["--retr-reset-after", &cut_after.to_string()], "cut.bin", mode);
    let (cut, after) = split_then(&report);
    let ctx = || context(&report, &server, "RETR", &lab);

    // the server did its part: cut_after bytes, acknowledged, then a reset
    let retrs = server.transfers("RETR", 2, 5);
    assert_eq!(retrs.len(), 2, "server should have seen two RETRs: {}", ctx());
    assert_eq!(json_raw(&retrs[0], "end").as_deref(), Some("reset_sent"), "server did not reset: {}", ctx());
    assert_eq!(
        json_raw(&retrs[0], "acked").as_deref(),
        Some("true"),
        "bytes not acknowledged before the reset: {}",
        ctx()
    );

    // what the client saw: a reset, never a clean end, and 426, never 226
    let end = json_raw(cut, "end").unwrap_or_default();
    assert_eq!(end, "reset", "client's data connection must end with a reset, not {end:?}: {}", ctx());
    let got = json_num(cut, "bytes").expect("bytes in report");
    assert!(got <= cut_after, "client got {got} bytes, more than the server sent: {}", ctx());
    let fin = json_raw(cut, "final").unwrap_or_default();
    assert!(
        fin.starts_with("426"),
        "client must get 426 in place of the server's 226, got {fin:?}: {}",
        ctx()
    );

    // the session goes on: NOOP, and a whole second download
    assert!(
        json_raw(cut, "noop").unwrap_or_default().starts_with("200"),
        "NOOP after the failure: {}",
        ctx()
    );
    assert_eq!(json_raw(after, "end").as_deref(), Some("eof"), "second download: {}", ctx());
    assert_eq!(json_num(after, "bytes"), Some(SMALL_FILE), "second download size: {}", ctx());
    assert!(
        json_raw(after, "final").unwrap_or_default().starts_with("226"),
        "second download reply: {}",
        ctx()
    );

    // ftpgate's own records: the cut one failed, the whole one ok
    assert_record(&lab, mode, "RETR", "/pub/cut.bin", "failed", "426");
    let whole = assert_record(&lab, mode, "RETR", "/pub/after.bin", "ok", "226");
    assert_eq!(whole.to_client, Some(SMALL_FILE as u64), "second download's record: {whole}");
    assert_relay_place(&lab, cut_after);
    if invalid_drop {
        assert_eq!(invalid_dropped(&lab, rules), 0, "INVALID drops: {}", ctx());
    }

    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    lab.assert_no_data_listeners();
    drop(server);
}

/// The client resets an upload after `cut_after` bytes; the server then
/// says 226.
fn client_resets_upload(tag: &str, rules: Rules, mode: Mode, cut_after: usize) {
    let mut lab = Lab::new(tag, rules);
    let server = ScriptedServer::start(&lab, &[]);
    lab.start_gateway(&[]);
    let size = UPLOAD.to_string();
    let cut = cut_after.to_string();
    let mut args = vec!["put", "/upload/cut.bin", "--size", &size, "--reset-after", &cut];
    args.extend_from_slice(mode.client_args());
    let report = scripted_client(&lab, &args);
    let ctx = || context(&report, &server, "STOR", &lab);

    assert_eq!(json_raw(&report, "end").as_deref(), Some("reset_sent"), "client did not reset: {}", ctx());
    assert_eq!(
        json_raw(&report, "acked").as_deref(),
        Some("true"),
        "bytes not acknowledged before the reset: {}",
        ctx()
    );

    // what the server saw: a reset, not a clean end of a "complete" upload
    let stors = server.transfers("STOR", 1, 5);
    assert_eq!(stors.len(), 1, "server should have seen one STOR: {}", ctx());
    let end = json_raw(&stors[0], "end").unwrap_or_default();
    assert_eq!(end, "reset", "server's data connection must end with a reset, not {end:?}: {}", ctx());
    let got = json_num(&stors[0], "bytes").expect("bytes in server report");
    assert!(got <= cut_after, "server got {got} bytes, more than the client sent: {}", ctx());

    // the client gets 426 in place of the server's 226; the session goes on
    let fin = json_raw(&report, "final").unwrap_or_default();
    assert!(
        fin.starts_with("426"),
        "client must get 426 in place of the server's 226, got {fin:?}: {}",
        ctx()
    );
    assert!(
        json_raw(&report, "noop").unwrap_or_default().starts_with("200"),
        "NOOP after the failure: {}",
        ctx()
    );

    assert_record(&lab, mode, "STOR", "/upload/cut.bin", "failed", "426");
    assert_relay_place(&lab, cut_after);

    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    lab.assert_no_data_listeners();
    drop(server);
}

/// Gateway idle deadline on the data channel: 2 s.
const DATA_IDLE: u64 = 2;
/// How long the server stays silent: far beyond the deadline, so the
/// server's own end cannot stand in for the gateway's.
const STALL: u64 = 40;
/// A reset must reach both ends within this many seconds of the stall.
const STALL_BOUND: f64 = 15.0;

/// The server goes silent mid-RETR after `stall_after` bytes; the
/// gateway's data idle deadline ends it.
fn stalled_download(tag: &str, rules: Rules, mode: Mode, stall_after: usize) {
    let mut lab = Lab::new(tag, rules);
    lab.server_file("stall.bin", BIG_FILE);
    let server = ScriptedServer::start(
        &lab,
        &["--retr-stall", "--stall-seconds", &STALL.to_string(), "--stall-after", &stall_after.to_string()],
    );
    lab.start_gateway(&["--data-idle-timeout", &DATA_IDLE.to_string()]);
    let mut args = vec!["get", "/pub/stall.bin", "--data-deadline", "30", "--reply-timeout", "30"];
    args.extend_from_slice(mode.client_args());
    let t0 = Instant::now();
    let report = scripted_client(&lab, &args);
    let ctx = || context(&report, &server, "RETR", &lab);

    let end = json_raw(&report, "end").unwrap_or_default();
    assert_eq!(end, "reset", "client's data connection must end with a reset, not {end:?}: {}", ctx());
    let data_s: f64 = json_raw(&report, "data_s").and_then(|s| s.parse().ok()).unwrap_or(f64::MAX);
    assert!(
        data_s < STALL_BOUND,
        "the reset took {data_s} s (deadline {DATA_IDLE} s, bound {STALL_BOUND} s): {}",
        ctx()
    );
    let fin = json_raw(&report, "final").unwrap_or_default();
    assert!(
        fin.starts_with("426"),
        "client must get 426 in place of the server's 226, got {fin:?}: {}",
        ctx()
    );
    assert!(
        json_raw(&report, "noop").unwrap_or_default().starts_with("200"),
        "NOOP after the failure: {}",
        ctx()
    );

    // the server's leg was reset by the gateway too, long before its stall ended
    let retrs = server.transfers("RETR", 1, 10);
    assert_eq!(retrs.len(), 1, "server should have recorded the stalled RETR: {}", ctx());
    assert_eq!(
        json_raw(&retrs[0], "end").as_deref(),
        Some("stalled_then_reset"),
        "server's data connection must end with a reset from the gateway: {}",
        ctx()
    );
    let stalled: f64 = json_raw(&retrs[0], "stalled_s").and_then(|s| s.parse().ok()).unwrap_or(f64::MAX);
    assert!(stalled < STALL_BOUND, "server's leg ended after {stalled} s: {}", ctx());

    let rec = assert_record(&lab, mode, "RETR", "/pub/stall.bin", "failed", "426");
    let why = rec.get("why").unwrap_or_default();
    assert!(why.contains("idle"), "the record's reason must name the idle deadline, got {why:?}: {}", ctx());
    assert_relay_place(&lab, stall_after);

    assert!(t0.elapsed() < Duration::from_secs(60), "stalled transfer scenario took {:?}", t0.elapsed());
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    lab.assert_no_data_listeners();
    drop(server);
}

#[test]
fn server_reset_download_passive_client_sees_reset_and_426() {
    server_resets_download("rstdlp", Rules::Nft, Mode::Pasv, RETR_RESET_AFTER);
}

/// The gateway's reset of the client leg is lost (a test rule drops the
/// first RST toward the client; a reordering across CPUs, or a client that
/// dropped a segment, has the same effect: the client ignores it). The
/// client's next segment, a window update once it reads from its closed
/// window, belongs to a flow whose socket is gone: the rules send it to the
/// listener, and the host's TCP answers with a reset, as the server would
/// have over plain routing. Without that, the forward chain drops it and
/// the client waits until its own deadline.
#[test]
fn server_reset_download_lost_rst_is_answered_again() {
    lost_rst_is_answered_again("rstlost", Mode::Pasv);
}

/// The same in active mode: the client's leg is then a connection ftpgate
/// opened (from the server's port 20), not one it accepted.
#[test]
fn server_reset_download_active_lost_rst_is_answered_again() {
    lost_rst_is_answered_again("rstlosta", Mode::Port);
}

fn lost_rst_is_answered_again(tag: &str, mode: Mode) {
    let mut lab = Lab::new(tag, Rules::Nft);
    lab.server_file("cut.bin", BIG_FILE);
    lab.server_file("after.bin", SMALL_FILE);
    let server = ScriptedServer::start(&lab, &["--retr-reset-after", &RETR_RESET_AFTER.to_string()]);
    lab.start_gateway(&[]);
    let table = "table inet lose_one_rst { chain out { type filter hook output priority 0; policy accept; \
                 oifname \"gw-c\" tcp flags & rst == rst quota until 60 bytes counter drop; }; }";
    let out = lab.exec(Ns::Gateway, 10, &["nft", table]);
    assert!(out.status.success(), "nft: {}", text(&out.stderr));
    let t0 = Instant::now();
    let mut args = vec![
        "get",
        "/pub/cut.bin",
        "--then-get",
        "/pub/after.bin",
        "--rcvbuf",
        "4096",
        "--read-pause",
        "1",
        // A closed window whenever the reset comes, however the
        // machine's load spreads the transfer: then the client's next
        // read sends a window update, which meets no socket.
        "--read-every",
        "0.005",
        "--data-deadline",
        "20",
    ];
    args.extend_from_slice(mode.client_args());
    let report = scripted_client(&lab, &args);
    let (cut, after) = split_then(&report);
    let rules = text(&lab.exec(Ns::Gateway, 10, &["nft", "list", "table", "inet", "lose_one_rst"]).stdout);
    let ctx = || format!("client report: {report}\nrules: {rules}\n{}", lab.diagnostics());

    // the test rule did drop the gateway's first reset, so the one the
    // client saw came from the answer to its own segment
    assert!(rules.contains("packets 1 "), "the first RST was not dropped: {}", ctx());
    let end = json_raw(cut, "end").unwrap_or_default();
    assert_eq!(end, "reset", "client's data connection must end with a reset, not {end:?}: {}", ctx());
    assert!(t0.elapsed() < Duration::from_secs(15), "the client waited {:?}: {}", t0.elapsed(), ctx());
    assert!(json_raw(cut, "final").unwrap_or_default().starts_with("426"), "final reply: {}", ctx());
    assert_eq!(json_raw(after, "end").as_deref(), Some("eof"), "second download: {}", ctx());
    assert_record(&lab, mode, "RETR", "/pub/cut.bin", "failed", "426");
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    drop(server);
}

#[test]
fn server_reset_download_active_client_sees_reset_and_426() {
    server_resets_download("rstdla", Rules::Iptables, Mode::Eprt, RETR_RESET_AFTER);
}

/// Active mode beside `ct state invalid drop`: the gateway's leg to the
/// client has a conntrack entry of its own, so its reset is valid and
/// reaches the client (when it shared the server's entry, the client often
/// saw no reset and waited out its deadline).
#[test]
fn server_reset_download_active_beside_invalid_drop_client_sees_reset_and_426() {
    server_resets_download_beside("rstinva", Rules::Nft, Mode::Port, RETR_RESET_AFTER, true);
}

#[test]
fn server_reset_download_passive_beside_invalid_drop_client_sees_reset_and_426() {
    server_resets_download_beside("rstinvp", Rules::Iptables, Mode::Pasv, RETR_RESET_AFTER, true);
}

#[test]
fn server_reset_download_on_relay_threads_client_sees_reset_and_426() {
    server_resets_download("rstdlt", Rules::Nft, Mode::Epsv, ON_THREADS_AFTER);
}

#[test]
fn client_reset_upload_passive_server_sees_reset_client_426() {
    client_resets_upload("rstulp", Rules::Iptables, Mode::Epsv, STOR_RESET_AFTER);
}

#[test]
fn client_reset_upload_active_server_sees_reset_client_426() {
    client_resets_upload("rstula", Rules::Nft, Mode::Port, STOR_RESET_AFTER);
}

#[test]
fn client_reset_upload_on_relay_threads_server_sees_reset_client_426() {
    client_resets_upload("rstult", Rules::Nft, Mode::Pasv, ON_THREADS_AFTER);
}

#[test]
fn stalled_download_passive_reset_after_data_idle_timeout() {
    stalled_download("idlep", Rules::Nft, Mode::Pasv, 64 * KIB);
}

#[test]
fn stalled_download_active_reset_after_data_idle_timeout() {
    stalled_download("idlea", Rules::Iptables, Mode::Port, 64 * KIB);
}

#[test]
fn stalled_download_on_relay_threads_reset_after_data_idle_timeout() {
    stalled_download("idlet", Rules::Nft, Mode::Eprt, ON_THREADS_AFTER);
}

// -- a slow receiver is not idle ------------------------------------------------

/// A client that reads at about 400 KiB/s with a 64 KiB window, under
/// `--data-idle-timeout 2`. Bytes flow the whole time, so the transfer must
/// not be cut as idle. The relay's counts stand still while the last bytes
/// wait in the gateway's send buffer (and, on relay threads, while a
/// blocking splice queues a whole MiB); both cases were cut with 426. At
/// the idle deadline the gateway now asks the kernel what the client
/// acknowledged (`Input::Acknowledged`).
fn slow_reader_is_not_idle(tag: &str, threads: bool) {
    let mut lab = Lab::new(tag, Rules::Nft);
    let size = 4 << 20;
    lab.server_file("slow.bin", size);
    let mut flags = vec!["--data-idle-timeout", "2"];
    if !threads {
        flags.extend(["--relay-threads", "0"]);
    }
    lab.start_gateway(&flags);
    let report = scripted_client(
        &lab,
        &["get", "/pub/slow.bin", "--rcvbuf", "65536", "--read-every", "0.16", "--data-deadline", "60"],
    );
    let ctx = || format!("client report: {report}\n{}", lab.diagnostics());
    assert_eq!(json_raw(&report, "end").as_deref(), Some("eof"), "{}", ctx());
    assert_eq!(json_num(&report, "bytes"), Some(size), "{}", ctx());
    assert!(json_raw(&report, "final").unwrap_or_default().starts_with("226"), "{}", ctx());
    let data_s: f64 = json_raw(&report, "data_s").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    assert!(data_s > 5.0, "not slow enough to test anything ({data_s} s): {}", ctx());
    assert_record(&lab, Mode::Pasv, "RETR", "/pub/slow.bin", "ok", "226");
    assert_eq!(lab.gateway_log().contains("relay on threads"), threads, "{}", ctx());
}

#[test]
fn slow_reader_on_relay_threads_is_not_idle() {
    slow_reader_is_not_idle("slowthr", true);
}

#[test]
fn slow_reader_in_the_event_loop_is_not_idle() {
    slow_reader_is_not_idle("slowloop", false);
}

// -- urgent data on a data connection is a failure, never an end --------------

/// The server sends a download with one byte as TCP urgent data
/// (MSG_OOB) after `urgent_after` bytes, then the rest and its FIN.
/// `splice` stops at the urgent mark and, with the FIN in, returns 0 as at
/// the end: the gateway once took that for the end and passed a FIN and
/// the 226 after a prefix, so a cut download looked whole. Now the relay
/// fails: a reset both ways, 426, a `failed` record; the session goes on.
fn urgent_data_in_download(tag: &str, mode: Mode, urgent_after: usize) {
    let mut lab = Lab::new(tag, Rules::Nft);
    // the rest behind the mark fits the gateway's receive buffer, so the
    // server's FIN comes in behind it
    lab.server_file("urgent.bin", urgent_after + 48 * KIB);
    let (report, server) =
        get_then_after(&mut lab, &["--retr-urgent-after", &urgent_after.to_string()], "urgent.bin", mode);
    let (cut, after) = split_then(&report);
    let ctx = || context(&report, &server, "RETR", &lab);
    let end = json_raw(cut, "end").unwrap_or_default();
    assert_eq!(end, "reset", "the client's data connection must end with a reset, not {end:?}: {}", ctx());
    let fin = json_raw(cut, "final").unwrap_or_default();
    assert!(fin.starts_with("426"), "426 in place of the server's 226, got {fin:?}: {}", ctx());
    assert!(json_raw(cut, "noop").unwrap_or_default().starts_with("200"), "NOOP after: {}", ctx());
    assert_eq!(json_num(after, "bytes"), Some(SMALL_FILE), "second download: {}", ctx());
    assert_record(&lab, mode, "RETR", "/pub/urgent.bin", "failed", "426");
    assert_record(&lab, mode, "RETR", "/pub/after.bin", "ok", "226");
    assert_relay_place(&lab, urgent_after);
    let record =
        lab.transfer_records().into_iter().find(|r| r.get("path") == Some("/pub/urgent.bin")).unwrap();
    assert_eq!(record.get("why"), Some("urgent data on a data connection"), "{record}");
    assert_eq!(record.get("leg"), Some("server"), "{record}");
    lab.assert_no_data_listeners();
    drop(server);
}

#[test]
fn urgent_data_in_a_download_in_the_event_loop_fails_it() {
    urgent_data_in_download("urgloop", Mode::Pasv, 96 * KIB);
}

#[test]
fn urgent_data_in_a_download_on_relay_threads_fails_it() {
    urgent_data_in_download("urgthr", Mode::Eprt, ON_THREADS_AFTER + 512 * KIB);
}

// -- the drain deadline cuts what still runs with resets -----------------------

/// The gateway is stopped (SIGTERM) during an upload that outlives
/// `--drain-timeout`, so the daemon ends the session at the deadline,
/// without the core. The server's data connection must end with a reset:
/// with a FIN vsftpd stores the prefix it got as a whole upload ("OK
/// UPLOAD" with a short size), as the gateway did for relays still in the
/// event loop (`--relay-threads 0` here; relay threads already reset).
/// vsftpd is held to 300 KB/s so that the client is still sending.
fn drain_deadline_cuts_an_upload(tag: &str, threads: bool) {
    let mut lab = Lab::with_vsftpd_settings(tag, Rules::Nft, &["anon_max_rate=300000"]);
    let mut flags = vec!["--drain-timeout", "1"];
    if !threads {
        flags.extend(["--relay-threads", "0"]);
    }
    lab.start_gateway(&flags);
    let size = (64 << 20).to_string();
    let report = std::thread::scope(|s| {
        let client = s.spawn(|| {
            scripted_client(&lab, &["put", "upload/drained.bin", "--size", &size, "--data-deadline", "20"])
        });
        std::thread::sleep(Duration::from_millis(1500));
        lab.signal_gateway("TERM");
        client.join().unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = lab.vsftpd_log();
    while !log.contains(" UPLOAD:") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        log = lab.vsftpd_log();
    }
    let ctx = || format!("{report}\n{}\n{}", lab.gateway_log(), lab.diagnostics());
    assert!(lab.gateway_log().contains("drain deadline"), "the upload ended before the deadline: {}", ctx());
    assert!(log.contains("FAIL UPLOAD"), "vsftpd did not see the upload fail: {}", ctx());
    assert!(!log.contains("OK UPLOAD"), "vsftpd took a cut upload for whole: {}", ctx());
    assert!(!report.contains("\"226"), "the client got a 226: {}", ctx());
}

/// The same for a download to a slow reader: the client's data connection
/// ends with a reset, never a clean end after the bytes in flight.
fn drain_deadline_cuts_a_download(tag: &str, threads: bool) {
    let mut lab = Lab::new(tag, Rules::Nft);
    let mut flags = vec!["--drain-timeout", "1"];
    if !threads {
        flags.extend(["--relay-threads", "0"]);
    }
    lab.start_gateway(&flags);
    lab.server_file("drained.bin", 64 << 20);
    let report = std::thread::scope(|s| {
        let client = s.spawn(|| {
            scripted_client(
                &lab,
                &[
                    "get",
                    "pub/drained.bin",
                    "--rcvbuf",
                    "65536",
                    "--read-every",
                    "0.02",
                    "--data-deadline",
                    "20",
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(1500));
        lab.signal_gateway("TERM");
        client.join().unwrap()
    });
    let ctx = || format!("{report}\n{}\n{}", lab.gateway_log(), lab.diagnostics());
    assert!(
        lab.gateway_log().contains("drain deadline"),
        "the download ended before the deadline: {}",
        ctx()
    );
    assert_eq!(json_raw(&report, "end").as_deref(), Some("reset"), "{}", ctx());
    assert!(!report.contains("\"226"), "the client got a 226: {}", ctx());
}

#[test]
fn drain_deadline_resets_an_upload_in_the_event_loop() {
    drain_deadline_cuts_an_upload("drainul", false);
}

#[test]
fn drain_deadline_resets_an_upload_on_relay_threads() {
    drain_deadline_cuts_an_upload("drainut", true);
}

#[test]
fn drain_deadline_resets_a_download_in_the_event_loop() {
    drain_deadline_cuts_a_download("draindl", false);
}

#[test]
fn drain_deadline_resets_a_download_on_relay_threads() {
    drain_deadline_cuts_a_download("draindt", true);
}

// -- a control connection's reset is passed on as a reset ---------------------

/// What the scripted server recorded of its control connections.
fn control_ends(server: &ScriptedServer, min: usize) -> Vec<String> {
    server.transfers("control", min, 10).iter().filter_map(|l| json_raw(l, "end")).collect()
}

/// Sockets in TIME_WAIT in the gateway's namespace.
fn gateway_time_wait(lab: &Lab) -> Vec<String> {
    let out = lab.exec(Ns::Gateway, 10, &["ss", "-Htan", "state", "time-wait"]);
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// After a control connection's reset: the session ended, the gateway said
/// why, and it holds no socket of it in TIME_WAIT.
fn assert_reset_passed_on(lab: &Lab, ctx: &dyn Fn() -> String) {
    lab.wait_for_log("session end", 1, 10);
    assert!(lab.gateway_log().contains("ended abortively"), "{}", ctx());
    let waiting = gateway_time_wait(lab);
    assert!(waiting.is_empty(), "the gateway holds sockets in TIME_WAIT: {waiting:?}\n{}", ctx());
}

/// The client resets its control connection: the server's connection ends
/// with a reset too, not a FIN that reads as an orderly end, and the
/// gateway keeps no transparent socket of it in TIME_WAIT (where it would
/// take the 4-tuple from a client that reconnects from the same port, as
/// a reset allows).
#[test]
fn client_reset_control_server_sees_reset() {
    let mut lab = Lab::new("rstcc", Rules::Nft);
    let server = ScriptedServer::start(&lab, &[]);
    lab.start_gateway(&[]);
    let report = scripted_client(&lab, &["control", "reset"]);
    let ctx = || format!("client report: {report}\nserver: {}\n{}", server.report_text(), lab.diagnostics());
    assert!(json_raw(&report, "noop").unwrap_or_default().starts_with("200"), "{}", ctx());
    assert_eq!(json_raw(&report, "sent").as_deref(), Some("reset"), "{}", ctx());

    assert_eq!(control_ends(&server, 1), ["reset"], "the server must see the client's reset: {}", ctx());
    assert_reset_passed_on(&lab, &ctx);
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    drop(server);
}

/// The server resets the control connection (in place of a reply): the
/// client sees a reset, not an orderly close and not a reply the gateway
/// made up.
#[test]
fn server_reset_control_client_sees_reset() {
    let mut lab = Lab::new("rstcs", Rules::Iptables);
    let server = ScriptedServer::start(&lab, &["--reset-control-on", "SYST"]);
    lab.start_gateway(&[]);
    let report = scripted_client(&lab, &["control", "SYST"]);
    let ctx = || format!("client report: {report}\nserver: {}\n{}", server.report_text(), lab.diagnostics());
    assert_eq!(control_ends(&server, 1), ["reset_sent"], "{}", ctx());
    assert_eq!(json_raw(&report, "end").as_deref(), Some("reset"), "the client must see a reset: {}", ctx());
    assert_eq!(json_raw(&report, "reply").as_deref(), Some("null"), "no reply may come before it: {}", ctx());
    assert_reset_passed_on(&lab, &ctx);
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    drop(server);
}

// -- a client's FIN on the control connection is a half-close -----------------

/// The positions of `codes` in `report`, which must come in this order.
fn assert_replies_in_order(report: &str, codes: &[&str], ctx: &dyn Fn() -> String) {
    let mut from = 0;
    for code in codes {
        let needle = format!("\"{code} ");
        match report[from..].find(&needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("reply {code} missing or out of order: {}", ctx()),
        }
    }
}

/// A client sends its last commands and closes its sending side at once,
/// as a batch client may. Over a router the server still answers each of
/// them; through ftpgate too (vsftpd here), and the session then ends.
#[test]
fn client_half_close_gets_every_reply_vsftpd() {
    let mut lab = Lab::new("hclv", Rules::Nft);
    lab.start_gateway(&[]);
    let report = scripted_client(&lab, &["control", "half-close", "--lines", "SYST,PWD,QUIT"]);
    let ctx = || format!("client report: {report}\n{}", lab.diagnostics());
    assert_replies_in_order(&report, &["215", "257", "221"], &ctx);
    assert_eq!(json_raw(&report, "end").as_deref(), Some("eof"), "{}", ctx());
    lab.wait_for_log("session end", 1, 10);
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
}

/// The same without QUIT: the replies come, and the client's FIN reaches
/// the server (which sees an orderly end, not a reset), after them.
#[test]
fn client_half_close_without_quit_passes_the_fin_on() {
    let mut lab = Lab::new("hcls", Rules::Iptables);
    let server = ScriptedServer::start(&lab, &[]);
    lab.start_gateway(&[]);
    let report = scripted_client(&lab, &["control", "half-close", "--lines", "SYST,PWD"]);
    let ctx = || format!("client report: {report}\nserver: {}\n{}", server.report_text(), lab.diagnostics());
    assert_replies_in_order(&report, &["215", "257"], &ctx);
    assert_eq!(json_raw(&report, "end").as_deref(), Some("eof"), "{}", ctx());
    assert_eq!(control_ends(&server, 1), ["eof"], "the server must see the client's FIN: {}", ctx());
    lab.wait_for_log("session end", 1, 10);
    assert!(!lab.gateway_log().contains("ended abortively"), "{}", ctx());
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    drop(server);
}

/// The client closes the control connection's sending side right after
/// the 150 of a download (vsftpd): the transfer runs to its end, every
/// byte arrives, the 226 is delivered, and then the session ends, as over
/// a router. Before, the FIN ended the session and cut the transfer.
fn half_close_during_download(tag: &str, rules: Rules, mode: Mode) {
    let mut lab = Lab::new(tag, rules);
    lab.server_file("whole.bin", BIG_FILE);
    lab.start_gateway(&[]);
    let mut args = vec!["get", "/pub/whole.bin", "--half-close"];
    args.extend_from_slice(mode.client_args());
    let report = scripted_client(&lab, &args);
    let ctx = || format!("client report: {report}\n{}", lab.diagnostics());
    assert!(json_raw(&report, "pre").unwrap_or_default().starts_with("150"), "{}", ctx());
    assert_eq!(json_raw(&report, "end").as_deref(), Some("eof"), "data connection: {}", ctx());
    assert_eq!(json_num(&report, "bytes"), Some(BIG_FILE), "bytes: {}", ctx());
    assert!(json_raw(&report, "final").unwrap_or_default().starts_with("226"), "final reply: {}", ctx());
    assert_eq!(json_raw(&report, "control_end").as_deref(), Some("eof"), "{}", ctx());
    let record = assert_record(&lab, mode, "RETR", "/pub/whole.bin", "ok", "226");
    assert_eq!(record.to_client, Some(BIG_FILE as u64), "{record}");
    lab.wait_for_log("session end", 1, 10);
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
    lab.assert_no_data_listeners();
}

#[test]
fn client_half_close_during_passive_download_gets_all_and_226() {
    half_close_during_download("hcdp", Rules::Nft, Mode::Pasv);
}

#[test]
fn client_half_close_during_active_download_gets_all_and_226() {
    half_close_during_download("hcda", Rules::Iptables, Mode::Eprt);
}

/// A health check that connects and closes its sending side at once
/// (`nc host 21 </dev/null`) gets the server's banner, as over a router;
/// one that sends QUIT first gets the 221 as well. (The banner held
/// before the half-close too, since the daemon reads nothing from the
/// client until the greeting; the 221 did not.)
#[test]
fn client_half_close_before_the_greeting_still_gets_it() {
    const PROBE: &str = r#"
import json, socket, sys
s = socket.create_connection((sys.argv[1], 21), timeout=10)
if sys.argv[2]:
    s.sendall(sys.argv[2].encode() + b"\r\n")
s.shutdown(socket.SHUT_WR)
got = b""
for _ in range(100):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print(json.dumps({"lines": got.decode("latin-1").splitlines()}))
"#;
    let mut lab = Lab::new("hcgr", Rules::Nft);
    lab.start_gateway(&[]);
    for send in ["", "QUIT"] {
        let out = lab.client_ok(30, &["python3", "-c", PROBE, common::SERVER_IP, send]);
        let report = text(&out.stdout);
        let ctx = || format!("sent {send:?}: {report}\n{}", lab.diagnostics());
        assert!(report.contains("\"220 "), "no banner: {}", ctx());
        assert_eq!(report.contains("\"221 "), send == "QUIT", "{}", ctx());
    }
    lab.wait_for_log("session end", 2, 10);
    assert!(lab.gateway_running(), "gateway died:\n{}", lab.diagnostics());
}
