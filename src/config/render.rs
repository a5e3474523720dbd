//! The effective settings as TOML: what `accio check-config` prints. The output is itself a
//! valid configuration that means the same thing (a test checks the round trip), with every
//! default written out and each watch's destination resolved.

use std::fmt::Write;
use std::time::Duration;

use super::{Config, OnSuccess};
use crate::rate::{format_rate, format_time_of_day, Policy};

fn s(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

fn d(v: Duration) -> String {
    s(&humantime::format_duration(v).to_string())
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|g| s(g)).collect();
    format!("[{}]", items.join(", "))
}

/// A limit as its key and value (`max_rate = "4MiB/s"`, `rate_schedule = [...]`); `None`
/// for no limit.
fn limit(p: &Policy) -> Option<String> {
    match p {
        Policy::Unlimited => None,
        Policy::Fixed(r) => Some(format!("max_rate = {}", s(&format_rate(Some(*r))))),
        Policy::Schedule(t) => {
            let entries: Vec<String> = t
                .entries()
                .iter()
                .map(|(at, r)| {
                    format!(
                        "{{ at = {}, rate = {} }}",
                        s(&format_time_of_day(*at)),
                        s(&format_rate(*r))
                    )
                })
                .collect();
            Some(format!("rate_schedule = [{}]", entries.join(", ")))
        }
    }
}

/// Renders a config as TOML.
pub fn render(c: &Config) -> String {
    let mut o = String::new();
    // Writing into a String cannot fail.
    let _ = write_all(&mut o, c);
    o
}

fn write_all(o: &mut String, c: &Config) -> std::fmt::Result {
    writeln!(
        o,
        "# Effective settings of {} (defaults filled in)",
        c.path.display()
    )?;
    writeln!(o, "concurrency = {}", c.concurrency)?;
    writeln!(o, "active_limit = {}", c.active_limit)?;
    writeln!(o, "shutdown_grace = {}", d(c.shutdown_grace))?;
    writeln!(o, "log_level = {}", s(&c.log_level))?;
    writeln!(
        o,
        "control_socket = {}",
        s(&c.control_socket.to_string_lossy())
    )?;
    writeln!(o, "writer_quiet = {}", d(c.writer_quiet))?;
    writeln!(o, "stale_after = {}", d(c.stale_after))?;
    writeln!(o, "strict_modes = {}", c.strict_modes)?;
    match limit(&c.rates.all) {
        Some(l) => writeln!(o, "{l}")?,
        None => writeln!(o, "# max_rate: not set, no limit for the whole service")?,
    }
    writeln!(o, "\n[timeouts]")?;
    writeln!(o, "connect = {}", d(c.timeouts.connect))?;
    writeln!(o, "handshake = {}", d(c.timeouts.handshake))?;
    writeln!(o, "stall = {}", d(c.timeouts.stall))?;
    writeln!(o, "close = {}", d(c.timeouts.close))?;
    writeln!(o, "\n[metrics]")?;
    match c.metrics_listen {
        Some(a) => writeln!(o, "listen = {}", s(&a.to_string()))?,
        None => writeln!(o, "# listen: not set, no metrics listener")?,
    }
    writeln!(o, "\n[retry]")?;
    writeln!(o, "initial = {}", d(c.retry.initial))?;
    writeln!(o, "max = {}", d(c.retry.max))?;
    writeln!(o, "max_attempts = {}", c.retry.max_attempts)?;
    writeln!(o, "probe_max = {}", d(c.retry.probe_max))?;
    for w in &c.watches {
        writeln!(o, "\n[[watch]]")?;
        writeln!(o, "dir = {}", s(&w.dir.to_string_lossy()))?;
        if let Some(done) = &w.done_dir {
            writeln!(o, "done_dir = {}", s(&done.to_string_lossy()))?;
        }
        writeln!(o, "failed_dir = {}", s(&w.failed_dir.to_string_lossy()))?;
        let on_success = match w.on_success {
            OnSuccess::Move => "move",
            OnSuccess::Delete => "delete",
        };
        writeln!(o, "on_success = {}", s(on_success))?;
        let cap = w.server_concurrency.unwrap_or(c.concurrency);
        let rate = c
            .rates
            .destinations
            .iter()
            .find(|(d, _)| *d == w.server)
            .and_then(|(_, p)| limit(p))
            .map_or_else(String::new, |l| format!(", {l}"));
        writeln!(
            o,
            "server = {{ host = {}, port = {}, concurrency = {cap}, adaptive = {}, confirm = {}{rate} }}",
            s(&w.server.host),
            w.server.port,
            w.adaptive,
            s(w.confirm.as_str())
        )?;
        writeln!(o, "include = {}", list(&w.include))?;
        writeln!(o, "exclude = {}", list(&w.exclude))?;
        writeln!(o, "settle = {}", d(w.settle))?;
        writeln!(o, "rescan_interval = {}", d(w.rescan_interval))?;
        // Only for trees: a flat spool's rendering stays as it was.
        if w.recursive {
            writeln!(o, "recursive = true")?;
            writeln!(o, "max_depth = {}", w.max_depth)?;
            writeln!(o, "prune_empty_dirs = {}", w.prune_empty_dirs)?;
        }
    }
    Ok(())
}
