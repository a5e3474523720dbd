//! The service's configuration: TOML in, validated [`Config`] out.
//!
//! The types below are the contract between the loader and the service. The loader refuses
//! unknown keys, wrong types and missing required keys, naming the file, the key and the line.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::Destination;
use crate::protocol::Timeouts;

/// Where `accio watch` and `accio check-config` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/accio/accio.toml";

/// Validated settings of the whole service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file these settings came from, for messages.
    pub path: PathBuf,
    /// Uploads in flight, all watches together.
    pub concurrency: usize,
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
    pub on_success: OnSuccess,
    /// This watch's destination: its own `server`, else the top-level `[server]`.
    pub server: Destination,
    /// Names that are uploaded: a file is taken when it matches `include` and not `exclude`.
    pub include: Vec<String>,
    /// Names that are never uploaded. Default: `.*`, `*.part`, `*.tmp`, `*~`.
    pub exclude: Vec<String>,
    /// How long a file closed after writing must stay unchanged before it is sent.
    pub settle: Duration,
    /// Full rescan of the directory at this interval, besides kernel events.
    pub rescan_interval: Duration,
}

/// Loads and validates a configuration file, including checks against the filesystem
/// (directories exist and are writable).
///
/// # Errors
/// [`ConfigError`] naming the file, the key and the line of the first problem.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    Err(ConfigError(format!(
        "{}: loading is not implemented yet",
        path.display()
    )))
}

/// Why a configuration was refused; the message names file, key and line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which names in a spool directory are taken: matching an `include` glob and no `exclude`
/// glob. Globs match the file name only, not the path.
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: globset::GlobSet,
    exclude: globset::GlobSet,
}

/// The default `exclude` globs: hidden files and names writers use while writing.
pub const DEFAULT_EXCLUDE: &[&str] = &[".*", "*.part", "*.tmp", "*~"];

impl NameFilter {
    /// Compiles the globs.
    ///
    /// # Errors
    /// The first glob that does not compile.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, globset::Error> {
        fn set(globs: &[String]) -> Result<globset::GlobSet, globset::Error> {
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(
                    globset::GlobBuilder::new(g)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()?,
                );
            }
            b.build()
        }
        Ok(NameFilter {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    /// True if a file with this name (not path) is to be uploaded.
    pub fn accepts(&self, name: &std::ffi::OsStr) -> bool {
        let path = std::path::Path::new(name);
        self.include.is_match(path) && !self.exclude.is_match(path)
    }
}

/// `accio check-config`: load, validate, print the effective settings. Returns the exit code.
pub fn check_config_command(args: &crate::cli::CheckConfigArgs) -> u8 {
    eprintln!(
        "ERROR: {:?}: check-config is not implemented yet",
        args.config
    );
    crate::client::exit::OTHER
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
