//! The core driven through a simulated spool and clock: fixtures for the bugs fixed so far
//! and the behaviours the end-to-end tests could only check as root (no leases), and a
//! property test that runs random sequences of filesystem events, attempt outcomes and
//! destination failures, checking the core's invariants after every step.
//!
//! The simulation plays the driver's part: it answers looks and writer probes from the
//! simulated spool at once, lists directories (bounded, oldest first, as
//! [`crate::watch::listing::list`] does), turns changes of the spool into hints as inotify
//! would, and plays the uploader: an attempt claims the file, checks its writers, "sends" it
//! and ends as the test decides (or as the spool and the destination's state dictate).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::health::OUTAGE_REPORT_EVERY;
use super::*;
use crate::client::Uploaded;
use crate::protocol::ProtocolError;
use crate::watch::error::tests::{connect_failed, dest as test_dest, protocol};
use crate::watch::error::{DestError, DispositionError, DispositionOp, FileError};

const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct File {
    kind: Kind,
    ino: u64,
    size: u64,
    mtime: Duration,
    ctime: Duration,
    /// Open for writing by this many writers.
    writers: u32,
}

/// An attempt the core started, as the uploader would have it.
#[derive(Debug, Clone)]
struct Attempt {
    start: Start,
    /// What the claim found (None: gone at start).
    claimed: Option<File>,
    /// [`Sim::epochs`] of the key at start.
    epoch: u64,
    /// Settled by a listing's stamps, and the claim found it changed within the settle
    /// time ([`Start::settle`]): not sent.
    young: bool,
}

/// How the simulated uploader ends an attempt that reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Deliver,
    /// Fails after the greeting.
    Fail,
    /// Delivered, but moving it out of the spool fails (done_dir full, read-only).
    DeliverMoveFails,
}

struct Sim {
    core: Core,
    base: Instant,
    /// Simulated time since `base`.
    t: Duration,
    /// Per watch: name → file.
    spool: Vec<BTreeMap<OsString, File>>,
    next_ino: u64,
    /// Whether leases tell writers (else `Writers::Unknown`).
    leases: bool,
    /// Destinations that refuse connections.
    down: HashSet<usize>,
    /// How an attempt to a down destination fails (a refusal from 127.0.0.1 by default).
    down_error: DestError,
    /// How a failing move fails (a read-only done_dir by default).
    move_error: DispositionError,
    running: Vec<Attempt>,
    /// Names sent and confirmed (watch, name, ino), in order.
    delivered: Vec<(usize, OsString, u64)>,
    given_up: Vec<(usize, OsString)>,
    reports: Vec<Report>,
    /// Keys whose writer the core was told of (probe said Some, or an attempt found one),
    /// with no close, rename or removal since.
    known_writer: HashSet<Key>,
    /// Starts to other destinations while a destination had a ready file and a free slot.
    skipped: Vec<usize>,
    starts: Vec<(Instant, Start)>,
    /// Files added without an event, not listed since: the core cannot know them yet.
    silent: HashSet<Key>,
    /// Per key, how many closes, renames, removals and creations were seen: a writer found
    /// by an attempt is known to the core only if none came during the attempt.
    epochs: HashMap<Key, u64>,
    /// Delivered files whose move failed: (watch, name, inode, size).
    stuck: HashSet<(usize, OsString, u64, u64)>,
    /// Looks and writer probes are answered at the next step (as the driver answers them,
    /// off its task), not at once.
    late: bool,
    deferred: Vec<(Action, u64)>,
    /// Listings answered: full ones (`lstat` of every entry), names-only ones.
    lists: usize,
    name_lists: usize,
    /// Regular files the full listings found (each an `lstat` in the driver).
    listed_files: usize,
    /// Looks answered (each an `lstat` in the driver).
    looks: usize,
}

fn params(watches: &[usize], dests: usize, cap: usize, dest_cap: usize, active: usize) -> Params {
    Params {
        global_cap: cap,
        active_limit: active,
        retry: RetryPolicy {
            initial: 100 * MS,
            max: 2000 * MS,
            max_attempts: 3,
            probe_max: 1000 * MS,
        },
        writer_quiet_min: 3000 * MS,
        watches: watches
            .iter()
            .map(|&d| WatchParams {
                settle: 50 * MS,
                rescan_interval: Duration::from_secs(60),
                dest: d,
                recursive: false,
            })
            .collect(),
        dests: (0..dests)
            .map(|i| DestParams {
                name: format!("dest{i}:1"),
                cap: dest_cap,
                adaptive: true,
            })
            .collect(),
    }
}

fn name(s: &str) -> OsString {
    OsString::from(s)
}

/// A destination that refused the connection at `addr`.
fn refused(addr: &str) -> DestError {
    DestError::new(test_dest(), connect_failed(&[addr], libc::ECONNREFUSED))
}

/// Moving `path` to done_dir failed with `errno`.
fn move_failed(errno: i32, path: &str) -> DispositionError {
    let kind = std::io::Error::from_raw_os_error(errno).kind();
    DispositionError::new(
        DispositionOp::MoveToDone,
        std::io::Error::new(kind, format!("cannot move {path} to /done: {kind}")),
    )
}

/// A reset after the greeting.
fn reset() -> FileError {
    FileError::upload(
        test_dest(),
        protocol(ProtocolError::SendIo {
            sent: 1,
            source: std::io::Error::from_raw_os_error(libc::ECONNRESET),
        }),
    )
}

impl Sim {
    fn new(p: Params, leases: bool) -> Sim {
        let base = Instant::now();
        let n = p.watches.len();
        let d = p.dests.len();
        let mut sim = Sim {
            core: Core::new(p, base, Tracker::default(), 7),
            base,
            t: Duration::ZERO,
            spool: vec![BTreeMap::new(); n],
            next_ino: 1,
            leases,
            down: HashSet::new(),
            down_error: refused("127.0.0.1:1"),
            move_error: move_failed(libc::EROFS, "/spool/a"),
            running: Vec::new(),
            delivered: Vec::new(),
            given_up: Vec::new(),
            reports: Vec::new(),
            known_writer: HashSet::new(),
            skipped: vec![0; d],
            starts: Vec::new(),
            silent: HashSet::new(),
            epochs: HashMap::new(),
            stuck: HashSet::new(),
            late: false,
            deferred: Vec::new(),
            lists: 0,
            name_lists: 0,
            listed_files: 0,
            looks: 0,
        };
        sim.pump();
        sim
    }

    fn now(&self) -> Instant {
        self.base + self.t
    }

    fn id(f: &File) -> Identity {
        Identity {
            kind: f.kind,
            dev: 1,
            ino: f.ino,
            size: f.size,
            mtime_ns: f.mtime.as_nanos() as i128,
            ctime_ns: f.ctime.as_nanos() as i128,
        }
    }

    fn hint(&mut self, w: usize, n: &OsString, h: Hint) {
        let key = (w, n.clone());
        self.silent.remove(&key);
        if matches!(h, Hint::Closed | Hint::MovedIn | Hint::Gone | Hint::Created) {
            *self.epochs.entry(key.clone()).or_default() += 1;
            self.known_writer.remove(&key);
        }
        let now = self.now();
        self.core.hint(now, w, n.clone(), h);
        self.pump();
    }

    // ---- the spool ------------------------------------------------------------------

    fn new_file(&mut self, writers: u32, size: u64) -> File {
        self.next_ino += 1;
        File {
            kind: Kind::Regular,
            ino: self.next_ino,
            size,
            mtime: self.t,
            ctime: self.t,
            writers,
        }
    }

    /// A writer creates `n` in place (and keeps it open).
    fn create(&mut self, w: usize, n: &str) {
        let f = self.new_file(1, 0);
        self.spool[w].insert(name(n), f);
        self.hint(w, &name(n), Hint::Created);
    }

    fn write(&mut self, w: usize, n: &str) {
        let t = self.t;
        let Some(f) = self.spool[w].get_mut(&name(n)) else {
            return;
        };
        if f.kind != Kind::Regular {
            return;
        }
        f.size += 1;
        f.mtime = t;
        f.ctime = t;
        self.hint(w, &name(n), Hint::Modified);
    }

    fn close(&mut self, w: usize, n: &str) {
        let Some(f) = self.spool[w].get_mut(&name(n)) else {
            return;
        };
        if f.writers == 0 {
            return;
        }
        f.writers -= 1;
        self.hint(w, &name(n), Hint::Closed);
    }

    /// A finished file renamed in (replacing whatever the name held).
    fn rename_in(&mut self, w: usize, n: &str) {
        let f = self.new_file(0, 10);
        self.spool[w].insert(name(n), f);
        self.hint(w, &name(n), Hint::MovedIn);
    }

    /// Renamed in while its writer still has it open (renames before it closes).
    fn rename_in_open(&mut self, w: usize, n: &str) {
        let f = self.new_file(1, 10);
        self.spool[w].insert(name(n), f);
        self.hint(w, &name(n), Hint::MovedIn);
    }

    fn unlink(&mut self, w: usize, n: &str) {
        if self.spool[w].remove(&name(n)).is_some() {
            self.hint(w, &name(n), Hint::Gone);
        }
    }

    fn chmod(&mut self, w: usize, n: &str) {
        let t = self.t;
        if let Some(f) = self.spool[w].get_mut(&name(n)) {
            f.ctime = t;
            self.hint(w, &name(n), Hint::Attrib);
        }
    }

    fn mkfifo(&mut self, w: usize, n: &str) {
        let mut f = self.new_file(0, 0);
        f.kind = Kind::Fifo;
        self.spool[w].insert(name(n), f);
        self.hint(w, &name(n), Hint::Created);
    }

    /// Files already there (at start, or dropped while events were lost): no hints.
    fn silently_add(&mut self, w: usize, n: &str, age: Duration) {
        let mut f = self.new_file(0, 10);
        f.mtime = self.t.saturating_sub(age);
        f.ctime = f.mtime;
        self.spool[w].insert(name(n), f);
        self.silent.insert((w, name(n)));
    }

    fn overflow(&mut self) {
        let now = self.now();
        self.core.rescan_all(now, "test".into());
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        self.t += d;
        for (a, asked) in std::mem::take(&mut self.deferred) {
            self.perform(a, asked);
        }
        let now = self.now();
        self.core.handle_timeout(now);
        self.pump();
    }

    /// Advances to the core's next deadline (at most `max`).
    fn step(&mut self, max: Duration) {
        let now = self.now();
        let d = self
            .core
            .poll_timeout()
            .map_or(max, |t| t.saturating_duration_since(now).min(max));
        // Questions asked wait for the next step, as they wait for a thread in the driver.
        let d = if self.deferred.is_empty() { d } else { MS };
        self.advance(d.max(MS));
    }

    // ---- the driver -----------------------------------------------------------------

    fn listing(&self, w: usize, limit: usize, tail: usize) -> Listing {
        let mut files: Vec<Listed> = Vec::new();
        let mut specials = Vec::new();
        // A tree's walk enters its directories instead of listing them.
        let tree = self.core.watches[w].p.recursive;
        for (n, f) in &self.spool[w] {
            if tree && f.kind == Kind::Directory {
                continue;
            }
            let l = Listed {
                name: n.clone(),
                id: Self::id(f),
            };
            if f.kind == Kind::Regular {
                files.push(l);
            } else {
                specials.push(l);
            }
        }
        let total_files = files.len();
        files.sort_by(|a, b| (a.id.mtime_ns, &a.name).cmp(&(b.id.mtime_ns, &b.name)));
        // Beyond the limit, ranked as the listing ranks its tail: by mtime, then hash.
        let mut rest: Vec<(i128, u64)> = files
            .iter()
            .skip(limit)
            .map(|l| (l.id.mtime_ns, name_hash(&l.name)))
            .collect();
        rest.sort_unstable();
        files.truncate(limit);
        Listing {
            dir_id: (1, w as u64),
            files,
            total_files,
            specials,
            more_specials: 0,
            tree: TreeListing::default(),
            tail: rest.into_iter().take(tail).map(|(_, h)| h).collect(),
            wall_ns: self.t.as_nanos() as i128,
        }
    }

    /// A names-only listing of watch `w` ([`Action::ListNames`]): every name there offered
    /// to the pick, as the driver does.
    fn names(&self, w: usize, hashes: &[u64]) -> Names {
        let mut pick = Pick::new(hashes);
        for n in self.spool[w].keys() {
            pick.offer(n);
        }
        Names {
            dir_id: (1, w as u64),
            names: pick.names(),
        }
    }

    fn pump(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                // As the driver does: asked now, answered later (by `advance`).
                a @ (Action::Look(_) | Action::ProbeWriters(_)) if self.late => {
                    let asked = match &a {
                        Action::ProbeWriters(k) => self.epochs.get(k).copied().unwrap_or(0),
                        _ => 0,
                    };
                    self.deferred.push((a, asked));
                }
                a => {
                    let asked = match &a {
                        Action::ProbeWriters(k) => self.epochs.get(k).copied().unwrap_or(0),
                        _ => 0,
                    };
                    self.perform(a, asked);
                }
            }
        }
        self.check();
    }

    /// Performs `a`; `asked`: the epoch of its name when it was asked.
    fn perform(&mut self, a: Action, asked: u64) {
        let now = self.now();
        {
            match a {
                Action::Look(key) => {
                    self.looks += 1;
                    let id = self.spool[key.0].get(&key.1).map(Self::id);
                    self.core.looked(now, key, id, self.t.as_nanos() as i128);
                }
                Action::ProbeWriters(key) => {
                    let answer = match self.spool[key.0].get(&key.1) {
                        Some(f) if self.leases && f.writers > 0 => Writers::Some,
                        Some(_) if self.leases => Writers::None,
                        _ => Writers::Unknown,
                    };
                    // Asked before a close, rename, create or delete of the name, the answer
                    // is not what the core knows of the file there now: the later event is
                    // (a file renamed in is complete by the writers' convention, and the
                    // uploader's own writer check stands behind that).
                    if self.epochs.get(&key).copied().unwrap_or(0) == asked {
                        if answer == Writers::Some {
                            self.known_writer.insert(key.clone());
                        } else {
                            self.known_writer.remove(&key);
                        }
                    }
                    self.core.writers(now, key, answer);
                }
                Action::List { watch, limit, tail } => {
                    self.silent.retain(|k| k.0 != watch);
                    let l = self.listing(watch, limit, tail);
                    self.lists += 1;
                    self.listed_files += l.total_files;
                    self.core.listed(now, watch, Ok(l));
                }
                Action::ListNames { watch, hashes } => {
                    let n = self.names(watch, &hashes);
                    self.name_lists += 1;
                    self.core.named(now, watch, Ok(n));
                }
                Action::Rewatch { .. } => {}
                // Attempts here have no time: any still running counts as greeted.
                Action::AskGreeted(key) => self.core.greeted(now, key, true),
                Action::Abandon(key) => panic!("{key:?} abandoned, though greeted"),
                Action::Start(s) => self.started(s),
                Action::Report(r) => self.reports.push(r),
            }
        }
    }

    fn started(&mut self, s: Start) {
        // Invariant 2: never two attempts of one name at once.
        assert!(
            !self.running.iter().any(|a| a.start.key == s.key),
            "two attempts of {:?} at once",
            s.key
        );
        // Never a send while the core knows of a writer.
        if matches!(s.mode, Mode::Upload) {
            assert!(
                !self.known_writer.contains(&s.key),
                "{:?} started while the core knew of a writer",
                s.key
            );
        }
        let w = s.key.0;
        let d = self.core.watches[w].p.dest;
        // Invariant 3: a down destination gets an attempt (its probe) only when it has none
        // in flight: at most one.
        if !self.core.lanes.lanes[d].health.is_up() && matches!(s.mode, Mode::Upload) {
            assert_eq!(
                self.core.lanes.flight.of_lane(d),
                1,
                "down destination {d} got a second attempt"
            );
        }
        // Invariant 5: fairness. Every other destination with a ready file and a free slot
        // of its own was passed over once more; none more than once a round.
        // (Finish-only attempts take no lane's slot: they do not count.)
        let n = if matches!(s.mode, Mode::Upload) {
            self.core.lanes.lanes.len()
        } else {
            0
        };
        for e in 0..n {
            if e == d {
                self.skipped[e] = 0;
            } else if self.core.waits_for_slot(e) {
                self.skipped[e] += 1;
                assert!(
                    self.skipped[e] < n,
                    "destination {e} passed over {} times in a row",
                    self.skipped[e]
                );
            } else {
                self.skipped[e] = 0;
            }
        }
        let claimed = self.spool[w].get(&s.key.1).cloned();
        // A delivered file is never uploaded again while it is the same, unchanged file
        // (its move failed: only the move is retried).
        if let (Mode::Upload, Some(c)) = (&s.mode, &claimed) {
            assert!(
                !self.stuck.contains(&(w, s.key.1.clone(), c.ino, c.size)),
                "{:?} uploaded again after it was delivered",
                s.key
            );
        }
        let epoch = self.epochs.get(&s.key).copied().unwrap_or(0);
        let young = claimed.as_ref().is_some_and(|c| {
            !s.settle.is_zero() && self.t.saturating_sub(c.mtime) < s.settle + STAMP_SLACK
        });
        self.starts.push((self.now(), s.clone()));
        self.running.push(Attempt {
            start: s,
            claimed,
            epoch,
            young,
        });
    }

    /// Ends the `i`th running attempt the way the uploader would, given the spool now, the
    /// destination's state and `verdict`.
    fn finish(&mut self, i: usize, verdict: Verdict) {
        let a = self.running.remove(i);
        let key = a.start.key.clone();
        let (w, n) = (key.0, key.1.clone());
        let d = self.core.watches[w].p.dest;
        let now_file = self.spool[w].get(&n).cloned();
        let outcome = match (&a.claimed, &now_file) {
            (None, _) => Outcome::Gone,
            (Some(c), _) if c.kind != Kind::Regular => Outcome::Special(Self::id(c)),
            (Some(c), now) => {
                let same = now.as_ref().is_some_and(|f| f.ino == c.ino);
                let changed = now
                    .as_ref()
                    .is_some_and(|f| f.ino == c.ino && (f.size != c.size || f.mtime != c.mtime));
                let finish_only = match &a.start.mode {
                    Mode::Finish { id, .. } => *id == Self::id(c),
                    Mode::Upload => false,
                };
                if finish_only {
                    if verdict == Verdict::DeliverMoveFails {
                        Outcome::DispositionFailed {
                            id: Self::id(c),
                            after: After::Delivered,
                            error: self.move_error.clone(),
                        }
                    } else {
                        if same {
                            self.spool[w].remove(&n);
                        }
                        self.stuck.retain(|k| !(k.0 == w && k.1 == n));
                        Outcome::Delivered {
                            uploaded: None,
                            vacated: same,
                            paced: false,
                        }
                    }
                } else if a.young {
                    Outcome::Changed
                } else if self.leases && c.writers > 0 {
                    if self.epochs.get(&key).copied().unwrap_or(0) == a.epoch {
                        self.known_writer.insert(key.clone());
                    }
                    Outcome::Writer
                } else if !self.leases
                    && !a.start.trusted
                    && self.t.saturating_sub(c.mtime.max(c.ctime)) < a.start.quiet
                {
                    Outcome::Young {
                        wait: a.start.quiet - self.t.saturating_sub(c.mtime.max(c.ctime)),
                    }
                } else if self.down.contains(&d) {
                    Outcome::DestinationFailed {
                        error: self.down_error.clone(),
                    }
                } else if changed {
                    Outcome::Changed
                } else if verdict == Verdict::DeliverMoveFails && same {
                    self.delivered.push((w, n.clone(), c.ino));
                    self.stuck.insert((w, n.clone(), c.ino, c.size));
                    Outcome::DispositionFailed {
                        id: Self::id(c),
                        after: After::Delivered,
                        error: self.move_error.clone(),
                    }
                } else if verdict != Verdict::Fail {
                    self.delivered.push((w, n.clone(), c.ino));
                    if same {
                        self.spool[w].remove(&n);
                    }
                    Outcome::Delivered {
                        uploaded: Some(Uploaded {
                            bytes: c.size,
                            greeting: 2 * MS,
                        }),
                        vacated: same,
                        paced: false,
                    }
                } else if a.start.last {
                    self.given_up.push((w, n.clone()));
                    if same {
                        self.spool[w].remove(&n);
                    }
                    Outcome::GaveUp
                } else {
                    Outcome::Failed {
                        error: reset(),
                        greeting: Some(2 * MS),
                    }
                }
            }
        };
        let now = self.now();
        self.core.finished(now, key, Some(outcome));
        self.pump();
    }

    fn finish_all(&mut self, verdict: Verdict) {
        while !self.running.is_empty() {
            self.finish(0, verdict);
        }
    }

    /// Runs until nothing is running or waiting in the spool, or `limit` of simulated time
    /// passed; every attempt delivers (unless its destination is down).
    fn drain(&mut self, limit: Duration) -> bool {
        let end = self.t + limit;
        while self.t < end {
            self.finish_all(Verdict::Deliver);
            if self
                .spool
                .iter()
                .all(|s| s.values().all(|f| f.kind != Kind::Regular))
                && self.running.is_empty()
            {
                return true;
            }
            self.step(Duration::from_secs(1));
        }
        false
    }

    // ---- invariants -----------------------------------------------------------------

    fn check(&self) {
        let c = &self.core;
        // 2: never more in flight than the caps.
        let flight = &c.lanes.flight;
        assert!(flight.total() <= c.p.global_cap, "global cap exceeded");
        assert_eq!(
            flight.total(),
            self.running.len(),
            "in-flight count drifted"
        );
        for (i, d) in c.lanes.lanes.iter().enumerate() {
            assert!(
                flight.of_lane(i) <= d.limiter.cap(),
                "destination {i} over its cap"
            );
        }
        // The stale places in the queues and the stale timers stay bounded by the names
        // held, however often files come and go while their lane is blocked.
        for (w, st) in c.watches.iter().enumerate() {
            let places = c.lanes.queued_places(w);
            assert!(
                places <= 2 * (2 * st.count + super::lanes::SLACK) + 1,
                "watch {w}: {places} places queued for {} names held",
                st.count
            );
        }
        assert!(
            c.timers.len() <= 2 * c.entries.len() + super::timers::SLACK,
            "{} timers for {} names held",
            c.timers.len(),
            c.entries.len()
        );
        // The counts agree with the entries.
        let mut per_watch = vec![0usize; c.watches.len()];
        for k in c.entries.keys() {
            per_watch[k.0] += 1;
        }
        for (w, st) in c.watches.iter().enumerate() {
            assert_eq!(st.count, per_watch[w], "count of watch {w} drifted");
            let looking = c.looks.keys().filter(|k| k.0 == w).count();
            assert_eq!(st.looking, looking, "looks of watch {w} drifted");
            assert!(st.count <= c.p.active_limit, "active set over its limit");
        }
        let live: HashSet<(super::timers::Gen, &Key)> = c.timers.iter().collect();
        // The view's index holds exactly the names held and not in flight.
        let waiting: std::collections::BTreeSet<(Instant, Key)> = c
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.state, State::InFlight { .. }))
            .map(|(k, e)| (e.since, k.clone()))
            .collect();
        assert!(c.waiting.all() == waiting, "the waiting index drifted");
        // 1: no accepted regular file is forgotten: it is held, being looked at, or its
        // watch knows more wait on disk (and will list them).
        for (w, files) in self.spool.iter().enumerate() {
            for (n, f) in files {
                if f.kind != Kind::Regular {
                    continue;
                }
                let key = (w, n.clone());
                if self.silent.contains(&key) {
                    continue;
                }
                let held = c.entries.contains_key(&key) || c.looks.contains_key(&key);
                assert!(
                    held || c.watches[w].more_on_disk() || c.watches[w].scanning,
                    "{key:?} is forgotten"
                );
                // Held ones have a way forward: ready, in flight, a live timer, or a pending
                // look or probe.
                if let Some(e) = c.entries.get(&key) {
                    let live_timer = e.timer.is_some_and(|g| live.contains(&(g, &key)));
                    let moving = matches!(e.state, State::Ready { .. } | State::InFlight { .. })
                        || live_timer
                        || c.looks.contains_key(&key)
                        || c.probes.contains(&key);
                    assert!(moving, "{key:?} is stuck in {:?}", e.state);
                    if matches!(e.state, State::Looking) {
                        assert!(c.looks.contains_key(&key), "{key:?} looking, unlooked at");
                    }
                }
            }
        }
    }

    /// Steps simulated time until an attempt runs, ends it with `verdict`, and returns the
    /// last report.
    fn next_attempt(&mut self, verdict: Verdict) -> Option<&Report> {
        while self.running.is_empty() {
            self.step(Duration::from_secs(5));
        }
        self.finish(0, verdict);
        self.reports.last()
    }

    fn reports_of(&self, f: impl Fn(&Report) -> bool) -> usize {
        self.reports.iter().filter(|r| f(r)).count()
    }

    fn started_keys(&self) -> Vec<(usize, String)> {
        self.starts
            .iter()
            .map(|(_, s)| (s.key.0, s.key.1.to_string_lossy().into_owned()))
            .collect()
    }
}

// ---- fixtures: behaviours, and bugs fixed once -----------------------------------------

#[test]
fn renamed_in_goes_at_once_written_in_place_after_close_and_settle() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "a");
    assert_eq!(s.running.len(), 1, "moved in: sent at once");
    assert!(s.running[0].start.trusted);
    s.create(0, "b");
    s.write(0, "b");
    s.advance(100 * MS);
    assert_eq!(s.running.len(), 1, "still open for writing");
    s.close(0, "b");
    s.advance(10 * MS);
    assert_eq!(s.running.len(), 1, "settling");
    s.advance(60 * MS);
    assert_eq!(s.running.len(), 2, "closed and settled");
}

#[test]
fn a_rename_before_close_goes_at_once_on_close() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in_open(0, "a");
    s.finish(0, Verdict::Deliver);
    assert!(s.delivered.is_empty(), "its writer still had it open");
    s.close(0, "a");
    assert_eq!(s.running.len(), 1, "moved in, then closed: ready at once");
    s.finish(0, Verdict::Deliver);
    assert_eq!(s.delivered.len(), 1);
}

#[test]
fn a_write_seen_during_a_failed_attempt_voids_moved_in() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), false);
    s.rename_in(0, "a");
    assert!(s.running[0].start.trusted);
    // Written in place while the attempt has it; the attempt fails after the greeting.
    s.write(0, "a");
    s.running[0].claimed = s.spool[0].get(&name("a")).cloned();
    s.finish(0, Verdict::Fail);
    s.drain(Duration::from_secs(1));
    let again = s.starts.iter().skip(1).find(|(_, st)| st.key.1 == "a");
    if let Some((_, st)) = again {
        assert!(!st.trusted, "a write after the rename voids it");
    }
}

#[test]
fn a_close_seen_during_a_too_young_check_settles_from_that_close() {
    // No leases: a file found by a listing, still open by its writer, is tried after the
    // settle time, found too young (untrusted); its writer closes it meanwhile. It settles
    // from that close (and is then trusted), instead of waiting for the quiet age.
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), false);
    s.t = Duration::from_secs(100);
    s.silently_add(0, "a", Duration::ZERO);
    s.spool[0].get_mut(&name("a")).unwrap().writers = 1;
    s.overflow();
    s.advance(60 * MS);
    assert_eq!(s.running.len(), 1);
    assert!(!s.running[0].start.trusted);
    s.close(0, "a");
    s.finish(0, Verdict::Deliver);
    assert!(s.delivered.is_empty(), "too young");
    s.advance(60 * MS);
    assert_eq!(
        s.running.len(),
        1,
        "settled from the close, not after the quiet age"
    );
    assert!(s.running[0].start.trusted);
}

#[test]
fn without_leases_an_untrusted_file_waits_for_quiet_age_and_old_backlog_goes_at_once() {
    let mut p = params(&[0], 1, 4, 4, 100);
    p.writer_quiet_min = Duration::from_secs(30);
    let mut s = Sim::new(p, false);
    s.t = Duration::from_secs(100);
    s.silently_add(0, "old", Duration::from_secs(60));
    s.silently_add(0, "young", Duration::from_secs(1));
    s.overflow();
    s.advance(60 * MS);
    assert_eq!(s.running.len(), 2);
    s.finish_all(Verdict::Deliver);
    let names: Vec<_> = s.delivered.iter().map(|d| d.1.clone()).collect();
    assert_eq!(names, [name("old")], "the young one waits");
    assert!(s.drain(Duration::from_secs(60)));
    assert_eq!(s.delivered.len(), 2);
}

#[test]
fn a_name_replaced_while_in_flight_sends_both_files() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "a");
    let first = s.running[0].claimed.as_ref().unwrap().ino;
    s.rename_in(0, "a");
    s.finish(0, Verdict::Deliver);
    assert!(s.drain(Duration::from_secs(5)));
    let inos: Vec<u64> = s.delivered.iter().map(|d| d.2).collect();
    assert_eq!(inos.len(), 2);
    assert_eq!(inos[0], first);
    assert_ne!(inos[1], first);
}

#[test]
fn specials_are_reported_once_and_never_sent() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.mkfifo(0, "pipe");
    s.overflow();
    s.overflow();
    assert_eq!(s.reports_of(|r| matches!(r, Report::Ignoring { .. })), 1);
    assert!(s.starts.is_empty());
}

/// A file renamed into a flat spool is ready without a look (its claim finds what it is): a
/// FIFO renamed in is found by the attempt, reported once, and never sent; a file renamed
/// in while a refill's looks are under way waits for them (they keep their turn).
#[test]
fn a_file_renamed_in_is_ready_without_a_look() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    let looks = s.looks;
    s.rename_in(0, "a");
    assert_eq!(s.started_keys(), [(0, "a".to_string())]);
    assert_eq!(s.looks, looks, "looked at");
    let mut f = s.new_file(0, 0);
    f.kind = Kind::Fifo;
    s.spool[0].insert(name("pipe"), f);
    s.hint(0, &name("pipe"), Hint::MovedIn);
    s.finish_all(Verdict::Deliver);
    s.advance(MS);
    s.finish_all(Verdict::Deliver);
    assert_eq!(s.reports_of(|r| matches!(r, Report::Ignoring { .. })), 1);
    assert!(!s.delivered.iter().any(|d| d.1 == name("pipe")));
    // A look under way (written in place, closed): the next rename-in is looked at too.
    s.late = true;
    let w = s.new_file(0, 10);
    s.spool[0].insert(name("w"), w);
    s.hint(0, &name("w"), Hint::Closed);
    let looks = s.looks;
    s.rename_in(0, "b");
    s.advance(MS);
    assert_eq!(s.looks, looks + 2, "b not looked at after w's look");
}

#[test]
fn a_delivered_file_whose_move_fails_is_not_sent_again() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "a");
    s.finish(0, Verdict::DeliverMoveFails);
    assert_eq!(s.delivered.len(), 1);
    for _ in 0..3 {
        while s.running.is_empty() {
            s.step(Duration::from_secs(5));
        }
        assert!(matches!(s.running[0].start.mode, Mode::Finish { .. }));
        s.finish(0, Verdict::DeliverMoveFails);
    }
    while s.running.is_empty() {
        s.step(Duration::from_secs(5));
    }
    s.finish(0, Verdict::Deliver);
    assert!(s.spool[0].is_empty(), "moved once it could be");
    assert_eq!(s.delivered.len(), 1, "never sent again");
    let loud = s.reports_of(|r| matches!(r, Report::DispositionFailed { loud: true, .. }));
    assert_eq!(loud, 1, "reported once, not per retry");
}

/// Whether the move failures of one file are news is decided by the kind of error (the
/// operation and its `io::ErrorKind`), never by its wording.
#[test]
fn a_failing_move_is_loud_again_on_a_new_kind_of_error_not_on_new_wording() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "a");
    // One failure of the move with `error`; whether it was loud.
    let fail = |s: &mut Sim, error: DispositionError| {
        s.move_error = error;
        match s.next_attempt(Verdict::DeliverMoveFails) {
            Some(Report::DispositionFailed { loud, .. }) => *loud,
            other => panic!("not a disposition failure: {other:?}"),
        }
    };
    assert!(fail(&mut s, move_failed(libc::EROFS, "/spool/a")), "first");
    assert!(!fail(&mut s, move_failed(libc::EROFS, "/spool/a")), "same");
    assert!(
        !fail(&mut s, move_failed(libc::EROFS, "/spool/a (renamed)")),
        "same kind, other words"
    );
    assert!(
        fail(&mut s, move_failed(libc::ENOSPC, "/spool/a")),
        "new kind"
    );
    assert!(
        !fail(&mut s, move_failed(libc::ENOSPC, "/elsewhere")),
        "same kind"
    );
    assert!(
        fail(&mut s, move_failed(libc::EROFS, "/spool/a")),
        "kind back"
    );
    // The status view shows the last message as it was written.
    let view = s.core.view(s.now(), 0.0, VIEW_WAITING);
    let crate::status::Why::DispositionPending { error } = &view.waiting[0].2 else {
        panic!("{:?}", view.waiting);
    };
    assert_eq!(*error, move_failed(libc::EROFS, "/spool/a").to_string());
    assert_eq!(s.delivered.len(), 1, "never sent again");
}

/// While a destination stays down, a failure is loud again within the minute only if its
/// kind changed (refused, unreachable, no greeting), not if its message did (another
/// address, another timeout share).
#[test]
fn a_down_destination_is_loud_again_on_a_new_kind_of_error_not_on_new_wording() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.down.insert(0);
    s.rename_in(0, "a");
    s.finish(0, Verdict::Deliver);
    assert_eq!(
        s.reports_of(|r| matches!(r, Report::DestinationDown { .. })),
        1
    );
    let went_down = s.t;
    // One failed probe with `error`: whether it was loud.
    let probe = |s: &mut Sim, error: DestError| {
        s.down_error = error;
        match s.next_attempt(Verdict::Deliver) {
            Some(Report::StillDown { loud, .. }) => *loud,
            other => panic!("not a failed probe: {other:?}"),
        }
    };
    let unreachable = || {
        DestError::new(
            test_dest(),
            connect_failed(&["127.0.0.1:1"], libc::ENETUNREACH),
        )
    };
    let no_greeting = |received| {
        DestError::new(
            test_dest(),
            protocol(ProtocolError::ClosedBeforeCommand { received }),
        )
    };
    assert!(!probe(&mut s, refused("127.0.0.1:1")), "same error");
    let other_words = refused("[::1]:1");
    assert_ne!(other_words.to_string(), refused("127.0.0.1:1").to_string());
    assert!(!probe(&mut s, other_words), "same kind, other words");
    assert!(probe(&mut s, unreachable()), "unreachable after refused");
    assert!(!probe(&mut s, unreachable()), "still unreachable");
    assert!(
        probe(&mut s, no_greeting(0)),
        "no greeting after unreachable"
    );
    assert!(
        !probe(&mut s, no_greeting(3)),
        "no greeting, other byte count"
    );
    assert!(probe(&mut s, refused("127.0.0.1:1")), "refused again");
    assert!(
        s.t < went_down + OUTAGE_REPORT_EVERY,
        "all within the minute: {:?}",
        s.t - went_down
    );
    // The same kind is loud again once the minute has passed.
    s.advance(OUTAGE_REPORT_EVERY);
    assert!(probe(&mut s, refused("127.0.0.1:1")), "a minute later");
    // The status view shows the last message as it was.
    let view = s.core.view(s.now(), 0.0, VIEW_WAITING);
    assert_eq!(
        view.destinations[0].last_error.as_deref(),
        Some(refused("127.0.0.1:1").to_string().as_str())
    );
}

#[test]
fn a_failing_file_is_retried_with_backoff_then_given_up() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "bad");
    let mut delays = Vec::new();
    for _ in 0..3 {
        let t0 = s.t;
        s.finish(0, Verdict::Fail);
        while s.running.is_empty() && s.t < t0 + Duration::from_secs(10) {
            s.step(Duration::from_secs(1));
        }
        delays.push(s.t - t0);
        if s.given_up.len() == 1 {
            break;
        }
    }
    assert_eq!(s.given_up.len(), 1, "given up after max_attempts");
    // The floor: retry n waits at least initial·2^(n−1)/2.
    assert!(delays[0] >= 50 * MS, "{delays:?}");
    assert!(delays[1] >= 100 * MS, "{delays:?}");
}

#[test]
fn retry_delays_stay_within_their_documented_bounds() {
    let p = RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
        max_attempts: 0,
        probe_max: Duration::from_secs(60),
    };
    let mut rng = fastrand::Rng::with_seed(3);
    for n in 1..40u32 {
        let base = Duration::from_secs(1)
            .checked_mul(1u32 << (n - 1).min(31))
            .unwrap_or(p.max)
            .min(p.max);
        for _ in 0..50 {
            let d = retry_delay(&p, p.initial, n, &mut rng);
            assert!(
                d >= base / 2 && d <= base,
                "retry {n}: {d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
    }
}

/// A spool directory replaced after it was watched but before its first listing (which runs
/// in the background, after READY) is watched again: the listing is compared with the
/// directory the watch was placed on, not taken as the reference itself.
#[test]
fn a_directory_replaced_before_its_first_listing_is_watched_again() {
    let rewatches = |watched: (u64, u64)| {
        let now = Instant::now();
        let mut core = Core::new(params(&[0], 1, 4, 4, 100), now, Tracker::default(), 7);
        core.watched(0, watched);
        let mut rewatches = 0;
        while let Some(a) = core.poll_action() {
            match a {
                Action::List { watch, .. } => {
                    let listing = Listing {
                        dir_id: (1, 2),
                        files: Vec::new(),
                        total_files: 0,
                        specials: Vec::new(),
                        more_specials: 0,
                        tree: TreeListing::default(),
                        tail: Vec::new(),
                        wall_ns: 0,
                    };
                    core.listed(now, watch, Ok(listing));
                }
                Action::Rewatch { watch } => {
                    assert_eq!(watch, 0);
                    rewatches += 1;
                }
                _ => {}
            }
        }
        rewatches
    };
    assert_eq!(
        rewatches((1, 1)),
        1,
        "another directory than the one watched"
    );
    assert_eq!(rewatches((1, 2)), 0, "the one watched");
}

/// A special entry reported (from its event) while a listing read before it appeared was
/// under way is not forgotten when that listing comes back without it, and so not reported
/// again by the next one (a FIFO made right after the start, while the first listing ran).
#[test]
fn a_special_reported_during_a_stale_listing_is_reported_once() {
    let now = Instant::now();
    let mut core = Core::new(params(&[0], 1, 4, 4, 100), now, Tracker::default(), 7);
    let fifo = Identity {
        kind: Kind::Fifo,
        dev: 1,
        ino: 9,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    };
    let listing = |specials: Vec<Listed>| Listing {
        dir_id: (1, 0),
        files: Vec::new(),
        total_files: 0,
        specials,
        more_specials: 0,
        tree: TreeListing::default(),
        tail: Vec::new(),
        wall_ns: 0,
    };
    let mut ignoring = 0;
    // Every action but the listings, which the test answers itself.
    let mut pump = |core: &mut Core| {
        let mut lists = 0;
        while let Some(a) = core.poll_action() {
            match a {
                Action::Look(key) => core.looked(now, key, Some(fifo), 0),
                Action::List { .. } => lists += 1,
                Action::Report(Report::Ignoring { .. }) => ignoring += 1,
                _ => {}
            }
        }
        lists
    };
    assert_eq!(pump(&mut core), 1, "the first listing is under way");
    core.hint(now, 0, name("fifo"), Hint::Created);
    assert_eq!(pump(&mut core), 0);
    // The first listing, read before the FIFO was made.
    core.listed(now, 0, Ok(listing(Vec::new())));
    core.rescan_all(now, "test".into());
    assert_eq!(pump(&mut core), 1);
    let with_fifo = vec![Listed {
        name: name("fifo"),
        id: fifo,
    }];
    core.listed(now, 0, Ok(listing(with_fifo)));
    pump(&mut core);
    assert_eq!(ignoring, 1);
}

// ---- lanes ----------------------------------------------------------------------------

#[test]
fn a_down_destination_holds_one_probe_and_its_files_go_when_it_is_back() {
    // Watch 0 → dest 0 (down), watch 1 → dest 1.
    let mut s = Sim::new(params(&[0, 1], 2, 8, 8, 1000), true);
    s.down.insert(0);
    for i in 0..40 {
        s.rename_in(0, &format!("a{i}"));
    }
    assert_eq!(
        s.running.len(),
        super::limiter::INITIAL_LIMIT.min(8),
        "the adaptive limit starts small (at its cap, if smaller)"
    );
    s.finish_all(Verdict::Deliver);
    assert_eq!(
        s.reports_of(|r| matches!(r, Report::DestinationDown { .. })),
        1
    );
    // Down: the other destination's files go at once, the down one holds no slot.
    s.rename_in(1, "b");
    assert_eq!(s.running.len(), 1);
    assert_eq!(s.running[0].start.key.0, 1);
    s.finish_all(Verdict::Deliver);
    // Probes: one at a time.
    for _ in 0..20 {
        s.step(Duration::from_secs(5));
        assert!(s.running.len() <= 1);
        s.finish_all(Verdict::Deliver);
    }
    assert!(s.delivered.iter().all(|d| d.0 == 1));
    // Back: everything goes, once.
    s.down.clear();
    assert!(s.drain(Duration::from_secs(10)));
    assert_eq!(s.delivered.len(), 41);
    assert_eq!(s.given_up.len(), 0, "down destinations use up no attempts");
    assert_eq!(
        s.reports_of(|r| matches!(r, Report::DestinationUp { .. })),
        1
    );
}

/// While a lane is blocked, a ready file closed again and again leaves a stale place in
/// its queue each time; the queue stays bounded by the names held (checked after every
/// step), not by how often that happened.
#[test]
fn a_blocked_lane_queue_stays_bounded_however_often_its_files_are_closed() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.down.insert(0);
    s.rename_in(0, "a");
    s.finish_all(Verdict::Deliver);
    // Written in place: a close settles it afresh (a rename would vouch for it).
    s.create(0, "b");
    s.close(0, "b");
    for _ in 0..20 * super::lanes::SLACK {
        s.hint(0, &name("b"), Hint::Closed);
        s.advance(60 * MS);
        s.finish_all(Verdict::Deliver);
    }
    assert!(s.core.lanes.queued_places(0) <= 2 * (4 + super::lanes::SLACK) + 1);
    s.down.clear();
    assert!(s.drain(Duration::from_secs(30)));
    assert_eq!(s.delivered.len(), 2);
}

#[test]
fn one_ready_file_of_a_destination_gets_a_slot_within_one_round() {
    let mut s = Sim::new(params(&[0, 1], 2, 2, 2, 10_000), true);
    for i in 0..2000 {
        s.rename_in(0, &format!("a{i:04}"));
    }
    assert_eq!(s.running.len(), 2);
    s.rename_in(1, "b");
    // The next slot that frees goes to destination 1.
    s.finish(0, Verdict::Deliver);
    assert!(
        s.running.iter().any(|a| a.start.key.0 == 1),
        "{:?}",
        s.running.iter().map(|a| &a.start.key).collect::<Vec<_>>()
    );
}

#[test]
fn watches_of_one_destination_take_turns() {
    let mut s = Sim::new(params(&[0, 0], 1, 1, 1, 1000), true);
    for i in 0..5 {
        s.rename_in(0, &format!("a{i}"));
    }
    for i in 0..5 {
        s.rename_in(1, &format!("b{i}"));
    }
    assert!(s.drain(Duration::from_secs(5)));
    let order: Vec<usize> = s.started_keys().iter().map(|k| k.0).collect();
    assert_eq!(order, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
}

#[test]
fn the_limit_grows_while_the_lane_is_full_and_greetings_stay_fast() {
    let mut s = Sim::new(params(&[0], 1, 128, 128, 10_000), true);
    // A backlog (all ready at once, so the lane is full from the start).
    for i in 0..500 {
        s.silently_add(0, &format!("f{i:04}"), Duration::from_secs(1));
    }
    s.overflow();
    s.advance(60 * MS);
    let initial = super::limiter::INITIAL_LIMIT;
    assert_eq!(s.running.len(), initial, "it starts small");
    for _ in 0..40 {
        s.finish(0, Verdict::Deliver);
    }
    assert_eq!(
        s.running.len(),
        initial + 40 * super::limiter::SLOW_START_STEP as usize,
        "+3 per success in slow start"
    );
    for _ in 0..200 {
        s.finish(0, Verdict::Deliver);
    }
    assert_eq!(s.running.len(), 128, "never above its cap");
}

// ---- memory ---------------------------------------------------------------------------

#[test]
fn a_backlog_larger_than_the_active_set_is_read_in_oldest_first() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 40), true);
    s.t = Duration::from_secs(1000);
    for i in 0..300 {
        // f000 is the oldest.
        s.silently_add(0, &format!("f{i:03}"), Duration::from_secs(900 - i));
    }
    s.overflow();
    assert!(s.core.entries.len() <= 40);
    assert!(s.drain(Duration::from_secs(60)));
    assert_eq!(s.delivered.len(), 300);
    // Oldest first, across refills (within a batch of the active set, the order of
    // becoming ready, which is the listing's order).
    let names: Vec<String> = s
        .delivered
        .iter()
        .map(|d| d.1.to_string_lossy().into_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

/// A backlog beyond the active set and its reserve is refilled from the listing's ranked
/// tail by names-only listings: listed with its `lstat`s once per
/// `(1 + RESERVE_FACTOR + TAIL_FACTOR) * active_limit` files, not once per
/// `(1 + RESERVE_FACTOR) * active_limit`, and still sent oldest first.
#[test]
fn a_backlog_is_refilled_from_the_ranked_tail_without_listing_again() {
    let active = 4;
    let mut s = Sim::new(params(&[0], 1, 4, 4, active), true);
    s.t = Duration::from_secs(1000);
    let n = 300;
    for i in 0..n {
        s.silently_add(0, &format!("f{i:03}"), Duration::from_secs(900 - i));
    }
    let lists = s.lists;
    s.overflow();
    assert!(s.drain(Duration::from_secs(60)));
    let names: Vec<String> = s
        .delivered
        .iter()
        .map(|d| d.1.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 300);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "oldest first across refills");
    let per_listing = (1 + super::active::RESERVE_FACTOR + super::active::TAIL_FACTOR) * active;
    let full = s.lists - lists;
    assert!(
        full <= (n as usize).div_ceil(per_listing) + 1,
        "{full} full listings for {n} files, {per_listing} a listing"
    );
    assert!(s.name_lists > 0);
}

/// The tail is only a ranking: a name of it removed before its names-only listing is just
/// absent, and one renamed in meanwhile (not in the tail) is still sent.
#[test]
fn a_tail_name_gone_is_skipped_and_a_new_name_is_sent() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 2), true);
    s.t = Duration::from_secs(1000);
    for i in 0..60 {
        s.silently_add(0, &format!("f{i:02}"), Duration::from_secs(900 - i));
    }
    s.overflow();
    assert!(!s.core.watches[0].tail.is_empty());
    s.unlink(0, "f50");
    s.rename_in(0, "new");
    assert!(s.drain(Duration::from_secs(60)));
    let mut names: Vec<String> = s
        .delivered
        .iter()
        .map(|d| d.1.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 60);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 60, "each once");
    assert!(names.contains(&"new".to_string()));
    assert!(!names.contains(&"f50".to_string()));
}

/// A file found by a listing settles from its last change, as its timestamps tell: one
/// unchanged for the settle time already is sent after one more look (unchanged since the
/// listing), not a settle time after the listing; one changed just before waits out the
/// rest of it, and one changed since the listing settles afresh.
#[test]
fn a_listed_file_settles_from_its_last_change() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.t = Duration::from_secs(1000);
    s.silently_add(0, "old", Duration::from_secs(60));
    s.silently_add(0, "changed", Duration::from_secs(59));
    s.silently_add(0, "young", Duration::from_millis(10));
    // Written long ago, renamed into the spool just now (the rename sets only the ctime):
    // its content has been unchanged that long.
    s.silently_add(0, "moved", Duration::from_secs(61));
    s.spool[0].get_mut(&name("moved")).unwrap().ctime = s.t;
    let looks_before = s.looks;
    s.overflow();
    // Written to after the listing read it (no event: a write lost with the overflow).
    let f = s.spool[0].get_mut(&name("changed")).unwrap();
    f.size += 1;
    f.mtime = s.t;
    f.ctime = s.t;
    s.advance(MS);
    // Unchanged for the settle time by the listing's stamps: started without a look, the
    // one written to since the listing as well (nothing told of that write).
    let key = |n: &str| (0, n.to_string());
    assert_eq!(s.started_keys(), [key("moved"), key("old"), key("changed")]);
    assert_eq!(s.looks, looks_before, "no look before those attempts");
    // Its claim finds its stamps changed within the settle time: not sent, it settles
    // afresh from a look.
    let i = s
        .running
        .iter()
        .position(|a| a.start.key.1 == name("changed"));
    s.finish(i.unwrap(), Verdict::Deliver);
    assert!(s.delivered.is_empty(), "{:?}", s.delivered);
    // Settle (50 ms) after its change, less the stamp's slack, and not before.
    s.advance(10 * MS);
    assert_eq!(s.started_keys().len(), 3, "young went early");
    // Both a settle time after they were last seen to change.
    s.advance(40 * MS);
    let started = s.started_keys();
    assert_eq!(started[3..].len(), 2, "{started:?}");
    assert!(started[3..].contains(&key("young")));
    assert!(started[3..].contains(&key("changed")));
}

/// A name a refill takes from the reserve settles from its last write, as the listing's
/// own names do: one old enough is ready after its one look (not a settle time and a
/// second look later); one written just before waits out the rest of its settle time.
#[test]
fn a_refilled_name_settles_from_its_last_write() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 2), true);
    s.t = Duration::from_secs(1000);
    for i in 0..8u64 {
        s.silently_add(0, &format!("f{i}"), Duration::from_secs(100 - i));
    }
    s.silently_add(0, "young", 10 * MS);
    s.overflow();
    let looks = s.looks;
    assert!(s.drain(Duration::from_secs(10)), "not drained");
    assert_eq!(s.delivered.len(), 9);
    // The 7 names beyond the active set of 2: one look each, and the young one's settle
    // check.
    assert_eq!(s.looks - looks, 8, "a second look for an old refilled name");
    let started = |n: &str| {
        s.starts
            .iter()
            .find(|(_, st)| st.key.1 == name(n))
            .map(|(t, _)| *t)
            .unwrap()
    };
    let t0 = s.starts[0].0;
    // The old ones went without waiting a settle time (50 ms) for each refill.
    assert!(started("f7") < t0 + 20 * MS, "{:?}", started("f7") - t0);
    // The young one (written 10 ms before the listing, less than the stamps' slack) not
    // before a settle time after it was looked at.
    assert!(
        started("young") >= t0 + 50 * MS,
        "{:?}",
        started("young") - t0
    );
}

/// A periodic rescan that falls due while a ranked backlog drains does not list the
/// directory with its `lstat`s again (which made the `lstat`s per file grow with the
/// backlog): it checks the directory's identity and leaves the rest to the full listing that
/// ends the tail, which finds a file put there without an event meanwhile.
#[test]
fn rescans_due_while_a_ranked_backlog_drains_wait_for_the_listing_after_the_tail() {
    let active = 4;
    let mut p = params(&[0], 1, 4, 4, active);
    p.watches[0].rescan_interval = Duration::from_secs(1);
    let mut s = Sim::new(p, true);
    s.t = Duration::from_secs(1000);
    let n = 300;
    for i in 0..n {
        s.silently_add(0, &format!("f{i:03}"), Duration::from_secs(900 - i));
    }
    let (lists, listed, start) = (s.lists, s.listed_files, s.t);
    s.overflow();
    // One file delivered a second: many rescans fall due.
    for i in 0..1000 {
        if i == 5 {
            s.silently_add(0, "silent", Duration::ZERO);
        }
        if !s.running.is_empty() {
            s.finish(0, Verdict::Deliver);
        }
        s.advance(Duration::from_secs(1));
        if s.delivered.len() == n as usize + 1 {
            break;
        }
    }
    let names: Vec<String> = s
        .delivered
        .iter()
        .map(|d| d.1.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 301);
    assert_eq!(names.last().map(String::as_str), Some("silent"));
    let backlog: Vec<&String> = names.iter().filter(|n| n.starts_with('f')).collect();
    let mut sorted = backlog.clone();
    sorted.sort();
    assert_eq!(backlog, sorted, "oldest first");
    let secs = (s.t - start).as_secs();
    assert!(
        secs > 200,
        "{secs} s: rescans (every second) would have listed it again"
    );
    // The listings that end each tail (300, 220, 140, 60 files), and the rescans once the
    // last names of the backlog are held (a few files each): not one of 300 files a second.
    let (full, stats) = (s.lists - lists, s.listed_files - listed);
    assert!(
        stats <= 3 * n as usize,
        "{full} full listings over {secs} s, {stats} lstats"
    );
}

#[derive(Debug, Clone)]
enum BacklogOp {
    /// Removes the backlog's file of this index (if still there).
    Unlink(u16),
    /// A new file renamed in (younger than the backlog).
    RenameIn,
    /// A new file put there without an event (found by a listing only).
    Silent,
    Overflow,
    /// Lets time pass and the attempts running deliver.
    Work(u8),
}

fn backlog_op() -> impl Strategy<Value = BacklogOp> {
    prop_oneof![
        2 => any::<u16>().prop_map(BacklogOp::Unlink),
        2 => Just(BacklogOp::RenameIn),
        1 => Just(BacklogOp::Silent),
        1 => Just(BacklogOp::Overflow),
        4 => (1u8..20).prop_map(BacklogOp::Work),
    ]
}

/// A backlog drained through full and names-only listings, with names added and removed
/// between them: the backlog's files go oldest first, every file there is sent once, and
/// the invariants hold after every step.
fn run_backlog(n: usize, active: usize, late: bool, ops: &[BacklogOp]) {
    let mut p = params(&[0], 1, 4, 4, active);
    // Rescans only when the test asks for them (see the order below).
    p.watches[0].rescan_interval = Duration::from_secs(3600);
    let mut s = Sim::new(p, true);
    s.late = late;
    s.t = Duration::from_secs(100_000);
    for i in 0..n {
        s.silently_add(0, &format!("b{i:04}"), Duration::from_secs((n - i) as u64));
    }
    s.overflow();
    let mut added = 0usize;
    for op in ops {
        match op {
            BacklogOp::Unlink(i) => s.unlink(0, &format!("b{:04}", usize::from(*i) % n)),
            BacklogOp::RenameIn => {
                s.rename_in(0, &format!("n{added:04}"));
                added += 1;
            }
            BacklogOp::Silent => {
                s.silently_add(0, &format!("n{added:04}"), Duration::ZERO);
                added += 1;
            }
            BacklogOp::Overflow => s.overflow(),
            BacklogOp::Work(k) => {
                for _ in 0..*k {
                    s.step(Duration::from_millis(100));
                    s.finish_all(Verdict::Deliver);
                }
            }
        }
        s.check();
    }
    // Silent files are found by a rescan, once the looks under way are answered (see the
    // order below).
    let left: Vec<OsString> = s.spool[0].keys().cloned().collect();
    for _ in 0..10 {
        if s.core.looks.is_empty() {
            break;
        }
        s.step(MS);
    }
    s.overflow();
    assert!(s.drain(Duration::from_secs(600)), "not drained");
    let delivered: Vec<&OsString> = s.delivered.iter().map(|d| &d.1).collect();
    let mut once = delivered.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), delivered.len(), "a file sent twice");
    for l in &left {
        assert!(delivered.contains(&l), "{l:?} never sent");
    }
    // Taken oldest first: the first attempts of the backlog's files start in its order
    // (attempts running at once may end in any order). Not across a rescan that lands
    // while names of the reserve are being looked at (late answers): the listing's names
    // settle from then, those names from their answer, a step later (as before the tail).
    if late && ops.iter().any(|o| matches!(o, BacklogOp::Overflow)) {
        return;
    }
    let mut backlog: Vec<&OsString> = Vec::new();
    for (_, st) in &s.starts {
        if st.key.1.to_string_lossy().starts_with('b') && !backlog.contains(&&st.key.1) {
            backlog.push(&st.key.1);
        }
    }
    let mut sorted = backlog.clone();
    sorted.sort();
    assert_eq!(backlog, sorted, "the backlog not taken oldest first");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_backlog_goes_oldest_first_through_the_ranked_tail(
        n in 1usize..400,
        active in 1usize..6,
        late in any::<bool>(),
        ops in prop::collection::vec(backlog_op(), 0..60),
    ) {
        run_backlog(n, active, late, &ops);
    }
}

#[test]
fn names_dropped_for_lack_of_room_are_found_by_the_next_listing() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 8), true);
    for i in 0..30 {
        s.rename_in(0, &format!("f{i:02}"));
    }
    assert!(s.core.entries.len() <= 8);
    assert!(s.core.watches[0].more_on_disk());
    assert!(s.drain(Duration::from_secs(60)));
    assert_eq!(s.delivered.len(), 30);
}

// ---- random sequences -----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Create(usize, u8),
    Write(usize, u8),
    Close(usize, u8),
    RenameIn(usize, u8),
    RenameInOpen(usize, u8),
    Unlink(usize, u8),
    Chmod(usize, u8),
    Fifo(usize, u8),
    Silent(usize, u8),
    Overflow,
    Advance(u16),
    Finish(u8, u8),
    Down(usize),
    Up(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0usize..3;
    let n = 0u8..6;
    prop_oneof![
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Create(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Write(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Close(w, n)),
        3 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::RenameIn(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::RenameInOpen(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Unlink(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Chmod(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Fifo(w, n)),
        1 => (w.clone(), n.clone()).prop_map(|(w, n)| Op::Silent(w, n)),
        1 => Just(Op::Overflow),
        3 => (1u16..3000).prop_map(Op::Advance),
        4 => (any::<u8>(), 0u8..5).prop_map(|(i, v)| Op::Finish(i, v)),
        1 => (0usize..2).prop_map(Op::Down),
        1 => (0usize..2).prop_map(Op::Up),
    ]
}

/// `late`: looks and writer probes are answered at the next step, not at once.
fn run_ops(ops: &[Op], leases: bool, active: usize, late: bool) {
    // Watches 0 and 1 send to destination 0, watch 2 to destination 1.
    let mut s = Sim::new(params(&[0, 0, 1], 2, 3, 2, active), leases);
    s.late = late;
    for o in ops {
        let nm = |n: &u8| format!("n{n}");
        match o {
            Op::Create(w, n) => s.create(*w, &nm(n)),
            Op::Write(w, n) => s.write(*w, &nm(n)),
            Op::Close(w, n) => s.close(*w, &nm(n)),
            Op::RenameIn(w, n) => s.rename_in(*w, &nm(n)),
            Op::RenameInOpen(w, n) => s.rename_in_open(*w, &nm(n)),
            Op::Unlink(w, n) => s.unlink(*w, &nm(n)),
            Op::Chmod(w, n) => s.chmod(*w, &nm(n)),
            Op::Fifo(w, n) => s.mkfifo(*w, &nm(n)),
            Op::Silent(w, n) => s.silently_add(*w, &nm(n), Duration::from_secs(5)),
            Op::Overflow => s.overflow(),
            Op::Advance(ms) => s.advance(Duration::from_millis(u64::from(*ms))),
            Op::Finish(i, v) => {
                if !s.running.is_empty() {
                    let i = usize::from(*i) % s.running.len();
                    let verdict = match v {
                        0 | 1 => Verdict::Deliver,
                        2 | 3 => Verdict::Fail,
                        _ => Verdict::DeliverMoveFails,
                    };
                    s.finish(i, verdict);
                }
            }
            Op::Down(d) => {
                s.down.insert(*d);
            }
            Op::Up(d) => {
                s.down.remove(d);
            }
        }
    }
    // 4. Liveness: writers gone, every destination up, no more changes: the spool drains
    // (files found only by the no-lease quiet rule take its 3 s, backoffs at most 2 s, a
    // down destination's probe at most 2 s).
    for w in 0..s.spool.len() {
        let open: Vec<String> = s.spool[w]
            .iter()
            .filter(|(_, f)| f.writers > 0)
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect();
        for n in open {
            while s.spool[w].get(&name(&n)).is_some_and(|f| f.writers > 0) {
                s.close(w, &n);
            }
        }
    }
    s.down.clear();
    // Names written silently (no hints) are found by the periodic rescan, at most 60 s away.
    assert!(
        s.drain(Duration::from_secs(120)),
        "not drained: {:?}",
        s.spool
            .iter()
            .map(|f| f.keys().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_with_leases(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops, true, 1000, false);
    }

    #[test]
    fn invariants_hold_without_leases(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops, false, 1000, false);
    }

    #[test]
    fn invariants_hold_with_a_tiny_active_set(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops, true, 4, false);
    }

    /// As the driver answers them: looks and writer probes come back a step later.
    #[test]
    fn invariants_hold_with_late_answers(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops, true, 4, true);
    }

    #[test]
    fn invariants_hold_with_late_answers_without_leases(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops, false, 1000, true);
    }
}

/// Params where a retry or a probe waits an hour: only a flush makes anything go sooner.
fn patient(watches: &[usize], dests: usize) -> Params {
    let mut p = params(watches, dests, 8, 8, 100);
    p.retry.initial = Duration::from_secs(3600);
    p.retry.max = Duration::from_secs(3600);
    p
}

#[test]
fn a_flush_retries_backing_off_files_and_probes_down_destinations_now() {
    // Watch 0 → dest 0, watch 1 → dest 1.
    let mut s = Sim::new(patient(&[0, 1], 2), true);
    s.rename_in(0, "fails");
    s.finish(0, Verdict::Fail);
    s.down.insert(1);
    s.rename_in(1, "down");
    s.finish_all(Verdict::Deliver);
    s.step(Duration::from_secs(5));
    assert!(s.running.is_empty(), "both wait an hour");

    // Only destination 1: its probe goes now; the other file keeps waiting.
    let before = s.starts.len();
    let f = s.core.flush(s.now(), Some(1));
    assert_eq!((f.probed, f.files), (1, 0));
    s.pump();
    assert_eq!(s.started_keys()[before..], [(1, "down".to_string())]);
    s.down.clear();
    s.finish_all(Verdict::Deliver);
    assert_eq!(s.delivered.len(), 1);

    // All: the file backing off is ready now, its failed attempt still counted.
    let f = s.core.flush(s.now(), None);
    assert_eq!((f.probed, f.files), (0, 1));
    s.pump();
    assert_eq!(s.running.len(), 1);
    assert_eq!(s.running[0].start.attempt, 2);
    assert!(s.drain(Duration::from_secs(1)));
    assert_eq!(s.delivered.len(), 2);
}

#[test]
fn running_out_of_descriptors_never_counts_against_the_file() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    s.rename_in(0, "f");
    // Far more than max_attempts (3) failures, each for want of a descriptor.
    for _ in 0..10 {
        let t0 = s.t;
        while s.running.is_empty() && s.t < t0 + Duration::from_secs(10) {
            s.step(Duration::from_millis(100));
        }
        let a = s.running.remove(0);
        assert_eq!(a.start.attempt, 1, "not counted");
        assert!(!a.start.last);
        let error = FileError::open(
            "/spool/f".into(),
            std::io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert!(error.service_trouble());
        assert!(error.to_string().contains("not counted against the file"));
        s.core.finished(
            s.now(),
            a.start.key,
            Some(Outcome::Failed {
                error,
                greeting: None,
            }),
        );
        s.pump();
    }
    assert!(s.given_up.is_empty());
    assert!(s.drain(Duration::from_secs(10)));
    assert_eq!(s.delivered.len(), 1);
}

#[test]
fn a_view_of_one_destination_lists_and_counts_its_files_only() {
    // Watch 0 → dest 0, watch 1 → dest 1; both down, so every file waits.
    let mut s = Sim::new(patient(&[0, 1], 2), true);
    s.down.extend([0, 1]);
    for i in 0..5 {
        s.rename_in(0, &format!("a{i}"));
        s.advance(10 * MS);
    }
    for i in 0..3 {
        s.rename_in(1, &format!("b{i}"));
        s.advance(10 * MS);
    }
    s.finish_all(Verdict::Deliver);
    let v = s.core.view_of(s.now(), 0.0, 2, Some(1));
    assert_eq!(v.waiting_total, 3);
    assert_eq!(v.waiting.len(), 2);
    assert!(
        v.waiting.iter().all(|(k, _, _)| k.0 == 1),
        "{:?}",
        v.waiting
    );
    let all = s.core.view(s.now(), 0.0, 100);
    assert_eq!((all.waiting_total, all.waiting.len()), (8, 8));
    // Oldest first.
    let ages: Vec<f64> = all.waiting.iter().map(|(_, age, _)| *age).collect();
    assert!(ages.windows(2).all(|w| w[0] > w[1]), "{ages:?}");
}

/// The rows of issue 16 (a server that is mostly fine) against a model of a server and a
/// network: in a file of their own.
#[path = "scenarios.rs"]
mod scenarios;

#[path = "sim_tree.rs"]
mod tree;
