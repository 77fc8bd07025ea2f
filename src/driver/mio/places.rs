//! The Places side of the reactor: HTTPS connections driven by the same loop as the clients.
//!
//! Each connection is a state machine (`Connecting`, then `Open` carrying at most one request);
//! idle ones are kept in a small pool and reused. Host names are resolved on a helper thread that
//! wakes the loop through a `mio::Waker`, never on the loop. Deadlines are the node's: it says
//! [`Output::CancelPlaces`](crate::core::Output::CancelPlaces) and the connection is dropped.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;

use crate::config::{PlacesApi, Secret};
use crate::core::QueryId;
use crate::places::response::{Progress, Response, ResponseReader};
use crate::places::tls::{TlsConfig, TlsSession};
use crate::places::{Endpoint, Query, write_request};

/// Tokens at and above this name Places connections (slab key + base); client keys never get
/// this far.
pub(super) const PLACES_BASE: usize = 1 << 40;
/// Idle keep-alive connections kept for reuse.
const MAX_IDLE: usize = 8;
/// How long resolved addresses are used before the name is resolved again.
const DNS_TTL: Duration = Duration::from_secs(300);

/// Where and how to ask Places.
pub struct Settings {
    /// Which API, and so which request.
    pub api: PlacesApi,
    /// Where.
    pub endpoint: Endpoint,
    /// The key, if any.
    pub key: Option<Secret>,
    /// The trust settings, or why they could not be built (then every request fails with it).
    pub tls: Result<TlsConfig, String>,
}

enum Resolve {
    /// Nothing known; resolve on the next request.
    Unknown,
    /// A helper thread is resolving.
    Pending,
    /// Addresses, and when they stop being trusted.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
}

struct Conn {
    stream: TcpStream,
    tls: TlsSession,
    phase: Phase,
    exchange: Option<Exchange>,
    readable: bool,
    writable: bool,
    /// Has served a request before this one.
    reused: bool,
    /// A number for the log.
    id: u64,
}

/// All Places connections.
pub(super) struct Upstream {
    settings: Settings,
    conns: Slab<Conn>,
    idle: Vec<usize>,
    /// Requests waiting for the host name to resolve.
    waiting: VecDeque<Request>,
    resolve: Resolve,
    tx: mpsc::Sender<Result<Vec<SocketAddr>, String>>,
    rx: mpsc::Receiver<Result<Vec<SocketAddr>, String>>,
    waker: Arc<Waker>,
    /// Finished requests, for the reactor to hand to the node.
    done: Vec<(QueryId, Result<Response, String>)>,
    next_id: u64,
}

impl Upstream {
    pub(super) fn new(settings: Settings, waker: Arc<Waker>) -> Self {
        let (tx, rx) = mpsc::channel();
        let resolve = match settings.endpoint.host.parse::<IpAddr>() {
            Ok(ip) => {
                Resolve::Known { addrs: vec![SocketAddr::new(ip, settings.endpoint.port)], until: None }
            }
            Err(_) => Resolve::Unknown,
        };
        Self {
            settings,
            conns: Slab::new(),
            idle: Vec::new(),
            waiting: VecDeque::new(),
            resolve,
            tx,
            rx,
            waker,
            done: Vec::new(),
            next_id: 0,
        }
    }

    /// Finished requests since the last call.
    pub(super) fn take_done(&mut self) -> Vec<(QueryId, Result<Response, String>)> {
        std::mem::take(&mut self.done)
    }

    /// Starts request `id`.
    pub(super) fn start(&mut self, registry: &Registry, now: Instant, id: QueryId, query: &Query) {
        let Some(key) = &self.settings.key else {
            self.done.push((id, Err("no Places API key".into())));
            return;
        };
        if let Err(e) = &self.settings.tls {
            self.done.push((id, Err(e.clone())));
            return;
        }
        let mut bytes = Vec::with_capacity(512);
        write_request(&mut bytes, self.settings.api, &self.settings.endpoint, key, query);
        self.dispatch(registry, now, Request { id, bytes, retried: false });
    }

    /// Sends a request on an idle connection, a new one, or queues it behind name resolution.
    fn dispatch(&mut self, registry: &Registry, now: Instant, request: Request) {
        while let Some(key) = self.idle.pop() {
            let Some(c) = self.conns.get_mut(key) else { continue };
            if c.exchange.is_some() || c.phase != Phase::Open {
                continue;
            }
            if let Err(e) = c.tls.send(&request.bytes) {
                log::debug!("places p{}: reuse failed: {e}", c.id);
                self.close(registry, key);
                continue;
            }
            c.reused = true;
            c.exchange = Some(Exchange { request, reader: ResponseReader::new(), answered: false });
            self.drive(registry, key);
            return;
        }
        match &self.resolve {
            Resolve::Known { addrs, until } if until.is_none_or(|u| now < u) => {
                let addrs = addrs.clone();
                self.connect(registry, &addrs, request);
            }
            Resolve::Pending => self.waiting.push_back(request),
            Resolve::Known { .. } | Resolve::Unknown => {
                self.waiting.push_back(request);
                self.resolve_in_background();
            }
        }
    }

    fn resolve_in_background(&mut self) {
        self.resolve = Resolve::Pending;
        let (host, port) = (self.settings.endpoint.host.clone(), self.settings.endpoint.port);
        let (tx, waker) = (self.tx.clone(), Arc::clone(&self.waker));
        let spawned = std::thread::Builder::new().name("places-dns".into()).spawn(move || {
            let result = (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| format!("cannot resolve {host}: {e}"));
            // The loop may be gone at shutdown; nothing to do then.
            let _ = tx.send(result);
            let _ = waker.wake();
        });
        if let Err(e) = spawned {
            let _ = self.tx.send(Err(format!("cannot start the resolver thread: {e}")));
            let _ = self.waker.wake();
        }
    }

    /// The waker fired: name resolution finished.
    pub(super) fn on_wake(&mut self, registry: &Registry, now: Instant) {
        while let Ok(result) = self.rx.try_recv() {
            match result {
                Ok(addrs) if !addrs.is_empty() => {
                    log::info!("places: {} resolved to {addrs:?}", self.settings.endpoint.host);
                    self.resolve = Resolve::Known { addrs: addrs.clone(), until: Some(now + DNS_TTL) };
                    for request in std::mem::take(&mut self.waiting) {
                        self.connect(registry, &addrs, request);
                    }
                }
                other => {
                    let cause = other.err().unwrap_or_else(|| "no addresses".into());
                    self.resolve = Resolve::Unknown;
                    for request in std::mem::take(&mut self.waiting) {
                        self.done.push((request.id, Err(cause.clone())));
                    }
                }
            }
        }
    }

    fn connect(&mut self, registry: &Registry, addrs: &[SocketAddr], request: Request) {
        let Ok(tls) = &self.settings.tls else { return };
        let mut last = String::from("no address");
        for &addr in addrs {
            let mut stream = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    last = format!("connect to {addr}: {e}");
                    continue;
                }
            };
            let mut session = match TlsSession::new(tls, &self.settings.endpoint.host) {
                Ok(s) => s,
                Err(e) => {
                    self.done.push((request.id, Err(e)));
                    return;
                }
            };
            if let Err(e) = session.send(&request.bytes) {
                self.done.push((request.id, Err(format!("TLS: {e}"))));
                return;
            }
            let entry = self.conns.vacant_entry();
            if let Err(e) = registry.register(
                &mut stream,
                Token(PLACES_BASE + entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                last = format!("register: {e}");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            log::info!("places p{id}: connecting to {addr}");
            entry.insert(Conn {
                stream,
                tls: session,
                phase: Phase::Connecting,
                exchange: Some(Exchange { request, reader: ResponseReader::new(), answered: false }),
                readable: false,
                writable: false,
                reused: false,
                id,
            });
            return;
        }
        // Forget resolved (not literal) addresses so the next request resolves again.
        if matches!(self.resolve, Resolve::Known { until: Some(_), .. }) {
            self.resolve = Resolve::Unknown;
        }
        self.done.push((request.id, Err(last)));
    }

    /// Readiness for the Places connection with this token.
    pub(super) fn on_event(&mut self, registry: &Registry, token: Token, readable: bool, writable: bool) {
        let key = token.0 - PLACES_BASE;
        let Some(c) = self.conns.get_mut(key) else { return };
        c.readable |= readable;
        c.writable |= writable;
        self.drive(registry, key);
    }

    /// Moves one connection as far as its readiness allows.
    fn drive(&mut self, registry: &Registry, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.phase == Phase::Connecting {
            if !c.writable {
                return;
            }
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(registry, key, format!("connect: {e}")),
            }
            match c.stream.peer_addr() {
                Ok(_) => c.phase = Phase::Open,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    c.writable = false;
                    return;
                }
                Err(e) => return self.fail(registry, key, format!("connect: {e}")),
            }
        }
        // Plaintext is handed to the response reader after every batch of TLS records, so an
        // answer of any size is read and the reader's limits apply as the bytes arrive.
        let mut plain = Vec::new();
        while c.readable {
            plain.clear();
            let closed = match c.tls.read_step(&mut c.stream, &mut plain) {
                Ok(closed) => closed,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(registry, key, e.to_string()),
            };
            if closed {
                c.readable = false;
            }
            let Some(ex) = c.exchange.as_mut() else {
                if !plain.is_empty() || closed {
                    log::debug!("places p{}: idle connection closed by the server", c.id);
                    self.close(registry, key);
                    return;
                }
                continue;
            };
            if !plain.is_empty() {
                ex.answered = true;
                match ex.reader.feed(&plain) {
                    Ok(Progress::Partial) => {}
                    Ok(Progress::Done(response)) => return self.finish(registry, key, response, closed),
                    Err(e) => return self.fail(registry, key, e.to_string()),
                }
            }
            if closed {
                return match ex.reader.finish() {
                    Ok(response) => self.finish(registry, key, response, true),
                    Err(e) => self.fail(registry, key, e.to_string()),
                };
            }
        }
        if c.exchange.is_none() {
            return;
        }
        while c.writable && c.tls.wants_write() {
            match c.tls.write_to(&mut c.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(registry, key, format!("write: {e}")),
            }
        }
    }

    fn finish(&mut self, registry: &Registry, key: usize, response: Response, closed: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let Some(ex) = c.exchange.take() else { return };
        log::info!("places p{}: request {} answered HTTP {}", c.id, ex.request.id.0, response.status);
        let reusable = response.keep_alive && !closed && !c.tls.is_handshaking();
        self.done.push((ex.request.id, Ok(response)));
        if reusable && self.idle.len() < MAX_IDLE {
            self.idle.push(key);
            // Records may wait behind the answer (a close_notify, say): edge-triggered readiness
            // will not report them again, so read on as an idle connection does.
            self.drive(registry, key);
        } else {
            self.close(registry, key);
        }
    }

    /// The connection failed: its request is retried once if it was a reused connection that
    /// died before answering (the server closed it while idle), and fails otherwise.
    fn fail(&mut self, registry: &Registry, key: usize, cause: String) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let id = c.id;
        let reused = c.reused;
        let exchange = c.exchange.take();
        self.close(registry, key);
        let Some(ex) = exchange else {
            log::debug!("places p{id}: idle connection failed: {cause}");
            return;
        };
        if reused && !ex.answered && !ex.request.retried {
            log::info!("places p{id}: reused connection failed before answering ({cause}); retrying");
            let request = Request { retried: true, ..ex.request };
            self.dispatch(registry, Instant::now(), request);
            return;
        }
        log::info!("places p{id}: request {} failed: {cause}", ex.request.id.0);
        self.done.push((ex.request.id, Err(cause)));
    }

    /// The node gave up on `id`: drop its connection (or its place in the queue).
    pub(super) fn cancel(&mut self, registry: &Registry, id: QueryId) {
        self.waiting.retain(|r| r.id != id);
        let key = self
            .conns
            .iter()
            .find(|(_, c)| c.exchange.as_ref().is_some_and(|e| e.request.id == id))
            .map(|(k, _)| k);
        if let Some(key) = key {
            log::info!("places p{}: request {} cancelled", self.conns[key].id, id.0);
            self.close(registry, key);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut c.stream);
        }
        self.idle.retain(|&k| k != key);
    }
}
