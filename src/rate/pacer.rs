//! One upload's side of the limits that apply to it: [`Pacer`] asks each [`Limiter`] for
//! its grants, counts itself among their uploads, and tells the protocol how the kernel
//! paces its socket ([`Pacer::kernel_percent`]). Moved out of `rate.rs` as it was.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{
    chunk_of, Limiter, Rate, KERNEL_HEADROOM_PERCENT, KERNEL_QUEUE_ALONE, KERNEL_SLICE,
    KERNEL_SLICE_ALONE, KERNEL_TRIM_PERCENT, SLICE,
};

/// What a [`Pacer`] allows next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No limit applies now: send as fast as the socket takes it (and ask again before the
    /// next write: a timetable may turn a limit on).
    Unlimited,
    /// Send at most this many bytes, then ask again.
    Bytes(u64),
}

/// One upload's side of the limits that apply to it (its destination's, the service's, or
/// `--limit-rate`'s). Counts itself among each limit's uploads from its creation until its
/// body is sent ([`Pacer::leave`]) or it is dropped.
#[derive(Debug, Default)]
pub struct Pacer {
    limits: Vec<Arc<Limiter>>,
    joined: bool,
    waited: Duration,
    /// Whether the kernel paces this upload's socket (at [`Pacer::share`]): grants are
    /// then a [`KERNEL_SLICE`] of the share, else a [`SLICE`].
    kernel_paced: bool,
    /// Never paced by the kernel ([`Pacer::without_kernel_pacing`]).
    grants_only: bool,
    /// The limits are this upload's own ([`Pacer::exclusive`]).
    exclusive: bool,
    /// Whether a grant was given yet: the first is always a [`SLICE`]'s, so that uploads
    /// starting together are all counted before one takes a second of the whole limit.
    started: bool,
    /// Grants of a [`KERNEL_SLICE_ALONE`] given so far.
    alone_grants: u32,
    /// The body is sent on the calling thread ([`Pacer::on_thread`]).
    on_thread: bool,
}

impl Pacer {
    /// A pacer under `limits` (any number; none is a pacer that always answers
    /// [`Grant::Unlimited`]). Counted among each limit's uploads from now on, before its
    /// first grant: uploads starting together must not see each other's first grants as
    /// the whole limit's.
    pub fn new(limits: Vec<Arc<Limiter>>) -> Pacer {
        for l in &limits {
            l.active.fetch_add(1, Ordering::Relaxed);
        }
        Pacer {
            limits,
            joined: true,
            waited: Duration::ZERO,
            kernel_paced: false,
            grants_only: false,
            exclusive: false,
            started: false,
            alone_grants: 0,
            on_thread: false,
        }
    }

    /// A pacer whose limits no other upload shares (`accio send --limit-rate`): its grants,
    /// while the kernel paces the socket, are a [`KERNEL_SLICE_ALONE`] of the limit.
    pub fn exclusive(mut self) -> Pacer {
        self.exclusive = true;
        self
    }

    /// A pacer whose upload is the only work of its process (`accio send --limit-rate`):
    /// the body is sent on the calling thread, blocking it, as a C client would (a sleep
    /// until each grant, `poll(2)` while the socket is full), rather than through the
    /// runtime's timers and readiness (see `protocol::send_file`). Its limits' rates must
    /// not change during a transfer ([`Pacer::grant_on_thread`] does not follow a change),
    /// and no other upload of the thread may share them: for limits of its own.
    pub fn on_thread(mut self) -> Pacer {
        self.on_thread = true;
        self
    }

    /// Whether the body is sent on the calling thread ([`Pacer::on_thread`]).
    pub fn sends_on_thread(&self) -> bool {
        self.on_thread
    }

    /// This upload's even share of the limits in force now, bytes per second: the
    /// smallest of each limit's rate divided by the uploads sharing it; `None` while no
    /// limit is in force. What the socket is paced at (with [`KERNEL_HEADROOM_PERCENT`]).
    pub fn share(&self) -> Rate {
        self.limits
            .iter()
            .filter_map(|l| l.rate().map(|r| (r / l.active().max(1) as u64).max(1)))
            .min()
    }

    /// A pacer whose socket the kernel never paces: grants of a [`SLICE`] alone pace it
    /// (twenty wakes a second at the limit). For comparisons (benches/rate.rs).
    pub fn without_kernel_pacing(mut self) -> Pacer {
        self.grants_only = true;
        self
    }

    /// Whether the kernel may pace this upload's socket (see
    /// [`Pacer::without_kernel_pacing`]).
    pub fn kernel_pacing_allowed(&self) -> bool {
        !self.grants_only
    }

    /// Tells the pacer whether the kernel paces the socket now: grants are then a
    /// [`KERNEL_SLICE`] of the share instead of a [`SLICE`] (the kernel spreads them).
    pub fn set_kernel_paced(&mut self, paced: bool) {
        self.kernel_paced = paced;
    }

    /// Whether the kernel paces the socket (as last told by [`Pacer::set_kernel_paced`]).
    pub fn kernel_paced(&self) -> bool {
        self.kernel_paced
    }

    /// Whether this upload's limits are its own, and it is the only one under each.
    fn alone(&self) -> bool {
        self.exclusive
            && self
                .limits
                .iter()
                .all(|l| l.rate().is_none() || l.active() <= 1)
    }

    /// Whether the kernel's pacing of this upload's socket is trimmed around its limit
    /// rather than set above it (see [`Pacer::kernel_percent`]): an upload alone under
    /// limits of its own (`accio send --limit-rate`).
    pub fn trims_kernel(&self) -> bool {
        self.alone()
    }

    /// What the kernel paces this upload's socket at, in per cent of [`Pacer::share`], when a
    /// grant is handed to it with `unsent` bytes of the grants before still queued (`None`:
    /// the kernel cannot tell).
    ///
    /// - The last grant of a body: the share itself, so that the body does not end before
    ///   its reservation (for an upload that trims the kernel's pacing, it ends what is
    ///   still queued later: about [`KERNEL_QUEUE_ALONE`]).
    /// - An upload alone under limits of its own ([`Pacer::trims_kernel`]): just below the
    ///   share ([`KERNEL_TRIM_PERCENT`]) while less than [`KERNEL_QUEUE_ALONE`] of it is
    ///   queued, just above it beyond. The kernel is then never idle when a grant arrives,
    ///   and sends every packet from its pacing timer: a grant handed to an idle socket sends
    ///   its first packet in the upload's own system call (on loopback, with the receiver's
    ///   whole receive path), which was most of what a paced `accio send` spent above the
    ///   paced floor. The queue stays about [`KERNEL_QUEUE_ALONE`]: the grants (the bucket)
    ///   still decide the average, the kernel only how the bytes leave within a second.
    ///   Without `unsent`, the share itself.
    /// - Otherwise [`KERNEL_HEADROOM_PERCENT`].
    pub fn kernel_percent(&self, last: bool, unsent: Option<u64>) -> u64 {
        if last {
            return 100;
        }
        if !self.trims_kernel() {
            return KERNEL_HEADROOM_PERCENT;
        }
        let target = self.share().map(|s| chunk_of(s, 1, KERNEL_QUEUE_ALONE));
        match (unsent, target) {
            (Some(q), Some(t)) if q < t => 100 - KERNEL_TRIM_PERCENT,
            (Some(_), Some(_)) => 100 + KERNEL_TRIM_PERCENT,
            _ => 100,
        }
    }

    /// How long this upload has waited for grants so far: non-zero means the limit bound.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Waits until up to `want` bytes may be sent and says how many (at least 1 when
    /// `want` is), or that no limit applies now.
    pub async fn grant(&mut self, want: u64) -> Grant {
        let Some((n, lead)) = self.next_grant(want) else {
            return Grant::Unlimited;
        };
        // One limit after the other: the next is asked only once the one before allows the
        // bytes, so each accounts for them when they go.
        for l in &self.limits {
            self.waited += l.acquire(n, lead).await;
        }
        Grant::Bytes(n)
    }

    /// [`Pacer::grant`] on the calling thread, which it blocks until the grant is due (see
    /// [`Pacer::on_thread`]): no runtime, no timer, one sleep.
    pub fn grant_on_thread(&mut self, want: u64) -> Grant {
        let Some((n, lead)) = self.next_grant(want) else {
            return Grant::Unlimited;
        };
        for l in &self.limits {
            self.waited += l.acquire_on_thread(n, lead);
        }
        Grant::Bytes(n)
    }

    /// The size of the next grant and how far ahead of its reservation it may go; `None`
    /// while no limit is in force. Counts the upload in again if it had left.
    fn next_grant(&mut self, want: u64) -> Option<(u64, Duration)> {
        if !self.joined {
            self.joined = true;
            for l in &self.limits {
                l.active.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The smallest share among the limits in force now.
        let (slice, lead) = if !(self.kernel_paced && self.started) {
            (SLICE, Duration::ZERO)
        } else if self.alone() {
            // The first two such grants at their reservation: the kernel sends the first
            // segments of a connection unpaced (ten: 640 KiB on loopback), and the idle
            // socket the second finds makes up for them, so that the lead of the next ones
            // lets no more than the limit through.
            self.alone_grants = self.alone_grants.saturating_add(1);
            let lead = if self.alone_grants > 2 {
                KERNEL_QUEUE_ALONE
            } else {
                Duration::ZERO
            };
            (KERNEL_SLICE_ALONE, lead)
        } else {
            (KERNEL_SLICE, Duration::ZERO)
        };
        self.started = true;
        let mut n: Option<u64> = None;
        for l in &self.limits {
            if let Some(rate) = l.rate() {
                let c = chunk_of(rate, l.active(), slice);
                n = Some(n.map_or(c, |m| m.min(c)));
            }
        }
        Some((n?.min(want.max(1)), lead))
    }
}

impl Pacer {
    /// The body is sent: no longer counted among the uploads sharing the limits (until a
    /// next grant), so that an upload waiting for its confirmation does not shrink the
    /// others' shares.
    pub fn leave(&mut self) {
        if std::mem::take(&mut self.joined) {
            for l in &self.limits {
                l.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.leave();
    }
}
