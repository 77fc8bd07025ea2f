#!/usr/bin/env bash
# The contrast study in one command: the mio herd, the tokio twin, optionally the Python asyncio
# herd and Redis, under the same herd-bench load on the same machine, side by side.
#
#   scripts/study/compare.sh [--asyncio PATH] [--no-redis] [--duration SECS] [--repeat N] [--quick]
#                      [--no-memory] [--out DIR]
#
# Builds herd, herd-bench and places-stub (release) and the tokio twin (release example), starts
# each contender on free loopback ports, pins servers to core 0 and herd-bench to core 1 (when the
# machine has two cores or more), runs each scenario with identical settings, stops everything,
# and writes to DIR (default target/compare): results.csv, results.md (tables, ratios), and
# throughput.svg / latency.svg (charts), plus each run's raw JSON and the servers' logs. Contenders
# are interleaved within each repetition (mio, tokio, asyncio, redis, then again), so slow drift
# of the machine hits them alike; with --repeat N the table shows the median run of each.
set -euo pipefail

PROG=compare.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"

usage() {
    cat <<'EOF'
usage: scripts/study/compare.sh [options]

Runs herd-bench against each contender with the same settings and writes a results table
(CSV and Markdown) and charts (SVG). Servers are pinned to core 0, the load to core 1.

Options:
  --asyncio PATH   also measure a Python asyncio herd: PATH is run as
                   `python3 PATH --config FILE NAME` with the herd's config.yml layout
                   (the bundled one: benches/asyncio/herd.py)
  --no-redis       leave Redis out (it is included when redis-server is on PATH)
  --duration SECS  measured seconds per run [default: 5]
  --warmup SECS    warm-up seconds per run [default: 1]
  --connections N  herd-bench connections [default: 50]
  --repeat N       runs per contender and scenario; the table shows the median [default: 1]
  --quick          --duration 2 --warmup 0.5, fewer propagation samples, no memory runs
  --no-memory      skip the memory runs (10,000 idle connections, 1,000,000 stored clients)
  --out DIR        where results go [default: target/compare]
  -h, --help       this help
EOF
}

ASYNCIO= REDIS=auto DURATION=5 WARMUP=1 CONNS=50 REPEAT=1 MEMORY=1 OUT= SAMPLES=1000 CLIENTS=1000000
while (($#)); do
    case $1 in
        --asyncio) ASYNCIO=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
        --no-redis) REDIS=; shift ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --quick) DURATION=2 WARMUP=0.5 SAMPLES=200 MEMORY=; shift ;;
        --no-memory) MEMORY=; shift ;;
        --out) OUT=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) printf '%s: unexpected argument %q\n\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive whole number"
[[ -z $ASYNCIO || -f $ASYNCIO ]] || die "--asyncio: no file at $ASYNCIO"
command -v python3 >/dev/null || die "python3 is needed (tables, charts, the propagation probe)"
if [[ $REDIS == auto ]]; then
    REDIS=$(command -v redis-server || true)
fi
cd "$ROOT"
OUT=${OUT:-$ROOT/target/compare}
mkdir -p "$OUT/raw" "$OUT/logs"
rm -f "$OUT"/raw/*.json "$OUT"/raw/*.err "$OUT"/logs/*

# Pinning: servers on core 0, load on core 1, when there are two cores or more.
SERVER_PIN=() LOAD_PIN=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    SERVER_PIN=(taskset -c 0) LOAD_PIN=(taskset -c 1)
fi

echo "building (release): herd, herd-bench, places-stub, the tokio twin ..."
cargo build --release --quiet --bins
cargo build --release --quiet --example herd-tokio
HERD=$ROOT/target/release/herd
TWIN=$ROOT/target/release/examples/herd-tokio
BENCH=$ROOT/target/release/herd-bench
STUB=$ROOT/target/release/places-stub

WORK=$(mktemp -d "${TMPDIR:-/tmp}/herd-compare.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
STUB_PID=
trap 'cleanup; [[ -z $STUB_PID ]] || { kill "$STUB_PID" 2>/dev/null; wait "$STUB_PID" 2>/dev/null; }; rm -rf "$WORK"' EXIT
trap 'echo "$PROG: interrupted" >&2; exit 130' INT TERM

# free_ports N: N distinct free loopback ports, one per line.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# The places-stub, for WHATSAT: one for the whole run.
STUB_PORT_FILE=$WORK/stub.port
"${SERVER_PIN[@]}" "$STUB" --listen 127.0.0.1:0 --port-file "$STUB_PORT_FILE" --cert-out "$WORK/stub.pem" \
    >"$OUT/logs/places-stub.out" 2>&1 &
STUB_PID=$!
for ((i = 0; i < 100; i++)); do
    [[ -s $STUB_PORT_FILE ]] && break
    sleep 0.1
done
[[ -s $STUB_PORT_FILE ]] || die "places-stub did not start (see $OUT/logs/places-stub.out)"
STUB_PORT=$(<"$STUB_PORT_FILE")

# write_config FILE LEVEL TOPOLOGY: a config with fresh ports. TOPOLOGY is `solo` (one server,
# Solo), `herd` (the five of PROTOCOL.md) or `probe` (the five plus Probe, a neighbour of Jaquez
# that scripts/study/propagation.py plays). Sets NAMES and PORTS.
write_config() {
    local file=$1 level=$2 topology=$3 i
    case $topology in
        solo) NAMES=(Solo) ;;
        herd) NAMES=(Hill Jaquez Smith Campbell Singleton) ;;
        probe) NAMES=(Hill Jaquez Smith Campbell Singleton Probe) ;;
    esac
    mapfile -t PORTS < <(free_ports "${#NAMES[@]}")
    {
        echo "ports:"
        for i in "${!NAMES[@]}"; do
            echo "  ${NAMES[i]}: ${PORTS[i]}"
        done
        if [[ $topology != solo ]]; then
            cat <<'EOF'
neighbors:
  Hill: [Jaquez, Smith]
  Jaquez: [Hill, Singleton]
  Smith: [Hill, Campbell, Singleton]
  Campbell: [Smith, Singleton]
  Singleton: [Jaquez, Smith, Campbell]
EOF
            [[ $topology == probe ]] && echo "  Probe: [Jaquez]"
        fi
        cat <<EOF
places:
  endpoint: https://127.0.0.1:$STUB_PORT
  ca_file: $WORK/stub.pem
  timeout_ms: 5000
api_key: stub-key
logging:
  dir: $WORK/logs
  level: $level
EOF
    } >"$file"
}

# start CONTENDER CONFIG NAME...: starts those servers of CONFIG, waits until each listens.
# `cleanup` stops them (not the stub).
start() {
    local contender=$1 config=$2 name i port
    shift 2
    for name in "$@"; do
        case $contender in
            mio) "${SERVER_PIN[@]}" "$HERD" --config "$config" "$name" >>"$OUT/logs/$contender.out" 2>&1 & ;;
            tokio) "${SERVER_PIN[@]}" "$TWIN" --config "$config" "$name" >>"$OUT/logs/$contender.out" 2>&1 & ;;
            asyncio) "${SERVER_PIN[@]}" python3 "$ASYNCIO" --config "$config" "$name" >>"$OUT/logs/$contender.out" 2>&1 & ;;
            redis)
                port=${PORTS[0]}
                "${SERVER_PIN[@]}" "$REDIS" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                    --protected-mode no --logfile "$OUT/logs/redis.log" >/dev/null 2>&1 &
                ;;
        esac
        PIDS+=("$!")
    done
    for name in "$@"; do
        for i in "${!NAMES[@]}"; do
            [[ ${NAMES[i]} == "$name" ]] && port=${PORTS[i]}
        done
        for ((i = 0; ; i++)); do
            port_accepts 127.0.0.1 "$port" && break
            ((i < 200)) || die "$contender $name did not listen on $port within 20 s (see $OUT/logs/$contender.out)"
            sleep 0.1
        done
    done
}

# summary FILE: one line about a result file (herd-bench, propagation.py or memory.py JSON).
summary() {
    python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if "bytes_per_idle_connection" in r:
    print("%d B per idle connection, %.1f MiB for %d clients" % (
        r["bytes_per_idle_connection"], r["rss_clients_mib"], r["clients"]))
elif "per_second" in r:
    extra = "" if not r.get("errors") else "  %d errors: %s" % (r["errors"], r.get("first_error"))
    print("%12.0f/s  p99 %.0f us%s" % (r["per_second"], r["p99_us"], extra))
else:
    print("p50 %.0f us  p99 %.0f us" % (r["p50_us"], r["p99_us"]))
EOF
}

# bench SCENARIO CONTENDER RUN HERD-BENCH-ARGS...: one herd-bench run, its JSON kept.
bench() {
    local scenario=$1 contender=$2 run=$3 json
    shift 3
    json=$OUT/raw/$scenario.$contender.$run.json
    printf '  %-14s %-8s run %s: ' "$scenario" "$contender" "$run"
    "${LOAD_PIN[@]}" "$BENCH" --json -t "$DURATION" -w "$WARMUP" "$@" >"$json" 2>"$json.err" || true
    summary "$json" 2>/dev/null || { echo "failed:"; cat "$json.err"; }
}

targets() {
    local p out=()
    for p in "$@"; do
        out+=("127.0.0.1:$p")
    done
    printf '%s\n' "${out[@]}"
}

CONTENDERS=(mio tokio)
[[ -n $ASYNCIO ]] && CONTENDERS+=(asyncio)
herd_like=("${CONTENDERS[@]}")
[[ -n $REDIS ]] && CONTENDERS+=(redis)

echo "contenders: ${CONTENDERS[*]}; ${CONNS} connections, ${DURATION}s per run after ${WARMUP}s warm-up, $REPEAT run(s) each"
echo "pinning: servers ${SERVER_PIN[*]:-unpinned}, load ${LOAD_PIN[*]:-unpinned}"

for ((run = 1; run <= REPEAT; run++)); do
    # One server; per-message logging off (warn) and on (info); Redis at the same settings.
    for level in warn info; do
        for depth in 1 16; do
            scenario=solo-d$depth
            [[ $level == info ]] && scenario=$scenario-log
            for c in "${CONTENDERS[@]}"; do
                [[ $c == redis && $level == info ]] && continue
                write_config "$WORK/solo.yml" "$level" solo
                start "$c" "$WORK/solo.yml" Solo
                proto=herd
                [[ $c == redis ]] && proto=redis
                bench "$scenario" "$c" "$run" --protocol "$proto" -c "$CONNS" -d "$depth" "127.0.0.1:${PORTS[0]}"
                cleanup
            done
        done
    done
    # A new connection per request.
    for c in "${CONTENDERS[@]}"; do
        write_config "$WORK/solo.yml" warn solo
        start "$c" "$WORK/solo.yml" Solo
        proto=herd
        [[ $c == redis ]] && proto=redis
        bench connect "$c" "$run" --protocol "$proto" -c "$CONNS" --connect-per-request "127.0.0.1:${PORTS[0]}"
        cleanup
    done
    # WHATSAT through places-stub, half the requests (the asyncio contender does not ask Places).
    for c in mio tokio; do
        write_config "$WORK/solo.yml" warn solo
        start "$c" "$WORK/solo.yml" Solo
        bench whatsat "$c" "$run" -c "$CONNS" --whatsat 50 "127.0.0.1:${PORTS[0]}"
        cleanup
    done
    # The five-server herd, IAMATs spread over all five, every update flooded.
    for depth in 1 16; do
        for c in "${herd_like[@]}"; do
            write_config "$WORK/herd.yml" warn herd
            start "$c" "$WORK/herd.yml" "${NAMES[@]}"
            mapfile -t addrs < <(targets "${PORTS[@]}")
            bench "herd5-d$depth" "$c" "$run" -c "$CONNS" -d "$depth" "${addrs[@]}"
            cleanup
        done
    done
    # Two hops on an idle herd: IAMAT at Campbell until Jaquez floods it to Probe.
    for c in "${herd_like[@]}"; do
        write_config "$WORK/probe.yml" warn probe
        start "$c" "$WORK/probe.yml" Hill Jaquez Smith Campbell Singleton
        json=$OUT/raw/propagation.$c.$run.json
        printf '  %-14s %-8s run %s: ' propagation "$c" "$run"
        if "${LOAD_PIN[@]}" python3 scripts/study/propagation.py --at "127.0.0.1:${PORTS[3]}" --probe-port "${PORTS[5]}" \
            --samples "$SAMPLES" --json >"$json" 2>"$json.err"; then
            summary "$json"
        else
            echo "failed: $(cat "$json.err")"
        fi
        cleanup
    done
done

if [[ -n $MEMORY ]]; then
    for c in mio tokio; do
        bin=$HERD
        [[ $c == tokio ]] && bin=$TWIN
        printf '  %-14s %-8s: ' memory "$c"
        "${SERVER_PIN[@]}" python3 scripts/study/memory.py --server "$bin" --idle 10000 --clients "$CLIENTS" --json \
            >"$OUT/raw/memory.$c.1.json" 2>"$OUT/raw/memory.$c.1.json.err" \
            && summary "$OUT/raw/memory.$c.1.json" \
            || echo "failed: $(cat "$OUT/raw/memory.$c.1.json.err")"
    done
fi

# The servers' logs can be gigabytes after the full-logging runs: keep only their ends.
for log in "$WORK"/logs/*.log; do
    [[ -f $log ]] && tail -n 200 "$log" >"$OUT/logs/$(basename "$log")"
done
python3 scripts/study/compare_report.py --raw "$OUT/raw" --out "$OUT" \
    --machine "$(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)" \
    --settings "${CONNS} connections, ${DURATION}s measured after ${WARMUP}s warm-up, median of $REPEAT run(s); servers ${SERVER_PIN[*]:-unpinned}, load ${LOAD_PIN[*]:-unpinned}"
echo "results: $OUT/results.md, $OUT/results.csv, $OUT/throughput.svg, $OUT/latency.svg"
