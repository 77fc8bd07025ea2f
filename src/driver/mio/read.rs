//! Serving a connection's readiness: reading until `WouldBlock` or the read budget, handing
//! lines to the node, resuming lines held back behind a WHATSAT or a full feed, and the output
//! limit. What each read means for the connection is its [`Lifecycle`](crate::driver::conn::Lifecycle)'s call.

use std::io::Read;
use std::time::Instant;

use super::{Conn, Reactor, Role, State};
use crate::config::Limits;
use crate::core::{ConnId, Node};
use crate::driver::conn::Action;
use crate::driver::{Fed, Feed, Input, feed_lines, read_some, unix_nanos};
use crate::limits::READ_CHUNK;

/// What the read loop does after one chunk.
enum Next {
    /// Read again.
    Read,
    /// Stop reading this turn.
    Stop,
    /// Replies passed the output limit: write, then judge ([`Reactor::enforce_output_limit`]).
    Flush,
    /// Close, for this reason.
    Close(String),
}

impl Reactor {
    /// Serves one connection's readiness.
    pub(super) fn service(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get(key) else { return };
        if c.lc.state() == State::Connecting && !self.finish_connect(key, now) {
            return;
        }
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.reader.is_paused() && !self.paused.contains_key(&c.id()) && !c.lc.is_closed() {
            // Held back by a full feed, not by a WHATSAT: this turn's writes are done.
            self.resume_lines(key, now);
        }
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.writable && c.out.pending() > 0 {
            c.mark_dirty(key, &mut self.dirty);
        }
        if c.readable {
            self.read(key, now);
        }
    }

    /// A WHATSAT's reply is ready: write it and give the connection its next lines.
    pub(super) fn deliver_reply(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(key) = self.paused.remove(&conn.0) else { return };
        let Some(c) = self.conns.get_mut(key).filter(|c| c.id() == conn.0) else { return };
        if c.role == Role::Inbound {
            log::info!("c{} > {}", c.id(), bytes.strip_suffix(b"\n").unwrap_or(bytes).escape_ascii());
            c.out.push(bytes);
        }
        self.resume_lines(key, now);
    }

    /// Hands connection `key` the lines held back behind a WHATSAT now answered, or behind a
    /// feed that filled [`FEED_OUTPUT`](crate::limits::FEED_OUTPUT).
    fn resume_lines(&mut self, key: usize, now: Instant) {
        let Self { conns, node, discard, limits, dirty, ready, paused, lingering, .. } = self;
        let Some(c) = conns.get_mut(key) else { return };
        let fed = feed_conn(node, c, discard, limits, now, unix_nanos(), Input::Resume);
        if c.out.pending() > 0 {
            c.mark_dirty(key, dirty);
        }
        if fed.paused {
            paused.insert(c.id(), key);
        } else if fed.full {
            // More lines wait: serve them next turn, after this turn's writes.
            c.enqueue(key, ready);
        } else if c.readable && c.lc.state() == State::Open {
            // Reading stopped at the WHATSAT; whatever followed it is read now.
            c.enqueue(key, ready);
        }
        if fed.overlong
            && let Action::Linger(until) = c.lc.overlong(now)
        {
            lingering.push((until, key, c.id()));
        }
        if c.lc.replies_queued(c.out.pending(), limits.client_output) == Action::Flush {
            self.enforce_output_limit(key, now);
        }
    }

    /// Reads until `WouldBlock`, the read budget, or the lifecycle says stop.
    fn read(&mut self, key: usize, now: Instant) {
        let mut budget = self.limits.read_budget;
        let next = loop {
            let Self { conns, scratch, ready, .. } = self;
            let Some(c) = conns.get_mut(key) else { return };
            if !c.lc.reading(c.reader.is_paused()) {
                break Next::Stop;
            }
            if budget == 0 {
                // Budget spent with data perhaps still waiting: serve again next turn.
                c.enqueue(key, ready);
                break Next::Stop;
            }
            let n = match read_some(|buf| c.stream.read(buf), &mut scratch[..budget.min(READ_CHUNK)]) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    c.readable = false;
                    break Next::Stop;
                }
                Err(reason) => break Next::Close(reason),
            };
            budget -= n;
            match self.take_chunk(key, n, now) {
                Next::Read => {}
                next => break next,
            }
        };
        match next {
            Next::Close(reason) => self.close(key, now, &reason, true),
            Next::Flush => self.enforce_output_limit(key, now),
            Next::Read | Next::Stop => {}
        }
    }

    /// `n` bytes just read into the scratch buffer (0: end of stream): discarded while
    /// lingering, handed to the node otherwise.
    fn take_chunk(&mut self, key: usize, n: usize, now: Instant) -> Next {
        let Self {
            conns, node, scratch, discard, limits, dirty, ready, lingering, paused, shutdown_by, ..
        } = self;
        let Some(c) = conns.get_mut(key) else { return Next::Stop };
        if c.lc.is_lingering() {
            if n == 0 {
                c.readable = false;
            }
            return match c.lc.discard(n, c.out.pending(), shutdown_by.is_some()) {
                Action::Continue => Next::Read,
                Action::Close(reason) => Next::Close(reason.to_string()),
                _ => Next::Stop,
            };
        }
        // The receive time of the lines in this chunk (not of the first read of the turn: a
        // long read loop would make later lines look older than they are).
        let wall = unix_nanos();
        let input = if n == 0 { Input::End } else { Input::Data(&scratch[..n]) };
        let fed = feed_conn(node, c, discard, limits, now, wall, input);
        if fed.paused {
            paused.insert(c.id(), key);
        }
        if fed.full {
            // The lines left are handed on next turn (see `service`).
            c.enqueue(key, ready);
        }
        if c.lc.replies_queued(c.out.pending(), limits.client_output) == Action::Flush {
            return Next::Flush;
        }
        if c.out.pending() > 0 {
            c.mark_dirty(key, dirty);
        }
        if fed.overlong {
            if let Action::Linger(until) = c.lc.overlong(now) {
                lingering.push((until, key, c.id()));
            }
            return Next::Read;
        }
        if n == 0 {
            c.readable = false;
            return match c.lc.end_of_stream(c.out.pending(), c.reader.is_paused()) {
                Action::Close(reason) => Next::Close(reason.to_string()),
                _ => Next::Stop,
            };
        }
        if fed.paused {
            // The rest waits until the WHATSAT is answered (see `deliver_reply`).
            return Next::Stop;
        }
        Next::Read
    }

    /// Replies queued past `client_output`: write what the socket takes now, and close the
    /// connection only if the rest is still over the limit (it does not read); reading goes on
    /// next turn otherwise. The rule is the lifecycle's
    /// ([`replies_refused`](crate::driver::conn::Lifecycle::replies_refused)).
    fn enforce_output_limit(&mut self, key: usize, now: Instant) {
        self.flush(key, now);
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.lc.is_closed() {
            return;
        }
        if let Action::Close(reason) = c.lc.replies_refused(c.out.pending(), self.limits.client_output) {
            self.close(key, now, &reason.to_string(), true);
        } else if c.readable {
            c.enqueue(key, &mut self.ready);
        }
    }
}

/// [`feed_lines`] for one connection: replies go to its output, or to `discard` for our own
/// outbound links, whose replies go nowhere.
fn feed_conn(
    node: &mut Node,
    c: &mut Conn,
    discard: &mut Vec<u8>,
    limits: &Limits,
    now: Instant,
    wall: i128,
    input: Input<'_>,
) -> Fed {
    let out = match c.role {
        Role::Inbound => c.out.buf(),
        Role::Link(_) => {
            discard.clear();
            discard
        }
    };
    let feed = Feed { node, id: c.lc.id(), reader: &mut c.reader, out, max_line: limits.max_line, now, wall };
    feed_lines(feed, input)
}
