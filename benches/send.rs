//! `accio send` against a plain blocking std client, in one run, against the same sink.
//!
//! Run with `cargo bench --bench send`. Prints medians and ratios; asserts nothing about time.
//!
//! - 1 GiB: `accio send` (release binary, whole process) vs the baseline client as a
//!   process (`examples/baseline_client.rs`: blocking sendfile, as a C client would), the same
//!   code in-process, and the baseline with `std::io::copy` (which current std does not turn
//!   into sendfile for file → socket: it is a read/write loop).
//! - 500 B: whole process vs whole process (startup dominates).
//!
//! The sink sends `accio\r\n`, reads to EOF into a reused buffer and closes: it does the same
//! work for every client, so differences are the clients'.

#[path = "../examples/baseline_client.rs"]
#[allow(dead_code)]
mod baseline;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/clients.rs"]
mod clients;
use clients::{build_baseline, cpu_of, run_client, write_file, ACCIO};

#[path = "common/parts.rs"]
mod parts;

fn main() {
    // Optional filter: `cargo bench --bench send -- small` (or `big`).
    let Some(parts) = parts::asked("send") else {
        return;
    };
    let want = |what: &str| parts.want(what);
    let baseline_exe = build_baseline();
    let port = start_sink();
    let dir = tempfile::Builder::new()
        .prefix("accio-bench")
        .tempdir_in(Path::new(ACCIO).parent().unwrap())
        .unwrap();
    let big = dir.path().join("1GiB");
    if want("big") {
        write_file(&big, 1 << 30);
    }
    let small = dir.path().join("500B");
    write_file(&small, 500);
    let port = port.to_string();

    println!("accio:    {ACCIO}");
    println!("baseline: {}", baseline_exe.display());
    println!();

    if want("big") {
        bench_big(&baseline_exe, &port, &big);
    }
    if want("small") {
        bench_small(&baseline_exe, &port, &small);
    }
}

fn bench_big(baseline_exe: &Path, port: &str, big: &Path) {
    let accio = || run_process(Path::new(ACCIO), &["send", "127.0.0.1", port], big);
    let sendfile = || run_process(baseline_exe, &["127.0.0.1", port], big);
    let std_copy = || run_process(baseline_exe, &["--copy", "127.0.0.1", port], big);
    let in_process = || {
        run_in_process(|| {
            baseline::send(
                "127.0.0.1",
                port,
                big.to_str().unwrap(),
                baseline::Body::Sendfile,
            )
            .expect("in-process baseline")
        })
    };
    // Warm-up: page cache, binaries, sockets.
    for _ in 0..2 {
        accio();
        sendfile();
    }
    const ROUNDS: usize = 21;
    let clients: [(&str, &dyn Fn() -> Sample); 4] = [
        ("accio send (process)", &accio),
        ("baseline sendfile (process)", &sendfile),
        ("baseline sendfile (in-process)", &in_process),
        ("baseline std::io::copy (process)", &std_copy),
    ];
    let times = rounds(&clients, ROUNDS);
    println!("1 GiB, {ROUNDS} runs each, interleaved:");
    report(&clients, &times, |wall| {
        format!("{:>5.2} GiB/s", 1.0 / wall.as_secs_f64())
    });
}

fn bench_small(baseline_exe: &Path, port: &str, small: &Path) {
    let accio = || run_process(Path::new(ACCIO), &["send", "127.0.0.1", port], small);
    let sendfile = || run_process(baseline_exe, &["127.0.0.1", port], small);
    for _ in 0..5 {
        accio();
        sendfile();
    }
    const ROUNDS: usize = 201;
    let clients: [(&str, &dyn Fn() -> Sample); 2] = [
        ("accio send (process)", &accio),
        ("baseline sendfile (process)", &sendfile),
    ];
    let times = rounds(&clients, ROUNDS);
    println!("500 B, whole process, {ROUNDS} runs each, interleaved:");
    report(&clients, &times, |_| String::new());
}

/// Runs every client `n` times, rotating the order each round so that no client always runs
/// right after another.
fn rounds(clients: &[(&str, &dyn Fn() -> Sample)], n: usize) -> Vec<Vec<Sample>> {
    let mut times = vec![Vec::new(); clients.len()];
    for round in 0..n {
        for k in 0..clients.len() {
            let i = (round + k) % clients.len();
            times[i].push((clients[i].1)());
        }
    }
    times
}

/// Prints a table: median wall, min wall, median CPU; then accio's ratios to the first
/// baseline (the second client).
fn report(
    clients: &[(&str, &dyn Fn() -> Sample)],
    times: &[Vec<Sample>],
    extra: impl Fn(Duration) -> String,
) {
    println!(
        "  {:<34} {:>12} {:>12} {:>12}",
        "client", "median wall", "min wall", "median CPU"
    );
    let all: Vec<_> = times.iter().map(|t| stats(t)).collect();
    for ((name, _), (wall, min, cpu)) in clients.iter().zip(&all) {
        println!(
            "  {name:<34} {:>9.3} ms {:>9.3} ms {:>9.3} ms  {}",
            ms(*wall),
            ms(*min),
            ms(*cpu),
            extra(*wall)
        );
    }
    let (a, b) = (all[0], all[1]);
    println!(
        "  accio / baseline sendfile process: median wall {:.3}, min wall {:.3}, CPU {:.3}",
        ratio(a.0, b.0),
        ratio(a.1, b.1),
        ratio(a.2, b.2)
    );
    println!();
}

/// The discard server: one thread per connection.
fn start_sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                if stream.write_all(b"accio\r\n").is_err() {
                    return;
                }
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Wall-clock and CPU (user + system) time of one client run. CPU time is what the client
/// itself costs, and is far less disturbed by other load on the machine than wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// Runs a client process to completion. Panics on failure: a benchmark of a failing transfer
/// means nothing.
fn run_process(exe: &Path, args: &[&str], file: &Path) -> Sample {
    let (wall, cpu) = run_client(exe, args, file);
    Sample { wall, cpu }
}

/// Runs `f` in this process and measures it (CPU of this thread only).
fn run_in_process(f: impl FnOnce()) -> Sample {
    let thread_cpu = || {
        // SAFETY: zeroed rusage is a valid out-parameter for getrusage.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer; RUSAGE_THREAD is supported on Linux.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        cpu_of(&ru)
    };
    let (start, cpu0) = (Instant::now(), thread_cpu());
    f();
    Sample {
        wall: start.elapsed(),
        cpu: thread_cpu() - cpu0,
    }
}

/// Median wall time, minimum wall time, median CPU time.
fn stats(v: &[Sample]) -> (Duration, Duration, Duration) {
    let mut wall: Vec<Duration> = v.iter().map(|s| s.wall).collect();
    let mut cpu: Vec<Duration> = v.iter().map(|s| s.cpu).collect();
    let min = *wall.iter().min().unwrap();
    (median(&mut wall), min, median(&mut cpu))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
