//! End-to-end tests of what operators use: `/metrics` and `/health`, `accio status` over
//! the control socket, and `accio retry`, against the real binary, real sockets and files.
//!
//! Two tests need Debian's `prometheus` package (promtool and the server) and are ignored
//! without it; `.ci/run` installs it and runs them:
//! `cargo test --test ops -- --ignored prom`.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accio::status::Why;
use support::{net::*, receiver::*, wait::*, watch::*, BIN};

/// A config for `dirs` (its control socket is `dirs.control`) and, with `metrics`, a
/// metrics listener on that port.
fn ops_config(dirs: &Dirs, port: u16, o: &Opts, metrics: Option<u16>) -> PathBuf {
    let mut text = config_text(dirs, port, o);
    if let Some(m) = metrics {
        text.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{m}\"\n"));
    }
    write_config(dirs, "accio.toml", &text)
}

/// The service over `dirs` sending to `port`, with a metrics listener on a free port, once
/// that listens. Returns its config, the service and the metrics port.
fn start_with_metrics(dirs: &Dirs, port: u16, o: &Opts) -> (PathBuf, Service, u16) {
    let mport = free_port();
    let config = ops_config(dirs, port, o, Some(mport));
    let svc = Service::start(&config);
    wait_for("the metrics listener", || listening(mport));
    (config, svc, mport)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `accio ARGS --config CONFIG`, which must succeed; its stdout.
#[track_caller]
fn ok(args: &[&str], config: &Path) -> String {
    let out = accio(args, config);
    assert!(out.status.success(), "accio {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// `accio ARGS --config CONFIG`, which must fail with `code` and an `ERROR:` line that
/// contains `says`; its stderr.
#[track_caller]
fn fails(args: &[&str], config: &Path, code: i32, says: &str) -> String {
    let out = accio(args, config);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "accio {args:?}: {err}");
    assert!(err.starts_with("ERROR: ") && err.contains(says), "{err}");
    err
}

/// One HTTP/1.1 request; returns (status code, headers, body).
fn http(port: u16, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// The value of the sample `name{labels}` in a text exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_count_what_was_delivered() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let (_, svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    let watch = format!("{{watch=\"{}\"}}", dirs.spool.display());
    let dest = format!("destination=\"127.0.0.1:{}\"", recv.port);

    let (code, head, body) = get(mport, "/metrics");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE accio_files_sent_total counter"),
        "{body}"
    );
    // Every watch's series exist from the start, at 0.
    assert_eq!(
        sample(&body, &format!("accio_files_sent_total{watch}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            &format!("accio_upload_attempts_total{{{dest},result=\"unreachable\"}}")
        ),
        Some(0.0)
    );

    // In two rounds: the counters follow each delivery, during the run.
    let mut bytes = 0;
    for (round, n) in [(0, 3), (1, 2)] {
        for i in 0..n {
            let content = vec![b'x'; 100 * (i + 1) + round];
            bytes += content.len();
            dirs.drop_file(&format!("r{round}-{i}"), &content);
        }
        let want = if round == 0 { 3 } else { 5 };
        wait_for("all delivered and moved", || {
            names(&dirs.done).len() == want
        });
        assert_eq!(recv.count(), want);
        let (_, _, body) = get(mport, "/metrics");
        let v = |s: &str| sample(&body, s).unwrap_or_else(|| panic!("no {s} in\n{body}"));
        assert_eq!(v(&format!("accio_files_sent_total{watch}")), want as f64);
        assert_eq!(v(&format!("accio_bytes_sent_total{watch}")), bytes as f64);
        assert_eq!(
            v(&format!(
                "accio_upload_attempts_total{{{dest},result=\"ok\"}}"
            )),
            want as f64
        );
        assert_eq!(
            v(&format!("accio_delivery_latency_seconds_count{watch}")),
            want as f64
        );
        assert_eq!(
            v(&format!(
                "accio_upload_duration_seconds_count{{{dest},result=\"ok\"}}"
            )),
            want as f64
        );
        assert!(v(&format!("accio_last_success_timestamp_seconds{watch}")) > 1.6e9);
        assert_eq!(v(&format!("accio_files_failed_total{watch}")), 0.0);
    }

    // Prometheus asks for OpenMetrics and gets it.
    let (code, head, body) = http(
        mport,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE accio_files_sent counter"), "{body}");

    // A health answer, and nothing else.
    let (code, _, body) = get(mport, "/health");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(get(mport, "/").0, 404);
    assert_eq!(get(mport, "/metrics/../etc/passwd").0, 404);
    let (code, head, _) = http(
        mport,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(code, 405, "{head}");
    // An oversized request head is refused, not buffered.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(big.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(svc);
}

#[test]
fn metrics_are_off_unless_configured() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let config = ops_config(&dirs, recv.port, &Opts::default(), None);
    let text = ok(&["check-config"], &config);
    assert!(text.contains("[metrics]\n# listen: not set"), "{text}");
    let svc = Service::start(&config);
    assert!(!svc.log().contains("serving metrics"), "{}", svc.log());
}

#[test]
fn a_bad_metrics_address_is_refused_naming_the_key() {
    let dirs = Dirs::new();
    let mut text = config_text(&dirs, 5000, &Opts::default());
    text.push_str("\n[metrics]\nlisten = \"localhost\"\n");
    let config = write_config(&dirs, "bad.toml", &text);
    fails(&["check-config"], &config, 78, "metrics.listen");
}

/// `promtool check metrics` (the format's own linter) on a scrape of a service that
/// delivered, failed and retried files.
#[test]
#[ignore = "needs promtool (Debian package prometheus); .ci/run installs it and runs `cargo test --test ops -- --ignored prom`"]
fn promtool_accepts_the_exposition() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let (_, _svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    dirs.drop_file("a", b"hello");
    wait_for("delivered", || names(&dirs.done).len() == 1);
    let (_, _, body) = get(mport, "/metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        stdout(&out),
        stderr(&out)
    );
}

/// A real Prometheus server (loopback, temporary storage, 1 s scrapes) scrapes the service;
/// the number of files sent is read back through Prometheus's own HTTP API.
#[test]
#[ignore = "needs prometheus (Debian package prometheus); .ci/run installs it and runs `cargo test --test ops -- --ignored prom`"]
fn prometheus_scrapes_the_service() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    // A file given up on earlier: the shipped rules must make Prometheus fire for it.
    given_up(&dirs, "old", &dirs.spool.join("old"));
    let (_, _svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    for i in 0..3 {
        dirs.drop_file(&format!("f{i}"), b"data");
    }
    wait_for("delivered", || names(&dirs.done).len() == 3);

    let prom_dir = dirs.root.path().join("prometheus");
    fs::create_dir(&prom_dir).unwrap();
    let prom_conf = prom_dir.join("prometheus.yml");
    fs::write(
        &prom_conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: accio\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n",
            rules = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs/accio-alerts.yml")
                .display()
        ),
    )
    .unwrap();
    let pport = free_port();
    /// Kills Prometheus however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(prom_dir.join("log")).unwrap())
            .spawn()
            .expect("prometheus"),
    );
    let query = format!(
        "/api/v1/query?query=accio_files_sent_total%7Bwatch%3D%22{}%22%7D",
        dirs.spool.display().to_string().replace('/', "%2F")
    );
    let mut last = String::new();
    wait_for_within(
        "Prometheus to report 3 files sent",
        Duration::from_secs(60),
        &mut || {
            if !listening(pport) {
                return false;
            }
            let (code, _, body) = get(pport, &query);
            last = body.clone();
            if code != 200 {
                return false;
            }
            let v: serde_json::Value = match serde_json::from_str(body.trim()) {
                Ok(v) => v,
                Err(_) => return false,
            };
            v["data"]["result"][0]["value"][1].as_str() == Some("3")
        },
    );
    assert!(last.contains("\"status\":\"success\""), "{last}");

    // The shipped rules, evaluated by Prometheus on what it scraped: the file in
    // failed_dir fires AccioFilesGivenUp (no `for:`), labelled with its watch.
    wait_for_within(
        "Prometheus to fire AccioFilesGivenUp",
        Duration::from_secs(60),
        &mut || {
            let (code, _, body) = get(pport, "/api/v1/alerts");
            last = body.clone();
            let v: serde_json::Value = match serde_json::from_str(body.trim()) {
                Ok(v) if code == 200 => v,
                _ => return false,
            };
            v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "AccioFilesGivenUp"
                        && x["state"] == "firing"
                        && x["labels"]["watch"] == dirs.spool.display().to_string().as_str()
                })
            })
        },
    );
    // Nothing else fires for a healthy service that just delivered.
    let v: serde_json::Value = serde_json::from_str(last.trim()).unwrap();
    let firing: Vec<&serde_json::Value> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["state"] == "firing")
        .map(|x| &x["labels"]["alertname"])
        .collect();
    assert_eq!(firing, ["AccioFilesGivenUp"], "{last}");
}

#[test]
fn status_of_a_healthy_service() {
    let (dirs, _recv, svc) = running(&Opts::default());
    let config = svc.config();
    dirs.drop_file("one", b"1");
    wait_for("delivered", || names(&dirs.done).len() == 1);

    let mode = fs::metadata(&dirs.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only control socket");

    // The counter is updated once the move is done; poll the answer, not a sleep.
    svc.wait_status("1 sent", |v| v.totals.sent == 1);
    let text = ok(&["status"], config);
    assert!(
        text.starts_with(&format!(
            "accio {} (pid {}), up ",
            env!("CARGO_PKG_VERSION"),
            svc.pid()
        )),
        "{text}"
    );
    assert!(
        text.contains("watching 1 dirs, 0 in flight, 0 queued, 1 sent, 0 failed"),
        "{text}"
    );
    assert!(text.contains("\nin flight:\n  none\n"), "{text}");

    // The document itself, key by key, as scripts read it.
    let v: serde_json::Value =
        serde_json::from_str(ok(&["status", "--json"], config).trim()).unwrap();
    assert_eq!(v["pid"], svc.pid());
    assert_eq!(v["totals"]["sent"], 1);
    assert_eq!(v["totals"]["watching"], 1);
    assert!(v["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(v["waiting"].as_array().unwrap().is_empty());
}

#[test]
fn status_when_the_service_is_not_running() {
    let dirs = Dirs::new();
    let config = ops_config(&dirs, 5000, &Opts::default(), None);
    let err = fails(&["status"], &config, 3, "not running");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&dirs.control.display().to_string()), "{err}");
    assert!(stdout(&accio(&["status"], &config)).is_empty());

    // A socket left by a killed service is the same: not running. The next service
    // replaces it and answers.
    let recv = Receiver::start(&dirs.recv);
    let config = ops_config(&dirs, recv.port, &Opts::default(), None);
    let mut svc = Service::start(&config);
    svc.kill9();
    assert!(dirs.control.exists(), "kill -9 leaves the socket");
    fails(&["status"], &config, 3, "not running");
    let mut svc = Service::start(&config);
    assert_eq!(svc.status().pid, svc.pid() as u32);
    // A clean stop removes it.
    svc.signal(libc::SIGTERM);
    assert!(svc.wait_exit(DEADLINE).success());
    assert!(!dirs.control.exists());
}

#[test]
fn a_second_service_does_not_take_over_a_live_control_socket() {
    let (dirs, recv, first) = running(&Opts::default());
    // A second service on another spool, same socket.
    let mut other = Dirs::new();
    other.control = dirs.control.clone();
    let second = Service::start(&ops_config(&other, recv.port, &Opts::default(), None));
    second.wait_log("no control socket");
    assert_eq!(first.status().pid, first.pid() as u32);
}

/// A destination that refuses connections is shown down, since when, with its error, and
/// its file waits because of it.
#[test]
fn status_shows_a_down_destination() {
    let dirs = Dirs::new();
    let port = free_port();
    let config = ops_config(&dirs, port, &Opts::default(), None);
    let svc = Service::start(&config);
    dirs.drop_file("waits", b"w");
    let v = svc.wait_status("the destination down", destination_down);
    let d = &v.destinations[0];
    assert_eq!(d.name, format!("127.0.0.1:{port}"));
    assert!(d.down_since_unix.is_some(), "{v:#?}");
    assert!(
        d.last_error.as_ref().is_some_and(|e| !e.is_empty()),
        "{v:#?}"
    );
    let w = v
        .waiting
        .first()
        .unwrap_or_else(|| panic!("nothing waits: {v:#?}"));
    assert!(w.path.ends_with("waits"), "{v:#?}");
    assert_eq!(w.why, Why::DestinationDown, "{v:#?}");
    let text = ok(&["status"], &config);
    assert!(
        text.contains(&format!("127.0.0.1:{port}: DOWN since ")),
        "{text}"
    );
    assert!(text.contains("destination down"), "{text}");
}

/// A file held open for writing in the spool waits for its writer.
#[test]
fn status_shows_a_file_with_an_open_writer() {
    let (dirs, _recv, svc) = running(&Opts::default());
    let mut writer = fs::File::create(dirs.spool.join("growing")).unwrap();
    writer.write_all(b"part one").unwrap();
    svc.wait_status("the file waiting for its writer", |v| {
        v.waiting.iter().any(|f| {
            f.path.ends_with("growing") && matches!(f.why, Why::WriterOpen | Why::WriterUnknown)
        })
    });
    let text = ok(&["status"], svc.config());
    assert!(text.contains("growing"), "{text}");
    drop(writer);
    wait_for("sent once closed", || names(&dirs.done) == ["growing"]);
}

/// A server that greets and then resets every connection while `fail` is set, and is a
/// correct Accio server (greet, read to the end, close) otherwise.
struct Flaky {
    port: u16,
    fail: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

impl Flaky {
    fn start() -> Flaky {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fail = Arc::new(AtomicBool::new(true));
        let received = Arc::new(AtomicUsize::new(0));
        let (f, r) = (fail.clone(), received.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let (f, r) = (f.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = s.write_all(b"accio\r\n");
                    if f.load(Ordering::SeqCst) {
                        // Past the greeting (a byte of the body came), reset: a failure of
                        // the file, not of the destination. Reset at once, the greeting
                        // could be lost with it and the destination taken for down.
                        let _ = s.read(&mut [0u8; 1]);
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).is_ok() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Flaky {
            port,
            fail,
            received,
        }
    }
}

fn given_up(dirs: &Dirs, name: &str, from: &Path) {
    fs::write(dirs.failed.join(name), name.as_bytes()).unwrap();
    fs::write(
        dirs.failed.join(format!("{name}.reason")),
        format!(
            "file: {}\nattempts: 10\nlast error: reset\ntime: 2026-01-01T00:00:00Z\n",
            from.display()
        ),
    )
    .unwrap();
}

#[test]
fn retry_puts_files_back_without_the_service() {
    let dirs = Dirs::new();
    let config = ops_config(&dirs, 5000, &Opts::default(), None);

    // Nothing there: said so, success.
    let text = ok(&["retry"], &config);
    assert!(text.starts_with("nothing to retry in "), "{text}");

    given_up(&dirs, "a.csv", &dirs.spool.join("a.csv"));
    // Given up as `b.1.csv` (a `b.csv` was in failed_dir): goes back as `b.csv`.
    given_up(&dirs, "b.1.csv", &dirs.spool.join("b.csv"));
    // No reason file (writing it had failed): goes back under its own name.
    fs::write(dirs.failed.join("plain"), b"plain").unwrap();
    // Left alone: a reason without its file, and our hidden temporaries.
    fs::write(dirs.failed.join("gone.reason"), b"file: /x/gone\n").unwrap();
    fs::write(dirs.failed.join(".accio-tmp.x"), b"t").unwrap();
    // Collision: the spool has a new `a.csv`; the old one becomes `a.1.csv`.
    fs::write(dirs.spool.join("a.csv"), b"newer").unwrap();

    // Only the names given.
    assert_eq!(
        ok(&["retry", "plain"], &config),
        format!(
            "{} → {}\n1 file put back into the spool\n",
            dirs.failed.join("plain").display(),
            dirs.spool.join("plain").display()
        )
    );

    // Everything else.
    let text = ok(&["retry"], &config);
    assert!(
        text.contains(&format!(
            "{} → {}\n",
            dirs.failed.join("a.csv").display(),
            dirs.spool.join("a.1.csv").display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} → {}\n",
            dirs.failed.join("b.1.csv").display(),
            dirs.spool.join("b.csv").display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("2 files put back into the spool\n"),
        "{text}"
    );
    assert_eq!(names(&dirs.spool), ["a.1.csv", "a.csv", "b.csv", "plain"]);
    assert_eq!(fs::read(dirs.spool.join("a.csv")).unwrap(), b"newer");
    assert_eq!(fs::read(dirs.spool.join("a.1.csv")).unwrap(), b"a.csv");
    assert_eq!(fs::read(dirs.spool.join("b.csv")).unwrap(), b"b.1.csv");
    // The reasons went with their files; the rest stayed.
    assert_eq!(names(&dirs.failed), ["gone.reason"]);
    assert!(dirs.failed.join(".accio-tmp.x").exists());

    // A name that is not there: an error naming it, non-zero.
    let err = fails(&["retry", "nope"], &config, 1, "no such given-up file in ");
    assert!(err.starts_with("ERROR: nope: "), "{err}");
    // --watch must name a watch.
    fails(
        &["retry", "--watch", "/nowhere"],
        &config,
        2,
        "not a spool directory",
    );
    assert_eq!(accio(&["retry", "--watch"], &config).status.code(), Some(2));
    let spool = dirs.spool.display().to_string();
    ok(&["retry", "--watch", &spool], &config);
}

#[test]
fn retry_with_the_service_running_sends_the_file_again() {
    let dirs = Dirs::new();
    let server = Flaky::start();
    let o = Opts {
        max_attempts: 1,
        ..Opts::default()
    };
    let (config, svc, mport) = start_with_metrics(&dirs, server.port, &o);
    dirs.drop_file("r.csv", b"report");
    wait_for("given up, with its reason", || {
        names(&dirs.failed) == ["r.csv", "r.csv.reason"]
    });
    let watch = format!("{{watch=\"{}\"}}", dirs.spool.display());
    let (_, _, body) = get(mport, "/metrics");
    assert_eq!(
        sample(&body, &format!("accio_files_failed_total{watch}")),
        Some(1.0),
        "{body}"
    );

    server.fail.store(false, Ordering::SeqCst);
    let text = ok(&["retry"], &config);
    assert!(text.contains("1 file put back"), "{text}");
    wait_for("sent and moved to done", || names(&dirs.done) == ["r.csv"]);
    assert_eq!(server.received.load(Ordering::SeqCst), 1);
    assert!(names(&dirs.failed).is_empty(), "{:?}", names(&dirs.failed));
    let (_, _, body) = get(mport, "/metrics");
    assert_eq!(
        sample(&body, &format!("accio_files_sent_total{watch}")),
        Some(1.0)
    );
    drop(svc);
}

/// Text lines for people: the message says it once, no `key=value` fields repeating it;
/// JSON lines carry the fields, counts as numbers. The backlog at start counts files only.
#[test]
fn log_lines_say_it_once_in_text_and_carry_numbers_in_json() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    fs::write(dirs.spool.join("old"), b"old").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dirs.spool.join("link")).unwrap();
    let config = ops_config(&dirs, recv.port, &Opts::default(), None);
    let svc = Service::start(&config);
    wait_for("delivered", || names(&dirs.done) == ["old"]);
    svc.wait_log("delivered");
    let log = svc.log();
    assert!(log.contains("(1 file already there)"), "{log}");
    for line in log.lines() {
        for field in ["path=", "bytes=", "attempt=", "dir=", "backlog=", "config="] {
            assert!(!line.contains(field), "field repeated in text: {line}");
        }
    }
    let delivered = log.lines().find(|l| l.contains("delivered")).unwrap();
    assert!(delivered.len() < 200, "{delivered}");
    drop(svc);

    let svc = Service::start_with_env(&config, &[("ACCIO_LOG_FORMAT", "json")]);
    svc.signal(libc::SIGUSR1);
    svc.wait_log("status: watching");
    let line = svc
        .log()
        .lines()
        .find(|l| l.contains("status: watching"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["watching"], 1, "{line}");
    assert!(v["sent"].is_u64() && v["queued"].is_u64(), "{line}");
}

/// The control socket answers `view` and `flush`; anything else gets an error document.
/// `accio status` on a configuration it cannot read still asks: the default socket (with a
/// warning), or the one `--socket` names.
#[test]
fn the_control_socket_refuses_unknown_requests() {
    use std::os::unix::net::UnixStream;
    let (dirs, _recv, _svc) = running(&Opts::default());
    let mut s = UnixStream::connect(&dirs.control).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"shutdown\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("unknown request"),
        "{answer}"
    );

    let bad = write_config(&dirs, "bad.toml", "concurrency = \"many\"\n");
    let out = accio(&["status"], &bad);
    let err = stderr(&out);
    assert!(
        err.starts_with("WARNING: ") && err.contains("concurrency"),
        "{err}"
    );
    assert!(
        err.contains("asking the default control socket /run/accio/control.sock"),
        "{err}"
    );
    // Nothing runs at the default socket here (or it is another service: either way, not
    // a configuration error).
    assert_ne!(out.status.code(), Some(78), "{err}");
    let socket = dirs.control.to_str().unwrap();
    let text = stdout(&accio_plain(&["status", "--socket", socket]));
    assert!(text.starts_with("accio "), "{text}");
}

/// `accio ARGS` without `--config`.
fn accio_plain(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `accio ARGS --socket SOCKET`, which must succeed; its stdout.
#[track_caller]
fn ok_on(socket: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap()]);
    let out = accio_plain(&all);
    assert!(out.status.success(), "accio {all:?}: {}", stderr(&out));
    stdout(&out)
}

/// A reload the service refuses is said in `accio status`, STATUS= (tests/systemd.rs) and
/// the metrics until one is taken; `check-config --quiet` (the unit's `ExecReload=` check)
/// says nothing on a good file and fails with 78 on a bad one; `accio status` still reaches
/// the service while its file is broken.
#[test]
fn a_refused_reload_is_said_until_a_reload_is_taken() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let (config, svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    let good = fs::read_to_string(&config).unwrap();
    let quiet = accio(&["check-config", "--quiet"], &config);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(stdout(&quiet).is_empty() && stderr(&quiet).is_empty());
    let (_, _, body) = get(mport, "/metrics");
    assert_eq!(
        sample(&body, "accio_config_last_reload_successful"),
        Some(1.0)
    );
    let loaded = sample(&body, "accio_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(loaded > 1.6e9, "{body}");

    fs::write(&config, "concurrency = \"many\"\n").unwrap();
    fails(&["check-config", "--quiet"], &config, 78, "concurrency");
    svc.signal(libc::SIGHUP);
    svc.wait_log("reload refused");
    wait_for("the metric to say the reload was refused", || {
        sample(
            &get(mport, "/metrics").2,
            "accio_config_last_reload_successful",
        ) == Some(0.0)
    });
    let text = ok_on(&dirs.control, &["status"]);
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("reload refused: ") && l.contains("concurrency")),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(ok_on(&dirs.control, &["status", "--json"]).trim()).unwrap();
    assert!(
        v["reload_refused"]
            .as_str()
            .unwrap()
            .contains("concurrency"),
        "{v}"
    );
    // Still running on the old configuration.
    dirs.drop_file("after", b"a");
    wait_for("delivered", || names(&dirs.done) == ["after"]);

    fs::write(&config, good).unwrap();
    svc.signal(libc::SIGHUP);
    svc.wait_log("configuration reloaded");
    wait_for("the metric to say the reload was taken", || {
        let body = get(mport, "/metrics").2;
        sample(&body, "accio_config_last_reload_successful") == Some(1.0)
            && sample(&body, "accio_config_last_reload_success_timestamp_seconds")
                .is_some_and(|t| t > loaded)
    });
    let v = svc.status();
    assert_eq!(v.reload_refused, None);
    assert!(!ok(&["status"], &config).contains("reload refused"));
}

/// `accio status` lists the 20 oldest waiting files and how many more wait; `--all` lists
/// them all; `--destination` keeps to one destination (and names the known ones when it
/// is not one). `accio flush` probes a destination that is down now, instead of at its
/// next probe (an hour away here).
#[test]
fn status_all_and_by_destination_and_flush() {
    let dirs = Dirs::new();
    let port = free_port();
    let o = Opts {
        initial: "1h",
        max: "1h",
        ..Opts::default()
    };
    let config = ops_config(&dirs, port, &o, None);
    let svc = Service::start(&config);
    let dest = format!("127.0.0.1:{port}");
    dirs.drop_file("first", b"0");
    svc.wait_status("the destination down", destination_down);
    for i in 0..24 {
        dirs.drop_file(&format!("w{i:02}"), b"w");
    }
    svc.wait_status("25 files held", |v| v.waiting_total == Some(25));
    let text = ok(&["status"], &config);
    let listed = text.lines().filter(|l| l.contains(": waiting ")).count();
    assert_eq!(listed, 20, "{text}");
    assert!(
        text.contains("\n  ... 5 more (accio status --all lists them)\n"),
        "{text}"
    );
    let all = ok(&["status", "--all"], &config);
    assert_eq!(all.lines().filter(|l| l.contains(": waiting ")).count(), 25);
    assert!(!all.contains(" more (accio status --all"), "{all}");
    let one = ok(&["status", "--all", "--destination", &dest], &config);
    assert_eq!(one.lines().filter(|l| l.contains(": waiting ")).count(), 25);
    assert!(one.contains(&format!("  {dest}: DOWN since ")), "{one}");
    let err = fails(
        &["status", "--destination", "nowhere:1"],
        &config,
        2,
        "no such destination",
    );
    assert!(err.contains(&dest), "{err}");

    // The destination comes back: nothing goes before its probe, in an hour, unless
    // flushed.
    let recv = Receiver::start_on(&dirs.recv, port);
    fails(&["flush", "nowhere:1"], &config, 2, "no destination");
    let text = ok(&["flush", &dest], &config);
    assert!(
        text.starts_with(&format!("flushed {dest}: 1 destination down probed now")),
        "{text}"
    );
    wait_for("all 25 delivered", || names(&dirs.done).len() == 25);
    assert_eq!(recv.count(), 25);
    svc.wait_log("flush: probing 1 destination(s) down now");
}

/// `accio retry --list` shows each given-up file with its age and reason, `--dry-run` the
/// moves it would make; neither moves anything.
#[test]
fn retry_lists_and_dry_runs_without_moving() {
    let dirs = Dirs::new();
    let config = ops_config(&dirs, 5000, &Opts::default(), None);
    given_up(&dirs, "a.csv", &dirs.spool.join("a.csv"));
    fs::write(dirs.failed.join("bare"), b"no reason file").unwrap();
    // A huge reason file is read only as far as its first 64 KiB.
    let mut huge = b"file: /x\nlast error: cut short\n".to_vec();
    huge.resize(8 << 20, b'z');
    fs::write(dirs.failed.join("huge"), b"h").unwrap();
    fs::write(dirs.failed.join("huge.reason"), &huge).unwrap();

    let text = ok(&["retry", "--list"], &config);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&dirs.failed.join(name).display().to_string()))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .to_string()
    };
    let a = line("a.csv");
    assert!(
        a.contains(&format!("(from {})", dirs.spool.join("a.csv").display())),
        "{a}"
    );
    assert!(
        a.contains(": given up ") && a.contains(" ago after 10 attempts: reset"),
        "{a}"
    );
    assert!(line("bare").ends_with(": no reason file"), "{text}");
    assert!(line("huge").contains("cut short"), "{text}");
    assert!(text.ends_with("3 files given up\n"), "{text}");

    let text = ok(&["retry", "--dry-run", "a.csv"], &config);
    assert_eq!(
        text,
        format!(
            "would move {} → {}\n1 file would be put back\n",
            dirs.failed.join("a.csv").display(),
            dirs.spool.join("a.csv").display()
        )
    );
    assert_eq!(names(&dirs.spool), Vec::<String>::new());
    assert!(dirs.failed.join("a.csv.reason").exists());
}

/// Files sitting in failed_dir are a gauge (the alert on given-up files stays while they
/// are there, and clears once they are retried); the last-success time exists from the
/// start; the process's own metrics are there; upload durations carry their result.
#[test]
fn metrics_of_failed_files_and_the_process_from_the_start() {
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    given_up(&dirs, "a", &dirs.spool.join("a"));
    given_up(&dirs, "b", &dirs.spool.join("b"));
    let (config, _svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    let watch = format!("{{watch=\"{}\"}}", dirs.spool.display());
    let dest = format!("destination=\"127.0.0.1:{}\"", recv.port);
    let body = get(mport, "/metrics").2;
    let v = |body: &str, s: &str| sample(body, s).unwrap_or_else(|| panic!("no {s} in\n{body}"));
    assert_eq!(v(&body, &format!("accio_failed_files{watch}")), 2.0);
    let started = v(&body, "accio_start_time_seconds");
    assert_eq!(
        v(
            &body,
            &format!("accio_last_success_timestamp_seconds{watch}")
        ),
        started
    );
    for result in ["ok", "failed", "unreachable"] {
        assert_eq!(
            v(
                &body,
                &format!("accio_upload_duration_seconds_count{{{dest},result=\"{result}\"}}")
            ),
            0.0
        );
    }
    assert!(v(&body, "process_open_fds") > 3.0);
    assert!(v(&body, "process_max_fds") >= v(&body, "process_open_fds"));
    assert!(v(&body, "process_resident_memory_bytes") > 1e6);
    assert!(v(&body, "process_cpu_seconds_total") >= 0.0);
    assert!((v(&body, "process_start_time_seconds") - started).abs() < 5.0);

    ok(&["retry"], &config);
    wait_for("both delivered", || names(&dirs.done).len() == 2);
    let body = get(mport, "/metrics").2;
    assert_eq!(v(&body, &format!("accio_failed_files{watch}")), 0.0);
    assert!(
        v(
            &body,
            &format!("accio_last_success_timestamp_seconds{watch}")
        ) > started
    );
}

/// The service short of descriptors: uploads that cannot open a file or a socket wait and
/// are retried; none counts against its file, so with `max_attempts = 1` every file still
/// arrives and none is given up. The start warns that `concurrency` does not fit.
#[test]
fn running_out_of_descriptors_gives_up_on_no_file() {
    if !Path::new("/usr/bin/prlimit").exists() {
        eprintln!("skipped: needs prlimit (util-linux)");
        return;
    }
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    let o = Opts {
        concurrency: 64,
        max_attempts: 1,
        ..Opts::default()
    };
    let config = ops_config(&dirs, recv.port, &o, None);
    for i in 0..150 {
        fs::write(dirs.spool.join(format!("f{i:03}")), content(i, 100)).unwrap();
    }
    // A hard limit the service cannot raise: 40 descriptors, for 64 uploads.
    let svc = Service::start_wrapped(&config, &[], &["prlimit", "--nofile=40:40", "--"]);
    // 64 uploads × 2, 3 for the watch's directories, 32 more.
    svc.wait_log("concurrency = 64 needs up to 163 open files, but the limit is 40");
    wait_for_within("all 150 delivered", Duration::from_secs(60), &mut || {
        names(&dirs.done).len() == 150
    });
    assert_eq!(
        names(&dirs.failed),
        Vec::<String>::new(),
        "log:\n{}",
        svc.log()
    );
    let log = svc.log();
    assert!(!log.contains("giving up"), "{log}");
    if log.contains("Too many open files") {
        assert!(log.contains("not counted against the file"), "{log}");
    }
    // Said once a minute, not once per upload that could not start.
    assert!(log.matches("said once a minute").count() <= 2, "{log}");
}

/// The shipped alert rules (docs/accio-alerts.yml): promtool accepts them, its unit tests
/// (docs/accio-alerts.test.yml) show each one firing when it should and not before, and
/// every series they use is one a running service exports, from its start.
#[test]
#[ignore = "needs promtool (Debian package prometheus); .ci/run installs it and runs `cargo test --test ops -- --ignored prom`"]
fn prom_alert_rules_fire_when_they_should() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for args in [
        &["check", "rules", "accio-alerts.yml"][..],
        &["test", "rules", "accio-alerts.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&docs)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // The series the rules use, against a live scrape of a service that has delivered
    // nothing yet (and a failed file, so that its gauge has a series).
    let rules = fs::read_to_string(docs.join("accio-alerts.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("accio_") || w.starts_with("process_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    let dirs = Dirs::new();
    let recv = Receiver::start(&dirs.recv);
    given_up(&dirs, "a", &dirs.spool.join("a"));
    let (_, _svc, mport) = start_with_metrics(&dirs, recv.port, &Opts::default());
    let body = get(mport, "/metrics").2;
    for name in used {
        assert!(
            body.lines()
                .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])),
            "{name} is not exported:\n{body}"
        );
    }
}

/// Issue 23: `accio status` takes the answer on the control socket as outside input: huge,
/// negative and odd numbers are shown as well as can be, never a panic.
#[test]
fn status_survives_extreme_numbers_in_the_answer() {
    use std::os::unix::net::UnixListener;
    let dirs = Dirs::new();
    let config = ops_config(&dirs, 9, &Opts::default(), None);
    let listener = UnixListener::bind(&dirs.control).unwrap();
    let big = "1e308";
    let answers = [
        format!(
            r#"{{"pid":4294967295,"version":"x","uptime_s":{big},
            "totals":{{"watching":18446744073709551615,"in_flight":18446744073709551615,"queued":18446744073709551615,"sent":18446744073709551615,"failed":18446744073709551615,"destinations_down":18446744073709551615}},
            "destinations":[{{"name":"h:1","up":false,"down_since_unix":{big},"last_error":"e","in_flight":18446744073709551615,"queued":0,"limit":0,"cap":18446744073709551615,"adaptive":true,"baseline_greeting_ms":{big},"greeting_ms":-{big},"next_probe_in_s":{big}}},
                {{"name":"h:2","up":false,"down_since_unix":-{big},"in_flight":0,"queued":0,"limit":1,"cap":1,"adaptive":false,"next_probe_in_s":-1}},
                {{"name":"h:3","up":false,"down_since_unix":253402300800.5,"in_flight":0,"queued":0,"limit":1,"cap":1,"adaptive":false}}],
            "watches":[{{"dir":"/s","destination":"h:1","queued":18446744073709551615,"in_flight":0,"sent":0,"failed":0,"oldest_waiting_age_s":{big},"special_entries":18446744073709551615}}],
            "in_flight":[{{"path":"/s/f","destination":"h:1","bytes_sent":18446744073709551615,"size":18446744073709551615,"elapsed_s":-{big},"attempt":4294967295}},
                {{"path":"/s/g","destination":"h:1","bytes_sent":1,"size":0,"elapsed_s":0,"attempt":0}}],
            "waiting":[{{"path":"/s/w","destination":"h:1","age_s":{big},"why":{{"state":"backing_off","retry_in_s":{big},"attempts":4294967295,"error":"e"}}}}]}}"#
        )
        .replace('\n', " "),
        r#"{"pid":1,"version":"x","uptime_s":-5e-324,"totals":{}}"#.to_string(),
    ];
    let serve = std::thread::spawn(move || {
        for a in [&answers[0], &answers[0], &answers[1], &answers[1]] {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 16];
            let _ = s.read(&mut req);
            s.write_all(a.as_bytes()).unwrap();
            s.write_all(b"\n").unwrap();
        }
    });
    // The whole View: shown, the times no clock can hold left out.
    let text = ok(&["status"], &config);
    assert!(text.contains("h:1: DOWN, next probe in"), "{text}");
    assert!(text.contains("h:2: DOWN, next probe in 0s"), "{text}");
    assert!(!text.contains(" since "), "{text}");
    assert!(text.contains("h:3: DOWN, 0 in flight"), "{text}");
    ok(&["status", "--json"], &config);
    // Fields missing, a tiny negative uptime: a clear error or an answer, no panic.
    for args in [&["status"][..], &["status", "--json"]] {
        let out = accio(args, &config);
        let err = stderr(&out);
        assert!(
            out.status.code() == Some(0) || err.starts_with("ERROR: "),
            "accio {args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    serve.join().unwrap();
}
