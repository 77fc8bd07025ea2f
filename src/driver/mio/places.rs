//! The Places side of the reactor: it moves bytes and events for the sans-IO
//! [`Client`](crate::places::client::Client), which makes every decision (pool, retry, DNS
//! cache, TLS, response reading). Here: non-blocking sockets registered with the loop's
//! `Poll`, readiness bits kept per socket, and name resolution on a helper thread that wakes the
//! loop through a `mio::Waker`, never on the loop. Deadlines are the node's: it says
//! [`Output::CancelPlaces`](crate::core::Output::CancelPlaces) and the client drops the
//! connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};

use crate::core::QueryId;
use crate::driver::{read_some, write_some};
use crate::places::Query;
use crate::places::client::{Client, ConnId, Event, Failure, Target};
use crate::places::response::Response;

/// Tokens at and above this name Places connections (connection number + base); client keys
/// never get this far.
pub(super) const PLACES_BASE: usize = 1 << 40;

/// Bytes read from a Places socket per call.
const PLACES_READ: usize = 16 << 10;

/// One Places socket and its readiness.
struct Socket {
    stream: TcpStream,
    /// The non-blocking connect has not finished yet.
    connecting: bool,
    readable: bool,
    writable: bool,
}

/// All Places sockets of the reactor.
pub(super) struct Upstream {
    client: Client,
    sockets: HashMap<ConnId, Socket>,
    tx: mpsc::Sender<Result<Vec<SocketAddr>, String>>,
    rx: mpsc::Receiver<Result<Vec<SocketAddr>, String>>,
    waker: Arc<Waker>,
    scratch: Box<[u8]>,
}

impl Upstream {
    pub(super) fn new(target: Target, waker: Arc<Waker>) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            client: Client::new(target),
            sockets: HashMap::new(),
            tx,
            rx,
            waker,
            scratch: vec![0; PLACES_READ].into_boxed_slice(),
        }
    }

    /// Finished requests since the last call.
    pub(super) fn take_done(&mut self) -> Vec<(QueryId, Result<Response, Failure>)> {
        std::iter::from_fn(|| self.client.poll_done()).collect()
    }

    /// Starts request `id`.
    pub(super) fn start(&mut self, registry: &Registry, now: Instant, id: QueryId, query: &Query) {
        self.client.start(now, id, query);
        self.pump(registry, now);
    }

    /// The node gave up on `id`.
    pub(super) fn cancel(&mut self, registry: &Registry, now: Instant, id: QueryId) {
        self.client.cancel(id);
        self.pump(registry, now);
    }

    /// The waker fired: name resolution finished.
    pub(super) fn on_wake(&mut self, registry: &Registry, now: Instant) {
        while let Ok(result) = self.rx.try_recv() {
            self.client.handle_resolved(now, result);
        }
        self.pump(registry, now);
    }

    /// Readiness for the Places socket with this token.
    pub(super) fn on_event(
        &mut self,
        registry: &Registry,
        now: Instant,
        token: Token,
        readable: bool,
        writable: bool,
    ) {
        let conn = (token.0 - PLACES_BASE) as ConnId;
        let Some(s) = self.sockets.get_mut(&conn) else { return };
        s.readable |= readable;
        s.writable |= writable;
        self.drive(now, conn);
        self.pump(registry, now);
    }

    /// Carries out the client's events, then writes what every writable socket has to send,
    /// until neither gives anything more to do.
    fn pump(&mut self, registry: &Registry, now: Instant) {
        loop {
            let mut acted = false;
            while let Some(event) = self.client.poll_event() {
                acted = true;
                match event {
                    Event::Resolve { host, port } => self.resolve_in_background(host, port),
                    Event::Connect { conn, addr } => self.connect(registry, now, conn, addr),
                    Event::Close(conn) => {
                        if let Some(mut s) = self.sockets.remove(&conn) {
                            let _ = registry.deregister(&mut s.stream);
                        }
                    }
                }
            }
            let writable: Vec<ConnId> =
                self.sockets.iter().filter(|(_, s)| s.writable && !s.connecting).map(|(&c, _)| c).collect();
            for conn in writable {
                acted |= self.write(now, conn);
            }
            if !acted {
                return;
            }
        }
    }

    fn connect(&mut self, registry: &Registry, now: Instant, conn: ConnId, addr: SocketAddr) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                return self.client.handle_failed(
                    now,
                    conn,
                    Failure::Connect(format!("connect to {addr}: {e}")),
                );
            }
        };
        let token = Token(PLACES_BASE + conn as usize);
        if let Err(e) = registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            return self.client.handle_failed(now, conn, Failure::Connect(format!("register: {e}")));
        }
        self.sockets.insert(conn, Socket { stream, connecting: true, readable: false, writable: false });
    }

    fn resolve_in_background(&mut self, host: String, port: u16) {
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

    /// Moves one socket as far as its readiness allows: finishes its connect, reads it dry.
    fn drive(&mut self, now: Instant, conn: ConnId) {
        let Some(s) = self.sockets.get_mut(&conn) else { return };
        if s.connecting {
            if !s.writable {
                return;
            }
            match super::connect_status(&s.stream) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    s.writable = false;
                    return;
                }
                Err(e) => {
                    return self.client.handle_failed(now, conn, Failure::Connect(format!("connect: {e}")));
                }
            }
            s.connecting = false;
            self.client.handle_connected(conn);
        }
        while s.readable && self.client.is_open(conn) {
            match read_some(|buf| s.stream.read(buf), &mut self.scratch) {
                Ok(Some(0)) => {
                    s.readable = false;
                    self.client.handle_eof(now, conn);
                }
                Ok(Some(n)) => self.client.handle_data(now, conn, &self.scratch[..n]),
                Ok(None) => s.readable = false,
                Err(cause) => return self.client.handle_failed(now, conn, Failure::Io(cause)),
            }
        }
    }

    /// Writes what connection `conn` has to send; whether anything was written or failed.
    fn write(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(s) = self.sockets.get_mut(&conn) else { return false };
        let mut acted = false;
        while s.writable {
            let data = self.client.transmit(conn);
            if data.is_empty() {
                break;
            }
            match write_some(|d| s.stream.write(d), data) {
                Ok(Some(n)) => {
                    self.client.handle_sent(conn, n);
                    acted = true;
                }
                Ok(None) => s.writable = false,
                Err(cause) => {
                    self.client.handle_failed(now, conn, Failure::Io(cause));
                    return true;
                }
            }
        }
        acted
    }
}
