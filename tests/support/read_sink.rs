//! A well-behaved receiver for the bandwidth tests and benchmark: greets, reads to end of
//! file, closes, and logs (connection, when, bytes) of every read while logging is on.
//! Uses nothing but std and the crate's `Destination`, so `benches/rate.rs` includes it by
//! path.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accio::client::Destination;

/// (connection, when, bytes) of every read; `None` while logging is off.
type Log = Arc<Mutex<Option<Vec<(usize, Instant, u64)>>>>;

pub struct ReadSink {
    pub port: u16,
    log: Log,
}

impl ReadSink {
    /// Listens on loopback, reading `buf` bytes at most per read; logs from the start when
    /// `logging`, else once [`ReadSink::start_log`] is called.
    pub fn start(buf: usize, logging: bool) -> ReadSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Log = Arc::new(Mutex::new(logging.then(Vec::new)));
        let l = log.clone();
        std::thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let l = l.clone();
                std::thread::spawn(move || {
                    if stream.write_all(b"accio\r\n").is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; buf];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if let Some(log) = l.lock().unwrap().as_mut() {
                            log.push((id, Instant::now(), n as u64));
                        }
                    }
                });
            }
        });
        ReadSink { port, log }
    }

    pub fn dest(&self) -> Destination {
        Destination {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// Starts logging afresh.
    pub fn start_log(&self) {
        *self.log.lock().unwrap() = Some(Vec::new());
    }

    /// The reads logged so far; logging stops.
    pub fn take_log(&self) -> Vec<(usize, Instant, u64)> {
        self.log.lock().unwrap().take().unwrap_or_default()
    }

    /// The reads logged so far; logging goes on.
    pub fn log(&self) -> Vec<(usize, Instant, u64)> {
        self.log.lock().unwrap().clone().unwrap_or_default()
    }

    /// Bytes logged so far.
    pub fn received(&self) -> u64 {
        self.log.lock().unwrap().iter().flatten().map(|r| r.2).sum()
    }
}
