//! Helpers shared by every test binary (`mod support;`), one per job:
//!
//! - [`wait`]: waiting on a condition with a deadline (never sleeping and hoping);
//! - [`net`]: free ports, listeners, "is it listening", a black-holed address;
//! - [`procfs`]: CPU time and memory of a process;
//! - [`read_sink`]: a receiver that logs every read (the bandwidth tests and benchmark);
//! - [`receiver`]: the real `accio serve` as the receiving end;
//! - [`scripted`]: a receiver written for one test (stalls, resets, wrong greetings);
//! - [`send`]: `accio send`/`serve` runs with their outcome, one-connection peers;
//! - [`servers`]: serial servers that misbehave like ones people run;
//! - [`watch`]: spool directories, configs and the real `accio watch` process.
//!
//! `wait`, `net` and `procfs` use nothing but std and the dev-dependencies, so a file outside this
//! module (`tests/faults/harness.rs`, shared with the benchmarks) can include them by path.

#![allow(dead_code)]

pub mod net;
pub mod procfs;
pub mod read_sink;
pub mod receiver;
pub mod scripted;
pub mod send;
pub mod servers;
pub mod wait;
pub mod watch;

/// The `accio` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_accio");
