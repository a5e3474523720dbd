//! One destination's trouble never holds up another's files (issue 8), end to end: the real
//! `accio watch` with two watches, each with its own server on loopback. Watch A's server
//! misbehaves (never greets, black-holes connects, or is slow with a big backlog); one second
//! after A got its files, files are dropped into watch B, whose server is healthy.
//!
//! `concurrency = 4` and timeouts of 2 s, as in the issue, so that A's files can take every
//! slot at first. What is asserted, with bounds far from both the promise and today's
//! figures (a loaded 2-core machine must not make them flaky):
//! - B's files all arrive, each within one timeout + 3 s of its rename (the worst the issue
//!   allows is to wait for the first of A's attempts already in flight: one timeout; before
//!   per-destination lanes B's files took about 19 s, behind all of A's files);
//! - with the slow server, within one slow upload + 3 s (before: about 24 s, behind A's
//!   2,000-file backlog);
//! - once A's greeting-less server has seen the first failure, A never holds more than one
//!   connection at a time (the receiver's own record of the connections it saw).
//!
//! The bench `cargo bench --bench lanes` prints the same cases as figures.

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/payload.rs"]
mod payload;
#[path = "peers/mod.rs"]
mod peers;
#[path = "faults/sink.rs"]
mod sink;

use std::time::{Duration, Instant};

use peers::{max_overlap, BadPeer, Pair, Trouble, HEALTHY_IDS};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Room for a loaded machine on top of what the issue promises.
const MARGIN: Duration = Duration::from_secs(3);
/// Files dropped into the healthy watch.
const HEALTHY_FILES: u64 = 5;

/// Loads A with `bad_files`, waits 1 s, drops B's files; asserts they all arrive within
/// `bound` of their rename. Returns the pair for further checks.
fn healthy_beside(name: &str, trouble: Trouble, bad_files: u64, bound: Duration) -> Pair {
    let pair = Pair::start(name, trouble, "2s", Some(4));
    pair.load_troubled(bad_files);
    std::thread::sleep(Duration::from_secs(1)); // the scenario: B's files come 1 s later
    let dropped = pair.drop_healthy(HEALTHY_IDS, HEALTHY_FILES);
    // Long enough for today's behaviour to show as figures rather than a timeout.
    let (lat, missing) = pair.healthy_latencies(&dropped, Duration::from_secs(60));
    assert_eq!(
        missing,
        0,
        "{name}: {missing} of B's {HEALTHY_FILES} files never arrived within 60 s; log:\n{}",
        pair.log_tail(40)
    );
    let worst = *lat.last().unwrap();
    assert!(
        worst <= bound,
        "{name}: B's files waited behind A's: latencies {lat:?}, allowed {bound:?}; log:\n{}",
        pair.log_tail(40)
    );
    pair
}

#[test]
fn greeting_less_server_beside_a_healthy_one() {
    let pair = healthy_beside("lanes-nogreet", Trouble::NoGreeting, 40, TIMEOUT + MARGIN);
    let BadPeer::Receiver(bad) = &pair.bad else {
        unreachable!()
    };
    // A's first failure: the first connection that ended (the client gave up waiting).
    let first_failure = bad.first_close(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "A's server never saw a connection end; log:\n{}",
            pair.log_tail(40)
        )
    });
    // Watch A for a while after it went down: long enough for the attempts in flight then to
    // end and for probes to follow (retry.initial is 1 s, doubling).
    let until = first_failure + 3 * TIMEOUT;
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let most = bad.most_open_since(first_failure);
    let spans = bad.spans();
    let opened_after = spans.iter().filter(|s| s.open >= first_failure).count();
    assert!(
        most <= 1,
        "once down, A held {most} connections at once ({opened_after} opened after its first \
         failure, {} in all); log:\n{}",
        spans.len(),
        pair.log_tail(40)
    );
}

#[test]
fn black_holed_server_beside_a_healthy_one() {
    healthy_beside("lanes-hole", Trouble::BlackHole, 40, TIMEOUT + MARGIN);
}

/// 2,000 files for a server that takes 50 ms per file: 25 s of backlog at 4 in flight. The
/// test does not wait for that backlog: it ends once B's files are in (a few seconds).
#[test]
fn slow_server_with_a_backlog_beside_a_healthy_one() {
    let slow = Duration::from_millis(50);
    let pair = healthy_beside(
        "lanes-slow",
        Trouble::Slow { delay: slow },
        2000,
        slow + MARGIN,
    );
    let BadPeer::Receiver(bad) = &pair.bad else {
        unreachable!()
    };
    // The backlog was really being sent meanwhile.
    assert!(bad.received() > 0, "A's slow server got nothing");
}

// The peers themselves (fast, in the default suite): the figures of the benchmarks rest on
// them.

/// Spans that only touch (a close noted just after the next accept) do not count as
/// overlapping; spans that really overlap do; spans before `from` are ignored.
#[test]
fn max_overlap_counts_real_overlaps_only() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let span = |a: u64, b: Option<u64>| peers::Span {
        open: at(a),
        close: b.map(at),
    };
    let slack = Duration::from_millis(300);
    let touching = [span(1000, Some(3010)), span(3000, Some(5000))];
    assert_eq!(max_overlap(&touching, at(1000), slack, at(6000)), 1);
    let four = [
        span(0, Some(2000)), // before `from`: ignored
        span(2000, Some(4000)),
        span(2000, Some(4000)),
        span(2010, None), // still open
        span(2020, Some(4000)),
    ];
    assert_eq!(max_overlap(&four, at(1000), slack, at(5000)), 4);
    assert_eq!(max_overlap(&four, at(4500), slack, at(5000)), 0);
}

/// Through the proxy, the greeting comes two round trips after the connect (set-up, then
/// half a round trip each way) and the close one round trip after the FIN; the file arrives
/// intact.
#[test]
fn proxy_adds_its_round_trips() {
    use std::io::{Read, Write};
    let recv = peers::Receiver::start(peers::ReceiverOptions::default());
    let rtt = Duration::from_millis(100);
    let proxy = peers::Proxy::start(
        recv.addr,
        peers::ProxyOptions {
            rtt,
            window: 1 << 20,
            link_rate: None,
        },
    );
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 7];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"accio\r\n");
    let to_greeting = t0.elapsed();
    assert!(to_greeting >= 2 * rtt, "greeting after {to_greeting:?}");
    s.write_all(&payload::content(7, 100_000)).unwrap();
    let t1 = Instant::now();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let to_close = t1.elapsed();
    assert!(to_close >= rtt, "confirmed after {to_close:?}");
    assert!(recv.arrivals().contains_key(&7));
}

/// With a pool of one, a connection that waits for the worker and is closed by its client
/// before it was greeted counts as a greeting timeout; the peak counts it as open.
#[test]
fn receiver_pool_counts_greeting_timeouts() {
    use std::io::{Read, Write};
    let recv = peers::Receiver::start(peers::ReceiverOptions {
        pool: Some(1),
        ..peers::ReceiverOptions::default()
    });
    let mut first = std::net::TcpStream::connect(recv.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; 7];
    first.read_exact(&mut greeting).unwrap(); // the worker is busy with `first` now
    let second = std::net::TcpStream::connect(recv.addr).unwrap();
    assert!(harness::wait_until(Duration::from_secs(20), || recv
        .peak_open()
        == 2));
    drop(second); // gives up before its greeting
    first.write_all(&payload::content(1, 1000)).unwrap();
    first.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert!(harness::wait_until(Duration::from_secs(20), || recv
        .greeting_timeouts()
        == 1));
    assert_eq!(recv.peak_busy(), 1);
    assert!(recv.arrivals().contains_key(&1));
}
