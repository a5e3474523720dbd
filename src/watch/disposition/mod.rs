//! What happens to a file after its upload: moved to `done_dir` or deleted after success,
//! moved to `failed_dir` with a `.reason` file after giving up. Never overwrites anything,
//! works across filesystems, and makes the result durable without one fsync per file.
//!
//! Runs on the watch's [lane](super::lane) (blocking threads), holding the file's
//! [`Claim`](super::claim::Claim) so no other instance touches the file meanwhile.
//!
//! - `names`: the names chosen (fitting, extensions, suffixes, hidden names), pure;
//! - `ops`: the filesystem operations (first free name, never replacing; durable copy
//!   across filesystems; [`put_back`] into the spool);
//! - `delete`: deleting through a hidden name, and the leftovers of a crash;
//! - `syncer`: the state dispositions share (directory fsyncs, deletes in progress);
//! - here: the entry points the uploader calls, which check the file is still the one sent.

mod delete;
mod names;
mod ops;
mod syncer;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::claim;
use super::core::Identity;
use crate::esc::esc;
use crate::files::{At, Dir};
use names::Naming;
use ops::{copy_across, rename_into, rename_to_free, return_unsent, Unsent};

pub use delete::{delete_if_ours, restore_stale_deletions, warn_stale_temporaries};
pub use ops::put_back;
pub use syncer::Syncer;

/// What [`move_if_ours`] / [`delete_if_ours`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposed {
    /// Moved there (`Some`), or deleted (`None`).
    Done(Option<PathBuf>),
    /// The name no longer holds the inode we sent (replaced or removed meanwhile): our file
    /// has left the spool already and whatever the name holds now was not touched (or was
    /// put back). The name must be looked at again.
    NotOurs,
    /// Still our inode, but its content changed after it was checked: left (or put back) in
    /// the spool, to be sent again.
    Changed,
}

/// The same inode with the same content. A rename changes the ctime, so it is not compared.
fn is_ours(now: &Identity, id: &Identity) -> bool {
    now.same_inode(id) && now.size == id.size && now.mtime_ns == id.mtime_ns
}

/// Is `at` still exactly `id`? `None` if so, else what to report.
fn check_ours(at: &At, id: &Identity) -> io::Result<Option<Disposed>> {
    match claim::lstat_at(at) {
        Ok(now) if now == *id => Ok(None),
        Ok(now) if now.same_inode(id) => Ok(Some(Disposed::Changed)),
        Ok(_) => Ok(Some(Disposed::NotOurs)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Disposed::NotOurs)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot inspect {}: {e}", esc(&at.shown)),
        )),
    }
}

/// After renaming the spool entry `rel` to `moved`: if `moved` is not the inode `id` (the
/// name was swapped between our check and our rename, or the file changed), it goes back
/// into the spool, never replacing anything: under its name, or a free suffixed one if that
/// is taken again. A file never leaves the spool unsent.
fn verify_moved(
    spool: &Dir,
    rel: &OsStr,
    moved: At,
    id: &Identity,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    let now = claim::lstat_at(&moved).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot inspect {} after moving it: {e}", esc(&moved.shown)),
        )
    })?;
    if is_ours(&now, id) {
        return Ok(Disposed::Done(Some(moved.shown)));
    }
    return_unsent(&moved, spool, rel, syncer)?;
    Ok(if now.same_inode(id) {
        Disposed::Changed
    } else {
        Disposed::NotOurs
    })
}

/// Where a delivered or given-up file goes, which decides the names it may take there.
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    /// done_dir: the name, or a free `NAME.1`, `NAME.2`, …
    Done(&'a Dir),
    /// failed_dir: the same, but a name is only taken if its [`reason_path`] is free too,
    /// for [`write_reason`].
    Failed(&'a Dir),
}

/// Moves the spool entry `rel` (relative to `spool`, `/` between components) to the same
/// relative name in `dest` (its directories made as needed, never replacing anything; the
/// last component suffixed if taken), only if it still is the inode `id`, unchanged;
/// checked right before and, since the name may be swapped in between, again right after
/// the rename (see [`Disposed`]). Across filesystems by a durable copy, blocking: run it
/// on a blocking thread (the watch's lane). Through the directories' descriptors only.
///
/// `file` is the open (claimed) source, used for a copy so the bytes moved are the ones
/// that were checked; without it the copy opens the entry.
///
/// # Errors
/// Inspecting, renaming, copying or syncing failed, or something not a directory is in the
/// way in `dest`; the source is then still in the spool.
pub fn move_if_ours(
    file: Option<&File>,
    spool: &Dir,
    rel: &OsStr,
    id: &Identity,
    dest: Dest<'_>,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    let (dir, naming) = match dest {
        Dest::Done(dir) => (dir, Naming::Plain),
        Dest::Failed(dir) => (dir, Naming::Failed),
    };
    let from_path = spool.path().join(rel);
    let ctx = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot move {} to {}: {e}",
                esc(&from_path),
                esc(dir.path())
            ),
        )
    };
    let from = match spool.at(rel, false) {
        Ok(at) => at,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Disposed::NotOurs),
        Err(e) => return Err(ctx(e)),
    };
    if let Some(d) = check_ours(&from, id).map_err(ctx)? {
        return Ok(d);
    }
    let to = dir.at(rel, true).map_err(ctx)?;
    match rename_into(&from, &to, naming, syncer) {
        Ok(moved) => verify_moved(spool, rel, moved, id, syncer).map_err(ctx),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let source = Unsent { id, spool, rel };
            let (moved, removed) =
                copy_across(file, &from, Some(source), &to, syncer, naming).map_err(ctx)?;
            Ok(match removed {
                // The copy in `dir` is our content, read from the claimed descriptor; the
                // spool name held another file by then and keeps it.
                Disposed::Done(_) | Disposed::NotOurs => Disposed::Done(Some(moved.shown)),
                Disposed::Changed => Disposed::Changed,
            })
        }
        Err(e) => Err(ctx(e)),
    }
}

/// The `.reason` file that goes with `moved` (in failed_dir): `NAME.reason`, `NAME` cut
/// short if needed to fit the longest file name.
pub fn reason_path(moved: &Path) -> PathBuf {
    let dir = moved.parent().unwrap_or(Path::new("."));
    dir.join(names::reason_name(moved.file_name().unwrap_or_default()))
}

/// Writes `text` beside a file moved to `failed` at `moved_to` (as [`move_if_ours`]
/// returned it), as `<final name>.reason`: to a hidden temporary first, synced, then
/// renamed, so a reader never sees it half written; through failed_dir's descriptor. A
/// name too long for the suffix is shortened, and a shortened name never replaces another
/// file's reason (`.1.reason`, …).
///
/// # Errors
/// `moved_to` is not in `failed`; creating, writing or renaming the reason file failed.
pub fn write_reason(
    failed: &Dir,
    moved_to: &Path,
    text: &str,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let ctx =
        |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("cannot write {}: {e}", esc(p)));
    let p = reason_path(moved_to);
    let at = moved_to
        .strip_prefix(failed.path())
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not in {}", esc(failed.path())),
            )
        })
        .and_then(|rel| failed.at(rel.as_os_str(), false))
        .map_err(|e| ctx(&p, e))?;
    // Shortened if needed: `<255-byte name>.reason` would not fit in a directory entry.
    let reason = at.sibling(&names::reason_name(&at.name));
    let tmp = at.sibling(&names::temp_name(&reason.name));
    let written = (|| {
        let mut f = tmp.create_new()?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // Never over an existing file: a spool file named `q.reason` may have failed before.
        rename_to_free(&tmp, &reason, Naming::Plain)
            .map_err(|e| e.into_io(|| "no free name".to_string()))
    })();
    match written {
        Ok(to) => {
            syncer.mark(&at.dir);
            Ok(to.shown)
        }
        Err(e) => {
            let _ = tmp.unlink();
            Err(ctx(&p, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names::NAME_MAX;
    use super::*;
    use std::collections::HashSet;
    use std::ffi::OsString;

    // The tests below were written against path-based forms; these shims give them those
    // forms over the descriptor-based functions (each opens the directories anew).
    fn dir(p: &Path) -> Dir {
        Dir::open(p).unwrap()
    }
    fn at(p: &Path) -> At {
        dir(p.parent().unwrap())
            .at(p.file_name().unwrap(), false)
            .unwrap()
    }
    fn put_back(from: &Path, spool: &Path, name: &OsStr, s: &Syncer) -> io::Result<PathBuf> {
        super::put_back(&at(from), &dir(spool), name, s)
    }
    fn copy_across(
        file: Option<&File>,
        from: &Path,
        id: Option<&Identity>,
        d: &Path,
        name: &OsStr,
        s: &Syncer,
        naming: Naming,
    ) -> io::Result<(PathBuf, Disposed)> {
        let spool = dir(from.parent().unwrap());
        let rel = from.file_name().unwrap();
        let source = id.map(|id| Unsent {
            id,
            spool: &spool,
            rel,
        });
        let to = Dir::open(d)?.at(name, true)?;
        super::copy_across(file, &at(from), source, &to, s, naming).map(|(a, d)| (a.shown, d))
    }
    #[derive(Clone, Copy)]
    enum Dest<'a> {
        Done(&'a Path),
        Failed(&'a Path),
    }
    fn move_if_ours(
        file: Option<&File>,
        from: &Path,
        id: &Identity,
        dest: Dest<'_>,
        name: &OsStr,
        s: &Syncer,
    ) -> io::Result<Disposed> {
        assert_eq!(from.file_name().unwrap(), name);
        let spool = dir(from.parent().unwrap());
        match dest {
            Dest::Done(d) => {
                super::move_if_ours(file, &spool, name, id, super::Dest::Done(&dir(d)), s)
            }
            Dest::Failed(d) => {
                super::move_if_ours(file, &spool, name, id, super::Dest::Failed(&dir(d)), s)
            }
        }
    }
    fn delete_if_ours(p: &Path, id: &Identity, s: &Syncer) -> io::Result<Disposed> {
        super::delete_if_ours(&dir(p.parent().unwrap()), p.file_name().unwrap(), id, s)
    }
    fn verify_moved(p: &Path, moved: PathBuf, id: &Identity, s: &Syncer) -> io::Result<Disposed> {
        let spool = dir(p.parent().unwrap());
        super::verify_moved(&spool, p.file_name().unwrap(), at(&moved), id, s)
    }
    fn write_reason(to: &Path, text: &str, s: &Syncer) -> io::Result<PathBuf> {
        super::write_reason(&dir(to.parent().unwrap()), to, text, s)
    }

    /// Where a disposition moved the file; anything else fails the test.
    fn moved_to(d: io::Result<Disposed>) -> PathBuf {
        match d {
            Ok(Disposed::Done(Some(to))) => to,
            other => panic!("not moved: {other:?}"),
        }
    }

    #[test]
    fn put_back_never_overwrites_and_keeps_the_extension() {
        let spool = tempfile::tempdir().unwrap();
        let failed = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        std::fs::write(spool.path().join("r.csv"), b"new").unwrap();
        let from = failed.path().join("r.csv");
        std::fs::write(&from, b"old").unwrap();
        let to = put_back(&from, spool.path(), OsStr::new("r.csv"), &syncer).unwrap();
        assert_eq!(to, spool.path().join("r.1.csv"));
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
        assert_eq!(std::fs::read(spool.path().join("r.csv")).unwrap(), b"new");
        assert!(!from.exists());
        // Across filesystems the copy takes a spool name too.
        std::fs::write(&from, b"older").unwrap();
        let (to, _) = copy_across(
            None,
            &from,
            None,
            spool.path(),
            OsStr::new("r.csv"),
            &syncer,
            Naming::Spool,
        )
        .unwrap();
        assert_eq!(to, spool.path().join("r.2.csv"));
        assert_eq!(std::fs::read(&to).unwrap(), b"older");
        assert!(!from.exists());
        // A missing source is an error naming it; nothing is created.
        let e = put_back(&from, spool.path(), OsStr::new("r.csv"), &syncer).unwrap_err();
        assert!(e.to_string().contains("r.csv"), "{e}");
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_name_swapped_before_the_move_is_left_alone() {
        let spool = tempfile::tempdir().unwrap();
        let done = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        let p = spool.path().join("r");
        std::fs::write(&p, b"old").unwrap();
        let old = claim::lstat(&p).unwrap();
        let tmp = spool.path().join(".r.part");
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let d = move_if_ours(
            None,
            &p,
            &old,
            Dest::Done(done.path()),
            OsStr::new("r"),
            &syncer,
        )
        .unwrap();
        assert_eq!(d, Disposed::NotOurs);
        assert_eq!(
            delete_if_ours(&p, &old, &syncer).unwrap(),
            Disposed::NotOurs
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert!(std::fs::read_dir(done.path()).unwrap().next().is_none());
        // Swapped between check and rename: put back, never lost.
        let new = claim::lstat(&p).unwrap();
        let moved = done.path().join("r");
        std::fs::rename(&p, &moved).unwrap();
        std::fs::write(&p, b"newer").unwrap();
        assert_eq!(
            verify_moved(&p, moved.clone(), &old, &syncer).unwrap(),
            Disposed::NotOurs
        );
        assert!(!moved.exists());
        assert_eq!(std::fs::read(spool.path().join("r.1")).unwrap(), b"new");
        assert_eq!(std::fs::read(&p).unwrap(), b"newer");
        let _ = new;
    }

    #[test]
    fn a_failed_file_and_its_reason_keep_matching_names() {
        let spool = tempfile::tempdir().unwrap();
        let failed = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        std::fs::write(failed.path().join("y.reason"), b"a user's file").unwrap();
        let p = spool.path().join("y");
        std::fs::write(&p, b"y").unwrap();
        let id = claim::lstat(&p).unwrap();
        let d = move_if_ours(
            None,
            &p,
            &id,
            Dest::Failed(failed.path()),
            OsStr::new("y"),
            &syncer,
        )
        .unwrap();
        let to = failed.path().join("y.1");
        assert_eq!(d, Disposed::Done(Some(to.clone())));
        let r = write_reason(&to, "why", &syncer).unwrap();
        assert_eq!(r, failed.path().join("y.1.reason"));
        assert_eq!(r, reason_path(&to));
        assert_eq!(
            std::fs::read(failed.path().join("y.reason")).unwrap(),
            b"a user's file"
        );
        // Across filesystems the same rule applies to the copy's final name.
        std::fs::write(&p, b"y2").unwrap();
        let id = claim::lstat(&p).unwrap();
        std::fs::write(failed.path().join("y.2.reason"), b"another").unwrap();
        let (to, _) = copy_across(
            None,
            &p,
            Some(&id),
            failed.path(),
            OsStr::new("y"),
            &syncer,
            Naming::Failed,
        )
        .unwrap();
        assert_eq!(to, failed.path().join("y.3"));
    }

    #[test]
    fn longest_failed_names_keep_distinct_reasons() {
        let spool = tempfile::tempdir().unwrap();
        let failed = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        let name = OsString::from("f".repeat(NAME_MAX));
        let mut pairs = Vec::new();
        for i in 0..3 {
            let p = spool.path().join(&name);
            std::fs::write(&p, format!("{i}")).unwrap();
            let id = claim::lstat(&p).unwrap();
            let Disposed::Done(Some(to)) =
                move_if_ours(None, &p, &id, Dest::Failed(failed.path()), &name, &syncer).unwrap()
            else {
                panic!("not moved")
            };
            let r = write_reason(&to, "why", &syncer).unwrap();
            assert_eq!(r, reason_path(&to));
            pairs.push((to, r));
        }
        // The first keeps its whole name; the others are shortened so `.reason` fits.
        assert_eq!(pairs[0].0, failed.path().join(&name));
        for (to, r) in &pairs[1..] {
            let mut expect = to.file_name().unwrap().to_owned();
            expect.push(".reason");
            assert_eq!(r.file_name().unwrap(), expect);
        }
        let distinct: HashSet<_> = pairs.iter().map(|(_, r)| r).collect();
        assert_eq!(distinct.len(), 3, "{pairs:?}");
    }

    #[test]
    fn copy_errors_do_not_name_the_random_temporary() {
        let spool = tempfile::tempdir().unwrap();
        let missing = spool.path().join("no-such-dir");
        let syncer = Syncer::default();
        let p = spool.path().join("c");
        std::fs::write(&p, b"c").unwrap();
        let id = claim::lstat(&p).unwrap();
        let errs: Vec<String> = (0..3)
            .map(|_| {
                copy_across(
                    None,
                    &p,
                    Some(&id),
                    &missing,
                    OsStr::new("c"),
                    &syncer,
                    Naming::Plain,
                )
                .unwrap_err()
                .to_string()
            })
            .collect();
        assert_eq!(errs[0], errs[1]);
        assert_eq!(errs[1], errs[2]);
        assert!(!errs[0].contains("accio-"), "{}", errs[0]);
        assert!(errs[0].contains("no-such-dir"), "{}", errs[0]);
        assert!(p.exists());
    }

    #[test]
    fn a_reason_never_replaces_a_file() {
        let failed = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        let q = failed.path().join("q");
        std::fs::write(&q, b"q").unwrap();
        std::fs::write(failed.path().join("q.reason"), b"a failed file").unwrap();
        let r = write_reason(&q, "why", &syncer).unwrap();
        assert_eq!(r, failed.path().join("q.reason.1"));
        assert_eq!(std::fs::read(&r).unwrap(), b"why");
        assert_eq!(
            std::fs::read(failed.path().join("q.reason")).unwrap(),
            b"a failed file"
        );
    }

    #[test]
    fn move_never_overwrites() {
        let spool = tempfile::tempdir().unwrap();
        let done = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        std::fs::write(done.path().join("a"), b"old").unwrap();
        std::fs::write(done.path().join("a.1"), b"old1").unwrap();
        let src = spool.path().join("a");
        std::fs::write(&src, b"new").unwrap();
        let f = File::open(&src).unwrap();
        let id = claim::lstat(&src).unwrap();
        let to = moved_to(move_if_ours(
            Some(&f),
            &src,
            &id,
            Dest::Done(done.path()),
            OsStr::new("a"),
            &syncer,
        ));
        assert_eq!(to, done.path().join("a.2"));
        assert_eq!(std::fs::read(done.path().join("a")).unwrap(), b"old");
        assert_eq!(std::fs::read(done.path().join("a.1")).unwrap(), b"old1");
        assert_eq!(std::fs::read(&to).unwrap(), b"new");
        assert!(!src.exists());
        syncer.flush_blocking();
    }

    #[test]
    fn longest_names_get_suffixes_and_reasons() {
        let spool = tempfile::tempdir().unwrap();
        let done = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        let name = OsString::from("n".repeat(NAME_MAX));
        let mut moved = Vec::new();
        for content in [&b"one"[..], b"two"] {
            let src = spool.path().join(&name);
            std::fs::write(&src, content).unwrap();
            let f = File::open(&src).unwrap();
            let id = claim::lstat(&src).unwrap();
            moved.push(moved_to(move_if_ours(
                Some(&f),
                &src,
                &id,
                Dest::Done(done.path()),
                &name,
                &syncer,
            )));
            // Across filesystems too (the temporary name must fit as well).
            std::fs::write(&src, content).unwrap();
            let f = File::open(&src).unwrap();
            moved.push(
                copy_across(
                    Some(&f),
                    &src,
                    None,
                    done.path(),
                    &name,
                    &syncer,
                    Naming::Failed,
                )
                .unwrap()
                .0,
            );
        }
        assert_eq!(moved[0], done.path().join(&name));
        // on_success = "delete" goes through a temporary name as well.
        let src = spool.path().join(&name);
        std::fs::write(&src, b"three").unwrap();
        let id = claim::lstat(&src).unwrap();
        delete_if_ours(&src, &id, &syncer).unwrap();
        assert!(!src.exists());
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
        let distinct: HashSet<_> = moved.iter().collect();
        assert_eq!(distinct.len(), 4, "{moved:?}");
        let reasons: Vec<_> = moved
            .iter()
            .map(|m| write_reason(m, "why", &syncer).unwrap())
            .collect();
        let distinct: HashSet<_> = reasons.iter().collect();
        assert_eq!(distinct.len(), 4, "a reason replaced another: {reasons:?}");
        for r in &reasons {
            assert!(r.file_name().unwrap().len() <= NAME_MAX);
            assert_eq!(std::fs::read(r).unwrap(), b"why");
        }
        syncer.flush_blocking();
    }

    #[test]
    fn copy_across_keeps_source_until_copied() {
        let spool = tempfile::tempdir().unwrap();
        let done = tempfile::tempdir().unwrap();
        let syncer = Syncer::default();
        let src = spool.path().join("b");
        std::fs::write(&src, b"content").unwrap();
        std::fs::write(done.path().join("b"), b"other").unwrap();
        let f = File::open(&src).unwrap();
        let id = claim::lstat(&src).unwrap();
        let (to, removed) = copy_across(
            Some(&f),
            &src,
            Some(&id),
            done.path(),
            OsStr::new("b"),
            &syncer,
            Naming::Plain,
        )
        .unwrap();
        assert_eq!(removed, Disposed::Done(None));
        assert_eq!(to, done.path().join("b.1"));
        assert_eq!(std::fs::read(&to).unwrap(), b"content");
        assert!(!src.exists());
        // No temporary left behind.
        let names: Vec<_> = std::fs::read_dir(done.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn relative_names_keep_the_tree() {
        let spool = tempfile::tempdir().unwrap();
        let done = tempfile::tempdir().unwrap();
        let failed = tempfile::tempdir().unwrap();
        let (sd, dd, fd) = (dir(spool.path()), dir(done.path()), dir(failed.path()));
        let syncer = Syncer::default();
        std::fs::create_dir_all(spool.path().join("a/b")).unwrap();
        let rel = OsStr::new("a/b/x.jpg");
        let p = spool.path().join(rel);
        std::fs::write(&p, b"1").unwrap();
        let id = claim::lstat(&p).unwrap();
        // done_dir/a/b made as needed.
        let d = super::move_if_ours(None, &sd, rel, &id, super::Dest::Done(&dd), &syncer);
        assert_eq!(moved_to(d), done.path().join(rel));
        // Same collision rule, on the last component only.
        std::fs::write(&p, b"2").unwrap();
        let id = claim::lstat(&p).unwrap();
        let d = super::move_if_ours(None, &sd, rel, &id, super::Dest::Done(&dd), &syncer);
        assert_eq!(moved_to(d), done.path().join("a/b/x.jpg.1"));
        // failed_dir keeps the tree too, the reason beside the file.
        std::fs::write(&p, b"3").unwrap();
        let id = claim::lstat(&p).unwrap();
        let d = super::move_if_ours(None, &sd, rel, &id, super::Dest::Failed(&fd), &syncer);
        let to = moved_to(d);
        assert_eq!(to, failed.path().join(rel));
        let r = super::write_reason(&fd, &to, "why", &syncer).unwrap();
        assert_eq!(r, failed.path().join("a/b/x.jpg.reason"));
        // Put back into a spool whose subdirectory was pruned meanwhile: made again.
        std::fs::remove_dir_all(spool.path().join("a")).unwrap();
        let from = fd.at(rel, false).unwrap();
        let back = super::put_back(&from, &sd, rel, &syncer).unwrap();
        assert_eq!(back, p);
        assert_eq!(std::fs::read(&p).unwrap(), b"3");
        // Something not a directory in the way in done_dir: a clear error, the file stays.
        std::fs::write(done.path().join("c"), b"a file").unwrap();
        std::fs::create_dir(spool.path().join("c")).unwrap();
        let q = spool.path().join("c/y");
        std::fs::write(&q, b"y").unwrap();
        let id = claim::lstat(&q).unwrap();
        let e = super::move_if_ours(
            None,
            &sd,
            OsStr::new("c/y"),
            &id,
            super::Dest::Done(&dd),
            &syncer,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(q.exists());
        assert_eq!(std::fs::read(done.path().join("c")).unwrap(), b"a file");
        // A symlink in done_dir's tree is not followed.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), done.path().join("l")).unwrap();
        std::fs::create_dir(spool.path().join("l")).unwrap();
        let q = spool.path().join("l/z");
        std::fs::write(&q, b"z").unwrap();
        let id = claim::lstat(&q).unwrap();
        let e = super::move_if_ours(
            None,
            &sd,
            OsStr::new("l/z"),
            &id,
            super::Dest::Done(&dd),
            &syncer,
        )
        .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(q.exists());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // Names that would leave a directory are refused, never resolved.
        for bad in ["../x", "/x", "a/../../x", "a/./x"] {
            let e = super::move_if_ours(
                None,
                &sd,
                OsStr::new(bad),
                &id,
                super::Dest::Done(&dd),
                &syncer,
            )
            .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}: {e}");
            let e = super::delete_if_ours(&sd, OsStr::new(bad), &id, &syncer).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}: {e}");
        }
        syncer.flush_blocking();
    }

    #[test]
    fn moves_follow_the_descriptors_not_the_paths() {
        // The parent of spool and done_dir renamed away after they were opened, and a
        // directory put in its place under the old name (a redirect attempt).
        let top = tempfile::tempdir().unwrap();
        let base = top.path().join("base");
        std::fs::create_dir_all(base.join("spool/a")).unwrap();
        std::fs::create_dir_all(base.join("done")).unwrap();
        let (sd, dd) = (dir(&base.join("spool")), dir(&base.join("done")));
        let syncer = Syncer::default();
        std::fs::rename(&base, top.path().join("moved")).unwrap();
        std::fs::create_dir_all(base.join("spool/a")).unwrap();
        std::fs::create_dir_all(base.join("done")).unwrap();
        let real = top.path().join("moved");
        std::fs::write(real.join("spool/a/x"), b"x").unwrap();
        std::fs::write(real.join("spool/y"), b"y").unwrap();
        let id = claim::lstat(&real.join("spool/a/x")).unwrap();
        super::move_if_ours(
            None,
            &sd,
            OsStr::new("a/x"),
            &id,
            super::Dest::Done(&dd),
            &syncer,
        )
        .unwrap();
        let id = claim::lstat(&real.join("spool/y")).unwrap();
        super::move_if_ours(
            None,
            &sd,
            OsStr::new("y"),
            &id,
            super::Dest::Done(&dd),
            &syncer,
        )
        .unwrap();
        syncer.flush_blocking();
        assert_eq!(std::fs::read(real.join("done/a/x")).unwrap(), b"x");
        assert_eq!(std::fs::read(real.join("done/y")).unwrap(), b"y");
        assert_eq!(std::fs::read_dir(base.join("done")).unwrap().count(), 0);
    }
}
