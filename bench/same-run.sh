#!/usr/bin/env bash
# Servers side by side in the same rounds: the interleaved runs behind bench/RESULTS.md's
# "Beside uWebSockets in the same run" (until this script, they lived in a session's /tmp).
#
#   bench/same-run.sh fanout ROUNDS NAME=SERVER [NAME=SERVER ...]
#   bench/same-run.sh place  ROUNDS NAME=SERVER [NAME=SERVER ...]
#
# SERVER is a placecast binary, or a placecast-uws binary (bench/peers/uws/build.sh; its name
# must end in placecast-uws; `fanout` only). Every run gets a fresh server and data directory,
# the server on CPU 0 and the tester on CPU 1; the order of the servers rotates each round.
# - fanout: 1,000 clients, 1,000 HTTP placements/s for 20 s, 16-byte edits. Prints the server's
#   CPU per delivered frame and, for placecast, each thread's share of it over 10 s mid-run.
# - place: no clients, 1,000 HTTP placements/s for 10 s. Prints the process's CPU per accepted
#   placement and each thread's over 6 s mid-run (10 ms ticks: about 1.7 us of resolution).
# At the end: each server's median and its per-round ratio to the first server named.
#
# Environment: LOAD (default target/release/placecast-load), DATAROOT (where data directories
# go, default /var/tmp: the disk; /dev/shm takes the flush out), EXTRA (more `placecast serve`
# flags), OUT (result files, default a new directory under /tmp). Loopback only; each run is
# bounded (20 s of load) and its server is ended by its PID.
set -euo pipefail
usage() { sed -n '4,7p' "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
scenario=$1; rounds=$2; shift 2
case $scenario in fanout | place) ;; *) usage ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
load=${LOAD:-$root/target/release/placecast-load}
dataroot=${DATAROOT:-/var/tmp}
out=${OUT:-$(mktemp -d /tmp/same-run.XXXX)}
mkdir -p "$out"
names=(); bins=()
for a in "$@"; do
    names+=("${a%%=*}"); bins+=("${a#*=}")
    [ -x "${a#*=}" ] || { echo "not an executable: ${a#*=}" >&2; exit 2; }
done
[ -x "$load" ] || { echo "no tester at $load (cargo build --release -p placecast-load)" >&2; exit 2; }

# A free port below the default ephemeral range (32768-60999), so no outgoing connection holds it.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 10000))
        ss -Htan "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}

# Each thread's CPU ticks, by thread name.
threads() { for t in /proc/"$1"/task/*; do echo "$(tr ' ' _ < "$t"/comm) $(cut -d' ' -f14,15 "$t"/stat)"; done; }
thread_share() { # before after per (us of CPU in one 10 ms tick, divided by the run's frames or placements)
    python3 - "$1" "$2" "$3" <<'PY'
import collections, sys
def read(f):
    d = collections.Counter()
    for line in open(f):
        name, u, s = line.split()
        d[name] += int(u) + int(s)
    return d
a, b, per = read(sys.argv[1]), read(sys.argv[2]), float(sys.argv[3])
print(" ".join(f"{k}={(b[k] - a[k]) * per:.2f}" for k in sorted(b) if b[k] > a[k]))
PY
}

one_run() { # name bin tag
    local name=$1 bin=$2 tag=$3 port dir spid lpid figure per
    port=$(free_port)
    dir=$(mktemp -d "$dataroot/same-run.XXXX")
    if [[ $bin == *placecast-uws ]]; then
        [ "$scenario" = fanout ] || { echo "$name: placecast-uws takes fanout only" >&2; exit 2; }
        taskset -c 0 "$bin" --edit-stride 16 --listen 127.0.0.1:"$port" > "$dir/server.log" 2>&1 &
    else
        local stride=(); [ "$scenario" = fanout ] && stride=(--edit-stride 16)
        # shellcheck disable=SC2086
        taskset -c 0 "$bin" serve --listen 127.0.0.1:"$port" --data-dir "$dir" --shards 1 --cooldown 0 "${stride[@]}" \
            --max-conns-per-addr 0 --sessions-per-min 0 --placements-per-addr-per-min 0 \
            --catchups-per-addr-per-min 0 ${EXTRA:-} > "$dir/server.log" 2>&1 &
    fi
    spid=$!
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
    if [ "$scenario" = fanout ]; then
        taskset -c 1 "$load" fanout --target 127.0.0.1:"$port" -n 1000 --rate 1000 --duration 20 --driver-conns 32 \
            --users 32 --driver-via http --server-pid "$spid" --json "$out/$tag.json" > /dev/null 2> "$out/$tag.err" &
        lpid=$!
        # 10 s of 1,000 clients x 10 frames/s = 100,000 frames; a tick is 10,000 us.
        sleep 8; threads "$spid" > "$dir/a"; sleep 10; threads "$spid" > "$dir/b"
        wait "$lpid" || true
        figure=cpu_us_per_delivered_frame; per=0.1
    else
        taskset -c 1 "$load" place --target 127.0.0.1:"$port" --users 1000 --conns 32 --rate 1000 --duration 10 \
            --server-pid "$spid" --json "$out/$tag.json" > /dev/null 2> "$out/$tag.err" &
        lpid=$!
        # 6 s of 1,000 placements/s = 6,000 placements.
        sleep 2; threads "$spid" > "$dir/a"; sleep 6; threads "$spid" > "$dir/b"
        wait "$lpid" || true
        figure=cpu_us_per_accepted_placement; per=1.6667
    fi
    kill -KILL "$spid"; wait "$spid" 2> /dev/null || true
    local value
    value=$(python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get('server',{}).get(sys.argv[2]); print('%.2f'%v if v else 'none')" "$out/$tag.json" "$figure")
    echo "$tag $name $value $(thread_share "$dir/a" "$dir/b" "$per")" | tee -a "$out/runs.txt"
    rm -rf "$dir"
}

echo "results in $out ($scenario, $rounds rounds: ${names[*]})" >&2
n=${#names[@]}
for r in $(seq 1 "$rounds"); do
    for k in $(seq 0 $((n - 1))); do
        i=$(((k + r - 1) % n))
        one_run "${names[$i]}" "${bins[$i]}" "r$r-${names[$i]}"
    done
done
python3 - "$out/runs.txt" "${names[@]}" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    tag, name, value = line.split()[:3]
    if value != "none":
        rows[tag.split("-")[0]][name] = float(value)
names = sys.argv[2:]
for name in names:
    v = [r[name] for r in rows.values() if name in r]
    if v:
        print(f"{name}: median {statistics.median(v):.2f} us over {len(v)} runs")
for name in names[1:]:
    ratios = [r[name] / r[names[0]] for r in rows.values() if name in r and names[0] in r]
    if ratios:
        print(f"{name} / {names[0]}: per-round median {statistics.median(ratios):.3f} ({', '.join(f'{x:.2f}' for x in ratios)})")
PY
