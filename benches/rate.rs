//! Bandwidth limits, in one run, against the same discard sink on loopback.
//!
//! Run with `cargo bench --bench rate` (or name parts: `-- shared shared-grants send unlimited
//! small`).
//! Prints figures; asserts nothing about time.
//!
//! - shared: 8 uploads in flight under one 4 MiB/s limit for 20 s (the library's
//!   `client::upload` with a `rate::Pacer`, as the service runs it): the rate over the whole
//!   run and over every 2 s window while all 8 are in flight, and each upload's share of each
//!   window.
//! - send: `accio send --limit-rate 2MiB/s` of 20 MiB (release binary, whole process): wall
//!   time (10 s is exact), and CPU per MiB; then the same 20 MiB at 8 and 32 MiB/s. Beside
//!   each, the floor of a paced send: the C-like client (`examples/baseline_client.rs
//!   --pace`), one blocking `sendfile` of the file into a socket the kernel paces at the
//!   rate, no timers, no grants; and the fixed cost of a process (a 500-byte send, both).
//! - unlimited: `accio send` of 1 GiB against the C-like sendfile client
//!   (`examples/baseline_client.rs`), interleaved: the floor of benches/send.rs; and CPU per
//!   MiB, to compare with the limited sends' (accio's with accio's, the floor's with the
//!   floor's), and the unlimited send of the same 20 MiB.
//! - small: 2,000 files of 4 KiB, 4 at a time, without a pacer and under a limit that does
//!   not bind (1 GiB/s): files per second.

#[path = "../examples/baseline_client.rs"]
#[allow(dead_code)]
mod baseline;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accio::client::{self, Destination};
use accio::protocol::{Confirm, Timeouts};
use accio::rate::{Limiter, Pacer};

#[path = "common/clients.rs"]
mod clients;
#[path = "../tests/support/read_sink.rs"]
#[allow(dead_code)]
mod read_sink;
use clients::{build_baseline, cpu_of, run_client, write_file, ACCIO};
use read_sink::ReadSink;
const MIB: u64 = 1 << 20;

#[path = "common/parts.rs"]
mod parts;

fn main() {
    let Some(parts) = parts::asked("rate") else {
        return;
    };
    let want = |what: &str| parts.want(what);
    // The discard server: 1 MiB reads (less of its CPU), logging while a part asks.
    let sink = ReadSink::start(1 << 20, false);
    let dir = tempfile::Builder::new()
        .prefix("accio-bench-rate")
        .tempdir_in(Path::new(ACCIO).parent().unwrap())
        .unwrap();
    let exe = accio_exe();
    let bytes = std::fs::metadata(&exe).map_or(0, |m| m.len());
    println!("accio: {} ({bytes} bytes)", exe.display());
    if std::env::var_os("BENCH_ACCIO_EXE").is_none() {
        // Cargo builds the binary of a bench with the dev-dependencies' features (proptest
        // turns on regex-syntax's Unicode tables, assert_cmd bstr's): 0.9 MB larger than the
        // shipped one, and about 50 more page faults each time a process starts, a quarter of
        // a millisecond of the fixed cost below.
        println!(
            "(the bench build's binary, with the dev-dependencies' features; the shipped one: \
             `cargo build --release --bin accio && cp target/release/accio /tmp/accio-shipped`, \
             then BENCH_ACCIO_EXE=/tmp/accio-shipped cargo bench --bench rate)"
        );
    }
    println!(
        "(the machine may be loaded by other work: compare figures within this run, not across runs)\n"
    );
    let mut limited = None;
    if want("shared") {
        shared(&sink, dir.path(), true);
    }
    if want("shared-grants") {
        // The same with the grants alone pacing (50 ms of the limit each, twenty wakes a
        // second): how it was done before the kernel paced the sockets.
        shared(&sink, dir.path(), false);
    }
    if want("send") {
        limited = Some(send_limited(&sink, dir.path()));
    }
    if want("unlimited") {
        let unlimited = unlimited(&sink, dir.path());
        if let Some(limited) = limited {
            compare(&limited, &unlimited);
        }
    }
    if want("small") {
        small(&sink, dir.path());
    }
}

fn timeouts() -> Timeouts {
    Timeouts::default()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn upload(dest: &Destination, path: &Path, pacer: Option<&mut Pacer>) {
    upload_logged(dest, path, pacer, &mut |_| {}).await
}

/// [`upload`], calling `progress` with the bytes handed to the kernel so far.
async fn upload_logged(
    dest: &Destination,
    path: &Path,
    pacer: Option<&mut Pacer>,
    progress: &mut (dyn FnMut(u64) + Send),
) {
    let file = std::fs::File::open(path).unwrap();
    client::upload::<std::convert::Infallible>(
        dest,
        Confirm::Close,
        &file,
        None,
        &timeouts(),
        pacer,
        progress,
        &mut None,
        None,
        |_| Ok(()),
    )
    .await
    .expect("upload");
}

fn shared(sink: &ReadSink, dir: &Path, kernel: bool) {
    const RATE: u64 = 4 * MIB;
    const UPLOADS: usize = 8;
    // 80 MiB at 4 MiB/s: 20 s.
    let path = dir.join("10MiB");
    write_file(&path, 10 * MIB);
    let limit = Arc::new(Limiter::new(Some(RATE)));
    sink.start_log();
    let started = Instant::now();
    let (cpu0, _) = self_cpu();
    // The sender's side: (upload, when, bytes handed to the kernel so far).
    let handed: Arc<Mutex<Vec<(usize, Instant, u64)>>> = Arc::default();
    rt().block_on(async {
        let tasks: Vec<_> = (0..UPLOADS)
            .map(|i| {
                let (dest, path, limit) = (sink.dest(), path.clone(), limit.clone());
                let handed = handed.clone();
                tokio::spawn(async move {
                    let mut pacer = Pacer::new(vec![limit]);
                    if !kernel {
                        pacer = pacer.without_kernel_pacing();
                    }
                    let mut log = |n| handed.lock().unwrap().push((i, Instant::now(), n));
                    upload_logged(&dest, &path, Some(&mut pacer), &mut log).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let took = started.elapsed();
    let (cpu1, _) = self_cpu();
    let log = sink.take_log();
    let total: u64 = log.iter().map(|r| r.2).sum();
    println!(
        "shared: {UPLOADS} uploads of 10 MiB in flight under one 4 MiB/s limit, {}",
        if kernel {
            "the kernel pacing each socket (SO_MAX_PACING_RATE)"
        } else {
            "the grants alone pacing (no SO_MAX_PACING_RATE)"
        }
    );
    println!(
        "  whole run: {:.1} MiB in {:.2} s = {:.3} MiB/s ({:+.2} % of the limit)",
        total as f64 / MIB as f64,
        took.as_secs_f64(),
        total as f64 / MIB as f64 / took.as_secs_f64(),
        (total as f64 / took.as_secs_f64() / RATE as f64 - 1.0) * 100.0
    );
    // The same shares on the sender's side (bytes handed to the kernel), apart from when
    // the sink's threads got to read them.
    let handed = handed.lock().unwrap().clone();
    // While all 8 are in flight: from the first byte until the first upload has handed its
    // last byte to the kernel (then it leaves, and the others' shares grow).
    let t0 = log.iter().map(|r| r.1).min().unwrap();
    let mut last = vec![t0; UPLOADS * 2];
    let mut ids: Vec<usize> = log.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    ids.dedup();
    for r in &log {
        let i = ids.iter().position(|c| *c == r.0).unwrap();
        last[i] = last[i].max(r.1);
    }
    let all_in_flight = last[..ids.len()]
        .iter()
        .min()
        .unwrap()
        .duration_since(t0)
        .as_secs_f64()
        .min(
            (0..UPLOADS)
                .filter_map(|i| {
                    handed
                        .iter()
                        .filter(|r| r.0 == i)
                        .map(|r| r.1)
                        .max()
                        .map(|t| t.saturating_duration_since(t0).as_secs_f64())
                })
                .fold(f64::MAX, f64::min),
        );
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    // The same from the first second on: the first grants are still being handed out
    // then (and with the kernel pacing, spread over their slice).
    let (mut lo1, mut hi1) = (f64::MAX, 0f64);
    let (mut share_lo, mut share_hi) = (f64::MAX, 0f64);
    let mut from = 0.0;
    while from + 2.0 <= all_in_flight {
        let mut per = vec![0u64; ids.len()];
        for r in &log {
            let at = r.1.duration_since(t0).as_secs_f64();
            if (from..from + 2.0).contains(&at) {
                per[ids.iter().position(|c| *c == r.0).unwrap()] += r.2;
            }
        }
        let sum: u64 = per.iter().sum();
        let rate = sum as f64 / 2.0 / RATE as f64;
        lo = lo.min(rate);
        hi = hi.max(rate);
        if from >= 1.0 {
            lo1 = lo1.min(rate);
            hi1 = hi1.max(rate);
        }
        let fair = sum as f64 / ids.len() as f64;
        for p in per {
            share_lo = share_lo.min(p as f64 / fair);
            share_hi = share_hi.max(p as f64 / fair);
        }
        from += 0.1;
    }
    println!(
        "  every 2 s window (step 0.1 s) while all {UPLOADS} were in flight ({all_in_flight:.1} s): rate {:+.2} % to {:+.2} % of the limit",
        (lo - 1.0) * 100.0,
        (hi - 1.0) * 100.0
    );
    println!(
        "  the same, windows from 1 s on: {:+.2} % to {:+.2} %",
        (lo1 - 1.0) * 100.0,
        (hi1 - 1.0) * 100.0
    );
    println!(
        "  each upload's share of a window: {:+.1} % to {:+.1} % of an even share",
        (share_lo - 1.0) * 100.0,
        (share_hi - 1.0) * 100.0
    );

    let sent_by = |i: usize, t: f64| {
        handed
            .iter()
            .filter(|r| r.0 == i && r.1.duration_since(t0).as_secs_f64() < t)
            .map(|r| r.2)
            .max()
            .unwrap_or(0)
    };
    let (mut s_lo, mut s_hi, mut s_hi_at) = (f64::MAX, 0f64, 0f64);
    let mut from = 0.0;
    while from + 2.0 <= all_in_flight {
        let per: Vec<u64> = (0..UPLOADS)
            .map(|i| sent_by(i, from + 2.0) - sent_by(i, from))
            .collect();
        let fair = per.iter().sum::<u64>() as f64 / UPLOADS as f64;
        for p in per {
            s_lo = s_lo.min(p as f64 / fair);
            if p as f64 / fair > s_hi {
                s_hi = p as f64 / fair;
                s_hi_at = from;
            }
        }
        from += 0.1;
    }
    println!(
        "  the same, as handed to the kernel by each upload: {:+.1} % to {:+.1} % (the highest in the window from {s_hi_at:.1} s)",
        (s_lo - 1.0) * 100.0,
        (s_hi - 1.0) * 100.0
    );
    println!(
        "  CPU of this process (uploads and the sink): {:.3} ms per MiB\n",
        ms(cpu1 - cpu0) / (total as f64 / MIB as f64)
    );
}

/// The limited sends' rates, MiB per second, all of the same 20 MiB file: the first is the
/// issue's (3 runs, its wall time a target), the others show how the CPU per MiB moves with
/// the rate (what is paid per wake and per second against what is paid per byte).
const RATES: [u64; 3] = [2, 8, 32];

/// CPU ms per MiB (median of the runs): the client alone, and with the sink's.
#[derive(Clone, Copy, Debug)]
struct PerMib {
    client: f64,
    with_sink: f64,
}

impl PerMib {
    fn of(samples: &[Sample], mib: f64) -> PerMib {
        let median = |f: &dyn Fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        PerMib {
            client: median(&|s| ms(s.cpu) / mib),
            with_sink: median(&|s| ms(s.cpu + s.sink) / mib),
        }
    }
}

/// What the limited sends measured: per rate (MiB/s), accio's and the paced floor's CPU per
/// MiB; and the fixed cost of one process (ms), accio's and the floor's.
struct Limited {
    rates: Vec<(u64, PerMib, PerMib)>,
    fixed: (f64, f64),
}

/// `accio send --limit-rate` of 20 MiB at each of [`RATES`], beside the paced C-like floor.
fn send_limited(sink: &ReadSink, dir: &Path) -> Limited {
    let baseline_exe = build_baseline();
    let path = dir.join("20MiB");
    write_file(&path, 20 * MIB);
    let port = sink.port.to_string();
    let mut rates = Vec::new();
    for (i, rate) in RATES.into_iter().enumerate() {
        let limit = format!("{rate}MiB/s");
        let pace = (rate * MIB).to_string();
        let accio = || {
            run_process(
                &accio_exe(),
                &["send", "--limit-rate", &limit, "127.0.0.1", &port],
                &path,
            )
        };
        let floor = || run_process(&baseline_exe, &["--pace", &pace, "127.0.0.1", &port], &path);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..3 {
            if round % 2 == 0 {
                a.push(accio());
                b.push(floor());
            } else {
                b.push(floor());
                a.push(accio());
            }
        }
        a.sort();
        let exact = 20.0 / rate as f64;
        println!(
            "send --limit-rate {limit}, 20 MiB, 3 runs ({exact} s is exact), uptime: {}",
            load()
        );
        for s in &a {
            println!(
                "  {:.3} s ({:+.2} %), CPU {:.1} ms = {:.3} ms per MiB; with the sink's {:.3} ms per MiB",
                s.wall.as_secs_f64(),
                (s.wall.as_secs_f64() / exact - 1.0) * 100.0,
                ms(s.cpu),
                ms(s.cpu) / 20.0,
                ms(s.cpu + s.sink) / 20.0
            );
        }
        let (pa, pb) = (PerMib::of(&a, 20.0), PerMib::of(&b, 20.0));
        b.sort();
        println!(
            "  the paced floor (C-like client, SO_MAX_PACING_RATE = {limit}, one sendfile): {:.3} s, {:.3} ms per MiB; with the sink's {:.3}",
            b[1].wall.as_secs_f64(),
            pb.client,
            pb.with_sink
        );
        if i == 0 {
            println!(
                "  (medians: accio {:.3}, floor {:.3} ms per MiB)",
                pa.client, pb.client
            );
        }
        rates.push((rate, pa, pb));
    }
    // The fixed cost of a process: start, connect, a 500-byte file, close.
    let tiny = dir.join("500B");
    write_file(&tiny, 500);
    let fixed = |exe: &Path, args: &[&str]| {
        let mut v: Vec<f64> = (0..7)
            .map(|_| ms(run_process(exe, args, &tiny).cpu))
            .collect();
        v.sort_by(f64::total_cmp);
        v[3]
    };
    let fixed = (
        fixed(&accio_exe(), &["send", "127.0.0.1", &port]),
        fixed(&baseline_exe, &["127.0.0.1", &port]),
    );
    println!(
        "the fixed cost of a process (a 500-byte send, median of 7): accio {:.2} ms, the C-like client {:.2} ms (= {:.3} and {:.3} ms per MiB of 20 MiB)\n",
        fixed.0,
        fixed.1,
        fixed.0 / 20.0,
        fixed.1 / 20.0
    );
    Limited { rates, fixed }
}

/// What the unlimited sends measured: CPU per MiB of 1 GiB and of 20 MiB, accio's and the
/// floor's.
struct Unlimited {
    gib: (PerMib, PerMib),
    small: (PerMib, PerMib),
}

/// Unlimited `accio send` of 1 GiB vs the sendfile baseline, interleaved, and the same of 20
/// MiB.
fn unlimited(sink: &ReadSink, dir: &Path) -> Unlimited {
    let baseline_exe = build_baseline();
    let path = dir.join("1GiB");
    write_file(&path, 1 << 30);
    let port = sink.port.to_string();
    let accio = |path: &Path| run_process(&accio_exe(), &["send", "127.0.0.1", &port], path);
    let floor = |path: &Path| run_process(&baseline_exe, &["127.0.0.1", &port], path);
    accio(&path);
    floor(&path);
    const ROUNDS: usize = 7;
    let interleaved = |path: &Path| {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                a.push(accio(path));
                b.push(floor(path));
            } else {
                b.push(floor(path));
                a.push(accio(path));
            }
        }
        (a, b)
    };
    let (mut a, mut b) = interleaved(&path);
    let med = |v: &mut Vec<Sample>, f: fn(&Sample) -> Duration| {
        let mut x: Vec<Duration> = v.iter().map(f).collect();
        x.sort();
        x[x.len() / 2]
    };
    let (aw, bw) = (med(&mut a, |s| s.wall), med(&mut b, |s| s.wall));
    let (ac, bc) = (med(&mut a, |s| s.cpu), med(&mut b, |s| s.cpu));
    let amin = a.iter().map(|s| s.wall).min().unwrap();
    let bmin = b.iter().map(|s| s.wall).min().unwrap();
    println!(
        "unlimited send of 1 GiB, {ROUNDS} runs each, interleaved, uptime: {}",
        load()
    );
    println!(
        "  accio send:        median {:.1} ms, min {:.1} ms, CPU {:.1} ms",
        ms(aw),
        ms(amin),
        ms(ac)
    );
    println!(
        "  sendfile baseline: median {:.1} ms, min {:.1} ms, CPU {:.1} ms",
        ms(bw),
        ms(bmin),
        ms(bc)
    );
    println!(
        "  accio / baseline: median wall {:.3}, min wall {:.3}, CPU {:.3}",
        ms(aw) / ms(bw),
        ms(amin) / ms(bmin),
        ms(ac) / ms(bc)
    );
    let gib = (PerMib::of(&a, 1024.0), PerMib::of(&b, 1024.0));
    println!(
        "  CPU per MiB: accio {:.4} ms, with the sink's {:.4}; baseline {:.4} ms, with the sink's {:.4}",
        gib.0.client, gib.0.with_sink, gib.1.client, gib.1.with_sink
    );
    let path = dir.join("20MiB");
    write_file(&path, 20 * MIB);
    let (a, b) = interleaved(&path);
    let small = (PerMib::of(&a, 20.0), PerMib::of(&b, 20.0));
    println!(
        "unlimited send of 20 MiB, CPU per MiB: accio {:.4} ms, with the sink's {:.4}; baseline {:.4} ms, with the sink's {:.4}\n",
        small.0.client, small.0.with_sink, small.1.client, small.1.with_sink
    );
    Unlimited { gib, small }
}

/// The limited sends' CPU per MiB against the unlimited ones', accio's and the floor's.
fn compare(limited: &Limited, unlimited: &Unlimited) {
    // On loopback, much of an unlimited transfer's kernel work is done in the receiver's
    // context (it pushes the sender's queue as it reads); a paced one's in the sender's.
    // Both figures, then.
    let (first, a, _) = limited.rates[0];
    println!(
        "CPU per MiB, limited ({first} MiB/s) / unlimited: client {:.2}; client and sink {:.2}",
        a.client / unlimited.gib.0.client,
        a.with_sink / unlimited.gib.0.with_sink
    );
    println!("CPU per MiB, limited (20 MiB) / unlimited (1 GiB), client alone (client and sink):");
    println!("  rate       accio            paced floor / floor   accio above the paced floor");
    // Each rate's accio and paced floor against a base (accio's, the floor's): alone, and
    // with the sink's.
    let table = |base: &(PerMib, PerMib), above_floor: bool| {
        for (rate, a, b) in &limited.rates {
            let above = if above_floor {
                format!("     {:+.3} ms per MiB", a.client - b.client)
            } else {
                String::new()
            };
            println!(
                "  {:>2} MiB/s   {:>5.2}x ({:>5.2}x)   {:>5.2}x ({:>5.2}x){above}",
                rate,
                a.client / base.0.client,
                a.with_sink / base.0.with_sink,
                b.client / base.1.client,
                b.with_sink / base.1.with_sink,
            );
        }
    };
    table(&unlimited.gib, true);
    println!(
        "the same against the unlimited send of the same 20 MiB (the same fixed cost in both):"
    );
    table(&unlimited.small, false);
    let (fa, fb) = (limited.fixed.0 / 20.0, limited.fixed.1 / 20.0);
    println!("the same less the fixed cost of a process (per MiB of 20 MiB: accio {fa:.3}, floor {fb:.3} ms), against 1 GiB:");
    for (rate, a, b) in &limited.rates {
        println!(
            "  {:>2} MiB/s   {:>5.2}x             {:>5.2}x",
            rate,
            (a.client - fa) / unlimited.gib.0.client,
            (b.client - fb) / unlimited.gib.1.client,
        );
    }
    println!("uptime: {}\n", load());
}

/// The accio binary the processes run: this build's, or `BENCH_ACCIO_EXE` (another build's,
/// to compare two versions in one run of the same benchmark; the shared and small parts
/// always use this build's library).
fn accio_exe() -> std::path::PathBuf {
    std::env::var_os("BENCH_ACCIO_EXE").map_or_else(|| ACCIO.into(), Into::into)
}

/// The load averages (`/proc/loadavg`'s first three fields).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn small(sink: &ReadSink, dir: &Path) {
    const FILES: usize = 2000;
    const WORKERS: usize = 4;
    let path = dir.join("4KiB");
    write_file(&path, 4096);
    let runtime = rt();
    let run = |limit: Option<Arc<Limiter>>| {
        let started = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (dest, path, limit) = (sink.dest(), path.clone(), limit.clone());
                    tokio::spawn(async move {
                        for _ in 0..FILES / WORKERS {
                            let mut pacer = limit.clone().map(|l| Pacer::new(vec![l]));
                            upload(&dest, &path, pacer.as_mut()).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        FILES as f64 / started.elapsed().as_secs_f64()
    };
    let limit = Arc::new(Limiter::new(Some(1 << 30)));
    run(None);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(run(None));
        with.push(run(Some(limit.clone())));
    }
    without.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    let (w0, w1) = (without[2], with[2]);
    println!(
        "small: {FILES} files of 4 KiB, {WORKERS} at a time, 5 runs each, interleaved (median):"
    );
    println!("  no limit:                    {w0:.0} files/s");
    println!(
        "  limit 1 GiB/s (not binding): {w1:.0} files/s ({:+.1} %)\n",
        (w1 / w0 - 1.0) * 100.0
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    /// CPU of this process (the sink's threads; the bench itself only waits) meanwhile.
    sink: Duration,
}

/// CPU (user + system) of this whole process so far, and wall time now.
fn self_cpu() -> (Duration, Instant) {
    // SAFETY: zeroed rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (cpu_of(&ru), Instant::now())
}

/// Runs a client process to completion, with its wall and CPU time, and this process's CPU
/// (the sink's) meanwhile. Panics on failure: a benchmark of a failing transfer means nothing.
fn run_process(exe: &Path, args: &[&str], file: &Path) -> Sample {
    let (sink0, _) = self_cpu();
    let (wall, cpu) = run_client(exe, args, file);
    let sink = self_cpu().0 - sink0;
    Sample { wall, cpu, sink }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
