//! What the stages of the pipeline share: the watched directories as configured, what every
//! upload task needs, the errors that stop the service. Below the stages (watcher, queue,
//! uploader), so that they take it from here and not from the pipeline that wires them.

use std::path::PathBuf;
use std::sync::Arc;

use super::core;
use super::disposition;
use crate::config::{NameFilter, RetryPolicy, WatchConfig};
use crate::esc::esc;
use crate::metrics::Metrics;
use crate::protocol::Timeouts;
use crate::status::Stats;

/// Not-regular entries already reported ("ignoring … FIFO"), by path, with the identity
/// reported. Owned by the daemon so that a reload (a new pipeline) does not report them
/// again: each is reported once per process (again only if it changes).
pub type Reported = Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, core::Identity>>>;

/// Errors that stop the service. Problems with one file never are: they are logged and
/// retried or set aside.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("inotify watch limit reached (fs.inotify.max_user_watches) while watching {}; raise it, e.g. sysctl fs.inotify.max_user_watches=524288", esc(dir))]
    InotifyWatchLimit { dir: PathBuf },
    #[error("inotify instance limit reached (fs.inotify.max_user_instances); raise it, e.g. sysctl fs.inotify.max_user_instances=1024")]
    InotifyInstanceLimit,
    #[error("cannot watch {}: {message}", esc(dir))]
    Watch { dir: PathBuf, message: String },
    #[error("cannot list {}: {source}", esc(dir))]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid name pattern for {}: {message}", esc(dir))]
    Filter { dir: PathBuf, message: String },
}

/// One watched directory, as the pipeline uses it.
#[derive(Debug)]
pub struct WatchCtx {
    /// Its settings; `dir` made absolute (inotify reports absolute paths).
    pub cfg: WatchConfig,
    /// Compiled `include` / `exclude`.
    pub filter: NameFilter,
}

/// What every upload task needs.
#[derive(Debug)]
pub struct Shared {
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub stats: Arc<Stats>,
    /// Event metrics (deliveries, attempts, give-ups); one per process, across reloads.
    pub metrics: Arc<Metrics>,
    pub syncer: Arc<disposition::Syncer>,
}
