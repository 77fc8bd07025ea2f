//! `places-stub`: an offline HTTPS stand-in for Google Places, for tests and demos.
//!
//! A real TLS server on loopback (a fresh self-signed certificate from rcgen, written to a PEM
//! file the herd trusts through `places.ca_file`) that speaks both API shapes the herd uses:
//!
//! - Places API (New): `POST …/v1/places:searchNearby`, key in `X-Goog-Api-Key`, field mask in
//!   `X-Goog-FieldMask`, answering `{"places": [...]}` with exactly `maxResultCount` places, each
//!   holding only the fields the mask names;
//! - legacy Nearby Search: `GET …/maps/api/place/nearbysearch/json?location=LAT,LNG&radius=M&key=K`,
//!   answering 20 results in the legacy shape, pretty-printed as Google does.
//!
//! Keys, masks and parameters are checked as Google checks them, with Google's error shapes. The
//! places are synthetic, clearly named so, and deterministic functions of the query; each lies
//! within 0.9 of the radius from the centre. Flags make it misbehave on purpose (delay, error
//! status, non-JSON body, chunked bodies, closing, a body cut short).
//!
//! Answers of a chosen size and delivery, for testing how a client reads large answers however
//! their TLS records arrive:
//!
//! - `--pad-to SIZE` makes every successful answer's body about SIZE bytes (`20480`, `20K`,
//!   `1.9M`; K and M are KiB and MiB); `--size-by-radius` chooses the size per request instead:
//!   a query with a radius of R metres gets a body of about round(R) KiB, so one stub serves
//!   every size (radius 20 m: 20 KiB; 1946 m: 1.9 MiB; 2100 m: over a 2 MiB limit). The padding
//!   stays valid JSON in Google's shape: legacy results gain `photos` entries (height,
//!   `html_attributions`, `photo_reference`, width) and a longer `vicinity`; New API places gain
//!   extra `types` and a longer `shortFormattedAddress`, which survive the herd's field mask (a
//!   mask without them leaves the answer unpadded). A target below the bare answer gets fewer
//!   results, down to one. The body is exact to the byte unless even one bare result exceeds
//!   it. Padded legacy answers carry runs of newlines (a blank line between results, a second
//!   trailing newline), as Google's legacy answers were reported to, which a WHATSAT reply must
//!   collapse (the fixture we hold from Google has none, so the default layout stays without).
//!   The stub prints `answer N STATUS BYTES bytes` after each `request N` line in these modes.
//! - `--burst` writes each whole response (head and body, chunked or not) in one write, so its
//!   TLS records arrive together; `--trickle K` writes it in pieces of K bytes, each flushed as
//!   its own TLS record(s), with `--trickle-pause-us` (default 1000) between them. Without
//!   either, a plain response is one write and a chunked one is flushed chunk by chunk.
//!
//! This is test infrastructure, not the product: one thread per connection, blocking sockets.
//! stdout carries one flushed line per event (`handshake N from ADDR`, `request N METHOD PATH ->
//! STATUS`) for tests to read; the key and the `key=` parameter are never printed.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};
use serde_json::{Map, Value, json};

/// Largest request head (request line and headers) accepted; beyond it, 431 and close.
const HEAD_MAX: usize = 16 * 1024;
/// Largest request body accepted; beyond it, 413 and close.
const BODY_MAX: usize = 64 * 1024;
/// Most request headers accepted; beyond it, 431 and close.
const MAX_HEADERS: usize = 64;
/// Most connections served at once; further ones are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle (or a request take to arrive).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection is drained before the socket is dropped.
const LINGER: Duration = Duration::from_millis(500);
/// Largest padded body (`--pad-to`; `--size-by-radius` stays under it, at most 50,000 KiB): the
/// answer is built in memory, several times over.
const MAX_PAD: usize = 64 << 20;
/// The pause between `--trickle` pieces unless `--trickle-pause-us` says otherwise.
const TRICKLE_PAUSE: Duration = Duration::from_millis(1);

/// Google's largest Nearby Search radius, in metres.
const MAX_RADIUS_M: f64 = 50_000.0;
/// Google's largest (and default) `maxResultCount`.
const MAX_RESULT_COUNT: usize = 20;
/// How many results a legacy answer holds (legacy takes no count).
const LEGACY_RESULTS: usize = 20;
/// Places lie at most this fraction of the radius from the centre.
const MARGIN: f64 = 0.9;
/// Mean Earth radius (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The New API path (after any base prefix).
const NEW_PATH: &str = "/v1/places:searchNearby";
/// The legacy API path (after any base prefix).
const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";

/// Top-level fields a `searchNearby` body may carry (Google refuses any other name).
const NEW_BODY_FIELDS: &[&str] = &[
    "includedTypes",
    "excludedTypes",
    "includedPrimaryTypes",
    "excludedPrimaryTypes",
    "maxResultCount",
    "locationRestriction",
    "rankPreference",
    "languageCode",
    "regionCode",
    "routingParameters",
];

const HELP: &str = "\
places-stub: an offline HTTPS stand-in for Google Places (both the New and the legacy Nearby
Search), answering with synthetic places around the requested point. For tests and demos only.

Usage:
  places-stub [--listen ADDR] [--cert-out PATH] [--key KEY] [--delay-ms N] [--status CODE]
              [--garbage] [--chunked] [--close] [--reset-mid-body] [--port-file PATH]
              [--pad-to SIZE | --size-by-radius] [--burst | --trickle K [--trickle-pause-us N]]

Options:
  --listen ADDR       address to listen on (default 127.0.0.1:0, a free port)
  --cert-out PATH     where to write the self-signed certificate, PEM, generated afresh at each
                      start for localhost, 127.0.0.1 and ::1 (default places-stub-cert.pem); point
                      the herd's places.ca_file at it
  --key KEY           the API key accepted (default stub-key); never printed
  --delay-ms N        wait N milliseconds before each response
  --status CODE       answer every request with HTTP CODE and a Google-shaped error body
  --garbage           answer every request with 200 and a body that is not JSON
  --chunked           send bodies with Transfer-Encoding: chunked, in several chunks
  --close             send Connection: close and close after each response
  --reset-mid-body    send the head and half the body, then close without TLS close_notify
  --port-file PATH    also write the port number to PATH (atomically, by rename)
  --pad-to SIZE       pad the body of every successful answer to about SIZE bytes (20480, 20K,
                      1.9M; K = KiB, M = MiB; at most 64M), in Google's shape: legacy results get
                      `photos` entries and a longer `vicinity`, New API places extra `types` and
                      a longer `shortFormattedAddress`; a smaller SIZE gets fewer results (at
                      least one). Padded legacy answers have a blank line between results and
                      trailing newlines, for the client to collapse
  --size-by-radius    like --pad-to, with the size chosen per request: a radius of R metres gets
                      about round(R) KiB (1 m: 1 KiB, 1946 m: 1.9 MiB, 2100 m: 2.05 MiB)
  --burst             write each whole response (head and body) in one write: its TLS records
                      arrive together
  --trickle K         write each response in pieces of K bytes, each flushed as its own TLS
                      record (several when K > 16384), pausing between pieces
  --trickle-pause-us N  the pause between --trickle pieces, in microseconds (default 1000)
  -h, --help          show this help
  -V, --version       show the version

stdout: `places-stub listening on https://ADDR` once ready, then one line per TLS handshake
(`handshake N from ADDR`) and per request (`request N METHOD PATH -> STATUS`, without the key);
with --pad-to or --size-by-radius also `answer N STATUS BYTES bytes` (the body's length).
";

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// What the stub was asked to do. No `Debug`: it holds the key.
#[derive(Clone)]
struct Options {
    listen: String,
    cert_out: PathBuf,
    key: String,
    delay: Duration,
    status: Option<u16>,
    garbage: bool,
    chunked: bool,
    close: bool,
    reset_mid_body: bool,
    port_file: Option<PathBuf>,
    size: Size,
    delivery: Delivery,
}

/// How large a successful answer's body is made.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Size {
    /// As the places make it (the default).
    Natural,
    /// About this many bytes (`--pad-to`).
    Fixed(usize),
    /// About round(radius in metres) KiB (`--size-by-radius`).
    ByRadius,
}

impl Size {
    /// The body size to aim at for a query of `radius_m`, if any.
    fn target(self, radius_m: f64) -> Option<usize> {
        match self {
            Self::Natural => None,
            Self::Fixed(n) => Some(n),
            // The radius is at most 50,000 m: at most 50,000 KiB.
            Self::ByRadius => Some(radius_m.round() as usize * 1024),
        }
    }
}

/// How a response goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Delivery {
    /// A plain response in one write; a chunked one flushed chunk by chunk.
    Default,
    /// The whole response in one write and one flush (`--burst`).
    Burst,
    /// Pieces of `piece` bytes, each flushed, `pause` between them (`--trickle`).
    Trickle { piece: usize, pause: Duration },
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            cert_out: PathBuf::from("places-stub-cert.pem"),
            key: "stub-key".into(),
            delay: Duration::ZERO,
            status: None,
            garbage: false,
            chunked: false,
            close: false,
            reset_mid_body: false,
            port_file: None,
            size: Size::Natural,
            delivery: Delivery::Default,
        }
    }
}

enum Command {
    Run(Options),
    Help,
    Version,
}

fn parse_args(mut p: lexopt::Parser) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut o = Options::default();
    let (mut burst, mut trickle, mut pause) = (false, None, None);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => o.listen = string(&mut p)?,
            Long("cert-out") => o.cert_out = p.value().map_err(|e| e.to_string())?.into(),
            Long("key") => {
                o.key = string(&mut p)?;
                if o.key.is_empty() || o.key.chars().any(char::is_control) {
                    return Err("--key must be non-empty, without control characters".into());
                }
            }
            Long("delay-ms") => {
                let ms: u64 =
                    p.value().map_err(|e| e.to_string())?.parse().map_err(|e| format!("--delay-ms: {e}"))?;
                o.delay = Duration::from_millis(ms);
            }
            Long("status") => {
                let code: u16 =
                    p.value().map_err(|e| e.to_string())?.parse().map_err(|e| format!("--status: {e}"))?;
                // 1xx, 204 and 304 cannot carry the error body.
                if !(200..=599).contains(&code) || code == 204 || code == 304 {
                    return Err(format!(
                        "--status {code}: give a status from 200 to 599 other than 204 and 304"
                    ));
                }
                o.status = Some(code);
            }
            Long("garbage") => o.garbage = true,
            Long("chunked") => o.chunked = true,
            Long("close") => o.close = true,
            Long("reset-mid-body") => o.reset_mid_body = true,
            Long("port-file") => o.port_file = Some(p.value().map_err(|e| e.to_string())?.into()),
            Long("pad-to") => {
                let size = parse_size(&string(&mut p)?).map_err(|e| format!("--pad-to: {e}"))?;
                if o.size == Size::ByRadius {
                    return Err("give either --pad-to or --size-by-radius, not both".into());
                }
                o.size = Size::Fixed(size);
            }
            Long("size-by-radius") => {
                if matches!(o.size, Size::Fixed(_)) {
                    return Err("give either --pad-to or --size-by-radius, not both".into());
                }
                o.size = Size::ByRadius;
            }
            Long("burst") => burst = true,
            Long("trickle") => {
                let piece: usize =
                    p.value().map_err(|e| e.to_string())?.parse().map_err(|e| format!("--trickle: {e}"))?;
                if piece == 0 {
                    return Err("--trickle: give a piece size of at least 1 byte".into());
                }
                trickle = Some(piece);
            }
            Long("trickle-pause-us") => {
                let us: u64 = p
                    .value()
                    .map_err(|e| e.to_string())?
                    .parse()
                    .map_err(|e| format!("--trickle-pause-us: {e}"))?;
                pause = Some(Duration::from_micros(us));
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    o.delivery = match (burst, trickle) {
        (true, Some(_)) => return Err("give either --burst or --trickle, not both".into()),
        (true, None) => Delivery::Burst,
        (false, Some(piece)) => Delivery::Trickle { piece, pause: pause.unwrap_or(TRICKLE_PAUSE) },
        (false, None) => Delivery::Default,
    };
    if pause.is_some() && trickle.is_none() {
        return Err("--trickle-pause-us needs --trickle".into());
    }
    Ok(Command::Run(o))
}

/// A size in bytes: a number, optionally with a fraction and a suffix K/KiB or M/MiB (any case;
/// binary units), at most [`MAX_PAD`].
fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = match lower.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let scale = match unit {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        _ => return Err(format!("{text:?}: the unit must be K (KiB) or M (MiB)")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a size"))?;
    let bytes = (n * scale).round();
    if bytes > MAX_PAD as f64 {
        return Err(format!("{text:?} is over the largest, {MAX_PAD} bytes"));
    }
    Ok(bytes as usize)
}

fn string(p: &mut lexopt::Parser) -> Result<String, String> {
    p.value().map_err(|e| e.to_string())?.into_string().map_err(|v| format!("{v:?} is not UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// One line on stdout, flushed at once (tests read stdout from a file). Never panics.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One line on stderr. Never panics.
fn warn(line: &str) {
    let _ = writeln!(io::stderr().lock(), "places-stub: {line}");
}

/// `s` with anything not printable ASCII escaped, so a request cannot forge log lines.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_ascii_graphic() { vec![c] } else { c.escape_default().collect() })
        .collect()
}

/// The request target as printed: the `key` parameter removed from the query, whatever its case
/// or encoding, and anything unprintable escaped.
fn printable_target(target: &str) -> String {
    let shown = match target.split_once('?') {
        None => target.to_owned(),
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|param| {
                    let name = param.split('=').next().unwrap_or_default();
                    !percent_decode(name).eq_ignore_ascii_case("key")
                })
                .collect();
            if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) }
        }
    };
    printable(&shown)
}

// ---------------------------------------------------------------------------------------------
// Synthetic places
// ---------------------------------------------------------------------------------------------

/// One synthetic place.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    /// 1-based position in the answer.
    index: usize,
    id: String,
    lat: f64,
    lng: f64,
    rating: f64,
    user_ratings: u64,
    business_status: &'static str,
}

impl Place {
    fn name(&self) -> String {
        format!("Synthetic Place {} (places-stub)", self.index)
    }

    fn street(&self) -> String {
        format!("Synthetic Street {}", self.index)
    }

    /// All the fields the stub knows, in the New API shape (and Google's order of the fixture).
    fn new_json(&self) -> Value {
        json!({
            "id": self.id,
            "types": ["point_of_interest", "establishment"],
            "shortFormattedAddress": self.street(),
            "location": { "latitude": self.lat, "longitude": self.lng },
            "rating": self.rating,
            "userRatingCount": self.user_ratings,
            "businessStatus": self.business_status,
            "displayName": { "text": self.name(), "languageCode": "en" },
        })
    }

    /// The legacy result, keys in Google's (alphabetical) order.
    fn legacy_json(&self) -> Value {
        json!({
            "business_status": self.business_status,
            "geometry": { "location": { "lat": self.lat, "lng": self.lng } },
            "name": self.name(),
            "place_id": self.id,
            "rating": self.rating,
            "types": ["point_of_interest", "establishment"],
            "user_ratings_total": self.user_ratings,
            "vicinity": self.street(),
        })
    }

    /// [`Self::new_json`] padded: `extra` more `types`, each as long as the others, and `tune`
    /// more bytes of `shortFormattedAddress`.
    fn padded_new_json(&self, extra: usize, tune: usize) -> Value {
        let mut v = self.new_json();
        if let Some(Value::Array(types)) = v.get_mut("types") {
            types.extend((1..=extra).map(|j| Value::String(format!("synthetic_type_{j:07}"))));
        }
        if let Some(Value::String(address)) = v.get_mut("shortFormattedAddress") {
            address.push_str(&filler(tune));
        }
        v
    }

    /// [`Self::legacy_json`] padded: `photos` entries in Google's shape (none when `photos` is
    /// 0), each as long as the others, and `tune` more bytes of `vicinity`.
    fn padded_legacy_json(&self, photos: usize, tune: usize) -> Value {
        let mut v = self.legacy_json();
        if let Value::Object(o) = &mut v {
            if photos > 0 {
                o.insert("photos".into(), Value::Array((1..=photos).map(|j| self.photo(j)).collect()));
                // Keep Google's (alphabetical) key order.
                o.sort_keys();
            }
            if let Some(Value::String(vicinity)) = o.get_mut("vicinity") {
                vicinity.push_str(&filler(tune));
            }
        }
        v
    }

    /// Photo `j` of this place, in the legacy shape: every photo serialises to the same length
    /// (fixed-width numbers, a 400-character reference like Google's).
    fn photo(&self, j: usize) -> Value {
        let r = mix(mix(self.lat.to_bits() ^ self.lng.to_bits().rotate_left(17)) ^ j as u64);
        let reference: String = (0..25u64).map(|i| format!("{:016x}", mix(r ^ i))).collect();
        json!({
            "height": 3024,
            // A u64 has at most 20 digits: `{r:020}` is always 20 wide.
            "html_attributions": [format!(
                "<a href=\"https://maps.google.com/maps/contrib/1{r:020}\">Synthetic Contributor {j:07}</a>"
            )],
            "photo_reference": reference,
            "width": 4032,
        })
    }
}

/// `len` bytes of printable ASCII that JSON needs no escape for, to lengthen an address.
fn filler(len: usize) -> String {
    ", Synthetic Arcade".chars().cycle().take(len).collect()
}

/// SplitMix64: a small, well-mixed hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from 53 bits of `r`.
fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// The point `distance_m` from (`lat`, `lng`) on the initial bearing `bearing` (radians from
/// north), on a sphere: the exact great-circle step, so a degree of longitude shrinks with
/// cos(lat) as it must. Worked with unit vectors rather than `asin`, so it stays accurate near the
/// poles; it wraps across the antimeridian. The result has latitude in [-90, 90] and longitude in
/// [-180, 180).
fn destination(lat: f64, lng: f64, distance_m: f64, bearing: f64) -> (f64, f64) {
    let (phi, lambda) = (lat.to_radians(), lng.to_radians());
    let delta = distance_m / EARTH_RADIUS_M;
    let (sp, cp) = phi.sin_cos();
    let (sl, cl) = lambda.sin_cos();
    let (sd, cd) = delta.sin_cos();
    let (sb, cb) = bearing.sin_cos();
    // The centre, and the unit vectors pointing north and east there.
    let p = [cp * cl, cp * sl, sp];
    let north = [-sp * cl, -sp * sl, cp];
    let east = [-sl, cl, 0.0];
    let q: Vec<f64> = (0..3).map(|i| cd * p[i] + sd * (cb * north[i] + sb * east[i])).collect();
    let lat2 = q[2].atan2(q[0].hypot(q[1])).to_degrees();
    let lng2 = q[1].atan2(q[0]).to_degrees();
    (lat2.clamp(-90.0, 90.0), (lng2 + 180.0).rem_euclid(360.0) - 180.0)
}

/// Great-circle distance in metres (haversine), to check the places.
#[cfg(test)]
fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// `n` synthetic places around (`lat`, `lng`), each at most `MARGIN * radius_m` away: the same
/// inputs give the same places.
fn synthetic_places(lat: f64, lng: f64, radius_m: f64, n: usize) -> Vec<Place> {
    // `+ 0.0` makes -0.0 and 0.0 the same query.
    let seed = mix(mix(mix((lat + 0.0).to_bits()) ^ (lng + 0.0).to_bits()) ^ (radius_m + 0.0).to_bits());
    (1..=n)
        .map(|index| {
            let r1 = mix(seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
            let r2 = mix(r1);
            let r3 = mix(r2);
            // Uniform over the disc of radius MARGIN * radius_m.
            let d = MARGIN * radius_m * unit(r1).sqrt();
            let (plat, plng) = destination(lat, lng, d, std::f64::consts::TAU * unit(r2));
            Place {
                index,
                id: format!("stub-{seed:016x}-{index}"),
                lat: plat,
                lng: plng,
                rating: (10 + r3 % 41) as f64 / 10.0,
                user_ratings: (r3 >> 8) % 5000,
                business_status: if index % 10 == 0 { "CLOSED_TEMPORARILY" } else { "OPERATIONAL" },
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Field masks (New API)
// ---------------------------------------------------------------------------------------------

/// Which parts of a place to return: everything (`all`), or the named children.
#[derive(Debug, Default, Clone, PartialEq)]
struct Mask {
    all: bool,
    children: Vec<(String, Mask)>,
}

impl Mask {
    fn insert(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            self.all = true;
            return;
        };
        let child = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children.push(((*first).to_owned(), Mask::default()));
                let last = self.children.len() - 1;
                &mut self.children[last].1
            }
        };
        child.insert(rest);
    }

    /// `v` cut down to the mask; object keys keep `v`'s order.
    fn apply(&self, v: &Value) -> Value {
        if self.all {
            return v.clone();
        }
        let Value::Object(o) = v else { return v.clone() };
        let mut out = Map::new();
        for (k, child) in o {
            if let Some((_, m)) = self.children.iter().find(|(name, _)| name == k) {
                out.insert(k.clone(), m.apply(child));
            }
        }
        Value::Object(out)
    }
}

/// Why a field mask was refused.
#[derive(Debug, PartialEq)]
enum MaskError {
    /// None given, or only commas and spaces.
    Missing,
    /// A path that names no field the stub can return.
    Unknown(String),
}

/// Parses `X-Goog-FieldMask` for `searchNearby`: comma-separated paths `places.FIELD[.SUB]`, or
/// `*` / `places` / `places.*` for everything.
fn parse_field_mask(s: &str) -> Result<Mask, MaskError> {
    let sample = synthetic_places(0.0, 0.0, 1.0, 1).remove(0).new_json();
    let mut mask = Mask::default();
    let mut any = false;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        if matches!(part, "*" | "places" | "places.*") {
            mask.all = true;
            continue;
        }
        let unknown = || MaskError::Unknown(part.to_owned());
        let path: Vec<&str> = part.strip_prefix("places.").ok_or_else(unknown)?.split('.').collect();
        let mut at = &sample;
        for seg in &path {
            at = at.get(seg).ok_or_else(unknown)?;
        }
        mask.insert(&path);
    }
    if any { Ok(mask) } else { Err(MaskError::Missing) }
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/// A validated Nearby Search.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Nearby {
    lat: f64,
    lng: f64,
    radius_m: f64,
    count: usize,
}

fn check_point(lat: f64, lng: f64) -> Result<(), String> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(format!("Invalid latitude {lat}: must be between -90 and 90 degrees."));
    }
    if !(-180.0..=180.0).contains(&lng) {
        return Err(format!("Invalid longitude {lng}: must be between -180 and 180 degrees."));
    }
    Ok(())
}

fn check_radius(radius_m: f64) -> Result<(), String> {
    if radius_m > 0.0 && radius_m <= MAX_RADIUS_M {
        Ok(())
    } else {
        Err(format!("Invalid radius {radius_m}: must be greater than 0 and at most 50000 meters."))
    }
}

/// Validates a `searchNearby` JSON body as Google does; the error is Google's message.
fn parse_new_body(body: &[u8]) -> Result<Nearby, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}."))?;
    let Value::Object(top) = v else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    if let Some(k) = top.keys().find(|k| !NEW_BODY_FIELDS.contains(&k.as_str())) {
        return Err(format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."));
    }
    let circle = top
        .get("locationRestriction")
        .and_then(|l| l.get("circle"))
        .ok_or("Invalid request: locationRestriction.circle is required.")?;
    let center =
        circle.get("center").ok_or("Invalid request: locationRestriction.circle.center is required.")?;
    let number = |v: Option<&Value>, name: &str| {
        v.and_then(Value::as_f64).ok_or_else(|| format!("Invalid request: {name} must be a number."))
    };
    let lat = number(center.get("latitude"), "center.latitude")?;
    let lng = number(center.get("longitude"), "center.longitude")?;
    check_point(lat, lng)?;
    let radius_m = number(circle.get("radius"), "circle.radius")?;
    check_radius(radius_m)?;
    let count = match top.get("maxResultCount") {
        None => MAX_RESULT_COUNT,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=20) => n as usize,
            _ => return Err(format!("Invalid max_result_count {v}: must be between 1 and 20, inclusive.")),
        },
    };
    Ok(Nearby { lat, lng, radius_m, count })
}

/// Decodes `%XX` escapes and `+`; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' => match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded parameters of a query string, in order.
fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Validates a legacy query's `location` and `radius`; the error is the `error_message`.
fn parse_legacy_query(params: &[(String, String)]) -> Result<Nearby, String> {
    let location = param(params, "location").ok_or("Invalid request. Missing the 'location' parameter.")?;
    let bad_location = || format!("Invalid request. Invalid 'location' parameter {:?}.", printable(location));
    let (lat, lng) = location.split_once(',').ok_or_else(bad_location)?;
    let (Ok(lat), Ok(lng)) = (lat.trim().parse::<f64>(), lng.trim().parse::<f64>()) else {
        return Err(bad_location());
    };
    check_point(lat, lng).map_err(|_| bad_location())?;
    let radius = param(params, "radius").ok_or("Invalid request. Missing the 'radius' parameter.")?;
    let radius_m = radius
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| check_radius(*r).is_ok())
        .ok_or_else(|| format!("Invalid request. Invalid 'radius' parameter {:?}.", printable(radius)))?;
    Ok(Nearby { lat, lng, radius_m, count: LEGACY_RESULTS })
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// A request as the API layer sees it.
#[derive(Debug, Default, Clone)]
struct Request {
    method: String,
    target: String,
    api_key: Option<Vec<u8>>,
    field_mask: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// A status and a JSON (or, with `--garbage`, not JSON) body.
#[derive(Debug, Clone, PartialEq)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The google.rpc status Google pairs with an HTTP status.
fn rpc_status(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 | 413 | 431 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// JSON as the New API lays it out (two-space indent), with a final newline.
fn pretty_new(v: &Value) -> Vec<u8> {
    // Serialising a `Value` into a Vec cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// serde_json's pretty layout with Google's legacy touches: three-space indent and `" : "`.
struct LegacyFormatter<'a>(PrettyFormatter<'a>);

impl Formatter for LegacyFormatter<'_> {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b" : ")
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// JSON as the legacy API lays it out, with a final newline.
fn pretty_legacy(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        LegacyFormatter(PrettyFormatter::with_indent(b"   ")),
    );
    // Serialising a `Value` into a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    out.push(b'\n');
    out
}

/// A New-API-shaped error: `{"error": {"code", "message", "status"}}`.
fn google_error(status: u16, message: &str) -> Reply {
    Reply {
        status,
        body: pretty_new(
            &json!({ "error": { "code": status, "message": message, "status": rpc_status(status) } }),
        ),
    }
}

fn key_denied() -> Reply {
    let mut v = json!({ "error": {
        "code": 403,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "PERMISSION_DENIED",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": { "service": "places.googleapis.com" },
        }],
    }});
    // Keep `details` last, where Google puts it.
    if let Some(Value::Object(e)) = v.get_mut("error") {
        e.sort_keys();
        if let Some(d) = e.shift_remove("details") {
            e.insert("details".into(), d);
        }
    }
    Reply { status: 403, body: pretty_new(&v) }
}

fn not_found(path: &str) -> Reply {
    google_error(404, &format!("The requested URL {} was not found on this server.", printable(path)))
}

/// A legacy answer with no results: `REQUEST_DENIED`, `INVALID_REQUEST`, ...
fn legacy_status(status: &str, message: &str) -> Reply {
    Reply {
        status: 200,
        body: pretty_legacy(&json!({
            "error_message": message,
            "html_attributions": [],
            "results": [],
            "status": status,
        })),
    }
}

/// The answer to `req`, honouring `--status` and `--garbage`.
fn respond(req: &Request, o: &Options) -> Reply {
    let mut reply = match o.status {
        Some(code) => {
            google_error(code, &format!("places-stub answers every request with HTTP {code} (--status)."))
        }
        None => route(req, &o.key, o.size),
    };
    if o.garbage {
        reply.body =
            b"<!DOCTYPE html>\n<html><body><p>places-stub --garbage: this body is not JSON.</p>\n".to_vec();
        if o.status.is_none() {
            reply.status = 200;
        }
    }
    reply
}

/// The answer of a well-behaved Places to `req`, successful answers made `size`.
fn route(req: &Request, key: &str, size: Size) -> Reply {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let params = query_params(query);
    if path.ends_with(NEW_PATH) && req.method == "POST" {
        new_api(req, &params, key, size)
    } else if path.ends_with(LEGACY_PATH) && req.method == "GET" {
        legacy_api(&params, key, size)
    } else {
        not_found(path)
    }
}

fn new_api(req: &Request, params: &[(String, String)], key: &str, size: Size) -> Reply {
    // Google takes the key from the header or, failing that, from `?key=`.
    let given = req.api_key.as_deref().or_else(|| param(params, "key").map(str::as_bytes));
    if given != Some(key.as_bytes()) {
        return key_denied();
    }
    let mask = req.field_mask.as_deref().map(|m| std::str::from_utf8(m).unwrap_or("\u{fffd}")).unwrap_or("");
    let mask = match parse_field_mask(mask) {
        Ok(m) => m,
        Err(MaskError::Missing) => {
            return google_error(
                400,
                "FieldMask is a required parameter. See how to provide it at \
                 https://developers.google.com/maps/documentation/places/web-service/choose-fields",
            );
        }
        Err(MaskError::Unknown(path)) => {
            return google_error(
                400,
                &format!(
                    "Error expanding 'fields' parameter. Cannot find matching fields for path '{}'.",
                    printable(&path)
                ),
            );
        }
    };
    let q = match parse_new_body(&req.body) {
        Ok(q) => q,
        Err(message) => return google_error(400, &message),
    };
    if let Some(target) = size.target(q.radius_m) {
        return Reply { status: 200, body: padded_new(&q, &mask, target) };
    }
    let places: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, q.count)
        .iter()
        .map(|p| mask.apply(&p.new_json()))
        .collect();
    Reply { status: 200, body: pretty_new(&json!({ "places": places })) }
}

fn legacy_api(params: &[(String, String)], key: &str, size: Size) -> Reply {
    if param(params, "key") != Some(key) {
        return legacy_status("REQUEST_DENIED", "The provided API key is invalid.");
    }
    let q = match parse_legacy_query(params) {
        Ok(q) => q,
        Err(message) => return legacy_status("INVALID_REQUEST", &message),
    };
    if let Some(target) = size.target(q.radius_m) {
        return Reply { status: 200, body: padded_legacy(&q, target) };
    }
    let results: Vec<Value> =
        synthetic_places(q.lat, q.lng, q.radius_m, q.count).iter().map(Place::legacy_json).collect();
    Reply {
        status: 200,
        body: pretty_legacy(&json!({ "html_attributions": [], "results": results, "status": "OK" })),
    }
}

// ---------------------------------------------------------------------------------------------
// Padded answers (--pad-to, --size-by-radius)
// ---------------------------------------------------------------------------------------------

/// The body `render(n, extra, tune)` closest to `target` bytes from above, exactly `target` when
/// it can be: `n` results (`count`, or fewer, down to one, while even the bare answer is too
/// large), `extra` padding items in each result, `tune` more bytes of one string.
///
/// `render` must grow by the same number of bytes for every item after the first (the first
/// may cost more: it may bring its key) and by exactly one byte per `tune`, or not at all when
/// a field mask leaves the padded fields out. Only the final body is rendered at full size.
fn fit(target: usize, count: usize, render: impl Fn(usize, usize, usize) -> Vec<u8>) -> Vec<u8> {
    let mut n = count.max(1);
    let mut bare = render(n, 0, 0);
    while bare.len() > target && n > 1 {
        n -= 1;
        bare = render(n, 0, 0);
    }
    if bare.len() >= target {
        return bare;
    }
    let one = render(n, 1, 0).len();
    let step = if one > target { 0 } else { render(n, 2, 0).len().saturating_sub(one) };
    // No step: the mask leaves the padded items out (or the first is already too large).
    let (extra, before) = match target.saturating_sub(one).checked_div(step) {
        Some(more) => (1 + more, one + more * step),
        None => (0, bare.len()),
    };
    render(n, extra, target - before)
}

/// A New API answer to `q` of about `target` bytes, cut to `mask`: extra `types` in every place
/// and the rest in the last place's `shortFormattedAddress`.
fn padded_new(q: &Nearby, mask: &Mask, target: usize) -> Vec<u8> {
    fit(target, q.count, |n, extra, tune| {
        let places: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, n)
            .iter()
            .map(|p| mask.apply(&p.padded_new_json(extra, if p.index == n { tune } else { 0 })))
            .collect();
        pretty_new(&json!({ "places": places }))
    })
}

/// A legacy answer to `q` of about `target` bytes: `photos` in every result and the rest in the
/// last result's `vicinity`, laid out by [`spaced_legacy`].
fn padded_legacy(q: &Nearby, target: usize) -> Vec<u8> {
    fit(target, q.count, |n, extra, tune| {
        let results: Vec<Value> = synthetic_places(q.lat, q.lng, q.radius_m, n)
            .iter()
            .map(|p| p.padded_legacy_json(extra, if p.index == n { tune } else { 0 }))
            .collect();
        spaced_legacy(&json!({ "html_attributions": [], "results": results, "status": "OK" }))
    })
}

/// [`pretty_legacy`] with a blank line after each result but the last and a second newline at
/// the end: runs of newlines as Google's legacy answers were reported to carry, which a WHATSAT
/// reply must collapse.
fn spaced_legacy(v: &Value) -> Vec<u8> {
    let plain = pretty_legacy(v);
    let mut out = Vec::with_capacity(plain.len() + 64);
    for line in plain.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line);
        // Results are the only objects two levels in (six spaces).
        if line == b"      },\n" {
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// What came in on a connection.
#[derive(Debug)]
enum Incoming {
    /// A whole request; `keep_alive` says whether the client allows another after it.
    Request(Request, bool),
    /// A request refused before it reached the API: answer `status` and close. Method and target
    /// are there when the head could be read.
    Reject(u16, String, Option<(String, String)>),
    /// The peer closed, went idle, or the transport failed: close quietly.
    Closed,
}

/// The parts of a request head the stub uses.
struct Head {
    len: usize,
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
    expect_continue: bool,
    api_key: Option<Vec<u8>>,
    field_mask: Option<Vec<u8>>,
}

/// Reads more bytes into `buf`; false at end of stream, on a timeout or an error.
fn fill<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Reads the next request from `s`; `buf` holds bytes read but not yet used (pipelining).
fn read_request<S: Read + Write>(s: &mut S, buf: &mut Vec<u8>) -> Incoming {
    let head = loop {
        match parse_head(buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                if buf.len() >= HEAD_MAX {
                    return Incoming::Reject(431, "Request header fields too large.".into(), None);
                }
                if !fill(s, buf) {
                    return Incoming::Closed;
                }
            }
            Err(reject) => return reject,
        }
    };
    let line = Some((head.method.clone(), head.target.clone()));
    if head.content_length > BODY_MAX {
        return Incoming::Reject(413, format!("Request body larger than {BODY_MAX} bytes."), line);
    }
    let end = head.len + head.content_length;
    if head.expect_continue
        && buf.len() < end
        && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|()| s.flush()).is_err()
    {
        return Incoming::Closed;
    }
    while buf.len() < end {
        if !fill(s, buf) {
            return Incoming::Closed;
        }
    }
    let body = buf[head.len..end].to_vec();
    buf.drain(..end);
    let req = Request {
        method: head.method,
        target: head.target,
        api_key: head.api_key,
        field_mask: head.field_mask,
        body,
    };
    Incoming::Request(req, head.keep_alive)
}

/// A complete head at the start of `buf` (`None`: not yet), or a rejection.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Incoming> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Incoming::Reject(431, "Too many request header fields.".into(), None));
        }
        Err(e) => return Err(Incoming::Reject(400, format!("Malformed request: {e}."), None)),
    };
    let method = r.method.unwrap_or_default().to_owned();
    let target = r.path.unwrap_or_default().to_owned();
    let line = Some((method.clone(), target.clone()));
    let reject = |status: u16, message: &str| Err(Incoming::Reject(status, message.to_owned(), line.clone()));
    if len > HEAD_MAX {
        return reject(431, "Request header fields too large.");
    }
    let http10 = r.version == Some(0);
    let (mut close, mut keep) = (false, false);
    let mut content_length: Option<u64> = None;
    let (mut api_key, mut field_mask, mut expect_continue) = (None, None, false);
    for h in r.headers.iter() {
        let value = h.value;
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(value).unwrap_or("").trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return reject(400, "Invalid Content-Length.");
            }
            // All digits: a parse failure can only be an overflow, i.e. far too large.
            let n = text.parse::<u64>().unwrap_or(u64::MAX);
            if content_length.is_some_and(|c| c != n) {
                return reject(400, "Conflicting Content-Length headers.");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return reject(501, "places-stub does not accept request bodies with Transfer-Encoding.");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in String::from_utf8_lossy(value).split(',') {
                close |= token.trim().eq_ignore_ascii_case("close");
                keep |= token.trim().eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return reject(417, "Unsupported Expect.");
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("x-goog-api-key") {
            api_key = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("x-goog-fieldmask") {
            field_mask = Some(value.to_vec());
        }
    }
    let content_length = usize::try_from(content_length.unwrap_or(0)).unwrap_or(usize::MAX);
    let keep_alive = !close && (!http10 || keep);
    Ok(Some(Head { len, method, target, keep_alive, content_length, expect_continue, api_key, field_mask }))
}

/// The response head.
fn response_head(status: u16, body_len: usize, chunked: bool, close: bool) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=UTF-8\r\nServer: places-stub\r\n",
        reason(status)
    );
    if chunked {
        h.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        h.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// `body` as up to four chunks (fewer only when it is shorter than four bytes) and the last
/// chunk; each element is one chunk on the wire.
fn chunk_body(body: &[u8]) -> Vec<Vec<u8>> {
    let size = body.len().div_ceil(4).max(1);
    let mut out: Vec<Vec<u8>> = body
        .chunks(size)
        .map(|c| {
            let mut chunk = format!("{:x}\r\n", c.len()).into_bytes();
            chunk.extend_from_slice(c);
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
        .collect();
    out.push(b"0\r\n\r\n".to_vec());
    out
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// What every connection thread shares.
struct Shared {
    tls: Arc<ServerConfig>,
    options: Options,
    handshakes: AtomicU64,
    requests: AtomicU64,
    connections: AtomicUsize,
}

/// Counts a connection while it lives.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

fn serve(sock: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _slot = Slot(&shared.connections);
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = sock.set_write_timeout(Some(WRITE_TIMEOUT));
    let conn = match ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(c) => c,
        Err(e) => return warn(&format!("TLS set-up for {peer} failed: {e}")),
    };
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return warn(&format!("TLS handshake from {peer} failed: {e}"));
        }
    }
    let n = shared.handshakes.fetch_add(1, Ordering::SeqCst) + 1;
    say(&format!("handshake {n} from {peer}"));
    let _ = tls.sock.set_read_timeout(Some(IDLE_TIMEOUT));
    let o = &shared.options;
    if o.delivery == Delivery::Burst {
        // No cap on what rustls queues, so one write becomes one run of records on the socket.
        tls.conn.set_buffer_limit(None);
    }
    let mut buf = Vec::new();
    loop {
        let (reply, close) = match read_request(&mut tls, &mut buf) {
            Incoming::Closed => return close_gently(tls),
            Incoming::Reject(status, message, line) => {
                let (method, target) = line.unwrap_or_else(|| ("-".into(), "-".into()));
                log_request(shared, &method, &target, status);
                (google_error(status, &message), true)
            }
            Incoming::Request(req, keep_alive) => {
                let reply = respond(&req, o);
                let n = log_request(shared, &req.method, &req.target, reply.status);
                if o.size != Size::Natural {
                    say(&format!("answer {n} {} {} bytes", reply.status, reply.body.len()));
                }
                if !o.delay.is_zero() {
                    thread::sleep(o.delay);
                }
                (reply, o.close || !keep_alive)
            }
        };
        if o.reset_mid_body {
            let mut wire = response_head(reply.status, reply.body.len(), o.chunked, close);
            let body: Vec<u8> = if o.chunked { chunk_body(&reply.body).concat() } else { reply.body };
            wire.extend_from_slice(&body[..body.len() / 2]);
            let _ = tls.write_all(&wire).and_then(|()| tls.flush());
            // No close_notify: the peer sees the stream end mid-body.
            let _ = tls.sock.shutdown(Shutdown::Both);
            return;
        }
        if write_reply(&mut tls, &reply, o.chunked, close, o.delivery).is_err() {
            return;
        }
        if close {
            return close_gently(tls);
        }
    }
}

/// Prints the `request N` line; returns N.
fn log_request(shared: &Shared, method: &str, target: &str, status: u16) -> u64 {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    say(&format!("request {n} {} {} -> {status}", printable(method), printable_target(target)));
    n
}

/// Sends `reply` as `delivery` says.
fn write_reply(
    tls: &mut Tls,
    reply: &Reply,
    chunked: bool,
    close: bool,
    delivery: Delivery,
) -> io::Result<()> {
    let head = response_head(reply.status, reply.body.len(), chunked, close);
    match delivery {
        Delivery::Default if chunked => {
            tls.write_all(&head)?;
            tls.flush()?;
            // One flush per chunk, so the chunks travel in separate TLS records.
            for chunk in chunk_body(&reply.body) {
                tls.write_all(&chunk)?;
                tls.flush()?;
            }
            Ok(())
        }
        Delivery::Default | Delivery::Burst => {
            tls.write_all(&whole_response(head, &reply.body, chunked))?;
            tls.flush()
        }
        Delivery::Trickle { piece, pause } => {
            for (i, part) in whole_response(head, &reply.body, chunked).chunks(piece).enumerate() {
                if i > 0 {
                    thread::sleep(pause);
                }
                // rustls makes a record of what is written before each flush (several records
                // when a piece is over its 16 KiB fragment size).
                tls.write_all(part)?;
                tls.flush()?;
            }
            Ok(())
        }
    }
}

/// The head followed by the body, framed (chunked as [`chunk_body`] cuts it, or as it is).
fn whole_response(mut head: Vec<u8>, body: &[u8], chunked: bool) -> Vec<u8> {
    if chunked {
        head.extend(chunk_body(body).concat());
    } else {
        head.extend_from_slice(body);
    }
    head
}

/// Sends close_notify, shuts the write side and drains what the peer still sends for a moment,
/// so the last response is not lost to a reset.
fn close_gently(mut tls: Tls) {
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        if tls.conn.write_tls(&mut tls.sock).is_err() {
            break;
        }
    }
    let _ = tls.sock.shutdown(Shutdown::Write);
    let _ = tls.sock.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while Instant::now() < deadline && drained < BODY_MAX {
        match tls.sock.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

/// Writes `bytes` to `path` through a temporary name and a rename, so no reader sees half.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// A fresh self-signed certificate for localhost, 127.0.0.1 and ::1: DER, key, and PEM.
fn certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>, String), rcgen::Error> {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "places-stub (offline, synthetic data)");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), der, cert.pem()))
}

fn tls_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn run(options: Options) -> Result<(), String> {
    let (cert, key, pem) = certificate().map_err(|e| format!("cannot make a certificate: {e}"))?;
    let tls = tls_config(cert, key).map_err(|e| format!("cannot set up TLS: {e}"))?;
    write_atomically(&options.cert_out, pem.as_bytes())
        .map_err(|e| format!("cannot write the certificate to {}: {e}", options.cert_out.display()))?;
    let listener = TcpListener::bind(&options.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
    say(&format!("places-stub listening on https://{addr}"));
    // Last, so whoever sees the port file also finds the certificate and the line above.
    if let Some(path) = &options.port_file {
        write_atomically(path, format!("{}\n", addr.port()).as_bytes())
            .map_err(|e| format!("cannot write the port to {}: {e}", path.display()))?;
    }
    let shared = Arc::new(Shared {
        tls: Arc::new(tls),
        options,
        handshakes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        connections: AtomicUsize::new(0),
    });
    loop {
        let (sock, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                warn(&format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn(&format!("too many connections, closing the one from {peer}"));
            continue;
        }
        let spawned = thread::Builder::new().name("places-stub-conn".into()).spawn({
            let shared = Arc::clone(&shared);
            move || serve(sock, peer, &shared)
        });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn(&format!("cannot start a thread for {peer}: {e}"));
        }
    }
}

fn main() -> ExitCode {
    match parse_args(lexopt::Parser::from_env()) {
        Ok(Command::Help) => {
            let _ = io::stdout().lock().write_all(HELP.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            say(&format!("places-stub {}", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            warn(&format!("{e}\nTry 'places-stub --help'."));
            ExitCode::from(2)
        }
        Ok(Command::Run(options)) => match run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&e);
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options { key: "right-key".into(), ..Options::default() }
    }

    fn json_of(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    const BODY: &str = r#"{"locationRestriction":{"circle":{"center":{"latitude":34.06893,"longitude":-118.445127},"radius":10000.0}},"maxResultCount":5}"#;

    fn new_request(key: Option<&str>, mask: Option<&str>, body: &str) -> Request {
        Request {
            method: "POST".into(),
            target: "/v1/places:searchNearby".into(),
            api_key: key.map(|k| k.as_bytes().to_vec()),
            field_mask: mask.map(|m| m.as_bytes().to_vec()),
            body: body.as_bytes().to_vec(),
        }
    }

    fn legacy_request(query: &str) -> Request {
        Request {
            method: "GET".into(),
            target: format!("/maps/api/place/nearbysearch/json?{query}"),
            ..Request::default()
        }
    }

    // --- synthetic places -----------------------------------------------------------------

    #[test]
    fn places_lie_within_the_radius_at_every_latitude() {
        let lats =
            [-90.0, -89.99999, -89.9, -75.0, -33.8587, -1e-9, 0.0, 34.06893, 60.0, 89.9, 89.99999, 90.0];
        let lngs = [-180.0, -179.99999, -118.445127, 0.0, 151.21, 179.99999, 180.0];
        let radii = [0.01, 1.0, 100.0, 10_000.0, 50_000.0];
        for &lat in &lats {
            for &lng in &lngs {
                for &r in &radii {
                    let places = synthetic_places(lat, lng, r, 20);
                    assert_eq!(places.len(), 20);
                    let mut farthest: f64 = 0.0;
                    for p in &places {
                        let d = distance_m(lat, lng, p.lat, p.lng);
                        assert!(
                            d <= MARGIN * r * (1.0 + 1e-6) + 1e-6,
                            "{d} m from ({lat}, {lng}), r {r}: {p:?}"
                        );
                        assert!(d < r, "{d} m from ({lat}, {lng}), r {r}");
                        assert!((-90.0..=90.0).contains(&p.lat) && (-180.0..180.0).contains(&p.lng), "{p:?}");
                        farthest = farthest.max(d);
                    }
                    // Spread over the disc, not heaped on the centre.
                    assert!(farthest > 0.5 * r, "farthest {farthest} m of r {r} at ({lat}, {lng})");
                }
            }
        }
    }

    #[test]
    fn a_degree_of_longitude_shrinks_with_latitude() {
        // Due east by 1 km at 60°N is twice the longitude of 1 km due east at the equator.
        let (_, at_equator) = destination(0.0, 0.0, 1000.0, std::f64::consts::FRAC_PI_2);
        let (lat, at_60) = destination(60.0, 0.0, 1000.0, std::f64::consts::FRAC_PI_2);
        assert!((at_60 / at_equator - 2.0).abs() < 1e-4, "{at_60} vs {at_equator}");
        assert!((lat - 60.0).abs() < 1e-3);
        // 1 km due north is 1 km / (R·π/180) degrees of latitude anywhere.
        let (north, _) = destination(-45.0, 10.0, 1000.0, 0.0);
        assert!((north + 45.0 - (1000.0 / EARTH_RADIUS_M).to_degrees()).abs() < 1e-9);
    }

    #[test]
    fn places_wrap_across_the_antimeridian_and_over_the_pole() {
        let places = synthetic_places(10.0, 179.99, 50_000.0, 20);
        let (east, west) =
            (places.iter().filter(|p| p.lng > 0.0).count(), places.iter().filter(|p| p.lng < 0.0).count());
        assert!(east > 0 && west > 0, "{east} east, {west} west of the antimeridian");
        assert!(places.iter().all(|p| p.lng.abs() < 180.0 && (p.lng.abs() > 179.0)));
        // A disc around a point 1.1 km from the North Pole covers the pole: longitudes all round.
        let places = synthetic_places(89.99, 0.0, 50_000.0, 20);
        assert!(places.iter().any(|p| p.lng.abs() > 90.0), "no place beyond the pole");
        for p in &places {
            assert!(distance_m(89.99, 0.0, p.lat, p.lng) < 50_000.0 * MARGIN + 1e-6);
        }
    }

    #[test]
    fn places_are_deterministic_distinct_and_named_as_synthetic() {
        let a = synthetic_places(34.06893, -118.445127, 1000.0, 20);
        assert_eq!(a, synthetic_places(34.06893, -118.445127, 1000.0, 20));
        assert_eq!(a[..5], synthetic_places(34.06893, -118.445127, 1000.0, 5)[..]);
        let b = synthetic_places(34.06893, -118.445127, 1001.0, 20);
        assert_ne!(a[0].id, b[0].id);
        let mut ids: Vec<&str> = a.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        let p = &a[2];
        assert!(p.id.starts_with("stub-") && p.id.ends_with("-3"), "{}", p.id);
        assert_eq!(p.name(), "Synthetic Place 3 (places-stub)");
        assert_eq!(p.street(), "Synthetic Street 3");
        assert!((1.0..=5.0).contains(&p.rating));
        assert_eq!(p.new_json()["types"], json!(["point_of_interest", "establishment"]));
    }

    // --- field masks ----------------------------------------------------------------------

    fn masked(mask: &str) -> Value {
        let place = synthetic_places(1.0, 2.0, 100.0, 1).remove(0);
        parse_field_mask(mask).unwrap().apply(&place.new_json())
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn field_mask_keeps_only_the_named_fields() {
        let all = [
            "id",
            "types",
            "shortFormattedAddress",
            "location",
            "rating",
            "userRatingCount",
            "businessStatus",
            "displayName",
        ];
        assert_eq!(keys(&masked(herd::places::FIELD_MASK)), all);
        for everything in ["*", "places", "places.*", " * "] {
            assert_eq!(keys(&masked(everything)), all, "{everything}");
        }
        assert_eq!(keys(&masked("places.displayName, places.id")), ["id", "displayName"]);
        let v = masked("places.displayName.text,places.location.latitude");
        assert_eq!(keys(&v), ["location", "displayName"]);
        assert_eq!(keys(&v["displayName"]), ["text"]);
        assert_eq!(keys(&v["location"]), ["latitude"]);
        // A whole field wins over one of its parts, in either order.
        assert_eq!(
            keys(&masked("places.location.latitude,places.location")["location"]),
            ["latitude", "longitude"]
        );
        assert_eq!(
            keys(&masked("places.location,places.location.latitude")["location"]),
            ["latitude", "longitude"]
        );
    }

    #[test]
    fn field_mask_refuses_missing_and_unknown_paths() {
        assert_eq!(parse_field_mask(""), Err(MaskError::Missing));
        assert_eq!(parse_field_mask(" , ,"), Err(MaskError::Missing));
        for bad in
            ["id", "places.", "places.name", "places.displayName.txt", "places.rating.value", "nextPageToken"]
        {
            assert!(matches!(parse_field_mask(bad), Err(MaskError::Unknown(p)) if p == bad), "{bad}");
        }
        assert!(
            matches!(parse_field_mask("places.id,places.bogus"), Err(MaskError::Unknown(p)) if p == "places.bogus")
        );
    }

    // --- request validation ---------------------------------------------------------------

    #[test]
    fn new_body_validation() {
        let q = parse_new_body(BODY.as_bytes()).unwrap();
        assert_eq!(q, Nearby { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, count: 5 });
        let body = |center: &str, radius: &str, rest: &str| {
            format!(r#"{{"locationRestriction":{{"circle":{{"center":{center},"radius":{radius}}}}}{rest}}}"#)
        };
        let c = r#"{"latitude":1,"longitude":2}"#;
        assert_eq!(parse_new_body(body(c, "50000", "").as_bytes()).unwrap().count, 20, "default count");
        assert_eq!(parse_new_body(body(c, "50000", r#","maxResultCount":20"#).as_bytes()).unwrap().count, 20);
        assert_eq!(parse_new_body(body(c, "0.5", r#","maxResultCount":1"#).as_bytes()).unwrap().count, 1);
        for (bad, why) in [
            (body(c, "0", ""), "radius 0"),
            (body(c, "-5", ""), "negative radius"),
            (body(c, "50000.5", ""), "radius too large"),
            (body(c, "\"100\"", ""), "radius a string"),
            (body(c, "100", r#","maxResultCount":0"#), "count 0"),
            (body(c, "100", r#","maxResultCount":21"#), "count 21"),
            (body(c, "100", r#","maxResultCount":5.5"#), "count 5.5"),
            (body(c, "100", r#","maxResultCount":-1"#), "count -1"),
            (body(c, "100", r#","maxResultCount":"5""#), "count a string"),
            (body(c, "100", r#","bogus":1"#), "unknown field"),
            (body(r#"{"latitude":91,"longitude":2}"#, "100", ""), "latitude 91"),
            (body(r#"{"latitude":1,"longitude":-180.5}"#, "100", ""), "longitude -180.5"),
            (body(r#"{"longitude":2}"#, "100", ""), "no latitude"),
            (r#"{"maxResultCount":5}"#.into(), "no locationRestriction"),
            (r#"{"locationRestriction":{"circle":{"radius":5}}}"#.into(), "no center"),
            ("[1]".into(), "not an object"),
            ("{\"locationRestriction\":".into(), "truncated"),
            (String::new(), "empty"),
        ] {
            assert!(parse_new_body(bad.as_bytes()).is_err(), "{why}: {bad}");
        }
    }

    #[test]
    fn new_api_checks_key_then_mask_then_body() {
        let o = opts();
        let mask = Some(herd::places::FIELD_MASK);
        for key in [None, Some("wrong-key"), Some("right-key "), Some("")] {
            let r = respond(&new_request(key, mask, BODY), &o);
            assert_eq!(r.status, 403, "{key:?}");
            let v = json_of(&r);
            assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
            assert_eq!(v["error"]["code"], 403);
            assert_eq!(v["error"]["message"], "API key not valid. Please pass a valid API key.");
        }
        // Wrong key and no mask: the key is checked first.
        assert_eq!(respond(&new_request(Some("wrong"), None, BODY), &o).status, 403);
        let r = respond(&new_request(Some("right-key"), None, BODY), &o);
        assert_eq!(r.status, 400);
        assert_eq!(json_of(&r)["error"]["status"], "INVALID_ARGUMENT");
        assert!(
            json_of(&r)["error"]["message"].as_str().unwrap().contains("FieldMask is a required parameter")
        );
        let r = respond(&new_request(Some("right-key"), Some("places.nope"), BODY), &o);
        assert_eq!((r.status, json_of(&r)["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
        let r = respond(&new_request(Some("right-key"), mask, "{not json"), &o);
        assert_eq!((r.status, json_of(&r)["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));

        let r = respond(&new_request(Some("right-key"), mask, BODY), &o);
        assert_eq!(r.status, 200);
        let v = json_of(&r);
        assert_eq!(keys(&v), ["places"]);
        assert_eq!(v["places"].as_array().unwrap().len(), 5);
        // The key may also come as `?key=`, as Google allows.
        let mut req = new_request(None, mask, BODY);
        req.target.push_str("?key=right-key");
        assert_eq!(respond(&req, &o).status, 200);
    }

    #[test]
    fn routes_methods_and_override_flags() {
        let o = opts();
        let mut get_new = new_request(Some("right-key"), Some("*"), BODY);
        get_new.method = "GET".into();
        let mut post_legacy = legacy_request("location=1,2&radius=5&key=right-key");
        post_legacy.method = "POST".into();
        let elsewhere = Request { target: "/maps/api/place/textsearch/json".into(), ..legacy_request("") };
        for req in [get_new, post_legacy, elsewhere] {
            let r = respond(&req, &o);
            assert_eq!(
                (r.status, json_of(&r)["error"]["status"].as_str()),
                (404, Some("NOT_FOUND")),
                "{req:?}"
            );
        }
        // A base prefix in front of either path is fine.
        let mut based = new_request(Some("right-key"), Some("*"), BODY);
        based.target = "/base/v1/places:searchNearby".into();
        assert_eq!(respond(&based, &o).status, 200);

        let status = Options { status: Some(429), ..opts() };
        let r = respond(&new_request(Some("right-key"), Some("*"), BODY), &status);
        assert_eq!(r.status, 429);
        assert_eq!(json_of(&r)["error"]["status"], "RESOURCE_EXHAUSTED");
        let r = respond(&legacy_request("location=1,2&radius=5&key=right-key"), &status);
        assert_eq!((r.status, json_of(&r)["error"]["code"].as_u64()), (429, Some(429)));

        let garbage = Options { garbage: true, ..opts() };
        for req in
            [new_request(Some("wrong"), None, ""), legacy_request("location=1,2&radius=5&key=right-key")]
        {
            let r = respond(&req, &garbage);
            assert_eq!(r.status, 200);
            assert!(serde_json::from_slice::<Value>(&r.body).is_err());
        }
    }

    // --- legacy ---------------------------------------------------------------------------

    #[test]
    fn legacy_query_parsing() {
        let params = query_params("location=34.06893,-118.445127&radius=10000&key=k%2By%2F1&x=a+b");
        assert_eq!(param(&params, "key"), Some("k+y/1"));
        assert_eq!(param(&params, "x"), Some("a b"));
        assert_eq!(
            parse_legacy_query(&params),
            Ok(Nearby { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, count: 20 })
        );
        let q = |s: &str| parse_legacy_query(&query_params(s));
        assert_eq!(q("location=-33.8587%2C151.21&radius=1.5").unwrap().lng, 151.21);
        assert_eq!(q("radius=50000&location=90,-180").unwrap().radius_m, 50_000.0);
        for bad in [
            "radius=100",
            "location=&radius=100",
            "location=1&radius=100",
            "location=1,2,3&radius=100",
            "location=abc,2&radius=100",
            "location=91,2&radius=100",
            "location=1,181&radius=100",
            "location=NaN,2&radius=100",
            "location=1,2",
            "location=1,2&radius=",
            "location=1,2&radius=0",
            "location=1,2&radius=-3",
            "location=1,2&radius=50001",
            "location=1,2&radius=ten",
            "location=1,2&radius=inf",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
        // Malformed escapes stay as they are.
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%2c"), "A,");
    }

    #[test]
    fn legacy_answers_like_google() {
        let o = opts();
        let r = respond(&legacy_request("location=34.06893,-118.445127&radius=1000&key=right-key"), &o);
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"business_status\" : "), "{text}");
        let v = json_of(&r);
        assert_eq!(keys(&v), ["html_attributions", "results", "status"]);
        assert_eq!(v["status"], "OK");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 20);
        for result in results {
            assert_eq!(
                keys(result),
                [
                    "business_status",
                    "geometry",
                    "name",
                    "place_id",
                    "rating",
                    "types",
                    "user_ratings_total",
                    "vicinity"
                ]
            );
            let loc = &result["geometry"]["location"];
            assert_eq!(keys(loc), ["lat", "lng"]);
            let d =
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap());
            assert!(d < 1000.0);
        }
        for query in [
            "location=1,2&radius=5",
            "location=1,2&radius=5&key=wrong",
            "location=1,2&radius=5&KEY=right-key",
        ] {
            let v = json_of(&respond(&legacy_request(query), &o));
            assert_eq!(keys(&v), ["error_message", "html_attributions", "results", "status"]);
            assert_eq!(v["status"], "REQUEST_DENIED", "{query}");
            assert_eq!(v["error_message"], "The provided API key is invalid.");
            assert_eq!(v["results"], json!([]));
        }
        let r = respond(&legacy_request("radius=5&key=right-key"), &o);
        assert_eq!((r.status, json_of(&r)["status"].as_str()), (200, Some("INVALID_REQUEST")));
    }

    // --- padded answers -------------------------------------------------------------------

    const KIB: usize = 1024;
    /// The sizes the WHATSAT tests use: 1 KiB, 20 KiB, 64 KiB, 300 KiB, 1.9 MiB.
    const SIZES: [usize; 5] = [KIB, 20 * KIB, 64 * KIB, 300 * KIB, 1946 * KIB];

    fn sized(size: Size) -> Options {
        Options { size, ..opts() }
    }

    fn new_body(radius_m: f64, count: usize) -> String {
        format!(
            r#"{{"locationRestriction":{{"circle":{{"center":{{"latitude":34.06893,"longitude":-118.445127}},"radius":{radius_m:.1}}}}},"maxResultCount":{count}}}"#
        )
    }

    fn legacy_query(radius_m: f64) -> String {
        format!("location=34.06893,-118.445127&radius={radius_m}&key=right-key")
    }

    /// Checks a padded legacy body: Google's layout (three-space indent, `" : "`, a blank line
    /// between results, trailing newlines), keys and order, the photos' shape. Returns the JSON.
    fn check_padded_legacy(body: &[u8]) -> Value {
        let text = std::str::from_utf8(body).unwrap();
        assert!(
            text.starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n"),
            "{text:.200}"
        );
        assert!(
            text.ends_with("\n   \"status\" : \"OK\"\n}\n\n"),
            "trailing newlines: {:?}",
            &text[text.len() - 40..]
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(keys(&v), ["html_attributions", "results", "status"]);
        let results = v["results"].as_array().unwrap();
        assert_eq!(
            text.matches("\n      },\n\n      {\n").count(),
            results.len() - 1,
            "a blank line between results"
        );
        for r in results {
            let k = keys(r);
            let mut sorted = k.clone();
            sorted.sort_unstable();
            assert_eq!(k, sorted, "Google's alphabetical key order");
            let bare: Vec<&str> = k.iter().copied().filter(|k| *k != "photos").collect();
            assert_eq!(
                bare,
                [
                    "business_status",
                    "geometry",
                    "name",
                    "place_id",
                    "rating",
                    "types",
                    "user_ratings_total",
                    "vicinity"
                ]
            );
            for photo in r.get("photos").and_then(Value::as_array).into_iter().flatten() {
                assert_eq!(keys(photo), ["height", "html_attributions", "photo_reference", "width"]);
                assert_eq!(photo["photo_reference"].as_str().unwrap().len(), 400);
                let credit = photo["html_attributions"][0].as_str().unwrap();
                assert!(credit.starts_with("<a href=\"https://maps.google.com/maps/contrib/1"), "{credit}");
            }
            let loc = &r["geometry"]["location"];
            assert!(
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap())
                    < 1e5
            );
        }
        v
    }

    /// Checks a padded New API body against the herd's mask. Returns the JSON.
    fn check_padded_new(body: &[u8]) -> Value {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.starts_with("{\n  \"places\": [\n    {\n") && text.ends_with("\n}\n"), "{text:.200}");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(keys(&v), ["places"]);
        for p in v["places"].as_array().unwrap() {
            assert_eq!(keys(p), keys(&masked(herd::places::FIELD_MASK)), "only the mask's fields");
            let types = p["types"].as_array().unwrap();
            assert_eq!(types[..2], [json!("point_of_interest"), json!("establishment")]);
            assert!(types[2..].iter().all(|t| t.as_str().unwrap().starts_with("synthetic_type_")));
        }
        v
    }

    fn within_a_percent(len: usize, target: usize) {
        let off = len.abs_diff(target) as f64 / target as f64;
        assert!(off <= 0.01, "{len} bytes for a target of {target}");
    }

    #[test]
    fn padded_answers_parse_have_googles_shape_and_the_size_asked() {
        let mask = Some(herd::places::FIELD_MASK);
        for target in SIZES {
            let o = sized(Size::Fixed(target));
            let r = respond(&legacy_request(&legacy_query(1000.0)), &o);
            assert_eq!(r.status, 200);
            within_a_percent(r.body.len(), target);
            let v = check_padded_legacy(&r.body);
            let results = v["results"].as_array().unwrap().len();
            // Only the smallest target needs fewer results than Google's twenty.
            assert_eq!(results == 20, target > KIB, "{results} results in {target} bytes");
            assert!(results >= 1);

            for count in [1, 5, 20] {
                let r = respond(&new_request(Some("right-key"), mask, &new_body(1000.0, count)), &o);
                assert_eq!(r.status, 200);
                within_a_percent(r.body.len(), target);
                let n = check_padded_new(&r.body)["places"].as_array().unwrap().len();
                assert!(
                    n == count || (target == KIB && (1..count).contains(&n)),
                    "{n} of {count} in {target}"
                );
            }
        }
    }

    #[test]
    fn padding_is_exact_to_the_byte_and_deterministic() {
        for target in [1000, KIB, 5000, 20 * KIB + 1, 64 * KIB - 1, 100_001] {
            let o = sized(Size::Fixed(target));
            let a = respond(&legacy_request(&legacy_query(500.0)), &o);
            assert_eq!(a.body.len(), target);
            assert_eq!(a, respond(&legacy_request(&legacy_query(500.0)), &o));
            let b = respond(&new_request(Some("right-key"), Some("*"), &new_body(500.0, 7)), &o);
            assert_eq!(b.body.len(), target);
        }
    }

    #[test]
    fn size_by_radius_gives_round_radius_kib() {
        let o = sized(Size::ByRadius);
        for (radius_m, kib) in
            [(1.0, 1), (19.6, 20), (64.0, 64), (300.0, 300), (1946.0, 1946), (2100.0, 2100)]
        {
            let r = respond(&legacy_request(&legacy_query(radius_m)), &o);
            assert_eq!(r.body.len(), kib * KIB, "radius {radius_m}");
            let r = respond(
                &new_request(Some("right-key"), Some(herd::places::FIELD_MASK), &new_body(radius_m, 20)),
                &o,
            );
            assert_eq!(r.body.len(), kib * KIB, "radius {radius_m}");
        }
        // The places still lie within the radius asked, however small.
        let v = check_padded_legacy(&respond(&legacy_request(&legacy_query(2.0)), &o).body);
        for r in v["results"].as_array().unwrap() {
            let loc = &r["geometry"]["location"];
            assert!(
                distance_m(34.06893, -118.445127, loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap())
                    < 2.0
            );
        }
    }

    #[test]
    fn padding_leaves_errors_small_and_the_default_unchanged() {
        let o = sized(Size::Fixed(64 * KIB));
        // Refusals are not padded.
        let r = respond(&legacy_request("location=1,2&radius=5&key=wrong"), &o);
        assert!(r.body.len() < 1000 && json_of(&r)["status"] == "REQUEST_DENIED");
        let r = respond(&new_request(Some("wrong"), Some("*"), BODY), &o);
        assert!(r.status == 403 && r.body.len() < 1000);
        // A mask without the padded fields gets the bare answer, as Google would send it.
        let r = respond(&new_request(Some("right-key"), Some("places.id,places.rating"), BODY), &o);
        assert_eq!(
            r,
            respond(&new_request(Some("right-key"), Some("places.id,places.rating"), BODY), &opts())
        );
        // A target under one bare result: that one result, unpadded.
        let tiny = sized(Size::Fixed(10));
        let v = json_of(&respond(&legacy_request(&legacy_query(5.0)), &tiny));
        assert_eq!(v["results"].as_array().unwrap().len(), 1);
        assert_eq!(v["results"][0]["vicinity"], "Synthetic Street 1");
        // Without a size, answers are as they always were.
        let plain = respond(&legacy_request(&legacy_query(1000.0)), &opts());
        assert!(!plain.body.windows(2).any(|w| w == b"\n\n") && plain.body.len() < 20 * KIB);
    }

    #[test]
    fn sizes_parse_in_bytes_kib_and_mib() {
        assert_eq!(parse_size("20480"), Ok(20480));
        assert_eq!(parse_size("20K"), Ok(20480));
        assert_eq!(parse_size("20kib"), Ok(20480));
        assert_eq!(parse_size("1.9M"), Ok(1_992_294));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("64M"), Ok(MAX_PAD));
        for bad in ["", "K", "-1", "1.5G", "65M", "NaN", "inf", "1e99", "12 bytes"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn whole_responses_are_framed_as_the_head_says() {
        let head = response_head(200, 5, false, false);
        assert_eq!(whole_response(head.clone(), b"hello", false), [&head[..], b"hello"].concat());
        let head = response_head(200, 5, true, false);
        assert_eq!(
            whole_response(head.clone(), b"hello", true),
            [head, chunk_body(b"hello").concat()].concat()
        );
    }

    // --- HTTP -----------------------------------------------------------------------------

    #[test]
    fn printed_targets_never_show_the_key() {
        assert_eq!(
            printable_target("/m/json?location=1,2&key=SECRET&radius=3"),
            "/m/json?location=1,2&radius=3"
        );
        assert_eq!(printable_target("/m/json?key=SECRET"), "/m/json");
        assert_eq!(printable_target("/m/json?KEY=SECRET&%6Bey=SECRET2&key"), "/m/json");
        assert_eq!(printable_target("/v1/places:searchNearby"), "/v1/places:searchNearby");
        assert_eq!(printable_target("/a\nrequest 9 GET /"), "/a\\nrequest 9 GET /");
    }

    #[test]
    fn chunked_bodies_split_and_rejoin() {
        let body = br#"{"places": [1, 2, 3]}"#;
        let chunks = chunk_body(body);
        assert_eq!(chunks.len(), 5, "four data chunks and the last");
        assert_eq!(chunks.last().unwrap(), b"0\r\n\r\n");
        // Decode the wire form back.
        let wire = chunks.concat();
        let (mut rest, mut out) = (&wire[..], Vec::new());
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                assert_eq!(rest, b"\r\n");
                break;
            }
            out.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
        }
        assert_eq!(out, body);
        assert_eq!(chunk_body(b"ab").len(), 3);
        assert_eq!(chunk_body(b""), vec![b"0\r\n\r\n".to_vec()]);
    }

    /// An in-memory connection that hands out its input a few bytes at a time.
    struct Mock {
        input: Vec<u8>,
        pos: usize,
        step: usize,
        written: Vec<u8>,
    }

    impl Mock {
        fn new(input: &[u8]) -> Self {
            Self { input: input.to_vec(), pos: 0, step: 7, written: Vec::new() }
        }
    }

    impl Read for Mock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Mock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn herd_request(api: herd::config::PlacesApi) -> Vec<u8> {
        let mut out = Vec::new();
        let endpoint = herd::places::Endpoint::parse("https://localhost:8443").unwrap();
        let query = herd::places::Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 5 };
        herd::places::write_request(
            &mut out,
            api,
            &endpoint,
            &herd::config::Secret::new("right-key".into()),
            &query,
        );
        out
    }

    #[test]
    fn reads_the_herds_requests_pipelined_in_any_split() {
        use herd::config::PlacesApi;
        let mut input = herd_request(PlacesApi::New);
        input.extend(herd_request(PlacesApi::Legacy));
        for step in [1, 7, 8192] {
            let mut s = Mock { step, ..Mock::new(&input) };
            let mut buf = Vec::new();
            let Incoming::Request(req, true) = read_request(&mut s, &mut buf) else { panic!("first") };
            let r = respond(&req, &opts());
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(json_of(&r)["places"].as_array().unwrap().len(), 5);
            let Incoming::Request(req, true) = read_request(&mut s, &mut buf) else { panic!("second") };
            let r = respond(&req, &opts());
            assert_eq!(json_of(&r)["status"], "OK");
            assert!(matches!(read_request(&mut s, &mut buf), Incoming::Closed));
        }
    }

    #[test]
    fn request_limits_and_framing() {
        let read = |input: &[u8]| read_request(&mut Mock::new(input), &mut Vec::new());
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(HEAD_MAX));
        assert!(matches!(read(big.as_bytes()), Incoming::Reject(431, ..)));
        let endless = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2 * HEAD_MAX));
        assert!(matches!(read(endless.as_bytes()), Incoming::Reject(431, ..)));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(matches!(
            read(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Incoming::Reject(431, ..)
        ));
        let large = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_MAX + 1);
        assert!(matches!(read(large.as_bytes()), Incoming::Reject(413, _, Some(_))));
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(matches!(read(huge.as_bytes()), Incoming::Reject(413, ..)));
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\x16\x03\x01\x00\x05\x01\x00\x00",
        ] {
            assert!(matches!(read(bad.as_bytes()), Incoming::Reject(400, ..)), "{bad:?}");
        }
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Incoming::Reject(501, ..)
        ));
        // Cut short: closed quietly.
        assert!(matches!(read(b"GET / HTTP/1.1\r\nHost: x"), Incoming::Closed));
        assert!(matches!(read(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), Incoming::Closed));
        assert!(matches!(read(b""), Incoming::Closed));
        // Keep-alive rules: HTTP/1.1 by default, HTTP/1.0 only when asked; `close` wins.
        for (head, keep) in [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", false),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ] {
            assert!(matches!(read(head.as_bytes()), Incoming::Request(_, k) if k == keep), "{head:?}");
        }
        // `Expect: 100-continue` gets its interim answer before the body is read.
        let mut s = Mock::new(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi");
        s.step = 1;
        let Incoming::Request(req, _) = read_request(&mut s, &mut Vec::new()) else { panic!() };
        assert_eq!(
            (req.body.as_slice(), s.written.as_slice()),
            (&b"hi"[..], &b"HTTP/1.1 100 Continue\r\n\r\n"[..])
        );
    }

    #[test]
    fn response_heads() {
        let h = String::from_utf8(response_head(200, 12, false, false)).unwrap();
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\nServer: places-stub\r\nContent-Length: 12\r\n\r\n"
        );
        let h = String::from_utf8(response_head(503, 12, true, true)).unwrap();
        assert!(h.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(h.contains("Transfer-Encoding: chunked\r\n") && !h.contains("Content-Length"));
        assert!(h.ends_with("Connection: close\r\n\r\n"));
    }

    // --- command line ---------------------------------------------------------------------

    fn args(a: &[&str]) -> Result<Command, String> {
        parse_args(lexopt::Parser::from_args(a.iter().copied()))
    }

    #[test]
    fn command_line() {
        let Ok(Command::Run(o)) = args(&[]) else { panic!() };
        assert_eq!(
            (o.listen.as_str(), o.key.as_str(), o.cert_out.to_str()),
            ("127.0.0.1:0", "stub-key", Some("places-stub-cert.pem"))
        );
        assert!(
            o.status.is_none()
                && !o.garbage
                && !o.chunked
                && !o.close
                && !o.reset_mid_body
                && o.port_file.is_none()
                && o.size == Size::Natural
                && o.delivery == Delivery::Default
        );
        let Ok(Command::Run(o)) = args(&[
            "--listen",
            "[::1]:8443",
            "--cert-out",
            "c.pem",
            "--key",
            "k",
            "--delay-ms",
            "250",
            "--status",
            "503",
            "--garbage",
            "--chunked",
            "--close",
            "--reset-mid-body",
            "--port-file",
            "p",
        ]) else {
            panic!()
        };
        assert_eq!(
            (o.listen.as_str(), o.key.as_str(), o.delay, o.status),
            ("[::1]:8443", "k", Duration::from_millis(250), Some(503))
        );
        assert!(
            o.garbage && o.chunked && o.close && o.reset_mid_body && o.port_file == Some(PathBuf::from("p"))
        );
        let run = |a: &[&str]| match args(a) {
            Ok(Command::Run(o)) => (o.size, o.delivery),
            _ => panic!("{a:?}"),
        };
        assert_eq!(run(&["--pad-to", "20K", "--burst"]), (Size::Fixed(20480), Delivery::Burst));
        assert_eq!(
            run(&["--size-by-radius", "--trickle", "4096"]),
            (Size::ByRadius, Delivery::Trickle { piece: 4096, pause: TRICKLE_PAUSE })
        );
        assert_eq!(
            run(&["--trickle-pause-us", "250", "--trickle", "1"]).1,
            Delivery::Trickle { piece: 1, pause: Duration::from_micros(250) }
        );
        assert_eq!(Size::ByRadius.target(1945.6), Some(1946 * 1024));
        assert_eq!(Size::Natural.target(1.0), None);
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["-V"]), Ok(Command::Version)));
        for bad in [
            &["--status", "99"][..],
            &["--status", "204"],
            &["--status", "600"],
            &["--status", "x"],
            &["--delay-ms", "-1"],
            &["--key", ""],
            &["--key"],
            &["--bogus"],
            &["extra"],
            &["--pad-to", "1G"],
            &["--pad-to", "20K", "--size-by-radius"],
            &["--size-by-radius", "--pad-to", "20K"],
            &["--burst", "--trickle", "10"],
            &["--trickle", "0"],
            &["--trickle", "-5"],
            &["--trickle-pause-us", "10"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
