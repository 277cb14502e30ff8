//! What bounds the daemon's resources: the descriptor limit and the session
//! cap sized against it, the global cap on data channels (pipes cost
//! memory), and the per-client rate of new sessions (ATTACKS.md 22).
//!
//! The arithmetic is pure and tested here; the event loop (`server.rs`)
//! and the session shell (`conn.rs`) only ask it questions.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors a session holds all its life: its client and server
/// control connections.
pub(crate) const FDS_PER_SESSION: u64 = 2;

/// Descriptors an open data channel adds to its session: its listener (1),
/// its two legs (2) and the two pipes of its relay (4 ends). The core opens
/// at most one data channel per session at a time
/// (`Config::max_data_channels` = 1).
pub(crate) const FDS_PER_DATA_CHANNEL: u64 = 7;

/// The default caps leave descriptors for one open data channel per this
/// many sessions. Idle and browsing sessions hold no data channel; the
/// transfers a site runs at once are a fraction of its sessions, and a
/// PASV beyond the cap gets 425, which clients retry.
pub(crate) const SESSIONS_PER_DATA_CHANNEL: u64 = 4;

/// Descriptors each event loop (`--workers`) holds for itself besides its
/// control listeners: its epoll, its route socket (`tproxy::is_local_address`)
/// and the two ends of each pipe its pool keeps for the next relays
/// (`relay::POOLED_PIPES`).
pub(crate) const FDS_PER_WORKER: usize = 2 + 2 * crate::relay::POOLED_PIPES;

/// Descriptors of each event loop that every descriptor table keeps
/// (`fdtable`): its waker, the epoll copy of the data listener table, and
/// the two ends of its mailbox.
pub(crate) const SHARED_FDS_PER_WORKER: usize = 4;

/// Descriptors kept aside for everything that is not a session: stdio,
/// the epoll and signal descriptors, the control listeners (counted
/// separately), a data connection the kernel hands over while its session
/// is being judged, and headroom for whatever a library opens.
pub(crate) const RESERVED_FDS: u64 = 64;

/// Kernel memory a relaying data channel can pin that the kernel's own TCP
/// memory limit (`net.ipv4.tcp_mem`) does not bound: its two pipes of up to
/// 256 KiB each (`relay::CHUNK`, the size we ask for with F_SETPIPE_SZ).
pub(crate) const PIPE_BYTES_PER_CHANNEL: u64 = 2 * 256 * 1024;

/// The share of physical memory the default data-channel cap lets pipes
/// take: a quarter, so that a full gateway still leaves the host (and its
/// socket buffers, page cache, conntrack) three quarters.
const PIPE_MEMORY_SHARE: u64 = 4;

/// RLIMIT_NOFILE after `raise_nofile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Nofile {
    /// The soft limit found at start.
    pub(crate) was: u64,
    /// The soft limit now in force (the hard limit, or nr_open when the
    /// hard limit is unlimited).
    pub(crate) now: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Only the soft limit
/// moves: raising the hard one needs CAP_SYS_RESOURCE, and the operator's
/// hard limit (systemd's LimitNOFILE=, limits.conf) is a decision we keep.
pub(crate) fn raise_nofile() -> io::Result<Nofile> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit cannot be the soft limit: the kernel refuses
    // anything above fs.nr_open.
    let target = if hard == RLIM_INFINITY { nr_open().unwrap_or(soft) } else { hard };
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(Nofile { was: soft, now: target.max(soft) })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// Where the descriptors of the process are: how many descriptor tables
/// (one per event loop with `fdtable`, else the process's one), each
/// bounded by RLIMIT_NOFILE, and what each table holds before any session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdTables {
    pub(crate) nofile: u64,
    pub(crate) tables: u64,
    /// Descriptors each table holds for the daemon itself, `RESERVED_FDS`
    /// aside: listeners, epolls, pooled pipes, relay threads, mailboxes.
    pub(crate) fixed: u64,
}

impl FdTables {
    /// `workers` event loops with `listen` control addresses each and at
    /// most `relay_threads` relays on threads. With `private` tables, each
    /// loop's table holds its own descriptors, every loop's shared ones,
    /// and all relay threads' (they run in the table of the loop that
    /// started them, and one loop may start them all); else the one table
    /// holds everything.
    pub(crate) fn new(
        nofile: u64,
        workers: usize,
        listen: usize,
        relay_threads: usize,
        private: bool,
    ) -> Self {
        let w = workers.max(1) as u64;
        let own = (listen + FDS_PER_WORKER) as u64;
        let shared = SHARED_FDS_PER_WORKER as u64 * w;
        let relays = (crate::relay_threads::FDS_PER_RELAY * relay_threads) as u64;
        if private {
            Self { nofile, tables: w, fixed: own + shared + relays }
        } else {
            Self { nofile, tables: 1, fixed: own * w + shared + relays }
        }
    }

    /// Descriptors each table has for sessions and data channels.
    pub(crate) fn spare(&self) -> u64 {
        self.nofile.saturating_sub(RESERVED_FDS + self.fixed)
    }
}

/// The session and data-channel caps, and what was asked for but did not
/// fit (the caller warns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) max_sessions: usize,
    pub(crate) max_data_channels: usize,
    pub(crate) sessions_lowered: Option<Lowered>,
    pub(crate) data_channels_lowered: Option<Lowered>,
}

/// Sizes the caps so that every table can hold its share of the sessions
/// (the kernel spreads them evenly over the loops' SO_REUSEPORT listeners)
/// and of the data channels:
/// `FDS_PER_SESSION * sessions + FDS_PER_DATA_CHANNEL * channels <= spare`
/// per table.
///
/// - Sessions: what the operator asked for (absent or 0: by default, room
///   for a data channel per `SESSIONS_PER_DATA_CHANNEL` sessions), lowered
///   if not even one data channel per table would remain.
/// - Data channels: what the operator asked for, or `by_memory` (the
///   memory cap, `default_max_data_channels`), at most what the
///   descriptors left by the sessions carry, and never more than sessions.
///
/// Both are at least 1.
pub(crate) fn fit_caps(
    fds: FdTables,
    sessions: Option<usize>,
    data_channels: Option<usize>,
    by_memory: impl FnOnce(usize) -> usize,
) -> Caps {
    let (t, spare) = (fds.tables.max(1), fds.spare());
    let per_session = FDS_PER_SESSION * SESSIONS_PER_DATA_CHANNEL + FDS_PER_DATA_CHANNEL;
    let default_sessions = t * (spare * SESSIONS_PER_DATA_CHANNEL / per_session);
    // Room for at least one data channel in every table.
    let most_sessions = t * (spare.saturating_sub(FDS_PER_DATA_CHANNEL) / FDS_PER_SESSION);
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).max(1);
    let (max_sessions, sessions_lowered) = match sessions {
        None | Some(0) => (to_usize(default_sessions), None),
        Some(n) if n as u64 > most_sessions => {
            let to = to_usize(most_sessions);
            (to, Some(Lowered { requested: n, to }))
        }
        Some(n) => (n, None),
    };
    let per_table = (max_sessions as u64).div_ceil(t);
    let channels_fit =
        to_usize(t * (spare.saturating_sub(per_table * FDS_PER_SESSION) / FDS_PER_DATA_CHANNEL));
    let (max_data_channels, data_channels_lowered) = match data_channels {
        Some(n) if n > 0 && n > channels_fit => {
            (channels_fit, Some(Lowered { requested: n, to: channels_fit }))
        }
        Some(n) if n > 0 => (n, None),
        _ => (by_memory(max_sessions).min(channels_fit).min(max_sessions).max(1), None),
    };
    Caps { max_sessions, max_data_channels, sessions_lowered, data_channels_lowered }
}

/// A requested cap that the host cannot carry, and what it became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lowered {
    pub(crate) requested: usize,
    pub(crate) to: usize,
}

/// The default cap on data channels open at once: pipes may take a quarter
/// of physical memory (`mem_total / 4 / PIPE_BYTES_PER_CHANNEL`), and there
/// are never more channels than sessions. At least 1.
pub(crate) fn default_max_data_channels(mem_total: u64, max_sessions: usize) -> usize {
    let by_memory = mem_total / PIPE_MEMORY_SHARE / PIPE_BYTES_PER_CHANNEL;
    usize::try_from(by_memory).unwrap_or(usize::MAX).clamp(1, max_sessions.max(1))
}

/// The size of the kernel's conntrack expectation table
/// (`nf_conntrack_expect_max`). It is the router's, shared by every helper
/// (SIP, TFTP, the kernel's FTP helper) and by ftpgate's pinholes, one
/// expectation each.
pub(crate) fn expect_max() -> io::Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_expect_max")?;
    text.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The pinholes ftpgate may hold at once in a table of `expect_max`: three
/// quarters of it. Sized only by memory, the data-channel cap can exceed
/// the table (1536 channels with 3 GiB, against 1024 expectations), and a
/// client that holds a PASV open in many sessions would then fill it: every
/// new pinhole would fail, and so would every other helper's expectations
/// on the router. The quarter left is theirs.
pub(crate) fn pinhole_cap(expect_max: usize) -> usize {
    (expect_max / 4 * 3).max(1)
}

/// Physical memory in bytes (MemTotal of /proc/meminfo).
pub(crate) fn mem_total() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_mem_total(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal line in /proc/meminfo"))
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// The global count of open data channels against their cap. A channel
/// counts from its Listen until its close, whether or not it relays yet:
/// every open channel may become a relay with two pipes.
///
/// Shared by every event loop (`--workers`): atomics, so that opening a
/// data channel never waits for another loop.
#[derive(Debug)]
pub(crate) struct DataChannels {
    open: AtomicUsize,
    max: usize,
    /// Listens refused since the cap was last left: one log record per
    /// episode, not one per refusal.
    refused: AtomicU64,
}

/// What `DataChannels::open` decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Open it. `after_refusals`: the first channel after an episode at the
    /// cap, and how many were refused in it (log that the episode ended).
    Yes { after_refusals: Option<u64> },
    /// Refuse it. `first`: the first refusal of an episode (log it).
    No { first: bool },
}

impl DataChannels {
    pub(crate) fn new(max: usize) -> Self {
        Self { open: AtomicUsize::new(0), max: max.max(1), refused: AtomicU64::new(0) }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn open_now(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A new channel asks to open.
    pub(crate) fn open(&self) -> Admit {
        // Increment only below the cap: two loops racing for the last
        // place cannot both get it.
        let below_cap =
            self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        if below_cap.is_err() {
            let refused = self.refused.fetch_add(1, Ordering::AcqRel) + 1;
            return Admit::No { first: refused == 1 };
        }
        let refused = self.refused.swap(0, Ordering::AcqRel);
        Admit::Yes { after_refusals: (refused > 0).then_some(refused) }
    }

    /// A channel that `open` admitted was closed.
    pub(crate) fn close(&self) {
        let before = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        debug_assert!(before.is_ok(), "data channel closed twice");
    }
}

/// New sessions per client, as a token bucket: `burst` sessions at once,
/// then `rate` per second.
///
/// Tokens are kept in millitokens, so the arithmetic is exact and a rate
/// below 1/s still refills.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    millitokens: u64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Self { millitokens: rate.burst * 1000, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        // u128: a long idle time times a high rate must not overflow.
        let earned = elapsed.as_micros() * u128::from(rate.per_second) / 1000;
        let cap = rate.burst * 1000;
        self.millitokens = u64::try_from(u128::from(self.millitokens) + earned).unwrap_or(cap).min(cap);
        self.at = now;
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }

    /// True once the bucket has refilled to `burst`: it then says no more
    /// than a new bucket would, and can be forgotten.
    pub(crate) fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut probe = *self;
        probe.refill(rate, now);
        probe.millitokens >= rate.burst * 1000
    }
}

/// A per-client session rate: `per_second` new sessions, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) per_second: u64,
    pub(crate) burst: u64,
}

/// `--ipv6-client-prefix`, set once at start (`set_ipv6_client_prefix`).
static IPV6_CLIENT_PREFIX: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(64);

/// What counts as one IPv6 client from now on: the first `len` bits
/// (1..=128) of its address. Called at start, before any session.
pub(crate) fn set_ipv6_client_prefix(len: u8) {
    IPV6_CLIENT_PREFIX.store(len.clamp(1, 128), Ordering::Relaxed);
}

/// Who a per-client count belongs to (session rate and cap, failed
/// logins). IPv4: the address (a NAT'd site shares one address, and
/// shares its count). IPv6: the `--ipv6-client-prefix` (64 by default),
/// which one host usually owns whole: keyed by address, one host could
/// mint a fresh count per connection from its own prefix. On a router
/// whose IPv6 clients share a LAN /64 the operator sets 128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr, u8);

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        Self::with_prefix(ip, IPV6_CLIENT_PREFIX.load(Ordering::Relaxed))
    }

    fn with_prefix(ip: IpAddr, len: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip, 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4), 32),
                None => {
                    let len = len.clamp(1, 128);
                    let mask = u128::MAX << (128 - u32::from(len));
                    Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), len)
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) if self.1 == 128 => write!(f, "{v6}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.1),
        }
    }
}

/// The most clients the rate table tracks at once. An entry is about 64
/// bytes of hash table, so the table stays under about 4 MiB however many
/// source addresses a flood uses.
pub(crate) const MAX_TRACKED_CLIENTS: usize = 65_536;

/// How often full (idle) buckets are swept out of the table: the sweep
/// walks the whole table, so it must not run per connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    bucket: TokenBucket,
    /// Sessions refused since this client last got one: one log record per
    /// episode.
    refused: u64,
}

/// The per-client rate limiter: a token bucket per client, in a table of
/// bounded size.
#[derive(Debug)]
pub(crate) struct SessionRate {
    rate: Rate,
    clients: HashMap<ClientKey, Entry>,
    capacity: usize,
    swept_at: Option<Instant>,
    /// Clients let through untracked since the table was last below its
    /// capacity (one log record per episode).
    untracked: u64,
}

/// What `SessionRate::check` decided about one new session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RateVerdict {
    /// Go ahead. `after_refusals`: this client had sessions refused since
    /// its last one, and how many (log that its episode ended).
    Allow { after_refusals: Option<u64> },
    /// Over the rate: refuse with 421. `first`: the first refusal of this
    /// client's episode (log it).
    Refuse { first: bool },
    /// The table is full of clients that are all still busy: go ahead
    /// without a bucket (the global session cap still holds). `first`: the
    /// first such client of the episode (log it).
    Untracked { first: bool },
}

impl SessionRate {
    /// `None` when the rate is 0 (the limit is off).
    pub(crate) fn new(rate: Rate) -> Option<Self> {
        Self::with_capacity(rate, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(rate: Rate, capacity: usize) -> Option<Self> {
        if rate.per_second == 0 {
            return None;
        }
        let rate = Rate { per_second: rate.per_second, burst: rate.burst.max(1) };
        Some(Self { rate, clients: HashMap::new(), capacity, swept_at: None, untracked: 0 })
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// A client opens a session.
    pub(crate) fn check(&mut self, client: ClientKey, now: Instant) -> RateVerdict {
        self.sweep(now);
        let rate = self.rate;
        if !self.clients.contains_key(&client) {
            if self.clients.len() >= self.capacity {
                self.untracked += 1;
                return RateVerdict::Untracked { first: self.untracked == 1 };
            }
            self.untracked = 0;
            self.clients.insert(client, Entry { bucket: TokenBucket::full(rate, now), refused: 0 });
        }
        let Some(entry) = self.clients.get_mut(&client) else {
            return RateVerdict::Allow { after_refusals: None };
        };
        if entry.bucket.take(rate, now) {
            let refused = std::mem::take(&mut entry.refused);
            RateVerdict::Allow { after_refusals: (refused > 0).then_some(refused) }
        } else {
            entry.refused += 1;
            RateVerdict::Refuse { first: entry.refused == 1 }
        }
    }

    /// Forgets clients whose bucket is full again (idle for `burst / rate`
    /// seconds): a new bucket would decide the same. At most once per
    /// `SWEEP_EVERY`.
    fn sweep(&mut self, now: Instant) {
        if self.swept_at.is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY) {
            return;
        }
        self.swept_at = Some(now);
        let rate = self.rate;
        // A client in a refusal episode stays until it gets a session, so
        // that the episode's end is logged.
        self.clients.retain(|_, e| e.refused > 0 || !e.bucket.is_full(rate, now));
    }

    pub(crate) fn tracked(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { per_second: 20, burst: 100 };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_full_allows_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        for i in 0..100 {
            assert!(b.take(RATE, t0), "take {i} of the burst");
        }
        assert!(!b.take(RATE, t0));
    }

    #[test]
    fn bucket_empty_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        while b.take(RATE, t0) {}
        // 20/s: one token per 50 ms, not before.
        assert!(!b.take(RATE, t0 + ms(49)));
        assert!(b.take(RATE, t0 + ms(50)));
        assert!(!b.take(RATE, t0 + ms(50)));
        // One second: 20 more, exactly.
        let t1 = t0 + ms(1050);
        let got = (0..100).filter(|_| b.take(RATE, t1)).count();
        assert_eq!(got, 20);
    }

    #[test]
    fn bucket_long_idle_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(RATE, t0);
        while b.take(RATE, t0) {}
        let later = t0 + Duration::from_secs(1_000_000);
        assert!(b.is_full(RATE, later));
        let got = (0..1000).filter(|_| b.take(RATE, later)).count();
        assert_eq!(got, 100);
    }

    #[test]
    fn bucket_rate_below_burst_tokens_fractional_refill_not_lost() {
        // 3/s: 333.33 ms per token; three 111 ms steps add up to one token
        // only because millitokens carry the remainder.
        let rate = Rate { per_second: 3, burst: 1 };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!(b.take(rate, t0));
        assert!(!b.take(rate, t0 + ms(111)));
        assert!(!b.take(rate, t0 + ms(222)));
        assert!(b.take(rate, t0 + ms(334)));
    }

    #[test]
    fn session_rate_burst_over_refuses_once_per_episode_then_allows() {
        let mut r = SessionRate::new(RATE).unwrap();
        let c = ClientKey::of("192.0.2.10".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(r.check(c, t0), RateVerdict::Allow { after_refusals: None });
        }
        assert_eq!(r.check(c, t0), RateVerdict::Refuse { first: true });
        assert_eq!(r.check(c, t0), RateVerdict::Refuse { first: false });
        assert_eq!(r.check(c, t0 + ms(10)), RateVerdict::Refuse { first: false });
        assert_eq!(r.check(c, t0 + ms(60)), RateVerdict::Allow { after_refusals: Some(3) });
        assert_eq!(r.check(c, t0 + ms(60)), RateVerdict::Refuse { first: true });
    }

    #[test]
    fn session_rate_clients_have_their_own_buckets() {
        let mut r = SessionRate::new(Rate { per_second: 1, burst: 1 }).unwrap();
        let t0 = Instant::now();
        let a = ClientKey::of("192.0.2.10".parse().unwrap());
        let b = ClientKey::of("192.0.2.11".parse().unwrap());
        assert!(matches!(r.check(a, t0), RateVerdict::Allow { .. }));
        assert!(matches!(r.check(a, t0), RateVerdict::Refuse { .. }));
        assert!(matches!(r.check(b, t0), RateVerdict::Allow { .. }));
    }

    #[test]
    fn session_rate_zero_is_off() {
        assert!(SessionRate::new(Rate { per_second: 0, burst: 100 }).is_none());
    }

    #[test]
    fn session_rate_idle_buckets_expire() {
        let mut r = SessionRate::new(RATE).unwrap();
        let t0 = Instant::now();
        for i in 0..50u8 {
            let c = ClientKey::of(IpAddr::from([192, 0, 2, i]));
            r.check(c, t0);
        }
        assert_eq!(r.tracked(), 50);
        // One session each took one token: refilled after 50 ms, and the
        // next sweep (a second on) forgets them all.
        let later = t0 + Duration::from_secs(2);
        let fresh = ClientKey::of("198.51.100.7".parse().unwrap());
        r.check(fresh, later);
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn session_rate_table_full_of_busy_clients_lets_new_ones_through_untracked() {
        let mut r = SessionRate::with_capacity(RATE, 4).unwrap();
        let t0 = Instant::now();
        for i in 0..4u8 {
            r.check(ClientKey::of(IpAddr::from([192, 0, 2, i])), t0);
        }
        let new = |i: u8| ClientKey::of(IpAddr::from([203, 0, 113, i]));
        assert_eq!(r.check(new(1), t0), RateVerdict::Untracked { first: true });
        assert_eq!(r.check(new(2), t0 + ms(10)), RateVerdict::Untracked { first: false });
        assert_eq!(r.tracked(), 4, "the table never grows past its capacity");
        // Once the busy clients have gone idle, the sweep makes room.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(r.check(new(3), later), RateVerdict::Allow { after_refusals: None });
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn session_rate_refusing_client_is_kept_until_its_episode_ends() {
        let rate = Rate { per_second: 1, burst: 1 };
        let mut r = SessionRate::new(rate).unwrap();
        let c = ClientKey::of("192.0.2.10".parse().unwrap());
        let t0 = Instant::now();
        assert!(matches!(r.check(c, t0), RateVerdict::Allow { .. }));
        assert_eq!(r.check(c, t0), RateVerdict::Refuse { first: true });
        // Its bucket is full again long before it returns; the sweep keeps it.
        let other = ClientKey::of("192.0.2.11".parse().unwrap());
        r.check(other, t0 + Duration::from_secs(10));
        assert_eq!(r.check(c, t0 + Duration::from_secs(10)), RateVerdict::Allow { after_refusals: Some(1) });
    }

    #[test]
    fn client_key_ipv6_shares_the_64_ipv4_mapped_is_ipv4() {
        let a = ClientKey::of("2001:db8:1:2::10".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::99".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::10".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = ClientKey::of("::ffff:192.0.2.10".parse().unwrap());
        assert_eq!(mapped, ClientKey::of("192.0.2.10".parse().unwrap()));
        assert_eq!(mapped.to_string(), "192.0.2.10");
    }

    #[test]
    fn client_key_ipv6_prefix_is_the_operators() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let each = |s: &str| ClientKey::with_prefix(ip(s), 128);
        assert_ne!(each("2001:db8:1::11"), each("2001:db8:1::12"));
        assert_eq!(each("2001:db8:1::11").to_string(), "2001:db8:1::11");
        let site = |s: &str| ClientKey::with_prefix(ip(s), 48);
        assert_eq!(site("2001:db8:1:2::1"), site("2001:db8:1:ffff::1"));
        assert_eq!(site("2001:db8:1:2::1").to_string(), "2001:db8:1::/48");
        assert_eq!(ClientKey::with_prefix(ip("2001:db8::1"), 1).to_string(), "::/1");
        assert_eq!(ClientKey::with_prefix(ip("192.0.2.10"), 128).to_string(), "192.0.2.10");
    }

    fn tables(nofile: u64, workers: usize, private: bool) -> FdTables {
        // One --listen address, the default 32 relay threads.
        FdTables::new(nofile, workers, 1, 32, private)
    }

    fn memory(n: usize) -> impl FnOnce(usize) -> usize {
        move |sessions| n.min(sessions)
    }

    #[test]
    fn fd_tables_private_or_shared() {
        // Own: 1 listener + 18; shared: 4 per loop; relays: 3 * 32.
        assert_eq!(tables(20_000, 2, true), FdTables { nofile: 20_000, tables: 2, fixed: 19 + 8 + 96 });
        assert_eq!(tables(20_000, 2, true).spare(), 20_000 - 64 - 123);
        // One table holds both loops' own descriptors.
        assert_eq!(tables(20_000, 2, false), FdTables { nofile: 20_000, tables: 1, fixed: 38 + 8 + 96 });
        // A limit below the reserve leaves nothing, and no underflow.
        assert_eq!(tables(100, 2, true).spare(), 0);
    }

    #[test]
    fn default_caps_leave_a_data_channel_per_four_sessions() {
        // 19,813 spare per table: 19,813 * 4 / 15 = 5,283 sessions each,
        // (19,813 - 2 * 5,283) / 7 = 1,321 data channels each.
        let caps = fit_caps(tables(20_000, 2, true), None, None, memory(12_288));
        assert_eq!(caps.max_sessions, 10_566);
        assert_eq!(caps.max_data_channels, 2_642);
        assert_eq!((caps.sessions_lowered, caps.data_channels_lowered), (None, None));
        // Every table carries its share.
        let spare = tables(20_000, 2, true).spare();
        assert!(5_283 * FDS_PER_SESSION + 1_321 * FDS_PER_DATA_CHANNEL <= spare);
        // The same limit in one shared table: 5,278 sessions.
        let shared = fit_caps(tables(20_000, 2, false), Some(0), None, memory(12_288));
        assert_eq!((shared.max_sessions, shared.max_data_channels), (5_278, 1_319));
    }

    #[test]
    fn ten_thousand_idle_sessions_fit_a_hard_limit_of_20_000_with_two_loops() {
        assert!(fit_caps(tables(20_000, 2, true), None, None, memory(12_288)).max_sessions >= 10_000);
        assert!(fit_caps(tables(20_000, 1, true), None, None, memory(12_288)).max_sessions < 10_000);
        // Debian's default hard limit for root: ample with one loop.
        let debian = fit_caps(tables(1_048_576, 1, true), None, None, memory(12_288));
        assert_eq!(debian.max_sessions, 279_571);
        // Memory, not descriptors, caps the data channels there.
        assert_eq!(debian.max_data_channels, 12_288);
    }

    #[test]
    fn requested_caps_kept_or_lowered() {
        let fds = tables(20_000, 2, true);
        let caps = fit_caps(fds, Some(500), None, memory(12_288));
        // 500 sessions leave (19,813 - 500) / 7 = 2,759 channels per table,
        // but never more channels than sessions.
        assert_eq!((caps.max_sessions, caps.max_data_channels), (500, 500));
        let caps = fit_caps(fds, Some(500), Some(300), memory(12_288));
        assert_eq!((caps.max_sessions, caps.max_data_channels), (500, 300));
        // Most sessions: one data channel per table remains.
        let caps = fit_caps(fds, Some(50_000), None, memory(12_288));
        assert_eq!(caps.sessions_lowered, Some(Lowered { requested: 50_000, to: 19_806 }));
        assert_eq!((caps.max_sessions, caps.max_data_channels), (19_806, 2));
        // Data channels beyond what the descriptors carry.
        let caps = fit_caps(fds, None, Some(100_000), memory(12_288));
        assert_eq!(caps.data_channels_lowered, Some(Lowered { requested: 100_000, to: 2_642 }));
    }

    #[test]
    fn caps_never_zero() {
        let caps = fit_caps(tables(10, 2, true), None, None, memory(0));
        assert_eq!((caps.max_sessions, caps.max_data_channels), (1, 1));
    }

    #[test]
    fn default_max_data_channels_quarter_of_memory_at_most_sessions() {
        let gib = 1024 * 1024 * 1024;
        // 1 GiB: 256 MiB of pipes, 512 KiB each.
        assert_eq!(default_max_data_channels(gib, 100_000), 512);
        assert_eq!(default_max_data_channels(24 * gib, 100_000), 12_288);
        assert_eq!(default_max_data_channels(24 * gib, 2_215), 2_215);
        assert_eq!(default_max_data_channels(0, 10), 1);
    }

    #[test]
    fn parse_mem_total_reads_kib() {
        let text = "MemTotal:       24684000 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_684_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn data_channels_at_cap_refuse_once_per_episode() {
        let d = DataChannels::new(2);
        assert_eq!(d.open(), Admit::Yes { after_refusals: None });
        assert_eq!(d.open(), Admit::Yes { after_refusals: None });
        assert_eq!(d.open(), Admit::No { first: true });
        assert_eq!(d.open(), Admit::No { first: false });
        assert_eq!(d.open_now(), 2);
        d.close();
        assert_eq!(d.open(), Admit::Yes { after_refusals: Some(2) });
        assert_eq!(d.open(), Admit::No { first: true });
    }

    #[test]
    fn data_channels_racing_loops_never_pass_the_cap() {
        // Four event loops open at once: exactly `max` get in, and the
        // episode has one first refusal however they interleave.
        let d = DataChannels::new(100);
        let (admitted, first_refusals) = std::thread::scope(|s| {
            let loops: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let (mut yes, mut first) = (0, 0);
                        for _ in 0..1000 {
                            match d.open() {
                                Admit::Yes { .. } => yes += 1,
                                Admit::No { first: true } => first += 1,
                                Admit::No { first: false } => {}
                            }
                        }
                        (yes, first)
                    })
                })
                .collect();
            loops.into_iter().map(|l| l.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        assert_eq!((admitted, first_refusals), (100, 1));
        assert_eq!(d.open_now(), 100);
    }

    #[test]
    fn raise_nofile_reaches_the_hard_limit() {
        let got = raise_nofile().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, got.now);
        if hard != RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
        assert!(got.now >= got.was);
    }

    #[test]
    fn pinholes_leave_a_quarter_of_the_expectation_table() {
        assert_eq!(pinhole_cap(4096), 3072);
        assert_eq!(pinhole_cap(1024), 768);
        assert_eq!(pinhole_cap(64), 48);
        assert_eq!(pinhole_cap(1), 1);
        assert_eq!(pinhole_cap(0), 1);
    }
}
