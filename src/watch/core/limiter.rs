//! One destination's limit of uploads in flight, which adapts between 1 and its cap.
//!
//! The lane asks it [`Limiter::limit`], tells it when an attempt starts
//! ([`Limiter::on_start`], which hands back the attempt's [`Ticket`]) and how the attempt
//! went with that ticket ([`Limiter::on_success`], [`Limiter::on_failure`]); the answer is the
//! change of the limit, if any, for the log. Everything else is the limiter's own policy.
//!
//! The limit follows TCP and Postfix: it starts small, grows by two per success while the
//! lane was full (slow start: tripling per round), then by `1/limit` per success once a
//! congestion signal was seen (additive increase), and is multiplied by
//! [`DECREASE`] on a signal (multiplicative decrease), at most once per round (a decrease
//! reacts only to attempts started after the previous one).
//!
//! The signal is the time from starting to connect until the whole `accio\r\n` has arrived:
//! one round trip plus whatever the server makes us wait (its accept queue, a busy worker
//! pool). Its baseline is the smallest value seen in the recent past; when the smoothed
//! value climbs past [`TOLERANCE`] times the baseline plus [`SLACK`], the server is
//! queueing us. Greeting timeouts, resets and refusals are signals too.

use std::time::{Duration, Instant};

/// Limit of a new adaptive lane (or its cap, if smaller).
pub const INITIAL_LIMIT: f64 = 32.0;
/// Growth per success in slow start: the limit triples per round, so a distant server is
/// reached in a few round trips (32 → 96 → 288).
const SLOW_START_STEP: f64 = 2.0;
/// Factor applied to the limit on a congestion signal.
pub const DECREASE: f64 = 0.75;
/// The smoothed greeting time may be this many times the baseline ...
pub const TOLERANCE: f64 = 2.0;
/// ... plus this much (the noise of a loaded machine on loopback), before it is a signal.
pub const SLACK: Duration = Duration::from_millis(5);
/// Weight of a new sample in the smoothed greeting time.
const EWMA_WEIGHT: f64 = 0.25;
/// The baseline is the minimum over windows of this many samples: a route that got longer
/// raises it after at most two windows.
const BASELINE_WINDOW: u32 = 500;

/// Adaptive limit of uploads in flight for one destination.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// The destination's cap (its own `concurrency`, else the global one).
    cap: usize,
    /// `adaptive = false` pins the limit at the cap.
    adaptive: bool,
    /// Current limit, fractional so that additive increase can add `1/limit`.
    limit: f64,
    /// Below it, slow start (+1 per success); at or above, additive increase.
    ssthresh: f64,
    /// Smallest greeting time of the previous and current windows.
    baseline: Option<Duration>,
    /// Smallest of the current window, and how many samples it has.
    window_min: Option<Duration>,
    window_n: u32,
    /// Smoothed greeting time.
    smoothed: Option<Duration>,
    /// Sequence number of the last attempt started when the limit last decreased: later
    /// signals from attempts started before it are of the same round and ignored.
    decreased_at: u64,
    /// Sequence number of the last attempt started (rounds are counted in starts).
    last_start: u64,
}

/// What the limiter needs to know again when an attempt it saw start ends: kept by the
/// lane with the attempt, handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The attempt's start sequence number (1, 2, ...: rounds of decrease).
    seq: u64,
    /// The lane was at its limit when it started (only then does a success say the limit
    /// was too small).
    lane_full: bool,
}

/// Why a limit changed, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Grew,
    Shrank,
}

impl Limiter {
    pub fn new(cap: usize, adaptive: bool) -> Limiter {
        let cap = cap.max(1);
        Limiter {
            cap,
            adaptive,
            limit: if adaptive {
                INITIAL_LIMIT.min(cap as f64)
            } else {
                cap as f64
            },
            ssthresh: f64::INFINITY,
            baseline: None,
            window_min: None,
            window_n: 0,
            smoothed: None,
            decreased_at: 0,
            last_start: 0,
        }
    }

    /// An attempt starts; `lane_full`: the lane is at its limit with it, or leaves ready
    /// files behind. The ticket goes back with the attempt's outcome.
    pub fn on_start(&mut self, lane_full: bool) -> Ticket {
        self.last_start += 1;
        Ticket {
            seq: self.last_start,
            lane_full,
        }
    }

    /// The attempt of `t` delivered, after a greeting that took `greeting`.
    pub fn on_success(&mut self, t: Ticket, greeting: Duration, _now: Instant) -> Option<Change> {
        self.sample(greeting, t.seq, self.last_start, t.lane_full, true)
    }

    /// The attempt of `t` failed: after a greeting that took `greeting`, or before any
    /// (`None`). `congestion`: its error is a sign of a server queueing us (a greeting or
    /// connect timeout, a reset).
    pub fn on_failure(
        &mut self,
        t: Ticket,
        greeting: Option<Duration>,
        congestion: bool,
        _now: Instant,
    ) -> Option<Change> {
        let latest = self.last_start;
        let sampled = greeting.and_then(|g| self.sample(g, t.seq, latest, t.lane_full, false));
        let shrank = if congestion {
            self.congestion(t.seq, latest)
        } else {
            None
        };
        sampled.or(shrank)
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

    /// The baseline greeting time, if any sample was taken.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// The smoothed greeting time, if any sample was taken.
    pub fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }

    /// The greeting time above which the server is taken to be queueing us.
    fn threshold(&self) -> Option<Duration> {
        self.baseline
            .map(|b| b.mul_f64(TOLERANCE).saturating_add(SLACK))
    }

    /// An attempt got the greeting after `greeting`. `seq` is its start sequence number,
    /// `lane_full` whether the lane was at its limit when it started (only then does a
    /// success say the limit was too small), `ok` whether the attempt succeeded.
    fn sample(
        &mut self,
        greeting: Duration,
        seq: u64,
        latest: u64,
        lane_full: bool,
        ok: bool,
    ) -> Option<Change> {
        self.window_min = Some(self.window_min.map_or(greeting, |m| m.min(greeting)));
        self.window_n += 1;
        self.baseline = Some(self.baseline.map_or(greeting, |b| b.min(greeting)));
        if self.window_n >= BASELINE_WINDOW {
            // A new window: forget minima older than the previous window.
            self.baseline = self.window_min;
            self.window_min = None;
            self.window_n = 0;
        }
        self.smoothed = Some(match self.smoothed {
            None => greeting,
            Some(s) => s.mul_f64(1.0 - EWMA_WEIGHT) + greeting.mul_f64(EWMA_WEIGHT),
        });
        if !self.adaptive {
            return None;
        }
        let queueing = match (self.smoothed, self.threshold()) {
            (Some(s), Some(t)) => s > t,
            _ => false,
        };
        if queueing {
            return self.congestion(seq, latest);
        }
        if ok && lane_full {
            return self.grow();
        }
        None
    }

    fn grow(&mut self) -> Option<Change> {
        let before = self.limit();
        if self.limit >= self.cap as f64 {
            return None;
        }
        if self.limit < self.ssthresh {
            self.limit += SLOW_START_STEP;
        } else {
            self.limit += 1.0 / self.limit.max(1.0);
        }
        self.limit = self.limit.min(self.cap as f64);
        (self.limit() != before).then_some(Change::Grew)
    }

    /// A congestion signal from an attempt started with sequence number `seq` (greeting
    /// timeout, reset, refusal, or greeting time climbing); `latest` is the sequence number
    /// of the last attempt started so far: the round this decrease reacts to ends there.
    fn congestion(&mut self, seq: u64, latest: u64) -> Option<Change> {
        if !self.adaptive || seq <= self.decreased_at {
            return None;
        }
        let before = self.limit();
        self.limit = (self.limit * DECREASE).max(1.0);
        self.ssthresh = self.limit;
        self.decreased_at = latest;
        (self.limit() != before).then_some(Change::Shrank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pinned_limit_is_the_cap() {
        let mut l = Limiter::new(7, false);
        assert_eq!(l.limit(), 7);
        l.sample(100 * MS, 1, 1, true, true);
        l.congestion(2, 2);
        assert_eq!(l.limit(), 7);
    }

    #[test]
    fn slow_start_then_decrease_once_per_round() {
        let mut l = Limiter::new(256, true);
        assert_eq!(l.limit(), 32);
        let mut seq = 0;
        for _ in 0..8 {
            seq += 1;
            l.sample(10 * MS, seq, seq, true, true);
        }
        assert_eq!(l.limit(), 48);
        // A slow greeting: decrease once, even though more of the same round follow.
        seq += 1;
        assert_eq!(
            l.sample(500 * MS, seq, seq + 10, true, true),
            Some(Change::Shrank)
        );
        let after = l.limit();
        for s in seq + 1..=seq + 10 {
            l.sample(500 * MS, s, seq + 10, true, true);
        }
        assert_eq!(l.limit(), after);
        // The next round may decrease again.
        assert_eq!(l.congestion(seq + 11, seq + 20), Some(Change::Shrank));
    }

    #[test]
    fn never_below_one_nor_above_the_cap() {
        let mut l = Limiter::new(3, true);
        for s in 1..100 {
            l.sample(MS, s, s, true, true);
        }
        assert_eq!(l.limit(), 3);
        for s in 100..200 {
            l.congestion(s, s);
        }
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn tickets_count_rounds_per_lane() {
        let t0 = Instant::now();
        let mut l = Limiter::new(64, true);
        let early = l.on_start(true);
        let same_round = l.on_start(true);
        assert_eq!(l.on_failure(early, None, true, t0), Some(Change::Shrank));
        assert_eq!(l.limit(), 24);
        // Started before the decrease: of the same round, no second cut.
        assert_eq!(l.on_failure(same_round, None, true, t0), None);
        let next = l.on_start(true);
        assert_eq!(l.on_failure(next, None, true, t0), Some(Change::Shrank));
        // A failure after a fast greeting that is no sign of congestion changes nothing.
        let ok = l.on_start(true);
        assert_eq!(l.on_failure(ok, Some(MS), false, t0), None);
        assert_eq!(l.limit(), 18);
        // After a cut, growth is additive: a fraction of one per success.
        let t = l.on_start(true);
        assert_eq!(l.on_success(t, MS, t0), None);
        assert_eq!(l.limit(), 18);
    }

    #[test]
    fn no_growth_when_the_lane_was_not_full() {
        let mut l = Limiter::new(64, true);
        for s in 1..100 {
            l.sample(MS, s, s, false, true);
        }
        assert_eq!(l.limit(), 32);
    }
}
