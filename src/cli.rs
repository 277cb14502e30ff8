//! Command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::rules::{Interface, Net, Profile};

/// Transparent FTP gateway for Linux routers (TPROXY).
///
/// Accepts FTP control connections redirected by the TPROXY target, connects
/// to the real server from the client's own address, and opens every data
/// channel transparently (listen on / connect from foreign addresses).
///
/// Every option can also be set in the configuration file (--config); an
/// option given here wins over the file.
#[derive(Clone, Debug, Parser)]
#[command(name = "ftpgate", version, about, long_about)]
pub(crate) struct Args {
    /// Without a subcommand ftpgate runs the gateway.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// The configuration file (TOML). Default: /etc/ftpgate/ftpgate.toml
    /// when it exists; `--config /dev/null` reads none. SIGHUP reads it
    /// again. `rules` and `doctor` read it too.
    #[arg(long, value_name = "PATH", global = true)]
    pub(crate) config: Option<PathBuf>,

    /// Check the configuration file and the options, print the verdict and
    /// exit: 0 when valid, 2 with the file, line and key of the error
    /// otherwise.
    #[arg(long)]
    pub(crate) check_config: bool,

    /// Address of the TPROXY port (the `--on-port` / `tproxy to` target).
    /// Repeat for several: `--listen 0.0.0.0:2121 --listen [::]:2121` (the
    /// IPv6 one then takes IPv6 only), or `--listen [::]:2121` alone for
    /// both families on one socket. `rules` and `doctor` read it too.
    #[arg(long = "listen", value_name = "ADDR:PORT", default_value = "0.0.0.0:2121", global = true)]
    pub(crate) listen: Vec<SocketAddr>,

    /// Event loops, each a thread with its own TPROXY listener on every
    /// --listen address (SO_REUSEPORT): the kernel spreads new sessions
    /// over them, and a session stays on its loop. Default: the number of
    /// cores this process may use. 1: one thread, as before.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,

    /// Data channels whose relay may run on two threads of their own at
    /// once, process-wide. A relay moves there after its first MiB (bulk
    /// transfers): a thread blocked in splice() costs less CPU per byte
    /// than the event loop. Each holds 3 more descriptors and pipes of up
    /// to 1 MiB. 0: every relay stays in the event loops.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub(crate) relay_threads: usize,

    /// Seconds a data listener waits for its one connection.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = at_least_one_second())]
    pub(crate) data_timeout: u64,

    /// Seconds a connect to the server or a data peer may take.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = at_least_one_second())]
    pub(crate) connect_timeout: u64,

    /// Seconds without control traffic before a session is closed.
    #[arg(long, value_name = "SECS", default_value_t = 900, value_parser = at_least_one_second())]
    pub(crate) idle_timeout: u64,

    /// Seconds a data transfer may move no byte in either direction before
    /// it is ended: both data connections are reset and the client gets 426.
    /// Bytes a receiver acknowledges from the send buffer count as moving
    /// (4 KiB a period at least): a receiver that stops reading with bytes
    /// in flight is cut after at most twice this.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = at_least_one_second())]
    pub(crate) data_idle_timeout: u64,

    /// Seconds running transfers get to finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub(crate) drain_timeout: u64,

    /// Most control sessions at once; further clients wait in the backlog.
    /// Default (or 0): what the descriptor limit allows. RLIMIT_NOFILE
    /// bounds each event loop's descriptor table, which spares S =
    /// RLIMIT_NOFILE - 64 - (addresses + 17) - 4 × workers - 3 ×
    /// relay-threads; a session holds 2 descriptors, an open data channel
    /// 7 more, and the default, workers × S × 4 / 15, leaves room for one
    /// data channel per 4 sessions. A larger value is lowered, with a
    /// warning.
    #[arg(long, value_name = "N")]
    pub(crate) max_sessions: Option<usize>,

    /// Most control sessions from one client address at once; more get a
    /// 421. Off by default (0): thousands of users can share one NAT'd
    /// address. Against floods, see --session-rate-per-client.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) max_sessions_per_client: usize,

    // Why 20/s after a burst of 100: a NAT'd office opens sessions in
    // bursts (a mirror job with 10 parallel connections, a batch script,
    // a morning of logins) and then a trickle; 100 at once and 72,000 an
    // hour from one address is beyond any office, yet a flood from one
    // address needs minutes to fill the session cap (116,000 sessions at
    // Debian's descriptor limit: over 1.5 hours) and is logged meanwhile.
    /// New sessions per second one client address (an IPv6 /64) may open,
    /// after its burst; more get a 421. 0: no limit.
    #[arg(long, value_name = "N/s", default_value = "20", value_parser = parse_per_second)]
    pub(crate) session_rate_per_client: u64,

    /// New sessions one client address may open at once before
    /// --session-rate-per-client applies.
    #[arg(long, value_name = "B", default_value_t = 100)]
    pub(crate) session_burst_per_client: u64,

    /// What counts as one IPv6 client for the per-client limits (session
    /// rate and cap, failed logins): its address's first LEN bits. 64: a
    /// host owns its /64 and cannot mint a fresh client from it; 128: each
    /// address on its own, for a router whose IPv6 clients share a LAN /64
    /// (one of them can then rotate addresses). IPv4 clients are counted by
    /// address.
    #[arg(long, value_name = "LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    pub(crate) ipv6_client_prefix: u8,

    /// Most data channels open at once, over all sessions; a PASV/PORT
    /// beyond it gets 425. Each relaying channel holds two pipes of up to
    /// 256 KiB. Default: a quarter of physical memory in pipes
    /// (MemTotal / 4 / 512 KiB), at most --max-sessions and what the
    /// descriptors left by the sessions carry (7 each); a larger value is
    /// lowered to the latter, with a warning.
    #[arg(long, value_name = "N")]
    pub(crate) max_data_channels: Option<usize>,

    /// What to do when a 227/229 names another address than the control
    /// connection's server: listen on the server's address and rewrite the
    /// reply (NAT'd servers), or refuse the reply.
    #[arg(long, value_enum, default_value_t = PassiveMismatch::Rewrite)]
    pub(crate) passive_address_mismatch: PassiveMismatch,

    /// Allow data ports below 1024 in PORT/EPRT/227/229 (unsafe: see ATTACKS.md 2, 6).
    #[arg(long)]
    pub(crate) allow_privileged_data_ports: bool,

    /// Data of RETR/LIST/NLST/MLSD may flow only server to client, of
    /// STOR/APPE/STOU only client to server (ATTACKS.md 34): a byte the
    /// wrong way resets the data connections and the client gets 426.
    #[arg(long)]
    pub(crate) enforce_data_direction: bool,

    /// Who carries the data connections: ftpgate's relay, or the kernel
    /// through one-shot conntrack expectations (pinhole: the firewall must
    /// accept `ct state established,related` in its forward chain; see
    /// README, "The kernel data path").
    /// `rules` then adds that accept.
    #[arg(long, value_enum, default_value_t = DataPath::Relay, global = true)]
    pub(crate) data_path: DataPath,

    /// FTPS (AUTH TLS): refuse it (534, FEAT no longer advertises it, the
    /// session stays clear text), or pass it through: after the server's
    /// 234 the control connection is relayed blind and the gateway opens no
    /// data channel for it (the firewall must then allow the data ports).
    #[arg(long, value_enum, default_value_t = Ftps::Refuse)]
    pub(crate) ftps: Ftps,

    /// Client lines in a row the gateway refuses before it closes the
    /// session with 421 (0: never).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max_refused_lines: usize,

    /// Failed logins (530) from one client address within
    /// --login-failure-window after which its new sessions get 421 for
    /// --login-cooldown (0: never).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max_login_failures: u32,

    /// Seconds over which failed logins are counted.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = at_least_one_second())]
    pub(crate) login_failure_window: u64,

    /// Seconds a client past --max-login-failures is refused.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) login_cooldown: u64,

    /// After the control listeners are bound, run as this user, keeping only
    /// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (needs a start as root).
    #[arg(long, value_name = "NAME")]
    pub(crate) user: Option<String>,

    /// The group for --user (default: the user's primary group).
    #[arg(long, value_name = "NAME", requires = "user")]
    pub(crate) group: Option<String>,

    /// Serve Prometheus metrics over plain HTTP at ADDR:PORT/metrics: a
    /// listener of the gateway's own, not intercepted.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<SocketAddr>,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub(crate) log_level: LogLevel,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Full)]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the kernel set-up for the configured listeners: the firewall
    /// (`| nft -f -`, or `--iptables ... | sh`) and, with --routing, the
    /// policy routing and sysctls (`| sh`). --undo prints what removes it.
    Rules(RulesArgs),
    /// Check this machine's set-up for the configured listeners, one line
    /// per check with the command that fixes it; exit status 1 when
    /// something is wrong. Give it the flags given to `rules`.
    Doctor(DoctorArgs),
}

#[derive(Clone, Debug, ClapArgs)]
pub(crate) struct RulesArgs {
    /// iptables and ip6tables commands (for sh) instead of an nft rule set.
    #[arg(long, conflicts_with = "routing")]
    pub(crate) iptables: bool,

    /// The policy routing (`ip rule`, `ip route`) and sysctls, for sh.
    #[arg(long)]
    pub(crate) routing: bool,

    /// Print what removes the set-up instead.
    #[arg(long)]
    pub(crate) undo: bool,

    #[command(flatten)]
    pub(crate) plan: PlanArgs,
}

#[derive(Clone, Debug, ClapArgs)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    pub(crate) plan: PlanArgs,
}

/// What the kernel set-up depends on, besides the listeners: shared by
/// `rules` and `doctor`.
#[derive(Clone, Debug, ClapArgs)]
pub(crate) struct PlanArgs {
    /// What the forward chain refuses: only the control port (port21), or
    /// everything between the client side and the server networks that
    /// ftpgate does not carry (strict).
    #[arg(long, value_enum, default_value_t = Profile::Port21)]
    pub(crate) profile: Profile,

    /// The intercepted FTP control port.
    #[arg(long, value_name = "PORT", default_value_t = 21)]
    pub(crate) port: u16,

    /// The firewall mark of packets for ftpgate's sockets.
    #[arg(long, value_name = "MARK", default_value = "1", value_parser = parse_mark)]
    pub(crate) mark: u32,

    /// The conntrack mark bit(s) put on forwarded connections, which the
    /// divert rule then passes by: none of ftpgate's foreign listeners can
    /// take a packet of a routed flow. Must share no bit with --mark.
    #[arg(long, value_name = "MARK", default_value = "2", value_parser = parse_mark)]
    pub(crate) forward_mark: u32,

    /// The route table that makes marked packets local.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) table: u32,

    /// A client-facing interface (repeat for several).
    #[arg(long = "client-interface", value_name = "IF")]
    pub(crate) client_interfaces: Vec<Interface>,

    /// A client network, IPv4 or IPv6 (repeat for several).
    #[arg(long = "client-net", value_name = "PREFIX")]
    pub(crate) client_nets: Vec<Net>,

    /// A server network, IPv4 or IPv6 (repeat for several); none: any.
    #[arg(long = "server-net", value_name = "PREFIX")]
    pub(crate) server_nets: Vec<Net>,
}

/// A mark in decimal or 0x hex (also in the configuration file).
pub(crate) fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("'{text}' is not a mark (like 1 or 0x10): {e}"))
}

/// A timeout of 0 would expire at once: the core has no "off" for it.
fn at_least_one_second() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

/// A rate given as `N` or `N/s` (also in the configuration file).
pub(crate) fn parse_per_second(text: &str) -> Result<u64, String> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    n.trim().parse().map_err(|e| format!("'{text}' is not a whole number per second (like 20 or 20/s): {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    /// One line per record, every key-value pair on it.
    Full,
    /// Records grouped under their session's keys.
    Compact,
    /// One JSON object per line: `ts`, `level`, `msg` and every key-value
    /// pair of the full form (docs/audit.md).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PassiveMismatch {
    Rewrite,
    Refuse,
}

/// `--data-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DataPath {
    /// ftpgate relays every data byte (splice).
    Relay,
    /// The kernel forwards each approved data connection, once.
    Pinhole,
}

/// `--ftps` (and `[ftps] mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Ftps {
    Refuse,
    PassThrough,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_rate_per_client_takes_n_or_n_per_second() {
        assert_eq!(parse_per_second("20"), Ok(20));
        assert_eq!(parse_per_second("7/s"), Ok(7));
        assert_eq!(parse_per_second("0"), Ok(0));
        assert!(parse_per_second("20/m").is_err());
        assert!(parse_per_second("-1").is_err());
    }

    #[test]
    fn plain_invocation_runs_the_daemon_rules_takes_global_listen() {
        let args = Args::parse_from(["ftpgate", "--listen", "0.0.0.0:2121"]);
        assert!(args.command.is_none());
        let args = Args::parse_from(["ftpgate", "--listen", "[::]:2121", "rules", "--iptables"]);
        assert_eq!(args.listen, vec!["[::]:2121".parse::<SocketAddr>().unwrap()]);
        assert!(matches!(args.command, Some(Command::Rules(RulesArgs { iptables: true, .. }))));
        let args = Args::parse_from(["ftpgate", "rules", "--listen", "[::]:2121", "--mark", "0x10"]);
        assert_eq!(args.listen, vec!["[::]:2121".parse::<SocketAddr>().unwrap()]);
        let Some(Command::Rules(rules)) = args.command else { panic!("rules expected") };
        assert_eq!(rules.plan.mark, 16);
        let args = Args::parse_from(["ftpgate", "rules"]);
        assert_eq!(args.listen, vec!["0.0.0.0:2121".parse::<SocketAddr>().unwrap()]);
        assert!(Args::try_parse_from(["ftpgate", "rules", "--client-interface", "a;b"]).is_err());
        assert!(Args::try_parse_from(["ftpgate", "rules", "--iptables", "--routing"]).is_err());
    }

    #[test]
    fn limits_defaults_per_client_cap_off_rate_on() {
        let args = Args::parse_from(["ftpgate"]);
        assert_eq!(args.max_sessions, None);
        assert_eq!(args.max_sessions_per_client, 0);
        assert_eq!(args.session_rate_per_client, 20);
        assert_eq!(args.session_burst_per_client, 100);
        assert_eq!(args.max_data_channels, None);
    }

    #[test]
    fn workers_default_to_the_cores_and_take_one_or_more() {
        assert_eq!(Args::parse_from(["ftpgate"]).workers, None);
        assert_eq!(Args::parse_from(["ftpgate", "--workers", "2"]).workers, Some(2));
        assert!(Args::try_parse_from(["ftpgate", "--workers", "0"]).is_err());
    }
}
