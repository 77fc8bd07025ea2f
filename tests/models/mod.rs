//! Reference models shared by the property tests (`tests/props.rs`) and the fuzz targets
//! (`fuzz/src/lib.rs`, which includes this file by path): what the parser, the framing and the
//! HTTP response reader must do, written independently of the code under test.

// Each includer uses part of it.
#![allow(dead_code)]

use herd::places::response::{HttpError, Progress, Response, ResponseReader};
use herd::proto::{Frame, parse_line};

/// PROTOCOL.md's white space, written out here independently of `herd::proto::is_space`.
pub const SPACES: [u8; 6] = [b' ', b'\t', b'\r', b'\n', b'\x0b', b'\x0c'];

/// Fields split on exactly the six bytes of PROTOCOL.md.
pub fn model_fields(line: &[u8]) -> Vec<&[u8]> {
    line.split(|b| SPACES.contains(b)).filter(|f| !f.is_empty()).collect()
}

/// A parse result in owned, comparable form (a `Command` borrows its line).
pub fn outcome(line: &[u8]) -> String {
    format!("{:?}", parse_line(line))
}

/// The exact value of a timestamp's text in nanoseconds, decoded here without `Timestamp`
/// (only called on text the parser accepted).
pub fn timestamp_nanos(text: &[u8]) -> i128 {
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let num = |d: &[u8]| d.iter().fold(0i128, |n, &c| n * 10 + i128::from(c - b'0'));
    let mut frac9 = frac.to_vec();
    frac9.resize(9, b'0');
    num(int) * 1_000_000_000 + num(&frac9)
}

/// A frame in owned form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Line(Vec<u8>),
    Overlong(Vec<u8>),
}

impl From<Frame<'_>> for Owned {
    fn from(f: Frame<'_>) -> Self {
        match f {
            Frame::Line(l) => Self::Line(l.to_vec()),
            Frame::Overlong(p) => Self::Overlong(p.to_vec()),
        }
    }
}

/// What the framing must deliver for `stream`, written independently of `LineReader`: lines up
/// to the first over-long one, which is reported by its first `max` bytes and ends the stream;
/// at end of stream (`eof`), a final unterminated line.
pub fn model_frames(stream: &[u8], max: usize, eof: bool) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        if i > max {
            out.push(Owned::Overlong(rest[..max].to_vec()));
            return out;
        }
        out.push(Owned::Line(rest[..i].to_vec()));
        rest = &rest[i + 1..];
    }
    if rest.len() > max {
        out.push(Owned::Overlong(rest[..max].to_vec()));
    } else if eof && !rest.is_empty() {
        out.push(Owned::Line(rest.to_vec()));
    }
    out
}

/// How reading an HTTP response ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(Response),
    /// All bytes fed, no end of stream, response not complete.
    Partial,
    Failed(HttpError),
}

/// Feeds the chunks until the response completes or fails; then, if `eof`, ends the stream.
pub fn read(chunks: &[&[u8]], eof: bool) -> Outcome {
    let mut reader = ResponseReader::new();
    for chunk in chunks {
        match reader.feed(chunk) {
            Ok(Progress::Done(r)) => return Outcome::Done(r),
            Ok(Progress::Partial) => {}
            Err(e) => return Outcome::Failed(e),
        }
    }
    if !eof {
        return Outcome::Partial;
    }
    match reader.finish() {
        Ok(r) => Outcome::Done(r),
        Err(e) => Outcome::Failed(e),
    }
}

/// Split-independence for arbitrary bytes. One difference is allowed: a head longer than
/// `MAX_HEAD` that is also malformed may be reported as either, depending on which is seen first.
pub fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    use HttpError::{BadHead, HeadTooLarge};
    match (a, b) {
        (Outcome::Failed(HeadTooLarge), Outcome::Failed(BadHead(_)))
        | (Outcome::Failed(BadHead(_)), Outcome::Failed(HeadTooLarge)) => true,
        _ => a == b,
    }
}
