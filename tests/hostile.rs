//! Issue 23: the parsers that meet outside bytes never panic, whatever they are given.
//! Property tests over real files and sockets: the `.reason` files `accio retry` reads
//! (written by the service, but in a directory others may have reached), the control
//! socket's requests (anyone who may connect) and its answers (`accio status` trusts no
//! number it is sent). The greeting's matcher (`src/protocol.rs`) and the configuration
//! loader (`tests/config.rs`) have theirs beside them.

mod support;

use std::io::{Read, Write};
use std::path::Path;

use accio::status::{DestinationView, FileInFlight, Snapshot, View, WaitingFile, WatchView, Why};
use proptest::prelude::*;
use support::{receiver::*, watch::*};

/// A configuration of two watches in `root` (spool/, spool2/; failed/, failed2/).
fn two_watches(root: &Path) -> accio::config::Config {
    for d in ["spool", "spool2", "done", "done2", "failed", "failed2"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let r = root.display();
    let text = format!(
        "[server]\nhost = \"h\"\nport = 1\n\
         [[watch]]\ndir = \"{r}/spool\"\ndone_dir = \"{r}/done\"\nfailed_dir = \"{r}/failed\"\n\
         [[watch]]\ndir = \"{r}/spool2\"\ndone_dir = \"{r}/done2\"\nfailed_dir = \"{r}/failed2\"\n"
    );
    accio::config::parse(text.as_bytes(), &root.join("accio.toml")).unwrap()
}

/// `.reason` contents: any bytes, or a `file:` line with any path (the part that is parsed),
/// or with a path into the other spool.
fn reason_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..120).prop_map(|p| {
            let mut v = b"error: x\nfile: ".to_vec();
            v.extend(p);
            v.push(b'\n');
            v
        }),
        // Made absolute under the test's root below.
        "[a-z./\\\\]{0,20}"
            .prop_map(|tail| format!("file: /spool2/{tail}\nother: line\n").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever a `.reason` file holds, `accio retry` lists its file, sending it back to a
    /// configured spool only (the one it came from, if the reason names one).
    #[test]
    fn any_reason_file_is_read_without_panic(text in reason_text()) {
        let root = tempfile::tempdir().unwrap();
        let config = two_watches(root.path());
        // The root's path is only known now: a third of the cases point into spool2.
        let text = if text.starts_with(b"file: /spool2/") {
            let mut t = format!("file: {}", root.path().display()).into_bytes();
            t.extend(&text[6..]);
            t
        } else {
            text
        };
        let failed = &config.watches[0].failed_dir;
        std::fs::write(failed.join("f"), b"given up").unwrap();
        std::fs::write(failed.join("f.reason"), &text).unwrap();
        let watches: Vec<_> = config.watches.iter().collect();
        let listed = accio::ops::retry::list(&watches).unwrap();
        prop_assert_eq!(listed.len(), 1);
        let f = &listed[0];
        prop_assert!(
            config.watches.iter().any(|w| w.dir == f.spool),
            "{} is no spool", f.spool.display()
        );
        // A name relative to that spool (`a/b/x` keeps its tree), never one that leaves it.
        prop_assert!(accio::files::check_rel(&f.name).is_ok(), "{:?}", f.name);
    }
}

/// Numbers as a peer might send them: ordinary, huge, negative, tiny, not finite.
fn num() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..1e6f64,
        Just(f64::MAX),
        Just(-f64::MAX),
        Just(1e19),
        Just(2.5e11),
        Just(-1.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::INFINITY),
        Just(f64::NAN),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0..100u64, Just(u64::MAX), Just(u64::MAX / 100 + 1)]
}

prop_compose! {
    fn view()(
        f in proptest::collection::vec(num(), 12),
        n in proptest::collection::vec(count(), 12),
        up in any::<bool>(),
        opt in any::<[bool; 6]>(),
    ) -> View {
        let o = |i: usize, x: f64| opt[i].then_some(x);
        View {
            pid: n[0] as u32,
            version: "v".into(),
            uptime_s: f[0],
            totals: Snapshot {
                watching: n[1],
                queued: n[2],
                in_flight: n[3],
                sent: n[4],
                failed: n[5],
                destinations_down: n[6],
            },
            destinations: vec![DestinationView {
                name: "h:1".into(),
                up,
                down_since_unix: o(0, f[1]),
                last_error: Some("e".into()),
                in_flight: n[7],
                queued: n[8],
                limit: n[9],
                cap: n[10],
                adaptive: opt[1],
                baseline_greeting_ms: o(2, f[2]),
                greeting_ms: o(3, f[3]),
                next_probe_in_s: o(4, f[4]),
            }],
            watches: vec![WatchView {
                dir: "/s".into(),
                destination: "h:1".into(),
                queued: n[11],
                oldest_waiting_age_s: o(5, f[5]),
                special_entries: n[1],
                ..WatchView::default()
            }],
            in_flight: vec![FileInFlight {
                path: "/s/f".into(),
                destination: "h:1".into(),
                bytes_sent: n[2],
                size: n[3],
                elapsed_s: f[6],
                attempt: n[4] as u32,
            }],
            waiting: vec![WaitingFile {
                path: "/s/w".into(),
                destination: "h:1".into(),
                age_s: f[7],
                why: Why::BackingOff { retry_in_s: f[8], attempts: n[5] as u32, error: "e".into() },
            }],
            ..View::default()
        }
    }
}

proptest! {
    /// `accio status` renders any numbers it is sent (a down time past year 9999, a NaN, a
    /// negative age) without panicking.
    #[test]
    fn any_view_renders(v in view()) {
        let text = accio::ops::status_text::render(&v);
        prop_assert!(text.starts_with("accio v"));
    }

    /// An answer with bytes changed: an error or a view, never a panic.
    #[test]
    fn any_answer_parses_or_is_refused(
        v in view(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let mut json = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
        for (i, b) in edits {
            let at = i.index(json.len());
            json[at] = b;
        }
        if let Ok(v) = serde_json::from_slice::<View>(&json) {
            let _ = accio::ops::status_text::render(&v);
        }
    }
}

/// Anyone who may connect to the control socket may send any bytes: each request gets one
/// answer (a view or an error document), and the service keeps answering.
#[test]
fn any_control_request_gets_an_answer() {
    use std::os::unix::net::UnixStream;
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let svc = Service::start(&config_file(&dirs, recv.port, &Opts::default()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let requests = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|t| [b"view".to_vec(), t].concat()),
        Just(vec![b'v'; 100_000]),
    ];
    runner
        .run(&requests, |req| {
            let mut s = UnixStream::connect(&dirs.control).unwrap();
            s.set_read_timeout(Some(support::wait::DEADLINE)).unwrap();
            // The service may close once it read its fill: a failed write is an answer too.
            let _ = s.write_all(&req);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if !answer.is_empty() {
                let v: serde_json::Value = serde_json::from_str(answer.trim())
                    .map_err(|e| TestCaseError::fail(format!("{e}: {answer}")))?;
                prop_assert!(
                    v.get("error").is_some() || v.get("pid").is_some(),
                    "{}",
                    answer
                );
            }
            Ok(())
        })
        .unwrap();
    // Still there, still answering.
    let v = svc.status();
    assert_eq!(v.watches.len(), 1);
}
