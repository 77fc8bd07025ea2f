//! `herd-tokio NAME`: the tokio twin of `herd` as a process, for side-by-side comparisons.
//!
//! The same command line, configuration, log file and exit statuses as `herd` (all from
//! [`herd::app`]); only the driver differs: the twin of `benches/twin/mod.rs`, tokio's
//! `current_thread` runtime around the same `Node`. Build it with
//! `cargo build --release --example herd-tokio` (tokio is a dev-dependency: `herd` never links it).

use std::process::ExitCode;

#[path = "../benches/twin/mod.rs"]
mod twin;

fn main() -> ExitCode {
    herd::app::main::<twin::Bound>("herd-tokio", std::env::args_os().skip(1))
}
