//! Session deadlines: a min-heap with lazy invalidation. A session that
//! re-arms bumps its generation; popped entries of an older generation are
//! ignored, so no stale timer can fire.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

/// A session's view of its own timer.
#[derive(Debug, Default)]
pub(crate) struct Armed {
    at: Option<Instant>,
    generation: u64,
}

impl Timers {
    /// Arms `armed` (owned by session `key`) at `at`, if that changes it.
    pub(crate) fn arm(&mut self, key: usize, armed: &mut Armed, at: Option<Instant>) {
        if armed.at == at {
            return;
        }
        armed.generation += 1;
        armed.at = at;
        if let Some(at) = at {
            self.heap.push(Reverse((at, key, armed.generation)));
        }
    }

    /// The earliest deadline (possibly stale: waking early is harmless).
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops every entry due at `now`; `current` tells whether an entry's
    /// generation is still the session's.
    pub(crate) fn expired(
        &mut self,
        now: Instant,
        mut current: impl FnMut(usize, u64) -> bool,
    ) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(Reverse((at, key, generation))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if current(key, generation) {
                due.push(key);
            }
        }
        due
    }
}

impl Armed {
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rearmed_timer_ignores_stale_entry() {
        let mut timers = Timers::default();
        let mut armed = Armed::default();
        let t0 = Instant::now();
        timers.arm(7, &mut armed, Some(t0 + Duration::from_secs(1)));
        timers.arm(7, &mut armed, Some(t0 + Duration::from_secs(5)));
        let due = timers.expired(t0 + Duration::from_secs(2), |_, g| g == armed.generation());
        assert!(due.is_empty());
        let due = timers.expired(t0 + Duration::from_secs(6), |_, g| g == armed.generation());
        assert_eq!(due, vec![7]);
    }

    #[test]
    fn disarmed_timer_never_fires() {
        let mut timers = Timers::default();
        let mut armed = Armed::default();
        let t0 = Instant::now();
        timers.arm(1, &mut armed, Some(t0));
        timers.arm(1, &mut armed, None);
        assert!(timers.expired(t0 + Duration::from_secs(1), |_, g| g == armed.generation()).is_empty());
    }
}
