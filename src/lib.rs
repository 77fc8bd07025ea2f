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
//! - [`core`]: [`core::Node`], one herd member's decisions: replies and the table
//!   ([`core::locations`]), the links to the neighbours (`core/link.rs`: backoff, stall limit,
//!   flooding, resync), and the WHATSAT flow (`core/whatsat.rs`: canonical requests, the cache,
//!   the rate limit, fair turns, throttled warnings).
//! - [`places`]: the Places client, sans-IO: its decisions ([`places::client`]: pool, single
//!   retry, DNS cache, TLS, why a request failed), request bytes for both APIs, response reading,
//!   the New-to-legacy conversion and the WHATSAT reply body.
//! - [`driver`]: what every driver shares (the [`driver::Driver`] trait, [`driver::Endpoints`],
//!   handing lines to the node), the connection lifecycle ([`driver::conn`]: states, linger, end
//!   of stream, output limit, shutdown) and the reply buffer; and the mio reactor
//!   ([`driver::mio`]) that drives a `Node` and a Places client over real sockets. The tokio twin
//!   (`benches/twin/`) is the other driver.
//! - [`limits`]: every fixed limit, once, with its reason (configurable ones are in [`config`]).
//! - [`config`], [`cli`], [`logging`]: process set-up.
//! - [`app`]: the process around a driver (command line, config to [`core::Node`],
//!   [`driver::Endpoints`] and a [`places::client::Target`], log, exit statuses), shared by `herd`
//!   and its tokio twin `examples/herd-tokio.rs`.
//!
//! Modules depend in one direction only: `proto`, `limits`, `cli` and `logging` on nothing of
//! ours; `places` on `limits`; `core` on `places` and `proto`; `config` on `core` and `places`; `driver` on
//! those; `app` on everything.

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
