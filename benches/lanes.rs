//! Benchmark of `accio watch` (the release binary) with several destinations and with big
//! backlogs (issue 8). Figures only, no timed assertions; `tests/lanes.rs` asserts the same
//! cases with generous bounds.
//!
//! Part 1, one destination in trouble beside a healthy one: two watches, each with its own
//! server on loopback, `concurrency = 4`, every timeout 2 s. Watch B's server is healthy;
//! watch A's never sends `accio\r\n`, or black-holes connects (full accept queue), or takes
//! 50 ms per file. First B's latency alone: N files dropped into B while A is idle. Then A
//! gets 40 files (2,000 for the slow server), and 1 s later N more files are dropped into B.
//! Latency is from just before the rename into B's spool to the body complete at B's
//! receiver (same clock).
//!
//! Part 2, backlogs already in the spool at start (10k, 100k, 1M files of 100 B, created in
//! the spool before the service starts, `on_success = "delete"`; on tmpfs, /dev/shm, unless
//! `LANES_BENCH_DIR` names another place: file creation on this VM's ext4 is too slow): time from the start of the
//! process to READY=1 (read from the NOTIFY_SOCKET), to the first file received, peak RSS
//! (VmHWM from /proc once the spool is drained), and the drain rate from the start to the
//! last file received, with its ratio to the 10k backlog's rate in the same run.
//!
//! Run: `cargo bench --bench lanes` (4-6 minutes with the 1M backlog, most of it the 1M
//! run's drain; 1-2 minutes without it). Knobs:
//! - `LANES_BENCH_ONLY=trouble` or `=backlog`: one part only; `=tree-backlog`: the largest
//!   of `LANES_BENCH_SIZES` flat, then spread over `LANES_BENCH_TREE_DIRS` (`10000`; a
//!   list such as `100,10000` runs each) directories of a `recursive = true` watch (issue
//!   #22), peak RSS compared;
//! - `LANES_BENCH_BIG=100000`: skip backlogs larger than this (the 1M one);
//!   `LANES_BENCH_SIZES=10000,100000,1000000` picks the backlog sizes (the first is the
//!   reference of the ratios);
//! - `LANES_BENCH_HEALTHY=10`: files dropped into the healthy watch each time;
//! - `LANES_BENCH_CONCURRENCY=4` (`default` leaves the key out) for part 1;
//! - `FAULTS_ACCIO_BIN=PATH`: another build of accio.

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

use harness::{env_num, wait_until, Conf, Launch, Service, WatchConf};
use peers::{ms, BadPeer, Pair, Receiver, ReceiverOptions, Trouble};

struct TroubleFigures {
    case: String,
    alone: Vec<Duration>,
    beside: Vec<Duration>,
    missing: usize,
    /// Greeting-less server only: most connections at once after A's first failure.
    a_overlap: Option<usize>,
}

fn median(v: &[Duration]) -> Duration {
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn trouble_case(
    name: &str,
    case: &str,
    trouble: Trouble,
    bad_files: u64,
    healthy: u64,
    concurrency: Option<i64>,
) -> TroubleFigures {
    let t = Instant::now();
    let mut pair = Pair::start(name, trouble, "2s", concurrency);
    // Alone: A has nothing to send.
    let dropped = pair.drop_healthy(peers::HEALTHY_IDS, healthy);
    let (alone, _) = pair.healthy_latencies(&dropped, Duration::from_secs(60));
    pair.load_troubled(bad_files);
    std::thread::sleep(Duration::from_secs(1));
    let dropped = pair.drop_healthy(peers::HEALTHY_IDS + healthy, healthy);
    let (beside, missing) = pair.healthy_latencies(&dropped, Duration::from_secs(180));
    let a_overlap = match &pair.bad {
        BadPeer::Receiver(r) if matches!(trouble, Trouble::NoGreeting) => {
            // A's first failure: with a large cap B's files may be in before it.
            r.first_close(Duration::from_secs(30)).map(|first| {
                // As tests/lanes.rs: watch A for three timeouts after its first failure, long
                // enough for the attempts in flight then to end and for probes to follow.
                let until = first + Duration::from_secs(6);
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                r.most_open_since(first)
            })
        }
        _ => None,
    };
    if !pair.svc.alive() {
        println!(
            "{case}: accio watch exited; log tail:\n{}",
            pair.log_tail(20)
        );
    }
    let _ = pair.svc.terminate(Duration::from_secs(20));
    println!(
        "{case}: alone median {} max {}; beside median {} max {}{} ({:.1} s)",
        ms(median(&alone)),
        ms(alone.last().copied().unwrap_or_default()),
        ms(median(&beside)),
        ms(beside.last().copied().unwrap_or_default()),
        if missing > 0 {
            format!(", {missing} never arrived within 180 s")
        } else {
            String::new()
        },
        t.elapsed().as_secs_f64()
    );
    TroubleFigures {
        case: case.into(),
        alone,
        beside,
        missing,
        a_overlap,
    }
}

struct BacklogFigures {
    /// The files spread over this many directories (`recursive = true`); 0: flat.
    dirs: u64,
    files: u64,
    creation: Duration,
    ready: Option<Duration>,
    first: Option<Duration>,
    drained: Option<Duration>,
    received: usize,
    hwm_kib: u64,
}

/// `n` files of 100 B named `f{id}.dat` in `dir`, written by two threads.
fn create_backlog(dir: &Path, n: u64) {
    std::thread::scope(|s| {
        for part in 0..2u64 {
            s.spawn(move || {
                for i in (1 + part..=n).step_by(2) {
                    std::fs::write(dir.join(format!("f{i:010}.dat")), payload::content(i, 100))
                        .unwrap();
                }
            });
        }
    });
}

/// `n` files of 100 B spread evenly over `dirs` directories `d{k}` of `dir` (issue #22's
/// tree: a million files in 10,000 directories), by two threads.
fn create_tree_backlog(dir: &Path, n: u64, dirs: u64) {
    for k in 0..dirs {
        std::fs::create_dir(dir.join(format!("d{k:05}"))).unwrap();
    }
    std::thread::scope(|s| {
        for part in 0..2u64 {
            s.spawn(move || {
                for i in (1 + part..=n).step_by(2) {
                    let sub = dir.join(format!("d{:05}", i % dirs));
                    std::fs::write(sub.join(format!("f{i:010}.dat")), payload::content(i, 100))
                        .unwrap();
                }
            });
        }
    });
}

/// Where the backlogs go: `LANES_BENCH_DIR`, else /dev/shm (tmpfs) if it exists. Creating a
/// file on this VM's ext4 costs about 1 ms of system time (a million would take 15 minutes);
/// on tmpfs 60 µs.
fn backlog_root() -> std::path::PathBuf {
    std::env::var_os("LANES_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        })
}

/// A backlog of `n` files at start: flat (`dirs` 0) or spread over `dirs` directories of a
/// `recursive = true` watch.
fn backlog_case(n: u64, dirs: u64) -> BacklogFigures {
    let tmp = tempfile::Builder::new()
        .prefix("accio-lanes-backlog-")
        .tempdir_in(backlog_root())
        .unwrap();
    let (config, log) = (
        tmp.path().join("accio.toml"),
        tmp.path().join("service.log"),
    );
    let mut w = WatchConf::under(&tmp.path().join("w"));
    w.done = None; // delete: a million delivered files need no second home
    w.rescan_interval = "5m".into();
    let recv = Receiver::start(ReceiverOptions {
        len: Some(100),
        ..ReceiverOptions::default()
    });
    let mut conf = Conf::new("10s", vec![w.clone()]);
    conf.server = Some(harness::Dest::local(recv.port()));
    conf.shutdown_grace = "5s".into();
    let mut text = conf.to_toml();
    if dirs > 0 {
        text = text.replace("[[watch]]\n", "[[watch]]\nrecursive = true\n");
        assert!(text.contains("recursive = true"), "{text}");
    }
    std::fs::write(&config, text).unwrap();
    let t = Instant::now();
    if dirs > 0 {
        create_tree_backlog(&w.dir, n, dirs);
    } else {
        create_backlog(&w.dir, n);
    }
    let creation = t.elapsed();
    println!(
        "backlog {n} in {dirs} dirs: created {n} files in {:.1} s",
        creation.as_secs_f64()
    );
    let t0 = Instant::now();
    let mut svc = Service::start(&Launch {
        config: config.clone(),
        log: log.clone(),
        ..Launch::default()
    });
    let ready = svc
        .wait_ready(Duration::from_secs(300))
        .then(|| t0.elapsed());
    // Generous: 200 files/s at worst.
    let deadline = Duration::from_secs(60 + n / 200);
    wait_until(deadline, || recv.received() as u64 >= n || !svc.alive());
    let hwm_kib = harness::status_kib(svc.pid, "VmHWM:").unwrap_or(0);
    let got = recv.arrivals();
    let received = got.len();
    let first = got.values().min().map(|t| t.duration_since(t0));
    let drained = (received as u64 >= n)
        .then(|| got.values().max().map(|t| t.duration_since(t0)))
        .flatten();
    if !svc.alive() {
        println!(
            "backlog {n}: accio watch exited; log tail:\n{}",
            harness::tail(
                &String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()),
                20
            )
        );
    }
    let _ = svc.terminate(Duration::from_secs(30));
    let f = BacklogFigures {
        dirs,
        files: n,
        creation,
        ready,
        first,
        drained,
        received,
        hwm_kib,
    };
    println!(
        "backlog {n} in {dirs} dirs: READY after {}, first file after {}, {} received, drained in {}, peak RSS {:.1} MiB",
        opt_ms(f.ready),
        opt_ms(f.first),
        f.received,
        f.drained
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or("-".into()),
        f.hwm_kib as f64 / 1024.0
    );
    f
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "-".into())
}

fn rate(f: &BacklogFigures) -> Option<f64> {
    f.drained.map(|d| f.files as f64 / d.as_secs_f64())
}

fn main() {
    let start = Instant::now();
    let only = std::env::var("LANES_BENCH_ONLY").unwrap_or_default();
    let healthy = env_num("LANES_BENCH_HEALTHY", 10);
    let concurrency = match std::env::var("LANES_BENCH_CONCURRENCY").as_deref() {
        Ok("default") => None,
        Ok(s) => Some(
            s.parse()
                .expect("LANES_BENCH_CONCURRENCY: a number or `default`"),
        ),
        Err(_) => Some(4),
    };
    let big = env_num("LANES_BENCH_BIG", u64::MAX);
    let sizes: Vec<u64> = std::env::var("LANES_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("LANES_BENCH_SIZES: numbers"))
        .filter(|n| *n <= big)
        .collect();
    println!("accio lanes benchmark; binary {}", harness::bin().display());

    let conc = concurrency
        .map(|c| c.to_string())
        .unwrap_or("default".into());
    let mut trouble = Vec::new();
    if only != "backlog" && only != "tree-backlog" {
        println!("part 1: concurrency {conc}, timeouts 2 s, {healthy} healthy files each time");
        trouble.push(trouble_case(
            "lanes-bench-nogreet",
            "server A never greets, 40 files",
            Trouble::NoGreeting,
            40,
            healthy,
            concurrency,
        ));
        trouble.push(trouble_case(
            "lanes-bench-hole",
            "server A black-holed, 40 files",
            Trouble::BlackHole,
            40,
            healthy,
            concurrency,
        ));
        trouble.push(trouble_case(
            "lanes-bench-slow",
            "server A 50 ms per file, 2,000 files",
            Trouble::Slow {
                delay: Duration::from_millis(50),
            },
            2000,
            healthy,
            concurrency,
        ));
    }
    let mut backlogs = Vec::new();
    if only == "tree-backlog" {
        // Issue #22: the flat backlog as the baseline of the same run, then the same files
        // spread over directories of a tree.
        let n = *sizes.last().unwrap_or(&1_000_000);
        let dirs: Vec<u64> = std::env::var("LANES_BENCH_TREE_DIRS")
            .unwrap_or_else(|_| "10000".into())
            .split(',')
            .map(|s| s.trim().parse().expect("LANES_BENCH_TREE_DIRS: numbers"))
            .collect();
        backlogs.push(backlog_case(n, 0));
        for d in dirs {
            backlogs.push(backlog_case(n, d));
        }
    } else if only != "trouble" {
        for n in &sizes {
            backlogs.push(backlog_case(*n, 0));
        }
    }

    println!();
    if !trouble.is_empty() {
        println!(
            "| beside a healthy destination (`concurrency = {conc}`, timeouts 2 s) | healthy alone: median / max | beside it: median / max | median ratio |"
        );
        println!("|---|---|---|---|");
        for f in &trouble {
            let ratio = median(&f.beside).as_secs_f64() / median(&f.alone).as_secs_f64().max(1e-6);
            println!(
                "| {}{} | {} / {} | {} / {}{} | {:.0}× |",
                f.case,
                f.a_overlap
                    .map(|o| format!(" (A: {o} connections at once after its first failure)"))
                    .unwrap_or_default(),
                ms(median(&f.alone)),
                ms(f.alone.last().copied().unwrap_or_default()),
                ms(median(&f.beside)),
                ms(f.beside.last().copied().unwrap_or_default()),
                if f.missing > 0 {
                    format!(" ({} never arrived)", f.missing)
                } else {
                    String::new()
                },
                ratio
            );
        }
        println!();
    }
    if !backlogs.is_empty() {
        let base = rate(&backlogs[0]);
        println!("| backlog at start (100 B files) | created in | READY after | first file after | peak RSS | drained in | files/s | vs {} |", backlogs[0].files);
        println!("|---|---|---|---|---|---|---|---|");
        for f in &backlogs {
            println!(
                "| {}{} | {:.1} s | {} | {} | {:.1} MiB | {} | {} | {} |",
                f.files,
                if f.dirs > 0 {
                    format!(" in {} directories (`recursive = true`)", f.dirs)
                } else {
                    String::new()
                },
                f.creation.as_secs_f64(),
                opt_ms(f.ready),
                opt_ms(f.first),
                f.hwm_kib as f64 / 1024.0,
                f.drained
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| format!("{} of {} received", f.received, f.files)),
                rate(f).map(|r| format!("{r:.0}")).unwrap_or("-".into()),
                match (rate(f), base) {
                    (Some(r), Some(b)) => format!("{:.0} %", r / b * 100.0),
                    _ => "-".into(),
                }
            );
        }
        println!();
    }
    println!("runtime {:.0} s", start.elapsed().as_secs_f64());
}
