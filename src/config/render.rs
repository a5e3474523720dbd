//! The effective settings as TOML: what `accio check-config` prints. The output is itself a
//! valid configuration that means the same thing (a test checks the round trip), with every
//! default written out and each watch's destination resolved.

use std::fmt::Write;
use std::time::Duration;

use super::{Config, OnSuccess};

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
        writeln!(
            o,
            "server = {{ host = {}, port = {}, concurrency = {cap}, adaptive = {}, confirm = {} }}",
            s(&w.server.host),
            w.server.port,
            w.adaptive,
            s(w.confirm.as_str())
        )?;
        writeln!(o, "include = {}", list(&w.include))?;
        writeln!(o, "exclude = {}", list(&w.exclude))?;
        writeln!(o, "settle = {}", d(w.settle))?;
        writeln!(o, "rescan_interval = {}", d(w.rescan_interval))?;
    }
    Ok(())
}
