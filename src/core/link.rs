//! One neighbour: its link's lifecycle, its output queue, and its resync cursor.

use std::time::{Duration, Instant};

use super::NodeConfig;
use super::rng::Rng;
use crate::herd::Locations;

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
    pub(crate) fn go_down(&mut self, now: Instant, config: &NodeConfig, rng: &mut Rng) {
        if let LinkState::Up { since } = self.state
            && now.saturating_duration_since(since) >= config.backoff_cap
        {
            self.failures = 0;
        }
        let full = config.backoff_base.saturating_mul(1u32 << self.failures.min(16)).min(config.backoff_cap);
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
