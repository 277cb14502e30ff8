//! Prometheus metrics: what the gateway counts, and the `--metrics`
//! endpoint that serves them.
//!
//! Read: the Prometheus text exposition format (version 0.0.4) and its
//! naming conventions (`_total` counters, base units). The README's
//! "Metrics" section lists every series.
//!
//! Counting: one process-wide [`Metrics`] ([`get`]). The event loop and
//! the audit table only increment atomics, so a hook is one line at the
//! site of the decision, and nothing is passed through the loop's
//! structures. Every label value is a fixed string from a small set (a
//! rule name, a mode, a step): never an address, a user or a path.
//!
//! Serving: a plain (non-transparent) TCP listener answered by one thread
//! with blocking std sockets, one scraper at a time, each under a deadline
//! and a request size bound. Why a thread and not the mio loop: the loop's
//! tokens, timers and drain logic are shared by many features; a thread
//! touches none of them, a slow or hostile scraper can cost the gateway
//! nothing but the atomics it reads, and the descriptors are counted from
//! /proc at scrape time off the loop. A slow scraper only delays the next
//! scraper, by at most [`SCRAPE_DEADLINE`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use ftpgate_proto::{DataStep, Side};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use slog::{debug, info, warn, Logger};

/// A scrape (request, then response) must be over by then; the
/// connection is closed when it is not.
pub(crate) const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// The longest request head taken: a scraper's GET is a few hundred
/// bytes.
const MAX_REQUEST_HEAD: usize = 4096;

/// After a failed accept() (out of descriptors), wait before the next,
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// /proc/self/fd is read at most this far: the kernel's default ceiling
/// on RLIMIT_NOFILE (fs.nr_open).
const MAX_FDS_COUNTED: usize = 1 << 20;

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    side: &'static str,
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataLabels {
    mode: &'static str,
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    channel: &'static str,
    step: &'static str,
}

/// The values of the `mode` and `family` labels.
const MODES: [&str; 2] = ["passive", "active"];
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];
/// The values of the `result` label: those of the transfer record.
pub(crate) const RESULTS: [&str; 3] = ["ok", "failed", "aborted"];

/// Which connection a failed step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    Control,
    Data,
}

impl Channel {
    fn label(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Data => "data",
        }
    }
}

/// A step of the gateway's own socket work that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Bind,
    Listen,
    Accept,
    Connect,
    /// The relay: a read or write error, a reset, or its pipes could not
    /// be made.
    Relay,
    /// A socket could not join the event loop.
    Register,
}

impl Step {
    const ALL: [Self; 6] =
        [Self::Bind, Self::Listen, Self::Accept, Self::Connect, Self::Relay, Self::Register];
    /// The steps a control connection has: its listeners are bound at
    /// start (a failure there stops the daemon), and it has no relay.
    const CONTROL: [Self; 4] = [Self::Bind, Self::Accept, Self::Connect, Self::Register];

    fn label(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Accept => "accept",
            Self::Connect => "connect",
            Self::Relay => "relay",
            Self::Register => "register",
        }
    }
}

impl From<DataStep> for Step {
    fn from(step: DataStep) -> Self {
        match step {
            DataStep::Bind => Self::Bind,
            DataStep::Listen => Self::Listen,
            DataStep::Accept => Self::Accept,
            DataStep::Connect => Self::Connect,
            DataStep::Relay => Self::Relay,
        }
    }
}

/// Everything the gateway counts. Counters and gauges are atomics: the
/// loop increments, the scrape thread reads.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    sessions_open: Gauge,
    sessions: Counter,
    sessions_refused: Family<RuleLabel, Counter>,
    sessions_ended: Family<ReasonLabel, Counter>,
    logins: Counter,
    login_failures: Counter,
    ftps_pass_through: Counter,
    refusals: Family<RefusalLabels, Counter>,
    rewrites: Counter,
    data_channels_open: Family<DataLabels, Gauge>,
    data_channels: Family<DataLabels, Counter>,
    /// Children of the `data_bytes` family, resolved once: they are
    /// touched at every relay wakeup.
    bytes_to_client: Counter,
    bytes_to_server: Counter,
    control_listeners: Gauge,
    data_listeners: Gauge,
    transfers: Family<ResultLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    /// `--data-path pinhole`: expectations waiting for their connection.
    pinholes_open: Gauge,
    pinholes: Family<ResultLabel, Counter>,
    /// IP bytes (headers included) of connections the kernel forwarded
    /// through pinholes, from conntrack accounting.
    pinhole_bytes_to_client: Counter,
    pinhole_bytes_to_server: Counter,
    conntrack_events: Counter,
    conntrack_events_lost: Counter,
    conntrack_polls: Counter,
}

/// The values of the pinholes' `result` label.
const PINHOLE_RESULTS: [&str; 3] = ["used", "unused", "failed"];

impl Metrics {
    /// A registry with every series whose label values are known up front
    /// already at zero, so a dashboard sees 0, not "no data".
    pub(crate) fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            sessions_open: Gauge::default(),
            sessions: Counter::default(),
            sessions_refused: Family::default(),
            sessions_ended: Family::default(),
            logins: Counter::default(),
            login_failures: Counter::default(),
            ftps_pass_through: Counter::default(),
            refusals: Family::default(),
            rewrites: Counter::default(),
            data_channels_open: Family::default(),
            data_channels: Family::default(),
            bytes_to_client: Counter::default(),
            bytes_to_server: Counter::default(),
            control_listeners: Gauge::default(),
            data_listeners: Gauge::default(),
            transfers: Family::default(),
            errors: Family::default(),
            pinholes_open: Gauge::default(),
            pinholes: Family::default(),
            pinhole_bytes_to_client: Counter::default(),
            pinhole_bytes_to_server: Counter::default(),
            conntrack_events: Counter::default(),
            conntrack_events_lost: Counter::default(),
            conntrack_polls: Counter::default(),
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let bytes = Family::<DirectionLabel, Counter>::default();
        self.bytes_to_client = bytes.get_or_create(&DirectionLabel { direction: "to_client" }).clone();
        self.bytes_to_server = bytes.get_or_create(&DirectionLabel { direction: "to_server" }).clone();
        let listeners = Family::<KindLabel, Gauge>::default();
        self.control_listeners = listeners.get_or_create(&KindLabel { kind: "control" }).clone();
        self.data_listeners = listeners.get_or_create(&KindLabel { kind: "data" }).clone();
        for mode in MODES {
            for family in FAMILIES {
                let labels = DataLabels { mode, family };
                at_zero(&self.data_channels_open, &labels);
                at_zero(&self.data_channels, &labels);
            }
        }
        for result in RESULTS {
            at_zero(&self.transfers, &ResultLabel { result });
        }
        for result in PINHOLE_RESULTS {
            at_zero(&self.pinholes, &ResultLabel { result });
        }
        let pinhole_bytes = Family::<DirectionLabel, Counter>::default();
        self.pinhole_bytes_to_client =
            pinhole_bytes.get_or_create(&DirectionLabel { direction: "to_client" }).clone();
        self.pinhole_bytes_to_server =
            pinhole_bytes.get_or_create(&DirectionLabel { direction: "to_server" }).clone();
        let control = Step::CONTROL.iter().map(|&s| (Channel::Control, s));
        let data = Step::ALL.iter().map(|&s| (Channel::Data, s));
        for (channel, step) in control.chain(data) {
            at_zero(&self.errors, &ErrorLabels { channel: channel.label(), step: step.label() });
        }

        let r = self.registry.sub_registry_with_prefix("ftpgate");
        r.register("sessions_open", "Control sessions open now", self.sessions_open.clone());
        r.register("sessions", "Control sessions started", self.sessions.clone());
        r.register(
            "sessions_refused",
            "Control connections turned away before a session started, by rule",
            self.sessions_refused.clone(),
        );
        r.register("sessions_ended", "Sessions ended, by reason", self.sessions_ended.clone());
        r.register("logins", "Logins the server accepted (230)", self.logins.clone());
        r.register(
            "login_failures",
            "Logins the server refused (530 to USER or PASS)",
            self.login_failures.clone(),
        );
        r.register(
            "ftps_pass_through",
            "Control connections relayed blind after the server accepted AUTH TLS (--ftps pass-through)",
            self.ftps_pass_through.clone(),
        );
        r.register(
            "refusals",
            "Commands, replies and data connections the gateway refused, by the side that broke the rule and the rule",
            self.refusals.clone(),
        );
        r.register(
            "data_address_rewrites",
            "227/229 replies rewritten to the gateway's data listener",
            self.rewrites.clone(),
        );
        r.register(
            "data_channels_open",
            "Data channels open now, by mode and address family",
            self.data_channels_open.clone(),
        );
        r.register(
            "data_channels",
            "Data channels opened, by mode and address family",
            self.data_channels.clone(),
        );
        r.register("data_bytes", "Bytes relayed on data channels, by direction", bytes);
        r.register("listeners_open", "Listening sockets open now, control (TPROXY) and data", listeners);
        r.register("transfers", "Transfers ended, by result", self.transfers.clone());
        r.register(
            "errors",
            "Failed steps of the gateway's socket work, by connection and step",
            self.errors.clone(),
        );
        r.register(
            "pinholes_open",
            "--data-path pinhole: conntrack expectations waiting for their one connection",
            self.pinholes_open.clone(),
        );
        r.register(
            "pinholes",
            "--data-path pinhole: pinholes done, by result (used by their connection, unused at their \
             channel's end, failed to open)",
            self.pinholes.clone(),
        );
        r.register(
            "pinhole_bytes",
            "--data-path pinhole: IP bytes (headers included) the kernel forwarded through pinholes, \
             by direction, from conntrack accounting",
            pinhole_bytes,
        );
        r.register(
            "conntrack_events",
            "--data-path pinhole: conntrack events read (at the loop's wakeups): those of \
             connections made from an expectation, at their start and when their entry goes",
            self.conntrack_events.clone(),
        );
        r.register(
            "conntrack_polls",
            "--data-path pinhole: running pinhole connections looked up in conntrack for their end \
             (at each wakeup of their session, and every 250 ms)",
            self.conntrack_polls.clone(),
        );
        r.register(
            "conntrack_events_lost",
            "--data-path pinhole: times the kernel dropped conntrack events (ENOBUFS); the channels \
             they ended are logged at their session's end",
            self.conntrack_events_lost.clone(),
        );
        self.registry.register_collector(Box::new(Descriptors));
        self
    }

    /// The registry in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }

    pub(crate) fn session_started(&self) {
        self.sessions.inc();
        self.sessions_open.inc();
    }

    /// The session's sockets are released: it is no longer open.
    pub(crate) fn session_closed(&self) {
        self.sessions_open.dec();
    }

    /// A control connection turned away before a session started.
    pub(crate) fn session_refused(&self, rule: &'static str) {
        self.sessions_refused.get_or_create(&RuleLabel { rule }).inc();
    }

    /// A session's end record was written.
    pub(crate) fn session_ended(&self, reason: &'static str) {
        self.sessions_ended.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn login(&self) {
        self.logins.inc();
    }

    pub(crate) fn login_failed(&self) {
        self.login_failures.inc();
    }

    pub(crate) fn ftps_pass_through(&self) {
        self.ftps_pass_through.inc();
    }

    /// A refusal by `rule`; `side` is `None` where the offender is not one
    /// of the session's two peers (a port thief).
    pub(crate) fn refused(&self, side: Option<Side>, rule: &'static str) {
        self.refused_n(side, rule, 1);
    }

    /// `n` refusals by `rule` at once: a run of refused lines has one
    /// record, and each of its lines counts.
    pub(crate) fn refused_n(&self, side: Option<Side>, rule: &'static str, n: u64) {
        let side = match side {
            Some(Side::Client) => "client",
            Some(Side::Server) => "server",
            None => "third-party",
        };
        self.refusals.get_or_create(&RefusalLabels { side, rule }).inc_by(n);
    }

    pub(crate) fn rewrite(&self) {
        self.rewrites.inc();
    }

    /// A transfer ended with `result`, one of [`RESULTS`].
    pub(crate) fn transfer(&self, result: &'static str) {
        self.transfers.get_or_create(&ResultLabel { result }).inc();
    }

    pub(crate) fn error(&self, channel: Channel, step: Step) {
        self.errors.get_or_create(&ErrorLabels { channel: channel.label(), step: step.label() }).inc();
    }

    /// Bytes a relay moved between two of its readings of its counts
    /// (to client, to server).
    /// `n` bytes written toward `side` by a relay thread.
    pub(crate) fn relayed_toward(&self, side: Side, n: u64) {
        match side {
            Side::Client => self.bytes_to_client.inc_by(n),
            Side::Server => self.bytes_to_server.inc_by(n),
        };
    }

    pub(crate) fn relayed(&self, before: (u64, u64), after: (u64, u64)) {
        self.bytes_to_client.inc_by(after.0.saturating_sub(before.0));
        self.bytes_to_server.inc_by(after.1.saturating_sub(before.1));
    }

    /// A pinhole (conntrack expectation) is open.
    pub(crate) fn pinhole_opened(&self) {
        self.pinholes_open.inc();
    }

    /// A pinhole is done: `used` by its connection, or closed unused (its
    /// channel ended first, or its deadline).
    pub(crate) fn pinhole_done(&self, used: bool) {
        self.pinholes_open.dec();
        self.pinholes.get_or_create(&ResultLabel { result: if used { "used" } else { "unused" } }).inc();
    }

    pub(crate) fn pinhole_failed(&self) {
        self.pinholes.get_or_create(&ResultLabel { result: "failed" }).inc();
    }

    /// A pinhole's connection ended with these IP byte counts.
    pub(crate) fn pinhole_bytes(&self, to_client: u64, to_server: u64) {
        self.pinhole_bytes_to_client.inc_by(to_client);
        self.pinhole_bytes_to_server.inc_by(to_server);
    }

    /// A running pinhole connection was looked up for its end.
    pub(crate) fn conntrack_polled(&self) {
        self.conntrack_polls.inc();
    }

    /// `n` conntrack events read; `lost`: the kernel dropped some.
    pub(crate) fn conntrack_events(&self, n: u64, lost: bool) {
        self.conntrack_events.inc_by(n);
        if lost {
            self.conntrack_events_lost.inc();
        }
    }

    /// A TPROXY port (`--listen`) is listening: one per address, however
    /// many event loops (`--workers`) have a socket on it.
    pub(crate) fn control_listener_opened(&self) {
        self.control_listeners.inc();
    }

    pub(crate) fn control_listener_closed(&self) {
        self.control_listeners.dec();
    }

    /// The foreign data listeners open now: the entries of the shared
    /// listener table, one socket each however many sessions share it.
    pub(crate) fn data_listeners_open(&self, n: usize) {
        self.data_listeners.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A data channel was admitted; it counts as open until the returned
    /// value is dropped with the channel. `peer` is the side that connects
    /// to its listener: the client in passive mode, the server in active
    /// mode. `local` is the listener's address, whose family it counts in.
    pub(crate) fn data_channel_opened(&self, peer: Side, local: SocketAddr) -> OpenDataChannel {
        let mode = match peer {
            Side::Client => "passive",
            Side::Server => "active",
        };
        // A v4-mapped address on a dual-stack socket is IPv4 traffic.
        let family = match local.ip().to_canonical() {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        };
        let labels = DataLabels { mode, family };
        self.data_channels.get_or_create(&labels).inc();
        let open = self.data_channels_open.get_or_create(&labels).clone();
        open.inc();
        OpenDataChannel(open)
    }
}

/// Creates the series `labels` of `family`, at zero.
fn at_zero<S, M>(family: &Family<S, M>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    M: Default,
{
    // The read guard is only held to create the series.
    drop(family.get_or_create(labels));
}

/// A data channel in the `data_channels_open` gauge: it leaves the gauge
/// when dropped, whichever way its channel ends.
#[derive(Debug)]
pub(crate) struct OpenDataChannel(Gauge);

impl Drop for OpenDataChannel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's descriptors, read at scrape time under the names the
/// official Prometheus clients' process collectors use, so existing
/// dashboards and alerts on fd exhaustion apply as they are.
#[derive(Debug)]
struct Descriptors;

impl Collector for Descriptors {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            let limit = ConstGauge::new(i64::try_from(soft).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "process_max_fds",
                "The descriptor limit (soft RLIMIT_NOFILE)",
                None,
                limit.metric_type(),
            )?;
            limit.encode(m)?;
        }
        if let Some(open) = open_fds() {
            let open = ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Descriptors open now in the fullest descriptor table (each event loop has its own)",
                None,
                open.metric_type(),
            )?;
            open.encode(m)?;
        }
        Ok(())
    }
}

/// Open descriptors in the fullest descriptor table: the main thread's
/// (less the one reading the directory) or an event loop's (`fdtable`:
/// each loop has its own, and RLIMIT_NOFILE holds per table, so the
/// fullest is the one to compare with `process_max_fds`). `None` without
/// /proc.
fn open_fds() -> Option<usize> {
    let count = |dir: String| std::fs::read_dir(dir).ok().map(|d| d.take(MAX_FDS_COUNTED).count());
    let mut fullest = count("/proc/self/fd".into())?.saturating_sub(1);
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ftpgate-w") {
            let fd = task.path().join("fd");
            fullest = fullest.max(count(fd.to_string_lossy().into_owned()).unwrap_or(0));
        }
    }
    Some(fullest)
}

// -- the endpoint ------------------------------------------------------------

/// The `--metrics` listener could not be opened.
#[derive(Debug)]
pub(crate) enum EndpointError {
    Bind { addr: SocketAddr, error: io::Error },
    Thread(io::Error),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr, error } => write!(
                f,
                "cannot bind the metrics listener {addr}: {error} (the address must be one of this host's, \
                 and the port free: not a --listen port)"
            ),
            Self::Thread(error) => write!(f, "cannot start the metrics thread: {error}"),
        }
    }
}

impl std::error::Error for EndpointError {}

/// The bound `--metrics` listener, not yet served.
#[derive(Debug)]
pub(crate) struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds a plain listener: scrapers connect to the gateway itself,
    /// nothing is intercepted.
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self, EndpointError> {
        let listener = TcpListener::bind(addr).map_err(|error| EndpointError::Bind { addr, error })?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Self { listener, addr })
    }

    /// Serves `metrics` from a thread of its own until the process exits.
    ///
    /// Call it after the privilege drop (which wants one thread, and
    /// whose capability changes are per thread) and after the event loop
    /// blocked SIGTERM/SIGINT for its signalfd: the thread inherits both,
    /// so it holds no more rights than the loop, and the signals still
    /// reach the signalfd instead of killing the process here.
    pub(crate) fn spawn(self, metrics: &'static Metrics, log: Logger) -> Result<(), EndpointError> {
        let addr = self.addr;
        let thread_log = log.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || self.serve_forever(metrics, &thread_log))
            .map_err(EndpointError::Thread)?;
        info!(log, "metrics listening"; "addr" => %addr);
        Ok(())
    }

    fn serve_forever(self, metrics: &'static Metrics, log: &Logger) {
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let peer = stream.peer_addr().map_or_else(|_| "-".to_string(), |a| a.to_string());
                    match serve_scraper(stream, || metrics.encode()) {
                        Ok(status) => debug!(log, "metrics scrape"; "peer" => peer, "status" => status),
                        Err(e) => debug!(log, "metrics scrape failed"; "peer" => peer, "error" => %e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(log, "metrics accept failed"; "error" => %e);
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// A stream whose every read and write must end by `deadline`.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "scrape deadline passed"));
        }
        Ok(left)
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Answers one scraper within [`SCRAPE_DEADLINE`], then closes.
fn serve_scraper(stream: TcpStream, render: impl FnOnce() -> String) -> io::Result<u16> {
    let mut stream = Deadlined { stream, deadline: Instant::now() + SCRAPE_DEADLINE };
    let status = serve(&mut stream, render);
    let _ = stream.stream.shutdown(Shutdown::Both);
    status
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request by its request line: `GET /metrics` (any query) is the
/// only thing served.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with(b"HTTP/1.") || !target.starts_with(b"/") {
        return Route::BadRequest;
    }
    if method != b"GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path == b"/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// Why no complete request head arrived.
#[derive(Debug)]
enum HeadError {
    /// Longer than [`MAX_REQUEST_HEAD`] without its end.
    TooLarge,
    /// The scraper closed first.
    Closed,
    Io(io::Error),
}

/// Reads up to the blank line that ends a request head, and no further
/// than `max` bytes.
fn read_head<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let want = chunk.len().min(max - head.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Where the head ends: after "\r\n\r\n", or "\n\n" from a lax client.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    crlf.into_iter().chain(lf).min()
}

/// Reads one request and writes its response; returns the status sent.
fn serve<S: Read + Write>(stream: &mut S, render: impl FnOnce() -> String) -> io::Result<u16> {
    let route = match read_head(stream, MAX_REQUEST_HEAD) {
        Ok(head) => route(&head),
        Err(HeadError::TooLarge) => {
            return respond(stream, 431, "Request Header Fields Too Large", "text/plain", b"too large\n")
        }
        Err(HeadError::Closed) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Err(HeadError::Io(e)) => return Err(e),
    };
    match route {
        Route::Metrics => {
            let body = render();
            respond(stream, 200, "OK", prometheus_text::CONTENT_TYPE, body.as_bytes())
        }
        Route::NotFound => respond(stream, 404, "Not Found", "text/plain", b"metrics are at /metrics\n"),
        Route::MethodNotAllowed => respond(stream, 405, "Method Not Allowed", "text/plain", b"only GET\n"),
        Route::BadRequest => respond(stream, 400, "Bad Request", "text/plain", b"bad request\n"),
    }
}

fn respond<W: Write>(
    w: &mut W,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<u16> {
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()?;
    Ok(status)
}

/// The value of the series `name{labels}` (labels as encoded, in order)
/// in an encoded registry, or None when the text has no such line.
#[cfg(test)]
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Families whose label values are not known up front (rules,
    /// reasons) appear with their first event.
    #[test]
    fn fresh_registry_has_every_family_and_known_series_at_zero() {
        let text = Metrics::new().encode();
        for (name, kind) in [
            ("ftpgate_sessions_open", "gauge"),
            ("ftpgate_sessions_total", "counter"),
            ("ftpgate_logins_total", "counter"),
            ("ftpgate_login_failures_total", "counter"),
            ("ftpgate_ftps_pass_through_total", "counter"),
            ("ftpgate_data_address_rewrites_total", "counter"),
            ("ftpgate_data_channels_open", "gauge"),
            ("ftpgate_data_channels_total", "counter"),
            ("ftpgate_data_bytes_total", "counter"),
            ("ftpgate_listeners_open", "gauge"),
            ("ftpgate_transfers_total", "counter"),
            ("ftpgate_errors_total", "counter"),
            ("process_max_fds", "gauge"),
            ("process_open_fds", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind} missing:\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "help of {name} missing:\n{text}");
        }
        for series in [
            "ftpgate_sessions_open",
            "ftpgate_sessions_total",
            "ftpgate_login_failures_total",
            "ftpgate_ftps_pass_through_total",
            r#"ftpgate_transfers_total{result="ok"}"#,
            r#"ftpgate_transfers_total{result="failed"}"#,
            r#"ftpgate_transfers_total{result="aborted"}"#,
            r#"ftpgate_data_bytes_total{direction="to_client"}"#,
            r#"ftpgate_data_bytes_total{direction="to_server"}"#,
            r#"ftpgate_listeners_open{kind="control"}"#,
            r#"ftpgate_listeners_open{kind="data"}"#,
            r#"ftpgate_data_channels_open{mode="active",family="ipv6"}"#,
            r#"ftpgate_data_channels_total{mode="passive",family="ipv4"}"#,
            r#"ftpgate_errors_total{channel="control",step="register"}"#,
            r#"ftpgate_errors_total{channel="data",step="relay"}"#,
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} not at 0:\n{text}");
        }
        for absent in [
            "ftpgate_sessions_refused_total",
            "ftpgate_refusals_total",
            r#"channel="control",step="listen""#,
            r#"channel="control",step="relay""#,
        ] {
            assert!(!text.contains(absent), "{absent} in a fresh registry:\n{text}");
        }
    }

    #[test]
    fn session_hooks_move_open_total_refused_and_ended() {
        let m = Metrics::new();
        m.session_started();
        m.session_started();
        m.session_closed();
        m.session_refused("per-client-rate");
        m.session_refused("per-client-rate");
        m.session_ended("client closed");
        let text = m.encode();
        for name in ["ftpgate_sessions_refused_total", "ftpgate_sessions_ended_total"] {
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name} missing:\n{text}");
        }
        assert_eq!(value(&text, "ftpgate_sessions_open"), Some(1.0), "{text}");
        assert_eq!(value(&text, "ftpgate_sessions_total"), Some(2.0), "{text}");
        assert_eq!(value(&text, r#"ftpgate_sessions_refused_total{rule="per-client-rate"}"#), Some(2.0));
        assert_eq!(value(&text, r#"ftpgate_sessions_ended_total{reason="client closed"}"#), Some(1.0));
    }

    #[test]
    fn data_channel_counts_open_until_dropped_by_mode_and_family() {
        let m = Metrics::new();
        let passive = m.data_channel_opened(Side::Client, "198.51.100.10:50000".parse().unwrap());
        let mapped = m.data_channel_opened(Side::Server, "[::ffff:192.0.2.10]:40000".parse().unwrap());
        let v6 = m.data_channel_opened(Side::Server, "[2001:db8:1::10]:40000".parse().unwrap());
        let text = m.encode();
        let open = |mode: &str, family: &str| {
            value(&text, &format!(r#"ftpgate_data_channels_open{{mode="{mode}",family="{family}"}}"#))
        };
        assert_eq!(open("passive", "ipv4"), Some(1.0), "{text}");
        assert_eq!(open("active", "ipv4"), Some(1.0), "v4-mapped counts as IPv4: {text}");
        assert_eq!(open("active", "ipv6"), Some(1.0), "{text}");
        drop((passive, mapped, v6));
        let text = m.encode();
        for mode in MODES {
            for family in FAMILIES {
                let open = format!(r#"ftpgate_data_channels_open{{mode="{mode}",family="{family}"}}"#);
                assert_eq!(value(&text, &open), Some(0.0), "{open}: {text}");
            }
        }
        assert_eq!(value(&text, r#"ftpgate_data_channels_total{mode="active",family="ipv4"}"#), Some(1.0));
    }

    #[test]
    fn relayed_adds_the_growth_of_each_direction() {
        let m = Metrics::new();
        m.relayed((0, 0), (1000, 0));
        m.relayed((1000, 0), (1500, 7));
        // A relay whose counts did not grow adds nothing.
        m.relayed((1500, 7), (1500, 7));
        let text = m.encode();
        assert_eq!(value(&text, r#"ftpgate_data_bytes_total{direction="to_client"}"#), Some(1500.0));
        assert_eq!(value(&text, r#"ftpgate_data_bytes_total{direction="to_server"}"#), Some(7.0));
    }

    #[test]
    fn listeners_errors_refusals_and_transfers_by_label() {
        let m = Metrics::new();
        m.control_listener_opened();
        m.control_listener_opened();
        m.control_listener_closed();
        m.data_listeners_open(3);
        m.data_listeners_open(0);
        m.error(Channel::Data, DataStep::Connect.into());
        m.error(Channel::Control, Step::Register);
        m.refused(Some(Side::Client), "bounce");
        m.refused(None, "port-theft");
        m.transfer("failed");
        m.rewrite();
        m.login();
        let text = m.encode();
        for (series, v) in [
            (r#"ftpgate_listeners_open{kind="control"}"#, 1.0),
            (r#"ftpgate_listeners_open{kind="data"}"#, 0.0),
            (r#"ftpgate_errors_total{channel="data",step="connect"}"#, 1.0),
            (r#"ftpgate_errors_total{channel="control",step="register"}"#, 1.0),
            (r#"ftpgate_refusals_total{side="client",rule="bounce"}"#, 1.0),
            (r#"ftpgate_refusals_total{side="third-party",rule="port-theft"}"#, 1.0),
            (r#"ftpgate_transfers_total{result="failed"}"#, 1.0),
            (r#"ftpgate_transfers_total{result="ok"}"#, 0.0),
            ("ftpgate_data_address_rewrites_total", 1.0),
            ("ftpgate_logins_total", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(v), "{series}: {text}");
        }
    }

    #[test]
    fn descriptors_are_counted_at_scrape_time() {
        let text = Metrics::new().encode();
        let open = value(&text, "process_open_fds").expect("process_open_fds");
        let max = value(&text, "process_max_fds").expect("process_max_fds");
        // stdin, stdout, stderr at least; and below the limit.
        assert!(open >= 3.0 && open <= max, "open {open} max {max}");
        let held: Vec<std::fs::File> =
            (0..5).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
        let more = value(&Metrics::new().encode(), "process_open_fds").unwrap();
        // Other tests open and close files meanwhile: only a lower bound.
        assert!(more >= 3.0 + held.len() as f64, "{more} with {} more held", held.len());
    }

    /// A scraper's connection: what it sends, in reads; then EOF, or a
    /// timeout when `stall` is set; what the server wrote.
    #[derive(Default)]
    struct Scraper {
        reads: VecDeque<Vec<u8>>,
        stall: bool,
        written: Vec<u8>,
    }

    impl Scraper {
        fn sending(chunks: &[&[u8]]) -> Self {
            Self { reads: chunks.iter().map(|c| c.to_vec()).collect(), ..Self::default() }
        }

        fn response(&self) -> String {
            String::from_utf8(self.written.clone()).unwrap()
        }
    }

    impl Read for Scraper {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(mut chunk) = self.reads.pop_front() else {
                return if self.stall { Err(io::ErrorKind::TimedOut.into()) } else { Ok(0) };
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.reads.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    impl Write for Scraper {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn body_of(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[test]
    fn get_metrics_in_pieces_is_answered_with_the_text_format_and_close() {
        let mut s =
            Scraper::sending(&[b"GET /metr", b"ics HTTP/1.1\r\nHost: gw\r\n", b"Accept: */*\r\n\r\n"]);
        let status = serve(&mut s, || "ftpgate_sessions_open 3\n".to_string()).unwrap();
        assert_eq!(status, 200);
        let r = s.response();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        assert!(r.contains("Content-Length: 24\r\n") && r.contains("Connection: close\r\n"), "{r}");
        assert_eq!(body_of(&r), "ftpgate_sessions_open 3\n");
    }

    #[test]
    fn query_string_is_ignored_and_lax_line_ends_taken() {
        let mut s = Scraper::sending(&[b"GET /metrics?x=1 HTTP/1.0\n\n"]);
        assert_eq!(serve(&mut s, || "x 1\n".into()).unwrap(), 200);
    }

    #[test]
    fn other_paths_get_404_without_rendering() {
        for path in ["/", "/metricsx", "/metrics/", "/favicon.ico"] {
            let mut s = Scraper::sending(&[format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()]);
            let status = serve(&mut s, || panic!("rendered for {path}")).unwrap();
            assert_eq!(status, 404, "{path}");
            assert!(s.response().starts_with("HTTP/1.1 404 Not Found\r\n"), "{}", s.response());
        }
    }

    #[test]
    fn other_methods_get_405_and_garbage_400() {
        let mut s = Scraper::sending(&[b"POST /metrics HTTP/1.1\r\n\r\n"]);
        assert_eq!(serve(&mut s, || panic!("rendered")).unwrap(), 405);
        assert!(s.response().contains("Allow: GET\r\n"));
        for junk in
            [&b"\r\n\r\n"[..], b"GET /metrics\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n", b"SSH-2.0-x\n\n"]
        {
            let mut s = Scraper::sending(&[junk]);
            assert_eq!(serve(&mut s, || panic!("rendered")).unwrap(), 400, "{junk:?}");
        }
    }

    #[test]
    fn endless_request_head_gets_431_after_reading_the_bound_only() {
        let line = vec![b'a'; 1000];
        let chunks: Vec<&[u8]> = std::iter::repeat_n(&line[..], 100).collect();
        let mut s = Scraper::sending(&chunks);
        assert_eq!(serve(&mut s, || panic!("rendered")).unwrap(), 431);
        let unread: usize = s.reads.iter().map(Vec::len).sum();
        assert_eq!(100 * 1000 - unread, MAX_REQUEST_HEAD, "read past the bound");
    }

    #[test]
    fn scraper_that_stalls_or_closes_gets_nothing() {
        let mut s = Scraper::sending(&[b"GET /metrics HTTP/1.1\r\n"]);
        s.stall = true;
        let e = serve(&mut s, || panic!("rendered")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(s.written.is_empty());
        let mut s = Scraper::sending(&[b"GET /metrics HTTP/1.1\r\n"]);
        assert_eq!(serve(&mut s, || panic!("rendered")).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(s.written.is_empty());
    }

    #[test]
    fn endpoint_bind_error_names_the_address_and_what_to_check() {
        let e = EndpointError::Bind {
            addr: "192.0.2.1:9121".parse().unwrap(),
            error: io::Error::from(io::ErrorKind::AddrInUse),
        };
        let text = e.to_string();
        assert!(text.starts_with("cannot bind the metrics listener 192.0.2.1:9121"), "{text}");
        assert!(text.contains("--listen"), "{text}");
    }
}
