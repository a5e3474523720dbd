//! Phase 3 of a transfer over TCP: the half-close, then the wait for the confirmation
//! [`Confirm`] asks for (the server's close, or the acknowledgement of every byte and our
//! FIN), with the stall rule while the server is still taking queued data.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{after, Confirm, ProtocolError};

/// How often [`finish_tcp`] checks that the server is still taking our queued data. Only
/// while data is queued; the wait for the close itself is purely event-driven.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Bytes in the socket's send queue not yet acknowledged by the peer (`SIOCOUTQ`), or
/// `None` where the kernel cannot tell.
fn unacked_bytes(stream: &TcpStream) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor is open (borrowed) and `queued` is a valid c_int out-pointer,
    // which is what TIOCOUTQ (= SIOCOUTQ) writes.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0 && queued >= 0).then_some(queued as u64)
}

/// TCP state of the socket (`tcpi_state` of `TCP_INFO`), or `None` where the kernel cannot
/// tell.
fn tcp_state(stream: &TcpStream) -> Option<u8> {
    // SAFETY: zeroed tcp_info is a valid value of this plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open (borrowed); `info` and `len` are valid out-pointers of
    // the size given, which the kernel does not exceed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info.tcpi_state)
}

/// `TCP_FIN_WAIT2` of the kernel's TCP states: our FIN was sent and acknowledged, so was
/// every byte before it; the peer has not closed yet.
const TCP_FIN_WAIT2: u8 = 5;

/// True once the peer's TCP acknowledged all we sent, our FIN included.
fn fin_acknowledged(stream: &TcpStream) -> bool {
    tcp_state(stream) == Some(TCP_FIN_WAIT2)
}

/// The first checks for [`Confirm::Acked`] come quickly (on loopback the acknowledgement is
/// often there before `shutdown` returns), then back off to [`DRAIN_POLL`].
fn acked_poll(checks: u32) -> Duration {
    Duration::from_millis(1u64 << checks.min(6)).min(DRAIN_POLL)
}

/// Half-closes, then waits for the confirmation `confirm` asks for.
/// The last part of the file may still sit in our send buffer (up to a few MiB) when the
/// half-close is made, and a slow but steady server may take long to read it: so the stall
/// rule, not the close timeout, applies while the server is still acknowledging data.
///
/// With [`Confirm::Close`] the close timeout starts once everything, including our FIN, was
/// acknowledged, and only the server's close confirms. With [`Confirm::Acked`] the
/// acknowledgement of our FIN confirms (or the server's close, whichever comes first); the
/// close timeout is not used.
///
/// # Errors
/// Shutdown failure, a reset or other read error, no acknowledgement progress for `stall`,
/// or (with `Close`) no close within `close_timeout` after everything was acknowledged.
pub async fn finish_tcp(
    stream: &mut TcpStream,
    confirm: Confirm,
    stall: Duration,
    close_timeout: Duration,
) -> Result<(), ProtocolError> {
    stream.shutdown().await.map_err(ProtocolError::CloseIo)?;
    // The send queue is first read at the first check, not here: a server that saves a small
    // file and closes at once confirms before it, and costs one SIOCOUTQ in all (in
    // `wait_acknowledged`). The close timeout thus starts at that check at the latest.
    let mut queued: Option<u64> = None;
    let mut last_progress = Instant::now();
    let acked = confirm == Confirm::Acked;
    let mut close_deadline: Option<Instant> = None;
    let mut checks = 0u32;
    let mut sink = [0u8; 64];
    // Fixed instants, not "now + poll" per iteration: a server flooding us with unsolicited
    // bytes must not postpone the checks.
    let mut next_check = last_progress + if acked { Duration::ZERO } else { DRAIN_POLL };
    loop {
        let wake = close_deadline.unwrap_or(next_check);
        // Not biased: a server flooding us with bytes must not starve the timer branch.
        tokio::select! {
            read = stream.read(&mut sink) => match read {
                // A server that half-closed early may still be reading: confirmed only once
                // it has also acknowledged everything.
                Ok(0) => return wait_acknowledged(stream, stall, queued, last_progress).await,
                // Unsolicited bytes: ignored.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ProtocolError::CloseIo(e)),
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if close_deadline.is_some() {
                    return Err(if fin_acknowledged(stream) {
                        ProtocolError::CloseTimeout(close_timeout)
                    } else {
                        ProtocolError::CloseTimeoutUnacked(close_timeout)
                    });
                }
                if acked && fin_acknowledged(stream) {
                    return Ok(());
                }
                checks += 1;
                next_check = now + if acked { acked_poll(checks) } else { DRAIN_POLL };
                match unacked_bytes(stream) {
                    // With Acked, an empty queue is not enough: the FIN itself must be
                    // acknowledged (FIN_WAIT2); until then the stall rule applies. Without
                    // SIOCOUTQ the drain cannot be seen: the plain close timeout applies.
                    Some(0) | None if !acked => close_deadline = Some(after(now, close_timeout)),
                    // The first reading, or less queued than at the last one.
                    Some(q) if queued.map_or(true, |before| q < before) => {
                        queued = Some(q);
                        last_progress = now;
                    }
                    _ if now - last_progress >= stall => {
                        return Err(ProtocolError::Stall(stall));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// After the server's FIN: waits until everything we sent is acknowledged, with the stall
/// rule. Polls the send queue; reading is over, since the stream is at end of file.
async fn wait_acknowledged(
    stream: &TcpStream,
    stall: Duration,
    mut queued: Option<u64>,
    mut last_progress: Instant,
) -> Result<(), ProtocolError> {
    loop {
        let now = Instant::now();
        match unacked_bytes(stream) {
            Some(0) | None => return Ok(()),
            Some(q) if queued.map_or(true, |before| q < before) => {
                queued = Some(q);
                last_progress = now;
            }
            Some(_) if now - last_progress >= stall => return Err(ProtocolError::Stall(stall)),
            Some(_) => {}
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
