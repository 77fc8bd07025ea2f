//! Formatting of replies into a caller's buffer: no allocation beyond the buffer's own growth,
//! no `fmt` machinery on the hot path.

/// Appends the time difference `now - then` in nanoseconds as PROTOCOL.md writes it: always a
/// sign, whole seconds, a point, exactly nine decimals (`+0.263873386`, `-3.500000000`).
pub fn write_difference(out: &mut Vec<u8>, diff_nanos: i128) {
    out.push(if diff_nanos < 0 { b'-' } else { b'+' });
    let abs = diff_nanos.unsigned_abs();
    write_decimal(out, abs / 1_000_000_000);
    out.push(b'.');
    let frac = (abs % 1_000_000_000) as u32;
    let mut digits = [b'0'; 9];
    let mut f = frac;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.extend_from_slice(&digits);
}

fn write_decimal(out: &mut Vec<u8>, mut v: u128) {
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `AT server difference client location time` (no terminator): the IAMAT reply and the
/// record that is stored and flooded. Returns the offset of `client` within the appended bytes.
pub fn write_at_line(
    out: &mut Vec<u8>,
    server: &[u8],
    difference: Difference<'_>,
    client: &[u8],
    location: &[u8],
    time: &[u8],
) -> usize {
    let start = out.len();
    out.extend_from_slice(b"AT ");
    out.extend_from_slice(server);
    out.push(b' ');
    match difference {
        Difference::Nanos(n) => write_difference(out, n),
        Difference::Raw(d) => out.extend_from_slice(d),
    }
    out.push(b' ');
    let client_at = out.len() - start;
    out.extend_from_slice(client);
    out.push(b' ');
    out.extend_from_slice(location);
    out.push(b' ');
    out.extend_from_slice(time);
    client_at
}

/// The time difference field of an AT line.
#[derive(Debug, Clone, Copy)]
pub enum Difference<'a> {
    /// Computed here, in nanoseconds.
    Nanos(i128),
    /// Copied from another server's AT line.
    Raw(&'a [u8]),
}

/// Appends the invalid-command reply: `? `, the line as received, `\n`.
pub fn write_invalid(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(n: i128) -> String {
        let mut v = Vec::new();
        write_difference(&mut v, n);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn difference_sign_and_nine_decimals() {
        assert_eq!(diff(263_873_386), "+0.263873386");
        assert_eq!(diff(12_000), "+0.000012000");
        assert_eq!(diff(-3_500_000_000), "-3.500000000");
        assert_eq!(diff(0), "+0.000000000");
        assert_eq!(diff(-1), "-0.000000001");
        assert_eq!(diff(1_000_000_000), "+1.000000000");
        assert_eq!(diff(1_520_023_934_918_963_997), "+1520023934.918963997");
    }

    #[test]
    fn difference_extremes_never_exponent() {
        let big = i128::from(u64::MAX) * 1_000_000_000 + 999_999_999;
        assert_eq!(diff(-big), "-18446744073709551615.999999999");
        assert_eq!(diff(big), "+18446744073709551615.999999999");
    }

    #[test]
    fn at_line_layout_and_client_offset() {
        let mut out = b"prefix".to_vec();
        let at =
            write_at_line(&mut out, b"Hill", Difference::Nanos(263_873_386), b"kiwi", b"+1.0-2.0", b"3.5");
        assert_eq!(&out[6..], b"AT Hill +0.263873386 kiwi +1.0-2.0 3.5");
        assert_eq!(&out[6 + at..6 + at + 4], b"kiwi");
        let mut out = Vec::new();
        write_at_line(&mut out, b"Smith", Difference::Raw(b"-0.5"), b"\xff", b"+1.0-2.0", b"3");
        assert_eq!(out, b"AT Smith -0.5 \xff +1.0-2.0 3");
    }

    #[test]
    fn invalid_echoes_bytes() {
        let mut out = Vec::new();
        write_invalid(&mut out, b"IAMAT kiwi 34.0-118.0 1");
        assert_eq!(out, b"? IAMAT kiwi 34.0-118.0 1\n");
    }
}
