//! The old path of the `accio send`/`serve` test helpers, kept while a test file still says
//! `mod sendserve_support;`: everything lives in `tests/support` now (say `mod support;`).

#[path = "../support/mod.rs"]
#[allow(clippy::duplicate_mod)] // a file may use both old paths
mod support;

#[allow(unused_imports)]
pub use support::send::*;
#[allow(unused_imports)]
pub use support::servers;
#[allow(unused_imports)]
pub use support::BIN as ACCIO;

/// Waits until `cond` holds; panics naming `what` past the deadline (see
/// [`support::wait::wait_for`]).
#[allow(dead_code)]
#[track_caller]
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    support::wait::wait_for(what, cond)
}
