//! The invariants the fuzz targets check: the properties of `tests/props.rs`, with inputs from
//! libFuzzer instead of proptest. Every check panics on a violation, which libFuzzer reports as a
//! crash and saves under `fuzz/artifacts/<target>/`.
//!
//! The framing and HTTP targets read their first bytes as parameters (see [`Split`]): which cut
//! points to split the rest at, and a few flags. The fuzzer mutates those bytes like any others,
//! so it explores splits and inputs together.

use std::ops::ControlFlow;

#[path = "../../tests/models/mod.rs"]
mod models;

use herd::places::response::{MAX_BODY, Response};
use herd::proto::{Command, Difference, Frame, LineReader, fields, parse_line, write_at_line};
use models::{Outcome, Owned, SPACES, model_fields, model_frames, outcome, same_outcome, timestamp_nanos};

/// Byte-at-a-time feeding of the HTTP reader costs a head re-parse per byte; above this length
/// only the chosen split and the whole input are compared.
const ONE_BY_ONE_MAX: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------------

/// An input read as `params` (a fixed number of bytes), a cut count `n` (one byte, mod 16), `n`
/// little-endian u16 cut points, then the payload. Cut points are taken modulo the payload length
/// plus one, sorted; repeats give empty chunks, which are a split too.
pub struct Split<'a> {
    /// The leading parameter bytes.
    pub params: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    raw: Vec<u16>,
}

impl<'a> Split<'a> {
    /// `None` when the input is too short for its own header.
    pub fn read(data: &'a [u8], params: usize) -> Option<Self> {
        let (params, rest) = data.split_at_checked(params)?;
        let (&n, rest) = rest.split_first()?;
        let (raw, payload) = rest.split_at_checked(usize::from(n % 16) * 2)?;
        let raw = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Some(Self { params, payload, raw })
    }

    /// The payload in the chosen chunks.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        self.cut(self.payload)
    }

    /// Any bytes cut at the chosen points (taken modulo their length plus one).
    pub fn cut<'b>(&self, data: &'b [u8]) -> Vec<&'b [u8]> {
        let mut at: Vec<usize> = self.raw.iter().map(|&r| usize::from(r) % (data.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::with_capacity(at.len() + 1);
        let mut start = 0;
        for a in at {
            chunks.push(&data[start..a]);
            start = a;
        }
        chunks.push(&data[start..]);
        chunks
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// Any line: no panic; the fields are the six-byte split; the result depends only on the fields
/// (any white-space byte may stand for any other, runs for single spaces); a parsed command's
/// parts are those fields; an IAMAT's reply and an AT line re-format and re-parse to the same
/// fields.
pub fn check_parse_line(line: &[u8]) {
    let result = parse_line(line);
    let model = model_fields(line);
    assert_eq!(fields(line).collect::<Vec<_>>(), model, "fields");
    assert_eq!(result == Ok(None), model.is_empty(), "only blank lines are ignored");
    let canonical = model.join(&b' ');
    assert_eq!(outcome(line), outcome(&canonical), "single spaces between fields");
    let rotated: Vec<u8> = line
        .iter()
        .enumerate()
        .map(|(i, &b)| match SPACES.iter().position(|&s| s == b) {
            Some(k) => SPACES[(k + i + 1) % SPACES.len()],
            None => b,
        })
        .collect();
    assert_eq!(outcome(line), outcome(&rotated), "any white-space byte for any other");

    match result {
        Ok(Some(Command::IAmAt { client, location_raw, time_raw, time, .. })) => {
            assert_eq!(model, [&b"IAMAT"[..], client, location_raw, time_raw]);
            assert_eq!(time.as_nanos(), timestamp_nanos(time_raw), "timestamp value");
            for diff in [0, -1, 1, i128::from(i64::MAX), -time.as_nanos(), time.as_nanos()] {
                let mut out = Vec::new();
                let at =
                    write_at_line(&mut out, b"S", Difference::Nanos(diff), client, location_raw, time_raw);
                assert_eq!(&out[at..at + client.len()], client);
                match parse_line(&out) {
                    Ok(Some(Command::At {
                        server,
                        client: c,
                        location_raw: l,
                        time_raw: t,
                        time: tm,
                        ..
                    })) => {
                        assert_eq!((server, c, l, t, tm), (&b"S"[..], client, location_raw, time_raw, time));
                    }
                    other => panic!("the reply to an IAMAT does not parse back: {other:?}"),
                }
            }
        }
        Ok(Some(Command::At { server, difference, client, location_raw, time_raw, time })) => {
            assert_eq!(model, [&b"AT"[..], server, difference, client, location_raw, time_raw]);
            assert_eq!(time.as_nanos(), timestamp_nanos(time_raw), "timestamp value");
            let mut out = Vec::new();
            write_at_line(&mut out, server, Difference::Raw(difference), client, location_raw, time_raw);
            assert_eq!(out, canonical, "a flooded AT line is the received one, single-spaced");
        }
        Ok(Some(Command::WhatsAt { client, radius_km, bound })) => {
            assert_eq!(model.len(), 4);
            assert_eq!((model[0], model[1]), (&b"WHATSAT"[..], client));
            assert!(radius_km > 0.0 && radius_km <= 50.0, "radius {radius_km}");
            assert!((1..=20).contains(&bound), "bound {bound}");
        }
        Ok(None) | Err(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

fn frames(max: usize, chunks: &[&[u8]], eof: bool) -> Vec<Owned> {
    let mut reader = LineReader::new(max);
    let mut got = Vec::new();
    for chunk in chunks {
        let _ = reader.feed(chunk, |f| {
            got.push(Owned::from(f));
            ControlFlow::Continue(())
        });
        assert!(reader.buffered() <= max, "{} bytes buffered, limit {max}", reader.buffered());
    }
    if eof {
        let _ = reader.finish(|f| {
            got.push(Owned::from(f));
            ControlFlow::Continue(())
        });
    }
    got
}

/// Parameters: two bytes of line limit (mod 1024), a flags byte (bit 0: end of stream; bit 1:
/// feed while paused), a pause pattern byte (bit `k % 8` set: pause after the k-th frame).
/// Checks: the chosen split, the whole input and byte-at-a-time feeding all deliver the model's
/// frames; at most the limit is buffered; pausing and resuming loses and reorders nothing.
pub fn check_framing(data: &[u8]) {
    let Some(split) = Split::read(data, 4) else { return };
    let p = split.params;
    let max = usize::from(u16::from_le_bytes([p[0], p[1]]) % 1024);
    let (eof, feed_while_paused, pattern) = (p[2] & 1 == 1, p[2] & 2 == 2, p[3]);
    let stream = split.payload;
    let chunks = split.chunks();

    let want = model_frames(stream, max, eof);
    assert_eq!(frames(max, &[stream], eof), want, "whole");
    assert_eq!(frames(max, &chunks, eof), want, "split");
    assert_eq!(frames(max, &stream.chunks(1).collect::<Vec<_>>(), eof), want, "byte by byte");

    let want = model_frames(stream, max, true);
    let mut reader = LineReader::new(max);
    let mut got = Vec::new();
    let mut on = |f: Frame<'_>, delivered: &mut usize| {
        got.push(Owned::from(f));
        *delivered = got.len();
        if pattern >> (got.len() % 8) & 1 == 1 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    // A resume that pauses again has delivered a frame, so more frames than the model's mean
    // lines were handed out twice (and, unchecked, an endless loop).
    let mut delivered = 0;
    for chunk in &chunks {
        while !feed_while_paused && reader.is_paused() {
            let _ = reader.resume(|f| on(f, &mut delivered));
            assert!(delivered <= want.len(), "more frames than lines while pausing");
        }
        let _ = reader.feed(chunk, |f| on(f, &mut delivered));
    }
    while reader.is_paused() {
        let _ = reader.resume(|f| on(f, &mut delivered));
        assert!(delivered <= want.len(), "more frames than lines while pausing");
    }
    assert!(reader.buffered() <= max);
    let _ = reader.finish(|f| on(f, &mut delivered));
    assert_eq!(got, want, "pausing");
}

// ---------------------------------------------------------------------------------------------
// HTTP response reader
// ---------------------------------------------------------------------------------------------

/// [`models::read`], checking that a body never exceeds `MAX_BODY`.
fn read(chunks: &[&[u8]], eof: bool) -> Outcome {
    let outcome = models::read(chunks, eof);
    if let Outcome::Done(r) = &outcome {
        assert!(r.body.len() <= MAX_BODY);
    }
    outcome
}

/// Parameters: a flags byte. Bit 0: end of stream after the bytes. Bits 1-2: 0 reads the payload
/// as it is; 1, 2 and 3 build a valid response around the payload as its body, framed with
/// `Content-Length`, chunked (chunks end at the cut points) or to end of stream. For those, bit 3:
/// bare LF line ends; bit 4: HTTP/1.0; bit 5: `Connection: close`; bit 6: a `100 Continue` first;
/// bit 7: upper-case hex sizes, chunk extensions and a trailer.
///
/// Checks, for any bytes: no panic, a body within `MAX_BODY`, and the same outcome for the chosen
/// split, byte-at-a-time feeding (short inputs) and the whole input. For a built response: the
/// response it encodes (status, body, reuse), in all three.
pub fn check_http_response(data: &[u8]) {
    let Some(split) = Split::read(data, 1) else { return };
    let flags = split.params[0];
    match flags >> 1 & 3 {
        0 => check_any_response(&split, flags & 1 == 1),
        mode => check_built_response(&split, mode, flags),
    }
}

fn check_any_response(split: &Split<'_>, eof: bool) {
    let whole = read(&[split.payload], eof);
    let got = read(&split.chunks(), eof);
    assert!(same_outcome(&whole, &got), "split: {got:?}, whole: {whole:?}");
    if split.payload.len() <= ONE_BY_ONE_MAX {
        let got = read(&split.payload.chunks(1).collect::<Vec<_>>(), eof);
        assert!(same_outcome(&whole, &got), "byte by byte: {got:?}, whole: {whole:?}");
    }
}

fn check_built_response(split: &Split<'_>, mode: u8, flags: u8) {
    let body = split.payload;
    let nl: &[u8] = if flags & 8 != 0 { b"\n" } else { b"\r\n" };
    let (http10, close, fancy) = (flags & 16 != 0, flags & 32 != 0, flags & 128 != 0);
    let version: &[u8] = if http10 { b"HTTP/1.0" } else { b"HTTP/1.1" };
    let mut bytes = Vec::new();
    let mut line = |parts: &[&[u8]]| {
        for p in parts {
            bytes.extend_from_slice(p);
        }
        bytes.extend_from_slice(nl);
    };
    if flags & 64 != 0 {
        line(&[version, b" 100 Continue"]);
        line(&[]);
    }
    line(&[version, b" 200 OK"]);
    if close {
        line(&[b"Connection: close"]);
    }
    match mode {
        1 => {
            line(&[b"Content-Length: ", body.len().to_string().as_bytes()]);
            line(&[]);
            bytes.extend_from_slice(body);
        }
        2 => {
            line(&[b"Transfer-Encoding: chunked"]);
            line(&[]);
            let ext: &[u8] = if fancy { b";ext=1" } else { b"" };
            for piece in split.cut(body).into_iter().filter(|p| !p.is_empty()) {
                let size = if fancy { format!("{:X}", piece.len()) } else { format!("{:x}", piece.len()) };
                line(&[size.as_bytes(), ext]);
                line(&[piece]);
            }
            line(&[b"0", ext]);
            if fancy {
                line(&[b"X-Trailer: y"]);
            }
            line(&[]);
        }
        _ => {
            line(&[]);
            bytes.extend_from_slice(body);
        }
    }
    let to_eof = mode == 3;
    let want = Outcome::Done(Response {
        status: 200,
        body: body.to_vec(),
        keep_alive: !(http10 || close || to_eof),
    });
    assert_eq!(read(&[&bytes], to_eof), want, "whole");
    assert_eq!(read(&split.cut(&bytes), to_eof), want, "split");
    if bytes.len() <= ONE_BY_ONE_MAX {
        assert_eq!(read(&bytes.chunks(1).collect::<Vec<_>>(), to_eof), want, "byte by byte");
    }
}
