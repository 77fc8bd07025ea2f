//! The command line: `herd-bench --help` is [`USAGE`]; everything it says is checked here, so the
//! load loop never sees a nonsensical setting.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `herd-bench --help`. It documents every option and every key of `--json`.
pub const USAGE: &str = "\
herd-bench: load against herd servers (or Redis), every reply checked

Usage: herd-bench [options] ADDR [ADDR...]        (ADDR like 127.0.0.1:12001)

Connections are spread round-robin over the ADDRs and over the threads; each thread runs one
non-blocking, edge-triggered event loop (mio), so one thread drives thousands of connections.

Options:
  -c, --connections N    connections (client ids) in all [default: 50]
  -d, --depth N          requests kept outstanding per connection (pipelining): a new request is
                         written as soon as each reply arrives, all of a read's worth of top-ups in
                         one write [default: 1]
      --threads N        event-loop threads; pin them with taskset [default: 1]
  -t, --duration SECS    measure for this long, after the warm-up [default: 5, unless -n is given]
  -n, --requests N       stop after N measured requests (with -t: whichever comes first)
  -w, --warmup SECS      load before measuring; not counted [default: 1]
      --timeout SECS     a reply (or a connect) later than this is an error and ends that
                         connection, so the run always ends [default: 5]
      --whatsat PERCENT  share of requests that are WHATSAT (0..100) for the connection's own
                         client; each client's first request is an IAMAT [default: 0]
      --radius KM        WHATSAT radius (0 < KM <= 50) [default: 10]
      --bound N          WHATSAT bound on results (1..20) [default: 5]
      --connect-per-request
                         open a connection, send one request, read the reply, close; repeat.
                         A failed connect counts as an error of that request. Latency then runs
                         from the start of the connect
      --protocol P       herd (IAMAT/WHATSAT) or redis: inline `SET <key> <value>` with a key and
                         value of the same sizes as an IAMAT's client id and location + time; each
                         reply must be exactly +OK [default: herd]
      --id-prefix S      client ids are S + connection number [default: bench-<pid>-]
      --json             print one JSON object on stdout instead of the text report
  -h, --help             print this help
  -V, --version          print the version

Replies: an IAMAT's must be `AT <server> <+/-S.NNNNNNNNN> <client> <location> <time>` with the
client, location and time sent; a WHATSAT's that AT line for the client's latest IAMAT (any server
name), then JSON `{...}`, then an empty line. A reply is framed as its first line, extended to the
empty line when a WHATSAT is answered with an AT line. Timestamps increase by 1 ns per IAMAT of a
client, so every IAMAT is newer. After a wrong reply the connection goes on; a reset, a close by
the server, a timeout or a failed connect ends it (a connect-per-request slot moves on to its next
request). With -t, sending stops at the end and the replies outstanding are still awaited (up to
--timeout) and counted.

JSON keys (stable; times in microseconds, throughput per second):
  tool                  \"herd-bench\"
  version               herd-bench's version
  protocol              \"herd\" or \"redis\"
  targets               the ADDRs, as resolved
  connections, threads, depth, whatsat_percent, connect_per_request, warmup_s, timeout_s
                        the settings of the run (threads after capping at connections)
  seconds               measured time: from the end of the warm-up to the last reply
  requests              measured requests answered correctly (latency recorded for each)
  replies               the same number (the name used by earlier versions)
  whatsats              how many of `requests` were WHATSAT
  per_second            requests / seconds
  p50_us, p90_us, p99_us, p999_us, max_us, mean_us
                        latency of `requests`, from an HDR histogram (3 significant digits)
  errors                all errors, warm-up included (each failed request or connection once)
  errors_by_kind        {connect, timeout, closed, io, wrong_reply}: errors by cause
  connects              connections established
  first_error           the first error's description, or null

Exit status: 0 when no error happened, 1 when any did (a wrong reply is never a success), 2 for a
usage error.
";

/// Longest pipeline accepted: the output buffer of a connection holds at most this many requests.
pub const MAX_DEPTH: usize = 4096;
/// Most threads: more than cores only adds switching.
pub const MAX_THREADS: usize = 256;
/// Longest client id prefix (ids are sent in every request).
const MAX_PREFIX: usize = 200;

/// What the requests speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// IAMAT and WHATSAT, as PROTOCOL.md says.
    Herd,
    /// Redis inline `SET` commands.
    Redis,
}

impl Protocol {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Herd => "herd",
            Protocol::Redis => "redis",
        }
    }
}

/// A checked run configuration.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Where the connections go, round-robin.
    pub targets: Vec<SocketAddr>,
    /// Connections in all.
    pub connections: usize,
    /// Event-loop threads (at most `connections`).
    pub threads: usize,
    /// Requests outstanding per connection.
    pub depth: usize,
    /// Measured time; `None` when only `requests` bounds the run.
    pub duration: Option<Duration>,
    /// Measured requests; `None` when only `duration` bounds the run.
    pub requests: Option<u64>,
    /// Load before measuring.
    pub warmup: Duration,
    /// Longest wait for a reply or a connect.
    pub timeout: Duration,
    /// Share of WHATSAT requests, 0..=100.
    pub whatsat: u32,
    /// WHATSAT radius, as sent.
    pub radius: String,
    /// WHATSAT bound.
    pub bound: u32,
    /// One connection per request.
    pub connect_per_request: bool,
    /// What to speak.
    pub protocol: Protocol,
    /// Client ids are this plus the connection number.
    pub id_prefix: String,
    /// JSON output.
    pub json: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// A run.
    Run(Opts),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

fn number<T: std::str::FromStr>(name: &str, v: OsString) -> Result<T, String> {
    let s = v.to_string_lossy();
    s.trim().parse().map_err(|_| format!("{name} wants a whole number, not {s:?}"))
}

fn seconds(name: &str, v: OsString) -> Result<Duration, String> {
    let s = v.to_string_lossy();
    let secs: f64 = s.trim().parse().map_err(|_| format!("{name} wants seconds, not {s:?}"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{name} wants a number of seconds >= 0, not {s:?}"))
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut targets = Vec::new();
    let mut o = Opts {
        targets: Vec::new(),
        connections: 50,
        threads: 1,
        depth: 1,
        duration: None,
        requests: None,
        warmup: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        whatsat: 0,
        radius: "10".into(),
        bound: 5,
        connect_per_request: false,
        protocol: Protocol::Herd,
        id_prefix: format!("bench-{}-", std::process::id()),
        json: false,
    };
    let mut depth_given = false;
    let value = |p: &mut lexopt::Parser, name: &str| p.value().map_err(|e| format!("{name}: {e}"));
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Short('c') | Long("connections") => {
                o.connections = number("--connections", value(&mut p, "-c")?)?
            }
            Short('d') | Long("depth") => {
                o.depth = number("--depth", value(&mut p, "-d")?)?;
                depth_given = true;
            }
            Long("threads") => o.threads = number("--threads", value(&mut p, "--threads")?)?,
            Short('t') | Long("duration") => o.duration = Some(seconds("--duration", value(&mut p, "-t")?)?),
            Short('n') | Long("requests") => o.requests = Some(number("--requests", value(&mut p, "-n")?)?),
            Short('w') | Long("warmup") => o.warmup = seconds("--warmup", value(&mut p, "-w")?)?,
            Long("timeout") => o.timeout = seconds("--timeout", value(&mut p, "--timeout")?)?,
            Long("whatsat") => o.whatsat = number("--whatsat", value(&mut p, "--whatsat")?)?,
            Long("radius") => o.radius = value(&mut p, "--radius")?.to_string_lossy().trim().to_owned(),
            Long("bound") => o.bound = number("--bound", value(&mut p, "--bound")?)?,
            Long("connect-per-request") => o.connect_per_request = true,
            Long("protocol") => {
                let v = value(&mut p, "--protocol")?;
                o.protocol = match v.to_string_lossy().as_ref() {
                    "herd" => Protocol::Herd,
                    "redis" => Protocol::Redis,
                    other => return Err(format!("--protocol is herd or redis, not {other:?}")),
                };
            }
            Long("id-prefix") => {
                o.id_prefix = value(&mut p, "--id-prefix")?
                    .into_string()
                    .map_err(|_| "--id-prefix must be valid UTF-8".to_string())?
            }
            Long("json") => o.json = true,
            Value(v) => targets.push(v),
            other => return Err(other.unexpected().to_string()),
        }
    }
    o.targets = resolve(targets)?;
    check(&mut o, depth_given)?;
    Ok(Parsed::Run(o))
}

/// The server addresses, resolved.
fn resolve(targets: Vec<OsString>) -> Result<Vec<SocketAddr>, String> {
    if targets.is_empty() {
        return Err("give at least one server ADDR (like 127.0.0.1:12001)".into());
    }
    let mut addrs = Vec::new();
    for t in targets {
        let text = t.to_string_lossy().into_owned();
        let addr = text
            .to_socket_addrs()
            .map_err(|e| format!("bad ADDR {text:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("ADDR {text:?} resolves to no address"))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Checks the options against each other and their ranges, and fills in the default duration.
fn check(o: &mut Opts, depth_given: bool) -> Result<(), String> {
    if o.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if o.depth == 0 || o.depth > MAX_DEPTH {
        return Err(format!("--depth must be 1..{MAX_DEPTH}"));
    }
    if o.threads == 0 || o.threads > MAX_THREADS {
        return Err(format!("--threads must be 1..{MAX_THREADS}"));
    }
    o.threads = o.threads.min(o.connections);
    if o.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be above 0".into());
    }
    if o.requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    if o.duration.is_none() && o.requests.is_none() {
        o.duration = Some(Duration::from_secs(5));
    }
    if o.timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    if o.whatsat > 100 {
        return Err("--whatsat is a percentage, 0..100".into());
    }
    let radius_ok = !o.radius.is_empty()
        && o.radius.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && o.radius.parse::<f64>().is_ok_and(|r| r > 0.0 && r <= 50.0);
    if !radius_ok {
        return Err(format!("--radius must be a decimal number of km, 0 < KM <= 50, not {:?}", o.radius));
    }
    if o.bound == 0 || o.bound > 20 {
        return Err("--bound must be 1..20".into());
    }
    if o.protocol == Protocol::Redis && o.whatsat > 0 {
        return Err("--whatsat applies to --protocol herd only".into());
    }
    if o.connect_per_request && depth_given && o.depth > 1 {
        return Err("--connect-per-request sends one request per connection: --depth must be 1".into());
    }
    if o.id_prefix.len() > MAX_PREFIX || o.id_prefix.bytes().any(|b| b.is_ascii_whitespace() || b == b'\x0b')
    {
        return Err(format!("--id-prefix must be at most {MAX_PREFIX} bytes without white space"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Opts, String> {
        match parse(args.iter().map(OsString::from))? {
            Parsed::Run(o) => Ok(o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_measure_five_seconds_unless_requests_given() {
        let o = run(&["127.0.0.1:1"]).unwrap();
        assert_eq!((o.connections, o.depth, o.threads), (50, 1, 1));
        assert_eq!(o.duration, Some(Duration::from_secs(5)));
        let o = run(&["-n", "10", "127.0.0.1:1"]).unwrap();
        assert_eq!((o.duration, o.requests), (None, Some(10)));
        let o = run(&["-n", "10", "-t", "0.5", "127.0.0.1:1"]).unwrap();
        assert_eq!((o.duration, o.requests), (Some(Duration::from_millis(500)), Some(10)));
    }

    #[test]
    fn threads_are_capped_at_connections() {
        assert_eq!(run(&["-c", "2", "--threads", "8", "127.0.0.1:1"]).unwrap().threads, 2);
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            &["-c", "0", "127.0.0.1:1"][..],
            &["-d", "0", "127.0.0.1:1"],
            &["-t", "0", "127.0.0.1:1"],
            &["-t", "-1", "127.0.0.1:1"],
            &["-n", "0", "127.0.0.1:1"],
            &["--timeout", "0", "127.0.0.1:1"],
            &["--whatsat", "101", "127.0.0.1:1"],
            &["--radius", "51", "127.0.0.1:1"],
            &["--radius", "1e1", "127.0.0.1:1"],
            &["--bound", "21", "127.0.0.1:1"],
            &["--protocol", "http", "127.0.0.1:1"],
            &["--protocol", "redis", "--whatsat", "5", "127.0.0.1:1"],
            &["--connect-per-request", "-d", "4", "127.0.0.1:1"],
            &["--id-prefix", "a b", "127.0.0.1:1"],
            &["--frobnicate", "127.0.0.1:1"],
            &["-c", "x", "127.0.0.1:1"],
            &["not-an-address"],
            &[],
        ] {
            assert!(run(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
