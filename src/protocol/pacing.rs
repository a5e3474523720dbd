//! The kernel's pacing of an upload's socket under a bandwidth limit
//! (`SO_MAX_PACING_RATE`), and the send queue it drains slowly on purpose (`SIOCOUTQNSD`):
//! what [`super::send_file`] asks of the socket when a [`Pacer`] paces the body.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::ProtocolError;
use crate::rate::Pacer;

/// `SIOCOUTQNSD` (linux/sockios.h): bytes in the send queue not sent yet.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// Bytes in the socket's send queue not sent yet (`SIOCOUTQNSD`), or `None` where the
/// kernel cannot tell. Under kernel pacing this shrinks at the paced rate.
fn unsent_bytes(stream: &TcpStream) -> Option<u64> {
    unsent_bytes_of(stream.as_raw_fd())
}

/// [`unsent_bytes`] of a socket's descriptor.
fn unsent_bytes_of(fd: RawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: the caller keeps the descriptor open for the call, and `queued` is a valid
    // c_int out-pointer, which is what SIOCOUTQNSD writes.
    let rc = unsafe { libc::ioctl(fd, SIOCOUTQNSD as _, &mut queued) };
    (rc == 0 && queued >= 0).then_some(queued as u64)
}

/// `SO_MAX_PACING_RATE` of a socket, bytes per second; `None` lifts it.
fn set_max_pacing_rate(fd: RawFd, rate: Option<u64>) -> io::Result<()> {
    // The kernel reads 32 bits, or 64 where given 64; !0u32 is "no limit".
    let rc = match rate.map(u32::try_from) {
        None => setsockopt(fd, libc::SO_MAX_PACING_RATE, &u32::MAX),
        Some(Ok(r)) => setsockopt(fd, libc::SO_MAX_PACING_RATE, &r.min(u32::MAX - 1)),
        Some(Err(_)) => setsockopt(fd, libc::SO_MAX_PACING_RATE, &rate.unwrap_or(u64::MAX)),
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: the descriptor is open for the call; `value` points to a `T` of the size
    // given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

/// How long the kernel takes to send `bytes` at `rate` (bytes per second).
fn drain_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64).min(Duration::from_secs(3600))
}

/// How long a drain sleeps before it looks at the queue again: about when the `unsent`
/// bytes are sent at `rate`, and at least every stall timeout.
fn drain_nap(unsent: u64, rate: u64, stall: Duration) -> Duration {
    drain_time(unsent, rate)
        .max(Duration::from_millis(1))
        .min(stall.max(Duration::from_millis(1)))
}

/// The kernel's pacing of one upload's socket (`SO_MAX_PACING_RATE`; TCP paces by itself
/// without the fq qdisc since Linux 4.13): set to the upload's share of the limits in force
/// (plus [`crate::rate::KERNEL_HEADROOM_PERCENT`], or trimmed around it for `accio send`:
/// [`Pacer::kernel_percent`]), so that each grant, a second of the share, goes out spread
/// over that second instead of in twenty wakes. Set only while a limit is in force;
/// where the kernel refuses it the pacer's small grants pace alone.
///
/// The stall timeout keeps its meaning: a socket that the kernel drains slowly, at the
/// paced rate, is making progress (see [`SocketPacing::writable`]).
#[derive(Debug, Default)]
pub(super) struct SocketPacing {
    /// The rate set on the socket now; `None`: not paced by the kernel.
    rate: Option<u64>,
    /// The kernel refused it once: not asked again.
    refused: bool,
}

impl SocketPacing {
    /// Paces the socket at the pacer's share now (a system call only when it changed).
    /// A socket whose pacing is trimmed around its limit ([`Pacer::trims_kernel`]) keeps
    /// its rate until the next grant ([`SocketPacing::after_grant`]).
    pub(super) fn update(&mut self, fd: RawFd, pacer: &mut Pacer) {
        if pacer.trims_kernel() && self.rate.is_some() {
            return;
        }
        let percent = pacer.kernel_percent(false, None);
        self.update_to(fd, pacer, percent);
    }

    /// Paces the socket for a grant about to be handed to it ([`Pacer::kernel_percent`]),
    /// the body's `last` or not; reads the socket's queue only where the pacer trims the
    /// kernel's pacing.
    pub(super) fn after_grant(&mut self, fd: RawFd, pacer: &mut Pacer, last: bool) {
        let unsent = if pacer.trims_kernel() && !last && self.rate.is_some() {
            unsent_bytes_of(fd)
        } else {
            None
        };
        let percent = pacer.kernel_percent(last, unsent);
        self.update_to(fd, pacer, percent);
    }

    /// [`SocketPacing::update`] at `percent` of the share.
    pub(super) fn update_to(&mut self, fd: RawFd, pacer: &mut Pacer, percent: u64) {
        let want = pacer.share().map(|s| s.saturating_mul(percent) / 100);
        if want == self.rate || self.refused || !pacer.kernel_pacing_allowed() {
            return;
        }
        let Some(rate) = want else {
            return self.clear(fd, pacer);
        };
        if set_max_pacing_rate(fd, Some(rate)).is_ok() {
            self.rate = Some(rate);
            pacer.set_kernel_paced(true);
        } else {
            self.refused = true;
            self.clear(fd, pacer);
        }
    }

    /// No kernel pacing from now on (a system call only if it was set).
    pub(super) fn clear(&mut self, fd: RawFd, pacer: &mut Pacer) {
        if self.rate.take().is_some() {
            let _ = set_max_pacing_rate(fd, None);
        }
        pacer.set_kernel_paced(false);
    }

    /// How long the socket may take no data before it is a stall: the stall timeout, plus,
    /// under kernel pacing, the time the `unsent` queue takes at the paced rate.
    fn stall_window(&self, stall: Duration, unsent: Option<u64>) -> Duration {
        match (self.rate, unsent) {
            (Some(rate), Some(q)) => stall.saturating_add(drain_time(q, rate)),
            _ => stall,
        }
    }

    /// A window of [`SocketPacing::stall_window`] passed without the socket taking data:
    /// progress if, under kernel pacing, the unsent queue shrank from `before` to `now`
    /// (which is returned), else a stall.
    fn moved(
        &self,
        before: Option<u64>,
        now: Option<u64>,
        stall: Duration,
    ) -> Result<u64, ProtocolError> {
        match (before, now) {
            (Some(before), Some(now)) if self.rate.is_some() && now < before => Ok(now),
            _ => Err(ProtocolError::Stall(stall)),
        }
    }

    /// Waits until the socket takes data. Not taking any for the stall timeout is a stall;
    /// under kernel pacing, a send queue that the kernel keeps sending from (at the paced
    /// rate, so the wait may be long) is progress, and only a queue that does not move for
    /// the stall timeout plus the time to send it at the paced rate is a stall.
    pub(super) async fn writable(
        &self,
        stream: &TcpStream,
        stall: Duration,
        sent: u64,
    ) -> Result<(), ProtocolError> {
        let mut unsent = self.rate.and_then(|_| unsent_bytes(stream));
        loop {
            let window = self.stall_window(stall, unsent);
            match timeout(window, stream.ready(Interest::WRITABLE)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(source)) => return Err(ProtocolError::SendIo { sent, source }),
                Err(_) => unsent = Some(self.moved(unsent, unsent_bytes(stream), stall)?),
            }
        }
    }

    /// The body is handed to the kernel: under kernel pacing, waits until the kernel has
    /// sent it (up to one grant, a second of the share, may still be queued), so that the
    /// upload counts among those sharing the limit while it uses its share, and the close
    /// that follows is not timed against a queue the kernel empties slowly on purpose.
    /// The stall rule is [`SocketPacing::writable`]'s. Returns `sent`.
    pub(super) async fn drain(
        &self,
        stream: &TcpStream,
        stall: Duration,
        sent: u64,
    ) -> Result<u64, ProtocolError> {
        let Some(mut d) = self.draining(unsent_bytes(stream), stall) else {
            return Ok(sent);
        };
        while d.unsent > 0 {
            tokio::time::sleep(d.nap).await;
            let Some(now) = unsent_bytes(stream) else {
                break;
            };
            d.observe(self, now)?;
        }
        Ok(sent)
    }

    /// The drain's state once the body is out with `unsent` bytes queued, or `None` when
    /// there is nothing to wait for (no kernel pacing, or no reading of the queue).
    fn draining(&self, unsent: Option<u64>, stall: Duration) -> Option<Drain> {
        let rate = self.rate?;
        let unsent = unsent?;
        Some(Drain {
            unsent,
            rate,
            stall,
            progress: Instant::now(),
            window: self.stall_window(stall, Some(unsent)),
            nap: drain_nap(unsent, rate, stall),
        })
    }

    /// [`SocketPacing::writable`] on the calling thread (`poll(2)`), for a body sent on it
    /// ([`Pacer::on_thread`]): the same stall rule.
    pub(super) fn writable_on_thread(
        &self,
        fd: RawFd,
        stall: Duration,
        sent: u64,
    ) -> Result<(), ProtocolError> {
        let mut unsent = self.rate.and_then(|_| unsent_bytes_of(fd));
        loop {
            let window = self.stall_window(stall, unsent);
            match poll_writable(fd, window) {
                Ok(true) => return Ok(()),
                Err(source) => return Err(ProtocolError::SendIo { sent, source }),
                Ok(false) => unsent = Some(self.moved(unsent, unsent_bytes_of(fd), stall)?),
            }
        }
    }

    /// [`SocketPacing::drain`] on the calling thread (sleeps), for a body sent on it.
    pub(super) fn drain_on_thread(
        &self,
        fd: RawFd,
        stall: Duration,
        sent: u64,
    ) -> Result<u64, ProtocolError> {
        let Some(mut d) = self.draining(unsent_bytes_of(fd), stall) else {
            return Ok(sent);
        };
        while d.unsent > 0 {
            std::thread::sleep(d.nap);
            let Some(now) = unsent_bytes_of(fd) else {
                break;
            };
            d.observe(self, now)?;
        }
        Ok(sent)
    }
}

/// A drain under way ([`SocketPacing::drain`], on the runtime or the calling thread): the
/// queue as last read, since when it last shrank, and the stall rule's window for it.
struct Drain {
    unsent: u64,
    rate: u64,
    stall: Duration,
    progress: Instant,
    window: Duration,
    /// How long to sleep before the next reading.
    nap: Duration,
}

impl Drain {
    /// The queue reads `now`: progress if it shrank, a stall once it has not for the window.
    fn observe(&mut self, pacing: &SocketPacing, now: u64) -> Result<(), ProtocolError> {
        if now < self.unsent {
            self.unsent = now;
            self.progress = Instant::now();
            self.window = pacing.stall_window(self.stall, Some(now));
        } else if self.progress.elapsed() >= self.window {
            return Err(ProtocolError::Stall(self.stall));
        }
        self.nap = drain_nap(self.unsent, self.rate, self.stall);
        Ok(())
    }
}

/// Waits up to `window` for the socket to take data (`poll(2)`, the calling thread
/// blocked): `true` once it does (or has an error, which the next write reports), `false`
/// when the window ends first.
fn poll_writable(fd: RawFd, window: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: a wait that ends early would be taken for the whole window.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut fds = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor the caller keeps open.
        let rc = unsafe { libc::poll(&mut fds, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            if ms == 0 || Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
