//! Deleting a delivered file safely (through a hidden name of ours, checked there), and the
//! leftovers a crash can leave: hidden deletes (put back into the spool) and temporary
//! copies (reported).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::names::{self, Naming};
use super::ops::{rename_to_free, return_unsent};
use super::{check_ours, is_ours, Disposed, Syncer};
use crate::esc::esc;
use crate::files::{rename_noreplace_at, At, Dir};
use crate::watch::claim;
use crate::watch::core::Identity;

/// Deletes the spool entry `rel` (relative to `spool`) only if it still is the inode `id`,
/// unchanged. An unlink by name cannot be checked, so the entry is first renamed to a
/// hidden name of ours in its own directory (`.accio-del.<16 hex>.NAME`), checked there,
/// and only then unlinked; if it is not ours it goes back into the spool.
///
/// # Errors
/// Inspecting, renaming or unlinking failed; the file is still in the spool.
pub fn delete_if_ours(
    spool: &Dir,
    rel: &OsStr,
    id: &Identity,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    match spool.at(rel, false) {
        Ok(at) => delete_at(&at, spool, rel, id, syncer),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Disposed::NotOurs),
        Err(e) => Err(e),
    }
}

/// [`delete_if_ours`] of `at`, the entry `rel` of `spool` resolved already.
pub(super) fn delete_at(
    at: &At,
    spool: &Dir,
    rel: &OsStr,
    id: &Identity,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    if let Some(d) = check_ours(at, id)? {
        return Ok(d);
    }
    let tmp = at.sibling(&names::del_name(&at.name));
    let path = &at.shown;
    // Errors name `path`, never the random hidden name: that is the file the operator knows,
    // and a repeated failure reads the same each time.
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", esc(path)))
    };
    let _deleting = syncer.deleting(&tmp.shown);
    rename_noreplace_at(at, &tmp).map_err(|e| ctx("delete", e))?;
    match claim::lstat_at(&tmp) {
        Ok(now) if is_ours(&now, id) => {
            tmp.unlink().map_err(|e| {
                tracing::warn!(
                    path = %esc(&tmp.shown),
                    "cannot unlink {} (the delivered {} renamed for its delete): {e}; it is put back when stale",
                    esc(&tmp.shown),
                    esc(path)
                );
                ctx("delete", e)
            })?;
            syncer.mark(&at.dir);
            Ok(Disposed::Done(None))
        }
        Ok(now) => {
            return_unsent(&tmp, spool, rel, syncer)?;
            Ok(if now.same_inode(id) {
                Disposed::Changed
            } else {
                Disposed::NotOurs
            })
        }
        Err(e) => Err(ctx("inspect (renamed for its delete)", e)),
    }
}

/// Which time says how long a leftover has been untouched.
#[derive(Debug, Clone, Copy)]
enum Age {
    /// A copy: its data were written that long ago (mtime).
    Written,
    /// A delete: a rename keeps the mtime, so the ctime says when it was renamed.
    Renamed,
}

/// Entries of `dir` that `ours` recognises, untouched for `stale_after` (the config's: a
/// live one, of this or another instance, is younger), by the time `age` names.
fn stale_ours(
    dir: &Path,
    ours: impl Fn(&OsStr) -> bool,
    age: Age,
    stale_after: Duration,
) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let old = std::time::SystemTime::now() - stale_after;
    rd.flatten()
        .filter(|e| ours(&e.file_name()))
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                let (s, ns) = match age {
                    Age::Renamed => (m.ctime(), m.ctime_nsec()),
                    Age::Written => (m.mtime(), m.mtime_nsec()),
                };
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32);
                m.is_file() && t < old
            })
        })
        .map(|e| e.path())
        .collect()
}

/// Reports copies into `dir` (done_dir, failed_dir) that a crash seems to have interrupted:
/// `.NAME.accio-XXXXXXXX.tmp`, untouched for `stale_after`. Never deletes them: a user's
/// file may match the pattern, and the source of a real leftover is still in the spool.
/// Blocking.
pub fn warn_stale_temporaries(dir: &Path, stale_after: Duration) {
    let ours = |n: &OsStr| names::is_our_temporary(n, "tmp");
    for p in stale_ours(dir, ours, Age::Written, stale_after) {
        tracing::warn!(
            path = %esc(&p),
            "{} looks like a temporary copy left by an interrupted move; the original stayed in the spool; remove it if it is not yours",
            esc(&p)
        );
    }
}

/// How deep [`restore_stale_deletions`] looks into a spool's subdirectories.
const MAX_DEPTH: usize = 64;

/// The names (relative to `spool`, `/` between components) of its entries, in its
/// subdirectories too (`max_depth` levels down), that `ours` recognises and that were
/// renamed more than `stale_after` ago. Never follows a symbolic link; hidden directories
/// are not entered.
fn stale_in_tree(
    spool: &Path,
    ours: impl Fn(&OsStr) -> bool,
    stale_after: Duration,
    max_depth: usize,
) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut todo = vec![(spool.to_path_buf(), OsString::new(), 0usize)];
    while let Some((dir, prefix, depth)) = todo.pop() {
        for p in stale_ours(&dir, &ours, Age::Renamed, stale_after) {
            let mut rel = prefix.clone();
            rel.push(p.file_name().unwrap_or_default());
            out.push(rel);
        }
        if depth >= max_depth {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.as_bytes().starts_with(b".") || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let mut rel = prefix.clone();
            rel.push(&name);
            rel.push("/");
            todo.push((e.path(), rel, depth + 1));
        }
    }
    out
}

/// Puts back into the spool the files a crash (or a failed unlink) left under the hidden
/// name a delete uses (`.accio-del.<16 hex>.NAME`, in the spool or one of its
/// subdirectories), renamed more than `stale_after` ago and not a delete in progress of the
/// service `syncer` belongs to: whether it was the delivered file or another one is not
/// known any more, so it is sent (again). Never replaces a file: a taken name gets a
/// suffix. Found by listing the spool (with `subdirs`, its tree: a watch of subdirectories),
/// moved through its descriptor. Run at start and periodically. Blocking. Returns how many
/// were restored.
pub fn restore_stale_deletions(
    spool: &Dir,
    subdirs: bool,
    syncer: &Syncer,
    stale_after: Duration,
) -> usize {
    let mut restored = 0;
    let ours = |n: &OsStr| names::del_original(n).is_some();
    let depth = if subdirs { MAX_DEPTH } else { 0 };
    for rel in stale_in_tree(spool.path(), ours, stale_after, depth) {
        let p = spool.path().join(&rel);
        if syncer.is_deleting(&p) {
            continue;
        }
        let moved = spool
            .at(&rel, false)
            .map_err(|e| e.to_string())
            .and_then(|at| {
                let orig = names::del_original(&at.name)
                    .unwrap_or_default()
                    .to_os_string();
                let to = at.sibling(&orig);
                rename_to_free(&at, &to, Naming::Spool)
                    .map(|to| (at, to))
                    .map_err(|e| e.into_io(|| "no free name".to_string()).to_string())
            });
        match moved {
            Ok((at, to)) => {
                syncer.mark(&at.dir);
                restored += 1;
                tracing::warn!(
                    path = %esc(&to.shown),
                    "put {} back as {}: an interrupted delete left it hidden; it is sent again",
                    esc(&p),
                    esc(&to.shown)
                );
            }
            Err(e) => {
                tracing::warn!(
                    path = %esc(&p),
                    "cannot put {} (left hidden by an interrupted delete) back into the spool: {e}",
                    esc(&p)
                )
            }
        }
    }
    if restored > 0 {
        // Durable before it is reported done, as each disposition is once flushed.
        syncer.flush_blocking();
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_or_in_progress_hidden_delete_is_left_alone() {
        let spool = tempfile::tempdir().unwrap();
        let dir = Dir::open(spool.path()).unwrap();
        let syncer = Syncer::default();
        let h = spool.path().join(".accio-del.0123456789abcdef.f");
        std::fs::write(&h, b"f").unwrap();
        // Renamed just now: possibly another instance's delete in progress.
        let stale_after = Duration::from_secs(60);
        assert_eq!(restore_stale_deletions(&dir, true, &syncer, stale_after), 0);
        assert!(h.exists());
        // Old enough, but a delete of this service in progress.
        let deleting = syncer.deleting(&h);
        assert_eq!(
            restore_stale_deletions(&dir, true, &syncer, Duration::ZERO),
            0
        );
        assert!(h.exists());
        drop(deleting);
        assert!(!syncer.is_deleting(&h));
    }

    #[test]
    fn a_changed_file_is_not_deleted() {
        let spool = tempfile::tempdir().unwrap();
        let dir = Dir::open(spool.path()).unwrap();
        let syncer = Syncer::default();
        let p = spool.path().join("d.csv");
        std::fs::write(&p, b"d").unwrap();
        let id = claim::lstat(&p).unwrap();
        std::fs::write(&p, b"changed").unwrap();
        assert_eq!(
            delete_if_ours(&dir, OsStr::new("d.csv"), &id, &syncer).unwrap(),
            Disposed::Changed
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"changed");
        let id = claim::lstat(&p).unwrap();
        assert_eq!(
            delete_if_ours(&dir, OsStr::new("d.csv"), &id, &syncer).unwrap(),
            Disposed::Done(None)
        );
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    }

    #[test]
    fn hidden_deletes_in_subdirectories_are_put_back() {
        let spool = tempfile::tempdir().unwrap();
        let dir = Dir::open(spool.path()).unwrap();
        let syncer = Syncer::default();
        std::fs::create_dir_all(spool.path().join("a/b")).unwrap();
        let h = spool.path().join("a/b/.accio-del.0123456789abcdef.x.jpg");
        std::fs::write(&h, b"x").unwrap();
        std::fs::write(spool.path().join("a/b/x.jpg"), b"other").unwrap();
        // A watch of the spool alone does not look below it.
        assert_eq!(
            restore_stale_deletions(&dir, false, &syncer, Duration::ZERO),
            0
        );
        assert!(h.exists());
        assert_eq!(
            restore_stale_deletions(&dir, true, &syncer, Duration::ZERO),
            1
        );
        assert!(!h.exists());
        assert_eq!(
            std::fs::read(spool.path().join("a/b/x.1.jpg")).unwrap(),
            b"x"
        );
        // A delete in a subdirectory hides the file there, then removes it.
        let p = spool.path().join("a/b/y");
        std::fs::write(&p, b"y").unwrap();
        let id = claim::lstat(&p).unwrap();
        assert_eq!(
            delete_if_ours(&dir, OsStr::new("a/b/y"), &id, &syncer).unwrap(),
            Disposed::Done(None)
        );
        assert!(!p.exists());
        assert_eq!(
            std::fs::read_dir(spool.path().join("a/b")).unwrap().count(),
            2
        );
    }
}
