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
cat > "$work/tollgate.toml" <<EOF
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
[store]
kind = "redis"
url = "redis://127.0.0.1:$port"
pool_size = $((concurrency * 2))
[log]
level = "warn"
EOF
"$bin/tollgate" decision -c "$work/tollgate.toml" > "$work/decision.out" &
addr=$(wait_for "$work/decision.out")

echo "== tollgate decision over gRPC (Redis store): $concurrency callers, ${seconds}s"
"$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency "$concurrency" --duration "$seconds"

# The same script with the same shape of arguments: a fresh request id and record key, and
# fresh sorted-set members, per call.
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat crates/tollgate-limiter/lua/acquire.lua)")
echo "== redis-benchmark EVALSHA acquire.lua: $concurrency connections"
redis-benchmark -p "$port" -c "$concurrency" -n $((concurrency * 20000)) -r 1000000000 -q \
  EVALSHA "$sha" 3 'tollgate:{grant=bench}:req:__rand_int__' 'tollgate:{grant=bench}:bench/grant=bench' \
  'tollgate:{grant=bench}:live:bench' 'r__rand_int__' 60000 'm__rand_int__' 0 1000000 100000 1 100000
