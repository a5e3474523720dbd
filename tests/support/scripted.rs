//! Receivers written for one test: each connection gets `accio\r\n`, then the test's own
//! handler decides what the server does (read, stall, reset, close) and what it saw.

use std::io::Read;
use std::time::Duration;

/// One connection as a scripted server saw it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub bytes: Vec<u8>,
    /// Ended with a clean close (EOF), i.e. the client claimed it complete.
    pub clean: bool,
}

/// A receiver written for one test: sends `accio\r\n`, then runs `handler(n, stream)` for
/// connection number `n` (from 0), which returns what it saw. The connection is closed
/// after the handler returns and its result is recorded.
pub struct ScriptServer {
    pub port: u16,
    pub conns: std::sync::Arc<std::sync::Mutex<Vec<Conn>>>,
}

impl ScriptServer {
    pub fn start(
        handler: impl Fn(usize, &mut std::net::TcpStream) -> Conn + Send + Sync + 'static,
    ) -> ScriptServer {
        ScriptServer::start_with_rcvbuf(None, handler)
    }

    /// `rcvbuf`: a small receive buffer (no autotuning), so that a server that stops
    /// reading really stops the client (loopback buffers can otherwise hold tens of MiB).
    pub fn start_with_rcvbuf(
        rcvbuf: Option<usize>,
        handler: impl Fn(usize, &mut std::net::TcpStream) -> Conn + Send + Sync + 'static,
    ) -> ScriptServer {
        let listener: std::net::TcpListener = super::net::loopback_listener(128, rcvbuf).into();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = std::sync::Arc::new(handler);
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let handler = handler.clone();
                let conns = c2.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    if stream.write_all(b"accio\r\n").is_err() {
                        return;
                    }
                    let conn = handler(n, &mut stream);
                    // Recorded before the stream is dropped: the drop is the server's close,
                    // which the client takes as confirmation.
                    conns.lock().unwrap().push(conn);
                    drop(stream);
                });
            }
        });
        ScriptServer { port, conns }
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }
}

/// Reads until EOF (clean) or an error (reset), appending to `bytes`.
pub fn read_rest(stream: &mut std::net::TcpStream, mut bytes: Vec<u8>) -> Conn {
    let (more, end) = super::send::read_all(stream);
    bytes.extend_from_slice(&more);
    Conn {
        bytes,
        clean: end.is_ok(),
    }
}

/// Reads at least `n` bytes (or until EOF/error).
pub fn read_at_least(stream: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while bytes.len() < n {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => bytes.extend_from_slice(&buf[..k]),
        }
    }
    bytes
}

/// A server whose first connection reads 64 KiB, reports it on `started`, then stops
/// reading (small receive buffer) until `go` is sent (or for 20 s at most); every other connection reads at once. For tests
/// that need a transfer in flight for as long as they like.
pub fn first_connection_paused() -> (
    ScriptServer,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let go_rx = std::sync::Mutex::new(go_rx);
    let server = ScriptServer::start_with_rcvbuf(Some(64 * 1024), move |n, stream| {
        if n == 0 {
            let first = read_at_least(stream, 64 * 1024);
            let _ = started_tx.lock().unwrap().send(());
            let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
            return read_rest(stream, first);
        }
        read_rest(stream, Vec::new())
    });
    (server, started_rx, go_tx)
}

/// A server that answers every connection with a wrong greeting and closes it. For the
/// service that is the destination's failure: it is marked down and its files wait (they
/// use up no attempts). Returns its port; it runs until the test process ends.
pub fn bad_greeting_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::Write;
            let _ = stream.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    port
}

/// A server that greets every connection, waits for the first byte (or the end) and
/// resets it: the destination is up, but every attempt fails after the greeting, so each
/// counts against max_attempts. Returns its port; it runs until the test process ends.
pub fn failing_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::{Read, Write};
            let _ = stream.write_all(b"accio\r\n");
            let mut buf = [0u8; 1];
            let _ = stream.read(&mut buf);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
        }
    });
    port
}
