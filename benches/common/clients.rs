//! What the client benchmarks (`send`, `rate`) share: the C-like baseline client, the test
//! files, and one client process run with its own CPU time.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCIO: &str = env!("CARGO_BIN_EXE_accio");

/// Builds `examples/baseline_client.rs` with the release profile, beside the accio binary.
pub fn build_baseline() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "baseline_client",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .status()
        .expect("running cargo to build the baseline client");
    assert!(status.success(), "building the baseline client failed");
    Path::new(ACCIO)
        .parent()
        .unwrap()
        .join("examples/baseline_client")
}

/// A file of `len` pseudo-random bytes (seeded by its length).
pub fn write_file(path: &Path, len: u64) {
    let mut rng = fastrand::Rng::with_seed(len);
    let mut chunk = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill(&mut chunk[..n]);
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// User + system time of a `rusage`.
pub fn cpu_of(ru: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs a client process (`exe ARGS FILE`, without the caller's `ACCIO_*` settings) to
/// completion: its wall time and its own CPU time (user + system). Panics on failure: a
/// benchmark of a failing transfer means nothing.
// The child is reaped by wait4 (to get its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_client(exe: &Path, args: &[&str], file: &Path) -> (Duration, Duration) {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ACCIO_") {
            cmd.env_remove(key);
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning the client");
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, which has not been reaped; valid out-pointers.
    let rc = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    assert_eq!(rc, child.id() as libc::pid_t, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("{} failed ({status}): {err}", exe.display());
    }
    (wall, cpu_of(&ru))
}
