//! Taking a file out of the spool for sending, safely against other writers, other
//! instances of the service and things that are not regular files.
//!
//! A claim is: `lstat` (screen out what is not a regular file without opening it, so a
//! device is never opened), `open` with `O_NOFOLLOW | O_NONBLOCK` (a symlink swapped in
//! fails, a FIFO swapped in does not block), `fstat` (what we opened is a regular file),
//! `flock(LOCK_EX | LOCK_NB)` (another instance sending it → busy), then `lstat` again: the
//! name must still point at the inode we hold, because another instance may have delivered
//! and moved it between our open and our lock. The lock lives as long as the [`Claim`], which
//! is kept until the file was moved or deleted.
//!
//! All of it through the spool's descriptor, held since the watch started (a parent of the
//! spool renamed since does not redirect it), and without following a symbolic link at any
//! component of the file's name (relative to the spool: `a/b/x.jpg`).

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::core::{Identity, Kind, Writers};
use crate::files::{At, Dir};

/// The kind of the entry `meta` describes.
fn kind_of(meta: &Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_file() {
        Kind::Regular
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Directory
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_socket() {
        Kind::Socket
    } else if t.is_block_device() || t.is_char_device() {
        Kind::Device
    } else {
        Kind::Other
    }
}

/// The [`Identity`] of the entry `meta` describes.
pub fn identity(meta: &Metadata) -> Identity {
    Identity {
        kind: kind_of(meta),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    }
}

/// `lstat` of a path as an [`Identity`].
///
/// # Errors
/// The `lstat` error (`NotFound` when the entry is gone).
pub fn lstat(path: &Path) -> io::Result<Identity> {
    std::fs::symlink_metadata(path).map(|m| identity(&m))
}

/// The [`Identity`] of what `st` describes.
pub fn identity_of(st: &rustix::fs::Stat) -> Identity {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::Regular,
        FileType::Symlink => Kind::Symlink,
        FileType::Directory => Kind::Directory,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::BlockDevice | FileType::CharacterDevice => Kind::Device,
        _ => Kind::Other,
    };
    #[allow(clippy::unnecessary_cast)]
    Identity {
        kind,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime_ns: i128::from(st.st_mtime as i64) * 1_000_000_000
            + i128::from(st.st_mtime_nsec as i64),
        ctime_ns: i128::from(st.st_ctime as i64) * 1_000_000_000
            + i128::from(st.st_ctime_nsec as i64),
    }
}

/// `lstat` of an entry of a directory held open, as an [`Identity`].
///
/// # Errors
/// The `lstat` error (`NotFound` when the entry is gone).
pub fn lstat_at(at: &At) -> io::Result<Identity> {
    at.lstat().map(|st| identity_of(&st))
}

/// A regular file of the spool, open and locked against other instances.
#[derive(Debug)]
pub struct Claim {
    /// Open read-only, locked with `flock`; closing it releases the lock.
    pub file: File,
    /// Where it is in the spool (for messages, and for the uploader's checks).
    pub path: PathBuf,
    /// `fstat` right after claiming: the content we are about to send.
    pub id: Identity,
    /// The spool it was claimed through: its disposition goes through the same one.
    pub spool: Dir,
}

/// Why a path could not be claimed.
#[derive(Debug)]
pub enum ClaimError {
    /// No entry by that name any more, or it names another inode now (delivered by another
    /// instance, deleted, replaced). Not an error: look at the name again.
    Gone,
    /// Not a regular file; never sent.
    Special(Identity),
    /// Another process holds the lock (another instance is sending it).
    Busy,
    /// Could not open or inspect it (permissions, I/O, a symbolic link or a non-directory
    /// among its parents): a failed attempt for this file.
    Io(io::Error),
}

/// Claims `rel` (a name relative to the spool, `/` between components) for sending, through
/// the spool's descriptor: its parents are opened without following a symbolic link at any
/// component, the file itself with `O_NOFOLLOW` (see the module docs for the steps and why).
///
/// # Errors
/// [`ClaimError`]: gone, not a regular file, busy, or an I/O error.
pub fn claim(spool: &Dir, rel: &OsStr) -> Result<Claim, ClaimError> {
    let at = match spool.at(rel, false) {
        Ok(at) => at,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClaimError::Gone),
        Err(e) => return Err(ClaimError::Io(e)),
    };
    let before = match lstat_at(&at) {
        Ok(id) => id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClaimError::Gone),
        Err(e) => return Err(ClaimError::Io(e)),
    };
    if before.kind != Kind::Regular {
        return Err(ClaimError::Special(before));
    }
    let file = match at.open_read() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClaimError::Gone),
        // ELOOP: a symlink was swapped in after the lstat; ENXIO: a socket.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENXIO)) => {
            return match lstat_at(&at) {
                Ok(id) if id.kind != Kind::Regular => Err(ClaimError::Special(id)),
                _ => Err(ClaimError::Gone),
            }
        }
        Err(e) => return Err(ClaimError::Io(e)),
    };
    let id = match file.metadata() {
        Ok(m) => identity(&m),
        Err(e) => return Err(ClaimError::Io(e)),
    };
    if id.kind != Kind::Regular {
        return Err(ClaimError::Special(id));
    }
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Err(ClaimError::Busy),
            _ => Err(ClaimError::Io(e)),
        };
    }
    // The name must still be ours: another instance may have sent and moved (or deleted)
    // this inode while we waited between open and lock.
    match lstat_at(&at) {
        Ok(now) if now.same_inode(&id) => {}
        Ok(_) => return Err(ClaimError::Gone),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClaimError::Gone),
        Err(e) => return Err(ClaimError::Io(e)),
    }
    Ok(Claim {
        file,
        path: at.shown,
        id,
        spool: spool.clone(),
    })
}

/// Asks the kernel whether `file` (open read-only) is open for writing anywhere, by taking
/// a read lease: Linux refuses one (`EAGAIN`) while the file has writers. A lease we get is
/// released at once: while held, a writer's `open` would block until we let go.
///
/// Taking a lease needs the file's owner or `CAP_LEASE` (hence the capability in the
/// systemd unit); without either the answer is [`Writers::Unknown`].
pub fn writers(file: &File) -> Writers {
    ignore_sigio();
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if rc == 0 {
        // SAFETY: as above. Releasing right away: see the function docs.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Writers::None;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) => Writers::Some,
        _ => Writers::Unknown,
    }
}

/// [`writers`] for a path, without claiming it (no lock): opens it read-only the way a
/// claim does and asks. A path that cannot be opened gives [`Writers::Unknown`].
pub fn probe_writers(path: &Path) -> Writers {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => writers(&f),
        _ => Writers::Unknown,
    }
}

/// When a writer opens a file while we hold its lease (the few microseconds between taking
/// and releasing it), the kernel signals the lease holder with SIGIO, whose default action
/// ends the process. Nothing in accio uses SIGIO, so it is ignored, once, before the first
/// lease.
fn ignore_sigio() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    });
}

impl Claim {
    /// `fstat` of the open file now.
    ///
    /// # Errors
    /// The `fstat` error.
    pub fn restat(&self) -> io::Result<Identity> {
        self.file.metadata().map(|m| identity(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_regular_files_only_and_locks_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Dir::open(dir.path()).unwrap();
        let claim = |p: &Path| claim(&spool, p.strip_prefix(dir.path()).unwrap().as_os_str());
        let f = dir.path().join("a");
        std::fs::write(&f, b"hello").unwrap();
        let c = claim(&f).unwrap();
        assert_eq!(c.id.size, 5);
        // A second claim (another open file description) is refused while the first lives.
        assert!(matches!(claim(&f), Err(ClaimError::Busy)));
        drop(c);
        assert!(claim(&f).is_ok());

        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(matches!(claim(&link), Err(ClaimError::Special(id)) if id.kind == Kind::Symlink));
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(claim(&sub), Err(ClaimError::Special(id)) if id.kind == Kind::Directory));
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(claim(&fifo), Err(ClaimError::Special(id)) if id.kind == Kind::Fifo));
        assert!(matches!(
            claim(&dir.path().join("missing")),
            Err(ClaimError::Gone)
        ));
    }

    #[test]
    fn a_lease_tells_whether_a_file_has_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Dir::open(dir.path()).unwrap();
        let f = dir.path().join("w");
        let writer = File::create(&f).unwrap();
        assert_eq!(probe_writers(&f), Writers::Some);
        let c = claim(&spool, OsStr::new("w")).unwrap();
        assert_eq!(writers(&c.file), Writers::Some);
        drop(writer);
        assert_eq!(writers(&c.file), Writers::None);
        assert_eq!(probe_writers(&f), Writers::None);
        // The lease was released: a writer can open it again at once.
        let t = std::time::Instant::now();
        drop(OpenOptions::new().append(true).open(&f).unwrap());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(probe_writers(&dir.path().join("missing")), Writers::Unknown);
    }

    #[test]
    fn names_in_subdirectories_never_follow_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Dir::open(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x.jpg"), b"x").unwrap();
        let c = claim(&spool, OsStr::new("a/b/x.jpg")).unwrap();
        assert_eq!(c.path, dir.path().join("a/b/x.jpg"));
        assert_eq!(c.id.size, 1);
        drop(c);
        // A symlinked intermediate directory, inside or outside the spool: refused.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("b")).unwrap();
        std::fs::write(outside.path().join("b/x.jpg"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("m")).unwrap();
        for rel in ["l/b/x.jpg", "m/b/x.jpg"] {
            match claim(&spool, OsStr::new(rel)) {
                Err(ClaimError::Io(e)) => assert!(e.to_string().contains("symbolic link"), "{e}"),
                other => panic!("{rel}: {other:?}"),
            }
        }
        // A name that would leave the spool is refused, never resolved.
        for rel in [
            "../x",
            "/etc/passwd",
            "a/../a/b/x.jpg",
            "a//b/x.jpg",
            "./a",
            "",
        ] {
            assert!(
                matches!(claim(&spool, OsStr::new(rel)), Err(ClaimError::Io(ref e)) if e.kind() == io::ErrorKind::InvalidInput),
                "{rel}"
            );
        }
        // A missing parent: gone, as a missing file is.
        assert!(matches!(
            claim(&spool, OsStr::new("z/x")),
            Err(ClaimError::Gone)
        ));
    }
}
