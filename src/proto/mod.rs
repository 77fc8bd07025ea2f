//! The wire format of PROTOCOL.md: framing, parsing and formatting. Pure functions over bytes;
//! nothing here touches a socket or a clock.
//!
//! Fields are bytes, not text: a client id may be `\xff` or `😂` and is echoed unchanged. White
//! space is exactly the six bytes of [`is_space`], which is neither `u8::is_ascii_whitespace`
//! (it lacks `\x0b`) nor `char::is_whitespace` (it adds Unicode spaces).

mod format;
mod lines;
mod parse;

pub use format::{Difference, write_at_line, write_difference, write_invalid};
pub use lines::{Frame, LineReader};
pub use parse::{Command, Invalid, Location, Timestamp, fields, parse_line};

/// The protocol's white space: space, `\t`, `\n`, `\x0b`, `\x0c`, `\r`.
#[inline]
pub const fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// The longest echo of an over-long line in its `? ` reply: enough to recognise the line, small
/// enough that a hostile line cannot make the reply itself large.
pub const OVERLONG_ECHO: usize = 128;
