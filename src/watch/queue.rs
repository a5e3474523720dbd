//! The queue's driver: one tokio task that feeds the [core](super::core) and performs what
//! it decides. It owns the kernel watcher, the upload tasks and the directory listings; the
//! core owns every decision.
//!
//! The loop: perform the core's actions (a listing or an upload is spawned and answered
//! when it ends; `lstat`s and writer probes are gathered per watch and asked in one batch on
//! a blocking thread), publish the counts, then sleep until the next input: a hint, a
//! finished upload, listing or batch of questions, a status request, shutdown, or the
//! core's next deadline. An idle service sleeps until that deadline and never polls.
//!
//! No filesystem call that can block runs on the queue task itself: a spool on a hung NFS
//! or FUSE mount stalls its own watch's questions (one batch at a time per watch, so one
//! blocked thread), while the other watches keep being looked at and sent. The [`Spool`]
//! trait is the seam the tests use to hang one.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claim;
use super::core::{self, Action, Core, Identity, Key, Listing, Outcome, Start, Writers};
use super::ctx::{Shared, WatchCtx};
use super::listing;
use super::specials::SpecialLog;
use super::uploader::{self, Job};
use super::watcher::{Msg, Watcher};
use crate::esc::esc;
use crate::status::{FileInFlight, View, ViewRequest};

mod report;
pub use report::watch_limit_line;

/// Hints handled per wake-up before the other sources get a turn.
const HINT_BATCH: usize = 1024;

/// Questions (looks, writer probes) asked per blocking task, at most: as many as a wake-up
/// of the core fires timers.
const ASK_BATCH: usize = 4096;

/// How the driver inspects names in a spool: the seam between the queue and the
/// filesystem, so that a test can make one spool hang.
pub trait Spool: Send + Sync + 'static {
    /// `lstat`: the identity of what `path` names, `None` if nothing (or it cannot be told).
    fn lstat(&self, path: &Path) -> Option<Identity>;
    /// Whether anybody has `path` open for writing.
    fn writers(&self, path: &Path) -> Writers;
}

/// The filesystem itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fs;

impl Spool for Fs {
    fn lstat(&self, path: &Path) -> Option<Identity> {
        claim::lstat(path).ok()
    }

    fn writers(&self, path: &Path) -> Writers {
        claim::probe_writers(path)
    }
}

/// A question of the core about one name.
enum Ask {
    Look(Key),
    Writers(Key),
}

/// Its answer.
enum Answer {
    /// With the wall clock before the batch's first `lstat`.
    Looked(Key, Option<Identity>, i128),
    Writers(Key, Writers),
}

/// Answers `asks` about names in `dir` through `spool`. A question whose call panicked is
/// answered as if nothing could be told (the name is looked at again by the next listing).
fn answer(spool: &dyn Spool, dir: &Path, asks: Vec<Ask>) -> Vec<Answer> {
    let guarded = |f: &dyn Fn() -> Answer, fallback: Answer| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
    };
    let wall_ns = listing::wall_now();
    asks.into_iter()
        .map(|a| match a {
            Ask::Look(key) => {
                let path = dir.join(&key.1);
                let k = key.clone();
                guarded(
                    &|| Answer::Looked(k.clone(), spool.lstat(&path), wall_ns),
                    Answer::Looked(key, None, wall_ns),
                )
            }
            Ask::Writers(key) => {
                let path = dir.join(&key.1);
                let k = key.clone();
                guarded(
                    &|| Answer::Writers(k.clone(), spool.writers(&path)),
                    Answer::Writers(key, Writers::Unknown),
                )
            }
        })
        .collect()
}

/// An upload in progress, for `accio status`.
struct Running {
    key: Key,
    started: Instant,
    attempt: u32,
    bytes: Arc<AtomicU64>,
    /// The file's size, once the attempt claimed it.
    size: Arc<AtomicU64>,
    /// Stops the task ([`Action::Abandon`]).
    abort: tokio::task::AbortHandle,
    /// Stopped because its greeting was overdue: reported as a greeting timeout.
    abandoned: bool,
}

/// What a listing task brings back.
enum Scan {
    /// [`Action::List`]'s listing or walk.
    Listed(std::io::Result<Listing>),
    /// [`Action::ListNames`]'s names.
    Named(std::io::Result<core::Names>),
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
    /// Which special entries are named in the log, which only summed up.
    special_log: SpecialLog,
    inflight: JoinSet<Outcome>,
    running: HashMap<tokio::task::Id, Running>,
    scans: JoinSet<(usize, Scan)>,
    /// How names are inspected.
    spool: Arc<dyn Spool>,
    /// Per watch: questions not asked yet, and whether a batch of its is being answered
    /// (one at a time: a hung spool holds one blocking thread, not one per wake-up).
    asks: Vec<VecDeque<Ask>>,
    asking: Vec<bool>,
    answers: JoinSet<(usize, Vec<Answer>)>,
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
            recursive: w.cfg.recursive,
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

/// Returns the allocator's free pages to the kernel. After the walk of a tree has been
/// applied: a walk reads each directory through a buffer of its own (32 KiB from glibc's
/// `opendir`) between the names it keeps, which leaves holes that a flat listing does not;
/// without this they stay resident.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
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
        spool: Arc<dyn Spool>,
    ) -> Queue {
        // Special entries already reported by an earlier pipeline are known to this one.
        let dirs: Vec<PathBuf> = watches.iter().map(|w| w.cfg.dir.clone()).collect();
        let now = Instant::now().into_std();
        let mut core = Core::new(params, now, reported.tracker(&dirs), fastrand::u64(..));
        for (watch, &id) in watcher.dir_ids().iter().enumerate() {
            core.watched(watch, id);
        }
        Queue {
            core,
            watcher,
            asks: watches.iter().map(|_| VecDeque::new()).collect(),
            asking: vec![false; watches.len()],
            answers: JoinSet::new(),
            spool,
            watches,
            shared,
            grace,
            special_log: SpecialLog::default(),
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
                Action::Look(key) => self.asks[key.0].push_back(Ask::Look(key)),
                Action::ProbeWriters(key) => self.asks[key.0].push_back(Ask::Writers(key)),
                Action::AskGreeted(key) => {
                    // Bytes sent: the greeting came. An attempt no longer running has
                    // reported back, or is about to: greeted as far as this goes.
                    let greeted = self
                        .running
                        .values()
                        .find(|r| r.key == key)
                        .map_or(true, |r| r.bytes.load(Ordering::Relaxed) > 0);
                    self.core.greeted(Self::now(), key, greeted);
                }
                Action::Abandon(key) => {
                    // Dropping the task resets its connection (linger 0) and releases the
                    // claim; `on_join` reports it as a greeting timeout.
                    if let Some(r) = self.running.values_mut().find(|r| r.key == key) {
                        r.abandoned = true;
                        r.abort.abort();
                    }
                }
                Action::List { watch, limit, .. } if self.watches[watch].cfg.recursive => {
                    let w = self.watches[watch].clone();
                    let watches = self.watcher.watches();
                    let others: Vec<PathBuf> = self
                        .watches
                        .iter()
                        .map(|o| o.cfg.dir.clone())
                        .filter(|d| *d != w.cfg.dir)
                        .collect();
                    self.scans.spawn_blocking(move || {
                        let n = watches.begin(watch);
                        let place = |dir: &Path, id| watches.place(watch, n, dir, id);
                        let walk = listing::Walk {
                            root: &w.cfg.dir,
                            accepts: &|n| w.filter.accepts(n),
                            enters: &|p| w.filter.enters(p),
                            max_depth: w.cfg.max_depth,
                            prune: w.cfg.prunes().then_some(w.cfg.settle),
                            others: &others,
                            place: &place,
                        };
                        let r = listing::walk(&walk, limit);
                        if r.is_ok() {
                            watches.walked(watch, n);
                        }
                        (watch, Scan::Listed(r))
                    });
                }
                Action::List { watch, limit, tail } => {
                    let w = self.watches[watch].clone();
                    self.scans.spawn_blocking(move || {
                        let r = listing::list(&w.cfg.dir, &|n| w.filter.accepts(n), limit, tail);
                        (watch, Scan::Listed(r))
                    });
                }
                Action::ListNames { watch, hashes } => {
                    let w = self.watches[watch].clone();
                    self.scans.spawn_blocking(move || {
                        let r = listing::names(&w.cfg.dir, &|n| w.filter.accepts(n), &hashes);
                        (watch, Scan::Named(r))
                    });
                }
                Action::Rewatch { watch } => {
                    let dir = self.watches[watch].cfg.dir.clone();
                    match self.watcher.rewatch(&dir) {
                        Ok(()) => {
                            tracing::warn!(
                                "{} was replaced (or mounted over); watching the new one",
                                esc(&dir)
                            );
                            // Claims go through the directory watched (see `ctx::Dirs`).
                            if let Err(e) = self.watches[watch].dirs.reopen_spool(&dir) {
                                tracing::error!(
                                    "{e}; files are still taken from the previous directory"
                                );
                            }
                        }
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
        self.ask();
    }

    /// Asks each watch's questions on a blocking thread, a batch at a time per watch.
    fn ask(&mut self) {
        for w in 0..self.asks.len() {
            if self.asking[w] || self.asks[w].is_empty() {
                continue;
            }
            let n = self.asks[w].len().min(ASK_BATCH);
            let batch: Vec<Ask> = self.asks[w].drain(..n).collect();
            let (spool, dir) = (self.spool.clone(), self.watches[w].cfg.dir.clone());
            self.asking[w] = true;
            self.answers
                .spawn_blocking(move || (w, answer(&*spool, &dir, batch)));
        }
    }

    /// The answers to a batch of questions of watch `w`.
    fn answered(&mut self, w: usize, answers: Vec<Answer>) {
        if let Some(asking) = self.asking.get_mut(w) {
            *asking = false;
        }
        let now = Self::now();
        for a in answers {
            match a {
                Answer::Looked(key, id, wall_ns) => self.core.looked(now, key, id, wall_ns),
                Answer::Writers(key, writers) => self.core.writers(now, key, writers),
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
            settle: s.settle,
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
                abort: handle.clone(),
                abandoned: false,
            },
        );
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
    fn view(&self, q: &crate::status::ViewQuery) -> View {
        let now = Self::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // An unknown destination lists no waiting file (the client names the known ones).
        let dest = q
            .destination
            .as_deref()
            .map(|n| self.core.dest_by_name(n).unwrap_or(usize::MAX));
        let cv = self.core.view_of(now, wall, q.max_waiting(), dest);
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
            waiting_total: Some(cv.waiting_total),
            reload_refused: self.shared.stats.reload_refused(),
            rates: self.shared.rates.view(),
        }
    }

    /// A request of the control socket or the metrics endpoint.
    fn request(&mut self, req: ViewRequest) {
        match req {
            ViewRequest::View(q, reply) => {
                let _ = reply.send(self.view(&q));
            }
            ViewRequest::Flush(name, reply) => {
                let dest = match name.as_deref().map(|n| self.core.dest_by_name(n)) {
                    None => None,
                    Some(Some(d)) => Some(d),
                    Some(None) => {
                        let known: Vec<&str> = self.core.dest_names().collect();
                        let _ = reply.send(Err(format!(
                            "no destination {:?}; the destinations are: {}",
                            name.unwrap_or_default(),
                            known.join(", ")
                        )));
                        return;
                    }
                };
                let f = self.core.flush(Self::now(), dest);
                tracing::info!(
                    event = "flush",
                    probed = f.probed,
                    files = f.files,
                    "flush: probing {} destination(s) down now, retrying {} file(s) backing off now",
                    f.probed,
                    f.files
                );
                let _ = reply.send(Ok(crate::status::Flushed {
                    probed: f.probed as u64,
                    files: f.files as u64,
                }));
            }
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
                .into_iter()
                .chain(self.special_log.due())
                .min()
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
                Some(done) = self.answers.join_next(), if !self.answers.is_empty() => {
                    // Never an error: the batch catches its panics, and it is not aborted.
                    if let Ok((w, answers)) = done {
                        self.answered(w, answers);
                    }
                }
                Some(scan) = self.scans.join_next(), if !self.scans.is_empty() => {
                    match scan {
                        Ok((watch, Scan::Listed(result))) => {
                            self.core.listed(Self::now(), watch, result);
                            if self.watches[watch].cfg.recursive {
                                give_back_memory();
                            }
                        }
                        Ok((watch, Scan::Named(result))) => {
                            self.core.named(Self::now(), watch, result);
                        }
                        Err(_) => {}
                    }
                }
                req = views.recv(), if views_open => match req {
                    Some(req) => self.request(req),
                    None => views_open = false,
                },
                _ = tokio::time::sleep_until(wake) => {
                    self.core.handle_timeout(Self::now());
                }
            }
            self.flush_special_log(Some(Self::now()));
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
            Msg::Tree { watch } => self.core.tree_changed(Self::now(), watch),
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
        // Abandoned while it waited for its greeting: a failure before the greeting, like
        // the timeout it stood for (not counted against the file).
        let outcome = match outcome {
            None if r.abandoned => {
                let dest = self.watches[r.key.0].cfg.server.clone();
                let waited = r.started.elapsed();
                self.shared.metrics.attempt(
                    &dest.to_string(),
                    crate::metrics::AttemptResult::no_greeting,
                    waited,
                );
                let error = crate::client::ClientError::Protocol {
                    dest: dest.clone(),
                    source: crate::protocol::ProtocolError::HandshakeTimeout(waited),
                };
                Some(Outcome::DestinationFailed {
                    error: crate::watch::error::DestError::new(dest, error),
                })
            }
            o => o,
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
        self.flush_special_log(None);
        // This pipeline no longer holds anything: take its share out of the counters.
        self.publish_counts(core::Counts::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A spool whose `lstat`s under `hung` block until released (a hung NFS or FUSE mount),
    /// and which tells when one does.
    struct Hung {
        hung: PathBuf,
        /// (blocked now, released)
        state: Mutex<(bool, bool)>,
        changed: Condvar,
    }

    /// However the test ends, a blocked call gives up after this (so that the runtime can
    /// stop).
    const HANG_AT_MOST: Duration = Duration::from_secs(60);

    impl Spool for Hung {
        fn lstat(&self, path: &Path) -> Option<Identity> {
            if path.starts_with(&self.hung) {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.0 = true;
                self.changed.notify_all();
                let (st, _) = self
                    .changed
                    .wait_timeout_while(st, HANG_AT_MOST, |st| !st.1)
                    .unwrap_or_else(|e| e.into_inner());
                drop(st);
            }
            Fs.lstat(path)
        }

        fn writers(&self, path: &Path) -> Writers {
            Fs.writers(path)
        }
    }

    impl Hung {
        /// Waits (up to `within`) until an `lstat` is blocked; whether one is.
        fn wait_blocked(&self, within: Duration) -> bool {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (st, _) = self
                .changed
                .wait_timeout_while(st, within, |st| !st.0)
                .unwrap_or_else(|e| e.into_inner());
            st.0
        }

        fn release(&self) {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
            self.changed.notify_all();
        }
    }

    /// A receiver that greets, reads the whole upload and closes (the protocol's
    /// confirmation).
    async fn receiver() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    if s.write_all(b"accio\r\n").await.is_ok() {
                        let _ = s.read_to_end(&mut sink).await;
                    }
                });
            }
        });
        port
    }

    /// Renames a finished file `name` into `dir`.
    fn drop_in(dir: &Path, name: &str) {
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::write(&tmp, b"some content").unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    /// Waits (up to `within`) until `path` exists.
    async fn appears(path: &Path, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if path.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        path.exists()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_spool_stalls_only_its_own_watch() {
        let port = receiver().await;
        let root = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let d = root.path().join(n);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let (hung, hung_done, fine, fine_done) =
            (dir("hung"), dir("hung-sent"), dir("fine"), dir("fine-sent"));
        dir("failed");
        let toml = format!(
            r#"
concurrency = 4
[server]
host = "127.0.0.1"
port = {port}
[[watch]]
dir = "{}"
done_dir = "{}"
failed_dir = "{}/failed"
settle = "10ms"
[[watch]]
dir = "{}"
done_dir = "{}"
failed_dir = "{}/failed"
settle = "10ms"
"#,
            hung.display(),
            hung_done.display(),
            root.path().display(),
            fine.display(),
            fine_done.display(),
            root.path().display(),
        );
        let config = crate::config::parse(toml.as_bytes(), Path::new("test.toml")).unwrap();
        let spool = Arc::new(Hung {
            hung: hung.clone(),
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        });
        let shutdown = CancellationToken::new();
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let service = tokio::spawn(super::super::run_with(
            config,
            Arc::default(),
            Arc::new(crate::metrics::Metrics::default()),
            shutdown.clone(),
            Some(ready),
            super::super::Reported::default(),
            None,
            Arc::default(),
            spool.clone(),
        ));
        is_ready.await.unwrap();

        // Written in place: its close asks for a look (a file renamed in is ready without
        // one, and goes to the claim on the watch's lane).
        std::fs::write(hung.join("stuck"), b"some content").unwrap();
        let s = spool.clone();
        let blocked = tokio::task::spawn_blocking(move || s.wait_blocked(Duration::from_secs(10)));
        assert!(blocked.await.unwrap(), "the hung spool was never looked at");
        // The queue task is free: the other watch's files are looked at and sent.
        for i in 0..3 {
            drop_in(&fine, &format!("f{i}"));
        }
        for i in 0..3 {
            assert!(
                appears(&fine_done.join(format!("f{i}")), Duration::from_secs(10)).await,
                "f{i} of the other watch was not sent while one spool hung"
            );
        }
        assert!(!hung_done.join("stuck").exists());
        // Once the spool answers, its file goes too.
        spool.release();
        assert!(appears(&hung_done.join("stuck"), Duration::from_secs(10)).await);
        shutdown.cancel();
        service.await.unwrap().unwrap();
    }

    #[test]
    fn the_watch_limit_line_names_the_count_the_limit_and_the_fix() {
        let l = watch_limit_line(
            Path::new("/spool"),
            70_000,
            4_465,
            Some(65_536),
            Duration::from_secs(30),
        );
        for part in [
            "/spool has 70000 directories",
            "refused 4465",
            "fs.inotify.max_user_watches = 65536",
            "found by the rescans only (every 30s)",
            "sysctl fs.inotify.max_user_watches=131072",
        ] {
            assert!(l.contains(part), "{part:?} not in {l}");
        }
        let l = watch_limit_line(Path::new("/spool"), 2, 1, None, Duration::from_secs(1));
        assert!(l.contains("max_user_watches = unknown"), "{l}");
    }
}
