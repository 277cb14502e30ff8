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
        let log = fs::File::create(self.dir.join("ftpgate.log")).unwrap();
        Command::new(wrapper[0])
            .args(&wrapper[1..])
            .arg(bin)
            .args(["--listen", "0.0.0.0:2121", "--drain-timeout", "5"])
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

#[test]
fn started_as_the_unit_does_ready_after_the_privileges_are_narrowed() {
    require_root();
    let manager = Manager::new("unit");
    // the build tree may sit where `nobody` cannot enter
    let bin = manager.dir.join("ftpgate");
    fs::copy(common::gateway_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    // User=nobody, AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE,
    // CapabilityBoundingSet= the same, NoNewPrivileges=yes
    let caps = "+net_admin,+net_bind_service";
    let setpriv = [
        "unshare",
        "--net",
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--no-new-privs",
    ];
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
