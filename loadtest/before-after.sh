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
cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"k8s_list_namespaces": {"limits": [{"counter": "ns", "window": "1s", "max": 100000}]},
           "bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
JSON

# rate LINE: req/s of a `gateway …` table line (its 5th column) or the decisions/s of a
# `decisions …` line.
rate() {
  case "$1" in
    *gateway*) grep "^gateway" <<<"$1" | awk '{ print $5 }' ;;
    *) grep -o '[0-9.]* decisions/s' <<<"$1" | cut -d' ' -f1 ;;
  esac
}

for round in $(seq "$rounds"); do
  for what in up decisions; do
    o=$("${what}_under_load" "$old")
    n=$("${what}_under_load" "$new")
    ratio=$(python3 -c "import sys; o, n = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'{n / o:.2f}' if o else 'n/a')" "$(rate "$o")" "$(rate "$n")")
    echo "round $round $what: old [$(grep -v '^   ' <<<"$o")] new [$(grep -v '^   ' <<<"$n")] new/old $ratio"
  done
done
