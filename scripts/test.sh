#!/usr/bin/env bash
# The whole test suite: unit and integration tests (the real binary on loopback), then the web
# client's end-to-end tests in headless Chromium. Installs missing test dependencies first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-test-deps.sh
cargo build --workspace --all-targets
cargo test --workspace
PLACECAST_BIN="$root/target/debug/placecast" bash tests/web/run.sh
