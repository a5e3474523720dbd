//! Accio servers that behave like independent implementations people actually run, as test
//! peers for `accio send` and `accio watch`. Each is serial, as those servers are: one
//! accept loop in one thread, one connection at a time, the next one waiting in the accept
//! queue. What each connection delivered is recorded in [`Record`]s.
//!
//! - [`Behaviour::NeverCloses`]: reads each upload to its end and saves it, then keeps the
//!   connection; it is closed only when the next connection arrives (the accepting loop's
//!   variable still holds it).
//! - [`Behaviour::ReadsOnceAndCloses`]: one `recv` of at most 1 KiB, then close: with more
//!   data unread the kernel turns the close into a reset.
//! - [`Behaviour::Serial`]: correct (read to the end, save, close), but exits (closes its
//!   listener) after N connections: later connects are refused.
//! - [`Behaviour::SavesAfterClose`]: reads to the end, closes, and only then saves, after
//!   a delay: its close confirms a file that is not yet on its disk.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a [`MisbehavingServer`] treats each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Saves at end of file, closes only when the next connection is accepted.
    NeverCloses,
    /// Reads at most 1 KiB once, saves that, closes.
    ReadsOnceAndCloses,
    /// Well-behaved, but stops listening after this many connections.
    Serial { exit_after: usize },
    /// Reads to end of file, closes, then saves after the delay.
    SavesAfterClose { delay: Duration },
}

/// One connection as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The bytes received after the command.
    pub bytes: Vec<u8>,
    /// The upload ended with a clean end of file (the client's half-close).
    pub eof: bool,
    /// Saved: written to "disk" (recorded) by the server, complete or not.
    pub saved: bool,
    /// The server has closed this connection (for [`Behaviour::NeverCloses`], when the
    /// next one arrived).
    pub closed: bool,
}

/// A serial server with one [`Behaviour`] on 127.0.0.1. Its thread runs until the test
/// process ends (or, for `Serial`, until its last connection).
pub struct MisbehavingServer {
    pub port: u16,
    records: Arc<Mutex<Vec<Record>>>,
}

impl MisbehavingServer {
    pub fn start(behaviour: Behaviour) -> MisbehavingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let records = Arc::new(Mutex::new(Vec::new()));
        let shared = records.clone();
        std::thread::spawn(move || serve(listener, behaviour, &shared));
        MisbehavingServer { port, records }
    }

    pub fn port_str(&self) -> String {
        self.port.to_string()
    }

    /// Every connection so far, in accept order.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// The contents saved, in order.
    pub fn saved(&self) -> Vec<Vec<u8>> {
        self.records()
            .into_iter()
            .filter(|r| r.saved)
            .map(|r| r.bytes)
            .collect()
    }

    /// How many saved uploads are exactly `content` (complete: ended with end of file).
    pub fn times_saved(&self, content: &[u8]) -> usize {
        self.records()
            .iter()
            .filter(|r| r.saved && r.eof && r.bytes == content)
            .count()
    }
}

fn serve(listener: TcpListener, behaviour: Behaviour, records: &Mutex<Vec<Record>>) {
    // The connection a never-closing server still holds, with its record's index.
    let mut held: Option<(TcpStream, usize)> = None;
    let mut served = 0usize;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        // The accepting loop's variable is overwritten: the previous connection closes now.
        if let Some((old, i)) = held.take() {
            drop(old);
            records.lock().unwrap()[i].closed = true;
        }
        let i = {
            let mut r = records.lock().unwrap();
            r.push(Record::default());
            r.len() - 1
        };
        served += 1;
        let update = |f: &mut dyn FnMut(&mut Record)| f(&mut records.lock().unwrap()[i]);
        if stream.write_all(b"accio\r\n").is_err() {
            continue;
        }
        match behaviour {
            Behaviour::NeverCloses => {
                let (bytes, eof) = read_to_end(&mut stream);
                update(&mut |r| {
                    r.bytes = bytes.clone();
                    r.eof = eof;
                    r.saved = true;
                });
                held = Some((stream, i));
            }
            Behaviour::ReadsOnceAndCloses => {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).unwrap_or(0);
                update(&mut |r| {
                    r.bytes = buf[..n].to_vec();
                    r.saved = true;
                });
                drop(stream);
                update(&mut |r| r.closed = true);
            }
            Behaviour::Serial { exit_after } => {
                let (bytes, eof) = read_to_end(&mut stream);
                update(&mut |r| {
                    r.bytes = bytes.clone();
                    r.eof = eof;
                    r.saved = true;
                });
                drop(stream);
                update(&mut |r| r.closed = true);
                if served >= exit_after {
                    // Exits: the listener closes, later connects are refused.
                    return;
                }
            }
            Behaviour::SavesAfterClose { delay } => {
                let (bytes, eof) = read_to_end(&mut stream);
                update(&mut |r| r.eof = eof);
                drop(stream);
                update(&mut |r| r.closed = true);
                std::thread::sleep(delay);
                update(&mut |r| {
                    r.bytes = bytes.clone();
                    r.saved = true;
                });
            }
        }
    }
}

/// Reads until end of file (true) or an error such as a reset (false).
fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let (bytes, end) = super::send::read_all(stream);
    (bytes, end.is_ok())
}
