//! Command-line arguments: `herd [--config PATH] NAME`, `herd --list`, `--help`, `--version`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The help text.
pub const USAGE: &str = "\
herd: one server of a proxy herd (IAMAT, AT, WHATSAT over TCP)

Usage:
  herd [--config PATH] NAME    run the server called NAME
  herd [--config PATH] --list  print each server's name, address and log file, then exit
  herd --help | --version

Options:
  -c, --config PATH   the herd's configuration [default: ./config.yml]
  -l, --list          list the servers of the configuration
  -h, --help          print this help
  -V, --version       print the version

Environment:
  GOOGLE_PLACES_API_KEY   the Places API key; overrides any key in the configuration

Signals: SIGINT and SIGTERM stop accepting, flush replies and logs, and exit 0.
Exit status: 0 on a clean stop, 1 if the server cannot run (e.g. its port is taken),
2 for a usage or configuration error.
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the server `name`.
    Run {
        /// The configuration file.
        config: PathBuf,
        /// The server's name.
        name: String,
    },
    /// List the configuration's servers.
    List {
        /// The configuration file.
        config: PathBuf,
    },
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = PathBuf::from("config.yml");
    let mut name = None;
    let mut list = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Action::Help),
            Short('V') | Long("version") => return Ok(Action::Version),
            Short('c') | Long("config") => config = parser.value()?.into(),
            Short('l') | Long("list") => list = true,
            Value(v) if name.is_none() => name = Some(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    match (list, name) {
        (true, None) => Ok(Action::List { config }),
        (true, Some(_)) => Err("--list takes no server name".into()),
        (false, Some(name)) => Ok(Action::Run { config, name }),
        (false, None) => Err("missing server NAME (try --list to see them, or --help)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Action, String> {
        parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn forms() {
        assert_eq!(p(&["Hill"]), Ok(Action::Run { config: "config.yml".into(), name: "Hill".into() }));
        assert_eq!(
            p(&["--config", "x.yml", "Hill"]),
            Ok(Action::Run { config: "x.yml".into(), name: "Hill".into() })
        );
        assert_eq!(
            p(&["Hill", "-c", "y.yml"]),
            Ok(Action::Run { config: "y.yml".into(), name: "Hill".into() })
        );
        assert_eq!(p(&["--list"]), Ok(Action::List { config: "config.yml".into() }));
        assert_eq!(p(&["--help", "Hill"]), Ok(Action::Help));
        assert_eq!(p(&["-V"]), Ok(Action::Version));
        assert!(p(&[]).unwrap_err().contains("missing server NAME"));
        assert!(p(&["Hill", "Smith"]).is_err());
        assert!(p(&["--frobnicate"]).is_err());
        assert!(p(&["--config"]).is_err());
    }
}
