//! The links to the neighbours: each one's lifecycle, output queue and resync cursor
//! ([`Peer`]), and [`Links`], which owns them all with the rules they share (backoff, the stall
//! limit, flooding), so the node hands a line to the links once rather than threading its
//! configuration, random source and outputs through free functions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::locations::Locations;
use super::rng::Rng;
use super::{NodeConfig, Output, PeerId, Stats};

/// The lifecycle of the outbound link to one neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection; dial again at `retry_at`.
    Down {
        /// When the backoff ends.
        retry_at: Instant,
    },
    /// A dial is under way; give up at `deadline`.
    Connecting {
        /// When the dial counts as failed.
        deadline: Instant,
    },
    /// Connected since `since`.
    Up {
        /// When the link came up.
        since: Instant,
    },
}

/// Capacity above which an emptied output queue is released rather than kept.
const KEEP_CAPACITY: usize = 64 << 10;

#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) state: LinkState,
    /// Failed dials (or short-lived links) in a row; sets the backoff.
    failures: u32,
    /// Bytes queued for the link; `out[sent..]` is still to be written.
    out: Vec<u8>,
    sent: usize,
    /// Position of the next record to resync, while a resync is under way.
    pub(crate) sync: Option<usize>,
    /// The socket refused bytes at the driver's last write and has not taken everything since:
    /// only then does the queue count against `peer_output_limit`. A burst queued within one
    /// loop turn, before the driver's write, says nothing about the neighbour.
    pub(crate) refused: bool,
}

impl Peer {
    pub(crate) fn new(name: String, now: Instant) -> Self {
        Self {
            name,
            state: LinkState::Down { retry_at: now },
            failures: 0,
            out: Vec::new(),
            sent: 0,
            sync: None,
            refused: false,
        }
    }

    /// The one place the state changes, so every transition is logged.
    pub(crate) fn set_state(&mut self, state: LinkState) {
        match state {
            LinkState::Up { .. } => log::info!("link to {} up", self.name),
            LinkState::Connecting { .. } => log::debug!("link to {}: dialling", self.name),
            LinkState::Down { .. } => log::debug!("link to {}: redial scheduled", self.name),
        }
        self.state = state;
    }

    /// Drops the link and everything queued on it, and schedules a redial with exponential
    /// backoff and jitter. A link that stayed up for longer than the cap counts as healthy and
    /// resets the backoff; one that dies at once (a peer that accepts and closes) does not.
    fn go_down(&mut self, now: Instant, config: &Backoff, rng: &mut Rng) {
        if let LinkState::Up { since } = self.state
            && now.saturating_duration_since(since) >= config.cap
        {
            self.failures = 0;
        }
        let full = config.base.saturating_mul(1u32 << self.failures.min(16)).min(config.cap);
        let full_ns = full.as_nanos() as u64;
        let delay = Duration::from_nanos(rng.between(full_ns / 2, full_ns));
        self.failures = self.failures.saturating_add(1);
        self.out = Vec::new();
        self.sent = 0;
        self.sync = None;
        self.refused = false;
        self.set_state(LinkState::Down { retry_at: now + delay });
    }

    pub(crate) fn queued(&self) -> usize {
        self.out.len() - self.sent
    }

    pub(crate) fn pending(&self) -> &[u8] {
        match self.state {
            LinkState::Up { .. } => &self.out[self.sent..],
            _ => &[],
        }
    }

    pub(crate) fn push_line(&mut self, line: &[u8]) {
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
    }

    /// `n` bytes were written: forget them and top up a resync in progress.
    pub(crate) fn consume(&mut self, n: usize, table: &Locations, watermark: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        if self.sent == self.out.len() {
            self.refused = false;
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        } else if self.sent > self.out.len() / 2 && self.sent > 4096 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        self.refill(table, watermark);
    }

    /// Queues resync records until `watermark` bytes are waiting.
    pub(crate) fn refill(&mut self, table: &Locations, watermark: usize) {
        let Some(mut next) = self.sync else { return };
        while self.queued() < watermark {
            let Some(record) = table.at(next) else { break };
            log::info!("{} > {} (resync)", self.name, record.line().escape_ascii());
            self.push_line(record.line());
            next += 1;
        }
        self.sync = (next < table.len()).then_some(next);
        if self.sync.is_none() {
            log::info!("resync to {} complete", self.name);
        }
    }
}

/// Bytes of resync queued per neighbour before waiting for the socket to take them: keeps a
/// resync of a million records from landing in memory at once.
pub(crate) const SYNC_WATERMARK: usize = 64 << 10;

/// The redial schedule: exponential from `base`, capped at `cap`, with jitter.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

/// Every neighbour's link, and the rules they share.
#[derive(Debug)]
pub(crate) struct Links {
    peers: Vec<Peer>,
    rng: Rng,
    backoff: Backoff,
    connect_timeout: Duration,
    sync_on_connect: bool,
    /// `peer_output_limit`, for the log.
    output_limit: usize,
    /// What a refusing link may hold; see [`stall_limit`].
    stall_limit: usize,
}

/// The queue a refusing link may hold: `peer_output_limit`, but never less than what a resync
/// queues by itself (a chunk topped up to the watermark, plus one record), or a resync to a
/// slow reader would cut its own link whatever the neighbour does.
pub(crate) fn stall_limit(config: &NodeConfig) -> usize {
    config.peer_output_limit.max(SYNC_WATERMARK + config.max_line + 1)
}

impl Links {
    /// Every link down and due to be dialled at `now`.
    pub(crate) fn new(config: &NodeConfig, now: Instant) -> Self {
        Self {
            peers: config.neighbours.iter().map(|n| Peer::new(n.clone(), now)).collect(),
            rng: Rng::new(config.seed),
            backoff: Backoff { base: config.backoff_base, cap: config.backoff_cap },
            connect_timeout: config.connect_timeout,
            sync_on_connect: config.sync_on_connect,
            output_limit: config.peer_output_limit,
            stall_limit: stall_limit(config),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn peer(&self, peer: PeerId) -> &Peer {
        &self.peers[peer.0]
    }

    /// Queues `line` for every neighbour whose link is up. That includes the one it came from
    /// and the origin server named in it: plain AT lines on anonymous inbound connections do not
    /// say which neighbour sent them, and PROTOCOL.md floods to all other neighbours, so a copy
    /// coming back is dropped there as not newer. A neighbour whose socket refuses bytes and
    /// whose queue would pass the limit is dropped: it is redialled and resynced rather than
    /// allowed to grow our memory.
    pub(crate) fn flood(
        &mut self,
        now: Instant,
        line: &[u8],
        outputs: &mut VecDeque<Output>,
        stats: &mut Stats,
    ) {
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if !matches!(p.state, LinkState::Up { .. }) {
                continue;
            }
            if p.refused && p.queued() + line.len() + 1 > self.stall_limit {
                self.drop_stalled(now, PeerId(i), outputs);
                continue;
            }
            log::info!("{} > {}", p.name, line.escape_ascii());
            p.push_line(line);
            stats.flooded += 1;
        }
    }

    fn drop_stalled(&mut self, now: Instant, id: PeerId, outputs: &mut VecDeque<Output>) {
        let p = &mut self.peers[id.0];
        log::warn!("link to {} down: output limit of {} bytes reached", p.name, self.output_limit);
        p.go_down(now, &self.backoff, &mut self.rng);
        outputs.push_back(Output::Disconnect(id));
    }

    /// The dial of `peer` succeeded: up, and a resync begins if configured.
    pub(crate) fn up(&mut self, now: Instant, peer: PeerId, table: &Locations) {
        let p = &mut self.peers[peer.0];
        if !matches!(p.state, LinkState::Connecting { .. }) {
            return;
        }
        p.set_state(LinkState::Up { since: now });
        if self.sync_on_connect && !table.is_empty() {
            log::info!("resync to {}: {} records", p.name, table.len());
            p.sync = Some(0);
            p.refill(table, SYNC_WATERMARK);
        }
    }

    /// The link to `peer` failed or closed; it will be redialled after a backoff.
    pub(crate) fn down(&mut self, now: Instant, peer: PeerId, reason: &str) {
        let p = &mut self.peers[peer.0];
        if matches!(p.state, LinkState::Down { .. }) {
            return;
        }
        log::info!("link to {} down: {reason}", p.name);
        p.go_down(now, &self.backoff, &mut self.rng);
    }

    /// Dials links whose backoff ended, abandons dials that took too long.
    pub(crate) fn handle_timeout(&mut self, now: Instant, outputs: &mut VecDeque<Output>) {
        for (i, p) in self.peers.iter_mut().enumerate() {
            match p.state {
                LinkState::Down { retry_at } if retry_at <= now => {
                    p.set_state(LinkState::Connecting { deadline: now + self.connect_timeout });
                    outputs.push_back(Output::Dial(PeerId(i)));
                }
                LinkState::Connecting { deadline } if deadline <= now => {
                    log::info!("link to {} down: connect timed out", p.name);
                    p.go_down(now, &self.backoff, &mut self.rng);
                    outputs.push_back(Output::Disconnect(PeerId(i)));
                }
                _ => {}
            }
        }
    }

    /// The next redial or dial deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|p| match p.state {
                LinkState::Down { retry_at } => Some(retry_at),
                LinkState::Connecting { deadline } => Some(deadline),
                LinkState::Up { .. } => None,
            })
            .min()
    }

    /// The driver wrote `n` bytes of `peer`'s queue.
    pub(crate) fn sent(&mut self, peer: PeerId, n: usize, table: &Locations) {
        self.peers[peer.0].consume(n, table, SYNC_WATERMARK);
    }

    /// The driver's write to `peer`'s link would block with bytes left: from now until the
    /// socket takes everything, the queue counts against the stall limit.
    pub(crate) fn blocked(&mut self, now: Instant, peer: PeerId, outputs: &mut VecDeque<Output>) {
        let p = &mut self.peers[peer.0];
        if !matches!(p.state, LinkState::Up { .. }) {
            return;
        }
        p.refused = true;
        if p.queued() > self.stall_limit {
            self.drop_stalled(now, peer, outputs);
        }
    }
}
