//! Trees (`recursive = true`, issue #22) in the simulation: names are paths relative to
//! the spool, directories are entries of their own, and the simulated driver routes events
//! as [`crate::watch::watcher`] does (a directory made, renamed or removed asks for a walk;
//! a name a file could have is a hint, and turns out a directory when looked at). Fixtures
//! for directories appearing filled, renamed and removed, renamed while a listing is under
//! way, and a property test over random sequences of them, checking the core's invariants
//! after every step and that every file is delivered once.

use super::*;

/// Params of one recursive watch.
fn tree_params(active: usize) -> Params {
    let mut p = params(&[0], 1, 4, 4, active);
    p.watches[0].recursive = true;
    p
}

impl Sim {
    fn dir_entry(&mut self) -> File {
        let mut f = self.new_file(0, 0);
        f.kind = Kind::Directory;
        f
    }

    /// `mkdir -p d && cp … d/` in one go: the directories and `files` in them exist before
    /// any watch could be on them; the kernel says only that `d`'s top directory was made.
    fn mkdir_filled(&mut self, w: usize, d: &str, files: &[&str]) {
        let mut at = String::new();
        for part in d.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if !self.spool[w].contains_key(&name(&at)) {
                let f = self.dir_entry();
                self.spool[w].insert(name(&at), f);
            }
        }
        for f in files {
            self.silently_add(w, &format!("{d}/{f}"), Duration::ZERO);
        }
        self.tree_event(w);
    }

    /// A directory made, renamed in or away, or removed: the watcher's `Msg::Tree`.
    fn tree_event(&mut self, w: usize) {
        let now = self.now();
        self.core.tree_changed(now, w);
        self.pump();
    }

    /// Everything at or under `d`.
    fn under(&self, w: usize, d: &str) -> Vec<OsString> {
        let prefix = format!("{d}/");
        self.spool[w]
            .keys()
            .filter(|k| {
                let k = k.to_string_lossy();
                k == d || k.starts_with(&prefix)
            })
            .cloned()
            .collect()
    }

    /// `mv d to` within the tree: the files keep their inodes under new names; the events
    /// are the directory's own (moved from, moved to), routed as hints about names a file
    /// could have. `events`: whether they arrive (a listing under way may miss them as
    /// well).
    fn rename_dir(&mut self, w: usize, d: &str, to: &str, events: bool) {
        if self.spool[w].contains_key(&name(to)) {
            return;
        }
        for k in self.under(w, d) {
            let f = self.spool[w].remove(&k).expect("listed just now");
            let rest = &k.to_string_lossy()[d.len()..];
            let new = name(&format!("{to}{rest}"));
            if f.kind == Kind::Regular {
                // Not announced by any event of its own.
                self.silent.insert((w, new.clone()));
                self.silent.remove(&(w, k.clone()));
            }
            self.spool[w].insert(new, f);
        }
        if events {
            self.hint(w, &name(d), Hint::Gone);
            self.hint(w, &name(to), Hint::MovedIn);
        }
    }

    /// `rm -r d`: every file removed (an event each), then the directories (which the
    /// watcher does not pass on: nothing is left to find).
    fn remove_dir(&mut self, w: usize, d: &str) {
        for k in self.under(w, d) {
            if let Some(f) = self.spool[w].remove(&k) {
                if f.kind == Kind::Regular {
                    self.hint(w, &k, Hint::Gone);
                }
            }
        }
    }

    /// Lists watch `w` now, and lets `meanwhile` change the tree before the listing is
    /// answered: what a walk read is already stale when the core gets it.
    fn list_while(&mut self, w: usize, meanwhile: impl FnOnce(&mut Sim)) {
        let now = self.now();
        self.core.rescan_all(now, "test".into());
        let mut pending = None;
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::List { watch, limit, tail } if watch == w && pending.is_none() => {
                    self.silent.retain(|k| k.0 != watch);
                    pending = Some(self.listing(watch, limit, tail));
                }
                a => self.perform(a, 0),
            }
        }
        meanwhile(self);
        if let Some(l) = pending {
            let now = self.now();
            self.core.listed(now, w, Ok(l));
        }
        self.pump();
    }

    /// Inodes of attempts running on files at or under `d`.
    fn in_flight_under(&self, w: usize, d: &str) -> Vec<u64> {
        let prefix = format!("{d}/");
        self.running
            .iter()
            .filter(|a| a.start.key.0 == w && a.start.key.1.to_string_lossy().starts_with(&prefix))
            .filter_map(|a| a.claimed.as_ref().map(|f| f.ino))
            .collect()
    }

    /// Delivered inodes, each once, but for `excused` ones: a file whose directory was
    /// renamed while it was being sent is not where its move looks for it, stays, and is
    /// sent again under its new name (at least once, as documented).
    fn delivered_once(&self, excused: &HashSet<u64>) -> bool {
        let mut inos: Vec<u64> = self
            .delivered
            .iter()
            .map(|d| d.2)
            .filter(|i| !excused.contains(i))
            .collect();
        let n = inos.len();
        inos.sort_unstable();
        inos.dedup();
        inos.len() == n
    }
}

/// `mkdir -p a/b/c && cp x a/b/c/`: found by the walk the new directory asks for, without
/// a periodic rescan.
#[test]
fn a_directory_made_and_filled_at_once_is_walked_and_sent() {
    let mut s = Sim::new(tree_params(100), true);
    s.mkdir_filled(0, "a/b/c", &["x", "y"]);
    // Long before the periodic rescan (60 s).
    assert!(s.drain(Duration::from_secs(5)), "{:?}", s.spool);
    let mut sent: Vec<String> = s
        .delivered
        .iter()
        .map(|d| d.1.to_string_lossy().into_owned())
        .collect();
    sent.sort();
    assert_eq!(sent, ["a/b/c/x", "a/b/c/y"]);
}

/// A directory with a name a file could have, renamed in: its look finds a directory,
/// which is walked, not reported as ignored.
#[test]
fn a_directory_renamed_in_is_walked_not_ignored() {
    let mut s = Sim::new(tree_params(100), true);
    let d = s.dir_entry();
    s.spool[0].insert(name("in"), d);
    s.silently_add(0, "in/x", Duration::ZERO);
    s.hint(0, &name("in"), Hint::MovedIn);
    assert!(s.drain(Duration::from_secs(5)));
    assert_eq!(s.delivered.len(), 1);
    assert_eq!(s.reports_of(|r| matches!(r, Report::Ignoring { .. })), 0);
}

/// A chmod or touch of a directory of the tree (its events carry a name a file could
/// have) asks for no walk.
#[test]
fn a_touched_directory_is_not_walked_again() {
    let mut s = Sim::new(tree_params(100), true);
    let d = s.dir_entry();
    s.spool[0].insert(name("sub"), d);
    let lists = |s: &Sim| s.reports_of(|r| matches!(r, Report::Listed { .. }));
    let before = lists(&s);
    s.hint(0, &name("sub"), Hint::Attrib);
    assert_eq!(lists(&s), before);
    s.hint(0, &name("sub"), Hint::MovedIn);
    assert_eq!(lists(&s), before + 1);
}

/// A flat spool still reports a directory as an entry it leaves alone.
#[test]
fn a_flat_spool_still_ignores_directories() {
    let mut s = Sim::new(params(&[0], 1, 4, 4, 100), true);
    let d = s.dir_entry();
    s.spool[0].insert(name("sub"), d);
    s.hint(0, &name("sub"), Hint::Created);
    assert_eq!(s.reports_of(|r| matches!(r, Report::Ignoring { .. })), 1);
}

/// A directory renamed while a walk is under way: the walk's names are stale (the files
/// are under the new name now); they are looked at and forgotten, and the files are found
/// under their new names and sent once.
#[test]
fn a_directory_renamed_during_a_listing_is_sent_once_under_its_new_name() {
    let mut s = Sim::new(tree_params(100), true);
    s.mkdir_filled(0, "a", &[]);
    for i in 0..3 {
        s.silently_add(0, &format!("a/f{i}"), Duration::from_secs(5));
    }
    s.list_while(0, |s| s.rename_dir(0, "a", "b", true));
    assert!(s.drain(Duration::from_secs(5)), "{:?}", s.spool);
    assert_eq!(s.delivered.len(), 3);
    assert!(s.delivered_once(&HashSet::new()));
    assert!(s
        .delivered
        .iter()
        .all(|d| d.1.to_string_lossy().starts_with("b/")));
}

/// A directory removed (with its files) while they were held: they are forgotten, nothing
/// is sent, nothing is stuck.
#[test]
fn a_directory_removed_with_its_files_leaves_nothing_held() {
    let mut s = Sim::new(tree_params(100), true);
    s.mkdir_filled(0, "gone", &["x", "y"]);
    s.remove_dir(0, "gone");
    assert!(s.drain(Duration::from_secs(5)));
    assert!(s.delivered.is_empty());
    assert!(s.core.entries.is_empty(), "{:?}", s.core.entries.keys());
}

/// The kernel refused watches for part of a tree: said once, however many walks.
#[test]
fn the_watch_limit_is_reported_once() {
    let now = Sim::new(tree_params(100), true).now();
    let mut core = Core::new(tree_params(100), now, Tracker::default(), 7);
    let listing = || Listing {
        dir_id: (1, 0),
        files: Vec::new(),
        total_files: 0,
        specials: Vec::new(),
        more_specials: 0,
        tree: TreeListing {
            dirs: 10,
            unwatched: 4,
            max_user_watches: Some(8192),
            skipped: 0,
        },
        tail: Vec::new(),
        wall_ns: 0,
    };
    let mut said = 0;
    for _ in 0..3 {
        core.tree_changed(now, 0);
        while let Some(a) = core.poll_action() {
            match a {
                Action::List { watch, .. } => core.listed(now, watch, Ok(listing())),
                Action::Report(Report::WatchLimit {
                    dirs, unwatched, ..
                }) => {
                    assert_eq!((dirs, unwatched), (10, 4));
                    said += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(said, 1);
}

#[derive(Debug, Clone)]
enum TreeOp {
    /// `mkdir -p` of directory `d` (of a few) with files in it at once.
    MkdirFilled(u8, u8),
    /// A file renamed into directory `d`, if it exists.
    DropIn(u8, u8),
    RenameDir(u8, u8),
    /// Renamed while a listing is under way, its events lost or not.
    RenameDuringListing(u8, u8, bool),
    RemoveDir(u8),
    Overflow,
    Advance(u16),
    Finish(u8, bool),
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    let d = 0u8..4;
    prop_oneof![
        2 => (d.clone(), 0u8..3).prop_map(|(d, n)| TreeOp::MkdirFilled(d, n)),
        3 => (d.clone(), 0u8..4).prop_map(|(d, n)| TreeOp::DropIn(d, n)),
        1 => (d.clone(), d.clone()).prop_map(|(a, b)| TreeOp::RenameDir(a, b)),
        1 => (d.clone(), d.clone(), any::<bool>())
            .prop_map(|(a, b, e)| TreeOp::RenameDuringListing(a, b, e)),
        1 => d.clone().prop_map(TreeOp::RemoveDir),
        1 => Just(TreeOp::Overflow),
        3 => (1u16..2000).prop_map(TreeOp::Advance),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(i, ok)| TreeOp::Finish(i, ok)),
    ]
}

/// Directory `d`: two levels, so that renames and removals take subtrees.
fn dir(d: u8) -> String {
    match d {
        0 => "a".into(),
        1 => "a/b".into(),
        2 => "c".into(),
        _ => "c/d/e".into(),
    }
}

fn run_tree_ops(ops: &[TreeOp], active: usize, late: bool) {
    let mut s = Sim::new(tree_params(active), true);
    s.late = late;
    let mut n = 0u32;
    let mut excused = HashSet::new();
    for o in ops {
        n += 1;
        match o {
            TreeOp::MkdirFilled(d, files) => {
                let names: Vec<String> = (0..*files).map(|i| format!("m{n}-{i}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                s.mkdir_filled(0, &dir(*d), &refs);
            }
            TreeOp::DropIn(d, f) => {
                if s.spool[0].contains_key(&name(&dir(*d))) {
                    s.rename_in(0, &format!("{}/f{f}", dir(*d)));
                }
            }
            TreeOp::RenameDir(a, b) | TreeOp::RenameDuringListing(a, b, _) => {
                let (from, to) = (dir(*a), format!("r{n}"));
                let _ = b;
                if !s.spool[0].contains_key(&name(&from)) {
                    continue;
                }
                excused.extend(s.in_flight_under(0, &from));
                match o {
                    TreeOp::RenameDuringListing(_, _, events) => {
                        let events = *events;
                        s.list_while(0, |s| s.rename_dir(0, &from, &to, events));
                        if !events {
                            // Lost events: the kernel's overflow says so.
                            s.overflow();
                        }
                    }
                    _ => s.rename_dir(0, &from, &to, true),
                }
            }
            TreeOp::RemoveDir(d) => s.remove_dir(0, &dir(*d)),
            TreeOp::Overflow => s.overflow(),
            TreeOp::Advance(ms) => s.advance(Duration::from_millis(u64::from(*ms))),
            TreeOp::Finish(i, ok) => {
                if !s.running.is_empty() {
                    let i = usize::from(*i) % s.running.len();
                    let v = if *ok { Verdict::Deliver } else { Verdict::Fail };
                    s.finish(i, v);
                }
            }
        }
    }
    assert!(
        s.drain(Duration::from_secs(120)),
        "not drained: {:?}",
        s.spool[0].keys().collect::<Vec<_>>()
    );
    assert!(s.delivered_once(&excused), "{:?}", s.delivered);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Directories appearing filled, renamed (also during a listing, with or without their
    /// events), removed: the invariants hold after every step, and the tree drains with
    /// every file sent once.
    #[test]
    fn tree_invariants_hold(ops in prop::collection::vec(tree_op(), 1..60)) {
        run_tree_ops(&ops, 1000, false);
    }

    #[test]
    fn tree_invariants_hold_with_a_tiny_active_set_and_late_answers(
        ops in prop::collection::vec(tree_op(), 1..60),
    ) {
        run_tree_ops(&ops, 4, true);
    }
}
