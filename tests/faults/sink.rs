//! An in-process Accio receiver that can misbehave on purpose: reset a connection in the
//! middle of a body, stop reading for ever, never send the command, never close. Every
//! connection it sees is recorded with the time its body was complete, so the tests can count
//! deliveries and latencies on the test's own clock.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::payload;

/// How the sink misbehaves. Probabilities are per connection and exclusive, tried in order.
#[derive(Clone, Default)]
pub struct SinkOptions {
    /// Seed of the random choices, printed by the scenarios for reproduction.
    pub seed: u64,
    /// Reset (RST) after a random part of the body.
    pub reset_mid_body: f64,
    /// Stop reading after a random part of the body and keep the connection open for ever.
    pub stall_mid_body: f64,
    /// Accept but never send `accio\r\n`, and keep the connection open.
    pub no_command: f64,
    /// Read the whole body but never close (the client waits for our close in vain).
    pub no_close: f64,
    /// SO_RCVBUF of accepted sockets, to keep a slow reader from being hidden by buffers.
    pub rcvbuf: Option<usize>,
    /// Files whose body is read slowly (8 KiB per 5 ms) on their first connection.
    pub slow_ids: HashSet<u64>,
    /// Called once per connection when the header of the body has arrived, before the rest
    /// is read; the hostile scenario changes the file under the sender's feet there.
    pub on_header: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

/// One connection as the sink saw it.
#[derive(Debug, Clone)]
pub struct Reception {
    /// The id in the header, if the body had one.
    pub id: Option<u64>,
    /// Bytes of body received.
    pub len: u64,
    /// Every byte matched the file the header names (the copy is a prefix of that file).
    pub intact: bool,
    /// The body ended cleanly (EOF) and the sink closed as a confirmation.
    pub confirmed: bool,
    /// When the body was complete (EOF read), on the test's clocks.
    pub at: Instant,
    pub at_sys: SystemTime,
}

#[derive(Default)]
struct Shared {
    receptions: Mutex<Vec<Reception>>,
    /// Connections held open on purpose (stalls); dropped with the sink.
    stash: Mutex<Vec<TcpStream>>,
    connections: AtomicU64,
    injected: AtomicU64,
    stop: AtomicBool,
    /// Ids already read slowly once.
    slowed: Mutex<HashSet<u64>>,
}

/// A running sink; stops (and closes stalled connections) when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Sink {
    /// A well-behaved sink on 127.0.0.1.
    pub fn start() -> Sink {
        Sink::start_with(SinkOptions::default())
    }

    pub fn start_with(opts: SinkOptions) -> Sink {
        let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
            .expect("bind the sink");
        if let Some(size) = opts.rcvbuf {
            // Set on the listener so accepted sockets inherit it before the window opens.
            let _ = socket2::SockRef::from(&listener).set_recv_buffer_size(size);
        }
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let opts = Arc::new(opts);
        let accept = std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(opts.seed);
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let _ = stream.set_nodelay(true);
                sh.connections.fetch_add(1, Ordering::Relaxed);
                let plan = Plan::draw(&opts, &mut rng);
                if plan != Plan::Normal {
                    sh.injected.fetch_add(1, Ordering::Relaxed);
                }
                let (sh, opts) = (sh.clone(), opts.clone());
                std::thread::spawn(move || serve_one(stream, plan, &sh, &opts));
            }
        });
        Sink {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A copy of every connection seen so far.
    pub fn receptions(&self) -> Vec<Reception> {
        self.shared.receptions.lock().unwrap().clone()
    }

    /// Connections accepted, and how many of them got a fault.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.shared.connections.load(Ordering::Relaxed),
            self.shared.injected.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.shared.stash.lock().unwrap().clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Normal,
    Reset(u64),
    Stall(u64),
    NoCommand,
    NoClose,
}

impl Plan {
    fn draw(o: &SinkOptions, rng: &mut fastrand::Rng) -> Plan {
        let x = rng.f64();
        let cut = rng.u64(1..64 * 1024);
        let mut acc = o.reset_mid_body;
        if x < acc {
            return Plan::Reset(cut);
        }
        acc += o.stall_mid_body;
        if x < acc {
            return Plan::Stall(cut);
        }
        acc += o.no_command;
        if x < acc {
            return Plan::NoCommand;
        }
        acc += o.no_close;
        if x < acc {
            return Plan::NoClose;
        }
        Plan::Normal
    }
}

fn serve_one(mut stream: TcpStream, plan: Plan, sh: &Shared, opts: &SinkOptions) {
    // A safety net only: no thread of the tests waits for ever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    if plan == Plan::NoCommand {
        sh.stash.lock().unwrap().push(stream);
        return;
    }
    if stream.write_all(b"accio\r\n").is_err() {
        return;
    }
    let mut body = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut id = None;
    let mut slow = false;
    loop {
        let want = if slow { 8 * 1024 } else { buf.len() };
        let n = match stream.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(_) => {
                record(sh, &body, false);
                return;
            }
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        if id.is_none() && body.len() >= payload::HEADER_LEN {
            id = payload::parse_header(&body);
            if let Some(i) = id {
                if opts.slow_ids.contains(&i) && sh.slowed.lock().unwrap().insert(i) {
                    slow = true;
                }
                if let Some(hook) = &opts.on_header {
                    hook(i);
                }
            }
        }
        if slow {
            std::thread::sleep(Duration::from_millis(5));
        }
        match plan {
            Plan::Reset(cut) if body.len() as u64 >= cut => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                record(sh, &body, false);
                return; // dropped with linger 0: RST
            }
            Plan::Stall(cut) if body.len() as u64 >= cut => {
                record(sh, &body, false);
                sh.stash.lock().unwrap().push(stream);
                return;
            }
            _ => {}
        }
    }
    // The whole body is here; record it before closing, so the test never sees a confirmed
    // upload that it has not counted.
    record(sh, &body, true);
    if plan == Plan::NoClose {
        sh.stash.lock().unwrap().push(stream);
    }
}

fn record(sh: &Shared, body: &[u8], confirmed: bool) {
    let (id, intact) = match payload::check(body) {
        Some((id, intact)) => (Some(id), intact),
        None => (None, false),
    };
    sh.receptions.lock().unwrap().push(Reception {
        id,
        len: body.len() as u64,
        intact,
        confirmed,
        at: Instant::now(),
        at_sys: SystemTime::now(),
    });
}
