//! The herd under faults (issue 5, items 1, 2, 3 and 7), over real `herd` processes on loopback:
//! a server killed with `kill -9` and restarted under load, a stalled (SIGSTOPped) peer, a server
//! whose neighbours are all down, and SIGTERM during load.
//!
//! # How the tests know what every server holds
//! The herd has no "dump" command, so the tests keep a [`Ledger`]: they are the load themselves
//! (one [`Writer`] thread per server, each sending pipelined IAMATs for a fixed set of clients,
//! all at one location, with timestamps from one counter shared by all writers, so a later IAMAT
//! of a client is always newer), and for every client the ledger keeps the newest timestamp
//! acknowledged and the AT line that acknowledged it. Because the writers' timestamps are unique
//! and only acknowledged IAMATs count, that AT line is exactly the record every server must end
//! up holding: the server that answered it stored it (nothing newer of that client exists) and
//! flooded it.
//!
//! What a server holds is read with `WHATSAT`, whose reply starts with the stored AT line byte
//! for byte (PROTOCOL.md). That needs Places, so each herd here asks a local `places-stub`; an
//! unknown client is answered `? `. The checks stay cheap: every tracked client is at the same
//! place and every WHATSAT asks the same radius and bound, so the WHATSATs a check sends at once
//! (one on each of up to 64 connections per server) share one Places request per server (the
//! herd joins identical queries in flight), and each pass of a check asks again only about the
//! clients a server did not yet hold the newest record of (a server holding the newest record
//! keeps it: nothing newer is sent once the writers have stopped). A time to converge is the
//! end of the first pass that found everything: an upper bound. (An IAMAT with an old
//! timestamp is answered but not stored, but its answer shows the IAMAT, not the stored record,
//! so it cannot serve as a read.)
//!
//! Figures (convergence times, latencies, RSS, CPU) are printed on stderr: run with
//! `cargo test --test faults -- --nocapture` to see them. The servers are the debug build that
//! `cargo test` makes.

// The WHATSAT reads need the stub, built only with the `stub` feature (on by default).
#![cfg(feature = "stub")]

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Client, DEFAULT_HERD, Herd, Stub, cpu_ticks, rss_kib, show, timestamp, unix_nanos, wait_until};

/// Where every tracked client is: one place, so all WHATSATs of a check ask the same query.
const LOCATION: &str = "+34.068930-118.445127";

/// The WHATSAT every check sends (radius 1 km, one result: the smallest reply).
const WHATSAT_TAIL: &str = "1 1";

/// The load tool (`herd-bench --help`).
const HERD_BENCH: &str = env!("CARGO_BIN_EXE_herd-bench");

/// IAMATs a writer sends in one write before reading their replies.
const WRITER_BATCH: usize = 8;

/// Longest wait for one reply (a check or a write); far above any real reply time.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The timestamp field of an AT line (its last field), in nanoseconds. The tests write nine
/// decimals, which the herd copies byte for byte.
fn at_time(line: &[u8]) -> i128 {
    let field = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    let text = std::str::from_utf8(field).unwrap_or_else(|_| panic!("not ASCII: {}", show(line)));
    let (s, ns) = text.split_once('.').unwrap_or_else(|| panic!("no fraction in {}", show(line)));
    assert_eq!(ns.len(), 9, "not nine decimals in {}", show(line));
    s.parse::<i128>().expect("seconds") * 1_000_000_000 + ns.parse::<i128>().expect("nanoseconds")
}

/// Per client: the newest acknowledged timestamp and the AT line (without `\n`) answering it.
type Newest = Vec<Option<(i128, Vec<u8>)>>;

/// The tracked clients and, for each, the newest IAMAT acknowledged so far.
struct Ledger {
    ids: Vec<String>,
    newest: Mutex<Newest>,
    /// Timestamps are `base` plus this counter: unique and increasing across all writers.
    counter: AtomicU64,
    base: i128,
}

impl Ledger {
    /// `n` clients named `prefix-<i>`, each padded with `pad` bytes (long ids make long floods).
    fn new(prefix: &str, n: usize, pad: usize) -> Arc<Self> {
        let padding = "x".repeat(pad);
        Arc::new(Self {
            ids: (0..n).map(|i| format!("{prefix}-{i:04}{padding}")).collect(),
            newest: Mutex::new(vec![None; n]),
            counter: AtomicU64::new(0),
            // A minute ago: all differences are positive, and the counter never reaches now.
            base: unix_nanos() - 60_000_000_000,
        })
    }

    fn next_time(&self) -> i128 {
        self.base + i128::from(self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// The IAMAT for client `i` at `time`, `\n` included.
    fn iamat(&self, i: usize, time: i128) -> String {
        format!("IAMAT {} {LOCATION} {}\n", self.ids[i], timestamp(time))
    }

    /// Checks `reply` as `server`'s answer to [`Ledger::iamat`]`(i, time)` and records it.
    fn ack(&self, server: &str, i: usize, time: i128, reply: &[u8]) {
        let head = format!("AT {server} ");
        let tail = format!(" {} {LOCATION} {}\n", self.ids[i], timestamp(time));
        assert!(
            reply.starts_with(head.as_bytes()) && reply.ends_with(tail.as_bytes()),
            "{server} answered {} to an IAMAT of {}",
            show(reply),
            self.ids[i]
        );
        let line = reply[..reply.len() - 1].to_vec();
        let mut newest = self.newest.lock().expect("ledger lock");
        if newest[i].as_ref().is_none_or(|(t, _)| *t < time) {
            newest[i] = Some((time, line));
        }
    }

    /// Sends one IAMAT for client `i` to `server` on `c`, checks and records the answer.
    fn write_one(&self, c: &mut Client, server: &str, i: usize) -> Vec<u8> {
        let time = self.next_time();
        let reply = c.round_trip(self.iamat(i, time).as_bytes());
        self.ack(server, i, time, &reply);
        reply
    }

    /// The newest acknowledged AT line of each client (None: never written).
    fn expected(&self) -> Vec<Option<Vec<u8>>> {
        self.newest.lock().expect("ledger lock").iter().map(|e| e.as_ref().map(|(_, l)| l.clone())).collect()
    }
}

/// A thread sending IAMATs for random tracked clients to one server until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl Writer {
    /// Starts writing to `server` at `addr`, a batch at most every `pace` (zero: as fast as
    /// the server answers); `seed` picks its sequence of clients.
    fn spawn(ledger: &Arc<Ledger>, server: &str, addr: SocketAddr, seed: u64, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (ledger, server, stop2, acked2) =
            (Arc::clone(ledger), server.to_string(), stop.clone(), acked.clone());
        let handle = thread::spawn(move || {
            let mut c = Client::connect(addr).unwrap_or_else(|e| panic!("writer: connect to {server}: {e}"));
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut batch = String::new();
            let mut sent = Vec::with_capacity(WRITER_BATCH);
            while !stop2.load(Ordering::Relaxed) {
                let began = Instant::now();
                batch.clear();
                sent.clear();
                for _ in 0..WRITER_BATCH {
                    // xorshift64
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let i = (rng % ledger.ids.len() as u64) as usize;
                    let time = ledger.next_time();
                    batch.push_str(&ledger.iamat(i, time));
                    sent.push((i, time));
                }
                c.send(batch.as_bytes());
                for &(i, time) in &sent {
                    let reply = c.read_line_within(REPLY_TIMEOUT);
                    ledger.ack(&server, i, time, &reply);
                    acked2.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(pace.saturating_sub(began.elapsed()));
            }
        });
        Self { stop, acked, handle }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops after the batch in flight (all of whose replies are read and recorded).
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Reads one WHATSAT reply: `Some(AT line)` (then the JSON, up to the empty line ending it) or
/// `None` for a `? ` line.
fn read_whatsat(c: &mut Client) -> Option<Vec<u8>> {
    let first = c.read_line_within(REPLY_TIMEOUT);
    if first.starts_with(b"? ") {
        return None;
    }
    assert!(first.starts_with(b"AT "), "a WHATSAT reply must start with an AT line: {}", show(&first));
    let mut json = Vec::new();
    loop {
        let line = c.read_line_within(REPLY_TIMEOUT);
        if line == b"\n" {
            break;
        }
        json.extend_from_slice(&line);
    }
    assert!(json.starts_with(b"{") && json.ends_with(b"}\n"), "not JSON after the AT line: {}", show(&json));
    Some(first[..first.len() - 1].to_vec())
}

/// Most connections a check opens to one server. Each carries one WHATSAT at a time, so up to
/// this many are in flight at once, and they share one Places request.
const CHECK_CONNECTIONS: usize = 64;

/// The stored AT line at `addr` of each client `ids[i]` for `i` in `which` (None: `? `, that
/// is unknown there, or Places failed). The WHATSATs go out in waves, one per connection, so a
/// wave shares one Places request.
fn stored_lines(addr: SocketAddr, ids: &[String], which: &[usize]) -> Vec<Option<Vec<u8>>> {
    let n = which.len().min(CHECK_CONNECTIONS);
    let mut conns: Vec<Client> = (0..n)
        .map(|_| Client::connect(addr).unwrap_or_else(|e| panic!("check: connect {addr}: {e}")))
        .collect();
    let mut out = Vec::with_capacity(which.len());
    for wave in which.chunks(n.max(1)) {
        for (c, &i) in conns.iter_mut().zip(wave) {
            c.send(format!("WHATSAT {} {WHATSAT_TAIL}\n", ids[i]));
        }
        for c in conns.iter_mut().take(wave.len()) {
            out.push(read_whatsat(c));
        }
    }
    out
}

/// Polls `servers` until each holds, for every client the ledger has a record of, exactly the
/// newest acknowledged AT line, and returns how long that took from `since`. Call it once the
/// writers have stopped. A server holding a record newer than the newest acknowledged, or a
/// different line with the same timestamp, fails at once (nothing like it was sent); anything
/// missing after `timeout` fails with a summary.
fn wait_converged(
    herd: &Herd,
    servers: &[String],
    ledger: &Ledger,
    since: Instant,
    timeout: Duration,
) -> Duration {
    let expected = ledger.expected();
    let all: Vec<usize> = (0..expected.len()).filter(|&i| expected[i].is_some()).collect();
    let mut pending: Vec<(String, Vec<usize>)> = servers.iter().map(|s| (s.clone(), all.clone())).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let addrs: Vec<SocketAddr> = pending.iter().map(|(s, _)| herd.addr(s)).collect();
        let results: Vec<Vec<Option<Vec<u8>>>> = thread::scope(|s| {
            let handles: Vec<_> = pending
                .iter()
                .zip(&addrs)
                .map(|((_, which), &addr)| s.spawn(move || stored_lines(addr, &ledger.ids, which)))
                .collect();
            handles.into_iter().map(|h| h.join().expect("check thread")).collect()
        });
        for ((server, which), got) in pending.iter_mut().zip(results) {
            let mut still = Vec::new();
            for (&i, line) in which.iter().zip(got) {
                let want = expected[i].as_ref().expect("tracked");
                match line {
                    Some(line) if line == *want => {}
                    Some(line) if at_time(&line) >= at_time(want) => panic!(
                        "{server} holds {} for {}, but the newest acknowledged update is {}",
                        show(&line),
                        ledger.ids[i],
                        show(want)
                    ),
                    _ => still.push(i),
                }
            }
            *which = still;
        }
        pending.retain(|(_, which)| !which.is_empty());
        if pending.is_empty() {
            return since.elapsed();
        }
        if Instant::now() >= deadline {
            let summary: Vec<String> = pending
                .iter()
                .map(|(s, which)| {
                    format!("{s} lacks {} of {} (e.g. {})", which.len(), all.len(), ledger.ids[which[0]])
                })
                .collect();
            panic!("not converged within {timeout:?}: {}", summary.join("; "));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Requests of one herd-bench run, and the least time from the start of one run to the next:
/// up to 2,000 requests a second. (A closed loop at full speed outruns the herd's flooding in a
/// debug build on two shared cores: each update costs its origin one reply but every server a
/// few flood receipts, and the backlog of floods, not the crash, would then set the time to
/// converge.)
const BENCH_RUN_REQUESTS: u32 = 200;
const BENCH_RUN_PERIOD: Duration = Duration::from_millis(100);

/// Least time between the starts of two batches of one writer in item 1: with five writers of
/// 8 IAMATs, about 2,000 a second.
const CRASH_PACE: Duration = Duration::from_millis(20);

/// Least time between the starts of two batches of one writer in item 2: with four writers of
/// 8 IAMATs of about 3.1 KB, about 3,200 updates and 10 MB of floods a second.
const STALL_PACE: Duration = Duration::from_millis(10);

/// `herd-bench` as background load: a run of [`BENCH_RUN_REQUESTS`] every
/// [`BENCH_RUN_PERIOD`] against every server (one connection per server, two requests in flight
/// each), so the load is on whenever the test needs it, and each run still ends by itself with
/// its JSON report (herd-bench reports only at its end). A run overlapping a kill sees an error
/// on its connection to the killed server (that connection ends there; herd-bench exits 1):
/// expected.
struct BenchLoop {
    /// 0: keep running; 1: finish the current run and stop; 2: kill the current run and stop.
    stop: Arc<AtomicU8>,
    /// Runs completed so far.
    runs: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Vec<serde_json::Value>>>,
}

impl BenchLoop {
    fn start(herd: &Herd, tag: &str) -> Self {
        let addrs: Vec<String> = herd.names().iter().map(|n| herd.addr(n).to_string()).collect();
        let (dir, tag) = (herd.dir().to_path_buf(), tag.to_string());
        let stop = Arc::new(AtomicU8::new(0));
        let flag = stop.clone();
        let runs = Arc::new(AtomicUsize::new(0));
        let done_runs = runs.clone();
        let handle = thread::spawn(move || {
            let mut reports = Vec::new();
            for run in 0.. {
                if flag.load(Ordering::Relaxed) != 0 {
                    break;
                }
                let began = Instant::now();
                let out = dir.join(format!("bench-{tag}-{run}.json"));
                let err = dir.join(format!("bench-{tag}-{run}.stderr"));
                let mut child = Command::new(HERD_BENCH)
                    .args(["-c", "5", "-d", "2", "-w", "0", "--timeout", "2", "--json"])
                    .args(["-n", &BENCH_RUN_REQUESTS.to_string(), "-t", "0.5"])
                    .args(["--id-prefix", &format!("bench-{tag}-{run}-")])
                    .args(&addrs)
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(&out).expect("bench stdout"))
                    .stderr(std::fs::File::create(&err).expect("bench stderr"))
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawn {HERD_BENCH}: {e}"));
                let mut status = None;
                // A run takes at most 0.5 s plus its 2 s timeout for the last replies.
                let done = wait_until(Duration::from_secs(10), || {
                    status = child.try_wait().expect("try_wait");
                    status.is_some() || flag.load(Ordering::Relaxed) == 2
                });
                if !done || status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        flag.load(Ordering::Relaxed) == 2,
                        "herd-bench run {run} did not end within 10 s"
                    );
                    break;
                }
                let text = std::fs::read_to_string(&out).expect("bench report");
                assert_ne!(status.and_then(|s| s.code()), Some(2), "herd-bench usage error: {text}");
                reports.push(
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("herd-bench report {text:?}: {e}")),
                );
                done_runs.fetch_add(1, Ordering::Relaxed);
                thread::sleep(BENCH_RUN_PERIOD.saturating_sub(began.elapsed()));
            }
            reports
        });
        Self { stop, runs, handle: Some(handle) }
    }

    /// Whether the loop is still running (a failed run ends it with a panic).
    fn running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Runs completed so far.
    fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }

    /// Waits until `more` runs past `from` have completed.
    fn wait_runs(&self, from: usize, more: usize, what: &str) {
        let ok = wait_until(Duration::from_secs(10), || self.runs() >= from + more || !self.running());
        assert!(ok && self.running(), "herd-bench did not complete {more} runs {what}");
    }

    /// Starts no further run; the current one ends by itself.
    fn wind_down(&self) {
        let _ = self.stop.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Lets the current run end and returns every run's report.
    fn finish(mut self) -> Vec<serde_json::Value> {
        self.wind_down();
        match self.handle.take().expect("running").join() {
            Ok(reports) => reports,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for BenchLoop {
    fn drop(&mut self) {
        self.stop.store(2, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits until every writer in `writers` acknowledged at least `more` IAMATs past `from`.
fn wait_progress(writers: &[(String, Writer)], from: &[u64], more: u64, what: &str) {
    let ok = wait_until(Duration::from_secs(10), || {
        writers.iter().zip(from).all(|((_, w), &f)| w.acked() >= f + more)
    });
    let counts: Vec<String> = writers.iter().map(|(s, w)| format!("{s}: {}", w.acked())).collect();
    assert!(ok, "the writers stalled {what}: {}", counts.join(", "));
}

/// One round of item 1: load on every server (`herd-bench` and the tracked writers), `victim`
/// killed with -9, load kept on, `victim` restarted. Returns the time from the restart until
/// every server held every client's newest record, and the reports of the herd-bench runs.
fn crash_round(
    herd: &mut Herd,
    ledger: &Arc<Ledger>,
    victim: &str,
    round: u64,
) -> (Duration, Vec<serde_json::Value>) {
    let names = herd.names();
    let bench = BenchLoop::start(herd, &format!("{round}-{victim}"));
    let mut writers: Vec<(String, Writer)> = names
        .iter()
        .enumerate()
        .map(|(k, s)| (s.clone(), Writer::spawn(ledger, s, herd.addr(s), round * 16 + k as u64, CRASH_PACE)))
        .collect();
    wait_progress(&writers, &[0; 5], 100, "before the kill");
    bench.wait_runs(0, 2, "before the kill");

    // Fence: this test is about what the herd holds, and an update acknowledged by the victim
    // in the instant it is killed may legitimately die with it: nothing is persisted, and a
    // server writes its replies in the same loop turn as its floods, but before them. So the
    // victim's writer stops first, and the kill waits until a sentinel update made at the
    // victim after the writer's last one reached its neighbours. A neighbour holding the
    // sentinel got it over some link from the victim, whose queue had every earlier flood of
    // the victim's ahead of it: written, and on loopback already in a live server's socket.
    let pos = writers.iter().position(|(s, _)| s == victim).expect("victim writer");
    writers.remove(pos).1.finish();
    let fence = Ledger::new(&format!("fence-{round}"), 1, 0);
    let sentinel = fence.write_one(&mut herd.connect(victim), victim, 0);
    let sentinel = &sentinel[..sentinel.len() - 1];
    for n in herd.neighbours(victim) {
        let addr = herd.addr(&n);
        assert!(
            wait_until(Duration::from_secs(5), || stored_lines(addr, &fence.ids, &[0])[0].as_deref()
                == Some(sentinel)),
            "the fence update made at {victim} never reached {n}"
        );
    }

    herd.kill9(victim);
    let killed = Instant::now();
    let (from, runs) = (writers.iter().map(|(_, w)| w.acked()).collect::<Vec<u64>>(), bench.runs());
    wait_progress(&writers, &from, 150, "while the victim was down");
    bench.wait_runs(runs, 3, "while the victim was down");
    let restart = Instant::now();
    let down = killed.elapsed();
    herd.restart(victim);
    let ready = restart.elapsed();
    writers.push((
        victim.to_string(),
        Writer::spawn(ledger, victim, herd.addr(victim), round * 16 + 7, CRASH_PACE),
    ));
    let from: Vec<u64> = writers.iter().map(|(s, w)| if s == victim { 0 } else { w.acked() }).collect();
    let runs = bench.runs();
    wait_progress(&writers, &from, 80, "after the restart");
    bench.wait_runs(runs, 2, "after the restart");
    let stopped = restart.elapsed();
    for (_, w) in writers {
        w.finish();
    }
    bench.wind_down();
    let took = wait_converged(herd, &names, ledger, restart, Duration::from_secs(10));
    eprintln!(
        "crash {victim}: down for {down:?}; serving {ready:?} after the restart began; writers stopped \
         at {stopped:?}; every server held every client's newest record at {took:?}"
    );
    (took, bench.finish())
}

/// Item 1: while `herd-bench` (a run of 200 requests every 100 ms, see [`BenchLoop`]) and one
/// tracked writer per server (about 400 IAMATs a second each, for 300 tracked clients) drive
/// IAMATs at every server, each server in turn is killed with `kill -9` (after a fence, see
/// [`crash_round`]), kept down while the writers at the others make 150 more updates each and
/// three herd-bench runs pass, and restarted with the load still on (the writers and
/// herd-bench go on for a while after the restart, then stop); within two seconds of the
/// restart (counted from the spawn of the new process) every server holds the newest record of
/// every tracked client, byte for byte, read back with WHATSAT (see the module's doc). The load
/// on the killed server fails (herd-bench runs while it is down count an error each: their
/// connection to it); the load on the others goes on: the writers make progress while it is
/// down, and every herd-bench run answered requests and saw no wrong reply. Logging is `warn`:
/// at `info` the load writes hundreds of megabytes of logs.
#[test]
fn crash_and_restart_under_load_loses_nothing() {
    let stub = Stub::start(&[]);
    let mut herd = Herd::with_log_level(DEFAULT_HERD, "warn", &stub.herd_yaml("new", 5000));
    herd.start_all();
    let ledger = Ledger::new("crash", 300, 0);
    let mut times = Vec::new();
    for (round, victim) in herd.names().iter().enumerate() {
        let (took, reports) = crash_round(&mut herd, &ledger, victim, round as u64);
        let mut answered = 0;
        for r in &reports {
            assert_eq!(
                r["errors_by_kind"]["wrong_reply"].as_u64(),
                Some(0),
                "herd-bench saw wrong replies: {r}"
            );
            assert!(r["requests"].as_u64().is_some_and(|n| n > 0), "a herd-bench run got no answer: {r}");
            answered += r["requests"].as_u64().unwrap_or(0);
        }
        assert!(
            reports.iter().any(|r| r["errors"].as_u64().is_some_and(|n| n > 0)),
            "no herd-bench run met the killed {victim}: the load did not span the crash"
        );
        let errors: Vec<String> = reports.iter().map(|r| r["errors"].to_string()).collect();
        eprintln!(
            "crash {victim}: {} herd-bench runs answered {answered} requests; errors per run [{}]",
            reports.len(),
            errors.join(", ")
        );
        times.push((victim.clone(), took));
    }
    for (victim, took) in &times {
        assert!(
            *took < Duration::from_secs(2),
            "after {victim} restarted the herd converged only after {took:?}"
        );
    }
}

/// The servers that are not `name`.
fn others(herd: &Herd, name: &str) -> Vec<String> {
    herd.names().into_iter().filter(|s| s != name).collect()
}

/// Round-trip times of `n` IAMAT probes, round robin over `servers`, one every `gap`.
fn probe_latencies(herd: &Herd, servers: &[String], n: usize, gap: Duration) -> Vec<Duration> {
    let probe = Ledger::new("probe", 1, 0);
    let mut conns: Vec<(String, Client)> = servers.iter().map(|s| (s.clone(), herd.connect(s))).collect();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (server, c) = &mut conns[k % servers.len()];
        let t = Instant::now();
        probe.write_one(c, server, 0);
        out.push(t.elapsed());
        thread::sleep(gap);
    }
    out.sort();
    out
}

/// The `p`-th percentile of sorted `v`.
fn percentile(v: &[Duration], p: usize) -> Duration {
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Item 2, for a stall of `stall`: Smith (three neighbours) is stopped with SIGSTOP while writers
/// at the four other servers flood updates of 400 clients with ~3 KB ids (so the floods fill
/// the kernel's socket buffers towards Smith fast). Checked:
/// - latency: IAMAT probes at the four others, before and during the stall; the median during
///   is at most 3 times the median before, plus 2 ms (for timer noise on a shared machine);
/// - memory: each other server's RSS during the stall stays within 8 MiB of its RSS before
///   (`peer_output` is 1 MiB, so at most three queues of 1 MiB, in vectors that may have doubled;
///   the bytes flooded towards Smith during the stall, about 9 MB a second, are reported and
///   asserted to be more than twice the bound);
/// - the links to Smith are dropped at their output limit: Hill, Campbell and Singleton log it
///   (drops of other links are reported; a `peer_output` much below 1 MiB drops healthy links
///   too, see [`burst_does_not_drop_a_healthy_link`]);
/// - after SIGCONT, Smith is resynced: every server, Smith included, holds every client's
///   newest record (time reported).
fn stalled_peer(stall: Duration) {
    let stub = Stub::start(&[]);
    let extra = format!("{}limits: {{peer_output: 1048576}}\n", stub.herd_yaml("new", 5000));
    let mut herd = Herd::with_log_level(DEFAULT_HERD, "warn", &extra);
    herd.start_all();
    let ledger = Ledger::new("stall", 400, 3000);
    let victim = "Smith";
    let loaded = others(&herd, victim);
    let writers: Vec<(String, Writer)> = loaded
        .iter()
        .enumerate()
        .map(|(k, s)| (s.clone(), Writer::spawn(&ledger, s, herd.addr(s), 100 + k as u64, STALL_PACE)))
        .collect();
    wait_progress(&writers, &[0; 4], 200, "before the stall");

    let before = probe_latencies(&herd, &loaded, 40, Duration::from_millis(5));
    let rss_before: Vec<u64> = loaded.iter().map(|s| rss_kib(herd.pid(s))).collect();
    let acked_before: u64 = writers.iter().map(|(_, w)| w.acked()).sum();

    herd.signal(victim, "STOP");
    let start = Instant::now();
    let mut during = Vec::new();
    let mut rss_max = rss_before.clone();
    while start.elapsed() < stall {
        during.extend(probe_latencies(&herd, &loaded, 4, Duration::from_millis(20)));
        for (m, s) in rss_max.iter_mut().zip(&loaded) {
            *m = (*m).max(rss_kib(herd.pid(s)));
        }
    }
    let acked_during = writers.iter().map(|(_, w)| w.acked()).sum::<u64>() - acked_before;
    for (_, w) in writers {
        w.finish();
    }
    during.sort();

    let (mb, md) = (percentile(&before, 50), percentile(&during, 50));
    eprintln!(
        "stall {stall:?}: probe latency before p50 {mb:?} p90 {:?} max {:?}; during p50 {md:?} p90 {:?} max {:?} \
         ({} probes); factor p50 {:.2}",
        percentile(&before, 90),
        before[before.len() - 1],
        percentile(&during, 90),
        during[during.len() - 1],
        during.len(),
        md.as_secs_f64() / mb.as_secs_f64()
    );
    // Each acknowledged update was newer (unique timestamps; rarely another writer got a later
    // one of the same client in first) and flooded to every link, the
    // one to Smith included; the ids make each AT line about 3.1 KB.
    let flooded_kib = acked_during * (ledger.ids[0].len() as u64 + 60) / 1024;
    for ((s, b), m) in loaded.iter().zip(&rss_before).zip(&rss_max) {
        eprintln!("stall: {s} RSS {b} KiB before, at most {m} KiB during (+{} KiB)", m.saturating_sub(*b));
    }
    eprintln!("stall: {acked_during} updates ({flooded_kib} KiB of floods towards Smith) during the stall");
    assert!(
        md <= mb * 3 + Duration::from_millis(2),
        "IAMAT latency during the stall: p50 {md:?}, before {mb:?}"
    );
    let bound_kib = 8 * 1024;
    assert!(flooded_kib > 2 * bound_kib, "too little load to show the bound: {flooded_kib} KiB");
    for ((s, b), m) in loaded.iter().zip(&rss_before).zip(&rss_max) {
        assert!(
            m.saturating_sub(*b) <= bound_kib,
            "{s} grew from {b} KiB to {m} KiB while Smith was stalled"
        );
    }
    for s in herd.neighbours(victim) {
        assert!(
            wait_until(Duration::from_secs(2), || herd
                .log_contains(&s, b"link to Smith down: output limit of 1048576 bytes reached")),
            "{s} did not log dropping its link to the stalled Smith at its output limit"
        );
    }

    let mut healthy_drops = Vec::new();
    for s in herd.names() {
        for n in herd.neighbours(&s).into_iter().filter(|n| n != victim && s != victim) {
            let count = herd.log_count(&s, &format!("link to {n} down: output limit"));
            if count > 0 {
                healthy_drops.push(format!("{s} dropped {n} {count} times"));
            }
        }
    }
    eprintln!("stall: links between running servers dropped at the output limit: {healthy_drops:?}");

    herd.signal(victim, "CONT");
    let resumed = Instant::now();
    let took = wait_converged(&herd, &herd.names(), &ledger, resumed, Duration::from_secs(30));
    eprintln!("stall: after SIGCONT every server, Smith included, held every newest record at {took:?}");
}

/// Item 2 at CI scale: a 3 s stall. See [`stalled_peer`].
#[test]
fn stalled_peer_is_dropped_bounded_and_resynced() {
    stalled_peer(Duration::from_secs(3));
}

/// Item 2 at full scale, a 10 s stall:
/// `cargo test --test faults stalled_peer_for_ten_seconds -- --ignored --nocapture`.
#[test]
#[ignore = "slow (10 s stall); the 3 s variant runs by default"]
fn stalled_peer_for_ten_seconds() {
    stalled_peer(Duration::from_secs(10));
}

/// Item 3: Hill's neighbours (Jaquez and Smith) are killed. Alone, Hill answers IAMAT and
/// WHATSAT (via the stub); idle, it redials with backoff: over 2 s it uses less than 5% of a
/// core (utime + stime from /proc) and logs at most 10 failed dials per neighbour (the backoff
/// caps at 1 s). Meanwhile Campbell and Singleton (still linked to each other) take updates.
/// When Jaquez and Smith return, Hill's links come back, and every server holds every client's
/// newest record: those made at Hill while apart and those made on the other side.
#[test]
fn server_alone_answers_idles_and_rejoins() {
    let stub = Stub::start(&[]);
    let mut herd = Herd::five(&stub.herd_yaml("new", 5000));
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let ledger = Ledger::new("apart", 40, 0);
    // Before the split: every client known everywhere.
    let mut c = herd.connect("Campbell");
    for i in 0..40 {
        ledger.write_one(&mut c, "Campbell", i);
    }
    drop(c);
    wait_converged(&herd, &herd.names(), &ledger, Instant::now(), Duration::from_secs(10));

    herd.kill9("Jaquez");
    herd.kill9("Smith");
    for n in ["Jaquez", "Smith"] {
        assert!(
            wait_until(Duration::from_secs(5), || herd.log_count("Hill", &format!("link to {n} down")) >= 1),
            "Hill did not notice {n} going down"
        );
    }
    // Alone: IAMAT and WHATSAT answered. Clients 0..20 are updated at Hill, 10..40 on the other
    // side; 10..20 at both, at Hill first for 10..15 and last for 15..20.
    let mut hill = herd.connect("Hill");
    let mut campbell = herd.connect("Campbell");
    let mut singleton = herd.connect("Singleton");
    for i in 0..15 {
        ledger.write_one(&mut hill, "Hill", i);
    }
    for i in 10..40 {
        if i % 2 == 0 {
            ledger.write_one(&mut campbell, "Campbell", i);
        } else {
            ledger.write_one(&mut singleton, "Singleton", i);
        }
    }
    for i in 15..20 {
        ledger.write_one(&mut hill, "Hill", i);
    }
    let at = ledger.write_one(&mut hill, "Hill", 0);
    hill.send(format!("WHATSAT {} 10 5\n", ledger.ids[0]));
    let stored = read_whatsat(&mut hill).expect("Hill alone answers WHATSAT via the stub");
    assert_eq!(show(&stored), show(&at[..at.len() - 1]), "the WHATSAT reply starts with the stored AT line");

    // Idle and alone: CPU and redials over 2 s. The log is flushed within 100 ms of a record.
    thread::sleep(Duration::from_millis(200));
    let pid = herd.pid("Hill");
    let dials =
        |h: &Herd| h.log_count("Hill", "link to Jaquez down") + h.log_count("Hill", "link to Smith down");
    let (ticks0, dials0, t0) = (cpu_ticks(pid), dials(&herd), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (ticks1, window) = (cpu_ticks(pid), t0.elapsed());
    thread::sleep(Duration::from_millis(200));
    let redials = dials(&herd) - dials0;
    let hz = common::clock_ticks_per_second();
    let share = (ticks1 - ticks0) as f64 / hz as f64 / window.as_secs_f64();
    eprintln!(
        "alone: Hill used {} ticks ({:.2}% of a core) over {window:?}, {redials} failed dials to its 2 neighbours",
        ticks1 - ticks0,
        share * 100.0
    );
    assert!(share < 0.05, "Hill alone and idle used {:.1}% of a core", share * 100.0);
    assert!((1..=20).contains(&redials), "{redials} failed dials in {window:?}: no backoff, or no redial");

    let back = Instant::now();
    herd.spawn("Jaquez");
    herd.spawn("Smith");
    herd.wait_ready("Jaquez");
    herd.wait_ready("Smith");
    for n in ["Jaquez", "Smith"] {
        assert!(
            wait_until(Duration::from_secs(5), || herd.log_count("Hill", &format!("link to {n} up")) >= 2),
            "Hill did not redial {n} after it came back"
        );
    }
    let rejoined = back.elapsed();
    let took = wait_converged(&herd, &herd.names(), &ledger, back, Duration::from_secs(10));
    eprintln!(
        "alone: Hill's links up again {rejoined:?} after the neighbours were started; converged at {took:?}"
    );
}

/// Pipelined IAMATs from one client connection in a thread: writes batches of 64 until stopped,
/// the socket fails or `max_lines` are written, counting the lines written whole.
fn pump(
    stream: std::net::TcpStream,
    id: String,
    stop: Arc<AtomicBool>,
    max_lines: usize,
) -> JoinHandle<usize> {
    thread::spawn(move || {
        use std::io::Write;
        let mut stream = stream;
        let _ = stream.set_write_timeout(Some(Duration::from_millis(50)));
        let base = unix_nanos() - 1_000_000_000;
        let mut lines = 0usize;
        while !stop.load(Ordering::Relaxed) && lines < max_lines {
            let mut batch = String::new();
            for k in 0..64 {
                let _ = writeln!(batch, "IAMAT {id} {LOCATION} {}", timestamp(base + (lines + k) as i128));
            }
            let bytes = batch.as_bytes();
            let mut written = 0;
            // Lines of this batch written whole so far.
            let whole = |written: usize| bytes[..written].iter().filter(|&&b| b == b'\n').count();
            while written < bytes.len() {
                match stream.write(&bytes[written..]) {
                    Ok(n) => written += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stop.load(Ordering::Relaxed) {
                            return lines + whole(written);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return lines + whole(written),
                }
            }
            lines += 64;
        }
        lines
    })
}

/// Item 7: SIGTERM while four clients pipeline IAMATs at Hill (which floods them to Jaquez),
/// each at most `max_lines` in all. Every IAMAT Hill logged as received (`c<N> < line`) has
/// its reply, in order, at the client that sent it, and nothing more; every flood Hill logged
/// reaches Jaquez; Hill's log ends with `stopped`; the exit status is 0. The clients read
/// while they send; each reads until end of stream (the server shuts its side after the last
/// reply), then stops sending and closes.
fn sigterm_during_load(max_lines: usize) {
    let mut herd = Herd::new(&[("Hill", &["Jaquez"]), ("Jaquez", &[])], "");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let replies_seen = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for k in 0..4 {
        let c = herd.connect("Hill");
        let addr = c.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let writer =
            pump(c.stream().try_clone().expect("clone"), format!("term-{k}"), stop.clone(), max_lines);
        let seen = replies_seen.clone();
        let reader = thread::spawn(move || {
            let mut c = c;
            let mut replies = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            let end = loop {
                match c.try_read_line(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Some(line)) => {
                        replies.push(line);
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                }
            };
            stop.store(true, Ordering::Relaxed);
            (replies, end)
        });
        clients.push((addr, writer, reader));
    }
    assert!(
        wait_until(Duration::from_secs(10), || replies_seen.load(Ordering::Relaxed) >= 1000),
        "the load did not get going"
    );
    herd.signal("Hill", "TERM");
    let status = herd.wait_exit("Hill", Duration::from_secs(10));

    let messages = herd.log_messages("Hill");
    let (mut total, mut unanswered) = (0, 0);
    for (addr, writer, reader) in clients {
        let (replies, end) = reader.join().expect("reader thread");
        let sent = writer.join().expect("writer thread");
        let opened = format!(" new connection from {addr}");
        let conn = messages
            .iter()
            .find_map(|m| {
                let m = std::str::from_utf8(m).ok()?;
                m.strip_suffix(opened.as_str())?.strip_prefix('c').map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no connection from {addr} in Hill's log"));
        let prefix = format!("c{conn} < ");
        let received: Vec<&[u8]> =
            messages.iter().filter_map(|m| m.strip_prefix(prefix.as_bytes())).collect();
        let closed = format!("c{conn} closed: ");
        let why = messages.iter().find_map(|m| m.strip_prefix(closed.as_bytes())).map(show);
        assert_eq!(
            end,
            Ok(()),
            "client {addr} (c{conn}): the stream did not end cleanly after {} replies ({} IAMATs logged \
             received); Hill closed it with {why:?}",
            replies.len(),
            received.len()
        );
        assert_eq!(
            replies.len(),
            received.len(),
            "client {addr} (c{conn}): Hill logged {} IAMATs received, the client got {} replies",
            received.len(),
            replies.len()
        );
        for (line, reply) in received.iter().zip(&replies) {
            let fields = line.strip_prefix(b"IAMAT ").expect("an IAMAT");
            let tail = [b" ".as_slice(), fields, b"\n"].concat();
            assert!(
                reply.starts_with(b"AT Hill ") && reply.ends_with(&tail),
                "reply {} does not answer {}",
                show(reply),
                show(line)
            );
        }
        unanswered += sent - received.len();
        eprintln!(
            "sigterm: client {addr} (c{conn}) sent {sent} IAMATs; {} logged and answered",
            replies.len()
        );
        total += replies.len();
    }
    assert!(unanswered > 0, "every IAMAT sent was answered: the signal came after the load");
    assert_eq!(status.code(), Some(0), "Hill's exit status after SIGTERM");
    assert_eq!(messages.last().map(|m| show(m)), Some("stopped".to_string()), "the log's last line");
    assert!(messages.iter().any(|m| m.starts_with(b"signal ")), "no shutdown record in the log");
    // Floods computed before the signal were written too.
    let floods: Vec<Vec<u8>> =
        messages.iter().filter_map(|m| m.strip_prefix(b"Jaquez > ").map(<[u8]>::to_vec)).collect();
    let mut missing = floods.len();
    let complete = wait_until(Duration::from_secs(10), || {
        let got: std::collections::HashSet<Vec<u8>> = herd
            .log_messages("Jaquez")
            .into_iter()
            .filter_map(|m| m.windows(3).position(|w| w == b" < ").map(|p| m[p + 3..].to_vec()))
            .collect();
        missing = floods.iter().filter(|f| !got.contains(*f)).count();
        missing == 0
    });
    assert!(complete, "{missing} of {} floods Hill logged never reached Jaquez", floods.len());
    eprintln!(
        "sigterm: {total} replies ({unanswered} IAMATs sent after the last one Hill read) and {} floods \
         delivered; exit status 0; log ends with `stopped`",
        floods.len()
    );
}

/// Item 7 with clients that send less than 1 MiB each (16,000 IAMATs of 57 bytes): what they
/// still send after the signal stays under the server's discard limit. See
/// [`sigterm_during_load`].
#[test]
fn sigterm_during_load_flushes_replies_and_log() {
    sigterm_during_load(16_000);
}

/// Item 7 with clients that keep sending until the server ends their stream (bounded at two
/// million lines). Regression: the server used to close a lingering connection once the client
/// had sent more than 1 MiB after the signal, even with replies computed before the signal still
/// queued for it, so they were lost, sometimes mid-reply (`c<N> closed: more than 1048576 bytes
/// sent after the last reply`). At shutdown the grace period alone now bounds the linger.
#[test]
fn sigterm_while_clients_keep_sending_flushes_replies_and_log() {
    sigterm_during_load(2_000_000);
}

/// A neighbour that reads is never dropped for `peer_output`: a burst of updates that a server
/// reads in one loop turn (here 200 IAMATs of about 1 KB, 200 KB in one write, under the
/// default `read_budget` of 256 KiB) floods more than a 64 KiB `peer_output` to the link before
/// the turn's writes, and the healthy link to Jaquez is dropped (`link to Jaquez down: output
/// limit of 65536 bytes reached`), then redialled and resynced. Regression: `peer_output` used to
/// count everything queued in the turn; like `client_output`, it now counts only once the
/// socket refuses bytes.
#[test]
fn burst_does_not_drop_a_healthy_link() {
    let mut herd = Herd::new(&[("Hill", &["Jaquez"]), ("Jaquez", &[])], "limits: {peer_output: 65536}");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let ledger = Ledger::new("burst", 200, 1000);
    let mut burst = String::new();
    let times: Vec<i128> = (0..200)
        .map(|i| {
            let t = ledger.next_time();
            burst.push_str(&ledger.iamat(i, t));
            t
        })
        .collect();
    let mut c = herd.connect("Hill");
    c.send(burst.as_bytes());
    for (i, t) in times.into_iter().enumerate() {
        let reply = c.read_line();
        ledger.ack("Hill", i, t, &reply);
    }
    // Every update reaches Jaquez (by flood, or by resync after a drop)...
    let last = ledger.expected()[199].clone().expect("acknowledged");
    assert!(
        wait_until(Duration::from_secs(10), || !herd.received("Jaquez", &last).is_empty()),
        "the last update never reached Jaquez"
    );
    // ...but the link must not have been dropped on the way. Hill logs a drop while it handles
    // the line, before its reply, so once the last reply is in its log, so is any drop.
    assert!(
        wait_until(Duration::from_secs(5), || !herd.sent("Hill", &last).is_empty()),
        "Hill's log lacks its last reply"
    );
    assert_eq!(
        herd.log_count("Hill", "link to Jaquez down: output limit"),
        0,
        "Hill dropped its link to Jaquez, which reads"
    );
}
