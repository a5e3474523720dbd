//! Benchmark of `accio watch` (the release binary) against a shell baseline measured in the
//! same run:
//!
//! ```sh
//! inotifywait -m -e moved_to --format %w%f DIR | while read f; do accio send 127.0.0.1 PORT "$f"; done
//! ```
//!
//! Figures: files/s for a burst of 10,000 files of 1 KiB renamed into the spool at once
//! (`concurrency = 4`), median and p99 latency from the rename to the last byte received (one
//! file at a time, and within the burst), idle CPU (utime+stime from /proc over 5 s) and RSS.
//!
//! The receiver is a sink in this process: it sends `accio\r\n`, reads to EOF, notes the
//! time, parses the file's id from the content and closes. The rename time and the receive
//! time are on the same clock. No timed assertions: figures only.
//!
//! Run: `cargo bench --bench watch`. `WATCH_BENCH_FILES` and `WATCH_BENCH_SAMPLES` change the
//! burst size (10000) and the number of one-at-a-time latency samples (300);
//! `WATCH_BENCH_CONCURRENCY` the service's concurrency (4); `WATCH_BENCH_ONLY=service` or
//! `=baseline` runs one side only.

#[path = "../tests/faults/harness.rs"]
mod harness;
#[path = "../tests/faults/payload.rs"]
mod payload;
#[path = "../tests/faults/sink.rs"]
mod sink;

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{cpu_times, env_num, status_kib, wait_until, Conf, Dirs, Launch, Service};
use sink::Sink;

const FILE_SIZE: u64 = 1024;

/// Everything measured for one contender.
#[derive(Default)]
struct Results {
    /// Burst: first rename to last byte received.
    burst_secs: f64,
    /// Burst: first rename to the spool empty again (files moved to done), if it does that.
    drained_secs: Option<f64>,
    single_p50: Duration,
    single_p99: Duration,
    burst_p50: Duration,
    burst_p99: Duration,
    idle_cpu_pct: f64,
    /// Clock ticks used while idle for 5 s (the resolution of the figure above).
    idle_ticks: u64,
    /// CPU time (user+system) the contender used for the burst, per file.
    burst_cpu_per_file: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    received: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Writes file `id` in `stage`, renames it into `spool`; returns the time just before the
/// rename (on a loaded machine the service may receive the file before this thread runs again
/// after `rename` returns).
fn drop_one(stage: &Path, spool: &Path, id: u64) -> Instant {
    let tmp = stage.join(format!("s{id}"));
    fs::write(&tmp, payload::content(id, FILE_SIZE)).unwrap();
    let t = Instant::now();
    fs::rename(&tmp, spool.join(format!("f{id:07}.dat"))).unwrap();
    t
}

/// First complete reception per id.
fn first_receptions(sink: &Sink) -> HashMap<u64, Instant> {
    let mut m = HashMap::new();
    for r in sink.receptions() {
        if let (Some(id), true, true) = (r.id, r.intact, r.len == FILE_SIZE) {
            let e = m.entry(id).or_insert(r.at);
            if r.at < *e {
                *e = r.at;
            }
        }
    }
    m
}

/// One-at-a-time latencies, then the burst. `pids` gives the processes to measure at idle.
#[allow(clippy::too_many_arguments)] // one call site per contender; a struct would only rename them
fn measure(
    name: &str,
    sink: &Sink,
    stage: &Path,
    spool: &Path,
    files: u64,
    samples: u64,
    moves_to_done: bool,
    pids: &dyn Fn() -> Vec<u32>,
) -> Results {
    let mut res = Results::default();
    // Warm-up (and a check that the pipeline works at all).
    let mut id = 1u64;
    for _ in 0..20 {
        drop_one(stage, spool, id);
        let want = id;
        if !wait_until(Duration::from_secs(20), || {
            first_receptions(sink).contains_key(&want)
        }) {
            println!("{name}: warm-up file {want} not received within 20 s; giving up");
            return res;
        }
        id += 1;
    }

    // One file at a time: latency without queueing.
    let mut renamed = HashMap::new();
    for _ in 0..samples {
        let want = id;
        renamed.insert(id, drop_one(stage, spool, id));
        wait_until(Duration::from_secs(20), || {
            first_receptions(sink).contains_key(&want)
        });
        id += 1;
    }
    let got = first_receptions(sink);
    let mut lat: Vec<Duration> = renamed
        .iter()
        .filter_map(|(i, t)| got.get(i).map(|r| r.duration_since(*t)))
        .collect();
    lat.sort();
    res.single_p50 = percentile(&lat, 0.5);
    res.single_p99 = percentile(&lat, 0.99);
    println!(
        "{name}: one at a time, {} samples: min {} p10 {} p50 {} p90 {} p99 {} max {}",
        lat.len(),
        ms(percentile(&lat, 0.0)),
        ms(percentile(&lat, 0.1)),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0))
    );

    // The burst: every file written first, then renamed in as fast as possible.
    let first = 1_000_000u64;
    for i in first..first + files {
        fs::write(stage.join(format!("s{i}")), payload::content(i, FILE_SIZE)).unwrap();
    }
    let mut renamed = Vec::with_capacity(files as usize);
    let cpu0 = cpu_ticks(&pids());
    let t0 = Instant::now();
    for i in first..first + files {
        renamed.push((i, Instant::now()));
        fs::rename(
            stage.join(format!("s{i}")),
            spool.join(format!("f{i:07}.dat")),
        )
        .unwrap();
    }
    let rename_secs = t0.elapsed().as_secs_f64();
    let all = wait_until(Duration::from_secs(600), || {
        let g = first_receptions(sink);
        (first..first + files).all(|i| g.contains_key(&i))
    });
    let got = first_receptions(sink);
    res.received = (first..first + files)
        .filter(|i| got.contains_key(i))
        .count();
    if !all {
        println!(
            "{name}: only {} of {files} burst files received within 600 s",
            res.received
        );
    }
    let last = (first..first + files)
        .filter_map(|i| got.get(&i))
        .max()
        .copied()
        .unwrap_or(t0);
    res.burst_secs = last.duration_since(t0).as_secs_f64();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let burst_ticks = cpu_ticks(&pids()).saturating_sub(cpu0);
    res.burst_cpu_per_file = Duration::from_secs_f64(burst_ticks as f64 / hz / files.max(1) as f64);
    if moves_to_done {
        let empty = wait_until(Duration::from_secs(120), || {
            fs::read_dir(spool).map(|d| d.count() == 0).unwrap_or(false)
        });
        if empty {
            res.drained_secs = Some(t0.elapsed().as_secs_f64());
        }
    }
    let mut lat: Vec<Duration> = renamed
        .iter()
        .filter_map(|(i, t)| got.get(i).map(|r| r.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    res.burst_p50 = percentile(&lat, 0.5);
    res.burst_p99 = percentile(&lat, 0.99);
    println!("{name}: renaming {files} files took {rename_secs:.3} s");

    // Idle: nothing to do for 5 s.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(&pids());
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let ticks = cpu_ticks(&pids()).saturating_sub(before);
    res.idle_ticks = ticks;
    res.idle_cpu_pct = ticks as f64 / hz / t.elapsed().as_secs_f64() * 100.0;
    for p in pids() {
        res.rss_kib += status_kib(p, "VmRSS:").unwrap_or(0);
        res.hwm_kib += status_kib(p, "VmHWM:").unwrap_or(0);
    }
    res
}

/// CPU time of `pids` and of their children they waited for (the baseline's `accio send`
/// runs), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| cpu_times(*p))
        .map(|t| t.own + t.children)
        .sum()
}

/// Pids whose process group is `pgid`.
fn group_pids(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
        // state ppid pgrp ...
        if rest.split_whitespace().nth(2) == Some(&pgid.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// The service with `concurrency` as its global cap.
fn bench_service(files: u64, samples: u64, concurrency: u64) -> Results {
    let d = Dirs::new("bench-watch");
    let sink = Sink::start();
    let mut spec = Conf::quick(sink.port(), d.watch());
    spec.concurrency = Some(concurrency as i64);
    spec.set_timeouts("10s");
    spec.shutdown_grace = "10s".into();
    spec.retry_initial = "1s".into();
    spec.retry_max = "5m".into();
    spec.max_attempts = 10;
    spec.watches[0].rescan_interval = "60s".into();
    spec.write(&d.config);
    let mut svc = Service::start(&Launch {
        config: d.config.clone(),
        log: d.log.clone(),
        ..Launch::default()
    });
    if !svc.wait_ready(Duration::from_secs(3)) {
        println!("accio watch: no READY=1 within 3 s (going on; the warm-up will tell)");
    }
    let pid = svc.pid;
    let res = measure(
        "accio watch",
        &sink,
        &d.stage,
        &d.spool,
        files,
        samples,
        true,
        &|| vec![pid],
    );
    if !svc.alive() {
        println!(
            "accio watch exited during the benchmark; log tail:\n{}",
            harness::tail(&d.log_text(), 20)
        );
    }
    let _ = svc.terminate(Duration::from_secs(20));
    res
}

fn ensure_inotifywait() -> bool {
    let have = || {
        Command::new("inotifywait")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if have() {
        return true;
    }
    if unsafe { libc::geteuid() } == 0 {
        println!("baseline: installing inotify-tools with apt-get");
        let _ = Command::new("sh")
            .args([
                "-c",
                "apt-get install -y -qq inotify-tools >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq inotify-tools) >/dev/null 2>&1",
            ])
            .status();
    }
    have()
}

fn bench_baseline(files: u64, samples: u64) -> Option<Results> {
    if !ensure_inotifywait() {
        println!("baseline: SKIPPED: inotifywait (inotify-tools) is not installed and could not be installed");
        return None;
    }
    let d = Dirs::new("bench-baseline");
    let sink = Sink::start();
    let script = r#"inotifywait -m -e moved_to --format %w%f "$SPOOL" | while read -r f; do "$ACCIO" send 127.0.0.1 "$PORT" "$f"; done"#;
    let mut child = Command::new("bash")
        .args(["-c", script])
        .env("SPOOL", &d.spool)
        .env("ACCIO", harness::bin())
        .env("PORT", sink.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .ok()?;
    let pgid = child.id();
    // inotifywait says "Watches established." on stderr once it watches: files renamed in
    // before that would never be seen.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take()?;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Watches established") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(15)).is_err() {
        println!("baseline: inotifywait did not establish its watch within 15 s");
    }
    let res = measure(
        "baseline (inotifywait | accio send)",
        &sink,
        &d.stage,
        &d.spool,
        files,
        samples,
        false,
        &|| group_pids(pgid),
    );
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGTERM);
    }
    let _ = child.wait();
    Some(res)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let files = env_num("WATCH_BENCH_FILES", 10_000);
    let samples = env_num("WATCH_BENCH_SAMPLES", 300);
    let bin: PathBuf = harness::bin();
    // WATCH_BENCH_CONCURRENCY=256 runs the service with the default global cap (its lane's
    // limit then adapts) instead of the fixed 4 of earlier figures.
    let conc = env_num("WATCH_BENCH_CONCURRENCY", 4);
    println!(
        "accio watch benchmark: {files} files of {FILE_SIZE} B, concurrency {conc}, {samples} latency samples; binary {}",
        bin.display()
    );
    // WATCH_BENCH_ONLY=service|baseline runs one side only.
    let only = std::env::var("WATCH_BENCH_ONLY").unwrap_or_default();
    let svc = if only == "baseline" {
        Results::default()
    } else {
        bench_service(files, samples, conc)
    };
    let base = if only == "service" {
        None
    } else {
        bench_baseline(files, samples)
    };
    println!();
    println!("| | accio watch | baseline: inotifywait \\| accio send |");
    println!("|---|---|---|");
    let b = |f: &dyn Fn(&Results) -> String| base.as_ref().map(f).unwrap_or("skipped".into());
    let rate = |r: &Results| {
        if r.burst_secs > 0.0 {
            format!("{:.0} files/s", r.received as f64 / r.burst_secs)
        } else {
            "-".into()
        }
    };
    println!(
        "| burst of {files} × 1 KiB: received/s | {} ({} received in {:.2} s) | {} |",
        rate(&svc),
        svc.received,
        svc.burst_secs,
        b(&|r| format!(
            "{} ({} received in {:.2} s)",
            rate(r),
            r.received,
            r.burst_secs
        ))
    );
    println!(
        "| burst: until the spool is empty (moved to done) | {} | n/a (does not move) |",
        svc.drained_secs
            .map(|s| format!("{s:.2} s ({:.0} files/s)", files as f64 / s))
            .unwrap_or("not reached".into())
    );
    println!(
        "| latency, one file at a time: median / p99 | {} / {} | {} |",
        ms(svc.single_p50),
        ms(svc.single_p99),
        b(&|r| format!("{} / {}", ms(r.single_p50), ms(r.single_p99)))
    );
    println!(
        "| latency within the burst: median / p99 | {} / {} | {} |",
        ms(svc.burst_p50),
        ms(svc.burst_p99),
        b(&|r| format!("{} / {}", ms(r.burst_p50), ms(r.burst_p99)))
    );
    println!(
        "| idle CPU (utime+stime over 5 s) | {:.2} % ({} ticks) | {} |",
        svc.idle_cpu_pct,
        svc.idle_ticks,
        b(&|r| format!("{:.2} % ({} ticks)", r.idle_cpu_pct, r.idle_ticks))
    );
    println!(
        "| CPU (user+system) per file in the burst | {:.0} µs | {} |",
        svc.burst_cpu_per_file.as_secs_f64() * 1e6,
        b(&|r| format!("{:.0} µs", r.burst_cpu_per_file.as_secs_f64() * 1e6))
    );
    println!(
        "| RSS idle after the burst / peak (VmHWM) | {} KiB / {} KiB | {} |",
        svc.rss_kib,
        svc.hwm_kib,
        b(&|r| format!("{} KiB / {} KiB", r.rss_kib, r.hwm_kib))
    );
    println!();
    println!("targets: >= 3000 files/s, median latency <= 5 ms, idle CPU ~ 0");
}
