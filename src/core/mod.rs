//! The sans-IO core: one herd member's decisions, with no sockets and no clock.

mod link;
pub mod locations;
mod rng;
#[cfg(test)]
mod sim;
mod whatsat;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::places::PlacesApi;
use crate::places::Query;
use crate::places::client::Failure;
use crate::places::response::Response;
use crate::proto::{self, Command, Difference, Location};
use locations::{Locations, Observed};

pub use link::LinkState;
use link::Links;
#[cfg(test)]
use link::{SYNC_WATERMARK, stall_limit};
pub use whatsat::WARN_INTERVAL;
use whatsat::{Asked, Key, Waiter, Whatsat};

/// A neighbour, by its position in [`NodeConfig::neighbours`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub usize);

/// A connection, as the driver names it. Never reused, so a late reply cannot reach a newer
/// connection that took the old one's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

pub use crate::places::client::QueryId;

/// How WHATSAT uses Places: which API's answers to convert, whether a key exists, the deadline,
/// the pool and queue of requests, the cache and the per-connection rate limit. One of the four
/// Places names, each for one idea: `config::Places` is the configuration file's section, this
/// is WHATSAT's policy, [`places::client::Target`](crate::places::client::Target) is where and
/// how to connect, and [`places::Endpoint`](crate::places::Endpoint) is the URL within it.
#[derive(Debug, Clone)]
pub struct WhatsatPolicy {
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

impl WhatsatPolicy {
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
    pub whatsat: WhatsatPolicy,
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
            whatsat: WhatsatPolicy::new(PlacesApi::New, false),
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
    links: Links,
    outputs: VecDeque<Output>,
    /// Reused buffer for an AT line received from a peer.
    scratch: Vec<u8>,
    stats: Stats,
    whatsat: Whatsat,
}

impl Node {
    /// A node with every link down and due to be dialled at `now`.
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        Self {
            links: Links::new(&config, now),
            whatsat: Whatsat::new(config.whatsat.clone()),
            config,
            table: Locations::new(),
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
        self.links.len()
    }

    /// A neighbour's name.
    pub fn peer_name(&self, peer: PeerId) -> &str {
        &self.links.peer(peer).name
    }

    /// A neighbour's link state.
    pub fn link_state(&self, peer: PeerId) -> LinkState {
        self.links.peer(peer).state
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
                    self.links.flood(now, at_line, &mut self.outputs, &mut self.stats);
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
                if self.table.observe_peer(&self.scratch, client_at, client.len(), time) == Observed::Newer {
                    self.stats.stored += 1;
                    self.links.flood(now, &self.scratch, &mut self.outputs, &mut self.stats);
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
    pub fn handle_places_response(&mut self, now: Instant, id: QueryId, result: Result<Response, Failure>) {
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
        self.links.up(now, peer, &self.table);
    }

    /// The link to `peer` failed or closed; it will be redialled after a backoff.
    pub fn handle_link_down(&mut self, now: Instant, peer: PeerId, reason: &str) {
        self.links.down(now, peer, reason);
    }

    /// Advances timers: dials links whose backoff ended, abandons dials that took too long,
    /// answers WHATSATs whose Places request passed its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut out = whatsat::Outputs { outputs: &mut self.outputs, stats: &mut self.stats };
        self.whatsat.handle_timeout(now, &mut out);
        self.links.handle_timeout(now, &mut self.outputs);
    }

    /// The next action for the driver.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links.poll_timeout().into_iter().chain(self.whatsat.poll_timeout()).min()
    }

    /// Bytes waiting to be written to `peer`'s link (empty unless the link is up).
    #[must_use]
    pub fn peer_transmit(&self, peer: PeerId) -> &[u8] {
        self.links.peer(peer).pending()
    }

    /// The driver wrote `n` bytes of [`peer_transmit`](Self::peer_transmit).
    pub fn peer_sent(&mut self, peer: PeerId, n: usize) {
        self.links.sent(peer, n, &self.table);
    }

    /// The driver's write to `peer`'s link would block with bytes of
    /// [`peer_transmit`](Self::peer_transmit) left. From now until the socket takes everything,
    /// the queue counts against [`NodeConfig::peer_output_limit`]; past it the link is dropped
    /// ([`Output::Disconnect`]), redialled and resynced.
    pub fn peer_blocked(&mut self, now: Instant, peer: PeerId) {
        self.links.blocked(now, peer, &mut self.outputs);
    }
}

/// A line without its `\n` and an `\r` before it, as echoed in a `? ` reply.
fn trim_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests;
