//! Entries of a spool that are not regular files (FIFOs, sockets, devices, symlinks,
//! directories): never sent, reported once, and, since anyone who may drop files may make
//! any number of them, bounded in what they cost.
//!
//! - [`Specials`]: what the process knows of them, per spool directory, shared by every
//!   pipeline (a reload starts a new one while the old one finishes): at most
//!   [`TRACKED_PER_DIR`] remembered by name, the rest only counted; forgotten when they go
//!   (an event, or a listing without them). [`Tracker`] is one pipeline's view of it, by
//!   watch number, as the core uses it.
//! - [`SpecialLog`]: the log lines about them: the first [`NAMED_PER_WINDOW`] of a minute by
//!   name, then one line per minute with how many more there were.
//!
//! A producer making and removing 50,000 FIFOs a round therefore costs a bounded map and a
//! few log lines a minute, where it used to cost a line and a map entry per FIFO, kept for
//! good.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::esc::esc;

/// Special entries remembered by name per spool directory. Beyond it they are counted
/// only: one seen again is reported again (in the summary line, not by name), which is the
/// price of a bound. 1,024 entries cost under 100 KiB.
pub const TRACKED_PER_DIR: usize = 1024;

/// Special entries a listing keeps by name (it counts the rest); the same bound as the
/// map they go into.
pub const LISTED_PER_DIR: usize = TRACKED_PER_DIR;

/// Special entries named in the log per [`WINDOW`]; the rest are summed up at its end.
pub const NAMED_PER_WINDOW: usize = 10;

/// How often at most the "N more special entries ignored" line is written.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The special entries of one spool directory.
#[derive(Debug, Default)]
struct Dir {
    /// Remembered, with a stamp of the identity reported (reported again only if it
    /// changes). A stamp, not the identity: 8 bytes, and this module stays below the core
    /// that uses it.
    known: HashMap<OsString, u64>,
    /// Present but not remembered (beyond [`TRACKED_PER_DIR`]): as the last listing counted
    /// them, plus those reported since.
    untracked: usize,
}

impl Dir {
    fn count(&self) -> usize {
        self.known.len().saturating_add(self.untracked)
    }

    /// Gives memory back once a flood has passed: a `HashMap` keeps its largest capacity.
    fn shrink(&mut self) {
        if self.known.capacity() > 64 && self.known.len() < self.known.capacity() / 4 {
            self.known.shrink_to(self.known.len() * 2);
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// By spool directory (as configured, made absolute): a reload may number the watches
    /// differently.
    slots: HashMap<PathBuf, usize>,
    dirs: Vec<Dir>,
}

impl Inner {
    fn slot(&mut self, dir: &Path) -> usize {
        if let Some(&s) = self.slots.get(dir) {
            return s;
        }
        self.dirs.push(Dir::default());
        self.slots.insert(dir.to_path_buf(), self.dirs.len() - 1);
        self.dirs.len() - 1
    }
}

/// The special entries the process knows of, shared by its pipelines. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Specials(Arc<Mutex<Inner>>);

impl Specials {
    /// A pipeline's view, watch `i` being the spool directory `dirs[i]`.
    pub fn tracker(&self, dirs: &[PathBuf]) -> Tracker {
        let mut inner = self.lock();
        let slots = dirs.iter().map(|d| inner.slot(d)).collect();
        Tracker {
            shared: self.clone(),
            slots,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here can leave the maps inconsistent: a panic elsewhere while it was held
        // does not make them unusable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One pipeline's view of [`Specials`], by watch number. `Default` is a view of its own,
/// for the core's tests.
#[derive(Debug, Default)]
pub struct Tracker {
    shared: Specials,
    slots: Vec<usize>,
}

impl Tracker {
    fn with<R>(&mut self, watch: usize, f: impl FnOnce(&mut Dir) -> R) -> R {
        let mut inner = self.shared.lock();
        while self.slots.len() <= watch {
            // A view without directories (tests): watches get slots of their own.
            let n = self.slots.len();
            let s = inner.slot(Path::new(&format!("\0watch {n}")));
            self.slots.push(s);
        }
        let slot = self.slots[watch];
        f(&mut inner.dirs[slot])
    }

    /// Whether `name` of `watch` is remembered as a special entry.
    pub fn contains(&mut self, watch: usize, name: &OsStr) -> bool {
        self.with(watch, |d| d.known.contains_key(name))
    }

    /// `name` of `watch` is a special entry whose identity has the stamp `id` (a hash of
    /// it): whether to report it (it is new, or not the one reported before). Beyond [`TRACKED_PER_DIR`] it is counted, not remembered,
    /// and reported each time it is met.
    pub fn note(&mut self, watch: usize, name: &OsStr, id: u64) -> bool {
        self.with(watch, |d| {
            if let Some(old) = d.known.get_mut(name) {
                return std::mem::replace(old, id) != id;
            }
            if d.known.len() < TRACKED_PER_DIR {
                d.known.insert(name.to_os_string(), id);
            } else {
                d.untracked = d.untracked.saturating_add(1);
            }
            true
        })
    }

    /// `name` of `watch` is gone, or is a regular file now.
    pub fn forget(&mut self, watch: usize, name: &OsStr) {
        self.with(watch, |d| {
            if d.known.remove(name).is_some() {
                d.shrink();
            }
        });
    }

    /// A listing of `watch` is applied: remembered names it did not have (and `keep` does
    /// not vouch for) are gone; `total` special entries were counted in it.
    pub fn listed(&mut self, watch: usize, total: usize, keep: impl Fn(&OsStr) -> bool) {
        self.with(watch, |d| {
            d.known.retain(|n, _| keep(n));
            d.shrink();
            d.untracked = total.saturating_sub(d.known.len());
        });
    }

    /// The special entries of `watch`, as far as known (for `accio_special_entries`).
    pub fn count(&self, watch: usize) -> usize {
        let Some(&slot) = self.slots.get(watch) else {
            return 0;
        };
        self.shared.lock().dirs.get(slot).map_or(0, Dir::count)
    }
}

/// Whether [`SpecialLog::ignoring`] wants the entry named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// Log it by name.
    Name,
    /// Counted for the summary line.
    Count,
}

/// The log lines about special entries: per [`WINDOW`], the first [`NAMED_PER_WINDOW`] by
/// name, then, when the window ends, one line with how many more there were.
#[derive(Debug, Default)]
pub struct SpecialLog {
    /// When the current window ends; `None` while nothing was reported.
    until: Option<Instant>,
    named: usize,
    /// Counted, not named: per spool directory (shown), per kind.
    more: BTreeMap<String, BTreeMap<String, usize>>,
}

impl SpecialLog {
    /// A special entry of `dir`, of `kind`, is to be reported at `now`.
    pub fn ignoring(&mut self, now: Instant, dir: &Path, kind: &dyn std::fmt::Display) -> Say {
        if self.until.map_or(true, |u| now >= u) {
            // A window whose end passed without a flush (none was due) is over.
            self.until = Some(now + WINDOW);
            self.named = 0;
        }
        if self.named < NAMED_PER_WINDOW {
            self.named += 1;
            return Say::Name;
        }
        let n = self
            .more
            .entry(esc(dir).to_string())
            .or_default()
            .entry(kind.to_string())
            .or_default();
        *n = n.saturating_add(1);
        Say::Count
    }

    /// When [`Self::flush`] has a line to give, if ever.
    pub fn due(&self) -> Option<Instant> {
        self.until.filter(|_| !self.more.is_empty())
    }

    /// The summary line of a window that ended by `now` (or of the current one, if `now` is
    /// `None`: at shutdown), if entries went unnamed in it.
    pub fn flush(&mut self, now: Option<Instant>) -> Option<String> {
        let until = self.until?;
        if now.is_some_and(|now| now < until) || self.more.is_empty() {
            return None;
        }
        let more = std::mem::take(&mut self.more);
        // The next window starts with the next report, naming again.
        self.until = None;
        let total: usize = more.values().flat_map(|k| k.values()).sum();
        let dirs: Vec<String> = more
            .iter()
            .map(|(dir, kinds)| {
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                format!("{dir} ({})", kinds.join(", "))
            })
            .collect();
        Some(format!(
            "{total} more special entries ignored in {} (not regular files: left alone, never sent; the first {NAMED_PER_WINDOW} of a minute are named, the rest summed up once a minute; accio_special_entries counts those present)",
            dirs.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::core::Kind;

    fn id(ino: u64) -> u64 {
        ino
    }

    fn name(i: usize) -> OsString {
        OsString::from(format!("fifo{i}"))
    }

    #[test]
    fn each_is_reported_once_per_identity_and_forgotten_when_gone() {
        let mut t = Tracker::default();
        assert!(t.note(0, &name(1), id(1)));
        assert!(!t.note(0, &name(1), id(1)), "the same one again");
        assert!(t.note(0, &name(1), id(2)), "replaced by another");
        assert!(t.contains(0, &name(1)));
        assert!(!t.contains(1, &name(1)), "watches are apart");
        t.forget(0, &name(1));
        assert!(!t.contains(0, &name(1)));
        assert_eq!(t.count(0), 0);
        assert!(t.note(0, &name(1), id(2)), "back after it went: new");
    }

    #[test]
    fn memory_is_bounded_and_given_back() {
        let mut t = Tracker::default();
        let n = TRACKED_PER_DIR * 10;
        for i in 0..n {
            assert!(t.note(0, &name(i), id(i as u64)));
        }
        assert_eq!(t.count(0), n, "counted, though not all remembered");
        let cap = t.with(0, |d| d.known.capacity());
        assert!(cap < TRACKED_PER_DIR * 3, "{cap}");
        for i in 0..n {
            t.forget(0, &name(i));
        }
        // A listing tells what is left.
        t.listed(0, 0, |_| false);
        assert_eq!(t.count(0), 0);
        let cap = t.with(0, |d| d.known.capacity());
        assert!(cap <= 64, "capacity kept after the flood: {cap}");
    }

    #[test]
    fn a_listing_forgets_what_it_lacks_unless_vouched_for() {
        let mut t = Tracker::default();
        for i in 0..4 {
            t.note(0, &name(i), id(i as u64));
        }
        let (a, b) = (name(1), name(2));
        t.listed(0, 2, |n| n == a || n == b);
        assert!(t.contains(0, &a) && t.contains(0, &b));
        assert!(!t.contains(0, &name(0)) && !t.contains(0, &name(3)));
        assert_eq!(t.count(0), 2);
        // More in the directory than the listing kept by name: counted.
        t.listed(0, 5000, |_| true);
        assert_eq!(t.count(0), 5000);
    }

    #[test]
    fn pipelines_share_what_was_reported_by_directory() {
        let s = Specials::default();
        let (a, b) = (PathBuf::from("/s/a"), PathBuf::from("/s/b"));
        let mut old = s.tracker(&[a.clone(), b.clone()]);
        assert!(old.note(1, &name(1), id(1)));
        // After a reload the watches are numbered differently.
        let mut new = s.tracker(&[b, a]);
        assert!(
            !new.note(0, &name(1), id(1)),
            "reported by the old pipeline"
        );
        assert!(new.note(1, &name(1), id(1)), "another directory");
        new.forget(0, &name(1));
        assert!(!old.contains(1, &name(1)), "forgotten for both");
    }

    #[test]
    fn the_log_names_a_few_then_sums_up_once_a_window() {
        let mut log = SpecialLog::default();
        let t0 = Instant::now();
        let dir = Path::new("/s/out");
        assert_eq!(log.due(), None);
        let mut named = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            if log.ignoring(now, dir, &Kind::Fifo) == Say::Name {
                named += 1;
            }
            assert_eq!(log.flush(Some(now)), None, "not before the window ends");
        }
        log.ignoring(t0, dir, &Kind::Symlink);
        assert_eq!(named, NAMED_PER_WINDOW);
        assert_eq!(log.due(), Some(t0 + WINDOW));
        let line = log.flush(Some(t0 + WINDOW)).expect("a summary");
        let fifos = 1000 - NAMED_PER_WINDOW;
        let start = format!(
            "{} more special entries ignored in /s/out (FIFO: {fifos}, symbolic link: 1)",
            fifos + 1
        );
        assert!(line.starts_with(&start), "{line}");
        assert_eq!(log.flush(Some(t0 + WINDOW * 2)), None, "once");
        assert_eq!(log.due(), None);
        // The next report opens a new window, naming again.
        let later = t0 + WINDOW * 3;
        assert_eq!(log.ignoring(later, dir, &Kind::Fifo), Say::Name);
        // A window with nothing unnamed has no summary.
        assert_eq!(log.flush(None), None);
    }

    #[test]
    fn at_shutdown_the_summary_is_not_lost() {
        let mut log = SpecialLog::default();
        let t0 = Instant::now();
        for _ in 0..=NAMED_PER_WINDOW {
            log.ignoring(t0, Path::new("/s"), &Kind::Socket);
        }
        let line = log.flush(None).expect("flushed at shutdown");
        assert!(
            line.starts_with("1 more special entries ignored in /s (socket: 1)"),
            "{line}"
        );
    }
}
