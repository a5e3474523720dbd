//! `accio watch` as systemd runs it: the real binary, a real `accio serve` as the receiver,
//! and a datagram socket owned by the test as `NOTIFY_SOCKET`, the way systemd listens.
//! Checks READY → STATUS (live counts) → STOPPING, watchdog pings, the SIGUSR1 summary,
//! and the log shapes (journald, JSON).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;

use support::receiver::Receiver;
use support::wait::{wait_for, wait_until, DEADLINE};
use support::BIN;

/// A scratch directory (for logs), a receiver in it, and a spool sending to that receiver
/// (`top`: extra top-level keys of its config, see [`Spool::with_top_level`]).
fn setup(top: &str) -> (tempfile::TempDir, Receiver, Spool) {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&tmp.path().join("received"));
    let spool = Spool::with_top_level(receiver.port, top);
    (tmp, receiver, spool)
}

/// The spool and a config for one service under test.
struct Spool {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Spool {
    /// `top`: extra top-level keys, such as `log_level = "warn"`.
    fn with_top_level(port: u16, top: &str) -> Spool {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["outbox", "sent", "failed"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let config = root.join("accio.toml");
        std::fs::write(
            &config,
            format!(
                r#"concurrency = 2
{top}

[server]
host = "127.0.0.1"
port = {port}

[timeouts]
connect = "2s"
handshake = "2s"
stall = "2s"

[retry]
initial = "100ms"
max = "1s"
max_attempts = 3

[[watch]]
dir = "{root}/outbox"
done_dir = "{root}/sent"
failed_dir = "{root}/failed"
on_success = "move"
"#,
                root = root.display()
            ),
        )
        .unwrap();
        Spool {
            _tmp: tmp,
            root,
            config,
        }
    }

    /// Drops a file the documented way: write under a hidden name, then rename.
    fn drop_file(&self, name: &str, content: &[u8]) {
        support::watch::drop_file(&self.root.join("outbox"), name, content)
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.root.join(sub)).unwrap().count()
    }
}

/// The test's end of `NOTIFY_SOCKET`: every line of every datagram, in arrival order.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    lines: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        // Own short directory: socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("accio-nt")
            .tempdir_in("/tmp")
            .unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            lines: Vec::new(),
            _dir: dir,
        }
    }

    fn drain(&mut self) {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.lines
                .extend(msg.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }

    /// Index of the first line at or after `from` that satisfies `pred`, waiting for it.
    fn wait_line(&mut self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        let mut found = None;
        let seen = wait_until(DEADLINE, || {
            self.drain();
            found = self.lines.iter().skip(from).position(|l| pred(l));
            found.is_some()
        });
        assert!(seen, "timed out waiting for {what}; got {:#?}", self.lines);
        from + found.unwrap()
    }

    fn count(&self, line: &str) -> usize {
        self.lines.iter().filter(|l| *l == line).count()
    }
}

/// `accio watch` under test. Its stderr goes to a file (or wherever `stderr` says).
struct Service {
    child: Child,
    log: Option<PathBuf>,
}

impl Service {
    fn command(config: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["watch", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("ACCIO_LOG_FORMAT")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    fn spawn_logging_to(mut cmd: Command, log: &Path) -> Service {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd.stderr(file).spawn().unwrap();
        Service {
            child,
            log: Some(log.to_path_buf()),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().unwrap()).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (waiting up to the deadline).
    fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let mut status = None;
        wait_for("accio watch to exit after SIGTERM", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.and_then(|s| s.code())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `accio watch` asked for watchdog pings every `usec`/2 µs on `notify`, as systemd asks:
/// systemd sets WATCHDOG_PID to the service's pid, and a shell that sets it to its own pid
/// and then execs accio (same pid) does just that.
fn watchdog_command(config: &Path, notify: &Path, usec: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"WATCHDOG_PID=$$ exec "$0" "$@""#,
        BIN,
        "watch",
        "--config",
    ])
    .arg(config)
    .env("RUST_LOG", "info")
    .env("NOTIFY_SOCKET", notify)
    .env("WATCHDOG_USEC", usec)
    .env_remove("JOURNAL_STREAM")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

fn status_counts(line: &str) -> Option<&str> {
    line.strip_prefix("STATUS=")
}

#[test]
fn ready_then_status_with_counts_then_stopping() {
    let (tmp, receiver, spool) = setup("");
    // A backlog file: READY=1 comes once every directory is watched; the backlog is read
    // after (a large one must not delay it), and sent like any file.
    spool.drop_file("backlog.txt", b"from before the start\n");
    let mut notify = NotifySocket::bind();

    let mut cmd = Service::command(&spool.config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));

    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    // STATUS= sent with READY (same datagram, so next line) has the live counts.
    let at_ready = notify.wait_line(ready, "STATUS with READY", |l| l.starts_with("STATUS="));
    let counts = status_counts(&notify.lines[at_ready]).unwrap().to_string();
    assert!(
        counts.starts_with("watching 1 dirs, "),
        "STATUS at READY: {counts}"
    );

    // Live counts move: both files delivered shows as "2 sent".
    spool.drop_file("new.txt", b"dropped while running\n");
    let sent = notify.wait_line(ready, "STATUS with 2 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 2 sent")
    });
    assert!(
        notify.lines[sent].contains("0 failed"),
        "{}",
        notify.lines[sent]
    );
    wait_for("both files received", || receiver.received().len() == 2);
    let mut got = receiver.received();
    got.sort();
    assert_eq!(
        got,
        vec![
            b"dropped while running\n".to_vec(),
            b"from before the start\n".to_vec()
        ]
    );
    wait_for("both files moved to sent", || spool.count("sent") == 2);

    let code = service.terminate();
    let stopping = notify.wait_line(sent, "STOPPING=1", |l| l == "STOPPING=1");
    assert!(ready < sent && sent < stopping, "{:#?}", notify.lines);
    // STATUS= keeps reporting while transfers in flight drain.
    assert!(
        notify.lines[stopping + 1].starts_with("STATUS=stopping: watching"),
        "{:#?}",
        notify.lines
    );
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        service.log()
    );
    notify.drain();
    // Once each, and nothing claims readiness after the stop began.
    assert_eq!(notify.count("READY=1"), 1, "{:#?}", notify.lines);
    assert_eq!(notify.count("STOPPING=1"), 1, "{:#?}", notify.lines);
    assert!(
        notify.lines[stopping..].iter().all(|l| l != "READY=1"),
        "{:#?}",
        notify.lines
    );
}

#[test]
fn watchdog_pings_when_the_unit_asks() {
    let (tmp, _receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();

    let cmd = watchdog_command(&spool.config, &notify.path, "200000");
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));

    notify.wait_line(0, "READY=1", |l| l == "READY=1");
    // Every 100 ms: three more pings take ~300 ms; the deadline is only a safety net.
    let before = notify.count("WATCHDOG=1");
    let pinged = wait_until(DEADLINE, || {
        notify.drain();
        notify.count("WATCHDOG=1") >= before + 3
    });
    assert!(pinged, "no watchdog pings: {:#?}", notify.lines);
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
}

#[test]
fn no_watchdog_pings_for_another_pid() {
    let (tmp, _receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();

    // Inherited variables meant for another process (pid 1) must not make us ping.
    let mut cmd = Service::command(&spool.config);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "20000")
        .env("WATCHDOG_PID", "1");
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));

    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    // A delivery round trip takes far longer than the 10 ms ping period would.
    spool.drop_file("a.txt", b"a");
    notify.wait_line(ready, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    assert_eq!(service.terminate(), Some(0));
    notify.drain();
    assert_eq!(notify.count("WATCHDOG=1"), 0, "{:#?}", notify.lines);
}

#[test]
fn sigusr1_logs_a_summary_line() {
    let (tmp, receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();

    let mut cmd = Service::command(&spool.config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));
    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    spool.drop_file("one.txt", b"1");
    notify.wait_line(ready, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });

    service.signal(libc::SIGUSR1);
    wait_for("the SIGUSR1 summary in the log", || {
        service
            .log()
            .contains("status: watching 1 dirs, 0 in flight, 0 queued, 1 sent, 0 failed")
    });
    // The signal did not stop it: it still delivers, and still stops cleanly.
    spool.drop_file("two.txt", b"2");
    wait_for("the second file received", || {
        receiver.received().len() == 2
    });
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
}

#[test]
fn sigusr1_works_without_systemd() {
    let (tmp, receiver, spool) = setup("");
    let mut service = Service::spawn_logging_to(
        Service::command(&spool.config),
        &tmp.path().join("watch.log"),
    );
    // No NOTIFY_SOCKET: readiness seen from the outside, by a delivery.
    spool.drop_file("one.txt", b"1");
    wait_for("the file received", || receiver.received().len() == 1);
    wait_for("the file moved to sent", || spool.count("sent") == 1);
    // The counter is updated once the file is in done_dir; ask until it shows.
    wait_for("the SIGUSR1 summary with 1 sent", || {
        service.signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(50));
        service.log().contains("1 sent, 0 failed")
    });
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
}

/// True if the line has an RFC 3339 date-time such as `2026-11-24T20:13:05`.
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..10].iter().all(u8::is_ascii_digit)
            && w[10] == b'T'
    })
}

/// Runs the service until READY, asks for a SIGUSR1 summary, stops it; returns its stderr.
/// `journal`: stderr is a stream socket (as journald gives) and `JOURNAL_STREAM` is set to
/// `Some(value)`, or to that socket's own `DEV:INODE` with `Some("")`.
fn run_and_capture(extra_args: &[&str], journal: Option<&str>) -> String {
    let (_tmp, _receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();

    let mut cmd = Service::command(&spool.config);
    cmd.args(extra_args)
        .env("NOTIFY_SOCKET", &notify.path)
        // The stream, not the native socket of a journald that may run on this machine.
        .env("ACCIO_JOURNAL_NATIVE", "0");

    // journald hands the service a connected stream socket; do the same.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(theirs.try_clone().unwrap()))
        .metadata()
        .unwrap();
    if let Some(value) = journal {
        let value = if value.is_empty() {
            format!("{}:{}", meta.dev(), meta.ino())
        } else {
            value.to_string()
        };
        cmd.env("JOURNAL_STREAM", value);
    }
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let output = Arc::clone(&output);
        let mut ours = ours;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = ours.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let child = cmd
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    let mut service = Service { child, log: None };
    // The Command holds a copy of our socket end: drop it so EOF comes when the child exits.
    drop(cmd);

    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    spool.drop_file("one.txt", b"1");
    notify.wait_line(ready, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    service.signal(libc::SIGUSR1);
    wait_for("the SIGUSR1 summary", || {
        String::from_utf8_lossy(&output.lock().unwrap()).contains("status: watching")
    });
    assert_eq!(service.terminate(), Some(0));
    reader.join().unwrap();
    let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();
    text
}

#[test]
fn under_journald_no_ansi_no_timestamps_and_priority_prefixes() {
    let text = run_and_capture(&[], Some(""));
    assert!(
        !text.contains('\x1b'),
        "ANSI escape under journald:\n{text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{text}");
    for line in &lines {
        assert!(!has_timestamp(line), "timestamp under journald: {line}");
        let prio = line.as_bytes();
        assert!(
            prio.len() > 3
                && prio[0] == b'<'
                && (b'0'..=b'7').contains(&prio[1])
                && prio[2] == b'>',
            "no syslog priority prefix: {line}"
        );
    }
    let summary = lines
        .iter()
        .find(|l| l.contains("status: watching"))
        .unwrap();
    assert!(summary.starts_with("<6>"), "info is priority 6: {summary}");
}

#[test]
fn journal_stream_of_another_socket_is_not_the_journal() {
    // Inherited JOURNAL_STREAM, but stderr was redirected elsewhere: plain lines with
    // timestamps, and still no colors since stderr is not a terminal.
    let text = run_and_capture(&[], Some("1:1"));
    assert!(!text.contains('\x1b'), "ANSI escape on a socket:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.contains("status: watching"))
        .unwrap();
    assert!(has_timestamp(summary), "no timestamp: {summary}");
    assert!(
        !summary.starts_with('<'),
        "priority prefix off the journal: {summary}"
    );
}

/// JSON lines, one object each; under journald each behind its syslog priority prefix, so
/// `journalctl -p warning` works in that format too.
#[test]
fn log_format_json_is_one_object_per_line() {
    let text = run_and_capture(&["--log-format", "json"], Some(""));
    let mut saw_summary = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (prio, json) = line.split_at(3.min(line.len()));
        let want = match serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["level"].as_str().map(str::to_string))
            .as_deref()
        {
            Some("ERROR") => "<3>",
            Some("WARN") => "<4>",
            Some("INFO") => "<6>",
            _ => "<7>",
        };
        assert_eq!(prio, want, "priority of {line}");
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v.get("level").is_some(), "no level: {line}");
        assert!(v.get("timestamp").is_some(), "no timestamp: {line}");
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            saw_summary |= m.starts_with("status: watching 1 dirs");
        }
    }
    assert!(saw_summary, "no SIGUSR1 summary in:\n{text}");
}

#[test]
fn a_config_that_does_not_load_never_reports_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "concurrency = \"many\"\n").unwrap();
    let mut notify = NotifySocket::bind();
    let mut cmd = Service::command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "error names the file: {err}");
    notify.drain();
    assert_eq!(notify.count("READY=1"), 0, "{:#?}", notify.lines);
}

/// Runs the service until one file is delivered, then stops it; returns its stderr (a file).
fn run_to_one_delivery(spool: &Spool, receiver: &Receiver, rust_log: Option<&str>) -> String {
    let mut notify = NotifySocket::bind();
    let mut cmd = Service::command(&spool.config);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let log = spool
        .root
        .join(format!("watch-{}.log", rust_log.unwrap_or("none")));
    let mut service = Service::spawn_logging_to(cmd, &log);
    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    let before = receiver.received().len();
    spool.drop_file(&format!("f{before}.txt"), b"x");
    notify.wait_line(ready, "STATUS with a delivery", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
    service.log()
}

#[test]
fn level_from_config_unless_rust_log_is_set() {
    let (_tmp, receiver, spool) = setup(r#"log_level = "warn""#);

    // The config says warn: no info lines at all (the log is complete: the process exited).
    let quiet = run_to_one_delivery(&spool, &receiver, None);
    assert!(
        !quiet.contains(" INFO "),
        "info lines with log_level = \"warn\":\n{quiet}"
    );
    // RUST_LOG wins over the config.
    let loud = run_to_one_delivery(&spool, &receiver, Some("info"));
    assert!(
        loud.contains("INFO"),
        "no info lines with RUST_LOG=info:\n{loud}"
    );
}

#[test]
fn on_a_terminal_colors_and_timestamps() {
    // util-linux `script` gives the service a pseudo-terminal as stderr.
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "needs script(1) (util-linux's bsdutils)"
    );
    let (tmp, _receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();
    let pidfile = tmp.path().join("pid");
    let inner = format!(
        "echo $$ > '{}'; exec '{}' watch --config '{}'",
        pidfile.display(),
        BIN,
        spool.config.display()
    );
    // The same environment as the other tests, but through `script`.
    let mut cmd = Service::command(&spool.config);
    let mut script = Command::new("script");
    script.args(["-qefc", &inner, "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    cmd.env_clear();
    let out = tmp.path().join("terminal.out");
    // `script` copies what the terminal shows to its stdout.
    let child = script
        .env("NOTIFY_SOCKET", &notify.path)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut wrapper = Service { child, log: None };

    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");
    spool.drop_file("one.txt", b"1");
    notify.wait_line(ready, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the service's pid, read from the file its shell wrote.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_for("script to end after the service stopped", || {
        wrapper.child.try_wait().unwrap().is_some()
    });
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
    assert!(text.contains("\x1b["), "no colors on a terminal:\n{text}");
    assert!(
        text.lines().any(has_timestamp),
        "no timestamps on a terminal:\n{text}"
    );
}

/// True if `prog` runs (`--version`).
fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The shipped sysusers, tmpfiles and example config, together, as the real `accio` user:
/// the user and spool are made in a scratch root, which is bind-mounted over /var/spool in a
/// private mount namespace; the service runs there as `accio` and delivers a file.
/// Needs root, util-linux (`unshare`, `setpriv`) and systemd's sysusers/tmpfiles (`.ci/run`
/// installs them and runs it as root); run on request, it fails saying what is missing.
#[test]
#[ignore = "needs root: cargo test --test systemd -- --ignored as_root_"]
fn as_root_shipped_files_make_a_working_service_as_user_accio() {
    // SAFETY: getuid(2) has no preconditions.
    assert!(unsafe { libc::getuid() } == 0, "needs root");
    for tool in ["unshare", "setpriv", "systemd-sysusers", "systemd-tmpfiles"] {
        assert!(have(tool), "needs {tool} (util-linux, systemd)");
    }
    assert!(Path::new("/var/spool").is_dir(), "needs /var/spool");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&tmp.path().join("received"));
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc/accio")).unwrap();
    // Traversable by the service user, like a real root.
    for dir in [tmp.path(), root.as_path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let rooted = |tool: &str, file: &str, extra: &[&str]| {
        let out = Command::new(tool)
            .arg(format!("--root={}", root.display()))
            .args(extra)
            .arg(repo.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rooted("systemd-sysusers", "systemd/accio.sysusers", &[]);
    rooted("systemd-tmpfiles", "systemd/accio.tmpfiles", &["--create"]);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("accio:x:"))
        .and_then(|rest| rest.split(':').next())
        .expect("sysusers made no accio user")
        .parse()
        .unwrap();

    // The example config as shipped, only pointed at our receiver.
    let example = std::fs::read_to_string(repo.join("config/accio.toml")).unwrap();
    assert!(example.contains("port = 5000"), "the example's port moved");
    let config = root.join("etc/accio/accio.toml");
    std::fs::write(
        &config,
        example.replacen("port = 5000", &format!("port = {}", receiver.port), 1),
    )
    .unwrap();

    let mut notify = NotifySocket::bind();
    // The service user must reach the notify socket, as it reaches systemd's.
    for p in [notify.path.parent().unwrap(), notify.path.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let script = format!(
        "mount --bind '{spool}' /var/spool && exec setpriv --reuid={uid} --regid={uid} \
         --clear-groups '{BIN}' watch --config '{config}'",
        spool = root.join("var/spool").display(),
        config = config.display()
    );
    let mut cmd = Service::command(&config);
    let mut unshare = Command::new("unshare");
    unshare.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => unshare.env(k, v),
            None => unshare.env_remove(k),
        };
    }
    cmd.env_clear();
    unshare
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut service = Service::spawn_logging_to(unshare, &tmp.path().join("watch.log"));

    let ready = notify.wait_line(0, "READY=1 from the service as accio", |l| l == "READY=1");
    // A producer (root here) drops a file the documented way.
    let outbox = root.join("var/spool/accio/outbox");
    std::fs::write(outbox.join(".report.part"), b"shipped files work\n").unwrap();
    std::fs::rename(outbox.join(".report.part"), outbox.join("report")).unwrap();
    notify.wait_line(ready, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    wait_for("the file received", || {
        receiver.received() == vec![b"shipped files work\n".to_vec()]
    });
    let sent = root.join("var/spool/accio/sent/report");
    wait_for("the file moved to sent", || sent.exists());

    // The unit's reload check, as systemd runs it (the service's user, its spool): quiet
    // on the shipped file, exit 78 on a broken one, before any signal is sent.
    let unit = std::fs::read_to_string(repo.join("systemd/accio.service")).unwrap();
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/bin/accio check-config --quiet --config /etc/accio/accio.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    let check = |what: &str| {
        let cmd = reload[0]
            .replace("/usr/bin/accio", BIN)
            .replace("/etc/accio/accio.toml", &config.display().to_string());
        let script = format!(
            "mount --bind '{spool}' /var/spool && exec setpriv --reuid={uid} --regid={uid} \
             --clear-groups {cmd}",
            spool = root.join("var/spool").display(),
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        eprintln!("reload check ({what}): {out:?}");
        out
    };
    let good = check("shipped file");
    assert!(good.status.success() && good.stdout.is_empty() && good.stderr.is_empty());
    let shipped = std::fs::read(&config).unwrap();
    std::fs::write(&config, "concurrency = \"many\"\n").unwrap();
    let bad = check("broken file");
    assert_eq!(bad.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("ERROR: "));
    std::fs::write(&config, shipped).unwrap();
    assert_eq!(
        std::fs::metadata(&sent).unwrap().uid(),
        0,
        "moved, not copied"
    );
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
}

#[test]
fn reload_is_bracketed_by_reloading_and_ready() {
    let (tmp, _receiver, spool) = setup("");
    let mut notify = NotifySocket::bind();
    let mut cmd = Service::command(&spool.config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));
    let ready = notify.wait_line(0, "READY=1", |l| l == "READY=1");

    // A valid config: RELOADING=1, then READY=1 once the new pipeline is watching.
    service.signal(libc::SIGHUP);
    let reloading = notify.wait_line(ready, "RELOADING=1", |l| l == "RELOADING=1");
    let reloaded = notify.wait_line(reloading, "READY=1 after reload", |l| l == "READY=1");
    // With CLOCK_MONOTONIC now, in the same message, as Type=notify-reload requires.
    let usec: u64 = notify.lines[reloading + 1]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC after RELOADING=1: {:?}", notify.lines));
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime(2).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 60_000_000,
        "{usec} vs {now_usec}"
    );
    assert!(notify.lines[reloading + 2].starts_with("STATUS=reloading: "));

    // An invalid one: still READY=1 at the end (running on the old config), and delivering.
    let good = std::fs::read_to_string(&spool.config).unwrap();
    std::fs::write(&spool.config, "concurrency = \"many\"\n").unwrap();
    service.signal(libc::SIGHUP);
    let refused = notify.wait_line(reloaded + 1, "RELOADING=1 (bad config)", |l| {
        l == "RELOADING=1"
    });
    let back = notify.wait_line(refused, "READY=1 after a refused reload", |l| {
        l == "READY=1"
    });
    // STATUS= says it, until a reload is taken.
    assert!(
        notify.lines[back + 1].starts_with("STATUS=watching ")
            && notify.lines[back + 1].contains("; reload refused: ")
            && notify.lines[back + 1].contains("concurrency"),
        "{:?}",
        &notify.lines[back..]
    );
    std::fs::write(&spool.config, good).unwrap();
    spool.drop_file("after.txt", b"still running\n");
    notify.wait_line(back, "STATUS with 1 sent", |l| {
        l.starts_with("STATUS=") && l.contains(" 1 sent")
    });
    assert!(
        service.log().contains("reload refused"),
        "{}",
        service.log()
    );
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
}

#[test]
fn a_manager_that_never_reads_its_socket_cannot_freeze_the_service() {
    let (tmp, receiver, spool) = setup("");
    // Bound but never read: its queue fills with watchdog pings within a second.
    let notify = NotifySocket::bind();
    let cmd = watchdog_command(&spool.config, &notify.path, "2000");
    let mut service = Service::spawn_logging_to(cmd, &tmp.path().join("watch.log"));
    // Pings every 1 ms: the socket's queue is full long before these files arrive.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        spool.drop_file(&format!("f{i}"), format!("content {i}").as_bytes());
    }
    wait_for("all five files delivered and moved", || {
        receiver.received().len() == 5 && spool.count("sent") == 5
    });
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
    drop(notify);
}

/// One journal entry: its fields, in order.
type Entry = [(String, String)];

/// The fields of one datagram of journald's native protocol: `NAME=value\n`, or
/// `NAME\n`, a 64-bit little-endian length, the value and `\n` (for values with newlines).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = d.iter().position(|&b| b == b'=' || b == b'\n') {
        let name = String::from_utf8_lossy(&d[..end]).into_owned();
        if d[end] == b'=' {
            let rest = &d[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            out.push((name, String::from_utf8_lossy(&rest[..stop]).into_owned()));
            d = rest.get(stop + 1..).unwrap_or(&[]);
        } else {
            let rest = &d[end + 1..];
            let Some(len) = rest.get(..8) else { break };
            let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(value) = rest.get(8..8 + len) else {
                break;
            };
            out.push((name, String::from_utf8_lossy(value).into_owned()));
            d = rest.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    out
}

/// Under journald (stderr is the journal's stream) the service writes to the journal's
/// native socket: each entry with its syslog priority and the event's fields. The socket is
/// the test's, put at /run/systemd/journal/socket in a private mount namespace.
#[test]
#[ignore = "needs root: cargo test --test systemd -- --ignored as_root_"]
fn as_root_journal_entries_carry_priority_and_fields() {
    // SAFETY: getuid(2) has no preconditions.
    assert!(unsafe { libc::getuid() } == 0, "needs root");
    assert!(have("unshare"), "needs unshare (util-linux)");
    let (tmp, _receiver, spool) = setup("");
    let jdir = tmp.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let journal = UnixDatagram::bind(jdir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // stderr is a stream socket, named by JOURNAL_STREAM, as systemd sets it up.
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(theirs.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         mount --bind '{jdir}' /run/systemd/journal && exec '{BIN}' watch --config '{config}'",
        jdir = jdir.display(),
        config = spool.config.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    let mut service = Service { child, log: None };

    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let field =
        |e: &[(String, String)], n: &str| e.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut wait_entry = |what: &str, pred: &dyn Fn(&Entry) -> bool| {
        let mut buf = vec![0u8; 1 << 16];
        let found = wait_until(DEADLINE, || {
            while let Ok(n) = journal.recv(&mut buf) {
                entries.push(journal_fields(&buf[..n]));
            }
            entries.iter().any(|e| pred(e))
        });
        assert!(found, "no journal entry {what} in {entries:#?}");
        entries.iter().find(|e| pred(e)).unwrap().clone()
    };
    wait_entry("saying it runs", &|e| {
        field(e, "MESSAGE").is_some_and(|m| m.starts_with("accio watch is running"))
    });
    spool.drop_file("one.txt", b"1");
    let delivered = wait_entry("of the delivery", &|e| {
        field(e, "ACCIO_EVENT").as_deref() == Some("delivered")
    });
    assert_eq!(field(&delivered, "PRIORITY").as_deref(), Some("6"));
    assert_eq!(
        field(&delivered, "SYSLOG_IDENTIFIER").as_deref(),
        Some("accio")
    );
    assert!(field(&delivered, "ACCIO_PATH")
        .unwrap()
        .ends_with("outbox/one.txt"));
    assert!(field(&delivered, "ACCIO_DESTINATION")
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(field(&delivered, "MESSAGE")
        .unwrap()
        .starts_with("delivered "));

    // A warning: something that is not a regular file in the spool.
    let fifo = std::ffi::CString::new(
        spool
            .root
            .join("outbox/pipe")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let ignored = wait_entry("of the FIFO ignored", &|e| {
        field(e, "ACCIO_EVENT").as_deref() == Some("ignored")
    });
    assert_eq!(field(&ignored, "PRIORITY").as_deref(), Some("4"));
    assert_eq!(service.terminate(), Some(0));
}
