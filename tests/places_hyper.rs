//! WHATSAT against a Places stand-in we did not write: [hyper] 1.x, the most widely used Rust
//! HTTP/1.1 server, over tokio-rustls, running in this test process on a tokio runtime thread of
//! its own, with a fresh rcgen self-signed certificate for 127.0.0.1 that the herd trusts through
//! `places.ca_file`. Real `herd` processes ask it over real TLS on loopback. hyper picks its own
//! framing (Content-Length for a body of known size, chunked otherwise), its own write batching,
//! its own keep-alive handling and header layout, so the herd's Places client meets a server that
//! shares none of our response reader's assumptions (our own `places-stub` shares them all).
//!
//! # How a test picks the answer
//!
//! By the WHATSAT radius. The herd sends the radius upstream in metres (legacy
//! `radius=12000`, New `"radius":12000.0`); the stand-in reads it in whole kilometres,
//! `R = 10 * mode + size`:
//!
//! | tens digit | delivery                                                                   |
//! |------------|----------------------------------------------------------------------------|
//! | 1          | `Content-Length`, in one burst (hyper's `Full` body)                       |
//! | 2          | `Content-Length`, trickled: frames of 1 byte to 16 KB with 1 ms pauses, so |
//! |            | the TLS records arrive one by one                                          |
//! | 3          | chunked (a body of unknown size, which hyper sends chunked), in one burst  |
//! | 4          | chunked, trickled as above                                                 |
//!
//! | units digit | answer                                                                    |
//! |-------------|---------------------------------------------------------------------------|
//! | 0           | the recorded answer (tests/fixtures/places: 13 results near Sydney)       |
//! | 1 to 5      | generated, about 1 KiB, 20 KiB, 64 KiB, 300 KiB and 1.9 MiB               |
//! | 6           | generated, 2.5 MiB: over the herd's `MAX_BODY`                            |
//! | 7           | 64 KiB, but the connection is dropped halfway through the body            |
//! | 8           | none: the connection is dropped as soon as the request is read            |
//!
//! Generated legacy answers hold 20 results (1 for the 1 KiB one), pretty-printed as Google
//! does: three-space indent, `"key" : value`, a blank line between results, trailing newlines;
//! they are padded with `photos` entries (long `photo_reference`s, HTML attributions with
//! escaped quotes) and carry non-ASCII names, so record and chunk boundaries can fall inside a
//! character. Generated New answers hold `maxResultCount` places (1 for the 1 KiB one), padded
//! with `photos` the conversion drops. Every WHATSAT of a herd asks a radius of its own, so no
//! answer cache can stand in for an upstream request, and each comes on a connection of its own,
//! so no per-connection rate limit is reached.
//!
//! The stand-in counts connections, requests (an `AtomicUsize` each) and closed connections,
//! and records what each request asked. Its keep-alive knobs: hyper's `header_read_timeout`,
//! which also bounds how long a kept-alive connection may sit idle; a per-connection request
//! limit, answered as nginx's `keepalive_requests` does (`Connection: close` on the last one);
//! and dropping a connection without an answer when a second request arrives on it, which is
//! what a client sees when a server's idle close crosses its reuse of the connection.
//!
//! [hyper]: https://hyper.rs

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    Client, Herd, LEGACY_RESULT_KEYS, TempDir, clip, expect_at, places_yaml, read_whatsat_reply, show,
    timestamp, unix_nanos,
};
use herd::places::response::MAX_BODY;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// One server alone: flooding is not the point here.
const ALONE: &[(&str, &[&str])] = &[("Hill", &[])];

/// The key the stand-in accepts.
const KEY: &str = "hyper-key";

/// The client of these tests, where it says it is (UCLA), and the same point in degrees.
const CLIENT: &str = "hyper.cs.ucla.edu";
const LOCATION: &str = "+34.068930-118.445127";
const LAT: f64 = 34.068930;
const LNG: f64 = -118.445127;

/// The herd's Places deadline: far above any answer here, so a `?` is never the deadline's.
const PLACES_TIMEOUT_MS: u64 = 30_000;
/// How long one WHATSAT reply may take (2 cores, debug builds, heavy steal time).
const REPLY: Duration = Duration::from_secs(20);

/// The generated sizes of units digits 1 to 5.
const SIZES: [usize; 5] = [1 << 10, 20 << 10, 64 << 10, 300 << 10, 1_992_294];
/// Units digit 6: 2.5 MiB, over `MAX_BODY`.
const TOO_LARGE: usize = 5 << 19;
/// Units digit 7: the size of the answer cut halfway.
const CUT: usize = 64 << 10;

// ------------------------------------------------------------------------------------------
// What each radius asks for
// ------------------------------------------------------------------------------------------

/// How the stand-in delivers an answer (tens digit of the radius).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    LengthBurst,
    LengthTrickle,
    ChunkedBurst,
    ChunkedTrickle,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::LengthBurst, Mode::LengthTrickle, Mode::ChunkedBurst, Mode::ChunkedTrickle];

    fn digit(self) -> u32 {
        match self {
            Mode::LengthBurst => 1,
            Mode::LengthTrickle => 2,
            Mode::ChunkedBurst => 3,
            Mode::ChunkedTrickle => 4,
        }
    }

    fn chunked(self) -> bool {
        matches!(self, Mode::ChunkedBurst | Mode::ChunkedTrickle)
    }

    fn trickled(self) -> bool {
        matches!(self, Mode::LengthTrickle | Mode::ChunkedTrickle)
    }
}

/// What the stand-in answers (units digit of the radius).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Recorded,
    Generated(usize),
    TooLarge,
    CutHalfway,
    Dropped,
}

impl What {
    fn digit(self) -> u32 {
        match self {
            What::Recorded => 0,
            What::Generated(size) => 1 + SIZES.iter().position(|&s| s == size).expect("a listed size") as u32,
            What::TooLarge => 6,
            What::CutHalfway => 7,
            What::Dropped => 8,
        }
    }

    /// Whether the herd can answer the WHATSAT with places.
    fn answers(self) -> bool {
        matches!(self, What::Recorded | What::Generated(_))
    }
}

/// The WHATSAT radius (km) that asks for `what` delivered as `mode`.
fn radius_km(mode: Mode, what: What) -> u32 {
    10 * mode.digit() + what.digit()
}

/// The case a radius in metres asks for.
fn case(radius_m: f64) -> Option<(Mode, What)> {
    let km = (radius_m / 1000.0).round();
    if !(10.0..50.0).contains(&km) {
        return None;
    }
    let km = km as u32;
    let mode = *Mode::ALL.get((km / 10) as usize - 1)?;
    let what = match km % 10 {
        0 => What::Recorded,
        d @ 1..=5 => What::Generated(SIZES[d as usize - 1]),
        6 => What::TooLarge,
        7 => What::CutHalfway,
        8 => What::Dropped,
        _ => return None,
    };
    Some((mode, what))
}

// ------------------------------------------------------------------------------------------
// Answers: recorded and generated
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Api {
    New,
    Legacy,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::New => "new",
            Api::Legacy => "legacy",
        }
    }
}

const LEGACY_FIXTURE: &[u8] = include_bytes!("fixtures/places/legacy-nearbysearch-sydney.json");
const NEW_FIXTURE: &[u8] = include_bytes!("fixtures/places/new-searchnearby-sydney.json");

/// The places in a generated answer of `size` bytes: a small answer is a sparse area.
fn places_in(size: usize) -> usize {
    if size <= 2 << 10 { 1 } else { 20 }
}

/// The body served for `what` under `api`, when the New API asked for `max` results (the
/// recorded answers are served as recorded, whatever was asked). Generated bodies are made once
/// per shape and shared by the stand-in and the checks.
fn body_for(api: Api, what: What, max: Option<u64>) -> Bytes {
    let size = match what {
        What::Recorded => {
            return Bytes::from_static(match api {
                Api::New => NEW_FIXTURE,
                Api::Legacy => LEGACY_FIXTURE,
            });
        }
        What::Generated(size) => size,
        What::TooLarge => TOO_LARGE,
        What::CutHalfway => CUT,
        What::Dropped => return Bytes::new(),
    };
    let mut count = places_in(size);
    if api == Api::New {
        count = count.min(max.unwrap_or(20) as usize).max(1);
    }
    /// Bodies made so far, by API, size and number of places.
    type Made = Mutex<HashMap<(Api, usize, usize), Bytes>>;
    static MADE: OnceLock<Made> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    if let Some(body) = made.lock().expect("answers lock").get(&(api, size, count)) {
        return body.clone();
    }
    let body = Bytes::from(generate(api, size, count));
    made.lock().expect("answers lock").insert((api, size, count), body.clone());
    body
}

/// A body of about `size` bytes with `count` places: photos are added until it gets there.
fn generate(api: Api, size: usize, count: usize) -> Vec<u8> {
    let mut photos = vec![0usize; count];
    let base = render(api, size, &photos).len();
    photos[0] = 1;
    let first = render(api, size, &photos).len() - base;
    photos[0] = 2;
    let next = render(api, size, &photos).len() - base - first;
    photos[0] = 0;
    let mut estimate = base;
    let mut i = 0;
    while estimate + next / 2 < size {
        let n = &mut photos[i % count];
        estimate += if *n == 0 { first } else { next };
        *n += 1;
        i += 1;
    }
    let body = render(api, size, &photos);
    let slack = (size / 20).max(512);
    assert!(body.len().abs_diff(size) <= slack, "generated {} bytes for about {size}", body.len());
    body
}

/// Deterministic base64url-ish text, as Google's photo references look.
fn token(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// Where generated place `i` is: within a few hundred metres of the client.
fn place_location(i: usize) -> (f64, f64) {
    let step = i as f64 * 0.000_37;
    (LAT + step, LNG - step / 2.0)
}

/// One answer with `photos[i]` photos on place `i`.
fn render(api: Api, size: usize, photos: &[usize]) -> Vec<u8> {
    match api {
        Api::Legacy => {
            let results: Vec<Value> = photos
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let (lat, lng) = place_location(i);
                    let photos: Vec<Value> = (0..n)
                        .map(|j| {
                            json!({
                                "height": 3024,
                                "html_attributions": [format!(
                                    "<a href=\"https://maps.google.com/maps/contrib/{:021}\">A Google User</a>",
                                    i * 1000 + j
                                )],
                                "photo_reference": token((i * 100_000 + j) as u64, 400),
                                "width": 4032
                            })
                        })
                        .collect();
                    json!({
                        "business_status": "OPERATIONAL",
                        "geometry": {
                            "location": {"lat": lat, "lng": lng},
                            "viewport": {
                                "northeast": {"lat": lat + 0.0013, "lng": lng + 0.0013},
                                "southwest": {"lat": lat - 0.0013, "lng": lng - 0.0013}
                            }
                        },
                        "icon": "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/cafe-71.png",
                        "name": format!("Café Hyper {i} – Ωmega 東京"),
                        "photos": photos,
                        "place_id": format!("hyper-{size}-{i}"),
                        "rating": 3.5 + (i % 15) as f64 / 10.0,
                        "types": ["cafe", "food", "point_of_interest", "establishment"],
                        "user_ratings_total": 100 + i,
                        "vicinity": format!("{} Westwood Plaza, Los Angeles", 100 + i)
                    })
                })
                .collect();
            let v = json!({"html_attributions": [], "results": results, "status": "OK"});
            let mut out = google_json::pretty_legacy(&v);
            out.pop();
            // A blank line between results, trailing newlines: Google's legacy layout.
            let mut spaced = Vec::with_capacity(out.len() + photos.len() + 2);
            let between: &[u8] = b"\n      },\n      {";
            let mut rest = &out[..];
            while let Some(at) = rest.windows(between.len()).position(|w| w == between) {
                spaced.extend_from_slice(&rest[..at + 10]);
                spaced.push(b'\n');
                rest = &rest[at + 10..];
            }
            spaced.extend_from_slice(rest);
            spaced.extend_from_slice(b"\n\n");
            spaced
        }
        Api::New => {
            let places: Vec<Value> = photos
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let (lat, lng) = place_location(i);
                    let id = format!("hyper{size}x{i}");
                    let photos: Vec<Value> = (0..n)
                        .map(|j| {
                            json!({
                                "name": format!("places/{id}/photos/{}", token((i * 100_000 + j) as u64, 400)),
                                "widthPx": 4032,
                                "heightPx": 3024,
                                "authorAttributions": [{
                                    "displayName": "A Google User",
                                    "uri": format!("//maps.google.com/maps/contrib/{:021}", i * 1000 + j),
                                    "photoUri": "//lh3.googleusercontent.com/a/ACg8ocJ=s100-p-k-no-mo"
                                }]
                            })
                        })
                        .collect();
                    json!({
                        "id": id,
                        "types": ["cafe", "food", "point_of_interest", "establishment"],
                        "shortFormattedAddress": format!("{} Westwood Plaza, Los Angeles", 100 + i),
                        "location": {"latitude": lat, "longitude": lng},
                        "rating": 3.5 + (i % 15) as f64 / 10.0,
                        "userRatingCount": 100 + i,
                        "displayName": {"text": format!("Café Hyper {i} – Ωmega 東京"), "languageCode": "en"},
                        "businessStatus": "OPERATIONAL",
                        "photos": photos
                    })
                })
                .collect();
            let mut out = serde_json::to_vec_pretty(&json!({ "places": places })).expect("serialise");
            out.push(b'\n');
            out
        }
    }
}

/// Google's legacy layout (three-space indent, `" : "`): the stand-in's own formatter, shared by
/// path rather than copied (a binary's modules cannot be imported).
#[path = "../src/bin/places-stub/json.rs"]
#[allow(dead_code)]
mod google_json;

// ------------------------------------------------------------------------------------------
// The stand-in: hyper + tokio-rustls
// ------------------------------------------------------------------------------------------

/// Keep-alive behaviour of a stand-in.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// hyper's `header_read_timeout`: a connection that does not bring a whole request head
    /// within this (also an idle kept-alive one) is closed by hyper.
    idle: Duration,
    /// Answer this request of each connection (1-based) with `Connection: close`.
    max_requests: Option<usize>,
    /// Drop a connection, unanswered, when a second request arrives on it.
    drop_on_reuse: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self { idle: Duration::from_secs(120), max_requests: None, drop_on_reuse: false }
    }
}

/// What one request asked.
#[derive(Debug, Clone)]
struct Asked {
    api: Api,
    lat: f64,
    lng: f64,
    radius_m: f64,
    /// `maxResultCount` (New API only).
    max: Option<u64>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    asked: Mutex<Vec<Asked>>,
}

/// A running stand-in on a free loopback port. Stopped (its runtime and every connection
/// dropped) when dropped.
struct Stand {
    port: u16,
    cert: PathBuf,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Stand {
    fn start(behaviour: Behaviour) -> Self {
        let dir = TempDir::new();
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("self-signed certificate");
        let cert = dir.path().join("hyper-cert.pem");
        fs::write(&cert, certified.cert.pem()).expect("write certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = thread::Builder::new()
            .name("hyper-places".into())
            .spawn({
                let stats = Arc::clone(&stats);
                move || serve(listener, acceptor, behaviour, stats, stopped)
            })
            .expect("spawn the stand-in thread");
        Self { port, cert, stats, stop: Some(stop), thread: Some(thread), _dir: dir }
    }

    /// Config lines for a herd that asks this stand-in with `api`.
    fn herd_yaml(&self, api: Api) -> String {
        format!("api_key: {KEY}\n{}", places_yaml(self.port, &self.cert, api.name(), PLACES_TIMEOUT_MS))
    }

    fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.stats.closed.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    fn last_asked(&self) -> Asked {
        self.stats.asked.lock().expect("asked lock").last().cloned().expect("a request was read")
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    behaviour: Behaviour,
    stats: Arc<Stats>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let tcp = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            stats.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(connection(tcp, acceptor.clone(), behaviour, Arc::clone(&stats)));
        }
    });
    // Dropping the runtime drops every connection still open.
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    behaviour: Behaviour,
    stats: Arc<Stats>,
) {
    let _ = tcp.set_nodelay(true);
    if let Ok(tls) = acceptor.accept(tcp).await {
        let served = Arc::new(AtomicUsize::new(0));
        let drop_now = Arc::new(tokio::sync::Notify::new());
        let service = {
            let (stats, served, drop_now) = (Arc::clone(&stats), Arc::clone(&served), Arc::clone(&drop_now));
            service_fn(move |req| {
                answer(req, behaviour, Arc::clone(&stats), Arc::clone(&served), Arc::clone(&drop_now))
            })
        };
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(behaviour.idle);
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        // Either hyper ends the connection (its own close, an idle timeout, an error) or the
        // service asks for it to be dropped unanswered: then the socket closes with no TLS
        // close_notify, as when a server process dies.
        tokio::select! {
            _ = conn => {}
            () = drop_now.notified() => {}
        }
    }
    stats.closed.fetch_add(1, Ordering::SeqCst);
}

type AnswerBody = UnsyncBoxBody<Bytes, io::Error>;

fn small(status: StatusCode, body: String) -> Response<AnswerBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json; charset=UTF-8".parse().expect("header"));
    r
}

async fn answer(
    req: Request<Incoming>,
    behaviour: Behaviour,
    stats: Arc<Stats>,
    served: Arc<AtomicUsize>,
    drop_now: Arc<tokio::sync::Notify>,
) -> Result<Response<AnswerBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let nth = served.fetch_add(1, Ordering::SeqCst) + 1;
    if behaviour.drop_on_reuse && nth > 1 {
        drop_now.notify_one();
        return std::future::pending().await;
    }
    let asked = match read_request(req).await {
        Ok(asked) => asked,
        Err(refusal) => return Ok(refusal),
    };
    stats.asked.lock().expect("asked lock").push(asked.clone());
    let Some((mode, what)) = case(asked.radius_m) else {
        return Ok(small(StatusCode::BAD_REQUEST, format!("{{\"error\":\"no case for {asked:?}\"}}")));
    };
    if what == What::Dropped {
        drop_now.notify_one();
        return std::future::pending().await;
    }
    let body = body_for(asked.api, what, asked.max);
    let fail_at = (what == What::CutHalfway).then_some(body.len() / 2);
    let len = body.len();
    let body: AnswerBody = match (mode, fail_at) {
        (Mode::LengthBurst, None) => Full::new(body).map_err(|never| match never {}).boxed_unsync(),
        _ => Pieces::new(body, mode, fail_at).boxed_unsync(),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json; charset=UTF-8".parse().expect("header"));
    if !mode.chunked() {
        headers.insert("content-length", len.into());
    }
    if Some(nth) == behaviour.max_requests {
        headers.insert("connection", "close".parse().expect("header"));
    }
    Ok(response)
}

/// Checks a request as Google would (path, key, field mask, JSON body) and says what it asked.
async fn read_request(req: Request<Incoming>) -> Result<Asked, Response<AnswerBody>> {
    let (parts, body) = req.into_parts();
    let bad = |why: &str| small(StatusCode::BAD_REQUEST, format!("{{\"error\":{}}}", json!(why)));
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/places:searchNearby") => {
            let header =
                |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            if header("x-goog-api-key").as_deref() != Some(KEY) {
                return Err(small(
                    StatusCode::FORBIDDEN,
                    r#"{"error":{"code":403,"message":"API key not valid.","status":"PERMISSION_DENIED"}}"#
                        .into(),
                ));
            }
            if header("x-goog-fieldmask").is_none_or(|m| !m.contains("places.location")) {
                return Err(bad("no usable field mask"));
            }
            let bytes = body.collect().await.map_err(|e| bad(&e.to_string()))?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
            let circle = &v["locationRestriction"]["circle"];
            let (Some(lat), Some(lng), Some(radius_m)) = (
                circle["center"]["latitude"].as_f64(),
                circle["center"]["longitude"].as_f64(),
                circle["radius"].as_f64(),
            ) else {
                return Err(bad("no locationRestriction.circle"));
            };
            Ok(Asked { api: Api::New, lat, lng, radius_m, max: v["maxResultCount"].as_u64() })
        }
        (&Method::GET, "/maps/api/place/nearbysearch/json") => {
            let query = parts.uri.query().unwrap_or_default();
            let param = |name: &str| {
                query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
            };
            if param("key") != Some(KEY) {
                return Err(small(
                    StatusCode::OK,
                    r#"{"error_message":"The provided API key is invalid.","html_attributions":[],"results":[],"status":"REQUEST_DENIED"}"#.into(),
                ));
            }
            let location = param("location").and_then(|l| l.split_once(','));
            let parse = |s: &str| s.parse::<f64>().ok();
            let (Some(lat), Some(lng), Some(radius_m)) = (
                location.and_then(|(a, _)| parse(a)),
                location.and_then(|(_, b)| parse(b)),
                param("radius").and_then(parse),
            ) else {
                return Err(bad("bad location or radius"));
            };
            Ok(Asked { api: Api::Legacy, lat, lng, radius_m, max: None })
        }
        _ => Err(small(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}".into())),
    }
}

/// A body handed to hyper frame by frame: in a burst (10,000-byte frames, no pause) or
/// trickled (frames of 1 byte to 16 KB with a 1 ms pause after each, so hyper flushes each
/// one and TLS records leave one by one). With a known length it reports its exact size;
/// without, hyper sends it chunked, a chunk per frame. It may fail at `fail_at`: hyper then
/// drops the connection mid-body.
struct Pieces {
    data: Bytes,
    pos: usize,
    exact: bool,
    trickle: bool,
    base: usize,
    frame: usize,
    fail_at: Option<usize>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Pieces {
    fn new(data: Bytes, mode: Mode, fail_at: Option<usize>) -> Self {
        let trickle = mode.trickled();
        let base = if trickle { (data.len() / 32).clamp(1024, 16_000) } else { 10_000 };
        Self { data, pos: 0, exact: !mode.chunked(), trickle, base, frame: 0, fail_at, pause: None }
    }

    /// The size of the next frame: trickled frames cycle through sizes that straddle TLS
    /// records, chunk-size lines and multi-byte characters.
    fn next_len(&mut self) -> usize {
        self.frame += 1;
        if !self.trickle {
            return self.base;
        }
        match self.frame % 4 {
            0 => self.base,
            1 => 1,
            2 => self.base / 2 + 3,
            _ => 13,
        }
    }
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let end = this.fail_at.unwrap_or(this.data.len());
        if this.pos >= end {
            return Poll::Ready(
                this.fail_at.map(|_| Err(io::Error::new(io::ErrorKind::ConnectionAborted, "cut halfway"))),
            );
        }
        let take = this.next_len().min(end - this.pos);
        let frame = this.data.slice(this.pos..this.pos + take);
        this.pos += take;
        if this.trickle {
            this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.fail_at.is_none() && self.pos >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact((self.data.len() - self.pos) as u64)
        } else {
            SizeHint::default()
        }
    }
}

// ------------------------------------------------------------------------------------------
// The client side
// ------------------------------------------------------------------------------------------

/// Reports [`CLIENT`] at UCLA to Hill on `c`; returns the AT line, `\n` included.
fn report(c: &mut Client) -> Vec<u8> {
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let before = unix_nanos();
    let reply = c.round_trip(format!("IAMAT {CLIENT} {LOCATION} {ts}\n").as_bytes());
    let after = unix_nanos();
    expect_at(&reply, "Hill", format!("{CLIENT} {LOCATION} {ts}\n").as_bytes(), before - sent, after - sent);
    reply
}

/// Asserts `got == want` for large byte strings, showing where they first differ.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(80);
    panic!(
        "{what}: {} bytes, want {}; first difference at byte {at}:\n got: {}\nwant: {}",
        got.len(),
        want.len(),
        show(&got[from..(at + 80).min(got.len())]),
        show(&want[from..(at + 80).min(want.len())])
    );
}

/// PROTOCOL.md's JSON of a reply: every run of newlines collapsed, trailing newlines removed.
fn collapse(json: &[u8]) -> Vec<u8> {
    let end = json.iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(end);
    for (i, &b) in json[..end].iter().enumerate() {
        if b == b'\n' && i > 0 && json[i - 1] == b'\n' {
            continue;
        }
        out.push(b);
    }
    out
}

/// A New API place as a legacy result (PROTOCOL.md's mapping), keys in legacy (alphabetical)
/// order.
fn legacy_result(place: &Value) -> Value {
    let mut r = Map::new();
    if let Some(s) = place.get("businessStatus") {
        r.insert("business_status".into(), s.clone());
    }
    if let Some(loc) = place.get("location") {
        r.insert("geometry".into(), json!({"location": {"lat": loc["latitude"], "lng": loc["longitude"]}}));
    }
    if let Some(name) = place.get("displayName").and_then(|d| d.get("text")) {
        r.insert("name".into(), name.clone());
    }
    for (new, legacy) in [
        ("id", "place_id"),
        ("rating", "rating"),
        ("types", "types"),
        ("userRatingCount", "user_ratings_total"),
        ("shortFormattedAddress", "vicinity"),
    ] {
        if let Some(v) = place.get(new) {
            r.insert(legacy.into(), v.clone());
        }
    }
    r.sort_keys();
    Value::Object(r)
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().expect("a JSON object").keys().cloned().collect()
}

/// Checks a WHATSAT reply built from `body`: the AT line, then the legacy JSON PROTOCOL.md
/// asks for, with at most `bound` results.
fn check_reply(api: Api, body: &[u8], reply: &[u8], at: &[u8], bound: usize) {
    assert!(reply.starts_with(at), "the reply must start with the AT line {}: {}", show(at), clip(reply));
    let json = &reply[at.len()..];
    assert!(json.ends_with(b"}\n\n"), "the reply must end with }}\\n\\n: {}", clip(json));
    let json = &json[..json.len() - 1];
    assert!(!json.windows(2).any(|w| w == b"\n\n"), "a run of newlines inside the JSON: {}", clip(json));
    let got: Value = serde_json::from_slice(json).unwrap_or_else(|e| panic!("{e}: {}", clip(json)));
    assert_eq!(keys(&got), ["html_attributions", "results", "status"], "the legacy shape, in Google's order");
    let served: Value = serde_json::from_slice(body).expect("the served body is JSON");
    match api {
        Api::Legacy => {
            let results = served["results"].as_array().expect("results");
            if results.len() <= bound {
                // Google's bytes, only newlines collapsed.
                let mut want = at.to_vec();
                want.extend_from_slice(&collapse(body));
                want.extend_from_slice(b"\n\n");
                assert_same_bytes(reply, &want, "legacy answer passed through");
            } else {
                let mut want = served.clone();
                want["results"].as_array_mut().expect("results").truncate(bound);
                assert_eq!(got, want, "legacy answer cut to {bound}");
                for (g, w) in got["results"].as_array().expect("results").iter().zip(results) {
                    assert_eq!(keys(g), keys(w), "Google's key order kept");
                }
            }
        }
        Api::New => {
            let places = served["places"].as_array().expect("places");
            let results: Vec<Value> = places.iter().take(bound).map(legacy_result).collect();
            assert_eq!(got["status"], "OK");
            assert_eq!(got["html_attributions"], json!([]));
            let got_results = got["results"].as_array().expect("results");
            assert_eq!(got_results.len(), results.len(), "results");
            for (g, w) in got_results.iter().zip(&results) {
                assert_eq!(g, w, "a converted place");
                assert_eq!(keys(g), keys(w), "legacy key order");
            }
            if !places.is_empty() && places[0].get("businessStatus").is_some() {
                assert_eq!(keys(&got_results[0]), LEGACY_RESULT_KEYS, "every converted key");
            }
        }
    }
}

/// Waits until the log of Hill contains `needle`.
fn wait_log(herd: &Herd, needle: &str) -> bool {
    common::wait_until(Duration::from_secs(5), || herd.log_contains("Hill", needle.as_bytes()))
}

/// One herd asking one stand-in with `api`, the client reported there.
fn herd_for(stand: &Stand, api: Api) -> (Herd, Vec<u8>) {
    let mut herd = Herd::new(ALONE, &stand.herd_yaml(api));
    herd.start("Hill");
    let at = report(&mut herd.connect("Hill"));
    (herd, at)
}

/// Sends `WHATSAT CLIENT radius bound` on a new connection; returns it and the line sent.
fn whatsat(herd: &Herd, radius: u32, bound: usize) -> (Client, String) {
    let mut c = herd.connect("Hill");
    let line = format!("WHATSAT {CLIENT} {radius} {bound}");
    c.send(format!("{line}\n"));
    (c, line)
}

/// Sends a WHATSAT that must be answered with places, and checks the answer.
fn whatsat_answered(herd: &Herd, at: &[u8], api: Api, mode: Mode, what: What, bound: usize) {
    let (mut c, line) = whatsat(herd, radius_km(mode, what), bound);
    let reply = read_whatsat_reply(&mut c, REPLY);
    if reply.starts_with(b"? ") {
        let causes = || -> Vec<String> {
            let log = herd.log_messages("Hill");
            log.iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .filter(|m| m.contains("failed"))
                .collect()
        };
        // The log is flushed within 100 ms.
        common::wait_until(Duration::from_secs(2), || !causes().is_empty());
        let causes = causes();
        panic!("{mode:?} {what:?}: the herd answered `?` to {line:?}; failures in its log: {causes:#?}");
    }
    let max = (api == Api::New).then_some(bound as u64);
    check_reply(api, &body_for(api, what, max), &reply, at, bound);
}

/// Every answer shape of the module doc, one WHATSAT each, in order, through one herd:
/// answers are checked against the served bytes, failures get `? ` at once, and the stand-in's
/// connection and request counts show exactly when the herd reused a kept-alive connection.
fn every_answer(api: Api) {
    let stand = Stand::start(Behaviour::default());
    let (herd, at) = herd_for(&stand, api);
    let limit = format!("response body longer than {MAX_BODY} bytes");
    // Dropped after a success: on the reused connection, so retried once, and dropped again.
    let order = [
        What::Recorded,
        What::Generated(SIZES[0]),
        What::Dropped,
        What::Generated(SIZES[1]),
        What::Generated(SIZES[2]),
        What::Generated(SIZES[3]),
        What::Generated(SIZES[4]),
        What::TooLarge,
        What::CutHalfway,
    ];
    // Whether the herd holds an idle kept-alive connection to the stand-in.
    let mut kept = false;
    let (mut connections, mut requests) = (0, 0);
    let mut summary = Vec::new();
    let total = Instant::now();
    for mode in Mode::ALL {
        for what in order {
            let radius = radius_km(mode, what);
            // Bound 20 passes legacy answers through; 7 makes the herd cut and re-serialise.
            let bound = if mode.trickled() { 7 } else { 20 };
            let t = Instant::now();
            let label = format!("{} R={radius} {mode:?} {what:?} bound {bound}", api.name());
            if what.answers() {
                whatsat_answered(&herd, &at, api, mode, what, bound);
                connections += usize::from(!kept);
                requests += 1;
                kept = true;
            } else {
                let (mut c, line) = whatsat(&herd, radius, bound);
                let reply = c.read_line_within(REPLY);
                assert_eq!(show(&reply), show(format!("? {line}\n").as_bytes()), "{label}");
                if what == What::Dropped && kept {
                    // The reused connection died before answering: one retry, on a new one.
                    connections += 1;
                    requests += 2;
                } else {
                    connections += usize::from(!kept);
                    requests += 1;
                }
                kept = false;
                if what == What::TooLarge {
                    assert!(wait_log(&herd, &limit), "{label}: the herd's log never said {limit:?}");
                }
            }
            let took = t.elapsed();
            assert_eq!(stand.requests(), requests, "{label}: upstream requests so far");
            assert_eq!(stand.connections(), connections, "{label}: upstream connections so far");
            let asked = stand.last_asked();
            assert_eq!(asked.api, api, "{label}");
            assert!((asked.radius_m - f64::from(radius) * 1000.0).abs() < 1.0, "{label}: {asked:?}");
            assert!((asked.lat - LAT).abs() < 1e-4 && (asked.lng - LNG).abs() < 1e-4, "{label}: {asked:?}");
            if api == Api::New {
                assert_eq!(asked.max, Some(bound as u64), "{label}: maxResultCount is the bound");
            }
            summary.push(format!("{label}: ok in {took:.2?}"));
        }
    }
    assert!(!herd.log_contains("Hill", b"no answer within"), "a `?` came from the deadline, not the cause");
    // What the herd made of the failures (with --nocapture), once the log is flushed.
    thread::sleep(Duration::from_millis(200));
    for m in herd.log_messages("Hill") {
        let m = String::from_utf8_lossy(&m);
        if m.starts_with("places p") && (m.contains("failed") || m.contains("retrying")) {
            eprintln!("{}: {m}", api.name());
        }
    }
    eprintln!("{}\n{} WHATSATs in {:.2?}", summary.join("\n"), summary.len(), total.elapsed());
}

#[test]
fn every_size_and_framing_new_api() {
    every_answer(Api::New);
}

#[test]
fn every_size_and_framing_legacy_api() {
    every_answer(Api::Legacy);
}

/// Loopback TCP sockets to `port` in CLOSE_WAIT (the peer closed, this side has not yet), from
/// /proc/net/tcp: the herd's side of a connection the stand-in closed, until the herd closes it.
fn half_closed_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&remote) && f[3] == "08"
        })
        .count()
}

/// hyper's own keep-alive limits: a request limit per connection (`Connection: close` on the
/// third answer) and its idle timeout. The herd never reuses a connection hyper said it would
/// close, and notices an idle close while idle instead of at its next request.
#[test]
fn keep_alive_ends_by_hypers_request_limit_and_idle_timeout() {
    let idle = Duration::from_millis(1500);
    let stand = Stand::start(Behaviour { idle, max_requests: Some(3), drop_on_reuse: false });
    let (herd, at) = herd_for(&stand, Api::New);
    let small = What::Generated(SIZES[0]);
    for mode in [Mode::LengthBurst, Mode::LengthTrickle, Mode::ChunkedBurst] {
        whatsat_answered(&herd, &at, Api::New, mode, small, 5);
    }
    assert_eq!((stand.connections(), stand.requests()), (1, 3), "three answers on one connection");
    assert!(
        common::wait_until(REPLY, || stand.closed() == 1),
        "hyper did not close the connection after `Connection: close`"
    );
    whatsat_answered(&herd, &at, Api::New, Mode::ChunkedTrickle, small, 5);
    assert_eq!((stand.connections(), stand.requests()), (2, 4), "the closed connection was not reused");

    // hyper's idle timeout closes the second one; the herd must notice while idle.
    let t = Instant::now();
    assert!(common::wait_until(REPLY, || stand.closed() == 2), "hyper never closed the idle connection");
    eprintln!("hyper closed the idle connection after {:.2?} (timeout {idle:?})", t.elapsed());
    // The herd has closed its side once no socket to the stand-in is left half-closed.
    assert!(
        common::wait_until(REPLY, || half_closed_to(stand.port) == 0),
        "the herd never closed the connection hyper closed"
    );
    whatsat_answered(&herd, &at, Api::New, Mode::LengthBurst, What::Generated(SIZES[1]), 5);
    assert_eq!((stand.connections(), stand.requests()), (3, 5), "a new connection after the idle close");
    assert!(
        !herd.log_contains("Hill", b"retrying"),
        "the herd found the idle close only by reusing the connection"
    );
}

/// A kept-alive connection that the server drops when the next request arrives on it (what a
/// client sees when a server's idle close crosses its reuse): the herd retries once on a new
/// connection, and only once.
#[test]
fn reused_connection_dropped_by_the_server_is_retried_once() {
    let stand = Stand::start(Behaviour { drop_on_reuse: true, ..Behaviour::default() });
    let (herd, at) = herd_for(&stand, Api::Legacy);
    whatsat_answered(&herd, &at, Api::Legacy, Mode::LengthBurst, What::Generated(SIZES[0]), 20);
    assert_eq!((stand.connections(), stand.requests()), (1, 1));

    // Reused, dropped, retried on a new connection, answered.
    whatsat_answered(&herd, &at, Api::Legacy, Mode::LengthBurst, What::Generated(SIZES[1]), 20);
    assert_eq!((stand.connections(), stand.requests()), (2, 3), "one retry on a new connection");
    assert!(wait_log(&herd, "retrying"), "the herd's log does not mention the retry");

    // Reused, dropped, retried; the retry is dropped too (a new connection, unanswered): `?`.
    let (mut c, line) = whatsat(&herd, radius_km(Mode::LengthBurst, What::Dropped), 20);
    let reply = c.read_line_within(REPLY);
    assert_eq!(show(&reply), show(format!("? {line}\n").as_bytes()));
    assert_eq!((stand.connections(), stand.requests()), (3, 5), "retried once, not more");

    // The next one opens a connection of its own.
    whatsat_answered(&herd, &at, Api::Legacy, Mode::ChunkedBurst, What::Generated(SIZES[2]), 20);
    assert_eq!((stand.connections(), stand.requests()), (4, 6));
}

/// The stand-in itself, without the herd: hyper frames each mode as the module doc says
/// (Content-Length or chunked), so the WHATSAT tests test what they claim.
#[test]
fn stand_in_frames_answers_as_claimed() {
    let stand = Stand::start(Behaviour::default());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&stand.cert).expect("read certificate") {
        roots.add(cert.expect("certificate")).expect("add root");
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let what = What::Generated(SIZES[1]);
    for mode in Mode::ALL {
        let radius_m = radius_km(mode, what) * 1000;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        let conn = rustls::ClientConnection::new(Arc::clone(&config), name).expect("client");
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, stand.port)).expect("connect");
        tcp.set_read_timeout(Some(REPLY)).expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = format!(
            "GET /maps/api/place/nearbysearch/json?location={LAT},{LNG}&radius={radius_m}&key={KEY} HTTP/1.1\r\n\
             Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).expect("send");
        let mut all = Vec::new();
        match tls.read_to_end(&mut all) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("{mode:?}: {e}"),
        }
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
        let body = body_for(Api::Legacy, what, None);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        if mode.chunked() {
            assert!(head.contains("\r\ntransfer-encoding: chunked\r\n"), "{mode:?}: {head}");
            assert!(!head.contains("content-length"), "{mode:?}: {head}");
            assert!(all.len() > end + body.len(), "{mode:?}: chunk framing adds bytes");
        } else {
            assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{mode:?}: {head}");
            assert!(!head.contains("transfer-encoding"), "{mode:?}: {head}");
            assert_same_bytes(&all[end..], &body, "Content-Length body");
        }
        assert!(head.contains("\r\nconnection: close\r\n"), "hyper answers a close with a close: {head}");
    }
    assert_eq!((stand.connections(), stand.requests()), (4, 4));
    // Sizes of the generated answers, for the record.
    for api in [Api::Legacy, Api::New] {
        let whats = SIZES.iter().map(|&s| What::Generated(s)).chain([What::TooLarge]);
        let sizes: Vec<String> = whats.map(|w| body_for(api, w, Some(20)).len().to_string()).collect();
        eprintln!("{} answers (bytes): {}", api.name(), sizes.join(", "));
    }
    assert!(body_for(Api::Legacy, What::TooLarge, None).len() > MAX_BODY);
    assert!(body_for(Api::New, What::TooLarge, Some(20)).len() > MAX_BODY);
    assert!(body_for(Api::Legacy, What::Generated(SIZES[4]), None).len() < MAX_BODY);
    assert!(body_for(Api::New, What::Generated(SIZES[4]), Some(20)).len() < MAX_BODY);
}
