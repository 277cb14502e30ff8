//! One intercepted control connection: its sockets and its `ftp::Session`.
//!
//! The session decides everything; this file only executes its actions and
//! reports facts back, following the core's driving contract: feed one fact,
//! drain every action (facts those actions produce are queued and fed in
//! turn), write what is pending, re-arm the timer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use ftpgate_proto::{Action, ControlEnds, DataId, DataStep, Input, Session, Side};
use mio::net::{TcpListener, TcpStream};
use mio::{event::Source, Interest, Registry, Token};
use slab::Slab;
use slog::{debug, warn, Logger};

use crate::audit;
use crate::relay::{Readiness, Relay, RelayStatus};
use crate::tproxy::{self, TproxyError};

/// How long a closed session may take to flush its last reply to a peer
/// that does not read.
const LINGER: Duration = Duration::from_secs(5);

/// Backlog of a data listener: it accepts one connection (plus thieves).
const DATA_BACKLOG: i32 = 8;

/// Work bound per wakeup, so one busy session cannot starve the others.
const MAX_ROUNDS: usize = 32;

/// What a registered socket is to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Control(Side),
    DataListener(DataId),
    /// The leg accepted on the data listener.
    DataAccepted(DataId),
    /// The leg the gateway connected.
    DataOutbound(DataId),
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
}

impl Ctx<'_> {
    fn register<S: Source + ?Sized>(
        &mut self,
        conn: usize,
        source: &mut S,
        role: Role,
        interest: Interest,
    ) -> io::Result<Token> {
        let key = self.regs.insert(Registration { conn, role, live: true });
        let token = Token(key + self.first_token);
        if let Err(e) = self.registry.register(source, token, interest) {
            self.regs.remove(key);
            return Err(e);
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
    /// Read returned 0 or failed: no more reads.
    eof: bool,
    /// The core asked for `Shutdown`: flush, then close.
    closing: bool,
}

impl Control {
    fn new(leg: Option<Leg>, connecting: bool) -> Self {
        Self { leg, connecting, eof: false, closing: false }
    }
}

/// One data channel: a listener, then two legs and a relay.
#[derive(Debug)]
struct DataChan {
    id: DataId,
    /// The side that connects to the listener.
    peer: Side,
    listener: Option<(TcpListener, Token)>,
    listener_ready: bool,
    /// The connection accepted last, waiting for the core's verdict.
    candidate: Option<TcpStream>,
    accepted: Option<Leg>,
    outbound: Option<Leg>,
    outbound_connected: bool,
    relay: Option<Relay>,
    reported: bool,
}

pub(crate) struct Conn {
    key: usize,
    pub(crate) client_ip: std::net::IpAddr,
    pub(crate) log: Logger,
    session: Session,
    client: Control,
    server: Control,
    data: Vec<DataChan>,
    facts: VecDeque<Input<'static>>,
    close_by: Option<Instant>,
    /// The server connect must complete by then (the greeting may take
    /// longer: that deadline is the core's).
    connect_by: Option<Instant>,
}

impl Conn {
    /// Takes an accepted client connection and starts the foreign-source
    /// connect to the original destination.
    pub(crate) fn start(
        key: usize,
        log: Logger,
        session: Session,
        mut client: TcpStream,
        ends: ControlEnds,
        connect_timeout: Duration,
        ctx: &mut Ctx<'_>,
    ) -> io::Result<Self> {
        let _ = client.set_nodelay(true);
        // Clients send ABOR's Synch as urgent data; inline, it stays in the
        // stream where the core expects it (ftplib sends all of "ABOR\r\n"
        // urgent, so out-of-line its last byte would vanish).
        if let Err(e) = tproxy::set_urgent_inline(&client) {
            warn!(log, "SO_OOBINLINE failed"; "error" => %e);
        }
        let token = ctx.register(
            key,
            &mut client,
            Role::Control(Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = Self {
            key,
            client_ip: ends.client.ip(),
            log,
            session,
            client: Control::new(Some(Leg { stream: client, token, ready: Readiness::default() }), false),
            server: Control::new(None, false),
            data: Vec::new(),
            facts: VecDeque::new(),
            close_by: None,
            connect_by: Some(ctx.now + connect_timeout),
        };
        // The server sees the client's own address; the port is the kernel's
        // choice, as a NAT-free router would leave it to the client.
        let from = SocketAddr::new(ends.client.ip(), 0);
        match tproxy::connect_from(from, ends.server) {
            Ok(mut stream) => {
                let token = ctx.register(
                    key,
                    &mut stream,
                    Role::Control(Side::Server),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                conn.server = Control::new(Some(Leg { stream, token, ready: Readiness::default() }), true);
            }
            Err(e) => {
                warn!(conn.log, "server connect failed"; "error" => %e);
                conn.facts.push_back(Input::ServerUnreachable { error: e.kind() });
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
            Role::DataListener(id) => {
                if let Some(chan) = self.chan(id) {
                    chan.listener_ready = true;
                }
            }
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

    /// The session's key in the loop's slab.
    pub(crate) fn key(&self) -> usize {
        self.key
    }

    /// Feeds the daemon's shutdown to the session.
    pub(crate) fn drain(&mut self, ctx: &mut Ctx<'_>) {
        self.feed(ctx, Input::Drain);
    }

    /// When the loop must wake this session next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        [self.session.poll_timeout(), self.close_by, self.connect_by].into_iter().flatten().min()
    }

    /// True when every socket is gone and the session is over.
    pub(crate) fn finished(&self) -> bool {
        self.session.is_closed() && self.client.leg.is_none() && self.server.leg.is_none()
    }

    /// Runs the session as far as readiness allows. Returns true when the
    /// work bound was hit with work left, so the loop calls again at once.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut more = false;
        if self.session.poll_timeout().is_some_and(|t| t <= ctx.now) {
            self.feed(ctx, Input::Timeout);
        }
        self.feed_queued(ctx);
        let mut rounds = 0;
        loop {
            let mut progress = false;
            progress |= self.connect_server(ctx);
            for side in [Side::Client, Side::Server] {
                progress |= self.read_control(ctx, side);
            }
            let (p, m) = self.run_data(ctx);
            progress |= p;
            more |= m;
            for side in [Side::Client, Side::Server] {
                progress |= self.write_control(ctx, side);
            }
            rounds += 1;
            if !progress {
                break;
            }
            if rounds == MAX_ROUNDS {
                more = true;
                break;
            }
        }
        if self.session.is_closed() {
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
    pub(crate) fn abort(&mut self, ctx: &mut Ctx<'_>) {
        for side in [Side::Client, Side::Server] {
            self.close_control(ctx, side);
        }
        for id in self.data.iter().map(|c| c.id).collect::<Vec<_>>() {
            self.close_data(ctx, id);
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

    /// Feeds one fact, then drains every action it causes.
    fn feed(&mut self, ctx: &mut Ctx<'_>, input: Input<'_>) {
        self.session.handle_input(ctx.now, input);
        self.drain_actions(ctx);
        self.feed_queued(ctx);
    }

    fn feed_queued(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(fact) = self.facts.pop_front() {
            self.session.handle_input(ctx.now, fact);
            self.drain_actions(ctx);
        }
    }

    fn drain_actions(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(action) = self.session.poll_action() {
            self.execute(ctx, action);
        }
    }

    fn execute(&mut self, ctx: &mut Ctx<'_>, action: Action) {
        match action {
            Action::Listen { data, local, accept_from: _, peer } => self.listen(ctx, data, local, peer),
            Action::Refuse { data } => {
                if let Some(chan) = self.chan(data) {
                    chan.candidate = None;
                }
            }
            Action::Connect { data, local, remote } => self.connect_data(ctx, data, local, remote),
            Action::Relay { data } => {
                let relay = Relay::new();
                match (self.chan(data), relay) {
                    (Some(chan), Ok(relay)) => chan.relay = Some(relay),
                    (Some(_), Err(e)) => {
                        warn!(self.log, "relay pipes failed"; "data" => data.0, "error" => %e);
                        self.facts.push_back(Input::Failed { data, step: DataStep::Relay, error: e.kind() });
                    }
                    (None, _) => {}
                }
            }
            Action::CloseData { data } => self.close_data(ctx, data),
            Action::Shutdown { side } => {
                let control = self.control(side);
                control.closing = true;
            }
            Action::Audit(event) => audit::record(&self.log, &event),
            other => debug!(self.log, "unknown action"; "action" => ?other),
        }
    }

    fn listen(&mut self, ctx: &mut Ctx<'_>, data: DataId, local: SocketAddr, peer: Side) {
        // A retry (the announced port was taken) replaces the listener.
        if self.chan(data).is_none() {
            self.data.push(DataChan {
                id: data,
                peer,
                listener: None,
                listener_ready: false,
                candidate: None,
                accepted: None,
                outbound: None,
                outbound_connected: false,
                relay: None,
                reported: false,
            });
        }
        self.close_listener(ctx, data);
        let result = tproxy::listen(local, DATA_BACKLOG).and_then(|mut listener| {
            let bound = listener.local_addr().map_err(|error| TproxyError::Listen { addr: local, error })?;
            let token = ctx
                .register(self.key, &mut listener, Role::DataListener(data), Interest::READABLE)
                .map_err(|error| TproxyError::Listen { addr: local, error })?;
            Ok((listener, token, bound))
        });
        match result {
            Ok((listener, token, bound)) => {
                if let Some(chan) = self.chan(data) {
                    chan.listener = Some((listener, token));
                    // A connection may already be queued before registration.
                    chan.listener_ready = true;
                }
                self.facts.push_back(Input::Listening { data, local: bound });
            }
            Err(e) => {
                debug!(self.log, "data listen failed"; "data" => data.0, "error" => %e);
                self.facts.push_back(Input::Failed { data, step: e.step(), error: e.kind() });
            }
        }
    }

    fn connect_data(&mut self, ctx: &mut Ctx<'_>, data: DataId, local: SocketAddr, remote: SocketAddr) {
        let key = self.key;
        let candidate = self.chan(data).and_then(|c| c.candidate.take());
        // One connection per listener: the hole closes as soon as it is used.
        self.close_listener(ctx, data);
        let Some(chan) = self.chan(data) else { return };
        if let Some(mut stream) = candidate {
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
                    self.facts.push_back(Input::Failed { data, step: DataStep::Accept, error: e.kind() });
                    return;
                }
            }
        }
        let result = tproxy::connect_from(local, remote).and_then(|mut stream| {
            let token = ctx
                .register(key, &mut stream, Role::DataOutbound(data), Interest::READABLE | Interest::WRITABLE)
                .map_err(|error| TproxyError::Connect { from: local, to: remote, error })?;
            Ok((stream, token))
        });
        match result {
            Ok((stream, token)) => {
                if let Some(chan) = self.chan(data) {
                    chan.outbound = Some(Leg { stream, token, ready: Readiness::default() });
                    chan.outbound_connected = false;
                }
            }
            Err(e) => {
                warn!(self.log, "data connect failed"; "data" => data.0, "error" => %e);
                self.facts.push_back(Input::Failed { data, step: e.step(), error: e.kind() });
            }
        }
    }

    fn close_listener(&mut self, ctx: &mut Ctx<'_>, data: DataId) {
        if let Some(chan) = self.chan(data) {
            chan.candidate = None;
            chan.listener_ready = false;
            if let Some((mut listener, token)) = chan.listener.take() {
                ctx.deregister(&mut listener, token);
            }
        }
    }

    fn close_data(&mut self, ctx: &mut Ctx<'_>, data: DataId) {
        self.close_listener(ctx, data);
        let Some(pos) = self.data.iter().position(|c| c.id == data) else { return };
        let mut chan = self.data.swap_remove(pos);
        for mut leg in [chan.accepted.take(), chan.outbound.take()].into_iter().flatten() {
            ctx.deregister(&mut leg.stream, leg.token);
        }
    }

    fn close_control(&mut self, ctx: &mut Ctx<'_>, side: Side) {
        if let Some(mut leg) = self.control(side).leg.take() {
            let _ = leg.stream.shutdown(Shutdown::Both);
            ctx.deregister(&mut leg.stream, leg.token);
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
            server.eof = true;
            self.connect_by = None;
            self.close_control(ctx, Side::Server);
            self.feed(ctx, Input::ServerUnreachable { error: io::ErrorKind::TimedOut });
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
                warn!(self.log, "server unreachable"; "error" => %e);
                server.connecting = false;
                server.eof = true;
                self.close_control(ctx, Side::Server);
                self.feed(ctx, Input::ServerUnreachable { error: e.kind() });
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
        if control.connecting || control.eof || control.closing || budget == 0 {
            return false;
        }
        let Some(leg) = control.leg.as_mut().filter(|l| l.ready.readable) else { return false };
        let result = leg.stream.read(&mut ctx.scratch[..budget]);
        match result {
            Ok(0) => {
                control.eof = true;
                self.feed(ctx, Input::Closed { from: side });
            }
            Ok(n) => {
                // Copy out so the session may borrow while ctx is reused.
                let bytes = ctx.scratch[..n].to_vec();
                self.feed(ctx, Input::Received { from: side, data: &bytes });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                leg.ready.readable = false;
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!(self.log, "control read failed"; "side" => ?side, "error" => %e);
                control.eof = true;
                self.feed(ctx, Input::Closed { from: side });
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
                    debug!(self.log, "control write failed"; "side" => ?side, "error" => %e);
                    let n = pending.len();
                    self.session.consume(side, n);
                    let eof = control.eof;
                    control.eof = true;
                    self.close_control(ctx, side);
                    if !eof {
                        self.feed(ctx, Input::Closed { from: side });
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
    fn run_data(&mut self, ctx: &mut Ctx<'_>) -> (bool, bool) {
        let mut progress = false;
        let mut more = false;
        let ids: Vec<DataId> = self.data.iter().map(|c| c.id).collect();
        for id in ids {
            progress |= self.accept_data(ctx, id);
            progress |= self.complete_data_connect(ctx, id);
            let (p, m) = self.relay_data(ctx, id);
            progress |= p;
            more |= m;
        }
        (progress, more)
    }

    fn accept_data(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> bool {
        let mut progress = false;
        // Bounded: a flood of thieves is refused a few at a time.
        for _ in 0..8 {
            let Some(chan) = chan_in(&mut self.data, id) else { break };
            if !chan.listener_ready {
                break;
            }
            let Some((listener, _)) = chan.listener.as_ref() else { break };
            match listener.accept() {
                Ok((stream, peer)) => {
                    progress = true;
                    chan.candidate = Some(stream);
                    self.feed(ctx, Input::Accepted { data: id, peer });
                    // A verdict neither kept nor refused it: refuse.
                    if let Some(chan) = self.chan(id) {
                        chan.candidate = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    chan.listener_ready = false;
                    break;
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    warn!(self.log, "data accept failed"; "data" => id.0, "error" => %e);
                    chan.listener_ready = false;
                    self.close_listener(ctx, id);
                    self.feed(ctx, Input::Failed { data: id, step: DataStep::Accept, error: e.kind() });
                    return true;
                }
            }
        }
        progress
    }

    fn complete_data_connect(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> bool {
        let Some(chan) = chan_in(&mut self.data, id) else { return false };
        if chan.outbound_connected {
            return false;
        }
        let Some(leg) = chan.outbound.as_mut().filter(|l| l.ready.writable) else { return false };
        match tproxy::connect_result(&leg.stream) {
            Ok(true) => {
                chan.outbound_connected = true;
                self.feed(ctx, Input::Connected { data: id });
                true
            }
            Ok(false) => {
                leg.ready.writable = false;
                false
            }
            Err(e) => {
                debug!(self.log, "data connect failed"; "data" => id.0, "error" => %e);
                if let Some(mut leg) = chan.outbound.take() {
                    ctx.deregister(&mut leg.stream, leg.token);
                }
                self.feed(ctx, Input::Failed { data: id, step: DataStep::Connect, error: e.kind() });
                true
            }
        }
    }

    fn relay_data(&mut self, ctx: &mut Ctx<'_>, id: DataId) -> (bool, bool) {
        let Some(chan) = self.chan(id) else { return (false, false) };
        if chan.reported || !chan.outbound_connected {
            return (false, false);
        }
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
        let status = relay.run(&client.stream, &mut client.ready, &server.stream, &mut server.ready);
        let progress = relay.counts() != before;
        match status {
            Ok(RelayStatus::Running { more }) => (progress, more),
            Ok(RelayStatus::Done { to_client, to_server }) => {
                chan.reported = true;
                self.feed(ctx, Input::Relayed { data: id, to_client, to_server });
                (true, false)
            }
            Err(e) => {
                chan.reported = true;
                debug!(self.log, "relay failed"; "data" => id.0, "error" => %e);
                self.feed(ctx, Input::Failed { data: id, step: DataStep::Relay, error: e.kind() });
                (true, false)
            }
        }
    }
}

/// Finds a data channel while leaving the other fields of `Conn` borrowable.
fn chan_in(data: &mut [DataChan], id: DataId) -> Option<&mut DataChan> {
    data.iter_mut().find(|c| c.id == id)
}
