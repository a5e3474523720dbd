//! The queue's driver: one tokio task that feeds the [core](super::core) and performs what
//! it decides. It owns the kernel watcher, the upload tasks and the directory listings; the
//! core owns every decision.
//!
//! The loop: perform the core's actions (an `lstat` or a writers probe is answered at once,
//! inline; a listing or an upload is spawned and answered when it ends), publish the
//! counts, then sleep until the next input: a hint, a finished upload or listing, a status
//! request, shutdown, or the core's next deadline. An idle service sleeps until that
//! deadline and never polls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim;
use super::core::{self, Action, Core, Key, Listing, Outcome, Report, Start};
use super::ctx::{Shared, WatchCtx};
use super::uploader::{self, Job};
use super::watcher::{self, Msg, Watcher};
use crate::esc::esc;
use crate::status::{FileInFlight, View, ViewRequest};

/// Hints handled per wake-up before the other sources get a turn.
const HINT_BATCH: usize = 1024;

/// An upload in progress, for `accio status`.
struct Running {
    key: Key,
    started: Instant,
    attempt: u32,
    bytes: Arc<AtomicU64>,
    /// The file's size, once the attempt claimed it.
    size: Arc<AtomicU64>,
}

/// Everything the queue task owns.
pub struct Queue {
    core: Core,
    /// The kernel watch; kept here to watch a directory again when it was replaced.
    watcher: Watcher,
    watches: Vec<Arc<WatchCtx>>,
    shared: Arc<Shared>,
    /// How long in-flight uploads may finish after shutdown.
    grace: Duration,
    /// Special entries reported, shared with the pipelines before and after a reload.
    reported: super::ctx::Reported,
    inflight: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, Running>,
    scans: JoinSet<(usize, std::io::Result<Listing>)>,
    /// What this queue last added to the shared counters (several pipelines may share them
    /// while a reload overlaps them).
    published: core::Counts,
    /// When the service started, for the view's uptime.
    born: Instant,
}

/// The core's settings from the configuration.
pub fn params(config: &crate::config::Config, watches: &[Arc<WatchCtx>]) -> core::Params {
    let mut dests: Vec<core::DestParams> = Vec::new();
    let mut wparams = Vec::new();
    for w in watches {
        let name = w.cfg.server.to_string();
        let d = match dests.iter().position(|d| d.name == name) {
            Some(d) => d,
            None => {
                dests.push(core::DestParams {
                    name,
                    cap: w.cfg.server_concurrency.unwrap_or(config.concurrency),
                    adaptive: w.cfg.adaptive,
                });
                dests.len() - 1
            }
        };
        wparams.push(core::WatchParams {
            settle: w.cfg.settle,
            rescan_interval: w.cfg.rescan_interval,
            dest: d,
        });
    }
    core::Params {
        global_cap: config.concurrency,
        active_limit: config.active_limit,
        retry: config.retry,
        writer_quiet_min: config.writer_quiet,
        watches: wparams,
        dests,
    }
}

impl Queue {
    pub fn new(
        watcher: Watcher,
        watches: Vec<Arc<WatchCtx>>,
        shared: Arc<Shared>,
        params: core::Params,
        grace: Duration,
        reported: super::ctx::Reported,
    ) -> Queue {
        // Special entries already reported by an earlier pipeline, as keys of this one.
        let mut seed = HashMap::new();
        {
            let r = reported.lock().unwrap_or_else(|p| p.into_inner());
            for (path, id) in r.iter() {
                for (i, w) in watches.iter().enumerate() {
                    if path.parent() == Some(w.cfg.dir.as_path()) {
                        if let Some(name) = path.file_name() {
                            seed.insert((i, name.to_os_string()), *id);
                        }
                    }
                }
            }
        }
        let now = Instant::now().into_std();
        let mut core = Core::new(params, now, seed, fastrand::u64(..));
        for (watch, &id) in watcher.dir_ids().iter().enumerate() {
            core.watched(watch, id);
        }
        Queue {
            core,
            watcher,
            watches,
            shared,
            grace,
            reported,
            inflight: JoinSet::new(),
            running: HashMap::new(),
            scans: JoinSet::new(),
            published: core::Counts::default(),
            born: Instant::now(),
        }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.watches[key.0].cfg.dir.join(&key.1)
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    /// Performs every action the core has.
    fn perform(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Look(key) => {
                    let id = claim::lstat(&self.path(&key)).ok();
                    self.core.looked(Self::now(), key, id);
                }
                Action::ProbeWriters(key) => {
                    let w = claim::probe_writers(&self.path(&key));
                    self.core.writers(Self::now(), key, w);
                }
                Action::List { watch, limit } => {
                    let w = self.watches[watch].clone();
                    self.scans.spawn_blocking(move || {
                        let r = watcher::list(&w.cfg.dir, &|n| w.filter.accepts(n), limit);
                        (watch, r)
                    });
                }
                Action::Rewatch { watch } => {
                    let dir = self.watches[watch].cfg.dir.clone();
                    match self.watcher.rewatch(&dir) {
                        Ok(()) => tracing::warn!(
                            "{} was replaced (or mounted over); watching the new one",
                            esc(&dir)
                        ),
                        Err(e) => {
                            tracing::error!(
                                "{e}; relying on rescans and trying again at the next one"
                            );
                            self.core.rewatch_failed(watch);
                        }
                    }
                }
                Action::Start(s) => self.start(s),
                Action::Report(r) => self.log(r),
            }
        }
    }

    fn start(&mut self, s: Start) {
        let progress = Arc::new(AtomicU64::new(0));
        let size = Arc::new(AtomicU64::new(0));
        let job = Job {
            watch: self.watches[s.key.0].clone(),
            name: s.key.1.clone(),
            attempt: s.attempt,
            last: s.last,
            mode: s.mode,
            trusted: s.trusted,
            quiet: s.quiet,
            progress: progress.clone(),
            size: size.clone(),
            found: s.found,
        };
        self.shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let handle = self
            .inflight
            .spawn(uploader::process(job, self.shared.clone()));
        self.running.insert(
            handle.id(),
            Running {
                key: s.key,
                started: Instant::now(),
                attempt: s.attempt,
                bytes: progress,
                size,
            },
        );
    }

    /// Logs what the core reports, in the service's words.
    fn log(&self, r: Report) {
        match r {
            Report::Ignoring { key, id } => {
                let path = self.path(&key);
                let kind = id.kind;
                tracing::warn!(
                    kind = %kind,
                    "ignoring {}: it is a {kind}, not a regular file; it is left alone and never sent",
                    esc(&path)
                );
                // For the pipelines after a reload: each is reported once per process.
                let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
                reported.insert(path, id);
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
            } => tracing::warn!(
                destination = self.core.dest_name(dest),
                waiting,
                "{error}; {} is down: {waiting} file(s) waiting for it stay in the spool (not counted as failed attempts); one probe at a time tests it, the first in {probe_in:.1?} (further failures are reported once a minute or when the error changes)",
                self.core.dest_name(dest)
            ),
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
            } => tracing::info!(
                destination = self.core.dest_name(dest),
                waiting,
                "{} is reachable again; {waiting} file(s) waiting go now (it was down for {down_for:.1?})",
                self.core.dest_name(dest)
            ),
            Report::Limit {
                dest,
                limit,
                baseline,
                smoothed,
            } => tracing::debug!(
                destination = self.core.dest_name(dest),
                limit,
                "{}: limit of uploads in flight now {limit} (greeting time {smoothed:.1?}, baseline {baseline:.1?})",
                self.core.dest_name(dest)
            ),
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
            Report::Full { watch, limit } => tracing::info!(
                limit,
                "{} holds more than {limit} files: the rest wait on disk and are read in as these go (oldest first)",
                esc(&self.watches[watch].cfg.dir)
            ),
        }
    }

    /// Publishes the core's counts into the shared counters.
    fn publish(&mut self) {
        self.publish_counts(self.core.counts());
    }

    /// Moves this queue's share of the shared counters from what it published last to `now`.
    fn publish_counts(&mut self, now: core::Counts) {
        let adjust = |stat: &AtomicU64, before: u64, after: u64| {
            if after > before {
                stat.fetch_add(after - before, Ordering::Relaxed);
            } else {
                stat.fetch_sub(before - after, Ordering::Relaxed);
            }
        };
        let st = &self.shared.stats;
        adjust(&st.queued, self.published.queued, now.queued);
        adjust(
            &st.destinations_down,
            self.published.destinations_down,
            now.destinations_down,
        );
        self.published = now;
    }

    /// The view for `accio status` and the metrics.
    fn view(&self) -> View {
        let now = Self::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let cv = self.core.view(now, wall, core::VIEW_WAITING);
        let mut watches = cv.watches;
        for (i, w) in watches.iter_mut().enumerate() {
            w.dir = esc(&self.watches[i].cfg.dir).to_string();
        }
        let mut in_flight: Vec<FileInFlight> = self
            .running
            .values()
            .map(|r| FileInFlight {
                path: esc(&self.path(&r.key)).to_string(),
                destination: self.watches[r.key.0].cfg.server.to_string(),
                bytes_sent: r.bytes.load(Ordering::Relaxed),
                size: r.size.load(Ordering::Relaxed),
                elapsed_s: r.started.elapsed().as_secs_f64(),
                attempt: r.attempt,
            })
            .collect();
        in_flight.sort_by(|a, b| b.elapsed_s.total_cmp(&a.elapsed_s));
        let waiting = cv
            .waiting
            .into_iter()
            .map(|(key, age_s, why)| crate::status::WaitingFile {
                path: esc(&self.path(&key)).to_string(),
                destination: self.watches[key.0].cfg.server.to_string(),
                age_s,
                why,
            })
            .collect();
        View {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.born.elapsed().as_secs_f64(),
            totals: self.shared.stats.snapshot(),
            destinations: cv.destinations,
            watches,
            in_flight,
            waiting,
        }
    }

    /// Runs until `shutdown`; then stops starting uploads, lets those in flight finish
    /// within the grace period, and aborts the rest (their files stay in the spool).
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        overflow: Arc<AtomicBool>,
        mut views: mpsc::Receiver<ViewRequest>,
        shutdown: CancellationToken,
    ) {
        let far = Duration::from_secs(24 * 3600);
        let mut hints_open = true;
        let mut views_open = true;
        loop {
            self.perform();
            self.publish();
            let wake = self
                .core
                .poll_timeout()
                .map_or_else(|| Instant::now() + far, Instant::from_std);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    self.on_join(done);
                    // Every attempt that ended meanwhile, in this one wake-up: the core then
                    // decides (and gives out the freed slots) once for the batch.
                    while let Some(done) = self.inflight.try_join_next_with_id() {
                        self.on_join(done);
                    }
                }
                msg = rx.recv(), if hints_open => match msg {
                    Some(msg) => {
                        self.message(msg);
                        for _ in 0..HINT_BATCH {
                            match rx.try_recv() {
                                Ok(msg) => self.message(msg),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        // Cannot happen while the watcher lives; rescans still find files.
                        tracing::error!("the kernel watcher stopped; relying on rescans");
                        hints_open = false;
                    }
                },
                Some(scan) = self.scans.join_next(), if !self.scans.is_empty() => {
                    if let Ok((watch, result)) = scan {
                        self.core.listed(Self::now(), watch, result);
                    }
                }
                req = views.recv(), if views_open => match req {
                    Some(reply) => {
                        let _ = reply.send(self.view());
                    }
                    None => views_open = false,
                },
                _ = tokio::time::sleep_until(wake) => {
                    self.core.handle_timeout(Self::now());
                }
            }
            if overflow.swap(false, Ordering::AcqRel) {
                self.core.rescan_all(
                    Self::now(),
                    "events were dropped (too many at once)".to_string(),
                );
            }
        }
        self.drain().await;
    }

    fn message(&mut self, msg: Msg) {
        match msg {
            // The watcher's callback sent only names its watch's filter accepts.
            Msg::Hint { watch, name, hint } => self.core.hint(Self::now(), watch, name, hint),
            Msg::Rescan { why } => self.core.rescan_all(Self::now(), why),
        }
    }

    fn on_join(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => {
                if e.is_panic() {
                    tracing::error!("an upload task panicked: {e}");
                }
                (e.id(), None)
            }
        };
        self.shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(r) = self.running.remove(&id) else {
            return;
        };
        match &outcome {
            Some(Outcome::Delivered { .. }) => {
                self.shared.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(Outcome::GaveUp) => {
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.core.finished(Self::now(), r.key, outcome);
    }

    async fn drain(&mut self) {
        self.core.stop();
        self.perform();
        self.scans.abort_all();
        if !self.inflight.is_empty() {
            tracing::info!(
                "stopping: waiting up to {:?} for {} upload(s) in flight",
                self.grace,
                self.inflight.len()
            );
        }
        let deadline = Instant::now() + self.grace;
        while !self.inflight.is_empty() {
            tokio::select! {
                Some(done) = self.inflight.join_next_with_id() => {
                    self.on_join(done);
                    self.perform();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        "stopping: {} upload(s) did not finish within {:?}; aborted, the files stay in the spool",
                        self.inflight.len(),
                        self.grace
                    );
                    self.inflight.abort_all();
                    while let Some(done) = self.inflight.join_next_with_id().await {
                        self.on_join(done);
                    }
                }
            }
        }
        // This pipeline no longer holds anything: take its share out of the counters.
        self.publish_counts(core::Counts::default());
    }
}
