//! Benchmark of distance (issue 9): `accio watch` (the release binary) sending through a
//! latency-injecting proxy (`tests/peers`: the set-up costs a round trip, every byte and FIN
//! half a round trip each way, in order) to a receiver that serves at most P connections at
//! once (a worker pool; the others are accepted and wait for a worker before their greeting).
//!
//! For each round trip (0 = no proxy, 1, 10, 50, 200 ms) and pool (1, 8, 32, 64): 1,000 files of 1 KiB
//! renamed into the spool at once, and files/s from the first rename to the last body
//! received, for the default configuration beside fixed concurrencies 4, 16, 32, 64, 128
//! (and 1 for the pool of 1, the reference of a server that serves one at a time)
//! (global cap = N; once the binary knows per-destination keys also the destination's
//! `concurrency = N` and `adaptive = false`), with the most connections the server saw open
//! at once (waiting ones included) and the greeting timeouts (connections the client closed
//! before it was greeted). Pool 1 at 50 ms or more sends 200 files per run (20 files/s at
//! best at 50 ms: 1,000 would take 50 s per run). Then 20 files of 50 MiB at 50 ms, pool 32, through a link of
//! 100 MB/s shared by all connections (files/s, MB/s, peak connections).
//!
//! Timeouts are the defaults (10 s), `on_success = "delete"`. Figures only.
//!
//! Run: `cargo bench --bench wan` (half an hour with every row; pick rows with the knobs).
//! Knobs (comma lists): `WAN_BENCH_RTT=0,1,10,50,200` (ms), `WAN_BENCH_POOL=1,8,32,64`,
//! `WAN_BENCH_CONC=default,1,4,16,32,64,128` (1 runs only with the pool of 1), `WAN_BENCH_FILES=1000`,
//! `WAN_BENCH_FILES_POOL1_50MS=200`, `WAN_BENCH_BIG=20` (0 skips the 50 MiB run),
//! `WAN_BENCH_BIG_CONC=default,4,16`, `WAN_BENCH_LINK_MBS=100` (0: no link limit),
//! `WAN_BENCH_ROWS=rtt:pool:files,...` for chosen rows instead of every round trip with every
//! pool (`WAN_BENCH_ROWS=issue16`: the rows of issue 16, 1:32:4000, 10:32:2000, 50:32:2000,
//! 50:1:100, 200:64:4000), `FAULTS_ACCIO_BIN=PATH` for another build, `WAN_BENCH_LOG_DIR=DIR` to keep each run's log
//! (with `FAULTS_RUST_LOG=accio=debug` it shows every change of the adaptive limit and each judged
//! window), `WAN_BENCH_REPEAT=R` to run every configuration of a row R times, rounds interleaved,
//! and report each cell as its run of median rate (runs last about a second; the machine's
//! load moves their figures by tens of percent). E.g. `WAN_BENCH_RTT=50 WAN_BENCH_POOL=32`.

#[path = "../tests/faults/harness.rs"]
mod harness;
#[path = "../tests/faults/payload.rs"]
mod payload;
#[path = "../tests/peers/mod.rs"]
mod peers;
#[path = "../tests/faults/sink.rs"]
mod sink;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{env_num, wait_until, Conf, Dest, Dirs, WatchConf};
use peers::{Proxy, ProxyOptions, Receiver, ReceiverOptions};

/// `None`: the default configuration (no concurrency keys at all).
type Limit = Option<i64>;

fn limit_name(l: Limit) -> String {
    l.map(|n| n.to_string()).unwrap_or_else(|| "default".into())
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn limits(name: &str, default: &str) -> Vec<Limit> {
    list(name, default)
        .iter()
        .map(|s| {
            (s != "default").then(|| {
                s.parse()
                    .unwrap_or_else(|_| panic!("{name}: numbers or `default`, not {s:?}"))
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Run {
    rtt_ms: u64,
    pool: usize,
    limit: Limit,
    files: u64,
    size: u64,
}

#[derive(Default, Clone)]
struct Figures {
    /// Distinct files received.
    received: u64,
    secs: f64,
    peak_open: usize,
    greeting_timeouts: u64,
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

/// The originals of a size, made once; each run links them into its own stage directory.
struct Originals {
    dir: std::path::PathBuf,
    size: u64,
    count: u64,
}

impl Originals {
    fn make(root: &Path, size: u64, count: u64) -> Originals {
        let dir = root.join(format!("orig-{size}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 1..=count {
            std::fs::write(dir.join(format!("s{i}")), payload::content(i, size)).unwrap();
        }
        Originals { dir, size, count }
    }
}

/// Whether per-destination keys are known; decided once.
struct Ctx {
    dest_keys: bool,
    link_rate: Option<u64>,
    root: tempfile::TempDir,
}

fn run_one(ctx: &Ctx, orig: &Originals, r: Run) -> Figures {
    assert!(r.files <= orig.count && r.size == orig.size);
    let d = Dirs::new("wan");
    let mut w = WatchConf::under(&d.tmp.path().join("w"));
    w.done = None;
    let recv = Receiver::start(ReceiverOptions {
        pool: Some(r.pool),
        len: Some(r.size),
        ..ReceiverOptions::default()
    });
    let proxy = (r.rtt_ms > 0).then(|| {
        Proxy::start(
            recv.addr,
            ProxyOptions {
                rtt: Duration::from_millis(r.rtt_ms),
                window: 4 << 20,
                link_rate: ctx.link_rate,
            },
        )
    });
    let port = proxy.as_ref().map(|p| p.port()).unwrap_or(recv.port());
    let mut server = Dest::local(port);
    let mut conf = Conf::new("10s", vec![w.clone()]);
    conf.retry_initial = "1s".into();
    conf.retry_max = "5m".into();
    conf.shutdown_grace = "2s".into();
    if let Some(n) = r.limit {
        conf.concurrency = Some(n);
        if ctx.dest_keys {
            server.concurrency = Some(n);
            server.adaptive = Some(false);
        }
    }
    conf.server = Some(server);
    conf.write(&d.config);
    // Into this run's stage (same filesystem), ready to be renamed in.
    for i in 1..=r.files {
        std::fs::hard_link(
            orig.dir.join(format!("s{i}")),
            d.stage.join(format!("s{i}")),
        )
        .unwrap();
    }
    let (mut svc, not_ready) = d.start_service(Duration::from_secs(20));
    if let Some(tail) = not_ready {
        println!("  no READY=1 within 20 s; log:\n{tail}");
    }
    let t0 = Instant::now();
    for i in 1..=r.files {
        std::fs::rename(
            d.stage.join(format!("s{i}")),
            w.dir.join(format!("f{i:07}.dat")),
        )
        .unwrap();
    }
    // At worst 2 files/s, plus the timeouts.
    let deadline = Duration::from_secs((60 + r.files / 2).min(900));
    let all = wait_until(deadline, || {
        recv.received() as u64 >= r.files || !svc.alive()
    });
    let got = recv.arrivals();
    let last = got.values().max().copied();
    let f = Figures {
        received: got.len() as u64,
        secs: last
            .map(|l| l.duration_since(t0).as_secs_f64())
            .unwrap_or(0.0),
        peak_open: recv.peak_open(),
        greeting_timeouts: recv.greeting_timeouts(),
    };
    if !all || !svc.alive() {
        println!(
            "  only {} of {} files within {deadline:?}; log tail:\n{}",
            f.received,
            r.files,
            harness::tail(&d.log_text(), 10)
        );
    }
    let _ = svc.terminate(Duration::from_secs(20));
    drop(proxy);
    // `WAN_BENCH_LOG_DIR=DIR` keeps each run's service log (with `FAULTS_RUST_LOG=accio=debug`, the
    // adaptive limit's changes), as DIR/rtt{R}-pool{P}-{N}.log.
    if let Ok(dir) = std::env::var("WAN_BENCH_LOG_DIR") {
        let to = std::path::Path::new(&dir).join(format!(
            "rtt{}-pool{}-{}.log",
            r.rtt_ms,
            r.pool,
            limit_name(r.limit)
        ));
        let _ = std::fs::write(to, d.log_text());
    }
    f
}

/// Issue 16's rows: 1 ms and 10 ms from a pool of 32, 50 ms from a pool of 32 and from a
/// server that serves one at a time, 200 ms from a pool of 64; files enough that the first
/// rounds of the adaptive limit (it starts at 4) are not the whole run.
const ISSUE16_ROWS: &str = "1:32:4000,10:32:2000,50:32:2000,50:1:100,200:64:4000";

/// `WAN_BENCH_ROWS`: `rtt:pool:files` triples, comma-separated, or `issue16`.
fn rows_of(v: &str) -> Vec<(u64, usize, u64)> {
    let v = if v.trim() == "issue16" {
        ISSUE16_ROWS
    } else {
        v
    };
    v.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let p: Vec<&str> = r.split(':').collect();
            match p[..] {
                [a, b, c] => (
                    a.parse().expect("WAN_BENCH_ROWS: rtt in ms"),
                    b.parse().expect("WAN_BENCH_ROWS: pool"),
                    c.parse().expect("WAN_BENCH_ROWS: files"),
                ),
                _ => panic!("WAN_BENCH_ROWS: rtt:pool:files, not {r:?}"),
            }
        })
        .collect()
}

/// Runs one configuration of a row (round `round` of `repeat`) and prints its figures.
fn run_timed(ctx: &Ctx, small: &Originals, r: Run, round: usize, repeat: usize) -> Figures {
    let t = Instant::now();
    let f = run_one(ctx, small, r);
    let Run {
        rtt_ms: rtt,
        pool,
        limit,
        files: n,
        ..
    } = r;
    let of = if repeat > 1 {
        format!(" (round {round} of {repeat})")
    } else {
        String::new()
    };
    println!(
        "rtt {rtt} ms, pool {pool}, concurrency {}{of}: {n} files, {:.0} files/s, peak {} connections, {} greeting timeouts ({:.1} s)",
        limit_name(limit),
        f.rate(),
        f.peak_open,
        f.greeting_timeouts,
        t.elapsed().as_secs_f64()
    );
    f
}

/// The run of median rate among a configuration's rounds (the lower one of an even count).
fn median_run(mut runs: Vec<Figures>) -> Option<Figures> {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len().checked_sub(1)? / 2;
    runs.into_iter().nth(mid)
}

fn main() {
    let start = Instant::now();
    let bin = harness::bin();
    let rtts: Vec<u64> = list("WAN_BENCH_RTT", "0,1,10,50,200")
        .iter()
        .map(|s| s.parse().expect("WAN_BENCH_RTT: milliseconds"))
        .collect();
    let pools: Vec<usize> = list("WAN_BENCH_POOL", "1,8,32,64")
        .iter()
        .map(|s| s.parse().expect("WAN_BENCH_POOL: numbers"))
        .collect();
    let confs = limits("WAN_BENCH_CONC", "default,1,4,16,32,64,128");
    let files = env_num("WAN_BENCH_FILES", 1000);
    let files_slow = env_num("WAN_BENCH_FILES_POOL1_50MS", 200);
    let big = env_num("WAN_BENCH_BIG", 20);
    let big_confs = limits("WAN_BENCH_BIG_CONC", "default,4,16");
    let link_mbs = env_num("WAN_BENCH_LINK_MBS", 100);
    let repeat = env_num("WAN_BENCH_REPEAT", 1).max(1) as usize;
    let ctx = Ctx {
        dest_keys: peers::knows_destination_keys(&bin),
        link_rate: (link_mbs > 0).then_some(link_mbs * 1_000_000),
        root: tempfile::Builder::new()
            .prefix("accio-wan-")
            .tempdir()
            .unwrap(),
    };
    println!(
        "accio wan benchmark; binary {}; fixed N = {}",
        bin.display(),
        if ctx.dest_keys {
            "concurrency = N, [server] concurrency = N, adaptive = false"
        } else {
            "concurrency = N (this binary has no per-destination keys)"
        }
    );

    // The (round trip, pool, files) of each row: WAN_BENCH_ROWS, else every round trip with
    // every pool.
    let plan: Vec<(u64, usize, u64)> = match std::env::var("WAN_BENCH_ROWS") {
        Ok(v) => rows_of(&v),
        Err(_) => rtts
            .iter()
            .flat_map(|&rtt| {
                pools.iter().map(move |&pool| {
                    let n = if pool == 1 && rtt >= 50 {
                        files_slow.min(files)
                    } else {
                        files
                    };
                    (rtt, pool, n)
                })
            })
            .collect(),
    };
    let most = plan.iter().map(|r| r.2).max().unwrap_or(files);
    let small = Originals::make(ctx.root.path(), 1024, most.max(files_slow));

    // (rtt, pool) -> figures per configuration.
    let mut rows: Vec<(u64, usize, u64, Vec<Option<Figures>>)> = Vec::new();
    {
        for &(rtt, pool, n) in &plan {
            // Every configuration once per round, rounds interleaved (the machine's load
            // moves between runs of a second); each cell is the run of median rate.
            let mut all: Vec<Vec<Figures>> = vec![Vec::new(); confs.len()];
            for round in 1..=repeat {
                let mut ratio_of_round = (None, 0.0f64);
                for (i, &limit) in confs.iter().enumerate() {
                    // One at a time is the reference for a server that serves one at a
                    // time; beside a bigger pool it would only take long (1,000 × 3 round
                    // trips).
                    if limit == Some(1) && pool > 1 {
                        continue;
                    }
                    let run = Run {
                        rtt_ms: rtt,
                        pool,
                        limit,
                        files: n,
                        size: 1024,
                    };
                    let f = run_timed(&ctx, &small, run, round, repeat);
                    match limit {
                        None => ratio_of_round.0 = Some(f.rate()),
                        Some(_) => ratio_of_round.1 = ratio_of_round.1.max(f.rate()),
                    }
                    all[i].push(f);
                }
                if let (Some(d), true) = (ratio_of_round.0, repeat > 1 && ratio_of_round.1 > 0.0) {
                    println!(
                        "  round {round}: default / best fixed {:.0} %",
                        d / ratio_of_round.1 * 100.0
                    );
                }
            }
            let figs: Vec<Option<Figures>> = all.into_iter().map(median_run).collect();
            rows.push((rtt, pool, n, figs));
        }
    }

    let mut big_figs = Vec::new();
    if big > 0 {
        let size = 50 << 20;
        let t = Instant::now();
        let orig = Originals::make(ctx.root.path(), size, big);
        println!(
            "created {big} files of 50 MiB in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for &limit in &big_confs {
            let t = Instant::now();
            let f = run_one(
                &ctx,
                &orig,
                Run {
                    rtt_ms: 50,
                    pool: 32,
                    limit,
                    files: big,
                    size,
                },
            );
            println!(
                "50 MiB files, rtt 50 ms, pool 32, concurrency {}: {:.2} files/s, {:.0} MB/s, peak {} connections, {} greeting timeouts ({:.1} s)",
                limit_name(limit),
                f.rate(),
                f.rate() * size as f64 / 1e6,
                f.peak_open,
                f.greeting_timeouts,
                t.elapsed().as_secs_f64()
            );
            big_figs.push((limit, f));
        }
    }

    println!();
    if !rows.is_empty() {
        print!("| round trip | server pool | files |");
        for l in &confs {
            print!(" {} |", limit_name(*l));
        }
        println!(" default / best fixed |");
        print!("|---|---|---|");
        for _ in &confs {
            print!("---|");
        }
        println!("---|");
        for (rtt, pool, n, figs) in &rows {
            print!("| {rtt} ms | {pool} | {n} |");
            for f in figs {
                let Some(f) = f else {
                    print!(" - |");
                    continue;
                };
                let timeouts = if f.greeting_timeouts > 0 {
                    format!(", **{} greeting timeouts**", f.greeting_timeouts)
                } else {
                    String::new()
                };
                let short = if f.received < *n {
                    format!(", {} received", f.received)
                } else {
                    String::new()
                };
                print!(" {:.0} ({}{timeouts}{short}) |", f.rate(), f.peak_open);
            }
            let default = confs
                .iter()
                .zip(figs)
                .find(|(l, _)| l.is_none())
                .and_then(|(_, f)| f.as_ref().map(Figures::rate));
            let best = confs
                .iter()
                .zip(figs)
                .filter(|(l, _)| l.is_some())
                .filter_map(|(_, f)| f.as_ref().map(Figures::rate))
                .fold(0.0, f64::max);
            match default {
                Some(d) if best > 0.0 => println!(" {:.0} % |", d / best * 100.0),
                _ => println!(" - |"),
            }
        }
        println!("\nCells: files/s (most connections open at the server at once).\n");
    }
    if !big_figs.is_empty() {
        println!("| {big} × 50 MiB, 50 ms, pool 32, link {link_mbs} MB/s | files/s | MB/s | peak connections | greeting timeouts |");
        println!("|---|---|---|---|---|");
        for (l, f) in &big_figs {
            println!(
                "| concurrency {} | {:.2} | {:.0} | {} | {} |",
                limit_name(*l),
                f.rate(),
                f.rate() * (50u64 << 20) as f64 / 1e6,
                f.peak_open,
                f.greeting_timeouts
            );
        }
        println!();
    }
    println!("runtime {:.0} s", start.elapsed().as_secs_f64());
}
