//! One destination's limit of uploads in flight, which adapts between 1 and its cap.
//!
//! The lane asks it [`Limiter::limit`], tells it when an attempt starts
//! ([`Limiter::on_start`], which hands back the attempt's [`Ticket`]) and how the attempt
//! went with that ticket ([`Limiter::on_success`], [`Limiter::on_failure`]); the answer is the
//! change of the limit, if any, for the log. It also tells when an attempt without its
//! greeting is overdue ([`Limiter::overdue_after`]) and whether a later one overtook it
//! ([`Limiter::overtaken`]). Everything else is the limiter's own policy.
//!
//! The signal is the greeting time: from the connection being established to the whole
//! `accio\r\n` (half a round trip plus whatever the server makes us wait: its accept queue,
//! a busy worker pool). Only real greetings are samples; a failed attempt is not one, nor
//! name resolution or the TCP handshake (the client measures from the established
//! connection).
//!
//! After Vector's adaptive request concurrency and Netflix's gradient2, not TCP's per-packet
//! reactions, so that one slow greeting or one hung worker does not cut the limit:
//! - **Windows.** Samples are gathered over a window (the usual length of an attempt, between
//!   [`MIN_WINDOW`] and [`MAX_WINDOW`], and with at least [`WINDOW_OUTCOMES`] outcomes unless
//!   it lasted [`MAX_WINDOW`]); the limit is judged once per window, on the window's lower
//!   quartile: up to three greetings in four may be outliers (a lost greeting retransmitted
//!   200 ms later, a lost handshake ACK a second later, one slow worker), while queueing
//!   delays them all.
//! - **Baseline.** The long-term greeting time is a mean and a mean deviation of past
//!   windows, never a bare minimum. It follows a window that is faster at once by half, and
//!   a slower one only as time passes ([`BASELINE_AGE`]): queueing is not learnt as normal
//!   within a few windows, but a route that became slower for good is, within a minute.
//! - **Threshold.** A window is queueing when its mean exceeds the baseline by more than
//!   [`DEVIATIONS`] deviations (and at least [`TOLERANCE`] of the baseline, plus [`SLACK`]).
//!   The cut is the ratio of threshold to mean, bounded to [`MIN_CUT`]..[`MAX_CUT`], once per
//!   window.
//! - **Drain.** The queue a cut leaves behind drains for about as long as it made greetings
//!   wait (the window's greeting time above the baseline): attempts started before it
//!   drained still meet it, and are not counted for the next judgement (judged on them, a
//!   cut was followed by another, or the undrained queue read as a slower route).
//! - **Drift.** When two cuts in a row leave the greeting time where it was, the limit was
//!   not the cause (a longer route, another client's load): the baseline takes the new level
//!   at once and the cutting stops. Queueing alone never cuts below [`QUEUE_FLOOR`].
//! - **Timeouts.** A connect or greeting timeout is a signal only when timeouts are at least
//!   one outcome in [`TIMEOUT_SHARE`] of their window: a hung worker among healthy ones is an
//!   outlier, a server whose accept queue overflows is not.
//! - **Growth.** It starts at [`INITIAL_LIMIT`] (a server that serves one at a time gets a
//!   few connections, not dozens it would let time out) and grows fast while nothing
//!   signalled yet: by three per success that found the lane full with a greeting under the
//!   threshold (quadrupling per round: a round is a whole attempt, three round trips or
//!   more, where TCP's slow start doubles per round trip). Slow start sees a queue only a
//!   round after it built it, so it stops growing at the first sign of one: the threshold
//!   with [`SLOW_START_SLACK`] for [`SLACK`] (after HyStart); a window above that, not yet
//!   queueing, ends it. A queueing window ends it with a cut of at least half (the queue
//!   it sees was built a round earlier, at a quarter of the limit: as TCP's slow start on
//!   its first loss). After that, by [`GROWTH`] per window that found the lane full and
//!   was not queueing.

use std::time::{Duration, Instant};

mod overdue;
pub use overdue::{MIN_OVERDUE, MIN_SUSPECT};

/// Limit of a new adaptive lane (or its cap, if smaller).
pub const INITIAL_LIMIT: usize = 4;
/// Windows last at least this long (a few attempts on loopback) ...
pub const MIN_WINDOW: Duration = Duration::from_millis(20);
/// ... and at most this long (a server that takes seconds per upload is still judged about
/// once a second).
pub const MAX_WINDOW: Duration = Duration::from_secs(1);
/// A window is queueing when its mean greeting time exceeds the baseline by this many
/// deviations ...
pub const DEVIATIONS: f64 = 3.0;
/// ... and by at least this share of the baseline (a steady server has next to no
/// deviation) ...
pub const TOLERANCE: f64 = 0.5;
/// ... plus this much (the noise of a loaded machine on loopback).
pub const SLACK: Duration = Duration::from_millis(5);
/// In slow start, growth stops at the threshold with this much for [`SLACK`]: 1 ms away,
/// the queue of a pool of 32 grew to 200 connections before a window showed it.
pub const SLOW_START_SLACK: Duration = Duration::from_millis(1);
/// Time constant of the baseline's rise towards slower windows.
pub const BASELINE_AGE: Duration = Duration::from_secs(30);
/// Weight of a faster window in the baseline.
const BASELINE_FALL: f64 = 0.5;
/// A cut keeps at least this share of the limit ...
pub const MIN_CUT: f64 = 0.5;
/// ... and at most this share.
pub const MAX_CUT: f64 = 0.9;
/// Queueing alone (greeting times, no timeouts) does not cut the limit below this.
pub const QUEUE_FLOOR: f64 = INITIAL_LIMIT as f64;
/// The cut for timeouts alone.
pub const DECREASE: f64 = 0.75;
/// Timeouts are a signal when they are at least one outcome of this many in their window.
pub const TIMEOUT_SHARE: u32 = 5;
/// Growth per success in slow start: the limit quadruples per round, so a distant server is
/// reached in a few rounds (4 → 16 → 64 → 256).
pub const SLOW_START_STEP: f64 = 3.0;
/// Growth per window after a signal.
pub const GROWTH: f64 = 1.1;
/// Two cuts in a row that left the greeting time above this share of where it was: the
/// limit was not the cause.
const FUTILE: f64 = 0.9;
/// A window shorter than [`MAX_WINDOW`] is judged only once it holds this
/// many outcomes (greeting times and timeouts): with a small limit, the quartile of three
/// greeting times on a lossy link (a lost greeting is retransmitted 200 ms later, a lost
/// handshake ACK a second later) is an outlier too often, and so is one timeout among four
/// outcomes.
pub const WINDOW_OUTCOMES: u32 = 8;
/// Greeting times kept per window for its quartile (the rest only counted).
const WINDOW_SAMPLES: usize = 512;
/// Weights of a sample in the smoothed greeting time and its deviation (RFC 6298's).
const SAMPLE_WEIGHT: f64 = 0.125;
const SAMPLE_DEV_WEIGHT: f64 = 0.25;

/// Adaptive limit of uploads in flight for one destination.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// The destination's cap (its own `concurrency`, else the global one).
    cap: usize,
    /// `adaptive = false` pins the limit at the cap.
    adaptive: bool,
    /// Current limit, fractional so that growth by a share adds up.
    limit: f64,
    /// No signal seen yet: growth by [`SLOW_START_STEP`] per success.
    slow_start: bool,
    /// Long-term greeting time of windows, and its mean deviation (seconds).
    baseline: Option<(f64, f64)>,
    /// Smoothed greeting time per sample and its deviation (seconds), for when an attempt
    /// is overdue and `accio status`.
    smoothed: Option<(f64, f64)>,
    /// Smoothed length of an attempt, start to end (the window's length).
    attempt: Option<Duration>,
    window: Window,
    /// The mean of the window that caused the last cut, and how many cuts in a row left it
    /// where it was.
    cut_at: Option<f64>,
    futile: u32,
    /// When the limit was last cut, plus the time the old limit's queue takes to drain:
    /// only attempts started after it tell whether the cut was enough (those started
    /// before met the old limit's queue; a server that serves one at a time takes seconds
    /// to drain it).
    cut_time: Option<Instant>,
    /// The start of the latest-started attempt that got its greeting.
    latest_greeted: Option<Instant>,
    /// Starts of the attempts in flight (how many started at each instant).
    starts: std::collections::BTreeMap<Instant, u32>,
    /// When an attempt last ended.
    last_end: Option<Instant>,
    /// The fastest greeting so far (seconds): slow start's yardstick until the first
    /// window gives a baseline.
    fastest: Option<f64>,
    /// The last window's judgement, until the lane takes it for the debug log.
    verdict: Option<Verdict>,
}

/// How a window was judged, for the debug log: its greeting time (lower quartile, of all
/// and of the attempts started after the last cut), the threshold it met, its outcomes, and
/// the limit before and after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub len: Duration,
    pub quartile: Option<Duration>,
    pub fresh: Option<Duration>,
    pub threshold: Option<Duration>,
    pub samples: u32,
    pub timeouts: u32,
    pub full: bool,
    pub from: usize,
    pub to: usize,
    pub what: &'static str,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "window of {:.1?}: {} greetings (quartile {:.1?}, fresh {:.1?}, threshold {:.1?}), {} timeouts, full {}: {} {} -> {}",
            self.len,
            self.samples,
            self.quartile,
            self.fresh,
            self.threshold,
            self.timeouts,
            self.full,
            self.what,
            self.from,
            self.to
        )
    }
}

/// What the current window gathered.
#[derive(Debug, Clone, Default)]
struct Window {
    start: Option<Instant>,
    samples: u32,
    /// Greeting times (the first [`WINDOW_SAMPLES`]).
    all: Vec<f64>,
    /// Of them, those of attempts started after the last cut.
    fresh: Vec<f64>,
    timeouts: u32,
    /// An attempt that ended in it found the lane full when it started.
    full: bool,
    /// An upload that ended in it waited for a bandwidth limit: bandwidth, not the server,
    /// bound it, and more connections would only share the same bandwidth.
    paced: bool,
}

/// What the limiter needs to know again when an attempt it saw start ends: kept by the
/// lane with the attempt, handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    started: Instant,
    /// The lane was at its limit when it started (only then does a success say the limit
    /// was too small).
    lane_full: bool,
    /// Suspected of waiting on a hung worker (an attempt started after it was greeted, and
    /// it was not, well past the usual greeting time): no longer counted against the lane's
    /// limit ([`Limiter::suspect_after`]).
    released: bool,
}

impl Ticket {
    /// When its attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// No longer counted against its lane's limit.
    pub fn released(&self) -> bool {
        self.released
    }

    /// Takes it out of its lane's count (the caller frees the slot once).
    pub fn release(&mut self) {
        self.released = true;
    }
}

/// Why a limit changed, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Grew,
    Shrank,
}

/// The window's greeting time: the lower quartile of `v` (reordered), if any.
fn typical(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 4;
    v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    Some(v[mid])
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn dur(s: f64) -> Duration {
    // Samples are durations, so their means are finite and not negative; clamp anyway.
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

impl Limiter {
    pub fn new(cap: usize, adaptive: bool) -> Limiter {
        let cap = cap.max(1);
        Limiter {
            cap,
            adaptive,
            limit: if adaptive {
                INITIAL_LIMIT.min(cap) as f64
            } else {
                cap as f64
            },
            slow_start: true,
            baseline: None,
            smoothed: None,
            attempt: None,
            window: Window::default(),
            cut_at: None,
            futile: 0,
            cut_time: None,
            latest_greeted: None,
            starts: std::collections::BTreeMap::new(),
            last_end: None,
            fastest: None,
            verdict: None,
        }
    }

    /// The last window's judgement, once (for the debug log).
    pub fn take_verdict(&mut self) -> Option<Verdict> {
        self.verdict.take()
    }

    /// An attempt starts at `now`; `lane_full`: the lane is at its limit with it, or leaves
    /// ready files behind. The ticket goes back with the attempt's outcome.
    pub fn on_start(&mut self, lane_full: bool, now: Instant) -> Ticket {
        self.window.start.get_or_insert(now);
        *self.starts.entry(now).or_default() += 1;
        Ticket {
            started: now,
            lane_full,
            released: false,
        }
    }

    /// The attempt of `t` delivered, after a greeting that took `greeting`; `paced`: its
    /// upload waited for a bandwidth limit (the limit does not grow on it).
    pub fn on_success(
        &mut self,
        t: Ticket,
        greeting: Duration,
        paced: bool,
        now: Instant,
    ) -> Option<Change> {
        self.window.paced |= paced;
        self.ended(t, Some(greeting), false, !paced, now)
    }

    /// The attempt of `t` failed: after a greeting that took `greeting`, or before any
    /// (`None`). `congestion`: its error is a sign of a server queueing us (a greeting or
    /// connect timeout, a reset).
    pub fn on_failure(
        &mut self,
        t: Ticket,
        greeting: Option<Duration>,
        congestion: bool,
        now: Instant,
    ) -> Option<Change> {
        self.ended(t, greeting, congestion, false, now)
    }

    /// The destination's cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Whether the limit adapts (else it is pinned at the cap).
    pub fn adaptive(&self) -> bool {
        self.adaptive
    }

    /// Uploads in flight allowed now.
    pub fn limit(&self) -> usize {
        if !self.adaptive {
            return self.cap;
        }
        (self.limit.floor() as usize).clamp(1, self.cap)
    }

    /// The long-term greeting time, if any window ended with samples.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(|(m, _)| dur(m))
    }

    /// The smoothed greeting time, if any sample was taken.
    pub fn smoothed(&self) -> Option<Duration> {
        self.smoothed.map(|(m, _)| dur(m))
    }

    /// The attempt of `t` ended without an outcome (its task panicked or was aborted).
    pub fn forget(&mut self, t: Ticket, now: Instant) {
        self.end(t, now);
    }

    fn end(&mut self, t: Ticket, now: Instant) {
        if let Some(n) = self.starts.get_mut(&t.started) {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&t.started);
            }
        }
        self.last_end = Some(now);
    }

    /// The greeting time above which a success does not grow the limit in slow start: the
    /// threshold with [`SLOW_START_SLACK`] for [`SLACK`]. Slow start quadruples the limit per
    /// round and sees a queue only a round after it built it, so it stops at the first
    /// sign of one (HyStart's delay increase), not at the level that is cut.
    fn slow_start_threshold(&self) -> Option<f64> {
        self.baseline
            .map(|(m, d)| m + (DEVIATIONS * d).max(TOLERANCE * m) + secs(SLOW_START_SLACK))
    }

    /// The greeting time above which a window is taken to be queueing.
    fn threshold(&self) -> Option<f64> {
        self.baseline
            .map(|(m, d)| m + (DEVIATIONS * d).max(TOLERANCE * m) + secs(SLACK))
    }

    fn window_len(&self) -> Duration {
        self.attempt
            .unwrap_or(MIN_WINDOW)
            .clamp(MIN_WINDOW, MAX_WINDOW)
    }

    fn ended(
        &mut self,
        t: Ticket,
        greeting: Option<Duration>,
        congestion: bool,
        ok: bool,
        now: Instant,
    ) -> Option<Change> {
        self.end(t, now);
        let took = now.saturating_duration_since(t.started);
        self.attempt = Some(match self.attempt {
            None => took,
            Some(a) => a.mul_f64(1.0 - SAMPLE_WEIGHT) + took.mul_f64(SAMPLE_WEIGHT),
        });
        let mut change = None;
        if let Some(g) = greeting {
            self.latest_greeted = Some(self.latest_greeted.map_or(t.started, |l| l.max(t.started)));
            let g = secs(g);
            self.smoothed = Some(match self.smoothed {
                None => (g, g / 2.0),
                Some((m, d)) => (
                    m + SAMPLE_WEIGHT * (g - m),
                    d + SAMPLE_DEV_WEIGHT * ((g - m).abs() - d),
                ),
            });
            self.window.samples += 1;
            if self.window.all.len() < WINDOW_SAMPLES {
                self.window.all.push(g);
                if self.cut_time.map_or(true, |c| t.started >= c) {
                    self.window.fresh.push(g);
                }
            }
            // Slow start: each success that found the lane full, with a greeting that does
            // not say queueing, adds one.
            // Before the first window gave a baseline, the fastest greeting so far stands in
            // for it (a server that serves one at a time greets the first at once and makes
            // the others wait: they are not fast).
            self.fastest = Some(self.fastest.map_or(g, |f| f.min(g)));
            let threshold = self
                .slow_start_threshold()
                .or_else(|| self.fastest.map(|f| f + TOLERANCE * f + secs(SLACK)));
            let fast = threshold.map_or(true, |th| g <= th);
            if self.adaptive && self.slow_start && ok && t.lane_full && fast {
                change = self.set(self.limit + SLOW_START_STEP);
            }
        }
        // Like greeting times, a timeout says something about the current limit only if
        // its attempt started after the last cut.
        if congestion && self.cut_time.map_or(true, |c| t.started >= c) {
            self.window.timeouts += 1;
        }
        self.window.full |= t.lane_full;
        let start = *self.window.start.get_or_insert(t.started);
        let len = now.saturating_duration_since(start);
        let outcomes = self.window.samples + self.window.timeouts;
        if len >= MAX_WINDOW || (len >= self.window_len() && outcomes >= WINDOW_OUTCOMES) {
            change = self
                .judge(now, now.saturating_duration_since(start))
                .or(change);
            self.window = Window {
                start: Some(now),
                ..Window::default()
            };
        }
        change
    }

    /// The window of length `len` ended: judge it, then learn from it.
    fn judge(&mut self, now: Instant, len: Duration) -> Option<Change> {
        let mut w = std::mem::take(&mut self.window);
        // Lower quartiles: a lost greeting (retransmitted 200 ms later) or one slow worker
        // among many is an outlier, not the window's greeting time; queueing delays all.
        let mean = typical(&mut w.all);
        // Queueing is judged on the attempts that met the current limit.
        let fresh = typical(&mut w.fresh);
        let timeouts = w.timeouts > 0 && w.timeouts * TIMEOUT_SHARE >= w.timeouts + w.samples;
        let threshold = self.threshold();
        let queueing = match (fresh, threshold) {
            (Some(m), Some(th)) => m > th,
            _ => false,
        };
        let stale = fresh.is_none() && mean.is_some();
        let from = self.limit();
        let mut verdict = Verdict {
            len,
            quartile: mean.map(dur),
            fresh: fresh.map(dur),
            threshold: threshold.map(dur),
            samples: w.samples,
            timeouts: w.timeouts,
            full: w.full,
            from,
            to: from,
            what: "kept",
        };
        let mut change = None;
        if self.adaptive && (timeouts || queueing) {
            let mut factor: f64 = if timeouts { DECREASE } else { 1.0 };
            if let (true, Some(m), Some(th)) = (queueing, fresh, threshold) {
                factor = factor.min(th / m);
                if self.slow_start {
                    // Slow start quadrupled the limit per round and saw the queue a round
                    // after it built it: the queue's level is far below the limit now (on a
                    // pool 10 ms away it reached the cap, 256, where 128 was best). Leaving
                    // it halves at least, as TCP's slow start does on its first loss.
                    factor = factor.min(MIN_CUT);
                }
                // A cut that left the greeting time where it was says the limit is not
                // what makes the server slow.
                self.futile = match self.cut_at {
                    Some(before) if m >= FUTILE * before => self.futile + 1,
                    _ => 0,
                };
                self.cut_at = Some(m);
            }
            if queueing && !timeouts && self.futile >= 2 {
                // Drift: the baseline takes the new level, and the cutting stops.
                if let Some(m) = fresh {
                    self.baseline = Some((m, m * TOLERANCE / DEVIATIONS));
                }
                self.futile = 0;
                self.cut_at = None;
                verdict.what = "drift, baseline moved";
                self.verdict = Some(verdict);
                return None;
            }
            self.slow_start = false;
            // The queue the old limit built drains for about as long as it made greetings
            // wait: attempts started before it drained meet it still, and say nothing
            // about the new limit (judged on them, one cut was followed by another, or the
            // undrained queue read as a slower route).
            let drain = match (queueing, fresh, self.baseline) {
                (true, Some(m), Some((b, _))) => dur(m - b),
                _ => Duration::ZERO,
            };
            self.cut_time = Some(now + drain);
            let mut to = self.limit * factor.clamp(MIN_CUT, MAX_CUT);
            if !timeouts {
                // Queueing alone never cuts below a few: a server that serves one at a time
                // (or a few) queues anything more than that by nature, and a few connections
                // waiting in its queue hide the round trips of the set-up (timeouts do cut
                // further).
                to = to.max(QUEUE_FLOOR.min(self.limit));
            }
            change = self.set(to);
            verdict.what = if timeouts {
                "timeouts, cut"
            } else {
                "queueing, cut"
            };
        } else if !stale {
            self.cut_at = None;
            self.futile = 0;
            if let (true, Some(m), Some(th)) = (self.slow_start, fresh, self.slow_start_threshold())
            {
                // Above slow start's threshold, not yet queueing: growth by a share per
                // window from now on.
                if m > th {
                    self.slow_start = false;
                }
            }
            if self.adaptive && !self.slow_start && w.full && !w.paced {
                change = self.set((self.limit * GROWTH).max(self.limit + 1.0));
                verdict.what = "grew";
            }
        } else {
            verdict.what = "stale";
        }
        if let Some(m) = mean {
            self.learn(m, len);
        }
        verdict.to = self.limit();
        self.verdict = Some(verdict);
        change
    }

    /// The baseline learns a window's mean `m`: at once by half if it was faster, as time
    /// passes if slower.
    fn learn(&mut self, m: f64, len: Duration) {
        self.baseline = Some(match self.baseline {
            None => (m, m * TOLERANCE / DEVIATIONS),
            Some((b, d)) => {
                let w = if m < b {
                    BASELINE_FALL
                } else {
                    1.0 - (-secs(len) / secs(BASELINE_AGE)).exp()
                };
                (b + w * (m - b), d + w * ((m - b).abs() - d))
            }
        });
    }

    fn set(&mut self, to: f64) -> Option<Change> {
        if !self.adaptive {
            return None;
        }
        let before = self.limit();
        self.limit = to.clamp(1.0, self.cap as f64);
        let after = self.limit();
        match after.cmp(&before) {
            std::cmp::Ordering::Greater => Some(Change::Grew),
            std::cmp::Ordering::Less => Some(Change::Shrank),
            std::cmp::Ordering::Equal => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs `n` attempts one after the other, each `every` after the last, all with the lane
    /// full, delivered after `greeting`.
    fn run(l: &mut Limiter, t: &mut Instant, n: usize, every: Duration, greeting: Duration) {
        for _ in 0..n {
            let k = l.on_start(true, *t);
            *t += every;
            l.on_success(k, greeting, false, *t);
        }
    }

    #[test]
    fn pinned_limit_is_the_cap() {
        let mut t = Instant::now();
        let mut l = Limiter::new(7, false);
        assert_eq!(l.limit(), 7);
        run(&mut l, &mut t, 50, 10 * MS, MS);
        run(&mut l, &mut t, 50, 10 * MS, 500 * MS);
        assert_eq!(l.limit(), 7);
    }

    #[test]
    fn starts_small_grows_by_three_per_success_then_cuts_once_per_window() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        assert_eq!(l.limit(), INITIAL_LIMIT);
        run(&mut l, &mut t, 20, MS, MS);
        assert_eq!(
            l.limit(),
            INITIAL_LIMIT + 20 * SLOW_START_STEP as usize,
            "slow start: three per success"
        );
        // Greetings fifty times slower for two windows: queueing; one cut per window, each
        // at most a halving.
        let before = l.limit();
        run(
            &mut l,
            &mut t,
            2 * MIN_WINDOW.as_millis() as usize,
            MS,
            50 * MS,
        );
        let after = l.limit();
        assert!(
            after < before && after as f64 >= before as f64 * MIN_CUT * MIN_CUT - 1.0,
            "{before} -> {after}"
        );
    }

    #[test]
    fn leaving_slow_start_by_a_queue_halves_at_least() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        // Fast greetings: slow start reaches the cap before any queue shows.
        run(&mut l, &mut t, 200, MS, 5 * MS);
        assert_eq!(l.limit(), 256);
        let th = l.threshold().expect("a baseline");
        // Attempts 1 ms apart, each greeted just above the threshold, until the limit is
        // below `below`: the limit then.
        let mut until_below = |below: usize, n: usize| {
            (0..n).find_map(|_| {
                let k = l.on_start(true, t);
                t += MS;
                l.on_success(k, dur(th * 1.05), false, t);
                (l.limit() < below).then(|| l.limit())
            })
        };
        // A mild queue, which alone would cut by a tenth; out of slow start it is the first
        // sign of a queue built a round earlier.
        assert_eq!(
            until_below(256, 200),
            Some(128),
            "the first cut out of slow start"
        );
        // Later cuts are the window's own: a mild queue cuts by a tenth.
        let later = until_below(128, 400).expect("a second cut");
        assert!(later >= 115, "a mild queue cuts by a tenth: 128 -> {later}");
    }

    #[test]
    fn never_below_one_nor_above_the_cap() {
        let mut t = Instant::now();
        let mut l = Limiter::new(3, true);
        run(&mut l, &mut t, 100, MS, MS);
        assert_eq!(l.limit(), 3);
        for _ in 0..100 {
            let k = l.on_start(true, t);
            t += MAX_WINDOW;
            l.on_failure(k, None, true, t);
        }
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn one_timeout_among_many_greetings_is_an_outlier() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        run(&mut l, &mut t, 200, MS, MS);
        let before = l.limit();
        for i in 0..2000 {
            let k = l.on_start(true, t);
            t += MS / 4;
            if i % 20 == 0 {
                l.on_failure(k, None, true, t);
            } else {
                l.on_success(k, MS, false, t);
            }
        }
        assert!(l.limit() >= before, "{before} -> {}", l.limit());
        // All timeouts: cut.
        for _ in 0..10 {
            let k = l.on_start(true, t);
            t += 10 * MS;
            l.on_failure(k, None, true, t);
        }
        assert!(l.limit() < before);
    }

    #[test]
    fn a_slower_route_is_learnt_not_cut_for_ever() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        run(&mut l, &mut t, 200, MS, 5 * MS);
        let before = l.limit();
        // The route gets 40 ms longer: greetings 20 ms slower, whatever the limit.
        run(&mut l, &mut t, 400, MS, 25 * MS);
        assert!(
            l.limit() * 4 >= before,
            "cut more than twice: {before} -> {}",
            l.limit()
        );
        assert!(l.baseline().is_some_and(|b| b >= 20 * MS));
    }

    #[test]
    fn suspect_before_overdue_only_when_a_later_attempt_was_greeted() {
        let mut t = Instant::now();
        let mut l = Limiter::new(64, true);
        assert_eq!(l.suspect_after(), None, "no greeting time known yet");
        run(&mut l, &mut t, 10, MS, MS);
        let (suspect, overdue) = (l.suspect_after().unwrap(), l.overdue_after().unwrap());
        assert!(
            suspect >= MIN_SUSPECT && suspect <= overdue / 2,
            "{suspect:?} {overdue:?}"
        );
        let mut first = l.on_start(true, t);
        let second = l.on_start(true, t + MS);
        assert!(!l.greeted_after(&first));
        l.on_success(second, MS, false, t + 2 * MS);
        assert!(l.greeted_after(&first));
        assert!(!first.released());
        first.release();
        assert!(first.released());
        // Released, it still ends in the limiter as any attempt.
        l.forget(first, t + 3 * MS);
    }

    #[test]
    fn overtaken_by_a_later_greeting_or_alone_after_the_others_ended() {
        let mut t = Instant::now();
        let mut l = Limiter::new(64, true);
        run(&mut l, &mut t, 10, MS, MS);
        let after = l.overdue_after().unwrap_or_default();
        let first = l.on_start(true, t);
        let second = l.on_start(true, t + MS);
        assert!(!l.overtaken(&first, t + MS));
        l.on_success(second, MS, false, t + 2 * MS);
        assert!(l.overtaken(&first, t + 2 * MS), "a later one was greeted");
        // Alone in flight: only once an overdue time passed since the last end.
        let mut l = Limiter::new(64, true);
        let mut t = Instant::now();
        run(&mut l, &mut t, 10, MS, MS);
        let early = l.on_start(true, t);
        let lone = l.on_start(true, t + MS);
        assert!(
            !l.overtaken(&lone, t + after * 2),
            "an earlier one is in flight"
        );
        l.forget(early, t + 2 * MS);
        assert!(!l.overtaken(&lone, t + 3 * MS));
        assert!(l.overtaken(&lone, t + 2 * MS + after));
    }

    #[test]
    fn a_cut_is_judged_once_the_old_queue_drained() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        run(&mut l, &mut t, 100, MS, MS);
        // Queueing (greetings 40 ms): one cut ...
        let before = l.limit();
        let mut cut = None;
        while cut.is_none() {
            let k = l.on_start(true, t);
            t += MS;
            if l.on_success(k, 40 * MS, false, t) == Some(Change::Shrank) {
                cut = Some(t);
            }
        }
        let after = l.limit();
        assert!(after < before);
        // ... then attempts started while its queue drains (about 39 ms) meet it still:
        // no second cut on them.
        for _ in 0..30 {
            let k = l.on_start(true, t);
            t += MS;
            l.on_success(k, 40 * MS, false, t);
        }
        assert_eq!(l.limit(), after);
        // Started after it drained, still queueing: cut again.
        run(&mut l, &mut t, 60, MS, 40 * MS);
        assert!(l.limit() < after, "{after} -> {}", l.limit());
    }

    #[test]
    fn slow_start_stops_at_the_first_sign_of_a_queue() {
        let mut t = Instant::now();
        let mut l = Limiter::new(4096, true);
        run(&mut l, &mut t, 40, MS, MS);
        let before = l.limit();
        // Greetings 4 ms: under the threshold (1 ms + 0.5 ms + 5 ms), not under slow
        // start's (1 ms + 0.5 ms + 1 ms): no growth per success ...
        run(&mut l, &mut t, 10, MS, 4 * MS);
        assert_eq!(l.limit(), before);
        // ... and the windows that show them end slow start: growth by a share per window.
        run(&mut l, &mut t, 100, MS, 4 * MS);
        assert!(
            l.limit() > before && l.limit() < before + 100,
            "{before} -> {}",
            l.limit()
        );
    }

    #[test]
    fn no_growth_when_the_lane_was_not_full() {
        let mut t = Instant::now();
        let mut l = Limiter::new(64, true);
        for _ in 0..100 {
            let k = l.on_start(false, t);
            t += MS;
            l.on_success(k, MS, false, t);
        }
        assert_eq!(l.limit(), INITIAL_LIMIT);
    }

    #[test]
    fn paced_successes_do_not_grow_the_limit() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        for _ in 0..200 {
            let k = l.on_start(true, t);
            t += MS;
            l.on_success(k, MS, true, t);
        }
        assert_eq!(l.limit(), INITIAL_LIMIT, "in slow start");
        // After a signal too: one window of queueing, then paced ones.
        run(&mut l, &mut t, 40, MS, MS);
        run(&mut l, &mut t, 40, MS, 50 * MS);
        let before = l.limit();
        for _ in 0..500 {
            let k = l.on_start(true, t);
            t += MS;
            l.on_success(k, MS, true, t);
        }
        assert!(l.limit() <= before, "{before} -> {}", l.limit());
    }

    #[test]
    fn a_quarter_of_slow_greetings_is_not_queueing() {
        let mut t = Instant::now();
        let mut l = Limiter::new(256, true);
        run(&mut l, &mut t, 100, MS, MS);
        let before = l.limit();
        // One greeting in three retransmitted 200 ms later (a lossy link): no cut.
        for i in 0..600 {
            let k = l.on_start(true, t);
            t += MS;
            let g = if i % 3 == 0 { 200 * MS } else { MS };
            l.on_success(k, g, false, t);
        }
        assert!(l.limit() >= before, "{before} -> {}", l.limit());
    }

    #[test]
    fn queueing_alone_does_not_cut_below_the_floor() {
        let mut t = Instant::now();
        let mut l = Limiter::new(8, true);
        run(&mut l, &mut t, 40, MS, MS);
        // A server that serves one at a time: every greeting waits for the others.
        let mut lowest = l.limit();
        for _ in 0..400 {
            run(&mut l, &mut t, 1, 10 * MS, 300 * MS);
            lowest = lowest.min(l.limit());
        }
        assert_eq!(lowest, QUEUE_FLOOR as usize);
        // Timeouts do cut further.
        for _ in 0..400 {
            let k = l.on_start(true, t);
            t += 100 * MS;
            l.on_failure(k, None, true, t);
        }
        assert!(l.limit() < QUEUE_FLOOR as usize);
    }
}
