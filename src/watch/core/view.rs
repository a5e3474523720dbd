//! What the core shows of itself: the counts for the status line, and the view for
//! `accio status` and the metrics.
//!
//! The counts come from counters the core keeps anyway. The view walks the held names once,
//! for the age of each watch's oldest waiting file and the oldest waiting files overall;
//! those are picked with `select_nth_unstable` (O(N)) and only they are sorted, so a large
//! active set costs one pass, not a sort, per `/metrics` or `/health` request.

use std::time::{Duration, Instant};

use super::entry::{Entry, State, Wait};
use super::{Core, Counts, Key};
use crate::status::{DestinationView, WatchView, Why};

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
        let mut oldest: Vec<Option<Instant>> = vec![None; self.watches.len()];
        let mut waiting: Vec<(&Key, &Entry)> = Vec::new();
        for (k, e) in &self.entries {
            if matches!(e.state, State::InFlight { .. }) {
                continue;
            }
            let o = &mut oldest[k.0];
            *o = Some(o.map_or(e.since, |t| t.min(e.since)));
            waiting.push((k, e));
        }
        let order =
            |a: &(&Key, &Entry), b: &(&Key, &Entry)| a.1.since.cmp(&b.1.since).then(a.0.cmp(b.0));
        if max_waiting < waiting.len() {
            if max_waiting == 0 {
                waiting.clear();
            } else {
                waiting.select_nth_unstable_by(max_waiting - 1, order);
                waiting.truncate(max_waiting);
            }
        }
        waiting.sort_unstable_by(order);
        let waiting = waiting
            .into_iter()
            .map(|(k, e)| {
                let since = now.saturating_duration_since(e.since).as_secs_f64();
                (k.clone(), since, self.why(k, e, now))
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
                oldest_waiting_age_s: oldest[i]
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
