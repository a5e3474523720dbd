//! `accio check-config` against the real binary: valid files print their effective
//! settings; every class of bad file is refused with one `ERROR:` line that names the file,
//! the line and the key, and exit code 78 (EX_CONFIG).

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
    Command::new(env!("CARGO_BIN_EXE_accio"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("ACCIO_CONFIG")
        .output()
        .unwrap()
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
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        format!("dir = \"{r}/spool\"\n"),
        format!("done_dir = \"{r}/done\"\n"),
        format!("failed_dir = \"{r}/failed\"\n"),
        "on_success = \"move\"\n".into(),
        // The service name is resolved, the top-level server copied into the watch.
        "server = { host = \"127.0.0.1\", port = 8080 }\n".into(),
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
    let out = check_config(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("port = 5000"), "{stdout}");
}

#[test]
fn bad_configs_name_file_line_and_key() {
    let s = Setup::new();
    let server = "[server]\nhost = \"127.0.0.1\"\nport = 5000\n";
    let watch = "[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n";
    // (file, line, key, part of the message)
    let cases: Vec<(String, usize, &str, &str)> = vec![
        // unknown key, with a suggestion
        (format!("concurency = 4\n{server}{watch}"), 1, "concurency", "unknown key (did you mean `concurrency`?)"),
        (format!("{server}{watch}dne_dir = \"@/done\"\n"), 8, "watch[0].dne_dir", "unknown key"),
        // wrong type
        (format!("concurrency = \"4\"\n{server}{watch}"), 1, "concurrency", "expected an integer, found a string"),
        (format!("{server}[timeouts]\nconnect = 10\n{watch}"), 5, "timeouts.connect", "expected a duration string"),
        (format!("{server}[watch]\ndir = \"@/spool\"\n"), 4, "watch", "write [[watch]], not [watch]"),
        // missing keys: the line of the table they are missing from
        (format!("{server}[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\n"), 4, "watch[0].failed_dir", "missing"),
        (format!("{server}[[watch]]\ndir = \"@/spool\"\nfailed_dir = \"@/failed\"\n"), 4, "watch[0].done_dir", "required when on_success = \"move\""),
        (server.to_string(), 1, "watch", "missing"),
        (format!("\n{watch}"), 2, "watch[0].server", "no top-level [server]"),
        // bad values
        (format!("[server]\nhost = \"h\"\nport = 65536\n{watch}"), 3, "server.port", "invalid port 65536"),
        (format!("[server]\nhost = \"h\"\nport = \"nosuchservice\"\n{watch}"), 3, "server.port", "invalid port \"nosuchservice\""),
        (format!("concurrency = 0\n{server}{watch}"), 1, "concurrency", "out of range"),
        (format!("{server}[retry]\ninitial = \"1m\"\nmax = \"10s\"\n{watch}"), 6, "retry.max", "shorter than retry.initial"),
        (format!("{server}[timeouts]\nstall = \"soon\"\n{watch}"), 5, "timeouts.stall", "invalid duration \"soon\""),
        (format!("{server}{watch}exclude = [\".*\", \"[z-a]\"]\n"), 8, "watch[0].exclude[1]", "invalid glob"),
        (format!("{server}{watch}on_success = \"keep\"\n"), 8, "watch[0].on_success", "expected \"move\" or \"delete\""),
        // directories
        (format!("{server}[[watch]]\ndir = \"spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n"), 5, "watch[0].dir", "relative path"),
        (format!("{server}[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/nonexistent\"\nfailed_dir = \"@/failed\"\n"), 6, "watch[0].done_dir", "does not exist"),
        (format!("{server}[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/accio.toml\"\n"), 7, "watch[0].failed_dir", "is not a directory"),
        (format!("{server}[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/spool\"\nfailed_dir = \"@/failed\"\n"), 6, "watch[0].done_dir", "the spool directory itself"),
        (format!("{server}[[watch]]\ndir = \"@\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n"), 6, "watch[0].done_dir", "inside the spool directory"),
        (format!("{server}{watch}[[watch]]\ndir = \"@/spool/\"\ndone_dir = \"@/done2\"\nfailed_dir = \"@/failed2\"\n"), 9, "watch[1].dir", "already watched by watch[0]"),
    ];
    for (text, line, key, what) in &cases {
        let path = s.write(text);
        assert_refused(&check_config(&path), &path, *line, key, what);
    }
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
    let path = s.write(
        "[server]\nhost = \"h\"\nport = 1\n[[watch]]\ndir = \"@/spool\"\ndone_dir = \"@/done\"\nfailed_dir = \"@/failed\"\n",
    );
    mode(&path, 0o644);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipped: running as root without setpriv");
            return;
        }
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_accio"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    } else {
        check_config(&path)
    };
    if root
        && String::from_utf8_lossy(&out.stderr).contains("Permission denied")
        && !String::from_utf8_lossy(&out.stderr).contains("failed_dir")
    {
        eprintln!(
            "skipped: nobody cannot reach the temporary directory: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert_refused(
        &out,
        &path,
        7,
        "watch[0].failed_dir",
        "is not writable by this user",
    );
}
