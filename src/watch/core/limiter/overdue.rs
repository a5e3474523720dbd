//! When an attempt without its greeting is a suspect, and when it is overdue: a hung
//! worker told from a server's queue by what the limiter saw of the other attempts (a
//! later one greeted first: the accept queue is first in, first out; or none of ours ahead
//! of it for an overdue time). The decision the core acts on with [`super::Ticket::release`]
//! and `Action::AskGreeted`; the limiter's state, read here.

use std::time::{Duration, Instant};

use super::{dur, Limiter, Ticket};

/// An attempt without its greeting, overtaken by a later one, is suspect (its slot given to
/// another attempt, its connection kept) after at least this long ...
pub const MIN_SUSPECT: Duration = Duration::from_millis(20);
/// ... and this share of its overdue time.
const SUSPECT_SHARE: u32 = 3;
/// An attempt without its greeting is overdue after at least this long ...
pub const MIN_OVERDUE: Duration = Duration::from_millis(100);
/// ... and this many times the usual greeting time plus four deviations.
const OVERDUE_FACTOR: f64 = 6.0;

impl Limiter {
    /// At a third of the overdue time (at least [`MIN_SUSPECT`]), an attempt overtaken by a
    /// later greeting stops counting against the limit: a hung worker then holds a
    /// connection, not a slot, while its overdue time runs; one merely greeted late (a busy
    /// server's threads greet in any order) goes on, a connection above the limit for a
    /// moment. `None` before any greeting.
    pub fn suspect_after(&self) -> Option<Duration> {
        self.overdue_after()
            .map(|o| (o / SUSPECT_SHARE).max(MIN_SUSPECT).min(o))
    }

    /// Whether an attempt started after `t`'s was greeted: `t` does not wait in the
    /// server's accept queue, which is first in, first out.
    pub fn greeted_after(&self, t: &Ticket) -> bool {
        self.latest_greeted.is_some_and(|g| g > t.started)
    }

    /// How long after its start an attempt without its greeting is overdue (and looked at
    /// again): six times the usual greeting time plus four deviations (which covers the
    /// connect, a round trip, too), at least [`MIN_OVERDUE`]; `None` before any greeting.
    pub fn overdue_after(&self) -> Option<Duration> {
        self.smoothed
            .map(|(m, d)| dur(OVERDUE_FACTOR * (m + 4.0 * d)).max(MIN_OVERDUE))
    }

    /// Whether the attempt of `t`, overdue at `now`, waits on something other than the
    /// server's queue: an attempt started after it got its greeting (the accept queue is
    /// first in, first out), or none started before it is still in flight and the last one
    /// ended an overdue time ago (nothing of ours is ahead of it). If nothing ended since it
    /// started, twice that: attempts that start together as others end (a lane that
    /// refills at once) and wait for the server's workers together see no end for a while,
    /// which says nothing about any one of them.
    pub fn overtaken(&self, t: &Ticket, now: Instant) -> bool {
        if self.greeted_after(t) {
            return true;
        }
        let oldest = self.starts.keys().next().map_or(true, |o| *o >= t.started);
        let quiet = match (self.last_end, self.overdue_after()) {
            (Some(e), Some(after)) => {
                now >= e + after && (e > t.started || now >= t.started + 2 * after)
            }
            _ => false,
        };
        oldest && quiet
    }
}
