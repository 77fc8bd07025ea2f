//! "No allocation per IAMAT on the hot path once buffers are warm", checked by counting.
//!
//! A counting global allocator counts only on threads that opt in: the reactor's thread. The test
//! runs a real mio reactor in this process, with full logging (`info`: a log line per message in
//! and out) and one neighbour link (so every update is also flooded), warms it up, then sends
//! thousands of pipelined IAMAT updates over a real socket and counts what the reactor allocated
//! meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use herd::config::Limits;
use herd::core::{Node, NodeConfig};
use herd::driver::Endpoints;
use herd::driver::mio::Reactor;
use herd::places::Endpoint;
use herd::places::PlacesApi;
use herd::places::client::Target;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    if TRACKED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local `Cell<bool>` (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLIENTS: usize = 50;
const DEPTH: usize = 16;

/// Sends `rounds` batches of `DEPTH` IAMATs (updates of `CLIENTS` clients, with timestamps of a
/// fixed width so the stored lines keep their length) and checks every reply.
fn drive(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, first_round: usize, rounds: usize) {
    let mut batch = Vec::new();
    let mut line = Vec::new();
    for round in first_round..first_round + rounds {
        batch.clear();
        for k in 0..DEPTH {
            let seq = round * DEPTH + k;
            let client = seq % CLIENTS;
            writeln!(
                batch,
                "IAMAT client{client:03} +34.068930-118.445127 {}.000000001",
                1_000_000_000 + seq
            )
            .unwrap();
        }
        stream.write_all(&batch).unwrap();
        for k in 0..DEPTH {
            line.clear();
            reader.read_until(b'\n', &mut line).unwrap();
            let seq = round * DEPTH + k;
            let want = format!(
                "client{:03} +34.068930-118.445127 {}.000000001\n",
                seq % CLIENTS,
                1_000_000_000 + seq
            );
            assert!(
                line.starts_with(b"AT Solo +") && line.ends_with(want.as_bytes()),
                "{:?}",
                line.escape_ascii()
            );
        }
    }
}

#[test]
fn iamat_hot_path_does_not_allocate_once_warm() {
    let dir = std::env::temp_dir().join(format!("herd-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    herd::logging::init(&dir.join("Solo.log"), log::LevelFilter::Info).unwrap();

    // A neighbour that reads and counts every flooded byte.
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let flooded = thread::spawn(move || {
        let (mut s, _) = peer.accept().unwrap();
        let mut buf = vec![0; 64 << 10];
        let mut lines = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
            }
        }
    });

    let node = Node::new(NodeConfig::new("Solo", vec!["Peer".into()]), Instant::now());
    let endpoints = Endpoints { listen: SocketAddr::from(([127, 0, 0, 1], 0)), peers: vec![peer_addr] };
    let places = Target {
        api: PlacesApi::New,
        endpoint: Endpoint::parse("https://127.0.0.1:9").unwrap(),
        key: None,
        tls: Err("not used".into()),
    };
    let reactor = Reactor::bind(node, endpoints, Limits::default(), places).unwrap();
    let addr = reactor.local_addr().unwrap();
    let stopper = reactor.stopper();
    let server = thread::spawn(move || {
        TRACKED.with(|t| t.set(true));
        reactor.run()
    });

    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // Warm-up: every client stored, every buffer at its working size, the log buffer cycled.
    let start = ALLOCATIONS.load(Ordering::Relaxed);
    drive(&mut stream, &mut reader, 0, 500);
    let warm_up = ALLOCATIONS.load(Ordering::Relaxed) - start;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let rounds = 2000;
    drive(&mut stream, &mut reader, 500, rounds);
    let during = ALLOCATIONS.load(Ordering::Relaxed) - before;

    stream.shutdown(Shutdown::Write).unwrap();
    stopper.stop();
    server.join().unwrap().unwrap();
    let lines = flooded.join().unwrap();
    herd::logging::flush();
    let log = std::fs::read_to_string(dir.join("Solo.log")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let iamats = (rounds * DEPTH) as u64;
    eprintln!("reactor allocations: {warm_up} while warming up, {during} for the next {iamats} IAMATs");
    // The counter works: storing the first record of each client allocates.
    assert!(warm_up >= CLIENTS as u64, "only {warm_up} allocations counted while warming up");
    assert_eq!(lines, 2500 * DEPTH, "every update must have been flooded to the neighbour");
    assert!(log.matches("< IAMAT").count() >= 2500 * DEPTH, "full logging must have been on");
    // A handful of allocations in a whole run (a buffer growing once more, say) is not "per
    // IAMAT"; one per hundred IAMATs would already be a per-message allocation somewhere.
    assert!(during <= 8, "the reactor allocated {during} times for {iamats} IAMATs once warm");
}
