//! The crate's map (`src/lib.rs`) as a test: modules use only the modules below them, so
//! the import graph runs one way (`app`/`cli` on top, the front-ends, the service, then the
//! protocol and small helpers), and the queue's core decides without I/O.
//!
//! Reads the sources as text: every `crate::NAME` outside a comment is an arrow from the
//! file's top-level module to `NAME`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules, highest first: each may use only those after it.
const LAYERS: &[&str] = &[
    // The command line.
    "app",
    "man",
    "cli", //
    // Front-ends.
    "daemon",
    "send",
    "serve",
    "ops", //
    // The service.
    "watch",
    "systemd",
    "metrics",
    "status",
    "config",
    "logging",
    "signals", //
    // Below everything that ends a command or opens a connection.
    "exit",
    "client",
    "handshake",
    "resolve",
    "protocol",
    "rate",
    "files",
    "limits",
    "esc",
];

/// Files of the queue's core: decisions only, no I/O, no clock of their own.
const CORE: &[&str] = &[
    "src/watch/core/mod.rs",
    "src/watch/core/active.rs",
    "src/watch/core/attempt.rs",
    "src/watch/core/entry.rs",
    "src/watch/core/health.rs",
    "src/watch/core/lanes.rs",
    "src/watch/core/limiter.rs",
    "src/watch/core/limiter/overdue.rs",
    // Test only (the issue 16 scenarios, under the simulation), and held to the rules all
    // the same: its model of the network keeps time as the simulation does.
    "src/watch/core/scenarios.rs",
    // Test only too (the trees of issue 22, under the simulation).
    "src/watch/core/sim_tree.rs",
    "src/watch/core/timers.rs",
    "src/watch/core/tree.rs",
    "src/watch/core/types.rs",
    "src/watch/core/view.rs",
];
/// The core's simulation (test only): it plays the driver, so it is not held to the above.
const CORE_SIM: &str = "src/watch/core/sim.rs";
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "Instant::now",
    "SystemTime::now",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lines of `text` that are code (line comments and doc comments dropped).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
}

/// The names a line puts after `prefix` (`prefix` `NAME`, or inside `prefix{A, B::..}`),
/// `self` left out.
fn names_after(line: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let items: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .collect(),
            None => vec![rest],
        };
        for item in items {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != "self" {
                out.push(name);
            }
        }
    }
    out
}

/// The modules a line names as `crate::NAME`, or inside `use crate::{A, B::..}`.
fn used(line: &str) -> Vec<String> {
    names_after(line, "crate::")
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under src");
        let first = rel.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(from) = rank(&module) else {
            wrong.insert(format!(
                "src/{module}: a new top-level module: give it a place in LAYERS"
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in code_lines(&text) {
            for to in used(line) {
                if to == module {
                    continue;
                }
                match rank(&to) {
                    Some(r) if r > from => {}
                    Some(_) => {
                        wrong.insert(format!(
                            "{}:{n}: `{module}` uses `{to}`, which is above it",
                            rel.display()
                        ));
                    }
                    None => {
                        wrong.insert(format!(
                            "{}:{n}: `crate::{to}` is not a module in LAYERS",
                            rel.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows pointing up:\n{}",
        Vec::from_iter(wrong).join("\n")
    );
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    for line in lib.lines() {
        if let Some(m) = line
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            assert!(
                LAYERS.contains(&m),
                "src/lib.rs declares `{m}`, which LAYERS does not place"
            );
        }
    }
}

#[test]
fn the_queue_core_does_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in CORE {
        let text = std::fs::read_to_string(root.join(f)).expect("read core");
        // The unit tests at the bottom may use what they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code_lines(code) {
            for bad in NOT_IN_CORE {
                assert!(
                    !line.contains(bad),
                    "{f}:{n}: the core uses `{bad}`: {line}"
                );
            }
        }
    }
}

/// The modules a line of a file in `src/watch` names as `super::NAME` (`direct`: the file is
/// `src/watch/NAME.rs`, where `super` is the pipeline) or `crate::watch::NAME`.
fn watch_used(line: &str, direct: bool) -> Vec<String> {
    let mut out = names_after(line, "crate::watch::");
    if direct {
        out.extend(names_after(line, "super::"));
    }
    out
}

/// Inside `src/watch`: the stages take what they share from modules below them, never from
/// the pipeline (`watch/mod.rs`) that wires them, and no two modules use each other, even
/// through others (the core owns its vocabulary: watcher and claim use it, not the reverse).
#[test]
fn the_watch_modules_import_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/watch");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let module_of = |f: &Path| -> String {
        let rel = f.strip_prefix(&root).expect("under src/watch");
        let first = rel.components().next().expect("a path");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    let mut wrong = BTreeSet::new();
    for f in &files {
        let from = module_of(f);
        if from == "mod" {
            continue;
        }
        let direct = f.parent() == Some(root.as_path());
        let text = std::fs::read_to_string(f).expect("read source");
        // Unit tests at the bottom may use what they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code_lines(code) {
            for to in watch_used(line, direct) {
                if to == from {
                    continue;
                }
                if modules.contains(&to) && to != "mod" {
                    edges.insert((from.clone(), to));
                } else {
                    wrong.insert(format!(
                        "src/watch/{}:{n}: `{from}` uses `{to}` of the pipeline (watch/mod.rs)",
                        f.strip_prefix(&root).expect("under").display()
                    ));
                }
            }
        }
    }
    // A module that reaches itself through the edges is on a circle.
    for m in &modules {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = edges.iter().filter(|e| &e.0 == m).map(|e| &e.1).collect();
        while let Some(n) = todo.pop() {
            if n == m {
                wrong.insert(format!("`{m}` is on an import circle"));
                break;
            }
            if seen.insert(n) {
                todo.extend(edges.iter().filter(|e| &e.0 == n).map(|e| &e.1));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports inside src/watch:\n{}",
        Vec::from_iter(wrong).join("\n")
    );
}

#[test]
fn every_file_of_the_core_is_checked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src/watch/core"), &mut files);
    for f in files {
        let rel = f.strip_prefix(root).expect("under the crate");
        let rel = rel.to_string_lossy();
        assert!(
            CORE.contains(&rel.as_ref()) || rel == CORE_SIM,
            "{rel}: a new file of the core: add it to CORE"
        );
    }
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert_eq!(
        watch_used("use super::{claim, core::Key, Shared};", true),
        ["claim", "core", "Shared"]
    );
    assert_eq!(watch_used("use super::names;", false), Vec::<String>::new());
    assert_eq!(watch_used("x: crate::watch::core::Key", false), ["core"]);
    assert_eq!(used("use crate::cli::LogFormat;"), ["cli"]);
    assert_eq!(
        used("use crate::{config, watch::esc};"),
        ["config", "watch"]
    );
    assert_eq!(
        used("x(crate::app::run(), crate::exit::OK)"),
        ["app", "exit"]
    );
    assert!(code_lines("// crate::cli").all(|(_, l)| used(l).is_empty()));
}
