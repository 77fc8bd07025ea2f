#!/usr/bin/env python3
"""Server memory under idle connections and under many stored clients (issue 4's memory targets).

    scripts/study/memory.py [--server target/release/herd] [--idle 10000] [--clients 1000000] [--json]

Starts one server (any binary taking `--config FILE NAME`, e.g. target/release/herd or
target/release/examples/herd-tokio) on a free loopback port with logging at `warn`, then:
1. opens --idle connections that send nothing and reads the server's RSS (VmRSS) before and
   after: bytes per idle connection;
2. closes them, sends --clients IAMATs with distinct client ids (pipelined, every reply checked),
   and reads RSS again: bytes per stored client, and the total for that many clients.
Stops the server at the end (SIGTERM, then SIGKILL). Standard library only; Linux (/proc).
"""

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_listening(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"memory.py: the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit("memory.py: the server did not listen in time")


def settle(pid, conns_check=None):
    """RSS once it stops changing (the server has handled everything sent)."""
    last, same = -1, 0
    for _ in range(100):
        now = rss_kib(pid)
        same = same + 1 if now == last else 0
        if same >= 3:
            return now
        last = now
        time.sleep(0.05)
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="target/release/herd")
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="herd-memory-")
    config = os.path.join(tmp, "config.yml")
    with open(config, "w") as f:
        f.write(
            f"ports:\n  Solo: {port}\nlogging:\n  dir: {tmp}\n  level: warn\n"
            f"limits:\n  max_connections: {args.idle + 1024}\n"
        )
    proc = subprocess.Popen([args.server, "--config", config, "Solo"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    result = {"server": args.server}
    try:
        wait_listening(port, proc)
        base = settle(proc.pid)
        socks = []
        for _ in range(args.idle):
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            socks.append(s)
        # Every connection accepted: one round trip on the last one.
        socks[-1].sendall(b"IAMAT warm +0.0+0.0 1\n")
        socks[-1].recv(4096)
        idle = settle(proc.pid)
        result.update(idle_connections=args.idle, rss_base_kib=base, rss_idle_kib=idle,
                      bytes_per_idle_connection=round((idle - base) * 1024 / max(1, args.idle)))
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(0.2)
        before = settle(proc.pid)

        conn = socket.create_connection(("127.0.0.1", port))
        reader = conn.makefile("rb", buffering=1 << 20)
        batch = 10_000
        for start in range(0, args.clients, batch):
            n = min(batch, args.clients - start)
            lines = b"".join(
                b"IAMAT client-%09d +34.068930-118.445127 1700000000.000000001\n" % i
                for i in range(start, start + n)
            )
            conn.sendall(lines)
            for i in range(start, start + n):
                reply = reader.readline()
                if not reply.startswith(b"AT Solo ") or b" client-%09d " % i not in reply:
                    sys.exit(f"memory.py: wrong reply {reply!r}")
        stored = settle(proc.pid)
        conn.close()
        result.update(clients=args.clients, rss_before_clients_kib=before, rss_clients_kib=stored,
                      bytes_per_client=round((stored - before) * 1024 / max(1, args.clients)),
                      rss_clients_mib=round(stored / 1024, 1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.server}: {result['idle_connections']} idle connections: RSS {result['rss_base_kib']} -> "
              f"{result['rss_idle_kib']} KiB, {result['bytes_per_idle_connection']} bytes each")
        print(f"{args.server}: {result['clients']} stored clients: RSS {result['rss_before_clients_kib']} -> "
              f"{result['rss_clients_kib']} KiB ({result['rss_clients_mib']} MiB), "
              f"{result['bytes_per_client']} bytes each")


if __name__ == "__main__":
    main()
