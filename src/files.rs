//! Filesystem calls the standard library does not have, shared by the service, the
//! configuration checks and `accio serve`: a rename that never replaces, and access(2) as
//! the effective user.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
