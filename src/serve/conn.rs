//! One connection of `accio serve`: the greeting, the body into a hidden part file, and the
//! close that means "on disk" — graceful only once the file is durable, a reset otherwise.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::store::{self, Part};
use super::{record, ServeOptions, Shared, Step};
use crate::protocol::COMMAND;
use tokio_util::sync::CancellationToken;

/// Receives one connection into `DIR/N.file` (or the next free number), then closes it:
/// gracefully (the client's confirmation) only when the file is durable, else with a reset.
/// Returns the number the file was saved under and its size, or `None` for a connection
/// ended by shutdown before it sent anything (no file).
pub(super) async fn handle(
    mut stream: TcpStream,
    n: u64,
    shared: &Shared,
) -> io::Result<Option<(u64, u64)>> {
    // Until the file is durable, any close is a reset: if this process dies (even by
    // SIGKILL) after reading the whole body but before saving it, the kernel's close of the
    // socket must not look like the confirming close to the client. Best effort: without it
    // only a crash in that window could confirm an unsaved file.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    match save(&mut stream, n, shared).await {
        Ok(saved) => {
            if let Some((used, _)) = saved {
                record(&shared.opts.steps, Step::Closing(used));
                // Durable: now the graceful close is the truth.
                crate::protocol::close(stream);
            } else {
                crate::protocol::abort(stream);
            }
            Ok(saved)
        }
        Err(e) => {
            crate::protocol::abort(stream);
            Err(e)
        }
    }
}

/// Why a connection ended without its data.
enum Ended {
    /// Shutdown before the first byte: nothing to save.
    Stopping,
    /// Silence, reset, over `--max-size` or `--deadline`: the file holds `ERROR`.
    Failed(io::Error),
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Failed(e)
    }
}

/// The part file of one connection, created when its first byte arrives (or when it ends):
/// an idle connection holds its socket and nothing else.
struct Sink<'a> {
    shared: &'a Shared,
    n: u64,
    open: Option<(File, Part)>,
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

impl Sink<'_> {
    /// Appends `buf[..len]`, creating the part file first if this is the first data (in the
    /// same blocking call: on a busy machine each hand-over to a blocking thread costs a
    /// wake-up); gives the buffer back.
    async fn write(&mut self, buf: Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
        let open = self.open.take();
        let (dir, n, mode) = (self.shared.dir.clone(), self.n, self.shared.opts.mode);
        let (open, buf, r) = blocking(move || {
            let mut open = match open {
                Some(open) => open,
                None => match store::create_part(&dir, n, mode) {
                    Ok(open) => open,
                    Err(e) => return (None, buf, Err(e)),
                },
            };
            let r = open.0.write_all(&buf[..len]);
            (Some(open), buf, r)
        })
        .await?;
        self.open = open;
        r.map(|()| buf)
    }

    /// Ends the part file in one blocking call: created now if nothing arrived, synced
    /// (`complete`, unless `--no-sync`) or made to hold exactly `ERROR` through its own
    /// descriptor (not synced: nobody is confirmed an ERROR file), closed, and published.
    /// Returns the number used.
    async fn finish(self, complete: bool) -> io::Result<u64> {
        let Sink { shared, n, open } = self;
        let (dir, mode, sync) = (shared.dir.clone(), shared.opts.mode, shared.opts.sync);
        let (numbering, steps) = (shared.numbering.clone(), shared.opts.steps.clone());
        blocking(move || {
            let (file, part) = match open {
                Some(open) => open,
                None => store::create_part(&dir, n, mode)?,
            };
            if !complete {
                // Through the descriptor: whatever now has the part file's name is untouched.
                file.set_len(0)?;
                file.write_all_at(b"ERROR", 0)?;
            } else if sync {
                // Data first: once the name exists it must name the whole content.
                file.sync_data()
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot sync {n}.file: {e}")))?;
                record(&steps, Step::DataSynced(n));
            }
            drop(file);
            let used = store::publish(part, n, &numbering)?;
            if complete {
                record(&steps, Step::Published(used));
            }
            Ok(used)
        })
        .await?
    }
}

/// Writes what the connection sends to a hidden part file and publishes it as `N.file` when
/// complete, durably unless `--no-sync`; a failed transfer leaves `N.file` holding exactly
/// `ERROR`. Returns the number used and the bytes received.
async fn save(stream: &mut TcpStream, n: u64, shared: &Shared) -> io::Result<Option<(u64, u64)>> {
    let opts = &shared.opts;
    let mut sink = Sink {
        shared,
        n,
        open: None,
    };
    let received = match opts.deadline {
        None => receive(stream, &mut sink, opts, &shared.stopping).await,
        Some(limit) => {
            match tokio::time::timeout(limit, receive(stream, &mut sink, opts, &shared.stopping))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Ended::Failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not finished within {limit:?} (--deadline)"),
                ))),
            }
        }
    };
    match received {
        Ok(bytes) => {
            let used = sink.finish(true).await?;
            if opts.sync {
                shared.dir_sync.after_rename().await?;
                record(&opts.steps, Step::DirSynced(used));
            }
            Ok(Some((used, bytes)))
        }
        // Nothing was received (or, if a byte was, the part file is removed on drop): the
        // client was not confirmed and will send again.
        Err(Ended::Stopping) => Ok(None),
        Err(Ended::Failed(e)) => {
            sink.finish(false).await?;
            Err(e)
        }
    }
}

/// Sends the command, then reads until the client's clean end (its byte count), into the
/// sink. The buffer exists only while data flows: a connection that stays quiet gives it back.
async fn receive(
    stream: &mut TcpStream,
    sink: &mut Sink<'_>,
    opts: &ServeOptions,
    stopping: &CancellationToken,
) -> Result<u64, Ended> {
    let idle = opts.idle_timeout;
    tokio::time::timeout(idle, stream.write_all(COMMAND))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "could not send the command"))??;
    // 64 KiB: below malloc's mmap threshold, so a connection costs no page faults for its
    // buffer (256 KiB made small files measurably slower); large enough for throughput.
    const BUF: usize = 64 * 1024;
    // Until a read fills this much, a connection reads into a buffer this small, and only
    // while it has bytes to read: one that sends a little at a time (a slow or hostile
    // client, thousands of them) holds no buffer while it waits.
    const SMALL: usize = 4 * 1024;
    // A streaming connection keeps its 64 KiB between reads, until a pause this long.
    const KEEP_BUF: Duration = Duration::from_millis(250);
    let mut buf: Option<Vec<u8>> = None;
    let mut streaming = false;
    let mut total = 0u64;
    let mut silent_until = Instant::now() + idle;
    loop {
        let wait_until = if buf.is_some() {
            silent_until.min(Instant::now() + KEEP_BUF)
        } else {
            silent_until
        };
        let ready = tokio::select! {
            r = tokio::time::timeout_at(wait_until, stream.readable()) => r,
            // Shutdown ends a connection at once only while it has sent nothing.
            _ = stopping.cancelled(), if total == 0 => return Err(Ended::Stopping),
        };
        match ready {
            Ok(r) => r?,
            Err(_) if Instant::now() >= silent_until => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {idle:?}"),
                )
                .into())
            }
            Err(_) => {
                buf = None;
                streaming = false;
                continue;
            }
        }
        let b = buf.get_or_insert_with(|| vec![0u8; if streaming { BUF } else { SMALL }]);
        let n = match stream.try_read(b) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        let filled = n == b.len();
        silent_until = Instant::now() + idle;
        if let Some(max) = opts.max_size {
            if total + n as u64 > max {
                return Err(io::Error::other(format!("more than {max} bytes (--max-size)")).into());
            }
        }
        let used = buf.take().unwrap_or_default();
        let back = sink.write(used, n).await?;
        total += n as u64;
        if streaming {
            buf = Some(back);
        } else if filled {
            // More is coming faster than 4 KiB a read: the next buffer is the large one.
            streaming = true;
        }
    }
}
