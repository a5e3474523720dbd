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
use crate::status::ViewHandle;

/// The control socket and metrics listener of a running service.
pub struct Ops {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What they were started with: a reload cannot move them (logged).
    control_socket: std::path::PathBuf,
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Ops {
    /// Starts the control socket and, if configured, the metrics listener. Problems are
    /// logged; the service runs on without what could not be started.
    pub async fn start(config: &Config, views: ViewHandle, metrics: Arc<Metrics>) -> Ops {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let started = Instant::now();
        let path = config.control_socket.clone();
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
                    let ep = http::Endpoint { metrics, views };
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
        }
    }

    /// Called on a reload: the listeners stay as they were started; say so if the new
    /// configuration moves them.
    pub fn reloaded(&self, config: &Config) {
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

/// `accio status`: asks the service named by the configuration at `config` and prints its
/// answer (as one JSON document with `json`).
///
/// # Errors
/// [`Kind::Config`], [`Kind::NotRunning`] (nothing answers on the control socket), or
/// [`Kind::Other`].
pub fn status_command(config: &std::path::Path, json: bool) -> Result<(), Failed> {
    let socket = control_socket_of(config).map_err(|e| Failed::new(Kind::Config, e))?;
    match control::ask(&socket) {
        Ok((view, doc)) => {
            let out = if json {
                doc + "\n"
            } else {
                status_text::render(&view)
            };
            print_out(&out)
        }
        Err(e @ control::AskError::NotRunning { .. }) => Err(Failed::new(Kind::NotRunning, e)),
        Err(e) => Err(Failed::new(Kind::Other, e)),
    }
}

/// `accio check-config`: loads and validates the configuration at `path`, with the
/// filesystem checks, and prints the effective settings.
///
/// # Errors
/// [`Kind::Config`] (refused), or [`Kind::Other`] (stdout cannot be written).
pub fn check_config_command(path: &std::path::Path) -> Result<(), Failed> {
    let config = crate::config::load(path).map_err(|e| Failed::new(Kind::Config, e))?;
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
