//! The handshake's own retransmission timer: when a connection attempt whose SYN or SYN-ACK
//! was lost is started again, instead of waiting for the kernel's.
//!
//! Linux sends a connection's first SYN again only after 1 s (RFC 6298's initial timeout,
//! since no round trip is known yet), then 3 s, then 7 s. On a link that drops one packet in
//! ten, about one handshake in five loses its SYN or its SYN-ACK and so takes a second more,
//! where the server is a fraction of a millisecond away: on such a link that second is most
//! of an upload's time. A service that has connected to a destination before knows its round
//! trip. This module keeps it, per destination, as TCP keeps a connection's (a smoothed
//! round trip and its mean deviation, RFC 6298), from the handshakes that needed one SYN
//! only (Karn's rule: a handshake that took longer than the first retransmission may have
//! been answered to either SYN), and gives the time after which an attempt is started
//! afresh: twice the round trip plus four deviations, at least [`MIN_RETRY`], at most
//! [`FIRST_RETRY`] (never later than the kernel would send its own), doubling for each
//! retry of one connect.
//!
//! Starting afresh means closing the socket that is still waiting (nothing is sent) and
//! connecting a new one. A SYN-ACK that comes later for the old one meets no socket and is
//! answered with a reset, so the server never accepts a connection nobody uses (a server
//! that keeps a file per connection keeps no empty one). The estimate is only a timer: a
//! wrong one costs a round trip, never a file.
//!
//! No I/O and no clock here: the caller measures and asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Without a sample: the kernel's own first retransmission of a SYN (so nothing changes
/// until a round trip is known).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Never sooner than this: the kernel's least retransmission timeout for data (200 ms) —
/// a SYN is not retried faster than a lost packet of a connection would be.
pub const MIN_RETRY: Duration = Duration::from_millis(200);

/// A destination's handshake round trip, smoothed (RFC 6298, section 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundTrip {
    /// Smoothed round trip; `None` until the first sample.
    srtt: Option<Duration>,
    /// Its mean deviation.
    rttvar: Duration,
}

impl RoundTrip {
    /// One handshake's time, from `connect` to established. A sample of a handshake that
    /// took [`FIRST_RETRY`] or more is not taken: its SYN may have been sent twice.
    pub fn sample(&mut self, took: Duration) {
        if took >= FIRST_RETRY {
            return;
        }
        match self.srtt {
            None => {
                self.srtt = Some(took);
                self.rttvar = took / 2;
            }
            Some(srtt) => {
                let delta = if srtt > took {
                    srtt - took
                } else {
                    took - srtt
                };
                // rttvar = 3/4 rttvar + 1/4 |srtt - r|; srtt = 7/8 srtt + 1/8 r.
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + took) / 8);
            }
        }
    }

    /// The smoothed round trip, once known.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// How long an attempt waits for its handshake before the `retry`th fresh start
    /// (0 for the first attempt): the first wait doubled per retry, never more than
    /// `cap`.
    pub fn retry_after(&self, retry: u32, cap: Duration) -> Duration {
        let first = match self.srtt {
            None => FIRST_RETRY,
            Some(srtt) => (srtt * 2 + self.rttvar * 4).clamp(MIN_RETRY, FIRST_RETRY),
        };
        first.saturating_mul(1u32 << retry.min(16)).min(cap)
    }
}

/// The round trips of every destination of a process, shared by its uploads.
#[derive(Debug, Default)]
pub struct Handshakes {
    by_destination: Mutex<HashMap<String, Arc<Handshake>>>,
}

impl Handshakes {
    /// The one of `destination` (made the first time it is asked for).
    pub fn of(&self, destination: &str) -> Arc<Handshake> {
        let mut map = self
            .by_destination
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(destination.to_string()).or_default().clone()
    }
}

/// One destination's round trip, shared by its uploads, and how often its connects were
/// started afresh; with its addresses as last resolved ([`crate::resolve`]).
#[derive(Debug, Default)]
pub struct Handshake {
    rtt: Mutex<RoundTrip>,
    restarts: std::sync::atomic::AtomicU64,
    /// The destination's name resolved, at most once a second.
    pub addrs: crate::resolve::Addresses,
}

impl Handshake {
    /// What [`RoundTrip::retry_after`] says now.
    pub fn retry_after(&self, retry: u32, cap: Duration) -> Duration {
        self.rtt().retry_after(retry, cap)
    }

    /// A handshake that needed one SYN took `took`.
    pub fn sample(&self, took: Duration) {
        self.rtt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sample(took);
    }

    /// A connect was started afresh.
    pub fn restarted(&self) {
        self.restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connects started afresh so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The estimate now.
    pub fn rtt(&self) -> RoundTrip {
        *self
            .rtt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unknown_round_trip_waits_as_the_kernel_would() {
        let r = RoundTrip::default();
        assert_eq!(r.retry_after(0, Duration::from_secs(10)), FIRST_RETRY);
        assert_eq!(r.retry_after(1, Duration::from_secs(10)), 2 * FIRST_RETRY);
        assert_eq!(
            r.retry_after(5, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_near_server_is_retried_at_the_floor_and_a_far_one_after_two_round_trips() {
        let mut near = RoundTrip::default();
        for _ in 0..20 {
            near.sample(Duration::from_micros(100));
        }
        assert_eq!(near.retry_after(0, Duration::from_secs(10)), MIN_RETRY);
        assert_eq!(near.retry_after(1, Duration::from_secs(10)), 2 * MIN_RETRY);

        let mut far = RoundTrip::default();
        for _ in 0..50 {
            far.sample(300 * MS);
        }
        let wait = far.retry_after(0, Duration::from_secs(10));
        assert!(wait >= 600 * MS && wait <= FIRST_RETRY, "{wait:?}");
    }

    #[test]
    fn a_handshake_that_may_have_sent_two_syns_is_no_sample() {
        let mut r = RoundTrip::default();
        r.sample(Duration::from_millis(5));
        r.sample(Duration::from_millis(1_005));
        r.sample(Duration::from_secs(3));
        assert_eq!(r.srtt(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn destinations_are_apart() {
        let all = Handshakes::default();
        all.of("a:1").sample(Duration::from_millis(1));
        assert!(all.of("a:1").rtt().srtt().is_some());
        assert!(all.of("b:1").rtt().srtt().is_none());
    }

    proptest! {
        /// Whatever the samples, a wait is within its bounds and grows with each retry.
        #[test]
        fn waits_stay_within_bounds(
            samples in proptest::collection::vec(0u64..5_000_000, 0..40),
            cap_ms in 1u64..60_000,
        ) {
            let mut r = RoundTrip::default();
            for s in samples {
                r.sample(Duration::from_micros(s));
            }
            let cap = Duration::from_millis(cap_ms);
            let mut last = Duration::ZERO;
            for retry in 0..40 {
                let w = r.retry_after(retry, cap);
                prop_assert!(w <= cap);
                prop_assert!(w >= MIN_RETRY.min(cap));
                prop_assert!(w >= last);
                last = w;
            }
            prop_assert!(r.retry_after(0, Duration::MAX) <= FIRST_RETRY);
        }
    }
}
