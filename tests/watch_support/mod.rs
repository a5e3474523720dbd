//! The old path of the `accio watch` test helpers, kept while a test file still says
//! `mod watch_support;`: everything lives in `tests/support` now (say `mod support;`).

#[path = "../support/mod.rs"]
#[allow(clippy::duplicate_mod)] // a file may use both old paths
mod support;

#[allow(unused_imports)]
pub use support::{net::*, receiver::*, scripted::*, wait::*, watch::*, BIN};
