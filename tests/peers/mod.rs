//! Peers for the scheduling tests and benchmarks (`tests/lanes.rs`, `benches/lanes.rs`,
//! `benches/wan.rs`): real sockets on loopback, plain threads.
//!
//! - [`Receiver`]: an Accio receiver that notes when each file's body was complete (files carry
//!   their id, see `tests/faults/payload.rs`), optionally sleeps a while per file before its
//!   close (a slow server), optionally serves at most P connections at once (a worker pool:
//!   the rest are accepted but wait for a worker before they get `accio\r\n`), and optionally
//!   never greets at all, or misbehaves on every n-th connection only ([`Fault`]: a hung worker
//!   that holds it without a greeting, or a close before the greeting). It counts the
//!   connections open at once (peak), and the greeting timeouts it saw: connections the client
//!   closed before the greeting was sent.
//! - [`BlackHole`]: an address whose accept queue is full, so connection attempts get no
//!   answer at all (SYNs dropped).
//! - [`Proxy`]: a TCP proxy that adds distance: the connection set-up costs one round trip
//!   and every byte and FIN is delayed by half a round trip in each direction, in order;
//!   optionally a shared link rate for the client-to-server direction.
//!
//! Config files with several watches, each with its own destination, are the harness's
//! [`Conf`] (`tests/support/config.rs`): the per-destination keys of the scheduler are used
//! only where asked for, so that a binary without them still accepts the others.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::harness::{Conf, Dest, WatchConf};
use super::payload;

/// Safety net for blocking reads: no thread of a test waits for ever on a peer that vanished.
const READ_SAFETY: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Receiver

/// How a [`Receiver`] behaves.
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    /// Send `accio\r\n`. False: a greeting-less server that accepts and then only waits for
    /// the client to give up.
    pub greet: bool,
    /// Held after each complete body, before the close that confirms it (a slow server).
    pub delay: Duration,
    /// At most this many connections served at once; the others are accepted and wait for a
    /// worker before they are greeted. `None`: every connection is served at once.
    pub pool: Option<usize>,
    /// Only copies of this length count as arrivals (a client that gives up mid-body may
    /// still end with a FIN). `None`: any intact copy.
    pub len: Option<u64>,
    /// Every n-th connection accepted (the n-th, 2n-th, ...) meets this fault instead of a
    /// worker: a server that is mostly fine. Deterministic, so that runs compare.
    pub fault: Option<(Fault, u64)>,
}

/// What a faulty connection meets ([`ReceiverOptions::fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Held open without a greeting until the client gives up: a hung worker (a pre-fork
    /// server with one stuck child, whose share of the connections the kernel still hands
    /// to it). It does not take a worker of the pool: the others go on.
    Hang,
    /// Closed at once, before the greeting (a worker that crashes on accept).
    Close,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            greet: true,
            delay: Duration::ZERO,
            pool: None,
            len: None,
            fault: None,
        }
    }
}

/// One connection's life as the receiver saw it: accepted at `open`, ended (client gone, or
/// our close) at `close`.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub open: Instant,
    pub close: Option<Instant>,
}

#[derive(Default)]
struct RecvShared {
    stop: AtomicBool,
    /// (id, when the body was complete), intact copies only.
    arrivals: Mutex<Vec<(u64, Instant)>>,
    spans: Mutex<Vec<Span>>,
    accepted: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    busy: AtomicUsize,
    peak_busy: AtomicUsize,
    greeting_timeouts: AtomicU64,
    faulted: AtomicU64,
}

/// A receiver on 127.0.0.1; stops accepting when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<RecvShared>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(opts: ReceiverOptions) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RecvShared::default());
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            // With a pool, accepted connections wait in this queue for a worker.
            let queue = opts.pool.map(|p| {
                let (tx, rx) = mpsc::channel::<(TcpStream, usize)>();
                let rx = Arc::new(Mutex::new(rx));
                for _ in 0..p.max(1) {
                    let (rx, sh, o) = (rx.clone(), sh.clone(), opts.clone());
                    std::thread::spawn(move || loop {
                        let next = rx.lock().unwrap().recv();
                        match next {
                            Ok((s, i)) => serve(s, i, &sh, &o),
                            Err(_) => return,
                        }
                    });
                }
                tx
            });
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let _ = stream.set_nodelay(true);
                let index = {
                    let mut spans = sh.spans.lock().unwrap();
                    spans.push(Span {
                        open: Instant::now(),
                        close: None,
                    });
                    spans.len() - 1
                };
                let nth = sh.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let n = sh.open.fetch_add(1, Ordering::SeqCst) + 1;
                sh.peak_open.fetch_max(n, Ordering::SeqCst);
                match opts.fault {
                    Some((fault, every)) if every > 0 && nth % every == 0 => {
                        sh.faulted.fetch_add(1, Ordering::SeqCst);
                        let sh = sh.clone();
                        std::thread::spawn(move || faulty(stream, index, fault, &sh));
                        continue;
                    }
                    _ => {}
                }
                match &queue {
                    Some(tx) => {
                        let _ = tx.send((stream, index));
                    }
                    None => {
                        let (sh, o) = (sh.clone(), opts.clone());
                        std::thread::spawn(move || serve(stream, index, &sh, &o));
                    }
                }
            }
        });
        Receiver {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// First arrival of each id.
    pub fn arrivals(&self) -> HashMap<u64, Instant> {
        let mut m = HashMap::new();
        for (id, at) in self.shared.arrivals.lock().unwrap().iter() {
            let e = m.entry(*id).or_insert(*at);
            if at < e {
                *e = *at;
            }
        }
        m
    }

    /// Intact copies received, duplicates included.
    pub fn received(&self) -> usize {
        self.shared.arrivals.lock().unwrap().len()
    }

    /// The latest arrival so far.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.shared
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .max()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.shared.spans.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Most connections open at once (waiting for a worker included).
    pub fn peak_open(&self) -> usize {
        self.shared.peak_open.load(Ordering::SeqCst)
    }

    /// Most connections being served at once (at most the pool).
    pub fn peak_busy(&self) -> usize {
        self.shared.peak_busy.load(Ordering::SeqCst)
    }

    /// Connections the client closed before it got the greeting.
    pub fn greeting_timeouts(&self) -> u64 {
        self.shared.greeting_timeouts.load(Ordering::SeqCst)
    }

    /// Connections that met the [`Fault`] (held or closed without a greeting).
    pub fn faulted(&self) -> u64 {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// When the first connection ended, waiting up to `within` for one to end; `None` if none
    /// did. For a greeting-less receiver: the client's first failure.
    pub fn first_close(&self, within: Duration) -> Option<Instant> {
        super::harness::wait_until(within, || self.spans().iter().any(|s| s.close.is_some()));
        self.spans().iter().filter_map(|s| s.close).min()
    }

    /// The most connections open at once among those opened at or after `from`, until now
    /// ([`max_overlap`] with 300 ms of slack).
    pub fn most_open_since(&self, from: Instant) -> usize {
        max_overlap(
            &self.spans(),
            from,
            Duration::from_millis(300),
            Instant::now(),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// True once the peer has closed (FIN or RST), without waiting.
fn peer_closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// A connection that met a [`Fault`]: never greeted; held until the client leaves, or closed.
fn faulty(mut s: TcpStream, index: usize, fault: Fault, sh: &RecvShared) {
    if fault == Fault::Hang {
        let _ = s.set_read_timeout(Some(READ_SAFETY));
        let mut buf = [0u8; 1024];
        while !matches!(s.read(&mut buf), Ok(0) | Err(_)) {}
    }
    if let Some(span) = sh.spans.lock().unwrap().get_mut(index) {
        span.close = Some(Instant::now());
    }
    sh.open.fetch_sub(1, Ordering::SeqCst);
    drop(s);
}

fn serve(mut s: TcpStream, index: usize, sh: &RecvShared, o: &ReceiverOptions) {
    let n = sh.busy.fetch_add(1, Ordering::SeqCst) + 1;
    sh.peak_busy.fetch_max(n, Ordering::SeqCst);
    let _ = s.set_read_timeout(Some(READ_SAFETY));
    let mut buf = vec![0u8; 64 * 1024];
    if !o.greet {
        // Wait for the client to give up; never greet.
        while !matches!(s.read(&mut buf), Ok(0) | Err(_)) {}
        sh.greeting_timeouts.fetch_add(1, Ordering::SeqCst);
    } else if peer_closed(&s) || s.write_all(b"accio\r\n").is_err() {
        sh.greeting_timeouts.fetch_add(1, Ordering::SeqCst);
    } else {
        // Checked as it comes (files may be 50 MiB): the id from the header, then every byte.
        let mut copy = Copy::default();
        let mut clean = true;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => copy.feed(&buf[..k]),
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        if copy.len == 0 {
            // The client left without a byte: it gave up waiting for the greeting (with a
            // proxy in the way its FIN may arrive just after the greeting went out).
            sh.greeting_timeouts.fetch_add(1, Ordering::SeqCst);
        } else if clean {
            let whole = o.len.map_or(true, |l| l == copy.len);
            if let (Some(id), true, true) = (copy.id, copy.intact, whole) {
                sh.arrivals.lock().unwrap().push((id, Instant::now()));
            }
            if !o.delay.is_zero() {
                std::thread::sleep(o.delay);
            }
        }
    }
    // Counted as ended before the close: our close is the client's confirmation, and it may
    // open its next connection before this thread runs again.
    if let Some(span) = sh.spans.lock().unwrap().get_mut(index) {
        span.close = Some(Instant::now());
    }
    sh.busy.fetch_sub(1, Ordering::SeqCst);
    sh.open.fetch_sub(1, Ordering::SeqCst);
    drop(s);
}

/// A body checked as it arrives: the id of its header, and whether every byte after it is
/// what file `id` holds there (see `payload`).
#[derive(Default)]
struct Copy {
    head: Vec<u8>,
    id: Option<u64>,
    len: u64,
    intact: bool,
}

impl Copy {
    fn feed(&mut self, mut b: &[u8]) {
        if self.head.len() < payload::HEADER_LEN {
            let take = (payload::HEADER_LEN - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..take]);
            self.len += take as u64;
            b = &b[take..];
            if self.head.len() == payload::HEADER_LEN {
                self.id = payload::parse_header(&self.head);
                self.intact = self.id.is_some();
            }
        }
        if let (Some(id), true) = (self.id, self.intact) {
            let start = self.len;
            self.intact = b
                .iter()
                .enumerate()
                .all(|(i, x)| *x == payload::filler(id, start + i as u64));
        }
        self.len += b.len() as u64;
    }
}

/// The most connections open at once among `spans` that were opened at or after `from`.
/// Two spans overlap only if they share more than `slack`: the receiver notes a close when
/// its thread wakes up, which may be just after it accepted the client's next connection.
pub fn max_overlap(spans: &[Span], from: Instant, slack: Duration, now: Instant) -> usize {
    let mut events: Vec<(Instant, i32)> = Vec::new();
    for s in spans.iter().filter(|s| s.open >= from) {
        let close = s.close.unwrap_or(now);
        let end = close.checked_sub(slack).unwrap_or(s.open).max(s.open);
        if end > s.open {
            events.push((s.open, 1));
            events.push((end, -1));
        }
    }
    // Ends before starts at the same instant.
    events.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        best = best.max(cur);
    }
    best.max(0) as usize
}

// ---------------------------------------------------------------------------------------
// Black hole

/// An address whose accept queue is full (the one `tests/support` has, through the fault
/// harness every includer of this file also includes).
pub use super::harness::BlackHole;

// ---------------------------------------------------------------------------------------
// Latency proxy

/// Something travelling through the proxy in one direction.
enum Item {
    Bytes(Vec<u8>),
    Fin,
    Reset,
}

/// A TCP proxy on 127.0.0.1 that puts `rtt` between its clients and `upstream`:
/// - set-up: the upstream connection is made 1.5 round trips after the client's (its SYN,
///   SYN-ACK and the ACK that lets the server accept), so a greeting sent at once reaches the
///   client 2 round trips after its connect began, as on a real link;
/// - every byte, and the FIN, half a round trip later than it was sent, in each direction and
///   in order (each direction is a reader thread stamping what it reads with its due time and
///   a writer thread that waits for it);
/// - at most `window` bytes in flight per connection and direction (a TCP window);
/// - optionally a shared link of `link_rate` bytes/s for the client-to-server direction of
///   all connections together (transmission time, then the propagation delay).
///
/// The client's own `connect` returns at once (the proxy's kernel accepts it): the set-up
/// round trip shows up as time to the greeting instead.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

pub struct ProxyOptions {
    pub rtt: Duration,
    /// Bytes in flight per connection and direction.
    pub window: usize,
    /// Shared client-to-server link rate, bytes/s; `None` = unlimited.
    pub link_rate: Option<u64>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, o: ProxyOptions) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let link = o
            .link_rate
            .map(|r| (r, Arc::new(Mutex::new(Instant::now()))));
        let (rtt, window) = (o.rtt, o.window.max(64 * 1024));
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let _ = client.set_nodelay(true);
                let link = link.clone();
                let setup_at = Instant::now() + rtt + rtt / 2;
                if let Err(e) = proxy_one(client, upstream, setup_at, rtt, window, link) {
                    eprintln!("proxy: {e}");
                }
            }
        });
        Proxy {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

type Link = Option<(u64, Arc<Mutex<Instant>>)>;

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Starts the threads of one proxied connection.
fn proxy_one(
    client: TcpStream,
    upstream: SocketAddr,
    setup_at: Instant,
    rtt: Duration,
    window: usize,
    link: Link,
) -> std::io::Result<()> {
    let chunks = (window / (64 * 1024)).max(1);
    let (tx_up, rx_up) = mpsc::sync_channel::<(Instant, Item)>(chunks);
    let client_r = client.try_clone()?;
    // Client -> server, reader: stamps what the client sends (its FIN too) from the start,
    // while the set-up round trip is still running.
    std::thread::spawn(move || pump_read(client_r, tx_up, rtt / 2, link));
    // Client -> server, writer: makes the upstream connection when the set-up is over, starts
    // the other direction, then delivers in order.
    std::thread::spawn(move || {
        sleep_until(setup_at);
        let up = match TcpStream::connect(upstream) {
            Ok(u) => u,
            Err(_) => {
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        };
        let _ = up.set_nodelay(true);
        let (tx_down, rx_down) = mpsc::sync_channel::<(Instant, Item)>(chunks);
        if let (Ok(up_r), Ok(client_w)) = (up.try_clone(), client.try_clone()) {
            std::thread::spawn(move || pump_read(up_r, tx_down, rtt / 2, None));
            std::thread::spawn(move || pump_write(client_w, rx_down));
        }
        pump_write(up, rx_up);
    });
    Ok(())
}

/// Reads `from` and queues what it read with its due time (after the link's transmission
/// time, if any, and `delay`). The bounded queue is the window: when it is full, we stop
/// reading and the sender's buffers fill up.
fn pump_read(
    mut from: TcpStream,
    tx: mpsc::SyncSender<(Instant, Item)>,
    delay: Duration,
    link: Link,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (item, n) = match from.read(&mut buf) {
            Ok(0) => (Item::Fin, 0),
            Ok(n) => (Item::Bytes(buf[..n].to_vec()), n),
            Err(_) => (Item::Reset, 0),
        };
        let mut sent = Instant::now();
        if let (Some((rate, free)), true) = (&link, n > 0) {
            let done = {
                let mut free = free.lock().unwrap();
                let start = (*free).max(sent);
                *free = start + Duration::from_secs_f64(n as f64 / *rate as f64);
                *free
            };
            // Transmitting: the sender waits for the link.
            sleep_until(done);
            sent = done;
        }
        let last = !matches!(item, Item::Bytes(_));
        if tx.send((sent + delay, item)).is_err() || last {
            return;
        }
    }
}

/// Delivers what `pump_read` queued, each item at its due time.
fn pump_write(mut to: TcpStream, rx: mpsc::Receiver<(Instant, Item)>) {
    for (due, item) in rx {
        sleep_until(due);
        match item {
            Item::Bytes(b) => {
                if to.write_all(&b).is_err() {
                    // The far end is gone: make the near end see it too.
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            Item::Fin => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Item::Reset => {
                let _ = socket2::SockRef::from(&to).set_linger(Some(Duration::ZERO));
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration

/// Whether `bin` knows the scheduler's per-destination keys (`concurrency`, `adaptive` in a
/// destination): `accio check-config` on a config that uses them.
pub fn knows_destination_keys(bin: &Path) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = WatchConf::under(tmp.path());
    w.server = Some(Dest {
        concurrency: Some(4),
        adaptive: Some(false),
        ..Dest::local(9)
    });
    let conf = Conf::new("1s", vec![w]);
    let path = tmp.path().join("probe.toml");
    conf.write(&path);
    std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Files

/// Writes files `ids` (self-identifying, `len` bytes) into `stage`, then renames them into
/// `spool` as `f{id}.dat` one after the other; returns each id with the time just before
/// its rename. `stage` and `spool` must be on one filesystem.
pub fn drop_files(
    stage: &Path,
    spool: &Path,
    ids: std::ops::Range<u64>,
    len: u64,
) -> Vec<(u64, Instant)> {
    for i in ids.clone() {
        std::fs::write(stage.join(format!("s{i}")), payload::content(i, len)).unwrap();
    }
    ids.map(|i| {
        let t = Instant::now();
        std::fs::rename(
            stage.join(format!("s{i}")),
            spool.join(format!("f{i:010}.dat")),
        )
        .unwrap();
        (i, t)
    })
    .collect()
}

/// The latency of each dropped file that arrived (rename to body complete), sorted.
pub fn latencies(dropped: &[(u64, Instant)], got: &HashMap<u64, Instant>) -> Vec<Duration> {
    let mut v: Vec<Duration> = dropped
        .iter()
        .filter_map(|(i, t)| got.get(i).map(|r| r.saturating_duration_since(*t)))
        .collect();
    v.sort();
    v
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------------
// Two destinations: one in trouble, one healthy

/// What is wrong with the troubled destination.
#[derive(Clone, Copy, Debug)]
pub enum Trouble {
    /// Accepts and never sends `accio\r\n`.
    NoGreeting,
    /// Never answers a connection attempt.
    BlackHole,
    /// Healthy but slow: `delay` per file before its close.
    Slow { delay: Duration },
}

/// Keeps the troubled peer alive.
pub enum BadPeer {
    Receiver(Receiver),
    Hole(BlackHole),
}

/// `accio watch` with two watches: `a` sends to a troubled destination, `b` to a healthy
/// receiver. Timeouts all `timeout`, `concurrency` as given (`None`: the default).
pub struct Pair {
    pub dirs: super::harness::Dirs,
    pub a: WatchConf,
    pub b: WatchConf,
    pub bad: BadPeer,
    pub healthy: Receiver,
    pub svc: super::harness::Service,
}

/// Ids of the healthy watch's files start here (the troubled watch's at 1).
pub const HEALTHY_IDS: u64 = 1_000_000_000;

impl Pair {
    pub fn start(name: &str, trouble: Trouble, timeout: &str, concurrency: Option<i64>) -> Pair {
        use super::harness::Dirs;
        let dirs = Dirs::new(name);
        let mut a = WatchConf::under(&dirs.tmp.path().join("a"));
        let mut b = WatchConf::under(&dirs.tmp.path().join("b"));
        let bad = match trouble {
            Trouble::NoGreeting => BadPeer::Receiver(Receiver::start(ReceiverOptions {
                greet: false,
                ..ReceiverOptions::default()
            })),
            Trouble::BlackHole => BadPeer::Hole(BlackHole::start()),
            Trouble::Slow { delay } => BadPeer::Receiver(Receiver::start(ReceiverOptions {
                delay,
                len: Some(1024),
                ..ReceiverOptions::default()
            })),
        };
        let bad_port = match &bad {
            BadPeer::Receiver(r) => r.port(),
            BadPeer::Hole(h) => h.port(),
        };
        let healthy = Receiver::start(ReceiverOptions {
            len: Some(1024),
            ..ReceiverOptions::default()
        });
        a.server = Some(Dest::local(bad_port));
        b.server = Some(Dest::local(healthy.port()));
        let mut conf = Conf::new(timeout, vec![a.clone(), b.clone()]);
        conf.concurrency = concurrency;
        conf.write(&dirs.config);
        let (svc, not_ready) = dirs.start_service(Duration::from_secs(20));
        if let Some(tail) = not_ready {
            panic!("accio watch not ready within 20 s; log:\n{tail}");
        }
        Pair {
            dirs,
            a,
            b,
            bad,
            healthy,
            svc,
        }
    }

    /// `n` files (1 KiB) into the troubled watch, ids from 1.
    pub fn load_troubled(&self, n: u64) -> Vec<(u64, Instant)> {
        drop_files(&self.dirs.stage, &self.a.dir, 1..n + 1, 1024)
    }

    /// `n` files (1 KiB) into the healthy watch, ids from `first`.
    pub fn drop_healthy(&self, first: u64, n: u64) -> Vec<(u64, Instant)> {
        drop_files(&self.dirs.stage, &self.b.dir, first..first + n, 1024)
    }

    /// Waits (up to `deadline`) for every file of `dropped` at the healthy receiver; their
    /// latencies, sorted, and how many never came.
    pub fn healthy_latencies(
        &self,
        dropped: &[(u64, Instant)],
        deadline: Duration,
    ) -> (Vec<Duration>, usize) {
        super::harness::wait_until(deadline, || {
            let got = self.healthy.arrivals();
            dropped.iter().all(|(i, _)| got.contains_key(i))
        });
        let lat = latencies(dropped, &self.healthy.arrivals());
        let missing = dropped.len() - lat.len();
        (lat, missing)
    }

    pub fn log_tail(&self, n: usize) -> String {
        super::harness::tail(&self.dirs.log_text(), n)
    }
}
