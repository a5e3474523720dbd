//! Sending one file: claim it, upload it with [`crate::client::upload`], check it did not
//! change meanwhile, then hand it to the [disposition](super::disposition). One call of
//! [`process`] is one attempt; the queue decides when attempts happen and how many run at
//! once.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::claim::{self, Claim, ClaimError, Identity};
use super::disposition;
use super::{Shared, WatchCtx};
use crate::client::{self, UploadError};
use crate::config::{OnSuccess, RetryPolicy};

/// One attempt at one file.
#[derive(Debug)]
pub struct Job {
    pub watch: Arc<WatchCtx>,
    /// The name in the spool directory.
    pub name: OsString,
    /// 1-based number of this attempt (failed uploads before it, plus one).
    pub attempt: u32,
    pub mode: Mode,
}

/// What the attempt does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Upload, then move or delete.
    Upload,
    /// An earlier attempt finished (delivered or gave up) but could not move or delete the
    /// file; do only that, if the file is still exactly the one it was.
    Finish { id: Identity, after: After },
}

/// What was decided about a file whose disposition is pending.
#[derive(Debug, Clone)]
pub enum After {
    Delivered,
    /// Given up; the text goes into the `.reason` file.
    GaveUp(String),
}

/// How an attempt ended, for the queue.
#[derive(Debug)]
pub enum Outcome {
    /// Delivered, and moved to `done_dir` or deleted.
    Delivered,
    /// Given up on and moved to `failed_dir`.
    GaveUp,
    /// The name does not lead to the file any more (gone, replaced): look at it again.
    Gone,
    /// Not a regular file; leave it alone.
    Special(Identity),
    /// Another instance holds its lock; check again later.
    Busy,
    /// Changed during the transfer: not delivered; send again once it settles. Not counted
    /// as a failed attempt, since nothing is wrong with the destination.
    Changed,
    /// The attempt failed; try again after `retry_in`.
    Failed { retry_in: Duration },
    /// Delivered or given up, but moving/deleting failed; retry that (only) later.
    DispositionFailed { id: Identity, after: After },
}

/// Exponential backoff with full jitter: a uniformly random delay between zero and
/// `initial · 2^(attempt-1)`, capped at `max`. Jitter spreads the retries of a burst of files
/// that all failed at once (server down) instead of hammering it in lockstep.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let cap = policy
        .initial
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(policy.max)
        .min(policy.max);
    let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Runs one attempt for `job`.
pub async fn process(job: Job, sh: Arc<Shared>) -> Outcome {
    let path = job.watch.cfg.dir.join(&job.name);
    let claim = match claim::claim(&path) {
        Ok(c) => c,
        Err(ClaimError::Gone) => return Outcome::Gone,
        Err(ClaimError::Special(id)) => return Outcome::Special(id),
        Err(ClaimError::Busy) => return Outcome::Busy,
        Err(ClaimError::Io(e)) => {
            let error = format!("cannot open {}: {e}", path.display());
            return failed(&job, &sh, None, &path, error, Duration::ZERO).await;
        }
    };
    if let Mode::Finish { id, after } = &job.mode {
        if claim.id == *id {
            return match after {
                After::Delivered => dispose_delivered(&job, &sh, claim, None).await,
                After::GaveUp(reason) => give_up(&job, &sh, Some(claim), &path, reason).await,
            };
        }
        // Not the same content any more: a new file, to be sent.
    }
    let before = claim.id;
    let started = Instant::now();
    let result = client::upload(
        &job.watch.cfg.server,
        &claim.file,
        &sh.timeouts,
        &mut |_| {},
        |sent| unchanged(&claim, &before, sent),
    )
    .await;
    match result {
        Ok(bytes) => dispose_delivered(&job, &sh, claim, Some((bytes, started.elapsed()))).await,
        Err(UploadError::Rejected(why)) => {
            tracing::info!(
                path = %path.display(),
                attempt = job.attempt,
                "not delivered: {} {why}; it is sent again once it settles",
                path.display()
            );
            Outcome::Changed
        }
        Err(UploadError::Client(e)) => {
            let error = format!("upload to {} failed: {e}", job.watch.cfg.server);
            failed(&job, &sh, Some(claim), &path, error, started.elapsed()).await
        }
    }
}

/// The `before_close` check: the file we sent is the file we claimed, whole.
fn unchanged(claim: &Claim, before: &Identity, sent: u64) -> Result<(), String> {
    let after = claim
        .restat()
        .map_err(|e| format!("could not be checked after sending: {e}"))?;
    if after != *before {
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

/// Moves or deletes a delivered file. `sent` is (bytes, duration) of the upload just made,
/// or `None` when only finishing an earlier attempt's disposition.
async fn dispose_delivered(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Claim,
    sent: Option<(u64, Duration)>,
) -> Outcome {
    let (bytes, took) = sent.unwrap_or_default();
    let id = claim.id;
    let path = claim.path.clone();
    // Written to after `before_close` checked it, while the server was still taking the last
    // bytes: the server has the earlier content, complete. Moving the newer content to
    // done_dir as "delivered" would lose the change; send it again instead.
    if sent.is_some() {
        if let Err(why) = unchanged(&claim, &id, id.size) {
            tracing::info!(
                path = %path.display(),
                attempt = job.attempt,
                "{} {why} after it was sent (the server got the earlier content); it is sent again once it settles",
                path.display()
            );
            return Outcome::Changed;
        }
    }
    let w = job.watch.clone();
    let syncer = sh.syncer.clone();
    let name = job.name.clone();
    // The common cases (rename within the filesystem, unlink) are single quick syscalls and
    // run right here; only a copy across filesystems goes to a blocking thread. The claim (and
    // its lock) ends only after the move or delete.
    let moved = match (w.cfg.on_success, &w.cfg.done_dir) {
        (OnSuccess::Move, Some(done)) => {
            match disposition::rename_into(&claim.path, done, &name, &syncer) {
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    let done = done.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = disposition::move_into(
                            Some(&claim.file),
                            &claim.path,
                            &done,
                            &name,
                            &syncer,
                        );
                        drop(claim);
                        r
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                    .map(Some)
                }
                other => other.map(Some),
            }
        }
        _ => disposition::delete(&claim.path, &syncer).map(|()| None),
    };
    let dest = &job.watch.cfg.server;
    match moved {
        Ok(to) => {
            let then = match &to {
                Some(to) => format!("moved to {}", to.display()),
                None => "deleted".to_string(),
            };
            if sent.is_none() {
                tracing::info!(
                    path = %path.display(),
                    "{} (delivered earlier) is now {then}",
                    path.display()
                );
                return Outcome::Delivered;
            }
            tracing::info!(
                path = %path.display(),
                bytes,
                duration_ms = took.as_secs_f64() * 1000.0,
                attempt = job.attempt,
                "delivered {} ({bytes} bytes in {took:.1?}, attempt {}) to {dest}; {then}",
                path.display(),
                job.attempt
            );
            Outcome::Delivered
        }
        Err(e) => {
            tracing::error!(
                path = %path.display(),
                bytes,
                attempt = job.attempt,
                "delivered {} to {dest} but {e}; it stays in the spool and this is retried later",
                path.display()
            );
            Outcome::DispositionFailed {
                id,
                after: After::Delivered,
            }
        }
    }
}

async fn failed(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Option<Claim>,
    path: &Path,
    error: String,
    took: Duration,
) -> Outcome {
    let max = sh.retry.max_attempts;
    let bytes = claim.as_ref().map_or(0, |c| c.id.size);
    if max != 0 && job.attempt >= max {
        let reason = format!(
            "file: {}\nattempts: {}\nlast error: {}\ntime: {}\n",
            path.display(),
            job.attempt,
            error,
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        tracing::warn!(
            path = %path.display(),
            bytes,
            duration_ms = took.as_secs_f64() * 1000.0,
            attempt = job.attempt,
            "upload of {} failed (attempt {} of {max}): {error}; giving up",
            path.display(),
            job.attempt
        );
        return give_up(job, sh, claim, path, &reason).await;
    }
    let retry_in = backoff(&sh.retry, job.attempt);
    let of = if max == 0 {
        String::new()
    } else {
        format!(" of {max}")
    };
    tracing::warn!(
        path = %path.display(),
        bytes,
        duration_ms = took.as_secs_f64() * 1000.0,
        attempt = job.attempt,
        "upload of {} failed (attempt {}{of}): {error}; retrying in {retry_in:.1?}",
        path.display(),
        job.attempt
    );
    Outcome::Failed { retry_in }
}

async fn give_up(
    job: &Job,
    sh: &Arc<Shared>,
    claim: Option<Claim>,
    path: &Path,
    reason: &str,
) -> Outcome {
    let w = job.watch.clone();
    let syncer = sh.syncer.clone();
    let name = job.name.clone();
    let from = path.to_path_buf();
    let text = reason.to_string();
    let id = claim.as_ref().map(|c| c.id);
    let result = tokio::task::spawn_blocking(move || {
        let file = claim.as_ref().map(|c| &c.file);
        let to = disposition::move_into(file, &from, &w.cfg.failed_dir, &name, &syncer)?;
        let reason_file = disposition::write_reason(&to, &text, &syncer);
        drop(claim);
        Ok::<_, std::io::Error>((to, reason_file))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match result {
        Ok((to, reason_file)) => {
            if let Err(e) = reason_file {
                tracing::error!("moved {} to {} but {e}", path.display(), to.display());
            }
            tracing::error!(
                path = %path.display(),
                attempt = job.attempt,
                "gave up on {} after {} attempts; moved to {}",
                path.display(),
                job.attempt,
                to.display()
            );
            Outcome::GaveUp
        }
        Err(e) => {
            tracing::error!(
                path = %path.display(),
                "gave up on {} but {e}; it stays in the spool and this is retried later",
                path.display()
            );
            match id {
                Some(id) => Outcome::DispositionFailed {
                    id,
                    after: After::GaveUp(reason.to_string()),
                },
                None => Outcome::Failed {
                    retry_in: sh.retry.max,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_with_jitter() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: 0,
        };
        for _ in 0..200 {
            assert!(backoff(&p, 1) <= Duration::from_millis(100));
            assert!(backoff(&p, 3) <= Duration::from_millis(400));
            assert!(backoff(&p, 10) <= Duration::from_secs(1));
            assert!(backoff(&p, u32::MAX) <= Duration::from_secs(1));
        }
        // Jitter: not always the same value.
        let a: std::collections::HashSet<_> = (0..50).map(|_| backoff(&p, 4)).collect();
        assert!(a.len() > 1);
    }
}
