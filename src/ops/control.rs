//! The control socket: a Unix stream socket on which the running service answers `accio
//! status`.
//!
//! The protocol is one request line and one answer, then the service closes:
//! - `view\n` (or `view {"all":true,"destination":"host:port"}\n`, a [`ViewQuery`]): the
//!   current [`View`] as one JSON document;
//! - `flush\n` (or `flush {"destination":"host:port"}\n`): `{"flushed":{...}}`
//!   ([`Flushed`]), `accio flush`.
//!
//! Anything else gets `{"error": "..."}`. Bounded: a few connections at once, a short
//! request, a deadline for the whole exchange. The socket is owner-only (0600): it is bound
//! under umask 0177, so it is never reachable with looser permissions, not even for the
//! instant between bind(2) and chmod(2); then it is renamed into place.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::esc::esc;
use crate::status::{Flushed, View, ViewHandle, ViewQuery};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// Longest request line (a destination name is at most a host name and a port).
const MAX_REQUEST: u64 = 1024;
/// The whole exchange, request to answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Largest answer a client accepts (a View is capped by the pipeline; this is a guard).
const MAX_ANSWER: u64 = 64 << 20;

/// Why the control socket could not be set up. The service runs on without it.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another accio service answers on {}", esc(.0))]
    InUse(PathBuf),
    #[error("{} exists and is not a socket", esc(.0))]
    NotASocket(PathBuf),
    #[error("cannot create {}: {source}", esc(path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the control socket at `path`, mode 0600. A stale socket (no one answers on it) is
/// replaced; a live one is not.
///
/// # Errors
/// [`BindError`].
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if StdUnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".accio-control.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = bind_private(&tmp).map_err(io)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(listener)
}

/// Binds a Unix socket at `path` under umask 0177, so that it is created 0600: the
/// process's umask is what bind(2) applies, and whoever connects between bind and a later
/// chmod would otherwise get through. The umask is process-wide, so it is restored at once;
/// files other threads create meanwhile get a stricter mode, never a looser one.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let std_listener = {
        // SAFETY: umask(2) cannot fail and only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above; puts back the mask that was in force.
        unsafe { libc::umask(old) };
        bound?
    };
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener)
}

/// Serves `listener` until `stop`, then removes the socket at `path` (if it is still ours).
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    views: ViewHandle,
    started: Instant,
    stop: CancellationToken,
) {
    let ours = file_id(&path);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let views = views.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(DEADLINE, answer(stream, &views, started)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::debug!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Remove the socket only if it is still the one we bound (a newer service may have
    // replaced a name it found stale).
    if ours.is_some() && file_id(&path) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// Device and inode of what is at `path` (not following a symlink), to tell our socket from
/// one that replaced it.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

async fn answer(stream: UnixStream, views: &ViewHandle, started: Instant) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST));
    limited.read_line(&mut line).await?;
    const NOT_NOW: &str = "the service is starting, reloading or stopping; try again";
    let (word, args) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let body = match (word, Request::parse(word, args)) {
        (_, Err(e)) => error_json(&e),
        (_, Ok(Request::View(q))) => match views.query(q).await {
            Some(mut v) => {
                v.pid = std::process::id();
                v.version = env!("CARGO_PKG_VERSION").to_string();
                v.uptime_s = started.elapsed().as_secs_f64();
                serde_json::to_vec(&v).map_err(io::Error::other)?
            }
            None => error_json(NOT_NOW),
        },
        (_, Ok(Request::Flush(f))) => match views.flush(f.destination).await {
            Some(Ok(flushed)) => {
                serde_json::to_vec(&FlushAnswer { flushed }).map_err(io::Error::other)?
            }
            Some(Err(e)) => error_json(&e),
            None => error_json(NOT_NOW),
        },
    };
    w.write_all(&body).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// A request line, parsed.
#[derive(Debug, PartialEq)]
enum Request {
    View(ViewQuery),
    Flush(FlushQuery),
}

/// The arguments of `flush`.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlushQuery {
    #[serde(default)]
    pub destination: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FlushAnswer {
    flushed: Flushed,
}

impl Request {
    /// `word` and its JSON arguments (empty: the defaults).
    fn parse(word: &str, args: &str) -> Result<Request, String> {
        fn json<T: serde::de::DeserializeOwned + Default>(
            word: &str,
            args: &str,
        ) -> Result<T, String> {
            let args = args.trim();
            if args.is_empty() {
                return Ok(T::default());
            }
            serde_json::from_str(args).map_err(|e| format!("bad arguments to {word:?}: {e}"))
        }
        match word {
            "view" => json(word, args).map(Request::View),
            "flush" => json(word, args).map(Request::Flush),
            other => Err(format!(
                "unknown request {other:?}; expected \"view\" or \"flush\""
            )),
        }
    }
}

fn error_json(message: &str) -> Vec<u8> {
    serde_json::json!({ "error": message })
        .to_string()
        .into_bytes()
}

/// Why `accio status` got no [`View`].
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Nothing listens on the socket: the service is not running (or uses another socket).
    #[error(
        "the service is not running: cannot connect to {}: {source}",
        esc(path)
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket is there but this user may not use it.
    #[error("permission denied on {}: run as the service's user or root (sudo accio status)", esc(.0))]
    Denied(PathBuf),
    /// Connected, but the answer was missing, late, an error or not a View.
    #[error("bad answer on {}: {message}", esc(path))]
    Answer { path: PathBuf, message: String },
}

/// Asks the service listening on `path` for its [`View`]; returns the raw JSON too (printed
/// as is by `--json`).
///
/// # Errors
/// [`AskError`].
pub fn ask(path: &Path) -> Result<(View, String), AskError> {
    ask_view(path, &ViewQuery::default())
}

/// [`ask`], listing what `q` asks for.
///
/// # Errors
/// [`AskError`].
pub fn ask_view(path: &Path, q: &ViewQuery) -> Result<(View, String), AskError> {
    let request = if *q == ViewQuery::default() {
        // What every version understands.
        "view\n".to_string()
    } else {
        format!("view {}\n", serde_json::to_string(q).unwrap_or_default())
    };
    let text = exchange(path, &request)?;
    let view = serde_json::from_str::<View>(&text).map_err(|e| AskError::Answer {
        path: path.to_path_buf(),
        message: format!("not a status document: {e}"),
    })?;
    Ok((view, text))
}

/// Asks the service on `path` to flush `destination` (all if `None`).
///
/// # Errors
/// [`AskError`] (an unknown destination is an [`AskError::Answer`] naming the known ones).
pub fn ask_flush(path: &Path, destination: Option<&str>) -> Result<Flushed, AskError> {
    let q = FlushQuery {
        destination: destination.map(str::to_string),
    };
    let request = format!("flush {}\n", serde_json::to_string(&q).unwrap_or_default());
    let text = exchange(path, &request)?;
    serde_json::from_str::<FlushAnswer>(&text)
        .map(|a| a.flushed)
        .map_err(|e| AskError::Answer {
            path: path.to_path_buf(),
            message: format!("not a flush answer: {e}"),
        })
}

/// Sends `request` and reads the answer: a JSON document that is not an error.
fn exchange(path: &Path, request: &str) -> Result<String, AskError> {
    let mut s = StdUnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => AskError::Denied(path.to_path_buf()),
        _ => AskError::NotRunning {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let bad = |message: String| AskError::Answer {
        path: path.to_path_buf(),
        message,
    };
    let _ = s.set_read_timeout(Some(DEADLINE));
    let _ = s.set_write_timeout(Some(DEADLINE));
    s.write_all(request.as_bytes())
        .map_err(|e| bad(format!("cannot send the request: {e}")))?;
    let mut text = String::new();
    s.take(MAX_ANSWER)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot read the answer: {e}")))?;
    let text = text.trim_end().to_string();
    if let Ok(e) = serde_json::from_str::<ErrorAnswer>(&text) {
        return Err(bad(e.error));
    }
    if text.is_empty() {
        return Err(bad("the service closed without answering".to_string()));
    }
    Ok(text)
}

#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: String,
}
