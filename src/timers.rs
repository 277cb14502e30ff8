//! Session deadlines: one live entry per session. Each session has one
//! deadline (the earliest of its core's and its own), and re-arming
//! replaces the entry, so the set never holds more entries than sessions,
//! however often a busy control connection moves its deadline.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Deadlines in order; the key breaks ties.
    by_time: BTreeSet<(Instant, usize)>,
    /// Each armed session's entry in `by_time`.
    by_key: HashMap<usize, Instant>,
}

impl Timers {
    /// Arms session `key` at `at`, replacing its entry; `None` disarms.
    pub(crate) fn arm(&mut self, key: usize, at: Option<Instant>) {
        let old = match at {
            Some(at) => self.by_key.insert(key, at),
            None => self.by_key.remove(&key),
        };
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_time.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// Removes and returns every session due at `now`: each is disarmed
    /// until it arms again.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }

    /// Live entries (one per armed session).
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.by_time.len(), self.by_key.len());
        self.by_time.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rearmed_timer_fires_only_at_its_new_deadline() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.arm(7, Some(t0 + Duration::from_secs(1)));
        timers.arm(7, Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        assert!(timers.expired(t0 + Duration::from_secs(2)).is_empty());
        assert_eq!(timers.expired(t0 + Duration::from_secs(6)), vec![7]);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn disarmed_timer_never_fires() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.arm(1, Some(t0));
        timers.arm(1, None);
        assert!(timers.expired(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn ten_thousand_rearms_leave_one_entry() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            timers.arm(3, Some(t0 + Duration::from_millis(900_000 + i)));
        }
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(909_999)));
    }

    #[test]
    fn expired_session_can_rearm_at_the_same_instant() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.arm(2, Some(t0));
        assert_eq!(timers.expired(t0), vec![2]);
        timers.arm(2, Some(t0));
        assert_eq!(timers.expired(t0), vec![2]);
    }

    #[test]
    fn sessions_fire_in_deadline_order() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.arm(1, Some(t0 + Duration::from_secs(3)));
        timers.arm(2, Some(t0 + Duration::from_secs(1)));
        timers.arm(3, Some(t0 + Duration::from_secs(2)));
        assert_eq!(timers.expired(t0 + Duration::from_secs(3)), vec![2, 3, 1]);
        assert_eq!(timers.len(), 0);
    }
}
