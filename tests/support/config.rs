//! Configuration files for `accio watch` as values: a whole config ([`Conf`]) with its
//! watches ([`WatchConf`]) and destinations ([`Dest`]), written through `toml` so that paths
//! and strings are always quoted right. Optional keys are left out when `None` (their
//! defaults apply), so a config asks only for what its test is about.
//!
//! Std and `toml` only, so that files outside `tests/support` (the fault harness, the peers,
//! and through them the benchmarks) can include it by path.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// A destination as a watch or `[server]` names it. `concurrency` and `adaptive` are the
/// scheduler's per-destination keys: `None` leaves them out.
#[derive(Clone, Debug)]
pub struct Dest {
    pub host: String,
    pub port: u16,
    pub concurrency: Option<i64>,
    pub adaptive: Option<bool>,
}

impl Dest {
    /// `127.0.0.1:port`, the scheduler's keys left to their defaults.
    pub fn local(port: u16) -> Dest {
        Dest {
            host: "127.0.0.1".into(),
            port,
            concurrency: None,
            adaptive: None,
        }
    }

    fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("host".into(), self.host.clone().into());
        t.insert("port".into(), i64::from(self.port).into());
        if let Some(c) = self.concurrency {
            t.insert("concurrency".into(), c.into());
        }
        if let Some(a) = self.adaptive {
            t.insert("adaptive".into(), a.into());
        }
        t
    }
}

/// One `[[watch]]`: `done` None means `on_success = "delete"`; `server` None sends to the
/// config's `[server]`.
#[derive(Clone, Debug)]
pub struct WatchConf {
    pub dir: PathBuf,
    pub done: Option<PathBuf>,
    pub failed: PathBuf,
    pub server: Option<Dest>,
    pub settle: String,
    pub rescan_interval: String,
}

impl WatchConf {
    /// Existing directories `dir`, `done` and `failed`, moving delivered files to `done`.
    pub fn new(dir: &Path, done: &Path, failed: &Path) -> WatchConf {
        WatchConf {
            dir: dir.to_path_buf(),
            done: Some(done.to_path_buf()),
            failed: failed.to_path_buf(),
            server: None,
            settle: "100ms".into(),
            rescan_interval: "30s".into(),
        }
    }

    /// `spool`, `done`, `failed` made under `root`, moving delivered files to `done`.
    pub fn under(root: &Path) -> WatchConf {
        let d = |n: &str| {
            let p = root.join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        WatchConf::new(&d("spool"), &d("done"), &d("failed"))
    }

    fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("dir".into(), path(&self.dir));
        match &self.done {
            Some(d) => {
                t.insert("on_success".into(), "move".into());
                t.insert("done_dir".into(), path(d));
            }
            None => {
                t.insert("on_success".into(), "delete".into());
            }
        }
        t.insert("failed_dir".into(), path(&self.failed));
        if let Some(s) = &self.server {
            t.insert("server".into(), Value::Table(s.table()));
        }
        t.insert("settle".into(), self.settle.clone().into());
        t.insert(
            "rescan_interval".into(),
            self.rescan_interval.clone().into(),
        );
        t
    }
}

/// A whole config file. Durations as the config spells them; `None` leaves a key out (its
/// default applies).
#[derive(Clone, Debug)]
pub struct Conf {
    pub concurrency: Option<i64>,
    pub server: Option<Dest>,
    pub connect: String,
    pub handshake: String,
    pub stall: String,
    pub close: String,
    pub retry_initial: String,
    pub retry_max: String,
    pub max_attempts: i64,
    pub shutdown_grace: String,
    pub watches: Vec<WatchConf>,
}

impl Conf {
    /// Every timeout `timeout`, retries from 1 s to 30 s for ever, a short shutdown grace.
    pub fn new(timeout: &str, watches: Vec<WatchConf>) -> Conf {
        Conf {
            concurrency: None,
            server: None,
            connect: timeout.into(),
            handshake: timeout.into(),
            stall: timeout.into(),
            close: timeout.into(),
            retry_initial: "1s".into(),
            retry_max: "30s".into(),
            max_attempts: 0,
            shutdown_grace: "1s".into(),
            watches,
        }
    }

    /// One watch sending to `127.0.0.1:port` four at a time: 1 s timeouts and quick retries
    /// (20 ms to 300 ms) for ever, 3 s of shutdown grace.
    pub fn quick(port: u16, watch: WatchConf) -> Conf {
        Conf {
            concurrency: Some(4),
            server: Some(Dest::local(port)),
            retry_initial: "20ms".into(),
            retry_max: "300ms".into(),
            shutdown_grace: "3s".into(),
            ..Conf::new("1s", vec![watch])
        }
    }

    /// Sets the four timeouts (connect, handshake, stall, close) to `t`.
    pub fn set_timeouts(&mut self, t: &str) {
        for key in [
            &mut self.connect,
            &mut self.handshake,
            &mut self.stall,
            &mut self.close,
        ] {
            *key = t.into();
        }
    }

    pub fn to_toml(&self) -> String {
        let mut t = Table::new();
        if let Some(c) = self.concurrency {
            t.insert("concurrency".into(), c.into());
        }
        t.insert("shutdown_grace".into(), self.shutdown_grace.clone().into());
        if let Some(s) = &self.server {
            t.insert("server".into(), Value::Table(s.table()));
        }
        let mut to = Table::new();
        to.insert("connect".into(), self.connect.clone().into());
        to.insert("handshake".into(), self.handshake.clone().into());
        to.insert("stall".into(), self.stall.clone().into());
        to.insert("close".into(), self.close.clone().into());
        t.insert("timeouts".into(), Value::Table(to));
        let mut retry = Table::new();
        retry.insert("initial".into(), self.retry_initial.clone().into());
        retry.insert("max".into(), self.retry_max.clone().into());
        retry.insert("max_attempts".into(), self.max_attempts.into());
        t.insert("retry".into(), Value::Table(retry));
        let watches = self.watches.iter().map(|w| Value::Table(w.table()));
        t.insert("watch".into(), Value::Array(watches.collect()));
        toml::to_string(&t).unwrap()
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_toml()).unwrap();
    }
}

fn path(p: &Path) -> Value {
    Value::String(p.to_str().expect("test paths are UTF-8").into())
}
