//! `herd-bench`: the load tool for herds (and, for comparison, Redis). See `herd-bench --help`.
//!
//! Connections are spread over `--threads` event-loop threads ([`worker`]), each a mio loop over
//! non-blocking, edge-triggered sockets, so one pinned core can drive a fast server. Every reply
//! is checked ([`wire`]); a wrong one is an error, never a success. Latencies go into
//! per-thread HDR histograms merged at the end ([`report`]); memory is bounded whatever the
//! duration (fixed histograms, per-connection buffers bounded by `--depth` and
//! [`wire::MAX_REPLY`], a handful of error descriptions).
//!
//! The main thread only starts the workers, prints a progress line once a second when stderr is
//! a terminal, and reports.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

mod opts;
mod report;
mod wire;
mod worker;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opts::{Opts, Parsed, USAGE};
use report::Summary;
use worker::{Live, Plan, Tally};

fn main() -> ExitCode {
    let opts = match opts::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("herd-bench {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("herd-bench: {e}\nTry `herd-bench --help`.");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("herd-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the load and prints the report; `Ok(true)` when no error happened.
fn run(opts: Opts) -> Result<bool, String> {
    let ts_base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_nanos();
    let ts_base = u64::try_from(ts_base).map_err(|_| "the clock is past 2554".to_string())?;
    let begin = Instant::now();
    let measure_start = begin + opts.warmup;
    let plan = Plan {
        whatsat_args: format!(" {} {}", opts.radius, opts.bound).into_bytes(),
        measure_start,
        end: opts.duration.map(|d| measure_start + d),
        claimed: AtomicU64::new(0),
        ts_base,
        opts,
    };
    let o = &plan.opts;
    let lives: Vec<Live> = (0..o.threads).map(|_| Live::default()).collect();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let results: Vec<Result<Tally, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..o.threads)
            .map(|t| {
                // Contiguous blocks of connections per thread; targets alternate within each.
                let slots = t * o.connections / o.threads..(t + 1) * o.connections / o.threads;
                let (plan, live, done) = (&plan, &lives[t], done_tx.clone());
                s.spawn(move || {
                    let r = worker::run(plan, slots, live);
                    drop(done);
                    r
                })
            })
            .collect();
        drop(done_tx);
        progress(&plan, &lives, begin, &done_rx);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a load thread panicked".into())))
            .collect()
    });
    let mut tallies = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(t) => tallies.push(t),
            Err(e) => failures.push(e),
        }
    }
    let summary = Summary::merge(tallies, failures, measure_start)?;
    if o.json {
        println!("{}", summary.json(o));
    } else {
        print!("{}", summary.text(o));
    }
    let _ = std::io::stdout().flush();
    let errors = summary.errors.total();
    for e in &summary.samples {
        eprintln!("herd-bench: error: {e}");
    }
    if errors > summary.samples.len() as u64 {
        eprintln!("herd-bench: ... {} errors in all", errors);
    }
    Ok(errors == 0)
}

/// Waits for the workers; meanwhile, when stderr is a terminal, rewrites one status line about
/// once a second.
fn progress(plan: &Plan, lives: &[Live], begin: Instant, done: &mpsc::Receiver<()>) {
    let tty = std::io::stderr().is_terminal();
    let tick = Duration::from_secs(1);
    let mut last = (Instant::now(), 0u64);
    let mut shown = false;
    // Ends when every worker has dropped its sender.
    while let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(tick) {
        if !tty {
            continue;
        }
        let now = Instant::now();
        let ok: u64 = lives.iter().map(|l| l.ok.load(Ordering::Relaxed)).sum();
        let errors: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
        let rate = (ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, ok);
        let phase = if now < plan.measure_start {
            "warm-up "
        } else if plan.end.is_some_and(|e| now >= e) {
            "draining "
        } else {
            ""
        };
        eprint!(
            "\r{:6.1} s {phase}{rate:>10.0} req/s {ok:>12} replies {errors:>6} errors ",
            now.duration_since(begin).as_secs_f64()
        );
        shown = true;
    }
    if shown {
        eprint!("\r{:79}\r", "");
    }
}
