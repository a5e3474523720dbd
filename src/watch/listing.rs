//! Listings: what is in a spool, bounded: the flat listing of one directory and the walk
//! of a `recursive = true` spool's tree (which watches each directory before listing it).
//! Both keep the oldest files up to a limit, count the rest, and bound the special entries
//! they remember; blocking, run on the blocking pool.

use std::io;
use std::path::{Path, PathBuf};

use super::claim;
use super::core::tree::{self, Enter};
use super::core::{name_hash, Kind, Listed, Listing, Names, Pick, TreeListing};
use super::specials;
use super::watcher::Placed;
use crate::esc::esc;

/// Lists `dir`, bounded: the `limit` oldest (mtime, then name) regular files whose names
/// pass `accepts`, the hashes of the `tail` next ones ([`Listing::tail`]), how many such
/// files there are in all, and the first [`specials::LISTED_PER_DIR`] entries that are not
/// regular files (the rest counted). Memory follows `limit` and `tail` (16 bytes each), not
/// the directory's size nor what a producer put there. Blocking; run it with
/// `spawn_blocking`.
///
/// # Errors
/// The directory cannot be read. Entries that vanish while listing are skipped.
pub fn list(
    dir: &Path,
    accepts: &dyn Fn(&std::ffi::OsStr) -> bool,
    limit: usize,
    tail: usize,
) -> io::Result<Listing> {
    use std::collections::BinaryHeap;
    use std::os::unix::fs::MetadataExt;
    let limit = limit.max(1);
    let wall_ns = wall_now();
    let meta = std::fs::metadata(dir)?;
    let mut oldest: BinaryHeap<ByAge> = BinaryHeap::new();
    // The next oldest beyond `oldest`, by (mtime, name hash): a max-heap, its top the
    // youngest kept.
    let mut next: BinaryHeap<(i64, u64)> = BinaryHeap::new();
    let mut rank = |l: &Listed| {
        if tail == 0 {
            return;
        }
        let mtime = i64::try_from(l.id.mtime_ns).unwrap_or(if l.id.mtime_ns < 0 {
            i64::MIN
        } else {
            i64::MAX
        });
        let r = (mtime, name_hash(&l.name));
        if next.len() < tail {
            next.push(r);
        } else if next.peek().is_some_and(|top| r < *top) {
            next.pop();
            next.push(r);
        }
    };
    let mut specials = Vec::new();
    let mut more_specials = 0usize;
    let mut total_files = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !accepts(&name) {
            continue;
        }
        // Through the listing's own descriptor (`fstatat`): one component to look up, not
        // the spool's whole path again.
        match entry.metadata().map(|m| claim::identity(&m)) {
            Ok(id) if id.kind != Kind::Regular => {
                if specials.len() < specials::LISTED_PER_DIR {
                    specials.push(Listed { name, id });
                } else {
                    more_specials += 1;
                }
            }
            Ok(id) => {
                total_files += 1;
                let l = ByAge(Listed { name, id });
                if oldest.len() < limit {
                    oldest.push(l);
                } else if oldest.peek().is_some_and(|top| l < *top) {
                    if let Some(out) = oldest.pop() {
                        rank(&out.0);
                    }
                    oldest.push(l);
                } else {
                    rank(&l.0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("cannot inspect {}: {e}", esc(&entry.path()))
            }
        }
    }
    let files = oldest.into_sorted_vec().into_iter().map(|l| l.0).collect();
    // The ranking's memory (16 bytes a name) is given back once its hashes are out.
    let mut tail: Vec<u64> = next.into_sorted_vec().into_iter().map(|r| r.1).collect();
    tail.shrink_to_fit();
    Ok(Listing {
        dir_id: (meta.dev(), meta.ino()),
        files,
        total_files,
        specials,
        more_specials,
        tree: TreeListing::default(),
        tail,
        wall_ns,
    })
}

/// The wall clock now, in nanoseconds since the Unix epoch (0 before it).
pub(super) fn wall_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

/// Reads the names of `dir` (no `lstat`: a names-only listing), keeping those that pass
/// `accepts` and whose [`name_hash`] is among `hashes`, in the order of `hashes` ([`Pick`]).
/// Memory follows `hashes`, not the directory. No hashes: the directory's identity only,
/// not read (a deferred rescan's check). Blocking; run it with `spawn_blocking`.
///
/// # Errors
/// The directory cannot be read.
pub fn names(
    dir: &Path,
    accepts: &dyn Fn(&std::ffi::OsStr) -> bool,
    hashes: &[u64],
) -> io::Result<Names> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    let dir_id = (meta.dev(), meta.ino());
    if hashes.is_empty() {
        return Ok(Names {
            dir_id,
            names: Vec::new(),
        });
    }
    let mut pick = Pick::new(hashes);
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if accepts(&name) {
            pick.offer(&name);
        }
    }
    Ok(Names {
        dir_id,
        names: pick.names(),
    })
}

/// A walk of a tree: what it lists and how.
pub struct Walk<'a> {
    /// The spool, absolute.
    pub root: &'a Path,
    /// Whether a file of this relative path is taken.
    pub accepts: &'a dyn Fn(&std::ffi::OsStr) -> bool,
    /// Whether a directory of this relative path is entered.
    pub enters: &'a dyn Fn(&Path) -> bool,
    pub max_depth: usize,
    /// Remove subdirectories empty and unchanged for this long (`prune_empty_dirs`).
    pub prune: Option<std::time::Duration>,
    /// Spools of other watches: not entered (their files are theirs).
    pub others: &'a [PathBuf],
    /// Watches a directory before it is listed.
    pub place: &'a dyn Fn(&Path, (u64, u64)) -> Placed,
}

/// Walks the tree under `w.root` (not following symlinks, not crossing into other
/// filesystems, at most `w.max_depth` levels down): each directory is watched first
/// ([`Walk::place`]), then listed, so that what was made in it before its watch existed is
/// found. Bounded like [`list`]: the `limit` oldest regular files of the whole tree by
/// their relative names, the count of all, the first [`specials::LISTED_PER_DIR`]
/// entries that are not regular files (directories are not: they are walked). Memory
/// follows `limit` and the directories of one path down the tree, not the tree. Empty
/// subdirectories are removed if `w.prune` says so ([`tree::prune`]). Blocking.
///
/// # Errors
/// The spool itself cannot be read. A subdirectory that cannot be read (or vanishes) is
/// skipped, with a warning if it is there.
pub fn walk(w: &Walk<'_>, limit: usize) -> io::Result<Listing> {
    use std::os::unix::fs::MetadataExt;
    let wall_ns = wall_now();
    let meta = std::fs::metadata(w.root)?;
    let mut st = WalkSt {
        w,
        limit: limit.max(1),
        oldest: std::collections::BinaryHeap::new(),
        specials: Vec::new(),
        more_specials: 0,
        total_files: 0,
        tree: TreeListing::default(),
        spool_dev: meta.dev(),
        now: std::time::SystemTime::now(),
    };
    st.dir(w.root, std::ffi::OsStr::new(""), 0, &meta)?;
    st.tree.max_user_watches = if st.tree.unwatched > 0 {
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    } else {
        None
    };
    let files = st
        .oldest
        .into_sorted_vec()
        .into_iter()
        .map(|l| l.0)
        .collect();
    Ok(Listing {
        dir_id: (meta.dev(), meta.ino()),
        files,
        total_files: st.total_files,
        specials: st.specials,
        more_specials: st.more_specials,
        tree: st.tree,
        tail: Vec::new(),
        wall_ns,
    })
}

struct WalkSt<'a, 'b> {
    w: &'a Walk<'b>,
    limit: usize,
    oldest: std::collections::BinaryHeap<ByAge>,
    specials: Vec<Listed>,
    more_specials: usize,
    total_files: usize,
    tree: TreeListing,
    spool_dev: u64,
    now: std::time::SystemTime,
}

impl WalkSt<'_, '_> {
    fn keep(&mut self, l: Listed) {
        if l.id.kind != Kind::Regular {
            if self.specials.len() < specials::LISTED_PER_DIR {
                self.specials.push(l);
            } else {
                self.more_specials += 1;
            }
            return;
        }
        self.total_files += 1;
        let l = ByAge(l);
        if self.oldest.len() < self.limit {
            self.oldest.push(l);
        } else if self.oldest.peek().is_some_and(|top| l < *top) {
            self.oldest.pop();
            self.oldest.push(l);
        }
    }

    /// Watches and lists the directory `path` (`rel` in the tree, `depth` levels down,
    /// `meta` as lstat saw it), then its subdirectories. Whether it was removed (pruned).
    fn dir(
        &mut self,
        path: &Path,
        rel: &std::ffi::OsStr,
        depth: usize,
        meta: &std::fs::Metadata,
    ) -> io::Result<bool> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        use std::os::unix::io::AsRawFd;
        self.tree.dirs += 1;
        let id = (meta.dev(), meta.ino());
        // The spool itself is watched by `start`.
        if depth > 0 && (self.w.place)(path, id) == Placed::Refused {
            self.tree.unwatched += 1;
        }
        // Opened without following a symlink, and checked to be the directory just
        // watched: one swapped for a link since is not listed (the next walk sees it). (The
        // spool itself may be configured as a link, followed as in a flat spool.)
        let nofollow = if depth > 0 { libc::O_NOFOLLOW } else { 0 };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | nofollow)
            .open(path)
            .and_then(|f| {
                let m = f.metadata()?;
                Ok((f, m))
            });
        let dir = match opened {
            Ok((f, m)) if (m.dev(), m.ino()) == id => f,
            Ok(_) if depth > 0 => return Ok(false),
            Ok((f, _)) => f,
            Err(e) if depth == 0 => return Err(e),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ELOOP) {
                    tracing::warn!("cannot list {}: {e}", esc(path));
                }
                return Ok(false);
            }
        };
        // Read through the descriptor: what is listed is what was opened.
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let base = if via.is_dir() {
            via
        } else {
            path.to_path_buf()
        };
        let mut entries = 0usize;
        let mut subdirs = Vec::new();
        let read = match std::fs::read_dir(&base) {
            Ok(r) => r,
            Err(e) if depth == 0 => return Err(e),
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", esc(path));
                return Ok(false);
            }
        };
        for entry in read {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if depth == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!("cannot list {}: {e}", esc(path));
                    // Not known to be empty.
                    entries += 1;
                    break;
                }
            };
            entries += 1;
            let name = entry.file_name();
            let rel_name = tree::join(rel, &name);
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if (self.w.enters)(Path::new(&rel_name)) {
                    subdirs.push(name);
                }
                continue;
            }
            if !(self.w.accepts)(&rel_name) {
                continue;
            }
            match claim::lstat(&base.join(&name)) {
                Ok(id) if id.kind == Kind::Directory => {
                    if (self.w.enters)(Path::new(&rel_name)) {
                        subdirs.push(name);
                    }
                }
                Ok(id) => self.keep(Listed { name: rel_name, id }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot inspect {}: {e}", esc(&path.join(&name))),
            }
        }
        drop(dir);
        let mut removed = 0usize;
        for name in subdirs {
            let sub = path.join(&name);
            let Ok(m) = std::fs::symlink_metadata(&sub) else {
                continue;
            };
            if !m.is_dir() || self.w.others.contains(&sub) {
                continue;
            }
            if tree::enter(depth + 1, self.w.max_depth, m.dev(), self.spool_dev) != Enter::Yes {
                self.tree.skipped += 1;
                continue;
            }
            let rel_sub = tree::join(rel, &name);
            if self.dir(&sub, &rel_sub, depth + 1, &m)? {
                removed += 1;
            }
        }
        if let Some(settle) = self.w.prune {
            let changed = std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    u64::try_from(meta.mtime()).unwrap_or(0),
                    u32::try_from(meta.mtime_nsec()).unwrap_or(0),
                );
            let age = self.now.duration_since(changed).ok();
            if tree::prune(depth, entries.saturating_sub(removed), age, settle)
                && std::fs::remove_dir(path).is_ok()
            {
                tracing::debug!("removed the empty directory {}", esc(path));
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A listed file, ordered by age (mtime, then name), so that a max-heap's top is the
/// youngest kept.
struct ByAge(Listed);
impl PartialEq for ByAge {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByAge {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0.id.mtime_ns, &self.0.name).cmp(&(o.0.id.mtime_ns, &o.0.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NameFilter;
    use std::time::Duration;

    /// Walks `root` with the default filter; `place` as given.
    fn walk_with(
        root: &Path,
        max_depth: usize,
        prune: Option<Duration>,
        limit: usize,
        place: &dyn Fn(&Path, (u64, u64)) -> Placed,
    ) -> Listing {
        let ex: Vec<String> = crate::config::DEFAULT_EXCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect();
        let f = NameFilter::new(&["*".to_string()], &ex).unwrap();
        let w = Walk {
            root,
            accepts: &|n| f.accepts(n),
            enters: &|p| f.enters(p),
            max_depth,
            prune,
            others: &[],
            place,
        };
        walk(&w, limit).unwrap()
    }

    fn names_of(l: &Listing) -> Vec<String> {
        let mut v: Vec<String> = l
            .files
            .iter()
            .map(|f| f.name.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Each directory is watched before it is listed: a file that lands in it right after
    /// its watch was placed (here: by the placing itself) is in the listing.
    #[test]
    fn a_walk_watches_each_directory_before_listing_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b/.hidden")).unwrap();
        std::fs::create_dir_all(d.path().join("up.part")).unwrap();
        std::fs::write(d.path().join("top"), b"x").unwrap();
        std::fs::write(d.path().join("up.part/no"), b"x").unwrap();
        std::fs::write(d.path().join("a/b/.hidden/no"), b"x").unwrap();
        let placed = std::sync::Mutex::new(Vec::new());
        let place = |dir: &Path, _id| {
            std::fs::write(dir.join("landed"), b"x").unwrap();
            placed.lock().unwrap().push(dir.to_path_buf());
            Placed::Yes
        };
        let l = walk_with(d.path(), 32, None, 100, &place);
        assert_eq!(names_of(&l), ["a/b/landed", "a/landed", "top"]);
        assert_eq!(l.total_files, 3);
        // Hidden and `*.part` directories are neither watched nor listed.
        let mut p = placed.into_inner().unwrap();
        p.sort();
        assert_eq!(p, [d.path().join("a"), d.path().join("a/b")]);
        assert_eq!((l.tree.dirs, l.tree.unwatched), (3, 0));
    }

    /// Watches the kernel refuses are counted, and their directories listed all the same.
    #[test]
    fn refused_watches_are_counted_and_listed_anyway() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..4 {
            let sub = d.path().join(format!("d{i}"));
            std::fs::create_dir(&sub).unwrap();
            std::fs::write(sub.join("f"), b"x").unwrap();
        }
        let l = walk_with(d.path(), 32, None, 100, &|_, _| Placed::Refused);
        assert_eq!(l.total_files, 4);
        assert_eq!((l.tree.dirs, l.tree.unwatched), (5, 4));
    }

    /// A symlink to a directory is an entry left alone, never walked; directories deeper
    /// than `max_depth` are not entered.
    #[test]
    fn symlinks_are_not_followed_and_depth_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("spool");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(spool.join("one/two")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::fs::write(spool.join("one/f"), b"x").unwrap();
        std::fs::write(spool.join("one/two/deep"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, spool.join("one/link")).unwrap();
        let l = walk_with(&spool, 1, None, 100, &|_, _| Placed::Yes);
        assert_eq!(names_of(&l), ["one/f"]);
        assert_eq!(l.specials.len(), 1);
        assert_eq!(l.specials[0].name, "one/link");
        assert_eq!(l.specials[0].id.kind, Kind::Symlink);
        assert_eq!(l.tree.skipped, 1, "one/two is deeper than max_depth");
    }

    /// The `limit` oldest files of the whole tree are kept, oldest first, and all counted.
    #[test]
    fn a_walk_keeps_the_oldest_of_the_whole_tree() {
        let d = tempfile::tempdir().unwrap();
        let base = std::time::SystemTime::now() - Duration::from_secs(3600);
        for (i, rel) in ["z/old", "a/mid", "top", "a/b/new"].iter().enumerate() {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(base + Duration::from_secs(i as u64))
                .unwrap();
        }
        let l = walk_with(d.path(), 32, None, 2, &|_, _| Placed::Yes);
        let kept: Vec<_> = l.files.iter().map(|f| f.name.clone()).collect();
        assert_eq!(kept, ["z/old", "a/mid"]);
        assert_eq!(l.total_files, 4);
    }

    /// Pruning removes subdirectories empty for `settle` (a chain of them at once), never
    /// the spool, never one with anything in it (a hidden file too), never a young one.
    #[test]
    fn pruning_removes_old_empty_subdirectories_only() {
        let d = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        let age = |p: &Path| {
            std::fs::File::open(p).unwrap().set_modified(old).unwrap();
        };
        for rel in ["empty/er/est", "kept", "young"] {
            std::fs::create_dir_all(d.path().join(rel)).unwrap();
        }
        std::fs::write(d.path().join("kept/.hidden"), b"x").unwrap();
        for rel in ["empty/er/est", "empty/er", "empty", "kept"] {
            age(&d.path().join(rel));
        }
        age(d.path());
        let l = walk_with(d.path(), 32, Some(Duration::from_secs(1)), 100, &|_, _| {
            Placed::Yes
        });
        assert_eq!(l.total_files, 0);
        assert!(
            !d.path().join("empty").exists(),
            "the chain was not removed"
        );
        assert!(d.path().join("kept/.hidden").exists());
        assert!(d.path().join("young").exists());
        assert!(d.path().exists());
        // The spool itself, empty and old, stays.
        std::fs::remove_dir_all(d.path().join("kept")).unwrap();
        std::fs::remove_dir(d.path().join("young")).unwrap();
        age(d.path());
        walk_with(d.path(), 32, Some(Duration::ZERO), 100, &|_, _| Placed::Yes);
        assert!(d.path().is_dir());
    }

    /// A flat listing keeps the oldest files and the hashes of the next ones in order (its
    /// ranked tail); a names-only listing picks the names of a part of that tail, in its
    /// order, without those removed since and without names that are not in it.
    #[test]
    fn a_names_only_listing_picks_the_ranked_tail_in_order() {
        let d = tempfile::tempdir().unwrap();
        let base = std::time::SystemTime::now() - Duration::from_secs(3600);
        for i in 0..10u64 {
            let p = d.path().join(format!("f{i}"));
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            // f9 is the oldest.
            f.set_modified(base + Duration::from_secs(10 - i)).unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let all = |_: &std::ffi::OsStr| true;
        let l = list(d.path(), &all, 3, 5).unwrap();
        let kept: Vec<_> = l.files.iter().map(|f| f.name.clone()).collect();
        assert_eq!(kept, ["f9", "f8", "f7"]);
        assert_eq!(l.total_files, 10);
        let next: Vec<u64> = ["f6", "f5", "f4", "f3", "f2"]
            .iter()
            .map(|n| name_hash(std::ffi::OsStr::new(n)))
            .collect();
        assert_eq!(l.tail, next);
        std::fs::remove_file(d.path().join("f4")).unwrap();
        std::fs::write(d.path().join("new"), b"x").unwrap();
        let n = names(d.path(), &all, &l.tail[..4]).unwrap();
        assert_eq!(n.names, ["f6", "f5", "f3"]);
        assert_eq!(n.dir_id, l.dir_id);
        // Nothing asked, nothing picked; a filter applies.
        assert!(names(d.path(), &all, &[]).unwrap().names.is_empty());
        let no_f5 = |n: &std::ffi::OsStr| n != "f5";
        assert_eq!(
            names(d.path(), &no_f5, &l.tail).unwrap().names,
            ["f6", "f3", "f2"]
        );
    }

    /// The spool itself may be configured through a symlink (as a flat one may): walked.
    #[test]
    fn a_spool_reached_through_a_link_is_walked() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir_all(real.join("a")).unwrap();
        std::fs::write(real.join("a/f"), b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let l = walk_with(&link, 32, None, 100, &|_, _| Placed::Yes);
        assert_eq!(names_of(&l), ["a/f"]);
    }
}
