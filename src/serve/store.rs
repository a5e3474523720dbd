//! DIR as one open descriptor, and the files in it.
//!
//! Everything the receiver does in DIR goes through a descriptor: part files are created with
//! `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` relative to DIR's descriptor, written and marked
//! `ERROR` through their own descriptor, published with `renameat2(RENAME_NOREPLACE)` and
//! made durable with `fsync` on DIR's descriptor. A name swapped for a symlink meanwhile is
//! never followed, and a DIR renamed while serve runs is still the one written to.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Numbering;

/// The receiving directory, open.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// -1 → the errno as an error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Dir {
    /// Opens `path` as a directory.
    ///
    /// # Errors
    /// open(2)'s error, naming the path.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
        Ok(Dir {
            // SAFETY: a descriptor open(2) just returned, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The path DIR was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` for writing, never an existing file or through a symlink, with exactly
    /// `mode` (set through the descriptor: the umask may have taken bits the operator asked
    /// for with `--mode`).
    fn create(&self, name: &str, mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        // SAFETY: a valid descriptor and NUL-terminated name; the result is owned below.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: a descriptor openat(2) just returned, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // 0600 survives every usual umask; anything else is set as asked.
        if mode != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(file)
    }

    /// `renameat2(RENAME_NOREPLACE)` within DIR; on filesystems without it, `linkat` +
    /// `unlinkat` (which never replaces either).
    fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (cname(from)?, cname(to)?);
        let d = self.fd.as_raw_fd();
        // SAFETY: a valid descriptor and NUL-terminated names.
        let rc = unsafe { libc::renameat2(d, f.as_ptr(), d, t.as_ptr(), libc::RENAME_NOREPLACE) };
        match check(rc) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // SAFETY: as above; flags 0 never follow a symlink at `from`.
                check(unsafe { libc::linkat(d, f.as_ptr(), d, t.as_ptr(), 0) })?;
                self.remove(from)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `name` from DIR.
    fn remove(&self, name: &str) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: a valid descriptor and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// fsync(2) on DIR: the names created and renamed in it so far are on disk.
    fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(drop)
    }
}

/// An unpublished part file's name: removed when dropped armed (a connection abandoned at
/// shutdown), so a partial transfer leaves nothing behind.
#[derive(Debug)]
pub struct Part {
    dir: Arc<Dir>,
    name: String,
    /// False once renamed to its final name.
    armed: bool,
}

impl Drop for Part {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.dir.remove(&self.name);
        }
    }
}

/// Creates the hidden part file `.N.file.part` for connection N. Never opens an existing
/// one (another receiver on the same DIR may be writing it): then a random suffix is added.
/// Blocking.
pub fn create_part(dir: &Arc<Dir>, n: u64, mode: u32) -> io::Result<(File, Part)> {
    let mut name = format!(".{n}.file.part");
    for _ in 0..16 {
        match dir.create(&name, mode) {
            Ok(file) => {
                let part = Part {
                    dir: dir.clone(),
                    name,
                    armed: true,
                };
                return Ok((file, part));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                name = format!(".{n}.file.{:08x}.part", fastrand::u32(..));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.path.join(&name).display()),
                ))
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "cannot create a part file for {n}.file in {}: every name tried exists",
            dir.path.display()
        ),
    ))
}

/// Renames the complete part file to `N.file` without ever replacing a file: if the name was
/// taken meanwhile, the next free number is used. Returns the number used. Blocking.
pub fn publish(mut part: Part, mut n: u64, numbering: &Numbering) -> io::Result<u64> {
    loop {
        let target = format!("{n}.file");
        match part.dir.rename_noreplace(&part.name, &target) {
            Ok(()) => {
                part.armed = false;
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let next = numbering.next().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists and no file number is left",
                            part.dir.path.join(&target).display()
                        ),
                    )
                })?;
                tracing::warn!(
                    "{} appeared meanwhile (not written by this server): saving as {next}.file",
                    part.dir.path.join(&target).display()
                );
                n = next;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot publish {}: {e}",
                        part.dir.path.join(&target).display()
                    ),
                ))
            }
        }
    }
}

/// Directory syncs shared between connections (a group commit): a connection that published
/// its file waits for one `fsync(DIR)` that started after its rename. While one runs, the
/// connections that published meanwhile queue, and the next sync covers them all, so N
/// files published together cost about one directory sync, not N.
#[derive(Debug)]
pub struct DirSync {
    dir: Arc<Dir>,
    /// Tickets handed out: one per rename waiting to be made durable.
    issued: AtomicU64,
    /// The highest ticket a completed sync covers. The lock also keeps syncs one at a time.
    covered: tokio::sync::Mutex<u64>,
}

impl DirSync {
    pub fn new(dir: Arc<Dir>) -> DirSync {
        DirSync {
            dir,
            issued: AtomicU64::new(0),
            covered: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once DIR was synced after this call began (so after every rename that
    /// completed before it).
    ///
    /// # Errors
    /// fsync(2)'s error; a later call tries again.
    pub async fn after_rename(&self) -> io::Result<()> {
        // Taken after our rename returned: a sync that reads `issued` at or after this ticket
        // started after our rename.
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        // tokio's Mutex is fair: waiters are served in order, each finding its ticket covered
        // by the sync the one before it ran.
        let mut covered = self.covered.lock().await;
        if *covered >= ticket {
            return Ok(());
        }
        let upto = self.issued.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || dir.sync())
            .await
            .map_err(io::Error::other)?
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot sync directory {}: {e}", self.dir.path.display()),
                )
            })?;
        *covered = upto;
        Ok(())
    }
}
