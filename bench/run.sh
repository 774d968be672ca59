#!/usr/bin/env bash
# Builds keybroker and the benchmark in release mode and runs it. Figures: stdout (Markdown) and
# target/bench/proxy.json. BENCH_SECONDS sets the length of each timed phase (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p keybroker --bin keybroker
cargo build --release -p keybroker-bench
KEYBROKER_BIN=target/release/keybroker exec target/release/proxy-bench
