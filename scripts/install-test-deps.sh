#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, skipping what is already there:
# Debian's chromium (browser tests), haproxy (the load balancer tests/edge.rs puts in front of
# the nodes), systemd-analyze (tests/systemd_unit.rs checks the unit), ffmpeg (timelapse video
# and decoding), the npm packages of tests/web, and tansu (the Kafka-protocol broker the Kafka tests start on loopback; about 11
# minutes to build once).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "installing chromium (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
# Lints run with the tests (scripts/test.sh): clippy and rustfmt.
for tool in clippy rustfmt; do
  cmd=$([ "$tool" = clippy ] && echo "cargo clippy" || echo "cargo fmt")
  if ! $cmd --version >/dev/null 2>&1; then
    echo "installing $tool (rustup component add)" >&2
    rustup component add "$tool"
  fi
done
apt_missing=()
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || apt_missing+=(haproxy)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
# ffmpeg and ffprobe: the timelapse's MP4/WebM output and the tests that decode every format.
{ command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || apt_missing+=(ffmpeg)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing ${apt_missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing nodejs and npm (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d "$root/tests/web/node_modules/playwright-core" ]; then
  (cd "$root/tests/web" && npm ci --no-audit --no-fund)
fi
bash "$root/scripts/install-tansu.sh"
