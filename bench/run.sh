#!/usr/bin/env bash
# keybroker side by side with nginx and with the upstream called directly.
#
#   bench/run.sh           full run, about 11 minutes (plus the first release build)
#   bench/run.sh --quick   smoke run, about 2 minutes
#   --postgres             adds the PostgreSQL arms (one keybroker on PostgreSQL; two on one
#                          database behind nginx as a balancer): about 6 more minutes in full mode
#   --arms A,B             only these arms, plus the direct one (direct, nginx, keybroker_1w,
#                          keybroker_default, keybroker_pg_1, keybroker_pg_2): for narrowed runs
#
# With --postgres, installs Debian's postgresql if its server binaries are missing (the harness
# runs its own throwaway cluster, never the packaged service) and counts statements per call with
# pg_stat_statements. Builds into $CARGO_TARGET_DIR when it is set (target/ otherwise).
#
# Installs what is missing: nginx (Debian's package, via apt; never started as a service) and the
# load generator oha (a Rust crate: `cargo install --locked` into target/bench/tools). Builds
# keybroker and the harness in release mode, then runs the harness (bench/src), which starts the
# upstream, nginx and keybroker itself on loopback, pinned with taskset where the machine has
# two cores or more. Figures: target/bench/results.md (also printed) and target/bench/results.json.
#
# Why oha and not wrk: the fixed-rate phases must be open loop (requests sent on schedule
# whatever the server does) with latency counted from when each request was due; oha does that
# with `-q --latency-correction`, wrk has no fixed-rate mode at all.
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
TARGET=${CARGO_TARGET_DIR:-target}
TOOLS=$TARGET/bench/tools

flags=()
postgres=
for arg in "$@"; do
    case "$arg" in
        --quick) flags+=(--quick) ;;
        --postgres) flags+=(--postgres); postgres=1 ;;
        --arms=*) flags+=(--arms "${arg#--arms=}") ;;
        *) echo "usage: bench/run.sh [--quick] [--postgres] [--arms=NAME,...]" >&2; exit 2 ;;
    esac
done

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

nginx_bin=$(command -v nginx || true)
[ -z "$nginx_bin" ] && [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx
if [ -z "$nginx_bin" ]; then
    echo "installing nginx (Debian package)" >&2
    as_root apt-get update -qq
    # policy-rc.d-less machines would start the packaged service: stop it again, the benchmark
    # runs its own nginx with its own config.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
    as_root service nginx stop >/dev/null 2>&1 || true
    nginx_bin=/usr/sbin/nginx
fi

if [ -n "$postgres" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing postgresql (Debian package)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # The packaged cluster is not used: the harness starts its own.
    as_root service postgresql stop >/dev/null 2>&1 || true
fi

oha_bin="$TOOLS/bin/oha"
if ! [ -x "$oha_bin" ] || ! "$oha_bin" --version | grep -q "$OHA_VERSION"; then
    echo "installing oha $OHA_VERSION into $TOOLS" >&2
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
fi

command -v taskset >/dev/null || echo "taskset not found: nothing will be pinned" >&2

cargo build --release -p keybroker -p keybroker-bench --bins

# 512 streams through a proxy are over 1,000 sockets in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$TARGET/release/proxy-bench" "${flags[@]}" \
    --oha "$oha_bin" --nginx "$nginx_bin" --keybroker "$TARGET/release/keybroker" --out "$TARGET/bench"
