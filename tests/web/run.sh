#!/usr/bin/env bash
# Installs what the web client's browser tests need (if missing) and runs them.
# Usage (from anywhere): bash tests/web/run.sh   -- expects target/debug/placecast to be built.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tests/web: node (>= 20) and npm are needed" >&2
  exit 1
fi
bin="${PLACECAST_BIN:-$root/target/debug/placecast}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build -p placecast)
fi
cd "$here"
if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
exec npm test --silent
