#!/usr/bin/env bash
# The whole test suite: unit and integration tests (the real binary on loopback, the Kafka
# backend against a real tansu broker), then the web client's end-to-end tests in headless
# Chromium. Installs missing test dependencies first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo fmt --all --check
cargo build --workspace --all-targets --features kafka
# Lints are part of the tests: every warning (and every unsafe block without a SAFETY line) fails.
cargo clippy --workspace --all-targets --features kafka -- -D warnings
cargo test --workspace --features kafka
PLACECAST_BIN="$root/target/debug/placecast" bash tests/web/run.sh
