//! `ftpgate doctor` in the lab's gateway namespace, with the set-up that
//! `ftpgate rules` installed there: every check ok and exit status 0; then
//! each item broken in turn: exactly its line goes WRONG, the exit status is
//! 1, and the command the line gives as the fix, run as printed, makes the
//! doctor happy again (so the fix commands are tested too).
//!
//! Not breakable here: the kernel pieces (modules are the host's, not the
//! namespace's); the unit tests in src/doctor.rs cover their lines.
mod common;
use common::{gateway_bin, lab_doctor, text, Lab, Ns, Rules};

struct Report {
    code: Option<i32>,
    lines: Vec<String>,
}

impl Report {
    fn wrong(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("WRONG  "))
            .map(|l| l.split(':').next().unwrap_or(l).to_string())
            .collect()
    }

    fn fix(&self, what: &str) -> String {
        let line = self
            .lines
            .iter()
            .find(|l| l.starts_with(&format!("WRONG  {what}:")))
            .unwrap_or_else(|| panic!("no WRONG line for {what}: {:#?}", self.lines));
        line.split_once("  fix: ").map(|(_, f)| f.to_string()).unwrap_or_else(|| panic!("no fix in {line}"))
    }
}

fn doctor_with(lab: &Lab, prefix: &[&str]) -> Report {
    let out = lab_doctor(lab, prefix);
    assert!(out.stderr.is_empty(), "doctor wrote to stderr: {}", text(&out.stderr));
    Report { code: out.status.code(), lines: text(&out.stdout).lines().map(str::to_string).collect() }
}

fn doctor(lab: &Lab) -> Report {
    doctor_with(lab, &[])
}

fn assert_healthy(lab: &Lab, after: &str) {
    let r = doctor(lab);
    assert!(r.wrong().is_empty() && r.code == Some(0), "after {after}: {:#?} (exit {:?})", r.lines, r.code);
    assert_eq!(r.lines.len(), 22, "{:#?}", r.lines);
}

/// Runs a shell command in the gateway namespace, with ftpgate in PATH
/// (the fix commands name it).
fn sh(lab: &Lab, command: &str) {
    let dir = gateway_bin().parent().unwrap().to_str().unwrap().to_string();
    let script = format!("PATH={dir}:$PATH; {command}");
    let out = lab.exec(Ns::Gateway, 30, &["sh", "-c", &script]);
    assert!(out.status.success(), "`{command}` failed: {}{}", text(&out.stdout), text(&out.stderr));
}

/// Breaks with `breaker`, expects exactly `wrong` to go WRONG, runs the
/// fix printed for the first of them, expects all ok again. Returns the fix.
fn break_and_fix(lab: &Lab, breaker: &str, wrong: &[&str]) -> String {
    sh(lab, breaker);
    let r = doctor(lab);
    assert_eq!(r.wrong(), wrong, "after `{breaker}`: {:#?}", r.lines);
    assert_eq!(r.code, Some(1), "exit status after `{breaker}`: {:#?}", r.lines);
    let fix = r.fix(wrong[0]);
    for other in &wrong[1..] {
        assert_eq!(r.fix(other), fix, "one fix for {wrong:?}: {:#?}", r.lines);
    }
    sh(lab, &fix);
    assert_healthy(lab, &format!("`{breaker}` then its fix `{fix}`"));
    fix
}

#[test]
fn doctor_healthy_lab_then_each_item_broken_and_fixed() {
    let lab = Lab::new("doctor", Rules::Nft);
    assert_healthy(&lab, "lab up");
    let _ = break_and_fix(&lab, "ip -4 rule del fwmark 0x1 lookup 100", &["policy rule IPv4"]);
    let _ = break_and_fix(&lab, "ip -6 rule del fwmark 0x1 lookup 100", &["policy rule IPv6"]);
    let _ = break_and_fix(&lab, "ip -4 route del local 0.0.0.0/0 dev lo table 100", &["local route IPv4"]);
    let _ = break_and_fix(&lab, "ip -6 route del local ::/0 dev lo table 100", &["local route IPv6"]);
    let _ = break_and_fix(&lab, "sysctl -qw net.ipv4.ip_forward=0", &["forwarding IPv4"]);
    let _ = break_and_fix(&lab, "sysctl -qw net.ipv6.conf.all.forwarding=0", &["forwarding IPv6"]);
    let _ = break_and_fix(&lab, "sysctl -qw net.ipv4.conf.gw-c.rp_filter=1", &["rp_filter"]);
    // the divert rule alone (the inet table serves both families)
    let _ = break_and_fix(
        &lab,
        "nft delete rule inet ftpgate divert handle \
         $(nft -a list chain inet ftpgate divert | sed -n 's/.*socket transparent.*# handle //p')",
        &[
            "divert rule IPv4",
            "icmp errors IPv4",
            "routed flows IPv4",
            "divert rule IPv6",
            "icmp errors IPv6",
            "routed flows IPv6",
        ],
    );
    // the forward mark's pass-by rule (rule sets of ftpgate before it): a
    // data listener could take a routed connection's packets
    let _ = break_and_fix(
        &lab,
        "nft delete rule inet ftpgate divert handle \
         $(nft -a list chain inet ftpgate divert | sed -n 's/^.*ct mark & 0x00000002 == 0x00000002 accept # handle //p')",
        &["routed flows IPv4", "routed flows IPv6"],
    );
    // the nft form's wildcard rule: routed connections to port 2121 would
    // be taken by the control listener
    let _ = break_and_fix(
        &lab,
        "nft delete rule inet ftpgate divert handle \
         $(nft -a list chain inet ftpgate divert | sed -n 's/^.*socket wildcard 1 accept # handle //p')",
        &["routed flows IPv4", "routed flows IPv6"],
    );
    // the divert rule moved before the TPROXY rules (rule sets of ftpgate
    // before 3546891): a reused 4-tuple would go to a TIME_WAIT socket
    let _ = break_and_fix(
        &lab,
        "nft delete rule inet ftpgate divert handle \
         $(nft -a list chain inet ftpgate divert | sed -n 's/.*socket transparent.*# handle //p') && \
         nft insert rule inet ftpgate divert meta l4proto tcp socket transparent 1 meta mark set 0x1 accept",
        &[
            "icmp errors IPv4",
            "routed flows IPv4",
            "rule order IPv4",
            "icmp errors IPv6",
            "routed flows IPv6",
            "rule order IPv6",
        ],
    );
    // the TPROXY rule for IPv6 alone (not the rule for stray segments, which
    // also tproxies)
    let _ = break_and_fix(
        &lab,
        "nft delete rule inet ftpgate divert handle \
         $(nft -a list chain inet ftpgate divert | sed -n 's/.*dport 21 tproxy ip6 .*# handle //p')",
        &["tproxy rule IPv6"],
    );
    // every rule: the fix is the rules command, piped into nft
    lab.rules("del", Rules::Nft);
    let r = doctor(&lab);
    assert_eq!(
        r.wrong(),
        [
            "divert rule IPv4",
            "icmp errors IPv4",
            "routed flows IPv4",
            "tproxy rule IPv4",
            "divert rule IPv6",
            "icmp errors IPv6",
            "routed flows IPv6",
            "tproxy rule IPv6"
        ]
    );
    assert!(r.fix("tproxy rule IPv4").ends_with("rules --profile strict --client-interface gw-c | nft -f -"));
    sh(&lab, &r.fix("tproxy rule IPv4"));
    assert_healthy(&lab, "the rules restored by the printed fix");
    // the kernel's FTP helper on the intercepted traffic
    let _ = break_and_fix(
        &lab,
        "printf 'table inet labhelper {\\n ct helper ftp-standard { type \"ftp\" protocol tcp; }\\n \
         chain pre { type filter hook prerouting priority filter; tcp dport 21 ct helper set \"ftp-standard\"; }\\n}\\n' \
         | nft -f -",
        &["nf_conntrack_ftp"],
    );
    // the iptables form: the fix is for iptables then
    lab.rules("del", Rules::Nft);
    lab.rules("add", Rules::Iptables);
    assert_healthy(&lab, "iptables rules");
    let fix = break_and_fix(
        &lab,
        "ip6tables -w 5 -t mangle -F FTPGATE_PREROUTING",
        &["divert rule IPv6", "icmp errors IPv6", "routed flows IPv6", "tproxy rule IPv6"],
    );
    assert!(fix.ends_with(" --iptables | sh"), "the iptables form needs the iptables fix: {fix}");
    let out = lab.exec(Ns::Gateway, 10, &["nft", "list", "tables"]);
    assert!(!text(&out.stdout).contains("inet ftpgate"), "the fix added nft rules: {}", text(&out.stdout));

    // IP_TRANSPARENT: without CAP_NET_ADMIN and CAP_NET_RAW (either allows
    // it). The rule set is unreadable then too: those lines say to run the
    // doctor as root.
    let r = doctor_with(
        &lab,
        &["setpriv", "--bounding-set=-net_admin,-net_raw", "--inh-caps=-net_admin,-net_raw"],
    );
    assert_eq!(r.code, Some(1), "{:#?}", r.lines);
    for family in ["IPv4", "IPv6"] {
        let what = format!("IP_TRANSPARENT {family}");
        assert!(r.wrong().contains(&what), "{:#?}", r.lines);
        assert!(r.fix(&what).starts_with("setcap cap_net_admin,cap_net_bind_service=ep /"), "{:#?}", r.lines);
        assert!(
            r.fix(&format!("divert rule {family}")).starts_with("run ftpgate doctor as root"),
            "{:#?}",
            r.lines
        );
    }
}

/// `ftpgate rules --routing` never replaces a route the table already
/// holds: on a multi-WAN router a table may carry a second uplink's default
/// route, which a local one would turn into "deliver everything here". It
/// refuses, naming `--table`, and leaves the route as it was; run twice on
/// a table of its own, it changes nothing the second time.
#[test]
fn routing_refuses_a_table_in_use_and_runs_twice() {
    let lab = Lab::new("rtable", Rules::Nft);
    sh(&lab, "ip -4 route add default via 198.51.100.10 table 7");
    let bin = gateway_bin();
    let routing = |table: &str| {
        let cmd = format!("{} rules --routing --table {table} | sh", bin.display());
        lab.exec(Ns::Gateway, 30, &["sh", "-c", &cmd])
    };
    let out = routing("7");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("route table 7 holds a default route already"),
        "{}",
        text(&out.stderr)
    );
    let table = text(&lab.exec(Ns::Gateway, 10, &["ip", "-4", "route", "show", "table", "7"]).stdout);
    assert_eq!(table.trim(), "default via 198.51.100.10 dev gw-s", "the uplink's route is untouched");
    for run in 0..2 {
        let out = routing("8");
        assert!(out.status.success(), "run {run}: {}", text(&out.stderr));
    }
    let table = text(&lab.exec(Ns::Gateway, 10, &["ip", "-4", "route", "show", "table", "8"]).stdout);
    assert_eq!(table.trim(), "local default dev lo scope host");
}
