#!/usr/bin/env bash
# Installs tansu, the Kafka-protocol broker the Kafka tests start on loopback
# (`cargo test --features kafka --test kafka`). Idempotent: does nothing if `tansu` is already on
# PATH or in ~/.cargo/bin. Building it takes about 11 minutes on 2 cores. The libsql feature is
# required: the tests store the topic in a sqlite file (tansu's default build fails at start).
set -euo pipefail
if command -v tansu >/dev/null 2>&1; then
    echo "tansu already installed: $(command -v tansu)"
    exit 0
fi
if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    echo "tansu already installed: ${CARGO_HOME:-$HOME/.cargo}/bin/tansu (add it to PATH)"
    exit 0
fi
cargo install tansu --version 0.6.0 --locked --features libsql
