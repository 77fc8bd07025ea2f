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

mod places;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::{Fed, Input, feed_lines, unix_nanos};
use crate::config::Limits;
use crate::core::{ConnId, Node, Output, PeerId};
use crate::logging;
use crate::proto::LineReader;

pub use places::Settings as PlacesTarget;
use places::{PLACES_BASE, Upstream};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The Places resolver thread wakes the loop with this token.
const WAKER: Token = Token(usize::MAX - 3);

/// Size of the shared read buffer: complete lines are handled straight from it.
const READ_CHUNK: usize = 64 << 10;
/// Connections accepted per turn before others get their turn.
const ACCEPT_BUDGET: usize = 1024;
/// How long a connection closed for a protocol error keeps draining its input after the reply,
/// so the reply is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);
/// Input discarded while lingering before the connection is cut.
const LINGER_BYTES: usize = 1 << 20;
/// How long a shutdown waits for replies and floods already computed to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After an accept error such as "too many open files", wait this long before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Capacity above which an emptied client output buffer is released rather than kept.
const KEEP_OUTPUT: usize = 16 << 10;

/// Who is at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Anyone who connected to us: clients, and neighbours sending floods.
    Inbound,
    /// Our outbound link to a neighbour.
    Link(PeerId),
}

/// A connection's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outbound dial in progress.
    Connecting,
    /// Reading lines and writing replies.
    Open,
    /// No more input will be read (end of stream, or shutdown); close once replies are written.
    Draining,
    /// A protocol error was answered; once it is written the write side is shut and input is
    /// discarded until end of stream or `until`.
    Lingering { until: Instant, shut: bool },
    /// Closed; removed at the end of the turn.
    Closed,
}

struct Conn {
    stream: TcpStream,
    /// A number for the log that, unlike the slab key, is never reused.
    id: u64,
    role: Role,
    state: State,
    reader: LineReader,
    out: Vec<u8>,
    out_pos: usize,
    readable: bool,
    writable: bool,
    /// In the service queue.
    queued: bool,
    /// In the flush list.
    dirty: bool,
    /// Bytes discarded while lingering.
    discarded: usize,
}

impl Conn {
    fn new(stream: TcpStream, id: u64, role: Role, state: State, max_line: usize) -> Self {
        Self {
            stream,
            id,
            role,
            state,
            reader: LineReader::new(max_line),
            out: Vec::new(),
            out_pos: 0,
            readable: false,
            writable: false,
            queued: false,
            dirty: false,
            discarded: 0,
        }
    }

    /// The one place the state changes.
    fn set_state(&mut self, state: State) {
        log::debug!("c{}: {:?} -> {:?}", self.id, self.state, state);
        self.state = state;
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// Where a herd member listens and dials.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The neighbours' addresses, indexed by [`PeerId`].
    pub peers: Vec<SocketAddr>,
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
    /// Connections in [`State::Lingering`], by key and log id (a key may be reused later), so
    /// deadlines are found without scanning every connection.
    lingering: Vec<(Instant, usize, u64)>,
    /// Replies to lines that arrive on our own outbound links, which are not sent anywhere.
    discard: Vec<u8>,
    /// Connections waiting for a WHATSAT's Places answer, by log id (the node's [`ConnId`]).
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
    pub fn bind(node: Node, endpoints: Endpoints, limits: Limits, places: PlacesTarget) -> io::Result<Self> {
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
                        token,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_error(),
                    ),
                    Token(key) => {
                        let Some(c) = self.conns.get_mut(key) else { continue };
                        c.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                        c.writable |= event.is_writable() || event.is_error();
                        if !c.queued {
                            c.queued = true;
                            self.ready.push(key);
                        }
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
        self.shutdown_by = Some(now + SHUTDOWN_GRACE);
        let by = now + SHUTDOWN_GRACE;
        for (key, c) in &mut self.conns {
            if c.role == Role::Inbound && c.state == State::Open {
                // Not `Draining`: a client still sending would get a reset on close, and a reset
                // discards replies still in flight. Shut our side after the last reply and
                // discard input until the client closes or the grace period ends.
                c.set_state(State::Lingering { until: by, shut: false });
                self.lingering.push((by, key, c.id));
                if !c.dirty {
                    c.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
    }

    fn idle_at_shutdown(&self, c: &Conn) -> bool {
        match c.role {
            Role::Inbound => c.state == State::Closed,
            Role::Link(p) => c.state != State::Open || self.node.peer_transmit(p).is_empty(),
        }
    }

    fn accept(&mut self, now: Instant) {
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
            let mut conn = Conn::new(stream, id, Role::Inbound, State::Open, self.limits.max_line);
            conn.readable = true;
            conn.writable = true;
            conn.queued = true;
            self.ready.push(entry.key());
            entry.insert(conn);
        }
        self.accept_retry = None;
    }

    fn dial(&mut self, now: Instant, peer: PeerId) {
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
        entry.insert(Conn::new(stream, id, Role::Link(peer), State::Connecting, self.limits.max_line));
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
                Output::CancelPlaces(id) => self.upstream.cancel(self.poll.registry(), id),
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

    /// A WHATSAT's reply is ready: write it and give the connection its next lines.
    fn deliver_reply(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(key) = self.paused.remove(&conn.0) else { return };
        let Some(c) = self.conns.get_mut(key).filter(|c| c.id == conn.0) else { return };
        if c.role == Role::Inbound {
            log::info!("c{} > {}", c.id, bytes.strip_suffix(b"\n").unwrap_or(bytes).escape_ascii());
            c.out.extend_from_slice(bytes);
        }
        self.resume_lines(key, now);
    }

    /// Hands connection `key` the lines held back behind a WHATSAT now answered, or behind a
    /// feed that filled [`FEED_OUTPUT`](crate::limits::FEED_OUTPUT).
    fn resume_lines(&mut self, key: usize, now: Instant) {
        let Self { conns, node, discard, limits, dirty, ready, paused, .. } = self;
        let Some(c) = conns.get_mut(key) else { return };
        let conn = c.id;
        let fed = feed_conn(node, c, discard, limits, now, unix_nanos(), Input::Resume);
        if c.pending_out() > 0 && !c.dirty {
            c.dirty = true;
            dirty.push(key);
        }
        if fed.paused {
            paused.insert(c.id, key);
        } else if fed.full {
            // More lines wait: serve them next turn, after this turn's writes.
            if !c.queued {
                c.queued = true;
                ready.push(key);
            }
        } else if c.readable && c.state == State::Open && !c.queued {
            // Reading stopped at the WHATSAT; whatever followed it is read now.
            c.queued = true;
            ready.push(key);
        }
        if fed.overlong {
            let until = now + LINGER;
            c.set_state(State::Lingering { until, shut: false });
            self.lingering.push((until, key, conn));
        }
        if c.pending_out() > limits.client_output {
            self.enforce_output_limit(key, now);
        }
    }

    /// Serves one connection's readiness.
    fn service(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.state == State::Connecting {
            if !c.writable {
                return;
            }
            let Role::Link(peer) = c.role else { return };
            // mio's documented way to finish a non-blocking connect: a writable event, then
            // `take_error`, then `peer_addr` (NotConnected means not yet).
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(key, now, &format!("connect failed: {e}"), true),
            }
            match c.stream.peer_addr() {
                Ok(addr) => {
                    let _ = c.stream.set_nodelay(true);
                    c.set_state(State::Open);
                    log::info!("c{} link to {} at {addr}", c.id, self.node.peer_name(peer));
                    self.node.handle_link_up(now, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    c.writable = false;
                    return;
                }
                Err(e) => return self.close(key, now, &format!("connect failed: {e}"), true),
            }
        }
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.reader.is_paused() && !self.paused.contains_key(&c.id) && c.state != State::Closed {
            // Held back by a full feed, not by a WHATSAT: this turn's writes are done.
            self.resume_lines(key, now);
        }
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.writable && c.pending_out() > 0 && !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
        if c.readable {
            self.read(key, now);
        }
    }

    fn read(&mut self, key: usize, now: Instant) {
        let Self {
            conns, node, scratch, discard, limits, dirty, ready, lingering, paused, shutdown_by, ..
        } = self;
        let Some(c) = conns.get_mut(key) else { return };
        // At shutdown, a client may still be sending while it reads the replies computed before
        // the signal: keep discarding until the grace period ends rather than cut it (and lose
        // those replies to the reset) after `LINGER_BYTES`.
        let linger_cap = if shutdown_by.is_some() { usize::MAX } else { LINGER_BYTES };
        let mut budget = limits.read_budget;
        let mut close: Option<String> = None;
        let mut over_limit = false;
        loop {
            let reading = matches!(c.state, State::Open | State::Lingering { .. }) && !c.reader.is_paused();
            if !reading {
                break;
            }
            if budget == 0 {
                // Budget spent with data perhaps still waiting: serve again next turn.
                if !c.queued {
                    c.queued = true;
                    ready.push(key);
                }
                break;
            }
            let n = match c.stream.read(&mut scratch[..budget.min(READ_CHUNK)]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    close = Some(format!("read error: {e}"));
                    break;
                }
            };
            // The receive time of the lines in this chunk (not of the first read of the turn:
            // a long read loop would make later lines look older than they are).
            let wall = unix_nanos();
            budget -= n;
            if let State::Lingering { .. } = c.state {
                c.discarded += n;
                if n == 0 {
                    // End of stream: close once the last replies are written.
                    c.readable = false;
                    if c.pending_out() == 0 {
                        close = Some("end of stream after the last reply".into());
                    } else {
                        c.set_state(State::Draining);
                    }
                    break;
                }
                if c.discarded > linger_cap {
                    close = Some(format!("more than {LINGER_BYTES} bytes sent after the last reply"));
                    break;
                }
                continue;
            }
            let input = if n == 0 { Input::End } else { Input::Data(&scratch[..n]) };
            let fed = feed_conn(node, c, discard, limits, now, wall, input);
            if fed.paused {
                paused.insert(c.id, key);
            }
            if fed.full && !c.queued {
                // The lines left are handed on next turn (see `service`).
                c.queued = true;
                ready.push(key);
            }
            if c.pending_out() > limits.client_output {
                // Write what the socket takes before judging (see `enforce_output_limit`).
                over_limit = true;
                break;
            }
            if c.pending_out() > 0 && !c.dirty {
                c.dirty = true;
                dirty.push(key);
            }
            if fed.overlong {
                c.set_state(State::Lingering { until: now + LINGER, shut: false });
                lingering.push((now + LINGER, key, c.id));
                continue;
            }
            if n == 0 {
                c.readable = false;
                match c.role {
                    Role::Inbound => c.set_state(State::Draining),
                    Role::Link(_) => close = Some("closed by the peer".into()),
                }
                if c.pending_out() == 0 && !c.reader.is_paused() && close.is_none() {
                    close = Some("end of stream".into());
                }
                break;
            }
            if fed.paused {
                // The rest waits until the WHATSAT is answered (see `deliver_reply`).
                break;
            }
        }
        if let Some(reason) = close {
            self.close(key, now, &reason, true);
        } else if over_limit {
            self.enforce_output_limit(key, now);
        }
    }

    /// Replies queued past `client_output`: write what the socket takes now, and close the
    /// connection only if the rest is still over the limit (it does not read). Reading goes on
    /// next turn otherwise. Counting only what the socket refused means a client that reads is
    /// never cut for a burst of pipelined requests.
    fn enforce_output_limit(&mut self, key: usize, now: Instant) {
        self.flush(key, now);
        let limit = self.limits.client_output;
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.state == State::Closed {
            return;
        }
        if c.pending_out() > limit {
            let reason = format!("output limit of {limit} bytes reached (client does not read)");
            self.close(key, now, &reason, true);
        } else if c.readable && !c.queued {
            c.queued = true;
            self.ready.push(key);
        }
    }

    /// Writes every connection's queued bytes: replies for clients, floods for links.
    fn flush_all(&mut self, now: Instant) {
        for peer in 0..self.links.len() {
            if let Some(key) = self.links[peer]
                && !self.node.peer_transmit(PeerId(peer)).is_empty()
                && let Some(c) = self.conns.get_mut(key)
                && !c.dirty
            {
                c.dirty = true;
                self.dirty.push(key);
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

    fn flush(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.writable || matches!(c.state, State::Connecting | State::Closed) {
            return;
        }
        let mut failed = None;
        match c.role {
            Role::Link(peer) => loop {
                let data = self.node.peer_transmit(peer);
                if data.is_empty() {
                    break;
                }
                match write_some(&mut c.stream, data) {
                    Ok(Some(n)) => self.node.peer_sent(peer, n),
                    Ok(None) => {
                        c.writable = false;
                        self.node.peer_blocked(now, peer);
                        break;
                    }
                    Err(reason) => {
                        failed = Some(reason);
                        break;
                    }
                }
            },
            Role::Inbound => {
                while c.pending_out() > 0 {
                    match write_some(&mut c.stream, &c.out[c.out_pos..]) {
                        Ok(Some(n)) => c.out_pos += n,
                        Ok(None) => {
                            c.writable = false;
                            break;
                        }
                        Err(reason) => {
                            failed = Some(reason);
                            break;
                        }
                    }
                }
                if c.pending_out() == 0 {
                    c.out.clear();
                    c.out_pos = 0;
                    if c.out.capacity() > KEEP_OUTPUT {
                        c.out = Vec::new();
                    }
                    match c.state {
                        State::Draining if !c.reader.is_paused() => failed = Some("end of stream".into()),
                        // Not while a WHATSAT's answer is still to come (shutdown can begin
                        // while Places is being asked).
                        State::Lingering { until, shut: false } if !c.reader.is_paused() => {
                            let _ = c.stream.shutdown(Shutdown::Write);
                            c.set_state(State::Lingering { until, shut: true });
                        }
                        _ => {}
                    }
                } else if c.out_pos > c.out.len() / 2 {
                    c.out.drain(..c.out_pos);
                    c.out_pos = 0;
                }
            }
        }
        if let Some(reason) = failed {
            self.close(key, now, &reason, true);
        }
    }

    fn expire_lingerers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lingering.len() {
            let (until, key, id) = self.lingering[i];
            let live =
                self.conns.get(key).is_some_and(|c| c.id == id && matches!(c.state, State::Lingering { .. }));
            if !live {
                self.lingering.swap_remove(i);
            } else if until <= now {
                self.lingering.swap_remove(i);
                self.close(key, now, "closed: no end of stream after the last reply", true);
            } else {
                i += 1;
            }
        }
    }

    /// Marks a connection closed; it is removed at the end of the turn. `notify` tells the node
    /// when a link it still counts as up or connecting has gone.
    fn close(&mut self, key: usize, now: Instant, reason: &str, notify: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.state == State::Closed {
            return;
        }
        c.set_state(State::Closed);
        log::info!("c{} closed: {reason}", c.id);
        self.paused.remove(&c.id);
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

    fn remove_closed(&mut self) {
        for key in self.closing.drain(..) {
            let mut c = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut c.stream);
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
        Role::Inbound => &mut c.out,
        Role::Link(_) => {
            discard.clear();
            discard
        }
    };
    feed_lines(node, c.id, &mut c.reader, out, limits.max_line, now, wall, input)
}

/// One non-blocking write: `Some(n)` bytes taken, `None` if the socket would block, or why the
/// connection failed.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> Result<Option<usize>, String> {
    loop {
        return match stream.write(data) {
            Ok(0) => Err("write returned 0".into()),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("write error: {e}")),
        };
    }
}
