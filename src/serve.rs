//! `accio serve PORT DIR`: the receiving side, per the course server spec. Listens on all
//! interfaces, sends `accio\r\n` on each connection, and saves what connection N sends as
//! `DIR/N.file`. A connection silent for the idle timeout, or broken, leaves a file holding
//! exactly `ERROR`. Files are written under a hidden temporary name and renamed when complete.
//!
//! Nothing already in DIR is ever replaced: numbering continues after the highest `N.file`
//! found at start (a restarted receiver must not overwrite what the last run received), and a
//! file is published with a no-replace rename, taking the next number if its name was taken
//! meanwhile (another process writing into DIR).

use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::exit::{Failed, Kind};
use crate::protocol::COMMAND;

/// Settings of one receiver.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where `N.file` go.
    pub dir: PathBuf,
    /// Silence after which a connection is aborted and its file holds `ERROR`.
    pub idle_timeout: Duration,
}

/// Checks that files can be created in `dir` (permissions, read-only mount), as the
/// effective user, without creating anything.
///
/// # Errors
/// The `faccessat(W_OK | X_OK, AT_EACCESS)` error.
pub fn check_writable(dir: &std::path::Path) -> io::Result<()> {
    crate::files::access(dir, libc::W_OK | libc::X_OK)
}

/// Binds the listening socket: IPv6 any-address with dual stack where the kernel has IPv6,
/// else IPv4 any-address.
///
/// # Errors
/// The port is in use, not permitted, or no socket could be made.
pub fn bind(port: u16) -> io::Result<TcpListener> {
    let v6 = || -> io::Result<std::net::TcpListener> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_only_v6(false)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        sock.listen(1024)?;
        Ok(sock.into())
    };
    let std_listener = match v6() {
        Ok(l) => l,
        Err(e)
            if e.kind() == io::ErrorKind::AddrInUse
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            return Err(e)
        }
        Err(_) => std::net::TcpListener::bind(("0.0.0.0", port))?,
    };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// Accepts connections until `shutdown` completes, then stops accepting and gives the
/// connections in progress up to `idle_timeout` to end. A connection still running after that
/// is dropped with its unfinished file, which never appears under its final name.
///
/// # Errors
/// Only setup errors; a failing connection is logged and the server goes on.
pub async fn run(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let numbering = Arc::new(Numbering::after_existing(&opts.dir)?);
    let tracker = TaskTracker::new();
    let opts = Arc::new(opts);
    let last = numbering.last();
    if last > 0 {
        tracing::info!(
            "{} holds {last}.file: numbering continues at {}",
            opts.dir.display(),
            last + 1
        );
    }
    // Tests and demos wait for this line before connecting.
    tracing::info!(
        "listening on {}, saving to {}",
        listener.local_addr()?,
        opts.dir.display()
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(n) = numbering.next() else {
                    // Only after u64::MAX.file: refuse rather than wrap around to 0.file.
                    tracing::warn!("no file number left after {}.file: connection refused", u64::MAX);
                    crate::protocol::abort(stream);
                    continue;
                };
                let opts = opts.clone();
                let numbering = numbering.clone();
                tracker.spawn(async move {
                    match handle(stream, n, &opts, &numbering).await {
                        Ok((name, bytes)) => tracing::info!(connection = n, %peer, bytes, "received {name}.file"),
                        Err(e) => tracing::warn!(connection = n, %peer, "connection {n} failed: {e}"),
                    }
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    if !tracker.is_empty() {
        tracing::info!(
            "stopping: waiting up to {:?} for {} connection(s) in progress",
            opts.idle_timeout,
            tracker.len()
        );
    }
    if tokio::time::timeout(opts.idle_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("stopping: abandoning connections still in progress");
    }
    Ok(())
}

/// The numbers of `N.file`: after the highest one in DIR at start, one per connection.
#[derive(Debug)]
pub struct Numbering {
    /// The last number handed out (or found in DIR).
    last: AtomicU64,
}

impl Numbering {
    /// Starts after the highest `N.file` in `dir` (N decimal digits; other names, hidden part
    /// files included, do not count).
    ///
    /// # Errors
    /// `dir` cannot be listed.
    pub fn after_existing(dir: &Path) -> io::Result<Numbering> {
        let mut last = 0u64;
        let ctx =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display()));
        for entry in std::fs::read_dir(dir).map_err(ctx)? {
            let entry = entry.map_err(ctx)?;
            if let Some(n) = file_number(&entry.file_name()) {
                last = last.max(n);
            }
        }
        Ok(Numbering {
            last: AtomicU64::new(last),
        })
    }

    /// The last number handed out or found.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }

    /// The next number, or `None` once `u64::MAX` was used.
    pub fn next(&self) -> Option<u64> {
        self.last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_add(1))
            .ok()
            .map(|n| n + 1)
    }
}

/// N for a name `N.file` (N decimal digits, as this server writes it or with leading zeros).
fn file_number(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(".file")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for u64: a name this server can never reach, so it cannot collide.
    digits.parse().ok()
}

/// Renames the complete part file to `DIR/N.file` without ever replacing a file: if the name
/// was taken meanwhile, the next free number is used. Returns the number used.
fn publish(part: &Path, dir: &Path, mut n: u64, numbering: &Numbering) -> io::Result<u64> {
    loop {
        let target = dir.join(format!("{n}.file"));
        match crate::files::rename_noreplace(part, &target) {
            Ok(()) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let next = numbering.next().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and no file number is left", target.display()),
                    )
                })?;
                tracing::warn!(
                    "{} appeared meanwhile (not written by this server): saving as {next}.file",
                    target.display()
                );
                n = next;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot publish {}: {e}", target.display()),
                ))
            }
        }
    }
}

/// Removes an unpublished part file when its connection is dropped (shutdown), so a partial
/// transfer leaves nothing behind.
struct PartFile {
    path: PathBuf,
    /// False once the file was renamed to its final name.
    armed: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Receives one connection into `DIR/N.file` (or the next free number), then closes it:
/// gracefully (the client's confirmation) only when the file is in place, else with a reset.
/// Returns the number the file was saved under and its size.
async fn handle(
    mut stream: TcpStream,
    n: u64,
    opts: &ServeOptions,
    numbering: &Arc<Numbering>,
) -> io::Result<(u64, u64)> {
    // Until the file is published, any close is a reset: if this process dies (even by
    // SIGKILL) after reading the whole body but before saving it, the kernel's close of the
    // socket must not look like the confirming close to the client. Best effort: without it
    // only a crash in that window could confirm an unsaved file.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    match save(&mut stream, n, opts, numbering).await {
        Ok(saved) => {
            // Published: now the graceful close is the truth.
            crate::protocol::close(stream);
            Ok(saved)
        }
        Err(e) => {
            crate::protocol::abort(stream);
            Err(e)
        }
    }
}

/// Writes what the connection sends to a hidden part file and publishes it as `N.file` when
/// complete; a failed transfer leaves `N.file` holding exactly `ERROR`. Returns the number
/// used and the bytes received.
async fn save(
    stream: &mut TcpStream,
    n: u64,
    opts: &ServeOptions,
    numbering: &Arc<Numbering>,
) -> io::Result<(u64, u64)> {
    let (mut file, mut part) = create_part(&opts.dir, n).await?;
    let result = match receive(stream, &mut file, opts.idle_timeout).await {
        Ok(bytes) => {
            file.flush().await?;
            drop(file);
            Ok(bytes)
        }
        Err(e) => {
            drop(file);
            tokio::fs::write(&part.path, b"ERROR").await?;
            Err(e)
        }
    };
    let (path, dir, numbering) = (part.path.clone(), opts.dir.clone(), numbering.clone());
    let used = tokio::task::spawn_blocking(move || publish(&path, &dir, n, &numbering)).await??;
    part.armed = false;
    result.map(|bytes| (used, bytes))
}

/// Creates the hidden part file `.N.file.part` for connection N. Never truncates an existing
/// one (another receiver on the same DIR may be writing it): then a random suffix is added.
async fn create_part(dir: &Path, n: u64) -> io::Result<(tokio::fs::File, PartFile)> {
    let mut name = format!(".{n}.file.part");
    for _ in 0..16 {
        let path = dir.join(&name);
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((file, PartFile { path, armed: true })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                name = format!(".{n}.file.{:08x}.part", fastrand::u32(..));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", path.display()),
                ))
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "cannot create a part file for {n}.file in {}: every name tried exists",
            dir.display()
        ),
    ))
}

async fn receive(
    stream: &mut TcpStream,
    file: &mut tokio::fs::File,
    idle: Duration,
) -> io::Result<u64> {
    tokio::time::timeout(idle, stream.write_all(COMMAND))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "could not send the command"))??;
    // 64 KiB: below malloc's mmap threshold, so a connection costs no page faults for its
    // buffer (256 KiB made small files measurably slower); large enough for throughput.
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {idle:?}"),
                ))
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

/// `accio serve PORT DIR`: checks the arguments, binds, and serves until SIGTERM/SIGINT.
///
/// # Errors
/// [`Kind::Usage`] (bad port, DIR missing, not a directory or not writable) or
/// [`Kind::Other`] (cannot listen, cannot install signal handlers, the server failed).
pub async fn command(port: &str, dir: PathBuf, idle_timeout: Duration) -> Result<(), Failed> {
    let port = crate::client::parse_port(port).map_err(|e| Failed::new(Kind::Usage, e))?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failed::new(
                Kind::Usage,
                format!("{dir:?} is not a directory"),
            ))
        }
        Err(e) => {
            return Err(Failed::new(
                Kind::Usage,
                format!("cannot use directory {dir:?}: {e}"),
            ))
        }
    }
    // Every connection writes a file here: refuse at start rather than fail each one.
    check_writable(&dir).map_err(|e| {
        Failed::new(
            Kind::Usage,
            format!("cannot write to directory {dir:?}: {e}"),
        )
    })?;
    crate::logging::init_for_tool();
    let listener = bind(port)
        .map_err(|e| Failed::new(Kind::Other, format!("cannot listen on port {port}: {e}")))?;
    let shutdown = crate::signals::termination()
        .map_err(|e| Failed::new(Kind::Other, format!("cannot install signal handlers: {e}")))?;
    let opts = ServeOptions { dir, idle_timeout };
    run(listener, opts, shutdown)
        .await
        .map_err(|e| Failed::new(Kind::Other, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_decimal_n_dot_file_counts() {
        let n = |s: &str| file_number(OsStr::new(s));
        assert_eq!(n("1.file"), Some(1));
        assert_eq!(n("0007.file"), Some(7));
        assert_eq!(n("18446744073709551615.file"), Some(u64::MAX));
        for other in [
            ".file",
            "x.file",
            "1.file.bak",
            ".1.file.part",
            "+1.file",
            "1 .file",
            "1.File",
            "99999999999999999999999.file",
        ] {
            assert_eq!(n(other), None, "{other:?}");
        }
    }

    #[test]
    fn numbering_never_wraps_around() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("5.file"), b"").unwrap();
        let numbering = Numbering::after_existing(dir.path()).unwrap();
        assert_eq!(numbering.next(), Some(6));
        let last = Numbering {
            last: AtomicU64::new(u64::MAX - 1),
        };
        assert_eq!(last.next(), Some(u64::MAX));
        assert_eq!(last.next(), None);
        assert_eq!(last.next(), None);
    }
}
