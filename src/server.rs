//! The event loop: one mio `Poll`, the control listeners, every session's
//! sockets, the timer heap and graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpgate_proto::{Config, ControlEnds, Session};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;
use slog::{error, info, o, warn, Logger};

use crate::conn::{Conn, Ctx, Registration};
use crate::logins::{self, LoginFailures};
use crate::tproxy::{self, TproxyError};

const SIGNALS: Token = Token(0);
/// Control listeners use tokens 1..FIRST_DYNAMIC; sockets of sessions use
/// FIRST_DYNAMIC + their registration key.
const FIRST_DYNAMIC: usize = 1024;
/// When accept() fails for lack of descriptors, or the session cap is
/// reached, wait this long instead of spinning on a listener that stays
/// readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Why the daemon could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    Listen(TproxyError),
    Setup(&'static str, io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Listen(e) => write!(f, "control listener: {e}"),
            Self::Setup(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

pub(crate) struct Options {
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) config: Arc<Config>,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_client: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) login_failures: logins::Limits,
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
    /// Open sessions per client address (ATTACKS.md 22).
    per_client: HashMap<IpAddr, usize>,
    accept_paused_until: Option<Instant>,
    drain_until: Option<Instant>,
    /// Failed logins per client address (RFC 2577 §5).
    logins: LoginFailures,
}

impl Server {
    pub(crate) fn new(opts: Options, log: Logger) -> Result<Self, StartError> {
        // Signals arrive as readable events: no handler races with the loop.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(|e| StartError::Setup("blocking signals", e.into()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError::Setup("signalfd", e.into()))?;
        let poll = Poll::new().map_err(|e| StartError::Setup("epoll", e))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| StartError::Setup("registering the signalfd", e))?;
        let mut listeners = Vec::new();
        for (i, &addr) in opts.listen.iter().enumerate() {
            let mut listener = tproxy::listen(addr, 1024).map_err(StartError::Listen)?;
            poll.registry()
                .register(&mut listener, Token(1 + i), Interest::READABLE)
                .map_err(|e| StartError::Setup("registering a listener", e))?;
            let addr = listener.local_addr().unwrap_or(addr);
            info!(log, "listening"; "addr" => %addr);
            listeners.push(ControlListener { listener, addr, ready: false });
        }
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
            accept_paused_until: None,
            drain_until: None,
            logins,
        })
    }

    /// Runs until a signal and the drain that follows it are over.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut wake = self.timers.next();
            for t in [self.accept_paused_until, self.drain_until].into_iter().flatten() {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let backlog = self.accept_paused_until.is_none() && self.listeners.iter().any(|l| l.ready);
            let timeout = if self.again.is_empty() && !backlog {
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
            dirty.extend(self.accept(now));
            dirty.extend(self.timers.expired(now));
            dirty.sort_unstable();
            dirty.dedup();
            for key in dirty {
                self.drive(key, now);
            }
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
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let more = conn.drive(&mut self.ctx(now));
        let failures = conn.take_login_failures();
        if let Some(c) = self.logins.failed(conn.client_ip, failures, now) {
            warn!(
                conn.log, "failed logins: refusing new sessions from this client";
                "failures" => c.failures, "cooldown_s" => c.cooldown.as_secs()
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
            got = Some(info.ssi_signo);
        }
        let Some(signo) = got else { return };
        if self.drain_until.is_some() {
            return;
        }
        info!(self.log, "signal: draining"; "signal" => signo, "sessions" => self.conns.len());
        // Stop accepting at once: the listener sockets close here.
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.listener);
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

    /// Accepts new control connections while under the session cap.
    fn accept(&mut self, now: Instant) -> Vec<usize> {
        let mut started = Vec::new();
        if self.accept_paused_until.is_some() || self.drain_until.is_some() {
            return started;
        }
        for i in 0..self.listeners.len() {
            // Bounded per wakeup; a listener left ready is retried next round.
            for _ in 0..64 {
                if !self.listeners[i].ready {
                    break;
                }
                if self.conns.len() >= self.opts.max_sessions {
                    // Leave the rest in the kernel backlog until a session ends.
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
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
                        // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                        error!(self.log, "accept failed; pausing"; "error" => %e);
                        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                        return started;
                    }
                }
            }
        }
        started
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
            return refuse(&log, stream, Refusal::NotRedirected);
        }
        if tproxy::is_local_address(server.ip()) {
            return refuse(&log, stream, Refusal::GatewayItself);
        }
        if self.logins.cooling_down(peer.ip(), now) {
            // Logged once, when the cool-down started.
            let mut stream = stream;
            let _ = io::Write::write(&mut stream, logins::REPLY_COOLING_DOWN);
            return None;
        }
        let count = self.per_client.entry(peer.ip()).or_insert(0);
        if *count >= self.opts.max_sessions_per_client {
            return refuse(&log, stream, Refusal::TooManyFromClient);
        }
        *count += 1;
        info!(log, "session start");
        let ends = ControlEnds { client: peer, server };
        let session = Session::new(self.opts.config.clone(), ends, now);
        let key = self.conns.vacant_key();
        let connect_timeout = self.opts.config.data_connect_timeout;
        let mut ctx = self.ctx(now);
        match Conn::start(key, log.clone(), session, stream, ends, connect_timeout, &mut ctx) {
            Ok(conn) => {
                self.conns.insert(conn);
                Some(key)
            }
            Err(e) => {
                error!(log, "session set-up failed"; "error" => %e);
                self.forget_client(peer.ip());
                None
            }
        }
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
}

/// Logs the refusal and tells the client with a best-effort 421.
fn refuse(log: &Logger, mut stream: mio::net::TcpStream, why: Refusal) -> Option<usize> {
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
    };
    warn!(log, "{}", message);
    let _ = io::Write::write(&mut stream, reply);
    None
}
