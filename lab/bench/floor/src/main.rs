//! A bare transparent TCP relay: the userspace floor of lab/bench, the
//! same job as splice_relay.py done the way a fast proxy does it.
//!
//! Every TCP connection the TPROXY rules divert to `--port` is accepted; the
//! relay connects to the connection's original destination *from its
//! original source* (IP_TRANSPARENT, bind to the foreign address and port),
//! as the kernel's tproxy example does, and moves the bytes both ways with
//! non-blocking splice(2) through a pipe per direction. One edge-triggered
//! epoll loop (mio), no threads, no FTP knowledge, no logging: what is left
//! is what any userspace relay pays on this machine, a connection's accept,
//! connect and close, and a wakeup, two splices and the kernel's TCP work
//! for every chunk of every hop.
//!
//! EOF on one side becomes shutdown(SHUT_WR) on the other once the pipe is
//! empty; an error on either side resets both (SO_LINGER 0), so a reset is
//! passed on as a reset.
//!
//!   floor-relay [--port 2121]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const LISTENER: Token = Token(usize::MAX);
/// Bytes asked of one splice into a pipe: the default pipe's capacity.
const CHUNK: usize = 64 << 10;

/// One direction: src → pipe → dst.
struct Pump {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe.
    queued: usize,
    eof: bool,
    /// EOF passed on (shutdown of dst).
    done: bool,
}

impl Pump {
    fn new() -> io::Result<Pump> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pump { read, write, queued: 0, eof: false, done: false })
    }

    /// Moves what can move now; Ok when it must wait for an edge.
    fn run(&mut self, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
        loop {
            if self.queued > 0 {
                match splice(self.read.as_raw_fd(), dst.as_raw_fd(), self.queued) {
                    Ok(n) => self.queued -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
                continue;
            }
            if self.eof {
                if !self.done {
                    dst.shutdown(std::net::Shutdown::Write)?;
                    self.done = true;
                }
                return Ok(());
            }
            match splice(src.as_raw_fd(), self.write.as_raw_fd(), CHUNK) {
                Ok(0) => self.eof = true,
                Ok(n) => self.queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets are what splice takes for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A diverted connection and the relay's own connection to its original
/// destination: `ends[0]` the accepted one, `ends[1]` the outbound one.
struct Pair {
    ends: [TcpStream; 2],
    /// `pumps[0]` moves ends[0] → ends[1], `pumps[1]` the other way.
    pumps: [Pump; 2],
}

impl Pair {
    /// Runs both directions; true when the pair is over (both EOFs passed
    /// on, or an error that reset both ends).
    fn run(&mut self) -> bool {
        let [a, b] = &self.ends;
        let [ab, ba] = &mut self.pumps;
        if ab.run(a, b).and_then(|()| ba.run(b, a)).is_err() {
            for end in &self.ends {
                let _ = socket2::SockRef::from(end).set_linger(Some(Duration::ZERO));
            }
            return true;
        }
        ab.done && ba.done
    }
}

/// The relay's connection to `to` from the foreign address `from`.
fn connect_from(from: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket =
        Socket::new(Domain::for_address(to), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    if to.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_ip_transparent_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(from))?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn listen(port: u16) -> io::Result<TcpListener> {
    let addr: SocketAddr = ([0, 0, 0, 0], port).into();
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_ip_transparent_v4(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The pairs, by slot; a pair's two ends have tokens 2·slot and 2·slot+1.
#[derive(Default)]
struct Pairs {
    slots: Vec<Option<Pair>>,
    free: Vec<usize>,
}

impl Pairs {
    fn insert(&mut self, poll: &Poll, client: TcpStream) -> io::Result<()> {
        let (peer, orig) = (client.peer_addr()?, client.local_addr()?);
        // TPROXY keeps the original destination as the accepted socket's
        // own address.
        let server = connect_from(peer, orig)?;
        client.set_nodelay(true)?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut pair = Pair { ends: [client, server], pumps: [Pump::new()?, Pump::new()?] };
        let both = Interest::READABLE | Interest::WRITABLE;
        for (i, end) in pair.ends.iter_mut().enumerate() {
            if let Err(e) = poll.registry().register(end, Token(2 * slot + i), both) {
                self.free.push(slot);
                return Err(e);
            }
        }
        self.slots[slot] = Some(pair);
        Ok(())
    }

    fn run(&mut self, slot: usize) {
        let over = self.slots.get_mut(slot).and_then(Option::as_mut).is_some_and(Pair::run);
        if over {
            // Closing the sockets takes them out of the epoll set.
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit: a diverted connection holds
/// six descriptors (two sockets, two pipes), and the idle-sessions workload
/// holds thousands.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: limit is a valid rlimit for getrlimit to fill and setrlimit
    // to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 2121;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => {
                port = p.parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            }
            _ => {
                eprintln!("usage: floor-relay [--port 2121]");
                std::process::exit(2);
            }
        }
    }
    raise_fd_limit();
    let mut poll = Poll::new()?;
    let mut listener = listen(port)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut pairs = Pairs::default();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((client, _)) => {
                            // A connection the relay cannot serve is closed.
                            if let Err(e) = pairs.insert(&poll, client) {
                                eprintln!("floor-relay: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // Out of descriptors and the like: the next
                            // connection will wake the loop again.
                            eprintln!("floor-relay: accept: {e}");
                            break;
                        }
                    }
                }
            } else {
                pairs.run(event.token().0 / 2);
            }
        }
    }
}
