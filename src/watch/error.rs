//! The errors of one attempt, typed: a kind (what happened, which the [core](super::core)
//! compares to decide whether a failure is news) and its context (paths, addresses, byte
//! counts, timings), rendered once by `Display` where the driver logs it, `accio status`
//! shows it, or a `.reason` file records it. Message wording never steers behaviour.
//!
//! The kinds are read off the errors that already exist ([`ClientError`] and its
//! [`Phase`], [`ProtocolError`], [`io::Error`]'s kind), not a taxonomy of their own: a new
//! variant there is a new kind here.
//!
//! Split by consequence, as the core treats them:
//! - [`DestError`]: the destination took nothing (before the greeting); the file is not
//!   charged, the destination goes down;
//! - [`FileError`]: this attempt failed for this file; it counts against `max_attempts`;
//! - [`DispositionError`]: delivered or given up, but the move or delete failed; only that
//!   is retried.

use std::fmt;
use std::io;
use std::mem::{discriminant, Discriminant};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::client::{ClientError, Destination, Phase, Tried};
use crate::esc::esc;
use crate::protocol::ProtocolError;

/// What a [`ClientError`] was, without its details: its phase, its variant (and that of the
/// [`ProtocolError`] under it), and the kind of the I/O error at its root, if any (for a
/// failed connect, that of the last address tried). Two refusals from different addresses
/// are the same kind; a refusal and an unreachable network, or a timeout and a reset, are
/// not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKind {
    pub phase: Phase,
    variant: Discriminant<ClientError>,
    protocol: Option<Discriminant<ProtocolError>>,
    io: Option<io::ErrorKind>,
}

impl ClientKind {
    pub fn of(e: &ClientError) -> ClientKind {
        let (protocol, io) = match e {
            ClientError::Resolve { source, .. } => (None, Some(source.kind())),
            ClientError::NoAddresses { .. } | ClientError::ConnectTimeout { .. } => (None, None),
            ClientError::Connect { tried, .. } => (
                None,
                tried.0.last().and_then(|(_, t)| match t {
                    Tried::Failed(e) => Some(e.kind()),
                    Tried::NoAnswer(_) => None,
                }),
            ),
            ClientError::Protocol { source, .. } => {
                let io = match source {
                    ProtocolError::HandshakeIo(e) | ProtocolError::CloseIo(e) => Some(e.kind()),
                    ProtocolError::SendIo { source, .. } | ProtocolError::FileIo { source, .. } => {
                        Some(source.kind())
                    }
                    _ => None,
                };
                (Some(discriminant(source)), io)
            }
        };
        ClientKind {
            phase: e.phase(),
            variant: discriminant(e),
            protocol,
            io,
        }
    }

    /// The kind of the I/O error at its root, if any.
    pub fn io(&self) -> Option<io::ErrorKind> {
        self.io
    }
}

/// The destination took no upload: resolving, connecting or the greeting failed. Nothing
/// is known about the file.
#[derive(Debug, Clone)]
pub struct DestError {
    dest: Destination,
    error: Arc<ClientError>,
}

impl DestError {
    /// `error` is one of `dest`'s, before the greeting ([`Phase::Transfer`] is a
    /// [`FileError`]).
    pub fn new(dest: Destination, error: ClientError) -> DestError {
        DestError {
            dest,
            error: Arc::new(error),
        }
    }

    pub fn kind(&self) -> ClientKind {
        ClientKind::of(&self.error)
    }

    /// A sign of a server queueing us (its accept queue full, its workers busy): no answer
    /// to the connect, or no greeting, in time. A refusal or an unreachable network is not.
    pub fn congestion(&self) -> bool {
        match &*self.error {
            ClientError::Protocol { source, .. } => {
                matches!(source, ProtocolError::HandshakeTimeout(_))
            }
            e => e.phase() == Phase::ConnectTimeout,
        }
    }
}

impl fmt::Display for DestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dest = &self.dest;
        match &*self.error {
            ClientError::Protocol { source, .. } => write!(f, "no greeting from {dest}: {source}"),
            e => write!(f, "cannot reach {dest}: {e}"),
        }
    }
}

impl std::error::Error for DestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

/// An attempt failed for this file; by the phase it failed in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened (claimed).
    #[error("cannot open {}: {source}{}", esc(path), trouble_note(source))]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The destination greeted, then the transfer failed; or (see
    /// [`client_service_trouble`]) the connect failed for want of a descriptor here.
    #[error("upload to {dest} failed: {source}{}", upload_note(source))]
    Upload {
        dest: Destination,
        #[source]
        source: Arc<ClientError>,
    },
    /// Given up on, but what the name holds could not even be inspected: nothing was moved.
    #[error("given up on, but the file cannot be inspected")]
    Uninspectable,
}

impl FileError {
    pub fn open(path: PathBuf, source: io::Error) -> FileError {
        FileError::Open {
            path,
            source: Arc::new(source),
        }
    }

    pub fn upload(dest: Destination, source: ClientError) -> FileError {
        FileError::Upload {
            dest,
            source: Arc::new(source),
        }
    }

    /// The service itself ran out of descriptors or memory (EMFILE, ENFILE, ENOMEM): the
    /// file is not at fault, and the attempt does not count against `max_attempts`.
    pub fn service_trouble(&self) -> bool {
        match self {
            FileError::Open { source, .. } => is_service_trouble(source),
            FileError::Upload { source, .. } => client_service_trouble(source),
            FileError::Uninspectable => false,
        }
    }

    /// A sign of an overloaded server: sending failed (a reset, mostly), or its close did.
    pub fn congestion(&self) -> bool {
        match self {
            FileError::Upload { source, .. } => matches!(
                &**source,
                ClientError::Protocol {
                    source: ProtocolError::SendIo { .. } | ProtocolError::CloseIo(_),
                    ..
                }
            ),
            FileError::Open { .. } | FileError::Uninspectable => false,
        }
    }
}

/// Said after an error that is the service's, not the file's.
const SERVICE_TROUBLE: &str =
    " (the service is short of descriptors or memory; not counted against the file, retried)";

fn upload_note(e: &ClientError) -> &'static str {
    if client_service_trouble(e) {
        SERVICE_TROUBLE
    } else {
        ""
    }
}

/// A connect that failed at every address only because this process could not make a
/// socket (out of descriptors or memory): nothing is known about the destination, and the
/// file is not at fault either.
pub fn client_service_trouble(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { tried, .. } => {
            !tried.0.is_empty()
                && tried
                    .0
                    .iter()
                    .all(|(_, t)| matches!(t, Tried::Failed(e) if is_service_trouble(e)))
        }
        _ => false,
    }
}

fn trouble_note(e: &io::Error) -> &'static str {
    if is_service_trouble(e) {
        SERVICE_TROUBLE
    } else {
        ""
    }
}

/// Running out of descriptors (the process's or the system's) or of memory.
pub fn is_service_trouble(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    ) || e.kind() == io::ErrorKind::OutOfMemory
}

/// What a disposition was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispositionOp {
    /// Moving a delivered file to `done_dir`.
    MoveToDone,
    /// Deleting a delivered file (`on_success = "delete"`).
    Delete,
    /// Moving a file given up on to `failed_dir`.
    MoveToFailed,
}

/// Moving or deleting a file after its upload (or after giving up) failed; it stays in the
/// spool and only that is retried. The message is the I/O error's, which names the paths
/// and the step that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source}")]
pub struct DispositionError {
    pub op: DispositionOp,
    #[source]
    source: Arc<io::Error>,
}

impl DispositionError {
    pub fn new(op: DispositionOp, source: io::Error) -> DispositionError {
        DispositionError {
            op,
            source: Arc::new(source),
        }
    }

    /// The operation and the kind of the I/O error: what the core compares.
    pub fn kind(&self) -> (DispositionOp, io::ErrorKind) {
        (self.op, self.source.kind())
    }
}

/// Why a file was given up on, as its `.reason` file tells it (rendered when written, the
/// same text however often the move to `failed_dir` has to be tried).
#[derive(Debug, Clone)]
pub struct Reason {
    pub path: PathBuf,
    pub attempts: u32,
    pub error: FileError,
    /// When it was given up on.
    pub time: SystemTime,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "file: {}\nattempts: {}\nlast error: {}\ntime: {}\n",
            esc(&self.path),
            self.attempts,
            self.error,
            humantime::format_rfc3339_seconds(self.time)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::TriedAddrs;
    use std::net::SocketAddr;
    use std::time::Duration;

    pub(crate) fn dest() -> Destination {
        Destination {
            host: "rx.example".to_string(),
            port: 5000,
        }
    }

    /// A failed connect: every address in `addrs` failed with `errno`.
    pub(crate) fn connect_failed(addrs: &[&str], errno: i32) -> ClientError {
        ClientError::Connect {
            dest: dest(),
            tried: TriedAddrs(
                addrs
                    .iter()
                    .map(|a| {
                        let a: SocketAddr = a.parse().unwrap();
                        (a, Tried::Failed(io::Error::from_raw_os_error(errno)))
                    })
                    .collect(),
            ),
        }
    }

    pub(crate) fn protocol(source: ProtocolError) -> ClientError {
        ClientError::Protocol {
            dest: dest(),
            source,
        }
    }

    #[test]
    fn kinds_ignore_details_and_tell_causes_apart() {
        let kind = ClientKind::of;
        let refused = connect_failed(&["127.0.0.1:1"], libc::ECONNREFUSED);
        let refused_elsewhere = connect_failed(&["[::1]:1", "127.0.0.2:1"], libc::ECONNREFUSED);
        let unreachable = connect_failed(&["127.0.0.1:1"], libc::ENETUNREACH);
        assert_ne!(refused.to_string(), refused_elsewhere.to_string());
        assert_eq!(kind(&refused), kind(&refused_elsewhere));
        assert_ne!(kind(&refused), kind(&unreachable));
        assert_eq!(kind(&refused).phase, Phase::Connect);
        let timed_out = |share| ClientError::ConnectTimeout {
            dest: dest(),
            timeout: Duration::from_secs(10),
            tried: TriedAddrs(vec![(
                "127.0.0.1:1".parse().unwrap(),
                Tried::NoAnswer(share),
            )]),
        };
        let (t1, t2) = (
            timed_out(Duration::from_millis(9990)),
            timed_out(Duration::from_secs(10)),
        );
        assert_ne!(t1.to_string(), t2.to_string());
        assert_eq!(kind(&t1), kind(&t2));
        assert_ne!(kind(&t1), kind(&refused));
        // The greeting: a wrong byte, an early close and a timeout are three kinds, whatever
        // the byte or the count.
        let wrong = |byte| {
            protocol(ProtocolError::WrongCommand {
                byte,
                expected: 'a',
                position: 1,
            })
        };
        let closed = protocol(ProtocolError::ClosedBeforeCommand { received: 3 });
        let silent = protocol(ProtocolError::HandshakeTimeout(Duration::from_secs(10)));
        assert_eq!(kind(&wrong('x')), kind(&wrong('y')));
        assert_ne!(kind(&wrong('x')), kind(&closed));
        assert_ne!(kind(&closed), kind(&silent));
        assert_eq!(kind(&silent).phase, Phase::Handshake);
        // After the greeting, a reset is not a stall.
        let reset = |sent| {
            protocol(ProtocolError::SendIo {
                sent,
                source: io::Error::from_raw_os_error(libc::ECONNRESET),
            })
        };
        assert_eq!(kind(&reset(1)), kind(&reset(2)));
        assert_eq!(kind(&reset(1)).io(), Some(io::ErrorKind::ConnectionReset));
        assert_ne!(
            kind(&reset(1)),
            kind(&protocol(ProtocolError::Stall(Duration::from_secs(10))))
        );
    }

    /// What the adaptive limit takes as a sign of a queueing server.
    #[test]
    fn congestion_is_a_timeout_before_the_greeting_or_a_failed_send() {
        let d = |e| DestError::new(dest(), e);
        let connect_timeout = ClientError::ConnectTimeout {
            dest: dest(),
            timeout: Duration::from_secs(10),
            tried: TriedAddrs::default(),
        };
        assert!(d(connect_timeout).congestion());
        assert!(d(protocol(ProtocolError::HandshakeTimeout(
            Duration::from_secs(1)
        )))
        .congestion());
        assert!(!d(connect_failed(&["127.0.0.1:1"], libc::ECONNREFUSED)).congestion());
        assert!(!d(protocol(ProtocolError::ClosedBeforeCommand { received: 0 })).congestion());
        let f = |e| FileError::upload(dest(), e);
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert!(f(protocol(ProtocolError::SendIo {
            sent: 1,
            source: reset
        }))
        .congestion());
        assert!(!f(protocol(ProtocolError::Stall(Duration::from_secs(1)))).congestion());
        assert!(!FileError::Uninspectable.congestion());
    }

    /// The messages are those the service has always logged.
    #[test]
    fn messages_keep_their_wording() {
        let e = DestError::new(dest(), connect_failed(&["127.0.0.1:1"], libc::ECONNREFUSED));
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach rx.example:5000: cannot connect to rx.example:5000 (127.0.0.1:1: {})",
                io::Error::from_raw_os_error(libc::ECONNREFUSED)
            )
        );
        let e = DestError::new(
            dest(),
            protocol(ProtocolError::ClosedBeforeCommand { received: 3 }),
        );
        assert_eq!(
            e.to_string(),
            "no greeting from rx.example:5000: server closed the connection before sending the full `accio\\r\\n` command (3 of 7 bytes received)"
        );
        let e = FileError::upload(
            dest(),
            protocol(ProtocolError::Stall(Duration::from_secs(2))),
        );
        assert_eq!(
            e.to_string(),
            "upload to rx.example:5000 failed: rx.example:5000: server stopped reading: could not send any data for 2s"
        );
        let e = FileError::open(
            PathBuf::from("/spool/a b"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(e.to_string().starts_with("cannot open "), "{e}");
        let r = Reason {
            path: PathBuf::from("/spool/x"),
            attempts: 3,
            error: FileError::Uninspectable,
            time: std::time::UNIX_EPOCH,
        };
        assert_eq!(
            r.to_string(),
            "file: /spool/x\nattempts: 3\nlast error: given up on, but the file cannot be inspected\ntime: 1970-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn disposition_kinds_are_the_operation_and_the_io_kind() {
        let e = |op, errno, msg: &str| {
            DispositionError::new(
                op,
                io::Error::new(io::Error::from_raw_os_error(errno).kind(), msg.to_string()),
            )
        };
        let a = e(
            DispositionOp::MoveToDone,
            libc::EACCES,
            "cannot move /s/a to /d",
        );
        let b = e(
            DispositionOp::MoveToDone,
            libc::EACCES,
            "cannot move /s/b to /d",
        );
        assert_eq!(a.to_string(), "cannot move /s/a to /d");
        assert_eq!(a.kind(), b.kind());
        assert_ne!(
            a.kind(),
            e(
                DispositionOp::MoveToDone,
                libc::ENOSPC,
                "cannot move /s/a to /d"
            )
            .kind()
        );
        assert_ne!(
            a.kind(),
            e(
                DispositionOp::Delete,
                libc::EACCES,
                "cannot move /s/a to /d"
            )
            .kind()
        );
    }
}
