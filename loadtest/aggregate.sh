#!/usr/bin/env bash
# The aggregated endpoint's cost: tools/list through /mcp over 3 upstreams against
# /mcp/k8s (one upstream), with one client (latency) and 16 (throughput), and tools/call
# through /mcp against /mcp/k8s, all in one run of `tollgate up` in front of three demo
# upstreams. Alternates the endpoints twice.
# Starts its own processes on free loopback ports and stops them at the end.
#
# Usage: loadtest/aggregate.sh [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh

upstreams=""
for name in k8s k8s2 k8s3; do
  "$bin/tollgate" demo-upstream --listen 127.0.0.1:0 > "$work/$name.out" 2>&1 &
  upstreams+="[[upstreams]]
name = \"$name\"
url = \"$(wait_for "$work/$name.out")/mcp\"
"
done
cp loadtest/scenarios/allow-policy.json "$work/policy.json"
cat > "$work/tollgate.toml" <<TOML
[edge]
listen = "127.0.0.1:0"
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
[log]
level = "warn"
[[grants]]
name = "demo"
key_sha256 = "$(printf %s tg_demo_key | sha256sum | cut -d' ' -f1)"
$upstreams
TOML
"$bin/tollgate" up --config "$work/tollgate.toml" > "$work/up.out" 2>&1 &
edge=$(wait_for "$work/up.out")

scenario() { # $1: name, $2: endpoint path, $3: the [[calls]] entry, $4: clients (16)
  cat > "$work/$1.toml" <<TOML
edges = ["$edge$2"]
server = "k8s"
[load]
mode = "closed"
concurrency = ${4:-16}
duration_s = $seconds
[[grants]]
name = "demo"
key = "tg_demo_key"
[[calls]]
$3
TOML
}
scenario list-one-1 /mcp/k8s 'method = "tools/list"' 1
scenario list-agg-1 /mcp 'method = "tools/list"' 1
scenario list-one /mcp/k8s 'method = "tools/list"'
scenario list-agg /mcp 'method = "tools/list"'
scenario call-one /mcp/k8s 'tool = "k8s_list_namespaces"'
scenario call-agg /mcp 'tool = "k8s__k8s_list_namespaces"'

for round in 1 2; do
  echo "== round $round"
  for s in list-one-1 list-agg-1 list-one list-agg call-one call-agg; do
    "$bin/tollgate-loadtest" mcp "$work/$s.toml" > "$work/$s.log" 2>&1 || { cat "$work/$s.log"; exit 1; }
    echo "-- $s"
    grep -A1 "req/s" "$work/$s.log" | tail -1
  done
done
