//! Finding files: kernel events (inotify through `notify`) as hints, directory listings as
//! the truth.
//!
//! The notify callback runs on notify's own thread and must not block, so it turns each
//! event into a small [`Hint`] and `try_send`s it into a bounded channel. When the channel is
//! full the hint is dropped and an overflow flag is raised instead; the queue then rescans,
//! exactly as for the kernel's own queue overflow. Memory stays bounded whatever the event
//! rate.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::core::Hint;
use super::ctx::FatalError;
use crate::config::NameFilter;
use crate::esc::esc;

/// Capacity of the hint channel; past it hints are dropped and a rescan is due.
pub const HINT_CAPACITY: usize = 16 * 1024;

/// A message from the watcher thread to the queue.
#[derive(Debug)]
pub enum Msg {
    /// Something happened to `name` in watch number `watch`.
    Hint {
        watch: usize,
        name: OsString,
        hint: Hint,
    },
    /// The events cannot be trusted (overflow, watcher error, the directory itself was
    /// moved or removed): list the directories again.
    Rescan { why: String },
    /// A directory was made or renamed in somewhere in the tree of watch number `watch`
    /// (`recursive = true`): walk it.
    Tree { watch: usize },
}

/// What the watcher needs to know of each watch.
#[derive(Debug, Clone)]
pub struct Root {
    /// The spool, absolute.
    pub dir: PathBuf,
    pub filter: NameFilter,
    /// `recursive = true`: events in its subdirectories count, by their relative path.
    pub recursive: bool,
    pub max_depth: usize,
}

/// The running kernel watch. Dropping it stops the events.
pub struct Watcher {
    watches: Arc<Watches>,
    /// Per directory, (device, inode) as it was right before it was watched.
    dir_ids: Vec<(u64, u64)>,
}

/// The inotify watches, shared by the queue (which watches a replaced spool again) and the
/// walks of trees (which watch each directory before listing it).
pub struct Watches {
    inner: std::sync::Mutex<Inner>,
}

struct Inner {
    notify: notify::RecommendedWatcher,
    /// Per watch, the directories below its spool watched by the walks: path → (identity
    /// when watched, number of the walk that last saw it).
    subdirs: Vec<HashMap<PathBuf, Seen>>,
    /// Per watch, the number of its walks so far.
    walks: Vec<u64>,
}

/// A directory watched by a walk: its (device, inode) when watched, and the number of the
/// walk that last saw it.
type Seen = ((u64, u64), u64);

/// Whether a directory could be watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Watched (or gone meanwhile: nothing to watch).
    Yes,
    /// The kernel refused one more watch (`fs.inotify.max_user_watches`).
    Refused,
}

impl Watches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A walk of watch `watch` begins; its number, for [`Watches::walked`].
    pub fn begin(&self, watch: usize) -> u64 {
        let mut g = self.lock();
        match g.walks.get_mut(watch) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        }
    }

    /// Watches the directory `dir` (below the spool of `watch`), which was `id` when the
    /// walk number `walk` looked at it; nothing if it already is.
    pub fn place(&self, watch: usize, walk: u64, dir: &Path, id: (u64, u64)) -> Placed {
        let mut g = self.lock();
        let Some(known) = g.subdirs.get_mut(watch) else {
            return Placed::Yes;
        };
        if let Some(k) = known.get_mut(dir) {
            if k.0 == id {
                k.1 = walk;
                return Placed::Yes;
            }
        }
        match g.notify.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                g.subdirs[watch].insert(dir.to_path_buf(), (id, walk));
                Placed::Yes
            }
            Err(e) => match fatal(dir, e) {
                FatalError::InotifyWatchLimit { .. } => Placed::Refused,
                // Gone meanwhile, or not a directory any more: the walk does not enter it.
                _ => Placed::Yes,
            },
        }
    }

    /// Walk number `walk` of `watch` is complete: the watches of directories it did not see
    /// (removed, renamed away, pruned, beyond `max_depth` now) are dropped. One whose
    /// directory the walk saw under another name (renamed within the tree) is left to the
    /// kernel: it is the same watch.
    pub fn walked(&self, watch: usize, walk: u64) {
        let mut g = self.lock();
        let Some(known) = g.subdirs.get_mut(watch) else {
            return;
        };
        let seen: std::collections::HashSet<(u64, u64)> = known
            .values()
            .filter(|(_, w)| *w == walk)
            .map(|(id, _)| *id)
            .collect();
        let stale: Vec<(PathBuf, bool)> = known
            .iter()
            .filter(|(_, (_, w))| *w != walk)
            .map(|(p, (id, _))| (p.clone(), seen.contains(id)))
            .collect();
        for (p, moved) in stale {
            g.subdirs[watch].remove(&p);
            if !moved {
                let _ = g.notify.unwatch(&p);
            }
        }
        if g.subdirs[watch].capacity() > 64
            && g.subdirs[watch].len() < g.subdirs[watch].capacity() / 4
        {
            g.subdirs[watch].shrink_to_fit();
        }
    }

    /// Directories below the spools watched now (all watches).
    pub fn subdirs(&self) -> usize {
        self.lock().subdirs.iter().map(HashMap::len).sum()
    }
}

impl Watcher {
    /// Per directory given to [`start`], (device, inode) as it was right before it was
    /// watched. Taken before, not after: if the path is replaced in between, the watch is on
    /// the new directory and the mismatch costs one needless rewatch, while the other order
    /// could leave a stale watch unnoticed.
    pub fn dir_ids(&self) -> &[(u64, u64)] {
        &self.dir_ids
    }

    /// Watches `dir` again, after it was replaced or mounted over: an inotify watch follows
    /// the directory's inode, not its path.
    ///
    /// # Errors
    /// As for [`start`]; the caller keeps relying on rescans and tries again later.
    pub fn rewatch(&mut self, dir: &Path) -> Result<(), FatalError> {
        let mut g = self.watches.lock();
        let _ = g.notify.unwatch(dir);
        g.notify
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| fatal(dir, e))
    }

    /// The watches, for the walks of trees.
    pub fn watches(&self) -> Arc<Watches> {
        self.watches.clone()
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

fn fatal(dir: &Path, e: notify::Error) -> FatalError {
    match e.kind {
        notify::ErrorKind::MaxFilesWatch => FatalError::InotifyWatchLimit {
            dir: dir.to_path_buf(),
        },
        notify::ErrorKind::Io(ref io) if io.raw_os_error() == Some(libc::EMFILE) => {
            FatalError::InotifyInstanceLimit
        }
        notify::ErrorKind::Io(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
            FatalError::InotifyWatchLimit {
                dir: dir.to_path_buf(),
            }
        }
        _ => FatalError::Watch {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        },
    }
}

/// Starts watching the spools of `roots` (each directory on its own: a tree's
/// subdirectories are watched by its walks, [`walk`]). Hints go to `tx`; when it is full,
/// `overflow` is raised instead. `roots[i]` is watch number `i`; their directories must be
/// absolute. Names that the watch's filter refuses are dropped here already: writers'
/// temporary files make most of the events, and they need not cross the channel.
///
/// # Errors
/// [`FatalError`] when a directory cannot be watched, with inotify's limits named.
pub fn start(
    roots: Vec<Root>,
    tx: mpsc::Sender<Msg>,
    overflow: Arc<AtomicBool>,
) -> Result<Watcher, FatalError> {
    let index: HashMap<PathBuf, usize> = roots
        .iter()
        .enumerate()
        .map(|(i, r)| (r.dir.clone(), i))
        .collect();
    let dirs: Vec<PathBuf> = roots.iter().map(|r| r.dir.clone()).collect();
    let send = move |msg: Msg| {
        if tx.try_send(msg).is_err() {
            overflow.store(true, Ordering::Release);
        }
    };
    let handler = move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(ev) => ev,
            Err(e) => {
                send(Msg::Rescan {
                    why: format!("watcher error: {e}"),
                });
                return;
            }
        };
        if event.need_rescan() {
            send(Msg::Rescan {
                why: "the kernel's event queue overflowed".to_string(),
            });
            return;
        }
        let dir = match event.kind {
            EventKind::Create(CreateKind::Folder) => Some(true),
            EventKind::Remove(RemoveKind::Folder) => Some(false),
            _ => None,
        };
        let hint = match event.kind {
            EventKind::Create(_) => Hint::Created,
            EventKind::Modify(ModifyKind::Data(_)) => Hint::Modified,
            EventKind::Modify(ModifyKind::Metadata(_)) => Hint::Attrib,
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Hint::MovedIn,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Hint::Gone,
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Hint::Closed,
            EventKind::Remove(_) => Hint::Gone,
            // Our own opens and reads, rename pairs (reported as From and To as well), ….
            _ => return,
        };
        for path in &event.paths {
            if index.contains_key(path.as_path()) {
                // The directory itself was removed or moved away.
                if hint == Hint::Gone {
                    send(Msg::Rescan {
                        why: format!("{} itself was moved or removed", esc(path)),
                    });
                }
                continue;
            }
            let Some((watch, rel)) = locate(&roots, &index, path) else {
                continue;
            };
            let root = &roots[watch];
            if !root.recursive {
                if root.filter.accepts(rel.as_os_str()) {
                    send(Msg::Hint {
                        watch,
                        name: rel.into_os_string(),
                        hint,
                    });
                }
                continue;
            }
            match classify(root, &rel, dir, hint) {
                Route::Drop => {}
                Route::Tree => send(Msg::Tree { watch }),
                Route::Hint => send(Msg::Hint {
                    watch,
                    name: rel.into_os_string(),
                    hint,
                }),
            }
        }
    };
    let mut inner = notify::recommended_watcher(handler).map_err(|e| {
        fatal(
            dirs.first().map(PathBuf::as_path).unwrap_or(Path::new("")),
            e,
        )
    })?;
    let mut dir_ids = Vec::with_capacity(dirs.len());
    for dir in &dirs {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                use std::os::unix::fs::MetadataExt;
                dir_ids.push((m.dev(), m.ino()));
            }
            Ok(_) => {
                return Err(FatalError::Watch {
                    dir: dir.clone(),
                    message: "not a directory".to_string(),
                })
            }
            Err(e) => {
                return Err(FatalError::Watch {
                    dir: dir.clone(),
                    message: e.to_string(),
                })
            }
        }
        inner
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| fatal(dir, e))?;
    }
    Ok(Watcher {
        watches: Arc::new(Watches {
            inner: std::sync::Mutex::new(Inner {
                notify: inner,
                subdirs: dirs.iter().map(|_| HashMap::new()).collect(),
                walks: vec![0; dirs.len()],
            }),
        }),
        dir_ids,
    })
}

/// The watch an event's `path` belongs to and its name there: relative to the spool for a
/// tree (the innermost spool, if one is inside another), the file name for a flat one.
fn locate(
    roots: &[Root],
    index: &HashMap<PathBuf, usize>,
    path: &Path,
) -> Option<(usize, PathBuf)> {
    let parent = path.parent()?;
    if let Some(&watch) = index.get(parent) {
        return Some((watch, PathBuf::from(path.file_name()?)));
    }
    // Deeper: the innermost tree above it.
    let mut up = parent.parent();
    while let Some(dir) = up {
        if let Some(&watch) = index.get(dir) {
            if !roots[watch].recursive {
                return None;
            }
            let rel = path.strip_prefix(dir).ok()?;
            return Some((watch, rel.to_path_buf()));
        }
        up = dir.parent();
    }
    None
}

/// What an event about `rel` in a tree becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Drop,
    /// Walk the tree: a directory came, went or moved.
    Tree,
    Hint,
}

/// Routes an event `hint` about `rel` in the tree of `root`. `dir`: the kernel said it is
/// a directory, made (`Some(true)`) or removed (`Some(false)`); a rename does not say.
///
/// A directory made or renamed in asks for a walk (which watches it, then lists it). One
/// removed or renamed away does not: its files were removed one by one (each an event), or
/// are held names whose looks will find them gone; the kernel drops its watch, and the next
/// walk forgets it. (A walk for each would also make every pruned directory cause another
/// walk.)
fn classify(root: &Root, rel: &Path, dir: Option<bool>, hint: Hint) -> Route {
    let depth = rel.components().count().saturating_sub(1);
    let parent_entered = rel.parent().map_or(true, |p| root.filter.enters(p));
    if !parent_entered || depth > root.max_depth {
        return Route::Drop;
    }
    let may_enter = depth < root.max_depth && root.filter.enters(rel);
    match dir {
        Some(true) if may_enter => return Route::Tree,
        Some(_) => return Route::Drop,
        None => {}
    }
    if root.filter.accepts(rel.as_os_str()) {
        // A directory with a name a file could have is found by its look.
        return Route::Hint;
    }
    if hint == Hint::MovedIn && may_enter {
        // Perhaps a directory renamed in.
        return Route::Tree;
    }
    Route::Drop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::listing::{walk, Walk};
    use std::io;
    use std::time::{Duration, Instant};

    #[test]
    fn a_full_channel_raises_overflow_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::path::absolute(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let overflow = Arc::new(AtomicBool::new(false));
        let filter = NameFilter::new(&["*".to_string()], &[]).unwrap();
        let root = Root {
            dir: path.clone(),
            filter,
            recursive: false,
            max_depth: 0,
        };
        let _w = start(vec![root], tx, overflow.clone()).unwrap();
        for i in 0..20 {
            std::fs::write(path.join(format!("f{i}")), b"x").unwrap();
        }
        let end = Instant::now() + Duration::from_secs(10);
        while !overflow.load(Ordering::Acquire) {
            assert!(Instant::now() < end, "no overflow reported");
            std::thread::sleep(Duration::from_millis(5));
        }
        // What did fit is there, in order.
        for _ in 0..2 {
            let msg = rx.blocking_recv();
            assert!(matches!(msg, Some(Msg::Hint { watch: 0, .. })), "{msg:?}");
        }
    }

    #[test]
    fn inotify_limits_are_named() {
        let e = fatal(
            Path::new("/spool"),
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
        );
        assert!(e
            .to_string()
            .contains("inotify watch limit reached (fs.inotify.max_user_watches)"));
        let e = fatal(
            Path::new("/spool"),
            notify::Error::io(io::Error::from_raw_os_error(libc::EMFILE)),
        );
        assert!(e.to_string().contains("fs.inotify.max_user_instances"));
        let e = fatal(
            Path::new("/spool"),
            notify::Error::new(notify::ErrorKind::PathNotFound),
        );
        assert!(e.to_string().contains("cannot watch /spool"), "{e}");
    }

    /// Events in a tree: by relative path; a directory made or renamed asks for a walk;
    /// names in hidden directories and beyond `max_depth` are dropped.
    #[test]
    fn tree_events_are_routed_by_relative_path() {
        let ex: Vec<String> = crate::config::DEFAULT_EXCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect();
        let root = Root {
            dir: PathBuf::from("/s"),
            filter: NameFilter::new(&["**/*.jpg".to_string()], &ex).unwrap(),
            recursive: true,
            max_depth: 2,
        };
        let flat = Root {
            dir: PathBuf::from("/s/flat"),
            filter: NameFilter::new(&["*".to_string()], &ex).unwrap(),
            recursive: false,
            max_depth: 0,
        };
        let roots = vec![root, flat];
        let index: HashMap<PathBuf, usize> =
            [(PathBuf::from("/s"), 0), (PathBuf::from("/s/flat"), 1)].into();
        let at = |p: &str| locate(&roots, &index, Path::new(p));
        assert_eq!(at("/s/a/b/x.jpg"), Some((0, PathBuf::from("a/b/x.jpg"))));
        assert_eq!(at("/s/flat/x"), Some((1, PathBuf::from("x"))));
        assert_eq!(at("/s/flat/sub/x"), None, "a flat spool has no tree");
        assert_eq!(at("/elsewhere/x"), None);
        let r = |p: &str, dir, hint| classify(&roots[0], Path::new(p), dir, hint);
        assert_eq!(r("a/b/x.jpg", None, Hint::Closed), Route::Hint);
        assert_eq!(r("a/b/x.png", None, Hint::Closed), Route::Drop);
        assert_eq!(
            r("a/b/c/x.jpg", None, Hint::Closed),
            Route::Drop,
            "too deep"
        );
        assert_eq!(r("a/.h/x.jpg", None, Hint::Closed), Route::Drop);
        assert_eq!(r("a/new", Some(true), Hint::Created), Route::Tree);
        assert_eq!(
            r("a/b/new", Some(true), Hint::Created),
            Route::Drop,
            "too deep"
        );
        assert_eq!(r("a/.new", Some(true), Hint::Created), Route::Drop);
        assert_eq!(r("a/old", Some(false), Hint::Gone), Route::Drop, "removed");
        assert_eq!(
            r("moved", None, Hint::MovedIn),
            Route::Tree,
            "perhaps a directory"
        );
        assert_eq!(r("moved", None, Hint::Gone), Route::Drop, "renamed away");
        assert_eq!(r("x.part", None, Hint::MovedIn), Route::Drop);
    }

    /// The walks' watches follow the tree: placed for each directory, kept across walks,
    /// dropped for directories gone (removed, renamed away) at the next walk; a directory
    /// renamed within the tree keeps its watch, and events from it come by its new path.
    #[test]
    fn the_walks_watches_follow_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = std::path::absolute(d.path()).unwrap().join("spool");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("gone")).unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let overflow = Arc::new(AtomicBool::new(false));
        let filter = NameFilter::new(&["*".to_string()], &[".*".to_string()]).unwrap();
        let w = start(
            vec![Root {
                dir: root.clone(),
                filter: filter.clone(),
                recursive: true,
                max_depth: 32,
            }],
            tx,
            overflow,
        )
        .unwrap();
        let watches = w.watches();
        let walk_once = || {
            let n = watches.begin(0);
            let place = |dir: &Path, id| watches.place(0, n, dir, id);
            let wk = Walk {
                root: &root,
                accepts: &|p| filter.accepts(p),
                enters: &|p| filter.enters(p),
                max_depth: 32,
                prune: None,
                others: &[],
                place: &place,
            };
            let l = walk(&wk, 100).unwrap();
            watches.walked(0, n);
            l
        };
        assert_eq!(walk_once().tree.dirs, 4);
        assert_eq!(watches.subdirs(), 3);
        std::fs::remove_dir(root.join("gone")).unwrap();
        std::fs::rename(root.join("a"), root.join("c")).unwrap();
        walk_once();
        assert_eq!(watches.subdirs(), 2, "c and c/b");
        // Events from the renamed directory's subdirectory, by its new path.
        while rx.try_recv().is_ok() {}
        std::fs::write(root.join("c/b/.x"), b"x").unwrap();
        std::fs::rename(root.join("c/b/.x"), root.join("c/b/x")).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(Msg::Hint {
                    name,
                    hint: Hint::MovedIn,
                    ..
                }) => {
                    assert_eq!(name, "c/b/x");
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    assert!(std::time::Instant::now() < end, "no event for c/b/x");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}
