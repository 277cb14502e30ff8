//! The configuration file (TOML) and its merge with the command line.
//!
//! Every setting is both a key of the file and a flag. A flag given on the
//! command line wins; a value in the file wins over the flag's default.
//! The merge yields an [`Args`] as if the file's values had been given as
//! flags, so the rest of the daemon reads one set of options, and
//! [`core_config`] turns it into the protocol core's [`Config`].
//!
//! Keys are the flags' names without `--`, in the section of their
//! concern (`--data-idle-timeout` is `[limits] data-idle-timeout`); the
//! exceptions are the sections' own words: `[listeners] listen`,
//! `[ftps] mode` (`--ftps`), `[logging] level`/`format`, `[metrics]
//! listen`, `[privilege] user`/`group`. `deny_unknown_fields` everywhere: a misspelt key is an
//! error, never a silently ignored setting.
//!
//! Errors say `FILE:LINE: KEY: what is wrong`. toml reports a byte span;
//! [`key_at`] finds the dotted key whose name or value holds it.
//!
//! SIGHUP reloads the file through [`Reloader`]: what a new session reads
//! (the core's `Config`, the per-client limits and failed-login limits,
//! the drain deadline) is
//! swapped; sessions already open keep the rest of the `Config` they
//! started with, but a changed `[policy]` reaches them too: it judges
//! their next command, and a running transfer is never cut. One record
//! per SIGHUP says what happened: `configuration reloaded` (with what
//! changed, whether the policy did, and the keys that need a restart) or
//! `configuration not reloaded` (with file, line and key). Listeners, the user, the metrics
//! endpoint, logging and the global caps are fixed at start: a change to
//! them is logged as needing a restart.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, ValueEnum};
use ftpgate_proto::{Config, FtpsPolicy, PassiveAddressPolicy};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use slog::{error, info, warn, Logger};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::cli::{
    self, Args, Command, DoctorArgs, LogFormat, LogLevel, PassiveMismatch, PlanArgs, RulesArgs,
};
use crate::limits::Rate;
use crate::logins;
use crate::rules::{Interface, Net, Profile};
use ftpgate_proto::rules::{Action as PolicyAction, PolicySet};

/// Read when `--config` is not given, if it exists.
pub(crate) const DEFAULT_PATH: &str = "/etc/ftpgate/ftpgate.toml";

// -- the file ------------------------------------------------------------

/// The whole file. Every section and every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct File {
    listeners: Listeners,
    limits: Limits,
    protocol: Protocol,
    ftps: Ftps,
    logging: Logging,
    metrics: Metrics,
    privilege: Privilege,
    router: Router,
    /// Access rules and command profiles (README "Policy"): the core's own
    /// type, so the file and the rules cannot drift apart.
    policy: Option<Spanned<PolicySet>>,
}

/// The control listeners (`--listen`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Listeners {
    listen: Option<Spanned<Vec<SocketAddr>>>,
    workers: Option<Spanned<u16>>,
    relay_threads: Option<Spanned<usize>>,
}

/// Timeouts, caps and rates.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Limits {
    data_timeout: Option<Spanned<u64>>,
    connect_timeout: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<u64>>,
    data_idle_timeout: Option<Spanned<u64>>,
    drain_timeout: Option<Spanned<u64>>,
    max_sessions: Option<Spanned<usize>>,
    max_sessions_per_client: Option<Spanned<usize>>,
    session_rate_per_client: Option<Spanned<PerSecond>>,
    session_burst_per_client: Option<Spanned<u64>>,
    ipv6_client_prefix: Option<Spanned<u8>>,
    max_data_channels: Option<Spanned<usize>>,
    max_refused_lines: Option<Spanned<usize>>,
    max_login_failures: Option<Spanned<u32>>,
    login_failure_window: Option<Spanned<u64>>,
    login_cooldown: Option<Spanned<u64>>,
}

/// The gateway's own protocol rules on data channels.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Protocol {
    passive_address_mismatch: Option<Spanned<PassiveMismatch>>,
    allow_privileged_data_ports: Option<Spanned<bool>>,
    enforce_data_direction: Option<Spanned<bool>>,
    data_path: Option<Spanned<cli::DataPath>>,
}

/// FTPS (AUTH TLS): `mode` is `--ftps`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Ftps {
    mode: Option<Spanned<cli::Ftps>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Logging {
    level: Option<Spanned<LogLevel>>,
    format: Option<Spanned<LogFormat>>,
}

/// The Prometheus endpoint (`--metrics`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Metrics {
    listen: Option<Spanned<SocketAddr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Privilege {
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

/// The kernel set-up that `ftpgate rules` prints and `ftpgate doctor`
/// checks; the daemon itself does not read it. Lists take the repeatable
/// flags' values: `client-net = ["192.0.2.0/24", "2001:db8:1::/64"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Router {
    port: Option<Spanned<u16>>,
    mark: Option<Spanned<Mark>>,
    forward_mark: Option<Spanned<Mark>>,
    table: Option<Spanned<u32>>,
    profile: Option<Spanned<Parsed<Profile>>>,
    client_interface: Option<Spanned<Vec<Parsed<Interface>>>>,
    client_net: Option<Spanned<Vec<Parsed<Net>>>>,
    server_net: Option<Spanned<Vec<Parsed<Net>>>>,
}

/// A value written as a string and parsed as the flag parses it.
#[derive(Clone, Debug)]
struct Parsed<T>(T);

impl<'de, T: FromFlag> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        T::from_flag(&text).map(Parsed).map_err(de::Error::custom)
    }
}

/// How a flag's value is parsed from its text.
trait FromFlag: Sized {
    fn from_flag(text: &str) -> Result<Self, String>;
}

impl FromFlag for Interface {
    fn from_flag(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

impl FromFlag for Net {
    fn from_flag(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

impl FromFlag for Profile {
    fn from_flag(text: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(text, false)
    }
}

/// A firewall mark: an integer, or like the flag `"0x10"`.
#[derive(Clone, Copy, Debug)]
struct Mark(u32);

impl<'de> Deserialize<'de> for Mark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MarkVisitor;
        impl Visitor<'_> for MarkVisitor {
            type Value = Mark;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mark, like 1 or \"0x10\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Mark, E> {
                u32::try_from(n).map(Mark).map_err(|_| E::custom("a mark is 0 to 4294967295"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Mark, E> {
                cli::parse_mark(text).map(Mark).map_err(E::custom)
            }
        }
        d.deserialize_any(MarkVisitor)
    }
}

/// A rate written as an integer (`20`) or, like the flag, `"20/s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PerSecond(u64);

impl<'de> Deserialize<'de> for PerSecond {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PerSecondVisitor;
        impl Visitor<'_> for PerSecondVisitor {
            type Value = PerSecond;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number per second, like 20 or \"20/s\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PerSecond, E> {
                u64::try_from(n).map(PerSecond).map_err(|_| E::custom("a rate cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PerSecond, E> {
                Ok(PerSecond(n))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<PerSecond, E> {
                cli::parse_per_second(text).map(PerSecond).map_err(E::custom)
            }
        }
        d.deserialize_any(PerSecondVisitor)
    }
}

/// A value the file holds that cannot be used, and where it is.
#[derive(Debug)]
struct Spot {
    span: Range<usize>,
    message: String,
}

impl Spot {
    fn new<T>(value: &Spanned<T>, message: impl Into<String>) -> Self {
        Self { span: value.span(), message: message.into() }
    }
}

/// A timeout of 0 would expire at once: the core has no "off" for these.
fn positive(value: &Option<Spanned<u64>>) -> Result<(), Spot> {
    match value {
        Some(v) if *v.get_ref() == 0 => Err(Spot::new(v, "must be at least 1 second")),
        _ => Ok(()),
    }
}

/// Writes the file's value into `slot` unless the flag was given.
fn set<T: Clone>(slot: &mut T, flag_given: bool, value: &Option<Spanned<T>>) {
    if let (false, Some(v)) = (flag_given, value) {
        *slot = v.get_ref().clone();
    }
}

/// Like [`set`], for a flag without a default.
fn set_some<T: Clone>(slot: &mut Option<T>, flag_given: bool, value: &Option<Spanned<T>>) {
    if let (false, Some(v)) = (flag_given, value) {
        *slot = Some(v.get_ref().clone());
    }
}

/// Like [`set`], for a list of parsed values.
fn set_list<T: Clone>(slot: &mut Vec<T>, flag_given: bool, value: &Option<Spanned<Vec<Parsed<T>>>>) {
    if let (false, Some(v)) = (flag_given, value) {
        *slot = v.get_ref().iter().map(|p| p.0.clone()).collect();
    }
}

impl File {
    fn parse(text: &str) -> Result<Self, Spot> {
        toml::from_str(text)
            .map_err(|e| Spot { span: e.span().unwrap_or(0..0), message: e.message().to_owned() })
    }

    /// Checks every value, then writes each one whose flag was not given
    /// on the command line into `args`.
    fn apply(&self, args: &mut Args, given: &Given) -> Result<(), Spot> {
        let Self { listeners, limits: l, protocol: p, ftps, logging, metrics, privilege, router, policy } =
            self;
        if let Some(policy) = policy {
            // What serde cannot see: profiles named but not defined, verbs
            // that are not verbs, built-in profiles redefined.
            policy.get_ref().validate().map_err(|e| Spot::new(policy, e.to_string()))?;
        }
        if let Some(listen) = &listeners.listen {
            if listen.get_ref().is_empty() {
                return Err(Spot::new(listen, "needs at least one address, like [\"0.0.0.0:2121\"]"));
            }
        }
        if let Some(workers) = listeners.workers.as_ref().filter(|w| *w.get_ref() == 0) {
            return Err(Spot::new(workers, "must be at least 1 (one event loop)"));
        }
        for timeout in [
            &l.data_timeout,
            &l.connect_timeout,
            &l.idle_timeout,
            &l.data_idle_timeout,
            &l.login_failure_window,
        ] {
            positive(timeout)?;
        }
        // `group` alone would be ignored by the privilege drop: refuse it,
        // as clap refuses --group without --user.
        if let (Some(group), None, None) = (&privilege.group, &privilege.user, &args.user) {
            return Err(Spot::new(group, "needs a user: set [privilege] user too"));
        }

        let g = |id: &str| given.has(id);
        set(&mut args.listen, g("listen"), &listeners.listen);
        set_some(&mut args.workers, g("workers"), &listeners.workers);
        set(&mut args.relay_threads, g("relay_threads"), &listeners.relay_threads);
        set(&mut args.data_timeout, g("data_timeout"), &l.data_timeout);
        set(&mut args.connect_timeout, g("connect_timeout"), &l.connect_timeout);
        set(&mut args.idle_timeout, g("idle_timeout"), &l.idle_timeout);
        set(&mut args.data_idle_timeout, g("data_idle_timeout"), &l.data_idle_timeout);
        set(&mut args.drain_timeout, g("drain_timeout"), &l.drain_timeout);
        set_some(&mut args.max_sessions, g("max_sessions"), &l.max_sessions);
        set(&mut args.max_sessions_per_client, g("max_sessions_per_client"), &l.max_sessions_per_client);
        if let (false, Some(rate)) = (g("session_rate_per_client"), &l.session_rate_per_client) {
            args.session_rate_per_client = rate.get_ref().0;
        }
        set(&mut args.session_burst_per_client, g("session_burst_per_client"), &l.session_burst_per_client);
        set(&mut args.ipv6_client_prefix, g("ipv6_client_prefix"), &l.ipv6_client_prefix);
        set_some(&mut args.max_data_channels, g("max_data_channels"), &l.max_data_channels);
        set(&mut args.max_refused_lines, g("max_refused_lines"), &l.max_refused_lines);
        set(&mut args.max_login_failures, g("max_login_failures"), &l.max_login_failures);
        set(&mut args.login_failure_window, g("login_failure_window"), &l.login_failure_window);
        set(&mut args.login_cooldown, g("login_cooldown"), &l.login_cooldown);
        set(&mut args.passive_address_mismatch, g("passive_address_mismatch"), &p.passive_address_mismatch);
        set(
            &mut args.allow_privileged_data_ports,
            g("allow_privileged_data_ports"),
            &p.allow_privileged_data_ports,
        );
        set(&mut args.enforce_data_direction, g("enforce_data_direction"), &p.enforce_data_direction);
        set(&mut args.data_path, g("data_path"), &p.data_path);
        set(&mut args.ftps, g("ftps"), &ftps.mode);
        set(&mut args.log_level, g("log_level"), &logging.level);
        set(&mut args.log_format, g("log_format"), &logging.format);
        set_some(&mut args.metrics, g("metrics"), &metrics.listen);
        set_some(&mut args.user, g("user"), &privilege.user);
        set_some(&mut args.group, g("group"), &privilege.group);
        if let Some(Command::Rules(RulesArgs { plan, .. }) | Command::Doctor(DoctorArgs { plan })) =
            &mut args.command
        {
            router.apply(plan, given);
        }
        Ok(())
    }
}

impl Router {
    fn apply(&self, plan: &mut PlanArgs, given: &Given) {
        let g = |id: &str| given.has(id);
        set(&mut plan.port, g("port"), &self.port);
        if let (false, Some(mark)) = (g("mark"), &self.mark) {
            plan.mark = mark.get_ref().0;
        }
        if let (false, Some(mark)) = (g("forward_mark"), &self.forward_mark) {
            plan.forward_mark = mark.get_ref().0;
        }
        set(&mut plan.table, g("table"), &self.table);
        if let (false, Some(profile)) = (g("profile"), &self.profile) {
            plan.profile = profile.get_ref().0;
        }
        set_list(&mut plan.client_interfaces, g("client_interfaces"), &self.client_interface);
        set_list(&mut plan.client_nets, g("client_nets"), &self.client_net);
        set_list(&mut plan.server_nets, g("server_nets"), &self.server_net);
    }
}

// -- errors --------------------------------------------------------------

/// Why a configuration file cannot be used.
#[derive(Debug)]
pub(crate) enum Error {
    Read {
        path: PathBuf,
        error: io::Error,
    },
    /// `key` is the dotted key (`limits.idle-timeout`), empty when the
    /// file is not TOML at all at that line.
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "{}: cannot read: {error}", path.display()),
            Self::Invalid { path, line, key, message } if key.is_empty() => {
                write!(f, "{}:{line}: {message}", path.display())
            }
            Self::Invalid { path, line, key, message } => {
                write!(f, "{}:{line}: {key}: {message}", path.display())
            }
        }
    }
}

impl Spot {
    fn in_file(self, path: &Path, text: &str) -> Error {
        let at = self.span.start.min(text.len());
        let line = text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        // Also after a syntax error: the keys parsed up to it still count.
        let (doc, _) = DeTable::parse_recoverable(text);
        let key = key_at(doc.get_ref(), &self.span).join(".");
        // toml's messages may run over lines; an error is one log value.
        let message = self.message.trim().split('\n').map(str::trim).collect::<Vec<_>>().join("; ");
        Error::Invalid { path: path.to_owned(), line, key, message }
    }
}

/// The path of keys down to the deepest key whose name or value holds the
/// start of `span`; empty when none does.
fn key_at(table: &DeTable<'_>, span: &Range<usize>) -> Vec<String> {
    let holds = |r: Range<usize>| r.start <= span.start && span.start < r.end.max(r.start + 1);
    for (key, value) in table {
        let below = match value.get_ref() {
            DeValue::Table(t) => key_at(t, span),
            // An array of tables: the element that holds it.
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| item.get_ref().as_table().map(|t| key_at(t, span)))
                .find(|path| !path.is_empty())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if !below.is_empty() {
            return std::iter::once(key.get_ref().to_string()).chain(below).collect();
        }
        if holds(key.span()) || holds(value.span()) {
            return vec![key.get_ref().to_string()];
        }
    }
    Vec::new()
}

// -- loading -------------------------------------------------------------

/// The flags given on the command line (clap ids), as opposed to those
/// holding their default: only the former win over the file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Given(HashSet<String>);

impl Given {
    pub(crate) fn of(matches: &ArgMatches) -> Self {
        let mut ids = HashSet::new();
        let mut level = Some(matches);
        // Global flags may be given after a subcommand.
        while let Some(m) = level {
            for id in m.ids() {
                if m.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                    ids.insert(id.as_str().to_owned());
                }
            }
            level = m.subcommand().map(|(_, sub)| sub);
        }
        Self(ids)
    }

    fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

/// Where the configuration comes from.
#[derive(Clone, Debug)]
enum Source {
    /// `--config PATH`: it must exist.
    Given(PathBuf),
    /// No `--config`: this file if it exists (looked for at every load, so
    /// that a file installed later is read at the next SIGHUP).
    IfPresent(PathBuf),
}

impl Source {
    fn path(&self) -> Option<&Path> {
        match self {
            Self::Given(path) => Some(path),
            Self::IfPresent(path) => path.exists().then_some(path.as_path()),
        }
    }
}

/// The options in force: the command line over the file over defaults.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub(crate) args: Args,
    /// The file read, if any.
    pub(crate) file: Option<PathBuf>,
    /// The access rules (`[policy]`; without it, everything is allowed).
    pub(crate) policy: PolicySet,
}

impl Loaded {
    pub(crate) fn file_name(&self) -> String {
        self.file.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    }

    /// One record per load: how many access rules are in force.
    pub(crate) fn log_policy(&self, log: &Logger) {
        let p = &self.policy;
        info!(
            log, "policy";
            "rules" => p.rules.len(), "profiles" => p.profiles.len(),
            "default" => if p.default == PolicyAction::Allow { "allow" } else { "deny" }
        );
    }
}

/// Reads the file and merges it with the command line; kept for reloads.
#[derive(Clone, Debug)]
pub(crate) struct Loader {
    source: Source,
    cmdline: Args,
    given: Given,
}

impl Loader {
    pub(crate) fn new(cmdline: Args, given: Given) -> Self {
        Self::with_default(cmdline, given, Path::new(DEFAULT_PATH))
    }

    fn with_default(cmdline: Args, given: Given, default: &Path) -> Self {
        let source = match &cmdline.config {
            Some(path) => Source::Given(path.clone()),
            None => Source::IfPresent(default.to_owned()),
        };
        Self { source, cmdline, given }
    }

    pub(crate) fn load(&self) -> Result<Loaded, Error> {
        let mut args = self.cmdline.clone();
        let Some(path) = self.source.path() else {
            return Ok(Loaded { args, file: None, policy: PolicySet::default() });
        };
        let text =
            std::fs::read_to_string(path).map_err(|error| Error::Read { path: path.to_owned(), error })?;
        let file = File::parse(&text).map_err(|spot| spot.in_file(path, &text))?;
        file.apply(&mut args, &self.given).map_err(|spot| spot.in_file(path, &text))?;
        let policy = file.policy.map(Spanned::into_inner).unwrap_or_default();
        Ok(Loaded { args, file: Some(path.to_owned()), policy })
    }
}

// -- what the settings become ---------------------------------------------

/// The protocol core's settings.
pub(crate) fn core_config(args: &Args) -> Config {
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
            cli::Ftps::Refuse => FtpsPolicy::Refuse,
            cli::Ftps::PassThrough => FtpsPolicy::PassThrough,
        },
        max_refused_lines: args.max_refused_lines,
        enforce_data_direction: args.enforce_data_direction,
        kernel_data_path: args.data_path == cli::DataPath::Pinhole,
        ..Config::default()
    }
}

/// What the kernel data path cannot do: refused at start, by
/// `--check-config`, and by a reload (which keeps the data path the
/// process started with).
pub(crate) fn data_path_conflicts(args: &Args, policy: &PolicySet) -> Result<(), &'static str> {
    if args.data_path != cli::DataPath::Pinhole {
        return Ok(());
    }
    if args.enforce_data_direction {
        return Err("--data-path pinhole cannot enforce the data direction: the kernel forwards \
                    the data; drop --enforce-data-direction or use --data-path relay");
    }
    if args.ftps == cli::Ftps::PassThrough {
        return Err("--data-path pinhole cannot open pinholes for FTPS: the gateway does not see \
                    the encrypted PASV/PORT; use --ftps refuse or --data-path relay");
    }
    if policy.rules.iter().any(|r| r.server_data != ftpgate_proto::rules::ServerData::Keep) {
        return Err("--data-path pinhole cannot convert data modes (server-data in a policy rule): \
                    both data connections would have to be ftpgate's; use --data-path relay");
    }
    Ok(())
}

/// What a reload changes for new sessions.
#[derive(Debug)]
pub(crate) struct Reloadable {
    pub(crate) core: Arc<Config>,
    pub(crate) session_rate: Rate,
    pub(crate) max_sessions_per_client: usize,
    pub(crate) login_failures: logins::Limits,
    pub(crate) drain_timeout: Duration,
    /// `[policy]` differs from the one in force: running sessions get it.
    pub(crate) policy_changed: bool,
}

impl Reloadable {
    pub(crate) fn of(loaded: &Loaded) -> Self {
        let args = &loaded.args;
        Self {
            core: Arc::new(Config { policy: Arc::new(loaded.policy.clone()), ..core_config(args) }),
            session_rate: Rate {
                per_second: args.session_rate_per_client,
                burst: args.session_burst_per_client,
            },
            max_sessions_per_client: args.max_sessions_per_client,
            login_failures: logins::Limits {
                limit: args.max_login_failures,
                window: Duration::from_secs(args.login_failure_window),
                cooldown: Duration::from_secs(args.login_cooldown),
            },
            drain_timeout: Duration::from_secs(args.drain_timeout),
            policy_changed: false,
        }
    }
}

/// Every setting by its file key, its value as text and whether a reload
/// applies it: what a reload compares.
fn settings(a: &Args) -> [(&'static str, String, bool); 28] {
    [
        ("listeners.listen", format!("{:?}", a.listen), false),
        ("listeners.workers", format!("{:?}", a.workers), false),
        ("listeners.relay-threads", a.relay_threads.to_string(), false),
        ("limits.data-timeout", a.data_timeout.to_string(), true),
        ("limits.connect-timeout", a.connect_timeout.to_string(), true),
        ("limits.idle-timeout", a.idle_timeout.to_string(), true),
        ("limits.data-idle-timeout", a.data_idle_timeout.to_string(), true),
        ("limits.drain-timeout", a.drain_timeout.to_string(), true),
        ("limits.max-sessions", format!("{:?}", a.max_sessions), false),
        ("limits.max-sessions-per-client", a.max_sessions_per_client.to_string(), true),
        ("limits.session-rate-per-client", a.session_rate_per_client.to_string(), true),
        ("limits.session-burst-per-client", a.session_burst_per_client.to_string(), true),
        // The tables of the per-client limits are keyed by it.
        ("limits.ipv6-client-prefix", a.ipv6_client_prefix.to_string(), false),
        ("limits.max-data-channels", format!("{:?}", a.max_data_channels), false),
        ("limits.max-refused-lines", a.max_refused_lines.to_string(), true),
        ("limits.max-login-failures", a.max_login_failures.to_string(), true),
        ("limits.login-failure-window", a.login_failure_window.to_string(), true),
        ("limits.login-cooldown", a.login_cooldown.to_string(), true),
        ("protocol.passive-address-mismatch", format!("{:?}", a.passive_address_mismatch), true),
        ("protocol.allow-privileged-data-ports", a.allow_privileged_data_ports.to_string(), true),
        ("protocol.enforce-data-direction", a.enforce_data_direction.to_string(), true),
        // Who carries the data is fixed for the process: the relay and the
        // pinholes keep state of their own.
        ("protocol.data-path", format!("{:?}", a.data_path), false),
        ("ftps.mode", format!("{:?}", a.ftps), true),
        ("logging.level", format!("{:?}", a.log_level), false),
        ("logging.format", format!("{:?}", a.log_format), false),
        ("metrics.listen", format!("{:?}", a.metrics), false),
        ("privilege.user", format!("{:?}", a.user), false),
        ("privilege.group", format!("{:?}", a.group), false),
    ]
}

/// The keys whose values differ, reloadable ones or the others.
fn changed(before: &Args, after: &Args, reloadable: bool) -> Vec<&'static str> {
    settings(before)
        .into_iter()
        .zip(settings(after))
        .filter(|((_, old, r), (_, new, _))| *r == reloadable && old != new)
        .map(|((key, _, _), _)| key)
        .collect()
}

/// SIGHUP's side: reloads, logs the outcome in one record, and hands the
/// server what new sessions must use.
#[derive(Debug)]
pub(crate) struct Reloader {
    loader: Loader,
    /// As at start: what the fixed settings still are.
    started: Args,
    /// As of the last load that worked.
    current: Args,
    policy: PolicySet,
}

impl Reloader {
    pub(crate) fn new(loader: Loader, started: &Loaded) -> Self {
        Self {
            loader,
            started: started.args.clone(),
            current: started.args.clone(),
            policy: started.policy.clone(),
        }
    }

    /// `None` when the file is refused: the running configuration stays.
    /// `sessions`: how many are open, which a changed policy reaches.
    pub(crate) fn reload(&mut self, log: &Logger, sessions: usize) -> Option<Reloadable> {
        let mut loaded = match self.loader.load() {
            Ok(loaded) => loaded,
            Err(e) => {
                error!(
                    log, "configuration not reloaded; the running one stays in force";
                    "error" => %e, "hint" => "fix the file, then send SIGHUP again (ftpgate --check-config)"
                );
                return None;
            }
        };
        let fixed = changed(&self.started, &loaded.args, false).join(" ");
        // The event loops carry the data the way they started: the core
        // must go on deciding for that data path (in relay mode it holds
        // the final reply until the relay is done, and listens on a port
        // of its own in active mode), whatever the file says now; the
        // record says that a restart is needed.
        loaded.args.data_path = self.started.data_path;
        if let Err(what) = data_path_conflicts(&loaded.args, &loaded.policy) {
            error!(
                log, "configuration not reloaded; the running one stays in force";
                "error" => what, "hint" => "fix the file, then send SIGHUP again (ftpgate --check-config)"
            );
            return None;
        }
        let policy_changed = loaded.policy != self.policy;
        let p = &loaded.policy;
        let changed_keys = changed(&self.current, &loaded.args, true).join(" ");
        // One record: its level says whether something needs a restart.
        macro_rules! record {
            ($level:ident) => {
                $level!(
                    log, "configuration reloaded";
                    "file" => loaded.file_name(),
                    "changed" => &changed_keys,
                    "policy" => if policy_changed { "changed" } else { "unchanged" },
                    "sessions_following" => if policy_changed { sessions } else { 0 },
                    "rules" => p.rules.len(), "profiles" => p.profiles.len(),
                    "default" => if p.default == PolicyAction::Allow { "allow" } else { "deny" },
                    "restart_needed" => if fixed.is_empty() { "-" } else { fixed.as_str() }
                )
            };
        }
        if fixed.is_empty() {
            record!(info);
        } else {
            record!(warn);
        }
        let new = Reloadable { policy_changed, ..Reloadable::of(&loaded) };
        self.policy = loaded.policy;
        self.current = loaded.args;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// A file of its own (tests run in parallel), removed at drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ftpgate-config-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{seq}-{name}"));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }

        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).unwrap();
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn loader(argv: &[&str]) -> Loader {
        let matches = Args::command().try_get_matches_from(argv).unwrap();
        let args = Args::from_arg_matches(&matches).unwrap();
        Loader::with_default(args, Given::of(&matches), Path::new("/nonexistent/ftpgate.toml"))
    }

    fn load(text: &str, flags: &[&str]) -> Result<Loaded, Error> {
        let file = TempFile::new("test.toml", text);
        let mut argv = vec!["ftpgate", "--config", file.path()];
        argv.extend_from_slice(flags);
        loader(&argv).load()
    }

    fn error(text: &str) -> String {
        let file = TempFile::new("bad.toml", text);
        let e = loader(&["ftpgate", "--config", file.path()]).load().unwrap_err();
        e.to_string().replacen(file.path(), "FILE", 1)
    }

    /// Every key, none at its default.
    const FULL: &str = r#"
[listeners]
listen = ["192.0.2.1:2121", "[2001:db8::1]:2121"]
workers = 3
relay-threads = 5

[limits]
data-timeout = 31
connect-timeout = 11
idle-timeout = 901
data-idle-timeout = 301
drain-timeout = 0
max-sessions = 500
max-sessions-per-client = 7
session-rate-per-client = "5/s"
session-burst-per-client = 50
ipv6-client-prefix = 128
max-data-channels = 99
max-refused-lines = 4
max-login-failures = 6
login-failure-window = 61
login-cooldown = 301

[protocol]
passive-address-mismatch = "refuse"
allow-privileged-data-ports = true
enforce-data-direction = true
data-path = "pinhole"

[ftps]
mode = "pass-through"

[logging]
level = "warn"
format = "json"

[metrics]
listen = "192.0.2.1:9121"

[privilege]
user = "ftpgate"
group = "nogroup"
"#;

    #[test]
    fn file_every_key_lands_in_its_option() {
        let a = load(FULL, &[]).unwrap().args;
        let listen: Vec<SocketAddr> =
            vec!["192.0.2.1:2121".parse().unwrap(), "[2001:db8::1]:2121".parse().unwrap()];
        assert_eq!(a.listen, listen);
        assert_eq!(a.workers, Some(3));
        assert_eq!(a.relay_threads, 5);
        assert_eq!(
            (a.data_timeout, a.connect_timeout, a.idle_timeout, a.data_idle_timeout),
            (31, 11, 901, 301)
        );
        assert_eq!(a.drain_timeout, 0);
        assert_eq!(
            (a.max_sessions, a.max_sessions_per_client, a.max_data_channels),
            (Some(500), 7, Some(99))
        );
        assert_eq!((a.session_rate_per_client, a.session_burst_per_client), (5, 50));
        assert_eq!(a.ipv6_client_prefix, 128);
        assert_eq!(
            (a.max_refused_lines, a.max_login_failures, a.login_failure_window, a.login_cooldown),
            (4, 6, 61, 301)
        );
        assert_eq!(a.passive_address_mismatch, PassiveMismatch::Refuse);
        assert!(a.allow_privileged_data_ports);
        assert!(a.enforce_data_direction);
        assert_eq!(a.data_path, cli::DataPath::Pinhole);
        assert_eq!(a.ftps, cli::Ftps::PassThrough);
        assert_eq!((a.log_level, a.log_format), (LogLevel::Warn, LogFormat::Json));
        assert_eq!(a.metrics, Some("192.0.2.1:9121".parse().unwrap()));
        assert_eq!((a.user.as_deref(), a.group.as_deref()), (Some("ftpgate"), Some("nogroup")));
        // Every setting differs from its default, so the test above
        // proves each key reaches its own option.
        let defaults = loader(&["ftpgate"]).load().unwrap().args;
        let differ = settings(&defaults).into_iter().zip(settings(&a)).filter(|(d, f)| d.1 != f.1).count();
        assert_eq!(differ, settings(&a).len());
    }

    #[test]
    fn file_given_flags_win_over_every_key() {
        let flags = [
            "--listen",
            "198.51.100.1:21",
            "--workers",
            "4",
            "--relay-threads",
            "7",
            "--data-timeout",
            "2",
            "--connect-timeout",
            "3",
            "--idle-timeout",
            "4",
            "--data-idle-timeout",
            "5",
            "--drain-timeout",
            "6",
            "--max-sessions",
            "8",
            "--max-sessions-per-client",
            "9",
            "--session-rate-per-client",
            "10",
            "--session-burst-per-client",
            "12",
            "--ipv6-client-prefix",
            "56",
            "--max-data-channels",
            "13",
            "--max-refused-lines",
            "14",
            "--max-login-failures",
            "15",
            "--login-failure-window",
            "16",
            "--login-cooldown",
            "17",
            "--ftps",
            "refuse",
            "--passive-address-mismatch",
            "rewrite",
            "--allow-privileged-data-ports",
            "--enforce-data-direction",
            "--data-path",
            "relay",
            "--log-level",
            "debug",
            "--log-format",
            "compact",
            "--metrics",
            "198.51.100.1:9",
            "--user",
            "nobody",
            "--group",
            "daemon",
        ];
        let a = load(FULL, &flags).unwrap().args;
        let flags_only = loader(&[&["ftpgate"], &flags[..]].concat()).load().unwrap().args;
        // (--allow-privileged-data-ports and --enforce-data-direction are
        // switches: they can only turn the setting on; a file's `true` is
        // turned off by removing it.)
        for ((key, file, _), (_, flag, _)) in settings(&a).into_iter().zip(settings(&flags_only)) {
            assert_eq!(file, flag, "{key}: the flag must win");
        }
    }

    /// `key = value` or a lone `[section]`.
    fn is_setting(line: &str) -> bool {
        let key = line.split(" = ").next().unwrap_or("");
        (line.contains(" = ") && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
            || (line.starts_with('[') && line.ends_with(']'))
    }

    #[test]
    fn example_file_is_valid_and_holds_the_defaults() {
        let example = include_str!("../packaging/ftpgate.toml");
        let a = load(example, &[]).unwrap().args;
        let defaults = loader(&["ftpgate"]).load().unwrap().args;
        assert!(changed(&defaults, &a, true).is_empty(), "{:?}", changed(&defaults, &a, true));
        assert!(changed(&defaults, &a, false).is_empty(), "{:?}", changed(&defaults, &a, false));
        // Uncommented, the commented-out keys are valid too.
        let uncommented: String = example
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|k| is_setting(k)).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let loaded = load(&uncommented, &[]).unwrap();
        assert_eq!(loaded.args.max_data_channels, Some(4096));
        assert_eq!(loaded.args.metrics, Some("127.0.0.1:9121".parse().unwrap()));
        assert_eq!(loaded.args.max_sessions, Some(10000));
        assert_eq!(loaded.args.user.as_deref(), Some("ftpgate"));
        assert_eq!(loaded.policy, PolicySet::default());
    }

    #[test]
    fn file_wins_over_a_flag_default() {
        let a = load("[limits]\ndata-idle-timeout = 7\n", &["--idle-timeout", "60"]).unwrap().args;
        assert_eq!((a.data_idle_timeout, a.idle_timeout), (7, 60));
        // Untouched by either: the flag's default.
        assert_eq!(a.data_timeout, 30);
    }

    #[test]
    fn rules_and_doctor_read_the_file_and_a_global_flag_after_them_wins() {
        let file = TempFile::new("rules.toml", "[listeners]\nlisten = [\"[::]:2121\"]\n");
        let v6: Vec<SocketAddr> = vec!["[::]:2121".parse().unwrap()];
        let v4: Vec<SocketAddr> = vec!["0.0.0.0:21".parse().unwrap()];
        assert_eq!(loader(&["ftpgate", "--config", file.path(), "rules"]).load().unwrap().args.listen, v6);
        assert_eq!(loader(&["ftpgate", "doctor", "--config", file.path()]).load().unwrap().args.listen, v6);
        let after = loader(&["ftpgate", "--config", file.path(), "rules", "--listen", "0.0.0.0:21"]);
        assert_eq!(after.load().unwrap().args.listen, v4);
        let before = loader(&["ftpgate", "--listen", "0.0.0.0:21", "rules", "--config", file.path()]);
        assert_eq!(before.load().unwrap().args.listen, v4);
    }

    #[test]
    fn router_section_reaches_rules_and_doctor_and_flags_win() {
        let text = "[router]\nport = 2100\nmark = \"0x10\"\nforward-mark = \"0x20\"\ntable = 7\nprofile = \"strict\"\n\
                    client-interface = [\"eth1\"]\nclient-net = [\"192.0.2.0/24\", \"2001:db8:1::/64\"]\n\
                    server-net = [\"198.51.100.0/24\"]\n";
        let file = TempFile::new("router.toml", text);
        let plan = |argv: &[&str]| match loader(argv).load().unwrap().args.command {
            Some(Command::Rules(RulesArgs { plan, .. }) | Command::Doctor(DoctorArgs { plan })) => plan,
            None => panic!("a subcommand"),
        };
        let p = plan(&["ftpgate", "--config", file.path(), "rules"]);
        assert_eq!((p.port, p.mark, p.forward_mark, p.table, p.profile), (2100, 16, 32, 7, Profile::Strict));
        assert_eq!(p.client_interfaces, vec!["eth1".parse::<Interface>().unwrap()]);
        assert_eq!(p.client_nets.len(), 2);
        assert_eq!(p.server_nets, vec!["198.51.100.0/24".parse::<Net>().unwrap()]);
        let p = plan(&["ftpgate", "--config", file.path(), "doctor", "--port", "21", "--profile", "port21"]);
        assert_eq!((p.port, p.mark, p.profile), (21, 16, Profile::Port21));
        assert_eq!(
            error("[router]\nclient-net = [\"192.0.2.0/33\"]\n"),
            "FILE:2: router.client-net: '192.0.2.0/33': the prefix length must be 0 to 32"
        );
        assert!(error("[router]\nprofile = \"loose\"\n").starts_with("FILE:2: router.profile: "));
    }

    #[test]
    fn no_config_flag_and_no_default_file_means_flags_only() {
        let loaded = loader(&["ftpgate", "--idle-timeout", "60"]).load().unwrap();
        assert_eq!((loaded.file, loaded.args.idle_timeout), (None, 60));
    }

    #[test]
    fn default_file_is_read_when_present() {
        let file = TempFile::new("default.toml", "[limits]\nidle-timeout = 61\n");
        let matches = Args::command().get_matches_from(["ftpgate"]);
        let args = Args::from_arg_matches(&matches).unwrap();
        let loaded = Loader::with_default(args, Given::of(&matches), &file.0).load().unwrap();
        assert_eq!((loaded.file.as_deref(), loaded.args.idle_timeout), (Some(file.0.as_path()), 61));
    }

    #[test]
    fn empty_file_is_valid_and_changes_nothing() {
        let a = load("", &[]).unwrap().args;
        let defaults = loader(&["ftpgate"]).load().unwrap().args;
        assert!(changed(&defaults, &a, true).is_empty() && changed(&defaults, &a, false).is_empty());
    }

    #[test]
    fn session_rate_takes_an_integer_or_n_per_second() {
        assert_eq!(
            load("[limits]\nsession-rate-per-client = 3\n", &[]).unwrap().args.session_rate_per_client,
            3
        );
        assert_eq!(
            load("[limits]\nsession-rate-per-client = \"4/s\"\n", &[]).unwrap().args.session_rate_per_client,
            4
        );
        assert_eq!(
            error("[limits]\nsession-rate-per-client = -1\n"),
            "FILE:2: limits.session-rate-per-client: a rate cannot be negative"
        );
    }

    #[test]
    fn error_unknown_key_names_file_line_and_key() {
        let e = error("# ftpgate\n[limits]\nidle-timeout = 60\ndata-idel-timeout = 7\n");
        assert!(e.starts_with("FILE:4: limits.data-idel-timeout: unknown field `data-idel-timeout`"), "{e}");
    }

    #[test]
    fn error_unknown_section_names_it() {
        let e = error("[limits]\n\n[limit]\nidle-timeout = 60\n");
        assert!(e.starts_with("FILE:3: limit: unknown field `limit`"), "{e}");
    }

    #[test]
    fn error_wrong_type_names_the_key() {
        assert_eq!(
            error("[limits]\nidle-timeout = \"60\"\n"),
            "FILE:2: limits.idle-timeout: invalid type: string \"60\", expected u64"
        );
    }

    #[test]
    fn error_bad_address_names_the_key() {
        let e = error("[listeners]\nlisten = [\n  \"0.0.0.0:2121\",\n  \"0.0.0.0\",\n]\n");
        assert_eq!(e, "FILE:4: listeners.listen: invalid socket address syntax");
        let e = error("[metrics]\nlisten = \"localhost:9121\"\n");
        assert_eq!(e, "FILE:2: metrics.listen: invalid socket address syntax");
    }

    #[test]
    fn error_bad_enum_value_names_the_key() {
        let e = error("[protocol]\npassive-address-mismatch = \"drop\"\n");
        assert!(e.starts_with("FILE:2: protocol.passive-address-mismatch: unknown variant `drop`"), "{e}");
    }

    #[test]
    fn error_zero_timeout_is_refused_with_its_line() {
        assert_eq!(
            error("[limits]\ndrain-timeout = 0\ndata-idle-timeout = 0\n"),
            "FILE:3: limits.data-idle-timeout: must be at least 1 second"
        );
    }

    #[test]
    fn error_empty_listen_and_group_without_user() {
        assert_eq!(
            error("[listeners]\nlisten = []\n"),
            "FILE:2: listeners.listen: needs at least one address, like [\"0.0.0.0:2121\"]"
        );
        assert_eq!(
            error("[privilege]\ngroup = \"nogroup\"\n"),
            "FILE:2: privilege.group: needs a user: set [privilege] user too"
        );
        // The user may come from the command line.
        let a = load("[privilege]\ngroup = \"nogroup\"\n", &["--user", "nobody"]).unwrap().args;
        assert_eq!((a.user.as_deref(), a.group.as_deref()), (Some("nobody"), Some("nogroup")));
    }

    #[test]
    fn error_not_toml_names_the_line() {
        let e = error("[limits]\nidle-timeout = 60\nthis is not toml\n");
        assert!(e.starts_with("FILE:3: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = error("[limits]\nidle-timeout = 60\ndata-timeout = \n");
        assert!(e.starts_with("FILE:3: limits.data-timeout: "), "{e}");
    }

    #[test]
    fn error_missing_given_file_is_a_read_error() {
        let e = loader(&["ftpgate", "--config", "/nonexistent/ftpgate.toml"]).load().unwrap_err();
        assert!(matches!(e, Error::Read { .. }), "{e}");
        assert!(e.to_string().starts_with("/nonexistent/ftpgate.toml: cannot read: "), "{e}");
    }

    #[test]
    fn policy_section_becomes_the_core_policy() {
        let text = "[policy]\ndefault = \"deny\"\n[[policy.rule]]\nclient = [\"192.0.2.0/24\"]\naction = \"allow\"\nprofile = \"read-only\"\n";
        let loaded = load(text, &[]).unwrap();
        assert_eq!(loaded.policy.default, PolicyAction::Deny);
        assert_eq!(loaded.policy.rules.len(), 1);
        assert_eq!(*Reloadable::of(&loaded).core.policy, loaded.policy);
        assert_eq!(load("[limits]\n", &[]).unwrap().policy, PolicySet::default());
        assert_eq!(
            error("policy = 3\n"),
            "FILE:1: policy: invalid type: integer `3`, expected struct PolicySet"
        );
    }

    #[test]
    fn policy_errors_name_the_line() {
        let e = error("[policy]\n[[policy.rule]]\naction = \"allow\"\n\n[[policy.rule]]\nclient = [\"192.0.2.0/40\"]\naction = \"deny\"\n");
        assert!(e.starts_with("FILE:6:") && e.contains("'192.0.2.0/40' is not a network"), "{e}");
        let e = error("[[policy.rule]]\naction = \"allow\"\nprofile = \"ro\"\n");
        assert!(e.contains("rule 1: profile 'ro' is not defined"), "{e}");
    }

    #[test]
    fn key_at_finds_keys_in_arrays_of_tables() {
        let text = "[[policy.rule]]\naction = \"allow\"\n[[policy.rule]]\naction = 3\n";
        let doc = DeTable::parse(text).unwrap();
        let at = text.rfind('3').unwrap();
        assert_eq!(key_at(doc.get_ref(), &(at..at + 1)), ["policy", "rule", "action"]);
    }

    #[test]
    fn core_config_carries_timeouts_and_rules() {
        let config = core_config(&load(FULL, &[]).unwrap().args);
        assert_eq!(config.data_accept_timeout, Duration::from_secs(31));
        assert_eq!(config.data_connect_timeout, Duration::from_secs(11));
        assert_eq!(config.greeting_timeout, Duration::from_secs(33));
        assert_eq!(config.idle_timeout, Duration::from_secs(901));
        assert_eq!(config.data_idle_timeout, Duration::from_secs(301));
        assert!(config.allow_privileged_data_ports);
        assert!(config.enforce_data_direction);
        assert_eq!(config.passive_address_mismatch, PassiveAddressPolicy::Refuse);
        assert_eq!((config.ftps, config.max_refused_lines), (FtpsPolicy::PassThrough, 4));
        let defaults = core_config(&loader(&["ftpgate"]).load().unwrap().args);
        assert_eq!((defaults.ftps, defaults.max_refused_lines), (FtpsPolicy::Refuse, 10));
        assert!(!defaults.enforce_data_direction, "ATTACKS.md 34 is off by default");
    }

    #[test]
    fn reloadable_carries_the_failed_login_limits() {
        let r = Reloadable::of(&load(FULL, &[]).unwrap());
        let expected =
            logins::Limits { limit: 6, window: Duration::from_secs(61), cooldown: Duration::from_secs(301) };
        assert_eq!(r.login_failures, expected);
    }

    #[test]
    fn error_ftps_mode_and_login_window_are_checked() {
        let e = error("[ftps]\nmode = \"blind\"\n");
        assert!(e.starts_with("FILE:2: ftps.mode: unknown variant `blind`"), "{e}");
        let e = error("[ftps]\nftps = \"refuse\"\n");
        assert!(e.starts_with("FILE:2: ftps.ftps: unknown field `ftps`"), "{e}");
        assert_eq!(
            error("[limits]\nlogin-failure-window = 0\n"),
            "FILE:2: limits.login-failure-window: must be at least 1 second"
        );
    }

    fn discard() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// The data path is the process's: a reload that names the other one
    /// leaves the core deciding for the one the loops run (in relay mode
    /// it holds the final reply), and a file the running data path cannot
    /// carry out is refused as a whole.
    #[test]
    fn reload_keeps_the_data_path_and_refuses_what_it_cannot_do() {
        let file = TempFile::new("datapath.toml", "[limits]\nidle-timeout = 60\n");
        let first = loader(&["ftpgate", "--config", file.path()]);
        let started = first.load().unwrap();
        let mut reloader = Reloader::new(first, &started);
        file.write("[limits]\nidle-timeout = 61\n[protocol]\ndata-path = \"pinhole\"\n");
        let new = reloader.reload(&discard(), 0).expect("the rest of the file reloads");
        assert!(!new.core.kernel_data_path, "the core still decides for the relay");
        assert_eq!(new.core.idle_timeout, Duration::from_secs(61));

        let file = TempFile::new("pinhole.toml", "[protocol]\ndata-path = \"pinhole\"\n");
        let second = loader(&["ftpgate", "--config", file.path()]);
        let started = second.load().unwrap();
        let mut reloader = Reloader::new(second, &started);
        file.write("[protocol]\ndata-path = \"pinhole\"\nenforce-data-direction = true\n");
        assert!(reloader.reload(&discard(), 0).is_none(), "pinholes cannot enforce the direction");
        file.write("[protocol]\ndata-path = \"relay\"\nenforce-data-direction = true\n");
        assert!(reloader.reload(&discard(), 0).is_none(), "still pinholes: still refused");
        file.write("[protocol]\ndata-path = \"pinhole\"\n[limits]\nidle-timeout = 7\n");
        let new = reloader.reload(&discard(), 0).expect("valid again");
        assert!(new.core.kernel_data_path);
        assert_eq!(new.core.idle_timeout, Duration::from_secs(7));
    }

    #[test]
    fn reload_valid_file_swaps_reloadables_flags_still_win() {
        let file = TempFile::new("reload.toml", "[limits]\nidle-timeout = 60\ndata-timeout = 20\n");
        let loader = loader(&["ftpgate", "--config", file.path(), "--data-timeout", "5"]);
        let started = loader.load().unwrap();
        assert_eq!((started.args.idle_timeout, started.args.data_timeout), (60, 5));
        let mut reloader = Reloader::new(loader, &started);
        file.write("[limits]\nidle-timeout = 2\ndata-timeout = 21\nsession-rate-per-client = 1\n");
        let new = reloader.reload(&discard(), 0).expect("a valid file reloads");
        assert_eq!(new.core.idle_timeout, Duration::from_secs(2));
        assert_eq!(new.core.data_accept_timeout, Duration::from_secs(5), "--data-timeout still wins");
        assert_eq!(new.session_rate, Rate { per_second: 1, burst: 100 });
        assert_eq!(
            changed(&started.args, &reloader.current, true),
            ["limits.idle-timeout", "limits.session-rate-per-client"]
        );
    }

    #[test]
    fn reload_applies_ftps_refused_lines_and_login_limits() {
        let file = TempFile::new("reload-ftps.toml", "");
        let loader = loader(&["ftpgate", "--config", file.path()]);
        let started = loader.load().unwrap();
        let mut reloader = Reloader::new(loader, &started);
        file.write(
            "[limits]\nmax-refused-lines = 3\nmax-login-failures = 2\nlogin-cooldown = 9\n\
             [ftps]\nmode = \"pass-through\"\n",
        );
        let new = reloader.reload(&discard(), 0).expect("a valid file reloads");
        assert_eq!((new.core.ftps, new.core.max_refused_lines), (FtpsPolicy::PassThrough, 3));
        assert_eq!((new.login_failures.limit, new.login_failures.cooldown), (2, Duration::from_secs(9)));
        assert_eq!(
            changed(&started.args, &reloader.current, true),
            ["limits.max-refused-lines", "limits.max-login-failures", "limits.login-cooldown", "ftps.mode"]
        );
    }

    #[test]
    fn reload_invalid_file_is_refused_and_keeps_the_last_good() {
        let file = TempFile::new("refuse.toml", "[limits]\nidle-timeout = 60\n");
        let loader = loader(&["ftpgate", "--config", file.path()]);
        let started = loader.load().unwrap();
        let mut reloader = Reloader::new(loader, &started);
        file.write("[limits]\nidle-timeout = 0\n");
        assert!(reloader.reload(&discard(), 0).is_none());
        assert_eq!(reloader.current.idle_timeout, 60);
    }

    #[test]
    fn reload_says_whether_the_policy_changed_a_broken_policy_keeps_the_last_good() {
        let allow = "[[policy.rule]]\naction = \"allow\"\n";
        let file = TempFile::new("reload-policy.toml", allow);
        let loader = loader(&["ftpgate", "--config", file.path()]);
        let started = loader.load().unwrap();
        let mut reloader = Reloader::new(loader, &started);
        assert!(!reloader.reload(&discard(), 0).expect("unchanged file").policy_changed);
        file.write("[[policy.rule]]\naction = \"allow\"\nprofile = \"read-only\"\n");
        let new = reloader.reload(&discard(), 0).expect("a valid policy reloads");
        assert!(new.policy_changed);
        assert_eq!(new.core.policy.rules[0].profile.as_deref(), Some("read-only"));
        file.write("[[policy.rule]]\naction = \"allow\"\nprofile = \"nope\"\n");
        assert!(reloader.reload(&discard(), 0).is_none(), "an unknown profile is refused");
        assert_eq!(reloader.policy.rules[0].profile.as_deref(), Some("read-only"));
    }

    #[test]
    fn reload_fixed_settings_are_told_apart() {
        let file = TempFile::new("fixed.toml", "[listeners]\nlisten = [\"0.0.0.0:2121\"]\n");
        let loader = loader(&["ftpgate", "--config", file.path()]);
        let started = loader.load().unwrap();
        file.write("[listeners]\nlisten = [\"[::]:2121\"]\n[privilege]\nuser = \"nobody\"\n[limits]\nidle-timeout = 5\n");
        let after = loader.load().unwrap();
        assert_eq!(changed(&started.args, &after.args, false), ["listeners.listen", "privilege.user"]);
        assert_eq!(changed(&started.args, &after.args, true), ["limits.idle-timeout"]);
    }
}
