//! End-to-end lab harness: drives `lab/netns.sh` to build a client /
//! gateway / server lab in network namespaces (documentation addresses
//! only), runs vsftpd in the server namespace and the `ftpgate` binary under
//! test in the gateway namespace, and runs real FTP clients in the client
//! namespace. Every external command is bounded by `timeout(1)`; the lab is
//! torn down in `Drop` (also when a test panics).
//!
//! What every end-to-end test proves besides its own assertions:
//! - the lab is a strict firewall (lab/rules: the forward policy drops), so
//!   a transfer that succeeded went through ftpgate;
//! - `Lab::assert_transfer` finds ftpgate's own transfer record (mode,
//!   command, result, byte count) for a transfer, each record used once;
//! - when the `Lab` is dropped, ftpgate stops on SIGTERM with exit status 0,
//!   and its log has no panic and no error-level record the test did not
//!   announce with `Lab::expect_log_errors`. A failed check fails the test
//!   after the lab is torn down.
//!
//! Needs root (network namespaces, TPROXY): run as root or via `lab/test`.
#![allow(dead_code, unreachable_pub)]

pub mod scenario_run;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CLIENT_IP: &str = "192.0.2.10";
pub const GW_CLIENT_IP: &str = "192.0.2.1";
pub const GW_SERVER_IP: &str = "198.51.100.1";
pub const SERVER_IP: &str = "198.51.100.10";
pub const GW_PORT: u16 = 2121;
/// The lab's IPv6 addresses (lab/lib.sh): client side 2001:db8:1::/64,
/// server side 2001:db8:2::/64.
pub const CLIENT_IP6: &str = "2001:db8:1::10";
pub const GW_CLIENT_IP6: &str = "2001:db8:1::1";
pub const GW_SERVER_IP6: &str = "2001:db8:2::1";
pub const SERVER_IP6: &str = "2001:db8:2::10";
/// `Lab::add_narrow_host`: a client behind the client namespace, over a
/// narrow link (lab/lib.sh).
pub const NARROW_IP: &str = "192.0.2.77";
pub const NARROW_IP6: &str = "2001:db8:1::77";
/// A multi-MiB size that is not a multiple of any buffer size.
pub const BIG: usize = 4 * 1024 * 1024 + 12_345;

/// The multi-MiB size of a test file moved in `mode`: passive and active
/// transfers in one test never share a size, so no transfer record can
/// stand in for one of the other mode.
pub fn big_size(mode: TransferMode) -> usize {
    match mode {
        TransferMode::Passive => BIG,
        TransferMode::Active => BIG + 4_321,
    }
}

/// Says loudly, past the test harness's output capture (a passing test's
/// `eprintln!` is swallowed), that the gateway under test is the stand-in.
fn standin_banner(what: &str) {
    let _ =
        writeln!(std::io::stderr(), "*** STAND-IN GATEWAY (lab/standin/ftpalg.py), NOT ftpgate: {what} ***");
}

fn standin_requested() -> bool {
    std::env::var("FTPGATE_LAB_GATEWAY").as_deref() == Ok("standin")
}

/// Which form of the TPROXY rule set the gateway namespace gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    Nft,
    Iptables,
    /// No interception at all: plain routing (baseline).
    None,
}

impl Rules {
    fn arg(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Iptables => "iptables",
            Self::None => "none",
        }
    }
}

/// The FTP server in the server namespace (lab/netns.sh runs vsftpd,
/// lab/servers.sh the others; all anonymous on 198.51.100.10:21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Vsftpd,
    Proftpd,
    PureFtpd,
}

impl Server {
    pub fn arg(self) -> &'static str {
        match self {
            Self::Vsftpd => "vsftpd",
            Self::Proftpd => "proftpd",
            Self::PureFtpd => "pure-ftpd",
        }
    }
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug)]
pub enum Ns {
    Client,
    Gateway,
    Server,
    /// Only after `Lab::add_narrow_host`.
    Narrow,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftpgate"))
}

fn is_root() -> bool {
    // effective uid from /proc: no libc call, no dependency
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn require_root() {
    assert!(is_root(), "needs root: run as root or via lab/test (network namespaces, TPROXY rules)");
}

/// SIGTERM one process we started (the shell's builtin kill: no procps needed).
fn sigterm(pid: u32) {
    let _ = Command::new("sh").args(["-c", "kill -TERM \"$0\"", &pid.to_string()]).status();
}

/// Ends a helper process the test started (a scripted server, a greeter):
/// SIGTERM by its PID, a bounded wait, then SIGKILL; always reaped.
pub fn stop_child(mut child: Child) {
    sigterm(child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// lab/scripted_server.py in place of vsftpd (stopped first), with `flags`:
/// a scripted FTP server for what real servers won't do on demand (reset a
/// RETR, stall, echo after AUTH, one passive port for every session). Its
/// PID file sits in the run directory, so `netns.sh down` stops it if the
/// test dies; each transfer adds one JSON line to `report`.
pub struct ScriptedServer {
    child: Option<Child>,
    pub report: PathBuf,
}

impl ScriptedServer {
    pub fn start(lab: &Lab, flags: &[&str]) -> Self {
        Self::start_at(lab, SERVER_IP, flags)
    }

    /// A scripted server on `ip`:21. On SERVER_IP it takes vsftpd's place;
    /// on another address of the server namespace (added by the caller) it
    /// runs beside the first, with its own report and pidfile.
    pub fn start_at(lab: &Lab, ip: &str, flags: &[&str]) -> Self {
        let name =
            if ip == SERVER_IP { "scripted-server".to_string() } else { format!("scripted-server-{ip}") };
        if ip == SERVER_IP {
            let servers = repo_root().join("lab/servers.sh");
            let out = run_bounded(30, &[servers.to_str().unwrap(), "stop", &lab.name, "vsftpd"]);
            assert!(out.status.success(), "stop vsftpd: {}", text(&out.stderr));
        }
        let report = lab.run.join(format!("{name}.jsonl"));
        let _ = fs::remove_file(&report);
        let stderr = fs::File::create(lab.run.join(format!("{name}.err"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(Ns::Server), "python3"])
            .arg(repo_root().join("lab/scripted_server.py"))
            .arg("--root")
            .arg(lab.run.join("ftproot"))
            .arg("--report")
            .arg(&report)
            .arg("--pidfile")
            .arg(lab.run.join(format!("{name}.pid")))
            .args(["--listen", &format!("{ip}:21"), "--lifetime", "150"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn lab/scripted_server.py");
        let mut server = Self { child: Some(child), report };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = lab.exec(Ns::Server, 5, &["ss", "-Hltn", "sport = :21"]);
            if text(&out.stdout).contains(&format!("{ip}:21")) {
                return server;
            }
            if let Some(st) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "scripted server exited at start ({st}): {}",
                    fs::read_to_string(lab.run.join(format!("{name}.err"))).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "scripted server did not listen on {ip}:21 within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server has reported so far.
    pub fn report_text(&self) -> String {
        fs::read_to_string(&self.report).unwrap_or_default()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

/// Run `cmd` with a hard time limit (timeout(1), SIGKILL 5 s later).
pub fn run_bounded(secs: u64, argv: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("-k")
        .arg("5")
        .arg(secs.to_string())
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    out
}

/// Descriptors process `pid` holds, over all its descriptor tables: the
/// main thread's and each event loop's (ftpgate's threads named
/// ftpgate-wN each have a table of their own, src/fdtable.rs; the relay
/// threads a loop starts share it). /proc/PID/fd shows the main thread's
/// alone.
pub fn gateway_fds(pid: u32) -> usize {
    let count = |task: &str| fs::read_dir(format!("/proc/{pid}/task/{task}/fd")).map_or(0, |d| d.count());
    let mut total = count(&pid.to_string());
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return total };
    for task in tasks.flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ftpgate-w") {
            total += count(&task.file_name().to_string_lossy());
        }
    }
    total
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One scrape of the gateway's `--metrics` endpoint at `addr`, from the
/// client namespace, taking at most `secs` seconds.
pub fn scrape_metrics(lab: &Lab, addr: &str, secs: u64) -> String {
    let url = format!("http://{addr}/metrics");
    let max = secs.to_string();
    text(&lab.client_ok(secs + 10, &["curl", "-sS", "--fail", "--max-time", &max, &url]).stdout)
}

/// The value of the series `name{labels}` (labels as the gateway writes
/// them), or None when the scrape has no such line.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing test is
/// reproducible and no dev-dependency is needed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256(path: &Path) -> String {
    let out = run_bounded(60, &["sha256sum", path.to_str().unwrap()]);
    assert!(out.status.success(), "sha256sum {}: {}", path.display(), text(&out.stderr));
    text(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// Assert two files have identical content (size and sha256 in the message).
pub fn assert_same_file(what: &str, expected: &Path, got: &Path) {
    let e = fs::read(expected).unwrap_or_else(|err| panic!("{what}: read {}: {err}", expected.display()));
    let g = fs::read(got).unwrap_or_else(|err| panic!("{what}: read {}: {err}", got.display()));
    if e != g {
        panic!(
            "{what}: content differs: expected {} bytes sha256 {}, got {} bytes sha256 {}",
            e.len(),
            sha256(expected),
            g.len(),
            sha256(got)
        );
    }
}

pub struct Lab {
    pub name: String,
    pub rules: Rules,
    pub run: PathBuf,
    pub server: Server,
    gateway: Option<Child>,
    /// every way the gateway ended (exit status, or "ignored SIGTERM"):
    /// checked when the lab is dropped
    gateway_ends: Vec<Result<ExitStatus, String>>,
    /// the gateway under test is lab/standin/ftpalg.py, not ftpgate
    standin: bool,
    /// substrings of error-level log records the test provokes on purpose
    expected_errors: Mutex<Vec<String>>,
    /// log line numbers of transfer records an assertion already used
    claimed: Mutex<Vec<usize>>,
}

impl Lab {
    /// Bring up lab namespaces with the given rule set, and vsftpd.
    /// The gateway is not started (see `start_gateway`).
    pub fn new(tag: &str, rules: Rules) -> Self {
        Self::with_server(tag, rules, Server::Vsftpd)
    }

    /// Like `new`, with vsftpd settings replaced (`port_enable=NO`).
    pub fn with_vsftpd_settings(tag: &str, rules: Rules, settings: &[&str]) -> Self {
        Self::build(tag, rules, Server::Vsftpd, settings)
    }

    /// Like `new`, with another FTP server than vsftpd.
    pub fn with_server(tag: &str, rules: Rules, server: Server) -> Self {
        Self::build(tag, rules, server, &[])
    }

    fn build(tag: &str, rules: Rules, server: Server, vsftpd_settings: &[&str]) -> Self {
        require_root();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
        let name = format!("fg{tag}{}x{seq}", std::process::id());
        let run = PathBuf::from(format!("/tmp/ftpgate-lab/{name}"));
        let mut lab = Self {
            name,
            rules,
            run,
            server: Server::Vsftpd,
            gateway: None,
            gateway_ends: Vec::new(),
            standin: false,
            expected_errors: Mutex::new(Vec::new()),
            claimed: Mutex::new(Vec::new()),
        };
        // Build the lab; on failure `lab` is dropped, which tears it down.
        let pid = std::process::id().to_string();
        let out = Command::new("timeout")
            .args(["-k", "5", "60"])
            .arg(Self::script())
            .args(["up", &lab.name, rules.arg()])
            .env("FTPGATE_LAB_OWNER", &pid)
            // the lab installs `ftpgate rules` output of the binary under test
            .env("FTPGATE_BIN", gateway_bin())
            .stdin(Stdio::null())
            .output()
            .expect("run lab/netns.sh up");
        assert!(out.status.success(), "lab up {} failed: {}", lab.name, text(&out.stderr));
        let name = lab.name.clone();
        match server {
            Server::Vsftpd => {
                let mut args = vec!["vsftpd", name.as_str()];
                args.extend_from_slice(vsftpd_settings);
                lab.script_ok(300, &args);
            }
            other => {
                let script = repo_root().join("lab/servers.sh");
                let out = run_bounded(300, &[script.to_str().unwrap(), "start", &name, other.arg()]);
                assert!(
                    out.status.success(),
                    "lab/servers.sh start {name} {other:?} failed: {}",
                    text(&out.stderr)
                );
            }
        }
        lab.server = server;
        fs::create_dir_all(lab.client_dir()).unwrap();
        lab
    }

    /// Lab with the gateway already running.
    pub fn with_gateway(tag: &str, rules: Rules) -> Self {
        let mut lab = Self::new(tag, rules);
        lab.start_gateway(&[]);
        lab
    }

    fn script() -> PathBuf {
        repo_root().join("lab/netns.sh")
    }

    fn script_ok(&self, secs: u64, args: &[&str]) -> Output {
        let script = Self::script();
        let mut argv = vec![script.to_str().unwrap()];
        argv.extend_from_slice(args);
        let out = run_bounded(secs, &argv);
        assert!(
            out.status.success(),
            "lab/netns.sh {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// `lab/netns.sh rules NAME add|del nft|iptables`: change the rule set
    /// of the gateway namespace under a running lab.
    pub fn rules(&self, op: &str, form: Rules) {
        let out = Command::new("timeout")
            .args(["-k", "5", "30"])
            .arg(Self::script())
            .args(["rules", &self.name, op, form.arg()])
            .env("FTPGATE_BIN", gateway_bin())
            .stdin(Stdio::null())
            .output()
            .expect("run lab/netns.sh rules");
        assert!(
            out.status.success(),
            "lab/netns.sh rules {op} {form:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    pub fn ns(&self, ns: Ns) -> String {
        let suffix = match ns {
            Ns::Client => "c",
            Ns::Gateway => "g",
            Ns::Server => "s",
            Ns::Narrow => "n",
        };
        format!("{}-{suffix}", self.name)
    }

    /// `lab/netns.sh narrow NAME MTU`: a client host (`Ns::Narrow`,
    /// NARROW_IP and NARROW_IP6) behind the client namespace, which routes
    /// for it over a link of `mtu` bytes on its side; removed with the lab.
    pub fn add_narrow_host(&self, mtu: u16) {
        self.script_ok(30, &["narrow", &self.name, &mtu.to_string()]);
    }

    /// Run a command inside a namespace, bounded by `secs`.
    pub fn exec(&self, ns: Ns, secs: u64, argv: &[&str]) -> Output {
        let nsname = self.ns(ns);
        let mut full = vec!["ip", "netns", "exec", nsname.as_str()];
        full.extend_from_slice(argv);
        run_bounded(secs, &full)
    }

    /// Run in the client namespace and require success.
    pub fn client_ok(&self, secs: u64, argv: &[&str]) -> Output {
        let out = self.exec(Ns::Client, secs, argv);
        if !out.status.success() {
            panic!(
                "client command {argv:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr),
                self.diagnostics()
            );
        }
        out
    }

    // -- the gateway under test ------------------------------------------

    /// Start `ftpgate` in the gateway namespace. `extra` args are appended to
    /// `--listen 0.0.0.0:2121 --log-level debug`. stderr goes to
    /// RUN/ftpgate.log; the PID is recorded so that `down` can stop it too.
    pub fn start_gateway(&mut self, extra: &[&str]) {
        self.start_gateway_on(&[&format!("0.0.0.0:{GW_PORT}")], extra);
    }

    /// Like `start_gateway`, with these `--listen` addresses instead of
    /// 0.0.0.0:2121 (all on port 2121: the lab's rules send FTP there).
    pub fn start_gateway_on(&mut self, listen: &[&str], extra: &[&str]) {
        assert!(self.gateway.is_none(), "gateway already running");
        let log =
            fs::OpenOptions::new().create(true).append(true).open(self.run.join("ftpgate.log")).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(Ns::Gateway)]);
        if standin_requested() {
            // develop/check the lab itself against lab/standin/ftpalg.py
            self.standin = true;
            standin_banner(&format!("lab {} starts it", self.name));
            cmd.arg("python3").arg(repo_root().join("lab/standin/ftpalg.py"));
        } else {
            cmd.arg(gateway_bin());
        }
        for addr in listen {
            cmd.args(["--listen", addr]);
        }
        let child = cmd
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ftpgate");
        // Recorded in lab/lib.sh's pidfile format (PID, start time, boot id,
        // program), so that `netns.sh down`/`gc` stop this gateway after a
        // killed test run, and never a process that reused its PID.
        let program =
            if standin_requested() { repo_root().join("lab/standin/ftpalg.py") } else { gateway_bin() };
        let pid = child.id().to_string();
        self.gateway = Some(child);
        self.script_ok(10, &["record-pid", &self.name, "ftpgate", &pid, program.to_str().unwrap()]);
        // bounded wait for the control listener
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.listeners().iter().any(|l| l.ends_with(&format!(":{GW_PORT}"))) {
                return;
            }
            if let Some(st) = self.gateway.as_mut().unwrap().try_wait().unwrap() {
                self.gateway = None;
                self.gateway_ends.push(Ok(st));
                panic!("ftpgate exited at start ({st}):\n{}", self.gateway_log());
            }
            assert!(
                Instant::now() < deadline,
                "ftpgate did not listen on :{GW_PORT} within 10 s:\n{}",
                self.gateway_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM the gateway and wait (bounded) for it to exit. The caller
    /// may check the status; `Drop` checks it anyway.
    pub fn stop_gateway(&mut self) -> ExitStatus {
        let child = self.gateway.take().expect("gateway not running");
        match self.end_gateway(child, Duration::from_secs(15)) {
            Ok(st) => st,
            Err(e) => panic!("{e}:\n{}", self.gateway_log()),
        }
    }

    /// SIGTERM, bounded wait, SIGKILL after `grace`; the outcome is kept
    /// for the check in `Drop`.
    fn end_gateway(&mut self, mut child: Child, grace: Duration) -> Result<ExitStatus, String> {
        sigterm(child.id());
        let deadline = Instant::now() + grace;
        let end = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    let _ = child.kill();
                    let st = child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
                    break Err(format!("ftpgate ignored SIGTERM for {grace:?} (killed: {st})"));
                }
                Err(e) => break Err(format!("wait for ftpgate: {e}")),
            }
        };
        let _ = fs::remove_file(self.run.join("ftpgate.pid"));
        self.gateway_ends.push(end.clone());
        end
    }

    /// Error-level records (ERRO/CRIT) containing one of `substrings` are
    /// expected: the test provokes them. Any other one fails the test when
    /// the lab is dropped; a panic always does.
    pub fn expect_log_errors(&self, substrings: &[&str]) {
        self.expected_errors.lock().unwrap().extend(substrings.iter().map(|s| s.to_string()));
    }

    /// Why the gateway's run was not clean: an exit other than 0 on SIGTERM,
    /// a panic, an error-level record nobody expected. None when clean.
    fn gateway_verdict(&self) -> Option<String> {
        let mut wrong = Vec::new();
        for end in &self.gateway_ends {
            match end {
                Ok(st) if st.success() => {}
                Ok(st) => wrong.push(format!("ftpgate did not exit 0 on SIGTERM: {st}")),
                Err(e) => wrong.push(e.clone()),
            }
        }
        let expected = self.expected_errors.lock().unwrap().clone();
        for line in self.gateway_log().lines() {
            if line.contains("panicked at") || line.starts_with("Traceback") {
                wrong.push(format!("panic in the gateway log: {line}"));
            } else if matches!(log_level(line), Some("ERRO" | "CRIT"))
                && !expected.iter().any(|e| line.contains(e.as_str()))
            {
                wrong.push(format!("unexpected error record: {line}"));
            }
        }
        if wrong.is_empty() {
            return None;
        }
        Some(format!(
            "lab {}: the gateway's run was not clean:\n  {}\n--- ftpgate.log ---\n{}",
            self.name,
            wrong.join("\n  "),
            self.gateway_log()
        ))
    }

    /// Send `signal` (a kill(1) name: HUP, USR1...) to the running gateway.
    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("gateway not running").id()
    }

    pub fn signal_gateway(&self, signal: &str) {
        let pid = self.gateway.as_ref().expect("gateway not running").id().to_string();
        let st = Command::new("kill").args(["-s", signal, &pid]).status().expect("run kill");
        assert!(st.success(), "kill -s {signal} {pid}: {st}");
    }

    pub fn gateway_running(&mut self) -> bool {
        match self.gateway.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits (bounded by `secs`) until the gateway log holds `message` at
    /// least `count` times; returns the log as it then is.
    pub fn wait_for_log(&self, message: &str, count: usize, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.gateway_log();
            if log.matches(message).count() >= count || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn gateway_log(&self) -> String {
        fs::read_to_string(self.run.join("ftpgate.log")).unwrap_or_default()
    }

    /// Local addresses of TCP listeners in the gateway namespace.
    pub fn listeners(&self) -> Vec<String> {
        let out = self.exec(Ns::Gateway, 10, &["ss", "-Hltn"]);
        text(&out.stdout).lines().filter_map(|l| l.split_whitespace().nth(3).map(str::to_string)).collect()
    }

    /// After the sessions have ended, only the control listener may remain in
    /// the gateway namespace: no data listener leaks. Waits a bounded time
    /// for the gateway to finish closing.
    pub fn assert_no_data_listeners(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let l = self.listeners();
            let extra: Vec<&String> = l.iter().filter(|a| !a.ends_with(&format!(":{GW_PORT}"))).collect();
            if extra.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("data listeners left in the gateway namespace: {extra:?}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // -- files -----------------------------------------------------------

    pub fn pub_dir(&self) -> PathBuf {
        self.run.join("ftproot/pub")
    }
    pub fn upload_dir(&self) -> PathBuf {
        self.run.join("ftproot/upload")
    }
    /// Where client-side files live (shared filesystem, any namespace).
    pub fn client_dir(&self) -> PathBuf {
        self.run.join("client")
    }
    pub fn client_path(&self, name: &str) -> String {
        self.client_dir().join(name).to_str().unwrap().to_string()
    }

    /// Put a file of `len` pattern bytes into the server's /pub.
    pub fn server_file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.pub_dir().join(name);
        fs::write(&p, pattern(len, len as u64 ^ 0x5eed)).unwrap();
        let _ = Command::new("chmod").arg("644").arg(&p).status();
        p
    }

    pub fn vsftpd_log(&self) -> String {
        fs::read_to_string(self.run.join("vsftpd.log")).unwrap_or_default()
    }

    /// Every client address vsftpd logged (`Client "a.b.c.d"`).
    pub fn server_seen_clients(&self) -> Vec<String> {
        let log = self.vsftpd_log();
        let mut v = Vec::new();
        let mut rest = log.as_str();
        while let Some(i) = rest.find("Client \"") {
            rest = &rest[i + 8..];
            if let Some(j) = rest.find('"') {
                v.push(unmapped(&rest[..j]));
                rest = &rest[j..];
            }
        }
        v
    }

    /// vsftpd saw at least `min_connects` sessions, every one of them (and
    /// every logged command/transfer) from the real client address, never
    /// from one of the gateway's addresses.
    pub fn assert_server_saw_only_client(&self, min_connects: usize) {
        let log = self.vsftpd_log();
        let connects = log.lines().filter(|l| l.contains("CONNECT: Client")).count();
        let seen = self.server_seen_clients();
        let bad: Vec<&String> = seen.iter().filter(|a| a.as_str() != CLIENT_IP).collect();
        assert!(
            bad.is_empty()
                && !log.contains(&format!("\"{GW_SERVER_IP}\""))
                && !log.contains(&format!("\"{GW_CLIENT_IP}\"")),
            "vsftpd saw other addresses than {CLIENT_IP}: {bad:?}\n{}",
            self.diagnostics()
        );
        assert!(
            connects >= min_connects,
            "vsftpd logged {connects} sessions, expected at least {min_connects}\n{}",
            self.diagnostics()
        );
    }

    /// Client address of every transfer in the server's transfer log
    /// (xferlog for vsftpd and proftpd: 7th field; pure-ftpd's CLF: 1st).
    pub fn server_transfer_clients(&self) -> Vec<String> {
        let (file, field) = match self.server {
            Server::Vsftpd => ("xferlog", 6),
            Server::Proftpd => ("proftpd.xferlog", 6),
            Server::PureFtpd => ("pure-ftpd.xferlog", 0),
        };
        fs::read_to_string(self.run.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(field).map(unmapped))
            .collect()
    }

    /// At least `min` transfers in the server's transfer log, every one from
    /// the real client's address (works for every `Server`).
    pub fn assert_transfers_from_client(&self, min: usize) {
        let seen = self.server_transfer_clients();
        assert!(
            seen.len() >= min && seen.iter().all(|a| a == CLIENT_IP),
            "{:?} transfer log: want >= {min} transfers all from {CLIENT_IP}, got {seen:?}\n{}",
            self.server,
            self.diagnostics()
        );
    }

    /// Count of vsftpd's `OK DOWNLOAD` / `OK UPLOAD` records.
    pub fn server_transfers(&self) -> (usize, usize) {
        let log = self.vsftpd_log();
        (
            log.lines().filter(|l| l.contains("OK DOWNLOAD")).count(),
            log.lines().filter(|l| l.contains("OK UPLOAD")).count(),
        )
    }

    // -- ftpgate's transfer records ----------------------------------------

    /// Every transfer record in RUN/ftpgate.log, in log order.
    pub fn transfer_records(&self) -> Vec<TransferRecord> {
        self.gateway_log().lines().enumerate().filter_map(|(i, l)| TransferRecord::parse(i, l)).collect()
    }

    /// ftpgate logged a successful transfer in `mode` of `verb` (RETR, STOR,
    /// APPE, LIST, NLST) whose argument ends with `path_suffix`, with
    /// exactly `bytes` bytes toward the receiver (to_client for downloads
    /// and listings, to_server for uploads) and none the other way. Waits a
    /// bounded time for the record (the gateway writes it when the reply is
    /// released). Each record serves one assertion only: two equal transfers
    /// need two records.
    pub fn assert_transfer(
        &self,
        mode: TransferMode,
        verb: &str,
        path_suffix: &str,
        bytes: u64,
    ) -> TransferRecord {
        self.assert_transfer_result(mode, verb, path_suffix, "ok", Some(bytes))
    }

    /// Like `assert_transfer` with any `result` (ok, failed, aborted), and
    /// the byte count checked only when given.
    pub fn assert_transfer_result(
        &self,
        mode: TransferMode,
        verb: &str,
        path_suffix: &str,
        result: &str,
        bytes: Option<u64>,
    ) -> TransferRecord {
        let want = format!(
            "{} {verb} ...{path_suffix}, result {result}, {}",
            mode.as_str(),
            bytes.map_or_else(|| "any byte count".to_string(), |b| format!("{b} bytes"))
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.transfer_records();
            {
                let mut claimed = self.claimed.lock().unwrap();
                if let Some(r) = records
                    .iter()
                    .find(|r| !claimed.contains(&r.line) && r.matches(mode, verb, path_suffix, result, bytes))
                {
                    claimed.push(r.line);
                    return r.clone();
                }
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = records
                    .iter()
                    .map(|r| {
                        let used =
                            if self.claimed.lock().unwrap().contains(&r.line) { " (used)" } else { "" };
                        format!("  {r}{used}")
                    })
                    .collect();
                panic!(
                    "no transfer record for {want} in ftpgate.log; its transfer records:\n{}\n--- ftpgate.log ---\n{}\n{}",
                    seen.join("\n"),
                    self.gateway_log(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn diagnostics(&self) -> String {
        let tail = |s: String, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- lab {} ({:?} rules, {:?}) ---\n--- ftpgate.log (tail) ---\n{}\n--- server log (tail) ---\n{}\n--- listeners in gateway ns ---\n{:?}",
            self.name,
            self.rules,
            self.server,
            tail(self.gateway_log(), 60),
            match self.server {
                Server::Vsftpd => tail(self.vsftpd_log(), 40),
                other => {
                    let name = other.arg();
                    let read = |f: &str| fs::read_to_string(self.run.join(f)).unwrap_or_default();
                    format!(
                        "({name}.out)\n{}\n(transfer log)\n{}",
                        tail(read(&format!("{name}.out")), 20),
                        tail(read(if other == Server::Proftpd { "proftpd.xferlog" } else { "pure-ftpd.xferlog" }), 20)
                    )
                }
            },
            self.listeners()
        )
    }
}

impl Drop for Lab {
    /// Tears the lab down, always. When the test has not failed already,
    /// also checks the gateway's run (exit 0 on SIGTERM, a clean log) and
    /// fails the test after the teardown if it was not clean. No check runs
    /// while unwinding: a second panic would abort the test binary.
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(child) = self.gateway.take() {
            let _ = self.end_gateway(child, Duration::from_secs(10));
        }
        let verdict = if failing { None } else { self.gateway_verdict() };
        if self.standin {
            standin_banner(&format!("lab {} ran against it", self.name));
        } else if standin_requested() {
            standin_banner(&format!("requested; lab {} started no gateway at all", self.name));
        }
        let _ = run_bounded(60, &[Self::script().to_str().unwrap(), "down", &self.name]);
        if let Some(why) = verdict {
            panic!("{why}");
        }
    }
}

/// A server log's address with an IPv4-mapped IPv6 address as its IPv4
/// address: a dual-stack server (vsftpd on [::]:21) logs an IPv4 client as
/// `::ffff:192.0.2.10`, which is the same client.
pub fn unmapped(addr: &str) -> String {
    match addr.strip_prefix("::ffff:") {
        Some(v4) if v4.parse::<std::net::Ipv4Addr>().is_ok() => v4.to_string(),
        _ => addr.to_string(),
    }
}

// -- ftpgate's log -----------------------------------------------------------

/// The level of a slog-term "full" record (`Nov 27 14:27:42.708 INFO msg,
/// k: v, ...`): the fourth word.
fn log_level(line: &str) -> Option<&str> {
    let level = line.split_whitespace().nth(3)?;
    matches!(level, "TRCE" | "DEBG" | "INFO" | "WARN" | "ERRO" | "CRIT").then_some(level)
}

/// The data mode of a transfer as ftpgate logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferMode {
    Passive,
    Active,
}

impl TransferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::Active => "active",
        }
    }

    pub fn of(passive: bool) -> Self {
        if passive {
            Self::Passive
        } else {
            Self::Active
        }
    }
}

/// The `key: value` pairs of a log record's body (`a: 1, why: x, y, b: 2`),
/// `key` being `[a-z_][a-z0-9_]*`. A value runs to the next such pair, not
/// to the next comma: a failure's `why` and a file name may hold commas.
/// slog prints the pairs in no order worth relying on and records grow
/// keys, so none is assumed.
pub fn key_values(body: &str) -> Vec<(String, String)> {
    let is_key = |k: &str| {
        k.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let line = format!(", {body}");
    // (where the pair starts, where its value starts, key)
    let mut pairs: Vec<(usize, usize, &str)> = Vec::new();
    for (i, _) in line.match_indices(", ") {
        let rest = &line[i + 2..];
        if let Some(colon) = rest.find(": ") {
            let key = &rest[..colon];
            if is_key(key) {
                pairs.push((i, i + 2 + colon + 2, key));
            }
        }
    }
    pairs
        .iter()
        .enumerate()
        .map(|(n, &(_, from, key))| {
            let to = pairs.get(n + 1).map_or(line.len(), |&(next, _, _)| next);
            (key.to_string(), line[from..to].trim().to_string())
        })
        .collect()
}

/// One `transfer` record of ftpgate's log, e.g.
/// `... INFO transfer, result: ok, reply: 226, ms: 8, to_server: 0,
/// to_client: 4206649, rest: -, path: x.bin, command: RETR, user: anonymous,
/// mode: passive, data: 0, server: ..., client: ..., session: 2`. Keys the
/// harness does not know (a failure's `why`, say) are kept in `fields`.
/// The older form without `path` (`command: RETR x.bin (REST 10)`, still
/// written by lab/standin) reads the same.
#[derive(Clone, Debug)]
pub struct TransferRecord {
    /// line number in ftpgate.log (identifies the record)
    pub line: usize,
    pub level: String,
    pub mode: String,
    pub command: String,
    pub result: String,
    pub to_client: Option<u64>,
    pub to_server: Option<u64>,
    pub reply: String,
    /// every key-value pair, in the order logged
    pub fields: Vec<(String, String)>,
}

impl TransferRecord {
    /// The record on log line `line`, if it is a transfer record.
    pub fn parse(line: usize, text: &str) -> Option<Self> {
        let level = log_level(text)?;
        let start = text.find(&format!(" {level} "))? + level.len() + 2;
        let body = &text[start..];
        let kv = body.strip_prefix("transfer, ")?;
        let fields = key_values(kv);
        if fields.is_empty() {
            return None;
        }
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        Some(Self {
            line,
            level: level.to_string(),
            mode: get("mode").unwrap_or_default(),
            command: get("command").unwrap_or_default(),
            result: get("result").unwrap_or_default(),
            to_client: get("to_client").and_then(|v| v.parse().ok()),
            to_server: get("to_server").and_then(|v| v.parse().ok()),
            reply: get("reply").unwrap_or_default(),
            fields,
        })
    }

    /// The value of `key` (first occurrence), known or not.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The command's verb, upper case, and its argument (without the
    /// restart note of the older form: `RETR x.bin (REST 300000)`).
    pub fn verb_and_arg(&self) -> (String, &str) {
        if let Some(path) = self.get("path") {
            let path = if path == "-" { "" } else { path };
            return (self.command.to_ascii_uppercase(), path);
        }
        let (verb, arg) = self.command.split_once(' ').unwrap_or((self.command.as_str(), ""));
        let arg = match self.restart_offset() {
            Some(_) => arg.rsplit_once(" (REST ").map_or(arg, |(a, _)| a),
            None => arg,
        };
        (verb.to_ascii_uppercase(), arg)
    }

    /// The REST offset the transfer started from, if ftpgate noted one.
    pub fn restart_offset(&self) -> Option<u64> {
        if let Some(rest) = self.get("rest") {
            return rest.parse().ok();
        }
        let (_, note) = self.command.rsplit_once(" (REST ")?;
        note.strip_suffix(')')?.parse().ok()
    }

    fn matches(
        &self,
        mode: TransferMode,
        verb: &str,
        path_suffix: &str,
        result: &str,
        bytes: Option<u64>,
    ) -> bool {
        let (v, arg) = self.verb_and_arg();
        let upload = matches!(v.as_str(), "STOR" | "APPE" | "STOU");
        let bytes_ok = match bytes {
            None => true,
            Some(n) if upload => self.to_server == Some(n) && self.to_client == Some(0),
            Some(n) => self.to_client == Some(n) && self.to_server == Some(0),
        };
        self.mode == mode.as_str()
            && v == verb.to_ascii_uppercase()
            && arg.ends_with(path_suffix)
            && self.result == result
            && bytes_ok
    }
}

impl std::fmt::Display for TransferRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: {} {} -> {} (reply {}, to_client {:?}, to_server {:?})",
            self.line + 1,
            self.mode,
            self.command,
            self.result,
            self.reply,
            self.to_client,
            self.to_server
        )
    }
}

// -- clients -----------------------------------------------------------------

/// How a client opens data connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// EPSV (curl's default)
    Epsv,
    /// PASV
    Pasv,
    /// EPRT (curl's default for -P)
    Eprt,
    /// PORT
    Port,
}

impl Mode {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Eprt | Self::Port)
    }

    pub fn transfer_mode(self) -> TransferMode {
        TransferMode::of(!self.is_active())
    }
}

fn curl_mode_args(mode: Mode) -> Vec<&'static str> {
    match mode {
        Mode::Epsv => vec![],
        Mode::Pasv => vec!["--disable-epsv"],
        Mode::Eprt => vec!["-P", CLIENT_IP],
        Mode::Port => vec!["-P", CLIENT_IP, "--disable-eprt"],
    }
}

pub fn curl_get(lab: &Lab, mode: Mode, remote: &str, local: &str) {
    curl_download(lab, SERVER_IP, curl_mode_args(mode), remote, local);
}

pub fn curl_put(lab: &Lab, mode: Mode, local: &str, remote: &str) {
    curl_upload(lab, SERVER_IP, curl_mode_args(mode), local, remote);
}

/// One curl download of /pub/`remote` from `server_ip` into `local`.
fn curl_download(lab: &Lab, server_ip: &str, mode_args: Vec<&str>, remote: &str, local: &str) {
    let url = format!("ftp://{}/pub/{remote}", url_host(server_ip));
    let mut argv = vec!["curl", "-sS", "--max-time", "30", "--connect-timeout", "10"];
    argv.extend(mode_args);
    argv.extend(["-o", local, url.as_str()]);
    lab.client_ok(90, &argv);
    // curl does not create the output file for an empty download
    if !Path::new(local).exists() {
        fs::write(local, b"").unwrap();
    }
}

/// One curl upload of `local` to /upload/`remote` on `server_ip`.
fn curl_upload(lab: &Lab, server_ip: &str, mode_args: Vec<&str>, local: &str, remote: &str) {
    let url = format!("ftp://{}/upload/{remote}", url_host(server_ip));
    let mut argv = vec!["curl", "-sS", "--max-time", "30", "--connect-timeout", "10"];
    argv.extend(mode_args);
    argv.extend(["-T", local, url.as_str()]);
    lab.client_ok(90, &argv);
}

/// One lftp session: `gets` (remote in /pub, local) then `puts` (local,
/// remote in /upload).
pub fn lftp_session(lab: &Lab, passive: bool, gets: &[(&str, &str)], puts: &[(&str, &str)]) {
    // PASV/PORT over IPv4, as most lftp users see it
    lftp_run(lab, SERVER_IP, passive, "set ftp:prefer-epsv no; ", gets, puts);
}

/// One lftp session with the server at `server_ip`, `settings` added to the
/// common ones.
fn lftp_run(
    lab: &Lab,
    server_ip: &str,
    passive: bool,
    settings: &str,
    gets: &[(&str, &str)],
    puts: &[(&str, &str)],
) {
    let mut script = format!(
        "set net:max-retries 1; set net:timeout 20; set net:reconnect-interval-base 1; \
         set ftp:ssl-allow no; set ftp:passive-mode {}; {settings}set xfer:clobber yes; \
         open -u anonymous,lab@example.org ftp://{}; ",
        if passive { "on" } else { "off" },
        url_host(server_ip)
    );
    for (r, l) in gets {
        script.push_str(&format!("get /pub/{r} -o {l}; "));
    }
    for (l, r) in puts {
        script.push_str(&format!("put {l} -o /upload/{r}; "));
    }
    script.push_str("bye");
    lab.client_ok(120, &["lftp", "-c", &script]);
}

/// lab/hostile_client.py in the client namespace with `args` (its first
/// is the attack), bounded by `secs`; returns its JSON report.
pub fn hostile_client(lab: &Lab, secs: u64, args: &[&str]) -> String {
    let script = repo_root().join("lab/hostile_client.py");
    let mut argv = vec!["python3", script.to_str().unwrap()];
    argv.extend_from_slice(args);
    text(&lab.client_ok(secs, &argv).stdout)
}

/// The raw value of `key` in a flat JSON object printed by Python's
/// json.dumps (`"key": value`): a string without its quotes (the lab's
/// values hold no escaped quote), or a number / true / false / null as
/// written. Nested objects: pass the part of the text that holds the one
/// wanted.
pub fn json_raw(obj: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\": ");
    let rest = &obj[obj.find(&needle)? + needle.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// One python ftplib session (lab/ftpclient.py); returns its JSON report.
pub fn ftplib_session(lab: &Lab, passive: bool, gets: &[(&str, &str)], puts: &[(&str, &str)]) -> String {
    ftplib_session_at(lab, SERVER_IP, passive, gets, puts)
}

/// The standard round trip of a scenario in one data mode: download an
/// empty and a multi-MiB file (`big_size(mode)`), upload both back under
/// new names, and compare contents. `get(remote, local)` and `put(local,
/// remote)` perform one transfer each (or `session` does all of them in one
/// control session).
pub struct RoundTrip {
    pub mode: TransferMode,
    pub files: Vec<(String, PathBuf)>,
}

impl RoundTrip {
    pub fn prepare(lab: &Lab, tag: &str, mode: TransferMode) -> Self {
        let files = vec![
            (format!("{tag}-empty.bin"), lab.server_file(&format!("{tag}-empty.bin"), 0)),
            (format!("{tag}-big.bin"), lab.server_file(&format!("{tag}-big.bin"), big_size(mode))),
        ];
        Self { mode, files }
    }

    /// (remote name in /pub, local path) for every download
    pub fn gets(&self, lab: &Lab) -> Vec<(String, String)> {
        self.files.iter().map(|(n, _)| (n.clone(), lab.client_path(&format!("dl-{n}")))).collect()
    }

    /// (local path, remote name in /upload) for every upload
    pub fn puts(&self, lab: &Lab) -> Vec<(String, String)> {
        self.files.iter().map(|(n, _)| (lab.client_path(&format!("dl-{n}")), format!("up-{n}"))).collect()
    }

    /// Contents on both ends, and ftpgate's record of every transfer.
    pub fn verify(&self, lab: &Lab) {
        for (n, src) in &self.files {
            let dl = lab.client_dir().join(format!("dl-{n}"));
            assert_same_file(&format!("download of {n}"), src, &dl);
            let up = lab.upload_dir().join(format!("up-{n}"));
            assert_same_file(&format!("upload of {n}"), src, &up);
        }
        for (n, src) in &self.files {
            let len = fs::metadata(src).unwrap().len();
            lab.assert_transfer(self.mode, "RETR", n, len);
            lab.assert_transfer(self.mode, "STOR", &format!("up-{n}"), len);
        }
    }
}

/// Convert `[(String, String)]` to `[(&str, &str)]`.
pub fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Full curl scenario: every download and upload in its own curl session.
pub fn curl_scenario(tag: &str, rules: Rules, mode: Mode) {
    let lab = Lab::with_gateway(tag, rules);
    let rt = RoundTrip::prepare(&lab, tag, mode.transfer_mode());
    for (r, l) in rt.gets(&lab) {
        curl_get(&lab, mode, &r, &l);
    }
    for (l, r) in rt.puts(&lab) {
        curl_put(&lab, mode, &l, &r);
    }
    rt.verify(&lab);
    let n = rt.files.len() * 2;
    lab.assert_server_saw_only_client(n);
    lab.assert_transfers_from_client(n);
    assert_eq!(lab.server_transfers(), (rt.files.len(), rt.files.len()), "{}", lab.diagnostics());
    lab.assert_no_data_listeners();
}

// -- clients by server address (IPv6) ------------------------------------------

/// `ip` as the host part of a URL: an IPv6 literal in brackets.
pub fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// curl's data-mode flags for a server at any address: active mode names
/// no address (`-P -`: the control connection's own, IPv4 or IPv6).
fn curl_mode_args_any(mode: Mode) -> Vec<&'static str> {
    match mode {
        Mode::Epsv => vec![],
        Mode::Pasv => vec!["--disable-epsv"],
        Mode::Eprt => vec!["-P", "-"],
        Mode::Port => vec!["-P", "-", "--disable-eprt"],
    }
}

/// Like `curl_get`, from the server at `server_ip` (IPv4 or IPv6).
pub fn curl_get_at(lab: &Lab, server_ip: &str, mode: Mode, remote: &str, local: &str) {
    curl_download(lab, server_ip, curl_mode_args_any(mode), remote, local);
}

/// Like `curl_put`, to the server at `server_ip` (IPv4 or IPv6).
pub fn curl_put_at(lab: &Lab, server_ip: &str, mode: Mode, local: &str, remote: &str) {
    curl_upload(lab, server_ip, curl_mode_args_any(mode), local, remote);
}

/// Like `lftp_session`, with the server at `server_ip`. Over IPv6 lftp
/// uses EPSV (passive) and EPRT (active): PASV and PORT cannot name an
/// IPv6 address.
pub fn lftp_session_at(
    lab: &Lab,
    server_ip: &str,
    passive: bool,
    gets: &[(&str, &str)],
    puts: &[(&str, &str)],
) {
    lftp_run(lab, server_ip, passive, "", gets, puts);
}

/// Like `ftplib_session`, with the server at `server_ip` (ftplib uses
/// EPSV/EPRT on an IPv6 control connection).
pub fn ftplib_session_at(
    lab: &Lab,
    server_ip: &str,
    passive: bool,
    gets: &[(&str, &str)],
    puts: &[(&str, &str)],
) -> String {
    let script = repo_root().join("lab/ftpclient.py");
    let gets: Vec<(String, String)> =
        gets.iter().map(|(r, l)| (format!("/pub/{r}"), l.to_string())).collect();
    let puts: Vec<(String, String)> =
        puts.iter().map(|(l, r)| (l.to_string(), format!("/upload/{r}"))).collect();
    let mut argv: Vec<&str> = vec![
        "python3",
        script.to_str().unwrap(),
        "--host",
        server_ip,
        "--mode",
        if passive { "passive" } else { "active" },
    ];
    for (r, l) in &gets {
        argv.extend(["--get", r.as_str(), l.as_str()]);
    }
    for (l, r) in &puts {
        argv.extend(["--put", l.as_str(), r.as_str()]);
    }
    text(&lab.client_ok(120, &argv).stdout)
}

/// The `"peer": [ip, port]` of every data connection in an ftpclient.py
/// report, as the client saw it.
pub fn ftplib_peers(report: &str) -> Vec<(String, u16)> {
    let mut v = Vec::new();
    let mut rest = report;
    while let Some(i) = rest.find("\"peer\": [\"") {
        rest = &rest[i + 10..];
        let Some(j) = rest.find('"') else { break };
        let ip = rest[..j].to_string();
        rest = &rest[j + 1..];
        let Some(k) = rest.find(']') else { break };
        let port = rest[..k].trim_start_matches(',').trim().parse().unwrap_or(0);
        v.push((ip, port));
    }
    v
}

// -- ftpgate doctor ---------------------------------------------------------------

/// `ftpgate doctor` in the gateway namespace with the flags the lab gives
/// `ftpgate rules` (lab/netns.sh `rules_args`), after `prefix` (a command
/// to run it under, such as setpriv).
pub fn lab_doctor(lab: &Lab, prefix: &[&str]) -> Output {
    let bin = gateway_bin();
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.push(bin.to_str().unwrap());
    argv.extend([
        "--listen",
        "0.0.0.0:2121",
        "--listen",
        "[::]:2121",
        "doctor",
        "--profile",
        "strict",
        "--client-interface",
        "gw-c",
    ]);
    lab.exec(Ns::Gateway, 30, &argv)
}

/// Starts the gateway with a configuration file holding `[policy]`.
pub fn start_with_policy(lab: &mut Lab, policy: &str) {
    let path = lab.run.join("ftpgate.toml");
    fs::write(&path, format!("[policy]\n{policy}")).unwrap();
    lab.start_gateway(&["--config", path.to_str().unwrap()]);
}

// -- the router's own firewall --------------------------------------------------

/// What most router rule sets do besides ftpgate's: drop every packet that
/// conntrack finds INVALID, in every hook the gateway's packets pass
/// (prerouting, input, forward, output), counting what each drops. Added
/// in the gateway's namespace, beside ftpgate's own rules.
pub fn add_invalid_drop(lab: &Lab, rules: Rules) {
    let script = match rules {
        Rules::Nft => {
            let mut s = String::from("table inet routerfw {\n");
            for (chain, hook, prio) in [
                ("c_prerouting", "prerouting", "-150"),
                ("c_input", "input", "0"),
                ("c_forward", "forward", "0"),
                ("c_output", "output", "0"),
            ] {
                s += &format!(
                    "  chain {chain} {{\n    type filter hook {hook} priority {prio}; policy accept;\n    ct state invalid counter drop\n  }}\n"
                );
            }
            s += "}\n";
            let path = lab.run.join("routerfw.nft");
            fs::write(&path, s).unwrap();
            vec![vec!["nft".to_string(), "-f".to_string(), path.display().to_string()]]
        }
        Rules::Iptables => {
            [("mangle", "PREROUTING"), ("filter", "INPUT"), ("filter", "FORWARD"), ("filter", "OUTPUT")]
                .iter()
                .flat_map(|(table, chain)| {
                    ["iptables", "ip6tables"].map(|tool| {
                        [
                            tool,
                            "-t",
                            table,
                            "-I",
                            chain,
                            "1",
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "INVALID",
                            "-j",
                            "DROP",
                        ]
                        .map(String::from)
                        .to_vec()
                    })
                })
                .collect()
        }
        Rules::None => panic!("no firewall to add to"),
    };
    for argv in script {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = lab.exec(Ns::Gateway, 20, &argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
    }
}

/// None of the packets so far was dropped by the rules of
/// `add_invalid_drop`: conntrack found none of them INVALID.
pub fn assert_no_invalid_drops(lab: &Lab, rules: Rules) {
    let dropped = invalid_dropped(lab, rules);
    assert_eq!(dropped, 0, "conntrack found ftpgate's packets INVALID\n{}", lab.diagnostics());
}

/// Packets the rules of `add_invalid_drop` dropped so far.
pub fn invalid_dropped(lab: &Lab, rules: Rules) -> u64 {
    let listings: Vec<Vec<&str>> = match rules {
        Rules::Nft => vec![vec!["nft", "list", "table", "inet", "routerfw"]],
        _ => ["iptables", "ip6tables"]
            .iter()
            .flat_map(|tool| {
                ["mangle", "filter"].map(|table| vec![*tool, "-t", table, "-L", "-v", "-x", "-n"])
            })
            .collect(),
    };
    let mut dropped = 0;
    for argv in listings {
        let out = lab.exec(Ns::Gateway, 20, &argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
        for line in text(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if rules == Rules::Nft {
                if let Some(i) = words.iter().position(|w| *w == "packets") {
                    dropped += words[i + 1].parse::<u64>().unwrap();
                }
            } else if line.contains("INVALID") {
                dropped += words[0].parse::<u64>().unwrap();
            }
        }
    }
    dropped
}
