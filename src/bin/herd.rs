//! `herd NAME`: run one server of the herd. See `herd --help`.
//!
//! The command line, configuration, log file and exit statuses are [`herd::app`]'s; this binary
//! only chooses the driver, the mio [`Reactor`].

use std::process::ExitCode;

use herd::driver::mio::Reactor;

fn main() -> ExitCode {
    herd::app::main::<Reactor>("herd", std::env::args_os().skip(1))
}
