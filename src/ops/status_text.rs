//! A [`View`] as text for people: what `accio status` prints without `--json`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::status::{secs, DestinationView, View};

/// Renders `v`: a summary line, then destinations, watches, files in flight and the
/// oldest waiting files, each section only when there is something to say.
pub fn render(v: &View) -> String {
    render_for(v, None)
}

/// [`render`]; with `only`, the destinations, watches and files of that destination only
/// (the summary line stays the whole service's).
pub fn render_for(v: &View, only: Option<&str>) -> String {
    let mut o = String::new();
    // Writing into a String cannot fail.
    let _ = write_view(&mut o, v, only);
    o
}

fn write_view(o: &mut String, v: &View, only: Option<&str>) -> std::fmt::Result {
    let mine = |d: &str| only.map_or(true, |x| x == d);
    writeln!(
        o,
        "accio {} (pid {}), up {}: {}",
        v.version,
        v.pid,
        secs(v.uptime_s),
        v.totals
    )?;
    if let Some(why) = &v.reload_refused {
        writeln!(
            o,
            "reload refused: {why}; still running on the previous configuration"
        )?;
    }
    if !v.destinations.is_empty() {
        writeln!(o, "\ndestinations:")?;
        for d in v.destinations.iter().filter(|d| mine(&d.name)) {
            writeln!(o, "  {}", destination(d))?;
        }
    }
    if !v.rates.is_empty() {
        writeln!(o, "\nbandwidth limits:")?;
        for r in &v.rates {
            let scope = if r.scope == crate::rate::ALL {
                "all uploads"
            } else {
                &r.scope
            };
            let now = crate::rate::format_rate(r.bytes_per_second);
            let by = if r.scheduled { " (rate_schedule)" } else { "" };
            writeln!(
                o,
                "  {scope}: {now}{by}, {} uploads sharing it, waited {} in all",
                r.active,
                secs(r.waited_s as f64)
            )?;
        }
    }
    if !v.watches.is_empty() {
        writeln!(o, "\nwatches:")?;
        for w in v.watches.iter().filter(|w| mine(&w.destination)) {
            write!(
                o,
                "  {} → {}: {} queued, {} in flight, {} sent, {} failed",
                w.dir, w.destination, w.queued, w.in_flight, w.sent, w.failed
            )?;
            if let Some(age) = w.oldest_waiting_age_s {
                write!(o, ", oldest waiting {}", secs(age))?;
            }
            writeln!(o)?;
        }
    }
    writeln!(o, "\nin flight:")?;
    let in_flight: Vec<_> = v
        .in_flight
        .iter()
        .filter(|f| mine(&f.destination))
        .collect();
    if in_flight.is_empty() {
        writeln!(o, "  none")?;
    }
    for f in in_flight {
        let pct = if f.size == 0 {
            100
        } else {
            (f.bytes_sent.min(f.size) as u128 * 100 / f.size as u128) as u64
        };
        writeln!(
            o,
            "  {} → {}: {} of {} ({pct}%), {}, attempt {}",
            f.path,
            f.destination,
            bytes(f.bytes_sent),
            bytes(f.size),
            secs(f.elapsed_s),
            f.attempt
        )?;
    }
    writeln!(o, "\nwaiting, oldest first:")?;
    if v.waiting.is_empty() {
        if v.totals.queued > 0 {
            writeln!(
                o,
                "  {} queued (no detail from this version)",
                v.totals.queued
            )?;
        } else {
            writeln!(o, "  none")?;
        }
    }
    for w in &v.waiting {
        writeln!(
            o,
            "  {} → {}: waiting {}; {}",
            w.path,
            w.destination,
            secs(w.age_s),
            w.why
        )?;
    }
    // What the list left out: the files held and not listed, and the backlog still on
    // disk (not read in yet), which only the queued counts include.
    if let Some(held) = v.waiting_total {
        let queued = match only {
            None => v.totals.queued,
            Some(name) => v
                .destinations
                .iter()
                .find(|d| d.name == name)
                .map_or(0, |d| d.queued),
        };
        let more = held.max(queued).saturating_sub(v.waiting.len() as u64);
        if more > 0 {
            writeln!(o, "  ... {more} more (accio status --all lists them)")?;
        }
    }
    Ok(())
}

fn destination(d: &DestinationView) -> String {
    let mut s = format!("{}: ", d.name);
    if d.up {
        s.push_str("up");
    } else {
        s.push_str("DOWN");
        if let Some(since) = d.down_since_unix {
            // Checked: the number comes over a socket, and a huge one must not panic.
            // humantime writes years up to 9999 only.
            let t = Duration::try_from_secs_f64(since)
                .ok()
                .filter(|d| d.as_secs() < 253_402_300_800)
                .and_then(|d| UNIX_EPOCH.checked_add(d));
            if let Some(t) = t {
                let _ = write!(s, " since {}", humantime::format_rfc3339_seconds(t));
            }
        }
        if let Some(p) = d.next_probe_in_s {
            let _ = write!(s, ", next probe in {}", secs(p));
        }
    }
    let _ = write!(
        s,
        ", {} in flight, {} queued, limit {}",
        d.in_flight, d.queued, d.limit
    );
    if d.limit != d.cap {
        let _ = write!(s, " of {}", d.cap);
    }
    if d.adaptive {
        if let (Some(now), Some(base)) = (d.greeting_ms, d.baseline_greeting_ms) {
            let _ = write!(s, " (greeting {now:.0} ms, usually {base:.0} ms)");
        }
    }
    if let Some(e) = &d.last_error {
        let _ = write!(s, "; last error: {e}");
    }
    s
}

/// Bytes for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{FileInFlight, Snapshot, WaitingFile, WatchView, Why};

    #[test]
    fn everything_an_operator_asks_is_on_one_line_each() {
        let v = View {
            pid: 42,
            version: "0.1.0".into(),
            uptime_s: 200.0,
            totals: Snapshot {
                watching: 1,
                queued: 2,
                in_flight: 1,
                sent: 5,
                failed: 0,
                destinations_down: 1,
            },
            destinations: vec![
                DestinationView {
                    name: "a:1".into(),
                    up: true,
                    in_flight: 1,
                    queued: 1,
                    limit: 4,
                    cap: 4,
                    ..DestinationView::default()
                },
                DestinationView {
                    name: "b:2".into(),
                    up: false,
                    down_since_unix: Some(1_700_000_000.0),
                    last_error: Some("connection refused".into()),
                    limit: 1,
                    cap: 4,
                    next_probe_in_s: Some(3.0),
                    ..DestinationView::default()
                },
            ],
            watches: vec![WatchView {
                dir: "/s".into(),
                destination: "a:1".into(),
                queued: 1,
                oldest_waiting_age_s: Some(65.0),
                ..WatchView::default()
            }],
            in_flight: vec![FileInFlight {
                path: "/s/big".into(),
                destination: "a:1".into(),
                bytes_sent: 3 << 20,
                size: 12 << 20,
                elapsed_s: 1.3,
                attempt: 2,
            }],
            waiting: vec![WaitingFile {
                path: "/s/w".into(),
                destination: "b:2".into(),
                age_s: 65.0,
                why: Why::DestinationDown,
            }],
            waiting_total: Some(3),
            reload_refused: Some("bad.toml: line 1: oops".into()),
            rates: vec![crate::rate::RateView {
                scope: crate::rate::ALL.into(),
                bytes_per_second: Some(4 << 20),
                scheduled: true,
                active: 3,
                waited_s: 12,
            }],
        };
        let t = render(&v);
        assert!(
            t.contains(
                "  all uploads: 4MiB/s (rate_schedule), 3 uploads sharing it, waited 12s in all\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("\nreload refused: bad.toml: line 1: oops; still running"),
            "{t}"
        );
        assert!(
            t.contains("  ... 2 more (accio status --all lists them)\n"),
            "{t}"
        );
        let b = render_for(&v, Some("b:2"));
        assert!(!b.contains("  a:1: up") && b.contains("  b:2: DOWN"), "{b}");
        assert!(!b.contains("/s/big"), "{b}");
        assert!(
            t.starts_with("accio 0.1.0 (pid 42), up 3m 20s: watching 1 dirs"),
            "{t}"
        );
        assert!(
            t.contains("  a:1: up, 1 in flight, 1 queued, limit 4\n"),
            "{t}"
        );
        assert!(t.contains("  b:2: DOWN since 2023-11-14T22:13:20Z, next probe in 3.0s, 0 in flight, 0 queued, limit 1 of 4; last error: connection refused\n"), "{t}");
        assert!(
            t.contains(
                "  /s → a:1: 1 queued, 0 in flight, 0 sent, 0 failed, oldest waiting 1m 5s\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("  /s/big → a:1: 3.0 MiB of 12.0 MiB (25%), 1.3s, attempt 2\n"),
            "{t}"
        );
        assert!(
            t.contains("  /s/w → b:2: waiting 1m 5s; destination down\n"),
            "{t}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }
}
