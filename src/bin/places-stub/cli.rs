//! The command line: what the stub is asked to do ([`Options`]), how large its answers are made
//! ([`Size`]) and how they go on the wire ([`Delivery`]), and the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

/// Largest padded body (`--pad-to`; `--size-by-radius` stays under it, at most 50,000 KiB): the
/// answer is built in memory, several times over.
const MAX_PAD: usize = 64 << 20;
/// The pause between `--trickle` pieces unless `--trickle-pause-us` says otherwise.
const TRICKLE_PAUSE: Duration = Duration::from_millis(1);

pub(crate) const HELP: &str = "\
places-stub: an offline HTTPS stand-in for Google Places (both the New and the legacy Nearby
Search), answering with synthetic places around the requested point. For tests and demos only.

Usage:
  places-stub [--listen ADDR] [--cert-out PATH] [--key KEY] [--delay-ms N] [--status CODE]
              [--garbage] [--chunked] [--close] [--reset-mid-body] [--port-file PATH]
              [--pad-to SIZE | --size-by-radius] [--burst | --trickle K [--trickle-pause-us N]]

Options:
  --listen ADDR       address to listen on (default 127.0.0.1:0, a free port)
  --cert-out PATH     where to write the self-signed certificate, PEM, generated afresh at each
                      start for localhost, 127.0.0.1 and ::1 (default places-stub-cert.pem); point
                      the herd's places.ca_file at it
  --key KEY           the API key accepted (default stub-key); never printed
  --delay-ms N        wait N milliseconds before each response
  --status CODE       answer every request with HTTP CODE and a Google-shaped error body
  --garbage           answer every request with 200 and a body that is not JSON
  --chunked           send bodies with Transfer-Encoding: chunked, in several chunks
  --close             send Connection: close and close after each response
  --reset-mid-body    send the head and half the body, then close without TLS close_notify
  --port-file PATH    also write the port number to PATH (atomically, by rename)
  --pad-to SIZE       pad the body of every successful answer to about SIZE bytes (20480, 20K,
                      1.9M; K = KiB, M = MiB; at most 64M), in Google's shape: legacy results get
                      `photos` entries and a longer `vicinity`, New API places extra `types` and
                      a longer `shortFormattedAddress`; a smaller SIZE gets fewer results (at
                      least one). Padded legacy answers have a blank line between results and
                      trailing newlines, for the client to collapse
  --size-by-radius    like --pad-to, with the size chosen per request: a radius of R metres gets
                      about round(R) KiB (1 m: 1 KiB, 1946 m: 1.9 MiB, 2100 m: 2.05 MiB)
  --burst             write each whole response (head and body) in one write: its TLS records
                      arrive together
  --trickle K         write each response in pieces of K bytes, each flushed as its own TLS
                      record (several when K > 16384), pausing between pieces
  --trickle-pause-us N  the pause between --trickle pieces, in microseconds (default 1000)
  -h, --help          show this help
  -V, --version       show the version

stdout: `places-stub listening on https://ADDR` once ready, then one line per TLS handshake
(`handshake N from ADDR`) and per request (`request N METHOD PATH -> STATUS`, without the key);
with --pad-to or --size-by-radius also `answer N STATUS BYTES bytes` (the body's length).
";

/// What the stub was asked to do. No `Debug`: it holds the key.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) listen: String,
    pub(crate) cert_out: PathBuf,
    pub(crate) key: String,
    pub(crate) delay: Duration,
    pub(crate) status: Option<u16>,
    pub(crate) garbage: bool,
    pub(crate) chunked: bool,
    pub(crate) close: bool,
    pub(crate) reset_mid_body: bool,
    pub(crate) port_file: Option<PathBuf>,
    pub(crate) size: Size,
    pub(crate) delivery: Delivery,
}

/// How large a successful answer's body is made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Size {
    /// As the places make it (the default).
    Natural,
    /// About this many bytes (`--pad-to`).
    Fixed(usize),
    /// About round(radius in metres) KiB (`--size-by-radius`).
    ByRadius,
}

impl Size {
    /// The body size to aim at for a query of `radius_m`, if any.
    pub(crate) fn target(self, radius_m: f64) -> Option<usize> {
        match self {
            Self::Natural => None,
            Self::Fixed(n) => Some(n),
            // The radius is at most 50,000 m: at most 50,000 KiB.
            Self::ByRadius => Some(radius_m.round() as usize * 1024),
        }
    }
}

/// How a response goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Delivery {
    /// A plain response in one write; a chunked one flushed chunk by chunk.
    Default,
    /// The whole response in one write and one flush (`--burst`).
    Burst,
    /// Pieces of `piece` bytes, each flushed, `pause` between them (`--trickle`).
    Trickle { piece: usize, pause: Duration },
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            cert_out: PathBuf::from("places-stub-cert.pem"),
            key: "stub-key".into(),
            delay: Duration::ZERO,
            status: None,
            garbage: false,
            chunked: false,
            close: false,
            reset_mid_body: false,
            port_file: None,
            size: Size::Natural,
            delivery: Delivery::Default,
        }
    }
}

pub(crate) enum Command {
    Run(Options),
    Help,
    Version,
}

/// Reads the command line: what to run, or a message for a mistake.
pub(crate) fn parse_args(mut p: lexopt::Parser) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut o = Options::default();
    let (mut burst, mut trickle, mut pause) = (false, None, None);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => o.listen = string(&mut p)?,
            Long("cert-out") => o.cert_out = p.value().map_err(|e| e.to_string())?.into(),
            Long("key") => {
                o.key = string(&mut p)?;
                if o.key.is_empty() || o.key.chars().any(char::is_control) {
                    return Err("--key must be non-empty, without control characters".into());
                }
            }
            Long("delay-ms") => o.delay = Duration::from_millis(number(&mut p, "--delay-ms")?),
            Long("status") => o.status = Some(status(&mut p)?),
            Long("garbage") => o.garbage = true,
            Long("chunked") => o.chunked = true,
            Long("close") => o.close = true,
            Long("reset-mid-body") => o.reset_mid_body = true,
            Long("port-file") => o.port_file = Some(p.value().map_err(|e| e.to_string())?.into()),
            Long("pad-to") => {
                let size = parse_size(&string(&mut p)?).map_err(|e| format!("--pad-to: {e}"))?;
                if o.size == Size::ByRadius {
                    return Err("give either --pad-to or --size-by-radius, not both".into());
                }
                o.size = Size::Fixed(size);
            }
            Long("size-by-radius") => {
                if matches!(o.size, Size::Fixed(_)) {
                    return Err("give either --pad-to or --size-by-radius, not both".into());
                }
                o.size = Size::ByRadius;
            }
            Long("burst") => burst = true,
            Long("trickle") => {
                let piece: usize = number(&mut p, "--trickle")?;
                if piece == 0 {
                    return Err("--trickle: give a piece size of at least 1 byte".into());
                }
                trickle = Some(piece);
            }
            Long("trickle-pause-us") => {
                pause = Some(Duration::from_micros(number(&mut p, "--trickle-pause-us")?));
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    o.delivery = delivery(burst, trickle, pause)?;
    Ok(Command::Run(o))
}

/// The value of `flag` as a number; a mistake names the flag.
fn number<T>(p: &mut lexopt::Parser, flag: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    use lexopt::ValueExt;
    p.value().map_err(|e| e.to_string())?.parse().map_err(|e| format!("{flag}: {e}"))
}

/// The value of `--status`: a status that can carry the error body.
fn status(p: &mut lexopt::Parser) -> Result<u16, String> {
    let code: u16 = number(p, "--status")?;
    // 1xx, 204 and 304 cannot carry the error body.
    if !(200..=599).contains(&code) || code == 204 || code == 304 {
        return Err(format!("--status {code}: give a status from 200 to 599 other than 204 and 304"));
    }
    Ok(code)
}

/// The delivery that `--burst`, `--trickle` and `--trickle-pause-us` ask for.
fn delivery(burst: bool, trickle: Option<usize>, pause: Option<Duration>) -> Result<Delivery, String> {
    let delivery = match (burst, trickle) {
        (true, Some(_)) => return Err("give either --burst or --trickle, not both".into()),
        (true, None) => Delivery::Burst,
        (false, Some(piece)) => Delivery::Trickle { piece, pause: pause.unwrap_or(TRICKLE_PAUSE) },
        (false, None) => Delivery::Default,
    };
    if pause.is_some() && trickle.is_none() {
        return Err("--trickle-pause-us needs --trickle".into());
    }
    Ok(delivery)
}

/// A size in bytes: a number, optionally with a fraction and a suffix K/KiB or M/MiB (any case;
/// binary units), at most [`MAX_PAD`].
fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = match lower.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let scale = match unit {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        _ => return Err(format!("{text:?}: the unit must be K (KiB) or M (MiB)")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a size"))?;
    let bytes = (n * scale).round();
    if bytes > MAX_PAD as f64 {
        return Err(format!("{text:?} is over the largest, {MAX_PAD} bytes"));
    }
    Ok(bytes as usize)
}

fn string(p: &mut lexopt::Parser) -> Result<String, String> {
    p.value().map_err(|e| e.to_string())?.into_string().map_err(|v| format!("{v:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_bytes_kib_and_mib() {
        assert_eq!(parse_size("20480"), Ok(20480));
        assert_eq!(parse_size("20K"), Ok(20480));
        assert_eq!(parse_size("20kib"), Ok(20480));
        assert_eq!(parse_size("1.9M"), Ok(1_992_294));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("64M"), Ok(MAX_PAD));
        for bad in ["", "K", "-1", "1.5G", "65M", "NaN", "inf", "1e99", "12 bytes"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    fn args(a: &[&str]) -> Result<Command, String> {
        parse_args(lexopt::Parser::from_args(a.iter().copied()))
    }

    #[test]
    fn command_line() {
        let Ok(Command::Run(o)) = args(&[]) else { panic!() };
        assert_eq!(
            (o.listen.as_str(), o.key.as_str(), o.cert_out.to_str()),
            ("127.0.0.1:0", "stub-key", Some("places-stub-cert.pem"))
        );
        assert!(
            o.status.is_none()
                && !o.garbage
                && !o.chunked
                && !o.close
                && !o.reset_mid_body
                && o.port_file.is_none()
                && o.size == Size::Natural
                && o.delivery == Delivery::Default
        );
        let Ok(Command::Run(o)) = args(&[
            "--listen",
            "[::1]:8443",
            "--cert-out",
            "c.pem",
            "--key",
            "k",
            "--delay-ms",
            "250",
            "--status",
            "503",
            "--garbage",
            "--chunked",
            "--close",
            "--reset-mid-body",
            "--port-file",
            "p",
        ]) else {
            panic!()
        };
        assert_eq!(
            (o.listen.as_str(), o.key.as_str(), o.delay, o.status),
            ("[::1]:8443", "k", Duration::from_millis(250), Some(503))
        );
        assert!(
            o.garbage && o.chunked && o.close && o.reset_mid_body && o.port_file == Some(PathBuf::from("p"))
        );
        let run = |a: &[&str]| match args(a) {
            Ok(Command::Run(o)) => (o.size, o.delivery),
            _ => panic!("{a:?}"),
        };
        assert_eq!(run(&["--pad-to", "20K", "--burst"]), (Size::Fixed(20480), Delivery::Burst));
        assert_eq!(
            run(&["--size-by-radius", "--trickle", "4096"]),
            (Size::ByRadius, Delivery::Trickle { piece: 4096, pause: TRICKLE_PAUSE })
        );
        assert_eq!(
            run(&["--trickle-pause-us", "250", "--trickle", "1"]).1,
            Delivery::Trickle { piece: 1, pause: Duration::from_micros(250) }
        );
        assert_eq!(Size::ByRadius.target(1945.6), Some(1946 * 1024));
        assert_eq!(Size::Natural.target(1.0), None);
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["-V"]), Ok(Command::Version)));
        for bad in [
            &["--status", "99"][..],
            &["--status", "204"],
            &["--status", "600"],
            &["--status", "x"],
            &["--delay-ms", "-1"],
            &["--key", ""],
            &["--key"],
            &["--bogus"],
            &["extra"],
            &["--pad-to", "1G"],
            &["--pad-to", "20K", "--size-by-radius"],
            &["--size-by-radius", "--pad-to", "20K"],
            &["--burst", "--trickle", "10"],
            &["--trickle", "0"],
            &["--trickle", "-5"],
            &["--trickle-pause-us", "10"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
