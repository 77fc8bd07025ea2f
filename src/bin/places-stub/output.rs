//! What the stub prints: one flushed line per event on stdout (tests read it), warnings on
//! stderr, and request text made printable so a request cannot forge a line.

use std::io::{self, Write};

/// One line on stdout, flushed at once (tests read stdout from a file). Never panics.
pub(crate) fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One line on stderr. Never panics.
pub(crate) fn warn(line: &str) {
    let _ = writeln!(io::stderr().lock(), "places-stub: {line}");
}

/// `s` with anything not printable ASCII escaped, so a request cannot forge log lines.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_ascii_graphic() { vec![c] } else { c.escape_default().collect() })
        .collect()
}
