//! Prometheus metrics of the service.
//!
//! Two kinds, kept apart on purpose:
//!
//! - **Events** (counters, histograms, the last success time) are recorded by the pipeline
//!   as they happen, through the methods of [`Metrics`]. One `Arc<Metrics>` lives as long as
//!   the process, so they survive a reload (SIGHUP), as counters must.
//! - **State** (queued, in flight, destination up, limits, oldest waiting age) is not kept
//!   here at all: it is read from the pipeline's [`View`] at scrape time, so the gauges, the
//!   `accio status` output and the systemd STATUS line come from one source.
//!
//! Names follow Prometheus's conventions: base units (seconds, bytes), `_total` counters,
//! `_seconds` histograms. `watch` is the spool directory, `destination` is `host:port` as
//! configured. The exposition is prometheus-client's OpenMetrics text, for clients that ask
//! for it (Prometheus does); others get the classic text format 0.0.4 ([`to_text_004`]),
//! which older tools (`promtool check metrics` up to 2.x, plain `curl`) read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::status::View;

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_text_004`]'s output.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text (as [`Metrics::encode`] writes it) in the classic Prometheus text format
/// 0.0.4. The two differ, for what we write, only in that a counter's family is named
/// without `_total` in OpenMetrics and with it in 0.0.4, in the `# UNIT` lines and in the
/// final `# EOF`; samples, label escaping and histograms are the same.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabel {
    watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    destination: String,
    result: AttemptResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// How one upload attempt ended: the `result` label of `accio_upload_attempts_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the variant names are the label values
pub enum AttemptResult {
    /// Delivered: the server confirmed by closing.
    ok,
    /// The destination could not be reached (name not resolving, refused, unreachable,
    /// connect timeout).
    unreachable,
    /// Connected, but no (or a wrong) `accio\r\n` greeting.
    no_greeting,
    /// Failed after the greeting: stall, reset, no confirmation.
    failed,
    /// The file changed while it was sent; not delivered, sent again once stable.
    changed,
    /// The file could not be opened or read here; nothing about the destination.
    file_error,
}

impl AttemptResult {
    /// Every result, for series that exist (at 0) before the first attempt.
    pub const ALL: [AttemptResult; 6] = [
        AttemptResult::ok,
        AttemptResult::unreachable,
        AttemptResult::no_greeting,
        AttemptResult::failed,
        AttemptResult::changed,
        AttemptResult::file_error,
    ];
}

/// Upload attempt durations: 5 ms to about 80 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 15)
}

/// Delivery latencies (found in the spool to confirmed): 10 ms to about 3 days.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 4.0, 13)
}

/// The process's event metrics. Shared as `Arc<Metrics>`; every method is cheap and can be
/// called from any task.
#[derive(Debug)]
pub struct Metrics {
    files_sent: Family<WatchLabel, Counter>,
    files_failed: Family<WatchLabel, Counter>,
    bytes_sent: Family<WatchLabel, Counter>,
    disposition_failures: Family<WatchLabel, Counter>,
    last_success: Family<WatchLabel, Gauge<f64, AtomicU64>>,
    attempts: Family<AttemptLabels, Counter>,
    upload_duration: Family<DestinationLabel, Histogram>,
    delivery_latency: Family<WatchLabel, Histogram>,
    started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            files_sent: Family::default(),
            files_failed: Family::default(),
            bytes_sent: Family::default(),
            disposition_failures: Family::default(),
            last_success: Family::default(),
            attempts: Family::default(),
            upload_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            delivery_latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            started: SystemTime::now(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn watch(w: &str) -> WatchLabel {
    WatchLabel {
        watch: w.to_string(),
    }
}

impl Metrics {
    /// A watch sending to `destination` is configured: its series exist from now on, at 0,
    /// so that rates and alerts work before the first event (Prometheus's advice).
    pub fn watch_configured(&self, watch_dir: &str, destination: &str) {
        let w = watch(watch_dir);
        let _ = self.files_sent.get_or_create(&w);
        let _ = self.files_failed.get_or_create(&w);
        let _ = self.bytes_sent.get_or_create(&w);
        let _ = self.disposition_failures.get_or_create(&w);
        for result in AttemptResult::ALL {
            let _ = self.attempts.get_or_create(&AttemptLabels {
                destination: destination.to_string(),
                result,
            });
        }
    }

    /// A file from `watch` was delivered (`bytes` long). `delivery_latency`: from when the
    /// service found it (or, where that is not known, when it last changed) to the server's
    /// confirmation.
    pub fn file_sent(&self, watch_dir: &str, bytes: u64, delivery_latency: Option<Duration>) {
        let w = watch(watch_dir);
        self.files_sent.get_or_create(&w).inc();
        self.bytes_sent.get_or_create(&w).inc_by(bytes);
        self.last_success.get_or_create(&w).set(unix_now());
        if let Some(l) = delivery_latency {
            self.delivery_latency
                .get_or_create(&w)
                .observe(l.as_secs_f64());
        }
    }

    /// A file from `watch` was given up on (moved to `failed_dir`).
    pub fn file_given_up(&self, watch_dir: &str) {
        self.files_failed.get_or_create(&watch(watch_dir)).inc();
    }

    /// Moving or deleting a file of `watch` after it was delivered or given up on failed
    /// (it stays in the spool and that is retried).
    pub fn disposition_failed(&self, watch_dir: &str) {
        self.disposition_failures
            .get_or_create(&watch(watch_dir))
            .inc();
    }

    /// One upload attempt to `destination` ended with `result` after `duration`.
    pub fn attempt(&self, destination: &str, result: AttemptResult, duration: Duration) {
        self.attempts
            .get_or_create(&AttemptLabels {
                destination: destination.to_string(),
                result,
            })
            .inc();
        self.upload_duration
            .get_or_create(&DestinationLabel {
                destination: destination.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Files delivered from `watch` so far. The status view counts for itself (the pipeline
    /// keeps per-watch counts); these are for this module's tests.
    #[cfg(test)]
    fn sent_of(&self, watch_dir: &str) -> u64 {
        self.files_sent
            .get(&watch(watch_dir))
            .map_or(0, |c| c.get())
    }

    /// Files from `watch` given up on so far (for this module's tests).
    #[cfg(test)]
    fn failed_of(&self, watch_dir: &str) -> u64 {
        self.files_failed
            .get(&watch(watch_dir))
            .map_or(0, |c| c.get())
    }

    /// The exposition: the event metrics, plus the gauges of `view` (the running pipeline's
    /// state; `None` when it did not answer, and then the state gauges are absent rather
    /// than wrong).
    pub fn encode(&self, view: Option<&View>) -> String {
        let mut r = Registry::with_prefix("accio");
        let info: Family<VersionLabel, Gauge> = Family::default();
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
        r.register("build_info", "Always 1; the version of accio", info);
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(
            self.started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register_with_unit(
            "start_time",
            "When the service started (Unix time)",
            Unit::Seconds,
            start,
        );
        r.register(
            "files_sent",
            "Files delivered (the server confirmed), by spool directory",
            self.files_sent.clone(),
        );
        r.register(
            "files_failed",
            "Files given up on after retry.max_attempts (moved to failed_dir), by spool directory",
            self.files_failed.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes of the files delivered, by spool directory",
            self.bytes_sent.clone(),
        );
        r.register(
            "disposition_failures",
            "Moves to done_dir/failed_dir (or deletes) that failed; the file stays in the spool and this is retried",
            self.disposition_failures.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "When a file of this spool directory was last delivered (Unix time)",
            Unit::Seconds,
            self.last_success.clone(),
        );
        r.register(
            "upload_attempts",
            "Upload attempts by destination and result (ok, unreachable, no_greeting, failed, changed, file_error)",
            self.attempts.clone(),
        );
        r.register_with_unit(
            "upload_duration",
            "Duration of upload attempts, any result, by destination",
            Unit::Seconds,
            self.upload_duration.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "From finding a file in the spool to the server's confirmation, by spool directory",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
        if let Some(v) = view {
            register_state(&mut r, v);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The gauges of the pipeline's state, from one [`View`].
fn register_state(r: &mut Registry, v: &View) {
    let queued: Family<WatchLabel, Gauge> = Family::default();
    let oldest: Family<WatchLabel, Gauge<f64, AtomicU64>> = Family::default();
    let specials: Family<WatchLabel, Gauge> = Family::default();
    for w in &v.watches {
        let l = watch(&w.dir);
        queued.get_or_create(&l).set(clamp(w.queued));
        specials.get_or_create(&l).set(clamp(w.special_entries));
        oldest
            .get_or_create(&l)
            .set(w.oldest_waiting_age_s.unwrap_or(0.0));
    }
    r.register(
        "files_queued",
        "Files waiting in the spool (settling, ready, backing off, destination down), not in flight",
        queued,
    );
    r.register(
        "special_entries",
        "Entries of the spool directory that are not regular files (FIFOs, sockets, devices, symlinks, directories): ignored, never sent",
        specials,
    );
    r.register_with_unit(
        "oldest_waiting_file_age",
        "How long the oldest waiting file of this spool directory has waited (0: none waits)",
        Unit::Seconds,
        oldest,
    );

    let in_flight: Family<DestinationLabel, Gauge> = Family::default();
    let up: Family<DestinationLabel, Gauge> = Family::default();
    let limit: Family<DestinationLabel, Gauge> = Family::default();
    let dqueued: Family<DestinationLabel, Gauge> = Family::default();
    let greeting: Family<DestinationLabel, Gauge<f64, AtomicU64>> = Family::default();
    let baseline: Family<DestinationLabel, Gauge<f64, AtomicU64>> = Family::default();
    for d in &v.destinations {
        let l = DestinationLabel {
            destination: d.name.clone(),
        };
        in_flight.get_or_create(&l).set(clamp(d.in_flight));
        up.get_or_create(&l).set(i64::from(d.up));
        limit.get_or_create(&l).set(clamp(d.limit));
        dqueued.get_or_create(&l).set(clamp(d.queued));
        // Only once measured: a 0 would read as "instant".
        if let Some(ms) = d.greeting_ms {
            greeting.get_or_create(&l).set(ms / 1000.0);
        }
        if let Some(ms) = d.baseline_greeting_ms {
            baseline.get_or_create(&l).set(ms / 1000.0);
        }
    }
    r.register(
        "uploads_in_flight",
        "Uploads in progress, by destination",
        in_flight,
    );
    r.register(
        "destination_up",
        "1 if the destination is up, 0 while it is down (unreachable; probed until it answers)",
        up,
    );
    r.register(
        "destination_limit",
        "Uploads the destination may have in flight now",
        limit,
    );
    r.register(
        "destination_files_queued",
        "Files waiting for this destination",
        dqueued,
    );
    r.register_with_unit(
        "destination_greeting",
        "Recent time from starting to connect until the whole greeting arrived (smoothed): one round trip plus the server's queueing",
        Unit::Seconds,
        greeting,
    );
    r.register_with_unit(
        "destination_greeting_baseline",
        "The destination's usual greeting time (the smallest recent one); the adaptive limit shrinks when the greeting time climbs well above it",
        Unit::Seconds,
        baseline,
    );

    let totals: Gauge = Gauge::default();
    totals.set(clamp(v.totals.destinations_down));
    r.register("destinations_down", "Destinations currently down", totals);
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DestinationView, WatchView};

    #[test]
    fn events_and_state_are_exposed_with_conventional_names() {
        let m = Metrics::default();
        m.file_sent("/s/out", 10, Some(Duration::from_millis(30)));
        m.file_sent("/s/out", 5, None);
        m.file_given_up("/s/out");
        m.attempt("h:1", AttemptResult::ok, Duration::from_millis(3));
        m.attempt("h:1", AttemptResult::unreachable, Duration::from_millis(3));
        m.disposition_failed("/s/out");
        assert_eq!(m.sent_of("/s/out"), 2);
        assert_eq!(m.failed_of("/s/out"), 1);
        assert_eq!(m.sent_of("/other"), 0);

        let without = m.encode(None);
        assert!(
            without.contains("accio_files_sent_total{watch=\"/s/out\"} 2\n"),
            "{without}"
        );
        assert!(
            without.contains("accio_bytes_sent_total{watch=\"/s/out\"} 15\n"),
            "{without}"
        );
        assert!(without.contains("accio_files_failed_total{watch=\"/s/out\"} 1\n"));
        assert!(without.contains(
            "accio_upload_attempts_total{destination=\"h:1\",result=\"unreachable\"} 1\n"
        ));
        assert!(without.contains("accio_delivery_latency_seconds_count{watch=\"/s/out\"} 1\n"));
        assert!(without.contains("accio_upload_duration_seconds_count{destination=\"h:1\"} 2\n"));
        assert!(without.contains("accio_disposition_failures_total{watch=\"/s/out\"} 1\n"));
        assert!(!without.contains("accio_files_queued"));
        assert!(without.ends_with("# EOF\n"));
        let text = to_text_004(&without);
        assert!(
            text.contains("# TYPE accio_files_sent_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP accio_files_sent_total Files delivered"));
        assert!(text.contains("# TYPE accio_upload_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));

        let view = View {
            watches: vec![WatchView {
                dir: "/s/out".into(),
                destination: "h:1".into(),
                queued: 4,
                oldest_waiting_age_s: Some(12.5),
                special_entries: 3,
                ..WatchView::default()
            }],
            destinations: vec![DestinationView {
                name: "h:1".into(),
                up: false,
                in_flight: 1,
                limit: 1,
                cap: 4,
                ..DestinationView::default()
            }],
            ..View::default()
        };
        let with = m.encode(Some(&view));
        assert!(
            with.contains("accio_files_queued{watch=\"/s/out\"} 4\n"),
            "{with}"
        );
        assert!(with.contains("accio_oldest_waiting_file_age_seconds{watch=\"/s/out\"} 12.5\n"));
        assert!(with.contains("accio_special_entries{watch=\"/s/out\"} 3\n"));
        assert!(with.contains("accio_destination_up{destination=\"h:1\"} 0\n"));
        assert!(with.contains("accio_uploads_in_flight{destination=\"h:1\"} 1\n"));
    }
}
