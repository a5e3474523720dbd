//! What operators use besides the logs: the control socket behind `accio status`, the
//! metrics endpoint, and `accio retry`.
//!
//! - [`control`]: the Unix socket the service answers `accio status` on, and its client.
//! - [`http`]: `[metrics] listen`: `/metrics` and `/health`.
//! - [`status_text`]: a [`View`] as text for people.
//! - [`retry`]: `accio retry`, moving given-up files back into their spool.
//!
//! It also holds the front-ends of the operators' commands: [`status_command`],
//! [`retry::retry_command`] and [`check_config_command`].
//!
//! The service runs on without the control socket or the metrics listener if they cannot be
//! set up (logged): uploading files matters more than reporting on it.

pub mod control;
pub mod http;
pub mod retry;
pub mod status_text;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::esc::esc;
use crate::exit::{Failed, Kind};
use crate::metrics::Metrics;
use crate::status::{ViewHandle, ViewQuery};

/// The control socket and metrics listener of a running service.
pub struct Ops {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What they were started with: a reload cannot move them (logged).
    control_socket: std::path::PathBuf,
    metrics_listen: Option<std::net::SocketAddr>,
    /// The watches of the configuration in force, for `accio_failed_files` (the files in
    /// their failed_dir, counted at scrape time).
    watches: http::Watches,
}

impl Ops {
    /// Starts the control socket and, if configured, the metrics listener. Problems are
    /// logged; the service runs on without what could not be started.
    pub async fn start(config: &Config, views: ViewHandle, metrics: Arc<Metrics>) -> Ops {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let started = Instant::now();
        let path = config.control_socket.clone();
        let watches = http::Watches::default();
        watches.set(&config.watches);
        match control::bind(&path) {
            Ok(l) => {
                tracing::debug!("control socket {}", esc(&path));
                tasks.push(tokio::spawn(control::serve(
                    l,
                    path.clone(),
                    views.clone(),
                    started,
                    stop.clone(),
                )));
            }
            Err(e) => {
                tracing::warn!("no control socket, `accio status` will not reach this service: {e}")
            }
        }
        if let Some(addr) = config.metrics_listen {
            match http::bind(addr).await {
                Ok(l) => {
                    tracing::info!("serving metrics on http://{addr}/metrics");
                    let ep = http::Endpoint {
                        metrics,
                        views,
                        watches: watches.clone(),
                    };
                    tasks.push(tokio::spawn(http::serve(l, ep, stop.clone())));
                }
                Err(e) => tracing::error!(
                    "cannot listen on {addr} for metrics ([metrics] listen): {e}; running without metrics"
                ),
            }
        }
        Ops {
            stop,
            tasks,
            control_socket: path,
            metrics_listen: config.metrics_listen,
            watches,
        }
    }

    /// Called once a reload took `config`: the listeners stay as they were started (said
    /// if the new configuration moves them); the failed files counted are the new watches'.
    pub fn reloaded(&self, config: &Config) {
        self.watches.set(&config.watches);
        if config.control_socket != self.control_socket {
            tracing::warn!(
                "control_socket changed to {}: takes effect at the next restart (still {})",
                esc(&config.control_socket),
                esc(&self.control_socket)
            );
        }
        if config.metrics_listen != self.metrics_listen {
            tracing::warn!("[metrics] listen changed: takes effect at the next restart");
        }
    }

    /// Stops the listeners and removes the control socket.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Where `accio status` and `accio flush` find the service.
#[derive(Debug, Clone)]
pub enum SocketFrom {
    /// `--socket PATH`: the configuration is not read.
    Given(std::path::PathBuf),
    /// The configuration's `control_socket`.
    Config(std::path::PathBuf),
}

/// The control socket to ask: `--socket`, else the configuration's. A configuration that
/// cannot be read or parsed (being edited, say, while the service runs on the one it
/// loaded) is no reason not to ask: the default socket is tried, with a warning.
fn socket_of(from: &SocketFrom) -> std::path::PathBuf {
    match from {
        SocketFrom::Given(p) => p.clone(),
        SocketFrom::Config(config) => control_socket_of(config).unwrap_or_else(|e| {
            warning_line(format!(
                "{e}; asking the default control socket {} (use --socket PATH for another)",
                crate::config::DEFAULT_CONTROL_SOCKET
            ));
            std::path::PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET)
        }),
    }
}

/// One `WARNING: ...` line on stderr (a broken stderr is ignored, as for `ERROR:` lines).
fn warning_line(message: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "WARNING: {message}");
}

fn asked(e: control::AskError) -> Failed {
    match e {
        e @ control::AskError::NotRunning { .. } => Failed::new(Kind::NotRunning, e),
        e => Failed::new(Kind::Other, e),
    }
}

/// `accio status`: asks the service (on the socket `from` names) and prints its answer
/// (as one JSON document with `json`): the waiting files `q` asks for.
///
/// # Errors
/// [`Kind::NotRunning`] (nothing answers on the control socket), [`Kind::Usage`] (no such
/// destination), or [`Kind::Other`].
pub fn status_command(from: &SocketFrom, json: bool, q: ViewQuery) -> Result<(), Failed> {
    let socket = socket_of(from);
    let (view, doc) = control::ask_view(&socket, &q).map_err(asked)?;
    if let Some(name) = &q.destination {
        if !view.destinations.iter().any(|d| &d.name == name) {
            let known: Vec<&str> = view.destinations.iter().map(|d| d.name.as_str()).collect();
            return Err(Failed::new(
                Kind::Usage,
                format!(
                    "--destination {}: no such destination (the service's: {})",
                    esc(std::path::Path::new(name)),
                    known.join(", ")
                ),
            ));
        }
    }
    let out = if json {
        doc + "\n"
    } else {
        status_text::render_for(&view, q.destination.as_deref())
    };
    print_out(&out)
}

/// `accio flush [DESTINATION]`: asks the service to probe the destinations that are down
/// now and retry the files backing off now (of `destination` only, if given).
///
/// # Errors
/// [`Kind::NotRunning`], [`Kind::Usage`] (no such destination), or [`Kind::Other`].
pub fn flush_command(from: &SocketFrom, destination: Option<&str>) -> Result<(), Failed> {
    let socket = socket_of(from);
    let f = match control::ask_flush(&socket, destination) {
        Ok(f) => f,
        Err(control::AskError::Answer { message, .. }) if message.starts_with("no destination") => {
            return Err(Failed::new(Kind::Usage, message))
        }
        Err(e) => return Err(asked(e)),
    };
    let which = destination.map_or_else(|| "all destinations".to_string(), str::to_string);
    let s = |n: u64| if n == 1 { "" } else { "s" };
    print_out(&format!(
        "flushed {which}: {} destination{} down probed now, {} file{} backing off retried now\n",
        f.probed,
        s(f.probed),
        f.files,
        s(f.files)
    ))
}

/// `accio check-config`: loads and validates the configuration at `path`, with the
/// filesystem checks, and prints the effective settings (nothing with `quiet`).
///
/// # Errors
/// [`Kind::Config`] (refused), or [`Kind::Other`] (stdout cannot be written).
pub fn check_config_command(path: &std::path::Path, quiet: bool) -> Result<(), Failed> {
    let config = crate::config::load(path).map_err(|e| Failed::new(Kind::Config, e))?;
    if quiet {
        // For `ExecReload=`: the exit code (and an ERROR: line) is all that is needed.
        return Ok(());
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(crate::config::render(&config).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            Failed::new(
                Kind::Other,
                format!("cannot write the settings to stdout: {e}"),
            )
        })
}

/// The control socket a configuration names.
fn control_socket_of(path: &std::path::Path) -> Result<std::path::PathBuf, ConfigError> {
    crate::config::load_unchecked(path).map(|c| c.control_socket)
}

/// Writes `out` to stdout; a closed pipe (`accio status | head`) is not an error.
pub(crate) fn print_out(out: &str) -> Result<(), Failed> {
    use std::io::Write as _;
    let mut so = std::io::stdout().lock();
    match so.write_all(out.as_bytes()).and_then(|()| so.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failed::new(
            Kind::Other,
            format!("cannot write to stdout: {e}"),
        )),
    }
}
