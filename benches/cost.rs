//! The cost of a file: `accio watch` draining a backlog, against a floor that makes only the
//! system calls any uploader must make, in the same run, on the same sink.
//!
//! The floor (this binary, re-executed as a child) lists the spool once, then on T threads,
//! per file: `lstat`, `open(O_NOFOLLOW|O_NONBLOCK)`, `fstat`, `socket` + `connect`, read the
//! 7-byte greeting, `sendfile`, half-close, read until the server's close, `close` ×2,
//! `renameat2(RENAME_NOREPLACE)` into done. No claim, no lease probe, no identity check, no
//! directory sync: what accio adds on top of it buys its guarantees, and this bench says
//! what that costs. T is 4, 16 and 64; the best is the floor.
//!
//! Figures: files/s from process start to the last file in `done_dir` (the spool job as an
//! operator sees it), the time ratio against the best floor, rounds interleaved; the same
//! for a burst (the service started on an empty spool and ready, then every file renamed
//! into it at once: from the first rename to the last file in done, against the same
//! floor); each round's ratios and their median, with the load average; then system
//! calls per file (`perf stat -e raw_syscalls:sys_enter`, whole process, all threads) for
//! both, and by kind (`strace -f -c`) when `strace` is there.
//!
//! Run: `cargo bench --bench cost`. Knobs: `COST_BENCH_FILES` (10000 files of 1 KiB),
//! `COST_BENCH_ROUNDS` (3), `COST_BENCH_THREADS` (4,16,64), `COST_BENCH_BURST=0` skips the
//! burst, `COST_BENCH_BIG` (a second, larger backlog for the system calls per file only, e.g.
//! 1000000; 0 = none, the default), `COST_BENCH_KINDS=0` skips the strace table,
//! `COST_BENCH_AGE_MS` waits that long before each backlog run of accio (not timed: a
//! backlog whose files are that old, as a restart finds them; by default they were renamed
//! back into the spool just before), `COST_BENCH_PERF_KINDS=1` counts each kind with perf too (`syscalls:sys_enter_*`
//! tracepoints: cheap enough for the larger backlog, where strace is too slow),
//! `COST_BENCH_HOST` the destination's name in accio's configuration (default `127.0.0.1`;
//! `localhost` measures a name to resolve), `COST_BENCH_SERVER` more lines for its
//! `[server]` table (e.g. `concurrency = 64`),
//! `COST_BENCH_DIR` where the spool lives (default: the system's temporary directory),
//! `COST_BENCH_ACCIO` another `accio` binary to measure (default: target/release/accio).

#[path = "../tests/faults/payload.rs"]
mod payload;
#[path = "../tests/faults/sink.rs"]
mod sink;

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sink::Sink;

const FILE_SIZE: u64 = 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bin() -> PathBuf {
    if let Some(b) = std::env::var_os("COST_BENCH_ACCIO") {
        return PathBuf::from(b);
    }
    let me = std::env::current_exe().expect("current exe");
    // target/release/deps/cost-HASH -> target/release/accio
    let dir = me.parent().and_then(Path::parent).expect("target dir");
    let accio = dir.join("accio");
    assert!(
        accio.exists(),
        "{} missing: build it first (cargo build --release)",
        accio.display()
    );
    accio
}

// ---------------------------------------------------------------------------------------
// The floor

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in bench paths")
}

/// One file, the calls any uploader must make. Panics on any failure: the sink is healthy.
fn floor_one(spool: &Path, done: &Path, name: &OsString, server: SocketAddr) {
    let path = spool.join(name);
    let meta = fs::symlink_metadata(&path).expect("lstat");
    assert!(meta.file_type().is_file());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .expect("open");
    let len = file.metadata().expect("fstat").len();
    let mut sock = TcpStream::connect(server).expect("connect");
    let mut greeting = [0u8; 7];
    sock.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"accio\r\n");
    let mut off: libc::off_t = 0;
    while (off as u64) < len {
        // SAFETY: two valid descriptors and a valid offset pointer.
        let n = unsafe {
            libc::sendfile(
                sock.as_raw_fd(),
                file.as_raw_fd(),
                &mut off,
                (len - off as u64) as usize,
            )
        };
        assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
    }
    sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = [0u8; 64];
    while sock.read(&mut rest).expect("wait for the close") > 0 {}
    drop(sock);
    drop(file);
    let (from, to) = (cstr(&path), cstr(&done.join(name)));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, 0, "rename: {}", std::io::Error::last_os_error());
}

/// The floor as a process of its own (so that it can be counted like the service):
/// `COST_FLOOR=spool,done,port,threads`.
fn floor_child(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let (spool, done) = (PathBuf::from(parts[0]), PathBuf::from(parts[1]));
    let server: SocketAddr = format!("127.0.0.1:{}", parts[2]).parse().unwrap();
    let threads: usize = parts[3].parse().unwrap();
    let names: Vec<OsString> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                floor_one(&spool, &done, name, server);
            });
        }
    });
}

// ---------------------------------------------------------------------------------------
// The backlog and the contenders

struct Bench {
    _tmp: tempfile::TempDir,
    spool: PathBuf,
    done: PathBuf,
    failed: PathBuf,
    /// Where the burst's files wait to be renamed into the spool (same filesystem).
    stage: PathBuf,
    config: PathBuf,
    log: PathBuf,
    files: u64,
    sink: Sink,
    /// The last run's [`Bench::milestones`].
    marks: std::cell::RefCell<(Option<f64>, Option<f64>)>,
}

impl Bench {
    fn new(files: u64) -> Bench {
        let base = std::env::var_os("COST_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let tmp = tempfile::Builder::new()
            .prefix("accio-cost-")
            .tempdir_in(base)
            .unwrap();
        let d = |n: &str| {
            let p = tmp.path().join(n);
            fs::create_dir_all(&p).unwrap();
            p
        };
        let (spool, done, failed, stage) = (d("spool"), d("done"), d("failed"), d("stage"));
        let sink = Sink::start();
        let config = tmp.path().join("accio.toml");
        // The default configuration, but for where things are.
        fs::write(
            &config,
            format!(
                "control_socket = {:?}\n[server]\nhost = {:?}\nport = {}\n{}\n\
                 [[watch]]\ndir = {:?}\ndone_dir = {:?}\nfailed_dir = {:?}\n",
                tmp.path().join("control.sock"),
                std::env::var("COST_BENCH_HOST").unwrap_or_else(|_| "127.0.0.1".to_string()),
                sink.port(),
                std::env::var("COST_BENCH_SERVER").unwrap_or_default(),
                spool,
                done,
                failed
            ),
        )
        .unwrap();
        let t = Instant::now();
        for id in 0..files {
            fs::write(
                spool.join(format!("f{id:08}.dat")),
                payload::content(id, FILE_SIZE),
            )
            .unwrap();
        }
        println!(
            "backlog of {files} × {FILE_SIZE} B made in {:.1} s under {}",
            t.elapsed().as_secs_f64(),
            tmp.path().display()
        );
        Bench {
            log: tmp.path().join("service.log"),
            _tmp: tmp,
            spool,
            done,
            failed,
            stage,
            config,
            files,
            sink,
            marks: Default::default(),
        }
    }

    /// Puts every delivered file back into the spool, for the next contender.
    fn reset(&self) {
        for e in fs::read_dir(&self.done).unwrap() {
            let name = e.unwrap().file_name();
            fs::rename(self.done.join(&name), self.spool.join(&name)).unwrap();
        }
        let left = fs::read_dir(&self.failed).unwrap().count();
        assert_eq!(left, 0, "files in failed_dir: the sink misbehaved");
    }

    fn done_count(&self) -> u64 {
        fs::read_dir(&self.done)
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    }

    /// Starts `argv` (optionally under a counter), waits until every file is in done, and
    /// returns the seconds from the start, with the child to stop.
    fn run(&self, argv: &[OsString], env: &[(&str, String)]) -> (f64, Child) {
        let start = Instant::now();
        let mut child = self.spawn(argv, env);
        self.wait_done(argv, start, &mut child);
        (start.elapsed().as_secs_f64(), child)
    }

    /// When the first file, and half of them, reached done_dir (seconds from `start`), as
    /// far as a poll every 5 ms tells: where a run's time goes (start and listing, settle,
    /// the drain).
    fn milestones(&self) -> String {
        let m = self.marks.borrow();
        format!(
            "first file in done at {:.3} s, half at {:.3} s",
            m.0.unwrap_or(f64::NAN),
            m.1.unwrap_or(f64::NAN)
        )
    }

    /// Starts `argv`, its output into the log.
    fn spawn(&self, argv: &[OsString], env: &[(&str, String)]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("start a contender")
    }

    /// Waits until every file is in done (`start`: when the job began).
    fn wait_done(&self, argv: &[OsString], start: Instant, child: &mut Child) {
        let deadline = start + Duration::from_secs(600 + self.files / 500);
        *self.marks.borrow_mut() = (None, None);
        loop {
            let done = self.done_count();
            {
                let mut m = self.marks.borrow_mut();
                let t = start.elapsed().as_secs_f64();
                if done > 0 && m.0.is_none() {
                    m.0 = Some(t);
                }
                if done >= self.files / 2 && m.1.is_none() {
                    m.1 = Some(t);
                }
            }
            if done >= self.files {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                if self.done_count() >= self.files {
                    break;
                }
                panic!(
                    "{:?} exited ({status}) with {} of {} done",
                    argv,
                    self.done_count(),
                    self.files
                );
            }
            assert!(Instant::now() < deadline, "{argv:?} did not finish in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn floor_argv(&self, threads: usize, wrap: &[&str]) -> (Vec<OsString>, Vec<(&str, String)>) {
        let mut argv: Vec<OsString> = wrap.iter().map(OsString::from).collect();
        argv.push(std::env::current_exe().unwrap().into());
        let env = vec![(
            "COST_FLOOR",
            format!(
                "{},{},{},{threads}",
                self.spool.display(),
                self.done.display(),
                self.sink.port()
            ),
        )];
        (argv, env)
    }

    fn accio_argv(&self, wrap: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = wrap.iter().map(OsString::from).collect();
        argv.push(bin().into());
        argv.push("watch".into());
        argv.push("--config".into());
        argv.push(self.config.clone().into());
        argv
    }

    /// The floor with `threads` threads: seconds.
    fn floor(&self, threads: usize, wrap: &[&str]) -> f64 {
        let (argv, env) = self.floor_argv(threads, wrap);
        let (secs, mut child) = self.run(&argv, &env);
        let status = child.wait().unwrap();
        assert!(status.success(), "the floor failed: {status}");
        self.reset();
        secs
    }

    /// `accio watch`: seconds until the last file is in done; then SIGTERM.
    fn accio(&self, wrap: &[&str]) -> f64 {
        // A backlog as a restart finds it: unchanged for a while (the reset before renamed
        // every file, which changed its ctime). Not timed.
        let age = env_num("COST_BENCH_AGE_MS", 0);
        if age > 0 {
            std::thread::sleep(Duration::from_millis(age));
        }
        let argv = self.accio_argv(wrap);
        let (secs, child) = self.run(&argv, &[]);
        stop(child, !wrap.is_empty());
        self.reset();
        secs
    }

    /// The burst: `accio watch` started on an empty spool and ready (`READY=1`), then every
    /// file renamed into the spool at once, as producers do: seconds from the first rename
    /// to the last file in done; then SIGTERM.
    fn accio_burst(&self) -> f64 {
        let names: Vec<OsString> = fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        for n in &names {
            fs::rename(self.spool.join(n), self.stage.join(n)).unwrap();
        }
        let notify = self._tmp.path().join("notify.sock");
        let _ = fs::remove_file(&notify);
        let ready = UnixDatagram::bind(&notify).unwrap();
        ready
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let argv = self.accio_argv(&[]);
        let mut child = self.spawn(&argv, &[("NOTIFY_SOCKET", notify.display().to_string())]);
        let mut buf = [0u8; 4096];
        loop {
            let n = ready.recv(&mut buf).expect("READY=1 within 60 s");
            if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
                break;
            }
        }
        let start = Instant::now();
        for n in &names {
            fs::rename(self.stage.join(n), self.spool.join(n)).unwrap();
        }
        self.wait_done(&argv, start, &mut child);
        let secs = start.elapsed().as_secs_f64();
        stop(child, false);
        self.reset();
        secs
    }
}

/// Stops a contender: SIGTERM to accio (under a wrapper: to the wrapper's child, so that the
/// wrapper writes its counts), then waits.
fn stop(mut child: Child, wrapped: bool) {
    let target = if wrapped {
        // perf/strace fork the command: its pid is the wrapper's only child.
        let kids = fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap_or_default();
        kids.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(child.id() as i32)
    } else {
        child.id() as i32
    };
    // SAFETY: sending a signal to a pid we started.
    unsafe { libc::kill(target, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
}

fn has(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The command line that counts the system calls of a contender into `out`: all of them
/// (`raw_syscalls:sys_enter`), or each kind (`syscalls:sys_enter_*`, one tracepoint per
/// system call: as cheap, and it needs no strace) when `by_kind`.
fn perf_wrap(out: &str, by_kind: bool) -> [&str; 8] {
    [
        "perf",
        "stat",
        "-e",
        if by_kind {
            "syscalls:sys_enter_*"
        } else {
            "raw_syscalls:sys_enter"
        },
        "-x,",
        "-o",
        out,
        "--",
    ]
}

/// System calls of the whole process tree, by `perf stat`, by kind (`raw` for the total
/// alone): the `-x,` output is `count,unit,event,...`.
fn perf_counts(out: &Path) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in fs::read_to_string(out).unwrap_or_default().lines() {
        let cols: Vec<&str> = l.split(',').collect();
        let (Some(n), Some(ev)) = (cols.first(), cols.get(2)) else {
            continue;
        };
        let Ok(n) = n.trim().parse::<u64>() else {
            continue;
        };
        let kind = if let Some(k) = ev.strip_prefix("syscalls:sys_enter_") {
            k
        } else if ev.starts_with("raw_syscalls:sys_enter") {
            "raw"
        } else {
            continue;
        };
        if n > 0 {
            m.insert(kind.to_string(), n);
        }
    }
    m
}

/// All system calls of a [`perf_counts`] answer.
fn perf_total(m: &BTreeMap<String, u64>) -> Option<u64> {
    if m.is_empty() {
        return None;
    }
    Some(m.get("raw").copied().unwrap_or_else(|| m.values().sum()))
}

/// Per file by kind, side by side (`cols`: a heading and the counts over `n` files each),
/// the largest first, kinds under 0.05 per file in every column left out.
fn print_kinds(cols: &[(String, BTreeMap<String, u64>, u64)]) {
    let mut names: Vec<&String> = cols.iter().flat_map(|c| c.1.keys()).collect();
    names.sort();
    names.dedup();
    let per = |m: &BTreeMap<String, u64>, k: &str, n: u64| {
        m.get(k).copied().unwrap_or(0) as f64 / n.max(1) as f64
    };
    println!("\n## By kind (perf stat -e 'syscalls:sys_enter_*'), per file\n");
    let last = cols.len() - 1;
    names.sort_by(|a, b| {
        per(&cols[last].1, b, cols[last].2).total_cmp(&per(&cols[last].1, a, cols[last].2))
    });
    let heads: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
    println!("| system call | {} |", heads.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    for k in names {
        let v: Vec<f64> = cols.iter().map(|c| per(&c.1, k, c.2)).collect();
        if v.iter().all(|x| *x < 0.05) {
            continue;
        }
        let s: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!("| {k} | {} |", s.join(" | "));
    }
    let s: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "{:.1}",
                perf_total(&c.1).unwrap_or(0) as f64 / c.2.max(1) as f64
            )
        })
        .collect();
    println!("| **all** | {} |", s.join(" | "));
}

/// `strace -c` summary: calls by system call.
fn strace_kinds(out: &Path) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in fs::read_to_string(out).unwrap_or_default().lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if cols.len() >= 5 && cols[0].parse::<f64>().is_ok() {
            let name = cols[cols.len() - 1].to_string();
            if let Ok(calls) = cols[3].parse::<u64>() {
                if name != "total" {
                    m.insert(name, calls);
                }
            }
        }
    }
    m
}

fn main() {
    if let Ok(spec) = std::env::var("COST_FLOOR") {
        floor_child(&spec);
        return;
    }
    let files = env_num("COST_BENCH_FILES", 10_000);
    let rounds = env_num("COST_BENCH_ROUNDS", 3);
    let threads: Vec<usize> = std::env::var("COST_BENCH_THREADS")
        .unwrap_or_else(|_| "4,16,64".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let b = Bench::new(files);

    println!("\n## Time: {files} files of {FILE_SIZE} B, {rounds} rounds interleaved\n");
    let mut floor_best = f64::MAX;
    let mut floor_by_t: BTreeMap<usize, f64> = BTreeMap::new();
    let mut accio_best = f64::MAX;
    let burst = env_num("COST_BENCH_BURST", 1) == 1;
    let mut burst_best = f64::MAX;
    // Each round's best floor and accio's times, for the ratios of each round.
    let (mut floor_round, mut accio_round, mut burst_round) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let mut floor_this_round = f64::MAX;
        for &t in &threads {
            let s = b.floor(t, &[]);
            println!(
                "round {round}: floor, {t:>2} threads: {s:.3} s, {:.0} files/s",
                files as f64 / s
            );
            floor_best = floor_best.min(s);
            floor_this_round = floor_this_round.min(s);
            let e = floor_by_t.entry(t).or_insert(f64::MAX);
            *e = e.min(s);
        }
        let s = b.accio(&[]);
        println!(
            "round {round}: accio watch (default configuration): {s:.3} s, {:.0} files/s ({})",
            files as f64 / s,
            b.milestones()
        );
        accio_best = accio_best.min(s);
        floor_round.push(floor_this_round);
        accio_round.push(s);
        if burst {
            let s = b.accio_burst();
            println!(
                "round {round}: accio watch, burst renamed into it: {s:.3} s, {:.0} files/s ({})",
                files as f64 / s,
                b.milestones()
            );
            burst_best = burst_best.min(s);
            burst_round.push(s);
        }
    }
    println!("\n| | files/s (best of {rounds}) | time ratio |\n|---|---|---|");
    for (t, s) in &floor_by_t {
        println!(
            "| floor, {t} threads | {:.0} | {:.2} |",
            files as f64 / s,
            s / floor_best
        );
    }
    println!(
        "| `accio watch`, default configuration | {:.0} | **{:.2}** |",
        files as f64 / accio_best,
        accio_best / floor_best
    );

    if burst {
        println!(
            "| `accio watch`, burst of {files} renamed into it | {:.0} | **{:.2}** |",
            files as f64 / burst_best,
            burst_best / floor_best
        );
    }
    // The machine is shared: the ratio of each round (against that round's best floor), and
    // their median, say more than the best of each alone.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let ratios =
        |a: &[f64]| -> Vec<f64> { a.iter().zip(&floor_round).map(|(a, f)| a / f).collect() };
    let show = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let backlog = ratios(&accio_round);
    println!(
        "\ntime ratio by round, backlog: {} (median {:.2})",
        show(&backlog),
        median(backlog.clone())
    );
    if burst {
        let b = ratios(&burst_round);
        println!(
            "time ratio by round, burst: {} (median {:.2})",
            show(&b),
            median(b.clone())
        );
    }
    println!(
        "load average: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let best_t = floor_by_t
        .iter()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(t, _)| *t)
        .unwrap_or(16);
    if has("perf", "--version") {
        // COST_BENCH_PERF_KINDS=1: each kind counted too (tracepoints), for the floor, accio
        // and the larger backlog side by side.
        let by_kind = env_num("COST_BENCH_PERF_KINDS", 0) == 1;
        println!("\n## System calls per file (perf stat -e raw_syscalls:sys_enter)\n");
        let out = b._tmp.path().join("perf.txt");
        let outs = out.to_str().unwrap().to_string();
        let wrap = perf_wrap(&outs, by_kind);
        b.floor(best_t, &wrap);
        let floor_kinds = perf_counts(&out);
        b.accio(&wrap);
        let accio_kinds = perf_counts(&out);
        let per = |c: Option<u64>, n: u64| {
            c.map_or("?".into(), |c| format!("{:.1}", c as f64 / n as f64))
        };
        println!("| backlog | floor ({best_t} threads) | accio watch |\n|---|---|---|");
        println!(
            "| {files} | {} | {} |",
            per(perf_total(&floor_kinds), files),
            per(perf_total(&accio_kinds), files)
        );
        let big = env_num("COST_BENCH_BIG", 0);
        let mut cols = vec![
            (format!("floor, {files}"), floor_kinds, files),
            (format!("accio, {files}"), accio_kinds, files),
        ];
        if big > 0 {
            drop(b);
            let bb = Bench::new(big);
            // perf's output goes under the new backlog's directory: the first one is gone.
            let out = bb._tmp.path().join("perf.txt");
            let outs = out.to_str().unwrap().to_string();
            bb.accio(&perf_wrap(&outs, by_kind));
            let k = perf_counts(&out);
            println!("| {big} | - | {} |", per(perf_total(&k), big));
            cols.push((format!("accio, {big}"), k, big));
            if by_kind {
                print_kinds(&cols);
            }
            let _ = std::io::stdout().flush();
            return;
        }
        if by_kind {
            print_kinds(&cols);
        }
    } else {
        println!("\n(no perf here: no system call counts)");
    }

    if env_num("COST_BENCH_KINDS", 1) == 1 && has("strace", "-V") {
        println!("\n## System calls per file by kind (strace -f -c; slows both down)\n");
        let out = b._tmp.path().join("strace.txt");
        let outs = out.to_str().unwrap().to_string();
        let wrap = ["strace", "-f", "-c", "-o", outs.as_str(), "--"];
        b.floor(best_t, &wrap);
        let floor = strace_kinds(&out);
        b.accio(&wrap);
        let accio = strace_kinds(&out);
        let mut names: Vec<&String> = accio.keys().chain(floor.keys()).collect();
        names.sort();
        names.dedup();
        names.sort_by_key(|n| std::cmp::Reverse(accio.get(*n).copied().unwrap_or(0)));
        println!("| system call | floor | accio watch |\n|---|---|---|");
        let per = |m: &BTreeMap<String, u64>, n: &str| {
            let c = m.get(n).copied().unwrap_or(0) as f64 / files as f64;
            if c >= 0.05 {
                format!("{c:.2}")
            } else {
                "-".into()
            }
        };
        let (mut tf, mut ta) = (0u64, 0u64);
        for n in names {
            tf += floor.get(n).copied().unwrap_or(0);
            ta += accio.get(n).copied().unwrap_or(0);
            let (f, a) = (per(&floor, n), per(&accio, n));
            if f != "-" || a != "-" {
                println!("| {n} | {f} | {a} |");
            }
        }
        println!(
            "| **all** | {:.1} | {:.1} |",
            tf as f64 / files as f64,
            ta as f64 / files as f64
        );
    }
    let _ = std::io::stdout().flush();
}
