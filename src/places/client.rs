//! The Places client's decisions, sans-IO: which connection carries a request, when a new one is
//! opened, when a dead reused connection is retried, when a name is resolved again, and how TLS
//! records become a [`Response`]. Drivers only move bytes and events: they open the sockets the
//! client asks for ([`Event::Connect`]), hand it what the sockets read
//! ([`Client::handle_data`]), write what it has to send ([`Client::transmit`]), resolve names off
//! the loop ([`Event::Resolve`]) and close what it closes ([`Event::Close`]). The mio reactor and
//! the tokio twin drive this same client, so pooling, the single retry and the DNS cache are
//! written once.
//!
//! # Driving contract
//! 1. [`start`](Client::start) a request; then, and after every call below, drain
//!    [`poll_event`](Client::poll_event) and carry out each [`Event`], and drain
//!    [`poll_done`](Client::poll_done) for finished requests.
//! 2. For every open connection, write [`transmit`](Client::transmit) when the socket is writable
//!    and report what it took with [`handle_sent`](Client::handle_sent).
//! 3. Report what the socket reads with [`handle_data`](Client::handle_data), its end of stream
//!    with [`handle_eof`](Client::handle_eof), a finished TCP connect with
//!    [`handle_connected`](Client::handle_connected), and any I/O failure with
//!    [`handle_failed`](Client::handle_failed).
//!
//! Connections are named by a number that is never reused (`p<N>` in the log), so a late event
//! for a closed connection can never reach a newer one.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::response::{HttpError, Progress, Response, ResponseReader};
use super::tls::{TlsConfig, TlsSession};
use super::{Endpoint, PlacesApi, Query, Secret, write_request};
use crate::limits::{DNS_TTL, MAX_IDLE};

/// One upstream Places request, as the node names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryId(pub u64);

/// A Places connection, by its number in the log (`p<N>`); never reused.
pub type ConnId = u64;

/// Where and how to ask Places: the API, the URL, the key and the trust settings. Built from
/// the configuration's `places:` section; [`crate::core::WhatsatPolicy`] says how WHATSAT uses it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which API, and so which request.
    pub api: PlacesApi,
    /// Where.
    pub endpoint: Endpoint,
    /// The key, if any.
    pub key: Option<Secret>,
    /// The trust settings, or why they could not be built (then every request fails with it).
    pub tls: Result<TlsConfig, String>,
}

/// Why a request got no response. The node tells them apart in its warnings; each carries the
/// cause as logged (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No API key is configured.
    NoKey,
    /// TLS could not be set up: the trust settings or the server name.
    Setup(String),
    /// The host name did not resolve.
    Resolve(String),
    /// No TCP connection could be made.
    Connect(String),
    /// Reading or writing the socket failed.
    Io(String),
    /// The TLS session failed (a bad certificate, a missing close_notify, ...).
    Tls(String),
    /// The response could not be read.
    Http(HttpError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKey => f.write_str("no Places API key"),
            Self::Setup(s) | Self::Resolve(s) | Self::Connect(s) | Self::Io(s) | Self::Tls(s) => {
                f.write_str(s)
            }
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Failure {}

/// What the driver must do for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Resolve `host` off the loop, then report [`Client::handle_resolved`].
    Resolve {
        /// The name.
        host: String,
        /// The port to pair with each address.
        port: u16,
    },
    /// Open a non-blocking TCP connection to `addr` for connection `conn`; report
    /// [`Client::handle_connected`] or [`Client::handle_failed`].
    Connect {
        /// The connection it becomes.
        conn: ConnId,
        /// Where.
        addr: SocketAddr,
    },
    /// Close connection `conn`'s socket; the client has forgotten it.
    Close(ConnId),
}

enum Resolve {
    /// Nothing known; resolve on the next request.
    Unknown,
    /// A resolution is under way.
    Pending,
    /// Addresses, and when they stop being trusted (never, for a literal IP).
    Known { addrs: Vec<SocketAddr>, until: Option<Instant> },
}

/// A request on its way.
struct Request {
    id: QueryId,
    bytes: Vec<u8>,
    /// Already retried once after a reused connection died before answering.
    retried: bool,
}

struct Exchange {
    request: Request,
    reader: ResponseReader,
    /// Some response bytes arrived: the request cannot be retried any more.
    answered: bool,
}

struct Conn {
    tls: TlsSession,
    exchange: Option<Exchange>,
    /// Has served a request before this one.
    reused: bool,
    /// The TCP connect finished.
    connected: bool,
    /// Addresses still to try if the connect fails.
    fallbacks: Vec<SocketAddr>,
    /// TLS records to write; `out[sent..]` is still to go.
    out: Vec<u8>,
    sent: usize,
}

/// All Places connections and requests of one server.
pub struct Client {
    target: Target,
    conns: HashMap<ConnId, Conn>,
    /// Open connections with no request, most recently used last.
    idle: Vec<ConnId>,
    /// Requests waiting for the host name to resolve.
    waiting: VecDeque<Request>,
    resolve: Resolve,
    events: VecDeque<Event>,
    done: VecDeque<(QueryId, Result<Response, Failure>)>,
    next_conn: ConnId,
    /// Reused between reads: the plaintext of one batch of TLS records.
    plain: Vec<u8>,
}

impl Client {
    /// A client with no connection; a literal IP endpoint is never resolved.
    pub fn new(target: Target) -> Self {
        let resolve = match target.endpoint.host.parse::<IpAddr>() {
            Ok(ip) => Resolve::Known { addrs: vec![SocketAddr::new(ip, target.endpoint.port)], until: None },
            Err(_) => Resolve::Unknown,
        };
        Self {
            target,
            conns: HashMap::new(),
            idle: Vec::new(),
            waiting: VecDeque::new(),
            resolve,
            events: VecDeque::new(),
            done: VecDeque::new(),
            next_conn: 0,
            plain: Vec::new(),
        }
    }

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next finished request: its response, or why there is none.
    #[must_use]
    pub fn poll_done(&mut self) -> Option<(QueryId, Result<Response, Failure>)> {
        self.done.pop_front()
    }

    /// Whether connection `conn` is still open (the driver stops reading one that is not).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Starts request `id` at `now`.
    pub fn start(&mut self, now: Instant, id: QueryId, query: &Query) {
        let Some(key) = &self.target.key else {
            self.done.push_back((id, Err(Failure::NoKey)));
            return;
        };
        if let Err(e) = &self.target.tls {
            self.done.push_back((id, Err(Failure::Setup(e.clone()))));
            return;
        }
        let mut bytes = Vec::with_capacity(512);
        write_request(&mut bytes, self.target.api, &self.target.endpoint, key, query);
        self.dispatch(now, Request { id, bytes, retried: false });
    }

    /// Sends a request on an idle connection, a new one, or queues it behind name resolution. A
    /// retry never takes an idle connection: when one pooled connection died unnoticed (a NAT
    /// or load balancer that dropped it without a FIN), its neighbours in the pool likely did too.
    fn dispatch(&mut self, now: Instant, request: Request) {
        while let Some(conn) = if request.retried { None } else { self.idle.pop() } {
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            if let Err(e) = c.tls.send(&request.bytes) {
                log::debug!("places p{conn}: reuse failed: {e}");
                self.close(conn);
                continue;
            }
            c.reused = true;
            c.exchange = Some(Exchange { request, reader: ResponseReader::new(), answered: false });
            return;
        }
        match &self.resolve {
            Resolve::Known { addrs, until } if until.is_none_or(|u| now < u) => {
                let addrs = addrs.clone();
                self.connect(addrs, request);
            }
            Resolve::Pending => self.waiting.push_back(request),
            Resolve::Known { .. } | Resolve::Unknown => {
                self.waiting.push_back(request);
                self.resolve = Resolve::Pending;
                let endpoint = &self.target.endpoint;
                self.events.push_back(Event::Resolve { host: endpoint.host.clone(), port: endpoint.port });
            }
        }
    }

    /// The resolution asked by [`Event::Resolve`] finished at `now`.
    pub fn handle_resolved(&mut self, now: Instant, result: Result<Vec<SocketAddr>, String>) {
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                log::info!("places: {} resolved to {addrs:?}", self.target.endpoint.host);
                self.resolve = Resolve::Known { addrs: addrs.clone(), until: Some(now + DNS_TTL) };
                for request in std::mem::take(&mut self.waiting) {
                    self.connect(addrs.clone(), request);
                }
            }
            other => {
                let cause = other.err().unwrap_or_else(|| "no addresses".into());
                self.resolve = Resolve::Unknown;
                for request in std::mem::take(&mut self.waiting) {
                    self.done.push_back((request.id, Err(Failure::Resolve(cause.clone()))));
                }
            }
        }
    }

    /// Opens a connection for `request` to the first of `addrs`; the others are fallbacks.
    fn connect(&mut self, mut addrs: Vec<SocketAddr>, request: Request) {
        let Ok(tls) = &self.target.tls else { return };
        let mut session = match TlsSession::new(tls, &self.target.endpoint.host) {
            Ok(s) => s,
            Err(e) => return self.done.push_back((request.id, Err(Failure::Setup(e)))),
        };
        if let Err(e) = session.send(&request.bytes) {
            return self.done.push_back((request.id, Err(Failure::Tls(format!("TLS: {e}")))));
        }
        addrs.reverse();
        let Some(addr) = addrs.pop() else {
            return self.done.push_back((request.id, Err(Failure::Connect("no address".into()))));
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        log::info!("places p{conn}: connecting to {addr}");
        self.conns.insert(
            conn,
            Conn {
                tls: session,
                exchange: Some(Exchange { request, reader: ResponseReader::new(), answered: false }),
                reused: false,
                connected: false,
                fallbacks: addrs,
                out: Vec::new(),
                sent: 0,
            },
        );
        self.events.push_back(Event::Connect { conn, addr });
    }

    /// Connection `conn`'s TCP connect finished.
    pub fn handle_connected(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.connected = true;
        }
    }

    /// TLS records connection `conn` has to send (the handshake, the request), once its socket
    /// is writable; report what was written with [`handle_sent`](Self::handle_sent).
    pub fn transmit(&mut self, conn: ConnId) -> &[u8] {
        let Some(c) = self.conns.get_mut(&conn) else { return &[] };
        while c.tls.wants_write() {
            // Writing to a Vec cannot fail.
            if c.tls.write_to(&mut c.out).is_err() {
                break;
            }
        }
        &c.out[c.sent..]
    }

    /// The driver wrote `n` bytes of [`transmit`](Self::transmit).
    pub fn handle_sent(&mut self, conn: ConnId, n: usize) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.sent = (c.sent + n).min(c.out.len());
        if c.sent == c.out.len() {
            c.out.clear();
            c.sent = 0;
        }
    }

    /// Bytes read from connection `conn`'s socket. Plaintext is taken out of the TLS session
    /// after every batch of records, so an answer of any size is read and the response reader's
    /// limits apply as the bytes arrive.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, mut data: &[u8]) {
        while !data.is_empty() && self.conns.contains_key(&conn) {
            if self.step(now, conn, &mut data).is_break() {
                return;
            }
        }
    }

    /// Connection `conn`'s socket reached end of stream.
    pub fn handle_eof(&mut self, now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            let _ = self.step(now, conn, &mut &[][..]);
        }
    }

    /// One batch of TLS records from `data` (end of stream if it is empty).
    fn step(&mut self, now: Instant, conn: ConnId, data: &mut &[u8]) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        let Some(c) = self.conns.get_mut(&conn) else { return Break(()) };
        self.plain.clear();
        let closed = match c.tls.read_step(data, &mut self.plain) {
            Ok(closed) => closed,
            Err(e) => {
                self.fail(now, conn, Failure::Tls(e.to_string()));
                return Break(());
            }
        };
        let Some(ex) = c.exchange.as_mut() else {
            if !self.plain.is_empty() || closed {
                log::debug!("places p{conn}: idle connection closed by the server");
                self.close(conn);
                return Break(());
            }
            return Continue(());
        };
        if !self.plain.is_empty() {
            ex.answered = true;
            match ex.reader.feed(&self.plain) {
                Ok(Progress::Partial) => {}
                Ok(Progress::Done(response)) => {
                    self.finish(conn, response, closed);
                    return Continue(());
                }
                Err(e) => {
                    self.fail(now, conn, Failure::Http(e));
                    return Break(());
                }
            }
        }
        if closed {
            match ex.reader.finish() {
                Ok(response) => self.finish(conn, response, true),
                Err(e) => self.fail(now, conn, Failure::Http(e)),
            }
            return Break(());
        }
        Continue(())
    }

    fn finish(&mut self, conn: ConnId, response: Response, closed: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(ex) = c.exchange.take() else { return };
        log::info!("places p{conn}: request {} answered HTTP {}", ex.request.id.0, response.status);
        let reusable = response.keep_alive && !closed && !c.tls.is_handshaking();
        self.done.push_back((ex.request.id, Ok(response)));
        if reusable && self.idle.len() < MAX_IDLE {
            self.idle.push(conn);
        } else {
            self.close(conn);
        }
    }

    /// Connection `conn`'s socket failed at `now` (or its connect did).
    pub fn handle_failed(&mut self, now: Instant, conn: ConnId, failure: Failure) {
        self.fail(now, conn, failure);
    }

    /// The connection failed. A connect that fails tries the next address; a reused connection
    /// that died before any byte of its answer (the server closed it while idle) has its
    /// request retried once on another; anything else fails the request.
    fn fail(&mut self, now: Instant, conn: ConnId, failure: Failure) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.connected && !c.fallbacks.is_empty() && matches!(failure, Failure::Connect(_)) {
            let addrs = std::mem::take(&mut c.fallbacks);
            let request = c.exchange.take().map(|ex| ex.request);
            self.close(conn);
            if let Some(request) = request {
                let mut addrs = addrs;
                addrs.reverse();
                self.connect(addrs, request);
            }
            return;
        }
        let (reused, connected) = (c.reused, c.connected);
        let exchange = c.exchange.take();
        self.close(conn);
        let Some(ex) = exchange else {
            log::debug!("places p{conn}: idle connection failed: {failure}");
            return;
        };
        if !connected && matches!(self.resolve, Resolve::Known { until: Some(_), .. }) {
            // Forget resolved (not literal) addresses so the next request resolves again.
            self.resolve = Resolve::Unknown;
        }
        if reused && !ex.answered && !ex.request.retried {
            log::info!("places p{conn}: reused connection failed before answering ({failure}); retrying");
            let request = Request { retried: true, ..ex.request };
            self.dispatch(now, request);
            return;
        }
        log::info!("places p{conn}: request {} failed: {failure}", ex.request.id.0);
        self.done.push_back((ex.request.id, Err(failure)));
    }

    /// The node gave up on `id`: its connection (or its place in the queue) is dropped.
    pub fn cancel(&mut self, id: QueryId) {
        self.waiting.retain(|r| r.id != id);
        let conn = self
            .conns
            .iter()
            .find(|(_, c)| c.exchange.as_ref().is_some_and(|e| e.request.id == id))
            .map(|(&k, _)| k);
        if let Some(conn) = conn {
            log::info!("places p{conn}: request {} cancelled", id.0);
            self.close(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.events.push_back(Event::Close(conn));
        }
        self.idle.retain(|&k| k != conn);
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
