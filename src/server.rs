//! One event loop (`Worker`): its mio Poll, its control listeners, the
//! sessions it accepted with every socket of theirs, and its timer heap.
//! `--workers` runs several (`workers.rs`), each on its own thread; what
//! they share is in `workers::Shared`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::rules::RuleRef;
use ftpgate_proto::{AuditEvent, ControlEnds, PolicyStage, Session};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use slog::{debug, error, info, o, warn, Logger};

use crate::conn::{Conn, Ctx, Registration, SessionRef};
use crate::limits::{ClientKey, RateVerdict};
use crate::listeners::{Arrival, Handover};
use crate::logins;
use crate::tproxy::{self, TproxyError};
use crate::workers::{PauseCause, Shared, ACCEPT_PAUSE};

/// Another loop passed a data connection, or a drain began.
const WAKE: Token = Token(0);
/// `--data-path pinhole`: how often a loop reads its conntrack events
/// while it has pinholes open, and otherwise (the socket receives the
/// other loops' events too, and must not overflow). The event socket is
/// not in the poll set: it is read at every wakeup and at these ticks. A
/// wakeup for each event would cost the client's connect and close an
/// interprocessor interrupt each, since the kernel sends the event inside
/// those packets' processing; the session reads what it needs at its next
/// wakeup anyway (a command, a reply), and the ticks bound the rest.
const PINHOLE_TICK: Duration = Duration::from_millis(20);
const PINHOLE_TICK_IDLE: Duration = Duration::from_millis(250);
/// `--data-path pinhole`: how often a loop asks the kernel about all its
/// running pinhole connections, for the ends no session input asked for
/// (a transfer record, a client gone, a drain): a lookup each, so not at
/// every tick.
const PINHOLE_POLL: Duration = Duration::from_millis(250);
/// Control listeners use tokens 1..FIRST_DYNAMIC; sockets of sessions use
/// FIRST_DYNAMIC + their registration key.
const FIRST_DYNAMIC: usize = 1024;
/// Data listeners use FIRST_DATA_LISTENER + their key in the listener
/// table: the table owns them, not a session.
pub(crate) const FIRST_DATA_LISTENER: usize = usize::MAX / 2;

/// Why the daemon could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    Listen(TproxyError),
    Setup(&'static str, io::Error),
    Pinhole(crate::pinhole::Unavailable),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Listen(e) => write!(f, "control listener: {e}"),
            Self::Setup(what, e) => write!(f, "{what}: {e}"),
            Self::Pinhole(e) => write!(f, "{e}"),
        }
    }
}

struct ControlListener {
    listener: TcpListener,
    addr: SocketAddr,
    family: &'static str,
    ready: bool,
}

/// A loop's Poll and control listeners, bound before any thread starts
/// (and before the privileges are dropped).
pub(crate) struct Loop {
    index: usize,
    poll: Poll,
    listeners: Vec<ControlListener>,
    pinholes: Option<crate::pinhole::Pinholes>,
}

impl Loop {
    /// Binds this loop's control listener on every address. Each loop has
    /// its own socket (SO_REUSEPORT): the kernel spreads the connections.
    /// With `kernel_data_path`, also opens this loop's conntrack sockets.
    pub(crate) fn bind(
        index: usize,
        listen: &[SocketAddr],
        kernel_data_path: bool,
        log: &Logger,
    ) -> Result<Self, StartError> {
        let poll = Poll::new().map_err(|e| StartError::Setup("epoll", e))?;
        let mut listeners = Vec::new();
        for (i, &addr) in listen.iter().enumerate() {
            let family = control_family(addr, listen);
            let mut listener = tproxy::listen_control(addr, 1024, family).map_err(StartError::Listen)?;
            poll.registry()
                .register(&mut listener, Token(1 + i), Interest::READABLE)
                .map_err(|e| StartError::Setup("registering a listener", e))?;
            let addr = listener.local_addr().unwrap_or(addr);
            debug!(log, "control listener bound"; "worker" => index, "addr" => %addr);
            listeners.push(ControlListener { listener, addr, family: family.describe(addr), ready: false });
        }
        // The event socket is not in the poll set (see PINHOLE_TICK).
        let pinholes = if kernel_data_path {
            let p = crate::pinhole::Pinholes::open().map_err(StartError::Pinhole)?;
            debug!(log, "conntrack event socket"; "worker" => index, "receive_buffer" => p.event_buffer());
            Some(p)
        } else {
            None
        };
        Ok(Self { index, poll, listeners, pinholes })
    }

    /// The addresses listened on, and what each takes.
    pub(crate) fn listening(&self) -> impl Iterator<Item = (SocketAddr, &'static str)> + '_ {
        self.listeners.iter().map(|l| (l.addr, l.family))
    }

    /// A handle on this loop's Poll for the data listener table.
    pub(crate) fn registry(&self) -> io::Result<Registry> {
        self.poll.registry().try_clone()
    }

    pub(crate) fn waker(&self) -> Result<Waker, StartError> {
        Waker::new(self.poll.registry(), WAKE).map_err(|e| StartError::Setup("eventfd", e))
    }
}

/// One event loop: the sessions it accepted, with their data channels.
pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    listeners: Vec<ControlListener>,
    conns: Slab<Conn>,
    regs: Slab<Registration>,
    timers: crate::timers::Timers,
    dead: Vec<usize>,
    again: Vec<usize>,
    scratch: Vec<u8>,
    /// Empty pipes kept for the next relays of this loop.
    pipes: crate::relay::PipePool,
    shared: Arc<Shared>,
    log: Logger,
    accept_paused_until: Option<Instant>,
    drain_until: Option<Instant>,
    /// The `Shared::policy_epoch` this loop's sessions follow.
    policy_epoch: u64,
    /// The kernel data path, with `--data-path pinhole`: each loop has its
    /// own sockets and its own pinholes (events of the others' are not
    /// in its book, and are ignored).
    pinholes: Option<crate::pinhole::Pinholes>,
    /// When `pinhole_ends` next asks about every running connection.
    next_pinhole_poll: Option<Instant>,
    /// When a loop with no pinhole open next empties its event socket.
    next_idle_event_read: Option<Instant>,
}

impl Worker {
    pub(crate) fn new(bound: Loop, shared: Arc<Shared>, log: &Logger) -> Self {
        let Loop { index, poll, listeners, pinholes } = bound;
        Self {
            index,
            poll,
            listeners,
            conns: Slab::new(),
            regs: Slab::new(),
            timers: Default::default(),
            dead: Vec::new(),
            again: Vec::new(),
            scratch: vec![0; 16 * 1024],
            pipes: crate::relay::PipePool::default(),
            shared,
            log: log.new(o!("worker" => index)),
            accept_paused_until: None,
            drain_until: None,
            policy_epoch: 0,
            pinholes,
            next_pinhole_poll: None,
            next_idle_event_read: None,
        }
    }

    /// The descriptors this loop opened before its thread started and
    /// that no other thread uses: its epoll, its control listeners, its
    /// conntrack sockets. Every other descriptor table closes its copies
    /// (`fdtable`).
    pub(crate) fn own_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.poll.as_raw_fd()];
        fds.extend(self.control_listener_fds());
        fds.extend(self.pinholes.iter().flat_map(|p| p.raw_fds()));
        fds
    }

    /// Its control listeners (among `own_fds`).
    pub(crate) fn control_listener_fds(&self) -> Vec<RawFd> {
        self.listeners.iter().map(|l| l.listener.as_raw_fd()).collect()
    }

    /// Runs until the drain asked for by a signal is over: every session
    /// of the process has ended (a data listener of this loop may serve
    /// another loop's session until then), or the deadline passed.
    pub(crate) fn run(mut self) -> io::Result<()> {
        if let Err(e) = tproxy::open_route_socket() {
            warn!(self.log, "cannot open a route socket; whether a destination is the gateway itself is told by a bind (wrong with ip_nonlocal_bind)";
                "error" => %e, "hint" => "allow AF_NETLINK");
        }
        let result = self.serve();
        // The data listeners this loop opened are in its descriptor table
        // (`fdtable`): no other thread can close them.
        self.shared.data_listeners.lock().close_all_of(self.index);
        result
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut wake = self.timers.next();
            let quiet_at = self.shared.pause_quiet_at();
            let pinhole_tick = self
                .pinholes
                .as_ref()
                .map(|p| now + if p.open_count() > 0 { PINHOLE_TICK } else { PINHOLE_TICK_IDLE });
            let pipes_expire = self.pipes.expire(now);
            for t in [self.accept_paused_until, self.drain_until, quiet_at, pinhole_tick, pipes_expire]
                .into_iter()
                .flatten()
            {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let backlog = self.accept_paused_until.is_none() && self.listeners.iter().any(|l| l.ready);
            let data_backlog = self.shared.data_listeners.lock().has_ready(self.index);
            let timeout = if self.again.is_empty() && !backlog && !data_backlog {
                wake.map(|w| w.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let mut dirty = std::mem::take(&mut self.again);
            // First, so that a session reads a channel's end before the
            // command the client sent after it (a PASV waits for it).
            dirty.extend(self.pinhole_events(now));
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKE => woken = true,
                    token if token.0 >= FIRST_DATA_LISTENER => {
                        self.shared.data_listeners.lock().on_event(self.index, token)
                    }
                    Token(t) if t < FIRST_DYNAMIC => {
                        if let Some(l) = self.listeners.get_mut(t - 1) {
                            l.ready = true;
                        }
                    }
                    Token(t) => {
                        let Some(reg) = self.regs.get(t - FIRST_DYNAMIC) else { continue };
                        if !reg.live {
                            continue;
                        }
                        let (key, role) = (reg.conn, reg.role);
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.on_event(role, event);
                            dirty.push(key);
                        }
                    }
                }
            }
            if woken {
                if let (None, Some(until)) = (self.drain_until, self.shared.drain_requested()) {
                    self.drain(until, now);
                }
                self.follow_policy(now);
                let mail = self.take_mail();
                dirty.extend(self.deliver(mail));
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            self.shared.end_pause_episode(now, &self.log);
            dirty.extend(self.accept(now));
            dirty.extend(self.hand_over_data());
            dirty.extend(self.timers.expired(now));
            dirty.sort_unstable();
            dirty.dedup();
            let ended = self.pinhole_ends(&dirty, now);
            if !ended.is_empty() {
                dirty.extend(ended);
                dirty.sort_unstable();
                dirty.dedup();
            }
            for key in dirty {
                self.drive(key, now);
            }
            let data_listeners = self.shared.data_listeners.lock().len();
            crate::metrics::get().data_listeners_open(data_listeners);
            for key in self.dead.drain(..) {
                self.regs.try_remove(key);
            }
            if let Some(until) = self.drain_until {
                if self.shared.sessions() == 0 {
                    debug!(self.log, "event loop drained");
                    return Ok(());
                }
                if until <= now {
                    if !self.conns.is_empty() {
                        warn!(self.log, "drain deadline passed; closing sessions"; "sessions" => self.conns.len());
                    }
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        let conn = self.conns.remove(key);
                        self.retire(conn, now);
                    }
                    return Ok(());
                }
            }
        }
    }

    fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        Ctx {
            registry: self.poll.registry(),
            regs: &mut self.regs,
            dead: &mut self.dead,
            scratch: &mut self.scratch,
            now,
            first_token: FIRST_DYNAMIC,
            data_channels: &self.shared.data_channels,
            relay_threads: self.shared.relay_threads,
            worker: self.index,
            listeners: &self.shared.data_listeners,
            logins: &self.shared.logins,
            pinholes: self.pinholes.as_mut(),
            pipes: &mut self.pipes,
        }
    }

    /// Hands the kernel's reports on this loop's pinholes to their
    /// sessions; returns the sessions to drive.
    fn pinhole_events(&mut self, now: Instant) -> Vec<usize> {
        let Some(pinholes) = self.pinholes.as_mut() else { return Vec::new() };
        let open = pinholes.open_count();
        // With no pinhole open nothing in the socket is this loop's: it
        // is only emptied, at the idle tick, so that the other loops'
        // events do not pile up (`open_pinhole` empties it first too).
        // A read at every wakeup of a session without a data channel
        // would find nothing.
        if open == 0 {
            if self.next_idle_event_read.is_some_and(|t| now < t) {
                return Vec::new();
            }
            self.next_idle_event_read = Some(now + PINHOLE_TICK_IDLE);
        }
        let (events, lost) = pinholes.read_events();
        match lost {
            Some(e) if open > 0 => {
                warn!(self.log, "conntrack events lost; transfers they ended are logged at session end"; "error" => %e)
            }
            // Only other loops' events could have been lost.
            Some(e) => debug!(self.log, "conntrack events lost while no pinhole was open"; "error" => %e),
            None => {}
        }
        self.tell_kernel_events(events)
    }

    /// Hands kernel reports to the sessions they are about; returns those.
    fn tell_kernel_events(&mut self, events: Vec<crate::pinhole::Event>) -> Vec<usize> {
        let mut keys = Vec::new();
        for event in events {
            let key = event.session();
            if let Some(conn) = self.conns.get_mut(key) {
                conn.kernel_event(event);
                keys.push(key);
            }
        }
        keys
    }

    /// Asks the kernel whether the running pinhole connections of the
    /// sessions about to run (`dirty`, sorted) have ended, so that each
    /// reads its channel's end before what came after it: a command, or
    /// the reply to a PASV sent after the transfer (its 227 opens the next
    /// channel, and one per session runs at a time). Every `PINHOLE_POLL`,
    /// those of all sessions. Returns the sessions told of an end.
    fn pinhole_ends(&mut self, dirty: &[usize], now: Instant) -> Vec<usize> {
        let Some(pinholes) = self.pinholes.as_mut() else { return Vec::new() };
        if pinholes.running_count() == 0 {
            return Vec::new();
        }
        let all = self.next_pinhole_poll.is_none_or(|t| t <= now);
        if all {
            self.next_pinhole_poll = Some(now + PINHOLE_POLL);
        }
        let ended = pinholes.poll_ends(|session| all || dirty.binary_search(&session).is_ok());
        self.tell_kernel_events(ended)
    }

    /// Accepts on this loop's ready data listeners and hands each
    /// connection to the session that expects its peer: here, or in the
    /// loop that owns it. Returns the sessions of this loop to drive.
    fn hand_over_data(&mut self) -> Vec<usize> {
        let handovers = {
            let mut table = self.shared.data_listeners.lock();
            if !table.has_ready(self.index) {
                return Vec::new();
            }
            table.accept_ready(self.index, &self.log)
        };
        let (mine, theirs): (Vec<Handover>, Vec<Handover>) =
            handovers.into_iter().partition(|h| h.channel.worker == self.index);
        for handover in theirs {
            debug!(
                self.log, "data connection passed to its session's event loop";
                "to_worker" => handover.channel.worker, "session" => handover.channel.serial,
                "data" => handover.channel.data.0
            );
            let (worker, serial, data) =
                (handover.channel.worker, handover.channel.serial, handover.channel.data.0);
            if let Err(e) = self.shared.post(handover) {
                error!(
                    self.log, "cannot pass a data connection to its session's event loop; closed";
                    "to_worker" => worker, "session" => serial, "data" => data, "error" => %e
                );
            }
        }
        self.deliver(mine)
    }

    /// What other loops accepted for this loop's sessions, less the
    /// connections whose channel stopped expecting one meanwhile (only
    /// this loop's sessions forget their expectations, so the answer holds
    /// until they are delivered).
    fn take_mail(&self) -> Vec<Handover> {
        let mut mail = self.shared.take_mail(self.index);
        let mut table = self.shared.data_listeners.lock();
        table.close_orphans(self.index);
        if !mail.is_empty() {
            mail.retain(|h| matches!(h.arrival, Arrival::AcceptFailed(_)) || table.expects(h.channel));
        }
        mail
    }

    /// Gives each connection to its session. Returns the sessions to drive.
    fn deliver(&mut self, handovers: Vec<Handover>) -> Vec<usize> {
        let mut keys = Vec::new();
        for handover in handovers {
            let key = handover.channel.session;
            // A session that is gone took its expectations with it
            // (`abort`); its connection closes here if one slipped by
            // (from another loop, while the session ended).
            match self.conns.get_mut(key) {
                Some(conn) if conn.serial() == handover.channel.serial => {
                    conn.hand_over(handover);
                    keys.push(key);
                }
                _ => debug!(
                    self.log, "data connection for a session that has ended: closed";
                    "session" => handover.channel.serial, "data" => handover.channel.data.0
                ),
            }
        }
        keys
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let more = conn.drive(&mut self.ctx(now));
        if conn.finished() {
            // The slot is free again only now, after this session's tokens
            // were retired.
            return self.retire(conn, now);
        }
        self.timers.arm(key, conn.deadline());
        let again = self.conns.vacant_key();
        debug_assert_eq!(again, key, "slab reinsert must reuse the key");
        self.conns.insert(conn);
        if more {
            self.again.push(key);
        }
    }

    /// Releases every socket of a session taken out of the slab.
    fn retire(&mut self, mut conn: Conn, now: Instant) {
        conn.abort(&mut self.ctx(now));
        crate::metrics::get().session_closed();
        self.timers.arm(conn.key(), None);
        self.shared.forget_client(conn.client_ip);
        self.shared.release_session();
    }

    /// A signal asked every loop to drain: stop accepting (the listener
    /// sockets close here) and tell every session.
    fn drain(&mut self, until: Instant, now: Instant) {
        debug!(self.log, "event loop draining"; "sessions" => self.conns.len());
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.listener);
        }
        self.drain_until = Some(until);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(mut conn) = self.conns.try_remove(key) {
                conn.drain(&mut self.ctx(now));
                self.conns.insert(conn);
                self.again.push(key);
            }
        }
    }

    /// A reload changed the policy: this loop's open sessions follow it
    /// from their next command on.
    fn follow_policy(&mut self, now: Instant) {
        let epoch = self.shared.policy_epoch();
        if epoch == self.policy_epoch {
            return;
        }
        self.policy_epoch = epoch;
        let policy = self.shared.settings().config.policy.clone();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(mut conn) = self.conns.try_remove(key) {
                conn.policy_changed(&mut self.ctx(now), &policy);
                self.conns.insert(conn);
                self.again.push(key);
            }
        }
    }

    /// Accepts new control connections while under the session cap.
    fn accept(&mut self, now: Instant) -> Vec<usize> {
        let mut started = Vec::new();
        if self.accept_paused_until.is_some() || self.drain_until.is_some() {
            return started;
        }
        for i in 0..self.listeners.len() {
            // Bounded per wakeup; a listener left ready is retried next round.
            for _ in 0..64 {
                if self.accept_paused_until.is_some() {
                    return started;
                }
                if !self.listeners[i].ready {
                    break;
                }
                // A place under the cap is taken before accept(): loops
                // racing for the last one cannot both get it.
                if !self.shared.reserve_session() {
                    // Leave the rest in the kernel backlog until a session ends.
                    self.pause_accept(PauseCause::SessionCap, None, now);
                    return started;
                }
                match self.listeners[i].listener.accept() {
                    Ok((stream, peer)) => match self.start_session(i, stream, peer, now) {
                        Some(key) => started.push(key),
                        None => self.shared.release_session(),
                    },
                    Err(e) => {
                        self.shared.release_session();
                        match e.kind() {
                            io::ErrorKind::WouldBlock => self.listeners[i].ready = false,
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                            _ => {
                                crate::metrics::get()
                                    .error(crate::metrics::Channel::Control, crate::metrics::Step::Accept);
                                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                                self.pause_accept(PauseCause::AcceptFailed, Some(&e), now);
                                return started;
                            }
                        }
                    }
                }
            }
        }
        started
    }

    /// Pauses this loop's accept() for `ACCEPT_PAUSE`; the episode is the
    /// process's (one record however many loops pause).
    fn pause_accept(&mut self, cause: PauseCause, error: Option<&io::Error>, now: Instant) {
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        self.shared.pause_accept(cause, error, now, &self.log);
    }

    fn start_session(
        &mut self,
        listener: usize,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<usize> {
        let id = self.shared.next_serial();
        // On a dual-stack listener an IPv4 client is ::ffff:a.b.c.d: as
        // IPv4 from here on (per-client caps, the core, every socket).
        let peer = tproxy::canonical(peer);
        let server = match tproxy::original_dst(&stream) {
            Ok(addr) => addr,
            Err(e) => {
                warn!(self.log, "no original destination"; "client" => %peer, "error" => %e);
                return None;
            }
        };
        let log =
            self.log.new(o!("session" => id, "client" => peer.to_string(), "server" => server.to_string()));
        // A client that connected to the gateway's own port was not
        // redirected: proxying it would connect the gateway to itself.
        if server.port() == self.listeners[listener].addr.port() {
            return refuse(&log, stream, Refusal::NotRedirected, true);
        }
        let (own, unasked) = tproxy::is_local_address(server.ip());
        if let Some(e) = unasked {
            warn!(
                log, "cannot ask the routing table whether a destination is the gateway itself; a bind decides";
                "error" => %e, "hint" => "allow AF_NETLINK; with net.ipv4.ip_nonlocal_bind=1 the bind finds every address local"
            );
        }
        if own {
            return refuse(&log, stream, Refusal::GatewayItself, true);
        }
        let settings = self.shared.settings();
        // The policy first: a network the operator denies is refused by
        // its rule, whether or not it is also cooling down.
        if let Err(rule) = settings.config.policy.admit(peer.ip(), server) {
            return refuse_by_policy(&log, stream, rule);
        }
        if self.shared.logins().cooling_down(peer.ip(), now) {
            // Logged once, when the cool-down started; each session it
            // turns away is counted under its rule and logged at debug.
            return refuse(&log, stream, Refusal::LoginCooldown, false);
        }
        if let Some(rate) = self.shared.session_rate().as_mut() {
            let client = ClientKey::of(peer.ip());
            let limit = rate.rate();
            match rate.check(client, now) {
                RateVerdict::Allow { after_refusals: None } => {}
                RateVerdict::Allow { after_refusals: Some(refused) } => info!(
                    log, "session rate per client: sessions allowed again";
                    "client_key" => %client, "refused" => refused
                ),
                RateVerdict::Refuse { first } => {
                    if first {
                        warn!(
                            log, "session rate per client exceeded; refusing until the client slows down";
                            "client_key" => %client, "rate_per_second" => limit.per_second,
                            "burst" => limit.burst, "rule" => "ATTACKS.md 22"
                        );
                    }
                    return refuse(&log, stream, Refusal::SessionRate, false);
                }
                RateVerdict::Untracked { first } => {
                    if first {
                        warn!(
                            log, "session rate table full; new clients go unmetered";
                            "tracked" => rate.tracked()
                        );
                    }
                }
            }
        }
        if !self.shared.admit_client(peer.ip(), settings.max_sessions_per_client) {
            return refuse(&log, stream, Refusal::TooManyFromClient, true);
        }
        info!(log, "session start");
        let ends = ControlEnds { client: peer, server };
        let connect_timeout = settings.config.data_connect_timeout;
        let session = Session::new(settings.config, ends, now);
        let key = self.conns.vacant_key();
        let mut ctx = self.ctx(now);
        match Conn::start(
            SessionRef { key, serial: id },
            log.clone(),
            session,
            stream,
            ends,
            connect_timeout,
            &mut ctx,
        ) {
            Ok(mut conn) => {
                // The accept took the last descriptor: stop accepting, as
                // when accept() itself fails, or the next one would too.
                if let Some(e) = conn.starved.take() {
                    self.pause_accept(PauseCause::AcceptFailed, Some(&e), now);
                }
                self.conns.insert(conn);
                crate::metrics::get().session_started();
                Some(key)
            }
            Err(e) => {
                error!(log, "session set-up failed"; "error" => %e);
                crate::metrics::get().error(crate::metrics::Channel::Control, crate::metrics::Step::Register);
                crate::audit::session_ended_by_daemon(&log, "event loop registration failed", Duration::ZERO);
                self.shared.forget_client(peer.ip());
                None
            }
        }
    }
}

/// What an IPv6 control listener takes: IPv6 only when an IPv4 listener
/// has the same port (`--listen 0.0.0.0:2121 --listen [::]:2121`, where a
/// dual-stack `[::]:2121` would collide with the IPv4 one: EADDRINUSE),
/// both families otherwise (a single `--listen [::]:2121`).
fn control_family(addr: SocketAddr, all: &[SocketAddr]) -> tproxy::Family {
    if !addr.is_ipv6() {
        return tproxy::Family::AsGiven;
    }
    let v4_beside = all.iter().any(|a| a.is_ipv4() && a.port() == addr.port());
    if v4_beside {
        tproxy::Family::V6Only
    } else {
        tproxy::Family::DualStack
    }
}

/// Why a control connection is turned away before a session starts.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// It reached the TPROXY port directly: proxying it would connect the
    /// gateway to itself.
    NotRedirected,
    /// Its destination is one of the gateway's own addresses (ATTACKS.md 32).
    GatewayItself,
    /// The per-client session cap (ATTACKS.md 22).
    TooManyFromClient,
    /// The per-client rate of new sessions (ATTACKS.md 22).
    SessionRate,
    /// A cool-down after too many failed logins (RFC 2577 §5, ATTACKS.md 33).
    LoginCooldown,
}

impl Refusal {
    /// A stable short name for audit records (like `Violation::rule`), and
    /// the ATTACKS.md case, if any.
    fn rule(self) -> (&'static str, Option<u8>) {
        match self {
            Self::NotRedirected => ("not-redirected", None),
            Self::GatewayItself => ("gateway-itself", Some(32)),
            Self::TooManyFromClient => ("per-client-cap", Some(22)),
            Self::SessionRate => ("per-client-rate", Some(22)),
            Self::LoginCooldown => ("login-cooldown", Some(33)),
        }
    }
}

/// The access rules refuse every user of this connection: one audit
/// record naming the rule, a best-effort 421, and the server never hears
/// of it.
fn refuse_by_policy(log: &Logger, mut stream: mio::net::TcpStream, rule: RuleRef) -> Option<usize> {
    let event = AuditEvent::PolicyDenied {
        stage: PolicyStage::Connection,
        rule: rule.to_string(),
        user: None,
        verb: None,
        profile: None,
    };
    crate::audit::record(log, &event);
    let _ = io::Write::write(&mut stream, b"421 ftpgate: connection denied by policy.\r\n");
    None
}

/// Logs the refusal and tells the client with a best-effort 421. A refusal
/// that repeats within an episode (`loud` false) is logged at debug only:
/// the episode has its own record.
fn refuse(log: &Logger, mut stream: mio::net::TcpStream, why: Refusal, loud: bool) -> Option<usize> {
    let (message, reply): (&str, &[u8]) = match why {
        Refusal::NotRedirected => (
            "refused: connection was not redirected by TPROXY",
            b"421 ftpgate: this port only takes redirected connections.\r\n",
        ),
        Refusal::GatewayItself => (
            "refused: the destination is the gateway itself",
            b"421 ftpgate: no FTP service on the gateway itself.\r\n",
        ),
        Refusal::TooManyFromClient => (
            "refused: too many sessions from this client",
            b"421 ftpgate: too many sessions from your address.\r\n",
        ),
        Refusal::SessionRate => (
            "refused: too many new sessions from this client",
            b"421 ftpgate: too many new sessions from your address; try again later.\r\n",
        ),
        Refusal::LoginCooldown => {
            ("refused: too many failed logins from this client", logins::REPLY_COOLING_DOWN)
        }
    };
    let (rule, attack) = why.rule();
    crate::metrics::get().session_refused(rule);
    if loud {
        warn!(log, "{}", message; "rule" => rule, "attack" => crate::audit::attack(attack));
    } else {
        debug!(log, "{}", message; "rule" => rule, "attack" => crate::audit::attack(attack));
    }
    let _ = io::Write::write(&mut stream, reply);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn control_family_v6_beside_v4_same_port_is_v6_only() {
        let all = addrs(&["0.0.0.0:2121", "[::]:2121"]);
        assert_eq!(control_family(all[0], &all), tproxy::Family::AsGiven);
        assert_eq!(control_family(all[1], &all), tproxy::Family::V6Only);
    }

    #[test]
    fn control_family_v6_alone_or_other_port_is_dual_stack() {
        let all = addrs(&["[::]:2121"]);
        assert_eq!(control_family(all[0], &all), tproxy::Family::DualStack);
        let all = addrs(&["0.0.0.0:2121", "[::]:2122"]);
        assert_eq!(control_family(all[1], &all), tproxy::Family::DualStack);
    }
}
