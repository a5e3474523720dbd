//! The queue: one task that owns what is known about every name in the spools, turns hints
//! and listings into "ready" decisions, and starts uploads with bounded concurrency.
//!
//! Every name moves through a small state machine:
//!
//! ```text
//!   created/modified ──> Writing ──(closed, or no writer left)──> Settling
//!   found by a scan  ────────────────────────────────────────────> Settling
//!   Settling ──(unchanged for `settle`)──> Ready
//!   moved in ──────────────────────────────────────────────────────────────────────> Ready
//!   Ready ──(a slot is free)──> InFlight ──> delivered / given up: look at the name again
//!                                        ──> failed: Waiting (backoff) ──> Ready
//!                                        ──> server unreachable: Waiting (not counted)
//!                                        ──> still open for writing: Writing
//!                                        ──> changed recently, writers unknown: Waiting
//!                                        ──> changed while sent: Settling
//!   Ready or Writing, moved in ──(closed)──> Ready (a writer that renames before it closes)
//! ```
//!
//! "No writer left" is asked of the kernel with a lease ([`claim::writers`]) before every
//! send. Where it cannot tell (no `CAP_LEASE`, another user's file), a writer silent for
//! [`WRITER_QUIET_MIN`] is taken as done, and a file that was neither moved in nor closed
//! since its last change (found by a listing, or recreated while its name was in flight)
//! goes only once its mtime and ctime are that old.
//!
//! Not-regular entries (symlinks, FIFOs, sockets, devices, directories) are kept apart, with
//! their identity, only so each is reported once (per process: see [`super::Reported`]).
//!
//! Each state that waits has a deadline in one timer heap (lazy: a stale timer is recognised
//! by its generation and skipped), so an idle service sleeps until the next deadline and
//! never polls. Hints are not trusted for the file's kind or state: the entry is `lstat`ed
//! whenever a decision is made.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim::{self, Identity, Kind, Writers};
use super::esc;
use super::uploader::{self, After, Job, Mode, Outcome};
use super::watcher::{self, Hint, Listing, Msg, Watcher};
use super::{Shared, WatchCtx};

/// A name in one of the watched directories: (watch number, file name).
type Key = (usize, OsString);

/// Where the kernel cannot tell whether a file has writers (no lease: see
/// [`claim::writers`]), a file seen being written (created or modified, never closed) is
/// considered abandoned by its writer only after this much silence, or the rescan interval
/// if longer. The hidden environment variable `ACCIO_WRITER_QUIET_MS` overrides it (tests).
const WRITER_QUIET_MIN: Duration = Duration::from_secs(30);

/// How often a file that is still open for writing is looked at again (besides its close
/// event), at least; the settle time if longer.
const WRITER_RECHECK: Duration = Duration::from_secs(1);

/// Spread of the retries of files waiting for a destination that turned out reachable
/// again, so that they do not all connect in the same instant.
const RECOVERY_JITTER_MS: u64 = 250;

/// A failed move/delete is reported at ERROR the first time, when its error changes, and
/// every this many failures; at DEBUG otherwise.
const DISPOSITION_REPORT_EVERY: u32 = 20;

/// While a destination stays unreachable, its failures are reported at WARN at most this
/// often (and when the error changes); at DEBUG otherwise.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A destination that could not be reached: what was last reported, and when.
#[derive(Debug)]
struct Outage {
    warned_at: Instant,
    error: String,
}

/// How long to wait before looking again at a file another instance is sending.
const BUSY_RECHECK: Duration = Duration::from_millis(500);

/// Floor of the rescan interval, so that a zero from a library caller cannot make a busy loop.
const MIN_RESCAN: Duration = Duration::from_millis(50);

/// Hints handled per wake-up before the other sources get a turn.
const HINT_BATCH: usize = 1024;

#[derive(Debug)]
enum State {
    /// Seen being written and not closed since `last` activity.
    Writing { last: Instant },
    /// Must stay `snap` until `since + settle`.
    Settling { since: Instant, snap: Identity },
    /// In the ready queue.
    Ready,
    /// An upload task has it; whatever happens to the name meanwhile, it is looked at again
    /// afterwards.
    InFlight,
    /// Backing off after a failure, or waiting for another instance's claim.
    Waiting,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// Failed upload attempts so far (those that count against `max_attempts`).
    failures: u32,
    /// Consecutive attempts that could not reach the destination (not counted as failures;
    /// only the backoff grows).
    unreachable: u32,
    /// Consecutive failed moves/deletes of a delivered (or given up) file, and the last
    /// error, to back off and to report them without flooding the log.
    disp_failures: u32,
    disp_error: Option<String>,
    /// Delivered or given up, but not yet moved: the next attempt only finishes that.
    pending: Option<(Identity, After)>,
    /// Generation of the entry's live timer; older timers are stale.
    gen: u64,
    /// Seen moved in (and not written in place since): complete by the writers' convention.
    moved_in: bool,
    /// A close after writing was seen since the last change.
    closed: bool,
    /// A close was seen while an upload had it (such events are otherwise dropped).
    closed_in_flight: bool,
    /// A write (or re-create) was seen while an upload had it: after an attempt that did
    /// not deliver, `moved_in` and `closed` no longer vouch for the content.
    modified_in_flight: bool,
}

impl Entry {
    fn new(state: State) -> Entry {
        Entry {
            state,
            failures: 0,
            unreachable: 0,
            disp_failures: 0,
            disp_error: None,
            pending: None,
            gen: 0,
            moved_in: false,
            closed: false,
            closed_in_flight: false,
            modified_in_flight: false,
        }
    }
}

/// How soon a directory that could not be listed is tried again (unless the rescan interval
/// is shorter): it may be back soon (replaced, remounted).
const RELIST_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Delay before retrying a failed move/delete for the `n`th time: doubling from
/// `retry.initial` (at least [`BUSY_RECHECK`]) up to `retry.max`, in its upper half at random.
fn disposition_backoff(retry: &crate::config::RetryPolicy, n: u32) -> Duration {
    let base = retry.initial.max(BUSY_RECHECK);
    let cap = base
        .checked_mul(1u32 << n.saturating_sub(1).min(20))
        .unwrap_or(retry.max)
        .min(retry.max.max(BUSY_RECHECK));
    let half = cap / 2;
    let nanos = half.as_nanos().min(u128::from(u64::MAX)) as u64;
    half + Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Everything the queue task owns.
pub struct Queue {
    /// The kernel watch; kept here to watch a directory again when it was replaced.
    watcher: Watcher,
    /// (device, inode) of each directory when it was last listed: a change means the
    /// inotify watch is on the old one.
    dir_ids: Vec<Option<(u64, u64)>>,
    watches: Vec<Arc<WatchCtx>>,
    shared: Arc<Shared>,
    /// Uploads in flight at most, all watches together.
    concurrency: usize,
    /// How long in-flight uploads may finish after shutdown.
    grace: Duration,
    entries: HashMap<Key, Entry>,
    /// Entries that are not regular files, with the identity already reported; shared
    /// with the pipelines before and after a reload.
    reported: super::Reported,
    /// Files waiting (backing off) because their destination could not be reached: woken
    /// when an upload to that destination succeeds. Lazy: checked when used.
    unreachable: HashSet<Key>,
    /// Destinations (as written in the config) that could not be reached at the last try.
    outages: HashMap<String, Outage>,
    /// See [`WRITER_QUIET_MIN`].
    writer_quiet_min: Duration,
    timers: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    next_gen: u64,
    /// Ready keys in the order they became ready (lazy: checked when popped).
    ready: VecDeque<Key>,
    inflight: JoinSet<Outcome>,
    inflight_keys: HashMap<tokio::task::Id, Key>,
    /// Directory listings in progress, per watch; a request meanwhile sets `rescan_again`.
    scans: JoinSet<(usize, io::Result<Listing>)>,
    scanning: Vec<bool>,
    rescan_again: Vec<bool>,
    next_rescan: Vec<Instant>,
    /// The last listing of this directory failed: report further failures quietly.
    list_failing: Vec<bool>,
    /// What this queue last added to `stats.queued` (several pipelines may share the stats
    /// while a reload overlaps them).
    published_queued: u64,
}

impl Queue {
    pub fn new(
        watcher: Watcher,
        watches: Vec<Arc<WatchCtx>>,
        shared: Arc<Shared>,
        concurrency: usize,
        grace: Duration,
        reported: super::Reported,
    ) -> Queue {
        let now = Instant::now();
        let n = watches.len();
        let next_rescan = watches
            .iter()
            .map(|w| now + w.cfg.rescan_interval.max(MIN_RESCAN))
            .collect();
        Queue {
            watcher,
            dir_ids: vec![None; n],
            watches,
            shared,
            concurrency: concurrency.max(1),
            grace,
            entries: HashMap::new(),
            reported,
            unreachable: HashSet::new(),
            outages: HashMap::new(),
            writer_quiet_min: std::env::var("ACCIO_WRITER_QUIET_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(WRITER_QUIET_MIN, Duration::from_millis),
            timers: BinaryHeap::new(),
            next_gen: 1,
            ready: VecDeque::new(),
            inflight: JoinSet::new(),
            inflight_keys: HashMap::new(),
            scans: JoinSet::new(),
            scanning: vec![false; n],
            rescan_again: vec![false; n],
            next_rescan,
            list_failing: vec![false; n],
            published_queued: 0,
        }
    }

    fn settle(&self, watch: usize) -> Duration {
        self.watches[watch].cfg.settle
    }

    fn writer_quiet(&self, watch: usize) -> Duration {
        self.watches[watch]
            .cfg
            .rescan_interval
            .max(self.writer_quiet_min)
    }

    fn writer_recheck(&self, watch: usize) -> Duration {
        self.settle(watch).max(WRITER_RECHECK)
    }

    fn is_reported(&self, key: &Key) -> bool {
        let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.contains_key(&self.path(key))
    }

    fn unreport(&self, key: &Key) {
        let path = self.path(key);
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.remove(&path);
    }

    fn path(&self, key: &Key) -> std::path::PathBuf {
        self.watches[key.0].cfg.dir.join(&key.1)
    }

    fn arm(&mut self, key: &Key, at: Instant) {
        let gen = self.next_gen;
        self.next_gen += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.gen = gen;
            self.timers.push(Reverse((at, gen, key.clone())));
        }
    }

    fn make_ready(&mut self, key: &Key) {
        if let Some(e) = self.entries.get_mut(key) {
            if !matches!(e.state, State::Ready | State::InFlight) {
                e.state = State::Ready;
                self.ready.push_back(key.clone());
            }
        }
    }

    /// Reports a not-regular entry once per identity and forgets it as a candidate.
    fn ignore(&mut self, key: Key, id: Identity) {
        self.entries.remove(&key);
        let path = self.path(&key);
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.get(&path) != Some(&id) {
            tracing::warn!(
                path = %esc(&path),
                kind = %id.kind,
                "ignoring {}: it is a {}, not a regular file; it is left alone and never sent",
                esc(&path),
                id.kind
            );
            reported.insert(path, id);
        }
    }

    /// Starts settling a name as if a scan had just found it: `lstat`, and settle from now.
    /// Used where we know nothing reliable about the name's writer.
    fn settle_from_now(&mut self, key: Key) {
        let path = self.path(&key);
        match claim::lstat(&path) {
            Ok(id) if id.kind != Kind::Regular => self.ignore(key, id),
            Ok(id) => {
                self.unreport(&key);
                let now = Instant::now();
                let at = now + self.settle(key.0);
                let e = self
                    .entries
                    .entry(key.clone())
                    .or_insert_with(|| Entry::new(State::Waiting));
                e.state = State::Settling {
                    since: now,
                    snap: id,
                };
                // Nothing reliable is known about its writer any more.
                e.moved_in = false;
                e.closed = false;
                self.arm(&key, at);
            }
            Err(_) => {
                self.entries.remove(&key);
            }
        }
    }

    /// Applies one hint from the watcher.
    fn hint(&mut self, watch: usize, name: OsString, hint: Hint) {
        if !self.watches[watch].filter.accepts(&name) {
            return;
        }
        let key = (watch, name);
        if let Some(e) = self.entries.get_mut(&key) {
            if matches!(e.state, State::InFlight) {
                // The upload task owns it; the name is looked at again after it. A close
                // is remembered: a writer the upload finds may be the one that just left.
                match hint {
                    Hint::Closed => e.closed_in_flight = true,
                    Hint::Created | Hint::Modified => e.modified_in_flight = true,
                    _ => {}
                }
                return;
            }
        }
        let now = Instant::now();
        match hint {
            Hint::Gone => {
                self.entries.remove(&key);
                self.unreport(&key);
            }
            Hint::Created | Hint::Modified => {
                if hint == Hint::Created || self.is_reported(&key) {
                    // Links, FIFOs, sockets and directories announce themselves only by a
                    // create: find out now what it is.
                    match claim::lstat(&self.path(&key)) {
                        Ok(id) if id.kind != Kind::Regular => return self.ignore(key, id),
                        Ok(_) => {
                            self.unreport(&key);
                        }
                        Err(_) => {
                            self.entries.remove(&key);
                            return;
                        }
                    }
                }
                // Looked at after the settle time: by then the kernel can tell whether a
                // writer has it open (a hard link, say, has none and needs no close).
                let probe = self.settle(watch);
                if let Some(e) = self.entries.get_mut(&key) {
                    // Written in place: neither a rename nor an earlier close vouches for it.
                    e.moved_in = false;
                    e.closed = false;
                }
                match self.entries.get_mut(&key) {
                    Some(Entry {
                        state: State::Writing { last },
                        ..
                    }) => *last = now,
                    Some(e) => {
                        e.state = State::Writing { last: now };
                        self.arm(&key, now + probe);
                    }
                    None => {
                        self.entries
                            .insert(key.clone(), Entry::new(State::Writing { last: now }));
                        self.arm(&key, now + probe);
                    }
                }
            }
            Hint::Closed | Hint::Attrib => {
                let id = match claim::lstat(&self.path(&key)) {
                    Ok(id) if id.kind != Kind::Regular => return self.ignore(key, id),
                    Ok(id) => id,
                    Err(_) => {
                        self.entries.remove(&key);
                        return;
                    }
                };
                self.unreport(&key);
                let settle = self.settle(watch);
                if hint == Hint::Closed {
                    if let Some(e) = self.entries.get_mut(&key) {
                        e.closed = true;
                        // Moved in, then closed (a writer that renames before it closes):
                        // complete now. The writer check before the send still applies.
                        if e.moved_in && matches!(e.state, State::Ready | State::Writing { .. }) {
                            return self.make_ready(&key);
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
                        *snap = id;
                    }
                    // Still being written, ready or backing off: a chmod or touch changes
                    // nothing for us.
                    Some(_) if hint == Hint::Attrib => {}
                    _ => {
                        let e = self
                            .entries
                            .entry(key.clone())
                            .or_insert_with(|| Entry::new(State::Waiting));
                        e.state = State::Settling {
                            since: now,
                            snap: id,
                        };
                        e.closed = hint == Hint::Closed;
                        self.arm(&key, now + settle);
                    }
                }
            }
            Hint::MovedIn => match claim::lstat(&self.path(&key)) {
                Ok(id) if id.kind != Kind::Regular => self.ignore(key, id),
                Ok(_) => {
                    self.unreport(&key);
                    // A file renamed in is complete by the writers' convention: a new file,
                    // whatever this name held before.
                    let e = self
                        .entries
                        .entry(key.clone())
                        .or_insert_with(|| Entry::new(State::Waiting));
                    e.failures = 0;
                    e.unreachable = 0;
                    e.pending = None;
                    e.disp_failures = 0;
                    e.disp_error = None;
                    e.moved_in = true;
                    e.closed = false;
                    if matches!(e.state, State::Settling { .. } | State::Writing { .. }) {
                        e.state = State::Waiting;
                    }
                    self.make_ready(&key);
                }
                Err(_) => {
                    self.entries.remove(&key);
                }
            },
        }
    }

    /// Applies a directory listing (oldest first): unknown regular files start settling in
    /// that order, so equal deadlines keep it; not-regular entries are reported once.
    fn listed(&mut self, watch: usize, listing: Listing) {
        self.check_dir_identity(watch, listing.dir_id);
        let now = Instant::now();
        let at = now + self.settle(watch);
        let mut present = HashSet::with_capacity(listing.entries.len());
        for l in listing.entries {
            let key = (watch, l.name);
            present.insert(key.1.clone());
            if l.id.kind != Kind::Regular {
                // A name we are sending cannot have become a FIFO; if it did, the claim
                // notices.
                if !self.entries.contains_key(&key) {
                    self.ignore(key, l.id);
                }
                continue;
            }
            self.unreport(&key);
            if self.entries.contains_key(&key) {
                continue;
            }
            self.entries.insert(
                key.clone(),
                Entry::new(State::Settling {
                    since: now,
                    snap: l.id,
                }),
            );
            self.arm(&key, at);
        }
        let dir = &self.watches[watch].cfg.dir;
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.retain(|p, _| {
            p.parent() != Some(dir.as_path()) || p.file_name().is_some_and(|n| present.contains(n))
        });
    }

    /// If the directory at the watched path is not the one listed before (removed and
    /// created again, mounted over), the inotify watch is on the old one: watch again.
    fn check_dir_identity(&mut self, watch: usize, id: (u64, u64)) {
        let before = self.dir_ids[watch];
        if before == Some(id) {
            return;
        }
        let dir = self.watches[watch].cfg.dir.clone();
        if before.is_some() {
            match self.watcher.rewatch(&dir) {
                Ok(()) => tracing::warn!(
                    dir = %esc(&dir),
                    "{} was replaced (or mounted over); watching the new one",
                    esc(&dir)
                ),
                Err(e) => {
                    tracing::error!("{e}; relying on rescans and trying again at the next one");
                    // Unknown: compare again next time.
                    self.dir_ids[watch] = Some((u64::MAX, u64::MAX));
                    return;
                }
            }
        }
        self.dir_ids[watch] = Some(id);
    }

    fn fire(&mut self, key: Key, gen: u64, now: Instant) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        if e.gen != gen {
            return;
        }
        match e.state {
            State::Writing { last } => {
                let path = self.path(&key);
                match claim::probe_writers(&path) {
                    // Nobody has it open for writing (any more): settle it like a closed
                    // file. Also how a hard link into the spool is taken.
                    Writers::None => self.settle_from_now(key),
                    Writers::Some => {
                        tracing::debug!(
                            path = %esc(&path),
                            "{} is open for writing; it is sent once it is closed",
                            esc(&path)
                        );
                        let again = self.writer_recheck(key.0);
                        self.arm(&key, now + again);
                    }
                    Writers::Unknown => {
                        let quiet = self.writer_quiet(key.0);
                        if now < last + quiet {
                            self.arm(&key, last + quiet);
                        } else {
                            tracing::info!(
                                path = %esc(&path),
                                "{} was being written but nothing happened to it for {quiet:?}; treating it as complete once it settles",
                                esc(&path)
                            );
                            self.settle_from_now(key);
                        }
                    }
                }
            }
            State::Settling { since, snap } => {
                let settle = self.settle(key.0);
                if now < since + settle {
                    self.arm(&key, since + settle);
                    return;
                }
                match claim::lstat(&self.path(&key)) {
                    Ok(id) if id.kind != Kind::Regular => self.ignore(key, id),
                    Ok(id) if id == snap => self.make_ready(&key),
                    Ok(id) => {
                        if let Some(e) = self.entries.get_mut(&key) {
                            e.state = State::Settling {
                                since: now,
                                snap: id,
                            };
                        }
                        self.arm(&key, now + settle);
                    }
                    Err(_) => {
                        self.entries.remove(&key);
                    }
                }
            }
            State::Waiting => self.make_ready(&key),
            State::Ready | State::InFlight => {}
        }
    }

    fn fire_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, gen, key))) = self.timers.pop() else {
                break;
            };
            self.fire(key, gen, now);
        }
    }

    fn request_scan(&mut self, watch: usize) {
        self.next_rescan[watch] =
            Instant::now() + self.watches[watch].cfg.rescan_interval.max(MIN_RESCAN);
        if self.scanning[watch] {
            self.rescan_again[watch] = true;
            return;
        }
        self.scanning[watch] = true;
        let w = self.watches[watch].clone();
        self.scans.spawn_blocking(move || {
            let r = watcher::list(&w.cfg.dir, &|n| w.filter.accepts(n));
            (watch, r)
        });
    }

    fn scan_all(&mut self, why: &str) {
        tracing::info!("rescanning the spool directories: {why}");
        for w in 0..self.watches.len() {
            self.request_scan(w);
        }
    }

    fn scanned(&mut self, watch: usize, result: io::Result<Listing>) {
        self.scanning[watch] = false;
        let dir = self.watches[watch].cfg.dir.clone();
        match result {
            Ok(listing) => {
                if std::mem::take(&mut self.list_failing[watch]) {
                    tracing::info!(dir = %esc(&dir), "{} can be listed again", esc(&dir));
                }
                tracing::debug!(
                    dir = %esc(&dir),
                    "listed {}: {} entries",
                    esc(&dir),
                    listing.entries.len()
                );
                self.listed(watch, listing)
            }
            Err(e) => {
                let again = self.watches[watch]
                    .cfg
                    .rescan_interval
                    .min(RELIST_AFTER_ERROR)
                    .max(MIN_RESCAN);
                if std::mem::replace(&mut self.list_failing[watch], true) {
                    tracing::debug!(dir = %esc(&dir), "still cannot list {}: {e}", esc(&dir));
                } else {
                    tracing::error!(
                        dir = %esc(&dir),
                        "cannot list {}: {e}; trying again every {again:?}",
                        esc(&dir)
                    );
                }
                self.next_rescan[watch] = Instant::now() + again;
            }
        }
        if std::mem::take(&mut self.rescan_again[watch]) {
            self.request_scan(watch);
        }
    }

    fn dispatch(&mut self, stopping: bool) {
        while !stopping && self.inflight.len() < self.concurrency {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if !matches!(e.state, State::Ready) {
                continue;
            }
            e.state = State::InFlight;
            e.closed_in_flight = false;
            e.modified_in_flight = false;
            let trusted = e.moved_in || e.closed;
            self.unreachable.remove(&key);
            let mode = match e.pending.take() {
                Some((id, after)) => Mode::Finish { id, after },
                None => Mode::Upload,
            };
            let job = Job {
                watch: self.watches[key.0].clone(),
                name: key.1.clone(),
                attempt: e.failures + 1,
                mode,
                trusted,
                quiet: self.writer_quiet(key.0),
            };
            self.shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let handle = self
                .inflight
                .spawn(uploader::process(job, self.shared.clone()));
            self.inflight_keys.insert(handle.id(), key);
        }
    }

    /// Settles `key` afresh, as a file that was closed after writing (so it counts as
    /// complete once settled): for a close that arrived while an upload had it.
    fn settle_from_close(&mut self, key: Key) {
        self.settle_from_now(key.clone());
        if let Some(e) = self.entries.get_mut(&key) {
            e.closed = true;
        }
    }

    fn finished(&mut self, key: Key, outcome: Option<Outcome>) {
        self.shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let Some(outcome) = outcome else {
            // The task panicked or was aborted: nothing is known; look again.
            self.entries.remove(&key);
            return self.settle_from_now(key);
        };
        if let Some(e) = self.entries.get_mut(&key) {
            if std::mem::take(&mut e.modified_in_flight) {
                // Written to while the upload had it: whatever made it look complete
                // (moved in, closed) is older than that write.
                e.moved_in = false;
                e.closed = false;
            }
        }
        match outcome {
            Outcome::Delivered { .. } | Outcome::GaveUp => {
                let counter = if matches!(outcome, Outcome::Delivered { .. }) {
                    &self.shared.stats.sent
                } else {
                    &self.shared.stats.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.entries.remove(&key);
                if let Outcome::Delivered { uploaded: true } = outcome {
                    self.destination_reachable(key.0, now);
                }
                // Always look at the name again (one lstat): if it was replaced while being
                // sent, the new file is there and must be sent too.
                self.settle_from_now(key);
            }
            Outcome::Gone => {
                self.entries.remove(&key);
                self.settle_from_now(key);
            }
            Outcome::Special(id) => self.ignore(key, id),
            Outcome::Busy => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.state = State::Waiting;
                }
                self.arm(&key, now + BUSY_RECHECK.max(self.settle(key.0)));
            }
            Outcome::Changed => self.settle_from_now(key),
            Outcome::Writer => {
                let path = self.path(&key);
                tracing::debug!(
                    path = %esc(&path),
                    "{} is open for writing; it is sent once it is closed",
                    esc(&path)
                );
                let again = self.writer_recheck(key.0);
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.state = State::Writing { last: now };
                if std::mem::take(&mut e.closed_in_flight) {
                    // Closed while the upload looked: the writer it saw may be gone.
                    if e.moved_in {
                        return self.make_ready(&key);
                    }
                    return self.settle_from_close(key);
                }
                self.arm(&key, now + again);
            }
            Outcome::Young { wait } => {
                let path = self.path(&key);
                tracing::debug!(
                    path = %esc(&path),
                    "{} changed less than {:?} ago and whether it is still being written cannot be told; looking again in {wait:.1?} (or when it is closed)",
                    esc(&path),
                    self.writer_quiet(key.0)
                );
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.state = State::Waiting;
                if std::mem::take(&mut e.closed_in_flight) {
                    // Its writer closed it while the upload looked: settle from that close.
                    return self.settle_from_close(key);
                }
                self.arm(&key, now + wait);
            }
            Outcome::Unreachable { error } => {
                let path = self.path(&key);
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.unreachable = e.unreachable.saturating_add(1);
                e.state = State::Waiting;
                let retry_in = uploader::backoff(&self.shared.retry, e.unreachable);
                self.unreachable.insert(key.clone());
                self.arm(&key, now + retry_in);
                // One outage is one story, not one line per file per retry: the first
                // failure, a changed error, and then once a minute at most are warnings.
                let dest = self.watches[key.0].cfg.server.to_string();
                let loud = match self.outages.get(&dest) {
                    None => true,
                    Some(o) => o.error != error || now >= o.warned_at + OUTAGE_REPORT_EVERY,
                };
                if loud {
                    // Everything queued for it waits, not only what already failed.
                    let waiting = self
                        .entries
                        .keys()
                        .filter(|k| self.watches[k.0].cfg.server.to_string() == dest)
                        .count();
                    tracing::warn!(
                        path = %esc(&path),
                        "{error}; {waiting} file(s) waiting for it stay in the spool (not counted as failed attempts) and are retried with backoff (further failures are reported once a minute or when the error changes)"
                    );
                    self.outages.insert(
                        dest,
                        Outage {
                            warned_at: now,
                            error,
                        },
                    );
                } else {
                    tracing::debug!(
                        path = %esc(&path),
                        "{error}; {} stays in the spool (not counted as a failed attempt); retrying in {retry_in:.1?}",
                        esc(&path)
                    );
                }
            }
            Outcome::Failed { retry_in } => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.failures = e.failures.saturating_add(1);
                    e.state = State::Waiting;
                }
                self.arm(&key, now + retry_in);
            }
            Outcome::DispositionFailed { id, after, error } => {
                let path = self.path(&key);
                let retry = self.shared.retry;
                let Some(e) = self.entries.get_mut(&key) else {
                    return;
                };
                e.disp_failures = e.disp_failures.saturating_add(1);
                let n = e.disp_failures;
                let retry_in = disposition_backoff(&retry, n);
                let what = match &after {
                    After::Delivered => "already delivered",
                    After::GaveUp(_) => "given up on",
                };
                let loud = n == 1
                    || e.disp_error.as_deref() != Some(error.as_str())
                    || n % DISPOSITION_REPORT_EVERY == 0;
                if loud {
                    tracing::error!(
                        path = %esc(&path),
                        failures = n,
                        "{error}; it stays in the spool ({what}; not sent again); trying again in {retry_in:.1?} (failure {n}, reported again if the error changes or every {DISPOSITION_REPORT_EVERY} failures)"
                    );
                } else {
                    tracing::debug!(
                        path = %esc(&path),
                        failures = n,
                        "{error}; it stays in the spool ({what}; not sent again); trying again in {retry_in:.1?} (failure {n})"
                    );
                }
                e.disp_error = Some(error);
                e.pending = Some((id, after));
                e.state = State::Waiting;
                self.arm(&key, now + retry_in);
            }
        }
    }

    /// An upload to the destination of `watch` succeeded: files waiting because that
    /// destination could not be reached are tried again soon (with a little jitter),
    /// instead of after their backoff, which may be up to `retry.max`.
    fn destination_reachable(&mut self, watch: usize, now: Instant) {
        if self.unreachable.is_empty() && self.outages.is_empty() {
            return;
        }
        let dest = self.watches[watch].cfg.server.to_string();
        if self.outages.remove(&dest).is_some() {
            let waiting = self.waiting_for(&dest);
            tracing::info!("{dest} is reachable again; {waiting} file(s) waiting go now");
        }
        let keys: Vec<Key> = self
            .unreachable
            .iter()
            .filter(|k| self.watches[k.0].cfg.server.to_string() == dest)
            .cloned()
            .collect();
        for key in keys {
            self.unreachable.remove(&key);
            let waiting = match self.entries.get_mut(&key) {
                Some(e) if matches!(e.state, State::Waiting) && e.unreachable > 0 => {
                    e.unreachable = 0;
                    true
                }
                _ => false,
            };
            if waiting {
                let jitter = Duration::from_millis(fastrand::u64(0..=RECOVERY_JITTER_MS));
                let path = self.path(&key);
                tracing::debug!(
                    path = %esc(&path),
                    "{dest} is reachable again: retrying {} in {jitter:.1?}",
                    esc(&path)
                );
                self.arm(&key, now + jitter);
            }
        }
    }

    /// How many files wait because `dest` could not be reached.
    fn waiting_for(&self, dest: &str) -> usize {
        self.unreachable
            .iter()
            .filter(|k| {
                self.watches[k.0].cfg.server.to_string() == dest
                    && self
                        .entries
                        .get(*k)
                        .is_some_and(|e| matches!(e.state, State::Waiting) && e.unreachable > 0)
            })
            .count()
    }

    /// Publishes the number of waiting files into the shared counters.
    fn publish(&mut self) {
        let queued = (self.entries.len() - self.inflight.len().min(self.entries.len())) as u64;
        let stats = &self.shared.stats.queued;
        if queued > self.published_queued {
            stats.fetch_add(queued - self.published_queued, Ordering::Relaxed);
        } else {
            stats.fetch_sub(self.published_queued - queued, Ordering::Relaxed);
        }
        self.published_queued = queued;
    }

    /// Queues the backlog found by the first listing of `watch`.
    pub fn initial_listing(&mut self, watch: usize, listing: Listing) {
        self.listed(watch, listing);
        self.publish();
    }

    /// Runs until `shutdown`; then stops starting uploads, lets those in flight finish
    /// within the grace period, and aborts the rest (their files stay in the spool).
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        overflow: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) {
        let far = Duration::from_secs(24 * 3600);
        let mut hints_open = true;
        loop {
            self.dispatch(false);
            self.publish();
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let next_rescan = self.next_rescan.iter().min().copied();
            let wake = [next_timer, next_rescan]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    self.on_join(done);
                }
                msg = rx.recv(), if hints_open => match msg {
                    Some(msg) => {
                        self.message(msg);
                        for _ in 0..HINT_BATCH {
                            match rx.try_recv() {
                                Ok(msg) => self.message(msg),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Cannot happen while the watcher lives; rescans still find files.
                        tracing::error!("the kernel watcher stopped; relying on rescans");
                        hints_open = false;
                    }
                },
                Some(scan) = self.scans.join_next(), if !self.scans.is_empty() => {
                    if let Ok((watch, result)) = scan {
                        self.scanned(watch, result);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.fire_due(now);
                    for w in 0..self.watches.len() {
                        if self.next_rescan[w] <= now {
                            self.request_scan(w);
                        }
                    }
                }
            }
            if overflow.swap(false, Ordering::AcqRel) {
                self.scan_all("events were dropped (too many at once)");
            }
        }
        self.drain().await;
    }

    fn message(&mut self, msg: Msg) {
        match msg {
            Msg::Hint { watch, name, hint } => self.hint(watch, name, hint),
            Msg::Rescan { why } => self.scan_all(&why),
        }
    }

    fn on_join(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => {
                if e.is_panic() {
                    tracing::error!("an upload task panicked: {e}");
                }
                (e.id(), None)
            }
        };
        if let Some(key) = self.inflight_keys.remove(&id) {
            self.finished(key, outcome);
        }
    }

    async fn drain(&mut self) {
        self.scans.abort_all();
        if !self.inflight.is_empty() {
            tracing::info!(
                "stopping: waiting up to {:?} for {} upload(s) in flight",
                self.grace,
                self.inflight.len()
            );
        }
        let deadline = Instant::now() + self.grace;
        while !self.inflight.is_empty() {
            tokio::select! {
                Some(done) = self.inflight.join_next_with_id() => self.on_join(done),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        "stopping: {} upload(s) did not finish within {:?}; aborted, the files stay in the spool",
                        self.inflight.len(),
                        self.grace
                    );
                    self.inflight.abort_all();
                    while let Some(done) = self.inflight.join_next_with_id().await {
                        self.on_join(done);
                    }
                }
            }
        }
        // This pipeline no longer holds anything: take its share out of the counters.
        self.entries.clear();
        self.publish();
    }
}
