//! The body of a paced upload sent on the calling thread, as a C client would send it: a
//! sleep until each grant, one `sendfile` of it, `poll(2)` only while the socket is full.
//! For a process whose upload is its only work (`accio send --limit-rate`,
//! [`Pacer::on_thread`]): through the runtime, each grant cost three `epoll_wait`s, an
//! `eventfd` write and the runtime's timer wheel and readiness code run on caches a second
//! cold, which was most of what a paced `accio send` spent above the paced floor.
//!
//! The rules are [`super::send_file`]'s: the same grants and kernel pacing
//! ([`SocketPacing`]), the same stall rule (a queue the kernel drains at the paced rate is
//! progress), the same end (the queue sent before the close).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::pacing::SocketPacing;
use super::{is_file_error, ProtocolError, SENDFILE_CHUNK};
use crate::rate::{Grant, Pacer};

/// [`super::send_file`] of `file` into the socket `sock` with `pacer`, on the calling
/// thread. `None`: the kernel cannot `sendfile` from this file (nothing was sent, the
/// socket is not paced): the caller copies it instead.
pub(super) fn send_file(
    file: &std::fs::File,
    known_size: Option<u64>,
    sock: RawFd,
    stall: Duration,
    pacer: &mut Pacer,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Option<Result<u64, ProtocolError>> {
    let file_fd = file.as_raw_fd();
    let size_now = || file.metadata().map_or(u64::MAX, |m| m.len());
    // As in send_file: a known size ends the body (below) and needs no `fstat`.
    let mut size = known_size.unwrap_or_else(size_now);
    let mut sent: u64 = 0;
    // Bytes granted and not sent yet.
    let mut credit: u64 = 0;
    let mut kernel = SocketPacing::default();
    let mut asked = false;
    loop {
        let count = if credit > 0 {
            credit
        } else {
            if sent >= size {
                size = size_now();
                if sent >= size {
                    return Some(kernel.drain_on_thread(sock, stall, sent));
                }
            }
            // As in send_file: the first grant (a SLICE's) sent as it is, the pacing set
            // before and after each next one.
            let first = !asked;
            asked = true;
            if !first {
                kernel.update(sock, pacer);
            }
            let grant = pacer.grant_on_thread(size - sent);
            if !first {
                let last = matches!(grant, Grant::Bytes(n) if n >= size - sent);
                kernel.after_grant(sock, pacer, last);
            }
            match grant {
                Grant::Unlimited => SENDFILE_CHUNK as u64,
                Grant::Bytes(n) => {
                    credit = n;
                    n
                }
            }
        };
        let count = usize::try_from(count)
            .unwrap_or(SENDFILE_CHUNK)
            .min(SENDFILE_CHUNK);
        let mut offset = sent as libc::off_t;
        // SAFETY: both descriptors are open for the duration of the call (the caller
        // borrows the socket, `file` is borrowed), and `offset` is a valid pointer to a
        // local.
        let n = unsafe { libc::sendfile(sock, file_fd, &mut offset, count) };
        if n >= 0 {
            let n = n as u64;
            if n == 0 {
                return Some(kernel.drain_on_thread(sock, stall, sent));
            }
            sent += n;
            credit = credit.saturating_sub(n);
            progress(sent);
            if known_size.is_some_and(|size| sent >= size) {
                return Some(kernel.drain_on_thread(sock, stall, sent));
            }
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                if let Err(e) = kernel.writable_on_thread(sock, stall, sent) {
                    return Some(Err(e));
                }
            }
            io::ErrorKind::Interrupted => {}
            _ if sent == 0
                && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) =>
            {
                kernel.clear(sock, pacer);
                return None;
            }
            _ if is_file_error(&e) => return Some(Err(ProtocolError::FileIo { sent, source: e })),
            _ => return Some(Err(ProtocolError::SendIo { sent, source: e })),
        }
    }
}
