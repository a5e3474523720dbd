//! Privileged fixtures: network namespaces with iptables rules, tmpfs and read-only mounts.
//! Each is a guard that undoes itself when dropped, also when the scenario panics. Every
//! constructor returns `Err(reason)` when the machine cannot do it, and the scenario then
//! prints the reason and skips that part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// True if `prog` is found on PATH (or in the sbin directories root has).
pub fn have(prog: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(prog).is_file());
    found
}

/// Runs a command; `Err` with its stderr if it fails.
pub fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair on a /30 that exists only inside them:
/// `a` (the service's side) holds `ADDR_A`, `b` (the receiver's side) holds `ADDR_B`. No
/// address is added to the root namespace; all traffic stays between the two.
pub struct NetPair {
    pub a: String,
    pub b: String,
}

pub const ADDR_A: &str = "10.231.77.1";
pub const ADDR_B: &str = "10.231.77.2";

impl NetPair {
    pub fn create() -> Result<NetPair, String> {
        if !is_root() {
            return Err("not root".into());
        }
        for p in ["ip", "iptables"] {
            if !have(p) {
                return Err(format!(
                    "`{p}` not installed (apt-get install iproute2 iptables)"
                ));
            }
        }
        let tag = std::process::id();
        let pair = NetPair {
            a: format!("accf{tag}a"),
            b: format!("accf{tag}b"),
        };
        // From here on, Drop removes whatever was made.
        run("ip", &["netns", "add", &pair.a])?;
        run("ip", &["netns", "add", &pair.b])?;
        let (va, vb) = (format!("acf{tag}a"), format!("acf{tag}b"));
        run(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        )
        .inspect_err(|_| {
            let _ = run("ip", &["link", "del", &va]);
        })?;
        run("ip", &["link", "set", &va, "netns", &pair.a])?;
        run("ip", &["link", "set", &vb, "netns", &pair.b])?;
        run(
            "ip",
            &[
                "-n",
                &pair.a,
                "addr",
                "add",
                &format!("{ADDR_A}/30"),
                "dev",
                &va,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &pair.b,
                "addr",
                "add",
                &format!("{ADDR_B}/30"),
                "dev",
                &vb,
            ],
        )?;
        for (ns, v) in [(&pair.a, &va), (&pair.b, &vb)] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", v, "up"])?;
        }
        // iptables must work inside the namespace (nf_tables may be missing in a container).
        pair.iptables_b(&["-L", "INPUT", "-n"])?;
        Ok(pair)
    }

    /// `iptables ARGS` inside the receiver's namespace.
    pub fn iptables_b(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["netns", "exec", &self.b, "iptables", "-w"];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `iptables ARGS` inside the service's namespace.
    pub fn iptables_a(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["netns", "exec", &self.a, "iptables", "-w"];
        a.extend_from_slice(args);
        run("ip", &a)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        let _ = run("ip", &["netns", "del", &self.a]);
        let _ = run("ip", &["netns", "del", &self.b]);
    }
}

/// A tmpfs mounted on a directory; unmounted (lazily, so a busy file cannot keep it) when
/// dropped.
pub struct Mount {
    pub path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (mount's syntax, e.g. `64k`) on `path`.
    pub fn tmpfs(path: &Path, size: &str) -> Result<Mount, String> {
        if !is_root() {
            return Err("not root: cannot mount".into());
        }
        let p = path.to_str().unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                // Root's, not writable by others: the service's strict_modes refuses a
                // done_dir writable by everyone.
                &format!("size={size},mode=0755"),
                "tmpfs",
                p,
            ],
        )?;
        Ok(Mount {
            path: path.to_path_buf(),
        })
    }

    /// `mount -o remount,OPTS`.
    pub fn remount(&self, opts: &str) -> Result<(), String> {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,{opts}"),
                self.path.to_str().unwrap(),
            ],
        )
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.path.to_str().unwrap()]);
    }
}
