//! What operators use besides the logs: the control socket behind `accio status`, the
//! metrics endpoint, and `accio retry`.
//!
//! - [`control`]: the Unix socket the service answers `accio status` on, and its client.
//! - [`http`]: `[metrics] listen`: `/metrics` and `/health`.
//! - [`status_text`]: a [`View`] as text for people.
//! - [`retry`]: `accio retry`, moving given-up files back into their spool.
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
use crate::metrics::Metrics;
use crate::status::ViewHandle;
use crate::watch::esc;

/// Exit code of `accio status` when the service is not running (nothing answers on the
/// control socket), as `systemctl status` does for an inactive unit.
pub const EXIT_NOT_RUNNING: u8 = 3;

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

/// `accio status`: asks the service named by the configuration at `args.config` and
/// prints its answer. Returns the exit code.
pub fn status_command(args: &crate::cli::StatusArgs) -> u8 {
    let socket = match control_socket_of(&args.config) {
        Ok(s) => s,
        Err(e) => {
            error_line(&e.to_string());
            return crate::config::EXIT_INVALID;
        }
    };
    match control::ask(&socket) {
        Ok((view, json)) => {
            let out = if args.json {
                json + "\n"
            } else {
                status_text::render(&view)
            };
            print_out(&out)
        }
        Err(e @ control::AskError::NotRunning { .. }) => {
            error_line(&e.to_string());
            EXIT_NOT_RUNNING
        }
        Err(e) => {
            error_line(&e.to_string());
            crate::client::exit::OTHER
        }
    }
}

/// The control socket a configuration names.
fn control_socket_of(path: &std::path::Path) -> Result<std::path::PathBuf, ConfigError> {
    crate::config::load_unchecked(path).map(|c| c.control_socket)
}

pub(crate) fn error_line(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "ERROR: {message}");
}

/// Writes `out` to stdout; a closed pipe (`accio status | head`) is not an error.
pub(crate) fn print_out(out: &str) -> u8 {
    use std::io::Write as _;
    let mut so = std::io::stdout().lock();
    match so.write_all(out.as_bytes()).and_then(|()| so.flush()) {
        Ok(()) => crate::client::exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::client::exit::OK,
        Err(e) => {
            error_line(&format!("cannot write to stdout: {e}"));
            crate::client::exit::OTHER
        }
    }
}
