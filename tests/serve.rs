//! `accio serve PORT DIR` as the real binary: numbering, empty and ERROR files, concurrency,
//! signals, atomic publication, IPv4 and IPv6.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::send::*;
use support::wait::{exited_within, wait_for, wait_until};

/// A running `accio serve` on a free port, killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Everything the server logged so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with the given idle timeout and waits until it listens. The port is
    /// found by binding port 0 and releasing it; if another process takes it meanwhile the
    /// server fails to bind and we try again.
    fn start(idle: &str) -> Server {
        Server::start_in(idle, tempfile::tempdir().unwrap())
    }

    /// As [`Server::start`], saving into `dir` (which may hold files already).
    fn start_in(idle: &str, dir: tempfile::TempDir) -> Server {
        for _ in 0..5 {
            let port = TcpListener::bind("[::]:0")
                .or_else(|_| TcpListener::bind("0.0.0.0:0"))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = accio()
                .args(["serve", &port.to_string()])
                .arg(dir.path())
                .env("ACCIO_SERVE_IDLE_TIMEOUT", idle)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let log = Arc::new(Mutex::new(Vec::new()));
            let stderr = child.stderr.take().unwrap();
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
            let listening = || {
                let log = log.lock().unwrap();
                log.iter().any(|l| l.contains("listening on"))
            };
            // Exited instead: the port was taken meanwhile; try another.
            let settled = wait_until(RUN_DEADLINE, || {
                listening() || child.try_wait().unwrap().is_some()
            });
            assert!(settled, "serve did not start");
            if listening() {
                return Server {
                    child: Some(child),
                    port,
                    dir,
                    log,
                };
            }
        }
        panic!("serve failed to start five times");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, n: u64) -> Vec<u8> {
        std::fs::read(self.path(&format!("{n}.file"))).unwrap()
    }

    /// Names in DIR.
    fn listing(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A raw client that has received the whole command.
    fn connect(&self, host: &str) -> TcpStream {
        let mut s = TcpStream::connect((host, self.port)).unwrap();
        let mut cmd = [0u8; 7];
        s.read_exact(&mut cmd).unwrap();
        assert_eq!(&cmd, COMMAND);
        s
    }

    fn send(&self, host: &str, file: &Path) -> Outcome {
        run(&mut send_cmd(host, &self.port.to_string(), file, SHORT))
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: signalling our own child, which is alive (not yet waited for).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits for the server to exit (with the deadline) and returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let Some(status) = exited_within(&mut child, RUN_DEADLINE) else {
            let _ = child.kill();
            panic!("serve did not exit; log: {:?}", self.log.lock().unwrap());
        };
        status.code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn numbers_connections_one_two_three_byte_exact() {
    let server = Server::start("10s");
    let src = tempfile::tempdir().unwrap();
    let contents = [pattern(500, 21), pattern(10 << 20, 22), Vec::new()];
    for (i, content) in contents.iter().enumerate() {
        let file = write_file(src.path(), &format!("f{i}"), content);
        server.send("127.0.0.1", &file).assert_success();
    }
    for (i, content) in contents.iter().enumerate() {
        let got = server.read(i as u64 + 1);
        assert!(&got == content, "{}.file differs", i + 1);
    }
    assert_eq!(
        server.listing(),
        ["1.file", "2.file", "3.file"].map(String::from).into()
    );
}

/// A client that connects, receives the command and closes at once: an empty file, in place
/// before the server closes (the close is the client's confirmation).
#[test]
fn empty_connection_gives_an_empty_file() {
    let server = Server::start("10s");
    let mut s = server.connect("127.0.0.1");
    shutdown_write(&s);
    let (extra, end) = read_all(&mut s);
    end.unwrap();
    assert!(extra.is_empty());
    assert_eq!(server.read(1), b"");
}

/// Silence for the idle timeout: the connection is aborted and the file holds exactly
/// `ERROR`, whatever arrived before.
#[test]
fn idle_connection_gives_error_content() {
    let server = Server::start("500ms");
    let mut s = server.connect("127.0.0.1");
    s.write_all(b"some partial data").unwrap();
    let start = Instant::now();
    let (_, _end) = read_all(&mut s); // Returns when the server aborts.
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    wait_for("1.file", || server.path("1.file").exists());
    assert_eq!(server.read(1), b"ERROR");
    // Silence right from the start: ERROR as well.
    let mut s = server.connect("127.0.0.1");
    let _ = read_all(&mut s);
    wait_for("2.file", || server.path("2.file").exists());
    assert_eq!(server.read(2), b"ERROR");
}

/// A client that resets mid-transfer: ERROR, not a truncated file.
#[test]
fn reset_connection_gives_error_content() {
    let server = Server::start("10s");
    let mut s = server.connect("127.0.0.1");
    s.write_all(&pattern(100_000, 23)).unwrap();
    wait_for("data to arrive", || {
        std::fs::metadata(server.path(".1.file.part")).is_ok_and(|m| m.len() == 100_000)
    });
    reset(s);
    wait_for("1.file", || server.path("1.file").exists());
    assert_eq!(server.read(1), b"ERROR");
}

#[test]
fn ten_concurrent_clients_byte_exact() {
    let server = Server::start("10s");
    let src = tempfile::tempdir().unwrap();
    let contents: Vec<Vec<u8>> = (0..10)
        .map(|i| pattern(256 << 10 | i, 30 + i as u64))
        .collect();
    let children: Vec<_> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let file = write_file(src.path(), &format!("f{i}"), c);
            spawn(&mut send_cmd(
                "127.0.0.1",
                &server.port.to_string(),
                &file,
                SHORT,
            ))
        })
        .collect();
    for (child, started) in children {
        finish(child, started).assert_success();
    }
    let received: BTreeSet<Vec<u8>> = (1..=10).map(|n| server.read(n)).collect();
    let sent: BTreeSet<Vec<u8>> = contents.into_iter().collect();
    assert!(received == sent, "received contents differ from sent");
    assert_eq!(server.listing().len(), 10);
}

/// While a transfer is in progress its data is only in a hidden part file; `1.file` appears
/// complete, once the client has closed.
#[test]
fn file_appears_under_its_final_name_only_when_complete() {
    let server = Server::start("10s");
    let first = pattern(300_000, 24);
    let second = pattern(200_000, 25);
    let mut s = server.connect("127.0.0.1");
    s.write_all(&first).unwrap();
    wait_for("the first part to be written", || {
        std::fs::metadata(server.path(".1.file.part")).is_ok_and(|m| m.len() == 300_000)
    });
    assert_eq!(
        server.listing(),
        BTreeSet::from([".1.file.part".to_string()])
    );
    s.write_all(&second).unwrap();
    shutdown_write(&s);
    let (_, end) = read_all(&mut s);
    end.unwrap();
    assert_eq!(server.listing(), BTreeSet::from(["1.file".to_string()]));
    assert_eq!(server.read(1), [first, second].concat());
}

#[test]
fn listens_on_ipv4_and_ipv6() {
    let server = Server::start("10s");
    let src = tempfile::tempdir().unwrap();
    let v4 = write_file(src.path(), "v4", b"over IPv4");
    server.send("127.0.0.1", &v4).assert_success();
    assert_eq!(server.read(1), b"over IPv4");
    if !have_ipv6() {
        eprintln!("skipped the IPv6 half: no IPv6 on loopback");
        return;
    }
    let v6 = write_file(src.path(), "v6", b"over IPv6");
    server.send("::1", &v6).assert_success();
    assert_eq!(server.read(2), b"over IPv6");
}

fn exits_zero_on(sig: libc::c_int) {
    let mut server = Server::start("10s");
    // One completed transfer first, so the signal arrives at a server that has worked.
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "f", b"before the signal");
    server.send("127.0.0.1", &file).assert_success();
    server.signal(sig);
    assert_eq!(
        server.wait(),
        Some(0),
        "log: {:?}",
        server.log.lock().unwrap()
    );
    assert_eq!(server.read(1), b"before the signal");
}

#[test]
fn sigint_exits_zero() {
    exits_zero_on(libc::SIGINT);
}

#[test]
fn sigterm_exits_zero() {
    exits_zero_on(libc::SIGTERM);
}

#[test]
fn sigquit_exits_zero() {
    exits_zero_on(libc::SIGQUIT);
}

/// A signal during a transfer: the server waits (bounded) for it, then exits 0; an
/// unfinished transfer never shows up as `N.file`.
#[test]
fn signal_during_a_transfer_leaves_no_partial_file() {
    let mut server = Server::start("1s");
    let mut s = server.connect("127.0.0.1");
    s.write_all(b"unfinished").unwrap();
    wait_for("data to arrive", || {
        std::fs::metadata(server.path(".1.file.part")).is_ok_and(|m| m.len() == 10)
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(), Some(0));
    let _ = read_all(&mut s);
    let listing = server.listing();
    assert!(
        listing.is_empty() || listing == BTreeSet::from(["1.file".to_string()]),
        "{listing:?}"
    );
    if !listing.is_empty() {
        // The idle timeout struck while waiting: ERROR, never the partial data.
        assert_eq!(server.read(1), b"ERROR");
    }
}

#[test]
fn bad_port_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for port in ["0", "65536", "-1", "abc", ""] {
        let out = run(accio().args(["serve", port]).arg(dir.path()));
        assert_ne!(out.code(), Some(0), "{port:?}");
        out.assert_one_error_line();
        assert!(out.stderr.contains("port"), "{port:?}: {}", out.stderr);
    }
}

#[test]
fn port_in_use_is_an_error() {
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run(accio().args(["serve", &port]).arg(dir.path()));
    assert_ne!(out.code(), Some(0));
    out.assert_one_error_line();
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(accio()
        .args(["serve", "5000"])
        .arg(dir.path().join("missing")));
    assert_ne!(out.code(), Some(0));
    out.assert_one_error_line();
    assert!(out.stderr.contains("missing"), "{}", out.stderr);
}

#[test]
fn unwritable_directory_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // The user serve runs as (nobody, as root) must be able to reach the directory itself.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(unprivileged().args(["serve", "5000"]).arg(&ro));
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    out.assert_one_error_line();
    assert!(out.stderr.contains("cannot write"), "{}", out.stderr);
}

/// Restarted on a directory that holds files: numbering continues after the highest
/// `N.file`, and nothing there is replaced.
#[test]
fn restart_continues_numbering_and_replaces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<(&str, Vec<u8>)> = vec![
        ("1.file", pattern(26 << 10, 40)),
        ("2.file", b"ERROR".to_vec()),
        ("0007.file", pattern(100, 41)),
        // Not N.file: do not count.
        ("99.file.bak", b"x".to_vec()),
        (".50.file.part", b"y".to_vec()),
        ("x.file", b"z".to_vec()),
        ("123456789012345678901234567890.file", b"too big".to_vec()),
    ];
    for (name, content) in &old {
        write_file(dir.path(), name, content);
    }
    let server = Server::start_in("10s", dir);
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "new", &pattern(3500, 42));
    server.send("127.0.0.1", &file).assert_success();
    server.send("127.0.0.1", &file).assert_success();
    assert_eq!(server.read(8), pattern(3500, 42));
    assert_eq!(server.read(9), pattern(3500, 42));
    for (name, content) in &old {
        assert_eq!(
            &std::fs::read(server.path(name)).unwrap(),
            content,
            "{name}"
        );
    }
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("numbering continues at 8")),
        "{:?}",
        server.log.lock().unwrap()
    );
}

/// A name taken by someone else while its connection is in progress is not replaced: the
/// file is saved under the next number.
#[test]
fn a_name_taken_meanwhile_is_not_replaced() {
    let server = Server::start("10s");
    let mut s = server.connect("127.0.0.1");
    s.write_all(b"received").unwrap();
    wait_for("data to arrive", || {
        std::fs::metadata(server.path(".1.file.part")).is_ok_and(|m| m.len() == 8)
    });
    std::fs::write(server.path("1.file"), b"someone else's").unwrap();
    shutdown_write(&s);
    let (_, end) = read_all(&mut s);
    end.unwrap();
    assert_eq!(server.read(1), b"someone else's");
    assert_eq!(server.read(2), b"received");
    // The next connection goes on after it.
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "f", b"third");
    server.send("127.0.0.1", &file).assert_success();
    assert_eq!(server.read(3), b"third");
    assert_eq!(
        server.listing(),
        ["1.file", "2.file", "3.file"].map(String::from).into()
    );
}
