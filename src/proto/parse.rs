//! Parsing of one line into a [`Command`]. Never panics, never allocates.

use super::is_space;

/// A client's timestamp: POSIX seconds and nanoseconds, compared exactly (never as `f64`, which
/// cannot tell apart two 19-digit timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    secs: u64,
    nanos: u32,
}

impl Timestamp {
    /// `secs` seconds and `nanos` (< 10^9) nanoseconds after the epoch.
    pub const fn new(secs: u64, nanos: u32) -> Self {
        Self { secs, nanos }
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }

    /// Parses `DIGITS[.DIGITS]` with at most nine fraction digits. No sign: negative timestamps
    /// are invalid, and `+` is not part of POSIX time. At most 20 integer digits (u64 seconds).
    pub fn parse(field: &[u8]) -> Option<Self> {
        let (int, frac) = match field.iter().position(|&b| b == b'.') {
            Some(dot) => (&field[..dot], Some(&field[dot + 1..])),
            None => (field, None),
        };
        let secs = parse_u64(int)?;
        let nanos = match frac {
            None => 0,
            Some(f) if f.is_empty() || f.len() > 9 || !f.iter().all(u8::is_ascii_digit) => {
                return None;
            }
            Some(f) => {
                let n = f.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
                n * 10u32.pow(9 - f.len() as u32)
            }
        };
        Some(Self { secs, nanos })
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// An ISO 6709 location as received: `+34.068930-118.445127`. Kept as bytes so it is echoed
/// byte for byte; the numbers are read only when Places needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'a> {
    /// The latitude, sign included: `+34.068930`.
    pub lat: &'a [u8],
    /// The longitude, sign included: `-118.445127`.
    pub lng: &'a [u8],
}

impl<'a> Location<'a> {
    /// Splits and checks a location: two signed decimal numbers, each with a decimal point and
    /// digits on both sides, latitude in [-90, 90], longitude in [-180, 180].
    pub fn parse(field: &'a [u8]) -> Option<Self> {
        let split = 1 + field.get(1..)?.iter().position(|&b| b == b'+' || b == b'-')?;
        let (lat, lng) = field.split_at(split);
        (coordinate_ok(lat, 90) && coordinate_ok(lng, 180)).then_some(Self { lat, lng })
    }

    /// Latitude and longitude in degrees, for building a Places request.
    pub fn degrees(&self) -> (f64, f64) {
        // Both were checked to be ASCII decimal numbers, so these parses cannot fail.
        let num = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        (num(self.lat), num(self.lng))
    }
}

/// `[+-]DIGITS.DIGITS` with an absolute value of at most `limit`, checked exactly on the digits.
fn coordinate_ok(c: &[u8], limit: u64) -> bool {
    let Some((&sign, rest)) = c.split_first() else { return false };
    if sign != b'+' && sign != b'-' {
        return false;
    }
    let Some(dot) = rest.iter().position(|&b| b == b'.') else { return false };
    let (int, frac) = (&rest[..dot], &rest[dot + 1..]);
    if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
        return false;
    }
    match parse_u64(int) {
        Some(v) if v < limit => true,
        Some(v) if v == limit => frac.iter().all(|&d| d == b'0'),
        _ => false,
    }
}

/// The white-space separated fields of a line.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| is_space(b)).filter(|f| !f.is_empty())
}

/// A line that is not a valid command; the reply is `? ` and the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The first field is not IAMAT, AT or WHATSAT.
    UnknownCommand,
    /// The command has the wrong number of fields.
    FieldCount,
    /// The location is not ISO 6709 or out of range.
    Location,
    /// The timestamp is not non-negative POSIX seconds with at most nine decimals.
    Timestamp,
    /// The time difference of an AT line is not a signed decimal number.
    Difference,
    /// The WHATSAT radius is not a number in (0, 50].
    Radius,
    /// The WHATSAT bound is not an integer in [1, 20].
    Bound,
}

/// One parsed line. Slices borrow the line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command<'a> {
    /// `IAMAT client location timestamp`
    IAmAt {
        /// The client id, any non-white-space bytes.
        client: &'a [u8],
        /// The checked location.
        location: Location<'a>,
        /// The location field as received.
        location_raw: &'a [u8],
        /// The timestamp field as received.
        time_raw: &'a [u8],
        /// The timestamp, exact.
        time: Timestamp,
    },
    /// `AT server difference client location timestamp`, from a peer.
    At {
        /// The origin server's name.
        server: &'a [u8],
        /// The origin server's time difference, as received.
        difference: &'a [u8],
        /// The client id.
        client: &'a [u8],
        /// The location field as received (checked).
        location_raw: &'a [u8],
        /// The timestamp field as received.
        time_raw: &'a [u8],
        /// The timestamp, exact.
        time: Timestamp,
    },
    /// `WHATSAT client radius_km bound`
    WhatsAt {
        /// The client asked about.
        client: &'a [u8],
        /// Search radius in kilometres, in (0, 50].
        radius_km: f64,
        /// Most results to return, in [1, 20].
        bound: u8,
    },
}

/// Largest WHATSAT radius in kilometres.
pub const MAX_RADIUS_KM: f64 = 50.0;
/// Largest WHATSAT bound.
pub const MAX_BOUND: u8 = 20;

/// Parses one line (terminator already removed or not: trailing white space is ignored).
/// `Ok(None)` is a line of only white space, which gets no reply.
pub fn parse_line(line: &[u8]) -> Result<Option<Command<'_>>, Invalid> {
    let mut f = [&[][..]; 7];
    let mut n = 0;
    for field in fields(line) {
        if n == f.len() {
            n += 1;
            break;
        }
        f[n] = field;
        n += 1;
    }
    if n == 0 {
        return Ok(None);
    }
    let command = match f[0] {
        b"IAMAT" => {
            if n != 4 {
                return Err(Invalid::FieldCount);
            }
            let location = Location::parse(f[2]).ok_or(Invalid::Location)?;
            let time = Timestamp::parse(f[3]).ok_or(Invalid::Timestamp)?;
            Command::IAmAt { client: f[1], location, location_raw: f[2], time_raw: f[3], time }
        }
        b"AT" => {
            if n != 6 {
                return Err(Invalid::FieldCount);
            }
            if !difference_ok(f[2]) {
                return Err(Invalid::Difference);
            }
            Location::parse(f[4]).ok_or(Invalid::Location)?;
            let time = Timestamp::parse(f[5]).ok_or(Invalid::Timestamp)?;
            Command::At {
                server: f[1],
                difference: f[2],
                client: f[3],
                location_raw: f[4],
                time_raw: f[5],
                time,
            }
        }
        b"WHATSAT" => {
            if n != 4 {
                return Err(Invalid::FieldCount);
            }
            let radius_km = parse_radius(f[2]).ok_or(Invalid::Radius)?;
            let bound = parse_bound(f[3]).ok_or(Invalid::Bound)?;
            Command::WhatsAt { client: f[1], radius_km, bound }
        }
        _ => return Err(Invalid::UnknownCommand),
    };
    Ok(Some(command))
}

/// A time difference written by another server: an optional sign, digits, and an optional
/// fraction. Lenient on purpose (servers in other languages may print fewer decimals); it is
/// stored and forwarded byte for byte, never computed with.
fn difference_ok(d: &[u8]) -> bool {
    let d = d.strip_prefix(b"+").or_else(|| d.strip_prefix(b"-")).unwrap_or(d);
    let (int, frac) = match d.iter().position(|&b| b == b'.') {
        Some(dot) => (&d[..dot], &d[dot + 1..]),
        None => (d, &b""[..]),
    };
    !int.is_empty() && int.iter().chain(frac).all(u8::is_ascii_digit)
}

/// `DIGITS[.DIGITS]` or `.DIGITS`, in (0, 50]. No sign, no exponent, no `inf`/`nan`.
fn parse_radius(r: &[u8]) -> Option<f64> {
    let mut dots = 0;
    let mut digits = 0;
    for &b in r {
        match b {
            b'.' => dots += 1,
            b'0'..=b'9' => digits += 1,
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 || r.last() == Some(&b'.') {
        return None;
    }
    // The range is decided on the digits, exactly: as an f64, `50.00000000000000001` rounds to
    // 50 and `0.000…0001` with enough zeros to 0.
    let (int, frac) = match r.iter().position(|&b| b == b'.') {
        Some(dot) => (&r[..dot], &r[dot + 1..]),
        None => (r, &b""[..]),
    };
    let int = &int[int.iter().take_while(|&&b| b == b'0').count()..];
    let whole =
        if int.len() > 2 { u64::MAX } else { int.iter().fold(0, |n, &b| n * 10 + u64::from(b - b'0')) };
    let frac_zero = frac.iter().all(|&b| b == b'0');
    let max = MAX_RADIUS_KM as u64;
    if whole > max || (whole == max && !frac_zero) || (whole == 0 && frac_zero) {
        return None;
    }
    std::str::from_utf8(r).ok()?.parse().ok()
}

/// `DIGITS` in [1, 20].
fn parse_bound(b: &[u8]) -> Option<u8> {
    if b.len() > 3 {
        return None;
    }
    let v = parse_u64(b)?;
    (1..=u64::from(MAX_BOUND)).contains(&v).then_some(v as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &[u8]) -> Command<'_> {
        parse_line(line).expect("valid").expect("not blank")
    }

    #[test]
    fn iamat_example_parses() {
        let Command::IAmAt { client, location_raw, time_raw, time, .. } =
            ok(b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997")
        else {
            panic!("not IAMAT")
        };
        assert_eq!(client, b"kiwi.cs.ucla.edu");
        assert_eq!(location_raw, b"+34.068930-118.445127");
        assert_eq!(time_raw, b"1520023934.918963997");
        assert_eq!(time, Timestamp::new(1_520_023_934, 918_963_997));
    }

    #[test]
    fn whitespace_all_six_bytes_separate_fields() {
        for sep in [b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c"] {
            let mut line = b"IAMAT".to_vec();
            for f in [&b"a"[..], b"+1.0-2.0", b"3"] {
                line.extend_from_slice(sep);
                line.extend_from_slice(sep);
                line.extend_from_slice(f);
            }
            line.extend_from_slice(sep);
            assert!(matches!(ok(&line), Command::IAmAt { client: b"a", .. }), "sep {sep:?}");
        }
    }

    #[test]
    fn whitespace_nbsp_and_other_bytes_are_not_separators() {
        // U+00A0 in UTF-8 is \xc2\xa0: part of the id, so the line has four fields.
        let Command::IAmAt { client, .. } = ok(b"IAMAT a\xc2\xa0b +1.0-2.0 3") else { panic!() };
        assert_eq!(client, b"a\xc2\xa0b");
        assert_eq!(parse_line(b"IAMAT a\x00 b +1.0-2.0 3"), Err(Invalid::FieldCount));
    }

    #[test]
    fn ids_are_bytes() {
        for id in [&b"\xff"[..], "étudiant".as_bytes(), "😂".as_bytes()] {
            let mut line = b"IAMAT ".to_vec();
            line.extend_from_slice(id);
            line.extend_from_slice(b" -1.5+2.5 7");
            let Command::IAmAt { client, .. } = ok(&line) else { panic!() };
            assert_eq!(client, id);
        }
    }

    #[test]
    fn blank_lines_are_ignored() {
        for l in [&b""[..], b" ", b"\t\r\x0b\x0c \n"] {
            assert_eq!(parse_line(l), Ok(None));
        }
    }

    #[test]
    fn iamat_wrong_field_counts_invalid() {
        assert_eq!(parse_line(b"IAMAT a +1.0-2.0"), Err(Invalid::FieldCount));
        assert_eq!(parse_line(b"IAMAT a +1.0-2.0 3 4"), Err(Invalid::FieldCount));
        assert_eq!(parse_line(b"IAMAT a +1.0-2.0 3 4 5 6 7 8 9"), Err(Invalid::FieldCount));
        assert_eq!(parse_line(b"iamat a +1.0-2.0 3"), Err(Invalid::UnknownCommand));
    }

    #[test]
    fn location_rules() {
        let valid: &[&[u8]] = &[
            b"+34.068930-118.445127",
            b"-90.0+180.0",
            b"+90.000-180.00000",
            b"+0.0+0.0",
            b"-00.5-000.5",
            b"+89.999999999+179.999999999",
        ];
        for l in valid {
            assert!(Location::parse(l).is_some(), "{}", l.escape_ascii());
        }
        let invalid: &[&[u8]] = &[
            b"34.068930-118.445127",
            b"+34-118",
            b"+34.068930",
            b"+34.0-118",
            b"+34.-118.0",
            b"+.5-118.0",
            b"+90.0000001+0.0",
            b"+0.0-180.1",
            b"+91.0+0.0",
            b"+0.0+0.0+0.0",
            b"+1e1.0+0.0",
            b"++1.0+0.0",
            b"+1.0+-0.0",
            b"+99999999999999999999999.0+0.0",
            b"",
            b"+",
        ];
        for l in invalid {
            assert!(Location::parse(l).is_none(), "{}", l.escape_ascii());
        }
    }

    #[test]
    fn location_degrees_read_back() {
        let l = Location::parse(b"+34.068930-118.445127").unwrap();
        assert_eq!(l.degrees(), (34.068930, -118.445127));
    }

    #[test]
    fn timestamp_rules() {
        assert_eq!(Timestamp::parse(b"0"), Some(Timestamp::new(0, 0)));
        assert_eq!(Timestamp::parse(b"1.5"), Some(Timestamp::new(1, 500_000_000)));
        assert_eq!(Timestamp::parse(b"1.000000001"), Some(Timestamp::new(1, 1)));
        assert_eq!(
            Timestamp::parse(b"18446744073709551615.999999999"),
            Some(Timestamp::new(u64::MAX, 999_999_999))
        );
        for bad in [
            &b"-1.0"[..],
            b"+1.0",
            b"1.",
            b".5",
            b"1.0000000001",
            b"1e9",
            b"18446744073709551616",
            b"",
            b"1..2",
            b"1.2.3",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn timestamps_differing_in_ninth_decimal_compare_exactly() {
        let a = Timestamp::parse(b"1520023934.918963997").unwrap();
        let b = Timestamp::parse(b"1520023934.918963998").unwrap();
        assert!(a < b);
        // As f64 they are equal, which is why timestamps are never floats.
        let as_f64 = |s: &str| s.parse::<f64>().unwrap();
        assert_eq!(as_f64("1520023934.918963997"), as_f64("1520023934.918963998"));
        let c = Timestamp::parse(b"9999999999999999999.000000001").unwrap();
        let d = Timestamp::parse(b"9999999999999999999.000000002").unwrap();
        assert!(c < d);
    }

    #[test]
    fn at_parses_and_checks_fields() {
        let Command::At { server, difference, client, .. } =
            ok(b"AT Hill +0.263873386 kiwi +34.068930-118.445127 1520023934.918963997")
        else {
            panic!()
        };
        assert_eq!((server, difference, client), (&b"Hill"[..], &b"+0.263873386"[..], &b"kiwi"[..]));
        assert!(matches!(ok(b"AT H -3.5 k +1.0+1.0 1"), Command::At { .. }));
        assert_eq!(parse_line(b"AT H x k +1.0+1.0 1"), Err(Invalid::Difference));
        assert_eq!(parse_line(b"AT H +1.0 k 1.0+1.0 1"), Err(Invalid::Location));
        assert_eq!(parse_line(b"AT H +1.0 k +1.0+1.0 -1"), Err(Invalid::Timestamp));
        assert_eq!(parse_line(b"AT H +1.0 k +1.0+1.0"), Err(Invalid::FieldCount));
    }

    #[test]
    fn whatsat_radius_and_bound_ranges() {
        assert!(matches!(ok(b"WHATSAT k 10 5"), Command::WhatsAt { radius_km: 10.0, bound: 5, .. }));
        assert!(matches!(ok(b"WHATSAT k 10.5871263 20"), Command::WhatsAt { bound: 20, .. }));
        assert!(matches!(ok(b"WHATSAT k 50 1"), Command::WhatsAt { .. }));
        assert!(matches!(ok(b"WHATSAT k 0.001 1"), Command::WhatsAt { .. }));
        for bad in
            [&b"0"[..], b"50.0001", b"-1", b"+1", b"1e1", b"inf", b"nan", b"1.", b".", b"1.2.3", b"", b"51"]
                .into_iter()
                .chain([
                    &b"50.00000000000000001"[..],
                    b"0.0000000000000000000000000000000000000000000",
                    b"000",
                    b"100",
                ])
        {
            let mut line = b"WHATSAT k ".to_vec();
            line.extend_from_slice(if bad.is_empty() { b"x" } else { bad });
            line.extend_from_slice(b" 5");
            assert_eq!(parse_line(&line), Err(Invalid::Radius), "{}", bad.escape_ascii());
        }
        for bad in [&b"0"[..], b"21", b"-1", b"1.0", b"+1", b"0020", b"x"] {
            let mut line = b"WHATSAT k 10 ".to_vec();
            line.extend_from_slice(bad);
            assert_eq!(parse_line(&line), Err(Invalid::Bound), "{}", bad.escape_ascii());
        }
        assert!(matches!(ok(b"WHATSAT k .5 020"), Command::WhatsAt { bound: 20, .. }));
        // Decided on the digits, not on a rounded f64.
        let tiny = format!("WHATSAT k 0.{}1 5", "0".repeat(400));
        assert!(matches!(parse_line(tiny.as_bytes()), Ok(Some(Command::WhatsAt { .. }))));
        assert!(matches!(ok(b"WHATSAT k 050.000 5"), Command::WhatsAt { radius_km: 50.0, .. }));
    }
}
