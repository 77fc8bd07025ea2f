//! Micro-benchmarks of the sans-IO pieces, no sockets and no threads: parsing one IAMAT (and one
//! AT) line; formatting the AT reply; framing (`LineReader`) a stream of IAMAT lines fed in
//! 1-byte and in 64 KiB chunks; the core (`Node::handle_line`) applying a stream of IAMATs from
//! new clients and newer updates of known clients, with two neighbours whose queues are drained
//! as a driver would; and one update flooding through the five-server herd of PROTOCOL.md wired
//! in-process (one IAMAT at Hill, AT lines passed between the nodes until none is left).
//! Throughput is reported in lines (elements) or bytes. Run everything with `cargo bench --bench
//! micro`, one group with e.g. `cargo bench --bench micro -- framing`, a quick pass with
//! `cargo bench --bench micro -- --quick`.

use std::hint::black_box;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use herd::core::{ConnId, Node, NodeConfig, Output, PeerId};
use herd::proto::{Difference, Frame, LineReader, parse_line, write_at_line};

const IAMAT: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
const AT: &[u8] = b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
/// Wall clock handed to the nodes, in nanoseconds since the epoch (a little after `IAMAT`'s time).
const WALL: i128 = 1_520_023_935_182_837_383;
/// Lines in the framing and core streams.
const STREAM_LINES: usize = 1000;
/// The largest chunk the reactor reads at once.
const BIG_CHUNK: usize = 64 << 10;

/// `n` IAMAT lines from distinct clients at time `secs`, each ended by `\n`.
fn iamat_stream(n: usize, secs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 72);
    for i in 0..n {
        writeln!(out, "IAMAT client-{i:05}.cs.ucla.edu +34.068930-118.445127 {secs}.918963997")
            .expect("writing to a Vec cannot fail");
    }
    out
}

fn lines(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    stream.split_inclusive(|&b| b == b'\n')
}

/// A group with this file's timing: short, since every routine here is deterministic.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g
}

fn parse(c: &mut Criterion) {
    let mut g = group(c, "parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("iamat", |b| b.iter(|| parse_line(black_box(IAMAT)).map(|c| c.is_some())));
    g.bench_function("at", |b| b.iter(|| parse_line(black_box(AT)).map(|c| c.is_some())));
    g.finish();
}

fn format(c: &mut Criterion) {
    let mut g = group(c, "format");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    g.bench_function("at_line", |b| {
        b.iter(|| {
            out.clear();
            write_at_line(
                &mut out,
                black_box(b"Hill"),
                Difference::Nanos(black_box(263_873_386)),
                black_box(b"kiwi.cs.ucla.edu"),
                black_box(b"+34.068930-118.445127"),
                black_box(b"1520023934.918963997"),
            );
            out.len()
        })
    });
    g.finish();
}

/// Feeds `stream` in chunks of `chunk` bytes and counts the lines handed out.
fn frame(stream: &[u8], chunk: usize) -> usize {
    let mut reader = LineReader::new(4096);
    let mut n = 0;
    for piece in stream.chunks(chunk) {
        let _ = reader.feed(piece, |frame| {
            if let Frame::Line(line) = frame {
                n += 1;
                black_box(line);
            }
            ControlFlow::Continue(())
        });
    }
    n
}

fn framing(c: &mut Criterion) {
    let stream = iamat_stream(STREAM_LINES, 1_520_023_934);
    assert_eq!(frame(&stream, 1), STREAM_LINES);
    assert_eq!(frame(&stream, BIG_CHUNK), STREAM_LINES);
    let mut g = group(c, "framing");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("1_byte_chunks", |b| b.iter(|| frame(black_box(&stream), 1)));
    g.bench_function("64KiB_chunks", |b| b.iter(|| frame(black_box(&stream), BIG_CHUNK)));
    g.finish();
}

/// A node named Hill whose two neighbours' links are up, as after a start where both answered.
fn node_with_links_up(now: Instant) -> Node {
    let mut node = Node::new(NodeConfig::new("Hill", vec!["Jaquez".into(), "Smith".into()]), now);
    node.handle_timeout(now);
    while let Some(out) = node.poll_output() {
        if let Output::Dial(p) = out {
            node.handle_link_up(now, p);
        }
    }
    node
}

/// Hands every line of `stream` to `node` as one client connection would, then drains the
/// neighbours' queues as the driver does once the socket takes them. Returns the reply bytes.
fn apply(node: &mut Node, now: Instant, stream: &[u8], reply: &mut Vec<u8>) -> usize {
    reply.clear();
    for line in lines(stream) {
        node.handle_line(now, WALL, ConnId(1), line, reply);
    }
    for p in (0..node.peer_count()).map(PeerId) {
        let n = node.peer_transmit(p).len();
        node.peer_sent(p, n);
    }
    reply.len()
}

fn core(c: &mut Criterion) {
    let first = iamat_stream(STREAM_LINES, 1_520_023_934);
    let newer = iamat_stream(STREAM_LINES, 1_520_023_935);
    let now = Instant::now();
    let populated = || {
        let mut node = node_with_links_up(now);
        let _ = apply(&mut node, now, &first, &mut Vec::new());
        node
    };
    {
        // Check once that the streams do what the benchmark names say.
        let mut node = populated();
        assert_eq!(node.stats().stored, STREAM_LINES as u64);
        let _ = apply(&mut node, now, &newer, &mut Vec::new());
        assert_eq!(node.stats().stored, 2 * STREAM_LINES as u64);
        assert_eq!(node.stats().flooded, 4 * STREAM_LINES as u64);
    }
    let mut g = group(c, "core");
    g.throughput(Throughput::Elements(STREAM_LINES as u64));
    let mut reply = Vec::with_capacity(STREAM_LINES * 96);
    g.bench_function("new_clients", |b| {
        b.iter_batched_ref(
            || node_with_links_up(now),
            |node| apply(node, now, &first, &mut reply),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("updates", |b| {
        b.iter_batched_ref(populated, |node| apply(node, now, &newer, &mut reply), BatchSize::LargeInput)
    });
    g.finish();
}

/// PROTOCOL.md's default herd: names, and each server's neighbours by index.
const NAMES: [&str; 5] = ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"];
const NEIGHBOURS: [&[usize]; 5] = [&[1, 2], &[0, 4], &[0, 3, 4], &[2, 4], &[1, 2, 3]];

/// Five nodes with every link up and a perfect network: bytes a node queues for a neighbour
/// reach it, framed by a `LineReader` per directed link, when [`Herd::settle`] runs.
struct Herd {
    nodes: Vec<Node>,
    /// `readers[i][p]`: framing of what node `i` sends to its neighbour `p`.
    readers: Vec<Vec<LineReader>>,
    now: Instant,
    reply: Vec<u8>,
}

impl Herd {
    fn new() -> Self {
        let now = Instant::now();
        let nodes = (0..5)
            .map(|i| {
                let neighbours = NEIGHBOURS[i].iter().map(|&j| NAMES[j].to_string()).collect();
                let mut node = Node::new(NodeConfig::new(NAMES[i], neighbours), now);
                node.handle_timeout(now);
                while let Some(out) = node.poll_output() {
                    if let Output::Dial(p) = out {
                        node.handle_link_up(now, p);
                    }
                }
                node
            })
            .collect();
        let readers = NEIGHBOURS.iter().map(|n| n.iter().map(|_| LineReader::new(4096)).collect()).collect();
        Self { nodes, readers, now, reply: Vec::new() }
    }

    /// One IAMAT at Hill, then AT lines between the nodes until none is queued.
    fn iamat(&mut self, line: &[u8]) {
        self.reply.clear();
        self.nodes[0].handle_line(self.now, WALL, ConnId(0), line, &mut self.reply);
        self.settle();
    }

    fn settle(&mut self) {
        let now = self.now;
        loop {
            let mut moved = false;
            for (i, neighbours) in NEIGHBOURS.iter().enumerate() {
                for (p, &j) in neighbours.iter().enumerate() {
                    let (from, to) = two_mut(&mut self.nodes, i, j);
                    let bytes = from.peer_transmit(PeerId(p));
                    if bytes.is_empty() {
                        continue;
                    }
                    moved = true;
                    let n = bytes.len();
                    let mut silent = Vec::new();
                    let _ = self.readers[i][p].feed(bytes, |frame| {
                        if let Frame::Line(line) = frame {
                            to.handle_line(now, WALL, ConnId(u64::MAX), line, &mut silent);
                        }
                        ControlFlow::Continue(())
                    });
                    debug_assert!(silent.is_empty(), "AT lines get no reply");
                    from.peer_sent(PeerId(p), n);
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// Mutable references to two different elements.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// An IAMAT from one of 64 clients, newer than every earlier `seq`.
fn flood_line(seq: u64) -> Vec<u8> {
    format!(
        "IAMAT roamer-{:02} +34.068930-118.445127 {}.{:09}",
        seq % 64,
        1_520_000_000 + seq / 1_000_000_000,
        seq % 1_000_000_000
    )
    .into_bytes()
}

fn flood(c: &mut Criterion) {
    let mut herd = Herd::new();
    herd.iamat(&flood_line(0));
    let expected = herd.nodes[0].locations().get(b"roamer-00").map(|r| r.line().to_vec());
    assert!(expected.is_some());
    for n in &herd.nodes {
        assert_eq!(n.locations().get(b"roamer-00").map(|r| r.line().to_vec()), expected, "{}", n.name());
    }
    let mut g = group(c, "flood");
    // One update, which crosses each of the herd's 12 directed links once.
    g.throughput(Throughput::Elements(1));
    let mut seq = 1;
    g.bench_function("five_servers", |b| {
        b.iter_batched(
            || {
                seq += 1;
                flood_line(seq)
            },
            |line| herd.iamat(&line),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let stored: u64 = herd.nodes.iter().map(|n| n.stats().stored).sum();
    let flooded: u64 = herd.nodes.iter().map(|n| n.stats().flooded).sum();
    assert_eq!(flooded, 12 * stored / 5, "every update crosses every directed link once");
}

criterion_group!(benches, parse, format, framing, core, flood);
criterion_main!(benches);
