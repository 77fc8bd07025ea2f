# Helpers shared by start_all.sh, stop_all.sh and study/compare.sh. Sourced, not run.
# shellcheck shell=bash
#
# Only bash and coreutils are required. /proc, ps, ss and timeout are used when present, so the
# scripts also work on a slim container image without procps or iproute2.

# The herd binary and the folder of PID files and console output, relative to the repository root
# (both scripts cd there first).
# shellcheck disable=SC2034 # used by the scripts that source this file
HERD_BIN=target/release/herd
# shellcheck disable=SC2034
RUN_DIR=run
# The offline Places stand-in and its files in run/ (started by start_all.sh when there is no key).
# shellcheck disable=SC2034
STUB_BIN=target/release/places-stub
# shellcheck disable=SC2034
STUB_PIDFILE=$RUN_DIR/places-stub.pid
# shellcheck disable=SC2034
STUB_PORTFILE=$RUN_DIR/places-stub.port
# shellcheck disable=SC2034
STUB_OUT=$RUN_DIR/places-stub.out
# shellcheck disable=SC2034
STUB_CERT=$RUN_DIR/places-stub-cert.pem
# shellcheck disable=SC2034
STUB_CONFIG=$RUN_DIR/config.stub.yml
# The key places-stub accepts (its default); not a secret.
# shellcheck disable=SC2034
STUB_KEY=stub-key
# The calling script's name, for messages.
: "${PROG:=herd scripts}"

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

# parse_args ARGS...: sets CONFIG from --config PATH (or -c PATH, --config=PATH), else from
# $HERD_CONFIG, else config.yml. A relative path is taken relative to the caller's directory,
# so it must be resolved before the script changes directory: call this first.
parse_args() {
    CONFIG=${HERD_CONFIG:-}
    while (($#)); do
        case $1 in
            -c | --config)
                (($# >= 2)) || { printf '%s: %s needs a PATH\n' "$PROG" "$1" >&2; exit 2; }
                CONFIG=$2
                shift 2
                ;;
            --config=*)
                CONFIG=${1#--config=}
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                printf '%s: unexpected argument %q\n\n' "$PROG" "$1" >&2
                usage >&2
                exit 2
                ;;
        esac
    done
    if [[ -n $CONFIG && $CONFIG != /* ]]; then
        CONFIG=$PWD/$CONFIG
    fi
}

# proc_state PID: the process's state letter (R, S, D, Z, ...), or nothing if there is none.
proc_state() {
    local pid=$1 stat
    if [[ -d /proc/self ]]; then
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
        # The command name is in parentheses and may contain spaces; the state follows it.
        stat=${stat##*) }
        printf '%s\n' "${stat%% *}"
    elif command -v ps >/dev/null 2>&1; then
        ps -p "$pid" -o stat= 2>/dev/null | tr -d ' ' || true
    elif kill -0 "$pid" 2>/dev/null; then
        echo S
    fi
}

# is_alive PID: the process exists and is not a zombie (a server that died while still our child
# stays a zombie until reaped, and `kill -0` would call it alive).
is_alive() {
    local state
    state=$(proc_state "$1")
    [[ -n $state && $state != Z* && $state != X* ]]
}

# proc_comm PID: the process's command name.
proc_comm() {
    local pid=$1 comm
    if [[ -r /proc/$pid/comm ]]; then
        cat "/proc/$pid/comm" 2>/dev/null || true
    elif command -v ps >/dev/null 2>&1; then
        comm=$(ps -p "$pid" -o comm= 2>/dev/null) || return 0
        printf '%s\n' "${comm##*/}"
    fi
}

# proc_last_arg PID: the last word of the process's command line (the server's NAME for herd).
proc_last_arg() {
    local pid=$1 args
    if [[ -r /proc/$pid/cmdline ]]; then
        tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | tail -n 1 || true
    elif command -v ps >/dev/null 2>&1; then
        args=$(ps -p "$pid" -o args= 2>/dev/null) || return 0
        printf '%s\n' "${args##* }"
    fi
}

# is_herd PID NAME: PID is a live `herd` process running the server NAME.
is_herd() {
    local pid=$1 name=$2 last
    is_alive "$pid" || return 1
    [[ $(proc_comm "$pid") == herd ]] || return 1
    last=$(proc_last_arg "$pid")
    [[ -z $last || $last == "$name" ]]
}

# is_stub PID: a live places-stub process.
is_stub() {
    is_alive "$1" && [[ $(proc_comm "$1") == places-stub ]]
}

# proc_config PID: the PATH after --config on the process's command line (empty if none or
# without /proc).
proc_config() {
    local pid=$1 arg next=
    [[ -r /proc/$pid/cmdline ]] || return 0
    while IFS= read -r -d '' arg; do
        if [[ -n $next ]]; then
            printf '%s\n' "$arg"
            return 0
        fi
        case $arg in
            --config | -c) next=1 ;;
            --config=*) printf '%s\n' "${arg#--config=}"; return 0 ;;
        esac
    done <"/proc/$pid/cmdline" 2>/dev/null || true
}

# config_has_key FILE: the config sets a Places key (top-level `api_key:` or `api_key:` under
# `places:`) to something other than nothing, "" or null.
config_has_key() {
    awk '
        function value(s) {
            sub(/^[^:]*:[[:space:]]*/, "", s)
            sub(/[[:space:]]+#.*$/, "", s)
            gsub(/^["\047]|["\047]$/, "", s)
            return s
        }
        function has(v) { return v != "" && v !~ /^#/ && v != "~" && v != "null" }
        /^[^[:space:]#]/ { in_places = 0 }
        /^api_key[[:space:]]*:/ && has(value($0)) { found = 1 }
        /^places[[:space:]]*:/ {
            in_places = 1
            if ($0 ~ /api_key[[:space:]]*:[[:space:]]*[^[:space:],}#"\047]/) found = 1
        }
        in_places && /^[[:space:]]+api_key[[:space:]]*:/ && has(value($0)) { found = 1 }
        END { exit found ? 0 : 1 }
    ' "$1"
}

# derive_stub_config CONFIG PORT CERT KEY: CONFIG on stdout with its top-level `api_key:` line
# and `places.endpoint`, `places.ca_file`, `places.api_key` removed, and the stand-in's
# `places.endpoint` (https://127.0.0.1:PORT), `places.ca_file` (CERT) and `api_key:` (KEY) added.
# Every other key and comment is kept. The `places:` block must be in block style (one key per
# line, as in config.yml); exits 3 if it is written in flow style (`places: {...}`).
derive_stub_config() {
    awk -v port="$2" -v cert="$3" -v key="$4" '
        function add(ind) {
            if (ind == "") ind = "  "
            print ind "endpoint: https://127.0.0.1:" port "   # places-stub, added by start_all.sh"
            print ind "ca_file: " cert
        }
        state == 1 {
            if ($0 ~ /^[^[:space:]#]/) {
                # The next top-level key: the places block ended. Blank lines and comments
                # held since its last key go after the added keys.
                add(ind)
                printf "%s", held
                state = 2
            } else if ($0 ~ /^[[:space:]]*(#.*)?$/) {
                held = held $0 "\n"
                next
            } else {
                if (ind == "" && match($0, /^[[:space:]]+/)) ind = substr($0, 1, RLENGTH)
                if ($0 ~ /^[[:space:]]+(endpoint|ca_file|api_key)[[:space:]]*:/) next
                printf "%s", held
                held = ""
                print
                next
            }
        }
        /^places[[:space:]]*:/ {
            rest = $0
            sub(/^places[[:space:]]*:[[:space:]]*/, "", rest)
            if (rest != "" && rest !~ /^#/) { flow = 1; exit 3 }
            print
            state = 1
            ind = ""
            next
        }
        /^api_key[[:space:]]*:/ { next }
        { print }
        END {
            if (flow) exit 3
            if (state == 1) { add(ind); printf "%s", held }
            if (state == 0) { print "places:"; add("  ") }
            print "api_key: " key "   # the key places-stub accepts, not a Google key"
        }
    ' "$1"
}

# read_pid FILE: the PID in FILE, or nothing if the file is missing or holds no number.
read_pid() {
    local pid=
    if [[ -f $1 ]]; then
        read -r pid <"$1" 2>/dev/null || true
    fi
    if [[ $pid =~ ^[0-9]+$ ]]; then
        printf '%s\n' "$pid"
    fi
}

# port_accepts IP PORT: a TCP connection to IP:PORT succeeds (bash's /dev/tcp; closed at once).
port_accepts() {
    local ip=$1 port=$2
    if command -v timeout >/dev/null 2>&1; then
        # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash
        timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$ip" "$port" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null
    fi
}

# ss_listeners PORT: `ss` lines of TCP listeners on PORT (nothing if ss is not installed).
ss_listeners() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -ltnp 2>/dev/null | awk -v port="$1" 'NR > 1 && $4 ~ (":" port "$")' || true
}

# listener_conflicts IP PORT: ss shows a listener that would stop a bind to IP:PORT (same
# address, or a wildcard on either side). Catches listeners a connect cannot reach.
listener_conflicts() {
    local ip=$1 port=$2 local_addr host
    while read -r _ _ _ local_addr _; do
        host=${local_addr%:*}
        host=${host#[}
        host=${host%]}
        host=${host%%%*}
        case $host in
            "$ip" | '*' | 0.0.0.0 | :: | "::ffff:$ip") return 0 ;;
        esac
        case $ip in
            0.0.0.0 | ::) return 0 ;;
        esac
    done < <(ss_listeners "$port")
    return 1
}

# port_holder PORT: "python3 (pid 123)" for the process listening on PORT, if ss can tell.
port_holder() {
    ss_listeners "$1" | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1
}

# stop_pid PID TIMEOUT_TENTHS: SIGTERM, wait up to the timeout for the process to end, then
# SIGKILL. Prints "stopped" or "killed" (after SIGKILL).
stop_pid() {
    local pid=$1 tenths=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < tenths; i++)); do
        is_alive "$pid" || { echo stopped; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        is_alive "$pid" || break
        sleep 0.1
    done
    echo killed
}
