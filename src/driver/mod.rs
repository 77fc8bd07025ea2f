//! Drivers: the event loops that move bytes and time in and out of a [`Node`]. The mio reactor
//! is the product; the tokio twin (`benches/twin/`) is the benchmarks' contrast. What both do
//! the same way between a socket's bytes and the node lives here, so only the event loop differs:
//! the connection lifecycle ([`conn`]), the reply buffer ([`outbox`]), handing lines to the node
//! ([`feed_lines`]) and the one-call read and write steps ([`read_some`], [`write_some`]).

pub mod conn;
pub mod mio;
pub mod outbox;

use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Limits;
use crate::core::{ConnId, Handled, Node};
use crate::limits::FEED_OUTPUT;
use crate::places::client::Target;
use crate::proto::{Frame, LineReader, OVERLONG_ECHO, write_invalid};

/// An event loop that serves one herd member: the mio [`Reactor`](mio::Reactor), and the tokio
/// twin of the benchmarks. `app` builds what it needs from the configuration and runs either.
pub trait Driver: Sized {
    /// Binds the listening socket (and installs the signal handlers). Called before the log is
    /// opened, so a second server started by mistake on a taken port writes nothing into the
    /// running server's log.
    fn bind(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<Self>;

    /// Serves until SIGINT or SIGTERM, then writes what is already computed and returns.
    fn run(self) -> io::Result<()>;
}

impl Driver for mio::Reactor {
    fn bind(node: Node, endpoints: Endpoints, limits: Limits, places: Target) -> io::Result<Self> {
        mio::Reactor::bind(node, endpoints, limits, places)
    }

    fn run(self) -> io::Result<()> {
        mio::Reactor::run(self)
    }
}

/// Where a herd member listens and dials.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The neighbours' addresses, indexed by [`PeerId`](crate::core::PeerId).
    pub peers: Vec<SocketAddr>,
}

/// What is handed to a connection's framing.
pub enum Input<'a> {
    /// Bytes just read.
    Data(&'a [u8]),
    /// End of stream: a final line without `\n` is still a line.
    End,
    /// The lines held back behind a WHATSAT, now that it is answered.
    Resume,
}

/// What stopped a connection's lines.
#[derive(Debug, Default)]
pub struct Fed {
    /// A line passed the length limit.
    pub overlong: bool,
    /// A WHATSAT waits for Places; no more lines until it is answered.
    pub paused: bool,
    /// This feed appended more than [`FEED_OUTPUT`] bytes of replies: the remaining lines are
    /// held back until the driver has written what it can and resumes them ([`Input::Resume`])
    /// on a later turn.
    pub full: bool,
}

/// One connection's side of [`feed_lines`]: whose lines, and where their replies go.
pub struct Feed<'a> {
    /// The node that answers.
    pub node: &'a mut Node,
    /// The connection's number in the log (and its [`ConnId`]).
    pub id: u64,
    /// The connection's framing.
    pub reader: &'a mut LineReader,
    /// Where replies are appended.
    pub out: &'a mut Vec<u8>,
    /// The line length limit, for the log line of an over-long line.
    pub max_line: usize,
    /// The monotonic time of the input.
    pub now: Instant,
    /// The wall-clock receive time of the input, in nanoseconds since the epoch.
    pub wall: i128,
}

/// Hands the complete lines of connection `feed.id` to the node, appending replies to `feed.out`
/// and logging both (`c<id> < line`, `c<id> > reply`). An over-long line gets `? ` and its first
/// [`OVERLONG_ECHO`] bytes; a WHATSAT waiting for Places pauses the framing.
pub fn feed_lines(feed: Feed<'_>, input: Input<'_>) -> Fed {
    let Feed { node, id, reader, out, max_line, now, wall } = feed;
    let mut fed = Fed::default();
    let fed_from = out.len();
    let mut on_frame = |frame: Frame<'_>| {
        let start = out.len();
        let mut flow = ControlFlow::Continue(());
        match frame {
            Frame::Line(line) => {
                log::info!("c{id} < {}", line.escape_ascii());
                if node.handle_line(now, wall, ConnId(id), line, out) == Handled::Pending {
                    fed.paused = true;
                    flow = ControlFlow::Break(());
                } else if out.len() - fed_from > FEED_OUTPUT {
                    fed.full = true;
                    flow = ControlFlow::Break(());
                }
            }
            Frame::Overlong(prefix) => {
                let echo = &prefix[..prefix.len().min(OVERLONG_ECHO)];
                log::info!("c{id} < {}... (over {max_line} bytes)", echo.escape_ascii());
                write_invalid(out, echo);
                fed.overlong = true;
            }
        }
        if out.len() > start {
            log::info!("c{id} > {}", out[start..out.len() - 1].escape_ascii());
        }
        flow
    };
    let _ = match input {
        Input::Data(data) => reader.feed(data, &mut on_frame),
        Input::End => reader.finish(&mut on_frame),
        Input::Resume => reader.resume(&mut on_frame),
    };
    fed
}

/// The wall clock in nanoseconds since the epoch (negative before it).
pub fn unix_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// One non-blocking read into `buf` with `read`: `Some(n)` bytes (0: end of stream), `None` if
/// it would block, or why the connection failed. Retries when interrupted.
pub fn read_some(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    buf: &mut [u8],
) -> Result<Option<usize>, String> {
    loop {
        return match read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("read error: {e}")),
        };
    }
}

/// One non-blocking write of `data` with `write`: `Some(n)` bytes taken, `None` if it would
/// block, or why the connection failed. Retries when interrupted.
pub fn write_some(
    mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    data: &[u8],
) -> Result<Option<usize>, String> {
    loop {
        return match write(data) {
            Ok(0) => Err("write returned 0".into()),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("write error: {e}")),
        };
    }
}
