#!/usr/bin/env bash
# The long fault drills (issue 9), run by hand; results go in bench/DRILLS.md.
#   bench/drills/run.sh short   # slowloris and login-storm latency ratios (a few minutes)
#   bench/drills/run.sh soak    # SOAK_MINUTES (default 10) at RATE calls/s: RSS, descriptors, errors
# Knobs: RATE (50), DRILL_SECONDS (10), SLOW_HEADS (1000), SLOW_BODIES (200), STORM_CONCURRENCY (32).
# Markdown on stdout; figures in target/bench/drills-<which>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p keybroker --bin keybroker
cargo build --release -p keybroker-bench --bin proxy-drills
KEYBROKER_BIN=target/release/keybroker exec target/release/proxy-drills "${1:-short}"
