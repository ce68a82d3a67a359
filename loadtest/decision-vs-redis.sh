#!/usr/bin/env bash
# Decisions per second of the decision service (gRPC, Redis store) against Redis alone running
# the same Lua script (redis-benchmark EVALSHA of crates/tollgate-limiter/lua/acquire.lua), at
# the same concurrency, in one run. Starts its own redis-server and decision service on
# loopback ports and stops them at the end.
#
# Usage: loadtest/decision-vs-redis.sh [CONCURRENCY=16] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-10}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_redis
port=$redis_port

# One counter per call, 1 s window, a limit that never refuses: every call takes the write path.
cat > "$work/policy.json" <<'EOF'
{"version": "1", "default": "deny",
 "tools": {"bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
EOF
write_decision "$work/tollgate.toml" "pool_size = $((concurrency * 2))"
"$bin/tollgate" decision -c "$work/tollgate.toml" > "$work/decision.out" &
addr=$(wait_for "$work/decision.out")

# Commands Redis ran per read from its sockets: 1 when every script came in a write of its
# own, more when the decision service pipelined them.
redis_reads() {
  redis-cli -p "$port" INFO stats | tr -d '\r' | awk -F: '/^total_reads_processed/ {print $2}'
}
redis_calls() {
  redis-cli -p "$port" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_evalsha/ {print $2}'
}
per_read() {
  local reads0=$1 calls0=$2 reads1 calls1
  reads1=$(redis_reads); calls1=$(redis_calls)
  awk -v r=$((reads1 - reads0)) -v c=$((${calls1:-0} - ${calls0:-0})) \
    'BEGIN { if (r > 0) printf "redis: %d scripts in %d socket reads, %.2f scripts per read\n", c, r, c / r }'
}

for mode in unary batched; do
  batch_max=0
  [ "$mode" = batched ] && batch_max=256
  echo "== tollgate decision over gRPC (Redis store), $mode: $concurrency callers, ${seconds}s"
  reads0=$(redis_reads); calls0=$(redis_calls)
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency "$concurrency" --duration "$seconds" \
    --batch-max "$batch_max"
  per_read "$reads0" "$calls0"
done

# The same script with the same shape of arguments: a fresh request id (a new request record)
# and fresh sorted-set members, per call.
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat crates/tollgate-limiter/lua/acquire.lua)")
for pipeline in 1 16; do
  echo "== redis-benchmark EVALSHA acquire.lua: $concurrency connections, pipeline $pipeline"
  redis-benchmark -p "$port" -c "$concurrency" -P "$pipeline" -n $((seconds * (pipeline > 1 ? 60000 : 40000))) \
    -r 1000000000 -q \
    EVALSHA "$sha" 4 'tollgate:{grant=bench}:reqs' 'tollgate:{grant=bench}:reqs:expire' 'tollgate:{grant=bench}:bench/grant=bench' \
    'tollgate:{grant=bench}:live:bench' 'r__rand_int__' 60000 'm__rand_int__' 0 1000000 100000 1 100000 \
    | tr '\r' '\n' | grep 'requests per second' | sed 's/^.*: \([0-9.]* requests per second\)/\1/'
done
