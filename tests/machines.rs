//! lab/scenario's machines mode (lab/Vagrantfile: client, gateway and
//! server as VMs) without a hypervisor: three network namespaces play the
//! three machines. Each is cabled as the Vagrantfile cables its VM (one
//! private network per side, interface eth1, and eth2 on the gateway, the
//! IPv4 address Vagrant would give it) and provisioned by
//! lab/vagrant/provision.sh, the script the Vagrantfile runs (PACKAGES=0:
//! no apt, no cargo build; its paths pointed into the test's directory).
//! The client and the server each run a real sshd (openssh-server,
//! lab/deps.sh installs it) bound only to its lab address, with a host key
//! made per test, the key provisioning made for the gateway as its only
//! authorized key, and its own tmpfs for the scenarios' work directories,
//! so a file reaches the gateway only over ssh. Then `lab/scenario --hosts
//! machines NAME` runs in the gateway "machine", exactly as `vagrant ssh
//! gateway -c 'sudo /vagrant/lab/scenario NAME'` would, and the test checks
//! that the scenario's own checks held and its artefacts (sums, the
//! addresses the server logged, the ladder's sockets, text and SVG, every
//! host's pcap) are there.
//!
//! What this does not show: that Vagrant, VirtualBox and the Debian box
//! behave as assumed (private networks named eth1/eth2, root's sshd). No
//! VM was booted here.
//!
//! Nothing in the root namespace changes: sshd listens in its namespace
//! only (checked), is stopped by its PID, and the namespaces are removed
//! in Drop. One machine set at a time (a lock). Needs root.

mod common;

use common::scenario_run::{ladder_bin, Run};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

static ONE_SET: Mutex<()> = Mutex::new(());

/// Runs `argv` bounded; panics with its output unless it exits 0.
fn must(secs: u64, argv: &[&str]) -> String {
    let out = common::run_bounded(secs, argv);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\n{}{}",
        out.status,
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

/// The three "machines" and their sshds.
struct Machines {
    /// namespaces: client, gateway, server
    client: String,
    gateway: String,
    server: String,
    dir: PathBuf,
    sshd: Vec<Child>,
    ladder: PathBuf,
}

const SSHD: &str = "/usr/sbin/sshd";

impl Machines {
    fn up() -> Self {
        common::require_root();
        assert!(
            Path::new(SSHD).is_file(),
            "no {SSHD}: run lab/deps.sh (it installs openssh-server, its system-wide sshd neither started nor enabled)"
        );
        let ladder = ladder_bin();
        let tag = format!("mach{}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/ftpgate-lab/{tag}"));
        let _ = fs::remove_dir_all(&dir);
        for d in ["gateway-etc", "shared", "client", "server", "server/srv", "host-run"] {
            fs::create_dir_all(dir.join(d)).expect("test directory");
        }
        let mut m = Self {
            client: format!("{tag}-c"),
            gateway: format!("{tag}-g"),
            server: format!("{tag}-s"),
            dir,
            sshd: Vec::new(),
            ladder,
        };
        // from here on, Drop removes whatever was made
        for ns in [&m.client, &m.gateway, &m.server] {
            must(10, &["ip", "netns", "add", ns]);
            must(10, &["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // the private networks, named as Debian's box names the second
        // and third NIC; the IPv4 addresses Vagrant gives them
        must(
            10,
            &[
                "ip", "-n", &m.client, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1",
                "netns", &m.gateway,
            ],
        );
        must(
            10,
            &[
                "ip", "-n", &m.server, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2",
                "netns", &m.gateway,
            ],
        );
        for (ns, ifname, addr) in [
            (&m.client, "eth1", "192.0.2.10/24"),
            (&m.gateway, "eth1", "192.0.2.1/24"),
            (&m.gateway, "eth2", "198.51.100.1/24"),
            (&m.server, "eth1", "198.51.100.10/24"),
        ] {
            must(10, &["ip", "-n", ns, "addr", "add", addr, "dev", ifname]);
            must(10, &["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
        // provisioning, the gateway first (it makes the key the others trust)
        m.provision("gateway", &m.gateway.clone(), &[]);
        let keys = m.dir.join("client/authorized_keys");
        m.provision("client", &m.client.clone(), &[("AUTHORIZED_KEYS", &keys)]);
        let keys = m.dir.join("server/authorized_keys");
        let srv = m.dir.join("server/srv");
        m.provision("server", &m.server.clone(), &[("AUTHORIZED_KEYS", &keys), ("SERVER_DIR", &srv)]);
        for key in ["client/authorized_keys", "server/authorized_keys"] {
            let text = fs::read_to_string(m.dir.join(key)).expect("authorized_keys");
            assert!(
                text.starts_with("from=\"192.0.2.1,198.51.100.1,")
                    && text.trim_end().ends_with(" ftpgate-lab"),
                "{key}: {text}"
            );
        }
        m.start_sshd("client", "192.0.2.10");
        m.start_sshd("server", "198.51.100.10");
        m
    }

    fn provision(&self, role: &str, ns: &str, extra: &[(&str, &Path)]) {
        let script = common::repo_root().join("lab/vagrant/provision.sh");
        let cache = std::env::var("FTPGATE_LAB_CACHE")
            .unwrap_or_else(|_| common::repo_root().join("lab/.cache").to_string_lossy().into_owned());
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", "120", "ip", "netns", "exec", ns, "bash"])
            .arg(&script)
            .arg(role)
            .env("PACKAGES", "0")
            .env("LAB_ETC", self.dir.join("gateway-etc"))
            .env("SHARED", self.dir.join("shared"))
            .env("HOST_RUN", self.dir.join("host-run"))
            .env("FTPGATE_LAB_CACHE", cache)
            .env("FTPGATE_BIN", common::gateway_bin())
            .env("FTPGATE_LADDER", &self.ladder)
            .stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run provision.sh");
        assert!(
            out.status.success(),
            "provision.sh {role} failed:\n{}{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        );
    }

    /// sshd in the machine's namespace, listening on its lab address only,
    /// with its own tmpfs over host-run (mounted inside the mount namespace
    /// `ip netns exec` makes, whose mounts do not propagate back).
    fn start_sshd(&mut self, host: &str, addr: &str) {
        let ns = if host == "client" { self.client.clone() } else { self.server.clone() };
        let d = self.dir.join(host);
        let key = d.join("host_key");
        must(30, &["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host, "-f", &key.to_string_lossy()]);
        let conf = d.join("sshd_config");
        fs::write(
            &conf,
            format!(
                "ListenAddress {addr}:22\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 # the test's files live below the world-writable /tmp\nStrictModes no\n\
                 PidFile none\nPrintMotd no\nX11Forwarding no\nAllowTcpForwarding no\n\
                 MaxStartups 50:30:100\nLogLevel VERBOSE\n",
                key.display(),
                d.join("authorized_keys").display()
            ),
        )
        .expect("sshd_config");
        // sshd's privilege separation directory (Debian's build wants it)
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log = fs::File::create(d.join("sshd.log")).expect("sshd.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c"])
            .arg("mount -t tmpfs -o size=256m,mode=755 ftpgate-machine \"$1\" && exec \"$2\" -D -e -f \"$3\"")
            .args(["sh", &self.dir.join("host-run").to_string_lossy(), SSHD, &conf.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let pid = child.id();
        self.sshd.push(child);
        // bounded wait until it listens, in its namespace
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = common::run_bounded(10, &["ip", "netns", "exec", &ns, "ss", "-Hltnp", "sport = :22"]);
            let listening = common::text(&out.stdout);
            if listening.contains(&format!("pid={pid},")) {
                assert_eq!(
                    listening.lines().count(),
                    1,
                    "{host}: sshd listens on more than {addr}:22: {listening}"
                );
                assert!(listening.contains(&format!("{addr}:22")), "{host}: {listening}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: sshd (pid {pid}) did not listen on {addr}:22 within 15 s:\n{}",
                fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // nothing of it in the root namespace, and its tmpfs is its own
        let root = common::text(&common::run_bounded(10, &["ss", "-Hltnp"]).stdout);
        assert!(!root.contains(&format!("pid={pid},")), "sshd {pid} listens in the root namespace: {root}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(
            !mounts.contains(&*self.dir.join("host-run").to_string_lossy()),
            "the machine's tmpfs leaked"
        );
    }

    /// `lab/scenario --hosts machines NAME` in the gateway machine.
    fn scenario(&self, name: &'static str) -> Run {
        self.scenario_with(name, &[])
    }

    /// The same with more options (`--iptables`).
    fn scenario_with(&self, name: &'static str, options: &[&str]) -> Run {
        let out = self.dir.join(format!("out-{name}{}", options.join("")));
        let script = common::repo_root().join("lab/scenario");
        let res = Command::new("timeout")
            .args(["-k", "10", "120", "ip", "netns", "exec", &self.gateway])
            .arg(&script)
            .args(["--hosts", "machines", "--out", &out.to_string_lossy()])
            .args(options)
            .arg(name)
            .env("FTPGATE_LAB_MACHINES", self.dir.join("gateway-etc/machines.env"))
            .env("FTPGATE_BIN", common::gateway_bin())
            .env("FTPGATE_LADDER", &self.ladder)
            .stdin(Stdio::null())
            .output()
            .expect("run lab/scenario");
        let stdout = format!("{}{}", common::text(&res.stdout), common::text(&res.stderr));
        assert!(
            res.status.success(),
            "lab/scenario --hosts machines {name} failed ({}):\n{stdout}",
            res.status
        );
        assert!(stdout.contains("hosts: machines"), "{name} did not run in machines mode:\n{stdout}");
        assert!(stdout.contains(&format!("scenario {name}: every check held")), "{stdout}");
        let run = Run { name, out, stdout };
        // every host captured, and the client's and server's pcaps came
        // back (kernel-helper captures twice: a prefix per phase)
        let pcaps: Vec<(String, u64)> = fs::read_dir(run.path("pcap"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for host in ["client-eth1", "gw-c", "gw-s", "server-eth1"] {
            let found =
                pcaps.iter().filter(|(f, _)| f.ends_with(&format!("{host}.pcap"))).collect::<Vec<_>>();
            assert!(
                !found.is_empty() && found.iter().all(|(_, len)| *len > 24),
                "{name}: no {host}.pcap with packets: {pcaps:?}"
            );
        }
        self.assert_clean(name);
        run
    }

    /// After a scenario: its work directories on client and server are
    /// gone, nothing it started runs there, and the gateway has its
    /// provisioned rule set (strict nft, client side eth1) back.
    fn assert_clean(&self, name: &str) {
        for host in ["client", "server"] {
            let out = self
                .ssh(host, &format!("ls -A {}; ss -Hltn sport = :21", self.dir.join("host-run").display()));
            assert_eq!(out.trim(), "", "{name}: {host} kept files or a listener: {out}");
        }
        let rules =
            must(10, &["ip", "netns", "exec", &self.gateway, "nft", "list", "table", "inet", "ftpgate"]);
        assert!(rules.contains("iifname \"eth1\" tcp dport 21 reject"), "{name}: gateway rules: {rules}");
        // no kernel-helper table, no iptables chain of ftpgate's (iptables
        // may leave its own empty base tables: those pass everything)
        let all = must(10, &["ip", "netns", "exec", &self.gateway, "nft", "list", "tables"]);
        assert!(!all.contains("kernelftp"), "{name}: gateway tables left: {all}");
        for tool in ["iptables-save", "ip6tables-save"] {
            let saved = must(10, &["ip", "netns", "exec", &self.gateway, tool]);
            assert!(!saved.contains("FTPGATE") && !saved.contains("--helper"), "{name}: {tool}: {saved}");
        }
    }

    /// A shell command on a machine, over ssh from the gateway with the
    /// provisioned ssh_config (what lab/scenario uses)
    fn ssh(&self, host: &str, command: &str) -> String {
        let conf = self.dir.join("gateway-etc/ssh_config");
        must(
            30,
            &[
                "ip",
                "netns",
                "exec",
                &self.gateway,
                "ssh",
                "-F",
                &conf.to_string_lossy(),
                "-n",
                host,
                command,
            ],
        )
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for child in self.sshd.drain(..) {
            common::stop_child(child);
        }
        for ns in [&self.client, &self.gateway, &self.server] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = common::run_bounded(10, &["ip", "netns", "del", ns]);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn passive_and_active_v4_across_machines() {
    let _one = ONE_SET.lock().unwrap_or_else(|p| p.into_inner());
    let m = Machines::up();

    let r = m.scenario("passive-v4");
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), ["192.0.2.10"]);
    assert_eq!(r.count("ladder.json", "tproxy-redirect"), 1);
    assert_eq!(r.count("ladder.json", "foreign-listener"), 2);
    assert_eq!(r.count("ladder.json", "foreign-connect"), 3);
    for c in r.conns("ladder.json").iter().filter(|c| c["leg"] == "server side") {
        assert!(c["initiator"].as_str().unwrap().starts_with("192.0.2.10:"), "{c}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "passive"), ("result", "ok")]), 2);
    // the client's download was written on the client machine, not here
    let got: Value = serde_json::from_str(&r.text("client.json")).expect("client.json");
    assert!(got["transfers"][0]["local"]
        .as_str()
        .unwrap()
        .starts_with(&*m.dir.join("host-run").to_string_lossy()));
    r.assert_diagram_names(
        "ladder",
        &["TPROXY", "foreign listener", "foreign connect", "PASV", "227 Entering"],
    );

    let r = m.scenario("active-v4");
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), ["192.0.2.10"]);
    let listeners: Vec<_> =
        r.conns("ladder.json").into_iter().filter(|c| c["socket"] == "foreign-listener").collect();
    assert_eq!(listeners.len(), 2);
    for c in &listeners {
        assert_eq!(c["initiator"], "198.51.100.10:20", "{c}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "active"), ("result", "ok")]), 2);
    r.assert_diagram_names("ladder", &["TPROXY", "foreign listener", "foreign connect", "PORT 192,0,2,10"]);

    // the iptables form of the rule set on the gateway machine, then the
    // provisioned nft one back (assert_clean)
    let r = m.scenario_with("passive-v4", &["--iptables"]);
    assert!(r.stdout.contains("lab up (iptables rules)"), "{}", r.stdout);
    r.assert_same("got.bin", "scen.bin");
    assert_eq!(r.server_saw(), ["192.0.2.10"]);
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "passive"), ("result", "ok")]), 2);
}

/// The other scenarios written for machines: each must pass its own checks
/// there too (IPv6, curl's EPSV, the attacks, the kernel helper, the
/// router's own firewall).
#[test]
fn other_scenarios_across_machines() {
    let _one = ONE_SET.lock().unwrap_or_else(|p| p.into_inner());
    let m = Machines::up();
    for name in [
        "passive-v6",
        "active-v6",
        "epsv",
        "bounce",
        "port-theft",
        "hostile-227",
        "kernel-helper",
        "router-firewall",
    ] {
        let r = m.scenario(name);
        assert!(r.text("ladder.txt").contains("gateway"), "{name}: no ladder");
    }
    // port-theft added the thief's address on the client machine: gone again
    let addrs = m.ssh("client", "ip -br addr");
    assert!(!addrs.contains("192.0.2.20"), "the thief's address stayed on the client: {addrs}");
}

/// Ctrl-C in the middle of a machines-mode scenario (SIGINT to its process
/// group, as a terminal sends it, while vsftpd runs on the server machine):
/// the scenario fails, and every machine is left as provisioned: no
/// process of it on the server, no work directory, the gateway's rule set.
#[test]
fn interrupted_machines_scenario_cleans_up() {
    use std::os::unix::process::CommandExt;
    let _one = ONE_SET.lock().unwrap_or_else(|p| p.into_inner());
    let m = Machines::up();
    let out = m.dir.join("out-interrupted");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &m.gateway])
        .arg(common::repo_root().join("lab/scenario"))
        .args(["--hosts", "machines", "--out", &out.to_string_lossy(), "kernel-helper"])
        .env("FTPGATE_LAB_MACHINES", m.dir.join("gateway-etc/machines.env"))
        .env("FTPGATE_BIN", common::gateway_bin())
        .env("FTPGATE_LADDER", &m.ladder)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start lab/scenario");
    // `ip netns exec` execs: the scenario's shell has the child's PID, and
    // names its work directories after it. The server machine's tmpfs is
    // seen through its sshd's root (/proc/PID/root).
    let server_sshd = m.sshd[1].id();
    let work = PathBuf::from(format!("/proc/{server_sshd}/root"))
        .join(m.dir.join("host-run").strip_prefix("/").expect("absolute"))
        .join(format!("sc{}-server", child.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !work.join("vsftpd.pid").exists() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vsftpd never ran on the server machine ({})", work.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let vsftpd: u32 = fs::read_to_string(work.join("vsftpd.pid"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .expect("vsftpd's pidfile");
    // stopped first, so the interrupt lands mid-scenario however fast it runs
    let group = format!("-{}", child.id());
    for sig in ["-STOP", "-INT", "-CONT"] {
        assert!(Command::new("kill").args([sig, "--", &group]).status().expect("kill").success());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lab/scenario still ran 60 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "an interrupted scenario must not report success");
    let state = fs::read_to_string(format!("/proc/{vsftpd}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        "the server machine's vsftpd {vsftpd} still runs: {state}"
    );
    m.assert_clean("interrupted kernel-helper");
}

/// scale-out and failover need two gateways: machines mode refuses them
/// and says why, before it touches anything.
#[test]
fn two_gateway_scenarios_are_refused_on_machines() {
    for name in ["scale-out", "failover"] {
        let out = Command::new("timeout")
            .args(["-k", "5", "30"])
            .arg(common::repo_root().join("lab/scenario"))
            .args(["--hosts", "machines", name])
            .env("FTPGATE_LAB_MACHINES", "/nonexistent/machines.env")
            .stdin(Stdio::null())
            .output()
            .expect("run lab/scenario");
        let err = common::text(&out.stderr);
        assert!(!out.status.success(), "{name} ran in machines mode");
        assert!(err.contains("runs on network namespaces only") && err.contains("gateways"), "{name}: {err}");
    }
    let list = common::text(
        &common::run_bounded(30, &[&common::repo_root().join("lab/scenario").to_string_lossy(), "--list"])
            .stdout,
    );
    assert_eq!(list.matches("(namespaces only)").count(), 4, "{list}");
}

/// lab/Vagrantfile is valid Ruby (Vagrant itself cannot run here).
#[test]
fn vagrantfile_syntax() {
    let out = common::run_bounded(
        60,
        &["ruby", "-c", &common::repo_root().join("lab/Vagrantfile").to_string_lossy()],
    );
    assert!(
        out.status.success() && common::text(&out.stdout).contains("Syntax OK"),
        "ruby -c lab/Vagrantfile (ruby: lab/deps.sh installs it): {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}
