//! What the core holds about one name: its state, its failures, a pending move or delete,
//! its live timer, and what vouches for its content.

use std::time::Instant;

use super::limiter::Ticket;
use super::timers::Gen;
use super::{After, Hint, Identity};
use crate::watch::error::{DispositionError, FileError};

/// A file's identity (inode, size, times) as 64 bits: all a settling file needs to be told
/// unchanged, in a fifth of the memory (every held file pays for it).
pub(super) fn fingerprint(id: &Identity) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// What an `lstat` answer continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cont {
    /// A hint that needs the entry's kind (and identity).
    Hint(Hint),
    /// Settle afresh from now; `closed`: as a file closed after writing.
    Settle { closed: bool },
    /// The settle time passed: ready if unchanged.
    SettleCheck,
    /// A name a refill took from the listing's reserve or tail: it settles from its last
    /// write, as the listing's own names do.
    Refill,
}

#[derive(Debug, Clone)]
pub(super) enum Wait {
    /// After a failed attempt. Boxed: every held entry pays for the largest state.
    Backoff { error: Box<FileError> },
    /// Another instance has it.
    Busy,
    /// Writers unknown, changed recently.
    Young,
    /// The move/delete failed; trying again.
    Disposition,
}

#[derive(Debug, Clone)]
pub(super) enum State {
    /// Seen being written and not closed since `last` activity.
    Writing { last: Instant },
    /// Must stay the same (its identity's [`fingerprint`] `snap`) until `since + settle`.
    Settling { since: Instant, snap: u64 },
    /// In its watch's ready (or finish-only) queue under this sequence number.
    Ready { seq: u64 },
    /// An attempt has it; whatever happens to the name meanwhile, it is looked at again
    /// afterwards.
    InFlight {
        /// Counted in its destination's lane (not a finish-only attempt): what its limiter
        /// needs to know again when it ends.
        lane: Option<Ticket>,
        /// The probe of a down destination.
        probe: bool,
        /// A close was seen meanwhile (such events are otherwise dropped).
        closed: bool,
        /// A write or re-create was seen meanwhile: after an attempt that did not deliver,
        /// `moved_in` and `closed` no longer vouch for the content.
        modified: bool,
        /// A file was renamed in over the name meanwhile: afterwards it is handled as moved
        /// in (whatever the attempt found).
        moved: bool,
    },
    /// Until its timer fires.
    Waiting { why: Wait, until: Instant },
    /// What the name holds now is being looked at (an attempt ended, and neither its
    /// outcome nor the events tell): the answer decides.
    Looking,
}

/// A move or delete still to do, and how often it failed.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: Identity,
    pub(super) after: After,
    pub(super) failures: u32,
    pub(super) error: DispositionError,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) state: State,
    /// Failed attempts so far (those that count against `max_attempts`).
    pub(super) failures: u32,
    /// Boxed: rare, and every held entry pays for the field.
    pub(super) pending: Option<Box<Pending>>,
    /// The last timer armed for it (older ones are stale); none since it was last queued.
    pub(super) timer: Option<Gen>,
    /// Seen moved in (and not written in place since).
    pub(super) moved_in: bool,
    /// A close after writing was seen since the last change.
    pub(super) closed: bool,
    /// Made ready by a listing's timestamps alone (no look since): its next attempt checks
    /// them again at the claim ([`super::Start::settle`]). Cleared by any other way into a
    /// ready queue, and by that attempt.
    pub(super) stamps: bool,
    /// When the core first knew of it (delivery latency, age of waiting files).
    pub(super) since: Instant,
}

impl Entry {
    pub(super) fn new(state: State, now: Instant) -> Entry {
        Entry {
            state,
            failures: 0,
            pending: None,
            timer: None,
            moved_in: false,
            closed: false,
            stamps: false,
            since: now,
        }
    }
}
