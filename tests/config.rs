//! The configuration file: `--check-config` verdicts and exit codes from
//! the real binary, and in the lab a SIGHUP reload during a running
//! transfer.
//!
//! The reload test changes two settings a client can observe from outside:
//! the control idle timeout (a core `Config` value: a session that idles
//! past it gets 421) and the per-client session rate (a daemon value: a
//! second session within the second gets 421). It proves that
//! - the transfer running across the reload completes, byte for byte;
//! - a session opened before the reload keeps its configuration (it idles
//!   past the new timeout and its NOOP still gets 200);
//! - sessions opened after it get the new values;
//! - a broken file is refused with a record naming its line and key, and
//!   the configuration in force stays (a new session still times out).
mod common;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{text, Lab, Ns, Rules, TransferMode, SERVER_IP};

fn ftpgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftpgate")).args(args).stdin(Stdio::null()).output().expect("run ftpgate")
}

/// A scratch file for the tests that need no lab.
fn scratch(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ftpgate-config-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    path
}

#[test]
fn check_config_valid_file_exits_0() {
    let path = scratch(
        "valid.toml",
        "[listeners]\nlisten = [\"0.0.0.0:2121\", \"[::]:2121\"]\n[limits]\ndata-idle-timeout = 60\n",
    );
    let out = ftpgate(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("{}: valid", path.display()));
    let _ = fs::remove_file(path);
}

/// A file the daemon would refuse to start with is no valid file: the
/// kernel data path cannot enforce the data direction.
#[test]
fn check_config_refuses_what_the_data_path_cannot_do() {
    let path =
        scratch("conflict.toml", "[protocol]\ndata-path = \"pinhole\"\nenforce-data-direction = true\n");
    let out = ftpgate(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let want =
        format!("ftpgate: invalid configuration: {}: --data-path pinhole cannot enforce", path.display());
    assert!(text(&out.stderr).starts_with(&want), "{}", text(&out.stderr));
    let _ = fs::remove_file(path);
}

#[test]
fn check_config_invalid_file_exits_2_naming_file_line_and_key() {
    let path = scratch("typo.toml", "[limits]\nidle-timeout = 60\n\n[logging]\nlevle = \"debug\"\n");
    let out = ftpgate(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let want =
        format!("ftpgate: invalid configuration: {}:5: logging.levle: unknown field `levle`", path.display());
    assert!(text(&out.stderr).starts_with(&want), "{}", text(&out.stderr));
    let _ = fs::remove_file(path);
}

#[test]
fn check_config_bad_value_exits_2_and_a_missing_file_too() {
    let path = scratch("zero.toml", "[limits]\ndata-timeout = 0\n");
    let out = ftpgate(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(":2: limits.data-timeout: must be at least 1 second"),
        "{}",
        text(&out.stderr)
    );
    let _ = fs::remove_file(path);
    let out = ftpgate(&["--check-config", "--config", "/nonexistent/ftpgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/ftpgate.toml: cannot read"), "{}", text(&out.stderr));
}

#[test]
fn check_config_an_invalid_flag_value_is_refused_as_before() {
    let out = ftpgate(&["--check-config", "--config", "/dev/null", "--idle-timeout", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ftpgate(&["--check-config", "--config", "/dev/null", "--idle-timeout", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

// -- SIGHUP in the lab ---------------------------------------------------

/// Larger than every buffer on the way (see tests/metrics.rs): at RATE
/// the download runs for about 6 s, across the reload.
const SIZE: usize = 24 * 1024 * 1024 + 777;
const RATE: &str = "4M";

/// One control session, run by python's ftplib in the client namespace:
/// log in; if GO is not `-`, wait (at most 60 s) until the file GO
/// exists; if SECOND is `1`, open a second session at once and record
/// its greeting or refusal; idle IDLE seconds; send NOOP. Prints one JSON
/// object.
const SESSION_PY: &str = r#"
import ftplib, json, os, sys, time
host, go, second, idle = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
out = {}
f = ftplib.FTP(timeout=30)
out["welcome"] = f.connect(host, 21)
f.login("anonymous", "lab@example.org")
if go != "-":
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.1)
    out["go"] = os.path.exists(go)
if second:
    try:
        g = ftplib.FTP(timeout=10)
        out["second"] = g.connect(host, 21)
        g.close()
    except ftplib.all_errors as e:
        out["second"] = "%s: %s" % (type(e).__name__, e)
time.sleep(idle)
try:
    out["noop"] = f.voidcmd("NOOP")
except ftplib.all_errors as e:
    out["noop"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

fn spawn_session(lab: &Lab, go: &str, second: bool, idle_secs: u32) -> Child {
    Command::new("timeout")
        .args(["-k", "5", "100", "ip", "netns", "exec", &lab.ns(Ns::Client)])
        .args(["python3", "-c", SESSION_PY, SERVER_IP, go, if second { "1" } else { "0" }])
        .arg(idle_secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the python session")
}

/// The session's JSON object, after it ended.
fn session_result(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("wait for the python session");
    assert!(out.status.success(), "python session failed ({}): {}", out.status, text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Waits (bounded) until the gateway's log has `n` lines containing
/// `needle`, and returns them.
fn await_log(lab: &Lab, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> =
            lab.gateway_log().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {n} records {needle:?} in 10 s:\n{}", lab.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The file in force before the reload: generous idle timeout, the
/// default session rate.
const BEFORE: &str = "\
# ftpgate lab: before SIGHUP
[limits]
idle-timeout = 900
session-rate-per-client = 20
session-burst-per-client = 100
";

/// After: a 2 s idle timeout and one new session per second.
const AFTER: &str = "\
# ftpgate lab: after SIGHUP
[limits]
idle-timeout = 2
session-rate-per-client = \"1/s\"
session-burst-per-client = 1
";

/// Broken on line 4: a misspelt key.
const BROKEN: &str = "\
# ftpgate lab: broken
[limits]
idle-timeout = 900
idle-timeot = 900
";

#[test]
fn sighup_reload_during_a_transfer_new_sessions_get_the_new_file_broken_file_refused() {
    let mut lab = Lab::new("config", Rules::Nft);
    let config = lab.run.join("ftpgate.toml");
    fs::write(&config, BEFORE).unwrap();
    lab.start_gateway(&["--config", config.to_str().unwrap()]);
    await_log(&lab, "configuration", 1);
    let src = lab.server_file("slow.bin", SIZE);

    // A session from before the reload, idle until told to go on.
    let go = lab.run.join("go");
    let old = spawn_session(&lab, go.to_str().unwrap(), false, 4);
    await_log(&lab, "login, user", 1);

    // The transfer that runs across the reload.
    let local = lab.client_path("slow.bin");
    let url = format!("ftp://{SERVER_IP}/pub/slow.bin");
    let mut curl = Command::new("timeout")
        .args(["-k", "5", "60", "ip", "netns", "exec", &lab.ns(Ns::Client)])
        .args(["curl", "-sS", "--max-time", "50", "--limit-rate", RATE, "-o", &local, &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while file_len(Path::new(&local)) < 1024 * 1024 {
        if Instant::now() > deadline || curl.try_wait().unwrap().is_some() {
            let _ = curl.kill();
            let _ = curl.wait();
            panic!("the download did not get going:\n{}", lab.diagnostics());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    fs::write(&config, AFTER).unwrap();
    lab.signal_gateway("HUP");
    let reloaded = await_log(&lab, "configuration reloaded", 1);
    assert!(reloaded[0].contains(config.to_str().unwrap()), "the record names the file: {reloaded:?}");
    assert!(
        reloaded[0]
            .contains("limits.idle-timeout limits.session-rate-per-client limits.session-burst-per-client"),
        "the record names what changed: {reloaded:?}"
    );
    assert!(curl.try_wait().unwrap().is_none(), "the transfer was to run across the reload: make it longer");

    // New sessions: the second within the second is refused (rate 1/s,
    // burst 1), the first idles past 2 s and is closed with 421.
    let new = session_result(spawn_session(&lab, "-", true, 4));
    assert!(field(&new, "welcome").starts_with("220"), "{new}");
    assert!(field(&new, "second").contains("421"), "second session within the second: {new}");
    assert!(field(&new, "noop").contains("421"), "new session idle past 2 s: {new}");

    // The session from before: idle for as long, still served.
    fs::write(&go, "").unwrap();
    let old = session_result(old);
    assert_eq!(old["go"], true, "{old}");
    assert!(field(&old, "noop").starts_with("200"), "the old session keeps its configuration: {old}");

    // The transfer completed, whole.
    let out = curl.wait_with_output().expect("wait for curl");
    assert!(
        out.status.success(),
        "curl failed ({}): {}\n{}",
        out.status,
        text(&out.stderr),
        lab.diagnostics()
    );
    common::assert_same_file("download of slow.bin across SIGHUP", &src, Path::new(&local));
    lab.assert_transfer(TransferMode::Passive, "RETR", "slow.bin", SIZE as u64);

    // A broken file: refused, one record naming line and key; the file
    // in force before stays (idle timeout 2 s).
    lab.expect_log_errors(&["configuration not reloaded"]);
    fs::write(&config, BROKEN).unwrap();
    // The rate's token for this client has refilled by now (1/s).
    std::thread::sleep(Duration::from_millis(1100));
    lab.signal_gateway("HUP");
    let refused = await_log(&lab, "configuration not reloaded", 1);
    let spot = format!("{}:4: limits.idle-timeot: unknown field", config.display());
    assert!(refused[0].contains(&spot), "the record names file, line and key ({spot}): {refused:?}");
    let still = session_result(spawn_session(&lab, "-", false, 4));
    assert!(field(&still, "noop").contains("421"), "the 2 s idle timeout stays in force: {still}");
    assert_eq!(lab.gateway_log().matches("configuration reloaded").count(), 1, "{}", lab.gateway_log());
    assert_eq!(refused.len(), 1);
    assert!(lab.gateway_running());
}
