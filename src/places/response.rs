//! Reading an HTTP/1.1 response from bytes fed in any split: the head with httparse, then a
//! `Content-Length` body, a chunked body, or (with neither) everything up to end of stream.
//!
//! Bytes are kept in one buffer and parsed from a saved position, so nothing is scanned twice.
//! "Need more bytes" is [`Progress::Partial`], not an error.

use std::fmt;

/// Largest response head: Google's are a few KiB; without a limit a hostile or broken server
/// could make us buffer headers forever.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest response body: a 20-result Nearby Search answer is well under 100 KiB.
pub const MAX_BODY: usize = 2 << 20;
/// Most header lines parsed.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 1024;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is not valid HTTP/1.x.
    BadHead(String),
    /// The head is longer than [`MAX_HEAD`].
    HeadTooLarge,
    /// The body is longer than [`MAX_BODY`].
    BodyTooLarge,
    /// `Content-Length` is malformed or given twice with different values.
    BadLength,
    /// A transfer coding other than chunked.
    UnsupportedEncoding,
    /// The chunked framing is malformed.
    BadChunk,
    /// The stream ended before the response did.
    Truncated,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHead(e) => write!(f, "malformed response head: {e}"),
            Self::HeadTooLarge => write!(f, "response head longer than {MAX_HEAD} bytes"),
            Self::BodyTooLarge => write!(f, "response body longer than {MAX_BODY} bytes"),
            Self::BadLength => write!(f, "malformed Content-Length"),
            Self::UnsupportedEncoding => write!(f, "unsupported Transfer-Encoding"),
            Self::BadChunk => write!(f, "malformed chunked body"),
            Self::Truncated => write!(f, "response truncated by end of stream"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Whether a response is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Partial,
    /// The response is complete; bytes after it (none, for a well-behaved server) are ignored.
    Done(Response),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    ToEof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

#[derive(Debug)]
enum State {
    Head,
    Body { status: u16, keep_alive: bool, framing: Framing, chunk: Chunk },
    Done,
}

/// Reads one response.
#[derive(Debug)]
pub struct ResponseReader {
    buf: Vec<u8>,
    /// Parsed up to here.
    pos: usize,
    body: Vec<u8>,
    state: State,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    /// A reader waiting for a response head.
    pub fn new() -> Self {
        Self { buf: Vec::new(), pos: 0, body: Vec::new(), state: State::Head }
    }

    /// Feeds bytes received from the server.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        if matches!(self.state, State::Done) {
            return Ok(Progress::Partial);
        }
        self.buf.extend_from_slice(data);
        self.advance()
    }

    /// The server closed the stream: completes a body read to end of stream, or reports the
    /// response as truncated.
    pub fn finish(&mut self) -> Result<Response, HttpError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Body { status, framing: Framing::ToEof, .. } => {
                Ok(Response { status, body: std::mem::take(&mut self.body), keep_alive: false })
            }
            _ => Err(HttpError::Truncated),
        }
    }

    fn advance(&mut self) -> Result<Progress, HttpError> {
        loop {
            match self.state {
                State::Head => {
                    if !self.read_head()? {
                        return Ok(Progress::Partial);
                    }
                }
                State::Body { status, keep_alive, framing, chunk } => {
                    let done = match framing {
                        Framing::Length(left) => {
                            let take = left.min(self.buf.len() - self.pos);
                            self.take_body(take)?;
                            let left = left - take;
                            self.state =
                                State::Body { status, keep_alive, framing: Framing::Length(left), chunk };
                            left == 0
                        }
                        Framing::ToEof => {
                            let take = self.buf.len() - self.pos;
                            self.take_body(take)?;
                            false
                        }
                        Framing::Chunked => self.read_chunks(status, keep_alive, chunk)?,
                    };
                    self.compact();
                    if !done {
                        return Ok(Progress::Partial);
                    }
                    self.state = State::Done;
                    return Ok(Progress::Done(Response {
                        status,
                        body: std::mem::take(&mut self.body),
                        keep_alive,
                    }));
                }
                State::Done => return Ok(Progress::Partial),
            }
        }
    }

    /// Parses the head if it is complete. Skips 1xx interim responses.
    fn read_head(&mut self) -> Result<bool, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let n = match res.parse(&self.buf[self.pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() - self.pos > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(false);
            }
            Err(e) => return Err(HttpError::BadHead(e.to_string())),
        };
        if n > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let status = res.code.unwrap_or(0);
        let version = res.version.unwrap_or(1);
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = version == 0;
        for h in res.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v =
                    std::str::from_utf8(h.value).ok().map(str::trim).and_then(|s| s.parse::<usize>().ok());
                match (v, length) {
                    (None, _) => return Err(HttpError::BadLength),
                    (Some(v), Some(l)) if v != l => return Err(HttpError::BadLength),
                    (Some(v), _) => length = Some(v),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                let last = v.split(',').map(str::trim).rfind(|s| !s.is_empty());
                match last {
                    Some("chunked") => chunked = true,
                    Some("identity") | None => {}
                    Some(_) => return Err(HttpError::UnsupportedEncoding),
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    close = true;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
        self.pos += n;
        if (100..200).contains(&status) {
            self.compact();
            return Ok(true);
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked
        } else if let Some(l) = length {
            if l > MAX_BODY {
                return Err(HttpError::BodyTooLarge);
            }
            Framing::Length(l)
        } else {
            close = true;
            Framing::ToEof
        };
        self.state = State::Body { status, keep_alive: !close, framing, chunk: Chunk::Size };
        Ok(true)
    }

    fn take_body(&mut self, n: usize) -> Result<(), HttpError> {
        if self.body.len() + n > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        self.body.extend_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(())
    }

    /// Decodes as much chunked framing as is buffered; true when the body is complete.
    fn read_chunks(&mut self, status: u16, keep_alive: bool, mut chunk: Chunk) -> Result<bool, HttpError> {
        let done = loop {
            match chunk {
                Chunk::Size => {
                    let Some(line) = self.line()? else { break false };
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex).map_err(|_| HttpError::BadChunk)?.trim();
                    if hex.is_empty() || hex.len() > 8 {
                        return Err(HttpError::BadChunk);
                    }
                    let size = usize::from_str_radix(hex, 16).map_err(|_| HttpError::BadChunk)?;
                    if self.body.len() + size > MAX_BODY {
                        return Err(HttpError::BodyTooLarge);
                    }
                    chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                }
                Chunk::Data(left) => {
                    let take = left.min(self.buf.len() - self.pos);
                    if take == 0 {
                        break false;
                    }
                    self.take_body(take)?;
                    chunk = if take == left { Chunk::DataEnd } else { Chunk::Data(left - take) };
                }
                Chunk::DataEnd => {
                    let Some(line) = self.line()? else { break false };
                    if !line.is_empty() {
                        return Err(HttpError::BadChunk);
                    }
                    chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line) = self.line()? else { break false };
                    if line.is_empty() {
                        break true;
                    }
                }
            }
        };
        self.state = State::Body { status, keep_alive, framing: Framing::Chunked, chunk };
        Ok(done)
    }

    /// The next CRLF-terminated line (CRLF removed), if complete.
    fn line(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let rest = &self.buf[self.pos..];
        match memchr::memchr(b'\n', rest) {
            Some(i) if i > MAX_CHUNK_LINE => Err(HttpError::BadChunk),
            Some(i) => {
                let line = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]).to_vec();
                self.pos += i + 1;
                Ok(Some(line))
            }
            None if rest.len() > MAX_CHUNK_LINE => Err(HttpError::BadChunk),
            None => Ok(None),
        }
    }

    /// Drops consumed bytes so the buffer holds only what is not parsed yet.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(chunks: &[&[u8]], eof: bool) -> Result<Response, HttpError> {
        let mut r = ResponseReader::new();
        for c in chunks {
            if let Progress::Done(resp) = r.feed(c)? {
                return Ok(resp);
            }
        }
        if eof { r.finish() } else { Err(HttpError::Truncated) }
    }

    fn every_split(input: &[u8], eof: bool) -> Response {
        let whole = read_all(&[input], eof).expect("whole input reads");
        for i in 0..=input.len() {
            assert_eq!(read_all(&[&input[..i], &input[i..]], eof).as_ref(), Ok(&whole), "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read_all(&bytes, eof).as_ref(), Ok(&whole), "byte at a time");
        whole
    }

    const LENGTH: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"status\":1}\n";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"sta\r\n8\r\ntus\":1}\n\r\n0\r\nX-Trailer: y\r\n\r\n";

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/places/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The recorded answers, framed with Content-Length and chunked, split at every position
    /// (every 7th, to keep the run short) and byte by byte.
    #[test]
    fn recorded_answers_every_split() {
        for name in ["legacy-nearbysearch-sydney.json", "new-searchnearby-sydney.json"] {
            let body = fixture(name);
            let mut length =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            length.extend_from_slice(&body);
            let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for piece in body.chunks(1000) {
                chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                chunked.extend_from_slice(piece);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            for input in [&length, &chunked] {
                for i in (0..=input.len()).step_by(7) {
                    let got = read_all(&[&input[..i], &input[i..]], false).unwrap();
                    assert_eq!(got.body, body, "{name} split at {i}");
                }
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(read_all(&bytes, false).unwrap().body, body);
            }
        }
    }

    #[test]
    fn content_length_every_split() {
        let r = every_split(LENGTH, false);
        assert_eq!((r.status, r.body.as_slice(), r.keep_alive), (200, &b"{\"status\":1}\n"[..], true));
    }

    #[test]
    fn chunked_every_split() {
        let r = every_split(CHUNKED, false);
        assert_eq!(r.body, b"{\"status\":1}\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn to_eof_every_split_and_not_reusable() {
        let r = every_split(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nall of it", true);
        assert_eq!(r.body, b"all of it");
        assert!(!r.keep_alive);
    }

    #[test]
    fn connection_close_and_http10_retire() {
        let r =
            read_all(&[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"], false).unwrap();
        assert!(!r.keep_alive);
        let r = read_all(&[b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"], false).unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn interim_100_skipped() {
        let r = every_split(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
            false,
        );
        assert_eq!((r.status, r.body.as_slice()), (403, &b"no"[..]));
    }

    #[test]
    fn truncated_bodies_are_errors() {
        assert_eq!(read_all(&[&LENGTH[..LENGTH.len() - 1]], true), Err(HttpError::Truncated));
        assert_eq!(read_all(&[&CHUNKED[..CHUNKED.len() - 2]], true), Err(HttpError::Truncated));
        assert_eq!(read_all(&[b"HTTP/1.1 200"], true), Err(HttpError::Truncated));
    }

    #[test]
    fn limits_enforced() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_HEAD {
            head.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(read_all(&[&head], false), Err(HttpError::HeadTooLarge | HttpError::BadHead(_))));
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(read_all(&[big.as_bytes()], false), Err(HttpError::BodyTooLarge));
        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let mut err = None;
        for _ in 0..(MAX_BODY / 4096 + 2) {
            let mut c = b"1000\r\n".to_vec();
            c.extend_from_slice(&[b'a'; 4096]);
            c.extend_from_slice(b"\r\n");
            if let Err(e) = r.feed(&c) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(HttpError::BodyTooLarge));
        let mut r = ResponseReader::new();
        assert!(r.feed(b"HTTP/1.1 200 OK\r\n\r\n").is_ok());
        assert_eq!(r.feed(&vec![b'z'; MAX_BODY + 1]), Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn malformed_framing_rejected() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n",
            b"HTXP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(read_all(&[bad], false).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn no_body_statuses() {
        let r = read_all(&[b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"], false).unwrap();
        assert!(r.body.is_empty());
    }
}
