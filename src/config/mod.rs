//! The service's configuration: TOML in, validated [`Config`] out.
//!
//! The types below are the contract between the loader and the service. The loader refuses
//! unknown keys, wrong types and missing required keys, naming the file, the key and the line.
//!
//! - [`schema`]: the file as serde structs that `toml` fills in (types, unknown and missing
//!   keys, each value's own checks, at toml's positions), then the checks that relate
//!   settings; no filesystem access, so [`parse`] can be fed bytes by tests.
//! - [`fs_check`]: what [`load`] adds: directories exist, are directories and are writable.
//! - [`render`]: the effective settings as TOML, for `accio check-config`.
//! - [`errors`]: [`ConfigError`], and serde's and toml's errors put in its words.
//!
//! Every error reads `FILE:LINE: key `KEY`: what is wrong`, e.g.
//! ``/etc/accio/accio.toml:14: key `watch[0].done_dir`: directory "/x" does not exist``.
//! `[[watch]]` tables are numbered from 0 in keys; the line number removes any doubt.

mod errors;
mod fs_check;
mod render;
mod schema;
mod values;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use errors::schema_error;
pub use errors::ConfigError;
pub use render::render;
pub use schema::{defaults, MAX_CONCURRENCY, MAX_DURATION};

use crate::client::Destination;
use crate::protocol::{Confirm, Timeouts};
use crate::rate::Policy;

/// Where `accio watch` and `accio check-config` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/accio/accio.toml";

/// The default `control_socket` (systemd's `RuntimeDirectory=accio` creates its directory).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/accio/control.sock";

/// Validated settings of the whole service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file these settings came from, for messages.
    pub path: PathBuf,
    /// Uploads in flight, all watches together.
    pub concurrency: usize,
    /// Files held in memory per watch; the rest wait on disk (see `watch::core`).
    pub active_limit: usize,
    /// Protocol timeouts for every upload.
    pub timeouts: Timeouts,
    /// What to do after a failed upload.
    pub retry: RetryPolicy,
    /// How long SIGTERM waits for transfers in flight before exiting.
    pub shutdown_grace: Duration,
    /// Log filter (tracing `EnvFilter` syntax) when `RUST_LOG` is not set.
    pub log_level: String,
    /// One entry per `[[watch]]`, at least one.
    pub watches: Vec<WatchConfig>,
    /// The Unix socket `accio status` asks the running service on.
    pub control_socket: PathBuf,
    /// `[metrics] listen`: where to serve Prometheus metrics; `None`: no listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the kernel cannot tell whether a file has writers (no lease), how long a file
    /// seen being written must stay unchanged before it is taken as complete (at least the
    /// watch's `rescan_interval`).
    pub writer_quiet: Duration,
    /// How old a leftover `.accio-*` name of ours must be before it is taken for a crash's
    /// rather than a rename or copy in progress (of this or another instance).
    pub stale_after: Duration,
    /// Whether [`load`] refuses spool, done and failed directories (and their parents)
    /// that someone other than root or this user could replace or write into (as
    /// OpenSSH's `StrictModes`).
    pub strict_modes: bool,
    /// Bandwidth limits: `max_rate` / `rate_schedule`, top-level and per destination.
    pub rates: RateLimits,
}

/// The bandwidth limits of a configuration (see [`crate::rate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// All uploads of the service together (top-level `max_rate` / `rate_schedule`).
    pub all: Policy,
    /// Each destination's uploads together (its server's `max_rate` / `rate_schedule`),
    /// once per destination; destinations without a limit are listed as unlimited.
    pub destinations: Vec<(Destination, Policy)>,
}

/// Exponential backoff with jitter, then give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Attempts before the file goes to `failed_dir`; 0 = retry forever.
    pub max_attempts: u32,
    /// Longest delay between two probes of a destination that is down (from `initial`,
    /// doubling): apart from `max`, so that files that fail on their own may wait long while
    /// a server that comes back is found within a minute.
    pub probe_max: Duration,
}

/// What happens to a file after it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSuccess {
    /// Move into `done_dir`.
    Move,
    /// Delete it.
    Delete,
}

/// One spool directory and its policy.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The spool directory.
    pub dir: PathBuf,
    /// Where delivered files go; required when `on_success` is `Move`.
    pub done_dir: Option<PathBuf>,
    /// Where files go after `max_attempts` failures, with a `.reason` file beside them.
    pub failed_dir: PathBuf,
    /// Move to `done_dir` or delete after delivery.
    pub on_success: OnSuccess,
    /// This watch's destination: its own `server`, else the top-level `[server]`.
    pub server: Destination,
    /// The destination's cap of uploads in flight; `None`: the global `concurrency`.
    pub server_concurrency: Option<usize>,
    /// Whether the destination's limit adapts between 1 and its cap (else pinned at it).
    pub adaptive: bool,
    /// What confirms a transfer to `server`: its `confirm`, else the top-level `[server]`'s,
    /// else [`Confirm::Close`].
    pub confirm: Confirm,
    /// Names that are uploaded: a file is taken when it matches `include` and not `exclude`.
    pub include: Vec<String>,
    /// Names that are never uploaded. Default: `.*`, `*.part`, `*.tmp`, `*~`.
    pub exclude: Vec<String>,
    /// How long a file closed after writing must stay unchanged before it is sent.
    pub settle: Duration,
    /// Full rescan of the directory at this interval, besides kernel events.
    pub rescan_interval: Duration,
    /// Whether files in subdirectories are taken too (the tree is walked and watched).
    pub recursive: bool,
    /// With `recursive`, how many directory levels below the spool are entered (files in
    /// `a/b/x` are two levels down).
    pub max_depth: usize,
    /// Whether subdirectories left empty (for `settle`) are removed; always so with
    /// `on_success = "delete"` (see [`WatchConfig::prunes`]).
    pub prune_empty_dirs: bool,
}

impl WatchConfig {
    /// Whether empty subdirectories are removed: asked for, or the spool's files are
    /// deleted after delivery (nothing else would ever clear the tree). Only with
    /// `recursive`: a flat spool has no subdirectories of its own.
    pub fn prunes(&self) -> bool {
        self.recursive && (self.prune_empty_dirs || self.on_success == OnSuccess::Delete)
    }
}

/// Largest configuration file [`load`] reads.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Loads and validates a configuration file, including checks against the filesystem
/// (directories exist, are directories and are writable by this user). Directories are
/// never created: their owner and mode are the operator's decision (packaging or tmpfiles).
///
/// # Errors
/// [`ConfigError`] naming the file, the key and the line of the first problem.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = read_bounded(path)?;
    let text = text_of(&bytes, path)?;
    let cx = schema::Ctx { text, file: path };
    let parsed = parse_text(&cx)?;
    fs_check::check(&cx, &parsed)?;
    Ok(parsed.config)
}

/// Loads a configuration file like [`load`], without the checks against the filesystem:
/// `accio status` and `accio retry` must work even when, say, one spool directory went
/// missing.
///
/// # Errors
/// [`ConfigError`] naming the file, the key and the line of the first problem.
pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
    parse(&read_bounded(path)?, path)
}

/// The bytes of the file at `path`, at most [`MAX_CONFIG_BYTES`]: `--config /dev/zero` must
/// fail, not eat the memory.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let refuse = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse(format!("cannot read the configuration: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(refuse(format!(
            "cannot read the configuration: larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Parses and validates configuration text without looking at the filesystem: syntax,
/// types, ranges, defaults and how the settings relate. `path` is used in messages and
/// becomes [`Config::path`].
///
/// # Errors
/// [`ConfigError`] naming the file, the key and the line of the first problem.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
    let text = text_of(bytes, path)?;
    parse_text(&schema::Ctx { text, file: path }).map(|p| p.config)
}

fn text_of<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        ConfigError {
            file: path.to_path_buf(),
            line: Some(valid.iter().filter(|&&b| b == b'\n').count() + 1),
            key: None,
            message: "not valid UTF-8 (TOML files are UTF-8)".to_string(),
        }
    })
}

fn parse_text(cx: &schema::Ctx) -> Result<schema::Parsed, ConfigError> {
    // Syntax first: its errors have no key.
    let doc = toml_edit::de::Deserializer::parse(cx.text).map_err(|e| {
        ConfigError::new(
            cx.file,
            Some(e.span().map_or(1, |s| schema::line_of(cx.text, s.start))),
            None,
            format!("invalid TOML: {}", e.message()),
        )
    })?;
    let file: schema::File =
        serde_path_to_error::deserialize(doc).map_err(|e| schema_error(cx, &e))?;
    file.into_config(cx)
}

/// Compiles one name glob the way [`NameFilter`] does.
pub(crate) fn compile_glob(g: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(g)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// Which names in a spool directory are taken: matching an `include` glob and no `exclude`
/// glob. A glob without `/` matches the file name only; one with `/` matches the path
/// relative to the spool (`**/*.jpg`, `DCIM/*/*.JPG`). An `exclude` glob without `/` also
/// applies to every directory on the way, so that hidden and `*.part` directories are
/// skipped with everything in them. In a flat spool the path is the name: as before.
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: globset::GlobSet,
    include_path: globset::GlobSet,
    exclude: globset::GlobSet,
    exclude_path: globset::GlobSet,
}

/// The default `exclude` globs: hidden files and names writers use while writing.
pub const DEFAULT_EXCLUDE: &[&str] = &[".*", "*.part", "*.tmp", "*~"];

impl NameFilter {
    /// Compiles the globs.
    ///
    /// # Errors
    /// The first glob that does not compile.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, globset::Error> {
        fn set<'a>(
            globs: impl Iterator<Item = &'a String>,
        ) -> Result<globset::GlobSet, globset::Error> {
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(compile_glob(g)?);
            }
            b.build()
        }
        let (path, name) = (
            |g: &&String| g.contains('/'),
            |g: &&String| !g.contains('/'),
        );
        Ok(NameFilter {
            include: set(include.iter().filter(name))?,
            include_path: set(include.iter().filter(path))?,
            exclude: set(exclude.iter().filter(name))?,
            exclude_path: set(exclude.iter().filter(path))?,
        })
    }

    /// True if a file with this path relative to the spool (its name, in the spool itself)
    /// is to be uploaded.
    pub fn accepts(&self, rel: &std::ffi::OsStr) -> bool {
        let path = std::path::Path::new(rel);
        let Some(name) = path.file_name() else {
            return false;
        };
        (self.include.is_match(name) || self.include_path.is_match(path))
            && !self.exclude_path.is_match(path)
            && self.enters(path)
    }

    /// True if a directory of this path relative to the spool is entered: neither it nor
    /// any directory above it is excluded by name.
    pub fn enters(&self, rel: &std::path::Path) -> bool {
        rel.iter().all(|c| !self.exclude.is_match(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/accio/test.toml";

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text.as_bytes(), Path::new(FILE))
    }

    const MINIMAL: &str = r#"
[server]
host = "127.0.0.1"
port = 5000

[[watch]]
dir = "/var/spool/accio/outbox"
done_dir = "/var/spool/accio/sent"
failed_dir = "/var/spool/accio/failed"
"#;

    #[test]
    fn minimal_gets_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.path, Path::new(FILE));
        assert_eq!(c.concurrency, 256);
        assert_eq!(c.active_limit, 16_384);
        assert!(c.watches[0].adaptive);
        assert_eq!(c.watches[0].server_concurrency, None);
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.timeouts, crate::protocol::Timeouts::default());
        assert_eq!(
            c.retry,
            RetryPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                max_attempts: 10,
                probe_max: Duration::from_secs(60),
            }
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.writer_quiet, Duration::from_secs(30));
        assert_eq!(c.stale_after, Duration::from_secs(60));
        assert_eq!(c.watches.len(), 1);
        let w = &c.watches[0];
        assert_eq!(w.dir, Path::new("/var/spool/accio/outbox"));
        assert_eq!(
            w.done_dir.as_deref(),
            Some(Path::new("/var/spool/accio/sent"))
        );
        assert_eq!(w.failed_dir, Path::new("/var/spool/accio/failed"));
        assert_eq!(w.on_success, OnSuccess::Move);
        assert_eq!(
            w.server,
            Destination {
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert_eq!(w.include, ["*"]);
        assert_eq!(w.exclude, DEFAULT_EXCLUDE);
        assert_eq!(w.settle, Duration::from_millis(250));
        assert_eq!(w.rescan_interval, Duration::from_secs(30));
    }

    #[test]
    fn every_key_set() {
        let c = parse_str(
            r#"
concurrency = 16
shutdown_grace = "0s"
log_level = "accio=debug,warn"
writer_quiet = "2s"
stale_after = "5ms"
[server]
host = "[::1]"
port = "http-alt"
[timeouts]
connect = "1s"
handshake = "2s"
stall = "3s"
close = "4s"
[retry]
initial = "100ms"
max = "2s"
max_attempts = 0
[[watch]]
dir = "/s/a"
failed_dir = "/s/a-failed"
on_success = "delete"
server = { host = "example.org", port = 7000 }
include = ["*.csv", "*.json"]
exclude = []
settle = "0s"
rescan_interval = "1h 30m"
[[watch]]
dir = "/s/b"
done_dir = "/s/b-done"
failed_dir = "/s/b-failed"
"#,
        )
        .unwrap();
        assert_eq!(c.concurrency, 16);
        assert_eq!(c.shutdown_grace, Duration::ZERO);
        assert_eq!(c.log_level, "accio=debug,warn");
        assert_eq!(c.writer_quiet, Duration::from_secs(2));
        assert_eq!(c.stale_after, Duration::from_millis(5));
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.close, Duration::from_secs(4));
        assert_eq!(c.retry.initial, Duration::from_millis(100));
        assert_eq!(c.retry.max_attempts, 0);
        let [a, b] = c.watches.as_slice() else {
            panic!("two watches")
        };
        assert_eq!(a.on_success, OnSuccess::Delete);
        assert_eq!(a.done_dir, None);
        assert_eq!(
            a.server,
            Destination {
                host: "example.org".into(),
                port: 7000
            }
        );
        assert_eq!(a.include, ["*.csv", "*.json"]);
        assert!(a.exclude.is_empty());
        assert_eq!(a.settle, Duration::ZERO);
        assert_eq!(a.rescan_interval, Duration::from_secs(5400));
        // The top-level server, with the URL-style brackets removed; the service name resolved.
        assert_eq!(
            b.server,
            Destination {
                host: "::1".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn dotted_keys_are_the_same_keys() {
        let c = parse_str(
            "retry.max = \"1m\"\ntimeouts.stall = \"3s\"\nserver.host = \"h\"\nserver.port = 2\n\
             [[watch]]\ndir = \"/s\"\ndone_dir = \"/d\"\nfailed_dir = \"/f\"\nserver.host = \"w\"\nserver.port = 3\n",
        )
        .unwrap();
        assert_eq!(c.retry.max, Duration::from_secs(60));
        assert_eq!(c.timeouts.stall, Duration::from_secs(3));
        assert_eq!(
            c.watches[0].server,
            Destination {
                host: "w".into(),
                port: 3
            }
        );
        let e = parse_str(
            "[server]\nhost = \"h\"\nport = 1\n[[watch]]\ndir = \"/s\"\nretry.max = \"1s\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(6), Some("watch[0].retry")),
            "{e}"
        );
    }

    #[test]
    fn no_server_anywhere() {
        let doc =
            "concurrency = 2\n\n[[watch]]\ndir = \"/s\"\ndone_dir = \"/d\"\nfailed_dir = \"/f\"\n";
        let e = parse_str(doc).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("watch[0].server"))
        );
        assert!(e.message.contains("no top-level [server]"), "{e}");
        // Fine when every watch has its own.
        let doc = format!("{doc}server = {{ host = \"h\", port = 9 }}\n");
        assert_eq!(parse_str(&doc).unwrap().watches[0].server.port, 9);
    }

    /// `confirm`: default close; a watch's own server table inherits [server]'s; a watch
    /// without one takes [server]'s; an unknown value names the key and the choices.
    #[test]
    fn confirm_per_destination_and_inherited() {
        use crate::protocol::Confirm;
        let watch = |n: usize, server: &str| {
            format!("[[watch]]\ndir = \"/s{n}\"\ndone_dir = \"/d{n}\"\nfailed_dir = \"/f{n}\"\n{server}\n")
        };
        let confirms = |doc: &str| -> Vec<Confirm> {
            parse_str(doc)
                .unwrap()
                .watches
                .iter()
                .map(|w| w.confirm)
                .collect()
        };
        assert_eq!(confirms(MINIMAL), [Confirm::Close]);
        let top = "[server]\nhost = \"h\"\nport = 1\nconfirm = \"acked\"\n";
        let doc = format!(
            "{top}{}{}{}",
            watch(1, ""),
            watch(2, "server = { host = \"o\", port = 2 }"),
            watch(
                3,
                "server = { host = \"o\", port = 2, confirm = \"close\" }"
            ),
        );
        assert_eq!(
            confirms(&doc),
            [Confirm::Acked, Confirm::Acked, Confirm::Close]
        );
        let doc = format!(
            "[server]\nhost = \"h\"\nport = 1\n{}",
            watch(
                1,
                "server = { host = \"o\", port = 2, confirm = \"acked\" }"
            )
        );
        assert_eq!(confirms(&doc), [Confirm::Acked]);
        // check-config shows it, and its output means the same.
        let c = parse_str(&doc).unwrap();
        let text = render(&c);
        assert!(text.contains("confirm = \"acked\""), "{text}");
        assert_eq!(confirms(&text), [Confirm::Acked]);
        let e = parse_str(&format!("{top}{}", watch(1, "")).replace("\"acked\"", "\"ack\""))
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("server.confirm")),
            "{e}"
        );
        assert!(
            e.message.contains("\"close\"") && e.message.contains("\"acked\""),
            "{e}"
        );
    }

    /// The rest of the refusals are pinned, whole, by the golden test in `tests/config.rs`.
    #[test]
    fn encoding_errors() {
        let e = parse(b"# x\n# \xff\n", Path::new(FILE)).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("UTF-8"));
        let e = parse_str("").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("watch"));
    }

    #[test]
    fn render_round_trips() {
        let c = parse_str(MINIMAL).unwrap();
        let text = render(&c);
        let again = parse(text.as_bytes(), Path::new(FILE)).unwrap();
        assert_eq!(render(&again), text);
        assert!(
            text.contains("exclude = [\".*\", \"*.part\", \"*.tmp\", \"*~\"]"),
            "{text}"
        );
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../config/accio.toml");
        let c = parse(text.as_bytes(), Path::new("config/accio.toml")).unwrap();
        assert!(!c.watches.is_empty());
        let again = parse(render(&c).as_bytes(), Path::new("config/accio.toml")).unwrap();
        assert_eq!(render(&again), render(&c));
    }

    #[test]
    fn default_filter() {
        let f = NameFilter::new(
            &["*".to_string()],
            &DEFAULT_EXCLUDE
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for ok in ["a", "report.csv", "x.partial", "a.tmp.gz"] {
            assert!(f.accepts(std::ffi::OsStr::new(ok)), "{ok}");
        }
        for no in [".hidden", "x.part", "y.tmp", "z~", ".x.part"] {
            assert!(!f.accepts(std::ffi::OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn tree_filter() {
        let globs = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ex = globs(DEFAULT_EXCLUDE);
        let all = NameFilter::new(&globs(&["*"]), &ex).unwrap();
        let jpg = NameFilter::new(&globs(&["**/*.jpg"]), &ex).unwrap();
        let name_jpg = NameFilter::new(&globs(&["*.jpg"]), &ex).unwrap();
        let os = std::ffi::OsStr::new;
        for ok in ["a/b/x.jpg", "DCIM/100CANON/IMG.jpg", "x.jpg"] {
            assert!(all.accepts(os(ok)), "{ok}");
            assert!(jpg.accepts(os(ok)), "{ok}");
            assert!(name_jpg.accepts(os(ok)), "{ok}");
        }
        // The default excludes apply to every directory on the way.
        for no in [
            ".git/x.jpg",
            "a/.hidden/x.jpg",
            "up.part/x.jpg",
            "a/b/.x.jpg.part",
        ] {
            assert!(!all.accepts(os(no)), "{no}");
            assert!(!jpg.accepts(os(no)), "{no}");
        }
        assert!(!jpg.accepts(os("a/x.png")));
        assert!(all.enters(Path::new("a/b")));
        assert!(!all.enters(Path::new("a/.b")));
        assert!(!all.enters(Path::new("tmp.part")));
        // A path glob in exclude takes whole subtrees.
        let no_tmp = NameFilter::new(&globs(&["*"]), &globs(&["scratch/**"])).unwrap();
        assert!(!no_tmp.accepts(os("scratch/a/x")));
        assert!(no_tmp.accepts(os("keep/x")));
    }

    #[test]
    fn tree_keys() {
        let c = parse_str(MINIMAL).unwrap();
        let w = &c.watches[0];
        assert!(!w.recursive && !w.prune_empty_dirs && !w.prunes());
        assert_eq!(w.max_depth, 32);
        let text = format!(
            "{MINIMAL}recursive = true\nmax_depth = 3\ninclude = [\"**/*.jpg\"]\nexclude = [\".*\", \"scratch/**\"]\n"
        );
        let c = parse_str(&text).unwrap();
        let w = &c.watches[0];
        assert!(w.recursive && !w.prunes());
        assert_eq!(w.max_depth, 3);
        // Rendered (check-config) and read back the same.
        let again = parse_str(&render(&c)).unwrap();
        assert_eq!(render(&again), render(&c));
        assert!(render(&c).contains("recursive = true\nmax_depth = 3\n"));
        // A flat spool renders as before: no tree keys.
        assert!(!render(&parse_str(MINIMAL).unwrap()).contains("recursive"));
        let e = parse_str(&format!("{MINIMAL}recursive = true\nmax_depth = 2000\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("watch[0].max_depth"), "{e}");
        let e = parse_str(&format!("{MINIMAL}include = [\"a/*\"]\n")).unwrap_err();
        assert!(e.message.contains("set recursive = true"), "{e}");
        let e = parse_str(&format!(
            "{MINIMAL}recursive = true\ninclude = [\"/abs/*\"]\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("starts with `/`"), "{e}");
    }
}
