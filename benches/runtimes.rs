//! The mio reactor and its tokio twin side by side, over real loopback sockets, each driving the
//! same sans-IO `Node`. Servers run in this process on their own threads, pinned to core 0; the
//! load (this thread, and `places-stub`, which it starts) runs on core 1, so both runtimes get
//! the same treatment. Five groups, each with a function `mio` and a function `tokio`:
//! `round_trip` (one IAMAT and its reply on one connection), `pipelined` (256 IAMATs written at
//! once on one connection, all replies read), `connections` (64 connections each sending one
//! IAMAT, all replies read), `chain` (an IAMAT written to A until C's flood of it reaches a fake
//! neighbour of C, across the directed chain A -> B -> C) and `whatsat` (a WHATSAT answered
//! through `places-stub` over a kept-alive TLS connection). No logger is installed, so the
//! servers log nothing. Run everything with `cargo bench --bench runtimes`, one group with e.g.
//! `cargo bench --bench runtimes -- round_trip`, one runtime with `-- /mio`; a quick pass with
//! `-- --quick`. Quote ratios measured in one run, never absolute times.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use herd::config::Limits;
use herd::core::{Node, NodeConfig};
use herd::driver::Endpoints;
use herd::driver::mio::{Reactor, Stopper};
use herd::places::Endpoint;
use herd::places::PlacesApi;
use herd::places::client::Target;

mod twin;

/// The two drivers of the same core.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Mio,
    Tokio,
}

const KINDS: [Kind; 2] = [Kind::Mio, Kind::Tokio];

impl Kind {
    /// The benchmark function's name within each group.
    fn name(self) -> &'static str {
        match self {
            Kind::Mio => "mio",
            Kind::Tokio => "tokio",
        }
    }
}

/// Longest wait for any one reply, connection or start-up: a broken server fails the bench
/// rather than hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Core of the server threads, and of the load (this thread and `places-stub`).
const SERVER_CORE: usize = 0;
const LOAD_CORE: usize = 1;

/// The cores this process may use, read once before any thread is pinned (a pinned thread
/// only sees its own core, and its children inherit that).
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: OnceLock<Vec<core_affinity::CoreId>> = OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Pins the calling thread to the `index`th core when there are at least two; threads it
/// spawns afterwards inherit the pin.
fn pin(index: usize) {
    let cores = cores();
    if cores.len() >= 2 {
        let _ = core_affinity::set_for_current(cores[index]);
    }
}

/// A server on its own thread, stopped (and its thread joined) on drop.
struct Server {
    addr: SocketAddr,
    handle: Option<Handle>,
}

enum Handle {
    Mio { stopper: Stopper, thread: JoinHandle<io::Result<()>> },
    Tokio(twin::Running),
}

/// What a launcher thread hands back once its server listens.
enum Started {
    Mio(SocketAddr, Stopper),
    Tokio(twin::Running),
}

/// Starts a `kind` server for `node`. A launcher thread pinned to the server core starts it, so
/// every thread of the server (the mio reactor, which is the launcher itself; the twin's runtime
/// thread, which the launcher spawns; a resolver) runs there.
fn start(kind: Kind, node: Node, endpoints: Endpoints, places: Target) -> Server {
    let limits = Limits::default();
    let (tx, rx) = mpsc::channel();
    let launcher = thread::Builder::new()
        .name(format!("{}-launcher", kind.name()))
        .spawn(move || {
            pin(SERVER_CORE);
            match kind {
                Kind::Mio => {
                    let reactor = match Reactor::bind(node, endpoints, limits, places) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = tx.send(reactor.local_addr().map(|a| Started::Mio(a, reactor.stopper())));
                    reactor.run()
                }
                Kind::Tokio => {
                    let _ = tx.send(twin::spawn(node, endpoints, limits, places).map(Started::Tokio));
                    Ok(())
                }
            }
        })
        .expect("spawn the launcher thread");
    let started = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the launcher thread reports")
        .unwrap_or_else(|e| panic!("{} server failed to start: {e}", kind.name()));
    let (addr, handle) = match started {
        Started::Mio(addr, stopper) => (addr, Handle::Mio { stopper, thread: launcher }),
        Started::Tokio(running) => {
            let _ = launcher.join();
            (running.addr, Handle::Tokio(running))
        }
    };
    Server { addr, handle: Some(handle) }
}

impl Server {
    fn stop(mut self) {
        self.shut_down();
    }

    /// Stops the server as SIGTERM would and joins its thread.
    fn shut_down(&mut self) {
        let result = match self.handle.take() {
            Some(Handle::Mio { stopper, thread }) => {
                stopper.stop();
                thread.join().unwrap_or_else(|_| Err(io::Error::other("the mio reactor panicked")))
            }
            Some(Handle::Tokio(running)) => running.stop(),
            None => Ok(()),
        };
        if let Err(e) = result
            && !thread::panicking()
        {
            panic!("server failed: {e}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A node named `name` with these neighbours and no Places key.
fn node(name: &str, neighbours: &[&str]) -> Node {
    Node::new(NodeConfig::new(name, neighbours.iter().map(|s| s.to_string()).collect()), Instant::now())
}

/// Places settings for a server whose WHATSATs never reach Places.
fn no_places() -> Target {
    Target {
        api: PlacesApi::New,
        endpoint: Endpoint::parse("https://127.0.0.1:9").expect("a valid URL"),
        key: None,
        tls: Err("no Places in this benchmark".into()),
    }
}

fn endpoints(peers: Vec<SocketAddr>) -> Endpoints {
    Endpoints { listen: SocketAddr::from(([127, 0, 0, 1], 0)), peers }
}

/// Appends an IAMAT for `client` with a timestamp newer than every earlier one in this process,
/// so every IAMAT is an update that is stored (and flooded, where there are neighbours). Returns
/// the timestamp field.
fn push_iamat(out: &mut Vec<u8>, client: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let time = format!("{}.{:09}", 1_700_000_000 + seq / 1_000_000_000, seq % 1_000_000_000);
    writeln!(out, "IAMAT {client} +34.068930-118.445127 {time}").expect("writing to a Vec cannot fail");
    time
}

/// A blocking client connection that reads replies into its own buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out.
    taken: usize,
    scratch: Box<[u8]>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the server");
        Self::new(stream)
    }

    fn new(stream: TcpStream) -> Self {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        Self {
            stream,
            buf: Vec::with_capacity(64 << 10),
            taken: 0,
            scratch: vec![0; 64 << 10].into_boxed_slice(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Reads more bytes into `buf`, first dropping what was handed out.
    fn fill(&mut self) {
        if self.taken > 0 {
            self.buf.drain(..self.taken);
            self.taken = 0;
        }
        let n = self.stream.read(&mut self.scratch).expect("read from the server");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&self.scratch[..n]);
    }

    /// The next `n` lines, `\n` included, reading as needed.
    fn lines(&mut self, n: usize) -> &[u8] {
        let (mut seen, mut end, mut scan) = (0, 0, 0);
        loop {
            let start = self.taken;
            while seen < n {
                match self.buf[start + scan..].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        scan += i + 1;
                        end = scan;
                        seen += 1;
                    }
                    None => {
                        scan = self.buf.len() - start;
                        break;
                    }
                }
            }
            if seen == n {
                self.taken = start + end;
                return &self.buf[start..start + end];
            }
            self.fill();
        }
    }

    /// Everything up to and including the first `\n\n` (the end of a WHATSAT reply).
    fn through_blank_line(&mut self) -> &[u8] {
        let mut scan = 0;
        loop {
            let start = self.taken;
            let found = self.buf[start + scan..].windows(2).position(|w| w == b"\n\n");
            if let Some(i) = found {
                let end = start + scan + i + 2;
                self.taken = end;
                return &self.buf[start..end];
            }
            scan = (self.buf.len() - start).saturating_sub(1);
            self.fill();
        }
    }

    /// Sends one IAMAT and checks its reply.
    fn check_iamat(&mut self, server: &str, client: &str) {
        let mut line = Vec::new();
        let time = push_iamat(&mut line, client);
        self.send(&line);
        let reply = String::from_utf8_lossy(self.lines(1)).into_owned();
        assert!(reply.starts_with(&format!("AT {server} ")), "unexpected reply {reply:?}");
        assert!(
            reply.ends_with(&format!(" {client} +34.068930-118.445127 {time}\n")),
            "unexpected reply {reply:?}"
        );
    }
}

/// A group with this file's timing.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    pin(LOAD_CORE);
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(6));
    g
}

fn round_trip(c: &mut Criterion) {
    // Criterion's default sample size.
    iamat_batches(c, "round_trip", &["kiwi.cs.ucla.edu".to_string()], 100);
}

/// IAMATs per write in `pipelined`.
const PIPELINED: usize = 256;

fn pipelined(c: &mut Criterion) {
    let clients: Vec<String> = (0..PIPELINED).map(|i| format!("client-{i:03}.cs.ucla.edu")).collect();
    iamat_batches(c, "pipelined", &clients, 50);
}

/// One IAMAT per client in `ids`, written at once on one connection, timed until every reply is
/// read (the lines are formatted outside the timing).
fn iamat_batches(c: &mut Criterion, name: &str, ids: &[String], samples: usize) {
    let mut g = group(c, name);
    g.sample_size(samples);
    g.throughput(Throughput::Elements(ids.len() as u64));
    for kind in KINDS {
        let server = start(kind, node("Hill", &[]), endpoints(vec![]), no_places());
        let mut client = Client::connect(server.addr);
        client.check_iamat("Hill", &ids[0]);
        let mut batch = Vec::with_capacity(ids.len() * 64);
        g.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    batch.clear();
                    for id in ids {
                        push_iamat(&mut batch, id);
                    }
                    let t = Instant::now();
                    client.send(&batch);
                    client.lines(ids.len());
                    total += t.elapsed();
                }
                total
            })
        });
        drop(client);
        server.stop();
    }
    g.finish();
}

/// Connections in `connections`.
const CONNECTIONS: usize = 64;

fn connections(c: &mut Criterion) {
    let mut g = group(c, "connections");
    g.sample_size(50);
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    let ids: Vec<String> = (0..CONNECTIONS).map(|i| format!("client-{i:02}.cs.ucla.edu")).collect();
    for kind in KINDS {
        let server = start(kind, node("Hill", &[]), endpoints(vec![]), no_places());
        let mut clients: Vec<Client> = ids
            .iter()
            .map(|id| {
                let mut client = Client::connect(server.addr);
                client.check_iamat("Hill", id);
                client
            })
            .collect();
        let mut lines: Vec<Vec<u8>> = vec![Vec::new(); CONNECTIONS];
        g.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for (line, id) in lines.iter_mut().zip(&ids) {
                        line.clear();
                        push_iamat(line, id);
                    }
                    let t = Instant::now();
                    for (client, line) in clients.iter_mut().zip(&lines) {
                        client.send(line);
                    }
                    for client in &mut clients {
                        client.lines(1);
                    }
                    total += t.elapsed();
                }
                total
            })
        });
        drop(clients);
        server.stop();
    }
    g.finish();
}

/// Accepts one connection on `listener` within [`IO_TIMEOUT`].
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("no connection from the last server of the chain: {e}"),
        }
    }
}

fn chain(c: &mut Criterion) {
    let mut g = group(c, "chain");
    g.throughput(Throughput::Elements(1));
    for kind in KINDS {
        // Floods leave on a server's own links to its neighbours, so a directed chain needs no
        // address before it is bound: the observer, then C, B and A, each naming the next.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the observer");
        let observer_addr = listener.local_addr().expect("observer address");
        let server_c = start(kind, node("C", &["Observer"]), endpoints(vec![observer_addr]), no_places());
        let server_b = start(kind, node("B", &["C"]), endpoints(vec![server_c.addr]), no_places());
        let server_a = start(kind, node("A", &["B"]), endpoints(vec![server_b.addr]), no_places());
        let mut observer = Client::new(accept(&listener));
        let mut client = Client::connect(server_a.addr);
        // The first update also waits for the links to come up (a link that comes up late is
        // resynced, so it arrives either way).
        client.check_iamat("A", "kiwi.cs.ucla.edu");
        let seen = String::from_utf8_lossy(observer.lines(1)).into_owned();
        assert!(seen.starts_with("AT A ") && seen.contains(" kiwi.cs.ucla.edu "), "observer got {seen:?}");
        let mut line = Vec::new();
        g.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    line.clear();
                    let time = push_iamat(&mut line, "kiwi.cs.ucla.edu");
                    let t = Instant::now();
                    client.send(&line);
                    let seen = observer.lines(1);
                    total += t.elapsed();
                    assert!(
                        seen.strip_suffix(b"\n").is_some_and(|s| s.ends_with(time.as_bytes())),
                        "observer got {:?}, not the update at {time}",
                        String::from_utf8_lossy(seen)
                    );
                    client.lines(1);
                }
                total
            })
        });
        drop(client);
        server_a.stop();
        server_b.stop();
        server_c.stop();
        drop(observer);
    }
    g.finish();
}

#[cfg(feature = "stub")]
mod stub {
    use std::fs::{self, File};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use herd::places::Endpoint;
    use herd::places::client::Target;
    use herd::places::tls::TlsConfig;
    use herd::places::{PlacesApi, Secret};

    use super::IO_TIMEOUT;

    /// The key the stub accepts.
    const KEY: &str = "stub-key";

    /// A running `places-stub` on a free loopback port; killed, reaped and its folder removed
    /// on drop.
    pub struct Stub {
        child: Child,
        dir: PathBuf,
        port: u16,
    }

    impl Stub {
        pub fn start() -> Self {
            let dir = std::env::temp_dir().join(format!("herd-bench-stub-{}", std::process::id()));
            fs::create_dir_all(&dir).expect("stub folder");
            let port_file = dir.join("port");
            let child = Command::new(env!("CARGO_BIN_EXE_places-stub"))
                .args(["--listen", "127.0.0.1:0", "--key", KEY, "--port-file"])
                .arg(&port_file)
                .arg("--cert-out")
                .arg(dir.join("cert.pem"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("stderr")).expect("stub stderr file"))
                .spawn()
                .expect("start places-stub");
            let mut stub = Self { child, dir, port: 0 };
            let deadline = Instant::now() + IO_TIMEOUT;
            loop {
                if let Some(port) = fs::read_to_string(&port_file)
                    .ok()
                    .filter(|p| p.ends_with('\n'))
                    .and_then(|p| p.trim().parse().ok())
                {
                    stub.port = port;
                    return stub;
                }
                let exited = stub.child.try_wait().expect("places-stub status");
                if exited.is_some() || Instant::now() > deadline {
                    let err = fs::read_to_string(stub.dir.join("stderr")).unwrap_or_default();
                    panic!("places-stub did not start ({exited:?}): {err}");
                }
                thread::sleep(Duration::from_millis(5));
            }
        }

        /// Places settings that send WHATSAT's requests here and trust its certificate.
        pub fn target(&self) -> Target {
            Target {
                api: PlacesApi::New,
                endpoint: Endpoint::parse(&format!("https://127.0.0.1:{}", self.port)).expect("a valid URL"),
                key: Some(Secret::new(KEY.into())),
                tls: Ok(TlsConfig::new(Some(&self.dir.join("cert.pem"))).expect("the stub's certificate")),
            }
        }
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(feature = "stub")]
fn whatsat(c: &mut Criterion) {
    let mut g = group(c, "whatsat");
    g.sample_size(50);
    g.throughput(Throughput::Elements(1));
    // Started from this thread, pinned to the load core, so the stub runs beside the client.
    let stub = stub::Stub::start();
    for kind in KINDS {
        let mut config = NodeConfig::new("Hill", Vec::new());
        config.whatsat.has_key = true;
        let server = start(kind, Node::new(config, Instant::now()), endpoints(vec![]), stub.target());
        let mut client = Client::connect(server.addr);
        client.check_iamat("Hill", "kiwi.cs.ucla.edu");
        let request = b"WHATSAT kiwi.cs.ucla.edu 10 5\n";
        client.send(request);
        let reply = String::from_utf8_lossy(client.through_blank_line()).into_owned();
        assert!(
            reply.starts_with("AT Hill ")
                && reply.contains("\"results\"")
                && reply.contains("\"status\": \"OK\""),
            "unexpected WHATSAT reply {reply:?}"
        );
        g.bench_function(kind.name(), |b| {
            b.iter(|| {
                client.send(request);
                client.through_blank_line().len()
            })
        });
        drop(client);
        server.stop();
    }
    g.finish();
    drop(stub);
}

#[cfg(not(feature = "stub"))]
fn whatsat(_: &mut Criterion) {
    eprintln!("whatsat: skipped, places-stub needs the `stub` feature");
}

criterion_group!(benches, round_trip, pipelined, connections, chain, whatsat);
criterion_main!(benches);
