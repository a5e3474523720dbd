//! What the running service reports about itself.
//!
//! - [`Stats`]: live counters shared by the pipeline (which updates them) and the reporters
//!   (systemd STATUS=, the SIGUSR1 summary).
//! - [`View`]: one complete answer of the running service (destinations, watches, files in
//!   flight, the oldest waiting files and why they wait). `accio status` prints it, the
//!   metrics endpoint takes its gauges from it. It is serialized as JSON on the control
//!   socket, so every type here is `Serialize + Deserialize`. Paths in it are written as in
//!   the logs ([`crate::esc`]): printed as they are, a hostile file name cannot
//!   forge a line of `accio status`.
//! - [`ViewHandle`]: how the control socket and the metrics endpoint ask the *current*
//!   pipeline (the daemon replaces it on SIGHUP) for a [`View`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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
    /// Destinations currently down (unreachable, probed until they answer).
    pub destinations_down: AtomicU64,
    /// Why the last reload was refused (`None` once one succeeds): STATUS= and `accio
    /// status` say it until the configuration on disk is fixed and reloaded.
    reload_refused: Mutex<Option<String>>,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Spool directories watched.
    pub watching: u64,
    /// Files waiting (settling, ready, backing off), not in flight.
    pub queued: u64,
    /// Uploads in progress.
    pub in_flight: u64,
    /// Files delivered since the service started.
    pub sent: u64,
    /// Files given up on (moved to `failed_dir`) since the service started.
    pub failed: u64,
    /// Destinations currently down.
    #[serde(default)]
    pub destinations_down: u64,
}

impl Stats {
    /// Records how the last reload ended: `Some(why)` refused, `None` taken.
    pub fn set_reload_refused(&self, why: Option<String>) {
        *self
            .reload_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the last reload was refused, if it was.
    pub fn reload_refused(&self) -> Option<String> {
        self.reload_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            watching: self.watching.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            destinations_down: self.destinations_down.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watching {} dirs, {} in flight, {} queued, {} sent, {} failed",
            self.watching, self.in_flight, self.queued, self.sent, self.failed
        )?;
        // Said only when it matters, so a healthy service's line stays as it was.
        if self.destinations_down > 0 {
            let s = if self.destinations_down == 1 { "" } else { "s" };
            write!(f, ", {} destination{s} down", self.destinations_down)?;
        }
        Ok(())
    }
}

/// One answer of the running service: everything `accio status` shows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct View {
    /// Process id of the service.
    pub pid: u32,
    /// Version of the running binary.
    pub version: String,
    /// Seconds since the service started.
    pub uptime_s: f64,
    /// The counters (the same as the systemd STATUS line).
    pub totals: Snapshot,
    /// Every destination (`host:port`) of the current configuration.
    #[serde(default)]
    pub destinations: Vec<DestinationView>,
    /// Every watched spool directory.
    #[serde(default)]
    pub watches: Vec<WatchView>,
    /// Every upload in progress.
    #[serde(default)]
    pub in_flight: Vec<FileInFlight>,
    /// The oldest waiting files, oldest first (the pipeline caps how many), of the
    /// destination asked for if one was.
    #[serde(default)]
    pub waiting: Vec<WaitingFile>,
    /// How many files wait (of the destination asked for): more than `waiting` lists when
    /// the list was cut. `None` from a service that does not count them.
    #[serde(default)]
    pub waiting_total: Option<u64>,
    /// Why the last reload (SIGHUP) was refused; `None` when it was taken, or none was
    /// asked for. The service runs on the configuration it had.
    #[serde(default)]
    pub reload_refused: Option<String>,
    /// The bandwidth limits configured, with the rate in force now (`*`: the whole
    /// service).
    #[serde(default)]
    pub rates: Vec<crate::rate::RateView>,
}

/// One destination: a `(host, port)` that watches send to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DestinationView {
    /// `host:port` as configured.
    pub name: String,
    /// Reachable, as far as the last attempt tells (true until something fails).
    pub up: bool,
    /// When it went down (Unix time, seconds); `None` while up.
    pub down_since_unix: Option<f64>,
    /// The error of the last failed attempt that made or kept it down.
    pub last_error: Option<String>,
    /// Uploads to it in progress.
    pub in_flight: u64,
    /// Files waiting for it.
    pub queued: u64,
    /// Uploads it may have in flight now (adaptive limits lower it below `cap`).
    pub limit: u64,
    /// Its configured cap of uploads in flight.
    pub cap: u64,
    /// Whether `limit` adapts to how the destination answers.
    pub adaptive: bool,
    /// Its usual time to the greeting, in milliseconds, once measured.
    pub baseline_greeting_ms: Option<f64>,
    /// Its recent time to the greeting, in milliseconds, once measured.
    pub greeting_ms: Option<f64>,
    /// While down: seconds until the next probe attempt.
    pub next_probe_in_s: Option<f64>,
}

/// One watched spool directory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WatchView {
    /// The spool directory.
    pub dir: String,
    /// Its destination, `host:port`.
    pub destination: String,
    /// Files waiting in it, not in flight.
    pub queued: u64,
    /// Its uploads in progress.
    pub in_flight: u64,
    /// Files delivered from it since the service started.
    pub sent: u64,
    /// Files from it given up on since the service started.
    pub failed: u64,
    /// How long its oldest waiting file has waited, in seconds.
    pub oldest_waiting_age_s: Option<f64>,
    /// Entries in it that are not regular files (ignored), as far as known.
    #[serde(default)]
    pub special_entries: u64,
}

/// One upload in progress.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FileInFlight {
    /// The file in the spool.
    pub path: String,
    /// Where it goes, `host:port`.
    pub destination: String,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Its size.
    pub size: u64,
    /// Seconds since this attempt started.
    pub elapsed_s: f64,
    /// 1-based attempt number.
    pub attempt: u32,
}

/// One file that waits, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingFile {
    /// The file in the spool.
    pub path: String,
    /// Where it goes, `host:port`.
    pub destination: String,
    /// Seconds since the service found it.
    pub age_s: f64,
    /// Why it is not being sent now.
    pub why: Why,
}

/// Why a file waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Why {
    /// Closed after writing; waits to be unchanged for `settle`.
    Settling,
    /// A process has it open for writing.
    WriterOpen,
    /// Whether it has writers cannot be told (no leases): waits until it has been unchanged
    /// for the quiet age.
    WriterUnknown,
    /// Ready; waits for a free upload slot.
    Ready,
    /// An attempt failed; the next one is in `retry_in_s` seconds.
    BackingOff {
        retry_in_s: f64,
        attempts: u32,
        error: String,
    },
    /// Its destination is down; it goes once a probe succeeds.
    DestinationDown,
    /// Delivered or given up, but moving it out of the spool failed; that is retried.
    DispositionPending { error: String },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Settling => f.write_str("settling (closed, waiting to stay unchanged)"),
            Why::WriterOpen => f.write_str("open for writing by a process"),
            Why::WriterUnknown => {
                f.write_str("waiting to be unchanged for the quiet age (writers cannot be seen)")
            }
            Why::Ready => f.write_str("ready, waiting for an upload slot"),
            Why::BackingOff {
                retry_in_s,
                attempts,
                error,
            } => {
                let s = if *attempts == 1 { "" } else { "s" };
                // None counted: the service itself was short of descriptors or memory.
                if *attempts == 0 {
                    return write!(f, "backing off: retry in {}: {error}", secs(*retry_in_s));
                }
                write!(
                    f,
                    "backing off: retry in {} after {attempts} failed attempt{s}: {error}",
                    secs(*retry_in_s)
                )
            }
            Why::DestinationDown => f.write_str("destination down"),
            Why::DispositionPending { error } => {
                write!(f, "delivered or given up, moving it failed: {error}")
            }
        }
    }
}

/// Seconds, rounded for people: `0.4s`, `12s`, `3m 20s`, `2h 5m`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "0s".to_string();
    }
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    let whole = s.round() as u64;
    let (h, m, sec) = (whole / 3600, (whole % 3600) / 60, whole % 60);
    match (h, m, sec) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Waiting files a [`View`] lists by default (`accio status`).
pub const VIEW_WAITING: usize = 20;
/// Waiting files a [`View`] lists at most (`accio status --all`): the answer stays a few
/// MiB however long the backlog is; beyond, it says how many more wait.
pub const VIEW_WAITING_ALL: usize = 100_000;

/// What a [`View`] should list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViewQuery {
    /// List up to [`VIEW_WAITING_ALL`] waiting files instead of [`VIEW_WAITING`].
    #[serde(default)]
    pub all: bool,
    /// Only the files (and the destination) of this destination, `host:port` as configured.
    #[serde(default)]
    pub destination: Option<String>,
}

impl ViewQuery {
    /// How many waiting files to list.
    pub fn max_waiting(&self) -> usize {
        if self.all {
            VIEW_WAITING_ALL
        } else {
            VIEW_WAITING
        }
    }
}

/// What `accio flush` did: destinations down whose probe was brought forward, files whose
/// backoff was cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Flushed {
    pub probed: u64,
    pub files: u64,
}

/// A request to the running pipeline, answered on its sender.
#[derive(Debug)]
pub enum ViewRequest {
    /// Its [`View`] (for the control socket and the metrics).
    View(ViewQuery, oneshot::Sender<View>),
    /// `accio flush`: probe the destinations that are down now and retry the files backing
    /// off now, of one destination (`host:port`) or all. `Err`: no such destination.
    Flush(Option<String>, oneshot::Sender<Result<Flushed, String>>),
}

/// Asks the current pipeline for a [`View`]. The daemon [`set`](ViewHandle::set)s the
/// request channel of each pipeline it starts (on SIGHUP, the new one's), so the control
/// socket and the metrics endpoint always ask the pipeline that runs now.
#[derive(Debug, Clone, Default)]
pub struct ViewHandle(Arc<Mutex<Option<mpsc::Sender<ViewRequest>>>>);

/// How long [`ViewHandle::get`] waits for the pipeline's answer: a pipeline that does not
/// answer in this time is busy or stuck, and a status request must not hang with it.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

impl ViewHandle {
    /// From now on, requests go to `tx`.
    pub fn set(&self, tx: mpsc::Sender<ViewRequest>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// The current pipeline's [`View`]; `None` if there is no pipeline, or it stopped or
    /// did not answer within [`VIEW_TIMEOUT`].
    pub async fn get(&self) -> Option<View> {
        self.query(ViewQuery::default()).await
    }

    /// [`ViewHandle::get`], listing what `q` asks for.
    pub async fn query(&self, q: ViewQuery) -> Option<View> {
        self.ask(|reply| ViewRequest::View(q, reply)).await
    }

    /// Asks the current pipeline to flush (see [`ViewRequest::Flush`]); `None` as for
    /// [`ViewHandle::get`].
    pub async fn flush(&self, destination: Option<String>) -> Option<Result<Flushed, String>> {
        self.ask(|reply| ViewRequest::Flush(destination, reply))
            .await
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> ViewRequest) -> Option<T> {
        let tx = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let (reply, answer) = oneshot::channel();
        let ask = async {
            tx.send(request(reply)).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(VIEW_TIMEOUT, ask).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_line_names_down_destinations_only_when_some_are() {
        let mut s = Snapshot {
            watching: 1,
            queued: 3,
            in_flight: 0,
            sent: 120,
            failed: 0,
            destinations_down: 0,
        };
        assert_eq!(
            s.to_string(),
            "watching 1 dirs, 0 in flight, 3 queued, 120 sent, 0 failed"
        );
        s.destinations_down = 2;
        assert!(s.to_string().ends_with(", 2 destinations down"));
    }

    #[test]
    fn view_round_trips_as_json() {
        let v = View {
            pid: 7,
            version: "0.1.0".into(),
            uptime_s: 1.5,
            waiting: vec![WaitingFile {
                path: "/s/a".into(),
                destination: "h:1".into(),
                age_s: 2.0,
                why: Why::BackingOff {
                    retry_in_s: 3.0,
                    attempts: 2,
                    error: "reset".into(),
                },
            }],
            ..View::default()
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains(r#""state":"backing_off""#), "{json}");
        assert_eq!(serde_json::from_str::<View>(&json).unwrap(), v);
    }

    #[test]
    fn seconds_for_people() {
        assert_eq!(secs(0.44), "0.4s");
        assert_eq!(secs(12.2), "12s");
        assert_eq!(secs(200.0), "3m 20s");
        assert_eq!(secs(120.0), "2m");
        assert_eq!(secs(7500.0), "2h 5m");
        assert_eq!(secs(f64::NAN), "0s");
    }

    #[tokio::test]
    async fn handle_asks_the_current_pipeline() {
        let h = ViewHandle::default();
        assert!(h.get().await.is_none());
        for pid in [1, 2] {
            let (tx, mut rx) = mpsc::channel::<ViewRequest>(1);
            h.set(tx);
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    if let ViewRequest::View(_, r) = r {
                        let _ = r.send(View {
                            pid,
                            ..View::default()
                        });
                    }
                }
            });
            assert_eq!(h.get().await.map(|v| v.pid), Some(pid));
        }
    }
}
