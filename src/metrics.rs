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

/// Upload attempt durations: 5 ms to about 164 s, each bucket twice the one before (no
/// gap wider than ×2, so a quantile is never off by more than that).
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 16)
}

/// Delivery latencies (found in the spool to confirmed): 10 ms to about 3.9 days, ×2 apart.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 26)
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
    /// By result too: 10 s timeouts would otherwise hide the time deliveries take.
    upload_duration: Family<AttemptLabels, Histogram>,
    delivery_latency: Family<WatchLabel, Histogram>,
    /// 1 if the last reload (SIGHUP) was taken (or none was asked for), 0 if refused.
    reload_ok: Gauge,
    /// When the configuration was last loaded successfully (start or reload), Unix time.
    reload_time: Gauge<f64, AtomicU64>,
    started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            files_sent: Family::default(),
            files_failed: Family::default(),
            bytes_sent: Family::default(),
            disposition_failures: Family::default(),
            last_success: Family::default(),
            attempts: Family::default(),
            upload_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            delivery_latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            reload_ok: Gauge::default(),
            reload_time: Gauge::default(),
            started: SystemTime::now(),
        };
        // The configuration the service starts on was loaded successfully.
        m.reload_ok.set(1);
        m.reload_time.set(unix_of(m.started));
        m
    }
}

fn unix_of(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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
        let _ = self.delivery_latency.get_or_create(&w);
        // Before the first delivery, "the last success" is the start: an alert on the time
        // since then fires for a service that delivers nothing after a restart too.
        if self.last_success.get(&w).is_none() {
            self.last_success
                .get_or_create(&w)
                .set(unix_of(self.started));
        }
        for result in AttemptResult::ALL {
            let l = AttemptLabels {
                destination: destination.to_string(),
                result,
            };
            let _ = self.attempts.get_or_create(&l);
            let _ = self.upload_duration.get_or_create(&l);
        }
    }

    /// A reload (SIGHUP) was taken (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(unix_now());
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
            .get_or_create(&AttemptLabels {
                destination: destination.to_string(),
                result,
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

    /// The exposition: the process's metrics, the event metrics, plus the gauges of `view`
    /// (the running pipeline's state; `None` when it did not answer, and then the state
    /// gauges are absent rather than wrong) and the files in each watch's failed_dir
    /// (`failed`, by watch; `None`: they could not be counted).
    pub fn encode(&self, view: Option<&View>, failed: Option<&[(String, u64)]>) -> String {
        let mut r = Registry::with_prefix("accio");
        r.register(
            "config_last_reload_successful",
            "1 if the last configuration reload (SIGHUP) was taken, 0 if it was refused (the service runs on the previous configuration)",
            self.reload_ok.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration was last loaded successfully, at start or by a reload (Unix time)",
            Unit::Seconds,
            self.reload_time.clone(),
        );
        if let Some(failed) = failed {
            let g: Family<WatchLabel, Gauge> = Family::default();
            for (w, n) in failed {
                g.get_or_create(&watch(w)).set(clamp(*n));
            }
            r.register(
                "failed_files",
                "Files in failed_dir now (given up on, not yet retried or removed), by the spool directory they came from",
                g,
            );
        }
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
            "When a file of this spool directory was last delivered (Unix time); before the first delivery, when the service started",
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
            "Duration of upload attempts, by destination and result",
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
        // Writing into a String cannot fail. The process's metrics have no prefix (their
        // names are the standard ones), so they are a registry of their own, whose `# EOF`
        // is dropped: one exposition, one EOF.
        let mut p = Registry::default();
        process::register(&mut p, self.started);
        let _ = prometheus_client::encoding::text::encode(&mut out, &p);
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The standard `process_*` metrics (as the Go and Python clients export them), read from
/// `/proc/self` at scrape time: prometheus-client has no collector for them. What cannot
/// be read is left out.
mod process {
    use std::time::SystemTime;

    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::{Registry, Unit};

    /// What `/proc/self/stat` says, in base units.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Stat {
        pub cpu_seconds: f64,
        pub threads: i64,
        pub virtual_bytes: i64,
        pub resident_bytes: i64,
    }

    /// Parses `/proc/self/stat`: the fields after the command name (which is in
    /// parentheses and may hold spaces and parentheses itself, hence the last `)`).
    pub fn parse_stat(text: &str, ticks_per_s: f64, page: i64) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Field n of proc(5) (1-based) is f[n - 3]: pid and comm come before.
        let num = |n: usize| f.get(n - 3)?.parse::<i64>().ok();
        let ticks = num(14)?.saturating_add(num(15)?);
        Some(Stat {
            cpu_seconds: ticks as f64 / ticks_per_s,
            threads: num(20)?,
            virtual_bytes: num(23)?,
            resident_bytes: num(24)?.saturating_mul(page),
        })
    }

    pub fn register(r: &mut Registry, started: SystemTime) {
        // SAFETY: sysconf(3) has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks.max(1) as f64, i64::from(page.max(1) as i32)));
        if let Some(s) = stat {
            r.register_with_unit(
                "process_cpu",
                "Total user and system CPU time spent",
                Unit::Seconds,
                ConstCounter::<f64>::new(s.cpu_seconds),
            );
            r.register_with_unit(
                "process_resident_memory",
                "Resident memory size",
                Unit::Bytes,
                ConstGauge::new(s.resident_bytes),
            );
            r.register_with_unit(
                "process_virtual_memory",
                "Virtual memory size",
                Unit::Bytes,
                ConstGauge::new(s.virtual_bytes),
            );
            r.register(
                "process_threads",
                "Threads of the process",
                ConstGauge::new(s.threads),
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The listing's own descriptor is among them: not one of the service's.
            let n = fds.count().saturating_sub(1);
            r.register(
                "process_open_fds",
                "Open file descriptors",
                ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
        if let Ok(l) = crate::limits::nofile() {
            r.register(
                "process_max_fds",
                "The soft limit of open file descriptors (RLIMIT_NOFILE)",
                ConstGauge::new(i64::try_from(l.soft).unwrap_or(i64::MAX)),
            );
        }
        let start: ConstGauge<f64> = ConstGauge::new(super::unix_of(started));
        r.register_with_unit(
            "process_start_time",
            "When the process started (Unix time)",
            Unit::Seconds,
            start,
        );
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields_after_a_hostile_command_name() {
            let text = "812 (a) b (c) S 1 812 812 0 -1 4194560 1 0 0 0 250 150 0 0 20 0 7 0 100 52428800 300 18446744073709551615";
            let s = parse_stat(text, 100.0, 4096).unwrap();
            assert_eq!(s.cpu_seconds, 4.0);
            assert_eq!(s.threads, 7);
            assert_eq!(s.virtual_bytes, 52_428_800);
            assert_eq!(s.resident_bytes, 300 * 4096);
            assert_eq!(parse_stat("1 (x", 100.0, 4096), None);
            assert_eq!(parse_stat("1 (x) S 1", 100.0, 4096), None);
        }
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

    // Only the limits in force now: no series is "no limit" (0 would read as "nothing may
    // be sent"). `*` is the whole service's.
    let rate: Family<DestinationLabel, Gauge> = Family::default();
    for l in &v.rates {
        if let Some(bps) = l.bytes_per_second {
            rate.get_or_create(&DestinationLabel {
                destination: l.scope.clone(),
            })
            .set(clamp(bps));
        }
    }
    r.register(
        "rate_limit_bytes_per_second",
        "Bandwidth limit in force, by destination (`*`: all uploads of the service together); absent while none is",
        rate,
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

        let without = m.encode(None, None);
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
        assert!(without.contains(
            "accio_upload_duration_seconds_count{destination=\"h:1\",result=\"ok\"} 1\n"
        ));
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
        let with = m.encode(Some(&view), Some(&[("/s/out".to_string(), 2)]));
        assert!(
            with.contains("accio_failed_files{watch=\"/s/out\"} 2\n"),
            "{with}"
        );
        assert!(
            with.contains("accio_config_last_reload_successful 1\n"),
            "{with}"
        );
        assert!(with.contains("\nprocess_open_fds "), "{with}");
        assert!(with.contains("\nprocess_resident_memory_bytes "), "{with}");
        assert_eq!(with.matches("# EOF").count(), 1, "{with}");
        m.reloaded(false);
        assert!(m
            .encode(None, None)
            .contains("accio_config_last_reload_successful 0\n"));
        assert!(
            with.contains("accio_files_queued{watch=\"/s/out\"} 4\n"),
            "{with}"
        );
        assert!(with.contains("accio_oldest_waiting_file_age_seconds{watch=\"/s/out\"} 12.5\n"));
        assert!(with.contains("accio_special_entries{watch=\"/s/out\"} 3\n"));
        assert!(with.contains("accio_destination_up{destination=\"h:1\"} 0\n"));
        assert!(with.contains("accio_uploads_in_flight{destination=\"h:1\"} 1\n"));
        assert!(
            !with.contains("accio_rate_limit_bytes_per_second{"),
            "{with}"
        );
        let limited = View {
            rates: vec![crate::rate::RateView {
                scope: "h:1".into(),
                bytes_per_second: Some(4 << 20),
                ..Default::default()
            }],
            ..view
        };
        assert!(m
            .encode(Some(&limited), None)
            .contains("accio_rate_limit_bytes_per_second{destination=\"h:1\"} 4194304\n"));
    }
}
