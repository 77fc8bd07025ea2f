//! `herd NAME`: run one server of the herd. See `herd --help`.

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use herd::cli::{self, Action, USAGE};
use herd::config::Config;
use herd::core::{Node, NodeConfig, PlacesSettings};
use herd::driver::mio::{Endpoints, PlacesTarget, Reactor};
use herd::logging;
use herd::places::Endpoint;
use herd::places::tls::TlsConfig;

fn main() -> ExitCode {
    let action = match cli::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("herd: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match action {
        Action::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Action::Version => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
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
                eprintln!("herd: {e}");
                ExitCode::from(2)
            }
        },
        Action::Run { config, name } => run(&config, &name),
    }
}

fn run(path: &std::path::Path, name: &str) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herd: {e}");
            return ExitCode::from(2);
        }
    };
    let me = match config.server(name) {
        Ok(s) => s.clone(),
        Err(e) => {
            eprintln!("herd: {e}");
            return ExitCode::from(2);
        }
    };
    let neighbours: Vec<_> = me.neighbours.iter().map(|&i| &config.servers[i]).collect();
    let mut node_config = NodeConfig::new(name, neighbours.iter().map(|s| s.name.clone()).collect());
    node_config.sync_on_connect = config.sync_on_connect;
    node_config.peer_output_limit = config.limits.peer_output;
    node_config.max_line = config.limits.max_line;
    node_config.seed = seed();
    node_config.places = PlacesSettings {
        api: config.places.api,
        has_key: config.places.api_key.is_some(),
        timeout: config.places.timeout,
        max_in_flight: config.places.max_in_flight,
    };
    let endpoint = match Endpoint::parse(&config.places.endpoint) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("herd: `places.endpoint`: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match TlsConfig::new(config.places.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herd: {e}");
            return ExitCode::from(2);
        }
    };
    let places =
        PlacesTarget { api: config.places.api, endpoint, key: config.places.api_key.clone(), tls: Ok(tls) };
    let endpoints = Endpoints { listen: me.addr, peers: neighbours.iter().map(|s| s.addr).collect() };
    let node = Node::new(node_config, Instant::now());
    // Bind before opening the log, so a second `herd NAME` started by mistake writes nothing
    // into the running server's log.
    let reactor = match Reactor::bind(node, endpoints, config.limits, places) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: {name} cannot listen on {}: {e}", me.addr);
            return ExitCode::from(1);
        }
    };
    let log_file = config.log_file(name);
    if let Err(e) = logging::init(&log_file, config.logging.level) {
        eprintln!("herd: cannot open log file {}: {e}", log_file.display());
        return ExitCode::from(1);
    }
    log::info!(
        "{name} {} listening on {}; neighbours: {}",
        env!("CARGO_PKG_VERSION"),
        me.addr,
        neighbours.iter().map(|s| format!("{} ({})", s.name, s.addr)).collect::<Vec<_>>().join(", ")
    );
    log::info!(
        "config: sync_on_connect={} limits={:?} places: api={:?} endpoint={} key={} timeout={:?} \
         max_in_flight={}",
        config.sync_on_connect,
        config.limits,
        config.places.api,
        config.places.endpoint,
        if config.places.api_key.is_some() { "set" } else { "missing" },
        config.places.timeout,
        config.places.max_in_flight,
    );
    logging::flush();
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("reactor failed: {e}");
            logging::flush();
            eprintln!("herd: {name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Jitter seed: differs between processes so restarted servers do not redial in lockstep.
fn seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}
