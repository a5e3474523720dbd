//! The spool service. Data flows one way, one module per stage:
//!
//! 1. [`watcher`]: inotify events (hints) and directory listings (the truth).
//! 2. [`queue`]: readiness (moved in, or closed and settled), dedup, backlog order, timers,
//!    retries, and bounded concurrency across all watches.
//! 3. [`uploader`]: one attempt at one file: [`claim`] it (regular file, locked, still the
//!    same inode), upload it, check it did not change while being sent.
//! 4. [`disposition`]: move to `done_dir` / delete, or move to `failed_dir` with a reason;
//!    never overwrite; directory fsyncs grouped.
//!
//! Delivery is at least once: a file leaves the spool only after its upload was confirmed,
//! so a crash at any point can only cause a second send.

pub mod claim;
pub mod disposition;
pub mod queue;
pub mod uploader;
pub mod watcher;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NameFilter, RetryPolicy, WatchConfig};
use crate::protocol::Timeouts;
use crate::status::Stats;

/// Errors that stop the service. Problems with one file never are: they are logged and
/// retried or set aside.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("inotify watch limit reached (fs.inotify.max_user_watches) while watching {}; raise it, e.g. sysctl fs.inotify.max_user_watches=524288", dir.display())]
    InotifyWatchLimit { dir: PathBuf },
    #[error("inotify instance limit reached (fs.inotify.max_user_instances); raise it, e.g. sysctl fs.inotify.max_user_instances=1024")]
    InotifyInstanceLimit,
    #[error("cannot watch {}: {message}", dir.display())]
    Watch { dir: PathBuf, message: String },
    #[error("cannot list {}: {source}", dir.display())]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid name pattern for {}: {message}", dir.display())]
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
    pub syncer: Arc<disposition::Syncer>,
}

/// Runs the spool service for `config` until `shutdown` is cancelled, then lets uploads in
/// flight finish within `config.shutdown_grace` and returns. `ready` is sent once every
/// directory is watched and its backlog is queued.
///
/// # Errors
/// [`FatalError`] when a directory cannot be watched or listed at start (inotify limits are
/// named as such).
pub async fn run(
    config: Config,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<()>>,
) -> Result<(), FatalError> {
    let mut watches = Vec::with_capacity(config.watches.len());
    for w in &config.watches {
        let mut cfg = w.clone();
        cfg.dir = std::path::absolute(&w.dir).map_err(|e| FatalError::Watch {
            dir: w.dir.clone(),
            message: e.to_string(),
        })?;
        let filter = NameFilter::new(&w.include, &w.exclude).map_err(|e| FatalError::Filter {
            dir: w.dir.clone(),
            message: e.to_string(),
        })?;
        watches.push(Arc::new(WatchCtx { cfg, filter }));
    }
    let dirs: Vec<PathBuf> = watches.iter().map(|w| w.cfg.dir.clone()).collect();

    // Watch first, then list: a file created in between is in the listing or in the events
    // (or both: the queue deduplicates).
    let (tx, rx) = mpsc::channel(watcher::HINT_CAPACITY);
    let overflow = Arc::new(AtomicBool::new(false));
    let filters = watches.iter().map(|w| w.filter.clone()).collect();
    let watcher = watcher::start(&dirs, filters, tx, overflow.clone())?;

    let syncer = disposition::Syncer::new();
    let shared = Arc::new(Shared {
        timeouts: config.timeouts,
        retry: config.retry,
        stats: stats.clone(),
        syncer: syncer.clone(),
    });
    let mut queue = queue::Queue::new(
        watcher,
        watches.clone(),
        shared,
        config.concurrency,
        config.shutdown_grace,
    );
    for (i, w) in watches.iter().enumerate() {
        let w2 = w.clone();
        let listing = tokio::task::spawn_blocking(move || {
            watcher::list(&w2.cfg.dir, &|n| w2.filter.accepts(n))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        .map_err(|source| FatalError::List {
            dir: w.cfg.dir.clone(),
            source,
        })?;
        tracing::info!(
            dir = %w.cfg.dir.display(),
            backlog = listing.entries.len(),
            "watching {} ({} entries already there) → {}",
            w.cfg.dir.display(),
            listing.entries.len(),
            w.cfg.server
        );
        queue.initial_listing(i, listing);
    }
    stats
        .watching
        .fetch_add(watches.len() as u64, Ordering::Relaxed);
    let sync_stop = CancellationToken::new();
    let sync_task = tokio::spawn(syncer.run(sync_stop.clone()));
    if let Some(ready) = ready {
        let _ = ready.send(());
    }

    // The queue owns the watcher (to watch a replaced directory again) and drops it when it
    // stops.
    queue.run(rx, overflow, shutdown).await;

    stats
        .watching
        .fetch_sub(watches.len() as u64, Ordering::Relaxed);
    sync_stop.cancel();
    let _ = sync_task.await;
    Ok(())
}
