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
}

impl Pump {
    fn new() -> io::Result<Self> {
        let (pipe_r, pipe_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A bigger pipe means fewer wakeups per MiB; the kernel may refuse
        // (pipe-max-size), which only costs speed.
        let _ = nix::fcntl::fcntl(&pipe_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Self { pipe_r, pipe_w, in_pipe: 0, moved: 0, source_eof: false, sink_shut: false })
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
                    Err(e) => return Err(e.into()),
                }
            }
            if self.source_eof && self.in_pipe == 0 && !self.sink_shut {
                self.sink_shut = true;
                moved = true;
                match dst.shutdown(Shutdown::Write) {
                    Ok(()) => {}
                    // The peer is already gone; every byte it took is counted.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
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
