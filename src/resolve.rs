//! A destination's name resolved at most once per [`FRESH`], not once per file.
//!
//! `getaddrinfo` is not free: for `localhost` it reads `/etc/nsswitch.conf` and `/etc/hosts`
//! (a dozen system calls, and a hop to a blocking thread, since it blocks), for a name in
//! DNS it asks the resolver over the network. A spool that sends ten thousand files a second
//! to `backup.example.org` asked ten thousand times, for the same answer: with `localhost`
//! that was half again the service's CPU per file (docs/cost.md, Round 8).
//! curl keeps answers for 60 s; this keeps them for one second, so a change in DNS reaches
//! the service as soon as it would have before, for every practical purpose, and a failed
//! connect forgets the answer at once (the next attempt asks again). Concurrent uploads that
//! find no fresh answer wait for one lookup, rather than each making its own. An address
//! literal is never looked up or kept.
//!
//! One [`Addresses`] per destination, kept with its other per-destination knowledge (see
//! [`crate::handshake::Handshake`]) for the life of a configuration: a reload asks again.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long an answer is used.
pub const FRESH: Duration = Duration::from_secs(1);

/// One destination's last answer, and when it was had.
#[derive(Debug, Default)]
pub struct Addresses {
    last: tokio::sync::Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    /// Lookups made, for the tests.
    lookups: std::sync::atomic::AtomicU64,
}

impl Addresses {
    /// The addresses of `host`:`port`: a literal as it is, a name from the last answer if it
    /// is fresh, else from a lookup (which waiting callers share). An empty answer is not
    /// kept.
    ///
    /// # Errors
    /// The lookup's error.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut last = self.last.lock().await;
        if let Some((addrs, at)) = &*last {
            if at.elapsed() < FRESH {
                return Ok(addrs.clone());
            }
        }
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        *last = (!addrs.is_empty()).then(|| (addrs.clone(), Instant::now()));
        Ok(addrs)
    }

    /// A connect to these addresses failed: the next one asks again.
    pub fn forget(&self) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = None;
        }
    }

    /// Lookups made so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the last answer `by` older.
    #[cfg(test)]
    fn age(&self, by: Duration) {
        if let Some((_, at)) = &mut *self.last.try_lock().unwrap() {
            *at = at.checked_sub(by).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_name_is_looked_up_once_while_fresh_and_again_after() {
        rt().block_on(async {
            let a = Addresses::default();
            let first = a.resolve("localhost", 7).await.unwrap();
            assert!(!first.is_empty());
            assert!(first.iter().all(|s| s.port() == 7 && s.ip().is_loopback()));
            for _ in 0..100 {
                assert_eq!(a.resolve("localhost", 7).await.unwrap(), first);
            }
            assert_eq!(a.lookups(), 1);
            a.age(FRESH);
            a.resolve("localhost", 7).await.unwrap();
            assert_eq!(a.lookups(), 2, "stale after FRESH");
            a.forget();
            a.resolve("localhost", 7).await.unwrap();
            assert_eq!(a.lookups(), 3, "forgotten after a failed connect");
        });
    }

    #[test]
    fn a_literal_is_never_looked_up() {
        rt().block_on(async {
            let a = Addresses::default();
            assert_eq!(
                a.resolve("127.0.0.1", 9).await.unwrap(),
                vec!["127.0.0.1:9".parse().unwrap()]
            );
            assert_eq!(
                a.resolve("::1", 9).await.unwrap(),
                vec!["[::1]:9".parse().unwrap()]
            );
            assert_eq!(a.lookups(), 0);
        });
    }
}
