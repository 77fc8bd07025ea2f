#!/usr/bin/env bash
# Start every server of the herd in the background and wait until each one accepts connections.
#
#   scripts/start_all.sh [--config PATH]      (or HERD_CONFIG=PATH; default: config.yml)
#
# Builds target/release/herd if needed, runs each server from the repository root with its
# console output in run/<NAME>.out and its PID in run/<NAME>.pid, then prints a table of name,
# port, PID and log file. Safe to run twice: a server whose PID file points to a live herd process
# is left alone. Refuses, starting nothing, if a port is taken by something else. If a server dies
# or does not listen within HERD_START_TIMEOUT seconds (default 10), shows the end of its output,
# stops what this run started and exits 1. Stop the herd with scripts/stop_all.sh.
#
# WHATSAT needs Google Places. With a key (GOOGLE_PLACES_API_KEY, or api_key in the config) the
# servers use the config as it is and ask Google. Without one, this script also builds and starts
# the offline stand-in places-stub on a free loopback port (output run/places-stub.out, PID
# run/places-stub.pid) and runs the servers with run/config.stub.yml: the config with the stub's
# endpoint, certificate and key added. WHATSAT answers then hold synthetic places, not Google's.
set -euo pipefail

PROG=start_all.sh
usage() {
    cat <<'EOF'
usage: scripts/start_all.sh [--config PATH]

Starts every server of the herd's configuration (default config.yml at the repository root, or
$HERD_CONFIG) in the background; stop them with scripts/stop_all.sh. Without a Places key
(GOOGLE_PLACES_API_KEY or api_key in the config) it also starts the offline stand-in places-stub
and points the servers at it, so WHATSAT answers with synthetic places.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"
parse_args "$@"
cd "$ROOT"
CONFIG=${CONFIG:-$ROOT/config.yml}
if [[ ! -f $CONFIG ]]; then
    echo "$PROG: no config file at $CONFIG" >&2
    exit 2
fi
TIMEOUT=${HERD_START_TIMEOUT:-10}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "HERD_START_TIMEOUT must be a whole number of seconds, not '$TIMEOUT'"

# 0. Google, or the offline stand-in? A key in the environment (not blank: the servers ignore a
# blank one) or in the config means Google.
if [[ -n ${GOOGLE_PLACES_API_KEY:-} && -n ${GOOGLE_PLACES_API_KEY//[[:space:]]/} ]]; then
    places=google
    places_why="GOOGLE_PLACES_API_KEY is set"
elif config_has_key "$CONFIG"; then
    places=google
    places_why="the config $CONFIG holds a Places key"
else
    places=stub
fi

# 1. Build (a no-op when the binaries are up to date).
build=(cargo build --release --bin herd)
bins=("$HERD_BIN")
if [[ $places == stub ]]; then
    build=(cargo build --release --bins)
    bins+=("$STUB_BIN")
fi
if command -v cargo >/dev/null 2>&1; then
    echo "building ${bins[*]} (${build[*]}) ..."
    "${build[@]}" --quiet || die "${build[*]} failed"
else
    for bin in "${bins[@]}"; do
        [[ -x $bin ]] || die "cargo not found and $bin does not exist: install Rust (https://rustup.rs)"
    done
    echo "$PROG: cargo not found; using the existing ${bins[*]}" >&2
fi

# 2. The servers: NAME IP PORT LOGFILE per line. herd explains a bad config itself (exit 2).
if ! listing=$("$HERD_BIN" --config "$CONFIG" --list); then
    echo "$PROG: cannot use the config $CONFIG (see above)" >&2
    exit 2
fi
names=() ips=() ports=() logs=()
while read -r name ip port log; do
    [[ -n $name ]] || continue
    names+=("$name") ips+=("$ip") ports+=("$port") logs+=("$log")
done <<<"$listing"
((${#names[@]} > 0)) || die "the config $CONFIG lists no servers"
mkdir -p "$RUN_DIR"

# 3. Which are running already; is any port taken by something else? Decide for every server
# before starting any, so a refusal leaves nothing behind.
pids=() status=() conflicts=0 on_stub=0
for i in "${!names[@]}"; do
    name=${names[i]} ip=${ips[i]} port=${ports[i]}
    pidfile=$RUN_DIR/$name.pid
    pid=$(read_pid "$pidfile")
    if [[ -n $pid ]] && is_herd "$pid" "$name"; then
        pids[i]=$pid
        status[i]="already running"
        note=
        used=$(proc_config "$pid")
        if [[ $used == */"$STUB_CONFIG" || $used == "$STUB_CONFIG" ]]; then
            on_stub=$((on_stub + 1))
            [[ $places == stub ]] || note=" with places-stub; stop the herd and start it again to use Google"
        elif [[ -n $used && $places == stub ]]; then
            note=" with $used; stop the herd and start it again to use places-stub"
        fi
        echo "$name: already running (pid $pid)$note"
        continue
    fi
    if [[ -e $pidfile ]]; then
        rm -f "$pidfile"
        echo "$name: removed stale pid file $pidfile${pid:+ (pid $pid is not running $name)}"
    fi
    pids[i]=
    status[i]=
    if port_accepts "$ip" "$port" || listener_conflicts "$ip" "$port"; then
        holder=$(port_holder "$port")
        echo "$PROG: cannot start $name: port $port ($ip) is already in use by ${holder:-another process} that this script did not start" >&2
        conflicts=$((conflicts + 1))
    fi
done
if ((conflicts > 0)); then
    echo "$PROG: refusing to start: free the port(s) above or change them in $CONFIG; nothing was started" >&2
    exit 1
fi

# 4. Start what is missing. setsid (when present) detaches each process from this terminal, so
# closing it or pressing Ctrl-C there does not stop the herd.
started=()
stub_pid= stub_port= stub_started=
launcher=(nohup)
if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid nohup)
fi

stop_started() {
    local i pid
    if ((${#started[@]} > 0)); then
        for i in "${started[@]}"; do
            pid=${pids[i]}
            if is_alive "$pid"; then
                echo "stopping ${names[i]} (pid $pid): $(stop_pid "$pid" 50)" >&2
            fi
            rm -f "$RUN_DIR/${names[i]}.pid"
        done
    fi
    if [[ -n $stub_started ]]; then
        if is_alive "$stub_pid"; then
            echo "stopping places-stub (pid $stub_pid): $(stop_pid "$stub_pid" 50)" >&2
        fi
        rm -f "$STUB_PIDFILE" "$STUB_PORTFILE"
    fi
}
trap 'echo "$PROG: interrupted" >&2; stop_started; exit 130' INT TERM

# 4a. Without a key: places-stub (reused if it is running) and the config that points at it, unless
# every server is running already and none of them uses the stub.
run_config=$CONFIG
to_start=0
for i in "${!names[@]}"; do
    [[ -n ${pids[i]} ]] || to_start=$((to_start + 1))
done
need_stub=
if [[ $places == stub ]] && ((to_start + on_stub > 0)); then
    need_stub=1
fi
if [[ -n $need_stub ]]; then
    pid=$(read_pid "$STUB_PIDFILE")
    if [[ -n $pid ]] && is_stub "$pid" && read -r stub_port 2>/dev/null <"$STUB_PORTFILE" \
        && [[ $stub_port =~ ^[0-9]+$ ]]; then
        stub_pid=$pid
        echo "places-stub: already running (pid $stub_pid, port $stub_port)"
    else
        if [[ -n $pid ]] && is_stub "$pid"; then
            echo "places-stub: pid $pid has no port file; restarting it: $(stop_pid "$pid" 50)"
        elif [[ -e $STUB_PIDFILE ]]; then
            echo "places-stub: removed stale pid file $STUB_PIDFILE${pid:+ (pid $pid is not running places-stub)}"
        fi
        rm -f "$STUB_PIDFILE" "$STUB_PORTFILE"
        # Port 0: the stub takes a free port and writes it to the port file once it listens.
        "${launcher[@]}" "$STUB_BIN" --listen 127.0.0.1:0 --key "$STUB_KEY" --port-file "$STUB_PORTFILE" \
            --cert-out "$STUB_CERT" </dev/null >"$STUB_OUT" 2>&1 &
        stub_pid=$!
        stub_started=1
        echo "$stub_pid" >"$STUB_PIDFILE"
        for ((polls = 0; ; polls++)); do
            if read -r stub_port 2>/dev/null <"$STUB_PORTFILE" && [[ $stub_port =~ ^[0-9]+$ ]]; then
                break
            fi
            if ! is_alive "$stub_pid" || ((polls >= TIMEOUT * 10)); then
                echo "$PROG: places-stub did not start (see $STUB_OUT):" >&2
                tail -n 20 "$STUB_OUT" >&2 || true
                stop_started
                exit 1
            fi
            sleep 0.1
        done
        echo "places-stub: started (pid $stub_pid, https://127.0.0.1:$stub_port)"
        if ((on_stub > 0)); then
            echo "$PROG: note: the servers already running still use the previous places-stub, whose port and certificate are gone: WHATSAT fails there until you run scripts/stop_all.sh and this script again" >&2
        fi
    fi
    # Regenerated at each start (the port may have changed); the herd refuses duplicate keys, so
    # the keys are replaced, not added.
    rc=0
    {
        echo "# Generated by scripts/start_all.sh from $CONFIG: no Places key, so the servers ask the"
        echo "# local places-stub. Rewritten at each start; edit $CONFIG instead."
        derive_stub_config "$CONFIG" "$stub_port" "$STUB_CERT" "$STUB_KEY"
    } >"$STUB_CONFIG.tmp" || rc=$?
    if ((rc != 0)); then
        rm -f "$STUB_CONFIG.tmp"
        echo "$PROG: cannot derive $STUB_CONFIG from $CONFIG: write its places: section in block style (one key per line), as in config.yml" >&2
        stop_started
        exit 2
    fi
    mv -f "$STUB_CONFIG.tmp" "$STUB_CONFIG"
    if ! "$HERD_BIN" --config "$STUB_CONFIG" --list >/dev/null; then
        echo "$PROG: the derived config $STUB_CONFIG is not valid (see above)" >&2
        stop_started
        exit 2
    fi
    run_config=$STUB_CONFIG
fi

for i in "${!names[@]}"; do
    [[ -z ${pids[i]} ]] || continue
    name=${names[i]}
    out=$RUN_DIR/$name.out
    # The key, if any, reaches the servers through the inherited environment; it is never printed.
    "${launcher[@]}" "$HERD_BIN" --config "$run_config" "$name" </dev/null >"$out" 2>&1 &
    pids[i]=$!
    status[i]=started
    started+=("$i")
    echo "${pids[i]}" >"$RUN_DIR/$name.pid"
done

# 5. Wait until every port accepts.
fail() {
    local i=$1 why=$2 out=$RUN_DIR/${names[$1]}.out
    echo "$PROG: ${names[i]} (port ${ports[i]}) $why" >&2
    if [[ -s $out ]]; then
        echo "--- last lines of $out ---" >&2
        tail -n 20 "$out" >&2
        echo "---" >&2
    fi
    stop_started
    exit 1
}
polls=0
waiting=("${!names[@]}")
while ((${#waiting[@]} > 0)); do
    still=()
    for i in "${waiting[@]}"; do
        pid=${pids[i]}
        if ! is_alive "$pid"; then
            code=
            if [[ ${status[i]} == started ]]; then
                if wait "$pid" 2>/dev/null; then code=0; else code=$?; fi
            fi
            fail "$i" "exited${code:+ with status $code} instead of listening"
        elif port_accepts "${ips[i]}" "${ports[i]}"; then
            :
        else
            still+=("$i")
        fi
    done
    ((${#still[@]} > 0)) || break
    waiting=("${still[@]}")
    # Counting polls of 0.1 s waits at least TIMEOUT seconds, however long the checks take.
    if ((polls++ >= TIMEOUT * 10)); then
        fail "${waiting[0]}" "does not accept connections after ${TIMEOUT} s"
    fi
    sleep 0.1
done
trap - INT TERM

# 6. The table.
wn=4 wl=3
for i in "${!names[@]}"; do
    ((${#names[i]} <= wn)) || wn=${#names[i]}
    ((${#logs[i]} <= wl)) || wl=${#logs[i]}
done
echo
row='%-*s  %-5s  %-8s  %-*s  %s\n'
# shellcheck disable=SC2059 # the format is the constant above
printf "$row" "$wn" NAME PORT PID "$wl" LOG STATUS
for i in "${!names[@]}"; do
    # shellcheck disable=SC2059
    printf "$row" "$wn" "${names[i]}" "${ports[i]}" "${pids[i]}" "$wl" "${logs[i]}" "${status[i]}"
done
echo
if [[ -n $need_stub ]]; then
    echo "No GOOGLE_PLACES_API_KEY: WHATSAT answers come from the local places-stub (synthetic places), not Google."
    echo "places-stub: https://127.0.0.1:$stub_port (pid $stub_pid), output $STUB_OUT; the servers use $STUB_CONFIG."
elif [[ $places == stub ]]; then
    echo "No Places key, but every server was already running with its own config (see above): places-stub not started."
else
    echo "WHATSAT asks Google Places ($places_why)."
    if ((on_stub > 0)); then
        echo "($on_stub server(s) already running still use places-stub: stop the herd and start it again to use Google.)"
    fi
    pid=$(read_pid "$STUB_PIDFILE")
    if [[ -n $pid ]] && is_stub "$pid"; then
        echo "(places-stub from an earlier start is still running, pid $pid; scripts/stop_all.sh stops it.)"
    fi
fi
echo "Console output: $RUN_DIR/<NAME>.out. Stop the herd with scripts/stop_all.sh."
