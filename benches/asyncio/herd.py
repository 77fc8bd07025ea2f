#!/usr/bin/env python3
"""The Python asyncio herd: the contender herd is measured against (scripts/study/compare.sh).

Written the way the asyncio version of this exercise is written, and written well: one
`asyncio.start_server` per server, a coroutine per connection reading lines with
`StreamReader.readline`, replies written with `writer.write` + `await writer.drain()`, one
persistent outbound link per neighbour that redials with backoff (50 ms doubling to 1 s) and sends
every record when it comes up, the newer-timestamp rule for flooding, exact integer-nanosecond
timestamps and the `+S.NNNNNNNNN` difference of PROTOCOL.md, and a log line per message in and out
at level `info` (as the Rust herd does).

It speaks IAMAT and AT byte for byte as PROTOCOL.md says. WHATSAT is validated but answered with
the `? ` line: this contender exists for the IAMAT/AT comparison, and asking Google would measure
Google. Standard library only.

    python3 benches/asyncio/herd.py --config config.yml Hill

It reads the `ports:`, `neighbors:`, `host:`, `logging: dir/level` keys of the herd's config.yml
(a small YAML subset: the layout scripts/study/compare.sh writes).
"""

import argparse
import asyncio
import logging
import os
import re
import sys
import time

LOCATION = re.compile(rb"^([+-]\d+\.\d+)([+-]\d+\.\d+)$")
TIMESTAMP = re.compile(rb"^(\d+)(?:\.(\d{1,9}))?$")


def parse_config(path):
    """The subset of config.yml the herd uses: two-level maps of scalars and [a, b] lists."""
    top, section = {}, None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if not line.startswith((" ", "\t")):
                section = key
                top[key] = value if value else {}
            elif isinstance(top.get(section), dict):
                if value.startswith("["):
                    value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
                top[section][key] = value
    return top


def parse_timestamp(field):
    m = TIMESTAMP.match(field)
    if not m:
        return None
    frac = (m.group(2) or b"").ljust(9, b"0")
    return int(m.group(1)) * 1_000_000_000 + int(frac)


def valid_location(field):
    m = LOCATION.match(field)
    if not m:
        return False
    lat, lng = float(m.group(1)), float(m.group(2))
    return -90 <= lat <= 90 and -180 <= lng <= 180


def difference(ns):
    sign = "+" if ns >= 0 else "-"
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}".encode()


class Server:
    def __init__(self, name, host, port, peers):
        self.name = name.encode()
        self.host, self.port = host, port
        self.peers = peers  # name -> (host, port)
        self.records = {}  # client id -> (timestamp ns, AT line)
        self.links = {}  # peer name -> StreamWriter, while the link is up
        self.log = logging.getLogger(name)

    async def serve(self):
        server = await asyncio.start_server(self.handle, self.host, self.port, limit=1 << 16)
        self.log.info("%s listening on %s:%d", self.name.decode(), self.host, self.port)
        for peer, addr in self.peers.items():
            asyncio.create_task(self.link(peer, addr))
        async with server:
            await server.serve_forever()

    async def handle(self, reader, writer):
        peer = writer.get_extra_info("peername")
        self.log.info("new connection from %s", peer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(b"? line too long\n")
                    break
                if not line:
                    break
                self.log.info("< %r", line)
                reply = self.process(line)
                if reply:
                    self.log.info("> %r", reply)
                    writer.write(reply)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def process(self, line):
        now = time.time_ns()
        fields = line.split()
        if not fields:
            return None
        command = fields[0]
        if command == b"IAMAT" and len(fields) == 4:
            client, location, stamp = fields[1], fields[2], fields[3]
            ts = parse_timestamp(stamp)
            if ts is not None and valid_location(location):
                at = b" ".join((b"AT", self.name, difference(now - ts), client, location, stamp)) + b"\n"
                self.update(client, ts, at)
                return at
        elif command == b"AT" and len(fields) == 6:
            ts = parse_timestamp(fields[5])
            if ts is not None and valid_location(fields[4]):
                self.update(fields[3], ts, line if line.endswith(b"\n") else line + b"\n")
                return None
        return b"? " + line.rstrip(b"\n") + b"\n"

    def update(self, client, ts, at):
        old = self.records.get(client)
        if old is not None and old[0] >= ts:
            return
        self.records[client] = (ts, at)
        for peer, writer in list(self.links.items()):
            self.log.info("%s > %r", peer, at)
            writer.write(at)
            # A stalled neighbour must not grow our memory: drop its link at 8 MiB queued.
            if writer.transport.get_write_buffer_size() > 8 << 20:
                self.log.warning("link to %s down: output limit reached", peer)
                del self.links[peer]
                writer.transport.abort()

    async def link(self, peer, addr):
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_connection(*addr)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self.log.info("link to %s up", peer)
            self.links[peer] = writer
            for _, at in list(self.records.values()):
                writer.write(at)
            # Neighbours never answer AT lines; reading only tells us when the link closes.
            try:
                while await reader.read(1 << 16):
                    pass
            except OSError:
                pass
            if self.links.get(peer) is writer:
                del self.links[peer]
            writer.close()
            self.log.info("link to %s down", peer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yml")
    ap.add_argument("name")
    args = ap.parse_args()
    config = parse_config(args.config)
    ports = {k: int(v) for k, v in config["ports"].items()}
    if args.name not in ports:
        sys.exit(f"herd.py: unknown server {args.name!r}; known: {', '.join(ports)}")
    host = config.get("host") or "127.0.0.1"
    graph = {k: set(v) for k, v in config.get("neighbors", {}).items()}
    for a, ns in list(graph.items()):
        for b in ns:
            graph.setdefault(b, set()).add(a)
    peers = {p: (host, ports[p]) for p in sorted(graph.get(args.name, ()))}
    log_cfg = config.get("logging") or {}
    log_dir = log_cfg.get("dir", "logs") if isinstance(log_cfg, dict) else "logs"
    level = log_cfg.get("level", "info") if isinstance(log_cfg, dict) else "info"
    os.makedirs(log_dir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(log_dir, f"{args.name}.log"),
        level=getattr(logging, level.upper(), logging.INFO) if level != "off" else logging.CRITICAL + 1,
        format="%(asctime)s [%(levelname)s] %(message)s",
    )
    try:
        asyncio.run(Server(args.name, host, ports[args.name], peers).serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
