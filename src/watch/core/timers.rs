//! The core's timers: one table of (deadline, generation, name), earliest first.
//!
//! A name has at most one live timer: the one whose [`Gen`] its entry keeps. Re-arming does
//! not look for the old one in the heap; it is left there, stale, and skipped when it comes
//! up (its generation is not the entry's any more). So that stale timers cannot pile up
//! (a file re-armed again and again, or names forgotten), the table is compacted once they
//! outnumber the live ones: its size stays within twice the entries held plus a constant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::time::Instant;

use super::Key;

/// Stale timers tolerated beyond twice the live ones before the table is compacted (small
/// under test, so that the simulation compacts).
pub const SLACK: usize = if cfg!(test) { 8 } else { 1024 };

/// The generation of a timer: which of the timers armed for a name is the live one. Never
/// zero, so that "no timer" is `Option<Gen>::None` (and costs no more than the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gen(NonZeroU64);

/// Deadlines of names, earliest first.
#[derive(Debug)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Gen, Key)>>,
    next: NonZeroU64,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            next: NonZeroU64::MIN,
        }
    }
}

impl Timers {
    /// A timer for `key` at `at`; its generation goes into the entry of `key` (whatever
    /// timer it had before is stale from now on).
    pub fn arm(&mut self, key: Key, at: Instant) -> Gen {
        let gen = Gen(self.next);
        self.next = self.next.saturating_add(1);
        self.heap.push(Reverse((at, gen, key)));
        gen
    }

    /// The earliest timer if it is due at `now`, taken out of the table (live or stale: the
    /// caller compares its generation).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Key, Gen)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {}
            _ => return None,
        }
        self.heap.pop().map(|Reverse((_, gen, key))| (key, gen))
    }

    /// The deadline of the earliest live timer; stale ones in front of it are dropped.
    pub fn next_deadline(&mut self, live: impl Fn(&Key, Gen) -> bool) -> Option<Instant> {
        while let Some(Reverse((at, gen, key))) = self.heap.peek() {
            if live(key, *gen) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Drops the stale timers once they outnumber the live ones (`held`: entries held, an
    /// upper bound of live timers).
    pub fn compact(&mut self, held: usize, live: impl Fn(&Key, Gen) -> bool) {
        if self.heap.len() > 2 * held + SLACK {
            self.heap.retain(|Reverse((_, gen, key))| live(key, *gen));
        }
    }

    /// Timers in the table, live and stale.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Every timer in the table (for the simulation's invariants).
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (Gen, &Key)> {
        self.heap.iter().map(|Reverse((_, gen, key))| (*gen, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn key(n: &str) -> Key {
        (0, n.into())
    }

    #[test]
    fn due_timers_come_earliest_first_and_stale_ones_are_recognised() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        let mut live: HashMap<Key, Gen> = HashMap::new();
        live.insert(key("b"), t.arm(key("b"), t0 + 2 * s));
        let stale = t.arm(key("a"), t0 + s);
        live.insert(key("a"), t.arm(key("a"), t0 + 3 * s));
        let is_live = |k: &Key, g: Gen| live.get(k) == Some(&g);
        assert_eq!(
            t.next_deadline(is_live),
            Some(t0 + 2 * s),
            "a stale one skipped"
        );
        assert_eq!(t.pop_due(t0 + s), None);
        assert_eq!(t.pop_due(t0 + 2 * s), Some((key("b"), live[&key("b")])));
        assert_eq!(t.pop_due(t0 + 2 * s), None);
        assert_eq!(t.pop_due(t0 + 3 * s), Some((key("a"), live[&key("a")])));
        assert_ne!(stale, live[&key("a")]);
    }

    #[test]
    fn stale_timers_stay_bounded_by_the_live_ones() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..10 * SLACK {
            let live = t.arm(key("a"), t0 + Duration::from_millis(i as u64));
            t.compact(1, |_, g| g == live);
            assert!(t.len() <= 2 + SLACK + 1);
        }
    }
}
