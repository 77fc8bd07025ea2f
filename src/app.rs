//! The process around a driver: the command line, the configuration turned into a [`Node`] and
//! what a driver needs, the log file, and the exit statuses.
//!
//! Shared by the `herd` binary (the mio [`Reactor`](crate::driver::mio::Reactor)) and its tokio twin (`examples/herd-tokio.rs`,
//! used by the benchmarks), so the two processes take the same command line and configuration,
//! write the same log file and exit with the same statuses; only the [`Driver`] differs.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cli::{self, Action, USAGE};
use crate::config::{Config, ConfigError, Limits};
use crate::core::{Node, NodeConfig};
use crate::driver::{Driver, Endpoints};
use crate::logging;
use crate::places::Endpoint;
use crate::places::client::Target;
use crate::places::tls::TlsConfig;

/// Why a configuration cannot become a running server (exit status 2).
#[derive(Debug)]
pub enum SetupError {
    /// The server is not in the configuration.
    Server(ConfigError),
    /// `places.endpoint` is not a usable URL.
    Endpoint(String),
    /// The TLS trust settings cannot be built (e.g. a bad `places.ca_file`).
    Tls(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(e) => write!(f, "{e}"),
            Self::Endpoint(e) => write!(f, "`places.endpoint`: {e}"),
            Self::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Everything one herd member needs, built from the configuration.
pub struct Setup {
    /// The server's name.
    pub name: String,
    /// Its decisions, every link down and due to be dialled.
    pub node: Node,
    /// Where it listens and dials.
    pub endpoints: Endpoints,
    /// The configured limits.
    pub limits: Limits,
    /// Where and how WHATSAT asks Places.
    pub places: Target,
    /// Its log file.
    pub log_file: PathBuf,
    /// The log level.
    pub log_level: log::LevelFilter,
    /// The lines logged once the log is open: who is listening where, and the settings.
    pub startup: Vec<String>,
}

impl Setup {
    /// Builds server `name` of `config`. `seed` is the backoff jitter's seed; see [`seed`].
    pub fn new(config: &Config, name: &str, seed: u64) -> Result<Self, SetupError> {
        let me = config.server(name).map_err(SetupError::Server)?;
        let neighbours: Vec<_> = me.neighbours.iter().map(|&i| &config.servers[i]).collect();
        let mut node_config = NodeConfig::new(name, neighbours.iter().map(|s| s.name.clone()).collect());
        node_config.sync_on_connect = config.sync_on_connect;
        node_config.peer_output_limit = config.limits.peer_output;
        node_config.max_line = config.limits.max_line;
        node_config.seed = seed;
        node_config.whatsat = config.places.whatsat.clone();
        let endpoint = Endpoint::parse(&config.places.endpoint).map_err(SetupError::Endpoint)?;
        let tls = TlsConfig::new(config.places.ca_file.as_deref()).map_err(SetupError::Tls)?;
        let places =
            Target { api: config.places.api, endpoint, key: config.places.api_key.clone(), tls: Ok(tls) };
        let endpoints = Endpoints { listen: me.addr, peers: neighbours.iter().map(|s| s.addr).collect() };
        let startup = vec![
            format!(
                "{name} {} listening on {}; neighbours: {}",
                env!("CARGO_PKG_VERSION"),
                me.addr,
                neighbours.iter().map(|s| format!("{} ({})", s.name, s.addr)).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "config: sync_on_connect={} limits={:?} places: api={:?} endpoint={} key={} whatsat={:?}",
                config.sync_on_connect,
                config.limits,
                config.places.api,
                config.places.endpoint,
                if config.places.api_key.is_some() { "set" } else { "missing" },
                config.places.whatsat,
            ),
        ];
        Ok(Self {
            name: name.to_owned(),
            node: Node::new(node_config, Instant::now()),
            endpoints,
            limits: config.limits,
            places,
            log_file: config.log_file(name),
            log_level: config.logging.level,
            startup,
        })
    }
}

/// Opens the log file, installs it as the process's logger and writes `startup` to it.
pub fn open_log(file: &Path, level: log::LevelFilter, startup: &[String]) -> io::Result<()> {
    logging::init(file, level)?;
    for line in startup {
        log::info!("{line}");
    }
    logging::flush();
    Ok(())
}

/// A whole process: parses `args` (without the program name), then prints the help, the version
/// or the server list, or runs the server named with driver `D`. `program` names the process in
/// its messages. Exit status 0 after a clean stop, 1 if the server cannot run (its port is
/// taken, the log cannot be opened, the loop fails), 2 for a usage or configuration error.
pub fn main<D: Driver>(program: &str, args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let usage = usage(program);
    let action = match cli::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{program}: {e}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    match action {
        Action::Help => {
            print!("{usage}");
            ExitCode::SUCCESS
        }
        Action::Version => {
            println!("{program} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Action::List { config } => match Config::load(&config) {
            Ok(c) => {
                for s in &c.servers {
                    println!(
                        "{} {} {} {}",
                        s.name,
                        s.addr.ip(),
                        s.addr.port(),
                        c.log_file(&s.name).display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{program}: {e}");
                ExitCode::from(2)
            }
        },
        Action::Run { config, name } => run::<D>(program, &config, &name),
    }
}

fn run<D: Driver>(program: &str, path: &Path, name: &str) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let setup = match Setup::new(&config, name, seed()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let Setup { node, endpoints, limits, places, log_file, log_level, startup, .. } = setup;
    let listen = endpoints.listen;
    let driver = match D::bind(node, endpoints, limits, places) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{program}: {name} cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = open_log(&log_file, log_level, &startup) {
        eprintln!("{program}: cannot open log file {}: {e}", log_file.display());
        return ExitCode::from(1);
    }
    match driver.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("reactor failed: {e}");
            logging::flush();
            eprintln!("{program}: {name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// [`USAGE`] with `program` in place of `herd` where it names the command.
fn usage(program: &str) -> String {
    if program == "herd" {
        return USAGE.to_owned();
    }
    USAGE.replacen("herd:", &format!("{program}:"), 1).replace("  herd ", &format!("  {program} "))
}

/// A jitter seed that differs between processes, so restarted servers do not redial in lockstep.
pub fn seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_names_the_program() {
        assert_eq!(usage("herd"), USAGE);
        let u = usage("herd-tokio");
        assert!(u.starts_with("herd-tokio: "), "{u}");
        assert!(u.contains("  herd-tokio [--config PATH] NAME"), "{u}");
        assert!(!u.contains("  herd [--config"), "{u}");
    }
}
