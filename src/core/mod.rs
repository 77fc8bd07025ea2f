//! The sans-IO core: one herd member's decisions, with no sockets and no clock.

mod link;
mod rng;
#[cfg(test)]
mod sim;
mod whatsat;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::PlacesApi;
use crate::herd::{Locations, Observed};
use crate::places::Query;
use crate::places::response::Response;
use crate::proto::{self, Command, Difference, Location};

pub use link::LinkState;
use link::Peer;
use rng::Rng;
pub use whatsat::WARN_INTERVAL;
use whatsat::{Asked, Key, Waiter, Whatsat};

/// A neighbour, by its position in [`NodeConfig::neighbours`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub usize);

/// A connection, as the driver names it. Never reused, so a late reply cannot reach a newer
/// connection that took the old one's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// One upstream Places request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(pub u64);

/// How WHATSAT uses Places.
#[derive(Debug, Clone)]
pub struct PlacesSettings {
    /// Which API answers, and so how its JSON is converted.
    pub api: PlacesApi,
    /// Whether a key is configured; without one, WHATSAT answers `? ` at once.
    pub has_key: bool,
    /// Deadline of one upstream request.
    pub timeout: Duration,
    /// Most upstream requests in flight; further ones wait their turn in arrival order.
    pub max_in_flight: usize,
    /// Most upstream requests waiting for a turn; a WHATSAT that would queue one more answers
    /// `? ` at once rather than queueing without bound.
    pub max_queued: usize,
    /// How long a usable answer is reused for identical requests; zero: no cache.
    pub cache_ttl: Duration,
    /// Most bytes of cached answers (bodies plus a fixed overhead per entry).
    pub cache_bytes: usize,
    /// Upstream requests per second one connection may cause (cache hits and joins are free);
    /// zero: no limit.
    pub rate_limit: f64,
    /// How many such requests a connection may make at once before the rate applies.
    pub rate_burst: u32,
}

impl PlacesSettings {
    /// The defaults, documented with their reasons in README.md (Limits) and config.yml.
    pub fn new(api: PlacesApi, has_key: bool) -> Self {
        Self {
            api,
            has_key,
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            max_queued: 64,
            cache_ttl: Duration::from_secs(60),
            cache_bytes: 16 << 20,
            rate_limit: 2.0,
            rate_burst: 20,
        }
    }
}

/// Everything a [`Node`] needs to know about its place in the herd.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This server's name, as written in its AT lines.
    pub name: String,
    /// The neighbours' names; [`PeerId`]s index this list.
    pub neighbours: Vec<String>,
    /// Send a neighbour every record when its link comes up.
    pub sync_on_connect: bool,
    /// Bytes queued for one neighbour whose socket refuses them beyond which the link is dropped
    /// and redialled: a stalled peer must not grow our memory. A burst queued within one loop
    /// turn does not count until the driver's write says the socket would block, and the limit
    /// is never below a resync chunk (64 KiB plus one line).
    pub peer_output_limit: usize,
    /// First redial delay; it doubles on each failure.
    pub backoff_base: Duration,
    /// Longest redial delay.
    pub backoff_cap: Duration,
    /// How long a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// The longest line a neighbour accepts (the herd shares one config). An IAMAT whose AT line
    /// would be longer is refused: stored and flooded, it would be refused by every neighbour,
    /// and resent first on every resync, cutting the links for good.
    pub max_line: usize,
    /// Seed for the backoff jitter, so simulations are repeatable.
    pub seed: u64,
    /// WHATSAT's use of Places.
    pub places: PlacesSettings,
}

impl NodeConfig {
    /// Defaults for everything but the names.
    pub fn new(name: impl Into<String>, neighbours: Vec<String>) -> Self {
        Self {
            name: name.into(),
            neighbours,
            sync_on_connect: true,
            peer_output_limit: 8 << 20,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(2),
            max_line: 4096,
            seed: 0x5eed,
            places: PlacesSettings::new(PlacesApi::New, false),
        }
    }
}

/// What the driver must do for the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a connection to this neighbour, then report [`Node::handle_link_up`] or
    /// [`Node::handle_link_down`].
    Dial(PeerId),
    /// Close the connection to this neighbour (the node already counts it as down).
    Disconnect(PeerId),
    /// Send this Places request, then report [`Node::handle_places_response`].
    Places {
        /// Names the request in the report.
        id: QueryId,
        /// What to ask.
        query: Query,
    },
    /// The node gave up on this request (its deadline passed): free everything it holds.
    CancelPlaces(QueryId),
    /// The reply to a WHATSAT that was [`Handled::Pending`]: append it to the connection's
    /// output (if it is still open) and hand the connection its next lines again.
    Reply {
        /// The connection that asked.
        conn: ConnId,
        /// The whole reply.
        bytes: Vec<u8>,
    },
}

/// What became of one input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A reply was appended to the caller's buffer.
    Replied,
    /// No reply: a blank line, or an AT line.
    Silent,
    /// The reply comes later, as [`Output::Reply`]; hand this connection no more lines until
    /// then, so replies stay in the order of the requests.
    Pending,
}

/// Counters, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Updates stored (newer than what was held).
    pub stored: u64,
    /// Updates dropped as not newer.
    pub stale: u64,
    /// AT lines queued to neighbours.
    pub flooded: u64,
    /// `? ` replies.
    pub invalid: u64,
    /// Places requests sent upstream.
    pub places_sent: u64,
    /// Places requests that failed or passed their deadline.
    pub places_failed: u64,
    /// WHATSATs answered from the cache.
    pub cache_hits: u64,
    /// WHATSATs that found neither a cached answer nor an identical request under way.
    pub cache_misses: u64,
}

/// Bytes of resync queued per neighbour before waiting for the socket to take them: keeps a
/// resync of a million records from landing in memory at once.
const SYNC_WATERMARK: usize = 64 << 10;

/// One herd member: answers lines, stores and floods updates, keeps its links to its neighbours.
///
/// # Driving contract
/// 1. Feed every complete input line to [`handle_line`](Self::handle_line) with the monotonic
///    and wall-clock times it was received; the reply, if any, is appended to the buffer passed in.
/// 2. Report link events with [`handle_link_up`](Self::handle_link_up) and
///    [`handle_link_down`](Self::handle_link_down).
/// 3. After any input, drain [`poll_output`](Self::poll_output) until `None` and carry out each
///    [`Output`].
/// 4. For each neighbour, write [`peer_transmit`](Self::peer_transmit) to its link when it is
///    writable and report the bytes taken with [`peer_sent`](Self::peer_sent).
/// 5. Sleep no later than [`poll_timeout`](Self::poll_timeout), then call
///    [`handle_timeout`](Self::handle_timeout).
///
/// The node never reads a clock: `now` is always an argument.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    table: Locations,
    peers: Vec<Peer>,
    outputs: VecDeque<Output>,
    rng: Rng,
    /// Reused buffer for an AT line received from a peer.
    scratch: Vec<u8>,
    stats: Stats,
    whatsat: Whatsat,
}

impl Node {
    /// A node with every link down and due to be dialled at `now`.
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        let peers = config.neighbours.iter().map(|n| Peer::new(n.clone(), now)).collect();
        Self {
            rng: Rng::new(config.seed),
            whatsat: Whatsat::new(config.places.clone()),
            config,
            table: Locations::new(),
            peers,
            outputs: VecDeque::new(),
            scratch: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The table of known clients.
    pub fn locations(&self) -> &Locations {
        &self.table
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of neighbours.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A neighbour's name.
    pub fn peer_name(&self, peer: PeerId) -> &str {
        &self.peers[peer.0].name
    }

    /// A neighbour's link state.
    pub fn link_state(&self, peer: PeerId) -> LinkState {
        self.peers[peer.0].state
    }

    /// Handles one line received on `conn` at `now` (and at `unix_nanos` on the wall clock,
    /// nanoseconds since the epoch), appending any reply, `\n` included, to `reply`.
    pub fn handle_line(
        &mut self,
        now: Instant,
        unix_nanos: i128,
        conn: ConnId,
        line: &[u8],
        reply: &mut Vec<u8>,
    ) -> Handled {
        let command = match proto::parse_line(line) {
            Ok(Some(c)) => c,
            Ok(None) => return Handled::Silent,
            Err(_) => return self.invalid(line, reply),
        };
        match command {
            Command::IAmAt { client, location_raw, time_raw, time, .. } => {
                let start = reply.len();
                let difference = Difference::Nanos(unix_nanos - time.as_nanos());
                let client_at = proto::write_at_line(
                    reply,
                    self.config.name.as_bytes(),
                    difference,
                    client,
                    location_raw,
                    time_raw,
                );
                if reply.len() - start > self.config.max_line {
                    reply.truncate(start);
                    log::info!(
                        "IAMAT refused: its AT line would be longer than {} bytes",
                        self.config.max_line
                    );
                    return self.invalid(line, reply);
                }
                let at_line = &reply[start..];
                if self.table.observe(at_line, client_at, client.len(), time) == Observed::Newer {
                    self.stats.stored += 1;
                    let (peers, outputs) = (&mut self.peers, &mut self.outputs);
                    flood(now, peers, outputs, &mut self.stats, &mut self.rng, &self.config, at_line);
                } else {
                    self.stats.stale += 1;
                }
                reply.push(b'\n');
                Handled::Replied
            }
            Command::At { server, difference, client, location_raw, time_raw, time } => {
                self.scratch.clear();
                let client_at = proto::write_at_line(
                    &mut self.scratch,
                    server,
                    Difference::Raw(difference),
                    client,
                    location_raw,
                    time_raw,
                );
                if self.table.observe(&self.scratch, client_at, client.len(), time) == Observed::Newer {
                    self.stats.stored += 1;
                    flood(
                        now,
                        &mut self.peers,
                        &mut self.outputs,
                        &mut self.stats,
                        &mut self.rng,
                        &self.config,
                        &self.scratch,
                    );
                } else {
                    self.stats.stale += 1;
                }
                Handled::Silent
            }
            Command::WhatsAt { client, radius_km, bound } => {
                let Some(record) = self.table.get(client) else { return self.invalid(line, reply) };
                // The stored line was checked when it was stored: its fifth field is a location.
                let Some(location) = proto::fields(record.line()).nth(4).and_then(Location::parse) else {
                    return self.invalid(line, reply);
                };
                let (lat, lng) = location.degrees();
                let api = self.whatsat.settings().api;
                let Some(key) = Key::new(api, lat, lng, radius_km, bound) else {
                    log::info!("WHATSAT refused: its radius rounds to 0 metres");
                    return self.invalid(line, reply);
                };
                let waiter = Waiter {
                    conn,
                    at_line: record.line().to_vec(),
                    line: trim_terminator(line).to_vec(),
                    bound,
                };
                let mut out = whatsat::Outputs { outputs: &mut self.outputs, stats: &mut self.stats };
                match self.whatsat.ask(now, key, waiter, reply, &mut out) {
                    Some(Asked::Replied) => Handled::Replied,
                    Some(Asked::Pending) => Handled::Pending,
                    None => self.invalid(line, reply),
                }
            }
        }
    }

    /// The answer to [`Output::Places`] `id`, received at `now`: the response, or why there is
    /// none (never containing the key). Every WHATSAT waiting for it is answered.
    pub fn handle_places_response(&mut self, now: Instant, id: QueryId, result: Result<Response, String>) {
        let mut out = whatsat::Outputs { outputs: &mut self.outputs, stats: &mut self.stats };
        self.whatsat.handle_response(now, id, result, &mut out);
    }

    fn invalid(&mut self, line: &[u8], reply: &mut Vec<u8>) -> Handled {
        self.stats.invalid += 1;
        proto::write_invalid(reply, trim_terminator(line));
        Handled::Replied
    }

    /// The dial of `peer` succeeded.
    pub fn handle_link_up(&mut self, now: Instant, peer: PeerId) {
        let p = &mut self.peers[peer.0];
        if !matches!(p.state, LinkState::Connecting { .. }) {
            return;
        }
        p.set_state(LinkState::Up { since: now });
        if self.config.sync_on_connect && !self.table.is_empty() {
            log::info!("resync to {}: {} records", p.name, self.table.len());
            p.sync = Some(0);
            p.refill(&self.table, SYNC_WATERMARK);
        }
    }

    /// The link to `peer` failed or closed; it will be redialled after a backoff.
    pub fn handle_link_down(&mut self, now: Instant, peer: PeerId, reason: &str) {
        let p = &mut self.peers[peer.0];
        if matches!(p.state, LinkState::Down { .. }) {
            return;
        }
        log::info!("link to {} down: {reason}", p.name);
        p.go_down(now, &self.config, &mut self.rng);
    }

    /// Advances timers: dials links whose backoff ended, abandons dials that took too long,
    /// answers WHATSATs whose Places request passed its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut out = whatsat::Outputs { outputs: &mut self.outputs, stats: &mut self.stats };
        self.whatsat.handle_timeout(now, &mut out);
        for (i, p) in self.peers.iter_mut().enumerate() {
            match p.state {
                LinkState::Down { retry_at } if retry_at <= now => {
                    p.set_state(LinkState::Connecting { deadline: now + self.config.connect_timeout });
                    self.outputs.push_back(Output::Dial(PeerId(i)));
                }
                LinkState::Connecting { deadline } if deadline <= now => {
                    log::info!("link to {} down: connect timed out", p.name);
                    p.go_down(now, &self.config, &mut self.rng);
                    self.outputs.push_back(Output::Disconnect(PeerId(i)));
                }
                _ => {}
            }
        }
    }

    /// The next action for the driver.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self.peers.iter().filter_map(|p| match p.state {
            LinkState::Down { retry_at } => Some(retry_at),
            LinkState::Connecting { deadline } => Some(deadline),
            LinkState::Up { .. } => None,
        });
        links.chain(self.whatsat.poll_timeout()).min()
    }

    /// Bytes waiting to be written to `peer`'s link (empty unless the link is up).
    #[must_use]
    pub fn peer_transmit(&self, peer: PeerId) -> &[u8] {
        self.peers[peer.0].pending()
    }

    /// The driver wrote `n` bytes of [`peer_transmit`](Self::peer_transmit).
    pub fn peer_sent(&mut self, peer: PeerId, n: usize) {
        self.peers[peer.0].consume(n, &self.table, SYNC_WATERMARK);
    }

    /// The driver's write to `peer`'s link would block with bytes of
    /// [`peer_transmit`](Self::peer_transmit) left. From now until the socket takes everything,
    /// the queue counts against [`NodeConfig::peer_output_limit`]; past it the link is dropped
    /// ([`Output::Disconnect`]), redialled and resynced.
    pub fn peer_blocked(&mut self, now: Instant, peer: PeerId) {
        let p = &mut self.peers[peer.0];
        if !matches!(p.state, LinkState::Up { .. }) {
            return;
        }
        p.refused = true;
        if p.queued() > stall_limit(&self.config) {
            drop_stalled(now, p, peer, &mut self.outputs, &mut self.rng, &self.config);
        }
    }
}

/// Queues `line` for every neighbour whose link is up. That includes the one it came from and
/// the origin server named in it: plain AT lines on anonymous inbound connections do not say
/// which neighbour sent them, and PROTOCOL.md floods to all other neighbours, so a copy coming
/// back is dropped there as not newer. A neighbour whose socket refuses bytes and whose queue
/// would pass the limit is dropped: it is redialled and resynced rather than allowed to grow our
/// memory.
#[allow(clippy::too_many_arguments)]
fn flood(
    now: Instant,
    peers: &mut [Peer],
    outputs: &mut VecDeque<Output>,
    stats: &mut Stats,
    rng: &mut Rng,
    config: &NodeConfig,
    line: &[u8],
) {
    for (i, p) in peers.iter_mut().enumerate() {
        if !matches!(p.state, LinkState::Up { .. }) {
            continue;
        }
        if p.refused && p.queued() + line.len() + 1 > stall_limit(config) {
            drop_stalled(now, p, PeerId(i), outputs, rng, config);
            continue;
        }
        log::info!("{} > {}", p.name, line.escape_ascii());
        p.push_line(line);
        stats.flooded += 1;
    }
}

/// The queue a refusing link may hold: `peer_output_limit`, but never less than what a resync
/// queues by itself (a chunk topped up to the watermark, plus one record), or a resync to a
/// slow reader would cut its own link whatever the neighbour does.
fn stall_limit(config: &NodeConfig) -> usize {
    config.peer_output_limit.max(SYNC_WATERMARK + config.max_line + 1)
}

fn drop_stalled(
    now: Instant,
    p: &mut Peer,
    id: PeerId,
    outputs: &mut VecDeque<Output>,
    rng: &mut Rng,
    config: &NodeConfig,
) {
    log::warn!("link to {} down: output limit of {} bytes reached", p.name, config.peer_output_limit);
    p.go_down(now, config, rng);
    outputs.push_back(Output::Disconnect(id));
}

/// A line without its `\n` and an `\r` before it, as echoed in a `? ` reply.
fn trim_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i128 = 1_520_023_934_918_963_997;

    fn node(neighbours: &[&str]) -> (Node, Instant) {
        let now = Instant::now();
        let cfg = NodeConfig::new("Hill", neighbours.iter().map(|s| s.to_string()).collect());
        (Node::new(cfg, now), now)
    }

    fn line(n: &mut Node, unix: i128, l: &str) -> String {
        let mut out = Vec::new();
        n.handle_line(Instant::now(), unix, ConnId(1), l.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn up(n: &mut Node, now: Instant, p: usize) {
        n.handle_timeout(now);
        while n.poll_output().is_some() {}
        n.handle_link_up(now, PeerId(p));
    }

    #[test]
    fn iamat_replies_byte_exact() {
        let (mut n, _) = node(&[]);
        let got = line(
            &mut n,
            T0 + 263_873_386,
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
        );
        assert_eq!(got, "AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n");
        assert_eq!(
            n.locations().get(b"kiwi.cs.ucla.edu").unwrap().line(),
            b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
        );
    }

    #[test]
    fn iamat_from_the_future_negative_difference() {
        let (mut n, _) = node(&[]);
        let got = line(&mut n, 1_000_000_000, "IAMAT k +1.0+1.0 4.5");
        assert_eq!(got, "AT Hill -3.500000000 k +1.0+1.0 4.5\n");
    }

    #[test]
    fn iamat_stale_answers_but_keeps_newer() {
        let (mut n, _) = node(&[]);
        line(&mut n, T0, "IAMAT k +1.0+1.0 2.0");
        let got = line(&mut n, T0, "IAMAT k +5.0+5.0 1.0");
        assert!(got.starts_with("AT Hill +"), "{got}");
        assert!(n.locations().get(b"k").unwrap().line().ends_with(b"+1.0+1.0 2.0"));
        assert_eq!(n.stats().stale, 1);
    }

    #[test]
    fn invalid_lines_echo_without_terminator() {
        let (mut n, _) = node(&[]);
        assert_eq!(line(&mut n, T0, "IAMAT kiwi 34.0-118.0 1"), "? IAMAT kiwi 34.0-118.0 1\n");
        assert_eq!(line(&mut n, T0, "HELLO\r"), "? HELLO\n");
        assert_eq!(line(&mut n, T0, "WHATSAT nobody 10 5"), "? WHATSAT nobody 10 5\n");
        assert_eq!(line(&mut n, T0, "  \t"), "");
    }

    #[test]
    fn at_stored_silently_and_flooded_to_every_neighbour() {
        let (mut n, now) = node(&["Jaquez", "Smith"]);
        up(&mut n, now, 0);
        up(&mut n, now, 1);
        assert_eq!(line(&mut n, T0, "AT Jaquez +0.5 k +1.0+1.0 7"), "");
        assert_eq!(n.peer_transmit(PeerId(0)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
        assert_eq!(n.peer_transmit(PeerId(1)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
        // The same update again is stale: nothing more is flooded.
        line(&mut n, T0, "AT Jaquez +0.5 k +1.0+1.0 7");
        assert_eq!(n.peer_transmit(PeerId(1)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
    }

    #[test]
    fn iamat_whose_at_line_would_be_overlong_is_refused() {
        let now = Instant::now();
        let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
        cfg.max_line = 64;
        let mut n = Node::new(cfg, now);
        up(&mut n, now, 0);
        // 59 bytes: a valid line, but its AT reply is longer than a neighbour would accept.
        let iamat = format!("IAMAT {} +1.0+1.0 1", "c".repeat(42));
        assert_eq!(iamat.len(), 59);
        assert_eq!(line(&mut n, T0, &iamat), format!("? {iamat}\n"));
        assert!(n.locations().is_empty());
        assert_eq!(n.peer_transmit(PeerId(0)), b"");
        let short = format!("IAMAT {} +1.0+1.0 1", "c".repeat(10));
        assert!(line(&mut n, T0, &short).starts_with("AT Hill "));
    }

    #[test]
    fn at_with_odd_spacing_stored_canonical() {
        let (mut n, _) = node(&[]);
        line(&mut n, T0, "\tAT  Smith\x0b+0.5 k +1.0+1.0   7 ");
        assert_eq!(n.locations().get(b"k").unwrap().line(), b"AT Smith +0.5 k +1.0+1.0 7");
    }

    #[test]
    fn down_peer_dial_then_up_resyncs_everything() {
        let (mut n, now) = node(&["Jaquez"]);
        for i in 0..3 {
            line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
        }
        assert_eq!(n.poll_timeout(), Some(now));
        n.handle_timeout(now);
        assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
        assert!(matches!(n.link_state(PeerId(0)), LinkState::Connecting { .. }));
        n.handle_link_up(now, PeerId(0));
        let sent = String::from_utf8(n.peer_transmit(PeerId(0)).to_vec()).unwrap();
        assert_eq!(sent.lines().count(), 3, "{sent}");
        assert!(sent.lines().all(|l| l.starts_with("AT Hill ")));
    }

    #[test]
    fn up_without_sync_sends_nothing() {
        let now = Instant::now();
        let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
        cfg.sync_on_connect = false;
        let mut n = Node::new(cfg, now);
        line(&mut n, T0, "IAMAT c +1.0+1.0 1");
        up(&mut n, now, 0);
        assert_eq!(n.peer_transmit(PeerId(0)), b"");
    }

    #[test]
    fn resync_large_table_streams_in_chunks() {
        let (mut n, now) = node(&["Jaquez"]);
        for i in 0..20_000 {
            line(&mut n, T0, &format!("IAMAT client-{i:06} +1.0+1.0 1"));
        }
        up(&mut n, now, 0);
        let mut lines = 0;
        let mut rounds = 0;
        loop {
            let chunk = n.peer_transmit(PeerId(0));
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= SYNC_WATERMARK + 256, "chunk of {}", chunk.len());
            lines += chunk.iter().filter(|&&b| b == b'\n').count();
            let len = chunk.len();
            n.peer_sent(PeerId(0), len);
            rounds += 1;
        }
        assert_eq!(lines, 20_000);
        assert!(rounds > 1);
    }

    #[test]
    fn connecting_timeout_disconnects_and_backs_off() {
        let (mut n, now) = node(&["Jaquez"]);
        n.handle_timeout(now);
        assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
        let late = now + Duration::from_secs(2);
        assert_eq!(n.poll_timeout(), Some(late));
        n.handle_timeout(late);
        assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
        assert!(matches!(n.link_state(PeerId(0)), LinkState::Down { retry_at } if retry_at > late));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let (mut n, now) = node(&["Jaquez"]);
        let mut t = now;
        let mut delays = Vec::new();
        for _ in 0..10 {
            n.handle_timeout(t);
            assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
            n.handle_link_down(t, PeerId(0), "refused");
            let LinkState::Down { retry_at } = n.link_state(PeerId(0)) else { panic!() };
            delays.push(retry_at - t);
            t = retry_at;
        }
        let base = Duration::from_millis(50);
        for (i, d) in delays.iter().enumerate() {
            let full = (base * 2u32.pow(i as u32)).min(Duration::from_millis(1000));
            assert!(*d >= full / 2 && *d <= full, "attempt {i}: {d:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert!(delays[9] >= Duration::from_millis(500));
    }

    fn places_node(max_in_flight: usize) -> (Node, Instant) {
        let now = Instant::now();
        let mut cfg = NodeConfig::new("Hill", vec![]);
        cfg.places = PlacesSettings {
            timeout: Duration::from_millis(500),
            max_in_flight,
            max_queued: 0,
            ..PlacesSettings::new(PlacesApi::New, true)
        };
        let mut n = Node::new(cfg, now);
        line(&mut n, T0, "IAMAT kiwi +34.068930-118.445127 1520023934.918963997");
        line(&mut n, T0, "IAMAT lime -33.8670522+151.1957362 1520023934.5");
        (n, now)
    }

    fn whatsat(n: &mut Node, now: Instant, conn: u64, l: &str) -> (Handled, String) {
        let mut out = Vec::new();
        let h = n.handle_line(now, T0, ConnId(conn), l.as_bytes(), &mut out);
        (h, String::from_utf8(out).unwrap())
    }

    fn ok_places(n: usize) -> Response {
        let places: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":"p{i}","displayName":{{"text":"P{i}"}},"location":{{"latitude":34.0,"longitude":-118.4}}}}"#))
            .collect();
        Response {
            status: 200,
            body: format!(r#"{{"places":[{}]}}"#, places.join(",")).into_bytes(),
            keep_alive: true,
        }
    }

    #[test]
    fn whatsat_known_client_asks_places_then_replies_with_stored_line() {
        let (mut n, now) = places_node(4);
        let (h, out) = whatsat(&mut n, now, 7, "WHATSAT kiwi 10 2");
        assert_eq!((h, out.as_str()), (Handled::Pending, ""));
        let Some(Output::Places { id, query }) = n.poll_output() else { panic!("no Places request") };
        assert_eq!(query, Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 2 });
        n.handle_places_response(now, id, Ok(ok_places(5)));
        let Some(Output::Reply { conn, bytes }) = n.poll_output() else { panic!("no reply") };
        assert_eq!(conn, ConnId(7));
        let text = String::from_utf8(bytes).unwrap();
        let (first, json) = text.split_once('\n').unwrap();
        assert_eq!(first.as_bytes(), n.locations().get(b"kiwi").unwrap().line());
        assert!(json.ends_with("}\n\n") && !json.contains("\n\n\n"), "{json:?}");
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 2, "cut to the bound");
        assert_eq!(v["status"], "OK");
    }

    #[test]
    fn whatsat_identical_queries_share_one_request() {
        let (mut n, now) = places_node(4);
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
        whatsat(&mut n, now, 2, "WHATSAT kiwi 10.0 2");
        whatsat(&mut n, now, 3, "WHATSAT kiwi 10 3");
        let requests: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
        assert_eq!(requests.len(), 2, "bound 2 twice shares, bound 3 is its own: {requests:?}");
        let Output::Places { id, .. } = requests[0] else { panic!() };
        n.handle_places_response(now, id, Ok(ok_places(3)));
        let conns: Vec<ConnId> = std::iter::from_fn(|| n.poll_output())
            .map(|o| match o {
                Output::Reply { conn, .. } => conn,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(conns, [ConnId(1), ConnId(2)]);
    }

    #[test]
    fn whatsat_failure_and_deadline_answer_question_mark() {
        let (mut n, now) = places_node(4);
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
        let Some(Output::Places { id, .. }) = n.poll_output() else { panic!() };
        let denied = Response {
            status: 403,
            body: br#"{"error":{"status":"PERMISSION_DENIED"}}"#.to_vec(),
            keep_alive: true,
        };
        n.handle_places_response(now, id, Ok(denied));
        assert_eq!(
            n.poll_output(),
            Some(Output::Reply { conn: ConnId(1), bytes: b"? WHATSAT kiwi 10 2\n".to_vec() })
        );

        whatsat(&mut n, now, 2, "WHATSAT lime 5 1");
        let Some(Output::Places { id, .. }) = n.poll_output() else { panic!() };
        assert_eq!(n.poll_timeout(), Some(now + Duration::from_millis(500)));
        n.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(n.poll_output(), Some(Output::CancelPlaces(id)));
        assert_eq!(
            n.poll_output(),
            Some(Output::Reply { conn: ConnId(2), bytes: b"? WHATSAT lime 5 1\n".to_vec() })
        );
        // A late answer after the deadline changes nothing.
        n.handle_places_response(now, id, Ok(ok_places(1)));
        assert_eq!(n.poll_output(), None);
        assert_eq!(n.stats().places_failed, 2);
    }

    #[test]
    fn whatsat_cap_and_missing_key_answer_at_once() {
        let (mut n, now) = places_node(1);
        assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
        assert_eq!(
            whatsat(&mut n, now, 2, "WHATSAT lime 10 2"),
            (Handled::Replied, "? WHATSAT lime 10 2\n".into())
        );
        let (mut n, now) = node(&[]);
        line(&mut n, T0, "IAMAT kiwi +1.0+1.0 1");
        assert_eq!(
            whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2"),
            (Handled::Replied, "? WHATSAT kiwi 10 2\n".into())
        );
        assert_eq!(n.poll_output(), None);
    }

    /// A node with a key and the given WHATSAT settings, knowing `kiwi` and `lime`.
    fn places_node_with(edit: impl FnOnce(&mut PlacesSettings)) -> (Node, Instant) {
        let now = Instant::now();
        let mut cfg = NodeConfig::new("Hill", vec![]);
        cfg.places = PlacesSettings {
            timeout: Duration::from_millis(500),
            ..PlacesSettings::new(PlacesApi::New, true)
        };
        edit(&mut cfg.places);
        let mut n = Node::new(cfg, now);
        line(&mut n, T0, "IAMAT kiwi +34.068930-118.445127 1520023934.918963997");
        line(&mut n, T0, "IAMAT lime -33.8670522+151.1957362 1520023934.5");
        (n, now)
    }

    fn drain(n: &mut Node) -> Vec<Output> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    fn places_ids(outputs: &[Output]) -> Vec<QueryId> {
        outputs
            .iter()
            .filter_map(|o| if let Output::Places { id, .. } = o { Some(*id) } else { None })
            .collect()
    }

    #[test]
    fn whatsat_cached_answer_replies_at_once_until_the_ttl() {
        let (mut n, now) = places_node_with(|p| p.cache_ttl = Duration::from_secs(60));
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
        let [Output::Places { id, .. }] = drain(&mut n)[..] else { panic!() };
        n.handle_places_response(now, id, Ok(ok_places(5)));
        let first = drain(&mut n);
        let Output::Reply { bytes, .. } = &first[0] else { panic!() };
        for conn in 2..502 {
            let (h, out) = whatsat(&mut n, now + Duration::from_secs(59), conn, "WHATSAT kiwi 10 2");
            assert_eq!((h, out.as_bytes()), (Handled::Replied, &bytes[..]), "hit {conn}");
        }
        assert_eq!(drain(&mut n), [], "no upstream request for a hit");
        assert_eq!((n.stats().cache_hits, n.stats().cache_misses, n.stats().places_sent), (500, 1, 1));
        // Past the TTL: asked again.
        let later = now + Duration::from_secs(61);
        n.handle_timeout(later);
        assert_eq!(whatsat(&mut n, later, 9, "WHATSAT kiwi 10 2").0, Handled::Pending);
        assert_eq!(places_ids(&drain(&mut n)).len(), 1);
    }

    #[test]
    fn whatsat_radii_and_locations_below_the_rounding_share_one_request() {
        let (mut n, now) = places_node_with(|_| {});
        line(&mut n, T0, "IAMAT near +34.0689301-118.4451271 1520023934.918963997");
        for (conn, l) in [
            (1, "WHATSAT kiwi 10 2"),
            (2, "WHATSAT kiwi 10.0004 2"),
            (3, "WHATSAT kiwi 9.9996 2"),
            (4, "WHATSAT near 10 2"),
        ] {
            assert_eq!(whatsat(&mut n, now, conn, l).0, Handled::Pending, "{l}");
        }
        let out = drain(&mut n);
        assert_eq!(places_ids(&out).len(), 1, "{out:?}");
        let Output::Places { query, .. } = out[0] else { panic!() };
        assert_eq!(query, Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 2 });
        // One metre more is another request.
        whatsat(&mut n, now, 5, "WHATSAT kiwi 10.001 2");
        assert_eq!(places_ids(&drain(&mut n)).len(), 1);
    }

    #[test]
    fn whatsat_radius_rounding_to_zero_metres_is_refused() {
        let (mut n, now) = places_node_with(|_| {});
        assert_eq!(
            whatsat(&mut n, now, 1, "WHATSAT kiwi 0.0004 2"),
            (Handled::Replied, "? WHATSAT kiwi 0.0004 2\n".into())
        );
        assert_eq!(drain(&mut n), []);
        assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 0.0005 2").0, Handled::Pending, "rounds to 1 m");
    }

    #[test]
    fn whatsat_legacy_bounds_share_one_request_cut_per_waiter() {
        let (mut n, now) = places_node_with(|p| p.api = PlacesApi::Legacy);
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
        whatsat(&mut n, now, 2, "WHATSAT kiwi 10 5");
        let ids = places_ids(&drain(&mut n));
        assert_eq!(ids.len(), 1);
        let results: Vec<String> = (0..20).map(|i| format!(r#"{{"name":"p{i}"}}"#)).collect();
        let body = format!(r#"{{"html_attributions":[],"results":[{}],"status":"OK"}}"#, results.join(","));
        n.handle_places_response(
            now,
            ids[0],
            Ok(Response { status: 200, body: body.into_bytes(), keep_alive: true }),
        );
        let counts: Vec<usize> = drain(&mut n)
            .into_iter()
            .map(|o| {
                let Output::Reply { bytes, .. } = o else { panic!() };
                let text = String::from_utf8(bytes).unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(text.split_once('\n').unwrap().1.trim_end()).unwrap();
                v["results"].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(counts, [2, 5]);
        let (h, out) = whatsat(&mut n, now, 3, "WHATSAT kiwi 10 7");
        assert_eq!(h, Handled::Replied, "{out}");
    }

    #[test]
    fn whatsat_failed_answer_is_not_cached() {
        let (mut n, now) = places_node_with(|_| {});
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
        let ids = places_ids(&drain(&mut n));
        n.handle_places_response(now, ids[0], Err("reset".into()));
        assert_eq!(drain(&mut n).len(), 1);
        assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
        assert_eq!(places_ids(&drain(&mut n)).len(), 1, "asked again");
    }

    #[test]
    fn whatsat_rate_limit_refuses_past_the_burst_and_refills() {
        let (mut n, now) = places_node_with(|p| {
            p.rate_limit = 2.0;
            p.rate_burst = 3;
            p.cache_ttl = Duration::ZERO;
        });
        let mut t = now;
        let ask = |n: &mut Node, t: Instant, conn: u64| {
            let h = whatsat(n, t, conn, "WHATSAT kiwi 10 2").0;
            // Answer at once so the next WHATSAT is a new upstream request.
            for id in places_ids(&drain(n)) {
                n.handle_places_response(t, id, Ok(ok_places(2)));
            }
            drain(n);
            h
        };
        for _ in 0..3 {
            assert_eq!(ask(&mut n, t, 1), Handled::Pending);
        }
        assert_eq!(ask(&mut n, t, 1), Handled::Replied, "over the burst: `?` at once");
        assert_eq!(ask(&mut n, t, 2), Handled::Pending, "another connection has its own bucket");
        t += Duration::from_millis(499);
        assert_eq!(ask(&mut n, t, 1), Handled::Replied);
        t += Duration::from_millis(1);
        assert_eq!(ask(&mut n, t, 1), Handled::Pending, "one token back after 1/rate");
        assert_eq!(n.stats().places_sent, 5);
    }

    #[test]
    fn whatsat_joins_and_cache_hits_cost_no_tokens() {
        let (mut n, now) = places_node_with(|p| p.rate_burst = 1);
        assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
        assert_eq!(whatsat(&mut n, now, 2, "WHATSAT kiwi 10 2").0, Handled::Pending);
        let ids = places_ids(&drain(&mut n));
        n.handle_places_response(now, ids[0], Ok(ok_places(2)));
        drain(&mut n);
        for _ in 0..10 {
            let (h, out) = whatsat(&mut n, now, 2, "WHATSAT kiwi 10 2");
            assert_eq!(h, Handled::Replied);
            assert!(out.starts_with("AT "), "{out}");
        }
    }

    #[test]
    fn whatsat_full_pool_queues_in_arrival_order_then_refuses() {
        let (mut n, now) = places_node_with(|p| {
            p.max_in_flight = 2;
            p.max_queued = 2;
        });
        for (conn, r) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
            assert_eq!(whatsat(&mut n, now, conn, &format!("WHATSAT kiwi {r} 2")).0, Handled::Pending);
        }
        assert_eq!(
            whatsat(&mut n, now, 5, "WHATSAT kiwi 5 2"),
            (Handled::Replied, "? WHATSAT kiwi 5 2\n".into()),
            "pool and queue full"
        );
        assert_eq!(whatsat(&mut n, now, 6, "WHATSAT kiwi 4 2").0, Handled::Pending, "joins a queued request");
        let ids = places_ids(&drain(&mut n));
        assert_eq!(ids.len(), 2);
        n.handle_places_response(now, ids[1], Ok(ok_places(2)));
        let out = drain(&mut n);
        let Output::Reply { conn, .. } = out[0] else { panic!("{out:?}") };
        assert_eq!(conn, ConnId(2));
        let Output::Places { query, .. } = out[1] else { panic!("{out:?}") };
        assert_eq!(query.radius_m, 3000.0, "the first queued starts");
        // The queued one past its deadline is answered `?` without ever asking.
        n.handle_timeout(now + Duration::from_millis(500));
        let replies: Vec<ConnId> = drain(&mut n)
            .into_iter()
            .filter_map(|o| if let Output::Reply { conn, .. } = o { Some(conn) } else { None })
            .collect();
        assert_eq!(replies, [ConnId(1), ConnId(3), ConnId(4), ConnId(6)]);
        assert!(
            n.poll_timeout() > Some(now + Duration::from_millis(500)),
            "nothing left in flight or queued"
        );
    }

    /// A node whose link to Jaquez is up, with `peer_output` far below the resync floor.
    fn linked_with_small_peer_output() -> (Node, Instant) {
        let now = Instant::now();
        let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
        cfg.peer_output_limit = 1000;
        let mut n = Node::new(cfg, now);
        up(&mut n, now, 0);
        (n, now)
    }

    #[test]
    fn stalled_peer_dropped_at_output_limit() {
        let (mut n, now) = linked_with_small_peer_output();
        // A burst before the driver's first write is not a stall, whatever its size.
        for i in 0..3000 {
            line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
        }
        assert!(n.peer_transmit(PeerId(0)).len() > stall_limit(&n.config) + 100);
        assert_eq!(n.poll_output(), None);
        // The socket takes part of it and refuses the rest: over the limit, dropped.
        n.peer_sent(PeerId(0), 100);
        n.peer_blocked(now, PeerId(0));
        assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
        assert_eq!(n.peer_transmit(PeerId(0)), b"");
    }

    #[test]
    fn refusing_peer_dropped_when_floods_pass_the_limit() {
        let (mut n, now) = linked_with_small_peer_output();
        line(&mut n, T0, "IAMAT c0 +1.0+1.0 1");
        n.peer_blocked(now, PeerId(0));
        assert_eq!(n.poll_output(), None, "under the limit: kept");
        let mut i = 1;
        while matches!(n.link_state(PeerId(0)), LinkState::Up { .. }) {
            line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
            i += 1;
            assert!(i < 10_000);
        }
        assert!(i > 1000, "dropped after {i} updates: the resync floor is not applied");
        assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
    }

    #[test]
    fn peer_that_takes_everything_is_no_longer_refusing() {
        let (mut n, now) = linked_with_small_peer_output();
        line(&mut n, T0, "IAMAT c0 +1.0+1.0 1");
        n.peer_blocked(now, PeerId(0));
        let all = n.peer_transmit(PeerId(0)).len();
        n.peer_sent(PeerId(0), all);
        for i in 1..3000 {
            line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
        }
        assert!(matches!(n.link_state(PeerId(0)), LinkState::Up { .. }));
        assert_eq!(n.poll_output(), None);
    }
}
