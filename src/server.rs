//! The event loop: one mio `Poll`, the control listeners, every session's
//! sockets, the timer heap and graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::rules::RuleRef;
use ftpgate_proto::{AuditEvent, Config, ControlEnds, PolicyStage, Session};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;
use slog::{debug, error, info, o, warn, Logger};

use crate::conn::{Conn, Ctx, Registration};
use crate::limits::{ClientKey, DataChannels, Rate, RateVerdict, SessionRate};
use crate::listeners::Listeners;
use crate::logins::{self, LoginFailures};
use crate::tproxy::{self, TproxyError};

const SIGNALS: Token = Token(0);
/// The conntrack event socket of the kernel data path (`--data-path pinhole`).
const PINHOLE_EVENTS: Token = Token(usize::MAX / 2 - 1);
/// Control listeners use tokens 1..FIRST_DYNAMIC; sockets of sessions use
/// FIRST_DYNAMIC + their registration key.
const FIRST_DYNAMIC: usize = 1024;
/// Data listeners use FIRST_DATA_LISTENER + their key in the listener
/// table: the table owns them, not a session.
const FIRST_DATA_LISTENER: usize = usize::MAX / 2;
/// When accept() fails for lack of descriptors, or the session cap is
/// reached, wait this long instead of spinning on a listener that stays
/// readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);
/// An episode of accept pauses ends when accept() has gone this long after
/// its last pause without another. Not at the first accept() that works:
/// out of descriptors, one accept() often gets the last one and the
/// session then fails to open its server socket, freeing it again, so
/// "works" and "fails" alternate at every pause.
const EPISODE_QUIET: Duration = Duration::from_secs(1);

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

pub(crate) struct Options {
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) config: Arc<Config>,
    pub(crate) max_sessions: usize,
    /// 0: no per-client cap.
    pub(crate) max_sessions_per_client: usize,
    /// New sessions per client address; a rate of 0 turns it off.
    pub(crate) session_rate: Rate,
    pub(crate) max_data_channels: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) login_failures: logins::Limits,
    /// SIGHUP: reads the configuration again.
    pub(crate) reloader: crate::config::Reloader,
}

/// Why accept() is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PauseCause {
    /// accept() failed (EMFILE, ENFILE, ENOBUFS, ENOMEM), or the server
    /// socket of the session it accepted found no descriptor.
    AcceptFailed,
    /// `--max-sessions` sessions are open.
    SessionCap,
}

/// A run of accept pauses with one cause: logged when it starts and when
/// accepting resumes, not at every pause (five a second).
#[derive(Debug)]
struct PauseEpisode {
    cause: PauseCause,
    since: Instant,
    /// When the last pause began.
    last: Instant,
    pauses: u64,
}

impl PauseEpisode {
    /// The episode is over if no pause begins before then.
    fn quiet_at(&self) -> Instant {
        self.last + ACCEPT_PAUSE + EPISODE_QUIET
    }
}

struct ControlListener {
    listener: TcpListener,
    addr: SocketAddr,
    ready: bool,
}

pub(crate) struct Server {
    poll: Poll,
    listeners: Vec<ControlListener>,
    signals: SignalFd,
    conns: Slab<Conn>,
    regs: Slab<Registration>,
    timers: crate::timers::Timers,
    dead: Vec<usize>,
    again: Vec<usize>,
    scratch: Vec<u8>,
    opts: Options,
    log: Logger,
    next_session: u64,
    /// Open sessions per client address (ATTACKS.md 22); empty while the
    /// per-client cap is off.
    per_client: HashMap<IpAddr, usize>,
    /// The per-client rate of new sessions; `None` while it is off.
    session_rate: Option<SessionRate>,
    data_channels: DataChannels,
    /// Foreign data listeners, shared by the sessions expecting a
    /// connection on the same (address, port).
    data_listeners: Listeners,
    accept_paused_until: Option<Instant>,
    pause_episode: Option<PauseEpisode>,
    drain_until: Option<Instant>,
    /// Failed logins per client address (RFC 2577 §5).
    logins: LoginFailures,
    /// The kernel data path, with `--data-path pinhole`.
    pinholes: Option<crate::pinhole::Pinholes>,
}

impl Server {
    pub(crate) fn new(opts: Options, log: Logger) -> Result<Self, StartError> {
        // Signals arrive as readable events: no handler races with the loop.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGHUP);
        mask.thread_block().map_err(|e| StartError::Setup("blocking signals", e.into()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError::Setup("signalfd", e.into()))?;
        let poll = Poll::new().map_err(|e| StartError::Setup("epoll", e))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| StartError::Setup("registering the signalfd", e))?;
        let mut listeners = Vec::new();
        for (i, &addr) in opts.listen.iter().enumerate() {
            let family = control_family(addr, &opts.listen);
            let mut listener = tproxy::listen_family(addr, 1024, family).map_err(StartError::Listen)?;
            poll.registry()
                .register(&mut listener, Token(1 + i), Interest::READABLE)
                .map_err(|e| StartError::Setup("registering a listener", e))?;
            let addr = listener.local_addr().unwrap_or(addr);
            info!(log, "listening"; "addr" => %addr, "family" => family.describe(addr));
            crate::metrics::get().control_listener_opened();
            listeners.push(ControlListener { listener, addr, ready: false });
        }
        let pinholes = if opts.config.kernel_data_path {
            let p = crate::pinhole::Pinholes::open().map_err(StartError::Pinhole)?;
            poll.registry()
                .register(&mut SourceFd(&p.fd()), PINHOLE_EVENTS, Interest::READABLE)
                .map_err(|e| StartError::Setup("registering the conntrack event socket", e))?;
            info!(log, "data path: kernel pinholes (conntrack expectations)");
            Some(p)
        } else {
            None
        };
        let session_rate = SessionRate::new(opts.session_rate);
        let data_channels = DataChannels::new(opts.max_data_channels);
        let logins = LoginFailures::new(opts.login_failures);
        Ok(Self {
            poll,
            listeners,
            signals,
            conns: Slab::new(),
            regs: Slab::new(),
            timers: Default::default(),
            dead: Vec::new(),
            again: Vec::new(),
            scratch: vec![0; 16 * 1024],
            opts,
            log,
            next_session: 1,
            per_client: HashMap::new(),
            session_rate,
            data_channels,
            data_listeners: Listeners::new(FIRST_DATA_LISTENER),
            accept_paused_until: None,
            pause_episode: None,
            drain_until: None,
            logins,
            pinholes,
        })
    }

    /// Runs until a signal and the drain that follows it are over.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut wake = self.timers.next();
            let quiet_at = self.pause_episode.as_ref().map(PauseEpisode::quiet_at);
            for t in [self.accept_paused_until, self.drain_until, quiet_at].into_iter().flatten() {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let backlog = self.accept_paused_until.is_none() && self.listeners.iter().any(|l| l.ready);
            let data_backlog = self.data_listeners.has_ready();
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
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(now),
                    PINHOLE_EVENTS => dirty.extend(self.pinhole_events()),
                    token if self.data_listeners.owns(token) => self.data_listeners.on_event(token),
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
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            self.end_pause_episode(now);
            dirty.extend(self.accept(now));
            dirty.extend(self.hand_over_data());
            dirty.extend(self.timers.expired(now));
            dirty.sort_unstable();
            dirty.dedup();
            for key in dirty {
                self.drive(key, now);
            }
            crate::metrics::get().data_listeners_open(self.data_listeners.len());
            for key in self.dead.drain(..) {
                self.regs.try_remove(key);
            }
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() {
                    info!(self.log, "drained; exiting");
                    return Ok(());
                }
                if until <= now {
                    warn!(self.log, "drain deadline passed; closing sessions"; "sessions" => self.conns.len());
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
            data_channels: &mut self.data_channels,
            listeners: &mut self.data_listeners,
            pinholes: self.pinholes.as_mut(),
        }
    }

    /// Hands the kernel's reports on pinholes to their sessions; returns
    /// the sessions to drive.
    fn pinhole_events(&mut self) -> Vec<usize> {
        let Some(pinholes) = self.pinholes.as_mut() else { return Vec::new() };
        let (events, lost) = pinholes.read_events();
        if let Some(e) = lost {
            warn!(self.log, "conntrack events lost; transfers they ended are logged at session end"; "error" => %e);
        }
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

    /// Accepts on the ready data listeners and hands each connection to
    /// the session that expects its peer. Returns the sessions to drive.
    fn hand_over_data(&mut self) -> Vec<usize> {
        if !self.data_listeners.has_ready() {
            return Vec::new();
        }
        let mut keys = Vec::new();
        for handover in self.data_listeners.accept_ready(self.poll.registry(), &self.log) {
            let key = handover.channel.session;
            // A session that is gone took its expectations with it
            // (`abort`); its connection closes here if one slipped by.
            if let Some(conn) = self.conns.get_mut(key) {
                conn.hand_over(handover);
                keys.push(key);
            }
        }
        keys
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let more = conn.drive(&mut self.ctx(now));
        let failures = conn.take_login_failures();
        if let Some(c) = self.logins.failed(conn.client_ip, failures, now) {
            warn!(
                conn.log, "failed logins: refusing new sessions from this client";
                "failures" => c.failures, "cooldown_s" => c.cooldown.as_secs(),
                "rule" => Refusal::LoginCooldown.rule().0,
                "attack" => crate::audit::attack(Refusal::LoginCooldown.rule().1)
            );
        }
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
        self.forget_client(conn.client_ip);
    }

    fn forget_client(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_client.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    fn on_signal(&mut self, now: Instant) {
        let mut got = None;
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGHUP as u32 {
                self.reload(now);
            } else {
                got = Some(info.ssi_signo);
            }
        }
        let Some(signo) = got else { return };
        if self.drain_until.is_some() {
            return;
        }
        info!(self.log, "signal: draining"; "signal" => signo, "sessions" => self.conns.len());
        crate::service::notify_stopping(&self.log);
        // Stop accepting at once: the listener sockets close here.
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.listener);
            crate::metrics::get().control_listener_closed();
        }
        self.drain_until = Some(now + self.opts.drain_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(mut conn) = self.conns.try_remove(key) {
                conn.drain(&mut self.ctx(now));
                self.conns.insert(conn);
                self.again.push(key);
            }
        }
    }

    /// SIGHUP: new sessions get the reloaded settings. Open sessions keep
    /// the rest of the `Config` they started with, but a changed policy
    /// reaches them too: it judges their next command (a running transfer
    /// is never cut).
    fn reload(&mut self, now: Instant) {
        let Some(new) = self.opts.reloader.reload(&self.log, self.conns.len()) else { return };
        if new.policy_changed {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if let Some(mut conn) = self.conns.try_remove(key) {
                    conn.policy_changed(&mut self.ctx(now), &new.core.policy);
                    self.conns.insert(conn);
                    self.again.push(key);
                }
            }
        }
        self.opts.config = new.core;
        self.opts.drain_timeout = new.drain_timeout;
        if new.session_rate != self.opts.session_rate {
            // A new table: clients start with a full burst at the new rate.
            self.opts.session_rate = new.session_rate;
            self.session_rate = SessionRate::new(new.session_rate);
        }
        if new.login_failures != self.opts.login_failures {
            self.opts.login_failures = new.login_failures;
            self.logins.set_limits(new.login_failures);
        }
        if new.max_sessions_per_client != self.opts.max_sessions_per_client {
            // The counts are kept only while the cap is on: count the open
            // sessions afresh, so that a cap turned on applies to them too.
            self.opts.max_sessions_per_client = new.max_sessions_per_client;
            self.per_client.clear();
            if new.max_sessions_per_client > 0 {
                for (_, conn) in self.conns.iter() {
                    *self.per_client.entry(conn.client_ip).or_insert(0) += 1;
                }
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
                if self.conns.len() >= self.opts.max_sessions {
                    // Leave the rest in the kernel backlog until a session ends.
                    self.pause_accept(PauseCause::SessionCap, None, now);
                    return started;
                }
                match self.listeners[i].listener.accept() {
                    Ok((stream, peer)) => {
                        if let Some(key) = self.start_session(i, stream, peer, now) {
                            started.push(key);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.listeners[i].ready = false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(e) => {
                        crate::metrics::get()
                            .error(crate::metrics::Channel::Control, crate::metrics::Step::Accept);
                        // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                        self.pause_accept(PauseCause::AcceptFailed, Some(&e), now);
                        return started;
                    }
                }
            }
        }
        started
    }

    /// Pauses accept() for `ACCEPT_PAUSE`. The first pause of an episode
    /// is logged; the others are only counted.
    fn pause_accept(&mut self, cause: PauseCause, error: Option<&io::Error>, now: Instant) {
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        if let Some(episode) = self.pause_episode.as_mut().filter(|e| e.cause == cause) {
            episode.pauses += 1;
            episode.last = now;
            return;
        }
        // Another cause: the old episode ends here, the new one begins.
        self.log_pause_episode_end();
        match (cause, error) {
            (PauseCause::AcceptFailed, Some(e)) => error!(
                self.log, "accept failed; pausing accepts until it works again";
                "error" => %e, "sessions" => self.conns.len(),
                "data_channels" => self.data_channels.open_now(),
                "hint" => "out of descriptors or memory: check RLIMIT_NOFILE, fs.file-max, --max-sessions"
            ),
            _ => warn!(
                self.log, "session cap reached; new clients wait in the backlog";
                "max_sessions" => self.opts.max_sessions
            ),
        }
        self.pause_episode = Some(PauseEpisode { cause, since: now, last: now, pauses: 1 });
    }

    /// Ends the pause episode once it has been quiet for `EPISODE_QUIET`.
    fn end_pause_episode(&mut self, now: Instant) {
        if self.pause_episode.as_ref().is_some_and(|e| e.quiet_at() <= now) {
            self.log_pause_episode_end();
        }
    }

    /// Closes the pause episode, if any, with its one closing record.
    fn log_pause_episode_end(&mut self) {
        let Some(episode) = self.pause_episode.take() else { return };
        let cause = match episode.cause {
            PauseCause::AcceptFailed => "accept failed",
            PauseCause::SessionCap => "session cap",
        };
        info!(
            self.log, "accept resumed";
            "cause" => cause, "pauses" => episode.pauses,
            "paused_ms" => (episode.last + ACCEPT_PAUSE).saturating_duration_since(episode.since).as_millis() as u64,
            "sessions" => self.conns.len()
        );
    }

    fn start_session(
        &mut self,
        listener: usize,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<usize> {
        let id = self.next_session;
        self.next_session += 1;
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
        if tproxy::is_local_address(server.ip()) {
            return refuse(&log, stream, Refusal::GatewayItself, true);
        }
        // The policy first: a network the operator denies is refused by
        // its rule, whether or not it is also cooling down.
        if let Err(rule) = self.opts.config.policy.admit(peer.ip(), server) {
            return refuse_by_policy(&log, stream, rule);
        }
        if self.logins.cooling_down(peer.ip(), now) {
            // Logged once, when the cool-down started; each session it
            // turns away is counted under its rule and logged at debug.
            return refuse(&log, stream, Refusal::LoginCooldown, false);
        }
        if let Some(rate) = self.session_rate.as_mut() {
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
        if self.opts.max_sessions_per_client > 0 {
            let count = self.per_client.entry(peer.ip()).or_insert(0);
            if *count >= self.opts.max_sessions_per_client {
                return refuse(&log, stream, Refusal::TooManyFromClient, true);
            }
            *count += 1;
        }
        info!(log, "session start");
        let ends = ControlEnds { client: peer, server };
        let session = Session::new(self.opts.config.clone(), ends, now);
        let key = self.conns.vacant_key();
        let connect_timeout = self.opts.config.data_connect_timeout;
        let mut ctx = self.ctx(now);
        match Conn::start(key, log.clone(), session, stream, ends, connect_timeout, &mut ctx) {
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
                self.forget_client(peer.ip());
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
