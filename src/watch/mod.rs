//! The spool service. Data flows one way, one module per stage:
//!
//! 1. [`watcher`]: inotify events (hints) and directory listings (the truth).
//! 2. [`core`]: every decision, without I/O: readiness (moved in, or closed and settled),
//!    timers, retries, per-destination lanes with fair dispatch, down destinations, adaptive
//!    limits, and the bounded set of files held in memory. [`queue`] is its tokio driver.
//! 3. [`uploader`]: one attempt at one file: [`claim`] it (regular file, locked, still the
//!    same inode), upload it, check it did not change while being sent.
//! 4. [`disposition`]: move to `done_dir` / delete, or move to `failed_dir` with a reason;
//!    never overwrite; directory fsyncs grouped.
//!
//! What the stages share (the watches, what every upload needs, the errors that stop the
//! service) is in [`ctx`], below them.
//!
//! What goes wrong in an attempt travels typed ([`error`]): the core compares kinds, and the
//! message is rendered only where it is logged, shown or written to a `.reason` file.
//!
//! Delivery is at least once: a file leaves the spool only after its upload was confirmed,
//! so a crash at any point can only cause a second send.

pub mod claim;
pub mod core;
pub mod ctx;
pub mod disposition;
pub mod error;
pub mod lane;
pub mod listing;
pub mod queue;
pub mod specials;
pub mod uploader;
pub mod watcher;

pub use ctx::{FatalError, Reported, Shared, WatchCtx};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NameFilter};
use crate::metrics::Metrics;
use crate::rate::Rates;
use crate::status::Stats;

use crate::esc::esc;

/// Runs the spool service for `config` until `shutdown` is cancelled, then lets uploads in
/// flight finish within `config.shutdown_grace` and returns. `ready` is sent once every
/// directory is watched (the backlog is listed after, in the queue).
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
    let metrics = Arc::new(Metrics::default());
    run_with(
        config,
        stats,
        metrics,
        shutdown,
        ready,
        Reported::default(),
        None,
        Arc::default(),
        Arc::new(queue::Fs),
    )
    .await
}

/// [`run`], recording events into the process's `metrics`, sharing the set of special
/// entries already reported with earlier pipelines of the same process (see [`Reported`]),
/// with the process's bandwidth limits (`rates`, set to this configuration's), and
/// inspecting the spools through `spool` ([`queue::Fs`], or a test's seam).
///
/// # Errors
/// As [`run`].
// Each argument is one thing the process keeps across reloads, or the caller's own seam; a
// struct of them would only be unpacked again here.
#[allow(clippy::too_many_arguments)]
pub async fn run_with(
    config: Config,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<()>>,
    reported: Reported,
    views: Option<mpsc::Receiver<crate::status::ViewRequest>>,
    rates: Arc<Rates>,
    spool: Arc<dyn queue::Spool>,
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
        let dirs = ctx::Dirs::open(&cfg)?;
        watches.push(Arc::new(WatchCtx {
            cfg,
            filter,
            dirs,
            lane: lane::Lane::new("accio-fs"),
        }));
    }

    // Watch first, then list: a file created in between is in the listing or in the events
    // (or both: the queue deduplicates).
    let (tx, rx) = mpsc::channel(watcher::HINT_CAPACITY);
    let overflow = Arc::new(AtomicBool::new(false));
    let roots = watches
        .iter()
        .map(|w| watcher::Root {
            dir: w.cfg.dir.clone(),
            filter: w.filter.clone(),
            recursive: w.cfg.recursive,
            max_depth: w.cfg.max_depth,
        })
        .collect();
    let watcher = watcher::start(roots, tx, overflow.clone())?;

    let syncer = disposition::Syncer::new();
    let params = queue::params(&config, &watches);
    let shared = Arc::new(Shared {
        timeouts: config.timeouts,
        retry: config.retry,
        stats: stats.clone(),
        metrics: metrics.clone(),
        syncer: syncer.clone(),
        rates: rates.clone(),
        handshakes: Default::default(),
    });
    let mut spools = Vec::new();
    for w in &watches {
        // The listing itself runs in the queue, after READY (a large backlog must not delay
        // it); a directory that cannot be read at all stops the start here.
        std::fs::read_dir(&w.cfg.dir).map_err(|source| FatalError::List {
            dir: w.cfg.dir.clone(),
            source,
        })?;
        // Leftovers of a crash, in the background: done_dir may be large, and nothing
        // waits for this.
        let (done, failed) = (w.cfg.done_dir.clone(), w.cfg.failed_dir.clone());
        let stale_after = config.stale_after;
        tokio::task::spawn_blocking(move || {
            for d in done.iter().chain(std::iter::once(&failed)) {
                disposition::warn_stale_temporaries(d, stale_after);
            }
        });
        spools.push(w.clone());
        // Each watch's metric series exist from the start (at 0).
        metrics.watch_configured(&w.cfg.dir.to_string_lossy(), &w.cfg.server.to_string());
        tracing::info!("watching {} → {}", esc(&w.cfg.dir), w.cfg.server);
    }
    let queue = queue::Queue::new(
        watcher,
        watches.clone(),
        shared,
        params,
        config.shutdown_grace,
        reported,
        spool,
    );
    stats
        .watching
        .fetch_add(watches.len() as u64, Ordering::Relaxed);
    let sync_stop = CancellationToken::new();
    let sync_task = tokio::spawn(syncer.clone().run(sync_stop.clone()));
    rates.configure(
        config.rates.all.clone(),
        config
            .rates
            .destinations
            .iter()
            .map(|(d, p)| (d.to_string(), p.clone()))
            .collect(),
        crate::rate::local_time_of_day(),
    );
    let rate_task = tokio::spawn(follow_timetables(rates, sync_stop.clone()));
    let restore_task = tokio::spawn(restore_deletions(
        spools,
        syncer.clone(),
        config.stale_after,
        sync_stop.clone(),
    ));
    if let Some(ready) = ready {
        let _ = ready.send(());
    }

    // The queue owns the watcher (to watch a replaced directory again) and drops it when it
    // stops.
    let views = views.unwrap_or_else(|| mpsc::channel(1).1);
    queue.run(rx, overflow, views, shutdown).await;

    stats
        .watching
        .fetch_sub(watches.len() as u64, Ordering::Relaxed);
    sync_stop.cancel();
    let _ = sync_task.await;
    let _ = restore_task.await;
    let _ = rate_task.await;
    Ok(())
}

/// Moves the limits along their timetables: every second while any limit has one, so that
/// an entry takes effect within a second of its time (also after the clock was set).
/// Without timetables it only waits to be stopped.
async fn follow_timetables(rates: Arc<Rates>, stop: CancellationToken) {
    if !rates.scheduled() {
        return stop.cancelled().await;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => rates.tick(crate::rate::local_time_of_day()),
        }
    }
}

/// Puts back files a crash left hidden by a delete (see
/// [`disposition::restore_stale_deletions`]): at start, and then periodically, since a
/// service restarted at once (systemd) finds them too young to be taken for leftovers.
async fn restore_deletions(
    spools: Vec<Arc<WatchCtx>>,
    syncer: Arc<disposition::Syncer>,
    stale_after: std::time::Duration,
    stop: CancellationToken,
) {
    let period = (stale_after / 2).clamp(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_secs(30),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (s, syncer) = (spools.clone(), syncer.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for w in &s {
                // Subdirectories only for a watch of them (`recursive`): a watch of the spool
                // alone never walks what producers keep below it.
                disposition::restore_stale_deletions(
                    &w.dirs.spool(),
                    w.cfg.recursive,
                    &syncer,
                    stale_after,
                );
            }
        })
        .await;
    }
}
