//! `accio send` and `accio serve` as processes: running the real binary with a deadline and
//! its outcome, scripted one-connection peers on loopback, content patterns, and what
//! /proc tells about a socket.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wait::wait_until;
use super::BIN;

/// Generous deadline for a process run to finish on a loaded 2-core CI machine (some
/// tests wait out the real 10 s timeouts).
pub const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// The command a server sends.
pub const COMMAND: &[u8] = b"accio\r\n";

/// A command for the binary with every ACCIO_* variable removed, so the caller's
/// environment cannot change the timeouts under test.
pub fn accio() -> Command {
    clean(Command::new(BIN))
}

/// [`accio`] as a user without privileges: root reads and writes anything, so a test of a
/// permission error runs the binary as `nobody` through setpriv (util-linux) when the tests
/// run as root (CI does), and as is otherwise. Whatever it reaches must be open to others.
pub fn unprivileged() -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return accio();
    }
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "as root this test needs setpriv (util-linux) to drop privileges"
    );
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
    clean(cmd)
}

/// `cmd` without the caller's ACCIO_* variables and without stdin.
fn clean(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ACCIO_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished process did.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the process failed with `code` and printed exactly one line, starting with
    /// `ERROR:`, on stderr.
    #[track_caller]
    pub fn assert_error(&self, code: i32) {
        assert_eq!(self.code(), Some(code), "exit code; outcome: {self:#?}");
        self.assert_one_error_line();
    }

    #[track_caller]
    pub fn assert_one_error_line(&self) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        assert!(lines[0].starts_with("ERROR:"), "stderr: {:?}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout: {:?}", self.stdout);
    }

    /// Asserts the run took a time within `range`.
    #[track_caller]
    pub fn assert_elapsed(&self, range: impl std::ops::RangeBounds<Duration>) {
        assert!(
            range.contains(&self.elapsed),
            "took {:?}; outcome: {self:#?}",
            self.elapsed
        );
    }

    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(self.code(), Some(0), "outcome: {self:#?}");
        assert!(self.stderr.is_empty(), "stderr: {:?}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout: {:?}", self.stdout);
    }
}

/// Waits for `child` with a deadline (kills it past the deadline and panics), collecting its
/// output. Output is read by threads so a chatty child cannot block on a full pipe.
pub fn finish(mut child: Child, started: Instant) -> Outcome {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut status = None;
    let left = RUN_DEADLINE.saturating_sub(started.elapsed());
    wait_until(left, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("process did not finish within {RUN_DEADLINE:?}");
    };
    let elapsed = started.elapsed();
    Outcome {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        elapsed,
    }
}

/// Spawns `cmd` with piped output.
pub fn spawn(cmd: &mut Command) -> (Child, Instant) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, started)
}

/// Runs `cmd` to completion (with the deadline).
pub fn run(cmd: &mut Command) -> Outcome {
    let (child, started) = spawn(cmd);
    finish(child, started)
}

/// `accio send HOST PORT FILE` with extra environment variables.
pub fn send_cmd(host: &str, port: &str, file: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = accio();
    cmd.arg("send").arg(host).arg(port).arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Short timeouts for the scripted-server tests.
pub const SHORT: &[(&str, &str)] = &[
    ("ACCIO_CONNECT_TIMEOUT", "2s"),
    ("ACCIO_HANDSHAKE_TIMEOUT", "2s"),
    ("ACCIO_STALL_TIMEOUT", "2s"),
    ("ACCIO_CLOSE_TIMEOUT", "2s"),
];

/// Deterministic pseudo-random content, different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// `content` as `f` in a new temporary directory, which lives as long as the first value.
pub fn temp_file(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "f", content);
    (dir, path)
}

/// A sparse file of `len` bytes (zeros, no disk space) at `dir/sparse`: large content for
/// tests that stall or cut a transfer.
pub fn sparse_file(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join("sparse");
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

/// `accio send 127.0.0.1 PORT FILE` with extra environment variables, run to its end.
pub fn send_local(port: &str, file: &Path, env: &[(&str, &str)]) -> Outcome {
    run(&mut send_cmd("127.0.0.1", port, file, env))
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A listener on 127.0.0.1:0 that runs one scripted connection.
pub struct Peer {
    pub listener: TcpListener,
    pub port: u16,
}

impl Peer {
    pub fn new() -> Peer {
        Peer::bind("127.0.0.1:0".parse().unwrap())
    }

    pub fn bind(addr: SocketAddr) -> Peer {
        let listener = TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        Peer { listener, port }
    }

    /// A listener with a small receive buffer (inherited by accepted sockets), so a peer
    /// that stops reading stalls the sender quickly.
    pub fn with_small_rcvbuf() -> Peer {
        let listener: TcpListener = super::net::loopback_listener(16, Some(4096)).into();
        let port = listener.local_addr().unwrap().port();
        Peer { listener, port }
    }

    pub fn port_str(&self) -> String {
        self.port.to_string()
    }

    /// Accepts one connection in a thread and runs `script` on it.
    pub fn serve<R: Send + 'static>(
        self,
        script: impl FnOnce(TcpStream) -> R + Send + 'static,
    ) -> JoinHandle<R> {
        std::thread::spawn(move || {
            let (stream, _) = self.listener.accept().unwrap();
            script(stream)
        })
    }

    /// True if a connection is waiting in the accept queue. Every connection a finished
    /// client made is there already, since the kernel completes the handshake.
    pub fn saw_connection(&self) -> bool {
        self.listener.set_nonblocking(true).unwrap();
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads until EOF or error; returns the bytes and whether the end was a clean EOF.
pub fn read_all(stream: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (data, Ok(())),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (data, Err(e)),
        }
    }
}

/// Reads on until a clean EOF (panics on a reset), appending to `data`.
pub fn read_to_clean_end(stream: &mut TcpStream, data: &mut Vec<u8>) {
    let (rest, end) = read_all(stream);
    end.unwrap();
    data.extend_from_slice(&rest);
}

/// A well-behaved server script: command, read to EOF, close. Returns what was received.
pub fn sink(mut stream: TcpStream) -> Vec<u8> {
    stream.write_all(COMMAND).unwrap();
    let (data, end) = read_all(&mut stream);
    end.unwrap();
    drop(stream);
    data
}

/// Resets the connection (RST) instead of closing it.
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

/// Half-closes our side, ignoring errors (the peer may be gone).
pub fn shutdown_write(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// True if this machine has IPv6 on loopback.
pub fn have_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// TCP state `FIN_WAIT1` in /proc/net/tcp: our FIN (after the half-close) is not yet
/// acknowledged, i.e. the sender is in its finish phase with data still queued.
pub const TCP_FIN_WAIT1: u8 = 0x04;

/// TCP state `LAST_ACK`: the peer closed first, then we closed; our FIN is not yet
/// acknowledged.
pub const TCP_LAST_ACK: u8 = 0x09;

/// State and send-queue length (bytes not yet acknowledged) of the IPv4 loopback socket
/// whose local port is `local` and remote port is `remote`, from /proc/net/tcp.
pub fn tcp_socket_state(local: u16, remote: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if f.len() > 4 && port(f[1]) == Some(local) && port(f[2]) == Some(remote) {
            let state = u8::from_str_radix(f[3], 16).ok()?;
            let txq = u64::from_str_radix(f[4].split(':').next()?, 16).ok()?;
            return Some((state, txq));
        }
    }
    None
}
