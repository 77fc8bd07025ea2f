//! Serving one connection: TLS handshake, then requests answered as the options say, in the
//! chosen delivery, until the peer leaves or the stub closes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::answer::{Reply, google_error, respond};
use crate::cli::{Delivery, Options, Size};
use crate::http::{BODY_MAX, Incoming, chunk_body, read_request, response_head};
use crate::output::{printable, say, warn};
use crate::query::percent_decode;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle (or a request take to arrive).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection is drained before the socket is dropped.
const LINGER: Duration = Duration::from_millis(500);

/// What every connection thread shares.
pub(crate) struct Shared {
    pub(crate) tls: Arc<ServerConfig>,
    pub(crate) options: Options,
    pub(crate) handshakes: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) connections: AtomicUsize,
}

/// Counts a connection while it lives.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

pub(crate) fn serve(sock: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _slot = Slot(&shared.connections);
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = sock.set_write_timeout(Some(WRITE_TIMEOUT));
    let conn = match ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(c) => c,
        Err(e) => return warn(&format!("TLS set-up for {peer} failed: {e}")),
    };
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return warn(&format!("TLS handshake from {peer} failed: {e}"));
        }
    }
    let n = shared.handshakes.fetch_add(1, Ordering::SeqCst) + 1;
    say(&format!("handshake {n} from {peer}"));
    let _ = tls.sock.set_read_timeout(Some(IDLE_TIMEOUT));
    let o = &shared.options;
    if o.delivery == Delivery::Burst {
        // No cap on what rustls queues, so one write becomes one run of records on the socket.
        tls.conn.set_buffer_limit(None);
    }
    let mut buf = Vec::new();
    loop {
        let (reply, close) = match read_request(&mut tls, &mut buf) {
            Incoming::Closed => return close_gently(tls),
            Incoming::Reject(status, message, line) => {
                let (method, target) = line.unwrap_or_else(|| ("-".into(), "-".into()));
                log_request(shared, &method, &target, status);
                (google_error(status, &message), true)
            }
            Incoming::Request(req, keep_alive) => {
                let reply = respond(&req, o);
                let n = log_request(shared, &req.method, &req.target, reply.status);
                if o.size != Size::Natural {
                    say(&format!("answer {n} {} {} bytes", reply.status, reply.body.len()));
                }
                if !o.delay.is_zero() {
                    thread::sleep(o.delay);
                }
                (reply, o.close || !keep_alive)
            }
        };
        if o.reset_mid_body {
            let mut wire = response_head(reply.status, reply.body.len(), o.chunked, close);
            let body: Vec<u8> = if o.chunked { chunk_body(&reply.body).concat() } else { reply.body };
            wire.extend_from_slice(&body[..body.len() / 2]);
            let _ = tls.write_all(&wire).and_then(|()| tls.flush());
            // No close_notify: the peer sees the stream end mid-body.
            let _ = tls.sock.shutdown(Shutdown::Both);
            return;
        }
        if write_reply(&mut tls, &reply, o.chunked, close, o.delivery).is_err() {
            return;
        }
        if close {
            return close_gently(tls);
        }
    }
}

/// Prints the `request N` line; returns N.
fn log_request(shared: &Shared, method: &str, target: &str, status: u16) -> u64 {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    say(&format!("request {n} {} {} -> {status}", printable(method), printable_target(target)));
    n
}

/// The request target as printed: the `key` parameter removed from the query, whatever its case
/// or encoding, and anything unprintable escaped.
fn printable_target(target: &str) -> String {
    let shown = match target.split_once('?') {
        None => target.to_owned(),
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|param| {
                    let name = param.split('=').next().unwrap_or_default();
                    !percent_decode(name).eq_ignore_ascii_case("key")
                })
                .collect();
            if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) }
        }
    };
    printable(&shown)
}

/// Sends `reply` as `delivery` says.
fn write_reply(
    tls: &mut Tls,
    reply: &Reply,
    chunked: bool,
    close: bool,
    delivery: Delivery,
) -> io::Result<()> {
    let head = response_head(reply.status, reply.body.len(), chunked, close);
    match delivery {
        Delivery::Default if chunked => {
            tls.write_all(&head)?;
            tls.flush()?;
            // One flush per chunk, so the chunks travel in separate TLS records.
            for chunk in chunk_body(&reply.body) {
                tls.write_all(&chunk)?;
                tls.flush()?;
            }
            Ok(())
        }
        Delivery::Default | Delivery::Burst => {
            tls.write_all(&whole_response(head, &reply.body, chunked))?;
            tls.flush()
        }
        Delivery::Trickle { piece, pause } => {
            for (i, part) in whole_response(head, &reply.body, chunked).chunks(piece).enumerate() {
                if i > 0 {
                    thread::sleep(pause);
                }
                // rustls makes a record of what is written before each flush (several records
                // when a piece is over its 16 KiB fragment size).
                tls.write_all(part)?;
                tls.flush()?;
            }
            Ok(())
        }
    }
}

/// The head followed by the body, framed (chunked as [`chunk_body`] cuts it, or as it is).
fn whole_response(mut head: Vec<u8>, body: &[u8], chunked: bool) -> Vec<u8> {
    if chunked {
        head.extend(chunk_body(body).concat());
    } else {
        head.extend_from_slice(body);
    }
    head
}

/// Sends close_notify, shuts the write side and drains what the peer still sends for a moment,
/// so the last response is not lost to a reset.
fn close_gently(mut tls: Tls) {
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        if tls.conn.write_tls(&mut tls.sock).is_err() {
            break;
        }
    }
    let _ = tls.sock.shutdown(Shutdown::Write);
    let _ = tls.sock.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while Instant::now() < deadline && drained < BODY_MAX {
        match tls.sock.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_responses_are_framed_as_the_head_says() {
        let head = response_head(200, 5, false, false);
        assert_eq!(whole_response(head.clone(), b"hello", false), [&head[..], b"hello"].concat());
        let head = response_head(200, 5, true, false);
        assert_eq!(
            whole_response(head.clone(), b"hello", true),
            [head, chunk_body(b"hello").concat()].concat()
        );
    }

    #[test]
    fn printed_targets_never_show_the_key() {
        assert_eq!(
            printable_target("/m/json?location=1,2&key=SECRET&radius=3"),
            "/m/json?location=1,2&radius=3"
        );
        assert_eq!(printable_target("/m/json?key=SECRET"), "/m/json");
        assert_eq!(printable_target("/m/json?KEY=SECRET&%6Bey=SECRET2&key"), "/m/json");
        assert_eq!(printable_target("/v1/places:searchNearby"), "/v1/places:searchNearby");
        assert_eq!(printable_target("/a\nrequest 9 GET /"), "/a\\nrequest 9 GET /");
    }
}
