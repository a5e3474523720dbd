//! accio: upload files with the Accio protocol.
//!
//! Data flows one way, and the modules follow it:
//!
//! - [`protocol`]: the client side of the protocol over any async stream: wait for
//!   `accio\r\n`, stream the content (zero-copy for files), half-close and wait for the
//!   server's close. No files, no policy.
//! - [`client`]: resolving and connecting within the connect timeout, and one whole upload of
//!   an open file. Shared by the two senders below.
//! - [`send`]: `accio send HOST PORT FILE`, one transfer with the course client's semantics.
//! - [`serve`]: `accio serve PORT DIR`, the receiver, for demos and as the tests' peer.
//! - [`config`]: TOML to validated settings for the service.
//! - [`watch`]: the spool service: watcher (events + rescans) → queue (an I/O-free core
//!   deciding readiness, retries, per-destination lanes, fairness and health, and its tokio
//!   driver) → uploader (one attempt) → disposition (done, failed, delete).
//! - [`daemon`]: wiring for `accio watch`: signals, reload, systemd notify, shutdown order.
//! - [`status`]: counters and the [`status::View`] that `accio status` prints; [`metrics`]:
//!   Prometheus metrics; [`ops`]: the control socket, the metrics endpoint, `accio status`
//!   and `accio retry`.
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG, STOPPING) and the SIGUSR1 summary;
//!   [`logging`]: terminal, journald or JSON output; [`esc`]: paths escaped for log lines.
//! - [`cli`] and [`app`]: the command line and the one place exit codes are decided.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod esc;
pub mod logging;
pub mod man;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod send;
pub mod serve;
pub mod signals;
pub mod status;
pub mod systemd;
pub mod watch;
