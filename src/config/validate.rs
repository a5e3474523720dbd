//! The schema: from the spanned tree to a [`Config`], checking types, ranges and how the
//! settings relate to each other. No filesystem access here (that is [`super::fs_check`]),
//! so unit tests and the property tests feed it text.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::tree::{self, Key, Node, Sp};
use super::{
    compile_glob, Config, ConfigError, OnSuccess, RetryPolicy, WatchConfig, DEFAULT_EXCLUDE,
};
use crate::client::{parse_port, Destination};
use crate::protocol::{Confirm, Timeouts};

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
    pub const RETRY_MAX_ATTEMPTS: i64 = 10;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    pub const LOG_LEVEL: &str = "info";
    pub const INCLUDE: &[&str] = &["*"];
    pub const SETTLE: Duration = Duration::from_millis(250);
    pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
}

/// Upper bound of `concurrency`: each upload holds a socket and a file open; more than this
/// is a typo, not a plan.
pub const MAX_CONCURRENCY: i64 = 1024;
/// Bounds of `active_limit`.
pub const MIN_ACTIVE_LIMIT: i64 = 4;
pub const MAX_ACTIVE_LIMIT: i64 = 10_000_000;
/// Upper bound of every duration, so that no deadline computed from one can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the keys whose values are checked against the filesystem are, for messages.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpans {
    /// The watch's `server` table, or the top-level `[server]` it inherits.
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
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(tree::line_of(self.text, span.start)),
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// A table being read: its dotted path (empty for the root), where it starts, its entries.
struct Table<'a> {
    path: String,
    span: Range<usize>,
    entries: &'a [(Key, Sp<Node>)],
}

impl<'a> Table<'a> {
    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Refuses any key not in `allowed`, suggesting the closest one for a typo.
    fn deny_unknown(&self, cx: &Ctx, allowed: &[&str]) -> Result<()> {
        for (k, v) in self.entries {
            if !allowed.contains(&k.name.as_str()) {
                let span = k.span.clone().unwrap_or_else(|| v.span());
                let mut msg = "unknown key".to_string();
                if let Some(s) = closest(&k.name, allowed) {
                    msg.push_str(&format!(" (did you mean `{s}`?)"));
                }
                msg.push_str(&format!("; allowed here: {}", allowed.join(", ")));
                return Err(cx.err(&span, &self.key(&k.name), msg));
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&'a Sp<Node>> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    fn required(&self, cx: &Ctx, name: &str, what: &str) -> Result<&'a Sp<Node>> {
        self.get(name).ok_or_else(|| {
            cx.err(
                &self.span,
                &self.key(name),
                format!("missing; required: {what}"),
            )
        })
    }
}

/// The allowed key nearest to a misspelt one, if it is near enough to be a typo.
fn closest<'k>(given: &str, allowed: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let given = given.to_ascii_lowercase().replace('-', "_");
    allowed
        .iter()
        .map(|a| (distance(&given, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn wrong_type(cx: &Ctx, key: &str, v: &Sp<Node>, expected: &str) -> ConfigError {
    cx.err(
        &v.span(),
        key,
        format!("expected {expected}, found {}", v.get_ref().describe()),
    )
}

fn as_table<'a>(cx: &Ctx, key: &str, v: &'a Sp<Node>, expected: &str) -> Result<Table<'a>> {
    match v.get_ref() {
        Node::Table(entries) => Ok(Table {
            path: key.to_string(),
            span: v.span(),
            entries,
        }),
        _ => Err(wrong_type(cx, key, v, expected)),
    }
}

fn as_str<'a>(cx: &Ctx, key: &str, v: &'a Sp<Node>) -> Result<&'a str> {
    match v.get_ref() {
        Node::String(s) => Ok(s),
        _ => Err(wrong_type(cx, key, v, "a string")),
    }
}

fn as_int(cx: &Ctx, key: &str, v: &Sp<Node>) -> Result<i64> {
    match v.get_ref() {
        Node::Integer(i) => Ok(*i),
        _ => Err(wrong_type(cx, key, v, "an integer")),
    }
}

fn as_duration(cx: &Ctx, key: &str, v: &Sp<Node>, allow_zero: bool) -> Result<Duration> {
    let expected = "a duration string such as \"250ms\", \"10s\" or \"5m\"";
    let s = match v.get_ref() {
        Node::String(s) => s,
        _ => return Err(wrong_type(cx, key, v, expected)),
    };
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        cx.err(
            &v.span(),
            key,
            format!("invalid duration {s:?} ({e}); expected {expected}"),
        )
    })?;
    if d.is_zero() && !allow_zero {
        return Err(cx.err(&v.span(), key, "must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(cx.err(
            &v.span(),
            key,
            format!("{s:?} is too long; at most 365 days"),
        ));
    }
    Ok(d)
}

fn opt_duration(
    cx: &Ctx,
    t: &Table,
    name: &str,
    default: Duration,
    allow_zero: bool,
) -> Result<Duration> {
    match t.get(name) {
        Some(v) => as_duration(cx, &t.key(name), v, allow_zero),
        None => Ok(default),
    }
}

/// An absolute path; kept as written (messages quote it), compared after normalising.
fn as_abs_path(cx: &Ctx, key: &str, v: &Sp<Node>) -> Result<PathBuf> {
    let s = as_str(cx, key, v)?;
    if s.is_empty() {
        return Err(cx.err(&v.span(), key, "empty path"));
    }
    if s.contains('\0') {
        return Err(cx.err(&v.span(), key, "path contains a NUL byte"));
    }
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(cx.err(
            &v.span(),
            key,
            format!("{s:?} is a relative path; use an absolute path (the service's working directory is not the config's)"),
        ));
    }
    Ok(p)
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

/// A `[server]` table or a watch's `server = { ... }`: the destination and its lane
/// settings (`None`: not given here; a watch inherits the top-level value).
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    pub dest: Destination,
    pub concurrency: Option<usize>,
    pub adaptive: Option<bool>,
    pub confirm: Option<Confirm>,
    /// Span of the table, for errors about the destination as a whole.
    pub span: Range<usize>,
}

fn server_spec(cx: &Ctx, key: &str, v: &Sp<Node>) -> Result<ServerSpec> {
    let t = as_table(cx, key, v, "a table with host and port")?;
    t.deny_unknown(cx, SERVER_KEYS)?;
    let concurrency = match t.get("concurrency") {
        Some(v) => Some(cap(cx, &t.key("concurrency"), v)?),
        None => None,
    };
    let adaptive = match t.get("adaptive") {
        Some(v) => match v.get_ref() {
            Node::Boolean(b) => Some(*b),
            _ => return Err(wrong_type(cx, &t.key("adaptive"), v, "true or false")),
        },
        None => None,
    };
    let confirm = match t.get("confirm") {
        Some(v) => Some(match as_str(cx, &t.key("confirm"), v)? {
            "close" => Confirm::Close,
            "acked" => Confirm::Acked,
            other => {
                return Err(cx.err(
                    &v.span(),
                    &t.key("confirm"),
                    format!("{other:?} is not an option; expected \"close\" (the server's close confirms) or \"acked\" (the server's TCP acknowledging everything confirms)"),
                ))
            }
        }),
        None => None,
    };
    Ok(ServerSpec {
        dest: destination(cx, &t)?,
        concurrency,
        adaptive,
        confirm,
        span: v.span(),
    })
}

/// An upload cap: 1 to [`MAX_CONCURRENCY`].
fn cap(cx: &Ctx, key: &str, v: &Sp<Node>) -> Result<usize> {
    let n = as_int(cx, key, v)?;
    if !(1..=MAX_CONCURRENCY).contains(&n) {
        return Err(cx.err(
            &v.span(),
            key,
            format!("{n} is out of range; expected 1-{MAX_CONCURRENCY}"),
        ));
    }
    Ok(n as usize)
}

fn destination(cx: &Ctx, t: &Table) -> Result<Destination> {
    let host_v = t.required(cx, "host", "the server's host name or IP address")?;
    let host = as_str(cx, &t.key("host"), host_v)?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(cx.err(
            &host_v.span(),
            &t.key("host"),
            format!("{host:?} is not a host name or IP address"),
        ));
    }
    let port_v = t.required(cx, "port", "a port number 1-65535 or a service name")?;
    let port_key = t.key("port");
    let port = match port_v.get_ref() {
        Node::Integer(n) => u16::try_from(*n).ok().filter(|p| *p != 0).ok_or_else(|| {
            cx.err(
                &port_v.span(),
                &port_key,
                format!("invalid port {n}: expected 1-65535"),
            )
        })?,
        Node::String(s) => {
            parse_port(s).map_err(|e| cx.err(&port_v.span(), &port_key, e.to_string()))?
        }
        _ => {
            return Err(wrong_type(
                cx,
                &port_key,
                port_v,
                "a port number 1-65535 or a service name",
            ))
        }
    };
    // Strip the brackets people copy from URLs: `[::1]` is the host `::1`.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(Destination {
        host: host.to_string(),
        port,
    })
}

fn globs(cx: &Ctx, key: &str, v: &Sp<Node>) -> Result<Vec<String>> {
    let items = match v.get_ref() {
        Node::Array(items) => items,
        _ => return Err(wrong_type(cx, key, v, "an array of glob strings")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ikey = format!("{key}[{i}]");
        let g = as_str(cx, &ikey, item)?;
        if g.contains('/') {
            return Err(cx.err(
                &item.span(),
                &ikey,
                format!("glob {g:?} contains `/`: globs match file names, not paths"),
            ));
        }
        compile_glob(g).map_err(|e| {
            cx.err(
                &item.span(),
                &ikey,
                format!("invalid glob {g:?}: {}", e.kind()),
            )
        })?;
        out.push(g.to_string());
    }
    Ok(out)
}

const ROOT_KEYS: &[&str] = &[
    "concurrency",
    "active_limit",
    "server",
    "timeouts",
    "retry",
    "shutdown_grace",
    "log_level",
    "control_socket",
    "metrics",
    "watch",
];
const METRICS_KEYS: &[&str] = &["listen"];

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
const TIMEOUT_KEYS: &[&str] = &["connect", "handshake", "stall", "close"];
const SERVER_KEYS: &[&str] = &["host", "port", "concurrency", "adaptive", "confirm"];
const RETRY_KEYS: &[&str] = &["initial", "max", "max_attempts"];
const WATCH_KEYS: &[&str] = &[
    "dir",
    "done_dir",
    "failed_dir",
    "on_success",
    "server",
    "include",
    "exclude",
    "settle",
    "rescan_interval",
];

/// Checks a parsed document against the schema.
pub(crate) fn validate(cx: &Ctx, root: &Sp<Node>) -> Result<Parsed> {
    let root = as_table(cx, "", root, "a table")?;
    root.deny_unknown(cx, ROOT_KEYS)?;

    let concurrency = match root.get("concurrency") {
        Some(v) => cap(cx, "concurrency", v)?,
        None => defaults::CONCURRENCY,
    };
    let active_limit = match root.get("active_limit") {
        Some(v) => {
            let n = as_int(cx, "active_limit", v)?;
            if !(MIN_ACTIVE_LIMIT..=MAX_ACTIVE_LIMIT).contains(&n) {
                return Err(cx.err(
                    &v.span(),
                    "active_limit",
                    format!("{n} is out of range; expected {MIN_ACTIVE_LIMIT}-{MAX_ACTIVE_LIMIT}"),
                ));
            }
            n as usize
        }
        None => defaults::ACTIVE_LIMIT,
    };

    let server = root
        .get("server")
        .map(|v| server_spec(cx, "server", v))
        .transpose()?;

    let timeouts = match root.get("timeouts") {
        Some(v) => {
            let t = as_table(cx, "timeouts", v, "a table ([timeouts])")?;
            t.deny_unknown(cx, TIMEOUT_KEYS)?;
            Timeouts {
                connect: opt_duration(cx, &t, "connect", defaults::TIMEOUT, false)?,
                handshake: opt_duration(cx, &t, "handshake", defaults::TIMEOUT, false)?,
                stall: opt_duration(cx, &t, "stall", defaults::TIMEOUT, false)?,
                close: opt_duration(cx, &t, "close", defaults::TIMEOUT, false)?,
            }
        }
        None => Timeouts {
            connect: defaults::TIMEOUT,
            handshake: defaults::TIMEOUT,
            stall: defaults::TIMEOUT,
            close: defaults::TIMEOUT,
        },
    };

    let retry = match root.get("retry") {
        Some(v) => {
            let t = as_table(cx, "retry", v, "a table ([retry])")?;
            t.deny_unknown(cx, RETRY_KEYS)?;
            let initial = opt_duration(cx, &t, "initial", defaults::RETRY_INITIAL, false)?;
            let max = opt_duration(cx, &t, "max", defaults::RETRY_MAX.max(initial), false)?;
            if max < initial {
                let span = t.get("max").map_or(t.span.clone(), |v| v.span());
                return Err(cx.err(
                    &span,
                    "retry.max",
                    format!(
                        "{} is shorter than retry.initial ({})",
                        humantime::format_duration(max),
                        humantime::format_duration(initial)
                    ),
                ));
            }
            let max_attempts = match t.get("max_attempts") {
                Some(v) => {
                    let n = as_int(cx, "retry.max_attempts", v)?;
                    u32::try_from(n).map_err(|_| {
                        cx.err(
                            &v.span(),
                            "retry.max_attempts",
                            format!("{n} is out of range; expected 0 (forever) to {}", u32::MAX),
                        )
                    })?
                }
                None => defaults::RETRY_MAX_ATTEMPTS as u32,
            };
            RetryPolicy {
                initial,
                max,
                max_attempts,
            }
        }
        None => RetryPolicy {
            initial: defaults::RETRY_INITIAL,
            max: defaults::RETRY_MAX,
            max_attempts: defaults::RETRY_MAX_ATTEMPTS as u32,
        },
    };

    let shutdown_grace = opt_duration(cx, &root, "shutdown_grace", defaults::SHUTDOWN_GRACE, true)?;

    let log_level = match root.get("log_level") {
        Some(v) => {
            let s = as_str(cx, "log_level", v)?;
            // EnvFilter reads a bare word as a target name ("verbose" = everything from the
            // target `verbose`), which silently logs nothing useful; a bare word must be a
            // level, and targets are written `target=level`.
            const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
            if let Some(word) = s.split(',').map(str::trim).find(|d| {
                !d.is_empty()
                    && !d.contains(['=', '[', ':'])
                    && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
            }) {
                return Err(cx.err(
                    &v.span(),
                    "log_level",
                    format!("{word:?} is not a level; expected one of {}, or target=level directives such as \"accio=debug,warn\"", LEVELS.join(", ")),
                ));
            }
            tracing_subscriber::EnvFilter::builder()
                .parse(s)
                .map_err(|e| {
                    cx.err(
                        &v.span(),
                        "log_level",
                        format!("invalid log filter {s:?} ({e}); expected e.g. \"info\", \"debug\" or \"accio=debug,warn\""),
                    )
                })?;
            s.to_string()
        }
        None => defaults::LOG_LEVEL.to_string(),
    };

    let control_socket = match root.get("control_socket") {
        Some(v) => {
            let p = as_abs_path(cx, "control_socket", v)?;
            let len = p.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(cx.err(
                    &v.span(),
                    "control_socket",
                    format!("{len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}"),
                ));
            }
            p
        }
        None => PathBuf::from(super::DEFAULT_CONTROL_SOCKET),
    };

    let metrics_listen = match root.get("metrics") {
        Some(v) => {
            let t = as_table(cx, "metrics", v, "a table ([metrics])")?;
            t.deny_unknown(cx, METRICS_KEYS)?;
            match t.get("listen") {
                Some(v) => {
                    let s = as_str(cx, "metrics.listen", v)?;
                    let addr = s.parse::<std::net::SocketAddr>().map_err(|_| {
                        cx.err(
                            &v.span(),
                            "metrics.listen",
                            format!("{s:?} is not an address and port; expected e.g. \"127.0.0.1:9187\" or \"[::1]:9187\""),
                        )
                    })?;
                    if addr.port() == 0 {
                        return Err(cx.err(
                            &v.span(),
                            "metrics.listen",
                            format!("{s:?}: port 0 is not a fixed port; choose one, e.g. 9187"),
                        ));
                    }
                    Some(addr)
                }
                None => None,
            }
        }
        None => None,
    };

    let watch_v = root.required(cx, "watch", "one or more [[watch]] tables")?;
    let items = match watch_v.get_ref() {
        Node::Array(items) if !items.is_empty() => items,
        Node::Array(_) => {
            return Err(cx.err(
                &watch_v.span(),
                "watch",
                "empty; at least one [[watch]] table is required",
            ))
        }
        _ => {
            return Err(wrong_type(
                cx,
                "watch",
                watch_v,
                "an array of tables (write [[watch]], not [watch])",
            ))
        }
    };

    let mut watches = Vec::with_capacity(items.len());
    let mut watch_spans = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (w, spans) = watch(cx, &format!("watch[{i}]"), item, server.as_ref())?;
        watches.push(w);
        watch_spans.push(spans);
    }
    relate_watches(cx, &watches, &watch_spans)?;
    relate_destinations(cx, &watches, &watch_spans)?;

    Ok(Parsed {
        config: Config {
            path: cx.file.to_path_buf(),
            concurrency,
            active_limit,
            timeouts,
            retry,
            shutdown_grace,
            log_level,
            watches,
            control_socket,
            metrics_listen,
        },
        watch_spans,
    })
}

fn watch(
    cx: &Ctx,
    key: &str,
    v: &Sp<Node>,
    default_server: Option<&ServerSpec>,
) -> Result<(WatchConfig, WatchSpans)> {
    let t = as_table(cx, key, v, "a table ([[watch]])")?;
    t.deny_unknown(cx, WATCH_KEYS)?;

    let dir_v = t.required(cx, "dir", "the spool directory to watch")?;
    let dir = as_abs_path(cx, &t.key("dir"), dir_v)?;

    let on_success = match t.get("on_success") {
        Some(v) => match as_str(cx, &t.key("on_success"), v)? {
            "move" => OnSuccess::Move,
            "delete" => OnSuccess::Delete,
            other => {
                return Err(cx.err(
                    &v.span(),
                    &t.key("on_success"),
                    format!("{other:?} is not an option; expected \"move\" or \"delete\""),
                ))
            }
        },
        None => OnSuccess::Move,
    };

    let done_v = t.get("done_dir");
    let done_dir = match (on_success, done_v) {
        (OnSuccess::Move, None) => {
            return Err(cx.err(
                &t.span,
                &t.key("done_dir"),
                "missing; required when on_success = \"move\" (the default): where delivered files go",
            ))
        }
        (OnSuccess::Move, Some(v)) => Some(as_abs_path(cx, &t.key("done_dir"), v)?),
        (OnSuccess::Delete, Some(v)) => {
            return Err(cx.err(
                &v.span(),
                &t.key("done_dir"),
                "set, but on_success = \"delete\" never uses it; remove done_dir or use on_success = \"move\"",
            ))
        }
        (OnSuccess::Delete, None) => None,
    };

    let failed_v = t.required(
        cx,
        "failed_dir",
        "where files go after max_attempts failures",
    )?;
    let failed_dir = as_abs_path(cx, &t.key("failed_dir"), failed_v)?;

    let spec = match t.get("server") {
        Some(v) => {
            let mut own = server_spec(cx, &t.key("server"), v)?;
            // Lane settings not given here come from the top-level [server].
            if let Some(top) = default_server {
                own.concurrency = own.concurrency.or(top.concurrency);
                own.adaptive = own.adaptive.or(top.adaptive);
                own.confirm = own.confirm.or(top.confirm);
            }
            own
        }
        None => default_server.cloned().ok_or_else(|| {
            cx.err(
                &t.span,
                &t.key("server"),
                "missing, and there is no top-level [server] to fall back on; add [server] or server = { host = \"...\", port = ... } to this watch",
            )
        })?,
    };

    let include = match t.get("include") {
        Some(v) => {
            let g = globs(cx, &t.key("include"), v)?;
            if g.is_empty() {
                return Err(cx.err(
                    &v.span(),
                    &t.key("include"),
                    "empty: no file would ever be uploaded; use [\"*\"] for all names",
                ));
            }
            g
        }
        None => defaults::INCLUDE.iter().map(|s| s.to_string()).collect(),
    };
    let exclude = match t.get("exclude") {
        Some(v) => globs(cx, &t.key("exclude"), v)?,
        None => DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect(),
    };

    let settle = opt_duration(cx, &t, "settle", defaults::SETTLE, true)?;
    let rescan_interval =
        opt_duration(cx, &t, "rescan_interval", defaults::RESCAN_INTERVAL, false)?;

    // The directories must be distinct and outside the spool: a done or failed file found in
    // the spool again would be sent again.
    let ndir = normalize(&dir);
    let mut others = Vec::new();
    if let (Some(d), Some(v)) = (&done_dir, done_v) {
        others.push(("done_dir", normalize(d), v.span()));
    }
    others.push(("failed_dir", normalize(&failed_dir), failed_v.span()));
    for (name, p, span) in &others {
        if *p == ndir {
            return Err(cx.err(
                span,
                &t.key(name),
                format!("is the spool directory itself ({})", dir.display()),
            ));
        }
        if p.starts_with(&ndir) {
            return Err(cx.err(
                span,
                &t.key(name),
                format!(
                    "is inside the spool directory {}; put it beside the spool, not in it",
                    dir.display()
                ),
            ));
        }
    }
    if let [(_, done, _), (_, failed, span)] = others.as_slice() {
        if done == failed {
            return Err(cx.err(
                span,
                &t.key("failed_dir"),
                "is the same directory as done_dir; delivered and failed files must be told apart",
            ));
        }
    }

    Ok((
        WatchConfig {
            dir,
            done_dir,
            failed_dir,
            on_success,
            server: spec.dest,
            server_concurrency: spec.concurrency,
            adaptive: spec.adaptive.unwrap_or(true),
            confirm: spec.confirm.unwrap_or_default(),
            include,
            exclude,
            settle,
            rescan_interval,
        },
        WatchSpans {
            server: spec.span,
            dir: dir_v.span(),
            done_dir: done_v.map(|v| v.span()),
            failed_dir: failed_v.span(),
        },
    ))
}

/// Watches that send to the same destination share its lane: they must agree on its
/// settings.
fn relate_destinations(cx: &Ctx, watches: &[WatchConfig], spans: &[WatchSpans]) -> Result<()> {
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

/// Two watches on one directory would race each other for every file.
fn relate_watches(cx: &Ctx, watches: &[WatchConfig], spans: &[WatchSpans]) -> Result<()> {
    for (i, w) in watches.iter().enumerate() {
        let n = normalize(&w.dir);
        if let Some(j) = watches[..i].iter().position(|o| normalize(&o.dir) == n) {
            return Err(cx.err(
                &spans[i].dir,
                &format!("watch[{i}].dir"),
                format!(
                    "{} is already watched by watch[{j}] (line {}); each spool directory may appear once",
                    w.dir.display(),
                    tree::line_of(cx.text, spans[j].dir.start)
                ),
            ));
        }
    }
    Ok(())
}
