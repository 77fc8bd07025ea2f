//! New connections, both ways: accepting clients and neighbours, and dialling our links to
//! neighbours (a non-blocking connect, finished when the socket turns writable).

use std::io;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Conn, Reactor, Role, connect_status};
use crate::core::PeerId;
use crate::limits::{ACCEPT_BUDGET, ACCEPT_RETRY};

impl Reactor {
    pub(super) fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else { return };
        for _ in 0..ACCEPT_BUDGET {
            let (mut stream, addr) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    self.accept_retry = None;
                    return;
                }
                // Errors of one connection (it was reset while queued): go on with the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Typically EMFILE: the pending connection stays queued; retry soon rather
                    // than spin, since an edge-triggered listener will not say so again.
                    log::warn!("accept failed: {e}");
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                log::warn!("refused {addr}: connection limit of {} reached", self.limits.max_connections);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_id;
            self.next_id += 1;
            let entry = self.conns.vacant_entry();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("cannot register connection from {addr}: {e}");
                continue;
            }
            log::info!("c{id} new connection from {addr}");
            // Edge-triggered: data may already be waiting, so serve it without waiting for an event.
            let mut conn = Conn::new(stream, id, Role::Inbound, self.limits.max_line);
            conn.readable = true;
            conn.writable = true;
            conn.queued = true;
            self.ready.push(entry.key());
            entry.insert(conn);
        }
        self.accept_retry = None;
    }

    pub(super) fn dial(&mut self, now: Instant, peer: PeerId) {
        let addr = self.peers[peer.0];
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.node.handle_link_down(now, peer, &format!("connect to {addr}: {e}"));
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.node.handle_link_down(now, peer, &format!("register: {e}"));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        log::debug!("c{id} dialling {} at {addr}", self.node.peer_name(peer));
        self.links[peer.0] = Some(entry.key());
        entry.insert(Conn::new(stream, id, Role::Link(peer), self.limits.max_line));
    }

    /// Finishes the dial of link `key` once its socket is writable; `false` while it is still
    /// connecting or has failed (then it is closed).
    pub(super) fn finish_connect(&mut self, key: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(key) else { return false };
        let Role::Link(peer) = c.role else { return false };
        if !c.writable {
            return false;
        }
        match connect_status(&c.stream) {
            Ok(Some(addr)) => {
                let _ = c.stream.set_nodelay(true);
                c.lc.connected();
                log::info!("c{} link to {} at {addr}", c.id(), self.node.peer_name(peer));
                self.node.handle_link_up(now, peer);
                true
            }
            Ok(None) => {
                c.writable = false;
                false
            }
            Err(e) => {
                self.close(key, now, &format!("connect failed: {e}"), true);
                false
            }
        }
    }
}
