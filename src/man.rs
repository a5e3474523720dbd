//! Man pages: `accio man [PAGE]`.
//!
//! Each command's page is clap_mangen's rendering of the command-line definitions (name,
//! synopsis, options, exit codes) followed by the hand-written sections in `man/*.roff`
//! (what the command does, in prose). `accio.toml(5)` is `man/accio.toml.5.roff` followed by
//! every key of the shipped example configuration, `config/accio.toml`, with its comment:
//! the keys are documented once, there, and the page cannot drift from the file.
//! `systemd/build-deb` writes every page into the package.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::Cli;

/// Every page `accio man` can print, by the name it takes.
pub const PAGES: &[&str] = &[
    "accio",
    "send",
    "serve",
    "watch",
    "status",
    "flush",
    "retry",
    "check-config",
    "completions",
    "man",
    "accio.toml",
];

/// Hand-written sections of a command's page.
fn extra(page: &str) -> &'static str {
    match page {
        "accio" => include_str!("../man/accio.1.roff"),
        "watch" => include_str!("../man/accio-watch.1.roff"),
        "status" => include_str!("../man/accio-status.1.roff"),
        "retry" => include_str!("../man/accio-retry.1.roff"),
        _ => "",
    }
}

/// Why a page could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("no man page {0:?}; pages: {list}", list = PAGES.join(", "))]
    NoSuchPage(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes the page `page` (`None`: accio(1)) as roff to `w`.
///
/// # Errors
/// [`ManError::NoSuchPage`], or writing failed.
pub fn render(page: Option<&str>, w: &mut dyn Write) -> Result<(), ManError> {
    let page = page.unwrap_or("accio");
    if page == "accio.toml" {
        return config_page(w);
    }
    // The `help` subcommand is clap's, not a page we ship: accio(1) does not list it.
    let top = Cli::command().disable_help_subcommand(true);
    let cmd = if page == "accio" {
        top
    } else {
        let Some(sub) = top.find_subcommand(page).cloned() else {
            return Err(ManError::NoSuchPage(page.to_string()));
        };
        // The page's name and the usage line say `accio-send` / `accio send`.
        sub.name(format!("accio-{page}"))
            .bin_name(format!("accio {page}"))
            .version(env!("CARGO_PKG_VERSION"))
    };
    let has_subcommands = cmd.has_subcommands();
    // clap's after-help text is the command's exit-code table (rendered by `exit`); the man
    // page gives it the standard EXIT STATUS heading, unless the prose has its own.
    let after = cmd
        .get_after_long_help()
        .or(cmd.get_after_help())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    if has_subcommands {
        man.render_subcommands_section(w)?;
    }
    let prose = extra(page);
    if !prose.contains(".SH EXIT STATUS") {
        exit_status(&after, w)?;
    }
    w.write_all(prose.as_bytes())?;
    if prose.is_empty() {
        writeln!(w, ".SH SEE ALSO\n.BR accio (1),\n.BR accio.toml (5)")?;
    }
    man.render_version_section(w)?;
    Ok(())
}

/// The exit-code table of clap's after-help as an EXIT STATUS section (nothing when there is
/// none: no empty headings).
fn exit_status(after: &str, w: &mut dyn Write) -> io::Result<()> {
    let body: Vec<&str> = after
        .lines()
        .skip_while(|l| l.trim().is_empty() || l.trim_end().ends_with("codes:"))
        .collect();
    if body.iter().all(|l| l.trim().is_empty()) {
        return Ok(());
    }
    writeln!(w, ".SH EXIT STATUS\n.nf")?;
    for l in body {
        writeln!(w, "{}", roff_text(l))?;
    }
    writeln!(w, ".fi")
}

/// accio.toml(5).
fn config_page(w: &mut dyn Write) -> Result<(), ManError> {
    writeln!(
        w,
        ".TH accio.toml 5 \"\" \"accio {}\" \"File Formats\"",
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(
        w,
        ".SH NAME\naccio.toml \\- configuration of the accio spool upload service"
    )?;
    w.write_all(include_str!("../man/accio.toml.5.roff").as_bytes())?;
    w.write_all(keys_roff(include_str!("../config/accio.toml")).as_bytes())?;
    writeln!(
        w,
        ".SH SEE ALSO\n.BR accio (1),\n.BR accio\\-watch (1),\n.BR accio\\-status (1)"
    )?;
    Ok(())
}

/// Roff text: escapes backslashes, hyphens (so they print as the ASCII `-` one types) and
/// characters beyond ASCII (`\[u00D7]`: groff reads bytes), and protects lines starting
/// with a control character.
fn roff_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", c as u32)),
        }
    }
    let s = out;
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// `key = value` (or `# key = value`, an optional key shown with an example value): the key.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once(" = ")?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(k)
}

/// `[table]` or `[[table]]`.
fn table_of(line: &str) -> Option<&str> {
    let t = line.trim();
    (t.starts_with('[') && t.ends_with(']') && !t.contains('=')).then_some(t)
}

/// The example configuration's keys as man page sections: a table's comment introduces its
/// section, each key's comment follows the key and the value the example sets. A block of
/// commented-out tables is an example, shown as is. The file's opening comment (how to
/// check a file) is said by the page's own DESCRIPTION.
fn keys_roff(example: &str) -> String {
    let mut o = String::from(".SH KEYS\n.SS Top level\n");
    let mut comment: Vec<&str> = Vec::new();
    let blocks: Vec<&str> = example.split("\n\n").collect();
    for (i, block) in blocks.iter().enumerate() {
        let lines: Vec<&str> = block.lines().collect();
        let all_comments = lines.iter().all(|l| l.starts_with('#') || l.is_empty());
        if i == 0 && all_comments {
            continue;
        }
        let commented_table = lines
            .iter()
            .any(|l| l.strip_prefix("# ").and_then(table_of).is_some());
        if all_comments && commented_table {
            o.push_str(".SH EXAMPLE\n");
            let mut code = Vec::new();
            for l in lines {
                let t = l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l);
                if key_of(t).is_some() || table_of(t).is_some() || !code.is_empty() {
                    code.push(t);
                } else {
                    o.push_str(&roff_text(t));
                    o.push('\n');
                }
            }
            o.push_str(".PP\n.nf\n");
            for c in code {
                o.push_str(&roff_text(c));
                o.push('\n');
            }
            o.push_str(".fi\n");
            continue;
        }
        for l in lines {
            let text = l.strip_prefix("# ").or(l.strip_prefix('#'));
            let (line, is_comment) = match text {
                Some(t) if key_of(t).is_some() => (t, true),
                Some(t) => {
                    comment.push(t);
                    continue;
                }
                None => (l, false),
            };
            if let Some(t) = table_of(line) {
                o.push_str(&format!(".SS {}\n", roff_text(t)));
                paragraph(&mut o, &comment);
                comment.clear();
            } else if key_of(line).is_some() {
                let shown = if is_comment {
                    format!("{} (not set by default)", roff_text(line))
                } else {
                    roff_text(line)
                };
                o.push_str(&format!(".TP\n\\fB{shown}\\fR\n"));
                paragraph_body(&mut o, &comment);
                comment.clear();
            }
        }
        // A comment not followed by a key (end of a block) introduces what follows.
        if !comment.is_empty() {
            paragraph(&mut o, &comment);
            comment.clear();
        }
    }
    o
}

fn paragraph(o: &mut String, lines: &[&str]) {
    if lines.is_empty() {
        return;
    }
    o.push_str(".PP\n");
    paragraph_body(o, lines);
}

/// Comment lines as running text. A line indented by a few spaces starts a new line (an
/// item of a list); lines indented further continue it, unless they follow a line ending
/// in `:` (or a blank one), which makes them an example, shown as is.
fn paragraph_body(o: &mut String, lines: &[&str]) {
    let mut verbatim = false;
    let mut previous = "";
    for l in lines {
        let indent = l.len() - l.trim_start().len();
        let starts_example = indent >= 4
            && (verbatim || previous.trim().is_empty() || previous.trim_end().ends_with(':'));
        if starts_example != verbatim {
            o.push_str(if starts_example { ".nf\n" } else { ".fi\n" });
            verbatim = starts_example;
        }
        previous = l;
        if l.trim().is_empty() {
            if !verbatim {
                o.push_str(".IP\n");
            }
            continue;
        }
        if !verbatim && (1..4).contains(&indent) {
            o.push_str(".br\n");
        }
        o.push_str(&roff_text(l.trim_start()));
        o.push('\n');
    }
    if verbatim {
        o.push_str(".fi\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_example_is_on_the_config_page() {
        let mut page = Vec::new();
        render(Some("accio.toml"), &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        for key in [
            "concurrency",
            "shutdown_grace",
            "log_level",
            "control_socket",
            "listen",
            "host",
            "port",
            "connect",
            "handshake",
            "stall",
            "close",
            "initial",
            "max",
            "max_attempts",
            "probe_max",
            "dir",
            "on_success",
            "done_dir",
            "failed_dir",
            "server",
            "include",
            "exclude",
            "settle",
            "rescan_interval",
            "recursive",
            "max_depth",
            "prune_empty_dirs",
        ] {
            assert!(
                page.contains(&format!(".TP\n\\fB{} = ", key)),
                "{key} missing:\n{page}"
            );
        }
        for table in [
            "[server]",
            "[timeouts]",
            "[retry]",
            "[metrics]",
            "[[watch]]",
        ] {
            assert!(page.contains(&format!(".SS {table}\n")), "{table}:\n{page}");
        }
        assert!(page.contains(".SH EXAMPLE\n"));
    }

    /// Every page has the standard sections, no empty heading, and names no page we do not
    /// ship.
    #[test]
    fn pages_have_exit_status_and_nothing_empty() {
        for page in PAGES {
            let mut out = Vec::new();
            render(Some(page), &mut out).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains(".SH EXTRA"), "{page}: EXTRA heading");
            assert!(!out.contains("accio\\-help"), "{page}: names accio-help(1)");
            let heads: Vec<&str> = out.lines().filter(|l| l.starts_with(".SH")).collect();
            for pair in heads.windows(2) {
                let at = out.find(&format!("{}\n{}", pair[0], pair[1]));
                assert!(at.is_none(), "{page}: empty section {}", pair[0]);
            }
            if *page != "accio.toml" {
                assert!(out.contains(".SH EXIT STATUS"), "{page}: no EXIT STATUS");
            }
        }
    }

    #[test]
    fn unknown_pages_are_named() {
        let e = render(Some("nope"), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("accio.toml"), "{e}");
    }
}
