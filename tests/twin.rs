//! The tokio twin (`benches/twin`), run in-process with `twin::spawn` over real loopback sockets:
//! the same replies as the mio reactor byte for byte, pipelining, invalid and over-long lines,
//! floods between two twins and between a twin and a mio `Reactor`, WHATSAT through a real
//! `places-stub` over TLS, and a stop that writes what is pending. Every server here is stopped
//! (or dropped, which stops it) before its test ends; every wait has a deadline.

mod common;

#[path = "../benches/twin/mod.rs"]
mod twin;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, expect_at, free_ports, show, timestamp, unix_nanos};
use herd::config::Limits;
use herd::core::{Node, NodeConfig};
use herd::driver::Endpoints;
use herd::driver::mio::Reactor;
use herd::places::Endpoint;
use herd::places::client::Target;
use herd::places::tls::TlsConfig;
use herd::places::{PlacesApi, Secret};

const LOCATION: &str = "+34.068930-118.445127";
/// Long enough for anything here on a loaded machine; failures are caught by tighter checks.
const WAIT: Duration = Duration::from_secs(10);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A node named `name` with these neighbours, redialling quickly.
fn node(name: &str, neighbours: &[&str], limits: &Limits) -> Node {
    let mut config = NodeConfig::new(name, neighbours.iter().map(|n| n.to_string()).collect());
    config.backoff_base = Duration::from_millis(10);
    config.backoff_cap = Duration::from_millis(100);
    config.max_line = limits.max_line;
    config.peer_output_limit = limits.peer_output;
    Node::new(config, Instant::now())
}

/// Places settings for servers that never ask Places (their nodes have no key).
fn no_places() -> Target {
    Target {
        api: PlacesApi::New,
        endpoint: Endpoint::parse("https://127.0.0.1:9").expect("endpoint"),
        key: None,
        tls: Err("no Places in this test".into()),
    }
}

/// A twin named `name` alone, on a free port.
fn alone(name: &str, limits: Limits) -> twin::Running {
    let endpoints = Endpoints { listen: loopback(0), peers: vec![] };
    twin::spawn(node(name, &[], &limits), endpoints, limits, no_places()).expect("spawn the twin")
}

/// `IAMAT client LOCATION ts` with a timestamp a second in the past; returns the line and the
/// sending time in nanoseconds.
fn iamat(client: &str) -> (String, i128) {
    let sent = unix_nanos() - 1_000_000_000;
    (format!("IAMAT {client} {LOCATION} {}\n", timestamp(sent)), sent)
}

#[test]
fn iamat_reply_is_exact() {
    let server = alone("Hill", Limits::default());
    let mut c = Client::connect(server.addr).expect("connect");
    let (line, sent) = iamat("kiwi.cs.ucla.edu");
    let before = unix_nanos();
    let reply = c.round_trip(line.as_bytes());
    let after = unix_nanos();
    let tail = format!("kiwi.cs.ucla.edu {LOCATION} {}\n", timestamp(sent));
    expect_at(&reply, "Hill", tail.as_bytes(), before - sent, after - sent);
    // The course's example, byte for byte but for the difference.
    let reply = c.round_trip(b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n");
    let tail = b"kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";
    let now = unix_nanos() - 1_520_023_934_918_963_997;
    expect_at(&reply, "Hill", tail, now - 5_000_000_000, now);
    server.stop().expect("stop");
}

#[test]
fn pipelined_lines_are_answered_in_order_and_a_final_line_without_newline_too() {
    let server = alone("Hill", Limits::default());
    let mut c = Client::connect(server.addr).expect("connect");
    let n = 2000;
    let base = unix_nanos() - 1_000_000_000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT pipe-{i} {LOCATION} {}\n", timestamp(base + i)).as_bytes());
        if i == n / 2 {
            // A blank line gets no reply; an invalid one gets `? ` in its place in the order.
            batch.extend_from_slice(b" \t\r\nIAMAT pipe +34-118 1\n");
        }
    }
    let before = unix_nanos();
    // The last line has no `\n`: end of stream makes it a line.
    batch.extend_from_slice(format!("IAMAT last {LOCATION} {}", timestamp(base)).as_bytes());
    c.send(&batch);
    c.shutdown_write();
    let all = c.read_to_eof(WAIT);
    let after = unix_nanos();
    let replies: Vec<&[u8]> = all.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), n as usize + 2, "one reply per non-blank line");
    let mut i = 0;
    for reply in &replies[..replies.len() - 1] {
        if i == n / 2 + 1 && reply.starts_with(b"?") {
            assert_eq!(show(reply), show(b"? IAMAT pipe +34-118 1\n"));
            continue;
        }
        let tail = format!("pipe-{i} {LOCATION} {}\n", timestamp(base + i));
        expect_at(reply, "Hill", tail.as_bytes(), before - (base + i), after - (base + i));
        i += 1;
    }
    assert_eq!(i, n, "every IAMAT answered, in order");
    let last = replies[replies.len() - 1];
    let tail = format!("last {LOCATION} {}\n", timestamp(base));
    expect_at(last, "Hill", tail.as_bytes(), before - base, after - base);
    server.stop().expect("stop");
}

#[test]
fn invalid_line_gets_a_question_mark_and_an_overlong_one_closes_after_its_reply() {
    let limits = Limits { max_line: 256, ..Limits::default() };
    let server = alone("Hill", limits);
    let mut c = Client::connect(server.addr).expect("connect");
    assert_eq!(show(&c.round_trip(b"IAMAT kiwi 34.0-118.0 1\n")), show(b"? IAMAT kiwi 34.0-118.0 1\n"));
    assert_eq!(show(&c.round_trip(b"WHATSAT nobody 10 5\n")), show(b"? WHATSAT nobody 10 5\n"));
    // The connection stays open after `? `.
    let (line, _) = iamat("still-open");
    assert!(c.round_trip(line.as_bytes()).starts_with(b"AT Hill "));

    // An over-long line: `? ` and its first 128 bytes, then the connection closes once the
    // client ends its side (the reply is not lost to a reset).
    let mut o = Client::connect(server.addr).expect("connect");
    let long = vec![b'x'; 1000];
    o.send(&long);
    o.send(b"\nIAMAT never answered\n");
    let reply = o.read_line();
    let mut want = b"? ".to_vec();
    want.extend_from_slice(&long[..128]);
    want.push(b'\n');
    assert_eq!(show(&reply), show(&want));
    o.shutdown_write();
    assert_eq!(show(&o.read_to_eof(WAIT)), "", "nothing after the `?`, then end of stream");
    server.stop().expect("stop");
}

/// A stand-in neighbour: a listener the servers under test dial as their link. Each accepted
/// link is read on its own thread; every line received is sent on the channel with the link's
/// number.
struct FakeNeighbour {
    addr: SocketAddr,
    lines: mpsc::Receiver<(usize, Vec<u8>)>,
}

impl FakeNeighbour {
    fn start() -> Self {
        let listener = TcpListener::bind(loopback(0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, lines) = mpsc::channel();
        // Detached: the threads end when the servers close their links (at stop) or the test
        // process exits.
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                thread::spawn(move || {
                    for line in BufReader::new(stream).split(b'\n') {
                        let Ok(line) = line else { return };
                        if tx.send((n, line)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, lines }
    }

    /// Waits until each line of `want` has arrived on `links` distinct links; panics after
    /// [`WAIT`].
    fn expect_on_links(&self, want: &[&[u8]], links: usize) {
        let deadline = Instant::now() + WAIT;
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); want.len()];
        while seen.iter().any(|s| s.len() < links) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (link, line) = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                let got: Vec<_> = want.iter().zip(&seen).map(|(w, s)| (show(w), s.clone())).collect();
                panic!("not every line arrived on {links} links within {WAIT:?}: {got:?}")
            });
            for (w, s) in want.iter().zip(&mut seen) {
                if line == *w && !s.contains(&link) {
                    s.push(link);
                }
            }
        }
    }
}

/// A mio `Reactor` on its own thread, stopped and joined when dropped.
struct MioServer {
    stopper: herd::driver::mio::Stopper,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl MioServer {
    fn start(node: Node, endpoints: Endpoints, limits: Limits) -> Self {
        let reactor = Reactor::bind(node, endpoints, limits, no_places()).expect("bind the reactor");
        let stopper = reactor.stopper();
        let thread = Some(thread::spawn(move || reactor.run()));
        Self { stopper, thread }
    }
}

impl Drop for MioServer {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reports one client to A and another to B and checks that the fake, a neighbour of both,
/// receives each AT line, unchanged, over both links: over the link of the server that did not
/// take the IAMAT only through a flood between the two.
fn check_floods(a: SocketAddr, b: SocketAddr, fake: &FakeNeighbour, a_name: &str, b_name: &str) {
    let (line, _) = iamat("from-a");
    let at_a = Client::connect(a).expect("connect A").round_trip(line.as_bytes());
    assert!(at_a.starts_with(format!("AT {a_name} ").as_bytes()), "{}", show(&at_a));
    let (line, _) = iamat("from-b");
    let at_b = Client::connect(b).expect("connect B").round_trip(line.as_bytes());
    assert!(at_b.starts_with(format!("AT {b_name} ").as_bytes()), "{}", show(&at_b));
    fake.expect_on_links(&[&at_a[..at_a.len() - 1], &at_b[..at_b.len() - 1]], 2);
}

#[test]
fn two_twins_flood_each_other() {
    let limits = Limits::default();
    let fake = FakeNeighbour::start();
    let ports = free_ports(2);
    let (a, b) = (loopback(ports[0]), loopback(ports[1]));
    let twin_a = twin::spawn(
        node("A", &["B", "Fake"], &limits),
        Endpoints { listen: a, peers: vec![b, fake.addr] },
        limits,
        no_places(),
    )
    .expect("spawn A");
    let twin_b = twin::spawn(
        node("B", &["A", "Fake"], &limits),
        Endpoints { listen: b, peers: vec![a, fake.addr] },
        limits,
        no_places(),
    )
    .expect("spawn B");
    check_floods(a, b, &fake, "A", "B");
    twin_a.stop().expect("stop A");
    twin_b.stop().expect("stop B");
}

#[test]
fn a_twin_and_a_mio_reactor_flood_each_other() {
    let limits = Limits::default();
    let fake = FakeNeighbour::start();
    let ports = free_ports(2);
    let (t, m) = (loopback(ports[0]), loopback(ports[1]));
    let tokio_side = twin::spawn(
        node("Tokio", &["Mio", "Fake"], &limits),
        Endpoints { listen: t, peers: vec![m, fake.addr] },
        limits,
        no_places(),
    )
    .expect("spawn the twin");
    let _mio_side = MioServer::start(
        node("Mio", &["Tokio", "Fake"], &limits),
        Endpoints { listen: m, peers: vec![t, fake.addr] },
        limits,
    );
    check_floods(t, m, &fake, "Tokio", "Mio");
    tokio_side.stop().expect("stop the twin");
}

#[test]
fn stop_writes_pending_replies_and_returns_promptly() {
    // Room for every reply in the server: the client reads only after the stop.
    let limits = Limits { client_output: 64 << 20, ..Limits::default() };
    let fake = FakeNeighbour::start();
    let server = twin::spawn(
        node("Hill", &["Fake"], &limits),
        Endpoints { listen: loopback(0), peers: vec![fake.addr] },
        limits,
        no_places(),
    )
    .expect("spawn the twin");
    let addr = server.addr;
    let mut c = Client::connect(addr).expect("connect");
    // More replies (about 7 MB) than the socket buffers hold while the client does not read:
    // the rest are still queued in the server when it is stopped, and must be written anyway.
    let n = 80_000;
    let base = unix_nanos() - 1_000_000_000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT stop-{i} {LOCATION} {}\n", timestamp(base + i)).as_bytes());
    }
    let before = unix_nanos();
    c.send(&batch);
    // The server floods each update to its neighbour: once the last one arrives there, every
    // line has been read and answered.
    let last = format!(" stop-{} {LOCATION} {}", n - 1, timestamp(base + n - 1));
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = fake.lines.recv_timeout(left).expect("the last update never reached the neighbour");
        if line.ends_with(last.as_bytes()) {
            break;
        }
    }
    let (tx, stopped) = mpsc::channel();
    let stopper = thread::spawn(move || {
        let t = Instant::now();
        let result = server.stop();
        let _ = tx.send(t.elapsed());
        result
    });
    let all = c.read_to_eof(WAIT);
    let after = unix_nanos();
    let took = stopped.recv_timeout(WAIT).expect("stop() did not return");
    stopper.join().expect("join").expect("stop");
    assert!(took < Duration::from_secs(2), "stop() took {took:?}, the whole grace period");
    let replies: Vec<&[u8]> = all.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), n as usize, "every line sent before the stop is answered");
    for (i, reply) in replies.iter().enumerate() {
        let sent = base + i as i128;
        let tail = format!("stop-{i} {LOCATION} {}\n", timestamp(sent));
        expect_at(reply, "Hill", tail.as_bytes(), before - sent, after - sent);
    }
    assert!(std::net::TcpStream::connect(addr).is_err(), "still listening after stop()");
}

#[cfg(feature = "stub")]
mod whatsat {
    use super::*;
    use common::{STUB_KEY, Stub, wait_until};
    use herd::core::WhatsatPolicy;
    use serde_json::Value;

    /// One WHATSAT reply: the AT line, then the JSON up to the empty line that ends it.
    fn read_reply(c: &mut Client) -> Vec<u8> {
        let mut reply = Vec::new();
        loop {
            let line = c.read_line_within(WAIT);
            let end = line == b"\n" && !reply.is_empty();
            reply.extend_from_slice(&line);
            if end {
                return reply;
            }
        }
    }

    fn check_reply(reply: &[u8], at_line: &[u8], bound: usize) {
        assert!(reply.starts_with(at_line), "{} does not start with {}", show(reply), show(at_line));
        let json = &reply[at_line.len()..];
        assert!(json.ends_with(b"}\n\n"), "{}", show(json));
        let body = &json[..json.len() - 1];
        assert!(!body.windows(2).any(|w| w == b"\n\n"), "a run of newlines: {}", show(body));
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", show(body)));
        let top: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(top, ["html_attributions", "results", "status"]);
        assert_eq!(v["status"], "OK");
        assert_eq!(v["results"].as_array().expect("results").len(), bound);
    }

    /// Where the twin asks Places: `stub`, with its key and certificate.
    fn stub_target(stub: &Stub, api: PlacesApi) -> Target {
        Target {
            api,
            endpoint: Endpoint::parse(&format!("https://127.0.0.1:{}", stub.port())).expect("endpoint"),
            key: Some(Secret::new(STUB_KEY.into())),
            tls: Ok(TlsConfig::new(Some(stub.cert().as_path())).expect("trust the stub")),
        }
    }

    #[test]
    fn whatsat_through_places_stub_holds_back_later_lines_reuses_the_connection_and_is_answered_at_stop() {
        // Each answer takes 300 ms, so one can still be on its way when the twin is stopped.
        let stub = Stub::start(&["--delay-ms", "300"]);
        let limits = Limits::default();
        let mut config = NodeConfig::new("Hill", vec![]);
        config.whatsat = WhatsatPolicy::new(PlacesApi::New, true);
        let places = stub_target(&stub, PlacesApi::New);
        let endpoints = Endpoints { listen: loopback(0), peers: vec![] };
        let server = twin::spawn(Node::new(config, Instant::now()), endpoints, limits, places)
            .expect("spawn the twin");
        let mut c = Client::connect(server.addr).expect("connect");
        let (line, _) = iamat("kiwi.cs.ucla.edu");
        let at = c.round_trip(line.as_bytes());

        // Lines pipelined behind the WHATSAT are answered after it, in order.
        let (next, _) = iamat("lime.cs.ucla.edu");
        c.send(format!("WHATSAT kiwi.cs.ucla.edu 10 5\n{next}WHATSAT unknown.example 1 1\n"));
        check_reply(&read_reply(&mut c), &at, 5);
        assert!(c.read_line().starts_with(b"AT Hill +"), "the IAMAT held back behind the WHATSAT");
        assert_eq!(show(&c.read_line()), show(b"? WHATSAT unknown.example 1 1\n"));

        // A second, different query goes over the same kept-alive TLS connection.
        c.send(b"WHATSAT kiwi.cs.ucla.edu 3 2\n");
        check_reply(&read_reply(&mut c), &at, 2);
        assert_eq!((stub.handshakes(), stub.requests()), (1, 2), "{}", stub.stdout());

        // A WHATSAT whose answer is still on its way when the twin is stopped is answered, then
        // the connection closes.
        c.send(b"WHATSAT kiwi.cs.ucla.edu 4 1\n");
        assert!(
            wait_until(WAIT, || stub.requests() == 3),
            "the third request never reached the stub:\n{}",
            stub.stdout()
        );
        let stopper = thread::spawn(move || {
            let t = Instant::now();
            server.stop().map(|()| t.elapsed())
        });
        check_reply(&read_reply(&mut c), &at, 1);
        assert_eq!(show(&c.read_to_eof(WAIT)), "", "end of stream after the answer");
        drop(c);
        let took = stopper.join().expect("join").expect("stop");
        assert!(took < Duration::from_secs(2), "stop() took {took:?}, the whole grace period");
    }

    /// Cache hits pipelined behind one WHATSAT answer far more than `FEED_OUTPUT` of replies: the
    /// lines held back by a full feed are all handed on, even once nothing is left to write (the
    /// twin once waited for writability that never came and left the last ones unanswered).
    #[test]
    fn cache_hits_past_a_full_feed_are_all_answered() {
        let stub = Stub::start(&["--delay-ms", "100"]);
        let mut config = NodeConfig::new("Hill", vec![]);
        config.whatsat = WhatsatPolicy::new(PlacesApi::Legacy, true);
        let places = stub_target(&stub, PlacesApi::Legacy);
        let endpoints = Endpoints { listen: loopback(0), peers: vec![] };
        let server = twin::spawn(Node::new(config, Instant::now()), endpoints, Limits::default(), places)
            .expect("spawn the twin");
        let mut c = Client::connect(server.addr).expect("connect");
        let (line, _) = iamat("kiwi.cs.ucla.edu");
        let at = c.round_trip(line.as_bytes());
        c.send("WHATSAT kiwi.cs.ucla.edu 10 20\n".repeat(100));
        for _ in 0..100 {
            check_reply(&read_reply(&mut c), &at, 20);
        }
        assert_eq!(stub.requests(), 1, "{}", stub.stdout());
        server.stop().expect("stop");
    }
}
