//! The values of the configuration that check themselves as serde reads them (a range, a
//! duration, a port, a host, an absolute path, a glob, a rate, a timetable): their errors
//! get toml's position and serde's key path. The schema ([`super::schema`]) is made of them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::compile_glob;
use super::schema::MAX_DURATION;
use crate::client::parse_port;
use crate::rate::{self, Rate, Schedule};

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// An integer in `MIN..=MAX`.
#[derive(Clone, Copy)]
pub(super) struct Ranged<const MIN: i64, const MAX: i64>(pub(super) i64);

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if !(MIN..=MAX).contains(&n) {
            return Err(de::Error::custom(format!(
                "{n} is out of range; expected {MIN}-{MAX}"
            )));
        }
        Ok(Ranged(n))
    }
}

impl<const MIN: i64, const MAX: i64> Ranged<MIN, MAX> {
    /// The value; the bounds are where it fits (`MIN >= 0`).
    pub(super) fn get<T: TryFrom<i64>>(self) -> T {
        T::try_from(self.0).unwrap_or_else(|_| unreachable!("bounds fit the target type"))
    }
}

/// A duration string ("250ms", "1h 30m"), at most [`MAX_DURATION`]; zero only if `ZERO`.
/// Parsed with `humantime` directly rather than `humantime-serde`, whose error drops
/// humantime's reason (e.g. the list of known units).
#[derive(Clone, Copy)]
pub(super) struct Dur<const ZERO: bool>(pub(super) Duration);

impl<'de, const ZERO: bool> Deserialize<'de> for Dur<ZERO> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const ZERO: bool>;
        impl<const ZERO: bool> Visitor<'_> for V<ZERO> {
            type Value = Dur<ZERO>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(DURATION)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur<ZERO>, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!("invalid duration {s:?} ({e}); expected {DURATION}"))
                })?;
                if d.is_zero() && !ZERO {
                    return Err(E::custom("must be greater than zero"));
                }
                if d > MAX_DURATION {
                    return Err(E::custom(format!("{s:?} is too long; at most 365 days")));
                }
                Ok(Dur(d))
            }
        }
        d.deserialize_str(V::<ZERO>)
    }
}

const DURATION: &str = "a duration string such as \"250ms\", \"10s\" or \"5m\"";

/// `Option<Dur>` with its default.
pub(super) fn dur<const Z: bool>(v: Option<Dur<Z>>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

/// A port number or a service name from /etc/services.
#[derive(Clone, Copy)]
pub(super) struct Port(pub(super) u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 1-65535 or a service name")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                u16::try_from(n)
                    .ok()
                    .filter(|p| *p != 0)
                    .map(Port)
                    .ok_or_else(|| E::custom(format!("invalid port {n}: expected 1-65535")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Port, E> {
                parse_port(s).map(Port).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Implements `Deserialize` for a newtype over a string through a checking constructor.
macro_rules! from_string {
    ($t:ident, |$s:ident| $check:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let $s = String::deserialize(d)?;
                let check = || -> Result<$t, String> { $check };
                check().map_err(de::Error::custom)
            }
        }
    };
}

/// A host name or IP address; `[::1]`, as copied from a URL, is `::1`.
#[derive(Clone)]
pub(super) struct Host(pub(super) String);
from_string!(Host, |s| {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("{s:?} is not a host name or IP address"))
    } else {
        let bare = s.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        Ok(Host(bare.map_or(s.clone(), str::to_string)))
    }
});

/// An absolute path, kept as written (messages quote it) and compared after [`normalize`].
pub(super) struct AbsPath(pub(super) PathBuf);
from_string!(AbsPath, |s| abs_path(&s).map(AbsPath));

pub(super) fn abs_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    if s.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(format!("{s:?} is a relative path; use an absolute path (the service's working directory is not the config's)"));
    }
    Ok(p)
}

/// The control socket's path: absolute and short enough for a Unix socket address.
pub(super) struct SocketPath(pub(super) PathBuf);
from_string!(SocketPath, |s| {
    let p = abs_path(&s)?;
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "{len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}"
        ));
    }
    Ok(SocketPath(p))
});

/// A glob on file names.
pub(super) struct Glob(pub(super) String);
from_string!(Glob, |g| {
    if g.starts_with('/') {
        return Err(format!(
            "glob {g:?} starts with `/`: globs match paths relative to the spool"
        ));
    }
    compile_glob(&g).map_err(|e| format!("invalid glob {g:?}: {}", e.kind()))?;
    Ok(Glob(g))
});

pub(super) fn globs(v: Vec<Glob>) -> Vec<String> {
    v.into_iter().map(|g| g.0).collect()
}

/// A tracing filter whose bare words are levels.
pub(super) struct LogLevel(pub(super) String);
from_string!(LogLevel, |s| {
    // EnvFilter reads a bare word as a target name ("verbose" = everything from the target
    // `verbose`), which silently logs nothing useful; a bare word must be a level, and
    // targets are written `target=level`.
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    if let Some(word) = s.split(',').map(str::trim).find(|d| {
        !d.is_empty()
            && !d.contains(['=', '[', ':'])
            && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
    }) {
        return Err(format!("{word:?} is not a level; expected one of {}, or target=level directives such as \"accio=debug,warn\"", LEVELS.join(", ")));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&s)
        .map_err(|e| format!("invalid log filter {s:?} ({e}); expected e.g. \"info\", \"debug\" or \"accio=debug,warn\""))?;
    Ok(LogLevel(s))
});

/// The metrics listener: an IP address and a fixed port.
pub(super) struct Listen(pub(super) SocketAddr);
from_string!(Listen, |s| {
    let addr = s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?} is not an address and port; expected e.g. \"127.0.0.1:9187\" or \"[::1]:9187\""
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{s:?}: port 0 is not a fixed port; choose one, e.g. 9187"
        ));
    }
    Ok(Listen(addr))
});

/// A bandwidth limit (`max_rate`, a timetable's `rate`): a string as
/// [`crate::rate::parse_rate`] reads it (`"4MiB/s"`, `"500K"`, `"off"`), or an integer
/// number of bytes per second.
#[derive(Clone, Copy)]
pub(super) struct RateT(pub(super) Rate);

impl<'de> Deserialize<'de> for RateT {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RateT;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(rate::RATE_FORMS)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RateT, E> {
                rate::parse_rate(s).map(RateT).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RateT, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RateT, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// A time of day, `"HH:MM"`, local time.
#[derive(Clone, Copy)]
pub(super) struct TimeOfDay(pub(super) u32);
from_string!(TimeOfDay, |s| rate::parse_time_of_day(&s).map(TimeOfDay));

/// One entry of a timetable.
#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleEntry {
    at: TimeOfDay,
    rate: RateT,
}

/// `rate_schedule = [{ at = "08:00", rate = "1MiB/s" }, ...]`: rclone's timetable.
#[derive(Clone)]
pub(super) struct ScheduleT(pub(super) Schedule);

impl<'de> Deserialize<'de> for ScheduleT {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<ScheduleEntry>::deserialize(d)?;
        Schedule::new(entries.into_iter().map(|e| (e.at.0, e.rate.0)).collect())
            .map(ScheduleT)
            .map_err(|(i, why)| de::Error::custom(format!("entry {i}: {why}")))
    }
}
