//! Unit tests of the Places client's decisions, by state and event, against an in-memory rustls
//! server: no sockets, no clock. Each test plays the driver: it carries out the client's events
//! and moves bytes between the client and the server by hand.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use super::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

struct Fixture {
    client: Client,
    server_config: Arc<ServerConfig>,
    /// Each connection's server side, by connection.
    servers: HashMap<ConnId, ServerConnection>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn query() -> Query {
    Query { lat: 1.0, lng: 2.0, radius_m: 1000.0, bound: 5 }
}

fn fixture(host: &str) -> Fixture {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("herd-client-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("cert.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let target = Target {
        api: PlacesApi::New,
        endpoint: Endpoint { host: host.into(), port: 443, base: String::new() },
        key: Some(Secret::new("k".into())),
        tls: TlsConfig::new(Some(&pem)),
    };
    Fixture {
        client: Client::new(target),
        server_config: Arc::new(server_config),
        servers: HashMap::new(),
        dir,
    }
}

impl Fixture {
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn done(&mut self) -> Vec<(QueryId, Result<u16, Failure>)> {
        std::iter::from_fn(|| self.client.poll_done()).map(|(id, r)| (id, r.map(|r| r.status))).collect()
    }

    /// Accepts connection `conn` on the server side.
    fn accept(&mut self, conn: ConnId) {
        self.client.handle_connected(conn);
        self.servers.insert(conn, ServerConnection::new(Arc::clone(&self.server_config)).unwrap());
    }

    /// Moves bytes both ways until neither side has more; returns the plaintext requests the
    /// server received.
    fn shuttle(&mut self, now: Instant, conn: ConnId) -> Vec<u8> {
        let mut requests = Vec::new();
        for _ in 0..20 {
            let to_server = self.client.transmit(conn).to_vec();
            self.client.handle_sent(conn, to_server.len());
            let Some(server) = self.servers.get_mut(&conn) else { break };
            let mut slice = &to_server[..];
            while !slice.is_empty() {
                server.read_tls(&mut slice).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = server.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                requests.extend_from_slice(&buf[..n]);
            }
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
            if !to_client.is_empty() {
                self.client.handle_data(now, conn, &to_client);
            }
        }
        requests
    }

    /// The server answers `bytes` on `conn`.
    fn answer(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let server = self.servers.get_mut(&conn).unwrap();
        // All of it at once, so it reaches the client as one batch of records.
        server.set_buffer_limit(None);
        server.writer().write_all(bytes).unwrap();
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).unwrap();
        }
        self.client.handle_data(now, conn, &to_client);
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Request 1 sent on connection 0, its answer still to come.
fn asked(now: Instant) -> Fixture {
    let mut f = fixture("127.0.0.1");
    f.client.start(now, QueryId(1), &query());
    f.events();
    f.accept(0);
    f.shuttle(now, 0);
    f
}

/// Request 1 answered on connection 0, which is then kept alive and idle.
fn one_answered(now: Instant) -> Fixture {
    let mut f = asked(now);
    f.answer(now, 0, OK);
    f
}

#[test]
fn literal_ip_connects_at_once_and_answer_is_done() {
    let now = Instant::now();
    let mut f = fixture("127.0.0.1");
    f.client.start(now, QueryId(1), &query());
    assert_eq!(f.events(), [Event::Connect { conn: 0, addr: addr(443) }]);
    f.accept(0);
    let request = f.shuttle(now, 0);
    assert!(request.starts_with(b"POST /v1/places:searchNearby HTTP/1.1\r\n"), "{}", request.escape_ascii());
    f.answer(now, 0, OK);
    assert_eq!(f.done(), [(QueryId(1), Ok(200))]);
    assert_eq!(f.events(), [], "kept alive, not closed");
}

#[test]
fn idle_request_reuses_the_kept_connection() {
    let now = Instant::now();
    let mut f = one_answered(now);
    f.done();
    f.client.start(now, QueryId(2), &query());
    assert_eq!(f.events(), [], "no new connection");
    assert!(f.shuttle(now, 0).starts_with(b"POST "));
    f.answer(now, 0, OK);
    assert_eq!(f.done(), [(QueryId(2), Ok(200))]);
}

#[test]
fn reused_connection_dead_before_answering_retries_once_on_a_new_one() {
    let now = Instant::now();
    let mut f = one_answered(now);
    f.done();
    f.client.start(now, QueryId(2), &query());
    f.client.handle_failed(now, 0, Failure::Io("reset".into()));
    assert_eq!(f.events(), [Event::Close(0), Event::Connect { conn: 1, addr: addr(443) }]);
    assert_eq!(f.done(), []);
    // The retry's connection dies too: no second retry.
    f.accept(1);
    f.client.handle_failed(now, 1, Failure::Io("reset".into()));
    assert_eq!(f.done(), [(QueryId(2), Err(Failure::Io("reset".into())))]);
}

#[test]
fn retry_opens_a_new_connection_rather_than_another_idle_one() {
    let now = Instant::now();
    let mut f = one_answered(now);
    f.done();
    // A second kept-alive connection: request 2 on a new connection while 0 is busy with 3.
    f.client.start(now, QueryId(3), &query());
    f.client.start(now, QueryId(2), &query());
    assert_eq!(f.events(), [Event::Connect { conn: 1, addr: addr(443) }]);
    f.accept(1);
    for conn in [0, 1] {
        f.shuttle(now, conn);
        f.answer(now, conn, OK);
    }
    assert_eq!(f.done().len(), 2);
    // Both idle now. Request 4 takes one; it turns out dead: the retry connects anew.
    f.client.start(now, QueryId(4), &query());
    let used = if f.client.idle.contains(&0) { 1 } else { 0 };
    f.client.handle_failed(now, used, Failure::Io("reset".into()));
    assert_eq!(f.events(), [Event::Close(used), Event::Connect { conn: 2, addr: addr(443) }]);
}

#[test]
fn answered_in_part_then_dead_is_not_retried() {
    let now = Instant::now();
    let mut f = one_answered(now);
    f.client.start(now, QueryId(2), &query());
    f.shuttle(now, 0);
    f.answer(now, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{");
    f.client.handle_failed(now, 0, Failure::Io("reset".into()));
    assert_eq!(f.done(), [(QueryId(1), Ok(200)), (QueryId(2), Err(Failure::Io("reset".into())))]);
}

#[test]
fn name_is_resolved_once_for_requests_waiting_and_again_after_the_ttl() {
    let now = Instant::now();
    let mut f = fixture("localhost");
    f.client.start(now, QueryId(1), &query());
    f.client.start(now, QueryId(2), &query());
    assert_eq!(f.events(), [Event::Resolve { host: "localhost".into(), port: 443 }]);
    f.client.handle_resolved(now, Ok(vec![addr(443)]));
    assert_eq!(
        f.events(),
        [Event::Connect { conn: 0, addr: addr(443) }, Event::Connect { conn: 1, addr: addr(443) }]
    );
    f.client.cancel(QueryId(1));
    f.client.cancel(QueryId(2));
    f.events();
    f.client.start(now + Duration::from_secs(1), QueryId(3), &query());
    assert!(matches!(f.events()[..], [Event::Connect { .. }]), "cached");
    f.client.start(now + DNS_TTL, QueryId(4), &query());
    assert!(matches!(f.events()[..], [Event::Resolve { .. }]), "expired");
}

#[test]
fn resolve_failure_fails_every_waiting_request() {
    let now = Instant::now();
    let mut f = fixture("nowhere.invalid");
    f.client.start(now, QueryId(1), &query());
    f.client.start(now, QueryId(2), &query());
    f.events();
    f.client.handle_resolved(now, Err("cannot resolve nowhere.invalid: no".into()));
    let failure = Failure::Resolve("cannot resolve nowhere.invalid: no".into());
    assert_eq!(f.done(), [(QueryId(1), Err(failure.clone())), (QueryId(2), Err(failure))]);
}

#[test]
fn connecting_failure_tries_the_next_address_then_fails() {
    let now = Instant::now();
    let mut f = fixture("localhost");
    f.client.start(now, QueryId(1), &query());
    f.events();
    f.client.handle_resolved(now, Ok(vec![addr(1), addr(2)]));
    assert_eq!(f.events(), [Event::Connect { conn: 0, addr: addr(1) }]);
    f.client.handle_failed(now, 0, Failure::Connect("connect to 127.0.0.1:1: refused".into()));
    assert_eq!(f.events(), [Event::Close(0), Event::Connect { conn: 1, addr: addr(2) }]);
    f.client.handle_failed(now, 1, Failure::Connect("connect to 127.0.0.1:2: refused".into()));
    assert_eq!(f.done(), [(QueryId(1), Err(Failure::Connect("connect to 127.0.0.1:2: refused".into())))]);
    // The resolved addresses failed: the next request resolves again.
    f.events();
    f.client.start(now, QueryId(2), &query());
    assert!(matches!(f.events()[..], [Event::Resolve { .. }]));
}

#[test]
fn idle_connection_closed_by_the_server_is_forgotten() {
    let now = Instant::now();
    let mut f = one_answered(now);
    f.done();
    f.client.handle_eof(now, 0);
    assert_eq!(f.events(), [Event::Close(0)]);
    assert!(!f.client.is_open(0));
}

#[test]
fn cancelled_request_closes_its_connection() {
    let now = Instant::now();
    let mut f = fixture("127.0.0.1");
    f.client.start(now, QueryId(7), &query());
    f.events();
    f.client.cancel(QueryId(7));
    assert_eq!(f.events(), [Event::Close(0)]);
    assert_eq!(f.done(), []);
}

#[test]
fn connection_close_answer_retires_the_connection_and_body_over_the_limit_fails() {
    let now = Instant::now();
    let mut f = asked(now);
    f.answer(now, 0, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(f.events(), [Event::Close(0)]);
    f.client.start(now, QueryId(2), &query());
    assert_eq!(f.events(), [Event::Connect { conn: 1, addr: addr(443) }]);
    f.accept(1);
    f.shuttle(now, 1);
    let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", super::super::response::MAX_BODY + 1);
    f.answer(now, 1, big.as_bytes());
    assert_eq!(f.done(), [(QueryId(1), Ok(200)), (QueryId(2), Err(Failure::Http(HttpError::BodyTooLarge)))]);
}

#[test]
fn answer_far_larger_than_rustls_plaintext_buffer_in_one_batch_is_read() {
    let now = Instant::now();
    let mut f = asked(now);
    let body = vec![b' '; 300 << 10];
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    answer.extend_from_slice(&body);
    f.answer(now, 0, &answer);
    assert_eq!(f.done(), [(QueryId(1), Ok(200))]);
}

#[test]
fn no_key_fails_at_once_without_a_connection() {
    let now = Instant::now();
    let mut f = fixture("127.0.0.1");
    f.client.target.key = None;
    f.client.start(now, QueryId(1), &query());
    assert_eq!(f.events(), []);
    assert_eq!(f.done(), [(QueryId(1), Err(Failure::NoKey))]);
}
