//! `accio completions SHELL` and `accio man`: generated from the clap definitions (plus the
//! hand-written man sections), so they must list the real subcommands. Runs the real
//! binary.

use assert_cmd::Command;

fn accio() -> Command {
    Command::cargo_bin("accio").unwrap()
}

/// Every subcommand of the CLI, as a user types it: the one list the checks below expect
/// (written here, not taken from the binary, so that a subcommand dropped by mistake fails).
const SUBCOMMANDS: &str = "send serve watch status retry check-config completions man";

fn subcommands() -> impl Iterator<Item = &'static str> {
    SUBCOMMANDS.split_whitespace()
}

fn stdout_of(args: &[&str]) -> String {
    let out = accio().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "accio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "accio {args:?} wrote to stderr");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_for_common_shells_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for sub in subcommands() {
            assert!(script.contains(sub), "{shell}: no {sub:?} in the script");
        }
    }
    // Shell-specific markers: the scripts are for the shell asked for.
    assert!(stdout_of(&["completions", "bash"]).contains("complete -F"));
    assert!(stdout_of(&["completions", "zsh"]).starts_with("#compdef accio"));
    assert!(stdout_of(&["completions", "fish"]).contains("complete -c accio"));
}

#[test]
fn completions_reject_an_unknown_shell() {
    let out = accio().args(["completions", "cmd.exe"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ERROR:"), "{err}");
}

#[test]
fn bash_completion_script_is_valid_bash() {
    let script = stdout_of(&["completions", "bash"]);
    let status = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .expect("needs bash");
    assert!(status.success(), "bash -n rejected the completion script");
}

#[test]
fn man_page_is_roff_with_every_subcommand() {
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "{}",
        &page[..80.min(page.len())]
    );
    let th = page
        .lines()
        .find(|l| l.starts_with(".TH "))
        .expect("no .TH line");
    assert!(th.contains("accio"), "{th}");
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "no {section}");
    }
    // roff escapes hyphens as `\-`.
    let text = page.replace("\\-", "-");
    for sub in subcommands() {
        assert!(
            text.contains(&format!("accio-{sub}")),
            "no {sub:?} in the man page"
        );
    }
}

/// Every page through groff's own checker: warnings about the roff itself fail the test.
#[test]
fn man_pages_render_with_groff() {
    let dir = tempfile::tempdir().unwrap();
    // The main page, every subcommand's, and the configuration's.
    let pages = ["accio"]
        .into_iter()
        .chain(subcommands())
        .chain(["accio.toml"]);
    for page in pages {
        let text = stdout_of(&["man", page]);
        let file = dir.path().join(format!("{page}.roff"));
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file)
            .output()
            .expect("needs groff (groff-base; .ci/run installs it)");
        assert!(out.status.success(), "{page}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim().is_empty(), "{page}: groff warnings: {err}");
    }
}

/// The pages teach: the service's page says when a file is sent, what happens after
/// success and failure, the signals and exit code 78; the configuration's page has every
/// table; `accio man` itself is in `--help`.
#[test]
fn man_pages_teach_the_service_and_its_configuration() {
    let watch = stdout_of(&["man", "watch"]).replace("\\-", "-");
    for s in [
        ".SH WHEN A FILE IS SENT",
        ".SH AFTER SUCCESS",
        ".SH AFTER FAILURE",
        ".SH SIGNALS",
        ".SH EXIT STATUS",
        "SIGHUP",
        "SIGUSR1",
        ".B 78",
        "accio retry",
    ] {
        assert!(watch.contains(s), "accio-watch(1) lacks {s:?}");
    }
    let toml = stdout_of(&["man", "accio.toml"]);
    assert!(toml.starts_with(".TH accio.toml 5 "), "{}", &toml[..40]);
    for s in [
        ".SS [server]",
        ".SS [retry]",
        ".SS [metrics]",
        ".SS [[watch]]",
    ] {
        assert!(toml.contains(s), "accio.toml(5) lacks {s:?}");
    }
    let help = stdout_of(&["--help"]);
    for s in ["man", "status", "retry"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(s)),
            "--help does not list {s}:\n{help}"
        );
    }
}

#[test]
fn every_subcommand_has_its_own_man_page() {
    for sub in subcommands() {
        let page = stdout_of(&["man", sub]).replace("\\-", "-");
        let th = page
            .lines()
            .find(|l| l.starts_with(".TH "))
            .expect("no .TH line");
        assert!(th.contains(&format!("accio-{sub}")), "{th}");
        assert!(page.contains(&format!("accio {sub}")), "usage of {sub}");
    }
    // The send page carries the exit codes, under the standard heading.
    let send = stdout_of(&["man", "send"]);
    assert!(
        send.contains(".SH EXIT STATUS\n.nf\n  0  the file was delivered"),
        "{send}"
    );
    assert!(!send.contains(".SH EXTRA"), "{send}");
    // accio(1) names no page the package does not ship.
    assert!(!stdout_of(&["man"]).contains("accio\\-help"));
    let out = accio().args(["man", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.starts_with(b"ERROR: no man page"), "{out:?}");
}

/// Issue 23: every duration the command line or the environment gives is checked: too long
/// for the clock is one `ERROR:` line and exit 2 (a usage error), never a panic (exit 101).
#[test]
fn extreme_durations_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let file = file.to_str().unwrap();
    let send = ["send", "127.0.0.1", "9", file];
    let serve = ["serve", "0", dir.path().to_str().unwrap()];
    let cases: [(&str, &str, &[&str]); 5] = [
        ("ACCIO_CONNECT_TIMEOUT", "connect-timeout", &send),
        ("ACCIO_HANDSHAKE_TIMEOUT", "handshake-timeout", &send),
        ("ACCIO_STALL_TIMEOUT", "stall-timeout", &send),
        ("ACCIO_CLOSE_TIMEOUT", "close-timeout", &send),
        ("ACCIO_SERVE_IDLE_TIMEOUT", "idle-timeout", &serve),
    ];
    for (var, flag, args) in cases {
        for value in ["500000000000y", "18446744073709551615s", "2years"] {
            let by_env = accio().args(args).env(var, value).output().unwrap();
            let by_flag = accio()
                .args(args)
                .arg(format!("--{flag}={value}"))
                .output()
                .unwrap();
            let mut outs = vec![("env", by_env), ("flag", by_flag)];
            if var == "ACCIO_SERVE_IDLE_TIMEOUT" {
                // serve's --deadline (no environment variable) as well.
                let deadline = accio()
                    .args(args)
                    .arg(format!("--deadline={value}"))
                    .output()
                    .unwrap();
                outs.push(("--deadline", deadline));
            }
            for (how, out) in outs {
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{var} {how} {value}: {err}");
                assert!(
                    err.starts_with("ERROR: ") && err.lines().count() == 1,
                    "{var} {how} {value}: {err}"
                );
                assert!(
                    err.contains(if how == "--deadline" {
                        "deadline"
                    } else {
                        flag
                    }) && !err.contains("panicked"),
                    "{var} {how} {value}: {err}"
                );
            }
        }
    }
}
