//! The active set: which names of a watch are held in memory at all, and the listings that
//! find them.
//!
//! At most `active_limit` names per watch are held; past that, names are left on disk and
//! the watch is marked as having more there. A listing keeps the active set and a reserve
//! beyond it ([`RESERVE_FACTOR`] times as many names, oldest first); when the set runs down
//! to a quarter, names come from the reserve, and once that is used up the directory is
//! listed again. Memory follows the work in flight, not the backlog, and the order stays
//! oldest first across refills. A listing is also the truth against lost events: names no
//! longer there are forgotten as reported, and a directory replaced under the watch is
//! noticed by its identity.
//!
//! Beyond the reserve a flat spool's listing keeps a ranked tail: the hashes of the next
//! [`TAIL_FACTOR`] times `active_limit` names in its order (8 bytes each). When the reserve
//! is used up and the tail is not, the refill is a names-only listing
//! ([`Action::ListNames`]: the directory's names read, none `lstat`ed) that picks the next
//! reserve's worth of the tail by hash, in the tail's order; each picked name is looked at
//! as any refill's name. So a backlog is listed with its `lstat`s once per
//! `(1 + RESERVE_FACTOR + TAIL_FACTOR) * active_limit` files sent, not once per
//! `(1 + RESERVE_FACTOR) * active_limit`: the `lstat`s per file no longer grow with the
//! backlog up to that size. A tree's walk keeps no tail (its refills walk it again).

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::time::Instant;

use super::entry::{fingerprint, Cont, Entry, State};
use super::{
    name_hash, Action, Core, Identity, Key, Listing, Names, Report, WatchParams, MIN_RESCAN,
    RELIST_AFTER_ERROR,
};
use crate::watch::specials;

/// A listing keeps this many times the active set beyond it, as names only (the reserve).
pub(super) const RESERVE_FACTOR: usize = 3;

/// A flat spool's listing keeps the hashes of this many times the active set beyond the
/// reserve (the ranked tail): 16 at the default `active_limit` (16,384) is 262,144 hashes,
/// 2 MiB held, and 4 MiB (mtime and hash) while the listing ranks them.
pub(super) const TAIL_FACTOR: usize = 16;

#[derive(Debug)]
pub(super) struct WatchSt {
    pub(super) p: WatchParams,
    /// Entries held.
    pub(super) count: usize,
    /// Names of this watch being looked at (an `lstat` asked, not answered yet).
    pub(super) looking: usize,
    /// The next oldest names of the last listing beyond the active set (up to
    /// [`RESERVE_FACTOR`] times it), oldest first: refills take them without listing again.
    pub(super) reserve: VecDeque<OsString>,
    /// The ranked tail of the last listing (hashes of the names after the reserve, in its
    /// order), less what names-only listings took of it since.
    pub(super) tail: VecDeque<u64>,
    /// Hashes of the tail asked for by the names-only listing under way.
    pub(super) naming: usize,
    /// The names-only listing under way is a deferred rescan's check of the directory's
    /// identity ([`Core::rescan_due`]), not a refill.
    pub(super) checking: bool,
    /// The last listing had more files than it kept (in its files and its tail), or names
    /// were dropped since for lack of room: once the reserve and the tail are used up, list
    /// again.
    pub(super) truncated: bool,
    /// How many, at the last listing (plus names dropped since), for the counts.
    pub(super) on_disk: usize,
    pub(super) scanning: bool,
    /// Names reported as not regular while a listing was under way: that listing may have
    /// been read before they appeared, so its lack of them does not mean they are gone.
    pub(super) reported_while_listing: Vec<OsString>,
    pub(super) rescan_again: bool,
    pub(super) next_rescan: Instant,
    pub(super) list_failing: bool,
    /// (device, inode) of the directory the inotify watch is on, as far as known: from
    /// [`Core::watched`], else the last listing. A listing that finds another one there
    /// means the watch is stale.
    pub(super) dir_id: Option<(u64, u64)>,
    pub(super) listed_once: bool,
    pub(super) full_reported: bool,
    /// The tree's need of inotify watches beyond the limit was reported.
    pub(super) watch_limit_reported: bool,
    pub(super) sent: u64,
    pub(super) failed: u64,
}

impl WatchSt {
    /// More regular files on disk than held: list again (or name the tail) when the active
    /// set runs low. Names left in the reserve or the tail, or more than a listing kept.
    pub(super) fn more_on_disk(&self) -> bool {
        self.truncated || !self.reserve.is_empty() || !self.tail.is_empty()
    }

    pub(super) fn new(p: WatchParams, now: Instant) -> WatchSt {
        WatchSt {
            next_rescan: now + p.rescan_interval.max(MIN_RESCAN),
            p,
            count: 0,
            looking: 0,
            reserve: VecDeque::new(),
            tail: VecDeque::new(),
            naming: 0,
            checking: false,
            truncated: false,
            on_disk: 0,
            scanning: false,
            reported_while_listing: Vec::new(),
            rescan_again: false,
            list_failing: false,
            dir_id: None,
            listed_once: false,
            full_reported: false,
            watch_limit_reported: false,
            sent: 0,
            failed: 0,
        }
    }
}

impl Core {
    /// Files of watch `w` waiting (held, or on disk as far as the last listing tells), not
    /// in flight.
    pub(super) fn queued(&self, w: usize) -> usize {
        let st = &self.watches[w];
        (st.count - self.lanes.flight.of_watch(w)) + st.on_disk
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

    /// Whether `watch` may hold one more name; counted as held if so. Without room the name
    /// stays on disk, found by the next listing.
    pub(super) fn take_room(&mut self, watch: usize) -> bool {
        let limit = self.p.active_limit.max(1);
        let w = &mut self.watches[watch];
        if w.count >= limit {
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
    pub(super) fn entry_or_insert(&mut self, key: &Key, state: State) -> Option<&mut Entry> {
        if !self.entries.contains_key(key) {
            if !self.take_room(key.0) {
                return None;
            }
            self.insert_entry(key.clone(), Entry::new(state, self.now));
        }
        self.entries.get_mut(key)
    }

    pub(super) fn request_scan(&mut self, watch: usize) {
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
        let tail = if w.p.recursive {
            0
        } else {
            limit.saturating_mul(TAIL_FACTOR)
        };
        let limit = limit.saturating_mul(1 + RESERVE_FACTOR);
        self.actions.push_back(Action::List { watch, limit, tail });
    }

    /// The periodic rescan of `watch` is due. A flat watch draining a ranked backlog (names
    /// left in its reserve or its tail) defers it to the full listing that ends the tail,
    /// and only checks now that the directory is still the one listed (a names-only listing
    /// that asks for no names: the directory's identity alone). A full listing stats every
    /// file on disk: one every `rescan_interval` while a backlog drains made the `lstat`s per
    /// file grow with the backlog (a 1,000,000-file backlog drained in 2 to 3 minutes was
    /// listed 4 to 6 times more). What a rescan finds, that listing finds: a file whose
    /// event was lost (younger than the ranked files, in the usual case, as a name dropped
    /// for lack of room) waits for it, and the watch is marked truncated so that it comes.
    /// A directory replaced is noticed now, as by a rescan; an error lists at once (which
    /// reports it).
    pub(super) fn rescan_due(&mut self, watch: usize) {
        let w = &mut self.watches[watch];
        let ranked = !w.reserve.is_empty() || !w.tail.is_empty();
        if w.p.recursive || !ranked || w.scanning || w.list_failing || w.dir_id.is_none() {
            return self.request_scan(watch);
        }
        w.next_rescan = self.now + w.p.rescan_interval.max(MIN_RESCAN);
        w.truncated = true;
        w.scanning = true;
        w.checking = true;
        w.naming = 0;
        self.actions.push_back(Action::ListNames {
            watch,
            hashes: Vec::new(),
        });
    }

    /// Holds `key` (its room taken), found by a listing or a refill as `id` when the wall
    /// clock read `wall_ns`: settling since its last write, as far as its timestamps tell
    /// (at most the settle time back, and not before `not_before`). One unchanged for the
    /// settle time already is ready now, without a look: its claim checks its stamps still
    /// say so ([`super::Start::settle`]), which a look here would have asked a moment
    /// before (one `lstat` per file less).
    pub(super) fn hold_by_stamps(
        &mut self,
        key: Key,
        id: &Identity,
        wall_ns: i128,
        not_before: Option<Instant>,
    ) {
        let now = self.now;
        let settle = self.settle(key.0);
        let mut since = now
            .checked_sub(id.unchanged_for(wall_ns).min(settle))
            .unwrap_or(now);
        if let Some(s) = not_before {
            since = since.max(s.min(now));
        }
        if since + settle <= now {
            self.insert_entry(key.clone(), Entry::new(State::Looking, now));
            self.make_ready(&key, false);
            if let Some(e) = self.entries.get_mut(&key) {
                e.stamps = true;
            }
            return;
        }
        let snap = fingerprint(id);
        self.insert_entry(
            key.clone(),
            Entry::new(State::Settling { since, snap }, now),
        );
        self.arm(&key, since + settle);
    }

    /// Holds `key`, renamed in, ready at once (complete by the writers' convention), if
    /// there is room.
    pub(super) fn hold_moved_in(&mut self, key: Key) {
        if self.take_room(key.0) {
            let state = self.enqueue(&key, false, false);
            let mut e = Entry::new(state, self.now);
            e.moved_in = true;
            self.insert_entry(key, e);
        }
    }

    /// Refills the reserve of `watch` from its ranked tail: a names-only listing.
    fn request_names(&mut self, watch: usize) {
        let limit = self.p.active_limit.max(1);
        let w = &mut self.watches[watch];
        w.scanning = true;
        let n = limit.saturating_mul(RESERVE_FACTOR).min(w.tail.len());
        let hashes: Vec<u64> = w.tail.drain(..n).collect();
        w.naming = hashes.len();
        self.actions.push_back(Action::ListNames { watch, hashes });
    }

    /// The answer to [`Action::ListNames`]. The names picked become the reserve; those of
    /// the tail not found are gone. A directory that is not the one listed, or an error,
    /// drops the tail and lists again (which notices the replacement, or reports the error).
    pub fn named(&mut self, now: Instant, watch: usize, result: Result<Names, std::io::Error>) {
        self.advance(now);
        if watch >= self.watches.len() {
            return;
        }
        let w = &mut self.watches[watch];
        w.scanning = false;
        // What was reported while it ran is seen by any later listing.
        w.reported_while_listing.clear();
        let asked = std::mem::take(&mut w.naming);
        let checking = std::mem::take(&mut w.checking);
        let mut again = std::mem::take(&mut w.rescan_again);
        match result {
            // A deferred rescan's check: the directory is still the one listed.
            Ok(n) if checking && w.dir_id == Some(n.dir_id) => {}
            Ok(n) if w.dir_id == Some(n.dir_id) => {
                let missing = asked.saturating_sub(n.names.len());
                w.on_disk = w.on_disk.saturating_sub(missing);
                w.reserve = n.names.into();
            }
            _ => {
                w.tail = VecDeque::new();
                w.truncated = true;
                again = true;
            }
        }
        if again {
            self.request_scan(watch);
        }
    }

    /// A watch whose active set ran low while more files wait on disk takes the next names
    /// of its reserve (each looked at, then settling), or is listed again once that is empty.
    pub(super) fn refill(&mut self) {
        let limit = self.p.active_limit.max(1);
        for w in 0..self.watches.len() {
            let st = &self.watches[w];
            // Names being looked at count as held: their answers may still be on the way
            // (the driver asks off its task), and listing again before they come would put
            // younger names before them.
            if !st.more_on_disk() || st.scanning || st.count + st.looking > limit / 4 {
                continue;
            }
            if st.reserve.is_empty() {
                if !st.tail.is_empty() {
                    // The names picked are looked at after those under way.
                    self.request_names(w);
                } else if st.looking == 0 {
                    // Listed once the looks under way are answered: the listing's names
                    // settle from now, and a name answered later would go after them.
                    self.request_scan(w);
                }
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
                self.look(key, Cont::Refill);
            }
        }
    }

    /// Something changed in the tree of `watch` that only a walk sees whole (a directory
    /// made or renamed in): walk it, which watches each new directory before listing it.
    /// Nothing for a flat spool.
    pub fn tree_changed(&mut self, now: Instant, watch: usize) {
        self.advance(now);
        if self.watches.get(watch).is_some_and(|w| w.p.recursive) {
            self.request_scan(watch);
        }
    }

    pub(super) fn apply_listing(&mut self, watch: usize, listing: Listing) {
        let t = listing.tree;
        if t.unwatched > 0
            && !std::mem::replace(&mut self.watches[watch].watch_limit_reported, true)
        {
            self.report(Report::WatchLimit {
                watch,
                dirs: t.dirs,
                unwatched: t.unwatched,
                max_user_watches: t.max_user_watches,
            });
        }
        // The directory at the watched path is not the one listed before (removed and
        // created again, mounted over): the inotify watch is on the old one.
        let before = self.watches[watch].dir_id;
        if before != Some(listing.dir_id) {
            if before.is_some() {
                self.actions.push_back(Action::Rewatch { watch });
            }
            self.watches[watch].dir_id = Some(listing.dir_id);
        }
        let wall_ns = listing.wall_ns;
        // The listing's names settle from their last change, but not before the names of
        // this watch settling already (a refill's, looked at before this listing, or a
        // file written in place): those go first, as the oldest do.
        let settling_since = self
            .entries
            .iter()
            .filter(|(k, _)| k.0 == watch)
            .filter_map(|(_, e)| match e.state {
                State::Settling { since, .. } => Some(since),
                _ => None,
            })
            .max();
        // The reserve is replaced by this listing's: freed first, not beside the new one
        // (a large backlog's listing is the service's peak of memory).
        self.watches[watch].reserve = VecDeque::new();
        self.watches[watch].tail = VecDeque::new();
        // Special entries the listing has: the tracker forgets the others. (Regular files
        // need not be in it: each is forgotten as a special below, by name.)
        let mut present: HashSet<&std::ffi::OsStr> = HashSet::new();
        for l in &listing.specials {
            present.insert(l.name.as_os_str());
            let key = (watch, l.name.clone());
            // A name being sent cannot have become a FIFO; if it did, the claim notices.
            if !self.entries.contains_key(&key) {
                self.ignore(key, l.id);
            }
        }
        let limit = self.p.active_limit.max(1);
        let mut held = 0usize;
        // Names of the listing not held yet but being looked at (a refill's, or a hint's):
        // each takes room when its answer comes, so it is kept for them now. Otherwise
        // younger names of this listing would fill the set first and the answers find it
        // full, sending those older names to the back of the backlog.
        let mut looking = 0usize;
        // Names of the listing beyond the reserve: first in the tail, before the listing's.
        let mut dropped = Vec::new();
        let mut reserve = VecDeque::new();
        let (kept, total_files) = (listing.files.len(), listing.total_files);
        let listed_tail = listing.tail;
        // The names are moved out of the listing, not copied.
        for l in listing.files {
            self.reported.forget(watch, &l.name);
            let key = (watch, l.name);
            if self.entries.contains_key(&key) {
                held += 1;
                continue;
            }
            if self.looks.contains_key(&key) {
                held += 1;
                looking += 1;
                continue;
            }
            if self.watches[watch].count + looking >= limit {
                if reserve.len() < limit.saturating_mul(RESERVE_FACTOR) {
                    reserve.push_back(key.1);
                } else {
                    dropped.push(name_hash(&key.1));
                }
                continue;
            }
            self.watches[watch].count += 1;
            self.hold_by_stamps(key, &l.id, wall_ns, settling_since);
            held += 1;
        }
        // Entries no longer there are forgotten as reported (unless reported after the
        // listing may have been read).
        let meanwhile = std::mem::take(&mut self.watches[watch].reported_while_listing);
        let all_kept = meanwhile.len() > specials::TRACKED_PER_DIR;
        present.extend(meanwhile.iter().map(|n| n.as_os_str()));
        let total = listing.specials.len() + listing.more_specials;
        self.reported
            .listed(watch, total, |n| all_kept || present.contains(n));
        let w = &mut self.watches[watch];
        w.truncated = total_files > kept + listed_tail.len();
        w.reserve = reserve;
        w.tail = if dropped.is_empty() {
            VecDeque::from(listed_tail)
        } else {
            let mut tail = VecDeque::with_capacity(dropped.len() + listed_tail.len());
            tail.extend(dropped);
            tail.extend(listed_tail);
            tail
        };
        w.on_disk = total_files.saturating_sub(held);
        if !w.more_on_disk() {
            w.full_reported = false;
        }
        let files = total_files;
        if std::mem::replace(&mut w.listed_once, true) {
            self.report(Report::Listed { watch, files });
        } else {
            self.report(Report::Backlog { watch, files });
        }
    }
}
