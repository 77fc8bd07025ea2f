//! The reactor: one thread, mio, edge-triggered, driving one [`Node`].
//!
//! Each loop turn:
//! 1. wait for readiness (no longer than the node's, the log's and the lingerers' deadlines);
//! 2. record readiness bits on each connection and queue it for service;
//! 3. accept until `WouldBlock` (or the accept budget), read each queued connection until
//!    `WouldBlock` or its read budget (a connection with budget left over is served again next
//!    turn, so one busy socket cannot starve the rest), feeding lines to the node;
//! 4. run the node's timers and carry out its outputs (dials, disconnects);
//! 5. write each connection's queued bytes, all the turn's replies together, until done or the
//!    socket would block (asking for nothing: sockets are registered once for both directions
//!    and the readiness bits are kept here);
//! 6. close the connections marked for closing, only now, so a slab key (the token) is never
//!    reused within a batch.
//!
//! What happens to a connection (open, draining, lingering, closed, and why) is decided by its
//! [`Lifecycle`], shared with the tokio twin; this module only carries the decisions out. Files:
//! this one holds the loop and the shutdown, `accept.rs` new connections both ways (accepted and
//! dialled), `read.rs` reading and handing lines to the node, `write.rs` writing, lingering
//! deadlines and closing, `places.rs` the HTTPS connections to Places.

mod accept;
mod places;
mod read;
mod write;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::Endpoints;
use super::conn::{Action, Kind, Lifecycle, State};
use super::outbox::Outbox;
use crate::config::Limits;
use crate::core::{Node, Output, PeerId};
use crate::limits::{READ_CHUNK, SHUTDOWN_GRACE};
use crate::logging;
use crate::places::client::Target;
use crate::proto::LineReader;

use places::{PLACES_BASE, Upstream};

/// Where a non-blocking connect stands once its socket reported writable, by mio's documented
/// way: `take_error`, then `peer_addr` (`NotConnected` means not yet). `Ok(Some(addr))`:
/// connected; `Ok(None)`: still connecting (wait for the next writable event); `Err`: failed.
fn connect_status(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(addr) => Ok(Some(addr)),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(None),
        Err(e) => Err(e),
    }
}

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The Places resolver thread wakes the loop with this token.
const WAKER: Token = Token(usize::MAX - 3);

/// Who is at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Anyone who connected to us: clients, and neighbours sending floods.
    Inbound,
    /// Our outbound link to a neighbour.
    Link(PeerId),
}

struct Conn {
    stream: TcpStream,
    role: Role,
    /// Its state, and its number in the log (`c<id>`) that, unlike the slab key, is never reused.
    lc: Lifecycle,
    reader: LineReader,
    /// Replies (inbound connections only: a link's bytes are the node's `peer_transmit`).
    out: Outbox,
    readable: bool,
    writable: bool,
    /// In the service queue.
    queued: bool,
    /// In the flush list.
    dirty: bool,
}

impl Conn {
    fn new(stream: TcpStream, id: u64, role: Role, max_line: usize) -> Self {
        let kind = match role {
            Role::Inbound => Kind::Inbound,
            Role::Link(_) => Kind::Link,
        };
        Self {
            stream,
            role,
            lc: Lifecycle::new(id, kind),
            reader: LineReader::new(max_line),
            out: Outbox::default(),
            readable: false,
            writable: false,
            queued: false,
            dirty: false,
        }
    }

    fn id(&self) -> u64 {
        self.lc.id()
    }

    /// Puts connection `key` (this one) in the service queue, once.
    fn enqueue(&mut self, key: usize, ready: &mut Vec<usize>) {
        if !self.queued {
            self.queued = true;
            ready.push(key);
        }
    }

    /// Puts connection `key` (this one) in the flush list, once.
    fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

/// Stops a running [`Reactor`] from another thread, as SIGTERM would: no new connections, pending
/// replies written, then [`Reactor::run`] returns. For embedding (benchmarks, tests).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the reactor to shut down; returns at once.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// A herd member's event loop.
pub struct Reactor {
    poll: Poll,
    /// Set by a [`Stopper`]; checked when the waker fires.
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    node: Node,
    peers: Vec<SocketAddr>,
    /// The slab key of each neighbour's link, while it exists.
    links: Vec<Option<usize>>,
    limits: Limits,
    next_id: u64,
    /// Connections with readiness to serve.
    ready: Vec<usize>,
    /// Connections with replies to write this turn.
    dirty: Vec<usize>,
    /// Connections to remove at the end of the turn.
    closing: Vec<usize>,
    /// Deadlines of connections in [`State::Lingering`], by key and log id (a key may be reused
    /// later), so they are found without scanning every connection.
    lingering: Vec<(Instant, usize, u64)>,
    /// Replies to lines that arrive on our own outbound links, which are not sent anywhere.
    discard: Vec<u8>,
    /// Connections waiting for a WHATSAT's Places answer, by log id (the node's
    /// [`ConnId`](crate::core::ConnId)).
    paused: HashMap<u64, usize>,
    /// The Places connections.
    upstream: Upstream,
    scratch: Box<[u8]>,
    accept_ready: bool,
    accept_retry: Option<Instant>,
    log_flush_at: Option<Instant>,
    shutdown_by: Option<Instant>,
}

impl Reactor {
    /// Binds the listening socket and installs the signal handlers.
    pub fn bind(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::bind(endpoints.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let links = vec![None; endpoints.peers.len()];
        Ok(Self {
            poll,
            stop: Arc::new(AtomicBool::new(false)),
            waker: Arc::clone(&waker),
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            node,
            peers: endpoints.peers,
            links,
            limits,
            next_id: 0,
            ready: Vec::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            lingering: Vec::new(),
            discard: Vec::new(),
            paused: HashMap::new(),
            upstream: Upstream::new(places, waker),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            accept_ready: true,
            accept_retry: None,
            log_flush_at: None,
            shutdown_by: None,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// A handle that stops [`Reactor::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper { flag: Arc::clone(&self.stop), waker: Arc::clone(&self.waker) }
    }

    /// Runs until SIGINT, SIGTERM or a [`Stopper`], then writes what is already computed and returns.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = self.next_wakeup(now).map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready = true,
                    SIGNALS => {
                        let signals: Vec<i32> = self.signals.pending().collect();
                        if !signals.is_empty() {
                            self.begin_shutdown(now, &format!("signal {signals:?}"));
                        }
                    }
                    WAKER => {
                        if self.stop.load(Ordering::Acquire) {
                            self.begin_shutdown(now, "stop requested");
                        }
                        self.upstream.on_wake(self.poll.registry(), now);
                    }
                    token if token.0 >= PLACES_BASE => self.upstream.on_event(
                        self.poll.registry(),
                        now,
                        token,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_error(),
                    ),
                    Token(key) => {
                        let Some(c) = self.conns.get_mut(key) else { continue };
                        c.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                        c.writable |= event.is_writable() || event.is_error();
                        c.enqueue(key, &mut self.ready);
                    }
                }
            }
            self.turn(now);
            if let Some(by) = self.shutdown_by
                && (now >= by || self.conns.iter().all(|(_, c)| self.idle_at_shutdown(c)))
            {
                log::info!("counters: {:?}", self.node.stats());
                log::info!("stopped");
                logging::flush();
                return Ok(());
            }
        }
    }

    /// Everything after the readiness bits are recorded.
    fn turn(&mut self, now: Instant) {
        if self.accept_ready && self.accept_retry.is_none_or(|t| t <= now) {
            self.accept(now);
        }
        let ready = std::mem::take(&mut self.ready);
        for &key in &ready {
            if let Some(c) = self.conns.get_mut(key) {
                c.queued = false;
            }
        }
        for &key in &ready {
            self.service(key, now);
        }
        let mut ready = ready;
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        self.drain_outputs(now);
        self.settle_places(now);
        self.expire_lingerers(now);
        self.flush_all(now);
        self.drain_outputs(now);
        self.remove_closed();
        if logging::is_dirty() {
            match self.log_flush_at {
                None => self.log_flush_at = Some(now + logging::FLUSH_INTERVAL),
                Some(t) if t <= now => {
                    logging::flush();
                    self.log_flush_at = None;
                }
                Some(_) => {}
            }
        }
    }

    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        if !self.ready.is_empty() || (self.accept_ready && self.accept_retry.is_none()) {
            return Some(now);
        }
        let lingering = self.lingering.iter().map(|&(until, _, _)| until);
        [self.node.poll_timeout(), self.log_flush_at, self.accept_retry, self.shutdown_by]
            .into_iter()
            .flatten()
            .chain(lingering)
            .min()
    }

    fn begin_shutdown(&mut self, now: Instant, why: &str) {
        if self.shutdown_by.is_some() {
            return;
        }
        log::info!("{why}: shutting down: no new connections, writing pending replies");
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_ready = false;
        let by = now + SHUTDOWN_GRACE;
        self.shutdown_by = Some(by);
        for (key, c) in &mut self.conns {
            if let Action::Linger(until) = c.lc.shutdown(by) {
                self.lingering.push((until, key, c.id()));
                // Written this turn, so the write side is shut at once if nothing is pending.
                c.mark_dirty(key, &mut self.dirty);
            }
        }
    }

    fn idle_at_shutdown(&self, c: &Conn) -> bool {
        match c.role {
            Role::Inbound => c.lc.is_closed(),
            Role::Link(p) => c.lc.state() != State::Open || self.node.peer_transmit(p).is_empty(),
        }
    }

    fn drain_outputs(&mut self, now: Instant) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Dial(peer) => self.dial(now, peer),
                Output::Disconnect(peer) => {
                    if let Some(key) = self.links[peer.0].take() {
                        self.close(key, now, "link dropped by the node", false);
                    }
                }
                Output::Places { id, query } => self.upstream.start(self.poll.registry(), now, id, &query),
                Output::CancelPlaces(id) => self.upstream.cancel(self.poll.registry(), now, id),
                Output::Reply { conn, bytes } => self.deliver_reply(now, conn, &bytes),
            }
        }
    }

    /// Hands finished Places requests to the node, until answering them starts no request that
    /// finishes at once.
    fn settle_places(&mut self, now: Instant) {
        loop {
            let done = self.upstream.take_done();
            if done.is_empty() {
                return;
            }
            for (id, result) in done {
                self.node.handle_places_response(now, id, result);
            }
            self.drain_outputs(now);
        }
    }
}
