//! `places-stub` as a real process over real TLS: each test starts the built binary on a free
//! loopback port in a folder of its own, trusts only the certificate it wrote, and speaks HTTP/1.1
//! to it with a small blocking rustls client. The stub is killed when its guard is dropped, also
//! when a test fails.

// The stub is built only with the `stub` feature (on by default).
#![cfg(feature = "stub")]

mod common;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{LEGACY_RESULT_KEYS, TempDir, distance_m, wait_until};
use herd::places::{Endpoint, FIELD_MASK, Query, write_request};
use herd::places::{PlacesApi, Secret};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

const STUB: &str = env!("CARGO_BIN_EXE_places-stub");
const KEY: &str = "test-key-b4d9e1";
const START: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running stub; killed and reaped on drop.
struct Stub {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Stub {
    fn start(flags: &[&str]) -> Self {
        let dir = TempDir::new();
        let port_file = dir.path().join("port");
        let out = File::create(dir.path().join("stdout")).expect("create stdout file");
        let err = File::create(dir.path().join("stderr")).expect("create stderr file");
        let child = Command::new(STUB)
            .args(["--listen", "127.0.0.1:0", "--key", KEY])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--cert-out")
            .arg(dir.path().join("cert.pem"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start places-stub");
        let mut stub = Self { child, dir, port: 0 };
        let mut exited = None;
        let ready = wait_until(START, || {
            exited = stub.child.try_wait().expect("try_wait");
            exited.is_some() || fs::read_to_string(&port_file).is_ok_and(|p| p.ends_with('\n'))
        });
        assert!(ready && exited.is_none(), "stub did not start ({exited:?}): {}", stub.stderr());
        stub.port = fs::read_to_string(&port_file).expect("port file").trim().parse().expect("port number");
        let listening = format!("places-stub listening on https://127.0.0.1:{}\n", stub.port);
        assert!(stub.stdout().starts_with(&listening), "{}", stub.stdout());
        stub
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.stdout().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// A TLS connection that trusts the stub's certificate and nothing else.
    fn connect(&self, server_name: &str) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.cert()).expect("read the stub's certificate") {
            roots.add(cert.expect("PEM certificate")).expect("add root");
        }
        assert_eq!(roots.len(), 1);
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        sock.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        sock.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        Client { tls: StreamOwned::new(conn, sock), buf: Vec::new() }
    }

    /// The request the herd sends for `api`.
    fn herd_request(&self, api: PlacesApi, key: &str, query: &Query) -> Vec<u8> {
        let endpoint = Endpoint::parse(&format!("https://localhost:{}", self.port)).expect("endpoint");
        let mut out = Vec::new();
        write_request(&mut out, api, &endpoint, &Secret::new(key.to_owned()), query);
        out
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response: status, headers (names lower-cased), de-chunked body, and how many data chunks
/// it came in (0 when not chunked).
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: usize,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A small blocking HTTP/1.1-over-TLS client.
struct Client {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("send request");
        self.tls.flush().expect("flush request");
    }

    /// Reads more bytes; false at a clean end of stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = self.tls.read(&mut chunk).expect("read (timeout or TLS error)");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "stream ended inside a body");
        }
        self.buf.drain(..n).collect()
    }

    fn take_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2);
                return String::from_utf8(line[..i].to_vec()).expect("ASCII line");
            }
            assert!(self.fill(), "stream ended inside a line");
        }
    }

    fn response(&mut self) -> Response {
        let (status, headers, len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = r.parse(&self.buf).expect("response head") {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (r.code.expect("status"), headers, len);
            }
            assert!(self.fill(), "stream ended inside a head");
        };
        self.buf.drain(..len);
        let mut response = Response { status, headers, body: Vec::new(), chunks: 0 };
        if response.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.take_line(), 16).expect("chunk size");
                if size == 0 {
                    assert_eq!(self.take_line(), "", "no trailers");
                    break;
                }
                let data = self.take(size);
                response.body.extend_from_slice(&data);
                response.chunks += 1;
                assert_eq!(self.take_line(), "", "chunk ends with CRLF");
            }
        } else {
            let len = response.header("content-length").expect("Content-Length").parse().expect("length");
            response.body = self.take(len);
        }
        response
    }

    fn round_trip(&mut self, request: &[u8]) -> Response {
        self.send(request);
        self.response()
    }

    /// True when the server ends the stream (cleanly, with close_notify) with nothing more.
    fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(self.tls.read(&mut chunk), Ok(0)) && self.buf.is_empty()
    }
}

const UCLA: Query = Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 7 };

fn legacy_get(key: &str) -> Vec<u8> {
    format!(
        "GET /maps/api/place/nearbysearch/json?location=34.06893,-118.445127&radius=1000&key={key} HTTP/1.1\r\n\
         Host: localhost\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn new_api_answers_the_herds_request_with_n_places_within_the_radius() {
    let stub = Stub::start(&[]);
    let mut c = stub.connect("localhost");
    let r = c.round_trip(&stub.herd_request(PlacesApi::New, KEY, &UCLA));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json; charset=UTF-8"));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    let v = r.json();
    let places = v["places"].as_array().expect("places array");
    assert_eq!(places.len(), usize::from(UCLA.bound));
    let mask: Vec<&str> = FIELD_MASK.split(',').map(|f| f.trim_start_matches("places.")).collect();
    for p in places {
        let mut fields: Vec<&str> = p.as_object().expect("place object").keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut want = mask.clone();
        want.sort_unstable();
        assert_eq!(fields, want, "exactly the fields of the mask");
        let (lat, lng) = (
            p["location"]["latitude"].as_f64().expect("lat"),
            p["location"]["longitude"].as_f64().expect("lng"),
        );
        let d = distance_m(UCLA.lat, UCLA.lng, lat, lng);
        assert!(d < UCLA.radius_m, "{d} m away: {p}");
        assert!(p["displayName"]["text"].as_str().expect("name").ends_with("(places-stub)"), "{p}");
    }
    // The herd's own conversion takes it.
    let answer =
        herd::places::response::Response { status: r.status, body: r.body.clone(), keep_alive: true };
    let legacy: Value = serde_json::from_slice(
        &herd::places::convert::new_to_legacy(&answer, UCLA.bound).expect("convertible"),
    )
    .expect("legacy JSON");
    assert_eq!(legacy["status"], "OK");
    assert_eq!(legacy["results"].as_array().expect("results").len(), usize::from(UCLA.bound));

    // A smaller mask gives fewer fields; the same query gives the same places.
    let body = r#"{"locationRestriction":{"circle":{"center":{"latitude":34.06893,"longitude":-118.445127},"radius":10000.0}},"maxResultCount":7}"#;
    let request = format!(
        "POST /v1/places:searchNearby HTTP/1.1\r\nHost: localhost\r\nX-Goog-Api-Key: {KEY}\r\n\
         X-Goog-FieldMask: places.id\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let small = c.round_trip(request.as_bytes()).json();
    for (a, b) in small["places"].as_array().expect("places").iter().zip(places) {
        assert_eq!(a.as_object().expect("object").keys().collect::<Vec<_>>(), ["id"]);
        assert_eq!(a["id"], b["id"]);
    }
}

#[test]
fn wrong_key_is_permission_denied_and_missing_mask_invalid_argument() {
    let stub = Stub::start(&[]);
    let mut c = stub.connect("localhost");
    for key in ["wrong-key", ""] {
        let r = c.round_trip(&stub.herd_request(PlacesApi::New, key, &UCLA));
        assert_eq!(r.status, 403);
        let v = r.json();
        assert_eq!(v["error"]["code"], 403);
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(v["error"]["message"], "API key not valid. Please pass a valid API key.");
    }
    let request = format!(
        "POST /v1/places:searchNearby HTTP/1.1\r\nHost: localhost\r\nX-Goog-Api-Key: {KEY}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let r = c.round_trip(request.as_bytes());
    assert_eq!((r.status, r.json()["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    // Legacy says so with HTTP 200.
    let r = c.round_trip(&legacy_get("wrong-key"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "REQUEST_DENIED");
    // Unknown paths are 404.
    let r = c.round_trip(b"GET /v1/places HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!((r.status, r.json()["error"]["status"].as_str()), (404, Some("NOT_FOUND")));
}

#[test]
fn legacy_answers_20_results_with_status_ok() {
    let stub = Stub::start(&[]);
    let mut c = stub.connect("localhost");
    let r = c.round_trip(&stub.herd_request(PlacesApi::Legacy, KEY, &UCLA));
    assert_eq!(r.status, 200);
    assert!(
        r.body.starts_with(b"{\n   \"html_attributions\" : [],\n   \"results\" : [\n"),
        "three-space indent"
    );
    let v = r.json();
    assert_eq!(v["status"], "OK");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 20);
    for result in results {
        let keys: Vec<&String> = result.as_object().expect("object").keys().collect();
        assert_eq!(keys, LEGACY_RESULT_KEYS);
        let loc = &result["geometry"]["location"];
        let d = distance_m(
            UCLA.lat,
            UCLA.lng,
            loc["lat"].as_f64().expect("lat"),
            loc["lng"].as_f64().expect("lng"),
        );
        assert!(d < UCLA.radius_m, "{d} m: {result}");
    }
    // The herd cuts it to its bound.
    let answer = herd::places::response::Response { status: 200, body: r.body.clone(), keep_alive: true };
    let cut: Value =
        serde_json::from_slice(&herd::places::convert::legacy_cut(&answer, 3).expect("cut")).expect("JSON");
    assert_eq!(cut["results"].as_array().expect("results").len(), 3);
}

#[test]
fn one_handshake_for_requests_on_one_connection_and_the_key_is_never_printed() {
    let stub = Stub::start(&[]);
    // By IP address this time: the certificate names 127.0.0.1 too.
    let mut c = stub.connect("127.0.0.1");
    assert_eq!(c.round_trip(&stub.herd_request(PlacesApi::New, KEY, &UCLA)).status, 200);
    assert_eq!(c.round_trip(&stub.herd_request(PlacesApi::Legacy, KEY, &UCLA)).status, 200);
    // Each line is printed before its response is sent.
    let handshakes = stub.lines_starting("handshake ");
    assert_eq!(handshakes.len(), 1, "{}", stub.stdout());
    assert!(handshakes[0].starts_with("handshake 1 from 127.0.0.1:"), "{}", handshakes[0]);
    let requests = stub.lines_starting("request ");
    assert_eq!(requests.len(), 2, "{}", stub.stdout());
    assert_eq!(requests[0], "request 1 POST /v1/places:searchNearby -> 200");
    assert_eq!(
        requests[1],
        "request 2 GET /maps/api/place/nearbysearch/json?location=34.06893,-118.445127&radius=10000 -> 200"
    );

    // A second connection is a second handshake.
    let mut d = stub.connect("localhost");
    assert_eq!(d.round_trip(&legacy_get(KEY)).status, 200);
    assert_eq!(stub.lines_starting("handshake ").len(), 2);
    let all = format!("{}{}", stub.stdout(), stub.stderr());
    assert!(!all.contains(KEY) && !all.contains("key="), "{all}");
}

#[test]
fn chunked_bodies_come_in_several_chunks() {
    let stub = Stub::start(&["--chunked"]);
    let mut c = stub.connect("localhost");
    for request in [stub.herd_request(PlacesApi::New, KEY, &UCLA), legacy_get(KEY)] {
        let r = c.round_trip(&request);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("content-length"), None);
        assert!(r.chunks > 1, "{} chunk(s)", r.chunks);
        r.json();
    }
}

#[test]
fn status_and_close_flags() {
    let stub = Stub::start(&["--status", "503", "--close"]);
    for _ in 0..2 {
        let mut c = stub.connect("localhost");
        let r = c.round_trip(&stub.herd_request(PlacesApi::New, KEY, &UCLA));
        assert_eq!(r.status, 503);
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.json()["error"]["status"], "UNAVAILABLE");
        assert!(c.closed_by_server());
    }
    assert_eq!(stub.lines_starting("handshake ").len(), 2);
}

#[test]
fn oversized_head_gets_431_and_close() {
    let stub = Stub::start(&[]);
    let mut c = stub.connect("localhost");
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: {}\r\n\r\n", "a".repeat(20 * 1024));
    // The stub may answer before it has read everything; a write error after that is fine.
    let _ = c.tls.write_all(request.as_bytes()).and_then(|()| c.tls.flush());
    let r = c.response();
    assert_eq!((r.status, r.header("connection")), (431, Some("close")));
    let mut rest = Vec::new();
    let end = c.tls.read_to_end(&mut rest);
    assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock), "{end:?}");
}
