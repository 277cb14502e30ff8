//! Bulk transfers on two blocking threads: a relay that has moved
//! [`PROMOTE_AFTER`] bytes leaves the event loop, and one thread per
//! direction splices it to its end, as the bare splice relay in lab/bench
//! does.
//!
//! Why. In the event loop every chunk costs an epoll_wait and the
//! readiness bookkeeping, and a wakeup's budget splits a transfer into
//! reads of 256 KiB. A thread blocked in splice() is woken by the socket
//! itself and reads what has arrived, up to 1 MiB. In an interleaved A/B
//! (lab/bench/ab.py, 6 rounds, 1 GiB passive downloads, --workers 1) this
//! moved 12 % more MiB/s at 21 % less gateway CPU per GiB, in every round
//! (README "Where the time goes"). Small transfers never get here: a data
//! channel of a few KiB would pay two thread starts for nothing, and the
//! loop serves thousands of them.
//!
//! The rules are the loop relay's (relay.rs): a FIN is passed on as a FIN
//! once the pipe is empty; a read or write error on either leg resets both
//! legs at once and drops what sits in the pipes. The reset is an abortive
//! disconnect (`connect(AF_UNSPEC)`, which sends the RST whoever else holds
//! the socket and wakes a thread blocked on it), so a cut from the loop
//! (ABOR, a deadline, the session's end) reaches both far ends at once too.
//!
//! What stays in the loop: `--enforce-data-direction` relays (their guard
//! peeks at the other leg) and the FTPS pass-through. At most
//! `--relay-threads` channels are on threads at once (process-wide); the
//! others stay in the loop.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftpgate_proto::Side;
use mio::net::TcpStream;
use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

use crate::metrics;
use crate::relay::{PumpParts, RelayStatus};

/// Descriptors a relay on threads holds beyond the loop relay's: its two
/// sockets again, and the eventfd that wakes the loop.
pub(crate) const FDS_PER_RELAY: usize = 3;

/// A relay that has moved this many bytes (both ways) is promoted.
pub(crate) const PROMOTE_AFTER: u64 = 1 << 20;

/// The most a thread splices per call, and the pipe size it asks for
/// (pipe-max-size allows 1 MiB by default).
const CHUNK: usize = 1 << 20;

/// The stack of a relay thread: it runs a splice loop, nothing more.
const STACK: usize = 64 * 1024;

/// Channels on threads now, process-wide.
static PROMOTED: AtomicUsize = AtomicUsize::new(0);

/// What both threads of one relay share with the loop.
#[derive(Debug)]
struct Shared {
    to_client: AtomicU64,
    to_server: AtomicU64,
    /// Threads still running.
    running: AtomicU8,
    /// The first leg that failed, and how.
    fault: Mutex<Option<(Side, io::ErrorKind)>>,
    /// Written once, by the last thread out: the loop's wakeup.
    done: OwnedFd,
    client: OwnedFd,
    server: OwnedFd,
}

/// Hands a thread the pump it runs.
type PumpSender = mpsc::Sender<PumpParts>;

/// The loop's handle on a relay that runs on two threads.
#[derive(Debug)]
pub(crate) struct ThreadedRelay {
    shared: Arc<Shared>,
}

/// Why a relay stays in the loop.
#[derive(Debug)]
pub(crate) enum NotPromoted {
    /// `--relay-threads` channels are on threads already.
    Full,
    /// A thread could not start (or a socket not be prepared): the relay
    /// goes on in the loop, unchanged.
    Failed(io::Error),
}

impl ThreadedRelay {
    /// Moves a running relay's pumps onto two threads, if fewer than `cap`
    /// channels are on threads. On error the pumps come back untouched.
    pub(crate) fn start(
        cap: usize,
        client: &TcpStream,
        server: &TcpStream,
        pumps: (PumpParts, PumpParts),
    ) -> Result<Self, (NotPromoted, (PumpParts, PumpParts))> {
        if PROMOTED.fetch_add(1, Ordering::AcqRel) >= cap {
            PROMOTED.fetch_sub(1, Ordering::AcqRel);
            return Err((NotPromoted::Full, pumps));
        }
        match Self::spawn(client, server) {
            Ok((relay, to_client_tx, to_server_tx)) => {
                let (to_server, to_client) = pumps;
                relay.shared.to_client.store(to_client.moved, Ordering::Relaxed);
                relay.shared.to_server.store(to_server.moved, Ordering::Relaxed);
                // The threads wait for these; sending cannot fail while
                // they do.
                let _ = to_client_tx.send(to_client);
                let _ = to_server_tx.send(to_server);
                Ok(relay)
            }
            Err(e) => {
                PROMOTED.fetch_sub(1, Ordering::AcqRel);
                Err((NotPromoted::Failed(e), pumps))
            }
        }
    }

    /// Starts both threads, each waiting for its pump (toward the client,
    /// toward the server); makes the sockets blocking only once both run.
    fn spawn(client: &TcpStream, server: &TcpStream) -> io::Result<(Self, PumpSender, PumpSender)> {
        // SAFETY: eventfd(2) with valid flags; the fd is owned from here.
        let done = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let done = unsafe { OwnedFd::from_raw_fd(done) };
        let shared = Arc::new(Shared {
            to_client: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            running: AtomicU8::new(2),
            fault: Mutex::new(None),
            done,
            client: client.as_fd().try_clone_to_owned()?,
            server: server.as_fd().try_clone_to_owned()?,
        });
        let (down_tx, down_rx) = mpsc::channel::<PumpParts>();
        let (up_tx, up_rx) = mpsc::channel::<PumpParts>();
        let spawn = |rx: mpsc::Receiver<PumpParts>, toward: Side| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("ftpgate-relay".into()).stack_size(STACK).spawn(move || {
                // The loop dropped the sender: promotion was given up.
                if let Ok(parts) = rx.recv() {
                    run(&shared, parts, toward);
                }
            })
        };
        spawn(down_rx, Side::Client)?;
        // A failure here drops up_tx's peer and down_tx: the first thread
        // ends without touching anything.
        spawn(up_rx, Side::Server)?;
        for fd in [&shared.client, &shared.server] {
            blocking(fd.as_fd())?;
        }
        Ok((Self { shared }, down_tx, up_tx))
    }

    /// The descriptor that becomes readable when both threads are done.
    pub(crate) fn done_fd(&self) -> RawFd {
        self.shared.done.as_raw_fd()
    }

    /// Bytes written so far, toward (client, server).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.shared.to_client.load(Ordering::Acquire), self.shared.to_server.load(Ordering::Acquire))
    }

    /// Where the relay stands, as the loop relay says it (`more` is
    /// always false: the threads need no turn of the loop).
    pub(crate) fn status(&self) -> RelayStatus {
        let (to_client, to_server) = self.counts();
        if self.shared.running.load(Ordering::Acquire) != 0 {
            return RelayStatus::Running { more: false };
        }
        match *lock(&self.shared.fault) {
            Some((leg, error)) => RelayStatus::Failed { leg, error, to_client, to_server },
            None => RelayStatus::Done { to_client, to_server },
        }
    }

    /// Cuts the relay: both legs reset now, both threads end.
    pub(crate) fn reset(&self) {
        abort(&self.shared);
    }

    /// Takes the threads' wakeup out of the loop's poll, before the
    /// handle (and with it the token it shares with a leg) goes.
    pub(crate) fn deregister(&self, registry: &mio::Registry) {
        let _ = registry.deregister(&mut mio::unix::SourceFd(&self.done_fd()));
    }
}

impl Drop for ThreadedRelay {
    /// Nobody will account for a relay whose handle is gone (a session
    /// given up on): it must not go on, nor end looking complete.
    fn drop(&mut self) {
        if self.shared.running.load(Ordering::Acquire) != 0 {
            abort(&self.shared);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Resets both legs at once, whoever else holds them: a disconnect sends
/// the RST, and a thread blocked on either socket wakes with an error.
fn abort(shared: &Shared) {
    for fd in [&shared.client, &shared.server] {
        let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
        // SAFETY: connect(2) with an AF_UNSPEC address of the right size.
        unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(fd.as_raw_fd(), &addr, size_of::<libc::sockaddr>() as libc::socklen_t);
        }
    }
}

/// One direction, to its end; the last thread out wakes the loop.
fn run(shared: &Shared, parts: PumpParts, toward: Side) {
    let (src, dst, counter) = match toward {
        Side::Client => (&shared.server, &shared.client, &shared.to_client),
        Side::Server => (&shared.client, &shared.server, &shared.to_server),
    };
    if let Err((leg, e)) = pump(parts, src, dst, toward, counter) {
        let first = {
            let mut fault = lock(&shared.fault);
            let first = fault.is_none();
            if first {
                *fault = Some((leg, e));
            }
            first
        };
        if first {
            abort(shared);
        }
    }
    if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
        PROMOTED.fetch_sub(1, Ordering::AcqRel);
        let one = 1u64.to_ne_bytes();
        // Cannot fail short of a counter overflow: it is written once.
        let _ = nix::unistd::write(&shared.done, &one);
    }
}

/// Splices `src` into `dst` until `src`'s FIN, then passes the FIN on.
/// An error names the leg that failed.
fn pump(
    parts: PumpParts,
    src: &OwnedFd,
    dst: &OwnedFd,
    toward: Side,
    counter: &AtomicU64,
) -> Result<(), (Side, io::ErrorKind)> {
    let from = toward.peer();
    let PumpParts { pipe_r, pipe_w, mut in_pipe, source_eof, sink_shut, .. } = parts;
    let setup = |e: io::Error| (from, e.kind());
    blocking(pipe_r.as_fd()).map_err(setup)?;
    blocking(pipe_w.as_fd()).map_err(setup)?;
    // The loop's pipe may be smaller; a refusal only costs speed.
    let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let mut eof = source_eof;
    loop {
        while in_pipe > 0 {
            match splice(&pipe_r, None, dst, None, in_pipe, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(n) => {
                    in_pipe -= n;
                    counter.fetch_add(n as u64, Ordering::AcqRel);
                    metrics::get().relayed_toward(toward, n as u64);
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err((toward, io::Error::from(e).kind())),
            }
        }
        if eof {
            if !sink_shut {
                socket2::SockRef::from(dst).shutdown(Shutdown::Write).map_err(|e| (toward, e.kind()))?;
            }
            return Ok(());
        }
        match splice(src, None, &pipe_w, None, CHUNK, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(0) => {
                crate::relay::not_urgent_mark(src).map_err(|e| (from, e.kind()))?;
                eof = true;
            }
            Ok(n) => in_pipe = n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err((from, io::Error::from(e).kind())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Instant;

    use super::*;
    use crate::relay::tests::{pair, read_until_end, reset, send_then_read_rest};
    use crate::relay::{Budget, Direction, Readiness, Relay, RelayStatus};

    /// A relay that ran in the loop until it moved at least `bytes`.
    fn relay_that_moved(bytes: u64, client: &TcpStream, server: &TcpStream) -> Relay {
        let mut relay = Relay::new(Direction::Both, &mut crate::relay::PipePool::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while relay.counts().0 + relay.counts().1 < bytes {
            assert!(Instant::now() < deadline, "the loop relay moved {:?}", relay.counts());
            let mut c = Readiness { readable: true, writable: true };
            let mut s = Readiness { readable: true, writable: true };
            let status = relay.run(client, &mut c, server, &mut s, &mut Budget::per_wakeup());
            assert!(matches!(status, RelayStatus::Running { .. }), "{status:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        relay
    }

    fn wait_end(threaded: &ThreadedRelay) -> RelayStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match threaded.status() {
                RelayStatus::Running { .. } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                status => return status,
            }
        }
    }

    /// A download promoted midway: the bytes in the loop's pipe go first,
    /// then the rest; the server's FIN reaches the client, the client's
    /// reaches the server, and the counts are the loop's plus the threads'.
    #[test]
    fn promoted_download_relays_every_byte_and_passes_both_fins() {
        let (mut client_far, client) = pair();
        let (server_far, server) = pair();
        let payload: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = send_then_read_rest(server_far, payload.clone());
        let mut got = vec![0; 1 << 20];
        let mut first = 0;
        // Read some, so that the loop relay can move its first MiB.
        let relay = {
            let reader = std::thread::spawn(move || {
                let n = client_far.read(&mut got).unwrap();
                (client_far, got, n)
            });
            let relay = relay_that_moved(PROMOTE_AFTER, &client, &server);
            let (far, buf, n) = reader.join().unwrap();
            client_far = far;
            got = buf;
            first += n;
            relay
        };
        let moved_in_loop = relay.counts();
        let threaded = ThreadedRelay::start(1000, &client, &server, relay.into_pumps()).unwrap();
        client_far.shutdown(Shutdown::Write).unwrap();
        let (rest, end) = read_until_end(&mut client_far);
        end.unwrap();
        let mut all = got[..first].to_vec();
        all.extend_from_slice(&rest);
        assert!(all == payload, "{} bytes of {}", all.len(), payload.len());
        assert_eq!(writer.join().unwrap(), Vec::<u8>::new(), "the client's FIN reached the server");
        assert_eq!(wait_end(&threaded), RelayStatus::Done { to_client: payload.len() as u64, to_server: 0 });
        assert!(moved_in_loop.0 >= PROMOTE_AFTER);
    }

    /// A reset from the server while the threads relay: the client is
    /// reset too (never a clean end), and the status names the server.
    #[test]
    fn server_reset_on_threads_resets_the_client() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(&vec![7; 2 << 20]).unwrap();
        let relay = relay_that_moved(PROMOTE_AFTER, &client, &server);
        let threaded = ThreadedRelay::start(1000, &client, &server, relay.into_pumps()).unwrap();
        reset(server_far);
        let (_, end) = read_until_end(&mut client_far);
        let kind = end.expect_err("the client saw a clean end").kind();
        assert_eq!(kind, io::ErrorKind::ConnectionReset);
        assert!(
            matches!(wait_end(&threaded), RelayStatus::Failed { leg: Side::Server, .. }),
            "{:?}",
            threaded.status()
        );
    }

    /// The loop cuts a relay on threads (ABOR, a deadline): both far ends
    /// are reset at once, even while the threads are blocked on them.
    #[test]
    fn reset_from_the_loop_reaches_both_ends_at_once() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(&vec![1; 2 << 20]).unwrap();
        let relay = relay_that_moved(PROMOTE_AFTER, &client, &server);
        let threaded = ThreadedRelay::start(1000, &client, &server, relay.into_pumps()).unwrap();
        // Both threads are now blocked: the client reads nothing and the
        // server sends nothing more.
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        threaded.reset();
        for far in [&mut client_far, &mut server_far] {
            let (_, end) = read_until_end(far);
            assert_eq!(end.expect_err("a clean end").kind(), io::ErrorKind::ConnectionReset);
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(matches!(wait_end(&threaded), RelayStatus::Failed { .. }));
    }

    /// Over the cap the relay stays in the loop with all it had.
    #[test]
    fn over_the_cap_the_pumps_come_back_whole() {
        let (_client_far, client) = pair();
        let (mut server_far, server) = pair();
        server_far.write_all(&vec![3; 2 << 20]).unwrap();
        let relay = relay_that_moved(PROMOTE_AFTER, &client, &server);
        let counts = relay.counts();
        let Err((NotPromoted::Full, pumps)) = ThreadedRelay::start(0, &client, &server, relay.into_pumps())
        else {
            panic!("promoted over a cap of 0");
        };
        let relay = Relay::from_pumps(Direction::Both, pumps);
        assert_eq!(relay.counts(), counts);
    }
}
