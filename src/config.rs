//! `config.yml`: the herd's servers, their neighbours, Places settings, logging and limits.
//!
//! The layout of the Python asyncio version (`ports:`, `neighbors:`, `api_key:`) is accepted
//! unchanged; everything else is optional. Unknown keys are refused, so a misspelt setting is an
//! error rather than silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::WhatsatPolicy;
use crate::places::{Endpoint, PlacesApi, Secret};

/// Longest `places.timeout_ms`: an hour. Longer is a typo, and deadlines far in the future
/// only hold requests and memory.
const MAX_PLACES_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest `places.cache_ttl_ms`: a day (Google's answers change; a longer cache is stale).
const MAX_CACHE_TTL: Duration = Duration::from_secs(86_400);
/// Slowest non-zero `places.rate_limit` (one request per 1,000 s) and fastest: beyond either,
/// the token bucket's interval is no longer a usable duration.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;
/// Largest `places.rate_burst`.
const MAX_BURST: u32 = 1_000_000;

/// The environment variable that overrides any key in the file.
pub const API_KEY_ENV: &str = "GOOGLE_PLACES_API_KEY";

/// Places settings.
#[derive(Debug, Clone)]
pub struct Places {
    /// Which API.
    pub api: PlacesApi,
    /// Base URL, e.g. `https://places.googleapis.com`.
    pub endpoint: String,
    /// Extra trusted roots (PEM), e.g. the local stand-in's certificate.
    pub ca_file: Option<PathBuf>,
    /// The key: from the environment if set there, else from the file.
    pub api_key: Option<Secret>,
    /// How WHATSAT uses Places: deadline, pool, queue, cache, rate limit (the settings of the
    /// same names, with their defaults).
    pub whatsat: WhatsatPolicy,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct Logging {
    /// Folder of the log files, created if missing.
    pub dir: PathBuf,
    /// Level: `error`, `warn`, `info` (the default: every line in and out) or `debug`.
    pub level: log::LevelFilter,
}

/// Named limits. Each bounds memory or time that hostile input could otherwise grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest input line, terminator excluded. Longer lines get a `? ` reply with a prefix of
    /// the line and the connection is closed; without it a client could fill memory with one line.
    pub max_line: usize,
    /// Most open connections (clients, peers and links). More are accepted and closed at once.
    pub max_connections: usize,
    /// Replies queued for one client that does not read; past it the client is closed.
    pub client_output: usize,
    /// Floods queued for one neighbour that does not read; past it the link is dropped,
    /// redialled and resynced.
    pub peer_output: usize,
    /// Bytes read from one socket per readiness event before others get their turn.
    pub read_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 4096,
            max_connections: 16_384,
            client_output: 4 << 20,
            peer_output: 8 << 20,
            read_budget: 256 << 10,
        }
    }
}

/// One herd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name.
    pub name: String,
    /// Where it listens and where its neighbours dial it.
    pub addr: SocketAddr,
    /// Its neighbours, by index into [`Config::servers`], symmetric.
    pub neighbours: Vec<usize>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// All servers, ordered by port.
    pub servers: Vec<Server>,
    /// Places settings.
    pub places: Places,
    /// Logging settings.
    pub logging: Logging,
    /// Send every record to a neighbour when its link comes up.
    pub sync_on_connect: bool,
    /// Limits.
    pub limits: Limits,
}

/// What is wrong with a configuration. Each names the problem and where it is.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not YAML of the expected shape.
    Parse(PathBuf, String),
    /// No server is listed under `ports:`.
    NoServers,
    /// A server name is not known.
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The names that exist.
        valid: Vec<String>,
    },
    /// A neighbour list names a server that does not exist.
    UnknownNeighbour {
        /// The server whose list it is.
        server: String,
        /// The name that does not exist.
        neighbour: String,
    },
    /// A section names a server that is not under `ports:`.
    NotAServer {
        /// The section.
        section: &'static str,
        /// The name.
        name: String,
    },
    /// A server lists itself as its neighbour.
    SelfNeighbour(String),
    /// Two servers share a port on the same address.
    DuplicatePort {
        /// The port.
        port: u16,
        /// The first server.
        first: String,
        /// The second server.
        second: String,
    },
    /// Port 0 is not a port one can dial.
    ZeroPort(String),
    /// A `hosts:` entry is not an IP address.
    BadAddress {
        /// The server.
        server: String,
        /// What was written.
        value: String,
    },
    /// A setting has a value out of range.
    BadValue {
        /// The setting.
        key: &'static str,
        /// Why.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read config {}: {e}", p.display()),
            Self::Parse(p, e) => write!(f, "config {} is not valid: {e}", p.display()),
            Self::NoServers => write!(f, "config lists no servers under `ports:`"),
            Self::UnknownServer { name, valid } => {
                write!(f, "unknown server name {name:?}; valid names: {}", valid.join(", "))
            }
            Self::UnknownNeighbour { server, neighbour } => {
                write!(f, "server {server} has neighbour {neighbour:?}, which is not a server under `ports:`")
            }
            Self::NotAServer { section, name } => {
                write!(f, "`{section}:` names {name:?}, which is not a server under `ports:`")
            }
            Self::SelfNeighbour(s) => write!(f, "server {s} lists itself as a neighbour"),
            Self::DuplicatePort { port, first, second } => {
                write!(f, "servers {first} and {second} both use port {port}")
            }
            Self::ZeroPort(s) => write!(f, "server {s} has port 0; give it a real port (1-65535)"),
            Self::BadAddress { server, value } => {
                write!(f, "`hosts:` address {value:?} of server {server} is not an IP address")
            }
            Self::BadValue { key, why } => write!(f, "`{key}`: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    ports: BTreeMap<String, u16>,
    #[serde(default, alias = "neighbours")]
    neighbors: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    places: RawPlaces,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    sync_on_connect: Option<bool>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    api: Option<PlacesApi>,
    endpoint: Option<String>,
    ca_file: Option<PathBuf>,
    api_key: Option<String>,
    timeout_ms: Option<u64>,
    max_in_flight: Option<usize>,
    max_queued: Option<usize>,
    cache_ttl_ms: Option<u64>,
    cache_bytes: Option<usize>,
    rate_limit: Option<f64>,
    rate_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    dir: Option<PathBuf>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line: Option<usize>,
    max_connections: Option<usize>,
    client_output: Option<usize>,
    peer_output: Option<usize>,
    read_budget: Option<usize>,
}

impl Config {
    /// Reads and validates the file at `path`; the environment's key wins over the file's.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        let env_key = std::env::var(API_KEY_ENV).ok().filter(|k| !k.trim().is_empty());
        Self::parse(&text, env_key).map_err(|e| match e {
            ConfigError::Parse(_, m) => ConfigError::Parse(path.to_owned(), m),
            other => other,
        })
    }

    /// Parses and validates YAML text. `env_key`, if given, overrides any key in the text.
    ///
    /// Each section is checked by its own function, in this order (the first mistake is the one
    /// reported): servers, places, logging, limits.
    pub fn parse(text: &str, env_key: Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(PathBuf::new(), e.to_string()))?;
        let servers = parse_servers(&raw)?;
        let places = parse_places(raw.places, env_key, raw.api_key)?;
        let logging = parse_logging(raw.logging)?;
        let limits = parse_limits(raw.limits)?;
        Ok(Self { servers, places, logging, sync_on_connect: raw.sync_on_connect.unwrap_or(true), limits })
    }

    /// The server called `name`, or an error listing the valid names.
    pub fn server(&self, name: &str) -> Result<&Server, ConfigError> {
        self.servers.iter().find(|s| s.name == name).ok_or_else(|| ConfigError::UnknownServer {
            name: name.to_owned(),
            valid: self.servers.iter().map(|s| s.name.clone()).collect(),
        })
    }

    /// The log file of server `name`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.logging.dir.join(format!("{name}.log"))
    }
}

/// `ports:`, `hosts:` and `neighbors:`: the servers ordered by port, their neighbours symmetric.
fn parse_servers(raw: &RawConfig) -> Result<Vec<Server>, ConfigError> {
    if raw.ports.is_empty() {
        return Err(ConfigError::NoServers);
    }
    let names: Vec<&String> = raw.ports.keys().collect();
    let index = |n: &str| names.iter().position(|m| *m == n);
    for (section, keys) in
        [("neighbors", raw.neighbors.keys().collect::<Vec<_>>()), ("hosts", raw.hosts.keys().collect())]
    {
        if let Some(k) = keys.into_iter().find(|k| index(k).is_none()) {
            return Err(ConfigError::NotAServer { section, name: k.clone() });
        }
    }
    let mut servers = listed_servers(&raw.ports, &raw.hosts)?;
    for (i, a) in servers.iter().enumerate() {
        if let Some(b) = servers[..i].iter().find(|b| b.addr.port() == a.addr.port() && same_host(a, b)) {
            return Err(ConfigError::DuplicatePort {
                port: a.addr.port(),
                first: b.name.clone(),
                second: a.name.clone(),
            });
        }
    }
    for (server, list) in &raw.neighbors {
        let s = index(server).unwrap_or_default();
        for neighbour in list {
            let n = index(neighbour).ok_or_else(|| ConfigError::UnknownNeighbour {
                server: server.clone(),
                neighbour: neighbour.clone(),
            })?;
            if n == s {
                return Err(ConfigError::SelfNeighbour(server.clone()));
            }
            // "Talks with" works both ways.
            for (x, y) in [(s, n), (n, s)] {
                if !servers[x].neighbours.contains(&y) {
                    servers[x].neighbours.push(y);
                }
            }
        }
    }
    Ok(by_port(servers))
}

/// The servers of `ports:` in the order of their names, each at its `hosts:` address (loopback
/// when none is given), without neighbours yet.
fn listed_servers(
    ports: &BTreeMap<String, u16>,
    hosts: &BTreeMap<String, String>,
) -> Result<Vec<Server>, ConfigError> {
    let mut servers = Vec::new();
    for (name, &port) in ports {
        if port == 0 {
            return Err(ConfigError::ZeroPort(name.clone()));
        }
        let ip = match hosts.get(name) {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) if h == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) => {
                h.parse().map_err(|_| ConfigError::BadAddress { server: name.clone(), value: h.clone() })?
            }
        };
        servers.push(Server { name: name.clone(), addr: SocketAddr::new(ip, port), neighbours: Vec::new() });
    }
    Ok(servers)
}

/// `servers` ordered by port, the order of PROTOCOL.md's table; neighbour indices follow.
fn by_port(servers: Vec<Server>) -> Vec<Server> {
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by_key(|&i| servers[i].addr.port());
    let mut new_index = vec![0; servers.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let mut servers: Vec<Server> = order.iter().map(|&i| servers[i].clone()).collect();
    for s in &mut servers {
        for n in &mut s.neighbours {
            *n = new_index[*n];
        }
        s.neighbours.sort_unstable();
    }
    servers
}

/// `places:`. The key is `env_key` if given, else `places.api_key`, else the top-level `api_key`
/// (the Python layout's).
fn parse_places(
    p: RawPlaces,
    env_key: Option<String>,
    top_key: Option<String>,
) -> Result<Places, ConfigError> {
    let api = p.api.unwrap_or(PlacesApi::New);
    let endpoint = p.endpoint.unwrap_or_else(|| match api {
        PlacesApi::New => "https://places.googleapis.com".into(),
        PlacesApi::Legacy => "https://maps.googleapis.com".into(),
    });
    if let Err(why) = Endpoint::parse(&endpoint) {
        return Err(ConfigError::BadValue { key: "places.endpoint", why });
    }
    let api_key = env_key.or(p.api_key).or(top_key).filter(|k| !k.trim().is_empty()).map(Secret::new);
    // The defaults are the policy's own, so they are written once.
    let d = WhatsatPolicy::new(api, api_key.is_some());
    let bad = |key, why: &str| Err(ConfigError::BadValue { key, why: why.into() });
    let max_in_flight = p.max_in_flight.unwrap_or(d.max_in_flight);
    if max_in_flight == 0 {
        return bad("places.max_in_flight", "must be above 0");
    }
    let timeout = p.timeout_ms.map_or(d.timeout, Duration::from_millis);
    if timeout.is_zero() || timeout > MAX_PLACES_TIMEOUT {
        return bad("places.timeout_ms", "must be from 1 to 3600000 (an hour)");
    }
    let cache_ttl = p.cache_ttl_ms.map_or(d.cache_ttl, Duration::from_millis);
    if cache_ttl > MAX_CACHE_TTL {
        return bad("places.cache_ttl_ms", "must be from 0 (no cache) to 86400000 (a day)");
    }
    let rate_limit = p.rate_limit.unwrap_or(d.rate_limit);
    if !(rate_limit == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate_limit)) {
        return bad("places.rate_limit", "must be 0 (no limit) or from 0.001 to 1000000 requests per second");
    }
    let rate_burst = p.rate_burst.unwrap_or(d.rate_burst);
    if rate_burst == 0 || rate_burst > MAX_BURST {
        return bad("places.rate_burst", "must be from 1 to 1000000");
    }
    let whatsat = WhatsatPolicy {
        timeout,
        max_in_flight,
        max_queued: p.max_queued.unwrap_or(d.max_queued),
        cache_ttl,
        cache_bytes: p.cache_bytes.unwrap_or(d.cache_bytes),
        rate_limit,
        rate_burst,
        ..d
    };
    Ok(Places { api, endpoint, ca_file: p.ca_file, api_key, whatsat })
}

/// `logging:`.
fn parse_logging(l: RawLogging) -> Result<Logging, ConfigError> {
    let level = match l.level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("info") => log::LevelFilter::Info,
        Some("off") => log::LevelFilter::Off,
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some(other) => {
            return Err(ConfigError::BadValue {
                key: "logging.level",
                why: format!("{other:?} is not one of off, error, warn, info, debug, trace"),
            });
        }
    };
    Ok(Logging { dir: l.dir.unwrap_or_else(|| PathBuf::from("logs")), level })
}

/// `limits:`, each at least its minimum.
fn parse_limits(l: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let limits = Limits {
        max_line: l.max_line.unwrap_or(d.max_line),
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        client_output: l.client_output.unwrap_or(d.client_output),
        peer_output: l.peer_output.unwrap_or(d.peer_output),
        read_budget: l.read_budget.unwrap_or(d.read_budget),
    };
    // The maximums catch typos and values whose arithmetic would wrap (`max_line + 2` once
    // turned a huge `max_line` into no line limit at all): none is near what a server can use.
    let line_room = limits.max_line.saturating_add(2);
    for (key, value, min, max) in [
        ("limits.max_line", limits.max_line, 64, 1 << 20),
        ("limits.max_connections", limits.max_connections, 1, 1 << 20),
        ("limits.client_output", limits.client_output, line_room, 1 << 30),
        ("limits.peer_output", limits.peer_output, line_room, 1 << 30),
        ("limits.read_budget", limits.read_budget, 1, 64 << 20),
    ] {
        if value < min {
            return Err(ConfigError::BadValue { key, why: format!("{value} is below the minimum of {min}") });
        }
        if value > max {
            return Err(ConfigError::BadValue { key, why: format!("{value} is above the maximum of {max}") });
        }
    }
    Ok(limits)
}

fn same_host(a: &Server, b: &Server) -> bool {
    a.addr.ip() == b.addr.ip() || a.addr.ip().is_unspecified() || b.addr.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON: &str = "
api_key: from-file
ports:
  Hill: 12001
  Jaquez: 12002
  Smith: 12003
  Campbell: 12004
  Singleton: 12005
neighbors:
  Hill: [Jaquez, Smith]
  Jaquez: [Singleton]
  Smith: [Campbell, Singleton]
  Campbell: [Singleton]
";

    fn err(text: &str) -> String {
        Config::parse(text, None).expect_err("should fail").to_string()
    }

    #[test]
    fn python_layout_accepted_and_made_symmetric() {
        let c = Config::parse(PYTHON, None).unwrap();
        let names: Vec<_> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"]);
        let nb = |n: &str| -> Vec<&str> {
            c.server(n).unwrap().neighbours.iter().map(|&i| c.servers[i].name.as_str()).collect()
        };
        assert_eq!(nb("Hill"), ["Jaquez", "Smith"]);
        assert_eq!(nb("Jaquez"), ["Hill", "Singleton"]);
        assert_eq!(nb("Smith"), ["Hill", "Campbell", "Singleton"]);
        assert_eq!(nb("Campbell"), ["Smith", "Singleton"]);
        assert_eq!(nb("Singleton"), ["Jaquez", "Smith", "Campbell"]);
        assert_eq!(c.server("Hill").unwrap().addr, "127.0.0.1:12001".parse().unwrap());
        assert_eq!(c.places.api_key.as_ref().unwrap().expose(), "from-file");
        assert_eq!(c.places.api, PlacesApi::New);
        assert!(c.sync_on_connect);
    }

    #[test]
    fn env_key_overrides_file_and_never_prints() {
        let c = Config::parse(PYTHON, Some("from-env".into())).unwrap();
        assert_eq!(c.places.api_key.as_ref().unwrap().expose(), "from-env");
        assert!(!format!("{c:?}").contains("from-env"));
        assert!(!format!("{c:?}").contains("from-file"));
    }

    #[test]
    fn unknown_server_lists_valid_names() {
        let c = Config::parse(PYTHON, None).unwrap();
        let e = c.server("Bruin").unwrap_err().to_string();
        assert!(e.contains("Bruin") && e.contains("Hill, Jaquez, Smith, Campbell, Singleton"), "{e}");
    }

    #[test]
    fn each_mistake_has_its_own_message() {
        assert!(err("ports: {A: 1}\nneighbors: {A: [B]}").contains("neighbour \"B\""));
        assert!(err("ports: {A: 1, B: 1}").contains("both use port 1"));
        assert!(err("ports: {A: 1}\nhosts: {A: nowhere.example}").contains("not an IP address"));
        assert!(err("ports: {A: 1}\nhosts: {B: 127.0.0.1}").contains("`hosts:` names \"B\""));
        assert!(err("ports: {A: 1}\nneighbors: {A: [A]}").contains("itself"));
        assert!(err("ports: {A: 0}").contains("port 0"));
        assert!(err("ports: {}").contains("no servers"));
        assert!(err("ports: {A: 1}\nsync_on_conect: true").contains("sync_on_conect"));
        assert!(err("ports: {A: 1}\nlogging: {level: loud}").contains("logging.level"));
        assert!(err("ports: {A: 1}\nplaces: {endpoint: 'http://x'}").contains("https://"));
        assert!(err("ports: {A: 70000}").contains("not valid"));
    }

    #[test]
    fn limits_out_of_range_are_refused_not_wrapped() {
        let e = err("ports: {A: 1}\nlimits: {max_line: 18446744073709551615}");
        assert!(e.contains("limits.max_line") && e.contains("maximum"), "{e}");
        let e = err("ports: {A: 1}\nlimits: {client_output: 18446744073709551615}");
        assert!(e.contains("limits.client_output"), "{e}");
        let e = err("ports: {A: 1}\nlimits: {max_line: 1000, client_output: 1001}");
        assert!(e.contains("below the minimum of 1002"), "{e}");
        assert!(Config::parse("ports: {A: 1}\nlimits: {max_line: 1048576}", None).is_ok());
    }

    #[test]
    fn whatsat_settings_out_of_range_are_refused_not_panicked_on() {
        for (yaml, key) in [
            ("rate_limit: 1e-300", "places.rate_limit"),
            ("rate_limit: -1", "places.rate_limit"),
            ("rate_limit: .nan", "places.rate_limit"),
            ("rate_limit: 1e9", "places.rate_limit"),
            ("rate_burst: 0", "places.rate_burst"),
            ("rate_burst: 4000000000", "places.rate_burst"),
            ("timeout_ms: 0", "places.timeout_ms"),
            ("timeout_ms: 18446744073709551615", "places.timeout_ms"),
            ("cache_ttl_ms: 18446744073709551615", "places.cache_ttl_ms"),
            ("max_in_flight: 0", "places.max_in_flight"),
        ] {
            let e = err(&format!("ports: {{A: 1}}\nplaces: {{{yaml}}}"));
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let c = Config::parse("ports: {A: 1}\nplaces: {rate_limit: 0, rate_burst: 1, cache_ttl_ms: 0}", None)
            .unwrap();
        assert_eq!((c.places.whatsat.rate_limit, c.places.whatsat.cache_ttl), (0.0, Duration::ZERO));
    }

    #[test]
    fn same_port_on_different_hosts_allowed() {
        let c = Config::parse("ports: {A: 1, B: 1}\nhosts: {A: 127.0.0.1, B: 127.0.0.2}", None).unwrap();
        assert_eq!(c.servers.len(), 2);
    }

    #[test]
    fn extensions_parsed() {
        let c = Config::parse(
            "ports: {A: 5}\nplaces: {api: legacy, ca_file: x.pem, timeout_ms: 70}\n\
             logging: {dir: /tmp/l, level: warn}\nsync_on_connect: false\nlimits: {max_line: 100}",
            None,
        )
        .unwrap();
        assert_eq!(c.places.api, PlacesApi::Legacy);
        assert_eq!(c.places.endpoint, "https://maps.googleapis.com");
        assert_eq!(c.places.whatsat.timeout, Duration::from_millis(70));
        assert_eq!(c.logging.level, log::LevelFilter::Warn);
        assert_eq!(c.log_file("A"), PathBuf::from("/tmp/l/A.log"));
        assert!(!c.sync_on_connect);
        assert_eq!(c.limits.max_line, 100);
    }
}
