//! `accio serve PORT DIR`: the receiving side, per the course server spec. Listens on all
//! interfaces (or `--listen ADDR`), sends `accio\r\n` on each connection, and saves what
//! connection N sends as `DIR/N.file`. A connection silent for the idle timeout, or broken,
//! leaves a file holding exactly `ERROR`. Files are written under a hidden temporary name and
//! renamed when complete.
//!
//! The close is the sender's confirmation (it then deletes or moves its file), so a
//! connection is closed gracefully only once its file is durable: data synced, published
//! under its final name, DIR synced ([`store`]). Anything else ends in a reset.
//!
//! It is meant to be exposed ([`admit`]): connections are bounded in total (the rest wait in
//! the listen queue) and per source address (the rest are reset at once), a connection holds
//! no file descriptor until its first byte, and `accept` failures back off quietly.
//!
//! Nothing already in DIR is ever replaced: numbering continues after the highest `N.file`
//! found at start (a restarted receiver must not overwrite what the last run received), and a
//! file is published with a no-replace rename, taking the next number if its name was taken
//! meanwhile (another process writing into DIR).

pub mod admit;
mod conn;
pub mod store;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exit::{Failed, Kind};
use admit::{AddressSlot, Backoff, PerAddress, Throttled};
use store::{Dir, DirSync};

/// Settings of one receiver.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where `N.file` go.
    pub dir: PathBuf,
    /// Silence after which a connection is aborted and its file holds `ERROR`.
    pub idle_timeout: Duration,
    /// Sync data and DIR before confirming (false: `--no-sync`, the confirmation then only
    /// means "in the page cache").
    pub sync: bool,
    /// Connections held at once; further ones wait in the listen queue.
    pub max_connections: usize,
    /// Connections held at once from one source address ([`admit::source_key`]); further
    /// ones are reset at once.
    pub max_per_address: usize,
    /// Beyond this many bytes: `ERROR`, reset.
    pub max_size: Option<u64>,
    /// Whole-connection time limit: beyond it, `ERROR`, reset.
    pub deadline: Option<Duration>,
    /// Permission bits of received files.
    pub mode: u32,
    /// Test seam: every durability step, in the order it completed.
    #[doc(hidden)]
    pub steps: Option<Steps>,
}

impl ServeOptions {
    /// The defaults for `dir`, with limits sized for `nofile` descriptors.
    pub fn new(dir: PathBuf, nofile: u64) -> ServeOptions {
        let max_connections = admit::default_max_connections(nofile);
        ServeOptions {
            dir,
            idle_timeout: Duration::from_secs(10),
            sync: true,
            max_connections,
            max_per_address: admit::default_max_per_address(max_connections),
            max_size: None,
            deadline: None,
            mode: 0o600,
            steps: None,
        }
    }
}

/// One step on the way to a confirmed file, for the test that checks their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `fdatasync` of file N's data returned.
    DataSynced(u64),
    /// File N's rename to its final name returned.
    Published(u64),
    /// A directory sync covering file N's rename returned.
    DirSynced(u64),
    /// Connection N is about to be closed gracefully (the confirmation).
    Closing(u64),
}

/// Where [`Step`]s are recorded.
pub type Steps = Arc<Mutex<Vec<Step>>>;

fn record(steps: &Option<Steps>, step: Step) {
    if let Some(s) = steps {
        s.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }
}

/// Checks that files can be created in `dir` (permissions, read-only mount), as the
/// effective user, without creating anything.
///
/// # Errors
/// The `faccessat(W_OK | X_OK, AT_EACCESS)` error.
pub fn check_writable(dir: &std::path::Path) -> io::Result<()> {
    crate::files::access(dir, libc::W_OK | libc::X_OK)
}

/// Binds the listening socket on `listen`, or by default on the IPv6 any-address with dual
/// stack where the kernel has IPv6, else the IPv4 any-address.
///
/// # Errors
/// The port is in use, not permitted, the address is not local, or no socket could be made.
pub fn bind(listen: Option<IpAddr>, port: u16) -> io::Result<TcpListener> {
    let on = |ip: IpAddr| -> io::Result<std::net::TcpListener> {
        let domain = match ip {
            IpAddr::V4(_) => socket2::Domain::IPV4,
            IpAddr::V6(_) => socket2::Domain::IPV6,
        };
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            // `::` means every interface, IPv4 included, whatever the sysctl default.
            sock.set_only_v6(false)?;
        }
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from((ip, port)).into())?;
        // Connections beyond --max-connections wait here.
        sock.listen(1024)?;
        Ok(sock.into())
    };
    let std_listener = match listen {
        Some(ip) => on(ip)?,
        None => match on(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) {
            Ok(l) => l,
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    || e.kind() == io::ErrorKind::PermissionDenied =>
            {
                return Err(e)
            }
            Err(_) => on(IpAddr::from([0, 0, 0, 0]))?,
        },
    };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// What every connection task shares.
struct Shared {
    opts: ServeOptions,
    dir: Arc<Dir>,
    dir_sync: DirSync,
    numbering: Arc<Numbering>,
    /// Cancelled at shutdown: connections that have received nothing end at once.
    stopping: CancellationToken,
}

/// Accepts connections until `shutdown` completes, then stops accepting, ends the connections
/// that have received nothing, and gives the others up to `idle_timeout` to end. A connection
/// still running after that is dropped with its unfinished file, which never appears under its
/// final name.
///
/// # Errors
/// Only setup errors; a failing connection is logged and the server goes on.
pub async fn run(
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let numbering = Numbering::after_existing(&opts.dir)?;
    let dir = Arc::new(Dir::open(&opts.dir)?);
    let last = numbering.last();
    if last > 0 {
        tracing::info!(
            "{} holds {last}.file: numbering continues at {}",
            opts.dir.display(),
            last + 1
        );
    }
    let shared = Arc::new(Shared {
        dir_sync: DirSync::new(dir.clone()),
        dir,
        numbering: Arc::new(numbering),
        stopping: CancellationToken::new(),
        opts,
    });
    let opts = &shared.opts;
    let slots = Arc::new(Semaphore::new(
        opts.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let per_address = PerAddress::new(opts.max_per_address);
    let tracker = TaskTracker::new();
    // Tests and demos wait for this line before connecting.
    tracing::info!(
        "listening on {}, saving to {} (at most {} connections, {} per address{})",
        listener.local_addr()?,
        opts.dir.display(),
        opts.max_connections,
        opts.max_per_address,
        if opts.sync {
            ""
        } else {
            "; --no-sync: files are confirmed before they are on disk"
        }
    );
    let mut accept_failed = Throttled::default();
    let mut refused = Throttled::default();
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        // At --max-connections, stop accepting: the kernel's listen queue holds the rest.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.succeeded();
                // The end of a storm: its last failures were counted but not logged.
                let unreported = accept_failed.take_unreported();
                if unreported > 0 {
                    tracing::warn!(
                        "accept works again ({unreported} more failures since the last report)"
                    );
                }
                x
            }
            Err(e) => {
                accept_failed.hit(format_args!("accept failed: {e}"));
                let pause = backoff.failed(&e);
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // The dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; logs say a.b.c.d.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            refused.hit(format_args!(
                "refused a connection from {}: it holds {} already (--max-per-address)",
                peer.ip(),
                opts.max_per_address
            ));
            crate::protocol::abort(stream);
            continue;
        };
        let Some(n) = shared.numbering.next() else {
            // Only after u64::MAX.file: refuse rather than wrap around to 0.file.
            refused.hit(format_args!(
                "no file number left after {}.file: connection refused",
                u64::MAX
            ));
            crate::protocol::abort(stream);
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            // Held until the connection ends: its share of the bounds.
            let _held: (tokio::sync::OwnedSemaphorePermit, AddressSlot) = (slot, address_slot);
            match conn::handle(stream, n, &shared).await {
                Ok(Some((name, bytes))) => {
                    tracing::info!(connection = n, %peer, bytes, "received {name}.file")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(connection = n, %peer, "connection {n} failed: {e}"),
            }
        });
    }
    drop(listener);
    tracker.close();
    shared.stopping.cancel();
    // Let the connections that had nothing see the cancellation before counting.
    tokio::task::yield_now().await;
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

/// `accio serve PORT DIR` with its flags.
#[derive(Debug, Clone)]
pub struct Command {
    pub port: String,
    pub dir: PathBuf,
    pub listen: Option<IpAddr>,
    pub idle_timeout: Duration,
    pub no_sync: bool,
    pub max_connections: Option<usize>,
    pub max_per_address: Option<usize>,
    pub max_size: Option<u64>,
    pub deadline: Option<Duration>,
    pub mode: u32,
}

/// `accio serve PORT DIR`: checks the arguments, raises the descriptor limit, binds, and
/// serves until SIGTERM/SIGINT/SIGQUIT.
///
/// # Errors
/// [`Kind::Usage`] (bad port, DIR missing, not a directory or not writable, a zero limit) or
/// [`Kind::Other`] (cannot listen, cannot install signal handlers, the server failed).
pub async fn command(cmd: Command) -> Result<(), Failed> {
    let port = crate::client::parse_port(&cmd.port).map_err(|e| Failed::new(Kind::Usage, e))?;
    let dir = cmd.dir;
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
    if cmd.max_connections == Some(0) || cmd.max_per_address == Some(0) {
        return Err(Failed::new(
            Kind::Usage,
            "--max-connections and --max-per-address must be at least 1",
        ));
    }
    if cmd.mode & !0o777 != 0 || cmd.mode & 0o600 != 0o600 {
        return Err(Failed::new(
            Kind::Usage,
            format!(
                "--mode {:o}: permission bits (at most 777) that let the owner read and write",
                cmd.mode
            ),
        ));
    }
    crate::logging::init_for_tool();
    // Two descriptors per connection: the default bound is what the raised limit allows.
    let nofile = match crate::limits::raise_nofile() {
        Ok(l) => l.soft,
        Err(e) => {
            let soft = crate::limits::nofile().map(|l| l.soft).unwrap_or(1024);
            tracing::warn!("cannot raise the descriptor limit ({e}); sizing for {soft}");
            soft
        }
    };
    let mut opts = ServeOptions::new(dir, nofile);
    opts.idle_timeout = cmd.idle_timeout;
    opts.sync = !cmd.no_sync;
    opts.max_size = cmd.max_size;
    opts.deadline = cmd.deadline;
    opts.mode = cmd.mode;
    if let Some(max) = cmd.max_connections {
        opts.max_connections = max;
        opts.max_per_address = admit::default_max_per_address(max);
        let fits = admit::default_max_connections(nofile);
        if max > fits {
            tracing::warn!(
                "--max-connections {max} is more than the descriptor limit ({nofile}) allows \
                 ({fits}): accept will fail with EMFILE under load"
            );
        }
    }
    if let Some(max) = cmd.max_per_address {
        opts.max_per_address = max;
    }
    let listener = bind(cmd.listen, port)
        .map_err(|e| Failed::new(Kind::Other, format!("cannot listen on port {port}: {e}")))?;
    let shutdown = crate::signals::termination()
        .map_err(|e| Failed::new(Kind::Other, format!("cannot install signal handlers: {e}")))?;
    run(listener, opts, shutdown)
        .await
        .map_err(|e| Failed::new(Kind::Other, e))
}

/// A size: bytes, or with a binary suffix `K`, `M`, `G`, `T` (optionally `iB`): `10M` is
/// 10 MiB.
///
/// # Errors
/// Not a number, an unknown suffix, or too large.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 1048576, 512K, 10M or 2G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        "T" | "TIB" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, K, M, G, T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// A file mode in octal, such as `600` or `0640`.
///
/// # Errors
/// Not octal digits.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?}: expected octal permission bits such as 600 or 0640"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::COMMAND;
    use std::ffi::OsStr;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

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

    /// Serves `opts` on 127.0.0.1 in this process until the returned sender is dropped.
    async fn serve_here(opts: ServeOptions) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = bind(Some(IpAddr::from([127, 0, 0, 1])), 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(listener, opts, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Sends `content` as a client and returns the steps recorded when the server's close
    /// (the confirmation) arrived.
    async fn send_and_snapshot(addr: SocketAddr, content: &[u8], steps: &Steps) -> Vec<Step> {
        use tokio::io::AsyncReadExt;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut cmd = [0u8; 7];
        s.read_exact(&mut cmd).await.unwrap();
        assert_eq!(&cmd, COMMAND);
        s.write_all(content).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("a clean close");
        let seen = steps.lock().unwrap().clone();
        seen
    }

    /// The close that confirms a file comes after its data was synced, then its rename, then
    /// a directory sync: recorded by the code at each step, and the client's own view (every
    /// step is already recorded when its close arrives).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn confirmation_follows_data_sync_rename_and_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let steps: Steps = Arc::default();
        let mut opts = ServeOptions::new(dir.path().to_path_buf(), 1024);
        opts.steps = Some(steps.clone());
        let (addr, _stop) = serve_here(opts).await;
        for (i, content) in [&b"first"[..], b"", &[7u8; 200_000][..]].iter().enumerate() {
            let n = i as u64 + 1;
            let seen = send_and_snapshot(addr, content, &steps).await;
            let mine: Vec<Step> = seen
                .iter()
                .copied()
                .filter(|s| {
                    matches!(s, Step::DataSynced(m) | Step::Published(m) | Step::DirSynced(m) | Step::Closing(m) if *m == n)
                })
                .collect();
            assert_eq!(
                mine,
                [
                    Step::DataSynced(n),
                    Step::Published(n),
                    Step::DirSynced(n),
                    Step::Closing(n)
                ],
                "{n}.file"
            );
            let path = dir.path().join(format!("{n}.file"));
            assert_eq!(std::fs::read(&path).unwrap(), *content);
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{n}.file");
        }
    }

    /// `--no-sync`: published and closed, nothing synced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_sync_skips_both_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let steps: Steps = Arc::default();
        let mut opts = ServeOptions::new(dir.path().to_path_buf(), 1024);
        opts.steps = Some(steps.clone());
        opts.sync = false;
        let (addr, _stop) = serve_here(opts).await;
        let seen = send_and_snapshot(addr, b"fast", &steps).await;
        assert_eq!(seen, [Step::Published(1), Step::Closing(1)]);
    }

    /// Many files confirmed at once share directory syncs, and each still waits for one that
    /// began after its own rename.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_confirmations_each_follow_their_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let steps: Steps = Arc::default();
        let mut opts = ServeOptions::new(dir.path().to_path_buf(), 1024);
        opts.steps = Some(steps.clone());
        let (addr, _stop) = serve_here(opts).await;
        let clients: Vec<_> = (0..20)
            .map(|i| {
                let steps = steps.clone();
                tokio::spawn(async move { send_and_snapshot(addr, &[i as u8; 1000], &steps).await })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let seen = steps.lock().unwrap().clone();
        for n in 1..=20u64 {
            let at = |want: Step| {
                seen.iter()
                    .position(|s| *s == want)
                    .unwrap_or_else(|| panic!("{want:?} in {seen:?}"))
            };
            assert!(at(Step::DataSynced(n)) < at(Step::Published(n)), "{seen:?}");
            assert!(at(Step::Published(n)) < at(Step::DirSynced(n)), "{seen:?}");
            assert!(at(Step::DirSynced(n)) < at(Step::Closing(n)), "{seen:?}");
        }
    }

    #[test]
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("9").is_err());
    }
}
