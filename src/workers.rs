//! `--workers N`: N event loops, each a thread with its own mio Poll
//! (`server::Worker`), and what they share.
//!
//! Each loop has its own control listeners, bound with SO_REUSEPORT on
//! the same addresses, so the kernel spreads new connections over the
//! loops; a session and its data channels stay on the loop that accepted
//! it. What must hold for the whole process lives in [`Shared`]: the
//! session caps and rates, the data-channel cap, the failed-login table,
//! the accept-pause episodes and the table of foreign data listeners,
//! which hands a data connection to whichever loop owns the session that
//! expects it (through that loop's [`Mailbox`]).
//!
//! The main thread keeps the signals (signalfd): SIGHUP reloads the
//! configuration once for every loop, SIGTERM/SIGINT asks every loop to
//! drain. Threads are spawned only after the privileges were dropped
//! (`privilege::apply` in `main`): capabilities are per thread on Linux,
//! and a thread inherits those of the thread that creates it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftpgate_proto::Config;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use slog::{crit, debug, error, info, warn, Logger};

use crate::limits::{DataChannels, Rate, SessionRate};
use crate::listeners::{Arrival, Channel, Handover, Listeners, SharedListeners};
use crate::logins::{self, LoginFailures, LoginTable};
use crate::server::{self, StartError, Worker, FIRST_DATA_LISTENER};

/// When accept() fails for lack of descriptors, or the session cap is
/// reached, wait this long instead of spinning on a listener that stays
/// readable.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(200);
/// An episode of accept pauses ends when accept() has gone this long after
/// its last pause without another. Not at the first accept() that works:
/// out of descriptors, one accept() often gets the last one and the
/// session then fails to open its server socket, freeing it again, so
/// "works" and "fails" alternate at every pause.
const EPISODE_QUIET: Duration = Duration::from_secs(1);

/// The supervisor's tokens.
const SIGNALS: Token = Token(0);
const WORKER_ENDED: Token = Token(1);

/// What the daemon runs with.
pub(crate) struct Options {
    pub(crate) listen: Vec<SocketAddr>,
    /// Event loops (`--workers`), at least 1.
    pub(crate) workers: usize,
    /// Data channels on relay threads at most (`--relay-threads`).
    pub(crate) relay_threads: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) max_sessions: usize,
    /// 0: no per-client cap.
    pub(crate) max_sessions_per_client: usize,
    /// New sessions per client address; a rate of 0 turns it off.
    pub(crate) session_rate: Rate,
    pub(crate) max_data_channels: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) login_failures: logins::Limits,
    /// SIGHUP: reads the configuration again.
    pub(crate) reloader: crate::config::Reloader,
}

/// The settings a SIGHUP may change, read by every loop.
#[derive(Clone)]
pub(crate) struct Settings {
    /// What new sessions start with; open ones keep theirs.
    pub(crate) config: Arc<Config>,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_sessions_per_client: usize,
    session_rate: Rate,
    login_failures: logins::Limits,
}

/// Why accept() is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PauseCause {
    /// accept() failed (EMFILE, ENFILE, ENOBUFS, ENOMEM), or the server
    /// socket of the session it accepted found no descriptor.
    AcceptFailed,
    /// `--max-sessions` sessions are open.
    SessionCap,
}

/// A run of accept pauses with one cause: logged when it starts and when
/// accepting resumes, not at every pause (five a second, in every loop).
#[derive(Debug)]
struct PauseEpisode {
    cause: PauseCause,
    since: Instant,
    /// When the last pause began.
    last: Instant,
    pauses: u64,
}

impl PauseEpisode {
    /// The episode is over if no pause begins before then.
    fn quiet_at(&self) -> Instant {
        self.last + ACCEPT_PAUSE + EPISODE_QUIET
    }
}

/// Handovers from the other loops' data listeners to one loop, and the
/// waker that tells it so. Also woken for a drain.
///
/// Each loop has a descriptor table of its own (`fdtable`): a connection's
/// descriptor cannot be passed as a number. It travels on a datagram
/// socket pair as SCM_RIGHTS, tagged with the number of its posting; the
/// rest of the handover waits in `posted`. Both ends were opened before the
/// loops started, so every table has them under the same numbers.
pub(crate) struct Mailbox {
    posted: Mutex<Vec<Posted>>,
    waker: Arc<Waker>,
    /// Other loops send on it.
    to: UnixDatagram,
    /// This loop receives on it.
    from: UnixDatagram,
}

/// A handover without its connection's descriptor.
struct Posted {
    /// Tags the descriptor's message; 0 for an `AcceptFailed`, which has none.
    tag: u64,
    channel: Channel,
    arrival: PostedArrival,
}

enum PostedArrival {
    Connection { peer: SocketAddr },
    AcceptFailed(io::ErrorKind),
}

/// Descriptor messages read per `take_mail`: each is one connection, and
/// what stays queued is read at the next wake.
const MAIL_PER_TAKE: usize = 256;

impl Mailbox {
    fn new(waker: Waker) -> io::Result<Self> {
        let (to, from) = UnixDatagram::pair()?;
        to.set_nonblocking(true)?;
        from.set_nonblocking(true)?;
        Ok(Self { posted: Mutex::new(Vec::new()), waker: Arc::new(waker), to, from })
    }

    /// Sends a connection's descriptor, tagged, to this mailbox's loop.
    fn send_descriptor(&self, tag: u64, fd: RawFd) -> io::Result<()> {
        let bytes = tag.to_ne_bytes();
        let iov = [io::IoSlice::new(&bytes)];
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(self.to.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None)?;
        Ok(())
    }

    /// The descriptors that arrived, by tag, now in the calling thread's
    /// table.
    fn receive_descriptors(&self) -> HashMap<u64, OwnedFd> {
        let mut got = HashMap::new();
        for _ in 0..MAIL_PER_TAKE {
            let mut bytes = [0u8; 8];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
            let (len, mut fds) = {
                let mut iov = [io::IoSliceMut::new(&mut bytes)];
                let Ok(msg) = recvmsg::<()>(self.from.as_raw_fd(), &mut iov, Some(&mut space), flags) else {
                    break;
                };
                let mut fds = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        // SAFETY: SCM_RIGHTS installed these in this
                        // thread's table; nothing else owns them.
                        fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                (msg.bytes, fds)
            };
            if let (8, Some(fd)) = (len, fds.pop()) {
                got.insert(u64::from_ne_bytes(bytes), fd);
            }
        }
        got
    }
}

/// The state of the whole process, shared by the loops.
pub(crate) struct Shared {
    settings: RwLock<Settings>,
    max_sessions: usize,
    /// Sessions open (and accept()s under way that reserved a place).
    sessions: AtomicUsize,
    next_serial: AtomicU64,
    /// Open sessions per client (ATTACKS.md 22): an IPv4 address or an
    /// IPv6 /64, as for the rate (`ClientKey`). Counted whether or not the
    /// cap is on, so that a reload turning it on applies it to the sessions
    /// already open without stopping the loops to count.
    per_client: Mutex<HashMap<crate::limits::ClientKey, usize>>,
    /// The per-client rate of new sessions; `None` while it is off.
    session_rate: Mutex<Option<SessionRate>>,
    pub(crate) data_channels: DataChannels,
    /// Data channels on relay threads at most (`--relay-threads`).
    pub(crate) relay_threads: usize,
    /// Foreign data listeners, shared by the sessions expecting a
    /// connection on the same (address, port), whichever loop owns them.
    pub(crate) data_listeners: SharedListeners,
    /// Failed logins per client address (RFC 2577 §5).
    pub(crate) logins: LoginTable,
    pause: Mutex<Option<PauseEpisode>>,
    drain_until: Mutex<Option<Instant>>,
    /// Bumped by a reload that changed `[policy]`: each loop then feeds the
    /// new policy to its open sessions (`Worker::follow_policy`).
    policy_epoch: AtomicU64,
    mailboxes: Vec<Mailbox>,
    /// Tags of the descriptors `post` sends.
    next_tag: AtomicU64,
    /// Wakes the supervisor when a loop ends.
    supervisor: Waker,
}

/// A poisoned lock means a loop panicked; the others go on with what it
/// left (counters and tables, each consistent after every update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn settings(&self) -> Settings {
        self.settings.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sessions open in the whole process.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Takes a place under `--max-sessions` before an accept(), so that
    /// two loops cannot both take the last one. False at the cap.
    pub(crate) fn reserve_session(&self) -> bool {
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_sessions).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a place: the session ended, or the accept() that
    /// reserved it brought no session. The last session of a drain wakes
    /// every loop, so that they all exit.
    pub(crate) fn release_session(&self) {
        let before = self.sessions.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "session released twice");
        if before == 1 && self.drain_requested().is_some() {
            for m in &self.mailboxes {
                let _ = m.waker.wake();
            }
        }
    }

    /// A number for the next session's records, unique in the process.
    pub(crate) fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new session of `ip` against the per-client cap. False:
    /// refuse it (nothing was counted).
    pub(crate) fn admit_client(&self, ip: IpAddr, cap: usize) -> bool {
        let key = crate::limits::ClientKey::of(ip);
        let mut per_client = lock(&self.per_client);
        let count = per_client.entry(key).or_insert(0);
        if cap > 0 && *count >= cap {
            if *count == 0 {
                per_client.remove(&key);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// A session of `ip` counted by `admit_client` ended.
    pub(crate) fn forget_client(&self, ip: IpAddr) {
        let key = crate::limits::ClientKey::of(ip);
        let mut per_client = lock(&self.per_client);
        if let Some(count) = per_client.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&key);
            }
        }
    }

    pub(crate) fn session_rate(&self) -> MutexGuard<'_, Option<SessionRate>> {
        lock(&self.session_rate)
    }

    pub(crate) fn logins(&self) -> MutexGuard<'_, LoginFailures> {
        self.logins.lock()
    }

    /// A loop pauses accept(). The first pause of an episode, in any loop,
    /// is logged; the others are only counted.
    pub(crate) fn pause_accept(
        &self,
        cause: PauseCause,
        error: Option<&io::Error>,
        now: Instant,
        log: &Logger,
    ) {
        let mut pause = lock(&self.pause);
        if let Some(episode) = pause.as_mut().filter(|e| e.cause == cause) {
            episode.pauses += 1;
            episode.last = now;
            return;
        }
        // Another cause: the old episode ends here, the new one begins.
        self.log_pause_episode_end(pause.take(), log);
        match (cause, error) {
            (PauseCause::AcceptFailed, Some(e)) => error!(
                log, "accept failed; pausing accepts until it works again";
                "error" => %e, "sessions" => self.sessions(),
                "data_channels" => self.data_channels.open_now(),
                "hint" => "out of descriptors or memory: check RLIMIT_NOFILE, fs.file-max, --max-sessions"
            ),
            _ => warn!(
                log, "session cap reached; new clients wait in the backlog";
                "max_sessions" => self.max_sessions
            ),
        }
        *pause = Some(PauseEpisode { cause, since: now, last: now, pauses: 1 });
    }

    /// When the episode under way ends if no pause comes first.
    pub(crate) fn pause_quiet_at(&self) -> Option<Instant> {
        lock(&self.pause).as_ref().map(PauseEpisode::quiet_at)
    }

    /// Ends the pause episode once it has been quiet for `EPISODE_QUIET`:
    /// whichever loop sees it first writes the one closing record.
    pub(crate) fn end_pause_episode(&self, now: Instant, log: &Logger) {
        let mut pause = lock(&self.pause);
        if pause.as_ref().is_some_and(|e| e.quiet_at() <= now) {
            self.log_pause_episode_end(pause.take(), log);
        }
    }

    fn log_pause_episode_end(&self, episode: Option<PauseEpisode>, log: &Logger) {
        let Some(episode) = episode else { return };
        let cause = match episode.cause {
            PauseCause::AcceptFailed => "accept failed",
            PauseCause::SessionCap => "session cap",
        };
        info!(
            log, "accept resumed";
            "cause" => cause, "pauses" => episode.pauses,
            "paused_ms" => (episode.last + ACCEPT_PAUSE).saturating_duration_since(episode.since).as_millis() as u64,
            "sessions" => self.sessions()
        );
    }

    /// Passes a data connection to the loop that owns its session. Err:
    /// its descriptor could not be sent (the connection is closed; the
    /// session's data deadline then ends its channel).
    pub(crate) fn post(&self, handover: Handover) -> io::Result<()> {
        let Some(mailbox) = self.mailboxes.get(handover.channel.worker) else { return Ok(()) };
        let channel = handover.channel;
        match handover.arrival {
            Arrival::AcceptFailed(kind) => lock(&mailbox.posted).push(Posted {
                tag: 0,
                channel,
                arrival: PostedArrival::AcceptFailed(kind),
            }),
            Arrival::Connection { stream, peer } => {
                let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                // Posted before the descriptor is sent: whoever receives
                // the descriptor finds its posting.
                lock(&mailbox.posted).push(Posted {
                    tag,
                    channel,
                    arrival: PostedArrival::Connection { peer },
                });
                if let Err(e) = mailbox.send_descriptor(tag, stream.as_raw_fd()) {
                    lock(&mailbox.posted).retain(|p| p.tag != tag);
                    return Err(e);
                }
                // The message holds the socket now; this table's copy goes.
                drop(stream);
            }
        }
        let _ = mailbox.waker.wake();
        Ok(())
    }

    /// What other loops passed to `worker`. A posting whose descriptor is
    /// still on its way waits for the next wake (the poster wakes us once
    /// it has sent it).
    pub(crate) fn take_mail(&self, worker: usize) -> Vec<Handover> {
        let Some(mailbox) = self.mailboxes.get(worker) else { return Vec::new() };
        // Received before the postings are looked at: a descriptor that
        // arrived has its posting there already.
        let mut descriptors = mailbox.receive_descriptors();
        let mut posted = lock(&mailbox.posted);
        let mut mail = Vec::new();
        posted.retain(|p| {
            let arrival = match p.arrival {
                PostedArrival::AcceptFailed(kind) => Arrival::AcceptFailed(kind),
                PostedArrival::Connection { peer } => match descriptors.remove(&p.tag) {
                    Some(fd) => Arrival::Connection { stream: TcpStream::from(fd), peer },
                    None => return true,
                },
            };
            mail.push(Handover { channel: p.channel, arrival });
            false
        });
        // A descriptor without a posting cannot come (see `post`); were
        // one to, dropping it closes the connection.
        mail
    }

    /// The drain's deadline, once a signal asked for one.
    pub(crate) fn drain_requested(&self) -> Option<Instant> {
        *lock(&self.drain_until)
    }

    fn request_drain(&self, until: Instant) {
        *lock(&self.drain_until) = Some(until);
        for m in &self.mailboxes {
            let _ = m.waker.wake();
        }
    }

    /// How many reloads changed the policy; see `policy_epoch`.
    pub(crate) fn policy_epoch(&self) -> u64 {
        self.policy_epoch.load(Ordering::Acquire)
    }

    /// SIGHUP: new sessions get the reloaded settings. Open sessions keep
    /// the rest of the `Config` they started with, but a changed policy
    /// reaches them too, through their loops: it judges their next command
    /// (a running transfer is never cut).
    fn reload(&self, reloader: &mut crate::config::Reloader, log: &Logger) {
        let Some(new) = reloader.reload(log, self.sessions()) else { return };
        let policy_changed = new.policy_changed;
        let mut settings = self.settings.write().unwrap_or_else(PoisonError::into_inner);
        settings.config = new.core;
        settings.drain_timeout = new.drain_timeout;
        if new.session_rate != settings.session_rate {
            // A new table: clients start with a full burst at the new rate.
            settings.session_rate = new.session_rate;
            *self.session_rate() = SessionRate::new(new.session_rate);
        }
        if new.login_failures != settings.login_failures {
            settings.login_failures = new.login_failures;
            self.logins().set_limits(new.login_failures);
        }
        // The counts are kept whether or not the cap is on: a cap turned
        // on applies to the sessions already open.
        settings.max_sessions_per_client = new.max_sessions_per_client;
        drop(settings);
        if policy_changed {
            self.policy_epoch.fetch_add(1, Ordering::AcqRel);
            for m in &self.mailboxes {
                let _ = m.waker.wake();
            }
        }
    }
}

/// The daemon between binding and running: the loops are built, their
/// listeners bound (as root), no thread started yet.
pub(crate) struct Daemon {
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    poll: Poll,
    signals: SignalFd,
    reloader: crate::config::Reloader,
    listen: usize,
    /// This thread's copies of the control listeners of the loops that
    /// have tables of their own. Kept until the drain, so that `ss -ltnp`
    /// names ftpgate as their owner (it reads the main thread's table
    /// only); closed there, with the loops' own.
    listener_copies: Vec<RawFd>,
    log: Logger,
}

impl Daemon {
    /// Blocks the signals (every thread started later inherits the mask,
    /// so only the signalfd sees them), builds the loops and binds their
    /// control listeners.
    pub(crate) fn bind(opts: Options, log: Logger) -> Result<Self, StartError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGHUP);
        mask.thread_block().map_err(|e| StartError::Setup("blocking signals", e.into()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError::Setup("signalfd", e.into()))?;
        let poll = Poll::new().map_err(|e| StartError::Setup("epoll", e))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| StartError::Setup("registering the signalfd", e))?;
        let supervisor =
            Waker::new(poll.registry(), WORKER_ENDED).map_err(|e| StartError::Setup("eventfd", e))?;

        let count = opts.workers.max(1);
        let mut loops = Vec::with_capacity(count);
        for index in 0..count {
            loops.push(server::Loop::bind(index, &opts.listen, opts.config.kernel_data_path, &log)?);
        }
        if opts.config.kernel_data_path {
            info!(log, "data path: kernel pinholes (conntrack expectations)"; "workers" => count);
        }
        for (addr, family) in loops[0].listening() {
            info!(log, "listening"; "addr" => %addr, "family" => family, "workers" => count);
            crate::metrics::get().control_listener_opened();
        }
        let mut registries = Vec::with_capacity(count);
        let mut mailboxes = Vec::with_capacity(count);
        for l in &loops {
            registries.push(l.registry().map_err(|e| StartError::Setup("sharing an epoll", e))?);
            mailboxes
                .push(Mailbox::new(l.waker()?).map_err(|e| StartError::Setup("a mailbox socket pair", e))?);
        }
        let shared = Arc::new(Shared {
            settings: RwLock::new(Settings {
                config: opts.config,
                drain_timeout: opts.drain_timeout,
                max_sessions_per_client: opts.max_sessions_per_client,
                session_rate: opts.session_rate,
                login_failures: opts.login_failures,
            }),
            max_sessions: opts.max_sessions,
            sessions: AtomicUsize::new(0),
            next_serial: AtomicU64::new(1),
            per_client: Mutex::new(HashMap::new()),
            session_rate: Mutex::new(SessionRate::new(opts.session_rate)),
            data_channels: DataChannels::new(opts.max_data_channels),
            relay_threads: opts.relay_threads,
            data_listeners: SharedListeners::new(Listeners::new(
                FIRST_DATA_LISTENER,
                registries,
                mailboxes.iter().map(|m| m.waker.clone()).collect(),
            )),
            logins: LoginTable::new(opts.login_failures),
            pause: Mutex::new(None),
            drain_until: Mutex::new(None),
            policy_epoch: AtomicU64::new(0),
            mailboxes,
            next_tag: AtomicU64::new(1),
            supervisor,
        });
        let workers = loops.into_iter().map(|l| Worker::new(l, shared.clone(), &log)).collect();
        let listen = opts.listen.len();
        Ok(Self {
            workers,
            shared,
            poll,
            signals,
            reloader: opts.reloader,
            listen,
            listener_copies: Vec::new(),
            log,
        })
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Starts the loops and serves signals until every loop has ended.
    ///
    /// Each loop takes a descriptor table of its own as it starts
    /// (`fdtable`) and closes its copies of the other loops' own
    /// descriptors; once every loop has said so, this thread closes its
    /// copies of them all. Until a loop has its table, closing them here
    /// would close its only copies.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut running: Vec<Option<JoinHandle<io::Result<()>>>> = Vec::new();
        let (ended, ends) = mpsc::channel();
        let (entered, entries) = mpsc::channel::<(usize, bool)>();
        let owned: Vec<Vec<RawFd>> = self.workers.iter().map(Worker::own_fds).collect();
        let listeners: Vec<Vec<RawFd>> = self.workers.iter().map(Worker::control_listener_fds).collect();
        for (index, worker) in std::mem::take(&mut self.workers).into_iter().enumerate() {
            let guard = Ended { index, to: ended.clone(), shared: self.shared.clone() };
            let (to_main, all_owned, log) = (entered.clone(), owned.clone(), self.log.clone());
            let spawned = std::thread::Builder::new().name(format!("ftpgate-w{index}")).spawn(move || {
                let _guard = guard;
                let private = match crate::fdtable::enter(index) {
                    Ok(()) => {
                        let others: Vec<RawFd> = all_owned
                            .iter()
                            .enumerate()
                            .filter(|&(i, _)| i != index)
                            .flat_map(|(_, fds)| fds.iter().copied())
                            .collect();
                        crate::fdtable::close_copies(&others);
                        true
                    }
                    Err(e) => {
                        warn!(log, "event loop shares the process's descriptor table"; "worker" => index, "error" => %e);
                        false
                    }
                };
                let _ = to_main.send((index, private));
                drop(to_main);
                worker.run()
            });
            match spawned {
                Ok(handle) => running.push(Some(handle)),
                Err(e) => {
                    // The loops already running stop as at SIGTERM.
                    crit!(self.log, "cannot start an event loop"; "worker" => index, "error" => %e);
                    drop(entered);
                    self.close_loop_copies(&entries, &owned, &listeners);
                    self.drain(Instant::now(), None);
                    // The spawn error is the one to report.
                    let _ = self.supervise(running, &ends);
                    return Err(e);
                }
            }
        }
        drop(entered);
        self.close_loop_copies(&entries, &owned, &listeners);
        self.supervise(running, &ends)
    }

    /// Closes this thread's copies of the own descriptors of every loop
    /// that has a table of its own, as each says so, but for its control
    /// listeners (`listener_copies`). Returns when every started loop has
    /// said (or ended).
    fn close_loop_copies(
        &mut self,
        entries: &mpsc::Receiver<(usize, bool)>,
        owned: &[Vec<RawFd>],
        listeners: &[Vec<RawFd>],
    ) {
        let mut private = 0;
        // Ends when every loop's sender is gone: each sends before its
        // loop runs, or drops it unsent if its thread never ran.
        for (index, is_private) in entries.iter() {
            if is_private {
                let (kept, rest): (Vec<RawFd>, Vec<RawFd>) =
                    owned[index].iter().partition(|fd| listeners[index].contains(fd));
                crate::fdtable::close_copies(&rest);
                self.listener_copies.extend(kept);
                private += 1;
            }
        }
        debug!(self.log, "event loops have their descriptor tables"; "private" => private, "workers" => owned.len());
    }

    /// Signals in, loops joined as they end. The first loop to fail
    /// drains the others: the daemon then exits with its error.
    fn supervise(
        &mut self,
        mut running: Vec<Option<JoinHandle<io::Result<()>>>>,
        ends: &mpsc::Receiver<usize>,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(8);
        let mut failed: Option<io::Error> = None;
        while running.iter().any(Option::is_some) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if events.iter().any(|e| e.token() == SIGNALS) {
                self.on_signal();
            }
            for index in ends.try_iter() {
                // The loop has returned (or unwound): join() waits only
                // for its thread to finish exiting.
                let outcome = match running.get_mut(index).and_then(Option::take).map(JoinHandle::join) {
                    Some(Ok(result)) => result,
                    Some(Err(_)) => Err(io::Error::other("event loop panicked")),
                    None => continue,
                };
                if let Err(e) = outcome {
                    crit!(self.log, "event loop failed"; "worker" => index, "error" => %e);
                    if self.shared.drain_requested().is_none() {
                        self.drain(Instant::now(), None);
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => {
                info!(self.log, "drained; exiting");
                Ok(())
            }
        }
    }

    fn on_signal(&mut self) {
        let mut got = None;
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGHUP as u32 {
                self.shared.reload(&mut self.reloader, &self.log);
            } else {
                got = Some(info.ssi_signo);
            }
        }
        if let Some(signo) = got {
            if self.shared.drain_requested().is_none() {
                self.drain(Instant::now(), Some(signo));
            }
        }
    }

    /// Every loop stops accepting and drains its sessions.
    fn drain(&mut self, now: Instant, signo: Option<u32>) {
        let log = &self.log;
        match signo {
            Some(signal) => {
                info!(log, "signal: draining"; "signal" => signal, "sessions" => self.shared.sessions())
            }
            None => warn!(log, "draining the other event loops"; "sessions" => self.shared.sessions()),
        }
        crate::service::notify_stopping(&self.log);
        // The loops close their control listeners at once, and this
        // thread its copies of them.
        crate::fdtable::close_copies(&std::mem::take(&mut self.listener_copies));
        for _ in 0..self.listen {
            crate::metrics::get().control_listener_closed();
        }
        self.shared.request_drain(now + self.shared.settings().drain_timeout);
    }
}

/// Tells the supervisor that a loop's thread is ending, when it returns
/// or unwinds from a panic.
struct Ended {
    index: usize,
    to: mpsc::Sender<usize>,
    shared: Arc<Shared>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.to.send(self.index);
        let _ = self.shared.supervisor.wake();
    }
}

/// The default of `--workers`: one loop per core the process may use.
pub(crate) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn mailbox() -> (Poll, Mailbox) {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(0)).unwrap();
        (poll, Mailbox::new(waker).unwrap())
    }

    #[test]
    fn a_connection_crosses_from_one_loop_table_to_another() {
        let (_poll, mailbox) = mailbox();
        let mailbox = Arc::new(mailbox);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // The accepting loop: its own table; its copy goes once sent.
        let sender = Arc::clone(&mailbox);
        let sent = std::thread::spawn(move || {
            crate::fdtable::enter(0).unwrap();
            let raw = accepted.as_raw_fd();
            sender.send_descriptor(42, raw).unwrap();
            drop(accepted);
            raw
        });
        let sent_raw = sent.join().unwrap();
        // The owning loop: another table, where the number means nothing.
        let receiver = Arc::clone(&mailbox);
        let got = std::thread::spawn(move || {
            crate::fdtable::enter(1).unwrap();
            let mut got = receiver.receive_descriptors();
            assert_eq!(got.len(), 1);
            let fd = got.remove(&42).expect("the tag names the descriptor");
            let mut stream = std::net::TcpStream::from(fd);
            stream.write_all(b"through").unwrap();
            // Nothing more queued.
            assert!(receiver.receive_descriptors().is_empty());
        });
        got.join().unwrap();
        let _ = sent_raw;
        let mut buf = [0u8; 7];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"through");
    }

    #[test]
    fn mail_is_bounded_per_take() {
        let (_poll, mailbox) = mailbox();
        let (r, _w) = nix::unistd::pipe().unwrap();
        for tag in 0..(MAIL_PER_TAKE as u64 + 5) {
            if mailbox.send_descriptor(tag, r.as_raw_fd()).is_err() {
                // The socket's buffer is full: what is queued is the test.
                break;
            }
        }
        let first = mailbox.receive_descriptors().len();
        assert!(first <= MAIL_PER_TAKE);
        assert!(first > 0);
    }
}
