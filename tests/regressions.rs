//! Regression tests for defects found in review, each over real `herd` processes: every one of
//! them failed before its fix.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

const LOCATION: &str = "+34.068930-118.445127";

/// An IAMAT whose AT line would be longer than `max_line` is refused: stored and flooded, it was
/// refused by the neighbour, resent first on every resync, and cut the link for good.
#[test]
fn iamat_near_max_line_does_not_poison_the_links() {
    let mut herd = Herd::new(&[("Hill", &["Jaquez"]), ("Jaquez", &["Hill"])], "limits: {max_line: 256}");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let mut c = herd.connect("Hill");
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let filler = format!("IAMAT  {LOCATION} {ts}");
    let id = "k".repeat(256 - filler.len());
    let long = format!("IAMAT {id} {LOCATION} {ts}");
    assert_eq!(long.len(), 256, "a valid line of exactly max_line bytes");
    assert_eq!(show(&c.round_trip(format!("{long}\n").as_bytes())), show(format!("? {long}\n").as_bytes()));
    // The link survives and later updates still flow.
    let reply = c.round_trip(format!("IAMAT after {LOCATION} {ts}\n").as_bytes());
    let at = &reply[..reply.len() - 1];
    assert!(
        wait_until(Duration::from_secs(5), || herd.log_contains("Jaquez", at)),
        "the next update never reached Jaquez"
    );
    assert_eq!(herd.log_count("Hill", "link to Jaquez up"), 1, "the link went down and up again");
}

/// Replies to lines before an over-long line, and its `? ` reply, reach a client that half-closes
/// right after it (they were dropped when end of stream arrived while lingering).
#[test]
fn overlong_line_then_end_of_stream_replies_delivered() {
    let mut herd = Herd::new(&[("Hill", &[])], "limits: {max_line: 256}");
    herd.start("Hill");
    for round in 0..10 {
        let mut c = herd.connect("Hill");
        let ts = timestamp(unix_nanos() - 1_000_000_000);
        let mut input = format!("IAMAT ok-{round} {LOCATION} {ts}\n").into_bytes();
        input.extend_from_slice(&[b'x'; 5000]);
        input.push(b'\n');
        c.send(&input);
        c.shutdown_write();
        let all = c.read_to_eof(Duration::from_secs(5));
        let text = show(&all);
        assert!(text.starts_with("AT Hill "), "round {round}: no reply to the valid line: {text}");
        assert!(text.contains("\\n? xxxx"), "round {round}: no `?` reply to the over-long line: {text}");
    }
}

/// A client that reads while it pipelines is not cut by `client_output`: only what the socket
/// refuses counts (a 256 KiB read used to queue twice that in replies before any was written).
#[test]
fn reading_client_is_not_cut_by_the_output_limit() {
    let mut herd = Herd::new(&[("Hill", &[])], "limits: {client_output: 65536}");
    herd.start("Hill");
    let mut c = herd.connect("Hill");
    let n = 5000;
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT reader-{i} {LOCATION} {ts}\n").as_bytes());
    }
    let mut writer = c.stream().try_clone().expect("clone the socket");
    let sender = thread::spawn(move || std::io::Write::write_all(&mut writer, &batch));
    let replies = c.read_lines(n, Duration::from_secs(20));
    sender.join().expect("sender thread").expect("the whole batch was written");
    assert_eq!(replies.len(), n);
    assert!(!herd.log_contains("Hill", b"output limit"), "a reading client was closed");
}

/// SIGTERM while a client is still sending: every reply already computed arrives (closing with
/// unread input used to reset the connection and discard replies still in flight).
#[test]
fn shutdown_while_client_still_sends_loses_no_reply() {
    let mut herd = Herd::new(&[("Hill", &[])], "limits: {client_output: 67108864}");
    herd.start("Hill");
    let mut c = herd.connect("Hill");
    let n = 80_000;
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT late-{i} {LOCATION} {ts}\n").as_bytes());
    }
    c.send(&batch);
    let last = format!(" < IAMAT late-{} {LOCATION} {ts}\n", n - 1);
    assert!(
        wait_until(Duration::from_secs(20), || herd.log_contains("Hill", last.as_bytes())),
        "Hill did not log receiving the last line"
    );
    herd.signal("Hill", "TERM");
    assert!(
        wait_until(Duration::from_secs(5), || herd.log_contains("Hill", b"shutting down")),
        "no shutdown logged"
    );
    // More input after the signal: it is not answered, and it must not reset the connection.
    c.send(format!("IAMAT after-signal {LOCATION} {ts}\n").repeat(10));
    let all = c.read_to_eof(Duration::from_secs(20));
    let replies = all.split_inclusive(|&b| b == b'\n').count();
    assert_eq!(replies, n, "replies computed before the signal were lost");
    assert_eq!(herd.wait_exit("Hill", Duration::from_secs(5)).code(), Some(0));
}

/// A WHATSAT still waiting for Places when SIGTERM arrives is answered before the close: the
/// shutdown used to shut the client's write side at once (nothing was queued yet), and the
/// answer that came later was lost ("write error: Broken pipe").
#[cfg(feature = "stub")]
#[test]
fn whatsat_pending_at_shutdown_is_still_answered() {
    let stub = Stub::start(&["--delay-ms", "800"]);
    let mut herd = Herd::new(&[("Hill", &[])], &stub.herd_yaml("new", 5000));
    herd.start_all();
    let mut c = herd.connect("Hill");
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let at = c.round_trip(format!("IAMAT waiting {LOCATION} {ts}\n").as_bytes());
    c.send(b"WHATSAT waiting 10 3\n");
    assert!(
        wait_until(Duration::from_secs(5), || stub.stdout().contains("request 1 ")
            || herd.log_contains("Hill", b"WHATSAT waiting 10 3")),
        "the WHATSAT did not reach Hill"
    );
    herd.signal("Hill", "TERM");
    let all = c.read_to_eof(Duration::from_secs(5));
    assert!(all.starts_with(&at), "the reply starts with the stored AT line: {}", show(&all));
    assert!(all.ends_with(b"}\n\n"), "a whole WHATSAT reply before the close: {}", show(&all));
    assert!(herd.wait_exit("Hill", Duration::from_secs(5)).success());
}
