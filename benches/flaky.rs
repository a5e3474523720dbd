//! Benchmark of a server that is mostly fine (issue 16): `accio watch` (the release binary)
//! on loopback, default configuration unless said, timeouts 10 s (the defaults),
//! `on_success = "delete"`. Figures only, no timed assertions (`tests/health.rs` asserts the
//! same cases with generous bounds).
//!
//! Part 1, faults at 5 %: a receiver with a pool of 32 workers, each of which takes 20 ms per
//! upload after the body (a server that does some work per file, as the pooled
//! server did: 1,184 files/s; a receiver that takes nothing per upload serves 8,800 files/s
//! here, and its whole run lasts 0.2 s, a few of the 100 ms before a hung connection is
//! given up); every 20th connection it
//! accepts is held without a greeting until the client gives up (a hung worker, which does
//! not take a worker of the pool), or closed before the greeting. 2,000 files of 2 KiB
//! renamed into the spool at once: files/s from the first rename to the last body received,
//! its ratio to the same server without faults (same run), the worst file's wait (rename to
//! body received), connections accepted, and the files the service gave up on (none
//! expected).
//!
//! Part 2, one at a time: a receiver that serves one connection at a time and holds each
//! for 1 s after the body (the others wait in its accept queue), 40 files of 1 KiB: the time
//! to the last body received with the default configuration and with `concurrency = 1`
//! (the reference: nobody waits for a greeting), and the connections each opened (every
//! connection beyond the files is one the client abandoned; a server that saves each
//! connection as a file makes an empty or `ERROR` file of it).
//!
//! Run: `cargo bench --bench flaky` (about 3 minutes). Knobs: `FLAKY_BENCH_FILES=2000`,
//! `FLAKY_BENCH_POOL=32`, `FLAKY_BENCH_SERVICE_MS=20` (per upload), `FLAKY_BENCH_EVERY=20` (every n-th connection faulty),
//! `FLAKY_BENCH_SERIAL=40` (0 skips part 2), `FLAKY_BENCH_ONLY=faults` or `=serial`,
//! `FAULTS_ACCIO_BIN=PATH` for another build, `FLAKY_BENCH_LOG_DIR=DIR` to keep each run's
//! log.

#[path = "../tests/faults/harness.rs"]
mod harness;
#[path = "../tests/faults/payload.rs"]
mod payload;
#[path = "../tests/peers/mod.rs"]
mod peers;
#[path = "../tests/faults/sink.rs"]
mod sink;

use std::time::{Duration, Instant};

use harness::{env_num, wait_until, Conf, Dest, Dirs, WatchConf};
use peers::{Fault, Receiver, ReceiverOptions};

struct Figures {
    files: u64,
    received: u64,
    secs: f64,
    worst: Duration,
    accepted: u64,
    faulted: u64,
    gave_up: usize,
}

impl Figures {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.received as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One run: `files` of `size` bytes renamed in at once, sent to a receiver with `opts`;
/// `concurrency`: `None` for the default configuration, else the global cap and the
/// destination's pinned limit.
fn run(
    name: &str,
    opts: ReceiverOptions,
    files: u64,
    size: u64,
    concurrency: Option<i64>,
) -> Figures {
    let d = Dirs::new("flaky");
    let mut w = WatchConf::under(&d.tmp.path().join("w"));
    w.done = None;
    let recv = Receiver::start(ReceiverOptions {
        len: Some(size),
        ..opts
    });
    let mut server = Dest::local(recv.port());
    let mut conf = Conf::new("10s", vec![w.clone()]);
    conf.retry_initial = "1s".into();
    conf.retry_max = "5m".into();
    conf.shutdown_grace = "2s".into();
    if let Some(n) = concurrency {
        conf.concurrency = Some(n);
        server.concurrency = Some(n);
        server.adaptive = Some(false);
    }
    conf.server = Some(server);
    conf.write(&d.config);
    for i in 1..=files {
        std::fs::write(d.stage.join(format!("s{i}")), payload::content(i, size)).unwrap();
    }
    let (mut svc, not_ready) = d.start_service(Duration::from_secs(20));
    if let Some(tail) = not_ready {
        println!("  no READY=1 within 20 s; log:\n{tail}");
    }
    let t0 = Instant::now();
    let dropped: Vec<(u64, Instant)> = (1..=files)
        .map(|i| {
            let t = Instant::now();
            std::fs::rename(
                d.stage.join(format!("s{i}")),
                w.dir.join(format!("f{i:07}.dat")),
            )
            .unwrap();
            (i, t)
        })
        .collect();
    let deadline = Duration::from_secs((120 + files * 2).min(900));
    let all = wait_until(deadline, || {
        recv.arrivals().len() as u64 >= files || !svc.alive()
    });
    let got = recv.arrivals();
    let last = got.values().max().copied();
    let worst = peers::latencies(&dropped, &got)
        .last()
        .copied()
        .unwrap_or_default();
    let f = Figures {
        files,
        received: got.len() as u64,
        secs: last.map_or(0.0, |l| l.duration_since(t0).as_secs_f64()),
        worst,
        accepted: recv.accepted(),
        faulted: recv.faulted(),
        gave_up: harness::count_entries(&w.failed),
    };
    if !all || !svc.alive() {
        println!(
            "  {name}: only {} of {files} files within {deadline:?}; log tail:\n{}",
            f.received,
            harness::tail(&d.log_text(), 10)
        );
    }
    let _ = svc.terminate(Duration::from_secs(20));
    if let Ok(dir) = std::env::var("FLAKY_BENCH_LOG_DIR") {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.log")),
            d.log_text(),
        );
    }
    println!(
        "{name}: {}/{} files in {:.1} s, {:.0} files/s, worst wait {}, {} connections ({} faulty), {} given up",
        f.received,
        f.files,
        f.secs,
        f.rate(),
        peers::ms(f.worst),
        f.accepted,
        f.faulted,
        f.gave_up
    );
    f
}

fn main() {
    let start = Instant::now();
    println!(
        "accio flaky-server benchmark; binary {}",
        harness::bin().display()
    );
    let only = std::env::var("FLAKY_BENCH_ONLY").unwrap_or_default();
    let files = env_num("FLAKY_BENCH_FILES", 2000);
    let pool = env_num("FLAKY_BENCH_POOL", 32) as usize;
    let every = env_num("FLAKY_BENCH_EVERY", 20);
    let service = Duration::from_millis(env_num("FLAKY_BENCH_SERVICE_MS", 20));
    let serial = env_num("FLAKY_BENCH_SERIAL", 40);
    let mut table = Vec::new();
    if only.is_empty() || only == "faults" {
        let opts = |fault| ReceiverOptions {
            pool: Some(pool),
            delay: service,
            fault,
            ..ReceiverOptions::default()
        };
        let clean = run("no faults", opts(None), files, 2048, None);
        let hang = run(
            "hung at 5 %",
            opts(Some((Fault::Hang, every))),
            files,
            2048,
            None,
        );
        let close = run(
            "closing at 5 %",
            opts(Some((Fault::Close, every))),
            files,
            2048,
            None,
        );
        println!();
        println!("| pool {pool}, {} ms per upload, {files} × 2 KiB, default config | files/s | × no faults | worst wait | connections (faulty) | given up |", service.as_millis());
        println!("|---|---|---|---|---|---|");
        for (name, f) in [
            ("no faults", &clean),
            ("hung worker, every 20th connection", &hang),
            ("closed before greeting, every 20th", &close),
        ] {
            table.push(format!(
                "| {name} | {:.0}{} | {:.2} | {} | {} ({}) | {} |",
                f.rate(),
                if f.received < f.files {
                    format!(" ({} received)", f.received)
                } else {
                    String::new()
                },
                if clean.rate() > 0.0 {
                    f.rate() / clean.rate()
                } else {
                    0.0
                },
                peers::ms(f.worst),
                f.accepted,
                f.faulted,
                f.gave_up
            ));
        }
        for l in &table {
            println!("{l}");
        }
        println!();
    }
    if serial > 0 && (only.is_empty() || only == "serial") {
        let opts = || ReceiverOptions {
            pool: Some(1),
            delay: Duration::from_secs(1),
            ..ReceiverOptions::default()
        };
        let one = run("serial, concurrency 1", opts(), serial, 1024, Some(1));
        let default = run("serial, default", opts(), serial, 1024, None);
        println!();
        println!("| one at a time, 1 s per upload, {serial} files | time | × concurrency 1 | connections | connections / files |");
        println!("|---|---|---|---|---|");
        for (name, f) in [("concurrency = 1", &one), ("default", &default)] {
            println!(
                "| {name} | {:.1} s{} | {:.2} | {} | {:.2} |",
                f.secs,
                if f.received < f.files {
                    format!(" ({} received)", f.received)
                } else {
                    String::new()
                },
                if one.secs > 0.0 {
                    f.secs / one.secs
                } else {
                    0.0
                },
                f.accepted,
                f.accepted as f64 / f.files as f64
            );
        }
        println!();
    }
    println!("runtime {:.0} s", start.elapsed().as_secs_f64());
}
