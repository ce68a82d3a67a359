#!/usr/bin/env bash
# Whether mimalloc pays: `tollgate up` forwarding `tools/call` (memory store, one counter)
# built with mimalloc (the default feature) and with the system allocator
# (`--no-default-features`), alternating, the same client and upstream in one run; and each
# one's idle and loaded RSS.
#
# Usage: loadtest/allocator.sh [CONCURRENCY=16] [SECONDS=8] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
seconds=${2:-8}
rounds=${3:-2}
# Only the tollgate crate itself is rebuilt without the feature; keep that binary aside.
cargo build --release --quiet -p tollgate --no-default-features
system_bin=$(mktemp)
cp target/release/tollgate "$system_bin"
chmod +x "$system_bin"
# shellcheck source=loadtest/common.sh
source loadtest/common.sh
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work" "$system_bin"' EXIT

start_upstream
write_counted_policy

for _ in $(seq "$rounds"); do
  echo "-- tollgate up, system allocator"
  up_under_load "$system_bin" rss
  echo "-- tollgate up, mimalloc"
  up_under_load "$bin/tollgate" rss
done
