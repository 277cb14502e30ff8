//! The data relay: two legs joined by one splice() pump per direction, each
//! through its own pipe, so file data never enters user space.
//!
//! Back-pressure comes for free: a pump reads from its source only while its
//! pipe has room, and a full sink leaves the bytes in the pipe. End of stream
//! is a per-direction state: source EOF, then drain the pipe, then
//! shutdown(Write) on the sink. The relay is complete only when both
//! directions are, so "226 Transfer complete" can never overtake data.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use mio::net::TcpStream;
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;

/// The most a pump moves per splice() call (and the pipe size we ask for).
const CHUNK: usize = 256 * 1024;

/// Readiness of one leg, kept across edge-triggered events and cleared only
/// when a call returns WouldBlock (mio's draining rule).
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

#[derive(Debug)]
struct Pump {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    /// Bytes sitting in the pipe.
    in_pipe: usize,
    /// Bytes written to the sink.
    moved: u64,
    source_eof: bool,
    sink_shut: bool,
    /// The direction ended by a reset rather than a FIN.
    reset: bool,
}

impl Pump {
    fn new() -> io::Result<Self> {
        let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A bigger pipe means fewer wakeups per MiB; the kernel may refuse
        // (pipe-max-size), which only costs speed.
        let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Self { pipe_r, pipe_w, in_pipe: 0, moved: 0, source_eof: false, sink_shut: false, reset: false })
    }

    fn done(&self) -> bool {
        self.sink_shut
    }

    /// Moves what it can from `src` to `dst`. Returns whether anything moved.
    fn run(
        &mut self,
        src: &TcpStream,
        src_ready: &mut Readiness,
        dst: &TcpStream,
        dst_ready: &mut Readiness,
    ) -> io::Result<bool> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let mut progress = false;
        // Bounded: each round either moves bytes or stops on WouldBlock.
        for _ in 0..64 {
            let mut moved = false;
            if !self.source_eof && src_ready.readable && self.in_pipe < CHUNK {
                match splice(src, None, &self.pipe_w, None, CHUNK - self.in_pipe, flags) {
                    Ok(0) => self.source_eof = true,
                    Ok(n) => {
                        self.in_pipe += n;
                        moved = true;
                    }
                    // EAGAIN means the socket is empty or the pipe is full;
                    // emptying the pipe below re-arms the read, so neither
                    // case can stall.
                    Err(Errno::EAGAIN) => src_ready.readable = false,
                    Err(Errno::EINTR) => {}
                    // A reset source ends this direction like EOF: what is
                    // already in the pipe still goes out. Whether the transfer
                    // failed is the server's reply to say (426).
                    Err(Errno::ECONNRESET | Errno::ETIMEDOUT) => {
                        self.source_eof = true;
                        self.reset = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if self.in_pipe > 0 && dst_ready.writable {
                match splice(&self.pipe_r, None, dst, None, self.in_pipe, flags) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.moved += n as u64;
                        moved = true;
                        src_ready.readable = true;
                    }
                    Err(Errno::EAGAIN) => dst_ready.writable = false,
                    Err(Errno::EINTR) => {}
                    // The sink is gone: nothing more can reach it.
                    Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ETIMEDOUT) => {
                        self.in_pipe = 0;
                        self.source_eof = true;
                        self.sink_shut = true;
                        self.reset = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if self.source_eof && self.in_pipe == 0 && !self.sink_shut {
                self.sink_shut = true;
                moved = true;
                match dst.shutdown(Shutdown::Write) {
                    Ok(()) => {}
                    // The peer is already gone; every byte it took is counted.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => self.reset = true,
                    Err(e) => return Err(e),
                }
            }
            progress |= moved;
            if !moved {
                break;
            }
        }
        Ok(progress)
    }
}

/// Where a relay stands after a run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RelayStatus {
    /// Still moving bytes (or waiting for readiness). `more`: the work bound
    /// was hit with bytes still movable, so run again without waiting for an
    /// event (edge-triggered readiness will not repeat itself).
    Running { more: bool },
    /// Both directions ended and both pipes are empty.
    Done { to_client: u64, to_server: u64 },
}

/// The pumps between a client leg and a server leg.
#[derive(Debug)]
pub(crate) struct Relay {
    to_server: Pump,
    to_client: Pump,
}

impl Relay {
    /// Pipes are created only now, when both legs are up: an idle session
    /// holds none.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self { to_server: Pump::new()?, to_client: Pump::new()? })
    }

    /// Runs both pumps as far as readiness allows.
    pub(crate) fn run(
        &mut self,
        client: &TcpStream,
        client_ready: &mut Readiness,
        server: &TcpStream,
        server_ready: &mut Readiness,
    ) -> io::Result<RelayStatus> {
        // Bounded so that one fast transfer cannot starve other sessions.
        let mut more = true;
        for _ in 0..4 {
            let a = self.to_server.run(client, client_ready, server, server_ready)?;
            let b = self.to_client.run(server, server_ready, client, client_ready)?;
            if !(a || b) {
                more = false;
                break;
            }
        }
        if self.to_server.done() && self.to_client.done() {
            Ok(RelayStatus::Done { to_client: self.to_client.moved, to_server: self.to_server.moved })
        } else {
            Ok(RelayStatus::Running { more })
        }
    }

    /// Bytes written so far, toward (client, server).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.to_client.moved, self.to_server.moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::{Duration, Instant};

    /// A connected pair on loopback: (the far end, our non-blocking end).
    fn pair() -> (StdStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        (far, TcpStream::from_std(near))
    }

    /// Runs the relay until it is done, marking every leg ready each round
    /// (a stand-in for epoll), bounded by rounds and time.
    fn run_to_end(relay: &mut Relay, client: &TcpStream, server: &TcpStream) -> RelayStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..100_000 {
            let mut c = Readiness { readable: true, writable: true };
            let mut s = Readiness { readable: true, writable: true };
            let status = relay.run(client, &mut c, server, &mut s).unwrap();
            if matches!(status, RelayStatus::Done { .. }) || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("relay did not finish");
    }

    #[test]
    fn retr_relays_every_byte_then_half_closes_both_ways() {
        let (mut client_far, client) = pair();
        let (mut server_far, server) = pair();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = std::thread::spawn(move || {
            server_far.write_all(&sent).unwrap();
            server_far.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            server_far.read_to_end(&mut rest).unwrap();
            rest
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client_far.read_to_end(&mut got).unwrap();
            client_far.shutdown(Shutdown::Write).unwrap();
            got
        });
        let mut relay = Relay::new().unwrap();
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
        let mut relay = Relay::new().unwrap();
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
        let mut relay = Relay::new().unwrap();
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
}
