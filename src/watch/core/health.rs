//! One destination's health: up, or down and probed with backoff, and how loudly its
//! transitions and its outage are reported.
//!
//! The lane tells it what attempts found out about the destination
//! ([`Health::on_dest_failure`]: a failure that is the destination's, before the greeting;
//! [`Health::on_greeting`]: the server greeted) and gets back a [`Transition`] to report. It
//! asks [`Health::admits`] whether an attempt may start, [`Health::is_up`] whether one that
//! starts is a probe, and [`Health::next_probe`] for its deadline. Everything else (when it
//! goes down, the probes' schedule, when a report is loud) is this module's policy.
//!
//! **Cohorts** (after Postfix's queue manager, which declares a destination dead only when a
//! whole cohort of concurrent deliveries failed). One failure before the greeting says
//! little about a server that is mostly fine (a hung worker, a lost packet): it goes down only
//! after a cohort of such failures in a row, with no greeting in between, as many as its
//! limit of uploads in flight when the last one failed (at least [`COHORT_MIN`]). Failures
//! that no other connection would escape (the name does not resolve, every address refused)
//! take it down at once. Until then a failed file is tried again at once, on another
//! connection (the core puts it back at the front of its lane).
//!
//! **Probes.** While down, its files take no slot but one probe at a time, on a schedule of
//! its own: `retry.initial` doubling to `retry.probe_max` (a minute by default), so that a
//! server back from an outage is found soon however long it was away. The first greeting
//! brings it up.
//!
//! **Quiet logs.** A down and the up that ends it are reported loudly at most once per
//! [`TRANSITIONS_LOGGED_EVERY`]; the outages in between are counted and the count goes into
//! the next loud line. While it stays down, failures are loud at most once every
//! [`OUTAGE_REPORT_EVERY`], or when the kind of error changes.

use std::time::{Duration, Instant};

use super::retry_delay;
use crate::config::RetryPolicy;
use crate::watch::error::{ClientKind, DestError};

/// While a destination stays down, its failures are reported loudly at most this often
/// (and when the kind of the error changes).
pub const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A destination's down/up pair is reported loudly at most this often.
pub const TRANSITIONS_LOGGED_EVERY: Duration = Duration::from_secs(60);

/// The smallest cohort of failures in a row that takes a destination down (one failure is
/// never a cohort, even at a limit of one).
pub const COHORT_MIN: usize = 2;

/// Whether a destination takes files.
#[derive(Debug, Clone)]
pub struct Health {
    /// The schedule of probes (`initial`, capped at `probe_max`).
    retry: RetryPolicy,
    state: State,
    /// While up: failures before the greeting in a row, with no greeting in between.
    streak: usize,
    /// When the last loud down was reported.
    logged_at: Option<Instant>,
    /// Outages since that were not reported loudly.
    unlogged: u32,
}

#[derive(Debug, Clone)]
enum State {
    Up,
    /// Failures that are the destination's (resolve, refuse, unreachable, connect timeout,
    /// no or wrong greeting): its files take no slots; one probe at a time tests it.
    Down {
        since: Instant,
        /// The last failure.
        error: DestError,
        /// Failed probes so far (the backoff grows with them).
        probes: u32,
        /// When the next probe may start.
        probe_at: Instant,
        /// When it was last reported at WARN, and the kind of that error.
        warned_at: Instant,
        warned: ClientKind,
        /// Its down was reported loudly: so is its up.
        loud: bool,
    },
}

/// What a lane reports after telling its health something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth a line.
    None,
    /// It went down; the first probe in `probe_in`. `loud`: worth a line (at most one
    /// down/up pair per [`TRANSITIONS_LOGGED_EVERY`]); `unlogged`: outages since the last
    /// loud one that were not.
    Down {
        probe_in: Duration,
        loud: bool,
        unlogged: u32,
    },
    /// It was down already and stays so; `loud` at most once every [`OUTAGE_REPORT_EVERY`]
    /// or when the kind of error changed.
    StillDown { probe_in: Duration, loud: bool },
    /// It was down and is up again; `loud` if its down was.
    Up { down_for: Duration, loud: bool },
}

/// A destination's outage, for `accio status`.
#[derive(Debug, Clone, Copy)]
pub struct Outage<'a> {
    pub since: Instant,
    pub error: &'a DestError,
    pub next_probe: Instant,
}

impl Health {
    /// An up destination whose probes follow `retry` (`initial` to `probe_max`).
    pub fn new(retry: RetryPolicy) -> Health {
        Health {
            retry: RetryPolicy {
                max: retry.probe_max.max(retry.initial),
                ..retry
            },
            state: State::Up,
            streak: 0,
            logged_at: None,
            unlogged: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up)
    }

    /// Whether an attempt may start on a lane with `in_flight` attempts and this `limit`:
    /// while up, below the limit; while down, one probe at a time once it is due.
    pub fn admits(&self, in_flight: usize, limit: usize, now: Instant) -> bool {
        match &self.state {
            State::Up => in_flight < limit,
            State::Down { probe_at, .. } => in_flight == 0 && now >= *probe_at,
        }
    }

    /// While down: when the next probe may start.
    pub fn next_probe(&self) -> Option<Instant> {
        match &self.state {
            State::Up => None,
            State::Down { probe_at, .. } => Some(*probe_at),
        }
    }

    /// `accio flush`: while down, the next probe may start now. Whether it was down.
    pub fn probe_now(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Up => false,
            State::Down { probe_at, .. } => {
                *probe_at = now.min(*probe_at);
                true
            }
        }
    }

    /// While down: since when, why, and when the next probe may start.
    pub fn outage(&self) -> Option<Outage<'_>> {
        match &self.state {
            State::Up => None,
            State::Down {
                since,
                error,
                probe_at,
                ..
            } => Some(Outage {
                since: *since,
                error,
                next_probe: *probe_at,
            }),
        }
    }

    /// The server greeted (an attempt delivered, or failed after the greeting): the
    /// streak of failures ends.
    pub fn on_greeting(&mut self, now: Instant) -> Transition {
        self.streak = 0;
        match self.state {
            State::Up => Transition::None,
            State::Down { since, loud, .. } => {
                self.state = State::Up;
                Transition::Up {
                    down_for: now.saturating_duration_since(since),
                    loud,
                }
            }
        }
    }

    /// An attempt failed before the greeting, for a reason that is the destination's.
    /// `probe`: the attempt was the probe of a down destination (it started while down).
    /// `limit`: the lane's limit now (after the limiter took the failure in): the cohort.
    pub fn on_dest_failure(
        &mut self,
        error: &DestError,
        probe: bool,
        limit: usize,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Transition {
        let retry = self.retry;
        let kind = error.kind();
        match &mut self.state {
            State::Up => {
                self.streak = self.streak.saturating_add(1);
                if !error.conclusive() && self.streak < limit.max(COHORT_MIN) {
                    return Transition::None;
                }
                self.streak = 0;
                let probe_in = retry_delay(&retry, retry.initial, 1, rng);
                let loud = self
                    .logged_at
                    .map_or(true, |at| now >= at + TRANSITIONS_LOGGED_EVERY);
                let unlogged = self.unlogged;
                if loud {
                    self.logged_at = Some(now);
                    self.unlogged = 0;
                } else {
                    self.unlogged = self.unlogged.saturating_add(1);
                }
                self.state = State::Down {
                    since: now,
                    error: error.clone(),
                    probes: 1,
                    probe_at: now + probe_in,
                    // A quiet outage that lasts is reported loudly once a minute from its
                    // start, like any other.
                    warned_at: now,
                    warned: kind,
                    loud,
                };
                Transition::Down {
                    probe_in,
                    loud,
                    unlogged,
                }
            }
            State::Down {
                error: last,
                probes,
                probe_at,
                warned_at,
                warned,
                ..
            } => {
                *last = error.clone();
                if probe {
                    *probes = probes.saturating_add(1);
                    *probe_at = now + retry_delay(&retry, retry.initial, *probes, rng);
                }
                // News: another kind of failure (refused, then unreachable), not the same
                // one in other words (other addresses, another timeout share).
                let loud = *warned != kind || now >= *warned_at + OUTAGE_REPORT_EVERY;
                if loud {
                    *warned_at = now;
                    *warned = kind;
                }
                Transition::StillDown {
                    probe_in: probe_at.saturating_duration_since(now),
                    loud,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolError;
    use crate::watch::error::tests::{connect_failed, dest, protocol};

    const S: Duration = Duration::from_secs(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: S,
            max: 300 * S,
            max_attempts: 10,
            probe_max: 8 * S,
        }
    }

    fn failure(errno: i32) -> DestError {
        DestError::new(dest(), connect_failed(&["127.0.0.1:1"], errno))
    }

    fn no_greeting() -> DestError {
        DestError::new(dest(), protocol(ProtocolError::HandshakeTimeout(10 * S)))
    }

    #[test]
    fn a_refusal_downs_it_at_once_one_probe_at_a_time_and_a_greeting_brings_it_up() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        assert!(h.admits(3, 4, t0) && !h.admits(4, 4, t0));
        let refused = failure(libc::ECONNREFUSED);
        let Transition::Down { probe_in, .. } = h.on_dest_failure(&refused, false, 4, t0, &mut rng)
        else {
            panic!("not down");
        };
        assert!(probe_in >= S / 2 && probe_in <= S);
        let due = t0 + probe_in;
        assert_eq!(h.next_probe(), Some(due));
        assert!(!h.admits(0, 4, t0), "a probe before its time");
        assert!(h.admits(0, 4, due) && !h.admits(1, 4, due));
        // Failures of attempts started before it went down do not push the probe back.
        h.on_dest_failure(&refused, false, 4, t0 + S / 4, &mut rng);
        assert_eq!(h.next_probe(), Some(due));
        // A failed probe does, with backoff.
        h.on_dest_failure(&refused, true, 4, due, &mut rng);
        assert!(h.next_probe().is_some_and(|p| p >= due + S));
        assert_eq!(
            h.on_greeting(due + 10 * S),
            Transition::Up {
                down_for: probe_in + 10 * S,
                loud: true
            }
        );
        assert!(h.is_up() && h.outage().is_none());
        assert_eq!(h.on_greeting(due + 11 * S), Transition::None);
    }

    #[test]
    fn timeouts_down_it_after_a_cohort_with_no_greeting_in_between() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        let e = no_greeting();
        for _ in 0..3 {
            assert_eq!(
                h.on_dest_failure(&e, false, 4, t0, &mut rng),
                Transition::None
            );
        }
        // A greeting between: the streak starts again.
        h.on_greeting(t0);
        for _ in 0..3 {
            assert_eq!(
                h.on_dest_failure(&e, false, 4, t0, &mut rng),
                Transition::None
            );
        }
        assert!(matches!(
            h.on_dest_failure(&e, false, 4, t0, &mut rng),
            Transition::Down { .. }
        ));
        // At a limit of one, two in a row.
        h.on_greeting(t0);
        assert_eq!(
            h.on_dest_failure(&e, false, 1, t0, &mut rng),
            Transition::None
        );
        assert!(matches!(
            h.on_dest_failure(&e, false, 1, t0, &mut rng),
            Transition::Down { .. }
        ));
    }

    #[test]
    fn probes_back_off_to_probe_max_not_to_the_files_max() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        let refused = failure(libc::ECONNREFUSED);
        h.on_dest_failure(&refused, false, 4, t0, &mut rng);
        let mut t = t0;
        for _ in 0..20 {
            t = h.next_probe().unwrap_or(t);
            h.on_dest_failure(&refused, true, 4, t, &mut rng);
            let wait = h.next_probe().map(|p| p.saturating_duration_since(t));
            assert!(wait.is_some_and(|w| w <= 8 * S), "{wait:?}");
        }
    }

    #[test]
    fn one_down_up_pair_a_minute_is_loud_the_rest_are_counted() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        let refused = failure(libc::ECONNREFUSED);
        let mut t = t0;
        let mut loud = Vec::new();
        for _ in 0..10 {
            match h.on_dest_failure(&refused, false, 4, t, &mut rng) {
                Transition::Down {
                    loud: l, unlogged, ..
                } => loud.push((l, unlogged)),
                x => panic!("{x:?}"),
            }
            t += 5 * S;
            assert!(
                matches!(h.on_greeting(t), Transition::Up { loud: l, .. } if l == loud.last().unwrap().0)
            );
            t += 5 * S;
        }
        // 10 outages in 100 s: the first and the one a minute later are loud; the second
        // loud one counts the five before it.
        assert_eq!(loud.iter().filter(|(l, _)| *l).count(), 2, "{loud:?}");
        assert_eq!(loud[6], (true, 5), "{loud:?}");
    }

    #[test]
    fn an_outage_is_loud_once_a_minute_or_when_its_kind_changes() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        let refused = failure(libc::ECONNREFUSED);
        let loud = |t| match t {
            Transition::StillDown { loud, .. } => loud,
            t => panic!("{t:?}"),
        };
        h.on_dest_failure(&refused, false, 4, t0, &mut rng);
        assert!(!loud(h.on_dest_failure(
            &refused,
            true,
            4,
            t0 + S,
            &mut rng
        )));
        let unreachable = failure(libc::ENETUNREACH);
        assert!(loud(h.on_dest_failure(
            &unreachable,
            true,
            4,
            t0 + 2 * S,
            &mut rng
        )));
        assert!(!loud(h.on_dest_failure(
            &unreachable,
            true,
            4,
            t0 + 3 * S,
            &mut rng
        )));
        let later = t0 + 2 * S + OUTAGE_REPORT_EVERY;
        assert!(loud(h.on_dest_failure(
            &unreachable,
            true,
            4,
            later,
            &mut rng
        )));
        assert_eq!(h.outage().map(|o| o.since), Some(t0));
    }
}
