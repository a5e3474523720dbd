//! The real receiver: `accio serve PORT DIR` on a free port, and what it saved.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::net::free_port;
use super::wait::DEADLINE;
use super::BIN;

/// `accio serve PORT DIR`, the real receiver.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Receiver {
    /// On a free port; another test may take the port between the probe and serve's bind,
    /// so a few are tried.
    pub fn start(dir: &Path) -> Receiver {
        for _ in 0..9 {
            if let Some(r) = Receiver::try_start_on(dir, free_port()) {
                return r;
            }
        }
        Receiver::start_on(dir, free_port())
    }

    /// On `port`, which must be free.
    pub fn start_on(dir: &Path, port: u16) -> Receiver {
        Receiver::try_start_on(dir, port).unwrap_or_else(|| panic!("accio serve {port} exited"))
    }

    /// `None` if serve exited (the port was taken).
    fn try_start_on(dir: &Path, port: u16) -> Option<Receiver> {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", &port.to_string()])
            .arg(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready is serve's own "listening on" line: a check of the port could see another
        // test's listener while this serve is failing to bind it.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Keeps draining after the line, so serve never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let mut r = Receiver {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        match rx.recv_timeout(DEADLINE) {
            Ok(true) => Some(r),
            Ok(false) => {
                let _ = r.child.wait();
                None
            }
            Err(_) => panic!("accio serve {port} did not start"),
        }
    }

    /// What each connection delivered: N → content (complete files only).
    pub fn files(&self) -> BTreeMap<u64, Vec<u8>> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".file").and_then(|n| n.parse().ok()) {
                m.insert(n, fs::read(e.path()).unwrap());
            }
        }
        m
    }

    /// The contents received, in connection order (complete files only).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.files().into_values().collect()
    }

    /// Files received so far (names only: cheap enough to poll).
    pub fn count(&self) -> usize {
        fs::read_dir(&self.dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".file")
            })
            .count()
    }

    /// How many connections delivered exactly `content`.
    pub fn times_received(&self, content: &[u8]) -> usize {
        self.files()
            .values()
            .filter(|c| c.as_slice() == content)
            .count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
