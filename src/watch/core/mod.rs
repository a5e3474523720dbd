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
//! **Lanes.** Each destination (host, port) has a lane: the ready files of the watches that
//! send to it, its limit of uploads in flight ([`limiter::Limiter`], adaptive between 1 and
//! its cap) and its health ([`health::Health`]). A free slot goes to the destinations with ready
//! files in turn (round robin), within one to its watches in turn, within a watch oldest
//! first. A down destination takes no slot but one probe at a time, with backoff.
//!
//! **Memory.** At most `active_limit` names per watch are held; past that, names are left on
//! disk and the watch is marked as having more there. When its active set runs down to a
//! quarter, the directory is listed again and the oldest names not yet held are taken in
//! (the listing itself keeps only the `active_limit` oldest), so memory follows the work in
//! flight, not the backlog, and the order stays oldest first across refills.

pub mod health;
pub mod limiter;
mod types;

pub use types::*;
#[cfg(test)]
mod sim;

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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use super::error::{DestError, DispositionError, FileError};
use crate::config::RetryPolicy;
use health::{Health, Transition};
use limiter::{Limiter, Ticket};

/// A name in one of the watched directories: (watch number, file name).
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

/// A listing keeps this many times the active set beyond it, as names only (the reserve).
const RESERVE_FACTOR: usize = 3;

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

/// A file's identity (inode, size, times) as 64 bits: all a settling file needs to be told
/// unchanged, in a fifth of the memory (every held file pays for it).
fn fingerprint(id: &Identity) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// What an `lstat` answer continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cont {
    /// A hint that needs the entry's kind (and identity).
    Hint(Hint),
    /// Settle afresh from now; `closed`: as a file closed after writing.
    Settle { closed: bool },
    /// The settle time passed: ready if unchanged.
    SettleCheck,
}

#[derive(Debug, Clone)]
enum Wait {
    /// After a failed attempt. Boxed: every held entry pays for the largest state.
    Backoff { error: Box<FileError> },
    /// Another instance has it.
    Busy,
    /// Writers unknown, changed recently.
    Young,
    /// The move/delete failed; trying again.
    Disposition,
}

#[derive(Debug, Clone)]
enum State {
    /// Seen being written and not closed since `last` activity.
    Writing { last: Instant },
    /// Must stay the same (its identity's [`fingerprint`] `snap`) until `since + settle`.
    Settling { since: Instant, snap: u64 },
    /// In its watch's ready queue under this sequence number.
    Ready { seq: u64 },
    /// An attempt has it; whatever happens to the name meanwhile, it is looked at again
    /// afterwards.
    InFlight {
        /// Counted in its destination's lane (not a finish-only attempt): what its limiter
        /// needs to know again when it ends.
        lane: Option<Ticket>,
        /// The probe of a down destination.
        probe: bool,
        /// A close was seen meanwhile (such events are otherwise dropped).
        closed: bool,
        /// A write or re-create was seen meanwhile: after an attempt that did not deliver,
        /// `moved_in` and `closed` no longer vouch for the content.
        modified: bool,
        /// A file was renamed in over the name meanwhile: afterwards it is handled as moved
        /// in (whatever the attempt found).
        moved: bool,
    },
    /// Until its timer fires.
    Waiting { why: Wait, until: Instant },
}

/// A move or delete still to do, and how often it failed.
#[derive(Debug, Clone)]
struct Pending {
    id: Identity,
    after: After,
    failures: u32,
    error: DispositionError,
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    /// Failed attempts so far (those that count against `max_attempts`).
    failures: u32,
    /// Boxed: rare, and every held entry pays for the field.
    pending: Option<Box<Pending>>,
    /// Generation of the live timer; older timers are stale.
    gen: u64,
    /// Seen moved in (and not written in place since).
    moved_in: bool,
    /// A close after writing was seen since the last change.
    closed: bool,
    /// When the core first knew of it (delivery latency, age of waiting files).
    since: Instant,
}

impl Entry {
    fn new(state: State, now: Instant) -> Entry {
        Entry {
            state,
            failures: 0,
            pending: None,
            gen: 0,
            moved_in: false,
            closed: false,
            since: now,
        }
    }
}

#[derive(Debug)]
struct WatchSt {
    p: WatchParams,
    /// Names ready to upload, in the order they became ready (lazy: checked when popped).
    ready: VecDeque<(OsString, u64)>,
    /// Names whose move/delete is pending: they need no destination.
    finish: VecDeque<(OsString, u64)>,
    /// Entries held.
    count: usize,
    in_flight: usize,
    /// More regular files on disk than held: list again when the active set runs low.
    more_on_disk: bool,
    /// The next oldest names of the last listing beyond the active set (up to
    /// [`RESERVE_FACTOR`] times it), oldest first: refills take them without listing again.
    reserve: VecDeque<OsString>,
    /// The last listing had more files than it kept, or names were dropped since for lack of
    /// room: once the reserve is used up, list again.
    truncated: bool,
    /// How many, at the last listing (plus names dropped since), for the counts.
    on_disk: usize,
    scanning: bool,
    /// Names reported as not regular while a listing was under way: that listing may have
    /// been read before they appeared, so its lack of them does not mean they are gone.
    reported_while_listing: Vec<OsString>,
    rescan_again: bool,
    next_rescan: Instant,
    list_failing: bool,
    /// (device, inode) of the directory the inotify watch is on, as far as known: from
    /// [`Core::watched`], else the last listing. A listing that finds another one there
    /// means the watch is stale.
    dir_id: Option<(u64, u64)>,
    listed_once: bool,
    full_reported: bool,
    sent: u64,
    failed: u64,
}

impl WatchSt {
    /// Files waiting (held, or on disk as far as the last listing tells), not in flight.
    fn queued(&self) -> usize {
        (self.count - self.in_flight) + self.on_disk
    }
}

#[derive(Debug)]
struct DestSt {
    p: DestParams,
    limiter: Limiter,
    health: Health,
    in_flight: usize,
    /// Watches sending here, and the round-robin position among them.
    watches: Vec<usize>,
    next_watch: usize,
}

/// The state of every name, lane and directory.
pub struct Core {
    p: Params,
    now: Instant,
    rng: fastrand::Rng,
    watches: Vec<WatchSt>,
    dests: Vec<DestSt>,
    entries: HashMap<Key, Entry>,
    /// Entries that are not regular files, with the identity already reported.
    reported: HashMap<Key, Identity>,
    looks: HashMap<Key, Cont>,
    probes: HashSet<Key>,
    timers: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    next_gen: u64,
    next_seq: u64,
    in_flight: usize,
    /// Round-robin position among destinations.
    next_dest: usize,
    stopping: bool,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("entries", &self.entries.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for `p`, at `now`. `reported`: special entries already reported by an earlier
    /// core of the same process (a reload). `seed`: for the jitter. The first actions list
    /// every directory.
    pub fn new(p: Params, now: Instant, reported: HashMap<Key, Identity>, seed: u64) -> Core {
        let dests: Vec<DestSt> = p
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| DestSt {
                p: d.clone(),
                limiter: Limiter::new(d.cap.min(p.global_cap.max(1)), d.adaptive),
                health: Health::new(p.retry),
                in_flight: 0,
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
        let watches = p
            .watches
            .iter()
            .map(|w| WatchSt {
                p: w.clone(),
                ready: VecDeque::new(),
                finish: VecDeque::new(),
                count: 0,
                in_flight: 0,
                more_on_disk: false,
                reserve: VecDeque::new(),
                truncated: false,
                on_disk: 0,
                scanning: false,
                reported_while_listing: Vec::new(),
                rescan_again: false,
                next_rescan: now + w.rescan_interval.max(MIN_RESCAN),
                list_failing: false,
                dir_id: None,
                listed_once: false,
                full_reported: false,
                sent: 0,
                failed: 0,
            })
            .collect();
        let mut core = Core {
            p,
            now,
            rng: fastrand::Rng::with_seed(seed),
            watches,
            dests,
            entries: HashMap::new(),
            reported,
            looks: HashMap::new(),
            probes: HashSet::new(),
            timers: BinaryHeap::new(),
            next_gen: 1,
            next_seq: 1,
            in_flight: 0,
            next_dest: 0,
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
                self.reported.remove(&key);
            }
            Hint::Created | Hint::Modified => {
                if hint == Hint::Created || self.reported.contains_key(&key) {
                    // Links, FIFOs, sockets and directories announce themselves only by a
                    // create: find out what it is.
                    self.look(key, Cont::Hint(hint));
                } else {
                    self.writing(key);
                }
            }
            Hint::Closed | Hint::Attrib | Hint::MovedIn => self.look(key, Cont::Hint(hint)),
        }
    }

    /// The answer to [`Action::Look`]: the name's identity, or `None` if it is gone (or
    /// cannot be inspected).
    pub fn looked(&mut self, now: Instant, key: Key, id: Option<Identity>) {
        self.advance(now);
        let Some(cont) = self.looks.remove(&key) else {
            return;
        };
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
            Some(id) if id.kind != Kind::Regular => return self.ignore(key, id),
            Some(id) => id,
        };
        self.reported.remove(&key);
        let now = self.now;
        match cont {
            // Nothing reliable is known about its writer any more.
            Cont::Settle { closed } => self.settle_now(&key, &id, closed, true),
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
                    if self.take_room(key.0) {
                        let state = self.enqueue(&key, false, false);
                        let mut e = Entry::new(state, now);
                        e.moved_in = true;
                        self.entries.insert(key, e);
                    }
                    return;
                };
                e.failures = 0;
                let was_pending = e.pending.take().is_some();
                e.moved_in = true;
                e.closed = false;
                e.since = now;
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
                        // The timer notices the later deadline and re-arms.
                        *since = now;
                        *snap = fingerprint(&id);
                    }
                    // Being written, ready or backing off: a chmod or touch changes nothing.
                    Some(_) if hint == Hint::Attrib => {}
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

    /// The answer to [`Action::List`].
    pub fn listed(&mut self, now: Instant, watch: usize, result: Result<Listing, std::io::Error>) {
        self.advance(now);
        if watch >= self.watches.len() {
            return;
        }
        self.watches[watch].scanning = false;
        match result {
            Ok(listing) => {
                if std::mem::take(&mut self.watches[watch].list_failing) {
                    self.report(Report::ListRecovered { watch });
                }
                self.apply_listing(watch, listing);
            }
            Err(error) => {
                let w = &mut self.watches[watch];
                w.reported_while_listing.clear();
                let again = w.p.rescan_interval.min(RELIST_AFTER_ERROR).max(MIN_RESCAN);
                let first = !std::mem::replace(&mut w.list_failing, true);
                w.next_rescan = self.now + again;
                self.report(Report::ListFailed {
                    watch,
                    error: std::sync::Arc::new(error),
                    again,
                    first,
                });
            }
        }
        if std::mem::take(&mut self.watches[watch].rescan_again) {
            self.request_scan(watch);
        }
    }

    /// The kernel watch of `watch` was placed on the directory `dir_id` (device, inode),
    /// as it was just before. Without it, the first listing stands for it: a directory
    /// replaced between watching and that listing (it runs later, in the background) would
    /// go unnoticed, its events lost until a restart.
    pub fn watched(&mut self, watch: usize, dir_id: (u64, u64)) {
        if let Some(w) = self.watches.get_mut(watch) {
            w.dir_id = Some(dir_id);
        }
    }

    /// Watching the replaced directory again failed: compare its identity again at the
    /// next listing.
    pub fn rewatch_failed(&mut self, watch: usize) {
        if let Some(w) = self.watches.get_mut(watch) {
            w.dir_id = Some((u64::MAX, u64::MAX));
        }
    }

    /// Events were lost, or cannot be trusted: list every directory again.
    pub fn rescan_all(&mut self, now: Instant, why: String) {
        self.advance(now);
        self.report(Report::Rescan { why });
        for w in 0..self.watches.len() {
            self.request_scan(w);
        }
    }

    /// An attempt ended (`None`: its task panicked or was aborted; nothing is known).
    pub fn finished(&mut self, now: Instant, key: Key, outcome: Option<Outcome>) {
        self.advance(now);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let State::InFlight {
            lane,
            probe,
            closed: closed_during,
            modified: modified_during,
            moved: moved_during,
        } = e.state
        else {
            return;
        };
        // Leave InFlight at once: every path below sets the next state.
        e.state = State::Waiting {
            why: Wait::Young,
            until: now,
        };
        if modified_during {
            // Written to while the attempt had it: whatever made it look complete (moved
            // in, closed) is older than that write.
            e.moved_in = false;
            e.closed = false;
        }
        let w = key.0;
        let d = self.watches[w].p.dest;
        self.in_flight -= 1;
        self.watches[w].in_flight -= 1;
        if lane.is_some() {
            self.dests[d].in_flight -= 1;
        }
        let Some(outcome) = outcome else {
            self.remove(&key);
            return self.look(key, Cont::Settle { closed: false });
        };
        // What the attempt says about the destination.
        match &outcome {
            Outcome::Delivered {
                uploaded: Some(u), ..
            } => {
                self.dest_up(d);
                let limiter = &mut self.dests[d].limiter;
                let change = lane.and_then(|t| limiter.on_success(t, u.greeting, now));
                self.report_limit(d, change.is_some());
            }
            Outcome::Failed {
                greeting: Some(g),
                error,
            } => {
                self.dest_up(d);
                let limiter = &mut self.dests[d].limiter;
                let change =
                    lane.and_then(|t| limiter.on_failure(t, Some(*g), error.congestion(), now));
                self.report_limit(d, change.is_some());
            }
            Outcome::DestinationFailed { error } => {
                let limiter = &mut self.dests[d].limiter;
                let change =
                    lane.and_then(|t| limiter.on_failure(t, None, error.congestion(), now));
                self.report_limit(d, change.is_some());
                self.dest_failed(d, &key, error.clone(), probe);
            }
            _ => {}
        }
        self.after_attempt(key.clone(), outcome, closed_during);
        if moved_during {
            // Whatever became of the file the attempt had, the name now holds one renamed
            // in: complete by the writers' convention.
            self.look(key, Cont::Hint(Hint::MovedIn));
        }
    }

    /// The file's next state after an attempt.
    fn after_attempt(&mut self, key: Key, outcome: Outcome, closed_during: bool) {
        let now = self.now;
        let w = key.0;
        match outcome {
            Outcome::Delivered { .. } | Outcome::GaveUp => {
                if matches!(outcome, Outcome::Delivered { .. }) {
                    self.watches[w].sent += 1;
                } else {
                    self.watches[w].failed += 1;
                }
                self.remove(&key);
                // Always look at the name again: if it was replaced while being sent, the
                // new file is there and must be sent too.
                self.look(key, Cont::Settle { closed: false });
            }
            Outcome::Gone => {
                self.remove(&key);
                self.look(key, Cont::Settle { closed: false });
            }
            Outcome::Special(id) => {
                self.ignore(key.clone(), id);
                // It may have been replaced while the attempt looked (events are swallowed
                // then, and a listing skips a name in flight): look at what it holds now.
                // Still the same special entry: not reported again.
                self.look(key, Cont::Settle { closed: false });
            }
            Outcome::Busy => {
                let at = now + BUSY_RECHECK.max(self.settle(w));
                self.wait(&key, Wait::Busy, at);
            }
            Outcome::Changed => self.look(key, Cont::Settle { closed: false }),
            Outcome::Writer => {
                self.report(Report::WriterOpen { key: key.clone() });
                let again = self.writer_recheck(w);
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.state = State::Writing { last: now };
                if closed_during {
                    // Closed while the attempt looked: the writer it saw may be gone.
                    if e.moved_in {
                        return self.make_ready(&key, false);
                    }
                    return self.look(key, Cont::Settle { closed: true });
                }
                self.arm(&key, now + again);
            }
            Outcome::Young { wait } => {
                let quiet = self.writer_quiet(w);
                self.report(Report::Young {
                    key: key.clone(),
                    quiet,
                    wait,
                });
                if closed_during {
                    // Its writer closed it while the attempt looked: settle from that close.
                    return self.look(key, Cont::Settle { closed: true });
                }
                self.wait(&key, Wait::Young, now + wait);
            }
            Outcome::DestinationFailed { .. } => {
                // Back to the front of its lane: it was the oldest, and nothing is known
                // against it.
                self.make_ready(&key, true);
            }
            Outcome::Failed { error, .. } => {
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.failures = e.failures.saturating_add(1);
                let attempt = e.failures;
                let retry_in =
                    retry_delay(&self.p.retry, self.p.retry.initial, attempt, &mut self.rng);
                self.report(Report::AttemptFailed {
                    key: key.clone(),
                    attempt,
                    max: self.p.retry.max_attempts,
                    error: error.clone(),
                    retry_in,
                });
                let error = Box::new(error);
                self.wait(&key, Wait::Backoff { error }, now + retry_in);
            }
            Outcome::DispositionFailed { id, after, error } => {
                let floor = self.p.retry.initial.max(BUSY_RECHECK);
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                let (failures, loud) = match &e.pending {
                    Some(p) => {
                        let n = p.failures.saturating_add(1);
                        let news = p.error.kind() != error.kind();
                        (n, news || n % DISPOSITION_REPORT_EVERY == 0)
                    }
                    None => (1, true),
                };
                let retry_in = retry_delay(&self.p.retry, floor, failures, &mut self.rng);
                let delivered = matches!(after, After::Delivered);
                e.pending = Some(Box::new(Pending {
                    id,
                    after,
                    failures,
                    error: error.clone(),
                }));
                self.report(Report::DispositionFailed {
                    key: key.clone(),
                    error,
                    failures,
                    retry_in,
                    delivered,
                    loud,
                });
                self.wait(&key, Wait::Disposition, now + retry_in);
            }
        }
    }

    /// Timers due at `now` fire: settle times, backoffs, writer checks, rescans.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        // In batches: a backlog listed at start has all its settle deadlines at once, and
        // each firing asks for a look; the next batch follows at once (the deadline is past).
        let mut budget = FIRE_BATCH;
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now || budget == 0 {
                break;
            }
            budget -= 1;
            let Some(Reverse((_, gen, key))) = self.timers.pop() else {
                break;
            };
            self.fire(key, gen);
        }
        for w in 0..self.watches.len() {
            if self.watches[w].next_rescan <= now {
                self.request_scan(w);
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
        // Skip stale timers so that the deadline is a real one.
        while let Some(Reverse((_, gen, key))) = self.timers.peek() {
            if self.entries.get(key).is_some_and(|e| e.gen == *gen) {
                break;
            }
            self.timers.pop();
        }
        let mut next = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for w in &self.watches {
            consider(w.next_rescan);
        }
        // A down destination's next probe, if it has files and it is still to come (a
        // probe due already waits for a slot, which a finished attempt frees).
        for d in 0..self.dests.len() {
            if let Some(probe_at) = self.dests[d].health.next_probe() {
                if probe_at > self.now && self.dest_has_ready(d) {
                    consider(probe_at);
                }
            }
        }
        next
    }

    /// Counts for the status line.
    pub fn counts(&self) -> Counts {
        let queued: usize = self.watches.iter().map(WatchSt::queued).sum();
        Counts {
            queued: queued as u64,
            destinations_down: self.dests.iter().filter(|d| !d.health.is_up()).count() as u64,
        }
    }

    /// The name of destination `d`.
    pub fn dest_name(&self, d: usize) -> &str {
        &self.dests[d].p.name
    }

    /// Files of destination `d` waiting (held or on disk), not in flight.
    fn waiting_for(&self, d: usize) -> usize {
        self.dests[d]
            .watches
            .iter()
            .map(|&w| self.watches[w].queued())
            .sum()
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
    /// later request replaces the continuation of one not yet answered.
    fn look(&mut self, key: Key, cont: Cont) {
        if self.looks.insert(key.clone(), cont).is_none() {
            self.actions.push_back(Action::Look(key));
        }
    }

    /// Whether `watch` may hold one more name; counted as held if so. Without room the name
    /// stays on disk, found by the next listing.
    fn take_room(&mut self, watch: usize) -> bool {
        let limit = self.p.active_limit.max(1);
        let w = &mut self.watches[watch];
        if w.count >= limit {
            w.more_on_disk = true;
            w.truncated = true;
            w.on_disk += 1;
            if !std::mem::replace(&mut w.full_reported, true) {
                self.report(Report::Full { watch, limit });
            }
            return false;
        }
        w.count += 1;
        true
    }

    /// The entry of `key`; if it is not held yet, inserted in `state` (if there is room).
    fn entry_or_insert(&mut self, key: &Key, state: State) -> Option<&mut Entry> {
        if !self.entries.contains_key(key) {
            if !self.take_room(key.0) {
                return None;
            }
            self.entries
                .insert(key.clone(), Entry::new(state, self.now));
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            let w = &mut self.watches[key.0];
            w.count -= 1;
            if let State::InFlight { lane, .. } = e.state {
                // Not reached: attempts end through `finished`. Kept consistent anyway.
                self.in_flight -= 1;
                w.in_flight -= 1;
                if lane.is_some() {
                    self.dests[w.p.dest].in_flight -= 1;
                }
            }
        }
    }

    fn arm(&mut self, key: &Key, at: Instant) {
        let gen = self.next_gen;
        self.next_gen += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.gen = gen;
            self.timers.push(Reverse((at, gen, key.clone())));
        }
        // Re-armed and forgotten names leave stale timers behind (recognised by their
        // generation when they fire); drop them once they outnumber the live ones.
        if self.timers.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.timers
                .retain(|Reverse((_, g, k))| entries.get(k).is_some_and(|e| e.gen == *g));
        }
    }

    fn wait(&mut self, key: &Key, why: Wait, until: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.state = State::Waiting { why, until };
            self.arm(key, until);
        }
    }

    /// Puts `key` into its watch's ready queue (at the front: a file that goes back to a
    /// lane it was taken from), unless it is there already or in flight.
    fn make_ready(&mut self, key: &Key, front: bool) {
        if let Some(State::Ready { .. } | State::InFlight { .. }) =
            self.entries.get(key).map(|e| &e.state)
        {
            return;
        }
        self.requeue(key, front);
    }

    /// Puts held `key` into its watch's ready queue, or the finish-only queue if only its
    /// move or delete is left; a place it had in either before is void.
    fn requeue(&mut self, key: &Key, front: bool) {
        let Some(finish) = self.entries.get(key).map(|e| e.pending.is_some()) else {
            return;
        };
        let state = self.enqueue(key, finish, front);
        if let Some(e) = self.entries.get_mut(key) {
            e.state = state;
            e.gen = 0; // no live timer
        }
    }

    /// Queues `key` under a new sequence number (places under older ones are skipped when
    /// popped); the state that goes with it.
    fn enqueue(&mut self, key: &Key, finish: bool, front: bool) -> State {
        let seq = self.next_seq;
        self.next_seq += 1;
        let w = &mut self.watches[key.0];
        let q = if finish { &mut w.finish } else { &mut w.ready };
        if front {
            q.push_front((key.1.clone(), seq));
        } else {
            q.push_back((key.1.clone(), seq));
        }
        State::Ready { seq }
    }

    /// A not-regular entry: reported once per identity, and forgotten as a candidate.
    fn ignore(&mut self, key: Key, id: Identity) {
        self.remove(&key);
        if self.reported.get(&key) != Some(&id) {
            self.report(Report::Ignoring {
                key: key.clone(),
                id,
            });
            if let Some(w) = self.watches.get_mut(key.0).filter(|w| w.scanning) {
                w.reported_while_listing.push(key.1.clone());
            }
            self.reported.insert(key, id);
        }
    }

    /// Created or written to in place: neither a rename nor an earlier close vouches for it.
    /// Looked at after the settle time: by then the kernel can tell whether a writer has it
    /// open (a hard link, say, has none and needs no close).
    fn writing(&mut self, key: Key) {
        let now = self.now;
        let probe = self.settle(key.0);
        let Some(e) = self.entry_or_insert(&key, State::Writing { last: now }) else {
            return;
        };
        e.moved_in = false;
        e.closed = false;
        match &mut e.state {
            State::Writing { last } if e.gen != 0 => *last = now,
            _ => {
                e.state = State::Writing { last: now };
                self.arm(&key, now + probe);
            }
        }
    }

    fn fire(&mut self, key: Key, gen: u64) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        if e.gen != gen {
            return;
        }
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
            State::Ready { .. } | State::InFlight { .. } => {}
        }
    }

    fn request_scan(&mut self, watch: usize) {
        let limit = self.p.active_limit.max(1);
        let w = &mut self.watches[watch];
        w.next_rescan = self.now + w.p.rescan_interval.max(MIN_RESCAN);
        if w.scanning {
            w.rescan_again = true;
            return;
        }
        w.scanning = true;
        // The active set and a reserve beyond it: a refill then takes names from the reserve,
        // and a large backlog is listed a few times, not once per active set.
        let limit = limit.saturating_mul(1 + RESERVE_FACTOR);
        self.actions.push_back(Action::List { watch, limit });
    }

    /// A watch whose active set ran low while more files wait on disk takes the next names
    /// of its reserve (each looked at, then settling), or is listed again once that is empty.
    fn refill(&mut self) {
        let limit = self.p.active_limit.max(1);
        for w in 0..self.watches.len() {
            let st = &self.watches[w];
            if !st.more_on_disk || st.scanning || st.count > limit / 4 {
                continue;
            }
            if st.reserve.is_empty() {
                self.request_scan(w);
                continue;
            }
            let mut room = limit.saturating_sub(self.watches[w].count + self.looks.len());
            while room > 0 {
                let Some(name) = self.watches[w].reserve.pop_front() else {
                    break;
                };
                let key = (w, name);
                if self.entries.contains_key(&key) || self.looks.contains_key(&key) {
                    continue;
                }
                room -= 1;
                let st = &mut self.watches[w];
                st.on_disk = st.on_disk.saturating_sub(1);
                self.look(key, Cont::Settle { closed: false });
            }
            let st = &mut self.watches[w];
            st.more_on_disk = st.truncated || !st.reserve.is_empty();
        }
    }

    fn apply_listing(&mut self, watch: usize, listing: Listing) {
        // The directory at the watched path is not the one listed before (removed and
        // created again, mounted over): the inotify watch is on the old one.
        let before = self.watches[watch].dir_id;
        if before != Some(listing.dir_id) {
            if before.is_some() {
                self.actions.push_back(Action::Rewatch { watch });
            }
            self.watches[watch].dir_id = Some(listing.dir_id);
        }
        let now = self.now;
        let at = now + self.settle(watch);
        let mut present: HashSet<&OsString> = HashSet::new();
        for l in &listing.specials {
            present.insert(&l.name);
            let key = (watch, l.name.clone());
            // A name being sent cannot have become a FIFO; if it did, the claim notices.
            if !self.entries.contains_key(&key) {
                self.ignore(key, l.id);
            }
        }
        let limit = self.p.active_limit.max(1);
        let mut held = 0usize;
        let mut dropped = false;
        let mut reserve = VecDeque::new();
        for l in &listing.files {
            present.insert(&l.name);
            let key = (watch, l.name.clone());
            self.reported.remove(&key);
            if self.entries.contains_key(&key) || self.looks.contains_key(&key) {
                held += 1;
                continue;
            }
            if self.watches[watch].count >= limit {
                if reserve.len() < limit.saturating_mul(RESERVE_FACTOR) {
                    reserve.push_back(l.name.clone());
                } else {
                    dropped = true;
                }
                continue;
            }
            self.watches[watch].count += 1;
            self.entries.insert(
                key.clone(),
                Entry::new(
                    State::Settling {
                        since: now,
                        snap: fingerprint(&l.id),
                    },
                    now,
                ),
            );
            held += 1;
            self.arm(&key, at);
        }
        // Entries no longer there are forgotten as reported (unless reported after the
        // listing may have been read).
        let meanwhile = std::mem::take(&mut self.watches[watch].reported_while_listing);
        present.extend(meanwhile.iter());
        self.reported
            .retain(|k, _| k.0 != watch || present.contains(&k.1));
        let w = &mut self.watches[watch];
        w.truncated = dropped || listing.total_files > listing.files.len();
        w.reserve = reserve;
        w.more_on_disk = w.truncated || !w.reserve.is_empty();
        w.on_disk = listing.total_files.saturating_sub(held);
        if !w.more_on_disk {
            w.full_reported = false;
        }
        let files = listing.total_files;
        if std::mem::replace(&mut w.listed_once, true) {
            self.report(Report::Listed { watch, files });
        } else {
            self.report(Report::Backlog { watch, files });
        }
    }

    // ---- lanes --------------------------------------------------------------------

    /// Pops stale names off the front of a queue; whether a ready one is there.
    fn clean_front(&mut self, w: usize, finish: bool) -> bool {
        loop {
            let st = &mut self.watches[w];
            let q = if finish {
                &mut st.finish
            } else {
                &mut st.ready
            };
            let Some((name, seq)) = q.front() else {
                return false;
            };
            let key = (w, name.clone());
            match self.entries.get(&key) {
                Some(Entry {
                    state: State::Ready { seq: s },
                    ..
                }) if s == seq => return true,
                _ => {
                    q.pop_front();
                }
            }
        }
    }

    fn dest_has_ready(&mut self, d: usize) -> bool {
        for i in 0..self.dests[d].watches.len() {
            let w = self.dests[d].watches[i];
            if self.clean_front(w, false) {
                return true;
            }
        }
        false
    }

    fn eligible(&self, d: usize) -> bool {
        let dest = &self.dests[d];
        dest.health
            .admits(dest.in_flight, dest.limiter.limit(), self.now)
    }

    /// Gives out free slots: finish-only attempts first (they need no destination), then
    /// destinations in turn, each its watches in turn.
    fn dispatch(&mut self) {
        if self.stopping {
            return;
        }
        let cap = self.p.global_cap.max(1);
        for w in 0..self.watches.len() {
            while self.in_flight < cap && self.clean_front(w, true) {
                let Some((name, seq)) = self.watches[w].finish.pop_front() else {
                    break;
                };
                let key = (w, name);
                if self.entries.get(&key).is_some_and(|e| e.pending.is_none()) {
                    // Nothing left to finish: an upload, which takes its lane's slot.
                    self.watches[w].ready.push_back((key.1, seq));
                    continue;
                }
                self.start(key, false);
            }
        }
        let n = self.dests.len();
        'slots: while self.in_flight < cap {
            for i in 0..n {
                let d = (self.next_dest + i) % n;
                if !self.eligible(d) {
                    continue;
                }
                let m = self.dests[d].watches.len();
                for j in 0..m {
                    let pos = (self.dests[d].next_watch + j) % m;
                    let w = self.dests[d].watches[pos];
                    if !self.clean_front(w, false) {
                        continue;
                    }
                    let Some((name, _)) = self.watches[w].ready.pop_front() else {
                        continue;
                    };
                    self.dests[d].next_watch = (pos + 1) % m;
                    self.next_dest = (d + 1) % n;
                    self.start((w, name), true);
                    continue 'slots;
                }
            }
            break;
        }
    }

    fn start(&mut self, key: Key, lane: bool) {
        let w = key.0;
        let d = self.watches[w].p.dest;
        let quiet = self.writer_quiet(w);
        let probe = lane && !self.dests[d].health.is_up();
        // Limited by its lane: at its limit, or leaving ready files behind (a success then
        // says the limit, not the supply of files, held it back).
        let ticket = lane.then(|| {
            let lane_full = self.dests[d].in_flight + 1 >= self.dests[d].limiter.limit()
                || !self.watches[w].ready.is_empty();
            self.dests[d].limiter.on_start(lane_full)
        });
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
        let start = Start {
            key: key.clone(),
            attempt,
            last: max != 0 && attempt >= max,
            mode,
            trusted: e.moved_in || e.closed,
            quiet,
            found: e.since,
        };
        e.state = State::InFlight {
            lane: ticket,
            probe,
            closed: false,
            modified: false,
            moved: false,
        };
        self.in_flight += 1;
        self.watches[w].in_flight += 1;
        if lane {
            self.dests[d].in_flight += 1;
        }
        self.actions.push_back(Action::Start(start));
    }

    fn dest_up(&mut self, d: usize) {
        if let Transition::Up { down_for } = self.dests[d].health.on_greeting(self.now) {
            let waiting = self.waiting_for(d);
            self.report(Report::DestinationUp {
                dest: d,
                down_for,
                waiting,
            });
        }
    }

    fn dest_failed(&mut self, d: usize, key: &Key, error: DestError, probe: bool) {
        let t = self.dests[d]
            .health
            .on_dest_failure(&error, probe, self.now, &mut self.rng);
        match t {
            Transition::Down { probe_in } => {
                // Everything queued for it waits, not only what was in flight.
                let waiting = self.waiting_for(d);
                self.report(Report::DestinationDown {
                    dest: d,
                    error,
                    waiting,
                    probe_in,
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
    fn report_limit(&mut self, d: usize, changed: bool) {
        if !changed {
            return;
        }
        let l = &self.dests[d].limiter;
        let r = Report::Limit {
            dest: d,
            limit: l.limit(),
            baseline: l.baseline(),
            smoothed: l.smoothed(),
        };
        self.report(r);
    }
}

/// What the core knows for `accio status`, apart from names of directories and files.
#[derive(Debug, Clone, Default)]
pub struct CoreView {
    pub destinations: Vec<crate::status::DestinationView>,
    /// Per watch: `dir` and `destination` are left for the driver to fill in.
    pub watches: Vec<crate::status::WatchView>,
    /// The oldest waiting files: key, seconds since the core knew of it, why it waits.
    pub waiting: Vec<(Key, f64, crate::status::Why)>,
}

impl Core {
    /// The state of lanes, watches and the oldest waiting files (at most `max_waiting`).
    /// `wall_now`: the time of day now, in seconds since the epoch (for "down since").
    pub fn view(&self, now: Instant, wall_now: f64, max_waiting: usize) -> CoreView {
        use crate::status::{DestinationView, WatchView, Why};
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let destinations = self
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (down_since_unix, last_error, next_probe_in_s) = match d.health.outage() {
                    None => (None, None, None),
                    Some(o) => (
                        Some(wall_now - now.saturating_duration_since(o.since).as_secs_f64()),
                        Some(o.error.to_string()),
                        Some(o.next_probe.saturating_duration_since(now).as_secs_f64()),
                    ),
                };
                DestinationView {
                    name: d.p.name.clone(),
                    up: d.health.is_up(),
                    down_since_unix,
                    last_error,
                    in_flight: d.in_flight as u64,
                    queued: self.waiting_for(i) as u64,
                    limit: d.limiter.limit() as u64,
                    cap: d.limiter.cap() as u64,
                    adaptive: d.limiter.adaptive(),
                    baseline_greeting_ms: d.limiter.baseline().map(ms),
                    greeting_ms: d.limiter.smoothed().map(ms),
                    next_probe_in_s,
                }
            })
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
        waiting.sort_by(|a, b| a.1.since.cmp(&b.1.since).then(a.0.cmp(b.0)));
        waiting.truncate(max_waiting);
        let waiting = waiting
            .into_iter()
            .map(|(k, e)| {
                let dest_up = self.dests[self.watches[k.0].p.dest].health.is_up();
                let why = match &e.state {
                    State::Writing { .. } => Why::WriterOpen,
                    State::Settling { .. } => Why::Settling,
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
                };
                (
                    k.clone(),
                    now.saturating_duration_since(e.since).as_secs_f64(),
                    why,
                )
            })
            .collect();
        let watches = self
            .watches
            .iter()
            .enumerate()
            .map(|(i, w)| WatchView {
                dir: String::new(),
                destination: self.dests[w.p.dest].p.name.clone(),
                queued: w.queued() as u64,
                in_flight: w.in_flight as u64,
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
}
