//! The schema: structs that `toml` fills in through serde, refusing unknown keys, wrong types,
//! missing keys and bad values at the position it knows; then the checks that relate one
//! setting to another, which name a line through the [`Spanned`] values they compare. No
//! filesystem access here (that is [`super::fs_check`]), so tests feed it text.

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::{
    Config, ConfigError, OnSuccess, RateLimits, RetryPolicy, WatchConfig, DEFAULT_EXCLUDE,
};
use crate::client::Destination;
use crate::protocol::{Confirm, Timeouts};
use crate::rate::Policy;

use super::values::{
    dur, globs, AbsPath, Dur, Glob, Host, Listen, LogLevel, Port, Ranged, RateT, ScheduleT,
    SocketPath,
};

/// Defaults of optional keys, shown in `config/accio.toml` and by `check-config`.
pub mod defaults {
    use std::time::Duration;
    /// Uploads in flight, all destinations together: large enough for distant servers;
    /// each destination's adaptive limit keeps what one server gets to what it handles.
    pub const CONCURRENCY: usize = 256;
    /// Names held in memory per watch.
    pub const ACTIVE_LIMIT: usize = 16_384;
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
    pub const RETRY_MAX: Duration = Duration::from_secs(300);
    pub const RETRY_MAX_ATTEMPTS: u32 = 10;
    /// A destination that is down is probed at least this often (a minute: an outage is
    /// noticed to be over that soon, one connection a minute costs nothing).
    pub const RETRY_PROBE_MAX: Duration = Duration::from_secs(60);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    pub const LOG_LEVEL: &str = "info";
    pub const INCLUDE: &[&str] = &["*"];
    pub const SETTLE: Duration = Duration::from_millis(250);
    pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
    /// With `recursive = true`, directory levels entered below the spool: deeper than any
    /// camera, scanner or dated layout, and a bound on what a directory loop could cost.
    pub const MAX_DEPTH: usize = 32;
    /// Without leases, a file seen being written is taken as abandoned after this much
    /// silence (or the watch's rescan interval, if longer).
    pub const WRITER_QUIET: Duration = Duration::from_secs(30);
    /// A crash's leftovers are older than any rename or copy in progress.
    pub const STALE_AFTER: Duration = Duration::from_secs(60);
}

/// Upper bound of `concurrency`: each upload holds a socket and a file open; more than this
/// is a typo, not a plan.
pub const MAX_CONCURRENCY: i64 = 1024;
/// Bounds of `active_limit`.
pub const MIN_ACTIVE_LIMIT: i64 = 4;
pub const MAX_ACTIVE_LIMIT: i64 = 10_000_000;
/// Upper bound of every duration, so that no deadline computed from one can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Upper bound of `max_depth`.
pub const MAX_DEPTH: usize = 1024;

/// What a required key is for, in "missing" messages (serde only says which key).
pub(crate) fn required_what(key: &str) -> Option<&'static str> {
    Some(match key {
        "watch" => "one or more [[watch]] tables",
        "dir" => "the spool directory to watch",
        "failed_dir" => "where files go after max_attempts failures",
        "host" => "the server's host name or IP address",
        "port" => "a port number 1-65535 or a service name",
        _ => return None,
    })
}

// The file as written. Field order is the order `unknown key` messages list them in.

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    concurrency: Option<Ranged<1, MAX_CONCURRENCY>>,
    active_limit: Option<Ranged<MIN_ACTIVE_LIMIT, MAX_ACTIVE_LIMIT>>,
    server: Option<Server>,
    timeouts: Option<TimeoutsT>,
    retry: Option<Retry>,
    shutdown_grace: Option<Dur<true>>,
    log_level: Option<LogLevel>,
    control_socket: Option<SocketPath>,
    metrics: Option<Metrics>,
    writer_quiet: Option<Dur<false>>,
    stale_after: Option<Dur<false>>,
    max_rate: Option<Spanned<RateT>>,
    rate_schedule: Option<Spanned<ScheduleT>>,
    strict_modes: Option<bool>,
    watch: Watches,
}

/// `[server]` or a watch's `server = { ... }`. Not [`Spanned`] as a whole: a table made by
/// dotted keys (`server.host = ...`) has no position; its host has.
#[derive(serde::Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Server {
    host: Spanned<Host>,
    port: Port,
    concurrency: Option<Ranged<1, MAX_CONCURRENCY>>,
    adaptive: Option<bool>,
    confirm: Option<Confirm>,
    max_rate: Option<Spanned<RateT>>,
    rate_schedule: Option<Spanned<ScheduleT>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsT {
    connect: Option<Dur<false>>,
    handshake: Option<Dur<false>>,
    stall: Option<Dur<false>>,
    close: Option<Dur<false>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    initial: Option<Dur<false>>,
    max: Option<Spanned<Dur<false>>>,
    max_attempts: Option<Ranged<0, { u32::MAX as i64 }>>,
    probe_max: Option<Spanned<Dur<false>>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Metrics {
    listen: Option<Listen>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    dir: Spanned<AbsPath>,
    done_dir: Option<Spanned<AbsPath>>,
    failed_dir: Spanned<AbsPath>,
    on_success: Option<OnSuccess>,
    server: Option<Server>,
    include: Option<Spanned<Vec<Glob>>>,
    exclude: Option<Spanned<Vec<Glob>>>,
    settle: Option<Dur<true>>,
    rescan_interval: Option<Dur<false>>,
    recursive: Option<bool>,
    max_depth: Option<Ranged<0, { MAX_DEPTH as i64 }>>,
    prune_empty_dirs: Option<bool>,
}

/// The limit set by `max_rate` or `rate_schedule` at one level (`key` its prefix, e.g.
/// `""`, `"server."`); both at once is refused: which would win is not obvious.
fn policy(
    cx: &Ctx,
    prefix: &str,
    max_rate: Option<&Spanned<RateT>>,
    schedule: Option<&Spanned<ScheduleT>>,
) -> Checked<Policy> {
    match (max_rate, schedule) {
        (Some(_), Some(s)) => Err(cx.err(
            &s.span(),
            &format!("{prefix}rate_schedule"),
            format!("set together with {prefix}max_rate; use one: a fixed max_rate, or a rate_schedule (whose entries may be \"off\")"),
        )),
        (Some(r), None) => Ok(Policy::of_rate(r.get_ref().0)),
        (None, Some(s)) => Ok(Policy::Schedule(s.get_ref().0.clone())),
        (None, None) => Ok(Policy::Unlimited),
    }
}

/// `[[watch]]` tables: an array with at least one. Its own visitor, so that `[watch]` (a
/// table) is refused with the fix.
struct Watches(Vec<Spanned<Watch>>);

impl<'de> Deserialize<'de> for Watches {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Watches;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of tables (write [[watch]], not [watch])")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Watches, A::Error> {
                let mut v = Vec::new();
                while let Some(w) = a.next_element()? {
                    v.push(w);
                }
                if v.is_empty() {
                    return Err(de::Error::custom(
                        "empty; at least one [[watch]] table is required",
                    ));
                }
                Ok(Watches(v))
            }
        }
        d.deserialize_seq(V)
    }
}

// From the file to the settings: the checks that relate values.

/// Where the keys whose values are checked against the filesystem are, for messages.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpans {
    /// The host of the watch's server (its own, or the top-level one it inherits).
    pub server: Range<usize>,
    pub dir: Range<usize>,
    pub done_dir: Option<Range<usize>>,
    pub failed_dir: Range<usize>,
}

/// A validated config and the spans the filesystem checks need.
pub(crate) struct Parsed {
    pub config: Config,
    pub watch_spans: Vec<WatchSpans>,
}

/// Turns problems into [`ConfigError`]s that name file, line and key.
pub(crate) struct Ctx<'a> {
    pub text: &'a str,
    pub file: &'a Path,
}

impl Ctx<'_> {
    pub fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            self.file,
            Some(line_of(self.text, span.start)),
            Some(key.to_string()),
            message,
        )
    }
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

type Checked<T> = Result<T, ConfigError>;

impl File {
    /// The settings, with defaults filled in, once they agree with each other.
    pub(crate) fn into_config(self, cx: &Ctx) -> Checked<Parsed> {
        let concurrency = self.concurrency.map_or(defaults::CONCURRENCY, Ranged::get);
        let t = self.timeouts;
        let timeout = |pick: fn(&TimeoutsT) -> Option<Dur<false>>| {
            dur(t.as_ref().and_then(pick), defaults::TIMEOUT)
        };
        let timeouts = Timeouts {
            connect: timeout(|t| t.connect),
            handshake: timeout(|t| t.handshake),
            stall: timeout(|t| t.stall),
            close: timeout(|t| t.close),
        };
        let retry = self.retry.map_or(Ok(default_retry()), |r| retry(cx, r))?;

        let all = policy(cx, "", self.max_rate.as_ref(), self.rate_schedule.as_ref())?;
        if let Some(top) = &self.server {
            // Checked here too: a [server] that every watch overrides is still read.
            policy(
                cx,
                "server.",
                top.max_rate.as_ref(),
                top.rate_schedule.as_ref(),
            )?;
        }
        let mut watches = Vec::new();
        let mut watch_spans = Vec::new();
        let mut destinations: Vec<(Destination, Policy)> = Vec::new();
        for (i, w) in self.watch.0.into_iter().enumerate() {
            let (w, spans, limit) = watch(cx, i, w, self.server.as_ref())?;
            // Watches that send to one server share its limit: they must agree on it.
            match destinations.iter().position(|(d, _)| *d == w.server) {
                Some(j) if destinations[j].1 != limit => {
                    return Err(cx.err(
                        &spans.server,
                        &format!("watch[{i}].server"),
                        format!(
                            "{} is also the server of an earlier watch with another max_rate or rate_schedule; watches that send to one server share its limit, so give them the same",
                            w.server
                        ),
                    ));
                }
                Some(_) => {}
                None => destinations.push((w.server.clone(), limit)),
            }
            watches.push(w);
            watch_spans.push(spans);
        }
        one_watch_per_spool(cx, &watches, &watch_spans, None)?;
        relate_destinations(cx, &watches, &watch_spans)?;

        Ok(Parsed {
            config: Config {
                path: cx.file.to_path_buf(),
                concurrency,
                active_limit: self
                    .active_limit
                    .map_or(defaults::ACTIVE_LIMIT, Ranged::get),
                timeouts,
                retry,
                shutdown_grace: dur(self.shutdown_grace, defaults::SHUTDOWN_GRACE),
                log_level: self
                    .log_level
                    .map_or_else(|| defaults::LOG_LEVEL.to_string(), |l| l.0),
                watches,
                control_socket: self
                    .control_socket
                    .map_or_else(|| PathBuf::from(super::DEFAULT_CONTROL_SOCKET), |p| p.0),
                metrics_listen: self.metrics.and_then(|m| m.listen).map(|l| l.0),
                writer_quiet: dur(self.writer_quiet, defaults::WRITER_QUIET),
                stale_after: dur(self.stale_after, defaults::STALE_AFTER),
                rates: RateLimits { all, destinations },
                strict_modes: self.strict_modes.unwrap_or(true),
            },
            watch_spans,
        })
    }
}

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        initial: defaults::RETRY_INITIAL,
        max: defaults::RETRY_MAX,
        max_attempts: defaults::RETRY_MAX_ATTEMPTS,
        probe_max: defaults::RETRY_PROBE_MAX,
    }
}

fn retry(cx: &Ctx, r: Retry) -> Checked<RetryPolicy> {
    let initial = dur(r.initial, defaults::RETRY_INITIAL);
    let max = match r.max {
        Some(m) if m.get_ref().0 < initial => {
            return Err(cx.err(
                &m.span(),
                "retry.max",
                format!(
                    "{} is shorter than retry.initial ({})",
                    humantime::format_duration(m.get_ref().0),
                    humantime::format_duration(initial)
                ),
            ))
        }
        Some(m) => m.get_ref().0,
        None => defaults::RETRY_MAX.max(initial),
    };
    // Probes start at `initial` too; a shorter cap would make the first delay the cap.
    let probe_max = match r.probe_max {
        Some(m) if m.get_ref().0 < initial => {
            return Err(cx.err(
                &m.span(),
                "retry.probe_max",
                format!(
                    "{} is shorter than retry.initial ({})",
                    humantime::format_duration(m.get_ref().0),
                    humantime::format_duration(initial)
                ),
            ))
        }
        Some(m) => m.get_ref().0,
        None => defaults::RETRY_PROBE_MAX.max(initial),
    };
    Ok(RetryPolicy {
        initial,
        max,
        max_attempts: r
            .max_attempts
            .map_or(defaults::RETRY_MAX_ATTEMPTS, Ranged::get),
        probe_max,
    })
}

fn watch(
    cx: &Ctx,
    i: usize,
    w: Spanned<Watch>,
    default_server: Option<&Server>,
) -> Checked<(WatchConfig, WatchSpans, Policy)> {
    let key = |name: &str| format!("watch[{i}].{name}");
    let span = w.span();
    let w = w.into_inner();
    let on_success = w.on_success.unwrap_or(OnSuccess::Move);
    match (on_success, &w.done_dir) {
        (OnSuccess::Move, None) => {
            return Err(cx.err(
                &span,
                &key("done_dir"),
                "missing; required when on_success = \"move\" (the default): where delivered files go",
            ))
        }
        (OnSuccess::Delete, Some(v)) => {
            return Err(cx.err(
                &v.span(),
                &key("done_dir"),
                "set, but on_success = \"delete\" never uses it; remove done_dir or use on_success = \"move\"",
            ))
        }
        _ => {}
    }

    let server = match (w.server, default_server) {
        // Lane settings not given here come from the top-level [server].
        (Some(mut own), top) => {
            if let Some(top) = top {
                own.concurrency = own.concurrency.or(top.concurrency);
                own.adaptive = own.adaptive.or(top.adaptive);
                own.confirm = own.confirm.or(top.confirm);
                // The limit as a whole: a watch's own max_rate or rate_schedule replaces
                // [server]'s, either one.
                if own.max_rate.is_none() && own.rate_schedule.is_none() {
                    own.max_rate = top.max_rate.clone();
                    own.rate_schedule = top.rate_schedule.clone();
                }
            }
            own
        }
        (None, Some(top)) => top.clone(),
        (None, None) => return Err(cx.err(
            &span,
            &key("server"),
            "missing, and there is no top-level [server] to fall back on; add [server] or server = { host = \"...\", port = ... } to this watch",
        )),
    };

    let include_span = w.include.as_ref().map(Spanned::span);
    let include = match w.include {
        Some(v) if v.get_ref().is_empty() => {
            return Err(cx.err(
                &v.span(),
                &key("include"),
                "empty: no file would ever be uploaded; use [\"*\"] for all names",
            ))
        }
        Some(v) => globs(v.into_inner()),
        None => defaults::INCLUDE.iter().map(|s| s.to_string()).collect(),
    };

    let recursive = w.recursive.unwrap_or(false);
    // A path glob (with `/`) could only match in subdirectories.
    if !recursive {
        let in_include = include.iter().find(|g| g.contains('/')).cloned();
        let in_exclude = w.exclude.as_ref().and_then(|v| {
            v.get_ref()
                .iter()
                .find(|g| g.0.contains('/'))
                .map(|g| (v.span(), g.0.clone()))
        });
        let found = match (in_include, in_exclude) {
            (Some(g), _) => Some((include_span.clone().unwrap_or(span.clone()), "include", g)),
            (None, Some((sp, g))) => Some((sp, "exclude", g)),
            (None, None) => None,
        };
        if let Some((sp, name, g)) = found {
            return Err(cx.err(
                &sp,
                &key(name),
                format!("glob {g:?} contains `/`, which matches only in subdirectories; set recursive = true, or match file names"),
            ));
        }
    }

    let limit = policy(
        cx,
        &key("server."),
        server.max_rate.as_ref(),
        server.rate_schedule.as_ref(),
    )?;
    let spans = WatchSpans {
        server: server.host.span(),
        dir: w.dir.span(),
        done_dir: w.done_dir.as_ref().map(Spanned::span),
        failed_dir: w.failed_dir.span(),
    };
    let dir = w.dir.into_inner().0;
    let done_dir = w.done_dir.map(|d| d.into_inner().0);
    let failed_dir = w.failed_dir.into_inner().0;

    let mut targets = Vec::new();
    if let (Some(d), Some(s)) = (&done_dir, &spans.done_dir) {
        targets.push(("done_dir", normalize(d), s.clone()));
    }
    targets.push((
        "failed_dir",
        normalize(&failed_dir),
        spans.failed_dir.clone(),
    ));
    keep_apart(cx, i, &normalize(&dir), &targets, false)?;

    Ok((
        WatchConfig {
            dir,
            done_dir,
            failed_dir,
            on_success,
            server: Destination {
                host: server.host.into_inner().0,
                port: server.port.0,
            },
            server_concurrency: server.concurrency.map(Ranged::get),
            adaptive: server.adaptive.unwrap_or(true),
            confirm: server.confirm.unwrap_or_default(),
            include,
            exclude: w.exclude.map(Spanned::into_inner).map_or_else(
                || DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect(),
                globs,
            ),
            settle: dur(w.settle, defaults::SETTLE),
            rescan_interval: dur(w.rescan_interval, defaults::RESCAN_INTERVAL),
            recursive,
            max_depth: w.max_depth.map_or(defaults::MAX_DEPTH, Ranged::get),
            prune_empty_dirs: w.prune_empty_dirs.unwrap_or(false),
        },
        spans,
        limit,
    ))
}

/// A watch's done and failed directories must be distinct and outside its spool: a file
/// found in the spool again would be sent again. Checked here on the paths as written (after
/// [`normalize`]) and by [`super::fs_check`] on the real paths (`resolved`).
pub(crate) fn keep_apart(
    cx: &Ctx,
    i: usize,
    spool: &Path,
    targets: &[(&str, PathBuf, Range<usize>)],
    resolved: bool,
) -> Checked<()> {
    let key = |name: &str| format!("watch[{i}].{name}");
    let verb = if resolved { "resolves to" } else { "is" };
    for (name, p, span) in targets {
        if p == spool {
            return Err(cx.err(
                span,
                &key(name),
                format!("{verb} the spool directory itself ({})", spool.display()),
            ));
        }
        if p.starts_with(spool) {
            let place = if resolved {
                format!("resolves to {}, ", p.display())
            } else {
                "is ".to_string()
            };
            return Err(cx.err(
                span,
                &key(name),
                format!(
                    "{place}inside the spool directory {}; put it beside the spool, not in it",
                    spool.display()
                ),
            ));
        }
    }
    if let [(_, done, _), (_, failed, span)] = targets {
        if done == failed {
            let shown = if resolved {
                format!(" ({})", done.display())
            } else {
                String::new()
            };
            return Err(cx.err(
                span,
                &key("failed_dir"),
                format!("{verb} the same directory as done_dir{shown}; delivered and failed files must be told apart"),
            ));
        }
    }
    Ok(())
}

/// `.` and `..` resolved without touching the filesystem, for comparing paths as written.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Watches that send to the same destination share its lane: they must agree on its
/// settings.
fn relate_destinations(cx: &Ctx, watches: &[WatchConfig], spans: &[WatchSpans]) -> Checked<()> {
    for (i, a) in watches.iter().enumerate() {
        for (j, b) in watches.iter().enumerate().take(i) {
            if a.server == b.server
                && (a.server_concurrency != b.server_concurrency || a.adaptive != b.adaptive)
            {
                return Err(cx.err(
                    &spans[i].server,
                    &format!("watch[{i}].server"),
                    format!(
                        "{} is also the server of watch[{j}] with other lane settings (concurrency, adaptive); watches that send to one server share its lane, so give them the same settings",
                        a.server
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Two watches on one directory would race each other for every file. `real`: each
/// spool's resolved path (from [`super::fs_check`]); `None`: compared as written.
pub(crate) fn one_watch_per_spool(
    cx: &Ctx,
    watches: &[WatchConfig],
    spans: &[WatchSpans],
    real: Option<&[PathBuf]>,
) -> Checked<()> {
    let spools: Vec<PathBuf> = match real {
        Some(r) => r.to_vec(),
        None => watches.iter().map(|w| normalize(&w.dir)).collect(),
    };
    for (i, p) in spools.iter().enumerate() {
        if let Some(j) = spools[..i].iter().position(|o| o == p) {
            let resolves = match real {
                Some(_) => format!(" resolves to {},", p.display()),
                None => " is".to_string(),
            };
            return Err(cx.err(
                &spans[i].dir,
                &format!("watch[{i}].dir"),
                format!(
                    "{}{resolves} already watched by watch[{j}] (line {}); each spool directory may appear once",
                    watches[i].dir.display(),
                    line_of(cx.text, spans[j].dir.start)
                ),
            ));
        }
    }
    Ok(())
}
