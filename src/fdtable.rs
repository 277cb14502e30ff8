//! A descriptor table for each event loop.
//!
//! RLIMIT_NOFILE bounds the descriptor numbers of one descriptor table, and
//! the threads of a process share its table. Each event loop therefore
//! takes a table of its own (`unshare(CLONE_FILES)`) as its thread starts:
//! N loops hold N times the limit. Under a hard limit of 20,000, two loops
//! carry 10,000 sessions (20,000 sockets), one table could not. The loops
//! also stop contending for one table's lock as they open and close
//! sockets. The relay threads a loop starts share its table.
//!
//! What keeps this safe is one rule: a descriptor number names the same
//! file in two tables only if it was open when the loops unshared and
//! stayed open. Those are the process's shared descriptors, opened before
//! the loops start: the wakers and mailboxes (`workers::Mailbox`), the
//! epoll copies of the data listener table, the signal descriptor, stdio.
//! Everything a loop opens later is its own, and no other thread may use or
//! close it:
//! - a connection another loop's data listener accepted travels as an
//!   SCM_RIGHTS message (`workers::Shared::post`);
//! - a data listener that a session of another loop no longer needs is
//!   closed by the loop that opened it (`listeners::Listeners::forget`).
//!
//! What a loop opened before it unshared (its control listeners, its
//! epoll, its conntrack sockets) is closed in every other table, so that,
//! for example, a listener a loop closes at a drain stops listening. The
//! main thread keeps its copies of the control listeners until the drain
//! (`workers::Daemon::drain`): `ss -ltnp` and `lsof` read the main
//! thread's table only, and so still name ftpgate as their owner. The
//! sessions' sockets are in the loops' tables, which they do not read:
//! `ls -l /proc/PID/task/*/fd` shows them.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use nix::sched::CloneFlags;

thread_local! {
    /// The event loop whose descriptor table this thread uses: set by the
    /// loop's thread (`enter`); `None` in the main thread and the others.
    static LOOP: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Whether a thread may take a table of its own (a seccomp filter may
/// refuse `unshare`; the loops then share the process's table). Asked
/// once at start, while the process has one thread: the table is then
/// not shared, and the kernel leaves it as it is. No thread is started
/// for it: privileges are dropped later only in a process of one thread.
pub(crate) fn available() -> bool {
    nix::sched::unshare(CloneFlags::CLONE_FILES).is_ok()
}

/// The calling thread becomes event loop `index` with a descriptor table of
/// its own, a copy of the process's. Err: it goes on with the shared one.
/// Either way, `current` names the loop from now on.
pub(crate) fn enter(index: usize) -> io::Result<()> {
    LOOP.with(|l| l.set(Some(index)));
    nix::sched::unshare(CloneFlags::CLONE_FILES).map_err(io::Error::from)
}

/// The event loop whose table the calling thread uses (`enter`), if any.
pub(crate) fn current() -> Option<usize> {
    LOOP.with(Cell::get)
}

/// Makes the calling thread stand for a loop without a table of its own.
#[cfg(test)]
pub(crate) fn pretend(index: Option<usize>) {
    LOOP.with(|l| l.set(index));
}

/// Closes copies in this thread's table that another owner holds
/// elsewhere. Only for descriptors the calling thread never uses through
/// an object: the objects are in the thread that owns them, and their
/// numbers stay valid in that thread's table.
pub(crate) fn close_copies(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: close(2) on a number; see the contract above: nothing in
        // this thread owns it, so no object is left with a closed number.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    #[test]
    fn a_loop_table_is_a_copy_and_its_own() {
        let (r, w) = pipe();
        let w_raw = w.as_raw_fd();
        let t = std::thread::spawn(move || {
            enter(7).expect("unshare");
            assert_eq!(current(), Some(7));
            // The copy: writing through the same number reaches the pipe.
            assert_eq!(unsafe { libc::write(w_raw, b"x".as_ptr().cast(), 1) }, 1);
            // Closing the copy leaves the main thread's number open.
            close_copies(&[w_raw]);
            assert_eq!(unsafe { libc::fcntl(w_raw, libc::F_GETFD) }, -1);
        });
        t.join().expect("loop thread");
        assert_eq!(current(), None);
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut b), Ok(1));
        assert_ne!(unsafe { libc::fcntl(w_raw, libc::F_GETFD) }, -1, "the main table keeps its number");
    }

    #[test]
    fn available_here() {
        assert!(available());
    }
}
