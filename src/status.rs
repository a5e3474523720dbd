//! Live counters of the service, shared by the pipeline (which updates them) and the
//! reporters (systemd STATUS=, SIGUSR1 summary, status file).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the pipeline. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Spool directories currently watched.
    pub watching: AtomicU64,
    /// Files known and waiting (ready or settling or backing off), not in flight.
    pub queued: AtomicU64,
    /// Uploads in progress.
    pub in_flight: AtomicU64,
    /// Files delivered since start.
    pub sent: AtomicU64,
    /// Files given up on (moved to failed_dir) since start.
    pub failed: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Snapshot {
    pub watching: u64,
    pub queued: u64,
    pub in_flight: u64,
    pub sent: u64,
    pub failed: u64,
}

impl Stats {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            watching: self.watching.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watching {} dirs, {} in flight, {} queued, {} sent, {} failed",
            self.watching, self.in_flight, self.queued, self.sent, self.failed
        )
    }
}
