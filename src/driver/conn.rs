//! A connection's lifecycle, sans-IO: the one place its state changes, and the rules for linger,
//! end of stream, the output limit and shutdown, each an event that returns an [`Action`] for the
//! driver to carry out. No socket and no clock: `now` comes in as a parameter, and deadlines go
//! out as values ([`Lifecycle::deadline`], [`Action::Linger`]).
//!
//! Both drivers (the mio reactor and the tokio twin) keep one [`Lifecycle`] per connection,
//! inbound ones and outbound links alike, and differ only in how they wait: the reactor keeps a
//! list of lingering deadlines and readiness bits, the twin awaits them in each connection's task.
//!
//! Shape: events are methods named for what happened (`overlong`, `end_of_stream`, `written`, ...)
//! rather than one `handle(Event)`, because each event carries different facts (bytes read,
//! replies pending, whether the framing is paused) and each can only lead to a few actions; the
//! drivers call them at the points where they learn those facts, in their own order. The reply
//! buffer itself stays outside ([`super::outbox::Outbox`]): a rule needs only its length.

use std::fmt;
use std::time::Instant;

use crate::limits::{LINGER, LINGER_BYTES};

/// Which end opened the connection: the rules differ at end of stream and at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone who connected to us: clients, and neighbours sending floods. Replies go back.
    Inbound,
    /// Our outbound link to a neighbour: it carries floods out; replies to its lines go nowhere.
    Link,
}

/// A connection's lifecycle. Its `Debug` form is what the log shows (`c<id>: <old> -> <new>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Outbound dial in progress.
    Connecting,
    /// Reading lines and writing replies.
    Open,
    /// No more input will be read (end of stream, or shutdown); close once replies are written.
    Draining,
    /// A protocol error was answered (or a shutdown began); once the replies are written the
    /// write side is shut (`shut`) and input is discarded until end of stream or `until`.
    Lingering {
        /// When the connection is closed if the other end has not closed it by then.
        until: Instant,
        /// Our write side is shut.
        shut: bool,
    },
    /// Closed; the driver drops the socket.
    Closed,
}

/// Why a connection closes, as the log says it (`c<id> closed: <reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The other end closed, and every reply was written.
    EndOfStream,
    /// The other end closed while we lingered, every reply written.
    EndAfterLastReply,
    /// A neighbour closed our link.
    ClosedByPeer,
    /// More than [`LINGER_BYTES`] arrived while we lingered.
    LingerBytes,
    /// The linger deadline passed without an end of stream.
    LingerExpired,
    /// Replies past the output limit (the value) stayed unwritten: the client does not read.
    OutputLimit(usize),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::EndOfStream => f.write_str("end of stream"),
            Reason::EndAfterLastReply => f.write_str("end of stream after the last reply"),
            Reason::ClosedByPeer => f.write_str("closed by the peer"),
            Reason::LingerBytes => write!(f, "more than {LINGER_BYTES} bytes sent after the last reply"),
            Reason::LingerExpired => f.write_str("closed: no end of stream after the last reply"),
            Reason::OutputLimit(limit) => {
                write!(f, "output limit of {limit} bytes reached (client does not read)")
            }
        }
    }
}

/// What the driver does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing new: go on as before.
    Continue,
    /// Stop reading; the connection drains its replies (it is now [`State::Draining`]).
    StopReading,
    /// Write what the socket takes now, then judge what is left ([`Lifecycle::replies_refused`]).
    Flush,
    /// Shut our write side: the last reply is written.
    ShutWrite,
    /// The connection now lingers: close it at this deadline unless it ends first
    /// ([`Lifecycle::timeout`]).
    Linger(Instant),
    /// Close the connection (then call [`Lifecycle::close`]).
    Close(Reason),
}

/// One connection's lifecycle (see the module docs).
#[derive(Debug)]
pub struct Lifecycle {
    /// A number for the log that, unlike a slab key, is never reused.
    id: u64,
    kind: Kind,
    state: State,
    /// Bytes discarded while lingering.
    discarded: usize,
}

impl Lifecycle {
    /// An inbound connection starts [`State::Open`]; a link starts [`State::Connecting`].
    pub fn new(id: u64, kind: Kind) -> Self {
        let state = match kind {
            Kind::Inbound => State::Open,
            Kind::Link => State::Connecting,
        };
        Self { id, kind, state, discarded: 0 }
    }

    /// The connection's number in the log (`c<id>`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Which end opened it.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether input is discarded rather than framed.
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering { .. })
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether to read from the socket now: open or lingering, and the framing not paused
    /// (`paused`: a WHATSAT waits for its answer, or a full feed holds lines back).
    pub fn reading(&self, paused: bool) -> bool {
        matches!(self.state, State::Open | State::Lingering { .. }) && !paused
    }

    /// When the driver must call [`timeout`](Self::timeout), if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Lingering { until, .. } => Some(until),
            _ => None,
        }
    }

    /// The one place the state changes.
    fn set_state(&mut self, state: State) {
        log::debug!("c{}: {:?} -> {:?}", self.id, self.state, state);
        self.state = state;
    }

    /// The outbound dial completed.
    pub fn connected(&mut self) {
        if self.state == State::Connecting {
            self.set_state(State::Open);
        }
    }

    /// A line passed the length limit and was answered: linger for [`LINGER`] so the reply is
    /// not lost to a reset. Returns [`Action::Linger`] (nothing once closed).
    pub fn overlong(&mut self, now: Instant) -> Action {
        if self.is_closed() {
            return Action::Continue;
        }
        let until = now + LINGER;
        self.set_state(State::Lingering { until, shut: false });
        Action::Linger(until)
    }

    /// While lingering, `n` bytes were read and dropped (0: end of stream); `pending` reply
    /// bytes are still unwritten. End of stream closes once nothing is pending, or drains
    /// ([`Action::StopReading`]); more than [`LINGER_BYTES`] closes, except during a shutdown
    /// (`shutting_down`), when a client may still be sending while it reads the replies computed
    /// before it: it is cut at the grace period's end instead, rather than lose those replies to
    /// the reset.
    pub fn discard(&mut self, n: usize, pending: usize, shutting_down: bool) -> Action {
        self.discarded += n;
        if n == 0 {
            if pending == 0 {
                return Action::Close(Reason::EndAfterLastReply);
            }
            self.set_state(State::Draining);
            return Action::StopReading;
        }
        let cap = if shutting_down { usize::MAX } else { LINGER_BYTES };
        if self.discarded > cap { Action::Close(Reason::LingerBytes) } else { Action::Continue }
    }

    /// An open connection reached end of stream, and its last lines were handed on. A link is
    /// closed by the peer; an inbound connection drains its replies, and closes at once if none
    /// are pending (`pending`) or to come (`paused`: a WHATSAT waits, or lines are held back).
    pub fn end_of_stream(&mut self, pending: usize, paused: bool) -> Action {
        if self.kind == Kind::Link {
            return Action::Close(Reason::ClosedByPeer);
        }
        self.set_state(State::Draining);
        if pending == 0 && !paused { Action::Close(Reason::EndOfStream) } else { Action::StopReading }
    }

    /// Every queued reply is written (an inbound connection's). A draining connection closes; a
    /// lingering one shuts its write side. Not while more replies are to come (`paused`): a
    /// shutdown can begin while Places is being asked. A link's write side carries floods, which
    /// go on: nothing changes.
    pub fn written(&mut self, paused: bool) -> Action {
        if self.kind == Kind::Link || paused {
            return Action::Continue;
        }
        match self.state {
            State::Draining => Action::Close(Reason::EndOfStream),
            State::Lingering { until, shut: false } => {
                self.set_state(State::Lingering { until, shut: true });
                Action::ShutWrite
            }
            _ => Action::Continue,
        }
    }

    /// Replies were queued and `pending` bytes wait. Past `limit`, the driver first writes what
    /// the socket takes ([`Action::Flush`]): only what the socket refuses counts, so a client
    /// that reads is never cut for a burst of pipelined requests.
    pub fn replies_queued(&self, pending: usize, limit: usize) -> Action {
        if pending > limit { Action::Flush } else { Action::Continue }
    }

    /// After that write, `pending` bytes are left: still past `limit`, the client does not read
    /// and the connection closes; otherwise reading goes on.
    pub fn replies_refused(&self, pending: usize, limit: usize) -> Action {
        if pending > limit { Action::Close(Reason::OutputLimit(limit)) } else { Action::Continue }
    }

    /// A shutdown began; it ends by `by`. An open inbound connection lingers until then, rather
    /// than drain: a client still sending would get a reset on close, and a reset discards
    /// replies still in flight. So our side is shut after the last reply and input is discarded
    /// until the client closes or the grace period ends. Links and connections already draining
    /// or lingering are left as they are.
    pub fn shutdown(&mut self, by: Instant) -> Action {
        if self.kind != Kind::Inbound || self.state != State::Open {
            return Action::Continue;
        }
        self.set_state(State::Lingering { until: by, shut: false });
        Action::Linger(by)
    }

    /// A deadline the driver was waiting for may have passed: a lingering connection whose
    /// deadline is not after `now` closes.
    pub fn timeout(&mut self, now: Instant) -> Action {
        match self.state {
            State::Lingering { until, .. } if until <= now => Action::Close(Reason::LingerExpired),
            _ => Action::Continue,
        }
    }

    /// The driver closes the connection (for a [`Reason`] or its own, such as a read error).
    /// Returns `false` if it was already closed.
    pub fn close(&mut self) -> bool {
        if self.is_closed() {
            return false;
        }
        self.set_state(State::Closed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMIT: usize = 100;

    fn open() -> Lifecycle {
        Lifecycle::new(1, Kind::Inbound)
    }

    fn link() -> Lifecycle {
        let mut c = Lifecycle::new(2, Kind::Link);
        c.connected();
        c
    }

    fn lingering(now: Instant) -> Lifecycle {
        let mut c = open();
        assert_eq!(c.overlong(now), Action::Linger(now + LINGER));
        c
    }

    fn draining() -> Lifecycle {
        let mut c = open();
        assert_eq!(c.end_of_stream(10, false), Action::StopReading);
        c
    }

    // Connecting

    #[test]
    fn connecting_new_link_starts_connecting_and_does_not_read() {
        let c = Lifecycle::new(2, Kind::Link);
        assert_eq!(c.state(), State::Connecting);
        assert!(!c.reading(false));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn connecting_connected_opens() {
        let mut c = Lifecycle::new(2, Kind::Link);
        c.connected();
        assert_eq!(c.state(), State::Open);
        assert!(c.reading(false));
    }

    #[test]
    fn connecting_close_closes() {
        let mut c = Lifecycle::new(2, Kind::Link);
        assert!(c.close());
        assert!(c.is_closed());
    }

    // Open

    #[test]
    fn open_new_inbound_starts_open_and_reads() {
        let c = open();
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.kind(), Kind::Inbound);
        assert_eq!(c.id(), 1);
        assert!(c.reading(false));
    }

    #[test]
    fn open_paused_reading_refused() {
        assert!(!open().reading(true));
    }

    #[test]
    fn open_connected_stays_open() {
        let mut c = open();
        c.connected();
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn open_overlong_lingers_for_linger() {
        let now = Instant::now();
        let mut c = open();
        assert_eq!(c.overlong(now), Action::Linger(now + LINGER));
        assert_eq!(c.state(), State::Lingering { until: now + LINGER, shut: false });
        assert_eq!(c.deadline(), Some(now + LINGER));
        assert!(c.reading(false), "a lingering connection reads to discard");
    }

    #[test]
    fn open_end_of_stream_with_replies_pending_drains() {
        let mut c = open();
        assert_eq!(c.end_of_stream(5, false), Action::StopReading);
        assert_eq!(c.state(), State::Draining);
        assert!(!c.reading(false));
    }

    #[test]
    fn open_end_of_stream_while_paused_drains() {
        let mut c = open();
        assert_eq!(c.end_of_stream(0, true), Action::StopReading);
        assert_eq!(c.state(), State::Draining);
    }

    #[test]
    fn open_end_of_stream_with_nothing_pending_closes() {
        let mut c = open();
        assert_eq!(c.end_of_stream(0, false), Action::Close(Reason::EndOfStream));
    }

    #[test]
    fn open_link_end_of_stream_is_closed_by_the_peer() {
        let mut c = link();
        assert_eq!(c.end_of_stream(0, false), Action::Close(Reason::ClosedByPeer));
        assert_eq!(c.state(), State::Open, "the driver closes it");
    }

    #[test]
    fn open_written_goes_on() {
        let mut c = open();
        assert_eq!(c.written(false), Action::Continue);
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn open_replies_within_limit_go_on() {
        let c = open();
        assert_eq!(c.replies_queued(LIMIT, LIMIT), Action::Continue);
        assert_eq!(c.replies_refused(LIMIT, LIMIT), Action::Continue);
    }

    #[test]
    fn open_replies_over_limit_flush_first() {
        assert_eq!(open().replies_queued(LIMIT + 1, LIMIT), Action::Flush);
    }

    #[test]
    fn open_replies_refused_over_limit_close() {
        let c = open();
        assert_eq!(c.replies_refused(LIMIT + 1, LIMIT), Action::Close(Reason::OutputLimit(LIMIT)));
    }

    #[test]
    fn open_shutdown_lingers_until_the_grace_ends() {
        let by = Instant::now() + Duration::from_secs(2);
        let mut c = open();
        assert_eq!(c.shutdown(by), Action::Linger(by));
        assert_eq!(c.state(), State::Lingering { until: by, shut: false });
    }

    #[test]
    fn open_link_shutdown_stays_open() {
        let mut c = link();
        assert_eq!(c.shutdown(Instant::now()), Action::Continue);
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn open_timeout_goes_on() {
        assert_eq!(open().timeout(Instant::now()), Action::Continue);
    }

    #[test]
    fn open_close_closes() {
        let mut c = open();
        assert!(c.close());
        assert_eq!(c.state(), State::Closed);
    }

    // Draining

    #[test]
    fn draining_reading_refused() {
        assert!(!draining().reading(false));
    }

    #[test]
    fn draining_written_closes() {
        assert_eq!(draining().written(false), Action::Close(Reason::EndOfStream));
    }

    #[test]
    fn draining_written_while_paused_goes_on() {
        let mut c = draining();
        assert_eq!(c.written(true), Action::Continue);
        assert_eq!(c.state(), State::Draining);
    }

    #[test]
    fn draining_shutdown_stays_draining() {
        let mut c = draining();
        assert_eq!(c.shutdown(Instant::now()), Action::Continue);
        assert_eq!(c.state(), State::Draining);
    }

    #[test]
    fn draining_overlong_lingers() {
        // Lines held back behind a WHATSAT are handed on after end of stream.
        let now = Instant::now();
        let mut c = draining();
        assert_eq!(c.overlong(now), Action::Linger(now + LINGER));
        assert!(c.is_lingering());
    }

    // Lingering

    #[test]
    fn lingering_input_is_discarded() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(1000, 0, false), Action::Continue);
        assert!(c.is_lingering());
    }

    #[test]
    fn lingering_exactly_linger_bytes_goes_on() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(LINGER_BYTES, 0, false), Action::Continue);
    }

    #[test]
    fn lingering_more_than_linger_bytes_closes() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(LINGER_BYTES, 0, false), Action::Continue);
        assert_eq!(c.discard(1, 0, false), Action::Close(Reason::LingerBytes));
    }

    #[test]
    fn lingering_more_than_linger_bytes_at_shutdown_goes_on() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(LINGER_BYTES + 1, 0, true), Action::Continue);
    }

    #[test]
    fn lingering_end_of_stream_with_nothing_pending_closes() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(0, 0, false), Action::Close(Reason::EndAfterLastReply));
    }

    #[test]
    fn lingering_end_of_stream_with_replies_pending_drains() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.discard(0, 7, false), Action::StopReading);
        assert_eq!(c.state(), State::Draining);
    }

    #[test]
    fn lingering_written_shuts_the_write_side_once() {
        let now = Instant::now();
        let mut c = lingering(now);
        assert_eq!(c.written(false), Action::ShutWrite);
        assert_eq!(c.state(), State::Lingering { until: now + LINGER, shut: true });
        assert_eq!(c.written(false), Action::Continue);
    }

    #[test]
    fn lingering_written_while_paused_keeps_the_write_side() {
        let mut c = lingering(Instant::now());
        assert_eq!(c.written(true), Action::Continue);
        assert!(matches!(c.state(), State::Lingering { shut: false, .. }));
    }

    #[test]
    fn lingering_link_written_keeps_the_write_side() {
        let mut c = link();
        c.overlong(Instant::now());
        assert_eq!(c.written(false), Action::Continue);
    }

    #[test]
    fn lingering_timeout_before_the_deadline_goes_on() {
        let now = Instant::now();
        let mut c = lingering(now);
        assert_eq!(c.timeout(now + LINGER - Duration::from_millis(1)), Action::Continue);
    }

    #[test]
    fn lingering_timeout_at_the_deadline_closes() {
        let now = Instant::now();
        let mut c = lingering(now);
        assert_eq!(c.timeout(now + LINGER), Action::Close(Reason::LingerExpired));
    }

    #[test]
    fn lingering_shutdown_keeps_its_deadline() {
        let now = Instant::now();
        let mut c = lingering(now);
        assert_eq!(c.shutdown(now + Duration::from_secs(2)), Action::Continue);
        assert_eq!(c.deadline(), Some(now + LINGER));
    }

    #[test]
    fn lingering_overlong_restarts_the_linger() {
        let now = Instant::now();
        let mut c = lingering(now);
        let later = now + Duration::from_millis(100);
        assert_eq!(c.overlong(later), Action::Linger(later + LINGER));
        assert_eq!(c.state(), State::Lingering { until: later + LINGER, shut: false });
    }

    // Closed

    #[test]
    fn closed_close_again_is_refused() {
        let mut c = open();
        assert!(c.close());
        assert!(!c.close());
    }

    #[test]
    fn closed_overlong_stays_closed() {
        let mut c = open();
        c.close();
        assert_eq!(c.overlong(Instant::now()), Action::Continue);
        assert!(c.is_closed());
        assert!(!c.reading(false));
    }

    #[test]
    fn closed_shutdown_stays_closed() {
        let mut c = open();
        c.close();
        assert_eq!(c.shutdown(Instant::now()), Action::Continue);
        assert!(c.is_closed());
    }

    // Reasons

    #[test]
    fn reasons_read_as_the_log_says_them() {
        assert_eq!(Reason::EndOfStream.to_string(), "end of stream");
        assert_eq!(Reason::EndAfterLastReply.to_string(), "end of stream after the last reply");
        assert_eq!(Reason::ClosedByPeer.to_string(), "closed by the peer");
        assert_eq!(Reason::LingerBytes.to_string(), "more than 1048576 bytes sent after the last reply");
        assert_eq!(Reason::LingerExpired.to_string(), "closed: no end of stream after the last reply");
        assert_eq!(
            Reason::OutputLimit(4096).to_string(),
            "output limit of 4096 bytes reached (client does not read)"
        );
    }
}
