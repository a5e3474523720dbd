//! `accio serve PORT DIR`: the receiving side, per the course server spec. Listens on all
//! interfaces, sends `accio\r\n` on each connection, and saves what connection N sends as
//! `DIR/N.file`. A connection silent for the idle timeout, or broken, leaves a file holding
//! exactly `ERROR`. Files are written under a hidden temporary name and renamed when complete.

use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

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
    crate::config::fs_check::access(dir, libc::W_OK | libc::X_OK)
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
    let counter = Arc::new(AtomicU64::new(0));
    let tracker = TaskTracker::new();
    let opts = Arc::new(opts);
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
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let opts = opts.clone();
                tracker.spawn(async move {
                    match handle(stream, n, &opts).await {
                        Ok(bytes) => tracing::info!(connection = n, %peer, bytes, "received {n}.file"),
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

/// Receives one connection into `DIR/N.file`, then closes it: gracefully (the client's
/// confirmation) only when the file is in place, else with a reset.
async fn handle(mut stream: TcpStream, n: u64, opts: &ServeOptions) -> io::Result<u64> {
    // Until the file is published, any close is a reset: if this process dies (even by
    // SIGKILL) after reading the whole body but before saving it, the kernel's close of the
    // socket must not look like the confirming close to the client. Best effort: without it
    // only a crash in that window could confirm an unsaved file.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    match save(&mut stream, n, opts).await {
        Ok(bytes) => {
            // Published: now the graceful close is the truth.
            let _ = socket2::SockRef::from(&stream).set_linger(None);
            drop(stream);
            Ok(bytes)
        }
        Err(e) => {
            crate::protocol::abort(stream);
            Err(e)
        }
    }
}

/// Writes what the connection sends to a hidden part file and renames it to `N.file` when
/// complete; a failed transfer leaves `N.file` holding exactly `ERROR`.
async fn save(stream: &mut TcpStream, n: u64, opts: &ServeOptions) -> io::Result<u64> {
    let final_path = opts.dir.join(format!("{n}.file"));
    let mut part = PartFile {
        path: opts.dir.join(format!(".{n}.file.part")),
        armed: true,
    };
    let mut file = tokio::fs::File::create(&part.path).await.map_err(|e| {
        part.armed = false;
        io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", part.path.display()),
        )
    })?;
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
    tokio::fs::rename(&part.path, &final_path).await?;
    part.armed = false;
    result
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
