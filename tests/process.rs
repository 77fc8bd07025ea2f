//! The `herd` process: command line, exit statuses, signals, and its log file.

mod common;

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use common::{Herd, TempDir, expect_at, free_ports, run_herd, show, timestamp, unix_nanos, wait_until};

const LOCATION: &str = "+34.068930-118.445127";
const RUN: Duration = Duration::from_secs(10);

#[test]
fn help_and_version() {
    let dir = TempDir::new();
    for flag in ["--help", "-h"] {
        let (status, out, err) = run_herd(dir.path(), &[flag], RUN);
        assert_eq!(status.code(), Some(0), "{flag}: {err}");
        assert!(out.contains("Usage:") && out.contains("herd [--config PATH] NAME"), "{flag}: {out}");
    }
    for flag in ["--version", "-V"] {
        let (status, out, err) = run_herd(dir.path(), &[flag], RUN);
        assert_eq!(status.code(), Some(0), "{flag}: {err}");
        assert_eq!(out, format!("herd {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new();
    let (status, _, err) = run_herd(dir.path(), &[], RUN);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("missing server NAME"), "{err}");
    let (status, _, err) = run_herd(dir.path(), &["--frobnicate", "Hill"], RUN);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--frobnicate"), "{err}");
    // No config file: the message names the path.
    let (status, _, err) = run_herd(dir.path(), &["--config", "nowhere.yml", "Hill"], RUN);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("nowhere.yml"), "{err}");
}

/// Writes `yaml` as a config in `dir` and runs `herd --config it name`.
fn run_config(dir: &TempDir, yaml: &str, name: &str) -> (Option<i32>, String) {
    let path = dir.path().join("config.yml");
    fs::write(&path, yaml).expect("write config");
    let path = path.to_str().expect("utf-8 path");
    let (status, _, err) = run_herd(dir.path(), &["--config", path, name], RUN);
    (status.code(), err)
}

#[test]
fn unknown_server_name_lists_valid_names() {
    let herd = Herd::five("");
    let config = herd.config_path().to_str().expect("utf-8 path");
    let (status, _, err) = run_herd(herd.dir(), &["--config", config, "Bruin"], RUN);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("Bruin"), "{err}");
    for name in herd.names() {
        assert!(err.contains(&name), "stderr does not list {name}: {err}");
    }
}

#[test]
fn config_mistakes_exit_2_naming_the_problem() {
    let dir = TempDir::new();
    let p = free_ports(2);
    let logs = dir.path().join("logs");
    let logging = format!("logging: {{dir: '{}'}}\n", logs.display());

    let (code, err) = run_config(
        &dir,
        &format!("ports: {{A: {}, B: {}}}\nneighbors: {{A: [B, Nowhere]}}\n{logging}", p[0], p[1]),
        "A",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("Nowhere"), "the message must name the missing neighbour: {err}");

    let (code, err) = run_config(&dir, &format!("ports: {{A: {}, B: {}}}\n{logging}", p[0], p[0]), "A");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("port {}", p[0])), "the message must name the port: {err}");

    let (code, err) =
        run_config(&dir, &format!("ports: {{A: {}}}\nhosts: {{A: not-an-ip}}\n{logging}", p[0]), "A");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not-an-ip"), "{err}");

    let (code, err) =
        run_config(&dir, &format!("ports: {{A: {}}}\nlimits: {{max_lin: 9}}\n{logging}", p[0]), "A");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_lin"), "a misspelt key must be named: {err}");

    // Values whose arithmetic would wrap, and trust files that are not files.
    for (extra, named) in [
        ("limits: {max_line: 18446744073709551615}", "limits.max_line"),
        ("places: {rate_limit: 1e-300}", "places.rate_limit"),
        ("places: {ca_file: /dev/zero}", "not a regular file"),
    ] {
        let (code, err) = run_config(&dir, &format!("ports: {{A: {}}}\n{extra}\n{logging}", p[0]), "A");
        assert_eq!(code, Some(2), "{extra}: {err}");
        assert!(err.contains(named), "{extra}: {err}");
    }

    // None of these got as far as starting a server.
    assert!(!logs.join("A.log").exists(), "a config error must not start a server");
}

#[test]
fn port_taken_exits_1_naming_the_address() {
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = TempDir::new();
    let yaml = format!("ports: {{A: {port}}}\nlogging: {{dir: '{}'}}\n", dir.path().join("logs").display());
    let (code, err) = run_config(&dir, &yaml, "A");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "the message must name the address: {err}");
    drop(taken);
}

#[test]
fn sigterm_flushes_replies_and_exits_0() {
    // Room for every reply in the server: the client reads only after the signal.
    let mut herd = Herd::new(&[("Hill", &[])], "limits: {client_output: 67108864}");
    herd.start("Hill");
    let mut c = herd.connect("Hill");
    // Enough pipelined lines that their replies (about 7 MB) cannot all fit in the socket
    // buffers (about 4 MB on loopback with Linux defaults) while the client is not reading: the
    // rest are still queued in the server when the signal comes, and must be written anyway.
    let n = 80_000;
    let base = unix_nanos() - 1_000_000_000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("IAMAT term-{i} {LOCATION} {}\n", timestamp(base + i)).as_bytes());
    }
    let before = unix_nanos();
    c.send(&batch);
    // The last line was received (logged) before the signal is sent.
    let last = format!(" < IAMAT term-{} {LOCATION} {}\n", n - 1, timestamp(base + n - 1));
    assert!(
        wait_until(Duration::from_secs(20), || herd.log_contains("Hill", last.as_bytes())),
        "Hill did not log receiving the last line"
    );
    herd.signal("Hill", "TERM");
    let all = c.read_to_eof(Duration::from_secs(20));
    let after = unix_nanos();
    let replies: Vec<&[u8]> = all.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(replies.len(), n as usize, "every line sent before the signal is answered");
    for (i, reply) in replies.iter().enumerate() {
        let sent = base + i as i128;
        let tail = format!("term-{i} {LOCATION} {}\n", timestamp(sent));
        expect_at(reply, "Hill", tail.as_bytes(), before - sent, after - sent);
    }
    let status = herd.wait_exit("Hill", Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let log = herd.log_messages("Hill");
    assert_eq!(log.last().map(|m| show(m)), Some("stopped".to_string()), "the log ends with `stopped`");
}

#[test]
fn sigint_exits_0_and_stops_listening() {
    let mut herd = Herd::new(&[("Hill", &[])], "");
    herd.start("Hill");
    let mut idle = herd.connect("Hill");
    // Known to be accepted (a connection still in the listen backlog is reset when the
    // listener closes), then idle.
    assert_eq!(show(&idle.round_trip(b"PING\n")), "? PING\\n");
    herd.signal("Hill", "INT");
    // An idle connection is closed, not left hanging.
    assert_eq!(show(&idle.read_to_eof(Duration::from_secs(5))), "");
    let status = herd.wait_exit("Hill", Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(std::net::TcpStream::connect(herd.addr("Hill")).is_err(), "still listening after exit");
    assert_eq!(herd.log_messages("Hill").last().map(|m| show(m)), Some("stopped".to_string()));
}

#[test]
fn log_created_with_folder_and_records_the_session() {
    let dir = TempDir::new();
    let log_dir = dir.path().join("not").join("yet").join("there");
    let mut herd = Herd::with_log_dir(dir, log_dir.clone(), &[("Hill", &[])], "");
    assert!(!log_dir.exists());
    herd.start("Hill");
    assert!(herd.log_path("Hill").starts_with(&log_dir));

    let mut c = herd.connect("Hill");
    let me = c.local_addr();
    let sent = unix_nanos() - 1_000_000_000;
    let ts = timestamp(sent);
    let inputs: Vec<Vec<u8>> = vec![
        format!("IAMAT log-client {LOCATION} {ts}").into_bytes(),
        b"IAMAT \xff\x00odd +1.0+1.0 1".to_vec(),
        b"HELLO there".to_vec(),
        b"WHATSAT nobody 10 5".to_vec(),
    ];
    let mut outputs = Vec::new();
    for line in &inputs {
        let mut l = line.clone();
        l.push(b'\n');
        let mut reply = c.round_trip(&l);
        reply.pop();
        outputs.push(reply);
    }
    drop(c);

    // The connection's number, from the line that logged it with our address.
    let opened = format!(" new connection from {me}");
    let mut conn = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            conn = herd.log_messages("Hill").iter().find_map(|m| {
                let m = std::str::from_utf8(m).ok()?;
                m.strip_suffix(opened.as_str())?.strip_prefix('c')?.parse::<u64>().ok()
            });
            conn.is_some()
        }),
        "no `new connection from {me}` in the log"
    );
    let conn = conn.expect("connection id");
    let closed = format!("c{conn} closed");
    assert!(
        wait_until(Duration::from_secs(5), || herd.log_count("Hill", &closed) == 1),
        "the log does not record that c{conn} closed"
    );
    for line in &inputs {
        assert_eq!(
            herd.received("Hill", line),
            vec![conn],
            "input {} not logged once on c{conn}",
            show(line)
        );
    }
    for line in &outputs {
        assert_eq!(herd.sent("Hill", line), vec![conn], "output {} not logged once on c{conn}", show(line));
    }
}

#[test]
fn api_key_never_logged() {
    const FILE_KEY: &str = "SECRET-TEST-KEY-123";
    const PLACES_KEY: &str = "SECRET-PLACES-KEY-456";
    const ENV_KEY: &str = "SECRET-ENV-KEY-789";
    let extra = format!("api_key: {FILE_KEY}\nplaces: {{api_key: {PLACES_KEY}}}");
    // Once with the keys from the file only, once with the environment's overriding them.
    for env in [None, Some(ENV_KEY)] {
        let mut herd = Herd::new(&[("Hill", &[])], &extra);
        if let Some(key) = env {
            herd.env("GOOGLE_PLACES_API_KEY", key);
        }
        herd.start("Hill");
        let mut c = herd.connect("Hill");
        let sent = unix_nanos() - 1_000_000_000;
        c.round_trip(format!("IAMAT key-client {LOCATION} {}\n", timestamp(sent)).as_bytes());
        // An unknown client: no Places request is made (this suite stays off the network).
        c.round_trip(b"WHATSAT nobody-known 10 5\n");
        herd.signal("Hill", "TERM");
        assert_eq!(herd.wait_exit("Hill", Duration::from_secs(5)).code(), Some(0));
        let log = String::from_utf8_lossy(&herd.log("Hill")).into_owned();
        assert!(log.contains("WHATSAT nobody-known 10 5"), "the log is incomplete:\n{log}");
        let stdout = fs::read_to_string(herd.dir().join("Hill.1.stdout")).unwrap_or_default();
        let stderr = herd.stderr("Hill");
        for key in [FILE_KEY, PLACES_KEY, ENV_KEY] {
            assert!(!log.contains(key), "the log contains the key {key}:\n{log}");
            assert!(!stdout.contains(key) && !stderr.contains(key), "the key {key} was printed");
        }
    }
}

/// `./herd` at the repository root runs the server binary with the arguments given and
/// `./config.yml`, as `python3 server.py Hill` does in the course. (`HERD_BIN` names the binary
/// this test built, so the script does not run cargo inside `cargo test`.)
#[test]
fn herd_script_at_the_root_runs_the_binary_with_config_yml() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/herd"))
        .arg("--list")
        .current_dir(root)
        .env("HERD_BIN", common::HERD)
        .output()
        .expect("run ./herd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["Hill", "Jaquez", "Smith", "Campbell", "Singleton"] {
        assert!(stdout.contains(name), "{name} missing from ./herd --list: {stdout}");
    }
    let out = std::process::Command::new(format!("{root}/herd"))
        .arg("--frobnicate")
        .current_dir(root)
        .env("HERD_BIN", common::HERD)
        .output()
        .expect("run ./herd");
    assert_eq!(out.status.code(), Some(2), "the binary's exit status passes through");
}
