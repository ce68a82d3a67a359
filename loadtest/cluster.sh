#!/usr/bin/env bash
# A whole Tollgate cluster on loopback under load: starts redis-server, the demo upstream,
# K decision replicas on that Redis and M edges over the replicas (free ports), runs a
# scenario through all edges with the exactness check, and stops everything at the end.
#
# Usage: loadtest/cluster.sh [K=2] [M=3] [SECONDS=10] [CONCURRENCY=32]
# With REDIS_CLUSTER=1 the counters live in a 6-node Redis Cluster (3 primaries) instead;
# POLICY=FILE replaces examples/policy.json (e.g. loadtest/scenarios/counted-policy.json, where
# every call is admitted and counted). Prints each component's CPU seconds during the run and
# the calls it served per CPU second: the figures of the sizing table in BENCHMARKS.md.
# Exit status 2 when a window admitted more than its limit.
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-2}
edges=${2:-3}
seconds=${3:-10}
concurrency=${4:-32}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
if [ "${REDIS_CLUSTER:-0}" = 1 ]; then
  start_redis_cluster
else
  start_redis
fi

"$bin/tollgate" demo-upstream --listen 127.0.0.1:0 > "$work/upstream.out" 2>&1 &
upstream_pid=$!
upstream=$(wait_for "$work/upstream.out")/mcp

cp "${POLICY:-examples/policy.json}" "$work/policy.json"
key_hash=$(printf %s tg_demo_key | sha256sum | cut -d' ' -f1)
config() { # $1: edge.decision list
  cat <<EOF
[edge]
listen = "127.0.0.1:0"
decision = [$1]
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
[store]
kind = "redis"
$redis_store
[log]
level = "warn"
[[upstreams]]
name = "k8s"
url = "$upstream"
[[grants]]
name = "demo"
key_sha256 = "$key_hash"
EOF
}
config "" > "$work/decision.toml"
decisions=()
for i in $(seq 1 "$replicas"); do
  "$bin/tollgate" decision -c "$work/decision.toml" > "$work/decision-$i.out" 2>&1 &
  decision_pids+=($!)
  decisions+=("\"$(wait_for "$work/decision-$i.out")\"")
done
config "$(IFS=,; echo "${decisions[*]}")" > "$work/edge.toml"
edge_urls=()
for i in $(seq 1 "$edges"); do
  "$bin/tollgate" edge -c "$work/edge.toml" > "$work/edge-$i.out" 2>&1 &
  edge_pids+=($!)
  edge_urls+=("\"$(wait_for "$work/edge-$i.out")/mcp/k8s\"")
done

cat > "$work/scenario.toml" <<EOF
edges = [$(IFS=,; echo "${edge_urls[*]}")]
upstream = "$upstream"
[load]
mode = "closed"
concurrency = $concurrency
duration_s = $seconds
[[grants]]
name = "demo"
key = "tg_demo_key"
[[calls]]
tool = "k8s_rollout_pause"
arguments = { namespace = "default", name = "web" }
weight = 3
[[calls]]
tool = "k8s_get_pods"
arguments = { namespace = "default" }
EOF
store_name="1 Redis"
[ "${REDIS_CLUSTER:-0}" = 1 ] && store_name="a 6-node Redis Cluster"
echo "== $edges edges x $replicas decision replicas x $store_name, $concurrency clients, ${seconds}s (policy: ${POLICY:-examples/policy.json})"
before=("$(cpu_seconds "${edge_pids[@]}")" "$(cpu_seconds "${decision_pids[@]}")" "$(cpu_seconds "${redis_pids[@]}")" "$(cpu_seconds "$upstream_pid")")
status=0
"$bin/tollgate-loadtest" mcp "$work/scenario.toml" --policy "$work/policy.json" --json "$work/result.json" || status=$?
after=("$(cpu_seconds "${edge_pids[@]}")" "$(cpu_seconds "${decision_pids[@]}")" "$(cpu_seconds "${redis_pids[@]}")" "$(cpu_seconds "$upstream_pid")")
calls=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][-1]["requests"])' "$work/result.json" 2>/dev/null || echo 0)
names=("edges" "decision replicas" "redis" "demo upstream")
for i in 0 1 2 3; do
  awk -v name="${names[$i]}" -v a="${before[$i]}" -v b="${after[$i]}" -v n="$calls" \
    'BEGIN { cpu = b - a; printf "cpu: %-17s %6.2f s", name, cpu; if (cpu > 0) printf "  (%.0f calls per CPU second)", n / cpu; printf "\n" }'
done
exit "$status"
