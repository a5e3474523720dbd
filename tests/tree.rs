//! End-to-end tests of `recursive = true` (issue #22): trees made while the service runs,
//! with the real binary, real directories, real inotify and `accio serve` as the receiver.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{receiver::*, wait::*, watch::*};

/// Settings of a tree test: the usual short ones, on_success as asked, and `extra` keys
/// appended to the watch (`recursive = true` always). `rescan`: the periodic walk; a test
/// of events sets it to an hour, so that nothing but the events and the walks they cause
/// can find its files.
fn tree_service(delete: bool, rescan: &'static str, extra: &str) -> (Dirs, Receiver, Service) {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts {
        delete,
        rescan,
        ..Opts::default()
    };
    let text = format!(
        "{}recursive = true\n{extra}",
        config_text(&dirs, recv.port, &o)
    );
    let svc = Service::start(&write_config(&dirs, "a.toml", &text));
    (dirs, recv, svc)
}

/// Every regular file under `dir`, by relative path, sorted (hidden ones too).
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(base, &e.path(), out);
            } else if t.is_file() {
                let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Subdirectories left under `dir` (all levels).
fn dirs_under(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| 1 + dirs_under(&e.path()))
        .sum()
}

/// The contents written by [`make_tree`], by relative path.
fn tree_contents() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for rel in [
        "top.csv",
        "a/one.csv",
        "a/b/two.csv",
        "a/b/c/three.csv",
        "a/b/c/copied.bin",
        "m/n/o/made-at-once.csv",
        "m/n/o/copied-at-once.bin",
        "moved/x/y/in.csv",
    ] {
        v.push((
            rel.to_string(),
            format!("content of {rel}\n").repeat(50).into_bytes(),
        ));
    }
    v
}

/// Makes the acceptance tree in `spool` while the service runs: three levels made and
/// filled level by level (written the documented way, and by plain copy); a tree made and
/// filled at once (`mkdir -p m/n/o && cp … m/n/o/`); and a tree made elsewhere and renamed
/// in whole.
fn make_tree(spool: &Path, scratch: &Path) {
    let c: std::collections::HashMap<String, Vec<u8>> = tree_contents().into_iter().collect();
    let copy = |rel: &str| {
        let src = scratch.join(rel.replace('/', "_"));
        fs::write(&src, &c[rel]).unwrap();
        fs::copy(&src, spool.join(rel)).unwrap();
    };
    let documented = |rel: &str| {
        let p = spool.join(rel);
        drop_file(
            p.parent().unwrap(),
            p.file_name().unwrap().to_str().unwrap(),
            &c[rel],
        );
    };
    documented("top.csv");
    fs::create_dir(spool.join("a")).unwrap();
    documented("a/one.csv");
    fs::create_dir(spool.join("a/b")).unwrap();
    documented("a/b/two.csv");
    fs::create_dir(spool.join("a/b/c")).unwrap();
    documented("a/b/c/three.csv");
    copy("a/b/c/copied.bin");
    // Made and filled at once: no watch can be on m/n/o before these land.
    fs::create_dir_all(spool.join("m/n/o")).unwrap();
    documented("m/n/o/made-at-once.csv");
    copy("m/n/o/copied-at-once.bin");
    // Made elsewhere (same filesystem), renamed in whole.
    let elsewhere = scratch.join("moved");
    fs::create_dir_all(elsewhere.join("x/y")).unwrap();
    fs::write(elsewhere.join("x/y/in.csv"), &c["moved/x/y/in.csv"]).unwrap();
    fs::rename(&elsewhere, spool.join("moved")).unwrap();
}

fn scratch(dirs: &Dirs) -> PathBuf {
    let s = dirs.root.path().join("scratch");
    fs::create_dir_all(&s).unwrap();
    s
}

/// The issue's acceptance: a tree created while the service runs is delivered entirely,
/// each file once, found by the events and the walks they cause alone (no periodic rescan
/// within the test).
#[test]
fn a_tree_made_while_running_is_delivered() {
    let (dirs, recv, _svc) = tree_service(true, "1h", "");
    make_tree_and_see_it_delivered(&dirs, &recv);
}

/// Makes the acceptance tree ([`make_tree`]) and waits until each of its files was
/// received exactly once and the spool holds no file.
fn make_tree_and_see_it_delivered(dirs: &Dirs, recv: &Receiver) {
    make_tree(&dirs.spool, &scratch(dirs));
    let want = tree_contents();
    wait_for("every file of the tree delivered", || {
        recv.count() >= want.len()
    });
    for (rel, c) in &want {
        assert_eq!(recv.times_received(c), 1, "{rel}");
    }
    assert_eq!(recv.count(), want.len());
    wait_for("the spool emptied", || files_under(&dirs.spool).is_empty());
}

/// With on_success = "delete", subdirectories left empty are removed by the walks once
/// they have been empty for `settle`; the spool itself never.
#[test]
fn emptied_subdirectories_are_pruned() {
    let (dirs, recv, _svc) = tree_service(true, "300ms", "");
    make_tree_and_see_it_delivered(&dirs, &recv);
    wait_for("its subdirectories pruned", || dirs_under(&dirs.spool) == 0);
    assert!(dirs.spool.is_dir(), "the spool itself was removed");
}

/// With on_success = "move", the tree is mirrored in done_dir.
#[test]
fn a_tree_made_while_running_is_mirrored_in_done() {
    let (dirs, recv, _svc) = tree_service(false, "1h", "");
    make_tree(&dirs.spool, &scratch(&dirs));
    let want = tree_contents();
    wait_for("every file of the tree in done", || {
        files_under(&dirs.done).len() == want.len()
    });
    for (rel, c) in &want {
        assert_eq!(&fs::read(dirs.done.join(rel)).unwrap(), c, "{rel}");
        assert_eq!(recv.times_received(c), 1, "{rel}");
    }
    assert!(files_under(&dirs.spool).is_empty());
}

/// Hidden and `*.part` directories are skipped with everything in them; a symlink to a
/// directory is never followed; files deeper than `max_depth` are not taken; an include
/// glob with `/` matches the relative path.
#[test]
fn what_a_tree_walk_does_not_take() {
    let (dirs, recv, svc) =
        tree_service(true, "300ms", "max_depth = 2\ninclude = [\"**/*.csv\"]\n");
    let outside = dirs.root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret.csv"), b"outside the spool").unwrap();
    std::os::unix::fs::symlink(&outside, dirs.spool.join("link")).unwrap();
    for d in [".hidden", "up.part", "a/b/c"] {
        fs::create_dir_all(dirs.spool.join(d)).unwrap();
    }
    drop_file(&dirs.spool.join(".hidden"), "h.csv", b"hidden dir");
    drop_file(&dirs.spool.join("up.part"), "p.csv", b"part dir");
    drop_file(&dirs.spool.join("a/b/c"), "deep.csv", b"too deep");
    drop_file(&dirs.spool.join("a/b"), "ok.png", b"not a csv");
    // The marker: sent, and then two more walks of the tree.
    drop_file(&dirs.spool.join("a/b"), "ok.csv", b"deep enough");
    wait_for("a/b/ok.csv delivered", || recv.count() == 1);
    assert_eq!(recv.times_received(b"deep enough"), 1);
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    assert_eq!(recv.count(), 1, "{:?}", recv.received());
    for f in [
        ".hidden/h.csv",
        "up.part/p.csv",
        "a/b/c/deep.csv",
        "a/b/ok.png",
    ] {
        assert!(dirs.spool.join(f).exists(), "{f}");
    }
    assert!(outside.join("secret.csv").exists());
}

/// Directories renamed within the tree, removed and made again, and renamed away: what
/// is in them afterwards is found (the new directory is watched), and a directory renamed
/// away is not sent from.
#[test]
fn directories_renamed_and_removed_are_followed() {
    let (dirs, recv, svc) = tree_service(true, "300ms", "");
    let s = &dirs.spool;
    fs::create_dir_all(s.join("a/sub")).unwrap();
    fs::rename(s.join("a"), s.join("b")).unwrap();
    drop_file(&s.join("b/sub"), "after-rename", b"after rename");
    wait_for("b/sub/after-rename delivered", || {
        recv.times_received(b"after rename") == 1
    });
    fs::remove_dir_all(s.join("b")).unwrap();
    fs::create_dir(s.join("b")).unwrap();
    drop_file(&s.join("b"), "after-remake", b"after remake");
    wait_for("b/after-remake delivered", || {
        recv.times_received(b"after remake") == 1
    });
    // Renamed away before anything in it was ready (an open writer keeps it).
    fs::create_dir(s.join("leaving")).unwrap();
    let writer = fs::File::create(s.join("leaving/held")).unwrap();
    let away = dirs.root.path().join("away");
    fs::rename(s.join("leaving"), &away).unwrap();
    drop(writer);
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    drop_file(s, "marker", b"marker");
    wait_for("marker delivered", || recv.times_received(b"marker") == 1);
    assert!(away.join("held").exists());
    assert_eq!(recv.count(), 3, "{:?}", recv.received());
}

/// `accio status` and the log name a file of a tree by its path in the spool.
#[test]
fn status_and_log_name_the_relative_path() {
    let (dirs, _recv, svc) = tree_service(true, "300ms", "");
    fs::create_dir_all(dirs.spool.join("x/y")).unwrap();
    drop_file(&dirs.spool.join("x/y"), "named.csv", b"named");
    let want = format!("{}", dirs.spool.join("x/y/named.csv").display());
    wait_for("the delivery logged with its path", || {
        svc.log()
            .lines()
            .any(|l| l.contains("delivered") && l.contains(&want))
    });
}

/// A config of a `recursive = true` watch that deletes what it sent and walks its tree every
/// 300 ms.
fn deleting_tree_config(dirs: &Dirs, port: u16) -> PathBuf {
    let o = Opts {
        delete: true,
        rescan: "300ms",
        ..Opts::default()
    };
    let text = format!("{}recursive = true\n", config_text(dirs, port, &o));
    write_config(dirs, "a.toml", &text)
}

/// A filesystem mounted inside the spool's tree is not entered: its files are never sent,
/// while the directories around it are. The mount is made in a mount namespace of the
/// service's own (`unshare --mount`), so nothing outside the test sees it; the file in it
/// is written there before the service starts.
#[test]
#[ignore = "needs root: cargo test --test tree -- --ignored as_root_"]
fn as_root_a_mount_point_in_the_tree_is_not_crossed() {
    assert!(unsafe { libc::getuid() } == 0, "needs root");
    // Start under a script that mounts a tmpfs on spool/mnt and writes a file into it.
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    fs::create_dir(dirs.spool.join("mnt")).unwrap();
    fs::create_dir(dirs.spool.join("plain")).unwrap();
    let cfg = deleting_tree_config(&dirs, recv.port);
    let m = dirs.spool.join("mnt");
    let script = format!(
        "mount -t tmpfs accio-test {m:?} && printf 'in the mount' > {f:?} && exec \"$0\" \"$@\"",
        f = m.join("mounted.csv"),
    );
    let svc = Service::start_wrapped(
        &cfg,
        &[],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    );
    drop_file(&dirs.spool.join("plain"), "marker.csv", b"beside the mount");
    wait_for("plain/marker.csv delivered", || {
        recv.times_received(b"beside the mount") == 1
    });
    // Two more walks of the whole tree after the marker: the mount was passed by each.
    let listed = svc.log_count("listed");
    svc.wait_log_n("listed", listed + 2);
    assert_eq!(
        recv.times_received(b"in the mount"),
        0,
        "{:?}",
        recv.received()
    );
    assert_eq!(recv.count(), 1, "{:?}", recv.received());
}

/// The kernel's inotify watch limit, reached for real: in a user namespace of its own the
/// service may place 3 watches (`/proc/sys/user/max_inotify_watches`, per namespace), and
/// its tree has 8 directories. It says so once, with the fix, and the files in the
/// directories it could not watch are still delivered, by the rescans.
#[test]
#[ignore = "needs root (user namespaces): cargo test --test tree -- --ignored as_root_"]
fn as_root_the_inotify_watch_limit_is_reported_and_rescans_cover_the_rest() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    for i in 0..8 {
        fs::create_dir(dirs.spool.join(format!("d{i}"))).unwrap();
    }
    let cfg = deleting_tree_config(&dirs, recv.port);
    let script = "echo 3 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"";
    let svc = Service::start_wrapped(&cfg, &[], &["unshare", "-U", "-r", "sh", "-c", script]);
    svc.wait_log("inotify watch limit reached");
    for i in 0..8 {
        drop_file(
            &dirs.spool.join(format!("d{i}")),
            &format!("f{i}.csv"),
            format!("file {i}").as_bytes(),
        );
    }
    wait_for("all 8 files delivered", || recv.count() == 8);
    for i in 0..8 {
        assert_eq!(recv.times_received(format!("file {i}").as_bytes()), 1);
    }
    let line = svc
        .log()
        .lines()
        .find(|l| l.contains("inotify watch limit reached"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("sysctl fs.inotify.max_user_watches="),
        "{line}"
    );
    assert_eq!(svc.log_count("inotify watch limit reached"), 1);
}
