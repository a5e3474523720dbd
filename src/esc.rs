//! Paths as they appear in log lines and messages, escaped so that a file name cannot split
//! or forge a log line.

use std::path::Path;

/// A path for log messages and fields: control characters (a newline in a file name would
/// split the log line and could forge another), backslashes and bytes that are not UTF-8
/// are written as escapes (`\n`, `\\`, `\u{1b}`, `\xff`), everything else as is.
pub struct Esc<'a>(pub &'a Path);

/// [`Esc`] for `path`.
pub fn esc(path: &Path) -> Esc<'_> {
    Esc(path)
}

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::unix::ffi::OsStrExt;
        for chunk in self.0.as_os_str().as_bytes().utf8_chunks() {
            // Runs of characters that need no escape are written whole (most names are one
            // run): one write per run, not one per character.
            let valid = chunk.valid();
            let mut plain = 0;
            for (i, c) in valid.char_indices() {
                let escaped = match c {
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    c if c.is_control() => "",
                    _ => continue,
                };
                f.write_str(&valid[plain..i])?;
                if escaped.is_empty() {
                    write!(f, "\\u{{{:x}}}", c as u32)?;
                } else {
                    f.write_str(escaped)?;
                }
                plain = i + c.len_utf8();
            }
            f.write_str(&valid[plain..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn paths_in_logs_are_escaped() {
        let p = Path::new(std::ffi::OsStr::from_bytes(
            b"/s/a\nb\\c\t\x1b[1m\xff\xc3\xa9",
        ));
        assert_eq!(esc(p).to_string(), "/s/a\\nb\\\\c\\t\\u{1b}[1m\\xffé");
        assert_eq!(esc(Path::new("/plain/name")).to_string(), "/plain/name");
    }
}
