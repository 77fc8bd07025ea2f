//! `herd-bench` as users run it: the built binary against real `herd` processes (and
//! `places-stub` for WHATSAT), against a fake Redis, and against fake servers that answer wrong
//! or never, with short bounded runs. Its `--json` object is the interface checked.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Herd, TempDir, free_port, wait_until};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_herd-bench");

/// One server alone, logging only warnings (a load run at `info` writes a line per message).
const ALONE: &[(&str, &[&str])] = &[("Hill", &[])];

/// Longest any run here may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(30);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// The `--json` object on stdout.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not one JSON object ({e}): {}\nstderr: {}", self.stdout, self.stderr)
        })
    }

    fn u64(&self, key: &str) -> u64 {
        self.json()[key].as_u64().unwrap_or_else(|| panic!("no number {key:?} in {}", self.stdout))
    }

    fn kind(&self, kind: &str) -> u64 {
        self.json()["errors_by_kind"][kind]
            .as_u64()
            .unwrap_or_else(|| panic!("no {kind:?} in {}", self.stdout))
    }

    /// Asserts a clean run: exit 0, no errors, some requests; returns the JSON.
    fn clean(&self) -> Value {
        let v = self.json();
        assert!(self.status.success(), "exit {:?}: {}\n{}", self.status, self.stdout, self.stderr);
        assert_eq!(v["errors"], 0, "{}\n{}", self.stdout, self.stderr);
        assert!(v["requests"].as_u64().unwrap() > 0, "{}", self.stdout);
        assert!(v["per_second"].as_f64().unwrap() > 0.0, "{}", self.stdout);
        assert!(v["p50_us"].as_f64().unwrap() > 0.0, "{}", self.stdout);
        assert!(v["max_us"].as_f64().unwrap() >= v["p99_us"].as_f64().unwrap(), "{}", self.stdout);
        v
    }

    /// Asserts that the run failed the way a run with errors must: exit status 1 and errors
    /// counted.
    fn failed(&self) -> Value {
        let v = self.json();
        assert_eq!(self.status.code(), Some(1), "{}\n{}", self.stdout, self.stderr);
        assert!(v["errors"].as_u64().unwrap() > 0, "{}", self.stdout);
        assert!(v["first_error"].is_string(), "{}", self.stdout);
        assert!(
            self.stderr.contains("herd-bench: error: "),
            "errors are described on stderr: {}",
            self.stderr
        );
        v
    }
}

/// Runs herd-bench with `args` to completion (killed after [`RUN_LIMIT`]).
fn bench(args: &[&str]) -> Run {
    let dir = TempDir::new();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn herd-bench");
    let mut status = None;
    let finished = wait_until(RUN_LIMIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!("herd-bench {args:?} still running after {RUN_LIMIT:?}");
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Run { status: status.unwrap(), stdout: read(&out), stderr: read(&err), took: started.elapsed() }
}

fn addr_of(herd: &Herd, name: &str) -> String {
    herd.addr(name).to_string()
}

fn alone() -> Herd {
    let mut herd = Herd::with_log_level(ALONE, "warn", "");
    herd.start("Hill");
    herd
}

#[test]
fn iamat_depth_1_runs_clean() {
    let herd = alone();
    let run = bench(&["--json", "-c", "4", "-d", "1", "-t", "0.5", "-w", "0.2", &addr_of(&herd, "Hill")]);
    let v = run.clean();
    assert_eq!(
        (v["connections"].as_u64(), v["depth"].as_u64(), v["connects"].as_u64()),
        (Some(4), Some(1), Some(4))
    );
    assert_eq!(v["replies"], v["requests"]);
    assert_eq!(v["whatsats"], 0);
    let seconds = v["seconds"].as_f64().unwrap();
    assert!((0.5..3.0).contains(&seconds), "measured {seconds} s of a 0.5 s run");
}

#[test]
fn iamat_depth_16_runs_clean_and_stops_at_exactly_n_requests() {
    let herd = alone();
    let run = bench(&[
        "--json",
        "-c",
        "8",
        "-d",
        "16",
        "-n",
        "5000",
        "-t",
        "20",
        "-w",
        "0",
        &addr_of(&herd, "Hill"),
    ]);
    let v = run.clean();
    assert_eq!(v["requests"], 5000, "{}", run.stdout);
    assert_eq!(v["depth"], 16);
    assert!(run.took < Duration::from_secs(15), "-n ends the run long before -t: {:?}", run.took);
}

#[test]
fn two_threads_share_the_connections() {
    let herd = alone();
    let run = bench(&[
        "--json",
        "--threads",
        "2",
        "-c",
        "6",
        "-d",
        "4",
        "-t",
        "0.5",
        "-w",
        "0",
        &addr_of(&herd, "Hill"),
    ]);
    let v = run.clean();
    assert_eq!((v["threads"].as_u64(), v["connects"].as_u64()), (Some(2), Some(6)));
}

#[test]
fn two_targets_get_connections_round_robin() {
    // Logged at `info` so each server's log shows which clients it served; -n keeps it short.
    let mut herd = Herd::new(&[("Hill", &["Jaquez"]), ("Jaquez", &["Hill"])], "");
    herd.start_all();
    let run = bench(&[
        "--json",
        "-c",
        "4",
        "-d",
        "2",
        "-n",
        "400",
        "-w",
        "0",
        "--id-prefix",
        "two-",
        &addr_of(&herd, "Hill"),
        &addr_of(&herd, "Jaquez"),
    ]);
    let v = run.clean();
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    assert_eq!(v["requests"], 400);
    // Connections 0 and 2 went to Hill, 1 and 3 to Jaquez (each server also hears of the
    // others' clients by flooding, as AT lines).
    for (server, own) in [("Hill", ["two-0", "two-2"]), ("Jaquez", ["two-1", "two-3"])] {
        for id in own {
            let needle = format!("< IAMAT {id} ");
            assert!(
                wait_until(Duration::from_secs(5), || herd.log_contains(server, needle.as_bytes())),
                "{server} never received an IAMAT of {id}"
            );
        }
    }
    for (server, other) in [("Hill", "two-1"), ("Jaquez", "two-0")] {
        assert!(
            !herd.log_contains(server, format!("< IAMAT {other} ").as_bytes()),
            "{other} went to {server}"
        );
    }
}

#[test]
fn connect_per_request_opens_a_connection_for_each_request() {
    let herd = alone();
    let run = bench(&[
        "--json",
        "--connect-per-request",
        "-c",
        "2",
        "-t",
        "0.5",
        "-w",
        "0",
        &addr_of(&herd, "Hill"),
    ]);
    let v = run.clean();
    assert_eq!(v["connect_per_request"], true);
    let (requests, connects) = (v["requests"].as_u64().unwrap(), v["connects"].as_u64().unwrap());
    assert!(requests > 2, "{}", run.stdout);
    // Requests in flight at the end of the run were not counted, but did connect.
    assert!(connects >= requests && connects <= requests + 2, "{requests} requests, {connects} connects");
}

#[cfg(feature = "stub")]
#[test]
fn whatsat_mix_against_places_stub_runs_clean() {
    let stub = common::Stub::start(&[]);
    let mut herd = Herd::with_log_level(ALONE, "warn", &stub.herd_yaml("new", 5000));
    herd.start("Hill");
    let run = bench(&[
        "--json",
        "--whatsat",
        "50",
        "--bound",
        "3",
        "-c",
        "3",
        "-d",
        "2",
        "-t",
        "1",
        "-w",
        "0",
        &addr_of(&herd, "Hill"),
    ]);
    let v = run.clean();
    let (requests, whatsats) = (v["requests"].as_u64().unwrap(), v["whatsats"].as_u64().unwrap());
    assert!(whatsats > 0 && whatsats < requests, "{whatsats} WHATSAT of {requests}");
    assert!(stub.requests() > 0, "the herd never asked the stub");
}

/// A fake server on a free loopback port: a thread accepts, a thread per connection reads
/// lines and answers each with `answer(line)` (nothing when it returns `None`). Stopped and
/// joined on drop.
struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    accepter: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(answer: fn(&[u8]) -> Option<Vec<u8>>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(AtomicU64::new(0));
        let (stop2, lines2) = (Arc::clone(&stop), Arc::clone(&lines));
        let accepter = thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (stop, lines) = (Arc::clone(&stop2), Arc::clone(&lines2));
                        conns.push(thread::spawn(move || serve(s, answer, &stop, &lines)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Self { addr, stop, lines, accepter: Some(accepter) }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

fn serve(s: TcpStream, answer: fn(&[u8]) -> Option<Vec<u8>>, stop: &AtomicBool, lines: &AtomicU64) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                lines.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = answer(&line) {
                    // Replies in bulk are flushed when no more input is waiting.
                    if w.write_all(&reply).is_err() {
                        return;
                    }
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

/// Redis answers an inline `SET key value` with `+OK`; anything else with an error.
fn fake_redis(line: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
    // The key is a client id; the value is as long as an IAMAT's location and time.
    let ok = text.ends_with("\r\n")
        && fields.len() == 3
        && fields[0] == "SET"
        && fields[1].starts_with("bench-")
        && fields[2].len() == "+34.068930-118.445127 1520023934.918963997".len();
    Some(if ok { b"+OK\r\n".to_vec() } else { b"-ERR unexpected command\r\n".to_vec() })
}

#[test]
fn redis_mode_sends_inline_sets_and_checks_ok() {
    let redis = Fake::start(fake_redis);
    let run = bench(&[
        "--json",
        "--protocol",
        "redis",
        "-c",
        "3",
        "-d",
        "8",
        "-n",
        "600",
        "-t",
        "20",
        "-w",
        "0",
        &redis.addr(),
    ]);
    let v = run.clean();
    assert_eq!(v["protocol"], "redis");
    assert_eq!(v["requests"], 600);
    assert!(redis.lines.load(Ordering::Relaxed) >= 600);
}

#[test]
fn redis_mode_counts_anything_but_ok_as_an_error() {
    let redis = Fake::start(|_| Some(b"+OK\n".to_vec()));
    let run = bench(&["--json", "--protocol", "redis", "-c", "2", "-t", "0.3", "-w", "0", &redis.addr()]);
    let v = run.failed();
    assert_eq!(v["requests"], 0);
    assert!(run.kind("wrong_reply") > 0);
}

/// Answers an IAMAT with an AT line that echoes the client and location but not the time.
fn wrong_at(line: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    Some(format!("AT Fake +0.000000001 {} {} 1.000000000\n", f.get(1)?, f.get(2)?).into_bytes())
}

#[test]
fn a_wrong_at_line_is_an_error_and_the_exit_status_says_so() {
    let fake = Fake::start(wrong_at);
    let run = bench(&["--json", "-c", "2", "-d", "4", "-t", "0.3", "-w", "0", &fake.addr()]);
    let v = run.failed();
    assert_eq!(v["requests"], 0, "no wrong reply may count as a success");
    assert_eq!(run.kind("wrong_reply"), run.u64("errors"));
    assert!(v["first_error"].as_str().unwrap().contains("1.000000000"), "{}", v["first_error"]);
}

#[test]
fn the_text_report_also_reports_errors() {
    let fake = Fake::start(wrong_at);
    let run = bench(&["-c", "1", "-t", "0.2", "-w", "0", &fake.addr()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stdout.contains(" errors (") && run.stdout.contains("wrong reply"), "{}", run.stdout);
}

#[test]
fn a_server_that_never_answers_ends_the_run_at_the_timeout() {
    let fake = Fake::start(|_| None);
    let run =
        bench(&["--json", "-c", "3", "-d", "2", "-t", "60", "-w", "0", "--timeout", "0.5", &fake.addr()]);
    run.failed();
    assert_eq!(run.kind("timeout"), 3, "each connection times out once: {}", run.stdout);
    assert!(run.took < Duration::from_secs(10), "the run took {:?}", run.took);
    assert!(fake.lines.load(Ordering::Relaxed) > 0, "the requests were sent");
}

#[test]
fn a_server_that_closes_is_an_error() {
    // A listener that accepts and closes at once.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let closer = thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
        }
    });
    let run = bench(&["--json", "-c", "2", "-t", "5", "-w", "0", &addr]);
    let _ = closer.join();
    run.failed();
    assert_eq!(run.u64("errors"), 2, "{}", run.stdout);
    assert_eq!(run.kind("closed") + run.kind("io"), 2, "{}", run.stdout);
}

#[test]
fn connection_refused_is_an_error_not_a_retry_loop() {
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let run = bench(&["--json", "-c", "3", "-t", "30", "-w", "0", &target]);
    run.failed();
    assert_eq!(run.kind("connect"), 3, "{}", run.stdout);
    assert!(run.took < Duration::from_secs(10), "{:?}", run.took);
    // Connect-per-request counts each failed connect as that request's error, and -n bounds it.
    let run = bench(&["--json", "--connect-per-request", "-c", "2", "-n", "20", "-w", "0", &target]);
    run.failed();
    assert_eq!(run.kind("connect"), 20, "{}", run.stdout);
}

#[test]
fn usage_errors_exit_2_and_help_documents_every_json_key() {
    for bad in [
        &["--frobnicate", "127.0.0.1:1"][..],
        &[],
        &["-d", "0", "127.0.0.1:1"],
        &["--whatsat", "x", "127.0.0.1:1"],
    ] {
        let run = bench(bad);
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("herd-bench: "), "{bad:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    let help = bench(&["--help"]);
    assert!(help.status.success());
    let herd = alone();
    let run = bench(&["--json", "-c", "1", "-n", "10", "-w", "0", &addr_of(&herd, "Hill")]);
    let v = run.clean();
    for key in v.as_object().unwrap().keys() {
        assert!(help.stdout.contains(key.as_str()), "--help does not document the JSON key {key:?}");
    }
    for kind in v["errors_by_kind"].as_object().unwrap().keys() {
        assert!(help.stdout.contains(kind.as_str()), "--help does not document errors_by_kind.{kind}");
    }
    for option in [
        "--connections",
        "--depth",
        "--threads",
        "--duration",
        "--requests",
        "--warmup",
        "--timeout",
        "--whatsat",
        "--radius",
        "--bound",
        "--connect-per-request",
        "--protocol",
        "--id-prefix",
        "--json",
    ] {
        assert!(help.stdout.contains(option), "--help does not mention {option}");
    }
}
