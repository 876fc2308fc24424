#!/usr/bin/env bash
# Soak run: 600 users on 6 frequencies with 6 talkers, in ROUNDS rounds of
# ROUND_SECS seconds against one relay process. After each round every
# client has left, so the relay's open file descriptors must return to the
# baseline. RSS must stay flat. The transmission rows must equal the
# transmissions made, one per talker per round, because talkers speak for
# the whole round. The same 600 tokens serve every round, so the relay's cache
# of verified tokens does not grow from round to round. Bounded:
# ROUNDS x (ROUND_SECS + ~10 s).
#
# Usage: bench/soak.sh [ROUNDS] [ROUND_SECS]   (defaults 10 and 60)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-10}
round_secs=${2:-60}
talkers=6
work=$(mktemp -d /tmp/krt-soak.XXXXXX)
relay_pid=
trap '[[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null; rm -rf "$work"' EXIT

# SOAK_NO_BUILD=1 uses the release binaries already in target/release.
if [[ -z "${SOAK_NO_BUILD:-}" ]]; then
    cargo build -q --release -p krt-relay -p krt-bot -p krt-tests \
        --bin krt-relay --bin krt-bot --bin krt-loadgen
fi
target/release/krt-bot mint-tokens --data-dir "$work/data" --count 600 --ttl 2h \
    >"$work/tokens.txt" 2>/dev/null
target/release/krt-relay --data-dir "$work/data" --listen 127.0.0.1:0 \
    --addr-file "$work/addr" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do [[ -s "$work/addr" ]] && break; sleep 0.1; done
addr=$(cat "$work/addr")

fds() { ls "/proc/$relay_pid/fd" | wc -l; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$relay_pid/status"; }

baseline_fds=$(fds)
echo "round  fds_after  rss_kib_after  loss_pct  p99_ms  rows"
for round in $(seq "$rounds"); do
    target/release/krt-loadgen --url "ws://$addr/voice" --tokens "$work/tokens.txt" \
        --users 600 --freqs 6 --talkers "$talkers" --warmup 2s \
        --duration "${round_secs}s" --json >"$work/round.json" 2>>"$work/loadgen.log"
    sleep 2
    rows=$(sqlite3 "$work/data/krt.db" "SELECT COUNT(*) FROM transmissions")
    loss=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get('loss_percent', r.get('loss_pct','?')))" "$work/round.json")
    p99=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); l=r.get('latency_ms', r.get('latency', {})); print(l.get('p99','?') if isinstance(l, dict) else '?')" "$work/round.json")
    printf "%5d  %9d  %13d  %8s  %6s  %4d\n" "$round" "$(fds)" "$(rss_kib)" "$loss" "$p99" "$rows"
done
echo "baseline fds: $baseline_fds; expected rows: $((rounds * talkers))"
kill -TERM "$relay_pid"
wait "$relay_pid" || true
echo "rows after shutdown: $(sqlite3 "$work/data/krt.db" "SELECT COUNT(*) FROM transmissions")"
