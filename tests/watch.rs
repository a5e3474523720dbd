//! End-to-end tests of `accio watch`: the real binary, real spool directories and real
//! filesystem events, with `accio serve` (or a server written here, where the test needs
//! one that misbehaves) as the receiver.

mod support;

use std::fs;
use std::io::Write;
use std::time::Duration;

use support::{net::*, receiver::*, scripted::*, wait::*, watch::*, BIN};

#[test]
fn renamed_files_are_delivered_and_moved_to_done() {
    let (dirs, recv, svc) = running(&Opts::default());
    let contents: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("file {i}\n").repeat(i + 1).into_bytes())
        .collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("f{i}"), c);
    }
    wait_for("5 files in done", || names(&dirs.done).len() == 5);
    assert!(names(&dirs.spool).is_empty());
    for c in &contents {
        assert_eq!(recv.times_received(c), 1);
    }
    assert_eq!(recv.count(), 5);
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(&fs::read(dirs.done.join(format!("f{i}"))).unwrap(), c);
    }
    let v = svc.wait_status("5 sent", |v| v.totals.sent == 5);
    assert_eq!((v.watches[0].sent, v.totals.failed), (5, 0), "{v:#?}");
}

/// A file already in the spool at start settles from its last write, not from its rename
/// into the spool: one written an hour ago and moved in just before the start goes at once,
/// while one written just now waits out the settle time (30 s here).
#[test]
fn a_backlog_moved_in_before_the_start_settles_from_its_last_write() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    // Written under a hidden name (ignored), then renamed in: the writers' convention.
    let staged = dirs.spool.join(".old.part");
    fs::write(&staged, b"written an hour ago").unwrap();
    set_mtime(
        &staged,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    // The rename sets its ctime to now; its content is an hour old.
    fs::rename(&staged, dirs.spool.join("old")).unwrap();
    fs::write(dirs.spool.join("fresh"), b"written just now").unwrap();
    let o = Opts {
        settle: "30s",
        ..Opts::default()
    };
    let _svc = Service::start(&config_file(&dirs, recv.port, &o));
    wait_for_within("the old file in done", Duration::from_secs(15), || {
        names(&dirs.done) == ["old"]
    });
    assert_eq!(names(&dirs.spool), ["fresh"], "sent before it settled");
}

#[test]
fn backlog_is_sent_oldest_first() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    // Name order is the reverse of age order.
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (age, name) in ["e", "d", "c", "b", "a"].iter().enumerate() {
        let p = dirs.spool.join(name);
        fs::write(&p, name.as_bytes()).unwrap();
        set_mtime(&p, base + Duration::from_secs(age as u64 * 60));
    }
    let o = Opts {
        concurrency: 1,
        ..Opts::default()
    };
    let _svc = Service::start(&config_file(&dirs, recv.port, &o));
    wait_for("5 files in done", || names(&dirs.done).len() == 5);
    let order: Vec<String> = recv
        .files()
        .values()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(order, ["e", "d", "c", "b", "a"]);
    assert!(names(&dirs.spool).is_empty());
}

#[test]
fn a_slow_writer_is_sent_once_complete() {
    let o = Opts::writers();
    let (dirs, recv, svc) = running(&o);
    // Written in place under its final name, with pauses longer than the settle time and
    // than the rescan interval: open but not closed means not ready.
    let mut f = fs::File::create(dirs.spool.join("slow")).unwrap();
    let mut expected = Vec::new();
    for i in 0..4 {
        let chunk = content(i, 1000);
        f.write_all(&chunk).unwrap();
        expected.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(300));
    }
    svc.wait_status("slow waiting for its writer", |v| {
        matches!(
            why_waiting(v, "slow"),
            Some(Why::WriterOpen | Why::WriterUnknown)
        )
    });
    assert_eq!(recv.count(), 0, "sent while still open for writing");
    drop(f);
    wait_for("slow in done", || dirs.done.join("slow").exists());
    assert_eq!(recv.times_received(&expected), 1);
    assert_eq!(recv.count(), 1);
}

#[test]
fn ignored_names_stay_in_the_spool() {
    let o = Opts {
        rescan: "200ms",
        ..Opts::default()
    };
    let (dirs, recv, svc) = running(&o);
    let ignored = [".hidden", "x.part", "y.tmp", "z~"];
    for n in ignored {
        fs::write(dirs.spool.join(n), n).unwrap();
    }
    dirs.drop_file("ok", b"ok");
    wait_for("ok in done", || dirs.done.join("ok").exists());
    // Two full rescans later, still only `ok` was sent.
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    dirs.drop_file("ok2", b"ok2");
    wait_for("ok2 in done", || dirs.done.join("ok2").exists());
    assert_eq!(recv.count(), 2);
    for n in ignored {
        assert!(dirs.spool.join(n).exists(), "{n}");
    }
}

#[test]
fn special_files_are_reported_once_and_never_sent() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let outside = dirs.root.path().join("outside.txt");
    fs::write(&outside, b"secret outside the spool").unwrap();
    std::os::unix::fs::symlink(&outside, dirs.spool.join("link")).unwrap();
    std::os::unix::fs::symlink(
        dirs.root.path().join("nowhere"),
        dirs.spool.join("dangling"),
    )
    .unwrap();
    std::os::unix::fs::symlink("loop", dirs.spool.join("loop")).unwrap();
    fs::create_dir(dirs.spool.join("sub")).unwrap();
    fs::write(dirs.spool.join("sub/inner"), b"inner").unwrap();
    fs::write(dirs.spool.join("before"), b"before").unwrap();
    let o = Opts {
        rescan: "200ms",
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, recv.port, &o));
    // These appear while it runs: the events path.
    let fifo = std::ffi::CString::new(
        dirs.spool
            .join("fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(dirs.spool.join("sock")).unwrap();
    std::os::unix::fs::symlink(&outside, dirs.spool.join("link2")).unwrap();
    dirs.drop_file("after", b"after");
    wait_for("before and after in done", || {
        dirs.done.join("before").exists() && dirs.done.join("after").exists()
    });
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 3);
    assert_eq!(recv.count(), 2);
    assert_eq!(recv.times_received(b"secret outside the spool"), 0);
    for n in ["link", "dangling", "loop", "sub", "fifo", "sock", "link2"] {
        assert!(
            fs::symlink_metadata(dirs.spool.join(n)).is_ok(),
            "{n} was touched"
        );
        let needle = format!("ignoring {}:", dirs.spool.join(n).display());
        assert_eq!(svc.log_count(&needle), 1, "{n}: reported not exactly once");
    }
    assert!(dirs.spool.join("sub/inner").exists());
}

#[test]
fn connection_failures_do_not_use_up_attempts_and_files_go_once_the_server_is_up() {
    let dirs = Dirs::new();
    let port = free_port();
    let o = Opts {
        max_attempts: 2,
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, port, &o));
    for i in 0..3 {
        dirs.drop_file(&format!("f{i}"), &content(i, 100));
    }
    // Well past max_attempts for each of them.
    svc.wait_log_n("not counted as a failed attempt", 15);
    assert_eq!(names(&dirs.spool).len(), 3);
    assert!(names(&dirs.failed).is_empty(), "{}", svc.log());
    let v = svc.status();
    assert!(destination_down(&v), "{v:#?}");
    assert_eq!((v.totals.failed, v.totals.sent), (0, 0), "{v:#?}");
    let recv = Receiver::start_on(&dirs.recv, port);
    wait_for("3 files in done", || names(&dirs.done).len() == 3);
    for i in 0..3 {
        assert_eq!(recv.times_received(&content(i, 100)), 1);
    }
    assert!(names(&dirs.failed).is_empty());
}

/// While a destination is down its files wait in its lane (taking no slots, not counted as
/// attempts), one probe at a time tests it, and once a probe succeeds they all go at once.
#[test]
fn files_waiting_for_a_down_destination_go_when_a_probe_succeeds() {
    let dirs = Dirs::new();
    let port = free_port();
    let o = Opts {
        initial: "100ms",
        max: "500ms",
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, port, &o));
    dirs.drop_file("waiting", b"waiting");
    svc.wait_log_n("not counted as a failed attempt", 3);
    dirs.drop_file("fresh", b"fresh");
    svc.wait_log_n("not counted as a failed attempt", 5);
    // Both wait for the destination; nothing was counted against them.
    assert_eq!(names(&dirs.spool), ["fresh", "waiting"]);
    let v = svc.wait_status("both waiting for the destination", |v| {
        ["fresh", "waiting"]
            .iter()
            .all(|n| why_waiting(v, n) == Some(&Why::DestinationDown))
    });
    assert!(destination_down(&v), "{v:#?}");
    assert_eq!(v.totals.failed, 0, "{v:#?}");
    let recv = Receiver::start_on(&dirs.recv, port);
    wait_for("both in done", || names(&dirs.done).len() == 2);
    svc.wait_log("reachable again;");
    assert_eq!(svc.log_count("is down:"), 1, "{}", svc.log());
    let v = svc.status();
    assert!(v.destinations[0].up, "{v:#?}");
    assert_eq!(recv.times_received(b"waiting"), 1);
    assert_eq!(recv.times_received(b"fresh"), 1);
}

#[test]
fn after_max_attempts_a_file_goes_to_failed_with_a_reason() {
    let dirs = Dirs::new();
    let port = failing_server();
    let o = Opts {
        max_attempts: 2,
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, port, &o));
    dirs.drop_file("bad", b"never delivered");
    wait_for("bad.reason in failed", || {
        dirs.failed.join("bad.reason").exists()
    });
    assert_eq!(
        fs::read(dirs.failed.join("bad")).unwrap(),
        b"never delivered"
    );
    let reason = fs::read_to_string(dirs.failed.join("bad.reason")).unwrap();
    assert!(reason.contains("attempts: 2"), "{reason}");
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
    assert!(names(&dirs.spool).is_empty());
    let v = svc.wait_status("1 failed", |v| v.totals.failed == 1);
    assert_eq!((v.watches[0].failed, v.totals.sent), (1, 0), "{v:#?}");
}

#[test]
fn a_file_modified_during_its_transfer_is_not_delivered_then_sent_again() {
    let dirs = Dirs::new();
    // The upload stops until the test has changed the file.
    let o = Opts {
        timeout: "10s",
        ..Opts::default()
    };
    let original = content(1, 16 << 20);
    let (svc, server, go_tx) = big_in_flight(&dirs, &o, &original);
    let mut f = fs::File::options()
        .append(true)
        .open(dirs.spool.join("big"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    drop(f);
    go_tx.send(()).unwrap();
    wait_for("big in done", || dirs.done.join("big").exists());
    let mut expected = original;
    expected.extend_from_slice(b"appended\n");
    let conns = server.conns();
    let clean: Vec<&Conn> = conns.iter().filter(|c| c.clean).collect();
    let summary: Vec<(usize, bool)> = conns.iter().map(|c| (c.bytes.len(), c.clean)).collect();
    assert_eq!(
        clean.len(),
        1,
        "exactly one connection may claim to be complete: {summary:?}\n{}",
        svc.log()
    );
    assert!(
        clean[0].bytes == expected,
        "the complete one has the final content"
    );
    assert!(conns.len() >= 2);
    assert_eq!(fs::read(dirs.done.join("big")).unwrap(), expected);
    svc.wait_log("changed while being sent");
}

#[test]
fn a_file_modified_after_it_was_sent_but_before_it_was_moved_is_sent_again() {
    let dirs = Dirs::new();
    let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let eof_tx = std::sync::Mutex::new(eof_tx);
    let go_rx = std::sync::Mutex::new(go_rx);
    let server = ScriptServer::start(move |n, stream| {
        let conn = read_rest(stream, Vec::new());
        if n == 0 {
            // Everything received; hold the confirming close until the file was changed.
            let _ = eof_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
        }
        conn
    });
    let svc = Service::start(&config_file(&dirs, server.port, &Opts::default()));
    dirs.drop_file("f", b"first version\n");
    eof_rx.recv_timeout(DEADLINE).unwrap();
    let mut f = fs::File::options()
        .append(true)
        .open(dirs.spool.join("f"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    drop(f);
    go_tx.send(()).unwrap();
    wait_for("f in done", || dirs.done.join("f").exists());
    assert_eq!(
        fs::read(dirs.done.join("f")).unwrap(),
        b"first version\nappended\n"
    );
    let conns = server.conns();
    assert!(
        conns
            .iter()
            .any(|c| c.clean && c.bytes == b"first version\nappended\n"),
        "the changed content was delivered: {conns:?}"
    );
    svc.wait_log("after it was sent");
}

#[test]
fn sigterm_lets_the_transfer_run_for_the_grace_then_exits_0_leaving_the_file() {
    let dirs = Dirs::new();
    // The transfer cannot finish until the service has exited; then the server sees how the
    // connection ended.
    let o = Opts {
        timeout: "20s",
        grace: "500ms",
        ..Opts::default()
    };
    let (mut svc, server, hold_tx) = big_in_flight(&dirs, &o, &content(7, 16 << 20));
    svc.signal(libc::SIGTERM);
    let st = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", svc.log());
    assert_eq!(names(&dirs.spool), ["big"]);
    assert!(names(&dirs.done).is_empty());
    assert!(svc.log().contains("did not finish within"), "{}", svc.log());
    hold_tx.send(()).unwrap();
    wait_for("the server saw the connection end", || {
        server.conns().len() == 1
    });
    let conn = &server.conns()[0];
    assert!(
        !conn.clean,
        "the cut transfer ended with a clean close, as if complete"
    );
    assert!(conn.bytes.len() < 16 << 20);
}

#[test]
fn sighup_adds_a_watch_and_a_bad_reload_keeps_the_old_config() {
    let dirs = Dirs::new();
    let dirs2 = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts::default();
    let one = config_text(&dirs, recv.port, &o);
    let cfg = write_config(&dirs, "a.toml", &one);
    let svc = Service::start(&cfg);
    dirs.drop_file("a1", b"a1");
    wait_for("a1 in done", || dirs.done.join("a1").exists());

    let two = format!("{one}\n{}", watch_table(&dirs2, &o));
    fs::write(&cfg, &two).unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("configuration reloaded");
    dirs2.drop_file("b1", b"b1");
    wait_for("b1 in the second done", || dirs2.done.join("b1").exists());

    fs::write(&cfg, format!("no_such_key = 1\n{two}")).unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("reload refused");
    assert!(svc.log().contains("no_such_key"), "{}", svc.log());
    dirs.drop_file("a2", b"a2");
    dirs2.drop_file("b2", b"b2");
    wait_for("a2 and b2 in done", || {
        dirs.done.join("a2").exists() && dirs2.done.join("b2").exists()
    });
    for c in [&b"a1"[..], b"b1", b"a2", b"b2"] {
        assert_eq!(recv.times_received(c), 1);
    }
}

#[test]
fn kill_9_during_a_burst_loses_nothing() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    // One at a time, so that the kill surely lands mid-burst.
    let o = Opts {
        concurrency: 1,
        ..Opts::default()
    };
    let cfg = config_file(&dirs, recv.port, &o);
    let mut svc = Service::start(&cfg);
    let n = 300;
    for i in 0..n {
        dirs.drop_file(&format!("f{i:03}"), &content(i, 2000));
    }
    wait_for("a fifth received", || recv.count() >= n / 5);
    svc.kill9();
    assert!(
        names(&dirs.done).len() < n,
        "the kill came too late to prove anything"
    );
    let _svc = Service::start(&cfg);
    wait_for("spool empty", || names(&dirs.spool).is_empty());
    let lost: Vec<usize> = (0..n)
        .filter(|&i| recv.times_received(&content(i, 2000)) == 0)
        .collect();
    assert_eq!(lost, Vec::<usize>::new(), "lost files");
    assert_eq!(names(&dirs.done).len(), n);
    // A transfer cut by the kill was reset, never closed as if complete: the receiver holds
    // whole files, or ERROR for a broken connection, never a truncated file.
    let whole: std::collections::HashSet<Vec<u8>> = (0..n).map(|i| content(i, 2000)).collect();
    for (k, c) in recv.files() {
        assert!(
            whole.contains(&c) || c == b"ERROR",
            "{k}.file is neither a whole file nor ERROR ({} bytes)",
            c.len()
        );
    }
}

#[test]
fn two_instances_on_one_spool_never_send_a_file_twice() {
    let mut dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let a = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    // Its own control socket, so that each can be asked what it sent.
    dirs.control = dirs.control.with_file_name("b.sock");
    let b = Service::start(&write_config(
        &dirs,
        "b.toml",
        &config_text(&dirs, recv.port, &Opts::default()),
    ));
    let n = 300;
    for i in 0..n {
        dirs.drop_file(&format!("f{i:03}"), &content(i, 500));
    }
    wait_for("all in done", || names(&dirs.done).len() == n);
    assert!(names(&dirs.spool).is_empty());
    let files = recv.files();
    let twice: Vec<usize> = (0..n)
        .filter(|&i| files.values().filter(|c| **c == content(i, 500)).count() != 1)
        .collect();
    assert_eq!(twice, Vec::<usize>::new(), "not received exactly once");
    assert_eq!(files.len(), n);
    // Each file counted once, by the one that sent it, and both took part.
    let (mut sa, mut sb) = (0, 0);
    wait_until(DEADLINE, || {
        (sa, sb) = (a.status().totals.sent, b.status().totals.sent);
        sa + sb == n as u64
    });
    assert_eq!(sa + sb, n as u64);
    assert!(sa > 0 && sb > 0, "a sent {sa}, b sent {sb}");
}

#[test]
fn on_success_delete_removes_delivered_files() {
    let o = Opts {
        delete: true,
        ..Opts::default()
    };
    let (dirs, recv, _svc) = running(&o);
    for i in 0..3 {
        dirs.drop_file(&format!("f{i}"), &content(i, 10));
    }
    wait_for("3 received", || recv.count() == 3);
    wait_for("spool empty", || names(&dirs.spool).is_empty());
    assert!(names(&dirs.done).is_empty());
    for i in 0..3 {
        assert_eq!(recv.times_received(&content(i, 10)), 1);
    }
}

#[test]
fn a_name_taken_in_done_gets_a_suffix() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    fs::write(dirs.done.join("a"), b"old").unwrap();
    fs::write(dirs.done.join("a.1"), b"old1").unwrap();
    let _svc = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    dirs.drop_file("a", b"new");
    wait_for("a.2 in done", || dirs.done.join("a.2").exists());
    assert_eq!(fs::read(dirs.done.join("a")).unwrap(), b"old");
    assert_eq!(fs::read(dirs.done.join("a.1")).unwrap(), b"old1");
    assert_eq!(fs::read(dirs.done.join("a.2")).unwrap(), b"new");
    assert_eq!(recv.times_received(b"new"), 1);
}

#[test]
fn an_invalid_config_is_refused_at_start() {
    let dirs = Dirs::new();
    let cfg = write_config(&dirs, "bad.toml", "concurrency = \"four\"\n");
    let out = std::process::Command::new(BIN)
        .args(["watch", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ERROR:"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn a_failed_move_to_done_keeps_the_file_and_is_retried_without_sending_again() {
    let (dirs, recv, svc) = running(&Opts::default());
    // done_dir stops being a directory (as good as a read-only or full disk: the rename fails).
    fs::remove_dir(&dirs.done).unwrap();
    fs::write(&dirs.done, b"in the way").unwrap();
    dirs.drop_file("a", b"payload");
    svc.wait_log("it stays in the spool (already delivered; not sent again)");
    // Retried with a growing delay, reported at ERROR once (the error does not change),
    // and the delivery itself is reported once.
    svc.wait_log("(failure 3)");
    assert_eq!(names(&dirs.spool), ["a"]);
    let log = svc.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("it stays in the spool"))
        .count();
    assert_eq!(errors, 1, "{log}");
    assert_eq!(svc.log_count("delivered /"), 1, "{log}");
    assert!(
        log.contains(&format!("cannot move {}", dirs.spool.join("a").display())),
        "{log}"
    );
    fs::remove_file(&dirs.done).unwrap();
    fs::create_dir(&dirs.done).unwrap();
    wait_for("a in done", || dirs.done.join("a").exists());
    assert!(names(&dirs.spool).is_empty());
    assert_eq!(fs::read(dirs.done.join("a")).unwrap(), b"payload");
    assert_eq!(recv.times_received(b"payload"), 1, "sent again");
    svc.wait_log("(delivered earlier) is now moved to");
}

/// The library entry point, as the daemon uses it: ready once watching, counters, and a
/// shutdown token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_ready_counts_and_stops_on_the_token() {
    use std::sync::Arc;
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    fs::write(dirs.spool.join("old"), b"old").unwrap();
    let watch = accio::config::WatchConfig {
        dir: dirs.spool.clone(),
        done_dir: Some(dirs.done.clone()),
        failed_dir: dirs.failed.clone(),
        on_success: accio::config::OnSuccess::Move,
        server: accio::client::Destination {
            host: "127.0.0.1".into(),
            port: recv.port,
        },
        server_concurrency: None,
        adaptive: true,
        confirm: accio::protocol::Confirm::Close,
        include: vec!["*".into()],
        exclude: accio::config::DEFAULT_EXCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect(),
        settle: Duration::from_millis(100),
        rescan_interval: Duration::from_secs(1),
        recursive: false,
        max_depth: 32,
        prune_empty_dirs: false,
    };
    let config = accio::config::Config {
        path: dirs.root.path().join("none.toml"),
        active_limit: 1000,
        concurrency: 2,
        timeouts: accio::protocol::Timeouts {
            connect: Duration::from_secs(2),
            handshake: Duration::from_secs(2),
            stall: Duration::from_secs(2),
            close: Duration::from_secs(2),
        },
        retry: accio::config::RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            max_attempts: 0,
            probe_max: Duration::from_millis(200),
        },
        shutdown_grace: Duration::from_secs(1),
        log_level: "info".into(),
        watches: vec![watch],
        control_socket: dirs.root.path().join("control.sock"),
        metrics_listen: None,
        writer_quiet: accio::config::defaults::WRITER_QUIET,
        stale_after: accio::config::defaults::STALE_AFTER,
        strict_modes: true,
        rates: accio::config::RateLimits::default(),
    };
    let stats = Arc::new(accio::status::Stats::default());
    let token = tokio_util::sync::CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(accio::watch::run(
        config,
        stats.clone(),
        token.clone(),
        Some(tx),
    ));
    rx.await.unwrap();
    let s = stats.snapshot();
    assert_eq!(s.watching, 1);
    for i in 0..3 {
        dirs.drop_file(&format!("f{i}"), &content(i, 100));
    }
    let st = stats.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("4 sent, nothing queued or in flight", || {
            let s = st.snapshot();
            (s.sent, s.failed, s.in_flight, s.queued) == (4, 0, 0, 0)
        })
    })
    .await
    .unwrap();
    assert!(names(&dirs.spool).is_empty());
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops after the token is cancelled")
        .unwrap()
        .unwrap();
    assert_eq!(stats.snapshot().watching, 0);
}

#[test]
fn done_dir_on_another_filesystem_gets_a_durable_copy() {
    use std::os::unix::fs::MetadataExt;
    let mut dirs = Dirs::new();
    let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm: skipped");
        return;
    };
    if fs::metadata(other.path()).unwrap().dev() == fs::metadata(&dirs.spool).unwrap().dev() {
        eprintln!("/dev/shm is on the spool's filesystem: skipped");
        return;
    }
    dirs.done = other.path().to_path_buf();
    fs::write(dirs.done.join("x"), b"taken").unwrap();
    let recv = Receiver::start(&dirs.recv);
    let _svc = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    let big = content(3, 1 << 20);
    dirs.drop_file("x", &big);
    wait_for("x.1 in done and the spool empty", || {
        dirs.done.join("x.1").exists() && names(&dirs.spool).is_empty()
    });
    assert_eq!(fs::read(dirs.done.join("x.1")).unwrap(), big);
    assert_eq!(fs::read(dirs.done.join("x")).unwrap(), b"taken");
    // No temporary left behind.
    let all: Vec<_> = fs::read_dir(&dirs.done).unwrap().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(recv.times_received(&big), 1);
}

#[test]
fn a_second_signal_exits_at_once() {
    let dirs = Dirs::new();
    let o = Opts {
        timeout: "60s",
        grace: "60s",
        ..Opts::default()
    };
    let (mut svc, _server, _hold_tx) = big_in_flight(&dirs, &o, &content(8, 16 << 20));
    svc.signal(libc::SIGINT);
    svc.wait_log("waiting up to");
    svc.signal(libc::SIGTERM);
    let st = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    assert_eq!(names(&dirs.spool), ["big"]);
}

#[test]
fn a_spool_directory_replaced_while_running_is_watched_again() {
    let o = Opts {
        // Rescans cannot be what finds the file below.
        rescan: "1h",
        ..Opts::default()
    };
    let (dirs, recv, svc) = running(&o);
    fs::rename(&dirs.spool, dirs.root.path().join("spool.old")).unwrap();
    fs::create_dir(&dirs.spool).unwrap();
    svc.wait_log("watching the new one");
    dirs.drop_file("after", b"after the swap");
    wait_for("after in done", || dirs.done.join("after").exists());
    assert_eq!(recv.times_received(b"after the swap"), 1);
}

/// A server whose first connection does not read until `gate` is set: the first upload
/// stays in flight while the test does something to the file. Counts the connections it
/// accepted.
fn gated_server(
    gate: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> ScriptServer {
    use std::sync::atomic::Ordering;
    ScriptServer::start(move |n, stream| {
        accepted.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            // Past the deadline it reads on anyway; the test's own waits report the failure.
            wait_until(DEADLINE, || gate.load(Ordering::SeqCst));
        }
        read_rest(stream, Vec::new())
    })
}

/// The reviewer's repro: `report.csv` (inode A) is being sent when a new `report.csv`
/// (inode B) is renamed over it. B must be sent too, and only A's delivery may dispose of
/// anything: never B unsent.
fn a_name_reused_while_in_flight(delete: bool) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dirs = Dirs::new();
    let gate = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = gated_server(gate.clone(), accepted.clone());
    let o = Opts {
        timeout: "10s",
        delete,
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, server.port, &o));
    dirs.drop_file("report.csv", b"OLD\n");
    wait_for("the first upload to connect", || {
        accepted.load(Ordering::SeqCst) >= 1
    });
    dirs.drop_file("report.csv", b"NEW\n");
    gate.store(true, Ordering::SeqCst);
    wait_for("NEW received", || {
        server
            .conns()
            .iter()
            .any(|c| c.clean && c.bytes == b"NEW\n")
    });
    wait_for("the spool empty", || names(&dirs.spool).is_empty());
    let conns = server.conns();
    assert!(conns.iter().any(|c| c.clean && c.bytes == b"OLD\n"));
    if delete {
        assert!(names(&dirs.done).is_empty());
    } else {
        wait_for("report.csv in done", || {
            dirs.done.join("report.csv").exists()
        });
        assert_eq!(fs::read(dirs.done.join("report.csv")).unwrap(), b"NEW\n");
        // OLD was replaced in the spool by the writer: it is nowhere, and nothing else is.
        assert_eq!(names(&dirs.done), ["report.csv"]);
    }
    svc.wait_log("the name was replaced meanwhile");
}

#[test]
fn a_name_reused_while_in_flight_sends_the_new_file_before_moving_it() {
    a_name_reused_while_in_flight(false);
}

#[test]
fn a_name_reused_while_in_flight_sends_the_new_file_before_deleting_it() {
    a_name_reused_while_in_flight(true);
}

/// [`config_file`] with top-level settings (`writer_quiet`, `stale_after`, `active_limit`) put
/// first.
fn config_file_with(dirs: &Dirs, port: u16, o: &Opts, top: &str) -> std::path::PathBuf {
    write_config(
        dirs,
        "a.toml",
        &format!("{top}\n{}", config_text(dirs, port, o)),
    )
}

#[test]
fn a_writer_pausing_longer_than_the_quiet_fallback_is_not_sent_until_closed() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts::writers();
    // The fallback for files whose writers cannot be seen, shortened from 30 s.
    let cfg = config_file_with(&dirs, recv.port, &o, "writer_quiet = \"200ms\"");
    let svc = Service::start(&cfg);
    let start = std::time::Instant::now();
    let mut f = fs::File::create(dirs.spool.join("paused")).unwrap();
    let first = content(1, 1000);
    f.write_all(&first).unwrap();
    // Seen open for writing twice, the second time well after the quiet fallback.
    svc.wait_log_n("is open for writing", 2);
    assert!(start.elapsed() > Duration::from_millis(400));
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    assert_eq!(recv.count(), 0, "sent while still open for writing");
    close_and_expect_whole(f, "paused", first, &content(2, 1000), &dirs, &recv);
}

#[test]
fn a_writer_active_when_the_service_starts_is_sent_only_complete() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let mut f = fs::File::create(dirs.spool.join("early")).unwrap();
    let first = content(3, 1000);
    f.write_all(&first).unwrap();
    let o = Opts::writers();
    let svc = Service::start(&config_file(&dirs, recv.port, &o));
    svc.wait_log_n("is open for writing", 2);
    assert_eq!(recv.count(), 0, "sent while still open for writing");
    close_and_expect_whole(f, "early", first, &content(4, 1000), &dirs, &recv);
}

#[test]
fn a_reason_file_never_replaces_a_failed_file() {
    let dirs = Dirs::new();
    let port = failing_server();
    let o = Opts {
        max_attempts: 1,
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, port, &o));
    dirs.drop_file("q.reason", b"a data file named q.reason");
    wait_for("q.reason.reason in failed", || {
        dirs.failed.join("q.reason.reason").exists()
    });
    dirs.drop_file("q", b"q data");
    // `q.reason` is taken (by a failed file), so `q` goes as `q.1`, its reason `q.1.reason`.
    wait_for("q.1 in failed", || dirs.failed.join("q.1").exists());
    wait_for("q.1's reason in failed", || {
        dirs.failed.join("q.1.reason").exists()
    });
    assert_eq!(
        fs::read(dirs.failed.join("q.reason")).unwrap(),
        b"a data file named q.reason"
    );
    let reason = fs::read_to_string(dirs.failed.join("q.1.reason")).unwrap();
    assert!(reason.contains("attempts: 1"), "{reason}");
    assert!(
        reason.contains(&format!("file: {}\n", dirs.spool.join("q").display())),
        "{reason}"
    );
    assert_eq!(fs::read(dirs.failed.join("q.1")).unwrap(), b"q data");
    assert!(!dirs.failed.join("q").exists());
    svc.wait_status("2 failed", |v| v.totals.failed == 2);
    svc.wait_log(&format!(
        "reason in {}",
        dirs.failed.join("q.1.reason").display()
    ));
}

#[test]
fn a_name_with_a_newline_is_logged_on_one_line() {
    let (dirs, recv, svc) = running(&Opts::default());
    dirs.drop_file("a\nINFO forged line", b"x");
    wait_for("it in done", || {
        dirs.done.join("a\nINFO forged line").exists()
    });
    svc.wait_log("delivered");
    let log = svc.log();
    let line = log
        .lines()
        .find(|l| l.contains("delivered"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("a\\nINFO forged line ("), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged line")),
        "{log}"
    );
    assert_eq!(recv.times_received(b"x"), 1);
}

#[test]
fn a_hard_link_into_the_spool_is_delivered_promptly() {
    let (dirs, recv, _svc) = running(&Opts::default());
    let outside = dirs.root.path().join("linked");
    fs::write(&outside, b"linked content").unwrap();
    fs::hard_link(&outside, dirs.spool.join("linked")).unwrap();
    // Not after the 30 s of the fallback for writers that cannot be seen.
    wait_for_within(
        "linked in done within a few seconds",
        Duration::from_secs(8),
        &mut || dirs.done.join("linked").exists(),
    );
    assert_eq!(recv.times_received(b"linked content"), 1);
}

#[test]
fn special_files_are_reported_once_across_reloads() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts {
        rescan: "200ms",
        ..Opts::default()
    };
    let cfg = config_file(&dirs, recv.port, &o);
    let fifo = dirs.spool.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let svc = Service::start(&cfg);
    svc.wait_log("ignoring");
    for n in 1..=2 {
        svc.signal(libc::SIGHUP);
        svc.wait_log_n("configuration reloaded", n);
    }
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    assert_eq!(svc.log_count("ignoring"), 1, "{}", svc.log());
}

#[test]
fn a_missing_config_is_refused_at_start() {
    let dirs = Dirs::new();
    let out = std::process::Command::new(BIN)
        .args(["watch", "--config"])
        .arg(dirs.root.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn stale_temporaries_of_ours_are_reported_never_removed_at_start() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let old = std::time::SystemTime::now() - Duration::from_secs(300);
    let mk = |name: &str, age: Option<std::time::SystemTime>| {
        let p = dirs.done.join(name);
        fs::write(&p, b"partial copy").unwrap();
        if let Some(t) = age {
            set_mtime(&p, t);
        }
        p
    };
    let stale = mk(".x.accio-0123abcd.tmp", Some(old));
    // A user's failed file that happens to match the pattern must never be deleted.
    let users = dirs.failed.join(".backup.accio-0badf00d.tmp");
    fs::write(&users, b"precious").unwrap();
    set_mtime(&users, old);
    let fresh = mk(".y.accio-0123abcd.tmp", None);
    let other = mk(".z.other.tmp", Some(old));
    let svc = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    let warning = "looks like a temporary copy left by an interrupted move; the original stayed in the spool; remove it if it is not yours";
    svc.wait_log(&format!("{} {warning}", stale.display()));
    svc.wait_log(&format!("{} {warning}", users.display()));
    assert!(stale.exists(), "never deleted");
    assert_eq!(fs::read(&users).unwrap(), b"precious");
    assert!(fresh.exists());
    assert!(other.exists());
    assert_eq!(svc.log_count(warning), 2, "{}", svc.log());
}

#[test]
fn a_name_replaced_during_the_transfer_delivers_both_files() {
    let dirs = Dirs::new();
    // The upload stops until the test has replaced the file.
    let o = Opts {
        timeout: "10s",
        ..Opts::default()
    };
    let old = content(5, 8 << 20);
    let (svc, server, go_tx) = big_in_flight(&dirs, &o, &old);
    // The writer replaces it (the old inode is unlinked while we still read it).
    dirs.drop_file("big", b"the new big\n");
    go_tx.send(()).unwrap();
    wait_for("the new one in done", || {
        fs::read(dirs.done.join("big")).is_ok_and(|c| c == b"the new big\n")
    });
    let conns = server.conns();
    let clean: Vec<&Conn> = conns.iter().filter(|c| c.clean).collect();
    assert_eq!(clean.len(), 2, "{}", svc.log());
    assert!(clean.iter().any(|c| c.bytes == old), "the old one, whole");
    assert!(clean.iter().any(|c| c.bytes == b"the new big\n"));
    assert_eq!(names(&dirs.done), ["big"]);
    assert!(names(&dirs.spool).is_empty());
}

#[test]
fn a_hidden_delete_left_by_a_crash_is_restored_and_sent_without_a_restart() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let cfg = config_file_with(
        &dirs,
        recv.port,
        &Opts::default(),
        "stale_after = \"300ms\"",
    );
    let svc = Service::start(&cfg);
    // What a crash between the rename and the unlink of a delete leaves, appearing after the
    // start (as after a restart within the age guard).
    let hidden = dirs.spool.join(".accio-del.0123456789abcdef.lost");
    fs::write(&hidden, b"hidden by a crash").unwrap();
    wait_for("lost delivered into done", || {
        dirs.done.join("lost").exists()
    });
    assert!(!hidden.exists());
    assert_eq!(
        fs::read(dirs.done.join("lost")).unwrap(),
        b"hidden by a crash"
    );
    assert_eq!(recv.times_received(b"hidden by a crash"), 1);
    svc.wait_log("an interrupted delete left it hidden");
}

#[test]
fn deletes_under_load_are_never_restored_as_leftovers() {
    // A short age guard with many deletes in flight: the periodic restore must skip this
    // process's own hidden names, so each file is sent exactly once.
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts {
        delete: true,
        ..Opts::default()
    };
    let cfg = config_file_with(&dirs, recv.port, &o, "stale_after = \"1ms\"");
    let svc = Service::start(&cfg);
    let contents: Vec<Vec<u8>> = (0..30).map(|i| content(i, 2000)).collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("d{i}"), c);
    }
    svc.wait_status("30 sent", |v| v.totals.sent == 30);
    wait_for("spool empty", || {
        fs::read_dir(&dirs.spool).unwrap().count() == 0
    });
    for c in &contents {
        assert_eq!(recv.times_received(c), 1);
    }
    assert_eq!(svc.log_count("interrupted delete"), 0, "{}", svc.log());
}

/// A directory on another filesystem than the spool (/dev/shm), if there is one.
fn other_filesystem(dirs: &Dirs) -> Option<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let other = tempfile::tempdir_in("/dev/shm").ok()?;
    (fs::metadata(other.path()).unwrap().dev() != fs::metadata(&dirs.spool).unwrap().dev())
        .then_some(other)
}

#[test]
fn longest_names_are_moved_across_filesystems_deleted_and_failed_with_a_reason() {
    let long = |c: char, n: usize| c.to_string().repeat(n);
    // Move to done_dir on another filesystem (a copy through a temporary name).
    let mut dirs = Dirs::new();
    let _other = other_filesystem(&dirs);
    if let Some(o) = &_other {
        dirs.done = o.path().to_path_buf();
    } else {
        eprintln!("no other filesystem for done_dir: the move is tested within one");
    }
    let recv = Receiver::start(&dirs.recv);
    let cfg = config_file(&dirs, recv.port, &Opts::default());
    let svc = Service::start(&cfg);
    for n in [250, 255] {
        let name = long('m', n);
        fs::write(dirs.done.join(&name), b"taken").unwrap();
        drop_long(&dirs.spool, &name, format!("moved {n}").as_bytes());
        wait_for("a long name moved", || {
            fs::read_dir(&dirs.done).unwrap().count() >= 2
                && !dirs.spool.join(&name).exists()
                && names(&dirs.done).iter().any(|m| {
                    fs::read(dirs.done.join(m)).unwrap() == format!("moved {n}").as_bytes()
                })
        });
        for e in fs::read_dir(&dirs.done).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    drop(svc);

    // on_success = "delete".
    let dirs = Dirs::new();
    let o = Opts {
        delete: true,
        ..Opts::default()
    };
    let cfg = config_file(&dirs, recv.port, &o);
    let svc = Service::start(&cfg);
    for n in [250, 255] {
        let name = long('d', n);
        drop_long(&dirs.spool, &name, format!("deleted {n}").as_bytes());
        wait_for("a long name deleted", || {
            recv.times_received(format!("deleted {n}").as_bytes()) == 1
                && fs::read_dir(&dirs.spool).unwrap().count() == 0
        });
    }
    drop(svc);

    // Given up on: failed_dir with a reason, even when the plain names are taken.
    let dirs = Dirs::new();
    let port = failing_server();
    let o = Opts {
        max_attempts: 1,
        ..Opts::default()
    };
    let cfg = config_file(&dirs, port, &o);
    let svc = Service::start(&cfg);
    for n in [250, 255] {
        let name = long('f', n);
        fs::write(dirs.failed.join(&name), b"taken").unwrap();
        drop_long(&dirs.spool, &name, format!("failed {n}").as_bytes());
    }
    svc.wait_status("2 failed", |v| v.totals.failed == 2);
    // The two taken names, the two failed files (shortened so that NAME.reason fits whole)
    // and their reasons.
    wait_for("4 files and 2 reasons in failed", || {
        names(&dirs.failed).len() == 6
    });
    let all = names(&dirs.failed);
    let reasons: Vec<_> = all.iter().filter(|n| n.ends_with(".reason")).collect();
    assert_eq!(reasons.len(), 2, "{all:?}");
    for r in reasons {
        assert!(r.len() <= 255);
        let file = r.strip_suffix(".reason").unwrap();
        assert!(fs::read(dirs.failed.join(file))
            .unwrap()
            .starts_with(b"failed "));
        let text = fs::read_to_string(dirs.failed.join(r)).unwrap();
        assert!(text.contains("attempts: 1"), "{text}");
    }
    assert_eq!(svc.log_count("reason in"), 2, "{}", svc.log());
}

/// [`drop_file`] for a name too long for its `.NAME.part` temporary.
fn drop_long(dir: &std::path::Path, name: &str, content: &[u8]) {
    let tmp = dir.join(".long.part");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A writer that renames its file into the spool before closing it: once closed it is
/// complete, and goes at once instead of after another settle time.
#[test]
fn a_file_renamed_in_before_its_close_goes_at_once_when_closed() {
    let o = Opts {
        settle: "3s",
        ..Opts::default()
    };
    let (dirs, recv, svc) = running(&o);
    let tmp = dirs.root.path().join("rb.tmp");
    let mut f = fs::File::create(&tmp).unwrap();
    let c = content(7, 5000);
    f.write_all(&c).unwrap();
    fs::rename(&tmp, dirs.spool.join("rb")).unwrap();
    // Taken at once (moved in), and found still open for writing.
    svc.wait_log("is open for writing");
    assert_eq!(recv.count(), 0, "sent while still open for writing");
    let closed = std::time::Instant::now();
    drop(f);
    wait_for("rb in done", || dirs.done.join("rb").exists());
    assert!(
        closed.elapsed() < Duration::from_secs(3),
        "took {:?} after the close: settled again",
        closed.elapsed()
    );
    assert_eq!(recv.times_received(&c), 1);
}

/// The uid of `nobody` and a `setpriv` prefix that runs a command as nobody. Root-only tests
/// are `#[ignore = "needs root: ..."]` and named `as_root_*`, so CI (root) runs them with
/// `cargo test -- --ignored as_root_`; run so, they fail saying why if they cannot run.
fn as_nobody() -> (u32, Vec<&'static str>) {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root to run the service as nobody"
    );
    let out = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .expect("cannot run id(1)");
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("no user nobody");
    let ok = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "setpriv (util-linux) cannot run a command as nobody:nogroup"
    );
    (
        uid,
        vec![
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ],
    )
}

/// Makes the test's directories (and the control socket's) usable by `uid` (the service),
/// the spool's files staying root's: the service then cannot take leases on them and cannot tell whether they have
/// writers.
fn hand_dirs_to(dirs: &Dirs, uid: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dirs.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = dirs.control.parent().unwrap();
    for d in [&dirs.spool, &dirs.done, &dirs.failed, run] {
        std::os::unix::fs::chown(d, Some(uid), None).unwrap();
    }
}

/// Without leases, a file being written in place that a listing finds (at start, or after a
/// reload) is not taken after the settle time alone: it must be unchanged for the quiet
/// period, or closed.
fn unwatched_writer_found_by_a_listing(reload: bool) {
    let (uid, wrapper) = as_nobody();
    let dirs = Dirs::new();
    hand_dirs_to(&dirs, uid);
    let recv = Receiver::start(&dirs.recv);
    let o = Opts::writers();
    let cfg = config_file_with(&dirs, recv.port, &o, "writer_quiet = \"6s\"");
    let first = content(5, 1000);
    let (svc, f) = if reload {
        let svc = Service::start_wrapped(&cfg, &[], &wrapper);
        let mut f = fs::File::create(dirs.spool.join("inplace")).unwrap();
        f.write_all(&first).unwrap();
        svc.signal(libc::SIGHUP);
        svc.wait_log("configuration reloaded");
        (svc, f)
    } else {
        let mut f = fs::File::create(dirs.spool.join("inplace")).unwrap();
        f.write_all(&first).unwrap();
        (Service::start_wrapped(&cfg, &[], &wrapper), f)
    };
    svc.wait_log("cannot check for writers with a file lease");
    // Looked at (found by the listing, settled) and left for later.
    svc.wait_status("inplace waiting, its writers unknown", |v| {
        why_waiting(v, "inplace") == Some(&Why::WriterUnknown)
    });
    assert_eq!(recv.count(), 0, "sent while still being written");
    close_and_expect_whole(f, "inplace", first, &content(6, 1000), &dirs, &recv);
    assert_eq!(
        svc.log_count("cannot check for writers with a file lease"),
        1
    );
}

#[test]
#[ignore = "needs root: cargo test --test watch -- --ignored as_root_"]
fn as_root_without_leases_a_writer_found_at_start_is_not_sent_after_settle_alone() {
    unwatched_writer_found_by_a_listing(false);
}

#[test]
#[ignore = "needs root: cargo test --test watch -- --ignored as_root_"]
fn as_root_without_leases_a_writer_found_after_a_reload_is_not_sent_after_settle_alone() {
    unwatched_writer_found_by_a_listing(true);
}

/// Without leases, an old file (a typical backlog) goes at once: only recent changes wait.
#[test]
#[ignore = "needs root: cargo test --test watch -- --ignored as_root_"]
fn as_root_without_leases_an_old_backlog_goes_at_once() {
    let (uid, wrapper) = as_nobody();
    let dirs = Dirs::new();
    hand_dirs_to(&dirs, uid);
    let recv = Receiver::start(&dirs.recv);
    // The status change time cannot be set back: a quiet period shorter than the test's
    // own run stands for "old".
    let p = dirs.spool.join("old");
    fs::write(&p, b"old").unwrap();
    let written = std::time::Instant::now();
    let o = Opts {
        settle: "100ms",
        ..Opts::default()
    };
    let cfg = config_file_with(&dirs, recv.port, &o, "writer_quiet = \"1s\"");
    while written.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _svc = Service::start_wrapped(&cfg, &[], &wrapper);
    wait_for("old in done", || dirs.done.join("old").exists());
    assert_eq!(recv.times_received(b"old"), 1);
}

/// An outage is reported once per destination (not per file and retry), and its end once.
#[test]
fn an_unreachable_destination_is_reported_once_not_per_file_and_retry() {
    let dirs = Dirs::new();
    let port = free_port();
    let o = Opts {
        initial: "20ms",
        max: "100ms",
        ..Opts::default()
    };
    let svc = Service::start(&config_file(&dirs, port, &o));
    for i in 0..5 {
        dirs.drop_file(&format!("f{i}"), &content(i, 100));
    }
    // Many retries of each file.
    svc.wait_log_n("not counted as a failed attempt", 30);
    let warns = |svc: &Service| {
        svc.log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("cannot reach"))
            .count()
    };
    assert_eq!(warns(&svc), 1, "{}", svc.log());
    let recv = Receiver::start_on(&dirs.recv, port);
    wait_for("5 files in done", || names(&dirs.done).len() == 5);
    svc.wait_log("reachable again;");
    assert_eq!(svc.log_count("reachable again;"), 1, "{}", svc.log());
    assert_eq!(warns(&svc), 1);
    for i in 0..5 {
        assert_eq!(recv.times_received(&content(i, 100)), 1);
    }
}

/// Without leases, a name recreated and being written in place while its old file was in
/// flight (its events dropped then) is not sent after the settle time alone either.
#[test]
#[ignore = "needs root: cargo test --test watch -- --ignored as_root_"]
fn as_root_without_leases_a_name_recreated_while_in_flight_waits_for_its_writer() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (uid, wrapper) = as_nobody();
    let dirs = Dirs::new();
    hand_dirs_to(&dirs, uid);
    let gate = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = gated_server(gate.clone(), accepted.clone());
    let o = Opts {
        timeout: "10s",
        settle: "100ms",
        ..Opts::default()
    };
    let cfg = config_file_with(&dirs, server.port, &o, "writer_quiet = \"6s\"");
    let svc = Service::start_wrapped(&cfg, &[], &wrapper);
    dirs.drop_file("report.csv", b"OLD\n");
    wait_for("the first upload to connect", || {
        accepted.load(Ordering::SeqCst) >= 1
    });
    // Recreated in place and still being written.
    fs::remove_file(dirs.spool.join("report.csv")).unwrap();
    let mut f = fs::File::create(dirs.spool.join("report.csv")).unwrap();
    f.write_all(b"NEW, first half\n").unwrap();
    gate.store(true, Ordering::SeqCst);
    svc.wait_status("report.csv waiting, its writers unknown", |v| {
        why_waiting(v, "report.csv") == Some(&Why::WriterUnknown)
    });
    f.write_all(b"NEW, second half\n").unwrap();
    drop(f);
    wait_for("report.csv in done", || {
        fs::read(dirs.done.join("report.csv"))
            .is_ok_and(|c| c == b"NEW, first half\nNEW, second half\n")
    });
    let conns = server.conns();
    let clean: Vec<&Conn> = conns.iter().filter(|c| c.clean).collect();
    assert_eq!(clean.len(), 2, "{}", svc.log());
    assert!(clean.iter().any(|c| c.bytes == b"OLD\n"));
    assert!(clean
        .iter()
        .any(|c| c.bytes == b"NEW, first half\nNEW, second half\n"));
}

/// Writes `second` to the in-place writer `f` of `name` and closes it, then checks that the
/// whole file (`first` + `second`), and nothing else, was delivered once.
fn close_and_expect_whole(
    mut f: fs::File,
    name: &str,
    first: Vec<u8>,
    second: &[u8],
    dirs: &Dirs,
    recv: &Receiver,
) {
    f.write_all(second).unwrap();
    drop(f);
    wait_for(&format!("{name} in done"), || dirs.done.join(name).exists());
    let mut whole = first;
    whole.extend_from_slice(second);
    assert_eq!(recv.times_received(&whole), 1);
    assert_eq!(recv.count(), 1);
}

/// A backlog much larger than the files held in memory (`active_limit = 4`): the service
/// holds a few, lists again (bounded) as they go, and sends every file once, oldest first.
#[test]
fn a_backlog_larger_than_the_active_set_is_sent_oldest_first() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let base = std::time::SystemTime::now() - Duration::from_secs(3600);
    // Named against their age, so that name order would be the wrong order.
    for i in 0..40u64 {
        let name = format!("f{:02}", 39 - i);
        let path = dirs.spool.join(&name);
        fs::write(&path, format!("backlog file {i:02}\n")).unwrap();
        set_mtime(&path, base + Duration::from_secs(i));
    }
    let o = Opts {
        concurrency: 1,
        ..Opts::default()
    };
    let svc = Service::start(&config_file_with(&dirs, recv.port, &o, "active_limit = 4"));
    wait_for("40 files in done", || names(&dirs.done).len() == 40);
    assert!(names(&dirs.spool).is_empty());
    let got = recv.received();
    let want: Vec<Vec<u8>> = (0..40u64)
        .map(|i| format!("backlog file {i:02}\n").into_bytes())
        .collect();
    assert_eq!(
        got,
        want,
        "sent once each, oldest first; log:\n{}",
        svc.log()
    );
}

/// Makes `n` FIFOs named `{prefix}{i}` in `dir`.
fn mkfifos(dir: &std::path::Path, prefix: &str, n: usize) {
    for i in 0..n {
        let p = dir.join(format!("{prefix}{i}"));
        let c = std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
}

fn rmfifos(dir: &std::path::Path, prefix: &str, n: usize) {
    for i in 0..n {
        fs::remove_file(dir.join(format!("{prefix}{i}"))).unwrap();
    }
}

/// Starts a service for the churn tests: rescans often, logs at info (as a service does).
fn churn_service(dirs: &Dirs, port: u16) -> Service {
    let o = Opts {
        rescan: "300ms",
        ..Opts::default()
    };
    Service::start_with_env(&config_file(dirs, port, &o), &[("RUST_LOG", "info")])
}

/// A producer making and removing thousands of special entries: they are counted
/// (`special_entries`, the metric's source) and forgotten when gone, the log names only the
/// first few and sums up the rest, and regular files still go.
#[test]
fn special_entry_churn_is_counted_summed_up_and_forgotten() {
    const N: usize = 3000;
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let mut svc = churn_service(&dirs, recv.port);
    mkfifos(&dirs.spool, "p", N);
    svc.wait_status("every FIFO counted", |v| {
        v.watches[0].special_entries == N as u64
    });
    rmfifos(&dirs.spool, "p", N);
    svc.wait_status("the FIFOs forgotten", |v| v.watches[0].special_entries == 0);
    dirs.drop_file("after", b"after the churn");
    wait_for("after in done", || dirs.done.join("after").exists());
    assert_eq!(recv.times_received(b"after the churn"), 1);
    let named = svc.log_count("ignoring ");
    assert!(named <= 10, "{named} named: {}", svc.log());
    // The rest are summed up when the minute ends, or at the latest at shutdown.
    svc.signal(libc::SIGTERM);
    assert!(svc.wait_exit(Duration::from_secs(30)).success());
    let log = svc.log();
    let more: usize = log
        .lines()
        .filter_map(|l| l.split_once(" more special entries ignored"))
        .map(|(head, _)| head.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(more + named >= N, "{named} named, {more} summed up:\n{log}");
    assert!(log.lines().count() < 100, "{log}");
}

/// The probe: 3 rounds of 50,000 FIFOs made in the spool and removed again. The
/// service's resident memory must end within 8 MiB of where it started and its log stay
/// under 1,000 lines. Prints the figures. Slow (about a minute): run with
/// `cargo test --release --test watch -- --ignored --nocapture special_entry_churn_probe`.
#[test]
#[ignore = "probe: 150,000 FIFOs, about a minute"]
fn special_entry_churn_probe() {
    use support::procfs::status_kib;
    const N: usize = 50_000;
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let svc = churn_service(&dirs, recv.port);
    let pid = svc.pid() as u32;
    dirs.drop_file("warm", b"warm");
    wait_for("warm in done", || dirs.done.join("warm").exists());
    let start = status_kib(pid, "VmRSS:").unwrap();
    println!("RSS at start: {start} KiB");
    let mut last = start;
    for round in 1..=3 {
        let t = std::time::Instant::now();
        mkfifos(&dirs.spool, "p", N);
        svc.wait_status("every FIFO counted", |v| {
            v.watches[0].special_entries == N as u64
        });
        let peak = status_kib(pid, "VmRSS:").unwrap();
        rmfifos(&dirs.spool, "p", N);
        svc.wait_status("the FIFOs forgotten", |v| v.watches[0].special_entries == 0);
        last = status_kib(pid, "VmRSS:").unwrap();
        println!(
            "round {round}: {:.1?}, RSS with {N} FIFOs {peak} KiB, after {last} KiB, log {} lines",
            t.elapsed(),
            svc.log().lines().count()
        );
    }
    dirs.drop_file("after", b"after the churn");
    wait_for("after in done", || dirs.done.join("after").exists());
    let lines = svc.log().lines().count();
    println!(
        "RSS {start} → {last} KiB ({:+} KiB), {lines} log lines",
        last as i64 - start as i64
    );
    assert!(last < start + 8 * 1024, "RSS {start} → {last} KiB");
    assert!(lines <= 1000, "{lines} log lines");
}

/// Issue 23: strict modes hold on reload too: once the spool's parent became writable by
/// everyone, a SIGHUP is refused (the service keeps running on what it had) and says which
/// directory and the fix; put right, the next reload is taken.
#[test]
fn a_reload_is_refused_when_a_parent_became_writable_by_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let (dirs, recv, svc) = running(&Opts::default());
    let root = dirs.root.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("reload refused");
    let log = svc.log();
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains(&format!("{} (above dir ", root.display()))
            && line.contains("is writable by everyone (mode 0777)")
            && line.contains(&format!("fix: chmod go-w {}", root.display())),
        "{line}"
    );
    dirs.drop_file("still", b"still sent");
    wait_for("still in done", || dirs.done.join("still").exists());
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("configuration reloaded");
    assert_eq!(recv.times_received(b"still sent"), 1);
}

/// A destination given by name: resolved (once a second at most, `accio::resolve`), and
/// every file delivered, once.
#[test]
fn a_destination_by_name_gets_every_file() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let text = config_text(&dirs, recv.port, &Opts::default())
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    assert!(text.contains("host = \"localhost\""), "{text}");
    let svc = Service::start(&write_config(&dirs, "by-name.toml", &text));
    for i in 0..30 {
        dirs.drop_file(&format!("f{i}"), format!("by name {i}").as_bytes());
    }
    wait_for("30 files in done", || names(&dirs.done).len() == 30);
    for i in 0..30 {
        assert_eq!(recv.times_received(format!("by name {i}").as_bytes()), 1);
    }
    drop(svc);
}
