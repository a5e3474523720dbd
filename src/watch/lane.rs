//! A watch's own threads for its blocking filesystem work: claims (with their lease probe)
//! and dispositions. Each watch has one lane: a few long-lived threads fed through one queue.
//!
//! Why not tokio's `spawn_blocking`: its pool starts a thread whenever none is idle (up to
//! the runtime's limit, shared by every watch) and wakes one for each call, so a backlog
//! paid a hand-off per call, several `futex` each, and a spool whose metadata calls hang (a
//! dead NFS server) could take every thread of the pool. A lane's threads take the next job
//! as soon as they finish one, without being woken, so a busy watch's claims and moves follow
//! one another on threads that stay running; a hung spool holds its own lane only (at most
//! [`THREADS`] threads), never one of the runtime's workers nor another watch's lane.
//!
//! The answer goes back through a `oneshot` channel: the task that asked wakes once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// Threads of one lane, at most: started as the work needs them (a second one only while a
/// job already waits), never stopped before the lane is dropped. More than one so that a
/// slow call (a copy across filesystems, an NFS round trip) does not hold every other file
/// of the watch behind it.
pub const THREADS: usize = 4;

/// One job: runs on a lane thread, sends its own answer.
type Job = Box<dyn FnOnce() + Send>;

/// The queue the lane's threads share.
#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads started.
    threads: usize,
    /// Threads waiting for a job (woken only when there is one for them).
    idle: usize,
    /// Wake-ups given by `push` and not yet taken by a waiting thread.
    wakes: usize,
    /// The lane was dropped: its threads end once the queue is empty.
    closed: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    work: Condvar,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A watch's filesystem threads (see the module docs).
pub struct Lane {
    inner: Arc<Inner>,
    /// The threads' name, for `top -H` and a debugger.
    name: String,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("name", &self.name).finish()
    }
}

/// The job did not answer: it panicked (caught), or no thread could be started for it.
#[derive(Debug, thiserror::Error)]
#[error("the filesystem thread of this watch failed: {0}")]
pub struct LaneError(String);

impl Lane {
    /// A lane whose threads are called `name`; none is started before the first job.
    pub fn new(name: &str) -> Lane {
        Lane {
            inner: Arc::default(),
            name: name.to_string(),
        }
    }

    /// Runs `f` on one of the lane's threads and returns what it returns.
    ///
    /// Dropping the future does not stop `f` (a system call cannot be taken back): it runs,
    /// and what it returns is dropped there (a claim's descriptor closed, its lock released).
    ///
    /// # Errors
    /// [`LaneError`]: `f` panicked, or no thread could be started.
    pub async fn run<T, F>(&self, f: F) -> Result<T, LaneError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job =
            Box::new(
                move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    Ok(v) => {
                        let _ = tx.send(Ok(v));
                    }
                    Err(p) => {
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".to_string());
                        let _ = tx.send(Err(LaneError(format!("panicked: {what}"))));
                    }
                },
            );
        self.push(job)?;
        rx.await
            .unwrap_or_else(|_| Err(LaneError("the job was dropped".to_string())))
    }

    /// Queues `job`: wakes an idle thread if there is one, starts one if every thread is
    /// busy and a job already waits (and the lane has fewer than [`THREADS`]), else leaves
    /// it for the next thread to finish what it does.
    fn push(&self, job: Job) -> Result<(), LaneError> {
        let mut s = self.inner.lock();
        s.jobs.push_back(job);
        if s.idle > 0 {
            // One woken for one job; a thread that is running takes the rest.
            s.idle -= 1;
            s.wakes += 1;
            drop(s);
            self.inner.work.notify_one();
            return Ok(());
        }
        if s.threads == 0 || (s.jobs.len() > 1 && s.threads < THREADS) {
            s.threads += 1;
            drop(s);
            let inner = self.inner.clone();
            let started = std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || work(&inner));
            if let Err(e) = started {
                let mut s = self.inner.lock();
                s.threads -= 1;
                if s.threads == 0 {
                    // Nothing would ever run it: take it back (its answer is dropped).
                    s.jobs.pop_back();
                    return Err(LaneError(format!("cannot start a thread: {e}")));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.closed = true;
        drop(s);
        self.inner.work.notify_all();
    }
}

/// A lane thread: runs jobs while there are any, waits for the next, ends when the lane is
/// dropped and nothing is left.
fn work(inner: &Inner) {
    let mut s = inner.lock();
    loop {
        if let Some(job) = s.jobs.pop_front() {
            drop(s);
            job();
            s = inner.lock();
            continue;
        }
        if s.closed {
            s.threads -= 1;
            return;
        }
        s.idle += 1;
        // `push` counts a thread out of `idle` and leaves it a wake-up; a spurious wake-up
        // finds none and waits again.
        while s.wakes == 0 && !s.closed {
            s = inner.work.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.wakes > 0 {
            s.wakes -= 1;
        } else {
            s.idle -= 1;
        }
    }
}
