//! What /proc tells about a process: CPU time and memory, for tests that bound them and
//! benchmarks that print them. Std only, so that files outside `tests/support` (the fault
//! harness, shared with the benchmarks) can include it by path.

/// A line `key` (e.g. "VmHWM:") of /proc/PID/status, in KiB; `None` if the process is gone.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// CPU time of a process from /proc/PID/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    /// User + system time of the process itself.
    pub own: u64,
    /// User + system time of its children that it has waited for.
    pub children: u64,
}

/// The CPU time of `pid`; `None` if the process is gone.
pub fn cpu_times(pid: u32) -> Option<CpuTicks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after its closing paren are fixed.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime: fields 14-17 overall, 11-14 after the name.
    Some(CpuTicks {
        own: f.get(11)? + f.get(12)?,
        children: f.get(13)? + f.get(14)?,
    })
}

/// User + system time of a live process, in clock ticks.
#[track_caller]
pub fn cpu_ticks(pid: u32) -> u64 {
    cpu_times(pid)
        .unwrap_or_else(|| panic!("no /proc/{pid}/stat"))
        .own
}
