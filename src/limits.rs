//! Process resource limits the service and the receiver set for themselves.
//!
//! Both `accio watch` and `accio serve` hold two descriptors per connection (a socket and a
//! file). systemd starts services with a soft `RLIMIT_NOFILE` of 1024 and a much larger hard
//! limit; raising the soft limit to the hard one at start is what the kernel intends the pair
//! for (systemd.exec(5): "applications may raise the soft limit").

use std::io;

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile`]: what the process may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit now in force (what `open` and `accept` are held to).
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise the soft one to).
    pub hard: u64,
}

/// Reads `RLIMIT_NOFILE`.
///
/// # Errors
/// getrlimit(2)'s error.
pub fn nofile() -> io::Result<NoFile> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to a rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NoFile {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limits in force.
/// An infinite hard limit is capped at `nr_open` (the kernel refuses more), read from
/// `/proc/sys/fs/nr_open`, or 1,048,576 when that cannot be read.
///
/// # Errors
/// getrlimit(2) or setrlimit(2)'s error; the limits are then unchanged.
pub fn raise_nofile() -> io::Result<NoFile> {
    let now = nofile()?;
    let mut target = now.hard;
    if now.hard == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target <= now.soft {
        return Ok(now);
    }
    let r = libc::rlimit {
        rlim_cur: target,
        rlim_max: now.hard,
    };
    // SAFETY: a valid pointer to a rlimit struct; the soft limit is at most the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    nofile()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let after = raise_nofile().expect("raise");
        assert!(after.soft <= after.hard);
        let before_hard = nofile().expect("read").hard;
        assert_eq!(after.hard, before_hard);
        if after.hard != libc::RLIM_INFINITY {
            assert_eq!(after.soft, after.hard);
        }
    }
}
