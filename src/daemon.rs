//! `accio watch`: wiring of the service: config, logging, signals, systemd notify, and the
//! shutdown order.
//!
//! The pipeline itself ([`crate::watch::run`]) takes its shutdown as a token; this module
//! owns the process-level decisions:
//!
//! - SIGTERM / SIGINT: cancel the pipeline (it stops taking files and lets transfers in
//!   flight finish within `shutdown_grace`), then exit 0. A second signal exits at once.
//! - SIGHUP: load the config again. If it is invalid (or its directories cannot be watched),
//!   log why and keep running on the old one. Otherwise start a pipeline on the new config,
//!   and once it is watching, stop the old one gracefully. The two overlap briefly; the
//!   per-file claim lock makes that safe (no file is sent by both).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::esc::esc;
use crate::exit::{Failed, Kind};
use crate::logging::{LogControl, LogFormat};
use crate::metrics::Metrics;
use crate::status::{Stats, ViewHandle, ViewRequest};
use crate::systemd::Notifier;
use crate::watch::{self, FatalError};

/// Runs the service on the configuration at `path` until SIGTERM/SIGINT. A configuration
/// that cannot be loaded is a [`Kind::Config`] failure (printed: logging is not set up yet);
/// once logging runs, what stops the service is logged, and the failure is
/// [`Failed::reported`].
pub fn main(
    rt: &tokio::runtime::Runtime,
    path: PathBuf,
    log_format: LogFormat,
) -> Result<(), Failed> {
    let config = config::load(&path).map_err(|e| Failed::new(Kind::Config, e))?;
    let log = crate::logging::init_service(log_format, &config.log_level);
    // Before anything opens a descriptor: uploads take two each (socket and file).
    match crate::limits::raise_nofile() {
        Ok(l) => tracing::debug!("open files: soft limit {}, hard limit {}", l.soft, l.hard),
        Err(e) => tracing::warn!("cannot raise the limit of open files (RLIMIT_NOFILE): {e}"),
    }
    check_descriptors(&config);
    rt.block_on(service(config, path, log))
}

/// Descriptors the service needs besides its uploads: the runtime, inotify, listeners,
/// the journal, directory listings, disposition moves (about 15 measured; twice that, to
/// spare).
const BASE_DESCRIPTORS: u64 = 32;

/// Descriptors `config` may need at once: two per upload in flight (the socket and the
/// file), three per watch (its directories, held open), plus [`BASE_DESCRIPTORS`].
pub fn descriptors_needed(config: &Config) -> u64 {
    (config.concurrency as u64)
        .saturating_mul(2)
        .saturating_add((config.watches.len() as u64).saturating_mul(3))
        .saturating_add(BASE_DESCRIPTORS)
}

/// Warns when `concurrency` does not fit the soft `RLIMIT_NOFILE`. Not fatal: running out
/// only delays files (it never counts against them), but the operator should raise
/// `LimitNOFILE=` or lower `concurrency`.
fn check_descriptors(config: &Config) {
    let Ok(l) = crate::limits::nofile() else {
        return;
    };
    let need = descriptors_needed(config);
    if l.soft < need {
        tracing::warn!(
            concurrency = config.concurrency,
            limit = l.soft,
            need,
            "concurrency = {} needs up to {need} open files, but the limit is {} (hard limit {}): \
             only about {} uploads fit at once, the others wait and are retried (never counted \
             against their files); raise LimitNOFILE= (systemctl edit accio) or lower concurrency",
            config.concurrency,
            l.soft,
            l.hard,
            l.soft.saturating_sub(BASE_DESCRIPTORS) / 2
        );
    }
}

/// What every pipeline shares with the daemon and its successors (after SIGHUP).
#[derive(Clone)]
struct Process {
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    /// Special entries already reported: each is reported once per process.
    reported: watch::Reported,
    /// Where the control socket and the metrics endpoint ask for the current [`View`].
    views: ViewHandle,
    /// Bandwidth limits: each pipeline sets them to its configuration's.
    rates: Arc<crate::rate::Rates>,
}

/// One running pipeline.
struct Pipeline {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), FatalError>>,
}

impl Pipeline {
    /// Starts a pipeline and waits until it is watching with its backlog queued.
    async fn start(config: Config, p: &Process) -> Result<Pipeline, FatalError> {
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let (views_tx, views_rx) = mpsc::channel::<ViewRequest>(8);
        let mut handle = tokio::spawn(watch::run_with(
            config,
            p.stats.clone(),
            p.metrics.clone(),
            stop.clone(),
            Some(tx),
            p.reported.clone(),
            Some(views_rx),
            p.rates.clone(),
            Arc::new(watch::queue::Fs),
        ));
        if rx.await.is_ok() {
            p.views.set(views_tx);
            return Ok(Pipeline { stop, handle });
        }
        // The pipeline dropped `ready` without sending it: it failed to start.
        match (&mut handle).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(FatalError::Watch {
                dir: PathBuf::new(),
                message: "the pipeline stopped before it was ready".to_string(),
            }),
            Err(e) => Err(FatalError::Watch {
                dir: PathBuf::new(),
                message: format!("the pipeline failed: {e}"),
            }),
        }
    }
}

async fn service(config: Config, path: PathBuf, log: LogControl) -> Result<(), Failed> {
    let signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return Err(Failed::reported(Kind::Other));
        }
    };
    let process = Process {
        stats: Arc::new(Stats::default()),
        metrics: Arc::new(Metrics::default()),
        reported: watch::Reported::default(),
        views: ViewHandle::default(),
        rates: Arc::default(),
    };
    // The control socket and metrics listener first: `accio status` answers "starting"
    // rather than "not running" while the backlog is being listed.
    let ops = crate::ops::Ops::start(&config, process.views.clone(), process.metrics.clone()).await;
    let result = supervise(config, &path, &log, &process, &ops, signals).await;
    ops.stop().await;
    result
}

/// Runs pipelines (one, and on SIGHUP its successor) until SIGTERM/SIGINT or a fatal error.
async fn supervise(
    config: Config,
    path: &Path,
    log: &LogControl,
    process: &Process,
    ops: &crate::ops::Ops,
    mut signals: Signals,
) -> Result<(), Failed> {
    let stats = &process.stats;
    // Before the pipeline: STATUS=starting, and SIGUSR1 is handled from now on.
    let notifier = match Notifier::start(stats.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return Err(Failed::reported(Kind::Other));
        }
    };
    let mut current = match Pipeline::start(config, process).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            notifier.failed(&e.to_string());
            return Err(Failed::reported(Kind::Other));
        }
    };
    notifier.ready();
    tracing::info!(config = %esc(path), "accio watch is running ({})", esc(path));
    let mut retiring: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Some(SIGHUP) => {
                    notifier.reloading();
                    if let Some(new) = reload(path, process, ops, log).await {
                        let old = std::mem::replace(&mut current, new);
                        old.stop.cancel();
                        retiring.spawn(async move {
                            let _ = old.handle.await;
                        });
                    }
                    notifier.ready();
                }
                Some(sig) => {
                    tracing::info!("received signal {sig}: stopping");
                    break;
                }
                None => break,
            },
            result = &mut current.handle => {
                let why = match result {
                    Ok(Ok(())) => "the pipeline stopped unexpectedly".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("the pipeline failed: {e}"),
                };
                tracing::error!("stopping: {why}");
                notifier.failed(&why);
                return Err(Failed::reported(Kind::Other));
            }
            Some(_) = retiring.join_next(), if !retiring.is_empty() => {}
        }
    }
    notifier.stopping();
    current.stop.cancel();
    let all = async {
        let _ = (&mut current.handle).await;
        while retiring.join_next().await.is_some() {}
    };
    tokio::select! {
        _ = all => {
            let s = stats.snapshot();
            tracing::info!(sent = s.sent, failed = s.failed, queued = s.queued, "stopped: {s}");
            Ok(())
        }
        _ = signals.next() => {
            tracing::warn!("second signal: exiting now; files not delivered stay in the spool");
            Ok(())
        }
    }
}

/// Loads the config again and starts a pipeline on it; `None` (logged) keeps the old one.
async fn reload(
    path: &Path,
    process: &Process,
    ops: &crate::ops::Ops,
    log: &LogControl,
) -> Option<Pipeline> {
    tracing::info!(config = %esc(path), "SIGHUP: reloading {}", esc(path));
    // Refused, it is said in STATUS=, `accio status` and the metrics until a reload is
    // taken: `systemctl reload` may have reported success (a unit without the check).
    let refused = |why: String| {
        tracing::error!("reload refused: {why}; still running on the previous configuration");
        process.stats.set_reload_refused(Some(why));
        process.metrics.reloaded(false);
        None
    };
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => return refused(e.to_string()),
    };
    let level = config.log_level.clone();
    check_descriptors(&config);
    let watches = config.clone();
    match Pipeline::start(config, process).await {
        Ok(p) => {
            ops.reloaded(&watches);
            if let Err(e) = log.set_level(&level) {
                tracing::warn!("{e}; keeping the previous log level");
            }
            process.stats.set_reload_refused(None);
            process.metrics.reloaded(true);
            tracing::info!(config = %esc(path), "configuration reloaded from {}", esc(path));
            Some(p)
        }
        Err(e) => refused(e.to_string()),
    }
}
