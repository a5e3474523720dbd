//! `accio send` against scripted servers on loopback, run as the real binary.
//!
//! Each scripted server lives in the test that uses it and misbehaves in one way. Timeouts
//! are shortened through the hidden ACCIO_*_TIMEOUT variables; only
//! `real_default_timeouts_are_ten_seconds` proves the 10 s defaults.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::net::BlackHole;
use support::procfs::{cpu_ticks, peak_rss_kib};
use support::send::*;
use support::wait::wait_until;
use support::BIN;

/// Exit codes, as documented in `accio send --help`.
mod code {
    pub const USAGE: i32 = 2;
    pub const FILE: i32 = 3;
    pub const RESOLVE: i32 = 4;
    pub const CONNECT: i32 = 5;
    pub const HANDSHAKE: i32 = 6;
    pub const TRANSFER: i32 = 7;
}

/// Sends `content` to a well-behaved sink on 127.0.0.1 and checks the bytes arrived exactly.
fn roundtrip(content: &[u8]) {
    let (_dir, file) = temp_file(content);
    roundtrip_file(Peer::new(), "127.0.0.1", &file, content);
}

/// Sends `file` (holding `content`) to `host` and a well-behaved sink on `peer`, and checks
/// the bytes arrived exactly.
#[track_caller]
fn roundtrip_file(peer: Peer, host: &str, file: &std::path::Path, content: &[u8]) {
    let port = peer.port_str();
    let server = peer.serve(sink);
    run(&mut send_cmd(host, &port, file, SHORT)).assert_success();
    let received = server.join().unwrap();
    assert_eq!(received.len(), content.len());
    assert!(received == content, "content differs");
}

#[test]
fn sends_500_bytes_byte_exact() {
    roundtrip(&pattern(500, 1));
}

#[test]
fn sends_an_empty_file() {
    roundtrip(b"");
}

#[test]
fn sends_10_mib_byte_exact() {
    roundtrip(&pattern(10 << 20, 2));
}

/// 100 MiB, byte-exact, with constant memory: halfway through, the sender's peak resident
/// memory is a small fraction of the file (the content goes through sendfile, never
/// through user space). Also: no progress bar on a pipe (stderr stays empty).
#[test]
fn sends_100_mib_byte_exact_in_constant_memory() {
    const LEN: usize = 100 << 20;
    let content = pattern(LEN, 3);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big", &content);
    let peer = Peer::new();
    let port = peer.port_str();
    let (pid_tx, pid_rx) = mpsc::channel::<u32>();
    let server = peer.serve(move |mut s| {
        s.write_all(COMMAND).unwrap();
        let mut data = vec![0u8; LEN / 2];
        s.read_exact(&mut data).unwrap();
        let pid = pid_rx.recv().unwrap();
        let peak = peak_rss_kib(pid);
        read_to_clean_end(&mut s, &mut data);
        (data, peak)
    });
    let (child, started) = spawn(&mut send_cmd("127.0.0.1", &port, &file, SHORT));
    pid_tx.send(child.id()).unwrap();
    let out = finish(child, started);
    out.assert_success();
    let (received, peak) = server.join().unwrap();
    assert!(received == content, "content differs");
    let peak = peak.expect("sender's /proc status readable while it was sending");
    assert!(
        peak < 40 * 1024,
        "sender peak RSS {peak} KiB for a 100 MiB file"
    );
}

/// A file that cannot be a sendfile source (procfs `cmdline`: EINVAL) goes through the
/// plain-copy fallback, byte-exact.
#[test]
fn falls_back_to_copying_when_sendfile_is_refused() {
    let path = std::path::PathBuf::from(format!("/proc/{}/cmdline", std::process::id()));
    let expected = std::fs::read(&path).unwrap();
    assert!(!expected.is_empty());
    roundtrip_file(Peer::new(), "127.0.0.1", &path, &expected);
}

#[test]
fn command_dribbled_one_byte_at_a_time() {
    let content = pattern(5000, 4);
    let (_dir, file) = temp_file(&content);
    let peer = Peer::new();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        s.set_nodelay(true).unwrap();
        for &b in COMMAND {
            // Nothing may arrive before the whole command was sent.
            s.set_nonblocking(true).unwrap();
            let mut probe = [0u8; 1];
            let early = s.read(&mut probe);
            assert!(
                matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "client sent before the command was complete: {early:?}"
            );
            s.set_nonblocking(false).unwrap();
            s.write_all(&[b]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let (data, end) = read_all(&mut s);
        end.unwrap();
        data
    });
    send_local(&port, &file, SHORT).assert_success();
    assert!(server.join().unwrap() == content);
}

/// Sends `file` to `peer`, which runs `script` on the connection; returns the outcome and
/// what the script returned.
fn send_to<R: Send + 'static>(
    peer: Peer,
    file: &std::path::Path,
    env: &[(&str, &str)],
    script: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> (Outcome, R) {
    let port = peer.port_str();
    let server = peer.serve(script);
    let out = send_local(&port, file, env);
    (out, server.join().unwrap())
}

/// Runs a send against a server that sends `prefix` and then keeps silent until the client
/// is gone; asserts a handshake error with nothing sent, and returns the outcome.
#[track_caller]
fn handshake_failure(prefix: &'static [u8], env: &[(&str, &str)]) -> Outcome {
    let (_dir, file) = temp_file(&pattern(500, 5));
    let (out, received) = send_to(Peer::new(), &file, env, move |mut s| {
        s.write_all(prefix).unwrap();
        read_all(&mut s).0
    });
    out.assert_error(code::HANDSHAKE);
    assert!(received.is_empty(), "sent {} bytes", received.len());
    out
}

const LONG_HANDSHAKE: &[(&str, &str)] = &[("ACCIO_HANDSHAKE_TIMEOUT", "20s")];
const SHORT_HANDSHAKE: &[(&str, &str)] = &[("ACCIO_HANDSHAKE_TIMEOUT", "500ms")];

#[test]
fn partial_command_then_silence_times_out() {
    let out = handshake_failure(b"accio\r", SHORT_HANDSHAKE);
    out.assert_elapsed(Duration::from_millis(500)..Duration::from_secs(5));
}

#[test]
fn wrong_command_hello_is_rejected_at_once() {
    // The handshake timeout is long: only an immediate rejection ends this quickly.
    let out = handshake_failure(b"hello\r\n", LONG_HANDSHAKE);
    out.assert_elapsed(..Duration::from_secs(5));
}

#[test]
fn wrong_command_bare_newline_is_rejected_at_once() {
    let out = handshake_failure(b"accio\n", LONG_HANDSHAKE);
    out.assert_elapsed(..Duration::from_secs(5));
}

#[test]
fn server_that_never_sends_the_command_times_out() {
    let out = handshake_failure(b"", SHORT_HANDSHAKE);
    out.assert_elapsed(Duration::from_millis(500)..);
}

#[test]
fn server_closing_first_is_an_error() {
    let (_dir, file) = temp_file(b"data");
    let (out, ()) = send_to(Peer::new(), &file, LONG_HANDSHAKE, drop);
    out.assert_error(code::HANDSHAKE);
    out.assert_elapsed(..Duration::from_secs(5));
}

#[test]
fn server_closing_mid_command_is_an_error() {
    let (_dir, file) = temp_file(b"data");
    let (out, ()) = send_to(Peer::new(), &file, LONG_HANDSHAKE, |mut s| {
        s.write_all(b"acc").unwrap()
    });
    out.assert_error(code::HANDSHAKE);
    assert!(out.stderr.contains("3 of 7"), "{}", out.stderr);
}

#[test]
fn server_resetting_right_after_the_command_is_a_failure() {
    let (_dir, file) = temp_file(&pattern(500, 6));
    let (out, ()) = send_to(Peer::new(), &file, SHORT, |mut s| {
        s.write_all(COMMAND).unwrap();
        reset(s);
    });
    // Where the reset lands is a race (it may even be seen as the connect's socket error);
    // either way the send fails.
    assert!(
        matches!(
            out.code(),
            Some(code::CONNECT | code::HANDSHAKE | code::TRANSFER)
        ),
        "{out:#?}"
    );
    out.assert_one_error_line();
}

/// Sends a sparse file of `len` bytes (`args` added to `accio send`, a 1 s stall timeout) to
/// a peer that accepts, sends the command and never reads: what `accio send` did.
fn send_to_a_peer_that_never_reads(len: u64, args: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), len);
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = peer.serve(move |mut s| {
        s.write_all(COMMAND).unwrap();
        let _ = done_rx.recv();
    });
    let mut cmd = send_cmd("127.0.0.1", &port, &file, &[("ACCIO_STALL_TIMEOUT", "1s")]);
    cmd.args(args);
    let out = run(&mut cmd);
    done_tx.send(()).unwrap();
    server.join().unwrap();
    out
}

/// A peer that never reads: the sender's buffers fill and it must give up after the stall
/// timeout.
#[test]
fn write_stall_fails_after_the_stall_timeout() {
    let out = send_to_a_peer_that_never_reads(64 << 20, &[]);
    out.assert_error(code::TRANSFER);
    out.assert_elapsed(Duration::from_secs(1)..Duration::from_secs(6));
}

#[test]
fn reset_mid_transfer_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), 64 << 20);
    let (out, ()) = send_to(Peer::with_small_rcvbuf(), &file, SHORT, |mut s| {
        s.write_all(COMMAND).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).unwrap();
        reset(s);
    });
    out.assert_error(code::TRANSFER);
    out.assert_elapsed(..Duration::from_secs(5));
}

/// Sends 16 MiB (`args` added to `accio send`) to a peer that pauses twice for 0.7 × the
/// stall timeout (2 s), each pause long enough for the sender's buffers to be full, then
/// reads on: what `accio send` did, and whether every byte arrived in order.
fn send_through_two_pauses(seed: u64, args: &[&str]) -> (Outcome, bool) {
    const LEN: usize = 16 << 20;
    let content = pattern(LEN, seed);
    let (_dir, file) = temp_file(&content);
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        s.write_all(COMMAND).unwrap();
        let mut data = vec![0u8; 2 << 20];
        s.read_exact(&mut data[..1 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(1400));
        s.read_exact(&mut data[1 << 20..]).unwrap();
        std::thread::sleep(Duration::from_millis(1400));
        read_to_clean_end(&mut s, &mut data);
        data
    });
    let mut cmd = send_cmd("127.0.0.1", &port, &file, &[("ACCIO_STALL_TIMEOUT", "2s")]);
    cmd.args(args);
    let out = run(&mut cmd);
    let whole = server.join().unwrap() == content;
    (out, whole)
}

/// Two pauses shorter than the stall timeout: slow but not stalled, so the transfer succeeds.
#[test]
fn pauses_shorter_than_the_stall_timeout_are_survived() {
    let (out, whole) = send_through_two_pauses(7, &[]);
    out.assert_success();
    out.assert_elapsed(Duration::from_millis(2800)..);
    assert!(whole);
}

/// `--limit-rate` sends its body on its own thread (poll(2) while the socket is full): a
/// peer that never reads is a stall there too, after the stall timeout (and the time the
/// queue would take at the paced rate: tens of milliseconds at 64 MiB/s).
#[test]
fn a_paced_send_to_a_peer_that_stops_reading_fails_after_the_stall_timeout() {
    let out = send_to_a_peer_that_never_reads(256 << 20, &["--limit-rate", "64MiB/s"]);
    out.assert_error(code::TRANSFER);
    out.assert_elapsed(Duration::from_secs(1)..Duration::from_secs(8));
}

/// The same pauses under `--limit-rate` (its body on its own thread): survived, and every
/// byte arrives in order.
#[test]
fn pauses_shorter_than_the_stall_timeout_are_survived_by_a_paced_send() {
    let (out, whole) = send_through_two_pauses(11, &["--limit-rate", "64MiB/s"]);
    out.assert_success();
    assert!(whole);
}

#[test]
fn unsolicited_bytes_after_the_command_are_ignored() {
    let content = pattern(2 << 20, 8);
    let (_dir, file) = temp_file(&content);
    let peer = Peer::new();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        let mut hello = COMMAND.to_vec();
        hello.extend_from_slice(&pattern(64 << 10, 9));
        s.write_all(&hello).unwrap();
        let (data, end) = read_all(&mut s);
        end.unwrap();
        // And more after the client's half-close: still ignored.
        s.write_all(b"thanks, bye\r\n").unwrap();
        data
    });
    send_local(&port, &file, SHORT).assert_success();
    assert!(server.join().unwrap() == content);
}

#[test]
fn server_that_never_closes_is_a_failure() {
    let (_dir, file) = temp_file(&pattern(500, 10));
    let peer = Peer::new();
    let port = peer.port_str();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = peer.serve(move |mut s| {
        s.write_all(COMMAND).unwrap();
        let (data, end) = read_all(&mut s);
        end.unwrap();
        // Everything arrived, but we never close: the client must not claim success.
        let _ = done_rx.recv();
        data
    });
    let out = send_local(&port, &file, &[("ACCIO_CLOSE_TIMEOUT", "500ms")]);
    done_tx.send(()).unwrap();
    assert_eq!(server.join().unwrap().len(), 500);
    out.assert_error(code::TRANSFER);
    out.assert_elapsed(Duration::from_millis(500)..);
}

/// A server that answers the half-close with an endless stream of bytes and never closes:
/// the bytes are ignored and the close timeout still ends the wait.
#[test]
fn server_flooding_instead_of_closing_is_a_failure() {
    let (_dir, file) = temp_file(&pattern(500, 16));
    let peer = Peer::new();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        s.write_all(COMMAND).unwrap();
        let (data, end) = read_all(&mut s);
        end.unwrap();
        let junk = vec![b'x'; 64 << 10];
        // Until the client gives up and resets.
        while s.write_all(&junk).is_ok() {}
        data
    });
    let out = send_local(&port, &file, &[("ACCIO_CLOSE_TIMEOUT", "500ms")]);
    assert_eq!(server.join().unwrap().len(), 500);
    out.assert_error(code::TRANSFER);
    out.assert_elapsed(..Duration::from_secs(5));
}

/// A server that half-closes right after the command and then reads slowly: its early FIN
/// is not the confirmation; the sender succeeds only once all its data was acknowledged,
/// which here is after the server's pause.
#[test]
fn early_half_close_by_the_server_waits_for_the_data_to_be_taken() {
    let content = pattern(512 << 10, 17);
    let (_dir, file) = temp_file(&content);
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        s.write_all(COMMAND).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Our FIN came first, so the sender's half-close takes it to LAST_ACK.
        let mut data = wait_for_sender_state(&mut s, TCP_LAST_ACK);
        std::thread::sleep(Duration::from_millis(500));
        let resumed = Instant::now();
        read_to_clean_end(&mut s, &mut data);
        (data, resumed)
    });
    let (child, started) = spawn(&mut send_cmd("127.0.0.1", &port, &file, SHORT));
    let out = finish(child, started);
    let exited = started + out.elapsed;
    out.assert_success();
    let (received, resumed) = server.join().unwrap();
    assert!(received == content);
    assert!(
        exited > resumed,
        "the sender claimed success before the server read on"
    );
}

/// Waits until the sender on the other end of `s` has half-closed with data still queued
/// (FIN_WAIT1, send queue non-empty): it is in its finish phase. Reads a little at a time if
/// the sender is still writing. Returns the bytes read meanwhile.
fn wait_for_sender_finishing(s: &mut TcpStream) -> Vec<u8> {
    wait_for_sender_state(s, TCP_FIN_WAIT1)
}

/// Waits until the sender's socket is in `want` state with data still queued (see
/// [`wait_for_sender_finishing`]).
fn wait_for_sender_state(s: &mut TcpStream, want: u8) -> Vec<u8> {
    let client = s.peer_addr().unwrap().port();
    let server = s.local_addr().unwrap().port();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let start = Instant::now();
    loop {
        let reached = wait_until(Duration::from_millis(300), || {
            tcp_socket_state(client, server)
                .is_some_and(|(state, queued)| state == want && queued > 0)
        });
        if reached {
            return data;
        }
        assert!(
            start.elapsed() < RUN_DEADLINE,
            "sender never reached its finish phase"
        );
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "sender closed");
        data.extend_from_slice(&buf[..n]);
    }
}

/// The last part of the file sits in the sender's kernel buffer after its half-close. A
/// server that pauses longer than the close timeout (but shorter than the stall timeout)
/// while still holding that data is slow, not broken: success.
#[test]
fn pause_after_the_half_close_is_judged_by_the_stall_timeout() {
    let content = pattern(512 << 10, 14);
    let (_dir, file) = temp_file(&content);
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    let server = peer.serve(|mut s| {
        s.write_all(COMMAND).unwrap();
        let mut data = wait_for_sender_finishing(&mut s);
        std::thread::sleep(Duration::from_millis(1500));
        read_to_clean_end(&mut s, &mut data);
        data
    });
    let out = send_local(
        &port,
        &file,
        &[("ACCIO_STALL_TIMEOUT", "3s"), ("ACCIO_CLOSE_TIMEOUT", "1s")],
    );
    out.assert_success();
    assert!(server.join().unwrap() == content);
}

/// Data stuck unacknowledged after the half-close fails after the stall timeout, well
/// before the (long) close timeout.
#[test]
fn data_never_acknowledged_after_the_half_close_fails_after_the_stall_timeout() {
    never_acknowledged_after_the_half_close(&[]);
}

/// With `--confirm acked` as well: "acked" needs every byte acknowledged, and data the
/// server never takes is not.
#[test]
fn acked_data_never_acknowledged_after_the_half_close_fails_after_the_stall_timeout() {
    never_acknowledged_after_the_half_close(&["--confirm", "acked"]);
}

fn never_acknowledged_after_the_half_close(args: &[&str]) {
    let (_dir, file) = temp_file(&pattern(512 << 10, 15));
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = peer.serve(move |mut s| {
        s.write_all(COMMAND).unwrap();
        let read = wait_for_sender_finishing(&mut s).len();
        let _ = done_rx.recv();
        read
    });
    let out = run(send_cmd(
        "127.0.0.1",
        &port,
        &file,
        &[
            ("ACCIO_STALL_TIMEOUT", "1s"),
            ("ACCIO_CLOSE_TIMEOUT", "20s"),
        ],
    )
    .args(args));
    done_tx.send(()).unwrap();
    assert!(server.join().unwrap() < 512 << 10);
    out.assert_error(code::TRANSFER);
    assert!(out.stderr.contains("stopped reading"), "{}", out.stderr);
    out.assert_elapsed(..Duration::from_secs(5));
}

#[test]
fn connect_timeout_against_a_black_hole() {
    let hole = BlackHole::start();
    let (_dir, file) = temp_file(b"data");
    let out = send_local(
        &hole.port().to_string(),
        &file,
        &[("ACCIO_CONNECT_TIMEOUT", "1s")],
    );
    out.assert_error(code::CONNECT);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    out.assert_elapsed(Duration::from_secs(1)..Duration::from_secs(4));
}

#[test]
fn connection_refused_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, file) = temp_file(b"data");
    let out = send_local(&port.to_string(), &file, SHORT);
    out.assert_error(code::CONNECT);
    out.assert_elapsed(..Duration::from_secs(3));
}

#[test]
fn ipv6_literal() {
    if !have_ipv6() {
        eprintln!("skipped: no IPv6 on loopback");
        return;
    }
    let content = pattern(500, 11);
    let (_dir, file) = temp_file(&content);
    roundtrip_file(
        Peer::bind("[::1]:0".parse().unwrap()),
        "::1",
        &file,
        &content,
    );
}

/// `localhost` may resolve to ::1 first; the listener is on 127.0.0.1 only, so this also
/// shows that every resolved address is tried.
#[test]
fn localhost_by_name() {
    let content = pattern(500, 12);
    let (_dir, file) = temp_file(&content);
    roundtrip_file(Peer::new(), "localhost", &file, &content);
}

/// `http-alt` is 8080: a full transfer when that port is free to bind here.
#[test]
fn service_name_port_http_alt() {
    let Ok(listener) = TcpListener::bind("127.0.0.1:8080") else {
        eprintln!("skipped: cannot bind 127.0.0.1:8080 (service_name_port_resolves covers it)");
        return;
    };
    let content = pattern(500, 13);
    let (_dir, file) = temp_file(&content);
    let server = Peer {
        listener,
        port: 8080,
    }
    .serve(sink);
    send_local("http-alt", &file, SHORT).assert_success();
    assert_eq!(server.join().unwrap(), content);
}

/// `ssh` is resolved to 22 through the services database: the error names port 22, whether
/// nothing listens there (refused) or an SSH server answers (wrong command).
#[test]
fn service_name_port_resolves() {
    let (_dir, file) = temp_file(b"data");
    let out = send_local("ssh", &file, SHORT);
    assert!(
        matches!(out.code(), Some(code::CONNECT | code::HANDSHAKE)),
        "{out:#?}"
    );
    out.assert_one_error_line();
    assert!(out.stderr.contains("127.0.0.1:22"), "{}", out.stderr);
}

#[test]
fn bad_ports_are_usage_errors() {
    let (_dir, file) = temp_file(b"data");
    for port in ["0", "65536", "-1", "abc", "", "no-such-service-name", "80x"] {
        let out = send_local(port, &file, SHORT);
        out.assert_error(code::USAGE);
        assert!(out.stderr.contains("port"), "{port:?}: {}", out.stderr);
        out.assert_elapsed(..Duration::from_secs(3));
    }
}

#[test]
fn bad_host_is_a_resolve_error() {
    let (_dir, file) = temp_file(b"data");
    // A label longer than 63 bytes: the resolver rejects it without asking the network.
    let host = format!("{}.invalid", "a".repeat(70));
    let out = run(&mut send_cmd(&host, "5000", &file, SHORT));
    out.assert_error(code::RESOLVE);
    assert!(out.stderr.contains(&host), "{}", out.stderr);
    out.assert_elapsed(..Duration::from_secs(3));

    let out = run(&mut send_cmd("", "5000", &file, SHORT));
    out.assert_error(code::USAGE);

    // Brackets are URL syntax, not part of an address (as in client.py): refused, with a hint.
    let out = run(&mut send_cmd("[::1]", "5000", &file, SHORT));
    out.assert_error(code::RESOLVE);
    assert!(out.stderr.contains("without brackets"), "{}", out.stderr);
}

#[test]
fn missing_and_extra_arguments_are_usage_errors() {
    let cases: &[&[&str]] = &[
        &[],
        &["send"],
        &["send", "127.0.0.1"],
        &["send", "127.0.0.1", "5000"],
        &["send", "127.0.0.1", "5000", "f", "extra"],
        &["send", "--no-such-flag", "127.0.0.1", "5000", "f"],
    ];
    for args in cases {
        let out = run(accio().args(*args));
        out.assert_error(code::USAGE);
        out.assert_elapsed(..Duration::from_secs(3));
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let out = run(accio().args(["send", "--help"]));
    assert_eq!(out.code(), Some(0));
    for line in [
        "2  usage error",
        "3  FILE missing",
        "4  HOST could not be resolved",
        "5  could not connect",
        "6  the server did not send the accio command",
        "7  the transfer failed",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?} in help");
    }
}

/// FILE problems are reported before any connection: the listening peer never sees one.
fn file_error(path: &std::path::Path) -> Outcome {
    file_error_as(accio(), path)
}

/// [`file_error`] with the binary started by `base` (e.g. [`unprivileged`]).
fn file_error_as(mut base: std::process::Command, path: &std::path::Path) -> Outcome {
    let peer = Peer::new();
    base.args(["send", "127.0.0.1", &peer.port_str()])
        .arg(path)
        .envs(SHORT.iter().copied());
    let out = run(&mut base);
    assert!(!peer.saw_connection(), "connected despite the file error");
    out
}

#[test]
fn missing_file_is_reported_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-file");
    let out = file_error(&path);
    out.assert_error(code::FILE);
    assert!(out.stderr.contains("no-such-file"), "{}", out.stderr);
}

#[test]
fn directory_is_reported_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let out = file_error(dir.path());
    out.assert_error(code::FILE);
    assert!(out.stderr.contains("directory"), "{}", out.stderr);
}

#[test]
fn fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = file_error(&path);
    out.assert_error(code::FILE);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
}

#[test]
fn unreadable_file_is_reported_before_connecting() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Reachable by the unprivileged user the send runs as; only the file is closed.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = write_file(dir.path(), "secret", b"data");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = file_error_as(unprivileged(), &path);
    out.assert_error(code::FILE);
    assert!(out.stderr.contains("secret"), "{}", out.stderr);
}

/// An interactive terminal gets a progress bar for a large file (a pipe never does: see the
/// 100 MiB test). Runs the sender under `script(1)` for a pseudo-terminal; fails where
/// util-linux `script` is missing (`.ci/run` installs it).
#[test]
fn progress_bar_on_a_terminal() {
    assert_eq!(
        run(std::process::Command::new("script").arg("--version")).code(),
        Some(0),
        "needs script(1) (util-linux's bsdutils)"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), 32 << 20);
    let peer = Peer::with_small_rcvbuf();
    let port = peer.port_str();
    // Read slowly so the transfer lasts long enough for the bar to be drawn.
    let server = peer.serve(|mut s| {
        s.write_all(COMMAND).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let (rest, end) = read_all(&mut s);
        end.unwrap();
        buf.len() + rest.len()
    });
    let inner = format!("{} send 127.0.0.1 {port} {}", BIN, file.to_str().unwrap());
    let out = run(std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null()));
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(server.join().unwrap(), 32 << 20);
    assert!(
        out.stdout.contains("MiB"),
        "no progress bar: {:?}",
        out.stdout
    );
    assert!(!out.stdout.contains("ERROR"), "{:?}", out.stdout);
}

/// PROVES THE REAL 10 s DEFAULTS (no timeout variables set). The three waits run at once so
/// the test costs ~10 s: connect against a black hole, handshake with a silent server (during
/// which the sender must use no CPU), and a write stall.
#[test]
fn real_default_timeouts_are_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let small = write_file(dir.path(), "small", b"data");
    let big = sparse_file(dir.path(), 256 << 20);

    let hole = BlackHole::start();
    let silent = Peer::new();
    let silent_port = silent.port_str();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let silent_server = silent.serve(move |_s| {
        let _ = done_rx.recv();
    });
    let staller = Peer::with_small_rcvbuf();
    let stall_port = staller.port_str();
    let (done2_tx, done2_rx) = mpsc::channel::<()>();
    let stall_server = staller.serve(move |mut s| {
        s.write_all(COMMAND).unwrap();
        let _ = done2_rx.recv();
    });

    let connect = spawn(&mut send_cmd(
        "127.0.0.1",
        &hole.port().to_string(),
        &small,
        &[],
    ));
    let handshake = spawn(&mut send_cmd("127.0.0.1", &silent_port, &small, &[]));
    let stall = spawn(&mut send_cmd("127.0.0.1", &stall_port, &big, &[]));

    // No busy waiting: over ~1 s of waiting (for the connect, for the command, for the
    // socket to become writable again), each sender uses (almost) no CPU.
    std::thread::sleep(Duration::from_secs(2));
    let pids = [
        ("connect", connect.0.id()),
        ("handshake", handshake.0.id()),
        ("stall", stall.0.id()),
    ];
    let before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let sampled = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let over = sampled.elapsed();
    for ((what, pid), before) in pids.iter().zip(before) {
        let used = cpu_ticks(*pid) - before;
        assert!(
            used <= 2,
            "{what}: sender used {used} ticks of CPU in {over:?} while waiting"
        );
    }

    let connect = finish(connect.0, connect.1);
    let handshake = finish(handshake.0, handshake.1);
    let stall = finish(stall.0, stall.1);
    done_tx.send(()).unwrap();
    done2_tx.send(()).unwrap();
    silent_server.join().unwrap();
    stall_server.join().unwrap();

    connect.assert_error(code::CONNECT);
    handshake.assert_error(code::HANDSHAKE);
    stall.assert_error(code::TRANSFER);
    let window = Duration::from_millis(9500)..Duration::from_secs(13);
    for (what, out) in [
        ("connect", &connect),
        ("handshake", &handshake),
        ("stall", &stall),
    ] {
        assert!(
            window.contains(&out.elapsed),
            "{what} timeout took {:?}",
            out.elapsed
        );
    }
}

/// stderr is a pipe nobody reads any more (`accio send ... 2>&1 | head -0`): writing the
/// `ERROR:` line fails with EPIPE, which must not turn into a panic or a signal death; the
/// exit code still tells the failure class.
#[test]
fn broken_stderr_pipe_keeps_the_exit_code() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created by pipe(2) and are owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-file");
    let status = accio()
        .args(["send", "127.0.0.1", "5000"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write_end))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(code::FILE), "{status:?}");
}
