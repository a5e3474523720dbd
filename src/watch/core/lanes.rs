//! Lanes: who gets the next free slot.
//!
//! Each destination has a lane ([`Lane`]: its limit, its health, the watches that send to
//! it); each watch has a ready queue and a finish-only queue ([`SeqQueue`]) of names in the
//! order they became ready. [`Lanes::next`] gives out a slot: finish-only attempts first
//! (they need no destination), then destinations in turn (round robin), within one its
//! watches in turn, within a watch oldest first. A down destination takes no slot but its
//! probe. [`Lanes::begin`] and [`Lanes::end`] count an attempt in and out of the global,
//! per-watch and per-lane counts together ([`Flight`]).
//!
//! The queues are lazy: a name's place is valid while its entry is ready under the same
//! sequence number; stale places are skipped when they come to the front and compacted away
//! once they outnumber the live ones, so a queue stays within twice the names its watch
//! holds plus [`SLACK`], however often a blocked lane's files come and go.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use super::entry::{Entry, State};
use super::health::{Health, Transition};
use super::limiter::{Limiter, Ticket};
use super::{Action, Core, DestParams, Key, Mode, Params, Report, Start};
use crate::watch::error::DestError;

/// Stale places tolerated in a queue beyond twice the names held before it is compacted
/// (small under test, so that the simulation compacts).
pub const SLACK: usize = if cfg!(test) { 8 } else { 1024 };

/// Whether the name `key` is ready under sequence number `seq` (its place is live).
pub trait Live: Fn(&Key, u64) -> bool {}
impl<F: Fn(&Key, u64) -> bool> Live for F {}

/// Names in a queue (whole keys: the check of a place needs no copy of its name), each
/// under the sequence number it was queued with.
#[derive(Debug, Default)]
pub struct SeqQueue(VecDeque<(Key, u64)>);

impl SeqQueue {
    fn push(&mut self, key: Key, seq: u64, front: bool) {
        if front {
            self.0.push_front((key, seq));
        } else {
            self.0.push_back((key, seq));
        }
    }

    /// Pops stale places off the front; whether a live one is there.
    fn clean_front(&mut self, live: &impl Live) -> bool {
        while let Some((key, seq)) = self.0.front() {
            if live(key, *seq) {
                return true;
            }
            self.0.pop_front();
        }
        false
    }

    /// Drops the stale places once they outnumber the live ones (`held`: names of the watch
    /// held, an upper bound of live places).
    fn compact(&mut self, held: usize, live: &impl Live) {
        if self.0.len() > 2 * held + SLACK {
            self.0.retain(|(key, seq)| live(key, *seq));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The two queues of a watch.
#[derive(Debug, Default)]
struct Queues {
    /// Names ready to upload.
    ready: SeqQueue,
    /// Names whose move or delete is pending: they need no destination.
    finish: SeqQueue,
}

/// One destination's lane.
#[derive(Debug)]
pub struct Lane {
    pub p: DestParams,
    pub limiter: Limiter,
    pub health: Health,
    /// Watches sending here, and the round-robin position among them.
    pub watches: Vec<usize>,
    next_watch: usize,
}

/// Attempts in flight: in all, per watch, per lane. Only [`Flight::begin`] and
/// [`Flight::end`] change them, so they cannot drift apart.
#[derive(Debug)]
pub struct Flight {
    total: usize,
    watch: Vec<usize>,
    lane: Vec<usize>,
}

impl Flight {
    /// An attempt of watch `w` starts; `lane`: counted in lane `d` (not finish-only).
    fn begin(&mut self, w: usize, lane: Option<usize>) {
        self.total += 1;
        self.watch[w] += 1;
        if let Some(d) = lane {
            self.lane[d] += 1;
        }
    }

    fn end(&mut self, w: usize, lane: Option<usize>) {
        self.total = self.total.saturating_sub(1);
        self.watch[w] = self.watch[w].saturating_sub(1);
        if let Some(d) = lane {
            self.lane[d] = self.lane[d].saturating_sub(1);
        }
    }

    /// An attempt of lane `d` no longer counts in it (it still counts in all and in its
    /// watch).
    fn release(&mut self, d: usize) {
        self.lane[d] = self.lane[d].saturating_sub(1);
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn of_watch(&self, w: usize) -> usize {
        self.watch[w]
    }

    pub fn of_lane(&self, d: usize) -> usize {
        self.lane[d]
    }
}

/// An attempt given a slot: its lane's ticket (none for a finish-only attempt) and whether
/// it is the probe of a down destination.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub lane: Option<Ticket>,
    pub probe: bool,
}

/// Every lane and queue.
#[derive(Debug)]
pub struct Lanes {
    pub lanes: Vec<Lane>,
    queues: Vec<Queues>,
    /// The lane of each watch.
    dest_of: Vec<usize>,
    pub flight: Flight,
    /// Round-robin position among destinations.
    next_dest: usize,
    next_seq: u64,
}

impl Lanes {
    pub fn new(p: &Params) -> Lanes {
        let lanes = p
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| Lane {
                p: d.clone(),
                limiter: Limiter::new(d.cap.min(p.global_cap.max(1)), d.adaptive),
                health: Health::new(p.retry),
                watches: p
                    .watches
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.dest == i)
                    .map(|(j, _)| j)
                    .collect(),
                next_watch: 0,
            })
            .collect();
        Lanes {
            lanes,
            queues: p.watches.iter().map(|_| Queues::default()).collect(),
            dest_of: p.watches.iter().map(|w| w.dest).collect(),
            flight: Flight {
                total: 0,
                watch: vec![0; p.watches.len()],
                lane: vec![0; p.dests.len()],
            },
            next_dest: 0,
            next_seq: 1,
        }
    }

    /// Queues `name` of watch `w` (finish-only, or at the front: a file that goes back to
    /// a lane it was taken from) under a new sequence number, which its entry keeps; places
    /// under older numbers are stale. `held`, `live`: for the compaction.
    pub fn enqueue(
        &mut self,
        key: Key,
        finish: bool,
        front: bool,
        held: usize,
        live: &impl Live,
    ) -> u64 {
        let w = key.0;
        let seq = self.next_seq;
        self.next_seq += 1;
        // Both queues (a finish-only name that turns out to be an upload moves from one to
        // the other), and before the push: the name's entry is not ready under `seq` yet.
        self.shrunk(w, held, live);
        let q = &mut self.queues[w];
        let q = if finish { &mut q.finish } else { &mut q.ready };
        q.push(key, seq, front);
        seq
    }

    /// Compacts the queues of watch `w` if their stale places outnumber the live ones
    /// (`held`: the names of the watch held, an upper bound of live places).
    pub fn shrunk(&mut self, w: usize, held: usize, live: &impl Live) {
        let q = &mut self.queues[w];
        q.ready.compact(held, live);
        q.finish.compact(held, live);
    }

    /// Whether lane `d` may start an attempt now.
    pub fn eligible(&self, d: usize, now: Instant) -> bool {
        let lane = &self.lanes[d];
        lane.health
            .admits(self.flight.of_lane(d), lane.limiter.limit(), now)
    }

    /// Whether lane `d` has a ready file.
    pub fn has_ready(&mut self, d: usize, live: &impl Live) -> bool {
        let Lanes { lanes, queues, .. } = self;
        lanes[d]
            .watches
            .iter()
            .any(|&w| queues[w].ready.clean_front(live))
    }

    /// The next attempt to start, if a slot is free (`cap`: all lanes together) and a file
    /// can have it: finish-only ones first, then the lanes in turn. `upload`: whether a
    /// finish-only name has an upload to do instead (its place moves to the ready queue).
    pub fn next(
        &mut self,
        cap: usize,
        now: Instant,
        live: &impl Live,
        upload: impl Fn(&Key) -> bool,
    ) -> Option<(Key, bool)> {
        if self.flight.total >= cap {
            return None;
        }
        for w in 0..self.queues.len() {
            let q = &mut self.queues[w];
            while q.finish.clean_front(live) {
                let Some((key, seq)) = q.finish.0.pop_front() else {
                    break;
                };
                if upload(&key) {
                    // Nothing left to finish: an upload, which takes its lane's slot.
                    q.ready.push(key, seq, false);
                    continue;
                }
                return Some((key, false));
            }
        }
        let n = self.lanes.len();
        for i in 0..n {
            let d = (self.next_dest + i) % n;
            if !self.eligible(d, now) {
                continue;
            }
            let m = self.lanes[d].watches.len();
            for j in 0..m {
                let pos = (self.lanes[d].next_watch + j) % m;
                let w = self.lanes[d].watches[pos];
                let ready = &mut self.queues[w].ready;
                if !ready.clean_front(live) {
                    continue;
                }
                let Some((key, _)) = ready.0.pop_front() else {
                    continue;
                };
                self.lanes[d].next_watch = (pos + 1) % m;
                self.next_dest = (d + 1) % n;
                return Some((key, true));
            }
        }
        None
    }

    /// An attempt of watch `w` starts at `now` (`lane`: an upload, in its lane's slot).
    pub fn begin(&mut self, w: usize, lane: bool, now: Instant) -> Slot {
        let d = self.dest_of[w];
        if !lane {
            self.flight.begin(w, None);
            return Slot {
                lane: None,
                probe: false,
            };
        }
        let probe = !self.lanes[d].health.is_up();
        // Limited by its lane: at its limit, or leaving ready files behind (a success then
        // says the limit, not the supply of files, held it back).
        let lane_full = self.flight.of_lane(d) + 1 >= self.lanes[d].limiter.limit()
            || !self.queues[w].ready.0.is_empty();
        let ticket = self.lanes[d].limiter.on_start(lane_full, now);
        self.flight.begin(w, Some(d));
        Slot {
            lane: Some(ticket),
            probe,
        }
    }

    /// An attempt of watch `w` in its lane's slot gives the slot up while it goes on (a
    /// suspect, see [`super::limiter::Limiter::suspect_after`]); it ends with `lane` false.
    pub fn release(&mut self, w: usize) {
        let d = self.dest_of[w];
        self.flight.release(d);
    }

    /// An attempt of watch `w` ended (`lane`: it had its lane's slot).
    pub fn end(&mut self, w: usize, lane: bool) {
        let d = self.dest_of[w];
        self.flight.end(w, lane.then_some(d));
    }

    /// Places in the queues of watch `w`, live and stale.
    #[cfg(test)]
    pub fn queued_places(&self, w: usize) -> usize {
        self.queues[w].ready.len() + self.queues[w].finish.len()
    }
}

/// Whether `key` is ready under `seq` in `entries`: its place in a queue is live.
pub(super) fn ready_under(entries: &HashMap<Key, Entry>) -> impl Fn(&Key, u64) -> bool + '_ {
    |key, seq| {
        matches!(
            entries.get(key),
            Some(Entry { state: State::Ready { seq: s }, .. }) if *s == seq
        )
    }
}

impl Core {
    /// Gives out free slots: finish-only attempts first (they need no destination), then
    /// destinations in turn, each its watches in turn.
    pub(super) fn dispatch(&mut self) {
        if self.stopping {
            return;
        }
        let cap = self.p.global_cap.max(1);
        loop {
            let next = {
                let entries = &self.entries;
                let upload = |k: &Key| entries.get(k).is_some_and(|e| e.pending.is_none());
                self.lanes
                    .next(cap, self.now, &ready_under(entries), upload)
            };
            let Some((key, lane)) = next else {
                return;
            };
            self.start(key, lane);
        }
    }

    fn start(&mut self, key: Key, lane: bool) {
        let w = key.0;
        let quiet = self.writer_quiet(w);
        let settle = self.settle(w);
        let max = self.p.retry.max_attempts;
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let mode = match (&e.pending, lane) {
            (Some(p), false) => Mode::Finish {
                id: p.id,
                after: p.after.clone(),
            },
            _ => Mode::Upload,
        };
        let attempt = e.failures.saturating_add(1);
        let trusted = e.moved_in || e.closed;
        let stamps = std::mem::take(&mut e.stamps) && !trusted && matches!(mode, Mode::Upload);
        let start = Start {
            key: key.clone(),
            attempt,
            last: max != 0 && attempt >= max,
            mode,
            trusted,
            quiet,
            settle: if stamps { settle } else { Duration::ZERO },
            found: e.since,
        };
        let slot = self.lanes.begin(w, lane, self.now);
        self.waiting.remove(&key, e.since);
        // A look still out for it was asked before this attempt, which takes the file as it
        // is now: its answer, coming after, would act on what the attempt already dealt
        // with (send a delivered file again, ready one the attempt found open). After the
        // attempt the name is looked at again as needed.
        if self.looks.remove(&key).is_some() {
            self.watches[w].looking -= 1;
        }
        e.state = State::InFlight {
            lane: slot.lane,
            probe: slot.probe,
            closed: false,
            modified: false,
            moved: false,
        };
        let d = self.watches[w].p.dest;
        let upload = slot.lane.is_some() && !slot.probe;
        let overdue = upload
            .then(|| self.lanes.lanes[d].limiter.suspect_after())
            .flatten();
        self.actions.push_back(Action::Start(start));
        // Looked at again when greetings usually have come (suspect: its slot may go to
        // another attempt) and long since (overdue: abandoned if overtaken). Not a probe:
        // it is the only attempt in flight, nothing can overtake it.
        if let Some(after) = overdue {
            let at = self.now + after;
            self.arm(&key, at);
        }
    }

    /// Puts `key` into its watch's ready queue (at the front: a file that goes back to a
    /// lane it was taken from), unless it is there already or in flight.
    pub(super) fn make_ready(&mut self, key: &Key, front: bool) {
        if let Some(State::Ready { .. } | State::InFlight { .. }) =
            self.entries.get(key).map(|e| &e.state)
        {
            return;
        }
        self.requeue(key, front);
    }

    /// Puts held `key` into its watch's ready queue, or the finish-only queue if only its
    /// move or delete is left; a place it had in either before is void.
    pub(super) fn requeue(&mut self, key: &Key, front: bool) {
        let Some(finish) = self.entries.get(key).map(|e| e.pending.is_some()) else {
            return;
        };
        let state = self.enqueue(key, finish, front);
        if let Some(e) = self.entries.get_mut(key) {
            e.state = state;
            e.timer = None;
            e.stamps = false;
        }
    }

    /// Queues `key` under a new sequence number; the state that goes with it.
    pub(super) fn enqueue(&mut self, key: &Key, finish: bool, front: bool) -> State {
        let held = self.watches[key.0].count;
        let live = ready_under(&self.entries);
        let seq = self.lanes.enqueue(key.clone(), finish, front, held, &live);
        State::Ready { seq }
    }

    pub(super) fn dest_up(&mut self, d: usize) {
        if let Transition::Up { down_for, loud } = self.lanes.lanes[d].health.on_greeting(self.now)
        {
            let waiting = self.waiting_for(d);
            self.report(Report::DestinationUp {
                dest: d,
                down_for,
                waiting,
                loud,
            });
        }
    }

    pub(super) fn dest_failed(&mut self, d: usize, key: &Key, error: DestError, probe: bool) {
        // The cohort is the limit after the limiter took this failure in: timeouts shrink
        // the limit first, so a server that stopped greeting goes down within about one
        // round of the attempts it was allowed.
        let limit = self.lanes.lanes[d].limiter.limit();
        let t = self.lanes.lanes[d].health.on_dest_failure(
            &error,
            probe,
            limit,
            self.now,
            &mut self.rng,
        );
        match t {
            Transition::Down {
                probe_in,
                loud,
                unlogged,
            } => {
                // Everything queued for it waits, not only what was in flight.
                let waiting = self.waiting_for(d);
                self.report(Report::DestinationDown {
                    dest: d,
                    error,
                    waiting,
                    probe_in,
                    loud,
                    unlogged,
                });
            }
            Transition::StillDown { probe_in, loud } => self.report(Report::StillDown {
                dest: d,
                key: key.clone(),
                error,
                probe_in,
                loud,
            }),
            Transition::None | Transition::Up { .. } => {}
        }
    }

    /// Reports the limit of `d` if it `changed`.
    pub(super) fn report_limit(&mut self, d: usize, changed: bool) {
        let l = &mut self.lanes.lanes[d].limiter;
        let verdict = l.take_verdict();
        if !changed && verdict.is_none() {
            return;
        }
        let r = Report::Limit {
            dest: d,
            limit: l.limit(),
            baseline: l.baseline(),
            smoothed: l.smoothed(),
            verdict,
        };
        self.report(r);
    }

    /// Whether destination `d` has a ready file and a free slot of its own.
    #[cfg(test)]
    pub(super) fn waits_for_slot(&mut self, d: usize) -> bool {
        self.lanes.eligible(d, self.now) && self.lanes.has_ready(d, &ready_under(&self.entries))
    }

    /// Files of destination `d` waiting (held or on disk), not in flight.
    pub(super) fn waiting_for(&self, d: usize) -> usize {
        self.lanes.lanes[d]
            .watches
            .iter()
            .map(|&w| self.queued(w))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryPolicy;
    use crate::watch::core::{DestParams, WatchParams};
    use std::time::Duration;

    /// Watches 0 and 1 send to destination 0, watch 2 to destination 1.
    fn lanes() -> Lanes {
        let watch = |dest| WatchParams {
            settle: Duration::ZERO,
            rescan_interval: Duration::from_secs(60),
            dest,
            recursive: false,
        };
        let dest = |name: &str| DestParams {
            name: name.into(),
            cap: 2,
            adaptive: false,
        };
        Lanes::new(&Params {
            global_cap: 4,
            active_limit: 100,
            retry: RetryPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                max_attempts: 3,
                probe_max: Duration::from_secs(8),
            },
            writer_quiet_min: Duration::from_secs(1),
            watches: vec![watch(0), watch(0), watch(1)],
            dests: vec![dest("a:1"), dest("b:1")],
        })
    }

    #[test]
    fn slots_go_finish_first_then_lanes_in_turn_then_watches_in_turn_within_limits() {
        let now = Instant::now();
        let mut l = lanes();
        let mut seqs: HashMap<Key, u64> = HashMap::new();
        let queue = |l: &mut Lanes, seqs: &mut HashMap<Key, u64>, w, n: &str, finish| {
            let key: Key = (w, n.into());
            let seq = l.enqueue(key.clone(), finish, false, 10, &|_: &Key, _| true);
            seqs.insert(key, seq);
        };
        for n in ["a1", "a2", "a3"] {
            queue(&mut l, &mut seqs, 0, n, false);
        }
        queue(&mut l, &mut seqs, 1, "b1", false);
        queue(&mut l, &mut seqs, 2, "c1", false);
        queue(&mut l, &mut seqs, 2, "c2", true);
        // "a2" was queued again since: its first place is stale.
        queue(&mut l, &mut seqs, 0, "a2", false);
        let live = |k: &Key, seq| seqs.get(k) == Some(&seq);
        let mut order = Vec::new();
        while let Some(((w, name), lane)) = l.next(4, now, &live, |_| false) {
            l.begin(w, lane, now);
            order.push((name.into_string().unwrap(), lane));
        }
        let names: Vec<(&str, bool)> = order.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        assert_eq!(
            names,
            [("c2", false), ("a1", true), ("c1", true), ("b1", true)],
            "destination 0 then 1 then 0's other watch; the global cap (4) stops it"
        );
        assert_eq!(l.flight.total(), 4);
        assert_eq!((l.flight.of_lane(0), l.flight.of_lane(1)), (2, 1));
        assert_eq!(
            (
                l.flight.of_watch(0),
                l.flight.of_watch(1),
                l.flight.of_watch(2)
            ),
            (1, 1, 2)
        );
        // Destination 0 is at its cap (2): nothing for it even with a global slot free.
        l.end(2, false);
        assert!(l.next(4, now, &live, |_| false).is_none());
        l.end(0, true);
        let next = l.next(4, now, &live, |_| false).map(|(k, _)| k);
        assert_eq!(
            next,
            Some((0, "a3".into())),
            "a2's first place is stale: it goes after a3"
        );
    }
}
