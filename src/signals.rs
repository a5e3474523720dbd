//! Signal handling with signal-hook: signals become futures and streams that the front-ends
//! pass into the code they run, so shutdown is always a parameter.

use std::future::Future;
use std::io;

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
use signal_hook_tokio::Signals;

/// A future that completes at the first SIGINT, SIGTERM or SIGQUIT. The handlers are
/// installed when this is called, not when the future is first polled.
///
/// # Errors
/// The handlers could not be installed.
pub fn termination() -> io::Result<impl Future<Output = ()>> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGQUIT])?;
    Ok(async move {
        let _ = signals.next().await;
    })
}
