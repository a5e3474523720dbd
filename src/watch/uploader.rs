//! Sending one file: claim it, upload it with [`crate::client::upload`], check it did not
//! change meanwhile, then hand it to the [disposition]. One call of [`process`] is one
//! attempt; the queue decides when attempts happen and how many run at once.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::claim::{self, Claim, ClaimError};
use super::core::{After, Identity, Mode, Outcome, Writers};
use super::ctx::{Shared, WatchCtx};
use super::disposition::{self, Dest, Disposed};
use super::error::{
    client_service_trouble, DestError, DispositionError, DispositionOp, FileError, Reason,
};
use super::listing;
use crate::client::{self, Phase, UploadError, Uploaded};
use crate::config::OnSuccess;
use crate::esc::esc;
use crate::metrics::AttemptResult;

/// One attempt at one file, as the [core](super::core) decided it.
#[derive(Debug)]
pub struct Job {
    pub watch: Arc<WatchCtx>,
    /// The name in the spool directory.
    pub name: OsString,
    /// 1-based number of this attempt (failed uploads before it, plus one).
    pub attempt: u32,
    /// The last attempt allowed: a failure gives the file up (to `failed_dir`).
    pub last: bool,
    pub mode: Mode,
    /// The file was seen moved in, or closed after it was last written: complete by the
    /// writers' convention even where the kernel cannot tell whether it has writers.
    pub trusted: bool,
    /// Where the kernel cannot tell whether an untrusted file has writers, how long its
    /// content and status must have been unchanged before it is taken as complete.
    pub quiet: Duration,
    /// Settled by a listing's timestamps alone: its content must still be unchanged for
    /// this long by its stamps at the claim (`Start::settle`); zero: nothing to check.
    pub settle: Duration,
    /// Bytes sent so far, and the file's size once claimed, for `accio status`.
    pub progress: Arc<AtomicU64>,
    pub size: Arc<AtomicU64>,
    /// When the service found the file (moved in, or listed): the delivery latency runs
    /// from here.
    pub found: Instant,
}

/// Runs one attempt for `job`.
pub async fn process(job: Job, sh: Arc<Shared>) -> Outcome {
    let path = job.watch.cfg.dir.join(&job.name);
    // On the watch's lane: on a hung NFS or FUSE spool the lstat or open never returns,
    // and must not hold one of the runtime's few workers (the other watches need them).
    // The lease probe goes with it, in the same job (one hand-off for both): with the errno
    // of a refused lease, read right after the fcntl on that thread.
    let (w, n) = (job.watch.clone(), job.name.clone());
    let claimed = job
        .watch
        .lane
        .run(move || {
            claim::claim(&w.dirs.spool(), &n).map(|c| {
                let writers = claim::writers(&c.file);
                let errno = std::io::Error::last_os_error();
                (c, writers, errno)
            })
        })
        .await
        .unwrap_or_else(|e| Err(ClaimError::Io(std::io::Error::other(e.to_string()))));
    let (claim, writers, lease_errno) = match claimed {
        Ok(c) => c,
        Err(ClaimError::Gone) => return Outcome::Gone,
        Err(ClaimError::Special(id)) => return Outcome::Special(id),
        Err(ClaimError::Busy) => return Outcome::Busy,
        Err(ClaimError::Io(e)) => {
            attempt_ended(&job, &sh, AttemptResult::file_error, Duration::ZERO);
            let error = FileError::open(path.clone(), e);
            // What the name holds now: giving up moves this inode only.
            let id = claim::lstat(&path).ok();
            return failed(&job, &sh, None, id, &path, error, Duration::ZERO, None).await;
        }
    };
    if let Mode::Finish { id, after } = &job.mode {
        if claim.id == *id {
            return match after {
                After::Delivered => dispose_delivered(&job, &sh, claim, None).await,
                After::GaveUp(reason) => {
                    let id = Some(claim.id);
                    give_up(&job, &sh, Some(claim), id, &path, reason.clone()).await
                }
            };
        }
        // Not the same content any more: a new file, to be sent.
    }
    // Settled by a listing's stamps alone: written to since (its stamps say it changed
    // within the settle time), it settles afresh. One `lstat` less than a look before the
    // claim, which asked the same a moment earlier.
    if !job.settle.is_zero() && claim.id.unchanged_for(listing::wall_now()) < job.settle {
        tracing::debug!(
            path = %esc(&path),
            "written to since it was listed: sent once it settles"
        );
        return Outcome::Changed;
    }
    // Still open for writing somewhere (a writer that paused, or was already writing when
    // the service started): not complete. Without the means to tell (Unknown), the events
    // and timers that brought it here decide.
    match writers {
        Writers::Some => return Outcome::Writer,
        Writers::Unknown => {
            warn_no_lease(&lease_errno, job.quiet);
            let age = claim.id.age_at(listing::wall_now());
            if !job.trusted && age < job.quiet {
                return Outcome::Young {
                    wait: job.quiet - age,
                };
            }
        }
        _ => {}
    }
    let before = claim.id;
    job.size.store(before.size, Ordering::Relaxed);
    let started = Instant::now();
    // Set once the server greeted: a failure after it still says the server answered, and
    // how fast (a failure before it carries no greeting time at all).
    let mut greeting: Option<Duration> = None;
    let progress = job.progress.clone();
    // This destination's limit and the service's (each may be off, now or for good), and
    // its handshake round trip so far.
    let dest = job.watch.cfg.server.to_string();
    let mut pacer = sh.rates.pacer(&dest);
    let handshake = sh.handshakes.of(&dest);
    let result = client::upload(
        &job.watch.cfg.server,
        job.watch.cfg.confirm,
        &claim.file,
        // Known from the claim; `unchanged` checks the size did not change.
        Some(before.size),
        &sh.timeouts,
        Some(&mut pacer),
        &mut |n| progress.store(n, Ordering::Relaxed),
        &mut greeting,
        Some(&handshake),
        |sent| unchanged(&claim, &before, sent),
    )
    .await;
    let took = started.elapsed();
    attempt_ended(&job, &sh, attempt_result(&result), took);
    match result {
        Ok(done) => {
            // Waited for a bandwidth limit: bandwidth, not the server, bound this upload (the
            // adaptive limit does not grow on it).
            let paced = !pacer.waited().is_zero();
            match dispose_delivered(&job, &sh, claim, Some((done, took))).await {
                Outcome::Delivered {
                    uploaded, vacated, ..
                } => Outcome::Delivered {
                    uploaded,
                    vacated,
                    paced,
                },
                other => other,
            }
        }
        Err(UploadError::Rejected(why)) => {
            tracing::info!(
                path = %esc(&path),
                attempt = job.attempt,
                "not delivered: {} {why}; it is sent again once it settles",
                esc(&path)
            );
            Outcome::Changed
        }
        // Failures before the greeting are the destination's (it is marked down; nothing
        // counts against the file).
        // (Unless no socket could be made here: that is the service's trouble, below.)
        Err(UploadError::Client(e))
            if e.phase() != Phase::Transfer && !client_service_trouble(&e) =>
        {
            Outcome::DestinationFailed {
                error: DestError::new(job.watch.cfg.server.clone(), e),
            }
        }
        Err(UploadError::Client(e)) => {
            // Past the greeting: the destination answered; the failure is this file's. Or
            // the service ran out of descriptors: retried, not counted, no greeting time.
            let trouble = client_service_trouble(&e);
            let error = FileError::upload(job.watch.cfg.server.clone(), e);
            let id = Some(claim.id);
            let greeting = if trouble { None } else { greeting };
            failed(&job, &sh, Some(claim), id, &path, error, took, greeting).await
        }
    }
}

/// How an upload ended, for the `result` label of the attempts metric.
fn attempt_result<E>(r: &Result<Uploaded, UploadError<E>>) -> AttemptResult {
    match r {
        Ok(_) => AttemptResult::ok,
        Err(UploadError::Rejected(_)) => AttemptResult::changed,
        Err(UploadError::Client(e)) => match e.phase() {
            Phase::Resolve | Phase::Connect | Phase::ConnectTimeout => AttemptResult::unreachable,
            Phase::Handshake => AttemptResult::no_greeting,
            Phase::Transfer => AttemptResult::failed,
        },
    }
}

fn attempt_ended(job: &Job, sh: &Shared, result: AttemptResult, took: Duration) {
    let dest = job.watch.cfg.server.to_string();
    sh.metrics.attempt(&dest, result, took);
}

/// The watch label of the metrics: the spool directory.
fn watch_label(job: &Job) -> std::borrow::Cow<'_, str> {
    job.watch.cfg.dir.to_string_lossy()
}

/// Whether the "no leases" warning was logged (once per process).
static NO_LEASE_WARNED: AtomicBool = AtomicBool::new(false);

/// Logs once per process that writers cannot be seen, why, and what it costs.
fn warn_no_lease(errno: &std::io::Error, quiet: Duration) {
    if NO_LEASE_WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let code = match errno.raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_string(),
        Some(libc::EACCES) => "EACCES".to_string(),
        Some(libc::EINVAL) => "EINVAL".to_string(),
        _ => errno.to_string(),
    };
    tracing::warn!(
        "cannot check for writers with a file lease ({code}): files written in place are taken after {}s without change; grant CAP_LEASE or rename finished files into the spool",
        quiet.as_secs_f64()
    );
}

/// The `before_close` check: the file we sent is the file we claimed, whole.
fn unchanged(claim: &Claim, before: &Identity, sent: u64) -> Result<(), String> {
    let after = claim
        .restat()
        .map_err(|e| format!("could not be checked after sending: {e}"))?;
    // Renamed over or removed under its name while being sent changes only the status
    // change time of what we send (its link count dropped): the content is whole, and that
    // file has left the spool; deliver it. (The ctime is compared at all to catch writes
    // that restore the mtime; one together with a replace of the name is not a concern.)
    let replaced = || !matches!(claim::lstat(&claim.path), Ok(now) if now.same_inode(before));
    if after != *before
        && !(after.size == before.size && after.mtime_ns == before.mtime_ns && replaced())
    {
        let what = if after.size != before.size {
            format!("size {} → {} bytes", before.size, after.size)
        } else if after.mtime_ns != before.mtime_ns {
            "modification time changed".to_string()
        } else {
            "status change time changed".to_string()
        };
        return Err(format!("changed while being sent ({what})"));
    }
    if sent != before.size {
        return Err(format!(
            "changed while being sent ({sent} bytes read, size is {})",
            before.size
        ));
    }
    Ok(())
}

/// Moves or deletes a delivered file, only if the name still holds the very inode that was
/// sent (see [`disposition::move_if_ours`]). `sent` is (bytes, duration) of the upload just
/// made, or `None` when only finishing an earlier attempt's disposition.
async fn dispose_delivered(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Claim,
    sent: Option<(Uploaded, Duration)>,
) -> Outcome {
    let uploaded = sent.map(|(u, _)| u);
    let (bytes, took) = sent.map_or((0, Duration::ZERO), |(u, took)| (u.bytes, took));
    let id = claim.id;
    let path = claim.path.clone();
    // From when the service found it (moved in, or listed) until the server confirmed.
    let latency = job.found.elapsed();
    let to_done = job.watch.cfg.on_success == OnSuccess::Move && job.watch.cfg.done_dir.is_some();
    let op = if to_done {
        DispositionOp::MoveToDone
    } else {
        DispositionOp::Delete
    };
    // Written to after `before_close` checked it, while the server was still taking the last
    // bytes: the server has the earlier content, complete; moving the newer content to
    // done_dir as "delivered" would lose the change. The disposition's own check catches
    // that: it compares what the name holds now (`lstat`) with the identity the claim took
    // and `before_close` confirmed, size, mtime and ctime, and leaves a changed file in the
    // spool (`Disposed::Changed`): no `fstat` of its own is needed here.
    let syncer = sh.syncer.clone();
    let name = job.name.clone();
    // One job on the watch's lane: usually one rename or unlink and two `lstat`s, but across
    // filesystems a copy; on a hung spool it must not hold one of the runtime's workers. The
    // claim (and its lock) ends only after the move or delete.
    let w = job.watch.clone();
    let result = job
        .watch
        .lane
        .run(move || {
            // done_dir's descriptor (an `fstat` checks it was not removed): on this thread too.
            let done = if to_done { w.dirs.done() } else { None };
            let r = match &done {
                Some(done) => disposition::move_if_ours(
                    Some(&claim.file),
                    &claim.spool,
                    &name,
                    &claim.id,
                    Dest::Done(done),
                    &syncer,
                ),
                None => disposition::delete_if_ours(&claim.spool, &name, &claim.id, &syncer),
            };
            drop(claim);
            r
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    if uploaded.is_some() && !matches!(result, Ok(Disposed::Changed)) {
        // Confirmed by the server and unchanged: delivered, whatever becomes of the move.
        sh.metrics
            .file_sent(&watch_label(job), bytes, Some(latency));
    }
    let dest = &job.watch.cfg.server;
    // `now`: what became of it after this upload; `earlier`: after an earlier one.
    let delivered = |now: &str, earlier: &str| {
        if uploaded.is_some() {
            tracing::info!(
                event = "delivered",
                path = %esc(&path),
                destination = %dest,
                bytes,
                duration_ms = took.as_secs_f64() * 1000.0,
                attempt = job.attempt,
                "delivered {} ({bytes} bytes in {took:.1?}, attempt {}) to {dest}{now}",
                esc(&path),
                job.attempt
            );
        } else if !earlier.is_empty() {
            tracing::info!(
                path = %esc(&path),
                "{} (delivered earlier) {earlier}",
                esc(&path)
            );
        }
    };
    const REPLACED: &str = "the name was replaced meanwhile (or removed), so there is nothing to move; what it holds now is sent on its own";
    match result {
        Ok(Disposed::Done(to)) => {
            match &to {
                Some(to) => delivered(
                    &format!("; moved to {}", esc(to)),
                    &format!("is now moved to {}", esc(to)),
                ),
                None => delivered("; deleted", "is now deleted"),
            }
            // Our very file left the name. (After a copy across filesystems the name may
            // hold another file that came in during the attempt: its event, seen during the
            // attempt or after it, brings the name to the core's attention all the same.)
            Outcome::Delivered {
                uploaded,
                vacated: true,
                paced: false,
            }
        }
        Ok(Disposed::NotOurs) => {
            delivered(&format!("; {REPLACED}"), &format!(": {REPLACED}"));
            Outcome::Delivered {
                uploaded,
                vacated: false,
                paced: false,
            }
        }
        Ok(Disposed::Changed) => {
            tracing::info!(
                path = %esc(&path),
                "{} changed after it was sent (the server got the earlier content); it stays in the spool and is sent again once it settles",
                esc(&path)
            );
            Outcome::Changed
        }
        Err(e) => {
            // The delivery itself is reported once; the failed move by the queue, which
            // knows how often it failed.
            delivered("", "");
            sh.metrics.disposition_failed(&watch_label(job));
            Outcome::DispositionFailed {
                id,
                after: After::Delivered,
                error: DispositionError::new(op, e),
            }
        }
    }
}

/// An attempt failed for this file: give it up if it was the last one allowed, else tell
/// the core (which decides when to retry, and logs it).
#[allow(clippy::too_many_arguments)]
async fn failed(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Option<Claim>,
    id: Option<Identity>,
    path: &Path,
    error: FileError,
    took: Duration,
    greeting: Option<Duration>,
) -> Outcome {
    // Out of descriptors or memory: the service's trouble, never the file's last attempt.
    if !job.last || error.service_trouble() {
        return Outcome::Failed { error, greeting };
    }
    let max = sh.retry.max_attempts;
    let bytes = claim.as_ref().map_or(0, |c| c.id.size);
    tracing::warn!(
        event = "attempt_failed",
        path = %esc(path),
        destination = %job.watch.cfg.server,
        bytes,
        duration_ms = took.as_secs_f64() * 1000.0,
        attempt = job.attempt,
        "upload of {} failed (attempt {} of {max}): {error}; giving up",
        esc(path),
        job.attempt
    );
    let reason = Arc::new(Reason {
        path: path.to_path_buf(),
        attempts: job.attempt,
        error,
        time: SystemTime::now(),
    });
    give_up(job, sh, claim, id, path, reason).await
}

/// Moves a file given up on to `failed_dir` with its reason, if the name still holds the
/// inode `id` (see [`disposition::move_if_ours`]).
async fn give_up(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Option<Claim>,
    id: Option<Identity>,
    path: &Path,
    reason: Arc<Reason>,
) -> Outcome {
    let Some(id) = id else {
        // Not even an lstat worked: nothing is known about what the name holds.
        tracing::error!(
            path = %esc(path),
            "gave up on {} but cannot inspect it; it stays in the spool and this is retried later",
            esc(path)
        );
        return Outcome::Failed {
            error: FileError::Uninspectable,
            greeting: None,
        };
    };
    let w = job.watch.clone();
    let syncer = sh.syncer.clone();
    let name = job.name.clone();
    // Rendered here, once per attempt at the move: the same text each time.
    let text = reason.to_string();
    let result = job
        .watch
        .lane
        .run(move || {
            let file = claim.as_ref().map(|c| &c.file);
            // The spool the claim went through (the one held now without a claim).
            let spool = claim
                .as_ref()
                .map_or_else(|| w.dirs.spool(), |c| c.spool.clone());
            let failed = w.dirs.failed();
            let d = disposition::move_if_ours(
                file,
                &spool,
                &name,
                &id,
                Dest::Failed(&failed),
                &syncer,
            )?;
            let reason_file = match &d {
                Disposed::Done(Some(to)) => {
                    Some(disposition::write_reason(&failed, to, &text, &syncer))
                }
                _ => None,
            };
            drop(claim);
            Ok::<_, std::io::Error>((d, reason_file))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match result {
        Ok((Disposed::Done(to), reason_file)) => {
            let to = to.unwrap_or_default();
            let reason_at = match reason_file {
                Some(Ok(r)) => format!("; reason in {}", esc(&r)),
                Some(Err(e)) => format!("; no reason file: {e}"),
                None => String::new(),
            };
            tracing::error!(
                event = "gave_up",
                path = %esc(path),
                destination = %job.watch.cfg.server,
                attempt = job.attempt,
                "gave up on {} after {} attempts; moved to {}{reason_at}",
                esc(path),
                job.attempt,
                esc(&to)
            );
            sh.metrics.file_given_up(&watch_label(job));
            Outcome::GaveUp
        }
        Ok((Disposed::NotOurs, _)) => {
            tracing::warn!(
                path = %esc(path),
                attempt = job.attempt,
                "gave up on {} after {} attempts, but the name was replaced meanwhile (or removed); what it holds now is a new file",
                esc(path),
                job.attempt
            );
            sh.metrics.file_given_up(&watch_label(job));
            Outcome::GaveUp
        }
        Ok((Disposed::Changed, _)) => Outcome::Changed,
        Err(e) => {
            sh.metrics.disposition_failed(&watch_label(job));
            Outcome::DispositionFailed {
                id,
                after: After::GaveUp(reason),
                error: DispositionError::new(DispositionOp::MoveToFailed, e),
            }
        }
    }
}
