//! The threads' tallies merged, and printed as text or as the JSON object of `--help`.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::opts::Opts;
use crate::worker::{ErrorCounts, Tally, new_histogram};

/// The whole run's result.
pub struct Summary {
    /// Measured time in seconds.
    pub seconds: f64,
    /// Measured correct replies.
    pub requests: u64,
    /// Of which WHATSAT.
    pub whatsats: u64,
    /// Latencies (ns) of `requests`.
    pub hist: Histogram<u64>,
    /// Errors by cause.
    pub errors: ErrorCounts,
    /// Connections established.
    pub connects: u64,
    /// The first few errors, earliest first.
    pub samples: Vec<String>,
}

impl Summary {
    /// Merges the threads' tallies; `extra` are failures outside them (a thread that could not
    /// run), counted as I/O errors.
    pub fn merge(tallies: Vec<Tally>, extra: Vec<String>, measure_start: Instant) -> Result<Self, String> {
        let mut s = Summary {
            seconds: 0.0,
            requests: 0,
            whatsats: 0,
            hist: new_histogram()?,
            errors: ErrorCounts { io: extra.len() as u64, ..ErrorCounts::default() },
            connects: 0,
            samples: extra,
        };
        let mut samples = Vec::new();
        let mut finished = measure_start;
        for t in tallies {
            s.hist.add(&t.hist).map_err(|e| format!("merging histograms: {e:?}"))?;
            s.requests += t.requests;
            s.whatsats += t.whatsats;
            s.errors.add(&t.errors);
            s.connects += t.connects;
            samples.extend(t.samples);
            finished = finished.max(t.finished);
        }
        samples.sort_by_key(|(at, _)| *at);
        s.samples.extend(samples.into_iter().map(|(_, m)| m));
        s.seconds = finished.saturating_duration_since(measure_start).as_secs_f64();
        Ok(s)
    }

    fn per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.requests as f64 / self.seconds } else { 0.0 }
    }

    /// Latency at `quantile`, in microseconds (0 without samples).
    fn us(&self, quantile: f64) -> f64 {
        if self.hist.is_empty() { 0.0 } else { self.hist.value_at_quantile(quantile) as f64 / 1000.0 }
    }

    fn max_us(&self) -> f64 {
        if self.hist.is_empty() { 0.0 } else { self.hist.max() as f64 / 1000.0 }
    }

    fn mean_us(&self) -> f64 {
        if self.hist.is_empty() { 0.0 } else { self.hist.mean() / 1000.0 }
    }

    /// The JSON object documented in `--help`.
    pub fn json(&self, o: &Opts) -> String {
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let e = &self.errors;
        json!({
            "tool": "herd-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": o.protocol.name(),
            "targets": o.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "connections": o.connections,
            "threads": o.threads,
            "depth": o.depth,
            "whatsat_percent": o.whatsat,
            "connect_per_request": o.connect_per_request,
            "warmup_s": o.warmup.as_secs_f64(),
            "timeout_s": o.timeout.as_secs_f64(),
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "requests": self.requests,
            "replies": self.requests,
            "whatsats": self.whatsats,
            "per_second": round(self.per_second()),
            "p50_us": round(self.us(0.5)),
            "p90_us": round(self.us(0.9)),
            "p99_us": round(self.us(0.99)),
            "p999_us": round(self.us(0.999)),
            "max_us": round(self.max_us()),
            "mean_us": round(self.mean_us()),
            "errors": e.total(),
            "errors_by_kind": {
                "connect": e.connect,
                "timeout": e.timeout,
                "closed": e.closed,
                "io": e.io,
                "wrong_reply": e.wrong_reply,
            },
            "connects": self.connects,
            "first_error": self.samples.first(),
        })
        .to_string()
    }

    /// The human-readable report.
    pub fn text(&self, o: &Opts) -> String {
        let targets: Vec<String> = o.targets.iter().map(ToString::to_string).collect();
        let mix = match (o.protocol.name(), o.whatsat) {
            ("redis", _) => "Redis SET".to_string(),
            (_, 0) => "IAMAT".to_string(),
            (_, p) => format!("IAMAT + {p}% WHATSAT"),
        };
        let mode = if o.connect_per_request { ", a connection per request" } else { "" };
        let e = &self.errors;
        let mut out = format!(
            "herd-bench: {mix} to {}: {} connections on {} thread(s), depth {}{mode}\n\
             {:>10} requests in {:.2} s = {:.0} req/s ({} WHATSAT), {} connects\n\
             latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}\n\
             {:>10} errors",
            targets.join(" "),
            o.connections,
            o.threads,
            o.depth,
            self.requests,
            self.seconds,
            self.per_second(),
            self.whatsats,
            self.connects,
            self.us(0.5),
            self.us(0.9),
            self.us(0.99),
            self.us(0.999),
            self.max_us(),
            self.mean_us(),
            e.total(),
        );
        if e.total() > 0 {
            out += &format!(
                " (connect {}, timeout {}, closed {}, io {}, wrong reply {})",
                e.connect, e.timeout, e.closed, e.io, e.wrong_reply
            );
        }
        out.push('\n');
        out
    }
}
