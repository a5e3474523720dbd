//! Waiting on a condition with a deadline: polled every 10 ms, never a sleep that hopes.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Generous: the tests run in parallel on a loaded 2-core machine. Only a failing test
/// waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds; panics naming `what` after [`DEADLINE`].
#[track_caller]
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_within(what, DEADLINE, cond)
}

/// Polls `cond` until it holds; panics naming `what` after `deadline`.
#[track_caller]
pub fn wait_for_within(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    if !wait_until(deadline, cond) {
        panic!("timed out after {deadline:?} waiting for: {what}");
    }
}

/// Polls `cond` until it holds or `timeout` passes; true if it held (for callers that
/// report a miss themselves).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `within` for `child` to exit: its status, or `None` if it still runs.
pub fn exited_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(within, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}
