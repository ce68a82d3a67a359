#!/usr/bin/env bash
# Today's binary against an older one, alternating in one run on the same upstream, client
# and Redis: `tollgate up` forwarding (memory store, one counter per call, 16 clients) and
# `tollgate decision` deciding on Redis (batched stream, 64 callers). Prints each round's
# figures and the ratio new/old, every round (these shared machines are noisy: report them
# all, not the best).
#
# Usage: loadtest/before-after.sh OLD_TOLLGATE_BINARY [SECONDS=8] [ROUNDS=3]
#   e.g. git worktree add /tmp/old <commit> &&
#        (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p tollgate) &&
#        loadtest/before-after.sh /tmp/old-target/release/tollgate
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: loadtest/before-after.sh OLD_TOLLGATE_BINARY [SECONDS] [ROUNDS]}
old=$(realpath "$old")
seconds=${2:-8}
rounds=${3:-3}
concurrency=16
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
new=$bin/tollgate
start_redis
start_upstream
write_counted_policy
cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"k8s_list_namespaces": {"limits": [{"counter": "ns", "window": "1s", "max": 100000}]},
           "bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
JSON

# run_up BINARY: prints the gateway's req/s.
run_up() {
  local port up
  port=$(free_port)
  write_up "$work/up.toml" "$port" "$upstream_port"
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  "$1" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  up=$!
  wait_for "$work/up.out" > /dev/null
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep "^gateway" | head -1
  kill "$up"; wait "$up" 2>/dev/null || true
}

# run_decision BINARY: prints the decisions/s line.
run_decision() {
  local pid addr
  write_decision "$work/decision.toml" "key_prefix = \"ba-$RANDOM\""
  "$1" decision -c "$work/decision.toml" > "$work/decision.out" 2>&1 &
  pid=$!
  addr=$(wait_for "$work/decision.out")
  "$bin/tollgate-loadtest" decide --url "$addr" --tool bench --concurrency 64 --duration "$seconds" | tail -1
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# rate LINE: req/s of a `gateway …` table line (its 5th column) or the decisions/s of a
# `decisions …` line.
rate() {
  case "$1" in
    gateway*) awk '{ print $5 }' <<<"$1" ;;
    *) grep -o '[0-9.]* decisions/s' <<<"$1" | cut -d' ' -f1 ;;
  esac
}

for round in $(seq "$rounds"); do
  for what in up decision; do
    o=$("run_$what" "$old")
    n=$("run_$what" "$new")
    ratio=$(python3 -c "import sys; o, n = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'{n / o:.2f}' if o else 'n/a')" "$(rate "$o")" "$(rate "$n")")
    echo "round $round $what: old [$o] new [$n] new/old $ratio"
  done
done
