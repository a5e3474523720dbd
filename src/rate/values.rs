//! What a limit is, as people write it and as the pacing reads it: rates (`"4MiB/s"`,
//! `"500K"`, `"off"`), times of day, rclone's timetable ([`Schedule`]) and the [`Policy`]
//! of one scope. No clock and no I/O.

/// Bytes per second. `None` (in [`Option<u64>`]) is "off": no limit.
pub type Rate = Option<u64>;

/// The smallest limit accepted: below it a value is far more likely a forgotten unit
/// (`"4"` meant as 4 MiB/s) than a plan.
pub const MIN_RATE: u64 = 1024;
/// The largest limit accepted (1 PiB/s): keeps every product below in range.
pub const MAX_RATE: u64 = 1 << 50;

/// What a rate looks like, for messages.
pub const RATE_FORMS: &str =
    "a rate such as \"500K\", \"4M\" or \"4MiB/s\" (K = 1024 bytes; a bare number is bytes per second), or \"off\"";

/// Parses a rate as curl and rclone accept them: a number (decimals allowed), an optional
/// unit K, M, G or T (binary: K = 1024; `Ki`, `KB`, `KiB` mean the same; case does not
/// matter), an optional `/s`. `"off"` is no limit.
///
/// # Errors
/// A message saying what is wrong, for a config error or a usage error.
pub fn parse_rate(given: &str) -> Result<Rate, String> {
    let s = given.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("{given:?} is not a rate; expected {RATE_FORMS}");
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix("/s").unwrap_or(&unit);
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = (value * scale as f64).round();
    if value == 0.0 {
        return Err(format!(
            "{given:?}: a rate of zero would never send; write \"off\" for no limit"
        ));
    }
    // Finite and not negative: the number is digits and one dot.
    if bytes < MIN_RATE as f64 {
        return Err(format!(
            "{given:?} is below the smallest limit, 1K (1024 bytes per second); units are K, M, G (a bare number is bytes per second)"
        ));
    }
    if bytes > MAX_RATE as f64 {
        return Err(format!("{given:?} is above the largest limit, 1024T"));
    }
    Ok(Some(bytes as u64))
}

/// A rate as [`parse_rate`] reads it back: the largest binary unit that divides it exactly
/// (`"4MiB/s"`, `"1536KiB/s"`, `"1500B/s"`), or `"off"`.
pub fn format_rate(rate: Rate) -> String {
    let Some(r) = rate else {
        return "off".to_string();
    };
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if r % (1u64 << shift) == 0 {
            return format!("{}{unit}/s", r >> shift);
        }
    }
    format!("{r}B/s")
}

/// Seconds in a day; times of day are `0..DAY`.
pub const DAY: u32 = 24 * 3600;

/// Parses a time of day, `"HH:MM"` or `"HH:MM:SS"` (24-hour clock), to seconds since
/// midnight.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_time_of_day(given: &str) -> Result<u32, String> {
    let bad = || {
        format!("{given:?} is not a time of day; expected \"HH:MM\" (24-hour clock, e.g. \"08:00\" or \"18:30\")")
    };
    let parts: Vec<&str> = given.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let mut n = [0u32; 3];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        n[i] = p.parse().map_err(|_| bad())?;
    }
    if n[0] > 23 || n[1] > 59 || n[2] > 59 {
        return Err(bad());
    }
    Ok(n[0] * 3600 + n[1] * 60 + n[2])
}

/// Seconds since midnight as `"HH:MM"` (`"HH:MM:SS"` when the seconds are not zero).
pub fn format_time_of_day(secs: u32) -> String {
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A timetable: from each entry's time of day on, its rate applies, until the next entry's
/// time; before the first entry of a day, the day's last entry still applies (the table
/// wraps around midnight, as rclone's does). Entries are sorted, at distinct times, at
/// least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<(u32, Rate)>);

impl Schedule {
    /// A timetable from `(seconds since midnight, rate)` entries.
    ///
    /// # Errors
    /// No entries, or entries not in increasing time order (the index of the first out of
    /// order, and why).
    pub fn new(entries: Vec<(u32, Rate)>) -> Result<Schedule, (usize, String)> {
        if entries.is_empty() {
            return Err((
                0,
                "empty; give at least one { at = \"HH:MM\", rate = \"...\" }, or remove it".into(),
            ));
        }
        for (i, w) in entries.windows(2).enumerate() {
            if w[1].0 <= w[0].0 {
                return Err((
                    i + 1,
                    format!(
                        "{} is not after the entry before it ({}); list the entries in time order, each time once",
                        format_time_of_day(w[1].0),
                        format_time_of_day(w[0].0)
                    ),
                ));
            }
        }
        if let Some(&(at, _)) = entries.iter().find(|(at, _)| *at >= DAY) {
            return Err((0, format!("{at} is not a time of day")));
        }
        Ok(Schedule(entries))
    }

    /// The rate in force at `secs` since midnight.
    pub fn at(&self, secs: u32) -> Rate {
        let secs = secs % DAY;
        // The last entry at or before `secs`, else (before the first) the day's last.
        let i = self.0.partition_point(|(at, _)| *at <= secs);
        let i = if i == 0 { self.0.len() } else { i };
        self.0.get(i - 1).and_then(|(_, r)| *r)
    }

    /// The entries, in time order.
    pub fn entries(&self) -> &[(u32, Rate)] {
        &self.0
    }
}

/// The limit of one scope (a destination, or the whole service): none, one rate, or a
/// timetable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Unlimited,
    Fixed(u64),
    Schedule(Schedule),
}

impl Policy {
    /// The policy of a `max_rate` value.
    pub fn of_rate(rate: Rate) -> Policy {
        rate.map_or(Policy::Unlimited, Policy::Fixed)
    }

    /// The rate in force at `secs` since midnight (local time).
    pub fn at(&self, secs: u32) -> Rate {
        match self {
            Policy::Unlimited => None,
            Policy::Fixed(r) => Some(*r),
            Policy::Schedule(s) => s.at(secs),
        }
    }
}
