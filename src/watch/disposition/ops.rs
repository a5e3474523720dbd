//! The filesystem operations dispositions are made of: taking the first free name (every
//! rename is [`rename_noreplace`], shared with `accio serve`), the durable copy across
//! filesystems, putting a file back into the spool.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use super::names::{self, Naming};
use super::{delete_if_ours, Disposed, Syncer};
use crate::esc::esc;
use crate::files::rename_noreplace;
use crate::watch::core::Identity;

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

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

/// Renames `from` into `dir` under the first free one of `naming`'s candidates for `name`,
/// never replacing a file: a name that exists (or, in failed_dir, whose `.reason` exists)
/// is passed over. Returns the name taken.
pub(super) fn rename_to_free(
    from: &Path,
    dir: &Path,
    name: &OsStr,
    naming: Naming,
) -> Result<PathBuf, FreeNameError> {
    for candidate in naming.candidates(name) {
        let to = dir.join(&candidate);
        if naming == Naming::Failed
            && std::fs::symlink_metadata(dir.join(names::reason_name(&candidate))).is_ok()
        {
            continue;
        }
        match rename_noreplace(from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(FreeNameError::Rename { to, source }),
        }
    }
    Err(FreeNameError::NoneFree)
}

/// Renames `from` into `dir` under a free name ([`rename_to_free`]) and marks both
/// directories for the [`Syncer`]. Cheap: no data copied, no fsync waited for.
///
/// # Errors
/// The bare OS error (callers say what was moved where); the source is still in place.
/// Across filesystems its raw OS code is `EXDEV`: [`copy_across`] then.
pub(super) fn rename_into(
    from: &Path,
    dir: &Path,
    name: &OsStr,
    naming: Naming,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let to = rename_to_free(from, dir, name, naming).map_err(|e| {
        e.into_io(|| format!("no free name for {} in {}", esc(Path::new(name)), esc(dir)))
    })?;
    syncer.mark(dir);
    if let Some(parent) = from.parent() {
        syncer.mark(parent);
    }
    Ok(to)
}

/// Moves `from` (a file outside the spool, e.g. in failed_dir) back into the spool
/// directory `spool_dir` as `name`, or as a free `STEM.N.EXT` if that is taken: never
/// replacing a file, and keeping the extension so the watch's globs still match and it is
/// sent. Across filesystems by a durable copy (the source is removed only once the copy is
/// synced). Blocking. Returns where it went.
///
/// # Errors
/// Renaming, copying or syncing failed; `from` is then still in place.
pub fn put_back(
    from: &Path,
    spool_dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let moved = match rename_into(from, spool_dir, name, Naming::Spool, syncer) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_across(None, from, None, spool_dir, name, syncer, Naming::Spool).map(|(to, _)| to)
        }
        other => other,
    };
    moved.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot put {} back into {}: {e}", esc(from), esc(spool_dir)),
        )
    })
}

/// Renames `moved`, found not to be the file that was sent after it was renamed away from
/// `spool_path`, back to `spool_path` or a free `STEM.N.EXT` beside it, and says so: it is
/// sent on its own. A file never leaves the spool unsent.
pub(super) fn return_unsent(
    moved: &Path,
    spool_path: &Path,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let dir = spool_path.parent().unwrap_or(Path::new("."));
    let name = spool_path.file_name().unwrap_or_default();
    match rename_to_free(moved, dir, name, Naming::Spool) {
        Ok(to) => {
            syncer.mark(dir);
            if let Some(p) = moved.parent() {
                syncer.mark(p);
            }
            if to == spool_path {
                tracing::warn!(
                    path = %esc(spool_path),
                    "{} was replaced by another file while being moved; that file was put back, it is sent on its own",
                    esc(spool_path)
                );
            } else {
                tracing::warn!(
                    path = %esc(&to),
                    "{} was replaced by another file while being moved and the name is taken again; that file was put back as {}, it is sent on its own",
                    esc(spool_path),
                    esc(&to)
                );
            }
            Ok(to)
        }
        Err(FreeNameError::Rename { to, source: e }) => {
            tracing::error!(
                path = %esc(moved),
                "{} is not the file that was sent, and it cannot be put back into the spool as {}: {e}; move it back by hand",
                esc(moved),
                esc(&to)
            );
            Err(io::Error::new(
                e.kind(),
                format!("cannot put {} back as {}: {e}", esc(moved), esc(&to)),
            ))
        }
        Err(FreeNameError::NoneFree) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free name to put {} back into the spool", esc(moved)),
        )),
    }
}

/// The move across filesystems: copy to a hidden temporary in `dir`, fsync it, rename it
/// (no replace) to a free name, fsync `dir`, and only then unlink the source: only if it
/// still is the inode `id` when given (see [`delete_if_ours`]), by name otherwise. A crash
/// at any point leaves the source in place (in the spool: sent again, at least once), never
/// nothing. Returns where the copy went and what became of the source.
///
/// `file` is the open (claimed) source, used for the copy so the bytes moved are the ones
/// that were checked; without it the copy opens `from`.
pub(super) fn copy_across(
    file: Option<&File>,
    from: &Path,
    id: Option<&Identity>,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
    naming: Naming,
) -> io::Result<(PathBuf, Disposed)> {
    let ctx = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", esc(p)))
    };
    // Errors about the temporary name the file and the directory, never the random name:
    // those are what the operator knows, and a repeated failure reads the same each time.
    let tctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot {what} a temporary copy of {} in {}: {e}",
                esc(from),
                esc(dir)
            ),
        )
    };
    let tmp = dir.join(names::temp_name(name));
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| tctx("create", e))?;
        let mut src = match file {
            Some(f) => f.try_clone()?,
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(from)
                    .map_err(|e| ctx("cannot open", from, e))?
            }
        };
        src.rewind().map_err(|e| ctx("cannot read", from, e))?;
        io::copy(&mut src, &mut out).map_err(|e| tctx("write", e))?;
        out.flush().map_err(|e| tctx("write", e))?;
        out.sync_all().map_err(|e| tctx("sync", e))?;
        match rename_to_free(&tmp, dir, name, naming) {
            Ok(to) => {
                fsync_dir(dir).map_err(|e| ctx("cannot sync", dir, e))?;
                Ok(to)
            }
            Err(FreeNameError::Rename { to, source }) => {
                Err(ctx("cannot rename into", &to, source))
            }
            Err(FreeNameError::NoneFree) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("no free name for {} in {}", esc(Path::new(name)), esc(dir)),
            )),
        }
    })();
    match result {
        Ok(to) => {
            // Only our inode is removed from the spool: the name may hold another file now.
            let removed = match id {
                Some(id) => delete_if_ours(from, id, syncer).map_err(|e| {
                    ctx(
                        "copied to",
                        &to,
                        io::Error::new(e.kind(), format!("but {e}")),
                    )
                })?,
                None => {
                    std::fs::remove_file(from)
                        .map_err(|e| ctx("copied but cannot remove", from, e))?;
                    Disposed::Done(None)
                }
            };
            if let Some(parent) = from.parent() {
                syncer.mark(parent);
            }
            Ok((to, removed))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
