//! `herd-bench`: drives IAMAT load at one or more herd servers and checks every reply.
//!
//! Each connection runs on its own thread with a blocking socket: it writes `depth` IAMATs in one
//! write, reads `depth` replies, checks each (a wrong reply is an error, never a success), and
//! records the batch's round-trip time. Bounded by `--duration` and `--requests`; it never
//! retries. See `herd-bench --help`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
herd-bench: IAMAT load against herd servers, every reply checked

Usage: herd-bench [options] ADDR [ADDR...]     (ADDR like 127.0.0.1:12001)

Options:
  -c, --connections N   concurrent connections, spread over the ADDRs [default: 50]
  -d, --depth N         IAMATs pipelined per round trip [default: 1]
  -t, --duration SECS   how long to run [default: 5]
  -n, --requests N      stop after this many IAMATs in all [default: unlimited]
  -w, --warmup SECS     load before measuring starts [default: 1]
      --timeout SECS    a reply later than this is an error [default: 5]
      --json            print the result as one JSON object
  -h, --help
";

struct Opts {
    addrs: Vec<SocketAddr>,
    connections: usize,
    depth: usize,
    duration: Duration,
    requests: u64,
    warmup: Duration,
    timeout: Duration,
    json: bool,
}

fn parse() -> Result<Option<Opts>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut o = Opts {
        addrs: Vec::new(),
        connections: 50,
        depth: 1,
        duration: Duration::from_secs(5),
        requests: u64::MAX,
        warmup: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        json: false,
    };
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('c') | Long("connections") => o.connections = p.value()?.parse()?,
            Short('d') | Long("depth") => o.depth = p.value()?.parse()?,
            Short('t') | Long("duration") => o.duration = Duration::from_secs_f64(p.value()?.parse()?),
            Short('n') | Long("requests") => o.requests = p.value()?.parse()?,
            Short('w') | Long("warmup") => o.warmup = Duration::from_secs_f64(p.value()?.parse()?),
            Long("timeout") => o.timeout = Duration::from_secs_f64(p.value()?.parse()?),
            Long("json") => o.json = true,
            Value(v) => o.addrs.push(v.parse()?),
            other => return Err(other.unexpected()),
        }
    }
    if o.addrs.is_empty() {
        return Err("give at least one server ADDR".into());
    }
    if o.connections == 0 || o.depth == 0 {
        return Err("--connections and --depth must be at least 1".into());
    }
    Ok(Some(o))
}

struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    sent: AtomicU64,
    errors: AtomicU64,
}

struct Outcome {
    replies: u64,
    latencies_ns: Vec<u64>,
    error: Option<String>,
}

fn worker(id: usize, addr: SocketAddr, o: &Opts, shared: &Shared) -> Outcome {
    let mut out = Outcome { replies: 0, latencies_ns: Vec::new(), error: None };
    let stream = match TcpStream::connect_timeout(&addr, o.timeout) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect to {addr}: {e}"));
            return out;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(o.timeout));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut batch = Vec::with_capacity(o.depth * 64);
    let mut line = Vec::with_capacity(128);
    let mut seq: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.sent.fetch_add(o.depth as u64, Ordering::Relaxed) >= o.requests {
            break;
        }
        batch.clear();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        for k in 0..o.depth {
            let _ = writeln!(
                batch,
                "IAMAT bench-{id}-{} +34.068930-118.445127 {}.{:09}",
                (seq + k as u64) % 1000,
                now.as_secs(),
                now.subsec_nanos()
            );
        }
        let start = Instant::now();
        if let Err(e) = writer.write_all(&batch) {
            out.error = Some(format!("write: {e}"));
            break;
        }
        for k in 0..o.depth {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => {
                    out.error = Some("server closed the connection".into());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    out.error = Some(format!("read: {e}"));
                    break;
                }
            }
            let want = format!(" bench-{id}-{} +34.068930-118.445127 ", (seq + k as u64) % 1000);
            let ok = line.starts_with(b"AT ")
                && line.ends_with(b"\n")
                && line.windows(want.len()).any(|w| w == want.as_bytes());
            if !ok {
                out.error = Some(format!("wrong reply: {}", line.escape_ascii()));
                break;
            }
        }
        if out.error.is_some() {
            break;
        }
        let rtt = start.elapsed().as_nanos() as u64;
        if shared.measuring.load(Ordering::Relaxed) {
            out.replies += o.depth as u64;
            out.latencies_ns.push(rtt);
        }
        seq += o.depth as u64;
    }
    if out.error.is_some() {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(Some(o)) => Arc::new(o),
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("herd-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(o.warmup.is_zero()),
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let handles: Vec<_> = (0..o.connections)
        .map(|i| {
            let (o, shared) = (Arc::clone(&o), Arc::clone(&shared));
            std::thread::spawn(move || worker(i, o.addrs[i % o.addrs.len()], &o, &shared))
        })
        .collect();
    let begin = Instant::now();
    let deadline = begin + o.warmup + o.duration;
    let mut measure_start = begin;
    while Instant::now() < deadline && shared.errors.load(Ordering::Relaxed) == 0 {
        if !shared.measuring.load(Ordering::Relaxed) && Instant::now() >= begin + o.warmup {
            measure_start = Instant::now();
            shared.measuring.store(true, Ordering::Relaxed);
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    let mut replies = 0;
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => {
                replies += r.replies;
                lat.extend(r.latencies_ns);
                errors.extend(r.error);
            }
            Err(_) => errors.push("worker panicked".into()),
        }
    }
    lat.sort_unstable();
    let rate = replies as f64 / elapsed;
    let ps = [50.0, 90.0, 99.0, 99.9].map(|p| percentile(&lat, p));
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    if o.json {
        println!(
            "{{\"connections\":{},\"depth\":{},\"seconds\":{elapsed:.3},\"replies\":{replies},\"per_second\":{rate:.0},\
             \"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{max:.1},\"errors\":{}}}",
            o.connections,
            o.depth,
            ps[0],
            ps[1],
            ps[2],
            ps[3],
            errors.len()
        );
    } else {
        println!(
            "{} connections, depth {}: {replies} replies in {elapsed:.2} s = {rate:.0}/s; \
             round trip p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {max:.0} us; {} errors",
            o.connections,
            o.depth,
            ps[0],
            ps[1],
            ps[2],
            ps[3],
            errors.len()
        );
    }
    for e in errors.iter().take(5) {
        eprintln!("herd-bench: {e}");
    }
    if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
