//! Helpers for the end-to-end tests of `accio watch`: spool directories, a real `accio serve`
//! receiver, the real service process with its log, configs written as files, and waiting
//! on conditions with deadlines (never sleeping and hoping).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_accio");

/// Generous: the tests run in parallel on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `DEADLINE`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, &mut cond)
}

pub fn wait_for_within(what: &str, deadline: Duration, cond: &mut dyn FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port nobody listens on (right now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True if something listens on `port` (from /proc, so that checking does not make a
/// connection, which `accio serve` would count as a file).
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
            })
        })
    })
}

/// Names of the regular, non-hidden files in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// A test's directories: spool, done, failed, and the receiver's.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub spool: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    pub recv: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = root.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        };
        Dirs {
            spool: mk("spool"),
            done: mk("done"),
            failed: mk("failed"),
            recv: mk("recv"),
            root,
        }
    }

    /// Writes `content` under a hidden name, then renames it to `name`: the documented way.
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        drop_file(&self.spool, name, content)
    }
}

pub fn drop_file(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.part"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `accio serve PORT DIR`, the real receiver.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Receiver {
    /// On a free port; another test may take the port between the probe and serve's bind,
    /// so a few are tried.
    pub fn start(dir: &Path) -> Receiver {
        for _ in 0..9 {
            if let Some(r) = Receiver::try_start_on(dir, free_port()) {
                return r;
            }
        }
        Receiver::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Receiver {
        Receiver::try_start_on(dir, port).unwrap_or_else(|| panic!("accio serve {port} exited"))
    }

    fn try_start_on(dir: &Path, port: u16) -> Option<Receiver> {
        let mut child = Command::new(BIN)
            .args(["serve", &port.to_string()])
            .arg(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready is serve's own "listening on" line: a check of the port could see another
        // test's listener while this serve is failing to bind it.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Keeps draining after the line, so serve never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let mut r = Receiver {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(true) => Some(r),
            Ok(false) => {
                let _ = r.child.wait();
                None
            }
            Err(_) => panic!("accio serve {port} did not start"),
        }
    }

    /// What each connection delivered: N → content (complete files only).
    pub fn files(&self) -> BTreeMap<u64, Vec<u8>> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".file").and_then(|n| n.parse().ok()) {
                m.insert(n, fs::read(e.path()).unwrap());
            }
        }
        m
    }

    /// Files received so far (names only: cheap enough to poll).
    pub fn count(&self) -> usize {
        fs::read_dir(&self.dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".file")
            })
            .count()
    }

    /// How many connections delivered exactly `content`.
    pub fn times_received(&self, content: &[u8]) -> usize {
        self.files()
            .values()
            .filter(|c| c.as_slice() == content)
            .count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings of a test config; defaults are short so that tests are quick.
#[derive(Clone)]
pub struct Opts {
    pub concurrency: u32,
    pub settle: &'static str,
    pub rescan: &'static str,
    pub initial: &'static str,
    pub max: &'static str,
    pub max_attempts: u32,
    pub grace: &'static str,
    pub timeout: &'static str,
    pub delete: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            concurrency: 4,
            settle: "150ms",
            rescan: "1s",
            initial: "50ms",
            max: "300ms",
            max_attempts: 0,
            grace: "2s",
            timeout: "2s",
            delete: false,
        }
    }
}

/// A `[[watch]]` table for `dirs`.
pub fn watch_table(dirs: &Dirs, o: &Opts) -> String {
    let disposal = if o.delete {
        "on_success = \"delete\"\n".to_string()
    } else {
        format!("on_success = \"move\"\ndone_dir = {:?}\n", dirs.done)
    };
    format!(
        "[[watch]]\ndir = {:?}\nfailed_dir = {:?}\n{disposal}settle = {:?}\nrescan_interval = {:?}\n",
        dirs.spool, dirs.failed, o.settle, o.rescan
    )
}

/// A whole config file text with one watch.
pub fn config_text(dirs: &Dirs, port: u16, o: &Opts) -> String {
    format!(
        "concurrency = {}\nshutdown_grace = {:?}\nlog_level = \"info\"\n\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
         [timeouts]\nconnect = {t:?}\nhandshake = {t:?}\nstall = {t:?}\nclose = {t:?}\n\n\
         [retry]\ninitial = {:?}\nmax = {:?}\nmax_attempts = {}\n\n{}",
        o.concurrency,
        o.grace,
        o.initial,
        o.max,
        o.max_attempts,
        watch_table(dirs, o),
        t = o.timeout,
    )
}

/// Writes `text` as `dirs.root/NAME` and returns its path.
pub fn write_config(dirs: &Dirs, name: &str, text: &str) -> PathBuf {
    let p = dirs.root.path().join(name);
    fs::write(&p, text).unwrap();
    p
}

/// The real `accio watch` process, its stderr in a file.
pub struct Service {
    child: Child,
    pub log: PathBuf,
}

/// The line the service logs once it watches every directory.
pub const RUNNING: &str = "accio watch is running";

impl Service {
    /// Starts the service and waits until it logs that it is running.
    pub fn start(config: &Path) -> Service {
        let s = Service::spawn(config);
        s.wait_log(RUNNING);
        s
    }

    /// Starts the service with extra environment variables and waits until it runs.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Service {
        let s = Service::spawn_with_env(config, env);
        s.wait_log(RUNNING);
        s
    }

    /// Starts the service without waiting.
    pub fn spawn(config: &Path) -> Service {
        Service::spawn_with_env(config, &[])
    }

    pub fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> Service {
        Service::spawn_wrapped(config, env, &[])
    }

    /// Starts the service under `wrapper` (a command and its arguments that runs the rest,
    /// e.g. `setpriv ...`) and waits until it runs.
    pub fn start_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Service {
        let s = Service::spawn_wrapped(config, env, wrapper);
        s.wait_log(RUNNING);
        s
    }

    pub fn spawn_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Service {
        let n: u32 = fastrand::u32(..);
        let log = config.with_extension(format!("{n:08x}.log"));
        let err = fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["watch", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,accio::watch=debug")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Service { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the log contains `needle`; panics with the log if the process exits first.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_n(needle, 1)
    }

    pub fn wait_log_n(&self, needle: &str, n: usize) {
        let end = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return;
            }
            if Instant::now() > end {
                panic!("timed out waiting for {n}× {needle:?} in the log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                panic!(
                    "the service did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- service log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// One connection as a scripted server saw it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub bytes: Vec<u8>,
    /// Ended with a clean close (EOF), i.e. the client claimed it complete.
    pub clean: bool,
}

/// A receiver written for one test: sends `accio\r\n`, then runs `handler(n, stream)` for
/// connection number `n` (from 0), which returns what it saw. The connection is closed
/// after the handler returns and its result is recorded.
pub struct ScriptServer {
    pub port: u16,
    pub conns: std::sync::Arc<std::sync::Mutex<Vec<Conn>>>,
}

impl ScriptServer {
    pub fn start(
        handler: impl Fn(usize, &mut std::net::TcpStream) -> Conn + Send + Sync + 'static,
    ) -> ScriptServer {
        ScriptServer::start_with_rcvbuf(None, handler)
    }

    /// `rcvbuf`: a small receive buffer (no autotuning), so that a server that stops
    /// reading really stops the client (loopback buffers can otherwise hold tens of MiB).
    pub fn start_with_rcvbuf(
        rcvbuf: Option<usize>,
        handler: impl Fn(usize, &mut std::net::TcpStream) -> Conn + Send + Sync + 'static,
    ) -> ScriptServer {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        sock.listen(128).unwrap();
        let listener: std::net::TcpListener = sock.into();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = std::sync::Arc::new(handler);
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let handler = handler.clone();
                let conns = c2.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    if stream.write_all(b"accio\r\n").is_err() {
                        return;
                    }
                    let conn = handler(n, &mut stream);
                    // Recorded before the stream is dropped: the drop is the server's close,
                    // which the client takes as confirmation.
                    conns.lock().unwrap().push(conn);
                    drop(stream);
                });
            }
        });
        ScriptServer { port, conns }
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }
}

/// Reads until EOF (clean) or an error (reset), appending to `bytes`.
pub fn read_rest(stream: &mut std::net::TcpStream, mut bytes: Vec<u8>) -> Conn {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Conn { bytes, clean: true },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Conn {
                    bytes,
                    clean: false,
                }
            }
        }
    }
}

/// Reads at least `n` bytes (or until EOF/error).
pub fn read_at_least(stream: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while bytes.len() < n {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
        }
    }
    bytes
}

/// Content that is unique per `i` and about `len` bytes long.
pub fn content(i: usize, len: usize) -> Vec<u8> {
    let line = format!("file number {i:06}\n");
    line.repeat(len / line.len() + 1).into_bytes()
}

/// A server that greets every connection and then resets it: the destination is up (it
/// greets), but every attempt fails after the greeting, so each counts against
/// max_attempts. (A wrong greeting would be the destination's failure: it would be marked
/// down and its files would wait instead.) Returns its port; it runs until the test process
/// ends.
pub fn failing_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::Write;
            let _ = stream.write_all(b"accio\r\n");
            // Wait for the first bytes (or the client's end), then reset.
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    });
    port
}
