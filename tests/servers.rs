//! accio against the servers and clients people actually run (issue 11): `accio send` and
//! `accio watch` against misbehaving servers (never closes, reads once and closes, serial
//! and exits, saves after the close), with both confirmation policies; `accio serve` against
//! the habits of independent clients (one `recv` for the command, one `send` for the file,
//! never waiting for the close).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use support::send::{pattern, run, send_cmd, temp_file, write_file, Outcome};
use support::servers::{Behaviour, MisbehavingServer};
use support::wait::wait_for;

/// The `accio watch` and `accio serve` helpers, under one short prefix.
mod ws {
    pub use super::support::{net::*, receiver::*, wait::*, watch::*};
}

/// Short timeouts; the close timeout is what a never-closing server makes the default wait.
const TIMEOUTS: &[(&str, &str)] = &[
    ("ACCIO_CONNECT_TIMEOUT", "2s"),
    ("ACCIO_HANDSHAKE_TIMEOUT", "2s"),
    ("ACCIO_STALL_TIMEOUT", "2s"),
    ("ACCIO_CLOSE_TIMEOUT", "1s"),
];

/// `accio send 127.0.0.1 PORT FILE`, with `--confirm acked` when `acked`.
fn send(port: u16, file: &std::path::Path, acked: bool) -> Outcome {
    let mut cmd = send_cmd("127.0.0.1", &port.to_string(), file, TIMEOUTS);
    if acked {
        cmd.args(["--confirm", "acked"]);
    }
    run(&mut cmd)
}

// ---- accio send ----

/// The default waits for a close that never comes, fails as a transfer error, and says that
/// everything was acknowledged and which setting accepts that; the server has the file.
#[test]
fn send_to_a_never_closing_server_fails_by_default_and_names_the_setting() {
    let server = MisbehavingServer::start(Behaviour::NeverCloses);
    let content = pattern(200_000, 1);
    let (_src, file) = temp_file(&content);
    let out = send(server.port, &file, false);
    out.assert_error(7);
    assert!(
        out.stderr
            .contains("every byte was acknowledged but the server never closed")
            && out.stderr.contains("confirm = \"acked\"")
            && out.stderr.contains("--confirm acked"),
        "{}",
        out.stderr
    );
    out.assert_elapsed(Duration::from_millis(900)..);
    assert_eq!(server.times_saved(&content), 1);
}

/// With `--confirm acked` the same server is a success once its TCP acknowledged
/// everything; each file is saved once.
#[test]
fn send_acked_to_a_never_closing_server_succeeds_at_once() {
    let server = MisbehavingServer::start(Behaviour::NeverCloses);
    let src = tempfile::tempdir().unwrap();
    for (i, len) in [0usize, 1, 100_000, 3 << 20].into_iter().enumerate() {
        let content = pattern(len, 10 + i as u64);
        let file = write_file(src.path(), &format!("f{i}"), &content);
        let out = send(server.port, &file, true);
        // A success at all shows the close was not waited for: it never comes.
        out.assert_success();
        wait_for("the server to save it", || {
            server.times_saved(&content) == 1
        });
    }
    assert_eq!(server.records().len(), 4, "one connection per file");
}

/// A server that reads 1 KiB and closes with the rest unread resets the connection: a
/// transfer failure with either policy (the file is larger than what the kernel buffers can
/// take before the reset, so "acked" never sees it all acknowledged).
#[test]
fn send_to_a_server_that_reads_once_and_closes_fails_with_either_policy() {
    let server = MisbehavingServer::start(Behaviour::ReadsOnceAndCloses);
    let (_src, file) = temp_file(&pattern(16 << 20, 2));
    for acked in [false, true] {
        let out = send(server.port, &file, acked);
        out.assert_error(7);
    }
    let records = server.records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.bytes.len() <= 1024 && !r.eof));
}

/// A serial server that exits after two connections: both delivered (either policy), then
/// connecting is refused (exit 5), as for any server that is down.
#[test]
fn send_to_a_serial_server_that_exits_after_two() {
    let server = MisbehavingServer::start(Behaviour::Serial { exit_after: 2 });
    let src = tempfile::tempdir().unwrap();
    let a = write_file(src.path(), "a", &pattern(50_000, 3));
    let b = write_file(src.path(), "b", &pattern(60_000, 4));
    send(server.port, &a, false).assert_success();
    send(server.port, &b, true).assert_success();
    wait_for("the server to exit", || !ws::listening(server.port));
    send(server.port, &a, false).assert_error(5);
    send(server.port, &a, true).assert_error(5);
    assert_eq!(server.saved(), vec![pattern(50_000, 3), pattern(60_000, 4)]);
}

/// A server that closes first and saves afterwards: accio cannot tell (the close is the
/// only confirmation there is), so the send succeeds and the file appears later.
#[test]
fn send_to_a_server_that_saves_after_closing() {
    let server = MisbehavingServer::start(Behaviour::SavesAfterClose {
        delay: Duration::from_millis(200),
    });
    let src = tempfile::tempdir().unwrap();
    for (i, acked) in [false, true].into_iter().enumerate() {
        let content = pattern(300_000, 20 + i as u64);
        let file = write_file(src.path(), &format!("f{i}"), &content);
        send(server.port, &file, acked).assert_success();
        wait_for("the late save", || server.times_saved(&content) == 1);
    }
}

// ---- accio watch ----

/// A config for `dirs` sending to `port`, with `confirm` in `[server]` when given.
fn watch_config(
    dirs: &ws::Dirs,
    port: u16,
    confirm: Option<&str>,
    o: &ws::Opts,
) -> std::path::PathBuf {
    let mut text = ws::config_text(dirs, port, o);
    if let Some(c) = confirm {
        text = text.replace("[server]\n", &format!("[server]\nconfirm = {c:?}\n"));
    }
    ws::write_config(dirs, "accio.toml", &text)
}

/// The scenario: with confirm = "acked", 20 files to a server that never closes are
/// all delivered, each exactly once, and all leave the spool.
#[test]
fn watch_acked_delivers_every_file_exactly_once_to_a_never_closing_server() {
    let dirs = ws::Dirs::new();
    let server = MisbehavingServer::start(Behaviour::NeverCloses);
    let o = ws::Opts {
        timeout: "1s",
        ..ws::Opts::default()
    };
    let config = watch_config(&dirs, server.port, Some("acked"), &o);
    let svc = ws::Service::start(&config);
    let contents: Vec<Vec<u8>> = (0..20).map(|i| ws::content(i, 1000 + i * 5000)).collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("f{i:02}"), c);
    }
    ws::wait_for("20 files in done", || ws::names(&dirs.done).len() == 20);
    assert!(ws::names(&dirs.spool).is_empty());
    assert!(ws::names(&dirs.failed).is_empty());
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(
            &std::fs::read(dirs.done.join(format!("f{i:02}"))).unwrap(),
            c
        );
        ws::wait_for("the server to save it", || server.times_saved(c) >= 1);
        assert_eq!(server.times_saved(c), 1, "f{i:02} saved more than once");
    }
    assert_eq!(server.records().len(), 20, "one connection per file");
    assert_eq!(svc.log_count("failed"), 0, "{}", svc.log());
}

/// With the default policy, a file is moved to done only when the server closed its
/// connection (here: when the next connection arrived, after saving it). The connection
/// nobody follows is never closed: that file is not claimed, and its reason in failed_dir
/// names the setting.
#[test]
fn watch_default_never_claims_a_file_the_server_did_not_confirm() {
    let dirs = ws::Dirs::new();
    let server = MisbehavingServer::start(Behaviour::NeverCloses);
    let o = ws::Opts {
        timeout: "1s",
        max_attempts: 2,
        ..ws::Opts::default()
    };
    let config = watch_config(&dirs, server.port, None, &o);
    let _svc = ws::Service::start(&config);
    let contents: Vec<Vec<u8>> = (0..8).map(|i| ws::content(100 + i, 20_000)).collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("f{i}"), c);
    }
    // Failed files with their reasons (a reason is written after its file is moved).
    let failed_with_reason = || {
        let names = ws::names(&dirs.failed);
        let files: Vec<&String> = names.iter().filter(|n| !n.ends_with(".reason")).collect();
        let complete = files.iter().all(|n| names.contains(&format!("{n}.reason")));
        complete.then_some(files.len())
    };
    ws::wait_for("every file done or failed with its reason", || {
        ws::names(&dirs.spool).is_empty()
            && failed_with_reason()
                .is_some_and(|failed| ws::names(&dirs.done).len() + failed == contents.len())
    });
    let records = server.records();
    // Every file claimed as delivered was saved whole on a connection the server closed.
    for name in ws::names(&dirs.done) {
        let got = std::fs::read(dirs.done.join(&name)).unwrap();
        assert!(
            records.iter().any(|r| r.closed && r.eof && r.bytes == got),
            "{name} moved to done without a confirming close"
        );
    }
    // The last connection is still open: its file was not confirmed, and gave up.
    let last = records.last().unwrap();
    assert!(!last.closed);
    let failed: Vec<String> = ws::names(&dirs.failed)
        .into_iter()
        .filter(|n| !n.ends_with(".reason"))
        .collect();
    assert!(!failed.is_empty(), "nothing failed: {records:?}");
    for name in failed {
        let reason = std::fs::read_to_string(dirs.failed.join(format!("{name}.reason"))).unwrap();
        assert!(
            reason.contains("every byte was acknowledged")
                && reason.contains("confirm = \"acked\""),
            "{reason}"
        );
    }
}

/// A serial server that exits after 3 connections: the service delivers 3 files, the rest
/// wait in the spool as for any unreachable server (not counted, never failed), and go once
/// a server listens on that port again.
#[test]
fn watch_waits_for_a_serial_server_that_exited() {
    let dirs = ws::Dirs::new();
    let server = MisbehavingServer::start(Behaviour::Serial { exit_after: 3 });
    let o = ws::Opts {
        concurrency: 1,
        timeout: "1s",
        // A connection that reached the accept queue as the server exited is reset: that
        // one counts. Refusals afterwards do not.
        max_attempts: 3,
        ..ws::Opts::default()
    };
    let config = watch_config(&dirs, server.port, None, &o);
    let svc = ws::Service::start(&config);
    let contents: Vec<Vec<u8>> = (0..5).map(|i| ws::content(200 + i, 10_000)).collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("f{i}"), c);
    }
    ws::wait_for("3 files done", || ws::names(&dirs.done).len() == 3);
    ws::wait_for("the server to exit", || !ws::listening(server.port));
    let v = svc.wait_status("the destination down", ws::destination_down);
    assert_eq!(v.totals.failed, 0, "{v:#?}");
    assert_eq!(ws::names(&dirs.spool).len(), 2);
    assert!(ws::names(&dirs.failed).is_empty());
    let recv = ws::Receiver::start_on(&dirs.recv, server.port);
    ws::wait_for("all 5 files done", || ws::names(&dirs.done).len() == 5);
    assert!(ws::names(&dirs.failed).is_empty());
    let mut delivered: Vec<Vec<u8>> = server.saved();
    delivered.extend(recv.files().into_values());
    for c in &contents {
        assert!(delivered.contains(c), "a file was never delivered");
    }
}

// ---- accio serve against independent clients ----

/// How an independent client ends its upload.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// close() right after the last send: no half-close, no wait for the server.
    Close,
    /// shutdown(SHUT_WR), then close() without reading.
    HalfCloseThenClose,
}

/// An independent client: one `recv` for the command, one `send` (write_all) for the whole
/// file, and it never waits for the server's close.
fn independent_client(port: u16, content: &[u8], ending: Ending) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    // Such a client takes whatever one recv gives; accio serve sends the command in one
    // write, so on loopback it is all there.
    assert_eq!(&buf[..n], b"accio\r\n");
    s.write_all(content).unwrap();
    if let Ending::HalfCloseThenClose = ending {
        s.shutdown(Shutdown::Write).unwrap();
    }
    drop(s);
}

/// Every such client delivers byte for byte to `accio serve`, one after another and all at
/// once.
#[test]
fn serve_receives_from_independent_clients() {
    let root = tempfile::tempdir().unwrap();
    let recv = ws::Receiver::start(root.path());
    let sizes = [0usize, 1, 1000, 100_000, 1 << 20];
    // A list, not a set: the empty file is sent more than once.
    let mut sent = Vec::new();
    let mut seed = 40;
    // One after another.
    for ending in [Ending::Close, Ending::HalfCloseThenClose] {
        for len in sizes {
            seed += 1;
            let content = pattern(len, seed);
            independent_client(recv.port, &content, ending);
            sent.push(content);
            let want = sent.len();
            wait_for("the file to be saved", || recv.count() == want);
        }
    }
    // All at once.
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let content = pattern(sizes[i % sizes.len()] + i, 60 + i as u64);
            sent.push(content.clone());
            let ending = if i % 2 == 0 {
                Ending::Close
            } else {
                Ending::HalfCloseThenClose
            };
            let port = recv.port;
            std::thread::spawn(move || independent_client(port, &content, ending))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let want = sent.len();
    wait_for("every file to be saved", || recv.count() == want);
    let files = recv.files();
    assert_eq!(
        files.keys().copied().collect::<Vec<u64>>(),
        (1..=want as u64).collect::<Vec<_>>()
    );
    let mut received: Vec<Vec<u8>> = files.into_values().collect();
    received.sort();
    sent.sort();
    assert!(received == sent, "received contents differ from sent");
}
