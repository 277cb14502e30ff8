//! `ftpgate rules`: the kernel set-up a router needs around ftpgate, as
//! text to paste. Pure generation: a [`Plan`] in, a string out; no system
//! call, so the golden files in lab/rules/ pin every byte, and the lab
//! installs its rules from this same output (lab/netns.sh `rules`).
//!
//! Three pieces, each with its exact undo (`--undo`):
//! - the firewall (`nft -f -` by default, or `sh` for iptables/ip6tables):
//!   the socket-match divert (packets of ftpgate's transparent sockets get
//!   the mark), the TPROXY rule (new control connections to the FTP port go
//!   to ftpgate's listener), and the fail-closed forward rules;
//! - the policy routing and sysctls (`--routing`, for `sh`): the mark
//!   looks up a table whose only route says "every address is local", so
//!   marked packets are delivered to ftpgate instead of being forwarded.
//!
//! Reading list: ../shared/reference/kernel-tproxy-nft.txt (divert, TPROXY,
//! policy routing, the nft forms), tproxy-explained.md (rp_filter,
//! forwarding).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Which address family a rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) const BOTH: [Self; 2] = [Self::V4, Self::V6];

    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// nft's address expression (`ip saddr`) and tproxy family.
    fn nft(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }

    /// The nft table family of this address family alone.
    pub(crate) fn nft_family(self) -> &'static str {
        self.nft()
    }

    fn nfproto(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// The ICMP protocol's name in nft and iptables (`-p`).
    pub(crate) fn icmp(self) -> &'static str {
        match self {
            Self::V4 => "icmp",
            Self::V6 => "ipv6-icmp",
        }
    }

    pub(crate) fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    /// `ip -4` / `ip -6`.
    pub(crate) fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// The route that makes every address local.
    pub(crate) fn everything(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0/0",
            Self::V6 => "::/0",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// An address prefix, `192.0.2.0/24` or `2001:db8:1::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Net {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Net {
    fn family(self) -> Family {
        Family::of(self.addr)
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| format!("'{text}' is not an address or prefix (like 192.0.2.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An interface name, checked so that it can go into nft and shell text
/// as it is (IFNAMSIZ: 15 bytes; letters, digits and `_.-@:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interface(String);

impl FromStr for Interface {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= 15
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b));
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(format!("'{text}' is not an interface name (1 to 15 of A-Z a-z 0-9 _ . - @ :)"))
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the forward chain does while ftpgate is up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Profile {
    /// Only the intercepted control port is refused (with a reset) on the
    /// forward path: while ftpgate is down, FTP does not pass uninspected,
    /// and everything else is routed as before.
    Port21,
    /// Nothing is forwarded between the client side and the server
    /// networks: ftpgate carries every FTP byte (control through TPROXY,
    /// data through the divert and its own connects), and nothing else
    /// passes. The lab runs this.
    Strict,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Port21 => "port21",
            Self::Strict => "strict",
        }
    }
}

/// Everything the rules depend on.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// ftpgate's control listeners (`--listen`): the TPROXY targets.
    pub(crate) listen: Vec<SocketAddr>,
    /// The FTP control port intercepted.
    pub(crate) port: u16,
    pub(crate) mark: u32,
    /// The conntrack mark bit(s) the forward chain puts on routed flows.
    pub(crate) forward_mark: u32,
    pub(crate) table: u32,
    pub(crate) profile: Profile,
    /// Where clients come from: interfaces, prefixes, or both (then both
    /// must match). Neither: any interface.
    pub(crate) client_interfaces: Vec<Interface>,
    pub(crate) client_nets: Vec<Net>,
    /// The servers' prefixes; none: any destination.
    pub(crate) server_nets: Vec<Net>,
    /// `--data-path pinhole`: the forward chain admits the connections the
    /// kernel expects for ftpgate (RELATED) and their packets, first.
    pub(crate) related: bool,
}

/// Why no rules can be generated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PlanError {
    StrictWithoutClientSide,
    MarkZero,
    ForwardMarkZero,
    MarksOverlap { mark: u32, forward_mark: u32 },
    TableReserved(u32),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StrictWithoutClientSide => f.write_str(
                "--profile strict needs the client side: give --client-interface IF and/or --client-net PREFIX \
                 (or else every forwarded packet would be dropped)",
            ),
            Self::MarkZero => f.write_str("--mark 0 cannot work: unmarked packets have mark 0"),
            Self::ForwardMarkZero => {
                f.write_str("--forward-mark 0 cannot work: it must set a bit in forwarded connections' conntrack mark")
            }
            Self::MarksOverlap { mark, forward_mark } => write!(
                f,
                "--forward-mark {forward_mark:#x} shares a bit with --mark {mark:#x}: a forwarded connection would \
                 look like one of ftpgate's; pick bits that do not overlap, like --mark 0x1 --forward-mark 0x2"
            ),
            Self::TableReserved(t) => {
                write!(f, "--table {t} is one of the kernel's own tables (253-255, 0): pick another, like 100")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// One side of a forwarded packet, as rule matches: `iifname`/`saddr` for
/// where it comes from, `oifname`/`daddr` for where it goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    From,
    To,
}

impl Plan {
    /// ftpgate's own mark and the forward mark together: a conntrack
    /// entry with neither was never ftpgate's nor seen forwarded.
    pub(crate) fn both_marks(&self) -> u32 {
        self.mark | self.forward_mark
    }

    pub(crate) fn check(&self) -> Result<(), PlanError> {
        if self.mark == 0 {
            return Err(PlanError::MarkZero);
        }
        if self.forward_mark == 0 {
            return Err(PlanError::ForwardMarkZero);
        }
        if self.mark & self.forward_mark != 0 {
            return Err(PlanError::MarksOverlap { mark: self.mark, forward_mark: self.forward_mark });
        }
        if matches!(self.table, 0 | 253..=255) {
            return Err(PlanError::TableReserved(self.table));
        }
        if self.profile == Profile::Strict && self.client_interfaces.is_empty() && self.client_nets.is_empty()
        {
            return Err(PlanError::StrictWithoutClientSide);
        }
        Ok(())
    }

    /// The listener that takes `family`'s intercepted connections: one of
    /// that family, else for IPv4 a dual-stack `[::]` listener (IPv6 with
    /// no IPv4 listener on its port, see server.rs `control_family`).
    pub(crate) fn listener_for(&self, family: Family) -> Option<SocketAddr> {
        let own = self.listen.iter().find(|a| Family::of(a.ip()) == family);
        own.or_else(|| match family {
            Family::V4 => self.listen.iter().find(|a| {
                a.ip().is_unspecified()
                    && a.is_ipv6()
                    && !self.listen.iter().any(|b| b.is_ipv4() && b.port() == a.port())
            }),
            Family::V6 => None,
        })
        .copied()
    }

    /// The families some listener serves: the ones that get routing and
    /// TPROXY. The forward rules cover both families whatever they are.
    pub(crate) fn families(&self) -> Vec<Family> {
        Family::BOTH.into_iter().filter(|f| self.listener_for(*f).is_some()).collect()
    }

    fn nets(nets: &[Net], family: Family) -> Vec<Net> {
        nets.iter().copied().filter(|n| n.family() == family).collect()
    }

    /// Whether the client side of `family` can be named: prefixes given
    /// for other families only leave it unnamed (and then nothing of it is
    /// intercepted or refused).
    fn client_side_exists(&self, family: Family) -> bool {
        self.client_nets.is_empty() || !Self::nets(&self.client_nets, family).is_empty()
    }

    fn server_side_exists(&self, family: Family) -> bool {
        self.server_nets.is_empty() || !Self::nets(&self.server_nets, family).is_empty()
    }

    /// Whether FTP of `family` is intercepted at all: both sides named.
    fn intercepts(&self, family: Family) -> bool {
        self.client_side_exists(family) && self.server_side_exists(family)
    }

    /// Whether any prefix is given: then forward rules are per family.
    fn by_family(&self) -> bool {
        !self.client_nets.is_empty() || !self.server_nets.is_empty()
    }

    fn describe(&self, out: &mut String, comment: &str) {
        let list = |v: Vec<String>| if v.is_empty() { "any".to_string() } else { v.join(" ") };
        let _ = writeln!(
            out,
            "{comment}   listeners: {}",
            list(self.listen.iter().map(|a| a.to_string()).collect())
        );
        let _ = writeln!(
            out,
            "{comment}   control port: {}, mark: {:#x}, forward mark: {:#x}, route table: {}, profile: {}",
            self.port,
            self.mark,
            self.forward_mark,
            self.table,
            self.profile.name()
        );
        let _ = writeln!(
            out,
            "{comment}   client side: interfaces {}, networks {}; server networks: {}",
            list(self.client_interfaces.iter().map(|i| i.to_string()).collect()),
            list(self.client_nets.iter().map(|n| n.to_string()).collect()),
            list(self.server_nets.iter().map(|n| n.to_string()).collect())
        );
    }

    /// The command that prints this plan's set-up, for `sh` (an IPv6
    /// listener quoted: `[::]` is a shell pattern); `extra` goes last
    /// (` --routing`, ` --iptables`).
    pub(crate) fn rules_command(&self, extra: &str) -> String {
        let mut s = String::from("ftpgate");
        for a in &self.listen {
            if a.is_ipv6() {
                let _ = write!(s, " --listen '{a}'");
            } else {
                let _ = write!(s, " --listen {a}");
            }
        }
        s.push_str(" rules");
        if self.profile != Profile::Port21 {
            let _ = write!(s, " --profile {}", self.profile.name());
        }
        if self.port != 21 {
            let _ = write!(s, " --port {}", self.port);
        }
        if self.mark != 1 {
            let _ = write!(s, " --mark {:#x}", self.mark);
        }
        if self.forward_mark != 2 {
            let _ = write!(s, " --forward-mark {:#x}", self.forward_mark);
        }
        if self.table != 100 {
            let _ = write!(s, " --table {}", self.table);
        }
        if self.related {
            s.push_str(" --data-path pinhole");
        }
        for i in &self.client_interfaces {
            let _ = write!(s, " --client-interface {i}");
        }
        for n in &self.client_nets {
            let _ = write!(s, " --client-net {n}");
        }
        for n in &self.server_nets {
            let _ = write!(s, " --server-net {n}");
        }
        s.push_str(extra);
        s
    }

    // -- nft ----------------------------------------------------------------

    /// The `table inet ftpgate` rule set, for `nft -f -`. Loading it again
    /// replaces the table atomically.
    pub(crate) fn nft(&self) -> String {
        let mut out = String::new();
        out.push_str("#!/usr/sbin/nft -f\n# ftpgate rules: the firewall part (nft), generated by `ftpgate rules` for\n");
        self.describe(&mut out, "#");
        out.push_str(NFT_HEADER);
        let mark = format!("{:#x}", self.mark);
        out.push_str("table inet ftpgate\ndelete table inet ftpgate\ntable inet ftpgate {\n");
        out.push_str(
            "    chain divert {\n        type filter hook prerouting priority mangle; policy accept;\n",
        );
        // TPROXY goes first. A client that reuses the 4-tuple of a control
        // connection that ftpgate holds in TIME_WAIT (it closed that leg
        // first) must reach the listener: TPROXY hands such a SYN to it
        // (nf_tproxy_handle_time_wait4), while the socket match would hand
        // it to the TIME_WAIT socket, which answers with an ACK and costs
        // the client a SYN retransmission (tests/interception.rs).
        for family in Family::BOTH {
            match (self.listener_for(family), self.intercepts(family)) {
                (Some(listener), true) => {
                    let target = tproxy_target(listener);
                    let _ = writeln!(
                        out,
                        "        {}meta nfproto {} tcp dport {} tproxy {} to {target} meta mark set {mark} accept",
                        self.nft_matches(Some(family), Dir::From),
                        family.nfproto(),
                        self.port,
                        family.nft()
                    );
                }
                (None, true) => {
                    let _ = writeln!(
                        out,
                        "        # no {} listener: {} FTP is not intercepted (the forward chain refuses it)",
                        family.name(),
                        family.name()
                    );
                }
                (_, false) => {
                    let _ = writeln!(
                        out,
                        "        # no {} prefix on the client or server side: {} FTP is not intercepted",
                        family.name(),
                        family.name()
                    );
                }
            }
        }
        // A routed flow (the forward chain marked its conntrack entry) is
        // never ftpgate's. Without this, a foreign listener of ftpgate's
        // would take its packets: in active mode ftpgate listens on the
        // client's address, at a port the kernel picks, which can be the
        // source port of one of the client's routed connections; the
        // listener would answer that connection's segments with a reset
        // (tests/forwarded.rs). It also spares routed packets the socket
        // lookup. A SYN of a new routed connection is not marked yet: only
        // a listener can take it, on the address and port that listener
        // expects a data connection on.
        let fmark = format!("{:#x}", self.forward_mark);
        let _ = writeln!(out, "        ct mark & {fmark} == {fmark} accept");
        // A new connection to any address at the control listener's port
        // would find that listener, which is bound to the wildcard address:
        // ftpgate would take every routed connection to port 2121 (an
        // alternate FTP port) and refuse it. The xt socket match leaves
        // wildcard sockets alone by itself; nft's needs this rule. Only a
        // SYN needs it (later segments of a routed flow carry the forward
        // mark), and only a full socket has the key: a TIME_WAIT or
        // request socket found for a SYN fails it and goes on to the divert.
        out.push_str(
            "        tcp flags & (fin | syn | rst | ack) == syn socket wildcard 1 accept
",
        );
        // The flows of ftpgate's own sockets carry the mark in their
        // conntrack entry too, so that a segment of one whose socket is
        // gone (a reset leg whose RST the peer did not take: a challenge
        // ACK, a window update) still reaches the host's TCP, which
        // answers it with a reset, as the real end would; the forward
        // chain would drop it, and the peer would wait forever. ICMP
        // errors about them are theirs too (the socket match looks up the
        // quoted header): a port unreachable must fail ftpgate's connect
        // at once, as it fails the client's over a router, and a
        // fragmentation-needed must lower the path MTU of ftpgate's leg,
        // not go on to the real client, which has no such connection.
        let _ = writeln!(
            out,
            "        meta l4proto {{ tcp, icmp, ipv6-icmp }} socket transparent 1 meta mark set {mark} ct mark set ct mark | {mark} accept"
        );
        for family in Family::BOTH {
            if let Some(target) =
                self.listener_for(family).filter(|_| self.intercepts(family)).map(tproxy_target)
            {
                let _ = writeln!(
                    out,
                    "        meta nfproto {} meta l4proto tcp ct mark & {mark} == {mark} tcp flags & syn == 0 tproxy {} to {target} meta mark set {mark} accept",
                    family.nfproto(),
                    family.nft()
                );
            }
        }
        out.push_str("    }\n");
        if self.related {
            // Each pinhole's placeholder master is a conntrack entry
            // peer:N -> target:0 with the kernel's ftp helper. Segments to
            // or from TCP port 0 could move it to ESTABLISHED (conntrack
            // updates it before the forward chain drops them), and the
            // helper would then parse what comes through it and open
            // expectations of its own, past ftpgate's checks. Port 0 is
            // never a real TCP port: drop it before conntrack sees it.
            out.push_str(
                "    chain raw {\n        type filter hook prerouting priority raw; policy accept;\n\
                 \x20       tcp sport 0 drop\n        tcp dport 0 drop\n    }\n",
            );
        }
        out.push_str(
            "    chain forward {\n        type filter hook forward priority filter; policy accept;\n",
        );
        // Not on a flow that was ftpgate's (while ftpgate restarts, nft's
        // tproxy finds no listener and its segments come here): once it
        // runs again, they must reach the rule that resets them.
        let _ =
            writeln!(out, "        ct mark & {:#x} == 0 ct mark set ct mark | {fmark}", self.both_marks());
        if self.related {
            out.push_str("        ct state established,related accept\n");
        }
        let families: Vec<Option<Family>> =
            if self.by_family() { Family::BOTH.map(Some).to_vec() } else { vec![None] };
        for family in families {
            if let Some(f) = family {
                if !self.intercepts(f) {
                    continue;
                }
            }
            let from = self.nft_matches(family, Dir::From);
            let _ = writeln!(out, "        {from}tcp dport {} reject with tcp reset", self.port);
            if self.profile == Profile::Strict {
                let _ = writeln!(out, "        {from}drop");
                let _ = writeln!(out, "        {}drop", self.nft_matches(family, Dir::To));
            }
        }
        out.push_str("    }\n}\n");
        out
    }

    /// The matches of a packet coming from the client side (`From`) or
    /// going to it (`To`): client interfaces, then, for a family, client
    /// and server prefixes; each followed by a space, empty when none.
    fn nft_matches(&self, family: Option<Family>, dir: Dir) -> String {
        let (if_key, client_key, server_key) = match dir {
            Dir::From => ("iifname", "saddr", "daddr"),
            Dir::To => ("oifname", "daddr", "saddr"),
        };
        let mut s = match self.client_interfaces.as_slice() {
            [] => String::new(),
            [one] => format!("{if_key} \"{one}\" "),
            many => format!(
                "{if_key} {{ {} }} ",
                many.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ")
            ),
        };
        if let Some(f) = family {
            for (nets, key) in [(&self.client_nets, client_key), (&self.server_nets, server_key)] {
                let nets = Self::nets(nets, f);
                if !nets.is_empty() {
                    let _ = write!(s, "{} {key} {} ", f.nft(), nft_set(&nets));
                }
            }
        }
        s
    }

    /// Removes the table, for `nft -f -`; a missing table is no error.
    pub(crate) fn nft_undo(&self) -> String {
        "#!/usr/sbin/nft -f\n# ftpgate rules --undo: removes the table `ftpgate rules` added\n\
         table inet ftpgate\ndelete table inet ftpgate\n"
            .to_string()
    }

    // -- iptables -----------------------------------------------------------

    /// iptables and ip6tables commands, for `sh`. Everything sits in
    /// ftpgate's own chains, jumped to from the top of PREROUTING and
    /// FORWARD, so `--undo` removes exactly that.
    pub(crate) fn iptables(&self) -> String {
        let mut out = String::new();
        out.push_str("#!/bin/sh\n# ftpgate rules: the firewall part (iptables, ip6tables), generated by\n# `ftpgate rules --iptables` for\n");
        self.describe(&mut out, "#");
        out.push_str(IPTABLES_HEADER);
        // What --undo removes goes first: run again, the script replaces
        // its chains instead of failing on them.
        out.push_str(&self.iptables_undo_commands());
        out.push_str("\nset -e\n");
        for family in Family::BOTH {
            let ipt = format!("{} -w 5", family.iptables());
            let _ = writeln!(out, "\n# {}", family.name());
            let _ = writeln!(out, "{ipt} -t mangle -N FTPGATE_DIVERT");
            let _ = writeln!(out, "{ipt} -t mangle -A FTPGATE_DIVERT -j MARK --set-mark {:#x}", self.mark);
            // the conntrack entry remembers the flow (the nft form says why)
            let _ = writeln!(out, "{ipt} -t mangle -A FTPGATE_DIVERT -j CONNMARK --or-mark {:#x}", self.mark);
            let _ = writeln!(out, "{ipt} -t mangle -A FTPGATE_DIVERT -j ACCEPT");
            let _ = writeln!(out, "{ipt} -t mangle -N FTPGATE_PREROUTING");
            // TPROXY first, as in the nft form (a SYN that reuses a
            // TIME_WAIT 4-tuple goes to the listener).
            let sides = self.intercepts(family);
            match (self.listener_for(family), sides) {
                (Some(listener), true) => {
                    let on_ip = ipt_on_ip(listener);
                    for m in self.ipt_matches(family, Dir::From) {
                        let _ = writeln!(
                            out,
                            "{ipt} -t mangle -A FTPGATE_PREROUTING{m} -p tcp --dport {} -j TPROXY --on-port {}{on_ip} --tproxy-mark {:#x}",
                            self.port,
                            listener.port(),
                            self.mark
                        );
                    }
                }
                (None, true) => {
                    let _ = writeln!(
                        out,
                        "# no {} listener: {} FTP is not intercepted (FTPGATE_FORWARD refuses it)",
                        family.name(),
                        family.name()
                    );
                }
                (_, false) => {
                    let _ = writeln!(
                        out,
                        "# no {} prefix on the client or server side: {} FTP is not intercepted",
                        family.name(),
                        family.name()
                    );
                }
            }
            // routed flows pass by (the nft form says why)
            let _ = writeln!(
                out,
                "{ipt} -t mangle -A FTPGATE_PREROUTING -m connmark --mark {f:#x}/{f:#x} -j RETURN",
                f = self.forward_mark
            );
            // ICMP errors about ftpgate's flows are theirs (the nft form
            // says why); the xt socket match leaves wildcard sockets alone
            // by itself
            for proto in ["tcp", family.icmp()] {
                let _ = writeln!(
                    out,
                    "{ipt} -t mangle -A FTPGATE_PREROUTING -p {proto} -m socket --transparent -j FTPGATE_DIVERT"
                );
            }
            if let Some(listener) = self.listener_for(family).filter(|_| sides) {
                let on_ip = ipt_on_ip(listener);
                let _ = writeln!(
                    out,
                    "{ipt} -t mangle -A FTPGATE_PREROUTING -p tcp ! --syn -m connmark --mark {m:#x}/{m:#x} -j TPROXY --on-port {}{on_ip} --tproxy-mark {m:#x}",
                    listener.port(),
                    m = self.mark
                );
            }
            let _ = writeln!(out, "{ipt} -t mangle -I PREROUTING 1 -j FTPGATE_PREROUTING");
            if self.related {
                // TCP port 0 dropped before conntrack (the nft form says why)
                let _ = writeln!(out, "{ipt} -t raw -N FTPGATE_RAW");
                for dir in ["sport", "dport"] {
                    let _ = writeln!(out, "{ipt} -t raw -A FTPGATE_RAW -p tcp --{dir} 0 -j DROP");
                }
                let _ = writeln!(out, "{ipt} -t raw -I PREROUTING 1 -j FTPGATE_RAW");
            }
            let _ = writeln!(out, "{ipt} -t filter -N FTPGATE_FORWARD");
            let _ = writeln!(
                out,
                "{ipt} -t filter -A FTPGATE_FORWARD -m connmark --mark 0x0/{both:#x} -j CONNMARK --or-mark {f:#x}",
                f = self.forward_mark,
                both = self.both_marks()
            );
            if self.related {
                let _ = writeln!(
                    out,
                    "{ipt} -t filter -A FTPGATE_FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                );
            }
            if sides {
                for m in self.ipt_matches(family, Dir::From) {
                    let _ = writeln!(
                        out,
                        "{ipt} -t filter -A FTPGATE_FORWARD{m} -p tcp --dport {} -j REJECT --reject-with tcp-reset",
                        self.port
                    );
                }
                if self.profile == Profile::Strict {
                    for dir in [Dir::From, Dir::To] {
                        for m in self.ipt_matches(family, dir) {
                            let _ = writeln!(out, "{ipt} -t filter -A FTPGATE_FORWARD{m} -j DROP");
                        }
                    }
                }
            }
            let _ = writeln!(out, "{ipt} -t filter -I FORWARD 1 -j FTPGATE_FORWARD");
        }
        out
    }

    /// Every combination of client interface, client prefix and server
    /// prefix for a packet coming from (`From`) or going to (`To`) the
    /// client side, as iptables matches with a leading space.
    fn ipt_matches(&self, family: Family, dir: Dir) -> Vec<String> {
        let (iface_flag, client_flag, server_flag) = match dir {
            Dir::From => ("-i", "-s", "-d"),
            Dir::To => ("-o", "-d", "-s"),
        };
        let one_or_any = |v: Vec<String>| if v.is_empty() { vec![String::new()] } else { v };
        let ifaces =
            one_or_any(self.client_interfaces.iter().map(|i| format!(" {iface_flag} {i}")).collect());
        let clients = one_or_any(
            Self::nets(&self.client_nets, family).iter().map(|n| format!(" {client_flag} {n}")).collect(),
        );
        let servers = one_or_any(
            Self::nets(&self.server_nets, family).iter().map(|n| format!(" {server_flag} {n}")).collect(),
        );
        let mut all = Vec::new();
        for i in &ifaces {
            for c in &clients {
                for s in &servers {
                    all.push(format!("{i}{c}{s}"));
                }
            }
        }
        all
    }

    /// Removes ftpgate's chains and the jumps to them, for `sh`. Runs on
    /// after a failure: what is already gone is no error.
    pub(crate) fn iptables_undo(&self) -> String {
        let mut out = String::from(
            "#!/bin/sh\n# ftpgate rules --iptables --undo: removes the chains `ftpgate rules --iptables` added\n",
        );
        out.push_str(&self.iptables_undo_commands());
        out
    }

    fn iptables_undo_commands(&self) -> String {
        let mut out = String::new();
        for family in Family::BOTH {
            let ipt = format!("{} -w 5", family.iptables());
            let _ = writeln!(out, "\n# {}", family.name());
            for (table, hook, chains) in [
                ("filter", "FORWARD", &["FTPGATE_FORWARD"][..]),
                ("mangle", "PREROUTING", &["FTPGATE_PREROUTING", "FTPGATE_DIVERT"][..]),
                ("raw", "PREROUTING", &["FTPGATE_RAW"][..]),
            ] {
                let _ = writeln!(out, "{ipt} -t {table} -D {hook} -j {} 2>/dev/null || true", chains[0]);
                for chain in chains {
                    let _ = writeln!(out, "{ipt} -t {table} -F {chain} 2>/dev/null || true");
                    let _ = writeln!(out, "{ipt} -t {table} -X {chain} 2>/dev/null || true");
                }
            }
        }
        out
    }

    // -- policy routing and sysctls --------------------------------------

    /// The policy routing and sysctls, for `sh`, for the families some
    /// listener serves. Run again, it changes nothing.
    pub(crate) fn routing(&self) -> String {
        let mut out = String::new();
        out.push_str("#!/bin/sh\n# ftpgate rules --routing: policy routing and sysctls, generated for\n");
        self.describe(&mut out, "#");
        out.push_str(ROUTING_HEADER);
        out.push_str("set -e\n");
        if self.related {
            // The transfer records' byte counts of --data-path pinhole.
            out.push_str("\n# --data-path pinhole: conntrack counts the bytes it forwards\n");
            out.push_str("sysctl -qw net.netfilter.nf_conntrack_acct=1\n");
        }
        for family in self.families() {
            let _ = writeln!(out, "\n# {}", family.name());
            match family {
                Family::V4 => {
                    out.push_str("sysctl -qw net.ipv4.ip_forward=1\n");
                    out.push_str(
                        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0\n",
                    );
                    for i in &self.client_interfaces {
                        // A dot in a name (a VLAN: eth0.10) needs sysctl's
                        // slash form of the key.
                        let _ = writeln!(out, "sysctl -qw net/ipv4/conf/{i}/rp_filter=0");
                    }
                }
                Family::V6 => out.push_str("sysctl -qw net.ipv6.conf.all.forwarding=1\n"),
            }
            let (ip, mark, table) = (family.ip_flag(), self.mark, self.table);
            let _ = writeln!(
                out,
                "[ -n \"$(ip {ip} rule show fwmark {mark:#x} lookup {table})\" ] || ip {ip} rule add fwmark {mark:#x} lookup {table}"
            );
            // `add`, not `replace`: a default route that the table already
            // holds (a second uplink's, on a multi-WAN router) would be
            // replaced by this local one, and everything routed through
            // the table delivered to the router itself.
            let everything = family.everything();
            let _ = writeln!(
                out,
                "ip {ip} route show table {table} type local 2>/dev/null | grep -q '^local default dev lo' \\
    \
                 || ip {ip} route add local {everything} dev lo table {table} \\
    \
                 || {{ echo \"ftpgate rules: route table {table} holds a default route already; give ftpgate a table of its own (--table)\" >&2; exit 1; }}"
            );
        }
        out
    }

    /// Removes the rule and the route; the sysctls stay (their values
    /// before are not known, and a router forwards anyway).
    pub(crate) fn routing_undo(&self) -> String {
        let mut out = String::from(
            "#!/bin/sh\n# ftpgate rules --routing --undo: removes the policy rule and the local route\n\
             # `ftpgate rules --routing` added. The sysctls (forwarding, rp_filter) stay as they are.\n",
        );
        for family in self.families() {
            let (ip, mark, table) = (family.ip_flag(), self.mark, self.table);
            let _ = writeln!(out, "\n# {}", family.name());
            let _ = writeln!(out, "ip {ip} rule del fwmark {mark:#x} lookup {table} 2>/dev/null || true");
            let _ = writeln!(
                out,
                "ip {ip} route del local {} dev lo table {table} 2>/dev/null || true",
                family.everything()
            );
        }
        out
    }
}

/// The TPROXY target's `--on-ip` for `listener`: none for a wildcard.
fn ipt_on_ip(listener: SocketAddr) -> String {
    if listener.ip().is_unspecified() {
        String::new()
    } else {
        format!(" --on-ip {}", listener.ip())
    }
}

/// Where an nft `tproxy ... to` sends a packet for `listener`.
fn tproxy_target(listener: SocketAddr) -> String {
    match listener {
        _ if listener.ip().is_unspecified() => format!(":{}", listener.port()),
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn nft_set(nets: &[Net]) -> String {
    match nets {
        [one] => one.to_string(),
        many => format!("{{ {} }}", many.iter().map(Net::to_string).collect::<Vec<_>>().join(", ")),
    }
}

const NFT_HEADER: &str = "\
#
# Load: ftpgate rules ... | nft -f -      Remove: ftpgate rules ... --undo | nft -f -
# Also needed, at every boot: the policy routing and sysctls (ftpgate rules ... --routing | sh).
#
#  * tproxy: control connections from the client side go to ftpgate's
#    listener (or its socket of the connection). When nothing listens there,
#    nft's tproxy does not match and the connection would be forwarded
#    uninspected: the forward chain refuses it with a reset (fail closed).
#    It comes first, so that a new connection reusing the addresses and
#    ports of one that ftpgate holds in TIME_WAIT reaches the listener.
#  * divert: packets of ftpgate's transparent sockets (intercepted control
#    connections, its data listeners on foreign addresses, its connects from
#    foreign addresses) get the mark; the policy route delivers them locally.
#    Their conntrack entries get the mark too: a later segment of such a
#    flow whose socket is gone (after ftpgate reset it) goes to the listener,
#    and the host's TCP answers it with a reset, as the real end would.
#    ICMP errors about those flows are theirs too. Routed flows pass by
#    first (the forward mark), and so does a new connection that only the
#    wildcard control listener would take: ftpgate's listeners never take
#    a forwarded connection's packets.
#  * forward: puts the forward mark on every forwarded connection that
#    was not ftpgate's. Profile port21 refuses only the control port;
#    profile strict drops everything else between the client side and the
#    server networks too: ftpgate carries every FTP byte, nothing else
#    needs forwarding.
";

const IPTABLES_HEADER: &str = "\
#
# Load: ftpgate rules --iptables ... | sh    Remove: ftpgate rules --iptables ... --undo | sh
# Also needed, at every boot: the policy routing and sysctls (ftpgate rules ... --routing | sh).
#
#  * TPROXY: control connections from the client side go to ftpgate's
#    listener or socket (the TPROXY target drops them while nothing
#    listens). First, so that a new connection reusing the addresses and
#    ports of one that ftpgate holds in TIME_WAIT reaches the listener.
#  * FTPGATE_DIVERT: packets of ftpgate's other transparent sockets get the
#    mark; the policy route delivers them locally. Their conntrack entries
#    get it too: a later segment of such a flow whose socket is gone (after
#    ftpgate reset it) goes to the listener, whose TCP answers it with a reset.
#    ICMP errors about those flows are theirs too. Routed flows (the
#    forward mark in their conntrack entry) pass by first: a data listener
#    on a foreign address never takes their packets.
#  * FTPGATE_FORWARD: puts the forward mark on every forwarded connection
#    that was not ftpgate's. Profile port21 refuses only the control port;
#    profile strict drops everything else between the client side and the
#    server networks too.
";

const ROUTING_HEADER: &str = "\
#
# Run: ftpgate rules ... --routing | sh    Remove: ftpgate rules ... --routing --undo | sh
#
# Marked packets look up the route table, whose one route makes every
# address local: they are delivered to ftpgate's sockets instead of being
# forwarded. rp_filter off as the kernel's tproxy documents advise: strict
# mode (1) drops a packet whose source routes back through another interface,
# which on a router with asymmetric routes includes FTP (`ftpgate doctor`
# flags it; with symmetric routes, as in the lab, strict mode works too).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(profile: Profile, listen: &[&str]) -> Plan {
        Plan {
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            port: 21,
            mark: 1,
            forward_mark: 2,
            table: 100,
            profile,
            client_interfaces: Vec::new(),
            client_nets: Vec::new(),
            server_nets: Vec::new(),
            related: false,
        }
    }

    #[test]
    fn pinhole_data_path_forward_admits_related_first() {
        let mut p = lab();
        p.related = true;
        let nft = p.nft();
        let forward = &nft[nft.find("chain forward").unwrap()..];
        let related = forward.find("ct state established,related accept").unwrap();
        assert!(related < forward.find("drop").unwrap(), "{nft}");
        assert!(p.routing().contains("sysctl -qw net.netfilter.nf_conntrack_acct=1\n"));
        assert!(!lab().routing().contains("nf_conntrack_acct"));
        let ipt = p.iptables();
        let accept = ipt.find("--ctstate ESTABLISHED,RELATED -j ACCEPT").unwrap();
        assert!(accept < ipt.find("FTPGATE_FORWARD -i gw-c -j DROP").unwrap(), "{ipt}");
        assert!(!lab().nft().contains("related") && !lab().iptables().contains("RELATED"));
        // TCP port 0 dropped before conntrack: the placeholder masters'
        // port (tests/pinhole.rs)
        assert!(nft.contains("type filter hook prerouting priority raw;"), "{nft}");
        assert!(nft.contains("tcp sport 0 drop\n        tcp dport 0 drop\n"), "{nft}");
        for v in ["iptables", "ip6tables"] {
            assert!(
                ipt.contains(&format!("{v} -w 5 -t raw -A FTPGATE_RAW -p tcp --dport 0 -j DROP")),
                "{ipt}"
            );
            assert!(ipt.contains(&format!("{v} -w 5 -t raw -I PREROUTING 1 -j FTPGATE_RAW")), "{ipt}");
        }
        assert!(!lab().nft().contains("priority raw") && !lab().iptables().contains("-N FTPGATE_RAW"));
    }

    /// The lab's plan (lab/netns.sh `rules`).
    fn lab() -> Plan {
        let mut p = plan(Profile::Strict, &["0.0.0.0:2121", "[::]:2121"]);
        p.client_interfaces = vec!["gw-c".parse().unwrap()];
        p
    }

    fn nets_example() -> Plan {
        let mut p = plan(Profile::Port21, &["[::]:2121"]);
        p.client_interfaces = vec!["lan0".parse().unwrap(), "lan1".parse().unwrap()];
        p.client_nets = vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:1::/64".parse().unwrap()];
        p.server_nets = vec![
            "198.51.100.0/24".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8:2::/64".parse().unwrap(),
        ];
        p
    }

    /// Compares with lab/rules/NAME, or writes it with FTPGATE_BLESS=1.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/rules").join(name);
        if std::env::var("FTPGATE_BLESS").as_deref() == Ok("1") {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == got,
            "{} differs from the generated text (FTPGATE_BLESS=1 cargo test rules:: rewrites it):\n{got}",
            path.display()
        );
    }

    #[test]
    fn lab_strict_nft_matches_golden() {
        golden("lab-strict.nft", &lab().nft());
    }

    #[test]
    fn lab_strict_iptables_matches_golden() {
        golden("lab-strict-iptables.sh", &lab().iptables());
    }

    #[test]
    fn lab_routing_matches_golden() {
        golden("lab-routing.sh", &lab().routing());
    }

    #[test]
    fn undo_matches_golden() {
        golden("lab-undo.nft", &lab().nft_undo());
        golden("lab-undo-iptables.sh", &lab().iptables_undo());
        golden("lab-undo-routing.sh", &lab().routing_undo());
    }

    #[test]
    fn port21_with_networks_matches_golden() {
        golden("example-port21-networks.nft", &nets_example().nft());
        golden("example-port21-networks-iptables.sh", &nets_example().iptables());
    }

    #[test]
    fn rules_command_names_every_non_default_and_quotes_ipv6() {
        assert_eq!(
            lab().rules_command(" --routing"),
            "ftpgate --listen 0.0.0.0:2121 --listen '[::]:2121' rules --profile strict --client-interface gw-c --routing"
        );
        let mut p = nets_example();
        p.port = 2100;
        p.mark = 0x10;
        p.table = 7;
        assert_eq!(
            p.rules_command(""),
            "ftpgate --listen '[::]:2121' rules --port 2100 --mark 0x10 --table 7 --client-interface lan0 \
             --client-interface lan1 --client-net 192.0.2.0/24 --client-net 2001:db8:1::/64 \
             --server-net 198.51.100.0/24 --server-net 203.0.113.0/24 --server-net 2001:db8:2::/64"
        );
    }

    #[test]
    fn listener_for_v4_falls_back_to_dual_stack_only() {
        let p = plan(Profile::Port21, &["[::]:2121"]);
        assert_eq!(p.listener_for(Family::V4), Some("[::]:2121".parse().unwrap()));
        assert_eq!(p.families(), vec![Family::V4, Family::V6]);
        let p = plan(Profile::Port21, &["0.0.0.0:2121"]);
        assert_eq!(p.listener_for(Family::V6), None);
        assert_eq!(p.families(), vec![Family::V4]);
        let p = plan(Profile::Port21, &["[2001:db8::1]:2121"]);
        assert_eq!(p.listener_for(Family::V4), None, "only [::] is dual-stack");
    }

    #[test]
    fn v4_only_listener_still_refuses_v6_ftp() {
        let text = plan(Profile::Port21, &["0.0.0.0:2121"]).nft();
        assert!(text.contains("# no IPv6 listener"), "{text}");
        assert!(text.contains("        tcp dport 21 reject with tcp reset\n"), "{text}");
        assert!(!text.contains("tproxy ip6"), "{text}");
        let routing = plan(Profile::Port21, &["0.0.0.0:2121"]).routing();
        assert!(!routing.contains("ip -6"), "{routing}");
    }

    #[test]
    fn specific_listener_address_is_the_tproxy_target() {
        let text = plan(Profile::Port21, &["127.0.0.1:2121", "[::1]:2122"]).nft();
        assert!(text.contains("tproxy ip to 127.0.0.1:2121 "), "{text}");
        assert!(text.contains("tproxy ip6 to [::1]:2122 "), "{text}");
        let text = plan(Profile::Port21, &["127.0.0.1:2121"]).iptables();
        assert!(text.contains("--on-port 2121 --on-ip 127.0.0.1 --tproxy-mark 0x1"), "{text}");
    }

    #[test]
    fn strict_without_client_side_is_refused() {
        assert_eq!(plan(Profile::Strict, &["0.0.0.0:2121"]).check(), Err(PlanError::StrictWithoutClientSide));
        assert_eq!(plan(Profile::Port21, &["0.0.0.0:2121"]).check(), Ok(()));
        assert_eq!(lab().check(), Ok(()));
        let mut p = lab();
        p.mark = 0;
        assert_eq!(p.check(), Err(PlanError::MarkZero));
        p.mark = 1;
        p.table = 254;
        assert_eq!(p.check(), Err(PlanError::TableReserved(254)));
    }

    #[test]
    fn forward_mark_must_be_a_bit_of_its_own() {
        let mut p = lab();
        p.forward_mark = 0;
        assert_eq!(p.check(), Err(PlanError::ForwardMarkZero));
        p.forward_mark = 0x3;
        assert_eq!(p.check(), Err(PlanError::MarksOverlap { mark: 1, forward_mark: 3 }));
        assert!(PlanError::MarksOverlap { mark: 1, forward_mark: 3 }
            .to_string()
            .contains("--forward-mark 0x3"));
        p.mark = 0x10;
        p.forward_mark = 0x20;
        assert_eq!(p.check(), Ok(()));
        // Both forms: routed flows are marked in the forward hook and pass
        // the divert before its socket lookup.
        let nft = p.nft();
        let pass = nft.find("ct mark & 0x20 == 0x20 accept").expect("pass-by rule");
        assert!(pass < nft.find("socket transparent 1").unwrap(), "{nft}");
        assert!(nft.contains("ct mark & 0x30 == 0 ct mark set ct mark | 0x20"), "{nft}");
        let wildcard = nft.find("socket wildcard 1 accept").expect("wildcard rule");
        assert!(pass < wildcard && wildcard < nft.find("socket transparent 1").unwrap(), "{nft}");
        assert!(nft.contains("meta l4proto { tcp, icmp, ipv6-icmp } socket transparent 1"), "{nft}");
        let ipt = p.iptables();
        let pass =
            ipt.find("FTPGATE_PREROUTING -m connmark --mark 0x20/0x20 -j RETURN").expect("pass-by rule");
        assert!(pass < ipt.find("-m socket --transparent").unwrap(), "{ipt}");
        assert!(ipt.contains("FTPGATE_FORWARD -m connmark --mark 0x0/0x30 -j CONNMARK --or-mark 0x20"));
        assert!(ipt.contains("iptables -w 5 -t mangle -A FTPGATE_PREROUTING -p icmp -m socket --transparent"));
        assert!(ipt
            .contains("ip6tables -w 5 -t mangle -A FTPGATE_PREROUTING -p ipv6-icmp -m socket --transparent"));
        assert!(p.rules_command("").contains(" --forward-mark 0x20"));
    }

    #[test]
    fn client_prefix_of_one_family_leaves_the_other_alone() {
        let mut p = plan(Profile::Strict, &["0.0.0.0:2121", "[::]:2121"]);
        p.client_nets = vec!["192.0.2.0/24".parse().unwrap()];
        let text = p.nft();
        assert!(text.contains("# no IPv6 prefix"), "{text}");
        assert!(!text.contains("ip6 "), "{text}");
        assert!(text.contains("ip saddr 192.0.2.0/24 tcp dport 21 reject"), "{text}");
        assert!(text.contains("ip daddr 192.0.2.0/24 drop"), "{text}");
    }

    #[test]
    fn net_and_interface_parsing_refuses_what_cannot_be_pasted() {
        assert_eq!("192.0.2.0/24".parse::<Net>().unwrap().to_string(), "192.0.2.0/24");
        assert_eq!("2001:db8::1".parse::<Net>().unwrap().to_string(), "2001:db8::1/128");
        assert!("192.0.2.0/33".parse::<Net>().is_err());
        assert!("2001:db8::/129".parse::<Net>().is_err());
        assert!("lan".parse::<Net>().is_err());
        assert!("eth0".parse::<Interface>().is_ok());
        assert!("vlan.10@eth0".parse::<Interface>().is_ok());
        for bad in ["", "a\"b", "eth0; rm", "sixteen-chars-xx", "a b", "x$(y)"] {
            assert!(bad.parse::<Interface>().is_err(), "{bad:?}");
        }
    }
}
