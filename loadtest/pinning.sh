#!/usr/bin/env bash
# Tool pinning's cost: `tollgate up` (memory store, the demo upstream) with pinning "off", then
# "enforce" (every definition approved first, so both answer the same), alternating, same
# client: tools/call forwarding (k8s_list_namespaces) and tools/list, closed loop. In enforce
# every list's definitions are digested (RFC 8785 + SHA-256) and checked, and every call names
# its definition's digest for the decision to check. Prints each run and, per round, the ratio
# enforce / off in calls per second and per CPU second of the gateway.
#
# Usage: loadtest/pinning.sh [CONCURRENCY=16] [SECONDS=8] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-8}
rounds=${3:-3}
# shellcheck source=loadtest/common.sh
source loadtest/common.sh

start_upstream
write_counted_policy
operator_key=pinning-loadtest-operator-key-0123456789
operator_sha=$(printf %s "$operator_key" | sha256sum | cut -d' ' -f1)

run() { # $1: off | enforce, $2: tools/call | tools/list
  local port admin_port
  port=$(free_port)
  admin_port=$(free_port)
  write_up "$work/up.toml" "$port" "$upstream_port" "[edge]
pinning = \"$1\"
[[operators]]
name = \"bench\"
key_sha256 = \"$operator_sha\""
  # write_up's [edge] comes first; the second [edge] header would be a TOML error: merge it.
  python3 - "$work/up.toml" "$admin_port" <<'PY'
import re, sys
path, admin = sys.argv[1], sys.argv[2]
text = open(path).read()
extra = re.search(r'\n\[edge\]\n(pinning = "[a-z]+")\n', text)
text = text.replace(extra.group(0), "\n", 1)
text = text.replace('[edge]\n', '[edge]\n' + extra.group(1) + '\n', 1)
text = text.replace('admin_listen = "127.0.0.1:0"', f'admin_listen = "127.0.0.1:{admin}"')
open(path, "w").write(text)
PY
  write_list_scenario "$work/load.toml" "http://127.0.0.1:$port/mcp/k8s" "$upstream_port"
  if [ "$2" = tools/list ]; then
    printf 'method = "tools/list"\n' >> "$work/load.toml"
  fi
  "$bin/tollgate" up --config "$work/up.toml" > "$work/up.out" 2>&1 &
  local up=$!
  wait_for "$work/up.out" > /dev/null
  if [ "$1" = enforce ]; then
    # The edge reads the upstream's lists at start: approve what it recorded.
    local tries=0
    until "$bin/tollgate" pins list --url "http://127.0.0.1:$admin_port" --key "$operator_key" 2>/dev/null | grep -q pending; do
      tries=$((tries + 1)); [ "$tries" -gt 100 ] && { echo "no definitions recorded" >&2; exit 1; }
      sleep 0.1
    done
    "$bin/tollgate" pins approve --all --url "http://127.0.0.1:$admin_port" --key "$operator_key" > /dev/null
  fi
  local cpu_before
  cpu_before=$(cpu_seconds "$up")
  "$bin/tollgate-loadtest" mcp "$work/load.toml" | grep -v "^$" > "$work/run.log"
  local line
  line=$(awk -v a="$cpu_before" -v b="$(cpu_seconds "$up")" \
    '/^gateway/ { n = $3; r = $0 } END { c = b - a; printf "%s | %.0f per CPU second", r, (c > 0 ? n / c : 0) }' "$work/run.log")
  echo "$1 $2: $line"
  grep -q "DENY\|errors: [1-9]" "$work/run.log" && { echo "refusals or errors in the $1 run:"; cat "$work/run.log"; }
  kill "$up"; wait "$up" 2>/dev/null || true
  # calls per second, calls per CPU second
  awk '/^gateway/ { print $3 / '"$seconds"' }' "$work/run.log" > "$work/rate.$1.$(echo "$2" | tr / _)"
  echo "$line" | sed -n 's/.*| \([0-9]*\) per CPU second/\1/p' > "$work/cpu.$1.$(echo "$2" | tr / _)"
}

for round in $(seq 1 "$rounds"); do
  echo "== round $round"
  for method in tools/call tools/list; do
    run off "$method"
    run enforce "$method"
    m=$(echo "$method" | tr / _)
    awk -v a="$(cat "$work/rate.off.$m")" -v b="$(cat "$work/rate.enforce.$m")" \
        -v ca="$(cat "$work/cpu.off.$m")" -v cb="$(cat "$work/cpu.enforce.$m")" -v m="$method" \
      'BEGIN { printf "round ratio %s: enforce/off %.2f in calls per second, %.2f per CPU second\n", m, (a > 0 ? b / a : 0), (ca > 0 ? cb / ca : 0) }'
  done
done
