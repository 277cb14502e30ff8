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
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub(crate) max_sessions: usize,

    /// Most control sessions from one client address; more get a 421.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub(crate) max_sessions_per_client: usize,

    /// What to do when a 227/229 names another address than the control
    /// connection's server: listen on the server's address and rewrite the
    /// reply (NAT'd servers), or refuse the reply.
    #[arg(long, value_enum, default_value_t = PassiveMismatch::Rewrite)]
    pub(crate) passive_address_mismatch: PassiveMismatch,

    /// Allow data ports below 1024 in PORT/EPRT/227/229 (unsafe: see ATTACKS.md 2, 6).
    #[arg(long)]
    pub(crate) allow_privileged_data_ports: bool,

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
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) login_failure_window: u64,

    /// Seconds a client past --max-login-failures is refused.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub(crate) login_cooldown: u64,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub(crate) log_level: LogLevel,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Full)]
    pub(crate) log_format: LogFormat,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PassiveMismatch {
    Rewrite,
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Ftps {
    Refuse,
    PassThrough,
}
