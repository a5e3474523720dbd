//! The end of an attempt: what it says about the destination (its health, its limit), and
//! what becomes of the file. [`Core::after_attempt`] decides the file's next state as a
//! value ([`Next`]), with the bookkeeping and reports that go with it; [`Core::apply`] is the
//! one place that makes it so. Until then the file is [`State::Looking`], never a stand-in
//! that a path might forget to overwrite.

use std::time::Instant;

use super::entry::{Cont, Pending, State, Wait};
use super::{
    retry_delay, After, Core, Hint, Identity, Key, Outcome, Report, BUSY_RECHECK,
    DISPOSITION_REPORT_EVERY,
};

/// What becomes of a file an attempt just left ([`Core::after_attempt`] decides,
/// [`Core::apply`] makes it so).
#[derive(Debug)]
pub(super) enum Next {
    /// Forgotten, and its name looked at afresh (delivered, given up, gone; or nothing is
    /// known).
    Forget,
    /// Delivered and moved out of its name with no event since: forgotten, no look (one
    /// `lstat` less per file).
    Vacated,
    /// Not a regular file: reported once, forgotten, and its name looked at afresh.
    Special(Identity),
    /// Settles again, from what a look finds; `closed`: a close vouches for it.
    Look { closed: bool },
    /// Into its lane's ready queue (`front`: it was the oldest).
    Ready { front: bool },
    /// Still open for writing: its writers are asked again at `recheck_at`.
    Writing { recheck_at: Instant },
    /// Waits until `until`, then ready.
    Wait { why: Wait, until: Instant },
}

impl Core {
    /// An attempt ended (`None`: its task panicked or was aborted; nothing is known).
    pub fn finished(&mut self, now: Instant, key: Key, outcome: Option<Outcome>) {
        self.advance(now);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let State::InFlight {
            lane,
            probe,
            closed: closed_during,
            modified: modified_during,
            moved: moved_during,
        } = e.state
        else {
            return;
        };
        // Out of flight at once; what it is now is decided below, and `apply` sets it.
        e.state = State::Looking;
        self.waiting.add(&key, e.since);
        if modified_during {
            // Written to while the attempt had it: whatever made it look complete (moved
            // in, closed) is older than that write.
            e.moved_in = false;
            e.closed = false;
        }
        let w = key.0;
        let d = self.watches[w].p.dest;
        self.lanes.end(w, lane.is_some_and(|t| !t.released()));
        let Some(outcome) = outcome else {
            if let Some(t) = lane {
                self.lanes.lanes[d].limiter.forget(t, now);
            }
            return self.apply(key, Next::Forget);
        };
        // What the attempt says about the destination.
        match &outcome {
            Outcome::Delivered {
                uploaded: Some(u),
                paced,
                ..
            } => {
                self.dest_up(d);
                let limiter = &mut self.lanes.lanes[d].limiter;
                let change = lane.and_then(|t| limiter.on_success(t, u.greeting, *paced, now));
                self.report_limit(d, change.is_some());
            }
            Outcome::Failed {
                greeting: Some(g),
                error,
            } => {
                self.dest_up(d);
                let limiter = &mut self.lanes.lanes[d].limiter;
                let change =
                    lane.and_then(|t| limiter.on_failure(t, Some(*g), error.congestion(), now));
                self.report_limit(d, change.is_some());
            }
            // Abandoned after later attempts were greeted: an outlier by construction (a
            // hung worker, a lost SYN), neither congestion nor a sign of an outage; the file
            // goes again at once.
            Outcome::DestinationFailed { .. } if self.abandoned.remove(&key) => {
                let limiter = &mut self.lanes.lanes[d].limiter;
                let change = lane.and_then(|t| limiter.on_failure(t, None, false, now));
                self.report_limit(d, change.is_some());
            }
            Outcome::DestinationFailed { error } => {
                let limiter = &mut self.lanes.lanes[d].limiter;
                let change =
                    lane.and_then(|t| limiter.on_failure(t, None, error.congestion(), now));
                self.report_limit(d, change.is_some());
                self.dest_failed(d, &key, error.clone(), probe);
            }
            // Nothing about the server (the file was gone, busy, young, ...): the limiter
            // only forgets the attempt.
            _ => {
                if let Some(t) = lane {
                    self.lanes.lanes[d].limiter.forget(t, now);
                }
            }
        }
        // Ended before it could be abandoned (or otherwise): no mark outlives its attempt.
        self.abandoned.remove(&key);
        // Moved or deleted by the attempt itself, and no event about the name since the
        // attempt started: nothing is there to look at (a file that comes into the name later
        // is announced by its own event, or found by the rescan a lost event causes).
        let vacated = matches!(outcome, Outcome::Delivered { vacated: true, .. })
            && !(closed_during || modified_during || moved_during);
        let next = match self.after_attempt(&key, outcome, closed_during) {
            Next::Forget if vacated => Next::Vacated,
            next => next,
        };
        self.apply(key.clone(), next);
        if moved_during {
            // Whatever became of the file the attempt had, the name now holds one renamed
            // in: complete by the writers' convention.
            self.look(key, Cont::Hint(Hint::MovedIn));
        }
    }

    /// What becomes of a file after an attempt (with the bookkeeping and reports that go
    /// with it): [`Core::apply`] makes it so.
    fn after_attempt(&mut self, key: &Key, outcome: Outcome, closed_during: bool) -> Next {
        let now = self.now;
        let w = key.0;
        match outcome {
            Outcome::Delivered { .. } => {
                self.watches[w].sent += 1;
                Next::Forget
            }
            Outcome::GaveUp => {
                self.watches[w].failed += 1;
                Next::Forget
            }
            Outcome::Gone => Next::Forget,
            Outcome::Special(id) => Next::Special(id),
            Outcome::Busy => Next::Wait {
                why: Wait::Busy,
                until: now + BUSY_RECHECK.max(self.settle(w)),
            },
            Outcome::Changed => Next::Look { closed: false },
            Outcome::Writer => {
                self.report(Report::WriterOpen { key: key.clone() });
                match self.entries.get(key) {
                    // Closed while the attempt looked: the writer it saw may be gone.
                    Some(e) if closed_during && e.moved_in => Next::Ready { front: false },
                    _ if closed_during => Next::Look { closed: true },
                    _ => Next::Writing {
                        recheck_at: now + self.writer_recheck(w),
                    },
                }
            }
            Outcome::Young { wait } => {
                let quiet = self.writer_quiet(w);
                self.report(Report::Young {
                    key: key.clone(),
                    quiet,
                    wait,
                });
                if closed_during {
                    // Its writer closed it while the attempt looked: settle from that close.
                    return Next::Look { closed: true };
                }
                Next::Wait {
                    why: Wait::Young,
                    until: now + wait,
                }
            }
            // Back to the front of its lane: it was the oldest, and nothing is known
            // against it.
            Outcome::DestinationFailed { .. } => Next::Ready { front: true },
            Outcome::Failed { error, .. } => {
                let Some(e) = self.entries.get_mut(key) else {
                    return Next::Forget;
                };
                // The service short of descriptors or memory is not the file's fault: the
                // attempt is retried without counting against `max_attempts`.
                if !error.service_trouble() {
                    e.failures = e.failures.saturating_add(1);
                }
                let attempt = e.failures;
                let retry_in =
                    retry_delay(&self.p.retry, self.p.retry.initial, attempt, &mut self.rng);
                self.report(Report::AttemptFailed {
                    key: key.clone(),
                    attempt,
                    max: self.p.retry.max_attempts,
                    error: error.clone(),
                    retry_in,
                });
                Next::Wait {
                    why: Wait::Backoff {
                        error: Box::new(error),
                    },
                    until: now + retry_in,
                }
            }
            Outcome::DispositionFailed { id, after, error } => {
                let floor = self.p.retry.initial.max(BUSY_RECHECK);
                let Some(e) = self.entries.get_mut(key) else {
                    return Next::Forget;
                };
                let (failures, loud) = match &e.pending {
                    Some(p) => {
                        let n = p.failures.saturating_add(1);
                        let news = p.error.kind() != error.kind();
                        (n, news || n % DISPOSITION_REPORT_EVERY == 0)
                    }
                    None => (1, true),
                };
                let retry_in = retry_delay(&self.p.retry, floor, failures, &mut self.rng);
                let delivered = matches!(after, After::Delivered);
                e.pending = Some(Box::new(Pending {
                    id,
                    after,
                    failures,
                    error: error.clone(),
                }));
                self.report(Report::DispositionFailed {
                    key: key.clone(),
                    error,
                    failures,
                    retry_in,
                    delivered,
                    loud,
                });
                Next::Wait {
                    why: Wait::Disposition,
                    until: now + retry_in,
                }
            }
        }
    }

    /// Makes `next` the state of `key`, which an attempt just left.
    fn apply(&mut self, key: Key, next: Next) {
        match next {
            Next::Forget => {
                self.remove(&key);
                // Always look at the name again: if it was replaced while being sent, the
                // new file is there and must be sent too.
                self.look(key, Cont::Settle { closed: false });
            }
            Next::Vacated => self.remove(&key),
            Next::Special(id) => {
                self.ignore(key.clone(), id);
                // It may have been replaced while the attempt looked (events are swallowed
                // then, and a listing skips a name in flight): look at what it holds now.
                // Still the same special entry: not reported again.
                self.look(key, Cont::Settle { closed: false });
            }
            // Left `Looking`: the answer settles it (or forgets it).
            Next::Look { closed } => self.look(key, Cont::Settle { closed }),
            Next::Ready { front } => self.requeue(&key, front),
            Next::Writing { recheck_at } => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.state = State::Writing { last: self.now };
                    self.arm(&key, recheck_at);
                }
            }
            Next::Wait { why, until } => self.wait(&key, why, until),
        }
    }
}
