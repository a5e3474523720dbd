//! The decisions of the spool service, without I/O: which names are ready, when to look at
//! them again, when to retry, which destination gets the next slot, whether a destination is
//! down, and which files are held in memory at all.
//!
//! Like `quinn-proto`, the core neither touches the filesystem nor reads the clock nor
//! logs. It is fed inputs ([`Core::hint`], [`Core::looked`], [`Core::writers`],
//! [`Core::listed`], [`Core::finished`], [`Core::handle_timeout`], each with `now`) and
//! answers with [`Action`]s ([`Core::poll_action`]: look at this name, probe its writers,
//! list this directory, start this attempt, report this) and its next deadline
//! ([`Core::poll_timeout`]). The tokio driver ([`super::queue`]) performs the actions and
//! feeds the answers back; the simulation tests drive it with a simulated spool and clock.
//!
//! Every name moves through a small state machine:
//!
//! ```text
//!   created/modified ──> Writing ──(closed, or no writer left)──> Settling
//!   found by a listing ──────────────────────────────────────────> Settling
//!   Settling ──(unchanged for `settle`)──> Ready
//!   moved in ─────────────────────────────────────────────────────────────> Ready
//!   Ready ──(a slot of its destination)──> InFlight ──> delivered / given up: look again
//!                                         ──> failed: Waiting (backoff) ──> Ready
//!                                         ──> destination failed: Ready (front of its lane)
//!                                         ──> still open for writing: Writing
//!                                         ──> changed recently, writers unknown: Waiting
//!                                         ──> changed while sent: Settling
//!   Ready or Writing, moved in ──(closed)──> Ready (a writer that renames before it closes)
//! ```
//!
//! (An attempt that ends with nothing known of the name but what a look will tell is
//! `Looking` until the answer comes.)
//!
//! **Lanes.** Each destination (host, port) has a lane: the ready files of the watches that
//! send to it, its limit of uploads in flight ([`limiter::Limiter`], adaptive between 1 and
//! its cap) and its health ([`health::Health`]). A free slot goes to the destinations with
//! ready files in turn (round robin), within one to its watches in turn, within a watch
//! oldest first. A down destination takes no slot but one probe at a time, with backoff.
//!
//! **Memory.** At most `active_limit` names per watch are held; past that, names are left on
//! disk and the watch is marked as having more there. When its active set runs down to a
//! quarter, the directory is listed again and the oldest names not yet held are taken in
//! (the listing itself keeps only the `active_limit` oldest), so memory follows the work in
//! flight, not the backlog, and the order stays oldest first across refills.
//!
//! **Where each decision is**, as in `quinn-proto`'s connection (one file per concern, each
//! behind a few calls):
//!
//! | file | decides |
//! |---|---|
//! | `mod.rs` | the inputs (hints, looks, writers, timeouts) and each name's state machine |
//! | [`types`] | the vocabulary the stages speak: hints, identities, listings, outcomes, actions |
//! | `entry.rs` | what is held per name: state, failures, pending move, live timer |
//! | `timers.rs` | the timer table: arm, pop due, next deadline, compaction of stale timers |
//! | `lanes.rs` | ready queues, round robin, in-flight counts, the start of an attempt |
//! | `attempt.rs` | the end of an attempt: what it says of the destination, the file's next state |
//! | [`health`] | up or down, probes, how loudly an outage is reported |
//! | [`limiter`] | the adaptive limit of uploads in flight |
//! | `active.rs` | the active set: listings, the reserve, refills |
//! | `view.rs` | the counts and the view for `accio status` and the metrics |

mod active;
mod attempt;
mod entry;
pub mod health;
mod lanes;
pub mod limiter;
#[cfg(test)]
mod sim;
mod timers;
pub mod tree;
pub mod types;
mod view;

pub use types::*;
pub use view::CoreView;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use super::specials::{self, Tracker};
use crate::config::RetryPolicy;
use active::WatchSt;
use entry::{fingerprint, Cont, Entry, State, Wait};
use lanes::{ready_under, Lanes};
use timers::{Gen, Timers};
use view::Waiting;

/// How often a file still open for writing is looked at again, at least (the settle time,
/// if longer).
pub const WRITER_RECHECK: Duration = Duration::from_secs(1);

/// How long to wait before looking again at a file another instance is sending.
pub const BUSY_RECHECK: Duration = Duration::from_millis(500);

/// Floor of the rescan interval, so that a zero cannot make a busy loop.
pub const MIN_RESCAN: Duration = Duration::from_millis(50);

/// How soon a directory that could not be listed is tried again (unless the rescan
/// interval is shorter).
pub const RELIST_AFTER_ERROR: Duration = Duration::from_secs(1);

/// A failed move/delete is reported loudly the first time, when the kind of its error
/// changes, and every this many failures.
pub const DISPOSITION_REPORT_EVERY: u32 = 20;

/// Timers fired per [`Core::handle_timeout`], at most.
const FIRE_BATCH: usize = 4096;

/// Waiting files listed in a [`View`](crate::status::View), at most.
pub const VIEW_WAITING: usize = 20;

/// The delay before retry `n` (1-based): `base = floor · 2^(n−1)` capped at `max`, then a
/// uniformly random value in `[base/2, base]`. The one place that decides every retry delay
/// (files, probes of a down destination, failed moves); `floor` is `retry.initial` (or
/// more).
pub fn retry_delay(
    policy: &RetryPolicy,
    floor: Duration,
    n: u32,
    rng: &mut fastrand::Rng,
) -> Duration {
    let exp = n.saturating_sub(1).min(31);
    let max = policy.max.max(floor);
    let base = floor.checked_mul(1u32 << exp).unwrap_or(max).min(max);
    let half = base / 2;
    let spread = (base - half).as_nanos().min(u128::from(u64::MAX)) as u64;
    half + Duration::from_nanos(rng.u64(0..=spread))
}

/// What [`Core::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Destinations that were down: their next probe is due now.
    pub probed: usize,
    /// Files that were backing off after a failed attempt: ready now.
    pub files: usize,
}

/// The state of every name, lane and directory.
pub struct Core {
    p: Params,
    now: Instant,
    rng: fastrand::Rng,
    /// Per watch: its active set and listings.
    watches: Vec<WatchSt>,
    /// Per destination: its lane; per watch: its queues; the attempts in flight.
    lanes: Lanes,
    entries: HashMap<Key, Entry>,
    /// The entries not in flight, oldest first (for the view).
    waiting: Waiting,
    /// Entries that are not regular files, with the identity already reported (bounded,
    /// shared with the other pipelines of the process).
    reported: Tracker,
    looks: HashMap<Key, Cont>,
    probes: HashSet<Key>,
    /// Attempts abandoned because later ones were greeted first ([`Core::greeted`]).
    abandoned: HashSet<Key>,
    timers: Timers,
    stopping: bool,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("entries", &self.entries.len())
            .field("in_flight", &self.lanes.flight.total())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for `p`, at `now`. `reported`: special entries reported, shared with the
    /// other cores of the same process (a reload). `seed`: for the jitter. The first actions list
    /// every directory.
    pub fn new(p: Params, now: Instant, reported: Tracker, seed: u64) -> Core {
        let mut core = Core {
            lanes: Lanes::new(&p),
            waiting: Waiting::new(p.watches.len()),
            watches: p
                .watches
                .iter()
                .map(|w| WatchSt::new(w.clone(), now))
                .collect(),
            p,
            now,
            rng: fastrand::Rng::with_seed(seed),
            entries: HashMap::new(),
            reported,
            looks: HashMap::new(),
            probes: HashSet::new(),
            abandoned: HashSet::new(),
            timers: Timers::default(),
            stopping: false,
            actions: VecDeque::new(),
        };
        for w in 0..core.watches.len() {
            core.request_scan(w);
        }
        core
    }

    // ---- inputs -------------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// A hint from the kernel watcher (already filtered by the watch's name patterns).
    pub fn hint(&mut self, now: Instant, watch: usize, name: OsString, hint: Hint) {
        self.advance(now);
        if watch >= self.watches.len() {
            return;
        }
        let key = (watch, name);
        if let Some(e) = self.entries.get_mut(&key) {
            if let State::InFlight {
                closed,
                modified,
                moved,
                ..
            } = &mut e.state
            {
                // The attempt owns it; the name is looked at again after it. A close is
                // remembered: a writer the attempt finds may be the one that just left.
                match hint {
                    Hint::Closed => *closed = true,
                    Hint::Created | Hint::Modified => *modified = true,
                    Hint::MovedIn => *moved = true,
                    Hint::Attrib | Hint::Gone => {}
                }
                return;
            }
        }
        match hint {
            Hint::Gone => {
                self.remove(&key);
                self.reported.forget(key.0, &key.1);
            }
            Hint::Created | Hint::Modified => {
                if hint == Hint::Created || self.reported.contains(key.0, &key.1) {
                    // Links, FIFOs, sockets and directories announce themselves only by a
                    // create: find out what it is.
                    self.look(key, Cont::Hint(hint));
                } else {
                    self.writing(key);
                }
            }
            Hint::MovedIn
                if !self.watches[key.0].p.recursive
                    && self.watches[key.0].looking == 0
                    && !self.entries.contains_key(&key) =>
            {
                // Complete by the writers' convention, nothing held under the name, and no
                // look of this watch under way (a refill's names, asked before it, keep
                // their turn): ready at once, without a look (one `lstat` per file less).
                // The claim finds what it is: a special is reported from there, a name
                // already empty again is looked at afresh. (In a tree the look stays: the
                // name may be a directory moved in, to be walked.)
                self.reported.forget(key.0, &key.1);
                self.hold_moved_in(key);
            }
            Hint::Closed | Hint::Attrib | Hint::MovedIn => self.look(key, Cont::Hint(hint)),
        }
    }

    /// The answer to [`Action::Look`]: the name's identity, or `None` if it is gone (or
    /// cannot be inspected).
    /// `wall_ns`: the wall clock when the look was made (nanoseconds since the Unix epoch),
    /// which a refilled name's stamps are read against.
    pub fn looked(&mut self, now: Instant, key: Key, id: Option<Identity>, wall_ns: i128) {
        self.advance(now);
        let Some(cont) = self.looks.remove(&key) else {
            return;
        };
        self.watches[key.0].looking -= 1;
        if matches!(
            self.entries.get(&key).map(|e| &e.state),
            Some(State::InFlight { .. })
        ) {
            // Sent meanwhile: looked at again afterwards.
            return;
        }
        let id = match id {
            None => {
                self.remove(&key);
                return;
            }
            Some(id) if id.kind == Kind::Directory && self.watches[key.0].p.recursive => {
                // A directory of a tree, under a name a file could have: one made or renamed
                // in is walked (watched, then listed); a chmod or touch of one is nothing.
                self.remove(&key);
                self.reported.forget(key.0, &key.1);
                if matches!(cont, Cont::Hint(Hint::Created | Hint::MovedIn)) {
                    self.request_scan(key.0);
                }
                return;
            }
            Some(id) if id.kind != Kind::Regular => return self.ignore(key, id),
            Some(id) => id,
        };
        self.reported.forget(key.0, &key.1);
        let now = self.now;
        match cont {
            // Nothing reliable is known about its writer any more.
            Cont::Settle { closed } => self.settle_now(&key, &id, closed, true),
            // A backlog's next name: it settles from its last write, as its timestamps tell
            // (as the listing's own names: `listed`); one unchanged for the settle time
            // already is ready now, and its claim checks its stamps again.
            Cont::Refill if !self.entries.contains_key(&key) => {
                if self.take_room(key.0) {
                    self.hold_by_stamps(key, &id, wall_ns, None);
                }
            }
            Cont::Refill => self.settle_now(&key, &id, false, true),
            Cont::SettleCheck => {
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                let State::Settling { snap, .. } = e.state else {
                    return;
                };
                if fingerprint(&id) == snap {
                    self.make_ready(&key, false);
                } else {
                    e.state = State::Settling {
                        since: now,
                        snap: fingerprint(&id),
                    };
                    let settle = self.settle(key.0);
                    self.arm(&key, now + settle);
                }
            }
            Cont::Hint(Hint::Created | Hint::Modified) => self.writing(key),
            Cont::Hint(Hint::MovedIn) => {
                // Complete by the writers' convention: a new file, whatever this name held,
                // ready at once.
                let Some(e) = self.entries.get_mut(&key) else {
                    return self.hold_moved_in(key);
                };
                if e.pending.as_ref().is_some_and(|p| p.id == id) {
                    // The very file whose delivery is done and whose move is left: renamed
                    // in before the attempt claimed it (the answer to the look that rename
                    // asked for comes after). Still only its move.
                    return;
                }
                e.failures = 0;
                let was_pending = e.pending.take().is_some();
                e.moved_in = true;
                e.closed = false;
                self.waiting
                    .remove(&key, std::mem::replace(&mut e.since, now));
                self.waiting.add(&key, now);
                // A new file to upload: out of the finish-only queue (if it was there) and
                // into its lane. Already ready in its lane: it keeps its place.
                if was_pending || !matches!(e.state, State::Ready { .. }) {
                    self.requeue(&key, false);
                }
            }
            Cont::Hint(hint) => {
                // Closed or Attrib.
                if hint == Hint::Closed {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.closed = true;
                        // Moved in, then closed (a writer that renames before it closes):
                        // complete now. The writer check before the send still applies.
                        if e.moved_in
                            && matches!(e.state, State::Ready { .. } | State::Writing { .. })
                        {
                            return self.make_ready(&key, false);
                        }
                    }
                }
                match self.entries.get_mut(&key) {
                    Some(Entry {
                        state: State::Settling { since, snap },
                        ..
                    }) => {
                        *since = now;
                        *snap = fingerprint(&id);
                        // Armed afresh, not left to the timer running: that one may have
                        // fired already, its look (the settle check) replaced by this one.
                        let settle = self.settle(key.0);
                        self.arm(&key, now + settle);
                    }
                    // Being written, ready or backing off: a chmod or touch changes nothing.
                    // (Looking: this look replaced the one that was to settle it.)
                    Some(e) if hint == Hint::Attrib && !matches!(e.state, State::Looking) => {}
                    _ => self.settle_now(&key, &id, hint == Hint::Closed, false),
                }
            }
        }
    }

    /// `key` (inserted if there is room) starts settling from now as `id`. `closed`: a close
    /// vouches for it; `forget_moved`: a rename no longer does.
    fn settle_now(&mut self, key: &Key, id: &Identity, closed: bool, forget_moved: bool) {
        let now = self.now;
        let settle = self.settle(key.0);
        let state = State::Settling {
            since: now,
            snap: fingerprint(id),
        };
        if let Some(e) = self.entry_or_insert(key, state.clone()) {
            // One already held starts settling afresh as well.
            e.state = state;
            if forget_moved {
                e.moved_in = false;
            }
            e.closed = closed;
            self.arm(key, now + settle);
        }
    }

    /// The answer to [`Action::ProbeWriters`].
    /// The answer to [`Action::AskGreeted`]: whether the attempt of `key` got its greeting
    /// (sent any of its file) by now. Asked only once its greeting is overdue and attempts
    /// started after it have been greeted: a server's accept queue is first in, first out,
    /// so it waits on a hung worker, not in the queue (TCP's fast retransmit: later data
    /// acknowledged means the earlier segment was lost). Not greeted: it is abandoned
    /// ([`Action::Abandon`]) and its file goes again at once on another connection, instead
    /// of holding a slot until the greeting timeout. A server that serves one at a time is
    /// never abandoned this way: nothing overtakes the connection that waits in its queue.
    pub fn greeted(&mut self, now: Instant, key: Key, greeted: bool) {
        self.advance(now);
        let lane = matches!(
            self.entries.get(&key).map(|e| &e.state),
            Some(State::InFlight { lane: Some(_), .. })
        );
        if !greeted && lane && self.abandoned.insert(key.clone()) {
            self.actions.push_back(Action::Abandon(key));
        }
    }

    pub fn writers(&mut self, now: Instant, key: Key, writers: Writers) {
        self.advance(now);
        if !self.probes.remove(&key) {
            return;
        }
        let Some(State::Writing { last }) = self.entries.get(&key).map(|e| e.state.clone()) else {
            return;
        };
        let now = self.now;
        match writers {
            // Nobody has it open for writing (any more): settle it like a closed file.
            // Also how a hard link into the spool is taken.
            Writers::None => self.look(key, Cont::Settle { closed: false }),
            Writers::Some => {
                let again = self.writer_recheck(key.0);
                self.report(Report::WriterOpen { key: key.clone() });
                self.arm(&key, now + again);
            }
            Writers::Unknown => {
                let quiet = self.writer_quiet(key.0);
                if now < last + quiet {
                    self.arm(&key, last + quiet);
                } else {
                    self.report(Report::WriterQuiet {
                        key: key.clone(),
                        quiet,
                    });
                    self.look(key, Cont::Settle { closed: false });
                }
            }
        }
    }

    /// `accio flush` (like `postqueue -f`): for destination `dest` (all if `None`), a
    /// destination that is down gets its probe now, and its files backing off after a
    /// failed attempt are ready now. Their failed attempts still count: a flush only
    /// shortens the wait.
    pub fn flush(&mut self, now: Instant, dest: Option<usize>) -> Flushed {
        self.advance(now);
        let now = self.now;
        let mine = |d: usize| dest.map_or(true, |x| x == d);
        let mut out = Flushed::default();
        for (i, lane) in self.lanes.lanes.iter_mut().enumerate() {
            if mine(i) && lane.health.probe_now(now) {
                out.probed += 1;
            }
        }
        let backing_off: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| {
                mine(self.watches[k.0].p.dest)
                    && matches!(
                        e.state,
                        State::Waiting {
                            why: Wait::Backoff { .. },
                            ..
                        }
                    )
            })
            .map(|(k, _)| k.clone())
            .collect();
        out.files = backing_off.len();
        for k in backing_off {
            self.make_ready(&k, false);
        }
        out
    }

    /// Timers due at `now` fire: settle times, backoffs, writer checks, rescans.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        // In batches: a backlog listed at start has all its settle deadlines at once, and
        // each firing asks for a look; the next batch follows at once (the deadline is past).
        for _ in 0..FIRE_BATCH {
            let Some((key, gen)) = self.timers.pop_due(now) else {
                break;
            };
            self.fire(key, gen);
        }
        for w in 0..self.watches.len() {
            if self.watches[w].next_rescan <= now {
                self.rescan_due(w);
            }
        }
    }

    /// Stop starting attempts (shutdown); those in flight still report back.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    // ---- outputs ------------------------------------------------------------------

    /// The next thing to do, if any. Dispatching happens here: when nothing else is
    /// pending, free slots are given out.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.refill();
            self.dispatch();
        }
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must be called next, if anything waits for time.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Stale timers are skipped, so that the deadline is a real one.
        let mut next = self.timers.next_deadline(timer_live(&self.entries));
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for w in &self.watches {
            consider(w.next_rescan);
        }
        // A down destination's next probe, if it has files and it is still to come (a
        // probe due already waits for a slot, which a finished attempt frees).
        for d in 0..self.lanes.lanes.len() {
            if let Some(probe_at) = self.lanes.lanes[d].health.next_probe() {
                if probe_at > self.now && self.lanes.has_ready(d, &ready_under(&self.entries)) {
                    consider(probe_at);
                }
            }
        }
        next
    }

    // ---- decisions ----------------------------------------------------------------

    fn report(&mut self, r: Report) {
        self.actions.push_back(Action::Report(r));
    }

    fn settle(&self, watch: usize) -> Duration {
        self.watches[watch].p.settle
    }

    fn writer_quiet(&self, watch: usize) -> Duration {
        self.watches[watch]
            .p
            .rescan_interval
            .max(self.p.writer_quiet_min)
    }

    fn writer_recheck(&self, watch: usize) -> Duration {
        self.settle(watch).max(WRITER_RECHECK)
    }

    /// Asks for an `lstat` of `key`, continued by `cont`. One look per name at a time: a
    /// later request replaces the continuation of one not yet answered, unless it says
    /// less: answers can come long after the question (the driver asks off its task), and
    /// a chmod must not drop the settle check or the rename a look was asked for, nor a
    /// close the rename (which already vouches for the file).
    fn look(&mut self, key: Key, cont: Cont) {
        match self.looks.get_mut(&key) {
            Some(pending) => {
                let weaker = matches!(
                    (&*pending, cont),
                    (_, Cont::Hint(Hint::Attrib))
                        | (Cont::Hint(Hint::MovedIn), Cont::Hint(Hint::Closed))
                );
                if !weaker {
                    *pending = cont;
                }
            }
            None => {
                self.looks.insert(key.clone(), cont);
                self.watches[key.0].looking += 1;
                self.actions.push_back(Action::Look(key));
            }
        }
    }

    /// Holds `key` (counted by the caller) as `e`, which is not in flight.
    fn insert_entry(&mut self, key: Key, e: Entry) {
        self.waiting.add(&key, e.since);
        self.entries.insert(key, e);
    }

    fn remove(&mut self, key: &Key) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        let w = key.0;
        self.watches[w].count -= 1;
        if let State::InFlight { lane, .. } = e.state {
            // Not reached: attempts end through `finished`. Kept consistent anyway.
            self.lanes.end(w, lane.is_some_and(|t| !t.released()));
        } else {
            self.waiting.remove(key, e.since);
        }
        // Fewer names held: the stale places and timers they left may outnumber the live.
        let entries = &self.entries;
        let held = self.watches[w].count;
        self.lanes.shrunk(w, held, &ready_under(entries));
        self.timers.compact(entries.len(), timer_live(entries));
    }

    fn arm(&mut self, key: &Key, at: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.timer = Some(self.timers.arm(key.clone(), at));
        }
        // Re-armed and forgotten names leave stale timers behind (recognised by their
        // generation when they fire); drop them once they outnumber the live ones.
        let entries = &self.entries;
        self.timers.compact(entries.len(), timer_live(entries));
    }

    fn wait(&mut self, key: &Key, why: Wait, until: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.state = State::Waiting { why, until };
            self.arm(key, until);
        }
    }

    /// A not-regular entry: reported once per identity, and forgotten as a candidate.
    fn ignore(&mut self, key: Key, id: Identity) {
        self.remove(&key);
        if id.kind == Kind::Directory && self.watches[key.0].p.recursive {
            // A directory of a tree: walked (watched, then listed), not ignored.
            self.reported.forget(key.0, &key.1);
            return self.request_scan(key.0);
        }
        if self.reported.note(key.0, &key.1, fingerprint(&id)) {
            // Bounded: past it, the listing under way does not forget any (apply_listing).
            if let Some(w) = self.watches.get_mut(key.0).filter(|w| w.scanning) {
                if w.reported_while_listing.len() <= specials::TRACKED_PER_DIR {
                    w.reported_while_listing.push(key.1.clone());
                }
            }
            self.report(Report::Ignoring { key, id });
        }
    }

    /// Created or written to in place: neither a rename nor an earlier close vouches for it.
    /// Looked at after the settle time: by then the kernel can tell whether a writer has it
    /// open (a hard link, say, has none and needs no close).
    fn writing(&mut self, key: Key) {
        let now = self.now;
        let probe = self.settle(key.0);
        let probing = self.probes.contains(&key);
        let Some(e) = self.entry_or_insert(&key, State::Writing { last: now }) else {
            return;
        };
        e.moved_in = false;
        e.closed = false;
        match &mut e.state {
            // Already on its way: its timer, or the writers probe that timer asked for.
            State::Writing { last } if e.timer.is_some() || probing => *last = now,
            _ => {
                e.state = State::Writing { last: now };
                self.arm(&key, now + probe);
            }
        }
    }

    fn fire(&mut self, key: Key, gen: Gen) {
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        if e.timer != Some(gen) {
            return;
        }
        // Spent: whatever it asks for next is the way forward now.
        e.timer = None;
        let now = self.now;
        match e.state {
            State::Writing { .. } => {
                if self.probes.insert(key.clone()) {
                    self.actions.push_back(Action::ProbeWriters(key));
                }
            }
            State::Settling { since, .. } => {
                let settle = self.settle(key.0);
                if now < since + settle {
                    self.arm(&key, since + settle);
                } else {
                    self.look(key, Cont::SettleCheck);
                }
            }
            State::Waiting { .. } => self.make_ready(&key, false),
            State::InFlight {
                lane: Some(mut t),
                probe: false,
                ..
            } => {
                let d = self.watches[key.0].p.dest;
                let limiter = &self.lanes.lanes[d].limiter;
                let (Some(suspect), Some(overdue)) =
                    (limiter.suspect_after(), limiter.overdue_after())
                else {
                    return;
                };
                if now < t.started() + overdue {
                    // Suspect: overtaken by a later greeting. Its slot goes to another
                    // attempt; it goes on, and is looked at again once overdue.
                    if !t.released() && limiter.greeted_after(&t) {
                        t.release();
                        if let Some(State::InFlight { lane, .. }) =
                            self.entries.get_mut(&key).map(|e| &mut e.state)
                        {
                            *lane = Some(t);
                        }
                        self.lanes.release(key.0);
                    }
                    // Asked again a suspect time later (a later attempt may be greeted by
                    // then), and at the latest once overdue.
                    let at = if t.released() {
                        t.started() + overdue
                    } else {
                        (now + suspect).min(t.started() + overdue)
                    };
                    self.arm(&key, at);
                } else if limiter.overtaken(&t, now) {
                    self.actions.push_back(Action::AskGreeted(key));
                } else {
                    self.arm(&key, now + overdue);
                }
            }
            State::Ready { .. } | State::InFlight { .. } | State::Looking => {}
        }
    }
}

/// Whether a timer of `entries` is live: the last one armed for its name.
fn timer_live(entries: &HashMap<Key, Entry>) -> impl Fn(&Key, Gen) -> bool + '_ {
    |k, g| entries.get(k).is_some_and(|e| e.timer == Some(g))
}

#[cfg(test)]
mod sizes {
    /// What every held file costs, at least (printed with `--nocapture`; the bound keeps a
    /// careless field from doubling it).
    #[test]
    fn entries_stay_small() {
        let (e, s, a) = (
            std::mem::size_of::<super::Entry>(),
            std::mem::size_of::<super::State>(),
            std::mem::size_of::<super::Action>(),
        );
        println!("Entry {e} B, State {s} B, Action {a} B");
        assert!(e <= 96, "Entry is {e} bytes");
    }
}
