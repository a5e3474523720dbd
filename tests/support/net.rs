//! Loopback addresses for tests: a free port, a listener, whether a port is listened on, an
//! address that never answers.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A TCP port free on 127.0.0.1 right now (another process may take it before it is used:
/// a caller that binds it retries).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True if something listens on `port` (from /proc, so that checking does not make a
/// connection, which `accio serve` would count as a file).
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
            })
        })
    })
}

/// A listener whose accept queue is full: connection attempts to `addr` are never answered
/// (Linux drops their SYNs), so a client's connect runs into its timeout.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

/// A listener on a free port of 127.0.0.1 whose accept queue holds `backlog` connections;
/// with `rcvbuf`, a fixed receive buffer (no autotuning), which accepted sockets inherit.
pub fn loopback_listener(backlog: i32, rcvbuf: Option<usize>) -> socket2::Socket {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(backlog).unwrap();
    sock
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = loopback_listener(0, None);
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..64 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return BlackHole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
                Err(e) => panic!("filling the accept queue: {e}"),
            }
        }
        panic!("the accept queue never filled");
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
