//! The checks [`super::load`] adds to [`super::parse`]: every directory exists, is a
//! directory, and this user may write into it; with symlinks resolved, no two watches
//! share a spool and no done/failed directory is or lies inside its spool; and, unless
//! `strict_modes = false`, nobody but root and this user can replace any of them (see
//! [`strict_modes`]).

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::schema::{keep_apart, one_watch_per_spool, Ctx, Parsed};
use super::{ConfigError, OnSuccess};
use crate::files::access;

/// Runs the filesystem checks on a validated config.
///
/// # Errors
/// The first directory that is missing, not a directory, not writable, or that resolves to
/// the same place as a directory it must differ from.
pub(crate) fn check(cx: &Ctx, parsed: &Parsed) -> Result<(), ConfigError> {
    let mut spools = Vec::new();
    for (i, (w, spans)) in parsed
        .config
        .watches
        .iter()
        .zip(&parsed.watch_spans)
        .enumerate()
    {
        let key = |name: &str| format!("watch[{i}].{name}");
        // The spool is listed, and files are renamed out of it and locked in it.
        let dir = usable_dir(
            cx,
            &key("dir"),
            &w.dir,
            &spans.dir,
            libc::R_OK | libc::W_OK | libc::X_OK,
        )?;
        let strict = |name: &str, path: &Path, span: &Range<usize>, role: Role| {
            if !parsed.config.strict_modes {
                return Ok(());
            }
            strict_modes(path, role, Owners::this_process())
                .map_err(|m| cx.err(span, &key(name), m.message(name)))
        };
        strict("dir", &w.dir, &spans.dir, Role::Spool)?;
        let mut targets = Vec::new();
        if let (OnSuccess::Move, Some(done), Some(span)) =
            (w.on_success, &w.done_dir, &spans.done_dir)
        {
            let real = usable_dir(cx, &key("done_dir"), done, span, libc::W_OK | libc::X_OK)?;
            strict("done_dir", done, span, Role::Target)?;
            targets.push(("done_dir", real, span.clone()));
        }
        let real = usable_dir(
            cx,
            &key("failed_dir"),
            &w.failed_dir,
            &spans.failed_dir,
            libc::W_OK | libc::X_OK,
        )?;
        strict("failed_dir", &w.failed_dir, &spans.failed_dir, Role::Target)?;
        targets.push(("failed_dir", real, spans.failed_dir.clone()));

        keep_apart(cx, i, &dir, &targets, true)?;
        spools.push(dir);
    }
    let c = &parsed.config;
    one_watch_per_spool(cx, &c.watches, &parsed.watch_spans, Some(&spools))?;
    Ok(())
}

/// Checks one directory; returns its canonical path for comparisons.
fn usable_dir(
    cx: &Ctx,
    key: &str,
    path: &Path,
    span: &Range<usize>,
    mode: libc::c_int,
) -> Result<PathBuf, ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::NotFound {
            format!("directory {shown} does not exist; create it (accio does not create directories: their owner and mode are yours to choose)")
        } else {
            format!("cannot use directory {shown}: {e}")
        };
        cx.err(span, key, msg)
    })?;
    if !meta.is_dir() {
        return Err(cx.err(span, key, format!("{shown} is not a directory")));
    }
    if let Err(e) = access(path, mode) {
        let need = if mode & libc::R_OK != 0 {
            "readable and writable"
        } else {
            "writable"
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        return Err(cx.err(
            span,
            key,
            format!("directory {shown} is not {need} by this user (uid {uid}): {e}"),
        ));
    }
    std::fs::canonicalize(path)
        .map_err(|e| cx.err(span, key, format!("cannot resolve {shown}: {e}")))
}

/// What a checked directory is for: what its own mode may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A spool: its group may write (that is how producers drop files).
    Spool,
    /// A done_dir or failed_dir: written by the service alone; a producer who could write
    /// there could plant links where files are moved.
    Target,
}

/// Who may own the directories: root and the service's user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owners {
    pub uid: u32,
}

impl Owners {
    pub fn this_process() -> Owners {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Owners {
            uid: unsafe { libc::geteuid() },
        }
    }

    fn allow(self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }
}

/// Why [`strict_modes`] refused a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsafe {
    /// The checked directory, as configured.
    pub dir: PathBuf,
    /// The directory (or link) at fault: `dir` itself or one above it.
    pub at: PathBuf,
    /// What is wrong with `at`.
    pub what: String,
    /// The command that fixes it.
    pub fix: String,
}

impl Unsafe {
    /// The message for the configuration key `name`.
    pub fn message(&self, name: &str) -> String {
        let at = if self.at == self.dir {
            format!("{name} {}", self.dir.display())
        } else {
            format!(
                "{} (above {name} {})",
                self.at.display(),
                self.dir.display()
            )
        };
        format!(
            "{at} {}: whoever can do that can redirect deliveries or make the service send files it should not; fix: {}, or set strict_modes = false to accept it",
            self.what, self.fix
        )
    }
}

/// OpenSSH's `StrictModes` for a spool, done or failed directory: it and every directory
/// above it, both as written (through any links) and with links resolved, must be owned by
/// root or the service's user, and writable by no one else; a link on the way must be owned
/// by them too. Exceptions: a directory above it may be writable by others if it is sticky
/// (as `/tmp`): others cannot rename or remove what they do not own, and everything below
/// is owned by root or the service's user; a spool may be writable by its group (the
/// producers, as the shipped tmpfiles set it).
///
/// # Errors
/// The first directory that fails, with what is wrong and the fix.
pub(crate) fn strict_modes(dir: &Path, role: Role, owners: Owners) -> Result<(), Unsafe> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |at: &Path, what: String, fix: String| Unsafe {
        dir: dir.to_path_buf(),
        at: at.to_path_buf(),
        what,
        fix,
    };
    let given = std::path::absolute(dir).map_err(|e| {
        refuse(
            dir,
            format!("cannot be resolved ({e})"),
            "check the path".into(),
        )
    })?;
    let real = std::fs::canonicalize(dir).map_err(|e| {
        refuse(
            dir,
            format!("cannot be resolved ({e})"),
            "check the path".into(),
        )
    })?;
    for (chain, leaf) in [(&given, &given), (&real, &real)] {
        let mut prefix = PathBuf::new();
        for part in chain.components() {
            prefix.push(part);
            // lstat: links on the way are followed, the last component is itself.
            let meta = std::fs::symlink_metadata(&prefix).map_err(|e| {
                refuse(
                    &prefix,
                    format!("cannot be inspected ({e})"),
                    "check the path".into(),
                )
            })?;
            let is_leaf = &prefix == leaf;
            let mode = meta.mode() & 0o7777;
            if !owners.allow(meta.uid()) {
                let who = if owners.uid == 0 {
                    "root".to_string()
                } else {
                    format!("root or uid {} (the service's user)", owners.uid)
                };
                return Err(refuse(
                    &prefix,
                    format!("is owned by uid {}, not by {who}, so that user can replace it", meta.uid()),
                    format!(
                        "chown {} {} (check-config runs as the service's user: sudo -u USER accio check-config)",
                        if owners.uid == 0 { "root".to_string() } else { owners.uid.to_string() },
                        prefix.display()
                    ),
                ));
            }
            if meta.file_type().is_symlink() {
                // Its mode means nothing; its target is checked in the resolved chain.
                continue;
            }
            let sticky = mode & 0o1000 != 0;
            if is_leaf {
                if mode & 0o002 != 0 {
                    return Err(refuse(
                        &prefix,
                        format!("is writable by everyone (mode {mode:04o})"),
                        format!("chmod o-w {}", prefix.display()),
                    ));
                }
                if mode & 0o020 != 0 && role == Role::Target {
                    return Err(refuse(
                        &prefix,
                        format!("is writable by its group (gid {}, mode {mode:04o}); only a spool may be", meta.gid()),
                        format!("chmod g-w {}", prefix.display()),
                    ));
                }
            } else if mode & 0o022 != 0 && !sticky {
                let by = if mode & 0o002 != 0 {
                    "everyone".to_string()
                } else {
                    format!("its group (gid {})", meta.gid())
                };
                return Err(refuse(
                    &prefix,
                    format!(
                        "is writable by {by} (mode {mode:04o}), so they can rename what is in it"
                    ),
                    format!(
                        "chmod go-w {} (or chmod +t {0}, if others must write there, as in /tmp)",
                        prefix.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    fn me() -> Owners {
        Owners::this_process()
    }

    /// A private directory in the temporary directory (sticky /tmp above it is fine).
    fn base() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        t
    }

    #[test]
    fn the_shipped_layout_passes() {
        let t = base();
        let spool = t.path().join("accio");
        let (outbox, sent) = (spool.join("outbox"), spool.join("sent"));
        for (d, m) in [(&spool, 0o750), (&outbox, 0o2770), (&sent, 0o750)] {
            std::fs::create_dir(d).unwrap();
            mode(d, m);
        }
        assert_eq!(strict_modes(&outbox, Role::Spool, me()), Ok(()));
        assert_eq!(strict_modes(&sent, Role::Target, me()), Ok(()));
    }

    #[test]
    fn writable_by_others_is_refused_with_the_fix() {
        let t = base();
        let open = t.path().join("open");
        let done = open.join("done");
        std::fs::create_dir_all(&done).unwrap();
        mode(&open, 0o777);
        let e = strict_modes(&done, Role::Target, me()).unwrap_err();
        assert_eq!(e.at, open);
        let m = e.message("done_dir");
        assert!(m.contains("is writable by everyone (mode 0777)"), "{m}");
        assert!(
            m.contains(&format!("fix: chmod go-w {}", open.display())),
            "{m}"
        );
        assert!(m.contains("strict_modes = false"), "{m}");
        // Sticky, as /tmp: others cannot move what is ours.
        mode(&open, 0o1777);
        assert_eq!(strict_modes(&done, Role::Target, me()), Ok(()));
        // Group-writable above: refused too.
        mode(&open, 0o775);
        let e = strict_modes(&done, Role::Target, me()).unwrap_err();
        assert!(e.what.contains("writable by its group"), "{e:?}");
    }

    #[test]
    fn the_directory_itself_by_role() {
        let t = base();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        mode(&d, 0o2770);
        assert_eq!(strict_modes(&d, Role::Spool, me()), Ok(()));
        let e = strict_modes(&d, Role::Target, me()).unwrap_err();
        assert!(e.message("failed_dir").contains("fix: chmod g-w"), "{e:?}");
        mode(&d, 0o1777);
        let e = strict_modes(&d, Role::Spool, me()).unwrap_err();
        assert!(e.what.contains("writable by everyone"), "{e:?}");
    }

    #[test]
    fn a_link_to_a_directory_writable_by_everyone_is_refused() {
        let t = base();
        let open = t.path().join("open");
        let real = open.join("sent");
        std::fs::create_dir_all(&real).unwrap();
        mode(&open, 0o777);
        let link = t.path().join("sent");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = strict_modes(&link, Role::Target, me()).unwrap_err();
        assert_eq!(e.at, open, "{e:?}");
    }

    #[test]
    fn another_owner_is_refused() {
        let t = base();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let me = Owners::this_process();
        let (owners, owner) = if me.uid == 0 {
            // Root: hand the directory to someone else.
            std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
            (me, 4242)
        } else {
            // As if the service ran as another user: this process's files are not its own.
            (Owners { uid: me.uid + 1 }, me.uid)
        };
        let e = strict_modes(&d, Role::Spool, owners).unwrap_err();
        // Not root, the temporary directory is the first not the other user's.
        assert!(e.at.starts_with(t.path()), "{e:?}");
        assert!(
            e.what
                .starts_with(&format!("is owned by uid {owner}, not by root")),
            "{e:?}"
        );
        assert!(e.fix.starts_with("chown "), "{e:?}");
    }
}
