//! The core's vocabulary: what it is told (hints, listings, identities, writers, outcomes of
//! attempts, settings) and what it answers (actions, reports, counts). The stages around the
//! core (watcher, claim, uploader, the queue's driver) speak it; the core depends on none of
//! them.

use std::ffi::OsString;
use std::fmt;
use std::time::{Duration, Instant};

use crate::client::Uploaded;
use crate::config::RetryPolicy;
use crate::watch::error::{DestError, DispositionError, FileError, Reason};

/// A name in one of the watched directories: (watch number, file name).
pub type Key = (usize, OsString);

/// What an event says about one name in a watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Created (IN_CREATE): a writer has it open, or it is a link, FIFO, directory, ….
    Created,
    /// Written to (IN_MODIFY): being written.
    Modified,
    /// Closed after writing (IN_CLOSE_WRITE): ready after the settle time.
    Closed,
    /// Renamed into the directory (IN_MOVED_TO): complete, ready now.
    MovedIn,
    /// Metadata changed (IN_ATTRIB): restarts the settle time.
    Attrib,
    /// Deleted or renamed away.
    Gone,
}

/// What kind of directory entry a path names. Everything but [`Kind::Regular`] is left
/// alone by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Regular,
    Symlink,
    Fifo,
    Socket,
    Device,
    Directory,
    Other,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Regular => "regular file",
            Kind::Symlink => "symbolic link",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::Device => "device",
            Kind::Directory => "directory",
            Kind::Other => "special file",
        })
    }
}

/// Who a directory entry is and what state its content is in: enough to tell "the same
/// file, unchanged" from anything else (replaced, rewritten, appended, touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch; also the backlog's sort key.
    pub mtime_ns: i128,
    /// Status change time: catches writes that restore the mtime, renames over, chmod.
    pub ctime_ns: i128,
}

impl Identity {
    /// The same inode (possibly changed).
    pub fn same_inode(&self, other: &Identity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// How long before `wall_ns` (the wall clock, nanoseconds since the Unix epoch) the
    /// file last changed, by the newer of its mtime and ctime; zero if not before. An mtime
    /// in the future (`touch -d`, clock skew) is not trusted: the ctime, which the kernel
    /// sets, is taken alone.
    pub fn age_at(&self, wall_ns: i128) -> Duration {
        let last = if self.mtime_ns > wall_ns {
            self.ctime_ns
        } else {
            self.mtime_ns.max(self.ctime_ns)
        };
        since(last, wall_ns)
    }

    /// How long before `wall_ns` the file's content last changed: by its mtime, which every
    /// write sets. A rename, a hard link or a `chmod` sets only the ctime: a finished file
    /// moved into the spool is as old as its content (ready at once, as a file moved in is),
    /// where [`Identity::age_at`] counts from the move. An mtime in the future is not
    /// trusted, as there: the ctime alone.
    pub fn content_age_at(&self, wall_ns: i128) -> Duration {
        let last = if self.mtime_ns > wall_ns {
            self.ctime_ns
        } else {
            self.mtime_ns
        };
        since(last, wall_ns)
    }

    /// How long before `wall_ns` its content is known to have been unchanged:
    /// [`Identity::content_age_at`] less [`STAMP_SLACK`]. What a listing settles by, and
    /// what the claim of a file settled that way checks again.
    pub fn unchanged_for(&self, wall_ns: i128) -> Duration {
        self.content_age_at(wall_ns).saturating_sub(STAMP_SLACK)
    }
}

/// Taken off a file's age by its timestamps: the kernel stamps a change with a coarse
/// clock, up to a tick (1 to 10 ms) before the change itself.
pub const STAMP_SLACK: Duration = Duration::from_millis(20);

/// The time from `last` to `wall_ns`, zero if not before.
fn since(last: i128, wall_ns: i128) -> Duration {
    let ns = wall_ns.saturating_sub(last);
    Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

/// Whether anybody has a file open for writing, as far as the kernel can tell us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Nobody has it open for writing: a complete file as far as its writers are concerned.
    None,
    /// Some process has it open for writing: not ready.
    Some,
    /// Cannot tell (not the owner and no `CAP_LEASE`, or a filesystem without leases):
    /// fall back to the events and timers.
    Unknown,
}

/// Settings of the core (from the configuration).
#[derive(Debug, Clone)]
pub struct Params {
    /// Uploads in flight at most, all destinations together.
    pub global_cap: usize,
    /// Names held in memory per watch.
    pub active_limit: usize,
    pub retry: RetryPolicy,
    /// Where the kernel cannot tell whether a file has writers, a file seen being written is
    /// considered abandoned after this much silence (or the rescan interval, if longer): the
    /// config's `writer_quiet`.
    pub writer_quiet_min: Duration,
    pub watches: Vec<WatchParams>,
    pub dests: Vec<DestParams>,
}

/// One watch, as the core needs it.
#[derive(Debug, Clone)]
pub struct WatchParams {
    pub settle: Duration,
    pub rescan_interval: Duration,
    /// Index into [`Params::dests`].
    pub dest: usize,
    /// Files in subdirectories are taken too: a directory that appears is a reason to walk
    /// the tree (which watches it, then lists it), not an entry to ignore.
    pub recursive: bool,
}

/// One destination.
#[derive(Debug, Clone)]
pub struct DestParams {
    /// `host:port` as configured.
    pub name: String,
    /// Its cap of uploads in flight.
    pub cap: usize,
    /// Whether its limit adapts (else it is pinned at the cap).
    pub adaptive: bool,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: OsString,
    pub id: Identity,
}

/// A directory listing, bounded: the oldest regular files, how many there were in all, and
/// every entry that is not a regular file.
#[derive(Debug, Clone)]
pub struct Listing {
    /// (device, inode) of the directory.
    pub dir_id: (u64, u64),
    /// Regular files, oldest (mtime, then name) first; at most the limit asked for.
    pub files: Vec<Listed>,
    /// Regular files in the directory (accepted by the filter), including those not in
    /// `files`.
    pub total_files: usize,
    /// Entries that are not regular files; at most [`specials::LISTED_PER_DIR`].
    ///
    /// [`specials::LISTED_PER_DIR`]: crate::watch::specials::LISTED_PER_DIR
    pub specials: Vec<Listed>,
    /// Entries that are not regular files beyond `specials`, counted only.
    pub more_specials: usize,
    /// For a tree: its directories and their watches.
    pub tree: TreeListing,
    /// The ranked tail: the next regular files beyond `files`, in the same order (oldest
    /// first; names of equal mtime in the order of their hashes), as [`name_hash`]es only,
    /// up to the tail asked for. Empty for a tree.
    pub tail: Vec<u64>,
    /// When the listing began, by the wall clock (nanoseconds since the Unix epoch; 0 if
    /// unknown): a file whose content last changed (its mtime) before that by the settle
    /// time had been unchanged that long when it was listed.
    pub wall_ns: i128,
}

/// The 8-byte hash of a name that a listing's ranked tail ([`Listing::tail`]) holds: stable
/// within the process (the listing and the names-only listing that picks by it run in the
/// same one), keyed at random per process (a producer cannot make names that collide on
/// purpose), never trusted beyond the order (a picked name is looked at as any other).
pub fn name_hash(name: &std::ffi::OsStr) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(name)
}

/// The answer to [`Action::ListNames`]: the directory's names whose hash was asked for, in
/// the order asked.
#[derive(Debug, Clone)]
pub struct Names {
    /// (device, inode) of the directory read.
    pub dir_id: (u64, u64),
    pub names: Vec<OsString>,
}

/// Picks the names of a directory whose [`name_hash`] is among those asked for, in the
/// order asked (names sharing a hash by chance are all picked, together): the I/O-free part
/// of a names-only listing. Memory follows the hashes asked for, not the directory.
#[derive(Debug)]
pub struct Pick {
    /// Hash -> its first position among those asked.
    want: std::collections::HashMap<u64, usize>,
    found: Vec<(usize, OsString)>,
}

impl Pick {
    pub fn new(hashes: &[u64]) -> Pick {
        let mut want = std::collections::HashMap::with_capacity(hashes.len());
        for (i, h) in hashes.iter().enumerate() {
            want.entry(*h).or_insert(i);
        }
        Pick {
            want,
            found: Vec::new(),
        }
    }

    /// One name of the directory.
    pub fn offer(&mut self, name: &std::ffi::OsStr) {
        if let Some(&at) = self.want.get(&name_hash(name)) {
            self.found.push((at, name.to_os_string()));
        }
    }

    /// The names picked, in the order asked.
    pub fn names(mut self) -> Vec<OsString> {
        self.found.sort_unstable();
        self.found.into_iter().map(|(_, n)| n).collect()
    }
}

/// What a walk of a tree found about its directories (all zero for a flat spool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeListing {
    /// Directories walked, the spool included.
    pub dirs: usize,
    /// Of them, those without an inotify watch because the kernel refused one more
    /// (`ENOSPC`): covered by the rescans only.
    pub unwatched: usize,
    /// `fs.inotify.max_user_watches`, if it could be read.
    pub max_user_watches: Option<u64>,
    /// Directories not entered: other filesystems (mount points) and deeper than
    /// `max_depth`.
    pub skipped: usize,
}

/// What was decided about a file whose move or delete is still to be done.
#[derive(Debug, Clone)]
pub enum After {
    Delivered,
    /// Given up; this goes into the `.reason` file (shared: a failing move is retried).
    GaveUp(std::sync::Arc<Reason>),
}

/// What an attempt does.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Upload, then move or delete.
    Upload,
    /// An earlier attempt finished (delivered or gave up) but could not move or delete the
    /// file; do only that, if the file is still exactly the one it was.
    Finish { id: Identity, after: After },
}

/// An attempt to start.
#[derive(Debug, Clone)]
pub struct Start {
    pub key: Key,
    /// 1-based number of this attempt.
    pub attempt: u32,
    /// The last attempt allowed (`retry.max_attempts`): a failure gives up.
    pub last: bool,
    pub mode: Mode,
    /// Seen moved in, or closed after it was last written: complete by the writers'
    /// convention even where the kernel cannot tell whether it has writers.
    pub trusted: bool,
    /// Where writers cannot be told, how long an untrusted file must be unchanged.
    pub quiet: Duration,
    /// Settled by a listing's timestamps alone (no look since): the claim finds its content
    /// unchanged for this long by its stamps ([`Identity::unchanged_for`]), or the file is
    /// not sent ([`Outcome::Changed`]: it settles afresh). Zero: settled by a look, or
    /// vouched for.
    pub settle: Duration,
    /// When the core first knew of the file (the delivery latency runs from here).
    pub found: Instant,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Delivered and moved or deleted (or the name was replaced meanwhile). `uploaded`:
    /// sent in this attempt (not only moved after an earlier one). `vacated`: the attempt
    /// itself renamed or deleted the very file out of the name, so the name was empty then;
    /// whatever comes into it later is announced by an event of its own. `paced`: the upload
    /// waited for a bandwidth limit (the adaptive limit need not add connections then).
    Delivered {
        uploaded: Option<Uploaded>,
        vacated: bool,
        paced: bool,
    },
    /// Given up on and moved to `failed_dir`.
    GaveUp,
    /// The name does not lead to the file any more: look at it again.
    Gone,
    /// Not a regular file.
    Special(Identity),
    /// Another instance holds its lock.
    Busy,
    /// Changed during the transfer: not delivered; send again once it settles.
    Changed,
    /// Someone has it open for writing.
    Writer,
    /// Writers cannot be told, nothing vouches for it, and it changed less than the quiet
    /// period ago: look again after `wait` (or on its close).
    Young { wait: Duration },
    /// The attempt failed for this file (after the greeting, or the file could not be
    /// read). `greeting`: the greeting time, if the server greeted.
    Failed {
        error: FileError,
        greeting: Option<Duration>,
    },
    /// The destination failed (resolve, refused, unreachable, connect timeout, no or wrong
    /// greeting): nothing is known about the file; not counted against it.
    DestinationFailed { error: DestError },
    /// Delivered or given up, but moving/deleting failed.
    DispositionFailed {
        id: Identity,
        after: After,
        error: DispositionError,
    },
}

/// Something worth telling the operator; the driver logs it (errors rendered there).
#[derive(Debug, Clone)]
pub enum Report {
    /// A name that is not a regular file; reported once per identity.
    Ignoring {
        key: Key,
        id: Identity,
    },
    /// Still open for writing (debug).
    WriterOpen {
        key: Key,
    },
    /// Was being written but nothing happened for `quiet`; taken as complete once settled.
    WriterQuiet {
        key: Key,
        quiet: Duration,
    },
    /// Writers cannot be told and it changed recently (debug).
    Young {
        key: Key,
        quiet: Duration,
        wait: Duration,
    },
    /// An attempt failed; retried in `retry_in`.
    AttemptFailed {
        key: Key,
        attempt: u32,
        max: u32,
        error: FileError,
        retry_in: Duration,
    },
    /// A destination went down (after a cohort of failures). `loud`: at most one down/up
    /// pair a minute is worth a line; `unlogged`: outages since the last loud one.
    DestinationDown {
        dest: usize,
        error: DestError,
        waiting: usize,
        probe_in: Duration,
        loud: bool,
        unlogged: u32,
    },
    /// A probe (or an attempt started before it went down) failed; `loud` at most once a
    /// minute or when the kind of error changed.
    StillDown {
        dest: usize,
        key: Key,
        error: DestError,
        probe_in: Duration,
        loud: bool,
    },
    /// A destination that was down greeted again; `loud` if its down was.
    DestinationUp {
        dest: usize,
        down_for: Duration,
        waiting: usize,
        loud: bool,
    },
    /// A destination's limit changed.
    Limit {
        dest: usize,
        limit: usize,
        baseline: Option<Duration>,
        smoothed: Option<Duration>,
        /// The window judged, if one was (reported whether or not the limit changed).
        verdict: Option<super::limiter::Verdict>,
    },
    /// Moving or deleting a delivered (or given up) file failed.
    DispositionFailed {
        key: Key,
        error: DispositionError,
        failures: u32,
        retry_in: Duration,
        delivered: bool,
        loud: bool,
    },
    /// The first listing of a watch.
    Backlog {
        watch: usize,
        files: usize,
    },
    /// A listing (debug).
    Listed {
        watch: usize,
        files: usize,
    },
    ListFailed {
        watch: usize,
        error: std::sync::Arc<std::io::Error>,
        again: Duration,
        first: bool,
    },
    ListRecovered {
        watch: usize,
    },
    /// The events cannot be trusted; every directory is listed again.
    Rescan {
        why: String,
    },
    /// A tree needs more inotify watches than the kernel allows this user: `unwatched` of
    /// its `dirs` directories are found by rescans only. Once per watch.
    WatchLimit {
        watch: usize,
        dirs: usize,
        unwatched: usize,
        max_user_watches: Option<u64>,
    },
    /// The active set of a watch is full: further names wait on disk.
    Full {
        watch: usize,
        limit: usize,
    },
}

/// What the driver is asked to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// `lstat` the name and answer with [`Core::looked`](super::Core::looked).
    Look(Key),
    /// Ask whether the name has writers; answer with [`Core::writers`](super::Core::writers).
    ProbeWriters(Key),
    /// Ask whether the attempt of the name got its greeting yet; answer with
    /// [`Core::greeted`].
    AskGreeted(Key),
    /// Stop the attempt of the name (still waiting for its greeting, overtaken by later
    /// ones): it reports back as a greeting timeout.
    Abandon(Key),
    /// List the directory of `watch`, keeping the `limit` oldest regular files and the
    /// hashes of the `tail` next ones ([`Listing::tail`]); answer with
    /// [`Core::listed`](super::Core::listed).
    List {
        watch: usize,
        limit: usize,
        tail: usize,
    },
    /// Read the names of the directory of `watch` (no `lstat`), keeping those whose
    /// [`name_hash`] is in `hashes` (a part of the last listing's ranked tail), in that
    /// order ([`Pick`]); answer with [`Core::named`](super::Core::named).
    ListNames {
        watch: usize,
        hashes: Vec<u64>,
    },
    /// The directory was replaced: watch the new one ([`Core::rewatch_failed`](super::Core::rewatch_failed) if that
    /// fails).
    Rewatch {
        watch: usize,
    },
    /// Start an attempt; answer with [`Core::finished`](super::Core::finished).
    Start(Start),
    Report(Report),
}

/// Counts for STATUS= and the SIGUSR1 summary (uploads in flight are counted by the driver,
/// as it spawns and joins them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: u64,
    pub destinations_down: u64,
}
