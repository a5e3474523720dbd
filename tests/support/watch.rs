//! The end-to-end tests of `accio watch`: spool directories, configs written as files, the
//! real service process with its log, and what it says about itself through `accio status`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::receiver::Receiver;
use super::scripted::{first_connection_paused, ScriptServer};
use super::wait::{exited_within, wait_until, DEADLINE};
use super::BIN;
pub use accio::status::{View, Why};

/// Sets the mtime of the file at `path` to `t` (a backlog written long ago).
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// Names of the regular, non-hidden files in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// A test's directories: spool, done, failed, and the receiver's; and where the service's
/// control socket goes.
pub struct Dirs {
    pub root: tempfile::TempDir,
    pub spool: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    pub recv: PathBuf,
    /// `control_socket` of [`config_text`]: in the test's own directory (`run/`, which a
    /// test can hand to the service's user), so that services of tests running at once
    /// never meet on the default path (as root they would).
    pub control: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = root.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        };
        Dirs {
            spool: mk("spool"),
            done: mk("done"),
            failed: mk("failed"),
            recv: mk("recv"),
            control: mk("run").join("control.sock"),
            root,
        }
    }

    /// Writes `content` under a hidden name, then renames it to `name`: the documented way.
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        drop_file(&self.spool, name, content)
    }
}

pub fn drop_file(dir: &Path, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.part"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Settings of a test config; defaults are short so that tests are quick.
#[derive(Clone)]
pub struct Opts {
    pub concurrency: u32,
    pub settle: &'static str,
    pub rescan: &'static str,
    pub initial: &'static str,
    pub max: &'static str,
    pub max_attempts: u32,
    pub grace: &'static str,
    pub timeout: &'static str,
    pub delete: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            concurrency: 4,
            settle: "150ms",
            rescan: "1s",
            initial: "50ms",
            max: "300ms",
            max_attempts: 0,
            grace: "2s",
            timeout: "2s",
            delete: false,
        }
    }
}

impl Opts {
    /// Short settle and rescan times, for tests about files still being written.
    pub fn writers() -> Opts {
        Opts {
            settle: "100ms",
            rescan: "200ms",
            ..Opts::default()
        }
    }
}

/// A `[[watch]]` table for `dirs`.
pub fn watch_table(dirs: &Dirs, o: &Opts) -> String {
    let disposal = if o.delete {
        "on_success = \"delete\"\n".to_string()
    } else {
        format!("on_success = \"move\"\ndone_dir = {:?}\n", dirs.done)
    };
    format!(
        "[[watch]]\ndir = {:?}\nfailed_dir = {:?}\n{disposal}settle = {:?}\nrescan_interval = {:?}\n",
        dirs.spool, dirs.failed, o.settle, o.rescan
    )
}

/// A whole config file text with one watch, its control socket at `dirs.control`. Probes of
/// a down server back off to `max` like the files (`probe_max`), so that the tests of short
/// backoffs see them as often.
pub fn config_text(dirs: &Dirs, port: u16, o: &Opts) -> String {
    format!(
        "control_socket = {:?}\nconcurrency = {}\nshutdown_grace = {:?}\nlog_level = \"info\"\n\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
         [timeouts]\nconnect = {t:?}\nhandshake = {t:?}\nstall = {t:?}\nclose = {t:?}\n\n\
         [retry]\ninitial = {:?}\nmax = {:?}\nmax_attempts = {}\nprobe_max = {:?}\n\n{}",
        dirs.control,
        o.concurrency,
        o.grace,
        o.initial,
        o.max,
        o.max_attempts,
        o.max,
        watch_table(dirs, o),
        t = o.timeout,
    )
}

/// Writes the config of one watch over `dirs` sending to `port` (see [`config_text`]) as
/// `dirs.root/a.toml` and returns its path.
pub fn config_file(dirs: &Dirs, port: u16, o: &Opts) -> PathBuf {
    write_config(dirs, "a.toml", &config_text(dirs, port, o))
}

/// The usual start of a test of the service: fresh directories, the real receiver, and the
/// service (settings `o`, config [`config_file`]) sending to it, running.
pub fn running(o: &Opts) -> (Dirs, Receiver, Service) {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let svc = Service::start(&config_file(&dirs, recv.port, o));
    (dirs, recv, svc)
}

/// The service over `dirs` (settings `o`) with a file `big` (`body`) dropped and its upload
/// in flight: the server's first connection has read 64 KiB and reads on only once `go` is
/// sent (see [`first_connection_paused`]). Returns the service, the server and `go`.
pub fn big_in_flight(
    dirs: &Dirs,
    o: &Opts,
    body: &[u8],
) -> (Service, ScriptServer, std::sync::mpsc::Sender<()>) {
    let (server, started, go) = first_connection_paused();
    let svc = Service::start(&config_file(dirs, server.port, o));
    dirs.drop_file("big", body);
    started
        .recv_timeout(DEADLINE)
        .expect("the upload of big did not start");
    (svc, server, go)
}

/// Writes `text` as `dirs.root/NAME` and returns its path.
/// Runs `accio ARGS --config CONFIG` (a tool: status, retry, check-config, ...) to its end.
pub fn accio(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn write_config(dirs: &Dirs, name: &str, text: &str) -> PathBuf {
    let p = dirs.root.path().join(name);
    fs::write(&p, text).unwrap();
    p
}

/// The real `accio watch` process, its stderr in a file.
pub struct Service {
    child: Child,
    pub log: PathBuf,
    /// Its configuration, for `accio status`.
    config: PathBuf,
}

/// The line the service logs once it watches every directory.
pub const RUNNING: &str = "accio watch is running";

impl Service {
    /// Starts the service and waits until it logs that it is running.
    pub fn start(config: &Path) -> Service {
        let s = Service::spawn(config);
        s.wait_log(RUNNING);
        s
    }

    /// Starts the service with extra environment variables and waits until it runs.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Service {
        let s = Service::spawn_with_env(config, env);
        s.wait_log(RUNNING);
        s
    }

    /// Starts the service without waiting.
    pub fn spawn(config: &Path) -> Service {
        Service::spawn_with_env(config, &[])
    }

    pub fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> Service {
        Service::spawn_wrapped(config, env, &[])
    }

    /// Starts the service under `wrapper` (a command and its arguments that runs the rest,
    /// e.g. `setpriv ...`) and waits until it runs.
    pub fn start_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Service {
        let s = Service::spawn_wrapped(config, env, wrapper);
        s.wait_log(RUNNING);
        s
    }

    pub fn spawn_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Service {
        let n: u32 = fastrand::u32(..);
        let log = config.with_extension(format!("{n:08x}.log"));
        let err = fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["watch", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,accio::watch=debug")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Service {
            child,
            log,
            config: config.to_path_buf(),
        }
    }

    /// What the service says about itself: `accio status --json` (the counts per watch,
    /// each destination up or down with its last error, the files in flight and waiting).
    /// Counts are updated once a file's move is done: poll with [`Service::wait_status`].
    #[track_caller]
    pub fn status(&self) -> View {
        status(&self.config).unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log()))
    }

    /// Asks `accio status` until `cond` holds of its answer; panics naming `what`, with the
    /// last answer and the log, after [`DEADLINE`].
    #[track_caller]
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&View) -> bool) -> View {
        let mut last = Err(String::from("not asked"));
        let held = wait_until(DEADLINE, || {
            last = status(&self.config);
            last.as_ref().is_ok_and(&mut cond)
        });
        match last {
            Ok(view) if held => view,
            _ => panic!(
                "timed out waiting for the status to show {what}; last answer: {last:#?}\nlog:\n{}",
                self.log()
            ),
        }
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the log contains `needle`; panics with the log if the process exits first.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_n(needle, 1)
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_log_n(&self, needle: &str, n: usize) {
        let mut log = String::new();
        let seen = wait_until(DEADLINE, || {
            log = self.log();
            log.lines().filter(|l| l.contains(needle)).count() >= n
        });
        assert!(
            seen,
            "timed out waiting for {n}× {needle:?} in the log:\n{log}"
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        exited_within(&mut self.child, within).unwrap_or_else(|| {
            panic!(
                "the service did not exit within {within:?}; log:\n{}",
                self.log()
            )
        })
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- service log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// The answer of the service configured by `config` to `accio status --json`, or what went
/// wrong (exit code and stderr, or output that is not a status document).
pub fn status(config: &Path) -> Result<View, String> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running accio status: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "accio status: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "accio status --json: {e} in {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Why the spool's file `name` waits, if `v` lists it among the waiting files.
pub fn why_waiting<'a>(v: &'a View, name: &str) -> Option<&'a Why> {
    v.waiting
        .iter()
        .find(|f| Path::new(&f.path).file_name() == Some(name.as_ref()))
        .map(|f| &f.why)
}

/// Whether `v` shows its one destination down.
pub fn destination_down(v: &View) -> bool {
    v.destinations.first().is_some_and(|d| !d.up)
}

/// Content that is unique per `i` and about `len` bytes long.
pub fn content(i: usize, len: usize) -> Vec<u8> {
    let line = format!("file number {i:06}\n");
    line.repeat(len / line.len() + 1).into_bytes()
}
