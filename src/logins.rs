//! Failed logins per client (RFC 2577 §5, ATTACKS.md 33).
//!
//! A client is an IPv4 address, or an IPv6 /64 (`limits::ClientKey`, as
//! for the session rate): keyed by the IPv6 address, a host could try
//! passwords from a fresh address of its own prefix each time and never
//! cool down. The core reports every `530` to USER or PASS
//! (`AuditEvent::LoginFailed`); the event loop hands the counts here. A
//! client with `limit` failures
//! within `window` starts a cool-down: its new sessions are refused with
//! `421` before the gateway connects to the server. Sessions already open
//! go on. One record when a cool-down starts, not one per refused session.
//!
//! The table is bounded: entries whose window and cool-down are over are
//! swept, and at `MAX_ENTRIES` new addresses are not tracked (the ones
//! already cooling down stay so: a spray of new addresses cannot free them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use slog::{warn, Logger};

use crate::limits::ClientKey;

/// What a client cooling down hears instead of the server's greeting.
pub(crate) const REPLY_COOLING_DOWN: &[u8] =
    b"421 ftpgate: too many failed logins from your address; try again later.\r\n";

/// Addresses tracked at most: about 64 bytes each, so a few MiB at most.
const MAX_ENTRIES: usize = 65_536;

/// How often the table is swept of finished entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the operator set (`--max-login-failures`, `--login-failure-window`,
/// `--login-cooldown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Failures within `window` that start a cool-down; 0: never.
    pub(crate) limit: u32,
    pub(crate) window: Duration,
    pub(crate) cooldown: Duration,
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    cool_until: Option<Instant>,
}

impl Entry {
    fn finished(&self, now: Instant, window: Duration) -> bool {
        let cooling = self.cool_until.is_some_and(|t| now < t);
        !cooling && now.saturating_duration_since(self.window_start) >= window
    }
}

/// A cool-down that just started: worth one log record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CoolDown {
    pub(crate) failures: u32,
    pub(crate) cooldown: Duration,
}

/// The failed-login table of the daemon.
#[derive(Debug)]
pub(crate) struct LoginFailures {
    limits: Limits,
    table: HashMap<ClientKey, Entry>,
    next_sweep: Option<Instant>,
    cap: usize,
}

impl LoginFailures {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, table: HashMap::new(), next_sweep: None, cap: MAX_ENTRIES }
    }

    /// New limits (SIGHUP). Counting goes on under them; a cool-down in
    /// force runs out as it was set, unless the limit is now 0: off means
    /// no client is refused any longer.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if limits.limit == 0 {
            self.table.clear();
        }
    }

    /// `n` more failed logins from `ip`. Returns the cool-down if this
    /// started one.
    pub(crate) fn failed(&mut self, ip: IpAddr, n: u32, now: Instant) -> Option<CoolDown> {
        if self.limits.limit == 0 || n == 0 {
            return None;
        }
        self.sweep(now);
        let key = ClientKey::of(ip);
        if !self.table.contains_key(&key) && self.table.len() >= self.cap {
            return None;
        }
        let Limits { limit, window, cooldown } = self.limits;
        let entry =
            self.table.entry(key).or_insert(Entry { window_start: now, failures: 0, cool_until: None });
        if entry.cool_until.is_some_and(|t| now < t) {
            // Already cooling down: the episode was recorded when it began.
            return None;
        }
        if now.saturating_duration_since(entry.window_start) >= window || entry.cool_until.is_some() {
            *entry = Entry { window_start: now, failures: 0, cool_until: None };
        }
        entry.failures = entry.failures.saturating_add(n);
        if entry.failures < limit {
            return None;
        }
        entry.cool_until = Some(now + cooldown);
        Some(CoolDown { failures: entry.failures, cooldown })
    }

    /// Whether a new session from `ip` must be refused now.
    pub(crate) fn cooling_down(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.sweep(now);
        self.table.get(&ClientKey::of(ip)).and_then(|e| e.cool_until).is_some_and(|t| now < t)
    }

    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let window = self.limits.window;
        self.table.retain(|_, e| !e.finished(now, window));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// The table of the process, shared by every event loop (`--workers`).
///
/// A failure is recorded when the core reports it (`AuditEvent::LoginFailed`),
/// while the session is driven and before its 530 reaches the client: the
/// client's next connection, whichever loop accepts it, finds the cool-down
/// already in force.
pub(crate) struct LoginTable(Mutex<LoginFailures>);

impl LoginTable {
    pub(crate) fn new(limits: Limits) -> Self {
        Self(Mutex::new(LoginFailures::new(limits)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LoginFailures> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One failed login from `ip`; the cool-down it starts, if any, gets
    /// its one record in the session's context (`log`).
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant, log: &Logger) {
        let Some(c) = self.lock().failed(ip, 1, now) else { return };
        warn!(
            log, "failed logins: refusing new sessions from this client";
            "counted_as" => ClientKey::of(ip).to_string(),
            "failures" => c.failures, "cooldown_s" => c.cooldown.as_secs(),
            "rule" => "login-cooldown", "attack" => crate::audit::attack(Some(33))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.10";
    const B: &str = "192.0.2.20";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tracker() -> LoginFailures {
        LoginFailures::new(Limits {
            limit: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
        })
    }

    #[test]
    fn failures_within_window_start_one_cooldown_for_that_address_only() {
        let mut t = tracker();
        let now = Instant::now();
        assert_eq!(t.failed(ip(A), 1, now), None);
        assert_eq!(t.failed(ip(A), 1, now + Duration::from_secs(10)), None);
        assert!(!t.cooling_down(ip(A), now));
        let started = t.failed(ip(A), 1, now + Duration::from_secs(20));
        assert_eq!(started, Some(CoolDown { failures: 3, cooldown: Duration::from_secs(300) }));
        assert!(t.cooling_down(ip(A), now + Duration::from_secs(21)));
        assert!(!t.cooling_down(ip(B), now + Duration::from_secs(21)));
        // more failures during the cool-down: no second record
        assert_eq!(t.failed(ip(A), 5, now + Duration::from_secs(30)), None);
    }

    #[test]
    fn an_ipv6_prefix_counts_as_one_client_and_mapped_ipv4_as_ipv4() {
        let mut t = tracker();
        let now = Instant::now();
        for host in ["2001:db8:1::11", "2001:db8:1::12"] {
            assert_eq!(t.failed(ip(host), 1, now), None);
        }
        assert!(t.failed(ip("2001:db8:1:0:ffff::1"), 1, now).is_some(), "the third failure in one /64");
        assert!(t.cooling_down(ip("2001:db8:1::99"), now), "a fresh address of that /64");
        assert!(!t.cooling_down(ip("2001:db8:2::11"), now), "another /64");
        assert!(t.failed(ip("::ffff:192.0.2.10"), 3, now).is_some());
        assert!(t.cooling_down(ip(A), now), "the mapped form is the IPv4 client");
    }

    #[test]
    fn cooldown_ends_and_counting_starts_again() {
        let mut t = tracker();
        let now = Instant::now();
        assert!(t.failed(ip(A), 3, now).is_some());
        let after = now + Duration::from_secs(301);
        assert!(!t.cooling_down(ip(A), after));
        assert_eq!(t.failed(ip(A), 2, after), None, "a new window starts at zero");
        assert!(t.failed(ip(A), 1, after).is_some());
    }

    #[test]
    fn failures_spread_over_windows_never_cool_down() {
        let mut t = tracker();
        let now = Instant::now();
        for i in 0..10 {
            assert_eq!(t.failed(ip(A), 2, now + Duration::from_secs(61 * i)), None, "window {i}");
        }
    }

    #[test]
    fn limit_zero_is_off() {
        let mut t = LoginFailures::new(Limits { limit: 0, ..tracker().limits });
        let now = Instant::now();
        assert_eq!(t.failed(ip(A), 1000, now), None);
        assert!(!t.cooling_down(ip(A), now));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn new_limits_apply_to_counting_and_zero_ends_every_cooldown() {
        let mut t = tracker();
        let now = Instant::now();
        assert!(t.failed(ip(A), 3, now).is_some());
        t.set_limits(Limits { limit: 5, ..t.limits });
        assert!(t.cooling_down(ip(A), now), "a cool-down in force runs out as set");
        assert_eq!(t.failed(ip(B), 4, now), None, "counted under the new limit");
        assert!(t.failed(ip(B), 1, now).is_some());
        t.set_limits(Limits { limit: 0, ..t.limits });
        assert!(!t.cooling_down(ip(A), now) && !t.cooling_down(ip(B), now));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn finished_entries_are_swept() {
        let mut t = tracker();
        let now = Instant::now();
        t.failed(ip(A), 1, now);
        assert!(t.failed(ip(B), 3, now).is_some());
        assert_eq!(t.len(), 2);
        // A's window is over; B still cools down
        t.cooling_down(ip(A), now + Duration::from_secs(120));
        assert_eq!(t.len(), 1);
        t.cooling_down(ip(A), now + Duration::from_secs(400));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn full_table_keeps_cooldowns_and_ignores_new_addresses() {
        let mut t = tracker();
        t.cap = 2;
        let now = Instant::now();
        assert!(t.failed(ip(A), 3, now).is_some());
        t.failed(ip(B), 1, now);
        assert_eq!(t.failed(ip("192.0.2.30"), 3, now), None, "not tracked: table full");
        assert!(t.cooling_down(ip(A), now + Duration::from_secs(1)));
        assert_eq!(t.len(), 2);
    }
}
