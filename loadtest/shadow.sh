#!/usr/bin/env bash
# Decisions with a candidate (shadow) policy against without, in one run: `tollgate decision`
# on Redis answering unary gRPC Decide calls (tollgate-loadtest decide), with
#   none     no candidate;
#   lowered  a candidate that lowers the limit on the same counter (answered from the live
#            decision's own store answer: no extra round trip);
#   read     a candidate that limits the tool on another counter the live policy counts (read
#            from Redis on every decision: one more script run, nothing written).
# Modes alternate each round; each round reports decisions per second and per CPU second of
# the decision service (Redis's CPU apart).
#
# Usage: loadtest/shadow.sh [CONCURRENCY=16] [SECONDS=8] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-8}
rounds=${3:-3}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_redis

# Limits that never refuse: every call takes the write path.
cat > "$work/policy.json" <<'EOF'
{"version": "1", "default": "deny",
 "tools": {"bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]},
           "other": {"limits": [{"counter": "other", "window": "1s", "max": 100000}]}}}
EOF
cat > "$work/lowered.json" <<'EOF'
{"version": "1", "default": "deny",
 "tools": {"bench": {"limits": [{"counter": "bench", "window": "1s", "max": 50000}]}}}
EOF
cat > "$work/read.json" <<'EOF'
{"version": "1", "default": "deny",
 "tools": {"bench": {"limits": [{"counter": "other", "window": "1s", "max": 100000}]}}}
EOF

# EVALSHA calls Redis ran so far.
redis_calls() {
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_evalsha/ {print $2}'
}

run() { # $1: none | lowered | read
  local shadow=""
  [ "$1" != none ] && shadow="shadow_policy = \"$1.json\""
  cat > "$work/tollgate.toml" <<TOML
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
$shadow
[store]
kind = "redis"
$redis_store
pool_size = $((concurrency * 2))
[log]
level = "warn"
TOML
  "$bin/tollgate" decision -c "$work/tollgate.toml" > "$work/decision.out" &
  local pid=$! addr
  addr=$(wait_for "$work/decision.out")
  local before after calls0
  calls0=$(redis_calls)
  before=$(cpu_seconds "$pid")
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency "$concurrency" --duration "$seconds" \
    --batch-max 0 > "$work/run.log"
  after=$(cpu_seconds "$pid")
  local scripts=$(( $(redis_calls) - calls0 ))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # "decisions N in T s: R decisions/s, admitted A, errors E, p50 …, p99 …"
  awk -v m="$1" -v a="$before" -v b="$after" -v s="$scripts" '/^decisions / {
      n = $2; t = $4; r = $6; c = b - a
      printf "%-8s %9.0f decisions/s  %6.2f CPU s  %9.0f decisions per CPU second  %.2f Redis scripts per decision  (%s\n", m, r, c, (c > 0 ? n / c : 0), (n > 0 ? s / n : 0), substr($0, index($0, "admitted"))
    }' "$work/run.log"
  grep -q "errors 0," "$work/run.log" || { echo "errors in $1:"; cat "$work/run.log"; }
}

for round in $(seq 1 "$rounds"); do
  echo "== round $round"
  for mode in none lowered read; do
    run "$mode"
  done
done
