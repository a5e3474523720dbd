//! One destination's health: up, or down and probed with backoff, and how loudly its outage
//! is reported.
//!
//! The lane tells it what attempts found out about the destination
//! ([`Health::on_dest_failure`]: a failure that is the destination's, before the greeting;
//! [`Health::on_greeting`]: the server greeted) and gets back a [`Transition`] to report. It
//! asks [`Health::admits`] whether an attempt may start, [`Health::is_up`] whether one that
//! starts is a probe, and [`Health::next_probe`] for its deadline. Everything else (when it
//! goes down, the probes' schedule, when a report is loud) is this module's policy.
//!
//! Today: one failure that is the destination's marks it down; its files then take no slot
//! but one probe at a time, on the files' retry schedule (`retry.initial` doubling to
//! `retry.max`); the first greeting brings it up. While it stays down, failures are reported
//! loudly at most once every [`OUTAGE_REPORT_EVERY`], or when the kind of error changes.

use std::time::{Duration, Instant};

use super::retry_delay;
use crate::config::RetryPolicy;
use crate::watch::error::{ClientKind, DestError};

/// While a destination stays down, its failures are reported loudly at most this often
/// (and when the kind of the error changes).
pub const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Whether a destination takes files.
#[derive(Debug, Clone)]
pub struct Health {
    /// The schedule of probes.
    retry: RetryPolicy,
    state: State,
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
    },
}

/// What a lane reports after telling its health something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth a line.
    None,
    /// It went down; the first probe in `probe_in`.
    Down { probe_in: Duration },
    /// It was down already and stays so; `loud` at most once every [`OUTAGE_REPORT_EVERY`]
    /// or when the kind of error changed.
    StillDown { probe_in: Duration, loud: bool },
    /// It was down and is up again.
    Up { down_for: Duration },
}

/// A destination's outage, for `accio status`.
#[derive(Debug, Clone, Copy)]
pub struct Outage<'a> {
    pub since: Instant,
    pub error: &'a DestError,
    pub next_probe: Instant,
}

impl Health {
    /// An up destination whose probes follow `retry`.
    pub fn new(retry: RetryPolicy) -> Health {
        Health {
            retry,
            state: State::Up,
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

    /// The server greeted (an attempt delivered, or failed after the greeting).
    pub fn on_greeting(&mut self, now: Instant) -> Transition {
        match self.state {
            State::Up => Transition::None,
            State::Down { since, .. } => {
                self.state = State::Up;
                Transition::Up {
                    down_for: now.saturating_duration_since(since),
                }
            }
        }
    }

    /// An attempt failed before the greeting, for a reason that is the destination's.
    /// `probe`: the attempt was the probe of a down destination (it started while down).
    pub fn on_dest_failure(
        &mut self,
        error: &DestError,
        probe: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Transition {
        let retry = self.retry;
        let kind = error.kind();
        match &mut self.state {
            State::Up => {
                let probe_in = retry_delay(&retry, retry.initial, 1, rng);
                self.state = State::Down {
                    since: now,
                    error: error.clone(),
                    probes: 1,
                    probe_at: now + probe_in,
                    warned_at: now,
                    warned: kind,
                };
                Transition::Down { probe_in }
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
    use crate::watch::error::tests::{connect_failed, dest};

    const S: Duration = Duration::from_secs(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: S,
            max: 8 * S,
            max_attempts: 10,
        }
    }

    fn failure(errno: i32) -> DestError {
        DestError::new(dest(), connect_failed(&["127.0.0.1:1"], errno))
    }

    #[test]
    fn one_failure_downs_it_one_probe_at_a_time_and_a_greeting_brings_it_up() {
        let (t0, mut rng) = (Instant::now(), fastrand::Rng::with_seed(1));
        let mut h = Health::new(policy());
        assert!(h.admits(3, 4, t0) && !h.admits(4, 4, t0));
        let refused = failure(libc::ECONNREFUSED);
        let Transition::Down { probe_in } = h.on_dest_failure(&refused, false, t0, &mut rng) else {
            panic!("not down");
        };
        assert!(probe_in >= S / 2 && probe_in <= S);
        let due = t0 + probe_in;
        assert_eq!(h.next_probe(), Some(due));
        assert!(!h.admits(0, 4, t0), "a probe before its time");
        assert!(h.admits(0, 4, due) && !h.admits(1, 4, due));
        // Failures of attempts started before it went down do not push the probe back.
        h.on_dest_failure(&refused, false, t0 + S / 4, &mut rng);
        assert_eq!(h.next_probe(), Some(due));
        // A failed probe does, with backoff.
        h.on_dest_failure(&refused, true, due, &mut rng);
        assert!(h.next_probe().is_some_and(|p| p >= due + S));
        assert_eq!(
            h.on_greeting(due + 10 * S),
            Transition::Up {
                down_for: probe_in + 10 * S
            }
        );
        assert!(h.is_up() && h.outage().is_none());
        assert_eq!(h.on_greeting(due + 11 * S), Transition::None);
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
        h.on_dest_failure(&refused, false, t0, &mut rng);
        assert!(!loud(h.on_dest_failure(&refused, true, t0 + S, &mut rng)));
        let unreachable = failure(libc::ENETUNREACH);
        assert!(loud(h.on_dest_failure(
            &unreachable,
            true,
            t0 + 2 * S,
            &mut rng
        )));
        assert!(!loud(h.on_dest_failure(
            &unreachable,
            true,
            t0 + 3 * S,
            &mut rng
        )));
        let later = t0 + 2 * S + OUTAGE_REPORT_EVERY;
        assert!(loud(h.on_dest_failure(&unreachable, true, later, &mut rng)));
        assert_eq!(h.outage().map(|o| o.since), Some(t0));
    }
}
