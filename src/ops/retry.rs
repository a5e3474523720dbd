//! `accio retry [--config PATH] [--watch DIR] [NAME...]`: puts files the service gave up on
//! back into their spool, like `postsuper -r`.
//!
//! A given-up file is a regular file in a watch's `failed_dir` or one of its subdirectories
//! (hidden names, which are our temporaries, and `.reason` files are not; symbolic links are
//! never followed). It goes back into the spool it came from (its `.reason` file names it;
//! else the watch whose `failed_dir` it is in) under its original name relative to the
//! spool (`failed_dir/a/b/x.jpg` → `spool/a/b/x.jpg`, directories made as needed), or a
//! free `STEM.N.EXT` beside it if that is taken: never replacing a file, keeping the
//! extension so the watch's globs still match. Once it is back its `.reason` file is
//! deleted. Moves go through the directories' descriptors (see [`crate::files::Dir`]). The running service (if any) sees a file moved in and sends it at once; a
//! service started later finds it in its backlog. Works the same whether or not it runs.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{self, WatchConfig};
use crate::esc::esc;
use crate::files::{At, Dir};
use crate::watch::disposition::{self, Syncer};

use super::print_out;
use crate::exit::{error_line, Failed, Kind};

/// One given-up file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    /// Where it is now, in `failed_dir`.
    pub path: PathBuf,
    /// Its `.reason` file, if there is one.
    pub reason: Option<PathBuf>,
    /// The spool it goes back to.
    pub spool: PathBuf,
    /// The name, relative to the spool, it goes back under (or a free variant of it).
    pub name: OsString,
    /// The failed_dir it is in, and its name relative to it (`a/b/x.jpg`).
    pub failed_dir: PathBuf,
    pub rel: OsString,
}

/// What [`retry_command`] did with one file.
#[derive(Debug)]
pub struct Moved {
    pub from: PathBuf,
    pub to: PathBuf,
    /// Deleting the `.reason` file failed (the file itself is back).
    pub reason_left: Option<io::Error>,
}

/// The given-up files of `watches`, by path in failed_dir (sorted, deduplicated: watches
/// may share a failed_dir).
///
/// # Errors
/// A failed_dir cannot be listed.
pub fn list(watches: &[&WatchConfig]) -> Result<Vec<GivenUp>, (PathBuf, io::Error)> {
    list_with(watches, true)
}

/// How many given-up files each watch has, by spool directory (for
/// `accio_failed_files`). A failed_dir of one watch only is counted without reading its
/// reason files: they would only tell the names the files go back under.
///
/// # Errors
/// A failed_dir cannot be listed.
pub fn count(watches: &[&WatchConfig]) -> Result<Vec<(PathBuf, u64)>, (PathBuf, io::Error)> {
    let shared = |dir: &Path| watches.iter().filter(|w| w.failed_dir == dir).count() > 1;
    let any_shared = watches.iter().any(|w| shared(&w.failed_dir));
    let files = list_with(watches, any_shared)?;
    Ok(watches
        .iter()
        .map(|w| {
            let n = files.iter().filter(|f| f.spool == w.dir).count();
            (w.dir.clone(), n as u64)
        })
        .collect())
}

/// How deep the listing goes into failed_dir's subdirectories.
const MAX_DEPTH: usize = 64;

/// The regular files of the tree at `dir`, by name relative to it (`/` between
/// components), hidden ones left out (hidden directories not entered), symbolic links
/// never followed.
fn files_in_tree(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), OsString::new(), 0usize)];
    while let Some((d, prefix, depth)) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // A subdirectory that went meanwhile (retried by another run).
            Err(e) if depth > 0 && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let name = e.file_name();
            // Hidden names are temporaries (a reason being written, a copy in progress).
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let Ok(t) = e.file_type() else { continue };
            let mut rel = prefix.clone();
            rel.push(&name);
            if t.is_file() {
                out.push(rel);
            } else if t.is_dir() && depth < MAX_DEPTH {
                rel.push("/");
                todo.push((e.path(), rel, depth + 1));
            }
        }
    }
    Ok(out)
}

/// `rel`'s directories (with a trailing `/`, empty for none) and its last component.
fn split(rel: &OsStr) -> (&OsStr, &OsStr) {
    let b = rel.as_bytes();
    let cut = b.iter().rposition(|&c| c == b'/').map_or(0, |p| p + 1);
    (OsStr::from_bytes(&b[..cut]), OsStr::from_bytes(&b[cut..]))
}

/// [`list`]; without `origins`, each file is taken to go back to the watch whose failed_dir
/// it is in, under its current name (its reason file is not read).
fn list_with(
    watches: &[&WatchConfig],
    origins: bool,
) -> Result<Vec<GivenUp>, (PathBuf, io::Error)> {
    let mut out: BTreeMap<PathBuf, GivenUp> = BTreeMap::new();
    let mut listed = HashSet::new();
    for w in watches {
        let dir = &w.failed_dir;
        // A failed_dir shared with an earlier watch: its files are in `out` already (and
        // would stay as that watch found them).
        if !listed.insert(dir) {
            continue;
        }
        let names = files_in_tree(dir).map_err(|e| (dir.clone(), e))?;
        let present: HashSet<&OsStr> = names.iter().map(OsString::as_os_str).collect();
        // Each file with its reason file (beside it), if that is present too.
        let with_reason: Vec<(&OsString, Option<OsString>)> = names
            .iter()
            .map(|n| {
                let (sub, last) = split(n);
                let mut r = sub.to_os_string();
                r.push(disposition::reason_path(Path::new(last)).as_os_str());
                let has = r != *n && present.contains(r.as_os_str());
                (n, has.then_some(r))
            })
            .collect();
        let reasons: HashSet<&OsStr> = with_reason
            .iter()
            .filter_map(|(_, r)| r.as_deref())
            .collect();
        let failed = origins.then(|| Dir::open(dir).ok()).flatten();
        for (n, reason) in &with_reason {
            if reasons.contains(n.as_os_str()) {
                continue;
            }
            if reason.is_none() && n.as_bytes().ends_with(b".reason") {
                // An orphaned reason (its file was retried by hand): not a given-up file.
                continue;
            }
            let path = dir.join(n);
            let text = match (&failed, reason) {
                (Some(f), Some(r)) => f.at(r, false).ok().and_then(|at| read_reason_at(&at).ok()),
                _ => None,
            };
            let (spool, name) = text
                .and_then(|t| origin(&t, w, watches))
                .unwrap_or_else(|| (w.dir.clone(), (*n).clone()));
            out.entry(path.clone()).or_insert(GivenUp {
                path,
                reason: reason.as_ref().map(|r| dir.join(r)),
                spool,
                name,
                failed_dir: dir.clone(),
                rel: (*n).clone(),
            });
        }
    }
    Ok(out.into_values().collect())
}

/// The spool and name (relative to it) a reason file's text says the file came from (its
/// `file:` line), if that spool is one of `watches` or `w`'s (else the file goes back to
/// `w`, under its name relative to failed_dir).
fn origin(text: &[u8], w: &WatchConfig, watches: &[&WatchConfig]) -> Option<(PathBuf, OsString)> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"file: "))?;
    // Written escaped (as in the logs): only a name without escapes is taken as is.
    if line.contains(&b'\\') {
        return None;
    }
    let p = Path::new(OsStr::from_bytes(line));
    // The deepest spool it is in (spools may nest only in odd configurations).
    let mut best: Option<(&PathBuf, OsString)> = None;
    for d in watches
        .iter()
        .map(|x| &x.dir)
        .chain(std::iter::once(&w.dir))
    {
        let Some(rel) = beneath(p, d) else { continue };
        if best.as_ref().map_or(true, |(_, r)| rel.len() < r.len()) {
            best = Some((d, rel));
        }
    }
    let (spool, rel) = best?;
    crate::files::check_rel(&rel).ok()?;
    Some((spool.clone(), rel))
}

/// `p` relative to the directory `dir` (as configured or canonical), if it is beneath it.
fn beneath(p: &Path, dir: &Path) -> Option<OsString> {
    let canon = std::fs::canonicalize(dir).ok();
    let parent = p.parent().and_then(|d| std::fs::canonicalize(d).ok());
    let rel = p
        .strip_prefix(dir)
        .ok()
        .map(Path::to_path_buf)
        .or_else(|| {
            // The spool as configured may be a symbolic link, or the path written otherwise.
            let (canon, parent) = (canon?, parent?);
            let sub = parent.strip_prefix(&canon).ok()?;
            Some(sub.join(p.file_name()?))
        })?;
    (!rel.as_os_str().is_empty()).then(|| rel.into_os_string())
}

/// The most of a `.reason` file that is read: the service writes a few hundred bytes; a
/// failed_dir is writable by the service's user, and whatever else is there must not make
/// `accio retry` (or the metrics endpoint) read gigabytes.
pub const MAX_REASON: u64 = 64 * 1024;

/// The first [`MAX_REASON`] bytes of the reason file at `path`.
///
/// # Errors
/// It cannot be opened or read.
pub fn read_reason(path: &Path) -> io::Result<Vec<u8>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default();
    read_reason_at(&Dir::open(dir)?.at(name, false)?)
}

/// The first [`MAX_REASON`] bytes of the reason file `at`, through its directory's
/// descriptor: never through a symbolic link, never blocking on a FIFO, a regular file only.
///
/// # Errors
/// It cannot be opened or read, or is not a regular file.
pub fn read_reason_at(at: &At) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = at.open_read()?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", esc(&at.shown)),
        ));
    }
    let mut text = Vec::new();
    f.take(MAX_REASON).read_to_end(&mut text)?;
    Ok(text)
}

/// What a reason file says: the last error, the attempts, and when the file was given up on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonText {
    pub error: Option<String>,
    pub attempts: Option<String>,
    pub time: Option<std::time::SystemTime>,
}

/// Reads the lines of a reason file ([`crate::watch::error::Reason`]'s format); what is
/// missing or unreadable is `None`.
pub fn parse_reason(text: &[u8]) -> ReasonText {
    let text = String::from_utf8_lossy(text);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| crate::esc::esc(Path::new(v.trim())).to_string())
    };
    ReasonText {
        error: field("last error: "),
        attempts: field("attempts: "),
        time: text
            .lines()
            .find_map(|l| l.strip_prefix("time: "))
            .and_then(|t| humantime::parse_rfc3339(t.trim()).ok()),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).or_else(|_| std::path::absolute(p));
    match (canon(a), canon(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Moves `f` back into its spool, then deletes its reason.
///
/// # Errors
/// The move failed; the file is still in failed_dir.
pub fn put_back(f: &GivenUp, syncer: &Syncer) -> io::Result<Moved> {
    let failed = Dir::open(&f.failed_dir)?;
    let from = failed.at(&f.rel, false)?;
    let spool = Dir::open(&f.spool)?;
    let to = disposition::put_back(&from, &spool, &f.name, syncer)?;
    let reason_left = f.reason.as_ref().and_then(|_| {
        let (sub, last) = split(&f.rel);
        let mut r = sub.to_os_string();
        r.push(disposition::reason_path(Path::new(last)).as_os_str());
        match failed.at(&r, false).and_then(|at| at.unlink().map(|()| at)) {
            Ok(at) => {
                syncer.mark(&at.dir);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(e),
        }
    });
    Ok(Moved {
        from: f.path.clone(),
        to,
        reason_left,
    })
}

/// `accio retry`: puts the given-up files named by `names` (all of them if empty) of the
/// watches of the configuration at `path` (only the one whose spool is `watch`, if given)
/// back into their spool, printing each move.
///
/// # Errors
/// [`Kind::Config`] (invalid configuration), [`Kind::Usage`] (`watch` names no watch),
/// [`Kind::Other`] (a failed directory cannot be listed; or, reported as they happened, a
/// file could not be moved or a NAME is not a given-up file).
/// What `accio retry` does with the files chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Put them back (the default).
    Move,
    /// `--list`: print each with its age and reason.
    List,
    /// `--dry-run`: print the moves that would be made.
    DryRun,
}

impl Mode {
    pub fn of(list: bool, dry_run: bool) -> Mode {
        match (list, dry_run) {
            (true, _) => Mode::List,
            (false, true) => Mode::DryRun,
            (false, false) => Mode::Move,
        }
    }
}

/// One line of `accio retry --list`: the file, how long ago it was given up on, after how
/// many attempts, and why.
fn list_line(f: &GivenUp, now: std::time::SystemTime) -> String {
    let r = f
        .reason
        .as_deref()
        .and_then(|p| read_reason(p).ok())
        .map(|t| parse_reason(&t))
        .unwrap_or_default();
    // Without a time in the reason, the file's own ctime stands in (set when it was moved).
    let when = r.time.or_else(|| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&f.path).ok()?;
        let secs = u64::try_from(m.ctime()).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
    });
    let age = when.and_then(|t| now.duration_since(t).ok()).map_or_else(
        || "age unknown".to_string(),
        |d| format!("given up {} ago", crate::status::secs(d.as_secs_f64())),
    );
    let attempts = r
        .attempts
        .map_or_else(String::new, |a| format!(" after {a} attempts"));
    let why = r.error.unwrap_or_else(|| "no reason file".to_string());
    format!(
        "{} (from {}): {age}{attempts}: {why}\n",
        esc(&f.path),
        esc(&f.spool.join(&f.name))
    )
}

pub fn retry_command(
    path: &Path,
    watch: Option<&Path>,
    names: &[OsString],
    mode: Mode,
) -> Result<(), Failed> {
    let config = config::load_unchecked(path).map_err(|e| Failed::new(Kind::Config, e))?;
    let selected: Vec<&WatchConfig> = match watch {
        None => config.watches.iter().collect(),
        Some(dir) => {
            let found: Vec<_> = config
                .watches
                .iter()
                .filter(|w| same_dir(&w.dir, dir))
                .collect();
            if found.is_empty() {
                let all: Vec<String> = config
                    .watches
                    .iter()
                    .map(|w| esc(&w.dir).to_string())
                    .collect();
                return Err(Failed::new(
                    Kind::Usage,
                    format!(
                        "--watch {}: not a spool directory of {} (its watches: {})",
                        esc(dir),
                        esc(path),
                        all.join(", ")
                    ),
                ));
            }
            found
        }
    };
    let files = list(&selected)
        .map_err(|(dir, e)| Failed::new(Kind::Other, format!("cannot list {}: {e}", esc(&dir))))?;
    // Problems with single files are printed as they are met; the others are still moved.
    let mut failed = false;
    let chosen: Vec<&GivenUp> = if names.is_empty() {
        files.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for n in names {
            let m: Vec<&GivenUp> = files.iter().filter(|f| matches(f, n)).collect();
            if m.is_empty() {
                error_line(format!(
                    "{}: no such given-up file in {}",
                    esc(Path::new(n)),
                    failed_dirs(&selected)
                ));
                failed = true;
            }
            for f in m {
                if !chosen.contains(&f) {
                    chosen.push(f);
                }
            }
        }
        chosen
    };
    let mut out = String::new();
    if chosen.is_empty() && !failed {
        out.push_str(&format!("nothing to retry in {}\n", failed_dirs(&selected)));
    }
    match mode {
        Mode::Move => {}
        Mode::List => {
            let now = std::time::SystemTime::now();
            for f in &chosen {
                out.push_str(&list_line(f, now));
            }
            return finish_listing(&out, chosen.len(), "given up", failed);
        }
        Mode::DryRun => {
            for f in &chosen {
                out.push_str(&format!(
                    "would move {} → {}\n",
                    esc(&f.path),
                    esc(&f.spool.join(&f.name))
                ));
            }
            return finish_listing(&out, chosen.len(), "would be put back", failed);
        }
    }
    let syncer = Syncer::default();
    let mut moved = 0usize;
    for f in chosen {
        match put_back(f, &syncer) {
            Ok(m) => {
                moved += 1;
                out.push_str(&format!("{} → {}\n", esc(&m.from), esc(&m.to)));
                if let Some(e) = m.reason_left {
                    error_line(format!(
                        "{} is back, but its reason file stays: {e}",
                        esc(&m.to)
                    ));
                }
            }
            Err(e) => {
                error_line(&e);
                failed = true;
            }
        }
    }
    // The moves are durable before we say they happened.
    syncer.flush_blocking();
    if moved > 0 {
        let s = if moved == 1 { "" } else { "s" };
        out.push_str(&format!("{moved} file{s} put back into the spool\n"));
    }
    print_out(&out)?;
    if failed {
        Err(Failed::reported(Kind::Other))
    } else {
        Ok(())
    }
}

/// Prints `out` and a count line (`N files WHAT`) for `--list` and `--dry-run`.
fn finish_listing(out: &str, n: usize, what: &str, failed: bool) -> Result<(), Failed> {
    let mut out = out.to_string();
    if n > 0 {
        let s = if n == 1 { "" } else { "s" };
        out.push_str(&format!("{n} file{s} {what}\n"));
    }
    print_out(&out)?;
    if failed {
        Err(Failed::reported(Kind::Other))
    } else {
        Ok(())
    }
}

/// A NAME on the command line: the file's name in failed_dir, or its path.
fn matches(f: &GivenUp, n: &OsStr) -> bool {
    if n.as_bytes().contains(&b'/') {
        // Its path, or its name relative to failed_dir (`a/b/x.jpg`).
        f.rel == n || same_dir(&f.path, Path::new(n))
    } else {
        f.path.file_name() == Some(n)
    }
}

fn failed_dirs(watches: &[&WatchConfig]) -> String {
    let mut d: Vec<String> = watches
        .iter()
        .map(|w| esc(&w.failed_dir).to_string())
        .collect();
    d.dedup();
    d.join(", ")
}
