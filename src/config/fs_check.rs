//! The checks [`super::load`] adds to [`super::parse`]: every directory exists, is a
//! directory, and this user may write into it; and, with symlinks resolved, no two watches
//! share a spool and no done/failed directory is or lies inside its spool.

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
        let mut targets = Vec::new();
        if let (OnSuccess::Move, Some(done), Some(span)) =
            (w.on_success, &w.done_dir, &spans.done_dir)
        {
            let real = usable_dir(cx, &key("done_dir"), done, span, libc::W_OK | libc::X_OK)?;
            targets.push(("done_dir", real, span.clone()));
        }
        let real = usable_dir(
            cx,
            &key("failed_dir"),
            &w.failed_dir,
            &spans.failed_dir,
            libc::W_OK | libc::X_OK,
        )?;
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
