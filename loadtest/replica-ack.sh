#!/usr/bin/env bash
# Replica-acknowledged admissions (store.replica_ack, issue 30): decisions per second of the
# decision service over gRPC, batched (the edge's way), on a Redis master with one replica,
# with replica_ack = 0 and = 1 alternating, in one run. Every call is admitted (a limit that
# never refuses), so every decision with replica_ack = 1 waits for a WAIT. Starts its own
# redis-servers (master and replica) and decision services on loopback ports.
#
# Usage: loadtest/replica-ack.sh [CONCURRENCY=64] [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-64}
seconds=${2:-8}
rounds=${3:-2}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_redis
replica_port=$(free_port)
redis-server --port "$replica_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --replicaof 127.0.0.1 "$redis_port" >/dev/null &
until redis-cli -p "$replica_port" INFO replication 2>/dev/null | grep -q master_link_status:up; do sleep 0.1; done
# The master streams writes once the replica has acknowledged the sync (about a second).
redis-cli -p "$redis_port" SET probe 1 >/dev/null
until [ "$(redis-cli -p "$replica_port" GET probe 2>/dev/null)" = 1 ]; do sleep 0.1; done

cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
JSON

run() { # $1: replica_ack
  write_decision "$work/tollgate.toml" "pool_size = 16
replica_ack = $1
replica_ack_timeout_ms = 100"
  "$bin/tollgate" decision -c "$work/tollgate.toml" > "$work/decision.out" 2>&1 &
  local pid=$! addr
  addr=$(wait_for "$work/decision.out")
  echo "== replica_ack = $1: $concurrency callers, batched, ${seconds}s"
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency "$concurrency" --duration "$seconds" \
    --batch-max 256
  echo "redis: $(redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | grep -E '^cmdstat_(wait|evalsha):' | tr '\n' ' ')"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
}

for _ in $(seq "$rounds"); do
  run 0
  run 1
done
