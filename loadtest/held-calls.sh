#!/usr/bin/env bash
# Memory per call held for approval: N calls that each need their own approval, held open
# at once, through `tollgate up` (memory store) and through a split edge + decision service
# on Redis; prints each process's resident memory before and while the calls are held.
# Starts its own processes on free loopback ports and stops them at the end.
#
# Usage: loadtest/held-calls.sh [CALLS=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-1000}
# Each held call is a client and a server socket on this machine.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
start_redis

"$bin/tollgate" demo-upstream --listen 127.0.0.1:0 > "$work/upstream.out" 2>&1 &
upstream=$(wait_for "$work/upstream.out")/mcp
cat > "$work/policy.json" <<'EOF'
{"version": "1", "default": "deny",
 "tools": {"k8s_scale": {"action": "require_approval", "approval": {"timeout": "10m", "hold": "5m"}}}}
EOF
key_hash=$(printf %s tg_demo_key | sha256sum | cut -d' ' -f1)
config() { # $1: edge.decision list, $2: store section
  cat <<EOF
[edge]
listen = "127.0.0.1:0"
decision = [$1]
max_connections = $((calls * 2 + 64))
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
max_connections = $((calls * 2 + 64))
$2
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

echo "== tollgate up (memory store): $calls held calls"
config "" "[store]
kind = \"memory\"" > "$work/up.toml"
"$bin/tollgate" up -c "$work/up.toml" > "$work/up.out" 2>&1 &
up_pid=$!
up=$(wait_for "$work/up.out")
"$bin/tollgate-loadtest" held --url "$up/mcp/k8s" --key tg_demo_key --calls "$calls" --pid "$up_pid"
kill "$up_pid"

echo "== tollgate edge + tollgate decision (Redis store): $calls held calls"
store="[store]
kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
config "" "$store" > "$work/decision.toml"
"$bin/tollgate" decision -c "$work/decision.toml" > "$work/decision.out" 2>&1 &
decision_pid=$!
decision=$(wait_for "$work/decision.out")
config "\"$decision\"" "$store" > "$work/edge.toml"
"$bin/tollgate" edge -c "$work/edge.toml" > "$work/edge.out" 2>&1 &
edge_pid=$!
edge=$(wait_for "$work/edge.out")
redis_before=$(redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
"$bin/tollgate-loadtest" held --url "$edge/mcp/k8s" --key tg_demo_key --calls "$calls" \
  --pid "$edge_pid" --pid "$decision_pid"
redis_after=$(redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
echo "redis used_memory grew by $(( (redis_after - redis_before) / calls )) bytes per approval record"
echo "(process $edge_pid is the edge, $decision_pid the decision service)"
