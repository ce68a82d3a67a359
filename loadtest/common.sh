# Shared by the loadtest/ scripts (sourced): builds the release binaries, makes a work
# directory removed at exit with every started process, and starts processes on free
# loopback ports.

bin=$PWD/target/release
cargo build --release --quiet -p tollgate -p tollgate-loadtest
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for FILE: waits for a tollgate process's "listening on http://ADDR" line in FILE and
# prints http://ADDR.
wait_for() {
  local tries=0
  until grep -q "listening on" "$1" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
      echo "no \"listening on\" line in $1 within 30 s:" >&2
      cat "$1" >&2
      exit 1
    fi
    sleep 0.1
  done
  sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$1" | head -1
}

# start_upstream: starts the demo MCP server on a free loopback port, sets $upstream_port.
start_upstream() {
  upstream_port=$(free_port)
  "$bin/tollgate" demo-upstream --listen "127.0.0.1:$upstream_port" > "$work/upstream.out" &
  wait_for "$work/upstream.out" > /dev/null
}

# write_counted_policy: $work/policy.json denying everything but k8s_list_namespaces, which
# takes one counter that never refuses under load (every call is decided and counted).
write_counted_policy() {
  cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"k8s_list_namespaces": {"limits": [{"counter": "ns", "window": "1s", "max": 100000}]}}}
JSON
}

# write_up FILE EDGE_PORT UPSTREAM_PORT [EXTRA_TOML]: a `tollgate up` config on loopback with the
# demo grant (key tg_demo_key), the demo upstream, a memory store and $work/policy.json.
write_up() {
  cat > "$1" <<TOML
[edge]
listen = "127.0.0.1:$2"
[decision]
policy = "policy.json"
admin_listen = "127.0.0.1:0"
[store]
kind = "memory"
[[upstreams]]
name = "k8s"
url = "http://127.0.0.1:$3/mcp"
[[grants]]
name = "demo"
agent = "demo-agent"
key_sha256 = "aa09ab5d6fa2b35c24cecd57e67c61e83903dc652ea05190dded171e1ff0fd43"
[log]
level = "warn"
${4:-}
TOML
}

# write_decision FILE [EXTRA_STORE_TOML]: a `tollgate decision` config on loopback (free ports)
# serving $work/policy.json with counters in the Redis that start_redis or start_redis_cluster
# started ($redis_store), plus EXTRA_STORE_TOML lines in [store].
write_decision() {
  cat > "$1" <<TOML
[decision]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
policy = "policy.json"
[store]
kind = "redis"
$redis_store
${2:-}
[log]
level = "warn"
TOML
}

# write_list_scenario FILE EDGE_URL UPSTREAM_PORT: a closed-loop tollgate-loadtest scenario of
# $concurrency clients for $seconds, each calling k8s_list_namespaces as the demo grant.
write_list_scenario() {
  cat > "$1" <<TOML
edges = ["$2"]
upstream = "http://127.0.0.1:$3/mcp"
[load]
mode = "closed"
concurrency = $concurrency
duration_s = $seconds
[[grants]]
name = "demo"
key = "tg_demo_key"
[[calls]]
tool = "k8s_list_namespaces"
TOML
}

# cpu_seconds PID...: the user + system CPU seconds the processes have used so far (all
# threads), from /proc.
cpu_seconds() {
  local ticks=0 pid times
  for pid in "$@"; do
    times=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || continue
    ticks=$((ticks + times))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# start_redis_cluster: six redis-servers on free ports made into a Redis Cluster (3 primaries,
# 1 replica each), in the work directory; sets redis_store (a [store] body for tollgate.toml).
start_redis_cluster() {
  local nodes=() port
  for i in 1 2 3 4 5 6; do
    port=$(free_port)
    mkdir -p "$work/redis-$i"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis-$i" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --repl-diskless-sync-delay 0 >/dev/null &
    redis_pids+=($!)
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  until redis-cli -p "${nodes[0]#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  redis_store="cluster = [$(printf '"redis://%s",' "${nodes[@]}" | sed 's/,$//')]"
}

# start_redis: a redis-server on a free port, in the work directory; sets redis_port.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
  redis_pids=($!)
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
  redis_store="url = \"redis://127.0.0.1:$redis_port\""
}

# up_under_load BINARY [rss]: BINARY's `tollgate up` on a free port in front of the demo
# upstream ($upstream_port, policy $work/policy.json), loaded by the list scenario
# ($concurrency clients for $seconds); prints the gateway's table line (with `rss`, the
# process's idle and loaded RSS too) and how long it took to listen, then stops it.
up_under_load() {
  local port up started
  port=$(free_port)
  write_up "$work/up.toml" "$port" "$upstream_port"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  started=$(date +%s%N)
  "$1" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  up=$!
  wait_for "$work/up.out" > /dev/null
  echo "   listening after $(( ($(date +%s%N) - started) / 1000000 )) ms"
  [ "${2:-}" = rss ] && echo "   idle RSS $(ps -o rss= -p "$up") KiB"
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep "^gateway" | head -1
  [ "${2:-}" = rss ] && echo "   RSS after the load: $(ps -o rss= -p "$up") KiB"
  kill "$up"; wait "$up" 2>/dev/null || true
}

# decisions_under_load BINARY: BINARY's `tollgate decision` on the Redis of start_redis
# ($redis_store, a fresh key prefix), 64 callers of the batched stream deciding `bench` for
# $seconds; prints the decisions line, then stops it.
decisions_under_load() {
  local pid addr
  write_decision "$work/decision.toml" "key_prefix = \"load-$RANDOM\""
  "$1" decision -c "$work/decision.toml" > "$work/decision.out" 2>&1 &
  pid=$!
  addr=$(wait_for "$work/decision.out")
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency 64 --duration "$seconds" | tail -1
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# start_rotel PORT: a collector that discards what it receives (rotel, a Rust OpenTelemetry
# collector from PyPI, blackhole exporter) with OTLP/gRPC on 127.0.0.1:PORT, installed into
# a virtualenv beside the work directory on first use (the wheel carries the binary); its
# output goes to $work/rotel.out. Sets rotel_pid.
start_rotel() {
  local venv="$work/../tollgate-rotel" rotel
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >/dev/null
    "$venv/bin/pip" install --quiet rotel
  fi
  rotel=$(find "$venv" -name rotel-agent -type f | head -1)
  "$rotel" start --otlp-grpc-endpoint "127.0.0.1:$1" --otlp-http-endpoint "127.0.0.1:$(free_port)" \
    --exporter blackhole > "$work/rotel.out" 2>&1 &
  rotel_pid=$!
}
