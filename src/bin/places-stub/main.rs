//! `places-stub`: an offline HTTPS stand-in for Google Places, for tests and demos.
//!
//! A real TLS server on loopback (a fresh self-signed certificate from rcgen, written to a PEM
//! file the herd trusts through `places.ca_file`) that speaks both API shapes the herd uses:
//!
//! - Places API (New): `POST …/v1/places:searchNearby`, key in `X-Goog-Api-Key`, field mask in
//!   `X-Goog-FieldMask`, answering `{"places": [...]}` with exactly `maxResultCount` places, each
//!   holding only the fields the mask names;
//! - legacy Nearby Search: `GET …/maps/api/place/nearbysearch/json?location=LAT,LNG&radius=M&key=K`,
//!   answering 20 results in the legacy shape, pretty-printed as Google does.
//!
//! Keys, masks and parameters are checked as Google checks them, with Google's error shapes. The
//! places are synthetic, clearly named so, and deterministic functions of the query; each lies
//! within 0.9 of the radius from the centre. Flags make it misbehave on purpose (delay, error
//! status, non-JSON body, chunked bodies, closing, a body cut short).
//!
//! Answers of a chosen size and delivery, for testing how a client reads large answers however
//! their TLS records arrive:
//!
//! - `--pad-to SIZE` makes every successful answer's body about SIZE bytes (`20480`, `20K`,
//!   `1.9M`; K and M are KiB and MiB); `--size-by-radius` chooses the size per request instead:
//!   a query with a radius of R metres gets a body of about round(R) KiB, so one stub serves
//!   every size (radius 20 m: 20 KiB; 1946 m: 1.9 MiB; 2100 m: over a 2 MiB limit). The padding
//!   stays valid JSON in Google's shape: legacy results gain `photos` entries (height,
//!   `html_attributions`, `photo_reference`, width) and a longer `vicinity`; New API places gain
//!   extra `types` and a longer `shortFormattedAddress`, which survive the herd's field mask (a
//!   mask without them leaves the answer unpadded). A target below the bare answer gets fewer
//!   results, down to one. The body is exact to the byte unless even one bare result exceeds
//!   it. Padded legacy answers carry runs of newlines (a blank line between results, a second
//!   trailing newline), as Google's legacy answers were reported to, which a WHATSAT reply must
//!   collapse (the fixture we hold from Google has none, so the default layout stays without).
//!   The stub prints `answer N STATUS BYTES bytes` after each `request N` line in these modes.
//! - `--burst` writes each whole response (head and body, chunked or not) in one write, so its
//!   TLS records arrive together; `--trickle K` writes it in pieces of K bytes, each flushed as
//!   its own TLS record(s), with `--trickle-pause-us` (default 1000) between them. Without
//!   either, a plain response is one write and a chunked one is flushed chunk by chunk.
//!
//! This is test infrastructure, not the product: one thread per connection, blocking sockets.
//! stdout carries one flushed line per event (`handshake N from ADDR`, `request N METHOD PATH ->
//! STATUS`) for tests to read; the key and the `key=` parameter are never printed.
//!
//! # Layout
//! - [`cli`]: the command line, `--help`, and the size and delivery options.
//! - [`output`]: the stdout and stderr lines, made printable.
//! - [`places`]: the synthetic places, in both API shapes, padded on demand.
//! - [`mask`]: New API field masks.
//! - [`query`]: request validation (New API body, legacy query string) with Google's messages.
//! - [`answer`]: the answer to a request: routing, key, mask and query checks, Google's errors,
//!   `--status` and `--garbage`; [`json`] lays the JSON out as each API does.
//! - [`pad`]: answers of a chosen size (`--pad-to`, `--size-by-radius`).
//! - [`http`]: HTTP/1.1 request reading, response heads, chunked bodies.
//! - [`serve`](mod@serve): one connection: handshake, requests, delivery (`--burst`, `--trickle`), closing.
//! - [`tls`]: the certificate and the TLS configuration.
//! - `main.rs`: start-up (certificate file, listener, port file) and the accept loop.

#![forbid(unsafe_code)]

mod answer;
mod cli;
mod http;
mod json;
mod mask;
mod output;
mod pad;
mod places;
mod query;
mod serve;
#[cfg(test)]
mod testing;
mod tls;

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use cli::{Command, HELP, Options, parse_args};
use output::{say, warn};
use serve::{Shared, serve};
use tls::{certificate, tls_config};

/// Most connections served at once; further ones are closed at once.
const MAX_CONNECTIONS: usize = 256;

fn main() -> ExitCode {
    match parse_args(lexopt::Parser::from_env()) {
        Ok(Command::Help) => {
            let _ = io::stdout().lock().write_all(HELP.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            say(&format!("places-stub {}", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            warn(&format!("{e}\nTry 'places-stub --help'."));
            ExitCode::from(2)
        }
        Ok(Command::Run(options)) => match run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(&e);
                ExitCode::FAILURE
            }
        },
    }
}

fn run(options: Options) -> Result<(), String> {
    let (cert, key, pem) = certificate().map_err(|e| format!("cannot make a certificate: {e}"))?;
    let tls = tls_config(cert, key).map_err(|e| format!("cannot set up TLS: {e}"))?;
    write_atomically(&options.cert_out, pem.as_bytes())
        .map_err(|e| format!("cannot write the certificate to {}: {e}", options.cert_out.display()))?;
    let listener = TcpListener::bind(&options.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
    say(&format!("places-stub listening on https://{addr}"));
    // Last, so whoever sees the port file also finds the certificate and the line above.
    if let Some(path) = &options.port_file {
        write_atomically(path, format!("{}\n", addr.port()).as_bytes())
            .map_err(|e| format!("cannot write the port to {}: {e}", path.display()))?;
    }
    let shared = Arc::new(Shared {
        tls: Arc::new(tls),
        options,
        handshakes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        connections: AtomicUsize::new(0),
    });
    loop {
        let (sock, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                warn(&format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn(&format!("too many connections, closing the one from {peer}"));
            continue;
        }
        let spawned = thread::Builder::new().name("places-stub-conn".into()).spawn({
            let shared = Arc::clone(&shared);
            move || serve(sock, peer, &shared)
        });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn(&format!("cannot start a thread for {peer}: {e}"));
        }
    }
}

/// Writes `bytes` to `path` through a temporary name and a rename, so no reader sees half.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
