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
        Server::start_with(idle, dir, &[], |_| {})
    }

    /// As [`Server::start`], with more arguments, and `setup` applied to the command.
    fn start_args(idle: &str, args: &[&str]) -> Server {
        Server::start_with(idle, tempfile::tempdir().unwrap(), args, |_| {})
    }

    /// As [`Server::start_in`], with more arguments, and `setup` applied to the command.
    fn start_with(
        idle: &str,
        dir: tempfile::TempDir,
        args: &[&str],
        setup: impl Fn(&mut std::process::Command),
    ) -> Server {
        Server::start_under(&[], idle, dir, args, setup)
    }

    /// As [`Server::start_with`], run under `prefix` (a program and its arguments, such as
    /// strace) when not empty.
    fn start_under(
        prefix: &[&str],
        idle: &str,
        dir: tempfile::TempDir,
        args: &[&str],
        setup: impl Fn(&mut std::process::Command),
    ) -> Server {
        for _ in 0..5 {
            let port = TcpListener::bind("[::]:0")
                .or_else(|_| TcpListener::bind("0.0.0.0:0"))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = match prefix {
                [] => accio(),
                [program, rest @ ..] => {
                    let mut c = std::process::Command::new(program);
                    c.args(rest).arg(support::BIN);
                    c
                }
            };
            cmd.args(["serve", &port.to_string()])
                .arg(dir.path())
                .args(args)
                .env("ACCIO_SERVE_IDLE_TIMEOUT", idle)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            setup(&mut cmd);
            let mut child = cmd.spawn().unwrap();
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

    /// A raw client from `source` (any 127.x.y.z: all of 127/8 is local) to 127.0.0.1,
    /// not waiting for anything.
    fn connect_from(&self, source: &str) -> TcpStream {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        sock.bind(&from.into()).unwrap();
        let to: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        sock.connect(&to.into()).unwrap();
        sock.into()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Descriptors the server holds now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Log lines containing `what`.
    fn logged(&self, what: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
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

/// Raises this test process's descriptor limit to its hard limit (it opens thousands of
/// client sockets) and returns it.
fn raise_own_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs; the soft limit stays at most the hard one.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    r.rlim_cur
}

/// Reads the greeting within `within`: true if it came whole, false on timeout, close or
/// reset before it.
fn greeted(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut cmd = [0u8; 7];
    let ok = s.read_exact(&mut cmd).is_ok() && cmd == COMMAND;
    s.set_read_timeout(None).unwrap();
    ok
}

/// Sends `content` on a raw connection that was greeted, half-closes, and waits for the
/// server's clean close (the confirmation).
fn deliver(mut s: TcpStream, content: &[u8]) {
    s.write_all(content).unwrap();
    shutdown_write(&s);
    let (extra, end) = read_all(&mut s);
    end.expect("a clean close");
    assert!(extra.is_empty());
}

/// The attack: thousands of idle connections from one address. A client from
/// another address is still received (the figure against the 2 s target is printed here and
/// by `cargo bench --bench serve`; the bound asserted is the send's own deadline), and the
/// idle connections cost the server one descriptor each: no file until a byte arrives.
#[test]
fn idle_flood_from_one_address_does_not_lock_out_another() {
    const IDLE: usize = 2000;
    if raise_own_nofile() < IDLE as u64 + 200 {
        eprintln!("skipped: the descriptor limit is too low for {IDLE} client sockets");
        return;
    }
    // Every flood connection is held (per address above the flood), so the descriptor
    // count shows what each one costs.
    let server = Server::start_args(
        "60s",
        &["--max-connections", "2500", "--max-per-address", "2400"],
    );
    let baseline = server.fds();
    let flood: Vec<TcpStream> = (0..IDLE)
        .map(|_| server.connect_from("127.0.0.2"))
        .collect();
    wait_for("the flood to be accepted", || {
        server.fds() >= baseline + IDLE
    });
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "legit", &pattern(100_000, 50));
    let start = Instant::now();
    // From 127.0.0.1 (the kernel's source for loopback destinations).
    server.send("127.0.0.1", &file).assert_success();
    let took = start.elapsed();
    eprintln!(
        "with {IDLE} idle connections held: a send took {took:?}; serve holds {} fds",
        server.fds()
    );
    assert_eq!(server.read(IDLE as u64 + 1), pattern(100_000, 50));
    let fds = server.fds();
    assert!(
        fds <= baseline + IDLE + 8,
        "{fds} descriptors for {IDLE} idle connections (baseline {baseline})"
    );
    assert!(fds < 2500 * 2 + 32);
    // The idle ones still have nothing on disk.
    assert_eq!(server.listing().len(), 1, "{:?}", server.listing());
    drop(flood);
}

/// Beyond --max-per-address, a connection from that address is reset before the greeting
/// and takes no number; other addresses are served.
#[test]
fn beyond_max_per_address_is_reset_before_the_greeting() {
    let server = Server::start_args(
        "30s",
        &["--max-connections", "10", "--max-per-address", "2"],
    );
    let mut a = server.connect_from("127.0.0.2");
    let mut b = server.connect_from("127.0.0.2");
    assert!(greeted(&mut a, RUN_DEADLINE) && greeted(&mut b, RUN_DEADLINE));
    let mut refused = server.connect_from("127.0.0.2");
    let (got, _) = read_all(&mut refused);
    assert!(got.is_empty(), "refused connection got {got:?}");
    let mut other = server.connect_from("127.0.0.3");
    assert!(greeted(&mut other, RUN_DEADLINE));
    wait_for("the refusal to be logged", || {
        server.logged("--max-per-address") == 1
    });
    for (s, content) in [(a, &b"a"[..]), (b, b"b"), (other, b"other")] {
        deliver(s, content);
    }
    // Numbers 1, 2, 3: the refused connection took none.
    let got: BTreeSet<Vec<u8>> = (1..=3).map(|n| server.read(n)).collect();
    assert_eq!(
        got,
        [b"a".to_vec(), b"b".to_vec(), b"other".to_vec()].into()
    );
    assert_eq!(server.listing().len(), 3);
    // A slot given back is usable again.
    let mut again = server.connect_from("127.0.0.2");
    assert!(greeted(&mut again, RUN_DEADLINE));
}

/// Beyond --max-connections, connections wait in the listen queue (no greeting) until a
/// slot is free.
#[test]
fn beyond_max_connections_waits_in_the_listen_queue() {
    let server = Server::start_args("30s", &["--max-connections", "2", "--max-per-address", "2"]);
    let mut held: Vec<TcpStream> = (0..2).map(|_| server.connect_from("127.0.0.2")).collect();
    for s in &mut held {
        assert!(greeted(s, RUN_DEADLINE));
    }
    let mut queued = server.connect_from("127.0.0.3");
    // A greeting now would be a bug; its absence for a while is all a test can see.
    assert!(!greeted(&mut queued, Duration::from_millis(300)));
    deliver(held.remove(0), b"done");
    assert!(
        greeted(&mut queued, RUN_DEADLINE),
        "not served once a slot was free"
    );
    deliver(queued, b"queued");
    assert_eq!(server.read(1), b"done");
    // 2 is the one still held.
    assert_eq!(server.read(3), b"queued");
}

/// Out of descriptors, `accept` fails again and again: serve backs off, logs at most a line a
/// second (with a count), and serves again once descriptors are free.
#[test]
fn accept_failures_back_off_and_log_once_a_second() {
    use std::os::unix::process::CommandExt;
    let limit = 40;
    let server = Server::start_with(
        "30s",
        tempfile::tempdir().unwrap(),
        &["--max-connections", "500", "--max-per-address", "500"],
        move |cmd| {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    assert_eq!(server.logged("more than the descriptor limit"), 1);
    let clients: Vec<TcpStream> = (0..2 * limit)
        .map(|_| server.connect_from("127.0.0.2"))
        .collect();
    wait_for("accept to fail", || server.logged("accept failed") >= 1);
    let first = Instant::now();
    // Watch the log for a while: the throttle allows one line a second, and the lines after
    // the first count the failures of their second (on a loaded machine the first may take
    // a while to come: wait for it, then for the window).
    assert!(
        wait_until(Duration::from_secs(30), || {
            server.logged("times in the last second") >= 1
        }),
        "no count reported: {:?}",
        server.log.lock().unwrap()
    );
    let window = Duration::from_millis(2500);
    wait_until(window.saturating_sub(first.elapsed()), || false);
    let lines = server.logged("accept failed");
    let allowed = 1 + (first.elapsed().as_secs() as usize) + 1;
    assert!(
        lines <= allowed,
        "{lines} accept lines in {:?}: {:?}",
        first.elapsed(),
        server.log.lock().unwrap()
    );
    drop(clients);
    // Descriptors are free again: served.
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "after", b"after the storm");
    server.send("127.0.0.1", &file).assert_success();
    // The storm's last failures, if any went unlogged, are counted in one line when accept
    // works again (none when the last failure was itself the one logged that second); the
    // line is read from the log by another thread, so give it a moment, never twice.
    wait_until(Duration::from_secs(2), || {
        server.logged("accept works again") >= 1
    });
    assert!(
        server.logged("accept works again") <= 1,
        "the storm's last count, twice: {:?}",
        server.log.lock().unwrap()
    );
}

/// Received files are 0600, or exactly --mode, whatever the umask.
#[test]
fn files_are_private_or_exactly_mode() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mode_of = |server: &Server, n: u64| {
        std::fs::metadata(server.path(&format!("{n}.file")))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "f", b"private");
    let server = Server::start("10s");
    server.send("127.0.0.1", &file).assert_success();
    assert_eq!(mode_of(&server, 1), 0o600);
    let mut err = server.connect("127.0.0.1");
    err.write_all(b"x").unwrap();
    wait_for("data", || server.path(".2.file.part").exists());
    reset(err);
    wait_for("2.file", || server.path("2.file").exists());
    assert_eq!(mode_of(&server, 2), 0o600, "an ERROR file too");
    let server = Server::start_with(
        "10s",
        tempfile::tempdir().unwrap(),
        &["--mode", "644"],
        |cmd| {
            // SAFETY: umask is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0o077);
                    Ok(())
                });
            }
        },
    );
    server.send("127.0.0.1", &file).assert_success();
    assert_eq!(mode_of(&server, 1), 0o644);
    for bad in ["888", "400", "1777"] {
        let dir = tempfile::tempdir().unwrap();
        let out = run(accio()
            .args(["serve", "5000"])
            .arg(dir.path())
            .args(["--mode", bad]));
        assert_eq!(out.code(), Some(2), "--mode {bad}: {}", out.stderr);
    }
}

/// `ERROR` goes through the file's own descriptor: a symlink put in place of the part file
/// meanwhile is not written through.
#[test]
fn error_is_written_through_the_descriptor_not_the_name() {
    let server = Server::start("10s");
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = write_file(victim_dir.path(), "victim", b"must stay");
    let mut s = server.connect("127.0.0.1");
    s.write_all(b"partial").unwrap();
    wait_for("the part file", || {
        std::fs::metadata(server.path(".1.file.part")).is_ok_and(|m| m.len() == 7)
    });
    let link = server.path("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::fs::rename(&link, server.path(".1.file.part")).unwrap();
    reset(s);
    wait_for("1.file", || {
        server.path("1.file").symlink_metadata().is_ok()
    });
    assert_eq!(std::fs::read(&victim).unwrap(), b"must stay");
}

/// --max-size: a larger transfer is cut, reset, and its file holds ERROR; one at the limit
/// is received.
#[test]
fn max_size_cuts_larger_transfers() {
    let server = Server::start_args("10s", &["--max-size", "1K"]);
    let src = tempfile::tempdir().unwrap();
    let exact = write_file(src.path(), "exact", &pattern(1024, 60));
    server.send("127.0.0.1", &exact).assert_success();
    assert_eq!(server.read(1), pattern(1024, 60));
    let over = write_file(src.path(), "over", &pattern(100_000, 61));
    let out = server.send("127.0.0.1", &over);
    assert_ne!(out.code(), Some(0));
    wait_for("2.file", || server.path("2.file").exists());
    assert_eq!(server.read(2), b"ERROR");
}

/// --deadline: a connection that keeps sending, slower than the idle rule would catch, is
/// cut when its time is up.
#[test]
fn deadline_cuts_a_slow_connection() {
    let server = Server::start_args("10s", &["--deadline", "1s"]);
    let mut s = server.connect("127.0.0.1");
    let start = Instant::now();
    // One byte every 100 ms, for up to the test's deadline: the server must cut it first.
    let cut = loop {
        if s.write_all(b"x").is_err() {
            break true;
        }
        if start.elapsed() > RUN_DEADLINE {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(cut, "not cut by --deadline");
    wait_for("1.file", || server.path("1.file").exists());
    assert_eq!(server.read(1), b"ERROR");
    assert!(start.elapsed() >= Duration::from_millis(900));
}

/// --listen: only that address.
#[test]
fn listen_chooses_the_address() {
    let server = Server::start_args("10s", &["--listen", "127.0.0.1"]);
    let src = tempfile::tempdir().unwrap();
    let file = write_file(src.path(), "f", b"on 127.0.0.1");
    server.send("127.0.0.1", &file).assert_success();
    assert_eq!(server.read(1), b"on 127.0.0.1");
    let err = TcpStream::connect(("127.0.0.2", server.port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    if have_ipv6() {
        let err = TcpStream::connect(("::1", server.port)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

/// At shutdown, connections that have sent nothing end at once (no file: their clients were
/// never confirmed), without waiting for the idle timeout.
#[test]
fn shutdown_ends_idle_connections_at_once() {
    let mut server = Server::start("60s");
    let mut idle: Vec<TcpStream> = (0..5).map(|_| server.connect("127.0.0.1")).collect();
    server.signal(libc::SIGTERM);
    // Within RUN_DEADLINE (30 s), well under the 60 s idle timeout.
    assert_eq!(server.wait(), Some(0));
    for s in &mut idle {
        let (got, _) = read_all(s);
        assert!(got.is_empty());
    }
    assert!(server.listing().is_empty(), "{:?}", server.listing());
}

/// The real system calls, traced: the confirming close of the socket comes after the file's
/// `fdatasync`, its `renameat2` to `1.file`, and an `fsync` of DIR, in that order. (The same
/// order is checked without strace through the code's own record, in src/serve.)
#[test]
#[ignore = "needs root and strace: cargo test --test serve -- --ignored as_root_"]
fn as_root_syscalls_confirm_after_data_rename_and_directory_sync() {
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs strace"
    );
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace");
    let trace_arg = trace.to_str().unwrap().to_string();
    let mut server = Server::start_under(
        &[
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=accept4,fdatasync,renameat2,fsync,close",
            "-o",
            &trace_arg,
        ],
        "10s",
        tempfile::tempdir().unwrap(),
        &[],
        |_| {},
    );
    let s = server.connect("127.0.0.1");
    deliver(s, b"traced");
    assert_eq!(server.read(1), b"traced");
    // strace's child is serve: stop it so that strace writes everything and exits.
    let strace_pid = server.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let serve_pid: libc::pid_t = children
        .split_whitespace()
        .next()
        .expect("serve under strace")
        .parse()
        .unwrap();
    // SAFETY: signalling the serve process this test started (under strace).
    assert_eq!(unsafe { libc::kill(serve_pid, libc::SIGTERM) }, 0);
    server.wait();
    let calls = completed_calls(&std::fs::read_to_string(&trace).unwrap());
    let sock = calls
        .iter()
        .find_map(|c| {
            c.strip_prefix("accept4(")
                .and_then(|r| r.rsplit("= ").next()?.trim().parse::<i32>().ok())
                .filter(|fd| *fd >= 0)
        })
        .expect("an accepted connection in the trace");
    let at = |what: &dyn Fn(&str) -> bool, after: usize, name: &str| {
        calls
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, c)| what(c))
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {name} after call {after} in {calls:#?}"))
    };
    let accepted = at(
        &|c| c.starts_with("accept4(") && c.ends_with(&format!("= {sock}")),
        0,
        "accept",
    );
    let synced = at(
        &|c| c.starts_with("fdatasync(") && c.ends_with("= 0"),
        accepted,
        "fdatasync",
    );
    let renamed = at(
        &|c| c.starts_with("renameat2(") && c.contains("\"1.file\"") && c.ends_with("= 0"),
        accepted,
        "renameat2 to 1.file",
    );
    let dir_synced = at(
        &|c| c.starts_with("fsync(") && c.ends_with("= 0"),
        renamed,
        "fsync after the rename",
    );
    let closed = at(
        &|c| c.starts_with(&format!("close({sock})")),
        accepted,
        "close of the socket",
    );
    assert!(synced < renamed, "data sync after the rename: {calls:#?}");
    assert!(
        dir_synced < closed,
        "socket closed before the directory sync: {calls:#?}"
    );
}

/// strace -f output as completed calls in order of completion, without pids: an
/// `<unfinished ...>` call joined with its `<... resumed>` line.
fn completed_calls(trace: &str) -> Vec<String> {
    let mut pending: std::collections::HashMap<&str, String> = Default::default();
    let mut calls = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(start) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid, start.trim_end().to_string());
        } else if rest.starts_with("<... ") {
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            let start = pending.remove(pid).unwrap_or_default();
            calls.push(format!("{start}{tail}").trim().to_string());
        } else {
            calls.push(rest.trim().to_string());
        }
    }
    calls
}
