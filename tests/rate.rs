//! Bandwidth limits over real sockets on loopback: a shared limit with 8 uploads in flight,
//! a timetable entry and a reload coming due during a transfer, `accio send --limit-rate`,
//! a paced upload that is not a stalled one, and the config keys' errors.
//!
//! Bounds are generous (the tests run beside others on a loaded 2-core machine, which can
//! only make transfers slower): the lower bounds on time are hard (a limit must never be
//! exceeded), the upper ones only catch a limit that does not pace or does not let go. The
//! figures (± 5 %) come from `benches/rate.rs`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use accio::client::{self, Destination};
use accio::protocol::{Confirm, Timeouts};
use accio::rate::{Limiter, Pacer, Policy, Rates, Schedule};
use support::read_sink::ReadSink;
use support::send::{accio, finish, spawn, temp_file};
use support::wait::wait_for;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The receiver: greets, reads 64 KiB at a time, logs every read.
fn sink() -> ReadSink {
    ReadSink::start(64 * 1024, true)
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
        stall: Duration::from_secs(5),
        close: Duration::from_secs(5),
    }
}

fn file_of(len: u64) -> (tempfile::TempDir, std::fs::File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    (dir, std::fs::File::open(&path).unwrap())
}

/// One upload of `len` bytes to `dest` under `pacer` (counted among its limits' uploads
/// since it was made); bytes sent and the time waited for grants.
async fn paced_upload(dest: Destination, len: u64, pacer: Pacer) -> (u64, Duration) {
    paced_upload_with(dest, len, pacer, &timeouts()).await
}

/// [`paced_upload`] with these timeouts.
async fn paced_upload_with(
    dest: Destination,
    len: u64,
    mut pacer: Pacer,
    t: &Timeouts,
) -> (u64, Duration) {
    let (_dir, file) = file_of(len);
    let done = client::upload::<std::convert::Infallible>(
        &dest,
        Confirm::Close,
        &file,
        None,
        t,
        Some(&mut pacer),
        &mut |_| {},
        &mut None,
        None,
        |_| Ok(()),
    )
    .await
    .expect("a paced upload, not a failed or stalled one");
    (done.bytes, pacer.waited())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn eight_uploads_share_one_limit() {
    let sink = sink();
    let rate = 2 * MIB;
    let limit = Arc::new(Limiter::new(Some(rate)));
    let started = Instant::now();
    let results = rt().block_on(async {
        // All 8 counted before the first asks for a grant: uploads in flight together
        // (one joining later takes a grant of the share it sees, a second's worth, before
        // its share shrinks).
        let pacers: Vec<Pacer> = (0..8).map(|_| Pacer::new(vec![limit.clone()])).collect();
        let tasks: Vec<_> = pacers
            .into_iter()
            .map(|p| tokio::spawn(paced_upload(sink.dest(), MIB, p)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let took = started.elapsed();
    assert!(results.iter().all(|(b, _)| *b == MIB));
    assert!(results.iter().all(|(_, waited)| *waited > Duration::ZERO));
    // 8 MiB at 2 MiB/s: 4 s, less the burst (20 ms) an idle limit allows.
    assert!(took >= Duration::from_millis(3800), "too fast: {took:?}");
    assert!(took < Duration::from_secs(20), "not released: {took:?}");

    let log = sink.log();
    let t0 = log.iter().map(|r| r.1).min().unwrap();
    // Never faster than the limit: any 1 s window holds at most the rate, plus what the
    // burst and one grant per upload allow.
    let at = |r: &(usize, Instant, u64)| r.1.duration_since(t0).as_secs_f64();
    for start in 0..30 {
        let from = f64::from(start) * 0.1;
        let in_window: u64 = log
            .iter()
            .filter(|r| (from..from + 1.0).contains(&at(r)))
            .map(|r| r.2)
            .sum();
        assert!(
            in_window <= rate + rate / 10 + 8 * 64 * KIB,
            "{in_window} bytes in the second from {from}s"
        );
    }
    // Shared evenly: over 2 s with all 8 in flight, each got about an eighth. Not the
    // first second: an upload asking for its next grant while others are still starting
    // takes the next second of the link (grants are a second of the share when the kernel
    // paces the socket).
    let mut per = [0u64; 8];
    let conns: Vec<usize> = {
        let mut c: Vec<usize> = log.iter().map(|r| r.0).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    assert_eq!(conns.len(), 8);
    for r in log.iter().filter(|r| (1.0..3.0).contains(&at(r))) {
        let i = conns.iter().position(|c| *c == r.0).unwrap();
        per[i] += r.2;
    }
    let mean = per.iter().sum::<u64>() / 8;
    for (i, p) in per.iter().enumerate() {
        assert!(
            p.abs_diff(mean) <= mean / 2,
            "upload {i} got {p} bytes, the mean is {mean}: {per:?}"
        );
    }
}

#[test]
fn a_timetable_entry_coming_due_frees_a_transfer_in_flight() {
    let sink = sink();
    let dest = sink.dest();
    let rates = Arc::new(Rates::default());
    // Limited at 08:00, off from 12:00; "now" is 08:00 at first.
    let schedule = Schedule::new(vec![(8 * 3600, Some(128 * KIB)), (12 * 3600, None)]).unwrap();
    rates.configure(
        Policy::Unlimited,
        vec![(dest.to_string(), Policy::Schedule(schedule))],
        8 * 3600,
    );
    let runtime = rt();
    let pacer = rates.pacer(&dest.to_string());
    let len = 4 * MIB;
    let task = runtime.spawn(async move {
        let (sent, _) = paced_upload(dest, len, pacer).await;
        (sent, Instant::now())
    });
    // At 128 KiB/s the file would take 32 s.
    wait_for("the paced transfer to be under way", || {
        sink.received() >= 128 * KIB
    });
    assert!(sink.received() < 2 * MIB, "not paced: {}", sink.received());
    let due = Instant::now();
    rates.tick(12 * 3600);
    let (sent, done) = runtime.block_on(task).unwrap();
    assert_eq!(sent, len);
    let after = done.duration_since(due);
    assert!(
        after < Duration::from_secs(5),
        "took {after:?} after the limit went off"
    );
}

#[test]
fn a_reload_changes_the_limit_of_a_transfer_in_flight() {
    let sink = sink();
    let dest = sink.dest();
    let rates = Arc::new(Rates::default());
    rates.configure(
        Policy::Unlimited,
        vec![(dest.to_string(), Policy::Fixed(128 * KIB))],
        0,
    );
    let runtime = rt();
    let pacer = rates.pacer(&dest.to_string());
    let task = runtime.spawn(async move {
        paced_upload(dest, 4 * MIB, pacer).await;
        Instant::now()
    });
    wait_for("the paced transfer to be under way", || {
        sink.received() >= 128 * KIB
    });
    // What SIGHUP does: the same Rates, configured from the new file.
    let reloaded = Instant::now();
    rates.configure(
        Policy::Fixed(4 * MIB),
        vec![(sink.dest().to_string(), Policy::Fixed(8 * MIB))],
        0,
    );
    let view = rates.view();
    assert_eq!(view.len(), 2, "{view:?}");
    assert_eq!(view[0].bytes_per_second, Some(4 * MIB));
    let done = runtime.block_on(task).unwrap();
    // The rest (under 4 MiB) at the service's 4 MiB/s: about a second, not 30.
    let after = done.duration_since(reloaded);
    assert!(
        after < Duration::from_secs(8),
        "took {after:?} after the reload"
    );
}

#[test]
fn send_limit_rate_paces_a_large_file() {
    let sink = sink();
    let len = 3 * MIB;
    let (_dir, path) = temp_file(&vec![7u8; len as usize]);
    let (child, started) = spawn(
        accio()
            .args(["send", "--limit-rate", "1MiB/s", "127.0.0.1"])
            .arg(sink.port.to_string())
            .arg(&path),
    );
    let out = finish(child, started);
    out.assert_success();
    assert_eq!(sink.received(), len);
    // 3 MiB at 1 MiB/s: 3 s, less the 20 ms burst, and less the last grant's second
    // sent at the kernel's pace, 10 % above the share (see rate::KERNEL_HEADROOM_PERCENT).
    assert!(out.elapsed >= Duration::from_millis(2800), "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(25), "{out:#?}");
}

#[test]
fn a_socket_the_kernel_paces_slowly_is_not_stalled() {
    // 256 KiB/s: each grant is a second of it, handed to the kernel at once and sent at
    // its pace (SO_MAX_PACING_RATE) in packets far apart (up to 64 KiB on loopback, a
    // quarter of a second): the send queue does not move for longer than the 100 ms stall
    // timeout, while the kernel keeps sending from it.
    let sink = sink();
    let limit = Arc::new(Limiter::new(Some(256 * KIB)));
    let t = Timeouts {
        stall: Duration::from_millis(100),
        ..timeouts()
    };
    let (sent, waited) = rt().block_on(paced_upload_with(
        sink.dest(),
        768 * KIB,
        Pacer::new(vec![limit]),
        &t,
    ));
    assert_eq!(sent, 768 * KIB);
    assert!(waited > Duration::ZERO);
    assert_eq!(sink.received(), 768 * KIB);
}

#[test]
fn a_paced_upload_is_not_a_stalled_one() {
    // At 2K/s each grant (2 KiB, the smallest) waits a second, far longer than the
    // stall timeout; the socket itself always takes the data.
    let sink = sink();
    let (_dir, path) = temp_file(&[1u8; 6 * 1024]);
    let (child, started) = spawn(
        accio()
            .env("ACCIO_STALL_TIMEOUT", "300ms")
            .args(["send", "--limit-rate", "2K", "127.0.0.1"])
            .arg(sink.port.to_string())
            .arg(&path),
    );
    let out = finish(child, started);
    out.assert_success();
    assert_eq!(sink.received(), 6 * KIB);
    assert!(out.elapsed >= Duration::from_millis(1900), "{out:#?}");
}

#[test]
fn a_bad_limit_rate_is_a_usage_error() {
    for bad in ["5X", "0", "100"] {
        let (child, started) = spawn(accio().args(["send", "--limit-rate", bad, "h", "1", "f"]));
        let out = finish(child, started);
        assert_eq!(out.code(), Some(2), "{bad}: {out:#?}");
        assert!(out.stderr.contains("--limit-rate"), "{bad}: {out:#?}");
    }
}

/// Checks configuration text (`@` is a directory that exists) without the filesystem.
fn parse(text: &str) -> Result<accio::config::Config, String> {
    accio::config::parse(text.as_bytes(), std::path::Path::new("/etc/accio.toml"))
        .map_err(|e| e.to_string())
}

const WATCH: &str = "\n[[watch]]\ndir = \"/s\"\ndone_dir = \"/d\"\nfailed_dir = \"/f\"\n";

#[test]
fn the_config_keys_and_their_errors() {
    let c = parse(&format!(
        "max_rate = \"4MiB/s\"\n[server]\nhost = \"h\"\nport = 1\nrate_schedule = [{{ at = \"08:00\", rate = \"1M\" }}, {{ at = \"18:00\", rate = \"off\" }}]\n{WATCH}"
    ))
    .unwrap();
    assert_eq!(c.rates.all, Policy::Fixed(4 * MIB));
    assert_eq!(c.rates.destinations.len(), 1);
    let Policy::Schedule(s) = &c.rates.destinations[0].1 else {
        panic!("{:?}", c.rates);
    };
    assert_eq!(s.at(9 * 3600), Some(MIB));
    assert_eq!(s.at(3600), None);
    // The effective settings read back the same.
    let again = parse(&accio::config::render(&c)).unwrap();
    assert_eq!(again.rates, c.rates);

    // A watch's own server replaces [server]'s limit; an integer is bytes per second.
    let c = parse(&format!(
        "[server]\nhost = \"h\"\nport = 1\nmax_rate = \"1M\"\n{WATCH}server = {{ host = \"o\", port = 2, max_rate = 65536 }}\n"
    ))
    .unwrap();
    assert_eq!(c.rates.destinations[0].1, Policy::Fixed(64 * KIB));

    for (text, want) in [
        (
            format!("max_rate = \"4Q\"\n[server]\nhost = \"h\"\nport = 1\n{WATCH}"),
            "/etc/accio.toml:1: key `max_rate`: \"4Q\" is not a rate",
        ),
        (
            format!("[server]\nhost = \"h\"\nport = 1\nmax_rate = \"0\"\n{WATCH}"),
            "/etc/accio.toml:4: key `server.max_rate`: \"0\": a rate of zero",
        ),
        (
            format!("rate_schedule = [{{ at = \"18:00\", rate = \"1M\" }}, {{ at = \"08:00\", rate = \"off\" }}]\n[server]\nhost = \"h\"\nport = 1\n{WATCH}"),
            "/etc/accio.toml:1: key `rate_schedule`: entry 1: 08:00 is not after",
        ),
        (
            format!("rate_schedule = [{{ at = \"8am\", rate = \"1M\" }}]\n[server]\nhost = \"h\"\nport = 1\n{WATCH}"),
            "key `rate_schedule[0].at`: \"8am\" is not a time of day",
        ),
        (
            format!("rate_schedule = [{{ at = \"08:00\", speed = \"1M\" }}]\n[server]\nhost = \"h\"\nport = 1\n{WATCH}"),
            "key `rate_schedule[0].speed`: unknown key",
        ),
        (
            format!("max_rate = \"1M\"\nrate_schedule = [{{ at = \"08:00\", rate = \"1M\" }}]\n[server]\nhost = \"h\"\nport = 1\n{WATCH}"),
            "/etc/accio.toml:2: key `rate_schedule`: set together with max_rate",
        ),
        (
            format!("[server]\nhost = \"h\"\nport = 1\n{WATCH}\n[[watch]]\ndir = \"/s2\"\ndone_dir = \"/d2\"\nfailed_dir = \"/f2\"\nserver = {{ host = \"h\", port = 1, max_rate = \"2M\" }}\n"),
            "key `watch[1].server`: h:1 is also the server of an earlier watch with another max_rate",
        ),
    ] {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(want), "{err}\nwanted: {want}");
    }
}

/// The service itself: `[server] max_rate` paces its uploads and shows in `accio status`;
/// SIGHUP with another limit changes the uploads in flight.
#[test]
fn the_service_paces_and_a_reload_changes_the_limit_in_flight() {
    use support::watch::{config_text, write_config, Dirs, Opts, Service};
    let dirs = Dirs::new();
    let recv = support::receiver::Receiver::start(&dirs.recv);
    let o = Opts {
        timeout: "5s",
        ..Opts::default()
    };
    let limited = config_text(&dirs, recv.port, &o)
        .replace("[timeouts]", "max_rate = \"256K\"\n\n[timeouts]");
    let config = write_config(&dirs, "a.toml", &limited);
    let svc = Service::start(&config);
    let dest = format!("127.0.0.1:{}", recv.port);
    for i in 0..4 {
        dirs.drop_file(&format!("f{i}"), &vec![i as u8; 2 << 20]);
    }
    // 8 MiB at 256 KiB/s would take 32 s.
    let view = svc.wait_status("4 uploads under way at 256K", |v| {
        v.in_flight.len() == 4 && v.in_flight.iter().all(|f| f.bytes_sent > 0)
    });
    let limit = view.rates.iter().find(|r| r.scope == dest);
    assert_eq!(
        limit.and_then(|r| r.bytes_per_second),
        Some(256 * KIB),
        "{view:#?}"
    );
    let sent: u64 = view.in_flight.iter().map(|f| f.bytes_sent).sum();
    assert!(sent < 4 << 20, "not paced: {view:#?}");

    // Reload: no limit for the destination, 64 MiB/s for the service.
    let reloaded = Instant::now();
    std::fs::write(
        &config,
        config_text(&dirs, recv.port, &o).replace("[server]", "max_rate = \"64M\"\n\n[server]"),
    )
    .unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("configuration reloaded");
    // (By the retiring pipeline: the process's totals, not the new pipeline's watch counts.)
    let view = svc.wait_status("all 4 delivered", |v| v.totals.sent == 4);
    let after = reloaded.elapsed();
    assert!(
        after < Duration::from_secs(15),
        "took {after:?} after the reload"
    );
    assert!(
        view.rates.iter().all(|r| r.scope == "*"),
        "the destination's limit is gone: {view:#?}"
    );
    assert_eq!(view.rates[0].bytes_per_second, Some(64 * MIB));
    assert_eq!(recv.count(), 4);
}
