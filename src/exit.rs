//! Exit codes: the one place they are decided.
//!
//! A command ends with `Ok` or with a [`Failed`]: the [`Kind`] of what went wrong (the
//! front-end knows that) and the line to print after `ERROR: `. This module maps kinds to
//! numbers, prints the line, and renders the tables `--help` shows, so the numbers a user
//! reads are the numbers the process returns.

use std::fmt;

use crate::client::{ClientError, Phase};

/// Success.
pub const OK: u8 = 0;

/// What went wrong, in the classes the exit codes tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Anything not covered below.
    Other,
    /// Bad arguments: missing, extra, a bad port, a directory that cannot be used.
    Usage,
    /// `send`: FILE missing, not a regular file, or unreadable.
    File,
    /// `send`: HOST could not be resolved.
    Resolve,
    /// `send`: no connection (refused, unreachable, connect timeout).
    Connect,
    /// `send`: the server did not send `accio\r\n` (wrong bytes, closed, timed out).
    Handshake,
    /// `send`: the transfer failed after the greeting (stall, reset, no confirmation).
    Transfer,
    /// `status`: nothing answers on the control socket, as `systemctl status` says of an
    /// inactive unit.
    NotRunning,
    /// The configuration cannot be read or is invalid: `EX_CONFIG` from sysexits.h, which
    /// systemd knows ("CONFIG"), so a unit can use `RestartPreventExitStatus=78` to stop
    /// restarting a service that can never start.
    Config,
}

impl Kind {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Kind::Other => 1,
            Kind::Usage => 2,
            Kind::File => 3,
            Kind::Resolve => 4,
            Kind::Connect => 5,
            Kind::Handshake => 6,
            Kind::Transfer => 7,
            Kind::NotRunning => 3,
            Kind::Config => 78,
        }
    }
}

impl From<Phase> for Kind {
    fn from(p: Phase) -> Kind {
        match p {
            Phase::Resolve => Kind::Resolve,
            Phase::Connect | Phase::ConnectTimeout => Kind::Connect,
            Phase::Handshake => Kind::Handshake,
            Phase::Transfer => Kind::Transfer,
        }
    }
}

impl From<&ClientError> for Kind {
    fn from(e: &ClientError) -> Kind {
        e.phase().into()
    }
}

/// How a command failed: its [`Kind`], and the line for stderr unless it was printed
/// already (a command that reports several problems as it goes, like `retry`, or the
/// service, which logs).
#[derive(Debug)]
pub struct Failed {
    pub kind: Kind,
    pub message: Option<String>,
}

impl Failed {
    pub fn new(kind: Kind, message: impl fmt::Display) -> Failed {
        Failed {
            kind,
            message: Some(message.to_string()),
        }
    }

    /// A failure whose error lines were printed (or logged) already.
    pub fn reported(kind: Kind) -> Failed {
        Failed {
            kind,
            message: None,
        }
    }
}

/// Ends a command: prints its error line, if any, and returns its exit code.
pub fn finish<T>(result: Result<T, Failed>) -> u8 {
    match result {
        Ok(_) => OK,
        Err(f) => {
            if let Some(m) = &f.message {
                error_line(m);
            }
            f.kind.code()
        }
    }
}

/// Prints one `ERROR: ...` line on stderr. Unlike `eprintln!`, a closed or broken stderr
/// (EPIPE: the reader of `accio send ... 2>&1 | head` went away) does not panic: the exit
/// code still tells what happened.
pub fn error_line(message: impl fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "ERROR: {message}");
}

/// One row of an exit-code table: `None` is success.
type Row = (Option<Kind>, &'static str);

const SEND: &[Row] = &[
    (
        None,
        "the file was delivered and the server confirmed by closing (with --confirm\n\
         acked: the server's TCP acknowledged every byte, or it closed)",
    ),
    (Some(Kind::Other), "other error"),
    (
        Some(Kind::Usage),
        "usage error: missing or extra arguments, invalid port",
    ),
    (
        Some(Kind::File),
        "FILE missing, not a regular file, or unreadable",
    ),
    (Some(Kind::Resolve), "HOST could not be resolved"),
    (
        Some(Kind::Connect),
        "could not connect (refused, unreachable, or connect timeout)",
    ),
    (
        Some(Kind::Handshake),
        "the server did not send the accio command (wrong bytes, closed, or timeout)",
    ),
    (
        Some(Kind::Transfer),
        "the transfer failed (stall, reset, or the server did not confirm)",
    ),
];

const STATUS: &[Row] = &[
    (None, "the service answered; its state is printed"),
    (
        Some(Kind::Other),
        "other error (permission denied on the socket, a bad answer)",
    ),
    (
        Some(Kind::Usage),
        "usage error, or --destination names no destination of the service",
    ),
    (
        Some(Kind::NotRunning),
        "the service is not running: nothing answers on its control socket",
    ),
];

const FLUSH: &[Row] = &[
    (None, "the service flushed the destinations asked for"),
    (
        Some(Kind::Other),
        "other error (permission denied on the socket, a bad answer)",
    ),
    (
        Some(Kind::Usage),
        "usage error, or DESTINATION is not a destination of the service",
    ),
    (
        Some(Kind::NotRunning),
        "the service is not running: nothing answers on its control socket",
    ),
];

const RETRY: &[Row] = &[
    (
        None,
        "every file asked for was put back (or there was nothing to put back)",
    ),
    (
        Some(Kind::Other),
        "a file could not be moved, or a NAME is not a given-up file",
    ),
    (
        Some(Kind::Usage),
        "usage error, or --watch names no watched directory",
    ),
    (
        Some(Kind::Config),
        "the configuration cannot be read or is invalid",
    ),
];

const SERVE: &[Row] = &[
    (None, "stopped by SIGINT, SIGTERM or SIGQUIT"),
    (
        Some(Kind::Other),
        "other error: cannot listen, cannot install signal handlers",
    ),
    (
        Some(Kind::Usage),
        "usage error: missing or extra arguments, invalid port, DIR missing, not a\n\
         directory or not writable",
    ),
];

const CHECK_CONFIG: &[Row] = &[
    (
        None,
        "the configuration is valid; the effective settings are printed",
    ),
    (Some(Kind::Other), "the settings could not be printed"),
    (Some(Kind::Usage), "usage error"),
    (
        Some(Kind::Config),
        "the configuration cannot be read or is invalid; one ERROR: line names the\n\
         file, the line and the key",
    ),
];

const PLAIN: &[Row] = &[
    (None, "printed"),
    (Some(Kind::Other), "stdout could not be written"),
    (Some(Kind::Usage), "usage error: an unknown shell or page"),
];

fn table(rows: &[Row]) -> String {
    let mut out = String::from("Exit codes:");
    for (kind, text) in rows {
        let code = kind.map_or(OK, Kind::code);
        let text = text.replace('\n', "\n     ");
        out.push_str(&format!("\n  {code:<2} {text}"));
    }
    out
}

/// The table `accio send --help` prints.
pub fn send_help() -> String {
    table(SEND)
}

/// The table `accio status --help` prints.
pub fn status_help() -> String {
    table(STATUS)
}

/// The table `accio flush --help` prints.
pub fn flush_help() -> String {
    table(FLUSH)
}

/// The table `accio retry --help` prints.
pub fn retry_help() -> String {
    table(RETRY)
}

/// The table `accio serve --help` prints.
pub fn serve_help() -> String {
    table(SERVE)
}

/// The table `accio check-config --help` prints.
pub fn check_config_help() -> String {
    table(CHECK_CONFIG)
}

/// The table `accio completions --help` and `accio man --help` print.
pub fn plain_help() -> String {
    table(PLAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_kinds_have_distinct_codes() {
        for rows in [SEND, STATUS, FLUSH, RETRY] {
            let mut codes: Vec<u8> = rows.iter().map(|(k, _)| k.map_or(OK, Kind::code)).collect();
            let n = codes.len();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), n, "two kinds share a code in {rows:?}");
        }
    }

    #[test]
    fn tables_show_the_codes_returned() {
        let t = send_help();
        assert!(t.contains("\n  0  the file was delivered"), "{t}");
        assert!(t.contains("\n     acked: the server's TCP"), "{t}");
        assert!(t.contains("\n  5  could not connect"), "{t}");
        assert!(status_help().contains("\n  2  usage error, or --destination"));
        assert!(flush_help().contains("\n  3  the service is not running"));
        assert!(retry_help().contains("\n  2  usage error"));
    }

    #[test]
    fn phases_map_to_send_codes() {
        assert_eq!(Kind::from(Phase::Resolve).code(), 4);
        assert_eq!(Kind::from(Phase::ConnectTimeout).code(), 5);
        assert_eq!(Kind::from(Phase::Connect).code(), 5);
        assert_eq!(Kind::from(Phase::Handshake).code(), 6);
        assert_eq!(Kind::from(Phase::Transfer).code(), 7);
    }
}
