#!/usr/bin/env bash
# bench/run.sh: runs one scenario against placecast and the baseline with the same parameters,
# alternating them (placecast, baseline, placecast, ...) for REPEATS rounds, each server pinned
# to CPU 0 (taskset -c 0) and the load tester to CPU 1, then writes the medians and the ratio
# placecast / baseline with `placecast-load compare`.
#
# Usage (all settings are environment variables; defaults in brackets):
#   bench/run.sh
#   SCENARIO=fanout CLIENTS="1000 10000 19000" STRIDES="4 16" REPEATS=3 bench/run.sh
#
#   SCENARIO   hold | fanout | reconnect | place                    [fanout]
#   SERVERS    which servers to run (place: placecast only)          [placecast baseline]
#              (add `uws` for the uWebSockets peer, built first with bench/peers/uws/build.sh)
#   UWS_BIN    the uWebSockets peer's binary                        [target/uws/placecast-uws]
#   CLIENTS    client counts, one run set each                      [1000 10000 19000]
#   STRIDES    edit strides (4 = compact, 16 = padded edits)         [4 16]
#   REPEATS    rounds per setting (medians are taken over them)      [3]
#   DURATION   seconds of the measured phase                         [20]
#   RATE       placements per second (fanout, reconnect)             [1000]
#   RAMP       new connections per second                            [5000]
#   SERVER_CPU / TESTER_CPU   CPUs to pin to                         [0 / 1]
#   EXTRA      extra arguments for placecast-load                   []
#   OUT        output directory                                      [bench/results/<date>-<scenario>]
#   BUILD=0    skip `cargo build --release`
#
# Every server this script starts is stopped by its PID when a run ends (or on exit).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
SCENARIO=${SCENARIO:-fanout}
SERVERS=${SERVERS:-placecast baseline}
CLIENTS=${CLIENTS:-1000 10000 19000}
STRIDES=${STRIDES:-4 16}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-20}
RATE=${RATE:-1000}
RAMP=${RAMP:-5000}
SERVER_CPU=${SERVER_CPU:-0}
TESTER_CPU=${TESTER_CPU:-1}
EXTRA=${EXTRA:-}
OUT=${OUT:-$root/bench/results/$(date +%Y%m%d-%H%M%S)-$SCENARIO}

if [ "${BUILD:-1}" != 0 ]; then
  (cd "$root" && cargo build --release -p placecast-load && cargo build --release -p placecast)
fi
mkdir -p "$OUT/bin"
# Measure fixed copies: a concurrent `cargo build` must not swap a binary mid-sweep.
for b in placecast placecast-baseline placecast-load; do
  cp "$root/target/release/$b" "$OUT/bin/$b"
done
if [[ " $SERVERS " == *" uws "* ]]; then
  UWS_BIN=${UWS_BIN:-$root/target/uws/placecast-uws}
  [ -x "$UWS_BIN" ] || { echo "no uWebSockets peer at $UWS_BIN: run bench/peers/uws/build.sh" >&2; exit 2; }
  cp "$UWS_BIN" "$OUT/bin/placecast-uws"
fi
BIN=$OUT/bin
{
  echo "date: $(date -u +%FT%TZ)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "mem: $(grep MemTotal /proc/meminfo)"
  echo "nofile: $(ulimit -Sn)/$(ulimit -Hn)"
  echo "ip_local_port_range: $(cat /proc/sys/net/ipv4/ip_local_port_range)"
  echo "placecast source: commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(GIT_OPTIONAL_LOCKS=0 git -C "$root" status --porcelain -- src Cargo.toml 2>/dev/null | grep -q . && echo ' plus uncommitted changes')"
  echo "binaries: $(cd "$BIN" && sha256sum placecast placecast-baseline placecast-load $(ls placecast-uws 2>/dev/null) | awk '{printf "%s=%s ", $2, substr($1,1,12)}')"
  echo "settings: SCENARIO=$SCENARIO SERVERS='$SERVERS' CLIENTS='$CLIENTS' STRIDES='$STRIDES' REPEATS=$REPEATS DURATION=$DURATION RATE=$RATE RAMP=$RAMP EXTRA='$EXTRA'"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

# start_server KIND STRIDE LOG: starts it pinned, waits until it answers, sets SERVER_PID and PORT.
start_server() {
  local kind=$1 stride=$2 log=$3
  case $kind in
    placecast)
      PORT=8080
      local data=$OUT/data-placecast
      rm -rf "$data"
      # The per-address limits off: every simulated client comes from a few loopback addresses
      # (README.md, "Servers for load tests").
      taskset -c "$SERVER_CPU" "$BIN/placecast" serve --listen 127.0.0.1:$PORT --shards 1 --data-dir "$data" \
        --cooldown 0 --batch-ms 100 --edit-stride "$stride" \
        --max-conns-per-addr 0 --sessions-per-min 0 --placements-per-addr-per-min 0 \
        --catchups-per-addr-per-min 0 >"$log" 2>&1 &
      ;;
    baseline)
      PORT=8090
      taskset -c "$SERVER_CPU" "$BIN/placecast-baseline" --listen 127.0.0.1:$PORT --batch-ms 100 \
        --edit-stride "$stride" >"$log" 2>&1 &
      ;;
    uws)
      PORT=8091
      taskset -c "$SERVER_CPU" "$BIN/placecast-uws" --listen 127.0.0.1:$PORT --batch-ms 100 \
        --edit-stride "$stride" >"$log" 2>&1 &
      ;;
    *) echo "unknown server $kind" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$PORT/api/v1/canvas/info" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "$kind exited at start, see $log" >&2; tail -5 "$log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "$kind did not answer within 10 s, see $log" >&2
  exit 1
}

# compare_with KIND STRIDE N NAME: medians and ratios of placecast against KIND's runs of this
# setting, in $OUT/NAME-<scenario>-s<stride>-n<n>.{json,txt}; nothing unless both ran. The
# table's second column is named after KIND's runs' label.
compare_with() {
  local kind=$1 stride=$2 n=$3 out=$OUT/$4-$SCENARIO-s$2-n$3
  [[ " $SERVERS " == *" placecast "* && " $SERVERS " == *" $kind "* ]] || return 0
  "$BIN/placecast-load" compare \
    --placecast "$OUT"/$SCENARIO-s$stride-n$n-placecast-*.json \
    --baseline "$OUT"/$SCENARIO-s$stride-n$n-$kind-*.json \
    --json "$out.json" 2>"$out.txt" >/dev/null || true
  cat "$out.txt"
}

scenario_args() {
  local n=$1
  case $SCENARIO in
    hold) echo "-n $n" ;;
    fanout) echo "-n $n --rate $RATE" ;;
    reconnect) echo "-n $n --rate $RATE -m $(( n < 1000 ? n / 10 + 1 : 100 ))" ;;
    place) echo "--users 1000 --conns 32" ;;
  esac
}

for stride in $STRIDES; do
  for n in $CLIENTS; do
    for rep in $(seq "$REPEATS"); do
      for kind in $SERVERS; do
        name=$SCENARIO-s$stride-n$n-$kind-$rep
        echo "== $name (load: $(cut -d' ' -f1-3 /proc/loadavg))"
        start_server "$kind" "$stride" "$OUT/$name.server.log"
        # shellcheck disable=SC2046
        taskset -c "$TESTER_CPU" "$BIN/placecast-load" "$SCENARIO" --target 127.0.0.1:$PORT \
          $(scenario_args "$n") --duration "$DURATION" --ramp "$RAMP" --server-pid "$SERVER_PID" \
          --label "$kind" --json "$OUT/$name.json" $EXTRA 2>"$OUT/$name.log" || echo "   (exit $?, see $OUT/$name.log)"
        stop_server
        grep -E "^(outcome|frames delivered|latency per edit|server cpu per delivered|server rss per|tester rss per|placements sent)" "$OUT/$name.log" | sed 's/^/   /' || true
        sleep 1
      done
    done
    compare_with baseline "$stride" "$n" compare
    compare_with uws "$stride" "$n" compare-uws
  done
done
rm -rf "$OUT/data-placecast" "$OUT/bin"
echo "results in $OUT"
