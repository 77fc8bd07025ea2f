//! A deterministic simulation of the five-server herd of PROTOCOL.md: real [`Node`]s, a virtual
//! clock, and a network that delivers each link's bytes in order, can lose a server, and can cut
//! links. No sockets, no threads, no sleeping: every run is the same run.

// Servers are numbered 0..5 and the tests index several tables by that number at once.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::{ConnId, LinkState, Node, NodeConfig, Output, PeerId};
use crate::proto::{Frame, LineReader};

const NAMES: [&str; 5] = ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"];
const EDGES: [(usize, usize); 7] = [(0, 1), (0, 2), (1, 4), (2, 3), (2, 4), (3, 4), (1, 0)];
/// Wall clock of the simulation's start, in nanoseconds since the epoch.
const WALL0: i128 = 1_700_000_000_000_000_000;

struct Sim {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    configs: Vec<NodeConfig>,
    alive: Vec<bool>,
    /// Links (either direction) that currently lose every byte and refuse dials.
    cut: Vec<(usize, usize)>,
    /// Framing state of each directed link.
    readers: HashMap<(usize, usize), LineReader>,
    /// Every line each server received from a peer, in order.
    received: Vec<Vec<Vec<u8>>>,
    /// Dials each server made to each neighbour.
    dials: HashMap<(usize, usize), Vec<Duration>>,
}

fn neighbours(i: usize) -> Vec<usize> {
    let mut n: Vec<usize> = EDGES
        .iter()
        .filter_map(|&(a, b)| {
            if a == i {
                Some(b)
            } else if b == i {
                Some(a)
            } else {
                None
            }
        })
        .collect();
    n.sort_unstable();
    n.dedup();
    n
}

impl Sim {
    fn new(sync_on_connect: bool) -> Self {
        let t0 = Instant::now();
        let configs: Vec<NodeConfig> = (0..5)
            .map(|i| {
                let mut c =
                    NodeConfig::new(NAMES[i], neighbours(i).iter().map(|&j| NAMES[j].to_string()).collect());
                c.sync_on_connect = sync_on_connect;
                c.seed = i as u64 + 1;
                c
            })
            .collect();
        let nodes = configs.iter().map(|c| Node::new(c.clone(), t0)).collect();
        let mut sim = Self {
            t0,
            now: t0,
            nodes,
            configs,
            alive: vec![true; 5],
            cut: Vec::new(),
            readers: HashMap::new(),
            received: vec![Vec::new(); 5],
            dials: HashMap::new(),
        };
        sim.settle();
        sim
    }

    fn wall(&self) -> i128 {
        WALL0 + (self.now - self.t0).as_nanos() as i128
    }

    fn peer_index(&self, i: usize, p: PeerId) -> usize {
        let name = self.nodes[i].peer_name(p);
        NAMES.iter().position(|n| *n == name).expect("neighbour is a server")
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.alive[a] && self.alive[b] && !self.cut.iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    /// Runs timers, dials and deliveries at the current instant until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..5 {
                if !self.alive[i] {
                    continue;
                }
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                }
                while let Some(out) = self.nodes[i].poll_output() {
                    moved = true;
                    if let Output::Dial(p) = out {
                        let j = self.peer_index(i, p);
                        self.dials.entry((i, j)).or_default().push(self.now - self.t0);
                        if self.connected(i, j) {
                            self.readers.insert((i, j), LineReader::new(4096));
                            self.nodes[i].handle_link_up(self.now, p);
                        } else {
                            self.nodes[i].handle_link_down(self.now, p, "refused");
                        }
                    }
                }
                for p in (0..self.nodes[i].peer_count()).map(PeerId) {
                    let j = self.peer_index(i, p);
                    let is_up = matches!(self.nodes[i].link_state(p), LinkState::Up { .. });
                    if is_up && !self.connected(i, j) {
                        self.nodes[i].handle_link_down(self.now, p, "reset");
                        moved = true;
                        continue;
                    }
                    let bytes = self.nodes[i].peer_transmit(p).to_vec();
                    if bytes.is_empty() {
                        continue;
                    }
                    moved = true;
                    self.nodes[i].peer_sent(p, bytes.len());
                    self.deliver(i, j, &bytes);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the herd never settled");
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let wall = self.wall();
        let now = self.now;
        let reader = self.readers.entry((from, to)).or_insert_with(|| LineReader::new(4096));
        let node = &mut self.nodes[to];
        let received = &mut self.received[to];
        let mut reply = Vec::new();
        let _ = reader.feed(bytes, |frame| {
            if let Frame::Line(line) = frame {
                received.push(line.to_vec());
                node.handle_line(now, wall, ConnId(u64::MAX), line, &mut reply);
            }
            ControlFlow::Continue(())
        });
        assert!(reply.is_empty(), "AT lines get no reply");
    }

    /// Advances the clock in small steps, settling at each, so timers fire on time.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next = self
                .nodes
                .iter()
                .zip(&self.alive)
                .filter(|(_, a)| **a)
                .filter_map(|(n, _)| n.poll_timeout())
                .min();
            self.now = match next {
                Some(t) if t > self.now && t < end => t,
                _ => end.min(self.now + Duration::from_millis(1)),
            };
            self.settle();
        }
    }

    fn iamat(&mut self, at: usize, line: &str) -> Vec<u8> {
        let mut reply = Vec::new();
        let (now, wall) = (self.now, self.wall());
        self.nodes[at].handle_line(now, wall, ConnId(0), line.as_bytes(), &mut reply);
        self.settle();
        reply
    }

    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.settle();
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i] = Node::new(self.configs[i].clone(), self.now);
        self.alive[i] = true;
        self.readers.retain(|&(a, b), _| a != i && b != i);
        self.settle();
    }

    fn record(&self, i: usize, client: &str) -> Option<Vec<u8>> {
        self.nodes[i].locations().get(client.as_bytes()).map(|r| r.line().to_vec())
    }

    fn all_links_up(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| (0..n.peer_count()).all(|p| matches!(n.link_state(PeerId(p)), LinkState::Up { .. })))
    }
}

#[test]
fn start_all_links_come_up_at_once() {
    let sim = Sim::new(true);
    assert!(sim.all_links_up());
}

#[test]
fn flood_reaches_everyone_once() {
    let mut sim = Sim::new(true);
    let reply = sim.iamat(3, "IAMAT kiwi +34.068930-118.445127 1699999999.5");
    let line = &reply[..reply.len() - 1];
    assert!(line.starts_with(b"AT Campbell +0.500000000 kiwi"), "{}", line.escape_ascii());
    for i in 0..5 {
        assert_eq!(sim.record(i, "kiwi").as_deref(), Some(line), "{}", NAMES[i]);
        assert_eq!(sim.nodes[i].stats().stored, 1, "{} stored it once", NAMES[i]);
    }
    // Each server hears the update at most once per link, and never from its origin's own echo.
    for i in 0..5 {
        let heard = sim.received[i].iter().filter(|l| l.as_slice() == line).count();
        assert!(heard <= neighbours(i).len(), "{} heard it {heard} times", NAMES[i]);
    }
    // The origin gets copies back from its neighbours and drops them as not newer.
    assert!(sim.received[3].len() <= neighbours(3).len());
}

#[test]
fn stale_and_duplicate_updates_stop() {
    let mut sim = Sim::new(true);
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000000.5");
    let heard: usize = sim.received.iter().map(Vec::len).sum();
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000000.5");
    sim.iamat(0, "IAMAT kiwi +2.0+2.0 1700000000.4");
    assert_eq!(sim.received.iter().map(Vec::len).sum::<usize>(), heard, "nothing more was flooded");
    for i in 0..5 {
        assert!(sim.record(i, "kiwi").unwrap().starts_with(b"AT Campbell "));
    }
}

#[test]
fn concurrent_updates_converge_on_newest() {
    let mut sim = Sim::new(true);
    // Both before anything is delivered: Hill's newer one must win everywhere.
    let (now, wall) = (sim.now, sim.wall());
    let mut r = Vec::new();
    sim.nodes[0].handle_line(now, wall, ConnId(0), b"IAMAT k +1.0+1.0 20.000000002", &mut r);
    sim.nodes[3].handle_line(now, wall, ConnId(0), b"IAMAT k +2.0+2.0 20.000000001", &mut r);
    sim.settle();
    for i in 0..5 {
        assert!(sim.record(i, "k").unwrap().starts_with(b"AT Hill "), "{}", NAMES[i]);
    }
}

#[test]
fn equal_timestamps_raced_at_two_servers_converge_on_one_record() {
    // Hill and Campbell (two hops apart) get the same 20 ids and timestamps with different
    // locations before anything is delivered: without a tie-break each keeps its own, and the
    // servers between them keep whichever arrived first.
    let mut sim = Sim::new(true);
    let (now, wall) = (sim.now, sim.wall());
    let mut r = Vec::new();
    for k in 0..20 {
        let hill = format!("IAMAT id{k} +1.0+{k}.0 30.5");
        let campbell = format!("IAMAT id{k} +2.0+{k}.5 30.5");
        sim.nodes[0].handle_line(now, wall, ConnId(0), hill.as_bytes(), &mut r);
        sim.nodes[3].handle_line(now, wall, ConnId(0), campbell.as_bytes(), &mut r);
    }
    sim.settle();
    for k in 0..20 {
        let id = format!("id{k}");
        let hill = sim.record(0, &id).unwrap();
        for i in 1..5 {
            assert_eq!(sim.record(i, &id).unwrap(), hill, "{id} at {}", NAMES[i]);
        }
    }
}

#[test]
fn restarted_server_catches_up_within_one_redial() {
    let mut sim = Sim::new(true);
    sim.kill(1);
    sim.advance(Duration::from_secs(5));
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000000.5");
    sim.iamat(0, "IAMAT lime +1.0+1.0 1700000000.5");
    assert!(sim.record(1, "kiwi").is_none());
    sim.restart(1);
    let start = sim.now;
    while sim.record(1, "kiwi").is_none() || sim.record(1, "lime").is_none() {
        sim.advance(Duration::from_millis(10));
        assert!(sim.now - start <= Duration::from_secs(1), "not caught up within the backoff cap");
    }
    assert_eq!(sim.record(1, "kiwi"), sim.record(3, "kiwi"));
}

#[test]
fn partitioned_server_catches_up_on_heal() {
    let mut sim = Sim::new(true);
    sim.cut = vec![(1, 0), (1, 4)];
    sim.settle();
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000000.5");
    sim.advance(Duration::from_secs(3));
    assert!(sim.record(1, "kiwi").is_none(), "Jaquez is cut off");
    sim.cut.clear();
    let start = sim.now;
    while sim.record(1, "kiwi").is_none() {
        sim.advance(Duration::from_millis(10));
        assert!(sim.now - start <= Duration::from_secs(1));
    }
    sim.advance(Duration::from_secs(2));
    assert!(sim.all_links_up());
}

#[test]
fn without_sync_restarted_server_misses_old_updates() {
    let mut sim = Sim::new(false);
    sim.kill(1);
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000000.5");
    sim.restart(1);
    sim.advance(Duration::from_secs(3));
    assert!(sim.all_links_up());
    assert!(sim.record(1, "kiwi").is_none(), "classic behaviour: no resync");
    sim.iamat(3, "IAMAT kiwi +1.0+1.0 1700000001.5");
    assert!(sim.record(1, "kiwi").is_some(), "new updates still flow");
}

#[test]
fn backoff_redials_a_dead_neighbour_without_spinning() {
    let mut sim = Sim::new(true);
    sim.kill(1);
    let start = sim.now - sim.t0;
    sim.advance(Duration::from_secs(10));
    let dials: Vec<Duration> = sim.dials[&(0, 1)].iter().copied().filter(|&t| t > start).collect();
    // 50 ms doubling to a 1 s cap, with jitter in [d/2, d]: 10 s hold at least 10 and at most
    // about 25 dials.
    assert!((10..=25).contains(&dials.len()), "{} dials in 10 s: {dials:?}", dials.len());
    let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g <= Duration::from_millis(1001)), "{gaps:?}");
    assert!(gaps[gaps.len() - 1] >= Duration::from_millis(500), "{gaps:?}");
}
