//! `accio check-config` against the real binary: valid files print their effective
//! settings; every class of bad file is refused with one `ERROR:` line that names the file,
//! the line and the key, and exit code 78 (EX_CONFIG).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXIT_INVALID: i32 = 78;

/// A temporary directory with a spool, done and failed directory and a config file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for d in ["spool", "done", "failed", "spool2", "done2", "failed2"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Setup { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `accio.toml`, replacing `@` with the temporary directory.
    fn write(&self, text: &str) -> PathBuf {
        let path = self.root().join("accio.toml");
        std::fs::write(&path, text.replace('@', &self.root().display().to_string())).unwrap();
        path
    }
}

fn check_config(path: &Path) -> Output {
    Command::new(support::BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("ACCIO_CONFIG")
        .output()
        .unwrap()
}

/// Asserts an acceptance (exit 0) and returns stdout, the effective settings.
fn assert_accepted(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts a refusal: exit 78, nothing on stdout, one `ERROR:` line naming file:line and key.
fn assert_refused(out: &Output, path: &Path, line: usize, key: &str, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(EXIT_INVALID), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let head = format!("ERROR: {}:{line}: key `{key}`: ", path.display());
    assert!(
        stderr.starts_with(&head),
        "expected {head:?}..., got {stderr}"
    );
    assert!(stderr.contains(what), "expected {what:?} in {stderr}");
    stderr
}

const VALID: &str = r#"concurrency = 2

[server]
host = "127.0.0.1"
port = "http-alt"

[timeouts]
stall = "2s"

[[watch]]
dir = "@/spool"
done_dir = "@/done"
failed_dir = "@/failed"
"#;

#[test]
fn valid_config_prints_effective_settings() {
    let s = Setup::new();
    let path = s.write(VALID);
    let out = check_config(&path);
    let stdout = assert_accepted(&out);
    assert!(out.stderr.is_empty());
    let r = s.root().display();
    for expected in [
        "concurrency = 2\n".to_string(),
        "shutdown_grace = \"10s\"\n".into(),
        "log_level = \"info\"\n".into(),
        "connect = \"10s\"\n".into(),
        "stall = \"2s\"\n".into(),
        "initial = \"1s\"\n".into(),
        "max = \"5m\"\n".into(),
        "max_attempts = 10\n".into(),
        "probe_max = \"1m\"\n".into(),
        format!("dir = \"{r}/spool\"\n"),
        format!("done_dir = \"{r}/done\"\n"),
        format!("failed_dir = \"{r}/failed\"\n"),
        "on_success = \"move\"\n".into(),
        // The service name is resolved, the top-level server copied into the watch, the
        // default confirmation policy written out.
        "server = { host = \"127.0.0.1\", port = 8080, concurrency = 2, adaptive = true, confirm = \"close\" }\n".into(),
        "include = [\"*\"]\n".into(),
        "exclude = [\".*\", \"*.part\", \"*.tmp\", \"*~\"]\n".into(),
        "settle = \"250ms\"\n".into(),
        "rescan_interval = \"30s\"\n".into(),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // The output is itself a valid configuration with the same meaning.
    let again = s.root().join("effective.toml");
    std::fs::write(&again, &stdout).unwrap();
    let out2 = check_config(&again);
    assert_eq!(out2.status.code(), Some(0));
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(
        body(&String::from_utf8(out2.stdout).unwrap()),
        body(&stdout)
    );
}

#[test]
fn shipped_example_passes_when_its_directories_exist() {
    let s = Setup::new();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/accio.toml")).unwrap();
    assert!(example.contains("/var/spool/accio/"));
    let path = s.write(
        &example
            .replace("/var/spool/accio/outbox", "@/spool")
            .replace("/var/spool/accio/sent", "@/done")
            .replace("/var/spool/accio/failed", "@/failed"),
    );
    let stdout = assert_accepted(&check_config(&path));
    assert!(stdout.contains("port = 5000"), "{stdout}");
}

/// `demo/run.sh` fills in the demo template; what it produces must pass.
#[test]
fn demo_template_passes_when_filled_in() {
    let s = Setup::new();
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/accio.toml")).unwrap();
    assert!(template.contains("@DEMO@") && template.contains("@PORT@"));
    let path = s.write(&template.replace("@DEMO@", "@").replace("@PORT@", "5000"));
    assert_accepted(&check_config(&path));
}

#[test]
fn syntax_error_and_unreadable_file() {
    let s = Setup::new();
    let path = s.write("concurrency = 4\n[server\nhost = \"h\"\n");
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_INVALID));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("ERROR: {}:2: invalid TOML: ", path.display())),
        "{stderr}"
    );

    let missing = s.root().join("nope.toml");
    let out = check_config(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_INVALID));
    assert!(
        stderr.starts_with(&format!(
            "ERROR: {}: cannot read the configuration: ",
            missing.display()
        )),
        "{stderr}"
    );
}

/// A directory the service's user cannot write into. Root may write anywhere, so as root the
/// check runs as `nobody` (setpriv); elsewhere the directory's mode takes the write bit away.
#[test]
fn unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(s.root(), 0o755);
    mode(&s.root().join("spool"), 0o777);
    mode(&s.root().join("done"), 0o777);
    mode(&s.root().join("failed"), 0o555);
    // strict_modes would refuse the spool writable by everyone first; this is about the
    // write check.
    let path = s.write(
        "strict_modes = false\n[server]\nhost = \"h\"\nport = 1\n[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
    );
    mode(&path, 0o644);
    // As root (who writes anywhere) it runs as nobody, which must reach the directory.
    let out = support::send::unprivileged()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Permission denied") || stderr.contains("failed_dir"),
        "nobody cannot reach the temporary directory (set TMPDIR to one it can): {stderr}"
    );
    assert_refused(
        &out,
        &path,
        8,
        "watch[0].failed_dir",
        "is not writable by this user",
    );
}

/// Issue 23: a done_dir that is a link to a directory inside one writable by everyone is
/// refused (StrictModes), naming the directory and the fix; `strict_modes = false` accepts
/// it.
#[test]
fn done_dir_behind_a_world_writable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let open = s.root().join("open");
    std::fs::create_dir_all(open.join("sent")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(open.join("sent"), s.root().join("sent")).unwrap();
    let text = "[server]\nhost = \"h\"\nport = 1\n[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/sent\"\nfailed_dir = \"@/failed\"\n";
    let path = s.write(text);
    let err = assert_refused(
        &check_config(&path),
        &path,
        6,
        "watch[0].done_dir",
        &format!(
            "{} (above done_dir {}) is writable by everyone (mode 0777)",
            open.display(),
            s.root().join("sent").display()
        ),
    );
    assert!(
        err.contains(&format!("fix: chmod go-w {}", open.display())),
        "{err}"
    );
    let path = s.write(&format!("strict_modes = false\n{text}"));
    let out = assert_accepted(&check_config(&path));
    assert!(out.contains("strict_modes = false"), "{out}");
}

/// Issue 5: the loader never panics, whatever the input. `parse` is the whole loader minus
/// the filesystem checks, so it is fed directly.
mod props {
    use std::path::Path;

    use accio::config::{parse, render};
    use proptest::prelude::*;

    const FILE: &str = "/etc/accio/prop.toml";

    /// A configuration that uses every key, to be mutated.
    const FULL: &str = r#"concurrency = 4
shutdown_grace = "10s"
log_level = "info"
strict_modes = true
[server]
host = "127.0.0.1"
port = 5000
[timeouts]
connect = "10s"
handshake = "10s"
stall = "10s"
close = "10s"
[retry]
initial = "1s"
max = "5m"
max_attempts = 10
probe_max = "1m"
[[watch]]
dir = "/var/spool/accio/outbox"
done_dir = "/var/spool/accio/sent"
failed_dir = "/var/spool/accio/failed"
on_success = "move"
server = { host = "::1", port = "http-alt" }
include = ["*"]
exclude = [".*", "*.part", "*.tmp", "*~"]
settle = "250ms"
rescan_interval = "30s"
[[watch]]
dir = "/var/spool/accio/b"
failed_dir = "/var/spool/accio/b-failed"
on_success = "delete"
"#;

    /// Values worth trying in any position: edge numbers, bad durations, paths, types.
    const VALUES: &[&str] = &[
        "0",
        "-1",
        "1",
        "65535",
        "65536",
        "9223372036854775807",
        "-9223372036854775808",
        "1.5",
        "nan",
        "-inf",
        "true",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "1979-05-27",
        "\"\"",
        "\"0s\"",
        "\"1ms\"",
        "\"18446744073709551615s\"",
        "\"99999999999999years\"",
        "\"10\"",
        "\"5 m\"",
        "\"move\"",
        "\"delete\"",
        "\"ssh\"",
        "\"x\"",
        "\"/\"",
        "\"relative\"",
        "\"/var/spool/accio/outbox\"",
        "\"/var/spool/accio/outbox/..\"",
        "\"[\"",
        "\"a\\u0000b\"",
        "[]",
        "[1, \"a\"]",
        "[\"*\", \"[\"]",
        "[[]]",
        "{}",
        "{ host = \"h\" }",
        "{ host = \"h\", port = 0 }",
        "{ host = 1, port = \"a\" }",
        "'''multi\nline'''",
    ];

    /// Applies one edit to the lines of a config.
    fn mutate(lines: &mut Vec<String>, op: u8, a: usize, b: usize, v: usize) {
        if lines.is_empty() {
            return;
        }
        let n = lines.len();
        let (a, b) = (a % n, b % n);
        match op % 7 {
            // Drop a line (a key or a table header).
            0 => {
                lines.remove(a);
            }
            // Duplicate a line.
            1 => {
                let l = lines[a].clone();
                lines.insert(b, l);
            }
            // Swap two lines.
            2 => lines.swap(a, b),
            // Give a key another key's value.
            3 | 4 => {
                let value = lines[b].split_once('=').map(|(_, v)| v.to_string());
                if let (Some((k, _)), Some(v)) = (lines[a].split_once('='), value) {
                    lines[a] = format!("{k}={v}");
                }
            }
            // Give a key an edge value.
            5 => {
                if let Some((k, _)) = lines[a].split_once('=') {
                    lines[a] = format!("{k}= {}", VALUES[v % VALUES.len()]);
                }
            }
            // Give a value another line's key.
            _ => {
                let key = lines[b].split_once('=').map(|(k, _)| k.to_string());
                if let (Some((_, v)), Some(k)) = (lines[a].split_once('='), key) {
                    lines[a] = format!("{k}={v}");
                }
            }
        }
    }

    /// Parse must answer; an error is one line that starts with the file; a success renders
    /// to a config that parses to the same rendering.
    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        match parse(bytes, Path::new(FILE)) {
            Ok(c) => {
                let text = render(&c);
                let again = parse(text.as_bytes(), Path::new(FILE)).map_err(|e| {
                    TestCaseError::fail(format!("rendering does not parse: {e}\n{text}"))
                })?;
                prop_assert_eq!(render(&again), text);
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with(FILE), "{}", shown);
                prop_assert!(!shown.contains('\n'), "{}", shown);
                prop_assert!(e.line.is_some(), "{}", shown);
            }
        }
        Ok(())
    }

    proptest! {
        // 256 cases each by default; PROPTEST_CASES=100000 for a long run.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            check(&bytes)?;
        }

        #[test]
        fn arbitrary_strings(s in any::<String>()) {
            check(s.as_bytes())?;
        }

        /// Strings made of TOML's punctuation and this schema's words, which get much
        /// further into the parser and the schema than random characters.
        #[test]
        fn toml_like_strings(parts in prop::collection::vec(prop::sample::select(vec![
            "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\"", "'", "\n", " ", "#", "\\",
            "watch", "server", "dir", "port", "host", "retry", "max", "initial", "1", "0",
            "\"10s\"", "\"/a\"", "-", "+", "e", "true", "1979-05-27",
        ]), 0..60)) {
            check(parts.concat().as_bytes())?;
        }

        #[test]
        fn mutated_valid_config(edits in prop::collection::vec(
            (any::<u8>(), any::<usize>(), any::<usize>(), any::<usize>()), 1..6)) {
            let mut lines: Vec<String> = FULL.lines().map(String::from).collect();
            for (op, a, b, v) in edits {
                mutate(&mut lines, op, a, b, v);
            }
            check(lines.join("\n").as_bytes())?;
        }

        #[test]
        fn truncated_valid_config(cut in 0..FULL.len(), junk in "[ -~\n]{0,8}") {
            let mut text = FULL.as_bytes()[..cut].to_vec();
            text.extend_from_slice(junk.as_bytes());
            check(&text)?;
        }
    }

    #[test]
    fn the_unmutated_config_is_valid() {
        let c = parse(FULL.as_bytes(), Path::new(FILE)).unwrap();
        assert_eq!(c.watches.len(), 2);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for text in [
            format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("a = {}1{}", "{b=".repeat(50_000), "}".repeat(50_000)),
            format!("a{} = 1", ".a".repeat(50_000)),
            format!("[a{}]", ".a".repeat(50_000)),
        ] {
            let e = parse(text.as_bytes(), Path::new(FILE)).unwrap_err();
            assert!(e.message.contains("recursion limit"), "{e}");
        }
    }
}

/// Golden messages: for every kind of mistake, the exact `ERROR:` line `check-config`
/// prints. `$S` is a valid `[server]`, `$W` a valid `[[watch]]` (lines 4-7 after `$S`), `@`
/// the temporary directory; the file is `@/accio.toml`.
const GOLDEN: &[(&str, &str)] = &[
    ("concurency = 4\n$S$W",
     "ERROR: @/accio.toml:1: key `concurency`: unknown key (did you mean `concurrency`?); allowed here: concurrency, active_limit, server, timeouts, retry, shutdown_grace, log_level, control_socket, metrics, writer_quiet, stale_after, max_rate, rate_schedule, strict_modes, watch"),
    ("$S$Wdne_dir = \"@/done\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].dne_dir`: unknown key (did you mean `done_dir`?); allowed here: dir, done_dir, failed_dir, on_success, server, include, exclude, settle, rescan_interval, recursive, max_depth, prune_empty_dirs"),
    ("[server]\nhost = \"h\"\nport = 1\nuser = \"x\"\n$W",
     "ERROR: @/accio.toml:4: key `server.user`: unknown key; allowed here: host, port, concurrency, adaptive, confirm, max_rate, rate_schedule"),
    ("$S[timeouts]\nconect = \"1s\"\n$W",
     "ERROR: @/accio.toml:5: key `timeouts.conect`: unknown key (did you mean `connect`?); allowed here: connect, handshake, stall, close"),
    ("$S[retry]\nmaximum = \"1s\"\n$W",
     "ERROR: @/accio.toml:5: key `retry.maximum`: unknown key; allowed here: initial, max, max_attempts, probe_max"),
    ("$S[metrics]\nport = 9187\n$W",
     "ERROR: @/accio.toml:5: key `metrics.port`: unknown key; allowed here: listen"),
    ("$S$Wserver = { host = \"h\", port = 1, limit = 3 }\n",
     "ERROR: @/accio.toml:8: key `watch[0].server.limit`: unknown key; allowed here: host, port, concurrency, adaptive, confirm, max_rate, rate_schedule"),
    ("$S$Wretry.max = \"1s\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].retry`: unknown key; allowed here: dir, done_dir, failed_dir, on_success, server, include, exclude, settle, rescan_interval, recursive, max_depth, prune_empty_dirs"),
    ("concurrency = \"4\"\n$S$W",
     "ERROR: @/accio.toml:1: key `concurrency`: expected an integer, found a string (\"4\")"),
    ("[server]\nhost = \"h\"\nport = 1.5\n$W",
     "ERROR: @/accio.toml:3: key `server.port`: expected a port number 1-65535 or a service name, found a float (1.5)"),
    ("[server]\nhost = 5\nport = 1\n$W",
     "ERROR: @/accio.toml:2: key `server.host`: expected a string, found an integer (5)"),
    ("[server]\nhost = \"h\"\nport = 1\nadaptive = \"yes\"\n$W",
     "ERROR: @/accio.toml:4: key `server.adaptive`: expected true or false, found a string (\"yes\")"),
    ("timeouts = 5\n$S$W",
     "ERROR: @/accio.toml:1: key `timeouts`: expected a table, found an integer (5)"),
    ("$S[[watch]]\ndir = 5\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:5: key `watch[0].dir`: expected a string, found an integer (5)"),
    ("$S$Wexclude = [1]\n",
     "ERROR: @/accio.toml:8: key `watch[0].exclude[0]`: expected a string, found an integer (1)"),
    ("$S$Winclude = \"*\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].include`: expected an array, found a string (\"*\")"),
    ("$S$Wserver = \"h:1\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].server`: expected a table, found a string (\"h:1\")"),
    ("$S[watch]\ndir = \"@/spool\"\n",
     "ERROR: @/accio.toml:4: key `watch`: expected an array of tables (write [[watch]], not [watch]), found a table"),
    ("$S[retry]\nmax_attempts = \"3\"\n$W",
     "ERROR: @/accio.toml:5: key `retry.max_attempts`: expected an integer, found a string (\"3\")"),
    ("log_level = 3\n$S$W",
     "ERROR: @/accio.toml:1: key `log_level`: expected a string, found an integer (3)"),
    ("$S[timeouts]\nconnect = 10\n$W",
     "ERROR: @/accio.toml:5: key `timeouts.connect`: expected a duration string such as \"250ms\", \"10s\" or \"5m\", found an integer (10)"),
    ("$S[timeouts]\nstall = \"soon\"\n$W",
     "ERROR: @/accio.toml:5: key `timeouts.stall`: invalid duration \"soon\" (expected number at 0); expected a duration string such as \"250ms\", \"10s\" or \"5m\""),
    ("$S$Wsettle = \"5 parsecs\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].settle`: invalid duration \"5 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); expected a duration string such as \"250ms\", \"10s\" or \"5m\""),
    ("$S[timeouts]\nclose = \"1000years\"\n$W",
     "ERROR: @/accio.toml:5: key `timeouts.close`: \"1000years\" is too long; at most 365 days"),
    ("$S[timeouts]\nhandshake = \"0s\"\n$W",
     "ERROR: @/accio.toml:5: key `timeouts.handshake`: must be greater than zero"),
    ("$S$Wrescan_interval = \"0s\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].rescan_interval`: must be greater than zero"),
    ("shutdown_grace = \"\"\n$S$W",
     "ERROR: @/accio.toml:1: key `shutdown_grace`: invalid duration \"\" (value was empty); expected a duration string such as \"250ms\", \"10s\" or \"5m\""),
    ("concurrency = 0\n$S$W",
     "ERROR: @/accio.toml:1: key `concurrency`: 0 is out of range; expected 1-1024"),
    ("concurrency = 5000\n$S$W",
     "ERROR: @/accio.toml:1: key `concurrency`: 5000 is out of range; expected 1-1024"),
    ("active_limit = 2\n$S$W",
     "ERROR: @/accio.toml:1: key `active_limit`: 2 is out of range; expected 4-10000000"),
    ("[server]\nhost = \"h\"\nport = 0\n$W",
     "ERROR: @/accio.toml:3: key `server.port`: invalid port 0: expected 1-65535"),
    ("[server]\nhost = \"h\"\nport = 70000\n$W",
     "ERROR: @/accio.toml:3: key `server.port`: invalid port 70000: expected 1-65535"),
    ("[server]\nhost = \"h\"\nport = \"nosuchservice\"\n$W",
     "ERROR: @/accio.toml:3: key `server.port`: invalid port \"nosuchservice\": not a number 1-65535 or a known service name"),
    ("[server]\nhost = \"h\"\nport = 1\nconcurrency = 2000\n$W",
     "ERROR: @/accio.toml:4: key `server.concurrency`: 2000 is out of range; expected 1-1024"),
    ("$S[retry]\nmax_attempts = -1\n$W",
     "ERROR: @/accio.toml:5: key `retry.max_attempts`: -1 is out of range; expected 0-4294967295"),
    ("$S[retry]\nmax_attempts = 5000000000\n$W",
     "ERROR: @/accio.toml:5: key `retry.max_attempts`: 5000000000 is out of range; expected 0-4294967295"),
    ("$S",
     "ERROR: @/accio.toml:1: key `watch`: missing; required: one or more [[watch]] tables"),
    ("$S[[watch]]\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:4: key `watch[0].dir`: missing; required: the spool directory to watch"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\n",
     "ERROR: @/accio.toml:4: key `watch[0].failed_dir`: missing; required: where files go after max_attempts failures"),
    ("$S[[watch]]\ndir = \"@/spool\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:4: key `watch[0].done_dir`: missing; required when on_success = \"move\" (the default): where delivered files go"),
    ("\n$W",
     "ERROR: @/accio.toml:2: key `watch[0].server`: missing, and there is no top-level [server] to fall back on; add [server] or server = { host = \"...\", port = ... } to this watch"),
    ("[server]\nport = 1\n$W",
     "ERROR: @/accio.toml:1: key `server.host`: missing; required: the server's host name or IP address"),
    ("$S$Wserver = { host = \"h\" }\n",
     "ERROR: @/accio.toml:8: key `watch[0].server.port`: missing; required: a port number 1-65535 or a service name"),
    ("concurrency = 1\nconcurrency = 2\n$S$W",
     "ERROR: @/accio.toml:2: invalid TOML: duplicate key `concurrency` in document root"),
    ("$S[server]\nhost = \"h\"\n$W",
     "ERROR: @/accio.toml:4: invalid TOML: invalid table header; duplicate key `server` in document root"),
    ("$S$Wdir = \"@/spool2\"\n",
     "ERROR: @/accio.toml:8: invalid TOML: duplicate key `dir` in table `watch`"),
    ("concurrency = 4\n[server\nhost = \"h\"\n",
     "ERROR: @/accio.toml:2: invalid TOML: invalid table header; expected `.`, `]`"),
    ("$Sa = \"unterminated\n$W",
     "ERROR: @/accio.toml:4: invalid TOML: invalid basic string"),
    ("$S$W[[watch]\n",
     "ERROR: @/accio.toml:8: invalid TOML: invalid table header; expected `.`, `]]`"),
    ("concurrency = = 4\n$S$W",
     "ERROR: @/accio.toml:1: invalid TOML: invalid string; expected `\"`, `'`"),
    ("$S[[watch]]\ndir = \"spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:5: key `watch[0].dir`: \"spool\" is a relative path; use an absolute path (the service's working directory is not the config's)"),
    ("$S[[watch]]\ndir = \"\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:5: key `watch[0].dir`: empty path"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/spool/\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:6: key `watch[0].done_dir`: is the spool directory itself (@/spool)"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/spool/x/../failed\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].failed_dir`: is inside the spool directory @/spool; put it beside the spool, not in it"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/done\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].failed_dir`: is the same directory as done_dir; delivered and failed files must be told apart"),
    ("$S[[watch]]\ndir = \"@/spool\"\nfailed_dir = \"@/failed\"\non_success = \"copy\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].on_success`: \"copy\" is not an option; expected \"move\" or \"delete\""),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\non_success = \"delete\"\n",
     "ERROR: @/accio.toml:6: key `watch[0].done_dir`: set, but on_success = \"delete\" never uses it; remove done_dir or use on_success = \"move\""),
    ("$S$Winclude = [\"*\", \"a[\"]\n",
     "ERROR: @/accio.toml:8: key `watch[0].include[1]`: invalid glob \"a[\": unclosed character class; missing ']'"),
    ("$S$Wexclude = [\"x/*\"]\n",
     "ERROR: @/accio.toml:8: key `watch[0].exclude`: glob \"x/*\" contains `/`, which matches only in subdirectories; set recursive = true, or match file names"),
    ("$S$Winclude = []\n",
     "ERROR: @/accio.toml:8: key `watch[0].include`: empty: no file would ever be uploaded; use [\"*\"] for all names"),
    ("watch = []\n$S",
     "ERROR: @/accio.toml:1: key `watch`: empty; at least one [[watch]] table is required"),
    ("$S$W[[watch]]\ndir = \"@/spool/.\"\ndone_dir = \"@/done2\"\nfailed_dir = \"@/failed2\"\n",
     "ERROR: @/accio.toml:9: key `watch[1].dir`: @/spool/. is already watched by watch[0] (line 5); each spool directory may appear once"),
    ("$S$W[[watch]]\ndir = \"@/spool2\"\ndone_dir = \"@/done2\"\nfailed_dir = \"@/failed2\"\nserver = { host = \"127.0.0.1\", port = 5000, adaptive = false }\n",
     "ERROR: @/accio.toml:12: key `watch[1].server`: 127.0.0.1:5000 is also the server of watch[0] with other lane settings (concurrency, adaptive); watches that send to one server share its lane, so give them the same settings"),
    ("$S[retry]\ninitial = \"1m\"\nmax = \"10s\"\n$W",
     "ERROR: @/accio.toml:6: key `retry.max`: 10s is shorter than retry.initial (1m)"),
    ("log_level = \"verbose\"\n$S$W",
     "ERROR: @/accio.toml:1: key `log_level`: \"verbose\" is not a level; expected one of off, error, warn, info, debug, trace, or target=level directives such as \"accio=debug,warn\""),
    ("log_level = \"info,=[\"\n$S$W",
     "ERROR: @/accio.toml:1: key `log_level`: invalid log filter \"info,=[\" (invalid filter directive); expected e.g. \"info\", \"debug\" or \"accio=debug,warn\""),
    ("control_socket = \"run/c.sock\"\n$S$W",
     "ERROR: @/accio.toml:1: key `control_socket`: \"run/c.sock\" is a relative path; use an absolute path (the service's working directory is not the config's)"),
    ("[server]\nhost = \"a b\"\nport = 1\n$W",
     "ERROR: @/accio.toml:2: key `server.host`: \"a b\" is not a host name or IP address"),
    ("[server]\nhost = \"h\"\nport = 1\nconfirm = \"ack\"\n$W",
     "ERROR: @/accio.toml:4: key `server.confirm`: \"ack\" is not an option; expected \"close\" or \"acked\""),
    ("$S[metrics]\nlisten = \"localhost:9187\"\n$W",
     "ERROR: @/accio.toml:5: key `metrics.listen`: \"localhost:9187\" is not an address and port; expected e.g. \"127.0.0.1:9187\" or \"[::1]:9187\""),
    ("$S[metrics]\nlisten = \"127.0.0.1:0\"\n$W",
     "ERROR: @/accio.toml:5: key `metrics.listen`: \"127.0.0.1:0\": port 0 is not a fixed port; choose one, e.g. 9187"),
    ("$S[[watch]]\ndir = \"@/nope\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:5: key `watch[0].dir`: directory @/nope does not exist; create it (accio does not create directories: their owner and mode are yours to choose)"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/file\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].failed_dir`: @/file is not a directory"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/spool-link\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:6: key `watch[0].done_dir`: resolves to the spool directory itself (@/spool)"),
    ("$S$W[[watch]]\ndir = \"@/spool-link\"\ndone_dir = \"@/done2\"\nfailed_dir = \"@/failed2\"\n",
     "ERROR: @/accio.toml:9: key `watch[1].dir`: @/spool-link resolves to @/spool, already watched by watch[0] (line 5); each spool directory may appear once"),
    ("writer_quiet = \"0s\"\n$S$W",
     "ERROR: @/accio.toml:1: key `writer_quiet`: must be greater than zero"),
    ("stale_after = 60\n$S$W",
     "ERROR: @/accio.toml:1: key `stale_after`: expected a duration string such as \"250ms\", \"10s\" or \"5m\", found an integer (60)"),
    ("$S[[watch]]\ndir = 1979-05-27\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
     "ERROR: @/accio.toml:5: key `watch[0].dir`: expected a string, found a date-time (1979-05-27)"),
    ("server.hots = \"h\"\nserver.port = 1\n$W",
     "ERROR: @/accio.toml:1: key `server.hots`: unknown key (did you mean `host`?); allowed here: host, port, concurrency, adaptive, confirm, max_rate, rate_schedule"),
    ("$S$Won_success = true\n",
     "ERROR: @/accio.toml:8: key `watch[0].on_success`: expected a string, found true"),
    ("watch = [{ dir = \"@/spool\", failed_dir = \"@/failed\" }]\n$S",
     "ERROR: @/accio.toml:1: key `watch[0].done_dir`: missing; required when on_success = \"move\" (the default): where delivered files go"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/inner-link\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].failed_dir`: resolves to @/spool/inner, inside the spool directory @/spool; put it beside the spool, not in it"),
    ("$S[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/done-link\"\n",
     "ERROR: @/accio.toml:7: key `watch[0].failed_dir`: resolves to the same directory as done_dir (@/done); delivered and failed files must be told apart"),
    ("\"con`cur, expected `x`\" = 1\n$S$W",
     "ERROR: @/accio.toml:1: key `con`cur, expected `x``: unknown key; allowed here: concurrency, active_limit, server, timeouts, retry, shutdown_grace, log_level, control_socket, metrics, writer_quiet, stale_after, max_rate, rate_schedule, strict_modes, watch"),
    ("$S$Won_success = \"mo`ve`, expected `x\"\n",
     "ERROR: @/accio.toml:8: key `watch[0].on_success`: \"mo`ve`, expected `x\" is not an option; expected \"move\" or \"delete\""),
    ("concurrency = \"4, expected x\"\n$S$W",
     "ERROR: @/accio.toml:1: key `concurrency`: expected an integer, found a string (\"4, expected x\")"),
    ("\"a\\nb\" = 1\n$S$W",
     "ERROR: @/accio.toml:1: key `a\\nb`: unknown key; allowed here: concurrency, active_limit, server, timeouts, retry, shutdown_grace, log_level, control_socket, metrics, writer_quiet, stale_after, max_rate, rate_schedule, strict_modes, watch"),
];

#[test]
fn golden_error_lines() {
    let s = Setup::new();
    std::fs::write(s.root().join("file"), "").unwrap();
    std::fs::create_dir(s.root().join("spool/inner")).unwrap();
    for (link, to) in [
        ("spool-link", "spool"),
        ("inner-link", "spool/inner"),
        ("done-link", "done"),
    ] {
        std::os::unix::fs::symlink(s.root().join(to), s.root().join(link)).unwrap();
    }
    let server = "[server]\nhost = \"127.0.0.1\"\nport = 5000\n";
    let watch = "[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n";
    let root = s.root().display().to_string();
    let mut wrong = Vec::new();
    for (text, expected) in GOLDEN {
        let path = s.write(&text.replace("$S", server).replace("$W", watch));
        let out = check_config(&path);
        let got = String::from_utf8_lossy(&out.stderr).replace(&root, "@");
        if out.status.code() != Some(EXIT_INVALID) || got != format!("{expected}\n") {
            wrong.push(format!("    ({text:?},\n     {:?}),", got.trim_end()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} differ; got:\n{}",
        wrong.len(),
        GOLDEN.len(),
        wrong.join("\n")
    );
}
