//! `accio serve` as an exposed receiver, in one run: what durable confirmation costs, and
//! whether a flood of idle connections from one address locks out another.
//!
//! Run with `cargo bench --bench serve` (or `-- small`, `-- big`, `-- flood`). Prints figures
//! and ratios; asserts nothing about time. With `ACCIO_BEFORE=/path/to/accio` (e.g. a build
//! of main before the change) that binary is measured in the same rounds as "before".
//!
//! - small: 500 B files through a raw client (connect, greeting, data, half-close, wait for
//!   the close), files/s, one client at a time, 8 and 40 at once; synced (the default) against
//!   `--no-sync` (and "before").
//! - big: one 1 GiB file with `accio send`, MiB/s; `sync(2)` before each run so that no run
//!   pays for the previous one's dirty pages.
//! - flood: 3,000 idle connections from 127.0.0.2, then `accio send` from 127.0.0.1 (the
//!   kernel's source address for a loopback destination): its time, and serve's descriptor
//!   count against `max-connections × 2 + 32`. With the defaults; with every flood
//!   connection held; and with every one of them holding a file (one byte sent).
//!
//! The receiving directories are on the disk under `target/`, not a tmpfs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCIO: &str = env!("CARGO_BIN_EXE_accio");
const COMMAND: &[u8] = b"accio\r\n";

#[path = "common/parts.rs"]
mod parts;

fn main() {
    let Some(parts) = parts::asked("serve") else {
        return;
    };
    let want = |what: &str| parts.want(what);
    raise_own_nofile();
    let before = std::env::var_os("ACCIO_BEFORE").map(PathBuf::from);
    let work = tempfile::Builder::new()
        .prefix("accio-bench-serve")
        .tempdir_in(Path::new(ACCIO).parent().unwrap())
        .unwrap();
    println!("accio:  {ACCIO}");
    if let Some(b) = &before {
        println!("before: {}", b.display());
    }
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();
    let mut configs: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        ("sync (default)", PathBuf::from(ACCIO), vec![]),
        ("--no-sync", PathBuf::from(ACCIO), vec!["--no-sync"]),
    ];
    if let Some(b) = &before {
        configs.push(("before", b.clone(), vec![]));
    }
    if want("small") {
        bench_small(work.path(), &configs);
    }
    if want("big") {
        bench_big(work.path(), &configs);
    }
    if want("flood") {
        bench_flood(work.path());
    }
}

/// A running `accio serve` (killed on drop), its directory and its log.
struct Serve {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(bin: &Path, args: &[&str], parent: &Path, idle: &str) -> Serve {
        let dir = tempfile::Builder::new()
            .prefix("rx")
            .tempdir_in(parent)
            .unwrap()
            .keep();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin)
            .args(["serve", &port.to_string()])
            .arg(&dir)
            .args(args)
            .env("ACCIO_SERVE_IDLE_TIMEOUT", idle)
            .env("RUST_LOG", "warn,accio=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sink, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(30);
        while !log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listening on"))
        {
            assert!(
                Instant::now() < end,
                "serve did not start: {:?}",
                log.lock().unwrap()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "serve exited: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Serve {
            child,
            port,
            dir,
            log,
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The bound serve announced ("at most N connections").
    fn max_connections(&self) -> Option<usize> {
        let log = self.log.lock().unwrap();
        let line = log.iter().find(|l| l.contains("at most "))?;
        line.split("at most ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Empties the directory (between runs of the big file).
    fn clear(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let _ = std::fs::remove_file(e.unwrap().path());
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One file through a raw client; panics unless the server confirms with a clean close.
fn deliver(port: u16, content: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut cmd = [0u8; 7];
    s.read_exact(&mut cmd).unwrap();
    assert_eq!(&cmd, COMMAND);
    s.write_all(content).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("a clean close");
}

fn bench_small(work: &Path, configs: &[(&str, PathBuf, Vec<&str>)]) {
    let servers: Vec<Serve> = configs
        .iter()
        .map(|(_, bin, args)| Serve::start(bin, args, work, "10s"))
        .collect();
    let content = vec![b'x'; 500];
    const FILES: usize = 200;
    const ROUNDS: usize = 5;
    for (label, parallel) in [
        ("one client at a time", 1usize),
        ("8 clients at once", 8),
        ("40 clients at once", 40),
    ] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        for round in 0..ROUNDS {
            // Rotate the order so that no configuration always runs after another.
            for k in 0..servers.len() {
                let i = (round + k) % servers.len();
                let port = servers[i].port;
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..parallel {
                        s.spawn(|| {
                            for _ in 0..FILES / parallel {
                                deliver(port, &content);
                            }
                        });
                    }
                });
                rates[i].push(FILES as f64 / start.elapsed().as_secs_f64());
            }
        }
        println!("500 B files, {label}, {FILES} files × {ROUNDS} rounds, interleaved:");
        let medians: Vec<f64> = rates.iter().map(|r| median_f(r)).collect();
        for ((name, _, _), (m, r)) in configs.iter().zip(medians.iter().zip(&rates)) {
            let (lo, hi) = min_max(r);
            println!("  {name:<16} median {m:>8.0} files/s  (min {lo:.0}, max {hi:.0})");
        }
        println!(
            "  sync / --no-sync: {:.2} (target ≥ 0.5)",
            medians[0] / medians[1]
        );
        if medians.len() > 2 {
            println!("  sync / before:    {:.2}", medians[0] / medians[2]);
        }
        println!();
    }
}

fn bench_big(work: &Path, configs: &[(&str, PathBuf, Vec<&str>)]) {
    let big = work.join("1GiB");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..1024 {
            f.write_all(&block).unwrap();
        }
    }
    let servers: Vec<Serve> = configs
        .iter()
        .map(|(_, bin, args)| Serve::start(bin, args, work, "10s"))
        .collect();
    const ROUNDS: usize = 3;
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); servers.len()];
    for round in 0..ROUNDS {
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            // Previous runs' dirty pages are written now, not during this run.
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            let start = Instant::now();
            let status = Command::new(ACCIO)
                .args(["send", "127.0.0.1", &servers[i].port.to_string()])
                .arg(&big)
                .status()
                .unwrap();
            walls[i].push(start.elapsed());
            assert!(status.success(), "accio send failed");
            servers[i].clear();
        }
    }
    println!("1 GiB with accio send, {ROUNDS} rounds, interleaved (sync(2) before each):");
    let mibs: Vec<f64> = walls
        .iter()
        .map(|w| 1024.0 / median_d(w).as_secs_f64())
        .collect();
    for ((name, _, _), (m, w)) in configs.iter().zip(mibs.iter().zip(&walls)) {
        let (lo, hi) = min_max(&w.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>());
        println!("  {name:<16} median {m:>7.0} MiB/s  (wall {lo:.2} s .. {hi:.2} s)");
    }
    println!("  sync / --no-sync: {:.2}", mibs[0] / mibs[1]);
    if mibs.len() > 2 {
        println!("  sync / before:    {:.2}", mibs[0] / mibs[2]);
    }
    println!();
    let _ = std::fs::remove_file(&big);
}

fn bench_flood(work: &Path) {
    const IDLE: usize = 3000;
    let scenarios: [(&str, &[&str], bool); 3] = [
        ("defaults", &[], false),
        (
            "all held (--max-connections 4000 --max-per-address 3500)",
            &["--max-connections", "4000", "--max-per-address", "3500"],
            false,
        ),
        (
            "all held, each with a file (1 byte sent)",
            &["--max-connections", "4000", "--max-per-address", "3500"],
            true,
        ),
    ];
    let src = tempfile::tempdir_in(work).unwrap();
    let file = src.path().join("legit");
    std::fs::write(&file, vec![b'y'; 100_000]).unwrap();
    println!("{IDLE} idle connections from 127.0.0.2, then accio send (100 kB) from 127.0.0.1:");
    for (name, args, with_byte) in scenarios {
        // Long idle timeout: the flood must still be there while the sends run (the 10 s
        // rule would otherwise free them, which is a defence of its own).
        let mut serve = Serve::start(Path::new(ACCIO), args, work, "300s");
        let base = serve.fds();
        let start = Instant::now();
        let mut flood = Vec::with_capacity(IDLE);
        let mut greeted = 0;
        for _ in 0..IDLE {
            let mut s = connect_from("127.0.0.2", serve.port);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut cmd = [0u8; 7];
            if s.read_exact(&mut cmd).is_ok() {
                greeted += 1;
                if with_byte {
                    s.write_all(b"z").unwrap();
                }
            }
            flood.push(s);
        }
        let flood_took = start.elapsed();
        // The bytes sent must have reached their files before counting descriptors.
        let settle = Instant::now() + Duration::from_secs(30);
        let expect = base + greeted * if with_byte { 2 } else { 1 };
        while serve.fds() < expect && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut sends = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let status = Command::new(ACCIO)
                .args(["send", "127.0.0.1", &serve.port.to_string()])
                .arg(&file)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            sends.push(t.elapsed());
            assert!(status.success(), "the legitimate send failed");
        }
        let fds = serve.fds();
        let rss = rss_kib(serve.child.id());
        let max = serve.max_connections().unwrap_or(0);
        println!("  {name}:");
        println!(
            "    flood: {greeted} of {IDLE} held (the rest reset at once), opened in {:.2} s",
            flood_took.as_secs_f64()
        );
        println!(
            "    accio send × 5: median {:.0} ms, max {:.0} ms (target < 2000 ms)",
            median_d(&sends).as_secs_f64() * 1e3,
            sends.iter().max().unwrap().as_secs_f64() * 1e3
        );
        println!(
            "    serve holds {fds} descriptors (baseline {base}); bound max-connections × 2 + 32 = {}; still running: {}",
            max * 2 + 32,
            serve.alive()
        );
        println!(
            "    serve's resident memory: {:.1} MiB",
            rss as f64 / 1024.0
        );
        drop(flood);
    }
    println!();
}

/// VmRSS of a process, in KiB (0 if unknown).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn connect_from(source: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

fn raise_own_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs; the soft limit stays at most the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}
