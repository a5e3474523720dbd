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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A gate jobs wait at until it opens (a hung NFS call, released at the end).
    #[derive(Default)]
    struct Gate {
        state: Mutex<(usize, bool)>,
        changed: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut s = self.state.lock().unwrap();
            s.0 += 1;
            self.changed.notify_all();
            while !s.1 {
                s = self.changed.wait(s).unwrap();
            }
        }
        fn wait_for(&self, n: usize) {
            let mut s = self.state.lock().unwrap();
            while s.0 < n {
                s = self.changed.wait(s).unwrap();
            }
        }
        fn open(&self) {
            self.state.lock().unwrap().1 = true;
            self.changed.notify_all();
        }
    }

    #[tokio::test]
    async fn every_job_is_answered_on_at_most_the_lanes_threads() {
        let lane = Arc::new(Lane::new("test-lane"));
        let names = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let mut tasks = Vec::new();
        for i in 0..500u64 {
            let (lane, names) = (lane.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                lane.run(move || {
                    names.lock().unwrap().insert(std::thread::current().id());
                    i * 2
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i as u64 * 2);
        }
        let threads = names.lock().unwrap().len();
        assert!((1..=THREADS).contains(&threads), "{threads} threads");
        assert!(lane.inner.lock().threads <= THREADS);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_lane_goes_on() {
        let lane = Lane::new("test-lane");
        let e = lane.run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(lane.run(|| 7).await.unwrap(), 7);
    }

    /// The hung-spool rule: a lane whose every thread hangs holds only itself; the runtime
    /// (here a single-thread one) and another lane go on.
    #[tokio::test]
    async fn a_hung_lane_holds_only_itself() {
        let gate = Arc::new(Gate::default());
        let hung = Arc::new(Lane::new("test-hung"));
        let ran = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..THREADS * 3 {
            let (hung, gate, ran) = (hung.clone(), gate.clone(), ran.clone());
            waiting.push(tokio::spawn(async move {
                hung.run(move || {
                    gate.wait();
                    ran.fetch_add(1, Ordering::Relaxed);
                })
                .await
            }));
        }
        // Every thread of the hung lane is held (the others' jobs queue behind them).
        let g = gate.clone();
        tokio::task::spawn_blocking(move || g.wait_for(THREADS))
            .await
            .unwrap();
        let other = Lane::new("test-other");
        for i in 0..100 {
            assert_eq!(other.run(move || i).await.unwrap(), i);
        }
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(hung.inner.lock().threads, THREADS);
        gate.open();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), THREADS * 3);
    }

    #[test]
    fn threads_end_when_the_lane_is_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lane = Lane::new("test-lane");
        let inner = lane.inner.clone();
        rt.block_on(async {
            for i in 0..50 {
                assert_eq!(lane.run(move || i).await.unwrap(), i);
            }
        });
        drop(lane);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while inner.lock().threads > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "threads still running"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
