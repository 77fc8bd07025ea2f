//! The tokio twin: the herd server of [`herd::driver::mio`] written on tokio's `current_thread`
//! runtime, around the very same [`Node`], [`LineReader`], formatting and sans-IO Places pieces,
//! so that a comparison between the two measures the runtime and nothing else.
//!
//! It is what an expert would write on tokio, not a strawman: one task per connection on a
//! [`LocalSet`], the node shared as `Rc<RefCell<..>>` (one thread: no locks, no `Send`), sockets
//! driven with tokio's readiness API (`readable().await` + `try_read`, `writable().await` +
//! `try_write`), so a read batch's replies go out in one write and a stalled peer's floods stay in
//! the node where its output limit sees them. Tokio is a dev-dependency only: `benches/` (the
//! runtimes bench), `tests/twin.rs` and `examples/herd-tokio.rs` include this file with
//! `#[path = "../benches/twin/mod.rs"] mod twin;`; the product never links tokio.
//!
//! # How it maps onto the mio driver
//! - The loop owning a slab of connections becomes one task per connection; the node and the
//!   driver's tables sit in one `Rc<RefCell<Core>>`, borrowed only between `.await`s.
//! - Each connection's lifecycle is the mio driver's own [`Lifecycle`] (states, linger, end of
//!   stream, output limit, shutdown), local to its task; its replies the same [`Outbox`]; the
//!   fixed limits those of [`herd::limits`]. Nothing of them is written again here.
//! - Reading: the same shared [`READ_CHUNK`] buffer (`readable().await`, then `try_read` until
//!   `WouldBlock`); `limits.read_budget` per wake-up, then `yield_now` where mio re-queues.
//! - Writing: a read batch's replies are written at once in one `try_write`; what the socket
//!   refuses waits for `writable().await`. `client_output` counts only what was refused, as in mio.
//! - Links: `Output::Dial` spawns a link task, `Output::Disconnect` aborts it (dropping its socket);
//!   it writes `peer_transmit` straight from the node and reports `peer_sent` (and `peer_blocked`
//!   when the socket refuses the rest), woken by a `Notify` when the node queues floods.
//! - WHATSAT: the reader pauses as in mio; `Output::Reply` hands the answer to the connection's
//!   task on a `oneshot`, which resumes the held-back lines.
//! - Timers: mio's deadline heap becomes a supervisor task that accepts, sleeps until
//!   `node.poll_timeout()`, flushes the log and runs the shutdown; lingering connections sleep
//!   until their lifecycle's deadline in their own task.
//! - Places: a task per request over `tokio::net::TcpStream` with the same `TlsSession`,
//!   `ResponseReader`, idle pool, single retry and resolution cache; `lookup_host` (tokio's
//!   blocking pool) replaces the resolver thread; `Output::CancelPlaces` aborts the task.
//! - Stopping: `tokio::signal::unix` for the process, [`Running::stop`] in-process (mio's
//!   `Stopper`); the same shutdown grace.
//!
//! Observable behaviour is the mio driver's: replies, log lines, limits, the over-long line's `? `
//! and linger, the final line without `\n`, WHATSAT holding back later pipelined lines, the
//! shutdown grace (a connection waiting for a WHATSAT's answer at shutdown gets it before its
//! write side is shut, in both: [`Lifecycle::written`]). The process-level suites
//! (`tests/{herd,protocol,regressions,whatsat,process}.rs`) pass against `herd-tokio` when
//! `tests/common`'s `HERD` points at it, but for the program name in `--help` and `--version`.

// Each includer uses part of it: the tests and benches `spawn`, the process `Bound`.
#![allow(dead_code)]

#[path = "places.rs"]
mod places;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{Future, pending};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::Instant;

use herd::config::Limits;
use herd::core::{Node, Output, PeerId, QueryId};
use herd::driver::conn::{Action, Kind, Lifecycle, State};
use herd::driver::outbox::Outbox;
use herd::driver::{Driver, Endpoints};
use herd::driver::{Fed, Feed, Input, feed_lines, read_some, unix_nanos, write_some};
use herd::limits::{ACCEPT_RETRY, READ_CHUNK, SHUTDOWN_GRACE};
use herd::logging;
use herd::places::Query;
use herd::places::client::Target;
use herd::proto::LineReader;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{AbortHandle, LocalSet, spawn_local};

/// A twin running on its own thread (see [`spawn`]).
pub struct Running {
    /// The address actually bound.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Stops the twin as SIGTERM stops `herd`: no new connections, replies and floods already
    /// computed written (within the shutdown grace), then the thread is joined.
    pub fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the twin's thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    /// A twin never outlives its handle (a failing test included).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds, then runs the twin on its own thread with a current_thread runtime.
pub fn spawn(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<Running> {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("herd-twin".into()).spawn(move || {
        let bound = match Bound::new(node, endpoints, limits, places, |_| Ok(Stop::Handle(stop_rx))) {
            Ok(b) => b,
            Err(e) => {
                let _ = bound_tx.send(Err(e));
                return Ok(());
            }
        };
        let _ = bound_tx.send(bound.local_addr());
        bound.run()
    })?;
    let bound = bound_rx.recv().unwrap_or_else(|_| Err(io::Error::other("the twin's thread ended at start")));
    match bound {
        Ok(addr) => Ok(Running { addr, stop: Some(stop_tx), thread: Some(thread) }),
        Err(e) => {
            let _ = thread.join();
            Err(e)
        }
    }
}

/// Runs on the calling thread until SIGINT/SIGTERM (for the process).
pub fn run_blocking(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<()> {
    <Bound as Driver>::bind(node, endpoints, limits, places)?.run()
}

/// What ends the twin.
enum Stop {
    /// SIGTERM or SIGINT (the process).
    Signals { term: Signal, int: Signal },
    /// [`Running::stop`], or the [`Running`] dropped.
    Handle(oneshot::Receiver<()>),
}

impl Stop {
    /// Resolves when the twin should shut down, with why.
    async fn wait(self) -> String {
        match self {
            Stop::Signals { mut term, mut int } => tokio::select! {
                _ = term.recv() => "signal [15]".into(),
                _ = int.recv() => "signal [2]".into(),
            },
            Stop::Handle(rx) => {
                let _ = rx.await;
                "stop requested".into()
            }
        }
    }
}

/// A twin whose listening socket is bound (and, for the process, whose signal handlers are
/// installed), ready to [`run`](Bound::run): the twin's side of [`herd::driver::Driver`], as
/// `Reactor::bind` / `Reactor::run` are the mio driver's.
pub struct Bound {
    runtime: Runtime,
    listener: TcpListener,
    node: Node,
    peers: Vec<SocketAddr>,
    limits: Limits,
    places: Target,
    stop: Stop,
}

impl Bound {
    /// Builds the runtime, then what ends the twin (`stop`, given the runtime: signal handlers
    /// need its context), then binds the listener.
    fn new(
        node: Node,
        endpoints: Endpoints,
        limits: Limits,
        places: Target,
        stop: impl FnOnce(&Runtime) -> io::Result<Stop>,
    ) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stop = stop(&runtime)?;
        // tokio's bind is mio's: SO_REUSEADDR, as the mio reactor's listener.
        let listener = runtime.block_on(TcpListener::bind(endpoints.listen))?;
        Ok(Self { runtime, listener, node, peers: endpoints.peers, limits, places, stop })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until stopped, then writes what is already computed (within the shutdown grace)
    /// and returns.
    pub fn run(self) -> io::Result<()> {
        let Bound { runtime, listener, node, peers, limits, places, stop } = self;
        let local = LocalSet::new();
        local.block_on(&runtime, async move {
            log::info!("driver: tokio current_thread runtime (the twin)");
            let shared = Shared::new(node, peers, limits, places);
            supervise(&shared, listener, stop.wait()).await;
        });
        // Tasks still running (connections past the grace) are dropped with their sockets; a
        // name lookup still blocking is not waited for.
        drop(local);
        runtime.shutdown_background();
        Ok(())
    }
}

impl Driver for Bound {
    /// Also installs the SIGTERM and SIGINT handlers, as `Reactor::bind` does.
    fn bind(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<Self> {
        Bound::new(node, endpoints, limits, places, |runtime| {
            let _context = runtime.enter();
            Ok(Stop::Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        })
    }

    fn run(self) -> io::Result<()> {
        Bound::run(self)
    }
}

/// State shared by every task of one twin (one thread: `Rc`, `Cell`, `RefCell`). A `RefCell`
/// borrow is never held across an `.await`.
struct Shared {
    core: RefCell<Core>,
    limits: Limits,
    upstream: places::Upstream,
    /// The read buffer every connection reads into (in turn: reads never await while holding it).
    scratch: RefCell<Box<[u8]>>,
    /// Connection numbers for the log, shared by inbound connections and links, never reused.
    next_id: Cell<u64>,
    /// Open connections, inbound and links, against `limits.max_connections`.
    open: Cell<usize>,
    /// Open inbound connections: a shutdown ends once there are none.
    inbound: Cell<usize>,
    /// Wakes the supervisor: the node's deadline moved earlier, logs wait to be flushed, or
    /// something a shutdown waits for happened.
    wake: Notify,
    /// The node deadline the supervisor sleeps until.
    armed: Cell<Option<Instant>>,
    /// The supervisor has a log flush scheduled.
    flush_armed: Cell<bool>,
    /// Set when a shutdown begins: by when it ends.
    shutdown_by: Cell<Option<Instant>>,
    /// Tells inbound connections a shutdown began.
    shutdown: watch::Sender<()>,
}

/// What the node decides with, and the driver's tables around it.
struct Core {
    node: Node,
    peers: Vec<SocketAddr>,
    /// Each neighbour's link task, while it exists.
    links: Vec<Option<Link>>,
    /// Connections waiting for a WHATSAT's answer, by log id (the node's `ConnId`).
    waiting: HashMap<u64, oneshot::Sender<Vec<u8>>>,
    /// Places requests in flight, by the node's id.
    queries: HashMap<QueryId, AbortHandle>,
    /// Replies to lines that arrive on our own outbound links, which are not sent anywhere.
    discard: Vec<u8>,
}

struct Link {
    /// Its log id.
    id: u64,
    task: AbortHandle,
    /// Woken when the node queues bytes for it.
    wake: Rc<Notify>,
}

impl Shared {
    fn new(node: Node, peers: Vec<SocketAddr>, limits: Limits, places: Target) -> Rc<Self> {
        let links = (0..peers.len()).map(|_| None).collect();
        Rc::new(Self {
            core: RefCell::new(Core {
                node,
                peers,
                links,
                waiting: HashMap::new(),
                queries: HashMap::new(),
                discard: Vec::new(),
            }),
            limits,
            upstream: places::Upstream::new(places),
            scratch: RefCell::new(vec![0; READ_CHUNK].into_boxed_slice()),
            next_id: Cell::new(0),
            open: Cell::new(0),
            inbound: Cell::new(0),
            wake: Notify::new(),
            armed: Cell::new(None),
            flush_armed: Cell::new(false),
            shutdown_by: Cell::new(None),
            shutdown: watch::Sender::new(()),
        })
    }

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Wakes the supervisor if the node now needs an earlier wake-up or logs wait unflushed.
    fn poke(&self, deadline: Option<Instant>) {
        let earlier = deadline.is_some_and(|d| self.armed.get().is_none_or(|a| d < a));
        if earlier || (!self.flush_armed.get() && logging::is_dirty()) || self.shutdown_by.get().is_some() {
            self.wake.notify_one();
        }
    }
}

/// Counts a connection as open for as long as its task (or its unstarted future) lives.
struct OpenGuard {
    shared: Rc<Shared>,
    inbound: bool,
}

impl OpenGuard {
    fn new(shared: &Rc<Shared>, inbound: bool) -> Self {
        shared.open.set(shared.open.get() + 1);
        if inbound {
            shared.inbound.set(shared.inbound.get() + 1);
        }
        Self { shared: Rc::clone(shared), inbound }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        // Only `Cell`s and a `Notify` here: this may run while the core is borrowed.
        let s = &self.shared;
        s.open.set(s.open.get() - 1);
        if self.inbound {
            s.inbound.set(s.inbound.get() - 1);
        }
        if s.shutdown_by.get().is_some() {
            s.wake.notify_one();
        }
    }
}

/// Carries out everything the node asked for since the last call: steps 3 to 5 of its driving
/// contract (outputs, links to write, the next wake-up). Call it after every input, with no
/// borrow of the core held.
fn drive(shared: &Rc<Shared>) {
    let mut core = shared.core.borrow_mut();
    let core = &mut *core;
    while let Some(output) = core.node.poll_output() {
        match output {
            Output::Dial(peer) => dial(shared, core, peer),
            Output::Disconnect(peer) => {
                if let Some(link) = core.links[peer.0].take() {
                    link.task.abort();
                    log::info!("c{} closed: link dropped by the node", link.id);
                }
            }
            Output::Places { id, query } => {
                let task = spawn_local(ask_places(Rc::clone(shared), id, query));
                core.queries.insert(id, task.abort_handle());
            }
            Output::CancelPlaces(id) => {
                if let Some(task) = core.queries.remove(&id) {
                    // Dropping the task's future cancels the request in the Places client,
                    // which logs it as the mio reactor's does.
                    task.abort();
                }
            }
            Output::Reply { conn, bytes } => {
                if let Some(tx) = core.waiting.remove(&conn.0) {
                    let _ = tx.send(bytes);
                }
            }
        }
    }
    for (i, link) in core.links.iter().enumerate() {
        if let Some(link) = link
            && !core.node.peer_transmit(PeerId(i)).is_empty()
        {
            link.wake.notify_one();
        }
    }
    shared.poke(core.node.poll_timeout());
}

/// The supervisor: accepts connections, runs the node's timers, flushes the log, and carries
/// out the shutdown. Returns once the shutdown is over.
async fn supervise(shared: &Rc<Shared>, listener: TcpListener, stop: impl Future<Output = String>) {
    let mut stop = pin!(stop);
    let mut listener = Some(listener);
    let mut accept_retry: Option<Instant> = None;
    let mut log_flush_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let deadline = shared.core.borrow().node.poll_timeout();
        if deadline.is_some_and(|t| t <= now) {
            shared.core.borrow_mut().node.handle_timeout(now);
            drive(shared);
            continue;
        }
        shared.armed.set(deadline);
        if logging::is_dirty() && log_flush_at.is_none() {
            log_flush_at = Some(now + logging::FLUSH_INTERVAL);
        }
        if log_flush_at.is_some_and(|t| t <= now) {
            logging::flush();
            log_flush_at = None;
        }
        shared.flush_armed.set(log_flush_at.is_some());
        if let Some(by) = shared.shutdown_by.get()
            && (now >= by || quiet(shared))
        {
            log::info!("counters: {:?}", shared.core.borrow().node.stats());
            log::info!("stopped");
            logging::flush();
            return;
        }
        let wake_at = [deadline, log_flush_at, shared.shutdown_by.get()].into_iter().flatten().min();
        let accepting = listener.is_some() && accept_retry.is_none();
        tokio::select! {
            biased;
            why = &mut stop, if shared.shutdown_by.get().is_none() => {
                log::info!("{why}: shutting down: no new connections, writing pending replies");
                listener = None;
                shared.shutdown_by.set(Some(now + SHUTDOWN_GRACE));
                shared.shutdown.send_replace(());
            }
            accepted = accept(listener.as_ref()), if accepting => match accepted {
                Ok((stream, addr)) => admit(shared, stream, addr),
                // Errors of one connection (it was reset while queued): go on with the next.
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
                Err(e) => {
                    // Typically EMFILE: the pending connection stays queued; retry soon.
                    log::warn!("accept failed: {e}");
                    accept_retry = Some(now + ACCEPT_RETRY);
                }
            },
            () = sleep_until(accept_retry) => accept_retry = None,
            () = sleep_until(wake_at) => {}
            () = shared.wake.notified() => {}
        }
    }
}

/// Whether a shutdown has nothing left to wait for: no inbound connection open, and nothing
/// queued for a link that is up.
fn quiet(shared: &Shared) -> bool {
    let core = shared.core.borrow();
    shared.inbound.get() == 0
        && (0..core.links.len())
            .all(|p| core.links[p].is_none() || core.node.peer_transmit(PeerId(p)).is_empty())
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => pending().await,
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => pending().await,
    }
}

/// A connection was accepted: give it a task, or refuse it past the limit.
fn admit(shared: &Rc<Shared>, stream: TcpStream, addr: SocketAddr) {
    let max = shared.limits.max_connections;
    if shared.open.get() >= max {
        log::warn!("refused {addr}: connection limit of {max} reached");
        return;
    }
    let _ = stream.set_nodelay(true);
    let id = shared.next_id();
    log::info!("c{id} new connection from {addr}");
    let open = OpenGuard::new(shared, true);
    let shutdown = shared.shutdown.subscribe();
    spawn_local(serve(Rc::clone(shared), stream, id, shutdown, open));
}

/// One inbound connection: a client, or a neighbour sending floods.
struct Inbound {
    /// Its state and its number in the log, the same [`Lifecycle`] as the mio driver's.
    lc: Lifecycle,
    reader: LineReader,
    out: Outbox,
    /// The answer to the WHATSAT the reader is paused on.
    answer: Option<oneshot::Receiver<Vec<u8>>>,
}

impl Inbound {
    fn reading(&self) -> bool {
        self.lc.reading(self.reader.is_paused())
    }

    /// Writes queued replies until done or the socket refuses more.
    fn flush(&mut self, wr: &WriteHalf<'_>) -> Result<(), String> {
        self.out.write_with(|data| wr.try_write(data)).map(|_| ())
    }

    /// Replies queued past `client_output`: write what the socket takes now, and close only if
    /// the rest is still over the limit (the client does not read), as the mio driver does.
    fn enforce_output_limit(&mut self, wr: &WriteHalf<'_>, limit: usize) -> Result<(), String> {
        if self.lc.replies_queued(self.out.pending(), limit) == Action::Flush {
            self.flush(wr)?;
            if let Action::Close(reason) = self.lc.replies_refused(self.out.pending(), limit) {
                return Err(reason.to_string());
            }
        }
        Ok(())
    }

    /// Hands lines to the node; if a WHATSAT paused the reader, registers for its answer.
    fn feed(&mut self, shared: &Shared, now: Instant, input: Input<'_>) -> Fed {
        let (fed, answer) = feed(shared, self.lc.id(), &mut self.reader, Some(self.out.buf()), now, input);
        if answer.is_some() {
            self.answer = answer;
        }
        fed
    }

    /// Hands on the lines held back behind a WHATSAT now answered, or behind a full feed.
    fn resume(&mut self, shared: &Shared) {
        let now = Instant::now();
        if self.feed(shared, now, Input::Resume).overlong {
            self.lc.overlong(now);
        }
    }

    /// Reads until the socket would block, the read budget is spent, or the reader pauses,
    /// feeding each chunk to the node. `Ok(true)` if the budget ran out with data perhaps left.
    fn read(&mut self, shared: &Shared, rd: &ReadHalf<'_>, wr: &WriteHalf<'_>) -> Result<bool, String> {
        let limits = &shared.limits;
        let shutting_down = shared.shutdown_by.get().is_some();
        let mut budget = limits.read_budget;
        while self.reading() {
            if budget == 0 {
                return Ok(true);
            }
            let mut scratch = shared.scratch.borrow_mut();
            let Some(n) = read_some(|buf| rd.try_read(buf), &mut scratch[..budget.min(READ_CHUNK)])? else {
                break;
            };
            // The receive time of the lines in this chunk.
            let now = Instant::now();
            budget -= n;
            if self.lc.is_lingering() {
                match self.lc.discard(n, self.out.pending(), shutting_down) {
                    Action::Continue => continue,
                    Action::Close(reason) => return Err(reason.to_string()),
                    _ => break,
                }
            }
            let input = if n == 0 { Input::End } else { Input::Data(&scratch[..n]) };
            let fed = self.feed(shared, now, input);
            drop(scratch);
            self.enforce_output_limit(wr, limits.client_output)?;
            if fed.full {
                // The lines left are handed on after a yield (see `settle`).
                if n == 0 {
                    self.end_of_stream()?;
                }
                return Ok(true);
            }
            if fed.overlong {
                self.lc.overlong(now);
                continue;
            }
            if n == 0 {
                self.end_of_stream()?;
                break;
            }
        }
        Ok(false)
    }

    /// End of stream, its last lines handed on: drain, or close if nothing is left to write.
    fn end_of_stream(&mut self) -> Result<(), String> {
        match self.lc.end_of_stream(self.out.pending(), self.reader.is_paused()) {
            Action::Close(reason) => Err(reason.to_string()),
            _ => Ok(()),
        }
    }

    /// The WHATSAT's answer arrived: queue it and hand the node the lines held back behind it.
    fn answered(&mut self, shared: &Shared, wr: &WriteHalf<'_>, bytes: &[u8]) -> Result<(), String> {
        log::info!("c{} > {}", self.lc.id(), bytes.strip_suffix(b"\n").unwrap_or(bytes).escape_ascii());
        self.out.push(bytes);
        self.resume(shared);
        self.enforce_output_limit(wr, shared.limits.client_output)
    }

    /// What happens between two waits: lines held back by a full feed are handed on (then
    /// others run), a shutdown makes an open connection linger, and once every reply is written
    /// the lifecycle decides what follows (close, or shut the write side).
    async fn settle(&mut self, shared: &Rc<Shared>, wr: &mut WriteHalf<'_>) -> Result<(), String> {
        while self.answer.is_none() && self.reader.is_paused() {
            // Held back by a full feed, not by a WHATSAT.
            self.resume(shared);
            drive(shared);
            self.enforce_output_limit(wr, shared.limits.client_output).and_then(|()| self.flush(wr))?;
            tokio::task::yield_now().await;
            if self.out.pending() > 0 {
                // The writable wait brings the connection back here once the socket drains;
                // with nothing to write, no wait would, so go on at once.
                break;
            }
        }
        if let Some(by) = shared.shutdown_by.get() {
            self.lc.shutdown(by);
        }
        if self.out.pending() == 0 {
            match self.lc.written(self.reader.is_paused()) {
                Action::Close(reason) => return Err(reason.to_string()),
                Action::ShutWrite => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(wr).await;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Serves the connection until it closes; returns why it closed.
    async fn run(
        &mut self,
        shared: &Rc<Shared>,
        stream: &mut TcpStream,
        shutdown: &mut watch::Receiver<()>,
    ) -> String {
        let (rd, mut wr) = stream.split();
        loop {
            if let Err(reason) = self.settle(shared, &mut wr).await {
                return reason;
            }
            let linger = self.lc.deadline();
            let (reading, writing, waiting) = (self.reading(), self.out.pending() > 0, self.answer.is_some());
            let watching = self.lc.state() == State::Open;
            tokio::select! {
                biased;
                changed = shutdown.changed(), if watching => {
                    if changed.is_err() {
                        return "the twin stopped".into();
                    }
                }
                answer = answer(&mut self.answer), if waiting => {
                    self.answer = None;
                    let Ok(bytes) = answer else { return "the WHATSAT answer was lost".into() };
                    let result = self.answered(shared, &wr, &bytes);
                    drive(shared);
                    if let Err(reason) = result.and_then(|()| self.flush(&wr)) {
                        return reason;
                    }
                }
                () = sleep_until(linger), if linger.is_some() => {
                    if let Action::Close(reason) = self.lc.timeout(Instant::now()) {
                        return reason.to_string();
                    }
                }
                ready = wr.writable(), if writing => {
                    if let Err(e) = ready.map_err(|e| format!("write error: {e}")).and_then(|()| self.flush(&wr)) {
                        return e;
                    }
                }
                ready = rd.readable(), if reading => {
                    if let Err(e) = ready {
                        return format!("read error: {e}");
                    }
                    let result = self.read(shared, &rd, &wr);
                    drive(shared);
                    // Replies of the whole read batch, in one write.
                    match result.and_then(|more| self.flush(&wr).map(|()| more)) {
                        Ok(true) => tokio::task::yield_now().await,
                        Ok(false) => {}
                        Err(reason) => return reason,
                    }
                }
                else => return "nothing left to do".into(),
            }
        }
    }
}

/// The task of an inbound connection.
async fn serve(
    shared: Rc<Shared>,
    mut stream: TcpStream,
    id: u64,
    mut shutdown: watch::Receiver<()>,
    _open: OpenGuard,
) {
    let mut conn = Inbound {
        lc: Lifecycle::new(id, Kind::Inbound),
        reader: LineReader::new(shared.limits.max_line),
        out: Outbox::default(),
        answer: None,
    };
    let reason = conn.run(&shared, &mut stream, &mut shutdown).await;
    conn.lc.close();
    log::info!("c{id} closed: {reason}");
    shared.core.borrow_mut().waiting.remove(&id);
    let deadline = shared.core.borrow().node.poll_timeout();
    shared.poke(deadline);
}

async fn answer(rx: &mut Option<oneshot::Receiver<Vec<u8>>>) -> Result<Vec<u8>, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => pending().await,
    }
}

/// Starts the link to `peer` (the node's [`Output::Dial`]).
fn dial(shared: &Rc<Shared>, core: &mut Core, peer: PeerId) {
    if let Some(old) = core.links[peer.0].take() {
        old.task.abort();
    }
    let addr = core.peers[peer.0];
    let id = shared.next_id();
    log::debug!("c{id} dialling {} at {addr}", core.node.peer_name(peer));
    let wake = Rc::new(Notify::new());
    let open = OpenGuard::new(shared, false);
    let task = spawn_local(link(Rc::clone(shared), peer, addr, id, Rc::clone(&wake), open));
    core.links[peer.0] = Some(Link { id, task: task.abort_handle(), wake });
}

/// The task of our outbound link to a neighbour (see [`Outbound`]). Aborted when the node drops
/// the link; otherwise tells the node when it ends.
async fn link(
    shared: Rc<Shared>,
    peer: PeerId,
    addr: SocketAddr,
    id: u64,
    wake: Rc<Notify>,
    _open: OpenGuard,
) {
    let mut link = Outbound {
        peer,
        lc: Lifecycle::new(id, Kind::Link),
        reader: LineReader::new(shared.limits.max_line),
        answer: None,
    };
    let reason = link.run(&shared, addr, &wake).await;
    link.lc.close();
    log::info!("c{id} closed: {reason}");
    {
        let mut core = shared.core.borrow_mut();
        if core.links[peer.0].as_ref().is_some_and(|l| l.id == id) {
            core.links[peer.0] = None;
            core.node.handle_link_down(Instant::now(), peer, &reason);
        }
    }
    drive(&shared);
}

/// Our outbound link to a neighbour: dials, then writes what the node queues for it and reads
/// (and answers into the void) what the neighbour sends.
struct Outbound {
    peer: PeerId,
    /// Its state and its number in the log, the same [`Lifecycle`] as the mio driver's.
    lc: Lifecycle,
    reader: LineReader,
    /// A WHATSAT from the neighbour (answered into the void) holds back its later lines, as on
    /// any connection; reading stops until its answer.
    answer: Option<oneshot::Receiver<Vec<u8>>>,
}

impl Outbound {
    /// Dials and serves the link until it ends; returns why it ended.
    async fn run(&mut self, shared: &Rc<Shared>, addr: SocketAddr, wake: &Notify) -> String {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return format!("connect failed: {e}"),
        };
        let _ = stream.set_nodelay(true);
        self.lc.connected();
        {
            let mut core = shared.core.borrow_mut();
            log::info!("c{} link to {} at {addr}", self.lc.id(), core.node.peer_name(self.peer));
            core.node.handle_link_up(Instant::now(), self.peer);
        }
        drive(shared);
        let (rd, wr) = stream.split();
        loop {
            let writing = !shared.core.borrow().node.peer_transmit(self.peer).is_empty();
            let (reading, waiting) = (self.lc.reading(self.reader.is_paused()), self.answer.is_some());
            let linger = self.lc.deadline();
            tokio::select! {
                biased;
                () = sleep_until(linger), if linger.is_some() => {
                    if let Action::Close(reason) = self.lc.timeout(Instant::now()) {
                        return reason.to_string();
                    }
                }
                answered = answer(&mut self.answer), if waiting => {
                    self.answer = None;
                    if answered.is_err() {
                        return "the WHATSAT answer was lost".into();
                    }
                    self.feed(shared, Instant::now(), Input::Resume);
                    drive(shared);
                }
                ready = wr.writable(), if writing => {
                    if let Err(e) = ready {
                        return format!("write error: {e}");
                    }
                    let written = write_link(shared, self.peer, &wr);
                    // A refused write may have passed the peer's output limit: the node then drops
                    // the link (`Output::Disconnect` aborts this task at its next `.await`).
                    drive(shared);
                    if let Err(reason) = written {
                        return reason;
                    }
                    if shared.shutdown_by.get().is_some() {
                        shared.wake.notify_one();
                    }
                }
                ready = rd.readable(), if reading => {
                    if let Err(e) = ready {
                        return format!("read error: {e}");
                    }
                    let result = self.read(shared, &rd);
                    drive(shared);
                    match result {
                        Ok(true) => tokio::task::yield_now().await,
                        Ok(false) => {}
                        Err(reason) => return reason,
                    }
                }
                () = wake.notified(), if !writing => {}
            }
        }
    }

    /// Reads until the socket would block, the read budget is spent, or the reader pauses;
    /// `Ok(true)` if the budget ran out.
    fn read(&mut self, shared: &Shared, rd: &ReadHalf<'_>) -> Result<bool, String> {
        let shutting_down = shared.shutdown_by.get().is_some();
        let mut budget = shared.limits.read_budget;
        while budget > 0 && !self.reader.is_paused() {
            let mut scratch = shared.scratch.borrow_mut();
            let Some(n) = read_some(|buf| rd.try_read(buf), &mut scratch[..budget.min(READ_CHUNK)])? else {
                return Ok(false);
            };
            budget -= n;
            if self.lc.is_lingering() {
                // A link has no replies pending: its lines' replies go nowhere.
                if let Action::Close(reason) = self.lc.discard(n, 0, shutting_down) {
                    return Err(reason.to_string());
                }
                continue;
            }
            let input = if n == 0 { Input::End } else { Input::Data(&scratch[..n]) };
            self.feed(shared, Instant::now(), input);
            if n == 0
                && let Action::Close(reason) = self.lc.end_of_stream(0, false)
            {
                return Err(reason.to_string());
            }
        }
        Ok(budget == 0)
    }

    /// Hands lines to the node (their replies go nowhere but the log); registers for the answer
    /// to a WHATSAT that paused the reader, and lingers after an over-long line.
    fn feed(&mut self, shared: &Shared, now: Instant, input: Input<'_>) {
        let (fed, answer) = feed(shared, self.lc.id(), &mut self.reader, None, now, input);
        if answer.is_some() {
            self.answer = answer;
        }
        if fed.overlong {
            self.lc.overlong(now);
        }
    }
}

/// Hands the lines of connection `id` to the node, with their replies appended to `out`, or
/// (`None`, a link's) dropped after they are logged. Returns what stopped the lines and, if a
/// WHATSAT paused the reader, where its answer will come.
fn feed(
    shared: &Shared,
    id: u64,
    reader: &mut LineReader,
    out: Option<&mut Vec<u8>>,
    now: Instant,
    input: Input<'_>,
) -> (Fed, Option<oneshot::Receiver<Vec<u8>>>) {
    let fed = {
        let mut core = shared.core.borrow_mut();
        let Core { node, discard, .. } = &mut *core;
        let out = out.unwrap_or_else(|| {
            discard.clear();
            discard
        });
        let feed = Feed { node, id, reader, out, max_line: shared.limits.max_line, now, wall: unix_nanos() };
        feed_lines(feed, input)
    };
    let answer = fed.paused.then(|| await_answer(shared, id));
    (fed, answer)
}

/// Registers connection `id` for the answer to the WHATSAT its reader paused on.
fn await_answer(shared: &Shared, id: u64) -> oneshot::Receiver<Vec<u8>> {
    let (tx, rx) = oneshot::channel();
    shared.core.borrow_mut().waiting.insert(id, tx);
    rx
}

/// Writes what the node queued for `peer` until done or the socket would block.
fn write_link(shared: &Rc<Shared>, peer: PeerId, wr: &WriteHalf<'_>) -> Result<(), String> {
    let mut core = shared.core.borrow_mut();
    loop {
        let data = core.node.peer_transmit(peer);
        if data.is_empty() {
            return Ok(());
        }
        match write_some(|d| wr.try_write(d), data)? {
            // Writing may top up a resync, so the loop asks again.
            Some(n) => core.node.peer_sent(peer, n),
            None => {
                core.node.peer_blocked(Instant::now(), peer);
                return Ok(());
            }
        }
    }
}

/// The task of one Places request (the node's [`Output::Places`]); aborted on
/// [`Output::CancelPlaces`].
async fn ask_places(shared: Rc<Shared>, id: QueryId, query: Query) {
    let result = shared.upstream.ask(id, &query).await;
    {
        let mut core = shared.core.borrow_mut();
        core.queries.remove(&id);
        core.node.handle_places_response(Instant::now(), id, result);
    }
    drive(&shared);
}
