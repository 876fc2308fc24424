#!/usr/bin/env bash
# Runs the relay benchmark scenarios in sequence, each bounded in time.
#
#   bench/run.sh [SCENARIO...]     (default: every scenario)
#
# Scenarios: baseline event contenders ramp idle slow storm joins4 overload
# (the default list). The scenarios node and noderamp compare krt-relay with
# a plain Node.js relay in bench/node-relay, which needs node and one
# `npm ci` in that folder.
# A scenario named twice runs twice. Each event run prints the relay's CPU per
# frame over the baseline's CPU per write, each node run the p99 latency of
# krt-relay over the Node.js relay's, and the last lines give the medians.
# The relay runs pinned to CPU 0 (taskset -c 0) and the load generator to
# CPU 1 (taskset -c 1). Each scenario starts its own relay with a fresh data
# directory under $OUT/data-*, stops it by process id, and writes the
# reports to $OUT (default /tmp/krt-bench). Build first:
#   cargo build --release -p krt-relay -p krt-tests
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=${OUT:-/tmp/krt-bench}
RELAY_CPU=${RELAY_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
WORKERS=${WORKERS:-1}
DURATION_S=${DURATION_S:-10}
DURATION="${DURATION_S}s"
mkdir -p "$OUT"
ulimit -n 20000

RELAY_PID=""
RELAY_ADDR=""

# await_relay NAME: waits for the relay just started for NAME to write its
# address, and leaves it in RELAY_ADDR.
await_relay() {
    local name=$1 dir="$OUT/data-$1"
    for _ in $(seq 100); do
        [[ -s "$dir/addr" ]] && break
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -s "$dir/addr" ]]; then
        echo "relay for $name did not start; see $OUT/$name.relay.log" >&2
        stop_relay
        return 1
    fi
    RELAY_ADDR=$(tr -d '\n' <"$dir/addr")
}

# start_relay NAME [RELAY OPTIONS...]: starts a relay on a free port.
start_relay() {
    local name=$1
    shift
    local dir="$OUT/data-$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    KRT_LOG=warn,krt_relay::hub=info taskset -c "$RELAY_CPU" "$BIN/krt-relay" --listen 127.0.0.1:0 \
        --data-dir "$dir" --addr-file "$dir/addr" --worker-threads "$WORKERS" "$@" \
        >"$OUT/$name.relay.log" 2>&1 &
    RELAY_PID=$!
    await_relay "$name"
}

# start_node_relay NAME KEYS: starts the Node.js relay on a free port, with
# the keys of the data directory of scenario KEYS.
start_node_relay() {
    local name=$1 keys="$OUT/data-$2"
    local dir="$OUT/data-$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -p "$keys"/signing.key "$keys"/signing.pub "$keys"/userid.key "$dir"/
    taskset -c "$RELAY_CPU" node bench/node-relay/relay.mjs --listen 127.0.0.1:0 \
        --data-dir "$dir" --addr-file "$dir/addr" >"$OUT/$name.relay.log" 2>&1 &
    RELAY_PID=$!
    await_relay "$name"
}

# Context switches of the relay: involuntary ones mean another process took
# its core.
relay_switches() {
    cat /proc/"$RELAY_PID"/task/*/status 2>/dev/null | awk '
        /^voluntary_ctxt_switches/ { v += $2 }
        /^nonvoluntary_ctxt_switches/ { n += $2 }
        END { printf "voluntary %d, involuntary %d (all threads)", v, n }'
}

stop_relay() {
    if [[ -n "$RELAY_PID" ]]; then
        kill "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
        RELAY_PID=""
    fi
}
# The ratios of this invocation, for the medians at the end; each ratio line
# is also kept in the scenario's report.
EVENT_RATIOS=$(mktemp "$OUT/event-ratios.XXXXXX")
NODE_RATIOS=$(mktemp "$OUT/node-ratios.XXXXXX")
cleanup() {
    stop_relay
    rm -f "$EVENT_RATIOS" "$NODE_RATIOS"
}
trap cleanup EXIT

# loadgen NAME [LOADGEN OPTIONS...]: runs the load generator against the
# running relay, bounded by timeout.
loadgen() {
    local name=$1
    shift
    echo "== $name: $(uptime)" | tee -a "$OUT/$name.txt"
    echo "relay switches before: $(relay_switches)" | tee -a "$OUT/$name.txt"
    if ! timeout 300 taskset -c "$LOADGEN_CPU" "$BIN/krt-loadgen" \
        --url "ws://$RELAY_ADDR/voice" --data-dir "$OUT/data-$name" \
        --relay-pid "$RELAY_PID" "$@" 2>"$OUT/$name.loadgen.log" | tee -a "$OUT/$name.txt"; then
        echo "krt-loadgen failed for $name; see $OUT/$name.loadgen.log" >&2
        return 1
    fi
    echo "relay switches after: $(relay_switches)" | tee -a "$OUT/$name.txt"
}

# Seconds since the epoch of the first log line of FILE that contains TEXT.
log_time() {
    local line
    line=$(grep -m1 "$2" "$1" | sed 's/\x1b\[[0-9;]*m//g' | awk '{print $1}')
    date -d "$line" +%s.%N
}

# baseline NAME TALKERS FANOUT [SOCKETS [JOINS]]: the bare TCP floor for a
# layout. Leaves the CPU per write in BASELINE_US.
BASELINE_US=""
baseline() {
    local name=$1 talkers=$2 fanout=$3 sockets=${4:-600} joins=${5:-1}
    echo "== baseline for $name: $(uptime)" | tee -a "$OUT/$name.txt"
    timeout 120 "$BIN/krt-tcp-baseline" --sockets "$sockets" --talkers "$talkers" \
        --joins "$joins" --fanout "$fanout" --duration "$DURATION" \
        --writer-cpu "$RELAY_CPU" --reader-cpu "$LOADGEN_CPU" | tee "$OUT/last-baseline.txt" \
        | tee -a "$OUT/$name.txt"
    BASELINE_US=$(awk '/^writer CPU/ { print $(NF-3) }' "$OUT/last-baseline.txt")
}

# The relay's CPU per delivered frame in the last report of NAME.
relay_us() {
    awk '/^relay CPU/ { us = $(NF-6) } END { print us }' "$OUT/$1.txt"
}

# The baseline runs right before and right after the relay, and the ratio
# uses their mean, since the kernel's cost per write drifts on a shared host.
scenario_event() {
    baseline event 6 99
    local before=$BASELINE_US
    start_relay event
    loadgen event --users 600 --freqs 6 --talkers 6 --duration "$DURATION"
    stop_relay
    baseline event 6 99
    local relay
    relay=$(relay_us event)
    echo "$relay $before $BASELINE_US" | awk '{
        printf "ratio %.2f (relay %s us per frame, baseline %s and %s us per write)\n",
            $1 / (($2 + $3) / 2), $1, $2, $3 }' | tee -a "$OUT/event.txt" "$EVENT_RATIOS"
}

# The p99 latency in ms in the last report of NAME (a load generator's or a
# baseline's).
p99_ms() {
    awk '/^latency ms/ { p = $6 } END { print p }' "$OUT/$1.txt"
}

# Fails unless node and the Node.js relay's packages are installed.
need_node() {
    if ! command -v node >/dev/null || [[ ! -d bench/node-relay/node_modules/ws ]]; then
        echo "the Node.js relay needs node and its packages: install node, then run" \
            "(cd bench/node-relay && npm ci)" >&2
        return 1
    fi
}

# The Node.js relay checks tokens with the keys of this data directory,
# which krt-relay creates.
node_keys() {
    if [[ ! -s "$OUT/data-node-keys/signing.key" ]]; then
        start_relay node-keys
        stop_relay
    fi
}

# node_pair NAME [LOADGEN OPTIONS...]: runs the same load on krt-relay
# (report NAME-krt) and on the Node.js relay (report NAME-js). The order
# alternates from call to call, so that neither relay always runs first.
NODE_PAIRS=0
node_pair() {
    local name=$1
    shift
    node_keys
    NODE_PAIRS=$((NODE_PAIRS + 1))
    local order=(krt js)
    ((NODE_PAIRS % 2)) || order=(js krt)
    local side
    for side in "${order[@]}"; do
        if [[ $side == krt ]]; then
            start_relay "$name-krt"
        else
            start_node_relay "$name-js" node-keys
        fi
        loadgen "$name-$side" "$@"
        stop_relay
    done
}

# The 600/6/6 event on both relays, next to the bare TCP writes of the same
# layout, and the ratio of the p99 latencies.
scenario_node() {
    need_node
    baseline node 6 99
    local bare
    bare=$(p99_ms last-baseline)
    node_pair node --users 600 --freqs 6 --talkers 6 --duration "$DURATION"
    echo "$(p99_ms node-krt) $(p99_ms node-js) $bare $(relay_us node-krt) $(relay_us node-js)" | awk '{
        printf "p99 ratio %.2f (krt-relay %s ms, node %s ms, bare TCP %s ms = %.2f of node; CPU %s and %s us per frame)\n",
            $1 / $2, $1, $2, $3, $3 / $2, $4, $5 }' | tee -a "$OUT/node.txt" "$NODE_RATIOS"
}

# The ramp's larger steps on both relays.
scenario_noderamp() {
    need_node
    local users
    for users in ${NODE_RAMP_USERS:-2400 4800}; do
        local talkers=$((users / 100))
        node_pair "noderamp-$users" --users "$users" --freqs "$talkers" --talkers "$talkers" \
            --duration "$DURATION" --connect-timeout 120s
    done
}

# median FILE FIELD LABEL REPORT: prints the median of word FIELD of FILE's
# lines and appends it to REPORT; prints nothing when FILE is empty.
median() {
    [[ -s "$1" ]] || return 0
    awk -v field="$2" '{ print $field }' "$1" | sort -n | awk -v label="$3" '
        { r[NR] = $1 }
        END {
            m = NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
            printf "%s: %d runs, median %.2f, from %.2f to %.2f\n", label, NR, m, r[1], r[NR]
        }' | tee -a "$4"
}

scenario_contenders() {
    start_relay contenders
    loadgen contenders --users 600 --freqs 6 --talkers 12 --duration "$DURATION"
    stop_relay
}

scenario_ramp() {
    local users
    for users in ${RAMP_USERS:-1200 2400 4800}; do
        local talkers=$((users / 100))
        baseline "ramp-$users" "$talkers" 99 "$users"
        start_relay "ramp-$users"
        loadgen "ramp-$users" --users "$users" --freqs "$talkers" --talkers "$talkers" \
            --duration "$DURATION" --connect-timeout 120s
        stop_relay
    done
}

scenario_idle() {
    local users=${IDLE_USERS:-10000}
    start_relay idle
    loadgen idle --users "$users" --idle --duration 10s --connect-timeout 180s \
        --connect-concurrency 128
    stop_relay
}

scenario_slow() {
    start_relay slow
    loadgen slow --users 600 --freqs 6 --talkers 6 --slow-listeners 20 --duration 60s
    stop_relay
}

scenario_storm() {
    start_relay storm
    loadgen storm --users 600 --freqs 6 --talkers 6 --reconnect-storm --duration "$DURATION"
    curl -s "http://$RELAY_ADDR/server-status" | tee -a "$OUT/storm.txt"
    echo | tee -a "$OUT/storm.txt"
    stop_relay
}

scenario_joins4() {
    local window
    baseline joins4 6 399 600 4
    for window in ${JOINS4_WINDOWS:-0ms 500us 1ms 2ms 5ms 10ms}; do
        start_relay "joins4-$window" --coalesce-window "$window"
        loadgen "joins4-$window" --users 600 --freqs 6 --talkers 6 --joins-per-user 4 \
            --duration "$DURATION"
        stop_relay
    done
}

# Overload, then a probe: a second, small load generator (100 users on
# another frequency) whose measurement window starts a moment after the
# overload's talkers stop, to show how soon latency is back to normal.
scenario_overload() {
    baseline overload 48 99 4800
    start_relay overload
    loadgen overload --users 4800 --freqs 48 --talkers 48 --duration "$DURATION" \
        --connect-timeout 120s &
    local main=$!
    local log="$OUT/overload.loadgen.log"
    for _ in $(seq 1200); do
        grep -q talking "$log" 2>/dev/null && break
        sleep 0.1
    done
    # Talking starts 0.1 s after the log line. The probe starts 1 s before
    # the overload's talkers stop, plus PROBE_DELAY_S, and measures after it
    # has connected and warmed up for 1 s, so that its window begins about a
    # second after they stop. The measured offset is printed below.
    sleep $((2 + DURATION_S - 1))
    sleep "${PROBE_DELAY_S:-0.7}"
    echo "== overload probe: $(uptime)" | tee -a "$OUT/overload-probe.txt"
    timeout 60 taskset -c "$LOADGEN_CPU" "$BIN/krt-loadgen" \
        --url "ws://$RELAY_ADDR/voice" --data-dir "$OUT/data-overload" \
        --users 100 --freqs 1 --talkers 1 --first-freq 9000 --warmup 1s --duration 1s \
        2>"$OUT/overload-probe.loadgen.log" | tee -a "$OUT/overload-probe.txt"
    wait "$main" || true
    local talk_end probe_window
    talk_end=$(echo "$(log_time "$log" talking) + 0.1 + 2 + $DURATION_S" | bc)
    probe_window=$(echo "$(log_time "$OUT/overload-probe.loadgen.log" talking) + 0.1 + 1" | bc)
    echo "probe window starts $(echo "$probe_window - $talk_end" | bc) s after the overload talkers stopped" \
        | tee -a "$OUT/overload-probe.txt"
    stop_relay
}

scenario_baseline() {
    baseline baseline 6 99
}

scenarios=("$@")
if [[ ${#scenarios[@]} -eq 0 ]]; then
    scenarios=(event contenders ramp idle slow storm joins4 overload)
fi
for scenario in "${scenarios[@]}"; do
    "scenario_$scenario"
done
median "$EVENT_RATIOS" 2 "event ratios" "$OUT/event.txt"
median "$NODE_RATIOS" 3 "p99 ratios to node" "$OUT/node.txt"
