//! `ftpgate doctor`: checks, on the machine it runs on, everything the
//! set-up of `ftpgate rules` needs, one line per check with the command
//! that fixes it.
//!
//! Two halves, like the rest of ftpgate: [`Facts::gather`] reads the
//! system (files under /proc, `ip`, `nft`, `iptables-save`, one socket
//! option), and [`evaluate`] is a pure function of a [`Plan`] and those
//! facts, tested with facts written by hand.
//!
//! Reading list: ../shared/reference/kernel-tproxy-nft.txt (the kernel
//! pieces and the rules), tproxy-explained.md (rp_filter, forwarding).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::rules::{Family, Plan};

/// What the machine looks like, as far as the checks care. Index 0 of the
/// per-family arrays is IPv4, 1 is IPv6.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    /// `nft --check` of a table using the socket and tproxy expressions:
    /// `None` when nft is not installed, else the error nft gave.
    pub(crate) nft_expressions: [Option<Result<(), String>>; 2],
    /// The xt socket match and TPROXY target are registered
    /// (/proc/net/ip{,6}_tables_{matches,targets}).
    pub(crate) xt_socket_tproxy: [(bool, bool); 2],
    /// `ip -4|-6 rule show` (`None`: could not run it).
    pub(crate) ip_rules: [Option<String>; 2],
    /// `ip -4|-6 route show table T`.
    pub(crate) local_routes: [Option<String>; 2],
    /// sysctl values read, by their dotted name.
    pub(crate) sysctl: BTreeMap<String, String>,
    /// Network interfaces other than lo.
    pub(crate) interfaces: Vec<String>,
    /// `nft -a list ruleset`, or why it could not be read.
    pub(crate) nft_ruleset: Option<Result<String, String>>,
    /// `iptables-save` / `ip6tables-save` (every table).
    pub(crate) xt_save: [Option<String>; 2],
    /// Why a socket of the family could not be made transparent; `None`:
    /// it could.
    pub(crate) transparent_refused: [Option<String>; 2],
    /// This program's path, for the capability fix.
    pub(crate) exe: String,
}

fn index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Runs `argv` with `stdin`; its stdout when it exits 0, else its stderr.
fn run(argv: &[&str], stdin: Option<&str>) -> Option<Result<String, String>> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().ok()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    Some(if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) })
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// A table with the expressions the rules use, checked by the kernel and
/// never committed (`nft --check`).
fn nft_probe(family: Family) -> String {
    format!(
        "table inet ftpgate_doctor_probe {{\n chain p {{\n  type filter hook prerouting priority mangle;\n  \
         meta l4proto tcp socket transparent 1 meta mark set 1 accept\n  \
         meta nfproto {} tcp dport 21 tproxy {} to :1 accept\n }}\n}}\n",
        if family == Family::V4 { "ipv4" } else { "ipv6" },
        if family == Family::V4 { "ip" } else { "ip6" }
    )
}

impl Facts {
    pub(crate) fn gather(plan: &Plan) -> Self {
        let mut facts = Self { exe: "ftpgate".to_string(), ..Self::default() };
        if let Ok(exe) = std::env::current_exe() {
            facts.exe = exe.display().to_string();
        }
        for family in Family::BOTH {
            let i = index(family);
            facts.nft_expressions[i] =
                run(&["nft", "--check", "-f", "-"], Some(&nft_probe(family))).map(|r| r.map(|_| ()));
            let proc = if family == Family::V4 { "ip" } else { "ip6" };
            let has = |file: &str, name: &str| {
                read(&format!("/proc/net/{proc}_tables_{file}")).is_some_and(|t| t.lines().any(|l| l == name))
            };
            facts.xt_socket_tproxy[i] = (has("matches", "socket"), has("targets", "TPROXY"));
            let flag = family.ip_flag();
            // Numeric (-N): a table named in /etc/iproute2/rt_tables would
            // otherwise show as `lookup NAME`, not `lookup 100`.
            facts.ip_rules[i] = run(&["ip", "-N", flag, "rule", "show"], None).and_then(Result::ok);
            let table = plan.table.to_string();
            facts.local_routes[i] =
                run(&["ip", flag, "route", "show", "table", &table], None).and_then(Result::ok);
            let save = if family == Family::V4 { "iptables-save" } else { "ip6tables-save" };
            facts.xt_save[i] = run(&[save], None).and_then(Result::ok);
            facts.transparent_refused[i] =
                crate::tproxy::may_set_transparent(family == Family::V6).err().map(|e| e.to_string());
        }
        facts.nft_ruleset = run(&["nft", "-a", "list", "ruleset"], None);
        if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv4/conf") {
            let mut names: Vec<String> = dir
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo"))
                .collect();
            names.sort();
            facts.interfaces = names;
        }
        let mut keys = vec![
            "net.ipv4.ip_forward".to_string(),
            "net.ipv6.conf.all.forwarding".to_string(),
            "net.ipv4.conf.all.rp_filter".to_string(),
            "net.netfilter.nf_conntrack_helper".to_string(),
            "net.netfilter.nf_conntrack_acct".to_string(),
        ];
        keys.extend(facts.interfaces.iter().map(|i| format!("net.ipv4.conf.{i}.rp_filter")));
        for key in keys {
            // The interface part may hold dots: build the path from the
            // fixed parts, not by replacing every dot.
            let path = match key.strip_prefix("net.ipv4.conf.").and_then(|r| r.strip_suffix(".rp_filter")) {
                Some(iface) => format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter"),
                None => format!("/proc/sys/{}", key.replace('.', "/")),
            };
            if let Some(value) = read(&path) {
                facts.sysctl.insert(key, value);
            }
        }
        facts
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) what: String,
    pub(crate) wrong: bool,
    /// What was found.
    pub(crate) detail: String,
    /// The command that fixes it (when wrong).
    pub(crate) fix: String,
}

impl Check {
    pub(crate) fn ok(&self) -> bool {
        !self.wrong
    }

    fn new(what: impl Into<String>, ok: bool, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { what: what.into(), wrong: !ok, detail: detail.into(), fix: fix.into() }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wrong {
            write!(f, "WRONG  {}: {}  fix: {}", self.what, self.detail, self.fix)
        } else {
            write!(f, "ok     {}: {}", self.what, self.detail)
        }
    }
}

/// One rule line of `nft -a list ruleset` with where it sits.
struct NftRule<'a> {
    /// ip, ip6, inet...
    family: &'a str,
    table: &'a str,
    chain: &'a str,
    /// The rule without its `# handle N` comment.
    text: &'a str,
    handle: Option<&'a str>,
}

/// The rules of an nft listing, and the names of its ct helper objects of
/// type ftp (per table).
fn nft_rules(listing: &str) -> (Vec<NftRule<'_>>, Vec<(&str, &str)>) {
    let (mut rules, mut ftp_helpers) = (Vec::new(), Vec::new());
    let (mut family, mut table, mut chain, mut helper) = ("", "", "", None);
    for line in listing.lines().map(str::trim) {
        let (text, handle) = match line.split_once(" # handle ") {
            Some((t, h)) => (t.trim(), Some(h.trim())),
            None => (line, None),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["table", fam, name, "{", ..] => (family, table) = (fam, name),
            ["chain", name, "{", ..] => (chain, helper) = (name, None),
            ["ct", "helper", name, "{", ..] => helper = Some(name.trim_matches('"')),
            ["type", "\"ftp\"", ..] => {
                if let Some(name) = helper {
                    ftp_helpers.push((table, name));
                }
            }
            ["}"] => helper = None,
            ["type", ..] | ["policy", ..] | [] => {}
            _ if !chain.is_empty() && helper.is_none() => {
                rules.push(NftRule { family, table, chain, text, handle });
            }
            _ => {}
        }
    }
    (rules, ftp_helpers)
}

/// Every check, in the order printed.
pub(crate) fn evaluate(plan: &Plan, facts: &Facts) -> Vec<Check> {
    let mut checks = Vec::new();
    let listing = match &facts.nft_ruleset {
        Some(Ok(text)) => Some(text.as_str()),
        _ => None,
    };
    let (rules, ftp_helpers) = listing.map(nft_rules).unwrap_or_default();
    let uses_xt = facts.xt_save.iter().flatten().any(|s| s.contains("-j TPROXY"));
    let uses_nft = rules.iter().any(|r| r.text.contains(" tproxy "));
    let mark_nft = format!("meta mark set {:#010x}", plan.mark);
    let fix_rules = if uses_xt && !uses_nft {
        format!("{} | sh", plan.rules_command(" --iptables"))
    } else {
        format!("{} | nft -f -", plan.rules_command(""))
    };

    for family in plan.families() {
        let i = index(family);
        let name = family.name();

        // The kernel pieces.
        let nft = &facts.nft_expressions[i];
        let (xt_socket, xt_tproxy) = facts.xt_socket_tproxy[i];
        let nft_ok = matches!(nft, Some(Ok(())));
        let xt_ok = xt_socket && xt_tproxy;
        let (ok, detail, fix) = match (uses_xt && !uses_nft, nft_ok, xt_ok) {
            (false, true, _) => (true, "nft socket and tproxy expressions load".to_string(), String::new()),
            (true, _, true) => {
                (true, "xt socket match and TPROXY target registered".to_string(), String::new())
            }
            (true, _, false) => (
                false,
                format!("xt socket match {xt_socket}, TPROXY target {xt_tproxy}"),
                "modprobe xt_socket xt_TPROXY".to_string(),
            ),
            (false, false, _) => match nft {
                None => (false, "nft is not installed".to_string(), "apt-get install nftables".to_string()),
                Some(Err(e)) if e.contains("Operation not permitted") => {
                    (false, format!("cannot ask the kernel: {}", first_line(e)), AS_ROOT.to_string())
                }
                Some(Err(e)) => (
                    false,
                    format!("nft refuses the socket/tproxy expressions: {}", first_line(e)),
                    "modprobe nft_socket nft_tproxy".to_string(),
                ),
                Some(Ok(())) => (true, String::new(), String::new()),
            },
        };
        checks.push(Check::new(format!("kernel tproxy {name}"), ok, detail, fix));

        // Policy routing.
        let (ip, mark, table) = (family.ip_flag(), plan.mark, plan.table);
        let rule = format!("fwmark {mark:#x} lookup {table}");
        let (ok, detail) = match &facts.ip_rules[i] {
            None => (false, "cannot run `ip rule show`".to_string()),
            Some(text) => {
                let ok = text.lines().any(|l| l.contains(&format!("from all {rule}")));
                (ok, if ok { format!("ip {ip} rule {rule}") } else { format!("no ip {ip} rule {rule}") })
            }
        };
        checks.push(Check::new(
            format!("policy rule {name}"),
            ok,
            detail,
            format!("ip {ip} rule add {rule}"),
        ));
        let everything = family.everything();
        let ok = facts.local_routes[i].as_deref().is_some_and(|t| {
            t.lines().any(|l| {
                l.starts_with("local default dev lo") || l.starts_with(&format!("local {everything} dev lo"))
            })
        });
        checks.push(Check::new(
            format!("local route {name}"),
            ok,
            if ok {
                format!("table {table}: local {everything} dev lo")
            } else {
                format!("table {table} has no local {everything} dev lo")
            },
            format!("ip {ip} route add local {everything} dev lo table {table}"),
        ));

        // Forwarding.
        let key = match family {
            Family::V4 => "net.ipv4.ip_forward",
            Family::V6 => "net.ipv6.conf.all.forwarding",
        };
        let value = facts.sysctl.get(key).map_or("unreadable", String::as_str);
        checks.push(Check::new(
            format!("forwarding {name}"),
            value == "1",
            format!("{key} = {value}"),
            format!("sysctl -w {key}=1"),
        ));

        // The divert and TPROXY rules.
        let in_family = |r: &&NftRule<'_>| r.family == "inet" || r.family == family.nft_family();
        let is_nft_divert = |text: &str| text.contains("socket transparent 1") && text.contains(&mark_nft);
        let nft_divert = rules.iter().filter(in_family).any(|r| is_nft_divert(r.text));
        let xt = facts.xt_save[i].as_deref().unwrap_or("");
        let xt_divert = xt.contains("-m socket --transparent")
            && xt.contains(&format!("-j MARK --set-xmark {:#x}/0xffffffff", plan.mark));
        let ok = nft_divert || xt_divert;
        let readable = listing.is_some() || facts.xt_save[i].is_some();
        let (detail, fix) = match (ok, readable) {
            (true, _) => (format!("socket-match rule sets mark {:#x}", plan.mark), String::new()),
            (false, true) => {
                (format!("no socket-match rule setting mark {:#x}", plan.mark), fix_rules.clone())
            }
            (false, false) => (UNREADABLE.to_string(), AS_ROOT.to_string()),
        };
        checks.push(Check::new(format!("divert rule {name}"), ok, detail, fix));

        // ICMP errors about ftpgate's flows are diverted to its sockets: a
        // port unreachable fails its connect at once, a fragmentation-
        // needed lowers its leg's path MTU. Older rule sets divert TCP only.
        let names_icmp = |text: &str| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| w == family.icmp())
        };
        let ok = rules.iter().filter(in_family).any(|r| is_nft_divert(r.text) && names_icmp(r.text))
            || xt.contains(&format!("-p {} -m socket --transparent -j FTPGATE_DIVERT", family.icmp()));
        let (detail, fix) = match (ok, readable) {
            (true, _) => ("the divert takes ICMP errors about ftpgate's flows".to_string(), String::new()),
            (false, true) => (
                "ICMP errors about ftpgate's flows are routed past it: a refused connect waits for its \
                 timeout, a path MTU drop is never learnt"
                    .to_string(),
                fix_rules.clone(),
            ),
            (false, false) => (UNREADABLE.to_string(), AS_ROOT.to_string()),
        };
        checks.push(Check::new(format!("icmp errors {name}"), ok, detail, fix));

        // Routed flows pass the divert by: the forward chain marks their
        // conntrack entries (unless they were ftpgate's), and a rule before
        // the socket match lets them go. Without it a data listener of
        // ftpgate's on a foreign address takes the packets of a routed
        // connection that uses its port, and its TCP resets that
        // connection (tests/forwarded.rs). In the nft form a new connection
        // that only the wildcard control listener would take passes by
        // too; the xt match ignores wildcard sockets by itself. Rule sets
        // of ftpgate before the forward mark lack these rules.
        let fm = plan.forward_mark;
        let fm_nft = format!("{fm:#010x}");
        let both = plan.both_marks();
        let nft_at = |is: &dyn Fn(&str) -> bool| rules.iter().position(|r| in_family(&r) && is(r.text));
        let nft_ok = match (
            nft_at(&|t| t == format!("ct mark & {fm_nft} == {fm_nft} accept")),
            nft_at(&|t| t.ends_with("socket wildcard 1 accept") && t.contains("syn")),
            nft_at(&is_nft_divert),
        ) {
            (Some(p), Some(w), Some(d)) => {
                let chain = |i: usize| (rules[i].table, rules[i].chain);
                chain(p) == chain(d)
                    && chain(w) == chain(d)
                    && p < d
                    && w < d
                    && nft_at(&|t| {
                        t == format!("ct mark & {both:#010x} == 0x00000000 ct mark set ct mark | {fm_nft}")
                    })
                    .is_some()
            }
            _ => false,
        };
        let xt_ok = {
            let lines: Vec<&str> = xt.lines().collect();
            let pass = lines
                .iter()
                .position(|l| l.contains(&format!("-m connmark --mark {fm:#x}/{fm:#x} -j RETURN")));
            let divert = lines.iter().position(|l| l.contains("-m socket --transparent"));
            matches!((pass, divert), (Some(p), Some(d)) if p < d)
                && lines.iter().any(|l| {
                    l.contains(&format!(
                        "-m connmark --mark 0x0/{both:#x} -j CONNMARK --set-xmark {fm:#x}/{fm:#x}"
                    ))
                })
        };
        let ok = nft_ok || xt_ok;
        let (detail, fix) = match (ok, readable) {
            (true, _) => (format!("forwarded connections get ct mark {fm:#x} and pass the divert by"), String::new()),
            (false, true) => (
                format!(
                    "no rules mark forwarded connections ({fm:#x}) and pass them by before the divert: a data \
                     listener of ftpgate's can take a routed connection's packets and reset it"
                ),
                fix_rules.clone(),
            ),
            (false, false) => (UNREADABLE.to_string(), AS_ROOT.to_string()),
        };
        checks.push(Check::new(format!("routed flows {name}"), ok, detail, fix));

        if let Some(listener) = plan.listener_for(family) {
            let port = listener.port();
            let is_nft_tproxy = |text: &str| {
                text.contains(&format!("tcp dport {} ", plan.port))
                    && text.contains(&format!("tproxy {} to ", family.nft_family()))
                    && text.contains(&format!(":{port} "))
                    && text.contains(&mark_nft)
            };
            let is_xt_tproxy = |l: &str| {
                l.contains(&format!("--dport {} ", plan.port))
                    && l.contains(&format!("-j TPROXY --on-port {port} "))
                    && l.contains(&format!("--tproxy-mark {:#x}/", plan.mark))
            };
            let nft_tproxy = rules.iter().filter(in_family).any(|r| is_nft_tproxy(r.text));
            let xt_tproxy = xt.lines().any(is_xt_tproxy);
            let ok = nft_tproxy || xt_tproxy;
            let (detail, fix) = match (ok, readable) {
                (true, _) => (format!("tcp port {} goes to port {port}", plan.port), String::new()),
                (false, true) => (
                    format!("no rule sends tcp port {} to port {port} with mark {:#x}", plan.port, plan.mark),
                    fix_rules.clone(),
                ),
                (false, false) => (UNREADABLE.to_string(), AS_ROOT.to_string()),
            };
            checks.push(Check::new(format!("tproxy rule {name}"), ok, detail, fix));

            // TPROXY must see a new connection before the divert rule: a
            // SYN that reuses a 4-tuple ftpgate holds in TIME_WAIT would
            // otherwise go to that socket (README, "The packet path").
            // Rule sets of ftpgate before 3546891 have the other order.
            let nft_order = {
                let at = |is: &dyn Fn(&str) -> bool| rules.iter().position(|r| in_family(&r) && is(r.text));
                match (at(&is_nft_divert), at(&is_nft_tproxy)) {
                    (Some(d), Some(t))
                        if (rules[d].table, rules[d].chain) == (rules[t].table, rules[t].chain) =>
                    {
                        Some(t < d)
                    }
                    _ => None,
                }
            };
            let xt_order = {
                let lines: Vec<&str> = xt.lines().collect();
                let chain = |i: usize| lines[i].split_whitespace().nth(1);
                let divert = lines.iter().position(|l| l.contains("-m socket --transparent"));
                match (divert, lines.iter().position(|l| is_xt_tproxy(l))) {
                    (Some(d), Some(t)) if chain(d) == chain(t) => Some(t < d),
                    _ => None,
                }
            };
            if let Some(first) = nft_order.or(xt_order) {
                let detail = if first {
                    "the TPROXY rule comes before the divert rule".to_string()
                } else {
                    "the divert rule comes first: a client reusing the addresses and ports of a \
                     connection ftpgate holds in TIME_WAIT loses 10 ms or more to a SYN retransmission"
                        .to_string()
                };
                let fix = if first { String::new() } else { fix_rules.clone() };
                checks.push(Check::new(format!("rule order {name}"), first, detail, fix));
            }
        }

        // This process and IP_TRANSPARENT.
        let (ok, detail) = match &facts.transparent_refused[i] {
            None => (true, "this process may set it".to_string()),
            Some(e) => (false, format!("refused: {e} (needs CAP_NET_ADMIN)")),
        };
        checks.push(Check::new(
            format!("IP_TRANSPARENT {name}"),
            ok,
            detail,
            format!("setcap cap_net_admin,cap_net_bind_service=ep {}", facts.exe),
        ));
    }

    // rp_filter: strict mode (1) on an interface; its effective value is
    // the larger of `all` and its own.
    if plan.families().contains(&Family::V4) {
        let all = facts.sysctl.get("net.ipv4.conf.all.rp_filter").map_or("?", String::as_str);
        let strict: Vec<&String> = facts
            .interfaces
            .iter()
            .filter(|i| {
                let own =
                    facts.sysctl.get(&format!("net.ipv4.conf.{i}.rp_filter")).map_or("?", String::as_str);
                // 2 (loose) on either side wins over 1: max(all, own).
                (own == "1" && all != "2") || (all == "1" && own != "2")
            })
            .collect();
        let mut fix = String::from("sysctl -w");
        if all == "1" {
            fix.push_str(" net.ipv4.conf.all.rp_filter=0");
        }
        for i in &strict {
            if facts.sysctl.get(&format!("net.ipv4.conf.{i}.rp_filter")).map(String::as_str) == Some("1") {
                fix.push_str(&format!(" net/ipv4/conf/{i}/rp_filter=0"));
            }
        }
        checks.push(Check::new(
            "rp_filter",
            strict.is_empty(),
            if strict.is_empty() {
                format!("not strict on {} (all = {all})", facts.interfaces.len())
            } else {
                format!(
                    "strict (1) on {} (all = {all}): drops FTP whose source routes back through another interface",
                    strict.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
                )
            },
            fix,
        ));
    }

    // The kernel's FTP helper must not see the traffic ftpgate handles: it
    // would open its own expectations beside ftpgate's listeners.
    let mut helpers = Vec::new();
    let mut fixes = Vec::new();
    for r in &rules {
        let set = ftp_helpers
            .iter()
            .any(|(table, name)| *table == r.table && r.text.contains(&format!("ct helper set \"{name}\"")));
        if set {
            helpers.push(format!("nft {} {} {}: {}", r.family, r.table, r.chain, r.text));
            if let Some(h) = r.handle {
                fixes.push(format!("nft delete rule {} {} {} handle {h}", r.family, r.table, r.chain));
            }
        }
    }
    for family in Family::BOTH {
        let mut table = "";
        for line in facts.xt_save[index(family)].as_deref().unwrap_or("").lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t;
            }
            if line.starts_with("-A ") && line.contains("--helper ftp") {
                helpers.push(format!("{} {table}: {line}", family.iptables()));
                fixes.push(format!("{} -t {table} -D{}", family.iptables(), &line[2..]));
            }
        }
    }
    if facts.sysctl.get("net.netfilter.nf_conntrack_helper").map(String::as_str) == Some("1") {
        helpers.push("net.netfilter.nf_conntrack_helper = 1 (automatic helper assignment)".to_string());
        fixes.push("sysctl -w net.netfilter.nf_conntrack_helper=0".to_string());
    }
    checks.push(Check::new(
        "nf_conntrack_ftp",
        helpers.is_empty(),
        if helpers.is_empty() { "not attached to any traffic".to_string() } else { helpers.join("; ") },
        fixes.join(" && "),
    ));
    if plan.related {
        checks.push(related_check(&rules, facts, &fix_rules));
        let acct = facts.sysctl.get("net.netfilter.nf_conntrack_acct").map_or("unreadable", String::as_str);
        checks.push(Check::new(
            "conntrack accounting (pinhole)",
            acct == "1",
            format!("net.netfilter.nf_conntrack_acct = {acct}: the transfer records' byte counts"),
            "sysctl -w net.netfilter.nf_conntrack_acct=1",
        ));
    }
    checks
}

/// `--data-path pinhole`: some forward chain must accept the RELATED
/// connections the kernel expects for ftpgate (and their packets).
fn related_check(rules: &[NftRule<'_>], facts: &Facts, fix_rules: &str) -> Check {
    let nft = rules
        .iter()
        .find(|r| r.chain.contains("forward") && r.text.contains("ct state established,related accept"));
    let xt = facts.xt_save.iter().flatten().flat_map(|s| s.lines()).find(|l| {
        l.starts_with("-A ") && l.contains("--ctstate RELATED,ESTABLISHED") && l.contains("-j ACCEPT")
    });
    let found = match (nft, xt) {
        (Some(r), _) => Some(format!("nft {} {} {}: {}", r.family, r.table, r.chain, r.text)),
        (None, Some(line)) => Some(format!("iptables: {line}")),
        (None, None) => None,
    };
    Check::new(
        "forward accepts related (pinhole)",
        found.is_some(),
        found.unwrap_or_else(|| {
            "no forward rule accepts ct state related: pinholes forward nothing".to_string()
        }),
        fix_rules.to_string(),
    )
}

/// The fix when the checks themselves lack the privilege to look.
const AS_ROOT: &str = "run ftpgate doctor as root (reading the rule set needs CAP_NET_ADMIN)";
const UNREADABLE: &str = "cannot read the rule set (nft list ruleset, iptables-save)";

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Profile;

    fn lab_plan() -> Plan {
        Plan {
            listen: vec!["0.0.0.0:2121".parse().unwrap(), "[::]:2121".parse().unwrap()],
            port: 21,
            mark: 1,
            forward_mark: 2,
            table: 100,
            profile: Profile::Strict,
            client_interfaces: vec!["gw-c".parse().unwrap()],
            client_nets: Vec::new(),
            server_nets: Vec::new(),
            related: false,
        }
    }

    /// What the lab's gateway namespace shows with the set-up installed
    /// (outputs copied from `nft -a list ruleset`, `ip rule show`, ...).
    fn healthy() -> Facts {
        let mut sysctl = BTreeMap::new();
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.gw-c.rp_filter", "0"),
            ("net.ipv4.conf.gw-s.rp_filter", "2"),
        ] {
            sysctl.insert(k.to_string(), v.to_string());
        }
        Facts {
            nft_expressions: [Some(Ok(())), Some(Ok(()))],
            xt_socket_tproxy: [(true, true), (true, true)],
            ip_rules: [
                Some("0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x1 lookup 100\n32766:\tfrom all lookup main".into()),
                Some("0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x1 lookup 100\n32766:\tfrom all lookup main".into()),
            ],
            local_routes: [
                Some("local default dev lo scope host".into()),
                Some("local default dev lo metric 1024 pref medium".into()),
            ],
            sysctl,
            interfaces: vec!["gw-c".into(), "gw-s".into()],
            nft_ruleset: Some(Ok(LAB_RULESET.to_string())),
            xt_save: [Some(String::new()), Some(String::new())],
            transparent_refused: [None, None],
            exe: "/usr/sbin/ftpgate".into(),
        }
    }

    const LAB_RULESET: &str = "table inet ftpgate { # handle 1
	chain divert { # handle 1
		type filter hook prerouting priority mangle; policy accept;
		iifname \"gw-c\" meta nfproto ipv4 tcp dport 21 tproxy ip to :2121 meta mark set 0x00000001 accept # handle 3
		iifname \"gw-c\" meta nfproto ipv6 tcp dport 21 tproxy ip6 to :2121 meta mark set 0x00000001 accept # handle 4
		ct mark & 0x00000002 == 0x00000002 accept # handle 6
		tcp flags syn / fin,syn,rst,ack socket wildcard 1 accept # handle 8
		meta l4proto { icmp, tcp, ipv6-icmp } socket transparent 1 meta mark set 0x00000001 accept # handle 2
	}

	chain forward { # handle 2
		type filter hook forward priority filter; policy accept;
		ct mark & 0x00000003 == 0x00000000 ct mark set ct mark | 0x00000002 # handle 7
		iifname \"gw-c\" tcp dport 21 reject with tcp reset # handle 5
	}
}";

    fn wrong(checks: &[Check]) -> Vec<&str> {
        checks.iter().filter(|c| c.wrong).map(|c| c.what.as_str()).collect()
    }

    fn find<'a>(checks: &'a [Check], what: &str) -> &'a Check {
        checks.iter().find(|c| c.what == what).unwrap_or_else(|| panic!("no check {what}: {checks:?}"))
    }

    #[test]
    fn healthy_lab_every_check_ok() {
        let checks = evaluate(&lab_plan(), &healthy());
        assert!(wrong(&checks).is_empty(), "{checks:#?}");
        let names: Vec<&str> = checks.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel tproxy IPv4",
                "policy rule IPv4",
                "local route IPv4",
                "forwarding IPv4",
                "divert rule IPv4",
                "icmp errors IPv4",
                "routed flows IPv4",
                "tproxy rule IPv4",
                "rule order IPv4",
                "IP_TRANSPARENT IPv4",
                "kernel tproxy IPv6",
                "policy rule IPv6",
                "local route IPv6",
                "forwarding IPv6",
                "divert rule IPv6",
                "icmp errors IPv6",
                "routed flows IPv6",
                "tproxy rule IPv6",
                "rule order IPv6",
                "IP_TRANSPARENT IPv6",
                "rp_filter",
                "nf_conntrack_ftp",
            ]
        );
    }

    #[test]
    fn pinhole_plan_wants_a_forward_rule_accepting_related_and_accounting() {
        let mut plan = lab_plan();
        plan.related = true;
        let c = evaluate(&plan, &healthy());
        assert_eq!(wrong(&c), ["forward accepts related (pinhole)", "conntrack accounting (pinhole)"]);
        let fix = &find(&c, "forward accepts related (pinhole)").fix;
        assert!(fix.contains(" --data-path pinhole") && fix.ends_with(" | nft -f -"), "{fix}");
        assert_eq!(
            find(&c, "conntrack accounting (pinhole)").fix,
            "sysctl -w net.netfilter.nf_conntrack_acct=1"
        );
        let acct_on = || {
            let mut f = healthy();
            f.sysctl.insert("net.netfilter.nf_conntrack_acct".into(), "1".into());
            f
        };
        assert_eq!(wrong(&evaluate(&plan, &acct_on())), ["forward accepts related (pinhole)"]);
        let mut f = acct_on();
        let with_rule = LAB_RULESET.replace(
            "# handle 7\n\t\tiifname \"gw-c\" tcp dport 21 reject",
            "# handle 7\n\t\tct state established,related accept # handle 9\n\t\tiifname \"gw-c\" tcp dport 21 reject",
        );
        assert_ne!(with_rule, LAB_RULESET);
        f.nft_ruleset = Some(Ok(with_rule));
        assert!(wrong(&evaluate(&plan, &f)).is_empty());
        let mut f = acct_on();
        f.xt_save[0] = Some(
            "*filter\n-A FTPGATE_FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n"
                .into(),
        );
        assert!(wrong(&evaluate(&plan, &f)).is_empty());
    }

    #[test]
    fn each_broken_item_is_one_wrong_line_with_its_fix() {
        let plan = lab_plan();
        let mut f = healthy();
        f.ip_rules[1] = Some("0:\tfrom all lookup local\n32766:\tfrom all lookup main".into());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["policy rule IPv6"]);
        assert_eq!(find(&c, "policy rule IPv6").fix, "ip -6 rule add fwmark 0x1 lookup 100");

        let mut f = healthy();
        f.local_routes[0] = Some(String::new());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["local route IPv4"]);
        assert_eq!(find(&c, "local route IPv4").fix, "ip -4 route add local 0.0.0.0/0 dev lo table 100");

        let mut f = healthy();
        f.sysctl.insert("net.ipv6.conf.all.forwarding".into(), "0".into());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["forwarding IPv6"]);
        assert_eq!(find(&c, "forwarding IPv6").fix, "sysctl -w net.ipv6.conf.all.forwarding=1");

        let mut f = healthy();
        f.sysctl.insert("net.ipv4.conf.gw-c.rp_filter".into(), "1".into());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["rp_filter"]);
        assert_eq!(find(&c, "rp_filter").fix, "sysctl -w net/ipv4/conf/gw-c/rp_filter=0");
        // The effective value is max(all, own): loose (2) on either side
        // is not strict.
        let mut f = healthy();
        f.sysctl.insert("net.ipv4.conf.all.rp_filter".into(), "2".into());
        f.sysctl.insert("net.ipv4.conf.gw-c.rp_filter".into(), "1".into());
        assert!(wrong(&evaluate(&plan, &f)).is_empty(), "all = 2 makes gw-c's 1 loose");
        let mut f = healthy();
        f.sysctl.insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["rp_filter"], "all = 1 makes gw-c's 0 strict; gw-s's 2 stays loose");
        assert!(find(&c, "rp_filter").detail.starts_with("strict (1) on gw-c "), "{c:#?}");
        assert_eq!(find(&c, "rp_filter").fix, "sysctl -w net.ipv4.conf.all.rp_filter=0");

        let mut f = healthy();
        f.transparent_refused[0] = Some("Operation not permitted (os error 1)".into());
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["IP_TRANSPARENT IPv4"]);
        assert_eq!(
            find(&c, "IP_TRANSPARENT IPv4").fix,
            "setcap cap_net_admin,cap_net_bind_service=ep /usr/sbin/ftpgate"
        );

        let mut f = healthy();
        f.nft_expressions[1] = Some(Err("Error: Could not process rule: No such file or directory".into()));
        let c = evaluate(&plan, &f);
        assert_eq!(wrong(&c), ["kernel tproxy IPv6"]);
        assert_eq!(find(&c, "kernel tproxy IPv6").fix, "modprobe nft_socket nft_tproxy");
    }

    /// Rule sets loaded before 3546891 divert first: a reused 4-tuple costs
    /// a SYN retransmission. Both forms are recognised.
    #[test]
    fn divert_rule_before_tproxy_is_wrong_and_fixed_by_reloading_the_rules() {
        let old = LAB_RULESET.replace(
            "\t\tmeta l4proto { icmp, tcp, ipv6-icmp } socket transparent 1 meta mark set 0x00000001 accept # handle 2\n",
            "",
        );
        let old = old.replace(
            "policy accept;\n\t\tiifname \"gw-c\" meta nfproto ipv4",
            "policy accept;\n\t\tmeta l4proto { icmp, tcp, ipv6-icmp } socket transparent 1 meta mark set 0x00000001 accept # handle 2\n\t\tiifname \"gw-c\" meta nfproto ipv4",
        );
        assert_ne!(old, LAB_RULESET);
        let mut f = healthy();
        f.nft_ruleset = Some(Ok(old));
        let c = evaluate(&lab_plan(), &f);
        // The pass-by rule now comes after the divert too.
        assert_eq!(
            wrong(&c),
            ["routed flows IPv4", "rule order IPv4", "routed flows IPv6", "rule order IPv6"]
        );
        assert!(find(&c, "rule order IPv4").fix.ends_with(" | nft -f -"), "{c:#?}");

        let mut f = healthy();
        f.nft_ruleset = Some(Ok(String::new()));
        f.nft_expressions = [None, None];
        let save = "*mangle\n-A FTPGATE_PREROUTING -p tcp -m socket --transparent -j FTPGATE_DIVERT\n\
            -A FTPGATE_DIVERT -j MARK --set-xmark 0x1/0xffffffff\n\
            -A FTPGATE_PREROUTING -i gw-c -p tcp -m tcp --dport 21 -j TPROXY --on-port 2121 --on-ip 0.0.0.0 --tproxy-mark 0x1/0xffffffff\nCOMMIT\n";
        f.xt_save =
            [Some(save.into()), Some(save.replace("0.0.0.0", "::").replace("-p icmp", "-p ipv6-icmp"))];
        let c = evaluate(&lab_plan(), &f);
        // (rule sets that old divert TCP only, and have no forward mark)
        assert_eq!(
            wrong(&c),
            [
                "icmp errors IPv4",
                "routed flows IPv4",
                "rule order IPv4",
                "icmp errors IPv6",
                "routed flows IPv6",
                "rule order IPv6"
            ]
        );
        assert!(find(&c, "rule order IPv6").fix.contains("--iptables"), "{c:#?}");
    }

    #[test]
    fn missing_rules_name_the_rules_command() {
        let mut f = healthy();
        f.nft_ruleset = Some(Ok(String::new()));
        let c = evaluate(&lab_plan(), &f);
        assert_eq!(
            wrong(&c),
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
        assert_eq!(
            find(&c, "tproxy rule IPv6").fix,
            "ftpgate --listen 0.0.0.0:2121 --listen '[::]:2121' rules --profile strict --client-interface gw-c | nft -f -"
        );
        // The right port, the wrong mark: still wrong.
        let mut plan = lab_plan();
        plan.mark = 2;
        let c = evaluate(&plan, &healthy());
        assert!(find(&c, "divert rule IPv4").wrong && find(&c, "tproxy rule IPv6").wrong, "{c:#?}");
    }

    /// A rule set of ftpgate before the forward mark: routed flows could be
    /// taken by a data listener. Both rules are needed, the pass-by before
    /// the divert, with the plan's bit.
    #[test]
    fn rules_without_the_forward_mark_are_wrong_and_fixed_by_reloading() {
        let pass = "\t\tct mark & 0x00000002 == 0x00000002 accept # handle 6\n";
        let mark = "\t\tct mark & 0x00000003 == 0x00000000 ct mark set ct mark | 0x00000002 # handle 7\n";
        for broken in [
            LAB_RULESET.replace(pass, "").replace(mark, ""),
            LAB_RULESET.replace(pass, ""),
            LAB_RULESET.replace(mark, ""),
        ] {
            assert_ne!(broken, LAB_RULESET);
            let mut f = healthy();
            f.nft_ruleset = Some(Ok(broken));
            let c = evaluate(&lab_plan(), &f);
            assert_eq!(wrong(&c), ["routed flows IPv4", "routed flows IPv6"]);
            assert!(
                find(&c, "routed flows IPv4").fix.ends_with("--client-interface gw-c | nft -f -"),
                "{c:#?}"
            );
        }
        let mut plan = lab_plan();
        plan.forward_mark = 0x4;
        let c = evaluate(&plan, &healthy());
        assert_eq!(wrong(&c), ["routed flows IPv4", "routed flows IPv6"]);
        assert!(find(&c, "routed flows IPv6").fix.contains(" --forward-mark 0x4"), "{c:#?}");
    }

    /// A divert of TCP only (rule sets of ftpgate before ICMP errors were
    /// diverted): a refused connect waits for its timeout.
    #[test]
    fn divert_without_icmp_is_wrong_and_fixed_by_reloading() {
        let tcp_only =
            LAB_RULESET.replace("meta l4proto { icmp, tcp, ipv6-icmp } socket", "meta l4proto tcp socket");
        assert_ne!(tcp_only, LAB_RULESET);
        let mut f = healthy();
        f.nft_ruleset = Some(Ok(tcp_only));
        let c = evaluate(&lab_plan(), &f);
        assert_eq!(wrong(&c), ["icmp errors IPv4", "icmp errors IPv6"]);
        assert!(find(&c, "icmp errors IPv6").fix.ends_with("--client-interface gw-c | nft -f -"), "{c:#?}");
        // One family's ICMP alone covers that family only.
        let v4_only = LAB_RULESET.replace("{ icmp, tcp, ipv6-icmp }", "{ icmp, tcp }");
        let mut f = healthy();
        f.nft_ruleset = Some(Ok(v4_only));
        assert_eq!(wrong(&evaluate(&lab_plan(), &f)), ["icmp errors IPv6"]);
    }

    #[test]
    fn iptables_form_is_recognised_and_fixed_with_iptables() {
        let mut f = healthy();
        f.nft_ruleset = Some(Ok(String::new()));
        f.nft_expressions = [None, None];
        let save = "*mangle\n:PREROUTING ACCEPT [0:0]\n:FTPGATE_DIVERT - [0:0]\n:FTPGATE_PREROUTING - [0:0]\n\
            -A PREROUTING -j FTPGATE_PREROUTING\n-A FTPGATE_DIVERT -j MARK --set-xmark 0x1/0xffffffff\n\
            -A FTPGATE_DIVERT -j ACCEPT\n\
            -A FTPGATE_PREROUTING -i gw-c -p tcp -m tcp --dport 21 -j TPROXY --on-port 2121 --on-ip 0.0.0.0 --tproxy-mark 0x1/0xffffffff\n\
            -A FTPGATE_PREROUTING -m connmark --mark 0x2/0x2 -j RETURN\n\
            -A FTPGATE_PREROUTING -p tcp -m socket --transparent -j FTPGATE_DIVERT\n\
            -A FTPGATE_PREROUTING -p icmp -m socket --transparent -j FTPGATE_DIVERT\nCOMMIT\n\
            *filter\n-A FTPGATE_FORWARD -m connmark --mark 0x0/0x3 -j CONNMARK --set-xmark 0x2/0x2\nCOMMIT\n";
        f.xt_save =
            [Some(save.into()), Some(save.replace("0.0.0.0", "::").replace("-p icmp", "-p ipv6-icmp"))];
        let c = evaluate(&lab_plan(), &f);
        assert!(wrong(&c).is_empty(), "{c:#?}");
        // Without the forward mark (an older ftpgate's rules): that line only.
        let old = save.replace("-A FTPGATE_PREROUTING -m connmark --mark 0x2/0x2 -j RETURN\n", "");
        let mut g = f.clone();
        g.xt_save =
            [Some(old.clone()), Some(old.replace("0.0.0.0", "::").replace("-p icmp", "-p ipv6-icmp"))];
        let c = evaluate(&lab_plan(), &g);
        assert_eq!(wrong(&c), ["routed flows IPv4", "routed flows IPv6"]);
        assert!(find(&c, "routed flows IPv4").fix.ends_with("--iptables | sh"), "{c:#?}");
        f.xt_save[1] = Some(String::new());
        f.xt_socket_tproxy[1] = (true, false);
        let c = evaluate(&lab_plan(), &f);
        assert_eq!(
            wrong(&c),
            [
                "kernel tproxy IPv6",
                "divert rule IPv6",
                "icmp errors IPv6",
                "routed flows IPv6",
                "tproxy rule IPv6"
            ]
        );
        assert!(find(&c, "divert rule IPv6").fix.ends_with("--iptables | sh"), "{c:#?}");
        assert_eq!(find(&c, "kernel tproxy IPv6").fix, "modprobe xt_socket xt_TPROXY");
    }

    #[test]
    fn ftp_helper_attached_by_nft_or_iptables_is_wrong_with_exact_removal() {
        let mut f = healthy();
        let helper = "table inet lab { # handle 9
	ct helper ftp-standard { # handle 3
		type \"ftp\" protocol tcp
		l3proto inet
	}

	chain pre { # handle 1
		type filter hook prerouting priority filter; policy accept;
		tcp dport 21 ct helper set \"ftp-standard\" # handle 2
	}
}";
        f.nft_ruleset = Some(Ok(format!("{LAB_RULESET}\n{helper}")));
        let c = evaluate(&lab_plan(), &f);
        assert_eq!(wrong(&c), ["nf_conntrack_ftp"]);
        assert_eq!(find(&c, "nf_conntrack_ftp").fix, "nft delete rule inet lab pre handle 2");

        let mut f = healthy();
        f.xt_save[0] = Some("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT".into());
        let c = evaluate(&lab_plan(), &f);
        assert_eq!(wrong(&c), ["nf_conntrack_ftp"]);
        assert_eq!(
            find(&c, "nf_conntrack_ftp").fix,
            "iptables -t raw -D PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp"
        );
    }

    #[test]
    fn without_privilege_the_fix_is_to_run_as_root_not_to_change_rules() {
        let mut f = healthy();
        f.nft_ruleset =
            Some(Err("netlink: Error: cache initialization failed: Operation not permitted".into()));
        f.nft_expressions = [Some(Err("Error: Operation not permitted".into())), None];
        f.xt_save = [None, None];
        f.xt_socket_tproxy = [(false, false), (false, false)];
        let c = evaluate(&lab_plan(), &f);
        for what in ["kernel tproxy IPv4", "divert rule IPv4", "tproxy rule IPv6"] {
            assert_eq!(find(&c, what).fix, AS_ROOT, "{c:#?}");
        }
    }

    #[test]
    fn v4_only_listener_checks_v4_only() {
        let mut plan = lab_plan();
        plan.listen = vec!["0.0.0.0:2121".parse().unwrap()];
        let c = evaluate(&plan, &healthy());
        assert!(c.iter().all(|c| !c.what.contains("IPv6")), "{c:#?}");
    }

    #[test]
    fn report_line_says_what_verdict_and_fix() {
        let c = Check::new(
            "forwarding IPv4",
            false,
            "net.ipv4.ip_forward = 0",
            "sysctl -w net.ipv4.ip_forward=1",
        );
        assert_eq!(
            c.to_string(),
            "WRONG  forwarding IPv4: net.ipv4.ip_forward = 0  fix: sysctl -w net.ipv4.ip_forward=1"
        );
        let c = Check::new("forwarding IPv4", true, "net.ipv4.ip_forward = 1", "unused");
        assert_eq!(c.to_string(), "ok     forwarding IPv4: net.ipv4.ip_forward = 1");
    }
}
