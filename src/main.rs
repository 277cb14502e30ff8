//! ftpgate: a transparent FTP application-layer gateway for Linux (TPROXY).
//!
//! The protocol lives in the `ftpgate-proto` crate; this binary executes what
//! it asks for: transparent sockets, the splice relay, the event loop.

mod assets;
mod audit;
mod cli;
mod config;
mod conn;
mod doctor;
mod fdtable;
mod limits;
mod listeners;
mod log;
mod logins;
mod metrics;
mod netlink;
mod pinhole;
mod privilege;
mod relay;
mod relay_threads;
mod rules;
mod server;
mod service;
mod timers;
mod tproxy;
mod workers;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use slog::{crit, info, warn, Logger};

use crate::cli::Args;

fn main() -> ExitCode {
    // Packaging (lab/package): the man pages and completions, written from
    // the clap definitions before anything is parsed, bound or logged.
    if let Some(exit) = assets::generate_if_asked() {
        return exit;
    }
    let matches = Args::command().get_matches();
    let cmdline = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The command line over the file over the flags' defaults; kept to
    // merge the file again at SIGHUP, where the flags still win.
    let loader = config::Loader::new(cmdline, config::Given::of(&matches));
    let loaded = match loader.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("ftpgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if loaded.args.check_config {
        return check_config(&loaded);
    }
    match &loaded.args.command {
        None => run_daemon(loader, &loaded),
        Some(cli::Command::Rules(rules)) => print_rules(&loaded.args, rules),
        Some(cli::Command::Doctor(doctor)) => run_doctor(&loaded.args, doctor),
    }
}

/// The rules' inputs from the command line.
fn plan(args: &Args, p: &cli::PlanArgs) -> rules::Plan {
    rules::Plan {
        listen: args.listen.clone(),
        port: p.port,
        mark: p.mark,
        forward_mark: p.forward_mark,
        table: p.table,
        profile: p.profile,
        client_interfaces: p.client_interfaces.clone(),
        client_nets: p.client_nets.clone(),
        server_nets: p.server_nets.clone(),
        related: args.data_path == cli::DataPath::Pinhole,
    }
}

/// `ftpgate rules`: the set-up text on stdout, or why not on stderr.
fn print_rules(args: &Args, r: &cli::RulesArgs) -> ExitCode {
    let plan = plan(args, &r.plan);
    if let Err(e) = plan.check() {
        eprintln!("ftpgate rules: {e}");
        return ExitCode::from(2);
    }
    let text = match (r.routing, r.iptables, r.undo) {
        (true, _, false) => plan.routing(),
        (true, _, true) => plan.routing_undo(),
        (false, true, false) => plan.iptables(),
        (false, true, true) => plan.iptables_undo(),
        (false, false, false) => plan.nft(),
        (false, false, true) => plan.nft_undo(),
    };
    print!("{text}");
    ExitCode::SUCCESS
}

/// `ftpgate doctor`: one line per check on stdout; 1 when one is wrong.
fn run_doctor(args: &Args, d: &cli::DoctorArgs) -> ExitCode {
    let plan = plan(args, &d.plan);
    if let Err(e) = plan.check() {
        eprintln!("ftpgate doctor: {e}");
        return ExitCode::from(2);
    }
    let checks = doctor::evaluate(&plan, &doctor::Facts::gather(&plan));
    for check in &checks {
        println!("{check}");
    }
    if checks.iter().all(doctor::Check::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run_daemon(loader: config::Loader, loaded: &config::Loaded) -> ExitCode {
    let args = &loaded.args;
    let log = log::build(args.log_level, args.log_format);
    info!(log, "configuration"; "file" => loaded.file_name());
    loaded.log_policy(&log);
    if let Err(what) = config::data_path_conflicts(args, &loaded.policy) {
        crit!(log, "cannot start"; "error" => what);
        return ExitCode::from(2);
    }
    let workers = args.workers.map_or_else(workers::default_count, usize::from);
    limits::set_ipv6_client_prefix(args.ipv6_client_prefix);
    let (max_sessions, max_data_channels) = size_limits(args, workers, &log);
    let reloadable = config::Reloadable::of(loaded);
    let opts = workers::Options {
        listen: args.listen.clone(),
        workers,
        relay_threads: args.relay_threads,
        config: reloadable.core,
        max_sessions,
        max_sessions_per_client: reloadable.max_sessions_per_client,
        session_rate: reloadable.session_rate,
        max_data_channels,
        drain_timeout: reloadable.drain_timeout,
        login_failures: reloadable.login_failures,
        reloader: config::Reloader::new(loader, loaded),
    };
    // Checked before any socket exists, carried out once the control
    // listeners are bound: they are the only sockets opened as root. And
    // before the event loops' threads start: capabilities are per thread,
    // and each thread inherits those of the main thread when it starts.
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
    let daemon = match workers::Daemon::bind(opts, log.clone()) {
        Ok(daemon) => daemon,
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
    info!(log, "ftpgate started"; "version" => env!("CARGO_PKG_VERSION"), "workers" => daemon.workers());
    // systemd's Type=notify: started means a client is served from now on
    // (the listeners are bound: a client waits in the backlog until the
    // loops' threads run).
    service::notify_ready(&log);
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crit!(log, "event loop failed"; "error" => %e);
            ExitCode::from(1)
        }
    }
}

/// Raises the descriptor limit and sizes the session and data-channel caps
/// against it and against memory, logging every figure.
fn size_limits(args: &Args, workers: usize, log: &Logger) -> (usize, usize) {
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
    // Each event loop gives its sessions a descriptor table of its own
    // (`fdtable`) where the kernel lets it: the limit then holds per loop.
    let private = fdtable::available();
    if !private {
        warn!(
            log, "event loops share one descriptor table";
            "hint" => "unshare(CLONE_FILES) is refused (a seccomp filter?): the session cap is sized for one table"
        );
    }
    let fds = limits::FdTables::new(nofile, workers, args.listen.len(), args.relay_threads, private);
    let caps = limits::fit_caps(fds, args.max_sessions, args.max_data_channels, |sessions| {
        match limits::mem_total() {
            Ok(bytes) => limits::default_max_data_channels(bytes, sessions),
            Err(e) => {
                warn!(log, "cannot read the memory size; data channels capped by descriptors alone"; "error" => %e);
                sessions
            }
        }
    });
    if let Some(lowered) = caps.sessions_lowered {
        warn!(
            log, "--max-sessions lowered to what the descriptor limit allows";
            "requested" => lowered.requested, "max_sessions" => lowered.to,
            "nofile" => nofile, "descriptor_tables" => fds.tables,
            "hint" => "raise the hard RLIMIT_NOFILE (systemd LimitNOFILE=)"
        );
    }
    if let Some(lowered) = caps.data_channels_lowered {
        warn!(
            log, "--max-data-channels lowered to what the descriptor limit allows";
            "requested" => lowered.requested, "max_data_channels" => lowered.to,
            "nofile" => nofile, "descriptor_tables" => fds.tables,
            "hint" => "raise the hard RLIMIT_NOFILE (systemd LimitNOFILE=) or lower --max-sessions"
        );
    }
    let (max_sessions, mut max_data_channels) = (caps.max_sessions, caps.max_data_channels);
    if args.data_path == cli::DataPath::Pinhole {
        match limits::expect_max().map(|table| (table, limits::pinhole_cap(table))) {
            Ok((table, to)) if max_data_channels > to => {
                warn!(
                    log, "--max-data-channels lowered to what the kernel's expectation table allows";
                    "requested" => max_data_channels, "max_data_channels" => to,
                    "nf_conntrack_expect_max" => table,
                    "hint" => "a quarter stays for the router's other helpers; raise \
                               net.netfilter.nf_conntrack_expect_max for more pinholes"
                );
                max_data_channels = to;
            }
            Ok(_) => {}
            Err(e) => warn!(
                log, "cannot read nf_conntrack_expect_max; pinholes capped by --max-data-channels alone";
                "error" => %e
            ),
        }
    }
    let pipe_mib = max_data_channels as u64 * limits::PIPE_BYTES_PER_CHANNEL / (1024 * 1024);
    info!(
        log, "limits";
        "workers" => workers, "relay_threads" => args.relay_threads, "max_sessions" => max_sessions,
        "descriptor_tables" => fds.tables, "fds_spare_per_table" => fds.spare(),
        "max_data_channels" => max_data_channels, "pipe_mib_at_most" => pipe_mib,
        "max_sessions_per_client" => args.max_sessions_per_client,
        "session_rate_per_client" => args.session_rate_per_client,
        "session_burst_per_client" => args.session_burst_per_client,
        "ipv6_client_prefix" => args.ipv6_client_prefix
    );
    (max_sessions, max_data_channels)
}

/// `--check-config`: the verdict on stdout, 0. An invalid file never gets
/// here (`main` exits 2 with the error on stderr); a valid one whose
/// settings the data path cannot carry out exits 2 the same way, as the
/// daemon would refuse to start with it.
fn check_config(loaded: &config::Loaded) -> ExitCode {
    if let Err(what) = config::data_path_conflicts(&loaded.args, &loaded.policy) {
        let file =
            loaded.file.as_ref().map_or_else(|| "the options".to_string(), |p| p.display().to_string());
        eprintln!("ftpgate: invalid configuration: {file}: {what}");
        return ExitCode::from(2);
    }
    match &loaded.file {
        Some(path) => println!("{}: valid", path.display()),
        None => println!("no configuration file ({} absent); the options are valid", config::DEFAULT_PATH),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::config::core_config;

    #[test]
    fn data_idle_timeout_defaults_to_300_seconds_and_reaches_the_core() {
        let config = core_config(&Args::parse_from(["ftpgate"]));
        assert_eq!(config.data_idle_timeout, Duration::from_secs(300));
        let config = core_config(&Args::parse_from(["ftpgate", "--data-idle-timeout", "7"]));
        assert_eq!(config.data_idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn readme_policy_examples_load() {
        #[derive(serde::Deserialize)]
        struct File {
            policy: ftpgate_proto::PolicySet,
        }
        let readme = include_str!("../README.md");
        let policy = readme.split("\n## Policy\n").nth(1).unwrap().split("\n## ").next().unwrap();
        let examples: Vec<&str> =
            policy.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
        assert_eq!(examples.len(), 3);
        for text in examples {
            let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            file.policy.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(!file.policy.rules.is_empty());
        }
    }

    #[test]
    fn zero_timeouts_are_refused_on_the_command_line_too() {
        for flag in ["--data-timeout", "--connect-timeout", "--idle-timeout", "--data-idle-timeout"] {
            assert!(Args::try_parse_from(["ftpgate", flag, "0"]).is_err(), "{flag} 0");
        }
        assert!(Args::try_parse_from(["ftpgate", "--drain-timeout", "0"]).is_ok());
    }

    #[test]
    fn group_without_user_is_refused() {
        assert!(Args::try_parse_from(["ftpgate", "--group", "nogroup"]).is_err());
        let args = Args::parse_from(["ftpgate", "--user", "nobody", "--group", "nogroup"]);
        assert_eq!((args.user.as_deref(), args.group.as_deref()), (Some("nobody"), Some("nogroup")));
    }
}
