//! One load thread: a mio event loop over its share of the connections.
//!
//! Each connection is a small state machine (`Idle` -> `Connecting` -> `Open` -> ... -> `Done`)
//! with its own client id, a queue of outstanding requests (at most `depth`), a fixed-size
//! output buffer and an input buffer that grows only while one reply is larger than it (up to
//! [`wire::MAX_REPLY`]). Sockets are registered once for both directions, edge-triggered; the
//! readiness bits are kept here.
//!
//! Each loop turn: wait for readiness (at most [`SWEEP`], or until the end of the run); for each
//! ready connection finish connecting, read and check every complete reply, top the pipeline
//! back up to `depth` (new requests for all replies of the read go out in one write), and write
//! until done or `WouldBlock`; every [`SWEEP`] look for timeouts and finished connections.
//! Reading until `WouldBlock` is fair here without a budget: a connection can have at most
//! `depth` replies coming, since nothing new is sent until the reads are done.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::opts::{Opts, Protocol};
use crate::wire::{self, Kind};

/// How often timeouts and finished connections are looked for: the precision of `--timeout`.
const SWEEP: Duration = Duration::from_millis(20);
/// Initial input buffer per connection (many pipelined IAMAT replies).
const INPUT: usize = 8 << 10;
/// Error descriptions kept per thread; the rest are only counted.
const SAMPLES: usize = 5;
/// Highest latency the histogram tells apart (larger ones are recorded as this): one hour.
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// An empty latency histogram: nanoseconds from 1 to [`HIST_MAX_NS`], three significant digits
/// (a fixed few hundred kilobytes, however long the run).
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).map_err(|e| format!("histogram: {e}"))
}

/// What every thread shares, read-only except for the request budget.
pub struct Plan {
    /// The run's settings.
    pub opts: Opts,
    /// ` <radius> <bound>`, the end of every WHATSAT.
    pub whatsat_args: Vec<u8>,
    /// Measuring starts here (the warm-up ends).
    pub measure_start: Instant,
    /// No request is sent from here on (`None`: until the budget is spent).
    pub end: Option<Instant>,
    /// Measured requests handed out so far, against `opts.requests`.
    pub claimed: AtomicU64,
    /// Wall clock at the start, in nanoseconds: clients' timestamps count up from it.
    pub ts_base: u64,
}

/// Counters a thread publishes once per loop turn for the progress line.
#[derive(Default)]
#[repr(align(64))]
pub struct Live {
    /// Correct replies, warm-up included.
    pub ok: AtomicU64,
    /// Errors.
    pub errors: AtomicU64,
}

/// Why something failed.
#[derive(Clone, Copy, Debug)]
pub enum ErrorKind {
    /// A connect was refused, failed or took longer than `--timeout`.
    Connect,
    /// A reply took longer than `--timeout`.
    Timeout,
    /// The server closed the connection while replies were owed or more requests were due.
    Closed,
    /// A read or write failed (reset, ...).
    Io,
    /// A reply was not the one the request calls for, or came with no request outstanding.
    WrongReply,
}

/// Errors by cause.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorCounts {
    /// [`ErrorKind::Connect`].
    pub connect: u64,
    /// [`ErrorKind::Timeout`].
    pub timeout: u64,
    /// [`ErrorKind::Closed`].
    pub closed: u64,
    /// [`ErrorKind::Io`].
    pub io: u64,
    /// [`ErrorKind::WrongReply`].
    pub wrong_reply: u64,
}

impl ErrorCounts {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.closed + self.io + self.wrong_reply
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.closed += other.closed;
        self.io += other.io;
        self.wrong_reply += other.wrong_reply;
    }

    fn count(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Closed => self.closed += 1,
            ErrorKind::Io => self.io += 1,
            ErrorKind::WrongReply => self.wrong_reply += 1,
        }
    }
}

/// What one thread measured.
pub struct Tally {
    /// Latency of each measured correct reply, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Measured requests answered correctly.
    pub requests: u64,
    /// How many of those were WHATSAT.
    pub whatsats: u64,
    /// Correct replies, warm-up included.
    pub ok_all: u64,
    /// Errors by cause.
    pub errors: ErrorCounts,
    /// The first few errors, described, with when they happened.
    pub samples: Vec<(Instant, String)>,
    /// Connections established.
    pub connects: u64,
    /// When the last connection of this thread finished.
    pub finished: Instant,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            hist: new_histogram()?,
            requests: 0,
            whatsats: 0,
            ok_all: 0,
            errors: ErrorCounts::default(),
            samples: Vec::new(),
            connects: 0,
            finished: Instant::now(),
        })
    }

    fn error(&mut self, kind: ErrorKind, what: impl FnOnce() -> String) {
        self.errors.count(kind);
        if self.samples.len() < SAMPLES {
            self.samples.push((Instant::now(), what()));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No socket; a connect is due (at the start, or the next request of connect-per-request).
    Idle,
    /// Non-blocking connect issued, waiting for the socket to become writable.
    Connecting,
    /// Requests and replies flow.
    Open,
    /// Finished: no socket, nothing more to do.
    Done,
}

/// A request waiting for its reply.
struct Pending {
    sent: Instant,
    kind: Kind,
    measured: bool,
}

struct Conn {
    /// Connection number across all threads (names the client id).
    slot: usize,
    target: SocketAddr,
    id: Vec<u8>,
    state: State,
    stream: Option<TcpStream>,
    readable: bool,
    writable: bool,
    /// The peer has closed its side (mio said so): read until 0, not just until a short read.
    read_closed: bool,
    out: Vec<u8>,
    out_pos: usize,
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// [`wire::reply_len`]'s scan offset for the reply at `start`.
    scan: usize,
    pending: VecDeque<Pending>,
    /// Next timestamp offset from [`Plan::ts_base`]: one more nanosecond per IAMAT.
    seq: u64,
    /// Timestamp of the latest IAMAT sent, which a WHATSAT's reply echoes.
    reported: Option<u64>,
    /// WHATSAT mix accumulator: adds `--whatsat` per request, a WHATSAT each time it passes 100.
    mix: u32,
    connect_started: Instant,
    /// No more requests for this connection (the end passed or the budget is spent).
    exhausted: bool,
}

/// Runs the connections numbered `slots` until all are done.
pub fn run(plan: &Plan, slots: std::ops::Range<usize>, live: &Live) -> Result<Tally, String> {
    let poll = Poll::new().map_err(|e| format!("cannot create a poll instance: {e}"))?;
    let now = Instant::now();
    let o = &plan.opts;
    let conns: Vec<Conn> = slots
        .map(|slot| Conn {
            slot,
            target: o.targets[slot % o.targets.len()],
            id: format!("{}{slot}", o.id_prefix).into_bytes(),
            state: State::Idle,
            stream: None,
            readable: false,
            writable: false,
            read_closed: false,
            out: Vec::with_capacity(o.depth * 128),
            out_pos: 0,
            input: vec![0; INPUT],
            start: 0,
            end: 0,
            scan: 0,
            pending: VecDeque::with_capacity(o.depth),
            seq: 0,
            reported: None,
            mix: 0,
            connect_started: now,
            exhausted: false,
        })
        .collect();
    let mut w =
        Worker { plan, poll, to_connect: (0..conns.len()).collect(), done: 0, conns, tally: Tally::new()? };
    w.run(live);
    w.tally.finished = Instant::now();
    Ok(w.tally)
}

struct Worker<'a> {
    plan: &'a Plan,
    poll: Poll,
    conns: Vec<Conn>,
    /// Connections to (re)connect at the start of the next turn, never within an event batch
    /// (so a token is not reused while events for its old socket may still be in the batch).
    to_connect: Vec<usize>,
    /// Connections in [`State::Done`].
    done: usize,
    tally: Tally,
}

impl Worker<'_> {
    fn run(&mut self, live: &Live) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut swept_after_end = false;
        loop {
            let now = Instant::now();
            let ended = self.plan.end.is_some_and(|e| now >= e);
            if now >= next_sweep || (ended && !swept_after_end) {
                self.sweep(now);
                next_sweep = now + SWEEP;
                swept_after_end = ended;
            }
            for i in std::mem::take(&mut self.to_connect) {
                self.connect(i, now);
            }
            live.ok.store(self.tally.ok_all, Ordering::Relaxed);
            live.errors.store(self.tally.errors.total(), Ordering::Relaxed);
            if self.done == self.conns.len() {
                return;
            }
            // (A connect that failed at once queued its slot again: it is retried after this
            // wait, which paces retries of a failing connect-per-request slot.)
            let mut wake = next_sweep;
            if let Some(end) = self.plan.end.filter(|&e| e > now) {
                wake = wake.min(end);
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.tally.error(ErrorKind::Io, || format!("poll: {e}"));
                for i in 0..self.conns.len() {
                    self.close(i);
                    self.set_done(i);
                }
                return;
            }
            for ev in events.iter() {
                let i = ev.token().0;
                let Some(c) = self.conns.get_mut(i) else { continue };
                c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                c.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                c.read_closed |= ev.is_read_closed() || ev.is_error();
                let now = Instant::now();
                self.drive(i, now);
            }
        }
    }

    /// May connection `i` send one more request now? `Some(measured)` if so.
    fn grant(&mut self, i: usize, now: Instant) -> Option<bool> {
        let plan = self.plan;
        let c = &mut self.conns[i];
        if c.exhausted {
            return None;
        }
        if plan.end.is_some_and(|e| now >= e) {
            c.exhausted = true;
            return None;
        }
        let measured = now >= plan.measure_start;
        if measured
            && let Some(limit) = plan.opts.requests
            && plan.claimed.fetch_add(1, Ordering::Relaxed) >= limit
        {
            c.exhausted = true;
            return None;
        }
        Some(measured)
    }

    /// Writes the next request of connection `i` into its output buffer.
    fn push_request(&mut self, i: usize, now: Instant, measured: bool) {
        let plan = self.plan;
        let c = &mut self.conns[i];
        let kind = match plan.opts.protocol {
            Protocol::Redis => {
                c.seq += 1;
                Kind::Set { ts: plan.ts_base + c.seq }
            }
            Protocol::Herd => {
                c.mix += plan.opts.whatsat;
                match c.reported {
                    Some(ts) if c.mix >= 100 => {
                        c.mix -= 100;
                        Kind::Whatsat { ts }
                    }
                    _ => {
                        c.mix = c.mix.min(99);
                        c.seq += 1;
                        let ts = plan.ts_base + c.seq;
                        c.reported = Some(ts);
                        Kind::Iamat { ts }
                    }
                }
            }
        };
        wire::write_request(&mut c.out, kind, &c.id, &plan.whatsat_args);
        c.pending.push_back(Pending { sent: now, kind, measured });
    }

    /// Opens connection `i` (with its one request first, for connect-per-request).
    fn connect(&mut self, i: usize, now: Instant) {
        let per_request = self.plan.opts.connect_per_request;
        if per_request {
            let Some(measured) = self.grant(i, now) else { return self.set_done(i) };
            self.push_request(i, now, measured);
        }
        let c = &mut self.conns[i];
        c.connect_started = now;
        let target = c.target;
        let mut stream = match TcpStream::connect(target) {
            Ok(s) => s,
            Err(e) => return self.fail(i, ErrorKind::Connect, format!("connect: {e}")),
        };
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)
        {
            return self.fail(i, ErrorKind::Io, format!("register: {e}"));
        }
        let c = &mut self.conns[i];
        c.stream = Some(stream);
        c.state = State::Connecting;
    }

    /// Moves connection `i` as far as its readiness allows.
    fn drive(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.state == State::Connecting {
            if !c.writable {
                return;
            }
            let Some(stream) = c.stream.as_ref() else { return };
            // mio's recipe for a non-blocking connect: the error, if any, then the peer.
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(i, ErrorKind::Connect, format!("connect: {e}")),
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    c.writable = false;
                    return;
                }
                Err(e) => return self.fail(i, ErrorKind::Connect, format!("connect: {e}")),
            }
            // Requests are small and latency is the point: no Nagle delay.
            let _ = stream.set_nodelay(true);
            c.state = State::Open;
            self.tally.connects += 1;
        }
        if self.conns[i].state != State::Open {
            return;
        }
        if self.conns[i].readable {
            match self.read(i, now) {
                Ok(false) => {}
                Ok(true) => {
                    let c = &self.conns[i];
                    if self.plan.opts.connect_per_request && c.pending.is_empty() {
                        // The reply came; the server closing too is fine.
                    } else {
                        let n = c.pending.len();
                        return self.fail(
                            i,
                            ErrorKind::Closed,
                            format!("the server closed the connection with {n} replies owed"),
                        );
                    }
                }
                Err(()) => return,
            }
        }
        self.proceed(i, now);
    }

    /// After reading: finish, or top the pipeline up and write.
    fn proceed(&mut self, i: usize, now: Instant) {
        if self.conns[i].state != State::Open {
            return;
        }
        if self.plan.opts.connect_per_request {
            if self.conns[i].pending.is_empty() {
                self.close(i);
                self.conns[i].state = State::Idle;
                self.to_connect.push(i);
                return;
            }
        } else {
            while self.conns[i].pending.len() < self.plan.opts.depth {
                let Some(measured) = self.grant(i, now) else { break };
                self.push_request(i, now, measured);
            }
            if self.conns[i].pending.is_empty() {
                self.close(i);
                return self.set_done(i);
            }
        }
        if let Err(e) = self.flush(i) {
            self.fail(i, ErrorKind::Io, format!("write: {e}"));
        }
    }

    fn flush(&mut self, i: usize) -> io::Result<()> {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else { return Ok(()) };
        while c.writable && c.out_pos < c.out.len() {
            match stream.write(&c.out[c.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        }
        Ok(())
    }

    /// Reads what is there and handles every complete reply. `Ok(true)` at end of stream;
    /// `Err` when the connection failed (already counted and closed).
    fn read(&mut self, i: usize, now: Instant) -> Result<bool, ()> {
        loop {
            let c = &mut self.conns[i];
            if c.end == c.input.len() {
                if c.start > 0 {
                    c.input.copy_within(c.start..c.end, 0);
                    c.end -= c.start;
                    c.start = 0;
                } else if c.input.len() < wire::MAX_REPLY {
                    let grown = (c.input.len() * 2).min(wire::MAX_REPLY);
                    c.input.resize(grown, 0);
                } else {
                    let msg = format!("a reply longer than {} bytes", wire::MAX_REPLY);
                    self.fail(i, ErrorKind::WrongReply, msg);
                    return Err(());
                }
            }
            let room = c.input.len() - c.end;
            let Some(stream) = c.stream.as_mut() else { return Err(()) };
            match stream.read(&mut c.input[c.end..]) {
                Ok(0) => {
                    c.readable = false;
                    return Ok(true);
                }
                Ok(n) => {
                    c.end += n;
                    // A short read drained the socket: new data brings a new edge (as tokio
                    // relies on with epoll), which saves the read that would say WouldBlock.
                    // Not when the peer has closed: its end of stream must still be read.
                    let drained = n < room && !c.read_closed;
                    self.consume(i, now)?;
                    if drained {
                        self.conns[i].readable = false;
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(i, ErrorKind::Io, format!("read: {e}"));
                    return Err(());
                }
            }
        }
    }

    /// Checks and records each complete reply in the input buffer.
    fn consume(&mut self, i: usize, now: Instant) -> Result<(), ()> {
        loop {
            let c = &mut self.conns[i];
            if c.start == c.end {
                c.start = 0;
                c.end = 0;
                return Ok(());
            }
            let buf = &c.input[c.start..c.end];
            let Some(front) = c.pending.front() else {
                let msg =
                    format!("{} unexpected bytes (no request outstanding): {}", buf.len(), excerpt(buf));
                self.fail(i, ErrorKind::WrongReply, msg);
                return Err(());
            };
            let Some(len) = wire::reply_len(buf, &mut c.scan, front.kind) else { return Ok(()) };
            let reply = &buf[..len];
            let verdict = wire::check(reply, front.kind, &c.id);
            let (sent, kind, measured) = (front.sent, front.kind, front.measured);
            match verdict {
                Ok(()) => {
                    self.tally.ok_all += 1;
                    if measured {
                        self.tally.requests += 1;
                        if matches!(kind, Kind::Whatsat { .. }) {
                            self.tally.whatsats += 1;
                        }
                        let ns = now.saturating_duration_since(sent).as_nanos();
                        self.tally.hist.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                    }
                }
                Err(why) => {
                    let mut request = Vec::new();
                    wire::write_request(&mut request, kind, &c.id, &self.plan.whatsat_args);
                    let (target, slot) = (c.target, c.slot);
                    self.tally.error(ErrorKind::WrongReply, || {
                        format!(
                            "{target} c{slot}: wrong reply ({why}) to {}: {}",
                            excerpt(&request),
                            excerpt(reply)
                        )
                    });
                    if self.plan.opts.connect_per_request {
                        // The server may not hold this client's record: report again first.
                        c.reported = None;
                    }
                }
            }
            c.pending.pop_front();
            c.start += len;
            c.scan = 0;
        }
    }

    /// Looks for connects and replies past `--timeout`, and finishes idle connections after the
    /// end of the run.
    fn sweep(&mut self, now: Instant) {
        let timeout = self.plan.opts.timeout;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            match c.state {
                State::Connecting if now.saturating_duration_since(c.connect_started) >= timeout => {
                    self.fail(i, ErrorKind::Connect, format!("no connection within {timeout:?}"));
                }
                State::Open => {
                    if let Some(p) = c.pending.front() {
                        if now.saturating_duration_since(p.sent) >= timeout {
                            let n = c.pending.len();
                            self.fail(
                                i,
                                ErrorKind::Timeout,
                                format!("no reply within {timeout:?} ({n} owed)"),
                            );
                        }
                    } else {
                        self.proceed(i, now);
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts an error on connection `i` and ends it: a persistent connection is done, a
    /// connect-per-request slot moves on to its next request.
    fn fail(&mut self, i: usize, kind: ErrorKind, what: String) {
        let c = &self.conns[i];
        let (target, slot) = (c.target, c.slot);
        self.tally.error(kind, || format!("{target} c{slot}: {what}"));
        self.close(i);
        if self.plan.opts.connect_per_request {
            let c = &mut self.conns[i];
            c.reported = None;
            c.state = State::Idle;
            self.to_connect.push(i);
        } else {
            self.set_done(i);
        }
    }

    /// Drops connection `i`'s socket and whatever was in flight on it.
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.readable = false;
        c.writable = false;
        c.read_closed = false;
        c.out.clear();
        c.out_pos = 0;
        c.start = 0;
        c.end = 0;
        c.scan = 0;
        c.pending.clear();
    }

    fn set_done(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state != State::Done {
            c.state = State::Done;
            c.exhausted = true;
            self.done += 1;
        }
    }
}

/// Bytes shown readably in an error message, cut to a sensible length.
fn excerpt(bytes: &[u8]) -> String {
    const SHOW: usize = 160;
    let cut = bytes.len().min(SHOW);
    let mut s = format!("\"{}\"", bytes[..cut].escape_ascii());
    if bytes.len() > SHOW {
        s += &format!("... ({} bytes)", bytes.len());
    }
    s
}
