#!/usr/bin/env bash
# Whether the release profile pays: `tollgate up` forwarding (memory store, one counter) and
# `tollgate decision` deciding on Redis (batched stream, 64 callers), built with `release`
# (thin LTO, one codegen unit) and with `release-plain` (Cargo's default release settings),
# alternating, the same client and upstream. Also each binary's size and time to its
# "listening" line.
#
# Usage: loadtest/release-profile.sh [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
rounds=${2:-2}
concurrency=16
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
cargo build --profile release-plain --quiet -p tollgate
start_redis

start_upstream
cat > "$work/policy.json" <<'JSON'
{"version": "1", "default": "deny",
 "tools": {"k8s_list_namespaces": {"limits": [{"counter": "ns", "window": "1s", "max": 100000}]},
           "bench": {"limits": [{"counter": "bench", "window": "1s", "max": 100000}]}}}
JSON

for profile in release-plain release; do
  echo "binary $profile: $(du -k "target/$profile/tollgate" | cut -f1) KiB"
done

for _ in $(seq "$rounds"); do
  for profile in release-plain release; do
    echo "-- tollgate up ($profile)"
    up_under_load "target/$profile/tollgate"
    echo "-- tollgate decision ($profile), Redis, batched, 64 callers"
    decisions_under_load "target/$profile/tollgate"
  done
done
