//! Logging setup with tracing-subscriber.
//!
//! The outputs of the service, chosen at start:
//! - a terminal: human-readable, with timestamps, colors only when stderr is a TTY (and
//!   `NO_COLOR` is not set);
//! - journald (stderr is the stream named by `JOURNAL_STREAM`): each event is sent to the
//!   journal's native socket (tracing-journald) with its priority (`PRIORITY=3` error …
//!   `7` debug, so `journalctl -p warning` works), the message as `MESSAGE=` and the
//!   event's fields as `ACCIO_PATH=`, `ACCIO_DESTINATION=`, `ACCIO_EVENT=`, ...
//!   (`journalctl -u accio ACCIO_EVENT=gave_up`). If that socket cannot be used, the lines
//!   go to stderr without ANSI escapes or timestamps (the journal records its own), each
//!   behind a syslog priority prefix (`<3>` … `<7>`) that journald turns into the priority;
//! - `--log-format json`: one JSON object per line, for log shippers; under journald each
//!   behind the same priority prefix, so the priority is right in that format too.
//!
//! A line for people carries its message only: every message says what matters once (the
//! file, the counts, the error), so the structured fields, which would repeat it, are left
//! out of the text and journald lines ([`MessageOnly`]). They are in the JSON objects, with
//! counts as numbers, for machines.
//!
//! The level comes from `RUST_LOG` when it is set, else from the config's `log_level`; a
//! config reload can change the latter ([`LogControl::set_level`]).

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// How the service writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable; colors on a terminal; no timestamps under journald.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging for the short-lived tools (`serve`): human-readable on stderr, level from
/// `RUST_LOG` (default `info`).
pub fn init_for_tool() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && no_color_unset())
        .try_init();
}

/// Where the service's log lines end up, which decides their shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// An interactive terminal: timestamps and colors.
    Terminal,
    /// A pipe or a file that is not the journal: timestamps, no colors.
    Plain,
    /// journald's stream socket: no timestamps, no colors, syslog priority prefixes (the
    /// native socket is preferred, see [`init_service`]).
    Journald,
    /// `--log-format json`.
    Json,
    /// `--log-format json` with stderr the journal: behind priority prefixes.
    JsonJournald,
}

/// Handle kept by the service to change the level on a config reload.
#[derive(Debug)]
pub struct LogControl {
    /// `None` when `RUST_LOG` decides the level: it wins over the config, also after reloads.
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// What was detected at start, for the first log line and for tests.
    pub output: Output,
}

impl LogControl {
    /// Applies the config's `log_level` after a reload, unless `RUST_LOG` is in force.
    ///
    /// # Errors
    /// The level is not a valid filter (the old one stays).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let filter =
            EnvFilter::try_new(level).map_err(|e| format!("invalid log_level {level:?}: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// Logging for `accio watch`: see the module docs for the outputs. `default_level` is the
/// config's `log_level` (tracing `EnvFilter` syntax such as `info` or `accio=debug,info`).
///
/// An invalid `RUST_LOG` or `default_level` falls back to `info` with a warning rather than
/// stopping the service. Calling it twice keeps the first setup (tests, reloads).
pub fn init_service(format: LogFormat, default_level: &str) -> LogControl {
    let output = detect_output(format);
    let mut warnings = Vec::new();

    // RUST_LOG, when set, decides; otherwise the config does, and reloads may change it.
    let env_filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => Some(f),
            Err(e) => {
                warnings.push(format!("ignoring invalid RUST_LOG {s:?}: {e}"));
                None
            }
        },
        _ => None,
    };
    let (filter, handle) = match env_filter {
        Some(f) => {
            let (layer, _handle) = reload::Layer::new(f);
            (layer, None)
        }
        None => {
            let f = EnvFilter::try_new(default_level).unwrap_or_else(|e| {
                warnings.push(format!(
                    "invalid log_level {default_level:?} ({e}); using \"info\""
                ));
                EnvFilter::new("info")
            });
            let (layer, handle) = reload::Layer::new(f);
            (layer, Some(handle))
        }
    };

    let native = match output {
        Output::Journald if native_journal_wanted() => match journald_layer() {
            Ok(l) => Some(l),
            Err(e) => {
                warnings.push(format!(
                    "cannot use the journal's native socket ({e}); logging to stderr with priority prefixes"
                ));
                None
            }
        },
        _ => None,
    };
    let fmt_layer: Box<dyn Layer<_> + Send + Sync> = match (output, native) {
        (_, Some(native)) => native.boxed(),
        (Output::Json, _) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        (Output::JsonJournald, _) => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(Prioritized(format::format().json().flatten_event(true)))
            .with_writer(std::io::stderr)
            .boxed(),
        (Output::Journald, _) => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(MessageOnly)
            .event_format(JournaldFormat::new())
            .with_writer(std::io::stderr)
            .boxed(),
        (Output::Terminal | Output::Plain, _) => tracing_subscriber::fmt::layer()
            .with_ansi(output == Output::Terminal)
            .with_target(false)
            .fmt_fields(MessageOnly)
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .try_init();
    for w in warnings {
        tracing::warn!("{w}");
    }
    LogControl { handle, output }
}

/// The journal's native socket, with the priorities of syslog (as the `<N>` prefixes give
/// them: info is 6, not tracing-journald's default of 5) and the fields under `ACCIO_`.
fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some("ACCIO".to_string()))
        .with_syslog_identifier("accio".to_string())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// The native journal socket is used unless `ACCIO_JOURNAL_NATIVE=0` (hidden; for tests
/// that pose as the journal's stream on a machine where journald runs).
fn native_journal_wanted() -> bool {
    std::env::var_os("ACCIO_JOURNAL_NATIVE").map_or(true, |v| v != "0")
}

/// Decides the output from the flag and what stderr is.
pub fn detect_output(format: LogFormat) -> Output {
    if format == LogFormat::Json {
        return if stderr_is_journal() {
            Output::JsonJournald
        } else {
            Output::Json
        };
    }
    if stderr_is_journal() {
        return Output::Journald;
    }
    if std::io::stderr().is_terminal() && no_color_unset() {
        Output::Terminal
    } else {
        Output::Plain
    }
}

fn no_color_unset() -> bool {
    !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty())
}

/// True when stderr is the journal's stream: `JOURNAL_STREAM` is `DEV:INODE` of the socket
/// systemd connected stdout/stderr to, and it must match stderr itself (a child whose stderr
/// was redirected inherits the variable but not the socket).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    match stderr_dev_ino() {
        Some((d, i)) => d == dev && i == ino,
        None => false,
    }
}

/// Parses `JOURNAL_STREAM`'s `DEV:INODE` (two decimal numbers).
pub fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Device and inode of whatever fd 2 is, via fstat on a duplicate (no unsafe needed).
fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Writes an event's `message` and nothing else: for lines read by people, whose messages
/// already say what the fields hold.
pub struct MessageOnly;

impl<'w> FormatFields<'w> for MessageOnly {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = MessageVisitor {
            writer: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct MessageVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl tracing::field::Visit for MessageVisitor<'_, '_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && self.result.is_ok() {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" && self.result.is_ok() {
            self.result = self.writer.write_str(value);
        }
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Full format without time, level or colors, behind a `<N>` priority prefix: journald adds
/// the timestamp and turns the prefix into the entry's priority.
struct JournaldFormat {
    inner: format::Format<format::Full, ()>,
}

impl JournaldFormat {
    fn new() -> Self {
        JournaldFormat {
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Another format behind a `<N>` syslog priority prefix (JSON under journald).
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parsing() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
        assert_eq!(parse_journal_stream("1:-1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
    }
}
