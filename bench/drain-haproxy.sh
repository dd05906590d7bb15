#!/usr/bin/env bash
# bench/drain-haproxy.sh: a drain measured behind HAProxy (issue 8, section 3). Two placecast
# nodes on one Kafka topic (a tansu broker), HAProxy in front (mode tcp, leastconn,
# send-proxy-v2, /readyz checks). Node B starts disabled in HAProxy so that all N fanout
# clients of `placecast-load` land on node A; a placer sends RATE placements/s to node B
# directly. Then B is enabled, node A is drained (POST /api/v1/admin/drain) and the script
# measures
#   (a) node B's new WebSocket connections per second (placecast_ws_accepted_total sampled every
#       250 ms): the largest rate over any 1 s window and the mean, against N / spread; beside
#       it the same for the connections HAProxy sent to B (its `stot`) and for the reconnects
#       the clients started (the tester's drain report), to tell where a burst comes from;
#   (b) the load tester's drain report: close to live again p50/p99, gaps, every drained client
#       live again;
#   (c) node A's exit code and its time from the drain request.
# REPEATS runs with --drain-spread-s SPREAD, then (NOSPREAD=1) one with --drain-spread-s 0 as
# the in-run baseline; medians with min-max go to $OUT/summary.txt.
#
# Usage (settings are environment variables; defaults in brackets):
#   bench/drain-haproxy.sh
#   N=4000 RATE=50 SPREAD=10 REPEATS=3 bench/drain-haproxy.sh
#
#   N           fanout clients (HAProxy holds 2 descriptors per client: at most 9000)  [4000]
#   RATE        placements per second, sent to node B directly                        [50]
#   SPREAD      --drain-spread-s of the measured runs                                  [10]
#   GRACE_MS    --drain-grace-ms (longer than HAProxy's inter 500ms x fall 1)          [2000]
#   REPEATS     runs with SPREAD                                                      [3]
#   NOSPREAD    1: one more run with --drain-spread-s 0 (every client closed at once) [1]
#   RAMP        the tester's new connections per second                              [2000]
#   SOURCES     the clients' source addresses (--source-addrs)           [127.0.1.1-127.0.1.200]
#   NODE_CPU    CPU list for both nodes (taskset -c; empty: not pinned)                [0]
#   TESTER_CPU  CPU list for the load tester (empty: not pinned)                       [1]
#   BUILD       1: build placecast-load, and placecast if it is older than src/ [1]
#   OUT         output directory                  [bench/results/drain-haproxy/<date>]
#   TANSU, HAPROXY  the broker and the balancer   [tansu on PATH or ~/.cargo/bin, /usr/sbin/haproxy]
#
# Loopback only. Bounded: every wait has a deadline, each tester run a --duration, and a watchdog
# ends the whole script after MAX_S seconds [(REPEATS + NOSPREAD) x (SPREAD + 90)]. Every process
# it starts (tansu, two nodes, HAProxy, the tester, the sampler) is killed by its PID when a run
# ends and on exit (trap); nothing else is touched.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-4000}
RATE=${RATE:-50}
SPREAD=${SPREAD:-10}
GRACE_MS=${GRACE_MS:-2000}
REPEATS=${REPEATS:-3}
NOSPREAD=${NOSPREAD:-1}
RAMP=${RAMP:-2000}
SOURCES=${SOURCES:-127.0.1.1-127.0.1.200}
NODE_CPU=${NODE_CPU-0}
TESTER_CPU=${TESTER_CPU-1}
BUILD=${BUILD:-1}
OUT=${OUT:-$root/bench/results/drain-haproxy/$(date +%Y%m%d-%H%M%S)}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
PROXY_SRC=127.0.0.10
TOPIC=edits

die() { echo "drain-haproxy: $*" >&2; exit 1; }
log() { echo "[drain-haproxy $(date +%T)] $*" >&2; }

[ -x "$HAPROXY" ] || die "HAProxy not found at $HAPROXY (apt-get install haproxy, or set HAPROXY)"
[ -x "$TANSU" ] || die "tansu not found at $TANSU (cargo install tansu --locked --features libsql, or set TANSU)"
command -v python3 >/dev/null || die "python3 is needed for the sampler and the summary"
case "$N" in '' | *[!0-9]*) die "N must be a number" ;; esac
[ "$N" -ge 100 ] && [ "$N" -le 9000 ] || die "N must be 100 to 9000: HAProxy holds 2 descriptors per client and this host caps a process at $(ulimit -Hn) open files"
[ "$(ulimit -Hn)" -ge $((2 * N + 1000)) ] || die "ulimit -Hn $(ulimit -Hn) is too small for N=$N (HAProxy needs 2 x N + 1000)"
ulimit -n "$(ulimit -Hn)"

if [ "$BUILD" = 1 ]; then
  (cd "$root" && cargo build --release -p placecast-load)
  src_ct=$(git -C "$root" log -1 --format=%ct -- src)
  if [ ! -x "$root/target/release/placecast" ] || [ "$(stat -c %Y "$root/target/release/placecast")" -le "$src_ct" ] \
    || GIT_OPTIONAL_LOCKS=0 git -C "$root" status --porcelain -- src Cargo.toml | grep -q .; then
    log "target/release/placecast is older than src/ (or src/ has changes): building it"
    (cd "$root" && cargo build --release -p placecast)
  fi
fi
mkdir -p "$OUT"

# Every PID this script started and has not reaped yet.
PIDS=()
WATCHDOG=
TMP=
BIN=
kill_started() {
  local p
  for p in "${PIDS[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  kill_started
  if [ -n "$WATCHDOG" ]; then kill -TERM "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; fi
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then rm -rf "$TMP"; fi
  if [ -n "$BIN" ] && [ -d "$BIN" ]; then rm -rf "$BIN"; fi
}
trap cleanup EXIT
trap 'log "stopped by a signal"; exit 130' INT TERM

# Measure fixed copies (outside the results: their hashes are in machine.txt): a concurrent
# `cargo build` must not swap a binary mid-series.
BIN=$(mktemp -d /tmp/drain-haproxy-bin.XXXXXX)
cp "$root/target/release/placecast" "$root/target/release/placecast-load" "$BIN/"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "mem: $(grep MemTotal /proc/meminfo)"
  echo "nofile: $(ulimit -Sn)/$(ulimit -Hn)"
  echo "ip_local_port_range: $(cat /proc/sys/net/ipv4/ip_local_port_range)"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "placecast source: commit $(git -C "$root" rev-parse --short HEAD)$(GIT_OPTIONAL_LOCKS=0 git -C "$root" status --porcelain -- src Cargo.toml bench/src | grep -q . && echo ' plus uncommitted changes')"
  echo "binaries: $(cd "$BIN" && sha256sum placecast placecast-load | awk '{printf "%s=%s ", $2, substr($1,1,12)}')"
  echo "haproxy: $("$HAPROXY" -v | head -1)"
  echo "tansu: $("$TANSU" --version 2>/dev/null | head -1)"
  echo "pinning: nodes ${NODE_CPU:-unpinned}, tester ${TESTER_CPU:-unpinned}, haproxy and tansu unpinned"
  echo "settings: N=$N RATE=$RATE SPREAD=$SPREAD GRACE_MS=$GRACE_MS REPEATS=$REPEATS NOSPREAD=$NOSPREAD RAMP=$RAMP SOURCES=$SOURCES"
} >"$OUT/machine.txt"

pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }

runs=$((REPEATS + (NOSPREAD == 1 ? 1 : 0)))
MAX_S=${MAX_S:-$((runs * (SPREAD + 90)))}
# The watchdog: a subshell that ends its own sleep when told to stop (TERM).
(
  sleep "$MAX_S" &
  sp=$!
  trap 'kill -KILL $sp 2>/dev/null; exit 0' TERM
  wait $sp
  echo "drain-haproxy: watchdog: still running after $MAX_S s, stopping" >&2
  kill -TERM $$
) &
WATCHDOG=$!

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One command on HAProxy's stats socket; prints the answer.
hap() {
  python3 - "$TMP/haproxy.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
sys.stdout.write(out.decode())
PY
}

# HAProxy's status of backend server $1 ("UP", "DOWN", "MAINT", ...).
hap_status() { hap "show stat" 2>/dev/null | awk -F, -v s="$1" '$1=="nodes" && $2==s {print $18}'; }
# Sessions HAProxy sent to server $1 so far.
hap_stot() { hap "show stat" 2>/dev/null | awk -F, -v s="$1" '$1=="nodes" && $2==s {print $8}'; }

# The sum of a metric over its series (labels, if any) at 127.0.0.1:$1.
metric() {
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m || index($1, m"{")==1 {s+=$2; f=1} END {if (f) printf "%d\n", s}'
}

# wait_for SECS WHAT CMD...: runs CMD every 100 ms until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "timed out after $secs s waiting for $what"
    sleep 0.1
  done
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/readyz")" = 200 ]; }
listening() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1" 2>/dev/null; }
hap_is() { [ "$(hap_status "$1")" = "$2" ]; }
holds() { [ "$(metric "$1" placecast_ws_connections)" = "$2" ]; }

# one_run NAME SPREAD_S: one measured drain; writes $OUT/NAME.*.
one_run() {
  local name=$1 spread=$2
  TMP=$(mktemp -d /tmp/drain-haproxy.XXXXXX)
  local pk pa pb ph
  pk=$(free_port); pa=$(free_port); pb=$(free_port); ph=$(free_port)
  local secret admin
  secret=$(head -c 36 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
  admin=$(head -c 36 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
  log "$name: spread ${spread} s, N=$N, broker :$pk, nodes A :$pa B :$pb, haproxy :$ph, in $TMP"

  # The broker, persisting in the run's temporary directory; the one-partition topic.
  mkdir -p "$TMP/kafka" "$TMP/a" "$TMP/b"
  (cd "$TMP/kafka" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$pk" \
    --advertised-listener-url "tcp://127.0.0.1:$pk" --storage-engine sqlite://tansu.db) \
    >"$TMP/tansu.log" 2>&1 &
  PIDS+=($!)
  wait_for 15 "tansu to listen" listening "$pk"
  "$TANSU" topic create "$TOPIC" --partitions 1 --broker "tcp://127.0.0.1:$pk" >>"$TMP/tansu.log" 2>&1 \
    || die "tansu topic create failed: $(tail -5 "$TMP/tansu.log")"

  # Two nodes on the topic, trusting HAProxy's source address; limits off (the clients are
  # a few hundred loopback addresses), cooldown 0 for the placer.
  local node_pid=()
  for n in a b; do
    local port=$pa
    [ $n = b ] && port=$pb
    # shellcheck disable=SC2046
    RUST_LOG=warn $(pin "$NODE_CPU") "$BIN/placecast" serve --listen "127.0.0.1:$port" --shards 1 \
      --data-dir "$TMP/$n" --kafka-brokers "127.0.0.1:$pk" --kafka-topic "$TOPIC" \
      --secret "$secret" --admin-token "$admin" --proxy-protocol v2 --trusted-proxies "$PROXY_SRC/32" \
      --max-conns-per-addr 0 --sessions-per-min 0 --placements-per-addr-per-min 0 \
      --catchups-per-addr-per-min 0 --drain-grace-ms "$GRACE_MS" --drain-spread-s "$spread" --cooldown 0 \
      >"$TMP/node-$n.log" 2>&1 &
    PIDS+=($!)
    node_pid+=($!)
  done
  local apid=${node_pid[0]} bpid=${node_pid[1]}
  wait_for 60 "node A /readyz 200" ready "$pa"
  wait_for 60 "node B /readyz 200" ready "$pb"

  # HAProxy: node B starts in maintenance (disabled), so every client lands on A.
  cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $((N + 500))
    stats socket $TMP/haproxy.sock mode 600 level admin
defaults
    mode tcp
    maxconn $((N + 500))
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 2s
frontend edge
    bind 127.0.0.1:$ph
    default_backend nodes
backend nodes
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host placecast
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2 source $PROXY_SRC send-proxy-v2 check-send-proxy
    server a 127.0.0.1:$pa check
    server b 127.0.0.1:$pb check disabled
EOF
  "$HAPROXY" -f "$TMP/haproxy.cfg" -db </dev/null >"$TMP/haproxy.log" 2>&1 &
  PIDS+=($!)
  local hpid=$!
  wait_for 15 "HAProxy's stats socket" test -S "$TMP/haproxy.sock"
  wait_for 15 "HAProxy to mark A UP" hap_is a UP

  # The load tester: N fanout clients through HAProxy, RATE placements/s to node B directly.
  local dur=$((spread + GRACE_MS / 1000 + 18))
  # shellcheck disable=SC2046
  $(pin "$TESTER_CPU") "$BIN/placecast-load" fanout --target "127.0.0.1:$ph" --place-target "127.0.0.1:$pb" \
    -n "$N" --rate "$RATE" --driver-conns 4 --users 64 --duration "$dur" --ramp "$RAMP" \
    --source-addrs "$SOURCES" --seed "$RANDOM" --label "$name" --json "$OUT/$name.json" \
    2>"$OUT/$name.tester.log" &
  PIDS+=($!)
  local tpid=$!
  wait_for 120 "node A to hold all $N clients" holds "$pa" "$N"
  [ "$(metric "$pb" placecast_ws_connections)" = 0 ] || die "node B has clients before the drain"

  # B into service; wait for the placer's edits to flow through the topic.
  hap "enable server nodes/b" >/dev/null
  wait_for 15 "HAProxy to mark B UP" hap_is b UP
  local v0
  v0=$(curl -s --max-time 2 "http://127.0.0.1:$pa/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
  wait_for 30 "placements to reach node A" sh -c \
    "[ \"\$(curl -s --max-time 2 http://127.0.0.1:$pa/healthz | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"version\"])')\" -ge $((v0 + RATE)) ]"
  local stot_a
  stot_a=$(hap_stot a)

  # The sampler, every 250 ms: B's accepted WebSocket connections, A's open ones, and the
  # connections HAProxy has sent to B (its `stot`: what reaches B's kernel, whether or not B's
  # process runs at that moment).
  python3 - "$pa" "$pb" "$TMP/samples" "$TMP/stop-sampler" $((GRACE_MS / 1000 + spread + 30)) "$TMP/haproxy.sock" <<'PY' &
import os, socket, sys, time, urllib.request
pa, pb, out, stop, limit, sock = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
def hap_stot_b():
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(1.0)
        s.connect(sock)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        for line in data.decode().splitlines():
            f = line.split(",")
            if len(f) > 8 and f[0] == "nodes" and f[1] == "b":
                return int(f[7])
    except Exception:
        pass
    return -1
def metric(port, name):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0).read().decode()
    except Exception:
        return -1
    tot, found = 0, False
    for line in body.splitlines():
        k, _, v = line.partition(" ")
        if k == name or k.startswith(name + "{"):
            tot += int(float(v)); found = True
    return tot if found else -1
t0 = time.time()
nxt = t0
with open(out, "w") as f:
    while time.time() - t0 < limit and not os.path.exists(stop):
        # Each value is stamped with the middle of its request (a busy node answers late).
        t1 = time.time()
        b_acc = metric(pb, "placecast_ws_accepted_total")
        t2 = time.time()
        a_open = metric(pa, "placecast_ws_connections")
        t3 = time.time()
        hb = hap_stot_b()
        t4 = time.time()
        f.write(f"{(t1 + t2) / 2:.3f} {b_acc} {a_open} {(t3 + t4) / 2:.3f} {hb}\n")
        f.flush()
        nxt += 0.25
        time.sleep(max(0.0, nxt - time.time()))
PY
  PIDS+=($!)
  local spid=$!
  sleep 0.6

  # Drain A.
  local t_drain ans
  t_drain=$(date +%s.%N)
  ans=$(curl -s --max-time 5 -X POST -H "Authorization: Bearer $admin" "http://127.0.0.1:$pa/api/v1/admin/drain")
  log "$name: drain: $ans"
  local deadline=$((SECONDS + GRACE_MS / 1000 + spread + 20)) a_rc= t_exit=
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$apid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  t_exit=$(date +%s.%N)
  if kill -0 "$apid" 2>/dev/null; then
    a_rc=still_running
  else
    a_rc=0
    wait "$apid" || a_rc=$?
  fi
  local stot_a_after
  stot_a_after=$(hap_stot a)
  sleep 3 # late retries
  touch "$TMP/stop-sampler"
  wait "$spid" || true
  local t_rc=0
  wait "$tpid" || t_rc=$?
  log "$name: node A exit $a_rc, tester exit $t_rc"
  cp "$TMP/samples" "$OUT/$name.samples"
  cp "$TMP/node-a.log" "$OUT/$name.node-a.log"
  cp "$TMP/node-b.log" "$OUT/$name.node-b.log"
  cp "$TMP/haproxy.log" "$OUT/$name.haproxy.log"

  python3 - "$OUT/$name" "$t_drain" "$t_exit" "$a_rc" "$t_rc" "$N" "$spread" "$GRACE_MS" \
    "$stot_a" "$stot_a_after" <<'PY'
import json, sys
base, t_drain, t_exit, a_rc, t_rc, n, spread, grace, stot0, stot1 = sys.argv[1:]
t_drain, t_exit, n, spread, grace = float(t_drain), float(t_exit), int(n), int(spread), int(grace)
s, h = [], []
for line in open(base + ".samples"):
    t, acc, a_open, th, stot = line.split()
    if int(acc) >= 0:
        s.append((float(t), int(acc)))
    if int(stot) >= 0:
        h.append((float(th), int(stot)))
before = [x for x in s if x[0] <= t_drain]
acc0 = before[-1][1] if before else s[0][1]
after = [x for x in s if x[0] > t_drain]
total = after[-1][1] - acc0 if after else 0
def max_rate(s):
    """The largest rate over any window of at least 1 s between two samples (250 ms apart)."""
    best = 0.0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            if s[j][0] - s[i][0] >= 0.999:
                best = max(best, (s[j][1] - s[i][1]) / (s[j][0] - s[i][0]))
                break
    return best
best = max_rate(s)
rising = [s[i][0] for i in range(1, len(s)) if s[i][1] > s[i - 1][1] and s[i][0] > t_drain]
first = min(rising) - 0.25 if rising else None
last = max(rising) if rising else None
active = (last - first) if rising else 0
r = json.load(open(base + ".json"))
d = r.get("drain") or {}
c = (r.get("clients") or {}).get("counts", {})
ctl = d.get("close_to_live", {})
out = {
    "name": base.rsplit("/", 1)[-1], "clients": n, "spread_s": spread, "grace_ms": grace,
    "limit_per_s": n / spread if spread else None,
    "b_new_conns": total, "b_max_rate_1s": round(best, 1), "haproxy_to_b_max_rate_1s": round(max_rate(h), 1),
    "clients_reconnect_starts_max_1s": d.get("reconnect_starts_max_per_s"),
    "b_mean_rate_active": round(total / active, 1) if active > 0 else None,
    "b_mean_rate_over_spread": round(total / spread, 1) if spread else None,
    "b_first_conn_after_drain_s": round(first - t_drain, 2) if first else None,
    "b_last_conn_after_drain_s": round(last - t_drain, 2) if last else None,
    "close_to_live_p50_ms": ctl.get("p50_us", 0) / 1000, "close_to_live_p99_ms": ctl.get("p99_us", 0) / 1000,
    "close_to_live_max_ms": ctl.get("max_us", 0) / 1000,
    "drain_closes": d.get("closes_hinted", 0) + d.get("closes_1012", 0) + d.get("closes_1001", 0),
    "live_again": d.get("live_again"), "not_live_at_end": d.get("not_live_at_end"),
    "reconnect_failures": d.get("reconnect_failures"), "closes_1013": d.get("closes_1013"),
    "refusals_retried": d.get("refusals_retried"),
    "gaps_after_reconnect": d.get("gaps_after_reconnect"), "duplicates_after_reconnect": d.get("duplicates_after_reconnect"),
    "gaps_total": c.get("gaps"), "duplicates_total": c.get("duplicates"),
    "unexpected_disconnects": c.get("unexpected_disconnects"),
    "placements_accepted": (r.get("placements") or {}).get("accepted"),
    "versions_delivered": (r.get("delivery") or {}).get("versions_delivered"),
    "versions_expected": (r.get("delivery") or {}).get("versions_expected"),
    "loadavg": r.get("loadavg"),
    "a_exit_code": a_rc, "a_exit_after_drain_s": round(t_exit - t_drain, 2),
    "haproxy_sessions_to_a_after_drain": int(stot1) - int(stot0) if stot0 and stot1 else None,
    "tester_exit_code": int(t_rc), "tester_ok": r.get("outcome", {}).get("ok"),
    "tester_error": r.get("outcome", {}).get("error"),
}
json.dump(out, open(base + ".summary.json", "w"), indent=1)
print(json.dumps(out))
PY
  kill_started
  rm -rf "$TMP"
  TMP=
}

names=()
for k in $(seq 1 "$REPEATS"); do
  one_run "spread$SPREAD-$k" "$SPREAD"
  names+=("spread$SPREAD-$k")
done
if [ "$NOSPREAD" = 1 ]; then
  one_run "spread0-1" 0
  names+=("spread0-1")
fi

python3 - "$OUT" "${names[@]}" <<'PY' | tee "$OUT/summary.txt"
import json, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f"{out}/{n}.summary.json")) for n in names]
spread = [r for r in runs if r["spread_s"]]
base = [r for r in runs if not r["spread_s"]]
keys = ["b_max_rate_1s", "haproxy_to_b_max_rate_1s", "clients_reconnect_starts_max_1s", "b_mean_rate_active", "b_mean_rate_over_spread", "b_new_conns",
        "b_first_conn_after_drain_s", "b_last_conn_after_drain_s", "close_to_live_p50_ms",
        "close_to_live_p99_ms", "close_to_live_max_ms", "live_again", "not_live_at_end", "gaps_after_reconnect",
        "gaps_total", "duplicates_total", "reconnect_failures", "closes_1013", "refusals_retried",
        "a_exit_after_drain_s", "haproxy_sessions_to_a_after_drain", "placements_accepted",
        "versions_delivered", "versions_expected"]
def med(rs, k):
    v = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
    if not v:
        return "-"
    m = statistics.median(v)
    g = lambda x: str(int(x)) if float(x).is_integer() else f"{x:.4g}"
    return f"{g(m)} ({g(min(v))}-{g(max(v))})" if len(v) > 1 else g(m)
if spread:
    print(f"spread {spread[0]['spread_s']} s, {len(spread)} runs, N={spread[0]['clients']}: limit N/spread = {spread[0]['limit_per_s']:g}/s")
print(f"{'':34} {'spread (median, min-max)':>28} {'no spread':>12}")
for k in keys:
    print(f"{k:34} {med(spread, k):>28} {med(base, k):>12}")
for r in runs:
    print(f"{r['name']}: node A exit {r['a_exit_code']} after {r['a_exit_after_drain_s']} s; tester exit {r['tester_exit_code']} ok={r['tester_ok']} {r['tester_error'] or ''}")
if spread and base:
    ms, mb = statistics.median(r["b_max_rate_1s"] for r in spread), base[0]["b_max_rate_1s"]
    ps, pb = statistics.median(r["close_to_live_p99_ms"] for r in spread), base[0]["close_to_live_p99_ms"]
    print(f"B max rate: spread {ms:g}/s vs no spread {mb:g}/s (ratio {ms / mb if mb else float('nan'):.3f}); "
          f"close-to-live p99: spread {ps:g} ms vs no spread {pb:g} ms")
PY
