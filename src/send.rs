//! `accio send HOST PORT FILE`: one transfer with the semantics of the course's `client.py`.
//! Checks the file before any connection, uploads it, and maps every failure to one
//! `ERROR:` line and an [`crate::exit::Kind`].

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::{self, Destination};
use crate::exit::{Failed, Kind};
use crate::protocol::{Confirm, Timeouts};
use crate::rate::{Limiter, Pacer, Rate};

/// Files at least this large get a progress bar, when stderr is a terminal.
const PROGRESS_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// Runs one send, at most `limit` bytes per second (`--limit-rate`). Returns the number of
/// bytes delivered.
///
/// # Errors
/// [`Failed`] of kind usage (bad port), file, resolve, connect, handshake or transfer.
pub async fn run(
    host: &str,
    port: &str,
    file: &Path,
    confirm: Confirm,
    limit: Rate,
    timeouts: Timeouts,
) -> Result<u64, Failed> {
    let port = client::parse_port(port).map_err(|e| Failed::new(Kind::Usage, e))?;
    if host.is_empty() {
        return Err(Failed::new(Kind::Usage, "invalid host \"\": empty"));
    }
    let file_handle = open_regular(file)?;
    let len = file_handle.metadata().map(|m| m.len()).unwrap_or(0);
    let dest = Destination {
        host: host.to_string(),
        port,
    };

    let bar = progress_bar(len);
    let mut on_progress = |sent: u64| {
        if let Some(bar) = &bar {
            bar.set_position(sent);
        }
    };
    // `--limit-rate`: a limit of its own, and the body sent on this thread (the process has
    // nothing else to do: no runtime timer or readiness per grant); without it, no pacer at
    // all (the unlimited path).
    let mut pacer = limit.map(|r| {
        Pacer::new(vec![Arc::new(Limiter::new(Some(r)))])
            .exclusive()
            .on_thread()
    });
    let result = client::upload::<std::convert::Infallible>(
        &dest,
        confirm,
        &file_handle,
        // Until the end of the file, whatever its size was when checked: nothing checks it
        // again after sending.
        None,
        &timeouts,
        pacer.as_mut(),
        &mut on_progress,
        &mut None,
        // One connection, no round trip known: the kernel's own SYN retransmissions.
        None,
        |_| Ok(()),
    )
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(done) => Ok(done.bytes),
        Err(client::UploadError::Client(e)) => {
            let mut message = e.to_string();
            if matches!(e, client::ClientError::Resolve { .. })
                && host.starts_with('[')
                && host.ends_with(']')
            {
                message.push_str(" (write an IPv6 address without brackets, e.g. ::1)");
            }
            Err(Failed::new(Kind::from(&e), message))
        }
        Err(client::UploadError::Rejected(never)) => match never {},
    }
}

/// Opens FILE for reading, refusing anything that is not a readable regular file. Opening is
/// non-blocking so a FIFO cannot hang us.
fn open_regular(path: &Path) -> Result<std::fs::File, Failed> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Failed::new(Kind::File, format!("cannot open file {shown:?}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| Failed::new(Kind::File, format!("cannot stat file {shown:?}: {e}")))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Failed::new(
            Kind::File,
            format!("cannot send {shown:?}: it is {what}"),
        ));
    }
    // O_NONBLOCK was only for the open (a FIFO must not hang us). Left on, it would make
    // sendfile's internal splice non-blocking on the file side as well.
    set_blocking(&file)
        .map_err(|e| Failed::new(Kind::File, format!("cannot use file {shown:?}: {e}")))?;
    Ok(file)
}

/// Clears O_NONBLOCK on an open file.
fn set_blocking(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with flag arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn progress_bar(len: u64) -> Option<ProgressBar> {
    if len < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .ok()?;
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
