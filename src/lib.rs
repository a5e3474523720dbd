//! accio: upload files with the Accio protocol.
//!
//! Data flows one way, and the modules follow it. From the top (each uses only modules
//! below it; `tests/layers.rs` keeps it so):
//!
//! - [`app`] and [`cli`] (with [`man`]): the command line, dispatched to the front-ends.
//! - Front-ends: [`daemon`] (`accio watch`: signals, reload, systemd notify, shutdown
//!   order), [`send`] (`accio send HOST PORT FILE`, one transfer with the course client's
//!   semantics), [`serve`] (`accio serve PORT DIR`, the receiver, for demos and as the tests'
//!   peer), and [`ops`] (the control socket and metrics endpoint of the service, and
//!   `accio status`, `accio retry`, `accio check-config`).
//! - The service: [`watch`]: watcher (events + rescans) → queue (an I/O-free core deciding
//!   readiness, retries, per-destination lanes, fairness and health, and its tokio driver) →
//!   uploader (one attempt) → disposition (done, failed, delete); [`systemd`] (sd_notify,
//!   the SIGUSR1 summary); [`metrics`] (Prometheus); [`status`] (counters and the
//!   [`status::View`] that `accio status` prints); [`config`] (TOML to validated settings);
//!   [`logging`] (terminal, journald or JSON); [`signals`].
//! - Below them: [`exit`], the one place exit codes are decided (front-ends say what kind
//!   of failure ended a command); [`client`], resolving and connecting within the connect
//!   timeout and one whole upload of an open file; [`protocol`], the client side of the
//!   protocol over any async stream (wait for `accio\r\n`, stream the content, half-close,
//!   wait for the server's close; no files, no policy); [`rate`], bandwidth limits (rates,
//!   timetables, the grants that pace a body); [`handshake`], each destination's round
//!   trip and when a connect whose SYN was lost starts afresh; [`resolve`], its name
//!   resolved at most once a second, not once per file; [`files`], filesystem calls
//!   std does not have; [`esc`], paths escaped for log lines.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod esc;
pub mod exit;
pub mod files;
pub mod handshake;
pub mod limits;
pub mod logging;
pub mod man;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod rate;
pub mod resolve;
pub mod send;
pub mod serve;
pub mod signals;
pub mod status;
pub mod systemd;
pub mod watch;
