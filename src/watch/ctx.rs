//! What the stages of the pipeline share: the watched directories as configured, what every
//! upload task needs, the errors that stop the service. Below the stages (watcher, queue,
//! uploader), so that they take it from here and not from the pipeline that wires them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::disposition;
use super::lane::Lane;
use crate::config::{NameFilter, RetryPolicy, WatchConfig};
use crate::esc::esc;
use crate::files::Dir;
use crate::metrics::Metrics;
use crate::protocol::Timeouts;
use crate::status::Stats;

/// Not-regular entries already reported ("ignoring … FIFO"), bounded and forgotten when
/// they go. Owned by the daemon so that a reload (a new pipeline) does not report them
/// again: each is reported once per process (again only if it changes).
pub type Reported = super::specials::Specials;

/// Errors that stop the service. Problems with one file never are: they are logged and
/// retried or set aside.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("inotify watch limit reached (fs.inotify.max_user_watches) while watching {}; raise it, e.g. sysctl fs.inotify.max_user_watches=524288", esc(dir))]
    InotifyWatchLimit { dir: PathBuf },
    #[error("inotify instance limit reached (fs.inotify.max_user_instances); raise it, e.g. sysctl fs.inotify.max_user_instances=1024")]
    InotifyInstanceLimit,
    #[error("cannot watch {}: {message}", esc(dir))]
    Watch { dir: PathBuf, message: String },
    #[error("cannot list {}: {source}", esc(dir))]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid name pattern for {}: {message}", esc(dir))]
    Filter { dir: PathBuf, message: String },
}

/// One watched directory, as the pipeline uses it.
#[derive(Debug)]
pub struct WatchCtx {
    /// Its settings; `dir` made absolute (inotify reports absolute paths).
    pub cfg: WatchConfig,
    /// Compiled `include` / `exclude`.
    pub filter: NameFilter,
    /// Its directories, opened once when the pipeline starts (at start, on each reload).
    pub dirs: Dirs,
    /// Its threads for claims and dispositions (see [`Lane`]): a hung spool holds these
    /// only.
    pub lane: Lane,
}

/// A watch's directories, held open: claims and dispositions go through these descriptors,
/// so a parent renamed afterwards (another directory put in its place) cannot redirect
/// them. Three descriptors per watch (two without done_dir). Each is opened again by its
/// configured path only by a reload, when the directory held was removed (no name leads
/// to it any more: nothing could be moved into it; checked with one `fstat` at most every
/// [`REMOVED_CHECK`]: a move into a directory removed since fails, keeps the file in the
/// spool and is retried, by then through the directory now at that path), and
/// for the spool when the watcher follows its path to a replacement (a directory replaced
/// or mounted over, which the service has always followed): what is listed and what is
/// claimed stay the same directory.
#[derive(Debug)]
pub struct Dirs {
    spool: Held,
    done: Option<Held>,
    failed: Held,
}

/// How often a held directory is checked for having been removed, at most (see [`Dirs`]).
/// Two `fstat`s per file were a tenth of the system calls of a busy spool's.
const REMOVED_CHECK: Duration = Duration::from_millis(100);

/// One directory held open (see [`Dirs`]), with when it was last checked.
#[derive(Debug)]
struct Held(Mutex<(Dir, Instant)>);

impl Held {
    fn new(dir: Dir) -> Held {
        Held(Mutex::new((dir, Instant::now())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Dir, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory held, opened again first if it was removed (and its path leads to a
    /// directory again), which is checked at most every [`REMOVED_CHECK`].
    fn get(&self) -> Dir {
        let mut guard = self.lock();
        let (held, checked) = &mut *guard;
        let now = Instant::now();
        if now.saturating_duration_since(*checked) < REMOVED_CHECK {
            return held.clone();
        }
        *checked = now;
        if held.fd().removed() {
            if let Ok(new) = Dir::open(held.path()) {
                tracing::warn!(
                    dir = %esc(held.path()),
                    "{} was removed; using the directory now at that path",
                    esc(held.path())
                );
                *held = new;
            }
        }
        held.clone()
    }

    /// Holds `dir` from now on.
    fn set(&self, dir: Dir) {
        *self.lock() = (dir, Instant::now());
    }
}

impl Dirs {
    /// Opens the directories `cfg` names.
    ///
    /// # Errors
    /// [`FatalError::Watch`]: one cannot be opened (a reload then keeps the previous ones).
    pub fn open(cfg: &WatchConfig) -> Result<Dirs, FatalError> {
        let open = |d: &PathBuf| {
            Dir::open(d).map(Held::new).map_err(|e| FatalError::Watch {
                dir: cfg.dir.clone(),
                message: e.to_string(),
            })
        };
        Ok(Dirs {
            spool: open(&cfg.dir)?,
            // Only where files go there (a done_dir with `on_success = "delete"` is unused).
            done: match (cfg.on_success, &cfg.done_dir) {
                (crate::config::OnSuccess::Move, Some(d)) => Some(open(d)?),
                _ => None,
            },
            failed: open(&cfg.failed_dir)?,
        })
    }

    /// The spool as it is held now (a claim keeps the one it went through).
    pub fn spool(&self) -> Dir {
        self.spool.get()
    }

    /// done_dir, where delivered files are moved (`None`: they are deleted).
    pub fn done(&self) -> Option<Dir> {
        self.done.as_ref().map(Held::get)
    }

    /// failed_dir.
    pub fn failed(&self) -> Dir {
        self.failed.get()
    }

    /// Opens the spool again by its configured path `dir`, after the watcher followed it to
    /// a replacement. On failure the previous descriptor stays.
    ///
    /// # Errors
    /// The open error.
    pub fn reopen_spool(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.spool.set(Dir::open(dir)?);
        Ok(())
    }
}

/// What every upload task needs.
#[derive(Debug)]
pub struct Shared {
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub stats: Arc<Stats>,
    /// Event metrics (deliveries, attempts, give-ups); one per process, across reloads.
    pub metrics: Arc<Metrics>,
    pub syncer: Arc<disposition::Syncer>,
    /// Bandwidth limits; one per process, across reloads (uploads in flight take a new
    /// configuration's limits too).
    pub rates: Arc<crate::rate::Rates>,
    /// Each destination's handshake round trip (when a connect whose SYN was lost starts
    /// afresh); kept for the life of a configuration.
    pub handshakes: crate::handshake::Handshakes,
}
