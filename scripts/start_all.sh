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
# stops the servers this run started and exits 1. Stop the herd with scripts/stop_all.sh.
set -euo pipefail

PROG=start_all.sh
usage() {
    cat <<'EOF'
usage: scripts/start_all.sh [--config PATH]

Starts every server of the herd's configuration (default config.yml at the repository root, or
$HERD_CONFIG) in the background; stop them with scripts/stop_all.sh.
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

# 1. Build (a no-op when the binary is up to date).
if command -v cargo >/dev/null 2>&1; then
    echo "building $HERD_BIN (cargo build --release --bin herd) ..."
    cargo build --release --bin herd --quiet || die "cargo build --release --bin herd failed"
elif [[ -x $HERD_BIN ]]; then
    echo "$PROG: cargo not found; using the existing $HERD_BIN" >&2
else
    die "cargo not found and $HERD_BIN does not exist: install Rust (https://rustup.rs)"
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
pids=() status=() conflicts=0
for i in "${!names[@]}"; do
    name=${names[i]} ip=${ips[i]} port=${ports[i]}
    pidfile=$RUN_DIR/$name.pid
    pid=$(read_pid "$pidfile")
    if [[ -n $pid ]] && is_herd "$pid" "$name"; then
        pids[i]=$pid
        status[i]="already running"
        echo "$name: already running (pid $pid)"
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

# 4. Start the others. setsid (when present) detaches each server from this terminal, so closing
# it or pressing Ctrl-C there does not stop the herd.
started=()
launcher=(nohup)
if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid nohup)
fi

stop_started() {
    local i pid
    ((${#started[@]} > 0)) || return 0
    for i in "${started[@]}"; do
        pid=${pids[i]}
        if is_alive "$pid"; then
            echo "stopping ${names[i]} (pid $pid): $(stop_pid "$pid" 50)" >&2
        fi
        rm -f "$RUN_DIR/${names[i]}.pid"
    done
}
trap 'echo "$PROG: interrupted" >&2; stop_started; exit 130' INT TERM

for i in "${!names[@]}"; do
    [[ -z ${pids[i]} ]] || continue
    name=${names[i]}
    out=$RUN_DIR/$name.out
    # The key, if any, reaches the servers through the inherited environment; it is never printed.
    "${launcher[@]}" "$HERD_BIN" --config "$CONFIG" "$name" </dev/null >"$out" 2>&1 &
    pids[i]=$!
    status[i]=started
    started+=("$i")
    echo "${pids[i]}" >"$RUN_DIR/$name.pid"
done

# --- Places stand-in (issue 3) -------------------------------------------------------------
# WHATSAT needs Google Places. The Places client and its offline stand-in `places-stub` come with
# issue 3; the stand-in will be started here when no GOOGLE_PLACES_API_KEY is set. Until then a
# valid WHATSAT answers with the `? ` line, and no key is needed.
# ---------------------------------------------------------------------------------------------

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
echo "WHATSAT answers with a '?' line until the Google Places client lands (issue 3)."
echo "Console output: $RUN_DIR/<NAME>.out. Stop the herd with scripts/stop_all.sh."
