//! `accio send` against a plain blocking std client, in one run, against the same sink.
//!
//! Run with `cargo bench --bench send`. Prints medians and ratios; asserts nothing about time.
//!
//! - 1 GiB: `accio send` (release binary, whole process) vs the baseline client as a
//!   process (`examples/baseline_client.rs`) and the same baseline code in-process.
//! - 500 B: whole process vs whole process (startup dominates).
//!
//! The sink sends `accio\r\n`, reads to EOF into a reused buffer and closes: it does the same
//! work for every client, so differences are the clients'.

#[path = "../examples/baseline_client.rs"]
#[allow(dead_code)]
mod baseline;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ACCIO: &str = env!("CARGO_BIN_EXE_accio");

fn main() {
    // `cargo bench` passes --bench; a test-mode run (`cargo test --benches`) does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/send.rs: run with `cargo bench --bench send`");
        return;
    }
    // Optional filter: `cargo bench --bench send -- small` (or `big`).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |what: &str| only.is_empty() || only.iter().any(|o| o == what);
    let baseline_exe = build_baseline();
    let port = start_sink();
    let dir = tempfile::Builder::new()
        .prefix("accio-bench")
        .tempdir_in(Path::new(ACCIO).parent().unwrap())
        .unwrap();
    let big = dir.path().join("1GiB");
    write_file(&big, 1 << 30);
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
    // Warm-up: page cache, binaries, sockets.
    for _ in 0..2 {
        run_process(Path::new(ACCIO), &["send", "127.0.0.1", port], big);
        run_process(baseline_exe, &["127.0.0.1", port], big);
    }

    const BIG_ROUNDS: usize = 9;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..BIG_ROUNDS {
        // Rotate the order so no client always runs right after another.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => a.push(run_process(
                    Path::new(ACCIO),
                    &["send", "127.0.0.1", port],
                    big,
                )),
                1 => b.push(run_process(baseline_exe, &["127.0.0.1", port], big)),
                _ => {
                    let start = Instant::now();
                    baseline::send("127.0.0.1", port, big.to_str().unwrap())
                        .expect("in-process baseline");
                    c.push(start.elapsed());
                }
            }
        }
    }
    let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
    let gib = |d: Duration| (1u64 << 30) as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
    println!("1 GiB, median of {BIG_ROUNDS}:");
    println!(
        "  accio send (process)          {:>9.1} ms  {:>5.2} GiB/s",
        ms(ma),
        gib(ma)
    );
    println!(
        "  baseline std client (process) {:>9.1} ms  {:>5.2} GiB/s",
        ms(mb),
        gib(mb)
    );
    println!(
        "  baseline std (in-process)     {:>9.1} ms  {:>5.2} GiB/s",
        ms(mc),
        gib(mc)
    );
    println!(
        "  ratio accio / baseline process: {:.3}   (target <= 1.05)",
        ratio(ma, mb)
    );
    println!();
}

fn bench_small(baseline_exe: &Path, port: &str, small: &Path) {
    const SMALL_ROUNDS: usize = 101;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..SMALL_ROUNDS {
        let accio = || run_process(Path::new(ACCIO), &["send", "127.0.0.1", port], small);
        let base = || run_process(baseline_exe, &["127.0.0.1", port], small);
        if round % 2 == 0 {
            a.push(accio());
            b.push(base());
        } else {
            b.push(base());
            a.push(accio());
        }
    }
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!("500 B, whole process, median of {SMALL_ROUNDS}:");
    println!("  accio send                    {:>9.3} ms", ms(ma));
    println!("  baseline std client           {:>9.3} ms", ms(mb));
    println!(
        "  ratio accio / baseline: {:.3}   (target <= 2)",
        ratio(ma, mb)
    );
}

/// Builds `examples/baseline_client.rs` with the release profile, beside the accio binary.
fn build_baseline() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "baseline_client",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .status()
        .expect("running cargo to build the baseline client");
    assert!(status.success(), "building the baseline client failed");
    Path::new(ACCIO)
        .parent()
        .unwrap()
        .join("examples/baseline_client")
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

fn write_file(path: &Path, len: usize) {
    let mut rng = fastrand::Rng::with_seed(len as u64);
    let mut chunk = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill(&mut chunk[..n]);
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// Runs a client process to completion; returns its wall time. Panics on failure: a
/// benchmark of a failing transfer means nothing.
fn run_process(exe: &Path, args: &[&str], file: &Path) -> Duration {
    let mut cmd = Command::new(exe);
    cmd.args(args).arg(file).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ACCIO_") {
            cmd.env_remove(key);
        }
    }
    let start = Instant::now();
    let out = cmd.output().expect("spawning the client");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} failed: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    took
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
