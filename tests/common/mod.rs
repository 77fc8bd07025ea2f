//! Test harness shared by the integration tests: real `herd` processes on free loopback ports,
//! each test in its own temporary folder, clients that speak raw bytes with a timeout on every
//! read, and polling with a deadline instead of sleeps.
//!
//! Every process a [`Herd`] starts is killed and reaped when the `Herd` is dropped, also when a
//! test panics; a failing test prints the end of each server's log to help diagnose it.

// Each integration test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `herd` binary under test.
pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// How long a server may take to accept its first connection.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Default timeout of one read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The herd of PROTOCOL.md: each server and the neighbours its table lists.
pub const DEFAULT_HERD: &[(&str, &[&str])] = &[
    ("Hill", &["Jaquez", "Smith"]),
    ("Jaquez", &["Hill", "Singleton"]),
    ("Smith", &["Hill", "Campbell", "Singleton"]),
    ("Campbell", &["Smith", "Singleton"]),
    ("Singleton", &["Jaquez", "Smith", "Campbell"]),
];

/// Polls `condition` every few milliseconds until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads one whole WHATSAT reply from `c`: a `? ` line alone, or the AT line then JSON lines
/// up to the empty line that ends it (the JSON holds no empty line: runs of newlines are
/// collapsed). Panics at end of stream or after `timeout`, showing what came.
pub fn read_whatsat_reply(c: &mut Client, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut reply = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match c.try_read_line(left) {
            Ok(Some(line)) => line,
            Ok(None) => panic!("end of stream inside a WHATSAT reply: {}", clip(&reply)),
            Err(e) => panic!("no whole WHATSAT reply within {timeout:?}: {e}; so far: {}", clip(&reply)),
        };
        let end = (line == b"\n" && !reply.is_empty()) || (reply.is_empty() && line.starts_with(b"? "));
        reply.extend_from_slice(&line);
        if end {
            return reply;
        }
    }
}

/// Bytes shown readably, at most the first and last 300.
pub fn clip(bytes: &[u8]) -> String {
    if bytes.len() <= 700 {
        return show(bytes);
    }
    format!(
        "{} [... {} bytes ...] {}",
        show(&bytes[..300]),
        bytes.len() - 600,
        show(&bytes[bytes.len() - 300..])
    )
}

/// Bytes shown readably in assertion messages.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Now, in nanoseconds since the epoch.
pub fn unix_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as i128
}

/// A POSIX timestamp with nine decimals, as a client writes it.
pub fn timestamp(nanos: i128) -> String {
    assert!(nanos >= 0);
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// Parses a difference field `+S.NNNNNNNNN` / `-S.NNNNNNNNN` into nanoseconds, insisting on the
/// exact shape of PROTOCOL.md: a sign, digits, a point and exactly nine decimals.
pub fn parse_difference(field: &[u8]) -> Result<i128, String> {
    let text = std::str::from_utf8(field).map_err(|_| format!("not ASCII: {}", show(field)))?;
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => return Err(format!("difference {text:?} has no sign")),
    };
    let (int, frac) = rest.split_once('.').ok_or_else(|| format!("difference {text:?} has no point"))?;
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("difference {text:?}: bad integer part"));
    }
    if frac.len() != 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("difference {text:?}: not exactly nine decimals"));
    }
    let n = int.parse::<i128>().map_err(|e| e.to_string())? * 1_000_000_000
        + frac.parse::<i128>().map_err(|e| e.to_string())?;
    Ok(if negative { -n } else { n })
}

/// A free loopback port: bind port 0, read the port, let the listener go.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports (all listeners are held until every port is chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect()
}

/// A folder of its own under the system's temporary folder, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new, empty, uniquely named folder.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "herd-test-{}-{n}-{}",
            std::process::id(),
            unix_nanos() % 1_000_000_000
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A client connection speaking raw bytes. Every read has a deadline.
pub struct Client {
    stream: TcpStream,
    /// Bytes read; `buf[start..]` not yet handed out.
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl Client {
    /// Connects to `addr` (within a few seconds).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { stream, buf: Vec::new(), start: 0, eof: false })
    }

    /// The socket, for what the helpers do not cover.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// This end's address (the server logs it as the peer's).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Writes all of `bytes` in one `write_all`.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("write to server");
    }

    /// Half-closes: the server sees end of stream.
    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown write");
    }

    /// Reads more bytes into the buffer, waiting until `deadline`. Ok(false) at end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One line, `\n` included; Ok(None) at end of stream with nothing buffered; an error on
    /// timeout, on a reset, or at end of stream in the middle of a line.
    pub fn try_read_line(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut scanned = self.start;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                // Hand out whole lines and move the rest down once per read, not once per line
                // (that was quadratic in the lines of one 64 KiB read).
                let end = scanned + i + 1;
                let line = self.buf[self.start..end].to_vec();
                self.start = end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            if self.start > 0 {
                self.buf.drain(..self.start);
                scanned -= self.start;
                self.start = 0;
            }
            if !self.fill(deadline)? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("end of stream inside a line: {}", show(&self.buf)),
                ));
            }
        }
    }

    /// One line, `\n` included, within [`READ_TIMEOUT`]; panics otherwise.
    pub fn read_line(&mut self) -> Vec<u8> {
        self.read_line_within(READ_TIMEOUT)
    }

    /// One line, `\n` included, within `timeout`; panics otherwise.
    pub fn read_line_within(&mut self, timeout: Duration) -> Vec<u8> {
        match self.try_read_line(timeout) {
            Ok(Some(line)) => line,
            Ok(None) => panic!("end of stream where a line was expected"),
            Err(e) => panic!("no line within {timeout:?}: {e}; buffered: {}", show(&self.buf[self.start..])),
        }
    }

    /// `n` lines, each with its `\n`, all within `timeout`.
    pub fn read_lines(&mut self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.try_read_line(left) {
                    Ok(Some(line)) => line,
                    Ok(None) => panic!("end of stream after {i} of {n} lines"),
                    Err(e) => panic!("only {i} of {n} lines within {timeout:?}: {e}"),
                }
            })
            .collect()
    }

    /// Everything up to end of stream, within `timeout`. An error on timeout or reset.
    pub fn try_read_to_eof(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        self.buf.drain(..self.start);
        self.start = 0;
        while self.fill(deadline)? {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Everything up to end of stream, within `timeout`; panics otherwise.
    pub fn read_to_eof(&mut self, timeout: Duration) -> Vec<u8> {
        match self.try_read_to_eof(timeout) {
            Ok(all) => all,
            Err(e) => panic!("no end of stream within {timeout:?}: {e}; buffered: {}", show(&self.buf)),
        }
    }

    /// Sends `line` and reads its one-line answer.
    pub fn round_trip(&mut self, line: &[u8]) -> Vec<u8> {
        self.send(line);
        self.read_line()
    }
}

/// One server's place in a herd under test.
struct Member {
    name: String,
    port: u16,
    neighbours: Vec<String>,
}

/// A set of `herd` processes sharing one generated `config.yml` in a folder of their own.
pub struct Herd {
    members: Vec<Member>,
    children: BTreeMap<String, Child>,
    /// How many times each server was started (names its output files).
    starts: BTreeMap<String, u32>,
    env: Vec<(String, String)>,
    config: PathBuf,
    log_dir: PathBuf,
    dir: TempDir,
}

impl Herd {
    /// The default herd of PROTOCOL.md; `extra_yaml` is appended to the config.
    pub fn five(extra_yaml: &str) -> Self {
        Self::new(DEFAULT_HERD, extra_yaml)
    }

    /// A herd of the given servers and neighbour lists on free ports, logs in `<tmp>/logs`.
    /// Nothing is started yet.
    pub fn new(topology: &[(&str, &[&str])], extra_yaml: &str) -> Self {
        let dir = TempDir::new();
        let log_dir = dir.path().join("logs");
        Self::with_log_dir(dir, log_dir, topology, extra_yaml)
    }

    /// Like [`Herd::new`] with the log level `level` (`logging.level`).
    pub fn with_log_level(topology: &[(&str, &[&str])], level: &str, extra_yaml: &str) -> Self {
        let dir = TempDir::new();
        let log_dir = dir.path().join("logs");
        Self::build(dir, log_dir, Some(level), topology, extra_yaml)
    }

    /// Like [`Herd::new`] with the logs in `log_dir` (which may not exist yet).
    pub fn with_log_dir(
        dir: TempDir,
        log_dir: PathBuf,
        topology: &[(&str, &[&str])],
        extra_yaml: &str,
    ) -> Self {
        Self::build(dir, log_dir, None, topology, extra_yaml)
    }

    fn build(
        dir: TempDir,
        log_dir: PathBuf,
        level: Option<&str>,
        topology: &[(&str, &[&str])],
        extra_yaml: &str,
    ) -> Self {
        let ports = free_ports(topology.len());
        let members: Vec<Member> = topology
            .iter()
            .zip(ports)
            .map(|((name, neighbours), port)| Member {
                name: name.to_string(),
                port,
                neighbours: neighbours.iter().map(|n| n.to_string()).collect(),
            })
            .collect();
        let mut yaml = String::from("ports:\n");
        for m in &members {
            yaml += &format!("  {}: {}\n", m.name, m.port);
        }
        yaml += "neighbors:\n";
        for m in &members {
            yaml += &format!("  {}: [{}]\n", m.name, m.neighbours.join(", "));
        }
        let level = level.map(|l| format!(", level: {l}")).unwrap_or_default();
        yaml += &format!("logging: {{dir: '{}'{level}}}\n", log_dir.display());
        yaml += extra_yaml;
        yaml += "\n";
        let config = dir.path().join("config.yml");
        fs::write(&config, yaml).expect("write config");
        Self {
            members,
            children: BTreeMap::new(),
            starts: BTreeMap::new(),
            env: Vec::new(),
            config,
            log_dir,
            dir,
        }
    }

    /// Sets an environment variable for the servers started from now on.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The test's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this herd"))
    }

    /// The servers' names, in topology order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The neighbours of `name` (made symmetric, as the server does).
    pub fn neighbours(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self.member(name).neighbours.clone();
        for m in &self.members {
            if m.neighbours.iter().any(|n| n == name) && !out.contains(&m.name) {
                out.push(m.name.clone());
            }
        }
        out
    }

    /// The port of `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.member(name).port
    }

    /// The address of `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port(name)))
    }

    /// A new client connection to `name`.
    pub fn connect(&self, name: &str) -> Client {
        Client::connect(self.addr(name)).unwrap_or_else(|e| panic!("connect to {name}: {e}"))
    }

    /// Starts `name` without waiting for it.
    pub fn spawn(&mut self, name: &str) -> u32 {
        assert!(!self.children.contains_key(name), "{name} is already running");
        let n = self.starts.entry(name.to_string()).or_default();
        *n += 1;
        let stdout = File::create(self.dir.path().join(format!("{name}.{n}.stdout"))).expect("stdout file");
        let stderr = File::create(self.dir.path().join(format!("{name}.{n}.stderr"))).expect("stderr file");
        let mut command = Command::new(HERD);
        command
            .arg("--config")
            .arg(&self.config)
            .arg(name)
            .current_dir(self.dir.path())
            .env_remove("GOOGLE_PLACES_API_KEY")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("spawn {HERD}: {e}"));
        let pid = child.id();
        self.children.insert(name.to_string(), child);
        pid
    }

    /// The stderr of the latest run of `name`.
    pub fn stderr(&self, name: &str) -> String {
        let n = self.starts.get(name).copied().unwrap_or(0);
        fs::read_to_string(self.dir.path().join(format!("{name}.{n}.stderr"))).unwrap_or_default()
    }

    /// Starts `name` and waits until it serves connections.
    pub fn start(&mut self, name: &str) -> u32 {
        let pid = self.spawn(name);
        self.wait_ready(name);
        pid
    }

    /// Starts every server, then waits until each serves connections.
    pub fn start_all(&mut self) {
        for name in self.names() {
            self.spawn(&name);
        }
        for name in self.names() {
            self.wait_ready(&name);
        }
    }

    /// Waits until `name` accepts a connection and closes it after end of stream: its reactor
    /// is running. Panics, with the server's stderr, if it exits or does not get there in time.
    pub fn wait_ready(&mut self, name: &str) {
        let addr = self.addr(name);
        let ready = wait_until(START_TIMEOUT, || {
            if let Some(status) = self.try_status(name) {
                panic!("{name} exited with {status} while starting; stderr:\n{}", self.stderr(name));
            }
            let Ok(mut probe) = Client::connect(addr) else { return false };
            probe.shutdown_write();
            probe.try_read_to_eof(Duration::from_secs(2)).is_ok()
        });
        assert!(ready, "{name} did not serve on {addr} within {START_TIMEOUT:?}");
    }

    /// The process id of the running `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.children.get(name).unwrap_or_else(|| panic!("{name} is not running")).id()
    }

    /// The exit status of `name` if it has exited (it stays recorded until restarted).
    pub fn try_status(&mut self, name: &str) -> Option<ExitStatus> {
        self.children.get_mut(name).and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits for `name` to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self.try_status(name);
            status.is_some()
        });
        assert!(exited, "{name} did not exit within {timeout:?}");
        status.expect("status")
    }

    /// `kill -9`: the process dies at once, without flushing anything.
    pub fn kill9(&mut self, name: &str) {
        let mut child = self.children.remove(name).unwrap_or_else(|| panic!("{name} is not running"));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// Starts `name` again (on the same port, with the same config) after it was stopped.
    pub fn restart(&mut self, name: &str) -> u32 {
        if let Some(mut old) = self.children.remove(name) {
            let _ = old.kill();
            let _ = old.wait();
        }
        self.start(name)
    }

    /// Sends `signal` (e.g. "TERM", "STOP", "CONT") with the `kill` command.
    pub fn signal(&self, name: &str, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid(name).to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {name} failed: {status}");
    }

    /// The log file of `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The log of `name` so far (empty if not created yet).
    pub fn log(&self, name: &str) -> Vec<u8> {
        fs::read(self.log_path(name)).unwrap_or_default()
    }

    /// The messages of the log of `name`, without the time stamp and level.
    pub fn log_messages(&self, name: &str) -> Vec<Vec<u8>> {
        self.log(name)
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| match l.windows(2).position(|w| w == b"] ") {
                Some(i) => l[i + 2..].to_vec(),
                None => l.to_vec(),
            })
            .collect()
    }

    /// Whether the log of `name` contains `needle` anywhere (cheap on a large log).
    pub fn log_contains(&self, name: &str, needle: &[u8]) -> bool {
        self.log(name).windows(needle.len()).any(|w| w == needle)
    }

    /// How many log messages of `name` contain `needle`.
    pub fn log_count(&self, name: &str, needle: &str) -> usize {
        let needle = needle.as_bytes();
        self.log_messages(name).iter().filter(|m| m.windows(needle.len()).any(|w| w == needle)).count()
    }

    /// The ids of the connections on which `name` logged receiving exactly `line` (one entry
    /// per time it was received). The log writes input as `c<N> < <line escaped>`.
    pub fn received(&self, name: &str, line: &[u8]) -> Vec<u64> {
        self.log_io(name, b" < ", line)
    }

    /// The ids of the connections on which `name` logged sending exactly `line`.
    pub fn sent(&self, name: &str, line: &[u8]) -> Vec<u64> {
        self.log_io(name, b" > ", line)
    }

    fn log_io(&self, name: &str, arrow: &[u8], line: &[u8]) -> Vec<u64> {
        let mut want = arrow.to_vec();
        want.extend(line.escape_ascii());
        self.log_messages(name)
            .iter()
            .filter_map(|m| {
                let rest = m.strip_prefix(b"c")?;
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                if digits == 0 || rest[digits..] != want[..] {
                    return None;
                }
                std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
            })
            .collect()
    }

    /// Waits until every running server logged its outbound link to each neighbour as up at
    /// least `times` times.
    pub fn wait_links_up(&self, times: usize, timeout: Duration) {
        for name in self.children.keys() {
            for n in self.neighbours(name) {
                let needle = format!("link to {n} up");
                assert!(
                    wait_until(timeout, || self.log_count(name, &needle) >= times),
                    "{name} did not log {needle:?} {times} time(s) within {timeout:?}"
                );
            }
        }
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            for m in &self.members {
                let log = String::from_utf8_lossy(&self.log(&m.name)).into_owned();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("----- end of {} -----\n{}", self.log_path(&m.name).display(), tail.join("\n"));
                let stderr = self.stderr(&m.name);
                if !stderr.is_empty() {
                    eprintln!("----- stderr of {} -----\n{stderr}", m.name);
                }
            }
        }
    }
}

/// Runs `herd` with `args` to completion (killed after `timeout`) with the working folder
/// `dir`; returns its status, stdout and stderr.
pub fn run_herd(dir: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("run{n}.stdout"));
    let err_path = dir.join(format!("run{n}.stderr"));
    let mut child = Command::new(HERD)
        .args(args)
        .current_dir(dir)
        .env_remove("GOOGLE_PLACES_API_KEY")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn herd");
    let mut status = None;
    let done = wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("herd {args:?} still running after {timeout:?}");
    }
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    (status.expect("status"), read(&out_path), read(&err_path))
}

/// Checks that `reply` is `AT <server> <difference> <tail>` byte for byte, where `tail` is the
/// IAMAT's client id, location and timestamp with single spaces and the `\n`, and that the
/// difference has PROTOCOL.md's shape and lies in `[low, high]` nanoseconds. Returns it.
pub fn expect_at(reply: &[u8], server: &str, tail: &[u8], low: i128, high: i128) -> i128 {
    let head = format!("AT {server} ");
    let Some(rest) = reply.strip_prefix(head.as_bytes()) else {
        panic!("reply {} does not start with {head:?}", show(reply));
    };
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        panic!("reply {} has no field after the difference", show(reply));
    };
    let (difference, after) = (&rest[..space], &rest[space + 1..]);
    assert_eq!(
        show(after),
        show(tail),
        "reply {} must end with the IAMAT's fields byte for byte",
        show(reply)
    );
    let nanos = parse_difference(difference).unwrap_or_else(|e| panic!("reply {}: {e}", show(reply)));
    assert!(
        (low..=high).contains(&nanos),
        "difference {} ({nanos} ns) outside the measured window [{low}, {high}] ns",
        show(difference)
    );
    nanos
}

/// The `places-stub` binary (built with the `stub` feature, on by default).
#[cfg(feature = "stub")]
pub const PLACES_STUB: &str = env!("CARGO_BIN_EXE_places-stub");

/// The key a [`Stub`] accepts; give it to the herd with [`Stub::herd_yaml`].
pub const STUB_KEY: &str = "stub-key";

/// The `places:` line of a herd config that sends Places requests to `https://127.0.0.1:PORT`
/// and trusts the roots in `ca_file` (besides Mozilla's), with the API `api` (`new` or `legacy`)
/// and the deadline `timeout_ms`. No key: add `api_key:` yourself, or use [`Stub::herd_yaml`].
pub fn places_yaml(port: u16, ca_file: &Path, api: &str, timeout_ms: u64) -> String {
    format!(
        "places: {{api: {api}, endpoint: 'https://127.0.0.1:{port}', ca_file: '{}', timeout_ms: {timeout_ms}}}\n",
        ca_file.display()
    )
}

/// A running `places-stub` on a free loopback port, with its port file, certificate and
/// console output in a folder of its own. Killed and reaped on drop (its output is shown when a
/// test fails).
#[cfg(feature = "stub")]
pub struct Stub {
    child: Child,
    port: u16,
    dir: TempDir,
}

#[cfg(feature = "stub")]
impl Stub {
    /// Starts the stub with `flags` (`--delay-ms 300`, `--close`, ...) on `127.0.0.1:0`,
    /// accepting [`STUB_KEY`], and waits until it has written its port file.
    pub fn start(flags: &[&str]) -> Self {
        let dir = TempDir::new();
        let port_file = dir.path().join("stub.port");
        let out = File::create(dir.path().join("stub.stdout")).expect("stub stdout file");
        let err = File::create(dir.path().join("stub.stderr")).expect("stub stderr file");
        let child = Command::new(PLACES_STUB)
            .args(["--listen", "127.0.0.1:0", "--key", STUB_KEY, "--port-file"])
            .arg(&port_file)
            .arg("--cert-out")
            .arg(dir.path().join("stub-cert.pem"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PLACES_STUB}: {e}"));
        let mut stub = Self { child, port: 0, dir };
        let mut exited = None;
        let ready = wait_until(START_TIMEOUT, || {
            exited = stub.child.try_wait().expect("try_wait");
            exited.is_some() || fs::read_to_string(&port_file).is_ok_and(|p| p.ends_with('\n'))
        });
        assert!(ready && exited.is_none(), "places-stub did not start ({exited:?}): {}", stub.stderr());
        stub.port = fs::read_to_string(&port_file).expect("port file").trim().parse().expect("port number");
        stub
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its self-signed certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("stub-cert.pem")
    }

    /// Config lines for a herd that asks this stub, with its key: `api_key:` and `places:`.
    pub fn herd_yaml(&self, api: &str, timeout_ms: u64) -> String {
        format!("api_key: {STUB_KEY}\n{}", places_yaml(self.port, &self.cert(), api, timeout_ms))
    }

    /// Its stdout so far: `handshake N from ADDR` and `request N METHOD PATH -> STATUS` lines.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stub.stdout")).unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stub.stderr")).unwrap_or_default()
    }

    /// The stdout lines that start with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.stdout().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }

    /// TLS handshakes completed so far (one per connection the herd opened and kept).
    pub fn handshakes(&self) -> usize {
        self.lines_starting("handshake ").len()
    }

    /// Requests received so far (each is logged before its answer is sent).
    pub fn requests(&self) -> usize {
        self.lines_starting("request ").len()
    }
}

#[cfg(feature = "stub")]
impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let out = self.stdout();
            let lines: Vec<&str> = out.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!("----- end of places-stub stdout -----\n{}", tail.join("\n"));
            let err = self.stderr();
            if !err.is_empty() {
                eprintln!("----- places-stub stderr -----\n{err}");
            }
        }
    }
}

/// Mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
pub fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lng2 - lng1).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The keys of a legacy Nearby Search result that the herd converts, in Google's (alphabetical)
/// order.
pub const LEGACY_RESULT_KEYS: [&str; 8] =
    ["business_status", "geometry", "name", "place_id", "rating", "types", "user_ratings_total", "vicinity"];

// ----- Process figures from /proc (Linux), for tests/hostile.rs and any test that checks for
// leaks. Both panic if the process is gone, so a crash is not mistaken for a small figure. -----

/// The resident set size of process `pid`, in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// How many file descriptors process `pid` has open (sockets, files, epoll...): the entries of
/// `/proc/PID/fd`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}")).count()
}

// ----- CPU time from /proc (Linux), for tests/faults.rs (a server that must idle). -----

/// CPU time process `pid` has used so far, user plus system, in clock ticks (fields 14 and 15
/// of `/proc/PID/stat`); see [`clock_ticks_per_second`]. Panics if the process is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_else(|| panic!("no ')' in /proc/{pid}/stat"));
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no field {n} in /proc/{pid}/stat"))
    };
    field(14) + field(15)
}

/// Clock ticks per second of [`cpu_ticks`] (`getconf CLK_TCK`; Linux fixes it at 100 for
/// user space, the fallback).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}
