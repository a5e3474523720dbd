//! Filesystem calls the standard library does not have, shared by the service, the
//! configuration checks and `accio serve`: a rename that never replaces, access(2) as the
//! effective user, and directories held open ([`Dir`]) that the service acts in only
//! through their descriptors, never resolving a symbolic link beneath them.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use crate::esc::esc;

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
/// never replaces).
///
/// # Errors
/// `AlreadyExists` if `to` exists; otherwise the rename's (or link's) error.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
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

/// `faccessat(path, mode, AT_EACCESS)`: may the effective user do `mode` (`libc::W_OK`, ...)
/// on `path`? Creates nothing.
///
/// # Errors
/// The call's error (`EACCES`, `EROFS`, `ENOENT`, ...).
pub fn access(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory opened once (a watch's spool, done_dir, failed_dir), with its device and
/// inode, so that the [`Syncer`](crate::watch::disposition::Syncer) syncs each directory
/// once however many descriptors name it.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    key: (u64, u64),
}

impl DirFd {
    fn new(fd: OwnedFd) -> io::Result<DirFd> {
        let st = rustix::fs::fstat(&fd)?;
        Ok(DirFd {
            fd,
            key: (st.st_dev as u64, st.st_ino as u64),
        })
    }

    /// (device, inode): the same for every descriptor of one directory.
    pub fn key(&self) -> (u64, u64) {
        self.key
    }

    /// Was the directory removed (no name links to it any more)? An error counts as no.
    pub fn removed(&self) -> bool {
        rustix::fs::fstat(&self.fd).is_ok_and(|st| st.st_nlink == 0)
    }

    /// `fsync` of the directory: its entries are durable.
    ///
    /// # Errors
    /// The call's error.
    pub fn fsync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A directory opened once by its configured path, then used only through its descriptor:
/// a parent renamed (and another directory put in its place) afterwards does not redirect
/// what is done in it. The path is kept for messages only.
#[derive(Debug, Clone)]
pub struct Dir {
    fd: Arc<DirFd>,
    path: PathBuf,
}

/// An entry to act on: the directory that holds it (opened beneath a [`Dir`] without
/// following any symbolic link) and its name there, one component. `shown` is its path for
/// messages.
#[derive(Debug, Clone)]
pub struct At {
    pub dir: Arc<DirFd>,
    pub name: OsString,
    pub shown: PathBuf,
}

impl At {
    /// The entry `name` in the same directory.
    pub fn sibling(&self, name: &OsStr) -> At {
        let parent = self.shown.parent().unwrap_or(Path::new(""));
        At {
            dir: self.dir.clone(),
            name: name.to_os_string(),
            shown: parent.join(name),
        }
    }

    /// `lstat`: never follows a symbolic link.
    ///
    /// # Errors
    /// The call's error (`NotFound` when there is no such entry).
    pub fn lstat(&self) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &*self.dir,
            self.name.as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens it read-only, never following a symbolic link, never blocking (a FIFO).
    ///
    /// # Errors
    /// The call's error (`ELOOP` for a symbolic link).
    pub fn open_read(&self) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &*self.dir,
            self.name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Creates it as a new file, write-only (`O_EXCL`: never an existing one).
    ///
    /// # Errors
    /// The call's error (`AlreadyExists`).
    pub fn create_new(&self) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &*self.dir,
            self.name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )?;
        Ok(File::from(fd))
    }

    /// Unlinks it (not a directory).
    ///
    /// # Errors
    /// The call's error.
    pub fn unlink(&self) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &*self.dir,
            self.name.as_os_str(),
            AtFlags::empty(),
        )?)
    }
}

/// Is `rel` a name relative to a directory that can only stay beneath it: not empty, no
/// leading `/`, no empty, `.` or `..` component, no NUL? Names come from the service's own
/// listing; one that is not is refused, never resolved.
///
/// # Errors
/// `InvalidInput`, naming it.
pub fn check_rel(rel: &OsStr) -> io::Result<()> {
    let b = rel.as_bytes();
    let bad = b.is_empty()
        || b.contains(&0)
        || b.split(|&c| c == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain relative name", esc(Path::new(rel))),
        ));
    }
    Ok(())
}

/// `rel` split at its last `/`: the directories (if any), the last component.
pub fn split_rel(rel: &OsStr) -> (Option<&OsStr>, &OsStr) {
    let b = rel.as_bytes();
    match b.iter().rposition(|&c| c == b'/') {
        Some(p) => (
            Some(OsStr::from_bytes(&b[..p])),
            OsStr::from_bytes(&b[p + 1..]),
        ),
        None => (None, rel),
    }
}

/// Whether `openat2` is known to be missing (kernels before 5.6, some seccomp filters).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The error for a component that is a symbolic link (or not a directory) in a name.
fn in_the_way(rel: &OsStr, e: rustix::io::Errno) -> io::Error {
    let what = match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => {
            "a symbolic link is in the way (never followed)"
        }
        rustix::io::Errno::NOTDIR => "something that is not a directory is in the way",
        _ => return e.into(),
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", esc(Path::new(rel))),
    )
}

impl Dir {
    /// Opens `path` (the configured directory: a symbolic link there is the operator's).
    ///
    /// # Errors
    /// The `open` error, naming the path.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .and_then(DirFd::new)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", esc(path))))?;
        Ok(Dir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    /// Its configured path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its descriptor.
    pub fn fd(&self) -> &Arc<DirFd> {
        &self.fd
    }

    /// The directory `sub` (a checked relative name) beneath this one, never following a
    /// symbolic link at any component: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
    /// or component by component with `O_NOFOLLOW` where the kernel lacks it. With
    /// `create`, missing directories are made (mode 0755 less the umask; an existing
    /// entry is never replaced) and each new one's parent is synced at once (rare: a new
    /// subdirectory), so the entry of a file moved into it later cannot be lost with it.
    fn subdir(&self, sub: &OsStr, create: bool) -> io::Result<Arc<DirFd>> {
        if !create && !NO_OPENAT2.load(Ordering::Relaxed) {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&*self.fd, sub, DIR_FLAGS, Mode::empty(), how) {
                Ok(fd) => return Ok(Arc::new(DirFd::new(fd)?)),
                Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                // Interrupted by a concurrent rename somewhere (EAGAIN): walk instead. Not a
                // directory (ENOTDIR, also for a symlink as the last component with
                // O_NOFOLLOW): the walk says which it is.
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::NOTDIR) => {}
                Err(e) => return Err(in_the_way(sub, e)),
            }
        }
        let mut cur = self.fd.clone();
        for c in sub.as_bytes().split(|&c| c == b'/') {
            let c = OsStr::from_bytes(c);
            let fd = match rustix::fs::openat(&*cur, c, DIR_FLAGS, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*cur, c, Mode::from_raw_mode(0o755)) {
                        Ok(()) => cur.fsync()?,
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&*cur, c, DIR_FLAGS, Mode::empty())
                }
                // O_NOFOLLOW | O_DIRECTORY on a symbolic link: ENOTDIR; say which it is.
                Err(rustix::io::Errno::NOTDIR) => {
                    match rustix::fs::statat(&*cur, c, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st)
                            if rustix::fs::FileType::from_raw_mode(st.st_mode as _)
                                == rustix::fs::FileType::Symlink =>
                        {
                            Err(rustix::io::Errno::LOOP)
                        }
                        _ => Err(rustix::io::Errno::NOTDIR),
                    }
                }
                other => other,
            }
            .map_err(|e| in_the_way(sub, e))?;
            cur = Arc::new(DirFd::new(fd)?);
        }
        Ok(cur)
    }

    /// The entry `rel` (a relative name, `/` between components) beneath this directory:
    /// its parent opened without following symbolic links (no call at all for a name
    /// without `/`), `create`: with missing parents made (see [`Dir::subdir`]).
    ///
    /// # Errors
    /// `rel` is not a plain relative name; a parent is missing (without `create`), is a
    /// symbolic link or not a directory; or it cannot be opened or made.
    pub fn at(&self, rel: &OsStr, create: bool) -> io::Result<At> {
        check_rel(rel)?;
        let (sub, name) = split_rel(rel);
        let dir = match sub {
            None => self.fd.clone(),
            Some(sub) => self.subdir(sub, create)?,
        };
        Ok(At {
            dir,
            name: name.to_os_string(),
            shown: self.path.join(rel),
        })
    }
}

/// [`rename_noreplace`] between entries of directories held open.
///
/// # Errors
/// As [`rename_noreplace`].
pub fn rename_noreplace_at(from: &At, to: &At) -> io::Result<()> {
    let (f, t) = (from.name.as_os_str(), to.name.as_os_str());
    match rustix::fs::renameat_with(&*from.dir, f, &*to.dir, t, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            rustix::fs::linkat(&*from.dir, f, &*to.dir, t, AtFlags::empty())?;
            from.unlink()
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relative_names_are_checked_and_split() {
        for ok in ["x", "a/b/x.jpg", ".hidden", "a/.b/..c", "...", "a b/c"] {
            assert!(check_rel(OsStr::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "", "/x", "x/", "a//b", ".", "..", "a/../b", "./a", "a/.", "a\0b",
        ] {
            assert!(check_rel(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(split_rel(OsStr::new("x")), (None, OsStr::new("x")));
        assert_eq!(
            split_rel(OsStr::new("a/b/x")),
            (Some(OsStr::new("a/b")), OsStr::new("x"))
        );
    }

    #[test]
    fn parents_are_made_beneath_and_never_replace_anything() {
        let top = tempfile::tempdir().unwrap();
        let d = Dir::open(top.path()).unwrap();
        let at = d.at(OsStr::new("a/b/x"), true).unwrap();
        assert_eq!(at.shown, top.path().join("a/b/x"));
        assert!(top.path().join("a/b").is_dir());
        at.create_new().unwrap();
        // A file in the way of a directory: an error, the file untouched.
        let e = d.at(OsStr::new("a/b/x/y"), true).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(top.path().join("a/b/x").is_file());
        // Without `create`, a missing parent is NotFound.
        let e = d.at(OsStr::new("m/x"), false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // Both ways (openat2 without `create`, the walk with it) refuse a symlink.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("l")).unwrap();
        for create in [false, true] {
            let e = d.at(OsStr::new("l/x"), create).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            let e = d.at(OsStr::new("l/n/x"), create).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    proptest! {
        /// Whatever the name, resolving it (making its parents) creates nothing outside the
        /// directory: names that could leave it are refused before anything is resolved.
        #[test]
        fn nothing_is_made_outside(
            parts in proptest::collection::vec(
                prop_oneof![Just(".."), Just("."), Just(""), Just("a"), Just("b")], 1..6),
            lead in any::<bool>(),
        ) {
            let top = tempfile::tempdir().unwrap();
            let inner = top.path().join("in");
            std::fs::create_dir(&inner).unwrap();
            let d = Dir::open(&inner).unwrap();
            let mut rel = parts.join("/");
            if lead {
                rel.insert(0, '/');
            }
            let valid = check_rel(OsStr::new(&rel)).is_ok();
            let r = d.at(OsStr::new(&rel), true);
            prop_assert_eq!(r.is_ok(), valid, "{}", rel);
            let outside: Vec<_> = std::fs::read_dir(top.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            prop_assert_eq!(outside, vec![std::ffi::OsString::from("in")]);
        }
    }
}
