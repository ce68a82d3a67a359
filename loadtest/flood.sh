#!/usr/bin/env bash
# An over-limit flood against a decision service on Redis: admitted decisions per second
# (a limit that never refuses: every call runs the script), then refused decisions per second
# (one grant against a full sliding_log counter: after the first refusal the replica refuses
# by itself until the counter has room), and the Redis commands run during the flood
# (INFO commandstats), and decisions per CPU second of the replica and Redis together (the
# server side's cost, without the load generator that shares the cores). Then the same flood
# with decision.full_cache_entries = 0 (every call asks Redis), for comparison. Starts its own
# processes on loopback ports.
#
# Usage: loadtest/flood.sh [CONCURRENCY=16] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-10}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_redis
port=$redis_port

cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {
   "open": {"limits": [{"counter": "open", "window": "1s", "max": 100000}]},
   "flood": {"limits": [{"counter": "flood", "window": "1h", "max": 10}]}
 }}
JSON
start_decision() { # $1: name, $2: full_cache_entries
  cat > "$work/$1.toml" <<TOML
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
full_cache_entries = $2
[store]
kind = "redis"
url = "redis://127.0.0.1:$port"
key_prefix = "$1"
pool_size = $((concurrency * 2))
[log]
level = "warn"
TOML
  "$bin/tollgate" decision -c "$work/$1.toml" > "$work/$1.out" 2>&1 &
  pids[$1]=$!
}
declare -A pids
scripts() { redis-cli -p "$port" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p'; }
flood() { # $1: decision address, $2: tool, $3: label, $4: the replica's name
  local before after cpu_before cpu_after decisions
  before=$(scripts || echo 0); before=${before:-0}
  cpu_before=$(cpu_seconds "${pids[$4]}" "${redis_pids[@]}")
  "$bin/tollgate-loadtest" decide --url "$1" --tool "$2" --concurrency "$concurrency" --duration "$seconds" > "$work/run.log"
  cpu_after=$(cpu_seconds "${pids[$4]}" "${redis_pids[@]}")
  after=$(scripts); after=${after:-0}
  echo "-- $3"
  cat "$work/run.log"
  echo "Redis EVALSHA during the run: $((after - before))"
  # The server side's cost, without the load generator sharing the cores: decisions per CPU
  # second of the replica and Redis together.
  decisions=$(sed -n 's/^decisions \([0-9]*\) in.*/\1/p' "$work/run.log")
  awk -v d="${decisions:-0}" -v a="$cpu_before" -v b="$cpu_after" \
    'BEGIN { c = b - a; printf "replica + Redis CPU: %.2f s, %.0f decisions per CPU second\n", c, (c > 0 ? d / c : 0) }'
}

start_decision cached 100000
start_decision uncached 0
cached=$(wait_for "$work/cached.out")
uncached=$(wait_for "$work/uncached.out")
flood "$cached" open "admitted: a limit that never refuses" cached
flood "$cached" flood "refused: one grant against a full sliding_log counter (full-until cache on)" cached
flood "$uncached" flood "refused: the same flood, cache off (decision.full_cache_entries = 0)" uncached
