//! ftpgate: a transparent FTP application-layer gateway for Linux (TPROXY).
//!
//! The protocol lives in the `ftpgate-proto` crate; this binary executes what
//! it asks for: transparent sockets, the splice relay, the event loop.

mod audit;
mod cli;
mod conn;
mod limits;
mod listeners;
mod log;
mod metrics;
mod privilege;
mod relay;
mod server;
mod timers;
mod tproxy;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ftpgate_proto::{Config, PassiveAddressPolicy, PolicySet};
use slog::{crit, info, warn, Logger};

use crate::cli::{Args, PassiveMismatch};

fn main() -> ExitCode {
    let args = Args::parse();
    let log = log::build(args.log_level, args.log_format);
    let mut config = core_config(&args);
    if let Some(path) = &args.policy_file {
        match policy_from_file(path) {
            Ok(policy) => {
                info!(log, "policy loaded"; "path" => %path.display(), "rules" => policy.rules.len());
                config.policy = policy;
            }
            Err(e) => {
                crit!(log, "cannot start"; "error" => %e);
                return ExitCode::from(2);
            }
        }
    }
    let (max_sessions, max_data_channels) = size_limits(&args, &log);
    let session_rate =
        limits::Rate { per_second: args.session_rate_per_client, burst: args.session_burst_per_client };
    let opts = server::Options {
        listen: args.listen.clone(),
        config: Arc::new(config),
        max_sessions,
        max_sessions_per_client: args.max_sessions_per_client,
        session_rate,
        max_data_channels,
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    // Checked before any socket exists, carried out once the control
    // listeners are bound: they are the only sockets opened as root.
    let privileges = match privilege::prepare(args.user.as_deref(), args.group.as_deref()) {
        Ok(plan) => plan,
        Err(e) => {
            crit!(log, "cannot start"; "error" => %e);
            return ExitCode::from(2);
        }
    };
    // Bound with the control listeners, so that a port taken is a start
    // error; served once the privileges are dropped (`Endpoint::spawn`).
    let metrics_endpoint = match args.metrics.map(metrics::Endpoint::bind).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            crit!(log, "cannot start"; "error" => %e);
            return ExitCode::from(2);
        }
    };
    let mut server = match server::Server::new(opts, log.clone()) {
        Ok(server) => server,
        Err(e) => {
            crit!(log, "cannot start"; "error" => %e);
            return ExitCode::from(2);
        }
    };
    match privilege::apply(&privileges) {
        Ok(dropped) => privilege::log(&log, dropped.as_ref()),
        Err(e) => {
            crit!(log, "cannot start"; "error" => %e);
            return ExitCode::from(2);
        }
    }
    if let Err(e) = metrics_endpoint.map_or(Ok(()), |endpoint| endpoint.spawn(metrics::get(), log.clone())) {
        crit!(log, "cannot start"; "error" => %e);
        return ExitCode::from(2);
    }
    info!(log, "ftpgate started"; "version" => env!("CARGO_PKG_VERSION"));
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crit!(log, "event loop failed"; "error" => %e);
            ExitCode::from(1)
        }
    }
}

/// Raises the descriptor limit and sizes the session and data-channel caps
/// against it and against memory, logging every figure.
fn size_limits(args: &Args, log: &Logger) -> (usize, usize) {
    let nofile = match limits::raise_nofile() {
        Ok(nofile) => {
            info!(log, "descriptor limit"; "nofile" => nofile.now, "was" => nofile.was);
            nofile.now
        }
        Err(e) => {
            // Not fatal: the caps are then sized to the limit we have.
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft);
            warn!(log, "cannot raise the descriptor limit"; "error" => %e, "nofile" => soft);
            soft
        }
    };
    let listeners = args.listen.len();
    let max_sessions = match limits::fit_max_sessions(args.max_sessions, nofile, listeners) {
        Ok(n) => n,
        Err(lowered) => {
            warn!(
                log, "--max-sessions lowered to what the descriptor limit allows";
                "requested" => lowered.requested, "max_sessions" => lowered.to,
                "nofile" => nofile, "fds_per_session" => limits::FDS_PER_SESSION,
                "hint" => "raise the hard RLIMIT_NOFILE (systemd LimitNOFILE=)"
            );
            lowered.to
        }
    };
    let max_data_channels = match args.max_data_channels {
        Some(n) if n > 0 => n,
        _ => match limits::mem_total() {
            Ok(bytes) => limits::default_max_data_channels(bytes, max_sessions),
            Err(e) => {
                warn!(log, "cannot read the memory size; data channels capped at the session cap"; "error" => %e);
                max_sessions
            }
        },
    };
    let pipe_mib = max_data_channels as u64 * limits::PIPE_BYTES_PER_CHANNEL / (1024 * 1024);
    info!(
        log, "limits";
        "max_sessions" => max_sessions, "fds_per_session" => limits::FDS_PER_SESSION,
        "max_data_channels" => max_data_channels, "pipe_mib_at_most" => pipe_mib,
        "max_sessions_per_client" => args.max_sessions_per_client,
        "session_rate_per_client" => args.session_rate_per_client,
        "session_burst_per_client" => args.session_burst_per_client
    );
    (max_sessions, max_data_channels)
}

/// `--policy-file`: the `[policy]` table's content on its own. Stands in
/// until the configuration file's loader reads `[policy]` itself.
fn policy_from_file(path: &std::path::Path) -> Result<PolicySet, String> {
    let what = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("policy file {what}: {e}"))?;
    // toml's message names the line and column.
    let policy: PolicySet = toml::from_str(&text).map_err(|e| format!("policy file {what}: {e}"))?;
    policy.validate().map_err(|e| format!("policy file {what}: {e}"))?;
    Ok(policy)
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
    fn policy_file_errors_name_the_file_and_the_line() {
        let dir = std::env::temp_dir().join(format!("ftpgate-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "[[rule]]\naction = \"allow\"\n\n[[rule]]\nclient = [\"192.0.2.0/40\"]\naction = \"deny\"\n",
        )
        .unwrap();
        let e = policy_from_file(&path).unwrap_err();
        assert!(e.contains("policy.toml") && e.contains("line 5") && e.contains("not a network"), "{e}");
        std::fs::write(&path, "[[rule]]\naction = \"allow\"\nprofile = \"ro\"\n").unwrap();
        let e = policy_from_file(&path).unwrap_err();
        assert!(e.contains("rule 1: profile 'ro' is not defined"), "{e}");
        std::fs::write(&path, "default = \"deny\"\n").unwrap();
        assert_eq!(policy_from_file(&path).unwrap().default, ftpgate_proto::rules::Action::Deny);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readme_policy_examples_load() {
        let readme = include_str!("../README.md");
        let policy = readme.split("\n## Policy\n").nth(1).unwrap().split("\n## ").next().unwrap();
        let examples: Vec<&str> =
            policy.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert_eq!(examples.len(), 3);
        for text in examples {
            let policy: PolicySet = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            policy.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(!policy.rules.is_empty());
        }
    }

    #[test]
    fn group_without_user_is_refused() {
        assert!(Args::try_parse_from(["ftpgate", "--group", "nogroup"]).is_err());
        let args = Args::parse_from(["ftpgate", "--user", "nobody", "--group", "nogroup"]);
        assert_eq!((args.user.as_deref(), args.group.as_deref()), (Some("nobody"), Some("nogroup")));
    }
}
