//! `accio watch`: wiring of the service: config, logging, signals, systemd notify, and the
//! shutdown order.

/// Runs the service until SIGTERM/SIGINT; returns the exit code.
pub fn main(_rt: &tokio::runtime::Runtime, args: crate::cli::WatchArgs) -> u8 {
    eprintln!("ERROR: {:?}: watch is not implemented yet", args.config);
    crate::client::exit::OTHER
}
