//! The wire protocol of PROTOCOL.md against one real `herd` process: raw bytes in, exact bytes
//! out, over loopback sockets.

mod common;

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Herd, expect_at, show, timestamp, unix_nanos, wait_until};

const LOCATION: &str = "+34.068930-118.445127";

/// One server called Hill, started.
fn hill(extra_yaml: &str) -> Herd {
    let mut herd = Herd::new(&[("Hill", &[])], extra_yaml);
    herd.start("Hill");
    herd
}

/// Sends `line` (which must end with `\n`), reads the reply, and checks it is Hill's AT line for
/// `tail` with a difference consistent with the client timestamp `sent` (nanoseconds).
fn iamat_round_trip(c: &mut Client, line: &[u8], tail: &[u8], sent: i128) -> i128 {
    let before = unix_nanos();
    let reply = c.round_trip(line);
    let after = unix_nanos();
    expect_at(&reply, "Hill", tail, before - sent, after - sent)
}

#[test]
fn iamat_reply_is_byte_exact() {
    let herd = hill("");
    let mut c = herd.connect("Hill");

    // A few seconds in the past: a positive difference of about 3 s.
    let sent = unix_nanos() - 3_000_000_000;
    let ts = timestamp(sent);
    let d = iamat_round_trip(
        &mut c,
        format!("IAMAT kiwi.cs.ucla.edu {LOCATION} {ts}\n").as_bytes(),
        format!("kiwi.cs.ucla.edu {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
    assert!(d >= 3_000_000_000, "difference {d} ns should be at least 3 s");

    // In the future, written with one decimal: a negative difference, the timestamp echoed as
    // written (not normalised to nine decimals).
    let future_secs = unix_nanos() / 1_000_000_000 + 100;
    let ts = format!("{future_secs}.5");
    let sent = future_secs * 1_000_000_000 + 500_000_000;
    let d = iamat_round_trip(
        &mut c,
        format!("IAMAT kiwi.cs.ucla.edu {LOCATION} {ts}\n").as_bytes(),
        format!("kiwi.cs.ucla.edu {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
    assert!(d < 0, "a timestamp in the future gives a negative difference, got {d}");

    // The course's example: the timestamp is copied byte for byte, no fraction lost.
    let sent = 1_520_023_934_918_963_997;
    iamat_round_trip(
        &mut c,
        format!("IAMAT kiwi.cs.ucla.edu {LOCATION} 1520023934.918963997\n").as_bytes(),
        format!("kiwi.cs.ucla.edu {LOCATION} 1520023934.918963997\n").as_bytes(),
        sent,
    );

    // No fraction at all.
    let secs = unix_nanos() / 1_000_000_000 - 1;
    iamat_round_trip(
        &mut c,
        format!("IAMAT whole-seconds +0.0-0.0 {secs}\n").as_bytes(),
        format!("whole-seconds +0.0-0.0 {secs}\n").as_bytes(),
        secs * 1_000_000_000,
    );
}

#[test]
fn iamat_ids_are_bytes_echoed_unchanged() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    let ids: [&[u8]; 5] = [
        b"\xff",
        "étudiant".as_bytes(),
        "😂".as_bytes(),
        // U+00A0 is not protocol white space: it is part of the id.
        "a\u{a0}b".as_bytes(),
        b"\xc3(\x80\xfe",
    ];
    for id in ids {
        let sent = unix_nanos() - 1_000_000_000;
        let ts = timestamp(sent);
        let mut line = b"IAMAT ".to_vec();
        line.extend_from_slice(id);
        line.extend_from_slice(format!(" {LOCATION} {ts}\n").as_bytes());
        let mut tail = id.to_vec();
        tail.extend_from_slice(format!(" {LOCATION} {ts}\n").as_bytes());
        iamat_round_trip(&mut c, &line, &tail, sent);
    }
}

#[test]
fn iamat_six_byte_white_space_separates_fields() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let tail = format!("ws-client +1.5-2.5 {ts}\n");
    // Leading and trailing white space, runs of mixed separators, a CRLF terminator.
    for (i, sep) in ["\x0b", "\x0c", "\t", "\r", " \t\x0b\x0c\r "].iter().enumerate() {
        let line = format!("{sep}IAMAT{sep}ws-client{sep}+1.5-2.5{sep}{ts}{sep}\n");
        let line = if i == 0 { line.replace('\n', "\r\n") } else { line };
        iamat_round_trip(&mut c, line.as_bytes(), tail.as_bytes(), sent);
    }
}

#[test]
fn pipelined_thousand_iamats_answered_in_order() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    let base = unix_nanos() - 2_000_000_000;
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(format!("IAMAT pipe-{i:04} {LOCATION} {}\n", timestamp(base + i)).as_bytes());
    }
    let before = unix_nanos();
    c.send(&batch);
    let replies = c.read_lines(1000, Duration::from_secs(20));
    let after = unix_nanos();
    for (i, reply) in replies.iter().enumerate() {
        let sent = base + i as i128;
        let tail = format!("pipe-{i:04} {LOCATION} {}\n", timestamp(sent));
        expect_at(reply, "Hill", tail.as_bytes(), before - sent, after - sent);
    }
    // Nothing more: exactly one reply per line, so the next reply is the next IAMAT's.
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("IAMAT after {LOCATION} {ts}\n").as_bytes(),
        format!("after {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
}

#[test]
fn invalid_lines_answered_with_question_mark_and_connection_stays_open() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    // A stored client, so the WHATSAT lines below fail on their radius or bound, not on the id.
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("IAMAT known {LOCATION} {ts}\n").as_bytes(),
        format!("known {LOCATION} {ts}\n").as_bytes(),
        sent,
    );

    let invalid: &[&[u8]] = &[
        b"IAMAT kiwi 34.0-118.0 1",
        b"IAMAT kiwi +34-118 1",
        b"IAMAT kiwi +34.068930 1",
        b"IAMAT kiwi +90.000001+0.0 1",
        b"IAMAT kiwi +0.0-180.5 1",
        b"IAMAT kiwi +1.0+1.0 -1",
        b"IAMAT kiwi +1.0+1.0 1.0123456789",
        b"IAMAT kiwi +1.0+1.0 1e9",
        b"IAMAT kiwi +1.0+1.0",
        b"IAMAT kiwi +1.0+1.0 1 extra",
        b"iamat kiwi +1.0+1.0 1",
        b"HELLO world",
        b"  HELLO  ",
        b"\xff\xfe garbage",
        b"WHATSAT",
        b"WHATSAT nobody-known 10 5",
        b"WHATSAT known 0 5",
        b"WHATSAT known -1 5",
        b"WHATSAT known 50.5 5",
        b"WHATSAT known 10 0",
        b"WHATSAT known 10 21",
        b"WHATSAT known 10 2.5",
        b"WHATSAT known 10 5 extra",
        b"AT Hill +0.1 kiwi +1.0+1.0",
        b"AT Hill 0.1x kiwi +1.0+1.0 1",
    ];
    // One at a time.
    for line in invalid {
        let mut l = line.to_vec();
        l.push(b'\n');
        let reply = c.round_trip(&l);
        let mut want = b"? ".to_vec();
        want.extend_from_slice(line);
        want.push(b'\n');
        assert_eq!(show(&reply), show(&want));
    }
    // A CRLF terminator is not echoed.
    assert_eq!(show(&c.round_trip(b"HELLO\r\n")), "? HELLO\\n");

    // All in one write, with blank lines between them that get no reply, then a valid IAMAT:
    // the replies come in order and the IAMAT's is the one after the last `? ` line.
    let mut batch = Vec::new();
    for line in invalid {
        batch.extend_from_slice(line);
        batch.extend_from_slice(b"\n\n \t\x0b\x0c\r\n");
    }
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    batch.extend_from_slice(format!("IAMAT still-open {LOCATION} {ts}\n").as_bytes());
    let before = unix_nanos();
    c.send(&batch);
    let replies = c.read_lines(invalid.len() + 1, Duration::from_secs(5));
    let after = unix_nanos();
    for (line, reply) in invalid.iter().zip(&replies) {
        let mut want = b"? ".to_vec();
        want.extend_from_slice(line);
        want.push(b'\n');
        assert_eq!(show(reply), show(&want));
    }
    expect_at(
        &replies[invalid.len()],
        "Hill",
        format!("still-open {LOCATION} {ts}\n").as_bytes(),
        before - sent,
        after - sent,
    );
}

#[test]
fn at_lines_get_no_reply() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    // A well-formed AT line (as a neighbour sends) is silent, whoever sends it; the next reply
    // is the invalid line's.
    c.send(b"AT Smith +0.263873386 from-a-peer +34.068930-118.445127 1520023934.918963997\n");
    c.send(b"AT Campbell -3.500000000 \xff +1.0-1.0 4.5\n");
    assert_eq!(show(&c.round_trip(b"NEXT\n")), "? NEXT\\n");
}

#[test]
fn pipelined_lines_then_half_close_all_answered_then_closed() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    let base = unix_nanos() - 1_000_000_000;
    let n = 5000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT half-{i} {LOCATION} {}\n", timestamp(base + i)).as_bytes());
    }
    let before = unix_nanos();
    c.send(&batch);
    c.shutdown_write();
    let all = c.read_to_eof(Duration::from_secs(20));
    let after = unix_nanos();
    let replies: Vec<&[u8]> = all.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), n as usize);
    for (i, reply) in replies.iter().enumerate() {
        let sent = base + i as i128;
        let tail = format!("half-{i} {LOCATION} {}\n", timestamp(sent));
        expect_at(reply, "Hill", tail.as_bytes(), before - sent, after - sent);
    }
}

#[test]
fn blank_lines_get_no_reply() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    // Blank lines of every white space byte, then an IAMAT, in one write: the first bytes back
    // must be the IAMAT's reply. (One write, so the receive time cannot predate the IAMAT; see
    // `iamat_difference_uses_the_time_the_line_arrived` for why that matters.)
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("\n   \t\x0b\x0c\r\n\r\n\n\nIAMAT after-blanks {LOCATION} {ts}\n").as_bytes(),
        format!("after-blanks {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
    // Blank lines alone, then an invalid line: its `? ` reply is the next line.
    c.send(b"\n");
    c.send(b"  \x0b\r\n");
    assert_eq!(show(&c.round_trip(b"NEXT\n")), "? NEXT\\n");
    // A blank final line before end of stream: nothing, then end of stream.
    c.send(b"  \t ");
    c.shutdown_write();
    assert_eq!(show(&c.read_to_eof(Duration::from_secs(5))), "");
}

/// The difference is "the server's receive time minus the client's timestamp", so the receive
/// time cannot be earlier than the moment the client sent the line. Here the server is kept
/// busy with a long run of blank lines sent first; the IAMAT is sent 20 ms later on the same
/// connection, while the server is still working through the blank lines.
#[test]
fn iamat_difference_uses_the_time_the_line_arrived() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    for i in 0..3 {
        c.send(vec![b'\n'; 100_000]);
        // Deliberate: the gap between the two writes is what is measured.
        thread::sleep(Duration::from_millis(20));
        let sent = unix_nanos() - 1_000_000_000;
        let ts = timestamp(sent);
        iamat_round_trip(
            &mut c,
            format!("IAMAT late-{i} {LOCATION} {ts}\n").as_bytes(),
            format!("late-{i} {LOCATION} {ts}\n").as_bytes(),
            sent,
        );
    }
}

#[test]
fn final_line_without_newline_answered_then_closed() {
    let herd = hill("");
    let mut c = herd.connect("Hill");
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let before = unix_nanos();
    c.send(format!("HELLO\nIAMAT last-line {LOCATION} {ts}"));
    c.shutdown_write();
    let all = c.read_to_eof(Duration::from_secs(5));
    let after = unix_nanos();
    let Some(rest) = all.strip_prefix(b"? HELLO\n".as_slice()) else {
        panic!("expected `? HELLO` first, got {}", show(&all));
    };
    expect_at(rest, "Hill", format!("last-line {LOCATION} {ts}\n").as_bytes(), before - sent, after - sent);

    // The same with an invalid final line.
    let mut c = herd.connect("Hill");
    c.send(b"no newline here");
    c.shutdown_write();
    assert_eq!(show(&c.read_to_eof(Duration::from_secs(5))), "? no newline here\\n");
}

/// `limits.max_line` in the config of the over-long line tests.
const MAX_LINE: usize = 256;

/// Checks `all` is one `? ` line echoing a bounded, non-empty prefix of `line`, and nothing else.
fn expect_overlong_reply(all: &[u8], line: &[u8]) {
    let Some(echo) = all.strip_prefix(b"? ".as_slice()).and_then(|r| r.strip_suffix(b"\n")) else {
        panic!("expected one `? ` line then end of stream, got {}", show(all));
    };
    assert!(!echo.contains(&b'\n'), "more than one line before end of stream: {}", show(all));
    assert!(!echo.is_empty() && echo.len() <= MAX_LINE, "echo of {} bytes is not bounded", echo.len());
    assert!(line.starts_with(echo), "echo {} is not a prefix of the line", show(echo));
}

#[test]
fn line_of_exactly_max_line_is_an_ordinary_line() {
    let herd = hill(&format!("limits: {{max_line: {MAX_LINE}}}"));
    let mut c = herd.connect("Hill");
    let line = vec![b'x'; MAX_LINE];
    let mut l = line.clone();
    l.push(b'\n');
    let reply = c.round_trip(&l);
    let mut want = b"? ".to_vec();
    want.extend_from_slice(&line);
    want.push(b'\n');
    assert_eq!(show(&reply), show(&want));
    // Still open.
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("IAMAT still-open {LOCATION} {ts}\n").as_bytes(),
        format!("still-open {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
}

#[test]
fn overlong_line_gets_bounded_prefix_then_close() {
    let herd = hill(&format!("limits: {{max_line: {MAX_LINE}}}"));

    // One byte over, terminated, with a valid IAMAT after it that must not be answered.
    let mut c = herd.connect("Hill");
    let line: Vec<u8> = (0..=MAX_LINE).map(|i| b'a' + (i % 26) as u8).collect();
    let mut batch = line.clone();
    batch.extend_from_slice(format!("\nIAMAT ignored {LOCATION} 1\n").as_bytes());
    c.send(&batch);
    expect_overlong_reply(&c.read_to_eof(Duration::from_secs(5)), &line);

    // Far over, terminated.
    let mut c = herd.connect("Hill");
    let line = vec![b'y'; 100_000];
    let mut batch = line.clone();
    batch.push(b'\n');
    c.send(&batch);
    expect_overlong_reply(&c.read_to_eof(Duration::from_secs(5)), &line);

    // Never terminated, and the client does not close: the server answers and closes anyway.
    let mut c = herd.connect("Hill");
    let line = vec![b'z'; 10 * MAX_LINE];
    c.send(&line);
    expect_overlong_reply(&c.read_to_eof(Duration::from_secs(5)), &line);

    // The server is still fine.
    let mut c = herd.connect("Hill");
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("IAMAT after {LOCATION} {ts}\n").as_bytes(),
        format!("after {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
}

#[test]
fn client_that_never_reads_does_not_hurt_others_and_is_closed() {
    let herd = hill("limits: {client_output: 65536}");
    let addr = herd.addr("Hill");

    // The non-reader: pipelines IAMATs as fast as the server takes them and never reads.
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let hog = thread::spawn(move || -> io::Result<u64> {
        let c = Client::connect(addr)?;
        let mut s = c.stream();
        s.set_write_timeout(Some(Duration::from_millis(100)))?;
        let mut chunk = Vec::new();
        let mut i = 0u64;
        while chunk.len() < 64 << 10 {
            chunk.extend_from_slice(format!("IAMAT hog-{i} {LOCATION} 1.{i:09}\n").as_bytes());
            i += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut written = 0u64;
        let mut at = 0;
        while Instant::now() < deadline {
            match s.write(&chunk[at..]) {
                Ok(n) => {
                    written += n as u64;
                    at = (at + n) % chunk.len();
                    flag.store(true, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Closed by the server: what this test waits for.
                Err(_) => return Ok(written),
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("still open after writing {written} bytes")))
    });
    assert!(wait_until(Duration::from_secs(5), || started.load(Ordering::Relaxed)), "hog never wrote");

    // Meanwhile another client's round trips stay prompt.
    let mut c = herd.connect("Hill");
    for i in 0..20 {
        let sent = unix_nanos() - 1_000_000_000;
        let ts = timestamp(sent);
        let t = Instant::now();
        iamat_round_trip(
            &mut c,
            format!("IAMAT polite-{i} {LOCATION} {ts}\n").as_bytes(),
            format!("polite-{i} {LOCATION} {ts}\n").as_bytes(),
            sent,
        );
        assert!(t.elapsed() < Duration::from_secs(1), "round trip {i} took {:?}", t.elapsed());
    }

    let written = hog.join().expect("hog thread").expect("the non-reader is disconnected");
    assert!(written > 65536, "the non-reader was closed after only {written} bytes");
    assert!(
        wait_until(Duration::from_secs(5), || herd.log_count("Hill", "output limit of 65536 bytes") == 1),
        "the log does not say the non-reader hit the output limit"
    );
    // And the polite client is still served.
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    iamat_round_trip(
        &mut c,
        format!("IAMAT polite-after {LOCATION} {ts}\n").as_bytes(),
        format!("polite-after {LOCATION} {ts}\n").as_bytes(),
        sent,
    );
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let herd = hill("limits: {max_connections: 8}");
    let round_trip = |c: &mut Client, id: &str| {
        let sent = unix_nanos() - 1_000_000_000;
        let ts = timestamp(sent);
        iamat_round_trip(
            c,
            format!("IAMAT {id} {LOCATION} {ts}\n").as_bytes(),
            format!("{id} {LOCATION} {ts}\n").as_bytes(),
            sent,
        )
    };
    let mut first: Vec<Client> = (0..8).map(|_| herd.connect("Hill")).collect();
    for (i, c) in first.iter_mut().enumerate() {
        round_trip(c, &format!("first-{i}"));
    }
    for extra in 0..3 {
        // The kernel completes the handshake; the server accepts and closes at once.
        let mut c = herd.connect("Hill");
        match c.try_read_line(Duration::from_secs(3)) {
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(Some(line)) => panic!("connection {} over the cap got {}", 9 + extra, show(&line)),
            Err(e) => panic!("connection {} over the cap was not closed: {e}", 9 + extra),
        }
    }
    for (i, c) in first.iter_mut().enumerate() {
        round_trip(c, &format!("first-again-{i}"));
    }
    // A slot freed is a slot usable again.
    drop(first.pop());
    let mut served = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let Ok(mut c) = Client::connect(herd.addr("Hill")) else { return false };
            c.send(format!("IAMAT freed {LOCATION} 1\n"));
            match c.try_read_line(Duration::from_secs(2)) {
                Ok(Some(line)) => {
                    served = Some(line);
                    true
                }
                _ => false,
            }
        }),
        "no connection served after one of the eight closed"
    );
    let line = served.expect("reply");
    assert!(line.starts_with(b"AT Hill +"), "{}", show(&line));
    assert!(
        wait_until(Duration::from_secs(5), || herd.log_count("Hill", "connection limit of 8 reached") >= 3),
        "the log does not record the refused connections"
    );
}
