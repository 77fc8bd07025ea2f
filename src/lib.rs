//! # herd
//!
//! A proxy herd: cooperating TCP servers that take location reports from clients (`IAMAT`),
//! flood them to each other (`AT`), and answer "what is near this client?" (`WHATSAT`).
//!
//! One thread, one reactor written directly on mio, every connection an explicit state machine,
//! and no async runtime. All decisions live in a sans-IO core ([`core::Node`]) that touches no
//! socket and reads no clock; the reactor ([`driver::mio`]) only moves bytes and time in and out.
//!
//! ```text
//!  client / peer sockets        Places HTTPS sockets
//!         |  bytes                     |  bytes
//!   +-----v-----------------------------v------+
//!   |  driver (mio reactor)                    |  sockets, readiness, buffers, timers
//!   +-----+-----------------------------+------+
//!         | lines, events, now           | TLS records
//!   +-----v-----------+         +--------v--------+
//!   |  core::Node     |-------->| places client   |
//!   |  decides        | queries |  (sans-IO)      |
//!   +-----+-----------+         +-----------------+
//!         | uses
//!   +-----v-----------+  +-------------+
//!   | proto (parse,   |  | core::      |
//!   | format, lines)  |  | locations   |
//!   +-----------------+  +-------------+
//! ```
//!
//! # Layout
//! - [`proto`]: the wire format of PROTOCOL.md: framing, parsing, formatting.
//! - [`core`]: [`core::Node`], one herd member's decisions: replies, flooding, peer links,
//!   backoff, resync, and the WHATSAT flow (`core/whatsat.rs`: canonical requests, the cache,
//!   the rate limit, fair turns, throttled warnings).
//! - [`places`]: the Places client, sans-IO: request bytes for both APIs, response reading, the
//!   New-to-legacy conversion and the WHATSAT reply body.
//! - [`driver`]: the mio reactor ([`driver::mio`]) that drives a `Node` over real sockets, and
//!   what every driver shares: the connection lifecycle ([`driver::conn`]: states, linger, end
//!   of stream, output limit, shutdown), the reply buffer, and handing lines to the node.
//! - [`limits`]: every fixed limit, once, with its reason (configurable ones are in [`config`]).
//! - [`config`], [`cli`], [`logging`]: process set-up.
//! - [`app`]: the process around a driver (command line, config to [`core::Node`], log, exit
//!   statuses), shared by `herd` and its tokio twin `examples/herd-tokio.rs`.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::unwrap_used)]

pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod driver;
pub mod limits;
pub mod logging;
pub mod places;
pub mod proto;
