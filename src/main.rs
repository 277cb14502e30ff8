//! ftpgate: a transparent FTP application-layer gateway for Linux (TPROXY).
//!
//! The protocol lives in the `ftpgate-proto` crate; this binary executes what
//! it asks for: transparent sockets, the splice relay, the event loop.

mod audit;
mod cli;
mod conn;
mod log;
mod logins;
mod relay;
mod server;
mod timers;
mod tproxy;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ftpgate_proto::{Config, FtpsPolicy, PassiveAddressPolicy};
use slog::{crit, info};

use crate::cli::{Args, Ftps, PassiveMismatch};

fn main() -> ExitCode {
    let args = Args::parse();
    let log = log::build(args.log_level, args.log_format);
    let config = core_config(&args);
    let opts = server::Options {
        listen: args.listen.clone(),
        config: Arc::new(config),
        max_sessions: args.max_sessions.max(1),
        max_sessions_per_client: args.max_sessions_per_client.max(1),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        login_failures: logins::Limits {
            limit: args.max_login_failures,
            window: Duration::from_secs(args.login_failure_window),
            cooldown: Duration::from_secs(args.login_cooldown),
        },
    };
    let mut server = match server::Server::new(opts, log.clone()) {
        Ok(server) => server,
        Err(e) => {
            crit!(log, "cannot start"; "error" => %e);
            return ExitCode::from(2);
        }
    };
    info!(log, "ftpgate started"; "version" => env!("CARGO_PKG_VERSION"));
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crit!(log, "event loop failed"; "error" => %e);
            ExitCode::from(1)
        }
    }
}

/// The protocol core's settings from the command line.
fn core_config(args: &Args) -> Config {
    Config {
        data_accept_timeout: Duration::from_secs(args.data_timeout),
        data_connect_timeout: Duration::from_secs(args.connect_timeout),
        greeting_timeout: Duration::from_secs(args.connect_timeout.max(1) * 3),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        data_idle_timeout: Duration::from_secs(args.data_idle_timeout),
        allow_privileged_data_ports: args.allow_privileged_data_ports,
        passive_address_mismatch: match args.passive_address_mismatch {
            PassiveMismatch::Rewrite => PassiveAddressPolicy::Rewrite,
            PassiveMismatch::Refuse => PassiveAddressPolicy::Refuse,
        },
        ftps: match args.ftps {
            Ftps::Refuse => FtpsPolicy::Refuse,
            Ftps::PassThrough => FtpsPolicy::PassThrough,
        },
        max_refused_lines: args.max_refused_lines,
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_idle_timeout_defaults_to_300_seconds_and_reaches_the_core() {
        let config = core_config(&Args::parse_from(["ftpgate"]));
        assert_eq!(config.data_idle_timeout, Duration::from_secs(300));
        let config = core_config(&Args::parse_from(["ftpgate", "--data-idle-timeout", "7"]));
        assert_eq!(config.data_idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn ftps_and_refused_lines_reach_the_core() {
        let config = core_config(&Args::parse_from(["ftpgate"]));
        assert_eq!((config.ftps, config.max_refused_lines), (FtpsPolicy::Refuse, 10));
        let args = ["ftpgate", "--ftps", "pass-through", "--max-refused-lines", "3"];
        let config = core_config(&Args::parse_from(args));
        assert_eq!((config.ftps, config.max_refused_lines), (FtpsPolicy::PassThrough, 3));
    }
}
