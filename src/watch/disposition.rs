//! What happens to a file after its upload: moved to `done_dir` or deleted after success,
//! moved to `failed_dir` with a `.reason` file after giving up. Never overwrites anything,
//! works across filesystems, and makes the result durable without one fsync per file.
//!
//! Runs on blocking threads (called through `spawn_blocking`), holding the file's
//! [`Claim`](super::claim::Claim) so no other instance touches the file meanwhile.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::claim::{self, Identity};
use super::esc;

/// How many numbered suffixes (`name.1` … ) are tried before a timestamped one.
const MAX_SUFFIX: u32 = 1000;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", esc(path)),
        )
    })
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`. Uses
/// `renameat2(RENAME_NOREPLACE)`; on filesystems without it, `link` + `unlink` (which also
/// never replaces). Also `accio serve`'s way to publish a received file.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstring(from)?, cstring(to)?);
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// How old a leftover of ours must be before it is taken for one of a crash rather than
/// one in progress (of this or another instance). Tests shorten it with the hidden
/// `ACCIO_STALE_AGE_MS`, since a ctime cannot be set back.
pub fn stale_age() -> std::time::Duration {
    static AGE: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *AGE.get_or_init(|| {
        std::env::var("ACCIO_STALE_AGE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(std::time::Duration::from_secs(60))
    })
}

/// The hidden names this process's deletes are using right now: a periodic
/// [`restore_stale_deletions`] must not put one back under its feet, however old its ctime.
fn deleting() -> std::sync::MutexGuard<'static, HashSet<PathBuf>> {
    static SET: std::sync::OnceLock<Mutex<HashSet<PathBuf>>> = std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Registers a hidden delete name in [`deleting`] for as long as it lives.
struct Deleting(PathBuf);

impl Deleting {
    fn new(p: &Path) -> Deleting {
        deleting().insert(p.to_path_buf());
        Deleting(p.to_path_buf())
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        deleting().remove(&self.0);
    }
}

/// Start of the hidden name a delete renames a file to: `.accio-del.<16 hex>.<NAME>`, a
/// pattern a user's own file is implausible to match.
const DEL_PREFIX: &str = ".accio-del.";

/// The hidden name for deleting `name`: `.accio-del.<16 hex>.<NAME>`, `NAME` cut short if
/// needed to fit [`NAME_MAX`] (if a crash leaves it, the file comes back under that
/// shortened name: still in the spool, sent again).
fn del_name(name: &OsStr) -> OsString {
    let mut b = format!("{DEL_PREFIX}{:016x}.", fastrand::u64(..)).into_bytes();
    let room = NAME_MAX - b.len();
    b.extend_from_slice(spool_name(name, "", room).as_bytes());
    OsString::from_vec(b)
}

/// Splits `name` into stem and extension (with its dot): `report.csv` → (`report`,
/// `.csv`). A leading dot is not an extension, and neither is a long tail (over 16 bytes).
fn split_ext(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'.') {
        Some(p) if p > 0 && name.len() - p <= 16 => name.split_at(p),
        _ => (name, &[]),
    }
}

/// A name for a file that goes back into the spool: `stem` + `tag` + extension, the stem cut
/// short to fit `max` bytes. Keeping the extension last keeps the name matching the watch's
/// globs (`*.csv`), so a file put back is still picked up and sent.
fn spool_name(name: &OsStr, tag: &str, max: usize) -> OsString {
    let (stem, ext) = split_ext(name.as_bytes());
    let ext = if ext.len() + tag.len() < max {
        ext
    } else {
        &[][..]
    };
    let keep = stem.len().min(max.saturating_sub(tag.len() + ext.len()));
    let mut b = stem[..keep].to_vec();
    b.extend_from_slice(tag.as_bytes());
    b.extend_from_slice(ext);
    OsString::from_vec(b)
}

/// Candidate names for a file put back into the spool: `name`, then `stem.1.ext`,
/// `stem.2.ext`, … then one with a timestamp and a random part.
fn spool_candidate(dir: &Path, name: &OsStr, n: u32) -> PathBuf {
    let tag = match n {
        0 => String::new(),
        n if n <= MAX_SUFFIX => format!(".{n}"),
        _ => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!(".{}.{:08x}", now.as_nanos(), fastrand::u32(..))
        }
    };
    dir.join(spool_name(name, &tag, NAME_MAX))
}

/// The original name inside a hidden delete name, if `name` is one.
fn del_original(name: &OsStr) -> Option<&OsStr> {
    let rest = name.as_bytes().strip_prefix(DEL_PREFIX.as_bytes())?;
    if rest.len() < 18 || !rest[..16].iter().all(u8::is_ascii_hexdigit) || rest[16] != b'.' {
        return None;
    }
    Some(OsStr::from_bytes(&rest[17..]))
}

/// Longest file name (bytes) Linux filesystems take.
const NAME_MAX: usize = 255;

/// `base` followed by `suffix`, with `base` cut short if needed so the whole stays within
/// [`NAME_MAX`]: a 255-byte name must still get its collision suffix, temporary name or
/// `.reason` file instead of failing with ENAMETOOLONG for ever.
fn fit_name(base: &OsStr, suffix: &str) -> OsString {
    fit_name_to(base, suffix, NAME_MAX)
}

/// [`fit_name`] within `max` bytes.
fn fit_name_to(base: &OsStr, suffix: &str, max: usize) -> OsString {
    let b = base.as_bytes();
    let keep = b.len().min(max.saturating_sub(suffix.len()));
    let mut s = OsString::from(OsStr::from_bytes(&b[..keep]));
    s.push(suffix);
    s
}

/// Candidate names in `dir` for `name`: `name`, `name.1`, `name.2`, … then one with a
/// timestamp and a random part (the name shortened if a suffix would not fit).
fn candidate(dir: &Path, name: &OsStr, n: u32) -> PathBuf {
    candidate_to(dir, name, n, NAME_MAX)
}

/// [`candidate`] names of at most `max` bytes.
fn candidate_to(dir: &Path, name: &OsStr, n: u32, max: usize) -> PathBuf {
    if n == 0 {
        return dir.join(fit_name_to(name, "", max));
    }
    let suffix = if n <= MAX_SUFFIX {
        format!(".{n}")
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(".{}.{:08x}", now.as_nanos(), fastrand::u32(..))
    };
    dir.join(fit_name_to(name, &suffix, max))
}

/// Renames `from` into `dir` under its name or a free suffixed one, never replacing a file.
/// Cheap enough to run on the async workers (no data is copied, no fsync waited for).
/// Returns where it went.
///
/// # Errors
/// Renaming failed (the bare OS error; callers say what was moved where); the source is
/// still in place. Across filesystems the error's raw OS code is `EXDEV`: use
/// [`move_into`] (blocking) then.
pub fn rename_into(from: &Path, dir: &Path, name: &OsStr, syncer: &Syncer) -> io::Result<PathBuf> {
    rename_into_paired(from, dir, name, syncer, false)
}

/// The `.reason` file that goes with `moved` (in failed_dir): `NAME.reason`, `NAME` cut
/// short if needed to fit [`NAME_MAX`].
pub fn reason_path(moved: &Path) -> PathBuf {
    let dir = moved.parent().unwrap_or(Path::new("."));
    dir.join(fit_name(moved.file_name().unwrap_or_default(), ".reason"))
}

/// With `pair`, a candidate name is only taken if its [`reason_path`] is free as well, so a
/// file in failed_dir and its reason keep matching names (`y.1` and `y.1.reason`, never
/// `y` and `y.reason.1`).
fn usable(to: &Path, pair: bool) -> bool {
    !pair || std::fs::symlink_metadata(reason_path(to)).is_err()
}

/// The `n`th name to try for `name` in `dir`. With `pair` (failed_dir): the name itself
/// first, even if too long for `.reason` to be appended whole (its reason is then
/// `NAME` shortened + `.reason`); after that only names short enough for `.reason` to fit
/// whole, since suffixed long names would all share one shortened reason name.
fn pair_candidate(dir: &Path, name: &OsStr, n: u32, pair: bool) -> PathBuf {
    match (pair, n) {
        (false, n) => candidate(dir, name, n),
        (true, 0) => candidate(dir, name, 0),
        (true, n) => candidate_to(dir, name, n - 1, NAME_MAX - ".reason".len()),
    }
}

fn rename_into_paired(
    from: &Path,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
    pair: bool,
) -> io::Result<PathBuf> {
    for n in 0..=MAX_SUFFIX + 2 {
        let to = pair_candidate(dir, name, n, pair);
        if !usable(&to, pair) {
            continue;
        }
        match rename_noreplace(from, &to) {
            Ok(()) => {
                syncer.mark(dir);
                if let Some(parent) = from.parent() {
                    syncer.mark(parent);
                }
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name for {} in {}", esc(Path::new(name)), esc(dir)),
    ))
}

/// Moves `from` into `dir` like [`rename_into`], and across filesystems by a durable copy.
/// Blocking (the copy can be long): run it with `spawn_blocking`.
///
/// `file` is the open (claimed) source, used for the copy so the bytes moved are the ones
/// that were checked; without it the copy opens `from`.
///
/// # Errors
/// Renaming, copying or syncing failed; the source is then still in place.
pub fn move_into(
    file: Option<&File>,
    from: &Path,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    match rename_into(from, dir, name, syncer) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_across(file, from, None, dir, name, syncer, false).map(|(to, _)| to)
        }
        other => other,
    }
}

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

/// Is `path` still exactly `id`? `None` if so, else what to report.
fn check_ours(path: &Path, id: &Identity) -> io::Result<Option<Disposed>> {
    match claim::lstat(path) {
        Ok(now) if now == *id => Ok(None),
        Ok(now) if now.same_inode(id) => Ok(Some(Disposed::Changed)),
        Ok(_) => Ok(Some(Disposed::NotOurs)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Disposed::NotOurs)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot inspect {}: {e}", esc(path)),
        )),
    }
}

/// After renaming `spool_path` to `moved`: if `moved` is not the inode `id` (the name was
/// swapped between our check and our rename, or the file changed), it goes back into the
/// spool, never replacing anything: under its name, or a free suffixed one if that is taken
/// again. A file never leaves the spool unsent.
fn verify_moved(
    spool_path: &Path,
    moved: PathBuf,
    id: &Identity,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    let now = claim::lstat(&moved).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot inspect {} after moving it: {e}", esc(&moved)),
        )
    })?;
    if is_ours(&now, id) {
        return Ok(Disposed::Done(Some(moved)));
    }
    put_back(&moved, spool_path, syncer)?;
    Ok(if now.same_inode(id) {
        Disposed::Changed
    } else {
        Disposed::NotOurs
    })
}

/// Renames `moved` back to `spool_path`, or to a free `STEM.N.EXT` beside it.
fn put_back(moved: &Path, spool_path: &Path, syncer: &Syncer) -> io::Result<PathBuf> {
    let dir = spool_path.parent().unwrap_or(Path::new("."));
    let name = spool_path.file_name().unwrap_or_default();
    for n in 0..=MAX_SUFFIX + 1 {
        let to = spool_candidate(dir, name, n);
        match rename_noreplace(moved, &to) {
            Ok(()) => {
                syncer.mark(dir);
                if let Some(p) = moved.parent() {
                    syncer.mark(p);
                }
                if n == 0 {
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
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                tracing::error!(
                    path = %esc(moved),
                    "{} is not the file that was sent, and it cannot be put back into the spool as {}: {e}; move it back by hand",
                    esc(moved),
                    esc(&to)
                );
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot put {} back as {}: {e}", esc(moved), esc(&to)),
                ));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name to put {} back into the spool", esc(moved)),
    ))
}

/// Moves the spool entry `from` into `dir` (like [`move_into`]) only if it still is the
/// inode `id`, unchanged; checked right before and, since the name may be swapped in
/// between, again right after the rename (see [`Disposed`]). Blocking across filesystems.
///
/// # Errors
/// Inspecting, renaming, copying or syncing failed; the source is then still in the spool.
pub fn move_if_ours(
    file: Option<&File>,
    from: &Path,
    id: &Identity,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    move_if_ours_paired(file, from, id, dir, name, syncer, false)
}

/// [`move_if_ours`] into failed_dir: the name chosen leaves its [`reason_path`] free too,
/// for [`write_reason`].
///
/// # Errors
/// As [`move_if_ours`].
pub fn move_failed_if_ours(
    file: Option<&File>,
    from: &Path,
    id: &Identity,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
) -> io::Result<Disposed> {
    move_if_ours_paired(file, from, id, dir, name, syncer, true)
}

fn move_if_ours_paired(
    file: Option<&File>,
    from: &Path,
    id: &Identity,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
    pair: bool,
) -> io::Result<Disposed> {
    let ctx = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot move {} to {}: {e}", esc(from), esc(dir)),
        )
    };
    if let Some(d) = check_ours(from, id).map_err(ctx)? {
        return Ok(d);
    }
    match rename_into_paired(from, dir, name, syncer, pair) {
        Ok(to) => verify_moved(from, to, id, syncer).map_err(ctx),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let (to, removed) =
                copy_across(file, from, Some(id), dir, name, syncer, pair).map_err(ctx)?;
            Ok(match removed {
                // The copy in `dir` is our content, read from the claimed descriptor; the
                // spool name held another file by then and keeps it.
                Disposed::Done(_) | Disposed::NotOurs => Disposed::Done(Some(to)),
                Disposed::Changed => Disposed::Changed,
            })
        }
        Err(e) => Err(ctx(e)),
    }
}

/// Deletes the spool entry `path` only if it still is the inode `id`, unchanged. An unlink
/// by name cannot be checked, so the entry is first renamed to a hidden name of ours
/// (`.accio-del.<16 hex>.NAME`, see [`del_name`]), checked there, and only then unlinked;
/// if it is not ours it goes back (see [`verify_moved`]).
///
/// # Errors
/// Inspecting, renaming or unlinking failed; the file is still in the spool.
pub fn delete_if_ours(path: &Path, id: &Identity, syncer: &Syncer) -> io::Result<Disposed> {
    if let Some(d) = check_ours(path, id)? {
        return Ok(d);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(del_name(path.file_name().unwrap_or_default()));
    // Errors name `path`, never the random hidden name: the queue compares error texts to
    // throttle a repeated ERROR.
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", esc(path)))
    };
    let _deleting = Deleting::new(&tmp);
    rename_noreplace(path, &tmp).map_err(|e| ctx("delete", e))?;
    match claim::lstat(&tmp) {
        Ok(now) if is_ours(&now, id) => {
            std::fs::remove_file(&tmp).map_err(|e| {
                tracing::warn!(
                    path = %esc(&tmp),
                    "cannot unlink {} (the delivered {} renamed for its delete): {e}; it is put back when stale",
                    esc(&tmp),
                    esc(path)
                );
                ctx("delete", e)
            })?;
            syncer.mark(dir);
            Ok(Disposed::Done(None))
        }
        Ok(now) => {
            put_back(&tmp, path, syncer)?;
            Ok(if now.same_inode(id) {
                Disposed::Changed
            } else {
                Disposed::NotOurs
            })
        }
        Err(e) => Err(ctx("inspect (renamed for its delete)", e)),
    }
}

/// Is `name` one of our temporaries: `.ANY.accio-XXXXXXXX.<ext>`?
fn is_our_temporary(name: &OsStr, ext: &str) -> bool {
    let b = name.as_bytes();
    let suffix_len = ".accio-".len() + 8 + 1 + ext.len();
    if b.len() <= suffix_len + 1 || b[0] != b'.' {
        return false;
    }
    let tail = &b[b.len() - suffix_len..];
    tail.starts_with(b".accio-")
        && tail[7..15].iter().all(u8::is_ascii_hexdigit)
        && tail[15] == b'.'
        && &tail[16..] == ext.as_bytes()
}

/// Entries of `dir` that `ours` recognises, untouched for [`stale_age`] (a live one, of
/// this or another instance, is younger): for a copy (`tmp`) its data were written that
/// long ago (mtime); for a delete (a rename, which keeps the mtime) it was renamed that long
/// ago (ctime, `by_ctime`).
fn stale_ours(dir: &Path, ours: impl Fn(&OsStr) -> bool, by_ctime: bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let old = std::time::SystemTime::now() - stale_age();
    rd.flatten()
        .filter(|e| ours(&e.file_name()))
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                let (s, ns) = if by_ctime {
                    (m.ctime(), m.ctime_nsec())
                } else {
                    (m.mtime(), m.mtime_nsec())
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
/// `.NAME.accio-XXXXXXXX.tmp`, untouched for [`stale_age`]. Never deletes them: a user's
/// file may match the pattern, and the source of a real leftover is still in the spool.
/// Blocking.
pub fn warn_stale_temporaries(dir: &Path) {
    for p in stale_ours(dir, |n| is_our_temporary(n, "tmp"), false) {
        tracing::warn!(
            path = %esc(&p),
            "{} looks like a temporary copy left by an interrupted move; the original stayed in the spool; remove it if it is not yours",
            esc(&p)
        );
    }
}

/// Puts back into the spool the files a crash (or a failed unlink) left under the hidden
/// name a delete uses (`.accio-del.<16 hex>.NAME`), renamed more than [`stale_age`] ago and
/// not a delete of this process in progress: whether it was the delivered file or another
/// one is not known any more, so it is sent (again). Never replaces a file: a taken name
/// gets a suffix. Run at start and periodically. Blocking. Returns how many were restored.
pub fn restore_stale_deletions(spool: &Path) -> usize {
    let syncer = Syncer::default();
    let mut restored = 0;
    for p in stale_ours(spool, |n| del_original(n).is_some(), true) {
        if deleting().contains(&p) {
            continue;
        }
        let Some(orig) = p.file_name().and_then(del_original) else {
            continue;
        };
        let mut result = Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name".to_string(),
        ));
        for n in 0..=MAX_SUFFIX + 1 {
            let to = spool_candidate(spool, orig, n);
            match rename_noreplace(&p, &to) {
                Ok(()) => {
                    result = Ok(to);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(to) => {
                syncer.mark(spool);
                restored += 1;
                tracing::warn!(
                    path = %esc(&to),
                    "put {} back as {}: an interrupted delete left it hidden; it is sent again",
                    esc(&p),
                    esc(&to)
                );
            }
            Err(e) => tracing::warn!(
                path = %esc(&p),
                "cannot put {} (left hidden by an interrupted delete) back into the spool: {e}",
                esc(&p)
            ),
        }
    }
    syncer.flush_blocking();
    restored
}

/// The move across filesystems: copy to a hidden temporary in `dir`, fsync it, rename it
/// (no replace) to a free name, fsync `dir`, and only then unlink the source. A crash at any
/// point leaves the source in the spool (sent again: at least once), never nothing.
fn copy_across(
    file: Option<&File>,
    from: &Path,
    id: Option<&Identity>,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
    pair: bool,
) -> io::Result<(PathBuf, Disposed)> {
    let ctx = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", esc(p)))
    };
    // Errors about the temporary name the file and the directory, never the random name:
    // the queue compares error texts to throttle a repeated ERROR.
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
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    let tmp = dir.join(fit_name(
        &tmp_name,
        &format!(".accio-{:08x}.tmp", fastrand::u32(..)),
    ));
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
        for n in 0..=MAX_SUFFIX + 2 {
            let to = pair_candidate(dir, name, n, pair);
            if !usable(&to, pair) {
                continue;
            }
            match rename_noreplace(&tmp, &to) {
                Ok(()) => {
                    fsync_dir(dir).map_err(|e| ctx("cannot sync", dir, e))?;
                    return Ok(to);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ctx("cannot rename into", &to, e)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free name for {} in {}", esc(Path::new(name)), esc(dir)),
        ))
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

/// Deletes a delivered file.
///
/// # Errors
/// The unlink failed; the file is still in the spool.
pub fn delete(path: &Path, syncer: &Syncer) -> io::Result<()> {
    std::fs::remove_file(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot delete {}: {e}", esc(path))))?;
    if let Some(parent) = path.parent() {
        syncer.mark(parent);
    }
    Ok(())
}

/// Writes `text` beside a file moved to `failed_dir`, as `<final name>.reason`: to a hidden
/// temporary first, synced, then renamed, so a reader never sees it half written. A name too
/// long for the suffix is shortened, and a shortened name never replaces another file's
/// reason (`.1.reason`, …).
///
/// # Errors
/// Creating, writing or renaming the reason file failed.
pub fn write_reason(moved_to: &Path, text: &str, syncer: &Syncer) -> io::Result<PathBuf> {
    let ctx =
        |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("cannot write {}: {e}", esc(p)));
    // Shortened if needed: `<255-byte name>.reason` would not fit in a directory entry.
    let reason = fit_name(moved_to.file_name().unwrap_or_default(), ".reason");
    let dir = moved_to.parent().unwrap_or(Path::new("."));
    let p = dir.join(&reason);
    let mut tmp_name = OsString::from(".");
    tmp_name.push(&reason);
    let tmp = dir.join(fit_name(
        &tmp_name,
        &format!(".accio-{:08x}.tmp", fastrand::u32(..)),
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // Never over an existing file: a spool file named `q.reason` may have failed before.
        for n in 0..=MAX_SUFFIX + 1 {
            let to = candidate(dir, &reason, n);
            match rename_noreplace(&tmp, &to) {
                Ok(()) => return Ok(to),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name".to_string(),
        ))
    })();
    match written {
        Ok(to) => {
            syncer.mark(dir);
            Ok(to)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(ctx(&p, e))
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Group commit for directory fsyncs: dispositions mark the directories they changed, one
/// task fsyncs each marked directory once per round. Under load, one fsync covers many
/// files; when idle, nothing runs. A crash before the fsync can only undo a move or delete,
/// which puts the file back in the spool (sent again), never lose it.
#[derive(Debug, Default)]
pub struct Syncer {
    dirty: Mutex<HashSet<PathBuf>>,
    wake: Notify,
}

impl Syncer {
    pub fn new() -> Arc<Syncer> {
        Arc::new(Syncer::default())
    }

    /// Records that `dir` changed and must be synced.
    pub fn mark(&self, dir: &Path) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !d.contains(dir) {
            d.insert(dir.to_path_buf());
        }
        drop(d);
        self.wake.notify_one();
    }

    /// Fsyncs every directory marked so far (blocking).
    pub fn flush_blocking(&self) {
        let dirs: Vec<PathBuf> = {
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            d.drain().collect()
        };
        for dir in dirs {
            if let Err(e) = fsync_dir(&dir) {
                tracing::warn!(dir = %esc(&dir), "cannot fsync directory {}: {e}", esc(&dir));
            }
        }
    }

    /// Runs rounds of fsyncs until `stop` is cancelled, then one last round.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.flush_blocking()).await;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.flush_blocking()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_put_back_into_the_spool_keep_their_extension() {
        let dir = Path::new("/s");
        let c = |name: &str, n| spool_candidate(dir, OsStr::new(name), n);
        assert_eq!(c("report.csv", 0), dir.join("report.csv"));
        assert_eq!(c("report.csv", 1), dir.join("report.1.csv"));
        assert_eq!(c("report", 2), dir.join("report.2"));
        assert_eq!(c(".hidden", 1), dir.join(".hidden.1"));
        assert_eq!(c("a.tar.gz", 1), dir.join("a.tar.1.gz"));
        // A long name is shortened in its stem; the extension survives.
        let long = format!("{}.csv", "x".repeat(251));
        let p = c(&long, 3);
        let got = p.file_name().unwrap().as_bytes();
        assert_eq!(got.len(), NAME_MAX);
        assert!(got.ends_with(b".3.csv"));
        // The hidden delete name of a 255-byte name still restores to a `*.csv`.
        let hidden = del_name(OsStr::new(&long));
        assert!(hidden.as_bytes().len() <= NAME_MAX);
        let orig = del_original(&hidden).unwrap();
        assert!(orig.as_bytes().ends_with(b".csv"), "{orig:?}");
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
        let d = move_if_ours(None, &p, &old, done.path(), OsStr::new("r"), &syncer).unwrap();
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
        let d =
            move_failed_if_ours(None, &p, &id, failed.path(), OsStr::new("y"), &syncer).unwrap();
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
            true,
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
                move_failed_if_ours(None, &p, &id, failed.path(), &name, &syncer).unwrap()
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
                    false,
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
    fn hidden_delete_names_are_distinctive_and_fit() {
        let n = del_name(OsStr::new("a.txt"));
        assert!(n.as_bytes().starts_with(b".accio-del."), "{n:?}");
        assert_eq!(del_original(&n), Some(OsStr::new("a.txt")));
        let long = OsString::from("l".repeat(NAME_MAX));
        let n = del_name(&long);
        assert_eq!(n.len(), NAME_MAX);
        assert_eq!(del_original(&n).unwrap().len(), NAME_MAX - 28);
        for not in [
            ".a.accio-0123abcd.del",
            ".accio-del.0123.x",
            ".accio-del.0123456789abcdefx",
            ".accio-del.0123456789abcdef.",
            ".accio-del.0123456789abcdeg.x",
        ] {
            assert_eq!(del_original(OsStr::new(not)), None, "{not}");
        }
    }

    #[test]
    fn a_fresh_or_in_progress_hidden_delete_is_left_alone() {
        let spool = tempfile::tempdir().unwrap();
        let h = spool.path().join(".accio-del.0123456789abcdef.f");
        std::fs::write(&h, b"f").unwrap();
        // Renamed just now: possibly another instance's delete in progress.
        if stale_age() >= std::time::Duration::from_secs(1) {
            assert_eq!(restore_stale_deletions(spool.path()), 0);
            assert!(h.exists());
        }
        let _d = Deleting::new(&h);
        assert_eq!(restore_stale_deletions(spool.path()), 0);
        assert!(h.exists());
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
    fn our_temporaries_are_recognised() {
        assert!(is_our_temporary(OsStr::new(".a.accio-0123abcd.tmp"), "tmp"));
        assert!(is_our_temporary(
            OsStr::new(".a b.accio-0123abcd.del"),
            "del"
        ));
        assert!(!is_our_temporary(OsStr::new("a.accio-0123abcd.tmp"), "tmp"));
        assert!(!is_our_temporary(
            OsStr::new(".a.accio-0123abcz.tmp"),
            "tmp"
        ));
        assert!(!is_our_temporary(OsStr::new(".accio-0123abcd.tmp"), "tmp"));
        assert!(!is_our_temporary(
            OsStr::new(".a.accio-0123abcd.tmp"),
            "del"
        ));
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
        let to = move_into(Some(&f), &src, done.path(), OsStr::new("a"), &syncer).unwrap();
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
            moved.push(move_into(Some(&f), &src, done.path(), &name, &syncer).unwrap());
            // Across filesystems too (the temporary name must fit as well).
            std::fs::write(&src, content).unwrap();
            let f = File::open(&src).unwrap();
            moved.push(
                copy_across(Some(&f), &src, None, done.path(), &name, &syncer, true)
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
            false,
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
}
