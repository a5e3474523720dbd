//! The filesystem operations dispositions are made of: taking the first free name (every
//! rename is [`rename_noreplace_at`], shared with `accio serve`'s rule), the durable copy
//! across filesystems, putting a file back into the spool. All of them act through
//! directories held open ([`At`]), never by resolving a path again.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use super::delete::delete_at;
use super::names::{self, Naming};
use super::{Disposed, Syncer};
use crate::esc::esc;
use crate::files::{rename_noreplace_at, At, Dir};
use crate::watch::core::Identity;

/// Why [`rename_to_free`] took no name.
#[derive(Debug)]
pub(super) enum FreeNameError {
    /// Renaming to `to` failed other than by the name being taken; `from` is in place.
    Rename { to: PathBuf, source: io::Error },
    /// Every candidate was taken.
    NoneFree,
}

impl FreeNameError {
    /// The bare error, for callers that say themselves what was moved where.
    pub(super) fn into_io(self, none_free: impl FnOnce() -> String) -> io::Error {
        match self {
            FreeNameError::Rename { source, .. } => source,
            FreeNameError::NoneFree => io::Error::new(io::ErrorKind::AlreadyExists, none_free()),
        }
    }
}

/// The directory of an entry, for messages.
pub(super) fn shown_dir(at: &At) -> &Path {
    at.shown.parent().unwrap_or(Path::new("."))
}

/// Renames `from` into `to`'s directory under the first free one of `naming`'s candidates
/// for `to`'s name, never replacing a file: a name that exists (or, in failed_dir, whose
/// `.reason` exists) is passed over. Returns the entry taken. Only the last component gets
/// a suffix.
pub(super) fn rename_to_free(from: &At, to: &At, naming: Naming) -> Result<At, FreeNameError> {
    for candidate in naming.candidates(&to.name) {
        let t = to.sibling(&candidate);
        if naming == Naming::Failed && t.sibling(&names::reason_name(&candidate)).lstat().is_ok() {
            continue;
        }
        match rename_noreplace_at(from, &t) {
            Ok(()) => return Ok(t),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(FreeNameError::Rename {
                    to: t.shown,
                    source,
                })
            }
        }
    }
    Err(FreeNameError::NoneFree)
}

/// Renames `from` to `to` or a free name beside it ([`rename_to_free`]) and marks both
/// directories for the [`Syncer`]. Cheap: no data copied, no fsync waited for.
///
/// # Errors
/// The bare OS error (callers say what was moved where); the source is still in place.
/// Across filesystems its raw OS code is `EXDEV`: [`copy_across`] then.
pub(super) fn rename_into(from: &At, to: &At, naming: Naming, syncer: &Syncer) -> io::Result<At> {
    let moved = rename_to_free(from, to, naming).map_err(|e| {
        e.into_io(|| {
            format!(
                "no free name for {} in {}",
                esc(Path::new(&to.name)),
                esc(shown_dir(to))
            )
        })
    })?;
    syncer.mark(&to.dir);
    syncer.mark(&from.dir);
    Ok(moved)
}

/// Moves `from` (a file outside the spool, e.g. in failed_dir) back into the spool `spool`
/// as `rel` (its directories made again if they are gone), or as a free `STEM.N.EXT`
/// beside it if that is taken: never replacing a file, and keeping the extension so the
/// watch's globs still match and it is sent. Across filesystems by a durable copy (the
/// source is removed only once the copy is synced). Blocking. Returns where it went.
///
/// # Errors
/// Renaming, copying or syncing failed; `from` is then still in place.
pub fn put_back(
    from: &At,
    spool: &Dir,
    rel: &std::ffi::OsStr,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let moved =
        spool
            .at(rel, true)
            .and_then(|to| match rename_into(from, &to, Naming::Spool, syncer) {
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    copy_across(None, from, None, &to, syncer, Naming::Spool).map(|(to, _)| to)
                }
                other => other,
            });
    moved.map(|to| to.shown).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot put {} back into {}: {e}",
                esc(&from.shown),
                esc(spool.path())
            ),
        )
    })
}

/// Renames `moved`, found not to be the file that was sent after it was renamed away from
/// `rel` in `spool`, back to `rel` (its directories made again if they went meanwhile) or a
/// free `STEM.N.EXT` beside it, and says so: it is sent on its own. A file never leaves
/// the spool unsent.
pub(super) fn return_unsent(
    moved: &At,
    spool: &Dir,
    rel: &std::ffi::OsStr,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let spool_path = spool.path().join(rel);
    let target = spool.at(rel, true);
    match target
        .map_err(|source| FreeNameError::Rename {
            to: spool_path.clone(),
            source,
        })
        .and_then(|t| rename_to_free(moved, &t, Naming::Spool).map(|to| (t, to)))
    {
        Ok((t, to)) => {
            syncer.mark(&t.dir);
            syncer.mark(&moved.dir);
            if to.shown == spool_path {
                tracing::warn!(
                    path = %esc(&spool_path),
                    "{} was replaced by another file while being moved; that file was put back, it is sent on its own",
                    esc(&spool_path)
                );
            } else {
                tracing::warn!(
                    path = %esc(&to.shown),
                    "{} was replaced by another file while being moved and the name is taken again; that file was put back as {}, it is sent on its own",
                    esc(&spool_path),
                    esc(&to.shown)
                );
            }
            Ok(to.shown)
        }
        Err(FreeNameError::Rename { to, source: e }) => {
            tracing::error!(
                path = %esc(&moved.shown),
                "{} is not the file that was sent, and it cannot be put back into the spool as {}: {e}; move it back by hand",
                esc(&moved.shown),
                esc(&to)
            );
            Err(io::Error::new(
                e.kind(),
                format!("cannot put {} back as {}: {e}", esc(&moved.shown), esc(&to)),
            ))
        }
        Err(FreeNameError::NoneFree) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "no free name to put {} back into the spool",
                esc(&moved.shown)
            ),
        )),
    }
}

/// The spool entry a copy's source is, when it is one: only that inode is removed
/// (see [`super::delete_if_ours`]), and what is not it goes back under `rel`.
pub(super) struct Unsent<'a> {
    pub id: &'a Identity,
    pub spool: &'a Dir,
    pub rel: &'a std::ffi::OsStr,
}

/// The move across filesystems: copy to a hidden temporary beside `to`, fsync it, rename it
/// (no replace) to a free name, fsync its directory, and only then unlink the source: only
/// if it still is the inode `source.id` when given (see [`super::delete_if_ours`]), by
/// name otherwise. A crash at any point leaves the source in place (in the spool: sent
/// again, at least once), never nothing. Returns where the copy went and what became of the
/// source.
///
/// `file` is the open (claimed) source, used for the copy so the bytes moved are the ones
/// that were checked; without it the copy opens `from`.
pub(super) fn copy_across(
    file: Option<&File>,
    from: &At,
    source: Option<Unsent<'_>>,
    to: &At,
    syncer: &Syncer,
    naming: Naming,
) -> io::Result<(At, Disposed)> {
    let ctx = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", esc(p)))
    };
    let dir = shown_dir(to);
    // Errors about the temporary name the file and the directory, never the random name:
    // those are what the operator knows, and a repeated failure reads the same each time.
    let tctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot {what} a temporary copy of {} in {}: {e}",
                esc(&from.shown),
                esc(dir)
            ),
        )
    };
    let tmp = to.sibling(&names::temp_name(&to.name));
    let result = (|| {
        let mut out = tmp.create_new().map_err(|e| tctx("create", e))?;
        let mut src = match file {
            Some(f) => f.try_clone()?,
            None => from
                .open_read()
                .map_err(|e| ctx("cannot open", &from.shown, e))?,
        };
        src.rewind()
            .map_err(|e| ctx("cannot read", &from.shown, e))?;
        io::copy(&mut src, &mut out).map_err(|e| tctx("write", e))?;
        out.flush().map_err(|e| tctx("write", e))?;
        out.sync_all().map_err(|e| tctx("sync", e))?;
        match rename_to_free(&tmp, to, naming) {
            Ok(moved) => {
                to.dir.fsync().map_err(|e| ctx("cannot sync", dir, e))?;
                Ok(moved)
            }
            Err(FreeNameError::Rename { to, source }) => {
                Err(ctx("cannot rename into", &to, source))
            }
            Err(FreeNameError::NoneFree) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "no free name for {} in {}",
                    esc(Path::new(&to.name)),
                    esc(dir)
                ),
            )),
        }
    })();
    match result {
        Ok(moved) => {
            // Only our inode is removed from the spool: the name may hold another file now.
            let removed = match source {
                Some(s) => delete_at(from, s.spool, s.rel, s.id, syncer).map_err(|e| {
                    ctx(
                        "copied to",
                        &moved.shown,
                        io::Error::new(e.kind(), format!("but {e}")),
                    )
                })?,
                None => {
                    from.unlink()
                        .map_err(|e| ctx("copied but cannot remove", &from.shown, e))?;
                    Disposed::Done(None)
                }
            };
            syncer.mark(&from.dir);
            Ok((moved, removed))
        }
        Err(e) => {
            let _ = tmp.unlink();
            Err(e)
        }
    }
}
