//! The transparent-proxy system calls: IP_TRANSPARENT listeners, the original
//! destination of an intercepted connection, and connects from a foreign
//! source address. The only place in ftpgate that knows these tricks.
//!
//! Reading list: ../shared/reference/kernel-tproxy-nft.txt (socket match,
//! TPROXY target, policy routing) and tproxy-explained.md (getsockname()).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use ftpgate_proto::DataStep;
use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A set-up step of a transparent socket that failed, with what to check.
#[derive(Debug)]
pub(crate) enum TproxyError {
    Socket(io::Error),
    SetTransparent(io::Error),
    Bind { addr: SocketAddr, error: io::Error },
    Listen { addr: SocketAddr, error: io::Error },
    Connect { from: SocketAddr, to: SocketAddr, error: io::Error },
}

impl TproxyError {
    /// The errno kind, as the protocol core wants it.
    pub(crate) fn kind(&self) -> io::ErrorKind {
        self.io().kind()
    }

    /// The data-channel step this failure belongs to, as the core counts
    /// steps: everything before listen() or connect() is part of binding.
    pub(crate) fn step(&self) -> DataStep {
        match self {
            Self::Socket(_) | Self::SetTransparent(_) | Self::Bind { .. } => DataStep::Bind,
            Self::Listen { .. } => DataStep::Listen,
            Self::Connect { .. } => DataStep::Connect,
        }
    }

    pub(crate) fn io(&self) -> &io::Error {
        match self {
            Self::Socket(error) | Self::SetTransparent(error) => error,
            Self::Bind { error, .. } | Self::Listen { error, .. } | Self::Connect { error, .. } => error,
        }
    }
}

impl fmt::Display for TproxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(e) => write!(f, "cannot create a TCP socket: {e}"),
            Self::SetTransparent(e) => write!(
                f,
                "cannot set IP_TRANSPARENT: {e} (it needs CAP_NET_ADMIN: run as root or grant the capability)"
            ),
            Self::Bind { addr, error } => write!(
                f,
                "cannot bind {addr}: {error} (is another process using it? for a foreign address, is IP_TRANSPARENT allowed?)"
            ),
            Self::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Self::Connect { from, to, error } => write!(
                f,
                "cannot connect from {from} to {to}: {error} (is the `ip rule fwmark 1 lookup 100` / `local 0.0.0.0/0 dev lo table 100` route present so replies come back?)"
            ),
        }
    }
}

impl std::error::Error for TproxyError {}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as plain
/// IPv4. A dual-stack listener reports IPv4 clients and their original
/// destinations in that form; every address check and every socket made for
/// them works on the IPv4 address, so that the server connection, the data
/// listeners and their connects are AF_INET sockets as for an IPv4 listener,
/// and an IPv4 client is one client, not one of a shared ::ffff:0:0/96.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn transparent_socket(addr: SocketAddr) -> Result<Socket, TproxyError> {
    let domain = Domain::for_address(addr);
    // Non-blocking from socket(2) on: two fcntl calls fewer per socket, four
    // per data channel.
    let socket = Socket::new(domain, Type::STREAM.cloexec().nonblocking(), Some(Protocol::TCP))
        .map_err(TproxyError::Socket)?;
    let transparent = match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true),
    };
    transparent.map_err(TproxyError::SetTransparent)?;
    // A data listener's port may still have connections in TIME_WAIT from the
    // previous transfer on the same announced port.
    socket.set_reuse_address(true).map_err(TproxyError::Socket)?;
    Ok(socket)
}

/// A non-blocking IP_TRANSPARENT listener on `addr`, which may be foreign:
/// the socket-match divert rule brings connections for it here.
pub(crate) fn listen(addr: SocketAddr, backlog: i32) -> Result<TcpListener, TproxyError> {
    listen_family(addr, backlog, Family::AsGiven)
}

/// Which address families an IPv6 listener takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// An IPv4 address: IPv4. An IPv6 one: the system's default
    /// (net.ipv6.bindv6only, 0 on Linux: dual-stack for `[::]`).
    AsGiven,
    /// IPv6 only (IPV6_V6ONLY): an IPv4 listener on the same port takes
    /// the IPv4 connections, and the two binds do not collide.
    V6Only,
    /// Both families on one IPv6 socket (IPV6_V6ONLY off), whatever the
    /// system default.
    DualStack,
}

impl Family {
    /// For the log: what a listener on `addr` takes.
    pub(crate) fn describe(self, addr: SocketAddr) -> &'static str {
        match (addr.is_ipv6(), self) {
            (false, _) => "ipv4",
            (true, Self::V6Only) => "ipv6",
            (true, Self::DualStack) => "ipv4+ipv6",
            (true, Self::AsGiven) => "ipv6 (system default for ipv4)",
        }
    }
}

/// A control listener: like [`listen`], choosing what an IPv6 listener
/// takes (`[::]:P` beside `0.0.0.0:P` must be IPv6 only), and with
/// SO_REUSEPORT: every event loop (`--workers`) binds its own socket on
/// the address, and the kernel spreads the connections over them by a
/// hash of the 4-tuple, the TPROXY lookup included. Another process can
/// join only if it is of the same user and asks for SO_REUSEPORT too.
pub(crate) fn listen_control(
    addr: SocketAddr,
    backlog: i32,
    family: Family,
) -> Result<TcpListener, TproxyError> {
    let canonical_addr = canonical(addr);
    let socket = transparent_socket(canonical_addr)?;
    socket.set_reuse_port(true).map_err(TproxyError::Socket)?;
    bind_listen(socket, canonical_addr, backlog, family)
}

/// Like [`listen`], choosing what an IPv6 listener takes.
pub(crate) fn listen_family(
    addr: SocketAddr,
    backlog: i32,
    family: Family,
) -> Result<TcpListener, TproxyError> {
    let addr = canonical(addr);
    let socket = transparent_socket(addr)?;
    bind_listen(socket, addr, backlog, family)
}

fn bind_listen(
    socket: Socket,
    addr: SocketAddr,
    backlog: i32,
    family: Family,
) -> Result<TcpListener, TproxyError> {
    if addr.is_ipv6() && family != Family::AsGiven {
        socket.set_only_v6(family == Family::V6Only).map_err(|error| TproxyError::Bind { addr, error })?;
    }
    socket.bind(&SockAddr::from(addr)).map_err(|error| TproxyError::Bind { addr, error })?;
    socket.listen(backlog).map_err(|error| TproxyError::Listen { addr, error })?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Starts a non-blocking connect to `to` from the (foreign) address `from`.
/// Completion is reported by a WRITABLE event; see [`connect_result`].
pub(crate) fn connect_from(from: SocketAddr, to: SocketAddr) -> Result<TcpStream, TproxyError> {
    let (from, to) = (canonical(from), canonical(to));
    let socket = transparent_socket(from)?;
    socket.bind(&SockAddr::from(from)).map_err(|error| TproxyError::Bind { addr: from, error })?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(TproxyError::Connect { from, to, error }),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// The outcome of a non-blocking connect after a WRITABLE event, following
/// mio's advice: `take_error()`, then `peer_addr()`. `Ok(false)`: still
/// connecting (a spurious event).
pub(crate) fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// The original destination of a connection redirected by TPROXY: TPROXY
/// does not rewrite the packet, so the accepted socket's own address is the
/// address the client wanted (IPv4 as IPv4 on a dual-stack listener).
pub(crate) fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    stream.local_addr().map(canonical)
}

/// Whether `ip` is one of this host's own addresses (ATTACKS.md 32). A
/// client that asks the router itself for FTP must not be proxied: the
/// gateway would connect to itself from a foreign address and the answer
/// would leave toward the client.
///
/// Asked of the routing table, as for a packet this host sends: a route
/// of type `local` (an address of an interface, a `local` subnet route
/// such as 127/8) or `anycast` (IPv6's subnet-router anycast) means
/// delivered here. A bind to the address cannot tell: with
/// `net.ipv4.ip_nonlocal_bind=1` (common beside keepalived) it succeeds
/// for any address, and every session was refused
/// (tests/security.rs `gateway_itself_found_with_ip_nonlocal_bind`).
///
/// When the routing table cannot be asked, the bind decides, as before:
/// without a route socket (the loop could not open one and said so as it
/// started, `open_route_socket`) quietly; on a failed look-up, with the
/// error returned the first time in the process, for one warning.
pub(crate) fn is_local_address(ip: IpAddr) -> (bool, Option<io::Error>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let ip = canonical(SocketAddr::new(ip, 0)).ip();
    match route_type(ip) {
        Ok(kind) => (kind == route::RTN_LOCAL || kind == route::RTN_ANYCAST, None),
        // No route to it: not an address of this host.
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => (false, None),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => (binds_locally(ip), None),
        Err(e) => {
            let first = !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed);
            (binds_locally(ip), first.then_some(e))
        }
    }
}

/// A plain (not transparent) bind succeeds only on a local address, unless
/// `ip_nonlocal_bind` is set.
fn binds_locally(ip: IpAddr) -> bool {
    let addr = SocketAddr::new(ip, 0);
    let Ok(socket) = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))
    else {
        return false;
    };
    socket.bind(&SockAddr::from(addr)).is_ok()
}

thread_local! {
    /// One route socket per event loop (each loop has a descriptor table
    /// of its own, `fdtable`), with its last sequence number: a lookup is
    /// one send and one receive.
    static ROUTE_SOCKET: std::cell::RefCell<Option<(netlink_sys::Socket, u32)>> =
        const { std::cell::RefCell::new(None) };
}

/// Opens this thread's route socket, if it has none: an event loop does so
/// as it starts, so that the descriptor is there before any session (and
/// counted in `limits::FDS_PER_WORKER`).
pub(crate) fn open_route_socket() -> io::Result<()> {
    ROUTE_SOCKET.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
            socket.bind_auto()?;
            *cell = Some((socket, 0));
        }
        Ok(())
    })
}

/// rtnetlink's answer to RTM_GETROUTE for `ip`: the route's type.
/// `NotConnected` when this thread has no route socket.
fn route_type(ip: IpAddr) -> io::Result<u8> {
    ROUTE_SOCKET.with(|cell| {
        let mut cell = cell.borrow_mut();
        let Some((socket, seq)) = cell.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no route socket"));
        };
        *seq = seq.wrapping_add(1);
        socket.send(&route::get_request(ip, *seq), 0)?;
        // rtnetlink answers within the send: the reply is queued already.
        // Bounded: a reply to an earlier request that was not read (none
        // should be left) is skipped by its sequence number.
        let mut buf = [0u8; 1024];
        for _ in 0..8 {
            let n = socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT)?;
            if let Some(answer) = route::parse_reply(&buf[..n], *seq) {
                return answer;
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "no answer to RTM_GETROUTE"))
    })
}

/// An RTM_GETROUTE request and its answer (include/uapi/linux/rtnetlink.h):
/// a `struct rtmsg` and one attribute, the destination.
mod route {
    use std::io;
    use std::net::IpAddr;

    use crate::netlink::{self, NLMSG_ERROR};

    const RTM_NEWROUTE: u16 = 24;
    const RTM_GETROUTE: u16 = 26;
    const RTA_DST: u16 = 1;
    pub(super) const RTN_LOCAL: u8 = 2;
    pub(super) const RTN_ANYCAST: u8 = 4;

    pub(super) fn get_request(ip: IpAddr, seq: u32) -> Vec<u8> {
        let (family, octets): (i32, Vec<u8>) = match ip {
            IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
        };
        // rtm_family, rtm_dst_len (a host), src_len, tos, table, protocol,
        // scope, type; rtm_flags (4 bytes)
        let rtmsg = [family as u8, (octets.len() * 8) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let attr_len = (4 + octets.len()) as u16;
        let [l0, l1] = attr_len.to_ne_bytes();
        let [t0, t1] = RTA_DST.to_ne_bytes();
        netlink::request(RTM_GETROUTE, 0, seq, &[&rtmsg, &[l0, l1, t0, t1], &octets])
    }

    /// The route's type from a reply to request `seq`; `None` when the
    /// datagram answers another request.
    pub(super) fn parse_reply(buf: &[u8], seq: u32) -> Option<io::Result<u8>> {
        let (kind, _, _, payload) = netlink::messages(buf).find(|m| m.2 == seq)?;
        Some(match kind {
            // rtm_type, the last byte of struct rtmsg's first eight
            RTM_NEWROUTE => payload
                .get(7)
                .copied()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short RTM_NEWROUTE")),
            // No route (ENETUNREACH), or any other refusal.
            NLMSG_ERROR => Err(io::Error::from_raw_os_error(netlink::error_code(payload))),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected rtnetlink reply")),
        })
    }
}

/// Whether this process may make an IPv4 (`v6` false) or IPv6 socket
/// transparent: what every ftpgate socket needs (`ftpgate doctor`).
pub(crate) fn may_set_transparent(v6: bool) -> io::Result<()> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if v6 {
        socket.set_ip_transparent_v6(true)
    } else {
        socket.set_ip_transparent_v4(true)
    }
}

/// Keeps TCP urgent data in the normal stream (SO_OOBINLINE).
pub(crate) fn set_urgent_inline(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).set_out_of_band_inline(true)
}

/// Sends `bytes` with MSG_OOB: the last byte becomes the urgent byte.
pub(crate) fn send_urgent(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(stream).send_out_of_band(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_the_routing_tables_own() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // without a route socket the bind decides
        assert_eq!(route_type(ip("127.0.0.1")).unwrap_err().kind(), io::ErrorKind::NotConnected);
        assert!(is_local_address(ip("127.0.0.1")).0);
        open_route_socket().unwrap();
        // the whole of 127/8 is a `local` route
        for local in ["127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1"] {
            assert_eq!(route_type(canonical(SocketAddr::new(ip(local), 0)).ip()).unwrap(), route::RTN_LOCAL);
            assert!(is_local_address(ip(local)).0, "{local}");
        }
        for remote in ["192.0.2.123", "203.0.113.7", "2001:db8:ffff::7"] {
            // asked and answered (a route of another type, or none)
            match route_type(ip(remote)) {
                Ok(kind) => assert_ne!(kind, route::RTN_LOCAL, "{remote}"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{remote}: {e}"),
            }
            assert!(!is_local_address(ip(remote)).0, "{remote}");
        }
        // the fallback, where rtnetlink cannot be asked
        assert!(binds_locally(ip("127.0.0.1")));
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").is_ok_and(|v| v.trim() == "0") {
            assert!(!binds_locally(ip("203.0.113.7")));
        }
    }

    #[test]
    fn canonical_v4_mapped_becomes_ipv4_others_unchanged() {
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:2121".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.10:2121".parse().unwrap());
        for plain in ["192.0.2.10:21", "[2001:db8:1::10]:21", "[::]:2121", "[::1]:21"] {
            let addr: SocketAddr = plain.parse().unwrap();
            assert_eq!(canonical(addr), addr, "{plain}");
        }
    }
}
