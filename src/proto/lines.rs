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
    /// Set when a line's handler paused the stream (see [`feed`](Self::feed)).
    paused: bool,
    /// Bytes received after the line that paused the stream, handed out by
    /// [`resume`](Self::resume) from `backlog_at` on. At most one read's worth: the caller stops
    /// reading while paused. Resuming moves the position instead of copying the rest, so pausing
    /// on every line of a chunk costs linear time.
    backlog: Vec<u8>,
    backlog_at: usize,
}

/// Capacity above which an emptied partial-line buffer is released rather than kept.
const KEEP_CAPACITY: usize = 256;

impl LineReader {
    /// A reader that accepts lines of up to `max_line` bytes (terminator excluded).
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            max_line,
            failed: false,
            paused: false,
            backlog: Vec::new(),
            backlog_at: 0,
        }
    }

    /// Bytes held for a line not yet complete, and for lines held back by a pause.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.backlog.len() - self.backlog_at
    }

    /// Whether lines are held back by a pause.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Feeds `data` and calls `on_frame` for every complete line, in order.
    ///
    /// If `on_frame` breaks after a [`Frame::Line`], the stream is paused: the rest of `data` is
    /// kept and handed out by [`resume`](Self::resume), and the caller should not feed more
    /// until then. A break after [`Frame::Overlong`] ends the stream. Returns whether it broke.
    pub fn feed<F>(&mut self, data: &[u8], mut on_frame: F) -> ControlFlow<()>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        if self.failed {
            return ControlFlow::Break(());
        }
        if self.paused {
            // Fed while paused: keep the bytes in order behind the held-back ones.
            self.backlog.extend_from_slice(data);
            return ControlFlow::Break(());
        }
        let mut rest = data;
        let flow = self.split(&mut rest, &mut on_frame);
        if flow.is_break() && !self.failed {
            self.paused = true;
            self.backlog.extend_from_slice(rest);
        }
        flow
    }

    /// Hands out the lines held back by a pause, as [`feed`](Self::feed) would have.
    pub fn resume<F>(&mut self, on_frame: F) -> ControlFlow<()>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        let mut on_frame = on_frame;
        self.paused = false;
        let held = std::mem::take(&mut self.backlog);
        let mut rest = &held[self.backlog_at..];
        let flow = self.split(&mut rest, &mut on_frame);
        if flow.is_break() && !self.failed {
            self.paused = true;
            self.backlog_at = held.len() - rest.len();
            self.backlog = held;
        } else {
            self.backlog_at = 0;
            if held.capacity() <= KEEP_CAPACITY {
                self.backlog = held;
                self.backlog.clear();
            }
        }
        flow
    }

    /// The splitting itself; on a break, `data` is left at the first byte not consumed.
    fn split<'a, F>(&mut self, data: &mut &'a [u8], on_frame: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Frame<'_>) -> ControlFlow<()>,
    {
        let d: &'a [u8] = data;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', d) {
                Some(i) if self.partial.len() + i <= self.max_line => {
                    self.partial.extend_from_slice(&d[..i]);
                    *data = &d[i + 1..];
                    let flow = on_frame(Frame::Line(&self.partial));
                    self.release();
                    flow?;
                }
                _ => {
                    let room = self.max_line + 1 - self.partial.len().min(self.max_line + 1);
                    self.partial.extend_from_slice(&d[..d.len().min(room)]);
                    if self.partial.len() > self.max_line {
                        return self.fail(on_frame);
                    }
                    *data = &[];
                    return ControlFlow::Continue(());
                }
            }
        }
        let mut d: &'a [u8] = data;
        while let Some(i) = memchr::memchr(b'\n', d) {
            if i > self.max_line {
                self.partial.extend_from_slice(&d[..self.max_line]);
                return self.fail(on_frame);
            }
            let line = &d[..i];
            d = &d[i + 1..];
            *data = d;
            on_frame(Frame::Line(line))?;
        }
        if d.len() > self.max_line {
            self.partial.extend_from_slice(&d[..self.max_line]);
            return self.fail(on_frame);
        }
        self.partial.extend_from_slice(d);
        *data = &[];
        ControlFlow::Continue(())
    }

    /// End of stream: a final line without `\n` is still a line (PROTOCOL.md). Call it only
    /// when not paused. If `on_frame` breaks (a WHATSAT waiting for its answer), the reader is
    /// paused like [`feed`](Self::feed) leaves it, with nothing held back: the driver then knows
    /// a reply is still to come before the connection may close, and [`resume`](Self::resume)
    /// ends the pause.
    pub fn finish<F>(&mut self, on_frame: F) -> ControlFlow<()>
    where
        F: FnOnce(Frame<'_>) -> ControlFlow<()>,
    {
        if self.failed || self.partial.is_empty() || self.paused {
            return ControlFlow::Continue(());
        }
        let flow = on_frame(Frame::Line(&self.partial));
        self.release();
        if flow.is_break() {
            self.paused = true;
        }
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
    fn finish_that_breaks_leaves_the_reader_paused_until_resumed() {
        let mut r = LineReader::new(100);
        let _ = r.feed(b"WHATSAT k 1 1", |_| ControlFlow::Continue(()));
        let mut seen = Vec::new();
        assert!(
            r.finish(|f| {
                if let Frame::Line(l) = f {
                    seen.push(l.to_vec());
                }
                ControlFlow::Break(())
            })
            .is_break()
        );
        assert_eq!(seen, [b"WHATSAT k 1 1".to_vec()]);
        assert!(r.is_paused(), "a reply is still to come");
        assert!(r.resume(|_| panic!("nothing was held back")).is_continue());
        assert!(!r.is_paused());
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
    fn pause_every_split_resumes_same_lines_in_order() {
        let input: &[u8] = b"a\nPAUSE\nb\nPAUSE\nc\nlast";
        for i in 0..=input.len() {
            let mut r = LineReader::new(16);
            let mut got = Vec::new();
            let mut on = |f: Frame<'_>| {
                let Frame::Line(l) = f else { panic!("overlong") };
                got.push(l.to_vec());
                if l == b"PAUSE" { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            };
            for chunk in [&input[..i], &input[i..]] {
                let _ = r.feed(chunk, &mut on);
            }
            while r.is_paused() {
                let _ = r.resume(&mut on);
            }
            let _ = r.finish(&mut on);
            let want: Vec<&[u8]> = vec![b"a", b"PAUSE", b"b", b"PAUSE", b"c", b"last"];
            assert_eq!(got, want, "split at {i}");
        }
    }

    #[test]
    fn pause_on_every_line_keeps_one_backlog_buffer() {
        let input: Vec<u8> = b"line\n".repeat(10_000);
        let mut r = LineReader::new(16);
        let mut seen = 0;
        let _ = r.feed(&input, |_| ControlFlow::Break(()));
        let cap = r.backlog.capacity();
        while r.is_paused() {
            seen += 1;
            assert_eq!(r.buffered(), input.len() - 5 * seen);
            let _ = r.resume(|_| ControlFlow::Break(()));
            assert!(r.backlog.capacity() == cap || !r.is_paused(), "the backlog is never copied");
        }
        assert_eq!(seen, 10_000);
    }

    #[test]
    fn pause_on_last_line_of_chunk_still_paused() {
        let mut r = LineReader::new(16);
        assert!(r.feed(b"x\n", |_| ControlFlow::Break(())).is_break());
        assert!(r.is_paused());
        assert!(r.finish(|_| panic!("no final line while paused")).is_continue());
        assert!(r.resume(|_| panic!("nothing held")).is_continue());
        assert!(!r.is_paused());
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
