//! The twin's Places client: the mio driver's `places.rs` on tokio. The same sans-IO pieces
//! (`write_request`, [`TlsSession`], [`ResponseReader`]) over a `tokio::net::TcpStream`, the same
//! pool of idle keep-alive connections, the same single retry of a request whose reused
//! connection died before answering, the same resolution cache. Names are resolved with
//! `tokio::net::lookup_host` (tokio's blocking pool, never the runtime thread), one lookup at a
//! time: requests that arrive meanwhile wait for its answer, as the mio driver queues them.
//! Deadlines are the node's: on `CancelPlaces` the request's task is aborted, which drops its
//! connection.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use herd::core::QueryId;
use herd::driver::mio::PlacesTarget;
use herd::places::response::{Progress, Response, ResponseReader};
use herd::places::tls::{TlsConfig, TlsSession};
use herd::places::{Query, write_request};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Idle keep-alive connections kept for reuse.
const MAX_IDLE: usize = 8;
/// How long resolved addresses are used before the name is resolved again.
const DNS_TTL: Duration = Duration::from_secs(300);

/// One HTTPS connection to Places.
struct Conn {
    stream: TcpStream,
    tls: TlsSession,
    /// A number for the log.
    id: u64,
}

/// Why an exchange failed, and whether any of the answer had arrived (then it is not retried).
struct Failure {
    cause: String,
    answered: bool,
}

/// All Places connections of one twin.
pub(super) struct Upstream {
    settings: PlacesTarget,
    idle: RefCell<Vec<Conn>>,
    /// Resolved addresses and until when they are trusted. Held across a lookup, so concurrent
    /// requests share one.
    resolved: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    next_id: Cell<u64>,
}

impl Upstream {
    pub(super) fn new(settings: PlacesTarget) -> Self {
        Self { settings, idle: RefCell::new(Vec::new()), resolved: Mutex::new(None), next_id: Cell::new(0) }
    }

    /// Asks Places `query` for the node's request `id`; the answer, or why there is none
    /// (never containing the key).
    pub(super) async fn ask(&self, id: QueryId, query: &Query) -> Result<Response, String> {
        let Some(key) = &self.settings.key else { return Err("no Places API key".into()) };
        let tls = self.settings.tls.as_ref().map_err(Clone::clone)?;
        let mut request = Vec::with_capacity(512);
        write_request(&mut request, self.settings.api, &self.settings.endpoint, key, query);
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect(tls).await?, false),
            };
            match exchange(&mut conn, &request).await {
                Ok((response, closed)) => {
                    log::info!("places p{}: request {} answered HTTP {}", conn.id, id.0, response.status);
                    let mut idle = self.idle.borrow_mut();
                    if response.keep_alive && !closed && !conn.tls.is_handshaking() && idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                    return Ok(response);
                }
                Err(Failure { cause, answered }) => {
                    if reused && !answered && !retried {
                        log::info!(
                            "places p{}: reused connection failed before answering ({cause}); retrying",
                            conn.id
                        );
                        retried = true;
                        continue;
                    }
                    log::info!("places p{}: request {} failed: {cause}", conn.id, id.0);
                    return Err(cause);
                }
            }
        }
    }

    /// An idle connection the server has not closed meanwhile, if any. (The mio driver watches
    /// idle connections; here a closed one is noticed when it is taken: its end of stream or
    /// close_notify is already waiting in the socket.)
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut conn) = idle.pop() {
            match conn.tls.read_step(&mut TryIo(&conn.stream), &mut Vec::new()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => log::debug!("places p{}: idle connection closed by the server", conn.id),
            }
        }
        None
    }

    /// A new connection to the first address that accepts one.
    async fn connect(&self, tls: &TlsConfig) -> Result<Conn, String> {
        let endpoint = &self.settings.endpoint;
        let addrs = self.resolve().await?;
        let mut last = String::from("no address");
        for addr in addrs {
            let id = self.next_id.get();
            self.next_id.set(id + 1);
            log::info!("places p{id}: connecting to {addr}");
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let tls = TlsSession::new(tls, &endpoint.host)?;
                    return Ok(Conn { stream, tls, id });
                }
                Err(e) => last = format!("connect to {addr}: {e}"),
            }
        }
        // Forget the addresses so the next request resolves again.
        *self.resolved.lock().await = None;
        Err(last)
    }

    /// The Places host's addresses: a literal IP as it is, a name from the cache or resolved.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let (host, port) = (self.settings.endpoint.host.as_str(), self.settings.endpoint.port);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut resolved = self.resolved.lock().await;
        if let Some((addrs, until)) = &*resolved
            && Instant::now() < *until
        {
            return Ok(addrs.clone());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err("no addresses".into());
        }
        log::info!("places: {host} resolved to {addrs:?}");
        *resolved = Some((addrs.clone(), Instant::now() + DNS_TTL));
        Ok(addrs)
    }
}

/// Sends `request` on `conn` and reads the response. `Ok` with whether the server closed the
/// connection after it.
async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<(Response, bool), Failure> {
    let mut answered = false;
    let fail = |cause: String, answered: bool| Failure { cause, answered };
    conn.tls.send(request).map_err(|e| fail(format!("TLS: {e}"), false))?;
    let mut reader = ResponseReader::new();
    let mut plain = Vec::new();
    loop {
        // TLS records to send: the handshake, the request.
        while conn.tls.wants_write() {
            match conn.tls.write_to(&mut TryIo(&conn.stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.stream.writable().await.map_err(|e| fail(format!("write: {e}"), answered))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(format!("write: {e}"), answered)),
            }
        }
        plain.clear();
        let closed = match conn.tls.read_step(&mut TryIo(&conn.stream), &mut plain) {
            Ok(closed) => closed,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.stream.readable().await.map_err(|e| fail(e.to_string(), answered))?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e.to_string(), answered)),
        };
        if !plain.is_empty() {
            answered = true;
            match reader.feed(&plain) {
                Ok(Progress::Partial) => {}
                Ok(Progress::Done(response)) => return Ok((response, closed)),
                Err(e) => return Err(fail(e.to_string(), answered)),
            }
        }
        if closed {
            return match reader.finish() {
                Ok(response) => Ok((response, true)),
                Err(e) => Err(fail(e.to_string(), answered)),
            };
        }
    }
}

/// A tokio socket as the blocking `Read`/`Write` that rustls expects: each call is one
/// non-blocking attempt, `WouldBlock` when the socket is not ready (tokio then clears its
/// readiness, so the next `readable()`/`writable()` waits for the kernel).
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
