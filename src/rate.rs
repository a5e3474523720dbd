//! Bandwidth limits: rates as people write them, timetables, and the pacing of uploads.
//!
//! - [`parse_rate`] / [`format_rate`]: `"4MiB/s"`, `"500K"`, `"off"`. K, M, G and T are
//!   binary (1024), as in curl's `--limit-rate` and rclone's `--bwlimit`, with or without
//!   `i`, `B` and `/s`; a bare number is bytes per second (curl's reading).
//! - [`Policy`]: no limit, one rate, or a [`Schedule`] (rclone's timetable), answering
//!   "what rate now" for a time of day.
//! - [`Bucket`]: the decision, without I/O or a clock of its own: each grant of `n` bytes
//!   reserves the next `n / rate` of the link, so grants are served in the order asked and
//!   uploads asking in turn share the rate evenly. Tested with a simulated clock.
//! - [`Limiter`]: a [`Bucket`] shared by the uploads in flight (one per destination, one
//!   for the whole service, one for `accio send --limit-rate`), with the tokio clock.
//! - [`Pacer`]: one upload's view of the limiters that apply to it; the protocol asks it
//!   for a grant before each write and sends no more than granted, and paces the socket in
//!   the kernel (`SO_MAX_PACING_RATE`) at the upload's [`Pacer::share`], so that grants can
//!   be a quarter of a second long ([`KERNEL_SLICE`]; a second for `accio send
//!   --limit-rate`, [`KERNEL_SLICE_ALONE`]) without leaving in bursts.
//! - [`Rates`]: the service's limiters by destination, configured from the config (again on
//!   SIGHUP) and moved along their timetables by [`Rates::tick`].
//!
//! Waiting for a grant is pacing, not stalling: the protocol's stall timer runs only while
//! it waits for the socket to take data.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

mod pacer;
pub use pacer::{Grant, Pacer};
mod values;
pub use values::{
    format_rate, format_time_of_day, parse_rate, parse_time_of_day, Policy, Rate, Schedule, DAY,
    MAX_RATE, MIN_RATE, RATE_FORMS,
};

/// How much of the link one grant reserves, all uploads together: the grants of the
/// uploads in flight take turns within this time, so each gets its share this often, and
/// a rate change reaches the uploads within it.
pub const SLICE: Duration = Duration::from_millis(50);
/// How far an idle limit lets the next grant go at once: a small file now and then is not
/// delayed, while any 2 s window stays within 1 % of the rate from it.
pub const BURST: Duration = Duration::from_millis(20);
/// The smallest grant, so that many uploads at a low rate do not make a system call per
/// few bytes.
pub const MIN_CHUNK: u64 = 2048;
/// The largest grant (a very high limit does not need more between checks).
pub const MAX_CHUNK: u64 = 16 << 20;

const NANOS: u128 = 1_000_000_000;

/// How much of the link one grant reserves while the kernel paces the socket
/// (`SO_MAX_PACING_RATE`, see [`Pacer::share`]): the kernel spreads each grant over most
/// of this time, so the upload wakes four times a second instead of twenty, and sends
/// nothing itself between wakes. Longer slices save little more CPU and delay the bytes of
/// each grant more behind its reservation (a 2 s window at the start of a transfer then
/// sees up to a quarter of a slice less than the limit).
pub const KERNEL_SLICE: Duration = Duration::from_millis(250);
/// The same for an upload whose limits are its own ([`Pacer::exclusive`]: `accio send
/// --limit-rate`): a second, so that it wakes once a second. What keeps
/// [`KERNEL_SLICE`] short for shared limits, each upload asking for its next grant while
/// others start (their windows and shares spread with longer grants), does not apply to an
/// upload alone; CPU does: every grant is a wake, a `sendfile` into an idle socket whose
/// first packet the kernel sends at once in the upload's own system call (on loopback, with
/// its delivery to the receiver), and timers (benches/rate.rs, CPU per MiB of a 2 MiB/s send:
/// 0.38 ms with 250 ms grants, 0.20 to 0.28 with a second's). Not for the only upload to
/// a destination of the service: others may start any moment (uploads starting a little
/// apart under load would find the first holding a second of the whole limit), and they
/// would wait for it.
pub const KERNEL_SLICE_ALONE: Duration = Duration::from_secs(1);
/// How long before its reservation an upload alone under limits of its own hands a grant
/// of a [`KERNEL_SLICE_ALONE`] to its socket (from its third), and how much of its share it
/// keeps queued there then (see [`Pacer::kernel_percent`]): the socket still holds the end
/// of the grant before, so that the kernel sends every packet from its pacing timer. The
/// kernel, paced around the share, is what keeps the bytes from leaving early.
pub const KERNEL_QUEUE_ALONE: Duration = Duration::from_millis(250);
/// How far from the share the kernel paces such an upload (per cent): below while its queue
/// is short, above while it is long (see [`Pacer::kernel_percent`]).
pub const KERNEL_TRIM_PERCENT: u64 = 2;
/// The kernel paces a socket this much faster than its share (in per cent of it), so that
/// each grant goes out within two thirds of its slice and the upload is back in time to
/// ask for the next: the limit's accounting stays the [`Bucket`]'s. A kernel slower than
/// the share would lower the rate below the limit: pacing timers run late on a loaded
/// machine (measured: 10 % headroom lost 3 % of the limit with the load at 4 on 2 cores),
/// and a `fq` qdisc counts the headers (4-5 % of a 1500-byte packet).
pub const KERNEL_HEADROOM_PERCENT: u64 = 150;

/// The grant size for one of `active` uploads sharing `rate`: its share of one [`SLICE`].
pub fn chunk(rate: u64, active: usize) -> u64 {
    chunk_of(rate, active, SLICE)
}

/// The grant size for one of `active` uploads sharing `rate`: its share of `slice`.
pub fn chunk_of(rate: u64, active: usize, slice: Duration) -> u64 {
    let per_slice = u128::from(rate) * slice.as_nanos() / NANOS;
    let share = per_slice / active.max(1) as u128;
    u64::try_from(share)
        .unwrap_or(MAX_CHUNK)
        .clamp(MIN_CHUNK, MAX_CHUNK)
}

/// The decision of one limit: when may the next `n` bytes go. Times are nanoseconds on any
/// monotonic clock the caller chooses (a simulated one in tests).
///
/// Each grant reserves the link from when it is free (`next_free`) for `n / rate`, so
/// bytes granted over any window are at most the rate times the window, plus one grant and
/// [`BURST`]. Grants are served in the order they are asked for: uploads that each ask for
/// their share in turn get it evenly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Bytes per second; `None`: off (every grant at once).
    rate: Rate,
    /// When the reservations so far end.
    next_free: u64,
}

impl Bucket {
    pub fn new(rate: Rate) -> Bucket {
        Bucket { rate, next_free: 0 }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Reserves `n` bytes asked for at `now`; returns when they may be sent (`>= now`).
    pub fn reserve(&mut self, now: u64, n: u64) -> u64 {
        let Some(rate) = self.rate else {
            return now;
        };
        let burst = BURST.as_nanos() as u64;
        let start = self.next_free.max(now.saturating_sub(burst));
        let span = u128::from(n) * NANOS / u128::from(rate.max(1));
        self.next_free = start.saturating_add(u64::try_from(span).unwrap_or(u64::MAX));
        start.max(now)
    }

    /// A new rate from `now` on. The link time already reserved past `now` is rescaled to
    /// the new rate (the same bytes, at the new pace); off, or from off, forgets it.
    pub fn set_rate(&mut self, now: u64, rate: Rate) {
        match (self.rate, rate) {
            (Some(old), Some(new)) if self.next_free > now && old != new => {
                let debt = u128::from(self.next_free - now);
                let scaled = debt * u128::from(old) / u128::from(new.max(1));
                self.next_free = now.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX));
            }
            (Some(_), Some(_)) => {}
            _ => self.next_free = now,
        }
        self.rate = rate;
    }
}

/// Where a waiter's reserved instant moves when the rate changes from `old` to `new`
/// (both per second), `left` nanoseconds before it: the same bytes at the new pace.
pub fn rescale_wait(left: u64, old: u64, new: u64) -> u64 {
    let scaled = u128::from(left) * u128::from(old) / u128::from(new.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// A limit shared by uploads in flight: a [`Bucket`] on the tokio clock, the count of
/// uploads sharing it (for the grant size), and the time they spent waiting.
#[derive(Debug)]
pub struct Limiter {
    /// The rate in force, bytes per second, 0 for off: read without the lock before every
    /// write, so that an unlimited upload pays one atomic load.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    /// Woken on every rate change: waiters move their instant to the new pace.
    changed: Notify,
    /// Uploads sending under this limit now.
    active: AtomicUsize,
    /// Total time uploads spent waiting for grants, in nanoseconds.
    waited_ns: AtomicU64,
    /// Total bytes granted while the limit was on.
    granted: AtomicU64,
    /// The clock's origin.
    origin: Instant,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate: AtomicU64::new(rate.unwrap_or(0)),
            bucket: Mutex::new(Bucket::new(rate)),
            changed: Notify::new(),
            active: AtomicUsize::new(0),
            waited_ns: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, at: u64) -> Instant {
        self.origin + Duration::from_nanos(at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic elsewhere while holding it leaves a valid bucket: keep going.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate in force; `None`: off.
    pub fn rate(&self) -> Rate {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }

    /// Sets the rate in force (a timetable moved on, a reload, a test). Uploads waiting for
    /// a grant move to the new pace at once.
    pub fn set_rate(&self, rate: Rate) {
        if self.rate() == rate {
            return;
        }
        let now = self.now();
        self.lock().set_rate(now, rate);
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Uploads sharing this limit now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Total time uploads have waited for this limit: growing while it binds.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Total bytes granted under this limit while it was on.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Waits until `n` bytes may go, or `lead` before (see [`KERNEL_QUEUE_ALONE`]); returns
    /// the time waited. With the limit off, at once.
    async fn acquire(&self, n: u64, lead: Duration) -> Duration {
        let lead = u64::try_from(lead.as_nanos()).unwrap_or(u64::MAX);
        if self.rate().is_none() {
            return Duration::ZERO;
        }
        // Listening for rate changes before the reservation is read: a change right after it
        // is not missed.
        let mut changed = std::pin::pin!(self.changed.notified());
        let asked = self.now();
        let (mut rate, mut at) = {
            let mut b = self.lock();
            // The rate may have changed since it was read: the bucket's is the one to use.
            let Some(rate) = b.rate() else {
                return Duration::ZERO;
            };
            (rate, b.reserve(asked, n))
        };
        self.granted.fetch_add(n, Ordering::Relaxed);
        loop {
            let due = at.saturating_sub(lead);
            if due <= self.now() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.instant(due)) => break,
                _ = changed.as_mut() => {
                    // Again listening first, then reading the new rate.
                    changed.set(self.changed.notified());
                    let now = self.now();
                    match self.rate() {
                        None => break,
                        Some(new) => {
                            at = now.saturating_add(rescale_wait(at.saturating_sub(now), rate, new));
                            rate = new;
                        }
                    }
                }
            }
        }
        self.count_wait(asked)
    }

    /// The wait since `asked` (this limit's clock), added to the limit's total of waits.
    fn count_wait(&self, asked: u64) -> Duration {
        let waited = Duration::from_nanos(self.now().saturating_sub(asked));
        self.waited_ns.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        waited
    }

    /// [`Limiter::acquire`] on the calling thread, which it blocks (a sleep until the
    /// reservation, less `lead`), for a process that has nothing else to do meanwhile
    /// (`accio send --limit-rate`, [`Pacer::on_thread`]). A rate change during the wait is
    /// not followed: the bytes go at the reservation made at the rate of the ask (a limit
    /// of its own, as `--limit-rate`'s, never changes).
    fn acquire_on_thread(&self, n: u64, lead: Duration) -> Duration {
        let lead = u64::try_from(lead.as_nanos()).unwrap_or(u64::MAX);
        let asked = self.now();
        let at = {
            let mut b = self.lock();
            if b.rate().is_none() {
                return Duration::ZERO;
            }
            b.reserve(asked, n)
        };
        self.granted.fetch_add(n, Ordering::Relaxed);
        let due = at.saturating_sub(lead);
        loop {
            let now = self.now();
            if due <= now {
                break;
            }
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        self.count_wait(asked)
    }
}

/// One limit in force, for `accio status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RateView {
    /// `host:port`, or `*` for the whole service.
    pub scope: String,
    /// Bytes per second now; `None`: no limit now.
    pub bytes_per_second: Option<u64>,
    /// Whether a timetable sets it.
    pub scheduled: bool,
    /// Uploads sharing it now.
    pub active: u64,
    /// Total seconds uploads waited for it (growing while it binds).
    pub waited_s: u64,
}

/// The scope name of the service-wide limit in [`RateView`]s.
pub const ALL: &str = "*";

#[derive(Debug)]
struct Scoped {
    name: String,
    policy: Policy,
    limiter: Arc<Limiter>,
}

/// The service's limits: one for all uploads together, one per destination. Shared by the
/// pipelines of one process, so that a reload (SIGHUP) changes the limits of the uploads
/// still in flight too.
#[derive(Debug)]
pub struct Rates {
    all: Mutex<Scoped>,
    destinations: Mutex<Vec<Scoped>>,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            all: Mutex::new(Scoped {
                name: ALL.to_string(),
                policy: Policy::Unlimited,
                limiter: Arc::new(Limiter::new(None)),
            }),
            destinations: Mutex::new(Vec::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rates {
    /// Takes the policies of a (new) configuration, applied at `secs` since local midnight.
    /// A destination kept keeps its limiter (its uploads in flight take the new rate); one
    /// dropped keeps its rate for the uploads still holding it.
    pub fn configure(&self, all: Policy, destinations: Vec<(String, Policy)>, secs: u32) {
        {
            let mut a = lock(&self.all);
            a.policy = all;
            a.limiter.set_rate(a.policy.at(secs));
        }
        let mut d = lock(&self.destinations);
        let mut old = std::mem::take(&mut *d);
        for (name, policy) in destinations {
            if d.iter().any(|s| s.name == name) {
                continue;
            }
            let limiter = match old.iter().position(|s| s.name == name) {
                Some(i) => old.swap_remove(i).limiter,
                None => Arc::new(Limiter::new(None)),
            };
            limiter.set_rate(policy.at(secs));
            d.push(Scoped {
                name,
                policy,
                limiter,
            });
        }
    }

    /// Moves every limit to its policy's rate at `secs` since local midnight (a timetable
    /// entry came due). Cheap; called every second while any timetable is configured.
    pub fn tick(&self, secs: u32) {
        {
            let a = lock(&self.all);
            a.limiter.set_rate(a.policy.at(secs));
        }
        for s in lock(&self.destinations).iter() {
            s.limiter.set_rate(s.policy.at(secs));
        }
    }

    /// Whether any limit follows a timetable (and so needs [`tick`](Self::tick)).
    pub fn scheduled(&self) -> bool {
        matches!(lock(&self.all).policy, Policy::Schedule(_))
            || lock(&self.destinations)
                .iter()
                .any(|s| matches!(s.policy, Policy::Schedule(_)))
    }

    /// The limiter of `destination` (`host:port`), if it is configured.
    pub fn destination(&self, destination: &str) -> Option<Arc<Limiter>> {
        lock(&self.destinations)
            .iter()
            .find(|s| s.name == destination)
            .map(|s| s.limiter.clone())
    }

    /// How long uploads to `destination` have waited for bandwidth so far, its limit's
    /// and the service's together: growing while a limit binds them (read it twice to tell
    /// whether it binds now; for the adaptive limit, which need not add connections then).
    pub fn waited(&self, destination: &str) -> Duration {
        self.destination(destination)
            .map_or(Duration::ZERO, |l| l.waited())
            + self.all().waited()
    }

    /// The service-wide limiter.
    pub fn all(&self) -> Arc<Limiter> {
        lock(&self.all).limiter.clone()
    }

    /// A pacer for one upload to `destination`: its destination's limit, then the
    /// service's.
    pub fn pacer(&self, destination: &str) -> Pacer {
        let mut limits: Vec<Arc<Limiter>> = self.destination(destination).into_iter().collect();
        limits.push(self.all());
        Pacer::new(limits)
    }

    /// Every limit configured (the service's first, then each destination's), with the
    /// rate in force now.
    pub fn view(&self) -> Vec<RateView> {
        let one = |s: &Scoped| RateView {
            scope: s.name.clone(),
            bytes_per_second: s.limiter.rate(),
            scheduled: matches!(s.policy, Policy::Schedule(_)),
            active: s.limiter.active() as u64,
            waited_s: s.limiter.waited().as_secs(),
        };
        let set = |s: &&Scoped| s.policy != Policy::Unlimited;
        let mut v: Vec<RateView> = std::iter::once(&*lock(&self.all))
            .filter(set)
            .map(one)
            .collect();
        v.extend(lock(&self.destinations).iter().filter(set).map(one));
        v
    }
}

/// Seconds since midnight, local time, now (what timetables are written in). Falls back to
/// UTC where the local time cannot be had.
pub fn local_time_of_day() -> u32 {
    // SAFETY: time(NULL) only returns; localtime_r writes the zeroed tm we pass and reads
    // the time we pass, both valid for the call.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return (t.rem_euclid(i64::from(DAY) as libc::time_t)) as u32;
        }
        (tm.tm_hour as u32 * 3600 + tm.tm_min as u32 * 60 + (tm.tm_sec as u32).min(59)) % DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_as_curl_and_rclone_write_them() {
        let ok = |s: &str| parse_rate(s).unwrap();
        assert_eq!(ok("500K"), Some(500 * 1024));
        assert_eq!(ok("4M"), Some(4 << 20));
        assert_eq!(ok("4MiB/s"), Some(4 << 20));
        assert_eq!(ok("4mb/s"), Some(4 << 20));
        assert_eq!(ok("4 MiB/s"), Some(4 << 20));
        assert_eq!(ok("1.5K"), Some(1536));
        assert_eq!(ok("2048"), Some(2048));
        assert_eq!(ok("2048B/s"), Some(2048));
        assert_eq!(ok("1G"), Some(1 << 30));
        assert_eq!(ok("off"), None);
        assert_eq!(ok("OFF"), None);
        for bad in [
            "",
            "K",
            "4X",
            "-1M",
            "1e6",
            "inf",
            "nan",
            "0",
            "0K",
            "100",
            ".5M",
            "5.M",
            "1.2.3M",
            "4 M B",
            "4MiB/h",
            "99999999T",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_rate("0").unwrap_err().contains("off"));
        assert!(parse_rate("100").unwrap_err().contains("1K"));
    }

    #[test]
    fn rates_format_back_to_themselves() {
        for r in [1024, 1536, 4 << 20, 1 << 30, 3 << 40, 1500 * 1024 + 1] {
            assert_eq!(parse_rate(&format_rate(Some(r))).unwrap(), Some(r));
        }
        assert_eq!(format_rate(Some(4 << 20)), "4MiB/s");
        assert_eq!(format_rate(None), "off");
    }

    #[test]
    fn times_of_day() {
        assert_eq!(parse_time_of_day("08:00"), Ok(8 * 3600));
        assert_eq!(parse_time_of_day("23:59:59"), Ok(DAY - 1));
        assert_eq!(parse_time_of_day("00:00"), Ok(0));
        for bad in [
            "24:00",
            "8:00",
            "08:60",
            "08",
            "08:00:00:00",
            "ab:cd",
            "",
            "08:0",
        ] {
            assert!(parse_time_of_day(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_time_of_day(8 * 3600 + 30 * 60), "08:30");
        assert_eq!(format_time_of_day(61), "00:01:01");
    }

    #[test]
    fn a_timetable_wraps_around_midnight() {
        let s = Schedule::new(vec![(8 * 3600, Some(1 << 20)), (18 * 3600, None)]).unwrap();
        assert_eq!(s.at(7 * 3600), None, "before 08:00: the evening's entry");
        assert_eq!(s.at(8 * 3600), Some(1 << 20));
        assert_eq!(s.at(17 * 3600 + 3599), Some(1 << 20));
        assert_eq!(s.at(18 * 3600), None);
        assert!(Schedule::new(vec![]).is_err());
        assert_eq!(
            Schedule::new(vec![(10, None), (10, None)]).unwrap_err().0,
            1
        );
        assert_eq!(Schedule::new(vec![(10, None), (5, None)]).unwrap_err().0, 1);
    }

    #[test]
    fn grants_share_one_slice_among_the_uploads() {
        assert_eq!(chunk(4 << 20, 1), (4 << 20) / 20);
        assert_eq!(chunk(4 << 20, 8), (4 << 20) / 160);
        assert_eq!(chunk(1024, 8), MIN_CHUNK);
        assert_eq!(chunk(1 << 40, 1), MAX_CHUNK);
        assert_eq!(chunk(4 << 20, 0), chunk(4 << 20, 1));
    }

    const SEC: u64 = 1_000_000_000;

    /// Uploads on a simulated clock: each asks for its grant, waits for it, "sends" it at
    /// once, and asks again. Returns (time, upload, bytes) of every send.
    fn simulate(rate: u64, uploads: usize, until: u64) -> Vec<(u64, usize, u64)> {
        let mut b = Bucket::new(Some(rate));
        let mut ready = vec![0u64; uploads];
        let mut sends = Vec::new();
        loop {
            // The upload whose turn to ask comes first (ties: lowest index).
            let (i, &now) = ready
                .iter()
                .enumerate()
                .min_by_key(|(i, t)| (**t, *i))
                .unwrap();
            if now >= until {
                return sends;
            }
            let n = chunk(rate, uploads);
            let at = b.reserve(now, n);
            sends.push((at, i, n));
            ready[i] = at;
        }
    }

    #[test]
    fn eight_uploads_hold_the_rate_and_share_it() {
        let rate = 4u64 << 20;
        let sends = simulate(rate, 8, 20 * SEC);
        for start in (0..18 * SEC).step_by((SEC / 4) as usize) {
            let window: Vec<_> = sends
                .iter()
                .filter(|(t, _, _)| (start..start + 2 * SEC).contains(t))
                .collect();
            let total: u64 = window.iter().map(|(_, _, n)| n).sum();
            let want = 2 * rate;
            assert!(
                total.abs_diff(want) * 100 <= want * 2,
                "window at {start}: {total} vs {want}"
            );
            for u in 0..8 {
                let mine: u64 = window.iter().filter(|s| s.1 == u).map(|s| s.2).sum();
                let share = want / 8;
                assert!(
                    mine.abs_diff(share) * 100 <= share * 10,
                    "upload {u}: {mine} vs {share}"
                );
            }
        }
    }

    #[test]
    fn an_idle_limit_lets_a_small_grant_go_at_once() {
        let mut b = Bucket::new(Some(1 << 20));
        assert_eq!(b.reserve(5 * SEC, 4096), 5 * SEC);
        assert_eq!(b.reserve(5 * SEC, 4096), 5 * SEC, "within the burst");
        // Much later, idle again.
        assert_eq!(b.reserve(60 * SEC, 4096), 60 * SEC);
    }

    #[test]
    fn a_rate_change_rescales_what_is_reserved() {
        let mut b = Bucket::new(Some(1 << 20));
        b.reserve(0, 0);
        let at = b.reserve(0, 1 << 20);
        assert_eq!(at, 0);
        // A second MiB would go at 1 s; halving the rate at 0.5 s makes the half MiB left
        // take a second.
        b.set_rate(SEC / 2, Some(1 << 19));
        assert_eq!(b.reserve(SEC / 2, 1), 3 * SEC / 2);
        b.set_rate(SEC, None);
        assert_eq!(b.reserve(SEC, 1 << 30), SEC);
        b.set_rate(SEC, Some(1 << 20));
        assert_eq!(b.reserve(SEC, 1), SEC);
        assert_eq!(rescale_wait(SEC, 2, 1), 2 * SEC);
        assert_eq!(rescale_wait(u64::MAX, u64::MAX, 1), u64::MAX);
    }

    proptest! {
        /// Whatever the grants asked, their times and the rate changes: no grant goes before
        /// it is asked for, and the bytes granted from any instant on are at most the rate
        /// times the time, plus the burst and one grant.
        #[test]
        fn never_faster_than_the_rate(
            rate in MIN_RATE..(1u64 << 32),
            asks in proptest::collection::vec((0u64..SEC, 1u64..(1 << 22)), 1..200),
        ) {
            let mut b = Bucket::new(Some(rate));
            let mut now = 0u64;
            let mut sends = Vec::new();
            for (gap, n) in asks {
                now += gap;
                let at = b.reserve(now, n);
                prop_assert!(at >= now);
                sends.push((at, n));
                // Uploads ask again once their grant is due.
                now = now.max(at.min(now + SEC));
            }
            let max_n = sends.iter().map(|s| s.1).max().unwrap_or(0);
            let burst = u128::from(rate) * BURST.as_nanos() / NANOS;
            for &(from, _) in &sends {
                let to = sends.iter().map(|s| s.0).max().unwrap_or(from);
                let got: u128 = sends.iter().filter(|s| s.0 >= from && s.0 <= to).map(|s| u128::from(s.1)).sum();
                let allowed = u128::from(rate) * u128::from(to - from) / NANOS + burst + 2 * u128::from(max_n);
                prop_assert!(got <= allowed, "{got} > {allowed}");
            }
        }

        /// Rate changes at any point never panic and never grant in the past.
        #[test]
        fn rate_changes_are_safe(
            ops in proptest::collection::vec((0u64..SEC, proptest::option::of(MIN_RATE..MAX_RATE), 0u64..u64::MAX / 4), 1..100),
        ) {
            let mut b = Bucket::new(None);
            let mut now = 0u64;
            for (gap, rate, n) in ops {
                now = now.saturating_add(gap);
                b.set_rate(now, rate);
                let at = b.reserve(now, n);
                prop_assert!(at >= now);
            }
        }

        /// Any text: parsing never panics, and what parses formats back to the same rate.
        #[test]
        fn parse_any_text(s in "\\PC{0,12}") {
            if let Ok(r) = parse_rate(&s) {
                prop_assert_eq!(parse_rate(&format_rate(r)).unwrap(), r);
            }
            let _ = parse_time_of_day(&s);
        }
    }

    #[test]
    fn rates_keep_a_destination_s_limiter_across_configurations() {
        let r = Rates::default();
        let day = Schedule::new(vec![(8 * 3600, Some(1 << 20)), (18 * 3600, None)]).unwrap();
        r.configure(
            Policy::Fixed(4 << 20),
            vec![
                ("a:1".into(), Policy::Schedule(day)),
                ("b:2".into(), Policy::Unlimited),
            ],
            9 * 3600,
        );
        let a = r.destination("a:1").unwrap();
        assert_eq!(a.rate(), Some(1 << 20));
        assert!(r.scheduled());
        // Only the limits set are shown: the service's and a's.
        let v = r.view();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(
            (v[0].scope.as_str(), v[0].bytes_per_second),
            (ALL, Some(4 << 20))
        );
        assert!(v[1].scheduled);
        // The timetable moves on.
        r.tick(19 * 3600);
        assert_eq!(a.rate(), None);
        // A new configuration: the same limiter (uploads in flight hold it), a new rate.
        r.configure(
            Policy::Unlimited,
            vec![("a:1".into(), Policy::Fixed(2 << 20))],
            0,
        );
        assert!(Arc::ptr_eq(&a, &r.destination("a:1").unwrap()));
        assert_eq!(a.rate(), Some(2 << 20));
        assert_eq!(r.all().rate(), None);
        assert!(r.destination("b:2").is_none());
        assert!(!r.scheduled());
        // A pacer counts itself under its destination's limit and the service's.
        let p = r.pacer("a:1");
        assert_eq!((a.active(), r.all().active()), (1, 1));
        drop(p);
        assert_eq!((a.active(), r.all().active()), (0, 0));
        assert_eq!(r.waited("a:1"), Duration::ZERO);
    }

    #[test]
    fn the_kernel_is_paced_around_an_exclusive_limit_and_above_a_shared_one() {
        const RATE: u64 = 2 << 20;
        let target = chunk_of(RATE, 1, KERNEL_QUEUE_ALONE);
        let own = Pacer::new(vec![Arc::new(Limiter::new(Some(RATE)))]).exclusive();
        assert!(own.trims_kernel());
        assert_eq!(
            own.kernel_percent(false, Some(0)),
            100 - KERNEL_TRIM_PERCENT
        );
        assert_eq!(
            own.kernel_percent(false, Some(target - 1)),
            100 - KERNEL_TRIM_PERCENT
        );
        assert_eq!(
            own.kernel_percent(false, Some(target)),
            100 + KERNEL_TRIM_PERCENT
        );
        // The queue unknown: the limit itself; the last grant: the limit itself.
        assert_eq!(own.kernel_percent(false, None), 100);
        assert_eq!(own.kernel_percent(true, Some(0)), 100);
        assert_eq!(own.kernel_percent(true, Some(10 * target)), 100);
        // A limit of the service, even with one upload: the headroom, whatever is queued.
        let shared = Arc::new(Limiter::new(Some(RATE)));
        let p = Pacer::new(vec![shared.clone()]);
        assert!(!p.trims_kernel());
        assert_eq!(p.kernel_percent(false, Some(0)), KERNEL_HEADROOM_PERCENT);
        assert_eq!(p.kernel_percent(false, None), KERNEL_HEADROOM_PERCENT);
        assert_eq!(p.kernel_percent(true, Some(0)), 100);
        // An exclusive pacer sharing its limit (not `accio send`): no longer alone.
        let two = Pacer::new(vec![shared.clone()]).exclusive();
        assert!(!two.trims_kernel());
        drop(p);
        assert!(two.trims_kernel());
    }

    /// The trimmed pacing of an upload alone, simulated (1 ms steps): a grant of a second
    /// of the limit handed each second at its reservation, the kernel sending at the
    /// percentage [`Pacer::kernel_percent`] answers, off by its own `error_permille`, after a
    /// start that leaves it `ahead_ms` ahead of the grants (on loopback the kernel sends the
    /// first ten segments at once, 640 KiB). The queue never grows past the target and a
    /// twentieth of a grant (the kernel is never behind the grants by more), and once the
    /// trim has made up for the start it is never empty when a grant arrives.
    fn simulate_trimmed(ahead_ms: u64, error_permille: i64) -> Result<(), String> {
        const RATE: u64 = 2 << 20;
        let pacer = Pacer::new(vec![Arc::new(Limiter::new(Some(RATE)))]).exclusive();
        let grant = chunk_of(RATE, 1, KERNEL_SLICE_ALONE);
        let target = chunk_of(RATE, 1, KERNEL_QUEUE_ALONE);
        let mut queue = grant.saturating_sub(RATE * ahead_ms / 1000);
        let mut percent = 100 - KERNEL_TRIM_PERCENT;
        // The seconds it takes the trim (less the kernel's error) to make up for the start.
        let net = (KERNEL_TRIM_PERCENT as i64 * 10 - error_permille).max(1) as u64;
        let settled = ahead_ms / net + 2;
        for second in 1..=60u64 {
            let per_ms = (RATE * percent / 100) as i64 * (1000 + error_permille) / 1000 / 1000;
            for _ in 0..1000 {
                queue -= queue.min(per_ms as u64);
            }
            if queue == 0 && second > settled {
                return Err(format!("empty at {second} s"));
            }
            if queue > target + grant / 20 {
                return Err(format!("queue {queue} at {second} s"));
            }
            percent = pacer.kernel_percent(false, Some(queue));
            queue += grant;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_trimmed_kernel_keeps_a_short_queue(ahead in 0u64..400, error in -10i64..=10) {
            prop_assert_eq!(simulate_trimmed(ahead, error), Ok(()));
        }
    }

    #[tokio::test]
    async fn a_kernel_paced_upload_asks_for_a_longer_slice_after_its_first() {
        let a = Arc::new(Limiter::new(Some(8 << 20)));
        let b = Arc::new(Limiter::new(Some(4 << 20)));
        let other = Pacer::new(vec![a.clone()]);
        let mut p = Pacer::new(vec![a.clone(), b.clone()]);
        // a: 8 MiB/s for 2 uploads, b: 4 MiB/s for 1: the smaller share is 4 MiB/s.
        assert_eq!(p.share(), Some(4 << 20));
        p.set_kernel_paced(true);
        assert!(p.kernel_paced() && p.kernel_pacing_allowed());
        // The first grant is a SLICE's, the next ones a KERNEL_SLICE's (of b's share).
        assert_eq!(p.grant(u64::MAX).await, Grant::Bytes(chunk(4 << 20, 1)));
        assert_eq!(
            p.grant(u64::MAX).await,
            Grant::Bytes(chunk_of(4 << 20, 1, KERNEL_SLICE))
        );
        drop(other);
        // Alone under both limits now, but they are not its own: still a KERNEL_SLICE.
        assert_eq!(
            p.grant(u64::MAX).await,
            Grant::Bytes(chunk_of(4 << 20, 1, KERNEL_SLICE))
        );
        // An exclusive pacer (accio send --limit-rate): a second's grants.
        let mut own = Pacer::new(vec![Arc::new(Limiter::new(Some(4 << 20)))]).exclusive();
        own.set_kernel_paced(true);
        assert_eq!(own.grant(u64::MAX).await, Grant::Bytes(chunk(4 << 20, 1)));
        assert_eq!(
            own.grant(u64::MAX).await,
            Grant::Bytes(chunk_of(4 << 20, 1, KERNEL_SLICE_ALONE))
        );
        b.set_rate(None);
        assert_eq!(p.share(), Some(8 << 20));
        a.set_rate(None);
        assert_eq!(p.share(), None);
        assert_eq!(p.grant(10).await, Grant::Unlimited);
        assert!(!Pacer::new(vec![])
            .without_kernel_pacing()
            .kernel_pacing_allowed());
    }

    #[test]
    fn grants_on_the_thread_are_the_same_grants() {
        // The same sizes as `grant`'s (a SLICE's, then a second's), counted the same way,
        // without a runtime: the second waits for the first's reservation (50 ms at most).
        const RATE: u64 = 64 << 20;
        let l = Arc::new(Limiter::new(Some(RATE)));
        let mut own = Pacer::new(vec![l.clone()]).exclusive().on_thread();
        assert!(own.sends_on_thread());
        assert!(!Pacer::new(vec![]).sends_on_thread());
        own.set_kernel_paced(true);
        assert_eq!(own.grant_on_thread(u64::MAX), Grant::Bytes(chunk(RATE, 1)));
        assert_eq!(
            own.grant_on_thread(u64::MAX),
            Grant::Bytes(chunk_of(RATE, 1, KERNEL_SLICE_ALONE))
        );
        assert_eq!(own.grant_on_thread(10), Grant::Bytes(10));
        assert_eq!(
            l.granted(),
            chunk(RATE, 1) + chunk_of(RATE, 1, KERNEL_SLICE_ALONE) + 10
        );
        assert!(own.waited() > Duration::ZERO);
        l.set_rate(None);
        assert_eq!(own.grant_on_thread(10), Grant::Unlimited);
    }

    #[tokio::test]
    async fn waiters_follow_a_rate_change() {
        let l = Arc::new(Limiter::new(Some(1 << 20)));
        let mut p = Pacer::new(vec![l.clone()]);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_millis(500) {
            if let Grant::Bytes(n) = p.grant(u64::MAX).await {
                sent += n;
            }
        }
        // Half a second at 1 MiB/s, plus the burst and one grant; generous for a loaded
        // machine, which can only make it slower.
        assert!(sent <= (1 << 20) / 2 + (1 << 20) / 10, "{sent}");
        assert!(sent >= (1 << 20) / 4, "{sent}");
        assert!(p.waited() > Duration::ZERO);
        // A waiter far in the future (a grant at 1K/s) is released when the limit goes off.
        // (The time reserved at 1 MiB/s, rescaled to 1K/s, is many seconds.)
        l.set_rate(Some(1024));
        let l2 = l.clone();
        let off = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            l2.set_rate(None);
        });
        let before = Instant::now();
        let _ = p.grant(1 << 20).await;
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "{:?}",
            before.elapsed()
        );
        off.await.unwrap();
        assert_eq!(p.grant(10).await, Grant::Unlimited);
        assert_eq!(l.active(), 1);
        drop(p);
        assert_eq!(l.active(), 0);
    }
}
