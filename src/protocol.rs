//! The client side of the Accio protocol: the greeting and the content over any async
//! stream, the confirmation over TCP.
//!
//! A transfer has three phases, each a function here:
//!
//! 1. [`read_command`]: wait for the exact bytes `accio\r\n`, which may arrive one at a time.
//!    Nothing is sent before they have all arrived. A byte that cannot continue the command is
//!    rejected at once; no byte for the handshake timeout is an error.
//! 2. [`send_body`] (any stream) or [`send_file_zero_copy`] (a TCP socket and a file): the
//!    content, and nothing else. Not being able to write for the stall timeout is an error.
//!    Their paced forms ([`send_body_paced`], [`send_file`]) send no more than a
//!    [`Pacer`] grants; waiting for a grant is not stalling. A pacer for a process whose
//!    upload is its only work ([`Pacer::on_thread`], `accio send --limit-rate`) has the
//!    body sent on the calling thread, without the runtime (`on_thread`).
//! 3. [`finish_tcp`] (a TCP socket: it reads the kernel's send queue and TCP state):
//!    half-close, then wait (bounded) for the confirmation. By default ([`Confirm::Close`])
//!    that is the server's close; with [`Confirm::Acked`] it is the server's TCP
//!    acknowledging every byte and our FIN.
//!
//! This module knows nothing of command lines, spool directories or retry policy.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::rate::{Grant, Pacer};

mod confirm;
mod on_thread;
mod pacing;
pub use confirm::finish_tcp;
use pacing::SocketPacing;

/// The command the server sends before the client may send anything.
pub const COMMAND: &[u8; 7] = b"accio\r\n";

/// Default for every protocol timeout, from the spec.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeouts of one transfer. Each bounds one kind of waiting; none bounds a slow but
/// steady peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Name resolution plus connecting to every resolved address, all together.
    pub connect: Duration,
    /// Longest wait for the next byte of the command.
    pub handshake: Duration,
    /// Longest time the send buffer may stay full, and, after the last write, the longest
    /// time the server may acknowledge none of the data still queued in the kernel.
    pub stall: Duration,
    /// Longest wait for the server to close after our half-close.
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_TIMEOUT,
            handshake: DEFAULT_TIMEOUT,
            stall: DEFAULT_TIMEOUT,
            close: DEFAULT_TIMEOUT,
        }
    }
}

/// What confirms a transfer after the half-close. Set per destination (`confirm` in the
/// config, `accio send --confirm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// The server closes the connection after our half-close (the protocol's confirmation:
    /// a careful server closes only once the file is saved).
    #[default]
    Close,
    /// The server's TCP acknowledged every byte and our FIN (the socket reached FIN_WAIT2),
    /// or the server closed. For servers that keep connections open: it trusts the server's
    /// kernel, not its disk.
    Acked,
}

impl Confirm {
    /// The name used in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Confirm::Close => "close",
            Confirm::Acked => "acked",
        }
    }
}

impl std::fmt::Display for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong once connected. Each variant says what the server did, so
/// the message alone tells an operator where to look.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("server sent {byte:?} where the command `accio\\r\\n` expected {expected:?} (byte {position} of the command)")]
    WrongCommand {
        /// The offending byte, as received.
        byte: char,
        /// What the command needed at that position.
        expected: char,
        /// 1-based position within the command.
        position: usize,
    },
    #[error("server closed the connection before sending the full `accio\\r\\n` command ({received} of 7 bytes received)")]
    ClosedBeforeCommand { received: usize },
    #[error("no command from the server: waited {0:?} for the next byte of `accio\\r\\n`")]
    HandshakeTimeout(Duration),
    #[error("reading the command failed: {0}")]
    HandshakeIo(#[source] io::Error),
    #[error("server stopped reading: could not send any data for {0:?}")]
    Stall(Duration),
    #[error("sending failed after {sent} bytes: {source}")]
    SendIo {
        sent: u64,
        #[source]
        source: io::Error,
    },
    #[error("reading the file failed after {sent} bytes: {source}")]
    FileIo {
        sent: u64,
        #[source]
        source: io::Error,
    },
    /// With [`Confirm::Close`]: everything, our FIN included, was acknowledged, but the
    /// server did not close. The one failure `confirm = "acked"` would have accepted.
    #[error("server did not confirm the transfer: every byte was acknowledged but the server never closed (waited {0:?}); if this server keeps connections open, set confirm = \"acked\" for it (accio send --confirm acked)")]
    CloseTimeout(Duration),
    /// No close, and the kernel cannot show that our FIN was acknowledged either.
    #[error("server did not confirm the transfer: no close within {0:?} once all data was sent")]
    CloseTimeoutUnacked(Duration),
    #[error("server did not confirm the transfer: {0}")]
    CloseIo(#[source] io::Error),
}

impl ProtocolError {
    /// True for failures of the handshake phase (nothing of the file was sent).
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            ProtocolError::WrongCommand { .. }
                | ProtocolError::ClosedBeforeCommand { .. }
                | ProtocolError::HandshakeTimeout(_)
                | ProtocolError::HandshakeIo(_)
        )
    }
}

/// Incremental matcher for the command, apart from any I/O so it can be tested on any input.
#[derive(Debug, Default, Clone)]
pub struct CommandMatcher {
    /// How many bytes of [`COMMAND`] have matched so far.
    matched: usize,
}

impl CommandMatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the command still to come.
    pub fn remaining(&self) -> usize {
        COMMAND.len() - self.matched
    }

    /// True once the whole command has matched.
    pub fn is_complete(&self) -> bool {
        self.matched == COMMAND.len()
    }

    /// How many bytes have matched so far.
    pub fn matched(&self) -> usize {
        self.matched
    }

    /// Feeds received bytes. Never accepts more than [`remaining`](Self::remaining) bytes:
    /// anything beyond the command is not part of the handshake.
    ///
    /// # Errors
    /// [`ProtocolError::WrongCommand`] at the first byte that cannot continue the command.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        for &byte in bytes.iter().take(self.remaining()) {
            let expected = COMMAND[self.matched];
            if byte != expected {
                return Err(ProtocolError::WrongCommand {
                    byte: byte as char,
                    expected: expected as char,
                    position: self.matched + 1,
                });
            }
            self.matched += 1;
        }
        Ok(())
    }
}

/// Waits for the full `accio\r\n` command. Each read takes at most [`COMMAND_READ`] bytes;
/// what follows the command in them is unsolicited and dropped, as [`finish_tcp`] drops
/// what comes later: input is never buffered without bound.
///
/// # Errors
/// Wrong byte, server closing first, no byte within `handshake_timeout`, or a read error.
pub async fn read_command<S: AsyncRead + Unpin>(
    stream: &mut S,
    handshake_timeout: Duration,
) -> Result<(), ProtocolError> {
    let mut matcher = CommandMatcher::new();
    let mut buf = [0u8; COMMAND_READ];
    while !matcher.is_complete() {
        let n = match timeout(handshake_timeout, stream.read(&mut buf)).await {
            Err(_) => return Err(ProtocolError::HandshakeTimeout(handshake_timeout)),
            Ok(Err(e)) => return Err(ProtocolError::HandshakeIo(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(ProtocolError::ClosedBeforeCommand {
                received: matcher.matched(),
            });
        }
        matcher.feed(&buf[..n])?;
    }
    Ok(())
}

/// The most [`read_command`] reads at once. More than the command: a read that does not
/// fill its buffer tells the runtime the socket is drained (tokio then waits for the next
/// readiness event instead of trying a read that would fail with `EAGAIN`), which saves the
/// confirmation's first read a system call.
const COMMAND_READ: usize = 64;

/// Size of the buffer for the copying path: large enough for throughput, small and fixed so
/// memory does not depend on the file.
const COPY_BUF: usize = 256 * 1024;

/// Streams everything `reader` yields into `stream`, with a plain buffer copy. Used for
/// streams that are not TCP sockets and as the fallback when zero-copy is unavailable.
/// `progress` is called with the running total after each write.
///
/// # Errors
/// Read errors of `reader`, write errors of `stream`, or no write progress for `stall`.
pub async fn send_body<R, S>(
    reader: &mut R,
    stream: &mut S,
    stall: Duration,
    sent: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ProtocolError>
where
    R: AsyncRead + Unpin + ?Sized,
    S: AsyncWrite + Unpin + ?Sized,
{
    send_body_paced(reader, stream, stall, sent, None, progress).await
}

/// [`send_body`], reading no more than `pacer` grants before each write. The stall
/// timeout bounds each write only, never the wait for a grant: a paced upload is not a
/// stalled one.
///
/// # Errors
/// As [`send_body`].
pub async fn send_body_paced<R, S>(
    reader: &mut R,
    stream: &mut S,
    stall: Duration,
    mut sent: u64,
    mut pacer: Option<&mut Pacer>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ProtocolError>
where
    R: AsyncRead + Unpin + ?Sized,
    S: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        // The size of the file is not known here: grants are asked for a buffer's worth.
        let want = match pacer.as_deref_mut() {
            None => COPY_BUF,
            Some(p) => match p.grant(COPY_BUF as u64).await {
                Grant::Unlimited => COPY_BUF,
                Grant::Bytes(n) => usize::try_from(n).unwrap_or(COPY_BUF).min(COPY_BUF),
            },
        };
        let n = reader
            .read(&mut buf[..want])
            .await
            .map_err(|source| ProtocolError::FileIo { sent, source })?;
        if n == 0 {
            return Ok(sent);
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match timeout(stall, stream.write(chunk)).await {
                Err(_) => return Err(ProtocolError::Stall(stall)),
                Ok(Err(source)) => return Err(ProtocolError::SendIo { sent, source }),
                Ok(Ok(0)) => {
                    return Err(ProtocolError::SendIo {
                        sent,
                        source: io::Error::new(io::ErrorKind::WriteZero, "socket accepted no data"),
                    })
                }
                Ok(Ok(w)) => {
                    chunk = &chunk[w..];
                    sent += w as u64;
                    progress(sent);
                }
            }
        }
    }
}

/// Largest count asked of one `sendfile` call; the kernel caps it near 2 GiB anyway.
const SENDFILE_CHUNK: usize = 64 * 1024 * 1024;

/// Streams a whole file into a TCP socket with `sendfile(2)`: no copy through user space,
/// constant memory. Falls back to [`send_body`] when the kernel cannot sendfile from this
/// file (e.g. some special filesystems). Sends until end of file and returns the byte count.
///
/// `size`, when the caller knows it (from an `fstat` it made anyway), ends the body once that
/// many bytes are sent, without a last `sendfile` that only finds the end of the file. A file
/// that grew meanwhile may then be cut short: a caller passing `size` must check that the
/// file did not change before it lets the transfer be confirmed (the spool service does). A
/// file that shrank ends early, as without it.
///
/// # Errors
/// As [`send_body`].
pub async fn send_file_zero_copy(
    file: &std::fs::File,
    size: Option<u64>,
    stream: &mut TcpStream,
    stall: Duration,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ProtocolError> {
    send_file(file, size, stream, stall, None, progress).await
}

/// [`send_file_zero_copy`] under a bandwidth limit: each `sendfile` call asks for no more
/// than `pacer` granted (still zero-copy, in chunks the size of the grants). Without a
/// pacer, or while no limit applies, the calls are as large as the unlimited path's. The
/// stall timeout bounds the waits for the socket to take data, never the waits for a grant.
/// `size` as for [`send_file_zero_copy`].
///
/// # Errors
/// As [`send_body`].
pub async fn send_file(
    file: &std::fs::File,
    known_size: Option<u64>,
    stream: &mut TcpStream,
    stall: Duration,
    mut pacer: Option<&mut Pacer>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ProtocolError> {
    if known_size == Some(0) {
        return Ok(0);
    }
    let file_fd = file.as_raw_fd();
    let sock_fd = stream.as_raw_fd();
    // A process whose upload is its only work: the body on this thread, as a C client
    // sends it (see `on_thread`).
    if let Some(p) = pacer.as_deref_mut().filter(|p| p.sends_on_thread()) {
        if let Some(done) = on_thread::send_file(file, known_size, sock_fd, stall, p, progress) {
            return done;
        }
        return copy_instead(file, stream, stall, pacer, progress).await;
    }
    let mut sent: u64 = 0;
    // Paced only: bytes granted and not sent yet, and the file's size (grants are asked
    // for what is left, so a small file does not reserve a whole share of the link).
    let mut credit: u64 = 0;
    let size_now = || file.metadata().map_or(u64::MAX, |m| m.len());
    // A known size ends the body (below) and needs no `fstat`.
    let mut size = match (&pacer, known_size) {
        (None, _) => 0,
        (Some(_), Some(known)) => known,
        (Some(_), None) => size_now(),
    };
    // Paced only, and only while a limit is in force: the rate the kernel paces the
    // socket at. Never set on the unlimited path.
    let mut kernel = SocketPacing::default();
    let mut asked = false;
    loop {
        let count = match pacer.as_deref_mut() {
            None => SENDFILE_CHUNK,
            Some(_) if credit > 0 => usize::try_from(credit).unwrap_or(SENDFILE_CHUNK),
            Some(p) => {
                if sent >= size {
                    // All of it, unless it grew meanwhile (a file that changed is refused
                    // after sending anyway; this only ends the body at its end).
                    size = size_now();
                    if sent >= size {
                        return kernel.drain(stream, stall, sent).await;
                    }
                }
                // Before each grant but the first: the share may have changed (uploads
                // joined or left, a timetable entry came due, a reload). The first grant
                // is a SLICE's, sent as it is: a file that fits in it (a small file under
                // a limit that does not bind) costs no system call for the pacing.
                let first = !asked;
                asked = true;
                if !first {
                    kernel.update(sock_fd, p);
                }
                let grant = p.grant(size - sent).await;
                // And after it: the wait may have ended with a rate change (or `off`). The
                // last grant goes at the share itself: with the headroom it would leave a
                // third of its slice early, and the body end before its reservation does
                // (a second's grant: a 10 s send 3 % short).
                if !first {
                    let last = matches!(grant, Grant::Bytes(n) if n >= size - sent);
                    kernel.after_grant(sock_fd, p, last);
                }
                match grant {
                    Grant::Unlimited => SENDFILE_CHUNK,
                    Grant::Bytes(n) => {
                        credit = n;
                        usize::try_from(n).unwrap_or(SENDFILE_CHUNK)
                    }
                }
            }
        }
        .min(SENDFILE_CHUNK);
        kernel.writable(stream, stall, sent).await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let mut offset = sent as libc::off_t;
            // SAFETY: both descriptors are open for the duration of the call (borrowed
            // above), and `offset` is a valid pointer to a local.
            let n = unsafe { libc::sendfile(sock_fd, file_fd, &mut offset, count) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match result {
            Ok(0) => return kernel.drain(stream, stall, sent).await,
            Ok(n) => {
                sent += n as u64;
                credit = credit.saturating_sub(n as u64);
                progress(sent);
                if known_size.is_some_and(|size| sent >= size) {
                    return kernel.drain(stream, stall, sent).await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if sent == 0
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) =>
            {
                // The copying path bounds each write by the stall timeout alone, and asks
                // for a SLICE's grants: the kernel does not pace it.
                if let Some(p) = pacer.as_deref_mut() {
                    kernel.clear(sock_fd, p);
                }
                return copy_instead(file, stream, stall, pacer, progress).await;
            }
            Err(e) if is_file_error(&e) => {
                return Err(ProtocolError::FileIo { sent, source: e });
            }
            Err(source) => return Err(ProtocolError::SendIo { sent, source }),
        }
    }
}

/// The body of a file that cannot be the source of `sendfile`, copied through a buffer
/// instead, from the start (nothing was sent).
async fn copy_instead(
    file: &std::fs::File,
    stream: &mut TcpStream,
    stall: Duration,
    pacer: Option<&mut Pacer>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ProtocolError> {
    let dup = file
        .try_clone()
        .map_err(|source| ProtocolError::FileIo { sent: 0, source })?;
    let mut reader = tokio::fs::File::from_std(dup);
    send_body_paced(&mut reader, stream, stall, 0, pacer, progress).await
}

/// Errors of `sendfile` that come from the file rather than the socket.
fn is_file_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EOVERFLOW))
}

/// `at + d`, or a year after `at` where that overflows the clock: timeouts come from the
/// command line, the environment and the configuration, and a deadline must not panic.
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// Drops a connection with a reset instead of a graceful close, so the peer can tell that
/// the transfer was not completed.
pub fn abort(stream: TcpStream) {
    let sock = socket2::SockRef::from(&stream);
    // Linger 0 turns close into RST. If setting it fails, a plain close is all we can do.
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Closes a connection gracefully (a FIN), also one set to linger 0 so that any other close
/// is a reset: for a transfer that was confirmed (client) or saved (server).
pub fn close(stream: TcpStream) {
    // Best effort: if clearing the linger fails, the close stays a reset.
    let _ = socket2::SockRef::from(&stream).set_linger(None);
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_accepts_the_command_in_any_split() {
        for split in 0..=COMMAND.len() {
            let mut m = CommandMatcher::new();
            m.feed(&COMMAND[..split]).unwrap();
            m.feed(&COMMAND[split..]).unwrap();
            assert!(m.is_complete());
        }
    }

    #[test]
    fn matcher_rejects_at_first_wrong_byte() {
        let mut m = CommandMatcher::new();
        let err = m.feed(b"accio\n").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::WrongCommand {
                position: 6,
                byte: '\n',
                expected: '\r'
            }
        ));
        let mut m = CommandMatcher::new();
        assert!(m.feed(b"h").is_err());
    }

    #[test]
    fn matcher_ignores_bytes_after_the_command() {
        let mut m = CommandMatcher::new();
        m.feed(b"accio\r\ngarbage").unwrap();
        assert!(m.is_complete());
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// What the handshake must do with `input` (the whole stream, then EOF): accept, reject
    /// at a 0-based position, or find the stream closed after a proper prefix.
    #[derive(Debug, PartialEq)]
    enum Expected {
        Accept,
        RejectAt(usize),
        ClosedAfter(usize),
    }

    fn expected(input: &[u8]) -> Expected {
        for (i, &expected) in COMMAND.iter().enumerate() {
            match input.get(i) {
                None => return Expected::ClosedAfter(i),
                Some(&b) if b != expected => return Expected::RejectAt(i),
                Some(_) => {}
            }
        }
        Expected::Accept
    }

    /// Splits `input` at the given cut points (any values; clamped and sorted).
    fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        cuts.push(0);
        cuts.push(input.len());
        cuts.sort_unstable();
        cuts.windows(2)
            .map(|w| input[w[0]..w[1]].to_vec())
            .collect()
    }

    /// Inputs that exercise every branch: random bytes, proper prefixes of the command with
    /// anything after, and the command with one byte changed.
    fn inputs() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            (
                0..=COMMAND.len(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(k, tail)| [&COMMAND[..k], &tail[..]].concat()),
            (
                0..COMMAND.len(),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(i, b, tail)| {
                    let mut v = COMMAND.to_vec();
                    v[i] = b;
                    v.extend(tail);
                    v
                }),
        ]
    }

    proptest::proptest! {
        /// The matcher never panics, accepts exactly when the input starts with the command,
        /// and rejects in the chunk that holds the first bad byte, naming that byte.
        #[test]
        fn matcher_on_any_bytes_and_chunking(
            input in inputs(),
            cuts in proptest::collection::vec(0usize..32, 0..8),
        ) {
            let want = expected(&input);
            let mut m = CommandMatcher::new();
            let mut fed = 0usize;
            let mut outcome = None;
            for chunk in chunks(&input, &cuts) {
                match m.feed(&chunk) {
                    Ok(()) => fed += chunk.len(),
                    Err(e) => {
                        outcome = Some((fed, chunk.len(), e));
                        break;
                    }
                }
            }
            match want {
                Expected::Accept => {
                    proptest::prop_assert!(outcome.is_none());
                    proptest::prop_assert!(m.is_complete());
                }
                Expected::ClosedAfter(n) => {
                    proptest::prop_assert!(outcome.is_none());
                    proptest::prop_assert_eq!(m.matched(), n);
                    proptest::prop_assert!(!m.is_complete());
                }
                Expected::RejectAt(i) => {
                    let (start, len, err) = outcome.expect("a bad byte must be rejected");
                    proptest::prop_assert!(start <= i && i < start + len, "rejected in the wrong chunk");
                    proptest::prop_assert_eq!(m.matched(), i);
                    match err {
                        ProtocolError::WrongCommand { byte, expected, position } => {
                            proptest::prop_assert_eq!(byte, input[i] as char);
                            proptest::prop_assert_eq!(expected, COMMAND[i] as char);
                            proptest::prop_assert_eq!(position, i + 1);
                        }
                        other => proptest::prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
        }

        /// `read_command` over an in-memory stream written in random chunks: the same
        /// verdicts, the server closing early is reported with the count received, and
        /// what follows the command is dropped by the read that took it, or left in the stream.
        #[test]
        fn read_command_over_a_duplex_stream(
            input in inputs(),
            cuts in proptest::collection::vec(0usize..32, 0..8),
            capacity in 1usize..16,
        ) {
            let want = expected(&input);
            let parts = chunks(&input, &cuts);
            let (result, rest) = rt().block_on(async move {
                let (mut server, mut client) = tokio::io::duplex(capacity);
                let writer = tokio::spawn(async move {
                    for part in parts {
                        if server.write_all(&part).await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                });
                let result = read_command(&mut client, Duration::from_secs(10)).await;
                let mut rest = Vec::new();
                if result.is_ok() {
                    client.read_to_end(&mut rest).await.unwrap();
                }
                drop(client);
                writer.await.unwrap();
                (result, rest)
            });
            match (want, result) {
                (Expected::Accept, Ok(())) => {
                    // What came after the command is dropped (at most a read's worth) or
                    // left in the stream.
                    let after = &input[COMMAND.len()..];
                    proptest::prop_assert!(after.ends_with(&rest));
                    proptest::prop_assert!(after.len() - rest.len() < COMMAND_READ);
                }
                (Expected::RejectAt(i), Err(ProtocolError::WrongCommand { position, .. })) => {
                    proptest::prop_assert_eq!(position, i + 1);
                }
                (Expected::ClosedAfter(n), Err(ProtocolError::ClosedBeforeCommand { received })) => {
                    proptest::prop_assert_eq!(received, n);
                }
                (want, got) => proptest::prop_assert!(false, "expected {want:?}, got {got:?}"),
            }
        }

        /// The copying path delivers exactly the input, whatever the reader's pace.
        #[test]
        fn send_body_is_byte_exact(
            len in 0usize..600_000,
            seed in proptest::prelude::any::<u64>(),
            capacity in 1usize..70_000,
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let expected = data.clone();
            let (sent, got, last_progress) = rt().block_on(async move {
                let (mut tx, mut rx) = tokio::io::duplex(capacity);
                let reader = tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 1 + (seed as usize % 50_000)];
                    loop {
                        let n = rx.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return got;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                });
                let mut last = 0;
                let mut progress = |n| last = n;
                let sent = send_body(&mut &data[..], &mut tx, Duration::from_secs(10), 0, &mut progress)
                    .await
                    .unwrap();
                drop(tx);
                (sent, reader.await.unwrap(), last)
            });
            proptest::prop_assert_eq!(sent, len as u64);
            proptest::prop_assert_eq!(last_progress, len as u64);
            proptest::prop_assert!(got == expected);
        }
    }

    #[test]
    fn read_command_times_out_without_progress() {
        rt().block_on(async {
            let (mut server, mut client) = tokio::io::duplex(64);
            server.write_all(b"acc").await.unwrap();
            let start = std::time::Instant::now();
            let err = read_command(&mut client, Duration::from_millis(100))
                .await
                .unwrap_err();
            assert!(matches!(err, ProtocolError::HandshakeTimeout(_)), "{err:?}");
            assert!(err.is_handshake());
            assert!(start.elapsed() >= Duration::from_millis(100));
            drop(server);
        });
    }

    #[test]
    fn send_body_fails_when_the_peer_stops_reading() {
        rt().block_on(async {
            let (mut tx, rx) = tokio::io::duplex(1024);
            let data = vec![7u8; 100_000];
            let err = send_body(
                &mut &data[..],
                &mut tx,
                Duration::from_millis(100),
                0,
                &mut |_| {},
            )
            .await
            .unwrap_err();
            assert!(matches!(err, ProtocolError::Stall(_)), "{err:?}");
            assert!(!err.is_handshake());
            drop(rx);
        });
    }
}
