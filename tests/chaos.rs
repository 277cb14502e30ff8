//! Under attack and chaos (issue 12), through the real daemon, vsftpd and
//! real clients, each test bounded in time:
//! - 200 sessions transfer at once (python ftplib and curl, passive and
//!   active, downloads and uploads, every file a size of its own, every
//!   byte compared) while hostile sessions run: bounce, passive port theft,
//!   junk (an HTTP request, a TLS ClientHello, a flood of binary lines),
//!   slowloris, a hostile server's 227 naming a third host, and a burst of
//!   failed logins. Every hostile session gets its refusal and its record,
//!   and the gateway's descriptors and listeners return to what they were;
//! - `kill -9` of vsftpd's processes serving transfers, and of a client, in
//!   the middle of transfers: the other sessions go on, the broken transfers
//!   never get a 2xx and are recorded failed, a new transfer works
//!   afterwards, nothing leaks.
//!
//! Each attack comes from its own client address, so its records are found
//! by `client: ADDR:`. vsftpd is restarted with room for the load
//! (lab/chaos_vsftpd.sh); lab/chaos_load.py drives the load,
//! lab/chaos_hostile.py the attacks, lab/hostile_server.py the third-host 227.
mod common;

use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_same_file, pattern, repo_root, run_bounded, sha256, text, Lab, Ns, Rules, TransferMode, CLIENT_IP,
};

/// The hostile server's address, beside vsftpd's in the server namespace.
const HOSTILE_SERVER_IP: &str = "198.51.100.11";
/// Idle deadline of the attack test: slowloris must be cut after it.
const IDLE_TIMEOUT: u64 = 6;
/// Failed logins after which a client address is refused for a while.
const MAX_LOGIN_FAILURES: usize = 3;

// -- small helpers ------------------------------------------------------------

/// The gateway's PID: the first field of its pidfile (lab/lib.sh format).
fn gateway_pid(lab: &Lab) -> u32 {
    let pidfile = fs::read_to_string(lab.run.join("ftpgate.pid")).unwrap();
    pidfile.split_whitespace().next().unwrap().parse().unwrap()
}

fn fd_count(pid: u32) -> usize {
    common::gateway_fds(pid)
}

/// What must be the same before and after: the gateway's open descriptors
/// and the listening sockets of its namespace.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    listeners: Vec<String>,
}

fn footprint(lab: &Lab, pid: u32) -> Footprint {
    let mut listeners = lab.listeners();
    listeners.sort();
    Footprint { fds: fd_count(pid), listeners }
}

/// Waits (bounded) until the footprint is back to `before`; the last one
/// seen otherwise.
fn settle(lab: &Lab, pid: u32, before: &Footprint, secs: u64) -> Result<(), Footprint> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = footprint(lab, pid);
        if &now == before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn add_addr(lab: &Lab, ns: Ns, cidr: &str) {
    let out = lab.exec(ns, 10, &["ip", "addr", "add", cidr, "dev", "eth0"]);
    assert!(out.status.success(), "ip addr add {cidr}: {}", text(&out.stderr));
}

/// vsftpd restarted with room for `max` sessions (lab/chaos_vsftpd.sh).
fn roomy_vsftpd(lab: &Lab, max: usize) {
    paced_vsftpd(lab, max, 0);
}

/// Like `roomy_vsftpd`, each session's data paced at `rate` bytes/s (0:
/// not paced).
fn paced_vsftpd(lab: &Lab, max: usize, rate: usize) {
    let script = repo_root().join("lab/chaos_vsftpd.sh");
    let out = run_bounded(60, &[script.to_str().unwrap(), &lab.name, &max.to_string(), &rate.to_string()]);
    assert!(out.status.success(), "chaos_vsftpd.sh: {}{}", text(&out.stdout), text(&out.stderr));
}

/// A python script of lab/ started in the client namespace, bounded by
/// `secs`, its stdout captured.
fn spawn_client(lab: &Lab, secs: u64, script: &str, args: &[&str]) -> Child {
    Command::new("timeout")
        .args(["-k", "5", &secs.to_string(), "ip", "netns", "exec", &lab.ns(Ns::Client), "python3"])
        .arg(repo_root().join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"))
}

fn finish(child: Child, what: &str) -> String {
    let out: Output = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The raw JSON value of `key` in a one-line object: a string without its
/// quotes (escapes kept), or the literal of a number/true/false/null.
fn json(obj: &str, key: &str) -> Option<String> {
    let at = obj.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &obj[at..];
    if let Some(s) = rest.strip_prefix('"') {
        let mut end = None;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        return Some(s[..end?].to_string());
    }
    Some(rest.split([',', '}']).next()?.trim().to_string())
}

/// ftpgate's log records of the sessions of client address `ip`.
fn records_of(lab: &Lab, ip: &str) -> Vec<String> {
    let needle = format!("client: {ip}:");
    lab.gateway_log().lines().filter(|l| l.contains(&needle)).map(str::to_string).collect()
}

/// The commands vsftpd logged from client address `ip` (log_ftp_protocol:
/// `FTP command: Client "ADDR", "VERB ARG"`).
fn server_commands_of(lab: &Lab, ip: &str) -> Vec<String> {
    let needle = format!("FTP command: Client \"{ip}\", \"");
    lab.vsftpd_log().lines().filter(|l| l.contains(&needle)).map(str::to_string).collect()
}

/// A failed check, kept so that one run reports every failure.
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

// -- the hostile server -----------------------------------------------------

/// lab/hostile_server.py on HOSTILE_SERVER_IP:21 in the server namespace;
/// its PID is recorded in the run directory, so `netns.sh down` stops it if
/// this test dies.
struct HostileServer {
    child: Option<Child>,
}

impl HostileServer {
    fn start(lab: &Lab) -> Self {
        add_addr(lab, Ns::Server, &format!("{HOSTILE_SERVER_IP}/24"));
        let stderr = fs::File::create(lab.run.join("hostile-server.err")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(Ns::Server), "python3"])
            .arg(repo_root().join("lab/hostile_server.py"))
            .args(["--listen", &format!("{HOSTILE_SERVER_IP}:21"), "--pasv-host", "203.0.113.5"])
            .arg("--report")
            .arg(lab.run.join("hostile-server.jsonl"))
            .args(["--lifetime", "170"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn lab/hostile_server.py");
        let pid = child.id().to_string();
        let python = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let netns = repo_root().join("lab/netns.sh");
        let _ = run_bounded(
            10,
            &[
                netns.to_str().unwrap(),
                "record-pid",
                &lab.name,
                "hostile-server",
                &pid,
                python.to_str().unwrap(),
            ],
        );
        let mut server = Self { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = lab.exec(Ns::Server, 5, &["ss", "-Hltn", "sport = :21"]);
            if text(&out.stdout).contains(&format!("{HOSTILE_SERVER_IP}:21")) {
                return server;
            }
            if let Some(st) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hostile server exited at start ({st})");
            }
            assert!(Instant::now() < deadline, "hostile server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            common::stop_child(c);
        }
    }
}

// -- the load -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Ftplib,
    Curl,
}

/// One transfer of lab/chaos_load.py.
struct Job {
    id: String,
    client: Client,
    upload: bool,
    /// ftplib: pasv, port; curl: epsv, pasv, eprt, port
    mode: &'static str,
    /// file name on the server (in /pub or /upload)
    name: String,
    local: String,
    source: String,
    /// bytes per second at most (0: as fast as it goes)
    rate: u64,
    size: usize,
}

impl Job {
    fn transfer_mode(&self) -> TransferMode {
        TransferMode::of(matches!(self.mode, "epsv" | "pasv"))
    }

    fn verb(&self) -> &'static str {
        if self.upload {
            "STOR"
        } else {
            "RETR"
        }
    }

    fn json(&self) -> String {
        let remote =
            if self.upload { format!("/upload/{}", self.name) } else { format!("/pub/{}", self.name) };
        let rate = if self.rate > 0 { format!(", \"rate\": {}", self.rate) } else { String::new() };
        format!(
            "{{\"id\": \"{}\", \"client\": \"{}\", \"op\": \"{}\", \"mode\": \"{}\", \"remote\": \"{remote}\", \
             \"local\": \"{}\", \"source\": \"{}\"{rate}}}",
            self.id,
            if self.client == Client::Ftplib { "ftplib" } else { "curl" },
            if self.upload { "put" } else { "get" },
            self.mode,
            self.local,
            self.source
        )
    }

    /// The file's content, on the server (download) or the client (upload).
    fn create(&self, lab: &Lab) {
        if self.upload {
            fs::write(&self.local, pattern(self.size, self.size as u64 ^ 0x0f1e)).unwrap();
        } else {
            lab.server_file(&self.name, self.size);
        }
    }

    /// Where the bytes arrived and where they came from.
    fn paths(&self, lab: &Lab) -> (std::path::PathBuf, std::path::PathBuf) {
        if self.upload {
            (self.local.clone().into(), lab.upload_dir().join(&self.name))
        } else {
            (lab.pub_dir().join(&self.name), self.local.clone().into())
        }
    }
}

/// Writes the jobs, starts lab/chaos_load.py on them.
fn start_load(lab: &Lab, tag: &str, jobs: &[Job], secs: u64) -> Child {
    let list: Vec<String> = jobs.iter().map(Job::json).collect();
    let path = lab.run.join(format!("{tag}-jobs.json"));
    fs::write(&path, format!("[\n{}\n]\n", list.join(",\n"))).unwrap();
    let timeout = (secs - 20).to_string();
    spawn_client(lab, secs, "lab/chaos_load.py", &["--jobs", path.to_str().unwrap(), "--timeout", &timeout])
}

/// The loader's report: its summary line, and each job's line by id.
struct LoadReport {
    summary: String,
    jobs: Vec<String>,
}

impl LoadReport {
    fn parse(out: &str) -> Self {
        let mut lines = out.lines().filter(|l| l.starts_with('{'));
        let summary = lines.next().unwrap_or_default().to_string();
        Self { summary, jobs: lines.map(str::to_string).collect() }
    }

    fn job(&self, id: &str) -> &str {
        self.jobs
            .iter()
            .find(|l| json(l, "id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no report of job {id}: {}", self.jobs.join("\n")))
    }

    fn num(&self, key: &str) -> usize {
        json(&self.summary, key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// Every job of `jobs` went through whole: the client says so, the bytes
/// on both ends are the same, and ftpgate has an ok record with the exact
/// byte count.
fn assert_all_whole(lab: &Lab, jobs: &[&Job], report: &LoadReport) {
    for job in jobs {
        let r = report.job(&job.id);
        assert_eq!(
            json(r, "ok").as_deref(),
            Some("true"),
            "job {} did not succeed: {r}\n{}",
            job.id,
            lab.diagnostics()
        );
        let (from, to) = job.paths(lab);
        assert_same_file(
            &format!("job {} ({:?} {} {})", job.id, job.client, job.verb(), job.mode),
            &from,
            &to,
        );
        lab.assert_transfer(job.transfer_mode(), job.verb(), &job.name, job.size as u64);
    }
}

// -- 1. under attack ------------------------------------------------------------

const LOAD_SESSIONS: usize = 200;
/// Bytes per second of each load transfer at most (the server's pacing):
/// the smallest (150 kB) lasts a second, the largest (966 kB) six and a half.
const LOAD_RATE: usize = 150_000;

/// The 200 transfers: 3 in 5 by ftplib, the rest by curl; downloads and
/// uploads alternate; every mode of each client; sizes all different.
fn attack_load(lab: &Lab) -> Vec<Job> {
    let ftplib_modes = ["pasv", "port"];
    let curl_modes = ["epsv", "pasv", "eprt", "port"];
    (0..LOAD_SESSIONS)
        .map(|i| {
            let client = if i % 5 < 3 { Client::Ftplib } else { Client::Curl };
            let upload = i % 2 == 1;
            let mode = match client {
                Client::Ftplib => ftplib_modes[(i / 10) % 2],
                Client::Curl => curl_modes[(i / 10) % 4],
            };
            let name = format!("load-{i:03}-{mode}.bin");
            let size = 150_000 + i * 4_099;
            let local = lab.client_path(&if upload { format!("src-{name}") } else { format!("dl-{name}") });
            Job {
                id: format!("{i}"),
                client,
                upload,
                mode,
                name,
                local,
                source: CLIENT_IP.to_string(),
                // A curl session lasts about 4 s (and at least 1 s, by the
                // server's pacing): the ftplib sessions (held open until
                // every job has ended) and the curl ones overlap.
                rate: if client == Client::Curl { (size / 4) as u64 } else { 0 },
                size,
            }
        })
        .collect()
}

/// Client addresses of the attacks (192.0.2.10 carries the load).
const BOUNCE_IP: &str = "192.0.2.21";
const THEFT_IP: &str = "192.0.2.22";
const THIEF_IP: &str = "192.0.2.20";
const HTTP_IP: &str = "192.0.2.23";
const BINARY_IP: &str = "192.0.2.24";
const FLOOD_IP: &str = "192.0.2.25";
const SLOWLORIS_IP: &str = "192.0.2.26";
const THIRD227_IP: &str = "192.0.2.27";
const LOGINS_IP: &str = "192.0.2.28";

#[test]
fn two_hundred_sessions_transfer_while_every_attack_is_refused() {
    let started = Instant::now();
    let mut lab = Lab::new("attack", Rules::Nft);
    // Paced by the server: curl's --limit-rate lets a small download
    // through in one burst (0.12 s through two event loops), which would
    // end it before the last of the 200 sessions has started.
    paced_vsftpd(&lab, LOAD_SESSIONS + 50, LOAD_RATE);
    for ip in
        [BOUNCE_IP, THEFT_IP, THIEF_IP, HTTP_IP, BINARY_IP, FLOOD_IP, SLOWLORIS_IP, THIRD227_IP, LOGINS_IP]
    {
        add_addr(&lab, Ns::Client, &format!("{ip}/24"));
    }
    let _hostile_server = HostileServer::start(&lab);
    let idle = IDLE_TIMEOUT.to_string();
    let failures = MAX_LOGIN_FAILURES.to_string();
    let flags = [
        "--idle-timeout",
        idle.as_str(),
        // the load comes from one address and is no flood: the per-client
        // session rate (on by default) would refuse most of its 200 sessions
        "--session-rate-per-client",
        "0",
        "--passive-address-mismatch",
        "refuse",
        "--max-login-failures",
        failures.as_str(),
        "--login-cooldown",
        "120",
    ];
    lab.start_gateway(&flags);
    let pid = gateway_pid(&lab);
    let before = footprint(&lab, pid);

    let jobs = attack_load(&lab);
    for job in &jobs {
        job.create(&lab);
    }
    lab.server_file("loot.bin", 300_001);
    let prepared = started.elapsed();

    // the load and every attack at once
    let load = start_load(&lab, "attack", &jobs, 150);
    std::thread::sleep(Duration::from_secs(2));
    let hostile = |what: &str, source: &str, extra: &[&str]| {
        let mut args = vec![what, "--source", source];
        args.extend_from_slice(extra);
        (what.to_string(), spawn_client(&lab, 90, "lab/chaos_hostile.py", &args))
    };
    let count = (MAX_LOGIN_FAILURES).to_string();
    let attacks = vec![
        hostile("bounce", BOUNCE_IP, &[]),
        hostile("theft", THEFT_IP, &["--thief", THIEF_IP, "--path", "/pub/loot.bin"]),
        hostile("junk-http", HTTP_IP, &[]),
        hostile("junk-bin", BINARY_IP, &[]),
        hostile("flood", FLOOD_IP, &["--count", "30"]),
        hostile("slowloris", SLOWLORIS_IP, &["--max-seconds", "30"]),
        hostile("third227", THIRD227_IP, &["--server", HOSTILE_SERVER_IP]),
        hostile("logins", LOGINS_IP, &["--count", &count]),
    ];
    let reports: Vec<(String, String)> =
        attacks.into_iter().map(|(what, child)| (what.clone(), finish(child, &what))).collect();
    let report = LoadReport::parse(&finish(load, "lab/chaos_load.py"));
    let ran = started.elapsed();
    let attack = |what: &str| reports.iter().find(|(w, _)| w == what).map(|(_, r)| r.clone()).unwrap();
    let slowest =
        report.jobs.iter().filter_map(|j| json(j, "seconds")?.parse::<f64>().ok()).fold(0.0, f64::max);
    eprintln!("load: {} (prepared in {prepared:?}, ran {ran:?}, slowest job {slowest} s)", report.summary);
    for (what, r) in &reports {
        eprintln!("{what}: {}", r.trim());
    }

    // The load: 200 sessions open at once, every transfer whole.
    assert_eq!(report.jobs.len(), LOAD_SESSIONS, "one report per job");
    assert!(
        report.num("peak") >= LOAD_SESSIONS,
        "only {} sessions were open at once: {}",
        report.num("peak"),
        report.summary
    );
    let all: Vec<&Job> = jobs.iter().collect();
    assert_all_whole(&lab, &all, &report);
    for (client, mode) in [
        (Client::Ftplib, "pasv"),
        (Client::Ftplib, "port"),
        (Client::Curl, "epsv"),
        (Client::Curl, "pasv"),
        (Client::Curl, "eprt"),
        (Client::Curl, "port"),
    ] {
        for upload in [false, true] {
            assert!(
                jobs.iter().any(|j| j.client == client && j.mode == mode && j.upload == upload),
                "the load lacks {client:?} {mode} upload={upload}"
            );
        }
    }

    // Every attack: its reply, its record, nothing of it at the server.
    let mut c = Checks(Vec::new());
    let log_of = |ip: &str| records_of(&lab, ip);
    let has = |ip: &str, needle: &str| log_of(ip).iter().filter(|l| l.contains(needle)).count();

    let r = attack("bounce");
    for key in ["port_third_host", "eprt_third_host", "port_privileged"] {
        c.check(json(&r, key).is_some_and(|v| v.starts_with("501")), || {
            format!("bounce: {key} not 501: {r}")
        });
    }
    c.check(json(&r, "noop_after").is_some_and(|v| v.starts_with("200")), || {
        format!("bounce: session ended: {r}")
    });
    // Three refused lines in a row are one `refused lines` record, which
    // names the first line's rule (docs/audit.md).
    let run: Vec<String> =
        log_of(BOUNCE_IP).into_iter().filter(|l| l.contains("WARN refused lines")).collect();
    c.check(
        run.len() == 1
            && ["rule: bounce", "attack: 1", "count: 3", "side: client"].iter().all(|kv| run[0].contains(kv)),
        || format!("bounce: one record of the 3 refused lines wanted: {:#?}", log_of(BOUNCE_IP)),
    );
    c.check(
        !server_commands_of(&lab, BOUNCE_IP).iter().any(|l| l.contains("\"PORT") || l.contains("\"EPRT")),
        || format!("bounce: PORT/EPRT reached the server: {:#?}", server_commands_of(&lab, BOUNCE_IP)),
    );

    let r = attack("theft");
    let loot = sha256(&lab.pub_dir().join("loot.bin"));
    c.check(json(&r, "thief_closed").as_deref() == Some("true"), || {
        format!("theft: the thief got data: {r}")
    });
    c.check(json(&r, "retr_final").is_some_and(|v| v.starts_with("226")), || format!("theft: no 226: {r}"));
    c.check(json(&r, "sha256").as_deref() == Some(loot.as_str()), || format!("theft: wrong bytes: {r}"));
    c.check(
        has(THEFT_IP, "data peer refused") == 1 && has(THEFT_IP, &format!("peer: {THIEF_IP}:")) == 1,
        || format!("theft: one record of the refused thief wanted: {:#?}", log_of(THEFT_IP)),
    );
    lab.assert_transfer(TransferMode::Passive, "RETR", "loot.bin", 300_001);

    for (what, ip, reason) in [
        ("junk-http", HTTP_IP, "reason: not FTP: HTTP request"),
        ("junk-bin", BINARY_IP, "reason: not FTP: binary"),
    ] {
        let r = attack(what);
        c.check(json(&r, "reply").is_some_and(|v| v.starts_with("421")), || format!("{what}: no 421: {r}"));
        c.check(json(&r, "closed").as_deref() == Some("true"), || format!("{what}: session not closed: {r}"));
        c.check(has(ip, reason) == 1, || format!("{what}: no record \"{reason}\": {:#?}", log_of(ip)));
        c.check(server_commands_of(&lab, ip).is_empty(), || {
            format!("{what}: junk reached the server: {:#?}", server_commands_of(&lab, ip))
        });
    }
    c.check(!lab.vsftpd_log().contains("HTTP/1.1"), || {
        "junk-http: the request line reached the server".into()
    });

    let r = attack("flood");
    c.check(r.contains("\"421"), || format!("flood: never closed with 421: {r}"));
    c.check(json(&r, "closed").as_deref() == Some("true"), || format!("flood: session not closed: {r}"));
    c.check(r.matches("\"500").count() <= 10, || format!("flood: more than 10 refused lines answered: {r}"));
    c.check(
        has(FLOOD_IP, "WARN refused lines") == 1 && has(FLOOD_IP, "reason: too many refused lines") == 1,
        || format!("flood: one record for the whole run wanted: {:#?}", log_of(FLOOD_IP)),
    );
    c.check(has(FLOOD_IP, "refused, ") == 0, || format!("flood: a record per line: {:#?}", log_of(FLOOD_IP)));

    let r = attack("slowloris");
    let seconds: f64 = json(&r, "seconds").and_then(|v| v.parse().ok()).unwrap_or(f64::MAX);
    c.check(json(&r, "reply").is_some_and(|v| v.starts_with("421")), || format!("slowloris: no 421: {r}"));
    c.check(json(&r, "closed").as_deref() == Some("true"), || format!("slowloris: not closed: {r}"));
    c.check(seconds <= (IDLE_TIMEOUT + 4) as f64, || {
        format!("slowloris: held {seconds} s, idle deadline {IDLE_TIMEOUT} s: {r}")
    });
    c.check(has(SLOWLORIS_IP, "reason: idle timeout") == 1, || {
        format!("slowloris: no idle-timeout record: {:#?}", log_of(SLOWLORIS_IP))
    });
    c.check(server_commands_of(&lab, SLOWLORIS_IP).is_empty(), || {
        format!(
            "slowloris: its partial line reached the server: {:#?}",
            server_commands_of(&lab, SLOWLORIS_IP)
        )
    });

    let r = attack("third227");
    c.check(json(&r, "pasv").is_some_and(|v| v.starts_with("425")), || {
        format!("third227: the 227 passed: {r}")
    });
    c.check(json(&r, "noop_after").is_some_and(|v| v.starts_with("200")), || {
        format!("third227: session ended: {r}")
    });
    c.check(has(THIRD227_IP, "reason: passive address is not the server's") == 1, || {
        format!("third227: no refusal record: {:#?}", log_of(THIRD227_IP))
    });
    c.check(has(THIRD227_IP, "data listen") == 0, || {
        format!("third227: a data listener was opened: {:#?}", log_of(THIRD227_IP))
    });

    let r = attack("logins");
    c.check(r.matches("\"530").count() == MAX_LOGIN_FAILURES, || {
        format!("logins: {MAX_LOGIN_FAILURES} failed logins wanted: {r}")
    });
    c.check(json(&r, "after").is_some_and(|v| v.starts_with("421")), || {
        format!("logins: no 421 cool-down: {r}")
    });
    c.check(has(LOGINS_IP, "login failed") == MAX_LOGIN_FAILURES, || {
        format!("logins: one record per failed login wanted: {:#?}", log_of(LOGINS_IP))
    });
    c.check(has(LOGINS_IP, "failed logins: refusing new sessions") == 1, || {
        format!("logins: one cool-down record wanted: {:#?}", log_of(LOGINS_IP))
    });
    c.check(
        server_commands_of(&lab, LOGINS_IP).iter().filter(|l| l.contains("\"USER mallory")).count()
            == MAX_LOGIN_FAILURES,
        || {
            format!(
                "logins: the refused session reached the server: {:#?}",
                server_commands_of(&lab, LOGINS_IP)
            )
        },
    );

    // Nothing leaks: descriptors and listeners as before.
    c.check(lab.gateway_running(), || "the gateway died".into());
    if let Err(after) = settle(&lab, pid, &before, 20) {
        c.check(false, || format!("footprint before {before:?}, after {after:?}"));
    }
    eprintln!("attack test: {:?} in all ({} failed checks)", started.elapsed(), c.0.len());
    assert!(c.0.is_empty(), "{} failed checks:\n- {}\n{}", c.0.len(), c.0.join("\n- "), lab.diagnostics());
}

// -- 2. chaos: kill -9 in the middle of transfers -------------------------------

/// Client address of the sessions whose server processes are killed.
const VICTIM_IP: &str = "192.0.2.40";
/// Client address of the client that is killed.
const DOOMED_IP: &str = "192.0.2.41";
/// Bytes per second of the transfers that are broken or must survive: slow
/// enough that a kill lands in the middle (socket buffers on the way hold
/// several MiB).
const SLOW: u64 = 1_000_000;
/// Size of a download that must still be running when its server is
/// killed. The path holds more than 20 MB in flight (the server's send
/// buffer, the gateway's receive and send buffers and pipe, the client's
/// receive buffer, all autotuned): with 24 MB a server could write its
/// whole file and its 226 before the kill, and the transfer was rightly
/// complete. 96 MB keeps it running behind the 1 MB/s reader.
const VICTIM_DOWNLOAD: usize = 96_000_000;

/// An established TCP connection of a namespace (`ss -Htnp state
/// established`: no state column) and the PIDs of the processes holding it.
struct Conn {
    local: String,
    peer: String,
    pids: Vec<u32>,
}

impl Conn {
    fn is_control(&self) -> bool {
        self.local.ends_with(":21") || self.peer.ends_with(":21")
    }

    fn involves(&self, ip: &str) -> bool {
        let ip = format!("{ip}:");
        self.local.starts_with(&ip) || self.peer.starts_with(&ip)
    }
}

/// `[::ffff:192.0.2.40]:21` as `192.0.2.40:21`: the lab's vsftpd listens
/// on `[::]:21` dual-stack, so ss shows its IPv4 peers mapped.
fn unmapped(addr: &str) -> String {
    let Some((ip, port)) = addr.strip_prefix('[').and_then(|a| a.split_once("]:")) else {
        return addr.to_string();
    };
    let v4 = common::unmapped(ip);
    if v4 == ip {
        addr.to_string()
    } else {
        format!("{v4}:{port}")
    }
}

fn connections(lab: &Lab, ns: Ns) -> Vec<Conn> {
    let out = lab.exec(ns, 10, &["ss", "-Htnp", "state", "established"]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let pids = l.split("pid=").skip(1).filter_map(|p| p.split(',').next()?.parse().ok()).collect();
            Some(Conn { local: unmapped(f.get(2)?), peer: unmapped(f.get(3)?), pids })
        })
        .collect()
}

/// The PIDs holding connections of client address `ip` in `ns`: data
/// connections only, or control connections too.
fn holders(conns: &[Conn], ip: &str, control: bool) -> Vec<u32> {
    let mut pids: Vec<u32> = conns
        .iter()
        .filter(|c| c.involves(ip) && (control || !c.is_control()))
        .flat_map(|c| c.pids.iter().copied())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Waits (bounded) until `count` data connections of client address `ip`
/// are established in `ns`, each held by a process; the PIDs holding them.
fn data_holders(lab: &Lab, ns: Ns, ip: &str, count: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conns = connections(lab, ns);
        let data = conns.iter().filter(|c| c.involves(ip) && !c.is_control() && !c.pids.is_empty()).count();
        if data >= count {
            return holders(&conns, ip, false);
        }
        assert!(Instant::now() < deadline, "{data} of {count} data connections of {ip} came up in 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL process `pid`, which must be a `comm` (a process the lab
/// started: vsftpd's, or a client's). One that died meanwhile (vsftpd's
/// privileged parent exits when its session process dies) is fine.
fn kill9(pid: u32, comm: &str) {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if name.is_empty() {
        return;
    }
    assert_eq!(name.trim(), comm, "PID {pid} is not {comm}");
    let st = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(st.success() || !std::path::Path::new(&format!("/proc/{pid}")).exists(), "kill -9 {pid} failed");
}

fn slow_job(
    lab: &Lab,
    id: &str,
    client: Client,
    upload: bool,
    mode: &'static str,
    source: &str,
    size: usize,
) -> Job {
    let name = format!("{id}.bin");
    let local = lab.client_path(&if upload { format!("src-{name}") } else { format!("dl-{name}") });
    Job {
        id: id.to_string(),
        client,
        upload,
        mode,
        name,
        local,
        source: source.to_string(),
        rate: SLOW,
        size,
    }
}

/// The final reply of a broken transfer as its client saw it is never a
/// success: ftplib's reply is not 2xx, curl did not exit 0.
fn never_success(report: &str) -> bool {
    json(report, "ok").as_deref() == Some("false")
        && json(report, "final").is_some_and(|f| !f.starts_with('2') && f != "exit 0")
}

#[test]
fn server_session_processes_and_a_client_killed_mid_transfer_the_others_go_on() {
    let started = Instant::now();
    let mut lab = Lab::new("chaos", Rules::Nft);
    roomy_vsftpd(&lab, 100);
    add_addr(&lab, Ns::Client, &format!("{VICTIM_IP}/24"));
    add_addr(&lab, Ns::Client, &format!("{DOOMED_IP}/24"));
    lab.start_gateway(&[]);
    let pid = gateway_pid(&lab);
    let before = footprint(&lab, pid);

    let victims = vec![
        slow_job(&lab, "victim-get-pasv", Client::Ftplib, false, "pasv", VICTIM_IP, VICTIM_DOWNLOAD + 1),
        slow_job(&lab, "victim-get-eprt", Client::Curl, false, "eprt", VICTIM_IP, VICTIM_DOWNLOAD + 3),
        slow_job(&lab, "victim-put-port", Client::Ftplib, true, "port", VICTIM_IP, 24_000_005),
        slow_job(&lab, "victim-put-epsv", Client::Curl, true, "epsv", VICTIM_IP, 24_000_007),
    ];
    let survivors = vec![
        slow_job(&lab, "survivor-get-pasv", Client::Ftplib, false, "pasv", CLIENT_IP, 8_000_011),
        slow_job(&lab, "survivor-put-port", Client::Ftplib, true, "port", CLIENT_IP, 8_000_013),
        slow_job(&lab, "survivor-get-port", Client::Curl, false, "port", CLIENT_IP, 8_000_017),
        slow_job(&lab, "survivor-put-pasv", Client::Curl, true, "pasv", CLIENT_IP, 8_000_019),
    ];
    let jobs: Vec<Job> = victims.into_iter().chain(survivors).collect();
    for job in &jobs {
        job.create(&lab);
    }
    lab.server_file("doomed.bin", VICTIM_DOWNLOAD + 23);
    let doomed_out = lab.client_path("dl-doomed.bin");
    let load = start_load(&lab, "chaos", &jobs, 100);
    let doomed = Command::new("timeout")
        .args([
            "-k",
            "5",
            "60",
            "ip",
            "netns",
            "exec",
            &lab.ns(Ns::Client),
            "curl",
            "-sS",
            "--interface",
            DOOMED_IP,
        ])
        .args(["--limit-rate", &SLOW.to_string(), "-o", &doomed_out])
        .arg(format!("ftp://{}/pub/doomed.bin", common::SERVER_IP))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn curl");

    // Every victim's data connection is up at the server, the doomed
    // client's at the client: kill the vsftpd processes that hold the
    // victims' (vsftpd's session process; its privileged parent stays and
    // says "500 OOPS"), then the client.
    let servers = data_holders(&lab, Ns::Server, VICTIM_IP, 4);
    let client = data_holders(&lab, Ns::Client, DOOMED_IP, 1);
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = started.elapsed();
    for p in &servers {
        kill9(*p, "vsftpd");
    }
    for p in &client {
        kill9(*p, "curl");
    }
    let report = LoadReport::parse(&finish(load, "lab/chaos_load.py"));
    let doomed_status = doomed.wait_with_output().unwrap().status;
    eprintln!("killed vsftpd {servers:?} and curl {client:?} at {killed_at:?}; load: {}", report.summary);
    for j in &report.jobs {
        eprintln!("  {j}");
    }

    // The broken transfers: never a success, a reset for the uploads'
    // clients, each recorded failed.
    for job in jobs.iter().filter(|j| j.source == VICTIM_IP) {
        let r = report.job(&job.id);
        assert!(never_success(r), "broken transfer {} looked complete: {r}\n{}", job.id, lab.diagnostics());
        if job.upload && job.client == Client::Ftplib {
            assert_eq!(json(r, "data_end").as_deref(), Some("reset"), "upload {}: {r}", job.id);
        }
        lab.assert_transfer_result(job.transfer_mode(), job.verb(), &job.name, "failed", None);
    }
    // The killed client: its session's transfer did not complete. Which of
    // its two closes the gateway reads first is the kernel's choice: a
    // reset data leg (failed) or a closed control connection (aborted,
    // session ended).
    assert!(!doomed_status.success(), "the killed curl exited 0");
    let doomed_record = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) =
                lab.transfer_records().into_iter().find(|r| r.verb_and_arg().1.ends_with("doomed.bin"))
            {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "no record of the killed client's transfer\n{}",
                lab.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        matches!(doomed_record.result.as_str(), "failed" | "aborted"),
        "the killed client's transfer: {doomed_record}"
    );

    // The others went on, whole; and a new session works afterwards.
    let others: Vec<&Job> = jobs.iter().filter(|j| j.source == CLIENT_IP).collect();
    assert_all_whole(&lab, &others, &report);
    let fresh = lab.server_file("after.bin", 1_234_567);
    let got = lab.client_path("dl-after.bin");
    common::curl_get(&lab, common::Mode::Epsv, "after.bin", &got);
    assert_same_file("download after the kills", &fresh, std::path::Path::new(&got));
    lab.assert_transfer(TransferMode::Passive, "RETR", "after.bin", 1_234_567);

    // Nothing leaks.
    assert!(lab.gateway_running(), "the gateway died");
    if let Err(after) = settle(&lab, pid, &before, 20) {
        panic!("footprint before {before:?}, after {after:?}\n{}", lab.diagnostics());
    }
    eprintln!("chaos test: {:?} in all", started.elapsed());
}

/// A whole vsftpd session dies (its session process and its privileged
/// parent, so the control connection ends too, without a reply): the
/// client's data connection ends with a reset, never a clean end, its
/// control connection ends without a 2xx (a 426 first would be welcome),
/// the record says failed, and the gateway goes on.
#[test]
fn server_session_killed_whole_mid_transfer_client_sees_reset_and_the_end() {
    let started = Instant::now();
    let mut lab = Lab::new("chaosall", Rules::Nft);
    roomy_vsftpd(&lab, 100);
    add_addr(&lab, Ns::Client, &format!("{VICTIM_IP}/24"));
    lab.start_gateway(&[]);
    let pid = gateway_pid(&lab);
    let before = footprint(&lab, pid);
    let jobs = vec![
        slow_job(&lab, "gone-get-pasv", Client::Ftplib, false, "pasv", VICTIM_IP, VICTIM_DOWNLOAD + 31),
        slow_job(&lab, "gone-put-port", Client::Ftplib, true, "port", VICTIM_IP, 24_000_033),
        slow_job(&lab, "stays-get-port", Client::Ftplib, false, "port", CLIENT_IP, 6_000_037),
    ];
    for job in &jobs {
        job.create(&lab);
    }
    let load = start_load(&lab, "chaosall", &jobs, 100);
    data_holders(&lab, Ns::Server, VICTIM_IP, 2);
    std::thread::sleep(Duration::from_secs(1));
    // every process holding a socket of the victims' sessions, control too
    let all = holders(&connections(&lab, Ns::Server), VICTIM_IP, true);
    for p in &all {
        kill9(*p, "vsftpd");
    }
    let report = LoadReport::parse(&finish(load, "lab/chaos_load.py"));
    eprintln!("killed vsftpd {all:?}; load: {}", report.summary);
    for j in &report.jobs {
        eprintln!("  {j}");
    }
    let mut c = Checks(Vec::new());
    for job in jobs.iter().filter(|j| j.source == VICTIM_IP) {
        let r = report.job(&job.id);
        c.check(never_success(r), || format!("{}: looked complete: {r}", job.id));
        c.check(json(r, "data_end").as_deref() == Some("reset"), || {
            format!("{}: data not reset: {r}", job.id)
        });
        c.check(json(r, "final").is_some_and(|f| f.starts_with("closed") || f.starts_with("426")), || {
            format!("{}: the control connection should end (426 at most): {r}", job.id)
        });
        let record = lab
            .transfer_records()
            .into_iter()
            .find(|t| t.verb_and_arg().1.ends_with(&job.name))
            .map_or_else(|| "none".to_string(), |t| t.to_string());
        c.check(record.contains("-> failed"), || format!("{}: record should say failed: {record}", job.id));
    }
    let stays: Vec<&Job> = jobs.iter().filter(|j| j.source == CLIENT_IP).collect();
    assert_all_whole(&lab, &stays, &report);
    c.check(lab.gateway_running(), || "the gateway died".into());
    if let Err(after) = settle(&lab, pid, &before, 20) {
        c.check(false, || format!("footprint before {before:?}, after {after:?}"));
    }
    eprintln!("chaos (whole session) test: {:?} in all ({} failed checks)", started.elapsed(), c.0.len());
    assert!(c.0.is_empty(), "{} failed checks:\n- {}\n{}", c.0.len(), c.0.join("\n- "), lab.diagnostics());
}
