//! Why a configuration was refused, in one line: [`ConfigError`] (`FILE:LINE: key `KEY`:
//! what is wrong`), and serde's and toml's schema errors put in those words (the closest
//! known key or value suggested).

use std::fmt;
use std::path::{Path, PathBuf};

use super::schema;

/// A schema error from serde, in our words, at toml's position. serde's messages have a
/// fixed form (`unknown field `x`, expected one of ...`, `missing field `x``, `invalid type:
/// ..., expected ...`, `unknown variant ...`); the values' own checks say theirs.
pub(super) fn schema_error(
    cx: &schema::Ctx,
    e: &serde_path_to_error::Error<toml_edit::de::Error>,
) -> ConfigError {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for seg in e.path().iter() {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            // toml hands a value's position to `Spanned` as a map with private field names;
            // they are not keys of the document.
            Segment::Map { key: k } if k.starts_with("$__") => {}
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    let (msg, span) = (e.inner().message(), e.inner().span());
    // The value as written, for the cases serde cannot describe.
    let written = span
        .clone()
        .and_then(|s| cx.text.get(s))
        .map_or("", str::trim);
    let message = if let Some(rest) = msg.strip_prefix("missing field ") {
        let field = rest.trim_matches('`');
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(field);
        match schema::required_what(field) {
            Some(what) => format!("missing; required: {what}"),
            None => "missing".to_string(),
        }
    } else if let Some(rest) = msg.strip_prefix("unknown field ") {
        let (given, allowed) = given_and_choices(rest);
        let mut m = "unknown key".to_string();
        if let Some(s) = closest(given, &allowed) {
            m.push_str(&format!(" (did you mean `{s}`?)"));
        }
        m.push_str(&format!("; allowed here: {}", allowed.join(", ")));
        m
    } else if let Some((found, expected)) = msg
        .strip_prefix("invalid type: ")
        .and_then(|r| r.rsplit_once(", expected "))
    {
        // toml hands a date-time to serde as a map.
        let found = if written.parse::<toml::value::Datetime>().is_ok() {
            format!("a date-time ({written})")
        } else {
            found_name(found)
        };
        format!("expected {}, found {found}", expected_name(expected))
    } else if msg == "wanted string or table" {
        // toml's words for a choice (`on_success`, `confirm`) given as another type.
        format!("expected a string, found {written}")
    } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let (given, choices) = given_and_choices(rest);
        let quoted: Vec<String> = choices.iter().map(|n| format!("{n:?}")).collect();
        format!(
            "{given:?} is not an option; expected {}",
            quoted.join(" or ")
        )
    } else {
        msg.to_string()
    };
    ConfigError::new(
        cx.file,
        Some(span.map_or(1, |s| schema::line_of(cx.text, s.start))),
        (!key.is_empty()).then_some(key),
        message,
    )
}

/// The name given and the choices in serde's "`given`, expected `a`, `b`" (or "`given`,
/// there are no fields"): the given name may hold any character, the choices are ours.
fn given_and_choices(rest: &str) -> (&str, Vec<&str>) {
    let rest = rest.strip_prefix('`').unwrap_or(rest);
    let end = rest
        .rfind("`, expected ")
        .or_else(|| rest.rfind("`, there are no"))
        .unwrap_or(rest.len());
    let choices = rest.get(end + 1..).unwrap_or("");
    let choices = choices.split('`').skip(1).step_by(2).collect();
    (rest[..end].trim_end_matches('`'), choices)
}

/// serde's name of an expected type in TOML's words.
fn expected_name(e: &str) -> &str {
    match e {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        s if s.starts_with("struct ") => "a table",
        s => s,
    }
}

/// serde's description of a value found (`string "x"`, `integer `5``, `map`) in TOML's words.
fn found_name(f: &str) -> String {
    let shown = |rest: &str| rest.trim_matches('`').to_string();
    if let Some(r) = f.strip_prefix("string ") {
        format!("a string ({r})")
    } else if let Some(r) = f.strip_prefix("integer ") {
        format!("an integer ({})", shown(r))
    } else if let Some(r) = f.strip_prefix("floating point ") {
        format!("a float ({})", shown(r))
    } else if let Some(r) = f.strip_prefix("boolean ") {
        format!("a boolean ({})", shown(r))
    } else if f == "map" {
        "a table".to_string()
    } else if f == "sequence" {
        "an array".to_string()
    } else {
        f.to_string()
    }
}

/// The allowed key nearest to a misspelt one, if it is near enough to be a typo.
fn closest<'k>(given: &str, allowed: &[&'k str]) -> Option<&'k str> {
    let given = given.to_ascii_lowercase().replace('-', "_");
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(&given, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Why a configuration was refused. Displayed as `FILE:LINE: key `KEY`: MESSAGE`; the line
/// is absent only when the file could not be read, the key only for syntax errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending value, key or table.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `watch[0].done_dir`.
    pub key: Option<String>,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    /// An error at `line` (1-based) of `file`; the message is kept to one line.
    pub(crate) fn new(
        file: &Path,
        line: Option<usize>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let message: String = message.into();
        // toml's syntax messages span lines ("invalid string\nexpected ..."); keep one.
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // A quoted TOML key may hold a newline: shown escaped, the error stays one line.
        let key = key.map(|k| {
            k.chars()
                .map(|c| match c.is_control() {
                    true => c.escape_debug().to_string(),
                    false => c.to_string(),
                })
                .collect()
        });
        ConfigError {
            file: file.to_path_buf(),
            line,
            key,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
