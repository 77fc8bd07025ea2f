//! Equal timestamps over real processes: the same client ids and timestamps with different
//! locations, sent to two servers of the five-server herd at the same moment, must end as one
//! record per id at every server (the tie-break of docs/PEERS.md). What each server holds is
//! read with WHATSAT (through places-stub), whose reply starts with the stored AT line.

#![cfg(feature = "stub")]

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{Herd, Stub, read_whatsat_reply, show, timestamp, unix_nanos};

/// Ids raced.
const IDS: usize = 20;

/// Long enough for any reply here.
const REPLY: Duration = Duration::from_secs(10);

/// The AT line each server holds for every id (`None` where a WHATSAT got `? `).
fn records(herd: &Herd) -> Vec<Vec<Option<Vec<u8>>>> {
    herd.names()
        .iter()
        .map(|name| {
            let mut c = herd.connect(name);
            let asks: String = (0..IDS).map(|k| format!("WHATSAT id{k} 1 1\n")).collect();
            c.send(asks);
            (0..IDS)
                .map(|_| {
                    let reply = read_whatsat_reply(&mut c, REPLY);
                    let first = reply.split(|&b| b == b'\n').next().unwrap_or_default();
                    first.starts_with(b"AT ").then(|| first.to_vec())
                })
                .collect()
        })
        .collect()
}

#[test]
fn equal_timestamps_raced_at_two_servers_converge_everywhere() {
    let stub = Stub::start(&[]);
    let mut herd = Herd::five(&stub.herd_yaml("new", 5000));
    herd.start_all();
    herd.wait_links_up(1, Duration::from_secs(10));
    let ts = timestamp(unix_nanos() - 1_000_000_000);
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = [("Hill", "+1.0"), ("Campbell", "+3.0")]
        .into_iter()
        .map(|(server, lat)| {
            let mut c = herd.connect(server);
            let lines: String =
                (0..IDS).map(|k| format!("IAMAT id{k} {lat}{k:05}+2.000000 {ts}\n")).collect();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                c.send(lines);
                for _ in 0..IDS {
                    assert!(c.read_line().starts_with(b"AT "), "an IAMAT was refused");
                }
            })
        })
        .collect();
    for r in racers {
        r.join().expect("racer");
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    loop {
        let held = records(&herd);
        let agreed = (0..IDS).all(|k| held.iter().all(|s| s[k].is_some() && s[k] == held[0][k]));
        if agreed {
            eprintln!(
                "ties: {IDS} raced ids agree at all five servers {:?} after the last IAMAT",
                start.elapsed()
            );
            return;
        }
        if Instant::now() > deadline {
            let differ: Vec<String> = (0..IDS)
                .filter(|&k| held.iter().any(|s| s[k] != held[0][k]))
                .map(|k| {
                    let lines: Vec<String> =
                        held.iter().map(|s| s[k].as_deref().map(show).unwrap_or_default()).collect();
                    format!("id{k}: {lines:?}")
                })
                .collect();
            panic!("servers still disagree after 10 s:\n{}", differ.join("\n"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}
