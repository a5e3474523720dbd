//! Issue 23 point 3 and issue 22 point 3, end to end: the service acts in its directories
//! through descriptors opened once (a parent renamed afterwards, another directory put in
//! its place, redirects nothing), and `accio retry` restores a tree in failed_dir into the
//! same tree in the spool.

mod support;

use std::fs;

use support::{receiver::*, wait::*, watch::*};

/// Directories as [`Dirs::new`] makes them, but done and failed in a subdirectory `base` of
/// the root, which a test can rename away.
fn dirs_under_base() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let mk = |n: &str| {
        let p = root.path().join(n);
        fs::create_dir_all(&p).unwrap();
        p
    };
    Dirs {
        spool: mk("spool"),
        done: mk("base/done"),
        failed: mk("base/failed"),
        recv: mk("recv"),
        control: mk("run").join("control.sock"),
        root,
    }
}

#[test]
fn a_parent_renamed_and_replaced_redirects_no_delivery() {
    let dirs = dirs_under_base();
    let recv = Receiver::start(&dirs.recv);
    let svc = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    dirs.drop_file("first", b"first");
    wait_for("first in done", || dirs.done.join("first").exists());

    // The redirect attempt: the parent of done_dir (and failed_dir) renamed away, and a
    // directory of the old name with its own done and failed put in its place.
    let base = dirs.root.path().join("base");
    let moved = dirs.root.path().join("moved");
    fs::rename(&base, &moved).unwrap();
    for d in ["done", "failed"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    // The next delivery goes into the real done_dir, through its descriptor: not into the
    // planted one the configured path names now.
    dirs.drop_file("second", b"second");
    if !wait_until(DEADLINE, || moved.join("done/second").exists()) {
        panic!(
            "second not delivered into the real done_dir; log:\n{}",
            fs::read_to_string(&svc.log).unwrap_or_default()
        );
    }
    assert_eq!(recv.times_received(b"second"), 1);
    assert!(
        names(&base.join("done")).is_empty(),
        "{:?}",
        names(&base.join("done"))
    );
    assert!(names(&dirs.spool).is_empty());
}

#[test]
fn retry_restores_a_tree_in_failed_dir_into_the_spool() {
    let dirs = Dirs::new();
    let config = write_config(&dirs, "a.toml", &config_text(&dirs, 5000, &Opts::default()));
    // Given up in a subdirectory, with its reason beside it naming where it came from.
    fs::create_dir_all(dirs.failed.join("a/b")).unwrap();
    fs::write(dirs.failed.join("a/b/x.jpg"), b"x").unwrap();
    fs::write(
        dirs.failed.join("a/b/x.jpg.reason"),
        format!(
            "file: {}\nattempts: 3\nlast error: reset\n",
            dirs.spool.join("a/b/x.jpg").display()
        ),
    )
    .unwrap();
    // Without a reason: back under the same relative name.
    fs::create_dir_all(dirs.failed.join("c")).unwrap();
    fs::write(dirs.failed.join("c/y"), b"y").unwrap();
    // A symbolic link in failed_dir's tree is never followed.
    let elsewhere = dirs.root.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("z"), b"z").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dirs.failed.join("l")).unwrap();
    // The spool already has an `a/b/x.jpg`: the one put back takes a free name beside it.
    fs::create_dir_all(dirs.spool.join("a/b")).unwrap();
    fs::write(dirs.spool.join("a/b/x.jpg"), b"newer").unwrap();

    let out = accio(&["retry", "--list"], &config);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("x.jpg") && list.contains("c/y"), "{list}");
    assert!(
        !list.contains("elsewhere") && !list.contains("/l/"),
        "{list}"
    );

    let out = accio(&["retry"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.ends_with("2 files put back into the spool\n"),
        "{text}"
    );
    assert_eq!(fs::read(dirs.spool.join("a/b/x.1.jpg")).unwrap(), b"x");
    assert_eq!(fs::read(dirs.spool.join("a/b/x.jpg")).unwrap(), b"newer");
    // `c` was not in the spool: made again.
    assert_eq!(fs::read(dirs.spool.join("c/y")).unwrap(), b"y");
    // The reason went with its file; the link and what it points to stayed.
    assert!(!dirs.failed.join("a/b/x.jpg.reason").exists());
    assert!(!dirs.failed.join("a/b/x.jpg").exists());
    assert_eq!(fs::read(elsewhere.join("z")).unwrap(), b"z");
    assert!(dirs.failed.join("l").exists());
}
