//! The data relay: two legs joined by one splice() pump per direction, each
//! through its own pipe, so file data never enters user space.
//!
//! Back-pressure comes for free: a pump reads from its source only while its
//! pipe has room, and a full sink leaves the bytes in the pipe. End of stream
//! is a per-direction state: source FIN, then drain the pipe, then
//! shutdown(Write) on the sink, so a FIN is passed on as a FIN. The relay is
//! complete only when both directions are, so "226 Transfer complete" can
//! never overtake data.
//!
//! A reset is not an end of stream (ATTACKS.md 24). A read error on a leg
//! (a reset, a timeout, anything) or a write error toward a leg fails the
//! whole relay: both legs are armed to close with a reset, so neither far
//! end takes the cut for a complete transfer. Whatever sits in the pipes is
//! dropped: a reset discards unsent socket data anyway, so delivering it
//! first would only make the counts claim bytes nobody got.
//!
//! With `--enforce-data-direction` (ATTACKS.md 34) a relay starts `Held`:
//! it moves nothing, and the bytes wait in the kernel, until the core says
//! which way the transfer goes. Then only that pump runs; the other leg
//! may end with a FIN (passed on), but a byte readable from it (peeked,
//! never read) fails the relay with [`WRONG_DIRECTION`].

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use ftpgate_proto::{Side, WRONG_DIRECTION};
use mio::net::TcpStream;
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;

/// The most a pump moves per splice() call (and the pipe size we ask for).
const CHUNK: usize = 256 * 1024;

/// Bytes one session reads into its pipes per wakeup, across all its
/// relays, before it goes back to the end of the loop's queue (`more`) and
/// every other ready session has its turn. It bounds how long a NOOP of
/// another session on the same loop waits behind a transfer: 256 KiB take
/// about 0.2 ms to splice through here. The budget stops further reads; it
/// does not shorten one: a read takes what the pipe has room for, so a
/// wakeup reads at most `BYTES_PER_WAKEUP + CHUNK`. Cutting reads to the
/// budget cost about 20 % more gateway CPU per GiB in an interleaved A/B
/// (more, smaller reads, and likely more window updates), while this
/// costs nothing measurable against a 1 MiB budget and halves the NOOP
/// round trip's median during a download (lab/bench/profile/README.md).
const BYTES_PER_WAKEUP: usize = 256 * 1024;

/// Splices in (from the source into the pipe) a pump may make before it
/// splices out. Reading what arrived meanwhile before writing, rather than
/// one read per write, gives the sink fewer, larger writes: 4 cost 7-17 %
/// less gateway CPU per GiB than 1 in four interleaved A/Bs (lower in 28
/// of 34 paired rounds) at about 25 % more splice calls (the reads that
/// end on EAGAIN). Reading until the source, the pipe or the budget stops
/// it, without this bound, measured no better than 1 (4 of 8 rounds
/// lower).
const READS_PER_WRITE: usize = 4;

/// splice() calls one session may make per wakeup: bounds the work when a
/// peer sends many small segments, each of which costs a call.
const CALLS_PER_WAKEUP: usize = 32;

/// The splice work one session may still do in this wakeup.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: usize,
    calls: usize,
}

impl Budget {
    /// The budget of one session for one wakeup.
    pub(crate) fn per_wakeup() -> Self {
        Self { bytes: BYTES_PER_WAKEUP, calls: CALLS_PER_WAKEUP }
    }

    pub(crate) fn spent(&self) -> bool {
        self.bytes == 0 || self.calls == 0
    }
}

/// Readiness of one leg, kept across edge-triggered events and cleared only
/// when a call returns WouldBlock (mio's draining rule).
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// Which end of a pump failed.
#[derive(Debug)]
enum Fault {
    /// Reading from the source failed.
    Source(io::Error),
    /// Writing (or passing the FIN) to the sink failed.
    Sink(io::Error),
}

/// A pump's state, handed to a relay thread (relay_threads.rs): its pipe
/// and the bytes in it, what it moved, and how far its end has come.
#[derive(Debug)]
pub(crate) struct PumpParts {
    pub(crate) pipe_r: OwnedFd,
    pub(crate) pipe_w: OwnedFd,
    pub(crate) in_pipe: usize,
    pub(crate) moved: u64,
    pub(crate) source_eof: bool,
    pub(crate) sink_shut: bool,
}

#[derive(Debug)]
struct Pump {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    /// Bytes sitting in the pipe.
    in_pipe: usize,
    /// Bytes written to the sink.
    moved: u64,
    /// The source sent its FIN.
    source_eof: bool,
    /// The FIN was passed on to the sink.
    sink_shut: bool,
}

/// Empty pipes one event loop keeps for its next relays, at most.
/// A data channel takes two; eight cover the churn of four channels at a
/// time (one session's file after file needs two). Each costs two
/// descriptors (counted in `limits::FDS_PER_WORKER`) and, empty, no data
/// pages.
pub(crate) const POOLED_PIPES: usize = 8;

/// One event loop's empty pipes, kept for the next relay: a data channel
/// then costs no pipe2, F_SETPIPE_SZ or close (eight syscalls, and the
/// kernel's allocation of two pipes, per channel; HAProxy keeps a pipe
/// pool for the same reason). A pipe comes back only when the kernel says
/// it holds no byte, so nothing of one transfer can reach another.
///
/// The pool empties itself once unused for [`POOL_IDLE`], so a quiet
/// gateway holds no pipe (the event loop wakes for it, `expire`).
#[derive(Debug, Default)]
pub(crate) struct PipePool {
    pipes: Vec<(OwnedFd, OwnedFd)>,
    /// Pipes taken or given back so far: `expire` sees use by its change.
    uses: u64,
    /// The `uses` seen last, and when they were first seen.
    seen: Option<(u64, Instant)>,
}

/// How long kept pipes outlive the last relay that took or gave one.
const POOL_IDLE: Duration = Duration::from_secs(1);

impl PipePool {
    /// An empty pipe: a kept one, or a new one.
    fn take(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
        self.uses += 1;
        if let Some(pipe) = self.pipes.pop() {
            return Ok(pipe);
        }
        let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A bigger pipe means fewer wakeups per MiB; the kernel may refuse
        // (pipe-max-size), which only costs speed.
        let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok((pipe_r, pipe_w))
    }

    /// Keeps `pipe` if the pool has room and the kernel reports it empty
    /// (FIONREAD); otherwise it closes. The pump's own count is not
    /// trusted for this: a byte left behind would go to a stranger.
    fn put(&mut self, pipe: (OwnedFd, OwnedFd)) {
        self.uses += 1;
        if self.pipes.len() < POOLED_PIPES && pipe_is_empty(&pipe.0) {
            self.pipes.push(pipe);
        }
    }

    /// Closes the kept pipes once the pool has gone unused for
    /// [`POOL_IDLE`]; returns when to call again (None: nothing kept).
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Instant> {
        if self.pipes.is_empty() {
            self.seen = None;
            return None;
        }
        let since = match self.seen {
            Some((uses, since)) if uses == self.uses => since,
            _ => {
                self.seen = Some((self.uses, now));
                now
            }
        };
        if now.saturating_duration_since(since) >= POOL_IDLE {
            self.pipes.clear();
            self.seen = None;
            return None;
        }
        Some(since + POOL_IDLE)
    }

    /// Pipes kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pipes.len()
    }
}

/// Whether the pipe whose read end is `pipe_r` holds no byte.
fn pipe_is_empty(pipe_r: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = -1;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a live c_int; the fd is open for the call (borrowed).
    let rc = unsafe { libc::ioctl(pipe_r.as_raw_fd(), libc::FIONREAD, &mut queued) };
    rc == 0 && queued == 0
}

impl Pump {
    fn new(pool: &mut PipePool) -> io::Result<Self> {
        let (pipe_r, pipe_w) = pool.take()?;
        Ok(Self { pipe_r, pipe_w, in_pipe: 0, moved: 0, source_eof: false, sink_shut: false })
    }

    fn done(&self) -> bool {
        self.sink_shut
    }

    fn into_parts(self) -> PumpParts {
        let Self { pipe_r, pipe_w, in_pipe, moved, source_eof, sink_shut } = self;
        PumpParts { pipe_r, pipe_w, in_pipe, moved, source_eof, sink_shut }
    }

    fn from_parts(p: PumpParts) -> Self {
        let PumpParts { pipe_r, pipe_w, in_pipe, moved, source_eof, sink_shut } = p;
        Self { pipe_r, pipe_w, in_pipe, moved, source_eof, sink_shut }
    }

    /// Up to [`READS_PER_WRITE`] splices in (fewer when the source is
    /// drained, its FIN came, the pipe is full or the budget is spent),
    /// then one splice out, and the FIN once the pipe is empty. Returns
    /// whether anything happened.
    fn step(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
        budget: &mut Budget,
    ) -> Result<bool, Fault> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let mut moved = false;
        let mut reads = 0;
        while reads < READS_PER_WRITE
            && !self.source_eof
            && src_ready.readable
            && self.in_pipe < CHUNK
            && !budget.spent()
        {
            reads += 1;
            budget.calls -= 1;
            // Not cut to the budget: see BYTES_PER_WAKEUP.
            let room = CHUNK - self.in_pipe;
            match splice(src, None, &self.pipe_w, None, room, flags) {
                Ok(0) => {
                    not_urgent_mark(src).map_err(Fault::Source)?;
                    self.source_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    self.in_pipe += n;
                    budget.bytes = budget.bytes.saturating_sub(n);
                    moved = true;
                }
                // EAGAIN means the socket is empty or the pipe is full;
                // emptying the pipe below re-arms the read, so neither
                // case can stall.
                Err(Errno::EAGAIN) => src_ready.readable = false,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Fault::Source(e.into())),
            }
        }
        if self.in_pipe > 0 && dst_ready.writable && budget.calls > 0 {
            budget.calls -= 1;
            match splice(&self.pipe_r, None, dst, None, self.in_pipe, flags) {
                Ok(n) => {
                    self.in_pipe -= n;
                    self.moved += n as u64;
                    moved |= n > 0;
                    src_ready.readable = true;
                }
                Err(Errno::EAGAIN) => dst_ready.writable = false,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Fault::Sink(e.into())),
            }
        }
        if self.source_eof && self.in_pipe == 0 && !self.sink_shut {
            self.sink_shut = true;
            moved = true;
            // ENOTCONN: the sink was reset before its FIN could go out.
            dst.shutdown(Shutdown::Write).map_err(Fault::Sink)?;
        }
        Ok(moved)
    }
}

/// `splice` from a TCP socket returns 0 at the end of its stream, but also
/// at TCP urgent data (MSG_OOB) once the sender's FIN has come:
/// tcp_read_sock stops at the urgent mark, and no splice gets past it
/// (tcp_splice_read). Taken for the end, a prefix would pass as the whole
/// transfer, with a FIN and the server's 226. Urgent data has no place in
/// an FTP data connection, so it fails the relay (a reset both ways, 426);
/// one ioctl at each end of a stream tells the two apart
/// (tests/integrity.rs `urgent_data_*`).
pub(crate) fn not_urgent_mark(src: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    /// include/uapi/linux/sockios.h (libc does not export it for Linux).
    const SIOCATMARK: libc::c_ulong = 0x8905;
    let mut at_mark: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one c_int through the pointer, which
    // points at a live c_int; the fd is open for the call (borrowed).
    let rc = unsafe { libc::ioctl(src.as_raw_fd(), SIOCATMARK, &mut at_mark) };
    if rc == 0 && at_mark != 0 {
        return Err(io::Error::new(ftpgate_proto::URGENT_DATA, "urgent data (MSG_OOB) on a data connection"));
    }
    Ok(())
}

/// Bytes of `stream`'s sending side its peer has acknowledged, since the
/// connection began (TCP_INFO `tcpi_bytes_acked`); 0 when the kernel
/// cannot say.
pub(crate) fn acknowledged(stream: &impl std::os::fd::AsRawFd) -> u64 {
    // SAFETY: tcp_info is plain data, valid all zero.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is
    // that large; the fd is open for the call (borrowed).
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        info.tcpi_bytes_acked
    } else {
        0
    }
}

/// Bytes written into `stream` that its peer has not acknowledged yet
/// (SIOCOUTQ); 0 when the kernel cannot say.
pub(crate) fn unacknowledged(stream: &impl std::os::fd::AsRawFd) -> u64 {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one c_int through the pointer,
    // which points at a live c_int; the fd is open for the call (borrowed).
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 {
        u64::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

/// Which way a relay may move data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Both ways: no enforcement.
    Both,
    /// Enforcing, the transfer not yet known: nothing moves.
    Held,
    /// Only toward this side; a byte from it is a violation.
    Toward(Side),
}

impl Direction {
    /// May data flow toward `side`?
    fn allows(self, side: Side) -> bool {
        match self {
            Self::Both => true,
            Self::Held => false,
            Self::Toward(toward) => toward == side,
        }
    }
}

/// Checks that a leg data may not come from has sent none: `Ok(true)`
/// when its FIN is waiting (the pump may take it), `Ok(false)` when
/// nothing is, a `WRONG_DIRECTION` error when a byte is.
fn guard(src: &TcpStream, ready: &mut Readiness, pump: &Pump) -> io::Result<bool> {
    if pump.source_eof || !ready.readable {
        return Ok(false);
    }
    let mut byte = [0u8; 1];
    match src.peek(&mut byte) {
        Ok(0) => Ok(true),
        Ok(_) => Err(io::Error::new(WRONG_DIRECTION, "data sent the wrong way")),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.readable = false;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where a relay stands after a run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RelayStatus {
    /// Still moving bytes (or waiting for readiness). `more`: the budget ran
    /// out with bytes perhaps still movable, so run again without waiting
    /// for an event (edge-triggered readiness will not repeat itself).
    Running { more: bool },
    /// Both directions ended with a FIN and both pipes are empty.
    Done { to_client: u64, to_server: u64 },
    /// `leg`'s data connection failed: a read error (a reset) on it, or a
    /// write error toward it. Both legs are armed to reset on close; the
    /// caller closes them.
    Failed { leg: Side, error: io::ErrorKind, to_client: u64, to_server: u64 },
}

/// The pumps between a client leg and a server leg.
#[derive(Debug)]
pub(crate) struct Relay {
    to_server: Pump,
    to_client: Pump,
    direction: Direction,
}

impl Relay {
    /// Pipes are created only now, when both legs are up: an idle session
    /// holds none.
    pub(crate) fn new(direction: Direction, pool: &mut PipePool) -> io::Result<Self> {
        Ok(Self { to_server: Pump::new(pool)?, to_client: Pump::new(pool)?, direction })
    }

    /// Gives the pipes back to `pool` (those that are empty, as far as it
    /// has room); the relay is over.
    pub(crate) fn recycle(self, pool: &mut PipePool) {
        for pump in [self.to_server, self.to_client] {
            pool.put((pump.pipe_r, pump.pipe_w));
        }
    }

    /// The transfer is known: from now on data may flow only toward
    /// `toward` (ATTACKS.md 34).
    pub(crate) fn set_direction(&mut self, toward: Side) {
        self.direction = Direction::Toward(toward);
    }

    /// Runs both pumps as far as readiness and `budget` allow. After
    /// `Done` or `Failed` the relay must not run again.
    pub(crate) fn run(
        &mut self,
        client: &TcpStream,
        client_ready: &mut Readiness,
        server: &TcpStream,
        server_ready: &mut Readiness,
        budget: &mut Budget,
    ) -> RelayStatus {
        let fault = loop {
            if budget.spent() {
                break None;
            }
            if self.direction == Direction::Held {
                break None;
            }
            // A leg data may not come from may only end (its FIN).
            let step_up = if self.direction.allows(Side::Server) {
                Ok(true)
            } else {
                guard(client, client_ready, &self.to_server)
            };
            let step_down = if self.direction.allows(Side::Client) {
                Ok(true)
            } else {
                guard(server, server_ready, &self.to_client)
            };
            let up = match step_up {
                Err(e) => break Some((Side::Client, e)),
                Ok(false) => false,
                Ok(true) => match self.to_server.step(client, client_ready, server, server_ready, budget) {
                    Ok(moved) => moved,
                    Err(Fault::Source(e)) => break Some((Side::Client, e)),
                    Err(Fault::Sink(e)) => break Some((Side::Server, e)),
                },
            };
            let down = match step_down {
                Err(e) => break Some((Side::Server, e)),
                Ok(false) => false,
                Ok(true) => match self.to_client.step(server, server_ready, client, client_ready, budget) {
                    Ok(moved) => moved,
                    Err(Fault::Source(e)) => break Some((Side::Server, e)),
                    Err(Fault::Sink(e)) => break Some((Side::Client, e)),
                },
            };
            if !(up || down) {
                break None;
            }
        };
        let (to_client, to_server) = self.counts();
        if let Some((leg, e)) = fault {
            reset_on_close(client);
            reset_on_close(server);
            return RelayStatus::Failed { leg, error: e.kind(), to_client, to_server };
        }
        if self.to_server.done() && self.to_client.done() {
            RelayStatus::Done { to_client, to_server }
        } else {
            RelayStatus::Running { more: budget.spent() }
        }
    }

    /// Bytes written so far, toward (client, server).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.to_client.moved, self.to_server.moved)
    }

    /// A relay that moves both ways, with nothing held back: one that may
    /// leave the loop (relay_threads.rs).
    pub(crate) fn unrestricted(&self) -> bool {
        self.direction == Direction::Both
    }

    /// The pumps (toward the server, toward the client), for the threads.
    pub(crate) fn into_pumps(self) -> (PumpParts, PumpParts) {
        (self.to_server.into_parts(), self.to_client.into_parts())
    }

    /// The pumps back from a promotion that did not happen.
    pub(crate) fn from_pumps(direction: Direction, (to_server, to_client): (PumpParts, PumpParts)) -> Self {
        Self { to_server: Pump::from_parts(to_server), to_client: Pump::from_parts(to_client), direction }
    }
}

/// Makes the coming close() of `stream` send a reset instead of a FIN
/// (SO_LINGER with a zero timeout). Best effort: a socket that refuses is
/// already dead.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};

    /// A connected pair on loopback: (the far end, our non-blocking end).
    /// The far end gives up blocking calls after 10 s, so no test hangs.
    pub(crate) fn pair() -> (StdStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        far.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let (near, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        (far, TcpStream::from_std(near))
    }

    /// Closes `far` with a reset, as a peer that aborts does.
    pub(crate) fn reset(far: StdStream) {
        socket2::SockRef::from(&far).set_linger(Some(Duration::ZERO)).unwrap();
        drop(far);
    }

    /// A far server end that sends `payload`, then its FIN, and reads what
    /// comes back until the other FIN: the thread returns those bytes.
    pub(crate) fn send_then_read_rest(
        mut far: StdStream,
        payload: Vec<u8>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            far.write_all(&payload).unwrap();
            far.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            far.read_to_end(&mut rest).unwrap();
            rest
        })
    }

    /// Reads until the stream ends: the bytes, and how it ended (`Ok` for a
    /// clean FIN).
    pub(crate) fn read_until_end(far: &mut StdStream) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match far.read(&mut buf) {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    /// Runs the relay until it is no longer running, marking every leg ready
    /// each round (a stand-in for epoll) and giving it a fresh budget (a
    /// stand-in for the next wakeup), bounded by rounds and time.
    fn run_to_end(relay: &mut Relay, client: &TcpStream, server: &TcpStream) -> RelayStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..100_000 {
            let mut c = Readiness { readable: true, writable: true };
            let mut s = Readiness { readable: true, writable: true };
            let status = relay.run(client, &mut c, server, &mut s, &mut Budget::per_wakeup());
            match status {
                RelayStatus::Running { more: true } => continue,
                RelayStatus::Running { more: false } if Instant::now() < deadline => {}
                status => return status,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("relay did not finish");
    }

    #[test]
    fn retr_relays_every_byte_then_half_closes_both_ways() {
        let (mut client_far, client) = pair();
        let (server_far, server) = pair();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = send_then_read_rest(server_far, payload.clone());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client_far.read_to_end(&mut got).unwrap();
            client_far.shutdown(Shutdown::Write).unwrap();
            got
        });
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        assert_eq!(status, RelayStatus::Done { to_client: payload.len() as u64, to_server: 0 });
        assert_eq!(reader.join().unwrap(), payload);
        assert!(writer.join().unwrap().is_empty());
    }

    #[test]
    fn stor_with_client_fin_first_delivers_everything_to_server() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        let payload = vec![0xffu8; 700_000];
        let sent = payload.clone();
        let writer = std::thread::spawn(move || {
            client_far.write_all(&sent).unwrap();
            client_far.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            client_far.read_to_end(&mut rest).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server_far.read_to_end(&mut got).unwrap();
            drop(server_far);
            got
        });
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        assert_eq!(status, RelayStatus::Done { to_client: 0, to_server: payload.len() as u64 });
        assert_eq!(reader.join().unwrap(), payload);
        writer.join().unwrap();
    }

    #[test]
    fn empty_transfer_completes() {
        let (client_far, client) = pair();
        let (server_far, server) = pair();
        drop(server_far);
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let closer = std::thread::spawn(move || {
            let mut c = client_far;
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        let status = run_to_end(&mut relay, &client, &server);
        assert_eq!(status, RelayStatus::Done { to_client: 0, to_server: 0 });
        assert!(closer.join().unwrap().is_empty());
    }

    #[test]
    fn retr_server_reset_midstream_fails_on_server_leg_and_resets_client() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        let part = vec![0x5au8; 512 * 1024];
        let writer = std::thread::spawn(move || {
            server_far.write_all(&part).unwrap();
            // Let the bytes reach the gateway before the reset cuts them.
            std::thread::sleep(Duration::from_millis(50));
            reset(server_far);
        });
        let reader = std::thread::spawn(move || read_until_end(&mut client_far));
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        writer.join().unwrap();
        let RelayStatus::Failed { leg, error, to_client, to_server } = status else {
            panic!("a reset must fail the relay, got {status:?}");
        };
        assert_eq!((leg, error), (Side::Server, io::ErrorKind::ConnectionReset));
        assert!(to_client > 0 && to_client <= 512 * 1024, "{to_client}");
        assert_eq!(to_server, 0);
        drop((client, server));
        let (got, end) = reader.join().unwrap();
        assert!(got.len() as u64 <= to_client);
        let error = end.expect_err("the client must see the reset, not a clean end");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn stor_client_reset_midstream_fails_on_client_leg_and_resets_server() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        let part = vec![0xa5u8; 256 * 1024];
        let writer = std::thread::spawn(move || {
            client_far.write_all(&part).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            reset(client_far);
        });
        let reader = std::thread::spawn(move || read_until_end(&mut server_far));
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        writer.join().unwrap();
        let RelayStatus::Failed { leg, error, to_client, to_server } = status else {
            panic!("a reset must fail the relay, got {status:?}");
        };
        assert_eq!((leg, error), (Side::Client, io::ErrorKind::ConnectionReset));
        assert_eq!(to_client, 0);
        assert!(to_server > 0 && to_server <= 256 * 1024, "{to_server}");
        drop((client, server));
        let (got, end) = reader.join().unwrap();
        assert!(got.len() as u64 <= to_server);
        let error = end.expect_err("the server must see the reset, not a clean end");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn retr_client_gone_fails_on_client_leg_and_resets_server() {
        let (client_far, client) = pair();
        let (mut server_far, server) = pair();
        reset(client_far);
        // The server keeps sending until the gateway's reset stops it.
        let writer = std::thread::spawn(move || {
            let chunk = vec![1u8; 64 * 1024];
            for _ in 0..1024 {
                if let Err(e) = server_far.write_all(&chunk) {
                    return e;
                }
            }
            read_until_end(&mut server_far).1.expect_err("the server must see the reset, not a clean end")
        });
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        let RelayStatus::Failed { leg, .. } = status else {
            panic!("a gone client must fail the relay, got {status:?}");
        };
        assert_eq!(leg, Side::Client);
        drop((client, server));
        let error = writer.join().unwrap();
        assert!(
            matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "{error:?}"
        );
    }

    #[test]
    fn fast_relay_stops_at_its_budget_and_asks_to_run_again() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        let payload = vec![7u8; 8 * 1024 * 1024];
        let len = payload.len();
        let writer = std::thread::spawn(move || {
            server_far.write_all(&payload).unwrap();
            server_far.shutdown(Shutdown::Write).unwrap();
            let _ = read_until_end(&mut server_far);
        });
        let reader = std::thread::spawn(move || {
            let (got, end) = read_until_end(&mut client_far);
            end.unwrap();
            client_far.shutdown(Shutdown::Write).unwrap();
            got.len()
        });
        let mut relay = Relay::new(Direction::Both, &mut PipePool::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut asked_again = 0;
        let status = loop {
            assert!(Instant::now() < deadline, "relay did not finish");
            let mut c = Readiness { readable: true, writable: true };
            let mut s = Readiness { readable: true, writable: true };
            let (before, _) = relay.counts();
            let before_in_pipe = relay.to_client.in_pipe as u64;
            let status = relay.run(&client, &mut c, &server, &mut s, &mut Budget::per_wakeup());
            let (after, _) = relay.counts();
            let read = after + relay.to_client.in_pipe as u64 - before - before_in_pipe;
            assert!(read <= (BYTES_PER_WAKEUP + CHUNK) as u64, "one wakeup read {read} bytes");
            match status {
                RelayStatus::Running { more: true } => asked_again += 1,
                RelayStatus::Running { more: false } => std::thread::sleep(Duration::from_millis(1)),
                status => break status,
            }
        };
        assert_eq!(status, RelayStatus::Done { to_client: len as u64, to_server: 0 });
        assert_eq!(reader.join().unwrap(), len);
        writer.join().unwrap();
        assert!(asked_again > 0, "8 MiB never hit the budget");
    }

    #[test]
    fn held_relay_moves_nothing_until_told_then_only_that_way() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(b"file data").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut relay = Relay::new(Direction::Held, &mut PipePool::default()).unwrap();
        let mut c = Readiness { readable: true, writable: true };
        let mut s = Readiness { readable: true, writable: true };
        let status = relay.run(&client, &mut c, &server, &mut s, &mut Budget::per_wakeup());
        assert_eq!(status, RelayStatus::Running { more: false });
        assert_eq!(relay.counts(), (0, 0), "a held relay moved bytes");
        relay.set_direction(Side::Client);
        server_far.shutdown(Shutdown::Write).unwrap();
        let reader = std::thread::spawn(move || {
            let (got, end) = read_until_end(&mut client_far);
            end.unwrap();
            client_far.shutdown(Shutdown::Write).unwrap();
            got
        });
        let status = run_to_end(&mut relay, &client, &server);
        assert_eq!(status, RelayStatus::Done { to_client: 9, to_server: 0 });
        assert_eq!(reader.join().unwrap(), b"file data");
    }

    #[test]
    fn retr_toward_client_a_client_byte_fails_on_client_leg_and_resets_both() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(&[3u8; 10_000]).unwrap();
        client_far.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut relay = Relay::new(Direction::Toward(Side::Client), &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        let RelayStatus::Failed { leg, error, to_server, .. } = status else {
            panic!("a byte the wrong way must fail the relay, got {status:?}");
        };
        assert_eq!((leg, error, to_server), (Side::Client, WRONG_DIRECTION, 0));
        drop((client, server));
        let end = read_until_end(&mut server_far).1;
        assert_eq!(end.expect_err("the server must see a reset").kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn stor_toward_server_a_server_byte_fails_on_server_leg() {
        let (client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(b"?").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut relay = Relay::new(Direction::Toward(Side::Server), &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        let RelayStatus::Failed { leg, error, .. } = status else {
            panic!("a byte the wrong way must fail the relay, got {status:?}");
        };
        assert_eq!((leg, error), (Side::Server, WRONG_DIRECTION));
        drop(client_far);
    }

    #[test]
    fn stor_toward_server_the_servers_fin_is_no_violation() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        // vsftpd half-closes nothing, but a server may FIN its unused way.
        server_far.shutdown(Shutdown::Write).unwrap();
        let payload = vec![9u8; 300_000];
        client_far.write_all(&payload).unwrap();
        client_far.shutdown(Shutdown::Write).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server_far.read_to_end(&mut got).unwrap();
            got.len()
        });
        let mut relay = Relay::new(Direction::Toward(Side::Server), &mut PipePool::default()).unwrap();
        let status = run_to_end(&mut relay, &client, &server);
        assert_eq!(status, RelayStatus::Done { to_client: 0, to_server: 300_000 });
        drop((client, server));
        assert_eq!(reader.join().unwrap(), 300_000);
        let _ = read_until_end(&mut client_far);
    }

    #[test]
    fn a_finished_relay_gives_its_pipes_back_and_the_next_one_takes_them() {
        use std::os::fd::AsRawFd;
        let mut pool = PipePool::default();
        let (mut client_far, client) = pair();
        let (server_far, server) = pair();
        let writer = send_then_read_rest(server_far, vec![7u8; 100_000]);
        let reader = std::thread::spawn(move || {
            let got = read_until_end(&mut client_far);
            client_far.shutdown(Shutdown::Write).unwrap();
            got
        });
        let mut relay = Relay::new(Direction::Both, &mut pool).unwrap();
        let fds = [relay.to_server.pipe_r.as_raw_fd(), relay.to_client.pipe_r.as_raw_fd()];
        assert_eq!(
            run_to_end(&mut relay, &client, &server),
            RelayStatus::Done { to_client: 100_000, to_server: 0 }
        );
        assert_eq!(reader.join().unwrap().0.len(), 100_000);
        drop((client, server));
        let _ = writer.join();
        relay.recycle(&mut pool);
        assert_eq!(pool.len(), 2);
        let next = Relay::new(Direction::Both, &mut pool).unwrap();
        let mut again = [next.to_server.pipe_r.as_raw_fd(), next.to_client.pipe_r.as_raw_fd()];
        again.sort_unstable();
        let mut fds = fds;
        fds.sort_unstable();
        assert_eq!(again, fds, "the kept pipes are reused, not new ones made");
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_pipe_that_still_holds_a_byte_is_closed_not_kept() {
        let mut pool = PipePool::default();
        let (pipe_r, pipe_w) = pool.take().unwrap();
        nix::unistd::write(&pipe_w, b"x").unwrap();
        pool.put((pipe_r, pipe_w));
        assert_eq!(pool.len(), 0, "a byte of one transfer must never reach another");
        let pipe = pool.take().unwrap();
        pool.put(pipe);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn an_unused_pool_closes_its_pipes() {
        let mut pool = PipePool::default();
        let t0 = Instant::now();
        assert_eq!(pool.expire(t0), None, "nothing kept, nothing to wake for");
        let pipe = pool.take().unwrap();
        pool.put(pipe);
        assert_eq!(pool.expire(t0), Some(t0 + POOL_IDLE));
        assert_eq!(pool.expire(t0 + POOL_IDLE / 2), Some(t0 + POOL_IDLE));
        // In use again: the idle time counts from when that was seen.
        let pipe = pool.take().unwrap();
        pool.put(pipe);
        let t1 = t0 + POOL_IDLE / 2;
        assert_eq!(pool.expire(t1), Some(t1 + POOL_IDLE));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.expire(t1 + POOL_IDLE), None);
        assert_eq!(pool.len(), 0, "a quiet gateway holds no pipe");
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_pipes() {
        let mut pool = PipePool::default();
        let pipes: Vec<_> = (0..POOLED_PIPES + 3).map(|_| pool.take().unwrap()).collect();
        for pipe in pipes {
            pool.put(pipe);
        }
        assert_eq!(pool.len(), POOLED_PIPES);
    }

    /// The relay as the event loop runs it: legs registered with mio
    /// (edge-triggered), readiness set only from events and cleared only by
    /// the relay on EAGAIN, a budget per wakeup, and a relay that ran out
    /// of budget run again without a new event (`more`). The examples
    /// above mark both legs ready every round, so they cannot see a lost
    /// wakeup; these properties can: a relay that waits for an edge that
    /// never comes fails them on the deadline.
    mod under_epoll {
        use super::*;
        use mio::{Events, Interest, Poll, Token};
        use proptest::prelude::*;

        const CLIENT: Token = Token(0);
        const SERVER: Token = Token(1);

        thread_local! {
            static POOL: std::cell::RefCell<PipePool> = std::cell::RefCell::new(PipePool::default());
        }

        /// How one far end behaves: what it sends, in which pieces and
        /// pauses, and how fast it reads what comes to it.
        #[derive(Debug, Clone)]
        struct Far {
            send: usize,
            write_chunk: usize,
            read_chunk: usize,
            /// A 1 ms pause after every this many writes (0: none).
            write_pause_every: usize,
            read_pause_every: usize,
        }

        /// Each far end pauses at most this often, and writes at most
        /// `MAX_WRITES` pieces, so that a case ends in well under a second
        /// or two whatever was drawn.
        const MAX_PAUSES: usize = 200;
        const MAX_WRITES: usize = 4096;

        /// Whether the `n`th write or read is followed by a pause.
        fn pause_after(n: usize, every: usize) -> bool {
            every != 0 && n.is_multiple_of(every) && n / every < MAX_PAUSES
        }

        /// The pieces `len` bytes are written in.
        fn piece(len: usize, chunk: usize) -> usize {
            chunk.max(len / MAX_WRITES + 1)
        }

        fn far() -> impl Strategy<Value = Far> {
            (
                prop_oneof![Just(0usize), 1usize..4096, 4096usize..1_500_000],
                1usize..200_000,
                512usize..200_000,
                0usize..8,
                0usize..8,
            )
                .prop_map(
                    |(send, write_chunk, read_chunk, write_pause_every, read_pause_every)| Far {
                        send,
                        write_chunk,
                        read_chunk,
                        write_pause_every,
                        read_pause_every,
                    },
                )
        }

        fn payload(len: usize, salt: u8) -> Vec<u8> {
            (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
        }

        /// Writes `data` in `far`'s pieces and pauses; stops at the first
        /// write that fails (the relay may have reset this end).
        fn send_paced(stream: &mut StdStream, data: &[u8], far: &Far) -> io::Result<()> {
            for (n, bytes) in data.chunks(piece(data.len(), far.write_chunk)).enumerate() {
                stream.write_all(bytes)?;
                if pause_after(n, far.write_pause_every) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        }

        /// Reads until the stream ends, `chunk` bytes at a time with
        /// pauses: the bytes, and how it ended (`Ok` for a clean FIN).
        fn read_paced(
            stream: &mut StdStream,
            chunk: usize,
            pause_every: usize,
        ) -> (Vec<u8>, Result<(), io::ErrorKind>) {
            let mut got = Vec::new();
            let mut buf = vec![0; chunk];
            for n in 0.. {
                match stream.read(&mut buf) {
                    Ok(0) => return (got, Ok(())),
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) => return (got, Err(e.kind())),
                }
                if pause_after(n, pause_every) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            unreachable!()
        }

        /// Runs `far` on its end of the pair: a writer (its payload, then
        /// its FIN) and a reader (until the relay's FIN), side by side.
        /// The handle returns what it read.
        fn play(stream: StdStream, far: Far, salt: u8) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut writing = stream.try_clone().unwrap();
                let (read_chunk, read_pause_every) = (far.read_chunk, far.read_pause_every);
                let writer = std::thread::spawn(move || {
                    send_paced(&mut writing, &payload(far.send, salt), &far).unwrap();
                    writing.shutdown(Shutdown::Write).unwrap();
                });
                let mut reading = stream;
                let (got, end) = read_paced(&mut reading, read_chunk, read_pause_every);
                assert!(end.is_ok(), "far end read failed after {} bytes: {end:?}", got.len());
                writer.join().unwrap();
                got
            })
        }

        /// How the loop runs the relay.
        struct Run {
            /// Bytes and calls per wakeup.
            budget: (usize, usize),
            /// A relay that has moved this many bytes both ways together
            /// moves onto relay threads, as `Conn::maybe_promote` does after
            /// its first MiB: its legs leave the poll, and the threads'
            /// eventfd says when they are done.
            promote_at: Option<u64>,
            /// Direction enforcement (ATTACKS.md 34): the relay starts
            /// `Held`, and learns its direction after this many wakeups
            /// (each at most 2 ms), as the core's `DataDirection` may come
            /// after the data.
            enforce: Option<(Side, usize)>,
        }

        impl Run {
            fn plain(budget: (usize, usize), promote_at: Option<u64>) -> Self {
                Self { budget, promote_at, enforce: None }
            }
        }

        /// The event loop's part, bounded by time and wakeups.
        fn relay_under_epoll(mut client: TcpStream, mut server: TcpStream, run: Run) -> RelayStatus {
            let Run { budget, promote_at, enforce } = run;
            let mut poll = Poll::new().unwrap();
            let both = Interest::READABLE | Interest::WRITABLE;
            poll.registry().register(&mut client, CLIENT, both).unwrap();
            poll.registry().register(&mut server, SERVER, both).unwrap();
            let mut events = Events::with_capacity(8);
            let (mut c, mut s) = (Readiness::default(), Readiness::default());
            let start = if enforce.is_some() { Direction::Held } else { Direction::Both };
            // One pool for every case, as one loop's: a relay that ended
            // whole gives its pipes back and a later case takes them.
            let mut relay = Some(POOL.with(|pool| Relay::new(start, &mut pool.borrow_mut())).unwrap());
            let mut held_for = enforce.map(|(_, wakeups)| wakeups);
            let mut threaded: Option<crate::relay_threads::ThreadedRelay> = None;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut more = false;
            for _ in 0..1_000_000 {
                if !more {
                    // As the loop: block until an event, unless the relay
                    // asked to run again.
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(!left.is_zero(), "no end before the deadline: a lost wakeup? {relay:?}");
                    let wait = if held_for.is_some() { left.min(Duration::from_millis(2)) } else { left };
                    poll.poll(&mut events, Some(wait)).unwrap();
                    for event in &events {
                        let ready = if event.token() == CLIENT { &mut c } else { &mut s };
                        ready.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                        ready.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
                    }
                }
                if let Some(on_threads) = &threaded {
                    match on_threads.status() {
                        RelayStatus::Running { .. } => continue,
                        status => return status,
                    }
                }
                let running = relay.as_mut().unwrap();
                match (held_for, enforce) {
                    (Some(0), Some((toward, _))) => {
                        running.set_direction(toward);
                        held_for = None;
                    }
                    (Some(n), _) => held_for = Some(n - 1),
                    _ => {}
                }
                let mut budget = Budget { bytes: budget.0, calls: budget.1 };
                match running.run(&client, &mut c, &server, &mut s, &mut budget) {
                    RelayStatus::Running { more: again } => more = again,
                    status => {
                        // As the loop: a relay that is done gives its pipes
                        // back (`close_data`), a failed one drops them with
                        // its legs (`reset_data`).
                        if matches!(status, RelayStatus::Done { .. }) {
                            let done = relay.take().unwrap();
                            POOL.with(|pool| done.recycle(&mut pool.borrow_mut()));
                        }
                        return status;
                    }
                }
                let (to_client, to_server) = running.counts();
                if running.unrestricted() && promote_at.is_some_and(|at| to_client + to_server >= at) {
                    let pumps = relay.take().unwrap().into_pumps();
                    match crate::relay_threads::ThreadedRelay::start(usize::MAX, &client, &server, pumps) {
                        Ok(on_threads) => {
                            poll.registry().deregister(&mut client).unwrap();
                            poll.registry().deregister(&mut server).unwrap();
                            let done = on_threads.done_fd();
                            poll.registry()
                                .register(&mut mio::unix::SourceFd(&done), CLIENT, Interest::READABLE)
                                .unwrap();
                            threaded = Some(on_threads);
                            more = false;
                        }
                        Err((_, pumps)) => panic!(
                            "relay threads did not start ({:?})",
                            Relay::from_pumps(Direction::Both, pumps)
                        ),
                    }
                }
            }
            panic!("relay did not end within its wakeups");
        }

        proptest! {
            // A failing case (a stall) takes its 10 s deadline each time it
            // is shrunk: a minute of shrinking is enough to read the case.
            #![proptest_config(ProptestConfig {
                cases: 64,
                failure_persistence: None,
                max_shrink_time: 60_000,
                ..ProptestConfig::default()
            })]

            /// Every byte both ways, in order, then a FIN both ways, and
            /// counts that say so: whatever the sizes, pieces, pauses, slow
            /// readers and budgets.
            #[test]
            fn every_byte_both_ways_then_both_fins(
                client_far in far(),
                server_far in far(),
                budget_bytes in prop_oneof![1usize..4096, Just(BYTES_PER_WAKEUP)],
                budget_calls in prop_oneof![1usize..4, Just(CALLS_PER_WAKEUP)],
                promote_at in prop::option::of(0u64..2_000_000),
            ) {
                let (client_end, client) = pair();
                let (server_end, server) = pair();
                let (up, down) = (client_far.send, server_far.send);
                let client_side = play(client_end, client_far, 0);
                let server_side = play(server_end, server_far, 0x5a);
                let status = relay_under_epoll(client, server, Run::plain((budget_bytes, budget_calls), promote_at));
                let to_client = client_side.join().unwrap();
                let to_server = server_side.join().unwrap();
                prop_assert_eq!(status, RelayStatus::Done { to_client: down as u64, to_server: up as u64 });
                prop_assert!(to_client == payload(down, 0x5a), "client got {} of {} bytes, or others", to_client.len(), down);
                prop_assert!(to_server == payload(up, 0), "server got {} of {} bytes, or others", to_server.len(), up);
            }

            /// One end sends, then resets: the relay fails on that leg, and
            /// the other end reads a prefix of what was sent and then a
            /// reset, never a clean end (the rule that a cut transfer never
            /// looks complete).
            #[test]
            fn a_reset_midstream_reaches_the_other_end_as_a_reset(
                sender in far(),
                reader_chunk in 512usize..200_000,
                reader_pause_every in 0usize..8,
                server_sends in any::<bool>(),
                budget_bytes in prop_oneof![1usize..4096, Just(BYTES_PER_WAKEUP)],
                promote_at in prop::option::of(0u64..2_000_000),
            ) {
                let (client_end, client) = pair();
                let (server_end, server) = pair();
                let (mut sending, receiving) =
                    if server_sends { (server_end, client_end) } else { (client_end, server_end) };
                let sent = payload(sender.send, 7);
                let to_send = sent.clone();
                let cutter = std::thread::spawn(move || {
                    // The relay may already have failed (a slow reader and
                    // a small budget never do; a reset does).
                    let _ = send_paced(&mut sending, &to_send, &sender);
                    reset(sending);
                });
                let reader = std::thread::spawn(move || {
                    let mut far = receiving;
                    read_paced(&mut far, reader_chunk, reader_pause_every)
                });
                let status = relay_under_epoll(client, server, Run::plain((budget_bytes, CALLS_PER_WAKEUP), promote_at));
                cutter.join().unwrap();
                let (got, end) = reader.join().unwrap();
                let cut_leg = if server_sends { Side::Server } else { Side::Client };
                prop_assert!(
                    matches!(status, RelayStatus::Failed { leg, .. } if leg == cut_leg),
                    "relay ended {:?}, wanted a failure on the {:?} leg", status, cut_leg
                );
                prop_assert_eq!(end, Err(io::ErrorKind::ConnectionReset), "after {} of {} bytes", got.len(), sent.len());
                prop_assert!(got.len() <= sent.len() && got[..] == sent[..got.len()], "not a prefix of what was sent");
            }

            /// With direction enforcement, the relay moves nothing until it
            /// learns the direction, then the data one way and the FINs both
            /// ways; a byte from the receiving end fails it on that leg and
            /// resets the sender, after a prefix of the data.
            #[test]
            fn enforced_relay_moves_one_way_and_fails_on_a_byte_the_other(
                sender in far(),
                toward_client in any::<bool>(),
                wrong_bytes in prop_oneof![Just(0usize), 1usize..5000],
                held_wakeups in 0usize..6,
                budget_bytes in prop_oneof![1usize..4096, Just(BYTES_PER_WAKEUP)],
            ) {
                let (client_end, client) = pair();
                let (server_end, server) = pair();
                let toward = if toward_client { Side::Client } else { Side::Server };
                let (mut sending, receiving) =
                    if toward_client { (server_end, client_end) } else { (client_end, server_end) };
                let sent = payload(sender.send, 3);
                let to_send = sent.clone();
                let sender_side = std::thread::spawn(move || {
                    // A violation resets this end: its writes may fail.
                    if send_paced(&mut sending, &to_send, &sender).is_err() {
                        return;
                    }
                    let _ = sending.shutdown(Shutdown::Write);
                    let _ = read_until_end(&mut sending);
                });
                let receiver_side = std::thread::spawn(move || {
                    let mut far = receiving;
                    // After a wrong byte the relay may reset this end
                    // before its FIN: a failed write or shutdown is its due.
                    let _ = far.write_all(&vec![b'x'; wrong_bytes]);
                    let _ = far.shutdown(Shutdown::Write);
                    let (got, end) = read_until_end(&mut far);
                    (got, end.map_err(|e| e.kind()))
                });
                let run = Run { budget: (budget_bytes, CALLS_PER_WAKEUP), promote_at: None, enforce: Some((toward, held_wakeups)) };
                let status = relay_under_epoll(client, server, run);
                sender_side.join().unwrap();
                let (got, end) = receiver_side.join().unwrap();
                if wrong_bytes == 0 {
                    let done = if toward_client {
                        RelayStatus::Done { to_client: sent.len() as u64, to_server: 0 }
                    } else {
                        RelayStatus::Done { to_client: 0, to_server: sent.len() as u64 }
                    };
                    prop_assert_eq!(status, done);
                    prop_assert_eq!(end, Ok(()));
                    prop_assert!(got == sent, "{} of {} bytes, or others", got.len(), sent.len());
                } else {
                    prop_assert!(
                        matches!(status, RelayStatus::Failed { leg, error, .. } if leg == toward && error == WRONG_DIRECTION),
                        "relay ended {:?}, wanted a direction failure on the {:?} leg", status, toward
                    );
                    prop_assert!(got.len() <= sent.len() && got[..] == sent[..got.len()], "not a prefix of what was sent");
                }
            }
        }
    }
}
