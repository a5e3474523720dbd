//! Reaching a server: port and host resolution, the bounded connect phase, and one whole
//! upload of an open file (connect, command, content, confirmed close). Shared by `send` and
//! the spool service's uploader, which add only their own policy around it.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::handshake::Handshake;
use crate::protocol::{self, Confirm, ProtocolError, Timeouts};
use crate::rate::Pacer;

/// Why a PORT argument or config value is not a port.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid port {given:?}: {reason}")]
pub struct PortError {
    /// The text as given.
    pub given: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a port the way `getaddrinfo` would for a TCP service: a number 1–65535 or a name
/// from the services database (`ssh`, `http-alt`).
///
/// # Errors
/// [`PortError`] for anything else, including `0`, out-of-range numbers and unknown names.
pub fn parse_port(given: &str) -> Result<u16, PortError> {
    let err = |reason| PortError {
        given: given.to_string(),
        reason,
    };
    if given.is_empty() {
        return Err(err("empty; expected a number 1-65535 or a service name"));
    }
    if given.bytes().all(|b| b.is_ascii_digit()) {
        return match given.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(err("out of range; expected a number 1-65535")),
        };
    }
    let plausible_name = given
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'/')
        && given.bytes().any(|b| b.is_ascii_alphabetic());
    if !plausible_name {
        return Err(err("not a number 1-65535 or a service name"));
    }
    lookup_service(given).ok_or_else(|| err("not a number 1-65535 or a known service name"))
}

/// Looks up a TCP service name with `getaddrinfo` (thread-safe, unlike `getservbyname`).
fn lookup_service(name: &str) -> Option<u16> {
    let service = CString::new(name).ok()?;
    // SAFETY: zeroed addrinfo is the documented way to build hints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_PASSIVE;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings and pointers; the result list is freed below.
    let rc = unsafe { libc::getaddrinfo(std::ptr::null(), service.as_ptr(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: on success `res` points to at least one entry whose ai_addr is a sockaddr_in,
    // since we asked for AF_INET.
    let port = unsafe {
        let addr = (*res).ai_addr as *const libc::sockaddr_in;
        let port = if addr.is_null() {
            None
        } else {
            Some(u16::from_be((*addr).sin_port))
        };
        libc::freeaddrinfo(res);
        port
    };
    port.filter(|&p| p != 0)
}

/// Where to send: a host (name or IP literal) and a resolved port number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Failures of an upload, by phase ([`ClientError::phase`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve host {host:?}: no addresses")]
    NoAddresses { host: String },
    #[error("connecting to {dest} timed out after {timeout:?}{tried}")]
    ConnectTimeout {
        dest: Destination,
        timeout: Duration,
        /// Summary of the addresses tried so far, for the message.
        tried: TriedAddrs,
    },
    #[error("cannot connect to {dest}{tried}")]
    Connect {
        dest: Destination,
        tried: TriedAddrs,
    },
    #[error("{dest}: {source}")]
    Protocol {
        dest: Destination,
        #[source]
        source: ProtocolError,
    },
}

/// Where an upload failed, for policies that treat phases differently (an outage does not
/// count against a file; a slow greeting is the server's load, not the network's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The host name did not resolve (or to no address).
    Resolve,
    /// Every address refused or was unreachable.
    Connect,
    /// No address answered within the connect timeout.
    ConnectTimeout,
    /// Connected, but no complete `accio\r\n`: wrong bytes, closed first, handshake timeout.
    Handshake,
    /// After the greeting: sending, or waiting for the confirmation.
    Transfer,
}

impl ClientError {
    /// The phase this failure happened in.
    pub fn phase(&self) -> Phase {
        match self {
            ClientError::Resolve { .. } | ClientError::NoAddresses { .. } => Phase::Resolve,
            ClientError::Connect { .. } => Phase::Connect,
            ClientError::ConnectTimeout { .. } => Phase::ConnectTimeout,
            ClientError::Protocol { source, .. } if source.is_handshake() => Phase::Handshake,
            ClientError::Protocol { .. } => Phase::Transfer,
        }
    }
}

/// The addresses a connect attempt tried, with what happened at each.
#[derive(Debug, Default)]
pub struct TriedAddrs(pub Vec<(SocketAddr, Tried)>);

/// What happened at one address: kept typed, so that callers can tell a refusal from an
/// unreachable network (and a timeout from both) without reading the message.
#[derive(Debug, thiserror::Error)]
pub enum Tried {
    #[error("{0}")]
    Failed(io::Error),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

impl fmt::Display for TriedAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(" (")?;
        for (i, (addr, what)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {what}")?;
        }
        f.write_str(")")
    }
}

/// Resolves `dest` (with a `handshake`, the service's, through its last answer while fresh:
/// [`crate::resolve`]) and connects to the first address that accepts, trying each in turn.
/// Resolution and all attempts together end within `timeouts.connect`; each attempt gets an
/// equal share of the time left, so one black-holed address cannot starve the others.
///
/// No TCP_USER_TIMEOUT is set: on a small receive window the kernel counts even a steadily
/// progressing transfer in persist mode against it and aborts a slow but steady server. Data
/// stuck unacknowledged is caught by [`protocol::finish_tcp`] instead, which watches the send
/// queue drain with the stall timeout.
///
/// `handshake`, when given, is what is known of this destination's round trip: an attempt
/// whose handshake takes much longer is started afresh rather than left to the kernel's
/// 1 s retransmission of the SYN (see [`crate::handshake`]), and each handshake that needed
/// one SYN is a sample of it.
///
/// # Errors
/// [`ClientError::Resolve`], [`ClientError::NoAddresses`], [`ClientError::Connect`] or
/// [`ClientError::ConnectTimeout`].
pub async fn connect(
    dest: &Destination,
    timeouts: &Timeouts,
    handshake: Option<&Handshake>,
) -> Result<TcpStream, ClientError> {
    let deadline = crate::protocol::after(Instant::now(), timeouts.connect);
    let resolve = async {
        match handshake {
            // The service: its last answer, while fresh (see [`crate::resolve`]).
            Some(hs) => hs.addrs.resolve(&dest.host, dest.port).await,
            None => Ok(tokio::net::lookup_host((dest.host.as_str(), dest.port))
                .await?
                .collect()),
        }
    };
    let addrs: Vec<SocketAddr> = match timeout_at(deadline, resolve).await {
        // Resolution itself used up the connect timeout.
        Err(_) => {
            return Err(ClientError::ConnectTimeout {
                dest: dest.clone(),
                timeout: timeouts.connect,
                tried: TriedAddrs::default(),
            })
        }
        Ok(Err(source)) => {
            return Err(ClientError::Resolve {
                host: dest.host.clone(),
                source,
            })
        }
        Ok(Ok(addrs)) => addrs,
    };
    if addrs.is_empty() {
        return Err(ClientError::NoAddresses {
            host: dest.host.clone(),
        });
    }
    let connected = connect_addrs(dest, addrs, timeouts, deadline, handshake).await;
    if let (Err(_), Some(hs)) = (&connected, handshake) {
        // Perhaps the name points elsewhere now: the next attempt asks again.
        hs.addrs.forget();
    }
    connected
}

/// Tries `addrs` in turn until `deadline`, each with an equal share of the time left: what
/// [`connect`] does once `dest` is resolved (`dest` only names the destination in errors).
///
/// # Errors
/// [`ClientError::Connect`] if every address refused or failed, or
/// [`ClientError::ConnectTimeout`] if one did not answer in its share.
pub async fn connect_addrs(
    dest: &Destination,
    addrs: Vec<SocketAddr>,
    timeouts: &Timeouts,
    deadline: Instant,
    handshake: Option<&Handshake>,
) -> Result<TcpStream, ClientError> {
    let mut tried = TriedAddrs::default();
    let timed_out = |tried| ClientError::ConnectTimeout {
        dest: dest.clone(),
        timeout: timeouts.connect,
        tried,
    };
    let count = addrs.len() as u32;
    for (i, addr) in addrs.into_iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(tried));
        }
        let left = count - i as u32;
        let share = (deadline - now) / left;
        match connect_restarting(addr, now + share, handshake).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => tried.0.push((addr, Tried::Failed(e))),
            Err(_) => tried.0.push((addr, Tried::NoAnswer(share))),
        }
    }
    if tried
        .0
        .iter()
        .any(|(_, what)| matches!(what, Tried::NoAnswer(_)))
    {
        Err(timed_out(tried))
    } else {
        Err(ClientError::Connect {
            dest: dest.clone(),
            tried,
        })
    }
}

/// Connects to `addr` by `until`; `Err(Elapsed)` if no handshake completed by then. With a
/// `handshake` estimate, an attempt that waits longer than it allows is closed (nothing is
/// sent: it never completed) and a new one started, each wait twice the last; a handshake
/// that completed on the first attempt is a sample of the round trip.
async fn connect_restarting(
    addr: SocketAddr,
    until: Instant,
    handshake: Option<&Handshake>,
) -> Result<io::Result<TcpStream>, tokio::time::error::Elapsed> {
    let Some(hs) = handshake else {
        return timeout_at(until, connect_one(addr)).await;
    };
    let mut retry = 0u32;
    loop {
        let start = Instant::now();
        let left = until.saturating_duration_since(start);
        let wait = hs.retry_after(retry, left);
        match timeout_at(start + wait, connect_one(addr)).await {
            Ok(done) => {
                if retry == 0 && done.is_ok() {
                    hs.sample(start.elapsed());
                }
                return Ok(done);
            }
            // The whole share is used up: as without the estimate.
            Err(elapsed) if start + wait >= until => return Err(elapsed),
            Err(_) => {
                hs.restarted();
                tracing::debug!(%addr, ?wait, retry, "no handshake yet: connecting afresh");
                retry += 1;
            }
        }
    }
}

async fn connect_one(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // Linger 0 from before the handshake: any close other than a confirmed finish (the
    // future dropped when a service's shutdown grace runs out, the process killed, even
    // right after the handshake) becomes a reset, so the server never takes a partial or
    // empty transfer as complete. After the confirmed finish (the server's close) the
    // connection is already closed at the TCP level and dropping it sends nothing.
    // (Zero linger never blocks the close, unlike the non-zero kind tokio warns about.)
    socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
    socket.connect(addr).await
}

/// A delivered upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes of the file sent (and confirmed).
    pub bytes: u64,
    /// From the connection being established until the whole `accio\r\n` had arrived: how
    /// fast the server takes a new connection (its accept queue, a busy worker pool, half a
    /// round trip), apart from the file's size. Name resolution and the TCP handshake are
    /// left out: a slow resolver or a lost SYN says nothing about the server's load.
    pub greeting: Duration,
}

/// One whole upload of an open file: connect, wait for the command, send the file's bytes
/// (zero-copy where possible), half-close and wait for the confirmation `confirm` asks for
/// (the server's close, or with [`Confirm::Acked`] the acknowledgement of everything we sent).
///
/// `pacer`, when given, paces the content to the bandwidth limits that apply (see
/// [`crate::rate`]); waiting for it never counts as a stall. Afterwards
/// [`Pacer::waited`] tells whether a limit bound this upload.
/// `size` is the file's size if the caller knows it (see [`protocol::send_file_zero_copy`]:
/// `before_close` must then check the file did not change).
///
/// `before_close` runs after the content was sent and before the half-close; returning an
/// error from it aborts the connection with a reset so the server does not take the partial
/// or changed content as complete (the spool service checks the file did not change).
///
/// `greeted` is set to the greeting time (as in [`Uploaded::greeting`]) once the greeting
/// has arrived, so that a caller whose upload fails later still knows the server answered,
/// and how fast.
///
/// `handshake` is the destination's round trip as far as known (see [`connect`]).
///
/// # Errors
/// Any [`ClientError`] ([`ClientError::phase`] tells where it failed); on error after
/// connecting the connection is reset, never closed gracefully, so no failure can look like
/// success to the server.
// The pacer, the progress callback, the greeting out-parameter and the check before the
// close are each a different caller's hook (send, the service, the tests).
#[allow(clippy::too_many_arguments)]
pub async fn upload<E>(
    dest: &Destination,
    confirm: Confirm,
    file: &std::fs::File,
    size: Option<u64>,
    timeouts: &Timeouts,
    pacer: Option<&mut Pacer>,
    progress: &mut (dyn FnMut(u64) + Send),
    greeted: &mut Option<Duration>,
    handshake: Option<&Handshake>,
    before_close: impl FnOnce(u64) -> Result<(), E>,
) -> Result<Uploaded, UploadError<E>> {
    let mut stream = connect(dest, timeouts, handshake).await?;
    let connected = Instant::now();
    let proto = |source| ClientError::Protocol {
        dest: dest.clone(),
        source,
    };
    if let Err(e) = protocol::read_command(&mut stream, timeouts.handshake).await {
        protocol::abort(stream);
        return Err(proto(e).into());
    }
    let greeting = connected.elapsed();
    *greeted = Some(greeting);
    let mut pacer = pacer;
    let body = protocol::send_file(
        file,
        size,
        &mut stream,
        timeouts.stall,
        pacer.as_deref_mut(),
        progress,
    )
    .await;
    // The body is out: this upload no longer shares the limits with the others while it
    // waits for its confirmation.
    if let Some(p) = pacer {
        p.leave();
    }
    let sent = match body {
        Ok(sent) => sent,
        Err(e) => {
            protocol::abort(stream);
            return Err(proto(e).into());
        }
    };
    if let Err(e) = before_close(sent) {
        protocol::abort(stream);
        return Err(UploadError::Rejected(e));
    }
    if let Err(e) = protocol::finish_tcp(&mut stream, confirm, timeouts.stall, timeouts.close).await
    {
        protocol::abort(stream);
        return Err(proto(e).into());
    }
    // Confirmed. With `Acked` the server may not have closed yet: close gracefully (the
    // linger-0 reset set at connect would tell it the transfer failed, and could discard
    // data it has not read yet). After the server's close this sends nothing.
    match confirm {
        // Confirmed by the server's close, read once everything (our FIN too) was
        // acknowledged: the socket is closed already (TCP_CLOSE) and closing it sends
        // nothing, reset or not, so the linger is not cleared (a system call for nothing).
        // Were it not closed, a reset would reach a server that has closed: harmless.
        Confirm::Close => drop(stream),
        // The server may keep the connection: ours must end with a FIN, not a reset.
        Confirm::Acked => protocol::close(stream),
    }
    Ok(Uploaded {
        bytes: sent,
        greeting,
    })
}

/// An upload failed in the network ([`ClientError`]) or was stopped by the caller's check.
#[derive(Debug, thiserror::Error)]
pub enum UploadError<E> {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Rejected(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("5000"), Ok(5000));
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in [
            "0",
            "65536",
            "-1",
            "",
            "abc",
            "99999999999999999999",
            "5000x",
            " 80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn service_names_resolve_when_the_database_has_them() {
        // netbase provides /etc/services; CI installs it.
        if std::path::Path::new("/etc/services").exists() {
            assert_eq!(parse_port("ssh"), Ok(22));
            assert_eq!(parse_port("http-alt"), Ok(8080));
        }
    }
}
