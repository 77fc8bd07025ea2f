//! Writing (replies for inbound connections, the node's floods for links), lingering deadlines,
//! and closing: marked during the turn, removed at its end.

use std::io::Write;
use std::net::Shutdown;
use std::time::Instant;

use super::{Conn, Reactor, Role, State};
use crate::core::{Node, PeerId};
use crate::driver::conn::Action;
use crate::driver::write_some;

impl Reactor {
    /// Writes every connection's queued bytes: replies for clients, floods for links.
    pub(super) fn flush_all(&mut self, now: Instant) {
        for peer in 0..self.links.len() {
            if let Some(key) = self.links[peer]
                && !self.node.peer_transmit(PeerId(peer)).is_empty()
                && let Some(c) = self.conns.get_mut(key)
            {
                c.mark_dirty(key, &mut self.dirty);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
            }
            self.flush(key, now);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes one connection's queued bytes until done or the socket would block.
    pub(super) fn flush(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.writable || matches!(c.lc.state(), State::Connecting | State::Closed) {
            return;
        }
        let failed = match c.role {
            Role::Link(peer) => write_floods(&mut self.node, c, peer, now),
            Role::Inbound => write_replies(c),
        };
        if let Some(reason) = failed {
            self.close(key, now, &reason, true);
        }
    }

    /// Closes the lingering connections whose deadline has passed.
    pub(super) fn expire_lingerers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lingering.len() {
            let (until, key, id) = self.lingering[i];
            let live = self.conns.get(key).is_some_and(|c| c.id() == id && c.lc.is_lingering());
            if !live {
                self.lingering.swap_remove(i);
            } else if until <= now {
                self.lingering.swap_remove(i);
                if let Some(c) = self.conns.get_mut(key)
                    && let Action::Close(reason) = c.lc.timeout(now)
                {
                    self.close(key, now, &reason.to_string(), true);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Marks a connection closed; it is removed at the end of the turn. `notify` tells the node
    /// when a link it still counts as up or connecting has gone.
    pub(super) fn close(&mut self, key: usize, now: Instant, reason: &str, notify: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.lc.close() {
            return;
        }
        log::info!("c{} closed: {reason}", c.id());
        self.paused.remove(&c.id());
        if let Role::Link(peer) = c.role
            && self.links[peer.0] == Some(key)
        {
            self.links[peer.0] = None;
            if notify {
                self.node.handle_link_down(now, peer, reason);
            }
        }
        self.closing.push(key);
    }

    pub(super) fn remove_closed(&mut self) {
        for key in self.closing.drain(..) {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

/// Writes what the node queued for `peer` on its link `c`; why it failed, if it did.
fn write_floods(node: &mut Node, c: &mut Conn, peer: PeerId, now: Instant) -> Option<String> {
    loop {
        let data = node.peer_transmit(peer);
        if data.is_empty() {
            return None;
        }
        match write_some(|d| c.stream.write(d), data) {
            // Writing may top up a resync, so the loop asks again.
            Ok(Some(n)) => node.peer_sent(peer, n),
            Ok(None) => {
                c.writable = false;
                node.peer_blocked(now, peer);
                return None;
            }
            Err(reason) => return Some(reason),
        }
    }
}

/// Writes inbound connection `c`'s replies; once all are written, carries out what its
/// lifecycle says (close a draining connection, shut a lingering one's write side). Why it
/// failed, if it did.
fn write_replies(c: &mut Conn) -> Option<String> {
    match c.out.write_with(|d| c.stream.write(d)) {
        Ok(true) => c.writable = false,
        Ok(false) => {}
        Err(reason) => return Some(reason),
    }
    if c.out.pending() == 0 {
        match c.lc.written(c.reader.is_paused()) {
            Action::Close(reason) => return Some(reason.to_string()),
            Action::ShutWrite => {
                let _ = c.stream.shutdown(Shutdown::Write);
            }
            _ => {}
        }
    }
    None
}
