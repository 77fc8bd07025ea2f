//! WHATSAT: from a client's question to Places and back, with no sockets and no clock.
//!
//! Each WHATSAT for a known client goes through these steps, in order:
//! 1. **Canonical request.** The upstream request is made canonical ([`Key`]): the location
//!    rounded to 1e-6 degrees (at most 0.11 m, below any client's own precision) and the radius
//!    to whole metres (Google takes the radius in metres; a change below one metre can only move
//!    a place across the circle's edge by less than the precision of the client's own location).
//!    Requests that cannot differ in Google's answer then share one key. A radius that rounds to
//!    zero is refused with `? `: Google would refuse or misread `"radius":0.0`.
//! 2. **Cache.** A fresh cached answer for the key replies at once, without asking Google.
//! 3. **Join.** A request for the key in flight, or waiting its turn, takes the WHATSAT along.
//! 4. **Rate limit.** Anything else costs one upstream request, which the connection's token
//!    bucket must allow; a WHATSAT over it gets `? ` at once. Cache hits and joins are free.
//! 5. **Fair turn.** Fewer than `max_in_flight` requests in flight: it starts. Otherwise it
//!    waits its turn in arrival order, in a queue of at most `max_queued` (beyond that: `? ` at
//!    once). A connection's lines wait behind its own pending WHATSAT, so one connection holds at
//!    most one request in flight or queued: many connections take turns, and none can crowd a
//!    legitimate client out of the pool for longer than one turn of each other connection.
//!
//! The deadline (`timeout`) runs from the WHATSAT's arrival, queued or in flight. Repeated
//! warnings (no key, limits, failing upstream) are logged once per [`WARN_INTERVAL`] with a count,
//! so a hostile or failing stream of requests cannot flood the log.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::{ConnId, Output, QueryId, Stats, WhatsatPolicy};
use crate::places::PlacesApi;
use crate::places::client::Failure;
use crate::places::response::Response;
use crate::places::{self, Query, convert};
use crate::proto;

/// Repeated warnings of one kind are logged once per interval, with the count of those not
/// logged: the first shows what is happening, the count how often, and an attacker who makes
/// every request fail cannot turn each into a log line.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How often the rate limiter forgets connections whose bucket has refilled (they carry no
/// information): bounds its memory by the connections that asked within the last burst's worth.
const BUCKET_SWEEP: Duration = Duration::from_secs(1);

/// Fixed bytes counted per cache entry besides its body (key, deadline, index entries), so
/// that many tiny answers cannot hold more memory than `cache_bytes` says.
const CACHE_ENTRY_OVERHEAD: usize = 128;

/// The most results Google gives one Nearby Search, and what a legacy request (which takes no
/// count) asks for.
const MAX_RESULTS: u8 = 20;

/// One upstream request, canonical: two WHATSATs with the same key send the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    lat_e6: i64,
    lng_e6: i64,
    radius_m: u32,
    /// `maxResultCount` for the New API; [`MAX_RESULTS`] for legacy, which takes no count (so
    /// every bound shares one legacy request and the answer is cut per WHATSAT).
    count: u8,
}

impl Key {
    /// The key for a WHATSAT at (`lat`, `lng`) degrees within `radius_km`, wanting `bound`
    /// results; `None` if the radius rounds to zero metres.
    pub(super) fn new(api: PlacesApi, lat: f64, lng: f64, radius_km: f64, bound: u8) -> Option<Self> {
        let radius_m = (radius_km * 1000.0).round();
        if radius_m.is_nan() || radius_m < 1.0 {
            return None;
        }
        let count = match api {
            PlacesApi::New => bound,
            PlacesApi::Legacy => MAX_RESULTS,
        };
        Some(Self {
            lat_e6: (lat * 1e6).round() as i64,
            lng_e6: (lng * 1e6).round() as i64,
            radius_m: radius_m as u32,
            count,
        })
    }

    /// What to ask Places.
    fn query(self) -> Query {
        Query {
            lat: self.lat_e6 as f64 / 1e6,
            lng: self.lng_e6 as f64 / 1e6,
            radius_m: f64::from(self.radius_m),
            bound: self.count,
        }
    }
}

/// A WHATSAT waiting for an answer.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) conn: ConnId,
    /// The client's record when the WHATSAT arrived: the reply's first line.
    pub(super) at_line: Vec<u8>,
    /// The WHATSAT as received, for a `? ` reply if the request fails.
    pub(super) line: Vec<u8>,
    /// Most results this WHATSAT wants.
    pub(super) bound: u8,
}

/// An upstream request, in flight or waiting its turn, and the WHATSATs waiting for it.
#[derive(Debug)]
struct Request {
    key: Key,
    /// From the first WHATSAT's arrival.
    deadline: Instant,
    waiters: Vec<Waiter>,
}

/// The kinds of warning, each throttled on its own.
#[derive(Debug, Clone, Copy)]
enum Warning {
    NoKey,
    RateLimited,
    QueueFull,
    Failed,
    Deadline,
}

impl Warning {
    const ALL: usize = 5;

    /// What the count line says of the ones not logged.
    fn summary(self) -> &'static str {
        match self {
            Self::NoKey => "WHATSATs answered `?`: no Places API key is configured",
            Self::RateLimited => "WHATSATs answered `?`: the connection is over its Places rate limit",
            Self::QueueFull => {
                "WHATSATs answered `?`: Places requests in flight and queued are at their limits"
            }
            Self::Failed => "Places requests failed",
            Self::Deadline => "Places requests failed: no answer within the deadline",
        }
    }
}

/// Logs a kind of warning at most once per [`WARN_INTERVAL`], then the count of the others.
#[derive(Debug, Default)]
struct Throttle {
    /// Per kind: until when further ones are only counted, and how many were.
    slots: [(Option<Instant>, u64); Warning::ALL],
}

impl Throttle {
    fn warn(&mut self, now: Instant, kind: Warning, message: fmt::Arguments<'_>) {
        let (quiet_until, suppressed) = &mut self.slots[kind as usize];
        if quiet_until.is_some_and(|t| now < t) {
            *suppressed += 1;
            return;
        }
        if *suppressed > 0 {
            log::warn!("{message} (and {suppressed} more like it before)");
        } else {
            log::warn!("{message}");
        }
        *quiet_until = Some(now + WARN_INTERVAL);
        *suppressed = 0;
    }

    /// Logs the counts of kinds whose interval has passed.
    fn flush(&mut self, now: Instant) {
        let kinds =
            [Warning::NoKey, Warning::RateLimited, Warning::QueueFull, Warning::Failed, Warning::Deadline];
        for kind in kinds {
            let (quiet_until, suppressed) = &mut self.slots[kind as usize];
            if *suppressed > 0 && quiet_until.is_some_and(|t| t <= now) {
                log::warn!(
                    "{} more {} in the last {} s",
                    suppressed,
                    kind.summary(),
                    WARN_INTERVAL.as_secs()
                );
                *suppressed = 0;
                *quiet_until = None;
            }
        }
    }

    /// When a count is due.
    fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().filter(|(_, n)| *n > 0).filter_map(|(t, _)| *t).min()
    }
}

/// Per connection, a token bucket of upstream requests, kept as GCRA's one "theoretical arrival
/// time" per connection: a request at `now` is allowed while that time is no later than
/// `now + tolerance`, and each allowed request pushes it on by one `interval`.
#[derive(Debug)]
struct RateLimit {
    /// One request's worth of refill; `None`: no limit.
    interval: Option<Duration>,
    /// `burst - 1` intervals: how far ahead of `now` a connection may run.
    tolerance: Duration,
    tat: HashMap<ConnId, Instant>,
    next_sweep: Option<Instant>,
}

impl RateLimit {
    fn new(rate_per_s: f64, burst: u32) -> Self {
        // Config bounds the rate; a policy built by hand with a rate no duration can express
        // (0, negative, NaN, or below about 1e-19/s) means no limit rather than a panic.
        let interval =
            (rate_per_s > 0.0).then(|| Duration::try_from_secs_f64(1.0 / rate_per_s).ok()).flatten();
        let tolerance = interval
            .map_or(Duration::ZERO, |i| i.checked_mul(burst.saturating_sub(1)).unwrap_or(Duration::MAX));
        Self { interval, tolerance, tat: HashMap::new(), next_sweep: None }
    }

    /// Takes a token from `conn`'s bucket if it has one.
    fn allow(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(interval) = self.interval else { return true };
        self.sweep(now);
        let tat = self.tat.get(&conn).map_or(now, |&t| t.max(now));
        // Past what an `Instant` can hold, the bucket cannot run dry.
        if now.checked_add(self.tolerance).is_some_and(|limit| tat > limit) {
            return false;
        }
        if let Some(next) = tat.checked_add(interval) {
            self.tat.insert(conn, next);
        }
        true
    }

    /// Forgets connections whose bucket is full again (closed ones among them).
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.tat.retain(|_, t| *t > now);
        self.next_sweep = Some(now + BUCKET_SWEEP);
    }
}

/// A cached answer.
#[derive(Debug)]
struct Cached {
    response: Response,
    /// The reply JSON for each bound asked so far: a hit copies it rather than converting an
    /// answer of up to 2 MiB again, so hits cost the loop little whoever sends them.
    converted: Vec<(u8, Vec<u8>)>,
    /// Bytes of `converted`, counted in the cache's bound.
    converted_bytes: usize,
    expires: Instant,
    /// Matches the entry's place in `Cache::order`.
    generation: u64,
}

/// Answers by key for `ttl`, at most `max_bytes` in all, oldest evicted first. Every entry
/// lives `ttl`, so the oldest inserted is also the first to expire: one FIFO serves both.
#[derive(Debug)]
struct Cache {
    ttl: Duration,
    max_bytes: usize,
    bytes: usize,
    map: HashMap<Key, Cached>,
    order: VecDeque<(Key, u64)>,
    next_generation: u64,
}

impl Cache {
    fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self { ttl, max_bytes, bytes: 0, map: HashMap::new(), order: VecDeque::new(), next_generation: 0 }
    }

    fn cost(response: &Response) -> usize {
        response.body.len() + CACHE_ENTRY_OVERHEAD
    }

    fn contains(&mut self, now: Instant, key: &Key) -> bool {
        self.expire(now);
        self.map.contains_key(key)
    }

    /// The reply JSON of the answer cached for `key`, for a WHATSAT wanting `bound` results;
    /// `None` if none is cached.
    fn json(
        &mut self,
        now: Instant,
        key: &Key,
        api: PlacesApi,
        bound: u8,
    ) -> Option<Result<Cow<'_, [u8]>, ()>> {
        self.expire(now);
        let c = self.map.get_mut(key)?;
        if let Some(i) = c.converted.iter().position(|(b, _)| *b == bound) {
            return Some(Ok(Cow::Borrowed(&c.converted[i].1)));
        }
        let Ok(json) = reply_json(api, &c.response, bound) else { return Some(Err(())) };
        if self.bytes + json.len() > self.max_bytes {
            return Some(Ok(Cow::Owned(json)));
        }
        self.bytes += json.len();
        c.converted_bytes += json.len();
        c.converted.push((bound, json));
        c.converted.last().map(|(_, j)| Ok(Cow::Borrowed(&j[..])))
    }

    fn insert(&mut self, now: Instant, key: Key, response: Response) {
        let cost = Self::cost(&response);
        if self.ttl.is_zero() || cost > self.max_bytes {
            return;
        }
        self.remove(&key);
        while self.bytes + cost > self.max_bytes {
            let Some((old, generation)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|c| c.generation == generation) {
                self.remove(&old);
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.bytes += cost;
        self.order.push_back((key, generation));
        let cached = Cached {
            response,
            converted: Vec::new(),
            converted_bytes: 0,
            expires: now + self.ttl,
            generation,
        };
        self.map.insert(key, cached);
    }

    fn remove(&mut self, key: &Key) {
        if let Some(c) = self.map.remove(key) {
            self.bytes -= Self::cost(&c.response) + c.converted_bytes;
        }
    }

    /// Drops expired entries (they are at the front).
    fn expire(&mut self, now: Instant) {
        while let Some(&(key, generation)) = self.order.front() {
            match self.map.get(&key) {
                Some(c) if c.generation == generation && c.expires > now => break,
                Some(c) if c.generation == generation => self.remove(&key),
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// When the oldest entry expires.
    fn poll_timeout(&self) -> Option<Instant> {
        let &(key, _) = self.order.front()?;
        self.map.get(&key).map(|c| c.expires)
    }
}

/// What [`Whatsat::ask`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Asked {
    /// The reply is in the caller's buffer.
    Replied,
    /// The reply comes later as [`Output::Reply`].
    Pending,
}

/// The WHATSAT flow of one node.
#[derive(Debug)]
pub(super) struct Whatsat {
    settings: WhatsatPolicy,
    in_flight: Vec<(QueryId, Request)>,
    queue: VecDeque<Request>,
    cache: Cache,
    rate: RateLimit,
    warnings: Throttle,
    next_query: u64,
}

impl Whatsat {
    pub(super) fn new(settings: WhatsatPolicy) -> Self {
        Self {
            cache: Cache::new(settings.cache_ttl, settings.cache_bytes),
            rate: RateLimit::new(settings.rate_limit, settings.rate_burst),
            settings,
            in_flight: Vec::new(),
            queue: VecDeque::new(),
            warnings: Throttle::default(),
            next_query: 0,
        }
    }

    pub(super) fn settings(&self) -> &WhatsatPolicy {
        &self.settings
    }

    /// A WHATSAT of `waiter` for `key` at `now`: answered from the cache into `reply`, or
    /// pending, or refused (`None`: the caller answers `? `).
    pub(super) fn ask(
        &mut self,
        now: Instant,
        key: Key,
        waiter: Waiter,
        reply: &mut Vec<u8>,
        out: &mut Outputs<'_>,
    ) -> Option<Asked> {
        if !self.settings.has_key {
            self.warnings.warn(
                now,
                Warning::NoKey,
                format_args!("WHATSAT answered `?`: no Places API key is configured"),
            );
            return None;
        }
        if let Some(json) = self.cache.json(now, &key, self.settings.api, waiter.bound) {
            out.stats.cache_hits += 1;
            log::debug!("places cache hit: {:?}", key.query());
            // A cached answer converted once already; this cannot fail, but if it did the
            // WHATSAT still gets its `? `.
            let json = json.ok()?;
            places::write_whatsat_reply(reply, &waiter.at_line, &json);
            return Some(Asked::Replied);
        }
        if let Some((_, r)) = self.in_flight.iter_mut().find(|(_, r)| r.key == key) {
            r.waiters.push(waiter);
            return Some(Asked::Pending);
        }
        if let Some(r) = self.queue.iter_mut().find(|r| r.key == key) {
            r.waiters.push(waiter);
            return Some(Asked::Pending);
        }
        out.stats.cache_misses += 1;
        log::debug!("places cache miss: {:?}", key.query());
        if !self.rate.allow(now, waiter.conn) {
            self.warnings.warn(
                now,
                Warning::RateLimited,
                format_args!(
                    "WHATSAT answered `?`: connection c{} is over its Places rate limit ({}/s, burst {})",
                    waiter.conn.0, self.settings.rate_limit, self.settings.rate_burst
                ),
            );
            return None;
        }
        let request = Request { key, deadline: now + self.settings.timeout, waiters: vec![waiter] };
        if self.in_flight.len() < self.settings.max_in_flight {
            self.start(request, out);
        } else if self.queue.len() < self.settings.max_queued {
            self.queue.push_back(request);
        } else {
            self.warnings.warn(
                now,
                Warning::QueueFull,
                format_args!(
                    "WHATSAT answered `?`: {} Places requests in flight and {} waiting",
                    self.settings.max_in_flight, self.settings.max_queued
                ),
            );
            return None;
        }
        Some(Asked::Pending)
    }

    fn start(&mut self, request: Request, out: &mut Outputs<'_>) {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        out.stats.places_sent += 1;
        out.outputs.push_back(Output::Places { id, query: request.key.query() });
        self.in_flight.push((id, request));
    }

    /// The answer to request `id`: every WHATSAT waiting for it is answered, the answer cached,
    /// and the next queued request started.
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        id: QueryId,
        result: Result<Response, Failure>,
        out: &mut Outputs<'_>,
    ) {
        // Absent: already answered with `?` when its deadline passed.
        if let Some(pos) = self.in_flight.iter().position(|(i, _)| *i == id) {
            let (_, request) = self.in_flight.swap_remove(pos);
            self.answer(now, id, request, result, out);
        }
        self.pump(now, out);
    }

    fn answer(
        &mut self,
        now: Instant,
        id: QueryId,
        request: Request,
        result: Result<Response, Failure>,
        out: &mut Outputs<'_>,
    ) {
        let response = match result {
            Ok(r) => r,
            Err(cause) => {
                self.warnings.warn(
                    now,
                    Warning::Failed,
                    format_args!("Places request {} failed: {cause}", id.0),
                );
                return fail(request, out);
            }
        };
        // Converted once per bound, however many WHATSATs joined: a 2 MiB answer is not parsed
        // again for each of them on the loop.
        let mut converted: Vec<(u8, Result<Vec<u8>, places::PlacesError>)> = Vec::new();
        let mut usable = true;
        for w in request.waiters {
            let i = match converted.iter().position(|(b, _)| *b == w.bound) {
                Some(i) => i,
                None => {
                    converted.push((w.bound, reply_json(self.settings.api, &response, w.bound)));
                    converted.len() - 1
                }
            };
            match &converted[i].1 {
                Ok(json) => reply_to(w, json, out),
                Err(e) => {
                    if usable {
                        self.warnings.warn(
                            now,
                            Warning::Failed,
                            format_args!("Places request {} failed: {e}", id.0),
                        );
                        out.stats.places_failed += 1;
                    }
                    usable = false;
                    fail_one(w, out);
                }
            }
        }
        // Only answers that converted are cached: an error answer must be asked again.
        if usable {
            self.cache.insert(now, request.key, response);
        }
    }

    /// Starts queued requests while the pool has room, in arrival order; a queued request whose
    /// answer was cached meanwhile is answered from the cache.
    fn pump(&mut self, now: Instant, out: &mut Outputs<'_>) {
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(request) = self.queue.pop_front() else { return };
            if !self.cache.contains(now, &request.key) {
                self.start(request, out);
                continue;
            }
            out.stats.cache_hits += request.waiters.len() as u64;
            for w in request.waiters {
                match self.cache.json(now, &request.key, self.settings.api, w.bound).unwrap_or(Err(())) {
                    Ok(json) => reply_to(w, &json, out),
                    Err(_) => fail_one(w, out),
                }
            }
        }
    }

    /// Answers `? ` to WHATSATs past their deadline, cancelling their requests; starts what the
    /// pool now has room for; expires the cache; logs due warning counts.
    pub(super) fn handle_timeout(&mut self, now: Instant, out: &mut Outputs<'_>) {
        let timeout_ms = self.settings.timeout.as_millis();
        while let Some(pos) = self.in_flight.iter().position(|(_, r)| r.deadline <= now) {
            let (id, request) = self.in_flight.swap_remove(pos);
            self.warnings.warn(
                now,
                Warning::Deadline,
                format_args!("Places request {} failed: no answer within {timeout_ms} ms", id.0),
            );
            out.outputs.push_back(Output::CancelPlaces(id));
            fail(request, out);
        }
        while self.queue.front().is_some_and(|r| r.deadline <= now) {
            let Some(request) = self.queue.pop_front() else { break };
            self.warnings.warn(
                now,
                Warning::Deadline,
                format_args!("a queued Places request failed: no turn within {timeout_ms} ms"),
            );
            fail(request, out);
        }
        self.pump(now, out);
        self.cache.expire(now);
        self.warnings.flush(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let in_flight = self.in_flight.iter().map(|(_, r)| r.deadline);
        let queued = self.queue.front().map(|r| r.deadline);
        in_flight.chain(queued).chain(self.cache.poll_timeout()).chain(self.warnings.poll_timeout()).min()
    }
}

/// Where the flow's effects go: the node's outputs and counters.
pub(super) struct Outputs<'a> {
    pub(super) outputs: &'a mut VecDeque<Output>,
    pub(super) stats: &'a mut Stats,
}

/// The legacy-shaped JSON for a WHATSAT wanting `bound` results.
fn reply_json(api: PlacesApi, response: &Response, bound: u8) -> Result<Vec<u8>, places::PlacesError> {
    match api {
        PlacesApi::New => convert::new_to_legacy(response, bound),
        PlacesApi::Legacy => convert::legacy_cut(response, bound),
    }
}

/// Answers WHATSAT `w` with `json` behind its AT line.
fn reply_to(w: Waiter, json: &[u8], out: &mut Outputs<'_>) {
    let mut bytes = Vec::with_capacity(w.at_line.len() + json.len() + 3);
    places::write_whatsat_reply(&mut bytes, &w.at_line, json);
    out.outputs.push_back(Output::Reply { conn: w.conn, bytes });
}

/// Answers `? ` to every WHATSAT waiting for a failed request.
fn fail(request: Request, out: &mut Outputs<'_>) {
    out.stats.places_failed += 1;
    for w in request.waiters {
        fail_one(w, out);
    }
}

fn fail_one(w: Waiter, out: &mut Outputs<'_>) {
    out.stats.invalid += 1;
    let mut bytes = Vec::with_capacity(w.line.len() + 3);
    proto::write_invalid(&mut bytes, &w.line);
    out.outputs.push_back(Output::Reply { conn: w.conn, bytes });
}

#[cfg(test)]
#[path = "whatsat_tests.rs"]
mod tests;
