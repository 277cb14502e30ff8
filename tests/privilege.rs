//! Least privilege (issue 12): the gateway keeps only CAP_NET_ADMIN and
//! CAP_NET_BIND_SERVICE (bits 12 and 10: mask 0x1400) as an ordinary user,
//! and every kind of transfer still works, including active-mode data to
//! the client from the server's port 20.
//!
//! - `--user nobody`: started as root, drops after binding.
//! - started as `nobody` with ambient capabilities (what a systemd unit's
//!   `AmbientCapabilities=` gives), through util-linux `setpriv`.
//! - started as `nobody` from a binary with file capabilities (`setcap =p`).
//! - started as `nobody` without them: exit 2 and an error naming the
//!   capability and how to grant it.
//!
//! The process is read from outside, in /proc/PID/status: the daemon's own
//! log line is not taken as proof.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{curl_get, curl_put, run_bounded, text, Lab, Mode, Ns, RoundTrip, Rules, GW_PORT, SERVER_IP};

/// CAP_NET_ADMIN (12) | CAP_NET_BIND_SERVICE (10).
const TWO_CAPS: u64 = (1 << 12) | (1 << 10);
const MODES: [Mode; 4] = [Mode::Epsv, Mode::Pasv, Mode::Eprt, Mode::Port];

// -- reading a process from outside ------------------------------------------

/// /proc/PID/status as key → value.
fn proc_status(pid: u32) -> HashMap<String, String> {
    status_at(&format!("/proc/{pid}/status"))
}

/// /proc/.../status of a process or of one of its threads (task).
fn status_at(path: &str) -> HashMap<String, String> {
    let status = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn status_hex(status: &HashMap<String, String>, key: &str) -> u64 {
    let v = status.get(key).unwrap_or_else(|| panic!("no {key} in /proc/PID/status"));
    u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{key}: {v:?}: {e}"))
}

/// The four ids of a `Uid:`/`Gid:` line (real, effective, saved, fs).
fn status_ids(status: &HashMap<String, String>, key: &str) -> Vec<u32> {
    status[key].split_whitespace().map(|n| n.parse().unwrap()).collect()
}

/// uid of a user or gid of a group from the system's databases.
fn getent_id(db: &str, name: &str) -> u32 {
    let out = run_bounded(10, &["getent", db, name]);
    assert!(out.status.success(), "getent {db} {name}: no such entry (the test needs it)");
    text(&out.stdout).split(':').nth(2).and_then(|id| id.trim().parse().ok()).expect("numeric id")
}

/// The process is ftpgate (not `ip`, not `setpriv`: both exec), running as
/// `user`/`group` with exactly the two capabilities, nothing inheritable or
/// ambient, no supplementary group, no_new_privs, in every thread
/// (capabilities are per thread): the main thread and one per event loop
/// (`--workers`, by default one per core).
fn assert_least_privilege(pid: u32, bin: &Path, user: &str, group: &str, bounding: u64, log: &str) {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, fs::canonicalize(bin).unwrap(), "pid {pid} is not the gateway");
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let st = proc_status(pid);
    assert_eq!(st["Threads"], (workers + 1).to_string(), "Threads\n{st:#?}\n--- gateway log ---\n{log}");
    let tasks: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(tasks.len(), workers + 1, "{tasks:?}");
    for tid in tasks {
        assert_thread_least_privilege(
            &status_at(&format!("/proc/{pid}/task/{tid}/status")),
            user,
            group,
            bounding,
            log,
        );
    }
}

fn assert_thread_least_privilege(
    st: &HashMap<String, String>,
    user: &str,
    group: &str,
    bounding: u64,
    log: &str,
) {
    let (uid, gid) = (getent_id("passwd", user), getent_id("group", group));
    let show = format!("{st:#?}\n--- gateway log ---\n{log}");
    assert_eq!(status_ids(st, "Uid"), vec![uid; 4], "Uid is not {user}'s\n{show}");
    assert_eq!(status_ids(st, "Gid"), vec![gid; 4], "Gid is not {group}'s\n{show}");
    assert_eq!(st["Groups"], "", "supplementary groups left\n{show}");
    assert_eq!(status_hex(st, "CapEff"), TWO_CAPS, "CapEff\n{show}");
    assert_eq!(status_hex(st, "CapPrm"), TWO_CAPS, "CapPrm\n{show}");
    assert_eq!(status_hex(st, "CapInh"), 0, "CapInh\n{show}");
    assert_eq!(status_hex(st, "CapAmb"), 0, "CapAmb\n{show}");
    assert_eq!(status_hex(st, "CapBnd"), bounding, "CapBnd\n{show}");
    assert_eq!(st["NoNewPrivs"], "1", "NoNewPrivs\n{show}");
}

// -- port 20 ------------------------------------------------------------------

/// Below this port a bind needs CAP_NET_BIND_SERVICE in the gateway's
/// namespace; it must be above 20, or port 20 would prove nothing.
fn assert_port_20_is_privileged(lab: &Lab) {
    let out = lab.exec(Ns::Gateway, 10, &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    let start: u32 = text(&out.stdout).trim().parse().expect("ip_unprivileged_port_start");
    assert!(start > 20, "port 20 is unprivileged in the gateway namespace (start {start})");
}

/// Counters in the client namespace of the connections opened toward the
/// client (SYN without ACK) from the server's address: from port 20, and
/// from any other port. Only active-mode data connections do that.
fn count_syns_to_client(lab: &Lab) {
    let ruleset = lab.run.join("privilege-count.nft");
    fs::write(
        &ruleset,
        format!(
            "table inet fgprivilege {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tip saddr {SERVER_IP} tcp sport 20 tcp flags & (syn | ack) == syn counter comment \"from20\"\n\
             \t\tip saddr {SERVER_IP} tcp sport != 20 tcp flags & (syn | ack) == syn counter comment \"other\"\n\
             \t}}\n\
             }}\n"
        ),
    )
    .unwrap();
    let out = lab.exec(Ns::Client, 10, &["nft", "-f", ruleset.to_str().unwrap()]);
    assert!(out.status.success(), "nft in the client namespace: {}", text(&out.stderr));
}

/// (SYNs from port 20, SYNs from other ports) seen by the client.
fn syns_to_client(lab: &Lab) -> (u64, u64) {
    let out = lab.exec(Ns::Client, 10, &["nft", "list", "chain", "inet", "fgprivilege", "input"]);
    assert!(out.status.success(), "nft list: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    let packets = |comment: &str| -> u64 {
        let line = listing
            .lines()
            .find(|l| l.contains(&format!("comment \"{comment}\"")))
            .unwrap_or_else(|| panic!("no rule {comment}:\n{listing}"));
        let after = line.split("counter packets ").nth(1).expect("counter");
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    (packets("from20"), packets("other"))
}

// -- transfers ----------------------------------------------------------------

/// A download and an upload of an empty and a multi-MiB file in each of
/// EPSV, PASV, EPRT and PORT, contents and ftpgate's records compared;
/// returns how many data connections went toward the client (active mode).
fn transfer_every_mode(lab: &Lab) -> u64 {
    let mut active = 0;
    for mode in MODES {
        let rt = RoundTrip::prepare(lab, &format!("{mode:?}").to_lowercase(), mode.transfer_mode());
        for (remote, local) in rt.gets(lab) {
            curl_get(lab, mode, &remote, &local);
        }
        for (local, remote) in rt.puts(lab) {
            curl_put(lab, mode, &local, &remote);
        }
        rt.verify(lab);
        if mode.is_active() {
            active += 2 * rt.files.len() as u64;
        }
    }
    active
}

/// Every active data connection reached the client from port 20.
fn assert_active_data_from_port_20(lab: &Lab, active: u64, log: &str) {
    let (from20, other) = syns_to_client(lab);
    eprintln!("active data connections to the client: {from20} SYNs from port 20, {other} from others");
    // A lost SYN is retransmitted: at least one per connection, never from
    // another port.
    assert!(
        from20 >= active && other == 0,
        "connections to the client: {from20} from port 20, {other} from other ports; \
         want >= {active} and 0\n{log}"
    );
}

/// One download and one upload of a multi-MiB file per mode (a size of
/// its own per mode), contents compared, and ftpgate's record of each.
fn get_and_put(lab: &Lab, tag: &str, modes: &[Mode]) {
    for &mode in modes {
        let name = format!("{tag}-{mode:?}.bin");
        let len = common::big_size(mode.transfer_mode());
        let src = lab.server_file(&name, len);
        let local = lab.client_path(&name);
        curl_get(lab, mode, &name, &local);
        common::assert_same_file(&format!("{mode:?} download"), &src, Path::new(&local));
        let remote = format!("up-{name}");
        curl_put(lab, mode, &local, &remote);
        common::assert_same_file(&format!("{mode:?} upload"), &src, &lab.upload_dir().join(&remote));
        lab.assert_transfer(mode.transfer_mode(), "RETR", &name, len as u64);
        lab.assert_transfer(mode.transfer_mode(), "STOR", &remote, len as u64);
    }
}

/// The PID in the lab's pidfile of the gateway (lab/lib.sh's format:
/// `PID START BOOT_ID CMD`).
fn pidfile_pid(lab: &Lab) -> u32 {
    let line = fs::read_to_string(lab.run.join("ftpgate.pid")).expect("ftpgate.pid");
    line.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("pidfile: {line:?}"))
}

// -- a gateway this file starts itself (setpriv) ------------------------------

/// ftpgate started by this file under `setpriv` in the gateway namespace,
/// logging to the lab's ftpgate.log (so the lab's transfer-record
/// assertions and its clean-log check cover it) and recorded in the lab's
/// pidfile (so `netns.sh down`/`gc` stop it after a killed run). Ended by
/// PID in `Drop`, before the lab is torn down: declare it after the lab.
struct Gateway {
    child: Option<Child>,
    run: PathBuf,
}

impl Gateway {
    fn log(&self) -> String {
        fs::read_to_string(self.run.join("ftpgate.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and a bounded wait.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("sh").args(["-c", "kill -TERM \"$0\"", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait().unwrap();
                let _ = fs::remove_file(self.run.join("ftpgate.pid"));
                panic!("ftpgate ignored SIGTERM for 15 s (killed: {st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = fs::remove_file(self.run.join("ftpgate.pid"));
        st
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// A copy of the gateway binary that any user may run: the build tree may
/// sit under a directory that `nobody` cannot enter.
fn world_runnable_bin(lab: &Lab) -> PathBuf {
    let bin = lab.run.join("ftpgate");
    fs::copy(common::gateway_bin(), &bin).unwrap();
    let out = run_bounded(10, &["chmod", "755", bin.to_str().unwrap()]);
    assert!(out.status.success());
    bin
}

/// `ip netns exec GW setpriv <setpriv> BIN --listen … <extra>`: every step
/// execs, so the child's PID ends up as ftpgate's.
fn setpriv_command(lab: &Lab, setpriv: &[&str], bin: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns(Ns::Gateway), "setpriv"])
        .args(setpriv)
        .arg(bin)
        .args(["--listen", &format!("0.0.0.0:{GW_PORT}"), "--log-level", "debug"])
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

/// Runs ftpgate under `setpriv` and waits (bounded) for its control listener.
fn start_with_setpriv(lab: &Lab, setpriv: &[&str], bin: &Path) -> Gateway {
    let file = fs::OpenOptions::new().create(true).append(true).open(lab.run.join("ftpgate.log")).unwrap();
    let child = setpriv_command(lab, setpriv, bin, &[])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn setpriv");
    let mut gw = Gateway { child: Some(child), run: lab.run.clone() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab.listeners().iter().any(|l| l.ends_with(&format!(":{GW_PORT}"))) {
            break;
        }
        if let Some(st) = gw.child.as_mut().unwrap().try_wait().unwrap() {
            gw.child = None;
            panic!("ftpgate exited at start ({st}):\n{}", gw.log());
        }
        assert!(Instant::now() < deadline, "ftpgate did not listen within 10 s:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Listening, so `ip` and `setpriv` have exec'd: the PID runs `bin` now.
    let script = common::repo_root().join("lab/netns.sh");
    let pid = gw.pid().to_string();
    let argv = [script.to_str().unwrap(), "record-pid", &lab.name, "ftpgate", &pid, bin.to_str().unwrap()];
    let out = run_bounded(10, &argv);
    assert!(out.status.success(), "netns.sh record-pid: {}", text(&out.stderr));
    gw
}

/// Runs ftpgate to its end (bounded); (exit code, stderr).
fn run_to_exit(lab: &Lab, setpriv: &[&str], bin: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new("timeout");
    let inner = setpriv_command(lab, setpriv, bin, extra);
    cmd.args(["-k", "5", "20"]).arg(inner.get_program()).args(inner.get_args()).stdin(Stdio::null());
    let out = cmd.output().expect("run setpriv");
    (out.status.code(), text(&out.stderr))
}

const AS_NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

// -- the tests ----------------------------------------------------------------

#[test]
fn user_nobody_keeps_two_capabilities_and_every_mode_transfers() {
    let mut lab = Lab::new("privuser", Rules::Nft);
    assert_port_20_is_privileged(&lab);
    lab.start_gateway(&["--user", "nobody"]);
    let pid = pidfile_pid(&lab);
    let bin = common::gateway_bin();
    assert_least_privilege(pid, &bin, "nobody", "nogroup", TWO_CAPS, &lab.gateway_log());
    let log = lab.gateway_log();
    assert!(
        log.lines().any(|l| l.contains("privileges dropped")
            && l.contains("user: nobody")
            && l.contains("capabilities: CAP_NET_ADMIN,CAP_NET_BIND_SERVICE")
            && l.contains("bounding: CAP_NET_ADMIN,CAP_NET_BIND_SERVICE")),
        "no 'privileges dropped' record:\n{log}"
    );

    count_syns_to_client(&lab);
    let active = transfer_every_mode(&lab);
    assert_active_data_from_port_20(&lab, active, &lab.gateway_log());
    let transfers = 2 * 2 * MODES.len();
    lab.assert_transfers_from_client(transfers);
    assert_eq!(lab.server_transfers(), (transfers / 2, transfers / 2), "{}", lab.diagnostics());
    lab.assert_no_data_listeners();

    // Nothing came back during the transfers.
    assert_least_privilege(pid, &bin, "nobody", "nogroup", TWO_CAPS, &lab.gateway_log());
    let st = lab.stop_gateway();
    assert!(st.success(), "ftpgate exit on SIGTERM: {st}\n{}", lab.gateway_log());
}

/// Holds, as `nobody`, pipes at 256 KiB until the kernel refuses more
/// (fs.pipe-user-pages-soft, pipe(7)): from then on every new pipe of that
/// user has one or two pages and cannot grow. Ends when its stdin closes.
struct PipeQuotaHog(Child);

impl PipeQuotaHog {
    const SCRIPT: &'static str = "import os, fcntl, sys\n\
        pipes = []\n\
        for _ in range(100000):  # F_SETPIPE_SZ 1031, F_GETPIPE_SZ 1032\n\
        \x20   try:\n\
        \x20       r, w = os.pipe()\n\
        \x20       pipes.append((r, w))\n\
        \x20       fcntl.fcntl(w, 1031, 256 * 1024)\n\
        \x20   except OSError:\n\
        \x20       break\n\
        print(len(pipes), fcntl.fcntl(pipes[-1][1], 1032), flush=True)\n\
        sys.stdin.read()\n";

    /// Starts the hog and waits for its report: (pipes held, size of a new pipe).
    fn start() -> (Self, usize, usize) {
        use std::io::{BufRead, BufReader};
        let python = "/usr/bin/python3";
        assert!(Path::new(python).exists(), "{python} is needed (nobody cannot run a pyenv shim)");
        let mut argv = vec!["timeout", "-k", "5", "120", "setpriv"];
        argv.extend(AS_NOBODY);
        argv.extend([python, "-c", Self::SCRIPT]);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the pipe hog");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let mut hog = Self(child);
        let nums: Vec<usize> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        let [held, size] = nums[..] else {
            let _ = hog.0.kill();
            panic!("pipe hog did not report: {line:?}");
        };
        (hog, held, size)
    }
}

impl Drop for PipeQuotaHog {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Dropped to an ordinary user, the gateway is subject to the per-user pipe
/// quota that root escapes (CAP_SYS_RESOURCE). With it spent, the relay's
/// pipes stay small: transfers are slower but complete, byte for byte.
#[test]
fn user_nobody_transfers_with_the_pipe_quota_spent() {
    let mut lab = Lab::new("privpipe", Rules::Nft);
    lab.start_gateway(&["--user", "nobody"]);
    let (hog, held, size) = PipeQuotaHog::start();
    eprintln!("nobody holds {held} pipes of 256 KiB; a new pipe has {size} bytes");
    assert!(size <= 8192, "a new pipe of nobody has {size} bytes with {held} pipes held: quota not spent");
    get_and_put(&lab, "pipe", &[Mode::Pasv, Mode::Port]);
    drop(hog);
    lab.assert_no_data_listeners();
    let st = lab.stop_gateway();
    assert!(st.success(), "ftpgate exit on SIGTERM: {st}\n{}", lab.gateway_log());
}

#[test]
fn ambient_capabilities_start_as_nobody_and_transfer() {
    let lab = Lab::new("privamb", Rules::Nft);
    assert_port_20_is_privileged(&lab);
    let bin = world_runnable_bin(&lab);
    // What a unit with User=nobody, AmbientCapabilities= and
    // CapabilityBoundingSet= of the two gives the process.
    let mut setpriv = AS_NOBODY.to_vec();
    setpriv.extend([
        "--inh-caps=-all,+net_admin,+net_bind_service",
        "--ambient-caps=+net_admin,+net_bind_service",
        "--bounding-set=-all,+net_admin,+net_bind_service",
    ]);
    let mut gw = start_with_setpriv(&lab, &setpriv, &bin);
    assert_least_privilege(gw.pid(), &bin, "nobody", "nogroup", TWO_CAPS, &gw.log());
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("privileges dropped") && l.contains("user: nobody")),
        "no 'privileges dropped' record:\n{log}"
    );

    count_syns_to_client(&lab);
    get_and_put(&lab, "amb", &[Mode::Pasv, Mode::Port]);
    assert_active_data_from_port_20(&lab, 2, &gw.log());
    lab.assert_transfers_from_client(4);
    lab.assert_no_data_listeners();
    assert_least_privilege(gw.pid(), &bin, "nobody", "nogroup", TWO_CAPS, &gw.log());
    let st = gw.stop();
    assert!(st.success(), "ftpgate exit on SIGTERM: {st}\n{}", gw.log());
}

/// `setcap cap_net_admin,cap_net_bind_service=p`: the capabilities arrive
/// permitted but not effective; the gateway raises them itself. The
/// bounding set stays as started (no CAP_SETPCAP to narrow it), and the log
/// says so.
#[test]
fn file_capabilities_without_effective_bit_are_raised_and_transfer() {
    let lab = Lab::new("privfcap", Rules::Nft);
    let bin = world_runnable_bin(&lab);
    let setcap = "/usr/sbin/setcap";
    assert!(Path::new(setcap).exists(), "{setcap} is needed (Debian package libcap2-bin)");
    let out = run_bounded(10, &[setcap, "cap_net_admin,cap_net_bind_service=p", bin.to_str().unwrap()]);
    assert!(out.status.success(), "setcap: {}", text(&out.stderr));
    let mut gw = start_with_setpriv(&lab, &AS_NOBODY, &bin);
    let own_bounding = status_hex(&proc_status(std::process::id()), "CapBnd");
    assert_least_privilege(gw.pid(), &bin, "nobody", "nogroup", own_bounding, &gw.log());
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("privileges dropped") && l.contains("bounding: unchanged")),
        "no 'privileges dropped' record with the bounding set unchanged:\n{log}"
    );

    count_syns_to_client(&lab);
    get_and_put(&lab, "fcap", &[Mode::Epsv, Mode::Eprt]);
    assert_active_data_from_port_20(&lab, 2, &gw.log());
    lab.assert_no_data_listeners();
    let st = gw.stop();
    assert!(st.success(), "ftpgate exit on SIGTERM: {st}\n{}", gw.log());
}

#[test]
fn unprivileged_start_without_the_capabilities_exits_2_naming_them() {
    let lab = Lab::new("privnone", Rules::None);
    let bin = world_runnable_bin(&lab);
    let no_listener = |what: &str| {
        assert!(
            !lab.listeners().iter().any(|l| l.ends_with(&format!(":{GW_PORT}"))),
            "{what}: a control listener was left"
        );
    };

    // No capability at all: the first one is named, with both remedies.
    let (code, err) = run_to_exit(&lab, &AS_NOBODY, &bin, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CAP_NET_ADMIN (IP_TRANSPARENT"), "{err}");
    assert!(err.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE"), "{err}");
    assert!(err.contains("setcap cap_net_admin,cap_net_bind_service=ep"), "{err}");
    no_listener("no capability");

    // Only CAP_NET_ADMIN: port 20 would fail later, so the start fails now.
    let mut setpriv = AS_NOBODY.to_vec();
    setpriv.extend(["--inh-caps=-all,+net_admin", "--ambient-caps=+net_admin"]);
    let (code, err) = run_to_exit(&lab, &setpriv, &bin, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CAP_NET_BIND_SERVICE (active-mode data from the server's port 20)"), "{err}");
    no_listener("CAP_NET_ADMIN only");

    // A change of user needs root.
    let (code, err) = run_to_exit(&lab, &AS_NOBODY, &bin, &["--user", "root"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("changing user needs root"), "{err}");

    // As root: an unknown user is refused before anything is bound.
    let (code, err) = run_to_exit(&lab, &[], &bin, &["--user", "ftpgate-no-such-user"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--user ftpgate-no-such-user: no such user"), "{err}");
    no_listener("unknown user");
}
