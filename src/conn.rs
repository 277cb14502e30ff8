//! One intercepted control connection: its sockets and its `ftp::Session`.
//!
//! The session decides everything; this file only executes its actions and
//! reports facts back, following the core's driving contract: feed one fact,
//! drain every action, write what is pending, re-arm the timer.
//!
//! Facts reach the core one way: every fact, whether a socket produced it
//! or an action did, goes into `facts`, and `feed_facts` alone hands them
//! to the core, one at a time, each followed by draining every action.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::rules::PolicySet;
use ftpgate_proto::{Action, AuditEvent, ControlEnds, DataId, DataStep, Input, Session, Side};
use mio::net::TcpStream;
use mio::{event::Source, Interest, Registry, Token};
use slab::Slab;
use slog::{debug, error, info, warn, Logger};

use crate::audit;
use crate::limits::{Admit, DataChannels};
use crate::listeners::{Arrival, Channel, ExpectError, Expectation, Handover, SharedListeners};
use crate::metrics::{self, Step};
use crate::relay::{self, Budget, Direction, PipePool, Readiness, Relay, RelayStatus};
use crate::relay_threads::{self, NotPromoted, ThreadedRelay};
use crate::tproxy;

/// How long a closed session may take to flush its last reply to a peer
/// that does not read.
const LINGER: Duration = Duration::from_secs(5);

/// Bytes a relay's receivers must acknowledge between two idle deadlines
/// to count as activity there (`report_acknowledged`).
const MIN_ACKNOWLEDGED: u64 = 4096;

/// Rounds of control work per wakeup, so one busy session cannot starve
/// the others. Splice work has its own, smaller bound: `relay::Budget`.
const MAX_ROUNDS: usize = 32;

/// What the client hears when the daemon gives up on its session for want
/// of resources (a socket that could not join the event loop).
const REPLY_OUT_OF_RESOURCES: &[u8] = b"421 Service not available: ftpgate is out of resources.\r\n";

/// What a registered socket is to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Control(Side),
    /// A data listener: registered by the listener table, named here only
    /// when it could not be.
    DataListener(DataId),
    /// The leg accepted on the data listener.
    DataAccepted(DataId),
    /// The leg the gateway connected.
    DataOutbound(DataId),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Control(Side::Client) => f.write_str("client control connection"),
            Self::Control(Side::Server) => f.write_str("server control connection"),
            Self::DataListener(_) => f.write_str("data listener"),
            Self::DataAccepted(_) => f.write_str("accepted data connection"),
            Self::DataOutbound(_) => f.write_str("outbound data connection"),
        }
    }
}

/// A socket could not join the event loop (epoll_ctl failed). Not a
/// network or routing problem: the host is short of memory or of epoll
/// watches.
#[derive(Debug)]
pub(crate) struct RegisterError {
    pub(crate) role: Role,
    pub(crate) error: io::Error,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot register the {} with the event loop: {} (check free memory and /proc/sys/fs/epoll/max_user_watches)",
            self.role, self.error
        )
    }
}

impl std::error::Error for RegisterError {}

/// Where a new session lives: its key in the loop's slab, and its number
/// in the process (the `session` log key), which a reused key does not
/// repeat.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionRef {
    pub(crate) key: usize,
    pub(crate) serial: u64,
}

/// The owner of a token.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) conn: usize,
    pub(crate) role: Role,
    /// False once the socket is closed: events still queued in the current
    /// batch for it are stale and dropped.
    pub(crate) live: bool,
}

/// What `Conn` needs from the event loop.
pub(crate) struct Ctx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) regs: &'a mut Slab<Registration>,
    /// Tokens to free after the current batch of events.
    pub(crate) dead: &'a mut Vec<usize>,
    pub(crate) scratch: &'a mut [u8],
    pub(crate) now: Instant,
    pub(crate) first_token: usize,
    /// Data channels open in all sessions, against the global cap. Every
    /// `DataChan` in a session was admitted here and is released in
    /// `close_data`, its one way out.
    pub(crate) data_channels: &'a DataChannels,
    /// Data channels on relay threads at most (`--relay-threads`).
    pub(crate) relay_threads: usize,
    /// The event loop driving the session (`--workers`).
    pub(crate) worker: usize,
    /// The daemon's data listeners, shared by the sessions that expect a
    /// connection on the same (address, port).
    pub(crate) listeners: &'a SharedListeners,
    /// Failed logins per client address, of the whole process: a failure
    /// is recorded before its 530 leaves (`logins::LoginTable`).
    pub(crate) logins: &'a crate::logins::LoginTable,
    /// The kernel data path (`--data-path pinhole`): the session's data
    /// actions go there instead of to sockets.
    pub(crate) pinholes: Option<&'a mut crate::pinhole::Pinholes>,
    /// The loop's empty pipes, for the next relay.
    pub(crate) pipes: &'a mut PipePool,
}

impl Ctx<'_> {
    fn register<S: Source + ?Sized>(
        &mut self,
        conn: usize,
        source: &mut S,
        role: Role,
        interest: Interest,
    ) -> Result<Token, RegisterError> {
        let key = self.regs.insert(Registration { conn, role, live: true });
        let token = Token(key + self.first_token);
        if let Err(error) = self.registry.register(source, token, interest) {
            self.regs.remove(key);
            return Err(RegisterError { role, error });
        }
        Ok(token)
    }

    fn deregister<S: Source + ?Sized>(&mut self, source: &mut S, token: Token) {
        let _ = self.registry.deregister(source);
        let key = token.0 - self.first_token;
        if let Some(reg) = self.regs.get_mut(key) {
            reg.live = false;
            self.dead.push(key);
        }
    }
}

/// A registered stream and its readiness.
#[derive(Debug)]
struct Leg {
    stream: TcpStream,
    token: Token,
    ready: Readiness,
}

/// One control socket.
#[derive(Debug)]
struct Control {
    leg: Option<Leg>,
    /// The non-blocking connect (server side) has not completed yet.
    connecting: bool,
    /// The core was told that this connection ended: `Input::Closed` at
    /// EOF, `Input::Aborted` at a read or write error. It is told once,
    /// and nothing more is read.
    closed_reported: bool,
    /// The core asked for `Shutdown`: flush, then close.
    closing: bool,
    /// The other control connection ended abortively (a reset, or a read
    /// or write error): this one ends with a reset too, whenever the core
    /// closes it, and never with a FIN that would read as an orderly end.
    reset_on_close: bool,
}

impl Control {
    fn new(leg: Option<Leg>, connecting: bool) -> Self {
        Self { leg, connecting, closed_reported: false, closing: false, reset_on_close: false }
    }
}

/// One data channel: a listener, then two legs and a relay.
#[derive(Debug)]
struct DataChan {
    id: DataId,
    /// The side that connects to the listener.
    peer: Side,
    /// What the listener table handed over for this channel, not yet told
    /// to the core. Cleared when the channel stops expecting a connection.
    arrivals: VecDeque<Arrival>,
    /// The connection just accepted, while the core judges it
    /// (`Input::Accepted`). Owned by `accept_data`, which puts it here and
    /// closes what the verdict left (a refusal); the keeping verdict,
    /// `Action::Connect`, takes it.
    accepted_pending_verdict: Option<TcpStream>,
    /// The leg toward `peer`: accepted on the listener, or dialed
    /// (`Action::Dial`, then `peer` is the server).
    accepted: Option<Leg>,
    /// False while a dialed `accepted` leg connects.
    accepted_connected: bool,
    outbound: Option<Leg>,
    outbound_connected: bool,
    /// Both legs are dialed (`Action::Dial`): completions are reported as
    /// `Input::Dialed` with their side.
    dialed: bool,
    relay: Option<Relay>,
    /// The relay after its first MiB, on threads of its own (then `relay`
    /// is `None` and the legs are out of the event loop).
    threaded: Option<ThreadedRelay>,
    /// `Action::DataDirection` that came before the relay was set up.
    direction: Option<Side>,
    /// Byte counts (to client, to server) the core last heard of
    /// (`Input::Progress`).
    reported_counts: (u64, u64),
    /// Bytes its receivers had acknowledged (client, server: TCP_INFO) when
    /// the idle deadline last looked (`report_acknowledged`).
    acked_seen: Option<(u64, u64)>,
    /// The core was told how the relay ended (`Relayed` or `RelayFailed`).
    relay_ended: bool,
    /// Counts the channel as open in the metrics while it exists.
    _open: metrics::OpenDataChannel,
}

/// FTPS pass-through (`Action::PassThrough`): the control connection is
/// TLS the core does not parse; the two control sockets are joined by a
/// splice relay, like a data channel, until both directions end.
#[derive(Debug)]
enum Blind {
    /// Writing out what the core still had for either side (the 234),
    /// by `by` at the latest.
    Flushing {
        idle_timeout: Duration,
        by: Instant,
    },
    Relaying {
        relay: Relay,
        idle_timeout: Duration,
        idle_at: Instant,
    },
}

/// A fact for the core, queued until `feed_facts` hands it over.
#[derive(Debug)]
enum Fact {
    /// Bytes read from a control socket (owned: the read buffer is reused).
    Received { from: Side, data: Vec<u8> },
    /// Any other fact: these borrow nothing.
    Input(Input<'static>),
    /// Reloaded access rules (`Input::PolicyChanged` borrows them).
    PolicyChanged(Arc<PolicySet>),
}

pub(crate) struct Conn {
    key: usize,
    /// The session's number in the process (its `session` log key): a
    /// slab key is reused, so a connection handed over by another loop
    /// names this too.
    serial: u64,
    pub(crate) client_ip: std::net::IpAddr,
    pub(crate) log: Logger,
    session: Session,
    client: Control,
    server: Control,
    data: Vec<DataChan>,
    facts: VecDeque<Fact>,
    /// Set while `feed_facts` runs: actions only queue facts, never feed.
    feeding: bool,
    close_by: Option<Instant>,
    /// The server connect must complete by then (the greeting may take
    /// longer: that deadline is the core's).
    connect_by: Option<Instant>,
    /// A socket could not join the event loop: the session ends with a 421
    /// and every socket it registered is released.
    broken: Option<RegisterError>,
    /// The control connection is relayed blind (FTPS pass-through).
    blind: Option<Blind>,
    /// The server socket could not be created for want of descriptors
    /// (EMFILE, ENFILE): the client hears the core's reply for an
    /// unreachable server, and the loop pauses accepting.
    pub(crate) starved: Option<io::Error>,
    /// When the session started, for an end record the daemon writes.
    started: Instant,
    /// The core's `SessionEnded` was logged: the session has its end record.
    end_logged: bool,
}

impl Conn {
    /// Takes an accepted client connection and starts the foreign-source
    /// connect to the original destination. If the client's socket cannot
    /// join the event loop, the client gets a 421 and there is no session.
    pub(crate) fn start(
        SessionRef { key, serial }: SessionRef,
        log: Logger,
        session: Session,
        mut client: TcpStream,
        ends: ControlEnds,
        connect_timeout: Duration,
        ctx: &mut Ctx<'_>,
    ) -> Result<Self, RegisterError> {
        let _ = client.set_nodelay(true);
        // Clients send ABOR's Synch as urgent data; inline, it stays in the
        // stream where the core expects it (ftplib sends all of "ABOR\r\n"
        // urgent, so out-of-line its last byte would vanish).
        if let Err(e) = tproxy::set_urgent_inline(&client) {
            warn!(log, "SO_OOBINLINE failed"; "error" => %e);
        }
        let token = match ctx.register(
            key,
            &mut client,
            Role::Control(Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            Ok(token) => token,
            Err(e) => {
                let _ = client.write(REPLY_OUT_OF_RESOURCES);
                return Err(e);
            }
        };
        let mut conn = Self {
            key,
            serial,
            client_ip: ends.client.ip(),
            log,
            session,
            client: Control::new(Some(Leg { stream: client, token, ready: Readiness::default() }), false),
            server: Control::new(None, false),
            data: Vec::new(),
            facts: VecDeque::new(),
            feeding: false,
            close_by: None,
            connect_by: Some(ctx.now + connect_timeout),
            broken: None,
            blind: None,
            starved: None,
            started: ctx.now,
            end_logged: false,
        };
        // The server sees the client's own address; the port is the kernel's
        // choice, as a NAT-free router would leave it to the client.
        let from = SocketAddr::new(ends.client.ip(), 0);
        match tproxy::connect_from(from, ends.server) {
            Ok(mut stream) => {
                match ctx.register(
                    key,
                    &mut stream,
                    Role::Control(Side::Server),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(token) => {
                        conn.server =
                            Control::new(Some(Leg { stream, token, ready: Readiness::default() }), true);
                    }
                    // The first drive gives up on the session.
                    Err(e) => conn.broken = Some(e),
                }
            }
            Err(e) => {
                metrics::get().error(metrics::Channel::Control, e.step().into());
                let errno = e.io().raw_os_error();
                if errno == Some(libc::EMFILE) || errno == Some(libc::ENFILE) {
                    // The loop pauses accepting and logs the episode once.
                    debug!(conn.log, "server connect failed"; "error" => %e);
                    conn.starved = Some(io::Error::from_raw_os_error(errno.unwrap_or(libc::EMFILE)));
                } else {
                    warn!(conn.log, "server connect failed"; "error" => %e);
                }
                conn.pass_refusal(e.io());
                conn.queue(Input::ServerUnreachable { error: e.kind() });
            }
        }
        Ok(conn)
    }

    /// Records readiness from one event.
    pub(crate) fn on_event(&mut self, role: Role, event: &mio::event::Event) {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        let mark = |ready: &mut Readiness| {
            ready.readable |= readable;
            ready.writable |= writable;
        };
        match role {
            Role::Control(side) => {
                if let Some(leg) = &mut self.control(side).leg {
                    mark(&mut leg.ready);
                }
            }
            // The listener table owns those tokens.
            Role::DataListener(_) => {}
            Role::DataAccepted(id) => {
                if let Some(leg) = self.chan(id).and_then(|c| c.accepted.as_mut()) {
                    mark(&mut leg.ready);
                }
            }
            Role::DataOutbound(id) => {
                if let Some(leg) = self.chan(id).and_then(|c| c.outbound.as_mut()) {
                    mark(&mut leg.ready);
                }
            }
        }
    }

    /// Takes what the listener table accepted for one of this session's
    /// channels; `drive` tells the core. Nothing is kept for a channel that
    /// is gone: the connection closes.
    pub(crate) fn hand_over(&mut self, handover: Handover) {
        debug_assert_eq!((handover.channel.session, handover.channel.serial), (self.key, self.serial));
        if let Some(chan) = self.chan(handover.channel.data) {
            chan.arrivals.push_back(handover.arrival);
        }
    }

    /// The session's key in the loop's slab.
    pub(crate) fn key(&self) -> usize {
        self.key
    }

    /// The session's number in the process.
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }

    /// How the listener table names one side's expectation of one of this
    /// session's data channels.
    fn channel(&self, ctx: &Ctx<'_>, data: DataId, peer: Side) -> Channel {
        Channel { worker: ctx.worker, session: self.key, serial: self.serial, data, peer }
    }

    /// Feeds the daemon's shutdown to the session.
    pub(crate) fn drain(&mut self, ctx: &mut Ctx<'_>) {
        self.tell(ctx, Input::Drain);
    }

    /// Feeds reloaded access rules to the session: its next command
    /// follows them (a running transfer goes on).
    pub(crate) fn policy_changed(&mut self, ctx: &mut Ctx<'_>, policy: &Arc<PolicySet>) {
        self.facts.push_back(Fact::PolicyChanged(Arc::clone(policy)));
        self.feed_facts(ctx);
    }

    /// When the loop must wake this session next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let blind = match &self.blind {
            Some(Blind::Relaying { idle_at: at, .. } | Blind::Flushing { by: at, .. }) => Some(*at),
            None => None,
        };
        [self.session.poll_timeout(), self.close_by, self.connect_by, blind].into_iter().flatten().min()
    }

    /// True when the session is over: every socket is gone, or the daemon
    /// gave up on it (then `abort` releases what is left).
    pub(crate) fn finished(&self) -> bool {
        self.broken.is_some()
            || (self.session.is_closed() && self.client.leg.is_none() && self.server.leg.is_none())
    }

    /// Runs the session as far as readiness and the work bounds allow.
    /// Returns true when a bound was hit with work left, so the loop calls
    /// again after the other sessions had their turn.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut more = false;
        if self.session.poll_timeout().is_some_and(|t| t <= ctx.now) {
            // Relay threads move bytes without waking the loop: the data
            // idle deadline must see them first.
            self.report_progress(ctx);
            self.report_acknowledged(ctx);
            self.queue(Input::Timeout);
        }
        self.feed_facts(ctx);
        let mut budget = Budget::per_wakeup();
        let mut rounds = 0;
        while self.broken.is_none() {
            let mut progress = false;
            progress |= self.connect_server(ctx);
            for side in [Side::Client, Side::Server] {
                progress |= self.read_control(ctx, side);
            }
            let (p, m) = self.run_data(ctx, &mut budget);
            progress |= p;
            more |= m;
            for side in [Side::Client, Side::Server] {
                progress |= self.write_control(ctx, side);
            }
            let (p, m) = self.run_blind(ctx, &mut budget);
            progress |= p;
            more |= m;
            rounds += 1;
            if !progress {
                break;
            }
            if rounds == MAX_ROUNDS {
                more = true;
                break;
            }
        }
        if self.broken.is_none() && self.report_progress(ctx) {
            for side in [Side::Client, Side::Server] {
                self.write_control(ctx, side);
            }
        }
        if self.broken.is_some() {
            self.give_up();
            return false;
        }
        // A blind relay ends on its own (both directions, a reset, idle).
        if self.session.is_closed() && self.blind.is_none() {
            let close_by = *self.close_by.get_or_insert(ctx.now + LINGER);
            if close_by <= ctx.now {
                for side in [Side::Client, Side::Server] {
                    self.close_control(ctx, side);
                }
            }
        }
        more
    }

    /// Releases every socket (used when the daemon gives up on the session).
    /// A session the core did not end (a failed registration, the drain
    /// deadline) still gets its one end record, with the same keys; what
    /// only the core knows is "-".
    pub(crate) fn abort(&mut self, ctx: &mut Ctx<'_>) {
        if !std::mem::replace(&mut self.end_logged, true) {
            let reason =
                if self.broken.is_some() { "event loop registration failed" } else { "drain deadline" };
            audit::session_ended_by_daemon(
                &self.log,
                reason,
                ctx.now.saturating_duration_since(self.started),
            );
        }
        for side in [Side::Client, Side::Server] {
            self.close_control(ctx, side);
        }
        for id in self.data.iter().map(|c| c.id).collect::<Vec<_>>() {
            // A channel whose relay has not ended is cut here, without the
            // core: its legs end with a reset, as the core's ResetData
            // would, never with a FIN that would tell the server an upload
            // (or the client a download) was whole.
            if self.chan(id).is_some_and(|c| !c.relay_ended) {
                self.reset_data(ctx, id);
            }
            self.close_data(ctx, id);
        }
        if let Some(pinholes) = ctx.pinholes.as_deref_mut() {
            for _ in 0..pinholes.close_session(self.key) {
                ctx.data_channels.close();
            }
        }
    }

    fn control(&mut self, side: Side) -> &mut Control {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    fn chan(&mut self, id: DataId) -> Option<&mut DataChan> {
        chan_in(&mut self.data, id)
    }

    /// Queues a fact for the core. Actions only queue: the core is never
    /// fed while its actions are being drained.
    fn queue(&mut self, input: Input<'static>) {
        self.facts.push_back(Fact::Input(input));
    }

    /// Queues a fact and feeds the queue. Not for use inside `execute`.
    fn tell(&mut self, ctx: &mut Ctx<'_>, input: Input<'static>) {
        self.queue(input);
        self.feed_facts(ctx);
    }

    /// The one way facts reach the core: one fact at a time, each followed
    /// by draining every action it causes (which may queue more facts).
    fn feed_facts(&mut self, ctx: &mut Ctx<'_>) {
        debug_assert!(!self.feeding, "feed_facts re-entered from an action");
        self.feeding = true;
        while self.broken.is_none() {
            let Some(fact) = self.facts.pop_front() else { break };
            match &fact {
                Fact::Received { from, data } => {
                    self.session.handle_input(ctx.now, Input::Received { from: *from, data })
                }
                Fact::Input(input) => self.session.handle_input(ctx.now, *input),
                Fact::PolicyChanged(policy) => {
                    self.session.handle_input(ctx.now, Input::PolicyChanged { policy })
                }
            }
            while self.broken.is_none() {
                let Some(action) = self.session.poll_action() else { break };
                self.execute(ctx, action);
            }
        }
        self.feeding = false;
    }

    /// Tells the core about bytes that moved in this wakeup, once per
    /// channel, so its data idle deadline counts from now. Returns whether
    /// anything was told.
    fn report_progress(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut told = false;
        for chan in &mut self.data {
            if chan.relay_ended {
                continue;
            }
            let counts = match (&chan.relay, &chan.threaded) {
                (Some(relay), _) => relay.counts(),
                (None, Some(threaded)) => threaded.counts(),
                (None, None) => continue,
            };
            if counts != chan.reported_counts {
                chan.reported_counts = counts;
                let (to_client, to_server) = counts;
                self.facts.push_back(Fact::Input(Input::Progress { data: chan.id, to_client, to_server }));
                told = true;
            }
        }
        self.feed_facts(ctx);
        told
    }

    /// At the idle deadline: tells the core of each running relay whose
    /// receivers acknowledged bytes since the last look. The counts say
    /// what was written into a socket; a slow receiver may take long to
    /// drain a send buffer after the last write (the last megabytes of a
    /// transfer), and is not idle while it does (tests/integrity.rs
    /// `slow_reader_*`). The kernel counts what each socket's peer
    /// acknowledged (TCP_INFO); at the first look, bytes still
    /// unacknowledged (SIOCOUTQ) count as a drain in progress, so a
    /// receiver that stopped reading is cut at the deadline after: at most
    /// twice `--data-idle-timeout` after its last acknowledgement.
    fn report_acknowledged(&mut self, ctx: &mut Ctx<'_>) {
        for chan in &mut self.data {
            if chan.relay_ended || (chan.relay.is_none() && chan.threaded.is_none()) {
                continue;
            }
            let (Some(accepted), Some(outbound)) = (&chan.accepted, &chan.outbound) else { continue };
            let (client, server) = match chan.peer {
                Side::Client => (accepted, outbound),
                Side::Server => (outbound, accepted),
            };
            let acked = (relay::acknowledged(&client.stream), relay::acknowledged(&server.stream));
            let draining = match chan.acked_seen {
                // A receiver that opens its window a byte a period must
                // not hold a channel forever (a slowloris on data).
                Some(seen) => acked.0 + acked.1 >= seen.0 + seen.1 + MIN_ACKNOWLEDGED,
                None => relay::unacknowledged(&client.stream) + relay::unacknowledged(&server.stream) > 0,
            };
            chan.acked_seen = Some(acked);
            if draining {
                self.facts.push_back(Fact::Input(Input::Acknowledged { data: chan.id }));
            }
        }
        self.feed_facts(ctx);
    }

    /// Ends a session whose socket could not join the event loop: the
    /// client hears a 421 if that can be said cleanly, and the loop then
    /// releases every socket the session registered (`finished`, `abort`).
    fn give_up(&mut self) {
        let Some(e) = &self.broken else { return };
        error!(self.log, "session ended: event loop registration failed"; "error" => %e);
        let channel = if matches!(e.role, Role::Control(_)) {
            metrics::Channel::Control
        } else {
            metrics::Channel::Data
        };
        metrics::get().error(channel, Step::Register);
        if let Some(leg) = &mut self.client.leg {
            // The reply in flight goes first, and the 421 only if it went
            // whole: a 421 inside a half-sent line would garble both.
            let pending = self.session.pending(Side::Client);
            let flushed = pending.is_empty() || leg.stream.write(pending).is_ok_and(|n| n == pending.len());
            if flushed {
                let _ = leg.stream.write(REPLY_OUT_OF_RESOURCES);
            }
        }
    }

    fn execute(&mut self, ctx: &mut Ctx<'_>, action: Action) {
        let action = if ctx.pinholes.is_some() {
            match self.execute_kernel(ctx, action) {
                Some(action) => action,
                None => return,
            }
        } else {
            action
        };
        match action {
            Action::Listen { data, local, accept_from, peer } => {
                self.listen(ctx, data, local, accept_from, peer)
            }
            // accept_data closes the connection that no verdict took.
            Action::Refuse { data: _ } => {}
            Action::Connect { data, local, remote } => self.connect_data(ctx, data, local, remote),
            Action::Dial { data, leg, local, remote } => self.dial_data(ctx, data, leg, local, remote),
            Action::Keep { data, leg } => self.keep_data(ctx, data, leg),
            Action::Relay { data } => {
                // Enforcing ATTACKS.md 34: nothing moves until the core
                // says which way (`DataDirection`).
                let enforce = self.session.config().enforce_data_direction;
                let told = self.chan(data).and_then(|c| c.direction);
                let direction = match (enforce, told) {
                    (false, _) => Direction::Both,
                    (true, None) => Direction::Held,
                    (true, Some(toward)) => Direction::Toward(toward),
                };
                let relay = Relay::new(direction, ctx.pipes);
                match (self.chan(data), relay) {
                    (Some(chan), Ok(relay)) => chan.relay = Some(relay),
                    (Some(_), Err(e)) => {
                        warn!(self.log, "relay pipes failed"; "data" => data.0, "error" => %e);
                        self.queue(Input::Failed { data, step: DataStep::Relay, error: e.kind() });
                    }
                    (None, _) => {}
                }
            }
            Action::DataDirection { data, toward } => {
                if let Some(chan) = self.chan(data) {
                    chan.direction = Some(toward);
                    if let Some(relay) = chan.relay.as_mut() {
                        relay.set_direction(toward);
                    }
                }
            }
            Action::ResetData { data } => self.reset_data(ctx, data),
            Action::CloseData { data } => self.close_data(ctx, data),
            Action::Shutdown { side } => {
                let control = self.control(side);
                control.closing = true;
            }
            Action::Audit(event) => {
                match &event {
                    AuditEvent::LoginFailed { .. } => ctx.logins.failed(self.client_ip, ctx.now, &self.log),
                    AuditEvent::SessionEnded { .. } => self.end_logged = true,
                    _ => {}
                }
                audit::record(&self.log, &event);
            }
            Action::PassThrough { idle_timeout } => {
                self.blind = Some(Blind::Flushing { idle_timeout, by: ctx.now + LINGER })
            }
            other => debug!(self.log, "unknown action"; "action" => ?other),
        }
    }

    /// The data actions under `--data-path pinhole`: the kernel forwards
    /// the one expected connection, so a listen becomes a pinhole, a
    /// connect and a relay are already done by it. Returns the actions
    /// that are not about data.
    fn execute_kernel(&mut self, ctx: &mut Ctx<'_>, action: Action) -> Option<Action> {
        match action {
            Action::Listen { data, local, accept_from, peer } => {
                // The cap counts pinholes as it counts listeners.
                if !self.admit_data(ctx, data) {
                    let error = io::ErrorKind::QuotaExceeded;
                    self.queue(Input::Failed { data, step: DataStep::Listen, error });
                    return None;
                }
                let timeout = self.session.config().data_accept_timeout;
                let from_client = peer == Side::Client;
                let pinholes = ctx.pinholes.as_deref_mut()?;
                match pinholes.open_pinhole(self.key, data, accept_from, local, from_client, timeout) {
                    Ok(()) => self.queue(Input::Listening { data, local }),
                    Err(e) => {
                        ctx.data_channels.close();
                        warn!(self.log, "pinhole failed"; "data" => data.0, "peer" => %accept_from,
                              "target" => %local, "error" => %e);
                        // Not AddrInUse: the core would retry on port 0.
                        self.queue(Input::Failed {
                            data,
                            step: DataStep::Listen,
                            error: io::ErrorKind::Other,
                        });
                    }
                }
            }
            Action::Connect { data, local, .. } => {
                // The kernel forwards the connection as it came: it is
                // connected already. First in line, so that an end the
                // kernel reported in the same batch finds it relaying.
                let local = ctx.pinholes.as_deref().and_then(|p| p.peer(self.key, data)).unwrap_or(local);
                self.facts.push_front(Fact::Input(Input::Connected { data, local }));
            }
            Action::Dial { data, .. } => {
                // Conversion needs both legs in ftpgate (refused at start;
                // a reload may bring a rule that asks for it).
                warn!(self.log, "server-data conversion is not possible with --data-path pinhole"; "data" => data.0);
                self.queue(Input::Failed {
                    data,
                    step: DataStep::Connect,
                    error: io::ErrorKind::Unsupported,
                });
            }
            // ResetData: no reset can be sent from here, and dropping the
            // connection's conntrack entry would leave both ends waiting
            // for their timeouts (and a server blocked in write() deaf to
            // ABOR). The running connection is left to its two ends, as
            // routing would: the server ends it on ABOR, and a reset from
            // either end travels to the other.
            Action::Relay { .. }
            | Action::DataDirection { .. }
            | Action::Refuse { .. }
            | Action::ResetData { .. } => {}
            Action::CloseData { data } => {
                if ctx.pinholes.as_deref_mut()?.close(self.key, data) {
                    ctx.data_channels.close();
                }
            }
            other => return Some(other),
        }
        None
    }

    /// A kernel report on one of this session's pinholes.
    pub(crate) fn kernel_event(&mut self, event: crate::pinhole::Event) {
        use crate::pinhole::Event;
        match event {
            Event::Connected { data, peer, .. } => self.queue(Input::Accepted { data, peer }),
            Event::Ended { data, to_client, to_server, reset: false, .. } => {
                self.queue(Input::Relayed { data, to_client, to_server })
            }
            Event::Ended { data, to_client, to_server, reset: true, .. } => self.queue(Input::RelayFailed {
                data,
                // Conntrack does not say which end sent the reset.
                leg: Side::Server,
                error: io::ErrorKind::ConnectionReset,
                to_client,
                to_server,
            }),
        }
    }

    /// FTPS pass-through: once the core's last bytes (the 234) are out,
    /// splice the two control sockets together; when the relay ends (both
    /// FINs passed on, a reset passed on as a reset, or idle), close them.
    /// Returns (progress, more) like `run_data`.
    fn run_blind(&mut self, ctx: &mut Ctx<'_>, budget: &mut Budget) -> (bool, bool) {
        let Some(blind) = self.blind.as_mut() else { return (false, false) };
        let (Some(client), Some(server)) = (self.client.leg.as_mut(), self.server.leg.as_mut()) else {
            // A control socket failed while the 234 was being written.
            self.end_blind(ctx, "pass-through: a control connection ended", None);
            return (true, false);
        };
        match blind {
            Blind::Flushing { idle_timeout, by } => {
                if !self.session.pending(Side::Client).is_empty()
                    || !self.session.pending(Side::Server).is_empty()
                {
                    if *by <= ctx.now {
                        self.end_blind(ctx, "pass-through: the client did not take the 234", None);
                        return (true, false);
                    }
                    return (false, false);
                }
                let idle_timeout = *idle_timeout;
                match Relay::new(Direction::Both, ctx.pipes) {
                    Ok(relay) => {
                        // Readiness seen while flushing may be stale: try.
                        client.ready.readable = true;
                        server.ready.readable = true;
                        let idle_at = ctx.now + idle_timeout;
                        self.blind = Some(Blind::Relaying { relay, idle_timeout, idle_at });
                        info!(self.log, "pass-through: control connection relayed blind");
                    }
                    Err(e) => {
                        warn!(self.log, "relay pipes failed"; "error" => %e);
                        self.end_blind(ctx, "pass-through: relay could not start", None);
                    }
                }
                (true, false)
            }
            Blind::Relaying { relay, idle_timeout, idle_at } => {
                if *idle_at <= ctx.now {
                    relay::reset_on_close(&client.stream);
                    relay::reset_on_close(&server.stream);
                    let counts = relay.counts();
                    self.end_blind(ctx, "pass-through idle", Some(counts));
                    return (true, false);
                }
                let before = relay.counts();
                let status =
                    relay.run(&client.stream, &mut client.ready, &server.stream, &mut server.ready, budget);
                let progress = relay.counts() != before;
                if progress {
                    *idle_at = ctx.now + *idle_timeout;
                }
                match status {
                    RelayStatus::Running { more } => (progress, more),
                    RelayStatus::Done { to_client, to_server } => {
                        self.end_blind(ctx, "pass-through ended", Some((to_client, to_server)));
                        (true, false)
                    }
                    RelayStatus::Failed { leg, error, to_client, to_server } => {
                        info!(
                            self.log, "pass-through relay failed";
                            "leg" => audit::side(leg), "error" => format!("{error:?}")
                        );
                        self.end_blind(ctx, "pass-through reset", Some((to_client, to_server)));
                        (true, false)
                    }
                }
            }
        }
    }

    /// Closes both control sockets after a blind relay (a relay that
    /// failed or went idle armed them to reset) and records the end.
    fn end_blind(&mut self, ctx: &mut Ctx<'_>, reason: &'static str, counts: Option<(u64, u64)>) {
        self.blind = None;
        for side in [Side::Client, Side::Server] {
            if let Some(mut leg) = self.control(side).leg.take() {
                ctx.deregister(&mut leg.stream, leg.token);
            }
        }
        let (to_client, to_server) = counts.unwrap_or_default();
        info!(self.log, "pass-through relay end"; "to_client" => to_client, "to_server" => to_server);
        self.end_logged = true;
        audit::record(&self.log, &self.session.end_record(ctx.now, reason));
    }

    fn listen(
        &mut self,
        ctx: &mut Ctx<'_>,
        data: DataId,
        local: SocketAddr,
        accept_from: std::net::IpAddr,
        peer: Side,
    ) {
        // A retry (the announced port was taken) replaces the listener.
        if self.chan(data).is_none() {
            if !self.admit_data(ctx, data) {
                // As for a listener that cannot be bound: the core answers
                // 425 and the session goes on.
                self.queue(Input::Failed {
                    data,
                    step: DataStep::Listen,
                    error: io::ErrorKind::QuotaExceeded,
                });
                return;
            }
            self.data.push(DataChan {
                id: data,
                peer,
                arrivals: VecDeque::new(),
                accepted_pending_verdict: None,
                accepted: None,
                accepted_connected: true,
                outbound: None,
                outbound_connected: false,
                dialed: false,
                relay: None,
                threaded: None,
                reported_counts: (0, 0),
                acked_seen: None,
                direction: None,
                relay_ended: false,
                _open: metrics::get().data_channel_opened(peer, local),
            });
        }
        // A retry replaces this side's listener; a channel that listens for
        // both sides (`Action::Keep`) keeps the other's.
        let channel = self.channel(ctx, data, peer);
        ctx.listeners.forget(channel);
        let expectation = Expectation { channel, accept_from, peer, log: self.log.clone() };
        match ctx.listeners.expect(local, expectation) {
            Ok(expected) => self.queue(Input::Listening { data, local: expected.local }),
            Err(ExpectError::Ambiguous) => {
                // Told as the bind failure it stands for: the core listens
                // on a port of its own and rewrites the reply.
                info!(
                    self.log, "data listener already expects this peer for another session";
                    "data" => data.0, "local" => %local, "accept_from" => %accept_from
                );
                self.queue(Input::Failed { data, step: DataStep::Bind, error: io::ErrorKind::AddrInUse });
            }
            Err(ExpectError::Listen(e)) => {
                debug!(self.log, "data listen failed"; "data" => data.0, "error" => %e);
                self.queue(Input::Failed { data, step: e.step(), error: e.kind() });
            }
            Err(ExpectError::Register(error)) => {
                self.broken = Some(RegisterError { role: Role::DataListener(data), error })
            }
        }
    }

    /// Asks the global cap whether a new data channel may open.
    fn admit_data(&mut self, ctx: &mut Ctx<'_>, data: DataId) -> bool {
        match ctx.data_channels.open() {
            Admit::Yes { after_refusals } => {
                if let Some(refused) = after_refusals {
                    info!(
                        self.log, "data channels below the cap again";
                        "refused" => refused, "max_data_channels" => ctx.data_channels.max()
                    );
                }
                true
            }
            Admit::No { first } => {
                if first {
                    warn!(
                        self.log, "data channel cap reached; new data channels get 425";
                        "data" => data.0, "max_data_channels" => ctx.data_channels.max()
                    );
                } else {
                    debug!(self.log, "data channel refused: cap reached"; "data" => data.0);
                }
                false
            }
        }
    }

    /// The verdict on the connection just accepted: keep it as `leg`'s leg
    /// of a channel whose two legs are both accepted. Its listener closes
    /// (one connection per listener); the other side's stays.
    fn keep_data(&mut self, ctx: &mut Ctx<'_>, data: DataId, leg: Side) {
        let key = self.key;
        let kept = self.chan(data).and_then(|c| c.accepted_pending_verdict.take());
        ctx.listeners.forget(self.channel(ctx, data, leg));
        let (Some(chan), Some(mut stream)) = (chan_in(&mut self.data, data), kept) else { return };
        let _ = stream.set_nodelay(true);
        // Where an accepted leg goes: `accepted` is the first listener's
        // side (`chan.peer`), `outbound` the other's.
        let role = if leg == chan.peer { Role::DataAccepted(data) } else { Role::DataOutbound(data) };
        match ctx.register(key, &mut stream, role, Interest::READABLE | Interest::WRITABLE) {
            Ok(token) => {
                // The leg may already hold data (STOR): read it.
                let ready = Readiness { readable: true, writable: true };
                let kept = Some(Leg { stream, token, ready });
                if leg == chan.peer {
                    (chan.accepted, chan.accepted_connected) = (kept, true);
                } else {
                    (chan.outbound, chan.outbound_connected) = (kept, true);
                }
            }
            Err(e) => self.broken = Some(e),
        }
    }

    fn connect_data(&mut self, ctx: &mut Ctx<'_>, data: DataId, local: SocketAddr, remote: SocketAddr) {
        let key = self.key;
        // The verdict on the accepted connection: keep it.
        let kept = self.chan(data).and_then(|c| c.accepted_pending_verdict.take());
        // One connection per listener: the hole closes as soon as it is used.
        self.close_listener(ctx, data);
        let Some(chan) = self.chan(data) else { return };
        if let Some(mut stream) = kept {
            let _ = stream.set_nodelay(true);
            match ctx.register(
                key,
                &mut stream,
                Role::DataAccepted(data),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                Ok(token) => {
                    // The accepted leg may already hold data (STOR): read it.
                    let ready = Readiness { readable: true, writable: true };
                    chan.accepted = Some(Leg { stream, token, ready });
                }
                Err(e) => {
                    self.broken = Some(e);
                    return;
                }
            }
        }
        let mut stream = match tproxy::connect_from(local, remote) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(self.log, "data connect failed"; "data" => data.0, "error" => %e);
                self.queue(Input::Failed { data, step: e.step(), error: e.kind() });
                return;
            }
        };
        match ctx.register(
            key,
            &mut stream,
            Role::DataOutbound(data),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            Ok(token) => {
                if let Some(chan) = self.chan(data) {
                    chan.outbound = Some(Leg { stream, token, ready: Readiness::default() });
                    chan.outbound_connected = false;
                }
            }
            Err(e) => self.broken = Some(e),
        }
    }

    /// One leg of a channel whose legs the gateway both connects: the
    /// server's goes where an accepted leg would (`peer` is the server),
    /// the client's where an outbound one would, so the relay runs as for
    /// an active-mode channel. The first dial opens the channel.
    fn dial_data(
        &mut self,
        ctx: &mut Ctx<'_>,
        data: DataId,
        leg: Side,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let key = self.key;
        if self.chan(data).is_none() {
            if !self.admit_data(ctx, data) {
                let error = io::ErrorKind::QuotaExceeded;
                self.queue(Input::Failed { data, step: DataStep::Connect, error });
                return;
            }
            self.data.push(DataChan {
                id: data,
                peer: Side::Server,
                arrivals: VecDeque::new(),
                accepted_pending_verdict: None,
                accepted: None,
                accepted_connected: false,
                outbound: None,
                outbound_connected: false,
                dialed: true,
                relay: None,
                threaded: None,
                reported_counts: (0, 0),
                acked_seen: None,
                relay_ended: false,
                direction: None,
                _open: metrics::get().data_channel_opened(Side::Server, local),
            });
        }
        let mut stream = match tproxy::connect_from(local, remote) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(self.log, "data connect failed"; "data" => data.0, "leg" => ?leg, "error" => %e);
                self.queue(Input::Failed { data, step: e.step(), error: e.kind() });
                return;
            }
        };
        let role = match leg {
            Side::Server => Role::DataAccepted(data),
            Side::Client => Role::DataOutbound(data),
        };
        match ctx.register(key, &mut stream, role, Interest::READABLE | Interest::WRITABLE) {
            Ok(token) => {
                let Some(chan) = self.chan(data) else { return };
                let leg_state = Some(Leg { stream, token, ready: Readiness::default() });
                match leg {
                    Side::Server => (chan.accepted, chan.accepted_connected) = (leg_state, false),
                    Side::Client => (chan.outbound, chan.outbound_connected) = (leg_state, false),
                }
            }
            Err(e) => self.broken = Some(e),
        }
    }

    /// The channel expects no connection any more: its listener closes
    /// unless another session expects one there, and what was handed over
    /// but not yet judged closes.
    fn close_listener(&mut self, ctx: &mut Ctx<'_>, data: DataId) {
        for peer in [Side::Client, Side::Server] {
            ctx.listeners.forget(self.channel(ctx, data, peer));
        }
        if let Some(chan) = self.chan(data) {
            chan.arrivals.clear();
        }
    }

    /// Ends both legs of a channel with a reset (SO_LINGER 0, then close),
    /// never a FIN, so neither far end takes a cut transfer for complete.
    /// The pipes go with them; `close_data` releases the rest.
    fn reset_data(&mut self, ctx: &mut Ctx<'_>, data: DataId) {
        let Some(chan) = self.chan(data) else { return };
        chan.relay = None;
        if let Some(threaded) = chan.threaded.take() {
            // The threads hold the sockets too: the reset must not wait
            // for them to let go.
            threaded.reset();
            threaded.deregister(ctx.registry);
        }
        let legs = [chan.accepted.take(), chan.outbound.take()];
        for mut leg in legs.into_iter().flatten() {
            relay::reset_on_close(&leg.stream);
            ctx.deregister(&mut leg.stream, leg.token);
        }
    }

    fn close_data(&mut self, ctx: &mut Ctx<'_>, data: DataId) {
        self.close_listener(ctx, data);
        let Some(pos) = self.data.iter().position(|c| c.id == data) else { return };
        let mut chan = self.data.swap_remove(pos);
        ctx.data_channels.close();
        if let Some(relay) = chan.relay.take() {
            relay.recycle(ctx.pipes);
        }
        // Over (`Relayed`/`RelayFailed` came first), or cut without a
        // ResetData: dropped, threads that still run reset their legs.
        if let Some(threaded) = chan.threaded.take() {
            threaded.deregister(ctx.registry);
        }
        for mut leg in [chan.accepted.take(), chan.outbound.take()].into_iter().flatten() {
            ctx.deregister(&mut leg.stream, leg.token);
        }
    }

    fn close_control(&mut self, ctx: &mut Ctx<'_>, side: Side) {
        let control = self.control(side);
        let abortive = control.reset_on_close;
        if let Some(mut leg) = control.leg.take() {
            // Armed with SO_LINGER 0 (`pass_reset`), the close below sends
            // the reset; a shutdown first would send a FIN before it.
            if !abortive {
                let _ = leg.stream.shutdown(Shutdown::Both);
            }
            ctx.deregister(&mut leg.stream, leg.token);
        }
    }

    /// A control connection ended abortively on `from`'s side: the other
    /// one will end with a reset, as it would over a router. The core
    /// still decides when (it may first deliver what is owed, or wait for
    /// a transfer the kernel carries); only the manner of the close is
    /// fixed here. Without this the gateway would close the server's
    /// connection with a FIN after a client's reset, and hold its
    /// transparent socket in TIME_WAIT: a client that reconnects from the
    /// same port, as a reset lets it, would then find that 4-tuple taken.
    fn pass_reset(&mut self, from: Side, error: &io::Error) {
        let other = self.control(from.peer());
        if other.reset_on_close {
            return;
        }
        other.reset_on_close = true;
        if let Some(leg) = &other.leg {
            relay::reset_on_close(&leg.stream);
        }
        info!(self.log, "control connection ended abortively; its peer gets a reset";
              "side" => ?from, "error" => %error);
    }

    /// The server refused the control connection (a reset, or an ICMP
    /// port unreachable): the client, whose connection the gateway has
    /// already accepted, gets a reset, as its own connect would have been
    /// refused over a router. The core sends no reply then
    /// (`Input::ServerUnreachable`).
    fn pass_refusal(&mut self, error: &io::Error) {
        if error.kind() == io::ErrorKind::ConnectionRefused {
            self.pass_reset(Side::Server, error);
        }
    }

    /// Completes the non-blocking connect to the server.
    fn connect_server(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let server = &mut self.server;
        let Some(leg) = server.leg.as_mut().filter(|_| server.connecting) else {
            self.connect_by = None;
            return false;
        };
        if self.connect_by.is_some_and(|t| t <= ctx.now) {
            warn!(self.log, "server unreachable"; "error" => "connect timed out");
            server.connecting = false;
            self.connect_by = None;
            self.close_control(ctx, Side::Server);
            self.tell(ctx, Input::ServerUnreachable { error: io::ErrorKind::TimedOut });
            return true;
        }
        if !leg.ready.writable {
            return false;
        }
        match tproxy::connect_result(&leg.stream) {
            Ok(true) => {
                server.connecting = false;
                true
            }
            Ok(false) => {
                leg.ready.writable = false;
                false
            }
            Err(e) => {
                metrics::get().error(metrics::Channel::Control, Step::Connect);
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    warn!(self.log, "server refused the connection"; "error" => %e);
                } else {
                    warn!(self.log, "server unreachable"; "error" => %e);
                }
                server.connecting = false;
                self.close_control(ctx, Side::Server);
                self.pass_refusal(&e);
                self.tell(ctx, Input::ServerUnreachable { error: e.kind() });
                true
            }
        }
    }

    fn read_control(&mut self, ctx: &mut Ctx<'_>, side: Side) -> bool {
        let budget = self.session.read_budget(side).min(ctx.scratch.len());
        let control = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        if control.connecting || control.closed_reported || control.closing || budget == 0 {
            return false;
        }
        let Some(leg) = control.leg.as_mut().filter(|l| l.ready.readable) else { return false };
        let result = leg.stream.read(&mut ctx.scratch[..budget]);
        match result {
            Ok(0) => {
                control.closed_reported = true;
                self.tell(ctx, Input::Closed { from: side });
            }
            Ok(n) => {
                // Copied out: the scratch buffer is shared by all sessions.
                let data = ctx.scratch[..n].to_vec();
                self.facts.push_back(Fact::Received { from: side, data });
                self.feed_facts(ctx);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                leg.ready.readable = false;
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                control.closed_reported = true;
                self.pass_reset(side, &e);
                self.tell(ctx, Input::Aborted { from: side });
            }
        }
        true
    }

    fn write_control(&mut self, ctx: &mut Ctx<'_>, side: Side) -> bool {
        let mut progress = false;
        let pending = self.session.pending(side);
        let control = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        if control.connecting {
            return false;
        }
        let Some(leg) = control.leg.as_mut() else {
            // Nobody to write to: what is pending is lost with the peer.
            if !pending.is_empty() {
                let n = pending.len();
                self.session.consume(side, n);
            }
            return false;
        };
        if !pending.is_empty() && leg.ready.writable {
            // A Telnet Synch (ABOR): its last byte must go out as TCP urgent
            // data, in one send so the kernel marks exactly that byte.
            let result = match self.session.pending_urgent(side) {
                Some(n) => tproxy::send_urgent(&leg.stream, &pending[..n]),
                None => leg.stream.write(pending),
            };
            match result {
                Ok(n) => {
                    self.session.consume(side, n);
                    progress = n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => leg.ready.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let n = pending.len();
                    self.session.consume(side, n);
                    // A failed write ends the connection; the core hears
                    // of it unless a read already told it.
                    let already = std::mem::replace(&mut control.closed_reported, true);
                    self.pass_reset(side, &e);
                    self.close_control(ctx, side);
                    if !already {
                        self.tell(ctx, Input::Aborted { from: side });
                    }
                    return true;
                }
            }
        }
        let control = self.control(side);
        if control.closing && self.session.pending(side).is_empty() {
            self.close_control(ctx, side);
            progress = true;
        }
        progress
    }

    /// Accepts, completes connects and runs relays. Returns (progress, more).
    fn run_data(&mut self, ctx: &mut Ctx<'_>, budget: &mut Budget) -> (bool, bool) {
        let mut progress = false;
        let mut more = false;
        let ids: Vec<DataId> = self.data.iter().map(|c| c.id).collect();
        for id in ids {
            if self.broken.is_some() {
                break;
            }
            progress |= self.accept_data(ctx, id);
            progress |= self.complete_data_connect(ctx, id);
            let (p, m) = self.relay_data(ctx, id, budget);
            progress |= p;
            more |= m;
        }
        (progress, more)
    }

    /// Tells the core what the listener table handed over: each connection
    /// for its verdict, or the listener's failure.
    fn accept_data(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> bool {
        let mut progress = false;
        // Bounded by the table, which hands over a few per wakeup; the
        // verdict that keeps one clears the rest (`close_listener`).
        while let Some(arrival) = self.chan(id).and_then(|chan| chan.arrivals.pop_front()) {
            progress = true;
            match arrival {
                Arrival::Connection { stream, peer } => {
                    if let Some(chan) = self.chan(id) {
                        chan.accepted_pending_verdict = Some(stream);
                    }
                    self.tell(ctx, Input::Accepted { data: id, peer });
                    // Whatever the verdict did not keep is closed: a
                    // refusal, or no verdict at all.
                    if let Some(chan) = self.chan(id) {
                        chan.accepted_pending_verdict = None;
                    }
                }
                Arrival::AcceptFailed(error) => {
                    // The table logged it and closed the listener.
                    self.close_listener(ctx, id);
                    self.tell(ctx, Input::Failed { data: id, step: DataStep::Accept, error });
                    break;
                }
            }
        }
        progress
    }

    fn complete_data_connect(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> bool {
        // A dialed server leg sits where an accepted one would.
        let server_leg = self.complete_dialed_server_leg(ctx, id);
        let Some(chan) = chan_in(&mut self.data, id) else { return server_leg };
        if chan.outbound_connected {
            return server_leg;
        }
        let dialed = chan.dialed;
        let Some(leg) = chan.outbound.as_mut().filter(|l| l.ready.writable) else { return server_leg };
        // The source address the kernel gave the connect goes into the
        // transfer's record; a socket that cannot say it is not usable.
        let result = tproxy::connect_result(&leg.stream).and_then(|done| {
            if done {
                leg.stream.local_addr().map(Some)
            } else {
                Ok(None)
            }
        });
        match result {
            Ok(Some(local)) => {
                chan.outbound_connected = true;
                let input = if dialed {
                    Input::Dialed { data: id, leg: Side::Client, local }
                } else {
                    Input::Connected { data: id, local }
                };
                self.tell(ctx, input);
                true
            }
            Ok(None) => {
                leg.ready.writable = false;
                server_leg
            }
            Err(e) => {
                debug!(self.log, "data connect failed"; "data" => id.0, "error" => %e);
                if let Some(mut leg) = chan.outbound.take() {
                    ctx.deregister(&mut leg.stream, leg.token);
                }
                self.tell(ctx, Input::Failed { data: id, step: DataStep::Connect, error: e.kind() });
                true
            }
        }
    }

    /// Completes the connect of a dialed channel's server leg.
    fn complete_dialed_server_leg(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> bool {
        let Some(chan) = chan_in(&mut self.data, id).filter(|c| c.dialed && !c.accepted_connected) else {
            return false;
        };
        let Some(leg) = chan.accepted.as_mut().filter(|l| l.ready.writable) else { return false };
        let result = tproxy::connect_result(&leg.stream).and_then(|done| {
            if done {
                leg.stream.local_addr().map(Some)
            } else {
                Ok(None)
            }
        });
        match result {
            Ok(Some(local)) => {
                chan.accepted_connected = true;
                self.tell(ctx, Input::Dialed { data: id, leg: Side::Server, local });
                true
            }
            Ok(None) => {
                leg.ready.writable = false;
                false
            }
            Err(e) => {
                debug!(self.log, "data connect failed"; "data" => id.0, "leg" => "server", "error" => %e);
                if let Some(mut leg) = chan.accepted.take() {
                    ctx.deregister(&mut leg.stream, leg.token);
                }
                self.tell(ctx, Input::Failed { data: id, step: DataStep::Connect, error: e.kind() });
                true
            }
        }
    }

    /// Moves a bulk relay onto threads of its own (relay_threads.rs): once
    /// it has moved its first MiB both ways together, if it may move both
    /// ways and the process-wide cap allows. Its legs leave the event loop;
    /// the threads' eventfd takes the accepted leg's token, so the session
    /// wakes when they are done.
    fn maybe_promote(&mut self, ctx: &mut Ctx<'_>, id: DataId) {
        let Some(chan) = chan_in(&mut self.data, id) else { return };
        let eligible = chan.relay.as_ref().is_some_and(|r| {
            let (to_client, to_server) = r.counts();
            r.unrestricted() && to_client + to_server >= relay_threads::PROMOTE_AFTER
        });
        if !eligible || ctx.relay_threads == 0 {
            return;
        }
        let (Some(relay), Some(accepted), Some(outbound)) =
            (chan.relay.take(), chan.accepted.as_mut(), chan.outbound.as_mut())
        else {
            return;
        };
        let (client, server) = match chan.peer {
            Side::Client => (&mut *accepted, &mut *outbound),
            Side::Server => (&mut *outbound, &mut *accepted),
        };
        match ThreadedRelay::start(ctx.relay_threads, &client.stream, &server.stream, relay.into_pumps()) {
            Ok(threaded) => {
                let _ = ctx.registry.deregister(&mut client.stream);
                let _ = ctx.registry.deregister(&mut server.stream);
                let token = accepted.token;
                let done = threaded.done_fd();
                chan.threaded = Some(threaded);
                if let Err(error) =
                    ctx.registry.register(&mut mio::unix::SourceFd(&done), token, Interest::READABLE)
                {
                    // The session would never hear the end: give up on it,
                    // as on any failed registration.
                    self.broken = Some(RegisterError { role: Role::DataAccepted(id), error });
                    return;
                }
                debug!(self.log, "relay on threads"; "data" => id.0);
            }
            Err((why, pumps)) => {
                chan.relay = Some(Relay::from_pumps(Direction::Both, pumps));
                if let NotPromoted::Failed(e) = why {
                    warn!(self.log, "relay threads could not start; the event loop relays"; "data" => id.0, "error" => %e);
                }
            }
        }
    }

    fn relay_data(&mut self, ctx: &mut Ctx<'_>, id: DataId, budget: &mut Budget) -> (bool, bool) {
        let Some(chan) = self.chan(id) else { return (false, false) };
        if chan.relay_ended || !chan.outbound_connected || !chan.accepted_connected {
            return (false, false);
        }
        let (status, progress) = if let Some(threaded) = &chan.threaded {
            match threaded.status() {
                RelayStatus::Running { .. } => return (false, false),
                ended => (ended, true),
            }
        } else {
            let (Some(relay), Some(accepted), Some(outbound)) =
                (chan.relay.as_mut(), chan.accepted.as_mut(), chan.outbound.as_mut())
            else {
                return (false, false);
            };
            let (client, server) = match chan.peer {
                Side::Client => (accepted, outbound),
                Side::Server => (outbound, accepted),
            };
            let before = relay.counts();
            let status =
                relay.run(&client.stream, &mut client.ready, &server.stream, &mut server.ready, budget);
            metrics::get().relayed(before, relay.counts());
            (status, relay.counts() != before)
        };
        match status {
            RelayStatus::Running { more } => {
                self.maybe_promote(ctx, id);
                (progress, more)
            }
            RelayStatus::Done { to_client, to_server } => {
                chan.relay_ended = true;
                self.tell(ctx, Input::Relayed { data: id, to_client, to_server });
                (true, false)
            }
            RelayStatus::Failed { leg, error, to_client, to_server } => {
                chan.relay_ended = true;
                info!(
                    self.log, "data relay failed";
                    "data" => id.0, "leg" => ?leg, "error" => ?error,
                    "to_client" => to_client, "to_server" => to_server
                );
                // The relay armed both legs to reset; close them now, so
                // the far ends learn of the cut before any reply does.
                self.reset_data(ctx, id);
                self.tell(ctx, Input::RelayFailed { data: id, leg, error, to_client, to_server });
                (true, false)
            }
        }
    }
}

/// Finds a data channel while leaving the other fields of `Conn` borrowable.
fn chan_in(data: &mut [DataChan], id: DataId) -> Option<&mut DataChan> {
    data.iter_mut().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_error_names_the_socket_and_the_event_loop_not_routing() {
        let e =
            RegisterError { role: Role::DataOutbound(DataId(3)), error: io::Error::from_raw_os_error(28) };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot register the outbound data connection with the event loop"),
            "{text}"
        );
        assert!(text.contains("max_user_watches"), "{text}");
        assert!(!text.contains("ip rule"), "{text}");
    }
}
