//! The state every disposition of the service shares: directories waiting for their fsync,
//! and the hidden names deletes are using right now.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::files::DirFd;

/// How long a round of fsyncs waits after the first directory was marked: every move of
/// that window shares one fsync of its directories (under load, hundreds of files per fsync
/// of done_dir; a file delivered alone is synced this much later).
const WINDOW: Duration = Duration::from_millis(50);

/// Group commit for directory fsyncs: dispositions mark the directories they changed, one
/// task fsyncs each marked directory once per round, [`WINDOW`] after the round's first mark.
/// Under load, one fsync covers many files; when idle, nothing runs. Nothing waits for these
/// fsyncs, and nothing needs to: a power cut before one can only undo a move or delete of a
/// delivered file (a rename is atomic: the file is in the spool or in done_dir, never
/// neither), which puts it back in the spool to be sent again (a duplicate, at least once),
/// never loses it. A process crash (kill -9) loses nothing at all: the page cache survives
/// it. What must be durable before the next step is synced there, not here: the copy across
/// filesystems before its source is removed, a reason file before its rename.
///
/// It also knows the hidden names ([`super::delete_if_ours`]) its deletes are using right
/// now, so that a periodic [`super::restore_stale_deletions`] given the same `Syncer` never
/// puts one back under their feet, however old its ctime.
#[derive(Debug, Default)]
pub struct Syncer {
    /// Directories changed since their last fsync, by (device, inode), each with a
    /// descriptor (held open: a sync never opens anything, so it cannot fail for want of a
    /// descriptor, and never resolves a path that may lead elsewhere by now).
    dirty: Mutex<HashMap<(u64, u64), Arc<DirFd>>>,
    /// Wakes [`Syncer::run`] when a directory is marked.
    wake: Notify,
    /// Hidden delete names in use (see [`Deleting`]).
    deleting: Mutex<HashSet<PathBuf>>,
}

impl Syncer {
    pub fn new() -> Arc<Syncer> {
        Arc::new(Syncer::default())
    }

    /// Records that `dir` changed and must be synced.
    pub fn mark(&self, dir: &Arc<DirFd>) {
        lock(&self.dirty)
            .entry(dir.key())
            .or_insert_with(|| dir.clone());
        self.wake.notify_one();
    }

    /// Fsyncs every directory marked so far (blocking). One whose fsync fails stays marked:
    /// it is tried again on the next round (logged each time it fails).
    pub fn flush_blocking(&self) {
        let dirs: Vec<((u64, u64), Arc<DirFd>)> = lock(&self.dirty).drain().collect();
        for (key, dir) in dirs {
            if let Err(e) = dir.fsync() {
                tracing::warn!(
                    dev = key.0,
                    ino = key.1,
                    "cannot fsync a directory (device {}, inode {}): {e}; tried again on the next round",
                    key.0,
                    key.1
                );
                lock(&self.dirty).entry(key).or_insert(dir);
            }
        }
    }

    /// Runs rounds of fsyncs until `stop` is cancelled, then one last round.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            // The moves of the next moments join this round (on shutdown: at once).
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(WINDOW) => {}
            }
            // A mark made while the last round ran wakes this one, perhaps with its
            // directory synced by that round already: no hand-off for nothing.
            if lock(&self.dirty).is_empty() {
                continue;
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.flush_blocking()).await;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.flush_blocking()).await;
    }

    /// Registers `hidden` as a delete in progress for as long as the guard lives.
    pub(super) fn deleting(&self, hidden: &Path) -> Deleting<'_> {
        lock(&self.deleting).insert(hidden.to_path_buf());
        Deleting {
            syncer: self,
            path: hidden.to_path_buf(),
        }
    }

    /// Is `hidden` a delete of ours in progress?
    pub(super) fn is_deleting(&self, hidden: &Path) -> bool {
        lock(&self.deleting).contains(hidden)
    }
}

/// A delete in progress under a hidden name; unregistered when dropped.
pub(super) struct Deleting<'a> {
    syncer: &'a Syncer,
    path: PathBuf,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        lock(&self.syncer.deleting).remove(&self.path);
    }
}

/// A set stays consistent whatever panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
