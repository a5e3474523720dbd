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
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::claim;
use super::core::{Hint, Kind, Listed, Listing};
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
}

/// The running kernel watch. Dropping it stops the events.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    /// Per directory, (device, inode) as it was right before it was watched.
    dir_ids: Vec<(u64, u64)>,
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
        let _ = self.inner.unwatch(dir);
        self.inner
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| fatal(dir, e))
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

/// Starts watching `dirs` (non-recursively). Hints go to `tx`; when it is full, `overflow`
/// is raised instead. `dirs[i]` is watch number `i`; they must be absolute. Names that
/// `filters[i]` refuses are dropped here already: writers' temporary files make most of the
/// events, and they need not cross the channel.
///
/// # Errors
/// [`FatalError`] when a directory cannot be watched, with inotify's limits named.
pub fn start(
    dirs: &[PathBuf],
    filters: Vec<NameFilter>,
    tx: mpsc::Sender<Msg>,
    overflow: Arc<AtomicBool>,
) -> Result<Watcher, FatalError> {
    let index: HashMap<PathBuf, usize> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i))
        .collect();
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
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            if let Some(&watch) = index.get(parent) {
                if !filters[watch].accepts(name) {
                    continue;
                }
                send(Msg::Hint {
                    watch,
                    name: name.to_os_string(),
                    hint,
                });
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
    for dir in dirs {
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
    Ok(Watcher { inner, dir_ids })
}

/// Lists `dir`, bounded: the `limit` oldest (mtime, then name) regular files whose names
/// pass `accepts`, how many such files there are in all, and every entry that is not a
/// regular file. Memory follows `limit`, not the directory's size. Blocking; run it with
/// `spawn_blocking`.
///
/// # Errors
/// The directory cannot be read. Entries that vanish while listing are skipped.
pub fn list(
    dir: &Path,
    accepts: &dyn Fn(&std::ffi::OsStr) -> bool,
    limit: usize,
) -> io::Result<Listing> {
    use std::collections::BinaryHeap;
    use std::os::unix::fs::MetadataExt;
    /// Ordered by age, so the heap's top is the youngest kept.
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
    let limit = limit.max(1);
    let meta = std::fs::metadata(dir)?;
    let mut oldest: BinaryHeap<ByAge> = BinaryHeap::new();
    let mut specials = Vec::new();
    let mut total_files = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !accepts(&name) {
            continue;
        }
        match claim::lstat(&entry.path()) {
            Ok(id) if id.kind != Kind::Regular => specials.push(Listed { name, id }),
            Ok(id) => {
                total_files += 1;
                let l = ByAge(Listed { name, id });
                if oldest.len() < limit {
                    oldest.push(l);
                } else if oldest.peek().is_some_and(|top| l < *top) {
                    oldest.pop();
                    oldest.push(l);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("cannot inspect {}: {e}", esc(&entry.path()))
            }
        }
    }
    let files = oldest.into_sorted_vec().into_iter().map(|l| l.0).collect();
    Ok(Listing {
        dir_id: (meta.dev(), meta.ino()),
        files,
        total_files,
        specials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_full_channel_raises_overflow_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::path::absolute(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let overflow = Arc::new(AtomicBool::new(false));
        let filter = NameFilter::new(&["*".to_string()], &[]).unwrap();
        let _w = start(
            std::slice::from_ref(&path),
            vec![filter],
            tx,
            overflow.clone(),
        )
        .unwrap();
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
}
