//! What the core shows of itself: the counts for the status line, and the view for
//! `accio status` and the metrics.
//!
//! Nothing here walks the held names: the counts come from counters the core keeps anyway,
//! and the oldest waiting files from [`Waiting`], an index of the held names not in flight
//! by the time the core first knew of them, kept up to date as names come, go, start and
//! end attempts. So a `/metrics` or `/health` request costs the same with ten files held as
//! with ten million. (The index costs a copy of each held name.)

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use super::entry::{Entry, State, Wait};
use super::{Core, Counts, Key};
use crate::status::{DestinationView, WatchView, Why};

/// The held names not in flight, per watch, oldest (first known) first.
#[derive(Debug)]
pub(super) struct Waiting(Vec<BTreeSet<(Instant, OsString)>>);

impl Waiting {
    pub(super) fn new(watches: usize) -> Waiting {
        Waiting((0..watches).map(|_| BTreeSet::new()).collect())
    }

    pub(super) fn add(&mut self, (w, name): &Key, since: Instant) {
        self.0[*w].insert((since, name.clone()));
    }

    pub(super) fn remove(&mut self, (w, name): &Key, since: Instant) {
        self.0[*w].remove(&(since, name.clone()));
    }

    /// When the core first knew of the oldest waiting file of watch `w`.
    fn oldest(&self, w: usize) -> Option<Instant> {
        self.0[w].first().map(|(t, _)| *t)
    }

    /// The `n` oldest waiting files of all watches, oldest first (then by key).
    fn oldest_n(&self, n: usize) -> Vec<(Instant, Key)> {
        let mut all: Vec<(Instant, Key)> = self
            .0
            .iter()
            .enumerate()
            .flat_map(|(w, set)| {
                set.iter()
                    .take(n)
                    .map(move |(t, name)| (*t, (w, name.clone())))
            })
            .collect();
        all.sort_unstable();
        all.truncate(n);
        all
    }

    /// Every entry, for the simulation's check against the held names.
    #[cfg(test)]
    pub(super) fn all(&self) -> BTreeSet<(Instant, Key)> {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, set)| set.iter().map(move |(t, n)| (*t, (w, n.clone()))))
            .collect()
    }
}

/// What the core knows for `accio status`, apart from names of directories and files.
#[derive(Debug, Clone, Default)]
pub struct CoreView {
    pub destinations: Vec<DestinationView>,
    /// Per watch: `dir` and `destination` are left for the driver to fill in.
    pub watches: Vec<WatchView>,
    /// The oldest waiting files: key, seconds since the core knew of it, why it waits.
    pub waiting: Vec<(Key, f64, Why)>,
}

impl Core {
    /// Counts for the status line.
    pub fn counts(&self) -> Counts {
        let queued: usize = (0..self.watches.len()).map(|w| self.queued(w)).sum();
        let lanes = &self.lanes.lanes;
        Counts {
            queued: queued as u64,
            destinations_down: lanes.iter().filter(|d| !d.health.is_up()).count() as u64,
        }
    }

    /// The name of destination `d`.
    pub fn dest_name(&self, d: usize) -> &str {
        &self.lanes.lanes[d].p.name
    }

    /// The state of lanes, watches and the oldest waiting files (at most `max_waiting`).
    /// `wall_now`: the time of day now, in seconds since the epoch (for "down since").
    pub fn view(&self, now: Instant, wall_now: f64, max_waiting: usize) -> CoreView {
        let destinations = (0..self.lanes.lanes.len())
            .map(|d| self.destination_view(d, now, wall_now))
            .collect();
        let waiting = self
            .waiting
            .oldest_n(max_waiting)
            .into_iter()
            .filter_map(|(since, k)| {
                let why = self.why(&k, self.entries.get(&k)?, now);
                Some((k, now.saturating_duration_since(since).as_secs_f64(), why))
            })
            .collect();
        let watches = self
            .watches
            .iter()
            .enumerate()
            .map(|(i, w)| WatchView {
                dir: String::new(),
                destination: self.lanes.lanes[w.p.dest].p.name.clone(),
                queued: self.queued(i) as u64,
                in_flight: self.lanes.flight.of_watch(i) as u64,
                sent: w.sent,
                failed: w.failed,
                oldest_waiting_age_s: self
                    .waiting
                    .oldest(i)
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            })
            .collect();
        CoreView {
            destinations,
            watches,
            waiting,
        }
    }

    fn destination_view(&self, d: usize, now: Instant, wall_now: f64) -> DestinationView {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let lane = &self.lanes.lanes[d];
        let (down_since_unix, last_error, next_probe_in_s) = match lane.health.outage() {
            None => (None, None, None),
            Some(o) => (
                Some(wall_now - now.saturating_duration_since(o.since).as_secs_f64()),
                Some(o.error.to_string()),
                Some(o.next_probe.saturating_duration_since(now).as_secs_f64()),
            ),
        };
        DestinationView {
            name: lane.p.name.clone(),
            up: lane.health.is_up(),
            down_since_unix,
            last_error,
            in_flight: self.lanes.flight.of_lane(d) as u64,
            queued: self.waiting_for(d) as u64,
            limit: lane.limiter.limit() as u64,
            cap: lane.limiter.cap() as u64,
            adaptive: lane.limiter.adaptive(),
            baseline_greeting_ms: lane.limiter.baseline().map(ms),
            greeting_ms: lane.limiter.smoothed().map(ms),
            next_probe_in_s,
        }
    }

    /// Why the held file `k` waits.
    fn why(&self, k: &Key, e: &Entry, now: Instant) -> Why {
        let dest_up = self.lanes.lanes[self.watches[k.0].p.dest].health.is_up();
        match &e.state {
            State::Writing { .. } => Why::WriterOpen,
            State::Settling { .. } | State::Looking => Why::Settling,
            State::Ready { .. } if !dest_up => Why::DestinationDown,
            State::Ready { .. } | State::InFlight { .. } => Why::Ready,
            State::Waiting { why, until } => match why {
                Wait::Backoff { error } => Why::BackingOff {
                    retry_in_s: until.saturating_duration_since(now).as_secs_f64(),
                    attempts: e.failures,
                    error: error.to_string(),
                },
                Wait::Busy => Why::Ready,
                Wait::Young => Why::WriterUnknown,
                Wait::Disposition => Why::DispositionPending {
                    error: e
                        .pending
                        .as_ref()
                        .map_or(String::new(), |p| p.error.to_string()),
                },
            },
        }
    }
}
