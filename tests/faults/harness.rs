//! The real processes and the bookkeeping of the fault scenarios: config files for
//! `accio watch`, the service and `accio serve` as child processes, dropping files into a
//! spool, and counting dropped / delivered / lost / duplicated / left in spool.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::payload;
use super::sink::Reception;

/// The `accio` binary under test: `FAULTS_ACCIO_BIN` if set (e.g. an installed build), else
/// the one cargo built with this test.
pub fn bin() -> PathBuf {
    std::env::var_os("FAULTS_ACCIO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_accio")))
}

// The waiting, port and /proc helpers every test binary shares (tests/support), included by
// path since the benchmarks include this file too.
#[path = "../support/net.rs"]
mod net;
#[path = "../support/procfs.rs"]
mod procfs;
#[path = "../support/wait.rs"]
mod wait;
#[allow(unused_imports)]
pub use net::{free_port, BlackHole};
#[allow(unused_imports)]
pub use procfs::{cpu_times, status_kib};
#[allow(unused_imports)]
pub use wait::wait_until;

/// A whole number from the environment variable `name` (a benchmark's or a scenario's size),
/// else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The random seed of a scenario: `FAULTS_SEED` if set, else the clock. Printed so that a
/// failing run can be replayed.
pub fn seed(scenario: &str) -> u64 {
    let s = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("[{scenario}] seed {s} (replay with FAULTS_SEED={s})");
    s
}

// ---------------------------------------------------------------------------------------
// Configuration: the config files every test binary builds (tests/support/config.rs).

#[path = "../support/config.rs"]
mod config;
#[allow(unused_imports)]
pub use config::{Conf, Dest, WatchConf};

/// The directories of one scenario under a fresh temporary directory: `spool`, `done`,
/// `failed`, `stage` (where files are written before being renamed into the spool, same
/// filesystem), `recv` (for `accio serve`), and the config and log files.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub spool: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    pub stage: PathBuf,
    pub recv: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Dirs {
    pub fn new(scenario: &str) -> Dirs {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("accio-faults-{scenario}-"))
            .tempdir()
            .unwrap();
        let mut tmp = tmp;
        // FAULTS_KEEP=1 keeps every scenario's directories (spool, receiver, logs) to look at.
        if std::env::var_os("FAULTS_KEEP").is_some() {
            tmp.disable_cleanup(true);
            println!("[{scenario}] keeping {}", tmp.path().display());
        }
        let d = |n: &str| {
            let p = tmp.path().join(n);
            fs::create_dir_all(&p).unwrap();
            p
        };
        Dirs {
            spool: d("spool"),
            done: d("done"),
            failed: d("failed"),
            stage: d("stage"),
            recv: d("recv"),
            config: tmp.path().join("accio.toml"),
            log: tmp.path().join("service.log"),
            tmp,
        }
    }

    /// The scenario's one watch: `spool`, moving delivered files to `done`.
    pub fn watch(&self) -> WatchConf {
        WatchConf {
            rescan_interval: "1s".into(),
            ..WatchConf::new(&self.spool, &self.done, &self.failed)
        }
    }

    /// Starts `accio watch` on this scenario's config and log and waits up to `timeout` for
    /// READY=1. Returns the service and, if it did not get ready, the log's last lines.
    pub fn start_service(&self, timeout: Duration) -> (Service, Option<String>) {
        let mut svc = Service::start(&Launch {
            config: self.config.clone(),
            log: self.log.clone(),
            ..Launch::default()
        });
        let not_ready = (!svc.wait_ready(timeout)).then(|| tail(&self.log_text(), 30));
        (svc, not_ready)
    }

    /// The service's log, with this scenario's temporary directory shown as `<tmp>` so that
    /// searches for a word do not match the directory's name.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default())
            .replace(self.tmp.path().to_str().unwrap(), "<tmp>")
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// How to start `accio watch`.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub config: PathBuf,
    pub log: PathBuf,
    /// Run as this uid/gid (via setpriv), for the unreadable-file checks.
    pub as_user: Option<(u32, u32)>,
    /// Run inside this network namespace (via `ip netns exec`).
    pub netns: Option<String>,
    /// Stop reading NOTIFY_SOCKET after `READY=1`, like a systemd too busy to read it.
    pub notify_unread: bool,
}

/// `accio watch` as a child process. Killed with SIGKILL if still running when dropped.
pub struct Service {
    child: Child,
    pub pid: u32,
    /// Set by the notify reader when `READY=1` arrives.
    ready: Arc<AtomicBool>,
    /// Tells the notify reader to stop.
    stop: Arc<AtomicBool>,
    notify_path: PathBuf,
}

impl Service {
    pub fn start(l: &Launch) -> Service {
        let notify_path = l
            .log
            .with_extension(format!("notify.{}", fastrand::u64(..)));
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        // Read every notification for the service's whole life, as systemd does: a queue
        // left full (10 datagrams) would block the service's next sd_notify.
        let (ready, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        {
            let (ready, stop) = (ready.clone(), stop.clone());
            let unread = l.notify_unread;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !(stop.load(Ordering::SeqCst) || unread && ready.load(Ordering::SeqCst)) {
                    if let Ok(n) = notify.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]);
                        if msg.lines().any(|l| l == "READY=1") {
                            ready.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        // The service may run as another user; it must be able to send to us.
        let _ = fs::set_permissions(
            &notify_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)
            .unwrap();
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = &l.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(OsString::from));
        }
        if let Some((uid, gid)) = l.as_user {
            argv.push("setpriv".into());
            argv.push(format!("--reuid={uid}").into());
            argv.push(format!("--regid={gid}").into());
            argv.push("--clear-groups".into());
            argv.push("--".into());
        }
        argv.push(bin().into());
        argv.push("watch".into());
        argv.push("--config".into());
        argv.push(l.config.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "RUST_LOG",
                std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start accio watch");
        Service {
            pid: child.id(),
            child,
            ready,
            stop,
            notify_path,
        }
    }

    /// Waits for `READY=1` on the notify socket (the service is watching). False if it did
    /// not come within `timeout` or the service exited.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let ready = self.ready.clone();
        wait_until(timeout, || ready.load(Ordering::SeqCst) || !self.alive())
            && ready.load(Ordering::SeqCst)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid as i32, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit. `Err` if it did not exit (it is then
    /// killed, and the scenario reports a hang).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(st) = self.exited() {
            return Ok(st);
        }
        self.signal(libc::SIGTERM);
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(st) => Ok(st),
            None => {
                self.kill9();
                Err(format!(
                    "accio watch (pid {}) did not exit within {timeout:?} of SIGTERM",
                    self.pid
                ))
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.alive() {
            self.kill9();
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = fs::remove_file(&self.notify_path);
    }
}

/// `accio serve PORT DIR` as a child process, optionally inside a network namespace.
pub struct Serve {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Serve {
    pub fn start(port: u16, dir: &Path, netns: Option<&str>, log: &Path) -> Serve {
        fs::create_dir_all(dir).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve")
            .arg(port.to_string())
            .arg(dir)
            .env("ACCIO_SERVE_IDLE_TIMEOUT", "3s")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start accio serve");
        Serve {
            child,
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// Waits until something accepts on `addr` (the server is up).
    pub fn wait_listening(&mut self, addr: std::net::SocketAddr, timeout: Duration) -> bool {
        wait_until(timeout, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                || !matches!(self.child.try_wait(), Ok(None))
        }) && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (the receiver finishes the connections in progress), then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let exited = wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            self.kill9();
        }
        exited
    }
}

/// What a killed `accio serve` left unpublished in `dir`: its hidden `.N.file.part` files,
/// with the id in each one's header if it has one.
pub fn serve_leftovers(dir: &Path) -> Vec<(String, u64, Option<u64>)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".part") {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((name, len, payload::id_of_file(&e.path())));
            }
        }
    }
    out
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------
// Dropping files

/// A file the test put into a spool.
#[derive(Debug, Clone)]
pub struct Dropped {
    pub name: OsString,
    /// Its final length (what a complete delivery has).
    pub len: u64,
    pub at: Instant,
    pub at_sys: SystemTime,
}

pub type DropTable = BTreeMap<u64, Dropped>;

/// Writes file `id` in `stage`, then renames it into `spool` as `name`: the documented way
/// for writers. Records the rename time.
pub fn drop_file(
    stage: &Path,
    spool: &Path,
    id: u64,
    len: u64,
    name: Option<OsString>,
    table: &mut DropTable,
) {
    let name = name.unwrap_or_else(|| format!("f{id:07}.dat").into());
    let tmp = stage.join(format!("s{id}"));
    fs::write(&tmp, payload::content(id, len)).unwrap();
    fs::rename(&tmp, spool.join(&name)).unwrap();
    table.insert(
        id,
        Dropped {
            name,
            len: len.max(payload::HEADER_LEN as u64),
            at: Instant::now(),
            at_sys: SystemTime::now(),
        },
    );
}

/// Drops `count` files with ids from `first`, sizes uniform in `sizes`, one every `gap`
/// (none if zero), in a thread. Join it for the table.
pub fn burst(
    stage: PathBuf,
    spool: PathBuf,
    first: u64,
    count: u64,
    sizes: std::ops::Range<u64>,
    gap: Duration,
    seed: u64,
) -> std::thread::JoinHandle<DropTable> {
    std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut table = DropTable::new();
        for id in first..first + count {
            drop_file(&stage, &spool, id, rng.u64(sizes.clone()), None, &mut table);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        table
    })
}

// ---------------------------------------------------------------------------------------
// Counting

/// One received copy, from the sink or from `accio serve`'s directory.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Option<u64>,
    pub len: u64,
    pub intact: bool,
    pub at_sys: SystemTime,
}

impl From<&Reception> for Delivery {
    fn from(r: &Reception) -> Self {
        Delivery {
            id: r.id,
            len: r.len,
            intact: r.intact,
            at_sys: r.at_sys,
        }
    }
}

pub fn from_sink(rs: &[Reception]) -> Vec<Delivery> {
    rs.iter().map(Delivery::from).collect()
}

/// What `accio serve` saved in `dir` (complete `N.file`s only; the time is the file's mtime,
/// that is when the last byte was written).
pub fn from_serve_dir(dir: &Path) -> Vec<Delivery> {
    from_serve_dir_except(dir, &Default::default())
}

/// Like [`from_serve_dir`], leaving out the files named in `seen` (an earlier phase's).
pub fn from_serve_dir_except(
    dir: &Path,
    seen: &std::collections::HashSet<OsString>,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') || seen.contains(&name) {
            continue;
        }
        let Ok(bytes) = fs::read(e.path()) else {
            continue;
        };
        if bytes.is_empty() {
            // A connection that sent nothing: the tests' own "is it listening" probes.
            continue;
        }
        let at_sys = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::now());
        let (id, intact) = match payload::check(&bytes) {
            Some((id, ok)) => (Some(id), ok),
            None => (None, false),
        };
        out.push(Delivery {
            id,
            len: bytes.len() as u64,
            intact,
            at_sys,
        });
    }
    out
}

/// Ids of the payload files directly in `dir` (regular files only; never follows links or
/// blocks on FIFOs).
pub fn ids_in(dir: &Path) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Some(id) = payload::id_of_file(&e.path()) {
                out.insert(id);
            }
        }
    }
    out
}

/// Number of entries in `dir` (any type).
pub fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// The figures of one scenario.
#[derive(Debug, Clone)]
pub struct Figures {
    pub scenario: String,
    pub dropped: usize,
    pub delivered: usize,
    pub lost: usize,
    /// Complete copies beyond the first, all ids together.
    pub duplicated: usize,
    pub in_spool: usize,
    pub in_failed: usize,
    /// Copies that were not complete (cut by a fault), or not ours.
    pub partial: usize,
    pub max_latency: Option<Duration>,
    pub lost_ids: Vec<u64>,
    pub undelivered: BTreeSet<u64>,
}

impl Figures {
    pub fn compute(
        scenario: &str,
        dropped: &DropTable,
        deliveries: &[Delivery],
        spools: &[&Path],
        failed: &[&Path],
    ) -> Figures {
        let mut copies: HashMap<u64, usize> = HashMap::new();
        let mut first: HashMap<u64, SystemTime> = HashMap::new();
        let mut partial = 0;
        for d in deliveries {
            if d.id.is_some_and(|id| !dropped.contains_key(&id)) {
                // Another phase's file (the same receiver serves several bursts).
                continue;
            }
            let complete = match (d.id, d.intact) {
                (Some(id), true) => dropped.get(&id).is_some_and(|f| f.len == d.len),
                _ => false,
            };
            if !complete {
                partial += 1;
                continue;
            }
            let id = d.id.unwrap();
            *copies.entry(id).or_default() += 1;
            let e = first.entry(id).or_insert(d.at_sys);
            if d.at_sys < *e {
                *e = d.at_sys;
            }
        }
        let spool_ids: BTreeSet<u64> = spools.iter().flat_map(|d| ids_in(d)).collect();
        let failed_ids: BTreeSet<u64> = failed.iter().flat_map(|d| ids_in(d)).collect();
        let mut lost_ids = Vec::new();
        let mut undelivered = BTreeSet::new();
        for id in dropped.keys() {
            if !copies.contains_key(id) {
                undelivered.insert(*id);
                if !spool_ids.contains(id) && !failed_ids.contains(id) {
                    lost_ids.push(*id);
                }
            }
        }
        let max_latency = first
            .iter()
            .filter_map(|(id, t)| t.duration_since(dropped[id].at_sys).ok())
            .max();
        Figures {
            scenario: scenario.to_string(),
            dropped: dropped.len(),
            delivered: copies.len(),
            lost: lost_ids.len(),
            duplicated: copies.values().map(|c| c - 1).sum(),
            in_spool: spool_ids
                .intersection(&dropped.keys().copied().collect())
                .count(),
            in_failed: failed_ids
                .intersection(&dropped.keys().copied().collect())
                .count(),
            partial,
            max_latency,
            lost_ids,
            undelivered,
        }
    }

    /// The one line of figures of the scenario.
    pub fn print(&self) {
        let line = format!(
            "FIGURES {:<24} dropped={:<6} delivered={:<6} lost={:<3} duplicated={:<4} in_spool={:<4} in_failed={:<4} partial={:<4} max_latency={}",
            self.scenario,
            self.dropped,
            self.delivered,
            self.lost,
            self.duplicated,
            self.in_spool,
            self.in_failed,
            self.partial,
            self.max_latency
                .map(|d| format!("{:.3}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
        );
        println!("{line}");
        // Also collected in one file, for the README table of a full run.
        if let Ok(path) = std::env::var("FAULTS_FIGURES") {
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    /// Panics, with the figures and the log's tail, if anything was lost.
    pub fn assert_nothing_lost(&self, log: &str) {
        assert!(
            self.lost == 0,
            "{}: {} file(s) lost (ids {:?}); service log tail:\n{}",
            self.scenario,
            self.lost,
            &self.lost_ids[..self.lost_ids.len().min(20)],
            tail(log, 40)
        );
    }
}

/// The last `n` lines of a log, each cut to 400 characters (names may be 255 bytes long).
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(400) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of `log` that contain `needle` (case-insensitive).
pub fn log_lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    let n = needle.to_lowercase();
    log.lines()
        .filter(|l| l.to_lowercase().contains(&n))
        .collect()
}
