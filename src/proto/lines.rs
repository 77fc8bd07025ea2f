//! Framing: turns a byte stream, delivered in any split, into lines.
//!
//! Complete lines inside a chunk are handed out as slices of that chunk (no copy); only a partial
//! line at the end of a chunk is kept, in a buffer that is freed again once it empties, so an idle
//! connection holds no framing memory. Bytes are scanned once: the kept tail is never rescanned.

use std::ops::ControlFlow;

/// What the reader hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One line, without its `\n`.
    Line(&'a [u8]),
    /// A line grew past the limit before its `\n`: its first bytes (at most the limit). The
    /// reader is finished after this; the connection should answer and close.
    Overlong(&'a [u8]),
}

/// Splits a byte stream into `\n`-terminated lines of at most `max_line` bytes.
#[derive(Debug)]
pub struct LineReader {
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// Longest accepted line, terminator excluded.
    max_line: usize,
    /// Set once an over-long line was reported; all later input is ignored.
    failed: bool,
}

/// Capacity above which an emptied partial-line buffer is released rather than kept.
const KEEP_CAPACITY: usize = 256;

impl LineReader {
    /// A reader that accepts lines of up to `max_line` bytes (terminator excluded).
    pub fn new(max_line: usize) -> Self {
        Self { partial: Vec::new(), max_line, failed: false }
    }

    /// Bytes held for a line not yet complete.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `data` and calls `on_frame` for every complete line, in order.
    ///
    /// If `on_frame` breaks, the rest of `data` is discarded and the reader is finished: the
    /// caller is closing the stream. Returns whether it broke.
    pub fn feed<F>(&mut self, mut data: &[u8], mut on_frame: F) -> ControlFlow<()>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        if self.failed {
            return ControlFlow::Break(());
        }
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) if self.partial.len() + i <= self.max_line => {
                    self.partial.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    let flow = on_frame(Frame::Line(&self.partial));
                    self.release();
                    flow?;
                }
                _ => {
                    let room = self.max_line + 1 - self.partial.len().min(self.max_line + 1);
                    self.partial.extend_from_slice(&data[..data.len().min(room)]);
                    if self.partial.len() > self.max_line {
                        return self.fail(&mut on_frame);
                    }
                    return ControlFlow::Continue(());
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            if i > self.max_line {
                self.partial.extend_from_slice(&data[..self.max_line]);
                return self.fail(&mut on_frame);
            }
            on_frame(Frame::Line(&data[..i]))?;
            data = &data[i + 1..];
        }
        if data.len() > self.max_line {
            self.partial.extend_from_slice(&data[..self.max_line]);
            return self.fail(&mut on_frame);
        }
        self.partial.extend_from_slice(data);
        ControlFlow::Continue(())
    }

    /// End of stream: a final line without `\n` is still a line (PROTOCOL.md).
    pub fn finish<F>(&mut self, on_frame: F) -> ControlFlow<()>
    where
        F: FnOnce(Frame<'_>) -> ControlFlow<()>,
    {
        if self.failed || self.partial.is_empty() {
            return ControlFlow::Continue(());
        }
        let flow = on_frame(Frame::Line(&self.partial));
        self.release();
        flow
    }

    fn fail<F>(&mut self, on_frame: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        self.failed = true;
        let keep = self.partial.len().min(self.max_line);
        let _ = on_frame(Frame::Overlong(&self.partial[..keep]));
        self.partial = Vec::new();
        ControlFlow::Break(())
    }

    fn release(&mut self) {
        self.partial.clear();
        if self.partial.capacity() > KEEP_CAPACITY {
            self.partial = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(reader: &mut LineReader, chunks: &[&[u8]], eof: bool) -> Vec<Result<Vec<u8>, Vec<u8>>> {
        let mut got = Vec::new();
        let mut push = |f: Frame<'_>| {
            got.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::Overlong(p) => Err(p.to_vec()),
            });
            ControlFlow::Continue(())
        };
        for c in chunks {
            if reader.feed(c, &mut push).is_break() {
                return got;
            }
        }
        if eof {
            let _ = reader.finish(&mut push);
        }
        got
    }

    #[test]
    fn lines_every_split_same_lines() {
        let input: &[u8] = b"IAMAT a +1.0-2.0 3\n\nWHATSAT a 1 2\r\nlast without newline";
        let want = collect(&mut LineReader::new(64), &[input], true);
        assert_eq!(want.len(), 4);
        assert_eq!(want[3], Ok(b"last without newline".to_vec()));
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = collect(&mut LineReader::new(64), &[&input[..i], &input[i..j], &input[j..]], true);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn lines_one_byte_at_a_time_same_lines() {
        let input: &[u8] = b"a\nbb\nccc\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        let got = collect(&mut LineReader::new(8), &chunks, true);
        assert_eq!(got, vec![Ok(b"a".to_vec()), Ok(b"bb".to_vec()), Ok(b"ccc".to_vec())]);
    }

    #[test]
    fn lines_exactly_max_accepted_one_more_overlong() {
        let got = collect(&mut LineReader::new(4), &[b"abcd\nabcde\nnext\n"], true);
        assert_eq!(got, vec![Ok(b"abcd".to_vec()), Err(b"abcd".to_vec())]);
    }

    #[test]
    fn overlong_every_split_reported_once_then_silent() {
        let input: &[u8] = b"ok\n0123456789abcdef\nnever\n";
        for i in 0..=input.len() {
            let got = collect(&mut LineReader::new(8), &[&input[..i], &input[i..]], true);
            assert_eq!(got, vec![Ok(b"ok".to_vec()), Err(b"01234567".to_vec())], "split at {i}");
        }
    }

    #[test]
    fn overlong_without_newline_bounded_memory() {
        let mut r = LineReader::new(16);
        let chunk = [b'x'; 1000];
        let got = collect(&mut r, &[&chunk, &chunk], false);
        assert_eq!(got, vec![Err(vec![b'x'; 16])]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn partial_kept_between_feeds_released_after_line() {
        let mut r = LineReader::new(4096);
        let big = vec![b'y'; 1000];
        let _ = collect(&mut r, &[&big], false);
        assert_eq!(r.buffered(), 1000);
        let got = collect(&mut r, &[b"\n"], false);
        assert_eq!(got.len(), 1);
        assert_eq!(r.partial.capacity(), 0, "large partial buffer is released");
    }

    #[test]
    fn finish_empty_stream_no_line() {
        assert!(collect(&mut LineReader::new(8), &[b"a\n"], true).len() == 1);
        assert!(collect(&mut LineReader::new(8), &[], true).is_empty());
    }

    #[test]
    fn break_stops_delivery() {
        let mut r = LineReader::new(8);
        let mut seen = 0;
        let flow = r.feed(b"a\nb\nc\n", |_| {
            seen += 1;
            if seen == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert!(flow.is_break());
        assert_eq!(seen, 2);
    }
}
