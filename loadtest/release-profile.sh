#!/usr/bin/env bash
# Whether the release profile pays: `tollgate up` forwarding (memory store, one counter) and
# `tollgate decision` deciding on Redis (batched stream, 64 callers), built with `release`
# (thin LTO, one codegen unit) and with `release-plain` (Cargo's default release settings),
# alternating, the same client and upstream. Also each binary's size and time to its
# "listening" line.
#
# Usage: loadtest/release-profile.sh [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-2}
concurrency=16
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
cargo build --profile release-plain --quiet -p tollgate
start_redis

start_upstream
cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"k8s_list_namespaces": {"limits": [{"counter": "ns", "window": "1s", "max": 100000}]},
           "bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
JSON

for profile in release-plain release; do
  echo "binary $profile: $(du -k "target/$profile/tollgate" | cut -f1) KiB"
done

run_up() { # $1: profile
  local port up started
  port=$(free_port)
  write_up "$work/up.toml" "$port" "$upstream_port"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  started=$(date +%s%N)
  "target/$1/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  up=$!
  wait_for "$work/up.out" > /dev/null
  echo "-- tollgate up ($1), ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep "^gateway"
  kill "$up"; wait "$up" 2>/dev/null || true
}

run_decision() { # $1: profile
  local pid addr
  write_decision "$work/decision.toml" "key_prefix = \"$1-$RANDOM\""
  "target/$1/tollgate" decision -c "$work/decision.toml" > "$work/decision.out" 2>&1 &
  pid=$!
  addr=$(wait_for "$work/decision.out")
  echo "-- tollgate decision ($1), Redis, batched, 64 callers"
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency 64 --duration "$seconds"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for _ in $(seq "$rounds"); do
  for profile in release-plain release; do
    run_up "$profile"
    run_decision "$profile"
  done
done
