//! The Google Places client, sans-IO: it builds request bytes, reads response bytes, and turns
//! the answer into the legacy Nearby Search JSON that WHATSAT returns. The reactor moves the
//! bytes; only the TLS module names rustls types.

pub mod client;
pub mod convert;
pub mod response;
pub mod tls;

use std::fmt;
use std::io::Write;

use serde::Deserialize;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which Places API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacesApi {
    /// Places API (New), `POST /v1/places:searchNearby`.
    New,
    /// Legacy Nearby Search, `GET /maps/api/place/nearbysearch/json`.
    Legacy,
}

/// Where Places lives: `https://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address, also the TLS server name.
    pub host: String,
    /// TCP port (443 unless given).
    pub port: u16,
    /// Path prefix, empty or starting with `/`, without a trailing `/`.
    pub base: String,
}

impl Endpoint {
    /// Parses an `https://` URL. Anything else (user info, query, fragment) is refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("https://").ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || base.contains(['?', '#']) {
            return Err(format!("{url:?} is not of the form https://host[:port][/path]"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{url:?} has a bad port {p:?}"))?)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("{url:?} has no host or port"));
        }
        Ok(Self { host: host.to_owned(), port, base: base.to_owned() })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 443 { host } else { format!("{host}:{}", self.port) }
    }
}

/// One Nearby Search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Query {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lng: f64,
    /// Radius in metres.
    pub radius_m: f64,
    /// Most results wanted, 1 to 20.
    pub bound: u8,
}

/// The fields asked of the New API: exactly those [`convert::new_to_legacy`] converts, since
/// Google bills by the fields in the mask.
pub const FIELD_MASK: &str = "places.id,places.displayName,places.location,places.shortFormattedAddress,\
places.types,places.rating,places.userRatingCount,places.businessStatus";

/// Appends the HTTP/1.1 request for `query` to `out`. The key goes only into these bytes.
pub fn write_request(out: &mut Vec<u8>, api: PlacesApi, endpoint: &Endpoint, key: &Secret, query: &Query) {
    let host = endpoint.authority();
    // Writing to a Vec cannot fail.
    let _ = match api {
        PlacesApi::New => {
            let body = format!(
                "{{\"locationRestriction\":{{\"circle\":{{\"center\":{{\"latitude\":{},\"longitude\":{}}},\
                 \"radius\":{:.1}}}}},\"maxResultCount\":{}}}",
                query.lat, query.lng, query.radius_m, query.bound
            );
            write!(
                out,
                "POST {}/v1/places:searchNearby HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 X-Goog-Api-Key: {}\r\nX-Goog-FieldMask: {FIELD_MASK}\r\nContent-Length: {}\r\n\r\n{body}",
                endpoint.base,
                header_safe(key.expose()),
                body.len()
            )
        }
        PlacesApi::Legacy => write!(
            out,
            "GET {}/maps/api/place/nearbysearch/json?location={},{}&radius={}&key={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            endpoint.base,
            query.lat,
            query.lng,
            query.radius_m,
            percent_encode(key.expose())
        ),
    };
}

/// A key with anything that could end a header removed.
fn header_safe(key: &str) -> String {
    key.chars().filter(|c| !c.is_control()).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a Places answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacesError {
    /// A status other than 200, with Google's error status if the body names one.
    Status(u16, Option<String>),
    /// A 200 answer whose JSON says the request failed (`REQUEST_DENIED`, ...).
    Denied(String),
    /// The body is not the JSON expected.
    BadJson(String),
}

impl fmt::Display for PlacesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s, Some(g)) => write!(f, "Places answered HTTP {s} ({g})"),
            Self::Status(s, None) => write!(f, "Places answered HTTP {s}"),
            Self::Denied(g) => write!(f, "Places refused the request: {g}"),
            Self::BadJson(e) => write!(f, "Places answered with unusable JSON: {e}"),
        }
    }
}

impl std::error::Error for PlacesError {}

/// Appends the WHATSAT reply: the stored AT line, `\n`, the JSON with every run of newlines
/// collapsed to one and trailing newlines removed, then `\n\n`.
pub fn write_whatsat_reply(out: &mut Vec<u8>, at_line: &[u8], json: &[u8]) {
    out.extend_from_slice(at_line);
    out.push(b'\n');
    let json = match json.iter().rposition(|&b| b != b'\n') {
        Some(last) => &json[..=last],
        None => &[],
    };
    let mut previous_newline = false;
    for &b in json {
        if b == b'\n' && previous_newline {
            continue;
        }
        previous_newline = b == b'\n';
        out.push(b);
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            endpoint("https://places.googleapis.com"),
            Endpoint { host: "places.googleapis.com".into(), port: 443, base: String::new() }
        );
        assert_eq!(
            endpoint("https://127.0.0.1:8443/"),
            Endpoint { host: "127.0.0.1".into(), port: 8443, base: String::new() }
        );
        assert_eq!(endpoint("https://h:1/api/"), Endpoint { host: "h".into(), port: 1, base: "/api".into() });
        assert_eq!(
            endpoint("https://[::1]:9/"),
            Endpoint { host: "::1".into(), port: 9, base: String::new() }
        );
        for bad in ["http://x", "https://", "https://x:0", "https://x:99999", "https://u@x", "https://x/?q"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn request(api: PlacesApi, url: &str) -> String {
        let mut out = Vec::new();
        let q = Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 5 };
        write_request(&mut out, api, &endpoint(url), &Secret::new("k+y/1".into()), &q);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn new_api_request_bytes() {
        let r = request(PlacesApi::New, "https://places.googleapis.com");
        let body = r#"{"locationRestriction":{"circle":{"center":{"latitude":34.06893,"longitude":-118.445127},"radius":10000.0}},"maxResultCount":5}"#;
        let want = format!(
            "POST /v1/places:searchNearby HTTP/1.1\r\nHost: places.googleapis.com\r\nContent-Type: application/json\r\n\
             X-Goog-Api-Key: k+y/1\r\nX-Goog-FieldMask: {FIELD_MASK}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(r, want);
    }

    #[test]
    fn legacy_request_bytes() {
        let r = request(PlacesApi::Legacy, "https://127.0.0.1:8443/base");
        assert_eq!(
            r,
            "GET /base/maps/api/place/nearbysearch/json?location=34.06893,-118.445127&radius=10000&key=k%2By%2F1 HTTP/1.1\r\n\
             Host: 127.0.0.1:8443\r\n\r\n"
        );
    }

    #[test]
    fn whatsat_reply_collapses_newlines() {
        let mut out = Vec::new();
        write_whatsat_reply(&mut out, b"AT Hill +0.1 k +1.0+1.0 1", b"{\n\n\n  \"a\": 1\n\n}\n\n\n");
        assert_eq!(out, b"AT Hill +0.1 k +1.0+1.0 1\n{\n  \"a\": 1\n}\n\n");
        let mut out = Vec::new();
        write_whatsat_reply(&mut out, b"AT", b"{}");
        assert_eq!(out, b"AT\n{}\n\n");
    }
}
