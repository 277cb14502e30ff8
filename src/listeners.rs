//! The daemon's one table of foreign data listeners, keyed by the local
//! (address, port) the core asks to listen on.
//!
//! A server that hands the same passive port to two clients at once (a
//! small port range, SO_REUSEPORT) makes two sessions ask for a listener on
//! the same foreign (address, port). A socket can be bound there only once,
//! so the listener belongs to this table, not to a session: each session
//! adds an *expectation* (its data channel and the one peer address it
//! accepts), and each accepted connection goes to the session that expects
//! its peer. The 227/229 then reaches every client byte for byte.
//!
//! Only when two expectations could not be told apart (the same peer
//! address: two sessions from one client, or from behind one NAT) is the
//! second refused, as a bind failure: the core then listens on a port of
//! its own and rewrites the reply, the last resort (ATTACKS.md 21).
//!
//! Lifetime follows the per-session rule "the hole closes as soon as it is
//! used": an expectation is forgotten when its channel's verdict takes the
//! connection or the channel closes, and the listener closes with its last
//! expectation. A connection that no session expects (port theft,
//! ATTACKS.md 5) is closed at once and logged here, with the listener and
//! the peer.
//!
//! Several event loops (`--workers`): there is one table for the whole
//! process (behind a mutex in `workers::Shared`), since the sessions that
//! share a port may belong to different loops. A listener is registered
//! with the Poll of the loop whose session opened it, and that loop
//! accepts on it; each `Handover` names the loop that owns the session
//! (`Channel::worker`), and the accepting loop passes it on
//! (`workers::Mailbox`) when that is another loop.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ftpgate_proto::addr::canonical_ip;
use ftpgate_proto::{DataId, Side};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;
use slog::{info, warn, Logger};

use crate::tproxy::{self, TproxyError};

/// Backlog of a data listener: one connection per expectation, plus thieves.
const DATA_BACKLOG: i32 = 8;

/// Connections accepted per listener per call of `accept_ready`, so a flood
/// of thieves on one port cannot starve the loop; the listener stays ready.
const ACCEPTS_PER_ROUND: usize = 8;

/// One listener of one data channel of one session: whom a connection is
/// for. A channel listens for one side at a time, or for each side once
/// (`server-data = "active"`: the gateway accepts both legs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Channel {
    /// The event loop that owns the session.
    pub(crate) worker: usize,
    /// The session's key in its event loop's slab.
    pub(crate) session: usize,
    /// The session's number in the process: the key alone may name a
    /// later session by the time another loop's handover arrives.
    pub(crate) serial: u64,
    pub(crate) data: DataId,
    /// The side that connects to this listener.
    pub(crate) peer: Side,
}

/// A data channel waiting for its peer on a listener.
#[derive(Clone, Debug)]
pub(crate) struct Expectation {
    pub(crate) channel: Channel,
    /// The one address the connection may come from (the core's
    /// `accept_from`).
    pub(crate) accept_from: IpAddr,
    /// Which side connects: the client (passive mode) or the server (active).
    pub(crate) peer: Side,
    /// The session's logger: a listener used by one session logs in its
    /// context.
    pub(crate) log: Logger,
}

impl Expectation {
    fn expects(&self, peer: IpAddr) -> bool {
        canonical_ip(self.accept_from) == canonical_ip(peer)
    }
}

/// A listener and who waits on it. `L` is the socket (a plain value in the
/// unit tests of the table's logic).
#[derive(Debug)]
struct Entry<L> {
    local: SocketAddr,
    socket: L,
    /// The event loop whose Poll the socket is registered with: it alone
    /// accepts on it.
    worker: usize,
    /// A readiness event came and accept() has not said WouldBlock since.
    /// False at the start: epoll reports a connection queued before the
    /// registration at once (EPOLL_CTL_ADD polls the socket), so assuming
    /// one only cost an empty accept() and a loop turn per data channel.
    ready: bool,
    expecting: Vec<Expectation>,
}

/// Where a new expectation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// On the listener already open at that address.
    Join(usize),
    /// Nowhere: an expectation there already accepts the same peer, so a
    /// connection could not be told apart.
    Ambiguous,
    /// On a listener of its own, still to be bound.
    New,
}

/// Whom a connection from a peer goes to.
#[derive(Debug)]
enum Route<'a> {
    To(&'a Expectation),
    /// Nobody expects that peer here (port theft).
    Nobody,
}

/// The bookkeeping of the table, free of I/O.
#[derive(Debug)]
struct Table<L> {
    entries: Slab<Entry<L>>,
    by_local: HashMap<SocketAddr, usize>,
    by_channel: HashMap<Channel, usize>,
}

impl<L> Default for Table<L> {
    fn default() -> Self {
        Self { entries: Slab::new(), by_local: HashMap::new(), by_channel: HashMap::new() }
    }
}

impl<L> Table<L> {
    fn place(&self, local: SocketAddr, accept_from: IpAddr) -> Place {
        // Port 0: the kernel picks a port no listener has.
        if local.port() == 0 {
            return Place::New;
        }
        let Some(&key) = self.by_local.get(&local) else { return Place::New };
        if self.entries[key].expecting.iter().any(|e| e.expects(accept_from)) {
            Place::Ambiguous
        } else {
            Place::Join(key)
        }
    }

    fn join(&mut self, key: usize, expectation: Expectation) {
        self.by_channel.insert(expectation.channel, key);
        self.entries[key].expecting.push(expectation);
    }

    /// The key the next `insert` gets.
    fn vacant_key(&self) -> usize {
        self.entries.vacant_key()
    }

    /// A new listener, bound at `local`, with its first expectation.
    fn insert(&mut self, local: SocketAddr, socket: L, expectation: Expectation) -> usize {
        let channel = expectation.channel;
        let worker = channel.worker;
        let key =
            self.entries.insert(Entry { local, socket, worker, ready: false, expecting: vec![expectation] });
        self.by_local.insert(local, key);
        self.by_channel.insert(channel, key);
        key
    }

    fn route(&self, key: usize, peer: IpAddr) -> Route<'_> {
        match self.entries.get(key).and_then(|e| e.expecting.iter().find(|x| x.expects(peer))) {
            Some(expectation) => Route::To(expectation),
            None => Route::Nobody,
        }
    }

    /// Forgets the channel's expectation. Returns the entry if that was its
    /// last: the caller closes the listener.
    fn forget(&mut self, channel: Channel) -> Option<Entry<L>> {
        let key = self.by_channel.remove(&channel)?;
        let entry = self.entries.get_mut(key)?;
        entry.expecting.retain(|e| e.channel != channel);
        if entry.expecting.is_empty() {
            Some(self.remove(key))
        } else {
            None
        }
    }

    /// Removes a listener with every expectation on it.
    fn remove(&mut self, key: usize) -> Entry<L> {
        let entry = self.entries.remove(key);
        self.by_local.remove(&entry.local);
        for e in &entry.expecting {
            self.by_channel.remove(&e.channel);
        }
        entry
    }
}

/// Why a channel could not expect a connection.
#[derive(Debug)]
pub(crate) enum ExpectError {
    /// A session already expects the same peer address on this listener.
    /// Told to the core as a bind failure (address in use): it listens on
    /// a port of its own and rewrites the reply.
    Ambiguous,
    /// A new listener could not be set up.
    Listen(TproxyError),
    /// A new listener could not join the event loop.
    Register(io::Error),
}

/// The channel now expects its peer on `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) local: SocketAddr,
    /// Sessions expecting a connection on that listener, this one included.
    pub(crate) sharing: usize,
}

/// What the table hands to a session.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A connection from the peer the channel expects; the core judges it
    /// (`Input::Accepted`).
    Connection { stream: TcpStream, peer: SocketAddr },
    /// accept() failed on the listener; the listener is closed.
    AcceptFailed(io::ErrorKind),
}

#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) channel: Channel,
    pub(crate) arrival: Arrival,
}

/// The table of foreign data listeners, with their sockets.
pub(crate) struct Listeners {
    table: Table<TcpListener>,
    /// Listener `key` is registered under `Token(first_token + key)`.
    first_token: usize,
    /// The registry of each event loop's Poll, by worker index (each loop
    /// uses only its own: see `orphans`).
    registries: Vec<Registry>,
    /// Each loop's waker, by worker index: tells a loop it has orphans.
    wakers: Vec<Arc<Waker>>,
    /// Listeners whose last expectation a session of another loop forgot.
    /// The socket is in the descriptor table of the loop that opened it
    /// (`fdtable`), so that loop closes it (`close_orphans`).
    orphans: Vec<Entry<TcpListener>>,
}

impl Listeners {
    pub(crate) fn new(first_token: usize, registries: Vec<Registry>, wakers: Vec<Arc<Waker>>) -> Self {
        Self { table: Table::default(), first_token, registries, wakers, orphans: Vec::new() }
    }

    /// Closes a listener that left the table: here, if the calling thread
    /// is the loop that opened it; else that loop is told to.
    fn close(&mut self, mut entry: Entry<TcpListener>) {
        if crate::fdtable::current() == Some(entry.worker) {
            let _ = self.registries[entry.worker].deregister(&mut entry.socket);
            return;
        }
        if let Some(waker) = self.wakers.get(entry.worker) {
            let _ = waker.wake();
        }
        self.orphans.push(entry);
    }

    /// Closes the listeners of `worker` that another loop's sessions left
    /// (`close`). Called by that loop when woken.
    pub(crate) fn close_orphans(&mut self, worker: usize) {
        if self.orphans.iter().any(|e| e.worker == worker) {
            let (mine, others) =
                std::mem::take(&mut self.orphans).into_iter().partition(|e| e.worker == worker);
            self.orphans = others;
            for mut entry in mine {
                let _ = self.registries[worker].deregister(&mut entry.socket);
            }
        }
    }

    /// A loop that ends closes the listeners it opened that are still
    /// open: no other thread could.
    pub(crate) fn close_all_of(&mut self, worker: usize) {
        self.close_orphans(worker);
        let keys: Vec<usize> =
            self.table.entries.iter().filter(|(_, e)| e.worker == worker).map(|(k, _)| k).collect();
        for key in keys {
            let mut entry = self.table.remove(key);
            let _ = self.registries[worker].deregister(&mut entry.socket);
        }
    }

    /// Records readiness from one event of `worker`'s Poll. An event left
    /// over from a listener that was closed, its key since taken by a
    /// listener of another loop, is ignored.
    pub(crate) fn on_event(&mut self, worker: usize, token: Token) {
        if let Some(entry) = self.table.entries.get_mut(token.0 - self.first_token) {
            if entry.worker == worker {
                entry.ready = true;
            }
        }
    }

    /// Some listener of `worker` may hold connections not yet accepted.
    pub(crate) fn has_ready(&self, worker: usize) -> bool {
        self.table.entries.iter().any(|(_, e)| e.ready && e.worker == worker)
    }

    /// Whether the channel still expects a connection. A connection that
    /// another loop accepted for it may arrive after it stopped (it took
    /// its one connection, or closed): it is then closed, as the ones
    /// queued behind the first are when the hole closes.
    pub(crate) fn expects(&self, channel: Channel) -> bool {
        self.table.by_channel.contains_key(&channel)
    }

    /// Open listeners (also the metrics' gauge).
    pub(crate) fn len(&self) -> usize {
        self.table.entries.len()
    }

    /// Makes `expectation`'s channel expect its peer on `local`: on the
    /// listener already there if no one on it expects the same peer, or on
    /// a new one, registered with the Poll of the channel's loop. A channel
    /// expects on one listener at a time: an earlier expectation of the
    /// same channel (a retry) is forgotten first.
    pub(crate) fn expect(
        &mut self,
        local: SocketAddr,
        expectation: Expectation,
    ) -> Result<Expected, ExpectError> {
        self.forget(expectation.channel);
        match self.table.place(local, expectation.accept_from) {
            Place::Ambiguous => Err(ExpectError::Ambiguous),
            Place::Join(key) => {
                self.table.join(key, expectation);
                let entry = &self.table.entries[key];
                let sharing = entry.expecting.len();
                let x = &entry.expecting[sharing - 1];
                info!(
                    x.log, "data listener shared";
                    "data" => x.channel.data.0, "local" => %local, "accept_from" => %x.accept_from,
                    "peer_side" => side(x.peer), "sessions" => sharing,
                    "accepting_worker" => entry.worker
                );
                Ok(Expected { local, sharing })
            }
            Place::New => {
                let mut socket = tproxy::listen(local, DATA_BACKLOG).map_err(ExpectError::Listen)?;
                let bound = socket
                    .local_addr()
                    .map_err(|error| ExpectError::Listen(TproxyError::Listen { addr: local, error }))?;
                let token = Token(self.first_token + self.table.vacant_key());
                let registry = &self.registries[expectation.channel.worker];
                registry.register(&mut socket, token, Interest::READABLE).map_err(ExpectError::Register)?;
                self.table.insert(bound, socket, expectation);
                Ok(Expected { local: bound, sharing: 1 })
            }
        }
    }

    /// The channel expects nothing any more; its listener closes if no
    /// other channel expects a connection on it. Idempotent.
    pub(crate) fn forget(&mut self, channel: Channel) {
        if let Some(entry) = self.table.forget(channel) {
            self.close(entry);
        }
    }

    /// Accepts what `worker`'s ready listeners hold and says whom each
    /// connection is for (a session of any loop). Connections that no
    /// session expects are closed and logged. Bounded per listener; a
    /// listener left ready is served next time.
    pub(crate) fn accept_ready(&mut self, worker: usize, log: &Logger) -> Vec<Handover> {
        let mut handovers = Vec::new();
        let ready: Vec<usize> = self
            .table
            .entries
            .iter()
            .filter(|(_, e)| e.ready && e.worker == worker)
            .map(|(k, _)| k)
            .collect();
        for key in ready {
            for _ in 0..ACCEPTS_PER_ROUND {
                let entry = &mut self.table.entries[key];
                match entry.socket.accept() {
                    Ok((stream, peer)) => match self.table.route(key, peer.ip()) {
                        Route::To(expectation) => handovers.push(Handover {
                            channel: expectation.channel,
                            arrival: Arrival::Connection { stream, peer },
                        }),
                        Route::Nobody => self.refuse(key, peer, log),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        entry.ready = false;
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        // Every channel on the listener learns of it; the
                        // listener goes (edge-triggered, it would not wake
                        // us again for what stays queued).
                        let entry = self.table.remove(key);
                        let (local, sessions) = (entry.local, entry.expecting.len());
                        let expecting: Vec<Channel> = entry.expecting.iter().map(|x| x.channel).collect();
                        self.close(entry);
                        warn!(
                            log, "data accept failed";
                            "local" => %local, "sessions" => sessions, "error" => %e
                        );
                        for channel in expecting {
                            handovers.push(Handover { channel, arrival: Arrival::AcceptFailed(e.kind()) });
                        }
                        break;
                    }
                }
            }
        }
        handovers
    }

    /// Port theft (ATTACKS.md 5): the connection is closed (dropped by the
    /// caller) and logged. With one session on the listener, in that
    /// session's context and with the address it expected.
    fn refuse(&self, key: usize, peer: SocketAddr, log: &Logger) {
        let entry = &self.table.entries[key];
        // The same rule name and ATTACKS.md case as the core's
        // DataPeerRefused record (docs/audit.md), and counted the same way.
        crate::metrics::get().refused(None, "port-theft");
        match entry.expecting.as_slice() {
            [one] => warn!(
                one.log, "data peer refused";
                "data" => one.channel.data.0, "local" => %entry.local, "peer" => %peer,
                "expected" => %one.accept_from, "peer_side" => side(one.peer),
                "rule" => "port-theft", "attack" => crate::audit::attack(Some(5))
            ),
            many => warn!(
                log, "data peer refused";
                "local" => %entry.local, "peer" => %peer, "sessions" => many.len(),
                "rule" => "port-theft", "attack" => crate::audit::attack(Some(5))
            ),
        }
    }
}

/// The one table of the process, for every event loop. The lock is held
/// for the table's own work (bind, register, accept, forget), never while
/// a session relays.
pub(crate) struct SharedListeners(Mutex<Listeners>);

impl SharedListeners {
    pub(crate) fn new(listeners: Listeners) -> Self {
        Self(Mutex::new(listeners))
    }

    /// The table. A loop that panicked while holding it left it consistent
    /// enough to close listeners, which is all the others still need.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Listeners> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Listeners::expect`].
    pub(crate) fn expect(
        &self,
        local: SocketAddr,
        expectation: Expectation,
    ) -> Result<Expected, ExpectError> {
        self.lock().expect(local, expectation)
    }

    /// [`Listeners::forget`].
    pub(crate) fn forget(&self, channel: Channel) {
        self.lock().forget(channel)
    }
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Server => "server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const CLIENT_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const CLIENT_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

    fn local(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(SERVER), port)
    }

    fn channel(session: usize, data: u32) -> Channel {
        Channel { worker: 0, session, serial: session as u64, data: DataId(data), peer: Side::Client }
    }

    fn expecting(channel: Channel, from: Ipv4Addr) -> Expectation {
        Expectation {
            channel,
            accept_from: IpAddr::V4(from),
            peer: Side::Client,
            log: Logger::root(slog::Discard, slog::o!()),
        }
    }

    fn mapped(ip: Ipv4Addr) -> IpAddr {
        IpAddr::V6(ip.to_ipv6_mapped())
    }

    /// A table with session 1 (client A) listening on the server's port 40000.
    fn table_with_a() -> (Table<&'static str>, usize) {
        let mut t = Table::default();
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_A)), Place::New);
        let key = t.insert(local(40000), "socket", expecting(channel(1, 0), CLIENT_A));
        (t, key)
    }

    #[test]
    fn empty_expect_needs_a_new_listener() {
        let t: Table<()> = Table::default();
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_A)), Place::New);
    }

    #[test]
    fn listening_expect_other_client_joins() {
        let (t, key) = table_with_a();
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_B)), Place::Join(key));
        // another port, or another address, is another listener
        assert_eq!(t.place(local(40001), IpAddr::V4(CLIENT_A)), Place::New);
        let elsewhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11)), 40000);
        assert_eq!(t.place(elsewhere, IpAddr::V4(CLIENT_A)), Place::New);
    }

    #[test]
    fn listening_expect_same_client_is_ambiguous() {
        let (t, _) = table_with_a();
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_A)), Place::Ambiguous);
        // the same address written v4-mapped is still the same peer
        assert_eq!(t.place(local(40000), mapped(CLIENT_A)), Place::Ambiguous);
    }

    #[test]
    fn listening_expect_port_zero_is_always_new() {
        let (t, _) = table_with_a();
        assert_eq!(t.place(local(0), IpAddr::V4(CLIENT_A)), Place::New);
    }

    #[test]
    fn shared_accept_goes_to_the_session_expecting_that_peer() {
        let (mut t, key) = table_with_a();
        t.join(key, expecting(channel(2, 5), CLIENT_B));
        let to = |t: &Table<_>, ip| match t.route(key, ip) {
            Route::To(x) => Some(x.channel),
            Route::Nobody => None,
        };
        assert_eq!(to(&t, IpAddr::V4(CLIENT_A)), Some(channel(1, 0)));
        assert_eq!(to(&t, IpAddr::V4(CLIENT_B)), Some(channel(2, 5)));
        assert_eq!(to(&t, mapped(CLIENT_B)), Some(channel(2, 5)));
        assert_eq!(to(&t, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))), None, "a thief goes to nobody");
        assert_eq!(to(&t, IpAddr::V4(SERVER)), None);
    }

    #[test]
    fn shared_forget_one_keeps_the_listener_for_the_other() {
        let (mut t, key) = table_with_a();
        t.join(key, expecting(channel(2, 5), CLIENT_B));
        assert!(t.forget(channel(1, 0)).is_none(), "B still expects a connection");
        // A's hole is closed: A's address is a thief now, B's still routes
        assert!(matches!(t.route(key, IpAddr::V4(CLIENT_A)), Route::Nobody));
        assert!(matches!(t.route(key, IpAddr::V4(CLIENT_B)), Route::To(_)));
        // and A's address may expect there again without ambiguity
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_A)), Place::Join(key));
        let entry = t.forget(channel(2, 5)).expect("the last expectation closes the listener");
        assert_eq!((entry.local, entry.socket), (local(40000), "socket"));
        assert!(t.entries.is_empty() && t.by_local.is_empty() && t.by_channel.is_empty());
        assert_eq!(t.place(local(40000), IpAddr::V4(CLIENT_A)), Place::New);
    }

    #[test]
    fn one_channel_two_peers_two_listeners_forget_one_keeps_the_other() {
        let (mut t, a) = table_with_a();
        let server_side = Channel { peer: Side::Server, ..channel(1, 0) };
        let b =
            t.insert(SocketAddr::new(IpAddr::V4(CLIENT_A), 40001), "socket", expecting(server_side, SERVER));
        assert_ne!(a, b);
        assert!(t.forget(server_side).is_some(), "its own listener closes");
        assert!(t.entries.contains(a), "the client's stays");
        assert!(t.forget(channel(1, 0)).is_some());
    }

    #[test]
    fn forget_unknown_or_twice_is_a_no_op() {
        let (mut t, _) = table_with_a();
        assert!(t.forget(channel(9, 9)).is_none());
        assert!(t.forget(channel(1, 1)).is_none(), "same session, other channel");
        assert!(t.forget(channel(1, 0)).is_some());
        assert!(t.forget(channel(1, 0)).is_none());
    }

    #[test]
    fn remove_drops_every_expectation() {
        let (mut t, key) = table_with_a();
        t.join(key, expecting(channel(2, 5), CLIENT_B));
        let entry = t.remove(key);
        assert_eq!(entry.expecting.len(), 2);
        assert!(t.by_channel.is_empty() && t.by_local.is_empty());
        assert!(t.forget(channel(2, 5)).is_none());
    }

    #[test]
    fn new_listener_starts_not_ready_epoll_reports_what_was_queued_before_registration() {
        let (t, key) = table_with_a();
        assert!(!t.entries[key].ready);
        // What `ready: false` relies on: a connection that arrives between
        // listen() and the registration is reported by the registration.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let peer = std::net::TcpStream::connect(std_listener.local_addr().unwrap()).unwrap();
        let mut listener = TcpListener::from_std(std_listener);
        let mut poll = mio::Poll::new().unwrap();
        poll.registry().register(&mut listener, Token(7), Interest::READABLE).unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7) && e.is_readable()));
        assert!(listener.accept().is_ok());
        drop(peer);
    }

    // -- with sockets: 127.0.0.1 listeners, peers from 127.0.0.2 and .3 ----

    fn from(src: Ipv4Addr, to: SocketAddr) -> std::net::TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    /// Accepts until `want` handovers came, bounded.
    fn handovers(l: &mut Listeners, want: usize) -> Vec<(Channel, SocketAddr)> {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut got = Vec::new();
        for _ in 0..100 {
            for h in l.accept_ready(0, &log) {
                match h.arrival {
                    Arrival::Connection { peer, .. } => got.push((h.channel, peer)),
                    Arrival::AcceptFailed(e) => panic!("accept failed: {e:?}"),
                }
            }
            if got.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            // mark every listener ready again, as an event would
            for (_, e) in l.table.entries.iter_mut() {
                e.ready = true;
            }
        }
        got
    }

    #[test]
    fn listeners_two_sessions_one_port_each_gets_its_peer_and_thieves_get_nothing() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let mut l = Listeners::new(1 << 20, vec![poll.registry().try_clone().unwrap()], vec![waker]);
        // This thread plays the loop that owns the sessions.
        crate::fdtable::pretend(Some(0));
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let a = Expectation {
            accept_from: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ..expecting(channel(1, 0), CLIENT_A)
        };
        let first = match l.expect(any, a) {
            Ok(x) => x,
            Err(ExpectError::Listen(TproxyError::SetTransparent(e))) => {
                // Without CAP_NET_ADMIN no transparent listener exists at
                // all; the lab tests cover the table end to end.
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                return;
            }
            Err(e) => panic!("first listener: {e:?}"),
        };
        assert_eq!(first.sharing, 1);
        let port = first.local;
        let b = Expectation {
            accept_from: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
            ..expecting(channel(2, 7), CLIENT_B)
        };
        assert_eq!(l.expect(port, b).unwrap(), Expected { local: port, sharing: 2 });
        // the same peer as A's again cannot be told apart
        let a2 = Expectation {
            accept_from: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ..expecting(channel(3, 0), CLIENT_A)
        };
        assert!(matches!(l.expect(port, a2), Err(ExpectError::Ambiguous)));
        assert_eq!(l.len(), 1);

        let mut thief = from(Ipv4Addr::new(127, 0, 0, 9), port);
        let _b = from(Ipv4Addr::new(127, 0, 0, 3), port);
        let _a = from(Ipv4Addr::new(127, 0, 0, 2), port);
        let mut got = handovers(&mut l, 2);
        got.sort_by_key(|(c, _)| c.session);
        let who: Vec<(Channel, IpAddr)> = got.iter().map(|(c, p)| (*c, p.ip())).collect();
        assert_eq!(
            who,
            [
                (channel(1, 0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
                (channel(2, 7), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
            ]
        );

        // the thief's connection was accepted and closed at once
        thief.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        let read = io::Read::read(&mut thief, &mut byte);
        assert!(matches!(read, Ok(0)) || read.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset));

        // A's verdict took its connection: A's hole closes, B's stays
        l.forget(channel(1, 0));
        assert_eq!(l.len(), 1);
        // Were B's session in another loop, it could not close the
        // listener: the socket is in its loop's descriptor table.
        crate::fdtable::pretend(Some(1));
        l.forget(channel(2, 7));
        assert_eq!(l.len(), 0, "the listener leaves the table with its last expectation");
        assert_eq!(l.orphans.len(), 1, "and waits for its own loop");
        l.close_orphans(1);
        assert_eq!(l.orphans.len(), 1, "another loop's orphan stays");
        l.close_orphans(0);
        assert!(l.orphans.is_empty());
        assert!(std::net::TcpStream::connect(port).is_err(), "nothing listens on {port} any more");
        crate::fdtable::pretend(None);
    }
}
