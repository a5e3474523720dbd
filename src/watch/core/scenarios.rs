//! The rows of issue 16 in simulated time: the core (through [`Sim`], which plays the spool
//! and checks the core's invariants after every step) against a model of a server and the
//! network between, with deterministic figures (printed with `--nocapture`) and bounds.
//!
//! The model: an attempt connects after one round trip (plus, on a lossy link, the SYN
//! retransmissions: 1 s, 2 s, 4 s, ...; past the connect timeout it fails), is accepted, and
//! waits for a worker of the server's pool (`None`: one each); the worker greets it at once
//! (the greeting arrives half a round trip later: the greeting time is the wait plus half a
//! round trip) and holds it for `service` plus a round trip (body, close). A client that
//! waited for the greeting longer than the greeting timeout (10 s) gives up: a failure before the greeting; the worker that later takes the
//! connection finds it closed (an abandoned connection: an empty or `ERROR` file on a server
//! that saves each connection). Every n-th connection accepted may meet a [`Fault`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::*;

const S: Duration = Duration::from_secs(1);
/// The configured connect and greeting timeouts (the defaults).
const TIMEOUT: Duration = Duration::from_secs(10);
/// The simulation's invariants are checked every this many events.
const CHECK_EVERY: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Held without a greeting until the client gives up (a hung worker; not one of the
    /// pool's).
    Hang,
    /// Closed before the greeting.
    Close,
}

#[derive(Debug, Clone)]
struct Server {
    rtt: Duration,
    /// From this time on, the round trip is this (a route that became slower).
    rtt_later: Option<(Duration, Duration)>,
    workers: Option<usize>,
    service: Duration,
    fault: Option<(Fault, u64)>,
    /// Chance that one packet of a set-up is lost (SYN or SYN-ACK, the greeting).
    loss: f64,
    /// A link shared by all uploads, which takes this long per file (a bandwidth limit):
    /// bodies go one after the other, and an upload that waited for it is paced.
    link: Option<Duration>,
    /// Whether the client is told when an upload was paced (else it never is).
    tell_paced: bool,
    /// A busy machine's scheduling: by this chance a greeting is sent late, by a worker that
    /// took its connection in the queue's order but did not get the CPU (a receiver whose
    /// worker threads greet in whatever order they run, on a loaded 2-core machine), by a
    /// delay drawn from an exponential distribution of this mean (most delays short, a few
    /// long); its worker is held meanwhile, and later connections are greeted first.
    stalls: Option<(f64, Duration)>,
}

impl Server {
    fn pool(workers: usize, rtt: Duration, service: Duration) -> Server {
        Server {
            rtt,
            rtt_later: None,
            workers: Some(workers),
            service,
            fault: None,
            loss: 0.0,
            link: None,
            tell_paced: true,
            stalls: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The TCP handshake of connection `id` completed (or timed out).
    Connected(u64),
    /// A worker takes connection `id`.
    Worker(u64),
    /// Connection `id` got its greeting `greeting` ago and is done now.
    Done(u64),
    /// The client of `id` stops waiting for the greeting.
    GiveUp(u64),
    /// Connection `id` was closed before the greeting.
    Closed(u64),
}

#[derive(Debug)]
struct Conn {
    key: Key,
    started: Duration,
    connected: Duration,
    timeout: Duration,
    greeted: Option<Duration>,
    /// When the greeting reaches the client (the attempt knows of it from then on).
    greeting_arrives: Duration,
    gone: bool,
    /// Its body waited for the shared link.
    paced: bool,
}

#[derive(Debug, Default, Clone)]
struct Figures {
    files: usize,
    delivered: usize,
    /// From the drop to the last delivery.
    secs: f64,
    worst: Duration,
    /// Waits of the median and the 95th percentile file.
    p50: Duration,
    p95: Duration,
    connections: u64,
    abandoned: u64,
    /// Attempts abandoned by the core (overtaken while waiting for the greeting).
    overtaken: u64,
    downs: usize,
    peak_limit: usize,
    final_limit: usize,
}

impl Figures {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

struct Net {
    sim: Sim,
    server: Server,
    rng: fastrand::Rng,
    events: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    seq: u64,
    handled: u64,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    accepted: u64,
    busy: usize,
    queue: VecDeque<u64>,
    abandoned: u64,
    /// Attempts the core abandoned (overtaken while waiting for the greeting).
    abandoned_early: u64,
    /// Attempts to end once the actions are done (ending one inside the action loop would
    /// nest it).
    later: Vec<(u64, Outcome)>,
    /// Keys with a connection of theirs in the model.
    tracked: HashMap<Key, u64>,
    dropped_at: HashMap<Key, Duration>,
    latencies: Vec<Duration>,
    last_delivery: Duration,
    peak_limit: usize,
    /// When the shared link is free for the next body.
    link_free: Duration,
}

fn handshake_timeout() -> DestError {
    DestError::new(
        test_dest(),
        protocol(ProtocolError::HandshakeTimeout(TIMEOUT)),
    )
}

fn closed_before_greeting() -> DestError {
    DestError::new(
        test_dest(),
        protocol(ProtocolError::HandshakeIo(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof,
        ))),
    )
}

fn connect_timeout() -> DestError {
    DestError::new(
        test_dest(),
        crate::client::ClientError::ConnectTimeout {
            dest: test_dest(),
            timeout: TIMEOUT,
            tried: crate::client::TriedAddrs::default(),
        },
    )
}

/// One destination with the defaults of the configuration: global cap 256, adaptive (or
/// pinned at `fixed`), retry 1 s to 5 min, probes to 1 min.
fn default_params(fixed: Option<usize>) -> Params {
    let mut p = params(&[0], 1, fixed.unwrap_or(256), fixed.unwrap_or(256), 16_384);
    p.retry = RetryPolicy {
        initial: S,
        max: 300 * S,
        max_attempts: 10,
        probe_max: 60 * S,
    };
    p.dests[0].adaptive = fixed.is_none();
    p
}

impl Net {
    fn new(server: Server, fixed: Option<usize>, seed: u64) -> Net {
        Net {
            sim: Sim::new(default_params(fixed), true),
            server,
            rng: fastrand::Rng::with_seed(seed),
            events: BinaryHeap::new(),
            seq: 0,
            handled: 0,
            conns: HashMap::new(),
            next_conn: 0,
            accepted: 0,
            busy: 0,
            queue: VecDeque::new(),
            abandoned: 0,
            abandoned_early: 0,
            later: Vec::new(),
            tracked: HashMap::new(),
            dropped_at: HashMap::new(),
            latencies: Vec::new(),
            last_delivery: Duration::ZERO,
            peak_limit: 0,
            link_free: Duration::ZERO,
        }
    }

    /// [`Sim::pump`] without its checks of every entry after every step (quadratic over
    /// thousands of files): [`Net::run`] checks every [`CHECK_EVERY`] events instead.
    fn pump(&mut self) {
        while let Some(a) = self.sim.core.poll_action() {
            let now = self.sim.now();
            match a {
                Action::Look(key) => {
                    let id = self.sim.spool[key.0].get(&key.1).map(Sim::id);
                    self.sim
                        .core
                        .looked(now, key, id, self.sim.t.as_nanos() as i128);
                }
                Action::ProbeWriters(key) => self.sim.core.writers(now, key, Writers::None),
                Action::List { watch, limit, tail } => {
                    let l = self.sim.listing(watch, limit, tail);
                    self.sim.core.listed(now, watch, Ok(l));
                }
                Action::ListNames { watch, hashes } => {
                    let n = self.sim.names(watch, &hashes);
                    self.sim.core.named(now, watch, Ok(n));
                }
                Action::Rewatch { .. } => {}
                Action::AskGreeted(key) => {
                    let greeted = self
                        .tracked
                        .get(&key)
                        .and_then(|id| self.conns.get(id))
                        .map_or(true, |c| c.greeting_arrives <= self.sim.t);
                    self.sim.core.greeted(now, key, greeted);
                }
                Action::Abandon(key) => {
                    // The client resets the connection; the driver reports a greeting
                    // timeout once the task ended (at once, here).
                    if let Some(&id) = self.tracked.get(&key) {
                        self.abandoned_early += 1;
                        self.later.push((
                            id,
                            Outcome::DestinationFailed {
                                error: handshake_timeout(),
                            },
                        ));
                    }
                }
                Action::Start(s) => self.sim.started(s),
                Action::Report(r) => self.sim.reports.push(r),
            }
        }
        for (id, outcome) in std::mem::take(&mut self.later) {
            self.end(id, outcome);
        }
    }

    fn rtt(&self) -> Duration {
        match self.server.rtt_later {
            Some((at, rtt)) if self.sim.t >= at => rtt,
            _ => self.server.rtt,
        }
    }

    fn at(&mut self, when: Duration, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((when, self.seq, ev)));
    }

    fn lost(&mut self) -> bool {
        self.server.loss > 0.0 && self.rng.f64() < self.server.loss
    }

    /// Files `0..n` renamed in at once.
    fn drop_files(&mut self, n: usize) {
        for i in 0..n {
            let name = format!("f{i:05}");
            self.dropped_at
                .insert((0, OsString::from(&name)), self.sim.t);
            let f = self.sim.new_file(0, 2048);
            self.sim.spool[0].insert(OsString::from(&name), f);
            let now = self.sim.now();
            self.sim
                .core
                .hint(now, 0, OsString::from(&name), Hint::MovedIn);
            self.pump();
        }
        self.connect_new();
    }

    /// Attempts the core started since the last look get their connection.
    fn connect_new(&mut self) {
        let now = self.sim.t;
        let new: Vec<Start> = self
            .sim
            .running
            .iter()
            .filter(|a| !self.tracked.contains_key(&a.start.key))
            .map(|a| a.start.clone())
            .collect();
        for s in new {
            self.next_conn += 1;
            let id = self.next_conn;
            self.tracked.insert(s.key.clone(), id);
            // SYN or SYN-ACK lost: retransmitted after 1 s, 2 s, 4 s, ...
            let mut connect = self.rtt();
            let mut backoff = S;
            while self.lost() || self.lost() {
                connect += backoff;
                backoff *= 2;
            }
            let timeout = TIMEOUT;
            self.conns.insert(
                id,
                Conn {
                    key: s.key.clone(),
                    started: now,
                    connected: now + connect,
                    timeout,
                    greeted: None,
                    greeting_arrives: Duration::MAX,
                    gone: false,
                    paced: false,
                },
            );
            self.at(now + connect.min(TIMEOUT), Ev::Connected(id));
        }
        let limit = self.sim.core.lanes.lanes[0].limiter.limit();
        self.peak_limit = self.peak_limit.max(limit);
    }

    /// Ends the attempt of connection `id` with `outcome`.
    fn end(&mut self, id: u64, outcome: Outcome) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.gone {
            return;
        }
        c.gone = true;
        let key = c.key.clone();
        self.tracked.remove(&key);
        let Some(i) = self.sim.running.iter().position(|a| a.start.key == key) else {
            return;
        };
        self.sim.running.remove(i);
        if matches!(outcome, Outcome::Delivered { .. }) {
            if let Some(f) = self.sim.spool[0].remove(&key.1) {
                self.sim.delivered.push((0, key.1.clone(), f.ino));
            }
            if let Some(t0) = self.dropped_at.get(&key) {
                self.latencies.push(self.sim.t.saturating_sub(*t0));
            }
            self.last_delivery = self.sim.t;
        }
        let now = self.sim.now();
        self.sim.core.finished(now, key, Some(outcome));
        self.pump();
    }

    /// A worker is free: it takes the next connection waiting, if any.
    fn free_worker(&mut self) {
        self.busy -= 1;
        if let Some(id) = self.queue.pop_front() {
            self.busy += 1;
            let now = self.sim.t;
            self.at(now, Ev::Worker(id));
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.sim.t;
        let half = self.rtt() / 2;
        match ev {
            Ev::Connected(id) => {
                let Some(c) = self.conns.get(&id) else { return };
                if c.connected > c.started + TIMEOUT {
                    return self.end(
                        id,
                        Outcome::DestinationFailed {
                            error: connect_timeout(),
                        },
                    );
                }
                self.accepted += 1;
                let timeout = c.timeout;
                match self.server.fault {
                    Some((f, every)) if self.accepted % every == 0 => {
                        if f == Fault::Close {
                            self.at(now + half, Ev::Closed(id));
                        } else {
                            self.at(now + timeout, Ev::GiveUp(id));
                        }
                        return;
                    }
                    _ => {}
                }
                self.at(now + timeout, Ev::GiveUp(id));
                match self.server.workers {
                    Some(w) if self.busy >= w => self.queue.push_back(id),
                    _ => {
                        self.busy += 1;
                        self.at(now, Ev::Worker(id));
                    }
                }
            }
            Ev::Worker(id) => {
                // A lost greeting comes a retransmission (200 ms) later; a stalled worker
                // sends it late.
                let mut extra = if self.lost() { S / 5 } else { Duration::ZERO };
                if let Some((chance, mean)) = self.server.stalls {
                    if self.rng.f64() < chance {
                        // 1 - u is in (0, 1]: its logarithm is finite.
                        extra += mean.mul_f64(-(1.0 - self.rng.f64()).ln());
                    }
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    return self.free_worker();
                };
                if c.gone {
                    // The client gave up while it waited: the worker finds it closed.
                    self.abandoned += 1;
                    return self.free_worker();
                }
                let greeting = now.saturating_sub(c.connected) + half + extra;
                if greeting > c.timeout {
                    // It arrives after the client gave up (the GiveUp event ends it).
                    self.abandoned += 1;
                    return self.free_worker();
                }
                c.greeted = Some(greeting);
                c.greeting_arrives = now + half + extra;
                let rtt = self.rtt();
                let service = self.server.service;
                let mut done = now + half + extra + service + rtt;
                if let Some(per_file) = self.server.link {
                    // The body goes once the greeting arrived and the link is free.
                    let body = (now + half + extra).max(self.link_free);
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.paced = body > now + half + extra;
                    }
                    self.link_free = body + per_file;
                    done = done.max(self.link_free + rtt);
                }
                self.at(done, Ev::Done(id));
            }
            Ev::Done(id) => {
                let greeting = self.conns.get(&id).and_then(|c| c.greeted);
                let paced = self.server.tell_paced && self.conns.get(&id).is_some_and(|c| c.paced);
                self.free_worker();
                if let Some(greeting) = greeting {
                    self.end(
                        id,
                        Outcome::Delivered {
                            uploaded: Some(Uploaded {
                                bytes: 2048,
                                greeting,
                            }),
                            vacated: false,
                            paced,
                        },
                    );
                }
            }
            Ev::GiveUp(id) => {
                if self.conns.get(&id).is_some_and(|c| c.greeted.is_none()) {
                    self.end(
                        id,
                        Outcome::DestinationFailed {
                            error: handshake_timeout(),
                        },
                    );
                }
            }
            Ev::Closed(id) => self.end(
                id,
                Outcome::DestinationFailed {
                    error: closed_before_greeting(),
                },
            ),
        }
    }

    /// Runs until every file is delivered or `limit` of simulated time passed.
    fn run(&mut self, files: usize, limit: Duration) -> Figures {
        let t0 = self.sim.t;
        self.drop_files(files);
        let end = t0 + limit;
        while self.sim.delivered.len() < files && self.sim.t < end {
            self.connect_new();
            let next_ev = self.events.peek().map(|Reverse((t, _, _))| *t);
            let now = self.sim.now();
            let next_timer = self
                .sim
                .core
                .poll_timeout()
                .map(|t| self.sim.t + t.saturating_duration_since(now));
            let Some(next) = [next_ev, next_timer].into_iter().flatten().min() else {
                break;
            };
            if next > self.sim.t {
                self.sim.t = next;
            }
            let now = self.sim.now();
            self.sim.core.handle_timeout(now);
            self.pump();
            while let Some(Reverse((t, _, ev))) = self.events.peek().copied() {
                if t > self.sim.t {
                    break;
                }
                self.events.pop();
                self.handle(ev);
                self.handled += 1;
                if self.handled % CHECK_EVERY == 0 {
                    self.sim.check();
                }
            }
        }
        self.latencies.sort();
        Figures {
            files,
            delivered: self.sim.delivered.len(),
            secs: self.last_delivery.saturating_sub(t0).as_secs_f64(),
            worst: self.latencies.last().copied().unwrap_or_default(),
            p50: self
                .latencies
                .get(self.latencies.len() / 2)
                .copied()
                .unwrap_or_default(),
            p95: self
                .latencies
                .get(self.latencies.len() * 95 / 100)
                .copied()
                .unwrap_or_default(),
            connections: self.next_conn,
            abandoned: self.abandoned,
            overtaken: self.abandoned_early,
            downs: self
                .sim
                .reports_of(|r| matches!(r, Report::DestinationDown { .. })),
            peak_limit: self.peak_limit,
            final_limit: self.sim.core.lanes.lanes[0].limiter.limit(),
        }
    }
}

fn show(name: &str, f: &Figures) {
    println!(
        "{name}: {}/{} files in {:.2} s, {:.0} files/s, wait median {:.2} s, 95 % {:.2} s, worst {:.2} s, {} connections, {} abandoned at the server, {} overtaken, {} down, limit peak {} final {}",
        f.delivered,
        f.files,
        f.secs,
        f.rate(),
        f.p50.as_secs_f64(),
        f.p95.as_secs_f64(),
        f.worst.as_secs_f64(),
        f.connections,
        f.abandoned,
        f.overtaken,
        f.downs,
        f.peak_limit,
        f.final_limit
    );
}

/// A pool of 32 workers, 20 ms per upload, on loopback (0.2 ms): 1,600 files/s at most.
fn pool32() -> Server {
    Server::pool(32, MS / 5, 20 * MS)
}

#[test]
fn hung_workers_at_5_percent_cost_little() {
    let clean = Net::new(pool32(), None, 1).run(2000, 600 * S);
    let hung = Net::new(
        Server {
            fault: Some((Fault::Hang, 20)),
            ..pool32()
        },
        None,
        1,
    )
    .run(2000, 600 * S);
    show("no faults", &clean);
    show("hung at 5 %", &hung);
    assert_eq!(hung.delivered, 2000);
    assert_eq!(hung.downs, 0, "a hung worker is not a down server");
    let ratio = hung.rate() / clean.rate();
    println!("hung / clean: {ratio:.2}");
    // 0.80 while a hung connection held its slot until overdue; 0.88 since a suspect
    // (overtaken by a later greeting) gives its slot to another attempt.
    assert!(ratio >= 0.85, "{ratio:.2}");
    assert!(hung.worst <= 15 * S, "{:?}", hung.worst);
}

#[test]
fn closes_at_5_percent_cost_little() {
    let clean = Net::new(pool32(), None, 2).run(2000, 600 * S);
    let closing = Net::new(
        Server {
            fault: Some((Fault::Close, 20)),
            ..pool32()
        },
        None,
        2,
    )
    .run(2000, 600 * S);
    show("no faults", &clean);
    show("closing at 5 %", &closing);
    assert_eq!(closing.delivered, 2000);
    assert_eq!(closing.downs, 0);
    let ratio = closing.rate() / clean.rate();
    println!("closing / clean: {ratio:.2}");
    assert!(ratio >= 0.8, "{ratio:.2}");
}

#[test]
fn a_one_at_a_time_server_is_not_handed_connections_it_lets_time_out() {
    let serial = || Server::pool(1, MS / 5, S);
    let one = Net::new(serial(), Some(1), 3).run(40, 600 * S);
    let default = Net::new(serial(), None, 3).run(40, 600 * S);
    show("concurrency 1", &one);
    show("default", &default);
    assert_eq!(default.delivered, 40);
    let ratio = default.secs / one.secs;
    println!(
        "time default / concurrency 1: {ratio:.2}; connections / files: {:.2}",
        default.connections as f64 / 40.0
    );
    assert!(ratio <= 1.15, "{ratio:.2}");
    assert!(default.connections <= 44, "{}", default.connections);
}

#[test]
fn a_route_that_becomes_slower_is_learnt() {
    // 64 workers, 20 ms per upload; the round trip goes from 2 ms to 40 ms after 2 s. The
    // reference: the same server at 40 ms from the start.
    let server = Server::pool(64, 2 * MS, 20 * MS);
    let changed = Net::new(
        Server {
            rtt_later: Some((2 * S, 40 * MS)),
            ..server.clone()
        },
        None,
        4,
    )
    .run(8000, 600 * S);
    let far = Net::new(
        Server {
            rtt: 40 * MS,
            ..server
        },
        None,
        4,
    )
    .run(8000, 600 * S);
    show("route slower after 2 s", &changed);
    show("40 ms from the start", &far);
    assert_eq!(changed.delivered, 8000);
    // Once learnt, the limit is where the far server's is (within a factor of two), not
    // pinned low by a baseline of the shorter route.
    assert!(
        changed.final_limit * 2 >= far.final_limit,
        "{} vs {}",
        changed.final_limit,
        far.final_limit
    );
}

#[test]
fn a_lossy_link_never_takes_the_destination_down_for_long() {
    // 10 % loss each way: SYNs and greetings lost now and then, a connect that times out
    // rarely. 2,000 files, 32 workers, 20 ms away.
    let lossy = Net::new(
        Server {
            loss: 0.1,
            ..Server::pool(32, 20 * MS, 20 * MS)
        },
        None,
        5,
    )
    .run(2000, 600 * S);
    show("lossy 10 %", &lossy);
    assert_eq!(lossy.delivered, 2000);
    assert!(lossy.worst <= 30 * S, "{:?}", lossy.worst);
}

#[test]
fn ten_ms_away_the_default_is_near_the_best_fixed_limit() {
    let server = || Server::pool(32, 10 * MS, 20 * MS);
    let default = Net::new(server(), None, 6).run(2000, 600 * S);
    show("10 ms, default", &default);
    let mut best: f64 = 0.0;
    for n in [4, 16, 32, 64, 128] {
        let f = Net::new(server(), Some(n), 6).run(2000, 600 * S);
        show(&format!("10 ms, concurrency {n}"), &f);
        best = best.max(f.rate());
    }
    let ratio = default.rate() / best;
    println!("default / best fixed: {ratio:.2}");
    assert!(ratio >= 0.9, "{ratio:.2}");
}

/// No fault, no loss: whatever the distance and the pool, no attempt is abandoned (each
/// abandoned connection is an empty or `ERROR` file on a receiver that saves every
/// connection), neither by the core (overtaken) nor at the greeting timeout.
#[test]
fn a_fault_free_server_sees_no_abandoned_connection() {
    for (rtt, workers, service, files) in [
        (MS / 5, Some(32), 20 * MS, 2000),
        (10 * MS, Some(32), 20 * MS, 2000),
        (40 * MS, Some(32), 20 * MS, 2000),
        (40 * MS, Some(64), 20 * MS, 4000),
        (50 * MS, Some(32), Duration::ZERO, 1000),
        (200 * MS, Some(64), Duration::ZERO, 1000),
        (MS, None, Duration::ZERO, 1000),
        (50 * MS, Some(1), Duration::ZERO, 100),
    ] {
        let server = Server {
            workers,
            ..Server::pool(1, rtt, service)
        };
        let f = Net::new(server, None, 7).run(files, 600 * S);
        show(
            &format!("{rtt:?} away, pool {workers:?}, {service:?} per upload"),
            &f,
        );
        assert_eq!(f.delivered, files);
        assert_eq!(
            (f.overtaken, f.abandoned, f.downs),
            (0, 0, 0),
            "{rtt:?}, pool {workers:?}"
        );
    }
}

/// A busy machine (issue 16, the wan benchmark at 1 ms on 2 cores): the receiver's worker
/// threads greet in whatever order they get the CPU, so now and then a greeting is sent
/// late (here one in 20, by 30 ms on average, a few by 100 ms or more) and later
/// connections are greeted first. Those few are taken for hung workers (6 of 4,000 at 1 ms,
/// 3 of 2,000 at 10 ms): waiting past the slowest greeting lately (half again) made it 3 and
/// 2, but let each hung worker of the flaky benchmark hold its slot longer (0.85x -> 0.82x
/// on average of three runs), so the rule was left out. Bound: rare, and never at the
/// server's greeting timeout.
#[test]
fn late_greetings_of_a_busy_machine_are_rarely_abandoned() {
    for (rtt, workers, files) in [(MS, 32, 4000), (10 * MS, 32, 2000)] {
        let server = Server {
            stalls: Some((0.05, 30 * MS)),
            ..Server::pool(workers, rtt, Duration::ZERO)
        };
        let f = Net::new(server, None, 10).run(files, 600 * S);
        show(&format!("{rtt:?} away, pool {workers}, late greetings"), &f);
        assert_eq!(f.delivered, files);
        assert_eq!((f.abandoned, f.downs), (0, 0), "{rtt:?}");
        assert!(
            f.overtaken * 1000 <= 2 * files as u64,
            "{rtt:?}: {}",
            f.overtaken
        );
    }
}

/// Issue 21: the adaptive limit does not grow connections when bandwidth, not the server,
/// is what binds. A link that takes 10 ms per file (100 files/s), 20 ms away, a server that
/// serves every connection at once: a handful of connections fill the link; the limit stays
/// near them, where without the pacer's word it grows to the cap.
#[test]
fn a_binding_bandwidth_limit_does_not_grow_connections() {
    let linked = |tell_paced| Server {
        workers: None,
        link: Some(10 * MS),
        tell_paced,
        ..Server::pool(1, 20 * MS, Duration::ZERO)
    };
    let paced = Net::new(linked(true), None, 8).run(1000, 600 * S);
    let blind = Net::new(linked(false), None, 8).run(1000, 600 * S);
    show("link 100 files/s, paced told", &paced);
    show("link 100 files/s, not told", &blind);
    assert_eq!(paced.delivered, 1000);
    println!("files/s {:.0} vs {:.0}", paced.rate(), blind.rate());
    // The link is full all the same ...
    assert!(paced.rate() >= 0.9 * blind.rate(), "{:.0}", paced.rate());
    // ... with a few connections, not the dozens the greeting times alone would allow.
    assert!(paced.peak_limit <= 24, "{}", paced.peak_limit);
    assert!(
        blind.peak_limit > 2 * paced.peak_limit,
        "{}",
        blind.peak_limit
    );
}

/// Default against the best fixed concurrency (4 to 128; 1 too for a pool of one) for a
/// server `rtt` away with a pool of `workers` and no service time (the wan benchmark's
/// receiver): files/s of each, and the ratio.
fn wan(rtt: Duration, workers: usize, files: usize) -> f64 {
    wan_on(|| Server::pool(workers, rtt, Duration::ZERO), files)
}

/// [`wan`] against the server `server` makes.
fn wan_on(server: impl Fn() -> Server, files: usize) -> f64 {
    let Server { rtt, workers, .. } = server();
    let workers = workers.unwrap_or(0);
    let default = Net::new(server(), None, 9).run(files, 900 * S);
    show(&format!("{rtt:?}, pool {workers}, default"), &default);
    assert_eq!(default.delivered, files);
    let mut best: f64 = 0.0;
    let fixed: &[usize] = if workers == 1 {
        &[1, 4, 16]
    } else {
        &[4, 16, 32, 64, 128]
    };
    for &n in fixed {
        let f = Net::new(server(), Some(n), 9).run(files, 900 * S);
        show(&format!("{rtt:?}, pool {workers}, concurrency {n}"), &f);
        best = best.max(f.rate());
    }
    let ratio = default.rate() / best;
    println!("{rtt:?}, pool {workers}: default / best fixed {ratio:.2}");
    ratio
}

/// The rows of the wan benchmark: 1 ms and 10 ms, 50 ms from a pool of 32 and from a
/// server that serves one at a time, 200 ms from a pool of 64; files of 1 KiB, enough that
/// the first rounds (the limit starts at 4) are not the whole run: 4,000 at 1 ms (0.2 s),
/// 2,000 at 10 and 50 ms, 100 one at a time, 4,000 at 200 ms (20 s).
#[test]
fn far_away_the_default_is_near_the_best_fixed_limit() {
    let rows = [
        (MS, 32, 4000),
        (10 * MS, 32, 2000),
        (50 * MS, 32, 2000),
        (50 * MS, 1, 100),
        (200 * MS, 64, 4000),
    ];
    let ratios: Vec<f64> = rows.iter().map(|&(r, w, n)| wan(r, w, n)).collect();
    for (&(rtt, workers, _), ratio) in rows.iter().zip(&ratios) {
        println!("{rtt:?}, pool {workers}: {ratio:.2}");
    }
    for (&(rtt, workers, _), &ratio) in rows.iter().zip(&ratios) {
        assert!(ratio >= 0.9, "{rtt:?}, pool {workers}: {ratio:.2}");
    }
}

/// The wan rows at 1 ms and 10 ms on a busy machine's receiver (greetings sent late now and
/// then, [`Server::stalls`]). This does not reproduce the real benchmark's 74 % and 84 %
/// (on a quiet machine, before this round): late greetings cost every concurrency alike.
/// What the model still misses is the CPU: on 2 cores the service, the delaying proxy and
/// the receiver share it, so the receiver's capacity and the greeting times move with the
/// client's own work (4,000 files/s at best at 1 ms, where the model serves 20,000).
#[test]
fn on_a_busy_machine_the_default_is_near_the_best_fixed_limit() {
    let rows = [(MS, 32, 4000), (10 * MS, 32, 2000)];
    let ratios: Vec<f64> = rows
        .iter()
        .map(|&(rtt, w, n)| {
            let server = move || Server {
                stalls: Some((0.05, 30 * MS)),
                ..Server::pool(w, rtt, Duration::ZERO)
            };
            wan_on(server, n)
        })
        .collect();
    for (&(rtt, workers, _), &ratio) in rows.iter().zip(&ratios) {
        println!("busy, {rtt:?}, pool {workers}: {ratio:.2}");
        assert!(ratio >= 0.9, "{rtt:?}, pool {workers}: {ratio:.2}");
    }
}
