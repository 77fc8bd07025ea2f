#!/usr/bin/env python3
"""Two-hop propagation latency on an idle herd: IAMAT at one server until the AT line leaves another.

    scripts/study/propagation.py --at 127.0.0.1:PORT_CAMPBELL --probe-port PORT [--samples 1000] [--json]

The herd must be configured with an extra neighbour `Probe` of the far server (Jaquez), listening
on --probe-port: this script is that neighbour. The far server dials it like any neighbour and
floods every update to it, so for each sample the script sends one IAMAT (a new timestamp) to the
first server and times until the far server floods that line to the probe. The time includes the
far server's own flood to the probe (a third hop), and this script's Python overhead, so it is an
upper bound on "visible at Jaquez". One update in flight at a time, with a pause between samples so
the herd is idle. Works against any herd implementation of PROTOCOL.md (no handshake needed).
Standard library only; bounded by --timeout per sample.
"""

import argparse
import json
import socket
import sys
import time


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at", required=True, help="HOST:PORT of the server that takes the IAMAT")
    ap.add_argument("--probe-port", type=int, required=True, help="port this script listens on as Probe")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="idle time between samples")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for one update")
    ap.add_argument("--expect-links", type=int, default=1, help="neighbour links to wait for")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    host, port = args.at.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.probe_port))
    listener.listen(8)
    listener.settimeout(args.timeout)
    links = []
    try:
        for _ in range(args.expect_links):
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(args.timeout)
            links.append(conn)
    except socket.timeout:
        sys.exit("propagation.py: no neighbour dialled the probe port within --timeout")
    link = links[0]

    client = socket.create_connection((host, int(port)), timeout=args.timeout)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_file = client.makefile("rb")
    # Resync on link-up may send old records first: drain until quiet.
    link.settimeout(0.3)
    try:
        while link.recv(1 << 16):
            pass
    except socket.timeout:
        pass
    link.settimeout(args.timeout)

    pending = b""
    samples = []
    base = 2_000_000_000
    for i in range(args.samples):
        stamp = f"{base + i}.000000000"
        marker = f" probe-client +34.068930-118.445127 {stamp}".encode()
        start = time.perf_counter_ns()
        client.sendall(f"IAMAT probe-client +34.068930-118.445127 {stamp}\n".encode())
        while True:
            nl = pending.find(b"\n")
            if nl >= 0:
                line, pending = pending[:nl], pending[nl + 1 :]
                if line.endswith(marker):
                    break
                continue
            try:
                chunk = link.recv(1 << 16)
            except socket.timeout:
                sys.exit(f"propagation.py: update {i} did not arrive within {args.timeout} s")
            if not chunk:
                sys.exit("propagation.py: the far server closed the probe link")
            pending += chunk
        samples.append((time.perf_counter_ns() - start) / 1000.0)
        reply = client_file.readline()
        if not reply.startswith(b"AT ") or not reply.rstrip(b"\n").endswith(marker):
            sys.exit(f"propagation.py: wrong IAMAT reply {reply!r}")
        time.sleep(args.gap_ms / 1000.0)

    samples.sort()
    result = {
        "samples": len(samples),
        "p50_us": percentile(samples, 50),
        "p90_us": percentile(samples, 90),
        "p99_us": percentile(samples, 99),
        "max_us": samples[-1],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            "{samples} updates: p50 {p50_us:.0f} us, p90 {p90_us:.0f} us, p99 {p99_us:.0f} us, "
            "max {max_us:.0f} us".format(**result)
        )


if __name__ == "__main__":
    main()
