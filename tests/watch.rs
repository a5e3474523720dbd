//! End-to-end tests of `accio watch`: the real binary, real spool directories and real
//! filesystem events, with `accio serve` (or a server written here, where the test needs
//! one that misbehaves) as the receiver.

mod watch_support;

use std::fs;

use watch_support::*;

#[test]
fn renamed_files_are_delivered_and_moved_to_done() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let cfg = write_config(
        &dirs,
        "a.toml",
        &config_text(&dirs, recv.port, &Opts::default()),
    );
    let svc = Service::start(&cfg);
    let contents: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("file {i}\n").repeat(i + 1).into_bytes())
        .collect();
    for (i, c) in contents.iter().enumerate() {
        dirs.drop_file(&format!("f{i}"), c);
    }
    wait_for("5 files in done", || names(&dirs.done).len() == 5);
    assert!(names(&dirs.spool).is_empty());
    for c in &contents {
        assert_eq!(recv.times_received(c), 1);
    }
    assert_eq!(recv.count(), 5);
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(&fs::read(dirs.done.join(format!("f{i}"))).unwrap(), c);
    }
    svc.wait_log_n("delivered", 5);
}
