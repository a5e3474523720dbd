//! How the queue tells what the core reports: each [`Report`] in the service's words, at
//! its level, with the fields the journal and the JSON log carry; the special entries a
//! producer makes by the hundred summed up; the watch limit's one line with its fix.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::Queue;
use crate::esc::esc;
use crate::watch::core::{self, Report};
use crate::watch::specials::Say;

/// What the service says, once per watch, when the kernel refused inotify watches for
/// `unwatched` of the `dirs` directories of the tree at `dir`: the count, the limit, what
/// it means, and the fix.
pub fn watch_limit_line(
    dir: &Path,
    dirs: usize,
    unwatched: usize,
    max_user_watches: Option<u64>,
    rescan: Duration,
) -> String {
    let max = max_user_watches.map_or_else(|| "unknown".to_string(), |m| m.to_string());
    let suggest = core::tree::suggest_max_watches(max_user_watches, unwatched);
    format!(
        "the tree {} has {dirs} directories, one inotify watch each, and the kernel refused {unwatched} of them: inotify watch limit reached (fs.inotify.max_user_watches = {max}, shared by all of this user's programs); files in those directories are found by the rescans only (every {}), not at once. Raise it: sysctl fs.inotify.max_user_watches={suggest} (and in /etc/sysctl.d/ to keep it). Said once.",
        esc(dir),
        humantime::format_duration(rescan),
    )
}

/// While the service is short of descriptors or memory, how often it says so.
const TROUBLE_REPORT_EVERY: Duration = Duration::from_secs(60);

impl Queue {
    /// Logs what the core reports, in the service's words.
    pub(super) fn log(&mut self, r: Report) {
        match r {
            Report::Ignoring { key, id } => {
                let path = self.path(&key);
                let kind = id.kind;
                let dir = &self.watches[key.0].cfg.dir;
                // A producer may make any number: the first few by name, then a count.
                match self.special_log.ignoring(Self::now(), dir, &kind) {
                    Say::Name => tracing::warn!(
                        event = "ignored",
                        path = %esc(&path),
                        kind = %kind,
                        "ignoring {}: it is a {kind}, not a regular file; it is left alone and never sent",
                        esc(&path)
                    ),
                    // Summed up by flush_special_log: a line each would be the flood.
                    Say::Count => {}
                }
            }
            Report::WriterOpen { key } => {
                let path = self.path(&key);
                tracing::debug!(
                    "{} is open for writing; it is sent once it is closed",
                    esc(&path)
                );
            }
            Report::WriterQuiet { key, quiet } => tracing::info!(
                "{} was being written but nothing happened to it for {quiet:?}; treating it as complete once it settles",
                esc(&self.path(&key))
            ),
            Report::Young { key, quiet, wait } => tracing::debug!(
                "{} changed less than {quiet:?} ago and whether it is still being written cannot be told; looking again in {wait:.1?} (or when it is closed)",
                esc(&self.path(&key))
            ),
            Report::AttemptFailed {
                key,
                error,
                retry_in,
                ..
            } if error.service_trouble() => {
                // Out of descriptors comes in bursts, one failure per upload that could
                // not start: said once a minute, the rest at debug.
                static LOUD: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
                let now = Instant::now();
                let loud = {
                    let mut last = LOUD.lock().unwrap_or_else(|e| e.into_inner());
                    let due = last.map_or(true, |t| now.duration_since(t) >= TROUBLE_REPORT_EVERY);
                    if due {
                        *last = Some(now);
                    }
                    due
                };
                let path = esc(&self.path(&key)).to_string();
                if loud {
                    tracing::warn!(
                        event = "service_short_of_resources",
                        path = %path,
                        "{error}; {path} waits {retry_in:.1?} (said once a minute while it lasts: raise LimitNOFILE= or lower concurrency)"
                    );
                } else {
                    tracing::debug!(path = %path, "{error}; retrying in {retry_in:.1?}");
                }
            }
            Report::AttemptFailed {
                key,
                attempt,
                max,
                error,
                retry_in,
            } => {
                let of = if max == 0 {
                    String::new()
                } else {
                    format!(" of {max}")
                };
                tracing::warn!(
                    event = "attempt_failed",
                    path = %esc(&self.path(&key)),
                    destination = %self.watches[key.0].cfg.server,
                    attempt,
                    "upload of {} failed (attempt {attempt}{of}): {error}; retrying in {retry_in:.1?}",
                    esc(&self.path(&key))
                );
            }
            Report::DestinationDown {
                dest,
                error,
                waiting,
                probe_in,
                loud,
                unlogged,
            } => {
                let name = self.core.dest_name(dest);
                // One down/up pair a minute at most: a flapping server is counted in the
                // next loud line, not logged each time.
                let since = if unlogged > 0 {
                    format!(" ({unlogged} more outage(s) since the last one reported)")
                } else {
                    String::new()
                };
                if loud {
                    tracing::warn!(
                        event = "destination_down",
                        destination = name,
                        waiting,
                        "{error}; {name} is down{since}: {waiting} file(s) waiting for it stay in the spool (not counted as failed attempts); one probe at a time tests it, the first in {probe_in:.1?} (further failures are reported once a minute or when the error changes)"
                    );
                } else {
                    tracing::debug!(
                        destination = name,
                        waiting,
                        "{error}; {name} is down again (reported with the next outage logged); first probe in {probe_in:.1?}"
                    );
                }
            }
            Report::StillDown {
                dest,
                key,
                error,
                probe_in,
                loud,
            } => {
                let path = self.path(&key);
                if loud {
                    tracing::warn!(
                        event = "destination_still_down",
                        path = %esc(&path),
                        destination = self.core.dest_name(dest),
                        "{error}; {} is still down; {} stays in the spool (not counted as a failed attempt); next probe in {probe_in:.1?}",
                        self.core.dest_name(dest),
                        esc(&path)
                    );
                } else {
                    tracing::debug!(
                        destination = self.core.dest_name(dest),
                        "{error}; {} stays in the spool (not counted as a failed attempt); next probe in {probe_in:.1?}",
                        esc(&path)
                    );
                }
            }
            Report::DestinationUp {
                dest,
                down_for,
                waiting,
                loud,
            } => {
                let name = self.core.dest_name(dest);
                if loud {
                    tracing::info!(
                        event = "destination_up",
                        destination = name,
                        waiting,
                        "{name} is reachable again; {waiting} file(s) waiting go now (it was down for {down_for:.1?})"
                    );
                } else {
                    tracing::debug!(
                        destination = name,
                        waiting,
                        "{name} is reachable again (down for {down_for:.1?})"
                    );
                }
            }
            Report::Limit {
                dest,
                limit,
                baseline,
                smoothed,
                verdict,
            } => match verdict {
                Some(v) => tracing::debug!(
                    destination = self.core.dest_name(dest),
                    limit,
                    "{}: {v}; greeting time {smoothed:.1?}, baseline {baseline:.1?}",
                    self.core.dest_name(dest)
                ),
                None => tracing::debug!(
                    destination = self.core.dest_name(dest),
                    limit,
                    "{}: limit of uploads in flight now {limit} (greeting time {smoothed:.1?}, baseline {baseline:.1?})",
                    self.core.dest_name(dest)
                ),
            },
            Report::DispositionFailed {
                key,
                error,
                failures,
                retry_in,
                delivered,
                loud,
            } => {
                let what = if delivered {
                    "already delivered"
                } else {
                    "given up on"
                };
                let path = self.path(&key);
                if loud {
                    tracing::error!(
                        event = "disposition_failed",
                        path = %esc(&path),
                        failures,
                        "{error}; it stays in the spool ({what}; not sent again); trying again in {retry_in:.1?} (failure {failures}, reported again if the error changes or every {} failures)",
                        core::DISPOSITION_REPORT_EVERY
                    );
                } else {
                    tracing::debug!(
                        failures,
                        "{error}; {} stays in the spool ({what}; not sent again); trying again in {retry_in:.1?} (failure {failures})",
                        esc(&path)
                    );
                }
            }
            Report::Backlog { watch, files } => {
                let dir = &self.watches[watch].cfg.dir;
                if files > 0 {
                    let s = if files == 1 { "" } else { "s" };
                    tracing::info!(
                        files,
                        "{}: backlog found ({files} file{s} already there); sending oldest first",
                        esc(dir)
                    );
                }
            }
            Report::Listed { watch, files } => tracing::debug!(
                files,
                "listed {}: {files} file(s)",
                esc(&self.watches[watch].cfg.dir)
            ),
            Report::ListFailed {
                watch,
                error,
                again,
                first,
            } => {
                let dir = esc(&self.watches[watch].cfg.dir);
                if first {
                    tracing::error!("cannot list {dir}: {error}; trying again every {again:?}");
                } else {
                    tracing::debug!("still cannot list {dir}: {error}");
                }
            }
            Report::ListRecovered { watch } => {
                tracing::info!("{} can be listed again", esc(&self.watches[watch].cfg.dir))
            }
            Report::Rescan { why } => tracing::info!("rescanning the spool directories: {why}"),
            Report::WatchLimit {
                watch,
                dirs,
                unwatched,
                max_user_watches,
            } => {
                let cfg = &self.watches[watch].cfg;
                tracing::warn!(
                    event = "inotify_watch_limit",
                    path = %esc(&cfg.dir),
                    dirs,
                    unwatched,
                    "{}",
                    watch_limit_line(&cfg.dir, dirs, unwatched, max_user_watches, cfg.rescan_interval)
                );
            }
            Report::Full { watch, limit } => tracing::info!(
                limit,
                "{} holds more than {limit} files: the rest wait on disk and are read in as these go (oldest first)",
                esc(&self.watches[watch].cfg.dir)
            ),
        }
    }

    /// Logs how many special entries went unnamed, once their window ended by `now` (`None`:
    /// now, at shutdown).
    pub(super) fn flush_special_log(&mut self, now: Option<std::time::Instant>) {
        if let Some(line) = self.special_log.flush(now) {
            tracing::warn!(event = "ignored", "{line}");
        }
    }
}
