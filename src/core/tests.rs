//! Unit tests of the node, by state and event, and of the WHATSAT flow through it.

use super::*;

const T0: i128 = 1_520_023_934_918_963_997;

fn node(neighbours: &[&str]) -> (Node, Instant) {
    let now = Instant::now();
    let cfg = NodeConfig::new("Hill", neighbours.iter().map(|s| s.to_string()).collect());
    (Node::new(cfg, now), now)
}

fn line(n: &mut Node, unix: i128, l: &str) -> String {
    let mut out = Vec::new();
    n.handle_line(Instant::now(), unix, ConnId(1), l.as_bytes(), &mut out);
    String::from_utf8(out).unwrap()
}

fn up(n: &mut Node, now: Instant, p: usize) {
    n.handle_timeout(now);
    while n.poll_output().is_some() {}
    n.handle_link_up(now, PeerId(p));
}

#[test]
fn iamat_replies_byte_exact() {
    let (mut n, _) = node(&[]);
    let got =
        line(&mut n, T0 + 263_873_386, "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997");
    assert_eq!(got, "AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n");
    assert_eq!(
        n.locations().get(b"kiwi.cs.ucla.edu").unwrap().line(),
        b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997"
    );
}

#[test]
fn iamat_from_the_future_negative_difference() {
    let (mut n, _) = node(&[]);
    let got = line(&mut n, 1_000_000_000, "IAMAT k +1.0+1.0 4.5");
    assert_eq!(got, "AT Hill -3.500000000 k +1.0+1.0 4.5\n");
}

#[test]
fn iamat_stale_answers_but_keeps_newer() {
    let (mut n, _) = node(&[]);
    line(&mut n, T0, "IAMAT k +1.0+1.0 2.0");
    let got = line(&mut n, T0, "IAMAT k +5.0+5.0 1.0");
    assert!(got.starts_with("AT Hill +"), "{got}");
    assert!(n.locations().get(b"k").unwrap().line().ends_with(b"+1.0+1.0 2.0"));
    assert_eq!(n.stats().stale, 1);
}

#[test]
fn invalid_lines_echo_without_terminator() {
    let (mut n, _) = node(&[]);
    assert_eq!(line(&mut n, T0, "IAMAT kiwi 34.0-118.0 1"), "? IAMAT kiwi 34.0-118.0 1\n");
    assert_eq!(line(&mut n, T0, "HELLO\r"), "? HELLO\n");
    assert_eq!(line(&mut n, T0, "WHATSAT nobody 10 5"), "? WHATSAT nobody 10 5\n");
    assert_eq!(line(&mut n, T0, "  \t"), "");
}

#[test]
fn at_stored_silently_and_flooded_to_every_neighbour() {
    let (mut n, now) = node(&["Jaquez", "Smith"]);
    up(&mut n, now, 0);
    up(&mut n, now, 1);
    assert_eq!(line(&mut n, T0, "AT Jaquez +0.5 k +1.0+1.0 7"), "");
    assert_eq!(n.peer_transmit(PeerId(0)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
    assert_eq!(n.peer_transmit(PeerId(1)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
    // The same update again is stale: nothing more is flooded.
    line(&mut n, T0, "AT Jaquez +0.5 k +1.0+1.0 7");
    assert_eq!(n.peer_transmit(PeerId(1)), b"AT Jaquez +0.5 k +1.0+1.0 7\n");
}

#[test]
fn iamat_whose_at_line_would_be_overlong_is_refused() {
    let now = Instant::now();
    let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
    cfg.max_line = 64;
    let mut n = Node::new(cfg, now);
    up(&mut n, now, 0);
    // 59 bytes: a valid line, but its AT reply is longer than a neighbour would accept.
    let iamat = format!("IAMAT {} +1.0+1.0 1", "c".repeat(42));
    assert_eq!(iamat.len(), 59);
    assert_eq!(line(&mut n, T0, &iamat), format!("? {iamat}\n"));
    assert!(n.locations().is_empty());
    assert_eq!(n.peer_transmit(PeerId(0)), b"");
    let short = format!("IAMAT {} +1.0+1.0 1", "c".repeat(10));
    assert!(line(&mut n, T0, &short).starts_with("AT Hill "));
}

#[test]
fn at_with_odd_spacing_stored_canonical() {
    let (mut n, _) = node(&[]);
    line(&mut n, T0, "\tAT  Smith\x0b+0.5 k +1.0+1.0   7 ");
    assert_eq!(n.locations().get(b"k").unwrap().line(), b"AT Smith +0.5 k +1.0+1.0 7");
}

#[test]
fn down_peer_dial_then_up_resyncs_everything() {
    let (mut n, now) = node(&["Jaquez"]);
    for i in 0..3 {
        line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
    }
    assert_eq!(n.poll_timeout(), Some(now));
    n.handle_timeout(now);
    assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
    assert!(matches!(n.link_state(PeerId(0)), LinkState::Connecting { .. }));
    n.handle_link_up(now, PeerId(0));
    let sent = String::from_utf8(n.peer_transmit(PeerId(0)).to_vec()).unwrap();
    assert_eq!(sent.lines().count(), 3, "{sent}");
    assert!(sent.lines().all(|l| l.starts_with("AT Hill ")));
}

#[test]
fn up_without_sync_sends_nothing() {
    let now = Instant::now();
    let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
    cfg.sync_on_connect = false;
    let mut n = Node::new(cfg, now);
    line(&mut n, T0, "IAMAT c +1.0+1.0 1");
    up(&mut n, now, 0);
    assert_eq!(n.peer_transmit(PeerId(0)), b"");
}

#[test]
fn resync_large_table_streams_in_chunks() {
    let (mut n, now) = node(&["Jaquez"]);
    for i in 0..20_000 {
        line(&mut n, T0, &format!("IAMAT client-{i:06} +1.0+1.0 1"));
    }
    up(&mut n, now, 0);
    let mut lines = 0;
    let mut rounds = 0;
    loop {
        let chunk = n.peer_transmit(PeerId(0));
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= SYNC_WATERMARK + 256, "chunk of {}", chunk.len());
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        let len = chunk.len();
        n.peer_sent(PeerId(0), len);
        rounds += 1;
    }
    assert_eq!(lines, 20_000);
    assert!(rounds > 1);
}

#[test]
fn connecting_timeout_disconnects_and_backs_off() {
    let (mut n, now) = node(&["Jaquez"]);
    n.handle_timeout(now);
    assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
    let late = now + Duration::from_secs(2);
    assert_eq!(n.poll_timeout(), Some(late));
    n.handle_timeout(late);
    assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
    assert!(matches!(n.link_state(PeerId(0)), LinkState::Down { retry_at } if retry_at > late));
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    let (mut n, now) = node(&["Jaquez"]);
    let mut t = now;
    let mut delays = Vec::new();
    for _ in 0..10 {
        n.handle_timeout(t);
        assert_eq!(n.poll_output(), Some(Output::Dial(PeerId(0))));
        n.handle_link_down(t, PeerId(0), "refused");
        let LinkState::Down { retry_at } = n.link_state(PeerId(0)) else { panic!() };
        delays.push(retry_at - t);
        t = retry_at;
    }
    let base = Duration::from_millis(50);
    for (i, d) in delays.iter().enumerate() {
        let full = (base * 2u32.pow(i as u32)).min(Duration::from_millis(1000));
        assert!(*d >= full / 2 && *d <= full, "attempt {i}: {d:?} not in [{:?}, {full:?}]", full / 2);
    }
    assert!(delays[9] >= Duration::from_millis(500));
}

fn places_node(max_in_flight: usize) -> (Node, Instant) {
    let now = Instant::now();
    let mut cfg = NodeConfig::new("Hill", vec![]);
    cfg.whatsat = WhatsatPolicy {
        timeout: Duration::from_millis(500),
        max_in_flight,
        max_queued: 0,
        ..WhatsatPolicy::new(PlacesApi::New, true)
    };
    let mut n = Node::new(cfg, now);
    line(&mut n, T0, "IAMAT kiwi +34.068930-118.445127 1520023934.918963997");
    line(&mut n, T0, "IAMAT lime -33.8670522+151.1957362 1520023934.5");
    (n, now)
}

fn whatsat(n: &mut Node, now: Instant, conn: u64, l: &str) -> (Handled, String) {
    let mut out = Vec::new();
    let h = n.handle_line(now, T0, ConnId(conn), l.as_bytes(), &mut out);
    (h, String::from_utf8(out).unwrap())
}

fn ok_places(n: usize) -> Response {
    let places: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id":"p{i}","displayName":{{"text":"P{i}"}},"location":{{"latitude":34.0,"longitude":-118.4}}}}"#))
        .collect();
    Response {
        status: 200,
        body: format!(r#"{{"places":[{}]}}"#, places.join(",")).into_bytes(),
        keep_alive: true,
    }
}

#[test]
fn whatsat_known_client_asks_places_then_replies_with_stored_line() {
    let (mut n, now) = places_node(4);
    let (h, out) = whatsat(&mut n, now, 7, "WHATSAT kiwi 10 2");
    assert_eq!((h, out.as_str()), (Handled::Pending, ""));
    let Some(Output::Places { id, query }) = n.poll_output() else { panic!("no Places request") };
    assert_eq!(query, Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 2 });
    n.handle_places_response(now, id, Ok(ok_places(5)));
    let Some(Output::Reply { conn, bytes }) = n.poll_output() else { panic!("no reply") };
    assert_eq!(conn, ConnId(7));
    let text = String::from_utf8(bytes).unwrap();
    let (first, json) = text.split_once('\n').unwrap();
    assert_eq!(first.as_bytes(), n.locations().get(b"kiwi").unwrap().line());
    assert!(json.ends_with("}\n\n") && !json.contains("\n\n\n"), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "cut to the bound");
    assert_eq!(v["status"], "OK");
}

#[test]
fn whatsat_identical_queries_share_one_request() {
    let (mut n, now) = places_node(4);
    whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
    whatsat(&mut n, now, 2, "WHATSAT kiwi 10.0 2");
    whatsat(&mut n, now, 3, "WHATSAT kiwi 10 3");
    let requests: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
    assert_eq!(requests.len(), 2, "bound 2 twice shares, bound 3 is its own: {requests:?}");
    let Output::Places { id, .. } = requests[0] else { panic!() };
    n.handle_places_response(now, id, Ok(ok_places(3)));
    let conns: Vec<ConnId> = std::iter::from_fn(|| n.poll_output())
        .map(|o| match o {
            Output::Reply { conn, .. } => conn,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(conns, [ConnId(1), ConnId(2)]);
}

#[test]
fn whatsat_failure_and_deadline_answer_question_mark() {
    let (mut n, now) = places_node(4);
    whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
    let Some(Output::Places { id, .. }) = n.poll_output() else { panic!() };
    let denied = Response {
        status: 403,
        body: br#"{"error":{"status":"PERMISSION_DENIED"}}"#.to_vec(),
        keep_alive: true,
    };
    n.handle_places_response(now, id, Ok(denied));
    assert_eq!(
        n.poll_output(),
        Some(Output::Reply { conn: ConnId(1), bytes: b"? WHATSAT kiwi 10 2\n".to_vec() })
    );

    whatsat(&mut n, now, 2, "WHATSAT lime 5 1");
    let Some(Output::Places { id, .. }) = n.poll_output() else { panic!() };
    assert_eq!(n.poll_timeout(), Some(now + Duration::from_millis(500)));
    n.handle_timeout(now + Duration::from_millis(500));
    assert_eq!(n.poll_output(), Some(Output::CancelPlaces(id)));
    assert_eq!(
        n.poll_output(),
        Some(Output::Reply { conn: ConnId(2), bytes: b"? WHATSAT lime 5 1\n".to_vec() })
    );
    // A late answer after the deadline changes nothing.
    n.handle_places_response(now, id, Ok(ok_places(1)));
    assert_eq!(n.poll_output(), None);
    assert_eq!(n.stats().places_failed, 2);
}

#[test]
fn whatsat_cap_and_missing_key_answer_at_once() {
    let (mut n, now) = places_node(1);
    assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
    assert_eq!(
        whatsat(&mut n, now, 2, "WHATSAT lime 10 2"),
        (Handled::Replied, "? WHATSAT lime 10 2\n".into())
    );
    let (mut n, now) = node(&[]);
    line(&mut n, T0, "IAMAT kiwi +1.0+1.0 1");
    assert_eq!(
        whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2"),
        (Handled::Replied, "? WHATSAT kiwi 10 2\n".into())
    );
    assert_eq!(n.poll_output(), None);
}

/// A node with a key and the given WHATSAT settings, knowing `kiwi` and `lime`.
fn places_node_with(edit: impl FnOnce(&mut WhatsatPolicy)) -> (Node, Instant) {
    let now = Instant::now();
    let mut cfg = NodeConfig::new("Hill", vec![]);
    cfg.whatsat =
        WhatsatPolicy { timeout: Duration::from_millis(500), ..WhatsatPolicy::new(PlacesApi::New, true) };
    edit(&mut cfg.whatsat);
    let mut n = Node::new(cfg, now);
    line(&mut n, T0, "IAMAT kiwi +34.068930-118.445127 1520023934.918963997");
    line(&mut n, T0, "IAMAT lime -33.8670522+151.1957362 1520023934.5");
    (n, now)
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn places_ids(outputs: &[Output]) -> Vec<QueryId> {
    outputs.iter().filter_map(|o| if let Output::Places { id, .. } = o { Some(*id) } else { None }).collect()
}

#[test]
fn whatsat_cached_answer_replies_at_once_until_the_ttl() {
    let (mut n, now) = places_node_with(|p| p.cache_ttl = Duration::from_secs(60));
    whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
    let [Output::Places { id, .. }] = drain(&mut n)[..] else { panic!() };
    n.handle_places_response(now, id, Ok(ok_places(5)));
    let first = drain(&mut n);
    let Output::Reply { bytes, .. } = &first[0] else { panic!() };
    for conn in 2..502 {
        let (h, out) = whatsat(&mut n, now + Duration::from_secs(59), conn, "WHATSAT kiwi 10 2");
        assert_eq!((h, out.as_bytes()), (Handled::Replied, &bytes[..]), "hit {conn}");
    }
    assert_eq!(drain(&mut n), [], "no upstream request for a hit");
    assert_eq!((n.stats().cache_hits, n.stats().cache_misses, n.stats().places_sent), (500, 1, 1));
    // Past the TTL: asked again.
    let later = now + Duration::from_secs(61);
    n.handle_timeout(later);
    assert_eq!(whatsat(&mut n, later, 9, "WHATSAT kiwi 10 2").0, Handled::Pending);
    assert_eq!(places_ids(&drain(&mut n)).len(), 1);
}

#[test]
fn whatsat_radii_and_locations_below_the_rounding_share_one_request() {
    let (mut n, now) = places_node_with(|_| {});
    line(&mut n, T0, "IAMAT near +34.0689301-118.4451271 1520023934.918963997");
    for (conn, l) in [
        (1, "WHATSAT kiwi 10 2"),
        (2, "WHATSAT kiwi 10.0004 2"),
        (3, "WHATSAT kiwi 9.9996 2"),
        (4, "WHATSAT near 10 2"),
    ] {
        assert_eq!(whatsat(&mut n, now, conn, l).0, Handled::Pending, "{l}");
    }
    let out = drain(&mut n);
    assert_eq!(places_ids(&out).len(), 1, "{out:?}");
    let Output::Places { query, .. } = out[0] else { panic!() };
    assert_eq!(query, Query { lat: 34.06893, lng: -118.445127, radius_m: 10_000.0, bound: 2 });
    // One metre more is another request.
    whatsat(&mut n, now, 5, "WHATSAT kiwi 10.001 2");
    assert_eq!(places_ids(&drain(&mut n)).len(), 1);
}

#[test]
fn whatsat_radius_rounding_to_zero_metres_is_refused() {
    let (mut n, now) = places_node_with(|_| {});
    assert_eq!(
        whatsat(&mut n, now, 1, "WHATSAT kiwi 0.0004 2"),
        (Handled::Replied, "? WHATSAT kiwi 0.0004 2\n".into())
    );
    assert_eq!(drain(&mut n), []);
    assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 0.0005 2").0, Handled::Pending, "rounds to 1 m");
}

#[test]
fn whatsat_legacy_bounds_share_one_request_cut_per_waiter() {
    let (mut n, now) = places_node_with(|p| p.api = PlacesApi::Legacy);
    whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
    whatsat(&mut n, now, 2, "WHATSAT kiwi 10 5");
    let ids = places_ids(&drain(&mut n));
    assert_eq!(ids.len(), 1);
    let results: Vec<String> = (0..20).map(|i| format!(r#"{{"name":"p{i}"}}"#)).collect();
    let body = format!(r#"{{"html_attributions":[],"results":[{}],"status":"OK"}}"#, results.join(","));
    n.handle_places_response(
        now,
        ids[0],
        Ok(Response { status: 200, body: body.into_bytes(), keep_alive: true }),
    );
    let counts: Vec<usize> = drain(&mut n)
        .into_iter()
        .map(|o| {
            let Output::Reply { bytes, .. } = o else { panic!() };
            let text = String::from_utf8(bytes).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(text.split_once('\n').unwrap().1.trim_end()).unwrap();
            v["results"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(counts, [2, 5]);
    let (h, out) = whatsat(&mut n, now, 3, "WHATSAT kiwi 10 7");
    assert_eq!(h, Handled::Replied, "{out}");
}

#[test]
fn whatsat_failed_answer_is_not_cached() {
    let (mut n, now) = places_node_with(|_| {});
    whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2");
    let ids = places_ids(&drain(&mut n));
    n.handle_places_response(now, ids[0], Err(Failure::Io("reset".into())));
    assert_eq!(drain(&mut n).len(), 1);
    assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
    assert_eq!(places_ids(&drain(&mut n)).len(), 1, "asked again");
}

#[test]
fn whatsat_rate_limit_refuses_past_the_burst_and_refills() {
    let (mut n, now) = places_node_with(|p| {
        p.rate_limit = 2.0;
        p.rate_burst = 3;
        p.cache_ttl = Duration::ZERO;
    });
    let mut t = now;
    let ask = |n: &mut Node, t: Instant, conn: u64| {
        let h = whatsat(n, t, conn, "WHATSAT kiwi 10 2").0;
        // Answer at once so the next WHATSAT is a new upstream request.
        for id in places_ids(&drain(n)) {
            n.handle_places_response(t, id, Ok(ok_places(2)));
        }
        drain(n);
        h
    };
    for _ in 0..3 {
        assert_eq!(ask(&mut n, t, 1), Handled::Pending);
    }
    assert_eq!(ask(&mut n, t, 1), Handled::Replied, "over the burst: `?` at once");
    assert_eq!(ask(&mut n, t, 2), Handled::Pending, "another connection has its own bucket");
    t += Duration::from_millis(499);
    assert_eq!(ask(&mut n, t, 1), Handled::Replied);
    t += Duration::from_millis(1);
    assert_eq!(ask(&mut n, t, 1), Handled::Pending, "one token back after 1/rate");
    assert_eq!(n.stats().places_sent, 5);
}

#[test]
fn whatsat_joins_and_cache_hits_cost_no_tokens() {
    let (mut n, now) = places_node_with(|p| p.rate_burst = 1);
    assert_eq!(whatsat(&mut n, now, 1, "WHATSAT kiwi 10 2").0, Handled::Pending);
    assert_eq!(whatsat(&mut n, now, 2, "WHATSAT kiwi 10 2").0, Handled::Pending);
    let ids = places_ids(&drain(&mut n));
    n.handle_places_response(now, ids[0], Ok(ok_places(2)));
    drain(&mut n);
    for _ in 0..10 {
        let (h, out) = whatsat(&mut n, now, 2, "WHATSAT kiwi 10 2");
        assert_eq!(h, Handled::Replied);
        assert!(out.starts_with("AT "), "{out}");
    }
}

#[test]
fn whatsat_full_pool_queues_in_arrival_order_then_refuses() {
    let (mut n, now) = places_node_with(|p| {
        p.max_in_flight = 2;
        p.max_queued = 2;
    });
    for (conn, r) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
        assert_eq!(whatsat(&mut n, now, conn, &format!("WHATSAT kiwi {r} 2")).0, Handled::Pending);
    }
    assert_eq!(
        whatsat(&mut n, now, 5, "WHATSAT kiwi 5 2"),
        (Handled::Replied, "? WHATSAT kiwi 5 2\n".into()),
        "pool and queue full"
    );
    assert_eq!(whatsat(&mut n, now, 6, "WHATSAT kiwi 4 2").0, Handled::Pending, "joins a queued request");
    let ids = places_ids(&drain(&mut n));
    assert_eq!(ids.len(), 2);
    n.handle_places_response(now, ids[1], Ok(ok_places(2)));
    let out = drain(&mut n);
    let Output::Reply { conn, .. } = out[0] else { panic!("{out:?}") };
    assert_eq!(conn, ConnId(2));
    let Output::Places { query, .. } = out[1] else { panic!("{out:?}") };
    assert_eq!(query.radius_m, 3000.0, "the first queued starts");
    // The queued one past its deadline is answered `?` without ever asking.
    n.handle_timeout(now + Duration::from_millis(500));
    let replies: Vec<ConnId> = drain(&mut n)
        .into_iter()
        .filter_map(|o| if let Output::Reply { conn, .. } = o { Some(conn) } else { None })
        .collect();
    assert_eq!(replies, [ConnId(1), ConnId(3), ConnId(4), ConnId(6)]);
    assert!(n.poll_timeout() > Some(now + Duration::from_millis(500)), "nothing left in flight or queued");
}

/// A node whose link to Jaquez is up, with `peer_output` far below the resync floor.
fn linked_with_small_peer_output() -> (Node, Instant) {
    let now = Instant::now();
    let mut cfg = NodeConfig::new("Hill", vec!["Jaquez".into()]);
    cfg.peer_output_limit = 1000;
    let mut n = Node::new(cfg, now);
    up(&mut n, now, 0);
    (n, now)
}

#[test]
fn stalled_peer_dropped_at_output_limit() {
    let (mut n, now) = linked_with_small_peer_output();
    // A burst before the driver's first write is not a stall, whatever its size.
    for i in 0..3000 {
        line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
    }
    assert!(n.peer_transmit(PeerId(0)).len() > stall_limit(&n.config) + 100);
    assert_eq!(n.poll_output(), None);
    // The socket takes part of it and refuses the rest: over the limit, dropped.
    n.peer_sent(PeerId(0), 100);
    n.peer_blocked(now, PeerId(0));
    assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
    assert_eq!(n.peer_transmit(PeerId(0)), b"");
}

#[test]
fn refusing_peer_dropped_when_floods_pass_the_limit() {
    let (mut n, now) = linked_with_small_peer_output();
    line(&mut n, T0, "IAMAT c0 +1.0+1.0 1");
    n.peer_blocked(now, PeerId(0));
    assert_eq!(n.poll_output(), None, "under the limit: kept");
    let mut i = 1;
    while matches!(n.link_state(PeerId(0)), LinkState::Up { .. }) {
        line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
        i += 1;
        assert!(i < 10_000);
    }
    assert!(i > 1000, "dropped after {i} updates: the resync floor is not applied");
    assert_eq!(n.poll_output(), Some(Output::Disconnect(PeerId(0))));
}

#[test]
fn peer_that_takes_everything_is_no_longer_refusing() {
    let (mut n, now) = linked_with_small_peer_output();
    line(&mut n, T0, "IAMAT c0 +1.0+1.0 1");
    n.peer_blocked(now, PeerId(0));
    let all = n.peer_transmit(PeerId(0)).len();
    n.peer_sent(PeerId(0), all);
    for i in 1..3000 {
        line(&mut n, T0, &format!("IAMAT c{i} +1.0+1.0 1"));
    }
    assert!(matches!(n.link_state(PeerId(0)), LinkState::Up { .. }));
    assert_eq!(n.poll_output(), None);
}
