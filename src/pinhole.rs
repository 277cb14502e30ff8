//! The kernel data path (`--data-path pinhole`): one-shot conntrack
//! expectations made over ctnetlink instead of a relay.
//!
//! For each data channel the core approves, ftpgate asks the kernel to
//! expect exactly one connection: from the expected peer's address (any
//! source port) to the target address and port. The kernel marks that one
//! connection RELATED, so a firewall accepting `ct state related` forwards
//! it like a router; the expectation is used up by it, or dies at its
//! timeout (the data deadline) or with its master.
//!
//! The master. Linux accepts an expectation from userspace only on a
//! master conntrack that has a helper (`ctnetlink_alloc_expect`:
//! EOPNOTSUPP otherwise), and this kernel has no userspace helpers
//! (CONFIG_NF_CT_NETLINK_HELPER). Attaching the kernel's `ftp` helper to
//! the real control connection would let it open its own expectations for
//! every PORT and 227 it reads, past ftpgate's checks. So each pinhole gets
//! a placeholder master of its own, created over ctnetlink with the `ftp`
//! helper: a TCP entry `peer:N -> target:0`. The rule set drops TCP port
//! 0 before conntrack (`ftpgate rules --data-path pinhole`, its raw
//! chain), so no packet reaches that entry: crafted segments on port 0
//! from both ends could otherwise bring it to ESTABLISHED (an ACK from the
//! peer's side alone moved it out of NONE, tests/pinhole.rs
//! `port_0_never_reaches_the_placeholder_*`), and the helper never parses a
//! byte. The placeholder is deleted with the channel, taking an unused
//! expectation with it, and times out by itself if ftpgate dies.
//!
//! The data connection's arrival comes from a conntrack event (NEW of the
//! related entry). Its end and byte counts are asked of the kernel (a GET
//! of the entry: TIME_WAIT is a clean end, CLOSE a reset) at every wakeup
//! of its session and every 250 ms; a DESTROY event ends what vanished
//! before. ftpgate does not join the UPDATE group, for which the kernel
//! would build an event message for every state step of every connection
//! in the namespace, FTP or not: 16 µs more CPU per loopback connection,
//! against 4 µs with NEW and DESTROY only (lab/bench/conntrack_cost.py). A
//! filter in the kernel drops the NEW and DESTROY events of other
//! connections (`event_filter`). The counts, from conntrack accounting
//! (`nf_conntrack_acct`, turned on at start), are the IP bytes of each
//! direction, headers included: conntrack does not count TCP payload.
//!
//! Read: net/netfilter/nf_conntrack_netlink.c (ctnetlink_create_expect,
//! ctnetlink_alloc_expect), nf_conntrack_expect.c (__nf_ct_expect_check),
//! include/uapi/linux/netfilter/nfnetlink_conntrack.h.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ftpgate_proto::DataId;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};

use crate::metrics;
use crate::netlink::{self, messages, NLMSG_DONE, NLMSG_ERROR};

mod event_filter;

// include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_CTNETLINK_EXP: u16 = 2;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const IPCTNL_MSG_EXP_NEW: u16 = 0;
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_TIMEOUT: u16 = 7;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_TUPLE_MASTER: u16 = 14;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_HELP_NAME: u16 = 1;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_EXPECT_MASTER: u16 = 1;
const CTA_EXPECT_TUPLE: u16 = 2;
const CTA_EXPECT_MASK: u16 = 3;
const CTA_EXPECT_TIMEOUT: u16 = 4;
// include/net/netfilter/nf_conntrack_tcp.h (enum tcp_conntrack)
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

/// The receive buffer asked for the conntrack event socket (the kernel
/// doubles it for its bookkeeping).
const EVENT_BUFFER: usize = 8 << 20;

/// The placeholder master outlives its channel's accept deadline by this
/// much, so that it ends by itself if ftpgate does not delete it.
const MASTER_GRACE: Duration = Duration::from_secs(10);

/// A TCP conntrack tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

/// Whose channel a pinhole is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    session: usize,
    data: DataId,
    /// The connection comes from the client (passive mode): its original
    /// direction carries the bytes toward the server.
    from_client: bool,
}

#[derive(Debug)]
struct Pinhole {
    /// Its placeholder master.
    master: Tuple,
    /// The related connection, once the kernel reported it.
    conn: Option<Tuple>,
}

/// What the kernel reported about a pinhole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The expected connection came (SYN seen and forwarded).
    Connected { session: usize, data: DataId, peer: SocketAddr },
    /// It ended: both FINs (`reset` false), or a reset. Counts are IP bytes.
    Ended { session: usize, data: DataId, to_client: u64, to_server: u64, reset: bool },
}

impl Event {
    /// The session the event is for.
    pub(crate) fn session(&self) -> usize {
        match *self {
            Self::Connected { session, .. } | Self::Ended { session, .. } => session,
        }
    }
}

/// Why the kernel data path cannot start.
#[derive(Debug)]
pub(crate) struct Unavailable {
    what: &'static str,
    error: io::Error,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--data-path pinhole: {} failed ({}); it needs ctnetlink (CONFIG_NF_CT_NETLINK, \
             CONFIG_NF_CONNTRACK_EVENTS), the kernel's ftp conntrack helper \
             (nf_conntrack_ftp) and CAP_NET_ADMIN (README: The kernel data path)",
            self.what, self.error
        )
    }
}

impl std::error::Error for Unavailable {}

impl Drop for Pinholes {
    /// At exit no pinhole stays open behind ftpgate: the placeholders go,
    /// with their unused expectations (connections running go on).
    fn drop(&mut self) {
        let masters: Vec<Tuple> = self.book.by_master.keys().copied().collect();
        for master in masters {
            let _ = self.delete(master);
        }
    }
}

/// The ctnetlink side of the kernel data path: one socket for requests,
/// one for conntrack events.
pub(crate) struct Pinholes {
    requests: Socket,
    events: Socket,
    seq: u32,
    /// Source ports of the placeholder masters, cycled.
    next_port: u16,
    book: Book,
    buf: Vec<u8>,
}

/// Which conntrack entry is whose: the pure part of the kernel data path.
#[derive(Debug, Default)]
struct Book {
    pinholes: HashMap<(usize, DataId), Pinhole>,
    by_master: HashMap<Tuple, Owner>,
    by_conn: HashMap<Tuple, Owner>,
    /// Connections whose NEW the latest read of events brought: they have
    /// just begun, and a lookup of their end would find none.
    fresh: Vec<Tuple>,
}

impl Book {
    fn insert(&mut self, owner: Owner, master: Tuple) {
        self.by_master.insert(master, owner);
        self.pinholes.insert((owner.session, owner.data), Pinhole { master, conn: None });
    }

    fn peer(&self, session: usize, data: DataId) -> Option<SocketAddr> {
        let conn = self.pinholes.get(&(session, data))?.conn?;
        Some(SocketAddr::new(conn.src, conn.sport))
    }

    /// Forgets the channel; returns its placeholder master and whether a
    /// connection used the pinhole.
    fn remove(&mut self, session: usize, data: DataId) -> Option<(Tuple, bool)> {
        let p = self.pinholes.remove(&(session, data))?;
        if let Some(conn) = p.conn {
            self.by_conn.remove(&conn);
        }
        self.by_master.remove(&p.master);
        Some((p.master, p.conn.is_some()))
    }

    /// What an event means for the pinholes: the NEW of a connection
    /// made from one of their expectations, or the DESTROY of one whose
    /// end was not looked up before it went.
    fn seen(&mut self, kind: u16, flags: u16, ct: &Conntrack) -> Option<Event> {
        let orig = ct.orig?;
        match kind {
            IPCTNL_MSG_CT_NEW if flags & NLM_F_CREATE != 0 => {
                let owner = *self.by_master.get(&ct.master?)?;
                self.by_conn.insert(orig, owner);
                self.fresh.push(orig);
                if let Some(p) = self.pinholes.get_mut(&(owner.session, owner.data)) {
                    p.conn = Some(orig);
                }
                let peer = SocketAddr::new(orig.src, orig.sport);
                Some(Event::Connected { session: owner.session, data: owner.data, peer })
            }
            IPCTNL_MSG_CT_DELETE => {
                let reset = ct.tcp_state == Some(TCP_CONNTRACK_CLOSE);
                self.end(orig, (ct.orig_bytes, ct.reply_bytes), reset)
            }
            _ => None,
        }
    }

    /// What a lookup of a running connection (`conn`) found: its end, if
    /// it has ended (TIME_WAIT: both FINs passed; CLOSE: a reset).
    fn looked_up(&mut self, conn: Tuple, ct: &Conntrack) -> Option<Event> {
        let reset = match ct.tcp_state? {
            TCP_CONNTRACK_TIME_WAIT => false,
            TCP_CONNTRACK_CLOSE => true,
            _ => return None,
        };
        self.end(conn, (ct.orig_bytes, ct.reply_bytes), reset)
    }

    /// The end of a pinhole's connection, with its (original, reply) IP
    /// byte counts: once per connection.
    fn end(&mut self, conn: Tuple, (orig_bytes, reply_bytes): (u64, u64), reset: bool) -> Option<Event> {
        let owner = self.by_conn.remove(&conn)?;
        let (to_client, to_server) =
            if owner.from_client { (reply_bytes, orig_bytes) } else { (orig_bytes, reply_bytes) };
        Some(Event::Ended { session: owner.session, data: owner.data, to_client, to_server, reset })
    }
}

impl Pinholes {
    /// Opens the sockets, turns conntrack accounting on in this network
    /// namespace and proves that a placeholder master can be made.
    /// The event socket's receive buffer, as the kernel granted it.
    pub(crate) fn event_buffer(&self) -> usize {
        nix::sys::socket::getsockopt(&self.events, nix::sys::socket::sockopt::RcvBuf).unwrap_or(0)
    }

    pub(crate) fn open() -> Result<Self, Unavailable> {
        let un = |what| move |error| Unavailable { what, error };
        let mut requests =
            Socket::new(NETLINK_NETFILTER).map_err(un("opening a netfilter netlink socket"))?;
        requests.bind_auto().map_err(un("binding the netlink socket"))?;
        // Requests are answered at once; a kernel that does not answer must
        // not stop the event loop.
        let timeout = nix::sys::time::TimeVal::new(1, 0);
        nix::sys::socket::setsockopt(&requests, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)
            .map_err(un("setting a receive timeout on the netlink socket"))?;
        let mut events = Socket::new(NETLINK_NETFILTER).map_err(un("opening a netfilter netlink socket"))?;
        events.bind_auto().map_err(un("binding the netlink socket"))?;
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            events.add_membership(group).map_err(un("joining the conntrack event groups"))?;
        }
        event_filter::attach(events.as_raw_fd()).map_err(un("filtering the conntrack events"))?;
        // Bursts of events must not overflow (ENOBUFS loses them, and a
        // channel whose DESTROY is lost counts as running until its
        // session ends). SO_RCVBUF is capped at net.core.rmem_max (Debian:
        // 212992, so about 416 KiB); SO_RCVBUFFORCE, which CAP_NET_ADMIN
        // allows, is not.
        let force =
            nix::sys::socket::setsockopt(&events, nix::sys::socket::sockopt::RcvBufForce, &EVENT_BUFFER);
        if force.is_err() {
            let _ = events.set_rx_buf_sz(EVENT_BUFFER);
        }
        events.set_non_blocking(true).map_err(un("making the event socket non-blocking"))?;
        // `ftpgate rules --routing --data-path pinhole` sets it; a service
        // with ProtectKernelTunables= cannot, so only write it when off.
        const ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
        if std::fs::read_to_string(ACCT).map_or(true, |v| v.trim() != "1") {
            std::fs::write(ACCT, "1")
                .map_err(un("turning on conntrack accounting (sysctl net.netfilter.nf_conntrack_acct=1, \
                 which `ftpgate rules --routing --data-path pinhole` sets)"))?;
        }
        // Placeholders of an earlier run (or of another event loop in this
        // namespace) may still exist: start elsewhere, and step over them.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let next_port = (std::process::id() as u16 ^ nanos.subsec_nanos() as u16).max(1);
        let mut p =
            Self { requests, events, seq: 0, next_port, book: Book::default(), buf: vec![0; 64 * 1024] };
        let probe = p
            .new_master(IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]), Duration::from_secs(1))
            .map_err(un("creating a conntrack entry with the ftp helper"))?;
        let _ = p.delete(probe);
        Ok(p)
    }

    /// How many pinholes are open (used or not, until their channel ends).
    /// Its two netlink sockets (`fdtable`: a loop's own).
    pub(crate) fn raw_fds(&self) -> [std::os::fd::RawFd; 2] {
        use std::os::fd::AsRawFd;
        [self.requests.as_raw_fd(), self.events.as_raw_fd()]
    }

    pub(crate) fn open_count(&self) -> usize {
        self.book.pinholes.len()
    }

    /// Expects one connection from `peer` (any port) to `target` until
    /// `timeout`. The caller reports it `Listening` on `target`.
    pub(crate) fn open_pinhole(
        &mut self,
        session: usize,
        data: DataId,
        peer: IpAddr,
        target: SocketAddr,
        from_client: bool,
        timeout: Duration,
    ) -> io::Result<()> {
        // The core asks once per channel: it retries a listen only after
        // AddrInUse, which a pinhole never reports.
        debug_assert!(!self.book.pinholes.contains_key(&(session, data)), "pinhole opened twice");
        if peer.is_ipv4() != target.is_ipv4() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "peer and target of different families"));
        }
        if self.book.pinholes.is_empty() {
            // Read only at the idle tick until now (server.rs): what
            // piled up, a lost-events error included, predates this
            // pinhole and must not be taken for news about it.
            self.discard_events();
        }
        match self.new_expectation(peer, target, timeout) {
            Ok(master) => {
                self.book.insert(Owner { session, data, from_client }, master);
                metrics::get().pinhole_opened();
                Ok(())
            }
            Err(e) => {
                metrics::get().pinhole_failed();
                Err(e)
            }
        }
    }

    /// A placeholder master and the expectation on it; returns the master.
    fn new_expectation(&mut self, peer: IpAddr, target: SocketAddr, timeout: Duration) -> io::Result<Tuple> {
        let master = self.new_master(peer, target.ip(), timeout + MASTER_GRACE)?;
        let expected = Tuple { src: peer, dst: target.ip(), sport: 0, dport: target.port() };
        if let Err(e) = self.create_expectation(master, expected, timeout) {
            let _ = self.delete(master);
            return Err(e);
        }
        Ok(master)
    }

    /// A placeholder master `src:N -> dst:0` for a free N.
    fn new_master(&mut self, src: IpAddr, dst: IpAddr, timeout: Duration) -> io::Result<Tuple> {
        let mut last = io::Error::from_raw_os_error(libc::EEXIST);
        for _ in 0..64 {
            let sport = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(1);
            let t = Tuple { src, dst, sport, dport: 0 };
            if self.book.by_master.contains_key(&t) {
                continue;
            }
            match self.create_master(t, timeout) {
                Ok(()) => return Ok(t),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The peer of the connection that used the pinhole, once it came.
    pub(crate) fn peer(&self, session: usize, data: DataId) -> Option<SocketAddr> {
        self.book.peer(session, data)
    }

    /// The channel is over: its placeholder master goes, with an unused
    /// expectation. A connection still running is left to the kernel.
    /// Returns whether the channel had a pinhole.
    pub(crate) fn close(&mut self, session: usize, data: DataId) -> bool {
        let Some((master, used)) = self.book.remove(session, data) else { return false };
        let _ = self.delete(master);
        if !used {
            metrics::get().pinhole_done(false);
        }
        true
    }

    /// The session is gone: close all its pinholes; returns how many.
    pub(crate) fn close_session(&mut self, session: usize) -> usize {
        let ids: Vec<DataId> =
            self.book.pinholes.keys().filter(|(s, _)| *s == session).map(|(_, d)| *d).collect();
        ids.into_iter().filter(|&data| self.close(session, data)).count()
    }

    /// Reads the pending conntrack events; returns what concerns pinholes,
    /// and the receive error if events were lost (ENOBUFS): the channels
    /// they ended then fall to the session's end.
    pub(crate) fn read_events(&mut self) -> (Vec<Event>, Option<io::Error>) {
        self.book.fresh.clear();
        let mut out = Vec::new();
        let mut lost = None;
        let mut read = 0u64;
        for _ in 0..256 {
            let n = match self.events.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    lost = Some(e);
                    continue;
                }
            };
            let msgs: Vec<(u16, u16, Vec<u8>)> =
                messages(&self.buf[..n]).map(|(t, f, _, b)| (t, f, b.to_vec())).collect();
            for (kind, flags, body) in msgs {
                if kind >> 8 != NFNL_SUBSYS_CTNETLINK || body.len() < 4 {
                    continue;
                }
                read += 1;
                let ct = Conntrack::parse(&body[4..]);
                if let Some(event) = self.on_event(kind & 0xff, flags, &ct) {
                    if let Event::Ended { to_client, to_server, .. } = event {
                        metrics::get().pinhole_bytes(to_client, to_server);
                    }
                    out.push(event);
                }
            }
        }
        // Read at every wakeup of the loop: most find nothing.
        if read > 0 || lost.is_some() {
            metrics::get().conntrack_events(read, lost.is_some());
        }
        (out, lost)
    }

    /// Empties the event socket unread (bounded: at most a tick's worth
    /// of other loops' events waits there).
    fn discard_events(&mut self) {
        for _ in 0..4096 {
            match self.events.recv(&mut &mut self.buf[..], 0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
    }

    fn on_event(&mut self, kind: u16, flags: u16, ct: &Conntrack) -> Option<Event> {
        let event = self.book.seen(kind, flags, ct)?;
        if let Event::Connected { .. } = event {
            metrics::get().pinhole_done(true);
        }
        Some(event)
    }

    /// A live entry, as the kernel has it now.
    fn get(&mut self, orig: Tuple) -> io::Result<Conntrack> {
        let mut body = Vec::new();
        put_tuple(&mut body, CTA_TUPLE_ORIG, orig);
        let reply = self.request(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, family(orig.src), 0, &body)?;
        Ok(Conntrack::parse(reply.get(4..).unwrap_or_default()))
    }

    /// Asks the kernel how the running connections of the sessions that
    /// `due` picks stand, except those that began since the last wakeup;
    /// returns the ends found (TIME_WAIT: both FINs passed; CLOSE: a
    /// reset), with their counts. An entry already gone is ended by its
    /// DESTROY event.
    pub(crate) fn poll_ends(&mut self, mut due: impl FnMut(usize) -> bool) -> Vec<Event> {
        // Those begun since the last wakeup are skipped: a session input
        // that needs their end (the 227 after a transfer) comes in a later
        // one, which looks.
        let book = &self.book;
        let conns: Vec<Tuple> = book
            .by_conn
            .iter()
            .filter(|(conn, owner)| due(owner.session) && !book.fresh.contains(conn))
            .map(|(conn, _)| *conn)
            .collect();
        let mut out = Vec::new();
        for conn in conns {
            metrics::get().conntrack_polled();
            // Gone (ENOENT): its DESTROY event, read next, has the counts.
            let Ok(ct) = self.get(conn) else { continue };
            if let Some(event) = self.book.looked_up(conn, &ct) {
                if let Event::Ended { to_client, to_server, .. } = event {
                    metrics::get().pinhole_bytes(to_client, to_server);
                }
                out.push(event);
            }
        }
        out
    }

    /// How many connections through pinholes run (their end not yet seen).
    pub(crate) fn running_count(&self) -> usize {
        self.book.by_conn.len()
    }

    fn create_master(&mut self, t: Tuple, timeout: Duration) -> io::Result<()> {
        let mut body = Vec::new();
        put_tuple(&mut body, CTA_TUPLE_ORIG, t);
        put_tuple(
            &mut body,
            CTA_TUPLE_REPLY,
            Tuple { src: t.dst, dst: t.src, sport: t.dport, dport: t.sport },
        );
        put(&mut body, CTA_TIMEOUT, &secs(timeout).to_be_bytes());
        let help = nest(|b| put(b, CTA_HELP_NAME, b"ftp\0"));
        put(&mut body, CTA_HELP | NLA_F_NESTED, &help);
        self.request(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_NEW,
            family(t.src),
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
        )
        .map(drop)
    }

    fn create_expectation(&mut self, master: Tuple, expected: Tuple, timeout: Duration) -> io::Result<()> {
        let mut body = Vec::new();
        put_tuple(&mut body, CTA_EXPECT_MASTER, master);
        put_tuple(&mut body, CTA_EXPECT_TUPLE, expected);
        // The source address must match exactly, the source port is free.
        let all = |ip: IpAddr| match ip {
            IpAddr::V4(_) => IpAddr::from([0xff; 4]),
            IpAddr::V6(_) => IpAddr::from([0xff; 16]),
        };
        put_tuple(
            &mut body,
            CTA_EXPECT_MASK,
            Tuple { src: all(expected.src), dst: all(expected.dst), sport: 0, dport: 0xffff },
        );
        put(&mut body, CTA_EXPECT_TIMEOUT, &secs(timeout).to_be_bytes());
        self.request(
            NFNL_SUBSYS_CTNETLINK_EXP,
            IPCTNL_MSG_EXP_NEW,
            family(expected.src),
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
        )
        .map(drop)
    }

    fn delete(&mut self, t: Tuple) -> io::Result<()> {
        let mut body = Vec::new();
        put_tuple(&mut body, CTA_TUPLE_ORIG, t);
        // No acknowledgement to wait for: an entry already gone (ENOENT)
        // answers with an error that the next request skips.
        self.send(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE, family(t.src), 0, &body).map(drop)
    }

    /// Sends one request and waits for its answer: the first message body
    /// that is not an acknowledgement, or an empty one on success.
    fn request(&mut self, subsys: u16, msg: u16, family: u8, flags: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        let seq = self.send(subsys, msg, family, NLM_F_ACK | flags, body)?;
        let mut answer = Vec::new();
        // The kernel answers at once (and the socket has a receive
        // timeout); bounded by the messages it sends.
        for _ in 0..16 {
            let n = self.requests.recv(&mut &mut self.buf[..], 0)?;
            let mut done = false;
            for (kind, _, their_seq, payload) in messages(&self.buf[..n]) {
                // Errors of requests sent without an ACK come in between.
                if their_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = netlink::error_code(payload);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(code));
                        }
                        done = true;
                    }
                    NLMSG_DONE => done = true,
                    _ if answer.is_empty() => answer = payload.to_vec(),
                    _ => {}
                }
            }
            if done {
                return Ok(answer);
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from ctnetlink"))
    }

    /// Sends one request; returns its sequence number.
    fn send(&mut self, subsys: u16, msg: u16, family: u8, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        // struct nfgenmsg: family, version, resource id
        let packet = netlink::request((subsys << 8) | msg, flags, seq, &[&[family, 0, 0, 0], body]);
        self.requests.send_to(&packet, &NlAddr::new(0, 0), 0)?;
        Ok(seq)
    }
}

fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}

fn put(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn nest(fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut inner = Vec::new();
    fill(&mut inner);
    inner
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: Tuple) {
    let ip = nest(|b| match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(b, CTA_IP_V4_SRC, &s.octets());
            put(b, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            put(b, CTA_IP_V6_SRC, &v6(s));
            put(b, CTA_IP_V6_DST, &v6(d));
        }
    });
    let proto = nest(|b| {
        put(b, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
        put(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        put(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    });
    let tuple = nest(|b| {
        put(b, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        put(b, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    });
    put(buf, kind | NLA_F_NESTED, &tuple);
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Attributes: (type without flags, value).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(buf.get(..2)?.try_into().ok()?));
        if len < 4 || len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[2..4].try_into().ok()?) & 0x3fff;
        let value = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, value))
    })
}

/// What ftpgate reads from a conntrack message.
#[derive(Debug, Default)]
struct Conntrack {
    orig: Option<Tuple>,
    master: Option<Tuple>,
    tcp_state: Option<u8>,
    orig_bytes: u64,
    reply_bytes: u64,
}

impl Conntrack {
    fn parse(body: &[u8]) -> Self {
        let mut ct = Self::default();
        for (kind, value) in attrs(body) {
            match kind {
                CTA_TUPLE_ORIG => ct.orig = parse_tuple(value),
                CTA_TUPLE_MASTER => ct.master = parse_tuple(value),
                CTA_PROTOINFO => {
                    let tcp = attrs(value).find(|(k, _)| *k == CTA_PROTOINFO_TCP).map(|(_, v)| v);
                    ct.tcp_state = tcp
                        .and_then(|v| attrs(v).find(|(k, _)| *k == CTA_PROTOINFO_TCP_STATE))
                        .and_then(|(_, v)| v.first().copied());
                }
                CTA_COUNTERS_ORIG => ct.orig_bytes = counter_bytes(value),
                CTA_COUNTERS_REPLY => ct.reply_bytes = counter_bytes(value),
                _ => {}
            }
        }
        ct
    }
}

fn counter_bytes(value: &[u8]) -> u64 {
    attrs(value)
        .find(|(k, _)| *k == CTA_COUNTERS_BYTES)
        .and_then(|(_, v)| v.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn parse_tuple(value: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for (kind, v) in attrs(value) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(v) {
                    let ip = match a.len() {
                        4 => <[u8; 4]>::try_from(a).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(a).ok().map(IpAddr::from),
                        _ => None,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(v) {
                    let port = <[u8; 2]>::try_from(a).ok().map(u16::from_be_bytes);
                    match k {
                        CTA_PROTO_NUM => proto = a.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if proto != Some(libc::IPPROTO_TCP as u8) {
        return None;
    }
    Some(Tuple { src: src?, dst: dst?, sport: sport?, dport: dport? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_written_then_parsed_is_the_same() {
        for (s, d) in [("192.0.2.10", "198.51.100.10"), ("2001:db8::10", "2001:db8:1::10")] {
            let t = Tuple { src: s.parse().unwrap(), dst: d.parse().unwrap(), sport: 40001, dport: 50000 };
            let mut buf = Vec::new();
            put_tuple(&mut buf, CTA_TUPLE_ORIG, t);
            let (kind, value) = attrs(&buf).next().unwrap();
            assert_eq!(kind, CTA_TUPLE_ORIG);
            assert_eq!(parse_tuple(value), Some(t));
        }
    }

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple { src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport, dport }
    }

    fn new_ct(orig: Tuple, master: Option<Tuple>) -> Conntrack {
        Conntrack { orig: Some(orig), master, ..Conntrack::default() }
    }

    const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

    /// A passive pinhole: master, the client's data connection.
    fn passive() -> (Book, Tuple, Tuple) {
        let mut book = Book::default();
        let master = t("192.0.2.10", 7, "198.51.100.10", 0);
        book.insert(Owner { session: 3, data: DataId(1), from_client: true }, master);
        (book, master, t("192.0.2.10", 40001, "198.51.100.10", 50000))
    }

    #[test]
    fn new_related_to_our_master_is_connected() {
        let (mut book, master, conn) = passive();
        let seen = book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
        let peer = "192.0.2.10:40001".parse().unwrap();
        assert_eq!(seen, Some(Event::Connected { session: 3, data: DataId(1), peer }));
        assert_eq!(book.peer(3, DataId(1)), Some(peer));
    }

    #[test]
    fn new_with_other_or_no_master_is_ignored() {
        let (mut book, _, conn) = passive();
        let other = t("192.0.2.10", 8, "198.51.100.10", 0);
        assert_eq!(book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(other))), None);
        assert_eq!(book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, None)), None);
        assert_eq!(book.peer(3, DataId(1)), None);
    }

    #[test]
    fn lookup_in_time_wait_ends_clean_in_close_ends_reset_else_runs() {
        for (state, reset) in
            [(TCP_CONNTRACK_TIME_WAIT, Some(false)), (TCP_CONNTRACK_CLOSE, Some(true)), (3, None)]
        {
            let (mut book, master, conn) = passive();
            book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
            let now =
                Conntrack { tcp_state: Some(state), orig_bytes: 60, reply_bytes: 5000, ..new_ct(conn, None) };
            let want = reset.map(|reset| Event::Ended {
                session: 3,
                data: DataId(1),
                to_client: 5000,
                to_server: 60,
                reset,
            });
            assert_eq!(book.looked_up(conn, &now), want, "state {state}");
            // Once: a later lookup or DESTROY finds nothing to end.
            if reset.is_some() {
                assert_eq!(book.looked_up(conn, &now), None);
                assert_eq!(book.seen(IPCTNL_MSG_CT_DELETE, 0, &now), None);
            }
        }
    }

    #[test]
    fn an_update_event_is_not_an_end() {
        // Not subscribed to; were one read, the lookup still decides.
        let (mut book, master, conn) = passive();
        book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
        let update = Conntrack { tcp_state: Some(TCP_CONNTRACK_TIME_WAIT), ..new_ct(conn, None) };
        assert_eq!(book.seen(IPCTNL_MSG_CT_NEW, 0, &update), None);
        assert_eq!(book.by_conn.len(), 1);
    }

    #[test]
    fn end_counts_by_direction_once() {
        let (mut book, master, conn) = passive();
        book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
        // Passive: the original direction is the client's, toward the server.
        let ended =
            Event::Ended { session: 3, data: DataId(1), to_client: 5000, to_server: 60, reset: false };
        assert_eq!(book.end(conn, (60, 5000), false), Some(ended));
        assert_eq!(book.end(conn, (60, 5000), false), None);
        let destroy = Conntrack { orig_bytes: 1, reply_bytes: 2, ..new_ct(conn, None) };
        assert_eq!(book.seen(IPCTNL_MSG_CT_DELETE, 0, &destroy), None);
    }

    #[test]
    fn active_destroy_before_time_wait_ends_with_its_counts() {
        let mut book = Book::default();
        let master = t("198.51.100.10", 9, "192.0.2.10", 0);
        book.insert(Owner { session: 4, data: DataId(0), from_client: false }, master);
        let conn = t("198.51.100.10", 20, "192.0.2.10", 40947);
        book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
        let destroy = Conntrack { orig_bytes: 7000, reply_bytes: 80, ..new_ct(conn, None) };
        let ended =
            Event::Ended { session: 4, data: DataId(0), to_client: 7000, to_server: 80, reset: false };
        assert_eq!(book.seen(IPCTNL_MSG_CT_DELETE, 0, &destroy), Some(ended));
    }

    #[test]
    fn removed_channel_forgets_master_and_connection() {
        let (mut book, master, conn) = passive();
        book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master)));
        assert_eq!(book.remove(3, DataId(1)), Some((master, true)));
        assert_eq!(book.end(conn, (1, 1), false), None);
        assert_eq!(book.seen(IPCTNL_MSG_CT_NEW, CREATE, &new_ct(conn, Some(master))), None);
    }

    #[test]
    fn event_message_parsed_tuple_master_state_counters() {
        let conn = t("2001:db8:1::10", 40001, "2001:db8:2::10", 50000);
        let master = t("2001:db8:1::10", 7, "2001:db8:2::10", 0);
        let mut body = Vec::new();
        put_tuple(&mut body, CTA_TUPLE_ORIG, conn);
        put_tuple(&mut body, CTA_TUPLE_MASTER, master);
        let state = nest(|b| put(b, CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_TIME_WAIT]));
        let tcp = nest(|b| put(b, CTA_PROTOINFO_TCP | NLA_F_NESTED, &state));
        put(&mut body, CTA_PROTOINFO | NLA_F_NESTED, &tcp);
        for (kind, bytes) in [(CTA_COUNTERS_ORIG, 123u64), (CTA_COUNTERS_REPLY, 4_567_890)] {
            let counters = nest(|b| put(b, CTA_COUNTERS_BYTES, &bytes.to_be_bytes()));
            put(&mut body, kind | NLA_F_NESTED, &counters);
        }
        let ct = Conntrack::parse(&body);
        assert_eq!(
            (ct.orig, ct.master, ct.tcp_state),
            (Some(conn), Some(master), Some(TCP_CONNTRACK_TIME_WAIT))
        );
        assert_eq!((ct.orig_bytes, ct.reply_bytes), (123, 4_567_890));
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        let mut buf = Vec::new();
        put(&mut buf, 1, &[1, 2, 3, 4]);
        buf.extend_from_slice(&[200, 0, 2, 0]);
        assert_eq!(attrs(&buf).count(), 1);
        assert!(Conntrack::parse(&buf[..3]).orig.is_none());
    }
}
