//! Hostile clients and Places faults (issue 5, items 4 and 5), over real `herd` processes on
//! loopback.
//!
//! **Hostile clients.** Each attack runs in one thread of its own against `Hill` while a probe
//! client measures ordinary IAMAT round trips, alternately to `Hill` and to `Control`, a second
//! `herd` process that nobody attacks: [`PROBES`] pairs paced [`PROBE_PACE`] apart with no
//! attack (the baseline), then at least as many during the attack. Hill's `VmRSS` is read after
//! every pair. Each test asserts:
//! - Hill's p99 round trip during the attack is below [`LATENCY_FACTOR`] × the larger of Hill's
//!   baseline p99 and Control's p99 during the attack, or below [`LATENCY_FLOOR`], whichever is
//!   larger. Why: the baseline p99 on loopback is a fraction of a millisecond, but this machine
//!   has 2 cores shared by the server, the probe, the attacker and other engineers' builds (load
//!   averages of 8 were seen while these tests were written); then any round trip can wait tens
//!   of milliseconds for a core, and a fixed bound either fails on noise or is too loose to mean
//!   anything. Control runs the same binary on the same cores at the same moment, so its p99
//!   measures that noise (the attacker's own CPU use included), and only what happens inside
//!   Hill (a stall behind the hostile connection) sets Hill apart from it. The factor 10 and the
//!   50 ms floor were asked for in the issue's test plan; a stall of the kind guarded against (the server serving one
//!   connection to the end, or blocking on it) lasts as long as an attack step, from tens of
//!   milliseconds (reading a 64 MiB stream whole) to seconds;
//! - the peak `VmRSS` during the attack stays within a stated allowance above the `VmRSS` just
//!   before it (each test says why its allowance);
//! - the attack's own expectations (replies byte for byte, closes, counts), and that the server
//!   still serves afterwards and holds no connection it should have closed.
//!
//! **Places faults.** `places-stub` misbehaves on purpose (answers past `places.timeout_ms`,
//! resets mid-body, error statuses, bodies that are not JSON; and, as churn rather than a fault,
//! a new connection and a chunked body per answer). Many WHATSATs, for distinct queries so that
//! none shares an upstream request, each get their answer (`? ` and the line for a failure) at
//! once or at the deadline, one warning each in the log; afterwards the server holds no more file
//! descriptors than before its first Places request plus the idle pool (8), and its `VmRSS` grew
//! by less than 2 MiB.
//!
//! The tests of this file run one at a time (see [`serial`]): latency measured while another
//! test's attack runs on the same two cores would measure that attack. The figures are printed
//! (`cargo test --test hostile -- --nocapture` shows them). Full-scale variants are `#[ignore]`d;
//! each one's doc comment gives the command that runs it.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The attacked server and an unattacked one whose latency measures the machine's noise; no
/// links: the attacks are on one server, not on flooding.
const PROBED: &[(&str, &[&str])] = &[("Hill", &[]), ("Control", &[])];

const LOCATION: &str = "+34.068930-118.445127";

/// Probe round trips per measurement (so the p99 is the second slowest).
const PROBES: usize = 200;
/// Pause between probe round trips, so that the probes spread over the attack.
const PROBE_PACE: Duration = Duration::from_millis(5);
/// Hill's p99 during an attack must stay below this many times the larger of its baseline p99
/// and Control's p99 during the attack ...
const LATENCY_FACTOR: u32 = 10;
/// ... or below this, whichever is larger (see the file's doc comment for why).
const LATENCY_FLOOR: Duration = Duration::from_millis(50);
/// Longest a measurement during an attack goes on, whatever the attack does.
const SAMPLE_CAP: Duration = Duration::from_secs(120);

/// `limits.max_line` by default (README's limits table); the server echoes the first
/// [`OVERLONG_ECHO`] bytes of a longer line.
const MAX_LINE: usize = 4096;
const OVERLONG_ECHO: usize = 128;

const MIB: u64 = 1 << 20;

/// Serialises the tests of this file (a poisoned lock is fine: the test that held it failed).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Hill` and `Control` with `extra_yaml`, started.
fn hill(extra_yaml: &str) -> Herd {
    let mut herd = Herd::new(PROBED, extra_yaml);
    herd.start_all();
    herd
}

/// The p99 of `samples`: the value that 99% of them do not exceed.
fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// A tiny deterministic generator (xorshift64) for the binary lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Connections the server opened minus those it closed, from its log (`c<N> new connection`
/// and `c<N> closed: ...`).
fn open_in_log(herd: &Herd) -> i64 {
    let messages = herd.log_messages("Hill");
    let has = |m: &[u8], needle: &[u8]| m.windows(needle.len()).any(|w| w == needle);
    let opened = messages.iter().filter(|m| has(m, b" new connection from ")).count();
    let closed = messages.iter().filter(|m| m.starts_with(b"c") && has(m, b" closed: ")).count();
    opened as i64 - closed as i64
}

/// The ordinary clients whose round trips are measured: one to Hill, one to Control.
struct Probe {
    hill: Client,
    control: Client,
    pid: u32,
}

/// Latencies of a run of probes, and Hill's peak `VmRSS` meanwhile.
struct Sample {
    hill: Vec<Duration>,
    control: Vec<Duration>,
    rss_peak_kib: u64,
}

/// One IAMAT round trip to `server` on `c`, its reply checked byte for byte. The same client
/// id each time with a newer timestamp, so the server's table does not grow with the probes.
fn probe_round_trip(c: &mut Client, server: &str) -> Duration {
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let line = format!("IAMAT probe {LOCATION} {ts}\n");
    let before = unix_nanos();
    let t = Instant::now();
    let reply = c.round_trip(line.as_bytes());
    let took = t.elapsed();
    let tail = format!("probe {LOCATION} {ts}\n");
    expect_at(&reply, server, tail.as_bytes(), before - sent, unix_nanos() - sent);
    took
}

impl Probe {
    fn new(herd: &Herd) -> Self {
        Self { hill: herd.connect("Hill"), control: herd.connect("Control"), pid: herd.pid("Hill") }
    }

    fn round_trip(&mut self) -> Duration {
        probe_round_trip(&mut self.hill, "Hill")
    }

    /// Paced pairs of round trips until at least `min` are done and `more()` says no more (or
    /// [`SAMPLE_CAP`] passes).
    fn sample(&mut self, min: usize, mut more: impl FnMut() -> bool) -> Sample {
        let start = Instant::now();
        let mut s =
            Sample { hill: Vec::with_capacity(min), control: Vec::with_capacity(min), rss_peak_kib: 0 };
        while (s.hill.len() < min || more()) && start.elapsed() < SAMPLE_CAP {
            s.hill.push(probe_round_trip(&mut self.hill, "Hill"));
            s.control.push(probe_round_trip(&mut self.control, "Control"));
            s.rss_peak_kib = s.rss_peak_kib.max(rss_kib(self.pid));
            thread::sleep(PROBE_PACE);
        }
        s
    }
}

/// What an attack thread and the measuring thread tell each other.
#[derive(Default)]
struct Flags {
    /// The attack has begun: measuring "during" may start.
    started: AtomicBool,
    /// The attack has done its stated amount of work at least once; it goes on (repeating)
    /// until `stop`.
    worked: AtomicBool,
    /// Measuring is over: the attack ends.
    stop: AtomicBool,
}

impl Flags {
    fn start(&self) {
        self.started.store(true, Ordering::Release);
    }
    fn worked(&self) {
        self.worked.store(true, Ordering::Release);
    }
    fn has_worked(&self) -> bool {
        self.worked.load(Ordering::Acquire)
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Runs `attack` on a thread of its own while probing `herd`'s Hill; asserts the latency and
/// memory bounds of the file's doc comment (`rss_allowance_kib` above the `VmRSS` before the
/// attack) and that Hill still answers afterwards. Returns what the attack returned.
fn under_attack<R: Send + 'static>(
    herd: &Herd,
    what: &str,
    rss_allowance_kib: u64,
    attack: impl FnOnce(&Flags) -> R + Send + 'static,
) -> R {
    let pid = herd.pid("Hill");
    let mut probe = Probe::new(herd);
    for _ in 0..20 {
        probe.round_trip();
    }
    let baseline = probe.sample(PROBES, || false);
    let rss_before = rss_kib(pid);

    let flags = Arc::new(Flags::default());
    let shared = Arc::clone(&flags);
    let attacker = thread::Builder::new()
        .name(format!("attack: {what}"))
        .spawn(move || attack(&shared))
        .expect("spawn the attack thread");
    assert!(
        wait_until(Duration::from_secs(10), || flags.started.load(Ordering::Acquire)
            || attacker.is_finished()),
        "{what}: the attack did not start"
    );
    let during = probe.sample(PROBES, || !flags.has_worked() && !attacker.is_finished());
    flags.stop.store(true, Ordering::Release);
    let result = attacker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(flags.has_worked(), "{what}: the attack ended before doing its work");

    let (base, worst, control) = (p99(&baseline.hill), p99(&during.hill), p99(&during.control));
    let bound = (base.max(control) * LATENCY_FACTOR).max(LATENCY_FLOOR);
    let max = during.hill.iter().max().copied().unwrap_or_default();
    eprintln!(
        "hostile [{what}]: Hill's probe p99 {base:?} before, {worst:?} during (x{:.1}; max {max:?}; {} \
         probes), Control's p99 {:?} before, {control:?} during; bound {bound:?}; VmRSS {rss_before} KiB \
         before, peak {} KiB during (+{} KiB)",
        worst.as_secs_f64() / base.as_secs_f64(),
        during.hill.len(),
        p99(&baseline.control),
        during.rss_peak_kib,
        during.rss_peak_kib.saturating_sub(rss_before),
    );
    assert!(during.hill.len() >= PROBES, "{what}: only {} probes during the attack", during.hill.len());
    assert!(
        worst < bound,
        "{what}: Hill's probe p99 {worst:?} during the attack, over {bound:?} (Hill's baseline p99 {base:?}, \
         Control's p99 during {control:?})"
    );
    assert!(
        during.rss_peak_kib <= rss_before + rss_allowance_kib,
        "{what}: VmRSS reached {} KiB, over {rss_before} KiB + {rss_allowance_kib} KiB",
        during.rss_peak_kib
    );
    probe.round_trip();
    result
}

// ---------------------------------------------------------------------------------------------
// A stream with no newline.

/// Pause between two streams of [`stream_without_newline`].
const STREAM_PAUSE: Duration = Duration::from_millis(20);

/// What [`stream_without_newline`] sent.
#[derive(Debug, Default)]
struct Streamed {
    /// Bytes the kernel took from the attacker, over all connections.
    offered: u64,
    connections: u64,
    /// The most one connection took before the server cut it (with what sat in the kernel's
    /// socket buffers on both sides).
    most_per_connection: u64,
}

/// Tries to send a stream of `len` bytes with no newline (and no white space) at `addr`, as one
/// endless line: the server must answer with `? ` and the line's first [`OVERLONG_ECHO`] bytes,
/// then close the connection long before `len` bytes (after the reply it reads and discards at
/// most 1 MiB, README's limits table). Again on a new connection, until stopped.
fn stream_without_newline(addr: SocketAddr, len: u64, flags: &Flags) -> Streamed {
    let chunk: Vec<u8> = (0..64 << 10).map(|i| b'a' + (i % 26) as u8).collect();
    let mut echo = b"? ".to_vec();
    echo.extend_from_slice(&chunk[..OVERLONG_ECHO]);
    echo.push(b'\n');
    let mut s = Streamed::default();
    while s.connections == 0 || !flags.stopped() {
        let mut c = Client::connect(addr).expect("connect");
        flags.start();
        let mut stream: &TcpStream = c.stream();
        let mut accepted = 0u64;
        let cut = loop {
            match stream.write(&chunk) {
                Ok(n) => accepted += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
            assert!(accepted < len, "the server took a whole {len}-byte line without closing");
        };
        // A timeout (10 s, see `Client::connect`) would mean the server stopped reading without
        // closing.
        assert!(
            matches!(cut.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "after {accepted} bytes: {cut}"
        );
        s.offered += accepted;
        s.connections += 1;
        s.most_per_connection = s.most_per_connection.max(accepted);
        match c.try_read_line(Duration::from_secs(5)) {
            Ok(Some(line)) => assert_eq!(show(&line), show(&echo), "the reply to an over-long line"),
            other => panic!("no `?` reply to the over-long line: {other:?}"),
        }
        match c.try_read_line(Duration::from_secs(5)) {
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("after the `?` reply, not the end of the connection: {other:?}"),
        }
        flags.worked();
        // A pause between streams: each one costs this machine several MiB of copying into
        // socket buffers that the reset then discards, and the machine is shared.
        thread::sleep(STREAM_PAUSE);
    }
    s
}

fn no_newline_stream(len: u64) {
    let _serial = serial();
    let herd = hill("");
    let addr = herd.addr("Hill");
    // The line buffer is bounded by max_line and reads by the 64 KiB read buffer: nothing of
    // the stream should stay; 8 MiB covers allocator noise.
    let what = format!("{} MiB streams with no newline", len / MIB);
    let s = under_attack(&herd, &what, 8 << 10, move |f| stream_without_newline(addr, len, f));
    eprintln!(
        "hostile [{what}]: {} streams cut, {} MiB taken in all, at most {} KiB taken by one",
        s.connections,
        s.offered / MIB,
        s.most_per_connection >> 10
    );
    let over = format!("(over {MAX_LINE} bytes)");
    assert!(
        wait_until(Duration::from_secs(2), || herd.log_count("Hill", &over) as u64 == s.connections),
        "Hill logged {} over-long lines for {} connections",
        herd.log_count("Hill", &over),
        s.connections
    );
    assert!(wait_until(Duration::from_secs(2), || open_in_log(&herd) == 0), "connections left open");
}

/// Streams of 64 MiB with no newline (the 1 GiB stream at CI scale), one after another while
/// the probe measures.
#[test]
fn stream_with_no_newline_is_answered_and_cut_64_mib() {
    no_newline_stream(64 * MIB);
}

/// Streams of 1 GiB. Run with
/// `cargo test --test hostile -- --ignored stream_with_no_newline_is_answered_and_cut_1_gib`.
#[test]
#[ignore = "full scale: 1 GiB streams; run explicitly"]
fn stream_with_no_newline_is_answered_and_cut_1_gib() {
    no_newline_stream(1 << 30);
}

// ---------------------------------------------------------------------------------------------
// NUL and other binary bytes.

/// Lines read and checked by [`binary_lines`].
const BINARY_LINES: u64 = 5000;

/// Sends lines of binary bytes (a NUL first, so none is a command or blank; then any byte but
/// `\n`) in batches, reading each batch's replies: each must be `? `, the line byte for byte,
/// `\n`. At least [`BINARY_LINES`], then on until stopped. Returns the count and the connection.
fn binary_lines(addr: SocketAddr, flags: &Flags) -> (u64, Client) {
    let mut c = Client::connect(addr).expect("connect");
    flags.start();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Every byte value but `\n` at least once.
    let mut lines: Vec<Vec<u8>> = vec![(0..=255u8).filter(|&b| b != b'\n').collect()];
    let mut done = 0u64;
    while done < BINARY_LINES || !flags.stopped() {
        while lines.len() < 64 {
            let len = (rng.next() % 300) as usize;
            let mut line = vec![0u8];
            line.extend((0..len).map(|_| rng.next() as u8).map(|b| if b == b'\n' { 0 } else { b }));
            lines.push(line);
        }
        let mut batch = Vec::new();
        for l in &lines {
            batch.extend_from_slice(l);
            batch.push(b'\n');
        }
        c.send(&batch);
        for (l, reply) in lines.iter().zip(c.read_lines(lines.len(), Duration::from_secs(10))) {
            // The herd takes `\r\n` as a terminator too (tests/protocol.rs): a final `\r` is
            // not echoed.
            let mut want = b"? ".to_vec();
            want.extend_from_slice(l.strip_suffix(b"\r").unwrap_or(l));
            want.push(b'\n');
            assert_eq!(show(&reply), show(&want), "the reply to a binary line");
        }
        done += lines.len() as u64;
        lines.clear();
        if done >= BINARY_LINES {
            flags.worked();
        }
    }
    (done, c)
}

#[test]
fn nul_and_binary_bytes_answered_byte_for_byte_and_connection_stays_open() {
    let _serial = serial();
    let herd = hill("");
    let addr = herd.addr("Hill");
    // Lines are handled straight from the read buffer; replies are read as they come.
    let (lines, mut c) = under_attack(&herd, "binary lines", 8 << 10, move |f| binary_lines(addr, f));
    eprintln!("hostile [binary lines]: {lines} lines answered byte for byte");
    // The same connection still serves ordinary lines.
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let before = unix_nanos();
    let reply = c.round_trip(format!("IAMAT after-binary {LOCATION} {ts}\n").as_bytes());
    expect_at(
        &reply,
        "Hill",
        format!("after-binary {LOCATION} {ts}\n").as_bytes(),
        before - sent,
        unix_nanos() - sent,
    );
}

// ---------------------------------------------------------------------------------------------
// Idle connections.

/// The soft and hard limits on open files of this process (`/proc/self/limits`); the server
/// inherits them.
fn open_files_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next()?.parse().ok()?;
    let hard = fields.next()?.parse().ok()?;
    Some((soft, hard))
}

/// How many idle connections fit under the open-files limit, trying to raise the soft limit to
/// the hard one with util-linux `prlimit` (std has no setrlimit) if `wanted` does not fit. Both
/// this process and the server hold one descriptor per connection, plus a few hundred others.
fn idle_connections_that_fit(wanted: usize) -> usize {
    const SPARE: u64 = 256;
    let Some((soft, hard)) = open_files_limits() else {
        eprintln!("hostile [idle connections]: cannot read /proc/self/limits; trying {wanted}");
        return wanted;
    };
    let mut soft = soft;
    if soft < wanted as u64 + SPARE && hard > soft {
        let raised = std::process::Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), &format!("--nofile={hard}:{hard}")])
            .status()
            .is_ok_and(|s| s.success());
        if raised && let Some((now, _)) = open_files_limits() {
            soft = now;
        }
    }
    let fit = (soft.saturating_sub(SPARE) as usize).min(wanted);
    if fit < wanted {
        eprintln!(
            "hostile [idle connections]: the open-files limit is {soft}: {fit} connections, not {wanted}"
        );
    }
    fit
}

fn idle_connections(wanted: usize) {
    let _serial = serial();
    let n = idle_connections_that_fit(wanted);
    assert!(n >= 100, "the open-files limit leaves room for only {n} connections; raise it (ulimit -n)");
    let herd = hill("");
    let pid = herd.pid("Hill");
    let addr = herd.addr("Hill");
    let fds_before = fd_count(pid);
    // Each idle connection costs the server a connection record and a slab entry, no buffers
    // (the framing and output buffers are empty and unallocated): a few hundred bytes. 4 KiB
    // each (socket buffers live in the kernel, not in VmRSS) plus 8 MiB of allocator noise.
    let allowance = (8 << 10) + n as u64 * 4;
    let conns = under_attack(&herd, &format!("{n} idle connections"), allowance, move |flags| {
        flags.start();
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
            conns.push(c);
        }
        // Worked once the server holds every one of them.
        let held = wait_until(Duration::from_secs(20), || fd_count(pid) > fds_before + n);
        assert!(held, "Hill holds {} descriptors, not {} + {n}", fd_count(pid), fds_before);
        flags.worked();
        while !flags.stopped() {
            thread::sleep(Duration::from_millis(10));
        }
        conns
    });
    // None of them was dropped: a sample of them is served.
    for (i, mut c) in conns.iter().enumerate().step_by((n / 50).max(1)) {
        let ts = timestamp(unix_nanos() - 1_000_000_000);
        c.write_all(format!("IAMAT idle-{i} {LOCATION} {ts}\n").as_bytes())
            .expect("write on an idle connection");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let mut reply = [0u8; 9];
        c.read_exact(&mut reply).unwrap_or_else(|e| panic!("idle connection {i} not served: {e}"));
        assert_eq!(&reply, b"AT Hill +");
    }
    drop(conns);
    let fds_after = || fd_count(pid);
    assert!(
        wait_until(Duration::from_secs(10), || fds_after() <= fds_before),
        "Hill holds {} descriptors after the idle connections closed, {fds_before} before",
        fds_after()
    );
    assert!(
        wait_until(Duration::from_secs(2), || open_in_log(&herd) == 0),
        "connections left open in the log"
    );
    eprintln!("hostile [{n} idle connections]: descriptors back to {fds_before} after they closed");
}

/// 2,000 idle connections (the 10,000 at CI scale).
#[test]
fn idle_connections_2000_do_not_slow_others() {
    idle_connections(2000);
}

/// The full 10,000. Run with
/// `cargo test --test hostile -- --ignored idle_connections_10000_do_not_slow_others`.
#[test]
#[ignore = "slow: 10,000 connections; run explicitly"]
fn idle_connections_10000_do_not_slow_others() {
    idle_connections(10_000);
}

// ---------------------------------------------------------------------------------------------
// Slow senders.

/// Drives `k` connections from this one thread, each sending an IAMAT one byte every `pace`;
/// no reply may come before the line's `\n`, and each reply's difference must be measured from
/// the arrival of that `\n`. Round after round until stopped. Returns the rounds done.
fn slow_senders(addr: SocketAddr, k: usize, pace: Duration, flags: &Flags) -> u64 {
    let mut conns: Vec<Client> = (0..k).map(|_| Client::connect(addr).expect("connect")).collect();
    flags.start();
    let mut rounds = 0u64;
    loop {
        let ts_secs = unix_nanos() / 1_000_000_000 - 1;
        let lines: Vec<String> = (0..k).map(|i| format!("IAMAT slow{i} +1.0+1.0 {ts_secs}\n")).collect();
        let longest = lines.iter().map(String::len).max().unwrap_or(0);
        let mut last_byte_at = vec![0i128; k];
        for j in 0..longest {
            if flags.stopped() && flags.has_worked() {
                return rounds;
            }
            for (i, c) in conns.iter_mut().enumerate() {
                let line = lines[i].as_bytes();
                if j + 1 == line.len() {
                    // The line is not complete yet: nothing may have been answered.
                    match c.try_read_line(Duration::from_millis(1)) {
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                        other => panic!("slow{i}: before its `\\n`: {other:?}"),
                    }
                    last_byte_at[i] = unix_nanos();
                }
                if let Some(&b) = line.get(j) {
                    c.send([b]);
                }
            }
            thread::sleep(pace);
        }
        let sent = ts_secs * 1_000_000_000;
        for (i, c) in conns.iter_mut().enumerate() {
            let reply = c.read_line();
            let tail = format!("slow{i} +1.0+1.0 {ts_secs}\n");
            expect_at(&reply, "Hill", tail.as_bytes(), last_byte_at[i] - sent, unix_nanos() - sent);
        }
        rounds += 1;
        flags.worked();
    }
}

fn slow_clients(k: usize, pace: Duration) {
    let _serial = serial();
    let herd = hill("");
    let addr = herd.addr("Hill");
    // A partial line is at most one IAMAT per connection.
    let what = format!("{k} clients sending a byte every {pace:?}");
    let rounds = under_attack(&herd, &what, 8 << 10, move |f| slow_senders(addr, k, pace, f));
    eprintln!("hostile [{what}]: {rounds} round(s), every line answered once complete");
}

/// Twenty clients, one byte each every 50 ms (the one-byte-a-second client at CI scale).
#[test]
fn slow_senders_are_answered_when_lines_complete_without_stalling_others() {
    slow_clients(20, Duration::from_millis(50));
}

/// One byte a second. Run with `cargo test --test hostile -- --ignored
/// slow_senders_one_byte_a_second_are_answered_without_stalling_others`.
#[test]
#[ignore = "slow: about 30 s; run explicitly"]
fn slow_senders_one_byte_a_second_are_answered_without_stalling_others() {
    slow_clients(20, Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// Connect and reset.

/// Opens connections and closes each with a reset (SO_LINGER 0; std cannot set it, tokio, a
/// dev-dependency already, can): some right after connecting, some in the middle of a line, some
/// right after a whole IAMAT whose reply then meets a reset socket (always the same client id,
/// so the server's table of clients does not grow with the count). At least `min`, then on
/// until stopped. Returns how many.
fn connect_and_reset(addr: SocketAddr, min: u64, flags: &Flags) -> u64 {
    use tokio::io::AsyncWriteExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("tokio runtime");
    runtime.block_on(async {
        let mut n = 0u64;
        while n < min || !flags.stopped() {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            flags.start();
            match n % 3 {
                0 => {}
                1 => s.write_all(b"IAMAT half-a-line").await.expect("write"),
                _ => {
                    let ts = timestamp(unix_nanos() - 1_000_000_000);
                    s.write_all(format!("IAMAT reset {LOCATION} {ts}\n").as_bytes()).await.expect("write");
                }
            }
            s.set_zero_linger().expect("SO_LINGER 0");
            drop(s);
            n += 1;
            if n >= min {
                flags.worked();
            }
        }
        n
    })
}

fn resets(min: u64) {
    let _serial = serial();
    let herd = hill("");
    let pid = herd.pid("Hill");
    let addr = herd.addr("Hill");
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);
    // Nothing of a reset connection should stay.
    let n = under_attack(&herd, "connect and reset", 8 << 10, move |f| connect_and_reset(addr, min, f));
    assert!(
        wait_until(Duration::from_secs(10), || fd_count(pid) <= fds_before),
        "Hill holds {} descriptors after {n} resets, {fds_before} before",
        fd_count(pid)
    );
    assert!(
        wait_until(Duration::from_secs(2), || open_in_log(&herd) == 0),
        "the log shows {} connections still open after {n} resets",
        open_in_log(&herd)
    );
    let opened = herd.log_count("Hill", " new connection from ");
    let rss_after = rss_kib(pid);
    eprintln!(
        "hostile [connect and reset]: {n} resets, {opened} connections logged opened and as many \
         closed; descriptors {fds_before} before, {} after; VmRSS {rss_before} KiB before the \
         probe, {rss_after} KiB after",
        fd_count(pid)
    );
}

/// 2,000 resets at least.
#[test]
fn connect_and_reset_leaves_nothing_behind() {
    resets(2000);
}

/// 100,000 resets. Run with
/// `cargo test --test hostile -- --ignored connect_and_reset_100000_leaves_nothing_behind`.
#[test]
#[ignore = "slow: 100,000 connections; run explicitly"]
fn connect_and_reset_100000_leaves_nothing_behind() {
    resets(100_000);
}

// ---------------------------------------------------------------------------------------------
// WHATSATs from a client that never reads (needs places-stub).

/// `limits.client_output` for the WHATSAT hog.
#[cfg(feature = "stub")]
const HOG_OUTPUT: usize = 1 << 20;

/// Connection after connection, pipelines WHATSATs and never reads; each connection must be
/// closed by the server (its replies pass `client_output`) within 30 s. At least one, then on
/// until stopped. Returns the connections closed and the most WHATSAT bytes one of them took.
#[cfg(feature = "stub")]
fn whatsat_hog(addr: SocketAddr, flags: &Flags) -> (u64, u64) {
    let batch = "WHATSAT hog 10 20\n".repeat(1000).into_bytes();
    let (mut closed, mut most) = (0u64, 0u64);
    while closed == 0 || !flags.stopped() {
        let c = Client::connect(addr).expect("connect");
        let mut s: &TcpStream = c.stream();
        s.set_write_timeout(Some(Duration::from_millis(50))).expect("write timeout");
        flags.start();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut written, mut at) = (0u64, 0usize);
        loop {
            assert!(
                Instant::now() < deadline,
                "a client that never reads still open after {written} bytes of WHATSATs"
            );
            match s.write(&batch[at..]) {
                Ok(n) => {
                    written += n as u64;
                    at = (at + n) % batch.len();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    if flags.stopped() && closed > 0 {
                        return (closed, most);
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
                        "{e}"
                    );
                    break;
                }
            }
        }
        closed += 1;
        most = most.max(written);
        flags.worked();
    }
    (closed, most)
}

#[cfg(feature = "stub")]
#[test]
fn whatsat_flood_from_a_client_that_never_reads_is_bounded_and_closed() {
    let _serial = serial();
    let stub = Stub::start(&[]);
    let yaml = format!("{}limits: {{client_output: {HOG_OUTPUT}}}\n", stub.herd_yaml("legacy", 5000));
    let herd = hill(&yaml);
    let addr = herd.addr("Hill");
    let mut c = herd.connect("Hill");
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let at = c.round_trip(format!("IAMAT hog {LOCATION} {ts}\n").as_bytes());
    // The queued replies are bounded by client_output (the buffer's capacity may reach twice
    // that), plus TLS and JSON work space; 16 MiB above that covers allocator noise.
    let allowance = 2 * (HOG_OUTPUT as u64 >> 10) + (16 << 10);
    let (closed, most) = under_attack(&herd, "WHATSATs never read", allowance, move |f| whatsat_hog(addr, f));
    let logged = format!("output limit of {HOG_OUTPUT} bytes reached");
    assert!(
        wait_until(Duration::from_secs(2), || herd.log_count("Hill", &logged) as u64 == closed),
        "{closed} hogs closed, {} logged as over the output limit",
        herd.log_count("Hill", &logged)
    );
    eprintln!(
        "hostile [WHATSATs never read]: {closed} connection(s) closed at the output limit, at most {} KiB \
         of WHATSATs taken from one; {} Places requests",
        most >> 10,
        stub.requests()
    );
    // Another client's WHATSAT is answered in full.
    c.send(b"WHATSAT hog 10 2\n");
    let mut reply = Vec::new();
    while !(reply.ends_with(b"}\n\n")) {
        reply.extend(c.read_line());
    }
    assert!(reply.starts_with(&at), "{}", show(&reply));
    assert!(wait_until(Duration::from_secs(2), || open_in_log(&herd) == 1), "hog connections left open");
}

// ---------------------------------------------------------------------------------------------
// Places faults.

/// Connections each carrying one WHATSAT at a time (WHATSATs on one connection wait for each
/// other), so this many requests are in flight at once (below `places.max_in_flight`, 64).
#[cfg(feature = "stub")]
const PLACES_WAVE: usize = 32;

/// The same for answers past the deadline: the stub keeps each connection for its whole delay
/// after the herd gave up on it, and serves at most 256 at once.
#[cfg(feature = "stub")]
const DEADLINE_WAVE: usize = 16;

/// `--delay-ms` of the stub for answers past the deadline: longer than the deadline (300 ms)
/// plus the slack allowed, so that every answer in time is the deadline's.
#[cfg(feature = "stub")]
const STUB_DELAY: &str = "3000";

/// Idle Places connections the server may keep for reuse (README: up to 8).
#[cfg(feature = "stub")]
const PLACES_POOL: usize = 8;

/// What one Places fault run is expected to give.
#[cfg(feature = "stub")]
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// `? ` and the WHATSAT for each, soon after it is sent (well before the deadline).
    Failure,
    /// `? ` at the deadline (`places.timeout_ms`), not before.
    Deadline,
    /// A whole reply for each.
    Reply,
}

/// Sends `n` WHATSATs for distinct queries (none shares an upstream request) to a server whose
/// Places is `places-stub` with `flags`, `width` at a time, and checks each answer and
/// when it came; then that the server's descriptors return to what they were before (plus the
/// idle pool) and how much its `VmRSS` grew.
#[cfg(feature = "stub")]
fn places_faults(what: &str, flags: &[&str], timeout_ms: u64, expect: Expect, n: usize, width: usize) {
    let _serial = serial();
    let stub = Stub::start(flags);
    let mut herd = Herd::new(&[("Hill", &[])], &stub.herd_yaml("new", timeout_ms));
    herd.start("Hill");
    let pid = herd.pid("Hill");
    let mut conns: Vec<Client> = (0..width).map(|_| herd.connect("Hill")).collect();
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let at = conns[0].round_trip(format!("IAMAT faulty {LOCATION} {ts}\n").as_bytes());
    let timeout = Duration::from_millis(timeout_ms);
    // Answers at the deadline come within `slack` after it. Failures and replies come within
    // `at_once` of the WHATSAT: a TLS handshake and a request, 32 at a time on a loaded machine
    // (load averages of 15 were seen), and far below the 5 s deadline those runs use, so the
    // deadline did not answer them.
    let slack = Duration::from_secs(2);
    let at_once = Duration::from_secs(3);
    let mut next = 0usize;
    let mut slowest = Duration::ZERO;
    let mut fastest = Duration::MAX;
    let mut wave = |count: usize| {
        let mut sent = Vec::new();
        for c in conns.iter_mut().take(count) {
            // Radii 1.00, 1.01, ... km: a distinct query each.
            let line = format!("WHATSAT faulty {}.{:02} 1", 1 + next / 100, next % 100);
            next += 1;
            // The time before the write: the server may read the line before `send` returns.
            let t = Instant::now();
            c.send(format!("{line}\n"));
            sent.push((line, t));
        }
        for (c, (line, t)) in conns.iter_mut().zip(sent) {
            let reply = match expect {
                Expect::Reply => {
                    let mut reply = Vec::new();
                    while !reply.ends_with(b"}\n\n") {
                        reply.extend(c.read_line_within(timeout));
                    }
                    assert!(reply.starts_with(&at), "{what}: {line}: {}", show(&reply));
                    reply
                }
                Expect::Failure | Expect::Deadline => {
                    let reply = c.read_line_within(timeout + slack);
                    assert_eq!(show(&reply), show(format!("? {line}\n").as_bytes()), "{what}");
                    reply
                }
            };
            let took = t.elapsed();
            drop(reply);
            slowest = slowest.max(took);
            fastest = fastest.min(took);
            let within = if expect == Expect::Deadline { timeout + slack } else { at_once };
            assert!(took <= within, "{what}: {line} answered after {took:?}, over {within:?}");
            if expect == Expect::Deadline {
                assert!(took >= timeout, "{what}: {line} answered after {took:?}, before the deadline");
            }
        }
    };
    // Descriptors before any Places connection exists; memory after a warm-up wave (the TLS
    // configuration and first buffers are made on first use).
    let fds_before = fd_count(pid);
    wave(width);
    let rss_before = rss_kib(pid);
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let count = left.min(width);
        wave(count);
        left -= count;
    }
    let elapsed = start.elapsed();
    let settled = wait_until(Duration::from_secs(5), || fd_count(pid) <= fds_before + PLACES_POOL);
    let (fds_after, rss_after) = (fd_count(pid), rss_kib(pid));
    eprintln!(
        "hostile [Places {what}]: {n} WHATSATs in {elapsed:?}, answered in {fastest:?} to {slowest:?}; \
         descriptors {fds_before} before, {fds_after} after; VmRSS {rss_before} KiB before, {rss_after} KiB \
         after ({:+} KiB); {} upstream requests",
        rss_after as i64 - rss_before as i64,
        stub.requests()
    );
    assert!(
        settled,
        "{what}: {fds_after} descriptors after {n} requests, {fds_before} before any (+{PLACES_POOL} allowed)"
    );
    // Each request's connection, TLS session and buffers are freed: what is left is the
    // allocator's. A Places connection leaked per request (its TLS session alone is tens of KiB)
    // would pass this many times over; smaller leaks show in the 1000-request variant's figures.
    let growth_bound = 2 << 10;
    assert!(
        rss_after <= rss_before + growth_bound,
        "{what}: VmRSS grew from {rss_before} KiB to {rss_after} KiB over {n} requests"
    );
    if expect != Expect::Reply {
        // Failures are warned of with their cause, but repeated ones only once per interval with
        // a count (README: a failing upstream cannot flood the log): at least one warning, and
        // no more than one per interval of the run, plus the first and a count line.
        let total = n + width;
        let intervals = (elapsed.as_secs() / herd::core::WARN_INTERVAL.as_secs()) as usize;
        // The log is flushed on a timer: wait for the first warning before counting.
        wait_until(Duration::from_secs(2), || herd.log_count("Hill", "Places request") >= 1);
        let warned = herd.log_count("Hill", "Places request");
        assert!(
            (1..=intervals + 3).contains(&warned),
            "{what}: {warned} failure warnings for {total} failed requests in {elapsed:?}"
        );
    }
    if expect != Expect::Deadline {
        assert!(stub.requests() > n, "{what}: only {} upstream requests for {n} WHATSATs", stub.requests());
    }
}

#[cfg(feature = "stub")]
const FAULTS_CI: usize = 200;

#[cfg(feature = "stub")]
#[test]
fn places_slow_answers_past_the_deadline() {
    places_faults(
        "delay past the deadline",
        &["--delay-ms", STUB_DELAY],
        300,
        Expect::Deadline,
        FAULTS_CI,
        DEADLINE_WAVE,
    );
}

#[cfg(feature = "stub")]
#[test]
fn places_resets_mid_body() {
    places_faults("reset mid-body", &["--reset-mid-body"], 5000, Expect::Failure, FAULTS_CI, PLACES_WAVE);
}

#[cfg(feature = "stub")]
#[test]
fn places_error_statuses() {
    places_faults("HTTP 500", &["--status", "500"], 5000, Expect::Failure, FAULTS_CI, PLACES_WAVE);
    places_faults("HTTP 429", &["--status", "429"], 5000, Expect::Failure, FAULTS_CI, PLACES_WAVE);
}

#[cfg(feature = "stub")]
#[test]
fn places_garbage_bodies() {
    places_faults("garbage body", &["--garbage"], 5000, Expect::Failure, FAULTS_CI, PLACES_WAVE);
}

/// Not a fault, but connection churn: a new TLS connection per request, chunked bodies.
#[cfg(feature = "stub")]
#[test]
fn places_closing_after_each_chunked_answer() {
    places_faults(
        "close after each chunked answer",
        &["--close", "--chunked"],
        5000,
        Expect::Reply,
        FAULTS_CI,
        PLACES_WAVE,
    );
}

/// A thousand of each fault. Run with
/// `cargo test --test hostile -- --ignored places_thousand_faults_of_each_kind`.
#[cfg(feature = "stub")]
#[test]
#[ignore = "slow: 5,000 WHATSATs; run explicitly"]
fn places_thousand_faults_of_each_kind() {
    places_faults(
        "delay past the deadline",
        &["--delay-ms", STUB_DELAY],
        300,
        Expect::Deadline,
        1000,
        DEADLINE_WAVE,
    );
    places_faults("reset mid-body", &["--reset-mid-body"], 5000, Expect::Failure, 1000, PLACES_WAVE);
    places_faults("HTTP 500", &["--status", "500"], 5000, Expect::Failure, 1000, PLACES_WAVE);
    places_faults("garbage body", &["--garbage"], 5000, Expect::Failure, 1000, PLACES_WAVE);
    places_faults(
        "close after each chunked answer",
        &["--close", "--chunked"],
        5000,
        Expect::Reply,
        1000,
        PLACES_WAVE,
    );
}
