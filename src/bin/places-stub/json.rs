//! JSON laid out as each API lays it out: the New API's two-space indent, the legacy API's
//! three-space indent and `" : "`.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{Formatter, PrettyFormatter};

/// JSON as the New API lays it out (two-space indent), with a final newline.
pub(crate) fn pretty_new(v: &Value) -> Vec<u8> {
    // Serialising a `Value` into a Vec cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// serde_json's pretty layout with Google's legacy touches: three-space indent and `" : "`.
struct LegacyFormatter<'a>(PrettyFormatter<'a>);

impl Formatter for LegacyFormatter<'_> {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b" : ")
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// JSON as the legacy API lays it out, with a final newline.
pub(crate) fn pretty_legacy(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        LegacyFormatter(PrettyFormatter::with_indent(b"   ")),
    );
    // Serialising a `Value` into a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    out.push(b'\n');
    out
}
