//! The service contract packaging/ftpgate.service relies on (Type=notify,
//! sd_notify(3)): ftpgate sends READY=1 on $NOTIFY_SOCKET only once its
//! control listener is bound (and, started as the unit starts it, once its
//! privileges are narrowed), and STOPPING=1 when SIGTERM starts the drain;
//! then it exits 0.
//!
//! No systemd runs here: the test binds the notify socket itself, and each
//! gateway runs in a network namespace of its own (`unshare --net`, gone
//! with the process). The unit's `User=` and `AmbientCapabilities=` are
//! reproduced with util-linux `setpriv`, as in tests/privilege.rs.
mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root, run_bounded, text};

/// CAP_NET_ADMIN (12) | CAP_NET_BIND_SERVICE (10).
const TWO_CAPS: u64 = (1 << 12) | (1 << 10);
/// 2121, as /proc/net/tcp writes a port.
const PORT_HEX: &str = "0849";

/// The service manager's end: a datagram socket any user may send to, in
/// a directory removed at the end.
struct Manager {
    dir: PathBuf,
    socket: UnixDatagram,
}

impl Manager {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ftpgate-service-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // sending to a socket needs write permission on it (unix(7))
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Self { dir, socket }
    }

    /// `ftpgate ARGS` under `wrapper` (each part execs, so the child's PID
    /// ends up as ftpgate's) with NOTIFY_SOCKET set; stderr to a file.
    fn spawn(&self, wrapper: &[&str], bin: &std::path::Path) -> Child {
        self.spawn_with(wrapper, bin, &[])
    }

    /// The same, with `extra` flags after the test's own.
    fn spawn_with(&self, wrapper: &[&str], bin: &std::path::Path, extra: &[String]) -> Child {
        let log = fs::File::create(self.dir.join("ftpgate.log")).unwrap();
        Command::new(wrapper[0])
            .args(&wrapper[1..])
            .arg(bin)
            .args(["--listen", "0.0.0.0:2121", "--drain-timeout", "5"])
            .args(extra)
            .env("NOTIFY_SOCKET", self.dir.join("notify"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the gateway")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("ftpgate.log")).unwrap_or_default()
    }

    /// The next notification holding the line `want`, within 10 s; fails
    /// when the gateway exits first. Earlier notifications are returned
    /// too, in order.
    fn expect(&self, gateway: &mut Child, want: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = text(&buf[..n]);
                    let done = msg.lines().any(|l| l == want);
                    seen.push(msg);
                    if done {
                        return seen;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(st) = gateway.try_wait().unwrap() {
                panic!("gateway exited ({st}) before {want}; got {seen:?}\n{}", self.log());
            }
        }
        panic!("no {want} within 10 s; got {seen:?}\n{}", self.log());
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// /proc/PID/net/tcp is the process's own namespace: a LISTEN (0A) row
/// on port 2121.
fn listens_on_2121(pid: u32) -> bool {
    let tcp = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    tcp.lines().skip(1).any(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        cols.len() > 3 && cols[1].ends_with(&format!(":{PORT_HEX}")) && cols[3] == "0A"
    })
}

fn status_field(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line[key.len() + 1..].trim().to_string()
}

/// SIGTERM (the unit's KillSignal), STOPPING=1, then exit 0 within 10 s.
fn sigterm_stops_cleanly(manager: &Manager, mut gateway: Child) {
    let out = run_bounded(5, &["kill", "-TERM", &gateway.id().to_string()]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    manager.expect(&mut gateway, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = gateway.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = gateway.kill();
            let _ = gateway.wait();
            panic!("no exit within 10 s of SIGTERM\n{}", manager.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", manager.log());
}

#[test]
fn started_as_root_listener_bound_ready_then_sigterm_stopping_exit_0() {
    require_root();
    let manager = Manager::new("root");
    let mut gateway = manager.spawn(&["unshare", "--net"], &common::gateway_bin());
    let pid = gateway.id();
    let seen = manager.expect(&mut gateway, "READY=1");
    assert_eq!(seen.len(), 1, "READY=1 is the first notification: {seen:?}");
    assert!(listens_on_2121(pid), "READY=1 before the listener on :2121\n{}", manager.log());
    sigterm_stops_cleanly(&manager, gateway);
}

/// What systemd runs the unit's commands as: User=nobody here,
/// AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE,
/// CapabilityBoundingSet= the same, NoNewPrivileges=yes.
fn as_the_unit() -> Vec<String> {
    let caps = "+net_admin,+net_bind_service";
    [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--no-new-privs",
    ]
    .map(String::from)
    .to_vec()
}

/// A copy of the binary where `nobody` can run it: the build tree may
/// sit where `nobody` cannot enter.
fn binary_for_nobody(manager: &Manager) -> PathBuf {
    let bin = manager.dir.join("ftpgate");
    fs::copy(common::gateway_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn started_as_the_unit_does_ready_after_the_privileges_are_narrowed() {
    require_root();
    let manager = Manager::new("unit");
    let bin = binary_for_nobody(&manager);
    let unit = as_the_unit();
    let setpriv: Vec<&str> =
        ["unshare", "--net"].into_iter().chain(unit.iter().map(String::as_str)).collect();
    let mut gateway = manager.spawn(&setpriv, &bin);
    let pid = gateway.id();
    manager.expect(&mut gateway, "READY=1");
    assert!(listens_on_2121(pid), "READY=1 before the listener on :2121\n{}", manager.log());
    let nobody = text(&run_bounded(5, &["id", "-u", "nobody"]).stdout).trim().to_string();
    assert_eq!(status_field(pid, "Uid").split_whitespace().next(), Some(nobody.as_str()));
    let cap = |key| u64::from_str_radix(&status_field(pid, key), 16).unwrap();
    assert_eq!(cap("CapEff"), TWO_CAPS, "at READY=1\n{}", manager.log());
    assert_eq!(cap("CapAmb"), 0, "ambient set not cleared at READY=1\n{}", manager.log());
    sigterm_stops_cleanly(&manager, gateway);
}

/// The unit's ExecReload= lines, in order, as argument vectors:
/// `$FTPGATE_ARGS` split on white space (as systemd does for an unquoted
/// `$VAR`), `$MAINPID` the gateway's PID and /usr/bin/ftpgate the binary
/// under test.
fn exec_reload(bin: &std::path::Path, ftpgate_args: &[String], pid: u32) -> Vec<Vec<String>> {
    let unit = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ftpgate.service")).unwrap();
    let lines: Vec<Vec<String>> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .map(|cmd| {
            cmd.split_whitespace()
                .flat_map(|word| match word {
                    "$FTPGATE_ARGS" => ftpgate_args.to_vec(),
                    "$MAINPID" => vec![pid.to_string()],
                    "/usr/bin/ftpgate" => vec![bin.display().to_string()],
                    w => vec![w.to_string()],
                })
                .collect()
        })
        .collect();
    assert!(!lines.is_empty(), "packaging/ftpgate.service has no ExecReload=");
    lines
}

/// `systemctl reload` as systemd carries it out: each ExecReload= line in
/// turn, as the unit's user, until one fails. Returns whether the reload
/// succeeded, and the failing line's stderr.
fn systemctl_reload(commands: &[Vec<String>]) -> (bool, String) {
    for argv in commands {
        let full: Vec<String> = as_the_unit().into_iter().chain(argv.iter().cloned()).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = run_bounded(10, &full);
        if !out.status.success() {
            return (false, text(&out.stderr));
        }
    }
    (true, String::new())
}

/// The gateway's log holds `want` `times` times, within 5 s.
fn log_counts(manager: &Manager, want: &str, times: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if manager.log().matches(want).count() >= times {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn systemctl_reload_fails_when_the_daemon_would_refuse_the_file() {
    require_root();
    let manager = Manager::new("reload");
    let bin = binary_for_nobody(&manager);
    let file = manager.dir.join("ftpgate.toml");
    fs::write(&file, "[limits]\nidle-timeout = 60\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    // FTPGATE_ARGS of /etc/default/ftpgate: the file to read.
    let ftpgate_args = vec!["--config".to_string(), file.display().to_string()];
    let unit = as_the_unit();
    let setpriv: Vec<&str> =
        ["unshare", "--net"].into_iter().chain(unit.iter().map(String::as_str)).collect();
    let mut gateway = manager.spawn_with(&setpriv, &bin, &ftpgate_args);
    manager.expect(&mut gateway, "READY=1");
    let reload = exec_reload(&bin, &ftpgate_args, gateway.id());

    // A valid change: the reload succeeds and the daemon applies it.
    fs::write(&file, "[limits]\nidle-timeout = 90\n").unwrap();
    let (ok, stderr) = systemctl_reload(&reload);
    assert!(ok, "a valid file: the reload failed: {stderr}\n{}", manager.log());
    assert!(
        log_counts(&manager, "configuration reloaded", 1),
        "the daemon did not reload\n{}",
        manager.log()
    );

    // An invalid file: the reload fails with the checker's message, and
    // the daemon is never signalled (nothing else is logged).
    fs::write(&file, "[limits]\nidle-timeot = 90\n").unwrap();
    let (ok, stderr) = systemctl_reload(&reload);
    assert!(!ok, "an invalid file: the reload reported success\n{}", manager.log());
    assert!(stderr.contains("idle-timeot"), "the reload's error names the key: {stderr}");

    // A file the unit's user cannot read, as after `chmod 0600`: the
    // daemon would refuse it at the reload, so the reload fails.
    fs::write(&file, "[limits]\nidle-timeout = 120\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, stderr) = systemctl_reload(&reload);
    assert!(!ok, "an unreadable file: the reload reported success\n{}", manager.log());
    assert!(stderr.contains("ermission denied"), "the reload's error says why: {stderr}");

    std::thread::sleep(Duration::from_millis(300));
    let log = manager.log();
    assert_eq!(log.matches("configuration reloaded").count(), 1, "{log}");
    assert_eq!(log.matches("not reloaded").count(), 0, "the daemon was signalled: {log}");
    sigterm_stops_cleanly(&manager, gateway);
}
