//! Which connections the receiver takes: a bound on all of them, a bound per source address,
//! and `accept` failures that back off and are logged at most once a second.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Descriptors serve keeps for itself beyond its connections: stdio, the listener, the
/// runtime's epoll and wakers, DIR, signal handling, with room to spare.
pub const RESERVED_FDS: u64 = 64;

/// The default `--max-connections` for a soft descriptor limit of `nofile`: each connection
/// holds at most two descriptors (its socket, and its file once data arrived).
pub fn default_max_connections(nofile: u64) -> usize {
    let n = nofile.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

/// The default `--max-per-address`: an eighth of the total, at most 256, so that one address
/// (one host, or one NAT) can never take every slot, yet a busy client is not starved.
pub fn default_max_per_address(max_connections: usize) -> usize {
    (max_connections / 8).clamp(1, 256)
}

/// What counts as "one source address": an IPv4 address (also when it arrives IPv4-mapped on
/// the dual-stack socket), or an IPv6 /64, since one IPv6 host usually has a whole /64 to
/// pick addresses from.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections held per source address.
#[derive(Debug)]
pub struct PerAddress {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerAddress`], given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer`, or `None` if its address holds `max` already.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let key = source_key(peer);
        // A poisoned lock only means a panic elsewhere while counting; the map is still whole.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: self.clone(),
            key,
        })
    }

    /// Connections held from `peer`'s address.
    pub fn held(&self, peer: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&source_key(peer)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            // Addresses seen once must not accumulate for ever.
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A warning that can repeat quickly (every failed `accept`, every refused connection): logged
/// at most once a second, with the number of times it happened since the last line.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// Counts one occurrence; logs `what` if the last line is a second old.
    pub fn hit(&mut self, what: impl Display) {
        self.since += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::INTERVAL)
        {
            return;
        }
        if self.since == 1 {
            tracing::warn!("{what}");
        } else {
            tracing::warn!("{what} ({} times in the last second or more)", self.since);
        }
        self.last = Some(now);
        self.since = 0;
    }

    /// Occurrences not logged yet (counted since the last line), and forgets them.
    pub fn take_unreported(&mut self) -> u64 {
        std::mem::take(&mut self.since)
    }
}

/// The pause after a failed `accept`: none for a failure of one connection (it was aborted
/// by its client), growing from 10 ms to 1 s while the process is out of descriptors or
/// memory (accepting again at once would fail again), back to none after a success.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// How long to wait after `e`.
    pub fn failed(&mut self, e: &std::io::Error) -> Duration {
        let resources = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !resources {
            return Duration::ZERO;
        }
        self.next = (self.next * 2).clamp(Self::FIRST, Self::MAX);
        self.next
    }

    pub fn succeeded(&mut self) {
        self.next = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(20_000), 9968);
        assert_eq!(default_max_connections(10), 1);
        assert_eq!(default_max_per_address(480), 60);
        assert_eq!(default_max_per_address(9968), 256);
        assert_eq!(default_max_per_address(3), 1);
    }

    #[test]
    fn one_address_is_counted_and_given_back() {
        let per = PerAddress::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = per.admit(a).unwrap();
        let _second = per.admit(mapped).unwrap();
        assert!(
            per.admit(a).is_none(),
            "IPv4-mapped counts as the same address"
        );
        assert!(per.admit(b).is_some());
        drop(first);
        assert_eq!(per.held(a), 1);
        assert!(per.admit(a).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_address() {
        let per = PerAddress::new(1);
        let _held = per.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(per.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(per.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn throttled_counts_what_it_does_not_log() {
        let mut t = Throttled::default();
        t.hit("first"); // Logged.
        assert_eq!(t.take_unreported(), 0);
        for _ in 0..5 {
            t.hit("again"); // Within the second: counted only.
        }
        assert_eq!(t.take_unreported(), 5);
        assert_eq!(t.take_unreported(), 0);
    }

    #[test]
    fn backoff_grows_only_for_resource_errors() {
        let mut b = Backoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.failed(&aborted), Duration::ZERO);
        assert_eq!(b.failed(&emfile), Duration::from_millis(10));
        assert_eq!(b.failed(&emfile), Duration::from_millis(20));
        for _ in 0..20 {
            b.failed(&emfile);
        }
        assert_eq!(b.failed(&emfile), Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.failed(&emfile), Duration::from_millis(10));
    }
}
