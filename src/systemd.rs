//! systemd integration and the operator's status view.
//!
//! [`Notifier`] speaks the `sd_notify` protocol (sd-notify crate) for `Type=notify` units:
//! - `READY=1` once the watch service says every watch is established and the backlog is
//!   queued ([`Notifier::ready`]);
//! - `STATUS=` with live counts from [`Stats`] (what `systemctl status accio` shows), sent
//!   every [`STATUS_INTERVAL`] when it changed, and at once on every phase change;
//! - `WATCHDOG=1` at half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=`;
//! - `RELOADING=1` (with `MONOTONIC_USEC=`) … `READY=1` around a SIGHUP reload, so that
//!   `Type=notify-reload` works; `STOPPING=1` on shutdown.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) none of that runs: no task, no timer.
//! Independently of systemd, SIGUSR1 logs a one-line summary of the counts, so an operator
//! can always ask a running service how it is doing: `kill -USR1 $(pidof accio)`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sd_notify::NotifyState;
use signal_hook::consts::SIGUSR1;
use tokio::task::JoinHandle;

use crate::status::{Snapshot, Stats};

/// How often the STATUS= line is refreshed (only sent when its text changed). Short enough
/// for `systemctl status` to look live, long enough to cost nothing on an idle machine.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Where the service is in its life, shown as a prefix of the STATUS= line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Starting = 0,
    Running = 1,
    Reloading = 2,
    Stopping = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Reloading,
            _ => Phase::Stopping,
        }
    }
}

/// State shared by the [`Notifier`] and its background tasks.
#[derive(Debug)]
struct Inner {
    /// The counters the STATUS= line and the SIGUSR1 summary show.
    stats: Arc<Stats>,
    /// A [`Phase`], atomically, so the periodic task sees changes without a lock.
    phase: AtomicU8,
    /// `NOTIFY_SOCKET` was set at start: otherwise every notification is skipped.
    enabled: bool,
    /// A failed send is logged once, not every second.
    send_failed: AtomicBool,
    /// The last STATUS= text sent, so the periodic refresh sends only changes.
    last_status: Mutex<String>,
}

impl Inner {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn status_text(&self) -> String {
        self.status_text_of(self.stats.snapshot())
    }

    /// The status line of `snap` in the current phase; a refused reload is said until a
    /// reload is taken, since `systemctl reload` itself may have reported success.
    fn status_text_of(&self, snap: Snapshot) -> String {
        let line = match self.phase() {
            Phase::Starting => format!("starting: {snap}"),
            Phase::Running => snap.to_string(),
            Phase::Reloading => format!("reloading: {snap}"),
            Phase::Stopping => format!("stopping: {snap}"),
        };
        match self.stats.reload_refused() {
            Some(why) => format!("{line}; reload refused: {why}"),
            None => line,
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = notify_nonblocking(states) {
            // Not fatal: systemd may be gone during shutdown, or the socket unreadable.
            if !self.send_failed.swap(true, Ordering::Relaxed) {
                let socket = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
                tracing::warn!(
                    "cannot notify systemd at NOTIFY_SOCKET={}: {e}",
                    socket.to_string_lossy()
                );
            }
        }
    }

    /// Changes the phase and tells systemd at once, with a fresh STATUS=.
    fn enter(&self, phase: Phase, state: Option<NotifyState<'_>>) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        let mut last = self.lock_last();
        *last = self.status_text();
        match state {
            Some(s) => self.send(&[s, NotifyState::Status(&last)]),
            None => self.send(&[NotifyState::Status(&last)]),
        }
    }

    /// Sends STATUS= if its text changed since the last one sent.
    fn refresh(&self) {
        let text = self.status_text();
        let mut last = self.lock_last();
        // A failure reason stays: it is what the operator needs to see.
        if *last != text && !last.starts_with("failed: ") {
            self.send(&[NotifyState::Status(&text)]);
            *last = text;
        }
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding it cannot leave the String inconsistent: keep going.
        self.last_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The service's link to systemd and its SIGUSR1 status summary. Background tasks end when
/// this is dropped.
#[derive(Debug)]
pub struct Notifier {
    inner: Arc<Inner>,
    /// STATUS refresher, watchdog, SIGUSR1 listener: aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the reporters: the SIGUSR1 summary always; the STATUS= refresher and the
    /// watchdog only under systemd. Sends `STATUS=starting`. The SIGUSR1 handler is
    /// installed before this returns, so an early SIGUSR1 cannot kill the process.
    ///
    /// # Errors
    /// Not called inside a tokio runtime, or the SIGUSR1 handler could not be installed.
    pub fn start(stats: Arc<Stats>) -> io::Result<Notifier> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("systemd notifier needs a runtime: {e}")))?;
        let inner = Arc::new(Inner {
            stats,
            phase: AtomicU8::new(Phase::Starting as u8),
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            send_failed: AtomicBool::new(false),
            last_status: Mutex::new(String::new()),
        });
        let mut tasks = Vec::new();

        let signals = signal_hook_tokio::Signals::new([SIGUSR1])
            .map_err(|e| io::Error::new(e.kind(), format!("cannot handle SIGUSR1: {e}")))?;
        tasks.push(rt.spawn(summary_on_sigusr1(signals, Arc::clone(&inner))));

        if inner.enabled {
            inner.enter(Phase::Starting, None);
            tasks.push(rt.spawn(refresh_status(Arc::clone(&inner))));
            let pid = std::process::id();
            let usec = std::env::var("WATCHDOG_USEC").ok();
            let wpid = std::env::var("WATCHDOG_PID").ok();
            if let Some(period) = watchdog_period(usec.as_deref(), wpid.as_deref(), pid) {
                tracing::debug!("systemd watchdog: pinging every {period:?}");
                tasks.push(rt.spawn(ping_watchdog(Arc::clone(&inner), period)));
            }
        }
        Ok(Notifier { inner, tasks })
    }

    /// Sends `READY=1` now (also the end of a reload).
    pub fn ready(&self) {
        self.inner.enter(Phase::Running, Some(NotifyState::Ready));
    }

    /// Sends `RELOADING=1`: a SIGHUP reload starts. Call [`Notifier::ready`] when done,
    /// whether the new config was taken or refused.
    ///
    /// With `MONOTONIC_USEC=` (CLOCK_MONOTONIC now), as `Type=notify-reload` requires
    /// (systemd 253 and later; earlier ones ignore it): systemd tells this reload from an
    /// older one by it.
    pub fn reloading(&self) {
        self.inner
            .phase
            .store(Phase::Reloading as u8, Ordering::Relaxed);
        let mut last = self.inner.lock_last();
        *last = self.inner.status_text();
        match NotifyState::monotonic_usec_now() {
            Ok(usec) => {
                self.inner
                    .send(&[NotifyState::Reloading, usec, NotifyState::Status(&last)])
            }
            Err(_) => self
                .inner
                .send(&[NotifyState::Reloading, NotifyState::Status(&last)]),
        }
    }

    /// Sends `STOPPING=1`: shutdown began. STATUS= keeps being refreshed while transfers
    /// in flight finish.
    pub fn stopping(&self) {
        self.inner
            .enter(Phase::Stopping, Some(NotifyState::Stopping));
    }

    /// Sends `STATUS=failed: WHY` before the service exits on a fatal error, so
    /// `systemctl status accio` says why next to the exit code.
    pub fn failed(&self, why: &str) {
        self.inner
            .phase
            .store(Phase::Stopping as u8, Ordering::Relaxed);
        let text = format!("failed: {why}");
        self.inner.send(&[NotifyState::Status(&text)]);
        *self.inner.lock_last() = text;
    }

    /// The current status line, as sent in STATUS=.
    pub fn status_text(&self) -> String {
        self.inner.status_text()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The watchdog ping period: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
/// `None` when the variable is missing, zero or invalid, or `WATCHDOG_PID` names another
/// process (the variables were inherited, not meant for us). A missing `WATCHDOG_PID` is
/// accepted, as libsystemd does.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    // At most an hour: pinging more often than asked is harmless, and a period near
    // u64::MAX µs would overflow the timer's clock (a panic).
    Some(Duration::from_micros(usec / 2).clamp(Duration::from_millis(1), Duration::from_secs(3600)))
}

async fn refresh_status(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.refresh();
    }
}

async fn ping_watchdog(inner: Arc<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.send(&[NotifyState::Watchdog]);
    }
}

async fn summary_on_sigusr1(mut signals: signal_hook_tokio::Signals, inner: Arc<Inner>) {
    while signals.next().await.is_some() {
        // One snapshot for the line and its fields, so that they agree.
        let s = inner.stats.snapshot();
        // The counts as numbers too, for JSON logs.
        tracing::info!(
            target: "accio::status",
            watching = s.watching,
            in_flight = s.in_flight,
            queued = s.queued,
            sent = s.sent,
            failed = s.failed,
            destinations_down = s.destinations_down,
            "status: {}",
            inner.status_text_of(s)
        );
    }
}

/// Sends one notification datagram to `NOTIFY_SOCKET` without ever blocking: a manager (or a
/// test) that does not read its socket must not freeze the service, which calls this from its
/// async tasks. A message that does not fit is dropped with `WouldBlock`; STATUS= is sent
/// again when it changes, and the watchdog pings again.
///
/// # Errors
/// No `NOTIFY_SOCKET`-compatible address, or the send failed (including `WouldBlock`).
fn notify_nonblocking(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    use std::fmt::Write as _;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        // Abstract namespace, as systemd uses for some managers.
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
    };
    let mut msg = String::new();
    for state in states {
        let _ = writeln!(msg, "{state}");
    }
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = sock.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_rules() {
        let p = |u, w| watchdog_period(u, w, 42);
        assert_eq!(
            p(Some("200000"), Some("42")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(p(Some("30000000"), None), Some(Duration::from_secs(15)));
        assert_eq!(p(Some("200000"), Some("43")), None);
        assert_eq!(p(Some("200000"), Some("x")), None);
        assert_eq!(p(Some("0"), None), None);
        assert_eq!(p(Some("-5"), None), None);
        assert_eq!(p(None, Some("42")), None);
        assert_eq!(p(Some("1"), None), Some(Duration::from_millis(1)));
        assert_eq!(
            p(Some(&u64::MAX.to_string()), None),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn status_text_has_phase_and_counts() {
        let stats = Arc::new(Stats::default());
        stats.watching.store(2, Ordering::Relaxed);
        stats.sent.store(5, Ordering::Relaxed);
        let inner = Inner {
            stats,
            phase: AtomicU8::new(Phase::Starting as u8),
            enabled: false,
            send_failed: AtomicBool::new(false),
            last_status: Mutex::new(String::new()),
        };
        assert!(inner.status_text().starts_with("starting: watching 2 dirs"));
        inner.enter(Phase::Running, Some(NotifyState::Ready));
        assert_eq!(
            inner.status_text(),
            "watching 2 dirs, 0 in flight, 0 queued, 5 sent, 0 failed"
        );
        inner.enter(Phase::Stopping, Some(NotifyState::Stopping));
        assert!(inner.status_text().starts_with("stopping: "));
    }
}
