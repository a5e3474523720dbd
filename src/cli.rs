//! Command-line definitions only (clap). Validation of values that need more than a type
//! happens in the front-ends, which own their error messages.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "accio",
    version,
    about = "Upload files with the Accio protocol",
    long_about = "Upload files with the Accio protocol: a one-shot sender, a test receiver, \
                  and a service that uploads every file dropped into spool directories.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one file to an Accio server.
    #[command(after_help = crate::exit::send_help())]
    Send(SendArgs),
    /// Receive files: connection N is saved as DIR/N.file.
    ///
    /// Receive files: connection N is saved as DIR/N.file. Numbering continues after the
    /// highest N.file already in DIR, and an existing file is never replaced (if a name is
    /// taken meanwhile, the next number is used).
    #[command(after_help = crate::exit::serve_help())]
    Serve(ServeArgs),
    /// Run the spool-directory upload service.
    Watch(WatchArgs),
    /// Validate a configuration file and print the effective settings.
    #[command(after_help = crate::exit::check_config_help())]
    CheckConfig(CheckConfigArgs),
    /// Show what the running service is doing, and why files wait.
    #[command(after_help = crate::exit::status_help())]
    Status(StatusArgs),
    /// Probe the destinations that are down and retry the files backing off, now.
    ///
    /// Probe the destinations that are down and retry the files backing off, now (like
    /// `postqueue -f`): for a destination that is back before its next probe was due. Failed
    /// attempts still count against retry.max_attempts.
    #[command(after_help = crate::exit::flush_help())]
    Flush(FlushArgs),
    /// Put files the service gave up on (in failed_dir) back into their spool.
    #[command(after_help = crate::exit::retry_help())]
    Retry(RetryArgs),
    /// Print a shell completion script to stdout.
    #[command(after_help = crate::exit::plain_help())]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) to stdout: accio(1), accio-COMMAND(1), or accio.toml(5).
    #[command(after_help = crate::exit::plain_help())]
    Man {
        /// The page: a subcommand (send, serve, watch, status, retry, ...), or accio.toml.
        page: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server host name, IPv4 or IPv6 address.
    pub host: String,
    /// Server port: 1-65535 or a service name such as `http-alt`.
    // Negative numbers are values, so `-1` is reported as an invalid port, not an unknown flag.
    #[arg(allow_negative_numbers = true)]
    pub port: String,
    /// The file to send.
    pub file: PathBuf,
    /// What confirms the transfer: the server's close (the protocol), or, for servers that
    /// keep connections open, the server's TCP acknowledging every byte and the end of the
    /// file ("acked" trusts the server's kernel, not its disk).
    #[arg(long, value_enum, default_value_t = ConfirmArg::Close)]
    pub confirm: ConfirmArg,
    /// Send at most RATE bytes per second, as curl's option: "500K", "2M", "2MiB/s" (K =
    /// 1024; a bare number is bytes per second), or "off".
    #[arg(long, value_name = "RATE", value_parser = limit_rate)]
    pub limit_rate: Option<LimitRate>,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
}

/// `--limit-rate`: a [`crate::rate::Rate`] (a newtype: clap reads `Option<Option<_>>` as
/// an option with an optional value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRate(pub crate::rate::Rate);

fn limit_rate(s: &str) -> Result<LimitRate, String> {
    crate::rate::parse_rate(s).map(LimitRate)
}

/// `--confirm`: the command line's name for [`crate::protocol::Confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfirmArg {
    /// Success is the server's close after our half-close.
    Close,
    /// Success is every byte and our FIN acknowledged by the server's TCP (or its close).
    Acked,
}

impl From<ConfirmArg> for crate::protocol::Confirm {
    fn from(c: ConfirmArg) -> Self {
        match c {
            ConfirmArg::Close => crate::protocol::Confirm::Close,
            ConfirmArg::Acked => crate::protocol::Confirm::Acked,
        }
    }
}

/// A duration from the command line or the environment ("250ms", "10s"), at most
/// [`crate::config::MAX_DURATION`] as in the configuration: a deadline is `now + it`, and a
/// larger one overflows the clock (`500000000000y` made `accio send` panic).
fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > crate::config::MAX_DURATION {
        return Err(format!(
            "{s:?} is too long; at most {} days",
            crate::config::MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// Protocol timeouts. Hidden: the spec fixes them at 10 s; tests shorten them.
#[derive(Debug, Args, Clone)]
pub struct TimeoutArgs {
    #[arg(long, hide = true, env = "ACCIO_CONNECT_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    #[arg(long, hide = true, env = "ACCIO_HANDSHAKE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    #[arg(long, hide = true, env = "ACCIO_STALL_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub stall_timeout: Duration,
    #[arg(long, hide = true, env = "ACCIO_CLOSE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub close_timeout: Duration,
}

impl TimeoutArgs {
    pub fn to_timeouts(&self) -> crate::protocol::Timeouts {
        crate::protocol::Timeouts {
            connect: self.connect_timeout,
            handshake: self.handshake_timeout,
            stall: self.stall_timeout,
            close: self.close_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on: 1-65535 or a service name.
    #[arg(allow_negative_numbers = true)]
    pub port: String,
    /// Directory where received files are saved.
    pub dir: PathBuf,
    /// Address to listen on (default: every interface, IPv4 and IPv6).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::IpAddr>,
    /// Confirm files before they are on disk (no fsync): faster, but a power loss can lose
    /// files their senders already deleted.
    #[arg(long)]
    pub no_sync: bool,
    /// Connections held at once; more wait in the listen queue (default: what the
    /// descriptor limit allows, two per connection).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections held at once from one address (IPv6: one /64); more are reset at once
    /// (default: an eighth of --max-connections, at most 256).
    #[arg(long, value_name = "N")]
    pub max_per_address: Option<usize>,
    /// Larger transfers are cut: the file holds `ERROR` (bytes, or 512K, 10M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = crate::serve::parse_size)]
    pub max_size: Option<u64>,
    /// Time limit for a whole connection: beyond it, the file holds `ERROR` (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub deadline: Option<Duration>,
    /// Permission bits of received files, in octal.
    #[arg(long, value_name = "OCTAL", value_parser = crate::serve::parse_mode, default_value = "600")]
    pub mode: u32,
    /// Silence after which a connection is aborted and its file holds `ERROR`.
    #[arg(long, hide = true, env = "ACCIO_SERVE_IDLE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub idle_timeout: Duration,
}

/// `--log-format`: the command line's name for [`crate::logging::LogFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable; colors on a terminal; no timestamps under journald.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for crate::logging::LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => crate::logging::LogFormat::Text,
            LogFormatArg::Json => crate::logging::LogFormat::Json,
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "ACCIO_CONFIG")]
    pub config: PathBuf,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text, env = "ACCIO_LOG_FORMAT")]
    pub log_format: LogFormatArg,
}

/// Where `status` and `flush` find the service.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// Configuration file (it names the control socket). If it cannot be read, the default
    /// socket is asked, with a warning.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "ACCIO_CONFIG")]
    pub config: PathBuf,
    /// The service's control socket; the configuration is not read.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub socket: Option<PathBuf>,
}

impl SocketArgs {
    pub fn socket_from(&self) -> crate::ops::SocketFrom {
        match &self.socket {
            Some(p) => crate::ops::SocketFrom::Given(p.clone()),
            None => crate::ops::SocketFrom::Config(self.config.clone()),
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Print the state as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// List every waiting file (up to 100,000), not only the 20 oldest.
    #[arg(long)]
    pub all: bool,
    /// Only this destination (`host:port` as configured) and its files.
    #[arg(long, value_name = "NAME")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub socket: SocketArgs,
    /// Only this destination (`host:port` as configured); none: all of them.
    #[arg(value_name = "DESTINATION")]
    pub destination: Option<String>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Configuration file (it names the spool and failed directories).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "ACCIO_CONFIG")]
    pub config: PathBuf,
    /// Only this watch: its spool directory (`dir` in the configuration).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// Files to put back, by name in failed_dir (or path); none: all of them.
    #[arg(value_name = "NAME")]
    pub names: Vec<std::ffi::OsString>,
    /// List the given-up files (each with its age and why it was given up); move nothing.
    #[arg(long, conflicts_with = "dry_run")]
    pub list: bool,
    /// Print the moves that would be made; move nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "ACCIO_CONFIG")]
    pub config: PathBuf,
    /// Print nothing when the configuration is valid (for `ExecReload=`).
    #[arg(long, short)]
    pub quiet: bool,
}
