#!/usr/bin/env bash
# The abuse benchmark of bench/RESULTS.md: placecast pinned to CPU 0, the tester to CPU 1, on
# loopback; per round one run with the public-edge limits and proof-of-work sessions ("limits")
# and one with every limit off ("nolimits"), same abuser and honest users.
# Usage: BIN=/dir/with/placecast+placecast-load OUT=bench/results/abuse REPEATS=3 run.sh
set -euo pipefail
BIN=${BIN:?directory holding placecast and placecast-load}
OUT=${OUT:-$(dirname "$0")}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-30}
HONEST=${HONEST:-1000}
COOLDOWN=${COOLDOWN:-10}
PORT=${PORT:-18090}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
server_pid=
stop_server() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=; fi; }
trap stop_server EXIT
run() { # name, server flags...
  local name=$1; shift
  local data; data=$(mktemp -d /tmp/pc-abuse.XXXXXX)
  taskset -c 0 "$BIN/placecast" serve --listen 127.0.0.1:$PORT --shards 1 --data-dir "$data" \
    --cooldown "$COOLDOWN" "$@" > "$OUT/$name.server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.1; done
  taskset -c 1 "$BIN/placecast-load" abuse --target 127.0.0.1:$PORT --honest "$HONEST" --cooldown "$COOLDOWN" \
    --duration "$DURATION" --server-pid "$server_pid" --label "$name" --json "$OUT/$name.json" $EXTRA \
    2> "$OUT/$name.txt" || true
  stop_server
  rm -rf "$data"
}
for r in $(seq "$REPEATS"); do
  run "limits-$r" --anonymous-sessions proof --sessions-per-min 20 --placements-per-addr-per-min 60 --max-conns-per-addr 64
  run "nolimits-$r" --anonymous-sessions on --sessions-per-min 0 --placements-per-addr-per-min 0 --max-conns-per-addr 0
done
