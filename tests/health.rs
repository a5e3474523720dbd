//! A server that is mostly fine is not treated as dead (issue 16), end to end: the real
//! `accio watch`, default configuration (timeouts 10 s), one receiver on loopback per case.
//! One test per row of the table that loopback can play (the lossy link is the fault
//! suite's `netns_lossy_10pct`, as root); bounds far from the goals, so that a loaded
//! 2-core machine does not make them flaky; every wait is on a condition, with a deadline.
//! `cargo bench --bench flaky` and `--bench wan` print the figures; the core's simulation
//! (`src/watch/core/scenarios.rs`) checks the goals themselves in simulated time.

#[path = "faults/harness.rs"]
mod harness;
#[path = "faults/payload.rs"]
mod payload;
#[path = "peers/mod.rs"]
mod peers;
#[path = "faults/sink.rs"]
mod sink;

use std::time::{Duration, Instant};

use harness::{wait_until, Conf, Dest, Dirs, WatchConf};
use peers::{Fault, Proxy, ProxyOptions, Receiver, ReceiverOptions};

/// What a run saw.
struct Run {
    received: usize,
    secs: f64,
    accepted: u64,
    faulted: u64,
    downs: usize,
    gave_up: usize,
    log: String,
}

/// Sends `files` of `size` bytes (renamed in at once) to `port` (the receiver `recv`, or a
/// proxy in front of it), default configuration, and waits up to `within` for all of them.
fn run(name: &str, recv: &Receiver, port: u16, files: u64, size: u64, within: Duration) -> Run {
    run_with(name, recv, port, files, size, "", within)
}

/// [`run`], with `top` (top-level keys) ahead of the configuration.
fn run_with(
    name: &str,
    recv: &Receiver,
    port: u16,
    files: u64,
    size: u64,
    top: &str,
    within: Duration,
) -> Run {
    let d = Dirs::new(name);
    let mut w = WatchConf::under(&d.tmp.path().join("w"));
    w.done = None;
    let mut conf = Conf::new("10s", vec![w.clone()]);
    conf.retry_initial = "1s".into();
    conf.retry_max = "5m".into();
    conf.server = Some(Dest::local(port));
    std::fs::write(&d.config, format!("{top}{}", conf.to_toml())).unwrap();
    for i in 1..=files {
        std::fs::write(d.stage.join(format!("s{i}")), payload::content(i, size)).unwrap();
    }
    let (mut svc, not_ready) = d.start_service(Duration::from_secs(30));
    if let Some(tail) = not_ready {
        panic!("{name}: no READY=1; log:\n{tail}");
    }
    let t0 = Instant::now();
    for i in 1..=files {
        std::fs::rename(
            d.stage.join(format!("s{i}")),
            w.dir.join(format!("f{i:07}.dat")),
        )
        .unwrap();
    }
    wait_until(within, || {
        recv.arrivals().len() as u64 >= files || !svc.alive()
    });
    let got = recv.arrivals();
    let secs = got
        .values()
        .max()
        .map_or(0.0, |l| l.duration_since(t0).as_secs_f64());
    let _ = svc.terminate(Duration::from_secs(20));
    let log = d.log_text();
    let r = Run {
        received: got.len(),
        secs,
        accepted: recv.accepted(),
        faulted: recv.faulted(),
        downs: harness::log_lines_with(&log, " is down").len(),
        gave_up: harness::count_entries(&w.failed),
        log,
    };
    println!(
        "{name}: {}/{files} files in {:.1} s, {} connections ({} faulty), {} down, {} given up",
        r.received, r.secs, r.accepted, r.faulted, r.downs, r.gave_up
    );
    r
}

fn pool_with(fault: Option<(Fault, u64)>) -> Receiver {
    Receiver::start(ReceiverOptions {
        pool: Some(32),
        len: Some(2048),
        fault,
        ..ReceiverOptions::default()
    })
}

/// Every 20th connection held without a greeting: the files all arrive, far sooner than
/// one greeting timeout per hung connection would allow (before: 400 files took about 8 s,
/// the destination went down and came back again and again), and it never goes down.
#[test]
fn hung_workers_at_5_percent() {
    let r = every_20th_faulty(Fault::Hang, "health-hung");
    // Each hung connection alone held for the 10 s timeout would be well past this.
    assert!(
        r.secs < 30.0,
        "{:.1} s; log:\n{}",
        r.secs,
        harness::tail(&r.log, 30)
    );
}

/// Every 20th connection closed before its greeting: all arrive, never down.
#[test]
fn closes_at_5_percent() {
    every_20th_faulty(Fault::Close, "health-close");
}

/// 400 files to a pool of 32 whose every 20th connection meets `fault`: all arrive, some
/// connection met the fault, the destination never went down and no file was given up.
fn every_20th_faulty(fault: Fault, name: &str) -> Run {
    let recv = pool_with(Some((fault, 20)));
    let r = run(
        name,
        &recv,
        recv.port(),
        400,
        2048,
        Duration::from_secs(120),
    );
    assert_eq!(r.received, 400, "log:\n{}", harness::tail(&r.log, 30));
    assert!(r.faulted > 0, "no connection met the fault");
    assert_eq!(r.downs, 0, "went down; log:\n{}", harness::tail(&r.log, 30));
    assert_eq!(r.gave_up, 0);
    r
}

/// A server that serves one connection at a time, 1 s each: every file arrives and hardly
/// any connection is abandoned (before: 84 connections for 40 files, 44 given up at the
/// greeting timeout).
#[test]
fn a_one_at_a_time_server() {
    let recv = Receiver::start(ReceiverOptions {
        pool: Some(1),
        delay: Duration::from_secs(1),
        len: Some(1024),
        ..ReceiverOptions::default()
    });
    let r = run(
        "health-serial",
        &recv,
        recv.port(),
        8,
        1024,
        Duration::from_secs(90),
    );
    assert_eq!(r.received, 8, "log:\n{}", harness::tail(&r.log, 30));
    assert!(
        r.accepted <= 8 + 3,
        "{} connections for 8 files; log:\n{}",
        r.accepted,
        harness::tail(&r.log, 30)
    );
}

/// 10 ms away (the delaying proxy), 32 workers: all arrive, no greeting timeouts, never down.
#[test]
fn ten_ms_away() {
    let recv = pool_with(None);
    let proxy = Proxy::start(
        recv.addr,
        ProxyOptions {
            rtt: Duration::from_millis(10),
            window: 4 << 20,
            link_rate: None,
        },
    );
    let r = run(
        "health-10ms",
        &recv,
        proxy.port(),
        300,
        2048,
        Duration::from_secs(120),
    );
    assert_eq!(r.received, 300, "log:\n{}", harness::tail(&r.log, 30));
    assert_eq!(r.downs, 0);
    assert_eq!(recv.greeting_timeouts(), 0);
}

/// Issue 21: when bandwidth, not the server, binds (`max_rate = "2MiB/s"`, 100 files of
/// 32 KiB, a receiver that serves every connection at once), the adaptive limit does not
/// grow connections: the server never sees more than a few at once, where greeting times
/// alone (flat on loopback) would let the limit grow towards its cap of 256.
#[test]
fn a_binding_bandwidth_limit_keeps_connections_few() {
    let size = 32 << 10;
    let recv = Receiver::start(ReceiverOptions {
        len: Some(size),
        ..ReceiverOptions::default()
    });
    let r = run_with(
        "health-paced",
        &recv,
        recv.port(),
        100,
        size,
        "max_rate = \"2MiB/s\"\n",
        Duration::from_secs(120),
    );
    assert_eq!(r.received, 100, "log:\n{}", harness::tail(&r.log, 30));
    println!("paced: at most {} connections at once", recv.peak_open());
    assert!(
        recv.peak_open() <= 24,
        "{} connections at once; log:\n{}",
        recv.peak_open(),
        harness::tail(&r.log, 30)
    );
}
