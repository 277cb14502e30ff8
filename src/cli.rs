//! Command line.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// Transparent FTP gateway for Linux routers (TPROXY).
///
/// Accepts FTP control connections redirected by the TPROXY target, connects
/// to the real server from the client's own address, and opens every data
/// channel transparently (listen on / connect from foreign addresses).
#[derive(Debug, Parser)]
#[command(name = "ftpgate", version, about, long_about)]
pub(crate) struct Args {
    /// Address of the TPROXY port (the `--on-port` / `tproxy to` target).
    /// Repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", default_value = "0.0.0.0:2121")]
    pub(crate) listen: Vec<SocketAddr>,

    /// Seconds a data listener waits for its one connection.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub(crate) data_timeout: u64,

    /// Seconds a connect to the server or a data peer may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) connect_timeout: u64,

    /// Seconds without control traffic before a session is closed.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub(crate) idle_timeout: u64,

    /// Seconds a data transfer may move no byte in either direction before
    /// it is ended: both data connections are reset and the client gets 426.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) data_idle_timeout: u64,

    /// Seconds running transfers get to finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub(crate) drain_timeout: u64,

    /// Most control sessions at once; further clients wait in the backlog.
    /// Default (or 0): what the descriptor limit allows, each session
    /// holding up to 9: (RLIMIT_NOFILE - 64 - listeners) / 9. A larger
    /// value is lowered to that, with a warning.
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

    /// Most data channels open at once, over all sessions; a PASV/PORT
    /// beyond it gets 425. Each relaying channel holds two pipes of up to
    /// 256 KiB. Default: a quarter of physical memory in pipes
    /// (MemTotal / 4 / 512 KiB), at most --max-sessions.
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

    /// Access rules and command profiles: a TOML file holding what goes
    /// in the configuration's [policy] table (README "Policy"). Without it,
    /// everything is allowed.
    #[arg(long, value_name = "PATH")]
    pub(crate) policy_file: Option<std::path::PathBuf>,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub(crate) log_level: LogLevel,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Full)]
    pub(crate) log_format: LogFormat,
}

/// A rate given as `N` or `N/s`.
fn parse_per_second(text: &str) -> Result<u64, String> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    n.trim().parse().map_err(|e| format!("'{text}' is not a whole number per second (like 20 or 20/s): {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per record, every key-value pair on it.
    Full,
    /// Records grouped under their session's keys.
    Compact,
    /// One JSON object per line: `ts`, `level`, `msg` and every key-value
    /// pair of the full form (docs/audit.md).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PassiveMismatch {
    Rewrite,
    Refuse,
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
    fn limits_defaults_per_client_cap_off_rate_on() {
        let args = Args::parse_from(["ftpgate"]);
        assert_eq!(args.max_sessions, None);
        assert_eq!(args.max_sessions_per_client, 0);
        assert_eq!(args.session_rate_per_client, 20);
        assert_eq!(args.session_burst_per_client, 100);
        assert_eq!(args.max_data_channels, None);
    }
}
