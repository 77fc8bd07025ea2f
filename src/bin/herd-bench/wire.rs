//! Requests and replies as bytes: writing each request, finding where its reply ends in the
//! input, and checking the reply against what was sent. Pure functions, no sockets.
//!
//! Written apart from the library's `proto` module on purpose: a checker that reused the server's
//! own formatting and parsing would agree with their bugs.

/// Where every client says it is.
pub const COORDS: &[u8] = b"+34.068930-118.445127";

/// Longest reply accepted; a longer one (or endless bytes without its terminator) is an error and
/// ends the connection, so the input buffer stays bounded. A WHATSAT reply of 20 places is a few
/// tens of kilobytes.
pub const MAX_REPLY: usize = 1 << 20;

const NANOS: u64 = 1_000_000_000;

/// One request, with what its reply must echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `IAMAT <id> <COORDS> <ts>`.
    Iamat {
        /// The timestamp sent, in nanoseconds.
        ts: u64,
    },
    /// `WHATSAT <id> <radius> <bound>`, answered with the AT line of the IAMAT with `ts`.
    Whatsat {
        /// The timestamp of the client's latest IAMAT before this request.
        ts: u64,
    },
    /// Redis `SET <id> <COORDS>_<ts>`.
    Set {
        /// The timestamp in the value.
        ts: u64,
    },
}

/// `ts` nanoseconds as POSIX seconds with nine decimals, written at the end of `buf`; returns
/// the digits.
pub fn format_ts(ts: u64, buf: &mut [u8; 32]) -> &[u8] {
    let mut i = buf.len();
    let mut frac = ts % NANOS;
    for _ in 0..9 {
        i -= 1;
        buf[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    i -= 1;
    buf[i] = b'.';
    let mut secs = ts / NANOS;
    loop {
        i -= 1;
        buf[i] = b'0' + (secs % 10) as u8;
        secs /= 10;
        if secs == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends the request `kind` for client `id`; `whatsat_args` is `" <radius> <bound>"`.
pub fn write_request(out: &mut Vec<u8>, kind: Kind, id: &[u8], whatsat_args: &[u8]) {
    let mut digits = [0u8; 32];
    match kind {
        Kind::Iamat { ts } => {
            out.extend_from_slice(b"IAMAT ");
            out.extend_from_slice(id);
            out.push(b' ');
            out.extend_from_slice(COORDS);
            out.push(b' ');
            out.extend_from_slice(format_ts(ts, &mut digits));
            out.push(b'\n');
        }
        Kind::Whatsat { .. } => {
            out.extend_from_slice(b"WHATSAT ");
            out.extend_from_slice(id);
            out.extend_from_slice(whatsat_args);
            out.push(b'\n');
        }
        Kind::Set { ts } => {
            // Key and value have the sizes of an IAMAT's client id and of its location and time
            // (the space becomes `_`: an inline command splits on spaces).
            out.extend_from_slice(b"SET ");
            out.extend_from_slice(id);
            out.push(b' ');
            out.extend_from_slice(COORDS);
            out.push(b'_');
            out.extend_from_slice(format_ts(ts, &mut digits));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The length of the reply at the front of `buf`, or `None` if it is not complete yet.
///
/// A reply is its first line, except that a WHATSAT answered with an `AT` line runs to the
/// first empty line (PROTOCOL.md collapses runs of newlines inside the JSON, so the first
/// `\n\n` ends it). `scan` remembers how far an earlier call searched, so bytes are not searched
/// twice; set it to 0 for each new reply.
pub fn reply_len(buf: &[u8], scan: &mut usize, kind: Kind) -> Option<usize> {
    if let Kind::Whatsat { .. } = kind {
        // The first line is short; it is searched again on each call until it is complete.
        let nl = memchr::memchr(b'\n', buf)?;
        if !buf.starts_with(b"AT ") {
            return Some(nl + 1);
        }
        // From the AT line's own `\n`, so `AT ...\n\n` (no JSON) ends here and is caught as wrong.
        let from = (*scan).max(nl);
        match memchr::memmem::find(&buf[from..], b"\n\n") {
            Some(k) => Some(from + k + 2),
            None => {
                *scan = buf.len() - 1;
                None
            }
        }
    } else {
        let from = (*scan).min(buf.len());
        match memchr::memchr(b'\n', &buf[from..]) {
            Some(k) => Some(from + k + 1),
            None => {
                *scan = buf.len();
                None
            }
        }
    }
}

/// Checks a whole reply (as delimited by [`reply_len`]) to the request `kind` of client `id`.
pub fn check(reply: &[u8], kind: Kind, id: &[u8]) -> Result<(), &'static str> {
    match kind {
        Kind::Iamat { ts } => check_at_line(reply, id, ts),
        Kind::Whatsat { ts } => {
            let nl = memchr::memchr(b'\n', reply).ok_or("no line")?;
            check_at_line(&reply[..=nl], id, ts)?;
            let json = reply[nl + 1..].strip_suffix(b"\n\n").ok_or("no empty line after the JSON")?;
            if json.first() == Some(&b'{') && json.last() == Some(&b'}') {
                Ok(())
            } else {
                Err("the AT line is not followed by a JSON object")
            }
        }
        Kind::Set { .. } => {
            if reply == b"+OK\r\n" {
                Ok(())
            } else {
                Err("not +OK")
            }
        }
    }
}

/// `line` must be `AT <server> <difference> <id> <COORDS> <ts>\n`, single spaces, any server
/// name, a difference of PROTOCOL.md's shape.
fn check_at_line(line: &[u8], id: &[u8], ts: u64) -> Result<(), &'static str> {
    let rest = line.strip_prefix(b"AT ").ok_or("not an AT line")?;
    let sp = memchr::memchr(b' ', rest).ok_or("AT line cut short")?;
    if sp == 0 {
        return Err("no server name");
    }
    let rest = &rest[sp + 1..];
    let sp = memchr::memchr(b' ', rest).ok_or("AT line cut short")?;
    if !is_difference(&rest[..sp]) {
        return Err("the time difference is not +/-S.NNNNNNNNN");
    }
    let mut digits = [0u8; 32];
    let tail = rest[sp + 1..]
        .strip_prefix(id)
        .and_then(|r| r.strip_prefix(b" "))
        .and_then(|r| r.strip_prefix(COORDS))
        .and_then(|r| r.strip_prefix(b" "))
        .and_then(|r| r.strip_prefix(format_ts(ts, &mut digits)));
    if tail == Some(b"\n") { Ok(()) } else { Err("client, location or time differ from the IAMAT") }
}

/// `+S.NNNNNNNNN` or `-S.NNNNNNNNN`: a sign, digits, a point, exactly nine digits.
fn is_difference(field: &[u8]) -> bool {
    let Some((&sign, rest)) = field.split_first() else { return false };
    let Some(point) = rest.iter().position(|&b| b == b'.') else { return false };
    let (int, frac) = (&rest[..point], &rest[point + 1..]);
    matches!(sign, b'+' | b'-')
        && !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.len() == 9
        && frac.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: u64 = 1_520_023_934_918_963_997;

    fn request(kind: Kind) -> Vec<u8> {
        let mut out = Vec::new();
        write_request(&mut out, kind, b"kiwi", b" 10 5");
        out
    }

    #[test]
    fn timestamps_have_nine_decimals() {
        let mut b = [0u8; 32];
        assert_eq!(format_ts(TS, &mut b), b"1520023934.918963997");
        assert_eq!(format_ts(5, &mut b), b"0.000000005");
        assert_eq!(format_ts(u64::MAX, &mut b), b"18446744073.709551615");
    }

    #[test]
    fn requests_are_written_byte_for_byte() {
        assert_eq!(
            request(Kind::Iamat { ts: TS }),
            b"IAMAT kiwi +34.068930-118.445127 1520023934.918963997\n"
        );
        assert_eq!(request(Kind::Whatsat { ts: TS }), b"WHATSAT kiwi 10 5\n");
        assert_eq!(request(Kind::Set { ts: TS }), b"SET kiwi +34.068930-118.445127_1520023934.918963997\r\n");
        // The Redis value is exactly as long as the IAMAT's location and time.
        assert_eq!(request(Kind::Set { ts: TS }).len() + 2, request(Kind::Iamat { ts: TS }).len() + 1);
    }

    #[test]
    fn iamat_reply_is_checked_exactly() {
        let k = Kind::Iamat { ts: TS };
        let ok = b"AT Hill +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997\n";
        assert_eq!(check(ok, k, b"kiwi"), Ok(()));
        assert_eq!(
            check(b"AT X -12.000000000 kiwi +34.068930-118.445127 1520023934.918963997\n", k, b"kiwi"),
            Ok(())
        );
        for bad in [
            &b"AT Hill +0.263873386 kiwi +34.068930-118.445127 1520023934.918963998\n"[..],
            b"AT Hill +0.263873386 kiwo +34.068930-118.445127 1520023934.918963997\n",
            b"AT Hill +0.263873386 kiwi +34.068930-118.445128 1520023934.918963997\n",
            b"AT Hill 0.263873386 kiwi +34.068930-118.445127 1520023934.918963997\n",
            b"AT Hill +0.26387338 kiwi +34.068930-118.445127 1520023934.918963997\n",
            b"AT Hill +.263873386 kiwi +34.068930-118.445127 1520023934.918963997\n",
            b"AT  +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997\n",
            b"AT Hill +0.263873386 kiwi  +34.068930-118.445127 1520023934.918963997\n",
            b"AT Hill +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997 \n",
            b"AT Hill +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997\r\n",
            b"? IAMAT kiwi +34.068930-118.445127 1520023934.918963997\n",
            b"\n",
        ] {
            assert!(check(bad, k, b"kiwi").is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn whatsat_reply_runs_to_the_empty_line_and_is_checked() {
        let k = Kind::Whatsat { ts: TS };
        let reply =
            b"AT Smith +0.1 kiwi +34.068930-118.445127 1520023934.918963997\n{\n  \"results\": []\n}\n\n";
        let at_ok =
            b"AT Smith +0.000000001 kiwi +34.068930-118.445127 1520023934.918963997\n{\n  \"results\": []\n}\n\n";
        let mut input = at_ok.to_vec();
        input.extend_from_slice(b"AT next\n");
        // Every split point: partial until the whole reply is there, then exactly its length.
        for cut in 0..input.len() {
            let mut scan = 0;
            let mut got = None;
            for end in [cut, input.len()] {
                got = reply_len(&input[..end], &mut scan, k);
                if got.is_some() {
                    break;
                }
            }
            assert_eq!(got, Some(at_ok.len()), "cut at {cut}");
        }
        assert_eq!(check(at_ok, k, b"kiwi"), Ok(()));
        assert!(check(reply, k, b"kiwi").is_err(), "+0.1 has not nine decimals");
        // A `? ` answer is one line; an AT line without JSON ends at its own empty line.
        let mut scan = 0;
        assert_eq!(reply_len(b"? WHATSAT kiwi 10 5\nAT", &mut scan, k), Some(20));
        let bare = b"AT H +0.000000000 kiwi +34.068930-118.445127 1520023934.918963997\n\nX";
        let mut scan = 0;
        let n = reply_len(bare, &mut scan, k).unwrap();
        assert_eq!(n, bare.len() - 1);
        assert!(check(&bare[..n], k, b"kiwi").is_err());
    }

    #[test]
    fn line_replies_resume_their_scan() {
        let mut scan = 0;
        assert_eq!(reply_len(b"+OK", &mut scan, Kind::Set { ts: 1 }), None);
        assert_eq!(scan, 3);
        assert_eq!(reply_len(b"+OK\r\n+OK", &mut scan, Kind::Set { ts: 1 }), Some(5));
        assert_eq!(check(b"+OK\r\n", Kind::Set { ts: 1 }, b"k"), Ok(()));
        assert!(check(b"+OK\n", Kind::Set { ts: 1 }, b"k").is_err());
        assert!(check(b"-ERR unknown command\r\n", Kind::Set { ts: 1 }, b"k").is_err());
    }
}
