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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How many numbered suffixes (`name.1` … ) are tried before a timestamped one.
const MAX_SUFFIX: u32 = 1000;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", path.display()),
        )
    })
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`. Uses
/// `renameat2(RENAME_NOREPLACE)`; on filesystems without it, `link` + `unlink` (which also
/// never replaces).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
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

/// Longest file name (bytes) Linux filesystems take.
const NAME_MAX: usize = 255;

/// `base` followed by `suffix`, with `base` cut short if needed so the whole stays within
/// [`NAME_MAX`]: a 255-byte name must still get its collision suffix, temporary name or
/// `.reason` file instead of failing with ENAMETOOLONG for ever.
fn fit_name(base: &OsStr, suffix: &str) -> OsString {
    let b = base.as_bytes();
    let keep = b.len().min(NAME_MAX.saturating_sub(suffix.len()));
    let mut s = OsString::from(OsStr::from_bytes(&b[..keep]));
    s.push(suffix);
    s
}

/// Candidate names in `dir` for `name`: `name`, `name.1`, `name.2`, … then one with a
/// timestamp and a random part (the name shortened if a suffix would not fit).
fn candidate(dir: &Path, name: &OsStr, n: u32) -> PathBuf {
    if n == 0 {
        return dir.join(name);
    }
    let suffix = if n <= MAX_SUFFIX {
        format!(".{n}")
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(".{}.{:08x}", now.as_nanos(), fastrand::u32(..))
    };
    dir.join(fit_name(name, &suffix))
}

/// Renames `from` into `dir` under its name or a free suffixed one, never replacing a file.
/// Cheap enough to run on the async workers (no data is copied, no fsync waited for).
/// Returns where it went.
///
/// # Errors
/// Renaming failed; the source is still in place. Across filesystems the error's raw OS
/// code is `EXDEV`: use [`move_into`] (blocking) then.
pub fn rename_into(from: &Path, dir: &Path, name: &OsStr, syncer: &Syncer) -> io::Result<PathBuf> {
    for n in 0..=MAX_SUFFIX + 1 {
        let to = candidate(dir, name, n);
        match rename_noreplace(from, &to) {
            Ok(()) => {
                syncer.mark(dir);
                if let Some(parent) = from.parent() {
                    syncer.mark(parent);
                }
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Err(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot move {} to {}: {e}", from.display(), to.display()),
                ))
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name for {:?} in {}", name, dir.display()),
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
            copy_across(file, from, dir, name, syncer)
        }
        other => other,
    }
}

/// The move across filesystems: copy to a hidden temporary in `dir`, fsync it, rename it
/// (no replace) to a free name, fsync `dir`, and only then unlink the source. A crash at any
/// point leaves the source in the spool (sent again: at least once), never nothing.
fn copy_across(
    file: Option<&File>,
    from: &Path,
    dir: &Path,
    name: &OsStr,
    syncer: &Syncer,
) -> io::Result<PathBuf> {
    let ctx = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
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
            .map_err(|e| ctx("cannot create", &tmp, e))?;
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
        src.rewind()?;
        io::copy(&mut src, &mut out).map_err(|e| ctx("cannot copy into", &tmp, e))?;
        out.flush()?;
        out.sync_all().map_err(|e| ctx("cannot sync", &tmp, e))?;
        for n in 0..=MAX_SUFFIX + 1 {
            let to = candidate(dir, name, n);
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
            format!("no free name for {:?} in {}", name, dir.display()),
        ))
    })();
    match result {
        Ok(to) => {
            std::fs::remove_file(from).map_err(|e| ctx("copied but cannot remove", from, e))?;
            if let Some(parent) = from.parent() {
                syncer.mark(parent);
            }
            Ok(to)
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
        .map_err(|e| io::Error::new(e.kind(), format!("cannot delete {}: {e}", path.display())))?;
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
    let dir = moved_to.parent().unwrap_or(Path::new("."));
    let name = moved_to.file_name().unwrap_or_default();
    let ctx = |e: io::Error| {
        let p = dir.join(fit_name(name, ".reason"));
        io::Error::new(e.kind(), format!("cannot write {}: {e}", p.display()))
    };
    let fits = name.len() + ".reason".len() <= NAME_MAX;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    let tmp = dir.join(fit_name(
        &tmp_name,
        &format!(".reason.{:08x}.tmp", fastrand::u32(..)),
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if fits {
            // The full name is this file's own: a stale one from before may be replaced.
            let p = dir.join(fit_name(name, ".reason"));
            std::fs::rename(&tmp, &p)?;
            return Ok(p);
        }
        for n in 0..=MAX_SUFFIX {
            let suffix = match n {
                0 => ".reason".to_string(),
                n => format!(".{n}.reason"),
            };
            let p = dir.join(fit_name(name, &suffix));
            match rename_noreplace(&tmp, &p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name for the reason file",
        ))
    })();
    match written {
        Ok(p) => {
            syncer.mark(dir);
            Ok(p)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(ctx(e))
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
                tracing::warn!(dir = %dir.display(), "cannot fsync directory {}: {e}", dir.display());
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
            moved.push(copy_across(Some(&f), &src, done.path(), &name, &syncer).unwrap());
        }
        assert_eq!(moved[0], done.path().join(&name));
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
        let to = copy_across(Some(&f), &src, done.path(), OsStr::new("b"), &syncer).unwrap();
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
