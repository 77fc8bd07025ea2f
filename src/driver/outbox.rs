//! A connection's queued replies, and how the buffer is kept between writes: one policy for both
//! drivers, so the tokio twin measures the runtime and not a different buffering.
//!
//! Replies are appended at the end and written from a cursor; the written prefix is dropped only
//! when it is more than half the buffer (so a slow reader does not cost a copy per write), and
//! an emptied buffer keeps its capacity up to [`KEEP_OUTPUT`] (so the common case reuses it
//! without allocating, and a burst of large replies does not pin memory on an idle connection).

use std::io;

use super::write_some;
use crate::limits::KEEP_OUTPUT;

/// Reply bytes queued for one connection, and how far they are written.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
}

impl Outbox {
    /// The buffer to append replies to (what [`super::Feed`] writes into).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Appends `bytes` (a WHATSAT's answer).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes with `write` (one non-blocking write call) until everything is written or it
    /// would block, then tidies the buffer. `Ok(true)` if it would block with bytes left; `Err`
    /// says why the connection failed.
    pub fn write_with(&mut self, mut write: impl FnMut(&[u8]) -> io::Result<usize>) -> Result<bool, String> {
        let mut blocked = false;
        while self.pending() > 0 {
            match write_some(&mut write, &self.buf[self.pos..])? {
                Some(n) => self.pos += n,
                None => {
                    blocked = true;
                    break;
                }
            }
        }
        if self.pending() == 0 {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > KEEP_OUTPUT {
                self.buf = Vec::new();
            }
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `take` bytes per call, then would block after `calls` calls.
    fn writer(take: usize, calls: usize, sink: &mut Vec<u8>) -> impl FnMut(&[u8]) -> io::Result<usize> + '_ {
        let mut left = calls;
        move |data| {
            if left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            left -= 1;
            let n = data.len().min(take);
            sink.extend_from_slice(&data[..n]);
            Ok(n)
        }
    }

    #[test]
    fn everything_written_empties_and_keeps_a_small_buffer() {
        let mut out = Outbox::default();
        out.push(b"hello\n");
        let cap = out.buf().capacity();
        let mut sink = Vec::new();
        assert_eq!(out.write_with(writer(100, 10, &mut sink)), Ok(false));
        assert_eq!(sink, b"hello\n");
        assert_eq!(out.pending(), 0);
        assert_eq!(out.buf().capacity(), cap, "kept for reuse");
    }

    #[test]
    fn everything_written_releases_a_large_buffer() {
        let mut out = Outbox::default();
        out.push(&vec![b'x'; KEEP_OUTPUT + 1]);
        let mut sink = Vec::new();
        assert_eq!(out.write_with(writer(usize::MAX, 10, &mut sink)), Ok(false));
        assert_eq!(out.buf().capacity(), 0);
    }

    #[test]
    fn blocked_keeps_the_rest_in_order() {
        let mut out = Outbox::default();
        out.push(b"0123456789");
        let mut sink = Vec::new();
        assert_eq!(out.write_with(writer(3, 1, &mut sink)), Ok(true));
        assert_eq!(out.pending(), 7);
        out.push(b"ab");
        assert_eq!(out.write_with(writer(100, 1, &mut sink)), Ok(false));
        assert_eq!(sink, b"0123456789ab");
    }

    #[test]
    fn blocked_past_half_drops_the_written_prefix() {
        let mut out = Outbox::default();
        out.push(b"0123456789");
        let mut sink = Vec::new();
        assert_eq!(out.write_with(writer(6, 1, &mut sink)), Ok(true));
        assert_eq!(out.buf().as_slice(), b"6789");
        assert_eq!(out.pending(), 4);
    }

    #[test]
    fn failed_write_says_why() {
        let mut out = Outbox::default();
        out.push(b"x");
        assert_eq!(out.write_with(|_| Ok(0)), Err("write returned 0".into()));
        assert_eq!(
            out.write_with(|_| Err(io::ErrorKind::BrokenPipe.into())),
            Err("write error: broken pipe".into())
        );
    }
}
