//! SIGHUP with a changed `[policy]` while a download runs, through the real
//! daemon, vsftpd and python's ftplib (one session per phase, each reading
//! a 16 MiB file at about 4 MiB/s, so the reload lands mid-transfer):
//! - a valid file (`read-only` for everyone): the running download
//!   completes byte for byte with an `ok` record; the same session's next
//!   STOR gets 550 and never reaches vsftpd; a new session's too;
//! - a broken file: one record naming the file and line, and the rules in
//!   force stay (the running session's next NLST passes, its STOR is still
//!   refused 550: not the allow-everything of no policy);
//! - a valid file that denies the client's network: the running download
//!   still completes; the session's next command gets 421, the session
//!   ends, and one `denied by policy` record (stage reload) names the rule.
//!
//! Each SIGHUP makes exactly one record saying what happened.
mod common;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_file, text, Lab, Ns, Rules, TransferMode, SERVER_IP};

const SIZE: usize = 16 * 1024 * 1024 + 333;

/// One session: log in as anonymous, download slow.bin in passive mode at
/// about RATE bytes/s into LOCAL, touching STARTED after the first MiB and
/// DONE when RETR returns; then wait (at most 60 s) for GO and send each
/// of the remaining arguments as one command (`STOR name` uploads 1000
/// bytes, `NLST dir` lists), recording each reply or error. Prints one
/// JSON object.
const SESSION_PY: &str = r#"
import ftplib, io, json, os, sys, time
host, local, started, done, go, rate = sys.argv[1:7]
rate = float(rate)
out = {}
f = ftplib.FTP(timeout=60)
out["welcome"] = f.connect(host, 21)
f.login("anonymous", "lab@example.org")
got = [0]
fh = open(local, "wb")
def chunk(b):
    fh.write(b)
    got[0] += len(b)
    if got[0] >= 1 << 20 and not os.path.exists(started):
        open(started, "w").close()
    time.sleep(len(b) / rate)
try:
    out["retr"] = f.retrbinary("RETR /pub/slow.bin", chunk, blocksize=65536)
except ftplib.all_errors as e:
    out["retr"] = "%s: %s" % (type(e).__name__, e)
fh.close()
open(done, "w").close()
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
for cmd in sys.argv[7:]:
    try:
        if cmd.startswith("STOR "):
            out[cmd] = f.storbinary(cmd, io.BytesIO(b"x" * 1000))
        elif cmd.startswith("NLST "):
            out[cmd] = " ".join(f.nlst(cmd[5:]))
        else:
            out[cmd] = f.sendcmd(cmd)
    except ftplib.all_errors as e:
        out[cmd] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

const RATE: &str = "4000000";

/// A running phase: the python session and its marker files.
struct Phase {
    child: Child,
    local: String,
    started: String,
    done: String,
    go: String,
}

impl Phase {
    fn spawn(lab: &Lab, tag: &str, commands: &[&str]) -> Self {
        let path = |what: &str| lab.run.join(format!("{tag}.{what}")).to_str().unwrap().to_string();
        let (local, started, done, go) =
            (lab.client_path(&format!("{tag}.bin")), path("started"), path("done"), path("go"));
        let child = Command::new("timeout")
            .args(["-k", "5", "120", "ip", "netns", "exec", &lab.ns(Ns::Client)])
            .args(["python3", "-c", SESSION_PY, SERVER_IP, &local, &started, &done, &go, RATE])
            .args(commands)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the python session");
        Self { child, local, started, done, go }
    }

    /// Waits (bounded) until the download has started.
    fn await_started(&mut self, lab: &Lab) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Path::new(&self.started).exists() {
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                panic!("the download did not get going:\n{}", lab.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The download is still running (the reload landed mid-transfer).
    fn assert_running(&self) {
        assert!(
            !Path::new(&self.done).exists(),
            "the download ended before the reload took effect: make it longer"
        );
    }

    /// Lets the session go on and returns its JSON object.
    fn finish(self) -> serde_json::Value {
        fs::write(&self.go, "").unwrap();
        let out = self.child.wait_with_output().expect("wait for the python session");
        assert!(out.status.success(), "python session failed ({}): {}", out.status, text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Waits (bounded) until the gateway's log has `n` lines containing
/// `needle`, and returns them.
fn await_log(lab: &Lab, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lines: Vec<String> =
            lab.gateway_log().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {n} records {needle:?} in 15 s:\n{}", lab.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(lab: &Lab, needle: &str) -> usize {
    lab.gateway_log().lines().filter(|l| l.contains(needle)).count()
}

/// Everything allowed, by a rule of its own (so that the reload changes
/// the policy, not only adds one).
const OPEN: &str = "\
# ftpgate lab: open
[[policy.rule]]
name = \"everyone\"
action = \"allow\"
";

const READ_ONLY: &str = "\
# ftpgate lab: read-only for everyone
[[policy.rule]]
name = \"everyone-ro\"
action = \"allow\"
profile = \"read-only\"
";

/// Broken on line 5: not a network.
const BROKEN: &str = "\
# ftpgate lab: broken
[[policy.rule]]
name = \"everyone\"
action = \"allow\"
client = [\"192.0.2.0/33\"]
";

const DENY_NET: &str = "\
# ftpgate lab: the client network denied
[[policy.rule]]
name = \"no-test-net\"
client = [\"192.0.2.0/24\"]
action = \"deny\"
";

#[test]
fn sighup_policy_during_a_download_next_commands_follow_broken_file_keeps_the_old() {
    let mut lab = Lab::new("preload", Rules::Nft);
    let config = lab.run.join("ftpgate.toml");
    fs::write(&config, OPEN).unwrap();
    lab.start_gateway(&["--config", config.to_str().unwrap()]);
    let src = lab.server_file("slow.bin", SIZE);

    // 1. A valid file: read-only for everyone, mid-download.
    let mut one = Phase::spawn(&lab, "one", &["STOR /upload/one.bin"]);
    one.await_started(&lab);
    fs::write(&config, READ_ONLY).unwrap();
    lab.signal_gateway("HUP");
    let reloaded = await_log(&lab, "configuration reloaded", 1);
    one.assert_running();
    let r = &reloaded[0];
    assert!(r.contains(config.to_str().unwrap()), "the record names the file: {r}");
    assert!(r.contains("policy: changed") && r.contains("sessions_following: 1"), "{r}");
    let one_local = one.local.clone();
    let one = one.finish();
    assert!(field(&one, "retr").starts_with("226"), "the running download: {one}");
    assert_same_file("download across the read-only reload", &src, Path::new(&one_local));
    lab.assert_transfer(TransferMode::Passive, "RETR", "slow.bin", SIZE as u64);
    assert!(
        field(&one, "STOR /upload/one.bin").contains("550 ftpgate: STOR denied by policy."),
        "the running session's next STOR: {one}"
    );
    // A new session: refused too.
    let local = lab.client_path("new.bin");
    fs::write(&local, vec![7u8; 5000]).unwrap();
    let url = format!("ftp://{SERVER_IP}/upload/new.bin");
    let out = lab.exec(Ns::Client, 30, &["curl", "-sS", "-v", "--max-time", "10", "-T", &local, &url]);
    assert!(text(&out.stderr).contains("550 ftpgate: STOR denied by policy."), "{}", text(&out.stderr));
    assert!(!lab.vsftpd_log().contains("STOR"), "a STOR reached vsftpd:\n{}", lab.vsftpd_log());
    assert!(!lab.upload_dir().join("one.bin").exists() && !lab.upload_dir().join("new.bin").exists());
    let stor_denials: Vec<String> = lab
        .gateway_log()
        .lines()
        .filter(|l| l.contains("denied by policy") && l.contains("verb: STOR"))
        .map(str::to_owned)
        .collect();
    assert_eq!(stor_denials.len(), 2, "{stor_denials:#?}");
    assert!(stor_denials.iter().all(|l| l.contains("rule: everyone-ro")), "{stor_denials:#?}");

    // 2. A broken file, mid-download: refused, the read-only rules stay.
    lab.expect_log_errors(&["configuration not reloaded"]);
    let mut two = Phase::spawn(&lab, "two", &["NLST /pub", "STOR /upload/two.bin"]);
    two.await_started(&lab);
    fs::write(&config, BROKEN).unwrap();
    lab.signal_gateway("HUP");
    let refused = await_log(&lab, "configuration not reloaded", 1);
    two.assert_running();
    let spot = format!("{}:5:", config.display());
    assert!(refused[0].contains(&spot), "the record names file and line ({spot}): {refused:?}");
    assert!(refused[0].contains("is not a network"), "{refused:?}");
    let two_local = two.local.clone();
    let two = two.finish();
    assert!(field(&two, "retr").starts_with("226"), "the running download: {two}");
    assert_same_file("download across the broken reload", &src, Path::new(&two_local));
    lab.assert_transfer(TransferMode::Passive, "RETR", "slow.bin", SIZE as u64);
    assert!(field(&two, "NLST /pub").contains("slow.bin"), "the old rules allow NLST: {two}");
    assert!(
        field(&two, "STOR /upload/two.bin").contains("550 ftpgate: STOR denied by policy."),
        "the old rules (read-only) stay in force: {two}"
    );

    // 3. A valid file denying the client's network, mid-download.
    let mut three = Phase::spawn(&lab, "three", &["NOOP"]);
    three.await_started(&lab);
    fs::write(&config, DENY_NET).unwrap();
    lab.signal_gateway("HUP");
    await_log(&lab, "configuration reloaded", 2);
    three.assert_running();
    let three_local = three.local.clone();
    let three = three.finish();
    assert!(field(&three, "retr").starts_with("226"), "the running download is never cut: {three}");
    assert_same_file("download across the denying reload", &src, Path::new(&three_local));
    lab.assert_transfer(TransferMode::Passive, "RETR", "slow.bin", SIZE as u64);
    assert!(
        field(&three, "NOOP").contains("421 ftpgate: session denied by the reloaded policy"),
        "the session's next command: {three}"
    );
    let ended = await_log(&lab, "denied by the reloaded policy", 1);
    assert!(ended.iter().any(|l| l.contains("session end")), "{ended:#?}");
    let reload_denials: Vec<String> =
        lab.gateway_log().lines().filter(|l| l.contains("stage: reload")).map(str::to_owned).collect();
    assert_eq!(reload_denials.len(), 1, "{reload_denials:#?}");
    assert!(reload_denials[0].contains("rule: no-test-net"), "{}", reload_denials[0]);
    // A new session from the denied network: 421 at connect.
    let out = lab.exec(
        Ns::Client,
        30,
        &["curl", "-sS", "-v", "--max-time", "10", &format!("ftp://{SERVER_IP}/pub/")],
    );
    assert!(text(&out.stderr).contains("421 ftpgate: connection denied by policy."), "{}", text(&out.stderr));

    // One record per SIGHUP.
    assert_eq!(count(&lab, "configuration reloaded"), 2, "{}", lab.gateway_log());
    assert_eq!(count(&lab, "configuration not reloaded"), 1, "{}", lab.gateway_log());
    assert!(lab.gateway_running());
}
