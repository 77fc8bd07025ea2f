//! HTTP/1.1, as much as the stub needs: reading requests (pipelined, size-limited, `Expect:
//! 100-continue`), response heads and chunked bodies.

use std::io::{self, Read, Write};

use crate::answer::Request;

/// Largest request head (request line and headers) accepted; beyond it, 431 and close.
const HEAD_MAX: usize = 16 * 1024;
/// Largest request body accepted; beyond it, 413 and close.
pub(crate) const BODY_MAX: usize = 64 * 1024;
/// Most request headers accepted; beyond it, 431 and close.
const MAX_HEADERS: usize = 64;

/// What came in on a connection.
#[derive(Debug)]
pub(crate) enum Incoming {
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
pub(crate) fn read_request<S: Read + Write>(s: &mut S, buf: &mut Vec<u8>) -> Incoming {
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

/// The response head.
pub(crate) fn response_head(status: u16, body_len: usize, chunked: bool, close: bool) -> Vec<u8> {
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
pub(crate) fn chunk_body(body: &[u8]) -> Vec<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::respond;
    use crate::testing::{json_of, opts};

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

    fn herd_request(api: herd::places::PlacesApi) -> Vec<u8> {
        let mut out = Vec::new();
        let endpoint = herd::places::Endpoint::parse("https://localhost:8443").unwrap();
        let query = herd::places::Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 5 };
        herd::places::write_request(
            &mut out,
            api,
            &endpoint,
            &herd::places::Secret::new("right-key".into()),
            &query,
        );
        out
    }

    #[test]
    fn reads_the_herds_requests_pipelined_in_any_split() {
        use herd::places::PlacesApi;
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
}
