#!/usr/bin/env bash
# Stop the herd started by scripts/start_all.sh.
#
#   scripts/stop_all.sh [--config PATH]      (or HERD_CONFIG=PATH; default: config.yml)
#
# For each PID file run/<NAME>.pid: SIGTERM (the server stops accepting, writes what it owes and
# flushes its log), wait up to HERD_STOP_TIMEOUT seconds (default 5), then SIGKILL. Reports each
# server as stopped, killed, not running, or "stale pid file removed", and removes the PID files.
# Servers of the config without a PID file are reported as not running. Then the same for the
# offline Places stand-in places-stub (run/places-stub.pid), if start_all.sh started one. Safe to
# run twice; exits 0 when nothing is left running.
set -euo pipefail

PROG=stop_all.sh
usage() {
    cat <<'EOF'
usage: scripts/stop_all.sh [--config PATH]

Stops the servers started by scripts/start_all.sh (found by their PID files in run/), and the
places-stub it started when there was no Places key.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"
parse_args "$@"
cd "$ROOT"
CONFIG=${CONFIG:-$ROOT/config.yml}
TIMEOUT=${HERD_STOP_TIMEOUT:-5}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "HERD_STOP_TIMEOUT must be a whole number of seconds, not '$TIMEOUT'"

# The servers to report on: those of the config (when it and the binary can be read), in its
# order, then any other PID file in run/.
names=() addrs=()
if [[ -x $HERD_BIN && -f $CONFIG ]] && listing=$("$HERD_BIN" --config "$CONFIG" --list 2>/dev/null); then
    while read -r name ip port _; do
        [[ -n $name ]] || continue
        names+=("$name") addrs+=("$ip $port")
    done <<<"$listing"
fi
for pidfile in "$RUN_DIR"/*.pid; do
    [[ -e $pidfile && $pidfile != "$STUB_PIDFILE" ]] || continue
    name=$(basename "$pidfile" .pid)
    known=
    if ((${#names[@]} > 0)); then
        for n in "${names[@]}"; do
            if [[ $n == "$name" ]]; then
                known=1
            fi
        done
    fi
    if [[ -z $known ]]; then
        names+=("$name") addrs+=("")
    fi
done
if ((${#names[@]} == 0)) && [[ ! -e $STUB_PIDFILE ]]; then
    echo "nothing to stop: no servers in $CONFIG and no PID files in $RUN_DIR/"
    exit 0
fi

left=0
for i in "${!names[@]}"; do
    name=${names[i]}
    pidfile=$RUN_DIR/$name.pid
    if [[ ! -e $pidfile ]]; then
        note=
        if [[ -n ${addrs[i]} ]]; then
            read -r ip port <<<"${addrs[i]}"
            if port_accepts "$ip" "$port"; then
                holder=$(port_holder "$port")
                note=" (but port $port is in use by ${holder:-a process} without a PID file here; not touched)"
            fi
        fi
        echo "$name: not running$note"
        continue
    fi
    pid=$(read_pid "$pidfile")
    if [[ -z $pid ]] || ! is_herd "$pid" "$name"; then
        rm -f "$pidfile"
        echo "$name: not running; stale pid file removed${pid:+ (pid $pid)}"
        continue
    fi
    how=$(stop_pid "$pid" $((TIMEOUT * 10)))
    if is_alive "$pid"; then
        echo "$name: pid $pid is still alive after SIGKILL; pid file kept" >&2
        left=$((left + 1))
        continue
    fi
    rm -f "$pidfile"
    case $how in
        stopped) echo "$name: stopped (pid $pid)" ;;
        *) echo "$name: killed with SIGKILL after ${TIMEOUT} s (pid $pid)" ;;
    esac
done

# The Places stand-in, after the servers that use it. Reported only where start_all.sh ran it.
if [[ -e $STUB_PIDFILE ]]; then
    pid=$(read_pid "$STUB_PIDFILE")
    if [[ -z $pid ]] || ! is_stub "$pid"; then
        rm -f "$STUB_PIDFILE" "$STUB_PORTFILE"
        echo "places-stub: not running; stale pid file removed${pid:+ (pid $pid)}"
    else
        how=$(stop_pid "$pid" $((TIMEOUT * 10)))
        if is_alive "$pid"; then
            echo "places-stub: pid $pid is still alive after SIGKILL; pid file kept" >&2
            left=$((left + 1))
        else
            rm -f "$STUB_PIDFILE" "$STUB_PORTFILE"
            case $how in
                stopped) echo "places-stub: stopped (pid $pid)" ;;
                *) echo "places-stub: killed with SIGKILL after ${TIMEOUT} s (pid $pid)" ;;
            esac
        fi
    fi
elif [[ -e $STUB_OUT ]]; then
    echo "places-stub: not running"
fi
((left == 0))
