//! Herds of real `herd` processes on loopback (the five servers of PROTOCOL.md, or two where
//! two suffice): flooding, its stopping rule, catching up after a server comes back, and
//! neighbours that stall.
//!
//! These herds have no Places key, so WHATSAT answers a known client with the same `? ` line as
//! an unknown one; whether a server holds a record is read from its log, which records every
//! input line as `c<N> < <line>` (flushed within 100 ms).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Client, Herd, expect_at, show, timestamp, unix_nanos, wait_until};

const LOCATION: &str = "+34.068930-118.445127";

/// Time allowed for an update to cross the herd (it takes milliseconds; logs add 100 ms).
const PROPAGATION: Duration = Duration::from_secs(5);

/// Sends an IAMAT for `client` to `server` and returns the AT line it answers with, without
/// its `\n`: the line every other server must receive unchanged.
fn update(herd: &Herd, server: &str, client: &str) -> Vec<u8> {
    let mut c = herd.connect(server);
    update_on(&mut c, server, client, unix_nanos() - 1_000_000_000)
}

/// Like [`update`] on an open connection, with the client timestamp `sent` (nanoseconds).
fn update_on(c: &mut Client, server: &str, client: &str, sent: i128) -> Vec<u8> {
    let ts = timestamp(sent);
    let before = unix_nanos();
    let mut reply = c.round_trip(format!("IAMAT {client} {LOCATION} {ts}\n").as_bytes());
    let after = unix_nanos();
    expect_at(&reply, server, format!("{client} {LOCATION} {ts}\n").as_bytes(), before - sent, after - sent);
    reply.pop();
    reply
}

/// Waits until `server` logged receiving `line` at least `times` times.
fn wait_received(herd: &Herd, server: &str, line: &[u8], times: usize) {
    assert!(
        wait_until(PROPAGATION, || herd.received(server, line).len() >= times),
        "{server} did not receive {} {times} time(s) within {PROPAGATION:?} (got {})",
        show(line),
        herd.received(server, line).len()
    );
}

/// How many copies of an update `server` receives: one from each neighbour. PROTOCOL.md floods
/// to all other neighbours and a plain AT line on an inbound connection does not say which
/// neighbour sent it, so even the origin gets one copy back per link (and drops it as not newer).
fn expected_receipts(herd: &Herd, server: &str) -> usize {
    herd.neighbours(server).len()
}

#[test]
fn update_at_campbell_reaches_every_server() {
    let mut herd = Herd::five("");
    herd.start_all();
    // No waiting for the links: an update made while they come up must arrive too (by flood
    // or by the resync when a link comes up).
    let at = update(&herd, "Campbell", "reach-all");
    for server in ["Hill", "Jaquez", "Smith", "Singleton"] {
        wait_received(&herd, server, &at, 1);
    }
    // (Campbell may get its own update back here: a resync sends a neighbour every record,
    // its own included, which is how a restarted origin recovers its clients.)
}

#[test]
fn flooding_sends_each_update_once_per_link_and_stops() {
    let mut herd = Herd::five("");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let names = herd.names();

    let mut campbell = herd.connect("Campbell");
    let sent = unix_nanos() - 2_000_000_000;
    let first = update_on(&mut campbell, "Campbell", "flood-once", sent);
    for s in &names {
        wait_received(&herd, s, &first, expected_receipts(&herd, s));
    }
    // The same update again (equal timestamp) and an older one at another server: both are
    // answered, neither is stored or flooded.
    let duplicate = update_on(&mut campbell, "Campbell", "flood-once", sent);
    let older = update_on(&mut herd.connect("Hill"), "Hill", "flood-once", sent - 1);
    // A later update of another client, made after them on the same connection, marks the
    // point by which anything they caused would have been flooded.
    let sentinel = update_on(&mut campbell, "Campbell", "flood-sentinel", unix_nanos());
    for s in &names {
        wait_received(&herd, s, &sentinel, expected_receipts(&herd, s));
    }

    for s in &names {
        let got = herd.received(s, &first);
        let want = expected_receipts(&herd, s);
        assert_eq!(got.len(), want, "{s} received {} on connections {got:?}", show(&first));
        let mut conns = got.clone();
        conns.dedup();
        assert_eq!(conns.len(), got.len(), "{s} received the update twice on one connection: {got:?}");
        if duplicate != first {
            assert_eq!(herd.received(s, &duplicate), Vec::<u64>::new(), "{s} got a flood of a duplicate");
        }
        assert_eq!(herd.received(s, &older), Vec::<u64>::new(), "{s} got a flood of an older update");
    }
}

#[test]
fn killed_server_catches_up_after_restart() {
    let mut herd = Herd::five("");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));

    herd.kill9("Jaquez");
    let at = update(&herd, "Campbell", "while-jaquez-down");
    for server in ["Hill", "Smith", "Singleton"] {
        wait_received(&herd, server, &at, 1);
    }
    let t = Instant::now();
    herd.restart("Jaquez");
    wait_received(&herd, "Jaquez", &at, 1);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "Jaquez caught up only after {took:?}");
    // It came by resync: its neighbours logged one to it after the restart.
    assert!(
        wait_until(PROPAGATION, || ["Hill", "Singleton"]
            .iter()
            .any(|s| herd.log_count(s, "resync to Jaquez: ") >= 1)),
        "neither Hill nor Singleton logged a resync to Jaquez"
    );
    // And it is a working member again: a new update reaches it by flood.
    let later = update(&herd, "Smith", "after-restart");
    wait_received(&herd, "Jaquez", &later, 1);
}

#[test]
fn without_sync_on_connect_restarted_server_misses_old_update() {
    let mut herd = Herd::five("sync_on_connect: false");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));

    herd.kill9("Jaquez");
    let old = update(&herd, "Campbell", "while-jaquez-down");
    for server in ["Hill", "Smith", "Singleton"] {
        wait_received(&herd, server, &old, 1);
    }
    herd.restart("Jaquez");
    // Both neighbours' links to Jaquez are up again (a resync, if one were sent, is queued on
    // the link the moment it comes up, before anything flooded later)...
    for s in ["Hill", "Singleton"] {
        assert!(
            wait_until(Duration::from_secs(10), || herd.log_count(s, "link to Jaquez up") >= 2),
            "{s} did not redial Jaquez"
        );
    }
    // ...so once a later update has reached Jaquez over both links, a resync would have too.
    let later = update(&herd, "Campbell", "after-restart");
    wait_received(&herd, "Jaquez", &later, 2);
    assert_eq!(
        herd.received("Jaquez", &old),
        Vec::<u64>::new(),
        "with sync_on_connect: false the restarted server must not be sent old records"
    );
    assert_eq!(herd.log_count("Hill", "resync to"), 0);
    assert_eq!(herd.log_count("Singleton", "resync to"), 0);
}

#[test]
fn stopped_neighbour_does_not_block_the_herd() {
    let mut herd = Herd::five("");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));

    // Smith is frozen: its links stay open but it reads nothing.
    herd.signal("Smith", "STOP");
    let t = Instant::now();
    let at = update(&herd, "Campbell", "smith-frozen");
    assert!(t.elapsed() < Duration::from_secs(1), "Campbell answered after {:?}", t.elapsed());
    // Hill hears of it the long way round: Campbell, Singleton, Jaquez, Hill.
    wait_received(&herd, "Hill", &at, 1);

    herd.signal("Smith", "CONT");
    wait_received(&herd, "Smith", &at, 1);
    let later = update(&herd, "Smith", "smith-thawed");
    for server in ["Hill", "Jaquez", "Campbell", "Singleton"] {
        wait_received(&herd, server, &later, 1);
    }
}

#[test]
fn at_line_from_any_connection_is_flooded_unchanged() {
    let mut herd = Herd::new(&[("Hill", &["Jaquez"]), ("Jaquez", &[])], "");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    // An AT line written by hand on a client connection to Hill, as a server written in another
    // language would send it: Hill stores it and floods it on, byte for byte.
    let at = b"AT Smith +0.263873386 by-hand +34.068930-118.445127 1520023934.918963997";
    let mut c = herd.connect("Hill");
    let mut line = at.to_vec();
    line.push(b'\n');
    c.send(&line);
    wait_received(&herd, "Jaquez", at, 1);
}

#[test]
fn updates_one_nanosecond_apart_are_both_newer() {
    let mut herd = Herd::new(&[("Campbell", &["Hill"]), ("Hill", &[])], "");
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let mut c = herd.connect("Campbell");
    // 19 significant digits: as f64 these two timestamps are the same number.
    let t = 1_520_023_934_918_963_997;
    let first = update_on(&mut c, "Campbell", "nano", t);
    let second = update_on(&mut c, "Campbell", "nano", t + 1);
    let stale = update_on(&mut c, "Campbell", "nano", t);
    let sentinel = update_on(&mut c, "Campbell", "nano-sentinel", t);
    wait_received(&herd, "Hill", &first, 1);
    wait_received(&herd, "Hill", &second, 1);
    wait_received(&herd, "Hill", &sentinel, 1);
    if stale != first {
        assert_eq!(herd.received("Hill", &stale), Vec::<u64>::new(), "an older update was flooded");
    }
}

#[test]
fn stalled_neighbour_is_dropped_at_its_output_limit_then_resynced() {
    let mut herd = Herd::new(
        &[("Hill", &["Jaquez"]), ("Jaquez", &[])],
        "limits: {max_line: 1024, peer_output: 4096, client_output: 67108864}",
    );
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    herd.signal("Jaquez", "STOP");

    // More bytes of updates than the kernel's socket buffers hold (a few MB on loopback), so
    // Hill's own queue for Jaquez passes peer_output. Long ids: fewer lines for the bytes.
    let n = 12_000;
    let base = unix_nanos() - 1_000_000_000;
    let padding = "p".repeat(600);
    let mut batch = Vec::new();
    for i in 0..n {
        batch
            .extend_from_slice(format!("IAMAT s{i}-{padding} +1.0+1.0 {}\n", timestamp(base + i)).as_bytes());
    }
    let mut c = herd.connect("Hill");
    c.send(&batch);
    let replies = c.read_lines(n as usize, Duration::from_secs(30));
    // The AT lines Hill answered: every one must reach Jaquez in the end.
    let updates: Vec<&[u8]> = replies.iter().map(|l| l.strip_suffix(b"\n").expect("a whole line")).collect();
    assert!(
        wait_until(Duration::from_secs(10), || herd.log_count("Hill", "output limit of 4096 bytes") >= 1),
        "Hill did not drop the link to the stalled Jaquez"
    );
    // Hill stays responsive meanwhile.
    let t = Instant::now();
    update(&herd, "Hill", "while-stalled");
    assert!(t.elapsed() < Duration::from_secs(1), "Hill answered after {:?}", t.elapsed());

    herd.signal("Jaquez", "CONT");
    let mut missing = updates.len();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got: HashSet<Vec<u8>> = herd
                .log_messages("Jaquez")
                .into_iter()
                .filter_map(|m| {
                    let at = m.windows(3).position(|w| w == b" < ")?;
                    Some(m[at + 3..].to_vec())
                })
                .collect();
            missing =
                updates.iter().filter(|u| !got.contains(&u.escape_ascii().to_string().into_bytes())).count();
            missing == 0
        }),
        "Jaquez is missing {missing} of {} updates after it resumed",
        updates.len()
    );
    assert!(herd.log_count("Hill", "resync to Jaquez") >= 1, "no resync after the drop");
}
