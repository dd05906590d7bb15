#!/usr/bin/env bash
# A fault run you can repeat (issue 9): on 127.0.0.1 only, one tansu broker, three placecast
# nodes on one single-partition topic and one node on the embedded file log; placing clients
# (HTTP) and WebSocket readers; seeded random SIGKILLs and restarts of the nodes and of the broker
# for the set time; then it stops the faults, lets everything converge and checks that nothing
# acknowledged was lost, that every reader's versions were contiguous and that the Kafka nodes
# are byte-identical. Prints a summary; exits 1 on any violation, 2 if the harness itself failed,
# 130 if interrupted. The clients and checks are chaos/chaos.py (Python 3, standard library).
#
#   scripts/chaos.sh [--minutes M] [--seed S] [--keep] [chaos.py options]
#
#   --minutes M   how long the faults go on (default 2; fractions allowed); the whole run takes
#                 about M + 1 minutes and is cut off by `timeout` at M + 15 minutes
#   --seed S      the seed of the fault schedule and of the clients (default: random, printed);
#                 the same seed gives the same sequence of kills, intervals and placements
#   --keep        keep the run directory (logs, data) even when the run passes
#   other options go to chaos/chaos.py: --kafka-nodes N (3), --placers N (4), --file-placers N (1),
#                 --readers N (20), --range PIXELS (16384), --file-range PIXELS (262144),
#                 --shards N (2)
#
# Binaries: PLACECAST_BIN, else target/release/placecast if it is newer than src/, else
# target/debug/placecast if it is, else it builds `cargo build --release -p placecast`. The chosen
# binary is copied into the run directory first, so a rebuild during the run changes nothing.
# tansu: TANSU, else PATH, else ~/.cargo/bin/tansu (scripts/install-tansu.sh installs it).
#
# Every process is started by chaos.py in its own session and recorded in RUN/pids; chaos.py
# kills them by PID at the end. On Ctrl-C or SIGTERM this script forwards SIGTERM to chaos.py,
# then kills by PID whatever is still listed in RUN/pids (only if the process's command line or
# working directory is inside RUN).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

minutes=2
seed=""
keep=0
extra=()
while (($#)); do
    case "$1" in
        --minutes) minutes="${2:?--minutes needs a value}"; shift 2 ;;
        --minutes=*) minutes="${1#*=}"; shift ;;
        --seed) seed="${2:?--seed needs a value}"; shift 2 ;;
        --seed=*) seed="${1#*=}"; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done
[[ "$minutes" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "chaos.sh: --minutes must be a number, got '$minutes'" >&2; exit 2; }
[[ -z "$seed" ]] && seed=$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 ))
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "chaos.sh: --seed must be a whole number, got '$seed'" >&2; exit 2; }

fresh() { # the binary exists and nothing in src/ or the manifests is newer
    [[ -x "$1" ]] && [[ -z "$(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -newer "$1" -print -quit)" ]]
}
if [[ -n "${PLACECAST_BIN:-}" ]]; then
    bin="$PLACECAST_BIN"
elif fresh "$root/target/release/placecast"; then
    bin="$root/target/release/placecast"
elif fresh "$root/target/debug/placecast"; then
    bin="$root/target/debug/placecast"
else
    echo "chaos.sh: no placecast binary newer than src/; building the release binary (several minutes)"
    (cd "$root" && cargo build --release -p placecast)
    bin="$root/target/release/placecast"
fi
[[ -x "$bin" ]] || { echo "chaos.sh: $bin is not an executable" >&2; exit 2; }

tansu="${TANSU:-$(command -v tansu || true)}"
[[ -z "$tansu" && -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]] && tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
[[ -n "$tansu" && -x "$tansu" ]] || { echo "chaos.sh: tansu not found; install it with scripts/install-tansu.sh" >&2; exit 2; }
command -v python3 >/dev/null || { echo "chaos.sh: python3 is needed" >&2; exit 2; }

run="$(mktemp -d "${TMPDIR:-/tmp}/placecast-chaos.XXXXXX")"
cp "$bin" "$run/placecast"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
echo "placecast chaos: --minutes $minutes --seed $seed"
echo "binary: $bin (built $(date -r "$bin" '+%F %T'), sha256 $(sha256sum "$run/placecast" | cut -c1-16)), commit $commit$([[ $dirty != 0 ]] && echo " + $dirty uncommitted files in src/ or the manifests")"
echo "tansu: $tansu; machine: $(nproc) cores, $(uname -sr); run dir: $run"

pid=""
cleanup() {
    local rc=$1
    trap - INT TERM HUP EXIT
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true # timeout forwards it to chaos.py
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    # Whatever chaos.py started and did not reap (it was killed itself): by PID, only our own.
    if [[ -f "$run/pids" ]]; then
        while read -r p name; do
            [[ "$p" =~ ^[0-9]+$ ]] || continue
            [[ -d "/proc/$p" ]] || continue
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$run" \
                || [[ "$(readlink "/proc/$p/cwd" 2>/dev/null)" == "$run"* ]]; then
                echo "chaos.sh: killing leftover $name (pid $p)"
                kill -KILL "$p" 2>/dev/null || true
            fi
        done <"$run/pids"
    fi
    if [[ $rc -eq 0 && $keep -eq 0 ]]; then
        rm -rf "$run"
    else
        echo "chaos.sh: logs and data kept in $run"
    fi
    exit "$rc"
}
trap 'cleanup 130' INT
trap 'cleanup 143' TERM HUP

cap=$(python3 -c "import math; print(math.ceil(float('$minutes') * 60) + 900)")
timeout --signal=TERM --kill-after=20 "$cap" \
    python3 -u "$root/chaos/chaos.py" --minutes "$minutes" --seed "$seed" --run-dir "$run" \
    --placecast "$run/placecast" --tansu "$tansu" ${extra[@]+"${extra[@]}"} &
pid=$!
rc=0
wait "$pid" || rc=$?
pid=""
[[ $rc -eq 124 ]] && echo "chaos.sh: cut off after $cap s" >&2
cleanup "$rc"
